//! The ledger directory: where each tenant's files live, and the operations on them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::LedgerError;
use crate::files::{self, Access};
use crate::limits::TenantQuota;
use crate::locks::LockFile;
use crate::names::TenantName;
use crate::quota::{self, QuotaFile};
use crate::snapshot::{UsageReader, UsageSnapshot};
use crate::usage::UsageFile;

/// The name of the directory that holds one directory per tenant.
const TENANTS_DIR: &str = "tenants";
/// The name of the directory that holds one lock file per tenant.
const LOCKS_DIR: &str = "locks";
/// A tenant's quota file, inside its directory.
const QUOTA_FILE: &str = "quota";
/// A tenant's usage file, inside its directory.
const USAGE_FILE: &str = "usage";

/// A ledger directory (`GPUSLICE_DIR`, by default `/run/gpuslice`):
///
/// ```text
/// <dir>/tenants/<tenant>/quota   written by whoever created the tenant; read-only to it
/// <dir>/tenants/<tenant>/usage   written by the tenant's processes; read-only to others
/// <dir>/locks/<tenant>           the tenant's locks: its processes' and creator's alone
/// ```
///
/// `tenants/` is what every tenant sees (read-only); `locks/` is never shown to other
/// tenants (each container gets its own tenant's lock file, nothing else of it).
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
    tenants: PathBuf,
    locks: PathBuf,
}

impl Ledger {
    /// Opens the ledger directory, creating it (and `tenants/`) if missing, with mode 0755.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let ledger = Ledger::at(dir);
        files::ensure_dir(&ledger.dir)?;
        files::ensure_dir(&ledger.tenants)?;
        Ok(ledger)
    }

    /// Opens an existing ledger without creating anything (for read-only mounts and
    /// observers). Fails if the directory or its `tenants/` is missing.
    pub fn open_existing(dir: &Path) -> Result<Ledger, LedgerError> {
        let ledger = Ledger::at(dir);
        for d in [&ledger.dir, &ledger.tenants] {
            let meta =
                fs::metadata(d).map_err(|e| LedgerError::io(d, "open the ledger directory", e))?;
            if !meta.is_dir() {
                return Err(LedgerError::io(
                    d,
                    "open the ledger directory",
                    io::Error::from(io::ErrorKind::NotADirectory),
                ));
            }
        }
        Ok(ledger)
    }

    /// The paths of a ledger at `dir`, opening nothing (to name the paths of a ledger as
    /// another mount namespace sees it, say).
    pub fn at_path(dir: &Path) -> Ledger {
        Ledger::at(dir)
    }

    /// The paths of a ledger at `dir`.
    fn at(dir: &Path) -> Ledger {
        Ledger {
            dir: dir.to_path_buf(),
            tenants: dir.join(TENANTS_DIR),
            locks: dir.join(LOCKS_DIR),
        }
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the tenants' directories: `<dir>/tenants`.
    pub fn tenants_dir(&self) -> &Path {
        &self.tenants
    }

    /// The directory of tenant `t`: `<dir>/tenants/<t>`.
    pub fn tenant_dir(&self, t: &TenantName) -> PathBuf {
        self.tenants.join(t.as_str())
    }

    /// The quota file of tenant `t`.
    pub fn quota_path(&self, t: &TenantName) -> PathBuf {
        self.tenant_dir(t).join(QUOTA_FILE)
    }

    /// The usage file of tenant `t`.
    pub fn usage_path(&self, t: &TenantName) -> PathBuf {
        self.tenant_dir(t).join(USAGE_FILE)
    }

    /// The directory of the tenants' lock files: `<dir>/locks`.
    pub fn locks_dir(&self) -> &Path {
        &self.locks
    }

    /// The lock file of tenant `t`: `<dir>/locks/<t>`.
    pub fn lock_path(&self, t: &TenantName) -> PathBuf {
        self.locks.join(t.as_str())
    }

    /// Opens the tenant's lock file read-write, creating it (mode 0600, and `locks/` if
    /// needed) if missing. An existing one is opened without touching its directory (in a
    /// container it is a file bind-mounted on its own).
    pub fn open_locks(&self, t: &TenantName) -> Result<LockFile, LedgerError> {
        let path = self.lock_path(t);
        if let Some(locks) = LockFile::open(&path, Access::ReadWrite)? {
            return Ok(locks);
        }
        files::ensure_dir(&self.locks)?;
        LockFile::create(&self.locks, &path)?;
        LockFile::open(&path, Access::ReadWrite)?
            .ok_or_else(|| LedgerError::io(&path, "open", io::Error::from(io::ErrorKind::NotFound)))
    }

    /// Opens the tenant's lock file read-write if it exists; `None` if it does not.
    pub fn open_existing_locks(&self, t: &TenantName) -> Result<Option<LockFile>, LedgerError> {
        LockFile::open(&self.lock_path(t), Access::ReadWrite)
    }

    /// How many of the tenant's processes hold a slot: asked of its lock file alone, so that
    /// a tenant that damaged its own usage file (which it can write) is not kept forever by
    /// it. 0 without a lock file (nobody can hold a slot then).
    pub fn live_processes(&self, t: &TenantName) -> Result<usize, LedgerError> {
        match LockFile::open_for_probing(&self.lock_path(t)) {
            Some(locks) => Ok(locks.locked_slots()?.len()),
            None if !self.lock_path(t).exists() => Ok(0),
            None => Err(LedgerError::io(
                &self.lock_path(t),
                "open",
                io::Error::from(io::ErrorKind::PermissionDenied),
            )),
        }
    }

    /// The tenant's lock file for asking who holds its locks, where this process may open it
    /// (read-only is enough to ask); `None` where it is missing or this process may not.
    fn probe_locks(&self, t: &TenantName) -> Option<LockFile> {
        LockFile::open_for_probing(&self.lock_path(t))
    }

    /// Creates or updates the tenant's quota file (the creator's side).
    ///
    /// The first write builds the whole file under a temporary name and then links it into
    /// place, so no reader ever sees a half-written file. Later writes store the new values in
    /// place, atomically, and bump the generation, so tenants that have the file mapped see
    /// the change at once. Refuses more than [`MAX_GPUS`](crate::MAX_GPUS) per-GPU entries,
    /// the same GPU twice, and permille values outside 1..=1000.
    ///
    /// Writers serialize on the tenant's lock file, which is created (mode 0600) if missing.
    pub fn write_quota(&self, t: &TenantName, q: &TenantQuota) -> Result<(), LedgerError> {
        let locks = self.open_locks(t)?;
        quota::write_quota(&self.tenant_dir(t), &self.quota_path(t), &locks, q)
    }

    /// Opens the tenant's quota file; `None` when the tenant has none.
    pub fn read_quota(&self, t: &TenantName) -> Result<Option<QuotaFile>, LedgerError> {
        QuotaFile::open(&self.quota_path(t), self.probe_locks(t))
    }

    /// Opens the tenant's usage file read-write, with its lock file, creating either if
    /// missing (the lock file first, see [`Ledger::open_locks`]).
    ///
    /// An existing file is opened without touching its directory (which may be a read-only
    /// mount with only the file bind-mounted writable). A missing one is built under a
    /// temporary name and hard-linked into place, which never replaces a file another process
    /// created first. Creates `tenants/<t>/` if needed.
    pub fn open_usage(&self, t: &TenantName) -> Result<Arc<UsageFile>, LedgerError> {
        let path = self.usage_path(t);
        let locks = self.open_locks(t)?;
        if !path.exists() {
            let dir = self.tenant_dir(t);
            files::ensure_dir(&dir)?;
            UsageFile::create(&dir, &path)?;
        }
        UsageFile::open(&path, locks)?
            .map(Arc::new)
            .ok_or_else(|| LedgerError::io(&path, "open", io::Error::from(io::ErrorKind::NotFound)))
    }

    /// A point-in-time copy of the tenant's usage file, read with `pread` (no mapping), for
    /// observers: a tenant truncating its own file can never crash an observer with SIGBUS;
    /// the observer gets an error instead. Whether each slot is live is asked of the
    /// tenant's lock file, where this process may open it (else every slot reads as live).
    pub fn snapshot_usage(&self, t: &TenantName) -> Result<UsageSnapshot, LedgerError> {
        UsageSnapshot::read(&self.usage_path(t), self.probe_locks(t).as_ref())
    }

    /// A reader of `t`'s usage file that copies it anew on each read without opening it
    /// again; `None` if the tenant has no usage file.
    pub fn usage_reader(&self, t: &TenantName) -> Result<Option<UsageReader>, LedgerError> {
        UsageReader::open(&self.usage_path(t))
    }

    /// The tenants, sorted by name. Entries of `tenants/` that are not directories with valid
    /// tenant names are skipped.
    pub fn tenants(&self) -> Result<Vec<TenantName>, LedgerError> {
        let entries =
            fs::read_dir(&self.tenants).map_err(|e| LedgerError::io(&self.tenants, "list", e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LedgerError::io(&self.tenants, "list", e))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let name = entry.file_name();
            if let (true, Some(Ok(t))) = (is_dir, name.to_str().map(TenantName::new)) {
                out.push(t);
            }
        }
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(out)
    }

    /// Cuts tenant `t`'s usage and lock files back to their sizes where they grew, and
    /// returns each file cut with the size it had grown to. A tenant's containers can write
    /// both (they are mounted read-write), and one that makes them grow fills the filesystem
    /// every tenant's files are on; whoever made the tenant calls this now and then. What is
    /// past the size is nothing gpuslice reads (and locks on bytes past the end are kept).
    /// A file that is missing or not a regular file is left alone.
    pub fn cut_back_grown_files(&self, t: &TenantName) -> Result<Vec<(PathBuf, u64)>, LedgerError> {
        let mut cut = Vec::new();
        for (path, size) in [
            (self.usage_path(t), crate::layout::USAGE_FILE_SIZE as u64),
            (self.lock_path(t), crate::layout::LOCK_FILE_SIZE as u64),
        ] {
            let Some(file) = files::open_existing(&path, Access::ReadWrite)? else {
                continue;
            };
            let meta = file
                .metadata()
                .map_err(|e| LedgerError::io(&path, "inspect", e))?;
            if !meta.file_type().is_file() || meta.len() <= size {
                continue;
            }
            file.set_len(size)
                .map_err(|e| LedgerError::io(&path, "cut back", e))?;
            cut.push((path, meta.len()));
        }
        Ok(cut)
    }

    /// Removes the tenant's directory and everything in it, then its lock file. Processes
    /// that still have its files open keep their (now nameless) copies. Removing a tenant
    /// that does not exist is not an error.
    pub fn remove_tenant(&self, t: &TenantName) -> Result<(), LedgerError> {
        let dir = self.tenant_dir(t);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LedgerError::io(&dir, "remove", e)),
        }
        let lock = self.lock_path(t);
        match fs::remove_file(&lock) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LedgerError::io(&lock, "remove", e)),
        }
    }
}
