//! Device memory: allocations backed by private anonymous mappings whose addresses are the
//! device pointers (so that copies and memsets are plain memory operations), each holding a
//! charge on its device or a block of a memory pool; host ("pinned") allocations, which are
//! not charged; and arrays, which are charged but have no backing.

use std::collections::BTreeMap;
use std::ptr;
use std::sync::Arc;

use gpuslice_cuda_abi::CUipcMemHandle;
use parking_lot::{Condvar, Mutex};

use crate::context::Context;
use crate::device::Charge;
use crate::error::{CuError, CuResult};
use crate::handles::Table;
use crate::ipc;
use crate::mapping::{self, Mapping};
use crate::pool::{Block, Pool};
use crate::vmm;

/// Rows of a pitched allocation are aligned to this many bytes.
pub const PITCH_ALIGNMENT: usize = 512;

/// How an allocation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `cuMemAlloc`.
    Device,
    /// `cuMemAllocPitch`.
    Pitched,
    /// `cuMemAllocManaged`.
    Managed,
    /// `cuMemAllocAsync` / `cuMemAllocFromPoolAsync`, from the pool with this handle.
    Pool(usize),
}

#[derive(Debug)]
struct Allocation {
    mapping: Mapping,
    info: Info,
    _memory: Held,
    /// Its IPC export (`cuIpcGetMemHandle`), whose file goes with the allocation.
    export: Option<ipc::Export>,
}

/// The memory behind an allocation, given back when it is dropped: to the device, or to
/// the pool it came from.
#[derive(Debug)]
enum Held {
    Device { _charge: Charge },
    Pool { _block: Block },
}

/// What is known about the allocation containing a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Its start address.
    pub base: usize,
    /// Its size in bytes.
    pub size: usize,
    /// The device's CUDA ordinal.
    pub device: usize,
    /// The handle of the context it was made in.
    pub ctx: usize,
    /// How it was made.
    pub kind: Kind,
    /// Whether its backing is shared with other processes (exported through IPC), so
    /// that zeroing it must write zeros rather than drop pages.
    pub shared: bool,
}

static ALLOCATIONS: Mutex<BTreeMap<usize, Allocation>> = Mutex::new(BTreeMap::new());
static HOST: Mutex<BTreeMap<usize, Mapping>> = Mutex::new(BTreeMap::new());

/// Queued memsets and device-to-device copies, which `cuMemFree` waits for so that it never
/// unmaps memory a stream is about to touch.
static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static IN_FLIGHT_DONE: Condvar = Condvar::new();

/// A queued operation that touches device memory; counted until dropped.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    /// Counts a newly queued memory operation.
    pub fn begin() -> InFlight {
        *IN_FLIGHT.lock() += 1;
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut count = IN_FLIGHT.lock();
        *count -= 1;
        if *count == 0 {
            IN_FLIGHT_DONE.notify_all();
        }
    }
}

/// Waits until no queued memset or copy may touch device memory.
pub fn wait_for_memory_ops() {
    let mut count = IN_FLIGHT.lock();
    while *count > 0 {
        IN_FLIGHT_DONE.wait(&mut count);
    }
}

/// Allocates `bytes` of device memory in `ctx`, charged to its device.
pub fn allocate(ctx: &Context, bytes: usize, kind: Kind) -> CuResult<usize> {
    if bytes == 0 {
        return Err(CuError::InvalidValue);
    }
    let charge = ctx.device.reserve(bytes as u64)?;
    map(ctx, bytes, kind, Held::Device { _charge: charge })
}

/// Allocates `bytes` in `ctx` from the memory pool `pool` (whose handle is `handle`),
/// growing the pool if its idle memory does not serve them.
pub fn allocate_from_pool(
    ctx: &Context,
    pool: &Arc<Pool>,
    handle: usize,
    bytes: usize,
) -> CuResult<usize> {
    if bytes == 0 {
        return Err(CuError::InvalidValue);
    }
    let block = pool.allocate(ctx.device, bytes as u64)?;
    map(ctx, bytes, Kind::Pool(handle), Held::Pool { _block: block })
}

/// Backs an allocation of `bytes` that holds `memory` with a mapping, and records it.
fn map(ctx: &Context, bytes: usize, kind: Kind, memory: Held) -> CuResult<usize> {
    let mapping = Mapping::anonymous(bytes).map_err(|_| CuError::OutOfMemory)?;
    let base = mapping.addr();
    let info = Info {
        base,
        size: bytes,
        device: ctx.device.ordinal.unwrap_or(ctx.device.index),
        ctx: ctx.handle,
        kind,
        shared: false,
    };
    ALLOCATIONS.lock().insert(
        base,
        Allocation {
            mapping,
            info,
            _memory: memory,
            export: None,
        },
    );
    Ok(base)
}

/// `cuIpcGetMemHandle`: makes the allocation that starts at `base` (made by `cuMemAlloc` or
/// `cuMemAllocPitch`) shareable with other processes, once, and returns its handle (the
/// same handle each time). Other pointers, managed and stream-ordered memory are
/// `CUDA_ERROR_INVALID_VALUE`.
pub fn export(base: usize) -> CuResult<CUipcMemHandle> {
    wait_for_memory_ops();
    let mut allocations = ALLOCATIONS.lock();
    let allocation = allocations.get_mut(&base).ok_or(CuError::InvalidValue)?;
    if !matches!(allocation.info.kind, Kind::Device | Kind::Pitched) {
        return Err(CuError::InvalidValue);
    }
    if let Some(export) = &allocation.export {
        return Ok(export.handle);
    }
    let device = crate::context::get(allocation.info.ctx)?.device.index;
    // SAFETY: the allocation's own private backing; queued operations were waited for,
    // and the table's lock keeps it from being freed meanwhile (CUDA programs do not write
    // memory they are exporting from another thread).
    let export = unsafe { ipc::export(&allocation.mapping, allocation.info.size, device) }?;
    let handle = export.handle;
    allocation.export = Some(export);
    allocation.info.shared = true;
    Ok(handle)
}

/// The pitch of a `cuMemAllocPitch` allocation: the width rounded up to `PITCH_ALIGNMENT`.
pub fn pitch_for(width: usize, height: usize, element_size: u32) -> CuResult<usize> {
    if width == 0 || height == 0 || !matches!(element_size, 4 | 8 | 16) {
        return Err(CuError::InvalidValue);
    }
    mapping::round_up(width, PITCH_ALIGNMENT).ok_or(CuError::InvalidValue)
}

/// `cuMemFree`: waits for queued memory operations, then frees the allocation at `base`.
pub fn free(base: usize) -> CuResult {
    if base == 0 {
        return Ok(());
    }
    wait_for_memory_ops();
    free_now(base)
}

/// Frees the allocation at `base` without waiting (a stream reaching `cuMemFreeAsync`).
pub fn free_now(base: usize) -> CuResult {
    ALLOCATIONS
        .lock()
        .remove(&base)
        .map(drop)
        .ok_or(CuError::InvalidValue)
}

/// Frees every allocation and array made in the context `ctx` (when it is destroyed).
pub fn free_context(ctx: usize) {
    let doomed: Vec<Allocation> = {
        let mut allocations = ALLOCATIONS.lock();
        let bases: Vec<usize> = allocations
            .values()
            .filter(|a| a.info.ctx == ctx)
            .map(|a| a.info.base)
            .collect();
        bases.iter().filter_map(|b| allocations.remove(b)).collect()
    };
    drop(doomed);
    drop(ARRAYS.remove_where(|a| a.ctx == ctx));
}

/// The allocation containing `ptr`, if any.
pub fn lookup(ptr: usize) -> Option<Info> {
    let allocations = ALLOCATIONS.lock();
    let (_, a) = allocations.range(..=ptr).next_back()?;
    (ptr < a.info.base + a.info.size).then_some(a.info)
}

/// Checks that `[ptr, ptr + len)` is device memory this process may access: inside one
/// allocation, or mapped and accessible VMM memory.
pub fn check_device_range(ptr: usize, len: usize) -> CuResult {
    let end = ptr.checked_add(len).ok_or(CuError::InvalidValue)?;
    if let Some(info) = lookup(ptr) {
        return if end <= info.base + info.size {
            Ok(())
        } else {
            Err(CuError::InvalidValue)
        };
    }
    if len == 0 || vmm::is_accessible(ptr, len) || ipc::is_open(ptr, len) {
        Ok(())
    } else {
        Err(CuError::InvalidValue)
    }
}

/// The value a memset writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// `cuMemsetD8`.
    U8(u8),
    /// `cuMemsetD16`.
    U16(u16),
    /// `cuMemsetD32`.
    U32(u32),
}

impl Fill {
    fn width(self) -> usize {
        match self {
            Fill::U8(_) => 1,
            Fill::U16(_) => 2,
            Fill::U32(_) => 4,
        }
    }

    fn is_zero(self) -> bool {
        matches!(self, Fill::U8(0) | Fill::U16(0) | Fill::U32(0))
    }
}

/// Validates a memset of `count` elements at `ptr`; returns its length in bytes.
pub fn check_fill(ptr: usize, fill: Fill, count: usize) -> CuResult<usize> {
    if !ptr.is_multiple_of(fill.width()) {
        return Err(CuError::InvalidValue);
    }
    let len = count
        .checked_mul(fill.width())
        .ok_or(CuError::InvalidValue)?;
    check_device_range(ptr, len)?;
    Ok(len)
}

/// Fills `count` elements at `ptr`. A zero fill hands whole pages of an allocation back to
/// the kernel instead of touching them, so zeroing a huge allocation costs no memory.
///
/// # Safety
///
/// `check_fill(ptr, fill, count)` must have succeeded and the memory must not have been
/// freed since.
pub unsafe fn fill(ptr: usize, fill: Fill, count: usize) {
    let len = count * fill.width();
    // SAFETY: the caller guarantees [ptr, ptr + len) is live, writable device memory,
    // aligned for the element width (all arms).
    unsafe {
        match fill {
            f if f.is_zero() => zero(ptr, len),
            Fill::U8(v) => ptr::write_bytes(ptr as *mut u8, v, len),
            Fill::U16(v) => std::slice::from_raw_parts_mut(ptr as *mut u16, count).fill(v),
            Fill::U32(v) => std::slice::from_raw_parts_mut(ptr as *mut u32, count).fill(v),
        }
    }
}

/// # Safety
///
/// `[ptr, ptr + len)` must be live, writable device memory.
unsafe fn zero(ptr: usize, len: usize) {
    let page = mapping::page_size();
    let start = mapping::round_up(ptr, page).unwrap_or(usize::MAX);
    let end = (ptr + len) & !(page - 1);
    let private =
        lookup(ptr).is_some_and(|info| !info.shared && ptr + len <= info.base + info.size);
    // SAFETY: the caller guarantees the range is live and writable; whole pages are only
    // discarded inside a private anonymous allocation, where that zeroes them.
    unsafe {
        if private && start < end {
            ptr::write_bytes(ptr as *mut u8, 0, start - ptr);
            if mapping::discard(start, end - start).is_err() {
                ptr::write_bytes(start as *mut u8, 0, end - start);
            }
            ptr::write_bytes(end as *mut u8, 0, ptr + len - end);
        } else {
            ptr::write_bytes(ptr as *mut u8, 0, len);
        }
    }
}

/// Copies `len` bytes (the ranges may overlap).
///
/// # Safety
///
/// `src` must be readable and `dst` writable for `len` bytes, both live until this returns.
pub unsafe fn copy(dst: usize, src: usize, len: usize) {
    if len > 0 {
        // SAFETY: guaranteed by the caller; ptr::copy allows overlap.
        unsafe { ptr::copy(src as *const u8, dst as *mut u8, len) };
    }
}

/// `cuMemAllocHost` / `cuMemHostAlloc`: host memory, not charged to any device (zero bytes
/// get a page: the real driver succeeds).
pub fn allocate_host(bytes: usize) -> CuResult<usize> {
    let mapping = Mapping::anonymous(bytes).map_err(|_| CuError::OutOfMemory)?;
    let base = mapping.addr();
    HOST.lock().insert(base, mapping);
    Ok(base)
}

/// `cuMemFreeHost`.
pub fn free_host(base: usize) -> CuResult {
    wait_for_memory_ops();
    HOST.lock()
        .remove(&base)
        .map(drop)
        .ok_or(CuError::InvalidValue)
}

/// Whether `ptr` lies in a host allocation.
pub fn is_host(ptr: usize) -> bool {
    HOST.lock()
        .range(..=ptr)
        .next_back()
        .is_some_and(|(_, m)| m.contains(ptr, 1))
}

/// A CUDA array: charged, with no backing (the simulator has no texture copies).
#[derive(Debug)]
struct Array {
    ctx: usize,
    _charge: Charge,
}

static ARRAYS: Table<Array> = Table::new();

/// Bytes per channel of a `CUarray_format`, if the simulator knows it.
pub fn array_format_bytes(format: u32) -> Option<u64> {
    match format {
        0x01 | 0x08 => Some(1),               // UNSIGNED_INT8, SIGNED_INT8
        0x02 | 0x09 | 0x10 => Some(2),        // UNSIGNED_INT16, SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => Some(4),        // UNSIGNED_INT32, SIGNED_INT32, FLOAT
        0xc0..=0xc2 | 0xc6..=0xc8 => Some(1), // UNORM_INT8X*, SNORM_INT8X*
        0xc3..=0xc5 | 0xc9..=0xcb => Some(2), // UNORM_INT16X*, SNORM_INT16X*
        _ => None,
    }
}

/// The bytes an array of these dimensions takes (a zero height or depth counts as 1).
pub fn array_bytes(
    width: usize,
    height: usize,
    depth: usize,
    format: u32,
    channels: u32,
) -> CuResult<u64> {
    let element = array_format_bytes(format).ok_or(CuError::InvalidValue)?;
    if width == 0 || !matches!(channels, 1 | 2 | 4) {
        return Err(CuError::InvalidValue);
    }
    [height.max(1), depth.max(1)]
        .iter()
        .try_fold(width as u64, |acc, &d| acc.checked_mul(d as u64))
        .and_then(|n| n.checked_mul(u64::from(channels) * element))
        .ok_or(CuError::InvalidValue)
}

/// `cuArrayCreate` / `cuArray3DCreate`: charges `bytes` to the context's device.
pub fn create_array(ctx: &Context, bytes: u64) -> CuResult<usize> {
    let charge = ctx.device.reserve(bytes)?;
    Ok(ARRAYS.insert(Arc::new(Array {
        ctx: ctx.handle,
        _charge: charge,
    })))
}

/// `cuArrayDestroy`.
pub fn destroy_array(handle: usize) -> CuResult {
    ARRAYS
        .remove(handle)
        .map(drop)
        .ok_or(CuError::InvalidHandle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pitch_rounds_width_up_to_512() {
        assert_eq!(pitch_for(1, 1, 4), Ok(512));
        assert_eq!(pitch_for(512, 3, 8), Ok(512));
        assert_eq!(pitch_for(513, 3, 16), Ok(1024));
        assert_eq!(pitch_for(100, 1, 3), Err(CuError::InvalidValue));
        assert_eq!(pitch_for(0, 1, 4), Err(CuError::InvalidValue));
    }

    #[test]
    fn arrays_are_charged_by_dimensions_channels_and_format() {
        assert_eq!(array_bytes(100, 0, 0, 0x20, 4), Ok(1600));
        assert_eq!(array_bytes(100, 10, 2, 0x01, 1), Ok(2000));
        assert_eq!(array_bytes(100, 10, 0, 0x10, 2), Ok(4000));
        assert_eq!(array_bytes(100, 10, 0, 0x77, 1), Err(CuError::InvalidValue));
        assert_eq!(array_bytes(100, 10, 0, 0x20, 3), Err(CuError::InvalidValue));
    }
}
