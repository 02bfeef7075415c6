//! The compute phase of `gpuslice demo`: both tenants launch kernels of a fixed amount of work
//! back to back at once, and each one's share of the GPU is measured from its own kernels.
//!
//! First one tenant runs alone for a moment (the trial) to learn how long a kernel takes on
//! the GPU undisturbed, and the kernels' size is set from it. A worker prints a `done at_ns=T`
//! line for each kernel it saw finish, `T` on the clock every process shares. A tenant's
//! share over a stretch of time is the kernels it finished in it, times what one takes alone,
//! over the stretch: the part of a whole GPU's work it got through, whatever the shim
//! believes it charged. The stretch is the time both tenants ran, less the first moments
//! (while the shares settle) and the last (while the first to stop drains).

use std::io::{IsTerminal, Write};

use crate::cli::DemoPhase;
use crate::demo::memory::MemoryOutcome;
use crate::demo::worker::CUDA_ERROR_OUT_OF_MEMORY;
use crate::demo::{Phase, Tenant, exact_size};
use crate::report::Report;
use crate::status::format_duration;

/// How long each kernel takes alone, once sized by the trial: long against the shim's
/// watcher tick, short against a refresh of the progress display.
pub const KERNEL_NS: u64 = 2_000_000;
/// The rounds of work of each kernel of the trial.
const TRIAL_ROUNDS: u64 = 20_000;
/// How long the trial launches kernels.
pub const TRIAL_MS: u64 = 700;
/// The start of the trial that is left out of its measurement (module load, warm-up).
const TRIAL_SETTLE_NS: u64 = 150_000_000;
/// The fewest trial kernels a kernel's time is measured from.
const TRIAL_FEWEST: usize = 8;
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
/// How often a plain progress line is printed when stdout is not a terminal.
const PLAIN_EVERY_NS: u64 = 1_000_000_000;

/// The size of the phase's kernels and what one takes on the GPU alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Rounds of work per kernel.
    pub rounds: u64,
    /// Nanoseconds one kernel of `rounds` takes with the GPU to itself.
    pub solo_ns: f64,
}

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

    /// The fraction of a whole GPU's work its kernels did in `(from, to]`, one taking
    /// `solo_ns` alone.
    fn share(&self, from: u64, to: u64, solo_ns: f64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let share =
            self.kernels_in(from, to) as f64 * solo_ns / to.saturating_sub(from).max(1) as f64;
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
    /// The kernels' size.
    calibration: Calibration,
    /// Whether progress is shown at all (not during the trial).
    live: bool,
    /// Whether progress is drawn as bars (a terminal) or printed as lines.
    bars: bool,
    drawn: bool,
    /// The workers' time of the first kernel seen, and of the last redraw.
    started_ns: Option<u64>,
    shown_ns: u64,
}

impl ComputePhase {
    /// The phase for `tenants`, each launching kernels of `calibration` for `for_ms`.
    pub fn new(tenants: &[Tenant], for_ms: u64, calibration: Calibration) -> ComputePhase {
        ComputePhase {
            outcomes: tenants.iter().map(|_| ComputeOutcome::default()).collect(),
            for_ms,
            names: tenants.iter().map(|t| t.name.to_string()).collect(),
            calibration,
            live: true,
            bars: std::io::stdout().is_terminal(),
            drawn: false,
            started_ns: None,
            shown_ns: 0,
        }
    }

    /// The trial: `tenant` alone, with kernels of [`TRIAL_ROUNDS`], shown nothing.
    pub fn trial(tenant: &Tenant) -> ComputePhase {
        let mut phase = ComputePhase::new(
            std::slice::from_ref(tenant),
            TRIAL_MS,
            Calibration {
                rounds: TRIAL_ROUNDS,
                solo_ns: f64::NAN,
            },
        );
        phase.live = false;
        phase
    }

    /// After the trial: kernels sized to take [`KERNEL_NS`] alone, and how long they take,
    /// from how often the trial's kernels finished after it settled.
    pub fn calibrated(&self) -> Result<Calibration, String> {
        let Some(outcome) = self.outcomes.first() else {
            return Err("the trial had no tenant".into());
        };
        if let Some(failure) = &outcome.failure {
            return Err(format!("the trial's kernels: {failure}"));
        }
        let first = outcome.done.first().copied().unwrap_or(0);
        let settled: Vec<u64> = outcome
            .done
            .iter()
            .copied()
            .filter(|&t| t >= first.saturating_add(TRIAL_SETTLE_NS))
            .collect();
        let (Some(&from), Some(&to)) = (settled.first(), settled.last()) else {
            return Err(format!(
                "the trial's kernels did not finish within {TRIAL_MS} ms (is the GPU busy?)"
            ));
        };
        if settled.len() < TRIAL_FEWEST || to <= from {
            return Err(format!(
                "only {} of the trial's kernels finished within {TRIAL_MS} ms (is the GPU \
                 busy?)",
                outcome.done.len()
            ));
        }
        #[allow(clippy::cast_precision_loss)]
        let trial_ns = to.saturating_sub(from) as f64 / (settled.len() - 1) as f64;
        #[allow(clippy::cast_precision_loss)]
        let per_round = trial_ns / TRIAL_ROUNDS as f64;
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        #[allow(clippy::cast_sign_loss)]
        let rounds = ((KERNEL_NS as f64 / per_round).round() as u64).max(1);
        #[allow(clippy::cast_precision_loss)]
        let solo_ns = per_round * rounds as f64;
        Ok(Calibration { rounds, solo_ns })
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
        let to = self.reported_until()?.saturating_sub(DRAIN_NS);
        (to >= from.saturating_add(SHORTEST_NS)).then_some((from, to))
    }

    /// What tenant `index` got, as a fraction of the GPU, over [`ComputePhase::window`].
    pub fn measured(&self, index: usize) -> Option<f64> {
        let (from, to) = self.window()?;
        Some(
            self.outcomes
                .get(index)?
                .share(from, to, self.calibration.solo_ns),
        )
    }

    /// What each tenant got over successive `every_ns` from the first kernel seen to the
    /// last time all reported: `(seconds since the start, shares)` per step.
    pub fn over_time(&self, every_ns: u64) -> Vec<(f64, Vec<f64>)> {
        let (Some(started), Some(end)) = (self.started_ns, self.reported_until()) else {
            return Vec::new();
        };
        let every_ns = every_ns.max(1);
        let mut steps = Vec::new();
        let mut from = started;
        while from.saturating_add(every_ns) <= end {
            let to = from + every_ns;
            #[allow(clippy::cast_precision_loss)]
            let at = (to - started) as f64 / 1e9;
            let shares = self
                .outcomes
                .iter()
                .map(|o| o.share(from, to, self.calibration.solo_ns))
                .collect();
            steps.push((at, shares));
            from = to;
        }
        steps
    }

    /// The latest time every worker has reported up to.
    fn reported_until(&self) -> Option<u64> {
        self.outcomes
            .iter()
            .map(|o| o.done.last().copied())
            .collect::<Option<Vec<u64>>>()
            .and_then(|last| last.into_iter().min())
    }

    /// The tenants' names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
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
                "{name} got {got:.1}% of the GPU, promised {promised:.0}% (± \
                 {TOLERANCE_POINTS:.0} points)"
            )
        })
    }

    /// Shows the shares over the last [`LIVE_NS`], at most every [`LIVE_EVERY_NS`].
    fn show(&mut self) {
        if !self.live {
            return;
        }
        let Some(now) = self.reported_until() else {
            return;
        };
        let Some(started) = self.started_ns else {
            return;
        };
        // The first figures after a whole step, not at the first kernel.
        if self.shown_ns == 0 {
            self.shown_ns = started;
        }
        let every = if self.bars {
            LIVE_EVERY_NS
        } else {
            PLAIN_EVERY_NS
        };
        if now < self.shown_ns.saturating_add(every) {
            return;
        }
        self.shown_ns = now;
        let from = now.saturating_sub(LIVE_NS).max(started);
        if now <= from {
            return;
        }
        let solo_ns = self.calibration.solo_ns;
        let shares: Vec<f64> = self
            .outcomes
            .iter()
            .map(|o| o.share(from, now, solo_ns))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let elapsed = now.saturating_sub(started) as f64 / 1e9;
        let mut out = std::io::stdout().lock();
        if !self.bars {
            let _ = writeln!(
                out,
                "{}",
                plain_progress(&self.names, &shares, elapsed, self.for_ms)
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
            "--rounds".into(),
            self.calibration.rounds.to_string(),
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

/// A progress line for a log: `compute, 1.0 s of 4.0 s: demo-a got 29.8%, demo-b 70.2% of
/// the GPU over the last 0.5 s`.
fn plain_progress(names: &[String], shares: &[f64], elapsed: f64, for_ms: u64) -> String {
    let figures: Vec<String> = names
        .iter()
        .zip(shares)
        .enumerate()
        .map(|(i, (name, share))| {
            let verb = if i == 0 { " got" } else { "" };
            format!("{name}{verb} {:.1}%", share * 100.0)
        })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let seconds = |ns: u64| ns as f64 / 1e9;
    format!(
        "compute, {elapsed:.1} s of {:.1} s: {} of the GPU over the last {:.1} s",
        seconds(for_ms * 1_000_000),
        figures.join(", "),
        seconds(LIVE_NS)
    )
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

/// The closing verdict on one line: `verdict: PASS: ...` with the shares each tenant got,
/// or `verdict: FAIL: ` and what went wrong.
pub fn verdict(tenants: &[Tenant], compute: &ComputePhase, problems: &[String]) -> String {
    if !problems.is_empty() {
        return format!("verdict: FAIL: {}", problems.join("; "));
    }
    let shares: Vec<String> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let got = compute
                .measured(i)
                .map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0));
            format!("{} {got} of {}%", t.name, t.share_permille / 10)
        })
        .collect();
    format!(
        "verdict: PASS: each tenant was refused at its memory quota and allocated again, and \
         got its share of the GPU within {TOLERANCE_POINTS:.0} points ({})",
        shares.join(", ")
    )
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
        let Calibration { rounds, solo_ns } = compute.calibration;
        lines.push(format!(
            "\ngot: the work each tenant's kernels did in the {seconds:.1} s both ran, as a part\n\
             of what the GPU does for one alone (a kernel of {rounds} rounds took {:.2} ms\n\
             alone). throttled: how long its launches waited for their share.",
            solo_ns / 1e6
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
        let calibration = Calibration {
            rounds: 1000,
            solo_ns: 2e6,
        };
        let mut phase = ComputePhase::new(&tenants, seconds * 1000, calibration);
        phase.live = false;
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
    fn the_trial_sizes_kernels_to_their_time_alone() {
        let a = tenant("a", 300);
        let mut trial = ComputePhase::trial(&a);
        // A trial kernel every 0.5 ms for 700 ms: 25 ns a round, so 80000 rounds take 2 ms.
        trial.outcomes[0].done = (1..=1400).map(|i| 1_000_000_000 + i * 500_000).collect();
        let c = trial.calibrated().unwrap();
        assert_eq!(c.rounds, 80_000);
        assert!((c.solo_ns - 2e6).abs() < 1.0, "{c:?}");

        // Too few kernels, or a failed worker, size nothing.
        trial.outcomes[0].done = vec![1_000_000_000, 1_300_000_000, 1_600_000_000];
        let e = trial.calibrated().unwrap_err();
        assert!(e.contains("only 3"), "{e}");
        trial.outcomes[0].done.clear();
        assert!(trial.calibrated().unwrap_err().contains("did not finish"));
        trial.outcomes[0].failure = Some("exit status 1: no GPU".into());
        assert!(trial.calibrated().unwrap_err().contains("no GPU"));
    }

    #[test]
    fn plain_progress_is_one_readable_line() {
        let names = ["demo-a".to_string(), "demo-b".to_string()];
        assert_eq!(
            plain_progress(&names, &[0.298, 0.7021], 1.04, 4000),
            "compute, 1.0 s of 4.0 s: demo-a got 29.8%, demo-b 70.2% of the GPU over the last \
             0.5 s"
        );
    }

    #[test]
    fn shares_over_time_are_per_step() {
        let mut p = phase(6_666_667, 2_857_143, 4);
        p.started_ns = Some(1_000_000_000);
        let steps = p.over_time(500_000_000);
        // Up to the last time both reported (a: just before 5 s): seven whole steps.
        assert_eq!(steps.len(), 7);
        assert!((steps[0].0 - 0.5).abs() < 1e-9);
        for (_, shares) in &steps {
            assert!((shares[0] - 0.30).abs() < 0.02, "{shares:?}");
            assert!((shares[1] - 0.70).abs() < 0.02, "{shares:?}");
        }
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
    #[test]
    fn the_verdict_is_one_line_that_passes_or_says_why_not() {
        let tenants = [tenant("a", 300), tenant("b", 700)];
        // 2 ms kernels: every 6.67 ms is 30%, every 2.86 ms 70%.
        let fair = phase(6_666_667, 2_857_143, 4);
        let pass = verdict(&tenants, &fair, &[]);
        assert!(pass.starts_with("verdict: PASS: "), "{pass}");
        assert!(
            pass.contains("a 30.0% of 30%") && pass.contains("b 70.0% of 70%"),
            "{pass}"
        );
        assert!(!pass.contains('\n'), "{pass}");
        let fail = verdict(
            &tenants,
            &fair,
            &["a got 50.0%".into(), "b got 50.0%".into()],
        );
        assert_eq!(fail, "verdict: FAIL: a got 50.0%; b got 50.0%");
    }
}
