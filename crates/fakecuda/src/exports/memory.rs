//! Device and host memory: allocation, free, copies, memsets, arrays, pools, pointer
//! attributes and `cuMemGetInfo`.

use std::ffi::c_void;

use super::{Out, addr, cuda_api, put, put_if, size};
use crate::context;
use crate::driver;
use crate::error::{CuError, CuResult};
use crate::ipc;
use crate::memory::{self, Fill, Kind};
use crate::ordered::{self, Direction};
use crate::pool::{self, AttributeValue};
use gpuslice_cuda_abi::{
    CU_MEM_LOCATION_TYPE_DEVICE, CUipcMemHandle, CUmemPoolProps, CudaArray3dDescriptor,
    CudaArrayDescriptor,
};

/// `CU_MEM_ATTACH_GLOBAL` and `CU_MEM_ATTACH_HOST`, the flags `cuMemAllocManaged` accepts.
const MANAGED_ATTACH_FLAGS: [u32; 2] = [0x1, 0x2];
/// `CU_MEMHOSTALLOC_PORTABLE | DEVICEMAP | WRITECOMBINED`.
const HOST_ALLOC_FLAGS: u32 = 0x1 | 0x2 | 0x4;

fn device_ptr(ptr: usize) -> u64 {
    ptr as u64
}

/// Writes `value` to `data` for `cuPointerGetAttribute`.
///
/// # Safety
///
/// `data` must be NULL or writable for a `T` (alignment not required).
unsafe fn write_attribute<T>(data: *mut c_void, value: T) -> CuResult {
    if data.is_null() {
        return Err(CuError::InvalidValue);
    }
    // SAFETY: the caller guarantees data is writable for a T.
    unsafe { data.cast::<T>().write_unaligned(value) };
    Ok(())
}

/// `cuPointerGetAttribute` for a pointer into a device allocation.
///
/// # Safety
///
/// As `write_attribute`, for the type the attribute documents.
unsafe fn pointer_attribute(data: *mut c_void, attribute: u32, ptr: usize) -> CuResult {
    const MEMORYTYPE_HOST: u32 = 1;
    const MEMORYTYPE_DEVICE: u32 = 2;
    let Some(info) = memory::lookup(ptr) else {
        return if memory::is_host(ptr) && attribute == 2 {
            // SAFETY: forwarded from the caller.
            unsafe { write_attribute(data, MEMORYTYPE_HOST) }
        } else {
            Err(CuError::InvalidValue)
        };
    };
    let managed = info.kind == Kind::Managed;
    // SAFETY: forwarded from the caller, with each attribute's documented type (every arm).
    unsafe {
        match attribute {
            1 => write_attribute(data, info.ctx),          // CONTEXT
            2 => write_attribute(data, MEMORYTYPE_DEVICE), // MEMORY_TYPE
            3 => write_attribute(data, device_ptr(ptr)),   // DEVICE_POINTER
            4 if managed => write_attribute(data, ptr as *mut c_void), // HOST_POINTER
            6 => write_attribute(data, 1_u32),             // SYNC_MEMOPS
            7 => write_attribute(data, device_ptr(info.base)), // BUFFER_ID
            8 => write_attribute(data, u32::from(managed)), // IS_MANAGED
            9 => write_attribute(data, i32::try_from(info.device).unwrap_or(0)), // DEVICE_ORDINAL
            11 => write_attribute(data, device_ptr(info.base)), // RANGE_START_ADDR
            12 => write_attribute(data, info.size),        // RANGE_SIZE
            13 => write_attribute(data, 1_u32),            // MAPPED
            17 => match info.kind {
                Kind::Pool(p) => write_attribute(data, p), // MEMPOOL_HANDLE
                _ => write_attribute(data, 0_usize),
            },
            _ => Err(CuError::InvalidValue),
        }
    }
}

cuda_api! {
    /// `cuMemGetInfo_v2`: free = capacity minus what all live processes hold; total =
    /// capacity. Reclaims the memory of dead processes first.
    fn cuMemGetInfo_v2(free: Out<'_, usize>, total: Out<'_, usize>) {
        let (f, t) = context::current()?.device.memory_info();
        put(free, size(f))?;
        put(total, size(t))
    }

    /// `cuMemAlloc_v2`: device memory; zero bytes is `CUDA_ERROR_INVALID_VALUE`.
    fn cuMemAlloc_v2(dptr: Out<'_, u64>, bytes: usize) {
        let out = dptr.ok_or(CuError::InvalidValue)?;
        let ptr = memory::allocate(&*context::current()?, bytes, Kind::Device)?;
        out.write(device_ptr(ptr));
        Ok(())
    }

    /// `cuMemAllocPitch_v2`: rows padded to 512 bytes; charges pitch × height.
    fn cuMemAllocPitch_v2(
        dptr: Out<'_, u64>,
        pitch: Out<'_, usize>,
        width: usize,
        height: usize,
        element_size: u32,
    ) {
        let (out, pitch_out) = (dptr.ok_or(CuError::InvalidValue)?, pitch.ok_or(CuError::InvalidValue)?);
        let ctx = context::current()?;
        let row = memory::pitch_for(width, height, element_size)?;
        let bytes = row.checked_mul(height).ok_or(CuError::InvalidValue)?;
        out.write(device_ptr(memory::allocate(&ctx, bytes, Kind::Pitched)?));
        pitch_out.write(row);
        Ok(())
    }

    /// `cuMemAllocManaged`: charged like device memory.
    fn cuMemAllocManaged(dptr: Out<'_, u64>, bytes: usize, flags: u32) {
        let out = dptr.ok_or(CuError::InvalidValue)?;
        if !MANAGED_ATTACH_FLAGS.contains(&flags) {
            return Err(CuError::InvalidValue);
        }
        out.write(device_ptr(memory::allocate(&*context::current()?, bytes, Kind::Managed)?));
        Ok(())
    }

    /// `cuMemFree_v2`: waits for queued copies and memsets, then gives the memory back (a
    /// pool's block to its pool).
    fn cuMemFree_v2(dptr: u64) {
        driver::get()?;
        memory::free(addr(dptr)?)
    }

    /// `cuMemGetAddressRange_v2`: the allocation containing `dptr`; outputs may be NULL.
    fn cuMemGetAddressRange_v2(base: Out<'_, u64>, bytes: Out<'_, usize>, dptr: u64) {
        driver::get()?;
        let info = memory::lookup(addr(dptr)?).ok_or(CuError::NotFound)?;
        put_if(base, device_ptr(info.base));
        put_if(bytes, info.size);
        Ok(())
    }

    /// `cuMemAllocHost_v2`: host memory, not charged to the device.
    fn cuMemAllocHost_v2(pp: Out<'_, *mut c_void>, bytes: usize) {
        let out = pp.ok_or(CuError::InvalidValue)?;
        context::current()?;
        out.write(memory::allocate_host(bytes)? as *mut c_void);
        Ok(())
    }

    /// `cuMemHostAlloc`: host memory, not charged to the device.
    fn cuMemHostAlloc(pp: Out<'_, *mut c_void>, bytes: usize, flags: u32) {
        let out = pp.ok_or(CuError::InvalidValue)?;
        if flags & !HOST_ALLOC_FLAGS != 0 {
            return Err(CuError::InvalidValue);
        }
        context::current()?;
        out.write(memory::allocate_host(bytes)? as *mut c_void);
        Ok(())
    }

    /// `cuMemFreeHost`.
    fn cuMemFreeHost(p: *mut c_void) {
        driver::get()?;
        memory::free_host(p as usize)
    }

    /// `cuPointerGetAttribute`: context, memory type, device pointer, range, ordinal, pool.
    fn cuPointerGetAttribute(data: *mut c_void, attribute: u32, ptr: u64) {
        driver::get()?;
        // SAFETY: the caller passes data of the attribute's documented type.
        unsafe { pointer_attribute(data, attribute, addr(ptr)?) }
    }

    /// `cuMemcpyHtoD_v2`: synchronous.
    fn cuMemcpyHtoD_v2 | cuMemcpyHtoD_v2_ptds (dst: u64, src: *const c_void, bytes: usize) {
        ordered::copy(addr(dst)?, src as usize, bytes, Direction::HostToDevice, None)
    }

    /// `cuMemcpyDtoH_v2`: synchronous.
    fn cuMemcpyDtoH_v2 | cuMemcpyDtoH_v2_ptds (dst: *mut c_void, src: u64, bytes: usize) {
        ordered::copy(dst as usize, addr(src)?, bytes, Direction::DeviceToHost, None)
    }

    /// `cuMemcpyDtoD_v2`: synchronous.
    fn cuMemcpyDtoD_v2 | cuMemcpyDtoD_v2_ptds (dst: u64, src: u64, bytes: usize) {
        ordered::copy(addr(dst)?, addr(src)?, bytes, Direction::DeviceToDevice, None)
    }

    /// `cuMemcpy`: unified addressing, synchronous.
    fn cuMemcpy | cuMemcpy_ptds (dst: u64, src: u64, bytes: usize) {
        ordered::copy(addr(dst)?, addr(src)?, bytes, Direction::Any, None)
    }

    /// `cuMemcpyPeer`: all devices share one address space here, so it works with or
    /// without peer access, as the real one does (staging through the host without it).
    fn cuMemcpyPeer | cuMemcpyPeer_ptds (
        dst: u64,
        dst_ctx: usize,
        src: u64,
        src_ctx: usize,
        bytes: usize,
    ) {
        context::get(dst_ctx)?;
        context::get(src_ctx)?;
        ordered::copy(addr(dst)?, addr(src)?, bytes, Direction::DeviceToDevice, None)
    }

    /// `cuMemcpyHtoDAsync_v2`: returns once the source has been read.
    fn cuMemcpyHtoDAsync_v2 | cuMemcpyHtoDAsync_v2_ptsz (
        dst: u64,
        src: *const c_void,
        bytes: usize,
        stream: usize,
    ) {
        ordered::copy(addr(dst)?, src as usize, bytes, Direction::HostToDevice, Some(stream))
    }

    /// `cuMemcpyDtoHAsync_v2`: returns once the destination has been written.
    fn cuMemcpyDtoHAsync_v2 | cuMemcpyDtoHAsync_v2_ptsz (
        dst: *mut c_void,
        src: u64,
        bytes: usize,
        stream: usize,
    ) {
        ordered::copy(dst as usize, addr(src)?, bytes, Direction::DeviceToHost, Some(stream))
    }

    /// `cuMemcpyDtoDAsync_v2`: runs when the stream reaches it.
    fn cuMemcpyDtoDAsync_v2 | cuMemcpyDtoDAsync_v2_ptsz (
        dst: u64,
        src: u64,
        bytes: usize,
        stream: usize,
    ) {
        ordered::copy(addr(dst)?, addr(src)?, bytes, Direction::DeviceToDevice, Some(stream))
    }

    /// `cuMemcpyAsync`: unified addressing; returns once the copy has run.
    fn cuMemcpyAsync | cuMemcpyAsync_ptsz (dst: u64, src: u64, bytes: usize, stream: usize) {
        ordered::copy(addr(dst)?, addr(src)?, bytes, Direction::Any, Some(stream))
    }

    /// `cuMemcpyPeerAsync`: runs when the stream reaches it.
    fn cuMemcpyPeerAsync | cuMemcpyPeerAsync_ptsz (
        dst: u64,
        dst_ctx: usize,
        src: u64,
        src_ctx: usize,
        bytes: usize,
        stream: usize,
    ) {
        context::get(dst_ctx)?;
        context::get(src_ctx)?;
        ordered::copy(addr(dst)?, addr(src)?, bytes, Direction::DeviceToDevice, Some(stream))
    }

    /// `cuIpcGetMemHandle`: a handle to the `cuMemAlloc` allocation starting at `dptr`, for
    /// another process of the same state directory (see `ipc`).
    fn cuIpcGetMemHandle(handle: Out<'_, CUipcMemHandle>, dptr: u64) {
        let out = handle.ok_or(CuError::InvalidValue)?;
        driver::get()?;
        out.write(memory::export(addr(dptr)?)?);
        Ok(())
    }

    /// `cuIpcOpenMemHandle_v2` (`cuIpcOpenMemHandle` since CUDA 11.0): maps another
    /// process's exported allocation; it stays charged to its owner.
    fn cuIpcOpenMemHandle_v2 | cuIpcOpenMemHandle (
        dptr: Out<'_, u64>,
        handle: CUipcMemHandle,
        flags: u32,
    ) {
        let out = dptr.ok_or(CuError::InvalidValue)?;
        out.write(device_ptr(ipc::open(&handle, flags)?));
        Ok(())
    }

    /// `cuIpcCloseMemHandle`: unmaps memory `cuIpcOpenMemHandle` mapped, once opened as
    /// often as closed.
    fn cuIpcCloseMemHandle(dptr: u64) {
        ipc::close(addr(dptr)?)
    }

    /// `cuMemsetD8_v2`: synchronous; zeroing whole pages touches no memory.
    fn cuMemsetD8_v2 | cuMemsetD8_v2_ptds (dst: u64, value: u8, count: usize) {
        ordered::fill(addr(dst)?, Fill::U8(value), count, None)
    }

    /// `cuMemsetD16_v2`: synchronous.
    fn cuMemsetD16_v2 | cuMemsetD16_v2_ptds (dst: u64, value: u16, count: usize) {
        ordered::fill(addr(dst)?, Fill::U16(value), count, None)
    }

    /// `cuMemsetD32_v2`: synchronous.
    fn cuMemsetD32_v2 | cuMemsetD32_v2_ptds (dst: u64, value: u32, count: usize) {
        ordered::fill(addr(dst)?, Fill::U32(value), count, None)
    }

    /// `cuMemsetD8Async`: runs when the stream reaches it.
    fn cuMemsetD8Async | cuMemsetD8Async_ptsz (dst: u64, value: u8, count: usize, stream: usize) {
        ordered::fill(addr(dst)?, Fill::U8(value), count, Some(stream))
    }

    /// `cuMemsetD16Async`: runs when the stream reaches it.
    fn cuMemsetD16Async | cuMemsetD16Async_ptsz (dst: u64, value: u16, count: usize, stream: usize) {
        ordered::fill(addr(dst)?, Fill::U16(value), count, Some(stream))
    }

    /// `cuMemsetD32Async`: runs when the stream reaches it.
    fn cuMemsetD32Async | cuMemsetD32Async_ptsz (dst: u64, value: u32, count: usize, stream: usize) {
        ordered::fill(addr(dst)?, Fill::U32(value), count, Some(stream))
    }

    /// `cuArrayCreate_v2`: charges width × height × channels × element size.
    fn cuArrayCreate_v2(array: Out<'_, usize>, desc: Option<&CudaArrayDescriptor>) {
        let (out, d) = (array.ok_or(CuError::InvalidValue)?, desc.ok_or(CuError::InvalidValue)?);
        let bytes = memory::array_bytes(d.width, d.height, 0, d.format, d.num_channels)?;
        out.write(memory::create_array(&*context::current()?, bytes)?);
        Ok(())
    }

    /// `cuArray3DCreate_v2`: charges width × height × depth × channels × element size.
    fn cuArray3DCreate_v2(array: Out<'_, usize>, desc: Option<&CudaArray3dDescriptor>) {
        let (out, d) = (array.ok_or(CuError::InvalidValue)?, desc.ok_or(CuError::InvalidValue)?);
        let bytes = memory::array_bytes(d.width, d.height, d.depth, d.format, d.num_channels)?;
        out.write(memory::create_array(&*context::current()?, bytes)?);
        Ok(())
    }

    /// `cuArrayDestroy`.
    fn cuArrayDestroy(array: usize) {
        driver::get()?;
        memory::destroy_array(array)
    }

    /// `cuMemAllocAsync`: from the device's current pool, which grows if it must.
    fn cuMemAllocAsync | cuMemAllocAsync_ptsz (dptr: Out<'_, u64>, bytes: usize, stream: usize) {
        let out = dptr.ok_or(CuError::InvalidValue)?;
        out.write(device_ptr(ordered::allocate(stream, bytes, None)?));
        Ok(())
    }

    /// `cuMemAllocFromPoolAsync`: from `pool`, which grows if it must.
    fn cuMemAllocFromPoolAsync | cuMemAllocFromPoolAsync_ptsz (
        dptr: Out<'_, u64>,
        bytes: usize,
        pool: usize,
        stream: usize,
    ) {
        let out = dptr.ok_or(CuError::InvalidValue)?;
        out.write(device_ptr(ordered::allocate(stream, bytes, Some(pool))?));
        Ok(())
    }

    /// `cuMemFreeAsync`: back to its pool (or the device) when the stream reaches the free.
    fn cuMemFreeAsync | cuMemFreeAsync_ptsz (dptr: u64, stream: usize) {
        ordered::free(addr(dptr)?, stream)
    }

    /// `cuMemPoolCreate`: a pool on the device of `props.location`.
    fn cuMemPoolCreate(pool_out: Out<'_, usize>, props: Option<&CUmemPoolProps>) {
        let (out, p) = (pool_out.ok_or(CuError::InvalidValue)?, props.ok_or(CuError::InvalidValue)?);
        if p.location.kind != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(CuError::NotSupported);
        }
        let device = driver::device(p.location.id)?;
        out.write(pool::create(device.index));
        Ok(())
    }

    /// `cuMemPoolDestroy`: idle memory goes back at once, the rest as its allocations are
    /// freed.
    fn cuMemPoolDestroy(pool_handle: usize) {
        driver::get()?;
        pool::destroy(pool_handle)
    }

    /// `cuMemPoolTrimTo`: idle memory goes back to the device until the pool holds at most
    /// `keep` bytes (or what its allocations use); frees a stream has not reached yet keep
    /// their memory.
    fn cuMemPoolTrimTo(pool_handle: usize, keep: usize) {
        pool::get(pool_handle)?.trim_to(keep as u64);
        Ok(())
    }

    /// `cuMemPoolSetAttribute`: the reuse policies, the release threshold, and resets of
    /// the high watermarks (to 0 only).
    fn cuMemPoolSetAttribute(pool_handle: usize, attribute: u32, value: *mut c_void) {
        let pool = pool::get(pool_handle)?;
        if value.is_null() {
            return Err(CuError::InvalidValue);
        }
        // SAFETY: the caller passes storage of the attribute's documented type (int for the
        // reuse policies, cuuint64_t for the others); it need not be aligned.
        let value = unsafe {
            if pool::is_int_attribute(attribute) {
                AttributeValue::Int(value.cast::<i32>().read_unaligned())
            } else {
                AttributeValue::Bytes(value.cast::<u64>().read_unaligned())
            }
        };
        pool.set_attribute(attribute, value)
    }

    /// `cuMemPoolGetAttribute`: the reuse policies, the release threshold, and the pool's
    /// reserved and used memory, current and high.
    fn cuMemPoolGetAttribute(pool_handle: usize, attribute: u32, value: *mut c_void) {
        let answer = pool::get(pool_handle)?.attribute(attribute)?;
        // SAFETY: the caller passes storage of the attribute's documented type.
        unsafe {
            match answer {
                AttributeValue::Int(flag) => write_attribute(value, flag),
                AttributeValue::Bytes(bytes) => write_attribute(value, bytes),
            }
        }
    }
}
