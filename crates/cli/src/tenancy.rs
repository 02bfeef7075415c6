//! How `gpuslice run` enters a tenant (creating it, or joining one that exists) and leaves it
//! (removing it when it was the last one out).
//!
//! Several runs may share a tenant (`--tenant same`). The one that finds no quota creates
//! the tenant: it writes the quota file, and before it a marker, `created-by-run`, in the
//! tenant's directory. Tenants without the marker were made by someone else (the device
//! plugin, an administrator) and are never removed by a run.
//!
//! Two OFD locks on the tenant's lock file (`<dir>/locks/<tenant>`, which only the tenant's
//! own user can open, so no other user can hold, block or fake them), both dropped by the
//! kernel when a process dies however it dies:
//!
//! - **Entry, exclusively** ([`RUN_ENTRY`](lock_bytes::RUN_ENTRY)), held for the few system
//!   calls of an entry or a departure: runs of one tenant enter and leave one at a time, so a
//!   run cannot join a tenant that is being removed, and of two runs leaving at once the
//!   second sees the first gone.
//! - **Membership, shared** ([`RUN_MEMBERS`](lock_bytes::RUN_MEMBERS)), held by every run of
//!   the tenant for as long as it is in it. A leaving run that can turn its shared lock into
//!   an exclusive one is the last run of the tenant; it removes the tenant if, in addition,
//!   no process holds a live slot in the tenant's usage file (a process that uses the GPU
//!   outside `gpuslice run`, or a child that outlived the command, keeps it).
//!
//! A run-created tenant left behind (its last run was killed with SIGKILL) has a marker that
//! nobody locks and no live slots: the next run that enters it removes it and starts afresh,
//! so a stale quota never becomes the ceiling of an unrelated run.
//!
//! A run that joins a tenant made by someone else holds the membership lock too, though it
//! never removes that tenant: `gpuslice tenant delete` ([`remove`]) takes the entry lock and
//! asks the membership lock whether any run is in the tenant, so that it does not remove a
//! tenant under a run whose command has not used the GPU yet. `gpuslice tenant create`
//! ([`create`]) makes a tenant under the entry lock too, marked `created-by-tenant-create`.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use gpuslice_ledger::layout::lock_bytes;
use gpuslice_ledger::{
    FileError, Ledger, LedgerError, LockFile, LockHandle, LockKind, TenantName, TenantQuota,
};

/// The marker a run-created tenant has in its directory.
pub const MARKER: &str = "created-by-run";
/// The marker of a tenant made by `gpuslice tenant create`; it names the CDI spec written
/// for it, if any.
pub const CREATE_MARKER: &str = "created-by-tenant-create";

/// How many times entering starts over because the tenant was removed under it.
const ENTER_ATTEMPTS: u32 = 100;

/// Why a run could not enter or leave its tenant.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The ledger refused (a corrupt quota file, an unwritable directory).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A file operation on the tenant's directory or marker failed.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The tenant exists and this run may not join it (its name was generated).
    #[error(
        "tenant {tenant} already exists and is in use (a `gpuslice run` in another PID \
             namespace with the same PID?); pass --tenant NAME"
    )]
    Exists {
        /// The tenant.
        tenant: TenantName,
    },
    /// The name is of the form the device plugin or the DRA driver names its tenants with.
    #[error(
        "tenant name {tenant} is of the form the {maker} names its tenants ({form}), and a \
         tenant made under it would be taken for one of them (or keep the {maker} from \
         making its own); choose another name"
    )]
    Reserved {
        /// The tenant.
        tenant: TenantName,
        /// Who names tenants so.
        maker: &'static str,
        /// The form.
        form: &'static str,
    },
    /// The tenant's entry lock stayed taken (by a process of the tenant, which can take it).
    #[error(
        "the entry lock of tenant {tenant} stayed taken for {} s (a process of the tenant \
         holds it?); nothing was changed",
        ENTRY_PATIENCE.as_secs()
    )]
    EntryHeld {
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
        let make = FileError::on(action, path);
        move |source| TenancyError::Io(make(source))
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
    /// A description of the tenant's lock file holding the shared membership lock.
    membership: LockHandle,
    /// Whether a run created the tenant (so that the last run out removes it).
    run_created: bool,
}

/// An error if `tenant` is a name the device plugin (`GPU-<uuid>-slice-<n>`) or the DRA
/// driver (`dra-<claim uid>`) gives its tenants: a tenant made by anyone else under such a
/// name would collide with theirs. Joining one that exists is another matter.
pub fn check_not_reserved(tenant: &TenantName) -> Result<(), TenancyError> {
    let reserved = |maker, form| {
        Err(TenancyError::Reserved {
            tenant: tenant.clone(),
            maker,
            form,
        })
    };
    if gpuslice_k8s::device_plugin::tenants::is_slice_name(tenant) {
        return reserved("device plugin", "GPU-<uuid>-slice-<n>");
    }
    let dra = tenant
        .as_str()
        .strip_prefix(gpuslice_k8s::dra::state::TENANT_PREFIX)
        .is_some_and(is_uuid);
    if dra {
        return reserved("DRA driver", "dra-<claim uid>");
    }
    Ok(())
}

/// Whether `s` is a UUID as Kubernetes writes them: 8-4-4-4-12 hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Enters `tenant`: creates it with `quota` if it has no quota, else joins it (if `join`
/// allows). A stale run-created tenant is removed and created afresh. A tenant of a name
/// [`check_not_reserved`] refuses is joined if it exists, never created.
pub fn enter(
    ledger: &Ledger,
    tenant: &TenantName,
    quota: &TenantQuota,
    join: Join,
) -> Result<Membership, TenancyError> {
    let dir = ledger.tenant_dir(tenant);
    let marker_path = dir.join(MARKER);
    for _ in 0..ENTER_ATTEMPTS {
        let Some((locks, _entry)) = lock_entry(ledger, tenant, true)? else {
            continue;
        };
        let Some(existing) = ledger.read_quota(tenant)? else {
            check_not_reserved(tenant)?;
            // Marker first: should this process die between the two, a quota without a
            // marker would pass for someone else's tenant and never be removed.
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(TenancyError::io("create", &dir))?;
            let marker =
                File::create(&marker_path).map_err(TenancyError::io("create", &marker_path))?;
            io::Write::write_all(
                &mut &marker,
                format!("created by `gpuslice run` (pid {})\n", std::process::id()).as_bytes(),
            )
            .map_err(TenancyError::io("write", &marker_path))?;
            let membership = locks.handle()?;
            membership.lock_wait(lock_bytes::RUN_MEMBERS, LockKind::Shared)?;
            ledger.write_quota(tenant, quota)?;
            return Ok(Membership {
                ledger: ledger.clone(),
                tenant: tenant.clone(),
                entry: Entry::Created,
                membership,
                run_created: true,
            });
        };
        let run_created = marker_path.exists();
        let membership = locks.handle()?;
        if run_created && is_abandoned(ledger, tenant, &membership)? {
            ledger.remove_tenant(tenant)?;
            continue;
        }
        if join == Join::Refused {
            return Err(TenancyError::Exists {
                tenant: tenant.clone(),
            });
        }
        // Also turns the exclusive lock `is_abandoned` may have taken back into a shared one.
        membership.lock_wait(lock_bytes::RUN_MEMBERS, LockKind::Shared)?;
        return Ok(Membership {
            ledger: ledger.clone(),
            tenant: tenant.clone(),
            entry: Entry::Joined(existing.quota()),
            membership,
            run_created,
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
        if !self.run_created {
            return Ok(Departure::NotRunCreated);
        }
        let membership = &self.membership;
        let Some((_locks, _entry)) = lock_entry(&self.ledger, &self.tenant, false)? else {
            return Ok(Departure::AlreadyGone);
        };
        if !membership.try_lock(lock_bytes::RUN_MEMBERS, LockKind::Exclusive)? {
            return Ok(Departure::OtherRuns);
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

/// Who was found using a tenant that was to be removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Whether a `gpuslice run` is in the tenant.
    pub runs_inside: bool,
    /// How many processes hold a live slot in it.
    pub live_processes: usize,
    /// Whether its entry lock stayed taken for [`ENTRY_PATIENCE`]: a run entering or
    /// leaving holds it for a few system calls only, so someone else holds it (a process
    /// of the tenant can, since its containers have its lock file).
    pub entry_held: bool,
    /// Whether it was removed (not in use, or forced).
    pub removed: bool,
}

/// How long [`remove`] waits for a tenant's entry lock.
pub const ENTRY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Creates `tenant` with `quota` for `gpuslice tenant create`, marked with
/// [`CREATE_MARKER`] (holding `marker_text`), under the entry lock, so that a run entering
/// at once either joins it or made it first. An error if it exists already.
pub fn create(
    ledger: &Ledger,
    tenant: &TenantName,
    quota: &TenantQuota,
    marker_text: &str,
) -> Result<(), TenancyError> {
    check_not_reserved(tenant)?;
    let exists = || TenancyError::Exists {
        tenant: tenant.clone(),
    };
    for _ in 0..ENTER_ATTEMPTS {
        // Looked at before the lock too: a process of an existing tenant can hold its entry
        // lock forever, and the answer for a tenant with a quota is "exists" whatever it
        // does.
        if ledger.read_quota(tenant)?.is_some() {
            return Err(exists());
        }
        let Some((_locks, _entry)) = lock_entry_within(ledger, tenant, ENTRY_PATIENCE)? else {
            continue;
        };
        if ledger.read_quota(tenant)?.is_some() {
            return Err(exists());
        }
        let dir = ledger.tenant_dir(tenant);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(TenancyError::io("create", &dir))?;
        let marker = dir.join(CREATE_MARKER);
        std::fs::write(&marker, marker_text).map_err(TenancyError::io("write", &marker))?;
        ledger.write_quota(tenant, quota)?;
        return Ok(());
    }
    Err(TenancyError::Unstable {
        tenant: tenant.clone(),
    })
}

/// Removes `tenant` unless a `gpuslice run` is in it or a process holds a live slot in it;
/// with `force`, even then. The entry lock is held from the look to the removal, so no run
/// enters in between (one waiting for it finds the tenant gone and starts afresh). The lock
/// is waited for [`ENTRY_PATIENCE`] at most: the tenant's own processes can take it, and
/// one that never lets go must not hang the command (unforced, the tenant is kept).
pub fn remove(ledger: &Ledger, tenant: &TenantName, force: bool) -> Result<Removal, TenancyError> {
    let mut removal = Removal {
        runs_inside: false,
        live_processes: 0,
        entry_held: false,
        removed: false,
    };
    // Held until the end of this function.
    let mut _entry = None;
    for _ in 0..ENTER_ATTEMPTS {
        // No lock file: no run ever entered the tenant, nor can one be in it.
        let Some(locks) = ledger.open_existing_locks(tenant)? else {
            break;
        };
        let entry = locks.handle()?;
        let deadline = std::time::Instant::now() + ENTRY_PATIENCE;
        let mut held = false;
        while !entry.try_lock(lock_bytes::RUN_ENTRY, LockKind::Exclusive)? {
            if std::time::Instant::now() >= deadline {
                held = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A run that removed the tenant and made it afresh meanwhile has a new lock file,
        // whose locks are the ones that count.
        if !held && !locks.is_still_at_its_path()? {
            continue;
        }
        let membership = locks.handle()?;
        removal.entry_held = held;
        removal.runs_inside = !membership.try_lock(lock_bytes::RUN_MEMBERS, LockKind::Exclusive)?;
        _entry = Some((locks, entry, membership));
        break;
    }
    removal.live_processes = live_slots(ledger, tenant)?;
    let in_use = removal.runs_inside || removal.live_processes > 0 || removal.entry_held;
    if in_use && !force {
        return Ok(removal);
    }
    ledger.remove_tenant(tenant)?;
    removal.removed = true;
    Ok(removal)
}

/// Whether a run-created tenant has been left behind: no run holds its membership lock and
/// no process a live slot. When it returns true, `membership` holds that lock exclusively.
fn is_abandoned(
    ledger: &Ledger,
    tenant: &TenantName,
    membership: &LockHandle,
) -> Result<bool, TenancyError> {
    if membership.try_lock(lock_bytes::RUN_MEMBERS, LockKind::Exclusive)? {
        Ok(live_slots(ledger, tenant)? == 0)
    } else {
        Ok(false)
    }
}

/// How many slots of the tenant's usage file a live process holds (0 without a usage file).
fn live_slots(ledger: &Ledger, tenant: &TenantName) -> Result<usize, TenancyError> {
    Ok(ledger.live_processes(tenant)?)
}

/// Takes the tenant's entry lock as [`lock_entry`] does (creating its lock file), waiting for
/// it at most `patience`: [`TenancyError::EntryHeld`] after that.
fn lock_entry_within(
    ledger: &Ledger,
    tenant: &TenantName,
    patience: std::time::Duration,
) -> Result<Option<(LockFile, LockHandle)>, TenancyError> {
    let locks = ledger.open_locks(tenant)?;
    let entry = locks.handle()?;
    if !entry.lock_within(lock_bytes::RUN_ENTRY, LockKind::Exclusive, patience)? {
        return Err(TenancyError::EntryHeld {
            tenant: tenant.clone(),
        });
    }
    if !locks.is_still_at_its_path()? {
        return Ok(None);
    }
    Ok(Some((locks, entry)))
}

/// Takes the tenant's entry lock (creating its lock file first if `create`), and returns the
/// lock file with the description that holds the lock; the lock goes with it. `None` when
/// the lock file is missing (without `create`) or was removed or replaced while this
/// process waited for the lock.
fn lock_entry(
    ledger: &Ledger,
    tenant: &TenantName,
    create: bool,
) -> Result<Option<(LockFile, LockHandle)>, TenancyError> {
    let locks = if create {
        ledger.open_locks(tenant)?
    } else {
        match ledger.open_existing_locks(tenant)? {
            Some(locks) => locks,
            None => return Ok(None),
        }
    };
    let entry = locks.handle()?;
    entry.lock_wait(lock_bytes::RUN_ENTRY, LockKind::Exclusive)?;
    if !locks.is_still_at_its_path()? {
        return Ok(None);
    }
    Ok(Some((locks, entry)))
}
