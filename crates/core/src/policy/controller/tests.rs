//! The controller's table tests: sequences of ticks, each with what the watcher would see,
//! and what the controller must decide. No clock, no threads: time is in the observations.

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

fn settings(share: Option<u32>, limit: Option<u32>, priority: Option<Priority>) -> ComputeSettings {
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
            ..Poll::default()
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
    type Phase = (u64, bool, bool, &'static str, bool, Option<&'static str>);
    let phases: &[Phase] = &[
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
    use NextTick::{Fast, Held, Normal};
    let (high, normal) = (
        settings(None, None, Some(Priority::High)),
        ComputeSettings::default(),
    );
    let (h, n, u) = (high, normal, UNBOUNDED);
    // (own settings, the other's published settings, its quota's ceiling, its
    // activity, own launches waiting; the bound, open, the next tick)
    type Row = (
        ComputeSettings,
        ComputeSettings,
        Option<ComputeSettings>,
        &'static str,
        bool,
        u64,
        bool,
        NextTick,
    );
    let table: &[Row] = &[
        // The high tenant is active, its work not in flight: one launch at a time
        // (its kernels are not measured yet).
        (n, h, None, "", false, 1, true, Fast),
        // Its long work runs: nothing starts.
        (n, h, None, "iq", false, 1, false, Fast),
        // Its short work runs (a launch-bound server's, kernels shorter than the bound):
        // the GPU's gaps between them are filled, one launch at a time.
        (n, h, None, "i", false, 1, true, Fast),
        // A launch waits on the bound: the watcher follows it closely (and the tenant,
        // wanting more, is owed its part of the tick: two in flight).
        (n, h, None, "", true, 2, true, Held),
        // High itself beside a busy tenant: unbounded, and it ticks fast.
        (h, n, None, "i", false, u, true, Fast),
        // Or beside one whose launches wait: it learns when the high tenant's work comes
        // from the times it publishes (`policy::arrivals`).
        (h, n, None, "b", false, u, true, Fast),
        // A tenant whose quota does not give it high priority is not yielded to.
        (n, h, Some(n), "i", false, u, true, Normal),
        // No high tenant active: nothing to yield to.
        (n, n, None, "i", false, u, true, Normal),
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

/// A tenant of 200 µs kernels beside a high-priority tenant whose short bursts come every
/// 2 ms: until it has seen four regular gaps it fills the GPU beside them as beside any
/// short work; from then on it starts nothing that would run when the next is due, nor
/// beside it, and goes on once it is over.
#[test]
fn a_tenant_starts_nothing_that_would_run_when_a_regular_high_priority_burst_is_due() {
    const FAST: u64 = 50_000;
    let (high, normal) = (
        settings(None, None, Some(Priority::High)),
        ComputeSettings::default(),
    );
    let mut controller = Controller::new(name("own"));
    // The high tenant's bursts: 50 µs each, 2 ms apart, published at both ends.
    let published = |now: u64| {
        let since = now - T0;
        let start = T0 + since / (2 * MS) * 2 * MS;
        let activity = if now < start + FAST {
            seen(start, "i")
        } else {
            seen(start + FAST, "")
        };
        [
            tenant("own", normal, MS, &[(0, Activity::default())]),
            tenant("other", high, MS, &[(0, activity)]),
        ]
    };
    let mut decisions = Vec::new();
    for k in 0..240 {
        let now = T0 + k * FAST;
        // One launch of its own in flight throughout, one finished every 200 µs, except
        // at the ticks where the test looks at an empty queue.
        let busy = k == 0 || !now.is_multiple_of(2 * MS);
        let observation = Observation {
            elapsed_ns: FAST,
            poll: Poll {
                unfinished: u64::from(busy),
                ..observed(now, busy, k / 4, Some(0)).poll
            },
            ..observed(now, busy, k / 4, Some(0))
        };
        let (_, decision) = tick(&mut controller, &observation, &published(now), plenty(0));
        decisions.push((now - T0, decision.open, decision.in_flight_cap));
    }
    let at = |us: u64| {
        decisions
            .iter()
            .find(|d| d.0 == us * 1_000)
            .map(|d| (d.1, d.2))
            .unwrap()
    };
    // Three gaps seen: a burst in flight is short work, filled beside.
    assert_eq!(at(6_000), (true, 1), "at 6 ms");
    // Four: the next burst is due at 10 ms.
    assert_eq!(at(9_000), (true, 1), "at 9 ms, room for more than one");
    assert_eq!(at(10_000), (false, 1), "at 10 ms, the burst in flight");
    // Over: it goes on.
    assert_eq!(at(10_100), (true, 1), "at 10.1 ms");
    // Between 9.65 and 10 ms nothing new may start: the one in flight is all it keeps.
    for &(t, open, cap) in &decisions {
        if (9_650_000..10_000_000).contains(&t) {
            assert!(cap <= 1, "at {t} ns: {open} {cap}");
        }
    }
}

/// A tenant of 200 µs kernels guaranteed 70% beside an active high-priority tenant
/// of 30%: while its launches wait and it receives less than 70%, it may queue what it
/// is owed on top of the bound; once it wants no more, the bound is whole again.
/// A high-priority tenant's queue is long, for the tenants yielding to it, once it holds
/// more than they may keep queued beside it (100 µs): until then they fill the gaps
/// between its short work. Any other tenant's queue is long beyond a handover (1 ms).
#[test]
fn a_high_priority_tenants_queue_is_long_beyond_what_others_may_queue_beside_it() {
    let (high, normal) = (
        settings(None, None, Some(Priority::High)),
        ComputeSettings::default(),
    );
    // (own settings, launches unfinished of 20 µs each; published as long)
    let table: &[(ComputeSettings, u64, bool)] = &[
        (high, 4, false),
        (high, 6, true),
        (high, 40, true),
        (normal, 6, false),
        (normal, 40, false),
        (normal, 60, true),
    ];
    for &(own, unfinished, long) in table {
        let mut controller = Controller::new(name("own"));
        let others = [tenant("other", normal, MS, &[(0, seen(T0, "i"))])];
        let mut published = None;
        // 25 launches finish in each 500 µs tick of a busy queue: 20 µs each.
        for k in 0..4u64 {
            let observation = Observation {
                settings: own,
                poll: Poll {
                    unfinished,
                    ..observed(T0 + k * TICK, true, 25 * k, Some(0)).poll
                },
                ..observed(T0 + k * TICK, true, 25 * k, Some(0))
            };
            let tenants = [
                tenant("own", own, MS, &[(0, Activity::default())]),
                others[0].clone(),
            ];
            let (_, decision) = tick(&mut controller, &observation, &tenants, plenty(0));
            published = decision.publish_activity.or(published);
        }
        assert_eq!(
            published.map(|a| a.long_queue),
            Some(long),
            "{own:?} with {unfinished} launches of 20 µs unfinished"
        );
    }
}

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
    // Relief follows the polled estimate of what it received (half a tick for each poll
    // that saw its work in flight): (work in flight at this poll, its launches waiting,
    // the bound after the tick).
    let table: &[(bool, bool, u64)] = &[
        // Nothing in flight: at most half a tick received, 100 µs owed a tick, then 350.
        (false, true, 1),
        (false, true, 2),
        (false, true, 4),
        // In flight from this poll: half a tick received, 100 µs more owed.
        (true, true, 5),
        // In flight throughout: a whole tick received, more than its 350 µs: it catches up.
        (true, true, 4),
        (true, true, 3),
        // It wants no more than it gets: the bound alone.
        (true, false, 1),
    ];
    for &(busy, waiting, cap) in table {
        now += TICK;
        let observation = Observation {
            settings: own,
            gate: GateState {
                waiters: waiting,
                waited_at_ns: if waiting { now } else { T0 - 50 * MS },
                in_flight_cap: 1,
            },
            ..observed(now, busy, 4, Some(0))
        };
        let (_, decision) = tick(&mut controller, &observation, &tenants, plenty(0));
        assert_eq!(
            decision.in_flight_cap, cap,
            "in flight {busy}, waiting {waiting}"
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
    // A mark counts for `FRESH_NS` (5 ms) after it was written.
    let (fresh, stale) = (T0 - 4_900_000, T0 - 5_100_000);
    // (own tenant's slots, another tenant's slots, processes sharing)
    type Slots<'a> = &'a [(u32, Activity)];
    let table: &[(Slots, Slots, u64)] = &[
        (&[(0, seen(T0, "i"))], &[], 1),
        (&[(0, seen(T0, "i")), (1, seen(T0, "i"))], &[], 2),
        (&[(1, seen(T0, "i"))], &[(0, seen(T0, "i"))], 3),
        (
            &[(1, seen(T0, "i"))],
            &[(0, seen(T0, "i")), (1, seen(T0, "i"))],
            4,
        ),
        (&[], &[(0, seen(fresh, "i"))], 2),
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
