//! What NVML says about a GPU, for the shim's own measurements (never shown to the program
//! as such): memory in use on the whole device, and memory in use by one process.

use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};

use gpuslice_ledger::GpuUuid;

use crate::cuda::*;
use crate::real;

/// Device memory in use on the GPU with this UUID, all processes together.
pub fn device_used(uuid: &GpuUuid) -> Option<u64> {
    let device = device(uuid)?;
    let memory_info = crate::exports::nvml::real::nvmlDeviceGetMemoryInfo()?;
    let mut memory = NvmlMemory::default();
    // SAFETY: `device` came from NVML; `memory` is a valid out-pointer of the v1 struct.
    if unsafe { memory_info(device, &mut memory) } != NVML_SUCCESS {
        return None;
    }
    Some(memory.used)
}

/// Device memory the process `pid` (as NVML numbers processes: the host's PIDs) uses on
/// the GPU with this UUID. `None` if NVML cannot say or does not list the process.
pub fn process_used(uuid: &GpuUuid, pid: u32) -> Option<u64> {
    let device = device(uuid)?;
    let list = real::nvml::nvmlDeviceGetComputeRunningProcesses_v3()?;
    let mut entries = vec![NvmlProcessInfo::default(); 64];
    // Processes come and go between calls: a few tries with the size NVML asks for.
    for _ in 0..4 {
        let mut count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        // SAFETY: `entries` has room for `count` structs of the layout NVML's v3 call fills.
        let status = unsafe { list(device, &mut count, entries.as_mut_ptr()) };
        match status {
            NVML_SUCCESS => {
                let listed = entries.get(..usize::try_from(count).ok()?)?;
                return listed
                    .iter()
                    .find(|entry| entry.pid == pid)
                    .map(|entry| entry.used_gpu_memory);
            }
            NVML_ERROR_INSUFFICIENT_SIZE => {
                let needed = usize::try_from(count).ok()?.saturating_add(8);
                entries.resize(needed.min(4096), NvmlProcessInfo::default());
            }
            _ => return None,
        }
    }
    None
}

/// The NVML handle of the GPU with this UUID, NVML initialized on first use.
fn device(uuid: &GpuUuid) -> Option<NvmlDevice> {
    const UNKNOWN: u8 = 0;
    const READY: u8 = 1;
    const UNAVAILABLE: u8 = 2;
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

    if STATE.load(Ordering::Acquire) == UNKNOWN {
        let ready = real::nvml::nvmlInit_v2()
            // SAFETY: nvmlInit_v2 takes no arguments and may be called more than once.
            .is_some_and(|init| unsafe { init() } == NVML_SUCCESS);
        STATE.store(if ready { READY } else { UNAVAILABLE }, Ordering::Release);
    }
    if STATE.load(Ordering::Acquire) != READY {
        return None;
    }
    let by_uuid = real::nvml::nvmlDeviceGetHandleByUUID()?;
    let name = CString::new(uuid.to_string()).ok()?;
    let mut device: NvmlDevice = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; `device` is a valid out-pointer.
    if unsafe { by_uuid(name.as_ptr(), &mut device) } != NVML_SUCCESS {
        return None;
    }
    Some(device)
}
