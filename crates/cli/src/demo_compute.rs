//! The compute phase of `gpuslice demo`: both tenants launch spin kernels back to back at
//! once, and each one's share of the GPU is measured from its own kernels.
//!
//! A worker prints a `done at_ns=T` line for each kernel it saw finish, `T` on the clock
//! every process shares. A tenant's share over a stretch of time is the kernels it finished
//! in it, times their length, over the stretch: what it actually got through, whatever the
//! shim believes it charged. The stretch is the time both tenants ran, less the first
//! moments (while the shares settle) and the last (while the first to stop drains).

use std::io::{IsTerminal, Write};

use crate::cli::DemoPhase;
use crate::demo::{Phase, Tenant, exact_size};
use crate::demo_memory::MemoryOutcome;
use crate::demo_worker::CUDA_ERROR_OUT_OF_MEMORY;
use crate::status::{Report, format_duration};

/// How long each kernel spins: long against the shim's watcher tick, short against a
/// refresh of the progress display.
pub const KERNEL_NS: u64 = 2_000_000;
/// Kernels each worker keeps queued.
const DEPTH: u64 = 4;
/// The first part of the time both ran that is left out of the measurement.
const SETTLE_NS: u64 = 300_000_000;
/// The last part, left out as well.
const DRAIN_NS: u64 = 50_000_000;
/// The shortest stretch a share is measured over.
const SHORTEST_NS: u64 = 1_000_000_000;
/// How far a measured share may be from the promised one, in points.
pub const TOLERANCE_POINTS: f64 = 5.0;
/// The stretch the live display measures shares over.
const LIVE_NS: u64 = 500_000_000;
/// How often the live display is redrawn (in the workers' time).
const LIVE_EVERY_NS: u64 = 250_000_000;

/// What one tenant's compute worker reported, and what the ledger says of it.
#[derive(Debug, Default)]
pub struct ComputeOutcome {
    /// When each of its kernels was seen finished (`CLOCK_MONOTONIC` ns), in order.
    pub done: Vec<u64>,
    /// It printed its `finished` line.
    pub finished: bool,
    /// Its exit status and stderr, when it did not exit 0.
    pub failure: Option<String>,
    /// The GPU time the ledger charged the tenant, in total.
    pub gpu_time_ns: Option<u64>,
    /// How long the tenant's launches waited for credit, in total.
    pub throttled_ns: Option<u64>,
}

impl ComputeOutcome {
    /// Kernels it finished in `(from, to]`.
    fn kernels_in(&self, from: u64, to: u64) -> usize {
        let start = self.done.partition_point(|&t| t <= from);
        let end = self.done.partition_point(|&t| t <= to);
        end.saturating_sub(start)
    }

    /// The fraction of the GPU its kernels took in `(from, to]`.
    fn share(&self, from: u64, to: u64) -> f64 {
        let kernels = u64::try_from(self.kernels_in(from, to)).unwrap_or(u64::MAX);
        #[allow(clippy::cast_precision_loss)]
        let share =
            kernels.saturating_mul(KERNEL_NS) as f64 / to.saturating_sub(from).max(1) as f64;
        share
    }
}

/// The compute phase: its workers' outcomes and their progress on screen.
#[derive(Debug)]
pub struct ComputePhase {
    /// One per tenant, in the tenants' order.
    pub outcomes: Vec<ComputeOutcome>,
    for_ms: u64,
    names: Vec<String>,
    /// Whether progress is drawn as bars (a terminal) or printed as lines.
    bars: bool,
    drawn: bool,
    /// The workers' time of the first kernel seen, and of the last redraw.
    started_ns: Option<u64>,
    shown_ns: u64,
}

impl ComputePhase {
    /// The phase for `tenants`, each launching kernels for `for_ms`.
    pub fn new(tenants: &[Tenant], for_ms: u64) -> ComputePhase {
        ComputePhase {
            outcomes: tenants.iter().map(|_| ComputeOutcome::default()).collect(),
            for_ms,
            names: tenants.iter().map(|t| t.name.to_string()).collect(),
            bars: std::io::stdout().is_terminal(),
            drawn: false,
            started_ns: None,
            shown_ns: 0,
        }
    }

    /// The stretch all tenants ran in, less the settling and draining: `(from, to)`.
    pub fn window(&self) -> Option<(u64, u64)> {
        let from = self
            .outcomes
            .iter()
            .map(|o| o.done.first().copied())
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .max()?
            .saturating_add(SETTLE_NS);
        let to = self
            .outcomes
            .iter()
            .filter_map(|o| o.done.last().copied())
            .min()?
            .saturating_sub(DRAIN_NS);
        (to >= from.saturating_add(SHORTEST_NS)).then_some((from, to))
    }

    /// What tenant `index` got, as a fraction of the GPU, over [`ComputePhase::window`].
    pub fn measured(&self, index: usize) -> Option<f64> {
        let (from, to) = self.window()?;
        Some(self.outcomes.get(index)?.share(from, to))
    }

    /// Takes the GPU time and throttled time the ledger recorded for each tenant.
    pub fn take_ledger(&mut self, tenants: &[Tenant], report: &Report) {
        for (tenant, outcome) in tenants.iter().zip(&mut self.outcomes) {
            let gpu = report
                .tenants
                .iter()
                .find(|t| t.name == tenant.name.as_str())
                .and_then(|t| t.usage.as_ref())
                .and_then(|u| u.gpus.iter().max_by_key(|g| g.gpu_time_ns));
            outcome.gpu_time_ns = gpu.map(|g| g.gpu_time_ns);
            outcome.throttled_ns = gpu.map(|g| g.throttled_ns);
        }
    }

    /// Why tenant `index` did not get its share, if it did not.
    pub fn problem(&self, index: usize, tenant: &Tenant) -> Option<String> {
        let name = &tenant.name;
        let outcome = self.outcomes.get(index)?;
        if let Some(failure) = &outcome.failure {
            return Some(format!("{name}'s kernels: {failure}"));
        }
        let promised = f64::from(tenant.share_permille) / 10.0;
        let Some(got) = self.measured(index) else {
            return Some(format!(
                "{name}: the tenants did not run kernels side by side for long enough to \
                 measure their shares"
            ));
        };
        let got = got * 100.0;
        ((got - promised).abs() > TOLERANCE_POINTS).then(|| {
            format!(
                "{name} got {got:.1}% of the GPU's time, promised {promised:.0}% (± \
                 {TOLERANCE_POINTS:.0} points)"
            )
        })
    }

    /// Shows the shares over the last [`LIVE_NS`], at most every [`LIVE_EVERY_NS`].
    fn show(&mut self) {
        // The latest time every worker has reported up to.
        let Some(now) = self
            .outcomes
            .iter()
            .map(|o| o.done.last().copied())
            .collect::<Option<Vec<u64>>>()
            .and_then(|last| last.into_iter().min())
        else {
            return;
        };
        let Some(started) = self.started_ns else {
            return;
        };
        if now < self.shown_ns.saturating_add(LIVE_EVERY_NS) {
            return;
        }
        self.shown_ns = now;
        let from = now.saturating_sub(LIVE_NS).max(started);
        if now <= from {
            return;
        }
        let shares: Vec<f64> = self.outcomes.iter().map(|o| o.share(from, now)).collect();
        #[allow(clippy::cast_precision_loss)]
        let elapsed = now.saturating_sub(started) as f64 / 1e9;
        let mut out = std::io::stdout().lock();
        if !self.bars {
            let figures: Vec<String> = self
                .names
                .iter()
                .zip(&shares)
                .map(|(name, share)| format!("{name} {:.1}%", share * 100.0))
                .collect();
            let _ = writeln!(
                out,
                "[compute] {elapsed:.1} s of {:.1} s: {} (over the last {} ms)",
                self.for_ms as f64 / 1e3,
                figures.join(", "),
                LIVE_NS / 1_000_000
            );
            return;
        }
        if self.drawn {
            let _ = write!(out, "\x1b[{}A", self.names.len());
        }
        for (name, share) in self.names.iter().zip(&shares) {
            let _ = writeln!(out, "\x1b[2K{}", share_bar(name, *share, elapsed));
        }
        let _ = out.flush();
        self.drawn = true;
    }
}

impl Phase for ComputePhase {
    fn kind(&self) -> DemoPhase {
        DemoPhase::Compute
    }

    fn worker_args(&self, _tenant: &Tenant) -> Vec<String> {
        vec![
            "--for-ms".into(),
            self.for_ms.to_string(),
            "--kernel-ns".into(),
            KERNEL_NS.to_string(),
            "--depth".into(),
            DEPTH.to_string(),
        ]
    }

    fn line(&mut self, index: usize, line: &str) {
        let Some(outcome) = self.outcomes.get_mut(index) else {
            return;
        };
        if line.starts_with("done ") {
            let at = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("at_ns="))
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(at) = at {
                outcome.done.push(at);
                self.started_ns = Some(self.started_ns.map_or(at, |s| s.min(at)));
                self.show();
            }
        } else if line.starts_with("finished ") {
            outcome.finished = true;
        }
    }

    fn failed(&mut self, index: usize, why: String) {
        if let Some(outcome) = self.outcomes.get_mut(index) {
            outcome.failure = Some(why);
        }
    }
}

/// `demo-a  [#########.....................]  29.8%   1.5 s`.
fn share_bar(name: &str, share: f64, elapsed: f64) -> String {
    const WIDTH: usize = 30;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let filled = ((share.clamp(0.0, 1.0) * WIDTH as f64).round() as usize).min(WIDTH);
    format!(
        "{name:<8}[{}{}] {:>5.1}% of the GPU  ({elapsed:.1} s)",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        share * 100.0
    )
}

/// What happened when the tenant ran into its memory quota, in a few words.
fn memory_words(outcome: &MemoryOutcome) -> String {
    if outcome.failure.is_some() {
        return "its worker failed".into();
    }
    match (outcome.refused_at, outcome.refusal) {
        (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) => {
            let then = if outcome.recovered {
                ", recovered"
            } else {
                ", not recovered"
            };
            format!("refused at {}{then}", exact_size(at))
        }
        (Some(at), Some(rc)) => format!("error {rc} at {}", exact_size(at)),
        _ if outcome.never_refused => {
            format!("never refused ({})", exact_size(outcome.allocated))
        }
        _ => "-".into(),
    }
}

/// The demo's closing table: per tenant, the memory quota and what happened at it, the
/// promised compute share and the measured one, and how long its launches were held back.
pub fn summary_table(
    tenants: &[Tenant],
    memory: &[MemoryOutcome],
    compute: &ComputePhase,
) -> String {
    let row = |cells: [&str; 6]| {
        let line = format!(
            "{:<9}{:<8}{:<31}{:>6}{:>8}{:>11}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        );
        line.trim_end().to_string()
    };
    let mut lines = vec![row([
        "tenant",
        "memory",
        "at its memory quota",
        "share",
        "got",
        "throttled",
    ])];
    for (i, tenant) in tenants.iter().enumerate() {
        let memory = memory.get(i).map_or_else(|| "-".into(), memory_words);
        let got = compute
            .measured(i)
            .map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0));
        let throttled = compute
            .outcomes
            .get(i)
            .and_then(|o| o.throttled_ns)
            .map_or_else(|| "-".into(), format_duration);
        lines.push(row([
            tenant.name.as_str(),
            &exact_size(tenant.quota),
            &memory,
            &format!("{}%", tenant.share_permille / 10),
            &got,
            &throttled,
        ]));
    }
    if let Some((from, to)) = compute.window() {
        #[allow(clippy::cast_precision_loss)]
        let seconds = to.saturating_sub(from) as f64 / 1e9;
        lines.push(format!(
            "\ngot: the GPU time of the kernels each tenant finished in the {seconds:.1} s both\n\
             ran, over that time. throttled: how long its launches waited for their share."
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::TenantName;

    fn tenant(name: &str, share_permille: u32) -> Tenant {
        Tenant {
            name: TenantName::new(name).unwrap(),
            quota: 1 << 30,
            chunk: 64 << 20,
            share_permille,
        }
    }

    /// A phase where tenant `a` finished a kernel every `a_every` ns and `b` every
    /// `b_every` ns, for `seconds`.
    fn phase(a_every: u64, b_every: u64, seconds: u64) -> ComputePhase {
        let tenants = [tenant("a", 300), tenant("b", 700)];
        let mut phase = ComputePhase::new(&tenants, seconds * 1000);
        phase.bars = false;
        let end = 1_000_000_000 + seconds * 1_000_000_000;
        for (index, every) in [(0, a_every), (1, b_every)] {
            let mut t = 1_000_000_000;
            while t <= end {
                phase.outcomes[index].done.push(t);
                t += every;
            }
        }
        phase
    }

    #[test]
    fn shares_are_kernel_time_over_the_common_window() {
        // 2 ms kernels: one every 6.67 ms is 30%, one every 2.857 ms is 70%.
        let p = phase(6_666_667, 2_857_143, 4);
        let a = p.measured(0).unwrap();
        let b = p.measured(1).unwrap();
        assert!((a - 0.30).abs() < 0.005, "{a}");
        assert!((b - 0.70).abs() < 0.005, "{b}");
        let tenants = [tenant("a", 300), tenant("b", 700)];
        assert_eq!(p.problem(0, &tenants[0]), None);
        assert_eq!(p.problem(1, &tenants[1]), None);
        let table = summary_table(&tenants, &[], &p);
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[0], "a");
        assert!(row.contains(&"30%") && row.contains(&"30.0%"), "{table}");
    }

    #[test]
    fn an_unfair_split_or_a_short_run_is_a_problem() {
        let tenants = [tenant("a", 300), tenant("b", 700)];
        let even = phase(4_000_000, 4_000_000, 4);
        let problem = even.problem(0, &tenants[0]).unwrap();
        assert!(
            problem.contains("50.0%") && problem.contains("30%"),
            "{problem}"
        );
        let short = phase(4_000_000, 4_000_000, 1);
        assert_eq!(short.window(), None);
        assert!(
            short
                .problem(1, &tenants[1])
                .unwrap()
                .contains("long enough")
        );
    }
}
