//! The streams this process launches on, as the launch path marks them and the watcher
//! polls them: a fixed table of atomics, so that a launch on a known stream costs one
//! lookup and one atomic add, with no lock and no allocation.
//!
//! An entry is claimed once per stream (the launch path's slow path), and retired when the
//! stream or its context is destroyed. Entries are never reused while the watcher may be
//! looking at them: a retired entry is freed by the watcher itself.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

/// How many streams the table holds. A process with more live streams than this has its
/// launches on the rest gated but not measured (a warning says so).
pub const CAPACITY: usize = 1024;

/// How far a lookup probes from the stream's hash before giving up.
const PROBE: usize = 16;

const FREE: u8 = 0;
const CLAIMING: u8 = 1;
const LIVE: u8 = 2;
/// Its stream (or context) is gone: the watcher must not touch the stream, and frees the
/// entry.
const RETIRED: u8 = 3;

/// What kind of stream an entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A stream the program created: polled with events the watcher records on it.
    Created,
    /// A context's legacy NULL stream: polled with `cuStreamQuery` (recording on it would
    /// add implicit synchronization to the program's other streams).
    Legacy,
}

/// One stream.
#[derive(Debug)]
pub struct StreamEntry {
    state: AtomicU8,
    /// The stream handle (0 for a legacy stream).
    stream: AtomicUsize,
    /// The lookup context (0 for created streams).
    context: AtomicUsize,
    /// The context the stream belongs to, made current to poll it.
    owner: AtomicUsize,
    /// The tenant's GPU index the stream runs on.
    gpu: AtomicU32,
    kind: AtomicU8,
    /// Launches that reached the driver on it.
    launches: AtomicU64,
    /// Retired because its context was destroyed (its events went with it).
    context_gone: std::sync::atomic::AtomicBool,
}

impl StreamEntry {
    const fn new() -> StreamEntry {
        StreamEntry {
            state: AtomicU8::new(FREE),
            stream: AtomicUsize::new(0),
            context: AtomicUsize::new(0),
            owner: AtomicUsize::new(0),
            gpu: AtomicU32::new(0),
            kind: AtomicU8::new(0),
            launches: AtomicU64::new(0),
            context_gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The GPU index it runs on.
    #[inline]
    pub fn gpu(&self) -> u32 {
        self.gpu.load(Relaxed)
    }

    /// Counts a launch that reached the driver.
    #[inline]
    pub fn count_launch(&self) {
        self.launches.fetch_add(1, Release);
    }

    /// Launches counted so far.
    pub fn launches(&self) -> u64 {
        self.launches.load(Acquire)
    }

    /// The stream handle.
    pub fn stream(&self) -> usize {
        self.stream.load(Relaxed)
    }

    /// The context the stream belongs to.
    pub fn owner(&self) -> usize {
        self.owner.load(Relaxed)
    }

    /// How it is polled.
    pub fn kind(&self) -> StreamKind {
        if self.kind.load(Relaxed) == 1 {
            StreamKind::Legacy
        } else {
            StreamKind::Created
        }
    }

    /// Whether it was retired with its context.
    pub fn context_gone(&self) -> bool {
        self.context_gone.load(Acquire)
    }

    /// Whether it is the live entry of `context`'s legacy stream.
    #[inline]
    pub fn is_legacy_of(&self, context: usize) -> bool {
        self.matches(0, context)
    }

    fn matches(&self, stream: usize, context: usize) -> bool {
        self.state.load(Acquire) == LIVE
            && self.stream.load(Relaxed) == stream
            && self.context.load(Relaxed) == context
    }
}

/// What the watcher finds in an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occupancy {
    /// Nothing.
    Free,
    /// A stream to poll.
    Live,
    /// A stream that is gone; the watcher forgets what it kept for it and calls
    /// [`StreamTable::free`].
    Retired,
}

/// The table.
#[derive(Debug)]
pub struct StreamTable {
    entries: Box<[StreamEntry]>,
}

impl Default for StreamTable {
    fn default() -> Self {
        StreamTable::new()
    }
}

/// The lookup key of a stream: created streams are known by handle alone (their context
/// is fixed); legacy streams by their context.
fn key(stream: usize, context: usize) -> usize {
    (stream ^ context.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7
}

impl StreamTable {
    /// An empty table.
    pub fn new() -> StreamTable {
        StreamTable {
            entries: (0..CAPACITY).map(|_| StreamEntry::new()).collect(),
        }
    }

    /// The live entry of `stream` (`context` is 0 for created streams), if it has one.
    #[inline]
    pub fn find(&self, stream: usize, context: usize) -> Option<&StreamEntry> {
        let start = key(stream, context);
        (0..PROBE)
            .map(|i| &self.entries[(start + i) % CAPACITY])
            .find(|e| e.matches(stream, context))
    }

    /// The entry at `index`.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&StreamEntry> {
        self.entries.get(index)
    }

    /// Where `entry` (one of this table's) sits.
    pub fn index_of(&self, entry: &StreamEntry) -> Option<usize> {
        let base = self.entries.as_ptr() as usize;
        let offset = (entry as *const StreamEntry as usize).checked_sub(base)?;
        let index = offset / std::mem::size_of::<StreamEntry>();
        (index < self.entries.len()).then_some(index)
    }

    /// Adds `stream` running on `gpu`; `None` when the table is full around its place.
    /// `context` is the lookup context (0 for created streams), `owner` the context to
    /// poll it in.
    pub fn insert(
        &self,
        stream: usize,
        context: usize,
        owner: usize,
        gpu: u32,
        kind: StreamKind,
    ) -> Option<&StreamEntry> {
        let start = key(stream, context);
        for i in 0..PROBE {
            let entry = &self.entries[(start + i) % CAPACITY];
            if entry.matches(stream, context) {
                return Some(entry);
            }
            if entry
                .state
                .compare_exchange(FREE, CLAIMING, AcqRel, Relaxed)
                .is_ok()
            {
                entry.stream.store(stream, Relaxed);
                entry.context.store(context, Relaxed);
                entry.gpu.store(gpu, Relaxed);
                entry
                    .kind
                    .store(u8::from(kind == StreamKind::Legacy), Relaxed);
                entry.owner.store(owner, Relaxed);
                entry.launches.store(0, Relaxed);
                entry.context_gone.store(false, Relaxed);
                entry.state.store(LIVE, Release);
                return Some(entry);
            }
        }
        None
    }

    /// Retires the entries for which `gone(stream, context)` holds (a destroyed stream or
    /// context); the caller then waits for the watcher to stop polling before the driver
    /// frees the handles.
    pub fn retire(&self, context_gone: bool, gone: impl Fn(&StreamEntry) -> bool) {
        for entry in self.entries.iter() {
            if entry.state.load(Acquire) == LIVE && gone(entry) {
                entry.context_gone.store(context_gone, Release);
                let _ = entry.state.compare_exchange(LIVE, RETIRED, AcqRel, Relaxed);
            }
        }
    }

    /// The entries, for the watcher.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &StreamEntry, Occupancy)> {
        self.entries.iter().enumerate().map(|(i, e)| {
            let occupancy = match e.state.load(Acquire) {
                LIVE => Occupancy::Live,
                RETIRED => Occupancy::Retired,
                _ => Occupancy::Free,
            };
            (i, e, occupancy)
        })
    }

    /// Frees a retired entry (the watcher only).
    pub fn free(&self, index: usize) {
        if let Some(e) = self.entries.get(index) {
            let _ = e.state.compare_exchange(RETIRED, FREE, AcqRel, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_found_once_inserted_and_not_after_it_is_retired() {
        let table = StreamTable::new();
        assert!(table.find(0x1000, 0).is_none());
        let e = table
            .insert(0x1000, 0, 0xc0, 3, StreamKind::Created)
            .unwrap();
        e.count_launch();
        let found = table.find(0x1000, 0).unwrap();
        assert_eq!((found.gpu(), found.launches()), (3, 1));
        assert!(
            table.find(0, 0xc0).is_none(),
            "the legacy stream is another entry"
        );
        table.retire(false, |e| e.stream() == 0x1000);
        assert!(table.find(0x1000, 0).is_none());
        let retired: Vec<_> = table
            .entries()
            .filter(|(_, _, o)| *o == Occupancy::Retired)
            .map(|(i, _, _)| i)
            .collect();
        assert_eq!(retired.len(), 1);
        table.free(retired[0]);
        let again = table
            .insert(0x1000, 0, 0xc0, 4, StreamKind::Created)
            .unwrap();
        assert_eq!((again.gpu(), again.launches()), (4, 0));
    }

    #[test]
    fn legacy_streams_are_told_apart_by_context() {
        let table = StreamTable::new();
        table.insert(0, 0xa, 0xa, 0, StreamKind::Legacy).unwrap();
        table.insert(0, 0xb, 0xb, 1, StreamKind::Legacy).unwrap();
        assert_eq!(table.find(0, 0xa).unwrap().gpu(), 0);
        assert_eq!(table.find(0, 0xb).unwrap().gpu(), 1);
        assert_eq!(table.find(0, 0xb).unwrap().kind(), StreamKind::Legacy);
    }

    #[test]
    fn a_full_neighbourhood_refuses_instead_of_spinning() {
        let table = StreamTable::new();
        let inserted = (1..=CAPACITY * 2)
            .filter(|&s| table.insert(s * 16, 0, 0, 0, StreamKind::Created).is_some())
            .count();
        assert!(inserted <= CAPACITY);
        assert!(
            inserted > CAPACITY / 2,
            "the hash spreads streams: {inserted}"
        );
    }
}
