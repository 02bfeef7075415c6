//! Memory the driver takes for a process without being asked: kernel code loaded at the
//! first launch of each kernel (CUDA 12 and later load lazily), allocation granularity,
//! buffers of the runtime. None of it passes through an allocation call, so it is
//! measured: what NVML says this process uses, minus what the shim has counted for it. The
//! difference is charged to the tenant (or given back when it shrinks).
//!
//! Asking NVML costs a system call and a walk of the driver's process table, so it is done
//! only where it matters: when a reservation would bring the tenant near its limit, and
//! when the program asks how much memory is free. At most every 20 ms per GPU.
//!
//! NVML numbers processes by the host's PIDs, so this works only for a process in the
//! host's PID namespace. In a container with a PID namespace of its own, this process
//! cannot find itself in NVML's list and nothing is charged (see the README). Asking NVML
//! is the shim's (`hooks::nvml_probe`): it says whether NVML sees this process at all, and
//! hands in the reading as a closure, called only when a check is due.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gpuslice_ledger::MAX_GPUS;
use parking_lot::Mutex;

use crate::log::{Level, log};
use crate::policy::memory::{Bytes, Charge, Gpu, MemoryPolicy};

const CHECK_INTERVAL_MS: u64 = 20;

/// Within this of its limit (or an eighth of it, if larger), a tenant's reservations first
/// bring the driver's own memory up to date.
const NEAR_LIMIT: u64 = 256 << 20;

/// This process's charges for memory the driver took on its own, per GPU.
#[derive(Debug)]
pub struct DriverMemory {
    enabled: bool,
    started: Instant,
    gpus: [PerGpu; MAX_GPUS],
}

#[derive(Debug, Default)]
struct PerGpu {
    /// Bytes charged for the driver's own memory so far.
    charged: Mutex<u64>,
    /// Milliseconds after `started` of the last check, plus one (0: never).
    last_check: AtomicU64,
}

impl DriverMemory {
    /// Nothing charged yet; `enabled` where NVML's PIDs are ours (otherwise this process's
    /// usage cannot be read and nothing is ever charged).
    pub fn new(enabled: bool) -> DriverMemory {
        DriverMemory {
            enabled,
            started: Instant::now(),
            gpus: std::array::from_fn(|_| PerGpu::default()),
        }
    }

    /// Before reserving `bytes` on `gpu`: if that would bring the tenant near its limit,
    /// bring the charge for the driver's own memory up to date first. `in_use` reads what
    /// NVML says this process uses on `gpu` (`None`: it cannot say).
    pub fn before_reserving(
        &self,
        policy: &MemoryPolicy,
        gpu: &Gpu,
        bytes: u64,
        in_use: impl FnOnce() -> Option<u64>,
    ) {
        if !self.enabled {
            return;
        }
        let Some(limit) = policy.limit(gpu) else {
            return;
        };
        let margin = (limit / 8).max(NEAR_LIMIT);
        let after = policy.used_now(gpu.index).saturating_add(bytes);
        if after.saturating_add(margin) >= limit {
            self.refresh(policy, gpu, in_use);
        }
    }

    /// Brings the charge for the driver's own memory on `gpu` up to date (at most every
    /// 20 ms), if the tenant has a limit there. `in_use` as for `before_reserving`.
    pub fn refresh(&self, policy: &MemoryPolicy, gpu: &Gpu, in_use: impl FnOnce() -> Option<u64>) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.refresh_at(now, policy, gpu, in_use);
    }

    /// `refresh` at `now`, milliseconds since this was made.
    fn refresh_at(
        &self,
        now: u64,
        policy: &MemoryPolicy,
        gpu: &Gpu,
        in_use: impl FnOnce() -> Option<u64>,
    ) {
        if !self.enabled || policy.limit(gpu).is_none() {
            return;
        }
        let Some(entry) = usize::try_from(gpu.index.0)
            .ok()
            .and_then(|i| self.gpus.get(i))
        else {
            return;
        };
        let last = entry.last_check.load(Ordering::Acquire);
        if last != 0 && now.saturating_add(1) < last.saturating_add(CHECK_INTERVAL_MS) {
            return;
        }
        if entry
            .last_check
            .compare_exchange(
                last,
                now.saturating_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return; // another thread is checking right now
        }
        let Some(in_use) = in_use() else {
            return;
        };
        let mut charged = entry.charged.lock();
        let counted = policy.held_here(gpu.index).saturating_sub(*charged);
        let target = in_use.saturating_sub(counted);
        if target > *charged {
            if let Ok(charge) = policy.charge_unasked(gpu, target - *charged) {
                *charged += charge.bytes;
            }
        } else if target < *charged {
            policy.release(Charge {
                gpu: gpu.index,
                bytes: *charged - target,
            });
            *charged = target;
        } else {
            return;
        }
        log!(
            Level::Debug,
            "driver's own memory for this process on {}: {} (NVML says {} in use, {} counted)",
            gpu.uuid,
            Bytes(*charged),
            Bytes(in_use),
            Bytes(counted)
        );
    }
}

#[cfg(test)]
mod tests {
    use gpuslice_ledger::{GpuUuid, Ledger, TenantName};

    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn policy(dir: &tempfile::TempDir, limit: Option<u64>) -> (MemoryPolicy, Gpu) {
        let ledger = Ledger::open(dir.path()).unwrap();
        let usage = ledger.open_usage(&TenantName::new("t").unwrap()).unwrap();
        let policy = MemoryPolicy::new(usage, None, limit);
        let gpu = policy.gpu(GpuUuid([1; 16])).unwrap();
        (policy, gpu)
    }

    #[test]
    fn the_drivers_own_memory_is_what_nvml_says_beyond_what_was_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, gpu) = policy(&dir, Some(4 * GIB));
        let driver = DriverMemory::new(true);
        let _allocation = policy.reserve(&gpu, GIB).unwrap().commit();
        // NVML sees the allocation and 300 MiB the driver took for kernels.
        driver.refresh_at(0, &policy, &gpu, || Some(GIB + 300 * MIB));
        assert_eq!(policy.used_now(gpu.index), GIB + 300 * MIB);
        // The driver gave back 200 MiB: so does the charge.
        driver.refresh_at(100, &policy, &gpu, || Some(GIB + 100 * MIB));
        assert_eq!(policy.used_now(gpu.index), GIB + 100 * MIB);
        // NVML cannot say: the charge stays.
        driver.refresh_at(200, &policy, &gpu, || None);
        assert_eq!(policy.used_now(gpu.index), GIB + 100 * MIB);
    }

    #[test]
    fn nvml_is_asked_at_most_every_20_ms_per_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, gpu) = policy(&dir, Some(4 * GIB));
        let driver = DriverMemory::new(true);
        let mut asked = 0;
        for now in [0, 5, 19, 20, 21, 39, 40] {
            driver.refresh_at(now, &policy, &gpu, || {
                asked += 1;
                Some(0)
            });
        }
        // At 0, 20 and 40.
        assert_eq!(asked, 3);
    }

    #[test]
    fn nvml_is_never_asked_without_a_limit_or_where_it_cannot_see_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let (unlimited, gpu) = policy(&dir, None);
        let driver = DriverMemory::new(true);
        driver.refresh(&unlimited, &gpu, || {
            unreachable!("no limit: nothing to charge")
        });
        driver.before_reserving(&unlimited, &gpu, 100 * GIB, || unreachable!("no limit"));
        let dir = tempfile::tempdir().unwrap();
        let (limited, gpu) = policy(&dir, Some(GIB));
        let blind = DriverMemory::new(false);
        blind.refresh(&limited, &gpu, || {
            unreachable!("NVML cannot see this process")
        });
        blind.before_reserving(&limited, &gpu, GIB, || {
            unreachable!("NVML cannot see this process")
        });
    }

    #[test]
    fn only_a_reservation_near_the_limit_brings_the_drivers_memory_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        // 8 GiB: the margin is an eighth, 1 GiB (more than 256 MiB).
        let (policy, gpu) = policy(&dir, Some(8 * GIB));
        let driver = DriverMemory::new(true);
        driver.before_reserving(&policy, &gpu, 6 * GIB, || {
            unreachable!("far from the limit")
        });
        let mut asked = false;
        driver.before_reserving(&policy, &gpu, 7 * GIB, || {
            asked = true;
            Some(0)
        });
        assert!(asked, "within an eighth of the limit");
    }
}
