//! Memory operations in stream order: copies, memsets, and stream-ordered allocation and
//! free.
//!
//! Synchronous calls run on the current context's NULL stream (the thread's per-thread
//! default stream in the `_ptds` entry points) and wait for it. Copies that
//! touch host memory wait even when asynchronous, as they do for pageable memory on a real
//! GPU (which is why callers may reuse their buffers at once). Device-to-device copies and
//! memsets on a stream run when the stream reaches them.

use std::sync::Arc;

use crate::context::Context;
use crate::error::{CuError, CuResult};
use crate::memory::{self, Fill, InFlight};
use crate::stream::{self, Op, Stream};

/// What kind of memory a copy's ends are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host to device.
    HostToDevice,
    /// Device to host.
    DeviceToHost,
    /// Device to device.
    DeviceToDevice,
    /// Unified addressing (`cuMemcpy`): either end may be either.
    Any,
}

/// The stream a call targets: its stream argument, or the NULL stream for synchronous calls.
fn target(stream: Option<usize>) -> CuResult<Arc<Stream>> {
    stream::resolve(stream.unwrap_or(0))
}

/// The context a stream belongs to.
pub fn context_of(s: &Stream) -> CuResult<Arc<Context>> {
    s.ctx.upgrade().ok_or(CuError::InvalidContext)
}

/// Copies `len` bytes from `src` to `dst` in the order of `stream` (`None`: synchronous).
pub fn copy(
    dst: usize,
    src: usize,
    len: usize,
    direction: Direction,
    stream: Option<usize>,
) -> CuResult {
    let s = target(stream)?;
    if len == 0 {
        return Ok(());
    }
    if dst == 0 || src == 0 {
        return Err(CuError::InvalidValue);
    }
    match direction {
        Direction::HostToDevice => memory::check_device_range(dst, len)?,
        Direction::DeviceToHost => memory::check_device_range(src, len)?,
        Direction::DeviceToDevice => {
            memory::check_device_range(dst, len)?;
            memory::check_device_range(src, len)?;
        }
        Direction::Any => {}
    }
    let in_flight = InFlight::begin();
    let op = Op::Host(Box::new(move || {
        // SAFETY: device ends were checked to be live allocations, host ends are the
        // caller's promise; CUDA requires both to stay valid until the copy runs, and
        // cuMemFree waits for in-flight copies.
        unsafe { memory::copy(dst, src, len) };
        drop(in_flight);
    }));
    if stream.is_some() && direction == Direction::DeviceToDevice {
        s.submit(op).map(drop)
    } else {
        s.submit_and_wait(op)
    }
}

/// Sets `count` elements at `dst` in the order of `stream` (`None`: synchronous).
pub fn fill(dst: usize, value: Fill, count: usize, stream: Option<usize>) -> CuResult {
    let s = target(stream)?;
    memory::check_fill(dst, value, count)?;
    let in_flight = InFlight::begin();
    let op = Op::Host(Box::new(move || {
        // SAFETY: check_fill succeeded; CUDA requires the memory to stay allocated until the
        // memset runs, and cuMemFree waits for in-flight memsets.
        unsafe { memory::fill(dst, value, count) };
        drop(in_flight);
    }));
    if stream.is_some() {
        s.submit(op).map(drop)
    } else {
        s.submit_and_wait(op)
    }
}

/// `cuMemAllocAsync` / `cuMemAllocFromPoolAsync`: served from the pool (the device's
/// current one unless given), which grows on the device if its idle memory does not
/// suffice. If the device has no room, frees queued earlier on the stream are let through
/// first (as stream ordering allows), then the pool's idle memory goes back to the device
/// so that the pool can grow in one piece. Zero bytes give a NULL pointer, as on a real GPU.
pub fn allocate(stream: usize, bytes: usize, pool: Option<usize>) -> CuResult<usize> {
    let s = stream::resolve(stream)?;
    let ctx = context_of(&s)?;
    let handle = pool.unwrap_or_else(|| ctx.device.current_pool());
    let pool = crate::pool::get(handle)?;
    if pool.device != ctx.device.index {
        return Err(CuError::InvalidValue);
    }
    if bytes == 0 {
        return Ok(0);
    }
    let attempt = || memory::allocate_from_pool(&ctx, &pool, handle, bytes);
    let mut result = attempt();
    if result == Err(CuError::OutOfMemory) {
        s.synchronize();
        result = attempt();
    }
    if result == Err(CuError::OutOfMemory) {
        pool.trim_to(0);
        result = attempt();
    }
    result
}

/// `cuMemFreeAsync`: the memory goes back when the stream reaches the free: a pool's block
/// to its pool (which keeps it until a synchronization or a trim), any other allocation's
/// to the device.
pub fn free(ptr: usize, stream: usize) -> CuResult {
    let s = stream::resolve(stream)?;
    if ptr == 0 {
        return Ok(());
    }
    match memory::lookup(ptr) {
        Some(info) if info.base == ptr => {}
        _ => return Err(CuError::InvalidValue),
    }
    s.submit(Op::Host(Box::new(move || {
        // A second free of the same pointer is the caller's error; nothing to report here.
        let _ = memory::free_now(ptr);
    })))
    .map(drop)
}
