//! A DaemonSet's pod run with podman on a simulated node, as the kubelet would run it: its
//! containers' commands, arguments, environment, security settings and mounts taken from
//! the manifest, each `hostPath` under a fake host root, its ConfigMap from the
//! kustomization's files, and NVIDIA's runtime played by mounting the simulated GPU where
//! the loader finds the driver's libraries.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{describe, repository};
use crate::plugin::Daemon;
use crate::util::*;

/// How long the plugin's container gets to become ready.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The base DaemonSet, as the repository has it.
pub fn daemonset() -> DaemonSet {
    let path = repository().join("deploy/kustomize/base/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("read daemonset.yaml");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of the base's ConfigMap `name` (its kustomization's `configMapGenerator`).
fn configmap_files(name: &str) -> Vec<PathBuf> {
    let base = repository().join("deploy/kustomize/base");
    let text = std::fs::read_to_string(base.join("kustomization.yaml")).expect("kustomization");
    let kustomization: serde_json::Value =
        serde_norway::from_str(&text).expect("kustomization.yaml is YAML");
    let generators = kustomization["configMapGenerator"]
        .as_array()
        .expect("configMapGenerator");
    let generator = generators
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in the base's kustomization"));
    generator["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| base.join(f.as_str().expect("a file name")))
        .collect()
}

/// The simulated node: a fake host root under which each `hostPath` is, and what stands in
/// for NVIDIA's runtime (the simulated GPU as the driver's libraries).
pub struct Host {
    root: tempfile::TempDir,
}

impl Host {
    /// A host with every host directory `pod` mounts: on a node the kubelet has made its
    /// own, and the others are `DirectoryOrCreate`.
    pub fn new(pod: &PodSpec) -> Host {
        let host = Host {
            root: tempfile::tempdir().expect("host root"),
        };
        std::fs::create_dir_all(host.gpu_state()).expect("gpu state dir");
        for volume in pod.volumes.iter().flatten() {
            if let Some(host_path) = &volume.host_path {
                std::fs::create_dir_all(host.path(&host_path.path)).expect("host dir");
            }
        }
        host
    }

    /// Where the host path `path` is here.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// The simulated GPU's state, shared by every container of the node.
    pub fn gpu_state(&self) -> PathBuf {
        self.root.path().join("fake-gpu-state")
    }

    /// `podman run` options that make `pod`'s volume `name` appear at `mount_path`.
    fn volume(&self, pod: &PodSpec, name: &str, mount_path: &str, read_only: bool) -> String {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("the DaemonSet mounts {name}, which is no volume of it"));
        let source = if let Some(host_path) = &volume.host_path {
            self.path(&host_path.path)
        } else if let Some(config_map) = &volume.config_map {
            let dir = self.root.path().join("configmaps").join(&config_map.name);
            std::fs::create_dir_all(&dir).expect("configmap dir");
            for file in configmap_files(&config_map.name) {
                std::fs::copy(&file, dir.join(file.file_name().expect("file name")))
                    .expect("configmap file");
            }
            dir
        } else {
            panic!("the test does not know how to provide volume {name}: {volume:?}");
        };
        let mode = if read_only { "ro" } else { "rw" };
        format!("{}:{mount_path}:{mode}", source.display())
    }

    /// `podman run` options for `container` of `pod` as the kubelet would run it: its
    /// security settings, its environment, its mounts; `--entrypoint` when it has a
    /// `command`.
    pub fn container_options(&self, pod: &PodSpec, container: &Container) -> Vec<String> {
        let mut options = security_options(container.security_context.as_ref());
        // The host's PID namespace where the pod asks for it (for the unenforced check).
        if pod.host_pid == Some(true) {
            options.push("--pid=host".into());
        }
        assert!(
            pod.host_network != Some(true) && pod.host_ipc != Some(true),
            "a pod in the host's network or IPC namespace: the test would have to run it so"
        );
        for env in container.env.iter().flatten() {
            let value = env
                .value
                .as_deref()
                .unwrap_or_else(|| panic!("env {} without a plain value", env.name));
            options.push("--env".into());
            options.push(format!("{}={value}", env.name));
        }
        for mount in container.volume_mounts.iter().flatten() {
            options.push("--volume".into());
            options.push(self.volume(
                pod,
                &mount.name,
                &mount.mount_path,
                mount.read_only == Some(true),
            ));
        }
        if let Some(command) = &container.command {
            options.push("--entrypoint".into());
            options.push(serde_json::to_string(command).expect("command as JSON"));
        }
        options
    }

    /// `podman run` options for the simulated GPU: what NVIDIA's runtime would inject (the
    /// driver libraries where the loader finds them) and the simulation's settings.
    pub fn gpu_options(&self, devices: &str) -> Vec<String> {
        let fake = artifact("libfakecuda.so");
        let mut options = Vec::new();
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            options.push("--volume".into());
            options.push(format!(
                "{}:/usr/lib/x86_64-linux-gnu/{name}:ro",
                fake.display()
            ));
        }
        options.extend([
            "--volume".into(),
            format!("{}:/var/lib/fakecuda", self.gpu_state().display()),
            "--env".into(),
            format!("FAKECUDA_DEVICES={devices}"),
            "--env".into(),
            "FAKECUDA_STATE_DIR=/var/lib/fakecuda".into(),
        ]);
        options
    }
}

/// `podman run` options for a Kubernetes security context (the fields the DaemonSet uses;
/// any other is refused, so that the test never runs a container laxer than the manifest).
fn security_options(context: Option<&SecurityContext>) -> Vec<String> {
    let Some(context) = context else {
        return Vec::new();
    };
    let mut options = Vec::new();
    match (context.run_as_user, context.run_as_group) {
        (Some(user), Some(group)) => options.push(format!("--user={user}:{group}")),
        (Some(user), None) => options.push(format!("--user={user}")),
        (None, Some(group)) => panic!("runAsGroup {group} without runAsUser"),
        (None, None) => {}
    }
    if context.read_only_root_filesystem == Some(true) {
        options.push("--read-only".into());
    }
    if context.allow_privilege_escalation == Some(false) {
        options.push("--security-opt=no-new-privileges".into());
    }
    if let Some(capabilities) = &context.capabilities {
        for drop in capabilities.drop.iter().flatten() {
            options.push(format!("--cap-drop={}", drop.to_lowercase()));
        }
        for add in capabilities.add.iter().flatten() {
            options.push(format!("--cap-add={}", add.to_lowercase()));
        }
    }
    assert!(
        context.privileged != Some(true),
        "a privileged container: the test would have to run it so"
    );
    options
}

/// The DaemonSet's pod, its init container that installs the shim, and its plugin.
pub fn pod_of(daemonset: &DaemonSet) -> (PodSpec, Container, Container) {
    let pod = daemonset
        .spec
        .template
        .spec
        .clone()
        .expect("the DaemonSet's pod spec");
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "install-shim")
        .expect("the init container install-shim")
        .clone();
    let plugin = pod
        .containers
        .iter()
        .find(|c| c.name == "device-plugin")
        .expect("the container device-plugin")
        .clone();
    (pod, init, plugin)
}

/// A container run in the background (`podman run` attached, its log collected), removed
/// with `podman rm --force` when dropped: killing the client leaves the container running.
pub struct Background {
    pub name: String,
    pub daemon: Option<Daemon>,
}

impl Background {
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// `podman exec` of `command_line` in the container.
    pub fn exec(&self, command_line: &[&str]) -> Outcome {
        finish(
            Command::new("podman")
                .args(["exec", &self.name])
                .args(command_line),
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
        self.daemon.take();
    }
}

/// The port number a probe's `port` names: a number, or the name of a container port.
fn probe_port(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

/// Asks the plugin's container, from inside it, for its readiness probe's path, until it
/// answers 200 (at most [`READY_WAIT`]). bash's /dev/tcp, since the base has no HTTP
/// client; from inside, since the container has no network of its own.
pub fn wait_ready(plugin: &Background, container: &Container) -> String {
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("the device plugin's readiness probe is an HTTP GET");
    let port = probe_port(container, &probe.port);
    let path = probe.path.as_deref().unwrap_or("/");
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && \
         printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3"
    );
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let out = plugin.exec(&["bash", "-c", &script]);
        if out.stdout.starts_with("HTTP/1.") && out.stdout.contains(" 200") {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on port {port} never answered 200: {}\nplugin log:\n{}",
            describe(&out),
            plugin.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Rewrites every `hostPath` of a CDI spec to where that host path is on the test's host.
pub fn map_host_paths(value: &mut serde_json::Value, host: &Host) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key == "hostPath" {
                    let path = item.as_str().expect("hostPath is a string");
                    *item = host.path(path).display().to_string().into();
                } else {
                    map_host_paths(item, host);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                map_host_paths(item, host);
            }
        }
        _ => {}
    }
}
