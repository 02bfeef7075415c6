//! Stream capture (`cuStreamBeginCapture[_v2]`, `cuStreamEndCapture`, `cuStreamIsCapturing`,
//! `cuThreadExchangeStreamCaptureMode`): while a stream captures, the kernels submitted to it
//! are recorded for a graph (`graph.rs`) instead of run.
//!
//! The driver's rules that the simulation follows, since programs (and the gpuslice shim's
//! watcher, which polls streams from a thread of its own) must keep to them:
//!
//! - The legacy NULL stream cannot capture (`CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`); a
//!   stream that captures cannot begin another capture (`CUDA_ERROR_ILLEGAL_STATE`).
//! - Kernels and graph launches submitted to a capturing stream are recorded, in order. An
//!   event recorded into it becomes a captured event (`event.rs`): querying or waiting for it
//!   fails with `CUDA_ERROR_CAPTURED_EVENT`. Any other work (copies, memsets, host functions,
//!   frees, waits for events recorded outside the capture) is not simulated inside a capture:
//!   it fails with `CUDA_ERROR_NOT_SUPPORTED` and invalidates the capture. Work submitted to
//!   an invalidated capture fails with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`.
//! - Work on the legacy NULL stream of a context while one of its blocking streams captures
//!   would depend on the capture: it fails with `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT` and
//!   invalidates that capture (`cuStreamIsCapturing` of the NULL stream fails the same way,
//!   invalidating nothing).
//! - Querying or synchronizing a capturing stream fails with
//!   `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` and invalidates its capture, and
//!   `cuCtxSynchronize` does so for every capture of its context, whatever their modes.
//! - Calls that are "potentially unsafe" during a capture fail the same way, invalidating
//!   the captures that forbid them: those of the calling thread not begun in relaxed mode,
//!   and, unless the thread's own mode (`cuThreadExchangeStreamCaptureMode`, global by
//!   default) is thread-local or relaxed, those of other threads begun in global mode. The
//!   driver does not list those calls; here they are the ones a program (or a watcher
//!   thread) polls or waits with: `cuStreamQuery`, `cuStreamSynchronize`, `cuEventQuery`,
//!   `cuEventSynchronize` and `cuCtxSynchronize`. (PyTorch's NCCL watchdog, querying events
//!   while another thread captured, broke captures on real GPUs that way.)
//! - A capture not begun in relaxed mode ends only on the thread that began it
//!   (`CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD`, and it stays open); an invalidated capture
//!   ends with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` and a NULL graph.
//!
//! Not simulated: capturing into an existing graph (`cuStreamBeginCaptureToGraph`), several
//! streams joined into one capture by events, `cuStreamGetCaptureInfo`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::ThreadId;
use std::time::Duration;

use parking_lot::Mutex;

use crate::device::Device;
use crate::error::{CuError, CuResult};
use crate::stream::{Op, Stream};

/// `CUstreamCaptureMode`: how a capture constrains calls made during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `CU_STREAM_CAPTURE_MODE_GLOBAL` (0).
    Global,
    /// `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL` (1).
    ThreadLocal,
    /// `CU_STREAM_CAPTURE_MODE_RELAXED` (2).
    Relaxed,
}

impl Mode {
    /// The mode a `CUstreamCaptureMode` value names.
    pub fn from_raw(raw: u32) -> CuResult<Mode> {
        match raw {
            0 => Ok(Mode::Global),
            1 => Ok(Mode::ThreadLocal),
            2 => Ok(Mode::Relaxed),
            _ => Err(CuError::InvalidValue),
        }
    }

    /// The `CUstreamCaptureMode` value.
    pub fn raw(self) -> u32 {
        match self {
            Mode::Global => 0,
            Mode::ThreadLocal => 1,
            Mode::Relaxed => 2,
        }
    }
}

/// `CUstreamCaptureStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `CU_STREAM_CAPTURE_STATUS_NONE` (0).
    None,
    /// `CU_STREAM_CAPTURE_STATUS_ACTIVE` (1).
    Active,
    /// `CU_STREAM_CAPTURE_STATUS_INVALIDATED` (2).
    Invalidated,
}

impl Status {
    /// The `CUstreamCaptureStatus` value.
    pub fn raw(self) -> u32 {
        match self {
            Status::None => 0,
            Status::Active => 1,
            Status::Invalidated => 2,
        }
    }
}

/// A kernel recorded in a graph: what `Op::Kernel` runs when the graph is launched.
#[derive(Debug, Clone, Copy)]
pub struct KernelNode {
    /// How long the kernel runs.
    pub duration: Duration,
    /// The device it runs on (that of the capturing stream's context).
    pub device: Option<&'static Device>,
}

impl KernelNode {
    /// The stream work that runs this kernel.
    pub fn op(self) -> Op {
        Op::Kernel(self.duration, self.device)
    }
}

/// A capture in progress.
#[derive(Debug)]
struct Open {
    /// The capturing stream's `Stream::id`.
    stream: u64,
    /// Its context's handle.
    ctx: usize,
    /// Whether it is a blocking stream (the legacy NULL stream would depend on it).
    blocking: bool,
    id: u64,
    mode: Mode,
    thread: ThreadId,
    kernels: Vec<KernelNode>,
    invalidated: bool,
}

/// Every capture in progress in this process. `OPEN_COUNT` mirrors its length so that the
/// launch path looks at it only while some capture is open.
static OPEN: Mutex<Vec<Open>> = Mutex::new(Vec::new());
static OPEN_COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The calling thread's capture interaction mode (`cuThreadExchangeStreamCaptureMode`).
    static THREAD_MODE: Cell<Mode> = const { Cell::new(Mode::Global) };
}

fn any_open() -> bool {
    OPEN_COUNT.load(Ordering::Acquire) > 0
}

/// `cuStreamBeginCapture[_v2]`: `stream` starts capturing in `mode`; returns the capture's
/// id.
pub fn begin(stream: &Stream, mode: Mode) -> CuResult<u64> {
    if stream.is_null() {
        return Err(CuError::StreamCaptureUnsupported);
    }
    let mut open = OPEN.lock();
    if open.iter().any(|c| c.stream == stream.id) {
        return Err(CuError::IllegalState);
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    open.push(Open {
        stream: stream.id,
        ctx: stream.ctx_handle,
        blocking: stream.is_blocking(),
        id,
        mode,
        thread: std::thread::current().id(),
        kernels: Vec::new(),
        invalidated: false,
    });
    OPEN_COUNT.store(open.len(), Ordering::Release);
    Ok(id)
}

/// `cuStreamEndCapture`: ends `stream`'s capture and returns the kernels it recorded.
pub fn end(stream: &Stream) -> CuResult<Vec<KernelNode>> {
    let mut open = OPEN.lock();
    let index = open
        .iter()
        .position(|c| c.stream == stream.id)
        .ok_or(CuError::IllegalState)?;
    let capture = &open[index];
    if capture.mode != Mode::Relaxed && capture.thread != std::thread::current().id() {
        return Err(CuError::StreamCaptureWrongThread);
    }
    let capture = open.swap_remove(index);
    OPEN_COUNT.store(open.len(), Ordering::Release);
    if capture.invalidated {
        Err(CuError::StreamCaptureInvalidated)
    } else {
        Ok(capture.kernels)
    }
}

/// `cuStreamIsCapturing`: whether `stream` captures, and the capture's id (0 if not).
pub fn status(stream: &Stream) -> CuResult<(Status, u64)> {
    if !any_open() {
        return Ok((Status::None, 0));
    }
    let open = OPEN.lock();
    if stream.is_null()
        && open
            .iter()
            .any(|c| c.ctx == stream.ctx_handle && c.blocking)
    {
        return Err(CuError::StreamCaptureImplicit);
    }
    Ok(open
        .iter()
        .find(|c| c.stream == stream.id)
        .map_or((Status::None, 0), |c| {
            let status = if c.invalidated {
                Status::Invalidated
            } else {
                Status::Active
            };
            (status, c.id)
        }))
}

/// Forgets `stream`'s capture, if it has one (the stream is destroyed).
pub fn forget(stream: &Stream) {
    if any_open() {
        let mut open = OPEN.lock();
        open.retain(|c| c.stream != stream.id);
        OPEN_COUNT.store(open.len(), Ordering::Release);
    }
}

/// What becomes of work submitted to a stream.
#[derive(Debug)]
pub enum Intercepted {
    /// Recorded into the stream's capture, whose id this is.
    Captured(u64),
    /// Not captured: the stream runs it.
    Run(Vec<Op>),
}

/// Work submitted to `stream` (in one piece): recorded if the stream captures, refused if
/// it may not be captured or run now (see the module's documentation), else given back to
/// run.
pub fn intercept(stream: &Stream, ops: Vec<Op>) -> CuResult<Intercepted> {
    if !any_open() {
        return Ok(Intercepted::Run(ops));
    }
    let mut open = OPEN.lock();
    if stream.is_null() {
        let mut implicit = false;
        for c in open
            .iter_mut()
            .filter(|c| c.ctx == stream.ctx_handle && c.blocking)
        {
            c.invalidated = true;
            implicit = true;
        }
        return if implicit {
            Err(CuError::StreamCaptureImplicit)
        } else {
            Ok(Intercepted::Run(ops))
        };
    }
    let Some(capture) = open.iter_mut().find(|c| c.stream == stream.id) else {
        return Ok(Intercepted::Run(ops));
    };
    if capture.invalidated {
        return Err(CuError::StreamCaptureInvalidated);
    }
    let mut kernels = Vec::new();
    for op in &ops {
        match *op {
            Op::Kernel(duration, device) => kernels.push(KernelNode { duration, device }),
            Op::Record(_) => {}
            Op::Host(_) | Op::Wait(_) | Op::AwaitStream(..) => {
                capture.invalidated = true;
                return Err(CuError::NotSupported);
            }
        }
    }
    capture.kernels.extend(kernels);
    Ok(Intercepted::Captured(capture.id))
}

/// The id of `stream`'s capture, if it captures (valid or not).
pub fn capture_of(stream: &Stream) -> Option<u64> {
    if !any_open() {
        return None;
    }
    OPEN.lock()
        .iter()
        .find(|c| c.stream == stream.id)
        .map(|c| c.id)
}

/// Before `cuStreamQuery` or `cuStreamSynchronize` of `stream`: refused (invalidating the
/// capture) while the stream captures, or while the legacy NULL stream would depend on a
/// capture; then as `check_unsafe_call`.
pub fn check_stream_wait(stream: &Stream) -> CuResult {
    if !any_open() {
        return Ok(());
    }
    {
        let mut open = OPEN.lock();
        let mut refused = None;
        for c in open.iter_mut() {
            if c.stream == stream.id {
                c.invalidated = true;
                refused = Some(CuError::StreamCaptureUnsupported);
            } else if stream.is_null() && c.ctx == stream.ctx_handle && c.blocking {
                c.invalidated = true;
                refused = Some(CuError::StreamCaptureImplicit);
            }
        }
        if let Some(error) = refused {
            return Err(error);
        }
    }
    check_unsafe_call()
}

/// Before `cuCtxSynchronize` of the context `ctx`: refused, invalidating them, while any
/// stream of the context captures; then as `check_unsafe_call`.
pub fn check_context_wait(ctx: usize) -> CuResult {
    if !any_open() {
        return Ok(());
    }
    {
        let mut open = OPEN.lock();
        let mut refused = false;
        for c in open.iter_mut().filter(|c| c.ctx == ctx) {
            c.invalidated = true;
            refused = true;
        }
        if refused {
            return Err(CuError::StreamCaptureUnsupported);
        }
    }
    check_unsafe_call()
}

/// Before a potentially unsafe call (see the module's documentation): refused, invalidating
/// the captures that forbid it, while the calling thread may not make it.
pub fn check_unsafe_call() -> CuResult {
    if !any_open() {
        return Ok(());
    }
    let mode = THREAD_MODE.get();
    if mode == Mode::Relaxed {
        return Ok(());
    }
    let me = std::thread::current().id();
    let mut refused = false;
    for c in OPEN.lock().iter_mut() {
        let own = c.thread == me && c.mode != Mode::Relaxed;
        let global = mode == Mode::Global && c.thread != me && c.mode == Mode::Global;
        if own || global {
            c.invalidated = true;
            refused = true;
        }
    }
    if refused {
        Err(CuError::StreamCaptureUnsupported)
    } else {
        Ok(())
    }
}

/// `cuThreadExchangeStreamCaptureMode`: sets the calling thread's mode; returns the one it
/// had.
pub fn exchange_mode(mode: Mode) -> Mode {
    THREAD_MODE.replace(mode)
}

/// Keeps unit tests that open captures apart: captures are process-wide, and one test's
/// unsafe call would invalidate another's capture.
#[cfg(test)]
pub(crate) fn serial() -> parking_lot::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Marker, Submitted};
    use std::sync::{Arc, Weak};
    use std::time::Instant;

    /// A created stream of no context (ctx handle `ctx`), with a worker of its own.
    fn stream(ctx: usize, flags: u32) -> Arc<Stream> {
        Stream::spawn(Weak::new(), ctx, crate::handles::fresh(), flags, 0).unwrap()
    }

    fn kernel(ms: u64) -> Op {
        Op::Kernel(Duration::from_millis(ms), None)
    }

    #[test]
    fn kernels_submitted_while_capturing_are_recorded_not_run() {
        let _serial = serial();
        let s = stream(1, 0);
        // The stream's clock starts when its worker does: let it start.
        let started = Marker::new();
        s.submit(Op::Record(Arc::clone(&started))).unwrap();
        started.wait();
        let id = begin(&s, Mode::Global).unwrap();
        assert_eq!(status(&s), Ok((Status::Active, id)));
        assert_eq!(s.submit(kernel(50)), Ok(Submitted::Captured(id)));
        assert_eq!(
            s.submit_all(vec![kernel(1), Op::Record(Marker::new()), kernel(2)]),
            Ok(Submitted::Captured(id))
        );
        assert!(s.is_idle(), "nothing runs while the stream captures");
        let kernels = end(&s).unwrap();
        let lengths: Vec<Duration> = kernels.iter().map(|k| k.duration).collect();
        assert_eq!(lengths, [50, 1, 2].map(Duration::from_millis));
        assert_eq!(status(&s), Ok((Status::None, 0)));
        // Captured no longer: work runs again, at once (the stream's clock has nothing of the
        // captured kernels before it).
        let (before, after) = (Marker::new(), Marker::new());
        let ops = vec![
            Op::Record(Arc::clone(&before)),
            kernel(1),
            Op::Record(Arc::clone(&after)),
        ];
        assert_eq!(s.submit_all(ops), Ok(Submitted::Queued));
        let submitted = Instant::now();
        let ran = after.wait();
        assert!(before.time().unwrap() <= submitted, "nothing ran before it");
        assert_eq!(ran - before.time().unwrap(), Duration::from_millis(1));
        s.shutdown();
    }

    #[test]
    fn a_stream_captures_once_at_a_time_and_never_the_legacy_one() {
        let _serial = serial();
        let s = stream(2, 0);
        let legacy = Stream::spawn(Weak::new(), 2, 0, 0, 0).unwrap();
        assert_eq!(
            begin(&legacy, Mode::Global),
            Err(CuError::StreamCaptureUnsupported)
        );
        assert_eq!(end(&s).err(), Some(CuError::IllegalState));
        begin(&s, Mode::Relaxed).unwrap();
        assert_eq!(begin(&s, Mode::Relaxed), Err(CuError::IllegalState));
        end(&s).unwrap();
        s.shutdown();
        legacy.shutdown();
    }

    #[test]
    fn work_that_cannot_be_captured_invalidates_the_capture() {
        let _serial = serial();
        let s = stream(3, 0);
        begin(&s, Mode::ThreadLocal).unwrap();
        s.submit(kernel(1)).unwrap();
        assert_eq!(
            s.submit(Op::Host(Box::new(|| {}))),
            Err(CuError::NotSupported)
        );
        assert!(matches!(status(&s), Ok((Status::Invalidated, _))));
        assert_eq!(s.submit(kernel(1)), Err(CuError::StreamCaptureInvalidated));
        assert_eq!(end(&s).err(), Some(CuError::StreamCaptureInvalidated));
        assert_eq!(status(&s), Ok((Status::None, 0)), "ended all the same");
        s.shutdown();
    }

    #[test]
    fn the_legacy_stream_may_not_be_used_while_a_blocking_stream_captures() {
        let _serial = serial();
        let (ctx, other_ctx) = (4, 5);
        let blocking = stream(ctx, 0);
        let non_blocking = stream(ctx, crate::stream::NON_BLOCKING);
        let legacy = Stream::spawn(Weak::new(), ctx, 0, 0, 0).unwrap();
        let other_legacy = Stream::spawn(Weak::new(), other_ctx, 0, 0, 0).unwrap();

        begin(&non_blocking, Mode::Relaxed).unwrap();
        assert_eq!(status(&legacy), Ok((Status::None, 0)));
        assert_eq!(legacy.submit(kernel(0)), Ok(Submitted::Queued));
        end(&non_blocking).unwrap();

        begin(&blocking, Mode::Relaxed).unwrap();
        assert_eq!(status(&legacy), Err(CuError::StreamCaptureImplicit));
        assert!(
            matches!(status(&blocking), Ok((Status::Active, _))),
            "asking invalidates nothing"
        );
        assert_eq!(other_legacy.submit(kernel(0)), Ok(Submitted::Queued));
        assert_eq!(
            legacy.submit(kernel(0)),
            Err(CuError::StreamCaptureImplicit)
        );
        assert_eq!(
            end(&blocking).err(),
            Some(CuError::StreamCaptureInvalidated)
        );
        for s in [blocking, non_blocking, legacy, other_legacy] {
            s.shutdown();
        }
    }

    #[test]
    fn waiting_for_a_capturing_stream_or_its_context_invalidates_the_capture() {
        let _serial = serial();
        let (s, t) = (stream(6, 0), stream(6, 0));
        begin(&s, Mode::Relaxed).unwrap();
        assert_eq!(check_stream_wait(&t), Ok(()), "relaxed: others may wait");
        assert_eq!(
            check_stream_wait(&s),
            Err(CuError::StreamCaptureUnsupported)
        );
        assert_eq!(end(&s).err(), Some(CuError::StreamCaptureInvalidated));

        begin(&s, Mode::Relaxed).unwrap();
        assert_eq!(check_context_wait(7), Ok(()), "another context");
        assert_eq!(
            check_context_wait(6),
            Err(CuError::StreamCaptureUnsupported)
        );
        assert_eq!(end(&s).err(), Some(CuError::StreamCaptureInvalidated));
        s.shutdown();
        t.shutdown();
    }

    #[test]
    fn unsafe_calls_follow_the_capture_modes_of_both_threads() {
        let _serial = serial();
        let s = stream(8, 0);
        // From another thread, in each of that thread's modes, while this thread captures in
        // each mode: whether a potentially unsafe call is refused.
        let refused_elsewhere = |thread_mode: Mode| {
            std::thread::spawn(move || {
                exchange_mode(thread_mode);
                check_unsafe_call().is_err()
            })
            .join()
            .unwrap()
        };
        for (capture_mode, own, global, local, relaxed) in [
            (Mode::Global, true, true, false, false),
            (Mode::ThreadLocal, true, false, false, false),
            (Mode::Relaxed, false, false, false, false),
        ] {
            begin(&s, capture_mode).unwrap();
            assert_eq!(refused_elsewhere(Mode::Global), global, "{capture_mode:?}");
            assert_eq!(
                refused_elsewhere(Mode::ThreadLocal),
                local,
                "{capture_mode:?}"
            );
            assert_eq!(
                refused_elsewhere(Mode::Relaxed),
                relaxed,
                "{capture_mode:?}"
            );
            assert_eq!(check_unsafe_call().is_err(), own, "{capture_mode:?}");
            let ended = end(&s);
            assert_eq!(ended.is_err(), own || global, "{capture_mode:?}");
        }
        // A relaxed thread may make them during its own capture.
        assert_eq!(exchange_mode(Mode::Relaxed), Mode::Global);
        begin(&s, Mode::Global).unwrap();
        assert_eq!(check_unsafe_call(), Ok(()));
        assert!(end(&s).is_ok());
        assert_eq!(exchange_mode(Mode::Global), Mode::Relaxed);
        s.shutdown();
    }

    #[test]
    fn a_capture_ends_on_its_own_thread_unless_relaxed() {
        let _serial = serial();
        let s = stream(9, 0);
        begin(&s, Mode::ThreadLocal).unwrap();
        let elsewhere = || {
            let s = Arc::clone(&s);
            std::thread::spawn(move || end(&s).map(|k| k.len()))
                .join()
                .unwrap()
        };
        assert_eq!(elsewhere(), Err(CuError::StreamCaptureWrongThread));
        assert!(matches!(status(&s), Ok((Status::Active, _))), "still open");
        end(&s).unwrap();
        begin(&s, Mode::Relaxed).unwrap();
        assert_eq!(elsewhere(), Ok(0));
        s.shutdown();
    }
}
