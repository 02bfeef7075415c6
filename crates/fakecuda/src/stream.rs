//! Streams: each runs its queue of work in order on a worker thread of its own, keeping a
//! clock of when the simulated device finishes each piece.
//!
//! The NULL stream is a per-context stream with the legacy semantics: work on it waits for
//! earlier work on the context's blocking streams, and work on a blocking stream waits for
//! earlier work on it. NULL and `CU_STREAM_LEGACY` mean the current context's NULL stream;
//! `CU_STREAM_PER_THREAD`, and NULL in the `_ptsz` / `_ptds` entry points, mean the calling
//! thread's per-thread default stream of the current context: a blocking stream of its own,
//! made at its first use and ended when the thread exits (see `Context::per_thread_stream`).
//!
//! While a stream captures (`capture.rs`), what is submitted to it is recorded or refused
//! there instead of queued.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::capture::{self, Intercepted};
use crate::context::{self, Context};
use crate::device::Device;
use crate::error::{CuError, CuResult};
use crate::handles::Table;
use crate::kernel;

/// `CU_STREAM_NON_BLOCKING`: no implicit synchronization with the NULL stream.
pub const NON_BLOCKING: u32 = 0x1;
pub use gpuslice_cuda_abi::{CU_STREAM_LEGACY as LEGACY, CU_STREAM_PER_THREAD as PER_THREAD};
/// Stream priorities run from 0 (lowest) to -5 (greatest), as on an H100.
pub const PRIORITY_RANGE: (i32, i32) = (0, -5);

/// A point in a stream that completes when the stream reaches it: what an event records.
#[derive(Debug, Default)]
pub struct Marker {
    done: Mutex<Option<Instant>>,
    reached: Condvar,
}

impl Marker {
    /// A marker not reached yet.
    pub fn new() -> Arc<Marker> {
        Arc::new(Marker::default())
    }

    /// Completes the marker at `at` (what a stream does when it reaches it).
    pub(crate) fn complete(&self, at: Instant) {
        *self.done.lock() = Some(at);
        self.reached.notify_all();
    }

    /// When the stream reached the marker, if it has.
    pub fn time(&self) -> Option<Instant> {
        *self.done.lock()
    }

    /// Blocks until the stream reaches the marker; returns when it did.
    pub fn wait(&self) -> Instant {
        let mut done = self.done.lock();
        loop {
            if let Some(at) = *done {
                return at;
            }
            self.reached.wait(&mut done);
        }
    }
}

/// Work a stream executes.
pub enum Op {
    /// A kernel occupying a device for a time of its own (time-sliced with other processes'
    /// kernels when the device is; see `kernel.rs`), or its duration of wall time without a
    /// device.
    Kernel(Duration, Option<&'static Device>),
    /// Host-side work in stream order: a copy, a memset, a free, a host function.
    Host(Box<dyn FnOnce() + Send>),
    /// Complete a marker (`cuEventRecord`).
    Record(Arc<Marker>),
    /// Wait for a marker (`cuStreamWaitEvent`).
    Wait(Arc<Marker>),
    /// Wait until another stream has completed `seq` pieces of work (legacy NULL stream).
    AwaitStream(Arc<Queue>, u64),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Kernel(d, _) => write!(f, "Kernel({d:?})"),
            Op::Host(_) => f.write_str("Host"),
            Op::Record(_) => f.write_str("Record"),
            Op::Wait(_) => f.write_str("Wait"),
            Op::AwaitStream(_, seq) => write!(f, "AwaitStream({seq})"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    op: Op,
    enqueued: Instant,
}

#[derive(Debug, Default)]
struct QueueState {
    entries: VecDeque<Entry>,
    submitted: u64,
    completed: u64,
    shutdown: bool,
}

/// A stream's queue, shared between the stream and its worker thread.
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

impl Queue {
    /// Queues `ops` in order, all at once, as submitted at `enqueued`.
    ///
    /// A marker recorded while the stream is idle is reached there and then, as a GPU
    /// reaches it, rather than when the worker thread next runs: on a machine of two cores
    /// that thread can wait tens of microseconds for a CPU (behind a launch call spinning
    /// with `FAKECUDA_LAUNCH_NS`, say), and an event recorded before a launch on an idle
    /// stream would then look like one recorded behind earlier work. The worker would have
    /// completed it at the same time: on an idle stream its clock is behind `enqueued`.
    fn push_all(&self, ops: impl IntoIterator<Item = Op>, enqueued: Instant) {
        let mut state = self.state.lock();
        for op in ops {
            state.submitted += 1;
            let idle = state.entries.is_empty() && state.completed + 1 == state.submitted;
            match op {
                Op::Record(marker) if idle => {
                    marker.complete(enqueued);
                    state.completed += 1;
                }
                op => state.entries.push_back(Entry { op, enqueued }),
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Work submitted so far, if some of it has not completed.
    fn pending(&self) -> Option<u64> {
        let state = self.state.lock();
        (state.completed < state.submitted).then_some(state.submitted)
    }

    /// Blocks until `seq` pieces of work have completed; returns whether it had to wait.
    fn wait_for(&self, seq: u64) -> bool {
        let mut state = self.state.lock();
        let mut waited = false;
        while state.completed < seq {
            waited = true;
            self.changed.wait(&mut state);
        }
        waited
    }

    /// The next piece of work if one is queued.
    fn try_next(&self) -> Option<Entry> {
        self.state.lock().entries.pop_front()
    }

    fn next(&self) -> Option<Entry> {
        let mut state = self.state.lock();
        loop {
            if let Some(entry) = state.entries.pop_front() {
                return Some(entry);
            }
            if state.shutdown {
                return None;
            }
            self.changed.wait(&mut state);
        }
    }

    /// Counts one piece of work as completed, completing `marker` at the same time (under
    /// the queue's lock), so that whoever sees the marker reached also sees the stream past
    /// it, and the reverse: after `cuEventSynchronize` on the last event of a stream,
    /// `cuStreamQuery` says it is idle, as on a real GPU.
    fn finish_one(&self, marker: Option<(&Marker, Instant)>) {
        let mut state = self.state.lock();
        if let Some((marker, at)) = marker {
            marker.complete(at);
        }
        state.completed += 1;
        drop(state);
        self.changed.notify_all();
    }
}

/// A stream of a context.
#[derive(Debug)]
pub struct Stream {
    /// The stream's handle (0 for a NULL stream).
    pub handle: usize,
    /// The context the stream belongs to.
    pub ctx: Weak<Context>,
    /// The context's handle.
    pub ctx_handle: usize,
    /// `CU_STREAM_*` flags.
    pub flags: u32,
    /// Priority (lower is greater).
    pub priority: i32,
    /// A number no other stream of this process has, NULL and per-thread ones included.
    pub id: u64,
    queue: Arc<Queue>,
}

/// What became of work submitted to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Queued: the stream runs it.
    Queued,
    /// Recorded into the stream's capture (of this id): nothing runs now.
    Captured(u64),
}

static STREAMS: Table<Stream> = Table::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Whether the calling thread is inside a `_ptsz` / `_ptds` entry point, where NULL
    /// means its per-thread default stream.
    static PER_THREAD_CALL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` as a `_ptsz` / `_ptds` entry point when `per_thread` is set: NULL stream
/// arguments (and calls without one) then mean the thread's per-thread default stream.
pub fn with_default_stream<T>(per_thread: bool, body: impl FnOnce() -> T) -> T {
    if !per_thread {
        return body();
    }
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PER_THREAD_CALL.set(self.0);
        }
    }
    let _restore = Restore(PER_THREAD_CALL.replace(true));
    body()
}

impl Stream {
    /// Starts a stream with its worker thread. `handle` 0 makes a NULL stream (not in the
    /// stream table); otherwise pass a fresh handle.
    pub fn spawn(
        ctx: Weak<Context>,
        ctx_handle: usize,
        handle: usize,
        flags: u32,
        priority: i32,
    ) -> CuResult<Arc<Stream>> {
        let queue = start_worker()?;
        Ok(Arc::new(Stream::new(
            queue, ctx, ctx_handle, handle, flags, priority,
        )))
    }

    /// A stream over a queue whose worker is already running (see `start_worker`).
    pub fn new(
        queue: Arc<Queue>,
        ctx: Weak<Context>,
        ctx_handle: usize,
        handle: usize,
        flags: u32,
        priority: i32,
    ) -> Stream {
        Stream {
            handle,
            ctx,
            ctx_handle,
            flags,
            priority,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            queue,
        }
    }

    /// Whether this is a context's (legacy) NULL stream.
    pub fn is_null(&self) -> bool {
        self.handle == 0
    }

    /// Whether work on this stream synchronizes with the NULL stream.
    pub fn is_blocking(&self) -> bool {
        self.flags & NON_BLOCKING == 0
    }

    /// Queues `op`, after any implicit dependency of the legacy NULL stream; or, while the
    /// stream captures, records it into the capture (or refuses it: see `capture.rs`).
    pub fn submit(&self, op: Op) -> CuResult<Submitted> {
        self.submit_all(vec![op])
    }

    /// As `submit`, for work that reached the device at `called`, when the call that
    /// submits it began: a real driver pushes a launch to the GPU early in the call, so
    /// that on an idle stream the kernel starts before the call returns, and an event
    /// recorded just before it is reached only the push's moment earlier.
    pub fn submit_at(&self, op: Op, called: Instant) -> CuResult<Submitted> {
        self.submit_all_at(vec![op], called)
    }

    /// Queues `ops` one after the other with nothing of another thread between them (a
    /// graph's launch), as `submit` does.
    pub fn submit_all(&self, ops: Vec<Op>) -> CuResult<Submitted> {
        self.submit_all_at(ops, Instant::now())
    }

    fn submit_all_at(&self, ops: Vec<Op>, enqueued: Instant) -> CuResult<Submitted> {
        let ops = match capture::intercept(self, ops)? {
            Intercepted::Captured(id) => return Ok(Submitted::Captured(id)),
            Intercepted::Run(ops) => ops,
        };
        let dependencies = self
            .ctx
            .upgrade()
            .map(|ctx| ctx.legacy_dependencies(self))
            .unwrap_or_default();
        let awaits = dependencies
            .into_iter()
            .map(|(queue, seq)| Op::AwaitStream(queue, seq));
        self.queue.push_all(awaits.chain(ops), enqueued);
        Ok(Submitted::Queued)
    }

    /// Queues `op` and waits until the stream has executed it.
    pub fn submit_and_wait(&self, op: Op) -> CuResult {
        if self.submit(op)? == Submitted::Queued {
            self.synchronize();
        }
        Ok(())
    }

    /// Work submitted so far if some of it is still pending, for legacy dependencies.
    pub fn pending(&self) -> Option<(Arc<Queue>, u64)> {
        self.queue
            .pending()
            .map(|seq| (Arc::clone(&self.queue), seq))
    }

    /// Blocks until all work submitted so far has completed.
    pub fn synchronize(&self) {
        let target = self.queue.state.lock().submitted;
        self.queue.wait_for(target);
    }

    /// Whether all submitted work has completed.
    pub fn is_idle(&self) -> bool {
        self.queue.pending().is_none()
    }

    /// Lets the worker finish the queued work and exit.
    pub fn shutdown(&self) {
        self.queue.state.lock().shutdown = true;
        self.queue.changed.notify_all();
    }
}

/// Starts a worker thread executing a new queue.
pub fn start_worker() -> CuResult<Arc<Queue>> {
    let queue = Arc::new(Queue::default());
    let worker = Arc::clone(&queue);
    let created = Instant::now();
    std::thread::Builder::new()
        .name("fakecuda-stream".to_owned())
        .spawn(move || run_worker(&worker, created))
        .map_err(|_| CuError::OperatingSystem)?;
    Ok(queue)
}

/// Runs the stream's work in order, its clock starting when the stream was `created`
/// (not when this thread first runs, which may be after work was queued and a marker on
/// the idle stream reached: `Queue::push_all`).
fn run_worker(queue: &Queue, created: Instant) {
    // Sleeps end within a few microseconds of their deadline instead of the default 50 µs.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let mut clock = created;
    // This process's mark as executing on the device (see `kernel.rs`): kept while kernels
    // (and the event records between them) follow one another with no gap, ended when the
    // stream stops executing kernels, dated by the stream's clock.
    let mut share: Option<kernel::Share> = None;
    let stop = |share: &mut Option<kernel::Share>, at: Instant| {
        if let Some(s) = share.take() {
            s.end(at);
        }
    };
    loop {
        let entry = match queue.try_next() {
            Some(entry) => entry,
            None => {
                stop(&mut share, clock);
                match queue.next() {
                    Some(entry) => entry,
                    None => break,
                }
            }
        };
        if entry.enqueued > clock {
            // Launched after the stream's previous work ended: the device idled in between.
            stop(&mut share, clock);
        }
        let start = clock.max(entry.enqueued);
        let mut reached = None;
        clock = match entry.op {
            Op::Kernel(duration, device) => kernel::run(start, duration, device, &mut share),
            Op::Record(marker) => {
                reached = Some(marker);
                start
            }
            Op::Host(work) => {
                stop(&mut share, clock);
                work();
                Instant::now().max(start)
            }
            Op::Wait(marker) => {
                stop(&mut share, clock);
                clock.max(marker.wait())
            }
            Op::AwaitStream(other, seq) => {
                stop(&mut share, clock);
                if other.wait_for(seq) {
                    clock.max(Instant::now())
                } else {
                    clock
                }
            }
        };
        queue.finish_one(reached.as_deref().map(|marker| (marker, clock)));
    }
}

/// Registers a created stream under its handle.
pub fn register(stream: Arc<Stream>) {
    STREAMS.insert_at(stream.handle, stream);
}

/// Removes a created stream from the table (on destroy); returns it.
pub fn unregister(handle: usize) -> Option<Arc<Stream>> {
    STREAMS.remove(handle)
}

/// The stream a `CUstream` argument means: `CU_STREAM_LEGACY` is the current context's NULL
/// stream, and so is NULL except in a `_ptsz` / `_ptds` entry point, where it is the
/// thread's per-thread default stream, as `CU_STREAM_PER_THREAD` is everywhere.
pub fn resolve(handle: usize) -> CuResult<Arc<Stream>> {
    match handle {
        0 if PER_THREAD_CALL.get() => context::current()?.per_thread_stream(),
        0 | LEGACY => Ok(context::current()?.null_stream()),
        PER_THREAD => context::current()?.per_thread_stream(),
        _ => STREAMS.get(handle).ok_or(CuError::InvalidHandle),
    }
}

/// Whether a `CUstream` argument names a stream every thread or context has (NULL,
/// `CU_STREAM_LEGACY`, `CU_STREAM_PER_THREAD`) rather than a created one.
pub fn is_special(handle: usize) -> bool {
    matches!(handle, 0 | LEGACY | PER_THREAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_in_order_and_markers_record_the_stream_clock() {
        let stream = Stream::spawn(Weak::new(), 0, 0, 0, 0).unwrap();
        let (gate, first, second) = (Marker::new(), Marker::new(), Marker::new());
        // Everything is queued before the stream may start (otherwise the first record could
        // run before the first kernel is even launched, and the kernels start later).
        stream.submit(Op::Wait(Arc::clone(&gate))).unwrap();
        stream.submit(Op::Record(Arc::clone(&first))).unwrap();
        for _ in 0..5 {
            stream
                .submit(Op::Kernel(Duration::from_millis(2), None))
                .unwrap();
        }
        stream.submit(Op::Record(Arc::clone(&second))).unwrap();
        assert!(!stream.is_idle());
        gate.complete(Instant::now());
        let end = second.wait();
        assert_eq!(end - first.time().unwrap(), Duration::from_millis(10));
        stream.synchronize();
        assert!(stream.is_idle());
        stream.shutdown();
    }

    /// A GPU reaches an event recorded on an idle stream at once; the simulator's worker
    /// thread may not run for tens of microseconds on a busy machine, and an event queried
    /// right after its recording (gpuslice's timed launches) must not look queued behind
    /// earlier work.
    #[test]
    fn a_marker_recorded_on_an_idle_stream_is_reached_as_it_is_recorded() {
        let stream = Stream::spawn(Weak::new(), 0, 0, 0, 0).unwrap();
        let before = Instant::now();
        let idle = Marker::new();
        stream.submit(Op::Record(Arc::clone(&idle))).unwrap();
        let reached = idle.time().expect("reached when recorded");
        assert!(reached >= before && reached <= Instant::now());
        assert!(stream.is_idle());

        stream
            .submit(Op::Kernel(Duration::from_millis(20), None))
            .unwrap();
        let behind = Marker::new();
        stream.submit(Op::Record(Arc::clone(&behind))).unwrap();
        assert_eq!(behind.time(), None, "behind a kernel: reached when it ends");
        assert!(behind.wait() - reached >= Duration::from_millis(20));
        stream.shutdown();
    }

    #[test]
    fn a_wait_holds_the_stream_until_the_marker_is_reached() {
        let a = Stream::spawn(Weak::new(), 0, 0, 0, 0).unwrap();
        let b = Stream::spawn(Weak::new(), 0, 0, 0, 0).unwrap();
        let gate = Marker::new();
        a.submit(Op::Kernel(Duration::from_millis(20), None))
            .unwrap();
        a.submit(Op::Record(Arc::clone(&gate))).unwrap();
        b.submit(Op::Wait(Arc::clone(&gate))).unwrap();
        let after = Marker::new();
        b.submit(Op::Record(Arc::clone(&after))).unwrap();
        assert!(after.wait() >= gate.time().unwrap());
        a.shutdown();
        b.shutdown();
    }
}
