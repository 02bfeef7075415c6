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
    /// is high-priority beside others (who hold back while its work is in flight). Only
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
        match self {
            NextTick::Normal => Duration::from_micros(500),
            NextTick::Fast => Duration::from_micros(50),
            NextTick::Held => Duration::from_micros(10),
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
    /// This process's GPU time as of the last tick it followed (`None` before the first,
    /// and after ticks it skipped).
    consumed: Option<u64>,
    /// When launches were last seen to finish, or work to start after none was in flight:
    /// the GPU has worked on what is unfinished since.
    progress_at_ns: u64,
    /// The GPU time this process is charged (`policy::gpu_time`).
    charge: Charge,
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
            consumed: None,
            progress_at_ns: 0,
            charge: Charge::default(),
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
        });
        self.launch_time.observe(TickWork {
            tick_ns: elapsed,
            finished: poll.finished.saturating_sub(self.finished),
            busy_before: self.busy,
            busy_after: poll.busy,
            held: gate.in_flight_cap != UNBOUNDED
                && (gate.waiters || gate.waited_at_ns >= now.saturating_sub(elapsed)),
        });
        if poll.finished != self.finished || (poll.busy && !self.busy) {
            self.progress_at_ns = now;
        }
        self.finished = poll.finished;
        if poll.busy && !self.busy {
            self.busy_since_ns = now;
        }
        let long_queue = poll.busy
            && self
                .launch_time
                .remaining_ns(poll.unfinished, now.saturating_sub(self.progress_at_ns))
                .is_none_or(|left| left > HANDOVER_NS);
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
        if poll.busy || backlogged {
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
            .map_or(0, |before| own_time.saturating_sub(before));
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
            let high_running = standing.rivals.iter().any(|r| r.high && r.in_flight);
            YIELD.in_flight(self.launch_time.per_launch_ns(), &self.relief, high_running)
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
            || (standing.high && standing.rivals.iter().any(|r| r.in_flight))
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
            // A gate bounded to none would never pass the launch that waits for the
            // high-priority tenant's work to end: `open` holds it instead.
            in_flight_cap: cap.max(1),
            publish_activity,
            next_tick,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::standing::PublishedSlot;
    use gpuslice_ledger::Priority;

    const TICK: u64 = 500_000;
    const MS: u64 = 1_000_000;
    /// When the tests' first tick comes: far enough from 0 that "long ago" is a time.
    const T0: u64 = 100 * MS;

    fn name(name: &str) -> TenantName {
        TenantName::new(name).unwrap()
    }

    fn settings(
        share: Option<u32>,
        limit: Option<u32>,
        priority: Option<Priority>,
    ) -> ComputeSettings {
        ComputeSettings {
            share_permille: share,
            limit_permille: limit,
            priority,
        }
    }

    /// An activity seen at `at_ns` with the flags `flags` (`ibwhq`, as in the trace).
    fn seen(at_ns: u64, flags: &str) -> Activity {
        Activity {
            in_flight: flags.contains('i'),
            backlogged: flags.contains('b'),
            waiting: flags.contains('w'),
            holding: flags.contains('h'),
            long_queue: flags.contains('q'),
            at_ns,
        }
    }

    /// A tenant with credit in hand `available_ns`, its slots' indices and activities all
    /// enforcing `settings`, and no quota file.
    fn tenant(
        tenant: &str,
        settings: ComputeSettings,
        available_ns: u64,
        slots: &[(u32, Activity)],
    ) -> PublishedTenant {
        PublishedTenant {
            name: name(tenant),
            gpu_time_ns: 50 * MS,
            credit_ns: 50 * MS + available_ns,
            ceiling: None,
            slots: slots
                .iter()
                .map(|&(index, activity)| PublishedSlot {
                    index,
                    settings: Some(settings),
                    activity,
                })
                .collect(),
        }
    }

    /// What the process saw at `now`: work in flight or not, launches finished so far, what
    /// they took per samples.
    fn observed(now: u64, busy: bool, finished: u64, counted_ns: Option<u64>) -> Observation {
        Observation {
            now_ns: now,
            elapsed_ns: TICK,
            slot: 0,
            poll: Poll {
                busy,
                finished,
                unfinished: u64::from(busy),
                counted_ns,
            },
            gate: GateState::default(),
            settings: ComputeSettings::default(),
        }
    }

    /// Credit in hand: plenty, and the process's own GPU time as the tenant's.
    fn plenty(consumed: u64) -> Account {
        Account {
            credit_ns: consumed + 10 * MS,
            consumed_ns: consumed,
            own_gpu_time_ns: consumed,
        }
    }

    /// Both steps of a followed tick.
    fn tick(
        controller: &mut Controller,
        observation: &Observation,
        tenants: &[PublishedTenant],
        account: Account,
    ) -> (Charged, Decision) {
        let Followed::Charged(charged) = controller.follow(observation, tenants) else {
            panic!("quiet at {observation:?}");
        };
        let decision = controller.decide(charged.clone(), account);
        (charged, decision)
    }

    #[test]
    fn a_tenant_alone_is_entitled_to_its_limit_and_its_gate_follows_its_credit() {
        // (settings, rate)
        let rates: &[(ComputeSettings, f64)] = &[
            (settings(None, Some(300), None), 0.3),
            (settings(Some(500), Some(200), None), 0.2),
            (settings(Some(250), None, None), 1.0),
            (settings(None, None, None), 1.0),
        ];
        for &(own, rate) in rates {
            let mut controller = Controller::new(name("own"));
            let observation = Observation {
                settings: own,
                ..observed(T0, true, 0, Some(0))
            };
            let alone = [tenant("own", own, 0, &[(0, Activity::default())])];
            let (charged, decision) = tick(&mut controller, &observation, &alone, plenty(0));
            assert_eq!(charged.rate, rate, "{own:?}");
            assert_eq!(charged.sharing, 1);
            assert_eq!(charged.publish_settings, Some(own), "published once...");
            assert_eq!(decision.in_flight_cap, UNBOUNDED);
            assert_eq!(decision.next_tick, NextTick::Normal);
            let later = Observation {
                now_ns: T0 + TICK,
                ..observation
            };
            let (charged, _) = tick(&mut controller, &later, &alone, plenty(0));
            assert_eq!(charged.publish_settings, None, "...and not again");
        }
        // (credit, consumed, open): open while credit exceeds what was consumed.
        let gates: &[(u64, u64, bool)] =
            &[(1_000, 999, true), (1_000, 1_000, false), (0, 5_000, false)];
        for &(credit_ns, consumed_ns, open) in gates {
            let mut controller = Controller::new(name("own"));
            let limited = settings(None, Some(300), None);
            let observation = Observation {
                settings: limited,
                ..observed(T0, true, 0, Some(0))
            };
            let alone = [tenant("own", limited, 0, &[(0, Activity::default())])];
            let account = Account {
                credit_ns,
                consumed_ns,
                own_gpu_time_ns: consumed_ns,
            };
            let (_, decision) = tick(&mut controller, &observation, &alone, account);
            assert_eq!(
                decision.open, open,
                "credit {credit_ns}, consumed {consumed_ns}"
            );
            // What it publishes: in flight, holding its turn, a queue of unknown length.
            assert_eq!(decision.publish_activity, Some(seen(T0, "ihq")));
        }
    }

    /// 1 ms kernels every 10 ms under a 30% limit, credit refilled at the rate the
    /// controller gives, GPU time charged as it says: the gate never closes.
    #[test]
    fn a_light_tenant_under_its_limit_is_never_closed() {
        let limited = settings(None, Some(300), None);
        let mut controller = Controller::new(name("own"));
        // Idle until now: its credit has run a burst ahead.
        let (mut credit, mut consumed, mut finished) = (CREDIT.burst_ns, 0u64, 0u64);
        let (mut activity, mut cap) = (Activity::default(), UNBOUNDED);
        for k in 0..4_000u64 {
            let now = T0 + k * TICK;
            let into_period = (k * TICK) % (10 * MS);
            let busy = into_period < MS;
            let done = into_period == MS;
            finished += u64::from(done);
            let observation = Observation {
                settings: limited,
                gate: GateState {
                    in_flight_cap: cap,
                    ..GateState::default()
                },
                ..observed(now, busy, finished, Some(if done { MS } else { 0 }))
            };
            let tenants = [PublishedTenant {
                gpu_time_ns: consumed,
                credit_ns: credit,
                ..tenant("own", limited, 0, &[(0, activity)])
            }];
            let Followed::Charged(charged) = controller.follow(&observation, &tenants) else {
                panic!("tick {k} quiet");
            };
            consumed += charged.charged_ns;
            credit = charged.refilled_credit(credit, consumed, TICK);
            let decision = controller.decide(
                charged,
                Account {
                    credit_ns: credit,
                    consumed_ns: consumed,
                    own_gpu_time_ns: consumed,
                },
            );
            assert!(decision.open, "closed at tick {k}");
            assert_eq!(decision.in_flight_cap, UNBOUNDED);
            activity = decision.publish_activity.unwrap_or(activity);
            cap = decision.in_flight_cap;
        }
        assert_eq!(consumed, 200 * MS, "charged its kernels: 10% of 2 s");
    }

    /// A tenant keeps the GPU while another waits for at most `TURNS.max_turn_ns`; then its
    /// gate closes, it lets the one that waited through its turn go first, and starts again
    /// once that one is done.
    #[test]
    fn a_backlogged_tenant_whose_turn_ends_while_another_waits_lets_it_go_first() {
        let shared = settings(Some(500), None, None);
        // (ticks, own work in flight, own launches waiting, rival's activity flags, gate
        // open at every tick, the own activity published last in the phase, if any)
        let phases: &[(u64, bool, bool, &str, bool, Option<&str>)] = &[
            // Its turn, 60 ms long (backlogged after 20 ms busy without a gap).
            (121, true, false, "bw", true, Some("ibh")),
            // Over: it no longer holds a turn, nor counts as waiting.
            (10, true, true, "bw", false, Some("ib")),
            // Drained: after a gap of 2 ms it waits again, behind the rival, which has
            // more credit in hand.
            (10, false, true, "bw", false, Some("bw")),
            // The rival holds the GPU.
            (10, false, true, "ih", false, None),
            // The rival is done: its turn comes.
            (1, false, true, "", true, None),
        ];
        let mut controller = Controller::new(name("own"));
        let (mut k, mut finished, mut activity) = (0u64, 0u64, Activity::default());
        for &(ticks, busy, waiting, rival, open, published) in phases {
            let mut last_published = None;
            for _ in 0..ticks {
                let now = T0 + k * TICK;
                finished += u64::from(busy);
                let observation = Observation {
                    settings: shared,
                    gate: GateState {
                        waiters: waiting,
                        waited_at_ns: if waiting { now } else { 0 },
                        in_flight_cap: UNBOUNDED,
                    },
                    ..observed(now, busy, finished, Some(if busy { TICK } else { 0 }))
                };
                let tenants = [
                    tenant("own", shared, 10 * MS, &[(0, activity)]),
                    tenant("rival", shared, 30 * MS, &[(0, seen(now, rival))]),
                ];
                let (_, decision) = tick(&mut controller, &observation, &tenants, plenty(0));
                assert_eq!(decision.open, open, "tick {k}, rival {rival:?}");
                if let Some(published) = decision.publish_activity {
                    activity = published;
                    last_published = Some(published);
                }
                k += 1;
            }
            let now = T0 + (k - 1) * TICK;
            let want = published.map(|flags| seen(now, flags));
            if want.is_some() {
                assert_eq!(last_published.map(|a| Activity { at_ns: now, ..a }), want);
            }
        }
    }

    /// A tenant below a high-priority one keeps little in flight: none while the high
    /// tenant's work runs, otherwise `YIELD.queue_ns` of its own kernels, at least one.
    #[test]
    fn yielding_to_a_high_priority_tenant_bounds_the_launches_in_flight() {
        let high = settings(None, None, Some(Priority::High));
        let normal = ComputeSettings::default();
        // (own settings, the other's published settings, its quota's ceiling, its
        // activity, own launches waiting, cap, open, next tick)
        let table: &[(
            ComputeSettings,
            ComputeSettings,
            Option<ComputeSettings>,
            &str,
            bool,
            u64,
            bool,
            NextTick,
        )] = &[
            // The high tenant is active, its work not in flight: one launch at a time
            // (its kernels are not measured yet).
            (normal, high, None, "", false, 1, true, NextTick::Fast),
            // Its work runs: nothing starts.
            (normal, high, None, "i", false, 1, false, NextTick::Fast),
            // A launch waits on the bound: the watcher follows it closely (and the tenant,
            // wanting more, is owed its part of the tick: two in flight).
            (normal, high, None, "", true, 2, true, NextTick::Held),
            // High itself beside a busy tenant: unbounded, and it ticks fast.
            (
                high,
                normal,
                None,
                "i",
                false,
                UNBOUNDED,
                true,
                NextTick::Fast,
            ),
            // A tenant whose quota does not give it high priority is not yielded to.
            (
                normal,
                high,
                Some(normal),
                "i",
                false,
                UNBOUNDED,
                true,
                NextTick::Normal,
            ),
            // No high tenant active: nothing to yield to.
            (
                normal,
                normal,
                None,
                "i",
                false,
                UNBOUNDED,
                true,
                NextTick::Normal,
            ),
        ];
        for &(own, other, ceiling, flags, waiting, cap, open, next_tick) in table {
            let mut controller = Controller::new(name("own"));
            let observation = Observation {
                settings: own,
                gate: GateState {
                    waiters: waiting,
                    waited_at_ns: if waiting { T0 } else { 0 },
                    in_flight_cap: UNBOUNDED,
                },
                ..observed(T0, true, 0, Some(0))
            };
            let tenants = [
                tenant("own", own, MS, &[(0, Activity::default())]),
                PublishedTenant {
                    ceiling,
                    ..tenant("other", other, MS, &[(0, seen(T0, flags))])
                },
            ];
            let (_, decision) = tick(&mut controller, &observation, &tenants, plenty(0));
            assert_eq!(
                (decision.in_flight_cap, decision.open, decision.next_tick),
                (cap, open, next_tick),
                "own {own:?}, other {other:?} under {ceiling:?}, {flags:?}, waiting {waiting}"
            );
        }

        // Its kernels take 25 µs: four of them fill the 100 µs it may keep queued.
        let mut controller = Controller::new(name("own"));
        let tenants = [
            tenant("own", normal, MS, &[(0, Activity::default())]),
            tenant("other", high, MS, &[(0, seen(T0, ""))]),
        ];
        let mut caps = Vec::new();
        for (k, finished) in [0, 20, 40].into_iter().enumerate() {
            let now = T0 + k as u64 * TICK;
            let observation = observed(now, true, finished, Some(0));
            let (_, decision) = tick(&mut controller, &observation, &tenants, plenty(0));
            caps.push(decision.in_flight_cap);
        }
        assert_eq!(caps, [1, 2, 4], "none measured, at most 50 µs, 25 µs");
    }

    /// A tenant of 200 µs kernels guaranteed 70% beside an active high-priority tenant
    /// of 30%: while its launches wait and it receives less than 70%, it may queue what it
    /// is owed on top of the bound; once it wants no more, the bound is whole again.
    #[test]
    fn relief_lets_a_tenant_below_its_guaranteed_share_queue_more() {
        let own = settings(Some(700), None, None);
        let high = settings(Some(300), None, Some(Priority::High));
        let tenants = [
            tenant("own", own, MS, &[(0, Activity::default())]),
            tenant("high", high, MS, &[(0, seen(T0, ""))]),
        ];
        let mut controller = Controller::new(name("own"));
        // Its kernels measured: one launch in flight at first, then two per 400 µs tick
        // seen finished with work queued throughout.
        let warm: [(u64, u64); 3] = [(TICK, 0), (TICK, 2), (400_000, 4)];
        let mut now = T0;
        for (elapsed, finished) in warm {
            now += elapsed;
            let observation = Observation {
                settings: own,
                elapsed_ns: elapsed,
                ..observed(now, true, finished, Some(0))
            };
            tick(&mut controller, &observation, &tenants, plenty(0));
        }
        assert_eq!(controller.launch_time.per_launch_ns(), Some(200_000));
        // (received in the tick, its launches waiting, the bound after the tick)
        let table: &[(u64, bool, u64)] = &[
            // Nothing received, 350 µs owed a tick: (100 µs + owed) / 200 µs.
            (0, true, 2),
            (0, true, 4),
            (0, true, 5),
            // Its share received: owed as much as before.
            (350_000, true, 5),
            // More than its share: it catches up.
            (700_000, true, 4),
            (700_000, true, 2),
            // It wants no more than it gets: the bound alone.
            (0, false, 1),
        ];
        let mut own_time = 0;
        for &(received, waiting, cap) in table {
            now += TICK;
            own_time += received;
            let observation = Observation {
                settings: own,
                gate: GateState {
                    waiters: waiting,
                    waited_at_ns: if waiting { now } else { T0 - 50 * MS },
                    in_flight_cap: 1,
                },
                ..observed(now, true, 4, Some(0))
            };
            let (_, decision) = tick(
                &mut controller,
                &observation,
                &tenants,
                Account {
                    credit_ns: 10 * MS,
                    consumed_ns: 0,
                    own_gpu_time_ns: own_time,
                },
            );
            assert_eq!(
                decision.in_flight_cap, cap,
                "received {received}, waiting {waiting}"
            );
            assert!(decision.open);
        }
    }

    /// Streams without a sampled launch yet: half of the tick for each poll that saw work
    /// in flight; once samples count the launches, what they took.
    #[test]
    fn without_samples_the_polled_estimate_is_charged() {
        // (work in flight, launches finished, counted by samples, charged)
        let table: &[(bool, u64, Option<u64>, u64)] = &[
            (true, 0, None, TICK / 2),
            (true, 0, None, TICK),
            (false, 3, None, TICK / 2),
            (false, 3, None, 0),
            // Samples from here: what the launches seen finished took, within the time in
            // flight.
            (true, 3, Some(0), 0),
            (true, 5, Some(300_000), 300_000),
            // Counted at more than the time in flight (1.2 ms left): the rest waits for
            // time in flight to hold it.
            (false, 9, Some(2 * MS), 1_200_000),
            (false, 9, Some(0), 0),
            (true, 9, Some(0), TICK),
        ];
        let mut controller = Controller::new(name("own"));
        let alone = [tenant("own", ComputeSettings::default(), 0, &[])];
        for (k, &(busy, finished, counted, charged)) in table.iter().enumerate() {
            let observation = observed(T0 + k as u64 * TICK, busy, finished, counted);
            let (got, _) = tick(&mut controller, &observation, &alone, plenty(0));
            assert_eq!(got.charged_ns, charged, "tick {k}");
        }
    }

    /// The hardware time-slices between processes with work in flight: each is charged
    /// its part. Only fresh marks count, and never this process's own.
    #[test]
    fn charges_are_divided_among_the_processes_with_work_in_flight() {
        let normal = ComputeSettings::default();
        let stale = T0 - 6 * MS;
        // (own tenant's slots, another tenant's slots, processes sharing)
        let table: &[(&[(u32, Activity)], &[(u32, Activity)], u64)] = &[
            (&[(0, seen(T0, "i"))], &[], 1),
            (&[(0, seen(T0, "i")), (1, seen(T0, "i"))], &[], 2),
            (&[(1, seen(T0, "i"))], &[(0, seen(T0, "i"))], 3),
            (
                &[(1, seen(T0, "i"))],
                &[(0, seen(T0, "i")), (1, seen(T0, "i"))],
                4,
            ),
            (&[], &[(0, seen(stale, "i"))], 1),
            (&[], &[(0, seen(T0, "bw"))], 1),
        ];
        for &(own, other, sharing) in table {
            let mut controller = Controller::new(name("own"));
            let tenants = [
                tenant("own", normal, 0, own),
                tenant("other", normal, 0, other),
            ];
            // Busy at both polls: the whole tick, split.
            controller.busy = true;
            let observation = observed(T0, true, 0, None);
            let (charged, _) = tick(&mut controller, &observation, &tenants, plenty(0));
            assert_eq!(
                (charged.sharing, charged.charged_ns),
                (sharing, TICK / sharing),
                "own {own:?}, other {other:?}"
            );
        }
    }

    #[test]
    fn quiet_ticks_charge_nothing_and_forget_what_the_process_received_once() {
        let mut controller = Controller::new(name("own"));
        let idle = observed(T0, false, 0, Some(0));
        assert!(controller.quiet(&idle));
        assert_eq!(
            controller.follow(&idle, &[]),
            Followed::Quiet { forgot: false }
        );
        let alone = [tenant("own", ComputeSettings::default(), 0, &[])];
        let busy = observed(T0 + TICK, true, 0, Some(0));
        tick(&mut controller, &busy, &alone, plenty(0));
        // Active for 50 ms after its work: not quiet until then.
        let after = |ms: u64, finished| observed(T0 + TICK + ms * MS, false, finished, Some(0));
        assert!(!controller.quiet(&after(1, 1)), "a launch finished");
        tick(&mut controller, &after(1, 1), &alone, plenty(0));
        tick(&mut controller, &after(52, 1), &alone, plenty(0));
        assert!(controller.quiet(&after(53, 1)));
        let waiting = Observation {
            gate: GateState {
                waiters: true,
                ..GateState::default()
            },
            ..after(53, 1)
        };
        assert!(!controller.quiet(&waiting), "a launch waits");
        assert_eq!(
            controller.follow(&after(53, 1), &alone),
            Followed::Quiet { forgot: true }
        );
        assert_eq!(
            controller.follow(&after(54, 1), &alone),
            Followed::Quiet { forgot: false }
        );
    }
}
