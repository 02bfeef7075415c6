//! The CDI spec the device plugin writes, used by a real container runtime: podman (with
//! runc) runs a container from a local root filesystem with `--device
//! gpuslice.dev/gpu=<tenant>`, and the program inside runs under the shim, as its tenant,
//! within its quota, on the simulated GPU.
//!
//! It needs podman and a machine that can run containers. Without podman, or where podman
//! cannot run even a trivial container (no privileges, no cgroups), it is skipped with a
//! loud message saying why; CI installs podman (`.ci/run`), so there it runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plugin::{FakeKubelet, PluginNode};
use crate::util::*;

/// Where podman reads CDI specs (Debian's podman 4.3 has no flag or setting for another
/// directory).
const SYSTEM_CDI_DIR: &str = "/var/run/cdi";

/// A spec copied into [`SYSTEM_CDI_DIR`] for the test, removed when dropped.
struct InstalledSpec(PathBuf);

impl InstalledSpec {
    fn install(spec: &Path) -> Result<InstalledSpec, String> {
        let dir = Path::new(SYSTEM_CDI_DIR);
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {SYSTEM_CDI_DIR}: {e}"))?;
        let target = dir.join(format!("gpuslice-test-{}.json", std::process::id()));
        std::fs::copy(spec, &target)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        Ok(InstalledSpec(target))
    }
}

impl Drop for InstalledSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `podman run OPTIONS --rootfs ROOTFS COMMAND...`, with what every container of this test
/// needs. The lowered rlimits are what podman would otherwise raise, which a runtime
/// without CAP_SYS_RESOURCE (a sandbox) may not do.
pub fn podman_run(options: &[&str], rootfs: &Path, command_line: &[&str]) -> Command {
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
        .args(options)
        .arg("--rootfs")
        .arg(rootfs)
        .args(command_line);
    command
}

/// Copies `file` into `rootfs` at the same path, with the shared libraries it needs.
fn copy_with_libraries(file: &Path, rootfs: &Path) {
    let mut files = vec![file.to_path_buf()];
    let ldd = Command::new("ldd").arg(file).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for source in files {
        let target = rootfs.join(source.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("rootfs dir");
        std::fs::copy(&source, &target)
            .unwrap_or_else(|e| panic!("copy {} into the rootfs: {e}", source.display()));
    }
}

/// A root filesystem: a shell, cudaprobe, and the simulated GPU as the driver libraries
/// (in place of what NVIDIA's CDI device would mount). The shim is not in it: the CDI spec
/// mounts it.
pub fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("tmp")).expect("rootfs");
    copy_with_libraries(Path::new("/bin/sh"), &root);
    let probe = cudaprobe();
    copy_with_libraries(&probe, &root);
    std::fs::copy(&probe, root.join("cudaprobe")).expect("cudaprobe");
    let fake = artifact("libfakecuda.so");
    copy_with_libraries(&fake, &root);
    // The shim's libraries, for when the CDI spec mounts it in.
    copy_with_libraries(&artifact("libgpuslice.so"), &root);
    let lib = root.join("usr/lib/gpu");
    std::fs::create_dir_all(&lib).expect("lib dir");
    for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        std::fs::copy(&fake, lib.join(name)).expect("driver library");
    }
    root
}

/// Why there is no podman to use, if there is none.
pub fn no_podman() -> Option<String> {
    match Command::new("podman").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("podman --version failed: {out:?}")),
        Err(e) => Some(format!("podman is not installed ({e})")),
    }
}

/// Why containers cannot run here, if they cannot: podman fails a trivial container.
pub fn cannot_run_containers(rootfs: &Path) -> Option<String> {
    let out = finish(podman_run(
        &[],
        rootfs,
        &["/bin/sh", "-c", "echo container-ok"],
    ));
    if out.code == Some(0) && out.stdout.contains("container-ok") {
        return None;
    }
    Some(format!(
        "podman cannot run a trivial container here (exit {:?}): {}",
        out.code,
        out.stderr.trim()
    ))
}

#[test]
fn podman_runs_a_container_as_the_tenant_of_its_allocation() {
    let mut node = PluginNode::new();
    node.devices = "1Gi".into();
    if let Some(why) = no_podman() {
        return skip(&why);
    }
    let root = rootfs(node.node.dir.path());
    if let Some(why) = cannot_run_containers(&root) {
        return skip(&why);
    }

    // NVIDIA's CDI device does not exist here: the rootfs has the (simulated) driver.
    let plugin = node.start(&["--nvidia-cdi-device", ""]);
    let tenant = slice_of_gpu0(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let names = runtime.block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        crate::plugin::allocate(&mut client, std::slice::from_ref(&tenant))
            .await
            .expect("Allocate")
            .cdi_devices
            .into_iter()
            .map(|d| d.name)
            .collect::<Vec<_>>()
    });
    assert_eq!(
        names,
        [format!("gpuslice.dev/gpu={tenant}")],
        "{}",
        plugin.log()
    );

    // 1 of 4 slices of a 1 GiB GPU: 256 MiB, of which the context takes 64 MiB.
    // The spec the plugin wrote, where podman looks for specs.
    let spec = node.cdi_dir.join(format!("gpuslice.dev-gpu_{tenant}.json"));
    let _installed = match InstalledSpec::install(&spec) {
        Ok(installed) => installed,
        Err(why) => return skip(&why),
    };
    let mut command = podman_run(
        &[
            "--device",
            &names[0],
            "-e",
            "FAKECUDA_DEVICES=1Gi",
            "-e",
            "FAKECUDA_STATE_DIR=/tmp/gpu",
            "-e",
            "LD_LIBRARY_PATH=/usr/lib/gpu",
        ],
        &root,
        &[
            "/bin/sh",
            "-c",
            "echo \"preload=$LD_PRELOAD tenant=$GPUSLICE_TENANT dir=$GPUSLICE_DIR\"; \
             (unset GPUSLICE_TENANT GPUSLICE_DIR; echo unpinned-attempt; \
              exec /cudaprobe dlsym info) && \
             exec /cudaprobe dlsym info fill 16M",
        ],
    );
    let out = finish(&mut command);
    assert_eq!(out.code, Some(0), "{out:?}\nplugin log:\n{}", plugin.log());
    let shim = node.node.shim.display().to_string();
    let ledger = node.node.dir.ledger_dir().display().to_string();
    assert!(
        out.stdout
            .contains(&format!("preload={shim} tenant={tenant} dir={ledger}")),
        "{out:?}"
    );
    // Every process of the container is the tenant's: one that clears GPUSLICE_TENANT
    // (before: passed through, unlimited) is pinned by the mounted file.
    let totals: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("info"))
        .collect();
    assert_eq!(totals.len(), 2, "{out:?}");
    for line in totals {
        assert!(
            line.contains(&format!("total={}", 256 * MIB)),
            "{line}: {out:?}"
        );
    }
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        256 * MIB - CONTEXT,
        "{out:?}"
    );
    assert_eq!(
        field(&out.stdout, "fill", "rc"),
        2,
        "refused past the quota: {out:?}"
    );
    // What it did is in the ledger, through its read-write usage file.
    let status = node.node.dir.status_json();
    let tenants = status["tenants"].as_array().expect("tenants");
    let entry = tenants
        .iter()
        .find(|t| t["name"] == tenant.as_str())
        .expect("the tenant in status");
    assert_eq!(entry["gpus"][0]["oom_refusals"], 1, "{status}");
}

/// Says loudly that the test did not run, and why: on stderr itself, not through the test
/// harness's capture (which would show it only for a failing test).
fn skip(why: &str) {
    skip_test(
        "podman_runs_a_container_as_the_tenant_of_its_allocation",
        "The CDI spec is",
        why,
    );
}

/// Says loudly that `test` did not run, and why; `what` is what goes untested.
pub fn skip_test(test: &str, what: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED {test}: {why}\n\
         *** {what} NOT tested with a container runtime on this machine.\n"
    );
}

/// Slice `i` of the simulated GPU 0.
fn slice_of_gpu0(i: u32) -> String {
    format!("{FAKE_GPU0}-slice-{i}")
}
