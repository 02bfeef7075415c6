//! One-byte open-file-description locks (`F_OFD_SETLK`), the primitive every lock of the
//! ledger is made of, for other code that proves processes alive through a file of its own
//! (the simulated GPU's per-device state files).
//!
//! An OFD lock belongs to the open file description, not to the process: two `open`s of one
//! file in one process conflict like two processes, a `fork` shares the parent's locks, and
//! the kernel drops them when the last descriptor of the description closes, in particular
//! when the process dies, in any PID namespace. A lock needs no byte behind it.

use std::io;
use std::os::fd::BorrowedFd;

use crate::locks::LockKind;
use crate::sys;

/// Takes a lock of `kind` on `byte` of `fd`'s file if no other open file description holds
/// a conflicting one: `Ok(false)` if one does. Taking a lock of the other kind on a byte this
/// description already locks converts it.
pub fn try_lock(fd: BorrowedFd<'_>, byte: u64, kind: LockKind) -> io::Result<bool> {
    sys::ofd_try_lock(fd, byte, kind.into())
}

/// Takes a lock of `kind` on `byte` of `fd`'s file, waiting for it (through signals).
pub fn lock_wait(fd: BorrowedFd<'_>, byte: u64, kind: LockKind) -> io::Result<()> {
    sys::ofd_lock_wait(fd, byte, kind.into())
}

/// Drops this description's lock on `byte` (nothing if it holds none).
pub fn unlock(fd: BorrowedFd<'_>, byte: u64) -> io::Result<()> {
    sys::ofd_unlock(fd, byte)
}

/// Whether an open file description other than `fd`'s holds a lock of either kind on
/// `byte`.
pub fn is_locked(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    sys::ofd_is_locked(fd, byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn two_descriptions_of_one_file_conflict_and_an_unlock_frees_the_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let (file, other) = (open(), open());
        let (a, b) = (file.as_fd(), other.as_fd());
        assert!(try_lock(a, 7, LockKind::Exclusive).unwrap());
        assert!(is_locked(b, 7).unwrap());
        assert!(
            !is_locked(a, 7).unwrap(),
            "a description's own lock is not another's"
        );
        assert!(!try_lock(b, 7, LockKind::Shared).unwrap());
        assert!(try_lock(b, 8, LockKind::Shared).unwrap(), "bytes are apart");
        unlock(a, 7).unwrap();
        assert!(try_lock(b, 7, LockKind::Exclusive).unwrap());
        drop(other);
        lock_wait(a, 7, LockKind::Exclusive).unwrap();
    }
}
