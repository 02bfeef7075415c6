//! NVML memory queries, so that `nvidia-smi` and NVML-based tools inside a tenant show its
//! quota, not the whole GPU.

use crate::cuda::*;
use crate::policy::memory::MemoryView;
use crate::runtime::{Mode, mode};

/// `nvmlDeviceGetMemoryInfo`: `used` stays `total - free`, as NVML's v1 struct defines it.
pub(crate) unsafe fn memory_info(
    call: impl Fn() -> NvmlReturn,
    device: NvmlDevice,
    memory: *mut NvmlMemory,
) -> NvmlReturn {
    let status = call();
    if status != NVML_SUCCESS || memory.is_null() {
        return status;
    }
    // SAFETY: non-null and just written by NVML.
    let answer = unsafe { &mut *memory };
    let physical = MemoryView {
        total: answer.total,
        free: answer.free,
        used: answer.used,
    };
    match quota_view(device, physical) {
        Ok(Some(view)) => {
            answer.total = view.total;
            answer.free = view.free;
            answer.used = view.total - view.free;
            NVML_SUCCESS
        }
        Ok(None) => status,
        Err(failure) => failure,
    }
}

/// `nvmlDeviceGetMemoryInfo_v2`: `reserved` is what the quota has left that the GPU
/// cannot give right now, so that `total = reserved + used + free` still holds.
pub(crate) unsafe fn memory_info_v2(
    call: impl Fn() -> NvmlReturn,
    device: NvmlDevice,
    memory: *mut NvmlMemoryV2,
) -> NvmlReturn {
    let status = call();
    if status != NVML_SUCCESS || memory.is_null() {
        return status;
    }
    // SAFETY: non-null and just written by NVML.
    let answer = unsafe { &mut *memory };
    let physical = MemoryView {
        total: answer.total,
        free: answer.free,
        used: answer.used,
    };
    match quota_view(device, physical) {
        Ok(Some(view)) => {
            answer.total = view.total;
            answer.free = view.free;
            answer.used = view.used;
            answer.reserved = view.total - view.used - view.free;
            NVML_SUCCESS
        }
        Ok(None) => status,
        Err(failure) => failure,
    }
}

fn quota_view(device: NvmlDevice, physical: MemoryView) -> Result<Option<MemoryView>, NvmlReturn> {
    let shim = match mode() {
        Mode::Enforcing(shim) => shim,
        Mode::PassThrough => return Ok(None),
        Mode::Failed => return Err(NVML_ERROR_UNKNOWN),
    };
    let gpu = shim.devices.by_nvml(&shim.memory, device)?;
    crate::hooks::pools::refresh_gpu(shim, gpu.index);
    shim.driver_memory.refresh(&shim.memory, &gpu, || {
        crate::hooks::nvml_probe::process_used(&gpu.uuid)
    });
    Ok(shim.memory.view(&gpu, physical))
}
