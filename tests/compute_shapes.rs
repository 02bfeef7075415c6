//! Compute limits on every workload shape, end to end (issue 13): on a real H100 a tenant
//! limited to 30% received from 24% to 39% of the GPU's time depending on how its work was
//! shaped, so each shape here runs under the shim on the simulated GPU, which time-slices
//! between processes like the hardware:
//!
//! - a loop of one kernel and a `cuCtxSynchronize` (0.2, 2 and 10 ms kernels), a training
//!   step of 8 kernels and a synchronization, and a loop of 100 µs kernels and a
//!   synchronization each (shorter kernels measure the simulator more than the shim: on the
//!   2-core development machine a loop of 20 µs kernels is held back by the CPU time the
//!   simulated driver and the shim's watcher take, 15% and more without any limit);
//! - a launch-bound loop as on the H100, where a short kernel on an idle stream starts only
//!   as its launch call ends: 40 µs kernels behind 6 µs launch calls
//!   (`FAKECUDA_LAUNCH_NS`), a synchronization after each;
//! - a CUDA graph of 8 kernels, captured once and replayed with a synchronization after each
//!   replay;
//! - kernels round-robin over three streams of the process, 4 in flight on each;
//! - the per-thread default stream (`cuLaunchKernel_ptsz` on NULL), 4 in flight;
//! - one tenant of two processes, each keeping 4 kernels in flight.
//!
//! For each, two promises (issue 13, item 1):
//!
//! - **A limit is a fraction of the GPU's time**: a tenant limited to 30%, alone, receives
//!   30 ± 3% of it, whatever the shape (for the loops of 100 and 40 µs kernels, the lesser of 30%
//!   and what it takes without gpuslice).
//! - **A tenant under its limit is not throttled**: the same shape run lightly (its steps
//!   then a pause, 15% of the GPU's time in all, under the same 30% limit) keeps at least 95%
//!   of the throughput it has without gpuslice.
//!
//! Everything is judged from the workload's own completions (`util::compute`), never from
//! what gpuslice measured. The tests take 2-3 seconds of load each and run one at a time.

mod util;

use std::process::Command;

use util::compute::*;
use util::*;

/// How long a limited load runs, and how much of its start is left out (the bucket's first
/// credit, the watcher learning the shape).
const LIMITED_MS: u64 = 2500;
const SETTLE_MS: u64 = 300;
/// How long a light load runs.
const LIGHT_MS: u64 = 2000;
/// The limit every test sets, and what it promises.
const LIMIT: &str = "30";
const LIMIT_SHARE: f64 = 0.30;
/// What a light tenant uses of the GPU's time (per mille), and what it must keep of its
/// throughput.
const LIGHT_DUTY_PERMILLE: u64 = 150;
const LIGHT_KEEPS: f64 = 0.95;

/// A workload shape: spin's arguments for it, its kernels' length, and how many processes of
/// the tenant run it.
struct Shape {
    what: &'static str,
    ns: u64,
    /// What spin runs: `--streams`/`--per-thread`, `--depth`/`--sync-every`/`--graph`.
    args: &'static [&'static str],
    /// The light variant: steps (`--sync-every`) or graph replays (`--graph`) of
    /// `light_step` kernels, each followed by a pause that makes the tenant's duty
    /// `LIGHT_DUTY_PERMILLE`, with these other arguments.
    light_flag: &'static str,
    light_step: u64,
    light_args: &'static [&'static str],
    processes: usize,
    /// The simulated GPU's settings for the shape (`FAKECUDA_*`), bare and under the shim.
    fake_env: &'static [(&'static str, &'static str)],
}

impl Shape {
    /// spin's arguments for a run of `millis`.
    fn load_args(&self, millis: u64) -> Vec<String> {
        let mut args = vec![
            "--for".to_owned(),
            millis.to_string(),
            "--ns".to_owned(),
            self.ns.to_string(),
        ];
        args.extend(self.args.iter().map(|a| (*a).to_owned()));
        args
    }

    /// spin's arguments for a light run of `millis`: each process pauses after each step so
    /// that the tenant's processes together keep the GPU busy `LIGHT_DUTY_PERMILLE` of the
    /// time.
    fn light_load_args(&self, millis: u64) -> Vec<String> {
        let step_ns = self.light_step * self.ns;
        let duty = LIGHT_DUTY_PERMILLE / self.processes as u64;
        let pause_us = step_ns * (1000 - duty) / duty / 1000;
        let mut args = vec![
            "--for".to_owned(),
            millis.to_string(),
            "--ns".to_owned(),
            self.ns.to_string(),
        ];
        args.extend(self.light_args.iter().map(|a| (*a).to_owned()));
        args.extend([
            self.light_flag.to_owned(),
            self.light_step.to_string(),
            "--pause-us".to_owned(),
            pause_us.to_string(),
        ]);
        args
    }
}

const SYNC_EVERY_STEP_0_2_MS: Shape = Shape {
    what: "a loop of 0.2 ms kernels synchronized after each",
    ns: 200_000,
    args: &["--sync-every", "1"],
    light_flag: "--sync-every",
    light_step: 1,
    light_args: &[],
    processes: 1,
    fake_env: &[],
};

const SYNC_EVERY_STEP_2_MS: Shape = Shape {
    what: "a loop of 2 ms kernels synchronized after each",
    ns: 2_000_000,
    ..SYNC_EVERY_STEP_0_2_MS
};

const SYNC_EVERY_STEP_10_MS: Shape = Shape {
    what: "a loop of 10 ms kernels synchronized after each",
    ns: 10_000_000,
    ..SYNC_EVERY_STEP_0_2_MS
};

const SYNC_EVERY_8: Shape = Shape {
    what: "steps of 8 kernels of 2 ms and a synchronization",
    ns: 2_000_000,
    args: &["--sync-every", "8"],
    light_flag: "--sync-every",
    light_step: 8,
    light_args: &[],
    processes: 1,
    fake_env: &[],
};

const SHORT_KERNELS: Shape = Shape {
    what: "a loop of 100 µs kernels synchronized after each",
    ns: 100_000,
    args: &["--sync-every", "1"],
    light_flag: "--sync-every",
    light_step: 1,
    light_args: &[],
    processes: 1,
    fake_env: &[],
};

/// A launch-bound loop as on the H100, where a short kernel on an idle stream starts only
/// as its launch call ends: the simulated driver's call takes 6 µs (`FAKECUDA_LAUNCH_NS`,
/// what an H100's takes at times under load) before each 40 µs kernel, synchronized after
/// each.
const LAUNCH_BOUND: Shape = Shape {
    what: "a loop of 40 µs kernels each behind a 6 µs launch call, synchronized after each",
    ns: 40_000,
    fake_env: &[("FAKECUDA_LAUNCH_NS", "6000")],
    ..SHORT_KERNELS
};

const GRAPH: Shape = Shape {
    what: "replays of a CUDA graph of 8 kernels of 2 ms",
    ns: 2_000_000,
    args: &["--graph", "8"],
    light_flag: "--graph",
    light_step: 8,
    light_args: &[],
    processes: 1,
    fake_env: &[],
};

const THREE_STREAMS: Shape = Shape {
    what: "2 ms kernels on three streams at once",
    ns: 2_000_000,
    args: &["--streams", "3", "--depth", "4"],
    light_flag: "--sync-every",
    light_step: 3,
    light_args: &["--streams", "3"],
    processes: 1,
    fake_env: &[],
};

const PER_THREAD: Shape = Shape {
    what: "2 ms kernels on the per-thread default stream",
    ns: 2_000_000,
    args: &["--per-thread", "--depth", "4"],
    light_flag: "--sync-every",
    light_step: 1,
    light_args: &["--per-thread"],
    processes: 1,
    fake_env: &[],
};

const TWO_PROCESSES: Shape = Shape {
    what: "a tenant of two processes keeping 2 ms kernels in flight",
    ns: 2_000_000,
    args: &["--depth", "4"],
    light_flag: "--sync-every",
    light_step: 1,
    light_args: &[],
    processes: 2,
    fake_env: &[],
};

/// Runs `shape`'s processes, each made by `command` with `args`; returns their reports.
fn run_processes(
    shape: &Shape,
    mut command: impl FnMut() -> Command,
    args: &[String],
) -> Vec<Report> {
    let running: Vec<Running> = (0..shape.processes)
        .map(|_| Running::spawn(command().args(args).envs(shape.fake_env.iter().copied())))
        .collect();
    running.into_iter().map(finish).collect()
}

/// The share of the GPU's time the processes received together over the window in which all
/// ran, leaving out their first `SETTLE_MS`.
fn share_together(reports: &[Report]) -> f64 {
    let all: Vec<&Report> = reports.iter().collect();
    let (from, to) = common_window(&all, SETTLE_MS);
    reports.iter().map(|r| r.share(from, to)).sum()
}

/// The share of the GPU's time a tenant limited to 30% received running `shape` alone.
fn limited_share(shape: &Shape) -> f64 {
    let node = Node::new();
    let limit = [("GPUSLICE_COMPUTE_LIMIT", LIMIT)];
    let reports = run_processes(
        shape,
        || tenant_spin(&node, "limited", &limit),
        &shape.load_args(LIMITED_MS),
    );
    share_together(&reports)
}

/// The share of the GPU's time `shape` takes without gpuslice.
fn bare_share(shape: &Shape) -> f64 {
    let node = Node::new();
    let reports = run_processes(
        shape,
        || node.bare(example("spin")),
        &shape.load_args(LIMITED_MS),
    );
    share_together(&reports)
}

/// Asserts that a tenant limited to 30% receives 30 ± 3% of the GPU running `shape`.
fn assert_limit_holds(shape: &Shape) {
    let _serial = serial();
    assert_near(
        &format!("{}, limited to {LIMIT}%", shape.what),
        limited_share(shape),
        LIMIT_SHARE,
    );
}

/// Asserts that a tenant limited to 30% receives 30 ± 3% of the GPU running `shape`, or
/// what it takes without gpuslice where that is less (a loop that runs dry between its
/// kernels).
fn assert_limit_or_bare_share_holds(shape: &Shape) {
    let _serial = serial();
    let bare = bare_share(shape);
    eprintln!("{}, without gpuslice: {:.1}%", shape.what, bare * 100.0);
    assert_near(
        &format!("{}, limited to {LIMIT}%", shape.what),
        limited_share(shape),
        LIMIT_SHARE.min(bare),
    );
}

/// Kernels per second over a report's run, leaving out its first `SETTLE_MS`: from the first
/// sighting after that to the last, so that whole steps are counted (a 10 ms step and its
/// pause take 67 ms, and a window cutting steps would be off by as much as one).
fn kernels_per_second(report: &Report) -> f64 {
    let from = report.first + SETTLE_MS * 1_000_000;
    let first = report
        .done
        .iter()
        .position(|&t| t > from)
        .expect("sightings after the settling time");
    let last = report.done.len() - 1;
    assert!(last > first, "too few steps to time");
    let span = report.done[last] - report.done[first];
    (last - first) as f64 / (span as f64 / 1e9)
}

/// The kernels per second a light run of `shape` completes (its processes together): made
/// by `command`.
fn light_throughput(shape: &Shape, command: impl FnMut() -> Command) -> f64 {
    let reports = run_processes(shape, command, &shape.light_load_args(LIGHT_MS));
    reports.iter().map(kernels_per_second).sum()
}

/// Asserts that `shape`, run lightly under a 30% limit, keeps 95% of the throughput it has
/// without gpuslice.
fn assert_light_tenant_not_throttled(shape: &Shape) {
    let _serial = serial();
    let node = Node::new();
    // Without gpuslice before and after, averaged: on the 2-core machine the same light
    // load varies by 5% from one run to the next by itself.
    let bare_before = light_throughput(shape, || node.bare(example("spin")));
    let limit = [("GPUSLICE_COMPUTE_LIMIT", LIMIT)];
    let limited = light_throughput(shape, || tenant_spin(&node, "light", &limit));
    let bare_after = light_throughput(shape, || node.bare(example("spin")));
    let bare = (bare_before + bare_after) / 2.0;
    let kept = limited / bare;
    eprintln!(
        "{}, light ({}% of the GPU) under a {LIMIT}% limit: {limited:.1} kernels/s, \
         {bare:.1} without gpuslice: keeps {:.1}%",
        shape.what,
        LIGHT_DUTY_PERMILLE / 10,
        kept * 100.0
    );
    assert!(
        kept >= LIGHT_KEEPS,
        "{}, light under a {LIMIT}% limit, keeps {:.1}% of its throughput (want at least {:.0}%)",
        shape.what,
        kept * 100.0,
        LIGHT_KEEPS * 100.0
    );
}

#[test]
fn a_30_percent_limit_holds_on_a_loop_of_0_2_ms_kernels_synchronized_after_each() {
    assert_limit_holds(&SYNC_EVERY_STEP_0_2_MS);
}

#[test]
fn a_30_percent_limit_holds_on_a_loop_of_2_ms_kernels_synchronized_after_each() {
    assert_limit_holds(&SYNC_EVERY_STEP_2_MS);
}

#[test]
fn a_30_percent_limit_holds_on_a_loop_of_10_ms_kernels_synchronized_after_each() {
    assert_limit_holds(&SYNC_EVERY_STEP_10_MS);
}

#[test]
fn a_30_percent_limit_holds_on_steps_of_8_kernels_and_a_synchronization() {
    assert_limit_holds(&SYNC_EVERY_8);
}

/// The loop of short kernels runs dry between each kernel and the next (each waits for the
/// synchronization of the one before, as a 2048² matmul loop on the H100 did, where a 30%
/// limit gave it 23% of the time while the watcher charged its time in flight): the limit
/// holds it to 30%, or to what it takes without gpuslice where that is less.
#[test]
fn a_30_percent_limit_holds_on_a_loop_of_100_us_kernels_synchronized_after_each() {
    assert_limit_or_bare_share_holds(&SHORT_KERNELS);
}

/// On the H100 a 1024² PyTorch step synchronized after each, limited to 30%, received 25%
/// of the GPU's time (NVML) while the shim charged it 30%: each timed launch found its
/// stream idle, and the events around it measured the launch call as the kernel's time.
/// Charging the call here holds the loop to 25.4-25.7% (29.1-29.9% without; debug builds on
/// the 2-core development machine).
#[test]
fn a_launch_call_that_delays_its_kernel_is_not_charged_as_kernel_time() {
    assert_limit_or_bare_share_holds(&LAUNCH_BOUND);
}

#[test]
fn a_30_percent_limit_holds_on_cuda_graph_replays() {
    assert_limit_holds(&GRAPH);
}

#[test]
fn a_30_percent_limit_holds_on_three_streams_at_once() {
    assert_limit_holds(&THREE_STREAMS);
}

#[test]
fn a_30_percent_limit_holds_on_the_per_thread_default_stream() {
    assert_limit_holds(&PER_THREAD);
}

#[test]
fn a_30_percent_limit_holds_for_a_tenant_of_two_processes_together() {
    assert_limit_holds(&TWO_PROCESSES);
}

#[test]
fn a_light_loop_of_0_2_ms_kernels_synchronized_after_each_is_not_throttled() {
    assert_light_tenant_not_throttled(&SYNC_EVERY_STEP_0_2_MS);
}

#[test]
fn a_light_loop_of_2_ms_kernels_synchronized_after_each_is_not_throttled() {
    assert_light_tenant_not_throttled(&SYNC_EVERY_STEP_2_MS);
}

#[test]
fn a_light_loop_of_10_ms_kernels_synchronized_after_each_is_not_throttled() {
    assert_light_tenant_not_throttled(&SYNC_EVERY_STEP_10_MS);
}

#[test]
fn light_steps_of_8_kernels_and_a_synchronization_are_not_throttled() {
    assert_light_tenant_not_throttled(&SYNC_EVERY_8);
}

#[test]
fn a_light_loop_of_100_us_kernels_synchronized_after_each_is_not_throttled() {
    assert_light_tenant_not_throttled(&SHORT_KERNELS);
}

#[test]
fn light_cuda_graph_replays_are_not_throttled() {
    assert_light_tenant_not_throttled(&GRAPH);
}

#[test]
fn light_work_on_three_streams_at_once_is_not_throttled() {
    assert_light_tenant_not_throttled(&THREE_STREAMS);
}

#[test]
fn light_work_on_the_per_thread_default_stream_is_not_throttled() {
    assert_light_tenant_not_throttled(&PER_THREAD);
}

#[test]
fn a_light_tenant_of_two_processes_is_not_throttled() {
    assert_light_tenant_not_throttled(&TWO_PROCESSES);
}

/// The busy fraction spin reports for its whole run (with `--mix`, its kernels' own times
/// over its wall time).
fn reported_busy_fraction(command: &mut Command, args: &[&str]) -> f64 {
    command.args(args);
    let output = Running::spawn(command).wait_output(std::time::Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "spin failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("kernels="))
        .unwrap_or_else(|| panic!("no summary line in\n{stdout}"));
    field_f64(summary, "busy_fraction")
}

fn field_f64(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Red team: one 20 ms kernel among 200 of 20 µs is rarely the launch the watcher times, so
/// the average launch it charged was near 20 µs and a tenant limited to 30% got 58% of the
/// GPU. Ticks a stream is busy through with the same work are now charged whole. And the
/// other way: the long kernel's own samples, averaged into what the short launches were
/// counted at, charged its time twice (25 to 32% of the GPU; 18 to 27% for a 2 ms kernel
/// in 20): launches outside those ticks are counted at their own average. And where a
/// stream's launches differ widely in length, those that ran through ticks charged whole
/// are charged those ticks and their ends, not their count (a 2 ms kernel among 20 µs ones,
/// two to a queue, got 39-43%).
#[test]
fn a_rare_long_kernel_among_short_ones_gets_the_limit() {
    let _serial = serial();
    let node = Node::new();
    let limit = [("GPUSLICE_COMPUTE_LIMIT", LIMIT)];
    // What each mix may get, as a share of the GPU: at most the limit + 3 points, at least
    // the limit less `under`.
    let mixes = [
        // 29.5-31.9% on an idle 2-core machine in debug builds since the simulated GPU is
        // built optimized and its markers on idle streams are reached at once, and timed
        // launches whose thread was preempted are timed again (28.7-31.0% before, 26.5%
        // once in CI's whole suite: the short launches were timed longer than they ran,
        // which the run's short launches carry into its ends,
        // `policy::gpu_time::run_ends_ns`); release builds 30.1-31.3%, docs/benchmarks.md.
        (
            "a 20 ms kernel every 200 of 20 µs, 8 in flight",
            "20000000",
            "8",
            "20000:200",
            0.045,
        ),
        // Two to a queue, the launches that ran through the ticks charged whole were the
        // long kernel and a short one, counted as two average launches: 39-43%. Charged
        // those ticks and their ends, 29-31.5% in release builds; in debug builds 27.0-29.4%
        // on an idle 2-core machine, 26.9% beside a build and 25.4% once in the whole
        // suite: the short launches are host-bound there, and the GPU idles between them in
        // the tick before the long one, which is charged whole (the H100 shows the same
        // with Python's launches: 26.1-26.5%, docs/benchmarks.md). Since the simulated GPU
        // is built optimized (and 46d9d6f), 27.6-32.7% in 60 runs on the legacy stream, and
        // 33.8-34.3% three times beside them: the stream was not known to be mixed for the
        // first 0.75 s (no long kernel timed yet), when its runs' ends went uncharged. Now
        // such a run is charged its ends all the same (`RunOfMixed::with_ends`): 26.9-31.0%
        // in 20 runs (docs/benchmarks.md).
        (
            "a 2 ms kernel every 20 of 20 µs, 2 in flight",
            "2000000",
            "2",
            "20000:20",
            0.06,
        ),
    ];
    for (what, long_ns, depth, mix, under) in mixes {
        let args = [
            "--for", "3000", "--ns", long_ns, "--depth", depth, "--mix", mix,
        ];
        for place in [&[][..], &["--legacy"][..]] {
            let mut command = tenant_spin(&node, "mixed", &limit);
            command.args(place);
            let got = reported_busy_fraction(&mut command, &args);
            eprintln!("{what} {place:?}, limited to {LIMIT}%: {got:.3}");
            assert!(
                got >= LIMIT_SHARE - under && got <= LIMIT_SHARE + 0.03,
                "{what} {place:?}, limited to {LIMIT}%, got {:.1}%",
                got * 100.0
            );
        }
    }
}

/// Work on a per-thread default stream is known finished only through timed launches, and
/// the last launches before a pause are rarely timed: without an end to it, the process
/// stayed "in flight" through its pause, charged all along, and its gate never opened
/// again (a hang seen once in the suite). It must resume at its limit after a pause.
#[test]
fn per_thread_work_that_pauses_is_not_held_in_flight() {
    let _serial = serial();
    let node = Node::new();
    let limit = [("GPUSLICE_COMPUTE_LIMIT", LIMIT)];
    let mut command = tenant_spin(&node, "paused", &limit);
    command.args([
        "--for",
        "2500",
        "--ns",
        "2000000",
        "--depth",
        "4",
        "--per-thread",
        "--idle-after",
        "800",
        "--idle-for",
        "300",
    ]);
    let report = finish(Running::spawn(&mut command));
    let resumed = report.resume_at.expect("spin resumed after its pause");
    let from = resumed + SETTLE_MS * 1_000_000;
    assert_near(
        "2 ms kernels on the per-thread stream after a 300 ms pause, limited to 30%",
        report.share(from, report.last),
        LIMIT_SHARE,
    );
}
