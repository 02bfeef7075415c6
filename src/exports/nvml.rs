//! The NVML functions the shim hooks: memory queries, so `nvidia-smi` shows the quota.

use crate::cuda::*;
use crate::hooks::nvml;

super::exports! {
    library: crate::real::NVML, failure: NVML_ERROR_UNKNOWN, missing: NVML_ERROR_UNINITIALIZED;

    fn nvmlDeviceGetMemoryInfo(device: NvmlDevice, memory: *mut NvmlMemory) => nvml::memory_info;
    fn nvmlDeviceGetMemoryInfo_v2(device: NvmlDevice, memory: *mut NvmlMemoryV2) => nvml::memory_info;
}
