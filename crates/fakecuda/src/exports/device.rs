//! Initialization, versions, errors and devices: `cuInit`, `cuDriverGetVersion`,
//! `cuGetErrorString`, `cuDeviceGet*`, `cuDevice*MemPool`.

use std::ffi::{c_char, c_int};

use super::{Out, cuda_api, put, write_c_string};
use crate::device::{COMPUTE_CAPABILITY, NAME};
use crate::driver;
use crate::error::{self, CuError};
use crate::pool;

/// The CUDA version the simulated driver reports: 13.0.
pub const DRIVER_VERSION: c_int = 13000;

fn count_as_int(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

cuda_api! {
    /// `cuInit`: starts the simulated driver, reading `FAKECUDA_*` once.
    fn cuInit(flags: u32) {
        if flags != 0 {
            return Err(CuError::InvalidValue);
        }
        driver::cu_init()
    }

    /// `cuDriverGetVersion`: 13000.
    fn cuDriverGetVersion(version: Out<'_, c_int>) {
        put(version, DRIVER_VERSION)
    }

    /// `cuGetErrorString`: the description of any CUDA 13 result code; NULL and
    /// `CUDA_ERROR_INVALID_VALUE` for others.
    fn cuGetErrorString(code: u32, text: Out<'_, *const c_char>) {
        let description = error::description(code);
        put(text, description.map_or(std::ptr::null(), |d| d.as_ptr()))?;
        description.map(drop).ok_or(CuError::InvalidValue)
    }

    /// `cuGetErrorName`: the `CUDA_ERROR_*` name of any CUDA 13 result code; NULL and
    /// `CUDA_ERROR_INVALID_VALUE` for others.
    fn cuGetErrorName(code: u32, text: Out<'_, *const c_char>) {
        let name = error::name(code);
        put(text, name.map_or(std::ptr::null(), |n| n.as_ptr()))?;
        name.map(drop).ok_or(CuError::InvalidValue)
    }

    /// `cuDeviceGet`: ordinals count the devices `CUDA_VISIBLE_DEVICES` lists, in its order.
    fn cuDeviceGet(device: Out<'_, c_int>, ordinal: c_int) {
        driver::device(ordinal)?;
        put(device, ordinal)
    }

    /// `cuDeviceGetCount`: the devices `CUDA_VISIBLE_DEVICES` lists (every entry of
    /// `FAKECUDA_DEVICES` when it is unset).
    fn cuDeviceGetCount(count: Out<'_, c_int>) {
        put(count, count_as_int(driver::visible_count()?))
    }

    /// `cuDeviceGetName`: "gpuslice simulated GPU".
    fn cuDeviceGetName(name: *mut c_char, len: c_int, device: c_int) {
        driver::device(device)?;
        let len = usize::try_from(len).map_err(|_| CuError::InvalidValue)?;
        // SAFETY: the caller passes a buffer of len bytes.
        unsafe { write_c_string(name, len, NAME.to_bytes()) }.map(drop)
    }

    /// `cuDeviceGetUuid`: `fa 4e c0 da 00 00 40 00 80 00 00 00 00 00 00 <physical index>`,
    /// whatever the ordinal.
    fn cuDeviceGetUuid | cuDeviceGetUuid_v2 (uuid: Out<'_, [u8; 16]>, device: c_int) {
        put(uuid, driver::device(device)?.uuid())
    }

    /// `cuDeviceTotalMem_v2`: the device's capacity.
    fn cuDeviceTotalMem_v2(bytes: Out<'_, usize>, device: c_int) {
        let capacity = driver::device(device)?.capacity;
        put(bytes, usize::try_from(capacity).unwrap_or(usize::MAX))
    }

    /// `cuDeviceGetAttribute`: H100-like values; unknown attributes are 0.
    fn cuDeviceGetAttribute(value: Out<'_, c_int>, attribute: u32, device: c_int) {
        put(value, driver::device(device)?.attribute(attribute))
    }

    /// `cuDeviceCanAccessPeer`: 1 between two different devices (all simulated devices
    /// are peers, as NVLinked GPUs are), 0 for a device and itself.
    fn cuDeviceCanAccessPeer(can: Out<'_, c_int>, device: c_int, peer: c_int) {
        let (device, peer) = (driver::device(device)?, driver::device(peer)?);
        put(can, c_int::from(!std::ptr::eq(device, peer)))
    }

    /// `cuDeviceComputeCapability`: 9.0.
    fn cuDeviceComputeCapability(major: Out<'_, c_int>, minor: Out<'_, c_int>, device: c_int) {
        driver::device(device)?;
        put(major, COMPUTE_CAPABILITY.0)?;
        put(minor, COMPUTE_CAPABILITY.1)
    }

    /// `cuDeviceGetDefaultMemPool`.
    fn cuDeviceGetDefaultMemPool(pool: Out<'_, usize>, device: c_int) {
        put(pool, driver::device(device)?.default_pool)
    }

    /// `cuDeviceGetMemPool`: the pool `cuMemAllocAsync` uses.
    fn cuDeviceGetMemPool(pool: Out<'_, usize>, device: c_int) {
        put(pool, driver::device(device)?.current_pool())
    }

    /// `cuDeviceSetMemPool`.
    fn cuDeviceSetMemPool(device: c_int, pool: usize) {
        let dev = driver::device(device)?;
        if pool::get(pool)?.device != dev.index {
            return Err(CuError::InvalidDevice);
        }
        dev.set_current_pool(pool);
        Ok(())
    }
}
