//! Which XID errors make a GPU unhealthy: NVIDIA's device plugin's rule, with its
//! environment variables, so that a DaemonSet moved over from it keeps its settings.
//!
//! Every critical XID counts except those that report an application's fault, after which
//! the GPU is still fine (NVIDIA's plugin ignores them for this reason): 13 (graphics
//! engine exception), 31 (GPU memory page fault), 43 (GPU stopped processing), 45
//! (preemptive cleanup after earlier errors), 68 (video processor exception) and 109
//! (context switch timeout). On top of that:
//!
//! - `DP_DISABLE_HEALTHCHECKS`: `all` (or `xids`) ignores every XID; otherwise a
//!   comma-separated list of XIDs ignored besides those above.
//! - `DP_ENABLE_HEALTHCHECKS`: a comma-separated list of XIDs that count even where the
//!   above would ignore them; `all` (or `xids`) makes every XID count.
//!
//! Unlike NVIDIA's plugin, which skips a value it cannot read, a value that is not an XID
//! is refused at startup: a typo must not quietly change which failures are noticed.

use std::collections::BTreeSet;
use std::fmt;

/// The variable that adds XIDs to ignore, or ignores all.
pub const DISABLE_VARIABLE: &str = "DP_DISABLE_HEALTHCHECKS";
/// The variable that makes XIDs count.
pub const ENABLE_VARIABLE: &str = "DP_ENABLE_HEALTHCHECKS";
/// XIDs that report an application's fault, ignored unless enabled.
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// A variable's value that is not a list of XIDs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{variable}={value:?}: {bad:?} is not an XID; give a comma-separated list of XIDs (\"48,79\"), \
     or \"all\""
)]
pub struct XidPolicyError {
    /// The variable.
    pub variable: &'static str,
    /// Its whole value.
    pub value: String,
    /// The entry that is not an XID.
    pub bad: String,
}

/// What one variable says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Listed {
    /// Nothing.
    #[default]
    None,
    /// Every XID.
    All,
    /// These.
    Some(BTreeSet<u64>),
}

/// Which XIDs make a GPU unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XidPolicy {
    disabled: Listed,
    enabled: Listed,
}

impl XidPolicy {
    /// The policy the variables of this process's environment set.
    pub fn from_env() -> Result<XidPolicy, XidPolicyError> {
        let read = |name| std::env::var(name).ok();
        XidPolicy::from_values(read(DISABLE_VARIABLE), read(ENABLE_VARIABLE))
    }

    /// The policy the two variables' values set (`None`: not set).
    pub fn from_values(
        disable: Option<String>,
        enable: Option<String>,
    ) -> Result<XidPolicy, XidPolicyError> {
        Ok(XidPolicy {
            disabled: parse(DISABLE_VARIABLE, disable.as_deref())?,
            enabled: parse(ENABLE_VARIABLE, enable.as_deref())?,
        })
    }

    /// Whether XID events are watched at all.
    pub fn watches(&self) -> bool {
        self.disabled != Listed::All || self.enabled != Listed::None
    }

    /// Whether `xid` makes a GPU unhealthy (`None`: an XID NVML reports as unknown, which
    /// counts unless every XID is ignored).
    pub fn counts(&self, xid: Option<u64>) -> bool {
        let Some(xid) = xid else {
            return self.disabled != Listed::All || self.enabled == Listed::All;
        };
        let listed = |l: &Listed| match l {
            Listed::None => false,
            Listed::All => true,
            Listed::Some(xids) => xids.contains(&xid),
        };
        if listed(&self.enabled) {
            return true;
        }
        !(listed(&self.disabled) || APPLICATION_XIDS.contains(&xid))
    }
}

impl fmt::Display for XidPolicy {
    /// The XIDs ignored, in words, for the log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.watches() {
            return f.write_str("every XID is ignored (DP_DISABLE_HEALTHCHECKS=all)");
        }
        if self.enabled == Listed::All {
            return f.write_str("no XID is ignored (DP_ENABLE_HEALTHCHECKS=all)");
        }
        let mut ignored: BTreeSet<u64> = APPLICATION_XIDS.into_iter().collect();
        if let Listed::Some(more) = &self.disabled {
            ignored.extend(more);
        }
        if let Listed::Some(counted) = &self.enabled {
            ignored.retain(|x| !counted.contains(x));
        }
        let list: Vec<String> = ignored.iter().map(u64::to_string).collect();
        if list.is_empty() {
            f.write_str("no XID is ignored")
        } else {
            write!(f, "XIDs {} are ignored", list.join(", "))
        }
    }
}

/// Reads one variable's value.
fn parse(variable: &'static str, value: Option<&str>) -> Result<Listed, XidPolicyError> {
    let Some(value) = value else {
        return Ok(Listed::None);
    };
    let mut xids = BTreeSet::new();
    for entry in value.split(',') {
        let entry = entry.trim();
        match entry.to_ascii_lowercase().as_str() {
            "" => {}
            "all" | "xids" => return Ok(Listed::All),
            _ => {
                let xid = entry.parse::<u64>().map_err(|_| XidPolicyError {
                    variable,
                    value: value.to_string(),
                    bad: entry.to_string(),
                })?;
                xids.insert(xid);
            }
        }
    }
    Ok(if xids.is_empty() {
        Listed::None
    } else {
        Listed::Some(xids)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(disable: Option<&str>, enable: Option<&str>) -> XidPolicy {
        XidPolicy::from_values(disable.map(String::from), enable.map(String::from)).unwrap()
    }

    #[test]
    fn application_errors_are_ignored_and_every_other_xid_counts() {
        let p = XidPolicy::default();
        for xid in APPLICATION_XIDS {
            assert!(!p.counts(Some(xid)), "{xid}");
        }
        for xid in [48, 63, 64, 74, 79, 92, 94, 95, 119] {
            assert!(p.counts(Some(xid)), "{xid}");
        }
        assert!(p.counts(None), "an unknown XID counts");
        assert!(p.watches());
        assert_eq!(p.to_string(), "XIDs 13, 31, 43, 45, 68, 109 are ignored");
    }

    #[test]
    fn disable_adds_to_what_is_ignored_and_all_turns_the_check_off() {
        let p = policy(Some(" 48, 79 ,"), None);
        assert!(!p.counts(Some(48)) && !p.counts(Some(79)) && !p.counts(Some(13)));
        assert!(p.counts(Some(94)));
        for all in ["all", "XIDs", "48,all"] {
            let p = policy(Some(all), None);
            assert!(!p.watches(), "{all}");
            assert!(!p.counts(Some(79)) && !p.counts(None), "{all}");
        }
        assert!(
            policy(Some(""), None).watches(),
            "empty: nothing more ignored"
        );
    }

    #[test]
    fn enable_overrides_what_is_ignored() {
        let p = policy(Some("79"), Some("79,13"));
        assert!(p.counts(Some(79)) && p.counts(Some(13)));
        assert!(!p.counts(Some(31)));
        assert_eq!(p.to_string(), "XIDs 31, 43, 45, 68, 109 are ignored");
        let p = policy(Some("all"), Some("48"));
        assert!(
            p.watches(),
            "one XID enabled while all are disabled is watched"
        );
        assert!(p.counts(Some(48)) && !p.counts(Some(79)) && !p.counts(None));
        let p = policy(None, Some("all"));
        assert!(p.counts(Some(13)) && p.counts(None));
    }

    #[test]
    fn a_value_that_is_not_an_xid_is_refused_naming_it() {
        let err = XidPolicy::from_values(Some("48,seventy-nine".into()), None).unwrap_err();
        assert_eq!(err.variable, DISABLE_VARIABLE);
        assert_eq!(err.bad, "seventy-nine");
        assert!(err.to_string().contains("DP_DISABLE_HEALTHCHECKS"), "{err}");
        assert!(XidPolicy::from_values(None, Some("-1".into())).is_err());
    }
}
