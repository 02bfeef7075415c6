//! C structs of the driver API that exports read, laid out as in `cuda.h` (CUDA 13).

use std::ffi::c_void;

/// `CUmemLocation`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemLocation {
    /// `CUmemLocationType` (`CU_MEM_LOCATION_TYPE_DEVICE` = 1).
    pub kind: u32,
    /// The device ordinal for device locations.
    pub id: i32,
}

/// `CU_MEM_LOCATION_TYPE_DEVICE`.
pub const MEM_LOCATION_TYPE_DEVICE: u32 = 1;

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemAllocationProp {
    /// `CUmemAllocationType` (`CU_MEM_ALLOCATION_TYPE_PINNED` = 1).
    pub kind: u32,
    /// `CUmemAllocationHandleType` flags.
    pub requested_handle_types: u32,
    /// Where the memory lives.
    pub location: MemLocation,
    /// Windows only.
    pub win32_handle_meta_data: *mut c_void,
    /// `allocFlags`: compression type, RDMA capable, usage, reserved.
    pub alloc_flags: [u8; 8],
}

/// `CU_MEM_ALLOCATION_TYPE_PINNED`.
pub const MEM_ALLOCATION_TYPE_PINNED: u32 = 1;

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemAccessDesc {
    /// The device the access is for.
    pub location: MemLocation,
    /// `CUmemAccess_flags`: 0 none, 1 read, 3 read-write.
    pub flags: u32,
}

/// `CUmemPoolProps`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemPoolProps {
    /// `CUmemAllocationType`.
    pub alloc_type: u32,
    /// `CUmemAllocationHandleType` flags.
    pub handle_types: u32,
    /// Where the pool's memory lives.
    pub location: MemLocation,
    /// Windows only.
    pub win32_security_attributes: *mut c_void,
    /// Maximum pool size (0: no limit).
    pub max_size: usize,
    /// Usage hints.
    pub usage: u16,
    /// Whether RDMA capable.
    pub gpu_direct_rdma_capable: u8,
    /// Reserved.
    pub reserved: [u8; 53],
}

/// `CUDA_ARRAY_DESCRIPTOR_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ArrayDescriptor {
    /// Width in elements.
    pub width: usize,
    /// Height in elements (0 for 1D).
    pub height: usize,
    /// `CUarray_format`.
    pub format: u32,
    /// Channels per element (1, 2 or 4).
    pub num_channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Array3dDescriptor {
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

/// `CUlaunchConfig`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LaunchConfig {
    /// Grid dimensions in blocks.
    pub grid: [u32; 3],
    /// Block dimensions in threads.
    pub block: [u32; 3],
    /// Dynamic shared memory per block.
    pub shared_mem_bytes: u32,
    /// The stream (`CUstream`).
    pub stream: usize,
    /// `CUlaunchAttribute` array (ignored).
    pub attrs: *mut c_void,
    /// Its length.
    pub num_attrs: u32,
}

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
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
#[derive(Debug, Clone, Copy)]
pub struct NvmlMemoryV2 {
    /// Must be `NVML_MEMORY_V2`.
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

/// `nvmlMemory_v2`: the struct's size with version 2 in the top byte.
pub const NVML_MEMORY_V2: u32 = 40 | (2 << 24);

/// `nvmlProcessInfo_t` (also `nvmlProcessInfo_v2_t`), filled by
/// `nvmlDeviceGetComputeRunningProcesses_v2` / `_v3`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmlProcessInfo {
    /// The process id.
    pub pid: u32,
    /// Device memory the process uses, in bytes.
    pub used_gpu_memory: u64,
    /// The GPU instance (`NVML_VALUE_NOT_AVAILABLE` without MIG).
    pub gpu_instance_id: u32,
    /// The compute instance (`NVML_VALUE_NOT_AVAILABLE` without MIG).
    pub compute_instance_id: u32,
}

/// `nvmlProcessInfo_v1_t`, filled by `nvmlDeviceGetComputeRunningProcesses`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The GPU instance (`NVML_VALUE_NOT_AVAILABLE` without MIG).
    pub gpu_instance_id: u32,
    /// The compute instance (`NVML_VALUE_NOT_AVAILABLE` without MIG).
    pub compute_instance_id: u32,
}

/// `NVML_VALUE_NOT_AVAILABLE` as an `unsigned int`: the instance ids of a process on a GPU
/// without MIG.
pub const NVML_VALUE_NOT_AVAILABLE_U32: u32 = 0xFFFF_FFFF;

const _: () = {
    assert!(size_of::<MemAllocationProp>() == 32);
    assert!(size_of::<MemAccessDesc>() == 12);
    assert!(size_of::<MemPoolProps>() == 88);
    assert!(size_of::<ArrayDescriptor>() == 24);
    assert!(size_of::<Array3dDescriptor>() == 40);
    assert!(size_of::<LaunchConfig>() == 56);
    assert!(std::mem::offset_of!(LaunchConfig, stream) == 32);
    assert!(size_of::<NvmlMemory>() == 24);
    assert!(size_of::<NvmlProcessInfo>() == 24);
    assert!(size_of::<NvmlProcessInfoV1>() == 16);
    assert!(size_of::<NvmlMemoryV2>() == 40);
    assert!(size_of::<NvmlEventData>() == 32);
};
