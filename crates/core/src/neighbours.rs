//! Every tenant's compute records on the node, as a watcher reads them each tick: a `pread`
//! copy of each usage file in the ledger, the list of tenants refreshed now and then.
//!
//! Copies, never mappings: another tenant can truncate its own usage file, which would
//! raise SIGBUS in a process that mapped it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuslice_ledger::{
    ComputeSettings, GpuUuid, Ledger, QuotaFile, TenantName, UsageReader, UsageSnapshot,
};

use crate::log::{Level, RateLimit, log};

/// How often the list of tenants is read again.
const RESCAN: Duration = Duration::from_millis(250);

/// One tenant as copied this tick.
#[derive(Debug)]
pub struct Tenant {
    /// Its name.
    pub name: TenantName,
    /// Its usage file's copy.
    pub usage: UsageSnapshot,
    /// Its quota file: the ceiling of what its processes may claim.
    pub quota: Quota,
}

/// A neighbour's quota file, as far as this process can read it.
#[derive(Debug, Clone)]
pub enum Quota {
    /// It has none: nothing bounds what its processes claim.
    Missing,
    /// Its quota file.
    File(Arc<QuotaFile>),
    /// It has one this process cannot read (damaged): the tenant is still counted, under
    /// the lowest ceiling (no share, normal priority at most).
    Unreadable,
}

impl Tenant {
    /// What the tenant may claim on `gpu` of what its processes published: capped by its
    /// quota file, which it cannot write (a process that wrote its own usage file could
    /// otherwise claim any share, or high priority, and make every neighbour yield to it).
    /// A tenant without a quota file (made by nobody but its own processes) is taken at
    /// its word: nothing bounds it.
    pub fn ceiling(&self, gpu: &GpuUuid, published: ComputeSettings) -> ComputeSettings {
        match &self.quota {
            Quota::File(quota) => published.capped_by(quota.limits_for(gpu).compute()),
            Quota::Unreadable => published.capped_by(ComputeSettings::default()),
            Quota::Missing => published,
        }
    }
}

/// One tenant's open files.
#[derive(Debug)]
struct Reader {
    name: TenantName,
    usage: UsageReader,
    quota: Quota,
}

/// The readers of every tenant's usage file.
#[derive(Debug)]
pub struct Neighbours {
    ledger: Ledger,
    readers: Vec<Reader>,
    scanned: Option<Instant>,
    errors: RateLimit,
}

impl Neighbours {
    /// Reads the tenants of `ledger`.
    pub fn new(ledger: Ledger) -> Neighbours {
        Neighbours {
            ledger,
            readers: Vec::new(),
            scanned: None,
            errors: RateLimit::new(),
        }
    }

    /// A copy of every tenant's usage file now. A file that cannot be read is left out
    /// (logged, rate-limited): a corrupt neighbour must not stop this tenant.
    pub fn read(&mut self) -> Vec<Tenant> {
        if self.scanned.is_none_or(|at| at.elapsed() >= RESCAN) {
            self.rescan();
        }
        let mut out = Vec::with_capacity(self.readers.len());
        for Reader { name, usage, quota } in &mut self.readers {
            match usage.read() {
                Ok(usage) => out.push(Tenant {
                    name: name.clone(),
                    usage,
                    quota: quota.clone(),
                }),
                Err(error) => {
                    if self.errors.admit().is_some() {
                        log!(
                            Level::Warn,
                            "ignoring tenant {name} in compute shares: {error}"
                        );
                    }
                }
            }
        }
        out
    }

    fn rescan(&mut self) {
        self.scanned = Some(Instant::now());
        let names = match self.ledger.tenants() {
            Ok(names) => names,
            Err(error) => {
                if self.errors.admit().is_some() {
                    log!(
                        Level::Warn,
                        "cannot list the tenants for compute shares: {error}"
                    );
                }
                return;
            }
        };
        // Keep the readers of tenants still there (their files may have been replaced:
        // a tenant removed and created again; reopening each rescan catches that).
        self.readers.retain(|r| names.contains(&r.name));
        for name in names {
            let usage = match self.ledger.usage_reader(&name) {
                Ok(Some(usage)) => usage,
                Ok(None) => continue,
                Err(error) => {
                    if self.errors.admit().is_some() {
                        log!(
                            Level::Warn,
                            "ignoring tenant {name} in compute shares: {error}"
                        );
                    }
                    continue;
                }
            };
            // A damaged quota does not take the tenant out of the split (this one would then
            // take more than its share): it is counted under the lowest ceiling.
            let quota = match self.ledger.read_quota(&name) {
                Ok(Some(quota)) => Quota::File(Arc::new(quota)),
                Ok(None) => Quota::Missing,
                Err(error) => {
                    if self.errors.admit().is_some() {
                        log!(
                            Level::Warn,
                            "tenant {name}'s quota cannot be read ({error}): it is counted \
                             in compute shares with no share and normal priority"
                        );
                    }
                    Quota::Unreadable
                }
            };
            let reopened = Reader { name, usage, quota };
            match self.readers.iter_mut().find(|r| r.name == reopened.name) {
                Some(reader) => *reader = reopened,
                None => self.readers.push(reopened),
            }
        }
    }
}
