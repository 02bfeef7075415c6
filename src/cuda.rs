//! The few CUDA driver and NVML types the shim reads or writes, declared by hand.
//!
//! Why not cudarc's bindings: their C enums are Rust enums, and reading an enum value that
//! a newer driver or program puts in a struct (a new `CUmemLocationType`, say) is undefined
//! behaviour. Here every C enum is a plain `u32`, so an unknown value is just a number.

use std::ffi::c_void;

/// A driver return code, kept as a plain integer across the FFI edge.
pub type CUresult = u32;
/// A device ordinal.
pub type CUdevice = i32;
/// A device address.
pub type CUdeviceptr = u64;
/// A VMM physical allocation handle.
pub type CUmemGenericAllocationHandle = u64;
/// Opaque driver handles, only passed through.
pub type CUcontext = *mut c_void;
/// See [`CUcontext`].
pub type CUstream = *mut c_void;
/// See [`CUcontext`].
pub type CUmemoryPool = *mut c_void;
/// See [`CUcontext`].
pub type CUarray = *mut c_void;
/// See [`CUcontext`].
pub type CUmipmappedArray = *mut c_void;
/// See [`CUcontext`].
pub type CUfunction = *mut c_void;
/// See [`CUcontext`].
pub type CUgraphExec = *mut c_void;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// `CU_MEM_LOCATION_TYPE_DEVICE`: the only VMM location that takes device memory.
pub const CU_MEM_LOCATION_TYPE_DEVICE: u32 = 1;
/// `CU_MEM_LOCATION_TYPE_HOST`, `_HOST_NUMA`, `_HOST_NUMA_CURRENT`: host memory.
pub const CU_MEM_LOCATION_TYPES_HOST: [u32; 3] = [2, 3, 4];
/// `CU_MEM_ALLOCATION_TYPE_PINNED`: memory that stays where it was put (not managed).
pub const CU_MEM_ALLOCATION_TYPE_PINNED: u32 = 1;

/// `CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE`: the pool an allocation came from.
pub const CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: u32 = 17;
/// `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`: the memory a pool holds on its device
/// (`cuuint64_t`).
pub const CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: u32 = 5;
/// `CU_STREAM_CAPTURE_STATUS_ACTIVE`.
pub const CU_STREAM_CAPTURE_STATUS_ACTIVE: u32 = 1;

/// `CUhostFn`: a host function a stream calls when it reaches it.
pub type CUhostFn = Option<unsafe extern "C" fn(*mut c_void)>;

/// `CUuuid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUuuid {
    pub bytes: [u8; 16],
}

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemLocation {
    pub kind: u32,
    pub id: i32,
}

/// `CUmemAllocationProp` (CUDA 12/13 layout): only `location` is read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAllocationProp {
    pub kind: u32,
    pub requested_handle_types: u32,
    pub location: CUmemLocation,
    pub win32_handle_meta_data: *mut c_void,
    pub alloc_flags: [u8; 8],
}

/// `CUmemPoolProps`: only `alloc_type` and `location` are read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemPoolProps {
    pub alloc_type: u32,
    pub handle_types: u32,
    pub location: CUmemLocation,
    pub win32_security_attributes: *mut c_void,
    pub max_size: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUDA_ARRAY_DESCRIPTOR` (`_v2`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CudaArrayDescriptor {
    pub width: usize,
    pub height: usize,
    pub format: u32,
    pub num_channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (`_v2`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CudaArray3dDescriptor {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format: u32,
    pub num_channels: u32,
    pub flags: u32,
}

/// Bytes per channel element of a `CUarray_format`; `None` for a format this shim does not
/// know (a newer driver's), which the caller then charges conservatively.
pub fn array_format_bytes(format: u32) -> Option<u64> {
    match format {
        0x01 | 0x08 => Some(1),        // UNSIGNED_INT8, SIGNED_INT8
        0x02 | 0x09 | 0x10 => Some(2), // UNSIGNED_INT16, SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => Some(4), // UNSIGNED_INT32, SIGNED_INT32, FLOAT
        _ => None,
    }
}

/// `nvmlReturn_t`.
pub type NvmlReturn = u32;
pub const NVML_SUCCESS: NvmlReturn = 0;
pub const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
pub const NVML_ERROR_UNKNOWN: NvmlReturn = 999;
/// `nvmlDevice_t`.
pub type NvmlDevice = *mut c_void;

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlMemoryV2 {
    pub version: u32,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlProcessInfo_t` as `nvmlDeviceGetComputeRunningProcesses_v3` fills it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlProcessInfo {
    pub pid: u32,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
}

/// `NVML_ERROR_INSUFFICIENT_SIZE`.
pub const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;

/// Length of the buffer NVML needs for a UUID string (`NVML_DEVICE_UUID_V2_BUFFER_SIZE`).
pub const NVML_UUID_BUFFER: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn struct_layouts_match_the_cuda_headers() {
        assert_eq!(size_of::<CUmemAllocationProp>(), 32);
        assert_eq!(size_of::<CUmemPoolProps>(), 88);
        assert_eq!(offset_of!(CUmemPoolProps, location), 8);
        assert_eq!(offset_of!(CUmemAllocationProp, location), 8);
        assert_eq!(size_of::<CudaArrayDescriptor>(), 24);
        assert_eq!(size_of::<CudaArray3dDescriptor>(), 40);
        assert_eq!(size_of::<NvmlMemoryV2>(), 40);
        assert_eq!(offset_of!(NvmlMemoryV2, total), 8);
        assert_eq!(size_of::<NvmlProcessInfo>(), 24);
        assert_eq!(offset_of!(NvmlProcessInfo, used_gpu_memory), 8);
    }
}
