//! Owned memory mappings: the backing of simulated device memory and of the shared state
//! files. This and `ledger.rs` are the only places that call mmap.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::sync::OnceLock;

/// Memory protection of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No access (an address reservation, or VMM memory before `cuMemSetAccess`).
    None,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

impl Access {
    fn prot(self) -> libc::c_int {
        match self {
            Access::None => libc::PROT_NONE,
            Access::Read => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// A mapping this process owns; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

/// The system page size.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .unwrap_or(4096)
    })
}

/// `n` rounded up to a multiple of `to` (a power of two), or `None` on overflow.
pub fn round_up(n: usize, to: usize) -> Option<usize> {
    debug_assert!(to.is_power_of_two());
    Some(n.checked_add(to - 1)? & !(to - 1))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Mapping {
    /// Private anonymous read-write memory that costs nothing until touched (`MAP_NORESERVE`):
    /// the backing of device allocations. The length is rounded up to whole pages.
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        Self::map(
            len,
            Access::ReadWrite,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            None,
        )
    }

    /// A read-write shared mapping of the first `len` bytes of a file.
    pub fn shared_file(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        Self::map(len, Access::ReadWrite, libc::MAP_SHARED, Some(fd))
    }

    /// An inaccessible address range of `len` bytes aligned to `align` (a power of two): a VMM
    /// address reservation, into which `map_fixed_shared` places physical memory.
    pub fn reserve(len: usize, align: usize) -> io::Result<Mapping> {
        let align = align.max(page_size());
        let padded = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let whole = Self::map(
            padded,
            Access::None,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            None,
        )?;
        let start = round_up(whole.addr, align).expect("a mapped address rounds up in range");
        let len = round_up(len, page_size()).expect("len + align did not overflow");
        let (head, tail_start) = (start - whole.addr, start + len);
        let tail = whole.addr + whole.len - tail_start;
        std::mem::forget(whole);
        // SAFETY: [start - head, start) and [tail_start, tail_start + tail) are the unused ends
        // of the mapping made above, which nothing else refers to.
        unsafe {
            if head > 0 {
                libc::munmap((start - head) as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap(tail_start as *mut libc::c_void, tail);
            }
        }
        Ok(Mapping { addr: start, len })
    }

    fn map(
        len: usize,
        access: Access,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
    ) -> io::Result<Mapping> {
        let len = round_up(len.max(1), page_size())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let raw_fd = fd.map_or(-1, |fd| fd.as_raw_fd());
        // SAFETY: a fresh mapping at an address the kernel chooses touches no existing memory.
        let addr = unsafe { libc::mmap(ptr::null_mut(), len, access.prot(), flags, raw_fd, 0) };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: addr as usize,
            len,
        })
    }

    /// The start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// The length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mappings are at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[addr, addr + len)` lies inside this mapping.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by self and nothing refers to it after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Places a shared mapping of `fd` (from `offset`) over `[addr, addr + len)`.
///
/// # Safety
///
/// The range must lie inside a mapping owned by the caller (a reservation,
/// `Mapping::reserve`, or an allocation's backing being exported) that nothing else
/// currently uses.
pub unsafe fn map_fixed_shared(
    addr: usize,
    len: usize,
    fd: BorrowedFd<'_>,
    offset: u64,
    access: Access,
) -> io::Result<()> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the caller guarantees the range is its own reservation, so MAP_FIXED replaces
    // nothing that anyone else uses.
    let ret = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            access.prot(),
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            offset,
        )
    };
    if ret == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Turns `[addr, addr + len)` back into an inaccessible reservation.
///
/// # Safety
///
/// The range must lie inside a reservation owned by the caller.
pub unsafe fn map_fixed_none(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own reservation.
    let ret = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if ret == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Changes the protection of `[addr, addr + len)`.
///
/// # Safety
///
/// The range must be mapped memory owned by the caller that no one accesses in a way the
/// new protection forbids.
pub unsafe fn protect(addr: usize, len: usize, access: Access) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own.
    check(unsafe { libc::mprotect(addr as *mut libc::c_void, len, access.prot()) })
}

/// Zeroes whole pages of private anonymous memory by handing them back to the kernel, so
/// that a memset of 0 over a huge allocation touches nothing.
///
/// # Safety
///
/// `[addr, addr + len)` must be page aligned and lie inside a private anonymous mapping
/// (`Mapping::anonymous`) owned by the caller.
pub unsafe fn discard(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: for private anonymous memory MADV_DONTNEED only replaces the pages with zero
    // pages, which is what the caller asks for.
    check(unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_mappings_are_page_rounded_and_writable() {
        let m = Mapping::anonymous(10).unwrap();
        assert_eq!(m.len(), page_size());
        // SAFETY: the mapping is readable and writable and at least 10 bytes long.
        unsafe {
            ptr::write_bytes(m.addr() as *mut u8, 7, 10);
            assert_eq!(*(m.addr() as *const u8).add(9), 7);
            discard(m.addr(), m.len()).unwrap();
            assert_eq!(*(m.addr() as *const u8).add(9), 0);
        }
    }

    #[test]
    fn reservations_are_aligned() {
        let r = Mapping::reserve(3 << 20, 2 << 20).unwrap();
        assert_eq!(r.addr() % (2 << 20), 0);
        assert_eq!(r.len(), 3 << 20);
        assert!(r.contains(r.addr() + 100, 10));
        assert!(!r.contains(r.addr() + r.len() - 1, 2));
    }
}
