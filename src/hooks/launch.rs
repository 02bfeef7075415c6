//! Kernel launches: every launch path of the driver passes its GPU's launch gate
//! (`gate.rs`) and marks its stream for the watcher (`streams.rs`).
//!
//! The fast path, a launch on a stream already in the table while the gate is open, makes
//! no system call, takes no lock and calls no CUDA function: a table lookup, two atomic
//! loads, the real launch, one atomic add (the stream's launch count; while a high-priority
//! tenant bounds the launches in flight, a few more loads and a second add). The NULL
//! stream is one per context: while the process has made only one context current, its
//! entry is cached for all threads; otherwise each thread caches its own, valid until a
//! call that can change the thread's current context (`cuCtxSetCurrent`, push, pop,
//! create, destroy) bumps the thread's epoch. A stream's first launch registers it (and
//! starts the watcher once).
//!
//! Launches into a stream being captured into a graph do not run, so they pass ungated;
//! the graph's launch (`cuGraphLaunch`) is gated instead.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use gpuslice_ledger::GpuIndex;

use crate::cuda::*;
use crate::hooks::device::current_context;
use crate::log::{Level, RateLimit, log};
use crate::policy::gpu_time::TimedSpan;
use crate::runtime::{self, Mode};
use crate::shim::Shim;
use crate::streams::{Sampled, StreamEntry, StreamKind};

static UNTRACKED: RateLimit = RateLimit::new();

/// The table index of the sole context's NULL-stream entry (see `sole_context`): an index
/// only, checked against the entry at each use.
static SOLE_NULL_STREAM: AtomicUsize = AtomicUsize::new(usize::MAX);

thread_local! {
    /// This thread's NULL-stream entry: (table index, context, context epoch when cached).
    static NULL_STREAM: Cell<(usize, usize, u64)> = const { Cell::new((usize::MAX, 0, 0)) };
}

/// In a forked child (one thread): the parent's stream table is not the child's.
pub(crate) fn forget_after_fork() {
    SOLE_NULL_STREAM.store(usize::MAX, Relaxed);
    NULL_STREAM.set((usize::MAX, 0, 0));
}

/// A launch through the default-stream entry point (the NULL stream is the context's).
pub(crate) const LEGACY: bool = false;
/// A launch through a `_ptsz` entry point (the NULL stream is the thread's).
pub(crate) const PER_THREAD: bool = true;

/// Every launch whose stream is an argument (`cuLaunchKernel`, `cuLaunchCooperativeKernel`,
/// `cuGraphLaunch` and their `_ptsz` twins): runs `launch` (the real driver call for
/// `stream`) once the gate lets it through. `per_thread`: `PER_THREAD` or `LEGACY`.
#[inline]
pub(crate) fn gated(
    launch: impl FnOnce() -> CUresult,
    stream: CUstream,
    per_thread: bool,
) -> CUresult {
    let shim = match runtime::mode() {
        Mode::Enforcing(shim) => shim,
        Mode::PassThrough => return launch(),
        Mode::Failed => return CUDA_ERROR_NOT_INITIALIZED,
    };
    if shim.gates.capturing() {
        return launch();
    }
    let entry = match stream_entry(shim, stream as usize) {
        Ok(entry) => entry,
        // No context current: the driver refuses the launch itself, nothing runs.
        Err(Untracked::NoContext) => return launch(),
        Err(Untracked::CannotFollow) => return refused_untracked(),
    };
    let Some(gate) = shim.gates.gpu(entry.gpu()) else {
        return refused_untracked();
    };
    if stream as usize == CU_STREAM_PER_THREAD || (per_thread && stream.is_null()) {
        entry.note_per_thread();
    }
    if !gate.may_pass()
        && !gate.wait(
            shim.memory.usage(),
            GpuIndex(entry.gpu()),
            shim.gates.bell(),
        )
    {
        return refused_unwatched();
    }
    match entry.take_sample() {
        None => counted(entry, gate, launch()),
        Some(Sampled::Timed(start, end)) => {
            timed(entry, gate, stream, per_thread, (start, end), launch)
        }
        Some(Sampled::Reference) => reference(entry, gate, launch),
    }
}

/// Why a launch's stream has no entry in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Untracked {
    /// The calling thread has no current context (the driver refuses such a launch).
    NoContext,
    /// The table has no room for it, or its GPU is not known: its work could be neither
    /// gated nor measured.
    CannotFollow,
}

/// A launch on a stream gpuslice cannot follow is refused, never let through unmeasured:
/// otherwise a tenant would only have to keep more streams alive than the table holds to
/// run past its limit on the rest.
#[cold]
#[inline(never)]
fn refused_untracked() -> CUresult {
    if let Some(held_back) = UNTRACKED.admit() {
        log!(
            Level::Error,
            "refused a launch on a stream gpuslice cannot follow (more than {} streams at once, \
             or one of an unknown GPU): its work could be neither gated nor measured{}",
            crate::streams::CAPACITY,
            if held_back > 0 {
                format!(" ({held_back} more refused)")
            } else {
                String::new()
            }
        );
    }
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
}

/// A launch whose gate is broken (the watcher could not start, or failed) is refused.
#[cold]
#[inline(never)]
fn refused_unwatched() -> CUresult {
    static REFUSED: RateLimit = RateLimit::new();
    if REFUSED.admit().is_some() {
        log!(
            Level::Error,
            "refused a launch: the compute watcher is not running (see its error above), \
             so the tenant's compute limits could not hold"
        );
    }
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
}

/// Counts a launch that reached the driver, in its stream and its gate.
#[inline]
fn counted(entry: &StreamEntry, gate: &crate::gate::GpuGate, status: CUresult) -> CUresult {
    if status == CUDA_SUCCESS {
        entry.count_launch();
        gate.count_launch();
    }
    status
}

/// A launch the watcher asked to have timed (`policy::gpu_time`): between two of its
/// events, recorded on the launch's own stream, so that they add no dependency the launch
/// itself does not make.
#[cold]
#[inline(never)]
fn timed(
    entry: &StreamEntry,
    gate: &crate::gate::GpuGate,
    stream: CUstream,
    per_thread: bool,
    (start, end): (usize, usize),
    launch: impl FnOnce() -> CUresult,
) -> CUresult {
    // What was not the launch's work between the events: `TimedSpan::not_run_ns`.
    let before = gpuslice_ledger::monotonic_ns();
    let started = record(start, stream, per_thread);
    let recorded = gpuslice_ledger::monotonic_ns();
    let status = counted(entry, gate, launch());
    let launched = gpuslice_ledger::monotonic_ns();
    let found_idle = reached(start);
    let tail_from = gpuslice_ledger::monotonic_ns();
    let ended = started && status == CUDA_SUCCESS && record(end, stream, per_thread);
    let end_recorded = gpuslice_ledger::monotonic_ns();
    let span = TimedSpan {
        record_ns: recorded.saturating_sub(before),
        call_ns: launched.saturating_sub(recorded),
        found_idle,
        tail_ns: end_recorded.saturating_sub(tail_from),
        ended_before: ended && reached(end),
        reference_call_ns: entry.reference_call_ns(),
    };
    entry.sample_recorded(ended, span);
    status
}

/// The launch just before a timed one: its call timed with the clock alone, which no CUDA
/// call and nothing a tenant can see tells from any other launch, so that the timed
/// launch's call cannot be stretched to take its kernel off its sample
/// (`TimedSpan::reference_call_ns`).
#[cold]
#[inline(never)]
fn reference(
    entry: &StreamEntry,
    gate: &crate::gate::GpuGate,
    launch: impl FnOnce() -> CUresult,
) -> CUresult {
    let before = gpuslice_ledger::monotonic_ns();
    let status = counted(entry, gate, launch());
    entry.reference_call(gpuslice_ledger::monotonic_ns().saturating_sub(before));
    status
}

/// Whether one of the watcher's events was reached.
fn reached(event: usize) -> bool {
    crate::real::cuda::cuEventQuery().is_some_and(|query| {
        // SAFETY: an event the watcher created, recorded just before.
        unsafe { query(event as *mut c_void) == CUDA_SUCCESS }
    })
}

/// Records one of the watcher's events on the program's `stream`.
fn record(event: usize, stream: CUstream, per_thread: bool) -> bool {
    let record = if per_thread {
        crate::real::cuda::cuEventRecord_ptsz()
    } else {
        crate::real::cuda::cuEventRecord()
    };
    record.is_some_and(|record| {
        // SAFETY: an event the watcher created in the stream's context, and the stream the
        // program is launching on, not captured (capture was checked before).
        unsafe { record(event as *mut c_void, stream) == CUDA_SUCCESS }
    })
}

/// The table entry of the stream a launch goes to, registering it on first sight.
#[inline]
fn stream_entry(shim: &'static Shim, stream: usize) -> Result<&'static StreamEntry, Untracked> {
    let default_stream =
        stream == 0 || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD;
    if !default_stream {
        return match shim.streams.find(stream, 0) {
            Some(entry) => Ok(entry),
            None => register(shim, stream),
        };
    }
    // The NULL stream (legacy, or the thread's own in the `_ptsz` entry points): per-thread
    // default streams cannot be polled from another thread, so they share their context's
    // legacy entry, marked as having per-thread work (`gated`): the watcher then knows
    // their launches finished only through the launches it has timed on them, which are
    // recorded on the launching thread's own stream. Their launches are gated all the same.
    // In a process with one context (the common case) it is that context's, whichever the
    // thread.
    if let Some(context) = crate::hooks::stream::sole_context()
        && let Some(entry) = shim.streams.get(SOLE_NULL_STREAM.load(Relaxed))
        && entry.is_legacy_of(context)
    {
        return Ok(entry);
    }
    null_stream_entry(shim)
}

/// The NULL-stream entry of the calling thread's current context, registering it on first
/// sight.
#[inline(never)]
fn null_stream_entry(shim: &'static Shim) -> Result<&'static StreamEntry, Untracked> {
    // The thread's current context changes only through calls that bump its epoch, so
    // the entry found for it stays right until the epoch moves.
    let epoch = crate::hooks::stream::context_epoch();
    let (index, context, cached_epoch) = NULL_STREAM.get();
    if cached_epoch == epoch
        && let Some(entry) = shim.streams.get(index)
        && entry.is_legacy_of(context)
    {
        return Ok(entry);
    }
    let context = current_context().ok_or(Untracked::NoContext)?;
    let entry = match shim.streams.find(0, context) {
        Some(entry) => entry,
        None => register(shim, 0)?,
    };
    if let Some(index) = shim.streams.index_of(entry) {
        NULL_STREAM.set((index, context, epoch));
        if crate::hooks::stream::sole_context() == Some(context) {
            SOLE_NULL_STREAM.store(index, Relaxed);
        }
    }
    Ok(entry)
}

#[cold]
#[inline(never)]
fn register(shim: &'static Shim, stream: usize) -> Result<&'static StreamEntry, Untracked> {
    shim.ensure_watcher();
    let context = current_context().ok_or(Untracked::NoContext)?;
    let handle = stream as CUstream;
    let gpu = match stream {
        0 => shim.devices.current(&shim.memory),
        _ => shim.devices.of_stream(&shim.memory, handle),
    }
    .map_err(|_| Untracked::CannotFollow)?;
    let inserted = if stream == 0 {
        shim.streams
            .insert(0, context, context, gpu.index.0, StreamKind::Legacy)
    } else {
        shim.streams
            .insert(stream, 0, context, gpu.index.0, StreamKind::Created)
    };
    inserted.ok_or(Untracked::CannotFollow)
}

/// The stream of a `CUlaunchConfig`.
///
/// # Safety
/// `config` is null or points to a `CUlaunchConfig`, as `cuLaunchKernelEx` requires.
unsafe fn config_stream(config: *const c_void) -> Option<CUstream> {
    if config.is_null() {
        return None;
    }
    // SAFETY: the caller's config, which the API requires to be a valid CUlaunchConfig
    // (its layout, checked in the ABI crate, is fixed since CUDA 12.0); one field is read.
    Some(unsafe { (*config.cast::<CUlaunchConfig>()).stream })
}

/// `cuLaunchKernelEx` and its `_ptsz` twin: the stream is inside the config.
///
/// # Safety
/// `config` is the caller's, as the C API defines it (null or a valid `CUlaunchConfig`).
pub(crate) unsafe fn gated_in_config(
    launch: impl FnOnce() -> CUresult,
    config: *const c_void,
    per_thread: bool,
) -> CUresult {
    // SAFETY: per this function's contract.
    match unsafe { config_stream(config) } {
        Some(stream) => gated(launch, stream, per_thread),
        // The driver rejects the null config itself.
        None => launch(),
    }
}
