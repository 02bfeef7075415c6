//! The watcher's polls of the process's streams: the only part of the watcher that calls
//! CUDA. Each tick it finds, per GPU, whether the process has work in flight, how many of
//! its launches have finished, and what those took per the stream's sampled launches
//! (`policy::gpu_time`): the [`Poll`] the controller (`policy::controller`) decides from.
//!
//! For a created stream it records one event behind the latest launches (recorded again
//! once reached); the legacy NULL stream is queried (recording on it would add implicit
//! synchronization). Every `SAMPLE_EVERY_NS` it asks for one launch of each stream to be
//! timed between two events with timing. Its calls go straight to the driver, so they are
//! neither gated nor counted.

use std::ffi::c_void;

use gpuslice_ledger::{MAX_GPUS, monotonic_ns};

use crate::cuda::{CUDA_SUCCESS, CUresult};
use crate::log::{Level, RateLimit, log};
use crate::policy::controller::Poll;
use crate::policy::gpu_time::{Covered, LaunchSamples, keep_timed_launch, timed_launch_ran_ns};
use crate::real;
use crate::shim::Shim;
use crate::streams::{CAPACITY, Occupancy, SampleState, StreamEntry, StreamKind};

/// `CUDA_ERROR_NOT_READY`.
const NOT_READY: CUresult = crate::cuda::CUDA_ERROR_NOT_READY;
/// How long without launches before untimed work on a per-thread stream is taken as
/// finished (`Poller::poll_legacy`): at least this...
const PER_THREAD_SETTLE_NS: u64 = 2_000_000;
/// ...and this before any of its launches was timed.
const PER_THREAD_SETTLE_UNTIMED_NS: u64 = 20_000_000;
/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: u32 = crate::cuda::CU_EVENT_DISABLE_TIMING;
/// `CU_EVENT_DEFAULT`: with timing, for sampled launches.
const EVENT_TIMED: u32 = crate::cuda::CU_EVENT_DEFAULT;
/// How often a stream has one of its launches timed (`policy::gpu_time`): two event
/// records on that launch, so that this keeps their cost far below a launch's.
const SAMPLE_EVERY_NS: u64 = 2_000_000;

/// What the poller keeps about one stream.
#[derive(Clone, Copy, Debug, Default)]
struct Tracked {
    /// The event it records on a created stream (made on first need).
    event: usize,
    /// Whether that event is recorded and not reached yet.
    outstanding: bool,
    /// The launch count when it was recorded.
    marked: u64,
    /// Launches known finished.
    finished: u64,
    busy: bool,
    /// The events it times sampled launches with (made on first need), and what they
    /// measured.
    sample_events: Option<(usize, usize)>,
    samples: LaunchSamples,
    /// When a sample was last asked for, and the launch count then.
    armed_at_ns: u64,
    launches_at_arm: u64,
    /// Launches already counted at their sampled time.
    counted: u64,
    /// A timed launch read but not yet added to the averages: it goes into its kind's
    /// (`Covered`) as its launch is counted, so that a kind's average is made of the
    /// launches counted as that kind.
    unfiled: Option<TimedLaunch>,
    /// Timed launches left out in a row because their lead was unsure
    /// (`policy::gpu_time::keep_timed_launch`).
    unsure_in_a_row: u32,
    /// Busy with the same work from the poll before to this one (`policy::gpu_time`).
    busy_throughout: bool,
    /// The launches up to this count ran through ticks charged whole (`busy_throughout`).
    covered_through: u64,
    /// The launch count at the poll before.
    polled_launches: u64,
    /// ...and at the poll before that.
    polled_launches_before: u64,
    /// The launch count when the tick before the latest run of ticks busy throughout began
    /// (`polled_launches_before` at its first such tick): launches made before it ran
    /// before that tick, not through the run.
    covered_from: u64,
    /// When a poll last saw its launch count change.
    launched_at_ns: u64,
}

/// One timed launch, as `LaunchSamples::add` takes it.
#[derive(Clone, Copy, Debug)]
struct TimedLaunch {
    /// Its count (the first launch is 1).
    launch: u64,
    ran_ns: u64,
    sharing: u64,
    found_idle: bool,
}

/// What the poller keeps about one GPU.
#[derive(Clone, Copy, Debug, Default)]
struct GpuPoll {
    /// What the last poll found: launches finished (those of streams retired since
    /// included) and unfinished.
    finished: u64,
    unfinished: u64,
    /// Launches of streams since retired.
    retired_launches: u64,
    /// What launches seen finished took, per their streams' samples, not yet handed to the
    /// controller; and whether some finished without a sample to count them by.
    counted_ns: u64,
    uncounted: bool,
    /// Processes with work in flight on the GPU at the last tick followed, this one
    /// included (the controller's word).
    sharing: u64,
    /// This process's streams on the GPU found busy at the last poll: a timed launch's
    /// events bracket the kernels its other busy streams ran in between too (kernels of
    /// two 4096² matmul streams that fill the GPU take turns; kernels that fit beside
    /// each other overlap), so the time is shared among them as among processes.
    busy_streams: u64,
    /// Some stream was busy with the same work throughout a tick since the controller
    /// last followed one; a stream with work was not saturated (`LaunchSamples`); what
    /// launches that ran through ticks charged whole took, counted since; and whether some
    /// such are still unfinished.
    busy_throughout: bool,
    unsaturated: bool,
    covered_ns: u64,
    covering: bool,
    /// Some of the launches in `covered_ns` were of a stream whose launches differ widely,
    /// and the longest of what such streams' long launches take (0: not known).
    covered_mixed: bool,
    covered_long_ns: u64,
}

/// The polls of one process's streams.
#[derive(Debug)]
pub struct Poller {
    streams: Vec<Tracked>,
    gpus: [GpuPoll; MAX_GPUS],
    errors: RateLimit,
    /// Picks which launch of the next ones is timed.
    rng: u64,
}

impl Poller {
    pub fn new() -> Poller {
        Poller {
            streams: vec![Tracked::default(); CAPACITY],
            gpus: [GpuPoll::default(); MAX_GPUS],
            errors: RateLimit::new(),
            rng: monotonic_ns() | 1,
        }
    }

    /// What the polls found of GPU `g`: the last poll's answer (`busy`: whether it found
    /// work in flight, or what stands for it when no poll ran) and what launches seen
    /// finished since the controller last took them took.
    pub fn observed(&self, g: usize, busy: bool) -> Poll {
        let gpu = &self.gpus[g];
        Poll {
            busy,
            finished: gpu.finished,
            unfinished: gpu.unfinished,
            counted_ns: (!gpu.uncounted).then_some(gpu.counted_ns),
            busy_throughout: gpu.busy_throughout,
            covered_ns: gpu.covered_ns,
            covered_done: !gpu.covering,
            saturated: !gpu.unsaturated,
            covered_mixed: gpu.covered_mixed,
            covered_long_ns: (gpu.covered_long_ns > 0).then_some(gpu.covered_long_ns),
        }
    }

    /// The controller followed a tick of GPU `g` (took what was counted) and says
    /// `sharing` processes have work in flight there.
    pub fn followed(&mut self, g: usize, sharing: u64) {
        let gpu = &mut self.gpus[g];
        gpu.counted_ns = 0;
        gpu.uncounted = false;
        gpu.sharing = sharing;
        gpu.busy_throughout = false;
        gpu.unsaturated = false;
        gpu.covered_ns = 0;
        gpu.covering = false;
        gpu.covered_mixed = false;
        gpu.covered_long_ns = 0;
    }

    /// Polls every stream; returns, per GPU, whether the process has work in flight there.
    pub fn poll_streams(&mut self, shim: &Shim) -> [bool; MAX_GPUS] {
        let mut busy = [false; MAX_GPUS];
        let mut busy_streams = [0u64; MAX_GPUS];
        let mut unfinished = [0u64; MAX_GPUS];
        let mut launched: [u64; MAX_GPUS] = std::array::from_fn(|g| self.gpus[g].retired_launches);
        // Before the streams' counts: launches from now on count against it, those made
        // while the streams are read perhaps twice (see `GpuGate::set_unfinished`).
        let seen: [u64; MAX_GPUS] = std::array::from_fn(|g| {
            u32::try_from(g)
                .ok()
                .and_then(|g| shim.gates.gpu(g))
                .map_or(0, crate::gate::GpuGate::start_count)
        });
        for (i, entry, occupancy) in shim.streams.entries() {
            let tracked = &mut self.streams[i];
            let gpu = usize::try_from(entry.gpu()).ok().filter(|&g| g < MAX_GPUS);
            match occupancy {
                Occupancy::Free => continue,
                Occupancy::Retired => {
                    if !entry.context_gone() {
                        if tracked.event != 0 {
                            destroy_event(tracked.event);
                        }
                        if let Some((start, end)) = tracked.sample_events
                            && entry.sample_state() != SampleState::Taken
                        {
                            destroy_event(start);
                            destroy_event(end);
                        }
                    }
                    if let Some(g) = gpu {
                        // Its launches not counted yet count as finished now.
                        count_finished(&mut self.gpus[g], tracked, entry.launches());
                    }
                    *tracked = Tracked::default();
                    if let Some(g) = gpu {
                        // Its work is over as far as anyone can tell: count it finished.
                        self.gpus[g].retired_launches += entry.launches();
                        launched[g] += entry.launches();
                    }
                    shim.streams.free(i);
                    continue;
                }
                Occupancy::Live => {}
            }
            let launches = entry.launches();
            let was_throughout = self.streams[i].busy_throughout;
            match entry.kind() {
                StreamKind::Created => {
                    self.poll_created(i, entry.stream(), entry.owner(), launches);
                }
                StreamKind::Legacy => {
                    self.poll_legacy(i, entry.owner(), launches, entry.has_per_thread());
                }
            }
            self.follow_sample(i, entry);
            let tracked = &mut self.streams[i];
            if tracked.busy_throughout && !was_throughout {
                tracked.covered_from = tracked.polled_launches_before;
            }
            tracked.polled_launches_before = tracked.polled_launches;
            tracked.polled_launches = launches;
            if let Some(g) = gpu {
                busy[g] |= tracked.busy;
                busy_streams[g] += u64::from(tracked.busy);
                self.gpus[g].busy_throughout |= tracked.busy_throughout;
                // Per-thread work's "in flight" is a guess (see `poll_legacy`): never a
                // saturated queue's floor.
                if (tracked.busy || launches != tracked.counted)
                    && (!tracked.samples.saturated() || entry.has_per_thread())
                {
                    self.gpus[g].unsaturated = true;
                }
                launched[g] += launches;
                unfinished[g] += launches.saturating_sub(tracked.finished);
                let finished = tracked.finished;
                count_finished(&mut self.gpus[g], tracked, finished);
            }
        }
        for (g, track) in self.gpus.iter_mut().enumerate() {
            track.finished = launched[g].saturating_sub(unfinished[g]);
            track.unfinished = unfinished[g];
            track.busy_streams = busy_streams[g];
            if let Some(gate) = u32::try_from(g).ok().and_then(|g| shim.gates.gpu(g)) {
                gate.set_unfinished(unfinished[g], seen[g]);
            }
        }
        busy
    }

    /// Reads the stream's timed launch once its events are reached, and asks for another
    /// every `SAMPLE_EVERY_NS`, at a launch picked at random among as many as it made in
    /// the last such stretch (so that every launch is as likely to be timed, whatever the
    /// program's rhythm).
    fn follow_sample(&mut self, i: usize, entry: &StreamEntry) {
        let tracked = &mut self.streams[i];
        match entry.sample_state() {
            SampleState::Recorded => {
                let Some((start, end)) = tracked.sample_events else {
                    entry.finish_sample();
                    return;
                };
                // SAFETY: an event this watcher created, in the stream's live context.
                match call(real::cuda::cuEventQuery(), |f| unsafe {
                    f(end as *mut c_void)
                }) {
                    NOT_READY => {}
                    CUDA_SUCCESS => {
                        let unsure = entry.sample_lead_unsure();
                        let keep = keep_timed_launch(unsure, tracked.unsure_in_a_row);
                        tracked.unsure_in_a_row = if keep {
                            0
                        } else {
                            tracked.unsure_in_a_row.saturating_add(1)
                        };
                        if let Some(ns) = elapsed_ns(start, end).filter(|_| keep) {
                            let g = usize::try_from(entry.gpu()).unwrap_or(0).min(MAX_GPUS - 1);
                            let ran = timed_launch_ran_ns(ns, entry.sample_lead_ns());
                            let gpu = &self.gpus[g];
                            let ways = gpu.sharing.max(1).saturating_mul(gpu.busy_streams.max(1));
                            tracked.unfiled = Some(TimedLaunch {
                                launch: entry.sample_launch(),
                                ran_ns: ran,
                                sharing: ways,
                                found_idle: entry.sample_found_idle(),
                            });
                        }
                        // Streams run in order: what came before it has finished too (the
                        // only news of progress on a legacy stream that never drains).
                        tracked.finished = tracked.finished.max(entry.sample_launch());
                        entry.finish_sample();
                    }
                    _ => entry.finish_sample(),
                }
            }
            SampleState::Idle => {
                let now = monotonic_ns();
                if now.saturating_sub(tracked.armed_at_ns) < SAMPLE_EVERY_NS {
                    return;
                }
                if tracked.sample_events.is_none() {
                    tracked.sample_events = create_event_pair(entry.owner());
                }
                let Some((start, end)) = tracked.sample_events else {
                    return;
                };
                let launches = entry.launches();
                let recent = launches.saturating_sub(tracked.launches_at_arm).max(1);
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let offset = self.rng % recent;
                entry.arm_sample(launches + 1 + offset, start, end);
                tracked.armed_at_ns = now;
                tracked.launches_at_arm = launches;
            }
            SampleState::Armed | SampleState::Taken => {}
        }
    }

    fn poll_created(&mut self, i: usize, stream: usize, owner: usize, launches: u64) {
        let tracked = &mut self.streams[i];
        // A marker recorded at an earlier poll and still not reached: the work before it
        // kept the stream busy all through the tick.
        let marker_before = tracked.outstanding;
        tracked.busy_throughout = false;
        if tracked.outstanding {
            let event = tracked.event as *mut c_void;
            // SAFETY: an event this watcher created, in the stream's live context (entries
            // of destroyed streams and contexts are retired before the driver frees them).
            match call(real::cuda::cuEventQuery(), |f| unsafe { f(event) }) {
                NOT_READY => {
                    tracked.busy_throughout = marker_before;
                    if marker_before {
                        tracked.covered_through = tracked.covered_through.max(tracked.marked);
                    }
                }
                status => {
                    // Reached, or the event is unusable (its context went away): either
                    // way nothing is known to run behind it any more.
                    tracked.outstanding = false;
                    tracked.finished = tracked.finished.max(tracked.marked);
                    if status != CUDA_SUCCESS {
                        tracked.event = 0;
                    }
                }
            }
        }
        if !tracked.outstanding && launches > tracked.finished {
            if tracked.event == 0 {
                tracked.event = create_event(owner).unwrap_or(0);
            }
            let event = tracked.event as *mut c_void;
            let recorded = tracked.event != 0
                && call(real::cuda::cuEventRecord(), |f| {
                    // SAFETY: the program's live stream (retired before it is destroyed,
                    // and never while it captures) and an event of its context.
                    unsafe { f(event, stream as *mut c_void) }
                }) == CUDA_SUCCESS;
            if recorded {
                tracked.outstanding = true;
                tracked.marked = launches;
            } else {
                if self.errors.admit().is_some() {
                    log!(
                        Level::Debug,
                        "cannot follow stream {stream:#x}; its work goes unmeasured"
                    );
                }
                tracked.finished = launches;
            }
        }
        tracked.busy = tracked.outstanding || launches > tracked.finished;
    }

    /// Polls a context's legacy stream. `per_thread`: some of its launches went to
    /// per-thread default streams, which only their own threads can query: those are known
    /// finished through timed launches (`follow_sample`), and in flight until then or
    /// until a while passes without launches.
    fn poll_legacy(&mut self, i: usize, owner: usize, launches: u64, per_thread: bool) {
        let tracked = &mut self.streams[i];
        let status = if set_current(owner) {
            // SAFETY: the legacy stream of the context just made current; no capture is open.
            call(real::cuda::cuStreamQuery(), |f| unsafe {
                f(std::ptr::null_mut())
            })
        } else {
            CUDA_SUCCESS
        };
        if status != NOT_READY && !per_thread {
            tracked.finished = launches;
        }
        if per_thread {
            // Work on per-thread streams is seen finished only through timed launches,
            // and a program that stops launching leaves the last ones untimed: once no
            // launch has come for twice what the unfinished ones take (2 ms at least, 20 ms
            // before any is timed), they are taken as finished. Otherwise the process would
            // stay "in flight" for good, charged, blocking others' turns, and its gate
            // closed (`per_thread_work_that_pauses_is_not_held_in_flight`).
            let now = monotonic_ns();
            if launches != tracked.polled_launches {
                tracked.launched_at_ns = now;
            }
            let unfinished = launches.saturating_sub(tracked.finished);
            let settle_ns = tracked
                .samples
                .time_of(unfinished.saturating_mul(2))
                .map_or(PER_THREAD_SETTLE_UNTIMED_NS, |ns| {
                    ns.max(PER_THREAD_SETTLE_NS)
                });
            if unfinished > 0 && now.saturating_sub(tracked.launched_at_ns) > settle_ns {
                tracked.finished = launches;
            }
        }
        // In flight at both polls with no launch between them: the same work all along.
        tracked.busy_throughout = status == NOT_READY
            && tracked.busy
            && launches == tracked.polled_launches
            && !per_thread;
        if tracked.busy_throughout {
            tracked.covered_through = tracked.covered_through.max(launches);
        }
        tracked.busy = status == NOT_READY || (per_thread && launches > tracked.finished);
    }
}

/// The stream's launches up to `finished` have finished: adds those not counted yet to
/// its GPU's count at their sampled time, those that ran through ticks charged whole apart
/// and each kind at its own kind's average (`policy::gpu_time`); without samples, marks the GPU uncounted (the controller falls
/// back to the polled estimate).
fn count_finished(gpu: &mut GpuPoll, stream: &mut Tracked, finished: u64) {
    let covered_end = stream.covered_through.min(finished);
    // A timed launch is read at the poll that learns it finished (its second event comes
    // before any marker behind it), so it is filed with the kind it is counted as now; one
    // counted at an earlier poll (its reading came late) by where it stands now.
    if let Some(timed) = stream.unfiled.filter(|t| t.launch <= finished) {
        stream.unfiled = None;
        let covered = if timed.launch <= covered_end {
            Covered::Yes
        } else {
            Covered::No
        };
        stream
            .samples
            .add(timed.ran_ns, timed.sharing, timed.found_idle, covered);
    }
    // A mixed stream's covered launches are charged the run's ticks and their ends, not
    // their count (`policy::gpu_time`): those made before the tick ahead of the run ran
    // before it, and are counted as any other (on a legacy stream, seen finished only at a
    // drain or a timed launch, they can be many).
    let mixed = stream.samples.mixed();
    let counted = stream.counted;
    let start = if mixed {
        counted.max(stream.covered_from).min(covered_end)
    } else {
        counted
    };
    let covered = covered_end.saturating_sub(start);
    let uncovered = start
        .saturating_sub(counted)
        .saturating_add(finished.saturating_sub(counted.max(covered_end)));
    stream.counted = stream.counted.max(finished);
    if stream.counted < stream.covered_through {
        gpu.covering = true;
    }
    // A mixed stream's covered launches are reported at what a short one takes (the
    // average of those outside such runs): the run's long ones are charged by its ticks and
    // what its long launches take (`policy::gpu_time`), its short ones by this.
    for (launches, kind) in [(covered, Covered::Yes), (uncovered, Covered::No)] {
        if launches == 0 {
            continue;
        }
        let average = if mixed { Covered::No } else { kind };
        match stream.samples.time_of_kind(launches, average) {
            Some(ns) if kind == Covered::Yes => {
                gpu.covered_ns = gpu.covered_ns.saturating_add(ns);
                gpu.covered_mixed |= mixed;
                if let Some(long) = stream.samples.long_launch_ns() {
                    gpu.covered_long_ns = gpu.covered_long_ns.max(long);
                }
            }
            Some(ns) => gpu.counted_ns = gpu.counted_ns.saturating_add(ns),
            None => gpu.uncounted = true,
        }
    }
}

/// Calls a real driver function if the driver has it; `CUDA_ERROR_NOT_FOUND` if not.
fn call<F>(function: Option<F>, body: impl FnOnce(F) -> CUresult) -> CUresult {
    function.map_or(crate::cuda::CUDA_ERROR_NOT_FOUND, body)
}

fn set_current(context: usize) -> bool {
    call(crate::exports::driver::real::cuCtxSetCurrent(), |f| {
        // SAFETY: `context` is a context the program made and has not destroyed: entries of
        // destroyed contexts are retired before the driver destroys them.
        unsafe { f(context as *mut c_void) }
    }) == CUDA_SUCCESS
}

fn create_event(owner: usize) -> Option<usize> {
    create_event_with(owner, EVENT_DISABLE_TIMING)
}

fn create_event_with(owner: usize, flags: u32) -> Option<usize> {
    if !set_current(owner) {
        return None;
    }
    let mut event: *mut c_void = std::ptr::null_mut();
    let status = call(real::cuda::cuEventCreate(), |f| {
        // SAFETY: `event` is a valid place for the driver to write a handle.
        unsafe { f(&raw mut event, flags) }
    });
    (status == CUDA_SUCCESS && !event.is_null()).then_some(event as usize)
}

/// Two events with timing in `owner`, to time a sampled launch with.
fn create_event_pair(owner: usize) -> Option<(usize, usize)> {
    let start = create_event_with(owner, EVENT_TIMED)?;
    match create_event_with(owner, EVENT_TIMED) {
        Some(end) => Some((start, end)),
        None => {
            destroy_event(start);
            None
        }
    }
}

/// The GPU time between two reached events, nanoseconds.
fn elapsed_ns(start: usize, end: usize) -> Option<u64> {
    let mut ms = 0.0_f32;
    let elapsed = real::cuda::cuEventElapsedTime_v2().or_else(real::cuda::cuEventElapsedTime);
    let status = call(elapsed, |f| {
        // SAFETY: two events this watcher created, both reached; `ms` is a valid place for
        // the driver to write the time.
        unsafe { f(&raw mut ms, start as *mut c_void, end as *mut c_void) }
    });
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (status == CUDA_SUCCESS && ms.is_finite() && ms >= 0.0)
        .then(|| (f64::from(ms) * 1e6).round() as u64)
}

fn destroy_event(event: usize) {
    let _ = call(real::cuda::cuEventDestroy_v2(), |f| {
        // SAFETY: an event this watcher created, in a context that still exists.
        unsafe { f(event as *mut c_void) }
    });
}
