//! How `gpuslice run` enters a tenant (creating it, or joining one that exists) and leaves it
//! (removing it when it was the last one out).
//!
//! Several runs may share a tenant (`--tenant same`). The one that finds no quota creates
//! the tenant: it writes the quota file, and before it a marker, `created-by-run`, in the
//! tenant's directory. Tenants without the marker were made by someone else (the device
//! plugin, an administrator) and are never removed by a run.
//!
//! Two `flock(2)` locks, both dropped by the kernel when a process dies however it dies:
//!
//! - **The tenant directory, exclusively**, held for the few system calls of an entry or a
//!   departure: runs of one tenant enter and leave one at a time, so a run cannot join a
//!   tenant that is being removed, and of two runs leaving at once the second sees the first
//!   gone.
//! - **The marker, shared**, held by every run of the tenant for as long as it is in it.
//!   A leaving run that can turn its shared lock into an exclusive one is the last run of
//!   the tenant; it removes the tenant if, in addition, no process holds a live slot in the
//!   tenant's usage file (a process that uses the GPU outside `gpuslice run`, or a child that
//!   outlived the command, keeps it).
//!
//! A run-created tenant left behind (its last run was killed with SIGKILL) has a marker that
//! nobody locks and no live slots: the next run that enters it removes it and starts afresh,
//! so a stale quota never becomes the ceiling of an unrelated run.

use std::fs::{self, DirBuilder, File, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use gpuslice_ledger::{Ledger, LedgerError, TenantName, TenantQuota};

/// The marker a run-created tenant has in its directory.
pub const MARKER: &str = "created-by-run";

/// How many times entering starts over because the tenant was removed under it.
const ENTER_ATTEMPTS: u32 = 100;

/// Why a run could not enter or leave its tenant.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The ledger refused (a corrupt quota file, an unwritable directory).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A file operation on the tenant's directory or marker failed.
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The tenant exists and this run may not join it (its name was generated).
    #[error(
        "tenant {tenant} already exists and is in use (a `gpuslice run` in another PID \
             namespace with the same PID?); pass --tenant NAME"
    )]
    Exists {
        /// The tenant.
        tenant: TenantName,
    },
    /// The tenant kept disappearing while this run tried to enter it.
    #[error(
        "tenant {tenant} was removed and created again {ENTER_ATTEMPTS} times while this \
             run tried to enter it; retry"
    )]
    Unstable {
        /// The tenant.
        tenant: TenantName,
    },
}

impl TenancyError {
    /// Shorthand for [`TenancyError::Io`].
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TenancyError {
        let path = path.to_path_buf();
        move |source| TenancyError::Io {
            action,
            path,
            source,
        }
    }
}

/// Whether a run may join a tenant that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Yes (`--tenant NAME`).
    Allowed,
    /// No: its name was generated, so an existing tenant of that name is someone else's.
    Refused,
}

/// How a run came to be in its tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// It created the tenant, with the quota it was given.
    Created,
    /// It joined a tenant that had this quota.
    Joined(TenantQuota),
}

/// What became of the tenant when a run left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// This run was the last one out, and no process held a live slot: the tenant is gone.
    Removed,
    /// Other runs are still in the tenant.
    OtherRuns,
    /// Processes still hold live slots in the tenant's usage file.
    LiveProcesses(usize),
    /// The tenant was not created by `gpuslice run`, so runs never remove it.
    NotRunCreated,
    /// The tenant's directory was already gone.
    AlreadyGone,
}

/// A run's place in its tenant. Dropping it leaves without removing anything; call
/// [`Membership::leave`] to leave properly.
#[derive(Debug)]
pub struct Membership {
    ledger: Ledger,
    tenant: TenantName,
    /// How it entered.
    pub entry: Entry,
    /// The marker, share-locked; `None` in a tenant not created by a run.
    marker: Option<File>,
}

/// Enters `tenant`: creates it with `quota` if it has no quota, else joins it (if `join`
/// allows). A stale run-created tenant is removed and created afresh.
pub fn enter(
    ledger: &Ledger,
    tenant: &TenantName,
    quota: &TenantQuota,
    join: Join,
) -> Result<Membership, TenancyError> {
    let dir = ledger.tenant_dir(tenant);
    let marker_path = dir.join(MARKER);
    for _ in 0..ENTER_ATTEMPTS {
        let Some(_dir_lock) = lock_tenant_dir(&dir, true)? else {
            continue;
        };
        let Some(existing) = ledger.read_quota(tenant)? else {
            // Marker first: should this process die between the two, a quota without a
            // marker would pass for someone else's tenant and never be removed.
            let marker =
                File::create(&marker_path).map_err(TenancyError::io("create", &marker_path))?;
            io::Write::write_all(
                &mut &marker,
                format!("created by `gpuslice run` (pid {})\n", std::process::id()).as_bytes(),
            )
            .map_err(TenancyError::io("write", &marker_path))?;
            marker
                .lock_shared()
                .map_err(TenancyError::io("lock", &marker_path))?;
            ledger.write_quota(tenant, quota)?;
            return Ok(Membership {
                ledger: ledger.clone(),
                tenant: tenant.clone(),
                entry: Entry::Created,
                marker: Some(marker),
            });
        };
        let marker = match File::open(&marker_path) {
            Ok(marker) => Some(marker),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(TenancyError::io("open", &marker_path)(e)),
        };
        if let Some(marker) = &marker
            && is_abandoned(ledger, tenant, marker, &marker_path)?
        {
            ledger.remove_tenant(tenant)?;
            continue;
        }
        if join == Join::Refused {
            return Err(TenancyError::Exists {
                tenant: tenant.clone(),
            });
        }
        if let Some(marker) = &marker {
            // Also turns the exclusive lock `is_abandoned` may have taken back into a shared one.
            marker
                .lock_shared()
                .map_err(TenancyError::io("lock", &marker_path))?;
        }
        return Ok(Membership {
            ledger: ledger.clone(),
            tenant: tenant.clone(),
            entry: Entry::Joined(existing.quota()),
            marker,
        });
    }
    Err(TenancyError::Unstable {
        tenant: tenant.clone(),
    })
}

impl Membership {
    /// The tenant.
    pub fn tenant(&self) -> &TenantName {
        &self.tenant
    }

    /// Leaves the tenant, removing it if this run is the last of a run-created tenant and
    /// no process holds a live slot in it.
    pub fn leave(self) -> Result<Departure, TenancyError> {
        let Some(marker) = &self.marker else {
            return Ok(Departure::NotRunCreated);
        };
        let dir = self.ledger.tenant_dir(&self.tenant);
        let Some(_dir_lock) = lock_tenant_dir(&dir, false)? else {
            return Ok(Departure::AlreadyGone);
        };
        let marker_path = dir.join(MARKER);
        match marker.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Departure::OtherRuns),
            Err(TryLockError::Error(e)) => return Err(TenancyError::io("lock", &marker_path)(e)),
        }
        match live_slots(&self.ledger, &self.tenant)? {
            0 => {
                self.ledger.remove_tenant(&self.tenant)?;
                Ok(Departure::Removed)
            }
            n => Ok(Departure::LiveProcesses(n)),
        }
    }
}

/// Whether a run-created tenant has been left behind: no run holds its marker and no process
/// a live slot. When it returns true the caller holds the marker exclusively.
fn is_abandoned(
    ledger: &Ledger,
    tenant: &TenantName,
    marker: &File,
    marker_path: &Path,
) -> Result<bool, TenancyError> {
    match marker.try_lock() {
        Ok(()) => Ok(live_slots(ledger, tenant)? == 0),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(TenancyError::io("lock", marker_path)(e)),
    }
}

/// How many slots of the tenant's usage file a live process holds (0 without a usage file).
fn live_slots(ledger: &Ledger, tenant: &TenantName) -> Result<usize, TenancyError> {
    match ledger.snapshot_usage(tenant) {
        Ok(usage) => Ok(usage.slots().iter().filter(|s| s.live).count()),
        Err(e) if e.is_not_found() => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Locks the tenant directory `dir` exclusively (creating it first if `create`), and
/// returns the locked handle; the lock goes with it. `None` when the directory is missing
/// (without `create`) or was removed or replaced while this process waited for the lock.
fn lock_tenant_dir(dir: &Path, create: bool) -> Result<Option<File>, TenancyError> {
    if create {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(TenancyError::io("create", dir))?;
    }
    let handle = match File::open(dir) {
        Ok(handle) => handle,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TenancyError::io("open", dir)(e)),
    };
    handle.lock().map_err(TenancyError::io("lock", dir))?;
    let held = handle
        .metadata()
        .map_err(TenancyError::io("inspect", dir))?;
    match fs::metadata(dir) {
        Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => Ok(Some(handle)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TenancyError::io("inspect", dir)(e)),
    }
}
