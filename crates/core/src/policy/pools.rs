//! The charge of memory pools (stream-ordered allocation: `cuMemAllocAsync`,
//! `cuMemAllocFromPoolAsync`): each pool is charged what it holds on its GPU, not what its
//! allocations use.
//!
//! A pool keeps freed memory. A block freed with `cuMemFreeAsync` goes back to the pool only
//! when the stream reaches the free, and the pool gives idle memory back to the GPU only at
//! a synchronization, above its release threshold, or at `cuMemPoolTrimTo`. So a pool's
//! charge is its reserved memory (`CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`), which the hooks
//! read from the driver and hand to [`PoolCharge::settle`]; frees change nothing here. No
//! CUDA in this module.
//!
//! No lock is held while the driver is asked (`cuMemPoolGetAttribute`, `cuMemPoolTrimTo`).
//! Threads that allocate from one pool at once each read what it holds, and their
//! readings may come back in any order; applying an older one after a newer one would take
//! the charge below what the pool holds. So each reading gets a [`Ticket`] (after the
//! call that changed the pool returned, before the reading), and a reading is applied only
//! if no later ticket's was. A later ticket's reading saw every change an earlier one
//! could have seen, so a dropped reading loses nothing: its growth was charged by the later
//! one, and its reservation goes back.

use std::collections::HashMap;
use std::sync::Arc;

use gpuslice_ledger::GpuIndex;
use parking_lot::Mutex;

use crate::policy::memory::{Charge, Gpu, MemoryPolicy, Reservation};

/// Where a pool keeps its memory, when the shim saw the pool created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolHome {
    /// On a GPU: charged there.
    Gpu(Gpu),
    /// In host memory: takes nothing of any GPU, so not charged.
    Host,
}

/// What one pool is charged, and on which GPU. Its lock is held only for the short steps
/// below, never while the driver is asked what the pool holds: readings are ordered by
/// [`Ticket`]s instead, and only the newest is applied (see [`PoolCharge::settle`]).
#[derive(Debug)]
pub struct PoolCharge {
    gpu: Gpu,
    account: Mutex<Account>,
}

#[derive(Debug, Default)]
struct Account {
    /// What the pool is charged: what it held at the newest reading applied.
    charged: u64,
    /// Tickets handed out.
    issued: u64,
    /// The ticket of the newest reading applied (0: none yet).
    applied: u64,
    /// The pool was destroyed: its charge is an orphan's now, and nothing changes it.
    destroyed: bool,
}

/// The place of one reading of what a pool holds among all readings of that pool. Taken
/// after the call that changed the pool (an allocation, a trim) returned and before the
/// reading: a reading with a later ticket then sees at least every change whose reading
/// has an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What became of a reading handed to [`PoolCharge::settle`].
#[derive(Debug)]
pub enum Settled<'a> {
    /// Applied: the charge is what the pool held at the reading. `went_down`: it fell.
    Applied {
        /// Whether the charge is lower than before.
        went_down: bool,
    },
    /// A reading with a later ticket was applied first: this one is older news and is
    /// dropped. The growth it would have seen was in the later reading, which charged it
    /// (beyond that reading's own reservation, if any), so the reservation went back.
    Superseded,
    /// The pool was destroyed before this reading could be applied: nothing changed. The
    /// reservation, if any, is the caller's to charge otherwise (by size, as an allocation
    /// of its own: the growth it covers may not be in what the destroyed pool keeps).
    Destroyed(Option<Reservation<'a>>),
}

/// How a pool's charge moves to what it holds now, for an allocation that reserved some
/// bytes before calling the driver (0 for a refresh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// Of the reservation, what covered the pool's growth: kept.
    pub kept: u64,
    /// Of the reservation, what the pool did not need (it served the allocation from idle
    /// memory): given back.
    pub unused: u64,
    /// Growth beyond the reservation (the pool grows in steps larger than the request, or
    /// another thread's allocation grew it first): charged without asking, since the GPU
    /// holds it either way.
    pub beyond: u64,
    /// What the pool gave back since it was last charged: released.
    pub shrunk: u64,
}

/// The settlement of a pool charged `charged` that holds `reserved` now, for an allocation
/// that reserved `reservation`.
pub fn settlement(charged: u64, reserved: u64, reservation: u64) -> Settlement {
    let growth = reserved.saturating_sub(charged);
    let kept = growth.min(reservation);
    Settlement {
        kept,
        unused: reservation - kept,
        beyond: growth - kept,
        shrunk: charged.saturating_sub(reserved),
    }
}

impl PoolCharge {
    fn new(gpu: Gpu) -> PoolCharge {
        PoolCharge {
            gpu,
            account: Mutex::new(Account::default()),
        }
    }

    /// The GPU the pool is charged on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// What the pool is charged now.
    pub fn charged(&self) -> u64 {
        self.account.lock().charged
    }

    /// Whether the pool was destroyed (it is not to be asked or trimmed any more).
    pub fn is_destroyed(&self) -> bool {
        self.account.lock().destroyed
    }

    /// The ticket of a reading about to be taken: after the call that changed the pool
    /// returned, before the driver is asked what the pool holds.
    pub fn ticket(&self) -> Ticket {
        let mut account = self.account.lock();
        account.issued += 1;
        Ticket(account.issued)
    }

    /// Makes the pool's charge what it holds, `reserved`, read from the driver under
    /// `ticket`, unless a reading with a later ticket was applied already (then this one is
    /// dropped: applying it would take the charge back to an older state, below what the
    /// pool holds). An allocation's `reservation` pays for the growth it covers and the
    /// rest of it is given back; growth beyond it is charged unasked; a shrink is released.
    /// A reservation made on another GPU than the pool's pays for nothing and is given back
    /// whole; so is the reservation of a superseded reading.
    pub fn settle<'a>(
        &self,
        ticket: Ticket,
        reserved: u64,
        reservation: Option<Reservation<'a>>,
        memory: &MemoryPolicy,
    ) -> Settled<'a> {
        let mut account = self.account.lock();
        if ticket.0 <= account.applied {
            // Also after a destroy: the later reading is in what the destroyed pool keeps.
            drop(reservation);
            return Settled::Superseded;
        }
        if account.destroyed {
            return Settled::Destroyed(reservation);
        }
        account.applied = ticket.0;
        let before = account.charged;
        account.charged = self.apply(before, reserved, reservation, memory);
        Settled::Applied {
            went_down: account.charged < before,
        }
    }

    /// The charge after a reading of `reserved` applied to a pool charged `charged`, the
    /// ledger moved to match.
    fn apply(
        &self,
        charged: u64,
        reserved: u64,
        reservation: Option<Reservation<'_>>,
        memory: &MemoryPolicy,
    ) -> u64 {
        let reserved_for_call = reservation.map(Reservation::commit);
        let paid = reserved_for_call
            .filter(|charge| charge.gpu == self.gpu.index)
            .map_or(0, |charge| charge.bytes);
        if let Some(charge) = reserved_for_call
            && charge.gpu != self.gpu.index
        {
            memory.release(charge);
        }
        let due = settlement(charged, reserved, paid);
        let gpu = self.gpu.index;
        if due.unused > 0 {
            memory.release(Charge {
                gpu,
                bytes: due.unused,
            });
        }
        if due.shrunk > 0 {
            memory.release(Charge {
                gpu,
                bytes: due.shrunk,
            });
        }
        // Charging can fail only if the ledger has no slot for this process: then what is
        // charged stays what it was, plus what the reservation paid.
        let beyond = if due.beyond > 0 {
            memory
                .charge_unasked(&self.gpu, due.beyond)
                .map_or(0, |charge| charge.bytes)
        } else {
            0
        };
        charged - due.shrunk + due.kept + beyond
    }

    /// The pool was destroyed: its charge now is what it keeps until the process exits;
    /// nothing changes it after this. `None` if it was destroyed already.
    fn close(&self) -> Option<Charge> {
        let mut account = self.account.lock();
        if account.destroyed {
            return None;
        }
        account.destroyed = true;
        Some(Charge {
            gpu: self.gpu.index,
            bytes: account.charged,
        })
    }
}

/// A pool's charge, shared by the threads that allocate from it.
pub type SharedCharge = Arc<PoolCharge>;

/// The pools this process allocates from, and what each is charged.
#[derive(Debug, Default)]
pub struct PoolCharges {
    /// Pools by handle, with the GPU each is charged on (kept beside the charge so that
    /// listing a GPU's pools never waits for one being settled).
    pools: Mutex<HashMap<u64, (GpuIndex, SharedCharge)>>,
    /// Where pools the shim saw created keep their memory, by handle.
    homes: Mutex<HashMap<u64, PoolHome>>,
    /// Charges of pools destroyed while they still held memory, kept until the process
    /// exits: the driver frees that memory once the pool's last allocations are freed, and
    /// a destroyed pool can no longer be asked what it holds.
    orphaned: Mutex<Vec<Charge>>,
}

impl PoolCharges {
    /// No pools yet.
    pub fn new() -> PoolCharges {
        PoolCharges::default()
    }

    /// Records where a pool created through the shim keeps its memory.
    pub fn created(&self, pool: u64, home: PoolHome) {
        self.homes.lock().insert(pool, home);
    }

    /// Where `pool` keeps its memory, if the shim saw it created (not a device's default
    /// pool, nor one imported from another process).
    pub fn home(&self, pool: u64) -> Option<PoolHome> {
        self.homes.lock().get(&pool).copied()
    }

    /// The charge of `pool`, charged on `gpu` from its first allocation on.
    pub fn charge_of(&self, pool: u64, gpu: &Gpu) -> SharedCharge {
        let mut pools = self.pools.lock();
        let (_, charge) = pools
            .entry(pool)
            .or_insert_with(|| (gpu.index, Arc::new(PoolCharge::new(*gpu))));
        Arc::clone(charge)
    }

    /// The charge of `pool`, if it was ever allocated from.
    pub fn existing(&self, pool: u64) -> Option<SharedCharge> {
        self.pools
            .lock()
            .get(&pool)
            .map(|(_, charge)| Arc::clone(charge))
    }

    /// Every pool charged on `gpu`, with its handle.
    pub fn on_gpu(&self, gpu: GpuIndex) -> Vec<(u64, SharedCharge)> {
        self.pools
            .lock()
            .iter()
            .filter(|(_, (on, _))| *on == gpu)
            .map(|(&pool, (_, charge))| (pool, Arc::clone(charge)))
            .collect()
    }

    /// `pool` was destroyed (its charge settled just before, after a trim). It is taken out
    /// of the table, so no later allocation or look finds it (the handle may be reused for
    /// a new pool, which starts from nothing), and its charge is closed: a settle that
    /// comes after this changes nothing, one that came before is in what is kept. What
    /// it still holds stays charged until the process exits.
    pub fn destroyed(&self, pool: u64) {
        let charge = self.pools.lock().remove(&pool);
        self.homes.lock().remove(&pool);
        if let Some(kept) = charge
            .and_then(|(_, charge)| charge.close())
            .filter(|kept| kept.bytes > 0)
        {
            self.orphaned.lock().push(kept);
        }
    }

    /// What destroyed pools still hold on `gpu`, as far as the shim can tell.
    pub fn orphaned_on(&self, gpu: GpuIndex) -> u64 {
        self.orphaned
            .lock()
            .iter()
            .filter(|charge| charge.gpu == gpu)
            .map(|charge| charge.bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests;
