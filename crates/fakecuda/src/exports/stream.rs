//! Streams, events, host functions and stream capture: `cuStream*`, `cuEvent*`,
//! `cuLaunchHostFunc`, `cuThreadExchangeStreamCaptureMode`.

use std::ffi::{c_int, c_void};

use super::{Out, cuda_api, put, put_if};
use crate::capture::{self, Mode};
use crate::context;
use crate::error::{CuError, CuResult};
use crate::event::{self, Recorded};
use crate::graph;
use crate::ordered::context_of;
use crate::pool;
use crate::stream::{self, NON_BLOCKING, Op};

/// A host function (`CUhostFn`).
pub type HostFn = Option<unsafe extern "C" fn(*mut c_void)>;

fn create_stream(out: Out<'_, usize>, flags: u32, priority: c_int) -> CuResult {
    let out = out.ok_or(CuError::InvalidValue)?;
    if flags & !NON_BLOCKING != 0 {
        return Err(CuError::InvalidValue);
    }
    out.write(context::current()?.create_stream(flags, priority)?.handle);
    Ok(())
}

fn query(handle: usize) -> CuResult {
    let s = stream::resolve(handle)?;
    capture::check_stream_wait(&s)?;
    if s.is_idle() {
        Ok(())
    } else {
        Err(CuError::NotReady)
    }
}

fn wait_event(handle: usize, ev: usize, flags: u32) -> CuResult {
    let s = stream::resolve(handle)?;
    if flags & !0x1 != 0 {
        return Err(CuError::InvalidValue);
    }
    match event::latest(ev)? {
        None => Ok(()),
        Some(Recorded::Marker(marker)) => s.submit(Op::Wait(marker)).map(drop),
        // Recorded earlier in this same capture: the capture keeps stream order already.
        Some(Recorded::Captured(id)) if capture::capture_of(&s) == Some(id) => Ok(()),
        // Joining another stream into a capture is not simulated.
        Some(Recorded::Captured(_)) => Err(CuError::NotSupported),
    }
}

fn launch_host_func(handle: usize, f: HostFn, user_data: *mut c_void) -> CuResult {
    let f = f.ok_or(CuError::InvalidValue)?;
    let s = stream::resolve(handle)?;
    let user_data = user_data as usize;
    s.submit(Op::Host(Box::new(move || {
        // SAFETY: the caller registered f to be called with user_data in stream order.
        unsafe { f(user_data as *mut c_void) };
    })))
    .map(drop)
}

fn begin_capture(handle: usize, mode: Mode) -> CuResult {
    capture::begin(&*stream::resolve(handle)?, mode).map(drop)
}

fn end_capture(handle: usize, out: Out<'_, usize>) -> CuResult {
    let out = out.ok_or(CuError::InvalidValue)?;
    let s = stream::resolve(handle)?;
    match capture::end(&s) {
        Ok(kernels) => {
            out.write(graph::create(kernels));
            Ok(())
        }
        Err(CuError::StreamCaptureInvalidated) => {
            out.write(0);
            Err(CuError::StreamCaptureInvalidated)
        }
        Err(e) => Err(e),
    }
}

fn stream_ctx(handle: usize) -> CuResult<usize> {
    let s = stream::resolve(handle)?;
    Ok(context_of(&s)?.handle)
}

cuda_api! {
    /// `cuStreamCreate`: a stream with its own worker thread in the current context.
    fn cuStreamCreate(out: Out<'_, usize>, flags: u32) {
        create_stream(out, flags, 0)
    }

    /// `cuStreamCreateWithPriority`: priorities are recorded, not simulated.
    fn cuStreamCreateWithPriority(out: Out<'_, usize>, flags: u32, priority: c_int) {
        create_stream(out, flags, priority)
    }

    /// `cuStreamGetPriority`.
    fn cuStreamGetPriority | cuStreamGetPriority_ptsz (handle: usize, priority: Out<'_, c_int>) {
        put(priority, stream::resolve(handle)?.priority)
    }

    /// `cuStreamGetFlags`.
    fn cuStreamGetFlags | cuStreamGetFlags_ptsz (handle: usize, flags: Out<'_, u32>) {
        put(flags, stream::resolve(handle)?.flags)
    }

    /// `cuStreamGetCtx`.
    fn cuStreamGetCtx | cuStreamGetCtx_ptsz (handle: usize, ctx: Out<'_, usize>) {
        put(ctx, stream_ctx(handle)?)
    }

    /// `cuStreamGetCtx_v2`: never a green context.
    fn cuStreamGetCtx_v2 | cuStreamGetCtx_v2_ptsz (
        handle: usize,
        ctx: Out<'_, usize>,
        green_ctx: Out<'_, usize>,
    ) {
        put(ctx, stream_ctx(handle)?)?;
        put_if(green_ctx, 0);
        Ok(())
    }

    /// `cuStreamWaitEvent`: later work on the stream waits for the event's latest record.
    fn cuStreamWaitEvent | cuStreamWaitEvent_ptsz (handle: usize, ev: usize, flags: u32) {
        wait_event(handle, ev, flags)
    }

    /// `cuStreamQuery`: `CUDA_ERROR_NOT_READY` while work is queued. Refused while the
    /// stream captures, and a potentially unsafe call during other captures (`capture.rs`).
    fn cuStreamQuery | cuStreamQuery_ptsz (handle: usize) {
        query(handle)
    }

    /// `cuStreamSynchronize`: then memory pools give back idle memory above their release
    /// thresholds. Refused as `cuStreamQuery` is during captures.
    fn cuStreamSynchronize | cuStreamSynchronize_ptsz (handle: usize) {
        let s = stream::resolve(handle)?;
        capture::check_stream_wait(&s)?;
        s.synchronize();
        pool::synchronized();
        Ok(())
    }

    /// `cuStreamDestroy_v2`: queued work still runs. The NULL, legacy and per-thread streams
    /// cannot be destroyed.
    fn cuStreamDestroy_v2(handle: usize) {
        if stream::is_special(handle) {
            return Err(CuError::InvalidHandle);
        }
        let s = stream::resolve(handle)?;
        context_of(&s)?.destroy_stream(handle)
    }

    /// `cuStreamBeginCapture` (CUDA 10.0, without a mode: global).
    fn cuStreamBeginCapture | cuStreamBeginCapture_ptsz (handle: usize) {
        begin_capture(handle, Mode::Global)
    }

    /// `cuStreamBeginCapture_v2`: the stream's kernels are recorded, not run, until
    /// `cuStreamEndCapture`.
    fn cuStreamBeginCapture_v2 | cuStreamBeginCapture_v2_ptsz (handle: usize, mode: u32) {
        begin_capture(handle, Mode::from_raw(mode)?)
    }

    /// `cuStreamEndCapture`: the graph of what was recorded; a NULL graph and
    /// `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` if the capture was invalidated.
    fn cuStreamEndCapture | cuStreamEndCapture_ptsz (handle: usize, graph: Out<'_, usize>) {
        end_capture(handle, graph)
    }

    /// `cuStreamIsCapturing`: `CU_STREAM_CAPTURE_STATUS_NONE`, `_ACTIVE` or `_INVALIDATED`.
    fn cuStreamIsCapturing | cuStreamIsCapturing_ptsz (handle: usize, status: Out<'_, u32>) {
        let status = status.ok_or(CuError::InvalidValue)?;
        let (now, _) = capture::status(&*stream::resolve(handle)?)?;
        status.write(now.raw());
        Ok(())
    }

    /// `cuThreadExchangeStreamCaptureMode`: sets the calling thread's mode from `*mode` and
    /// writes back the one it had.
    fn cuThreadExchangeStreamCaptureMode(mode: Option<&mut u32>) {
        let mode = mode.ok_or(CuError::InvalidValue)?;
        *mode = capture::exchange_mode(Mode::from_raw(*mode)?).raw();
        Ok(())
    }

    /// `cuLaunchHostFunc`: calls `f(user_data)` on the stream's thread in stream order.
    fn cuLaunchHostFunc | cuLaunchHostFunc_ptsz (handle: usize, f: HostFn, user_data: *mut c_void) {
        launch_host_func(handle, f, user_data)
    }

    /// `cuEventCreate`.
    fn cuEventCreate(out: Out<'_, usize>, flags: u32) {
        let out = out.ok_or(CuError::InvalidValue)?;
        context::current()?;
        out.write(event::create(flags)?);
        Ok(())
    }

    /// `cuEventRecord`: completes, with the stream's clock, when the stream reaches it.
    fn cuEventRecord | cuEventRecord_ptsz (ev: usize, handle: usize) {
        event::record(ev, &*stream::resolve(handle)?)
    }

    /// `cuEventRecordWithFlags`.
    fn cuEventRecordWithFlags | cuEventRecordWithFlags_ptsz (ev: usize, handle: usize, flags: u32) {
        if flags & !0x1 != 0 {
            return Err(CuError::InvalidValue);
        }
        event::record(ev, &*stream::resolve(handle)?)
    }

    /// `cuEventQuery`.
    fn cuEventQuery(ev: usize) {
        event::query(ev)
    }

    /// `cuEventSynchronize`: then memory pools give back idle memory above their release
    /// thresholds.
    fn cuEventSynchronize(ev: usize) {
        event::synchronize(ev)?;
        pool::synchronized();
        Ok(())
    }

    /// `cuEventDestroy_v2`.
    fn cuEventDestroy_v2(ev: usize) {
        event::destroy(ev)
    }

    /// `cuEventElapsedTime`: milliseconds between two completed records.
    fn cuEventElapsedTime | cuEventElapsedTime_v2 (ms: Out<'_, f32>, start: usize, end: usize) {
        let out = ms.ok_or(CuError::InvalidValue)?;
        out.write(event::elapsed_ms(start, end)?);
        Ok(())
    }
}
