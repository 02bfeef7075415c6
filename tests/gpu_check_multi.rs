//! `scripts/gpu-check.sh --multi`, the real-GPU checks of several GPUs (issue 18), as far as
//! they go without a GPU: the scripts parse, a machine with fewer than two GPUs is refused
//! (exit 2, saying why), the plan names every check, and the checks that need no framework
//! (cudaprobe only) pass against two simulated GPUs, through the script's own logic. A fake
//! `nvidia-smi` stands in for the real one's GPU list.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::*;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding an `nvidia-smi` that lists `gpus` GPUs (`-L`) and says nothing else.
fn fake_nvidia_smi(root: &Path, gpus: usize) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let list: String = (0..gpus)
        .map(|i| {
            format!(
                "echo 'GPU {i}: gpuslice simulated GPU (UUID: {})'\n",
                gpu_uuid(i)
            )
        })
        .collect();
    let script = format!("#!/bin/sh\nif [ \"$1\" = -L ]; then\n{list}fi\nexit 0\n");
    let path = bin.join("nvidia-smi");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

/// `bash scripts/gpu-check.sh --multi DIST` with `path` first on PATH.
fn gpu_check_multi(node: &Node, bin: &Path, dist: &Path) -> Command {
    let mut command = node.bare("bash");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    command
        .current_dir(repository())
        .arg("scripts/gpu-check.sh")
        .arg("--multi")
        .arg(dist)
        .env("PATH", path)
        .env("TMPDIR", node.root.path())
        .env_remove("GPU_CHECK_ONLY")
        .env_remove("GPU_CHECK_PLAN");
    command
}

#[test]
fn the_multi_gpu_scripts_parse() {
    for script in ["scripts/gpu-check.sh", "scripts/gpu/multi.sh"] {
        let status = Command::new("bash")
            .arg("-n")
            .arg(repository().join(script))
            .status()
            .expect("run bash");
        assert!(status.success(), "bash -n {script}");
    }
}

#[test]
fn gpu_check_multi_refuses_a_machine_with_fewer_than_two_gpus() {
    let node = Node::new();
    for gpus in [0, 1] {
        let bin = fake_nvidia_smi(&node.root.path().join(format!("gpus{gpus}")), gpus);
        let output = run(&mut gpu_check_multi(&node, &bin, Path::new("/nonexistent")));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{gpus} GPUs: {stderr}");
        assert!(
            stderr.contains("needs two or more GPUs") && stderr.contains(&format!("lists {gpus}")),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "nothing ran");
    }
}

#[test]
fn gpu_check_multi_plans_every_check_on_two_gpus() {
    let node = Node::new();
    let bin = fake_nvidia_smi(node.root.path(), 2);
    let mut command = gpu_check_multi(&node, &bin, Path::new("/nonexistent"));
    command.env("GPU_CHECK_PLAN", "1");
    let out = run_ok(&mut command);
    for check in [
        "multi-visible-devices",
        "multi-two-gpus",
        "multi-ipc",
        "multi-torchrun-ddp",
        "multi-nccl-bandwidth",
        "multi-shares",
    ] {
        assert!(out.contains(check), "{check} missing from: {out}");
    }
    assert!(out.contains("2 GPUs"), "{out}");

    // A single-GPU check is not one of --multi's.
    let mut command = gpu_check_multi(&node, &bin, Path::new("/nonexistent"));
    command.env("GPU_CHECK_ONLY", "torch-oom");
    let output = run(&mut command);
    assert_eq!(output.status.code(), Some(2));
}

/// The checks that need only cudaprobe, run by the script against two simulated GPUs: its
/// expectations (charged by UUID under `CUDA_VISIBLE_DEVICES=1,0`, each GPU's own quota,
/// the opener of IPC memory not charged) hold there, so on a GPU a failure is the GPU's.
#[test]
fn gpu_check_multi_probe_checks_pass_on_two_simulated_gpus() {
    let node = Node::with_devices("8Gi,8Gi");
    let bin = fake_nvidia_smi(node.root.path(), 2);
    let dist = node.root.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let gpuslice = deps_dir().parent().expect("profile dir").join("gpuslice");
    assert!(
        gpuslice.exists(),
        "{} is missing: run the tests through `cargo test --workspace`",
        gpuslice.display()
    );
    for (name, target) in [
        ("libgpuslice.so", shim_library()),
        ("gpuslice", gpuslice),
        (
            "cudaprobe.c",
            repository().join("tests/programs/cudaprobe.c"),
        ),
    ] {
        std::os::unix::fs::symlink(target, dist.join(name)).unwrap();
    }
    let mut command = gpu_check_multi(&node, &bin, &dist);
    command
        .env("LIBCUDA_DIR", node.root.path().join("lib"))
        .env("QUOTA", "2Gi")
        .env("PYTHON", "python3")
        .env("CHECK_TIMEOUT", "60")
        .env(
            "GPU_CHECK_ONLY",
            "multi-visible-devices multi-two-gpus multi-ipc",
        );
    let output = Running::spawn(&mut command).wait_output(Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("gpu-check: 3 passed, 0 failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for check in ["multi-visible-devices", "multi-two-gpus", "multi-ipc"] {
        assert!(stdout.contains(&format!("PASS {check}:")), "{stdout}");
    }
}
