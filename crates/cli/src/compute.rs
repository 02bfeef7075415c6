//! Compute settings as users write and read them: percentages (`30`, `12.5`, `30%`) and
//! priorities (`high`, `normal`, `low`), and the settings a tenant's processes enforce.
//!
//! The parsers accept exactly what the shim accepts for `GPUSLICE_COMPUTE_SHARE`,
//! `GPUSLICE_COMPUTE_LIMIT` and `GPUSLICE_PRIORITY` (its `config` module), so that a value
//! `gpuslice run` takes is never one the shim would refuse, and the other way round.

use gpuslice_ledger::{ComputeSettings, Limits, PERMILLE_MAX, Priority, SlotInfo, UsageSnapshot};

/// The accepted form of a percentage, in words, for error messages.
pub const PERCENT_FORM: &str =
    "a percentage from 0.1 to 100 with at most one decimal, such as 30, 12.5 or 30%";

/// The accepted priorities, in words.
pub const PRIORITY_FORM: &str = "high, normal or low";

/// A percentage (`30`, `12.5`, `30%`, surrounding blanks allowed) in permille: 1 to 1000,
/// at most one decimal. The shim's `parse_percent`, rule for rule.
pub fn parse_percent(text: &str) -> Option<u32> {
    let text = text.trim();
    let number = text.strip_suffix('%').unwrap_or(text).trim_end();
    let (whole, tenth) = match number.split_once('.') {
        Some((whole, tenth)) if tenth.len() == 1 => (whole, tenth),
        Some(_) => return None,
        None => (number, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(tenth) || whole.len() > 3 {
        return None;
    }
    let permille = whole.parse::<u32>().ok()? * 10 + tenth.parse::<u32>().ok()?;
    (1..=PERMILLE_MAX).contains(&permille).then_some(permille)
}

/// `high`, `normal` or `low`, in any case: the shim's `parse_priority`.
pub fn parse_priority(text: &str) -> Option<Priority> {
    match text.trim().to_ascii_lowercase().as_str() {
        "high" => Some(Priority::High),
        "normal" => Some(Priority::Normal),
        "low" => Some(Priority::Low),
        _ => None,
    }
}

/// The `--compute-share` / `--compute-limit` value parser: permille, or what is accepted.
pub fn parse_percent_arg(text: &str) -> Result<u32, String> {
    parse_percent(text).ok_or_else(|| format!("expected {PERCENT_FORM}"))
}

/// The `--priority` value parser.
pub fn parse_priority_arg(text: &str) -> Result<Priority, String> {
    parse_priority(text).ok_or_else(|| format!("expected {PRIORITY_FORM}"))
}

/// A permille value as a percentage, the way it can be written back: `30`, `12.5`.
pub fn format_percent(permille: u32) -> String {
    if permille.is_multiple_of(10) {
        format!("{}", permille / 10)
    } else {
        format!("{}.{}", permille / 10, permille % 10)
    }
}

/// A permille value as a percentage number (for JSON): 30.0, 12.5.
pub fn percent_number(permille: u32) -> f64 {
    f64::from(permille) / 10.0
}

/// The priority's name, as `--priority` takes it.
pub fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// How a priority ranks: low < normal < high.
pub fn priority_rank(priority: Priority) -> u8 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

/// The lower of two optional permille values, unset meaning "no constraint" (the shim's
/// `lower`).
fn lower(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The lower of two priorities; a set one wins over unset (the shim's `lower_priority`).
fn lower_priority(a: Option<Priority>, b: Option<Priority>) -> Option<Priority> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if priority_rank(a) <= priority_rank(b) {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    }
}

/// The compute settings of a quota's limits.
pub fn from_limits(limits: &Limits) -> ComputeSettings {
    ComputeSettings {
        share_permille: limits.compute_share_permille,
        limit_permille: limits.compute_limit_permille,
        priority: limits.priority,
    }
}

/// Where the settings a report shows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// What the tenant's live processes published: what they enforce.
    Published,
    /// The quota file: what its processes will enforce unless their environment lowers it.
    Quota,
}

impl Source {
    /// Its name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Source::Published => "published",
            Source::Quota => "quota",
        }
    }
}

/// The settings a tenant enforces on a GPU: the most restrictive of those its live
/// processes published (as other tenants' watchers combine them), else `quota`'s.
pub fn enforced(
    usage: Option<&UsageSnapshot>,
    live: &[SlotInfo],
    gpu: Option<gpuslice_ledger::GpuIndex>,
    quota: ComputeSettings,
) -> (ComputeSettings, Source) {
    let published: Vec<ComputeSettings> = match (usage, gpu) {
        (Some(usage), Some(gpu)) => usage
            .compute_slots(gpu)
            .iter()
            .filter(|s| live.iter().any(|l| l.index == s.index))
            .filter_map(|s| s.settings)
            .collect(),
        _ => Vec::new(),
    };
    let combined = published.into_iter().reduce(|a, b| ComputeSettings {
        share_permille: lower(a.share_permille, b.share_permille),
        limit_permille: lower(a.limit_permille, b.limit_permille),
        priority: lower_priority(a.priority, b.priority),
    });
    match combined {
        Some(settings) => (settings, Source::Published),
        None => (quota, Source::Quota),
    }
}

/// The fraction of the GPU a tenant received between two readings: GPU time gained over
/// wall time passed, at most 1. `None` without a usable interval.
pub fn received(before_ns: u64, after_ns: u64, wall_ns: u64) -> Option<f64> {
    if wall_ns == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let fraction = after_ns.saturating_sub(before_ns) as f64 / wall_ns as f64;
    Some(fraction.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_read_as_the_shim_reads_them() {
        for (text, permille) in [
            ("0.1", 1),
            ("30", 300),
            ("12.5%", 125),
            (" 50 ", 500),
            ("100", 1000),
            ("100%", 1000),
            ("007", 70),
        ] {
            assert_eq!(parse_percent(text), Some(permille), "{text}");
        }
        for bad in [
            "0", "0.0", "100.1", "101", "-5", "30.25", "abc", "", "%", "1e2", "30 %%", ".5", "5.",
            "1000",
        ] {
            assert_eq!(parse_percent(bad), None, "{bad}");
        }
        let err = parse_percent_arg("150").unwrap_err();
        assert!(err.contains("0.1 to 100"), "{err}");
    }

    #[test]
    fn priorities_are_read_in_any_case() {
        assert_eq!(parse_priority("High"), Some(Priority::High));
        assert_eq!(parse_priority(" low"), Some(Priority::Low));
        assert_eq!(parse_priority("normal"), Some(Priority::Normal));
        assert_eq!(parse_priority("urgent"), None);
        assert!(parse_priority_arg("1").unwrap_err().contains("high"));
    }

    #[test]
    fn percentages_are_written_back_as_they_can_be_read() {
        for permille in [1, 125, 300, 1000] {
            assert_eq!(parse_percent(&format_percent(permille)), Some(permille));
        }
        assert_eq!(format_percent(300), "30");
        assert_eq!(format_percent(125), "12.5");
    }

    #[test]
    fn received_share_is_gpu_time_over_wall_time() {
        assert_eq!(received(0, 0, 0), None);
        assert_eq!(received(100, 400, 1000), Some(0.3));
        assert_eq!(
            received(500, 400, 1000),
            Some(0.0),
            "a reset counts as nothing"
        );
        assert_eq!(received(0, 2000, 1000), Some(1.0));
    }

    #[test]
    fn the_most_restrictive_published_settings_win() {
        let quota = ComputeSettings {
            share_permille: Some(500),
            ..ComputeSettings::default()
        };
        assert_eq!(enforced(None, &[], None, quota), (quota, Source::Quota));
        assert_eq!(
            lower_priority(Some(Priority::High), Some(Priority::Low)),
            Some(Priority::Low)
        );
        assert_eq!(
            lower_priority(None, Some(Priority::High)),
            Some(Priority::High)
        );
        assert_eq!(lower(Some(300), None), Some(300));
        assert_eq!(lower(Some(300), Some(200)), Some(200));
    }
}
