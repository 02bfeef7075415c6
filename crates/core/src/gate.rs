//! The launch gate: one per GPU, opened and closed by the watcher (`watcher.rs`) from the
//! tenant's credit, and passed by every launch with two atomic loads (three more while the
//! launches in flight are bounded).
//!
//! A closed gate makes the launching thread wait, off the fast path: it sleeps on a futex
//! that the watcher bumps every tick while anyone waits, and the time it waited is added to
//! the tenant's throttled time. The gate also bounds how many launches may be unfinished at
//! once (the watcher lowers that bound while a high-priority tenant is active); the first
//! launch to wait on that bound rings the watcher's bell, so that the watcher starts
//! following it at once instead of at its next tick, and it is woken by the first poll that
//! sees a launch finish.
//!
//! It also keeps the watcher's CUDA calls out of the way of stream capture: no stream may be
//! queried or have an event recorded on it while any stream of the process captures (that
//! would break or invalidate the capture), so capture waits for a poll in progress to end,
//! and polls do not start while a capture is open.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use gpuslice_ledger::futex::{self, Scope};
use gpuslice_ledger::{GpuIndex, MAX_GPUS, UsageFile, monotonic_ns};

/// No bound on unfinished launches.
pub const UNBOUNDED: u64 = u64::MAX;

/// A gate's states: launches wait...
const CLOSED: u32 = 0;
/// ...go...
const OPEN: u32 = 1;
/// ...or are refused: nothing measures or opens the gate any more (its watcher could not
/// start, or failed), and a launch let through would run past the tenant's limits.
const BROKEN: u32 = 2;

/// One GPU's gate.
#[derive(Debug)]
pub struct GpuGate {
    /// `OPEN` while the tenant has credit, `CLOSED` while it has none, `BROKEN` once
    /// nothing watches it.
    open: AtomicU32,
    /// Bumped by the watcher each tick while threads wait; what they sleep on.
    generation: AtomicU32,
    waiters: AtomicU32,
    /// Launches that reached the driver on this GPU while their number in flight was
    /// bounded (counted only then: the fast path of an unbounded gate increments nothing
    /// here, the stream's count being enough for the watcher).
    bounded_launches: AtomicU64,
    /// `bounded_launches` as the watcher read it before its last poll of the streams...
    seen: AtomicU64,
    /// ...and the launches that poll found unfinished (streams' counts less what finished).
    unfinished: AtomicU64,
    /// The most launches that may be unfinished at once.
    in_flight_cap: AtomicU64,
    /// When a launch last had to wait (`CLOCK_MONOTONIC` ns).
    waited_at_ns: AtomicU64,
}

impl GpuGate {
    const fn new() -> GpuGate {
        GpuGate {
            open: AtomicU32::new(OPEN),
            generation: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            bounded_launches: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            unfinished: AtomicU64::new(0),
            in_flight_cap: AtomicU64::new(UNBOUNDED),
            waited_at_ns: AtomicU64::new(0),
        }
    }

    /// Whether a launch may go now. The launch fast path: atomic loads, nothing else.
    #[inline]
    pub fn may_pass(&self) -> bool {
        if self.open.load(Relaxed) != OPEN {
            return false;
        }
        let cap = self.in_flight_cap.load(Relaxed);
        cap == UNBOUNDED || self.in_flight() < cap
    }

    /// Launches unfinished as far as the watcher knows, and those made since its last poll.
    /// Launches made while it read the streams may count twice: never fewer than there are.
    fn in_flight(&self) -> u64 {
        // `seen` first: the watcher stores it after `unfinished`, so this reads the
        // `unfinished` of the same poll or a later one (which counts launches since `seen`
        // twice, not none), and a count of launches at least `seen`.
        let seen = self.seen.load(Acquire);
        let unfinished = self.unfinished.load(Acquire);
        let since_poll = self.bounded_launches.load(Acquire).saturating_sub(seen);
        unfinished.saturating_add(since_poll)
    }

    /// Counts a launch that reached the driver, where the number in flight is bounded.
    #[inline]
    pub fn count_launch(&self) {
        if self.in_flight_cap.load(Relaxed) != UNBOUNDED {
            self.bounded_launches.fetch_add(1, Release);
        }
    }

    /// Waits until a launch may go, adding the time waited to the tenant's throttled time;
    /// the first to wait while launches in flight are bounded rings `watcher`. `false`:
    /// the gate is broken, and the launch must be refused.
    #[cold]
    #[inline(never)]
    pub fn wait(&self, usage: &UsageFile, gpu: GpuIndex, watcher: &Bell) -> bool {
        let start = monotonic_ns();
        if self.waiters.fetch_add(1, SeqCst) == 0 && self.in_flight_cap() != UNBOUNDED {
            watcher.ring();
        }
        let may_go = loop {
            self.waited_at_ns.store(monotonic_ns(), Relaxed);
            let generation = self.generation.load(SeqCst);
            if self.may_pass() {
                break true;
            }
            if self.broken() {
                break false;
            }
            futex::wait(
                &self.generation,
                generation,
                Duration::from_millis(2),
                Scope::Process,
            );
        };
        self.waiters.fetch_sub(1, SeqCst);
        usage.add_throttled(gpu, monotonic_ns().saturating_sub(start));
        may_go
    }

    /// Whether nothing watches the gate any more: launches are refused.
    pub fn broken(&self) -> bool {
        self.open.load(SeqCst) == BROKEN
    }

    /// The watcher's side: sets the gate and wakes whoever waits.
    pub fn set(&self, open: bool, in_flight_cap: u64) {
        self.open.store(if open { OPEN } else { CLOSED }, SeqCst);
        self.in_flight_cap.store(in_flight_cap, SeqCst);
        self.wake_waiters();
    }

    /// The watcher's side, before it polls the streams: what it will count launches made
    /// from now on against.
    pub fn start_count(&self) -> u64 {
        self.bounded_launches.load(Acquire)
    }

    /// The watcher's side, after it polled the streams: `unfinished` launches were in
    /// flight, counted from `seen` (what `start_count` said). Whoever waits for one to
    /// finish while the gate is open goes at once, on the gate's last decision, rather than
    /// after the watcher has read the ledger and decided again (the `set` that follows in
    /// the same tick): that takes about as long as a short kernel, for which the GPU would
    /// wait.
    pub fn set_unfinished(&self, unfinished: u64, seen: u64) {
        // In this order: see `in_flight`.
        self.unfinished.store(unfinished, Release);
        self.seen.store(seen, Release);
        if self.may_pass() {
            self.wake_waiters();
        }
    }

    /// Wakes whoever waits, to look at the gate again.
    fn wake_waiters(&self) {
        if self.waiters.load(SeqCst) > 0 {
            self.generation.fetch_add(1, SeqCst);
            futex::wake_all(&self.generation, Scope::Process);
        }
    }

    /// The bound on unfinished launches now.
    pub fn in_flight_cap(&self) -> u64 {
        self.in_flight_cap.load(Relaxed)
    }

    /// When a launch last had to wait (0: never).
    pub fn waited_at_ns(&self) -> u64 {
        self.waited_at_ns.load(Relaxed)
    }

    /// Whether threads wait at it now.
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Relaxed) > 0
    }
}

/// What the watcher sleeps on between ticks: rung by a launch that starts to wait.
#[derive(Debug, Default)]
pub struct Bell {
    rung: AtomicU32,
}

impl Bell {
    /// How often it has been rung (wrapping); pass it to [`Bell::sleep`].
    pub fn rung(&self) -> u32 {
        self.rung.load(SeqCst)
    }

    /// Sleeps for `timeout` unless it was rung since `rung()` said `seen`: `false` if it
    /// slept the whole timeout, `true` if a ring (before or during the sleep) cut it short.
    pub fn sleep(&self, seen: u32, timeout: Duration) -> bool {
        futex::wait(&self.rung, seen, timeout, Scope::Process)
    }

    /// Wakes the sleeper.
    pub fn ring(&self) {
        self.rung.fetch_add(1, SeqCst);
        futex::wake_all(&self.rung, Scope::Process);
    }
}

/// The gates of every GPU of the tenant, the watcher's bell, and the coordination between
/// capture and polls.
#[derive(Debug)]
pub struct LaunchGates {
    gpus: [GpuGate; MAX_GPUS],
    bell: Bell,
    capturing: AtomicU32,
    polling: AtomicBool,
    stopped: AtomicBool,
}

impl Default for LaunchGates {
    fn default() -> Self {
        LaunchGates::new()
    }
}

impl LaunchGates {
    /// All open.
    pub fn new() -> LaunchGates {
        LaunchGates {
            gpus: std::array::from_fn(|_| GpuGate::new()),
            bell: Bell::default(),
            capturing: AtomicU32::new(0),
            polling: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// The gate of `gpu`.
    #[inline]
    pub fn gpu(&self, gpu: u32) -> Option<&GpuGate> {
        self.gpus.get(usize::try_from(gpu).ok()?)
    }

    /// The watcher's bell.
    pub fn bell(&self) -> &Bell {
        &self.bell
    }

    /// Opens every gate (the watcher is stopping at exit: nothing would open them again).
    pub fn open_all(&self) {
        for gate in &self.gpus {
            gate.set(true, UNBOUNDED);
        }
    }

    /// Breaks every gate: the watcher could not start, or failed, so nothing would measure
    /// the tenant's work or close a gate again. Launches are refused from now on, and those
    /// waiting are woken to be refused, rather than let through past the tenant's limits.
    pub fn fail_closed(&self) {
        for gate in &self.gpus {
            gate.open.store(BROKEN, SeqCst);
            gate.wake_waiters();
        }
    }

    /// Before a stream capture begins: no poll may run from now until it ends.
    pub fn begin_capture(&self) {
        self.capturing.fetch_add(1, SeqCst);
        self.wait_for_poll();
    }

    /// After a stream capture ended (or failed to begin).
    pub fn end_capture(&self) {
        let _ = self
            .capturing
            .fetch_update(SeqCst, SeqCst, |c| Some(c.saturating_sub(1)));
    }

    /// Whether some stream of the process captures now (its launches do not run, and the
    /// gate lets them through).
    #[inline]
    pub fn capturing(&self) -> bool {
        self.capturing.load(Relaxed) > 0
    }

    /// The watcher's side: starts a poll unless a capture is open or polls have stopped.
    pub fn start_poll(&self) -> bool {
        self.polling.store(true, SeqCst);
        if self.capturing.load(SeqCst) > 0 || self.stopped.load(SeqCst) {
            self.polling.store(false, SeqCst);
            return false;
        }
        true
    }

    /// At exit: waits for a poll in progress to end and lets none start again (the driver
    /// is about to be torn down). Either the watcher sees `stopped` before it polls, or
    /// this sees its poll and waits for it.
    pub fn stop_polls(&self) {
        self.stopped.store(true, SeqCst);
        self.wait_for_poll();
    }

    /// Whether the process has begun to exit (the watcher stops).
    pub fn polls_stopped(&self) -> bool {
        self.stopped.load(SeqCst)
    }

    /// The watcher's side: the poll is over.
    pub fn end_poll(&self) {
        self.polling.store(false, SeqCst);
    }

    /// Waits until no poll is running (a stream or context is about to be destroyed, or a
    /// capture to begin).
    pub fn wait_for_poll(&self) {
        while self.polling.load(SeqCst) {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::{GpuUuid, Ledger, TenantName};
    use std::sync::Arc;

    /// A tenant's usage file with one GPU, in a ledger that lives as long as the directory.
    fn usage() -> (tempfile::TempDir, Arc<UsageFile>, GpuIndex) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let usage = ledger.open_usage(&TenantName::new("t").unwrap()).unwrap();
        let gpu = usage.register_gpu(&GpuUuid([1; 16])).unwrap();
        (dir, usage, gpu)
    }

    /// A thread that launches on GPU 0 through `wait`; it returns when its launch went.
    fn waiter(
        gates: &Arc<LaunchGates>,
        usage: &Arc<UsageFile>,
        gpu: GpuIndex,
    ) -> std::thread::JoinHandle<u64> {
        let (gates, usage) = (Arc::clone(gates), Arc::clone(usage));
        std::thread::spawn(move || {
            gates.gpu(0).unwrap().wait(&usage, gpu, gates.bell());
            monotonic_ns()
        })
    }

    /// Returns once a launch waits at `gate`.
    fn until_waiting(gate: &GpuGate) {
        while !gate.has_waiters() {
            std::thread::yield_now();
        }
    }

    /// Hole: a watcher that could not start, or failed, left the gates open and the tenant
    /// unlimited. A broken gate refuses: whoever waits is woken and told so, and launches
    /// that come later are refused without waiting.
    #[test]
    fn a_gate_nothing_watches_refuses_launches_instead_of_letting_them_through() {
        let (_dir, usage, gpu) = usage();
        let gates = Arc::new(LaunchGates::new());
        let gate = gates.gpu(0).unwrap();
        gate.set(false, UNBOUNDED);
        let waiting = {
            let (gates, usage) = (Arc::clone(&gates), Arc::clone(&usage));
            std::thread::spawn(move || gates.gpu(0).unwrap().wait(&usage, gpu, gates.bell()))
        };
        until_waiting(gate);
        gates.fail_closed();
        assert!(
            !waiting.join().unwrap(),
            "the waiting launch must be refused"
        );
        assert!(!gate.may_pass() && gate.broken());
        assert!(!gate.wait(&usage, gpu, gates.bell()), "a later launch too");
        // Every GPU's gate, open ones included.
        let open = gates.gpu(1).unwrap();
        assert!(!open.may_pass() && open.broken());
    }

    #[test]
    fn a_closed_gate_holds_a_launch_until_the_watcher_opens_it() {
        let (_dir, usage, gpu) = usage();
        let gates = Arc::new(LaunchGates::new());
        let gate = gates.gpu(0).unwrap();
        assert!(gate.may_pass());
        gate.set(false, 8);
        assert!(!gate.may_pass());
        let waiter = waiter(&gates, &usage, gpu);
        until_waiting(gate);
        let seen_waiting = monotonic_ns();
        // The waiter counts itself waiting before it rings: wait for the ring, not past it.
        assert!(
            gates.bell().sleep(0, Duration::from_secs(10)),
            "the first waiter rings the watcher"
        );
        assert_eq!(
            gates.bell().rung(),
            1,
            "the first waiter rings the watcher once"
        );
        let opened = monotonic_ns();
        gate.set(true, UNBOUNDED);
        let went = waiter.join().unwrap();
        // It waited from before it was seen waiting until it was let through, and its
        // throttled time says so.
        let throttled = usage.throttled_ns(gpu);
        assert!(
            throttled >= opened - seen_waiting && throttled > 0,
            "{throttled}"
        );
        assert!(went >= opened);
    }

    #[test]
    fn the_in_flight_cap_counts_unfinished_launches() {
        let gates = LaunchGates::new();
        let gate = gates.gpu(3).unwrap();
        gate.set(true, 2);
        gate.count_launch();
        assert!(gate.may_pass());
        gate.count_launch();
        assert!(!gate.may_pass());
        // A poll found one of the two unfinished.
        let seen = gate.start_count();
        gate.set_unfinished(1, seen);
        assert!(gate.may_pass());
        gate.count_launch();
        assert!(!gate.may_pass(), "one unfinished, one since the poll");
        assert!(gates.gpu(16).is_none());
    }

    #[test]
    fn launches_made_while_the_streams_are_read_count_twice_not_never() {
        let gates = LaunchGates::new();
        let gate = gates.gpu(0).unwrap();
        gate.set(true, 2);
        let seen = gate.start_count();
        // Launched after the count started, and found unfinished in its stream.
        gate.count_launch();
        gate.set_unfinished(1, seen);
        assert!(!gate.may_pass(), "counted in the stream and since the poll");
        let seen = gate.start_count();
        gate.set_unfinished(1, seen);
        assert!(gate.may_pass(), "the next poll counts it once");
    }

    #[test]
    fn an_unbounded_gate_counts_nothing() {
        let gates = LaunchGates::new();
        let gate = gates.gpu(0).unwrap();
        for _ in 0..100 {
            gate.count_launch();
        }
        assert_eq!(gate.start_count(), 0);
        assert!(gate.may_pass());
        gate.set(false, UNBOUNDED);
        assert!(!gate.may_pass());
    }

    #[test]
    fn a_launch_waiting_for_one_to_finish_goes_at_the_poll_that_sees_it() {
        let (_dir, usage, gpu) = usage();
        let gates = Arc::new(LaunchGates::new());
        let gate = gates.gpu(0).unwrap();
        gate.set(true, 1);
        gate.count_launch();
        let waiter = waiter(&gates, &usage, gpu);
        until_waiting(gate);
        // The poll wakes it (bumps what it sleeps on) rather than leaving it to sleep out
        // its timeout.
        let generation = gate.generation.load(SeqCst);
        gate.set_unfinished(0, gate.start_count());
        assert_ne!(
            gate.generation.load(SeqCst),
            generation,
            "the waiter was woken"
        );
        waiter.join().unwrap();
        assert_eq!(gate.in_flight_cap(), 1);
    }

    #[test]
    fn a_launch_finishing_does_not_let_one_through_a_closed_gate() {
        let (_dir, usage, gpu) = usage();
        let gates = Arc::new(LaunchGates::new());
        let gate = gates.gpu(0).unwrap();
        gate.set(true, 1);
        gate.count_launch();
        gate.set(false, 1);
        let waiter = waiter(&gates, &usage, gpu);
        until_waiting(gate);
        gate.set_unfinished(0, gate.start_count());
        // What the waiter checks each time it wakes: a closed gate keeps it waiting,
        // whatever finished.
        assert!(!gate.may_pass(), "the gate is closed: it still waits");
        assert!(gate.has_waiters());
        gate.set(true, 1);
        waiter.join().unwrap();
    }

    #[test]
    fn a_bell_rung_before_the_sleep_cuts_it_short() {
        let bell = Bell::default();
        let seen = bell.rung();
        bell.ring();
        assert!(
            bell.sleep(seen, Duration::from_secs(5)),
            "it slept out its timeout"
        );
    }

    #[test]
    fn polls_do_not_start_during_a_capture() {
        let gates = LaunchGates::new();
        gates.begin_capture();
        assert!(!gates.start_poll());
        gates.end_capture();
        assert!(gates.start_poll());
        gates.end_poll();
        gates.end_capture();
        assert!(!gates.capturing(), "never below zero");
    }

    #[test]
    fn no_poll_starts_once_polls_have_stopped() {
        let gates = LaunchGates::new();
        assert!(gates.start_poll());
        gates.end_poll();
        gates.stop_polls();
        assert!(!gates.start_poll());
    }
}
