//! The tenant's settings, read once from `GPUSLICE_*` environment variables.
//!
//! Every variable is validated; anything unusable is an error that names the variable, the
//! value and the accepted form, and the shim then fails closed (CUDA initialization fails).
//! A typo must never grant a whole GPU, which is also why an unknown `GPUSLICE_` name is an
//! error rather than something to ignore.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use gpuslice_ledger::{
    PERCENT_FORM, Priority, QUANTITY_FORM, SHIM_VARIABLES, TenantName, parse_percent,
    parse_priority, parse_quantity,
};

use crate::log::Level;

pub use gpuslice_ledger::DEFAULT_DIR;

/// Where a container's tenant is pinned ([`gpuslice_ledger::PINNED_TENANT_FILE`]): where
/// it exists, it decides the tenant and the ledger, and the environment (which a process can
/// change) may only repeat them. Without it, a process that cleared `GPUSLICE_TENANT` was
/// passed through, unlimited, even when the shim itself was preloaded from a read-only
/// `/etc/ld.so.preload`. A fixed path, on purpose: a path that came from the environment
/// could be pointed elsewhere.
pub const PINNED_FILE: &str = gpuslice_ledger::PINNED_TENANT_FILE;

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
    /// `GPUSLICE_COMPUTE_SHARE` in permille; the quota file's share is the ceiling.
    pub compute_share: Option<u32>,
    /// `GPUSLICE_COMPUTE_LIMIT` in permille; the quota file's limit is the ceiling.
    pub compute_limit: Option<u32>,
    /// `GPUSLICE_PRIORITY`; the quota file's priority is the ceiling.
    pub priority: Option<Priority>,
    /// `GPUSLICE_DIR`.
    pub dir: PathBuf,
    /// `GPUSLICE_TRACE`: where the compute watcher writes what it sees and decides each tick
    /// (`trace.rs`), for recording a workload's shape; `None`: nowhere.
    pub trace: Option<PathBuf>,
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
    #[error("unknown variable {name}: gpuslice reads only {}", SHIM_VARIABLES.join(", "))]
    Unknown {
        /// The variable.
        name: String,
    },
    /// The pinned-tenant file cannot be read or does not hold what it must.
    #[error("invalid {PINNED_FILE}: {reason}")]
    Pinned {
        /// What is wrong with it.
        reason: String,
    },
    /// The environment names another tenant or ledger than the pinned-tenant file.
    #[error(
        "{name}={value:?} differs from {pinned:?}, which {PINNED_FILE} pins for this \
         container; unset it or give the same value"
    )]
    PinnedMismatch {
        /// The variable.
        name: &'static str,
        /// Its value in the environment.
        value: String,
        /// What the file pins.
        pinned: String,
    },
    /// A limit without a tenant to hold it.
    #[error(
        "{name} is set but GPUSLICE_TENANT is not: name the tenant the setting belongs to \
         (`gpuslice run` does this for you)"
    )]
    LimitWithoutTenant {
        /// The setting.
        name: &'static str,
    },
}

impl Config {
    /// Reads the process environment, under the pinned-tenant file if there is one.
    pub fn from_process_env() -> Result<Config, ConfigError> {
        let pinned = Pinned::read(std::path::Path::new(PINNED_FILE))?;
        Config::from_vars_pinned(std::env::vars_os(), pinned)
    }

    /// [`Config::from_vars`] under a pinned tenant and ledger, where there are some: they
    /// are the tenant's, and the environment may only repeat them.
    pub fn from_vars_pinned<I, K, V>(vars: I, pinned: Option<Pinned>) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let Some(pinned) = pinned else {
            return Config::from_vars(vars);
        };
        // The pinned tenant stands in for an unset GPUSLICE_TENANT, so that limits in the
        // environment (which may lower the tenant's) have a tenant to belong to.
        let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        if !vars.iter().any(|(k, _)| k == "GPUSLICE_TENANT") {
            vars.push(("GPUSLICE_TENANT".into(), pinned.tenant.as_str().into()));
        }
        let mut config = Config::from_vars(vars)?;
        match &mut config.tenant {
            Some(tenant) => {
                if tenant.name != pinned.tenant {
                    return Err(ConfigError::PinnedMismatch {
                        name: "GPUSLICE_TENANT",
                        value: tenant.name.to_string(),
                        pinned: pinned.tenant.to_string(),
                    });
                }
                if tenant.dir != pinned.dir && tenant.dir != std::path::Path::new(DEFAULT_DIR) {
                    return Err(ConfigError::PinnedMismatch {
                        name: "GPUSLICE_DIR",
                        value: tenant.dir.display().to_string(),
                        pinned: pinned.dir.display().to_string(),
                    });
                }
                tenant.dir = pinned.dir;
            }
            // GPUSLICE_TENANT is always set by now.
            None => {
                return Err(ConfigError::Pinned {
                    reason: "its tenant was not taken".to_string(),
                });
            }
        }
        Ok(config)
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
        let mut compute_share = None;
        let mut compute_limit = None;
        let mut priority = None;
        let mut dir = None;
        let mut trace = None;
        let mut log = Level::Warn;
        for (key, value) in vars {
            let (key, raw_value) = (key.as_ref(), value.as_ref());
            if !key.as_bytes().starts_with(b"GPUSLICE_") {
                continue;
            }
            // A name that is not UTF-8 is none of ours: as unknown as a misspelled one.
            let Some(key) = key.to_str() else {
                return Err(ConfigError::Unknown {
                    name: key.to_string_lossy().into_owned(),
                });
            };
            let value = raw_value.to_string_lossy();
            match key {
                "GPUSLICE_TENANT" => {
                    tenant = Some(TenantName::new(&value).map_err(|_| ConfigError::Invalid {
                        name: "GPUSLICE_TENANT",
                        value: value.to_string(),
                        expected: "1 to 63 characters of A-Z a-z 0-9 . _ - that start \
                                   and end with a letter or a digit",
                    })?);
                }
                "GPUSLICE_MEMORY_LIMIT" => {
                    memory_limit =
                        Some(parse_quantity(&value).ok_or_else(|| ConfigError::Invalid {
                            name: "GPUSLICE_MEMORY_LIMIT",
                            value: value.to_string(),
                            expected: QUANTITY_FORM,
                        })?);
                }
                "GPUSLICE_COMPUTE_SHARE" => {
                    compute_share =
                        Some(parse_percent(&value).ok_or_else(|| ConfigError::Invalid {
                            name: "GPUSLICE_COMPUTE_SHARE",
                            value: value.to_string(),
                            expected: PERCENT_FORM,
                        })?);
                }
                "GPUSLICE_COMPUTE_LIMIT" => {
                    compute_limit =
                        Some(parse_percent(&value).ok_or_else(|| ConfigError::Invalid {
                            name: "GPUSLICE_COMPUTE_LIMIT",
                            value: value.to_string(),
                            expected: PERCENT_FORM,
                        })?);
                }
                "GPUSLICE_PRIORITY" => {
                    priority =
                        Some(parse_priority(&value).ok_or_else(|| ConfigError::Invalid {
                            name: "GPUSLICE_PRIORITY",
                            value: value.to_string(),
                            expected: "one of high, normal, low",
                        })?);
                }
                "GPUSLICE_DIR" => {
                    // The path exactly as given, bytes that are not UTF-8 included: a
                    // rewritten path would be another directory, a ledger without the
                    // tenant's quota.
                    let path = PathBuf::from(raw_value);
                    if !path.is_absolute() {
                        return Err(ConfigError::Invalid {
                            name: "GPUSLICE_DIR",
                            value: value.to_string(),
                            expected: "an absolute path to the ledger directory",
                        });
                    }
                    dir = Some(path);
                }
                "GPUSLICE_TRACE" => {
                    let path = PathBuf::from(raw_value);
                    if !path.is_absolute() {
                        return Err(ConfigError::Invalid {
                            name: "GPUSLICE_TRACE",
                            value: value.to_string(),
                            expected: "an absolute path for the compute watcher's trace",
                        });
                    }
                    trace = Some(path);
                }
                "GPUSLICE_LOG" => {
                    log = Level::parse(&value).ok_or_else(|| ConfigError::Invalid {
                        name: "GPUSLICE_LOG",
                        value: value.to_string(),
                        expected: "one of off, error, warn, info, debug, trace",
                    })?;
                }
                other => {
                    return Err(ConfigError::Unknown {
                        name: other.to_string(),
                    });
                }
            }
        }
        let Some(name) = tenant else {
            let orphan = [
                ("GPUSLICE_MEMORY_LIMIT", memory_limit.is_some()),
                ("GPUSLICE_COMPUTE_SHARE", compute_share.is_some()),
                ("GPUSLICE_COMPUTE_LIMIT", compute_limit.is_some()),
                ("GPUSLICE_PRIORITY", priority.is_some()),
            ]
            .into_iter()
            .find(|&(_, set)| set);
            return match orphan {
                Some((name, _)) => Err(ConfigError::LimitWithoutTenant { name }),
                None => Ok(Config { tenant: None, log }),
            };
        };
        let tenant = Some(TenantSettings {
            name,
            memory_limit,
            compute_share,
            compute_limit,
            priority,
            dir: dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
            trace,
        });
        Ok(Config { tenant, log })
    }
}

/// A tenant and a ledger pinned by [`PINNED_FILE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// `GPUSLICE_TENANT=`.
    pub tenant: TenantName,
    /// `GPUSLICE_DIR=`.
    pub dir: PathBuf,
}

impl Pinned {
    /// Reads the file at `path`: `None` if there is none, an error if it cannot be read or
    /// does not hold exactly a tenant and an absolute ledger directory.
    pub fn read(path: &std::path::Path) -> Result<Option<Pinned>, ConfigError> {
        let bad = |reason: String| ConfigError::Pinned { reason };
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(format!("cannot be read: {e}"))),
        };
        Pinned::parse(&text).map(Some).map_err(bad)
    }

    /// The file's text: `GPUSLICE_TENANT=<name>` and `GPUSLICE_DIR=<absolute path>` lines,
    /// blank lines and `#` comments allowed, nothing else.
    pub fn parse(text: &[u8]) -> Result<Pinned, String> {
        let mut tenant = None;
        let mut dir = None;
        for line in text.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let Some(at) = line.iter().position(|&b| b == b'=') else {
                return Err(format!(
                    "line {:?} is not NAME=value",
                    String::from_utf8_lossy(line)
                ));
            };
            let (key, value) = (&line[..at], &line[at + 1..]);
            match key {
                b"GPUSLICE_TENANT" => {
                    let value = std::str::from_utf8(value)
                        .map_err(|_| "GPUSLICE_TENANT is not UTF-8".to_string())?;
                    tenant = Some(
                        TenantName::new(value)
                            .map_err(|e| format!("GPUSLICE_TENANT={value:?}: {e}"))?,
                    );
                }
                b"GPUSLICE_DIR" => {
                    let path = PathBuf::from(OsStr::from_bytes(value));
                    if !path.is_absolute() {
                        return Err(format!("GPUSLICE_DIR={} is not absolute", path.display()));
                    }
                    dir = Some(path);
                }
                other => {
                    return Err(format!(
                        "{} is not a setting it may pin (GPUSLICE_TENANT, GPUSLICE_DIR)",
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        match (tenant, dir) {
            (Some(tenant), Some(dir)) => Ok(Pinned { tenant, dir }),
            _ => Err("it must hold both GPUSLICE_TENANT= and GPUSLICE_DIR=".to_string()),
        }
    }

    /// The file's text for `tenant` and `dir`.
    pub fn text(tenant: &TenantName, dir: &std::path::Path) -> String {
        format!("GPUSLICE_TENANT={tenant}\nGPUSLICE_DIR={}\n", dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    fn pinned(tenant: &str, dir: &str) -> Option<Pinned> {
        Some(Pinned {
            tenant: TenantName::new(tenant).unwrap(),
            dir: PathBuf::from(dir),
        })
    }

    /// Red team: in `/etc/ld.so.preload` mode a process that cleared `GPUSLICE_TENANT` was
    /// passed through, unlimited.
    #[test]
    fn a_pinned_tenant_holds_whatever_the_environment_says() {
        let config =
            Config::from_vars_pinned([("PATH", "/bin")], pinned("pod", "/run/gs")).unwrap();
        let tenant = config.tenant.unwrap();
        assert_eq!(tenant.name.as_str(), "pod");
        assert_eq!(tenant.dir, PathBuf::from("/run/gs"));

        for vars in [
            &[("GPUSLICE_TENANT", "pod"), ("GPUSLICE_MEMORY_LIMIT", "1Gi")][..],
            &[("GPUSLICE_MEMORY_LIMIT", "1Gi")][..],
        ] {
            let lower =
                Config::from_vars_pinned(vars.iter().copied(), pinned("pod", "/run/gs")).unwrap();
            assert_eq!(lower.tenant.unwrap().memory_limit, Some(1 << 30));
        }

        let other =
            Config::from_vars_pinned([("GPUSLICE_TENANT", "else")], pinned("pod", "/run/gs"));
        assert!(matches!(
            other,
            Err(ConfigError::PinnedMismatch {
                name: "GPUSLICE_TENANT",
                ..
            })
        ));
        let elsewhere = Config::from_vars_pinned(
            [("GPUSLICE_TENANT", "pod"), ("GPUSLICE_DIR", "/tmp/x")],
            pinned("pod", "/run/gs"),
        );
        assert!(matches!(
            elsewhere,
            Err(ConfigError::PinnedMismatch {
                name: "GPUSLICE_DIR",
                ..
            })
        ));
    }

    #[test]
    fn a_pinned_file_must_hold_exactly_a_tenant_and_an_absolute_dir() {
        let ok = Pinned::parse(b"# made by gpuslice\nGPUSLICE_TENANT=pod\nGPUSLICE_DIR=/run/gs\n");
        assert_eq!(ok, Ok(pinned("pod", "/run/gs").unwrap()));
        for bad in [
            &b""[..],
            b"GPUSLICE_TENANT=pod\n",
            b"GPUSLICE_TENANT=pod\nGPUSLICE_DIR=relative\n",
            b"GPUSLICE_TENANT=_x\nGPUSLICE_DIR=/run/gs\n",
            b"GPUSLICE_TENANT=pod\nGPUSLICE_DIR=/run/gs\nGPUSLICE_MEMORY_LIMIT=1Gi\n",
            b"nonsense\n",
        ] {
            assert!(
                Pinned::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let text = Pinned::text(
            &TenantName::new("pod").unwrap(),
            std::path::Path::new("/run/gs"),
        );
        assert_eq!(
            Pinned::parse(text.as_bytes()),
            Ok(pinned("pod", "/run/gs").unwrap())
        );
        let missing = Pinned::read(std::path::Path::new("/nonexistent/gpuslice/tenant"));
        assert_eq!(missing, Ok(None));
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
             512Mi, 8G, 1.5Gi or 1073741824"
        );
    }

    #[test]
    fn limit_without_tenant_is_refused() {
        assert_eq!(
            config(&[("GPUSLICE_MEMORY_LIMIT", "1Gi")]),
            Err(ConfigError::LimitWithoutTenant {
                name: "GPUSLICE_MEMORY_LIMIT"
            })
        );
        assert_eq!(
            config(&[("GPUSLICE_PRIORITY", "high")]),
            Err(ConfigError::LimitWithoutTenant {
                name: "GPUSLICE_PRIORITY"
            })
        );
    }

    #[test]
    fn misspelled_variable_is_refused() {
        let err = config(&[("GPUSLICE_MEMORY_LIMT", "1Gi")]).unwrap_err();
        assert!(matches!(err, ConfigError::Unknown { ref name } if name == "GPUSLICE_MEMORY_LIMT"));
        assert!(err.to_string().contains("GPUSLICE_MEMORY_LIMIT"));
    }

    #[test]
    fn compute_settings_are_read_in_permille() {
        let tenant = config(&[
            ("GPUSLICE_TENANT", "a"),
            ("GPUSLICE_COMPUTE_SHARE", "30"),
            ("GPUSLICE_COMPUTE_LIMIT", "12.5%"),
            ("GPUSLICE_PRIORITY", "High"),
        ])
        .unwrap()
        .tenant
        .unwrap();
        assert_eq!(tenant.compute_share, Some(300));
        assert_eq!(tenant.compute_limit, Some(125));
        assert_eq!(tenant.priority, Some(Priority::High));
    }

    #[test]
    fn percentages_outside_the_form_are_refused() {
        for ok in ["0.1", "100", "100%", "7", " 50 "] {
            assert!(parse_percent(ok).is_some(), "{ok}");
        }
        for bad in [
            "0", "0.0", "100.1", "101", "-5", "30.25", "abc", "", "%", "1e2", "30 %%", ".5",
        ] {
            assert_eq!(parse_percent(bad), None, "{bad}");
        }
        let err = config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_COMPUTE_LIMIT", "150")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("invalid GPUSLICE_COMPUTE_LIMIT=\"150\": expected {PERCENT_FORM}")
        );
        assert!(config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_PRIORITY", "urgent")]).is_err());
    }

    /// Issue 15, item 8: a `GPUSLICE_DIR` with bytes that are not UTF-8 was rewritten (each
    /// such byte became U+FFFD), so the process used another directory than the one named.
    #[test]
    fn non_utf8_gpuslice_dir_is_used_exactly() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let dir = OsString::from_vec(b"/run/gpu\xffslice".to_vec());
        let config = Config::from_vars([
            (OsString::from("GPUSLICE_TENANT"), OsString::from("a")),
            (OsString::from("GPUSLICE_DIR"), dir.clone()),
        ])
        .unwrap();
        assert_eq!(config.tenant.unwrap().dir.as_os_str(), dir);
    }

    /// Issue 15, item 8: a `GPUSLICE_` variable whose name is not UTF-8 was skipped.
    #[test]
    fn non_utf8_gpuslice_variable_name_is_refused_as_unknown() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let name = OsString::from_vec(b"GPUSLICE_MEMORY_LIM\xffT".to_vec());
        let err = Config::from_vars([
            (OsString::from("GPUSLICE_TENANT"), OsString::from("a")),
            (name, OsString::from("1Gi")),
        ])
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unknown { name } if name.starts_with("GPUSLICE_MEMORY_LIM")),
            "{err}"
        );
        // Other variables whose names are not UTF-8 are none of gpuslice's business.
        let other = OsString::from_vec(b"OTHER_\xff".to_vec());
        assert!(Config::from_vars([(other, OsString::from("x"))]).is_ok());
    }

    #[test]
    fn bad_tenant_dir_and_log_are_refused() {
        assert!(config(&[("GPUSLICE_TENANT", "../etc")]).is_err());
        assert!(config(&[("GPUSLICE_TENANT", "")]).is_err());
        assert!(config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_DIR", "rel/dir")]).is_err());
        assert!(config(&[("GPUSLICE_LOG", "verbose")]).is_err());
    }

    #[test]
    fn a_trace_path_must_be_absolute() {
        let error = config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_TRACE", "trace.txt")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("GPUSLICE_TRACE") && error.contains("absolute"),
            "{error}"
        );
        let traced = config(&[("GPUSLICE_TENANT", "a"), ("GPUSLICE_TRACE", "/tmp/t")]).unwrap();
        assert_eq!(traced.tenant.unwrap().trace, Some(PathBuf::from("/tmp/t")));
    }

    mod properties {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        use proptest::prelude::*;

        use super::super::*;

        fn os(bytes: Vec<u8>) -> OsString {
            OsString::from_vec(bytes)
        }

        /// Names the shim reads, and a few near misses, as raw bytes.
        fn name() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::sample::select(SHIM_VARIABLES).prop_map(|n| n.as_bytes().to_vec()),
                "GPUSLICE_[A-Z_]{0,16}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..24).prop_map(|tail| [
                    b"GPUSLICE_".as_slice(),
                    &tail
                ]
                .concat()),
                proptest::collection::vec(
                    any::<u8>().prop_filter("no NUL or =", |b| *b != 0 && *b != b'='),
                    0..24
                ),
            ]
        }

        proptest! {
            #[test]
            fn reading_any_environment_never_panics(
                vars in proptest::collection::vec(
                    (name(), proptest::collection::vec(any::<u8>(), 0..32)),
                    0..8,
                )
            ) {
                let _ = Config::from_vars(vars.into_iter().map(|(k, v)| (os(k), os(v))));
            }

            #[test]
            fn every_unknown_gpuslice_variable_is_refused(
                tail in proptest::collection::vec(any::<u8>(), 0..24)
            ) {
                let name = [b"GPUSLICE_".as_slice(), &tail].concat();
                prop_assume!(!SHIM_VARIABLES.iter().any(|known| known.as_bytes() == name));
                let result = Config::from_vars([(os(name), OsString::from("1"))]);
                prop_assert!(matches!(result, Err(ConfigError::Unknown { .. })), "{result:?}");
            }

            #[test]
            fn an_absolute_gpuslice_dir_is_kept_byte_for_byte(
                tail in proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..40)
            ) {
                let dir = os([b"/".as_slice(), &tail].concat());
                let config = Config::from_vars([
                    (OsString::from("GPUSLICE_TENANT"), OsString::from("t")),
                    (OsString::from("GPUSLICE_DIR"), dir.clone()),
                ]);
                prop_assert_eq!(config.unwrap().tenant.unwrap().dir.into_os_string(), dir);
            }

            #[test]
            fn a_memory_limit_in_bytes_is_read_as_given(bytes in any::<u64>()) {
                let config = Config::from_vars([
                    ("GPUSLICE_TENANT", "t".to_string()),
                    ("GPUSLICE_MEMORY_LIMIT", bytes.to_string()),
                ]);
                prop_assert_eq!(config.unwrap().tenant.unwrap().memory_limit, Some(bytes));
            }

            #[test]
            fn an_accepted_tenant_is_the_name_given(value in "[ -~]{0,70}") {
                let config = Config::from_vars([("GPUSLICE_TENANT", value.as_str())]);
                match config {
                    Ok(config) => {
                        let name = config.tenant.unwrap().name;
                        prop_assert_eq!(name.as_str(), value.as_str());
                    }
                    Err(e) => prop_assert!(TenantName::new(&value).is_err(), "{e}"),
                }
            }
        }
    }
}
