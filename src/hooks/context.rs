//! Driver initialization and contexts. A context takes device memory of its own (518 MiB
//! for a primary context on an H100 with driver 580), which counts against the quota like
//! any allocation. It is measured, not assumed: this process's device memory according to
//! NVML just before and just after the context is created (the whole device's where NVML
//! cannot see this process, see `measure_footprint`).

use gpuslice_ledger::GpuUuid;

use crate::allocations::ContextHandle;
use crate::contexts::{EndedContext, PrimaryRetain};
use crate::cuda::*;
use crate::exports::driver::real;
use crate::hooks::nvml_probe::{self, Listing};
use crate::hooks::shim_or;
use crate::log::{Level, log};
use crate::policy::footprint::{ContextReadings, context_footprint};
use crate::policy::memory::{Bytes, Charge, Gpu, Refusal};
use crate::shim::Shim;

/// `cuInit`: where a process with unusable gpuslice settings is stopped.
pub(crate) fn init(call: impl Fn() -> CUresult) -> CUresult {
    let _enforcing = shim_or!(call());
    call()
}

/// `cuDevicePrimaryCtxRetain`: the first retain creates the context and is charged; later
/// ones are counted (`crate::contexts` says who waits for whom; no lock is held while the
/// driver or NVML is asked). The context's handle, which the driver writes to `context`,
/// is recorded with it: allocations made in it are recorded under it.
///
/// # Safety
/// `context` is the caller's out-pointer, null or writable, which `call` writes on success.
pub(crate) unsafe fn primary_retain(
    call: impl Fn() -> CUresult,
    context: *mut CUcontext,
    device: CUdevice,
) -> CUresult {
    let shim = shim_or!(call());
    let gpu = match shim.devices.by_ordinal(&shim.memory, device) {
        Ok(gpu) => gpu,
        Err(status) => return status,
    };
    let making = match shim.contexts.retain_primary(device, gpu.index) {
        PrimaryRetain::Count(retaining) => {
            let status = call();
            if status == CUDA_SUCCESS {
                retaining.succeeded();
            }
            return status;
        }
        PrimaryRetain::Make(making) => making,
    };
    let (status, footprint) = measure_footprint(&gpu.uuid, &call);
    if status != CUDA_SUCCESS {
        return status;
    }
    let handle = if context.is_null() {
        0 // the driver refuses a null out-pointer; no allocation is recorded under 0
    } else {
        // SAFETY: non-null and written by the driver on success.
        unsafe { *context as usize }
    };
    match charge_context(shim, &gpu, footprint) {
        Some(charge) => {
            making.made(ContextHandle(handle), charge);
            status
        }
        None => {
            if let Some(release) = real::cuDevicePrimaryCtxRelease_v2() {
                // SAFETY: undoing the retain that just succeeded.
                unsafe { release(device) };
            }
            // Beside references a reset kept, that release left the context live (the
            // driver's count is still above zero): a reset ends it again and keeps them.
            if making.after_reset()
                && let Some(reset) = real::cuDevicePrimaryCtxReset_v2()
            {
                // SAFETY: ending the context this retain made, which nothing uses yet.
                unsafe { reset(device) };
            }
            drop(making);
            CUDA_ERROR_OUT_OF_MEMORY
        }
    }
}

/// `primary_released`: the count goes down by one (`cuDevicePrimaryCtxRelease` and its
/// `_v2`)...
pub(crate) const RELEASE: bool = false;
/// ...or the context goes whatever its count (`cuDevicePrimaryCtxReset` and its `_v2`).
pub(crate) const RESET: bool = true;

/// The primary context of `device` is released or reset (`RELEASE`, `RESET`): the watcher
/// stops polling its streams first; once it is gone, so is its charge.
pub(crate) fn primary_released(
    driver: impl Fn() -> CUresult,
    device: CUdevice,
    reset: bool,
) -> CUresult {
    let shim = shim_or!(driver());
    crate::hooks::stream::retire_device(device);
    let Some(releasing) = shim.contexts.release_primary(device, reset) else {
        return driver();
    };
    let status = driver();
    if status != CUDA_SUCCESS {
        return status;
    }
    releasing.succeeded(|ended| gone(shim, ended));
    status
}

/// Every `cuCtxCreate` (v1 to v4: their other arguments are the driver's alone): the new
/// context is charged what it took, and destroyed again if that does not fit.
///
/// # Safety
/// `context` is the caller's out-pointer, null or writable, which `driver` writes on
/// success.
pub(crate) unsafe fn created(
    driver: impl Fn() -> CUresult,
    context: *mut CUcontext,
    device: CUdevice,
) -> CUresult {
    // A new context becomes the thread's current one. It is known only once made (and
    // this thread launches nothing before it is recorded).
    crate::hooks::stream::context_may_change();
    let driver = || {
        let status = driver();
        if status == CUDA_SUCCESS && !context.is_null() {
            // SAFETY: non-null and written by the driver on success.
            crate::hooks::stream::becomes_current(unsafe { *context });
        }
        status
    };
    let shim = shim_or!(driver());
    if context.is_null() {
        return driver();
    }
    let gpu = match shim.devices.by_ordinal(&shim.memory, device) {
        Ok(gpu) => gpu,
        Err(status) => return status,
    };
    let creating = shim.contexts.create(gpu.index);
    let (status, footprint) = measure_footprint(&gpu.uuid, driver);
    if status != CUDA_SUCCESS {
        return status;
    }
    // SAFETY: non-null and written by the driver on success.
    let handle = unsafe { *context };
    match charge_context(shim, &gpu, footprint) {
        Some(charge) => {
            if let Some(stale) = creating.made(handle as usize, charge) {
                gone(shim, stale);
            }
            status
        }
        None => {
            if let Some(destroy) = real::cuCtxDestroy_v2() {
                // SAFETY: destroying the context that was just created for us.
                unsafe { destroy(handle) };
            }
            drop(creating);
            CUDA_ERROR_OUT_OF_MEMORY
        }
    }
}

/// `cuCtxDestroy` and its `_v2`: the watcher stops polling the context's streams first;
/// once it is gone, so is its charge.
pub(crate) fn destroyed(driver: impl Fn() -> CUresult, context: CUcontext) -> CUresult {
    let shim = shim_or!(driver());
    crate::hooks::stream::retire_context(context);
    let Some(destroying) = shim.contexts.destroy(context as usize) else {
        return driver();
    };
    let status = driver();
    if status == CUDA_SUCCESS {
        destroying.succeeded(|ended| gone(shim, ended));
    }
    status
}

/// A context ended: its charge goes, and so does what the driver freed with it (its
/// allocations, arrays and managed memory: `crate::allocations`); pools, whose memory is no
/// context's, are looked at again, since the driver may have given some back. Called while
/// the book still keeps other calls on the GPU waiting, so that nothing allocated in a
/// context made anew under the same handle is taken for the old one's.
fn gone(shim: &Shim, ended: EndedContext) {
    shim.memory.release(ended.charge);
    let gpu = ended.charge.gpu;
    if let Some(freed) = shim.allocations.context_ended(ended.handle, gpu) {
        log!(
            Level::Debug,
            "a context ended on GPU {}; {} allocated in it went with it",
            gpu.0,
            Bytes(freed.bytes)
        );
        shim.memory.release(freed);
    }
    crate::hooks::pools::refresh_gpu(shim, gpu);
}

fn charge_context(shim: &Shim, gpu: &Gpu, footprint: u64) -> Option<Charge> {
    let make_room = || crate::hooks::pools::make_room(shim, gpu, footprint);
    match shim.memory.reserve_making_room(gpu, footprint, make_room) {
        Ok(reservation) => {
            log!(
                Level::Debug,
                "context on {} took {}",
                gpu.uuid,
                Bytes(footprint)
            );
            Some(reservation.commit())
        }
        Err(Refusal::OverLimit(_)) => {
            log!(
                Level::Warn,
                "a new context on {} needs {} and does not fit in the tenant's quota",
                gpu.uuid,
                Bytes(footprint)
            );
            None
        }
        // `reserve` said what the ledger could not do (all process slots taken, say).
        Err(Refusal::Ledger(_)) => None,
    }
}

/// Runs `create` and returns its status with the device memory it took, from NVML's
/// readings around it (`policy::footprint`).
fn measure_footprint(uuid: &GpuUuid, create: impl FnOnce() -> CUresult) -> (CUresult, u64) {
    let own_before = nvml_probe::process_listing(uuid);
    let device_before = nvml_probe::device_used(uuid);
    let status = create();
    if status != CUDA_SUCCESS {
        return (status, 0);
    }
    // Read only where they can matter, as before: NVML's list again only where it listed
    // this process before, the device only where this process's own reading cannot serve.
    let own_after = own_before.and_then(|_| nvml_probe::process_listing(uuid));
    let device_after = match own_after {
        Some(Listing::Listed(_)) => None,
        _ => nvml_probe::device_used(uuid),
    };
    let readings = ContextReadings {
        own_before,
        own_after,
        device_before,
        device_after,
    };
    (status, context_footprint(readings))
}
