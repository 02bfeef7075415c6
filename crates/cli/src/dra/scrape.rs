//! The DRA driver's metrics and readiness: the ledger's exposition (the same as `gpuslice
//! metrics` and the device plugin serve, through [`crate::metrics::render`]) with what only
//! the driver knows added: whether the kubelet registered it and its ResourceSlice is
//! published, each GPU's capacity published and consumed by prepared claims, the claims, and
//! its failures by reason.
//!
//! The driver tells [`DriverStatus`] where it stands as it goes; the endpoints read a
//! snapshot of it, and the prepared claims from their records in the ledger, at each request.
//! A prepared claim whose record cannot be read is counted by its tenant's quota, as the
//! capacity check counts it (`state::holdings`), and counted in
//! `gpuslice_dra_unreadable_claim_records` (left out, it vanished from the figures while its
//! quota still held its share of the GPU).
//! `/readyz` answers 200 once the kubelet registered the driver, its slice is published and
//! the ledger can be read; otherwise 503 naming every part that is missing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use gpuslice_k8s::dra::slice::{COMPUTE_TOTAL_PERCENT, memory_capacity};
use gpuslice_k8s::dra::state::{self, Holding};
use gpuslice_k8s::dra::status::{DriverStatus, Snapshot};
use gpuslice_ledger::{Ledger, TenantName};

use crate::metrics::render::{
    self, DraClaim, DraDevice, DraScrape, GpuInfo, PodOwner, Scrape, UnreadableRecords,
};
use crate::metrics::{self, serve};

/// The driver as the metrics endpoints see it.
#[derive(Debug)]
pub struct DraSource {
    status: Arc<DriverStatus>,
    ledger_dir: PathBuf,
    hostname: String,
}

impl DraSource {
    /// The driver that tells `status` where it stands, with its ledger at `ledger_dir`, on
    /// the node `hostname`.
    pub fn new(status: Arc<DriverStatus>, ledger_dir: PathBuf, hostname: String) -> DraSource {
        DraSource {
            status,
            ledger_dir,
            hostname,
        }
    }
}

#[tonic::async_trait]
impl serve::Source for DraSource {
    async fn metrics(&self) -> String {
        let snapshot = self.status.snapshot();
        let (dir, hostname) = (self.ledger_dir.clone(), self.hostname.clone());
        tokio::task::spawn_blocking(move || {
            let report = crate::report::read_report_checked(&dir).ok();
            let holdings = Ledger::open_existing(&dir)
                .ok()
                .and_then(|ledger| state::holdings(&ledger).ok())
                .unwrap_or_default();
            let gpus = gpus(&snapshot);
            render::render(&Scrape {
                report: report.as_ref(),
                gpus: &gpus,
                owners: owners(&holdings),
                dra: Some(dra(&snapshot, &holdings)),
                ready: snapshot.readiness().is_ok() && report.is_some(),
                hostname: &hostname,
                ..Scrape::default()
            })
        })
        .await
        .unwrap_or_default()
    }

    async fn readiness(&self) -> Result<(), String> {
        let driver = self.status.snapshot().readiness();
        let dir = self.ledger_dir.clone();
        let ledger = tokio::task::spawn_blocking(move || metrics::ledger_readiness(&dir))
            .await
            .unwrap_or_else(|e| Err(format!("the readiness check failed: {e}")));
        let missing: Vec<String> = [driver, ledger]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// The GPUs the driver watches, for the labels: healthy while it publishes them.
fn gpus(snapshot: &Snapshot) -> Vec<GpuInfo> {
    snapshot
        .inventory
        .gpus
        .iter()
        .map(|s| GpuInfo {
            index: s.gpu.index,
            uuid: s.gpu.uuid,
            model: s.gpu.product_name.clone(),
            memory_bytes: s.gpu.memory_bytes,
            healthy: Some(s.problem.is_none()),
        })
        .collect()
}

/// The namespace of each prepared claim's tenant: its claim's, which is every pod's that
/// uses it (unknown where its record cannot be read). The pod and the container stay empty:
/// a claim may be shared by several.
fn owners(holdings: &[(TenantName, Holding)]) -> HashMap<String, PodOwner> {
    holdings
        .iter()
        .filter_map(|(tenant, holding)| match holding {
            Holding::Recorded(record) => Some((tenant, record)),
            Holding::Unreadable { .. } => None,
        })
        .map(|(tenant, record)| {
            (
                tenant.as_str().to_string(),
                PodOwner {
                    namespace: record.claim.namespace.clone(),
                    pod: String::new(),
                    container: String::new(),
                },
            )
        })
        .collect()
}

/// What the driver adds to the scrape: `snapshot` and the prepared claims' `holdings`.
fn dra(snapshot: &Snapshot, holdings: &[(TenantName, Holding)]) -> DraScrape {
    let devices: Vec<DraDevice> = snapshot
        .published
        .iter()
        .flatten()
        .map(|gpu| DraDevice {
            gpu: gpu.uuid,
            memory_bytes: memory_capacity(gpu),
            compute_percent: COMPUTE_TOTAL_PERCENT,
        })
        .collect();
    let mut claims = Vec::new();
    let mut unreadable_records = UnreadableRecords::default();
    for (tenant, holding) in holdings {
        match holding {
            Holding::Recorded(record) => {
                claims.extend(record.devices.iter().map(|d| DraClaim {
                    tenant: tenant.as_str().to_string(),
                    namespace: record.claim.namespace.clone(),
                    claim: record.claim.name.clone(),
                    gpu: d.gpu.clone(),
                    memory_bytes: d.memory_bytes,
                    compute_permille: d.compute_permille,
                }));
            }
            Holding::Unreadable {
                by_quota: Some(by_quota),
                ..
            } => {
                unreadable_records.counted_by_quota += 1;
                claims.extend(by_quota.iter().map(|h| DraClaim {
                    tenant: tenant.as_str().to_string(),
                    namespace: String::new(),
                    claim: String::new(),
                    gpu: h.gpu.to_string(),
                    // A quota without a memory limit holds the whole GPU: its capacity, where
                    // it is published.
                    memory_bytes: match devices.iter().find(|d| d.gpu == h.gpu) {
                        Some(d) => h.memory_bytes.min(d.memory_bytes),
                        None => h.memory_bytes,
                    },
                    compute_permille: h.compute_permille,
                }));
            }
            Holding::Unreadable { by_quota: None, .. } => unreadable_records.uncounted += 1,
        }
    }
    DraScrape {
        registered: snapshot.registered(),
        slice_published: snapshot.slice_published(),
        devices,
        claims,
        unreadable_records,
        prepare_errors: snapshot
            .prepare_errors
            .iter()
            .map(|(why, n)| (why.as_str(), *n))
            .collect(),
        unprepare_errors: snapshot
            .unprepare_errors
            .iter()
            .map(|(why, n)| (why.as_str(), *n))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_k8s::dra::claim::ClaimRef;
    use gpuslice_k8s::dra::gpus::{Gpu, GpuState, Inventory};
    use gpuslice_k8s::dra::state::{GpuHolding, Record, RecordDevice};
    use gpuslice_k8s::dra::status::PrepareFailure;
    use gpuslice_ledger::GpuUuid;

    const UUID: &str = "GPU-fa4ec0da-0000-4000-8000-000000000000";

    fn h100() -> Gpu {
        Gpu {
            index: 0,
            uuid: GpuUuid::parse(UUID).unwrap(),
            product_name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 80 << 30,
            compute_capability: (9, 0),
            driver_version: "580.65.06".into(),
        }
    }

    fn record(namespace: &str, name: &str, devices: &[(u64, u32)]) -> Record {
        Record {
            claim: ClaimRef {
                namespace: namespace.into(),
                name: name.into(),
                uid: format!("{name}-uid"),
            },
            devices: devices
                .iter()
                .map(|(memory, compute)| RecordDevice {
                    request: "gpu".into(),
                    pool: "node-a".into(),
                    device: "gpu-fa4ec0da-0000-4000-8000-000000000000".into(),
                    share_id: None,
                    gpu: UUID.into(),
                    memory_bytes: *memory,
                    compute_permille: *compute,
                    compute_limit_permille: None,
                    priority: None,
                })
                .collect(),
            prepared_unix_ms: 0,
        }
    }

    #[test]
    fn each_claims_tenant_is_in_its_claims_namespace_and_the_driver_adds_its_standing() {
        let status = DriverStatus::new();
        status.registered();
        status.slice_published(&[h100()]);
        status.prepare_failed(PrepareFailure::CapacityExceeded);
        let (_tx, rx) = tokio::sync::watch::channel(Inventory {
            discovered: true,
            gpus: vec![GpuState {
                gpu: h100(),
                problem: None,
            }],
        });
        status.watch_inventory(rx);
        let snapshot = status.snapshot();
        let unlimited = GpuHolding {
            gpu: h100().uuid,
            memory_bytes: u64::MAX,
            compute_permille: 150,
        };
        let records = vec![
            (
                TenantName::new("dra-a").unwrap(),
                Holding::Recorded(record("ml", "train", &[(4 << 30, 300), (1 << 30, 100)])),
            ),
            (
                TenantName::new("dra-b").unwrap(),
                Holding::Recorded(record("web", "infer", &[(2 << 30, 200)])),
            ),
            (
                TenantName::new("dra-c").unwrap(),
                Holding::Unreadable {
                    problem: "damaged".into(),
                    by_quota: Some(vec![unlimited]),
                },
            ),
            (
                TenantName::new("dra-d").unwrap(),
                Holding::Unreadable {
                    problem: "damaged".into(),
                    by_quota: None,
                },
            ),
        ];
        let owners = owners(&records);
        assert_eq!(owners["dra-a"].namespace, "ml");
        assert_eq!(owners["dra-b"].pod, "");
        assert!(!owners.contains_key("dra-c"), "its namespace is not known");
        let dra = dra(&snapshot, &records);
        assert_eq!(
            dra.unreadable_records,
            UnreadableRecords {
                counted_by_quota: 1,
                uncounted: 1
            }
        );
        assert_eq!(
            dra.claims[3],
            DraClaim {
                tenant: "dra-c".into(),
                namespace: String::new(),
                claim: String::new(),
                gpu: UUID.into(),
                memory_bytes: 80 << 30,
                compute_permille: 150,
            },
            "counted by its quota; without a memory limit, the whole GPU"
        );
        assert!(dra.registered && dra.slice_published);
        assert_eq!(
            dra.devices,
            [DraDevice {
                gpu: h100().uuid,
                memory_bytes: 80 << 30,
                compute_percent: 100,
            }]
        );
        assert_eq!(dra.claims.len(), 4, "one per device of each claim");
        assert_eq!(dra.claims[2].claim, "infer");
        assert!(dra.prepare_errors.contains(&("capacity_exceeded", 1)));
        assert!(dra.unprepare_errors.contains(&("in_use", 0)));
        assert_eq!(gpus(&snapshot)[0].healthy, Some(true));
    }
}
