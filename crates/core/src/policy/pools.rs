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

/// What one pool is charged, and on which GPU. Settling is done under the pool's lock, the
/// driver asked while it is held, so that two threads allocating from one pool at once
/// cannot both count the same growth.
#[derive(Debug)]
pub struct PoolCharge {
    gpu: Gpu,
    charged: u64,
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
    /// The GPU the pool is charged on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// What the pool is charged now.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// Makes the pool's charge what it holds, `reserved` (just read from the driver). An
    /// allocation's `reservation` pays for the growth it covers and the rest of it is given
    /// back; growth beyond it is charged unasked; a shrink is released. A reservation made
    /// on another GPU than the pool's pays for nothing and is given back whole.
    pub fn settle(
        &mut self,
        reserved: u64,
        reservation: Option<Reservation<'_>>,
        memory: &MemoryPolicy,
    ) {
        let reserved_for_call = reservation.map(Reservation::commit);
        let paid = reserved_for_call
            .filter(|charge| charge.gpu == self.gpu.index)
            .map_or(0, |charge| charge.bytes);
        if let Some(charge) = reserved_for_call
            && charge.gpu != self.gpu.index
        {
            memory.release(charge);
        }
        let due = settlement(self.charged, reserved, paid);
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
        self.charged = self.charged - due.shrunk + due.kept + beyond;
    }
}

/// A pool's charge, locked while it is settled.
pub type SharedCharge = Arc<Mutex<PoolCharge>>;

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
        let (_, charge) = pools.entry(pool).or_insert_with(|| {
            let charge = PoolCharge {
                gpu: *gpu,
                charged: 0,
            };
            (gpu.index, Arc::new(Mutex::new(charge)))
        });
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

    /// `pool` was destroyed, holding what `charge` says (settled just before; `None` for a
    /// pool never allocated from). The handle may be reused for a new pool; what the old one
    /// still held stays charged.
    pub fn destroyed(&self, pool: u64, charge: Option<&PoolCharge>) {
        self.pools.lock().remove(&pool);
        self.homes.lock().remove(&pool);
        if let Some(charge) = charge.filter(|charge| charge.charged > 0) {
            self.orphaned.lock().push(Charge {
                gpu: charge.gpu.index,
                bytes: charge.charged,
            });
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
mod tests {
    use super::*;
    use gpuslice_ledger::{GpuUuid, Ledger, TenantName};

    const MIB: u64 = 1 << 20;

    /// A policy with a 1 GiB limit over a fresh ledger, and its GPU.
    fn policy() -> (tempfile::TempDir, MemoryPolicy, Gpu) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let usage = ledger.open_usage(&TenantName::new("t").unwrap()).unwrap();
        let policy = MemoryPolicy::new(usage, None, Some(1024 * MIB));
        let gpu = policy.gpu(GpuUuid([1; 16])).unwrap();
        (dir, policy, gpu)
    }

    #[test]
    fn growth_is_paid_by_the_reservation_first() {
        assert_eq!(
            settlement(100, 164, 64),
            Settlement {
                kept: 64,
                unused: 0,
                beyond: 0,
                shrunk: 0
            }
        );
        // Served from idle memory: the whole reservation goes back.
        assert_eq!(
            settlement(100, 100, 64),
            Settlement {
                kept: 0,
                unused: 64,
                beyond: 0,
                shrunk: 0
            }
        );
        // Grown by a whole step of the pool: the rest is charged beyond the reservation.
        assert_eq!(
            settlement(0, 2 * MIB, MIB),
            Settlement {
                kept: MIB,
                unused: 0,
                beyond: MIB,
                shrunk: 0
            }
        );
        // The pool released memory since it was charged (a synchronization, a trim).
        assert_eq!(
            settlement(300, 100, 64),
            Settlement {
                kept: 0,
                unused: 64,
                beyond: 0,
                shrunk: 200
            }
        );
    }

    #[test]
    fn a_pool_is_charged_what_it_holds() {
        let (_dir, memory, gpu) = policy();
        let pools = PoolCharges::new();
        let charge = pools.charge_of(7, &gpu);
        let mut pool = charge.lock();
        // 100 MiB asked; the pool grew by 100 MiB.
        let reservation = memory.reserve(&gpu, 100 * MIB).unwrap();
        pool.settle(100 * MIB, Some(reservation), &memory);
        assert_eq!(
            (pool.charged(), memory.used_now(gpu.index)),
            (100 * MIB, 100 * MIB)
        );
        // 50 MiB asked, served from idle memory: nothing more charged.
        let reservation = memory.reserve(&gpu, 50 * MIB).unwrap();
        pool.settle(100 * MIB, Some(reservation), &memory);
        assert_eq!(memory.used_now(gpu.index), 100 * MIB);
        // 1 MiB asked; the pool grew by 2 MiB.
        let reservation = memory.reserve(&gpu, MIB).unwrap();
        pool.settle(102 * MIB, Some(reservation), &memory);
        assert_eq!(
            (pool.charged(), memory.used_now(gpu.index)),
            (102 * MIB, 102 * MIB)
        );
        // A synchronization released 60 MiB; a refresh sees it.
        pool.settle(42 * MIB, None, &memory);
        assert_eq!(
            (pool.charged(), memory.used_now(gpu.index)),
            (42 * MIB, 42 * MIB)
        );
    }

    #[test]
    fn growth_beyond_the_reservation_is_charged_even_past_the_limit() {
        let (_dir, memory, gpu) = policy();
        let pools = PoolCharges::new();
        let charge = pools.charge_of(7, &gpu);
        let mut pool = charge.lock();
        let reservation = memory.reserve(&gpu, 1023 * MIB).unwrap();
        pool.settle(1024 * MIB + MIB, Some(reservation), &memory);
        assert_eq!(
            memory.used_now(gpu.index),
            1025 * MIB,
            "the GPU holds it either way: the ledger never counts less"
        );
        assert!(memory.reserve(&gpu, MIB).is_err());
    }

    #[test]
    fn a_reservation_on_another_gpu_is_given_back_whole() {
        let (_dir, memory, gpu) = policy();
        let other = memory.gpu(GpuUuid([2; 16])).unwrap();
        let pools = PoolCharges::new();
        let charge = pools.charge_of(7, &gpu);
        let reservation = memory.reserve(&other, 64 * MIB).unwrap();
        charge.lock().settle(64 * MIB, Some(reservation), &memory);
        assert_eq!(memory.used_now(other.index), 0);
        assert_eq!(memory.used_now(gpu.index), 64 * MIB);
    }

    #[test]
    fn a_destroyed_pool_keeps_the_charge_of_what_it_held_and_frees_its_handle() {
        let (_dir, memory, gpu) = policy();
        let pools = PoolCharges::new();
        pools.created(7, PoolHome::Gpu(gpu));
        let charge = pools.charge_of(7, &gpu);
        let reservation = memory.reserve(&gpu, 64 * MIB).unwrap();
        charge.lock().settle(64 * MIB, Some(reservation), &memory);
        pools.destroyed(7, Some(&charge.lock()));
        assert_eq!(pools.orphaned_on(gpu.index), 64 * MIB);
        assert_eq!(memory.used_now(gpu.index), 64 * MIB);
        assert!(pools.existing(7).is_none() && pools.home(7).is_none());
        assert!(pools.on_gpu(gpu.index).is_empty());
        // The handle reused for a new pool starts from nothing.
        assert_eq!(pools.charge_of(7, &gpu).lock().charged(), 0);
    }

    #[test]
    fn pools_are_listed_by_gpu_and_host_pools_are_told_apart() {
        let (_dir, memory, gpu) = policy();
        let other = memory.gpu(GpuUuid([2; 16])).unwrap();
        let pools = PoolCharges::new();
        pools.created(1, PoolHome::Host);
        pools.created(2, PoolHome::Gpu(other));
        assert_eq!(pools.home(1), Some(PoolHome::Host));
        assert_eq!(
            pools.home(3),
            None,
            "a default pool was never created by the program"
        );
        pools.charge_of(2, &other);
        pools.charge_of(3, &gpu);
        let on = |gpu: &Gpu| -> Vec<u64> {
            let mut handles: Vec<u64> = pools
                .on_gpu(gpu.index)
                .into_iter()
                .map(|(h, _)| h)
                .collect();
            handles.sort_unstable();
            handles
        };
        assert_eq!(on(&gpu), [3]);
        assert_eq!(on(&other), [2]);
    }
}
