use super::*;
use gpuslice_ledger::{GpuUuid, Ledger, TenantName};

const MIB: u64 = 1 << 20;

/// A policy with a 1 GiB limit over a fresh ledger, and its GPU.
fn policy() -> (tempfile::TempDir, MemoryPolicy, Gpu) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let usage = ledger.open_usage(&TenantName::new("t").unwrap()).unwrap();
    let policy = MemoryPolicy::new(usage, None, Some(1024 * MIB));
    let gpu = policy.gpu(GpuUuid([1; 16])).unwrap();
    (dir, policy, gpu)
}

/// Settles `pool` at once (ticket, reading, settle), as a thread alone would.
fn settle_now<'a>(
    pool: &PoolCharge,
    reserved: u64,
    reservation: Option<Reservation<'a>>,
    memory: &MemoryPolicy,
) -> Settled<'a> {
    let ticket = pool.ticket();
    pool.settle(ticket, reserved, reservation, memory)
}

#[test]
fn growth_is_paid_by_the_reservation_first() {
    assert_eq!(
        settlement(100, 164, 64),
        Settlement {
            kept: 64,
            unused: 0,
            beyond: 0,
            shrunk: 0
        }
    );
    // Served from idle memory: the whole reservation goes back.
    assert_eq!(
        settlement(100, 100, 64),
        Settlement {
            kept: 0,
            unused: 64,
            beyond: 0,
            shrunk: 0
        }
    );
    // Grown by a whole step of the pool: the rest is charged beyond the reservation.
    assert_eq!(
        settlement(0, 2 * MIB, MIB),
        Settlement {
            kept: MIB,
            unused: 0,
            beyond: MIB,
            shrunk: 0
        }
    );
    // The pool released memory since it was charged (a synchronization, a trim).
    assert_eq!(
        settlement(300, 100, 64),
        Settlement {
            kept: 0,
            unused: 64,
            beyond: 0,
            shrunk: 200
        }
    );
}

#[test]
fn a_pool_is_charged_what_it_holds() {
    let (_dir, memory, gpu) = policy();
    let pools = PoolCharges::new();
    let pool = pools.charge_of(7, &gpu);
    // 100 MiB asked; the pool grew by 100 MiB.
    let reservation = memory.reserve(&gpu, 100 * MIB).unwrap();
    settle_now(&pool, 100 * MIB, Some(reservation), &memory);
    assert_eq!(
        (pool.charged(), memory.used_now(gpu.index)),
        (100 * MIB, 100 * MIB)
    );
    // 50 MiB asked, served from idle memory: nothing more charged.
    let reservation = memory.reserve(&gpu, 50 * MIB).unwrap();
    settle_now(&pool, 100 * MIB, Some(reservation), &memory);
    assert_eq!(memory.used_now(gpu.index), 100 * MIB);
    // 1 MiB asked; the pool grew by 2 MiB.
    let reservation = memory.reserve(&gpu, MIB).unwrap();
    settle_now(&pool, 102 * MIB, Some(reservation), &memory);
    assert_eq!(
        (pool.charged(), memory.used_now(gpu.index)),
        (102 * MIB, 102 * MIB)
    );
    // A synchronization released 60 MiB; a refresh sees it.
    assert!(matches!(
        settle_now(&pool, 42 * MIB, None, &memory),
        Settled::Applied { went_down: true }
    ));
    assert_eq!(
        (pool.charged(), memory.used_now(gpu.index)),
        (42 * MIB, 42 * MIB)
    );
}

#[test]
fn growth_beyond_the_reservation_is_charged_even_past_the_limit() {
    let (_dir, memory, gpu) = policy();
    let pools = PoolCharges::new();
    let pool = pools.charge_of(7, &gpu);
    let reservation = memory.reserve(&gpu, 1023 * MIB).unwrap();
    settle_now(&pool, 1024 * MIB + MIB, Some(reservation), &memory);
    assert_eq!(
        memory.used_now(gpu.index),
        1025 * MIB,
        "the GPU holds it either way: the ledger never counts less"
    );
    assert!(memory.reserve(&gpu, MIB).is_err());
}

#[test]
fn a_reservation_on_another_gpu_is_given_back_whole() {
    let (_dir, memory, gpu) = policy();
    let other = memory.gpu(GpuUuid([2; 16])).unwrap();
    let pools = PoolCharges::new();
    let pool = pools.charge_of(7, &gpu);
    let reservation = memory.reserve(&other, 64 * MIB).unwrap();
    settle_now(&pool, 64 * MIB, Some(reservation), &memory);
    assert_eq!(memory.used_now(other.index), 0);
    assert_eq!(memory.used_now(gpu.index), 64 * MIB);
}

/// The hole a lock across the driver's reading closed, closed by tickets: thread A read
/// the pool (100 MiB) before thread B's allocation grew it to 200 MiB; B's reading came
/// back and was applied first. A's, applied after it, would take the charge back to
/// 100 MiB while the pool holds 200.
#[test]
fn an_older_reading_settled_after_a_newer_one_cannot_lower_the_charge() {
    let (_dir, memory, gpu) = policy();
    let pool = PoolCharges::new().charge_of(7, &gpu);
    let a = memory.reserve(&gpu, 100 * MIB).unwrap();
    let a_ticket = pool.ticket();
    let a_reading = 100 * MIB;
    let b = memory.reserve(&gpu, 100 * MIB).unwrap();
    let b_ticket = pool.ticket();
    assert!(matches!(
        pool.settle(b_ticket, 200 * MIB, Some(b), &memory),
        Settled::Applied { went_down: false }
    ));
    assert_eq!(
        memory.used_now(gpu.index),
        300 * MIB,
        "A's growth charged beyond B's reservation, A's reservation still held"
    );
    assert!(matches!(
        pool.settle(a_ticket, a_reading, Some(a), &memory),
        Settled::Superseded
    ));
    assert_eq!(pool.charged(), 200 * MIB);
    assert_eq!(
        memory.used_now(gpu.index),
        200 * MIB,
        "A's reservation went back: nothing counted twice"
    );
}

#[test]
fn a_look_superseded_by_a_later_one_changes_nothing() {
    let (_dir, memory, gpu) = policy();
    let pool = PoolCharges::new().charge_of(7, &gpu);
    settle_now(
        &pool,
        64 * MIB,
        Some(memory.reserve(&gpu, 64 * MIB).unwrap()),
        &memory,
    );
    // Two looks at once; the later one (the pool gave everything back) comes back first.
    let (older, newer) = (pool.ticket(), pool.ticket());
    assert!(matches!(
        pool.settle(newer, 0, None, &memory),
        Settled::Applied { went_down: true }
    ));
    assert!(matches!(
        pool.settle(older, 64 * MIB, None, &memory),
        Settled::Superseded
    ));
    assert_eq!((pool.charged(), memory.used_now(gpu.index)), (0, 0));
}

#[test]
fn a_destroyed_pool_keeps_the_charge_of_what_it_held_and_frees_its_handle() {
    let (_dir, memory, gpu) = policy();
    let pools = PoolCharges::new();
    pools.created(7, PoolHome::Gpu(gpu));
    let pool = pools.charge_of(7, &gpu);
    let reservation = memory.reserve(&gpu, 64 * MIB).unwrap();
    settle_now(&pool, 64 * MIB, Some(reservation), &memory);
    pools.destroyed(7);
    assert_eq!(pools.orphaned_on(gpu.index), 64 * MIB);
    assert_eq!(memory.used_now(gpu.index), 64 * MIB);
    assert!(pools.existing(7).is_none() && pools.home(7).is_none());
    assert!(pools.on_gpu(gpu.index).is_empty());
    assert!(pool.is_destroyed());
    // The handle reused for a new pool starts from nothing.
    assert_eq!(pools.charge_of(7, &gpu).charged(), 0);
}

/// A settle of a destroyed pool by a thread that found it before the destroy (a refresh,
/// an allocation racing the destroy) changes nothing: the orphan's charge is what the
/// pool was charged when it was closed, and the ledger still holds exactly that.
#[test]
fn a_settle_after_the_destroy_cannot_change_what_the_destroyed_pool_keeps() {
    let (_dir, memory, gpu) = policy();
    let pools = PoolCharges::new();
    let pool = pools.charge_of(7, &gpu);
    settle_now(
        &pool,
        64 * MIB,
        Some(memory.reserve(&gpu, 64 * MIB).unwrap()),
        &memory,
    );
    let late = pool.ticket();
    pools.destroyed(7);
    assert!(matches!(
        pool.settle(late, 0, None, &memory),
        Settled::Destroyed(None)
    ));
    let reservation = memory.reserve(&gpu, 8 * MIB).unwrap();
    let Settled::Destroyed(Some(returned)) =
        settle_now(&pool, 72 * MIB, Some(reservation), &memory)
    else {
        panic!("a destroyed pool hands the reservation back");
    };
    assert_eq!(returned.commit().bytes, 8 * MIB);
    assert_eq!(pools.orphaned_on(gpu.index), 64 * MIB);
    assert_eq!(memory.used_now(gpu.index), 72 * MIB);
    pools.destroyed(7);
    assert_eq!(pools.orphaned_on(gpu.index), 64 * MIB, "closed once");
}

#[test]
fn pools_are_listed_by_gpu_and_host_pools_are_told_apart() {
    let (_dir, memory, gpu) = policy();
    let other = memory.gpu(GpuUuid([2; 16])).unwrap();
    let pools = PoolCharges::new();
    pools.created(1, PoolHome::Host);
    pools.created(2, PoolHome::Gpu(other));
    assert_eq!(pools.home(1), Some(PoolHome::Host));
    assert_eq!(
        pools.home(3),
        None,
        "a default pool was never created by the program"
    );
    pools.charge_of(2, &other);
    pools.charge_of(3, &gpu);
    let on = |gpu: &Gpu| -> Vec<u64> {
        let mut handles: Vec<u64> = pools
            .on_gpu(gpu.index)
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        handles.sort_unstable();
        handles
    };
    assert_eq!(on(&gpu), [3]);
    assert_eq!(on(&other), [2]);
}

/// Allocations from one pool and looks at it (refreshes), their steps interleaved in any
/// order, with the pool giving memory back in between: at every step the ledger counts at
/// least what the pool holds, less the growth beyond their reservations of allocations
/// not yet settled; once everything settled and the pool is looked at once more, the pool's
/// charge and the ledger are exactly what the pool holds (no reservation leaked, nothing
/// counted twice).
mod interleaved {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Event {
        /// Advance the call of that number (modulo the calls) by one step.
        Step(usize),
        /// The pool gives back this many MiB (a synchronization, a trim).
        Shrink(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0usize..16).prop_map(Event::Step),
            1 => (1u64..8).prop_map(Event::Shrink),
        ]
    }

    /// An allocation (`bytes` reserved, the pool growing by `growth`) or a look (`None`).
    #[derive(Clone, Copy, Debug)]
    struct Call {
        alloc: Option<(u64, u64)>,
    }

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            1 => Just(Call { alloc: None }),
            3 => (1u64..8, 0usize..3).prop_map(|(bytes, how)| {
                // Served from idle memory, grown by the request, or by a larger step.
                let growth = [0, bytes, bytes + 2][how];
                Call { alloc: Some((bytes * MIB, growth * MIB)) }
            }),
        ]
    }

    /// Where a call is: 0 reserve, 1 the driver's call, 2 ticket, 3 reading, 4 settle,
    /// 5 done. A look starts at 2.
    struct Running<'a> {
        call: Call,
        stage: u8,
        reservation: Option<Reservation<'a>>,
        ticket: Option<Ticket>,
        reading: u64,
    }

    struct World<'a> {
        memory: &'a MemoryPolicy,
        pool: PoolCharge,
        /// What the pool holds, as the driver would say.
        held: u64,
    }

    impl<'a> World<'a> {
        fn step(&mut self, running: &mut Running<'a>) {
            match running.stage {
                0 => {
                    if let Some((bytes, _)) = running.call.alloc {
                        let Ok(reservation) = self.memory.reserve(&self.pool.gpu, bytes) else {
                            running.stage = 5;
                            return;
                        };
                        running.reservation = Some(reservation);
                    }
                }
                1 => self.held += running.call.alloc.map_or(0, |(_, growth)| growth),
                2 => running.ticket = Some(self.pool.ticket()),
                3 => running.reading = self.held,
                4 => {
                    if let Some(ticket) = running.ticket {
                        let reservation = running.reservation.take();
                        let settled =
                            self.pool
                                .settle(ticket, running.reading, reservation, self.memory);
                        assert!(!matches!(settled, Settled::Destroyed(_)));
                    }
                }
                _ => return,
            }
            running.stage += 1;
        }

        /// Growth beyond its reservation of each allocation that grew the pool and is not
        /// settled yet: what the ledger may lack for now.
        fn unsettled_beyond(&self, calls: &[Running<'_>]) -> u64 {
            calls
                .iter()
                .filter(|running| (2..=4).contains(&running.stage))
                .filter_map(|running| running.call.alloc)
                .map(|(bytes, growth)| growth.saturating_sub(bytes))
                .sum()
        }
    }

    proptest! {
        #[test]
        fn any_interleaving_settles_to_what_the_pool_holds(
            calls in proptest::collection::vec(call(), 1..8),
            events in proptest::collection::vec(event(), 0..80),
        ) {
            let (_dir, memory, gpu) = policy();
            let mut world = World { memory: &memory, pool: PoolCharge::new(gpu), held: 0 };
            let mut running: Vec<Running<'_>> = calls
                .iter()
                .map(|&call| Running {
                    call,
                    stage: if call.alloc.is_some() { 0 } else { 2 },
                    reservation: None,
                    ticket: None,
                    reading: 0,
                })
                .collect();
            let count = running.len();
            for event in events {
                match event {
                    Event::Step(i) => world.step(&mut running[i % count]),
                    Event::Shrink(mib) => world.held = world.held.saturating_sub(mib * MIB),
                }
                let floor = world.held.saturating_sub(world.unsettled_beyond(&running));
                prop_assert!(
                    memory.used_now(gpu.index) >= floor,
                    "the ledger counts {} while the pool holds {}", memory.used_now(gpu.index), world.held
                );
            }
            for call in &mut running {
                while call.stage < 5 {
                    world.step(call);
                }
            }
            let ticket = world.pool.ticket();
            world.pool.settle(ticket, world.held, None, &memory);
            prop_assert_eq!(world.pool.charged(), world.held);
            prop_assert_eq!(memory.used_now(gpu.index), world.held);
        }
    }
}
