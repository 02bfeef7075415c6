//! Time-slicing between real processes on the simulated GPU: each process with a kernel
//! executing on a device progresses at `1/k` of wall time, `k` the number of such processes
//! (see `src/kernel.rs`).
//!
//! Every test runs `probe slice`: processes that keep `gpuslice_spin` kernels back to back on
//! one device from a common start time and print when each kernel ends (from events, as
//! `cuEventElapsedTime` sees it). Two measures come from those ends:
//!
//! - the **spacing** of consecutive ends, the wall time each kernel took: the simulation
//!   computes it, so it is exact (to microseconds) whenever `k` stays the same, however late
//!   the machine schedules the processes;
//! - the **share** of the GPU a process received from the moment every process has started
//!   (each prints when it woke at the common start) to the end of the window: kernels ending
//!   inside it times their duration, divided by its length. It is quantized by one kernel
//!   (a third to a half of a percentage point here). Measured on two CPUs, 20 runs in a row,
//!   and again with two CPU hogs beside them: 49.5 to 50.0% each for two processes, 33.0 to
//!   33.4% each for three, so ±3 points holds with room.
//!
//! The tests hold `timing_alone` (one at a time) and take about 4 s together.

mod common;

use std::process::Command;

use common::{Running, Sim, probe_linked, timing_alone};

const PTX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ptx/spin.ptx");
const MS: u64 = 1_000_000;

/// `CLOCK_MONOTONIC` in nanoseconds, the clock the probe prints.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

/// A process ready to keep kernels of `kernel_ns` back to back on `device` for `window_ns`.
struct Spinner {
    child: Running,
    kernel_ns: u64,
}

impl Spinner {
    fn start(cmd: &mut Command, device: u32, kernel_ns: u64, window_ns: u64) -> Spinner {
        Self::start_with(cmd, device, kernel_ns, window_ns, &[])
    }

    /// As `start`, with more arguments for `probe slice` (a gap).
    fn start_with(
        cmd: &mut Command,
        device: u32,
        kernel_ns: u64,
        window_ns: u64,
        more: &[&str],
    ) -> Spinner {
        let mut child = Running::start(
            cmd.args([
                "slice",
                PTX,
                &device.to_string(),
                &kernel_ns.to_string(),
                &window_ns.to_string(),
            ])
            .args(more),
        );
        child.expect_line("ready");
        Spinner { child, kernel_ns }
    }

    /// When it started and when its kernels ended (`CLOCK_MONOTONIC` ns), once it has
    /// stopped.
    fn ends(mut self) -> Ends {
        let (mut origin, mut ends) = (None, Vec::new());
        loop {
            let line = self.child.next_line();
            if line == "stopped" {
                break;
            }
            let value = |prefix: &str| -> Option<u64> { line.strip_prefix(prefix)?.parse().ok() };
            match (value("origin="), value("end=")) {
                (Some(o), _) => origin = Some(o),
                (_, Some(end)) => ends.push(end),
                _ => panic!("unexpected line {line:?}"),
            }
        }
        self.child.finish();
        Ends {
            origin: origin.expect("an origin= line"),
            ends,
            kernel_ns: self.kernel_ns,
        }
    }
}

/// Starts every spinner at one time, a little ahead; returns it.
fn go(spinners: &mut [&mut Spinner]) -> u64 {
    let start = monotonic_ns() + 30 * MS;
    for s in spinners {
        s.child.send(&format!("go {start}"));
    }
    start
}

/// The kernel ends of one process.
#[derive(Debug)]
struct Ends {
    /// When it woke at the common start and began launching.
    origin: u64,
    ends: Vec<u64>,
    kernel_ns: u64,
}

impl Ends {
    /// The fraction of the GPU received in `(from, to]`.
    fn share(&self, from: u64, to: u64) -> f64 {
        let done = self.ends.iter().filter(|&&e| e > from && e <= to).count();
        done as f64 * self.kernel_ns as f64 / (to - from) as f64
    }

    /// (previous end, wall time of the kernel) for every kernel after the first.
    fn spans(&self) -> Vec<(u64, u64)> {
        self.ends.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
    }

    /// The wall time of every kernel after the first that started in `[from, to)`, as a
    /// multiple of the kernel's duration.
    fn stretches(&self, from: u64, to: u64) -> Vec<f64> {
        self.spans()
            .into_iter()
            .filter(|&(prev, _)| prev >= from && prev < to)
            .map(|(_, span)| span as f64 / self.kernel_ns as f64)
            .collect()
    }
}

/// When the last of them woke at the common start: measures of sharing begin there (a
/// process that wakes late, as a loaded machine makes one now and then, leaves the others
/// without it until then).
fn all_started(ends: &[&Ends]) -> u64 {
    ends.iter().map(|e| e.origin).max().unwrap()
}

/// Asserts that every stretch is `want` within `tolerance` (relative), and that there are
/// at least `at_least` of them.
fn assert_stretches(what: &str, got: &[f64], want: f64, tolerance: f64, at_least: usize) {
    assert!(
        got.len() >= at_least,
        "{what}: only {} kernels: {got:?}",
        got.len()
    );
    let bad: Vec<_> = got
        .iter()
        .filter(|&&s| (s - want).abs() > want * tolerance)
        .collect();
    assert!(bad.is_empty(), "{what}: want {want} ± {tolerance}: {got:?}");
}

/// Runs `n` processes on device 0 for `window` with kernels of `kernel_ns`: their ends, and
/// the interval `(from, to]` during which all of them executed.
fn run_together(sim: &Sim, n: usize, kernel_ns: u64, window: u64) -> (Vec<Ends>, u64, u64) {
    let mut spinners: Vec<Spinner> = (0..n)
        .map(|_| Spinner::start(&mut sim.command(&probe_linked()), 0, kernel_ns, window))
        .collect();
    let start = go(&mut spinners.iter_mut().collect::<Vec<_>>());
    let ends: Vec<Ends> = spinners.into_iter().map(Spinner::ends).collect();
    let from = all_started(&ends.iter().collect::<Vec<_>>());
    (ends, from, start + window)
}

/// Asserts that `n` processes keeping kernels of `kernel_ns` back to back for `window` each
/// get `1/n` of the GPU, and that each kernel takes `n` times its duration.
fn assert_fair_shares(n: usize, kernel_ns: u64, window: u64) {
    let sim = Sim::new("1Gi");
    let (ends, from, to) = run_together(&sim, n, kernel_ns, window);
    let shares: Vec<f64> = ends.iter().map(|e| e.share(from, to)).collect();
    eprintln!(
        "shares of {n} processes over {} ms: {shares:?}",
        (to - from) / MS
    );
    let fair = 1.0 / n as f64;
    for (share, e) in shares.iter().zip(&ends) {
        assert!((share - fair).abs() <= 0.03, "{shares:?}");
        // Once all execute (and until the first stops), each kernel takes n times its
        // duration, computed exactly whenever the machine runs the processes.
        let steady = e.stretches(from + MS, to - 20 * MS);
        let expected = usize::try_from((to - from - 21 * MS) / (n as u64 * kernel_ns)).unwrap();
        assert_stretches("together", &steady, n as f64, 0.01, expected - 2);
    }
    // Work-conserving: together they keep the GPU busy.
    assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() <= 0.03,
        "{shares:?}"
    );
}

#[test]
fn two_processes_executing_at_once_get_half_the_gpu_each() {
    let _alone = timing_alone();
    assert_fair_shares(2, 5 * MS, 1000 * MS);
}

#[test]
fn three_processes_executing_at_once_get_a_third_each() {
    let _alone = timing_alone();
    assert_fair_shares(3, 2 * MS, 600 * MS);
}

#[test]
fn a_process_alone_gets_the_whole_gpu() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let (ends, from, to) = run_together(&sim, 1, 5 * MS, 200 * MS);
    let ends = &ends[0];
    let share = ends.share(from, to);
    eprintln!("share alone: {share}");
    // Every 5 ms kernel takes 5 ms, to the microsecond; the share is 39 kernels of the
    // 39.9 that fit in the window after the process woke.
    assert_stretches("alone", &ends.stretches(0, u64::MAX), 1.0, 0.0002, 30);
    assert!(share >= 0.97, "{share}");
}

#[test]
fn a_process_killed_mid_kernel_stops_counting_within_milliseconds() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let kernel = 5 * MS;
    let mut survivor = Spinner::start(&mut sim.command(&probe_linked()), 0, kernel, 400 * MS);
    let mut victim = Spinner::start(&mut sim.command(&probe_linked()), 0, kernel, 60_000 * MS);
    let start = go(&mut [&mut survivor, &mut victim]);
    let victim_origin: u64 = victim.child.next_line()["origin=".len()..].parse().unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        (start + 150 * MS).saturating_sub(monotonic_ns()),
    ));
    let killed = monotonic_ns();
    victim.child.kill_9();
    let ends = survivor.ends();
    let from = victim_origin.max(ends.origin);
    let shared = ends.stretches(from + MS, killed - 10 * MS);
    assert_stretches("before the kill", &shared, 2.0, 0.01, 5);
    // The victim's mark stays in the state file, but its heartbeat stops: after
    // ledger::STALE_BEAT_NS (5 ms) the survivor tests the victim's lock, finds it dead and
    // runs alone again. The first kernel wholly at full rate starts 6.7 to 9.3 ms after the
    // kill (measured); allow 25 ms for a loaded machine to run the survivor at all.
    let recovered = ends
        .spans()
        .into_iter()
        .find(|&(prev, span)| prev >= killed && span <= kernel + kernel / 100)
        .map(|(prev, _)| prev - killed);
    eprintln!("full rate from {recovered:?} ns after the kill");
    let alone = ends.stretches(killed + 25 * MS, u64::MAX);
    assert_stretches("after the kill", &alone, 1.0, 0.01, 20);
}

#[test]
fn kernels_on_two_devices_do_not_slow_each_other() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi,1Gi");
    let window = 200 * MS;
    let mut a = Spinner::start(&mut sim.command(&probe_linked()), 0, 5 * MS, window);
    let mut b = Spinner::start(&mut sim.command(&probe_linked()), 1, 5 * MS, window);
    go(&mut [&mut a, &mut b]);
    for ends in [a.ends(), b.ends()] {
        assert_stretches("two devices", &ends.stretches(0, u64::MAX), 1.0, 0.0002, 30);
    }
}

#[test]
fn timeslice_off_gives_every_kernel_its_own_wall_time() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let window = 200 * MS;
    let off = || {
        let mut cmd = sim.command(&probe_linked());
        cmd.env("FAKECUDA_TIMESLICE", "off");
        cmd
    };
    let mut a = Spinner::start(&mut off(), 0, 5 * MS, window);
    let mut b = Spinner::start(&mut off(), 0, 5 * MS, window);
    go(&mut [&mut a, &mut b]);
    for ends in [a.ends(), b.ends()] {
        assert_stretches(
            "timeslice off",
            &ends.stretches(0, u64::MAX),
            1.0,
            0.0002,
            30,
        );
    }
}

#[test]
fn a_process_that_idles_between_kernels_leaves_the_gpu_to_the_other() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let window = 600 * MS;
    let gap = 2 * MS;
    // A launches one 2 ms kernel at a time and idles 2 ms after each; B keeps 1 ms kernels
    // back to back. A's kernels share the GPU with B (4 ms each), B runs alone in A's gaps.
    let mut a = Spinner::start_with(
        &mut sim.command(&probe_linked()),
        0,
        2 * MS,
        window,
        &[&gap.to_string()],
    );
    let mut b = Spinner::start(&mut sim.command(&probe_linked()), 0, MS, window);
    let to = go(&mut [&mut a, &mut b]) + window;
    let (a, b) = (a.ends(), b.ends());
    let from = all_started(&[&a, &b]);
    let (share_a, share_b) = (a.share(from, to), b.share(from, to));
    eprintln!("shares with gaps: {share_a} {share_b}");
    // Each of A's periods is its kernel stretched to 4 ms, then the gap and the host's
    // latency to launch again (a fraction of a millisecond, more on a loaded machine). (Not
    // the last ones: B exits once past the window, and A may start one more kernel before.)
    let periods = a.stretches(from, to - 20 * MS);
    assert!(periods.len() >= 50, "{periods:?}");
    assert!(periods.iter().all(|&p| p >= 2.99), "{periods:?}");
    let mut sorted = periods.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(sorted[sorted.len() / 2] <= 3.5, "{periods:?}");
    // Every change of k is accounted at its instant: together they used the whole GPU, no
    // more, no less. Measured: 0.993 to 1.002 (the kernels cut by the window's edges are
    // missing); 0.983 to 1.016 with two CPU hogs on the two CPUs, where a process marks its
    // changes late and kernels of the other that already ended cannot be moved. Were B
    // slowed by A in A's gaps too, it would be about 0.82.
    assert!(
        (share_a + share_b - 1.0).abs() <= 0.03,
        "{share_a} + {share_b}"
    );
}
