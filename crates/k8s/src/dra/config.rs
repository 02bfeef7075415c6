//! The opaque configuration a DeviceClass or a claim gives gpuslice's devices: what the
//! capacities do not say. The capacities are what the scheduler counts (memory, the
//! guaranteed compute share); the configuration adds a hard cap on GPU time and a priority.
//!
//! ```yaml
//! config:
//! - opaque:
//!     driver: gpuslice.dev
//!     parameters:
//!       apiVersion: gpuslice.dev/v1
//!       kind: TenantConfig
//!       computeLimit: 30        # percent, 0.1 to 100; or "30%"; "share": at the share
//!       priority: high          # high, normal, low
//! ```
//!
//! Anything else in `parameters` is refused with its name: a misspelt `priorty` must not
//! leave a pod unprioritized without a word. Several configurations apply in order (the
//! class's first, then the claim's, as the allocation lists them); a later one overrides
//! the settings it names.
//!
//! **Priority `high` is an administrator's to give.** A high-priority tenant holds its
//! neighbours on the GPU to little work in flight whenever it is active, so a claim (whose
//! author is any user who may create pods) cannot give itself `high`: only a DeviceClass's
//! configuration can (`gpuslice.dev-high` in the `dra` overlay), and who may use that class
//! is the cluster's business (RBAC, ResourceQuota per device class). A claim may set
//! `normal` or `low`, and any `computeLimit` (a cap binds only itself).

use gpuslice_ledger::{PERCENT_FORM, Priority, parse_percent, parse_priority};
use serde_json::Value;

/// The `apiVersion` the parameters must have.
pub const API_VERSION: &str = "gpuslice.dev/v1";
/// The `kind` the parameters must have.
pub const KIND: &str = "TenantConfig";

/// A compute cap, as a configuration states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeLimit {
    /// At most this many permille of the GPU's time.
    Permille(u32),
    /// At the claim's compute share: it gets its share, and never more even when the GPU is
    /// idle.
    Share,
}

/// Who wrote a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A DeviceClass (`FromClass`): an administrator.
    Class,
    /// The claim (`FromClaim`), or a source this driver does not know: its author.
    Claim,
}

impl Source {
    /// The source an allocation's configuration names (`FromClass`, `FromClaim`); anything
    /// else is taken as the claim's, which may do less.
    pub fn of(source: &str) -> Source {
        if source == "FromClass" {
            Source::Class
        } else {
            Source::Claim
        }
    }
}

/// The settings of a device's configurations, merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantConfig {
    /// A hard cap on GPU time; `None`: none (an idle GPU is not wasted).
    pub compute_limit: Option<ComputeLimit>,
    /// Ordering against other tenants; `None`: normal.
    pub priority: Option<Priority>,
}

/// Parameters that are not a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("opaque configuration for {driver}: {message}", driver = super::slice::DRIVER)]
pub struct ConfigError {
    /// What is wrong, naming the field.
    pub message: String,
}

impl ConfigError {
    fn new(message: String) -> ConfigError {
        ConfigError { message }
    }
}

impl TenantConfig {
    /// These settings with those `parameters` set on top.
    pub fn overlaid(self, parameters: &Value) -> Result<TenantConfig, ConfigError> {
        let Value::Object(fields) = parameters else {
            return Err(ConfigError::new(format!(
                "parameters must be an object with apiVersion {API_VERSION} and kind {KIND}, \
                 not {parameters}"
            )));
        };
        let text = |name: &str| -> Result<Option<&str>, ConfigError> {
            match fields.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(ConfigError::new(format!(
                    "field {name}: expected a string, found {other}"
                ))),
            }
        };
        match text("apiVersion")? {
            Some(API_VERSION) => {}
            Some(other) => {
                return Err(ConfigError::new(format!(
                    "field apiVersion: {other:?} is not {API_VERSION:?}"
                )));
            }
            None => {
                return Err(ConfigError::new(format!(
                    "field apiVersion is missing (expected {API_VERSION:?})"
                )));
            }
        }
        match text("kind")? {
            Some(KIND) => {}
            Some(other) => {
                return Err(ConfigError::new(format!(
                    "field kind: {other:?} is not {KIND:?}"
                )));
            }
            None => {
                return Err(ConfigError::new(format!(
                    "field kind is missing (expected {KIND:?})"
                )));
            }
        }
        let mut config = self;
        for (name, value) in fields {
            match name.as_str() {
                "apiVersion" | "kind" => {}
                "computeLimit" => config.compute_limit = Some(compute_limit(value)?),
                "priority" => {
                    let priority = value.as_str().and_then(parse_priority).ok_or_else(|| {
                        ConfigError::new(format!(
                            "field priority: {value} is not one of high, normal, low"
                        ))
                    })?;
                    config.priority = Some(priority);
                }
                other => {
                    return Err(ConfigError::new(format!(
                        "unknown field {other:?} (known: apiVersion, kind, computeLimit, \
                         priority)"
                    )));
                }
            }
        }
        Ok(config)
    }
}

impl TenantConfig {
    /// These settings with those `parameters`, written by `source`, set on top: a claim's
    /// may not raise the priority to `high` (see the module's documentation).
    pub fn overlaid_from(
        self,
        parameters: &Value,
        source: Source,
    ) -> Result<TenantConfig, ConfigError> {
        let merged = self.overlaid(parameters)?;
        if source == Source::Claim
            && merged.priority == Some(Priority::High)
            && self.priority != Some(Priority::High)
        {
            return Err(ConfigError::new(
                "field priority: high is given only by a DeviceClass's configuration (an \
                 administrator's, such as the class gpuslice.dev-high), not by a claim's: a \
                 high-priority tenant holds its neighbours on the GPU to little work in \
                 flight; a claim may set normal or low"
                    .to_string(),
            ));
        }
        Ok(merged)
    }
}

/// `computeLimit`: a number or string of percent, or `share`.
fn compute_limit(value: &Value) -> Result<ComputeLimit, ConfigError> {
    let text = match value {
        Value::String(s) if s.trim().eq_ignore_ascii_case("share") => {
            return Ok(ComputeLimit::Share);
        }
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    parse_percent(&text)
        .map(ComputeLimit::Permille)
        .ok_or_else(|| {
            ConfigError::new(format!(
                "field computeLimit: {value} is not {PERCENT_FORM}, nor \"share\""
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<TenantConfig, ConfigError> {
        TenantConfig::default().overlaid(&v)
    }

    #[test]
    fn limits_and_priorities_are_read_and_later_configurations_override_earlier_ones() {
        let class = parse(json!({
            "apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig",
            "computeLimit": 30, "priority": "low"
        }))
        .unwrap();
        assert_eq!(class.compute_limit, Some(ComputeLimit::Permille(300)));
        assert_eq!(class.priority, Some(Priority::Low));
        let claim = class
            .overlaid(&json!({
                "apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "high"
            }))
            .unwrap();
        assert_eq!(claim.compute_limit, Some(ComputeLimit::Permille(300)));
        assert_eq!(claim.priority, Some(Priority::High));
        for (value, limit) in [
            (json!("12.5%"), ComputeLimit::Permille(125)),
            (json!(100), ComputeLimit::Permille(1000)),
            (json!("share"), ComputeLimit::Share),
        ] {
            let c = parse(json!({
                "apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "computeLimit": value
            }))
            .unwrap();
            assert_eq!(c.compute_limit, Some(limit));
        }
    }

    /// Any claim's author could give its tenant priority high and hold every neighbour on
    /// its GPU to little work in flight.
    #[test]
    fn a_claim_cannot_raise_its_priority_to_high_but_a_device_class_can() {
        let high =
            json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "high"});
        let low =
            json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "low"});
        let err = TenantConfig::default()
            .overlaid_from(&high, Source::Claim)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field priority: high is given only by a DeviceClass's configuration"),
            "{err}"
        );
        let class = TenantConfig::default()
            .overlaid_from(&high, Source::Class)
            .unwrap();
        assert_eq!(class.priority, Some(Priority::High));
        // A claim of a high class may say high again, or lower it.
        assert_eq!(
            class.overlaid_from(&high, Source::Claim).unwrap().priority,
            Some(Priority::High)
        );
        assert_eq!(
            class.overlaid_from(&low, Source::Claim).unwrap().priority,
            Some(Priority::Low)
        );
        // A source this driver does not know is a claim's.
        assert_eq!(Source::of("FromSomewhere"), Source::Claim);
        assert_eq!(Source::of("FromClass"), Source::Class);
    }

    #[test]
    fn a_bad_configuration_is_an_error_naming_the_field() {
        let cases = [
            (json!("x"), "parameters must be an object"),
            (
                json!({"kind": "TenantConfig"}),
                "field apiVersion is missing",
            ),
            (
                json!({"apiVersion": "gpuslice.dev/v2", "kind": "TenantConfig"}),
                "field apiVersion: \"gpuslice.dev/v2\"",
            ),
            (
                json!({"apiVersion": "gpuslice.dev/v1", "kind": "Other"}),
                "field kind: \"Other\"",
            ),
            (
                json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priorty": "high"}),
                "unknown field \"priorty\"",
            ),
            (
                json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "computeLimit": 150}),
                "field computeLimit: 150 is not a percentage",
            ),
            (
                json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "computeLimit": true}),
                "field computeLimit: true",
            ),
            (
                json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "urgent"}),
                "field priority: \"urgent\" is not one of high, normal, low",
            ),
        ];
        for (value, wanted) in cases {
            let err = parse(value.clone()).unwrap_err().to_string();
            assert!(err.contains(wanted), "{value}: {err}");
            assert!(
                err.starts_with("opaque configuration for gpuslice.dev: "),
                "{err}"
            );
        }
    }
}
