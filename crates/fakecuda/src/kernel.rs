//! What simulated kernels do. Kernels are known by name, and the only effect of running one
//! is the time it occupies its stream:
//!
//! - `gpuslice_spin(.u64 ns)` runs for `ns` nanoseconds of GPU time;
//! - `gpuslice_work(.u64 iterations)` runs for [`WORK_NS_PER_ITERATION`] nanoseconds of GPU
//!   time per iteration (on a real GPU it does a fixed amount of work; here the two are the
//!   same, as the simulated GPU's clock never changes);
//! - `gpuslice_noop()` and every other kernel run in zero time.
//!
//! `run` is the one place where a kernel turns into device time. It reads the time and waits
//! through a `Clock`: the real clocks, or in the unit tests simulated time that moves only
//! while a kernel waits, so that they compute what a kernel takes instead of timing it.
//!
//! # Time-slicing
//!
//! A real GPU running kernels of several processes at once time-slices between their
//! contexts, so that each progresses at about its fair part. The simulation is a fluid one:
//! a kernel of `ns` nanoseconds of GPU time progresses, over any span of wall time, by the
//! span divided by `k`, the number of processes executing a kernel on the device at the time
//! (this one included); it ends when its progress reaches `ns`. So two processes each
//! running back-to-back 5 ms kernels complete one every 10 ms each; one alone, every 5 ms.
//!
//! - **Who executes**: a stream marks its process as executing in the device's shared state
//!   file (`ledger.rs`) from the start of a kernel while kernels follow one another without
//!   a gap (event records between them included); the mark goes when the stream has no
//!   kernel ready (an empty queue, a host function, a wait), dated by the stream's clock.
//!   `k` is 1 plus the other processes whose slot is marked, counted by reading the slots,
//!   without a lock. A mark whose heartbeat is more than `ledger::STALE_BEAT_NS` (5 ms) old
//!   is believed only while its owner holds its slot's OFD lock, as for memory; otherwise
//!   the slot is reclaimed, so a process killed mid-kernel stops counting 5 to 7 ms after its
//!   last heartbeat.
//! - **Looking at `k`**: an executing stream looks at `k` when it changes, and at least every
//!   `TICK`. A mark that appears or goes records when (`changed_ns`, the marking stream's
//!   clock) and increments the state file's generation, a futex that wakes every executing
//!   stream of every process at once. A stream credits the wall time since its last look at
//!   `1/k` before the change and `1/k` after it, split at the change's own instant; a change
//!   dated before the last look (its process marked it late, being scheduled late) is
//!   credited back to that instant within the current kernel; several changes between two
//!   looks are split halfway. Between changes a stream sleeps until its kernel's end or the
//!   next tick. The tick (1 ms) only refreshes the heartbeat and catches dead processes
//!   (whose marks go without a wake). Changes being woken at once and dated, a shorter tick
//!   would buy no accuracy, and each look costs a wakeup: about 20 µs of CPU on a small VM,
//!   where a 250 µs tick cost 9% of a CPU per executing process and this costs 2 to 3%.
//! - **Accuracy**: progress is computed from measured wall time, never from nominal sleeps,
//!   so late wakeups on a loaded machine do not accumulate; a kernel's end is interpolated
//!   inside its last span and slept to exactly. With `k` steady, kernels take exactly `k`
//!   times their duration (alone, exactly their duration, as before time-slicing). A change
//!   of `k` is placed at its instant, except that kernels already ended cannot be moved: a
//!   change marked later than the end of another process's kernel is not seen by that
//!   kernel (`tests/timeslice.rs` measures the result).
//! - **Within a process**, kernels on several streams share the process's part: `m` of its
//!   streams executing at once each progress at `1/(k·m)` (a process counts once in `k`
//!   however many of its streams execute), so that a process keeping kernels on three
//!   streams gets through as much kernel time as one keeping them on one. That is how an
//!   H100 runs kernels that fill it (the matmuls of a training step, XLA's streams): side
//!   by side only where each leaves SMs free, which the simulation does not model. Every
//!   stream that starts or stops executing wakes the others, as a change of `k` does.
//! - **Stream clocks and events** keep the computed ends, so `cuEventElapsedTime` around a
//!   kernel shows its stretched wall time, as on real hardware.
//! - **Switching costs**: a real GPU loses time each time it switches between contexts (an
//!   H100 running two matmul loops side by side gets through about 10% less than one alone).
//!   `FAKECUDA_SWITCH_LOSS=P` takes P% off the progress of every kernel while more than one
//!   process executes (fluidly, as the sharing itself), so that what overlaps costs; 0 by
//!   default.
//! - `FAKECUDA_TIMESLICE=off` makes every kernel take its duration of wall time whoever else
//!   executes (the behaviour before time-slicing); such a process marks nothing either.

use std::time::{Duration, Instant};

use gpuslice_ledger::monotonic_ns;

use crate::device::Device;
use crate::error::{CuError, CuResult};
use crate::ledger::Ledger;

/// How often an executing stream looks at how many processes execute on its device when no
/// change wakes it: to refresh its heartbeat and to notice dead processes.
pub const TICK: Duration = Duration::from_millis(1);

/// The kernel that runs for as many nanoseconds as its one `.u64` argument says.
pub const SPIN: &str = "gpuslice_spin";
/// The kernel that does as many rounds of work as its one `.u64` argument says.
pub const WORK: &str = "gpuslice_work";
/// The GPU time one round of `gpuslice_work` takes here: about what an H100 takes for its
/// volatile shared-memory round.
pub const WORK_NS_PER_ITERATION: u64 = 30;
/// The kernel that does nothing.
pub const NOOP: &str = "gpuslice_noop";

/// The behaviour of a kernel, chosen by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `gpuslice_spin`: busy for its argument's nanoseconds.
    Spin,
    /// `gpuslice_work`: busy for [`WORK_NS_PER_ITERATION`] per round of its argument.
    Work,
    /// Any other kernel (`gpuslice_noop` included): zero time.
    Instant,
}

impl Kernel {
    /// The behaviour of the kernel called `name`.
    pub fn from_name(name: &str) -> Kernel {
        match name {
            SPIN => Kernel::Spin,
            WORK => Kernel::Work,
            _ => Kernel::Instant,
        }
    }

    /// Whether the launch must pass a first `.u64` argument.
    pub fn needs_u64_argument(self) -> bool {
        matches!(self, Kernel::Spin | Kernel::Work)
    }

    /// How long one launch runs, given its first `.u64` argument (if it has one).
    pub fn duration(self, first_u64: Option<u64>) -> CuResult<Duration> {
        match self {
            Kernel::Spin => first_u64
                .map(Duration::from_nanos)
                .ok_or(CuError::InvalidValue),
            Kernel::Work => first_u64
                .map(|rounds| Duration::from_nanos(rounds.saturating_mul(WORK_NS_PER_ITERATION)))
                .ok_or(CuError::InvalidValue),
            Kernel::Instant => Ok(Duration::ZERO),
        }
    }
}

/// The time kernels run on: the real clocks, or in tests a simulated time that moves only
/// while a kernel waits, so that what a kernel takes is computed, never timed.
pub(crate) trait Clock {
    /// Now, on the two clocks a kernel needs: its stream's (`Instant`) and the shared state
    /// file's (`CLOCK_MONOTONIC` nanoseconds).
    fn now(&self) -> (Instant, u64);
    /// Waits until `ledger`'s executing generation is no longer `seen`, at most `timeout`.
    fn wait_for_change(&mut self, ledger: &Ledger, seen: u32, timeout: Duration);
}

/// The real clocks.
#[derive(Debug)]
pub(crate) struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> (Instant, u64) {
        (Instant::now(), monotonic_ns())
    }

    fn wait_for_change(&mut self, ledger: &Ledger, seen: u32, timeout: Duration) {
        ledger.wait_for_change(seen, timeout);
    }
}

/// `at` on the `CLOCK_MONOTONIC` nanosecond clock of the shared state file, given that clock
/// and `Instant` read together now.
fn ns_at(at: Instant, now: Instant, now_ns: u64) -> u64 {
    if at <= now {
        now_ns.saturating_sub(nanos(now - at))
    } else {
        now_ns.saturating_add(nanos(at - now))
    }
}

/// Who a kernel shares the device with at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sharers {
    /// The processes executing on the device, this one included (`k`).
    processes: u32,
    /// This process's streams executing on the device, this one included (`m`).
    streams: u32,
}

impl Sharers {
    const ALONE: Sharers = Sharers {
        processes: 1,
        streams: 1,
    };
}

/// A stream's place among the processes executing kernels on a device: this process's mark
/// in the device's state file, held while the stream executes kernels back to back and
/// removed by `end` (or when dropped), and what the stream last saw of the device.
#[derive(Debug)]
pub struct Share {
    device: &'static Device,
    slot: Option<usize>,
    /// Who shared the device at the last look.
    k: Sharers,
    /// The state file's executing generation at the last look.
    generation: u32,
}

impl Share {
    /// Marks this process as executing on `device` from `at` (a stream's clock, not after
    /// now).
    pub fn begin(device: &'static Device, at: Instant) -> Share {
        Share::begin_on(device, at, &RealClock)
    }

    /// [`Share::begin`] at `clock`'s now.
    fn begin_on(device: &'static Device, at: Instant, clock: &impl Clock) -> Share {
        let ledger = device.ledger();
        let (now, now_ns) = clock.now();
        let slot = ledger.begin_executing(now_ns, ns_at(at, now, now_ns));
        let mut share = Share {
            device,
            slot,
            k: Sharers::ALONE,
            generation: ledger.executing_generation().0,
        };
        share.k = share.executing(now_ns);
        share
    }

    /// Removes the mark: this process stopped executing at `at` (a stream's clock).
    pub fn end(mut self, at: Instant) {
        self.end_at(at, &RealClock);
    }

    fn end_at(&mut self, at: Instant, clock: &impl Clock) {
        if let Some(slot) = self.slot.take() {
            let ledger = self.device.ledger();
            let (now, now_ns) = clock.now();
            ledger.end_executing(slot, ns_at(at, now, now_ns));
        }
    }

    /// Refreshes this process's heartbeat and counts the processes executing on the device
    /// and this process's streams executing there, this one included in each.
    fn executing(&self, now_ns: u64) -> Sharers {
        let ledger = self.device.ledger();
        let streams = self.slot.map_or(1, |slot| {
            ledger.beat(slot, now_ns);
            ledger.streams_executing(slot).max(1)
        });
        Sharers {
            processes: 1 + ledger.others_executing(self.slot, now_ns),
            streams,
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.end_at(Instant::now(), &RealClock);
    }
}

/// Runs a kernel of `duration` that the stream could start at `start` (the later of its
/// launch and the end of the stream's previous work) on `device`; returns when it ends, on
/// the stream's clock. With a time-sliced device, `share` is the stream's mark (begun here at
/// `start` if `None`), which the caller keeps while more kernels follow at once; without
/// one, or for a kernel of no time, the kernel takes `duration` of wall time (`run_alone`).
pub fn run(
    start: Instant,
    duration: Duration,
    device: Option<&'static Device>,
    share: &mut Option<Share>,
) -> Instant {
    run_on(start, duration, device, share, &mut RealClock)
}

/// [`run`] on `clock` (a kernel of no time or without a time-sliced device: on the real one).
fn run_on(
    start: Instant,
    duration: Duration,
    device: Option<&'static Device>,
    share: &mut Option<Share>,
    clock: &mut impl Clock,
) -> Instant {
    let device = match device {
        Some(d) if d.time_sliced && !duration.is_zero() => d,
        _ => return run_alone(start, duration),
    };
    if let Some(other) = share.take_if(|s| !std::ptr::eq(s.device, device)) {
        other.end(start);
    }
    let share = share.get_or_insert_with(|| Share::begin_on(device, start, clock));
    run_shared(start, duration, share, clock)
}

/// Runs a kernel progressing at `1/(k·m)` of wall time: see the module's documentation.
fn run_shared(
    start: Instant,
    duration: Duration,
    share: &mut Share,
    clock: &mut impl Clock,
) -> Instant {
    let ledger = share.device.ledger();
    let slicing = Slicing {
        loss_percent: u128::from(share.device.switch_loss_percent),
    };
    let (now, now_ns) = clock.now();
    let start_ns = ns_at(start, now, now_ns);
    let mut remaining = u128::from(nanos(duration));
    let mut at = start;
    loop {
        let (now, now_ns) = clock.now();
        let (generation, changed_ns) = ledger.executing_generation();
        let k = share.executing(now_ns);
        let before = std::mem::replace(&mut share.k, k);
        let changes = generation.wrapping_sub(std::mem::replace(&mut share.generation, generation));
        if changes == 1 {
            let at_ns = ns_at(at, now, now_ns);
            if changed_ns < at_ns {
                // The change came before the last look (its process marked it late): take
                // back what this kernel was credited since, at 1/before, to credit it at 1/k.
                let back = at_ns - changed_ns.max(start_ns).min(at_ns);
                remaining += slicing.progress(u128::from(back), before);
                at = at.checked_sub(Duration::from_nanos(back)).unwrap_or(at);
            }
        }
        if now > at {
            // (at, now] ran at 1/before until the change of k, at 1/k after it: split at the
            // change's instant if there was one, halfway if several (their instants unknown).
            let elapsed = nanos(now - at);
            let first = match changes {
                0 => elapsed,
                1 => elapsed.saturating_sub(now_ns.saturating_sub(changed_ns)),
                _ => elapsed / 2,
            };
            let mut t = at;
            for (wall, k) in [(first, before), (elapsed - first, k)] {
                let wall = u128::from(wall);
                let credit = slicing.progress(wall, k);
                if credit >= remaining {
                    // The kernel ends in this span, no later than now.
                    let end = slicing.wall_time(remaining, k);
                    return t + Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX));
                }
                remaining -= credit;
                t += Duration::from_nanos(u64::try_from(wall).unwrap_or(u64::MAX));
            }
            at = now;
        }
        // Look again when k changes, at the next tick, or exactly at the end if k stays.
        let to_end = slicing.wall_time(remaining, k);
        let to_end = Duration::from_nanos(u64::try_from(to_end).unwrap_or(u64::MAX));
        clock.wait_for_change(ledger, generation, to_end.min(TICK));
    }
}

/// How a kernel progresses with `k` processes and `m` of its own process's streams
/// executing: at `1/(k·m)` of wall time, less the part lost to switching between processes
/// when `k > 1`.
#[derive(Clone, Copy, Debug)]
struct Slicing {
    loss_percent: u128,
}

impl Slicing {
    /// The progress `wall` nanoseconds buy.
    fn progress(self, wall: u128, k: Sharers) -> u128 {
        let m = u128::from(k.streams.max(1));
        match u128::from(k.processes) {
            0 | 1 => wall / m,
            k => wall * (100 - self.loss_percent) / (100 * k * m),
        }
    }

    /// The wall time `progress` nanoseconds take (the inverse of `progress`, rounded up).
    fn wall_time(self, progress: u128, k: Sharers) -> u128 {
        let m = u128::from(k.streams.max(1));
        match u128::from(k.processes) {
            0 | 1 => progress.saturating_mul(m),
            k => (progress.saturating_mul(100 * k * m)).div_ceil(100 - self.loss_percent),
        }
    }
}

/// A duration in nanoseconds, saturating (at 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs a kernel for `duration` of wall time from `start`, whatever else executes; returns
/// when it ends.
///
/// Ends are computed, not measured, so that back-to-back kernels take exactly the sum of their
/// durations however late the thread wakes up.
pub fn run_alone(start: Instant, duration: Duration) -> Instant {
    let end = start + duration;
    let now = Instant::now();
    if end > now {
        std::thread::sleep(end - now);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharers(processes: u32, streams: u32) -> Sharers {
        Sharers { processes, streams }
    }

    #[test]
    fn switching_loses_its_part_only_while_processes_share_the_device() {
        let lossy = Slicing { loss_percent: 10 };
        assert_eq!(
            lossy.progress(1_000, Sharers::ALONE),
            1_000,
            "alone: nothing lost"
        );
        assert_eq!(lossy.progress(1_000, sharers(2, 1)), 450);
        assert_eq!(lossy.wall_time(450, sharers(2, 1)), 1_000);
        assert_eq!(
            lossy.wall_time(451, sharers(2, 1)),
            1_003,
            "rounded up: never early"
        );
        assert_eq!(
            lossy.progress(1_000, sharers(1, 2)),
            500,
            "own streams: shared, nothing lost"
        );
        assert_eq!(lossy.progress(1_000, sharers(2, 2)), 225);
        let free = Slicing { loss_percent: 0 };
        assert_eq!(free.progress(900, sharers(3, 1)), 300);
        assert_eq!(free.wall_time(300, sharers(3, 1)), 900);
        assert_eq!(free.wall_time(300, sharers(1, 3)), 900);
    }

    #[test]
    fn spin_and_work_take_their_argument_and_everything_else_no_time() {
        assert_eq!(Kernel::from_name("gpuslice_spin"), Kernel::Spin);
        assert_eq!(Kernel::from_name("gpuslice_noop"), Kernel::Instant);
        assert_eq!(Kernel::from_name("matmul"), Kernel::Instant);
        assert_eq!(
            Kernel::Spin.duration(Some(5_000_000)),
            Ok(Duration::from_millis(5))
        );
        assert_eq!(Kernel::Spin.duration(None), Err(CuError::InvalidValue));
        assert_eq!(Kernel::from_name("gpuslice_work"), Kernel::Work);
        assert_eq!(
            Kernel::Work.duration(Some(1000)),
            Ok(Duration::from_nanos(1000 * WORK_NS_PER_ITERATION))
        );
        assert_eq!(Kernel::Work.duration(None), Err(CuError::InvalidValue));
        assert_eq!(Kernel::Instant.duration(None), Ok(Duration::ZERO));
    }

    /// Device 0 of a state directory, opened as by another process: a second opening of the
    /// state file, whose OFD locks conflict with the first's.
    fn device(dir: &std::path::Path) -> &'static Device {
        let sizes = crate::device::Sizes {
            capacity: 1 << 30,
            context_footprint: 0,
            module_footprint: 0,
        };
        Box::leak(Box::new(Device::open(0, sizes, dir, true, 0).unwrap()))
    }

    /// Another process's move, at a time of the simulated clock.
    type Event = (Duration, Box<dyn FnOnce()>);

    /// Simulated time: it moves only while a kernel waits, to the end of its wait or to the
    /// next scripted event (which then happens, as another process's move would wake it).
    struct FakeClock {
        origin: (Instant, u64),
        elapsed: Duration,
        events: Vec<Event>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock {
                origin: (Instant::now(), monotonic_ns()),
                elapsed: Duration::ZERO,
                events: Vec::new(),
            }
        }

        /// Lets `time` pass (this thread doing something else).
        fn advance(&mut self, time: Duration) {
            self.elapsed += time;
        }

        /// `event` happens `after` the start.
        fn at(&mut self, after: Duration, event: impl FnOnce() + 'static) {
            self.events.push((after, Box::new(event)));
            self.events.sort_by_key(|(at, _)| *at);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> (Instant, u64) {
            (
                self.origin.0 + self.elapsed,
                self.origin.1 + nanos(self.elapsed),
            )
        }

        fn wait_for_change(&mut self, ledger: &Ledger, seen: u32, timeout: Duration) {
            if ledger.executing_generation().0 != seen {
                return;
            }
            let until = self.elapsed + timeout;
            if self.events.first().is_some_and(|(at, _)| *at <= until) {
                let (at, event) = self.events.remove(0);
                self.elapsed = self.elapsed.max(at);
                event();
            } else {
                self.elapsed = until;
            }
        }
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_kernel_alone_takes_exactly_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let mut clock = FakeClock::new();
        let mut share = None;
        let t0 = clock.now().0;
        let mut end = t0;
        for _ in 0..5 {
            end = run_on(end, ms(2), Some(dev), &mut share, &mut clock);
        }
        assert_eq!(end - t0, ms(10));
        drop(share);
        assert_eq!(dev.ledger().others_executing(None, monotonic_ns()), 0);
    }

    /// This process's stream, executing on a device from the start of simulated time
    /// (`t0`), and another process executing there too from then (in its slot `slot`).
    struct BesideAnother {
        _dir: tempfile::TempDir,
        ours: &'static Device,
        theirs: &'static Device,
        clock: FakeClock,
        t0: Instant,
        t0_ns: u64,
        slot: usize,
        share: Option<Share>,
    }

    fn beside_another() -> BesideAnother {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (device(dir.path()), device(dir.path()));
        let clock = FakeClock::new();
        let (t0, t0_ns) = clock.now();
        let slot = theirs.ledger().begin_executing(t0_ns, t0_ns).unwrap();
        let share = Some(Share::begin_on(ours, t0, &clock));
        BesideAnother {
            _dir: dir,
            ours,
            theirs,
            clock,
            t0,
            t0_ns,
            slot,
            share,
        }
    }

    impl BesideAnother {
        /// Runs a kernel of `duration` on our stream from `start`; returns its end.
        fn run(&mut self, start: Instant, duration: Duration) -> Instant {
            run_on(
                start,
                duration,
                Some(self.ours),
                &mut self.share,
                &mut self.clock,
            )
        }

        /// The other process stopping, dated `at` after the start.
        fn their_stop(&self, at: Duration) -> impl FnOnce() + 'static {
            let (theirs, slot, t0_ns) = (self.theirs, self.slot, self.t0_ns);
            move || theirs.ledger().end_executing(slot, t0_ns + nanos(at))
        }
    }

    #[test]
    fn a_kernel_progresses_at_half_speed_while_another_process_executes() {
        let mut b = beside_another();
        // The other process stops 2 ms in, dated exactly, and is seen 3 ms in: 1 ms of
        // progress at half speed, then 3 ms alone.
        b.clock.advance(ms(3));
        b.their_stop(ms(2))();
        let end = b.run(b.t0, ms(4));
        assert_eq!(end - b.t0, ms(5));
        // With the other executing throughout (its heartbeat going stale on the way, but its
        // lock held), twice the time.
        let (t1, t1_ns) = b.clock.now();
        assert!(b.theirs.ledger().begin_executing(t1_ns, t1_ns).is_some());
        let end = b.run(t1, ms(3));
        assert_eq!(end - t1, ms(6));
    }

    #[test]
    fn streams_of_one_process_share_its_part_of_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let mut clock = FakeClock::new();
        let t0 = clock.now().0;
        // Two streams of the process start executing at once: a 2 ms kernel on one and a
        // 6 ms kernel on the other progress at half speed until the first ends, 4 ms in, and
        // its stream stops executing; the rest of the second runs alone, to 8 ms. (The
        // second is run after the first here, from the same start: it credits what it ran
        // while the first did at their shared speed.)
        let mut first = Some(Share::begin_on(dev, t0, &clock));
        let mut second = Some(Share::begin_on(dev, t0, &clock));
        let first_end = run_on(t0, ms(2), Some(dev), &mut first, &mut clock);
        first.take().unwrap().end_at(first_end, &clock);
        let second_end = run_on(t0, ms(6), Some(dev), &mut second, &mut clock);
        assert_eq!(first_end - t0, ms(4));
        assert_eq!(second_end - t0, ms(8));
        drop(second);
        assert_eq!(dev.ledger().others_executing(None, monotonic_ns()), 0);
    }

    #[test]
    fn a_change_marked_late_is_credited_from_its_instant() {
        let mut b = beside_another();
        // The other process stops 2 ms in but says so 2 ms later, while this kernel has been
        // looking every millisecond: 1 ms of progress at half speed, then 19 ms alone.
        let stop = b.their_stop(ms(2));
        b.clock.at(ms(4), stop);
        let end = b.run(b.t0, ms(20));
        assert_eq!(end - b.t0, ms(21));
        assert!(
            b.clock.events.is_empty(),
            "the change came while the kernel ran"
        );
    }

    #[test]
    fn noop_kernels_and_unsliced_devices_take_no_shared_time() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let mut share = None;
        let t0 = Instant::now();
        assert_eq!(run(t0, Duration::ZERO, Some(dev), &mut share), t0);
        assert!(share.is_none(), "a no-op kernel marks nothing");
        assert_eq!(
            run(t0, Duration::from_millis(1), None, &mut share),
            t0 + Duration::from_millis(1)
        );
        assert!(share.is_none());
    }

    #[test]
    fn back_to_back_kernels_do_not_accumulate_wakeup_delay() {
        let t0 = Instant::now();
        let mut clock = t0;
        for _ in 0..10 {
            clock = run_alone(clock, Duration::from_millis(2));
        }
        assert_eq!(clock - t0, Duration::from_millis(20));
        assert!(Instant::now() >= clock);
    }
}
