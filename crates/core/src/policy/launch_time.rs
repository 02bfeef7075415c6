//! The time a process's launches take on a GPU, measured by its watcher: what bounds its
//! queue beside a high-priority tenant (`priority.rs`) and tells others when its queue is
//! nearly done (`turns.rs`).

/// The time a process's launches take each on a GPU, from how long it had work in flight
/// and how many launches finished in that time: a moving average over recent launches.
///
/// The watcher sees the process's queue only at its ticks: it knows a launch finished
/// somewhere between two polls, not when. So each sample spans whole ticks, from the poll
/// that last saw the queue empty (or the last sample) to the poll that sees launches
/// finished, and is the most those launches can have taken, never less (a launch that both
/// started and finished between two polls took at most the tick, not nothing).
///
/// Whether it is also about what they took depends on whether the GPU could have waited
/// for the process in that time. It could not where work stayed queued throughout; nor,
/// beyond the moment the watcher needs to see a launch finish, where the process's launches
/// were held back at its gate (it had more to launch all along). Such samples measure the
/// time. Where the queue ran dry on its own, part of the time may have been the GPU waiting
/// for the process's next launch, which would make its kernels look longer, hence fewer of
/// them allowed in flight, hence more waiting (a spiral down to one launch at a time): such
/// a sample only bounds the time from above (it lowers an average that is higher, or starts
/// one), unless it is long (at least [`LONG_STRETCH_NS`]): what the watcher could not place,
/// part of a tick, is small beside it. That is how programs that only ever see their queue
/// run dry are measured: the watcher learns about the NULL stream only that all of it is
/// done. A sample that measures counts half of a tick at an end where the queue was seen
/// empty (the work began, or ended, some time in it), except at the start of held launches:
/// they go as soon as the watcher has seen the queue empty.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LaunchTime {
    /// Time since the start of the current sample, while launches were unfinished.
    pending_ns: u64,
    /// Whether the sample began with work in flight (not at a poll that saw none).
    pending_from_busy: bool,
    /// The length of its first tick.
    first_tick_ns: u64,
    /// Whether launches were held back at the gate in it.
    pending_held: bool,
    average_ns: Option<f64>,
    /// Whether the average comes from a measurement, not only from bounds.
    measured: bool,
}

/// What the watcher saw of a process's work on a GPU in one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickWork {
    /// The tick's length.
    pub tick_ns: u64,
    /// Launches seen finished in it.
    pub finished: u64,
    /// Work was in flight at the poll that began it, and at the one that ended it.
    pub busy_before: bool,
    pub busy_after: bool,
    /// A launch waited at the gate during it.
    pub held: bool,
}

/// The weight of each new measurement in the average.
const LAUNCH_TIME_WEIGHT: f64 = 0.2;
/// The shortest stretch that ran dry and still measures the time a launch takes.
pub const LONG_STRETCH_NS: u64 = 4_000_000;

impl LaunchTime {
    /// Adds what one tick saw.
    pub fn observe(&mut self, tick: TickWork) {
        if !tick.busy_before {
            // The last poll saw nothing in flight: whatever finishes next started since.
            self.pending_ns = 0;
            self.pending_from_busy = false;
            self.pending_held = false;
        }
        if tick.busy_before || tick.busy_after || tick.finished > 0 {
            if self.pending_ns == 0 {
                self.first_tick_ns = tick.tick_ns;
            }
            self.pending_ns = self.pending_ns.saturating_add(tick.tick_ns);
        }
        self.pending_held |= tick.held;
        if tick.finished == 0 {
            return;
        }
        let measures = (self.pending_from_busy && tick.busy_after)
            || self.pending_held
            || self.pending_ns >= LONG_STRETCH_NS;
        let busy_ns = if measures {
            let start = if self.pending_from_busy || self.pending_held {
                0
            } else {
                self.first_tick_ns / 2
            };
            let end = if tick.busy_after { 0 } else { tick.tick_ns / 2 };
            self.pending_ns.saturating_sub(start + end)
        } else {
            self.pending_ns
        };
        #[allow(clippy::cast_precision_loss)]
        let sample = busy_ns as f64 / tick.finished as f64;
        self.pending_ns = 0;
        self.pending_from_busy = tick.busy_after;
        self.pending_held = false;
        self.average_ns = match (self.average_ns, measures) {
            (Some(average), true) if self.measured => {
                Some(average + LAUNCH_TIME_WEIGHT * (sample - average))
            }
            (Some(average), false) => Some(average.min(sample)),
            (_, _) => Some(sample),
        };
        self.measured |= measures;
    }

    /// The time a launch takes, nanoseconds (`None` before any finished).
    pub fn per_launch_ns(&self) -> Option<u64> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.average_ns.map(|ns| ns.round() as u64)
    }

    /// How long `unfinished` launches will take to finish, nanoseconds (`None`: not known
    /// yet), the GPU having worked on them for `worked_ns` since the last was seen to
    /// finish. (The watcher sees launches finish in batches, not one by one: the time since
    /// counts against the whole queue, not only its first launch.)
    pub fn remaining_ns(&self, unfinished: u64, worked_ns: u64) -> Option<u64> {
        if unfinished == 0 {
            return Some(0);
        }
        let per_launch = self.per_launch_ns()?;
        // Some of it is left, whatever the time says: its end has not been seen yet.
        Some(
            per_launch
                .saturating_mul(unfinished)
                .saturating_sub(worked_ns)
                .max(per_launch / 8),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tick with work in flight at both of its polls.
    fn queued(tick_ns: u64, finished: u64) -> TickWork {
        TickWork {
            tick_ns,
            finished,
            busy_before: true,
            busy_after: true,
            held: false,
        }
    }

    /// A tick whose second poll found the queue empty.
    fn drained(tick_ns: u64, finished: u64, busy_before: bool) -> TickWork {
        TickWork {
            tick_ns,
            finished,
            busy_before,
            busy_after: false,
            held: false,
        }
    }

    /// A tick whose first poll found the queue empty and whose second found work.
    fn started(tick_ns: u64) -> TickWork {
        TickWork {
            busy_before: false,
            ..queued(tick_ns, 0)
        }
    }

    #[test]
    fn the_launch_time_spans_ticks_in_which_nothing_finished() {
        let mut time = LaunchTime::default();
        assert_eq!(time.per_launch_ns(), None);
        // A 1.6 ms kernel seen across four 500 µs ticks, queued throughout.
        time.observe(queued(500_000, 0));
        time.observe(queued(500_000, 0));
        time.observe(queued(500_000, 0));
        time.observe(queued(100_000, 1));
        assert_eq!(time.per_launch_ns(), Some(1_600_000));
    }

    #[test]
    fn the_launch_time_follows_a_change_of_kernels() {
        let mut time = LaunchTime::default();
        time.observe(queued(500_000, 20));
        assert_eq!(time.per_launch_ns(), Some(25_000));
        for _ in 0..30 {
            time.observe(queued(400_000, 2));
        }
        let now = time.per_launch_ns().unwrap();
        assert!((199_000..=201_000).contains(&now), "{now}");
    }

    #[test]
    fn time_after_the_queue_ran_dry_only_lowers_the_average() {
        let mut time = LaunchTime::default();
        // One launch at a time, the GPU waiting for each: started in one tick, seen done
        // in the next.
        time.observe(started(100_000));
        time.observe(drained(25_000, 1, true));
        assert_eq!(time.per_launch_ns(), Some(125_000), "at most this");
        time.observe(queued(500_000, 20));
        for _ in 0..50 {
            time.observe(started(100_000));
            time.observe(drained(25_000, 1, true));
        }
        assert_eq!(time.per_launch_ns(), Some(25_000));
        // A stretch that ran dry says the kernels take at most this: lower it.
        time.observe(started(10_000));
        time.observe(drained(10_000, 1, true));
        assert_eq!(time.per_launch_ns(), Some(20_000));
    }

    #[test]
    fn a_launch_that_started_and_finished_between_two_polls_took_at_most_the_tick() {
        let mut time = LaunchTime::default();
        time.observe(queued(500_000, 20));
        assert_eq!(time.per_launch_ns(), Some(25_000));
        // Seen neither in flight nor taking time: it says nothing below the tick, and the
        // average must not fall towards nothing (which would read as "not known").
        for _ in 0..50 {
            time.observe(drained(50_000, 1, false));
        }
        assert_eq!(time.per_launch_ns(), Some(25_000));
        time.observe(drained(50_000, 4, false));
        assert_eq!(time.per_launch_ns(), Some(12_500));
    }

    /// One launch seen in flight over 210 µs of ticks: started, queued twice, drained.
    fn one_launch_in_four_ticks(time: &mut LaunchTime, held: bool) {
        time.observe(TickWork {
            held,
            ..started(60_000)
        });
        time.observe(queued(60_000, 0));
        time.observe(queued(60_000, 0));
        time.observe(TickWork {
            held,
            ..drained(30_000, 1, true)
        });
    }

    #[test]
    fn launches_held_at_the_gate_measure_the_time_though_the_queue_ran_dry() {
        // 200 µs kernels one at a time beside a high-priority tenant, released as soon as
        // the watcher sees the last one done, at the end of 210 µs windows of which the
        // last tick (30 µs) holds the end of the kernel and the watcher's lag.
        let mut time = LaunchTime::default();
        time.observe(queued(500_000, 20));
        for _ in 0..40 {
            one_launch_in_four_ticks(&mut time, true);
        }
        let now = time.per_launch_ns().unwrap();
        assert_eq!(now, 195_000, "the last tick's half taken off: {now}");
        // The same without the gate holding anything back: an upper bound only.
        let mut unheld = LaunchTime::default();
        unheld.observe(queued(500_000, 20));
        for _ in 0..40 {
            one_launch_in_four_ticks(&mut unheld, false);
        }
        assert_eq!(unheld.per_launch_ns(), Some(25_000));
    }

    #[test]
    fn long_stretches_that_ran_dry_measure_the_time() {
        // Steps of four 1.6 ms kernels on the NULL stream, each seen only once done, with
        // the watcher's uncertainty about the ends (±250 µs) around 6.4 ms.
        let mut time = LaunchTime::default();
        for (first, last) in [(0, 500_000), (500_000, 0), (250_000, 250_000)].repeat(2) {
            // 500 µs ticks: the work started `first` before the end of the first, and ended
            // `last` after the start of the last.
            time.observe(started(500_000));
            time.observe(queued(6_400_000 - first - last, 0));
            time.observe(drained(500_000, 4, true));
        }
        assert_eq!(time.per_launch_ns(), Some(1_600_000));
        // Longer kernels raise it again, which short stretches could not.
        for _ in 0..20 {
            time.observe(started(500_000));
            time.observe(queued(7_500_000, 0));
            time.observe(drained(500_000, 4, true));
        }
        let now = time.per_launch_ns().unwrap();
        assert!((1_990_000..=2_000_000).contains(&now), "{now}");
    }

    #[test]
    fn the_remaining_time_is_the_queue_less_the_work_done_on_it() {
        let mut time = LaunchTime::default();
        assert_eq!(time.remaining_ns(0, 0), Some(0));
        assert_eq!(time.remaining_ns(3, 0), None, "not measured yet");
        time.observe(queued(1_600_000, 1));
        assert_eq!(time.remaining_ns(4, 0), Some(6_400_000));
        assert_eq!(time.remaining_ns(4, 1_000_000), Some(5_400_000));
        assert_eq!(time.remaining_ns(3, 4_000_000), Some(800_000));
        // Worked on for longer than it should take: its end is still to come.
        assert_eq!(time.remaining_ns(1, 5_000_000), Some(200_000));
    }
}
