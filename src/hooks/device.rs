//! Which GPU a call is about. Quotas are per physical GPU, keyed by UUID: ordinals change
//! with `CUDA_VISIBLE_DEVICES`, NVML handles are per process.

use std::ffi::{CStr, c_char};
use std::sync::OnceLock;

use gpuslice_ledger::GpuUuid;
use parking_lot::Mutex;

use crate::allocations::ContextHandle;
use crate::cuda::{
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, CUdevice, CUresult, CUstream, CUuuid,
    NVML_ERROR_UNKNOWN, NVML_SUCCESS, NVML_UUID_BUFFER, NvmlDevice, NvmlReturn,
};
use crate::log::{Level, RateLimit, log};
use crate::policy::memory::{Gpu, MemoryPolicy};
use crate::real;

const CACHED_ORDINALS: usize = 64;

/// CUDA ordinals and NVML handles of this process, mapped to the tenant's GPUs.
#[derive(Debug)]
pub struct DeviceTable {
    ordinals: [OnceLock<Gpu>; CACHED_ORDINALS],
    nvml_handles: Mutex<Vec<(usize, Gpu)>>,
    ledger_errors: RateLimit,
}

impl DeviceTable {
    /// An empty table.
    pub fn new() -> DeviceTable {
        DeviceTable {
            ordinals: std::array::from_fn(|_| OnceLock::new()),
            nvml_handles: Mutex::new(Vec::new()),
            ledger_errors: RateLimit::new(),
        }
    }

    /// The GPU behind a CUDA device ordinal.
    pub fn by_ordinal(&self, policy: &MemoryPolicy, device: CUdevice) -> Result<Gpu, CUresult> {
        let cache = usize::try_from(device)
            .ok()
            .and_then(|ordinal| self.ordinals.get(ordinal));
        if let Some(gpu) = cache.and_then(OnceLock::get) {
            return Ok(*gpu);
        }
        let uuid = ordinal_uuid(device)?;
        let gpu = self
            .register(policy, uuid)
            .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        if let Some(cache) = cache {
            let _ = cache.set(gpu);
        }
        Ok(gpu)
    }

    /// The GPU of the calling thread's current context.
    pub fn current(&self, policy: &MemoryPolicy) -> Result<Gpu, CUresult> {
        let get_device = real::cuda::cuCtxGetDevice().ok_or(crate::cuda::CUDA_ERROR_NOT_FOUND)?;
        let mut device: CUdevice = 0;
        // SAFETY: `device` is a valid place for the driver to write an ordinal.
        let status = unsafe { get_device(&mut device) };
        if status != CUDA_SUCCESS {
            return Err(status);
        }
        self.by_ordinal(policy, device)
    }

    /// The GPU of the calling thread's current context, and that context (`None` where the
    /// driver would not say), to record an allocation made in it under.
    pub fn current_with_context(
        &self,
        policy: &MemoryPolicy,
    ) -> Result<(Gpu, Option<ContextHandle>), CUresult> {
        let gpu = self.current(policy)?;
        Ok((gpu, current_context().map(ContextHandle)))
    }

    /// The GPU a stream-ordered call runs on: the stream's own device where the driver can
    /// say (CUDA 12.8 and later), else the current context's.
    pub fn of_stream(&self, policy: &MemoryPolicy, stream: CUstream) -> Result<Gpu, CUresult> {
        if !stream.is_null()
            && let Some(stream_device) = real::cuda::cuStreamGetDevice()
        {
            let mut device: CUdevice = 0;
            // SAFETY: the stream handle is the caller's; `device` is a valid out-pointer.
            if unsafe { stream_device(stream, &mut device) } == CUDA_SUCCESS {
                return self.by_ordinal(policy, device);
            }
        }
        self.current(policy)
    }

    /// The GPU behind an NVML device handle.
    pub fn by_nvml(&self, policy: &MemoryPolicy, device: NvmlDevice) -> Result<Gpu, NvmlReturn> {
        let key = device as usize;
        if let Some((_, gpu)) = self.nvml_handles.lock().iter().find(|(k, _)| *k == key) {
            return Ok(*gpu);
        }
        let uuid = nvml_uuid(device)?;
        let gpu = self.register(policy, uuid).ok_or(NVML_ERROR_UNKNOWN)?;
        self.nvml_handles.lock().push((key, gpu));
        Ok(gpu)
    }

    fn register(&self, policy: &MemoryPolicy, uuid: GpuUuid) -> Option<Gpu> {
        match policy.gpu(uuid) {
            Ok(gpu) => Some(gpu),
            Err(error) => {
                if self.ledger_errors.admit().is_some() {
                    log!(Level::Error, "cannot record {uuid} in the ledger: {error}");
                }
                None
            }
        }
    }
}

impl Default for DeviceTable {
    fn default() -> Self {
        DeviceTable::new()
    }
}

/// The calling thread's current context, if it has one.
#[inline]
pub(crate) fn current_context() -> Option<usize> {
    let get = real::cuda::cuCtxGetCurrent()?;
    let mut context: crate::cuda::CUcontext = std::ptr::null_mut();
    // SAFETY: `context` is a valid place for the driver to write a handle.
    let status = unsafe { get(&raw mut context) };
    (status == CUDA_SUCCESS && !context.is_null()).then_some(context as usize)
}

/// The UUID of a CUDA device ordinal, from the driver.
pub fn ordinal_uuid(device: CUdevice) -> Result<GpuUuid, CUresult> {
    let get_uuid = real::cuda::cuDeviceGetUuid_v2()
        .or_else(real::cuda::cuDeviceGetUuid)
        .ok_or(crate::cuda::CUDA_ERROR_NOT_FOUND)?;
    let mut uuid = CUuuid::default();
    // SAFETY: `uuid` is a valid 16-byte out-parameter; `device` is the caller's ordinal.
    let status = unsafe { get_uuid(&mut uuid, device) };
    if status != CUDA_SUCCESS {
        return Err(status);
    }
    Ok(GpuUuid(uuid.bytes))
}

/// The UUID of an NVML device handle, from NVML.
fn nvml_uuid(device: NvmlDevice) -> Result<GpuUuid, NvmlReturn> {
    let get_uuid = real::nvml::nvmlDeviceGetUUID().ok_or(NVML_ERROR_UNKNOWN)?;
    let mut buffer = [0 as c_char; NVML_UUID_BUFFER];
    let length = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
    // SAFETY: `buffer` has the length we pass; NVML NUL-terminates what it writes.
    let status = unsafe { get_uuid(device, buffer.as_mut_ptr(), length) };
    if status != NVML_SUCCESS {
        return Err(status);
    }
    // SAFETY: NVML wrote a NUL-terminated string into `buffer` (it reported success).
    let text = unsafe { CStr::from_ptr(buffer.as_ptr()) };
    text.to_str()
        .ok()
        .and_then(|text| GpuUuid::parse(text).ok())
        .ok_or(NVML_ERROR_UNKNOWN)
}
