//! The watcher: one thread per enforcing process that measures the GPU time the process
//! receives and keeps its launch gates, so that launches themselves only mark a stream.
//!
//! Every tick (`TICK`; `FAST_TICK` while a high-priority tenant shares the GPU, and at once
//! when a launch starts to wait for one of its few launches in flight to finish) it:
//! 1. polls the streams the process launched on: an event it records behind the latest
//!    launches of a created stream says when they finished; a legacy stream is queried.
//!    Its CUDA calls go straight to the driver, so they are neither gated nor counted;
//! 2. charges the process, per GPU, the tick's wall time while it had work in flight,
//!    divided by the number of processes (of every tenant) with work in flight on that GPU,
//!    since the hardware time-slices between them; and publishes what it is doing;
//! 3. reads every tenant's records, works out the rate this tenant is entitled to
//!    ([`entitled_rates`]), refills the tenant's credit, and opens or closes the gate.
//!
//! It never blocks a launch itself, and it stops (opening every gate) when the process
//! exits, before the driver is torn down.

use std::collections::HashMap;
use std::ffi::c_void;
use std::time::Duration;

use gpuslice_ledger::{
    Activity, ComputeSettings, GpuIndex, GpuUuid, Ledger, MAX_GPUS, Priority, SlotCompute,
    TenantName, monotonic_ns,
};

use crate::cuda::{CUDA_SUCCESS, CUresult};
use crate::gate::UNBOUNDED;
use crate::log::{Level, RateLimit, log};
use crate::neighbours::{Neighbours, Tenant};
use crate::policy::compute::{Credit, Demand, entitled_rates, guaranteed_rates};
use crate::policy::gpu_time::{Charge, LaunchSamples, TickUse};
use crate::policy::launch_time::{LaunchTime, TickWork};
use crate::policy::priority::{Relief, Tick, Yield};
use crate::policy::turns::{Contender, OwnTurn, Turns, contested};
use crate::real;
use crate::shim::Shim;
use crate::streams::{CAPACITY, Occupancy, SampleState, StreamEntry, StreamKind};
use crate::trace::{TickRecord, Trace};

/// How often the watcher polls and decides.
const TICK: Duration = Duration::from_micros(500);
/// How often while the process yields to a high-priority tenant (the sooner it sees one of
/// its few launches in flight finish, the less the GPU idles between them), or while it is
/// high-priority beside others (who hold back while its work is in flight). Only there:
/// between tenants of the same priority, a process ticking faster than the others would
/// see their published state relatively later, and be charged less for time they shared
/// (on the H100, shares 25/75 came out 28/65 with fast ticks while waiting for a turn).
const FAST_TICK: Duration = Duration::from_micros(50);
/// How often while a launch of the process waits for one of its few launches in flight
/// beside a high-priority tenant to finish: the GPU has nothing more of it to run once they
/// have, and the launch waits for the watcher to see it (on an H100 a 2048² matmul takes
/// 25 µs, half a `FAST_TICK`).
const HELD_TICK: Duration = Duration::from_micros(10);
/// A process's "in flight" mark counts this long after it was written (a process that
/// died or stalled stops counting).
const FRESH_NS: u64 = 5_000_000;
/// A tenant with work in flight or waiting this recently is active: it gets its share.
const ACTIVE_NS: u64 = 50_000_000;
/// A process that waited at its gate this recently, or kept the GPU busy this long without
/// a gap, wants more than it gets.
const BACKLOG_NS: u64 = 20_000_000;
/// The time constant of each tenant's measured rate of use.
const RATE_TAU_NS: f64 = 50_000_000.0;
/// Headroom over a light tenant's measured use before it counts as wanting more.
const HEADROOM: f64 = 1.25;
const HEADROOM_FLOOR: f64 = 0.02;
/// How far credit may run ahead (a burst after idling) and fall behind (work already queued
/// when the gate closed, paid back by waiting).
/// The burst is a little more than a turn's worth of waiting at a small share, so that
/// taking turns loses no credit.
const CREDIT: Credit = Credit {
    burst_ns: 20_000_000,
    max_debt_ns: 500_000_000,
};
/// The shortest stretch of time a refill of the tenant's credit adds (a refill is one CAS
/// in the tenant's usage file; more often would only add contention between its processes).
const REFILL_NS: u64 = 1_000_000;
/// How much work tenants below a high-priority one keep queued while it is active: its
/// requests wait for at most this, or for one kernel where one takes longer, unless that has
/// cost the tenant its guaranteed share (see `policy::priority`). It may be owed as much as
/// the credit's burst, and queues work while the high-priority tenant's work runs only once
/// it is owed more than a quarter of that.
const YIELD: Yield = Yield {
    queue_ns: 100_000,
    max_in_flight: 16,
    max_relief_ns: 20_000_000,
    owed_before_running_ns: 5_000_000,
};
/// How long a backlogged tenant keeps the GPU while another waits, and how long one waits
/// for its turn before going anyway (see `policy::turns`).
const TURNS: Turns = Turns {
    max_turn_ns: 60_000_000,
    max_wait_ns: 100_000_000,
};
/// How much work a draining tenant may have left when the next turn starts: about what the
/// next one takes to notice (a tick) and get its first kernel to the GPU, so that the GPU
/// goes from one queue to the next with neither a gap nor a stretch of time-slicing.
const HANDOVER_NS: u64 = 1_000_000;
/// A gap in a process's work shorter than this (a synchronization between two steps of a
/// loop) does not end its turn.
const TURN_GAP_NS: u64 = 2_000_000;
/// `CUDA_ERROR_NOT_READY`.
const NOT_READY: CUresult = 600;
/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: u32 = 0x2;
/// `CU_EVENT_DEFAULT`: with timing, for sampled launches.
const EVENT_TIMED: u32 = 0x0;
/// How often a stream has one of its launches timed (`policy::gpu_time`): two event
/// records on that launch, so that this keeps their cost far below a launch's.
const SAMPLE_EVERY_NS: u64 = 2_000_000;

/// Starts the watcher of `shim` (once per process; again in a forked child). Without it
/// the gates stay open: launches go ungated rather than fail.
pub fn start(shim: &'static Shim) {
    let ledger = match Ledger::open(shim.ledger_dir()) {
        Ok(ledger) => ledger,
        Err(error) => {
            log!(Level::Error, "compute shares are not enforced: {error}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("gpuslice-watch".into())
        .spawn(move || {
            let mut watcher = Watcher::new(shim, Neighbours::new(ledger));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                watcher.run();
            }));
            shim.gates.open_all();
            if outcome.is_err() {
                log!(
                    Level::Error,
                    "the compute watcher failed; launches are no longer gated"
                );
            }
        });
    match spawned {
        Ok(_) => {
            // SAFETY: `stop_at_exit` is an `extern "C"` function living as long as the process.
            if unsafe { libc::atexit(stop_at_exit) } != 0 {
                log!(Level::Warn, "could not register the watcher's exit handler");
            }
        }
        Err(error) => {
            log!(
                Level::Error,
                "cannot start the compute watcher ({error}); launches are not gated"
            );
        }
    }
}

/// At exit, before the driver's own teardown: no more CUDA calls from the watcher (a poll
/// in progress ends first; none starts after).
extern "C" fn stop_at_exit() {
    if let crate::runtime::Mode::Enforcing(shim) = crate::runtime::current_mode() {
        shim.gates.stop_polls();
    }
}

/// What the watcher keeps about one stream.
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
    /// Busy with the same work from the poll before to this one (`policy::gpu_time`).
    busy_throughout: bool,
    /// The launches up to this count ran through ticks charged whole (`busy_throughout`).
    covered_through: u64,
    /// The launch count at the poll before.
    polled_launches: u64,
}

/// What the watcher keeps about one GPU.
#[derive(Debug, Default)]
struct GpuTrack {
    uuid: Option<GpuUuid>,
    busy: bool,
    busy_since_ns: u64,
    last_active_ns: u64,
    published: u64,
    /// The compute settings last published on this GPU.
    published_compute: Option<ComputeSettings>,
    /// Since when launches wait for a turn (0: they do not).
    turn_wait_since_ns: u64,
    /// Its turn is over until its work drains (see `policy::turns`).
    turn_ended: bool,
    /// Since when it holds a turn (0: it holds none), and when it last had work in flight.
    held_since_ns: u64,
    last_busy_ns: u64,
    /// What the last poll found: launches finished (those of streams retired since
    /// included) and unfinished.
    polled_finished: u64,
    polled_unfinished: u64,
    /// Launches of streams since retired.
    retired_launches: u64,
    /// Launches known finished at the last tick, and the time each has been taking.
    finished: u64,
    launch_time: LaunchTime,
    /// What it may queue beyond the bound beside a high-priority tenant, to keep its share.
    relief: Relief,
    /// This process's GPU time as of the last tick it followed (`None` before the first,
    /// and after ticks it skipped).
    consumed: Option<u64>,
    /// When launches were last seen to finish, or work to start after none was in flight:
    /// the GPU has worked on what is unfinished since.
    progress_at_ns: u64,
    /// The GPU time this process is charged (`policy::gpu_time`).
    charge: Charge,
    /// What launches seen finished took, per their streams' samples, not yet charged;
    /// and whether some finished without a sample to count them by.
    counted_ns: u64,
    uncounted: bool,
    /// Processes with work in flight on the GPU at the last tick, this one included.
    sharing: u64,
    /// Some stream was busy with the same work throughout the last poll's tick.
    busy_throughout: bool,
    /// A stream with work at the last poll was not saturated (`LaunchSamples`).
    unsaturated: bool,
    /// What launches that ran through ticks charged whole took, counted since the last
    /// tick; and whether some such are still unfinished.
    covered_ns: u64,
    covering: bool,
}

/// This tenant's standing on a GPU this tick.
#[derive(Debug)]
struct Entitlement {
    /// The fraction of the GPU it is entitled to now.
    rate: f64,
    /// A high-priority tenant is active elsewhere and this one is not high.
    yield_to_high: bool,
    /// Whether this tenant has priority high.
    high: bool,
    /// The other tenants on the GPU.
    rivals: Vec<Contender>,
    /// The fraction of the GPU guaranteed to it while it wants it (its share when every
    /// active tenant wants all it may get).
    guaranteed: f64,
}

/// A tenant's rate of use on a GPU, measured by this watcher.
#[derive(Debug, Default)]
struct UseRate {
    gpu_time_ns: u64,
    at_ns: u64,
    rate: f64,
}

struct Watcher {
    shim: &'static Shim,
    neighbours: Neighbours,
    streams: Vec<Tracked>,
    gpus: Vec<GpuTrack>,
    rates: HashMap<(TenantName, GpuUuid), UseRate>,
    last_tick_ns: u64,
    /// Whether the next tick comes after `FAST_TICK` rather than `TICK`.
    fast: bool,
    /// Whether it comes after `HELD_TICK`: launches wait for few in flight to finish.
    waiting_at_cap: bool,
    errors: RateLimit,
    /// `GPUSLICE_TRACE`, when set and writable.
    trace: Option<Trace>,
    /// When the trace was last flushed.
    trace_flushed_ns: u64,
    /// Picks which launch of the next ones is timed.
    rng: u64,
}

/// How often the trace is flushed: a process's exit can lose at most this much of it.
const TRACE_FLUSH_NS: u64 = 100_000_000;

impl Watcher {
    fn new(shim: &'static Shim, neighbours: Neighbours) -> Watcher {
        Watcher {
            shim,
            neighbours,
            streams: vec![Tracked::default(); CAPACITY],
            gpus: (0..MAX_GPUS).map(|_| GpuTrack::default()).collect(),
            rates: HashMap::new(),
            last_tick_ns: monotonic_ns(),
            fast: false,
            waiting_at_cap: false,
            errors: RateLimit::new(),
            trace: shim.trace_path().and_then(Trace::open),
            trace_flushed_ns: 0,
            rng: monotonic_ns() | 1,
        }
    }

    fn run(&mut self) {
        precise_sleeps();
        let bell = self.shim.gates.bell();
        let mut seen = bell.rung();
        while !self.shim.gates.polls_stopped() {
            let tick = if self.waiting_at_cap {
                HELD_TICK
            } else if self.fast {
                FAST_TICK
            } else {
                TICK
            };
            bell.sleep(seen, tick);
            // Read before the tick looks at the gates: a launch that starts to wait during
            // the tick cuts the next sleep short.
            seen = bell.rung();
            self.tick();
        }
        if let Some(trace) = &mut self.trace {
            trace.flush();
        }
    }

    fn tick(&mut self) {
        let shim = self.shim;
        self.fast = false;
        self.waiting_at_cap = false;
        let poll_start = monotonic_ns();
        let busy = if shim.gates.start_poll() {
            let busy = self.poll_streams();
            shim.gates.end_poll();
            busy
        } else {
            // A capture is open: keep the last answer.
            std::array::from_fn(|g| self.gpus[g].busy)
        };
        let now = monotonic_ns();
        let poll_ns = now.saturating_sub(poll_start);
        if let Some(trace) = &mut self.trace
            && now.saturating_sub(self.trace_flushed_ns) >= TRACE_FLUSH_NS
        {
            trace.flush();
            self.trace_flushed_ns = now;
        }
        let elapsed = now.saturating_sub(self.last_tick_ns);
        self.last_tick_ns = now;
        let Ok(slot) = shim.memory.slot() else {
            return;
        };
        let tenants = self.neighbours.read();
        for (g, &busy_now) in busy.iter().enumerate() {
            let Ok(index) = u32::try_from(g) else {
                continue;
            };
            let gpu = GpuIndex(index);
            let Some(gate) = shim.gates.gpu(index) else {
                continue;
            };
            if self.gpus[g].uuid.is_none() {
                self.gpus[g].uuid = shim
                    .memory
                    .usage()
                    .gpus()
                    .into_iter()
                    .find(|(i, _)| *i == gpu)
                    .map(|(_, u)| u);
            }
            let Some(uuid) = self.gpus[g].uuid else {
                continue;
            };
            let quiet = !busy_now
                && !self.gpus[g].busy
                && self.gpus[g].last_active_ns == 0
                && self.gpus[g].polled_finished == self.gpus[g].finished;
            if quiet && !gate.has_waiters() {
                // What it receives is counted from the next tick it follows, not across the
                // quiet ones.
                self.gpus[g].consumed = None;
                continue;
            }
            let settings = shim.compute_settings(&uuid);
            if track_settings(&mut self.gpus[g].published_compute, settings) {
                slot.publish_compute(gpu, settings);
            }
            let entitled = self.entitlement(&tenants, &uuid, now, settings);
            let track = &mut self.gpus[g];

            // 1. Charge this process its part of the tick.
            let others = in_flight_elsewhere(&tenants, &uuid, shim.tenant(), slot.index(), now);
            let finished = track.polled_finished;
            let counted_ns = (!std::mem::take(&mut track.uncounted))
                .then(|| std::mem::take(&mut track.counted_ns));
            track.counted_ns = 0;
            track.sharing = others + 1;
            let charged = track.charge.tick(TickUse {
                tick_ns: elapsed,
                busy_before: track.busy,
                busy_after: busy_now,
                finished: finished.saturating_sub(track.finished),
                counted_ns,
                sharing: others + 1,
                busy_throughout: std::mem::take(&mut track.busy_throughout),
                covered_ns: std::mem::take(&mut track.covered_ns),
                covered_done: !std::mem::take(&mut track.covering),
                saturated: !std::mem::take(&mut track.unsaturated),
            });
            if charged > 0 {
                slot.add_gpu_time(gpu, charged);
            }
            let mut record = TickRecord {
                at_ns: now,
                gpu: index,
                elapsed_ns: elapsed,
                poll_ns,
                busy_before: track.busy,
                busy_after: busy_now,
                finished: track.polled_finished,
                unfinished: track.polled_unfinished,
                others_in_flight: others,
                charged_ns: charged,
                counted_ns,
                ..TickRecord::default()
            };
            track.launch_time.observe(TickWork {
                tick_ns: elapsed,
                finished: finished.saturating_sub(track.finished),
                busy_before: track.busy,
                busy_after: busy_now,
                held: gate.in_flight_cap() != UNBOUNDED
                    && (gate.has_waiters() || gate.waited_at_ns() >= now.saturating_sub(elapsed)),
            });
            if finished != track.finished || (busy_now && !track.busy) {
                track.progress_at_ns = now;
            }
            track.finished = finished;
            if busy_now && !track.busy {
                track.busy_since_ns = now;
            }
            let long_queue = busy_now
                && track
                    .launch_time
                    .remaining_ns(
                        track.polled_unfinished,
                        now.saturating_sub(track.progress_at_ns),
                    )
                    .is_none_or(|left| left > HANDOVER_NS);
            track.busy = busy_now;
            if busy_now {
                track.last_busy_ns = now;
                if track.held_since_ns == 0 {
                    track.held_since_ns = now;
                }
            } else if now.saturating_sub(track.last_busy_ns) > TURN_GAP_NS {
                track.held_since_ns = 0;
                track.turn_ended = false;
            }

            // 2. What it does (published once the gate is set).
            let waited = gate.waited_at_ns();
            let backlogged = (waited != 0 && now.saturating_sub(waited) <= BACKLOG_NS)
                || (busy_now && now.saturating_sub(track.busy_since_ns) >= BACKLOG_NS);
            if busy_now || backlogged {
                track.last_active_ns = now;
            }
            let waiting = gate.has_waiters();

            // 3. The tenant's credit and gate.
            let usage = shim.memory.usage();
            let consumed = usage.gpu_time_ns(gpu);
            usage.refill_credit(gpu, now, REFILL_NS, |credit, dt| {
                CREDIT.refill(credit, consumed, entitled.rate, dt)
            });
            let (credit, consumed) = (usage.credit_ns(gpu), usage.gpu_time_ns(gpu));
            let own = Contender {
                in_flight: busy_now,
                holding: track.held_since_ns != 0 && !track.turn_ended,
                waiting,
                long_queue,
                backlogged,
                available_ns: available(credit, consumed),
                high: entitled.high,
                wins_ties: false,
            };
            let turn = OwnTurn {
                held_ns: if track.held_since_ns == 0 {
                    0
                } else {
                    now.saturating_sub(track.held_since_ns).max(1)
                },
                waited_ns: if track.turn_wait_since_ns == 0 {
                    0
                } else {
                    now.saturating_sub(track.turn_wait_since_ns)
                },
                ended: track.turn_ended,
            };
            let has_credit = Credit::may_launch(credit, consumed);
            let my_turn = TURNS.may_launch(&own, turn, &entitled.rivals);
            track.turn_wait_since_ns =
                match (has_credit && !my_turn && waiting, track.turn_wait_since_ns) {
                    (false, _) => 0,
                    (true, 0) => now,
                    (true, since) => since,
                };
            // Relief is followed per process (each process's gate queues what it is owed), so
            // each takes its part of the tenant's guarantee, split among its processes that
            // want more, against what it received itself.
            let own_time = slot.gpu_time_ns(gpu);
            let received = track
                .consumed
                .replace(own_time)
                .map_or(0, |before| own_time.saturating_sub(before));
            let wanting = own_processes_wanting_more(&tenants, &uuid, shim.tenant(), now).max(1);
            let cap = if entitled.yield_to_high {
                track.relief.follow(
                    &YIELD,
                    Tick {
                        elapsed_ns: elapsed,
                        received_ns: received,
                        #[allow(clippy::cast_precision_loss)]
                        guaranteed: entitled.guaranteed / wanting as f64,
                        wants_more: backlogged,
                    },
                );
                let high_running = entitled.rivals.iter().any(|r| r.high && r.in_flight);
                YIELD.in_flight(
                    track.launch_time.per_launch_ns(),
                    &track.relief,
                    high_running,
                )
            } else {
                track.relief = Relief::default();
                UNBOUNDED
            };
            let open = has_credit && my_turn && cap > 0;
            track.turn_ended = track.held_since_ns != 0
                && (track.turn_ended || (!open && contested(&entitled.rivals)));
            // Only for short kernels: beside long ones the watcher's lag is small, and
            // polling this often would only take a core's time.
            let waiting_at_cap = cap != UNBOUNDED
                && waiting
                && track
                    .launch_time
                    .per_launch_ns()
                    .is_none_or(|ns| ns < YIELD.queue_ns);
            gate.set(open, cap.max(1));
            if let Some(trace) = &mut self.trace {
                record.rate = entitled.rate;
                record.credit_ns = credit;
                record.consumed_ns = consumed;
                record.open = open;
                record.cap = cap;
                record.waiting = waiting;
                trace.record(&record);
            }
            self.fast |= entitled.yield_to_high
                || (entitled.high && entitled.rivals.iter().any(|r| r.in_flight));
            self.waiting_at_cap |= waiting_at_cap;

            // 4. Publish what it does.
            let activity = Activity {
                in_flight: busy_now,
                backlogged,
                // A tenant whose turn has just ended lets those that waited through it go
                // first, whatever its credit: it waits again once its work has drained.
                waiting: waiting && !track.turn_ended,
                holding: track.held_since_ns != 0 && !track.turn_ended,
                long_queue,
                at_ns: track.last_active_ns,
            }
            .pack();
            if activity != track.published {
                slot.set_activity(gpu, Activity::unpack(activity));
                track.published = activity;
            }
            if !busy_now && !backlogged && now.saturating_sub(track.last_active_ns) > ACTIVE_NS {
                track.last_active_ns = 0;
            }
        }
    }

    /// Polls every stream; returns, per GPU, whether the process has work in flight there.
    fn poll_streams(&mut self) -> [bool; MAX_GPUS] {
        let shim = self.shim;
        let mut busy = [false; MAX_GPUS];
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
            match entry.kind() {
                StreamKind::Created => {
                    self.poll_created(i, entry.stream(), entry.owner(), launches)
                }
                StreamKind::Legacy => {
                    self.poll_legacy(i, entry.owner(), launches, entry.has_per_thread());
                }
            }
            self.follow_sample(i, entry);
            let tracked = &mut self.streams[i];
            tracked.polled_launches = launches;
            if let Some(g) = gpu {
                busy[g] |= tracked.busy;
                self.gpus[g].busy_throughout |= tracked.busy_throughout;
                if (tracked.busy || launches != tracked.counted) && !tracked.samples.saturated() {
                    self.gpus[g].unsaturated = true;
                }
                launched[g] += launches;
                unfinished[g] += launches.saturating_sub(tracked.finished);
                let finished = tracked.finished;
                count_finished(&mut self.gpus[g], tracked, finished);
            }
        }
        for (g, track) in self.gpus.iter_mut().enumerate() {
            track.polled_finished = launched[g].saturating_sub(unfinished[g]);
            track.polled_unfinished = unfinished[g];
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
                        if let Some(ns) = elapsed_ns(start, end) {
                            let g = usize::try_from(entry.gpu()).unwrap_or(0).min(MAX_GPUS - 1);
                            let lead = entry.sample_lead_ns();
                            let ran = ns.saturating_sub(lead);
                            tracked.samples.add(ran, self.gpus[g].sharing, lead > 0);
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
    /// finished only through sampled launches (`follow_sample`), and in flight until then.
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

    /// This tenant's standing on `uuid` now: its entitled rate, whether it must yield to an
    /// active high-priority tenant, and the others as contenders for turns.
    fn entitlement(
        &mut self,
        tenants: &[Tenant],
        uuid: &GpuUuid,
        now: u64,
        own_settings: ComputeSettings,
    ) -> Entitlement {
        let own = self.shim.tenant();
        let mut demands = Vec::with_capacity(tenants.len());
        let mut own_index = None;
        let mut high_active_elsewhere = false;
        let mut rivals = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let Some(gpu) = tenant.usage.gpu_index(uuid) else {
                continue;
            };
            let slots = tenant.usage.compute_slots(gpu);
            let active = slots.iter().any(|s| s.activity.seen_within(now, ACTIVE_NS));
            let backlogged = slots
                .iter()
                .any(|s| s.activity.backlogged && s.activity.seen_within(now, BACKLOG_NS));
            let settings = if tenant.name == *own {
                own_settings
            } else {
                // Only processes active now: a dead one's slot keeps its settings until
                // it is reclaimed. Never more than the tenant's quota allows.
                tenant.ceiling(
                    uuid,
                    combined(
                        slots
                            .iter()
                            .filter(|s| s.activity.seen_within(now, ACTIVE_NS))
                            .filter_map(|s| s.settings),
                    ),
                )
            };
            let high = settings.priority == Some(Priority::High);
            let used = tenant.usage.gpu_time_ns(gpu);
            let rate = self.measured_rate(&tenant.name, uuid, used, now);
            if tenant.name == *own {
                own_index = Some(demands.len());
            } else {
                high_active_elsewhere |= active && high;
                let fresh = |s: &&SlotCompute| s.activity.seen_within(now, FRESH_NS);
                rivals.push(Contender {
                    in_flight: slots.iter().filter(fresh).any(|s| s.activity.in_flight),
                    holding: slots.iter().filter(fresh).any(|s| s.activity.holding),
                    waiting: slots.iter().filter(fresh).any(|s| s.activity.waiting),
                    long_queue: slots.iter().filter(fresh).any(|s| s.activity.long_queue),
                    backlogged,
                    available_ns: available(tenant.usage.credit_ns(gpu), used),
                    high,
                    wins_ties: tenant.name.as_str() < own.as_str(),
                });
            }
            demands.push(Demand {
                share_permille: settings.share_permille,
                limit_permille: settings.limit_permille,
                // This tenant is always in the split: it is asking.
                active: active || tenant.name == *own,
                wants: (!backlogged && tenant.name != *own)
                    .then(|| (rate * HEADROOM + HEADROOM_FLOOR).min(1.0)),
            });
        }
        let rates = entitled_rates(&demands);
        let rate = own_index
            .and_then(|i| rates.get(i).copied())
            .unwrap_or_else(|| f64::from(own_settings.limit_permille.unwrap_or(1000)) / 1000.0);
        let guaranteed = own_index
            .and_then(|i| guaranteed_rates(&demands).get(i).copied())
            .unwrap_or(rate);
        let high = own_settings.priority == Some(Priority::High);
        Entitlement {
            rate,
            yield_to_high: high_active_elsewhere && !high,
            high,
            rivals,
            guaranteed,
        }
    }

    fn measured_rate(&mut self, tenant: &TenantName, uuid: &GpuUuid, used: u64, now: u64) -> f64 {
        let entry = self.rates.entry((tenant.clone(), *uuid)).or_default();
        if entry.at_ns != 0 && now > entry.at_ns {
            #[allow(clippy::cast_precision_loss)]
            let (dt, dused) = (
                (now - entry.at_ns) as f64,
                used.saturating_sub(entry.gpu_time_ns) as f64,
            );
            let alpha = (dt / RATE_TAU_NS).min(1.0);
            entry.rate += alpha * ((dused / dt).min(1.0) - entry.rate);
        }
        entry.gpu_time_ns = used;
        entry.at_ns = now;
        entry.rate
    }
}

/// Makes the watcher's sleeps as long as asked: the default timer slack (50 µs) would double
/// a fast tick.
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain number and only affects the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) } != 0 {
        log!(Level::Debug, "cannot shorten the watcher's timer slack");
    }
}

/// Processes of any tenant other than this one with work in flight on `uuid` now.
fn in_flight_elsewhere(
    tenants: &[Tenant],
    uuid: &GpuUuid,
    own: &TenantName,
    own_slot: u32,
    now: u64,
) -> u64 {
    let mut count = 0;
    for tenant in tenants {
        let Some(gpu) = tenant.usage.gpu_index(uuid) else {
            continue;
        };
        count += tenant
            .usage
            .compute_slots(gpu)
            .iter()
            .filter(|s| !(tenant.name == *own && s.index == own_slot))
            .filter(|s| s.activity.in_flight && s.activity.seen_within(now, FRESH_NS))
            .count() as u64;
    }
    count
}

/// Processes of `own` that want more of `uuid` than they get now (their launches wait, or
/// they keep the GPU busy without a gap), as their published activity says.
fn own_processes_wanting_more(
    tenants: &[Tenant],
    uuid: &GpuUuid,
    own: &TenantName,
    now: u64,
) -> u64 {
    tenants
        .iter()
        .find(|t| t.name == *own)
        .and_then(|t| Some(t.usage.compute_slots(t.usage.gpu_index(uuid)?)))
        .map_or(0, |slots| {
            slots
                .iter()
                .filter(|s| s.activity.backlogged && s.activity.seen_within(now, BACKLOG_NS))
                .count() as u64
        })
}

/// Credit in hand: credit less consumption, in nanoseconds (negative: in debt).
fn available(credit: u64, consumed: u64) -> i64 {
    let ahead = i64::try_from(credit.abs_diff(consumed)).unwrap_or(i64::MAX);
    if credit >= consumed { ahead } else { -ahead }
}

/// Whether `settings` differ from what was last published on a GPU (then it is recorded).
fn track_settings(published: &mut Option<ComputeSettings>, settings: ComputeSettings) -> bool {
    let changed = *published != Some(settings);
    *published = Some(settings);
    changed
}

/// A tenant's settings from what its processes published: the most restrictive of each.
fn combined(all: impl Iterator<Item = ComputeSettings>) -> ComputeSettings {
    all.reduce(ComputeSettings::lowered_by).unwrap_or_default()
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

/// The stream's launches up to `finished` have finished: adds those not counted yet to
/// its GPU's count at their sampled time, those that ran through ticks charged whole apart
/// (`policy::gpu_time`); without samples, marks the GPU uncounted (the tick falls back to
/// the polled estimate).
fn count_finished(track: &mut GpuTrack, stream: &mut Tracked, finished: u64) {
    let covered_end = stream.covered_through.min(finished);
    let covered = covered_end.saturating_sub(stream.counted);
    let uncovered = finished.saturating_sub(stream.counted.max(covered_end));
    stream.counted = stream.counted.max(finished);
    if stream.counted < stream.covered_through {
        track.covering = true;
    }
    for (launches, into_covered) in [(covered, true), (uncovered, false)] {
        if launches == 0 {
            continue;
        }
        match stream.samples.time_of(launches) {
            Some(ns) if into_covered => track.covered_ns = track.covered_ns.saturating_add(ns),
            Some(ns) => track.counted_ns = track.counted_ns.saturating_add(ns),
            None => track.uncounted = true,
        }
    }
}

fn destroy_event(event: usize) {
    let _ = call(real::cuda::cuEventDestroy_v2(), |f| {
        // SAFETY: an event this watcher created, in a context that still exists.
        unsafe { f(event as *mut c_void) }
    });
}
