//! The tenants the plugin makes, one per allocation, and how they are found again and
//! cleaned up.
//!
//! **Naming.** A tenant is named after the first of its slices (device IDs sort, and the
//! first is the lowest): `GPU-<uuid>-slice-<i>`. The kubelet hands a slice to one container
//! at a time, so two live allocations never share a name, and allocating the same slices
//! again (a pod's next container reusing its init container's devices, a kubelet retry)
//! finds the same tenant.
//!
//! **Record.** The tenant's directory holds `device-plugin-allocation` (JSON: the resource,
//! the slices, when), written before the quota, so that after a restart the plugin knows
//! its tenants from the ledger alone, and a tenant without it (made by `gpuslice run` or an
//! administrator) is never touched.
//!
//! **Cleanup.** The device plugin API has no "deallocate". The plugin learns that a
//! container is gone when a slice it is asked to allocate is no longer used by the container
//! it was allocated to before, and from the kubelet's pod resources API. So:
//! - at `Allocate`, an earlier tenant holding any of the slices being allocated is removed;
//! - at every sweep, a tenant whose GPU this node no longer has, or whose slices no
//!   resource advertises any more (the configuration changed), is removed, and so is one
//!   whose slices no container has according to the kubelet's pod resources API (its pod is
//!   gone), once it is older than a grace period (the kubelet lists an allocation only after
//!   `Allocate` returned);
//! - a CDI spec file of gpuslice's whose tenant the ledger does not have (left over from a
//!   removed tenant, a crash, or another ledger) is removed, and a tenant's spec that is
//!   missing, damaged or out of date is written again.
//!
//! Never a tenant in which a process still holds a live slot, though (a warning says so).
//! Where the pod resources API cannot be reached, a tenant whose pod is gone stays, holding
//! no memory (its processes' slots are dead), until one of its slices is allocated again: at
//! most one such tenant per slice.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gpuslice_ledger::{FileError, Ledger, LedgerError, TenantName};
use serde::{Deserialize, Serialize};

use super::config::Config;
use super::health::Inventory;
use super::slices::SliceId;
use crate::cdi;

/// The record's file name in the tenant's directory.
pub const RECORD: &str = "device-plugin-allocation";

/// What the plugin recorded about a tenant it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The resource the slices were allocated from.
    pub resource: String,
    /// The device IDs (slices), sorted.
    pub devices: Vec<String>,
    /// When, in milliseconds since the Unix epoch.
    pub allocated_unix_ms: u64,
}

impl Record {
    /// The slices, those that parse.
    pub fn slices(&self) -> impl Iterator<Item = SliceId> + '_ {
        self.devices.iter().filter_map(|d| SliceId::parse(d))
    }
}

/// A tenant's files could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The ledger refused.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A record that is not what this plugin writes.
    #[error("{} is not a valid allocation record ({message}); remove the tenant's directory if it is not in use", .path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tenant of the allocation's name that this plugin did not make.
    #[error(
        "tenant {tenant} exists and was not made by the device plugin (it has a quota and no \
         {RECORD} record); not touched: remove it (gpuslice tenant delete {tenant}) to let \
         the plugin use its slices"
    )]
    NotOurs {
        /// The tenant.
        tenant: TenantName,
    },
    /// The CDI spec could not be written.
    #[error(transparent)]
    Cdi(#[from] cdi::CdiError),
}

/// The tenant for an allocation of `slices` (not empty): named after the lowest.
pub fn tenant_name(slices: &[SliceId]) -> Result<TenantName, TenantError> {
    let first = slices
        .iter()
        .map(ToString::to_string)
        .min()
        .unwrap_or_default();
    Ok(TenantName::new(&first)?)
}

/// Whether `t` is a name the plugin gives its tenants: a slice's, `GPU-<uuid>-slice-<n>`.
pub fn is_slice_name(t: &TenantName) -> bool {
    SliceId::parse(t.as_str()).is_some()
}

/// The record of tenant `t`; `None` when it has none (not the plugin's tenant).
pub fn read_record(ledger: &Ledger, t: &TenantName) -> Result<Option<Record>, TenantError> {
    let path = ledger.tenant_dir(t).join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TenantError::Io(FileError {
                action: "read",
                path,
                source,
            }));
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TenantError::BadRecord {
            path,
            message: e.to_string(),
        })
}

/// Writes tenant `t`'s record (creating its directory).
pub fn write_record(ledger: &Ledger, t: &TenantName, record: &Record) -> Result<(), TenantError> {
    let dir = ledger.tenant_dir(t);
    fs::create_dir_all(&dir).map_err(|source| {
        TenantError::Io(FileError {
            action: "create",
            path: dir.clone(),
            source,
        })
    })?;
    let text = serde_json::to_string_pretty(record).unwrap_or_default() + "\n";
    cdi::write_atomically(&dir.join(RECORD), &text)?;
    Ok(())
}

/// Creates tenant `t`'s usage and lock files if missing, writable by anyone: the container
/// runs as any user, and only its own usage and lock files are mounted into it. The lock
/// files' directory is closed to everyone but root, so that no process on the host outside
/// the tenant's containers can reach a tenant's lock file and take part in its locks.
pub fn prepare_usage(ledger: &Ledger, t: &TenantName) -> Result<PathBuf, TenantError> {
    ledger.open_usage(t)?;
    let chmod = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
            TenantError::Io(FileError {
                action: "set the mode of",
                path: path.to_path_buf(),
                source,
            })
        })
    };
    chmod(ledger.locks_dir(), 0o700)?;
    chmod(&ledger.lock_path(t), 0o666)?;
    let path = ledger.usage_path(t);
    chmod(&path, 0o666)?;
    Ok(path)
}

/// Every tenant of the ledger with a record. A tenant whose record cannot be read is
/// reported by `on_error` and left out (and so left alone).
pub fn plugin_tenants(
    ledger: &Ledger,
    mut on_error: impl FnMut(&TenantName, TenantError),
) -> Result<Vec<(TenantName, Record)>, TenantError> {
    let mut out = Vec::new();
    for t in ledger.tenants()? {
        match read_record(ledger, &t) {
            Ok(Some(record)) => out.push((t, record)),
            Ok(None) => {}
            Err(e) => on_error(&t, e),
        }
    }
    Ok(out)
}

/// How many slots of the tenant's usage file a live process holds.
pub fn live_slots(ledger: &Ledger, t: &TenantName) -> Result<usize, TenantError> {
    // From the lock file alone: a departed pod that damaged its own usage file must not
    // keep its tenant (and so its slice's name) forever.
    Ok(ledger.live_processes(t)?)
}

/// What became of a tenant the plugin wanted gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed, with its CDI spec.
    Removed,
    /// Kept: processes hold live slots in it.
    InUse(usize),
}

/// Removes tenant `t` and its CDI spec in `cdi_dir`, unless a process holds a live slot.
pub fn remove_unless_in_use(
    ledger: &Ledger,
    t: &TenantName,
    cdi_dir: &Path,
) -> Result<Removal, TenantError> {
    let live = live_slots(ledger, t)?;
    if live > 0 {
        return Ok(Removal::InUse(live));
    }
    ledger.remove_tenant(t)?;
    remove_spec(cdi_dir, t.as_str())?;
    Ok(Removal::Removed)
}

/// Removes tenant `t`'s CDI spec file, if there is one.
fn remove_spec(cdi_dir: &Path, tenant: &str) -> Result<(), TenantError> {
    let path = cdi_dir.join(format!("{}{tenant}.json", cdi::SPEC_FILE_PREFIX));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TenantError::Io(FileError {
            action: "remove",
            path,
            source,
        })),
    }
}

/// One sweep: removes the plugin's tenants whose GPU is gone, whose slices no resource
/// advertises, or (with `in_use`, the devices the kubelet's containers have) whose slices
/// no container has, unless a process holds a live slot in them; removes gpuslice CDI spec
/// files without a tenant and rewrites tenants' specs that are not as they should be. Returns what
/// was removed, for the log; problems with one tenant are logged and do not stop the rest.
pub fn sweep(
    ledger: &Ledger,
    config: &Config,
    inventory: &Inventory,
    in_use: Option<&HashSet<String>>,
) -> Vec<String> {
    let mut removed = Vec::new();
    let tenants = match plugin_tenants(ledger, |t, e| {
        tracing::warn!("tenant {t}: {e}");
    }) {
        Ok(tenants) => tenants,
        Err(e) => {
            tracing::warn!("cleanup skipped: {e}");
            return removed;
        }
    };
    let mut kept: HashSet<String> = ledger
        .tenants()
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.as_str().to_string())
        .collect();
    for (t, record) in &tenants {
        let Some(reason) = obsolete(record, config, inventory, in_use, now_ms()) else {
            continue;
        };
        match remove_unless_in_use(ledger, t, &config.cdi_dir) {
            Ok(Removal::Removed) => {
                tracing::info!("removed tenant {t}: {reason}");
                kept.remove(t.as_str());
                removed.push(t.as_str().to_string());
            }
            Ok(Removal::InUse(n)) => {
                tracing::warn!("tenant {t}: {reason}, but {n} process(es) still use it; kept");
            }
            Err(e) => tracing::warn!("tenant {t}: {reason}, and it could not be removed: {e}"),
        }
    }
    for (t, _) in &tenants {
        if kept.contains(t.as_str()) {
            crate::cut_back_grown_files(ledger, t);
            match ensure_spec(&config.layout, &config.cdi_dir, t) {
                Ok(true) => tracing::info!(
                    "rewrote the CDI spec of tenant {t}: it was missing or out of date"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("tenant {t}: {e}"),
            }
        }
    }
    for stale in stale_specs(&config.cdi_dir, &kept) {
        let path = config.cdi_dir.join(&stale);
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!("removed {}: no such tenant", path.display());
                removed.push(stale);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("could not remove stale {}: {e}", path.display()),
        }
    }
    removed
}

/// Writes tenant `t`'s CDI spec unless the file already says exactly that; true if written.
/// A running pod's containers need it each time one (re)starts, so a spec that was removed,
/// damaged or written for other settings is put right.
pub fn ensure_spec(
    layout: &cdi::Layout,
    cdi_dir: &Path,
    t: &TenantName,
) -> Result<bool, TenantError> {
    cdi::ensure_pin_file(layout, t)?;
    let path = cdi_dir.join(cdi::spec_file_name(t));
    let wanted = cdi::to_json(&layout.spec(std::slice::from_ref(t)))?;
    if fs::read_to_string(&path).is_ok_and(|text| text == wanted) {
        return Ok(false);
    }
    cdi::write_atomically(&path, &wanted)?;
    Ok(true)
}

/// Why a tenant's allocation can no longer be in use, if it cannot.
fn obsolete(
    record: &Record,
    config: &Config,
    inventory: &Inventory,
    in_use: Option<&HashSet<String>>,
    now_ms: u64,
) -> Option<String> {
    if inventory.discovered
        && let Some(gone) = record.slices().find(|s| inventory.gpu(&s.gpu).is_none())
    {
        return Some(format!("its GPU {} is not on this node any more", gone.gpu));
    }
    let advertised = config
        .resources
        .iter()
        .find(|r| r.name == record.resource)
        .is_some_and(|r| record.slices().all(|s| r.owns(s.index)));
    if !advertised {
        return Some(format!(
            "its slices are no longer advertised as {}",
            record.resource
        ));
    }
    // The kubelet lists an allocation only once Allocate has returned: give it time.
    let grace_ms = u64::try_from(config.cleanup_grace.as_millis()).unwrap_or(u64::MAX);
    if let Some(in_use) = in_use
        && now_ms.saturating_sub(record.allocated_unix_ms) >= grace_ms
        && !record.devices.iter().any(|d| in_use.contains(d))
    {
        return Some("no container on this node has its slices any more (pod gone)".into());
    }
    None
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The gpuslice spec files in `cdi_dir` whose tenant is not in `tenants`.
fn stale_specs(cdi_dir: &Path, tenants: &HashSet<String>) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cdi_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| cdi::tenant_of_spec_file(name).is_some_and(|t| !tenants.contains(t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::GpuUuid;

    fn slice(g: u8, i: u32) -> SliceId {
        SliceId::new(
            GpuUuid::parse(&format!("GPU-fa4ec0da-0000-4000-8000-0000000000{g:02x}")).unwrap(),
            i,
        )
    }

    #[test]
    fn a_tenant_is_named_after_its_lowest_slice() {
        let t = tenant_name(&[slice(1, 0), slice(0, 3), slice(0, 2)]).unwrap();
        assert_eq!(
            t.as_str(),
            "GPU-fa4ec0da-0000-4000-8000-000000000000-slice-2"
        );
    }

    proptest::proptest! {
        /// Issue 15, item 7: the tenant of any allocation has a name CDI accepts, so its
        /// spec is never refused by a runtime.
        #[test]
        fn the_tenant_of_any_slices_is_a_valid_cdi_device(
            uuids in proptest::collection::vec(proptest::prelude::any::<[u8; 16]>(), 1..4),
            index in 0u32..100,
        ) {
            let slices: Vec<SliceId> = uuids
                .iter()
                .enumerate()
                .map(|(i, u)| SliceId::new(gpuslice_ledger::GpuUuid(*u), index + u32::try_from(i).unwrap()))
                .collect();
            let t = tenant_name(&slices).unwrap();
            proptest::prop_assert_eq!(crate::cdi::rules::check_device_name(t.as_str()), Ok(()));
        }
    }

    #[test]
    fn records_round_trip_and_a_damaged_one_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let t = TenantName::new("t").unwrap();
        assert_eq!(read_record(&ledger, &t).unwrap(), None);
        let record = Record {
            resource: "gpuslice.dev/gpu".into(),
            devices: vec![slice(0, 1).to_string()],
            allocated_unix_ms: 5,
        };
        write_record(&ledger, &t, &record).unwrap();
        assert_eq!(read_record(&ledger, &t).unwrap(), Some(record));
        fs::write(ledger.tenant_dir(&t).join(RECORD), "{").unwrap();
        let err = read_record(&ledger, &t).unwrap_err().to_string();
        assert!(err.contains(RECORD), "{err}");
    }

    #[test]
    fn stale_specs_are_gpuslice_files_without_a_tenant() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "gpuslice.dev-gpu_a.json",
            "gpuslice.dev-gpu_b.json",
            "nvidia.com-gpu.json",
            "gpuslice.json",
        ] {
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        let tenants = HashSet::from(["a".to_string()]);
        assert_eq!(
            stale_specs(dir.path(), &tenants),
            ["gpuslice.dev-gpu_b.json"]
        );
    }

    #[test]
    fn a_tenant_is_obsolete_when_its_gpu_is_gone_or_no_container_has_its_slices() {
        let args =
            super::super::config::test_cli::parse(["gpuslice", "device-plugin", "--shim", "/s.so"])
                .unwrap();
        let config = Config::load(&args).unwrap();
        let gpu = |g: u8| crate::nvml::Gpu {
            index: u32::from(g),
            uuid: slice(g, 0).gpu,
            model: "test GPU".into(),
            memory_bytes: 1 << 30,
        };
        let inventory = Inventory {
            discovered: true,
            gpus: vec![super::super::slices::GpuState {
                gpu: gpu(0),
                problem: None,
            }],
        };
        let record = |g: u8, at: u64| Record {
            resource: "gpuslice.dev/gpu".into(),
            devices: vec![slice(g, 1).to_string()],
            allocated_unix_ms: at,
        };
        let now = 1_000_000;
        let old = now - 200_000;
        assert_eq!(
            obsolete(&record(0, old), &config, &inventory, None, now),
            None
        );
        assert!(obsolete(&record(1, old), &config, &inventory, None, now).is_some());
        let mut in_use = HashSet::new();
        assert!(
            obsolete(&record(0, old), &config, &inventory, Some(&in_use), now).is_some(),
            "no container has it"
        );
        assert_eq!(
            obsolete(
                &record(0, now - 1000),
                &config,
                &inventory,
                Some(&in_use),
                now
            ),
            None,
            "too young for the kubelet to list it"
        );
        in_use.insert(slice(0, 1).to_string());
        assert_eq!(
            obsolete(&record(0, old), &config, &inventory, Some(&in_use), now),
            None
        );
        let undiscovered = Inventory::default();
        assert_eq!(
            obsolete(&record(1, old), &config, &undiscovered, None, now),
            None,
            "GPUs not known yet: nothing is gone"
        );
    }
}
