//! The memory policy: may this tenant take these bytes on this GPU, and what should it be
//! told about the GPU's memory? Plain Rust over the ledger; it never calls CUDA.

use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use gpuslice_ledger::{
    GpuIndex, GpuUuid, LedgerError, OverLimit, ProcessSlot, QuotaFile, UsageFile,
};

use crate::log::{Level, RateLimit, log};

/// A GPU as the policy knows it: where the tenant's usage of it is kept, and its identity
/// (quotas are keyed by UUID, never by ordinal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Its entry in the tenant's usage file.
    pub index: GpuIndex,
    /// Its UUID.
    pub uuid: GpuUuid,
}

/// Bytes held against a GPU's quota by one allocation, to be given back when it is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// Where the bytes are counted.
    pub gpu: GpuIndex,
    /// How many.
    pub bytes: u64,
}

/// Why a reservation was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The tenant's limit on this GPU would be passed.
    OverLimit(OverLimit),
    /// The ledger could not record it (no free process slot, I/O error).
    Ledger(LedgerError),
}

/// Memory as a program sees it through `cuMemGetInfo` or NVML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryView {
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Bytes the tenant uses (with a quota) or the device's own answer.
    pub used: u64,
}

/// The tenant's memory quota and usage, for this process.
#[derive(Debug)]
pub struct MemoryPolicy {
    usage: Arc<UsageFile>,
    quota: Option<QuotaFile>,
    env_limit: Option<u64>,
    /// This process's slot, claimed at the first reservation so that processes that only
    /// look (nvidia-smi) take none. A raw pointer so a forked child can give it up without
    /// taking a lock the parent's threads may have held at `fork`.
    slot: AtomicPtr<ProcessSlot>,
    refusals_logged: RateLimit,
    ledger_errors_logged: RateLimit,
    /// When a claim last found every slot of the tenant live (`CLOCK_MONOTONIC` ns; 0 never).
    slots_full_at: AtomicU64,
}

/// How long after finding every slot live a process tries again.
const SLOTS_FULL_RETRY_NS: u64 = 100_000_000;

impl MemoryPolicy {
    /// A policy over the tenant's usage file, its quota file (if any) and the
    /// `GPUSLICE_MEMORY_LIMIT` value (if any).
    pub fn new(usage: Arc<UsageFile>, quota: Option<QuotaFile>, env_limit: Option<u64>) -> Self {
        MemoryPolicy {
            usage,
            quota,
            env_limit,
            slot: AtomicPtr::new(std::ptr::null_mut()),
            refusals_logged: RateLimit::new(),
            ledger_errors_logged: RateLimit::new(),
            slots_full_at: AtomicU64::new(0),
        }
    }

    /// The GPU with this UUID, registered in the tenant's usage file on first sight.
    pub fn gpu(&self, uuid: GpuUuid) -> Result<Gpu, LedgerError> {
        let index = match self.usage.gpu_index(&uuid) {
            Some(index) => index,
            None => self.usage.register_gpu(&uuid)?,
        };
        Ok(Gpu { index, uuid })
    }

    /// The tenant's limit on `gpu` now: the lower of its quota file's (read live, so a
    /// changed quota applies at once) and `GPUSLICE_MEMORY_LIMIT`. `None`: unlimited.
    pub fn limit(&self, gpu: &Gpu) -> Option<u64> {
        let from_file = self
            .quota
            .as_ref()
            .and_then(|quota| quota.limits_for(&gpu.uuid).memory_bytes);
        match (from_file, self.env_limit) {
            (Some(file), Some(env)) => Some(file.min(env)),
            (file, env) => file.or(env),
        }
    }

    /// Reserves `bytes` on `gpu` before the driver is asked for them. Dropping the
    /// reservation gives the bytes back; [`Reservation::commit`] keeps them.
    pub fn reserve(&self, gpu: &Gpu, bytes: u64) -> Result<Reservation<'_>, Refusal> {
        self.reserve_making_room(gpu, bytes, || false)
    }

    /// As [`reserve`](Self::reserve), but on the way to a refusal `make_room` may give back
    /// what the process holds and no longer needs (memory pools' idle memory); it says
    /// whether it gave anything back, and if it did the reservation is tried once more.
    pub fn reserve_making_room(
        &self,
        gpu: &Gpu,
        bytes: u64,
        make_room: impl FnOnce() -> bool,
    ) -> Result<Reservation<'_>, Refusal> {
        let slot = match self.slot() {
            Ok(slot) => slot,
            Err(error) => {
                // Not a quota matter: say what is wrong (all the tenant's process slots
                // taken, an unusable ledger), since "out of memory" alone would mislead.
                if let Some(held_back) = self.ledger_errors_logged.admit() {
                    log!(
                        Level::Error,
                        "refused {} on {}: this process cannot be counted: {error}{}",
                        Bytes(bytes),
                        gpu.uuid,
                        if held_back > 0 {
                            format!(" ({held_back} similar refusals not shown)")
                        } else {
                            String::new()
                        }
                    );
                }
                return Err(Refusal::Ledger(error));
            }
        };
        let limit = self.limit(gpu).unwrap_or(u64::MAX);
        let first = slot.try_reserve(gpu.index, bytes, limit);
        let outcome = match first {
            Ok(()) => Ok(()),
            // Memory of processes that died is still counted until someone reclaims it;
            // reclaiming costs syscalls, so only on the way to a refusal.
            Err(_) => match self.usage.reclaim_dead() {
                Ok(report) if report.slots > 0 => {
                    log!(
                        Level::Debug,
                        "gave back what {} dead process(es) of the tenant held: {:?}",
                        report.slots,
                        report.bytes
                    );
                    slot.try_reserve(gpu.index, bytes, limit)
                }
                _ => first,
            },
        };
        let outcome = match outcome {
            Err(_) if make_room() => slot.try_reserve(gpu.index, bytes, limit),
            outcome => outcome,
        };
        match outcome {
            Ok(()) => Ok(Reservation {
                policy: self,
                charge: Some(Charge {
                    gpu: gpu.index,
                    bytes,
                }),
            }),
            Err(over) => {
                self.usage.record_oom(gpu.index);
                if let Some(held_back) = self.refusals_logged.admit() {
                    log!(
                        Level::Warn,
                        "refused {} on {}: tenant uses {} of its {} limit{}",
                        Bytes(over.requested),
                        gpu.uuid,
                        Bytes(over.used),
                        Bytes(over.limit),
                        if held_back > 0 {
                            format!(" ({held_back} similar refusals not shown)")
                        } else {
                            String::new()
                        }
                    );
                }
                Err(Refusal::OverLimit(over))
            }
        }
    }

    /// Gives back what an allocation held.
    pub fn release(&self, charge: Charge) {
        if let Ok(slot) = self.slot() {
            slot.release(charge.gpu, charge.bytes);
        }
    }

    /// What this process holds on `gpu` (nothing before its first reservation).
    pub fn held_here(&self, gpu: GpuIndex) -> u64 {
        let slot = self.slot.load(Ordering::Acquire);
        if slot.is_null() {
            return 0;
        }
        // SAFETY: a published slot stays valid (see `slot`).
        unsafe { &*slot }.held(gpu)
    }

    /// What the tenant holds on `gpu` now, without reclaiming (no syscall): for cheap
    /// decisions on the allocation path. Dead processes' memory may still be in it.
    pub fn used_now(&self, gpu: GpuIndex) -> u64 {
        self.usage.memory_used(gpu)
    }

    /// Whether `bytes` more would fit in the tenant's limit on `gpu` as things stand (no
    /// syscall, nothing reserved): for deciding how much room to make before a reservation
    /// is tried again.
    pub fn would_fit(&self, gpu: &Gpu, bytes: u64) -> bool {
        self.limit(gpu)
            .is_none_or(|limit| self.used_now(gpu.index).saturating_add(bytes) <= limit)
    }

    /// Records memory this process holds on `gpu` without having asked for it (the driver
    /// took it on its own). It cannot be refused: it is in use either way.
    pub fn charge_unasked(&self, gpu: &Gpu, bytes: u64) -> Result<Charge, LedgerError> {
        self.slot()?.charge(gpu.index, bytes);
        Ok(Charge {
            gpu: gpu.index,
            bytes,
        })
    }

    /// What the tenant holds on `gpu`, dead processes' memory reclaimed first.
    pub fn used(&self, gpu: &Gpu) -> u64 {
        // A failed reclaim only means dead memory is still counted: never less than real.
        let _ = self.usage.reclaim_dead();
        self.usage.memory_used(gpu.index)
    }

    /// What a program should be told about `gpu`'s memory, given the device's own answer.
    /// `None` when the tenant has no limit there: the device's answer stands.
    pub fn view(&self, gpu: &Gpu, physical: MemoryView) -> Option<MemoryView> {
        let limit = self.limit(gpu)?;
        Some(quota_view(limit, self.used(gpu), physical))
    }

    /// For a forked child: lets go of the parent's slot without touching it. The slot, and
    /// the descriptor that holds its lock, are leaked on purpose: the child keeps the
    /// parent's device memory alive for as long as it keeps the parent's descriptors of the
    /// driver, so the parent's slot must stay live as long (see
    /// [`ProcessSlot::abandon_after_fork`]); and nothing is freed in a forked child.
    pub fn abandon_after_fork(&self) {
        self.slot.swap(std::ptr::null_mut(), Ordering::AcqRel);
    }

    /// The tenant's usage file.
    pub fn usage(&self) -> &Arc<UsageFile> {
        &self.usage
    }

    /// The tenant's quota file, if it has one.
    pub fn quota(&self) -> Option<&QuotaFile> {
        self.quota.as_ref()
    }

    /// This process's slot, claimed on first use.
    pub fn slot(&self) -> Result<&ProcessSlot, LedgerError> {
        let current = self.slot.load(Ordering::Acquire);
        if !current.is_null() {
            // SAFETY: published slots live until `abandon_after_fork`, which runs only in a
            // child where no other thread can hold this reference.
            return Ok(unsafe { &*current });
        }
        // With every slot live, a claim costs a system call per slot: after one fails, the
        // next tries wait a while (each allocation would otherwise pay it again).
        let now = gpuslice_ledger::monotonic_ns();
        let failed_at = self.slots_full_at.load(Ordering::Relaxed);
        if failed_at != 0 && now.saturating_sub(failed_at) < SLOTS_FULL_RETRY_NS {
            return Err(LedgerError::SlotsFull {
                path: self.usage.path().to_path_buf(),
                max: gpuslice_ledger::MAX_SLOTS,
            });
        }
        let claimed = match self.usage.claim_slot() {
            Ok(slot) => Box::into_raw(Box::new(slot)),
            Err(error) => {
                if matches!(error, LedgerError::SlotsFull { .. }) {
                    self.slots_full_at.store(now.max(1), Ordering::Relaxed);
                }
                return Err(error);
            }
        };
        match self.slot.compare_exchange(
            std::ptr::null_mut(),
            claimed,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: just published from a live Box; never freed while the process runs.
            Ok(_) => Ok(unsafe { &*claimed }),
            Err(winner) => {
                // Another thread claimed first; ours goes back (its Drop frees the slot).
                // SAFETY: `claimed` came from Box::into_raw above and was never published.
                drop(unsafe { Box::from_raw(claimed) });
                // SAFETY: `winner` is the published slot, valid as above.
                Ok(unsafe { &*winner })
            }
        }
    }
}

/// A reservation made before calling the driver. Dropped without [`commit`], it gives the
/// bytes back (the driver call failed).
///
/// [`commit`]: Reservation::commit
#[derive(Debug)]
pub struct Reservation<'a> {
    policy: &'a MemoryPolicy,
    charge: Option<Charge>,
}

impl Reservation<'_> {
    /// The driver call succeeded: the bytes stay held until the allocation is freed.
    pub fn commit(mut self) -> Charge {
        self.charge.take().unwrap_or(Charge {
            gpu: GpuIndex(0),
            bytes: 0,
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(charge) = self.charge.take() {
            self.policy.release(charge);
        }
    }
}

/// What a tenant with `limit` bytes, of which it uses `used`, is told about a GPU whose own
/// answer is `physical`: the total is the quota (never more than the GPU has), the free
/// memory what is left of it (never more than the GPU really has free). Never underflows.
pub fn quota_view(limit: u64, used: u64, physical: MemoryView) -> MemoryView {
    let total = limit.min(physical.total);
    let free = total.saturating_sub(used).min(physical.free);
    MemoryView {
        total,
        free,
        used: used.min(total),
    }
}

/// Bytes, printed the way people read them.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        let mut whole = self.0;
        while whole >= 1024 && unit + 1 < UNITS.len() && whole.is_multiple_of(1024) {
            whole /= 1024;
            unit += 1;
        }
        if unit == 0 && self.0 >= 1 << 20 {
            // Not a round number of any unit: MiB with a fraction reads best.
            #[allow(clippy::cast_precision_loss)]
            return write!(f, "{:.1} MiB", self.0 as f64 / f64::from(1 << 20));
        }
        write!(f, "{whole} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn physical(total: u64, free: u64) -> MemoryView {
        MemoryView {
            total,
            free,
            used: total - free,
        }
    }

    #[test]
    fn view_reports_the_quota_as_total() {
        let view = quota_view(4 * GIB, GIB, physical(80 * GIB, 70 * GIB));
        assert_eq!(
            view,
            MemoryView {
                total: 4 * GIB,
                free: 3 * GIB,
                used: GIB
            }
        );
    }

    #[test]
    fn view_never_exceeds_the_physical_gpu() {
        let view = quota_view(100 * GIB, 0, physical(80 * GIB, 10 * GIB));
        assert_eq!(view.total, 80 * GIB);
        assert_eq!(view.free, 10 * GIB);
    }

    #[test]
    fn view_never_underflows_when_usage_passes_the_limit() {
        // Usage above the limit happens when a quota is lowered under a running tenant.
        let view = quota_view(GIB, 3 * GIB, physical(80 * GIB, 70 * GIB));
        assert_eq!(
            view,
            MemoryView {
                total: GIB,
                free: 0,
                used: GIB
            }
        );
    }

    #[test]
    fn a_refusal_is_tried_once_more_only_after_room_was_made() {
        use gpuslice_ledger::{GpuUuid, Ledger, TenantName};
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let usage = ledger.open_usage(&TenantName::new("t").unwrap()).unwrap();
        let policy = MemoryPolicy::new(usage, None, Some(GIB));
        let gpu = policy.gpu(GpuUuid([1; 16])).unwrap();
        let idle = policy.reserve(&gpu, GIB).unwrap().commit();
        assert!(policy.would_fit(&gpu, 0) && !policy.would_fit(&gpu, 1));
        let mut asked = 0;
        let refused = policy.reserve_making_room(&gpu, GIB / 2, || {
            asked += 1;
            false
        });
        assert!(matches!(refused, Err(Refusal::OverLimit(_))));
        assert_eq!(asked, 1);
        let granted = policy.reserve_making_room(&gpu, GIB / 2, || {
            policy.release(idle);
            true
        });
        assert!(granted.is_ok());
        assert_eq!(policy.used_now(gpu.index), GIB / 2);
        // A reservation that fits never asks.
        drop(granted);
        let _fits = policy
            .reserve_making_room(&gpu, GIB, || unreachable!("room was there"))
            .unwrap();
    }

    #[test]
    fn bytes_print_in_round_units() {
        assert_eq!(Bytes(4 * GIB).to_string(), "4 GiB");
        assert_eq!(Bytes(512 << 20).to_string(), "512 MiB");
        assert_eq!(Bytes(1000).to_string(), "1000 B");
        assert_eq!(Bytes((1 << 20) + 1).to_string(), "1.0 MiB");
    }
}
