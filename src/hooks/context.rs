//! Driver initialization and contexts. A context takes device memory of its own (518 MiB
//! for a primary context on an H100 with driver 580), which counts against the quota like
//! any allocation. It is measured, not assumed: this process's device memory according to
//! NVML just before and just after the context is created (the whole device's where NVML
//! cannot see this process, see `measure_footprint`).

use std::collections::HashMap;
use std::ffi::c_void;

use gpuslice_ledger::GpuUuid;
use parking_lot::Mutex;

use crate::cuda::*;
use crate::exports::driver::real;
use crate::hooks::nvml_probe::{self, Listing};
use crate::hooks::{real_or_missing, shim_or};
use crate::log::{Level, log};
use crate::policy::footprint::{ContextReadings, context_footprint};
use crate::policy::memory::{Bytes, Charge, Gpu, Refusal};
use crate::shim::Shim;

/// Contexts of this process and what each took.
#[derive(Debug, Default)]
pub struct Contexts {
    book: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    /// Primary contexts by ordinal: how often retained, and what creating it took.
    primary: HashMap<CUdevice, Primary>,
    /// Contexts made by `cuCtxCreate*`, by handle.
    created: HashMap<usize, Charge>,
}

#[derive(Debug)]
struct Primary {
    retained: u32,
    charge: Charge,
}

impl Contexts {
    /// No contexts yet.
    pub fn new() -> Contexts {
        Contexts::default()
    }
}

/// `cuInit`: where a process with unusable gpuslice settings is stopped.
pub(crate) unsafe fn init(flags: u32) -> CUresult {
    let real = real_or_missing!(real::cuInit);
    // SAFETY: the caller's argument, unchanged.
    let _enforcing = shim_or!(unsafe { real(flags) });
    // SAFETY: as above.
    unsafe { real(flags) }
}

/// `cuDevicePrimaryCtxRetain`: the first retain creates the context and is charged.
pub(crate) unsafe fn primary_retain(context: *mut CUcontext, device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuDevicePrimaryCtxRetain);
    // SAFETY: the caller's arguments, unchanged (all `real` calls in this function).
    let shim = shim_or!(unsafe { real(context, device) });
    let mut book = shim.contexts.book.lock();
    if let Some(primary) = book.primary.get_mut(&device) {
        // SAFETY: as above.
        let status = unsafe { real(context, device) };
        if status == CUDA_SUCCESS {
            primary.retained += 1;
        }
        return status;
    }
    let gpu = match shim.devices.by_ordinal(&shim.memory, device) {
        Ok(gpu) => gpu,
        Err(status) => return status,
    };
    // SAFETY: as above.
    let (status, footprint) = measure_footprint(&gpu.uuid, || unsafe { real(context, device) });
    if status != CUDA_SUCCESS {
        return status;
    }
    match charge_context(shim, &gpu, footprint) {
        Some(charge) => {
            book.primary.insert(
                device,
                Primary {
                    retained: 1,
                    charge,
                },
            );
            status
        }
        None => {
            if let Some(release) = real::cuDevicePrimaryCtxRelease_v2() {
                // SAFETY: undoing the retain that just succeeded.
                unsafe { release(device) };
            }
            CUDA_ERROR_OUT_OF_MEMORY
        }
    }
}

/// `cuDevicePrimaryCtxRelease_v2`.
pub(crate) unsafe fn primary_release(device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuDevicePrimaryCtxRelease_v2);
    // SAFETY: the caller's argument, unchanged.
    unsafe { primary_released(device, || real(device), false) }
}

/// `cuDevicePrimaryCtxRelease` (the pre-11.0 name, same contract).
pub(crate) unsafe fn primary_release_v1(device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuDevicePrimaryCtxRelease);
    // SAFETY: the caller's argument, unchanged.
    unsafe { primary_released(device, || real(device), false) }
}

/// `cuDevicePrimaryCtxReset_v2`: destroys the primary context whatever its count.
pub(crate) unsafe fn primary_reset(device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuDevicePrimaryCtxReset_v2);
    // SAFETY: the caller's argument, unchanged.
    unsafe { primary_released(device, || real(device), true) }
}

/// `cuDevicePrimaryCtxReset` (the pre-11.0 name).
pub(crate) unsafe fn primary_reset_v1(device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuDevicePrimaryCtxReset);
    // SAFETY: the caller's argument, unchanged.
    unsafe { primary_released(device, || real(device), true) }
}

unsafe fn primary_released(
    device: CUdevice,
    driver: impl FnOnce() -> CUresult,
    reset: bool,
) -> CUresult {
    let shim = shim_or!(driver());
    crate::hooks::stream::retire_device(device);
    let mut book = shim.contexts.book.lock();
    let status = driver();
    if status != CUDA_SUCCESS {
        return status;
    }
    if let Some(primary) = book.primary.get_mut(&device) {
        primary.retained = primary.retained.saturating_sub(1);
        if reset || primary.retained == 0 {
            let charge = primary.charge;
            book.primary.remove(&device);
            shim.memory.release(charge);
            // The context's allocations went with it, and its pools gave memory back.
            crate::hooks::pools::refresh_gpu(shim, charge.gpu);
        }
    }
    status
}

/// `cuCtxCreate` (v1 name; same arguments as `_v2`).
pub(crate) unsafe fn create_v1(context: *mut CUcontext, flags: u32, device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuCtxCreate);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { created(context, device, || real(context, flags, device)) }
}

/// `cuCtxCreate_v2`.
pub(crate) unsafe fn create_v2(context: *mut CUcontext, flags: u32, device: CUdevice) -> CUresult {
    let real = real_or_missing!(real::cuCtxCreate_v2);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { created(context, device, || real(context, flags, device)) }
}

/// `cuCtxCreate_v3` (execution affinity parameters).
pub(crate) unsafe fn create_v3(
    context: *mut CUcontext,
    params: *mut c_void,
    count: i32,
    flags: u32,
    device: CUdevice,
) -> CUresult {
    let real = real_or_missing!(real::cuCtxCreate_v3);
    // SAFETY: the caller's arguments, unchanged.
    unsafe {
        created(context, device, || {
            real(context, params, count, flags, device)
        })
    }
}

/// `cuCtxCreate_v4` (CUDA 12.5+: `CUctxCreateParams`).
pub(crate) unsafe fn create_v4(
    context: *mut CUcontext,
    params: *mut c_void,
    flags: u32,
    device: CUdevice,
) -> CUresult {
    let real = real_or_missing!(real::cuCtxCreate_v4);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { created(context, device, || real(context, params, flags, device)) }
}

unsafe fn created(
    context: *mut CUcontext,
    device: CUdevice,
    driver: impl FnOnce() -> CUresult,
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
    let mut book = shim.contexts.book.lock();
    let (status, footprint) = measure_footprint(&gpu.uuid, driver);
    if status != CUDA_SUCCESS {
        return status;
    }
    // SAFETY: non-null and written by the driver on success.
    let handle = unsafe { *context };
    match charge_context(shim, &gpu, footprint) {
        Some(charge) => {
            book.created.insert(handle as usize, charge);
            status
        }
        None => {
            if let Some(destroy) = real::cuCtxDestroy_v2() {
                // SAFETY: destroying the context that was just created for us.
                unsafe { destroy(handle) };
            }
            CUDA_ERROR_OUT_OF_MEMORY
        }
    }
}

/// `cuCtxDestroy_v2`.
pub(crate) unsafe fn destroy(context: CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxDestroy_v2);
    // SAFETY: the caller's argument, unchanged.
    unsafe { destroyed(context, || real(context)) }
}

/// `cuCtxDestroy` (v1 name).
pub(crate) unsafe fn destroy_v1(context: CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxDestroy);
    // SAFETY: the caller's argument, unchanged.
    unsafe { destroyed(context, || real(context)) }
}

unsafe fn destroyed(context: CUcontext, driver: impl FnOnce() -> CUresult) -> CUresult {
    let shim = shim_or!(driver());
    crate::hooks::stream::retire_context(context);
    let mut book = shim.contexts.book.lock();
    let status = driver();
    if status == CUDA_SUCCESS
        && let Some(charge) = book.created.remove(&(context as usize))
    {
        shim.memory.release(charge);
        crate::hooks::pools::refresh_gpu(shim, charge.gpu);
    }
    status
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
