//! Events: markers recorded into streams, completed with the stream's clock when the stream
//! reaches them. An event recorded into a capturing stream is a captured event until it is
//! recorded again outside a capture: it cannot be queried or waited for.

use std::sync::Arc;

use gpuslice_cuda_abi::CU_EVENT_DISABLE_TIMING as DISABLE_TIMING;
use parking_lot::Mutex;

use crate::capture;
use crate::error::{CuError, CuResult};
use crate::handles::Table;
use crate::stream::{Marker, Op, Stream, Submitted};

/// Every `CU_EVENT_*` creation flag: BLOCKING_SYNC, DISABLE_TIMING, INTERPROCESS.
const KNOWN_FLAGS: u32 = 0x1 | 0x2 | 0x4;

/// An event.
#[derive(Debug)]
pub struct Event {
    flags: u32,
    latest: Mutex<Option<Recorded>>,
}

/// An event's latest record.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// In a stream's work: completes when the stream reaches it.
    Marker(Arc<Marker>),
    /// In the capture of this id.
    Captured(u64),
}

static EVENTS: Table<Event> = Table::new();

fn get(handle: usize) -> CuResult<Arc<Event>> {
    EVENTS.get(handle).ok_or(CuError::InvalidHandle)
}

/// `cuEventCreate`.
pub fn create(flags: u32) -> CuResult<usize> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(CuError::InvalidValue);
    }
    Ok(EVENTS.insert(Arc::new(Event {
        flags,
        latest: Mutex::new(None),
    })))
}

/// `cuEventDestroy`: work already recorded still completes.
pub fn destroy(handle: usize) -> CuResult {
    EVENTS
        .remove(handle)
        .map(drop)
        .ok_or(CuError::InvalidHandle)
}

/// `cuEventRecord`: the event completes when `stream` reaches this point (or, if the stream
/// captures, becomes a captured event).
pub fn record(handle: usize, stream: &Stream) -> CuResult {
    let event = get(handle)?;
    let marker = Marker::new();
    let mut latest = event.latest.lock();
    *latest = Some(match stream.submit(Op::Record(Arc::clone(&marker)))? {
        Submitted::Queued => Recorded::Marker(marker),
        Submitted::Captured(capture) => Recorded::Captured(capture),
    });
    Ok(())
}

/// The event's latest record, if it was ever recorded.
pub fn latest(handle: usize) -> CuResult<Option<Recorded>> {
    Ok(get(handle)?.latest.lock().clone())
}

/// The marker of the event's latest record, if it was recorded; `CUDA_ERROR_CAPTURED_EVENT`
/// if that was in a capture.
fn latest_marker(handle: usize) -> CuResult<Option<Arc<Marker>>> {
    match latest(handle)? {
        None => Ok(None),
        Some(Recorded::Marker(marker)) => Ok(Some(marker)),
        Some(Recorded::Captured(_)) => Err(CuError::CapturedEvent),
    }
}

/// `cuEventQuery`: `Ok` when the latest record completed (or there is none). A potentially
/// unsafe call during a capture (`capture.rs`).
pub fn query(handle: usize) -> CuResult {
    let marker = latest_marker(handle)?;
    capture::check_unsafe_call()?;
    match marker {
        Some(marker) if marker.time().is_none() => Err(CuError::NotReady),
        _ => Ok(()),
    }
}

/// `cuEventSynchronize`. A potentially unsafe call during a capture.
pub fn synchronize(handle: usize) -> CuResult {
    let marker = latest_marker(handle)?;
    capture::check_unsafe_call()?;
    if let Some(marker) = marker {
        marker.wait();
    }
    Ok(())
}

/// `cuEventElapsedTime`: milliseconds between two completed records.
pub fn elapsed_ms(start: usize, end: usize) -> CuResult<f32> {
    let (start, end) = (get(start)?, get(end)?);
    if (start.flags | end.flags) & DISABLE_TIMING != 0 {
        return Err(CuError::InvalidHandle);
    }
    let recorded = |e: &Event| match e.latest.lock().clone() {
        Some(Recorded::Marker(marker)) => Ok(marker),
        Some(Recorded::Captured(_)) => Err(CuError::CapturedEvent),
        None => Err(CuError::InvalidHandle),
    };
    let (a, b) = (recorded(&start)?, recorded(&end)?);
    let (a, b) = (
        a.time().ok_or(CuError::NotReady)?,
        b.time().ok_or(CuError::NotReady)?,
    );
    let ms = if b >= a {
        (b - a).as_secs_f64() * 1e3
    } else {
        -((a - b).as_secs_f64() * 1e3)
    };
    #[allow(clippy::cast_possible_truncation)] // f32 is the API's type
    Ok(ms as f32)
}
