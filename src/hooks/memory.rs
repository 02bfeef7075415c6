//! Every call that takes or gives back device memory, except stream-ordered allocation and
//! memory pools (`pools.rs`) and virtual memory management (`vmm.rs`), which share the
//! reservation made here.
//!
//! Order matters. Taking memory: reserve in the ledger, then call the driver, then record
//! the charge (a failed driver call drops the reservation). Giving it back: take the charge
//! out of the table, call the driver, and only after it succeeded release the bytes (a
//! failed free puts the charge back). That way the ledger never counts less than the driver
//! holds, and an address the driver reuses at once can never meet a stale charge.
//!
//! Each charge is recorded with the context the memory was made in (the calling thread's
//! current one), since the driver frees it with that context (`crate::allocations`,
//! `hooks::context`).

use std::ffi::c_void;

use crate::allocations::{ChargeTable, ContextHandle, Held};
use crate::cuda::*;
use crate::exports::driver::real;
use crate::hooks::{nvml_probe, pools, shim_or};
use crate::log::{Level, RateLimit, log};
use crate::policy::footprint::{ArrayShape, pitch_padding};
use crate::policy::memory::{Gpu, MemoryView, Refusal, Reservation};
use crate::shim::Shim;

/// Reserves `bytes` on `gpu` for an allocation: the driver's own memory brought up to date
/// first near the limit, and on the way to a refusal the process's memory pools there made
/// to give back what they hold idle.
pub(crate) fn reserve<'a>(
    shim: &'a Shim,
    gpu: &Gpu,
    bytes: u64,
) -> Result<Reservation<'a>, Refusal> {
    shim.driver_memory
        .before_reserving(&shim.memory, gpu, bytes, || {
            nvml_probe::process_used(&gpu.uuid)
        });
    shim.memory
        .reserve_making_room(gpu, bytes, || pools::make_room(shim, gpu, bytes))
}

/// Reserves `bytes` on `gpu`, runs the driver call, and records the charge under the key
/// the call produced, made in `context` (the one whose end frees it, if any). Returns the
/// driver's status, or out-of-memory if refused.
pub(crate) fn charged(
    shim: &Shim,
    table: &ChargeTable,
    gpu: &Gpu,
    context: Option<ContextHandle>,
    bytes: u64,
    driver_call: impl FnOnce() -> (CUresult, Option<u64>),
) -> CUresult {
    let Ok(reservation) = reserve(shim, gpu, bytes) else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    let (status, key) = driver_call();
    if status == CUDA_SUCCESS
        && let Some(key) = key
        && let Some(stale) = table.insert(
            key,
            Held {
                charge: reservation.commit(),
                context,
            },
        )
    {
        // The driver handed out a handle we still had: a free we never saw.
        shim.memory.release(stale);
    }
    status
}

/// Takes back the charge of `key`, runs the driver's free, and releases the bytes only if
/// the free worked. A key not in the table (never charged, freed already, or given back
/// with its context) releases nothing.
fn uncharged(
    shim: &Shim,
    table: &ChargeTable,
    key: u64,
    driver_call: impl FnOnce() -> CUresult,
) -> CUresult {
    let held = table.remove(key);
    let status = driver_call();
    match held {
        Some(held) if status == CUDA_SUCCESS => shim.memory.release(held.charge),
        Some(held) => {
            table.insert(key, held);
        }
        None => {}
    }
    status
}

/// `cuMemAlloc_v2`, `cuMemAllocManaged` (managed memory may live on the device, so it
/// counts): charges `bytes` on the current GPU to the device pointer the driver writes to
/// `dptr`.
///
/// # Safety
/// `dptr` is the caller's out-pointer, null or writable, which `call` writes on success.
pub(crate) unsafe fn charged_out(
    call: impl Fn() -> CUresult,
    dptr: *mut CUdeviceptr,
    bytes: usize,
) -> CUresult {
    let shim = shim_or!(call());
    if dptr.is_null() {
        return call();
    }
    let (gpu, context) = match shim.devices.current_with_context(&shim.memory) {
        Ok(current) => current,
        Err(status) => return status,
    };
    charged(
        shim,
        &shim.allocations.device,
        &gpu,
        context,
        bytes as u64,
        || {
            let status = call();
            // SAFETY: `dptr` is non-null and the driver has written it when `call` succeeded.
            (status, Some(unsafe { *dptr }))
        },
    )
}

/// `cuMemAllocPitch_v2`. The pitch is only known after the call: reserve the rows'
/// width first, then the padding the driver chose; if the padding does not fit, undo.
pub(crate) unsafe fn alloc_pitch(
    call: impl Fn() -> CUresult,
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
) -> CUresult {
    let shim = shim_or!(call());
    if dptr.is_null() || pitch.is_null() {
        return call();
    }
    let (gpu, context) = match shim.devices.current_with_context(&shim.memory) {
        Ok(current) => current,
        Err(status) => return status,
    };
    let requested = (width as u64).saturating_mul(height as u64);
    let Ok(reservation) = reserve(shim, &gpu, requested) else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    let status = call();
    if status != CUDA_SUCCESS {
        return status;
    }
    // SAFETY: both out-pointers are non-null and written by the driver on success.
    let (address, actual_pitch) = unsafe { (*dptr, *pitch) };
    let padding = pitch_padding(width, height, actual_pitch);
    let mut charge = reservation.commit();
    if padding > 0 {
        match reserve(shim, &gpu, padding) {
            Ok(extra) => charge.bytes += extra.commit().bytes,
            Err(_) => {
                shim.memory.release(charge);
                if let Some(free) = real::cuMemFree_v2() {
                    // SAFETY: freeing the allocation the driver just made for this call.
                    unsafe { free(address) };
                }
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
        }
    }
    if let Some(stale) = shim
        .allocations
        .device
        .insert(address, Held { charge, context })
    {
        shim.memory.release(stale);
    }
    status
}

/// Which table a released handle's charge is in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Table {
    /// Device pointers (`cuMemFree_v2`).
    Device,
    /// Array and mipmapped array handles (`cuArrayDestroy`, `cuMipmappedArrayDestroy`).
    Arrays,
}

/// `cuMemFree_v2`, `cuArrayDestroy`, `cuMipmappedArrayDestroy`: the handle's charge is
/// released once the driver freed it. A block of a memory pool is not in the table: it
/// goes back to its pool, which keeps the memory (and its charge), so nothing is released.
pub(crate) fn released(call: impl Fn() -> CUresult, table: Table, handle: u64) -> CUresult {
    let shim = shim_or!(call());
    let table = match table {
        Table::Device => &shim.allocations.device,
        Table::Arrays => &shim.allocations.arrays,
    };
    uncharged(shim, table, handle, call)
}

/// A descriptor of an array's dimensions and element.
pub(crate) trait ArrayDescriptor: Copy {
    /// The array's shape as `policy::footprint` charges it.
    fn shape(&self) -> ArrayShape;
}

impl ArrayDescriptor for CudaArrayDescriptor {
    fn shape(&self) -> ArrayShape {
        ArrayShape {
            width: self.width,
            height: self.height,
            depth: 0,
            format_bytes: array_format_bytes(self.format),
            channels: self.num_channels,
        }
    }
}

impl ArrayDescriptor for CudaArray3dDescriptor {
    fn shape(&self) -> ArrayShape {
        ArrayShape {
            width: self.width,
            height: self.height,
            depth: self.depth,
            format_bytes: array_format_bytes(self.format),
            channels: self.num_channels,
        }
    }
}

/// `cuArrayCreate_v2`, `cuArray3DCreate_v2` (`levels` 1) and `cuMipmappedArrayCreate`
/// (every level, each half the size of the one before): charged what the descriptor
/// says, to the handle the driver writes to `array`.
///
/// # Safety
/// `array` is the caller's out-pointer, null or writable, which `call` writes on success;
/// `desc` null or a valid descriptor, as the C API requires.
pub(crate) unsafe fn array_created<D: ArrayDescriptor>(
    call: impl Fn() -> CUresult,
    array: *mut *mut c_void,
    desc: *const D,
    levels: u32,
) -> CUresult {
    let shim = shim_or!(call());
    if array.is_null() || desc.is_null() {
        return call();
    }
    // SAFETY: non-null, and valid per this function's contract.
    let bytes = unsafe { *desc }.shape().mipmapped_bytes(levels);
    // SAFETY: `array` is non-null and is the out-pointer `call` writes.
    unsafe { array_charged(shim, array, bytes, call) }
}

/// # Safety
/// `array` is non-null and is the out-pointer that `driver` writes on success.
unsafe fn array_charged(
    shim: &Shim,
    array: *mut *mut c_void,
    bytes: u64,
    driver: impl FnOnce() -> CUresult,
) -> CUresult {
    let (gpu, context) = match shim.devices.current_with_context(&shim.memory) {
        Ok(current) => current,
        Err(status) => return status,
    };
    charged(shim, &shim.allocations.arrays, &gpu, context, bytes, || {
        let status = driver();
        // SAFETY: per this function's contract, written by the driver when it succeeded.
        (status, Some(unsafe { *array } as u64))
    })
}

/// The 32-bit entry points of CUDA before 3.2 (`cuMemAlloc` without `_v2`, ...), `name`:
/// never forwarded. No program built in the last fifteen years calls them; refusing them
/// keeps them from being a way around the quota.
pub(crate) fn legacy_refused(_real: impl Fn() -> CUresult, name: &'static str) -> CUresult {
    static LOGGED: RateLimit = RateLimit::new();
    if LOGGED.admit().is_some() {
        log!(
            Level::Warn,
            "{name} (the pre-CUDA-3.2 32-bit API) is not supported under gpuslice"
        );
    }
    CUDA_ERROR_NOT_SUPPORTED
}

/// `cuMemGetInfo_v2`: the quota as total, what is left of it as free.
pub(crate) unsafe fn get_info(
    call: impl Fn() -> CUresult,
    free: *mut usize,
    total: *mut usize,
) -> CUresult {
    let shim = shim_or!(call());
    let status = call();
    if status != CUDA_SUCCESS || free.is_null() || total.is_null() {
        return status;
    }
    let gpu = match shim.devices.current(&shim.memory) {
        Ok(gpu) => gpu,
        Err(status) => return status,
    };
    pools::refresh_gpu(shim, gpu.index);
    shim.driver_memory
        .refresh(&shim.memory, &gpu, || nvml_probe::process_used(&gpu.uuid));
    // SAFETY: both non-null and just written by the driver.
    let (physical_free, physical_total) = unsafe { (*free as u64, *total as u64) };
    let physical = MemoryView {
        total: physical_total,
        free: physical_free,
        used: physical_total.saturating_sub(physical_free),
    };
    if let Some(view) = shim.memory.view(&gpu, physical) {
        // SAFETY: as above; the view never exceeds the driver's own numbers, which fit.
        unsafe {
            *free = usize::try_from(view.free).unwrap_or(usize::MAX);
            *total = usize::try_from(view.total).unwrap_or(usize::MAX);
        }
    }
    status
}

/// `cuDeviceTotalMem_v2`: the quota, never more than the device has.
pub(crate) unsafe fn total_mem(
    call: impl Fn() -> CUresult,
    bytes: *mut usize,
    device: CUdevice,
) -> CUresult {
    let shim = shim_or!(call());
    let status = call();
    if status != CUDA_SUCCESS || bytes.is_null() {
        return status;
    }
    let gpu = match shim.devices.by_ordinal(&shim.memory, device) {
        Ok(gpu) => gpu,
        Err(status) => return status,
    };
    if let Some(limit) = shim.memory.limit(&gpu) {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        // SAFETY: non-null and just written by the driver.
        unsafe { *bytes = (*bytes).min(limit) };
    }
    status
}
