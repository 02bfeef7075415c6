//! The stream and context calls the launch gate must know about: destroying a stream or a
//! context (the watcher must stop polling it first), and stream capture (no stream may be
//! polled while one is captured: a query or an event recorded then would break the capture).

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::cuda::*;
use crate::exports::driver::real;
use crate::hooks::real_or_missing;
use crate::runtime::{self, Mode};
use crate::shim::Shim;

thread_local! {
    /// Bumped on this thread by every call that can change its current context, so that
    /// the launch path may cache the thread's NULL-stream entry instead of asking the
    /// driver for the current context at each launch.
    static CONTEXT_EPOCH: Cell<u64> = const { Cell::new(1) };
}

/// The one context this process has made current so far: `NO_CONTEXT` before any,
/// `MANY_CONTEXTS` once a second one was. While there is one, every thread's current
/// context is that one or none (contexts become current only through the calls hooked
/// here), so the launch path needs neither a thread-local nor the driver to know it.
static SOLE_CONTEXT: AtomicUsize = AtomicUsize::new(NO_CONTEXT);
const NO_CONTEXT: usize = 0;
const MANY_CONTEXTS: usize = usize::MAX;

/// The context every thread of this process has current, if it has one, while the process
/// has made only one context current; `None` otherwise.
#[inline]
pub(crate) fn sole_context() -> Option<usize> {
    // Relaxed: a thread that made another context current stored `MANY_CONTEXTS` itself
    // and reads it back; one that did not still has the sole context (or none) current,
    // whatever it reads.
    match SOLE_CONTEXT.load(Relaxed) {
        NO_CONTEXT | MANY_CONTEXTS => None,
        context => Some(context),
    }
}

/// `context` is about to become, or has just become, current on the calling thread (which
/// launches nothing in between).
pub(crate) fn becomes_current(context: CUcontext) {
    let context = context as usize;
    if context == NO_CONTEXT {
        return; // the thread will have none
    }
    if let Err(sole) = SOLE_CONTEXT.compare_exchange(NO_CONTEXT, context, Relaxed, Relaxed)
        && sole != context
    {
        SOLE_CONTEXT.store(MANY_CONTEXTS, Relaxed);
    }
}

/// In a forked child (one thread): no context made current yet, and the thread's cached
/// NULL-stream entry stale.
pub(crate) fn forget_after_fork() {
    SOLE_CONTEXT.store(NO_CONTEXT, Relaxed);
    CONTEXT_EPOCH.set(CONTEXT_EPOCH.get().wrapping_add(1).max(1));
}

/// The calling thread's context epoch (see `CONTEXT_EPOCH`).
#[inline]
pub(crate) fn context_epoch() -> u64 {
    CONTEXT_EPOCH.get()
}

/// The calling thread's current context may change.
#[inline]
pub(crate) fn context_may_change() {
    CONTEXT_EPOCH.set(CONTEXT_EPOCH.get().wrapping_add(1));
}

/// `cuCtxSetCurrent`.
pub(crate) unsafe fn set_current(context: CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxSetCurrent);
    becomes_current(context);
    context_may_change();
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(context) }
}

/// `cuCtxPushCurrent_v2`.
pub(crate) unsafe fn push_current(context: CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxPushCurrent_v2);
    becomes_current(context);
    context_may_change();
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(context) }
}

/// `cuCtxPushCurrent` (v1 name).
pub(crate) unsafe fn push_current_v1(context: CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxPushCurrent);
    becomes_current(context);
    context_may_change();
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(context) }
}

/// `cuCtxPopCurrent_v2`.
pub(crate) unsafe fn pop_current(context: *mut CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxPopCurrent_v2);
    context_may_change();
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(context) }
}

/// `cuCtxPopCurrent` (v1 name).
pub(crate) unsafe fn pop_current_v1(context: *mut CUcontext) -> CUresult {
    let real = real_or_missing!(real::cuCtxPopCurrent);
    context_may_change();
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(context) }
}

/// The enforcing shim, if any (these calls never fail on our account).
fn shim() -> Option<&'static Shim> {
    match runtime::mode() {
        Mode::Enforcing(shim) => Some(shim),
        _ => None,
    }
}

/// Stops the watcher from polling `stream` before the driver destroys it.
fn retire_stream(stream: CUstream) {
    if let Some(shim) = shim() {
        let handle = stream as usize;
        shim.streams
            .retire(false, |e| e.stream() == handle && handle != 0);
        shim.gates.wait_for_poll();
    }
}

/// Stops the watcher from polling anything of `context` before the driver destroys it.
pub(crate) fn retire_context(context: CUcontext) {
    context_may_change();
    if let Some(shim) = shim() {
        let handle = context as usize;
        shim.streams.retire(true, |e| e.owner() == handle);
        shim.gates.wait_for_poll();
    }
}

/// Stops the watcher from polling anything on `device` before its primary context may go.
/// Streams that outlive it (the context was retained elsewhere) register again at their
/// next launch.
pub(crate) fn retire_device(device: CUdevice) {
    context_may_change();
    if let Some(shim) = shim()
        && let Ok(gpu) = shim.devices.by_ordinal(&shim.memory, device)
    {
        shim.streams.retire(true, |e| e.gpu() == gpu.index.0);
        shim.gates.wait_for_poll();
    }
}

/// `cuStreamDestroy_v2`.
pub(crate) unsafe fn destroy(stream: CUstream) -> CUresult {
    let real = real_or_missing!(real::cuStreamDestroy_v2);
    retire_stream(stream);
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(stream) }
}

/// `cuStreamDestroy` (the pre-4.0 name).
pub(crate) unsafe fn destroy_v1(stream: CUstream) -> CUresult {
    let real = real_or_missing!(real::cuStreamDestroy);
    retire_stream(stream);
    // SAFETY: the caller's argument, unchanged.
    unsafe { real(stream) }
}

/// Runs `begin` (a capture-starting call) with polls held off; they stay held off until
/// the matching end if it succeeds.
fn capture(begin: impl FnOnce() -> CUresult) -> CUresult {
    let Some(shim) = shim() else {
        return begin();
    };
    shim.gates.begin_capture();
    let status = begin();
    if status != CUDA_SUCCESS {
        shim.gates.end_capture();
    }
    status
}

/// After a capture-ending call (whatever its result: the capture is over either way).
fn captured(status: CUresult) -> CUresult {
    if let Some(shim) = shim() {
        shim.gates.end_capture();
    }
    status
}

/// `cuStreamBeginCapture` (CUDA 10.0, no mode argument: a second register is passed and
/// ignored, harmless in the x86-64 calling convention).
pub(crate) unsafe fn begin_capture_v1(stream: CUstream, mode: u32) -> CUresult {
    let real = real_or_missing!(real::cuStreamBeginCapture);
    // SAFETY: the caller's arguments, unchanged.
    capture(|| unsafe { real(stream, mode) })
}

/// `cuStreamBeginCapture_v2`.
pub(crate) unsafe fn begin_capture(stream: CUstream, mode: u32) -> CUresult {
    let real = real_or_missing!(real::cuStreamBeginCapture_v2);
    // SAFETY: the caller's arguments, unchanged.
    capture(|| unsafe { real(stream, mode) })
}

/// `cuStreamBeginCapture_ptsz`.
pub(crate) unsafe fn begin_capture_ptsz(stream: CUstream, mode: u32) -> CUresult {
    let real = real_or_missing!(real::cuStreamBeginCapture_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    capture(|| unsafe { real(stream, mode) })
}

/// `cuStreamBeginCapture_v2_ptsz`.
pub(crate) unsafe fn begin_capture_v2_ptsz(stream: CUstream, mode: u32) -> CUresult {
    let real = real_or_missing!(real::cuStreamBeginCapture_v2_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    capture(|| unsafe { real(stream, mode) })
}

/// `cuStreamBeginCaptureToGraph`.
pub(crate) unsafe fn begin_capture_to_graph(
    stream: CUstream,
    graph: *mut c_void,
    dependencies: *const c_void,
    edges: *const c_void,
    count: usize,
    mode: u32,
) -> CUresult {
    let real = real_or_missing!(real::cuStreamBeginCaptureToGraph);
    // SAFETY: the caller's arguments, unchanged.
    capture(|| unsafe { real(stream, graph, dependencies, edges, count, mode) })
}

/// `cuStreamBeginCaptureToGraph_ptsz`.
pub(crate) unsafe fn begin_capture_to_graph_ptsz(
    stream: CUstream,
    graph: *mut c_void,
    dependencies: *const c_void,
    edges: *const c_void,
    count: usize,
    mode: u32,
) -> CUresult {
    let real = real_or_missing!(real::cuStreamBeginCaptureToGraph_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    capture(|| unsafe { real(stream, graph, dependencies, edges, count, mode) })
}

/// `cuStreamEndCapture`.
pub(crate) unsafe fn end_capture(stream: CUstream, graph: *mut *mut c_void) -> CUresult {
    let real = real_or_missing!(real::cuStreamEndCapture);
    // SAFETY: the caller's arguments, unchanged.
    captured(unsafe { real(stream, graph) })
}

/// `cuStreamEndCapture_ptsz`.
pub(crate) unsafe fn end_capture_ptsz(stream: CUstream, graph: *mut *mut c_void) -> CUresult {
    let real = real_or_missing!(real::cuStreamEndCapture_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    captured(unsafe { real(stream, graph) })
}
