//! When a high-priority tenant's next work is due, learned by the tenants that yield to it
//! from what it publishes, so that they have nothing in flight when it comes.
//!
//! The GPU does not preempt a running kernel for another context's work: a high-priority
//! request waits for whatever its neighbours have in flight when it comes. The bound on
//! their queue (`policy::priority`) keeps that to about one kernel, but a neighbour kept at
//! half its throughput or more has a kernel in flight about half the time, so about half
//! the requests still wait for one. That is all a policy can do for work that comes at
//! random. Much work that needs priority comes at regular intervals instead: a camera's
//! frames, a control loop, a client that polls at a fixed rate. For that, a neighbour can
//! know when the next request is due: it learns the idle gaps between the high tenant's
//! bursts of work (from the time the high tenant's processes last published themselves
//! active, `Activity::at_ns`), and once they are regular, starts nothing that would still
//! run when the next burst is due, and, where the bursts are short (requests), nothing
//! beside that burst once it has come; it goes on as soon as the burst is over, or once it
//! has not come when it was due. Beside long bursts of short kernels (an inference
//! server's generate) it fills the gaps between them as the bound lets it.
//!
//! What it costs the neighbour is the stretch before each burst that its kernels do not
//! fit in, and the burst itself: where the gaps are too short to run anything in, or vary
//! by more than a quarter, nothing is anticipated. And like the bound, it never takes the
//! neighbour below its guaranteed share: what it is owed beyond
//! `Yield::owed_before_running_ns` it keeps queued whatever is due (the controller treats a
//! burst due or in flight as it treats the high tenant's long work).

/// An idle stretch of the high-priority tenant's at least this long separates two bursts
/// of its work; a shorter one (its watcher's ticks, 50 µs apart while it works beside
/// others) is within one burst.
pub const BURST_GAP_NS: u64 = 300_000;
/// A gap longer than this starts the learning again: the tenant paused, or its work is not
/// periodic at a scale worth anticipating.
pub const MAX_GAP_NS: u64 = 1_000_000_000;
/// How many of the latest gaps are kept, and how many idle gaps (see
/// [`Arrivals::next_due`]) must be among them before any burst is anticipated.
const GAPS: usize = 16;
const GAPS_NEEDED: usize = 4;
/// How early before the burst is due the neighbour's work must be done, at least: the high
/// tenant's work is published up to one of its ticks (50 µs while others work beside it)
/// after it starts, and a launch the neighbour's gate lets go may reach the GPU up to a
/// tick of the neighbour's after that decision. Where the high tenant's ticks come further
/// apart (a busy CPU), the margin is two of them ([`Arrivals::margin_ns`]): one for that lag,
/// one for how much the gaps vary with it (the shortest gap seen anticipates the rest).
pub const MARGIN_NS: u64 = 150_000;

/// The idle gaps between a high-priority tenant's bursts of work, as a yielding tenant saw
/// them in the tenants' published records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arrivals {
    /// The latest time a high-priority tenant was published active (0: never seen).
    last_seen_ns: u64,
    /// How far apart the high tenant's ticks publish it within a burst, on average (0: not
    /// seen yet): how late its work may be published.
    tick_ns: u64,
    /// When the current burst was first seen.
    burst_start_ns: u64,
    /// The latest gaps, and the bursts before them (first to last time seen), oldest
    /// overwritten first; `recorded` of them are known.
    gaps: [u64; GAPS],
    bursts: [u64; GAPS],
    recorded: usize,
    next: usize,
}

/// When the next burst is due: no earlier than `earliest_ns` (the shortest gap of late)
/// and no later than `latest_ns` (the longest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub earliest_ns: u64,
    pub latest_ns: u64,
}

/// What the yielding tenant may start now, as far as the next burst is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// Nothing is anticipated: the bound alone applies.
    Free,
    /// It may keep at most this many launches in flight (at least 1): more would still
    /// run when the burst is due.
    Launches(u64),
    /// A burst is due or in flight: it starts nothing, as beside the high-priority
    /// tenant's long work.
    Hold,
}

impl Arrivals {
    /// Follows the latest time a high-priority tenant was published active (`seen_ns`; 0:
    /// none is): a later time after an idle stretch of at least [`BURST_GAP_NS`] starts a
    /// new burst, and records the gap.
    pub fn observe(&mut self, seen_ns: u64) {
        if seen_ns <= self.last_seen_ns {
            return;
        }
        let gap = seen_ns - self.last_seen_ns;
        if self.last_seen_ns == 0 || gap > MAX_GAP_NS {
            *self = Arrivals {
                burst_start_ns: seen_ns,
                ..Arrivals::default()
            };
        } else if gap < BURST_GAP_NS {
            self.tick_ns = if self.tick_ns == 0 {
                gap
            } else {
                (self.tick_ns * 7 + gap) / 8
            };
        } else {
            self.gaps[self.next] = gap;
            self.bursts[self.next] = self.last_seen_ns - self.burst_start_ns;
            self.burst_start_ns = seen_ns;
            self.next = (self.next + 1) % GAPS;
            self.recorded = (self.recorded + 1).min(GAPS);
        }
        self.last_seen_ns = seen_ns;
    }

    /// When the next burst is due, if the latest idle gaps are regular: at least
    /// [`GAPS_NEEDED`] of them, the longest no more than a quarter longer than the
    /// shortest. The idle gaps are those at least half as long as the longest: the high
    /// tenant's watcher may miss a stretch of its own work now and then (a tick late on a
    /// busy CPU), which splits a burst in two with a short gap that is not one between
    /// requests.
    pub fn next_due(&self) -> Option<Due> {
        let known = &self.gaps[..self.recorded];
        let longest = known.iter().copied().max()?;
        let idle = || known.iter().copied().filter(|&g| g >= longest / 2);
        let shortest = idle().min()?;
        (idle().count() >= GAPS_NEEDED && longest - shortest <= shortest / 4).then(|| Due {
            earliest_ns: self.last_seen_ns.saturating_add(shortest),
            latest_ns: self.last_seen_ns.saturating_add(longest),
        })
    }

    /// How early before the burst is due the tenant's work must be done: [`MARGIN_NS`], or
    /// two of the high tenant's ticks where they come further apart.
    pub fn margin_ns(&self) -> u64 {
        MARGIN_NS.max(2 * self.tick_ns)
    }

    /// What a yielding tenant may start at `now_ns`, its launches taking `per_launch_ns`
    /// each (`None`: not measured yet) and its watcher ticking every `tick_ns`, while a
    /// high-priority tenant's work is in flight (`high_in_flight`) or not.
    ///
    /// Its gate lets a launch go whenever one in flight is seen finished, until the next
    /// tick decides again: so the last one let go before then may start a tick from now
    /// behind as many as the bound allows in flight, and end that many launches' time
    /// later. The bound is what ends before the margin.
    pub fn room(
        &self,
        now_ns: u64,
        tick_ns: u64,
        per_launch_ns: Option<u64>,
        high_in_flight: bool,
    ) -> Room {
        let (Some(due), Some(per_launch)) = (self.next_due(), per_launch_ns.filter(|&t| t > 0))
        else {
            return Room::Free;
        };
        // Only where the gap leaves room for a few of its launches: otherwise the
        // neighbour would hold all the time, and the bound does better.
        let margin = self.margin_ns();
        let shortest_gap = due.earliest_ns - self.last_seen_ns;
        // A launch and a margin, four times: what counts as room, and as a short burst.
        let four_launches = per_launch.saturating_add(margin).saturating_mul(4);
        if shortest_gap < four_launches {
            return Room::Free;
        }
        if high_in_flight {
            // Beside a short burst (a request) work started now would share the GPU with
            // much of it; beside a long one of short kernels (an inference server's
            // generate) the bound does as before: the tenant fills the gaps between them.
            let longest_burst = self.bursts[..self.recorded].iter().copied().max();
            return if longest_burst.is_some_and(|b| b <= four_launches) {
                Room::Hold
            } else {
                Room::Free
            };
        }
        if now_ns > due.latest_ns.saturating_add(margin + shortest_gap / 8) {
            // It did not come when due (its start is published up to a margin late, and
            // a request may come a little late): go on until it does.
            return Room::Free;
        }
        let done_by = due.earliest_ns.saturating_sub(margin);
        match done_by.saturating_sub(now_ns.saturating_add(tick_ns)) / per_launch {
            0 => Room::Hold,
            most => Room::Launches(most),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    /// Arrivals that saw bursts `first`, `first + period`, ... each `burst` long (published
    /// at its start and its end), `count` of them.
    fn bursts(first: u64, period: u64, burst: u64, count: u64) -> Arrivals {
        let mut arrivals = Arrivals::default();
        for k in 0..count {
            let start = first + k * period;
            arrivals.observe(start);
            arrivals.observe(start + burst);
        }
        arrivals
    }

    /// The same, the high tenant published every 50 µs through each burst.
    fn ticking(first: u64, period: u64, burst: u64, count: u64) -> Arrivals {
        let mut arrivals = Arrivals::default();
        for k in 0..count {
            let start = first + k * period;
            let mut t = start;
            while t < start + burst {
                arrivals.observe(t);
                t += 50 * US;
            }
            arrivals.observe(start + burst);
        }
        arrivals
    }

    #[test]
    fn regular_bursts_are_due_one_gap_after_the_last_was_seen() {
        let arrivals = bursts(10 * MS, 2 * MS, 50 * US, 5);
        // The last burst ended at 18.05 ms; the gaps are 1.95 ms.
        assert_eq!(
            arrivals.next_due(),
            Some(Due {
                earliest_ns: 20 * MS,
                latest_ns: 20 * MS
            })
        );
    }

    #[test]
    fn too_few_irregular_or_interrupted_bursts_are_not_anticipated() {
        assert_eq!(Arrivals::default().next_due(), None);
        // Four bursts are three gaps.
        assert_eq!(bursts(10 * MS, 2 * MS, 50 * US, 4).next_due(), None);
        assert!(bursts(10 * MS, 2 * MS, 50 * US, 5).next_due().is_some());
        // Gaps 1.95 and 2.95 ms: the longest more than a quarter above the shortest.
        let mut arrivals = bursts(10 * MS, 2 * MS, 50 * US, 5);
        arrivals.observe(21 * MS);
        arrivals.observe(21 * MS + 50 * US);
        assert_eq!(arrivals.next_due(), None);
        // A pause longer than MAX_GAP_NS starts the learning again.
        let mut arrivals = bursts(10 * MS, 2 * MS, 50 * US, 8);
        let later = 10 * MS + 7 * 2 * MS + 50 * US + MAX_GAP_NS + 1;
        arrivals.observe(later);
        assert_eq!(arrivals.next_due(), None);
        assert_eq!(arrivals.recorded, 0);
    }

    #[test]
    fn a_burst_split_by_a_late_tick_leaves_the_gaps_between_bursts_regular() {
        let mut arrivals = Arrivals::default();
        let mut t = 10 * MS;
        for k in 0..6 {
            // A 1 ms burst seen at its start and end, once also 400 µs into it after a
            // stretch unseen.
            arrivals.observe(t);
            if k == 3 {
                arrivals.observe(t + 400 * US);
            }
            arrivals.observe(t + MS);
            t += 9 * MS;
        }
        assert_eq!(
            arrivals.next_due(),
            Some(Due {
                earliest_ns: t,
                latest_ns: t
            })
        );
    }

    #[test]
    fn ticks_within_a_burst_and_stale_times_record_no_gap() {
        let mut arrivals = Arrivals::default();
        for t in (0..20).map(|k| 5 * MS + k * 50 * US) {
            arrivals.observe(t);
        }
        // A time already seen, or older, or none (a process that idled out publishes 0).
        arrivals.observe(5 * MS);
        arrivals.observe(0);
        assert_eq!(arrivals.recorded, 0);
        assert_eq!(arrivals.last_seen_ns, 5 * MS + 19 * 50 * US);
    }

    #[test]
    fn the_shortest_and_longest_of_the_latest_gaps_bound_the_window() {
        let mut arrivals = Arrivals::default();
        let mut t = MS;
        arrivals.observe(t);
        for gap in [2_000, 1_900, 2_100, 2_000, 1_950] {
            t += gap * US;
            arrivals.observe(t);
        }
        assert_eq!(
            arrivals.next_due(),
            Some(Due {
                earliest_ns: t + 1_900 * US,
                latest_ns: t + 2_100 * US
            })
        );
        // Only the latest GAPS count: eight regular gaps of 3 ms push the others out.
        for _ in 0..GAPS {
            t += 3 * MS;
            arrivals.observe(t);
        }
        assert_eq!(
            arrivals.next_due(),
            Some(Due {
                earliest_ns: t + 3 * MS,
                latest_ns: t + 3 * MS
            })
        );
    }

    /// (now after the last burst was seen, per launch, high in flight, room; µs), the next
    /// burst due 2 ms after the last was seen, ticks 50 µs apart.
    #[test]
    fn the_room_before_a_due_burst_is_what_ends_a_margin_before_it() {
        let arrivals = bursts(10 * MS, 2 * MS, 0, 6);
        let last = arrivals.last_seen_ns;
        type Row = (u64, Option<u64>, bool, Room);
        let table: &[Row] = &[
            // Right after a burst: 1.85 ms until the margin, less a tick: 9 launches of
            // 200 µs.
            (0, Some(200), false, Room::Launches(9)),
            // 1.5 ms on: 300 µs, one.
            (1_500, Some(200), false, Room::Launches(1)),
            (1_600, Some(200), false, Room::Launches(1)),
            // Less than a launch and a tick before the margin: nothing more starts.
            (1_601, Some(200), false, Room::Hold),
            // Due now, and until a margin and an eighth of the gap after it.
            (2_000, Some(200), false, Room::Hold),
            (2_400, Some(200), false, Room::Hold),
            // It did not come: the tenant goes on.
            (2_401, Some(200), false, Room::Free),
            // Its burst in flight (these are short): nothing starts beside it.
            (0, Some(200), true, Room::Hold),
            // Launches not measured yet, or too long to fit four in a gap: nothing is
            // anticipated.
            (1_900, None, false, Room::Free),
            (1_900, Some(0), false, Room::Free),
            (1_900, Some(400), true, Room::Free),
            (1_900, Some(300), true, Room::Hold),
        ];
        for &(now, per_launch, high, room) in table {
            assert_eq!(
                arrivals.room(last + now * US, 50 * US, per_launch.map(|t| t * US), high),
                room,
                "{now} µs after, {per_launch:?} µs a launch, high in flight {high}"
            );
        }
        // Ticks further apart leave less room.
        assert_eq!(
            arrivals.room(last + 1_500 * US, 150 * US, Some(200 * US), false),
            Room::Launches(1)
        );
        assert_eq!(
            arrivals.room(last + 1_500 * US, 151 * US, Some(200 * US), false),
            Room::Hold
        );
    }

    /// Where the high tenant's ticks come further apart than 50 µs, its work is published
    /// later after it starts: the margin is two of them.
    #[test]
    fn slow_ticks_of_the_high_tenant_widen_the_margin() {
        let fast = bursts(10 * MS, 8 * MS, 0, 6);
        assert_eq!(fast.margin_ns(), MARGIN_NS);
        let mut slow = Arrivals::default();
        for k in 0..6 {
            let start = 10 * MS + k * 8 * MS;
            for t in 0..5 {
                slow.observe(start + t * 200 * US);
            }
        }
        assert_eq!(slow.margin_ns(), 400 * US);
        let last = slow.last_seen_ns;
        // Due 7.2 ms after the last seen: done by 6.8 ms.
        assert_eq!(
            slow.room(last + 6_200 * US, 100 * US, Some(500 * US), false),
            Room::Launches(1)
        );
        assert_eq!(
            slow.room(last + 6_201 * US, 100 * US, Some(500 * US), false),
            Room::Hold
        );
    }

    /// Long bursts (200 ms of an inference server's generate, 2 ms apart): the tenant still
    /// holds before each is due, but beside one it fills the gaps as the bound lets it.
    #[test]
    fn beside_a_long_burst_the_bound_applies() {
        let arrivals = ticking(10 * MS, 202 * MS, 200 * MS, 6);
        let last = arrivals.last_seen_ns;
        assert_eq!(
            arrivals.room(last + MS, 50 * US, Some(200 * US), true),
            Room::Free
        );
        assert_eq!(
            arrivals.room(last + 1_800 * US, 50 * US, Some(200 * US), false),
            Room::Hold
        );
        // Bursts up to four launches and margins long count as short.
        let short = ticking(10 * MS, 8 * MS, 1_400 * US, 6);
        assert_eq!(
            short.room(short.last_seen_ns + MS, 50 * US, Some(200 * US), true),
            Room::Hold
        );
        let long = ticking(10 * MS, 8 * MS, 1_401 * US, 6);
        assert_eq!(
            long.room(long.last_seen_ns + MS, 50 * US, Some(200 * US), true),
            Room::Free
        );
    }

    /// A high-priority tenant's processes write their own records: one that publishes a
    /// time far ahead (a hostile one, or a clock gone wrong) starts the learning again and
    /// makes the others hold nothing; the times after it, older, are not taken as bursts
    /// until the clock has caught up.
    #[test]
    fn a_time_published_ahead_of_the_clock_holds_nothing() {
        let mut arrivals = bursts(10 * MS, 2 * MS, 0, 8);
        let now = arrivals.last_seen_ns + MS;
        assert!(arrivals.next_due().is_some());
        arrivals.observe(now + 3_600_000 * MS);
        assert_eq!(arrivals.next_due(), None);
        for k in 0..8 {
            arrivals.observe(now + k * 2 * MS);
        }
        assert_eq!(arrivals.next_due(), None);
        for k in 0..8 {
            assert_eq!(
                arrivals.room(now + k * 2 * MS, 50 * US, Some(200 * US), false),
                Room::Free
            );
        }
    }

    #[test]
    fn irregular_bursts_leave_the_room_free() {
        let mut arrivals = bursts(10 * MS, 2 * MS, 0, 3);
        arrivals.observe(15 * MS);
        arrivals.observe(16 * MS);
        assert_eq!(arrivals.next_due(), None);
        assert_eq!(
            arrivals.room(16 * MS + 1_900 * US, 50 * US, Some(200 * US), true),
            Room::Free
        );
    }
}
