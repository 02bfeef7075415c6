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
//!
//! Sampling estimates the average launch, which is noisy where launches differ widely: one
//! 20 ms kernel among 200 of 20 µs is rarely the one timed, and a 30%-limited loop of them
//! got 58% of the simulated GPU. So a tick is also charged at least its whole length when a
//! stream was busy throughout it, with the same work (the watcher's marker behind it not
//! reached at either poll, or, on a legacy stream, work in flight at both polls and no
//! launch between them); what that charged ahead of the count is taken off the count of
//! the launches that ran through those ticks, so that nothing is charged twice, and what
//! is left of it once they are all counted is dropped (their count was short). The launches
//! that ran outside such ticks are counted at the average of the timed launches that also did
//! (each timed launch filed as its launch is counted): with one average for all, the long
//! kernel's samples raised what the short launches were counted at (to about 120 µs, the
//! mean of the mix) and charged its time a second time, spread over them. Measured on the
//! simulated GPU (limit 30%, created and legacy stream, 6 runs each): one 20 ms kernel in 200
//! of 20 µs got 25-32% before, 28-31% after; one 2 ms kernel in 20 of 20 µs got 18-27%
//! before, 31-38% after (the part of a 2 ms kernel its whole ticks miss is still charged only
//! through the average; branch residual-charge charges ticks busy throughout whole as they
//! pass and counts launches at what timed ones ran outside them, which held that mix at
//! 31-34% but charged short-heavy mixes 5-15% more than they ran on this machine, whose
//! preempted launching thread stretches the events around short kernels on an idle stream:
//! for a GPU to decide). Counting the launches that ran through those ticks at an average of
//! their own kind instead was worse (18-23% for the 2 ms mix: it has few samples, and only
//! the counts above the ticks' charge are charged, so its noise charges more, never less),
//! and so was giving back what the ticks charged beyond the count (31-37%: the long kernel is
//! timed less often than its share of launches). And where the timed launches of every
//! stream find it busy (a queue that never runs dry, where its time in flight is what its
//! kernels ran), the polled estimate is the least a tick is charged, which keeps the
//! average launch's noise from undercharging it: kernels of 2 ms and 20 µs mixed, 4 in
//! flight, limited to 30%, got 24 to 34% of the simulated GPU without it.

/// What the launching thread saw around a timed launch (`hooks::launch::timed`): how long
/// recording the first event took, then the launch call, then recording the second event,
/// and whether each event was found reached right after. The GPU stamps the first event
/// when it reaches it and the second when the launch's work is done; [`TimedSpan::not_run_ns`]
/// is the part of the time between them that was not the launch's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimedSpan {
    /// Recording the first event.
    pub record_ns: u64,
    /// The launch call.
    pub call_ns: u64,
    /// The first event was reached when the launch call had returned: the stream was idle.
    pub found_idle: bool,
    /// From the launch call's return (and the first query) to the second event's
    /// recording's return.
    pub tail_ns: u64,
    /// The second event was reached as soon as it was recorded: the work had ended before.
    pub ended_before: bool,
    /// How long the launch call just before it took, untimed (`None`: not measured).
    pub reference_call_ns: Option<u64>,
}

/// The most taken off a timed launch for the first event's recording and the launch call:
/// about 3.5 µs on an H100, 6 µs at times under load.
pub const LEAD_MOST_NS: u64 = 10_000;
/// The most taken off for one event's recording alone, about 1 µs.
pub const RECORD_MOST_NS: u64 = 5_000;

impl TimedSpan {
    /// What of the time between the two events the launch's work did not run.
    ///
    /// On an idle stream the GPU reaches the first event as soon as it is recorded, and
    /// the launch's work only once the launch call has submitted it and the GPU has started
    /// it: all of that lead was idle. (Taking off only the recording left 1024² matmuls
    /// synchronized one by one, 7 µs each on an H100, charged 8.6 µs: a 30% limit held them
    /// at 24.7% in NVML; taking off the launch call too, 27.6-29.1%, and 2048² matmuls went
    /// from 28.7-28.9% to 30.7-31.5%.) On a busy stream the first event is reached when the
    /// work before it ends, when the launch starts: nothing to take off. Likewise at the
    /// other end: a kernel shorter than the launch call has ended before the second event
    /// is recorded, which the GPU then reaches as soon as it is recorded.
    ///
    /// The launching thread's clock is the tenant's, and its calls can be stretched after
    /// their work reached the GPU (a signal handler, or a driver-API callback, run on that
    /// thread), which would take the kernel's own time off its sample. So each part is
    /// taken off only up to what it honestly takes (`LEAD_MOST_NS`, `RECORD_MOST_NS`); where
    /// the kernel had ended before the second event was recorded, the launch call is not
    /// taken off at all (the kernel may have run all through it: stretched, a 7 µs kernel
    /// would otherwise be timed at nothing), only the recordings; and the watcher never
    /// takes off more than half of what the events measured (`timed_launch_ran_ns`). Nor is more
    /// of the call taken off than twice what the untimed launch just before it took
    /// (`reference_call_ns`: a tenant cannot tell that one from any other), which keeps a
    /// stretch made only where a launch is timed (a driver-API callback sees the shim record
    /// the first event) to about one honest call. What a tenant that stretches every launch
    /// call can still take off its kernels is the call's part of `LEAD_MOST_NS`, on kernels
    /// that outlast the stretched call. A stream whose earlier
    /// work ends during the launch call looks idle too although the kernel may have started
    /// at once; what that takes off wrongly is within the same bound.
    pub fn not_run_ns(self) -> u64 {
        let lead = match (self.found_idle, self.ended_before) {
            (false, _) => 0,
            (true, true) => self.record_ns.min(RECORD_MOST_NS),
            (true, false) => self.idle_lead_ns().min(LEAD_MOST_NS),
        };
        let tail = if self.ended_before {
            self.tail_ns.min(RECORD_MOST_NS)
        } else {
            0
        };
        lead.saturating_add(tail)
    }

    /// Whether the lead took longer than an honest one does (`LEAD_MOST_NS`): the
    /// launching thread was preempted between the first event and the launch's
    /// submission (or stretched its call), so how much of the lead the GPU spent idle is
    /// not known, and the sample would be charged up to all of the excess
    /// ([`keep_timed_launch`]).
    pub fn lead_unsure(self) -> bool {
        self.found_idle && !self.ended_before && self.idle_lead_ns() > LEAD_MOST_NS
    }

    /// The first event's recording and the launch call (as far as it is honest): what an
    /// idle stream's GPU idled through before the kernel, uncapped.
    fn idle_lead_ns(self) -> u64 {
        self.record_ns.saturating_add(self.honest_call_ns())
    }

    /// The launch call, at most what an untimed one took twice over, and 1 µs: a call
    /// stretched only where it is timed (a driver-API callback sees the shim record the
    /// timed launch's first event) is not taken off beyond that.
    fn honest_call_ns(self) -> u64 {
        match self.reference_call_ns {
            Some(reference) => self.call_ns.min(
                reference
                    .saturating_mul(2)
                    .max(reference.saturating_add(1_000)),
            ),
            None => self.call_ns,
        }
    }
}

/// What a timed launch ran, of `measured_ns` between its events, `not_run_ns` of which
/// the launching thread said was not its work (`TimedSpan::not_run_ns`): never less than
/// half, since that thread's clock is the tenant's.
pub fn timed_launch_ran_ns(measured_ns: u64, not_run_ns: u64) -> u64 {
    measured_ns.saturating_sub(not_run_ns.min(measured_ns / 2))
}

/// Timed launches in a row of one stream whose lead is unsure that are left out before
/// one is kept all the same.
pub const UNSURE_LEFT_OUT_MOST: u32 = 3;

/// Whether a timed launch counts in its stream's samples, where `unsure_in_a_row` timed
/// launches before it were left out. One whose launching thread was preempted between
/// its first event and its submission (`TimedSpan::lead_unsure`) measured that wait as
/// kernel time: on the 2-core development machine a third of the timed launches of a
/// loop of 30 µs kernels behind 5 µs launch calls did, by up to 30 µs each, and a 30%
/// limit held the loop at 25-28% of the GPU. Such a launch is left out, and the next
/// one timed instead; but only `UNSURE_LEFT_OUT_MOST` in a row, so that a tenant that
/// stretches every launch call is still sampled (its leads then taken off only up to
/// `LEAD_MOST_NS`, as before).
pub fn keep_timed_launch(lead_unsure: bool, unsure_in_a_row: u32) -> bool {
    !lead_unsure || unsure_in_a_row >= UNSURE_LEFT_OUT_MOST
}

/// The weight of a new sample in a stream's average launch time.
const SAMPLE_WEIGHT: f64 = 0.1;
/// The weight of a new sample in how often a timed launch found its stream idle.
const IDLE_WEIGHT: f64 = 0.05;
/// A stream whose timed launches find it idle less often than this never runs dry, as far
/// as they can tell.
const SATURATED_BELOW: f64 = 0.02;
/// Samples before a stream may count as never running dry.
const SATURATED_AFTER: u32 = 20;

/// The time a stream's launches take on the GPU, from sampled launches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LaunchSamples {
    /// The average of every timed launch...
    average_ns: Option<f64>,
    /// ...and of those that did not run through a tick charged whole.
    uncovered_average_ns: Option<f64>,
    /// How often a timed launch found the stream idle (moving average).
    idle: f64,
    samples: u32,
    /// The longest and shortest recent timed launches, each drifting towards the other by
    /// `SPREAD_DRIFT` a sample, so that one seen a while ago still counts.
    high_ns: f64,
    low_ns: f64,
    /// The moving average of the timed launches that were long (`MIXED_SPREAD` times the
    /// shortest recent one or more, and half the longest or more).
    long_ns: Option<f64>,
}

/// The weight of a new long sample in `LaunchSamples::long_ns`: long launches are timed
/// rarely (one sample in twenty where one launch in twenty is long), so it follows them
/// faster than the average follows every launch.
const LONG_WEIGHT: f64 = 0.25;

/// How far the longest and shortest recent timed launches drift towards each other at each
/// sample: a long kernel timed one sample in twenty (a 2 ms kernel among 20 of 20 µs)
/// keeps the stream mixed until it is timed again.
const SPREAD_DRIFT: f64 = 0.02;
/// A stream whose recent timed launches differ by more than this factor runs launches of
/// widely different lengths (`LaunchSamples::mixed`)...
const MIXED_SPREAD: f64 = 4.0;
/// ...once this many have been timed.
const MIXED_AFTER: u32 = 8;

/// Whether a timed launch ran through a tick charged whole (`LaunchSamples::add`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Covered {
    Yes,
    No,
}

impl LaunchSamples {
    /// Adds one timed launch: it took `elapsed_ns` of wall time on the GPU while that
    /// time was shared `sharing` ways (processes with work in flight there, this one
    /// included, times this process's streams busy there: at least 1), each getting an
    /// equal part of it; `found_idle`: nothing of the stream was left to run when it was
    /// made; `covered`: whether it was among the launches that ran through a tick charged
    /// whole.
    pub fn add(&mut self, elapsed_ns: u64, sharing: u64, found_idle: bool, covered: Covered) {
        self.idle += IDLE_WEIGHT * (f64::from(u8::from(found_idle)) - self.idle);
        self.samples = self.samples.saturating_add(1);
        #[allow(clippy::cast_precision_loss)]
        let own = elapsed_ns as f64 / sharing.max(1) as f64;
        // A launch timed at nothing (shorter than what recording its events took, which is
        // taken off) says nothing of its length; as the shortest it would stay there, since
        // nothing drifts up from zero, and keep the stream mixed for good.
        if own > 0.0 {
            if self.low_ns == 0.0 {
                (self.high_ns, self.low_ns) = (own, own);
            } else {
                self.high_ns = own.max(self.high_ns * (1.0 - SPREAD_DRIFT));
                self.low_ns = own.min(self.low_ns * (1.0 + SPREAD_DRIFT));
            }
        }
        // Long: far above the shortest, and near the longest (a short launch whose events
        // the launching thread's preemption stretched is neither).
        if own > MIXED_SPREAD * self.low_ns.max(1.0) && own >= self.high_ns / 2.0 {
            self.long_ns = Some(match self.long_ns {
                Some(long) => long + LONG_WEIGHT * (own - long),
                None => own,
            });
        }
        moving_average(&mut self.average_ns, own);
        if covered == Covered::No {
            moving_average(&mut self.uncovered_average_ns, own);
        }
    }

    /// Whether the stream's queue never runs dry, as far as its timed launches tell.
    pub fn saturated(&self) -> bool {
        self.samples >= SATURATED_AFTER && self.idle < SATURATED_BELOW
    }

    /// Whether the stream's recent timed launches differ widely in length: then a count of
    /// a few of them at their average says little of what those few took (a long kernel
    /// among short ones is counted as one of the average).
    pub fn mixed(&self) -> bool {
        self.samples >= MIXED_AFTER && self.high_ns > MIXED_SPREAD * self.low_ns.max(1.0)
    }

    /// What a long launch of a mixed stream takes, nanoseconds (`None` where the stream is
    /// not mixed or none was timed).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn long_launch_ns(&self) -> Option<u64> {
        if !self.mixed() {
            return None;
        }
        self.long_ns.map(|ns| ns.round().max(0.0) as u64)
    }

    /// The GPU time one launch takes, nanoseconds (`None` before the first sample).
    pub fn per_launch_ns(&self) -> Option<f64> {
        self.average_ns
    }

    /// The GPU time `launches` take.
    pub fn time_of(&self, launches: u64) -> Option<u64> {
        self.average_ns.map(|ns| times(ns, launches))
    }

    /// The GPU time `launches` take that ran through a tick charged whole (`Covered::Yes`:
    /// at the average of every timed launch, so that their count pays for those ticks as far
    /// as it can) or did not (at the average of such timed launches, or of all before one
    /// was timed).
    pub fn time_of_kind(&self, launches: u64, covered: Covered) -> Option<u64> {
        let average = match covered {
            Covered::Yes => self.average_ns,
            Covered::No => self.uncovered_average_ns.or(self.average_ns),
        };
        average.map(|ns| times(ns, launches))
    }
}

/// What the ticks since the last one that found no covered launch left knew of the run of
/// ticks busy throughout among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RunOfMixed {
    /// Launches of a mixed stream were counted in it (their counts may come at ticks
    /// before the one that finds none left).
    mixed: bool,
    /// The ticks it ran through whole.
    ticks_ns: u64,
    /// What a long launch of its mixed streams takes, the longest (0: not known).
    long_ns: u64,
    /// Its mixed streams' covered launches, counted at what a short one takes.
    short_ns: u64,
    /// Every covered launch of it, counted at its stream's average, mixed or not.
    counted_ns: u64,
    /// How many ticks it ran through whole.
    ticks: u32,
}

/// A run not known to be mixed is charged its ends (`RunOfMixed::with_ends`) only where it
/// ran through this many ticks whole or more: one tick busy throughout with launches timed
/// at nearly nothing is also what a warm-up looks like (on the H100, a neighbour's first
/// launches), and its ends would be charged a tick and a half it did not run.
const WARM_UP_TICKS: u32 = 2;

impl RunOfMixed {
    /// Whether its ends are charged (`run_ends_ns`), and how: a run of a mixed stream; or
    /// one of `WARM_UP_TICKS` whole ticks or more whose launches, counted at their streams'
    /// averages, fill less than half of them, which ran a launch far longer than those
    /// averages: a stream not known to be mixed yet, none of its long launches timed (on
    /// the simulated GPU a 2 ms kernel among 20 µs ones went untimed for 0.75 s once, and
    /// got 45% of the GPU meanwhile under a 30% limit), charged as a mixed run whose long
    /// launch is not known.
    fn with_ends(self) -> Option<RunOfMixed> {
        if self.ticks_ns == 0 {
            None
        } else if self.mixed {
            Some(self)
        } else if self.ticks >= WARM_UP_TICKS && self.counted_ns < self.ticks_ns / 2 {
            Some(RunOfMixed {
                mixed: true,
                long_ns: 0,
                ..self
            })
        } else {
            None
        }
    }
}

/// What a run of mixed launches ran outside the ticks it ran through whole, in the tick
/// before and the tick that found it done (`tick_ns` each, about).
///
/// Where its long launches take two ticks or more (`long_ns`, from the stream's timed long
/// launches), the run is its short launches and that many long ones, the number that comes
/// nearest to filling its whole ticks and one more (the ends take less than two ticks, so
/// that number is the right one); what they took beyond its whole ticks ran at its ends.
/// A run whose long launches are as long as their average is then charged what it ran,
/// whichever part of the ticks on either side it ran in. It is charged no less than what
/// the tick before left uncharged, the most of that tick the run can have had (short
/// launches counted honestly fill the rest), so it is charged at most a tick less than it
/// ran. Otherwise (shorter long launches, which that count gets wrong one way, or none
/// timed yet): that, and half of the last tick, at most half a tick less than it ran.
/// Never more than the two ticks could hold: `lead_in_ns` and a tick. (The tick before is
/// the one that misleads: on an H100, twenty short launches paced by Python came first,
/// over most of that tick, and the long one only after; charged as if it had started with
/// them, a 30% limit gave 26.1-26.5%.)
fn run_ends_ns(run: RunOfMixed, tick_ns: u64, lead_in_ns: u64) -> u64 {
    let most = lead_in_ns.saturating_add(tick_ns);
    if run.long_ns < LONG_IN_TICKS.saturating_mul(tick_ns) || run.ticks_ns == 0 {
        return (tick_ns / 2).saturating_add(lead_in_ns).min(most);
    }
    let midway = run
        .ticks_ns
        .saturating_add(tick_ns)
        .saturating_sub(run.short_ns);
    let longs = (midway.saturating_add(run.long_ns / 2) / run.long_ns).max(1);
    longs
        .saturating_mul(run.long_ns)
        .saturating_add(run.short_ns)
        .saturating_sub(run.ticks_ns)
        .max(lead_in_ns)
        .min(most)
}

/// Long launches of at least this many ticks are what `run_ends_ns` counts a run in: the
/// ends of a run take less than two ticks, so the number of them that comes nearest is the
/// right one. Shorter ones are miscounted one way, systematically (a run that ran more than
/// half a long launch into its last tick was counted one short).
const LONG_IN_TICKS: u64 = 2;

fn moving_average(average: &mut Option<f64>, sample: f64) {
    *average = Some(match *average {
        Some(average) => average + SAMPLE_WEIGHT * (sample - average),
        None => sample,
    });
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn times(per_launch_ns: f64, launches: u64) -> u64 {
    (per_launch_ns * launches as f64).round().max(0.0) as u64
}

/// How much of the time a process had work in flight may go unused by its counted
/// launches and still take launches counted later: about as long as launches can stay
/// unseen (the legacy stream is seen finished only once it drains).
const MAX_ALLOWANCE_NS: u64 = 50_000_000;
/// How far counted time may run ahead of the time in flight that can hold it (launches
/// counted at more than they took: samples of a slower phase of the program).
const MAX_AHEAD_NS: u64 = 10_000_000;
/// How much time charged for busy ticks may wait to be matched by counted launches (a
/// long kernel is counted when it finishes).
const MAX_PREPAID_NS: u64 = 1_000_000_000;

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
    /// Some stream of the process was busy with the same work from one poll to the other:
    /// the whole tick was the process's (its part of it, while shared).
    pub busy_throughout: bool,
    /// What launches that ran through such ticks took, per their samples, counted now
    /// (not in `counted_ns`); and whether none such is left unfinished.
    pub covered_ns: u64,
    pub covered_done: bool,
    /// Every stream with work in this tick never runs dry (`LaunchSamples::saturated`):
    /// the polled estimate is at most what its kernels ran.
    pub saturated: bool,
    /// Some launches in `covered_ns` are of a stream whose launches differ widely in
    /// length (`LaunchSamples::mixed`): their count says little of what they took.
    pub covered_mixed: bool,
    /// What a long launch of that stream takes (`LaunchSamples::long_launch_ns`; the
    /// longest of such streams'), where known.
    pub covered_long_ns: Option<u64>,
}

/// The GPU time charged to one process on one GPU, tick by tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Time in flight not yet taken by counted launches.
    allowance_ns: u64,
    /// Counted time not yet charged.
    pending_ns: u64,
    /// Time charged for ticks busy throughout ahead of the launches that ran in them,
    /// which pay it back when they are counted.
    prepaid_ns: u64,
    /// Time charged for ticks of a saturated queue ahead of its count, which the launches
    /// counted next pay back.
    prepaid_saturated_ns: u64,
    /// What the work in flight at the end of the latest tick ahead of a run of ticks busy
    /// throughout may have run of it uncharged: what that tick's charge fell short of it.
    lead_in_ns: u64,
    /// The run of ticks busy throughout since the last tick that found none covered left.
    run: RunOfMixed,
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
        // Launches that ran through ticks charged whole pay for those first; what is left
        // of that once they are all counted was charged beyond their count, and is given
        // back (the ticks charged whole only bring forward what their count charges: a
        // floor that stayed would charge every error of the count that falls short, and
        // none that goes over, so mixes got less than their limit).
        // A mixed count repays nothing: the run's ticks stand for it (below).
        let (repaid, beyond) = if tick.covered_mixed {
            (0, 0)
        } else {
            let repaid = tick.covered_ns.min(self.prepaid_ns);
            (repaid, tick.covered_ns - repaid)
        };
        self.prepaid_ns -= repaid;
        self.run.counted_ns = self.run.counted_ns.saturating_add(tick.covered_ns);
        if tick.covered_mixed {
            self.run.mixed = true;
            self.run.long_ns = self.run.long_ns.max(tick.covered_long_ns.unwrap_or(0));
            self.run.short_ns = self.run.short_ns.saturating_add(tick.covered_ns);
        }
        let mut ends_ns = 0;
        if tick.covered_done {
            // Launches of widely different lengths are charged the ticks they ran through
            // and what they ran of the ticks on either side (`run_ends_ns`), not their
            // count: a 2 ms kernel among 20 µs ones, two to a queue, was counted as one or
            // two average launches (0.3-0.5 ms of each 2) and got 41% of the GPU under a 30%
            // limit. Whether the run had whole ticks is its own, not what is left of their
            // charge: another stream's count may have paid that back first.
            if let Some(run) = self.run.with_ends() {
                ends_ns = run_ends_ns(run, tick.tick_ns / sharing, self.lead_in_ns);
            }
            self.prepaid_ns = 0;
            self.run = RunOfMixed::default();
        }
        // The rest pays for what a saturated queue's ticks were charged ahead of it.
        let counted = counted.saturating_add(beyond).saturating_add(ends_ns);
        let repaid = counted.min(self.prepaid_saturated_ns);
        self.prepaid_saturated_ns -= repaid;
        // Launches counted late (a queue seen finished only once it drained) may take
        // all the allowance at once; what is left beyond it waits, for a while.
        self.pending_ns = self
            .pending_ns
            .saturating_add(counted - repaid)
            .min(MAX_AHEAD_NS.max(self.allowance_ns));
        let mut charged = self.pending_ns.min(self.allowance_ns);
        self.pending_ns -= charged;
        self.allowance_ns -= charged;
        // The least the tick is charged, and what pays back what it charges ahead.
        let halves = u64::from(tick.busy_before) + u64::from(tick.busy_after);
        let floor = if tick.busy_throughout {
            Some((tick.tick_ns / sharing, &mut self.prepaid_ns, MAX_PREPAID_NS))
        } else if tick.saturated {
            let polled = tick.tick_ns * halves / 2 / sharing;
            Some((polled, &mut self.prepaid_saturated_ns, MAX_ALLOWANCE_NS))
        } else {
            None
        };
        if tick.busy_throughout {
            self.run.ticks_ns = self.run.ticks_ns.saturating_add(tick.tick_ns / sharing);
            self.run.ticks = self.run.ticks.saturating_add(1);
        }
        if let Some((floor, prepaid, most)) = floor
            && charged < floor
        {
            let ahead = floor - charged;
            charged = floor;
            self.allowance_ns = self.allowance_ns.saturating_sub(ahead);
            *prepaid = prepaid.saturating_add(ahead).min(most);
        }
        // Only a tick ahead of a run: one after it, while its launches are still being
        // counted, is not what the run's work began in.
        if !tick.busy_throughout && self.prepaid_ns == 0 {
            let in_flight = if tick.busy_after {
                tick.tick_ns / sharing
            } else {
                0
            };
            self.lead_in_ns = in_flight.saturating_sub(charged);
        }
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
            busy_throughout: false,
            covered_ns: 0,
            covered_done: true,
            saturated: false,
            covered_mixed: false,
            covered_long_ns: None,
        }
    }

    /// A tick a stream was busy throughout, its launches still running.
    fn through() -> TickUse {
        TickUse {
            busy_throughout: true,
            covered_done: false,
            ..tick(true, true, 0, Some(0))
        }
    }

    /// A run's start in a shallow queue: the gate opens at a poll, five short launches
    /// finish in the tick (100 µs of it), and a long one runs after them through two ticks.
    fn gated_run_start(charge: &mut Charge) -> u64 {
        charge.tick(tick(false, true, 5, Some(100_000)))
            + charge.tick(through())
            + charge.tick(through())
    }

    fn span(
        record_ns: u64,
        call_ns: u64,
        found_idle: bool,
        tail_ns: u64,
        ended_before: bool,
    ) -> TimedSpan {
        TimedSpan {
            record_ns,
            call_ns,
            found_idle,
            tail_ns,
            ended_before,
            reference_call_ns: None,
        }
    }

    #[test]
    fn an_idle_streams_sample_loses_the_recording_and_the_launch_call() {
        for (what, span, not_run) in [
            (
                "busy stream, long kernel",
                span(1_000, 2_500, false, 1_000, false),
                0,
            ),
            (
                "idle stream, long kernel",
                span(1_000, 2_500, true, 1_000, false),
                3_500,
            ),
            (
                "idle stream, kernel ended first",
                span(1_000, 2_500, true, 1_000, true),
                2_000,
            ),
            (
                "busy stream, ended first",
                span(1_000, 2_500, false, 1_000, true),
                1_000,
            ),
        ] {
            assert_eq!(span.not_run_ns(), not_run, "{what}");
        }
    }

    /// The launching thread's clock is the tenant's: calls stretched after their work was
    /// submitted (a signal handler or a driver-API callback on the launching thread) must
    /// not take the kernel's own time off its sample.
    #[test]
    fn a_timed_launch_keeps_at_least_half_of_what_its_events_measured() {
        assert_eq!(timed_launch_ran_ns(10_500, 3_500), 7_000);
        assert_eq!(timed_launch_ran_ns(10_500, 10_000), 5_250);
        assert_eq!(timed_launch_ran_ns(0, 3_500), 0);
    }

    #[test]
    fn a_stretched_launch_call_cannot_take_the_kernel_off_its_sample() {
        // A kernel that outlasts the stretched call: at most the cap.
        assert_eq!(
            span(900_000, 900_000, true, 400_000, false).not_run_ns(),
            LEAD_MOST_NS
        );
        // A short kernel that ended inside the stretched call: the call is not taken off.
        assert_eq!(
            span(1_000, 900_000, true, 400_000, true).not_run_ns(),
            1_000 + RECORD_MOST_NS
        );
        // Only the timed launch's call stretched (by 6 µs): no more of it is taken off than
        // twice what the untimed launch before it took.
        let selective = TimedSpan {
            reference_call_ns: Some(2_300),
            ..span(1_000, 8_300, true, 1_000, false)
        };
        assert_eq!(selective.not_run_ns(), 1_000 + 4_600);
        // Honest: the timed call is like the one before, all of it comes off.
        let honest = TimedSpan {
            reference_call_ns: Some(2_300),
            ..span(1_000, 2_500, true, 1_000, false)
        };
        assert_eq!(honest.not_run_ns(), 3_500);
    }

    /// On a machine of few cores the launching thread is at times preempted between the
    /// first event and the kernel's submission; the events then time the wait as the
    /// kernel's, beyond what can be taken off.
    #[test]
    fn a_timed_launch_whose_thread_was_preempted_before_its_kernel_is_timed_again() {
        let honest = span(700, 5_200, true, 200, false);
        assert!(!honest.lead_unsure());
        let preempted = span(5_000, 16_000, true, 200, false);
        assert!(preempted.lead_unsure());
        // Where the lead is not taken off at all, nothing is unsure about it.
        assert!(!span(5_000, 16_000, false, 200, false).lead_unsure());
        assert!(!span(5_000, 16_000, true, 200, true).lead_unsure());

        assert!(keep_timed_launch(false, 0));
        assert!(keep_timed_launch(false, UNSURE_LEFT_OUT_MOST));
        let kept_after =
            (0..=UNSURE_LEFT_OUT_MOST).position(|before| keep_timed_launch(true, before));
        assert_eq!(
            kept_after,
            Some(UNSURE_LEFT_OUT_MOST as usize),
            "a tenant that stretches every launch call is still sampled"
        );
    }

    #[test]
    fn launch_samples_average_and_scale_by_count() {
        let mut samples = LaunchSamples::default();
        assert_eq!(samples.time_of(3), None);
        samples.add(200_000, 1, true, Covered::No);
        assert_eq!(samples.time_of(3), Some(600_000));
        // A launch that shared the GPU with another process took twice as long in wall
        // time for the same work.
        samples.add(400_000, 2, false, Covered::No);
        assert_eq!(samples.time_of(1), Some(200_000));
        samples.add(300_000, 1, false, Covered::No);
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

    /// One 20 ms kernel among 200 of 20 µs, its samples nearly all of the short ones: the
    /// ticks it runs through are charged whole, its own count (short) pays for part of
    /// them, and the short launches after it are charged in full, not taken to pay for it.
    #[test]
    fn a_long_kernel_rarely_sampled_is_charged_the_ticks_it_ran_through_once() {
        let mut charge = Charge::default();
        let mut total = 0;
        for _ in 0..40 {
            total += charge.tick(through());
        }
        assert_eq!(total, 40 * TICK);
        // It finishes, counted at the average sample (far less than it took): its count
        // fills less than half of its ticks, so its ends are charged too, as a mixed run's
        // whose long launch is not known (half the last tick; the tick before left
        // nothing)...
        total += charge.tick(TickUse {
            covered_ns: 120_000,
            ..tick(true, true, 1, Some(0))
        });
        assert_eq!(total, 40 * TICK + TICK / 2);
        // ...and the short ones after it are charged what they took.
        for _ in 0..10 {
            total += charge.tick(tick(true, true, 20, Some(400_000)));
        }
        assert_eq!(total, 40 * TICK + TICK / 2 + 10 * 400_000);
        // Counted above what its ticks were charged, it is charged the rest too.
        let mut exact = Charge::default();
        let mut total = 0;
        for _ in 0..40 {
            total += exact.tick(through());
        }
        total += exact.tick(TickUse {
            covered_ns: 41 * TICK,
            ..tick(true, false, 1, Some(0))
        });
        assert_eq!(total, 41 * TICK);
    }

    /// The mix's long kernel, timed now and then: its time is charged by the ticks it runs
    /// through, so it must not raise what the short launches outside them are counted at.
    #[test]
    fn launches_outside_ticks_charged_whole_are_counted_at_their_own_average() {
        let mut samples = LaunchSamples::default();
        assert_eq!(samples.time_of_kind(1, Covered::No), None);
        // Before any launch outside such ticks is timed: the average of all.
        samples.add(20_000_000, 1, false, Covered::Yes);
        assert_eq!(samples.time_of_kind(2, Covered::No), Some(40_000_000));
        for _ in 0..10 {
            samples.add(20_000, 1, false, Covered::No);
        }
        samples.add(20_000_000, 1, false, Covered::Yes);
        assert_eq!(samples.time_of_kind(100, Covered::No), Some(2_000_000));
        // The launches that ran through them repay those ticks at the average of all.
        let all = samples.time_of(1).unwrap_or_default();
        assert!(all > 1_000_000 && all < 20_000_000, "{all}");
        assert_eq!(samples.time_of_kind(1, Covered::Yes), Some(all));
    }

    #[test]
    fn a_stream_is_mixed_while_its_recent_timed_launches_differ_fourfold() {
        let mut samples = LaunchSamples::default();
        for _ in 0..MIXED_AFTER {
            samples.add(20_000, 1, false, Covered::No);
        }
        assert!(!samples.mixed(), "alike");
        samples.add(2_000_000, 1, false, Covered::Yes);
        assert!(samples.mixed(), "one long among short ones");
        for _ in 0..100 {
            samples.add(20_000, 1, false, Covered::No);
        }
        assert!(
            samples.mixed(),
            "a long one timed a hundred samples ago still counts"
        );
        for _ in 0..100 {
            samples.add(20_000, 1, false, Covered::No);
        }
        assert!(!samples.mixed(), "none long for two hundred samples");
        let mut noisy = LaunchSamples::default();
        for i in 0..100 {
            noisy.add(
                if i % 2 == 0 { 2_000_000 } else { 2_600_000 },
                1,
                false,
                Covered::No,
            );
        }
        assert!(!noisy.mixed(), "a kernel's own spread is not a mix");
    }

    /// A launch timed at nothing (its events' recording took longer than it ran) was taken
    /// as the shortest, and nothing drifts up from zero: the stream stayed mixed for good.
    #[test]
    fn a_launch_timed_at_nothing_does_not_make_a_stream_mixed_for_good() {
        let mut samples = LaunchSamples::default();
        samples.add(0, 1, true, Covered::No);
        for _ in 0..MIXED_AFTER {
            samples.add(20_000, 1, false, Covered::No);
        }
        assert!(!samples.mixed(), "timed at nothing first");
        samples.add(0, 1, true, Covered::No);
        for _ in 0..10 {
            samples.add(20_000, 1, false, Covered::No);
        }
        assert!(!samples.mixed(), "timed at nothing later");
        samples.add(2_000_000, 1, false, Covered::Yes);
        assert!(samples.mixed(), "a long one among them");
    }

    /// Red team, on the simulated GPU: one 2 ms kernel every 20 of 20 µs, two to a queue,
    /// limited to 30%, got 39-43% of the GPU. The launches that ran through the ticks charged
    /// whole were the long kernel and one short one, counted at two average launches; the
    /// parts of the long kernel in the ticks it started and ended in went uncharged.
    #[test]
    fn a_long_kernel_in_a_shallow_queue_is_charged_its_ticks_and_their_ends() {
        // The long one starts after the short ones (the tick's other 400 µs).
        let run = |mixed: bool, covered_ns: u64| {
            let mut charge = Charge::default();
            let mut total = gated_run_start(&mut charge);
            // It ends in the next tick, with a short one behind it: the two counted at two
            // average launches; two more short ones counted as such.
            total += charge.tick(TickUse {
                covered_ns,
                covered_mixed: mixed,
                ..tick(true, false, 4, Some(40_000))
            });
            total
        };
        // Its ticks (1 ms), what the tick before left (400 µs), half the last (250 µs).
        let with_ends = 100_000 + 2 * TICK + 400_000 + TICK / 2 + 40_000;
        assert_eq!(run(true, 300_000), with_ends);
        // Not known to be mixed yet (its long launch not timed), the same: its count fills
        // less than half of its ticks.
        assert_eq!(run(false, 300_000), with_ends);
        // A stream of launches alike is charged as before: its count, at least its ticks.
        assert_eq!(run(false, 2 * TICK), 100_000 + 2 * TICK + 40_000);

        // The mixed count comes a tick before the one that finds nothing covered left
        // (another stream's covered launches were counted then): the ends still count,
        // and that stream's count repays what the run's ticks charged ahead.
        let mut charge = Charge::default();
        let mut total = gated_run_start(&mut charge);
        total += charge.tick(TickUse {
            covered_ns: 300_000,
            covered_mixed: true,
            covered_done: false,
            ..tick(true, true, 2, Some(40_000))
        });
        total += charge.tick(TickUse {
            covered_ns: 50_000,
            ..tick(true, false, 0, Some(0))
        });
        assert_eq!(total, 100_000 + 2 * TICK + 40_000 + 400_000 + TICK / 2);
    }

    /// Where the stream's long launch is known, a run is charged what that many long
    /// launches took, whichever part of the ticks on either side it ran in: the H100's
    /// shape (short launches paced by the host over most of the tick before, the long one
    /// after them) was charged the tick before as the long kernel's.
    #[test]
    fn a_run_of_known_long_launches_is_charged_their_length_whatever_the_ticks_around_it() {
        const LONG: u64 = 1_500_000;
        // Five short launches finish in the tick the gate opened (100 µs of it), the long
        // one then runs through two ticks and ends in the next, with a short one behind it.
        let run = |long: Option<u64>| {
            let mut charge = Charge::default();
            gated_run_start(&mut charge)
                // The long one and the short one behind it, counted at a short one's
                // 20 µs each; two more short ones counted as such.
                + charge.tick(TickUse {
                    covered_ns: 40_000,
                    covered_mixed: true,
                    covered_long_ns: long,
                    ..tick(true, false, 4, Some(40_000))
                })
        };
        // The short ones before, the long one (its two ticks and 500 µs more) and the short
        // one behind it, the short ones after; the long one's count is among the short
        // ones' too (20 µs too many a long launch).
        assert_eq!(run(Some(LONG)), 100_000 + LONG + 2 * 20_000 + 40_000);
        // Not known (traces from before, or no long launch timed yet): the tick before and
        // half the last.
        assert_eq!(run(None), 100_000 + 2 * TICK + 400_000 + TICK / 2 + 40_000);
    }

    /// Before a stream's long launch is timed it is not known to be mixed, and its long
    /// launch is counted at the short ones' average: a run whose count fills less than half
    /// of its whole ticks is charged its ends all the same; one whose count fills them is
    /// charged by its count, as before.
    #[test]
    fn a_run_its_count_falls_far_short_of_is_charged_its_ends_before_its_stream_is_known_mixed() {
        let run = |covered_ns: u64| {
            let mut charge = Charge::default();
            gated_run_start(&mut charge)
                + charge.tick(TickUse {
                    covered_ns,
                    ..tick(true, false, 4, Some(40_000))
                })
        };
        // The short ones before, the run's two ticks, its ends (what the tick before left
        // and half the last) and the short ones after.
        assert_eq!(
            run(40_000),
            100_000 + 2 * TICK + 400_000 + TICK / 2 + 40_000
        );
        // Launches that fill the ticks they ran through: their count, as before.
        assert_eq!(run(2 * TICK), 100_000 + 2 * TICK + 40_000);
        // A single tick busy throughout with launches timed at nothing (a warm-up): its
        // tick, as before.
        let mut charge = Charge::default();
        let single = charge.tick(tick(false, true, 0, Some(0)))
            + charge.tick(through())
            + charge.tick(tick(true, false, 2, Some(0)));
        assert_eq!(single, TICK);
    }

    /// Two streams ran through the same ticks, one mixed: the other's count, coming last,
    /// paid back the ticks' charge, and the mixed run's ends were dropped with it.
    #[test]
    fn a_mixed_runs_ends_are_charged_when_another_streams_count_repaid_its_ticks() {
        let mut charge = Charge::default();
        let mut total = charge.tick(tick(false, true, 0, Some(0)));
        total += charge.tick(through()) + charge.tick(through());
        total += charge.tick(TickUse {
            covered_ns: 20_000,
            covered_mixed: true,
            covered_done: false,
            ..tick(true, true, 2, Some(0))
        });
        total += charge.tick(TickUse {
            covered_ns: 2 * TICK,
            ..tick(true, false, 8, Some(0))
        });
        // The tick before (nothing of it charged), the run's ticks, and its ends: what the
        // tick before left and half the last.
        assert!(total >= 2 * TICK + TICK + TICK / 2, "charged {total}");
    }

    #[test]
    fn a_mixed_runs_ends_follow_its_long_launches_within_the_ticks_around_it() {
        const MS: u64 = 1_000_000;
        for (what, run_ns, long_ns, lead_in_ns, ends) in [
            ("not known", 2 * TICK, 0, 300_000, TICK / 2 + 300_000),
            (
                "shorter than a tick",
                2 * TICK,
                TICK / 2,
                300_000,
                TICK / 2 + 300_000,
            ),
            (
                "one of 1.5 ms over two ticks",
                2 * TICK,
                3 * MS / 2,
                400_000,
                MS / 2,
            ),
            ("one of 2 ms over three ticks", 3 * TICK, 2 * MS, 0, MS / 2),
            ("two of 1 ms over three ticks", 3 * TICK, MS, 0, MS / 2),
            ("filling its ticks exactly", 4 * TICK, 2 * MS, 0, 0),
            (
                "filling its ticks, the tick before left uncharged",
                4 * TICK,
                2 * MS,
                300_000,
                300_000,
            ),
            // One long launch of 1.5 ticks after short ones over the tick before, ending
            // 0.4 ms into the last: counted at the nearest number it would be one short.
            (
                "between one tick and two",
                2 * TICK,
                3 * TICK / 2,
                100_000,
                TICK / 2 + 100_000,
            ),
            (
                "longer than two ticks could hold",
                TICK,
                3 * MS,
                100_000,
                100_000 + TICK,
            ),
        ] {
            let run = RunOfMixed {
                mixed: true,
                ticks_ns: run_ns,
                long_ns,
                short_ns: 0,
                counted_ns: 0,
                ticks: 0,
            };
            assert_eq!(run_ends_ns(run, TICK, lead_in_ns), ends, "{what}");
        }
    }

    #[test]
    fn a_mixed_stream_knows_its_long_launch_from_its_long_samples() {
        let mut samples = LaunchSamples::default();
        for i in 0..40 {
            let ns = if i % 10 == 9 { 1_500_000 } else { 5_000 };
            samples.add(ns, 1, true, Covered::No);
        }
        assert!(samples.mixed());
        assert_eq!(samples.long_launch_ns(), Some(1_500_000));
        // A short one stretched (its launching thread preempted) is not one of them.
        samples.add(300_000, 1, true, Covered::No);
        assert_eq!(samples.long_launch_ns(), Some(1_500_000));
        // Not mixed: nothing is long.
        let mut alike = LaunchSamples::default();
        for _ in 0..40 {
            alike.add(5_000, 1, true, Covered::No);
        }
        assert_eq!(alike.long_launch_ns(), None);
    }

    #[test]
    fn a_stream_is_saturated_once_its_timed_launches_stop_finding_it_idle() {
        let mut samples = LaunchSamples::default();
        for _ in 0..SATURATED_AFTER - 1 {
            samples.add(100_000, 1, false, Covered::No);
        }
        assert!(!samples.saturated(), "too few samples to say");
        samples.add(100_000, 1, false, Covered::No);
        assert!(samples.saturated());
        samples.add(100_000, 1, true, Covered::No);
        assert!(!samples.saturated(), "one idle in twenty is not never");
    }

    /// Kernels of mixed lengths in a queue that never runs dry, counted below what they
    /// took by an unlucky average: the polled estimate is the least they are charged.
    #[test]
    fn a_saturated_queue_is_charged_at_least_its_time_in_flight() {
        let mut charge = Charge::default();
        let mut total = 0;
        let saturated = TickUse {
            saturated: true,
            ..tick(true, true, 3, Some(TICK / 2))
        };
        for _ in 0..100 {
            total += charge.tick(saturated);
        }
        assert_eq!(total, 100 * TICK);
        // Counted above it, it is charged the count, within the time in flight.
        let mut charge = Charge::default();
        let mut total = 0;
        for _ in 0..100 {
            total += charge.tick(TickUse {
                counted_ns: Some(2 * TICK),
                ..saturated
            });
        }
        assert_eq!(total, 100 * TICK);
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
