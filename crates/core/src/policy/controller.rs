//! The compute controller of one process on one GPU: what the watcher's tick decides from
//! what it saw, as a pure function of its inputs and of the controller's own state.
//!
//! Each tick the watcher (`watcher.rs`) polls the process's streams and hands the
//! controller an [`Observation`]: the poll's answer, the gate's state, the process's
//! settings, the time. With every tenant's published records ([`PublishedTenant`]) the
//! controller then decides in two steps, because the tenant's credit lives in the ledger,
//! shared by its processes, and must be refilled between them:
//!
//! 1. [`Controller::follow`]: the GPU time to charge this process for the tick
//!    (`policy::gpu_time`) and the rate the tenant is entitled to now
//!    (`policy::standing`), or nothing at all when the tick is quiet;
//! 2. the watcher charges the time, refills the tenant's credit at that rate
//!    ([`Charged::refilled_credit`]) and reads the credit and consumption back, refilled
//!    and charged by every process of the tenant; then [`Controller::decide`]: the gate
//!    (open, and the bound on launches in flight beside a high-priority tenant: turns,
//!    `policy::turns`; priority, `policy::priority`), the activity to publish, and how soon
//!    the next tick comes.
//!
//! The controller keeps what it must remember between ticks (the process's turn, its
//! measured time per launch, what it is owed, each tenant's rate of use...), and nothing
//! else: no CUDA, no clock (time comes in the observation), no file. So the same inputs
//! give the same decisions, which is how its table tests and the replay of recorded
//! traces (`trace::replay`) check it.

use std::time::Duration;

use gpuslice_ledger::{Activity, ComputeSettings, TenantName};

use crate::gate::UNBOUNDED;
use crate::policy::arrivals::{Arrivals, Room};
use crate::policy::compute::Credit;
use crate::policy::gpu_time::{Charge, TickUse};
use crate::policy::launch_time::{LaunchTime, TickWork};
use crate::policy::priority::{Relief, Tick, Yield};
use crate::policy::standing::{
    ACTIVE_NS, BACKLOG_NS, PublishedTenant, Standing, UseRates, available, in_flight_elsewhere,
    own_processes_wanting_more, standing,
};
use crate::policy::turns::{Contender, OwnTurn, Turns, contested};

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
pub const REFILL_NS: u64 = 1_000_000;
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

/// How soon the next tick comes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum NextTick {
    /// After `TICK`.
    #[default]
    Normal,
    /// After `FAST_TICK`: the process yields to a high-priority tenant (the sooner it sees
    /// one of its few launches in flight finish, the less the GPU idles between them), or
    /// is high-priority beside others that have work in flight or waiting (they hold back
    /// while its work is in flight, and learn when its work comes from the times it
    /// publishes, `policy::arrivals`: a tick is their resolution). Only
    /// there: between tenants of the same priority, a process ticking faster than the
    /// others would see their published state relatively later, and be charged less for
    /// time they shared (on the H100, shares 25/75 came out 28/65 with fast ticks while
    /// waiting for a turn).
    Fast,
    /// After `HELD_TICK`: a launch of the process waits for one of its few launches in
    /// flight beside a high-priority tenant to finish: the GPU has nothing more of it to
    /// run once they have, and the launch waits for the watcher to see it (on an H100 a
    /// 2048² matmul takes 25 µs, half a `FAST_TICK`).
    Held,
}

impl NextTick {
    /// How long the watcher sleeps before it.
    pub fn duration(self) -> Duration {
        Duration::from_nanos(self.duration_ns())
    }

    /// The same, in nanoseconds.
    pub const fn duration_ns(self) -> u64 {
        match self {
            NextTick::Normal => 500_000,
            NextTick::Fast => 50_000,
            NextTick::Held => 10_000,
        }
    }
}

/// What the watcher's poll found of the process's work on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    /// It has work in flight.
    pub busy: bool,
    /// Launches known finished (those of streams since retired included), and unfinished.
    pub finished: u64,
    pub unfinished: u64,
    /// What the launches seen finished since the last tick the controller followed took,
    /// per their streams' sampled launches (`None`: some had no sample to count them by).
    pub counted_ns: Option<u64>,
    /// A stream was busy with the same work throughout the tick; what launches that ran
    /// through such ticks took, counted since the last tick followed (not in `counted_ns`);
    /// whether none such is left unfinished; and whether every stream with work never runs
    /// dry (`policy::gpu_time`).
    pub busy_throughout: bool,
    pub covered_ns: u64,
    pub covered_done: bool,
    pub saturated: bool,
    /// Some of those launches were of a stream whose timed launches differ widely
    /// (`LaunchSamples::mixed`): their count is no measure of them; and what a long launch
    /// of such a stream takes, where known (`LaunchSamples::long_launch_ns`).
    pub covered_mixed: bool,
    pub covered_long_ns: Option<u64>,
}

/// The launch gate's state as the tick read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateState {
    /// Launches wait at it now.
    pub waiters: bool,
    /// When a launch last had to wait (`CLOCK_MONOTONIC` ns; 0: never).
    pub waited_at_ns: u64,
    /// The bound on launches in flight now (`UNBOUNDED`: none).
    pub in_flight_cap: u64,
}

impl Default for GateState {
    fn default() -> Self {
        GateState {
            waiters: false,
            waited_at_ns: 0,
            in_flight_cap: UNBOUNDED,
        }
    }
}

/// What one tick saw of one GPU: the controller's input besides the tenants' records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// `CLOCK_MONOTONIC` at the end of the poll, nanoseconds.
    pub now_ns: u64,
    /// Since the previous tick (of any GPU).
    pub elapsed_ns: u64,
    /// This process's slot in its tenant's usage file.
    pub slot: u32,
    pub poll: Poll,
    pub gate: GateState,
    /// The compute settings this process enforces on the GPU now.
    pub settings: ComputeSettings,
}

/// The tenant's numbers after this process charged the tick and refilled the credit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// The tenant's credit and GPU time (every process's) on the GPU, nanoseconds.
    pub credit_ns: u64,
    pub consumed_ns: u64,
    /// This process's own GPU time on the GPU, nanoseconds.
    pub own_gpu_time_ns: u64,
}

/// The first step's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Followed {
    /// Nothing in flight, nothing finished, nothing waiting, nothing recent: the tick
    /// charges and decides nothing. `forgot` says whether it changed the controller's
    /// state (the first quiet tick after a followed one: what the process receives is
    /// counted from the next tick followed, not across the quiet ones).
    Quiet { forgot: bool },
    /// The tick is followed: charge, refill, then [`Controller::decide`].
    Charged(Charged),
}

/// What to charge and refill before the gate is decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Charged {
    /// The GPU time to charge this process for the tick.
    pub charged_ns: u64,
    /// The rate to refill the tenant's credit at.
    pub rate: f64,
    /// Processes with work in flight on the GPU, this one included: the poll divides the
    /// time of sampled launches by it.
    pub sharing: u64,
    /// The settings to publish in the process's slot, when they changed.
    pub publish_settings: Option<ComputeSettings>,
    /// What the second step needs of the first.
    pending: Pending,
}

/// What [`Controller::follow`] worked out for [`Controller::decide`].
#[derive(Clone, Debug, PartialEq)]
struct Pending {
    now_ns: u64,
    elapsed_ns: u64,
    busy: bool,
    waiting: bool,
    backlogged: bool,
    long_queue: bool,
    standing: Standing,
    /// The tenant's processes that want more, at least 1.
    wanting: u64,
}

impl Charged {
    /// The tenant's credit after `elapsed_ns` more at this tick's rate, given its
    /// consumption (charged this tick) and its credit before.
    pub fn refilled_credit(&self, credit_ns: u64, consumed_ns: u64, elapsed_ns: u64) -> u64 {
        CREDIT.refill(credit_ns, consumed_ns, self.rate, elapsed_ns)
    }
}

/// The second step's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Launches may go.
    pub open: bool,
    /// The bound on launches in flight (at least 1; `UNBOUNDED`: none).
    pub in_flight_cap: u64,
    /// The activity to publish in the process's slot, when it changed.
    pub publish_activity: Option<Activity>,
    /// How soon the next tick should come, for this GPU.
    pub next_tick: NextTick,
}

/// The controller of one process on one GPU.
#[derive(Clone, Debug)]
pub struct Controller {
    /// This process's tenant.
    tenant: TenantName,
    /// Work was in flight at the last tick followed.
    busy: bool,
    busy_since_ns: u64,
    last_active_ns: u64,
    /// The activity last published (packed), and the settings.
    published_activity: u64,
    published_settings: Option<ComputeSettings>,
    /// Since when launches wait for a turn (0: they do not).
    turn_wait_since_ns: u64,
    /// Its turn is over until its work drains (see `policy::turns`).
    turn_ended: bool,
    /// Since when it holds a turn (0: it holds none), and when it last had work in flight.
    held_since_ns: u64,
    last_busy_ns: u64,
    /// Launches known finished at the last tick followed, and the time each has been taking.
    finished: u64,
    launch_time: LaunchTime,
    /// What it may queue beyond the bound beside a high-priority tenant, to keep its share.
    relief: Relief,
    /// When a high-priority tenant's next burst of work is due, where they come regularly.
    arrivals: Arrivals,
    /// This process's GPU time as of the last tick it followed (`None` before the first,
    /// and after ticks it skipped).
    consumed: Option<u64>,
    /// When launches were last seen to finish, or work to start after none was in flight:
    /// the GPU has worked on what is unfinished since.
    progress_at_ns: u64,
    /// The GPU time this process is charged (`policy::gpu_time`).
    charge: Charge,
    /// The polled estimate of the GPU time this process received in the tick followed
    /// last (half the tick for each poll that saw work in flight, its part while shared):
    /// what relief follows. Relief must see what the bound costs the tenant tick by tick;
    /// the charge, counted when launches are seen finished, comes in lumps (beside a busy
    /// high tenant a 70%-share tenant left the GPU 1-3 points more idle following it).
    polled_ns: u64,
    /// Every tenant's rate of use of the GPU.
    rates: UseRates,
}

impl Controller {
    /// A controller for a process of `tenant` that has followed no tick yet.
    pub fn new(tenant: TenantName) -> Controller {
        Controller {
            tenant,
            busy: false,
            busy_since_ns: 0,
            last_active_ns: 0,
            published_activity: 0,
            published_settings: None,
            turn_wait_since_ns: 0,
            turn_ended: false,
            held_since_ns: 0,
            last_busy_ns: 0,
            finished: 0,
            launch_time: LaunchTime::default(),
            relief: Relief::default(),
            arrivals: Arrivals::default(),
            consumed: None,
            progress_at_ns: 0,
            charge: Charge::default(),
            polled_ns: 0,
            rates: UseRates::default(),
        }
    }

    /// Whether work was in flight at the last tick followed (what the watcher keeps as
    /// the poll's answer while it cannot poll).
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Whether `observation` makes a quiet tick: then [`Controller::follow`] reads no
    /// tenant's records (the watcher need not copy them).
    pub fn quiet(&self, observation: &Observation) -> bool {
        !observation.poll.busy
            && !self.busy
            && self.last_active_ns == 0
            && observation.poll.finished == self.finished
            && !observation.gate.waiters
    }

    /// The first step of a tick: what to charge, and the rate to refill credit at.
    /// `tenants` are every tenant's records on the GPU, this one's included.
    pub fn follow(&mut self, observation: &Observation, tenants: &[PublishedTenant]) -> Followed {
        if self.quiet(observation) {
            // What it receives is counted from the next tick it follows, not across the
            // quiet ones.
            return Followed::Quiet {
                forgot: self.consumed.take().is_some(),
            };
        }
        let Observation {
            now_ns: now,
            elapsed_ns: elapsed,
            slot,
            poll,
            gate,
            settings,
        } = *observation;
        let publish_settings = (self.published_settings != Some(settings)).then(|| {
            self.published_settings = Some(settings);
            settings
        });
        let standing = standing(tenants, &self.tenant, settings, now, &mut self.rates);

        // 1. Charge this process its part of the tick.
        let others = in_flight_elsewhere(tenants, &self.tenant, slot, now);
        let charged_ns = self.charge.tick(TickUse {
            tick_ns: elapsed,
            busy_before: self.busy,
            busy_after: poll.busy,
            finished: poll.finished.saturating_sub(self.finished),
            counted_ns: poll.counted_ns,
            sharing: others + 1,
            busy_throughout: poll.busy_throughout,
            covered_ns: poll.covered_ns,
            covered_done: poll.covered_done,
            saturated: poll.saturated,
            covered_mixed: poll.covered_mixed,
            covered_long_ns: poll.covered_long_ns,
        });
        self.polled_ns = elapsed * (u64::from(self.busy) + u64::from(poll.busy)) / 2 / (others + 1);
        self.launch_time.observe(TickWork {
            tick_ns: elapsed,
            finished: poll.finished.saturating_sub(self.finished),
            busy_before: self.busy,
            busy_after: poll.busy,
            held: gate.in_flight_cap != UNBOUNDED
                && (gate.waiters || gate.waited_at_ns >= now.saturating_sub(elapsed)),
        });
        let progressed = poll.finished != self.finished;
        if progressed || (poll.busy && !self.busy) {
            self.progress_at_ns = now;
        }
        self.finished = poll.finished;
        if poll.busy && !self.busy {
            self.busy_since_ns = now;
        }
        // A high-priority tenant's queue is long once a lower tenant's work started now
        // would delay it by more than that tenant may keep queued beside it: until then
        // they fill the GPU's gaps between its short work (see `policy::priority`).
        let long_after_ns = if standing.high {
            YIELD.queue_ns
        } else {
            HANDOVER_NS
        };
        let long_queue = poll.busy
            && self
                .launch_time
                .remaining_ns(poll.unfinished, now.saturating_sub(self.progress_at_ns))
                .is_none_or(|left| left > long_after_ns);
        self.busy = poll.busy;
        if poll.busy {
            self.last_busy_ns = now;
            if self.held_since_ns == 0 {
                self.held_since_ns = now;
            }
        } else if now.saturating_sub(self.last_busy_ns) > TURN_GAP_NS {
            self.held_since_ns = 0;
            self.turn_ended = false;
        }

        // 2. What it does (published once the gate is set).
        let waited = gate.waited_at_ns;
        let backlogged = (waited != 0 && now.saturating_sub(waited) <= BACKLOG_NS)
            || (poll.busy && now.saturating_sub(self.busy_since_ns) >= BACKLOG_NS);
        // Launches seen finished count too: a high-priority tenant's short request may
        // start and end between two polls, and the tenants yielding to it learn when its
        // requests come from this time (`policy::arrivals`).
        if poll.busy || backlogged || progressed {
            self.last_active_ns = now;
        }
        let wanting = own_processes_wanting_more(tenants, &self.tenant, now).max(1);
        Followed::Charged(Charged {
            charged_ns,
            rate: standing.rate,
            sharing: others + 1,
            publish_settings,
            pending: Pending {
                now_ns: now,
                elapsed_ns: elapsed,
                busy: poll.busy,
                waiting: gate.waiters,
                backlogged,
                long_queue,
                standing,
                wanting,
            },
        })
    }

    /// The second step of a tick, once the tick was charged and the credit refilled: the
    /// gate, the activity to publish, the next tick.
    pub fn decide(&mut self, charged: Charged, account: Account) -> Decision {
        let Pending {
            now_ns: now,
            elapsed_ns: elapsed,
            busy,
            waiting,
            backlogged,
            long_queue,
            standing,
            wanting,
        } = charged.pending;

        // 3. The tenant's credit and gate.
        let Account {
            credit_ns: credit,
            consumed_ns: consumed,
            own_gpu_time_ns: own_time,
        } = account;
        let own = Contender {
            in_flight: busy,
            holding: self.held_since_ns != 0 && !self.turn_ended,
            waiting,
            long_queue,
            backlogged,
            available_ns: available(credit, consumed),
            high: standing.high,
            wins_ties: false,
        };
        let turn = OwnTurn {
            held_ns: if self.held_since_ns == 0 {
                0
            } else {
                now.saturating_sub(self.held_since_ns).max(1)
            },
            waited_ns: if self.turn_wait_since_ns == 0 {
                0
            } else {
                now.saturating_sub(self.turn_wait_since_ns)
            },
            ended: self.turn_ended,
        };
        let has_credit = Credit::may_launch(credit, consumed);
        let my_turn = TURNS.may_launch(&own, turn, &standing.rivals);
        self.turn_wait_since_ns = match (has_credit && !my_turn && waiting, self.turn_wait_since_ns)
        {
            (false, _) => 0,
            (true, 0) => now,
            (true, since) => since,
        };
        // Relief is followed per process (each process's gate queues what it is owed), so
        // each takes its part of the tenant's guarantee, split among its processes that
        // want more, against what it received itself.
        let received = self
            .consumed
            .replace(own_time)
            .map_or(0, |_| self.polled_ns);
        let cap = if standing.yield_to_high {
            self.relief.follow(
                &YIELD,
                Tick {
                    elapsed_ns: elapsed,
                    received_ns: received,
                    #[allow(clippy::cast_precision_loss)]
                    guaranteed: standing.guaranteed / wanting as f64,
                    wants_more: backlogged,
                },
            );
            let high_running = standing
                .rivals
                .iter()
                .any(|r| r.high && r.in_flight && r.long_queue);
            let high_in_flight = standing.rivals.iter().any(|r| r.high && r.in_flight);
            let per_launch = self.launch_time.per_launch_ns();
            self.arrivals.observe(standing.high_seen_at_ns);
            // What it may keep in flight whatever is due: what it is owed beyond the bound.
            let owed_cap = YIELD.in_flight(per_launch, &self.relief, true);
            // The next tick comes about as long after this one as this one after the last.
            let tick_ns = elapsed.max(NextTick::Fast.duration_ns());
            match self.arrivals.room(now, tick_ns, per_launch, high_in_flight) {
                Room::Free => YIELD.in_flight(per_launch, &self.relief, high_running),
                Room::Hold => owed_cap,
                Room::Launches(most) => YIELD
                    .in_flight(per_launch, &self.relief, high_running)
                    .min(most)
                    .max(owed_cap),
            }
        } else {
            self.relief = Relief::default();
            UNBOUNDED
        };
        let open = has_credit && my_turn && cap > 0;
        self.turn_ended =
            self.held_since_ns != 0 && (self.turn_ended || (!open && contested(&standing.rivals)));
        // Only for short kernels: beside long ones the watcher's lag is small, and polling
        // this often would only take a core's time.
        let held = cap != UNBOUNDED
            && waiting
            && self
                .launch_time
                .per_launch_ns()
                .is_none_or(|ns| ns < YIELD.queue_ns);
        let next_tick = if held {
            NextTick::Held
        } else if standing.yield_to_high
            || (standing.high && standing.rivals.iter().any(|r| r.in_flight || r.backlogged))
        {
            NextTick::Fast
        } else {
            NextTick::Normal
        };

        // 4. Publish what it does.
        let activity = Activity {
            in_flight: busy,
            backlogged,
            // A tenant whose turn has just ended lets those that waited through it go
            // first, whatever its credit: it waits again once its work has drained.
            waiting: waiting && !self.turn_ended,
            holding: self.held_since_ns != 0 && !self.turn_ended,
            long_queue,
            at_ns: self.last_active_ns,
        };
        let publish_activity = (activity.pack() != self.published_activity).then(|| {
            self.published_activity = activity.pack();
            Activity::unpack(self.published_activity)
        });
        if !busy && !backlogged && now.saturating_sub(self.last_active_ns) > ACTIVE_NS {
            self.last_active_ns = 0;
        }
        Decision {
            open,
            // The gate's bound is at least one launch: where none may start, `open` is
            // false instead.
            in_flight_cap: cap.max(1),
            publish_activity,
            next_tick,
        }
    }
}

#[cfg(test)]
mod tests;
