//! The image: `deploy/Dockerfile` built with podman from a base made of Debian's packages
//! (`scripts/image-base.sh`), then run as `deploy/kustomize/base`'s DaemonSet runs it, with
//! the DaemonSet's own commands, arguments, environment, security settings, mounts and
//! probe: its init container puts the image's shim on the (simulated) host, its
//! `gpuslice device-plugin` registers with a fake kubelet through the kubelet's socket
//! directory and advertises the simulated GPU's slices, and a workload container given the
//! CDI device of an allocation runs under that shim, within its quota, and is refused past
//! it. The build context of the repository (`.dockerignore`) is checked to hold only what
//! the image packs.
//!
//! The node's host directories live under a fake host root (`hostPath` P is `<root>/P`), so
//! the host paths in the CDI spec the plugin writes are mapped there before podman reads it;
//! the container paths are the DaemonSet's. NVIDIA's runtime, which on a node injects NVML
//! into the plugin's container, is played by bind-mounting the simulated GPU as
//! `libnvidia-ml.so.1`.
//!
//! Needs podman (with runc), debootstrap (for the base), cargo-zigbuild with zig (the shim
//! the image ships is built against glibc 2.17) and strip. Where containers cannot run at
//! all, or the Debian mirror cannot be reached, the tests say so loudly and skip; a missing
//! tool is a loud skip too, unless `REQUIRE_IMAGE_TESTS` is set (CI sets it, and `.ci/run`
//! installs them), which makes it a failure.

mod pod;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::plugin::{Daemon, FakeKubelet, first_list, runtime, serve_pod_resources, watch};
use crate::podman::{InstalledSpec, cannot_run_containers, no_podman, podman_run, skip_test};
use crate::util::*;
use pod::{Background, Host, daemonset, map_host_paths, pod_of, wait_ready};

/// The base the tests build the image on, made by `scripts/image-base.sh`.
const BASE: &str = "localhost/gpuslice-base:bookworm";
/// How long making the base, building the shim or building the image may take on a loaded
/// CI machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// The simulated GPU of the node: one GPU, which the settings cut into 4 slices.
const DEVICES: &str = "1Gi";
/// What one slice of it is.
const SLICE_BYTES: u64 = 256 * MIB;
/// Where the image has the shim, which the init container copies onto the host.
const IMAGE_SHIM: &str = "/usr/local/lib/gpuslice/libgpuslice.so";
/// The image's default user: not root.
const IMAGE_USER: &str = "65532:65532";

pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/`, where the base's root filesystem and the old-glibc build are kept.
fn target_dir() -> PathBuf {
    deps_dir()
        .parent()
        .and_then(Path::parent)
        .expect("target dir above <profile>/deps")
        .to_path_buf()
}

/// What a command did, for a failure message.
pub fn describe(out: &Outcome) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    )
}

/// Runs `command` to completion, allowing it [`BUILD_TIMEOUT`].
fn finish_slow(command: &mut Command) -> Outcome {
    Running::spawn(command).wait(BUILD_TIMEOUT)
}

/// `podman run --rm` of an image, with what every container of this test needs: no
/// network, and the lowered rlimits that podman would otherwise raise, which a runtime
/// without CAP_SYS_RESOURCE (a sandbox) may not do.
pub fn podman_run_image() -> Command {
    let mut command = Command::new("podman");
    command.args([
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    command
}

/// Says loudly that `test` did not run, and why.
fn skip(test: &str, why: &str) {
    skip_test(test, "The image (deploy/Dockerfile) is", why);
}

/// The tools missing for building the image, if any: a failure under
/// `REQUIRE_IMAGE_TESTS`, else a loud skip.
fn has_tools(test: &str) -> bool {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing = Vec::new();
    if let Some(why) = no_podman() {
        missing.push(why);
    }
    if !works("cargo-zigbuild", &["--version"]) {
        missing.push("cargo-zigbuild".into());
    }
    if !works("python3", &["-c", "import ziglang"]) {
        missing.push("zig (python3 -m ziglang)".into());
    }
    if !works("strip", &["--version"]) {
        missing.push("strip (binutils)".into());
    }
    let base_cached = target_dir().join("image-base/bookworm.tar").is_file();
    if !base_cached
        && !["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
            .iter()
            .any(|p| Path::new(p).is_file())
    {
        missing.push("debootstrap".into());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing: {} (apt-get install podman runc debootstrap binutils; pip install \
         cargo-zigbuild ziglang; .ci/run installs them)",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("REQUIRE_IMAGE_TESTS").is_none(),
        "REQUIRE_IMAGE_TESTS is set but {why}"
    );
    skip(test, &why);
    false
}

/// The base image, made by `scripts/image-base.sh` unless podman has it already (its root
/// filesystem kept in `target/image-base/`), or why it cannot be had here.
fn base() -> Result<&'static str, String> {
    static BASE_IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    BASE_IMAGE
        .get_or_init(|| {
            let exists = Command::new("podman")
                .args(["image", "exists", BASE])
                .status()
                .is_ok_and(|s| s.success());
            if exists {
                return Ok(BASE);
            }
            let mut command = Command::new("bash");
            command
                .arg(repository().join("scripts/image-base.sh"))
                .arg("--tarball")
                .arg(target_dir().join("image-base/bookworm.tar"))
                .arg(BASE);
            let out = finish_slow(&mut command);
            if out.code == Some(0) {
                return Ok(BASE);
            }
            if out.stderr.contains("Failed getting release file")
                || out.stderr.contains("Couldn't download")
            {
                return Err(format!(
                    "debootstrap cannot reach Debian's mirror:\n{}",
                    out.stderr
                ));
            }
            panic!("scripts/image-base.sh failed: {}", describe(&out));
        })
        .clone()
}

/// The shim as the image ships it: built against glibc 2.17 by the same script as dist/
/// (a no-op for cargo when tests/old_glibc.rs built it already).
fn baseline_shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let mut command = Command::new("bash");
        command
            .arg(repository().join("scripts/glibc-baseline.sh"))
            .args(["build", "gpuslice"])
            .current_dir(repository())
            .env("CARGO_TARGET_DIR", target_dir());
        let out = finish_slow(&mut command);
        assert_eq!(
            out.code,
            Some(0),
            "scripts/glibc-baseline.sh build gpuslice: {}",
            describe(&out)
        );
        let dir = out.stdout.lines().last().expect("the build's directory");
        let shim = Path::new(dir.trim()).join("libgpuslice.so");
        assert!(shim.is_file(), "{}", shim.display());
        shim
    })
    .clone()
}

/// An image built for one test, removed when dropped.
struct Image {
    tag: String,
}

impl Image {
    /// Builds `deploy/Dockerfile` on `base` from a build context laid out as
    /// `scripts/dist.sh` lays out dist/: this build's command (without its debug info, as
    /// dist.sh strips it) and the shim as shipped.
    fn build(base: &str, context: &Path) -> Image {
        let dist = context.join("dist");
        std::fs::create_dir_all(&dist).expect("dist dir");
        let strip = finish(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(dist.join("gpuslice"))
                .arg(GPUSLICE),
        );
        assert_eq!(strip.code, Some(0), "strip: {}", describe(&strip));
        std::fs::copy(baseline_shim(), dist.join("libgpuslice.so")).expect("copy the shim");

        let tag = format!("localhost/gpuslice-image-test:{}", std::process::id());
        let image = Image { tag };
        let out = finish_slow(
            Command::new("podman")
                .args(["build", "--pull=never", "--network", "none"])
                .arg("--file")
                .arg(repository().join("deploy/Dockerfile"))
                .arg("--build-arg")
                .arg(format!("BASE={base}"))
                .args(["--tag", &image.tag])
                .arg(context),
        );
        assert_eq!(out.code, Some(0), "podman build: {}", describe(&out));
        image
    }

    /// `podman image inspect --format FORMAT`.
    fn inspect(&self, format: &str) -> String {
        let out = finish(
            Command::new("podman").args(["image", "inspect", "--format", format, &self.tag]),
        );
        assert_eq!(
            out.code,
            Some(0),
            "podman image inspect: {}",
            describe(&out)
        );
        out.stdout.trim().to_string()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// The image's DaemonSet on a simulated node: the init container copies the image's shim
/// onto the host; the device plugin from the image (as root with no capabilities but
/// SYS_PTRACE, in the host's PID namespace, as the DaemonSet says) registers with the kubelet through the mounted socket directory,
/// advertises the GPU's 4 slices, answers its readiness probe and allocates a slice; a
/// workload container with that slice's CDI device runs under the image's shim and is
/// refused past its 256 MiB. The image runs as a non-root user by default.
#[test]
fn image_runs_the_device_plugin_and_its_shim_as_the_daemonset_says() {
    let test = "image_runs_the_device_plugin_and_its_shim_as_the_daemonset_says";
    if !has_tools(test) {
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    let workload_root = crate::podman::rootfs(work.path());
    if let Some(why) = cannot_run_containers(&workload_root) {
        return skip(test, &why);
    }
    // The base (debootstrap, the first time) and the shim's build at once.
    let base = std::thread::scope(|scope| {
        scope.spawn(baseline_shim);
        base()
    });
    let base = match base {
        Ok(base) => base,
        Err(why) => return skip(test, &why),
    };
    let context = work.path().join("context");
    let image = Image::build(base, &context);
    // The libraries the shipped shim links (built against glibc 2.17, it still names
    // libpthread and libdl, which every glibc has), as any workload image has them.
    crate::podman::copy_with_libraries(&baseline_shim(), &workload_root);

    // What the image is: the command as entrypoint, a non-root user by default.
    assert_eq!(
        image.inspect("{{json .Config.Entrypoint}}"),
        r#"["/usr/local/bin/gpuslice"]"#
    );
    assert_eq!(image.inspect("{{.Config.User}}"), IMAGE_USER);
    let out = finish(podman_run_image().args([&image.tag, "--version"]));
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        describe(&out)
    );

    let daemonset = daemonset();
    let (pod, init, plugin_container) = pod_of(&daemonset);
    let host = Host::new(&pod);

    // The init container: the image's shim onto the host, readable by every workload.
    let mut command = podman_run_image();
    command
        .args(host.container_options(&pod, &init))
        .arg(&image.tag)
        .args(init.args.iter().flatten());
    let out = finish(&mut command);
    assert_eq!(out.code, Some(0), "init container: {}", describe(&out));
    let shim_on_host = host.path("/opt/gpuslice/lib/libgpuslice.so");
    assert_eq!(
        std::fs::read(&shim_on_host).expect("the shim on the host"),
        std::fs::read(baseline_shim()).expect("the shipped shim"),
        "the init container did not copy the image's shim ({IMAGE_SHIM})"
    );
    let mode = std::fs::metadata(&shim_on_host)
        .expect("shim")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o444,
        0o444,
        "the shim is not readable by all: {mode:o}"
    );

    runtime().block_on(async {
        // The kubelet's sockets, in the host directories the DaemonSet mounts.
        let mut kubelet = FakeKubelet::start(&host.path("/var/lib/kubelet/device-plugins")).await;
        let assigned = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        serve_pod_resources(
            &host.path("/var/lib/kubelet/pod-resources/kubelet.sock"),
            std::sync::Arc::clone(&assigned),
        );

        let name = format!("gpuslice-image-test-{}", std::process::id());
        let mut command = podman_run_image();
        command
            .args(["--name", &name])
            .args(host.container_options(&pod, &plugin_container))
            .args(host.gpu_options(DEVICES))
            .arg(&image.tag)
            .args(plugin_container.args.iter().flatten());
        let plugin = Background {
            name,
            daemon: Some(Daemon::spawn(command)),
        };

        let registration = kubelet.registration().await;
        assert_eq!(
            registration.resource_name,
            "gpuslice.dev/gpu",
            "{}",
            plugin.log()
        );
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        let devices = first_list(&mut stream).await;
        let expected: BTreeMap<String, String> = (0..4)
            .map(|i| (format!("{FAKE_GPU0}-slice-{i}"), "Healthy".to_string()))
            .collect();
        assert_eq!(
            devices.into_iter().collect::<BTreeMap<_, _>>(),
            expected,
            "{}",
            plugin.log()
        );
        let ready = wait_ready(&plugin, &plugin_container);
        assert!(ready.contains("200"), "{ready}");

        // Not slice 0, whose spec the podman test installs meanwhile.
        let tenant = format!("{FAKE_GPU0}-slice-3");
        assigned
            .lock()
            .expect("assigned")
            .push(crate::plugin::FakeContainer::new(
                "default",
                "workload",
                "main",
                std::slice::from_ref(&tenant),
            ));
        let answer = crate::plugin::allocate(&mut client, std::slice::from_ref(&tenant))
            .await
            .unwrap_or_else(|e| panic!("Allocate: {e}\nplugin log:\n{}", plugin.log()));
        let names: Vec<String> = answer.cdi_devices.into_iter().map(|d| d.name).collect();
        let ours = format!("gpuslice.dev/gpu={tenant}");
        assert!(names.contains(&ours), "{names:?}\n{}", plugin.log());
        // NVIDIA's device, as the settings name it; the workload below has the simulated
        // GPU in its root filesystem instead.
        assert!(
            names.contains(&format!("nvidia.com/gpu={FAKE_GPU0}")),
            "{names:?}"
        );

        // The spec the plugin wrote on the host, its host paths mapped to this host's.
        let spec_path = host.path(&format!("/var/run/cdi/gpuslice.dev-gpu_{tenant}.json"));
        let text = std::fs::read_to_string(&spec_path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", spec_path.display(), plugin.log()));
        let mut spec: serde_json::Value = serde_json::from_str(&text).expect("spec is JSON");
        map_host_paths(&mut spec, &host);
        let mapped = work.path().join("spec.json");
        std::fs::write(&mapped, spec.to_string()).expect("write the mapped spec");
        let _installed = match InstalledSpec::install(&mapped) {
            Ok(installed) => installed,
            Err(why) => return skip(test, &why),
        };

        let gpu_state = format!("{}:/var/lib/fakecuda", host.gpu_state().display());
        let out = finish(podman_run(
            &[
                "--device",
                &ours,
                "--volume",
                &gpu_state,
                "-e",
                &format!("FAKECUDA_DEVICES={DEVICES}"),
                "-e",
                "FAKECUDA_STATE_DIR=/var/lib/fakecuda",
                "-e",
                "LD_LIBRARY_PATH=/usr/lib/gpu",
            ],
            &workload_root,
            &[
                "/bin/sh",
                "-c",
                "echo \"preload=$LD_PRELOAD tenant=$GPUSLICE_TENANT\"; \
                 exec /cudaprobe dlsym info fill 16M",
            ],
        ));
        assert_eq!(
            out.code,
            Some(0),
            "{}\nplugin log:\n{}",
            describe(&out),
            plugin.log()
        );
        assert!(
            out.stdout.contains(&format!(
                "preload=/opt/gpuslice/lib/libgpuslice.so tenant={tenant}"
            )),
            "{}",
            describe(&out)
        );
        assert_eq!(
            field(&out.stdout, "info", "total"),
            SLICE_BYTES,
            "{}",
            describe(&out)
        );
        assert_eq!(
            field(&out.stdout, "fill", "bytes"),
            SLICE_BYTES - CONTEXT,
            "{}",
            describe(&out)
        );
        assert_eq!(
            field(&out.stdout, "fill", "rc"),
            2,
            "refused past the quota: {}",
            describe(&out)
        );

        // Judged from the host: the ledger the plugin made counts the refusal.
        let dir = TestDir::new();
        let status = finish(
            dir.gpuslice(&["status", "--json", "--dir"])
                .arg(host.path("/run/gpuslice")),
        );
        assert_eq!(status.code, Some(0), "{}", describe(&status));
        let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
        let entry = status["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .find(|t| t["name"] == tenant.as_str())
            .unwrap_or_else(|| panic!("no tenant {tenant}: {status}"));
        assert_eq!(entry["gpus"][0]["oom_refusals"], 1, "{status}");
        drop(plugin);
    });
}

/// The build context the repository's `.dockerignore` lets podman send (`podman build -f
/// deploy/Dockerfile .` from the root of a checkout with a build and dist/) holds what the
/// Dockerfile packs and nothing else: never target/ or .git, whatever else is there.
#[test]
fn the_build_context_holds_only_what_the_image_packs() {
    let test = "the_build_context_holds_only_what_the_image_packs";
    if !has_tools(test) {
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    if let Some(why) = cannot_run_containers(&crate::podman::rootfs(work.path())) {
        return skip(test, &why);
    }
    let base = match base() {
        Ok(base) => base,
        Err(why) => return skip(test, &why),
    };
    // A copy of the repository's .dockerignore in a context that has what a checkout with a
    // build and dist/ has, and more: the probe copies all of it that podman sends.
    let context = work.path().join("context");
    let files = [
        "Cargo.toml",
        "src/lib.rs",
        "target/debug/gpuslice",
        "target/release/libgpuslice.so",
        ".git/HEAD",
        "dist/gpuslice",
        "dist/libgpuslice.so",
        "dist/examples/spin",
        "dist/BUILD-INFO",
        "deploy/Dockerfile",
        "notes.txt",
    ];
    for file in files {
        let path = context.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, file).expect("file");
    }
    std::fs::copy(
        repository().join(".dockerignore"),
        context.join(".dockerignore"),
    )
    .expect("copy .dockerignore");
    let probe = work.path().join("Containerfile");
    std::fs::write(
        &probe,
        format!("FROM {base}\nCOPY . /context\nRUN find /context -type f | sort\n"),
    )
    .expect("probe Containerfile");
    let tag = format!("localhost/gpuslice-context-probe:{}", std::process::id());
    let out = finish_slow(
        Command::new("podman")
            .args(["build", "--pull=never", "--network", "none", "--no-cache"])
            .arg("--file")
            .arg(&probe)
            .args(["--tag", &tag])
            .arg(&context),
    );
    let _ = Command::new("podman")
        .args(["rmi", "--force", &tag])
        .output();
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    let sent: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("/context/"))
        .collect();
    assert_eq!(
        sent,
        ["dist/gpuslice", "dist/libgpuslice.so"],
        "{}",
        describe(&out)
    );
}
