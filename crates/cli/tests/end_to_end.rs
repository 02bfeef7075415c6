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

/// The `done at_ns=` times a compute worker printed.
fn kernel_times(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("done at_ns="))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn a_run_with_a_30_percent_limit_gets_30_percent_and_status_and_metrics_say_so() {
    // The simulated GPU runs a round of gpuslice_work in 30 ns: 2 ms kernels.
    const ROUNDS: u64 = 66_667;
    const KERNEL_NS: u64 = ROUNDS * 30;
    let node = Node::new();
    let mut command = node.run(&["--tenant", "capped", "--compute-limit", "30", "--"]);
    command.arg(GPUSLICE).args([
        "__demo-worker",
        "--phase",
        "compute",
        "--for-ms",
        "3500",
        "--rounds",
        &ROUNDS.to_string(),
    ]);
    let mut worker = Running::spawn(&mut command);
    let seen = worker.wait_for_line("done at_ns=");
    // Let the limit settle, then measure for a second and a half.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = finish(
        node.gpuslice(&["status", "--json", "--sample", "1500", "--dir"])
            .arg(node.dir.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    let capped = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "capped")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(capped["compute_limit_percent"], 30.0, "{capped:#}");
    let gpu = &capped["gpus"][0];
    assert_eq!(gpu["uuid"], FAKE_GPU0, "{capped:#}");
    assert_eq!(gpu["compute_limit_percent"], 30.0, "{capped:#}");
    assert_eq!(gpu["compute_source"], "published", "{capped:#}");
    let gets = gpu["gets_percent"].as_f64().unwrap();
    eprintln!("status says the 30%-limited tenant gets {gets}%");
    assert!((gets - 30.0).abs() <= 5.0, "gets {gets}%: {capped:#}");
    assert!(gpu["throttled_ns"].as_u64().unwrap() > 0, "{capped:#}");

    // Metrics say the same as the ledger: the limit, and GPU time that grows.
    let metrics = finish(
        node.gpuslice(&["metrics", "--once", "--dir"])
            .arg(node.dir.ledger_dir()),
    );
    assert_eq!(metrics.code, Some(0), "{metrics:?}");
    let line = |name: &str| {
        metrics
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{tenant=\"capped\"")))
            .unwrap_or_else(|| panic!("no {name}:\n{}", metrics.stdout))
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
    };
    assert_eq!(line("gpuslice_compute_limit_ratio"), 0.3);
    #[allow(clippy::cast_precision_loss)]
    let at_status = gpu["gpu_time_ns"].as_u64().unwrap() as f64 / 1e9;
    assert!(
        line("gpuslice_gpu_time_seconds_total") >= at_status,
        "GPU time went backwards"
    );

    // The kernels the program itself saw finish say the same.
    let out = worker.wait(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
    let times = kernel_times(&format!("{seen}{}", out.stdout));
    let from = times[0] + 500_000_000;
    let to = times[times.len() - 1] - 50_000_000;
    let kernels = times.iter().filter(|&&t| t > from && t <= to).count() as u64;
    #[allow(clippy::cast_precision_loss)]
    let share = (kernels * KERNEL_NS) as f64 / (to - from) as f64 * 100.0;
    eprintln!("its kernels got {share:.1}% of the GPU");
    assert!((share - 30.0).abs() <= 5.0, "kernels got {share:.1}%");
    assert!(!node.dir.tenant_exists("capped"));
}

/// Issue 15, item 8: a ledger directory whose path is not UTF-8 is passed on and used byte
/// for byte, so the command is held to the quota `run` wrote there.
#[test]
fn run_with_a_ledger_dir_that_is_not_utf8_holds_the_command_to_its_quota() {
    use std::os::unix::ffi::OsStrExt;
    let node = Node::new();
    let dir = node
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"ledger-\xff"));
    let out = finish(
        node.gpuslice(&["run", "--memory", "512Mi", "--shim"])
            .arg(&node.shim)
            .arg("--dir")
            .arg(&dir)
            .arg("--")
            .arg(cudaprobe())
            .args(["dlsym", "fill", "64M"]),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        512 * MIB - CONTEXT,
        "{out:?}"
    );
    assert!(
        !node.dir.path().join("ledger-\u{fffd}").exists(),
        "a rewritten path was used"
    );
}
