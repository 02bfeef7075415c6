//! The enforcing state of this process: its tenant's policies and this process's own
//! bookkeeping (which allocation holds what, which GPU is which).

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gpuslice_ledger::{ComputeSettings, Ledger, LedgerError, TenantName};

use crate::allocations::Allocations;
use crate::config::TenantSettings;
use crate::gate::LaunchGates;
use crate::hooks::context::Contexts;
use crate::hooks::device::DeviceTable;
use crate::hooks::driver_memory::DriverMemory;
use crate::policy::memory::{Bytes, MemoryPolicy};
use crate::streams::StreamTable;

/// Everything an enforcing process keeps. Built once per process (and again in a forked
/// child), never freed.
#[derive(Debug)]
pub struct Shim {
    /// The tenant this process belongs to.
    pub tenant: TenantName,
    /// Its memory quota and usage.
    pub memory: MemoryPolicy,
    /// This process's allocations and their charges.
    pub allocations: Allocations,
    /// CUDA ordinals and NVML handles mapped to the tenant's GPUs.
    pub devices: DeviceTable,
    /// Contexts and the memory their creation took.
    pub contexts: Contexts,
    /// Memory the driver took for this process on its own.
    pub driver_memory: DriverMemory,
    /// The streams this process launches on.
    pub streams: StreamTable,
    /// The launch gates, one per GPU.
    pub gates: LaunchGates,
    watcher_started: AtomicBool,
    settings: TenantSettings,
}

/// Why the shim could not start enforcing.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the gpuslice ledger for tenant {tenant}: {source}")]
pub struct OpenError {
    tenant: TenantName,
    #[source]
    source: LedgerError,
}

impl Shim {
    /// Opens the tenant's records in the ledger.
    pub fn open(settings: TenantSettings) -> Result<Shim, OpenError> {
        let fail = |source| OpenError {
            tenant: settings.name.clone(),
            source,
        };
        let ledger = Ledger::open(&settings.dir).map_err(fail)?;
        let usage = ledger.open_usage(&settings.name).map_err(fail)?;
        let quota = ledger.read_quota(&settings.name).map_err(fail)?;
        Ok(Shim {
            tenant: settings.name.clone(),
            memory: MemoryPolicy::new(usage, quota, settings.memory_limit),
            allocations: Allocations::default(),
            devices: DeviceTable::new(),
            contexts: Contexts::new(),
            driver_memory: DriverMemory::new(),
            streams: StreamTable::new(),
            gates: LaunchGates::new(),
            watcher_started: AtomicBool::new(false),
            settings,
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantName {
        &self.settings.name
    }

    /// The ledger directory.
    pub fn ledger_dir(&self) -> &Path {
        &self.settings.dir
    }

    /// The compute settings this process enforces now: the tenant's quota file (read live)
    /// is the ceiling, and the environment may lower it. Compute settings are per tenant,
    /// the same on every GPU (per-GPU quota entries set memory only).
    pub fn compute_settings(&self) -> ComputeSettings {
        let file = self
            .memory
            .quota()
            .map(|q| q.defaults())
            .unwrap_or_default();
        let from_file = ComputeSettings {
            share_permille: file.compute_share_permille,
            limit_permille: file.compute_limit_permille,
            priority: file.priority,
        };
        from_file.lowered_by(ComputeSettings {
            share_permille: self.settings.compute_share,
            limit_permille: self.settings.compute_limit,
            priority: self.settings.priority,
        })
    }

    /// Starts the watcher on the first launch (once; a forked child has a `Shim` of its
    /// own and starts its own).
    pub fn ensure_watcher(&'static self) {
        if self.watcher_started.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(slot) = self.memory.slot() {
            slot.publish_compute(self.compute_settings());
        }
        crate::watcher::start(self);
    }

    /// One line for the log: who we are and what limits apply.
    pub fn describe(&self) -> impl fmt::Display + '_ {
        struct Describe<'a>(&'a Shim);
        impl fmt::Display for Describe<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let settings = &self.0.settings;
                write!(
                    f,
                    "tenant {} (ledger {})",
                    settings.name,
                    settings.dir.display()
                )?;
                match settings.memory_limit {
                    Some(limit) => write!(f, ", GPUSLICE_MEMORY_LIMIT {}", Bytes(limit))?,
                    None => write!(f, ", no GPUSLICE_MEMORY_LIMIT")?,
                }
                let compute = self.0.compute_settings();
                write!(
                    f,
                    ", compute share {}, limit {}, priority {}",
                    Permille(compute.share_permille),
                    Permille(compute.limit_permille),
                    compute.priority.map_or("normal", |p| p.name())
                )
            }
        }
        Describe(self)
    }

    /// For a forked child: see [`MemoryPolicy::abandon_after_fork`].
    pub fn abandon_after_fork(&self) {
        self.memory.abandon_after_fork();
    }
}

/// A permille setting as a percentage, or "none".
struct Permille(Option<u32>);

impl fmt::Display for Permille {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}.{}%", p / 10, p % 10),
            None => write!(f, "none"),
        }
    }
}
