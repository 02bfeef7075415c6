//! The enforcing state of this process: its tenant's policies and this process's own
//! bookkeeping (which allocation holds what, which GPU is which).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use gpuslice_ledger::{ComputeSettings, GpuUuid, Ledger, LedgerError, Limits, TenantName};

use crate::allocations::Allocations;
use crate::config::{DEFAULT_DIR, TenantSettings};
use crate::contexts::ContextBook;
use crate::gate::LaunchGates;
use crate::hooks::device::DeviceTable;
use crate::policy::driver_memory::DriverMemory;
use crate::policy::memory::{Bytes, MemoryPolicy};
use crate::policy::pools::PoolCharges;
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
    /// The memory pools this process allocates from and their charges.
    pub pools: PoolCharges,
    /// CUDA ordinals and NVML handles mapped to the tenant's GPUs.
    pub devices: DeviceTable,
    /// Contexts and the memory their creation took.
    pub contexts: ContextBook,
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
pub enum OpenError {
    /// The ledger directory does not exist (or is not a directory). The shim never creates
    /// it: a mistyped `GPUSLICE_DIR` would otherwise be a fresh ledger without the tenant's
    /// quota file, and the tenant would run without its limits.
    #[error(
        "cannot use the gpuslice ledger for tenant {tenant}: the ledger directory {} \
         (GPUSLICE_DIR, default {DEFAULT_DIR}) {problem}; gpuslice run and the device plugin \
         create it, so check GPUSLICE_DIR, or create it first",
        dir.display()
    )]
    NoLedgerDir {
        /// The tenant.
        tenant: TenantName,
        /// The directory.
        dir: PathBuf,
        /// "does not exist", "is not a directory", or the error reading it.
        problem: String,
    },
    /// The ledger refused.
    #[error("cannot use the gpuslice ledger for tenant {tenant}: {source}")]
    Ledger {
        /// The tenant.
        tenant: TenantName,
        /// What the ledger said.
        #[source]
        source: LedgerError,
    },
}

impl Shim {
    /// Opens the tenant's records in the ledger.
    pub fn open(settings: TenantSettings) -> Result<Shim, OpenError> {
        let fail = |source| OpenError::Ledger {
            tenant: settings.name.clone(),
            source,
        };
        let problem = match std::fs::metadata(&settings.dir) {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("does not exist".to_string())
            }
            Err(e) => Some(format!("cannot be read ({e})")),
        };
        if let Some(problem) = problem {
            return Err(OpenError::NoLedgerDir {
                tenant: settings.name.clone(),
                dir: settings.dir.clone(),
                problem,
            });
        }
        // The directory exists; an empty one is a new ledger, whose tenants/ is made here.
        let ledger = Ledger::open(&settings.dir).map_err(fail)?;
        let usage = ledger.open_usage(&settings.name).map_err(fail)?;
        let quota = ledger.read_quota(&settings.name).map_err(fail)?;
        Ok(Shim {
            tenant: settings.name.clone(),
            memory: MemoryPolicy::new(usage, quota, settings.memory_limit),
            allocations: Allocations::default(),
            pools: PoolCharges::new(),
            devices: DeviceTable::new(),
            contexts: ContextBook::new(),
            driver_memory: DriverMemory::new(crate::hooks::nvml_probe::nvml_sees_this_process()),
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

    /// Where the watcher writes its trace (`GPUSLICE_TRACE`), if anywhere.
    pub fn trace_path(&self) -> Option<&Path> {
        self.settings.trace.as_deref()
    }

    /// The compute settings this process enforces on `gpu` now: the environment's, under
    /// the ceiling of the tenant's quota file (read live) for that GPU, which the
    /// environment may lower but never raise ([`ComputeSettings::capped_by`]: a share or
    /// high priority the quota does not give cannot be claimed). Without a quota file, the
    /// environment's.
    pub fn compute_settings(&self, gpu: &GpuUuid) -> ComputeSettings {
        self.compute_settings_under(self.memory.quota().map(|q| q.limits_for(gpu)))
    }

    /// The environment's compute settings under `ceiling` (a quota's limits), if any.
    fn compute_settings_under(&self, ceiling: Option<Limits>) -> ComputeSettings {
        let env = ComputeSettings {
            share_permille: self.settings.compute_share,
            limit_permille: self.settings.compute_limit,
            priority: self.settings.priority,
        };
        match ceiling {
            Some(limits) => env.capped_by(limits.compute()),
            None => env,
        }
    }

    /// Starts the watcher on the first launch (once; a forked child has a `Shim` of its
    /// own and starts its own).
    pub fn ensure_watcher(&'static self) {
        if self.watcher_started.swap(true, Ordering::AcqRel) {
            return;
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
                // The quota's defaults: what GPUs without an entry of their own get.
                let compute = self
                    .0
                    .compute_settings_under(self.0.memory.quota().map(|q| q.defaults()));
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
