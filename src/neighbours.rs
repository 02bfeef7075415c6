//! Every tenant's compute records on the node, as a watcher reads them each tick: a `pread`
//! copy of each usage file in the ledger, the list of tenants refreshed now and then.
//!
//! Copies, never mappings: another tenant can truncate its own usage file, which would
//! raise SIGBUS in a process that mapped it.

use std::time::{Duration, Instant};

use gpuslice_ledger::{Ledger, TenantName, UsageReader, UsageSnapshot};

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
}

/// The readers of every tenant's usage file.
#[derive(Debug)]
pub struct Neighbours {
    ledger: Ledger,
    readers: Vec<(TenantName, UsageReader)>,
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
        for (name, reader) in &mut self.readers {
            match reader.read() {
                Ok(usage) => out.push(Tenant {
                    name: name.clone(),
                    usage,
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
        self.readers.retain(|(name, _)| names.contains(name));
        for name in names {
            let reopened = match self.ledger.usage_reader(&name) {
                Ok(Some(reader)) => reader,
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
            match self.readers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, reader)) => *reader = reopened,
                None => self.readers.push((name, reopened)),
            }
        }
    }
}
