//! The enforcing state of this process: its tenant's policies and this process's own
//! bookkeeping (which allocation holds what, which GPU is which).

use std::fmt;

use gpuslice_ledger::{Ledger, LedgerError, TenantName};

use crate::allocations::Allocations;
use crate::config::TenantSettings;
use crate::hooks::context::Contexts;
use crate::hooks::device::DeviceTable;
use crate::hooks::driver_memory::DriverMemory;
use crate::policy::memory::{Bytes, MemoryPolicy};

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
            settings,
        })
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
                    Some(limit) => write!(f, ", GPUSLICE_MEMORY_LIMIT {}", Bytes(limit)),
                    None => write!(f, ", no GPUSLICE_MEMORY_LIMIT"),
                }
            }
        }
        Describe(self)
    }

    /// For a forked child: see [`MemoryPolicy::abandon_after_fork`].
    pub fn abandon_after_fork(&self) {
        self.memory.abandon_after_fork();
    }
}
