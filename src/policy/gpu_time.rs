//! The GPU time a process is charged: what its kernels ran, not how long it had work in
//! flight.
//!
//! The watcher sees a process's queue only at its polls (every half millisecond). Charging
//! the time between polls at which work was in flight (the polled estimate) is right for a
//! queue that never runs dry, and wrong for every other shape, measured on an H100
//! (`scripts/trace-shapes.sh`):
//!
//! - a loop that synchronizes after each short kernel runs dry many times between two
//!   polls: it had work in flight for far longer than its kernels ran (a 2048² matmul with
//!   a synchronization after each: charged 30% while NVML saw 23%);
//! - a loop held at its gate starts its work right after the poll that opened the gate, so
//!   its busy stretches sit at the same place between polls every time, and are seen by
//!   one poll fewer than their length says (eight 4096² matmuls between synchronizations:
//!   charged 30% while NVML saw 39%).
//!
//! So the watcher times launches themselves: now and then one launch of a stream is
//! bracketed with two timed events, which give what that launch took on the GPU
//! ([`LaunchSamples`]), and each tick the launches seen finished are charged at that
//! time each. Counting launches is blind to where between the polls they ran, so neither
//! shape fools it. Since the watcher learns that launches finished only at the poll after
//! (for the legacy stream, only when the whole queue has drained), what they are counted
//! may come ticks after they ran; it is charged against the time the process had work in
//! flight in the ticks before ([`Charge`]), never more than that: launches of several
//! streams running side by side are charged the wall time they shared, once.

/// The weight of a new sample in a stream's average launch time.
const SAMPLE_WEIGHT: f64 = 0.1;

/// The time a stream's launches take on the GPU, from sampled launches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LaunchSamples {
    average_ns: Option<f64>,
}

impl LaunchSamples {
    /// Adds one timed launch: it took `elapsed_ns` of wall time on the GPU while
    /// `sharing` processes (this one included, at least 1) had work in flight there, each
    /// getting an equal part of the time.
    pub fn add(&mut self, elapsed_ns: u64, sharing: u64) {
        #[allow(clippy::cast_precision_loss)]
        let own = elapsed_ns as f64 / sharing.max(1) as f64;
        self.average_ns = Some(match self.average_ns {
            Some(average) => average + SAMPLE_WEIGHT * (own - average),
            None => own,
        });
    }

    /// The GPU time one launch takes, nanoseconds (`None` before the first sample).
    pub fn per_launch_ns(&self) -> Option<f64> {
        self.average_ns
    }

    /// The GPU time `launches` take.
    pub fn time_of(&self, launches: u64) -> Option<u64> {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        self.average_ns
            .map(|ns| (ns * launches as f64).round().max(0.0) as u64)
    }
}

/// How much of the time a process had work in flight may go unused by its counted
/// launches and still take launches counted later: about as long as launches can stay
/// unseen (the legacy stream is seen finished only once it drains).
const MAX_ALLOWANCE_NS: u64 = 50_000_000;
/// How far counted time may run ahead of the time in flight that can hold it (launches
/// counted at more than they took: samples of a slower phase of the program).
const MAX_AHEAD_NS: u64 = 10_000_000;

/// What one tick saw of a process's work on one GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickUse {
    /// The tick's length.
    pub tick_ns: u64,
    /// Work was in flight at the poll before, and at this one.
    pub busy_before: bool,
    pub busy_after: bool,
    /// Launches seen finished at this poll.
    pub finished: u64,
    /// What those launches took, per their streams' samples; `None` if a stream with
    /// launches finished has no sample yet.
    pub counted_ns: Option<u64>,
    /// Processes (this one included) with work in flight on the GPU, which share its time.
    pub sharing: u64,
}

/// The GPU time charged to one process on one GPU, tick by tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Time in flight not yet taken by counted launches.
    allowance_ns: u64,
    /// Counted time not yet charged.
    pending_ns: u64,
}

impl Charge {
    /// What to charge for `tick`.
    pub fn tick(&mut self, tick: TickUse) -> u64 {
        let sharing = tick.sharing.max(1);
        let Some(counted) = tick.counted_ns else {
            // Launches without a sample: the polled estimate, half of the tick for each
            // poll that saw work in flight.
            *self = Charge::default();
            let halves = u64::from(tick.busy_before) + u64::from(tick.busy_after);
            return tick.tick_ns * halves / 2 / sharing;
        };
        // Any work that ran in the tick ran in flight at one of its polls, or started
        // and finished between them (then it is among the finished).
        let active = tick.busy_before || tick.busy_after || tick.finished > 0;
        if active {
            self.allowance_ns = self
                .allowance_ns
                .saturating_add(tick.tick_ns / sharing)
                .min(MAX_ALLOWANCE_NS);
        }
        // Launches counted late (a queue seen finished only once it drained) may take
        // all the allowance at once; what is left beyond it waits, for a while.
        self.pending_ns = self
            .pending_ns
            .saturating_add(counted)
            .min(MAX_AHEAD_NS.max(self.allowance_ns));
        let charged = self.pending_ns.min(self.allowance_ns);
        self.pending_ns -= charged;
        self.allowance_ns -= charged;
        charged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 500_000;

    fn tick(busy_before: bool, busy_after: bool, finished: u64, counted: Option<u64>) -> TickUse {
        TickUse {
            tick_ns: TICK,
            busy_before,
            busy_after,
            finished,
            counted_ns: counted,
            sharing: 1,
        }
    }

    #[test]
    fn launch_samples_average_and_scale_by_count() {
        let mut samples = LaunchSamples::default();
        assert_eq!(samples.time_of(3), None);
        samples.add(200_000, 1);
        assert_eq!(samples.time_of(3), Some(600_000));
        // A launch that shared the GPU with another process took twice as long in wall
        // time for the same work.
        samples.add(400_000, 2);
        assert_eq!(samples.time_of(1), Some(200_000));
        samples.add(300_000, 1);
        assert_eq!(samples.time_of(10), Some(2_100_000));
    }

    #[test]
    fn without_samples_the_polled_estimate_charges_half_a_tick_per_busy_poll() {
        let mut charge = Charge::default();
        assert_eq!(charge.tick(tick(false, true, 0, None)), TICK / 2);
        assert_eq!(charge.tick(tick(true, true, 0, None)), TICK);
        assert_eq!(charge.tick(tick(true, false, 4, None)), TICK / 2);
        assert_eq!(charge.tick(tick(false, false, 0, None)), 0);
        let shared = TickUse {
            sharing: 2,
            ..tick(true, true, 0, None)
        };
        assert_eq!(charge.tick(shared), TICK / 2);
    }

    /// The loop that synchronizes after each short kernel: the polls see work in flight
    /// at every tick, but its kernels ran a third of the time.
    #[test]
    fn a_loop_that_runs_dry_between_polls_is_charged_what_its_kernels_ran() {
        let mut charge = Charge::default();
        let mut total = 0;
        for _ in 0..100 {
            // 5 launches of 30 µs finish each tick.
            total += charge.tick(tick(true, true, 5, Some(150_000)));
        }
        assert_eq!(total, 100 * 150_000);
    }

    /// The loop held at its gate: 1.37 ms of kernels right after the gate opens, seen in
    /// flight by two polls only, finished at the third. The polled estimate charged 1.06
    /// ms of each 1.37.
    #[test]
    fn a_gated_loop_is_charged_its_whole_work_whatever_the_polls_saw() {
        let mut charge = Charge::default();
        let mut total = 0;
        for _ in 0..50 {
            total += charge.tick(tick(false, true, 0, Some(0)));
            total += charge.tick(tick(true, true, 0, Some(0)));
            total += charge.tick(tick(true, false, 8, Some(1_370_000)));
            for _ in 0..5 {
                total += charge.tick(tick(false, false, 0, Some(0)));
            }
        }
        assert_eq!(total, 50 * 1_370_000);
    }

    /// Launches of two streams side by side: counted at twice the time in flight, charged
    /// the time in flight once.
    #[test]
    fn counted_time_never_exceeds_the_time_in_flight() {
        let mut charge = Charge::default();
        let mut total = 0;
        for _ in 0..1000 {
            total += charge.tick(tick(true, true, 4, Some(2 * TICK)));
        }
        assert_eq!(total, 1000 * TICK);
    }

    /// Time in flight long past (an idle stretch, a stream that was busy and counted
    /// nothing for long) cannot hold launches counted much later.
    #[test]
    fn unused_time_in_flight_is_kept_only_for_a_while() {
        let mut charge = Charge::default();
        for _ in 0..1000 {
            assert_eq!(charge.tick(tick(true, true, 0, Some(0))), 0);
        }
        assert_eq!(
            charge.tick(tick(true, false, 1, Some(10 * MAX_ALLOWANCE_NS))),
            MAX_ALLOWANCE_NS
        );
    }

    #[test]
    fn sharing_the_gpu_divides_the_time_in_flight() {
        let mut charge = Charge::default();
        let shared = TickUse {
            sharing: 2,
            ..tick(true, true, 2, Some(TICK))
        };
        let mut total = 0;
        for _ in 0..10 {
            total += charge.tick(shared);
        }
        assert_eq!(total, 10 * TICK / 2);
    }
}
