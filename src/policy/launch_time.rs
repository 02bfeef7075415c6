//! The time a process's launches take on a GPU, measured by its watcher: what bounds its
//! queue beside a high-priority tenant (`priority.rs`) and tells others when its queue is
//! nearly done (`turns.rs`).

/// The time a process's launches take each on a GPU, from how long it had work in flight
/// and how many launches finished in that time: a moving average over recent launches.
///
/// Stretches in which work stayed queued throughout measure it. Once the queue has run
/// dry, part of the time may have been the GPU waiting for the process's next launch,
/// which would make its kernels look longer, hence fewer of them allowed in flight, hence
/// more waiting (a spiral down to one launch at a time): a short such stretch only bounds
/// the time from above (it lowers an average that is higher, or starts one). A long one
/// (at least [`LONG_STRETCH_NS`]) measures it too: what the watcher could not place, part
/// of a tick, is small beside it. That is how programs that only ever see their queue run
/// dry are measured: the watcher learns about the NULL stream only that all of it is done.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LaunchTime {
    /// Busy time not yet matched by a finished launch.
    pending_busy_ns: u64,
    average_ns: Option<f64>,
    /// Whether the average comes from a measurement, not only from bounds.
    measured: bool,
}

/// The weight of each new measurement in the average.
const LAUNCH_TIME_WEIGHT: f64 = 0.2;
/// The shortest stretch that ran dry and still measures the time a launch takes.
pub const LONG_STRETCH_NS: u64 = 4_000_000;

impl LaunchTime {
    /// Adds `busy_ns` of time with work in flight, in which `finished` launches finished;
    /// `queued_throughout`: work was in flight from its start to its end (as far as the
    /// watcher saw), so that none of it was the GPU waiting for this process.
    pub fn observe(&mut self, busy_ns: u64, finished: u64, queued_throughout: bool) {
        self.pending_busy_ns = self.pending_busy_ns.saturating_add(busy_ns);
        if finished == 0 {
            if !queued_throughout {
                self.pending_busy_ns = 0;
            }
            return;
        }
        let measures = queued_throughout || self.pending_busy_ns >= LONG_STRETCH_NS;
        #[allow(clippy::cast_precision_loss)]
        let sample = self.pending_busy_ns as f64 / finished as f64;
        self.pending_busy_ns = 0;
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

    #[test]
    fn the_launch_time_spans_ticks_in_which_nothing_finished() {
        let mut time = LaunchTime::default();
        assert_eq!(time.per_launch_ns(), None);
        // A 1.6 ms kernel seen across four 500 µs ticks.
        time.observe(500_000, 0, true);
        time.observe(500_000, 0, true);
        time.observe(500_000, 0, true);
        time.observe(100_000, 1, true);
        assert_eq!(time.per_launch_ns(), Some(1_600_000));
    }

    #[test]
    fn the_launch_time_follows_a_change_of_kernels() {
        let mut time = LaunchTime::default();
        time.observe(500_000, 20, true);
        assert_eq!(time.per_launch_ns(), Some(25_000));
        for _ in 0..30 {
            time.observe(400_000, 2, true);
        }
        let now = time.per_launch_ns().unwrap();
        assert!((199_000..=201_000).contains(&now), "{now}");
    }

    #[test]
    fn time_after_the_queue_ran_dry_only_lowers_the_average() {
        let mut time = LaunchTime::default();
        // 25 µs kernels, then one at a time with the GPU waiting 100 µs for each launch.
        time.observe(100_000, 0, false);
        time.observe(125_000, 1, false);
        assert_eq!(time.per_launch_ns(), Some(125_000), "at most this");
        time.observe(500_000, 20, true);
        for _ in 0..50 {
            time.observe(125_000, 1, false);
        }
        assert_eq!(time.per_launch_ns(), Some(25_000));
        // A stretch that ran dry says the kernels take at most this: lower it.
        time.observe(20_000, 1, false);
        assert_eq!(time.per_launch_ns(), Some(20_000));
        // What was pending when the queue ran dry is not carried into the next sample.
        time.observe(300_000, 0, false);
        time.observe(100_000, 5, true);
        assert_eq!(time.per_launch_ns(), Some(20_000));
    }

    #[test]
    fn long_stretches_that_ran_dry_measure_the_time() {
        // Steps of four 1.6 ms kernels on the NULL stream, each seen only once done, with
        // the watcher's uncertainty about the ends (±250 µs) around 6.4 ms.
        let mut time = LaunchTime::default();
        for busy in [
            6_650_000, 6_150_000, 6_400_000, 6_650_000, 6_150_000, 6_400_000,
        ] {
            time.observe(busy, 4, false);
        }
        let now = time.per_launch_ns().unwrap();
        assert!((1_500_000..=1_700_000).contains(&now), "{now}");
        // Longer kernels raise it again, which short stretches could not.
        for _ in 0..20 {
            time.observe(8_000_000, 4, false);
        }
        let now = time.per_launch_ns().unwrap();
        assert!((1_950_000..=2_000_000).contains(&now), "{now}");
    }

    #[test]
    fn the_remaining_time_is_the_queue_less_the_work_done_on_it() {
        let mut time = LaunchTime::default();
        assert_eq!(time.remaining_ns(0, 0), Some(0));
        assert_eq!(time.remaining_ns(3, 0), None, "not measured yet");
        time.observe(1_600_000, 1, true);
        assert_eq!(time.remaining_ns(4, 0), Some(6_400_000));
        assert_eq!(time.remaining_ns(4, 1_000_000), Some(5_400_000));
        assert_eq!(time.remaining_ns(3, 4_000_000), Some(800_000));
        // Worked on for longer than it should take: its end is still to come.
        assert_eq!(time.remaining_ns(1, 5_000_000), Some(200_000));
    }
}
