//! What container runtimes accept in a CDI spec, checked before gpuslice writes one.
//!
//! A runtime (podman, containerd, CRI-O, through the CDI reference library) refuses a whole
//! spec file when one thing in it breaks the rules, and then every device in that file is
//! unknown to it: one badly named tenant would take every other tenant's containers down
//! with it. So every spec is checked whole before it is written, and names are checked where
//! they are made. The rules, as the CDI library applies them when it reads a spec:
//!
//! - the kind is `vendor/class`; each is ASCII letters, digits, `_`, `-` and `.`, starting
//!   with a letter and ending with a letter or a digit;
//! - a device name is ASCII letters, digits, `_`, `-`, `.` and `:`, starting and ending with
//!   a letter or a digit; a qualified device name is `vendor/class=name`;
//! - a spec has at least one device, no two with the same name, and each device changes
//!   something in the container;
//! - an environment entry is `NAME=value` with a name; a mount has a host and a container path.

use crate::cdi::{ContainerEdits, Spec};

/// Something in a spec or a name that a CDI runtime would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} breaks CDI's rules: {why}")]
pub struct Violation {
    /// What was checked: "device name", "kind", ...
    pub what: &'static str,
    /// The value as found.
    pub value: String,
    /// Which rule it breaks.
    pub why: String,
}

impl Violation {
    fn new(what: &'static str, value: &str, why: impl Into<String>) -> Violation {
        Violation {
            what,
            value: value.to_string(),
            why: why.into(),
        }
    }
}

/// What a CDI name may start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// A letter (vendors and classes).
    Letter,
    /// A letter or a digit (device names).
    LetterOrDigit,
}

/// Checks a device name (the part after `=`).
pub fn check_device_name(name: &str) -> Result<(), Violation> {
    check_name(
        "device name",
        name,
        First::LetterOrDigit,
        &['_', '-', '.', ':'],
    )
}

/// Checks a vendor (`what` = "vendor") or a class (`what` = "class") of a kind.
fn check_vendor_or_class(what: &'static str, name: &str) -> Result<(), Violation> {
    check_name(what, name, First::Letter, &['_', '-', '.'])
}

/// The common shape of CDI names: not empty, `first` first, ASCII letters and digits and
/// `inner` only, a letter or a digit last.
fn check_name(
    what: &'static str,
    name: &str,
    first: First,
    inner: &[char],
) -> Result<(), Violation> {
    let Some(head) = name.chars().next() else {
        return Err(Violation::new(what, name, "it is empty"));
    };
    let (head_ok, wanted) = match first {
        First::Letter => (head.is_ascii_alphabetic(), "a letter"),
        First::LetterOrDigit => (head.is_ascii_alphanumeric(), "a letter or a digit"),
    };
    if !head_ok {
        return Err(Violation::new(
            what,
            name,
            format!("it must start with {wanted}"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !inner.contains(c))
    {
        let allowed: String = inner.iter().map(|c| format!(" {c}")).collect();
        return Err(Violation::new(
            what,
            name,
            format!("character {bad:?} is not allowed (only A-Z a-z 0-9{allowed})"),
        ));
    }
    if !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Violation::new(
            what,
            name,
            "it must end with a letter or a digit",
        ));
    }
    Ok(())
}

/// Checks a kind, `vendor/class`.
pub fn check_kind(kind: &str) -> Result<(), Violation> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(Violation::new("kind", kind, "it is not vendor/class"));
    };
    check_vendor_or_class("vendor", vendor)?;
    check_vendor_or_class("class", class)
}

/// Checks a qualified device name, `vendor/class=name`.
pub fn check_qualified_name(qualified: &str) -> Result<(), Violation> {
    let Some((kind, name)) = qualified.split_once('=') else {
        return Err(Violation::new(
            "qualified device name",
            qualified,
            "it is not vendor/class=name",
        ));
    };
    check_kind(kind)?;
    check_device_name(name)
}

/// Checks a whole spec as a runtime would before using any of its devices.
pub fn check_spec(spec: &Spec) -> Result<(), Violation> {
    check_kind(&spec.kind)?;
    if spec.devices.is_empty() {
        return Err(Violation::new(
            "device list",
            "",
            "a spec must have at least one device",
        ));
    }
    check_edits(&spec.container_edits)?;
    for (i, device) in spec.devices.iter().enumerate() {
        check_device_name(&device.name)?;
        if spec.devices[..i].iter().any(|d| d.name == device.name) {
            return Err(Violation::new(
                "device name",
                &device.name,
                "two devices of one spec have this name",
            ));
        }
        if device.container_edits.env.is_empty() && device.container_edits.mounts.is_empty() {
            return Err(Violation::new(
                "device",
                &device.name,
                "a device must change something in the container",
            ));
        }
        check_edits(&device.container_edits)?;
    }
    Ok(())
}

/// Checks environment entries and mounts.
fn check_edits(edits: &ContainerEdits) -> Result<(), Violation> {
    for entry in &edits.env {
        if entry.find('=').is_none_or(|at| at == 0) {
            return Err(Violation::new(
                "environment entry",
                entry,
                "it must be NAME=value",
            ));
        }
    }
    for mount in &edits.mounts {
        if mount.host_path.is_empty() || mount.container_path.is_empty() {
            return Err(Violation::new(
                "mount",
                &format!("{} -> {}", mount.host_path, mount.container_path),
                "a mount needs a host path and a container path",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::{CDI_VERSION, Device, KIND, Mount};

    #[test]
    fn device_names_follow_the_cdi_parser() {
        for ok in [
            "0",
            "a",
            "team-a",
            "GPU-fa4ec0da-0000-4000-8000-000000000000-slice-2",
            "a:b",
            "A_b.c-d:e9",
        ] {
            assert_eq!(check_device_name(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("team_", "end with"),
            ("a-", "end with"),
            ("x:", "end with"),
            ("_x", "start with"),
            ("-a", "start with"),
            (":a", "start with"),
            ("a b", "' '"),
            ("a/b", "'/'"),
            ("a=b", "'='"),
            ("é", "start with"),
            ("aé", "'é'"),
        ] {
            let err = check_device_name(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn kinds_and_qualified_names_follow_the_cdi_parser() {
        assert_eq!(check_kind(KIND), Ok(()));
        assert_eq!(check_kind("nvidia.com/gpu"), Ok(()));
        for bad in [
            "gpu",
            "/gpu",
            "vendor.com/",
            "1vendor/gpu",
            "vendor/_gpu",
            "v/g/x",
        ] {
            assert!(check_kind(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_qualified_name("nvidia.com/gpu=GPU-fa4ec0da-0000-4000-8000-000000000000"),
            Ok(())
        );
        assert_eq!(check_qualified_name("nvidia.com/gpu=0"), Ok(()));
        for bad in [
            "nvidia.com/gpu",
            "nvidia.com/gpu=",
            "nvidia.com/gpu=_0",
            "gpu=0",
        ] {
            assert!(check_qualified_name(bad).is_err(), "{bad:?}");
        }
    }

    fn device(name: &str) -> Device {
        Device {
            name: name.to_string(),
            container_edits: ContainerEdits {
                env: vec![format!("GPUSLICE_TENANT={name}")],
                mounts: Vec::new(),
            },
        }
    }

    fn spec(devices: Vec<Device>) -> Spec {
        Spec {
            cdi_version: CDI_VERSION.to_string(),
            kind: KIND.to_string(),
            devices,
            container_edits: ContainerEdits::default(),
        }
    }

    #[test]
    fn a_spec_is_refused_for_any_one_thing_a_runtime_refuses() {
        assert_eq!(check_spec(&spec(vec![device("a"), device("b")])), Ok(()));
        let refused = |s: Spec, why: &str| {
            let err = check_spec(&s).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        };
        refused(spec(vec![]), "at least one device");
        refused(spec(vec![device("a"), device("team_")]), "end with");
        refused(spec(vec![device("a"), device("a")]), "two devices");
        let mut empty = device("a");
        empty.container_edits.env.clear();
        refused(spec(vec![empty]), "change something");
        let mut bad_env = device("a");
        bad_env.container_edits.env.push("=x".into());
        refused(spec(vec![bad_env]), "NAME=value");
        let mut bad_mount = device("a");
        bad_mount.container_edits.mounts.push(Mount {
            host_path: String::new(),
            container_path: "/x".into(),
            kind: None,
            options: Vec::new(),
        });
        refused(spec(vec![bad_mount]), "host path");
        let mut bad_kind = spec(vec![device("a")]);
        bad_kind.kind = "gpuslice.dev".into();
        refused(bad_kind, "vendor/class");
    }

    mod properties {
        use gpuslice_ledger::TenantName;
        use proptest::prelude::*;

        use super::super::*;
        use crate::cdi::{Layout, Preload};

        fn layout() -> Layout {
            Layout {
                ledger_host: "/run/gpuslice".into(),
                ledger_container: "/run/gpuslice".into(),
                shim_host: "/opt/gpuslice/libgpuslice.so".into(),
                shim_container: "/opt/gpuslice/libgpuslice.so".into(),
                preload: Preload::Env,
            }
        }

        proptest! {
            #[test]
            fn every_accepted_tenant_name_is_a_valid_cdi_device_name(s in any::<String>()) {
                if TenantName::new(&s).is_ok() {
                    prop_assert_eq!(check_device_name(&s), Ok(()));
                }
            }

            #[test]
            fn every_accepted_tenant_name_of_likely_characters_is_a_valid_cdi_device_name(
                s in "[A-Za-z0-9._:-]{1,70}"
            ) {
                if TenantName::new(&s).is_ok() {
                    prop_assert_eq!(check_device_name(&s), Ok(()));
                    let qualified = crate::cdi::device_name(&TenantName::new(&s).unwrap());
                    prop_assert_eq!(check_qualified_name(&qualified), Ok(()));
                }
            }

            #[test]
            fn checking_names_never_panics(s in any::<String>()) {
                let _ = check_device_name(&s);
                let _ = check_kind(&s);
                let _ = check_qualified_name(&s);
            }

            #[test]
            fn the_spec_of_any_accepted_tenants_is_valid(
                names in proptest::collection::btree_set("[A-Za-z0-9][A-Za-z0-9._-]{0,20}", 1..6)
            ) {
                let tenants: Vec<TenantName> =
                    names.iter().filter_map(|n| TenantName::new(n).ok()).collect();
                prop_assume!(!tenants.is_empty());
                prop_assert_eq!(check_spec(&layout().spec(&tenants)), Ok(()));
            }
        }
    }
}
