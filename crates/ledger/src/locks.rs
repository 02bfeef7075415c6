//! A tenant's lock file, `<dir>/locks/<tenant>`: the one file whose OFD locks prove a
//! process alive and guard the tenant's updates.
//!
//! Every other ledger file can be opened for reading by every tenant (the ledger's
//! `tenants/` directory is mounted read-only into every container, since tenants read each
//! other's usage to share the GPU), and a read-only descriptor is enough to take a read lock.
//! A lock on a byte of a file others can open is therefore a lock others can block or fake:
//! a read lock held on a dead process's slot byte made it look alive, and one on the GPU
//! table's byte hung a tenant's first CUDA call. The lock file is not in that directory: it
//! is created by whoever creates the tenant with mode 0600 (the device plugin opens it to
//! the container's users and bind-mounts it into the tenant's containers alone), so only the
//! tenant's own processes and its creator can open it, and nobody else can take part in any
//! of its locks. It holds a 64-byte header and nothing else; the locks are on the byte ranges
//! listed in [`lock_bytes`](crate::layout::lock_bytes).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use crate::MAX_SLOTS;
use crate::error::LedgerError;
use crate::files::{self, Access, TempFile};
use crate::layout::{LOCK_FILE_SIZE, LOCK_GEOMETRY, LockLayout, slot_lock_byte};
use crate::sys::{self, View};

/// Mode of a lock file as the ledger creates it: the creator's processes only. A creator
/// whose tenant runs as other users (the device plugin) opens it up and keeps it out of
/// everyone else's reach by where it mounts it.
pub(crate) const LOCK_FILE_MODE: u32 = 0o600;

/// Shared or exclusive.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockKind {
    /// A read lock: many holders at once.
    Shared,
    /// A write lock: one holder, and no shared ones.
    Exclusive,
}

/// A tenant's lock file, open read-write and validated.
///
/// The description this value holds never takes a lock: locks that must not be shared with
/// anything else (a process slot, a registration, a probe) each get a description of their
/// own ([`LockFile::handle`]), since OFD locks belong to the description.
pub struct LockFile {
    path: PathBuf,
    file: File,
    /// (device, inode): new descriptions must reach the same file.
    identity: (u64, u64),
}

impl fmt::Debug for LockFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockFile")
            .field("path", &self.path)
            .field("fd", &self.file.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl LockFile {
    /// Opens and validates the lock file at `path`; `None` if there is none.
    pub(crate) fn open(path: &Path, access: Access) -> Result<Option<LockFile>, LedgerError> {
        let Some(file) = files::open_existing(path, access)? else {
            return Ok(None);
        };
        let meta = files::validate(&file, path, &LOCK_GEOMETRY)?;
        Ok(Some(LockFile {
            path: path.to_path_buf(),
            file,
            identity: files::identity(&meta),
        }))
    }

    /// Opens the lock file at `path` only to ask who holds its locks: read-only, and without
    /// checking its header, since the answer is about the file, not its bytes (a tenant can
    /// write its own lock file, and garbage there must not make its dead processes look
    /// alive to the host forever). `None` if it is missing, not a regular file, or cannot be
    /// opened by this process.
    pub(crate) fn open_for_probing(path: &Path) -> Option<LockFile> {
        let file = files::open_existing(path, Access::ReadOnly).ok()??;
        let meta = file.metadata().ok()?;
        meta.file_type().is_file().then(|| LockFile {
            path: path.to_path_buf(),
            file,
            identity: files::identity(&meta),
        })
    }

    /// Creates an empty lock file at `path` in directory `dir` (mode 0600), unless one
    /// appears there first (then that one is kept).
    pub(crate) fn create(dir: &Path, path: &Path) -> Result<(), LedgerError> {
        let temp = TempFile::create(dir, "lock", LOCK_FILE_SIZE as u64, LOCK_FILE_MODE)?;
        {
            let view = View::<LockLayout>::map(temp.file.as_fd(), true)
                .map_err(|e| LedgerError::io(&temp.path, "map", e))?;
            LOCK_GEOMETRY.init_header(&view.get().header);
        }
        temp.publish_no_clobber(path)?;
        Ok(())
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file at this lock file's path is still the one it opened (a tenant that
    /// was removed and created again has a new one, and locks on the old one guard nothing).
    pub fn is_still_at_its_path(&self) -> Result<bool, LedgerError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => Ok(files::identity(&meta) == self.identity),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(LedgerError::io(&self.path, "inspect", e)),
        }
    }

    /// A new open file description of this same file, whose locks are its own.
    pub fn handle(&self) -> Result<LockHandle, LedgerError> {
        self.new_description("lock").map(|file| LockHandle {
            path: self.path.clone(),
            file,
        })
    }

    /// A new description, as a plain file (for [`ProcessSlot`](crate::ProcessSlot)s).
    pub(crate) fn new_description(&self, action: &'static str) -> Result<File, LedgerError> {
        // Through /proc the new description reaches our inode even if the path was replaced.
        let via_proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&via_proc)
        {
            Ok(f) => f,
            Err(_) => files::open_existing(&self.path, Access::ReadWrite)?.ok_or_else(|| {
                LedgerError::io(&self.path, action, io::Error::from(io::ErrorKind::NotFound))
            })?,
        };
        let meta = file
            .metadata()
            .map_err(|e| LedgerError::io(&self.path, "inspect", e))?;
        if files::identity(&meta) != self.identity {
            return Err(LedgerError::Replaced {
                path: self.path.clone(),
            });
        }
        Ok(file)
    }

    /// The process slots whose lock some process holds: the tenant's live processes, asked
    /// of this file alone (whatever the usage file holds). An error from the kernel is an
    /// error: never call a process dead on a guess.
    pub fn locked_slots(&self) -> Result<Vec<u32>, LedgerError> {
        let first = slot_lock_byte(0);
        let end = slot_lock_byte(u32::try_from(MAX_SLOTS).unwrap_or(u32::MAX));
        let mut live = Vec::new();
        // The kernel names one lock in a range, not necessarily the lowest: split the range
        // at each lock found and ask again on both sides.
        let mut ranges = vec![(first, end)];
        while let Some((from, to)) = ranges.pop() {
            if from >= to {
                continue;
            }
            let found = sys::ofd_first_locked(self.file.as_fd(), from, to - from)
                .map_err(|e| LedgerError::io(&self.path, "ask who holds the locks of", e))?;
            if let Some(byte) = found.filter(|b| (from..to).contains(b)) {
                live.push(u32::try_from(byte - first).unwrap_or(u32::MAX));
                ranges.push((from, byte));
                ranges.push((byte + 1, to));
            }
        }
        live.sort_unstable();
        Ok(live)
    }

    /// Whether some description (other than this value's own, which never locks) holds a
    /// lock on `byte`. An error from the kernel reads as "locked": never call a process
    /// dead, or a writer gone, on a guess.
    pub(crate) fn is_locked(&self, byte: u64) -> bool {
        sys::ofd_is_locked(self.file.as_fd(), byte).unwrap_or(true)
    }
}

/// An open file description of a lock file, with the locks it holds. Closing it (dropping
/// it, or the process dying) drops them.
pub struct LockHandle {
    path: PathBuf,
    file: File,
}

impl fmt::Debug for LockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockHandle")
            .field("path", &self.path)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl LockHandle {
    /// Takes a lock on `byte`, waiting for it. Only the tenant's own processes and its
    /// creator can hold locks here, so the wait is on them alone. Taking a lock of the other
    /// kind on a byte this handle already locks converts it.
    pub fn lock_wait(&self, byte: u64, kind: LockKind) -> Result<(), LedgerError> {
        sys::ofd_lock_wait(self.file.as_fd(), byte, kind.into())
            .map_err(|e| LedgerError::io(&self.path, "lock", e))
    }

    /// Takes a lock on `byte`, waiting at most `limit` for it: `false` if it is still held
    /// then. For locks that only the tenant's own processes should hold for microseconds,
    /// where a longer hold means something is wrong (a lock file another tenant can reach
    /// through an old mount), and a wait without end would hang a program's CUDA call.
    pub fn lock_within(
        &self,
        byte: u64,
        kind: LockKind,
        limit: std::time::Duration,
    ) -> Result<bool, LedgerError> {
        let started = std::time::Instant::now();
        loop {
            if self.try_lock(byte, kind)? {
                return Ok(true);
            }
            if started.elapsed() >= limit {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Takes a lock on `byte` if nobody else holds a conflicting one; `false` if somebody
    /// does.
    pub fn try_lock(&self, byte: u64, kind: LockKind) -> Result<bool, LedgerError> {
        sys::ofd_try_lock(self.file.as_fd(), byte, kind.into())
            .map_err(|e| LedgerError::io(&self.path, "lock", e))
    }

    /// Drops this handle's lock on `byte` (nothing if it holds none).
    pub fn unlock(&self, byte: u64) -> Result<(), LedgerError> {
        sys::ofd_unlock(self.file.as_fd(), byte)
            .map_err(|e| LedgerError::io(&self.path, "unlock", e))
    }
}

impl From<LockKind> for sys::LockType {
    fn from(kind: LockKind) -> sys::LockType {
        match kind {
            LockKind::Shared => sys::LockType::Read,
            LockKind::Exclusive => sys::LockType::Write,
        }
    }
}
