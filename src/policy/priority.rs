//! Priority: how much work a tenant keeps queued on a GPU while a high-priority tenant is
//! active there.
//!
//! A GPU runs the kernels already queued before it turns to another process's, so a
//! high-priority request waits for whatever its neighbours have in flight. Bounding that by
//! a number of launches is wrong both ways: one 1.6 ms matmul is a long wait, and one 25 µs
//! matmul at a time leaves the GPU idle between the neighbour's launches. So the bound is a
//! time: the neighbour keeps as many launches in flight as its kernels take to fill
//! [`Yield::queue_ns`], judged by the time its kernels have been taking, and always at least
//! one (it must make progress).

/// The bound on a lower tenant's queued work beside an active high-priority tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Yield {
    /// How much of its work, in GPU time, may wait ahead of a high-priority request.
    pub queue_ns: u64,
    /// The most launches in flight however short they are.
    pub max_in_flight: u64,
}

impl Yield {
    /// How many launches may be unfinished at once, for kernels that take `per_launch_ns`
    /// each (`None`: not known yet, one at a time).
    pub fn in_flight(&self, per_launch_ns: Option<u64>) -> u64 {
        per_launch_ns
            .filter(|&t| t > 0)
            .map_or(1, |t| self.queue_ns / t)
            .clamp(1, self.max_in_flight.max(1))
    }
}

/// The time a process's launches take each on a GPU, from how long it had work in flight
/// and how many launches finished in that time: a moving average over recent launches.
///
/// Only stretches in which work stayed queued throughout measure it: once the queue has
/// run dry, part of the time was the GPU waiting for the process's next launch, which
/// would make its kernels look longer, hence fewer of them allowed in flight, hence more
/// waiting (a spiral down to one launch at a time). Such a stretch still bounds the time
/// from above, and lowers an average that is higher.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LaunchTime {
    /// Busy time not yet matched by a finished launch.
    pending_busy_ns: u64,
    average_ns: Option<f64>,
}

/// The weight of each new measurement in the average.
const LAUNCH_TIME_WEIGHT: f64 = 0.2;

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
        #[allow(clippy::cast_precision_loss)]
        let sample = self.pending_busy_ns as f64 / finished as f64;
        self.pending_busy_ns = 0;
        self.average_ns = match (self.average_ns, queued_throughout) {
            (None, true) => Some(sample),
            (Some(average), true) => Some(average + LAUNCH_TIME_WEIGHT * (sample - average)),
            (average, false) => average.map(|a| a.min(sample)),
        };
    }

    /// The time a launch takes, nanoseconds (`None` before any finished).
    pub fn per_launch_ns(&self) -> Option<u64> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.average_ns.map(|ns| ns.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YIELD: Yield = Yield {
        queue_ns: 100_000,
        max_in_flight: 16,
    };

    #[test]
    fn short_kernels_fill_the_queue_and_long_ones_go_one_at_a_time() {
        assert_eq!(YIELD.in_flight(Some(25_000)), 4);
        assert_eq!(YIELD.in_flight(Some(30_000)), 3);
        assert_eq!(YIELD.in_flight(Some(200_000)), 1);
        assert_eq!(YIELD.in_flight(Some(1_600_000)), 1);
    }

    #[test]
    fn unknown_or_tiny_kernels_are_bounded_both_ways() {
        assert_eq!(YIELD.in_flight(None), 1);
        assert_eq!(YIELD.in_flight(Some(0)), 1);
        assert_eq!(YIELD.in_flight(Some(1_000)), 16);
        let none = Yield {
            queue_ns: 100_000,
            max_in_flight: 0,
        };
        assert_eq!(none.in_flight(Some(1_000)), 1, "never below one");
    }

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
        assert_eq!(
            time.per_launch_ns(),
            None,
            "nothing known from waiting alone"
        );
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
}
