//! The memory phase of `gpuslice demo`: each tenant allocates until refused, frees, and
//! allocates again; what each worker reports, how its progress is shown, and the table.

use std::io::{IsTerminal, Write};

use crate::cli::DemoPhase;
use crate::demo::worker::CUDA_ERROR_OUT_OF_MEMORY;
use crate::demo::{Phase, Tenant, exact_size};

/// What each worker waits after an allocation, so that the progress can be watched; a whole
/// memory phase on the simulated GPU takes about 31 of them.
const PAUSE_MS: u64 = 40;

/// What one tenant's memory worker reported.
#[derive(Debug, Default)]
pub struct MemoryOutcome {
    pub total: Option<u64>,
    pub allocated: u64,
    pub refused_at: Option<u64>,
    pub refusal: Option<u32>,
    pub never_refused: bool,
    pub recovered: bool,
    /// Its exit status and stderr, when it did not exit 0.
    pub failure: Option<String>,
}

/// The memory phase: its workers' outcomes and their progress on screen.
#[derive(Debug)]
pub struct MemoryPhase {
    /// One per tenant, in the tenants' order.
    pub outcomes: Vec<MemoryOutcome>,
    display: Display,
}

impl MemoryPhase {
    /// The phase for `tenants`, nothing reported yet.
    pub fn new(tenants: &[Tenant]) -> MemoryPhase {
        MemoryPhase {
            outcomes: tenants.iter().map(|_| MemoryOutcome::default()).collect(),
            display: Display::new(tenants),
        }
    }
}

impl Phase for MemoryPhase {
    fn kind(&self) -> DemoPhase {
        DemoPhase::Memory
    }

    fn worker_args(&self, tenant: &Tenant) -> Vec<String> {
        vec![
            "--chunk".into(),
            tenant.chunk.to_string(),
            "--give-up-at".into(),
            (2 * tenant.quota).to_string(),
            "--pause-ms".into(),
            PAUSE_MS.to_string(),
        ]
    }

    fn line(&mut self, index: usize, line: &str) {
        read_line(&mut self.outcomes[index], line);
        self.display.line(index, line, &self.outcomes);
    }

    fn failed(&mut self, index: usize, why: String) {
        self.outcomes[index].failure = Some(why);
    }
}

/// Takes in one `key=value` line of a memory worker.
fn read_line(outcome: &mut MemoryOutcome, line: &str) {
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if line.starts_with("total=") {
        outcome.total = value("total");
    } else if line.starts_with("progress ") {
        outcome.allocated = value("allocated").unwrap_or(outcome.allocated);
    } else if line.starts_with("refused_at=") {
        outcome.refused_at = value("refused_at");
        outcome.refusal = value("error").and_then(|e| u32::try_from(e).ok());
    } else if line.starts_with("never_refused ") {
        outcome.never_refused = true;
    } else if line == "recovered=ok" {
        outcome.recovered = true;
    }
}

/// How progress is shown: a bar per tenant on a terminal, else a plain line per event (the
/// total seen, each quarter of the quota allocated, the refusal, allocating again).
#[derive(Debug)]
struct Display {
    names: Vec<(String, u64)>,
    bars: bool,
    drawn: bool,
    /// Per tenant, the last quarter of its quota a plain line was printed for.
    quarters: Vec<u64>,
}

impl Display {
    fn new(tenants: &[Tenant]) -> Display {
        Display {
            names: tenants
                .iter()
                .map(|t| (t.name.to_string(), t.quota))
                .collect(),
            bars: std::io::stdout().is_terminal(),
            drawn: false,
            quarters: vec![0; tenants.len()],
        }
    }

    /// Shows what `line` of tenant `index` says, or redraws the bars.
    fn line(&mut self, index: usize, line: &str, outcomes: &[MemoryOutcome]) {
        let mut out = std::io::stdout().lock();
        if !self.bars {
            let (Some((name, quota)), Some(outcome), Some(quarter)) = (
                self.names.get(index),
                outcomes.get(index),
                self.quarters.get_mut(index),
            ) else {
                return;
            };
            if let Some(text) = plain_line(name, *quota, outcome, line, quarter) {
                let _ = writeln!(out, "{text}");
            }
            return;
        }
        if self.drawn {
            let _ = write!(out, "\x1b[{}A", self.names.len());
        }
        for ((name, quota), outcome) in self.names.iter().zip(outcomes) {
            let _ = writeln!(out, "\x1b[2K{}", bar(name, *quota, outcome));
        }
        let _ = out.flush();
        self.drawn = true;
    }
}

/// What a worker's `line` means, in words, for a log: `None` for a progress line that does
/// not reach a new quarter of the quota (`quarter` is the last one told).
fn plain_line(
    name: &str,
    quota: u64,
    outcome: &MemoryOutcome,
    line: &str,
    quarter: &mut u64,
) -> Option<String> {
    if line.starts_with("total=") {
        let total = outcome.total.map_or_else(|| "?".into(), exact_size);
        return Some(format!(
            "{name}: sees {total} of GPU memory in all (its quota: {})",
            exact_size(quota)
        ));
    }
    if line.starts_with("progress ") {
        let reached = (outcome.allocated.min(quota) * 4)
            .checked_div(quota)
            .unwrap_or_default();
        if reached <= *quarter {
            return None;
        }
        *quarter = reached;
        return Some(format!(
            "{name}: {} of {} allocated",
            exact_size(outcome.allocated),
            exact_size(quota)
        ));
    }
    if line.starts_with("refused_at=") {
        let at = outcome.refused_at.map_or_else(|| "?".into(), exact_size);
        let how = match outcome.refusal {
            Some(CUDA_ERROR_OUT_OF_MEMORY) => "CUDA_ERROR_OUT_OF_MEMORY".to_string(),
            Some(rc) => format!("CUDA error {rc}"),
            None => "an error".into(),
        };
        return Some(format!("{name}: refused at {at} with {how}"));
    }
    if line.starts_with("never_refused ") {
        return Some(format!(
            "{name}: allocated {} without being refused",
            exact_size(outcome.allocated)
        ));
    }
    if line == "recovered=ok" {
        return Some(format!("{name}: freed it all and allocated again"));
    }
    Some(format!("{name}: {line}"))
}

/// `demo-a  [########............]   640 MiB of 1 GiB  refused, allocated again`.
fn bar(name: &str, quota: u64, outcome: &MemoryOutcome) -> String {
    const WIDTH: u64 = 30;
    let filled = (outcome.allocated.min(quota) * WIDTH)
        .checked_div(quota)
        .unwrap_or_default();
    let filled = usize::try_from(filled).unwrap_or_default();
    let width = usize::try_from(WIDTH).unwrap_or_default();
    let state = match (outcome.refused_at, outcome.recovered) {
        (Some(_), true) => "refused, allocated again",
        (Some(_), false) => "refused",
        (None, _) => "",
    };
    format!(
        "{name:<8}[{}{}] {:>9} of {}  {state}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        exact_size(outcome.allocated),
        exact_size(quota)
    )
}

/// The table of what each tenant was promised, saw and got.
pub fn memory_table(tenants: &[Tenant], outcomes: &[MemoryOutcome]) -> String {
    let row = |cells: [&str; 6]| {
        format!(
            "{:<9}{:<11}{:<15}{:<27}{:<27}{}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    let mut lines = vec![row([
        "tenant",
        "promised",
        "saw as total",
        "allocated before refusal",
        "refusal",
        "after freeing",
    ])];
    for (tenant, outcome) in tenants.iter().zip(outcomes) {
        let saw = outcome.total.map_or("-".into(), exact_size);
        let (before, refusal) = match (outcome.refused_at, outcome.refusal) {
            (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) => {
                (exact_size(at), "CUDA_ERROR_OUT_OF_MEMORY".to_string())
            }
            (Some(at), Some(rc)) => (exact_size(at), format!("CUDA error {rc}")),
            _ if outcome.never_refused => (exact_size(outcome.allocated), "never refused".into()),
            _ => (exact_size(outcome.allocated), "-".into()),
        };
        let after = if outcome.recovered {
            "allocated again"
        } else {
            "-"
        };
        lines.push(row([
            tenant.name.as_str(),
            &exact_size(tenant.quota),
            &saw,
            &before,
            &refusal,
            after,
        ]));
    }
    lines.join("\n")
}

/// Why `tenant` did not get what it was promised, if it did not.
pub fn memory_problem(tenant: &Tenant, outcome: &MemoryOutcome) -> Option<String> {
    let name = &tenant.name;
    let quota = exact_size(tenant.quota);
    if let Some(failure) = &outcome.failure {
        return Some(format!("{name}: {failure}"));
    }
    if outcome.total != Some(tenant.quota) {
        let saw = outcome.total.map_or("nothing".into(), exact_size);
        return Some(format!(
            "{name} saw {saw} as the GPU's total, not its quota {quota}"
        ));
    }
    match (outcome.refused_at, outcome.refusal) {
        (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) if at <= tenant.quota => {}
        (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) => {
            return Some(format!(
                "{name} was refused only at {}, above its quota {quota}",
                exact_size(at)
            ));
        }
        _ => {
            return Some(format!(
                "{name} allocated {} without being refused, beyond its quota {quota} (is the \
                 shim loaded?)",
                exact_size(outcome.allocated)
            ));
        }
    }
    if !outcome.recovered {
        return Some(format!("{name} could not allocate again after freeing"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{GIB, MIB};
    use gpuslice_ledger::TenantName;

    fn tenant(name: &str, quota: u64) -> Tenant {
        Tenant {
            name: TenantName::new(name).unwrap(),
            quota,
            chunk: 64 * MIB,
            share_permille: 300,
        }
    }

    fn outcome_of(lines: &[&str]) -> MemoryOutcome {
        let mut outcome = MemoryOutcome::default();
        for line in lines {
            read_line(&mut outcome, line);
        }
        outcome
    }

    #[test]
    fn a_tenant_refused_within_its_quota_that_recovers_is_as_promised() {
        let outcome = outcome_of(&[
            "total=1073741824 free=1006632960",
            "progress allocated=67108864",
            "refused_at=1006632960 error=2",
            "recovered=ok",
        ]);
        assert_eq!(memory_problem(&tenant("a", GIB), &outcome), None);
        let table = memory_table(&[tenant("a", GIB)], &[outcome]);
        let row = table.lines().nth(1).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "a",
                "1",
                "GiB",
                "1",
                "GiB",
                "960",
                "MiB",
                "CUDA_ERROR_OUT_OF_MEMORY",
                "allocated",
                "again"
            ]
        );
    }

    #[test]
    fn plain_lines_say_each_event_and_each_quarter_of_the_quota_once() {
        let lines = [
            "total=1073741824 free=1006632960",
            "progress allocated=67108864",
            "progress allocated=268435456",
            "progress allocated=335544320",
            "progress allocated=536870912",
            "progress allocated=1006632960",
            "refused_at=1006632960 error=2",
            "recovered=ok",
        ];
        let mut outcome = MemoryOutcome::default();
        let mut quarter = 0;
        let mut said = Vec::new();
        for line in lines {
            read_line(&mut outcome, line);
            said.extend(plain_line("demo-a", GIB, &outcome, line, &mut quarter));
        }
        assert_eq!(
            said,
            [
                "demo-a: sees 1 GiB of GPU memory in all (its quota: 1 GiB)",
                "demo-a: 256 MiB of 1 GiB allocated",
                "demo-a: 512 MiB of 1 GiB allocated",
                "demo-a: 960 MiB of 1 GiB allocated",
                "demo-a: refused at 960 MiB with CUDA_ERROR_OUT_OF_MEMORY",
                "demo-a: freed it all and allocated again",
            ]
        );
        assert!(said.iter().all(|l| !l.contains('=')), "{said:?}");
    }

    #[test]
    fn a_tenant_never_refused_or_seeing_the_whole_gpu_is_a_problem() {
        let unrefused = outcome_of(&[
            "total=1073741824 free=1",
            "never_refused allocated=2147483648",
            "recovered=ok",
        ]);
        let problem = memory_problem(&tenant("a", GIB), &unrefused).unwrap();
        assert!(problem.contains("without being refused"), "{problem}");
        let whole = outcome_of(&["total=85899345920 free=1", "refused_at=0 error=2"]);
        let problem = memory_problem(&tenant("a", GIB), &whole).unwrap();
        assert!(problem.contains("80 GiB"), "{problem}");
    }
}
