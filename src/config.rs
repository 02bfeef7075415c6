//! The tenant's settings, read once from `GPUSLICE_*` environment variables.
//!
//! Every variable is validated; anything unusable is an error that names the variable, the
//! value and the accepted form, and the shim then fails closed (CUDA initialization fails).
//! A typo must never grant a whole GPU, which is also why an unknown `GPUSLICE_` name is an
//! error rather than something to ignore.

use std::ffi::OsStr;
use std::path::PathBuf;

use gpuslice_ledger::TenantName;

use crate::log::Level;

/// The ledger directory when `GPUSLICE_DIR` is not set.
pub const DEFAULT_DIR: &str = "/run/gpuslice";

/// Every variable the shim reads; anything else starting with `GPUSLICE_` is refused.
pub const KNOWN_VARIABLES: &[&str] = &[
    "GPUSLICE_TENANT",
    "GPUSLICE_MEMORY_LIMIT",
    "GPUSLICE_DIR",
    "GPUSLICE_LOG",
];

/// Variables that belong to a later part of gpuslice (compute isolation). Setting one today
/// would suggest a guarantee this version does not give, so it is refused, not ignored.
const NOT_YET_ENFORCED: &[&str] = &[
    "GPUSLICE_COMPUTE_SHARE",
    "GPUSLICE_COMPUTE_LIMIT",
    "GPUSLICE_PRIORITY",
];

/// What the shim does in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The tenant this process belongs to; `None` means no gpuslice settings at all, and the
    /// shim passes every call through untouched.
    pub tenant: Option<TenantSettings>,
    /// `GPUSLICE_LOG`.
    pub log: Level,
}

/// Settings of an enforcing process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSettings {
    /// `GPUSLICE_TENANT`.
    pub name: TenantName,
    /// `GPUSLICE_MEMORY_LIMIT` in bytes, per GPU. The tenant's quota file, when present, is
    /// the ceiling: the effective limit is the lower of the two.
    pub memory_limit: Option<u64>,
    /// `GPUSLICE_DIR`.
    pub dir: PathBuf,
}

/// A setting the shim cannot use. Its `Display` is the one line printed to stderr.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable whose value does not parse.
    #[error("invalid {name}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value as found.
        value: String,
        /// The accepted form, in words.
        expected: &'static str,
    },
    /// A `GPUSLICE_` variable this version does not know.
    #[error("unknown variable {name}: gpuslice reads only {}", KNOWN_VARIABLES.join(", "))]
    Unknown {
        /// The variable.
        name: String,
    },
    /// A compute setting, which this version cannot enforce yet.
    #[error("{name} is set, but this version of gpuslice enforces memory quotas only; unset it")]
    NotYetEnforced {
        /// The variable.
        name: &'static str,
    },
    /// A limit without a tenant to hold it.
    #[error(
        "GPUSLICE_MEMORY_LIMIT is set but GPUSLICE_TENANT is not: name the tenant the limit \
         belongs to (`gpuslice run` does this for you)"
    )]
    LimitWithoutTenant,
}

impl Config {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars_os())
    }

    /// Reads settings from `(name, value)` pairs, as `std::env::vars_os` yields them.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut tenant = None;
        let mut memory_limit = None;
        let mut dir = None;
        let mut log = Level::Warn;
        for (key, value) in vars {
            let Some(key) = key.as_ref().to_str() else {
                continue;
            };
            if !key.starts_with("GPUSLICE_") {
                continue;
            }
            let value = value.as_ref().to_string_lossy();
            match key {
                "GPUSLICE_TENANT" => {
                    tenant = Some(TenantName::new(&value).map_err(|_| ConfigError::Invalid {
                        name: "GPUSLICE_TENANT",
                        value: value.to_string(),
                        expected: "1 to 63 characters of A-Z a-z 0-9 . _ -, not starting \
                                   with . or -",
                    })?);
                }
                "GPUSLICE_MEMORY_LIMIT" => {
                    memory_limit =
                        Some(parse_quantity(&value).ok_or_else(|| ConfigError::Invalid {
                            name: "GPUSLICE_MEMORY_LIMIT",
                            value: value.to_string(),
                            expected: "a byte quantity such as 4Gi, 512Mi, 8G or 1073741824",
                        })?);
                }
                "GPUSLICE_DIR" => {
                    let path = PathBuf::from(value.as_ref());
                    if !path.is_absolute() {
                        return Err(ConfigError::Invalid {
                            name: "GPUSLICE_DIR",
                            value: value.to_string(),
                            expected: "an absolute path to the ledger directory",
                        });
                    }
                    dir = Some(path);
                }
                "GPUSLICE_LOG" => {
                    log = Level::parse(&value).ok_or_else(|| ConfigError::Invalid {
                        name: "GPUSLICE_LOG",
                        value: value.to_string(),
                        expected: "one of off, error, warn, info, debug, trace",
                    })?;
                }
                other => {
                    if let Some(name) = NOT_YET_ENFORCED.iter().find(|n| **n == other) {
                        return Err(ConfigError::NotYetEnforced { name });
                    }
                    return Err(ConfigError::Unknown {
                        name: other.to_string(),
                    });
                }
            }
        }
        let tenant = match (tenant, memory_limit) {
            (None, None) => None,
            (None, Some(_)) => return Err(ConfigError::LimitWithoutTenant),
            (Some(name), memory_limit) => Some(TenantSettings {
                name,
                memory_limit,
                dir: dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
            }),
        };
        Ok(Config { tenant, log })
    }
}

/// Parses a Kubernetes-style byte quantity: `1073741824`, `4Gi`, `512Mi`, `8G`, `1.5Gi`,
/// `1e9`. Fractions round up to whole bytes, as Kubernetes does. `None` for anything else,
/// including overflow, a negative number and the milli suffix `m`.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The number as an exact fraction mantissa / 10^scale.
    let scale = u32::try_from(fraction.len()).ok()?;
    let mut mantissa: u128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(b - b'0'))?;
    }
    let (multiplier, divisor_exp) = match suffix {
        "" => (1u128, 0u32),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (10u128.pow(3), 0),
        "M" => (10u128.pow(6), 0),
        "G" => (10u128.pow(9), 0),
        "T" => (10u128.pow(12), 0),
        "P" => (10u128.pow(15), 0),
        "E" => (10u128.pow(18), 0),
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let digits = digits.strip_prefix('+').unwrap_or(digits);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: u32 = digits.parse().ok().filter(|e| *e <= 30)?;
            (10u128.pow(exp), 0)
        }
    };
    let numerator = mantissa.checked_mul(multiplier)?;
    let denominator = 10u128.checked_pow(scale.checked_add(divisor_exp)?)?;
    let bytes = numerator.div_ceil(denominator);
    u64::try_from(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    #[test]
    fn quantities_follow_kubernetes_suffixes() {
        assert_eq!(parse_quantity("1073741824"), Some(1 << 30));
        assert_eq!(parse_quantity("4Gi"), Some(4 << 30));
        assert_eq!(parse_quantity("512Mi"), Some(512 << 20));
        assert_eq!(parse_quantity("8G"), Some(8_000_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("1e9"), Some(1_000_000_000));
        assert_eq!(parse_quantity("2E3"), Some(2000));
        assert_eq!(parse_quantity("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_quantity("100k"), Some(100_000));
        assert_eq!(parse_quantity("0"), Some(0));
        assert_eq!(parse_quantity(".5Ki"), Some(512));
    }

    #[test]
    fn fractional_bytes_round_up() {
        assert_eq!(parse_quantity("0.1"), Some(1));
        assert_eq!(parse_quantity("1.0001k"), Some(1001));
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in [
            "",
            "4GB",
            "4gi",
            "4 Gi",
            " 4Gi",
            "-1",
            "1.2.3",
            "Gi",
            "4K",
            "500m",
            "1e",
            "1e-3",
            "0x10",
            "18446744073709551616",
            "16Ei",
            "1e31",
            ".",
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn no_settings_means_pass_through() {
        let config = config(&[("PATH", "/bin"), ("GPUSLICE_LOG", "debug")]).unwrap();
        assert_eq!(config.tenant, None);
        assert_eq!(config.log, Level::Debug);
    }

    #[test]
    fn tenant_and_limit_are_read() {
        let config = config(&[
            ("GPUSLICE_TENANT", "team-a"),
            ("GPUSLICE_MEMORY_LIMIT", "4Gi"),
            ("GPUSLICE_DIR", "/tmp/ledger"),
        ])
        .unwrap();
        let tenant = config.tenant.unwrap();
        assert_eq!(tenant.name.as_str(), "team-a");
        assert_eq!(tenant.memory_limit, Some(4 << 30));
        assert_eq!(tenant.dir, PathBuf::from("/tmp/ledger"));
    }

    #[test]
    fn ledger_dir_defaults_to_run_gpuslice() {
        let config = config(&[("GPUSLICE_TENANT", "a")]).unwrap();
        assert_eq!(config.tenant.unwrap().dir, PathBuf::from(DEFAULT_DIR));
    }

    #[test]
    fn invalid_limit_names_variable_value_and_form() {
        let err = config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_MEMORY_LIMIT", "4GB")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid GPUSLICE_MEMORY_LIMIT=\"4GB\": expected a byte quantity such as 4Gi, \
             512Mi, 8G or 1073741824"
        );
    }

    #[test]
    fn limit_without_tenant_is_refused() {
        assert_eq!(
            config(&[("GPUSLICE_MEMORY_LIMIT", "1Gi")]),
            Err(ConfigError::LimitWithoutTenant)
        );
    }

    #[test]
    fn misspelled_variable_is_refused() {
        let err = config(&[("GPUSLICE_MEMORY_LIMT", "1Gi")]).unwrap_err();
        assert!(matches!(err, ConfigError::Unknown { ref name } if name == "GPUSLICE_MEMORY_LIMT"));
        assert!(err.to_string().contains("GPUSLICE_MEMORY_LIMIT"));
    }

    #[test]
    fn compute_settings_are_refused_until_enforced() {
        assert_eq!(
            config(&[("GPUSLICE_COMPUTE_SHARE", "30")]),
            Err(ConfigError::NotYetEnforced {
                name: "GPUSLICE_COMPUTE_SHARE"
            })
        );
    }

    #[test]
    fn bad_tenant_dir_and_log_are_refused() {
        assert!(config(&[("GPUSLICE_TENANT", "../etc")]).is_err());
        assert!(config(&[("GPUSLICE_TENANT", "")]).is_err());
        assert!(config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_DIR", "rel/dir")]).is_err());
        assert!(config(&[("GPUSLICE_LOG", "verbose")]).is_err());
    }
}
