//! The CUDA driver and NVML ABI that gpuslice speaks on both sides: the result codes,
//! constants and `#[repr(C)]` structs that the shim (`libgpuslice.so`) reads and writes as
//! it intercepts calls, and that the simulated GPU (`crates/fakecuda`) reads and writes as
//! it answers them. Declared once, so that the two can never disagree about a layout.
//!
//! Declared by hand, not taken from cudarc's bindings: their C enums are Rust enums, and
//! reading an enum value that a newer driver or program puts in a struct (a new
//! `CUmemLocationType`, say) is undefined behaviour. Here every C enum is a plain `u32`, so
//! an unknown value is just a number, and result codes cross the FFI edge as plain
//! integers: a newer driver may return a code this crate does not name.
//!
//! Layouts are those of `cuda.h` and `nvml.h` of CUDA 13 on 64-bit Linux (the same since
//! CUDA 12.0 for every struct here); sizes and offsets are checked at compile time below.

#![deny(missing_docs)]

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// A driver return code (`CUresult`), kept as a plain integer across the FFI edge.
pub type CUresult = u32;
/// A device ordinal (`CUdevice`).
pub type CUdevice = i32;
/// A device address (`CUdeviceptr`).
pub type CUdeviceptr = u64;
/// A VMM physical allocation handle (`CUmemGenericAllocationHandle`).
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
/// `CUhostFn`: a host function a stream calls when it reaches it.
pub type CUhostFn = Option<unsafe extern "C" fn(*mut c_void)>;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CUresult = 0;
/// `CUDA_ERROR_INVALID_VALUE`.
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// `CUDA_ERROR_INVALID_DEVICE`.
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
/// `CUDA_ERROR_INVALID_IMAGE`.
pub const CUDA_ERROR_INVALID_IMAGE: CUresult = 200;
/// `CUDA_ERROR_INVALID_CONTEXT`.
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
/// `CUDA_ERROR_INVALID_PTX`.
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
/// `CUDA_ERROR_FILE_NOT_FOUND`.
pub const CUDA_ERROR_FILE_NOT_FOUND: CUresult = 301;
/// `CUDA_ERROR_OPERATING_SYSTEM`.
pub const CUDA_ERROR_OPERATING_SYSTEM: CUresult = 304;
/// `CUDA_ERROR_INVALID_HANDLE`.
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
/// `CUDA_ERROR_ILLEGAL_STATE`.
pub const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;
/// `CUDA_ERROR_NOT_FOUND`.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
/// `CUDA_ERROR_NOT_READY`: queued work has not finished yet.
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
/// `CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`.
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CUresult = 701;
/// `CUDA_ERROR_NOT_SUPPORTED`.
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`.
pub const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
/// `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`.
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;
/// `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`.
pub const CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: CUresult = 906;
/// `CUDA_ERROR_CAPTURED_EVENT`.
pub const CUDA_ERROR_CAPTURED_EVENT: CUresult = 907;
/// `CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD`.
pub const CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: CUresult = 908;
/// `CUDA_ERROR_UNKNOWN`.
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
/// `CU_EVENT_DEFAULT`: an event that records its time.
pub const CU_EVENT_DEFAULT: u32 = 0x0;
/// `CU_EVENT_DISABLE_TIMING`: an event that records no time.
pub const CU_EVENT_DISABLE_TIMING: u32 = 0x2;
/// `CU_STREAM_LEGACY`, as a handle's address: the current context's NULL stream.
pub const CU_STREAM_LEGACY: usize = 0x1;
/// `CU_STREAM_PER_THREAD`, as a handle's address: the calling thread's default stream.
pub const CU_STREAM_PER_THREAD: usize = 0x2;

/// `CUuuid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUuuid {
    /// The 16 bytes of the UUID.
    pub bytes: [u8; 16],
}

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemLocation {
    /// `CUmemLocationType` ([`CU_MEM_LOCATION_TYPE_DEVICE`], host kinds, ...).
    pub kind: u32,
    /// The device ordinal for device locations.
    pub id: i32,
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAllocationProp {
    /// `CUmemAllocationType` ([`CU_MEM_ALLOCATION_TYPE_PINNED`]).
    pub kind: u32,
    /// `CUmemAllocationHandleType` flags.
    pub requested_handle_types: u32,
    /// Where the memory lives.
    pub location: CUmemLocation,
    /// Windows only.
    pub win32_handle_meta_data: *mut c_void,
    /// `allocFlags`: compression type, RDMA capable, usage, reserved.
    pub alloc_flags: [u8; 8],
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAccessDesc {
    /// The device the access is for.
    pub location: CUmemLocation,
    /// `CUmemAccess_flags`: 0 none, 1 read, 3 read-write.
    pub flags: u32,
}

/// `CUmemPoolProps`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemPoolProps {
    /// `CUmemAllocationType`.
    pub alloc_type: u32,
    /// `CUmemAllocationHandleType` flags.
    pub handle_types: u32,
    /// Where the pool's memory lives.
    pub location: CUmemLocation,
    /// Windows only.
    pub win32_security_attributes: *mut c_void,
    /// Maximum pool size (0: a system-dependent default).
    pub max_size: usize,
    /// Usage hints (a bitmask).
    pub usage: u16,
    /// Reserved, zero.
    pub reserved: [u8; 54],
}

/// `CUDA_ARRAY_DESCRIPTOR` (`_v2`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CudaArrayDescriptor {
    /// Width in elements.
    pub width: usize,
    /// Height in elements (0 for 1D).
    pub height: usize,
    /// `CUarray_format`.
    pub format: u32,
    /// Channels per element (1, 2 or 4).
    pub num_channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (`_v2`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CudaArray3dDescriptor {
    /// Width in elements.
    pub width: usize,
    /// Height in elements (0 for 1D).
    pub height: usize,
    /// Depth in elements (0 for 1D and 2D).
    pub depth: usize,
    /// `CUarray_format`.
    pub format: u32,
    /// Channels per element (1, 2 or 4).
    pub num_channels: u32,
    /// `CUDA_ARRAY3D_*` flags.
    pub flags: u32,
}

/// Bytes per channel element of a `CUarray_format`; `None` for a format this crate does not
/// know (a newer driver's), which a caller then treats conservatively.
pub fn array_format_bytes(format: u32) -> Option<u64> {
    match format {
        0x01 | 0x08 => Some(1),        // UNSIGNED_INT8, SIGNED_INT8
        0x02 | 0x09 | 0x10 => Some(2), // UNSIGNED_INT16, SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => Some(4), // UNSIGNED_INT32, SIGNED_INT32, FLOAT
        _ => None,
    }
}

/// `CUlaunchConfig` (`cuLaunchKernelEx`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUlaunchConfig {
    /// Grid dimensions in blocks (`gridDimX`, `Y`, `Z`).
    pub grid: [u32; 3],
    /// Block dimensions in threads (`blockDimX`, `Y`, `Z`).
    pub block: [u32; 3],
    /// Dynamic shared memory per block.
    pub shared_mem_bytes: u32,
    /// The stream (`hStream`).
    pub stream: CUstream,
    /// `CUlaunchAttribute` array.
    pub attrs: *mut c_void,
    /// Its length.
    pub num_attrs: u32,
}

/// `nvmlReturn_t`, kept as a plain integer.
pub type NvmlReturn = u32;
/// `NVML_SUCCESS`.
pub const NVML_SUCCESS: NvmlReturn = 0;
/// `NVML_ERROR_UNINITIALIZED`.
pub const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
/// `NVML_ERROR_INVALID_ARGUMENT`.
pub const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
/// `NVML_ERROR_NOT_SUPPORTED`.
pub const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
/// `NVML_ERROR_NOT_FOUND`.
pub const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
/// `NVML_ERROR_INSUFFICIENT_SIZE`.
pub const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
/// `NVML_ERROR_DRIVER_NOT_LOADED`.
pub const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
/// `NVML_ERROR_TIMEOUT`.
pub const NVML_ERROR_TIMEOUT: NvmlReturn = 10;
/// `NVML_ERROR_FUNCTION_NOT_FOUND`.
pub const NVML_ERROR_FUNCTION_NOT_FOUND: NvmlReturn = 13;
/// `NVML_ERROR_GPU_IS_LOST`.
pub const NVML_ERROR_GPU_IS_LOST: NvmlReturn = 15;
/// `NVML_ERROR_UNKNOWN`.
pub const NVML_ERROR_UNKNOWN: NvmlReturn = 999;
/// `nvmlDevice_t`.
pub type NvmlDevice = *mut c_void;

/// Length of the buffer NVML needs for a UUID string (`NVML_DEVICE_UUID_V2_BUFFER_SIZE`).
pub const NVML_UUID_BUFFER: usize = 96;
/// `nvmlMemory_v2`: the version of [`NvmlMemoryV2`], its size with 2 in the top byte.
pub const NVML_MEMORY_V2: u32 = 40 | (2 << 24);
/// `NVML_VALUE_NOT_AVAILABLE` as an `unsigned int`: the instance ids of a process on a GPU
/// without MIG.
pub const NVML_VALUE_NOT_AVAILABLE_U32: u32 = 0xFFFF_FFFF;

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlMemory {
    /// Total memory in bytes.
    pub total: u64,
    /// Unallocated memory in bytes.
    pub free: u64,
    /// Allocated memory in bytes.
    pub used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlMemoryV2 {
    /// Must be [`NVML_MEMORY_V2`].
    pub version: u32,
    /// Total memory in bytes.
    pub total: u64,
    /// Memory reserved by the driver and firmware.
    pub reserved: u64,
    /// Unallocated memory in bytes.
    pub free: u64,
    /// Allocated memory in bytes.
    pub used: u64,
}

/// `nvmlProcessInfo_t` (also `nvmlProcessInfo_v2_t`), as
/// `nvmlDeviceGetComputeRunningProcesses_v2` / `_v3` fill it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmlProcessInfo {
    /// The process id.
    pub pid: u32,
    /// Device memory the process uses, in bytes.
    pub used_gpu_memory: u64,
    /// The GPU instance ([`NVML_VALUE_NOT_AVAILABLE_U32`] without MIG).
    pub gpu_instance_id: u32,
    /// The compute instance ([`NVML_VALUE_NOT_AVAILABLE_U32`] without MIG).
    pub compute_instance_id: u32,
}

/// `nvmlProcessInfo_v1_t`, as `nvmlDeviceGetComputeRunningProcesses` fills it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmlProcessInfoV1 {
    /// The process id.
    pub pid: u32,
    /// Device memory the process uses, in bytes.
    pub used_gpu_memory: u64,
}

/// `nvmlEventData_t`, filled by `nvmlEventSetWait_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmlEventData {
    /// The device the event happened on (`nvmlDevice_t`).
    pub device: usize,
    /// The event's type (`nvmlEventType*`).
    pub event_type: u64,
    /// For an XID event, the XID.
    pub event_data: u64,
    /// The GPU instance ([`NVML_VALUE_NOT_AVAILABLE_U32`] without MIG).
    pub gpu_instance_id: u32,
    /// The compute instance ([`NVML_VALUE_NOT_AVAILABLE_U32`] without MIG).
    pub compute_instance_id: u32,
}

// The layouts of cuda.h and nvml.h (CUDA 13, LP64), checked where they are declared.
const _: () = {
    assert!(size_of::<CUuuid>() == 16);
    assert!(size_of::<CUmemLocation>() == 8);
    assert!(size_of::<CUmemAllocationProp>() == 32);
    assert!(offset_of!(CUmemAllocationProp, location) == 8);
    assert!(offset_of!(CUmemAllocationProp, alloc_flags) == 24);
    assert!(size_of::<CUmemAccessDesc>() == 12);
    assert!(size_of::<CUmemPoolProps>() == 88);
    assert!(offset_of!(CUmemPoolProps, location) == 8);
    assert!(offset_of!(CUmemPoolProps, max_size) == 24);
    assert!(offset_of!(CUmemPoolProps, usage) == 32);
    assert!(size_of::<CudaArrayDescriptor>() == 24);
    assert!(size_of::<CudaArray3dDescriptor>() == 40);
    assert!(size_of::<CUlaunchConfig>() == 56);
    assert!(offset_of!(CUlaunchConfig, shared_mem_bytes) == 24);
    assert!(offset_of!(CUlaunchConfig, stream) == 32);
    assert!(offset_of!(CUlaunchConfig, num_attrs) == 48);
    assert!(size_of::<NvmlMemory>() == 24);
    assert!(size_of::<NvmlMemoryV2>() == 40);
    assert!(offset_of!(NvmlMemoryV2, total) == 8);
    assert!(size_of::<NvmlProcessInfo>() == 24);
    assert!(offset_of!(NvmlProcessInfo, used_gpu_memory) == 8);
    assert!(offset_of!(NvmlProcessInfo, gpu_instance_id) == 16);
    assert!(size_of::<NvmlProcessInfoV1>() == 16);
    assert!(size_of::<NvmlEventData>() == 32);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_formats_have_their_element_sizes_and_unknown_ones_none() {
        assert_eq!(array_format_bytes(0x01), Some(1));
        assert_eq!(array_format_bytes(0x10), Some(2));
        assert_eq!(array_format_bytes(0x20), Some(4));
        assert_eq!(array_format_bytes(0xb0), None);
    }
}
