//! The root package's cudarc examples (`examples/alloc_until_oom.rs`, `examples/spin.rs`) on
//! the simulated GPU, loaded by cudarc through `dlopen("libcuda.so")`.
//!
//! They are binaries of another package, built by `cargo build --examples` from the
//! workspace root into `target/<profile>/examples/`; this test cannot build them itself
//! (cargo holds the build lock while tests run). When they are missing the tests say so and
//! pass, unless `FAKECUDA_REQUIRE_EXAMPLES=1`. `crates/fakecuda/scripts/test-examples.sh`
//! builds them and runs these tests with that variable set.

mod common;

use std::path::PathBuf;

use common::{Sim, all_fields, num, profile_dir, run_ok, share_cpu, timing_alone};

const MI: u64 = 1 << 20;

fn example(name: &str) -> Option<PathBuf> {
    let path = profile_dir().join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    let hint = format!(
        "{} is not built: run `cargo build --examples` in the workspace root first",
        path.display()
    );
    assert!(
        std::env::var_os("FAKECUDA_REQUIRE_EXAMPLES").is_none(),
        "{hint}"
    );
    eprintln!("skipping: {hint}");
    None
}

#[test]
fn alloc_until_oom_fills_capacity_minus_the_context_footprint() {
    let _cpu = share_cpu();
    let Some(program) = example("alloc_until_oom") else {
        return;
    };
    let sim = Sim::new("1Gi");
    let f = all_fields(&run_ok(&mut sim.command(&program)));
    assert_eq!(num(&f, "free"), 1024 * MI - 64 * MI);
    assert_eq!(num(&f, "total"), 1024 * MI);
    assert_eq!(num(&f, "allocated"), 15 * 64 * MI);
    assert_eq!(num(&f, "chunks"), 15);
    assert_eq!(f["error"], "CUDA_ERROR_OUT_OF_MEMORY");
    assert_eq!(f["realloc_after_free"], "ok");
}

#[test]
fn alloc_until_oom_with_cu_mem_alloc_and_odd_chunks() {
    let _cpu = share_cpu();
    let Some(program) = example("alloc_until_oom") else {
        return;
    };
    let sim = Sim::new("1Gi");
    let f = all_fields(&run_ok(
        sim.command(&program).args(["--sync", "--chunk", "100Mi"]),
    ));
    assert_eq!(num(&f, "allocated"), 9 * 100 * MI);
    assert_eq!(f["error"], "CUDA_ERROR_OUT_OF_MEMORY");
    assert_eq!(f["realloc_after_free"], "ok");
}

#[test]
fn spin_keeps_the_stream_busy_for_the_sum_of_its_kernels() {
    let _alone = timing_alone();
    let Some(program) = example("spin") else {
        return;
    };
    let sim = Sim::new("1Gi");
    let out = run_ok(
        sim.command(&program)
            .args(["--kernels", "20", "--ns", "5000000"]),
    );
    let f = all_fields(&out);
    let value = |key: &str| -> f64 { f[key].parse().unwrap_or_else(|_| panic!("{key} in {out}")) };
    assert_eq!(num(&f, "kernels"), 20);
    assert_eq!(num(&f, "ns_each"), 5_000_000);
    // 20 × 5 ms back to back: never less than 100 ms, and little more on a loaded machine.
    assert!((99.9..130.0).contains(&value("elapsed_ms")), "{out}");
    assert!(
        value("busy_fraction") > 0.77 && value("busy_fraction") <= 1.001,
        "{out}"
    );
    assert!((99.9..101.0).contains(&value("event_ms")), "{out}");
}

#[test]
fn two_spins_at_once_share_the_gpu_and_their_events_show_it() {
    let _alone = timing_alone();
    let Some(program) = example("spin") else {
        return;
    };
    let sim = Sim::new("1Gi");
    let spin = || {
        let mut cmd = sim.command(&program);
        cmd.args(["--kernels", "20", "--ns", "5000000"])
            .stdout(std::process::Stdio::piped());
        cmd.spawn().expect("spawning spin")
    };
    let (a, b) = (spin(), spin());
    for child in [a, b] {
        let output = child.wait_with_output().expect("waiting for spin");
        assert!(output.status.success());
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let f = all_fields(&out);
        let value =
            |key: &str| -> f64 { f[key].parse().unwrap_or_else(|_| panic!("{key} in {out}")) };
        // 100 ms of kernels each, executing together: each takes about 200 ms, less the few
        // milliseconds by which one process starts before the other (and runs alone); more
        // if a stall of the machine leaves a gap between launches. Alone: 100 ms.
        assert!((150.0..230.0).contains(&value("event_ms")), "{out}");
        assert!(value("busy_fraction") < 0.67, "{out}");
    }
}

#[test]
fn spin_noop_mode_reports_launch_throughput() {
    let _cpu = share_cpu();
    let Some(program) = example("spin") else {
        return;
    };
    let sim = Sim::new("1Gi");
    let f = all_fields(&run_ok(sim.command(&program).args(["--noop", "1000"])));
    assert_eq!(num(&f, "launches"), 1000);
    assert!(
        f["launches_per_sec"].parse::<f64>().unwrap() > 1000.0,
        "{f:?}"
    );
}

/// `FAKECUDA_LAUNCH_NS`: each launch call takes that long and its kernel starts at the
/// call's end, so a loop that synchronizes after every kernel leaves the GPU idle through
/// each call (1 ms kernels behind 0.25 ms calls: at most 80% busy; without, about 92% on
/// the 2-core machine).
#[test]
fn a_slow_launch_call_leaves_the_gpu_idle_until_its_kernel_is_queued() {
    let _alone = timing_alone();
    let Some(program) = example("spin") else {
        return;
    };
    let sim = Sim::new("1Gi");
    let out = run_ok(
        sim.command(&program)
            .env("FAKECUDA_LAUNCH_NS", "250000")
            .args(["--for", "300", "--ns", "1000000", "--sync-every", "1"]),
    );
    let f = all_fields(&out);
    let busy: f64 = f["busy_fraction"].parse().expect("busy_fraction");
    assert!((0.5..=0.81).contains(&busy), "{out}");
}
