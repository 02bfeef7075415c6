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
//! cannot find itself in NVML's list and nothing is charged (see the README).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gpuslice_ledger::MAX_GPUS;
use parking_lot::Mutex;

use crate::hooks::nvml_probe;
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
    /// Nothing charged yet; enabled where NVML's PIDs are ours.
    pub fn new() -> DriverMemory {
        DriverMemory {
            enabled: nvml_probe::nvml_sees_this_process(),
            started: Instant::now(),
            gpus: std::array::from_fn(|_| PerGpu::default()),
        }
    }

    /// Before reserving `bytes` on `gpu`: if that would bring the tenant near its limit,
    /// bring the charge for the driver's own memory up to date first.
    pub fn before_reserving(&self, policy: &MemoryPolicy, gpu: &Gpu, bytes: u64) {
        if !self.enabled {
            return;
        }
        let Some(limit) = policy.limit(gpu) else {
            return;
        };
        let margin = (limit / 8).max(NEAR_LIMIT);
        let after = policy.used_now(gpu.index).saturating_add(bytes);
        if after.saturating_add(margin) >= limit {
            self.refresh(policy, gpu);
        }
    }

    /// Brings the charge for the driver's own memory on `gpu` up to date (at most every
    /// 20 ms), if the tenant has a limit there.
    pub fn refresh(&self, policy: &MemoryPolicy, gpu: &Gpu) {
        if !self.enabled || policy.limit(gpu).is_none() {
            return;
        }
        let Some(entry) = usize::try_from(gpu.index.0)
            .ok()
            .and_then(|i| self.gpus.get(i))
        else {
            return;
        };
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
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
        let Some(in_use) = nvml_probe::process_used(&gpu.uuid) else {
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

impl Default for DriverMemory {
    fn default() -> Self {
        DriverMemory::new()
    }
}
