//! The CUDA driver functions the shim hooks. Everything else in libcuda is untouched.

use std::ffi::{c_char, c_void};

use crate::cuda::*;
use crate::hooks::{context, launch, memory, pools, procaddr, stream, vmm};

/// Hooks of the pre-3.2 32-bit memory API: see [`memory::legacy_refused`].
unsafe fn legacy_alloc(_: *mut u32, _: u32) -> CUresult {
    memory::legacy_refused("cuMemAlloc")
}
unsafe fn legacy_alloc_pitch(_: *mut u32, _: *mut u32, _: u32, _: u32, _: u32) -> CUresult {
    memory::legacy_refused("cuMemAllocPitch")
}
unsafe fn legacy_array_create(_: *mut CUarray, _: *const c_void) -> CUresult {
    memory::legacy_refused("cuArrayCreate")
}
unsafe fn legacy_array3d_create(_: *mut CUarray, _: *const c_void) -> CUresult {
    memory::legacy_refused("cuArray3DCreate")
}

super::exports! {
    library: crate::real::CUDA, failure: CUDA_ERROR_UNKNOWN;

    // How calls reach us.
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) => procaddr::get_proc_address;
    fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64, status: *mut i32) => procaddr::get_proc_address_v2;

    // Initialization and contexts.
    fn cuInit(flags: u32) => context::init;
    fn cuDevicePrimaryCtxRetain(context: *mut CUcontext, device: CUdevice) => context::primary_retain;
    fn cuDevicePrimaryCtxRelease(device: CUdevice) => context::primary_release_v1;
    fn cuDevicePrimaryCtxRelease_v2(device: CUdevice) => context::primary_release;
    fn cuDevicePrimaryCtxReset(device: CUdevice) => context::primary_reset_v1;
    fn cuDevicePrimaryCtxReset_v2(device: CUdevice) => context::primary_reset;
    fn cuCtxCreate(context: *mut CUcontext, flags: u32, device: CUdevice) => context::create_v1;
    fn cuCtxCreate_v2(context: *mut CUcontext, flags: u32, device: CUdevice) => context::create_v2;
    fn cuCtxCreate_v3(context: *mut CUcontext, params: *mut c_void, count: i32, flags: u32, device: CUdevice) => context::create_v3;
    fn cuCtxCreate_v4(context: *mut CUcontext, params: *mut c_void, flags: u32, device: CUdevice) => context::create_v4;
    fn cuCtxDestroy(context: CUcontext) => context::destroy_v1;
    fn cuCtxDestroy_v2(context: CUcontext) => context::destroy;

    // Memory.
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) => memory::alloc;
    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytes: usize, flags: u32) => memory::alloc_managed;
    fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, element_size: u32) => memory::alloc_pitch;
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) => pools::alloc_async;
    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) => pools::alloc_async_ptsz;
    fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) => pools::alloc_from_pool_async;
    fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) => pools::alloc_from_pool_async_ptsz;
    fn cuMemFree_v2(dptr: CUdeviceptr) => memory::free;
    fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) => pools::free_async;
    fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) => pools::free_async_ptsz;
    fn cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolProps) => pools::create;
    fn cuMemPoolDestroy(pool: CUmemoryPool) => pools::destroy;
    fn cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) => pools::trim_to;
    fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, bytes: usize, prop: *const CUmemAllocationProp, flags: u64) => vmm::create;
    fn cuMemRelease(handle: CUmemGenericAllocationHandle) => vmm::release;
    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) => vmm::map;
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) => vmm::unmap;
    fn cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) => vmm::retain;
    fn cuArrayCreate_v2(array: *mut CUarray, desc: *const CudaArrayDescriptor) => memory::array_create;
    fn cuArray3DCreate_v2(array: *mut CUarray, desc: *const CudaArray3dDescriptor) => memory::array3d_create;
    fn cuArrayDestroy(array: CUarray) => memory::array_destroy;
    fn cuMipmappedArrayCreate(array: *mut CUmipmappedArray, desc: *const CudaArray3dDescriptor, levels: u32) => memory::mipmapped_create;
    fn cuMipmappedArrayDestroy(array: CUmipmappedArray) => memory::mipmapped_destroy;
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) => memory::get_info;
    fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) => memory::total_mem;
    fn cuMemAlloc(dptr: *mut u32, bytes: u32) => legacy_alloc;
    fn cuMemAllocPitch(dptr: *mut u32, pitch: *mut u32, width: u32, height: u32, element_size: u32) => legacy_alloc_pitch;
    fn cuArrayCreate(array: *mut CUarray, desc: *const c_void) => legacy_array_create;
    fn cuArray3DCreate(array: *mut CUarray, desc: *const c_void) => legacy_array3d_create;

    // The current context, which the launch path caches per thread.
    fn cuCtxSetCurrent(context: CUcontext) => stream::set_current;
    fn cuCtxPushCurrent(context: CUcontext) => stream::push_current_v1;
    fn cuCtxPushCurrent_v2(context: CUcontext) => stream::push_current;
    fn cuCtxPopCurrent(context: *mut CUcontext) => stream::pop_current_v1;
    fn cuCtxPopCurrent_v2(context: *mut CUcontext) => stream::pop_current;

    // Streams the launch gate follows: destruction and capture.
    fn cuStreamDestroy(stream: CUstream) => stream::destroy_v1;
    fn cuStreamDestroy_v2(stream: CUstream) => stream::destroy;
    fn cuStreamBeginCapture(stream: CUstream, mode: u32) => stream::begin_capture_v1;
    fn cuStreamBeginCapture_v2(stream: CUstream, mode: u32) => stream::begin_capture;
    fn cuStreamBeginCapture_ptsz(stream: CUstream, mode: u32) => stream::begin_capture_ptsz;
    fn cuStreamBeginCapture_v2_ptsz(stream: CUstream, mode: u32) => stream::begin_capture_v2_ptsz;
    fn cuStreamBeginCaptureToGraph(stream: CUstream, graph: *mut c_void, dependencies: *const c_void, edges: *const c_void, count: usize, mode: u32) => stream::begin_capture_to_graph;
    fn cuStreamBeginCaptureToGraph_ptsz(stream: CUstream, graph: *mut c_void, dependencies: *const c_void, edges: *const c_void, count: usize, mode: u32) => stream::begin_capture_to_graph_ptsz;
    fn cuStreamEndCapture(stream: CUstream, graph: *mut *mut c_void) => stream::end_capture;
    fn cuStreamEndCapture_ptsz(stream: CUstream, graph: *mut *mut c_void) => stream::end_capture_ptsz;

    // Launches, gated by the tenant's compute share.
    fn cuLaunchKernel(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::kernel;
    fn cuLaunchKernel_ptsz(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::kernel_ptsz;
    fn cuLaunchKernelEx(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::kernel_ex;
    fn cuLaunchKernelEx_ptsz(config: *const c_void, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) => launch::kernel_ex_ptsz;
    fn cuLaunchCooperativeKernel(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void) => launch::cooperative;
    fn cuLaunchCooperativeKernel_ptsz(f: CUfunction, grid_x: u32, grid_y: u32, grid_z: u32, block_x: u32, block_y: u32, block_z: u32, shared_bytes: u32, stream: CUstream, params: *mut *mut c_void) => launch::cooperative_ptsz;
    fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) => launch::graph;
    fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) => launch::graph_ptsz;
}
