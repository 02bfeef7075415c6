//! The stream and context calls the launch gate must know about: destroying a stream or a
//! context (the watcher must stop polling it first), and stream capture (no stream may be
//! polled while one is captured: a query or an event recorded then would break the capture).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::cuda::*;
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

/// `cuCtxSetCurrent`, `cuCtxPushCurrent` and its `_v2`: `context` becomes current on the
/// calling thread.
pub(crate) fn becoming_current(call: impl FnOnce() -> CUresult, context: CUcontext) -> CUresult {
    becomes_current(context);
    context_may_change();
    call()
}

/// `cuCtxPopCurrent` and its `_v2`: the calling thread's current context changes.
pub(crate) fn context_changing(call: impl FnOnce() -> CUresult) -> CUresult {
    context_may_change();
    call()
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

/// `cuStreamDestroy` and its `_v2`: the watcher stops polling `stream` first.
pub(crate) fn destroy(call: impl FnOnce() -> CUresult, stream: CUstream) -> CUresult {
    retire_stream(stream);
    call()
}

/// Every call that begins a stream capture (`cuStreamBeginCapture`, its `_v2`, `_ptsz`
/// and `ToGraph` forms): runs `begin` with polls held off; they stay held off until the
/// matching end if it succeeds. (`cuStreamBeginCapture` of CUDA 10.0 has no mode argument:
/// the second register passed is ignored, harmless in the x86-64 calling convention.)
pub(crate) fn begin_capture(begin: impl FnOnce() -> CUresult) -> CUresult {
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

/// `cuStreamEndCapture` and its `_ptsz`: whatever its result, the capture is over.
pub(crate) fn end_capture(call: impl FnOnce() -> CUresult) -> CUresult {
    let status = call();
    if let Some(shim) = shim() {
        shim.gates.end_capture();
    }
    status
}
