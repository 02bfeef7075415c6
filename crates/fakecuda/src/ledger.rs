//! The per-device state file shared by every process that uses a simulated device: how much
//! of the device's memory is in use, and by whom.
//!
//! The file is mapped by every process. Each process claims a slot by taking an OFD lock
//! (`F_OFD_SETLK`, through `gpuslice_ledger::ofd` as the ledger takes its own) on the
//! slot's first byte and counts its memory there, so that the memory of a process killed
//! with SIGKILL (whose lock the kernel drops) can be reclaimed by any other process: a slot
//! that holds memory but whose lock can be taken belongs to a dead process. The header's
//! `used` is the device-wide total, reserved with a compare-and-swap so that two processes
//! can never together pass the capacity. A process claims its slot when it first touches
//! the device (its first context or reservation) and records its pid there; each slot also
//! counts the process's live contexts, so that NVML can list the processes using the device
//! (`nvmlDeviceGetComputeRunningProcesses`) from any process.
//!
//! For time-slicing (see `kernel.rs`), each slot also counts the process's streams that are
//! executing a kernel on the device (`executing`), with a heartbeat (`beat`,
//! `CLOCK_MONOTONIC` nanoseconds, `gpuslice_ledger::monotonic_ns`: the shim's clock too)
//! that those streams refresh at every look. A process reading how many processes execute
//! counts the slots with `executing > 0`, without any lock; only a slot whose heartbeat is
//! stale (its owner descheduled, stopped, or dead) costs an OFD lock test, and a dead
//! owner's slot is then reclaimed, memory and mark together. The header's `claimed` bounds
//! the slots ever claimed, so that this count scans only those. Whenever a stream starts or
//! stops executing (a mark is added or removed, or a slot reclaimed), the header's
//! `changed_ns` records when and its `generation` is incremented and woken as a futex, so
//! that executing streams of every process look again at once instead of polling (those of
//! the same process share its part of the device, so its own changes count too).
//!
//! Layout (native endian, version 1): a 64-byte header (`magic` "FAKECUDA", `version`,
//! `slot_count`, `used`, `claimed` u64, `generation` u32, a reserved u32, `changed_ns` u64;
//! the rest reserved and zero) followed by `slot_count` 64-byte slots (`used` u64, `pid` u32,
//! `contexts` u32, `executing` u32, a reserved u32, `beat` u64; the rest reserved and zero).
//! Every field after `used` took reserved words, which older files hold as zero, so the
//! layout version did not change. While a process creates or validates the file it holds
//! the lock of the header's first byte.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gpuslice_ledger::futex::{self, Scope};
use gpuslice_ledger::ofd;
use gpuslice_ledger::{LockKind, monotonic_ns};
use parking_lot::Mutex;

use crate::mapping::Mapping;

const MAGIC: u64 = u64::from_le_bytes(*b"FAKECUDA");
const VERSION: u32 = 1;
/// Slots per device: the most processes that can hold memory on one device at once.
pub const SLOTS: usize = SLOT_COUNT as usize;
const SLOT_COUNT: u32 = 1024;
const HEADER_SIZE: usize = 64;
const SLOT_SIZE: usize = 64;
const FILE_SIZE: usize = HEADER_SIZE + SLOTS * SLOT_SIZE;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    slot_count: AtomicU32,
    used: AtomicU64,
    /// One past the highest slot index ever claimed in this file (only grows).
    claimed: AtomicU64,
    /// Incremented (and woken as a futex) whenever a stream starts or stops executing.
    generation: AtomicU32,
    _reserved0: AtomicU32,
    /// When the latest such change happened (`CLOCK_MONOTONIC` ns).
    changed_ns: AtomicU64,
    _reserved: [AtomicU64; 2],
}

#[repr(C)]
struct Slot {
    used: AtomicU64,
    pid: AtomicU32,
    contexts: AtomicU32,
    /// The owner's streams executing a kernel on the device.
    executing: AtomicU32,
    _reserved0: AtomicU32,
    /// When the owner last showed it was executing (`CLOCK_MONOTONIC` ns).
    beat: AtomicU64,
    _reserved: [AtomicU32; 8],
}

/// How old a heartbeat may be before its owner's liveness is tested with the OFD lock: five
/// ticks (`kernel::TICK`), so that a live process scheduled a little late costs no system
/// call.
pub const STALE_BEAT_NS: u64 = 5_000_000;

const _: () = assert!(size_of::<Header>() == HEADER_SIZE && size_of::<Slot>() == SLOT_SIZE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnSlot {
    Unclaimed,
    Claimed {
        index: usize,
        pid: u32,
    },
    /// Given back at exit: nothing more is counted.
    Released,
}

/// A live process using a device, as `nvmlDeviceGetComputeRunningProcesses` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// The process's pid (its `getpid()` when it first touched the device).
    pub pid: u32,
    /// Bytes of device memory the process holds.
    pub used: u64,
}

/// One device's shared state file, mapped into this process.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    map: Mapping,
    /// This process's slot. Also held from taking another slot's lock to giving it back:
    /// the OFD locks of two threads of this process never conflict (they share one open file
    /// description), so without it one thread could unlock a slot that another just claimed.
    own: Mutex<OwnSlot>,
}

fn saturating_sub(counter: &AtomicU64, bytes: u64) {
    // The closure always returns Some, so fetch_update cannot fail.
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(bytes))
    });
}

/// The header of a mapped state file.
fn header_of(map: &Mapping) -> &Header {
    assert!(map.len() >= FILE_SIZE, "state file mapping too short");
    // SAFETY: the mapping is at least FILE_SIZE bytes, page aligned and lives as long as the
    // returned reference; Header is made of atomics, valid for any bit pattern.
    unsafe { &*(map.addr() as *const Header) }
}

/// Whether a slot is unused: no memory, no owner recorded, no context, nothing executing.
fn slot_is_empty(slot: &Slot) -> bool {
    slot.used.load(Ordering::Acquire) == 0
        && slot.pid.load(Ordering::Acquire) == 0
        && slot.contexts.load(Ordering::Acquire) == 0
        && slot.executing.load(Ordering::Acquire) == 0
}

fn slot_offset(index: usize) -> u64 {
    (HEADER_SIZE + index * SLOT_SIZE) as u64
}

impl Ledger {
    /// Opens (creating and initializing if needed) the state file at `path`.
    pub fn open(path: &Path) -> io::Result<Ledger> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(named)?;
        let map = {
            let _init = InitLock::take(&file).map_err(named)?;
            let size = file.metadata().map_err(named)?.len();
            let fresh = size == 0;
            if fresh {
                file.set_len(FILE_SIZE as u64).map_err(named)?;
            } else if size != FILE_SIZE as u64 {
                return Err(io::Error::other(format!(
                    "{}: size {size} is not that of a fakecuda state file ({FILE_SIZE}); remove it",
                    path.display()
                )));
            }
            let map = Mapping::shared_file(file.as_fd(), FILE_SIZE).map_err(named)?;
            let header = header_of(&map);
            if fresh {
                header.version.store(VERSION, Ordering::Relaxed);
                header.slot_count.store(SLOT_COUNT, Ordering::Relaxed);
                header.magic.store(MAGIC, Ordering::Release);
            } else if header.magic.load(Ordering::Acquire) != MAGIC
                || header.version.load(Ordering::Relaxed) != VERSION
                || header.slot_count.load(Ordering::Relaxed) != SLOT_COUNT
            {
                return Err(io::Error::other(format!(
                    "{}: not a fakecuda state file of layout version {VERSION}; remove it",
                    path.display()
                )));
            }
            map
        };
        Ok(Ledger {
            path: path.to_owned(),
            file,
            map,
            own: Mutex::new(OwnSlot::Unclaimed),
        })
    }

    fn header(&self) -> &Header {
        header_of(&self.map)
    }

    fn slot(&self, index: usize) -> &Slot {
        assert!(index < SLOTS, "slot index {index} out of range");
        let addr = self.map.addr() + HEADER_SIZE + index * SLOT_SIZE;
        // SAFETY: index < SLOTS keeps the slot inside the FILE_SIZE-byte mapping, which lives
        // as long as self; slots are 64-byte aligned atomics, valid for any bit pattern.
        unsafe { &*(addr as *const Slot) }
    }

    /// Bytes in use on the device by all processes (including dead ones not yet reclaimed).
    pub fn used(&self) -> u64 {
        self.header().used.load(Ordering::Acquire)
    }

    /// Bytes this process holds.
    pub fn held(&self) -> u64 {
        match *self.own.lock() {
            OwnSlot::Claimed { index, .. } => self.slot(index).used.load(Ordering::Acquire),
            _ => 0,
        }
    }

    /// This process's slot, claimed (and its pid recorded) on first use; `None` once given
    /// back at exit.
    fn own_slot(&self, own: &mut OwnSlot) -> io::Result<Option<usize>> {
        Ok(match *own {
            OwnSlot::Claimed { index, .. } => Some(index),
            OwnSlot::Unclaimed => {
                let index = self.claim_slot()?;
                *own = OwnSlot::Claimed {
                    index,
                    pid: std::process::id(),
                };
                Some(index)
            }
            OwnSlot::Released => None,
        })
    }

    /// Reserves `bytes` if the device-wide total stays within `capacity`; `Ok(false)` if not.
    pub fn try_reserve(&self, bytes: u64, capacity: u64) -> io::Result<bool> {
        let mut own = self.own.lock();
        let Some(index) = self.own_slot(&mut own)? else {
            return Ok(false);
        };
        let header = self.header();
        let reserved = header
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= capacity)
            });
        if reserved.is_err() {
            return Ok(false);
        }
        self.slot(index).used.fetch_add(bytes, Ordering::AcqRel);
        Ok(true)
    }

    /// Gives back `bytes` this process reserved.
    pub fn release(&self, bytes: u64) {
        if let OwnSlot::Claimed { index, .. } = *self.own.lock() {
            saturating_sub(&self.slot(index).used, bytes);
            saturating_sub(&self.header().used, bytes);
        }
    }

    /// Counts a new context of this process (claiming its slot if it has none yet), so that
    /// the process is listed as using the device. `Ok(false)` after `release_all`.
    pub fn add_context(&self) -> io::Result<bool> {
        let mut own = self.own.lock();
        let Some(index) = self.own_slot(&mut own)? else {
            return Ok(false);
        };
        self.slot(index).contexts.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Uncounts a context counted by `add_context`.
    pub fn remove_context(&self) {
        if let OwnSlot::Claimed { index, .. } = *self.own.lock() {
            let _ =
                self.slot(index)
                    .contexts
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(1))
                    });
        }
    }

    /// The live processes with at least one context on the device, in slot order, reclaiming
    /// the slots of dead processes on the way (as `reclaim_dead`). This process is always
    /// live; another is live while it holds its slot's lock.
    pub fn processes(&self) -> Vec<Process> {
        let own = self.own_index();
        let mut live = Vec::new();
        for index in 0..SLOTS {
            let slot = self.slot(index);
            if Some(index) != own {
                if slot_is_empty(slot) {
                    continue;
                }
                match self.reclaim_if_dead(index) {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    // The lock cannot be tested: the slot's owner cannot be told dead, so it
                    // is not listed either.
                    Err(_) => continue,
                }
            }
            if slot.contexts.load(Ordering::Acquire) > 0 {
                live.push(Process {
                    pid: slot.pid.load(Ordering::Acquire),
                    used: slot.used.load(Ordering::Acquire),
                });
            }
        }
        live
    }

    /// Counts one more of this process's streams as executing a kernel on the device
    /// (claiming the process's slot if needed) and sets the slot's heartbeat to `now_ns`.
    /// Returns the slot's index, for `beat` and `end_executing`; `None` after `release_all`
    /// or when no slot can be had (the kernel then runs unseen by other processes).
    /// The change is dated `at_ns` (and wakes every executing stream: this process's others
    /// share its part of the device with this one).
    pub fn begin_executing(&self, now_ns: u64, at_ns: u64) -> Option<usize> {
        let mut own = self.own.lock();
        let index = self.own_slot(&mut own).ok()??;
        let slot = self.slot(index);
        slot.beat.store(now_ns, Ordering::Release);
        slot.executing.fetch_add(1, Ordering::AcqRel);
        self.executing_changed(at_ns);
        Some(index)
    }

    /// Refreshes the heartbeat of this process's slot `index` (from `begin_executing`).
    pub fn beat(&self, index: usize, now_ns: u64) {
        self.slot(index).beat.store(now_ns, Ordering::Release);
    }

    /// Uncounts a stream counted by `begin_executing` (nothing after `release_all`); the
    /// change is dated `at_ns`.
    pub fn end_executing(&self, index: usize, at_ns: u64) {
        if let OwnSlot::Claimed { index: own, .. } = *self.own.lock()
            && own == index
        {
            let before =
                self.slot(index)
                    .executing
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(1))
                    });
            if before.is_ok_and(|n| n > 0) {
                self.executing_changed(at_ns);
            }
        }
    }

    /// How many of this process's streams slot `index` (from `begin_executing`) counts as
    /// executing.
    pub fn streams_executing(&self, index: usize) -> u32 {
        self.slot(index).executing.load(Ordering::Acquire)
    }

    /// How many times a stream has started or stopped executing (wrapping), and when it last
    /// did (`CLOCK_MONOTONIC` ns).
    pub fn executing_generation(&self) -> (u32, u64) {
        let header = self.header();
        let generation = header.generation.load(Ordering::Acquire);
        (generation, header.changed_ns.load(Ordering::Acquire))
    }

    /// Sleeps until the generation is no longer `seen`, for at most `timeout` (or less: any
    /// signal or error ends the wait too, and the caller looks again): `false` if it slept
    /// the whole timeout.
    pub fn wait_for_change(&self, seen: u32, timeout: std::time::Duration) -> bool {
        // Its errors (EAGAIN when the word is no longer `seen`, EINTR) mean "look again".
        futex::wait(&self.header().generation, seen, timeout, Scope::Shared)
    }

    /// Records that a slot started or stopped executing at `at_ns` and wakes every stream
    /// waiting for such a change, in every process.
    fn executing_changed(&self, at_ns: u64) {
        let header = self.header();
        header.changed_ns.store(at_ns, Ordering::Release);
        header.generation.fetch_add(1, Ordering::AcqRel);
        futex::wake_all(&header.generation, Scope::Shared);
    }

    /// How many processes other than the owner of slot `own` execute a kernel on the device
    /// at `now_ns` (`CLOCK_MONOTONIC`): the slots with `executing > 0` whose heartbeat is at
    /// most `STALE_BEAT_NS` old, or whose owner still holds the slot's lock. The slot of a
    /// dead owner is reclaimed (its memory too) and not counted, nor is a slot whose lock
    /// cannot be tested. Takes no lock and makes no system call while heartbeats are fresh.
    pub fn others_executing(&self, own: Option<usize>, now_ns: u64) -> u32 {
        let claimed = self.header().claimed.load(Ordering::Acquire);
        let bound = usize::try_from(claimed).map_or(SLOTS, |c| c.min(SLOTS));
        let mut others = 0;
        for index in (0..bound).filter(|&i| Some(i) != own) {
            let slot = self.slot(index);
            if slot.executing.load(Ordering::Acquire) == 0 {
                continue;
            }
            let beat = slot.beat.load(Ordering::Acquire);
            if now_ns.saturating_sub(beat) <= STALE_BEAT_NS
                || matches!(self.reclaim_if_dead(index), Ok(None))
            {
                others += 1;
            }
        }
        others
    }

    /// Gives back everything this process holds, at exit. Later reservations fail and later
    /// releases do nothing. A forked child (whose pid differs) leaves its parent's slot alone.
    pub fn release_all(&self) {
        let mut own = self.own.lock();
        if let OwnSlot::Claimed { index, pid } = *own {
            if pid != std::process::id() {
                return;
            }
            self.clear_slot(self.slot(index));
            *own = OwnSlot::Released;
        }
    }

    /// Reclaims the memory of dead processes: every slot that holds memory and whose lock can
    /// be taken. Returns the bytes reclaimed.
    pub fn reclaim_dead(&self) -> u64 {
        let own = self.own_index();
        let mut reclaimed = 0;
        for index in (0..SLOTS).filter(|&i| Some(i) != own) {
            if slot_is_empty(self.slot(index)) {
                continue;
            }
            if let Ok(Some(bytes)) = self.reclaim_if_dead(index) {
                reclaimed += bytes;
            }
        }
        reclaimed
    }

    /// This process's slot index, if it has claimed one.
    fn own_index(&self) -> Option<usize> {
        match *self.own.lock() {
            OwnSlot::Claimed { index, .. } => Some(index),
            _ => None,
        }
    }

    /// Empties slot `index` if its owner is dead (its lock can be taken): `Ok(Some(bytes))`
    /// with the memory it held, `Ok(None)` if the owner lives (or the slot is this
    /// process's own).
    fn reclaim_if_dead(&self, index: usize) -> io::Result<Option<u64>> {
        let own = self.own.lock();
        if matches!(*own, OwnSlot::Claimed { index: i, .. } if i == index) {
            return Ok(None);
        }
        if !self.try_lock_slot(index)? {
            return Ok(None);
        }
        let held = self.clear_slot(self.slot(index));
        self.unlock_slot(index);
        drop(own);
        Ok(Some(held))
    }

    /// Takes the lock of the first free slot, reclaiming what a dead owner left in it. Called
    /// with `own` locked.
    fn claim_slot(&self) -> io::Result<usize> {
        for index in 0..SLOTS {
            if self.try_lock_slot(index)? {
                let slot = self.slot(index);
                self.clear_slot(slot);
                slot.pid.store(std::process::id(), Ordering::Release);
                self.header()
                    .claimed
                    .fetch_max(index as u64 + 1, Ordering::AcqRel);
                return Ok(index);
            }
        }
        Err(io::Error::other(format!(
            "{}: all {SLOTS} process slots are taken",
            self.path.display()
        )))
    }

    /// Empties a slot whose lock this process holds; returns the bytes it held.
    fn clear_slot(&self, slot: &Slot) -> u64 {
        let held = slot.used.swap(0, Ordering::AcqRel);
        saturating_sub(&self.header().used, held);
        slot.contexts.store(0, Ordering::Release);
        if slot.executing.swap(0, Ordering::AcqRel) > 0 {
            self.executing_changed(monotonic_ns());
        }
        slot.beat.store(0, Ordering::Release);
        slot.pid.store(0, Ordering::Release);
        held
    }

    fn try_lock_slot(&self, index: usize) -> io::Result<bool> {
        ofd::try_lock(self.file.as_fd(), slot_offset(index), LockKind::Exclusive)
    }

    fn unlock_slot(&self, index: usize) {
        // Unlocking a byte this description holds cannot fail in a way worth reporting.
        let _ = ofd::unlock(self.file.as_fd(), slot_offset(index));
    }
}

/// The byte of a state file whose lock is held while the file is created or validated: in
/// the header, apart from every slot's.
const INIT_LOCK_BYTE: u64 = 0;

/// The state file's initialization lock, held while it is created or validated.
struct InitLock<'a>(&'a File);

impl<'a> InitLock<'a> {
    fn take(file: &'a File) -> io::Result<Self> {
        ofd::lock_wait(file.as_fd(), INIT_LOCK_BYTE, LockKind::Exclusive)?;
        Ok(InitLock(file))
    }
}

impl Drop for InitLock<'_> {
    fn drop(&mut self) {
        // Unlocking a byte this description holds cannot fail in a way worth reporting.
        let _ = ofd::unlock(self.0.as_fd(), INIT_LOCK_BYTE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_capacity_and_release_gives_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("dev0")).unwrap();
        assert!(ledger.try_reserve(600, 1000).unwrap());
        assert!(!ledger.try_reserve(401, 1000).unwrap());
        assert!(ledger.try_reserve(400, 1000).unwrap());
        assert_eq!((ledger.used(), ledger.held()), (1000, 1000));
        ledger.release(600);
        assert_eq!((ledger.used(), ledger.held()), (400, 400));
        assert!(ledger.try_reserve(600, 1000).unwrap());
    }

    #[test]
    fn two_openings_share_the_device_total() {
        // Two open file descriptions of one file behave like two processes: each claims its
        // own slot under its own OFD lock.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let a = Ledger::open(&path).unwrap();
        let b = Ledger::open(&path).unwrap();
        assert!(a.try_reserve(700, 1000).unwrap());
        assert!(!b.try_reserve(301, 1000).unwrap());
        assert!(b.try_reserve(300, 1000).unwrap());
        assert_eq!((a.used(), a.held(), b.held()), (1000, 700, 300));
        // Both are alive: scanning reclaims nothing.
        assert_eq!(b.reclaim_dead(), 0);
    }

    #[test]
    fn a_dead_owners_memory_is_reclaimed_by_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let survivor = Ledger::open(&path).unwrap();
        assert!(survivor.try_reserve(100, 1000).unwrap());
        {
            let doomed = Ledger::open(&path).unwrap();
            assert!(doomed.try_reserve(800, 1000).unwrap());
            // Dropping closes the file description: its OFD lock goes, as at SIGKILL.
        }
        assert_eq!(survivor.used(), 900);
        assert_eq!(survivor.reclaim_dead(), 800);
        assert_eq!(survivor.used(), 100);
        assert!(survivor.try_reserve(900, 1000).unwrap());
    }

    #[test]
    fn release_all_empties_the_slot_and_stops_counting() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("dev0")).unwrap();
        assert!(ledger.try_reserve(500, 1000).unwrap());
        ledger.release_all();
        assert_eq!(ledger.used(), 0);
        assert!(!ledger.try_reserve(1, 1000).unwrap());
        ledger.release(500);
        assert_eq!(ledger.used(), 0);
    }

    #[test]
    fn processes_with_contexts_are_listed_until_they_die() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let observer = Ledger::open(&path).unwrap();
        assert_eq!(observer.processes(), []);
        let pid = std::process::id();
        {
            let user = Ledger::open(&path).unwrap();
            assert!(user.add_context().unwrap());
            assert!(user.try_reserve(300, 1000).unwrap());
            let listed = [Process { pid, used: 300 }];
            assert_eq!(observer.processes(), listed);
            // A process sees itself too.
            assert_eq!(user.processes(), listed);
            // Without a context it is not listed, though it still holds memory.
            user.remove_context();
            assert_eq!(observer.processes(), []);
            assert_eq!(observer.used(), 300);
            assert!(user.add_context().unwrap());
            // Dropping closes the file description, as SIGKILL would.
        }
        assert_eq!(observer.processes(), []);
        assert_eq!(observer.used(), 0, "listing reclaims the dead");
    }

    #[test]
    fn a_context_without_memory_claims_a_slot_and_release_all_unlists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let observer = Ledger::open(&path).unwrap();
        let user = Ledger::open(&path).unwrap();
        assert!(user.add_context().unwrap());
        let pid = std::process::id();
        assert_eq!(observer.processes(), [Process { pid, used: 0 }]);
        user.release_all();
        assert_eq!(observer.processes(), []);
        assert!(!user.add_context().unwrap());
    }

    #[test]
    fn executing_processes_are_counted_by_the_others_until_they_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let a = Ledger::open(&path).unwrap();
        let b = Ledger::open(&path).unwrap();
        let now = monotonic_ns();
        let (generation, _) = b.executing_generation();
        assert_eq!(b.others_executing(None, now), 0);
        // Two streams of A: A counts once among the processes, both among its streams, and
        // every change wakes everyone (A's streams share A's part).
        let ia = a.begin_executing(now, now - 7).unwrap();
        assert_eq!(
            b.executing_generation(),
            (generation.wrapping_add(1), now - 7)
        );
        assert_eq!(a.begin_executing(now, now), Some(ia));
        assert_eq!(a.streams_executing(ia), 2);
        assert_eq!(b.others_executing(None, now), 1);
        assert_eq!(a.others_executing(Some(ia), now), 0, "not counting itself");
        a.end_executing(ia, now + 1);
        assert_eq!(a.streams_executing(ia), 1);
        assert_eq!(b.others_executing(None, now), 1);
        a.end_executing(ia, now + 2);
        assert_eq!(b.others_executing(None, now), 0);
        assert_eq!(
            b.executing_generation(),
            (generation.wrapping_add(4), now + 2)
        );
        // Waiting for a change that already happened returns at once.
        assert!(
            b.wait_for_change(generation, std::time::Duration::from_secs(5)),
            "it slept out its timeout"
        );
    }

    #[test]
    fn a_stale_heartbeat_counts_while_its_owner_lives_and_is_reclaimed_when_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let survivor = Ledger::open(&path).unwrap();
        let now = monotonic_ns();
        let late = now + 10 * STALE_BEAT_NS;
        {
            let doomed = Ledger::open(&path).unwrap();
            assert!(doomed.try_reserve(300, 1000).unwrap());
            doomed.begin_executing(now, now).unwrap();
            // Alive (it holds its lock), however old its heartbeat.
            assert_eq!(survivor.others_executing(None, late), 1);
            // Dropping closes the file description: its OFD lock goes, as at SIGKILL.
        }
        let (generation, _) = survivor.executing_generation();
        // A fresh heartbeat is believed without a look at the lock...
        assert_eq!(survivor.others_executing(None, now), 1);
        // ...a stale one is tested: its owner is dead, its slot reclaimed, memory too.
        assert_eq!(survivor.others_executing(None, late), 0);
        assert_eq!(survivor.used(), 0);
        assert_eq!(
            survivor.executing_generation().0,
            generation.wrapping_add(1)
        );
        assert_eq!(survivor.others_executing(None, now), 0);
    }

    #[test]
    fn release_all_stops_executing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let observer = Ledger::open(&path).unwrap();
        let user = Ledger::open(&path).unwrap();
        let now = monotonic_ns();
        let index = user.begin_executing(now, now).unwrap();
        assert_eq!(observer.others_executing(None, now), 1);
        user.release_all();
        assert_eq!(observer.others_executing(None, now), 0);
        assert_eq!(user.begin_executing(now, now), None);
        user.end_executing(index, now);
    }

    #[test]
    fn a_foreign_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        std::fs::write(&path, b"not a ledger").unwrap();
        let err = Ledger::open(&path).unwrap_err().to_string();
        assert!(err.contains("dev0"), "{err}");
    }
}
