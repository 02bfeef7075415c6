//! Contexts: `cuDevicePrimaryCtx*`, `cuCtx*`.

use std::ffi::{c_int, c_void};

use super::{Out, cuda_api, put, put_if};
use std::sync::Arc;

use crate::context::{self, Context};
use crate::driver;
use crate::error::{CuError, CuResult};
use crate::pool;
use crate::stream::PRIORITY_RANGE;

/// What `cuCtxGetApiVersion` reports for every context (the v2 context API's version).
const CONTEXT_API_VERSION: u32 = 3020;

/// The context a `CUcontext` argument names, NULL meaning the current one.
fn context_or_current(ctx: usize) -> CuResult<Arc<Context>> {
    driver::get()?;
    if ctx == 0 {
        context::current()
    } else {
        context::get(ctx)
    }
}

cuda_api! {
    /// `cuDevicePrimaryCtxRetain`: the first retain creates the context and takes its
    /// footprint (`CUDA_ERROR_OUT_OF_MEMORY` if the device is full).
    fn cuDevicePrimaryCtxRetain(ctx: Out<'_, usize>, device: c_int) {
        put(ctx, context::retain_primary(driver::device(device)?)?)
    }

    /// `cuDevicePrimaryCtxRelease`: the last release ends the context and frees its memory.
    fn cuDevicePrimaryCtxRelease | cuDevicePrimaryCtxRelease_v2 (device: c_int) {
        context::release_primary(driver::device(device)?)
    }

    /// `cuDevicePrimaryCtxReset`: ends the primary context whatever its reference count,
    /// which it keeps (each holder still releases; the next retain makes the context anew).
    fn cuDevicePrimaryCtxReset | cuDevicePrimaryCtxReset_v2 (device: c_int) {
        context::reset_primary(driver::device(device)?)
    }

    /// `cuDevicePrimaryCtxGetState`.
    fn cuDevicePrimaryCtxGetState(device: c_int, flags: Out<'_, u32>, active: Out<'_, c_int>) {
        let (f, a) = context::primary_state(driver::device(device)?);
        put(flags, f)?;
        put(active, c_int::from(a))
    }

    /// `cuDevicePrimaryCtxSetFlags`.
    fn cuDevicePrimaryCtxSetFlags | cuDevicePrimaryCtxSetFlags_v2 (device: c_int, flags: u32) {
        context::set_primary_flags(driver::device(device)?, flags)
    }

    /// `cuCtxCreate_v2`: a new context (taking its footprint), current on this thread.
    fn cuCtxCreate_v2(ctx: Out<'_, usize>, flags: u32, device: c_int) {
        let out = ctx.ok_or(CuError::InvalidValue)?;
        out.write(context::create(driver::device(device)?, flags)?);
        Ok(())
    }

    /// `cuCtxCreate_v3`: as `cuCtxCreate_v2`; execution affinity is not simulated.
    fn cuCtxCreate_v3(
        ctx: Out<'_, usize>,
        params: *const c_void,
        num_params: c_int,
        flags: u32,
        device: c_int,
    ) {
        if num_params != 0 || !params.is_null() {
            return Err(CuError::NotSupported);
        }
        let out = ctx.ok_or(CuError::InvalidValue)?;
        out.write(context::create(driver::device(device)?, flags)?);
        Ok(())
    }

    /// `cuCtxCreate_v4` (CUDA 13's `cuCtxCreate`): creation parameters are ignored.
    fn cuCtxCreate_v4(ctx: Out<'_, usize>, params: *const c_void, flags: u32, device: c_int) {
        let _ = params;
        let out = ctx.ok_or(CuError::InvalidValue)?;
        out.write(context::create(driver::device(device)?, flags)?);
        Ok(())
    }

    /// `cuCtxDestroy_v2`: ends a created context, freeing its allocations and footprint.
    fn cuCtxDestroy_v2(ctx: usize) {
        driver::get()?;
        context::destroy(ctx)
    }

    /// `cuCtxPushCurrent_v2`.
    fn cuCtxPushCurrent_v2(ctx: usize) {
        driver::get()?;
        context::push(ctx)
    }

    /// `cuCtxPopCurrent_v2`: `ctx` may be NULL.
    fn cuCtxPopCurrent_v2(ctx: Out<'_, usize>) {
        driver::get()?;
        put_if(ctx, context::pop()?);
        Ok(())
    }

    /// `cuCtxSetCurrent`: NULL unbinds the current context.
    fn cuCtxSetCurrent(ctx: usize) {
        driver::get()?;
        context::set_current((ctx != 0).then_some(ctx))
    }

    /// `cuCtxGetCurrent`: NULL when none is current.
    fn cuCtxGetCurrent(ctx: Out<'_, usize>) {
        driver::get()?;
        put(ctx, context::current_handle().unwrap_or(0))
    }

    /// `cuCtxGetDevice`: the context's device's CUDA ordinal (its place in
    /// `CUDA_VISIBLE_DEVICES`).
    fn cuCtxGetDevice(device: Out<'_, c_int>) {
        put(device, context::current()?.device.ordinal()?)
    }

    /// `cuCtxGetDevice_v2` (CUDA 13): the device of `ctx` (NULL: the current context).
    fn cuCtxGetDevice_v2(device: Out<'_, c_int>, ctx: usize) {
        put(device, context_or_current(ctx)?.device.ordinal()?)
    }

    /// `cuCtxGetFlags`.
    fn cuCtxGetFlags(flags: Out<'_, u32>) {
        put(flags, context::current()?.flags())
    }

    /// `cuCtxSetFlags`.
    fn cuCtxSetFlags(flags: u32) {
        context::current()?.set_flags(flags);
        Ok(())
    }

    /// `cuCtxSynchronize`: waits for all streams of the current context; then memory pools
    /// give back idle memory above their release thresholds.
    fn cuCtxSynchronize() {
        let ctx = context::current()?;
        crate::capture::check_context_wait(ctx.handle)?;
        ctx.synchronize();
        pool::synchronized();
        Ok(())
    }

    /// `cuCtxSynchronize_v2` (CUDA 13): waits for all streams of `ctx` (NULL: the current
    /// context); then memory pools give back idle memory above their release thresholds.
    fn cuCtxSynchronize_v2(ctx: usize) {
        let ctx = context_or_current(ctx)?;
        crate::capture::check_context_wait(ctx.handle)?;
        ctx.synchronize();
        pool::synchronized();
        Ok(())
    }

    /// `cuCtxGetLimit`.
    fn cuCtxGetLimit(value: Out<'_, usize>, limit: u32) {
        put(value, context::current()?.limit(limit)?)
    }

    /// `cuCtxSetLimit`.
    fn cuCtxSetLimit(limit: u32, value: usize) {
        context::current()?.set_limit(limit, value)
    }

    /// `cuCtxGetCacheConfig`.
    fn cuCtxGetCacheConfig(config: Out<'_, u32>) {
        put(config, context::current()?.cache_config())
    }

    /// `cuCtxSetCacheConfig`.
    fn cuCtxSetCacheConfig(config: u32) {
        context::current()?.set_cache_config(config);
        Ok(())
    }

    /// `cuCtxGetApiVersion`: 3020 (NULL means the current context).
    fn cuCtxGetApiVersion(ctx: usize, version: Out<'_, u32>) {
        context_or_current(ctx)?;
        put(version, CONTEXT_API_VERSION)
    }

    /// `cuCtxEnablePeerAccess`: the current context may access `peer`'s memory (recorded;
    /// see `Context::enable_peer_access`). `flags` must be 0.
    fn cuCtxEnablePeerAccess(peer: usize, flags: u32) {
        if flags != 0 {
            return Err(CuError::InvalidValue);
        }
        let ctx = context::current()?;
        let peer = context::get(peer)?;
        ctx.enable_peer_access(&peer)
    }

    /// `cuCtxDisablePeerAccess`.
    fn cuCtxDisablePeerAccess(peer: usize) {
        context::current()?.disable_peer_access(peer)
    }

    /// `cuCtxGetStreamPriorityRange`: least 0, greatest -5; either pointer may be NULL.
    fn cuCtxGetStreamPriorityRange(least: Out<'_, c_int>, greatest: Out<'_, c_int>) {
        context::current()?;
        put_if(least, PRIORITY_RANGE.0);
        put_if(greatest, PRIORITY_RANGE.1);
        Ok(())
    }
}
