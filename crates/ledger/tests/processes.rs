//! The ledger across real processes: slots of processes that die are reclaimed, processes
//! that share a limit never pass it together, a forked child leaves its parent's slot alone.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::{ChildProcess, ROLE_ENV, SharedCounter, gpu, ledger, publish, tenant, wait_for_file};
use gpuslice_ledger::{Ledger, MAX_SLOTS, ReclaimReport};

const ENTRY: &str = "child_role_runs_only_when_spawned_by_a_test";
const TENANT: &str = "team-a";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// The child side: does nothing in a normal test run; in a child, plays the role it was given.
#[test]
fn child_role_runs_only_when_spawned_by_a_test() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let ledger = Ledger::open_existing(&PathBuf::from(var("LEDGER_DIR"))).unwrap();
    let usage = ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    let ready = PathBuf::from(var("READY_FILE"));
    match role.as_str() {
        // Reserve, report, and wait to be killed.
        "hold" => {
            let bytes: u64 = var("BYTES").parse().unwrap();
            slot.try_reserve(index, bytes, u64::MAX).unwrap();
            publish(&ready, &format!("{}\n", slot.index()));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // Reserve, fork a child that keeps the slot's descriptor (sleeping, or exec'ing a
        // sleep when EXEC is set), report the child's PID, and wait to be killed.
        "hold-and-fork" => {
            slot.try_reserve(index, 8 * MIB, u64::MAX).unwrap();
            let exec = std::env::var_os("EXEC").is_some();
            let sleep = std::ffi::CString::new("/bin/sleep").unwrap();
            let arg = std::ffi::CString::new("600").unwrap();
            // SAFETY: the child only calls async-signal-safe functions (execv, pause, _exit)
            // after abandon_after_fork, which calls nothing.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                slot.abandon_after_fork();
                // SAFETY: plain calls with valid C strings; _exit if exec fails.
                unsafe {
                    if exec {
                        let argv = [sleep.as_ptr(), arg.as_ptr(), std::ptr::null()];
                        libc::execv(sleep.as_ptr(), argv.as_ptr());
                        libc::_exit(127);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            publish(&ready, &format!("{pid}\n"));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // Reserve and exit without any cleanup (no destructors run).
        "exit-without-cleanup" => {
            slot.try_reserve(index, 5 * MIB, u64::MAX).unwrap();
            std::process::exit(0);
        }
        // Reserve, release and exit cleanly.
        "clean-exit" => {
            slot.try_reserve(index, 5 * MIB, u64::MAX).unwrap();
            slot.release(index, 5 * MIB);
            drop(slot);
        }
        // Race the other children for a shared limit, checking it at every success.
        "reserve-loop" => {
            let limit: u64 = var("LIMIT").parse().unwrap();
            let base: u64 = var("BASE").parse().unwrap();
            let run_for = Duration::from_millis(var("DURATION_MS").parse().unwrap());
            let witness = SharedCounter::open(&PathBuf::from(var("WITNESS")));
            let start = PathBuf::from(var("START_FILE"));
            publish(&ready, "ready\n");
            wait_for_file(&start, WAIT);
            let (mut granted, mut refused, mut max_seen) = (0u64, 0u64, 0u64);
            let began = Instant::now();
            let mut i = u64::from(std::process::id());
            while began.elapsed() < run_for {
                for _ in 0..100 {
                    i += 1;
                    let bytes = (1 + i % 4) * MIB;
                    match slot.try_reserve(index, bytes, limit) {
                        Ok(()) => {
                            granted += 1;
                            let now = witness.get().fetch_add(bytes, SeqCst) + bytes;
                            max_seen = max_seen.max(now);
                            assert!(
                                base + now <= limit,
                                "committed {} > limit {limit}",
                                base + now
                            );
                            for _ in 0..20 {
                                std::hint::spin_loop();
                            }
                            witness.get().fetch_sub(bytes, SeqCst);
                            slot.release(index, bytes);
                        }
                        Err(e) => {
                            refused += 1;
                            assert_eq!((e.requested, e.limit), (bytes, limit));
                            assert!(e.used >= base, "{e:?}");
                        }
                    }
                }
            }
            assert_eq!(slot.held(index), 0);
            let result = PathBuf::from(var("RESULT_FILE"));
            publish(&result, &format!("{granted} {refused} {max_seen}\n"));
        }
        other => panic!("unknown role {other}"),
    }
}

/// A test's view of the shared ledger and the files its children report through.
struct Setup {
    dir: tempfile::TempDir,
    ledger: Ledger,
}

impl Setup {
    fn new() -> Setup {
        let (dir, ledger) = ledger();
        Setup { dir, ledger }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&self, role: &str, name: &str, extra: &[(&str, String)]) -> ChildProcess {
        let mut env = vec![
            ("LEDGER_DIR", self.ledger.dir().display().to_string()),
            (
                "READY_FILE",
                self.file(&format!("{name}.ready")).display().to_string(),
            ),
            (
                "RESULT_FILE",
                self.file(&format!("{name}.result")).display().to_string(),
            ),
        ];
        env.extend(extra.iter().cloned());
        ChildProcess::spawn(ENTRY, role, &env)
    }

    fn wait_ready(&self, name: &str) -> String {
        wait_for_file(&self.file(&format!("{name}.ready")), WAIT)
    }
}

#[test]
fn sigkilled_process_memory_is_reclaimed_exactly_and_its_slot_reused() {
    let s = Setup::new();
    let mut child = s.spawn("hold", "holder", &[("BYTES", (3 * MIB + 17).to_string())]);
    let child_slot: u32 = s.wait_ready("holder").trim().parse().unwrap();

    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.register_gpu(&gpu(1)).unwrap();
    assert_eq!(
        index,
        usage.gpu_index(&gpu(1)).unwrap(),
        "one index per GPU across processes"
    );
    assert_eq!(usage.memory_used(index), 3 * MIB + 17);

    let slots = usage.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].index, child_slot);
    assert_eq!(slots[0].pid, child.pid());
    assert!(slots[0].live);
    assert_eq!(slots[0].memory_bytes, vec![(index, 3 * MIB + 17)]);
    assert_eq!(
        usage.reclaim_dead().unwrap(),
        ReclaimReport::default(),
        "a live process's slot is never reclaimed"
    );

    child.kill();

    let slots = usage.slots();
    assert_eq!(slots.len(), 1);
    assert!(!slots[0].live, "the kernel dropped the dead process's lock");
    assert_eq!(
        usage.memory_used(index),
        3 * MIB + 17,
        "still counted until reclaimed"
    );
    let snap = s.ledger.snapshot_usage(&tenant(TENANT)).unwrap();
    assert!(!snap.slots()[0].live);

    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.slots, 1);
    assert_eq!(report.bytes, vec![(index, 3 * MIB + 17)]);
    assert_eq!(usage.memory_used(index), 0);
    assert!(usage.slots().is_empty());
    assert_eq!(usage.reclaim_dead().unwrap(), ReclaimReport::default());

    let mine = usage.claim_slot().unwrap();
    assert_eq!(mine.index(), child_slot, "the reclaimed slot is free again");
    assert_eq!(mine.held(index), 0);
}

#[test]
fn claim_slot_takes_over_a_dead_slot_when_all_others_are_live() {
    let s = Setup::new();
    let mut child = s.spawn("hold", "holder", &[("BYTES", (7 * MIB).to_string())]);
    s.wait_ready("holder");
    child.kill();

    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.register_gpu(&gpu(1)).unwrap();
    assert_eq!(usage.memory_used(index), 7 * MIB);
    // No reclaim_dead: claiming all slots must empty the dead one on the way.
    common::raise_open_file_limit(MAX_SLOTS as u64 + 64);
    let slots: Vec<_> = (0..MAX_SLOTS)
        .map(|_| usage.claim_slot().unwrap())
        .collect();
    assert_eq!(usage.memory_used(index), 0);
    assert!(slots.iter().all(|s| s.held(index) == 0));
    assert!(usage.slots().iter().all(|s| s.live));
}

#[test]
fn process_that_exits_without_cleanup_is_reclaimed() {
    let s = Setup::new();
    let mut child = s.spawn("exit-without-cleanup", "quitter", &[]);
    assert_eq!(child.wait(WAIT), 0);

    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.gpu_index(&gpu(1)).unwrap();
    assert_eq!(usage.memory_used(index), 5 * MIB);
    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.slots, 1);
    assert_eq!(report.bytes, vec![(index, 5 * MIB)]);
    assert_eq!(usage.memory_used(index), 0);
}

#[test]
fn process_that_exits_cleanly_leaves_no_slot_behind() {
    let s = Setup::new();
    let mut child = s.spawn("clean-exit", "tidy", &[]);
    assert_eq!(child.wait(WAIT), 0);

    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    assert!(usage.slots().is_empty());
    assert_eq!(usage.reclaim_dead().unwrap(), ReclaimReport::default());
}

#[test]
fn processes_sharing_a_limit_never_exceed_it_together() {
    const CHILDREN: usize = 4;
    const LIMIT: u64 = 10 * MIB;
    // Held by this process throughout: the children race for the 3 MiB left, with requests
    // of 1 to 4 MiB, so 4 MiB requests are always refused and the others clash often.
    const BASE: u64 = 7 * MIB;
    let s = Setup::new();
    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.register_gpu(&gpu(1)).unwrap();
    let base_slot = usage.claim_slot().unwrap();
    base_slot.try_reserve(index, BASE, LIMIT).unwrap();

    let witness = s.file("witness");
    let start = s.file("start");
    let _counter = SharedCounter::open(&witness);
    let extra = [
        ("LIMIT", LIMIT.to_string()),
        ("BASE", BASE.to_string()),
        ("DURATION_MS", "300".to_string()),
        ("WITNESS", witness.display().to_string()),
        ("START_FILE", start.display().to_string()),
    ];
    let mut children: Vec<_> = (0..CHILDREN)
        .map(|i| s.spawn("reserve-loop", &format!("racer{i}"), &extra))
        .collect();
    for i in 0..CHILDREN {
        s.wait_ready(&format!("racer{i}"));
    }
    publish(&start, "go\n");
    for c in &mut children {
        assert_eq!(c.wait(WAIT), 0, "a child saw the limit exceeded or failed");
    }

    let (mut granted, mut refused) = (0, 0);
    for i in 0..CHILDREN {
        let result = std::fs::read_to_string(s.file(&format!("racer{i}.result"))).unwrap();
        let nums: Vec<u64> = result
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(BASE + nums[2] <= LIMIT);
        granted += nums[0];
        refused += nums[1];
    }
    assert!(granted > 0, "the limit admits some reservations");
    assert!(refused > 0, "the limit refuses some reservations");

    assert_eq!(
        usage.memory_used(index),
        BASE,
        "the children gave back everything"
    );
    assert_eq!(usage.slots().len(), 1, "only this process's slot is left");
}

#[test]
fn forked_child_that_abandons_the_slot_leaves_it_live_and_untouched() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(index, 9 * MIB, u64::MAX).unwrap();

    // SAFETY: the child only calls abandon_after_fork (which calls nothing) and _exit, so
    // forking this multi-threaded test process is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        slot.abandon_after_fork();
        // SAFETY: _exit ends the child without running the parent's destructors or atexit.
        unsafe { libc::_exit(0) };
    }
    wait_for_exit(pid);

    assert_eq!(
        slot.held(index),
        9 * MIB,
        "the child did not touch the slot"
    );
    let slots = usage.slots();
    assert_eq!(slots.len(), 1);
    assert!(slots[0].live, "the parent still holds the lock");
    assert_eq!(usage.reclaim_dead().unwrap(), ReclaimReport::default());
}

/// Kills (SIGKILL) and reaps nothing: `pid` is not this process's child.
fn kill_9(pid: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// Waits until `pid` is gone or a zombie (a killed grandchild: its descriptors are closed
/// either way, whether or not whoever adopted it reaps it).
fn wait_gone(pid: libc::pid_t) {
    let end = Instant::now() + WAIT;
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.starts_with(" Z"))
        })
    };
    while running() {
        assert!(Instant::now() < end, "process {pid} did not go away");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forked_child_keeps_its_killed_parents_charge_until_it_exits() {
    let s = Setup::new();
    let mut parent = s.spawn("hold-and-fork", "parent", &[]);
    let child: libc::pid_t = s.wait_ready("parent").trim().parse().unwrap();
    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.gpu_index(&gpu(1)).unwrap();

    parent.kill();
    // The child still has the parent's descriptors, the driver's among them: the device
    // still holds the parent's memory, so the ledger must still count it.
    assert!(usage.slots()[0].live, "the child shares the parent's lock");
    assert_eq!(usage.reclaim_dead().unwrap(), ReclaimReport::default());
    assert_eq!(usage.memory_used(index), 8 * MIB);

    kill_9(child);
    wait_gone(child);
    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.bytes, vec![(index, 8 * MIB)]);
    assert_eq!(usage.memory_used(index), 0);
}

#[test]
fn forked_child_that_execs_lets_its_killed_parents_charge_go() {
    let s = Setup::new();
    let mut parent = s.spawn("hold-and-fork", "parent", &[("EXEC", "1".to_string())]);
    let child: libc::pid_t = s.wait_ready("parent").trim().parse().unwrap();
    let usage = s.ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.gpu_index(&gpu(1)).unwrap();

    // exec closes the descriptors opened close-on-exec, the slot's as the driver's.
    let end = Instant::now() + WAIT;
    while std::fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|exe| !exe.ends_with("sleep"))
    {
        assert!(Instant::now() < end, "the child did not exec");
        std::thread::sleep(Duration::from_millis(5));
    }
    parent.kill();
    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.bytes, vec![(index, 8 * MIB)]);
    kill_9(child);
}

#[test]
fn slot_dropped_in_a_forked_child_is_not_emptied() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant(TENANT)).unwrap();
    let index = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(index, 2 * MIB, u64::MAX).unwrap();

    // SAFETY: the child drops the slot (getpid, close, and an Arc decrement that cannot free:
    // `usage` still holds a reference) and calls _exit; nothing takes a lock another thread
    // of the parent might have held at the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(slot);
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    wait_for_exit(pid);

    assert_eq!(slot.held(index), 2 * MIB);
    assert_eq!(usage.memory_used(index), 2 * MIB);
    assert!(usage.slots()[0].live);
}

/// Waits for the forked child `pid` and checks it exited with 0.
fn wait_for_exit(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(rc, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}
