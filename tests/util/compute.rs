//! Helpers of the compute tests (`compute_shares.rs`, `compute_shapes.rs`): spin runs under
//! the shim, what they report, and the share of the GPU it shows.
//!
//! A share is judged from the workload's own completions, independent of gpuslice: spin
//! prints `done at_ns=<t> kernels=<n>` whenever it sees kernels finished (`t` on the
//! `CLOCK_MONOTONIC` clock all processes share, `n` the kernels finished so far), and the
//! GPU time a run received over a window is the kernels seen finished in it times their
//! length, as the simulated GPU runs them.

use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use super::{Node, Running, example, field};

/// The simulated GPU's tolerance around each figure the issues ask for (points).
pub const TOLERANCE: f64 = 0.03;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held by each test that measures shares: they take seconds each and measure time, so they
/// run one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// spin under the shim as a process of `tenant` with compute settings `env`.
pub fn tenant_spin(node: &Node, tenant: &str, env: &[(&str, &str)]) -> Command {
    let mut command = node.tenant(tenant, None, example("spin"));
    command.envs(env.iter().copied());
    command
}

/// What a load printed.
pub struct Report {
    /// When each kernel was seen finished (a kernel of a step or graph replay when the
    /// synchronization after it returned).
    pub done: Vec<u64>,
    pub idle_at: Option<u64>,
    pub resume_at: Option<u64>,
    pub first: u64,
    pub last: u64,
    /// The length of each kernel (`ns_each`).
    pub ns_each: u64,
}

/// What a spin run printed, once it exited 0 (within a minute).
pub fn succeeded(running: Running) -> String {
    let output: Output = running.wait_output(Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "spin failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// What a finished load reported.
pub fn finish(running: Running) -> Report {
    let stdout = succeeded(running);
    let at = |l: &str| field(l, "at_ns");
    let mut done = Vec::new();
    let mut seen = 0;
    for line in stdout.lines().filter(|l| l.starts_with("done ")) {
        let kernels = field(line, "kernels");
        assert!(
            kernels > seen,
            "kernels counted backwards: {line}\n{stdout}"
        );
        let t = at(line);
        done.extend((seen..kernels).map(|_| t));
        seen = kernels;
    }
    assert!(!done.is_empty(), "{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("kernels="))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    Report {
        first: done[0],
        last: done[done.len() - 1],
        idle_at: stdout.lines().find(|l| l.starts_with("idle ")).map(at),
        resume_at: stdout.lines().find(|l| l.starts_with("resume ")).map(at),
        ns_each: field(summary, "ns_each"),
        done,
    }
}

impl Report {
    /// The fraction of the GPU its kernels took between `from` and `to`.
    pub fn share(&self, from: u64, to: u64) -> f64 {
        self.share_of(self.ns_each, from, to)
    }

    /// The same, for kernels of `kernel_ns`.
    pub fn share_of(&self, kernel_ns: u64, from: u64, to: u64) -> f64 {
        let kernels = self.done.iter().filter(|&&t| t > from && t <= to).count();
        (kernels as f64 * kernel_ns as f64) / (to - from) as f64
    }
}

/// A window in which all of `reports` ran, leaving out their first `settle` ms.
pub fn common_window(reports: &[&Report], settle_ms: u64) -> (u64, u64) {
    let from = reports.iter().map(|r| r.first).max().unwrap() + settle_ms * 1_000_000;
    let to = reports.iter().map(|r| r.last).min().unwrap() - 50_000_000;
    assert!(to > from + 500_000_000, "too short a common window");
    (from, to)
}

pub fn assert_near(what: &str, got: f64, want: f64) {
    eprintln!("{what}: {:.1}% (want {:.1}%)", got * 100.0, want * 100.0);
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: got {:.1}%, want {:.1}% ± {:.0}",
        got * 100.0,
        want * 100.0,
        TOLERANCE * 100.0
    );
}
