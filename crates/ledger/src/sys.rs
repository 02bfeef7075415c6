//! The unsafe edge: shared memory mappings and open-file-description locks.
//!
//! Everything else in the crate is safe code over the two owning types here:
//! [`View`], a mapping of a whole ledger file that hands out a shared reference to its
//! all-atomic layout, and the `ofd_*` lock functions.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use crate::layout::{LockLayout, QuotaLayout, UsageLayout};

/// A layout that may be viewed through a shared mapping of a file.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]`, contain only atomic integers (directly or in arrays
/// and nested structs of the same kind), and have no padding. Then every bit pattern is a
/// valid value, any process may change any byte at any time without a data race (all
/// accesses are atomic), and an alignment of at most 8 is met by a page-aligned mapping.
pub(crate) unsafe trait SharedLayout: Sized {}

// SAFETY: QuotaLayout is #[repr(C)], made only of AtomicU64/AtomicU32 fields and arrays of
// them, laid out without padding (its size is checked against the documented layout in the
// `layout` tests).
unsafe impl SharedLayout for QuotaLayout {}
// SAFETY: as for QuotaLayout: #[repr(C)], atomics only, no padding (tests check the size).
unsafe impl SharedLayout for UsageLayout {}
// SAFETY: as for QuotaLayout: #[repr(C)], one Header (atomics only, no padding).
unsafe impl SharedLayout for LockLayout {}

/// A `MAP_SHARED` mapping of the first `size_of::<T>()` bytes of a file, viewed as `T`.
///
/// The mapping lives exactly as long as the `View`; the only access to it is the shared
/// reference [`View::get`] returns, whose lifetime is tied to the `View`.
pub(crate) struct View<T: SharedLayout> {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    _layout: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory, not tied to a thread; T is all atomics, so
// references to it may be used from any thread (the same reasoning that makes atomics Sync).
unsafe impl<T: SharedLayout> Send for View<T> {}
// SAFETY: see Send: concurrent access through &T only performs atomic operations.
unsafe impl<T: SharedLayout> Sync for View<T> {}

impl<T: SharedLayout> View<T> {
    /// Maps the first `size_of::<T>()` bytes of `fd`, read-write when `writable` (the fd must
    /// then be open for reading and writing), read-only otherwise.
    ///
    /// The caller must have checked that the file is at least that long: touching a page past
    /// the end of a file raises SIGBUS. A file that another process truncates later can still
    /// do that, which is why observers of other tenants read with `pread` instead.
    pub(crate) fn map(fd: BorrowedFd<'_>, writable: bool) -> io::Result<View<T>> {
        let len = size_of::<T>();
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses cannot alias any Rust
        // object; `fd` is a valid open descriptor for the duration of the call (BorrowedFd).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "mmap returned a null mapping")
        })?;
        Ok(View {
            ptr,
            len,
            writable,
            _layout: PhantomData,
        })
    }

    /// The mapped file as its layout.
    ///
    /// A read-only view's atomics must only be loaded: a store would fault. The types that
    /// hold read-only views (`QuotaFile`) only ever load.
    pub(crate) fn get(&self) -> &T {
        // SAFETY: `ptr` is the start of a live mapping of `len == size_of::<T>()` bytes that
        // stays mapped until `self` is dropped, which the returned lifetime forbids while the
        // reference is in use. mmap returns page-aligned addresses, which satisfies T's
        // alignment (8). T: SharedLayout means every bit pattern is valid and all access is
        // atomic, so other processes writing the same bytes concurrently is not a data race.
        unsafe { self.ptr.cast::<T>().as_ref() }
    }
}

impl<T: SharedLayout> Drop for View<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping made in `map` and not yet unmapped; no
        // reference from `get` outlives `self`, so nothing can touch the pages afterwards.
        // A failure (impossible for a valid range) would leave the pages mapped, nothing worse.
        let _ = unsafe { libc::munmap(self.ptr.as_ptr().cast::<libc::c_void>(), self.len) };
    }
}

impl<T: SharedLayout> fmt::Debug for View<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

/// Gives `fd`'s file its first `len` bytes for real (`posix_fallocate`): a ledger file is
/// written through a shared mapping, and a page of a sparse file that the filesystem cannot
/// then find room for (a tmpfs another tenant filled) would raise SIGBUS in whoever touched
/// it. Allocated here, that is an error now instead.
pub(crate) fn allocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file length out of range"))?;
    // SAFETY: posix_fallocate only acts on the open descriptor, which outlives the call.
    match unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

/// Builds the `struct flock` for one byte. OFD locks require `l_pid == 0`.
fn one_byte(kind: libc::c_int, byte: u64) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(byte)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "lock offset out of range"))?;
    let l_type = libc::c_short::try_from(kind)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad lock type"))?;
    let whence = libc::c_short::try_from(libc::SEEK_SET)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad whence"))?;
    Ok(libc::flock {
        l_type,
        l_whence: whence,
        l_start: start,
        l_len: 1,
        l_pid: 0,
    })
}

/// One `fcntl` lock command on `fl`.
fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `fd` is open for the duration of the call; the OFD lock commands read and (for
    // F_OFD_GETLK) write one `struct flock`, and `fl` is a valid, exclusively borrowed one.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, std::ptr::from_mut(fl)) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The two kinds of OFD lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum LockType {
    /// `F_RDLCK`: needs a descriptor open for reading.
    Read,
    /// `F_WRLCK`: needs a descriptor open for writing.
    Write,
}

impl LockType {
    fn raw(self) -> libc::c_int {
        match self {
            LockType::Read => libc::F_RDLCK,
            LockType::Write => libc::F_WRLCK,
        }
    }
}

/// Tries to take an OFD lock of `kind` on `byte` without waiting. `Ok(false)`: another open
/// file description (in any process) holds a conflicting lock on it.
pub(crate) fn ofd_try_lock(fd: BorrowedFd<'_>, byte: u64, kind: LockType) -> io::Result<bool> {
    let mut fl = one_byte(kind.raw(), byte)?;
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an OFD lock of `kind` on `byte`, waiting for it.
pub(crate) fn ofd_lock_wait(fd: BorrowedFd<'_>, byte: u64, kind: LockType) -> io::Result<()> {
    let mut fl = one_byte(kind.raw(), byte)?;
    loop {
        match fcntl_lock(fd, libc::F_OFD_SETLKW, &mut fl) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Drops this open file description's lock on `byte` (no-op if it holds none).
pub(crate) fn ofd_unlock(fd: BorrowedFd<'_>, byte: u64) -> io::Result<()> {
    let mut fl = one_byte(libc::F_UNLCK, byte)?;
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// A byte at or after `start` (and before `start + len`) on which an open file description
/// other than `fd`'s holds a lock of either kind (the first of the lock the kernel names,
/// which need not be the lowest); `None` if there is none. For one-byte locks, which are all
/// the ledger takes.
pub(crate) fn ofd_first_locked(
    fd: BorrowedFd<'_>,
    start: u64,
    len: u64,
) -> io::Result<Option<u64>> {
    let mut fl = one_byte(libc::F_WRLCK, start)?;
    fl.l_len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "lock range out of range"))?;
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    if libc::c_int::from(fl.l_type) == libc::F_UNLCK {
        return Ok(None);
    }
    // A lock that began before `start` still covers it.
    Ok(Some(u64::try_from(fl.l_start).unwrap_or(0).max(start)))
}

/// Whether an open file description other than `fd`'s holds a lock (of either kind) on
/// `byte`.
pub(crate) fn ofd_is_locked(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    let mut fl = one_byte(libc::F_WRLCK, byte)?;
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(libc::c_int::from(fl.l_type) != libc::F_UNLCK)
}
