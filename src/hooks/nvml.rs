//! NVML memory queries, so that `nvidia-smi` and NVML-based tools inside a tenant show its
//! quota, not the whole GPU.

use crate::cuda::*;
use crate::policy::memory::MemoryView;
use crate::runtime::{Mode, mode};

/// NVML's answer to a memory query, in either of its structs.
pub(crate) trait MemoryAnswer {
    /// What NVML said of the whole GPU.
    fn physical(&self) -> MemoryView;
    /// Says the tenant's view instead.
    fn show(&mut self, view: MemoryView);
}

/// `nvmlDeviceGetMemoryInfo`: `used` stays `total - free`, as NVML's v1 struct defines it.
impl MemoryAnswer for NvmlMemory {
    fn physical(&self) -> MemoryView {
        MemoryView {
            total: self.total,
            free: self.free,
            used: self.used,
        }
    }

    fn show(&mut self, view: MemoryView) {
        self.total = view.total;
        self.free = view.free;
        self.used = view.total - view.free;
    }
}

/// `nvmlDeviceGetMemoryInfo_v2`: `reserved` is what the quota has left that the GPU
/// cannot give right now, so that `total = reserved + used + free` still holds.
impl MemoryAnswer for NvmlMemoryV2 {
    fn physical(&self) -> MemoryView {
        MemoryView {
            total: self.total,
            free: self.free,
            used: self.used,
        }
    }

    fn show(&mut self, view: MemoryView) {
        self.total = view.total;
        self.free = view.free;
        self.used = view.used;
        self.reserved = view.total - view.used - view.free;
    }
}

/// `nvmlDeviceGetMemoryInfo` and its `_v2`: the tenant's quota shown as the GPU's memory.
///
/// # Safety
/// `memory` is the caller's out-pointer, null or writable, which `call` writes on success.
pub(crate) unsafe fn memory_info<M: MemoryAnswer>(
    call: impl Fn() -> NvmlReturn,
    device: NvmlDevice,
    memory: *mut M,
) -> NvmlReturn {
    let status = call();
    if status != NVML_SUCCESS || memory.is_null() {
        return status;
    }
    // SAFETY: non-null and just written by NVML.
    let answer = unsafe { &mut *memory };
    match quota_view(device, answer.physical()) {
        Ok(Some(view)) => {
            answer.show(view);
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
