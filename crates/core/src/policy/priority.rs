//! Priority: how much work a tenant keeps queued on a GPU while a high-priority tenant is
//! active there.
//!
//! A GPU runs the kernels already queued before it turns to another process's, so a
//! high-priority request waits for whatever its neighbours have in flight. Bounding that by
//! a number of launches is wrong both ways: one 1.6 ms matmul is a long wait, and one 25 µs
//! matmul at a time leaves the GPU idle between the neighbour's launches. So the bound is a
//! time: the neighbour keeps as many launches in flight as its kernels take to fill
//! [`Yield::queue_ns`], judged by the time its kernels have been taking, and always at least
//! one (it must make progress); and while the high-priority tenant's long work is in flight
//! it starts nothing, since new work would share the GPU with that work for as long as it
//! lasts. Its short work (no more than the neighbour's own bound: a launch-bound inference
//! server's kernel or two) the neighbour's work delays by about as much as it would have
//! waited anyway, so beside that the neighbour fills the GPU's gaps; once the high tenant's
//! work backs up behind the neighbour's, its queue is long and the neighbour stops.
//!
//! The bound buys latency with the neighbour's GPU time: between two of its launches the
//! GPU waits for its watcher to see the first finish, and at the end of the high-priority
//! tenant's work it waits for the neighbour's watcher to see that end. A share is a
//! guarantee, and latency must not take it away. So a yielding tenant that wants more than
//! it gets keeps count of the GPU time it is owed ([`Relief`]): what its guaranteed share of
//! the time since would have given it, less what it received. What it is owed it may keep
//! queued on top of the bound, so that the more the bound has cost it, the less it yields;
//! once it has caught up, the bound is whole again. Queued work costs a high-priority
//! request at most its length, while work started during the request shares the GPU with
//! all of it: so only what it is owed beyond [`Yield::owed_before_running_ns`] may it also
//! keep queued while the high-priority tenant's work runs (that tenant's long bursts would
//! otherwise leave the GPU idle at each end, waiting for the watcher). Over any stretch of
//! time the tenant receives its share, less at most [`Yield::max_relief_ns`].

/// The bound on a lower tenant's queued work beside an active high-priority tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Yield {
    /// How much of its work, in GPU time, may wait ahead of a high-priority request.
    pub queue_ns: u64,
    /// The most launches in flight however short they are.
    pub max_in_flight: u64,
    /// The most GPU time a tenant is counted as owed (and as ahead of its share), hence the
    /// most [`Relief`] adds to `queue_ns`.
    pub max_relief_ns: u64,
    /// What a tenant must be owed before it keeps work queued while the high-priority
    /// tenant's work runs: only what it is owed beyond this.
    pub owed_before_running_ns: u64,
}

/// The GPU time a yielding tenant is owed against its guaranteed share: what it may keep
/// queued beyond [`Yield::queue_ns`]. Negative while it is ahead of its share: a tenant that
/// received more than its share for a while is owed nothing until it has fallen behind by
/// as much, so that a moment below its share (a high-priority request) costs the
/// high-priority tenant nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Relief {
    owed_ns: f64,
}

/// What a yielding tenant's watcher saw of it in one tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tick {
    /// How long the tick lasted.
    pub elapsed_ns: u64,
    /// The GPU time the process received in it.
    pub received_ns: u64,
    /// The process's part of the fraction of the GPU guaranteed to its tenant (its share
    /// when every active tenant wants all it may get), split among the tenant's processes
    /// that want more: each process's gate queues what it is owed.
    pub guaranteed: f64,
    /// The tenant wants more than it gets (its launches wait): only then is it owed
    /// anything. A tenant that uses less than its share by choice is owed nothing.
    pub wants_more: bool,
}

impl Relief {
    /// Follows one tick.
    pub fn follow(&mut self, bound: &Yield, tick: Tick) {
        if !tick.wants_more {
            self.owed_ns = 0.0;
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let (elapsed, received, most) = (
            tick.elapsed_ns as f64,
            tick.received_ns as f64,
            bound.max_relief_ns as f64,
        );
        let due = tick.guaranteed.clamp(0.0, 1.0) * elapsed;
        self.owed_ns = (self.owed_ns + due - received).clamp(-most, most);
    }

    /// The GPU time it is owed now, nanoseconds (0: none, or it is ahead of its share).
    pub fn owed_ns(&self) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let owed = self.owed_ns.max(0.0).round() as u64;
        owed
    }
}

impl Yield {
    /// How many launches may be unfinished at once, for kernels that take `per_launch_ns`
    /// each (`None`: not measured yet), for a tenant owed `relief`, while the high-priority
    /// tenant's work is in flight (`high_running`) or not. 0: none may start.
    ///
    /// While that work runs: what the tenant is owed beyond `owed_before_running_ns`.
    /// Otherwise: `queue_ns` and what it is owed, and at least one launch (of unmeasured
    /// kernels, one at a time, or two while owed anything).
    pub fn in_flight(
        &self,
        per_launch_ns: Option<u64>,
        relief: &Relief,
        high_running: bool,
    ) -> u64 {
        let owed = relief.owed_ns().min(self.max_relief_ns);
        let per_launch = per_launch_ns.filter(|&t| t > 0);
        if high_running {
            let beyond = owed.saturating_sub(self.owed_before_running_ns);
            return per_launch.map_or(0, |t| beyond / t).min(self.max_in_flight);
        }
        let queue_ns = self.queue_ns.saturating_add(owed);
        let unknown = if owed > 0 { 2 } else { 1 };
        per_launch
            .map_or(unknown, |t| queue_ns / t)
            .clamp(1, self.max_in_flight.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YIELD: Yield = Yield {
        queue_ns: 100_000,
        max_in_flight: 16,
        max_relief_ns: 20_000_000,
        owed_before_running_ns: 5_000_000,
    };

    const NONE: Relief = Relief { owed_ns: 0.0 };

    fn owed_us(us: i64) -> Relief {
        #[allow(clippy::cast_precision_loss)]
        Relief {
            owed_ns: (us * 1_000) as f64,
        }
    }

    #[test]
    fn short_kernels_fill_the_queue_and_long_ones_go_one_at_a_time() {
        assert_eq!(YIELD.in_flight(Some(25_000), &NONE, false), 4);
        assert_eq!(YIELD.in_flight(Some(30_000), &NONE, false), 3);
        assert_eq!(YIELD.in_flight(Some(200_000), &NONE, false), 1);
        assert_eq!(YIELD.in_flight(Some(1_600_000), &NONE, false), 1);
    }

    #[test]
    fn unknown_or_tiny_kernels_are_bounded_both_ways() {
        assert_eq!(YIELD.in_flight(None, &NONE, false), 1);
        assert_eq!(YIELD.in_flight(Some(0), &NONE, false), 1);
        assert_eq!(YIELD.in_flight(Some(1_000), &NONE, false), 16);
        let none = Yield {
            max_in_flight: 0,
            ..YIELD
        };
        assert_eq!(
            none.in_flight(Some(1_000), &NONE, false),
            1,
            "never below one"
        );
    }

    #[test]
    fn nothing_starts_while_the_high_priority_tenants_work_runs() {
        for kernel_ns in [None, Some(0), Some(1_000), Some(500_000)] {
            assert_eq!(YIELD.in_flight(kernel_ns, &NONE, true), 0, "{kernel_ns:?}");
        }
    }

    /// (owed before, guaranteed, received in a 10 ms tick, wants more, owed after; µs,
    /// negative: ahead of its share).
    #[test]
    fn a_tenant_is_owed_what_its_share_would_have_given_it_less_what_it_received() {
        let table: &[(i64, f64, u64, bool, i64)] = &[
            // Guaranteed 7 ms of the 10, received 5: owed 2 more.
            (0, 0.7, 5_000, true, 2_000),
            (1_000, 0.7, 5_000, true, 3_000),
            // Received its share: owed as much as before.
            (1_000, 0.7, 7_000, true, 1_000),
            // Received more: it catches up, then gets ahead.
            (1_000, 0.7, 7_500, true, 500),
            (1_000, 0.7, 9_000, true, -1_000),
            // Ahead: a stretch below its share takes from that first.
            (-4_000, 0.7, 5_000, true, -2_000),
            // Wants no more than it gets: owed nothing, and ahead by nothing.
            (3_000, 0.7, 1_000, false, 0),
            (-3_000, 0.7, 9_000, false, 0),
            // Never more than the most relief may add, either way.
            (15_000, 1.0, 0, true, 20_000),
            (-15_000, 0.0, 10_000, true, -20_000),
            // A share outside 0..1 is read as its bound.
            (0, 1.5, 5_000, true, 5_000),
            (1_000, -0.5, 0, true, 1_000),
        ];
        for &(before, guaranteed, received_us, wants_more, after) in table {
            let mut relief = owed_us(before);
            relief.follow(
                &YIELD,
                Tick {
                    elapsed_ns: 10_000_000,
                    received_ns: received_us * 1_000,
                    guaranteed,
                    wants_more,
                },
            );
            assert!(
                (relief.owed_ns - owed_us(after).owed_ns).abs() < 1.0,
                "owed {before} µs, guaranteed {guaranteed}, received {received_us} µs, \
                 wants more {wants_more}: owed {} ns, not {after} µs",
                relief.owed_ns
            );
            assert_eq!(relief.owed_ns(), u64::try_from(after * 1_000).unwrap_or(0));
        }
    }

    /// (kernel length µs, owed µs, launches in flight while the high-priority tenant's
    /// work runs, and while it does not).
    #[test]
    fn what_a_tenant_is_owed_it_may_keep_queued_on_top_of_the_bound() {
        let table: &[(Option<u64>, i64, u64, u64)] = &[
            (Some(500), 0, 0, 1),
            (Some(500), 399, 0, 1),
            (Some(500), 900, 0, 2),
            (Some(500), 2_000, 0, 4),
            // Owed more than half the most it can be: the rest also while that work runs.
            (Some(500), 5_000, 0, 10),
            (Some(500), 5_500, 1, 11),
            (Some(500), 7_000, 4, 14),
            (Some(2_000), 1_000, 0, 1),
            (Some(2_000), 3_900, 0, 2),
            (Some(2_000), 9_000, 2, 4),
            (Some(25), 0, 0, 4),
            (Some(25), 100, 0, 8),
            (Some(25), 1_000, 0, 16),
            (Some(25), 6_000, 16, 16),
            // Ahead of its share: the bound alone.
            (Some(500), -3_000, 0, 1),
            // Not measured yet: one at a time, two while owed anything; nothing new while
            // that work runs.
            (None, 0, 0, 1),
            (None, 1, 0, 2),
            (None, 9_000, 0, 2),
            // However much was owed, never past the most relief may add.
            (Some(2_000), 50_000, 7, 10),
        ];
        for &(kernel_us, owed, running, idle) in table {
            let relief = owed_us(owed);
            let kernel_ns = kernel_us.map(|us| us * 1_000);
            assert_eq!(
                (
                    YIELD.in_flight(kernel_ns, &relief, true),
                    YIELD.in_flight(kernel_ns, &relief, false)
                ),
                (running, idle),
                "kernels of {kernel_us:?} µs, owed {owed} µs"
            );
        }
    }

    /// A tenant of 500 µs kernels whose one-at-a-time bound gives it 50% of the GPU where
    /// 70% is guaranteed (each further kernel queued adds 25 points, up to the 95% the GPU
    /// leaves it), charged what it received each 100 µs: relief gives it its share, and
    /// goes once the bound alone would give it more.
    #[test]
    fn relief_gives_a_tenant_its_share_and_goes_once_the_share_is_met_without_it() {
        let tick_ns = 100_000;
        let mut relief = NONE;
        let (mut received_ns, mut elapsed_ns) = (0u64, 0u64);
        for _ in 0..30_000 {
            let in_flight = YIELD.in_flight(Some(500_000), &relief, false);
            #[allow(clippy::cast_precision_loss)]
            let rate = (0.5 + 0.25 * (in_flight - 1) as f64).min(0.95);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let received = (rate * tick_ns as f64) as u64;
            received_ns += received;
            elapsed_ns += tick_ns;
            relief.follow(
                &YIELD,
                Tick {
                    elapsed_ns: tick_ns,
                    received_ns: received,
                    guaranteed: 0.7,
                    wants_more: true,
                },
            );
        }
        #[allow(clippy::cast_precision_loss)]
        let share = received_ns as f64 / elapsed_ns as f64;
        assert!(
            (share - 0.7).abs() < 0.01,
            "received {share}, 0.7 guaranteed"
        );
        // Its kernels get shorter: the bound alone gives it more than its share.
        relief.follow(
            &YIELD,
            Tick {
                elapsed_ns: 10_000_000,
                received_ns: 9_000_000,
                guaranteed: 0.7,
                wants_more: true,
            },
        );
        assert_eq!(relief.owed_ns(), 0);
        assert_eq!(YIELD.in_flight(Some(500_000), &relief, false), 1);
    }
}
