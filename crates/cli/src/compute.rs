//! Compute settings as users write and read them: percentages (`30`, `12.5`, `30%`) and
//! priorities (`high`, `normal`, `low`), and the settings a tenant's processes enforce.
//!
//! The parsers accept exactly what the shim accepts for `GPUSLICE_COMPUTE_SHARE`,
//! `GPUSLICE_COMPUTE_LIMIT` and `GPUSLICE_PRIORITY` (its `config` module), so that a value
//! `gpuslice run` takes is never one the shim would refuse, and the other way round.

use gpuslice_ledger::{ComputeSettings, Priority, SlotInfo, UsageSnapshot};

pub use gpuslice_ledger::{PERCENT_FORM, parse_percent, parse_priority};

/// The accepted priorities, in words.
pub const PRIORITY_FORM: &str = "high, normal or low";

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
/// processes published there, under its `quota`'s ceiling for the GPU if it has a quota
/// file (as other tenants' watchers take them), else the quota's.
pub fn enforced(
    usage: Option<&UsageSnapshot>,
    live: &[SlotInfo],
    gpu: Option<gpuslice_ledger::GpuIndex>,
    quota: Option<ComputeSettings>,
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
    let combined = published.into_iter().reduce(ComputeSettings::lowered_by);
    match (combined, quota) {
        (Some(settings), Some(quota)) => (settings.capped_by(quota), Source::Published),
        (Some(settings), None) => (settings, Source::Published),
        (None, quota) => (quota.unwrap_or_default(), Source::Quota),
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
        assert_eq!(
            enforced(None, &[], None, Some(quota)),
            (quota, Source::Quota)
        );
        let with = |share, priority| ComputeSettings {
            share_permille: share,
            limit_permille: None,
            priority,
        };
        let lowered = |a: ComputeSettings, b| a.lowered_by(b);
        assert_eq!(
            lowered(
                with(None, Some(Priority::High)),
                with(None, Some(Priority::Low))
            )
            .priority,
            Some(Priority::Low)
        );
        assert_eq!(
            lowered(with(None, None), with(None, Some(Priority::High))).priority,
            Some(Priority::High)
        );
        assert_eq!(
            lowered(with(Some(300), None), with(None, None)).share_permille,
            Some(300)
        );
        assert_eq!(
            lowered(with(Some(300), None), with(Some(200), None)).share_permille,
            Some(200)
        );
    }
}
