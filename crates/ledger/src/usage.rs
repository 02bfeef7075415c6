//! Usage files: what a tenant's processes hold, per GPU and per process, in slots whose
//! owners prove themselves alive through the tenant's lock file, and the lock-free
//! reservation protocol.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::LedgerError;
use crate::files::{self, Access, TempFile};
use crate::layout::{
    BITMAP_WORDS, GPU_EMPTY, GPU_REGISTERED, SLOT_FREE, SLOT_LIVE, USAGE_FILE_SIZE, USAGE_GEOMETRY,
    UsageLayout, lock_bytes, slot_lock_byte, uuid_bytes, uuid_words,
};
use crate::locks::{LockFile, LockKind};
use crate::names::GpuUuid;
use crate::slot::ProcessSlot;
use crate::sys::{self, View};
use crate::{MAX_GPUS, MAX_SLOTS};

// The occupied-slot bitmap is whole u64 words.
const _: () = assert!(MAX_SLOTS.is_multiple_of(64) && BITMAP_WORDS * 64 == MAX_SLOTS);

/// How long a registration waits for the GPU table's lock, which registrations hold for
/// microseconds: a CUDA call must fail, not hang, when something else holds it.
const LOCK_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A GPU's position in a usage file's GPU table (from [`UsageFile::register_gpu`]).
///
/// Indexes are per usage file: the same GPU may sit at different indexes in two tenants'
/// files. An index at or above [`MAX_GPUS`] is never returned; passed in, it reads as 0 and
/// writes nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GpuIndex(pub u32);

impl GpuIndex {
    /// The table position, if it is inside the table.
    pub(crate) fn get(self) -> Option<usize> {
        let i = usize::try_from(self.0).ok()?;
        (i < MAX_GPUS).then_some(i)
    }
}

/// Where slot `index`'s bit is in the occupied bitmap: its word and mask (`None` past it).
pub(crate) fn bit(index: u32) -> Option<(usize, u64)> {
    let index = usize::try_from(index).ok()?;
    (index < MAX_SLOTS).then(|| (index / 64, 1u64 << (index % 64)))
}

/// The indexes of the set bits of `word`, lowest first.
pub(crate) fn set_bits(mut word: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let i = word.trailing_zeros();
        word &= word - 1;
        Some(i)
    })
}

/// The slots in `words` (a bitmap of [`BITMAP_WORDS`] words), lowest first.
pub(crate) fn slots_in(words: impl IntoIterator<Item = u64>) -> impl Iterator<Item = u32> {
    (0u32..)
        .step_by(64)
        .zip(words)
        .flat_map(|(base, word)| set_bits(word).map(move |i| base + i))
}

/// The occupied slots, and `extra` (a slot that counts whether or not its bit is set: the
/// caller's own), lowest first. Each word is loaded once (SeqCst).
fn occupied_and(layout: &UsageLayout, extra: Option<u32>) -> impl Iterator<Item = u32> + '_ {
    let extra = extra.and_then(bit);
    slots_in((0..BITMAP_WORDS).map(move |w| {
        let word = layout.occupied.get(w).map_or(0, |a| a.load(SeqCst));
        match extra {
            Some((ew, mask)) if ew == w => word | mask,
            _ => word,
        }
    }))
}

/// Slot indexes as the u32 the API uses (MAX_SLOTS fits).
fn slot_indexes() -> impl Iterator<Item = u32> {
    (0u32..).take(MAX_SLOTS)
}

/// Sum of `memory_bytes` on GPU `gpu` over the occupied slots and `extra`: what the tenant
/// holds, as observers see it.
#[inline]
pub(crate) fn committed(layout: &UsageLayout, gpu: usize, extra: Option<u32>) -> u64 {
    let mut total = 0u64;
    for i in occupied_and(layout, extra) {
        if let Some(rec) = slot_gpu(layout, i, gpu) {
            total = total.saturating_add(rec.memory_bytes.load(SeqCst));
        }
    }
    total
}

/// Sum of `memory_bytes + pending_bytes` on GPU `gpu` over the same slots: what the tenant
/// holds plus what is being reserved, as a reservation must count it.
///
/// `pending_bytes` is loaded before `memory_bytes`, the reverse of the order in which a
/// grant moves bytes between them (add to memory, then take out of pending): a load of
/// pending before the move still sees the bytes there, one after it comes after the add to
/// memory. Loaded the other way round, a read straddling the move would see neither.
#[inline]
pub(crate) fn claimed(layout: &UsageLayout, gpu: usize, extra: Option<u32>) -> u64 {
    let mut total = 0u64;
    for i in occupied_and(layout, extra) {
        if let Some(rec) = slot_gpu(layout, i, gpu) {
            let pending = rec.pending_bytes.load(SeqCst);
            let held = rec.memory_bytes.load(SeqCst);
            total = total.saturating_add(pending).saturating_add(held);
        }
    }
    total
}

/// The record of GPU `gpu` in slot `index`.
#[inline]
pub(crate) fn slot_gpu(
    layout: &UsageLayout,
    index: u32,
    gpu: usize,
) -> Option<&crate::layout::SlotGpu> {
    layout
        .slots
        .get(usize::try_from(index).ok()?)
        .and_then(|s| s.gpus.get(gpu))
}

/// Whether slot `index` may hold usage: in the bitmap, marked live, or with counters left.
fn slot_in_use(layout: &UsageLayout, index: u32) -> bool {
    let Some(slot) = usize::try_from(index)
        .ok()
        .and_then(|i| layout.slots.get(i))
    else {
        return false;
    };
    is_occupied(layout, index)
        || slot.state.load(SeqCst) != SLOT_FREE
        || slot.gpus.iter().any(|g| {
            g.memory_bytes.load(SeqCst) != 0
                || g.pending_bytes.load(SeqCst) != 0
                || g.gpu_time_ns.load(SeqCst) != 0
        })
}

/// Whether slot `index`'s bit is set.
fn is_occupied(layout: &UsageLayout, index: u32) -> bool {
    bit(index).is_some_and(|(w, mask)| {
        layout
            .occupied
            .get(w)
            .is_some_and(|a| a.load(SeqCst) & mask != 0)
    })
}

/// Sets slot `index`'s bit.
fn set_occupied(layout: &UsageLayout, index: u32) {
    if let Some((w, mask)) = bit(index)
        && let Some(word) = layout.occupied.get(w)
    {
        word.fetch_or(mask, SeqCst);
    }
}

/// Empties slot `index` and clears its bit. The caller holds the slot's lock. Its GPU time
/// moves to the GPU table's `retired_gpu_time_ns`; returns the memory it held, per GPU.
pub(crate) fn clear_slot(layout: &UsageLayout, index: u32) -> [u64; MAX_GPUS] {
    let mut freed = [0u64; MAX_GPUS];
    let Some(slot) = usize::try_from(index)
        .ok()
        .and_then(|i| layout.slots.get(i))
    else {
        return freed;
    };
    for ((rec, out), entry) in slot.gpus.iter().zip(freed.iter_mut()).zip(&layout.gpus) {
        *out = rec.memory_bytes.swap(0, SeqCst);
        rec.pending_bytes.store(0, SeqCst);
        let time = rec.gpu_time_ns.swap(0, SeqCst);
        if time != 0 {
            entry.retired_gpu_time_ns.fetch_add(time, SeqCst);
        }
        rec.activity.store(0, Relaxed);
        rec.compute.store(0, Relaxed);
    }
    slot.pid.store(0, Relaxed);
    slot.claimed_unix_ms.store(0, Relaxed);
    slot.reserved.store(0, Relaxed);
    slot.pid_namespace.store(0, Relaxed);
    slot.state.store(SLOT_FREE, SeqCst);
    if let Some((w, mask)) = bit(index)
        && let Some(word) = layout.occupied.get(w)
    {
        word.fetch_and(!mask, SeqCst);
    }
    freed
}

/// The GPUs on which `slot` holds memory, with the amounts.
fn slot_memory(slot: &crate::layout::Slot) -> Vec<(GpuIndex, u64)> {
    (0u32..)
        .zip(&slot.gpus)
        .filter_map(|(g, rec)| {
            let bytes = rec.memory_bytes.load(SeqCst);
            (bytes != 0).then_some((GpuIndex(g), bytes))
        })
        .collect()
}

/// Subtracts `v` from `a`, stopping at 0.
pub(crate) fn saturating_sub(a: &AtomicU64, v: u64) {
    // The closure always returns Some, so this cannot fail.
    let _ = a.fetch_update(SeqCst, SeqCst, |cur| Some(cur.saturating_sub(v)));
}

/// The inode of this process's PID namespace, 0 if it cannot be read (no /proc).
fn own_pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A tenant's usage file, mapped read-write (`MAP_SHARED`) and validated when opened, with
/// the tenant's lock file, whose locks say which slots' processes are alive.
///
/// Shared by all threads of a process (as `Arc<UsageFile>`), and through the file by all the
/// tenant's processes. It holds no lock of its own: its descriptors are only used to map the
/// file and to ask who holds locks, so a forked child that inherits them inherits nothing
/// that could outlive the parent.
pub struct UsageFile {
    path: PathBuf,
    /// The description the mapping came from; kept open with the mapping.
    _file: File,
    view: View<UsageLayout>,
    /// The tenant's lock file: slot ownership and GPU registration are locked there.
    locks: LockFile,
}

impl fmt::Debug for UsageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageFile")
            .field("path", &self.path)
            .field("locks", &self.locks)
            .finish_non_exhaustive()
    }
}

impl UsageFile {
    /// Opens and validates the usage file at `path`, whose slots `locks` guards; `None` if
    /// there is none.
    pub(crate) fn open(path: &Path, locks: LockFile) -> Result<Option<UsageFile>, LedgerError> {
        let Some(file) = files::open_existing(path, Access::ReadWrite)? else {
            return Ok(None);
        };
        files::validate(&file, path, &USAGE_GEOMETRY)?;
        let view = View::map(file.as_fd(), true).map_err(|e| LedgerError::io(path, "map", e))?;
        Ok(Some(UsageFile {
            path: path.to_path_buf(),
            _file: file,
            view,
            locks,
        }))
    }

    /// Creates an empty usage file at `path` in directory `dir`, unless one appears there
    /// first (then that one is kept).
    pub(crate) fn create(dir: &Path, path: &Path) -> Result<(), LedgerError> {
        let temp = TempFile::create(dir, "usage", USAGE_FILE_SIZE as u64, files::FILE_MODE)?;
        {
            let view = View::<UsageLayout>::map(temp.file.as_fd(), true)
                .map_err(|e| LedgerError::io(&temp.path, "map", e))?;
            USAGE_GEOMETRY.init_header(&view.get().header);
        }
        temp.publish_no_clobber(path)?;
        Ok(())
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped file.
    pub(crate) fn layout(&self) -> &UsageLayout {
        self.view.get()
    }

    /// The GPU table entry of `gpu`, if it is inside the table.
    pub(crate) fn gpu_entry(&self, gpu: GpuIndex) -> Option<&crate::layout::UsageGpu> {
        gpu.get().and_then(|g| self.view.get().gpus.get(g))
    }

    /// The tenant's lock file.
    pub fn locks(&self) -> &LockFile {
        &self.locks
    }

    /// Where `uuid` sits in the GPU table, if it was registered. Lock-free.
    pub fn gpu_index(&self, uuid: &GpuUuid) -> Option<GpuIndex> {
        let wanted = uuid_words(&uuid.0);
        (0u32..)
            .zip(&self.view.get().gpus)
            .find(|(_, e)| {
                e.state.load(Acquire) == GPU_REGISTERED
                    && e.uuid[0].load(Relaxed) == wanted[0]
                    && e.uuid[1].load(Relaxed) == wanted[1]
            })
            .map(|(i, _)| GpuIndex(i))
    }

    /// The index of `uuid`, adding it to the GPU table if it is not there yet. Idempotent,
    /// and safe against concurrent registration from any thread or process: the table is
    /// changed only under a write lock on the lock file's
    /// [`GPU_TABLE`](lock_bytes::GPU_TABLE) byte, taken through a description of this call's
    /// own and dropped before it returns. Only the tenant's processes can hold that lock.
    pub fn register_gpu(&self, uuid: &GpuUuid) -> Result<GpuIndex, LedgerError> {
        if let Some(i) = self.gpu_index(uuid) {
            return Ok(i);
        }
        let lock = self.locks.handle()?;
        if !lock.lock_within(lock_bytes::GPU_TABLE, LockKind::Exclusive, LOCK_LIMIT)? {
            return Err(LedgerError::LockHeld {
                path: self.locks.path().to_path_buf(),
                what: "the GPU table's lock",
            });
        }
        let result = self.register_locked(uuid);
        // Closing `lock` drops the lock too; unlocking first just makes it prompt.
        let _ = lock.unlock(lock_bytes::GPU_TABLE);
        result
    }

    /// [`UsageFile::register_gpu`] with the table lock held.
    fn register_locked(&self, uuid: &GpuUuid) -> Result<GpuIndex, LedgerError> {
        if let Some(i) = self.gpu_index(uuid) {
            return Ok(i);
        }
        let words = uuid_words(&uuid.0);
        for (i, e) in (0u32..).zip(&self.view.get().gpus) {
            if e.state.load(Acquire) != GPU_EMPTY {
                continue;
            }
            e.uuid[0].store(words[0], Relaxed);
            e.uuid[1].store(words[1], Relaxed);
            e.reserved0.store(0, Relaxed);
            e.oom_refusals.store(0, Relaxed);
            e.retired_gpu_time_ns.store(0, Relaxed);
            e.credit_ns.store(0, Relaxed);
            e.refilled_at_ns.store(0, Relaxed);
            e.throttled_ns.store(0, Relaxed);
            // Last, with release: a reader that sees the state sees the UUID.
            e.state.store(GPU_REGISTERED, Release);
            return Ok(GpuIndex(i));
        }
        Err(LedgerError::GpuTableFull {
            path: self.path.clone(),
            max: MAX_GPUS,
        })
    }

    /// The registered GPUs.
    pub fn gpus(&self) -> Vec<(GpuIndex, GpuUuid)> {
        (0u32..)
            .zip(&self.view.get().gpus)
            .filter(|(_, e)| e.state.load(Acquire) == GPU_REGISTERED)
            .map(|(i, e)| {
                let words = [e.uuid[0].load(Relaxed), e.uuid[1].load(Relaxed)];
                (GpuIndex(i), GpuUuid(uuid_bytes(words)))
            })
            .collect()
    }

    /// The tenant's memory on `gpu`: the sum of `memory_bytes` over the occupied slots.
    /// Lock-free. It includes slots of processes that died and were not reclaimed yet (call
    /// [`UsageFile::reclaim_dead`] first for an exact figure), and, for an instant, requests
    /// that are being reserved and may still be refused.
    pub fn memory_used(&self, gpu: GpuIndex) -> u64 {
        gpu.get().map_or(0, |g| committed(self.view.get(), g, None))
    }

    /// The tenant's GPU time on `gpu` in nanoseconds: what departed processes were charged,
    /// plus what the occupied slots hold.
    pub fn gpu_time_ns(&self, gpu: GpuIndex) -> u64 {
        let Some(g) = gpu.get() else { return 0 };
        let layout = self.view.get();
        let retired = layout
            .gpus
            .get(g)
            .map_or(0, |e| e.retired_gpu_time_ns.load(SeqCst));
        occupied_and(layout, None)
            .filter_map(|i| slot_gpu(layout, i, g))
            .fold(retired, |t, rec| {
                t.saturating_add(rec.gpu_time_ns.load(SeqCst))
            })
    }

    /// Counts one allocation refused for being over quota on `gpu`.
    pub fn record_oom(&self, gpu: GpuIndex) {
        if let Some(e) = gpu.get().and_then(|g| self.view.get().gpus.get(g)) {
            e.oom_refusals.fetch_add(1, Relaxed);
        }
    }

    /// How many allocations were refused for being over quota on `gpu`.
    pub fn oom_refusals(&self, gpu: GpuIndex) -> u64 {
        gpu.get()
            .and_then(|g| self.view.get().gpus.get(g))
            .map_or(0, |e| e.oom_refusals.load(Relaxed))
    }

    /// Takes a process slot for this process.
    ///
    /// Tries a non-blocking write lock on each slot's byte of the lock file, free-looking
    /// slots first, through a new open file description that the returned [`ProcessSlot`]
    /// owns: the kernel drops the lock when that description closes, which happens when the
    /// process exits however it exits (and its forked children with it, which keep the
    /// description, as they keep the driver's). A slot it locks that still holds usage
    /// belonged to a process that died; it is emptied first. Then the slot is marked live with
    /// this process's PID, PID namespace and the time, and its bit is set in the occupied
    /// bitmap.
    pub fn claim_slot(self: &Arc<Self>) -> Result<ProcessSlot, LedgerError> {
        let lock = self.locks.new_description("claim a process slot in")?;
        let layout = self.view.get();
        let clean: Vec<u32> = slot_indexes()
            .filter(|&i| !slot_in_use(layout, i))
            .collect();
        let dirty = slot_indexes().filter(|&i| slot_in_use(layout, i));
        // Each slot is tried once: first those that looked free, then the rest.
        for i in clean.iter().copied().chain(dirty) {
            let byte = slot_lock_byte(i);
            let locked = sys::ofd_try_lock(lock.as_fd(), byte, sys::LockType::Write)
                .map_err(|e| LedgerError::io(self.locks.path(), "lock a process slot in", e))?;
            if !locked {
                continue;
            }
            let Some(slot) = usize::try_from(i).ok().and_then(|s| layout.slots.get(s)) else {
                let _ = sys::ofd_unlock(lock.as_fd(), byte);
                continue;
            };
            if slot_in_use(layout, i) {
                clear_slot(layout, i);
            }
            let pid = std::process::id();
            slot.pid.store(pid, Relaxed);
            slot.pid_namespace.store(own_pid_namespace(), Relaxed);
            slot.claimed_unix_ms.store(now_unix_ms(), Relaxed);
            slot.state.store(SLOT_LIVE, SeqCst);
            set_occupied(layout, i);
            return Ok(ProcessSlot::new(
                Arc::clone(self),
                i,
                OwnedFd::from(lock),
                pid,
            ));
        }
        Err(LedgerError::SlotsFull {
            path: self.path.clone(),
            max: MAX_SLOTS,
        })
    }

    /// Empties every slot that may hold usage but whose lock nobody holds: its process died
    /// (any way, in any PID namespace) without giving the slot back.
    ///
    /// Each such slot's memory is given back, its GPU time is added to the GPU table's
    /// `retired_gpu_time_ns`, and its bit is cleared. Locks are probed through a description
    /// of this call's own, so live slots, including the caller's own, are never taken.
    pub fn reclaim_dead(&self) -> Result<ReclaimReport, LedgerError> {
        let layout = self.view.get();
        let mut freed = [0u64; MAX_GPUS];
        let mut slots = 0u32;
        let mut probe: Option<File> = None;
        for i in slot_indexes() {
            if !slot_in_use(layout, i) {
                continue;
            }
            let fd = match &probe {
                Some(f) => f,
                None => probe.insert(self.locks.new_description("reclaim slots in")?),
            };
            let byte = slot_lock_byte(i);
            let locked = sys::ofd_try_lock(fd.as_fd(), byte, sys::LockType::Write)
                .map_err(|e| LedgerError::io(self.locks.path(), "lock a process slot in", e))?;
            if !locked {
                continue;
            }
            // Re-check under the lock: its owner may have given it back meanwhile.
            if slot_in_use(layout, i) {
                let bytes = clear_slot(layout, i);
                for (total, b) in freed.iter_mut().zip(bytes) {
                    *total = total.saturating_add(b);
                }
                slots += 1;
            }
            sys::ofd_unlock(fd.as_fd(), byte)
                .map_err(|e| LedgerError::io(self.locks.path(), "unlock a process slot in", e))?;
        }
        Ok(ReclaimReport {
            slots,
            bytes: (0u32..)
                .zip(freed)
                .filter(|&(_, b)| b != 0)
                .map(|(g, b)| (GpuIndex(g), b))
                .collect(),
        })
    }

    /// The occupied slots. `live` says whether some process holds the slot's lock; a slot
    /// that is occupied but not live belongs to a dead process and awaits reclaiming.
    pub fn slots(&self) -> Vec<SlotInfo> {
        let layout = self.view.get();
        occupied_and(layout, None)
            .filter_map(|i| {
                let slot = layout.slots.get(usize::try_from(i).ok()?)?;
                Some(SlotInfo {
                    index: i,
                    pid: slot.pid.load(Relaxed),
                    pid_namespace: slot.pid_namespace.load(Relaxed),
                    claimed_unix_ms: slot.claimed_unix_ms.load(Relaxed),
                    live: self.locks.is_locked(slot_lock_byte(i)),
                    memory_bytes: slot_memory(slot),
                })
            })
            .collect()
    }
}

/// What [`UsageFile::reclaim_dead`] gave back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReclaimReport {
    /// How many slots were emptied.
    pub slots: u32,
    /// Memory given back per GPU (only GPUs with a non-zero amount).
    pub bytes: Vec<(GpuIndex, u64)>,
}

/// One occupied slot, as [`UsageFile::slots`] and [`UsageSnapshot::slots`](crate::UsageSnapshot::slots) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot's index, 0..[`MAX_SLOTS`].
    pub index: u32,
    /// The PID the process had in its own namespace when it claimed the slot. Informational
    /// only: it means nothing in another PID namespace.
    pub pid: u32,
    /// The inode of that PID namespace (0 if the process could not tell): with `pid`, what
    /// names the process from the host. Informational only, like `pid`.
    pub pid_namespace: u64,
    /// When the slot was claimed.
    pub claimed_unix_ms: u64,
    /// Whether a process holds the slot's lock in the tenant's lock file (`F_OFD_GETLK`);
    /// occupied and not live = dead. True where that cannot be asked (no lock file, or one
    /// this process may not open): a process is never called dead on a guess.
    pub live: bool,
    /// Memory the slot holds, per GPU (only GPUs with a non-zero amount).
    pub memory_bytes: Vec<(GpuIndex, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bits_lists_each_set_bit_once_lowest_first() {
        assert_eq!(set_bits(0).count(), 0);
        assert_eq!(set_bits(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
        assert_eq!(set_bits(u64::MAX).count(), 64);
        assert_eq!(set_bits(1 << 63).collect::<Vec<_>>(), [63]);
    }

    #[test]
    fn bit_says_which_word_and_which_bit() {
        assert_eq!(bit(0), Some((0, 1)));
        assert_eq!(bit(63), Some((0, 1 << 63)));
        assert_eq!(bit(64), Some((1, 1)));
        assert_eq!(bit(1023), Some((15, 1 << 63)));
        assert_eq!(bit(1024), None);
        assert_eq!(bit(u32::MAX), None);
    }

    #[test]
    fn slots_in_numbers_bits_across_words() {
        assert_eq!(
            slots_in([0b101, 0, 1 << 1]).collect::<Vec<_>>(),
            [0, 2, 129]
        );
        assert_eq!(slots_in([0u64; BITMAP_WORDS]).count(), 0);
        assert_eq!(slots_in([u64::MAX; BITMAP_WORDS]).count(), MAX_SLOTS);
    }

    #[test]
    fn gpu_index_outside_the_table_is_none() {
        assert_eq!(GpuIndex(0).get(), Some(0));
        assert_eq!(GpuIndex(15).get(), Some(15));
        assert_eq!(GpuIndex(16).get(), None);
        assert_eq!(GpuIndex(u32::MAX).get(), None);
    }
}
