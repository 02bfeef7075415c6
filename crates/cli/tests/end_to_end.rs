//! `gpuslice run` and `status` over the real shim and the simulated GPU (`crates/fakecuda`),
//! with the root package's cudaprobe program allocating through the driver API.
//!
//! The shim and the simulated GPU are dev-dependencies of this crate, so they are always
//! built before these tests run; a missing one fails the test, it is never skipped.

use serde_json::Value;

use crate::util::*;

#[test]
fn quota_written_by_run_is_enforced_by_the_shim() {
    let node = Node::new();
    let out = finish(
        node.run(&["--tenant", "e2e", "--memory", "1Gi", "--"])
            .arg(cudaprobe())
            .args(["dlsym", "fill", "64M", "info"]),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    // The context takes 64 MiB of the 1 GiB; the rest is allocatable, and then the driver
    // API says CUDA_ERROR_OUT_OF_MEMORY (2).
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        GIB - CONTEXT,
        "{out:?}"
    );
    assert_eq!(field(&out.stdout, "fill", "rc"), 2, "{out:?}");
    assert_eq!(field(&out.stdout, "info", "total"), GIB, "{out:?}");
    assert!(!node.dir.tenant_exists("e2e"), "the tenant was left behind");
}

#[test]
fn per_gpu_quota_from_run_applies_on_that_gpu() {
    let node = Node::new();
    let out = finish(
        node.run(&["--memory", "512Mi", "--gpu", FAKE_GPU0, "--"])
            .arg(cudaprobe())
            .args(["dlsym", "fill", "64M"]),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        512 * MIB - CONTEXT,
        "{out:?}"
    );
}

#[test]
fn joined_run_with_a_lower_limit_gets_less_than_the_tenant() {
    let node = Node::new();
    let release = node.dir.release_file();
    let mut creator = node.run(&["--tenant", "pair", "--memory", "1Gi", "--"]);
    creator.args(hold(&release));
    let mut creator = Running::spawn(&mut creator);
    creator.wait_for_line("ready");
    let out = finish(
        node.run(&["--tenant", "pair", "--memory", "256Mi", "--"])
            .arg(cudaprobe())
            .args(["dlsym", "fill", "64M"]),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        256 * MIB - CONTEXT,
        "{out:?}"
    );
    node.dir.release();
    assert_eq!(creator.wait(TIMEOUT).code, Some(0));
}

#[test]
fn status_shows_what_a_program_under_the_shim_holds() {
    let node = Node::new();
    let mut run = Running::spawn(
        node.run(&["--tenant", "holder", "--memory", "1Gi", "--"])
            .arg(cudaprobe())
            .args(["dlsym", "alloc", "256M", "hold"]),
    );
    let gpuslice_pid = run.pid();
    run.wait_for_line("holding");

    let out = finish(
        node.gpuslice(&["status", "--json", "--dir"])
            .arg(node.dir.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let status: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let tenant = &status["tenants"][0];
    assert_eq!(tenant["name"], "holder", "{status:#}");
    assert_eq!(tenant["live_processes"], 1, "{status:#}");
    let gpu = &tenant["gpus"][0];
    assert_eq!(gpu["uuid"], FAKE_GPU0, "{status:#}");
    assert_eq!(gpu["memory_used_bytes"], 256 * MIB + CONTEXT, "{status:#}");
    assert_eq!(gpu["memory_limit_bytes"], GIB, "{status:#}");
    let process = &gpu["processes"][0];
    assert_eq!(process["memory_bytes"], 256 * MIB + CONTEXT, "{status:#}");
    // The process is cudaprobe, the child of gpuslice.
    let pid = process["pid"].as_u64().expect("pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    let parent: i32 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("parent pid");
    assert_eq!(parent, gpuslice_pid, "{stat}");

    // SIGTERM to gpuslice reaches the program; the tenant goes with it.
    run.signal(libc::SIGTERM);
    let out = run.wait(TIMEOUT);
    assert_eq!(out.code, Some(143), "{out:?}");
    assert!(
        !node.dir.tenant_exists("holder"),
        "the tenant was left behind"
    );
}
