//! Virtual memory management (`cuMemCreate`, `cuMemAddressReserve`, `cuMemMap`, ...), as
//! PyTorch's expandable segments, JAX and NCCL use it.
//!
//! Physical memory is a memfd of the requested size, charged to its device while anything
//! refers to it, as the driver does: its handle, until released as often as it was taken
//! (`cuMemCreate` and each `cuMemRetainAllocationHandle` give one reference), and every range
//! it is mapped into, until unmapped. Address ranges are `PROT_NONE` reservations; `cuMemMap`
//! places the memfd into a reservation with `MAP_FIXED | MAP_SHARED` (still inaccessible), and
//! `cuMemSetAccess` makes it readable and writable.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::{Charge, Device};
use crate::error::{CuError, CuResult};
use crate::handles;
use crate::mapping::{self, Access, Mapping};

/// Allocation granularity (minimum and recommended): 2 MiB, as on an H100.
pub const GRANULARITY: usize = 2 << 20;

/// Physical memory made by `cuMemCreate`; its charge goes with the last reference to it.
#[derive(Debug)]
struct Physical {
    fd: OwnedFd,
    size: usize,
    /// The handle value that names it, for as long as it lives.
    handle: usize,
    _charge: Charge,
}

/// A handle's references to its physical memory.
#[derive(Debug)]
struct HandleReferences {
    physical: Arc<Physical>,
    count: u32,
}

#[derive(Debug)]
struct MappedRange {
    len: usize,
    access: Access,
    physical: Arc<Physical>,
}

#[derive(Debug)]
struct Reservation {
    range: Mapping,
    mapped: BTreeMap<usize, MappedRange>,
}

/// Handles not yet released as often as they were taken. Locked after `RESERVATIONS` when
/// both are.
static HANDLES: Mutex<BTreeMap<usize, HandleReferences>> = Mutex::new(BTreeMap::new());
static RESERVATIONS: Mutex<BTreeMap<usize, Reservation>> = Mutex::new(BTreeMap::new());

/// `cuMemCreate`: `size` bytes (a multiple of the granularity) of device memory.
pub fn create(device: &'static Device, size: usize) -> CuResult<u64> {
    if size == 0 || !size.is_multiple_of(GRANULARITY) {
        return Err(CuError::InvalidValue);
    }
    let charge = device.reserve(size as u64)?;
    // The system call, not glibc's wrapper, which glibc has only from 2.27: the simulated
    // GPU is also built against the shim's glibc baseline (2.17) to test old images.
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new fd or -1.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            c"fakecuda-vmm".as_ptr(),
            libc::MFD_CLOEXEC,
        )
    };
    let Ok(raw) = i32::try_from(raw) else {
        return Err(CuError::OperatingSystem);
    };
    if raw < 0 {
        return Err(CuError::OperatingSystem);
    }
    // SAFETY: raw is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let file = File::from(fd);
    file.set_len(size as u64)
        .map_err(|_| CuError::OperatingSystem)?;
    let handle = handles::fresh();
    let physical = Arc::new(Physical {
        fd: file.into(),
        size,
        handle,
        _charge: charge,
    });
    HANDLES
        .lock()
        .insert(handle, HandleReferences { physical, count: 1 });
    Ok(handle as u64)
}

fn physical(handle: u64) -> CuResult<Arc<Physical>> {
    let handle = usize::try_from(handle).map_err(|_| CuError::InvalidHandle)?;
    HANDLES
        .lock()
        .get(&handle)
        .map(|references| Arc::clone(&references.physical))
        .ok_or(CuError::InvalidHandle)
}

/// `cuMemRelease`: one reference of the handle goes; the memory goes back to the device once
/// the handle has none left and nothing maps the memory.
pub fn release(handle: u64) -> CuResult {
    let handle = usize::try_from(handle).map_err(|_| CuError::InvalidHandle)?;
    let mut handles = HANDLES.lock();
    let references = handles.get_mut(&handle).ok_or(CuError::InvalidHandle)?;
    references.count -= 1;
    let last = (references.count == 0).then(|| handles.remove(&handle));
    drop(handles);
    // The memory's charge (if this was its last reference) goes with it, outside the lock.
    drop(last);
    Ok(())
}

/// `cuMemRetainAllocationHandle`: the handle of the memory mapped at `ptr` (any address
/// inside a mapping), with one more reference.
pub fn retain(ptr: usize) -> CuResult<u64> {
    let reservations = RESERVATIONS.lock();
    let physical = reservations
        .range(..=ptr)
        .next_back()
        .filter(|(_, r)| r.range.contains(ptr, 1))
        .and_then(|(_, r)| r.mapped.range(..=ptr).next_back())
        .filter(|(start, m)| **start + m.len > ptr)
        .map(|(_, m)| Arc::clone(&m.physical))
        .ok_or(CuError::InvalidValue)?;
    let handle = physical.handle;
    HANDLES
        .lock()
        .entry(handle)
        .and_modify(|references| references.count += 1)
        .or_insert(HandleReferences { physical, count: 1 });
    Ok(handle as u64)
}

/// `cuMemAddressReserve`: an inaccessible range of `size` bytes.
pub fn reserve(size: usize, alignment: usize) -> CuResult<usize> {
    if size == 0
        || !size.is_multiple_of(GRANULARITY)
        || (alignment != 0 && !alignment.is_power_of_two())
    {
        return Err(CuError::InvalidValue);
    }
    let range =
        Mapping::reserve(size, alignment.max(GRANULARITY)).map_err(|_| CuError::OutOfMemory)?;
    let start = range.addr();
    RESERVATIONS.lock().insert(
        start,
        Reservation {
            range,
            mapped: BTreeMap::new(),
        },
    );
    Ok(start)
}

/// `cuMemAddressFree`: gives back a whole reservation; what is still mapped in it is unmapped
/// with it.
pub fn free(ptr: usize, size: usize) -> CuResult {
    let mut reservations = RESERVATIONS.lock();
    match reservations.get(&ptr) {
        Some(r) if r.range.len() == size => {
            reservations.remove(&ptr);
            Ok(())
        }
        _ => Err(CuError::InvalidValue),
    }
}

fn with_reservation<T>(
    ptr: usize,
    size: usize,
    f: impl FnOnce(&mut Reservation) -> CuResult<T>,
) -> CuResult<T> {
    let mut reservations = RESERVATIONS.lock();
    let (_, reservation) = reservations
        .range_mut(..=ptr)
        .next_back()
        .ok_or(CuError::InvalidValue)?;
    if size == 0 || !reservation.range.contains(ptr, size) {
        return Err(CuError::InvalidValue);
    }
    f(reservation)
}

fn overlaps(r: &Reservation, ptr: usize, size: usize) -> bool {
    r.mapped
        .range(..ptr + size)
        .next_back()
        .is_some_and(|(&start, m)| start + m.len > ptr)
}

/// `cuMemMap`: places the first `size` bytes of `handle` at `ptr`, inaccessible until
/// `cuMemSetAccess`. The offset into the memory must be 0 (as the driver's "currently must
/// be zero").
pub fn map(ptr: usize, size: usize, offset: usize, handle: u64) -> CuResult {
    let physical = physical(handle)?;
    if offset != 0
        || size > physical.size
        || !ptr.is_multiple_of(GRANULARITY)
        || !size.is_multiple_of(GRANULARITY)
    {
        return Err(CuError::InvalidValue);
    }
    with_reservation(ptr, size, |r| {
        if overlaps(r, ptr, size) {
            return Err(CuError::InvalidValue);
        }
        // SAFETY: [ptr, ptr + size) is inside reservation r, owned by this module, and no
        // mapping occupies it.
        unsafe { mapping::map_fixed_shared(ptr, size, physical.fd.as_fd(), 0, Access::None) }
            .map_err(|_| CuError::OperatingSystem)?;
        r.mapped.insert(
            ptr,
            MappedRange {
                len: size,
                access: Access::None,
                physical: Arc::clone(&physical),
            },
        );
        Ok(())
    })
}

/// `cuMemUnmap`: unmaps every mapping in `[ptr, ptr + size)`, which may span several. Part
/// of a mapping cannot be unmapped: a range that cuts one, or holds none, is refused and
/// nothing changes.
pub fn unmap(ptr: usize, size: usize) -> CuResult {
    with_reservation(ptr, size, |r| {
        let end = ptr + size;
        let cut_at_start = r
            .mapped
            .range(..ptr)
            .next_back()
            .is_some_and(|(&start, m)| start + m.len > ptr);
        let inside: Vec<(usize, usize)> = r
            .mapped
            .range(ptr..end)
            .map(|(&start, m)| (start, start + m.len))
            .collect();
        if cut_at_start || inside.is_empty() || inside.iter().any(|&(_, to)| to > end) {
            return Err(CuError::InvalidValue);
        }
        // SAFETY: the range is inside reservation r, owned by this module.
        unsafe { mapping::map_fixed_none(ptr, size) }.map_err(|_| CuError::OperatingSystem)?;
        for (start, _) in inside {
            r.mapped.remove(&start);
        }
        Ok(())
    })
}

/// `cuMemSetAccess`: sets the protection of mapped memory in `[ptr, ptr + size)`.
pub fn set_access(ptr: usize, size: usize, access: Access) -> CuResult {
    with_reservation(ptr, size, |r| {
        if !covered(r, ptr, size, |_| true) {
            return Err(CuError::InvalidValue);
        }
        // SAFETY: the whole range is mapped memory of reservation r, owned by this module.
        unsafe { mapping::protect(ptr, size, access) }.map_err(|_| CuError::OperatingSystem)?;
        for (_, m) in r.mapped.range_mut(ptr..ptr + size) {
            m.access = access;
        }
        Ok(())
    })
}

/// Whether `[ptr, ptr + len)` is contiguous mapped memory of reservation `r` whose mappings
/// all satisfy `ok`.
fn covered(r: &Reservation, ptr: usize, len: usize, ok: impl Fn(&MappedRange) -> bool) -> bool {
    let end = ptr + len;
    let mut at = ptr;
    let Some((&first, _)) = r.mapped.range(..=ptr).next_back() else {
        return false;
    };
    for (&start, m) in r.mapped.range(first..end) {
        if start > at || !ok(m) {
            return false;
        }
        at = at.max(start + m.len);
        if at >= end {
            return true;
        }
    }
    false
}

/// Whether `[ptr, ptr + len)` is mapped, readable and writable VMM memory.
pub fn is_accessible(ptr: usize, len: usize) -> bool {
    let reservations = RESERVATIONS.lock();
    reservations
        .range(..=ptr)
        .next_back()
        .is_some_and(|(_, r)| {
            r.range.contains(ptr, len) && covered(r, ptr, len, |m| m.access == Access::ReadWrite)
        })
}
