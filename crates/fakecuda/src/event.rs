//! Events: markers recorded into streams, completed with the stream's clock when the stream
//! reaches them.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{CuError, CuResult};
use crate::handles::Table;
use crate::stream::{Marker, Op, Stream};

/// `CU_EVENT_DISABLE_TIMING`.
pub const DISABLE_TIMING: u32 = 0x2;
/// Every `CU_EVENT_*` creation flag: BLOCKING_SYNC, DISABLE_TIMING, INTERPROCESS.
const KNOWN_FLAGS: u32 = 0x1 | 0x2 | 0x4;

/// An event.
#[derive(Debug)]
pub struct Event {
    flags: u32,
    latest: Mutex<Option<Arc<Marker>>>,
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

/// `cuEventRecord`: the event completes when `stream` reaches this point.
pub fn record(handle: usize, stream: &Stream) -> CuResult {
    let event = get(handle)?;
    let marker = Marker::new();
    *event.latest.lock() = Some(Arc::clone(&marker));
    stream.submit(Op::Record(marker));
    Ok(())
}

/// The marker of the event's latest record, if it was ever recorded.
pub fn latest(handle: usize) -> CuResult<Option<Arc<Marker>>> {
    Ok(get(handle)?.latest.lock().clone())
}

/// `cuEventQuery`: `Ok` when the latest record completed (or there is none).
pub fn query(handle: usize) -> CuResult {
    match latest(handle)? {
        Some(marker) if marker.time().is_none() => Err(CuError::NotReady),
        _ => Ok(()),
    }
}

/// `cuEventSynchronize`.
pub fn synchronize(handle: usize) -> CuResult {
    if let Some(marker) = latest(handle)? {
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
    let recorded = |e: &Event| e.latest.lock().clone().ok_or(CuError::InvalidHandle);
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
