//! The CUDA driver functions the shim hooks. Everything else in libcuda is untouched.

use std::ffi::{c_char, c_void};

use crate::cuda::*;
use crate::hooks::{context, launch, memory, pools, procaddr, stream, vmm};

super::exports! {
    library: crate::real::CUDA, failure: CUDA_ERROR_UNKNOWN, missing: CUDA_ERROR_NOT_FOUND;

    // How calls reach us.
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) => procaddr::get_proc_address[pfn];
    fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64, status: *mut i32) => procaddr::get_proc_address[pfn];

    // Initialization and contexts.
    fn cuInit(flags: u32) => context::init[];
    fn cuDevicePrimaryCtxRetain(context: *mut CUcontext, device: CUdevice) => context::primary_retain[context, device];
    fn cuDevicePrimaryCtxRelease(device: CUdevice) => context::primary_released[device, context::RELEASE];
    fn cuDevicePrimaryCtxRelease_v2(device: CUdevice) => context::primary_released[device, context::RELEASE];
    fn cuDevicePrimaryCtxReset(device: CUdevice) => context::primary_released[device, context::RESET];
    fn cuDevicePrimaryCtxReset_v2(device: CUdevice) => context::primary_released[device, context::RESET];
    fn cuCtxCreate(context: *mut CUcontext, flags: u32, device: CUdevice) => context::created[context, device];
    fn cuCtxCreate_v2(context: *mut CUcontext, flags: u32, device: CUdevice) => context::created[context, device];
    fn cuCtxCreate_v3(context: *mut CUcontext, params: *mut c_void, count: i32, flags: u32, device: CUdevice) => context::created[context, device];
    fn cuCtxCreate_v4(context: *mut CUcontext, params: *mut c_void, flags: u32, device: CUdevice) => context::created[context, device];
    fn cuCtxDestroy(context: CUcontext) => context::destroyed[context];
    fn cuCtxDestroy_v2(context: CUcontext) => context::destroyed[context];

    // Memory.
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) => memory::charged_out[dptr, bytes];
    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytes: usize, flags: u32) => memory::charged_out[dptr, bytes];
    fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, element_size: u32) => memory::alloc_pitch[dptr, pitch, width, height];
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) => pools::allocated[dptr, bytes, stream, None, launch::LEGACY];
    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) => pools::allocated[dptr, bytes, stream, None, launch::PER_THREAD];
    fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) => pools::allocated[dptr, bytes, stream, Some(pool), launch::LEGACY];
    fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) => pools::allocated[dptr, bytes, stream, Some(pool), launch::PER_THREAD];
    fn cuMemFree_v2(dptr: CUdeviceptr) => memory::released[memory::Table::Device, dptr];
    fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) => pools::freed[dptr, stream, launch::LEGACY];
    fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) => pools::freed[dptr, stream, launch::PER_THREAD];
    fn cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolProps) => pools::create;
    fn cuMemPoolDestroy(pool: CUmemoryPool) => pools::destroy;
    fn cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) => pools::trim_to[pool];
    fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, bytes: usize, prop: *const CUmemAllocationProp, flags: u64) => vmm::create[handle, bytes, prop];
    fn cuMemRelease(handle: CUmemGenericAllocationHandle) => vmm::release;
    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) => vmm::map[ptr, size, handle];
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) => vmm::unmap;
    fn cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) => vmm::retain;
    fn cuArrayCreate_v2(array: *mut CUarray, desc: *const CudaArrayDescriptor) => memory::array_created[array, desc, 1];
    fn cuArray3DCreate_v2(array: *mut CUarray, desc: *const CudaArray3dDescriptor) => memory::array_created[array, desc, 1];
    fn cuArrayDestroy(array: CUarray) => memory::released[memory::Table::Arrays, array as u64];
    fn cuMipmappedArrayCreate(array: *mut CUmipmappedArray, desc: *const CudaArray3dDescriptor, levels: u32) => memory::array_created[array, desc, levels];
    fn cuMipmappedArrayDestroy(array: CUmipmappedArray) => memory::released[memory::Table::Arrays, array as u64];
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) => memory::get_info;
    fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) => memory::total_mem;
    fn cuMemAlloc(dptr: *mut u32, bytes: u32) => memory::legacy_refused["cuMemAlloc"];
    fn cuMemAllocPitch(dptr: *mut u32, pitch: *mut u32, width: u32, height: u32, element_size: u32) => memory::legacy_refused["cuMemAllocPitch"];
    fn cuArrayCreate(array: *mut CUarray, desc: *const c_void) => memory::legacy_refused["cuArrayCreate"];
    fn cuArray3DCreate(array: *mut CUarray, desc: *const c_void) => memory::legacy_refused["cuArray3DCreate"];

    // The current context, which the launch path caches per thread.
    fn cuCtxSetCurrent(context: CUcontext) => stream::becoming_current[context];
    fn cuCtxPushCurrent(context: CUcontext) => stream::becoming_current[context];
    fn cuCtxPushCurrent_v2(context: CUcontext) => stream::becoming_current[context];
    fn cuCtxPopCurrent(context: *mut CUcontext) => stream::context_changing[];
    fn cuCtxPopCurrent_v2(context: *mut CUcontext) => stream::context_changing[];

    // Streams the launch gate follows: destruction and capture.
    fn cuStreamDestroy(stream: CUstream) => stream::destroy[stream];
    fn cuStreamDestroy_v2(stream: CUstream) => stream::destroy[stream];
    fn cuStreamBeginCapture(stream: CUstream, mode: u32) => stream::begin_capture[];
    fn cuStreamBeginCapture_v2(stream: CUstream, mode: u32) => stream::begin_capture[];
    fn cuStreamBeginCapture_ptsz(stream: CUstream, mode: u32) => stream::begin_capture[];
    fn cuStreamBeginCapture_v2_ptsz(stream: CUstream, mode: u32) => stream::begin_capture[];
    fn cuStreamBeginCaptureToGraph(stream: CUstream, graph: *mut c_void, dependencies: *const c_void, edges: *const c_void, count: usize, mode: u32) => stream::begin_capture[];
    fn cuStreamBeginCaptureToGraph_ptsz(stream: CUstream, graph: *mut c_void, dependencies: *const c_void, edges: *const c_void, count: usize, mode: u32) => stream::begin_capture[];
    fn cuStreamEndCapture(stream: CUstream, graph: *mut *mut c_void) => stream::end_capture[];
    fn cuStreamEndCapture_ptsz(stream: CUstream, graph: *mut *mut c_void) => stream::end_capture[];

    // Launches, gated by the tenant's compute share.
    fn cuLaunchKernel(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::gated[stream, launch::LEGACY];
    fn cuLaunchKernel_ptsz(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::gated[stream, launch::PER_THREAD];
    fn cuLaunchKernelEx(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::gated_in_config[config, launch::LEGACY];
    fn cuLaunchKernelEx_ptsz(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::gated_in_config[config, launch::PER_THREAD];
    fn cuLaunchCooperativeKernel(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void) => launch::gated[stream, launch::LEGACY];
    fn cuLaunchCooperativeKernel_ptsz(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void) => launch::gated[stream, launch::PER_THREAD];
    fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) => launch::gated[stream, launch::LEGACY];
    fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) => launch::gated[stream, launch::PER_THREAD];
}
