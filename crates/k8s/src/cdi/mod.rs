//! CDI (Container Device Interface) specs for gpuslice: what a container runtime adds to a
//! container so that it runs as a tenant. The shim is mounted read-only and preloaded (through
//! `LD_PRELOAD`, or a mounted `/etc/ld.so.preload`), the ledger's `tenants/` directory is
//! mounted read-only and the tenant's usage file read-write on top of it, the tenant's lock
//! file (and no other tenant's: `locks/` is never mounted whole) read-write, and
//! `GPUSLICE_TENANT` and `GPUSLICE_DIR` name the tenant and the ledger. Limits are not in the environment: the
//! tenant's quota file is the ceiling the shim enforces, and whoever made the tenant wrote it.
//!
//! A spec has kind `gpuslice.dev/gpu` and one device per tenant, named after it, so a
//! container asks for `gpuslice.dev/gpu=<tenant>`. It is written with the lowest
//! `cdiVersion` its fields need, 0.5.0, since runtimes refuse versions newer than they know.
//! Every spec is checked against CDI's rules ([`rules`]) before it is
//! rendered: a runtime that finds one thing wrong in a file refuses every device in it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gpuslice_ledger::{FileError, Ledger, PINNED_TENANT_FILE, TenantName};
use serde::{Deserialize, Serialize};

use rules::Violation;

pub mod rules;

/// The CDI version of the specs written.
pub const CDI_VERSION: &str = "0.5.0";
/// The kind (vendor/class) of gpuslice's devices.
pub const KIND: &str = "gpuslice.dev/gpu";
/// Where `/etc/ld.so.preload` mode mounts its file in the container.
pub const LD_SO_PRELOAD: &str = "/etc/ld.so.preload";
/// The file, in the ledger directory, mounted as `/etc/ld.so.preload` in that mode.
pub const PRELOAD_FILE_NAME: &str = "ld.so.preload";
/// The file, in a tenant's directory, that pins the tenant in its containers.
pub const PIN_FILE_NAME: &str = "pinned";

/// A CDI spec file (the subset of the format gpuslice writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The CDI version ([`CDI_VERSION`]).
    pub cdi_version: String,
    /// `vendor/class`: [`KIND`].
    pub kind: String,
    /// The devices.
    pub devices: Vec<Device>,
    /// Edits applied whenever any device of this spec is injected.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// The device's name within the kind: the tenant.
    pub name: String,
    /// What injecting it does.
    pub container_edits: ContainerEdits,
}

/// Changes to a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `NAME=value` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Bind mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl ContainerEdits {
    fn is_empty(&self) -> bool {
        self.env.is_empty() && self.mounts.is_empty()
    }
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// The path on the host.
    pub host_path: String,
    /// The path in the container.
    pub container_path: String,
    /// The mount type: `bind`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Mount {
    /// A bind mount of `host` at `container`, read-only or read-write.
    fn bind(host: &Path, container: &Path, read_only: bool) -> Mount {
        let access = if read_only { "ro" } else { "rw" };
        Mount {
            host_path: host.display().to_string(),
            container_path: container.display().to_string(),
            kind: Some("bind".to_string()),
            options: [access, "nosuid", "nodev", "bind"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// How the shim gets into the container's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preload {
    /// `LD_PRELOAD` in the container's environment (replaces an `LD_PRELOAD` of the image).
    #[default]
    Env,
    /// A file mounted at `/etc/ld.so.preload` (keeps an `LD_PRELOAD` of the image working).
    LdSoPreload,
}

/// Where things are on the host and in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The ledger directory on the host.
    pub ledger_host: PathBuf,
    /// The ledger directory in the container (`GPUSLICE_DIR`).
    pub ledger_container: PathBuf,
    /// The shim on the host.
    pub shim_host: PathBuf,
    /// The shim in the container.
    pub shim_container: PathBuf,
    /// How the shim is preloaded.
    pub preload: Preload,
}

impl Layout {
    /// An error for a path that is not UTF-8: a spec is UTF-8 text, and a path rewritten to
    /// fit (each odd byte replaced) would be another path, a ledger without the tenant.
    pub fn check_paths(&self) -> Result<(), CdiError> {
        for (what, path) in [
            ("ledger directory", &self.ledger_host),
            ("ledger directory in containers", &self.ledger_container),
            ("shim", &self.shim_host),
            ("shim in containers", &self.shim_container),
        ] {
            if path.to_str().is_none() {
                return Err(CdiError::NotUtf8 {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The host file that `/etc/ld.so.preload` mode mounts: `<ledger>/ld.so.preload`.
    pub fn preload_file(&self) -> PathBuf {
        self.ledger_host.join(PRELOAD_FILE_NAME)
    }

    /// The edits every gpuslice device shares: the shim, the preload, the ledger.
    fn common_edits(&self) -> ContainerEdits {
        let mut edits = ContainerEdits::default();
        edits
            .mounts
            .push(Mount::bind(&self.shim_host, &self.shim_container, true));
        match self.preload {
            Preload::Env => edits
                .env
                .push(format!("LD_PRELOAD={}", self.shim_container.display())),
            Preload::LdSoPreload => edits.mounts.push(Mount::bind(
                &self.preload_file(),
                Path::new(LD_SO_PRELOAD),
                true,
            )),
        }
        edits
            .env
            .push(format!("GPUSLICE_DIR={}", self.ledger_container.display()));
        // Every tenant's quota and usage, read-only (tenants read each other's usage to share
        // the GPU); not the lock files beside them.
        let tenants = |ledger: &Path| Ledger::at_path(ledger).tenants_dir().to_path_buf();
        edits.mounts.push(Mount::bind(
            &tenants(&self.ledger_host),
            &tenants(&self.ledger_container),
            true,
        ));
        edits
    }

    /// The host file that pins tenant `t` in its containers: `<ledger>/tenants/<t>/pinned`,
    /// mounted read-only at [`PINNED_TENANT_FILE`].
    pub fn pin_file(&self, t: &TenantName) -> PathBuf {
        Ledger::at_path(&self.ledger_host)
            .tenant_dir(t)
            .join(PIN_FILE_NAME)
    }

    /// The device of tenant `t`: its name, its usage file mounted read-write over the
    /// read-only `tenants/`, its lock file (the only one the container sees), and the file
    /// that pins the tenant, read-only (a process cannot leave its tenant by clearing
    /// `GPUSLICE_TENANT`).
    fn device(&self, t: &TenantName) -> Device {
        let (host, container) = (
            Ledger::at_path(&self.ledger_host),
            Ledger::at_path(&self.ledger_container),
        );
        Device {
            name: t.as_str().to_string(),
            container_edits: ContainerEdits {
                env: vec![format!("GPUSLICE_TENANT={t}")],
                mounts: vec![
                    Mount::bind(&host.usage_path(t), &container.usage_path(t), false),
                    Mount::bind(&host.lock_path(t), &container.lock_path(t), false),
                    Mount::bind(&self.pin_file(t), Path::new(PINNED_TENANT_FILE), true),
                ],
            },
        }
    }

    /// The spec with one device per tenant.
    pub fn spec(&self, tenants: &[TenantName]) -> Spec {
        Spec {
            cdi_version: CDI_VERSION.to_string(),
            kind: KIND.to_string(),
            devices: tenants.iter().map(|t| self.device(t)).collect(),
            container_edits: self.common_edits(),
        }
    }
}

/// The fully qualified CDI name of tenant `t`'s device: `gpuslice.dev/gpu=<t>`.
pub fn device_name(t: &TenantName) -> String {
    format!("{KIND}={t}")
}

/// The file name of the spec for tenant `t` alone, as the CDI conventions name a spec
/// file: the kind with `/` as `-`, then `_` and a name (`gpuslice.dev-gpu_<t>.json`).
pub fn spec_file_name(t: &TenantName) -> String {
    format!("{}{t}.json", SPEC_FILE_PREFIX)
}

/// What every spec file gpuslice writes per tenant starts with.
pub const SPEC_FILE_PREFIX: &str = "gpuslice.dev-gpu_";

/// The tenant a per-tenant spec file name is for, if it is one.
pub fn tenant_of_spec_file(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(SPEC_FILE_PREFIX)?
        .strip_suffix(".json")
}

/// A spec that could not be written or rendered.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A path a spec cannot hold as it is.
    #[error("the {what} {} is not UTF-8, which a CDI spec (JSON or YAML text) cannot hold \
             unchanged; use a path of UTF-8 text", .path.display())]
    NotUtf8 {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The spec breaks a rule of CDI, so a runtime would refuse every device in it.
    #[error("refusing to write a CDI spec that container runtimes would reject: {0}")]
    Invalid(#[from] Violation),
    /// Serialization failed (it cannot, for these types; kept typed all the same).
    #[error("could not render the CDI spec as {format}: {message}")]
    Render {
        /// JSON or YAML.
        format: &'static str,
        /// The serializer's message.
        message: String,
    },
}

/// The spec as pretty JSON, with a final newline; an error for a spec that breaks CDI's rules.
pub fn to_json(spec: &Spec) -> Result<String, CdiError> {
    rules::check_spec(spec)?;
    serde_json::to_string_pretty(spec)
        .map(|s| s + "\n")
        .map_err(|e| CdiError::Render {
            format: "JSON",
            message: e.to_string(),
        })
}

/// The spec as YAML; an error for a spec that breaks CDI's rules.
pub fn to_yaml(spec: &Spec) -> Result<String, CdiError> {
    rules::check_spec(spec)?;
    serde_norway::to_string(spec).map_err(|e| CdiError::Render {
        format: "YAML",
        message: e.to_string(),
    })
}

/// Writes `text` to `path` whole: under a temporary name in the same directory (one a CDI
/// runtime does not read, since it does not end in `.json` or `.yaml`), then renamed over
/// `path`, so a runtime watching the directory never reads half a file. Mode 0644.
///
/// The temporary name is this call's own (process and a counter): the device plugin's
/// `Allocate` and its sweep may write the same spec at once, and with a name per process the
/// second rename found the file already moved away.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), CdiError> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let io_error = |action: &'static str, path: &Path| {
        let make = FileError::on(action, path);
        move |source| CdiError::Io(make(source))
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = fs::File::create(&temp).map_err(io_error("create", &temp))?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error("write", &temp)(e));
    }
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_error("rename into place", path)(e)
    })
}

/// Makes sure tenant `t`'s pin file names it and the ledger as its containers see them;
/// rewrites it only when it says something else.
pub fn ensure_pin_file(layout: &Layout, t: &TenantName) -> Result<(), CdiError> {
    let path = layout.pin_file(t);
    let wanted = format!(
        "GPUSLICE_TENANT={t}\nGPUSLICE_DIR={}\n",
        layout.ledger_container.display()
    );
    if fs::read_to_string(&path).is_ok_and(|text| text == wanted) {
        return Ok(());
    }
    write_atomically(&path, &wanted)
}

/// Makes sure `<ledger>/ld.so.preload` names the shim as the container sees it (for
/// `/etc/ld.so.preload` mode); rewrites it only when it says something else.
pub fn ensure_preload_file(layout: &Layout) -> Result<(), CdiError> {
    let path = layout.preload_file();
    let wanted = format!("{}\n", layout.shim_container.display());
    if fs::read_to_string(&path).is_ok_and(|text| text == wanted) {
        return Ok(());
    }
    write_atomically(&path, &wanted)
}

/// A CDI device name template: `vendor/class=name` with `{uuid}` or `{index}` in the name,
/// which gives a qualified name CDI accepts for any GPU (a runtime refuses a container that
/// asks for a device by a name CDI's rules reject).
pub fn is_device_template(template: &str) -> bool {
    let Some((_, name)) = template.split_once('=') else {
        return false;
    };
    let example =
        |uuid: &str, index: &str| template.replace("{uuid}", uuid).replace("{index}", index);
    (name.contains("{uuid}") || name.contains("{index}"))
        && [
            example("GPU-00000000-0000-0000-0000-000000000000", "0"),
            example("GPU-ffffffff-ffff-ffff-ffff-ffffffffffff", "15"),
        ]
        .iter()
        .all(|qualified| rules::check_qualified_name(qualified).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(preload: Preload) -> Layout {
        Layout {
            ledger_host: "/run/gpuslice".into(),
            ledger_container: "/run/gpuslice".into(),
            shim_host: "/var/lib/gpuslice/lib/libgpuslice.so".into(),
            shim_container: "/opt/gpuslice/libgpuslice.so".into(),
            preload,
        }
    }

    #[test]
    fn spec_mounts_the_shim_and_tenants_read_only_and_the_usage_and_lock_files_read_write() {
        let t = TenantName::new("team-a").unwrap();
        let spec = layout(Preload::Env).spec(std::slice::from_ref(&t));
        assert_eq!(spec.cdi_version, "0.5.0");
        assert_eq!(spec.kind, "gpuslice.dev/gpu");
        let common = &spec.container_edits;
        assert!(
            common
                .env
                .contains(&"LD_PRELOAD=/opt/gpuslice/libgpuslice.so".into())
        );
        assert!(common.env.contains(&"GPUSLICE_DIR=/run/gpuslice".into()));
        let shim = &common.mounts[0];
        assert_eq!(shim.host_path, "/var/lib/gpuslice/lib/libgpuslice.so");
        assert_eq!(shim.container_path, "/opt/gpuslice/libgpuslice.so");
        assert!(shim.options.contains(&"ro".into()));
        let tenants = common
            .mounts
            .iter()
            .find(|m| m.container_path == "/run/gpuslice/tenants")
            .unwrap();
        assert_eq!(tenants.host_path, "/run/gpuslice/tenants");
        assert!(tenants.options.contains(&"ro".into()));
        // Never the whole ledger, nor locks/: another tenant's lock file must stay out of
        // reach.
        assert!(
            !common
                .mounts
                .iter()
                .chain(&spec.devices[0].container_edits.mounts)
                .any(|m| m.host_path == "/run/gpuslice" || m.host_path == "/run/gpuslice/locks")
        );
        let device = &spec.devices[0];
        assert_eq!(device.name, "team-a");
        assert_eq!(device.container_edits.env, ["GPUSLICE_TENANT=team-a"]);
        let usage = &device.container_edits.mounts[0];
        assert_eq!(usage.host_path, "/run/gpuslice/tenants/team-a/usage");
        assert!(usage.options.contains(&"rw".into()));
        let lock = &device.container_edits.mounts[1];
        assert_eq!(lock.host_path, "/run/gpuslice/locks/team-a");
        assert_eq!(lock.container_path, "/run/gpuslice/locks/team-a");
        assert!(lock.options.contains(&"rw".into()));
        let pin = &device.container_edits.mounts[2];
        assert_eq!(pin.host_path, "/run/gpuslice/tenants/team-a/pinned");
        assert_eq!(pin.container_path, PINNED_TENANT_FILE);
        assert!(pin.options.contains(&"ro".into()));
        assert_eq!(device_name(&t), "gpuslice.dev/gpu=team-a");
    }

    #[test]
    fn ld_so_preload_mode_mounts_a_file_instead_of_setting_ld_preload() {
        let spec = layout(Preload::LdSoPreload).spec(&[]);
        let edits = &spec.container_edits;
        assert!(!edits.env.iter().any(|e| e.starts_with("LD_PRELOAD=")));
        assert!(
            edits
                .mounts
                .iter()
                .any(|m| m.container_path == LD_SO_PRELOAD
                    && m.host_path == "/run/gpuslice/ld.so.preload")
        );
    }

    #[test]
    fn json_and_yaml_use_the_cdi_field_names() {
        let t = TenantName::new("t1").unwrap();
        let spec = layout(Preload::Env).spec(&[t]);
        let json = to_json(&spec).unwrap();
        for field in [
            "\"cdiVersion\"",
            "\"containerEdits\"",
            "\"hostPath\"",
            "\"type\"",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let yaml = to_yaml(&spec).unwrap();
        assert!(yaml.contains("cdiVersion: 0.5.0"), "{yaml}");
        let back: Spec = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn spec_file_names_round_trip_to_their_tenant() {
        let t = TenantName::new("GPU-fa4ec0da-0000-4000-8000-000000000000-slice-2").unwrap();
        let name = spec_file_name(&t);
        assert_eq!(
            name,
            "gpuslice.dev-gpu_GPU-fa4ec0da-0000-4000-8000-000000000000-slice-2.json"
        );
        assert_eq!(tenant_of_spec_file(&name), Some(t.as_str()));
        assert_eq!(tenant_of_spec_file("nvidia.com-gpu.json"), None);
        assert_eq!(tenant_of_spec_file(".gpuslice.dev-gpu_x.json.1.tmp"), None);
    }

    #[test]
    fn writers_of_one_file_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|i| {
                    let path = &path;
                    scope.spawn(move || {
                        (0..50).try_for_each(|_| write_atomically(path, &format!("{i}")))
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap().unwrap();
            }
        });
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn writing_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, "one").unwrap();
        write_atomically(&path, "two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_device_template_names_a_valid_device_for_any_gpu() {
        for good in [
            "nvidia.com/gpu={uuid}",
            "nvidia.com/gpu={index}",
            "example.com/gpu=g{index}",
        ] {
            assert!(is_device_template(good), "{good}");
        }
        for bad in [
            "nvidia.com/gpu=all",
            "nvidia.com/gpu",
            "{uuid}",
            "nvidia.com/gpu=a b{uuid}",
            "",
        ] {
            assert!(!is_device_template(bad), "{bad}");
        }
    }
}
