//! The watcher: one thread per enforcing process that measures the GPU time the process
//! receives and keeps its launch gates, so that launches themselves only mark a stream.
//!
//! Three parts, one concern each:
//! - the polls (`watcher/poll.rs`): the only part that calls CUDA; each tick it finds, per
//!   GPU, whether the process has work in flight, how many launches finished and what they
//!   took;
//! - the controller (`policy::controller`, one per GPU): from what the poll found, the
//!   gate's state, the process's settings and every tenant's published records, it decides
//!   what to charge, the rate to refill credit at, the gate, the activity to publish and
//!   when the next tick comes, with no CUDA, no clock and no file of its own;
//! - this loop: it sleeps until the tick the controller asked for (sooner when a launch
//!   starts to wait for one of its few launches in flight), polls, reads every tenant's
//!   records ([`Neighbours`]), and applies the decisions: it charges the process and
//!   refills the credit in the tenant's usage file, sets the gates, publishes what the
//!   process does, and writes the trace (`GPUSLICE_TRACE`).
//!
//! It never blocks a launch itself, and it stops (opening every gate) when the process
//! exits, before the driver is torn down.

mod poll;

use std::cell::Cell;

use gpuslice_ledger::{GpuIndex, GpuUuid, Ledger, MAX_GPUS, TenantName, monotonic_ns};

use crate::gate::GpuGate;
use crate::log::{Level, log};
use crate::neighbours::{Neighbours, Quota, Tenant};
use crate::policy::controller::{
    Account, Controller, Followed, GateState, NextTick, Observation, REFILL_NS,
};
use crate::policy::standing::{PublishedSlot, PublishedTenant};
use crate::shim::Shim;
use crate::trace::{Outcome, Refill, TickRecord, Trace};
use poll::Poller;

/// Starts the watcher of `shim` (once per process; again in a forked child). Without it
/// nothing would measure the tenant's work or close a gate: if it cannot start, or fails,
/// the gates break and launches are refused rather than let through past the tenant's
/// limits (a tenant could otherwise escape them by making the thread's creation fail, with
/// a process limit of its own).
pub fn start(shim: &'static Shim) {
    let ledger = match Ledger::open(shim.ledger_dir()) {
        Ok(ledger) => ledger,
        Err(error) => {
            shim.gates.fail_closed();
            log!(
                Level::Error,
                "cannot start the compute watcher ({error}); launches are refused"
            );
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
            if outcome.is_err() {
                shim.gates.fail_closed();
                log!(
                    Level::Error,
                    "the compute watcher failed; launches are refused from now on"
                );
            } else {
                // Its polls were stopped at exit: the process is ending.
                shim.gates.open_all();
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
            shim.gates.fail_closed();
            log!(
                Level::Error,
                "cannot start the compute watcher ({error}); launches are refused"
            );
        }
    }
}

/// At exit, before the driver's own teardown: no more CUDA calls from the watcher (a poll
/// in progress ends first; none starts after).
extern "C" fn stop_at_exit() {
    crate::runtime::without_unwinding("the exit handler", || {
        if let crate::runtime::Mode::Enforcing(shim) = crate::runtime::current_mode() {
            shim.gates.stop_polls();
        }
    });
}

struct Watcher {
    shim: &'static Shim,
    neighbours: Neighbours,
    poller: Poller,
    /// One controller per GPU, and the GPU's UUID once the tenant's usage file has it.
    controllers: Vec<Controller>,
    uuids: [Option<GpuUuid>; MAX_GPUS],
    last_tick_ns: u64,
    /// How soon the next tick comes: the soonest any GPU's controller asked for.
    next_tick: NextTick,
    /// `GPUSLICE_TRACE`, when set and writable.
    trace: Option<Trace>,
    /// When the trace was last flushed.
    trace_flushed_ns: u64,
}

/// How often the trace is flushed: a process's exit can lose at most this much of it.
const TRACE_FLUSH_NS: u64 = 100_000_000;

impl Watcher {
    fn new(shim: &'static Shim, neighbours: Neighbours) -> Watcher {
        Watcher {
            shim,
            neighbours,
            poller: Poller::new(),
            controllers: (0..MAX_GPUS)
                .map(|_| Controller::new(shim.tenant().clone()))
                .collect(),
            uuids: [None; MAX_GPUS],
            last_tick_ns: monotonic_ns(),
            next_tick: NextTick::Normal,
            trace: shim
                .trace_path()
                .and_then(|path| Trace::open(path, shim.tenant())),
            trace_flushed_ns: 0,
        }
    }

    fn run(&mut self) {
        precise_sleeps();
        let bell = self.shim.gates.bell();
        let mut seen = bell.rung();
        while !self.shim.gates.polls_stopped() {
            bell.sleep(seen, self.next_tick.duration());
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
        self.next_tick = NextTick::Normal;
        let poll_start = monotonic_ns();
        let busy = if shim.gates.start_poll() {
            let busy = self.poller.poll_streams(shim);
            shim.gates.end_poll();
            busy
        } else {
            // A capture is open: keep the last answer.
            std::array::from_fn(|g| self.controllers[g].busy())
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
            if self.uuids[g].is_none() {
                self.uuids[g] = shim
                    .memory
                    .usage()
                    .gpus()
                    .into_iter()
                    .find(|(i, _)| *i == gpu)
                    .map(|(_, u)| u);
            }
            let Some(uuid) = self.uuids[g] else {
                continue;
            };
            let observation = Observation {
                now_ns: now,
                elapsed_ns: elapsed,
                slot: slot.index(),
                poll: self.poller.observed(g, busy_now),
                gate: gate_state(gate),
                settings: shim.compute_settings(&uuid),
            };
            let controller = &mut self.controllers[g];
            // A quiet tick reads no tenant's records: copy them only for the others.
            let published = if controller.quiet(&observation) {
                Vec::new()
            } else {
                published_on(&tenants, &uuid)
            };

            // 1. What to charge, and the rate the tenant is entitled to.
            let charged = match controller.follow(&observation, &published) {
                Followed::Quiet { forgot } => {
                    if forgot && let Some(trace) = &mut self.trace {
                        trace.record(&TickRecord {
                            gpu: index,
                            poll_ns,
                            observation,
                            tenants: published,
                            outcome: None,
                        });
                    }
                    continue;
                }
                Followed::Charged(charged) => charged,
            };
            self.poller.followed(g, charged.sharing);
            if let Some(settings) = charged.publish_settings {
                slot.publish_compute(gpu, settings);
            }
            if charged.charged_ns > 0 {
                slot.add_gpu_time(gpu, charged.charged_ns);
            }

            // 2. The tenant's credit, refilled at that rate: the gate is decided on the
            // credit and consumption of every process of the tenant, this tick's charge
            // included, which only the usage file holds.
            let usage = shim.memory.usage();
            let consumed = usage.gpu_time_ns(gpu);
            let refill = Cell::new(None);
            usage.refill_credit(gpu, now, REFILL_NS, |credit, dt| {
                let refilled_ns = charged.refilled_credit(credit, consumed, dt);
                refill.set(Some(Refill {
                    credit_ns: credit,
                    consumed_ns: consumed,
                    elapsed_ns: dt,
                    refilled_ns,
                }));
                refilled_ns
            });
            let account = Account {
                credit_ns: usage.credit_ns(gpu),
                consumed_ns: usage.gpu_time_ns(gpu),
                own_gpu_time_ns: slot.gpu_time_ns(gpu),
            };
            let (charged_ns, rate, sharing, published_settings) = (
                charged.charged_ns,
                charged.rate,
                charged.sharing,
                charged.publish_settings.is_some(),
            );

            // 3. The gate, and what the process does.
            let decision = controller.decide(charged, account);
            gate.set(decision.open, decision.in_flight_cap);
            if let Some(trace) = &mut self.trace {
                trace.record(&TickRecord {
                    gpu: index,
                    poll_ns,
                    observation,
                    tenants: published,
                    outcome: Some(Outcome {
                        charged_ns,
                        rate,
                        sharing,
                        published_settings,
                        refill: refill.get(),
                        account,
                        decision,
                    }),
                });
            }
            self.next_tick = self.next_tick.max(decision.next_tick);
            if let Some(activity) = decision.publish_activity {
                slot.set_activity(gpu, activity);
            }
        }
    }
}

/// The gate's state, for the controller.
fn gate_state(gate: &GpuGate) -> GateState {
    GateState {
        waiters: gate.has_waiters(),
        waited_at_ns: gate.waited_at_ns(),
        in_flight_cap: gate.in_flight_cap(),
    }
}

/// Every tenant's records on `uuid` as the controller reads them (tenants without the GPU
/// left out).
fn published_on(tenants: &[Tenant], uuid: &GpuUuid) -> Vec<PublishedTenant> {
    tenants
        .iter()
        .filter_map(|tenant| {
            let gpu = tenant.usage.gpu_index(uuid)?;
            Some(PublishedTenant {
                name: TenantName::clone(&tenant.name),
                gpu_time_ns: tenant.usage.gpu_time_ns(gpu),
                credit_ns: tenant.usage.credit_ns(gpu),
                ceiling: match &tenant.quota {
                    Quota::File(quota) => Some(quota.limits_for(uuid).compute()),
                    Quota::Unreadable => Some(gpuslice_ledger::ComputeSettings::default()),
                    Quota::Missing => None,
                },
                slots: tenant
                    .usage
                    .compute_slots(gpu)
                    .into_iter()
                    .map(|s| PublishedSlot {
                        index: s.index,
                        settings: s.settings,
                        activity: s.activity,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Makes the watcher's sleeps as long as asked: the default timer slack (50 µs) would double
/// a fast tick.
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain number and only affects the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) } != 0 {
        log!(Level::Debug, "cannot shorten the watcher's timer slack");
    }
}
