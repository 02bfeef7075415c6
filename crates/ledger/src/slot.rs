//! A process's slot: the counters it reserves memory in, owned through an OFD lock, and the
//! lock-free reservation protocol of the allocation hot path.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::layout::SlotGpu;
use crate::usage::{GpuIndex, UsageFile, claimed, clear_slot, committed, saturating_sub, slot_gpu};

/// How often [`ProcessSlot::try_reserve`] retries after a transient clash.
const RESERVE_ATTEMPTS: u32 = 64;

/// Why [`ProcessSlot::try_reserve`] refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OverLimit {
    /// What the tenant held on the GPU without this request when it was refused (this
    /// process's earlier reservations included).
    pub used: u64,
    /// The request.
    pub requested: u64,
    /// The limit it was checked against.
    pub limit: u64,
}

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes requested with {} bytes in use would exceed the limit of {} bytes",
            self.requested, self.used, self.limit
        )
    }
}

impl std::error::Error for OverLimit {}

/// This process's slot in its tenant's usage file: the counters it reserves memory in.
///
/// Ownership is proven by an OFD write lock on the slot's byte of the tenant's lock file,
/// carried by a file description only this value (and the process's forked children) hold.
/// Dropping it gives the slot back cleanly; if the process dies instead, the kernel drops the
/// lock once its last forked child is gone too, and the next [`UsageFile::reclaim_dead`] or
/// [`UsageFile::claim_slot`] empties the slot.
///
/// Share it between the process's threads (`&ProcessSlot` is enough for every operation).
#[derive(Debug)]
pub struct ProcessSlot {
    file: Arc<UsageFile>,
    index: u32,
    /// The description holding the slot's lock; `None` once given up.
    lock: Option<OwnedFd>,
    /// The process that claimed the slot; a forked child must not give it back.
    owner_pid: u32,
}

impl ProcessSlot {
    /// The slot's index in the usage file.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The usage file the slot is in.
    pub fn usage_file(&self) -> &Arc<UsageFile> {
        &self.file
    }

    /// This slot's record for `gpu`.
    #[inline]
    fn own(&self, gpu: GpuIndex) -> Option<&SlotGpu> {
        slot_gpu(self.file.layout(), self.index, gpu.get()?)
    }

    /// This slot's record for `gpu`, for the compute records.
    pub(crate) fn own_record(&self, gpu: GpuIndex) -> Option<&SlotGpu> {
        self.own(gpu)
    }

    /// Reserves `bytes` on `gpu` for this process, unless the tenant's total on that GPU
    /// would exceed `limit`. The allocation hot path: no syscalls, no locks, no allocation.
    ///
    /// The protocol (`docs/architecture.md`): add the request to this slot's counter, then
    /// sum the occupied slots. Within the limit: done. Over it: take the request back and sum
    /// again; if the others alone leave room, the excess was another reservation in flight
    /// (a transient clash), so try again, a bounded number of times; otherwise refuse.
    /// Because every reservation adds before it reads (all sequentially consistent), of any
    /// two that clash the later one sees the other: reservations that succeed never together
    /// exceed `limit`, across all the tenant's threads and processes.
    ///
    /// An index outside the GPU table is refused (with `used` 0): nothing can be counted there.
    pub fn try_reserve(&self, gpu: GpuIndex, bytes: u64, limit: u64) -> Result<(), OverLimit> {
        let refuse = |used| {
            Err(OverLimit {
                used,
                requested: bytes,
                limit,
            })
        };
        let (Some(g), Some(own)) = (gpu.get(), self.own(gpu)) else {
            return refuse(0);
        };
        let layout = self.file.layout();
        let own_slot = Some(self.index);
        if bytes > limit {
            return refuse(committed(layout, g, own_slot));
        }
        let mut others = 0;
        for _ in 0..RESERVE_ATTEMPTS {
            // Announce the request, then look: of two clashing reservations at least one
            // sees the other's announcement, so together they never pass the limit.
            let before = own.pending_bytes.fetch_add(bytes, SeqCst);
            if before.checked_add(bytes).is_none() {
                // The counter wrapped (no real GPU gets here): undo exactly, since a
                // saturating undo of a wrapped add would lose what the slot held, and refuse.
                own.pending_bytes.fetch_sub(bytes, SeqCst);
                return refuse(committed(layout, g, own_slot));
            }
            // A saturated sum means the counters would wrap: never grant that, even against
            // an unlimited quota. Below it, the own counter (part of the sum) cannot wrap.
            let total = claimed(layout, g, own_slot);
            if total < u64::MAX && total <= limit {
                // Granted: hold the bytes before dropping the announcement, so the claim is
                // never absent while the reservation stands.
                own.memory_bytes.fetch_add(bytes, SeqCst);
                saturating_sub(&own.pending_bytes, bytes);
                return Ok(());
            }
            saturating_sub(&own.pending_bytes, bytes);
            others = claimed(layout, g, own_slot);
            if others.saturating_add(bytes) > limit {
                return refuse(committed(layout, g, own_slot));
            }
            std::hint::spin_loop();
        }
        refuse(others)
    }

    /// Records `bytes` this process already holds on `gpu` without having reserved them:
    /// memory the driver took on its own (kernel code loaded at first launch, allocation
    /// granularity). Unlike [`try_reserve`](Self::try_reserve) it cannot be refused, since
    /// the memory is in use either way; it may take the tenant past its limit, and then
    /// every reservation is refused until usage is back under it. Give it back with
    /// [`release`](Self::release).
    pub fn charge(&self, gpu: GpuIndex, bytes: u64) {
        if let Some(own) = self.own(gpu) {
            // Saturating: a counter near u64::MAX is nonsense already; never wrap it.
            let _ = own
                .memory_bytes
                .fetch_update(SeqCst, SeqCst, |held| Some(held.saturating_add(bytes)));
        }
    }

    /// Gives back `bytes` reserved on `gpu` (stopping at 0 if more is released than held).
    pub fn release(&self, gpu: GpuIndex, bytes: u64) {
        if let Some(own) = self.own(gpu) {
            saturating_sub(&own.memory_bytes, bytes);
        }
    }

    /// What this process holds on `gpu`.
    pub fn held(&self, gpu: GpuIndex) -> u64 {
        self.own(gpu).map_or(0, |own| own.memory_bytes.load(SeqCst))
    }

    /// Charges `ns` nanoseconds of GPU time on `gpu` to this process.
    pub fn add_gpu_time(&self, gpu: GpuIndex, ns: u64) {
        if let Some(own) = self.own(gpu) {
            // Saturating: a wrapped counter would make the tenant look idle.
            let _ = own
                .gpu_time_ns
                .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_add(ns)));
        }
    }

    /// The GPU time charged to this process on `gpu`, in nanoseconds.
    pub fn gpu_time_ns(&self, gpu: GpuIndex) -> u64 {
        self.own(gpu).map_or(0, |own| own.gpu_time_ns.load(Relaxed))
    }

    /// For a forked child: forgets this slot without touching it (the parent still owns it)
    /// and keeps the child's copy of the lock's descriptor open for as long as the child
    /// lives (it is closed on `exec`).
    ///
    /// The child holds the parent's GPU memory as long as it holds the parent's descriptors
    /// of the driver (the kernel frees a process's device memory when the last copy of them
    /// closes, not when the process that allocated it dies), so the parent's charges must
    /// stay until then too: the slot's lock, shared by both descriptors, goes with the last.
    ///
    /// Async-signal-safe: it calls nothing. It frees nothing (the child's reference to the
    /// usage file and the descriptor are leaked on purpose).
    pub fn abandon_after_fork(self) {
        let _ = std::mem::ManuallyDrop::new(self);
    }
}

impl ProcessSlot {
    /// Closes the slot's lock without emptying the slot: what the kernel does when a process
    /// dies. For tests of how dead processes are seen and reclaimed.
    #[doc(hidden)]
    pub fn close_as_if_dead(mut self) {
        drop(self.lock.take());
    }
}

impl Drop for ProcessSlot {
    /// A clean exit: empties the slot (its GPU time goes to `retired_gpu_time_ns`), marks it
    /// free, clears its bit, and only then closes the descriptor, which drops the lock (unless
    /// a forked child still has a copy). In a forked child that did not call
    /// [`ProcessSlot::abandon_after_fork`] it only closes its copy.
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        if std::process::id() == self.owner_pid {
            clear_slot(self.file.layout(), self.index);
        }
        drop(lock);
    }
}

impl ProcessSlot {
    /// A slot just claimed: `lock` holds the OFD lock on slot `index` of `file`.
    pub(crate) fn new(file: Arc<UsageFile>, index: u32, lock: OwnedFd, owner_pid: u32) -> Self {
        ProcessSlot {
            file,
            index,
            lock: Some(lock),
            owner_pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_limit_message_gives_the_numbers() {
        let e = OverLimit {
            used: 3,
            requested: 2,
            limit: 4,
        };
        assert_eq!(
            e.to_string(),
            "2 bytes requested with 3 bytes in use would exceed the limit of 4 bytes"
        );
    }
}
