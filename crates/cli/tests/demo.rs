//! `gpuslice demo` on the simulated GPU, with the shim and `libfakecuda.so` of this build.

use std::time::Duration;

use crate::util::*;

/// The demo must finish well under a minute on the simulated GPU.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// The words of the table row of `tenant`.
fn row<'a>(stdout: &'a str, tenant: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| l.starts_with(tenant) && l.contains("GiB"))
        .unwrap_or_else(|| panic!("no table row for {tenant} in:\n{stdout}"))
        .split_whitespace()
        .collect()
}

#[test]
fn simulated_demo_keeps_each_tenant_to_its_quota_and_both_recover() {
    let dir = TestDir::new();
    let mut command = dir.gpuslice(&["demo", "--simulated", "--shim"]);
    command
        .arg(artifact("libgpuslice.so"))
        .arg("--dir")
        .arg(dir.ledger_dir())
        .env("GPUSLICE_FAKECUDA", artifact("libfakecuda.so"));
    let out = Running::spawn(&mut command).wait(DEMO_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("SIMULATED GPU"), "{out:?}");
    // The context's 64 MiB counts against the quota: 960 of 1024 MiB, 1984 of 2048 MiB.
    assert_eq!(
        row(&out.stdout, "demo-a"),
        [
            "demo-a",
            "1",
            "GiB",
            "1",
            "GiB",
            "960",
            "MiB",
            "CUDA_ERROR_OUT_OF_MEMORY",
            "allocated",
            "again"
        ],
        "{out:?}"
    );
    assert_eq!(
        row(&out.stdout, "demo-b"),
        [
            "demo-b",
            "2",
            "GiB",
            "2",
            "GiB",
            "1984",
            "MiB",
            "CUDA_ERROR_OUT_OF_MEMORY",
            "allocated",
            "again"
        ],
        "{out:?}"
    );
    assert!(
        out.stdout.contains("[demo-a] progress allocated="),
        "{out:?}"
    );
    assert!(
        !dir.tenant_exists("demo-a") && !dir.tenant_exists("demo-b"),
        "the demo left its tenants behind"
    );
}

#[test]
fn simulated_demo_without_a_simulated_gpu_to_find_is_a_usage_error() {
    let dir = TestDir::new();
    // A copy of gpuslice with no libfakecuda.so next to it, in ../lib or in deps/.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let copy = bin.join("gpuslice");
    std::fs::copy(GPUSLICE, &copy).expect("copy gpuslice");
    let mut command = std::process::Command::new(&copy);
    for (name, _) in std::env::vars() {
        if name.starts_with("GPUSLICE_") || name == "LD_PRELOAD" {
            command.env_remove(name);
        }
    }
    command
        .args(["demo", "--simulated", "--shim"])
        .arg(artifact("libgpuslice.so"));
    let out = finish(&mut command);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("libfakecuda.so") && out.stderr.contains("GPUSLICE_FAKECUDA"),
        "{out:?}"
    );

    // A GPUSLICE_FAKECUDA that names nothing is refused, not skipped.
    let out = finish(
        dir.gpuslice(&["demo", "--simulated", "--shim"])
            .arg(artifact("libgpuslice.so"))
            .env("GPUSLICE_FAKECUDA", dir.path().join("missing.so")),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("missing.so"), "{out:?}");
}

#[test]
fn demo_worker_is_hidden_from_help() {
    let dir = TestDir::new();
    let out = finish(dir.gpuslice(&["--help"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("demo"), "{out:?}");
    assert!(!out.stdout.contains("__demo-worker"), "{out:?}");
}
