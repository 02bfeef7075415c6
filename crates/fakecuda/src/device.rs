//! A simulated device: its identity, attributes and memory capacity, shared with every
//! process that uses the same state directory.

use std::ffi::CStr;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::context::PrimaryState;
use crate::error::{CuError, CuResult};
use crate::ledger::{Ledger, Process};
use crate::log;
use crate::pool;

/// The name every simulated device reports.
pub const NAME: &CStr = c"gpuslice simulated GPU";
/// Compute capability (major, minor): an H100's.
pub const COMPUTE_CAPABILITY: (i32, i32) = (9, 0);

/// The UUID of physical device `index`: `fa 4e c0 da 00 00 40 00 80 00 00 00 00 00 00
/// <index>`.
pub fn uuid_of(index: usize) -> [u8; 16] {
    let mut uuid = [
        0xfa, 0x4e, 0xc0, 0xda, 0x00, 0x00, 0x40, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0,
    ];
    uuid[15] = u8::try_from(index).unwrap_or(u8::MAX);
    uuid
}

/// The UUID of physical device `index` as NVML and nvidia-smi print it:
/// `GPU-fa4ec0da-0000-4000-8000-00000000000<index>`.
pub fn uuid_string_of(index: usize) -> String {
    let mut s = String::from("GPU-");
    for (i, byte) in uuid_of(index).iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// One simulated device of this process's driver.
#[derive(Debug)]
pub struct Device {
    /// The physical device's index: its place in `FAKECUDA_DEVICES`, its NVML index, the
    /// last byte of its UUID and the name of its state file.
    pub index: usize,
    /// Its CUDA ordinal in this process (`None`: hidden by `CUDA_VISIBLE_DEVICES`).
    pub ordinal: Option<usize>,
    /// Memory capacity in bytes.
    pub capacity: u64,
    /// Device memory each live context takes.
    pub context_footprint: u64,
    /// Device memory each loaded module takes (`FAKECUDA_MODULE_FOOTPRINT`).
    pub module_footprint: u64,
    /// Whether kernels share the device's time with other processes' (`FAKECUDA_TIMESLICE`).
    pub time_sliced: bool,
    /// Percent of its time lost while it time-slices (`FAKECUDA_SWITCH_LOSS`).
    pub switch_loss_percent: u32,
    ledger: Ledger,
    /// The primary context's reference count and flags.
    pub primary: Mutex<PrimaryState>,
    /// The device's default memory pool.
    pub default_pool: usize,
    current_pool: AtomicUsize,
}

/// Device memory held by this process, given back to the device when dropped.
#[derive(Debug)]
pub struct Charge {
    device: &'static Device,
    bytes: u64,
}

impl Charge {
    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `bytes` more of the device's memory into this charge (a memory pool growing);
    /// `CUDA_ERROR_OUT_OF_MEMORY`, and nothing taken, if they do not fit.
    pub fn grow(&mut self, bytes: u64) -> CuResult {
        let mut more = self.device.reserve(bytes)?;
        self.bytes += std::mem::take(&mut more.bytes);
        Ok(())
    }

    /// Gives `bytes` of this charge back to the device (all of it, at most).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        if bytes > 0 {
            self.bytes -= bytes;
            self.device.ledger.release(bytes);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.device.ledger.release(self.bytes);
        }
    }
}

/// A live context's hold on a device: its footprint of memory, and its place in the count of
/// this process's contexts that makes NVML list the process. Both are given back when dropped.
#[derive(Debug)]
pub struct ContextHold {
    charge: Charge,
}

impl Drop for ContextHold {
    fn drop(&mut self) {
        self.charge.device.ledger.remove_context();
    }
}

/// The device memory of one simulated device and the per-device footprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Memory capacity in bytes.
    pub capacity: u64,
    /// Device memory each live context takes.
    pub context_footprint: u64,
    /// Device memory each loaded module takes.
    pub module_footprint: u64,
}

impl Device {
    /// Opens device `index`'s state file in `state_dir`. With `time_sliced`, kernels share
    /// the device's time with other processes', losing `switch_loss_percent` of it while
    /// they do (see `kernel.rs`).
    pub fn open(
        index: usize,
        sizes: Sizes,
        state_dir: &Path,
        time_sliced: bool,
        switch_loss_percent: u32,
    ) -> std::io::Result<Device> {
        let Sizes {
            capacity,
            context_footprint,
            module_footprint,
        } = sizes;
        let ledger = Ledger::open(&state_dir.join(format!("device-{index}.state")))?;
        let default_pool = pool::create_default(index);
        Ok(Device {
            index,
            ordinal: Some(index),
            capacity,
            context_footprint,
            module_footprint,
            time_sliced,
            switch_loss_percent: switch_loss_percent.min(crate::config::MAX_SWITCH_LOSS),
            ledger,
            primary: Mutex::new(PrimaryState::new()),
            default_pool,
            current_pool: AtomicUsize::new(default_pool),
        })
    }

    /// The device's UUID: `fa 4e c0 da 00 00 40 00 80 00 00 00 00 00 00 <index>`.
    pub fn uuid(&self) -> [u8; 16] {
        uuid_of(self.index)
    }

    /// The UUID as NVML and nvidia-smi print it: `GPU-fa4ec0da-0000-4000-8000-00000000000<i>`.
    pub fn uuid_string(&self) -> String {
        uuid_string_of(self.index)
    }

    /// The device's CUDA ordinal in this process: its place in `CUDA_VISIBLE_DEVICES`, or
    /// `CUDA_ERROR_INVALID_DEVICE` if the variable hides it (no CUDA call can reach a
    /// hidden device, but NVML still lists it).
    pub fn ordinal(&self) -> CuResult<i32> {
        self.ordinal
            .and_then(|o| i32::try_from(o).ok())
            .ok_or(CuError::InvalidDevice)
    }

    /// Reserves `bytes` of device memory, first reclaiming dead processes' memory if the
    /// device looks full.
    pub fn reserve(&'static self, bytes: u64) -> CuResult<Charge> {
        if bytes == 0 {
            return Ok(Charge {
                device: self,
                bytes: 0,
            });
        }
        for attempt in 0..2 {
            match self.ledger.try_reserve(bytes, self.capacity) {
                Ok(true) => {
                    return Ok(Charge {
                        device: self,
                        bytes,
                    });
                }
                Ok(false) if attempt == 0 => {
                    self.ledger.reclaim_dead();
                }
                Ok(false) => break,
                Err(e) => {
                    log::once(&format!("fakecuda: device {}: {e}", self.index));
                    return Err(CuError::OperatingSystem);
                }
            }
        }
        Err(CuError::OutOfMemory)
    }

    /// Takes a new context's footprint and counts the context for this process (claiming
    /// the process's slot, and so recording its pid, even when the footprint is 0).
    pub fn hold_context(&'static self) -> CuResult<ContextHold> {
        let charge = self.reserve(self.context_footprint)?;
        match self.ledger.add_context() {
            Ok(true) => Ok(ContextHold { charge }),
            // Only after release_all, at exit: the device is gone for this process.
            Ok(false) => Err(CuError::OutOfMemory),
            Err(e) => {
                log::once(&format!("fakecuda: device {}: {e}", self.index));
                Err(CuError::OperatingSystem)
            }
        }
    }

    /// The live processes with a context on this device (reclaiming dead processes' memory
    /// on the way): what `nvmlDeviceGetComputeRunningProcesses` lists.
    pub fn processes(&self) -> Vec<Process> {
        self.ledger.processes()
    }

    /// `(free, total)` after reclaiming dead processes' memory: what `cuMemGetInfo` and
    /// `nvmlDeviceGetMemoryInfo` report.
    pub fn memory_info(&self) -> (u64, u64) {
        self.ledger.reclaim_dead();
        let used = self.ledger.used().min(self.capacity);
        (self.capacity - used, self.capacity)
    }

    /// Bytes this process holds on the device (allocations, context footprints and module
    /// memory).
    pub fn held_by_this_process(&self) -> u64 {
        self.ledger.held()
    }

    /// The device's shared state file, where kernels mark this process as executing.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Gives back everything this process holds (at exit).
    pub fn release_all(&self) {
        self.ledger.release_all();
    }

    /// The pool `cuMemAllocAsync` allocates from.
    pub fn current_pool(&self) -> usize {
        self.current_pool.load(Ordering::Acquire)
    }

    /// Sets the pool `cuMemAllocAsync` allocates from.
    pub fn set_current_pool(&self, pool: usize) {
        self.current_pool.store(pool, Ordering::Release);
    }

    /// `cuDeviceGetAttribute`: H100-like values; attributes the simulator does not model are 0.
    pub fn attribute(&self, attribute: u32) -> i32 {
        match attribute {
            1 => 1024,                  // MAX_THREADS_PER_BLOCK
            2 | 3 => 1024,              // MAX_BLOCK_DIM_X, _Y
            4 => 64,                    // MAX_BLOCK_DIM_Z
            5 => i32::MAX,              // MAX_GRID_DIM_X
            6 | 7 => 65535,             // MAX_GRID_DIM_Y, _Z
            8 => 49152,                 // MAX_SHARED_MEMORY_PER_BLOCK
            9 => 65536,                 // TOTAL_CONSTANT_MEMORY
            10 => 32,                   // WARP_SIZE
            11 => i32::MAX,             // MAX_PITCH
            12 => 65536,                // MAX_REGISTERS_PER_BLOCK
            13 => 1_980_000,            // CLOCK_RATE (kHz)
            14 => 512,                  // TEXTURE_ALIGNMENT
            15 => 1,                    // GPU_OVERLAP
            16 => 132,                  // MULTIPROCESSOR_COUNT
            19 => 1,                    // CAN_MAP_HOST_MEMORY
            30 => 512,                  // SURFACE_ALIGNMENT
            31 => 1,                    // CONCURRENT_KERNELS
            32 => 1,                    // ECC_ENABLED
            33 => self.pci_bus_id(),    // PCI_BUS_ID
            36 => 2_619_000,            // MEMORY_CLOCK_RATE (kHz)
            37 => 5120,                 // GLOBAL_MEMORY_BUS_WIDTH
            38 => 50 << 20,             // L2_CACHE_SIZE
            39 => 2048,                 // MAX_THREADS_PER_MULTIPROCESSOR
            40 => 3,                    // ASYNC_ENGINE_COUNT
            41 => 1,                    // UNIFIED_ADDRESSING
            51 => 32,                   // TEXTURE_PITCH_ALIGNMENT
            75 => COMPUTE_CAPABILITY.0, // COMPUTE_CAPABILITY_MAJOR
            76 => COMPUTE_CAPABILITY.1, // COMPUTE_CAPABILITY_MINOR
            78 => 1,                    // STREAM_PRIORITIES_SUPPORTED
            79 | 80 => 1,               // GLOBAL_ / LOCAL_L1_CACHE_SUPPORTED
            81 => 233_472,              // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
            82 => 65536,                // MAX_REGISTERS_PER_MULTIPROCESSOR
            83 => 1,                    // MANAGED_MEMORY
            86 => 0,                    // HOST_NATIVE_ATOMIC_SUPPORTED
            89 => 1,                    // CONCURRENT_MANAGED_ACCESS
            90 => 1,                    // COMPUTE_PREEMPTION_SUPPORTED
            91 => 1,                    // CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
            95 => 1,                    // COOPERATIVE_LAUNCH
            97 => 232_448,              // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            99 => 1,                    // HOST_REGISTER_SUPPORTED
            102 => 1,                   // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
            103 => 1,                   // HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
            106 => 32,                  // MAX_BLOCKS_PER_MULTIPROCESSOR
            108 => 32 << 20,            // MAX_PERSISTING_L2_CACHE_SIZE
            109 => 128 << 20,           // MAX_ACCESS_POLICY_WINDOW_SIZE
            111 => 1024,                // RESERVED_SHARED_MEMORY_PER_BLOCK
            115 => 1,                   // MEMORY_POOLS_SUPPORTED
            119 => 1,                   // MEMPOOL_SUPPORTED_HANDLE_TYPES (POSIX fd)
            _ => 0,
        }
    }

    fn pci_bus_id(&self) -> i32 {
        i32::try_from(self.index).map_or(i32::MAX, |i| i + 0x18)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: usize, dir: &Path) -> &'static Device {
        let sizes = Sizes {
            capacity: 1000,
            context_footprint: 100,
            module_footprint: 10,
        };
        Box::leak(Box::new(Device::open(index, sizes, dir, true, 0).unwrap()))
    }

    #[test]
    fn uuid_strings_follow_the_documented_pattern() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            device(0, dir.path()).uuid_string(),
            "GPU-fa4ec0da-0000-4000-8000-000000000000"
        );
        assert_eq!(
            device(3, dir.path()).uuid_string(),
            "GPU-fa4ec0da-0000-4000-8000-000000000003"
        );
    }

    #[test]
    fn charges_are_given_back_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(0, dir.path());
        let a = dev.reserve(600).unwrap();
        assert_eq!(dev.reserve(401).unwrap_err(), CuError::OutOfMemory);
        assert_eq!(dev.memory_info(), (400, 1000));
        drop(a);
        assert_eq!(dev.memory_info(), (1000, 1000));
        let b = dev.reserve(1000).unwrap();
        assert_eq!((b.bytes(), dev.held_by_this_process()), (1000, 1000));
    }

    #[test]
    fn a_context_hold_lists_the_process_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(0, dir.path());
        assert_eq!(dev.processes(), []);
        let hold = dev.hold_context().unwrap();
        let charge = dev.reserve(dev.module_footprint).unwrap();
        let pid = std::process::id();
        assert_eq!(dev.processes(), [Process { pid, used: 110 }]);
        drop(hold);
        assert_eq!(dev.processes(), []);
        assert_eq!(dev.memory_info(), (990, 1000));
        drop(charge);
        assert_eq!(dev.memory_info(), (1000, 1000));
    }
}
