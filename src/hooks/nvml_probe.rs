//! What NVML says about a GPU, for the shim's own measurements (never shown to the program
//! as such): memory in use on the whole device, and memory in use by this process.

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

/// Device memory this process uses on the GPU with this UUID, per NVML. `None` if NVML
/// cannot say, or does not list this process (yet).
pub fn process_used(uuid: &GpuUuid) -> Option<u64> {
    match process_listing(uuid)? {
        Listing::Listed(bytes) => Some(bytes),
        Listing::NotListed => None,
    }
}

pub use crate::policy::footprint::Listing;

/// Reads NVML's list of processes on the GPU with this UUID and finds this process in it.
/// `None` when NVML cannot say, including when its PIDs are not this process's (a PID
/// namespace of its own: NVML numbers processes by the host's PIDs).
pub fn process_listing(uuid: &GpuUuid) -> Option<Listing> {
    if !nvml_sees_this_process() {
        return None;
    }
    let pid = std::process::id();
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
                return Some(
                    listed
                        .iter()
                        .find(|entry| entry.pid == pid)
                        .map_or(Listing::NotListed, |entry| {
                            Listing::Listed(entry.used_gpu_memory)
                        }),
                );
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

/// What a process-wide question has been answered so far.
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Whether NVML's PIDs are this process's (`nvml_sees_this_process`).
static SEES_THIS_PROCESS: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Whether NVML is initialized and usable for this process (`device`).
static NVML_READY: AtomicU8 = AtomicU8::new(UNKNOWN);

/// In a forked child: NVML is initialized again on first use (the parent's initialization
/// and handles were the parent's), and whether NVML's PIDs are this process's is asked
/// again.
pub(crate) fn forget_after_fork() {
    NVML_READY.store(UNKNOWN, Ordering::Release);
    SEES_THIS_PROCESS.store(UNKNOWN, Ordering::Relaxed);
}

/// Whether NVML's PIDs are this process's: only in the host's PID namespace.
pub fn nvml_sees_this_process() -> bool {
    /// The inode number of the initial PID namespace, fixed by the kernel
    /// (`PROC_PID_INIT_INO`).
    const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;
    match SEES_THIS_PROCESS.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            use std::os::unix::fs::MetadataExt;
            let host = std::fs::metadata("/proc/self/ns/pid")
                .is_ok_and(|ns| ns.ino() == INIT_PID_NAMESPACE);
            SEES_THIS_PROCESS.store(if host { YES } else { NO }, Ordering::Relaxed);
            host
        }
    }
}

/// The NVML handle of the GPU with this UUID, NVML initialized on first use.
fn device(uuid: &GpuUuid) -> Option<NvmlDevice> {
    if NVML_READY.load(Ordering::Acquire) == UNKNOWN {
        let ready = real::nvml::nvmlInit_v2()
            // SAFETY: nvmlInit_v2 takes no arguments and may be called more than once.
            .is_some_and(|init| unsafe { init() } == NVML_SUCCESS);
        NVML_READY.store(if ready { YES } else { NO }, Ordering::Release);
    }
    if NVML_READY.load(Ordering::Acquire) != YES {
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
