//! The two names the ledger is keyed by: GPU UUIDs (never ordinals, which
//! `CUDA_VISIBLE_DEVICES` renumbers) and tenant names (which become directory names).

use std::fmt;
use std::str::FromStr;

use crate::error::LedgerError;

/// A physical GPU, by the 16 bytes of its UUID.
///
/// Parsed from and printed in NVML's form, `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, which
/// is what `nvidia-smi -L` prints and what `cuDeviceGetUuid` returns as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GpuUuid(pub [u8; 16]);

/// Where the hyphens go in the 36-character text form (8-4-4-4-12).
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];
/// The length of the text form without the `GPU-` prefix.
const UUID_TEXT_LEN: usize = 36;

impl GpuUuid {
    /// Accepts `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (NVML's form) and the same without
    /// `GPU-`; hex digits in either case.
    pub fn parse(s: &str) -> Result<GpuUuid, LedgerError> {
        let invalid = || LedgerError::InvalidUuid {
            value: s.to_string(),
        };
        let body = match s.get(..4) {
            Some(prefix) if prefix.eq_ignore_ascii_case("GPU-") => s.get(4..).unwrap_or(""),
            _ => s,
        };
        let text = body.as_bytes();
        if text.len() != UUID_TEXT_LEN {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in text.iter().enumerate() {
            if UUID_HYPHENS.contains(&i) {
                if c != b'-' {
                    return Err(invalid());
                }
                continue;
            }
            let digit = hex_value(c).ok_or_else(invalid)?;
            let byte = bytes.get_mut(nibbles / 2).ok_or_else(invalid)?;
            *byte = if nibbles.is_multiple_of(2) {
                digit << 4
            } else {
                *byte | digit
            };
            nibbles += 1;
        }
        Ok(GpuUuid(bytes))
    }
}

/// The value of one ASCII hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for GpuUuid {
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase, as `nvidia-smi` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GPU-")?;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for GpuUuid {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<GpuUuid, LedgerError> {
        GpuUuid::parse(s)
    }
}

/// The name of a tenant: the unit that gets a quota (a container, or one `gpuslice run`).
///
/// It names the tenant's directory in the ledger and its CDI device (`gpuslice.dev/gpu=<name>`),
/// so it is validated: 1 to 63 characters of `[A-Za-z0-9._-]` that start and end with a letter
/// or a digit. That makes it never `..`, a hidden file or an option, and always a device name
/// that container runtimes accept (CDI's rule: a letter or digit first and last, and only
/// letters, digits, `_`, `-`, `.` and `:` between).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TenantName(String);

/// The longest tenant name (a DNS label's limit, so a Kubernetes name fits).
pub const MAX_TENANT_NAME_LEN: usize = 63;

impl TenantName {
    /// Validates `s` as a tenant name.
    pub fn new(s: &str) -> Result<TenantName, LedgerError> {
        let refuse = |reason: String| LedgerError::InvalidTenantName {
            name: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(refuse("it is empty".into()));
        }
        if s.len() > MAX_TENANT_NAME_LEN {
            return Err(refuse(format!(
                "it is {} bytes long, more than {MAX_TENANT_NAME_LEN}",
                s.len()
            )));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(refuse(format!("character {bad:?} is not allowed")));
        }
        let first_and_last = [s.chars().next(), s.chars().next_back()];
        if let Some(end) = first_and_last
            .into_iter()
            .flatten()
            .find(|c| !c.is_ascii_alphanumeric())
        {
            return Err(refuse(format!(
                "it starts or ends with {end:?}, and a tenant name must start and end with a \
                 letter or a digit (it is also a CDI device name)"
            )));
        }
        Ok(TenantName(s.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantName {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<TenantName, LedgerError> {
        TenantName::new(s)
    }
}

impl AsRef<str> for TenantName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMI: &str = "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d";

    #[test]
    fn uuid_parses_nvml_form() {
        let u = GpuUuid::parse(SMI).unwrap();
        assert_eq!(u.0[0], 0x5f);
        assert_eq!(u.0[15], 0x4d);
    }

    #[test]
    fn uuid_display_round_trips_lowercase() {
        let u = GpuUuid::parse(SMI).unwrap();
        assert_eq!(u.to_string(), SMI);
        assert_eq!(GpuUuid::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn uuid_parse_accepts_missing_prefix_and_any_case() {
        let u = GpuUuid::parse(SMI).unwrap();
        assert_eq!(GpuUuid::parse(&SMI[4..]).unwrap(), u);
        assert_eq!(GpuUuid::parse(&SMI.to_uppercase()).unwrap(), u);
        assert_eq!(GpuUuid::parse(&SMI.replace("GPU-", "gpu-")).unwrap(), u);
        assert_eq!(SMI.parse::<GpuUuid>().unwrap(), u);
    }

    #[test]
    fn uuid_every_byte_value_round_trips() {
        let mut bytes = [0u8; 16];
        for start in (0u8..=255).step_by(16) {
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = start.wrapping_add(u8::try_from(i).unwrap());
            }
            let u = GpuUuid(bytes);
            assert_eq!(GpuUuid::parse(&u.to_string()).unwrap(), u);
        }
    }

    #[test]
    fn uuid_parse_refuses_malformed_text() {
        for bad in [
            "",
            "GPU-",
            "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4", // one digit short
            "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d0", // one digit long
            "GPU-5f8c3a129-b4e-4d7a-8c21-0e6f1a2b3c4d", // hyphen moved
            "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4g", // not hex
            "MIG-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d", // a MIG instance, not a GPU
            " GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d", // whitespace
            "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4\u{e9}", // non-ASCII
        ] {
            let err = GpuUuid::parse(bad).unwrap_err();
            assert!(
                matches!(&err, LedgerError::InvalidUuid { value } if value == bad),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("nvidia-smi"), "{err}");
        }
    }

    #[test]
    fn tenant_names_of_allowed_characters_are_accepted() {
        for ok in [
            "a",
            "team-a",
            "Pod_1.2",
            "x".repeat(63).as_str(),
            "0",
            "a..b",
        ] {
            assert_eq!(TenantName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn tenant_names_that_could_escape_or_hide_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../x",
            "a b",
            "a\0b",
            "é",
            "a:b",
            &"x".repeat(64),
        ] {
            let err = TenantName::new(bad).unwrap_err();
            assert!(
                matches!(&err, LedgerError::InvalidTenantName { name, .. } if name == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn tenant_name_error_says_what_is_allowed() {
        let msg = TenantName::new("a/b").unwrap_err().to_string();
        assert!(msg.contains("'/'"), "{msg}");
        assert!(msg.contains("1 to 63 characters"), "{msg}");
    }

    /// Issue 15, item 7: CDI refuses a device name that does not start and end with a letter
    /// or a digit, and a runtime then refuses every device of the spec file that holds it.
    #[test]
    fn tenant_names_cdi_would_refuse_are_refused() {
        for bad in ["team_", "a-", "_x", "a.", "x_-", "_", "-", "Z."] {
            let err = TenantName::new(bad).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, LedgerError::InvalidTenantName { name, .. } if name == bad),
                "{bad:?}: {msg}"
            );
            assert!(
                msg.contains("start and end with a letter or a digit"),
                "{msg}"
            );
        }
        for ok in ["a_b", "a-b", "a.b", "9", "x_-y", "run-123"] {
            assert!(TenantName::new(ok).is_ok(), "{ok:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// What a tenant name may be, said independently of [`TenantName::new`]'s code.
        fn is_valid(s: &str) -> bool {
            let alnum = |c: char| c.is_ascii_alphanumeric();
            !s.is_empty()
                && s.len() <= MAX_TENANT_NAME_LEN
                && s.chars().all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
                && s.starts_with(alnum)
                && s.ends_with(alnum)
        }

        proptest! {
            #[test]
            fn any_text_is_accepted_exactly_when_it_is_a_valid_name(s in any::<String>()) {
                prop_assert_eq!(TenantName::new(&s).is_ok(), is_valid(&s));
            }

            #[test]
            fn names_of_the_allowed_characters_are_judged_by_their_ends_and_length(
                s in "[A-Za-z0-9._-]{0,70}"
            ) {
                match TenantName::new(&s) {
                    Ok(name) => {
                        prop_assert!(is_valid(&s));
                        prop_assert_eq!(name.as_str(), s.as_str());
                        prop_assert_eq!(name.to_string(), s);
                    }
                    Err(e) => {
                        prop_assert!(!is_valid(&s));
                        let quoted = format!("{s:?}");
                        prop_assert!(e.to_string().contains(&quoted));
                    }
                }
            }

            #[test]
            fn gpu_uuids_round_trip_through_their_text(bytes in any::<[u8; 16]>()) {
                let uuid = GpuUuid(bytes);
                prop_assert_eq!(GpuUuid::parse(&uuid.to_string()).ok(), Some(uuid));
            }

            #[test]
            fn uuid_parsing_never_panics(s in any::<String>()) {
                let _ = GpuUuid::parse(&s);
            }
        }
    }
}
