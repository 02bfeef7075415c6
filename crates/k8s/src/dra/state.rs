//! Prepare and unprepare as changes to the ledger: a prepared claim is a tenant, `dra-<claim
//! UID>`, whose quota is what the claim was granted on each GPU, with a record of the grant
//! beside it. Nothing else is kept: a driver that restarts, or a kubelet that asks again,
//! finds the claim prepared in the ledger.
//!
//! ```text
//! absent --prepare--> prepared (record, quota, usage and lock files, CDI spec)
//! prepared --prepare--> prepared (same answer; missing files made again)
//! prepared --unprepare, no live process--> absent
//! prepared --unprepare, live processes--> prepared (an error: the kubelet retries)
//! absent --unprepare--> absent
//! ```
//!
//! **The record** (`<ledger>/tenants/dra-<uid>/dra-claim`, JSON) names the claim and each
//! device granted with its share; it is written before the quota, so that a tenant with a
//! quota always has one, and a tenant without one (made by `gpuslice run`, the device
//! plugin or an administrator) is never touched. The records of every prepared claim are
//! what the driver checks a new claim against: the scheduler should never grant more than a
//! GPU has, but if it did (two schedulers, a claim allocated against an older slice), the
//! claim is refused before anything is created.
//!
//! **Quota.** On each GPU of the claim: the memory granted, the compute share granted
//! (permille of its time), the cap and the priority of the configuration; no memory on
//! other GPUs (which the claim's containers do not see anyway). Several devices of one
//! claim on one GPU (two requests sharing it) add up.
//!
//! The files a container mounts (usage and lock files, the pin file) and the CDI spec are
//! made by a [`TenantFiles`]: on a node [`ContainerFiles`](super::files::ContainerFiles), the
//! same files the device plugin makes for its tenants.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use gpuslice_ledger::{
    GpuUuid, Ledger, LedgerError, Limits, PERMILLE_MAX, Priority, TenantName, TenantQuota,
    parse_priority,
};
use serde::{Deserialize, Serialize};

use super::claim::{ClaimRef, Grant};
use super::gpus::Inventory;
use super::slice::MEMORY_STEP;
use super::status::{PrepareFailure, UnprepareFailure};

/// The record's file name in the tenant's directory.
pub const RECORD: &str = "dra-claim";
/// What every tenant of the driver is named with, before the claim's UID.
pub const TENANT_PREFIX: &str = "dra-";

/// Makes and removes the files a tenant's containers need besides the quota: its usage and
/// lock files (open to the container's user), the file that pins the tenant, and its CDI
/// spec.
pub trait TenantFiles: Send + Sync + fmt::Debug {
    /// Makes (or puts right) tenant `t`'s files and CDI spec; returns its CDI device name.
    fn install(&self, t: &TenantName) -> Result<String, String>;
    /// Removes tenant `t`'s CDI spec (the ledger's files go with the tenant).
    fn uninstall(&self, t: &TenantName) -> Result<(), String>;
    /// Why no tenant's containers could be given their files now (the shim they preload is
    /// not the shim, say), asked before anything of a claim is made; `Ok` if they can.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One device of a prepared claim, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordDevice {
    /// The request it was allocated for.
    pub request: String,
    /// The pool.
    pub pool: String,
    /// The device.
    pub device: String,
    /// The share ID, if shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// The GPU's UUID.
    pub gpu: String,
    /// Memory granted.
    pub memory_bytes: u64,
    /// Compute share granted, permille.
    pub compute_permille: u32,
    /// Compute cap, permille.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_limit_permille: Option<u32>,
    /// Priority: high, normal, low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

impl RecordDevice {
    fn from_grant(g: &Grant) -> RecordDevice {
        RecordDevice {
            request: g.request.clone(),
            pool: g.pool.clone(),
            device: g.device.clone(),
            share_id: g.share_id.clone(),
            gpu: g.gpu.to_string(),
            memory_bytes: g.memory_bytes,
            compute_permille: g.compute_permille,
            compute_limit_permille: g.limit_permille(),
            priority: g.config.priority.map(|p| p.name().to_string()),
        }
    }

    /// The GPU, if the record names one.
    fn gpu(&self) -> Option<GpuUuid> {
        GpuUuid::parse(&self.gpu).ok()
    }
}

/// What the driver recorded of a prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The claim.
    pub claim: ClaimRef,
    /// Its devices on this node.
    pub devices: Vec<RecordDevice>,
    /// When it was prepared, in milliseconds since the Unix epoch.
    pub prepared_unix_ms: u64,
}

/// A device of a prepared claim, as the kubelet is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDevice {
    /// The request.
    pub request: String,
    /// The pool.
    pub pool: String,
    /// The device.
    pub device: String,
    /// The share ID.
    pub share_id: Option<String>,
    /// The CDI devices to inject: NVIDIA's for the GPU, then gpuslice's for the tenant.
    pub cdi_device_ids: Vec<String>,
}

/// Why a claim could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The claim's UID cannot name a tenant.
    #[error("claim {claim}: its UID cannot name a tenant: {source}")]
    BadUid {
        /// The claim.
        claim: Box<ClaimRef>,
        /// Why.
        source: LedgerError,
    },
    /// More than is left on a GPU.
    #[error(
        "claim {claim}: GPU {gpu} has {left} {unit} of {capacity} left for new claims ({total} \
         in all, {held} held by {holders} prepared claim(s)), and the claim consumes {asked}; \
         nothing was created"
    )]
    CapacityExceeded {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The GPU.
        gpu: GpuUuid,
        /// `memory` or `compute`.
        capacity: &'static str,
        /// `bytes` or `permille`.
        unit: &'static str,
        /// What the claim consumes.
        asked: u64,
        /// What is left.
        left: u64,
        /// The GPU's capacity.
        total: u64,
        /// What the prepared claims hold.
        held: u64,
        /// How many prepared claims hold it.
        holders: usize,
    },
    /// A tenant of that name exists and is not the driver's.
    #[error(
        "claim {claim}: tenant {tenant} exists and was not made by the DRA driver; not touched"
    )]
    NotOurs {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The tenant.
        tenant: TenantName,
    },
    /// The ledger refused.
    #[error("claim {claim}: {source}")]
    Ledger {
        /// The claim.
        claim: Box<ClaimRef>,
        /// Why.
        source: LedgerError,
    },
    /// A file could not be read or written.
    #[error("claim {claim}: {message}")]
    Files {
        /// The claim.
        claim: Box<ClaimRef>,
        /// What went wrong.
        message: String,
    },
    /// No tenant's containers can be given their files now (the shim they would preload is
    /// not the shim).
    #[error("claim {claim}: {message}")]
    NotReady {
        /// The claim.
        claim: Box<ClaimRef>,
        /// Why.
        message: String,
    },
}

impl PrepareError {
    /// Why, as the metrics count it.
    pub fn reason(&self) -> PrepareFailure {
        match self {
            PrepareError::BadUid { .. } => PrepareFailure::InvalidClaim,
            PrepareError::CapacityExceeded { .. } => PrepareFailure::CapacityExceeded,
            PrepareError::NotOurs { .. } => PrepareFailure::TenantConflict,
            PrepareError::Ledger { .. } => PrepareFailure::Ledger,
            PrepareError::Files { .. } => PrepareFailure::Files,
            PrepareError::NotReady { .. } => PrepareFailure::Shim,
        }
    }
}

/// What became of a claim asked to be unprepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprepared {
    /// Its tenant was removed.
    Removed,
    /// It was not prepared (or was unprepared already).
    NotPrepared,
}

/// Why a claim could not be unprepared.
#[derive(Debug, thiserror::Error)]
pub enum UnprepareError {
    /// Processes of the tenant still hold live slots.
    #[error(
        "claim {claim}: {live} process(es) of tenant {tenant} still use the GPU; kept until \
         they exit"
    )]
    InUse {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The tenant.
        tenant: TenantName,
        /// How many live slots.
        live: usize,
    },
    /// The ledger refused.
    #[error("claim {claim}: {source}")]
    Ledger {
        /// The claim.
        claim: Box<ClaimRef>,
        /// Why.
        source: LedgerError,
    },
    /// A file could not be removed.
    #[error("claim {claim}: {message}")]
    Files {
        /// The claim.
        claim: Box<ClaimRef>,
        /// What went wrong.
        message: String,
    },
}

impl UnprepareError {
    /// Why, as the metrics count it.
    pub fn reason(&self) -> UnprepareFailure {
        match self {
            UnprepareError::InUse { .. } => UnprepareFailure::InUse,
            UnprepareError::Ledger { .. } => UnprepareFailure::Ledger,
            UnprepareError::Files { .. } => UnprepareFailure::Files,
        }
    }
}

/// The claims prepared on this node, kept in the ledger.
#[derive(Debug)]
pub struct Claims {
    ledger: Ledger,
    files: Arc<dyn TenantFiles>,
    /// NVIDIA's CDI device for a GPU, `{uuid}` and `{index}` replaced; `None` for none.
    nvidia_cdi_device: Option<String>,
    /// One change at a time: a claim is checked against the others' records.
    serial: Mutex<()>,
}

/// The tenant of a claim.
pub fn tenant_of(claim: &ClaimRef) -> Result<TenantName, LedgerError> {
    TenantName::new(&format!("{TENANT_PREFIX}{}", claim.uid))
}

impl Claims {
    /// The claims of `ledger`; files made by `files`.
    pub fn new(
        ledger: Ledger,
        files: Arc<dyn TenantFiles>,
        nvidia_cdi_device: Option<String>,
    ) -> Claims {
        Claims {
            ledger,
            files,
            nvidia_cdi_device,
            serial: Mutex::new(()),
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The answer for a claim prepared already, from its record alone (after putting its
    /// files right); `None` when it is not prepared. The kubelet asks again after its own
    /// restart, and this answer needs neither the API server nor the GPU.
    pub fn already_prepared(
        &self,
        claim: &ClaimRef,
        inventory: &Inventory,
    ) -> Option<Result<Vec<PreparedDevice>, PrepareError>> {
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let tenant = tenant_of(claim).ok()?;
        let record = read_record(&self.ledger, &tenant).ok()??;
        if record.claim.uid != claim.uid {
            return None;
        }
        Some(
            self.ready(claim)
                .and_then(|()| self.install(claim, &tenant))
                .map(|name| self.answer(&record, &name, inventory)),
        )
    }

    /// Prepares `claim`, granted `grants` on this node: its tenant with the quota, record,
    /// files and CDI spec. Prepared already with the same grants: the same answer.
    pub fn prepare(
        &self,
        claim: &ClaimRef,
        grants: &[Grant],
        inventory: &Inventory,
    ) -> Result<Vec<PreparedDevice>, PrepareError> {
        if grants.is_empty() {
            // Nothing of this driver's on this node (the claim's devices are other
            // drivers'): nothing to enforce, and no tenant to make.
            return Ok(Vec::new());
        }
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        self.ready(claim)?;
        let ledger_error = |source| PrepareError::Ledger {
            claim: Box::new(claim.clone()),
            source,
        };
        let tenant = tenant_of(claim).map_err(|source| PrepareError::BadUid {
            claim: Box::new(claim.clone()),
            source,
        })?;
        let existing =
            read_record(&self.ledger, &tenant).map_err(|message| PrepareError::Files {
                claim: Box::new(claim.clone()),
                message,
            })?;
        let devices: Vec<RecordDevice> = grants.iter().map(RecordDevice::from_grant).collect();
        let quota = quota(grants);
        match existing {
            Some(record) if record.claim.uid == claim.uid && record.devices == devices => {
                // Prepared already: the quota is put right if someone changed it, and the
                // tenant's processes (a running pod, after a kubelet restart) keep going.
                if self
                    .ledger
                    .read_quota(&tenant)
                    .ok()
                    .flatten()
                    .map(|q| q.quota())
                    != Some(quota.clone())
                {
                    self.ledger
                        .write_quota(&tenant, &quota)
                        .map_err(ledger_error)?;
                }
                let name = self.install(claim, &tenant)?;
                return Ok(self.answer(&record, &name, inventory));
            }
            Some(_) => {}
            None => {
                if self.ledger.tenant_dir(&tenant).exists()
                    && self
                        .ledger
                        .read_quota(&tenant)
                        .map_err(ledger_error)?
                        .is_some()
                {
                    return Err(PrepareError::NotOurs {
                        claim: Box::new(claim.clone()),
                        tenant,
                    });
                }
            }
        }
        self.check_capacity(claim, &tenant, grants, inventory)?;
        if self.ledger.tenant_dir(&tenant).exists()
            && self.ledger.live_processes(&tenant).map_err(ledger_error)? == 0
        {
            // A stale or different grant of the same claim: fresh counters.
            self.ledger.remove_tenant(&tenant).map_err(ledger_error)?;
        }
        let fresh = !self.ledger.tenant_dir(&tenant).exists();
        let record = Record {
            claim: claim.clone(),
            devices,
            prepared_unix_ms: now_ms(),
        };
        let made = write_record(&self.ledger, &tenant, &record)
            .map_err(|message| PrepareError::Files {
                claim: Box::new(claim.clone()),
                message,
            })
            .and_then(|()| {
                self.ledger
                    .write_quota(&tenant, &quota)
                    .map_err(ledger_error)
            })
            .and_then(|()| self.install(claim, &tenant));
        let name = match made {
            Ok(name) => name,
            Err(e) => {
                // Half a tenant would hold the claim's share of the GPU against every later
                // claim until the kubelet unprepares this one: what was made goes.
                if fresh {
                    let _ = self.files.uninstall(&tenant);
                    let _ = self.ledger.remove_tenant(&tenant);
                }
                return Err(e);
            }
        };
        tracing::info!(
            "prepared claim {claim} as tenant {tenant}: {}",
            describe(&record.devices)
        );
        Ok(self.answer(&record, &name, inventory))
    }

    /// Unprepares `claim`: removes its tenant and CDI spec, unless a process of the tenant
    /// still holds a live slot. A claim not prepared is unprepared already.
    pub fn unprepare(&self, claim: &ClaimRef) -> Result<Unprepared, UnprepareError> {
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let ledger_error = |source| UnprepareError::Ledger {
            claim: Box::new(claim.clone()),
            source,
        };
        let Ok(tenant) = tenant_of(claim) else {
            return Ok(Unprepared::NotPrepared);
        };
        match read_record(&self.ledger, &tenant) {
            Ok(Some(record)) if record.claim.uid == claim.uid => {}
            Ok(_) => return Ok(Unprepared::NotPrepared),
            // The record is there but cannot be read (damaged, or of another version of
            // the driver): the tenant is still the claim's (its name is the claim's UID,
            // which no other maker of tenants may use), and refusing would keep it, its
            // quota and its share of the GPU for ever, the kubelet asking again and again.
            Err(problem) => tracing::warn!("{problem}; unpreparing claim {claim} all the same"),
        }
        let live = self.ledger.live_processes(&tenant).map_err(ledger_error)?;
        if live > 0 {
            return Err(UnprepareError::InUse {
                claim: Box::new(claim.clone()),
                tenant,
                live,
            });
        }
        self.files
            .uninstall(&tenant)
            .map_err(|message| UnprepareError::Files {
                claim: Box::new(claim.clone()),
                message,
            })?;
        self.ledger.remove_tenant(&tenant).map_err(ledger_error)?;
        tracing::info!("unprepared claim {claim}: tenant {tenant} removed");
        Ok(Unprepared::Removed)
    }

    /// Every prepared claim's tenant and record. A record that cannot be read is logged and
    /// left out.
    pub fn prepared(&self) -> Vec<(TenantName, Record)> {
        prepared(&self.ledger, |problem| tracing::warn!("{problem}"))
    }

    /// Cuts back the usage and lock files of prepared claims' tenants that their containers
    /// made grow (they can write both), before the ledger's filesystem fills; says so for
    /// each.
    pub fn cut_back_grown_files(&self) {
        for (t, _) in self.prepared() {
            crate::cut_back_grown_files(&self.ledger, &t);
        }
    }

    /// Refuses a claim whose grants do not fit beside the other prepared claims.
    fn check_capacity(
        &self,
        claim: &ClaimRef,
        tenant: &TenantName,
        grants: &[Grant],
        inventory: &Inventory,
    ) -> Result<(), PrepareError> {
        let others = self
            .held_by_others(tenant)
            .map_err(|message| PrepareError::Files {
                claim: Box::new(claim.clone()),
                message,
            })?;
        for (gpu, asked) in per_gpu(grants) {
            let Some(state) = inventory.gpu(&gpu) else {
                continue;
            };
            let mut held = Limits {
                memory_bytes: Some(0),
                compute_share_permille: Some(0),
                ..Limits::default()
            };
            let mut holders = 0;
            for other in others.iter().filter(|h| h.gpu == gpu) {
                holders += 1;
                held.memory_bytes = Some(
                    held.memory_bytes
                        .unwrap_or(0)
                        .saturating_add(other.memory_bytes),
                );
                held.compute_share_permille = Some(
                    held.compute_share_permille
                        .unwrap_or(0)
                        .saturating_add(other.compute_permille),
                );
            }
            let checks = [
                (
                    "memory",
                    "bytes",
                    asked.memory_bytes,
                    held.memory_bytes.unwrap_or(0),
                    state.gpu.memory_bytes.max(MEMORY_STEP),
                ),
                (
                    "compute",
                    "permille",
                    u64::from(asked.compute_permille),
                    u64::from(held.compute_share_permille.unwrap_or(0)),
                    u64::from(PERMILLE_MAX),
                ),
            ];
            for (capacity, unit, asked, held, total) in checks {
                let left = total.saturating_sub(held);
                if asked > left {
                    return Err(PrepareError::CapacityExceeded {
                        claim: Box::new(claim.clone()),
                        gpu,
                        capacity,
                        unit,
                        asked,
                        left,
                        total,
                        held,
                        holders,
                    });
                }
            }
        }
        Ok(())
    }

    /// What every other prepared claim (than `tenant`'s) holds, device by device. From its
    /// record; where that cannot be read (damaged, or of another version of the driver),
    /// from its quota, which still holds its containers (left out, it let claims beside it
    /// take the same share of the GPU again). An error where the tenants cannot be listed,
    /// or a claim's record and quota both cannot be read: then what the claims hold is
    /// unknown, and no claim is prepared.
    fn held_by_others(&self, tenant: &TenantName) -> Result<Vec<GpuHolding>, String> {
        let mut held = Vec::new();
        for (t, holding) in holdings(&self.ledger)? {
            if &t == tenant {
                continue;
            }
            match holding {
                Holding::Recorded(record) => held.extend(record.holdings()),
                Holding::Unreadable {
                    problem,
                    by_quota: Some(by_quota),
                } => {
                    tracing::warn!("{problem}; counting what its quota gives instead");
                    held.extend(by_quota);
                }
                Holding::Unreadable {
                    problem,
                    by_quota: None,
                } => {
                    return Err(format!(
                        "{problem}, and the quota of tenant {t} cannot be read either: what \
                         that claim holds of the GPUs is unknown, so no claim is prepared \
                         until it is put right or removed"
                    ));
                }
            }
        }
        Ok(held)
    }

    /// Whether tenants' containers can be given their files now.
    fn ready(&self, claim: &ClaimRef) -> Result<(), PrepareError> {
        self.files
            .ready()
            .map_err(|message| PrepareError::NotReady {
                claim: Box::new(claim.clone()),
                message,
            })
    }

    /// Makes the tenant's files; its CDI device name.
    fn install(&self, claim: &ClaimRef, tenant: &TenantName) -> Result<String, PrepareError> {
        self.files
            .install(tenant)
            .map_err(|message| PrepareError::Files {
                claim: Box::new(claim.clone()),
                message,
            })
    }

    /// The kubelet's answer for a claim recorded as `record`, whose tenant's CDI device is
    /// `tenant_device`.
    fn answer(
        &self,
        record: &Record,
        tenant_device: &str,
        inventory: &Inventory,
    ) -> Vec<PreparedDevice> {
        record
            .devices
            .iter()
            .map(|d| {
                let mut ids = Vec::new();
                if let Some(template) = &self.nvidia_cdi_device {
                    let index = d
                        .gpu()
                        .and_then(|g| inventory.gpu(&g))
                        .map(|s| s.gpu.index.to_string())
                        .unwrap_or_default();
                    ids.push(
                        template
                            .replace("{uuid}", &d.gpu)
                            .replace("{index}", &index),
                    );
                }
                ids.push(tenant_device.to_string());
                PreparedDevice {
                    request: d.request.clone(),
                    pool: d.pool.clone(),
                    device: d.device.clone(),
                    share_id: d.share_id.clone(),
                    cdi_device_ids: ids,
                }
            })
            .collect()
    }
}

/// What the grants add up to on each GPU, in the GPUs' order of first appearance.
fn per_gpu(grants: &[Grant]) -> Vec<(GpuUuid, PerGpu)> {
    let mut out: Vec<(GpuUuid, PerGpu)> = Vec::new();
    for g in grants {
        let entry = match out.iter_mut().find(|(gpu, _)| *gpu == g.gpu) {
            Some((_, entry)) => entry,
            None => {
                out.push((g.gpu, PerGpu::default()));
                let last = out.len() - 1;
                &mut out[last].1
            }
        };
        entry.memory_bytes = entry.memory_bytes.saturating_add(g.memory_bytes);
        entry.compute_permille = entry.compute_permille.saturating_add(g.compute_permille);
        entry.limits.push(g.limit_permille());
        entry.priority = entry.priority.max(g.config.priority);
    }
    out
}

/// A claim's grants on one GPU, added up.
#[derive(Debug, Default)]
struct PerGpu {
    memory_bytes: u64,
    compute_permille: u32,
    /// Each grant's cap.
    limits: Vec<Option<u32>>,
    /// The highest priority asked.
    priority: Option<Priority>,
}

/// The quota of a claim: on each of its GPUs what it was granted, nothing elsewhere.
pub fn quota(grants: &[Grant]) -> TenantQuota {
    TenantQuota {
        defaults: Limits {
            memory_bytes: Some(0),
            ..Limits::default()
        },
        per_gpu: per_gpu(grants)
            .into_iter()
            .map(|(gpu, g)| {
                // Capped only if every grant on the GPU is: an uncapped one may use idle time.
                let limit = g
                    .limits
                    .iter()
                    .copied()
                    .sum::<Option<u32>>()
                    .map(|l| l.min(PERMILLE_MAX));
                (
                    gpu,
                    Limits {
                        memory_bytes: Some(g.memory_bytes),
                        compute_share_permille: Some(g.compute_permille.clamp(1, PERMILLE_MAX)),
                        compute_limit_permille: limit,
                        priority: Some(g.priority.unwrap_or(Priority::Normal)),
                    },
                )
            })
            .collect(),
    }
}

/// The devices in words, for the log.
fn describe(devices: &[RecordDevice]) -> String {
    devices
        .iter()
        .map(|d| {
            format!(
                "{} on {}: {} MiB, {}% of the time{}{}",
                d.request,
                d.gpu,
                d.memory_bytes >> 20,
                f64::from(d.compute_permille) / 10.0,
                d.compute_limit_permille
                    .map(|l| format!(", at most {}%", f64::from(l) / 10.0))
                    .unwrap_or_default(),
                d.priority
                    .as_ref()
                    .map(|p| format!(", {p} priority"))
                    .unwrap_or_default(),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every prepared claim's tenant and record in `ledger`. What cannot be read (the list of
/// tenants, a record) is left out and told to `problem`.
pub fn prepared(ledger: &Ledger, mut problem: impl FnMut(&str)) -> Vec<(TenantName, Record)> {
    let tenants = match ledger.tenants() {
        Ok(tenants) => tenants,
        Err(e) => {
            problem(&format!("cannot list the ledger's tenants: {e}"));
            return Vec::new();
        }
    };
    tenants
        .into_iter()
        .filter(|t| t.as_str().starts_with(TENANT_PREFIX))
        .filter_map(|t| match read_record(ledger, &t) {
            Ok(Some(record)) => Some((t, record)),
            Ok(None) => None,
            Err(e) => {
                problem(&format!("tenant {t}: {e}"));
                None
            }
        })
        .collect()
}

/// What a prepared claim holds of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuHolding {
    /// The GPU.
    pub gpu: GpuUuid,
    /// Memory, bytes (`u64::MAX`: the whole GPU, a quota without a memory limit).
    pub memory_bytes: u64,
    /// Compute share, permille of the GPU's time.
    pub compute_permille: u32,
}

impl Record {
    /// What the claim holds, device by device (a device whose GPU UUID does not parse
    /// holds nothing the driver can count).
    pub fn holdings(&self) -> impl Iterator<Item = GpuHolding> + '_ {
        self.devices.iter().filter_map(|d| {
            Some(GpuHolding {
                gpu: d.gpu()?,
                memory_bytes: d.memory_bytes,
                compute_permille: d.compute_permille,
            })
        })
    }
}

/// A prepared claim as the ledger shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Its record.
    Recorded(Record),
    /// Its record is there but cannot be read (damaged, or of another version of the
    /// driver); its quota still holds its containers, so it is counted by what that gives,
    /// GPU by GPU: `by_quota`, `None` where the quota cannot be read either.
    Unreadable {
        /// What is wrong with the record.
        problem: String,
        /// What the claim's quota gives, GPU by GPU.
        by_quota: Option<Vec<GpuHolding>>,
    },
}

/// Every prepared claim in `ledger` (every tenant of the driver's with a record, readable
/// or not) and what it holds: what the capacity check counts, and the metrics with it. An
/// error where the tenants cannot be listed.
pub fn holdings(ledger: &Ledger) -> Result<Vec<(TenantName, Holding)>, String> {
    let tenants = ledger
        .tenants()
        .map_err(|e| format!("cannot list the ledger's tenants: {e}"))?;
    Ok(tenants
        .into_iter()
        .filter(|t| t.as_str().starts_with(TENANT_PREFIX))
        .filter_map(|t| {
            let holding = match read_record(ledger, &t) {
                Ok(Some(record)) => Holding::Recorded(record),
                Ok(None) => return None,
                Err(problem) => Holding::Unreadable {
                    problem,
                    by_quota: held_by_quota(ledger, &t),
                },
            };
            Some((t, holding))
        })
        .collect())
}

/// What tenant `t`'s quota gives, GPU by GPU (memory `u64::MAX` where it has no memory
/// limit: the whole GPU); `None` if it cannot be read.
fn held_by_quota(ledger: &Ledger, t: &TenantName) -> Option<Vec<GpuHolding>> {
    let quota = ledger.read_quota(t).ok().flatten()?;
    Some(
        quota
            .quota()
            .per_gpu
            .iter()
            .map(|(gpu, limits)| GpuHolding {
                gpu: *gpu,
                memory_bytes: limits.memory_bytes.unwrap_or(u64::MAX),
                compute_permille: limits.compute_share_permille.unwrap_or(0),
            })
            .collect(),
    )
}

/// Tenant `t`'s record; `None` when it has none.
pub fn read_record(ledger: &Ledger, t: &TenantName) -> Result<Option<Record>, String> {
    let path = ledger.tenant_dir(t).join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("could not read {}: {e}", path.display())),
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a valid DRA claim record ({e}); remove the tenant if it is not in use",
            path.display()
        )
    })?;
    if record.devices.iter().any(|d| {
        d.priority
            .as_deref()
            .is_some_and(|p| parse_priority(p).is_none())
    }) {
        return Err(format!("{} names an unknown priority", path.display()));
    }
    Ok(Some(record))
}

/// Writes tenant `t`'s record whole (a temporary file renamed over it, mode 0600), creating
/// its directory.
fn write_record(ledger: &Ledger, t: &TenantName, record: &Record) -> Result<(), String> {
    let dir = ledger.tenant_dir(t);
    fs::create_dir_all(&dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    let path = dir.join(RECORD);
    let temp: PathBuf = dir.join(format!(".{RECORD}.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(record).unwrap_or_default() + "\n";
    // The driver's alone (mode 0600): the directory is every tenant's to read, and the
    // record names the claim and its namespace, which are nobody else's business.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut f| {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())
        })
        .and_then(|()| fs::rename(&temp, &path))
        .map_err(|e| {
            let _ = fs::remove_file(&temp);
            format!("could not write {}: {e}", path.display())
        })
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Per GPU, what the prepared claims hold: memory and compute permille (for the log).
pub fn held(records: &[Record]) -> BTreeMap<String, (u64, u32)> {
    let mut out: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    for d in records.iter().flat_map(|r| &r.devices) {
        let entry = out.entry(d.gpu.clone()).or_default();
        entry.0 = entry.0.saturating_add(d.memory_bytes);
        entry.1 = entry.1.saturating_add(d.compute_permille);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::claim::grants;
    use super::super::claim::tests::{Allocated, allocated_claim, claim_ref};
    use super::super::gpus::tests::gpu;
    use super::*;
    use serde_json::json;

    /// Files made in memory: the CDI device name, and which tenants have files.
    #[derive(Debug, Default)]
    struct FakeFiles {
        installed: Mutex<Vec<String>>,
    }

    impl TenantFiles for FakeFiles {
        fn install(&self, t: &TenantName) -> Result<String, String> {
            let mut installed = self.installed.lock().unwrap();
            if !installed.contains(&t.to_string()) {
                installed.push(t.to_string());
            }
            Ok(format!("gpuslice.dev/gpu={t}"))
        }

        fn uninstall(&self, t: &TenantName) -> Result<(), String> {
            self.installed.lock().unwrap().retain(|i| i != t.as_str());
            Ok(())
        }
    }

    const DEV0: &str = "gpu-fa4ec0da-0000-4000-8000-000000000000";
    const DEV1: &str = "gpu-fa4ec0da-0000-4000-8000-000000000001";

    fn uid(i: u8) -> String {
        format!("0b7c4f9e-5d1a-4f0e-9a53-2f6d4c1b8e{i:02x}")
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        files: Arc<FakeFiles>,
        claims: Claims,
        inventory: Inventory,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let files = Arc::new(FakeFiles::default());
        let claims = Claims::new(ledger, files.clone(), Some("nvidia.com/gpu={uuid}".into()));
        let inventory =
            Inventory::default().after_look(&[Ok(gpu(0, 8 << 30)), Ok(gpu(1, 8 << 30))]);
        Fixture {
            _dir: dir,
            files,
            claims,
            inventory,
        }
    }

    fn grants_of(f: &Fixture, uid: &str, results: &[Allocated<'_>]) -> Vec<Grant> {
        grants(
            &allocated_claim(uid, results, &[]),
            &claim_ref(uid),
            "node-a",
            &f.inventory,
        )
        .unwrap()
    }

    #[test]
    fn prepare_creates_the_tenant_with_the_claims_quota_and_answers_the_cdi_devices() {
        let f = fixture();
        let u = uid(1);
        let g = grants_of(&f, &u, &[("gpu", DEV0, Some("s1"), Some(("4Gi", "30")))]);
        let devices = f.claims.prepare(&claim_ref(&u), &g, &f.inventory).unwrap();
        let tenant = TenantName::new(&format!("dra-{u}")).unwrap();
        assert_eq!(
            devices,
            [PreparedDevice {
                request: "gpu".into(),
                pool: "node-a".into(),
                device: DEV0.into(),
                share_id: Some("s1".into()),
                cdi_device_ids: vec![
                    "nvidia.com/gpu=GPU-fa4ec0da-0000-4000-8000-000000000000".into(),
                    format!("gpuslice.dev/gpu={tenant}"),
                ],
            }]
        );
        let quota = f
            .claims
            .ledger()
            .read_quota(&tenant)
            .unwrap()
            .unwrap()
            .quota();
        let limits = quota.limits_for(&gpu(0, 0).uuid);
        assert_eq!(limits.memory_bytes, Some(4 << 30));
        assert_eq!(limits.compute_share_permille, Some(300));
        assert_eq!(limits.compute_limit_permille, None);
        assert_eq!(limits.priority, Some(Priority::Normal));
        assert_eq!(
            quota.limits_for(&gpu(1, 0).uuid).memory_bytes,
            Some(0),
            "nothing elsewhere"
        );
        assert_eq!(*f.files.installed.lock().unwrap(), [tenant.to_string()]);
    }

    #[test]
    fn prepare_twice_gives_the_same_answer_and_keeps_the_tenant() {
        let f = fixture();
        let u = uid(2);
        let c = claim_ref(&u);
        let g = grants_of(&f, &u, &[("gpu", DEV0, None, Some(("1Gi", "10")))]);
        let first = f.claims.prepare(&c, &g, &f.inventory).unwrap();
        let tenant = tenant_of(&c).unwrap();
        let usage = f.claims.ledger().open_usage(&tenant).unwrap();
        let slot = usage.claim_slot().unwrap();
        assert_eq!(f.claims.prepare(&c, &g, &f.inventory).unwrap(), first);
        assert_eq!(
            f.claims
                .already_prepared(&c, &f.inventory)
                .unwrap()
                .unwrap(),
            first
        );
        assert_eq!(
            f.claims.ledger().live_processes(&tenant).unwrap(),
            1,
            "same tenant"
        );
        drop(slot);
    }

    #[test]
    fn unprepare_removes_the_tenant_once_and_then_has_nothing_to_do() {
        let f = fixture();
        let u = uid(3);
        let c = claim_ref(&u);
        let g = grants_of(&f, &u, &[("gpu", DEV0, None, Some(("1Gi", "10")))]);
        f.claims.prepare(&c, &g, &f.inventory).unwrap();
        assert_eq!(f.claims.unprepare(&c).unwrap(), Unprepared::Removed);
        assert!(
            !f.claims
                .ledger()
                .tenant_dir(&tenant_of(&c).unwrap())
                .exists()
        );
        assert!(f.files.installed.lock().unwrap().is_empty());
        assert_eq!(f.claims.unprepare(&c).unwrap(), Unprepared::NotPrepared);
        assert_eq!(
            f.claims.unprepare(&claim_ref(&uid(99))).unwrap(),
            Unprepared::NotPrepared
        );
        assert!(f.claims.already_prepared(&c, &f.inventory).is_none());
    }

    #[test]
    fn unprepare_keeps_a_tenant_whose_processes_still_use_the_gpu() {
        let f = fixture();
        let u = uid(4);
        let c = claim_ref(&u);
        let g = grants_of(&f, &u, &[("gpu", DEV0, None, Some(("1Gi", "10")))]);
        f.claims.prepare(&c, &g, &f.inventory).unwrap();
        let tenant = tenant_of(&c).unwrap();
        let usage = f.claims.ledger().open_usage(&tenant).unwrap();
        let slot = usage.claim_slot().unwrap();
        let err = f.claims.unprepare(&c).unwrap_err();
        assert_eq!(err.reason(), UnprepareFailure::InUse);
        let err = err.to_string();
        assert!(err.contains("1 process(es) of tenant"), "{err}");
        assert!(f.claims.ledger().tenant_dir(&tenant).exists());
        drop(slot);
        drop(usage);
        assert_eq!(f.claims.unprepare(&c).unwrap(), Unprepared::Removed);
    }

    #[test]
    fn a_claim_past_what_is_left_on_the_gpu_is_refused_and_nothing_is_created() {
        let f = fixture();
        let (a, b, c) = (uid(5), uid(6), uid(7));
        let g = grants_of(&f, &a, &[("gpu", DEV0, Some("1"), Some(("6Gi", "30")))]);
        f.claims.prepare(&claim_ref(&a), &g, &f.inventory).unwrap();
        let g = grants_of(&f, &b, &[("gpu", DEV0, Some("2"), Some(("3Gi", "30")))]);
        let err = f
            .claims
            .prepare(&claim_ref(&b), &g, &f.inventory)
            .unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::CapacityExceeded);
        let err = err.to_string();
        assert!(
            err.contains(&format!("has {} bytes of memory left", 2u64 << 30)),
            "{err}"
        );
        assert!(err.contains("nothing was created"), "{err}");
        assert!(
            !f.claims
                .ledger()
                .tenant_dir(&tenant_of(&claim_ref(&b)).unwrap())
                .exists()
        );
        let g = grants_of(&f, &c, &[("gpu", DEV0, Some("3"), Some(("1Gi", "80")))]);
        let err = f
            .claims
            .prepare(&claim_ref(&c), &g, &f.inventory)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 700 permille of compute left"), "{err}");
        // Another GPU has room.
        let g = grants_of(&f, &b, &[("gpu", DEV1, Some("2"), Some(("3Gi", "30")))]);
        f.claims.prepare(&claim_ref(&b), &g, &f.inventory).unwrap();
    }

    #[test]
    fn a_claim_on_two_gpus_gets_a_quota_on_each_and_shares_of_one_gpu_add_up() {
        let f = fixture();
        let u = uid(8);
        let grants = grants(
            &allocated_claim(
                &u,
                &[
                    ("a", DEV0, Some("1"), Some(("1Gi", "10"))),
                    ("b", DEV1, Some("2"), Some(("2Gi", "20"))),
                    ("c", DEV1, Some("3"), Some(("1Gi", "5"))),
                ],
                &[(
                    "FromClass",
                    &["b"],
                    json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "computeLimit": "share", "priority": "high"}),
                )],
            ),
            &claim_ref(&u),
            "node-a",
            &f.inventory,
        )
        .unwrap();
        let devices = f
            .claims
            .prepare(&claim_ref(&u), &grants, &f.inventory)
            .unwrap();
        assert_eq!(devices.len(), 3);
        let quota = f
            .claims
            .ledger()
            .read_quota(&tenant_of(&claim_ref(&u)).unwrap())
            .unwrap()
            .unwrap()
            .quota();
        let on0 = quota.limits_for(&gpu(0, 0).uuid);
        assert_eq!(
            (on0.memory_bytes, on0.compute_share_permille),
            (Some(1 << 30), Some(100))
        );
        let on1 = quota.limits_for(&gpu(1, 0).uuid);
        assert_eq!(
            (on1.memory_bytes, on1.compute_share_permille),
            (Some(3 << 30), Some(250))
        );
        assert_eq!(on1.compute_limit_permille, None, "c is not capped");
        assert_eq!(on1.priority, Some(Priority::High));
    }

    #[test]
    fn a_claim_with_nothing_of_this_driver_on_this_node_makes_no_tenant() {
        let f = fixture();
        let u = uid(10);
        assert_eq!(
            f.claims.prepare(&claim_ref(&u), &[], &f.inventory).unwrap(),
            []
        );
        assert!(
            !f.claims
                .ledger()
                .tenant_dir(&tenant_of(&claim_ref(&u)).unwrap())
                .exists()
        );
        assert_eq!(
            f.claims.unprepare(&claim_ref(&u)).unwrap(),
            Unprepared::NotPrepared
        );
    }

    /// Files that cannot be made (a CDI directory gone, a full filesystem).
    #[derive(Debug)]
    struct FailingFiles;

    impl TenantFiles for FailingFiles {
        fn install(&self, _t: &TenantName) -> Result<String, String> {
            Err("could not write the CDI spec: no space left on device".into())
        }

        fn uninstall(&self, _t: &TenantName) -> Result<(), String> {
            Ok(())
        }
    }

    /// Files whose containers would preload something that is not the shim.
    #[derive(Debug)]
    struct NoShim;

    impl TenantFiles for NoShim {
        fn install(&self, _t: &TenantName) -> Result<String, String> {
            Ok("gpuslice.dev/gpu=t".into())
        }

        fn uninstall(&self, _t: &TenantName) -> Result<(), String> {
            Ok(())
        }

        fn ready(&self) -> Result<(), String> {
            Err("/opt/gpuslice/lib/libgpuslice.so is a directory".into())
        }
    }

    #[test]
    fn a_claim_is_refused_for_the_shim_while_the_shim_is_not_in_place() {
        let f = fixture();
        let claims = Claims::new(f.claims.ledger().clone(), Arc::new(NoShim), None);
        let u = uid(13);
        let g = grants_of(&f, &u, &[("gpu", DEV0, None, Some(("1Gi", "10")))]);
        let err = claims
            .prepare(&claim_ref(&u), &g, &f.inventory)
            .unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::Shim);
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(claims.prepared().is_empty());
    }

    /// The record and quota were written before the files, and stayed when the files could
    /// not be made: half a tenant, whose record held the claim's share of the GPU against
    /// every later claim although the claim had been told it was not prepared.
    #[test]
    fn a_claim_whose_files_cannot_be_made_leaves_no_half_tenant_holding_its_share() {
        let f = fixture();
        let claims = Claims::new(f.claims.ledger().clone(), Arc::new(FailingFiles), None);
        let u = uid(11);
        let g = grants_of(&f, &u, &[("gpu", DEV0, None, Some(("6Gi", "60")))]);
        let err = claims
            .prepare(&claim_ref(&u), &g, &f.inventory)
            .unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::Files);
        let err = err.to_string();
        assert!(err.contains("no space left on device"), "{err}");
        assert!(
            !claims
                .ledger()
                .tenant_dir(&tenant_of(&claim_ref(&u)).unwrap())
                .exists()
        );
        assert!(claims.prepared().is_empty(), "no record holds the GPU");
        let other = uid(12);
        let g = grants_of(&f, &other, &[("gpu", DEV0, None, Some(("6Gi", "60")))]);
        f.claims
            .prepare(&claim_ref(&other), &g, &f.inventory)
            .unwrap();
    }

    #[test]
    fn a_tenant_of_that_name_made_by_someone_else_is_not_touched() {
        let f = fixture();
        let u = uid(9);
        let c = claim_ref(&u);
        let tenant = tenant_of(&c).unwrap();
        f.claims
            .ledger()
            .write_quota(&tenant, &TenantQuota::default())
            .unwrap();
        let g = grants_of(&f, &u, &[("gpu", DEV0, None, Some(("1Gi", "10")))]);
        let err = f.claims.prepare(&c, &g, &f.inventory).unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::TenantConflict);
        let err = err.to_string();
        assert!(err.contains("was not made by the DRA driver"), "{err}");
        assert_eq!(f.claims.unprepare(&c).unwrap(), Unprepared::NotPrepared);
        assert!(f.claims.ledger().tenant_dir(&tenant).exists());
    }

    /// Damages the record of the claim with `u` (an operator's edit, a record of another
    /// version of the driver).
    fn damage_record(f: &Fixture, u: &str) {
        let tenant = tenant_of(&claim_ref(u)).unwrap();
        fs::write(
            f.claims.ledger().tenant_dir(&tenant).join(RECORD),
            "{\"claim\": ",
        )
        .unwrap();
    }

    #[test]
    fn a_claim_whose_record_cannot_be_read_still_holds_its_share_of_the_gpu() {
        let f = fixture();
        let (a, b) = (uid(13), uid(14));
        let g = grants_of(&f, &a, &[("gpu", DEV0, Some("1"), Some(("6Gi", "60")))]);
        f.claims.prepare(&claim_ref(&a), &g, &f.inventory).unwrap();
        damage_record(&f, &a);
        // Its quota still holds its containers to 6Gi: a claim beside it may not take more
        // than what is left.
        let g = grants_of(&f, &b, &[("gpu", DEV0, Some("2"), Some(("3Gi", "30")))]);
        let err = f
            .claims
            .prepare(&claim_ref(&b), &g, &f.inventory)
            .unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::CapacityExceeded, "{err}");
        let g = grants_of(&f, &b, &[("gpu", DEV0, Some("2"), Some(("2Gi", "40")))]);
        f.claims.prepare(&claim_ref(&b), &g, &f.inventory).unwrap();
    }

    #[test]
    fn a_claim_whose_record_and_quota_cannot_be_read_keeps_new_claims_off_the_node() {
        let f = fixture();
        let (a, b) = (uid(15), uid(16));
        let g = grants_of(&f, &a, &[("gpu", DEV0, Some("1"), Some(("6Gi", "60")))]);
        f.claims.prepare(&claim_ref(&a), &g, &f.inventory).unwrap();
        damage_record(&f, &a);
        let tenant = tenant_of(&claim_ref(&a)).unwrap();
        fs::write(f.claims.ledger().quota_path(&tenant), b"damaged").unwrap();
        let g = grants_of(&f, &b, &[("gpu", DEV1, Some("2"), Some(("1Gi", "10")))]);
        let err = f
            .claims
            .prepare(&claim_ref(&b), &g, &f.inventory)
            .unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::Files, "{err}");
        assert!(err.to_string().contains(tenant.as_str()), "{err}");
    }

    #[test]
    fn a_claim_whose_record_cannot_be_read_is_still_unprepared() {
        let f = fixture();
        let u = uid(17);
        let g = grants_of(&f, &u, &[("gpu", DEV0, Some("1"), Some(("6Gi", "60")))]);
        f.claims.prepare(&claim_ref(&u), &g, &f.inventory).unwrap();
        damage_record(&f, &u);
        assert_eq!(
            f.claims.unprepare(&claim_ref(&u)).unwrap(),
            Unprepared::Removed
        );
        let tenant = tenant_of(&claim_ref(&u)).unwrap();
        assert!(!f.claims.ledger().tenant_dir(&tenant).exists());
        // And the GPU is free again.
        let other = uid(18);
        let g = grants_of(&f, &other, &[("gpu", DEV0, None, Some(("8Gi", "100")))]);
        f.claims
            .prepare(&claim_ref(&other), &g, &f.inventory)
            .unwrap();
    }
}
