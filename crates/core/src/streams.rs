//! The streams this process launches on, as the launch path marks them and the watcher
//! polls them: a fixed table of atomics, so that a launch on a known stream costs one
//! lookup and one atomic add, with no lock and no allocation.
//!
//! An entry is claimed once per stream (the launch path's slow path), and retired when the
//! stream or its context is destroyed. Entries are never reused while the watcher may be
//! looking at them: a retired entry is freed by the watcher itself.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize};

use crate::policy::gpu_time::TimedSpan;

/// How many streams the table holds. A launch on a stream the table cannot hold (past
/// this, or past `PROBE` places from its hash) is refused: its work could be neither gated
/// nor measured.
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
    context_gone: AtomicBool,
    /// A launch the watcher asked to have timed.
    sample: SampleSlot,
    /// Launches went to a per-thread default stream through this (legacy) entry: work the
    /// legacy stream's query does not see.
    per_thread: AtomicBool,
}

/// What the launch path is to do with a launch the watcher asked about
/// ([`StreamEntry::take_sample`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampled {
    /// Time its call with the clock alone: it is the launch just before the timed one.
    Reference,
    /// Record these two events (start, end) around it.
    Timed(usize, usize),
}

/// Where a sampled launch stands (`policy::gpu_time`): the watcher arms one launch of a
/// stream to be timed with two of its events; the launching thread that reaches it takes
/// it, records the events around the launch and says so; the watcher reads the time once
/// the second event is reached, and arms another later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleState {
    /// Nothing asked.
    Idle,
    /// A launch is to be timed.
    Armed,
    /// A launching thread is recording it.
    Taken,
    /// Its events are recorded around it.
    Recorded,
}

const SAMPLE_IDLE: u8 = 0;
const SAMPLE_ARMED: u8 = 1;
const SAMPLE_TAKEN: u8 = 2;
const SAMPLE_RECORDED: u8 = 3;

/// The handshake of a sampled launch.
#[derive(Debug)]
struct SampleSlot {
    /// The count of the launch to time (the first launch is 1); 0: none asked.
    at: AtomicU64,
    state: AtomicU8,
    /// The events recorded before and after it.
    start: AtomicUsize,
    end: AtomicUsize,
    /// The time between the events that was not the launch's
    /// (`policy::gpu_time::TimedSpan::not_run_ns`): the first event's recording and the
    /// launch call where the stream had nothing left before it, and the second event's
    /// recording where the launch had finished by then.
    lead_ns: AtomicU64,
    /// The first event was reached when the launch call returned: nothing of the stream was
    /// left to run when the launch was made.
    found_idle: AtomicBool,
    /// The lead took longer than an honest one does
    /// (`policy::gpu_time::TimedSpan::lead_unsure`).
    lead_unsure: AtomicBool,
    /// How long the launch call just before the timed one took, untimed (0: not measured):
    /// what the stream's launch calls take, from one the tenant cannot tell from any other.
    reference_call_ns: AtomicU64,
    /// The count of the launch that was timed: once its second event is reached, every
    /// launch of the stream up to it has finished.
    launch: AtomicU64,
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
            context_gone: AtomicBool::new(false),
            sample: SampleSlot {
                at: AtomicU64::new(0),
                state: AtomicU8::new(SAMPLE_IDLE),
                start: AtomicUsize::new(0),
                end: AtomicUsize::new(0),
                lead_ns: AtomicU64::new(0),
                found_idle: AtomicBool::new(false),
                lead_unsure: AtomicBool::new(false),
                reference_call_ns: AtomicU64::new(0),
                launch: AtomicU64::new(0),
            },
            per_thread: AtomicBool::new(false),
        }
    }

    /// The launch path's side: a launch went to a per-thread default stream. A relaxed
    /// load, and a store the first time.
    #[inline]
    pub fn note_per_thread(&self) {
        if !self.per_thread.load(Relaxed) {
            self.per_thread.store(true, Relaxed);
        }
    }

    /// Whether launches went to per-thread default streams through it.
    pub fn has_per_thread(&self) -> bool {
        self.per_thread.load(Relaxed)
    }

    /// The launch path's side: whether this launch is the one the watcher asked to have
    /// timed (then the caller records the events around it and must end with
    /// [`StreamEntry::sample_recorded`]), or the one just before it, whose call the caller
    /// times with the clock alone ([`StreamEntry::reference_call`]). One relaxed load while
    /// none is asked, two while one is.
    #[inline]
    pub fn take_sample(&self) -> Option<Sampled> {
        let at = self.sample.at.load(Acquire);
        if at == 0 || self.launches.load(Relaxed).saturating_add(2) < at {
            return None;
        }
        self.take_sample_slow(at)
    }

    #[cold]
    #[inline(never)]
    fn take_sample_slow(&self, at: u64) -> Option<Sampled> {
        if self.launches.load(Relaxed).saturating_add(2) == at {
            return Some(Sampled::Reference);
        }
        self.sample
            .state
            .compare_exchange(SAMPLE_ARMED, SAMPLE_TAKEN, Acquire, Relaxed)
            .ok()?;
        self.sample.at.store(0, Relaxed);
        Some(Sampled::Timed(
            self.sample.start.load(Relaxed),
            self.sample.end.load(Relaxed),
        ))
    }

    /// The launch path's side, after the launch just before the timed one: how long its
    /// call took.
    pub fn reference_call(&self, call_ns: u64) {
        self.sample.reference_call_ns.store(call_ns.max(1), Relaxed);
    }

    /// How long the launch call before the timed one took (`None`: not measured, as when
    /// the timed launch was the next one when asked for).
    pub fn reference_call_ns(&self) -> Option<u64> {
        match self.sample.reference_call_ns.load(Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }

    /// The launch path's side, after a launch it took to time: whether both events were
    /// recorded around it, and what the launching thread saw around it.
    pub fn sample_recorded(&self, recorded: bool, span: TimedSpan) {
        self.sample.lead_ns.store(span.not_run_ns(), Relaxed);
        self.sample.found_idle.store(span.found_idle, Relaxed);
        self.sample.lead_unsure.store(span.lead_unsure(), Relaxed);
        self.sample
            .launch
            .store(self.launches.load(Relaxed), Relaxed);
        let state = if recorded {
            SAMPLE_RECORDED
        } else {
            SAMPLE_IDLE
        };
        self.sample.state.store(state, Release);
    }

    /// The watcher's side: asks for launch number `at` (counted from 1) to be timed with
    /// `start` and `end`, events of the stream's context.
    pub fn arm_sample(&self, at: u64, start: usize, end: usize) {
        if self
            .sample
            .state
            .compare_exchange(SAMPLE_IDLE, SAMPLE_ARMED, AcqRel, Relaxed)
            .is_ok()
        {
            self.sample.start.store(start, Relaxed);
            self.sample.end.store(end, Relaxed);
            self.sample.reference_call_ns.store(0, Relaxed);
            // Last: a launch that sees it sees the events.
            self.sample.at.store(at.max(1), Release);
        }
    }

    /// The launch count as of the timed launch (it included): all of them have finished
    /// once its second event is reached.
    pub fn sample_launch(&self) -> u64 {
        self.sample.launch.load(Relaxed)
    }

    /// The time between the recorded sample's events that was not its launch's.
    pub fn sample_lead_ns(&self) -> u64 {
        self.sample.lead_ns.load(Relaxed)
    }

    /// Whether the recorded sample's launch found its stream idle.
    pub fn sample_found_idle(&self) -> bool {
        self.sample.found_idle.load(Relaxed)
    }

    /// Whether the recorded sample's lead took longer than an honest one does.
    pub fn sample_lead_unsure(&self) -> bool {
        self.sample.lead_unsure.load(Relaxed)
    }

    /// Where its sampled launch stands.
    pub fn sample_state(&self) -> SampleState {
        match self.sample.state.load(Acquire) {
            SAMPLE_ARMED => SampleState::Armed,
            SAMPLE_TAKEN => SampleState::Taken,
            SAMPLE_RECORDED => SampleState::Recorded,
            _ => SampleState::Idle,
        }
    }

    /// The watcher's side: the recorded sample was read (or cannot be); another may be
    /// armed.
    pub fn finish_sample(&self) {
        let _ = self
            .sample
            .state
            .compare_exchange(SAMPLE_RECORDED, SAMPLE_IDLE, AcqRel, Relaxed);
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
                entry.sample.at.store(0, Relaxed);
                entry.sample.state.store(SAMPLE_IDLE, Relaxed);
                entry.per_thread.store(false, Relaxed);
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
    fn a_sampled_launch_is_taken_once_by_the_launch_it_names() {
        let table = StreamTable::new();
        let e = table
            .insert(0x2000, 0, 0xc0, 0, StreamKind::Created)
            .unwrap();
        assert_eq!(e.take_sample(), None, "nothing asked");
        e.count_launch();
        // The third launch is to be timed: the second is its reference, the third takes it.
        e.arm_sample(3, 0xa, 0xb);
        assert_eq!(e.sample_state(), SampleState::Armed);
        assert_eq!(e.take_sample(), Some(Sampled::Reference));
        assert_eq!(e.reference_call_ns(), None);
        e.reference_call(2_300);
        e.count_launch();
        assert_eq!(e.take_sample(), Some(Sampled::Timed(0xa, 0xb)));
        assert_eq!(e.reference_call_ns(), Some(2_300));
        assert_eq!(e.sample_state(), SampleState::Taken);
        assert_eq!(e.take_sample(), None, "taken once");
        // Arming again while it is out changes nothing.
        e.arm_sample(4, 0xc, 0xd);
        assert_eq!(e.sample_state(), SampleState::Taken);
        e.sample_recorded(true, TimedSpan::default());
        assert_eq!(e.sample_state(), SampleState::Recorded);
        e.finish_sample();
        assert_eq!(e.sample_state(), SampleState::Idle);
        // A launch past the one asked for (another thread's got there first) takes it;
        // arming forgets the last reference.
        e.arm_sample(1, 0xa, 0xb);
        assert_eq!(e.reference_call_ns(), None);
        assert_eq!(e.take_sample(), Some(Sampled::Timed(0xa, 0xb)));
        e.sample_recorded(false, TimedSpan::default());
        assert_eq!(
            e.sample_state(),
            SampleState::Idle,
            "a failed recording asks again"
        );
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
