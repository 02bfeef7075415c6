//! The GPUs of this node and their health, through NVML (`libnvidia-ml.so.1`, loaded at run
//! time so that the plugin starts, and says why it advertises nothing, on a node without a
//! driver).

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::fmt;

use gpuslice_ledger::GpuUuid;

/// `nvmlReturn_t`.
type Return = c_int;
/// `nvmlDevice_t`.
type Handle = *mut c_void;
/// `NVML_SUCCESS`.
const SUCCESS: Return = 0;
/// `NVML_DEVICE_UUID_V2_BUFFER_SIZE`.
const UUID_BUFFER: usize = 96;

/// `nvmlMemory_t` (v1).
#[repr(C)]
#[derive(Debug, Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

type InitFn = unsafe extern "C" fn() -> Return;
type CountFn = unsafe extern "C" fn(*mut c_uint) -> Return;
type ByIndexFn = unsafe extern "C" fn(c_uint, *mut Handle) -> Return;
type ByUuidFn = unsafe extern "C" fn(*const c_char, *mut Handle) -> Return;
type UuidFn = unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> Return;
type MemoryFn = unsafe extern "C" fn(Handle, *mut Memory) -> Return;
type ErrorStringFn = unsafe extern "C" fn(Return) -> *const c_char;
type ProcessesFn = unsafe extern "C" fn(Handle, *mut c_uint, *mut ProcessInfo) -> Return;

/// `nvmlProcessInfo_t` as `nvmlDeviceGetComputeRunningProcesses_v3` fills it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `NVML_ERROR_INSUFFICIENT_SIZE`.
const INSUFFICIENT_SIZE: Return = 7;

/// A process with a context on a GPU, as NVML lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    /// Its PID in the host's PID namespace (NVML's numbering, whoever asks).
    pub pid: u32,
    /// The device memory NVML says it holds (0 where NVML cannot tell).
    pub memory_bytes: u64,
}

/// A GPU of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    /// NVML's index (what `nvidia-smi -L` and NVIDIA's CDI names by index use).
    pub index: u32,
    /// The GPU's UUID.
    pub uuid: GpuUuid,
    /// Its memory, as NVML reports the total.
    pub memory_bytes: u64,
}

/// NVML could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// The library is missing (no NVIDIA driver on the node, or not mounted in).
    #[error("libnvidia-ml.so.1 cannot be loaded ({0}): no NVIDIA driver here?")]
    Load(String),
    /// A function is missing from the library.
    #[error("libnvidia-ml.so.1 lacks {0}")]
    Symbol(&'static str),
    /// A call failed.
    #[error("{call} failed: {message}")]
    Call {
        /// The NVML function.
        call: &'static str,
        /// NVML's description and code.
        message: String,
    },
}

/// NVML, loaded and initialized, for the life of the process.
pub struct Nvml {
    _lib: libloading::Library,
    count: CountFn,
    by_index: ByIndexFn,
    by_uuid: ByUuidFn,
    uuid: UuidFn,
    memory: MemoryFn,
    error_string: ErrorStringFn,
    /// `nvmlShutdown`, called when this value goes (each `nvmlInit_v2` wants one).
    shutdown: InitFn,
    /// `nvmlDeviceGetComputeRunningProcesses_v3`; `None` with an NVML too old to have it.
    processes: Option<ProcessesFn>,
}

impl fmt::Debug for Nvml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nvml")
    }
}

/// A symbol of `lib`, copied out.
///
/// # Safety
///
/// `T` must be the symbol's type as nvml.h declares it, and the copy must not be used after
/// `lib` is unloaded.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &'static str) -> Result<T, NvmlError> {
    // SAFETY: the caller vouches for the type and the lifetime.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| NvmlError::Symbol(name))
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: nvmlShutdown takes nothing and matches the nvmlInit_v2 of `open`; the
        // library is still loaded (`_lib` is dropped after this runs).
        unsafe { (self.shutdown)() };
    }
}

impl Nvml {
    /// Loads `libnvidia-ml.so.1` and calls `nvmlInit_v2`.
    pub fn open() -> Result<Nvml, NvmlError> {
        // SAFETY: loading NVML runs its initializers, as every program that uses it does.
        let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }
            .map_err(|e| NvmlError::Load(e.to_string()))?;
        // SAFETY: each type is the function's signature in nvml.h; the copies live in the
        // returned value beside `lib`, which keeps the library loaded while they exist.
        let nvml = unsafe {
            let init: InitFn = symbol(&lib, "nvmlInit_v2")?;
            let nvml = Nvml {
                count: symbol(&lib, "nvmlDeviceGetCount_v2")?,
                by_index: symbol(&lib, "nvmlDeviceGetHandleByIndex_v2")?,
                by_uuid: symbol(&lib, "nvmlDeviceGetHandleByUUID")?,
                uuid: symbol(&lib, "nvmlDeviceGetUUID")?,
                memory: symbol(&lib, "nvmlDeviceGetMemoryInfo")?,
                error_string: symbol(&lib, "nvmlErrorString")?,
                shutdown: symbol(&lib, "nvmlShutdown")?,
                processes: symbol(&lib, "nvmlDeviceGetComputeRunningProcesses_v3").ok(),
                _lib: lib,
            };
            (nvml.check("nvmlInit_v2", init()))?;
            nvml
        };
        Ok(nvml)
    }

    /// `Ok` for `NVML_SUCCESS`, else the error with NVML's description.
    fn check(&self, call: &'static str, rc: Return) -> Result<(), NvmlError> {
        if rc == SUCCESS {
            return Ok(());
        }
        // SAFETY: nvmlErrorString takes any code and returns a static string or null.
        let text = unsafe { (self.error_string)(rc) };
        let message = if text.is_null() {
            format!("NVML error {rc}")
        } else {
            // SAFETY: non-null, NUL-terminated and static, as NVML documents.
            let text = unsafe { CStr::from_ptr(text) };
            format!("{} (NVML error {rc})", text.to_string_lossy())
        };
        Err(NvmlError::Call { call, message })
    }

    /// Every GPU NVML lists, in its order.
    pub fn gpus(&self) -> Result<Vec<Gpu>, NvmlError> {
        let mut n: c_uint = 0;
        // SAFETY: `n` is a valid place for the count.
        self.check("nvmlDeviceGetCount_v2", unsafe { (self.count)(&raw mut n) })?;
        (0..n)
            .map(|index| {
                let mut handle: Handle = std::ptr::null_mut();
                // SAFETY: `handle` is a valid place for the handle.
                let rc = unsafe { (self.by_index)(index, &raw mut handle) };
                self.check("nvmlDeviceGetHandleByIndex_v2", rc)?;
                Ok(Gpu {
                    index,
                    uuid: self.uuid_of(handle)?,
                    memory_bytes: self.memory_of(handle)?,
                })
            })
            .collect()
    }

    /// The UUID of a device.
    fn uuid_of(&self, handle: Handle) -> Result<GpuUuid, NvmlError> {
        let mut buffer = [0 as c_char; UUID_BUFFER];
        let len = c_uint::try_from(UUID_BUFFER).unwrap_or(c_uint::MAX);
        // SAFETY: the buffer holds `len` bytes; `handle` came from NVML.
        let rc = unsafe { (self.uuid)(handle, buffer.as_mut_ptr(), len) };
        self.check("nvmlDeviceGetUUID", rc)?;
        if let Some(last) = buffer.last_mut() {
            *last = 0;
        }
        // SAFETY: NUL-terminated: NVML wrote a string, and the last byte is NUL regardless.
        let text = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy();
        GpuUuid::parse(&text).map_err(|_| NvmlError::Call {
            call: "nvmlDeviceGetUUID",
            message: format!("returned {text:?}, which is not a GPU UUID"),
        })
    }

    /// The total memory of a device.
    fn memory_of(&self, handle: Handle) -> Result<u64, NvmlError> {
        let mut info = Memory::default();
        // SAFETY: `info` is a valid nvmlMemory_t to fill; `handle` came from NVML.
        let rc = unsafe { (self.memory)(handle, &raw mut info) };
        self.check("nvmlDeviceGetMemoryInfo", rc)?;
        Ok(info.total)
    }

    /// The processes with a context on the GPU with this UUID.
    pub fn processes(&self, uuid: &GpuUuid) -> Result<Vec<GpuProcess>, NvmlError> {
        let list = self
            .processes
            .ok_or(NvmlError::Symbol("nvmlDeviceGetComputeRunningProcesses_v3"))?;
        let handle = self.handle_of(uuid)?;
        let mut entries = vec![ProcessInfo::default(); 64];
        // Processes come and go between calls: a few tries with the size NVML asks for.
        for _ in 0..4 {
            let mut count = c_uint::try_from(entries.len()).unwrap_or(c_uint::MAX);
            // SAFETY: `entries` has room for `count` structs of the layout the v3 call fills;
            // `handle` came from NVML.
            let rc = unsafe { list(handle, &raw mut count, entries.as_mut_ptr()) };
            if rc == INSUFFICIENT_SIZE {
                let needed = usize::try_from(count)
                    .unwrap_or(usize::MAX)
                    .saturating_add(8);
                entries.resize(needed.min(1 << 16), ProcessInfo::default());
                continue;
            }
            self.check("nvmlDeviceGetComputeRunningProcesses_v3", rc)?;
            let listed = entries
                .get(..usize::try_from(count).unwrap_or(0))
                .unwrap_or(&[]);
            return Ok(listed
                .iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    // NVML_VALUE_NOT_AVAILABLE (all ones) where it cannot tell.
                    memory_bytes: if p.used_gpu_memory == u64::MAX {
                        0
                    } else {
                        p.used_gpu_memory
                    },
                })
                .collect());
        }
        Err(NvmlError::Call {
            call: "nvmlDeviceGetComputeRunningProcesses_v3",
            message: "the list of processes kept growing".into(),
        })
    }

    /// The NVML handle of the GPU with this UUID.
    fn handle_of(&self, uuid: &GpuUuid) -> Result<Handle, NvmlError> {
        let text = CString::new(uuid.to_string()).map_err(|_| NvmlError::Call {
            call: "nvmlDeviceGetHandleByUUID",
            message: "the UUID cannot be passed to NVML".into(),
        })?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: `text` is NUL-terminated and outlives the call; `handle` is a valid place.
        let rc = unsafe { (self.by_uuid)(text.as_ptr(), &raw mut handle) };
        self.check("nvmlDeviceGetHandleByUUID", rc)?;
        Ok(handle)
    }

    /// Whether the GPU answers: `None` when it does; otherwise what NVML said (it is gone,
    /// lost, or cannot report its memory).
    pub fn problem(&self, uuid: &GpuUuid) -> Option<String> {
        let Ok(text) = CString::new(uuid.to_string()) else {
            return Some("its UUID cannot be passed to NVML".into());
        };
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: `text` is NUL-terminated and outlives the call; `handle` is a valid place.
        let rc = unsafe { (self.by_uuid)(text.as_ptr(), &raw mut handle) };
        if let Err(e) = self.check("nvmlDeviceGetHandleByUUID", rc) {
            return Some(e.to_string());
        }
        self.memory_of(handle).err().map(|e| e.to_string())
    }
}
