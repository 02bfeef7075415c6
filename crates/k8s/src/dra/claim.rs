//! What a ResourceClaim's allocation grants on this node: for each device of gpuslice's
//! allocated from this node's pool, the GPU, the memory and compute share consumed (as the
//! scheduler wrote them, `consumedCapacity`), the share ID, and the opaque configuration that
//! applies to its request.
//!
//! The claim is read from the API server as the scheduler left it; everything in it is
//! checked before anything is created: the UID is the one the kubelet named (a claim deleted
//! and made again under the same name is another claim), the device is a GPU this node has
//! and that answers, the capacities parse, the configuration is valid.

use gpuslice_ledger::{GpuUuid, PERMILLE_MAX, parse_percent, parse_quantity};
use k8s_openapi::api::resource::v1::{DeviceAllocationConfiguration, ResourceClaim};

use super::config::{ComputeLimit, ConfigError, Source, TenantConfig};
use super::gpus::Inventory;
use super::slice::{COMPUTE, DRIVER, MEMORY, MEMORY_STEP, gpu_of_device};
use super::status::PrepareFailure;

/// A claim as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ClaimRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID: what tells this claim from a later one of the same name.
    pub uid: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// One device of a claim's allocation, as this driver prepares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The claim's request it was allocated for (`gpu`, or `gpu/small` for a subrequest).
    pub request: String,
    /// The pool (this node's name).
    pub pool: String,
    /// The device (`gpu-<uuid>`).
    pub device: String,
    /// The share of the device this allocation is (consumable capacity), if shared.
    pub share_id: Option<String>,
    /// The GPU.
    pub gpu: GpuUuid,
    /// Memory granted on it.
    pub memory_bytes: u64,
    /// Compute share granted on it, in permille of its time.
    pub compute_permille: u32,
    /// The opaque configuration that applies to the request.
    pub config: TenantConfig,
}

impl Grant {
    /// The hard cap on GPU time this grant asks for, in permille, if any.
    pub fn limit_permille(&self) -> Option<u32> {
        self.config.compute_limit.map(|limit| match limit {
            ComputeLimit::Permille(p) => p,
            ComputeLimit::Share => self.compute_permille,
        })
    }
}

/// Why a claim cannot be prepared as allocated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClaimError {
    /// The claim of that name has another UID: the one the kubelet meant is gone.
    #[error(
        "claim {claim}: the API server has a claim of that name with UID {found}, not the one to prepare"
    )]
    Replaced {
        /// The claim asked for.
        claim: Box<ClaimRef>,
        /// The UID found.
        found: String,
    },
    /// The claim has no allocation (yet, or any more).
    #[error("claim {claim} is not allocated")]
    NotAllocated {
        /// The claim.
        claim: Box<ClaimRef>,
    },
    /// A device of this driver's in a pool that is not this node's: the driver runs under
    /// another node's name, or the claim was allocated for another node.
    #[error(
        "claim {claim}: device {device} of {DRIVER} is in pool {found}, not in this node's pool \
         {pool}; nothing was prepared (is the driver's --node-name, or NODE_NAME, this node's \
         name?)"
    )]
    OtherPool {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The device name.
        device: String,
        /// The pool the allocation names.
        found: String,
        /// This node's pool.
        pool: String,
    },
    /// A device allocated with admin access, which consumes no capacity.
    #[error(
        "claim {claim}: device {device} is allocated with admin access, which gpuslice.dev \
         does not give: such a claim shares a GPU others use and the scheduler counts none of \
         its capacity, so there is no quota to hold it to; use a claim without adminAccess \
         (for monitoring, gpuslice status and metrics read the ledger)"
    )]
    AdminAccess {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The device name.
        device: String,
    },
    /// A device of this node's pool that this driver does not publish.
    #[error("claim {claim}: device {device} is not one of this driver's (expected gpu-<uuid>)")]
    UnknownDevice {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The device name.
        device: String,
    },
    /// The GPUs have not been listed yet.
    #[error("the GPUs of this node are not known yet (NVML has not answered); retry")]
    NotDiscovered,
    /// The device's GPU is not on this node (any more).
    #[error("claim {claim}: GPU {gpu} ({device}) is not on this node")]
    GpuGone {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The device name.
        device: String,
        /// Its GPU.
        gpu: GpuUuid,
    },
    /// The device's GPU does not answer.
    #[error("claim {claim}: GPU {gpu} ({device}) cannot be used: {problem}")]
    GpuUnusable {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The device name.
        device: String,
        /// Its GPU.
        gpu: GpuUuid,
        /// What is wrong with it.
        problem: String,
    },
    /// A consumed capacity that does not parse or cannot be.
    #[error("claim {claim}: device {device}: consumed capacity {capacity} = {value:?} {why}")]
    BadCapacity {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The device name.
        device: String,
        /// `memory` or `compute`.
        capacity: String,
        /// The quantity as written.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The opaque configuration of the request is not valid.
    #[error("claim {claim}: request {request}: {source}")]
    Config {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The request the configuration applies to.
        request: String,
        /// What is wrong.
        source: ConfigError,
    },
    /// A compute cap below the guaranteed share.
    #[error(
        "claim {claim}: request {request}: opaque configuration for {DRIVER}: field \
         computeLimit: {limit}% is below the compute share of {share}% the claim consumes; \
         ask for at most {limit}% of compute, or a higher limit"
    )]
    LimitBelowShare {
        /// The claim.
        claim: Box<ClaimRef>,
        /// The request.
        request: String,
        /// The cap, percent.
        limit: f64,
        /// The share, percent.
        share: f64,
    },
}

impl ClaimError {
    /// Why, as the metrics count it.
    pub fn reason(&self) -> PrepareFailure {
        match self {
            ClaimError::Replaced { .. }
            | ClaimError::NotAllocated { .. }
            | ClaimError::OtherPool { .. }
            | ClaimError::AdminAccess { .. }
            | ClaimError::UnknownDevice { .. }
            | ClaimError::BadCapacity { .. } => PrepareFailure::InvalidClaim,
            ClaimError::Config { .. } | ClaimError::LimitBelowShare { .. } => {
                PrepareFailure::InvalidConfig
            }
            ClaimError::NotDiscovered
            | ClaimError::GpuGone { .. }
            | ClaimError::GpuUnusable { .. } => PrepareFailure::GpuUnavailable,
        }
    }
}

/// The devices of `claim` (fetched from the API server for `expected`) that this driver
/// prepares on this node (`pool`), checked against the GPUs of `inventory`.
pub fn grants(
    claim: &ResourceClaim,
    expected: &ClaimRef,
    pool: &str,
    inventory: &Inventory,
) -> Result<Vec<Grant>, ClaimError> {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    if uid != expected.uid {
        return Err(ClaimError::Replaced {
            claim: Box::new(expected.clone()),
            found: uid,
        });
    }
    let not_allocated = || ClaimError::NotAllocated {
        claim: Box::new(expected.clone()),
    };
    let devices = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .ok_or_else(not_allocated)?;
    let configs: Vec<&DeviceAllocationConfiguration> = devices
        .config
        .iter()
        .flatten()
        .filter(|c| c.opaque.as_ref().is_some_and(|o| o.driver == DRIVER))
        .collect();
    let mut grants = Vec::new();
    for result in devices.results.iter().flatten() {
        if result.driver != DRIVER {
            continue;
        }
        // The kubelet asks this driver only about claims with devices of its own, and a pod
        // gets devices only from the slices of its node. One in another pool is a mistake
        // (a driver started under another node's name): answering with nothing would start
        // the pod without its tenant.
        if result.pool != pool {
            return Err(ClaimError::OtherPool {
                claim: Box::new(expected.clone()),
                device: result.device.clone(),
                found: result.pool.clone(),
                pool: pool.to_string(),
            });
        }
        let bad = |capacity: &str, value: &str, why: &str| ClaimError::BadCapacity {
            claim: Box::new(expected.clone()),
            device: result.device.clone(),
            capacity: capacity.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        };
        if result.admin_access == Some(true) {
            return Err(ClaimError::AdminAccess {
                claim: Box::new(expected.clone()),
                device: result.device.clone(),
            });
        }
        let gpu = gpu_of_device(&result.device).ok_or_else(|| ClaimError::UnknownDevice {
            claim: Box::new(expected.clone()),
            device: result.device.clone(),
        })?;
        if !inventory.discovered {
            return Err(ClaimError::NotDiscovered);
        }
        let state = inventory.gpu(&gpu).ok_or_else(|| ClaimError::GpuGone {
            claim: Box::new(expected.clone()),
            device: result.device.clone(),
            gpu,
        })?;
        if let Some(problem) = &state.problem {
            return Err(ClaimError::GpuUnusable {
                claim: Box::new(expected.clone()),
                device: result.device.clone(),
                gpu,
                problem: problem.clone(),
            });
        }
        let total = state.gpu.memory_bytes.max(MEMORY_STEP);
        let consumed = result.consumed_capacity.as_ref();
        // Without consumable capacity (a scheduler that does not have it, or a claim
        // allocated before it), the device is the claim's alone: the whole GPU.
        let memory_bytes = match consumed.and_then(|c| c.get(MEMORY)) {
            None => total,
            Some(q) => {
                let bytes =
                    parse_quantity(&q.0).ok_or_else(|| bad(MEMORY, &q.0, "is not a byte count"))?;
                if bytes == 0 || bytes > total {
                    return Err(bad(
                        MEMORY,
                        &q.0,
                        &format!("is not between 1 byte and the GPU's {total} bytes"),
                    ));
                }
                bytes
            }
        };
        let compute_permille = match consumed.and_then(|c| c.get(COMPUTE)) {
            None => PERMILLE_MAX,
            Some(q) => parse_percent(&q.0).ok_or_else(|| {
                bad(
                    COMPUTE,
                    &q.0,
                    "is not a percentage of the GPU's time from 0.1 to 100",
                )
            })?,
        };
        let mut config = TenantConfig::default();
        for c in configs.iter().filter(|c| applies(c, &result.request)) {
            if let Some(opaque) = &c.opaque {
                config = config
                    .overlaid_from(&opaque.parameters.0, Source::of(&c.source))
                    .map_err(|source| ClaimError::Config {
                        claim: Box::new(expected.clone()),
                        request: result.request.clone(),
                        source,
                    })?;
            }
        }
        let grant = Grant {
            request: result.request.clone(),
            pool: result.pool.clone(),
            device: result.device.clone(),
            share_id: result.share_id.clone(),
            gpu,
            memory_bytes,
            compute_permille,
            config,
        };
        if let Some(limit) = grant.limit_permille()
            && limit < compute_permille
        {
            return Err(ClaimError::LimitBelowShare {
                claim: Box::new(expected.clone()),
                request: result.request.clone(),
                limit: f64::from(limit) / 10.0,
                share: f64::from(compute_permille) / 10.0,
            });
        }
        grants.push(grant);
    }
    Ok(grants)
}

/// Whether a configuration applies to `request` (`req`, or `req/sub` for a subrequest): it
/// names no requests (all), the request, or the request a subrequest belongs to.
fn applies(config: &DeviceAllocationConfiguration, request: &str) -> bool {
    let parent = request.split('/').next().unwrap_or(request);
    match &config.requests {
        None => true,
        Some(requests) if requests.is_empty() => true,
        Some(requests) => requests.iter().any(|r| r == request || r == parent),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::gpus::tests::gpu;
    use super::*;
    use gpuslice_ledger::Priority;
    use k8s_openapi::api::resource::v1::DeviceRequestAllocationResult;
    use serde_json::json;

    /// One device of an allocation: request, device, share ID, consumed memory and compute.
    pub type Allocated<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<(&'a str, &'a str)>,
    );

    /// A claim allocated as the scheduler writes it: `results` (request, device, share ID,
    /// consumed memory and compute) and `config` (source, requests, parameters).
    pub fn allocated_claim(
        uid: &str,
        results: &[Allocated<'_>],
        config: &[(&str, &[&str], serde_json::Value)],
    ) -> ResourceClaim {
        serde_json::from_value(json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "claim", "namespace": "default", "uid": uid},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpuslice.dev"}}]}},
            "status": {"allocation": {"devices": {
                "results": results.iter().map(|(request, device, share, consumed)| {
                    let mut r = json!({
                        "request": request, "driver": "gpuslice.dev", "pool": "node-a",
                        "device": device,
                    });
                    if let Some(share) = share {
                        r["shareID"] = json!(share);
                    }
                    if let Some((memory, compute)) = consumed {
                        r["consumedCapacity"] = json!({"memory": memory, "compute": compute});
                    }
                    r
                }).collect::<Vec<_>>(),
                "config": config.iter().map(|(source, requests, parameters)| json!({
                    "source": source, "requests": requests,
                    "opaque": {"driver": "gpuslice.dev", "parameters": parameters},
                })).collect::<Vec<_>>(),
            }}}
        }))
        .unwrap()
    }

    pub fn claim_ref(uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: "default".into(),
            name: "claim".into(),
            uid: uid.into(),
        }
    }

    fn inventory() -> Inventory {
        Inventory::default().after_look(&[Ok(gpu(0, 8 << 30)), Ok(gpu(1, 8 << 30))])
    }

    const DEV0: &str = "gpu-fa4ec0da-0000-4000-8000-000000000000";
    const DEV1: &str = "gpu-fa4ec0da-0000-4000-8000-000000000001";
    const UID: &str = "0b7c4f9e-5d1a-4f0e-9a53-2f6d4c1b8e70";

    #[test]
    fn consumed_capacity_and_configuration_become_the_grant() {
        let claim = allocated_claim(
            UID,
            &[("gpu", DEV0, Some("a1b2c"), Some(("4Gi", "30")))],
            &[
                (
                    "FromClass",
                    &[],
                    json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "high", "computeLimit": 50}),
                ),
                (
                    "FromClaim",
                    &["gpu"],
                    json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "low"}),
                ),
            ],
        );
        let grants = grants(&claim, &claim_ref(UID), "node-a", &inventory()).unwrap();
        assert_eq!(grants.len(), 1);
        let g = &grants[0];
        assert_eq!(g.device, DEV0);
        assert_eq!(g.share_id.as_deref(), Some("a1b2c"));
        assert_eq!(g.memory_bytes, 4 << 30);
        assert_eq!(g.compute_permille, 300);
        assert_eq!(g.config.priority, Some(Priority::Low), "the claim's wins");
        assert_eq!(g.limit_permille(), Some(500), "the class's stays");
    }

    #[test]
    fn a_device_without_consumed_capacity_is_the_whole_gpu() {
        let claim = allocated_claim(UID, &[("gpu", DEV1, None, None)], &[]);
        let grants = grants(&claim, &claim_ref(UID), "node-a", &inventory()).unwrap();
        assert_eq!(grants[0].memory_bytes, 8 << 30);
        assert_eq!(grants[0].compute_permille, 1000);
        assert_eq!(grants[0].gpu, gpu(1, 0).uuid);
    }

    /// The results of `claim`, to change.
    fn results_of(claim: &mut ResourceClaim) -> &mut Vec<DeviceRequestAllocationResult> {
        claim
            .status
            .as_mut()
            .and_then(|s| s.allocation.as_mut())
            .and_then(|a| a.devices.as_mut())
            .and_then(|d| d.results.as_mut())
            .unwrap()
    }

    #[test]
    fn other_drivers_devices_are_left_to_them() {
        let mut claim = allocated_claim(UID, &[("gpu", DEV0, None, Some(("1Gi", "10")))], &[]);
        let results = results_of(&mut claim);
        let mut nvidia = results[0].clone();
        nvidia.driver = "gpu.nvidia.com".into();
        nvidia.device = "gpu-0".into();
        nvidia.pool = "node-b".into();
        results.push(nvidia);
        assert_eq!(
            grants(&claim, &claim_ref(UID), "node-a", &inventory())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_device_of_this_driver_in_another_pool_is_refused_naming_both_pools() {
        let mut claim = allocated_claim(UID, &[("gpu", DEV0, None, Some(("1Gi", "10")))], &[]);
        let results = results_of(&mut claim);
        let mut other = results[0].clone();
        other.pool = "node-b".into();
        results.push(other);
        let err = grants(&claim, &claim_ref(UID), "node-a", &inventory())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is in pool node-b, not in this node's pool node-a")
                && err.contains("--node-name"),
            "{err}"
        );
    }

    #[test]
    fn a_claim_that_cannot_be_prepared_is_refused_with_what_is_wrong() {
        let inv = inventory();
        // Each with what it says and why, as the metrics count it.
        let check = |claim: ResourceClaim, wanted: &str, reason: PrepareFailure| {
            let err = grants(&claim, &claim_ref(UID), "node-a", &inv).unwrap_err();
            assert!(err.to_string().contains(wanted), "{err}");
            assert_eq!(err.reason(), reason, "{err}");
        };
        check(
            allocated_claim("other-uid", &[("gpu", DEV0, None, None)], &[]),
            "with UID other-uid",
            PrepareFailure::InvalidClaim,
        );
        let mut unallocated = allocated_claim(UID, &[], &[]);
        unallocated.status = None;
        check(
            unallocated,
            "is not allocated",
            PrepareFailure::InvalidClaim,
        );
        check(
            allocated_claim(UID, &[("gpu", "gpu-0", None, None)], &[]),
            "device gpu-0 is not one of this driver's",
            PrepareFailure::InvalidClaim,
        );
        check(
            allocated_claim(
                UID,
                &[(
                    "gpu",
                    "gpu-fa4ec0da-0000-4000-8000-000000000009",
                    None,
                    None,
                )],
                &[],
            ),
            "is not on this node",
            PrepareFailure::GpuUnavailable,
        );
        check(
            allocated_claim(UID, &[("gpu", DEV0, None, Some(("4000m", "30")))], &[]),
            "consumed capacity memory = \"4000m\" is not a byte count",
            PrepareFailure::InvalidClaim,
        );
        check(
            allocated_claim(UID, &[("gpu", DEV0, None, Some(("9Gi", "30")))], &[]),
            "is not between 1 byte and the GPU's",
            PrepareFailure::InvalidClaim,
        );
        check(
            allocated_claim(UID, &[("gpu", DEV0, None, Some(("1Gi", "300")))], &[]),
            "consumed capacity compute = \"300\"",
            PrepareFailure::InvalidClaim,
        );
        check(
            allocated_claim(
                UID,
                &[("gpu", DEV0, None, Some(("1Gi", "30")))],
                &[(
                    "FromClaim",
                    &[],
                    json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priorty": "high"}),
                )],
            ),
            "request gpu: opaque configuration for gpuslice.dev: unknown field \"priorty\"",
            PrepareFailure::InvalidConfig,
        );
        check(
            allocated_claim(
                UID,
                &[("gpu", DEV0, None, Some(("1Gi", "30")))],
                &[(
                    "FromClaim",
                    &[],
                    json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "computeLimit": 20}),
                )],
            ),
            "field computeLimit: 20% is below the compute share of 30%",
            PrepareFailure::InvalidConfig,
        );
        check(
            allocated_claim(
                UID,
                &[("gpu", DEV0, None, Some(("1Gi", "30")))],
                &[(
                    "FromClaim",
                    &[],
                    json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "high"}),
                )],
            ),
            "request gpu: opaque configuration for gpuslice.dev: field priority: high is given \
             only by a DeviceClass's configuration",
            PrepareFailure::InvalidConfig,
        );
    }

    #[test]
    fn a_lost_gpu_is_refused_with_nvmls_words() {
        let inv = inventory().after_look(&[Ok(gpu(0, 8 << 30)), Err("GPU 1: GPU is lost".into())]);
        let claim = allocated_claim(UID, &[("gpu", DEV1, None, None)], &[]);
        let err = grants(&claim, &claim_ref(UID), "node-a", &inv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot be used: NVML cannot read it: GPU 1: GPU is lost"),
            "{err}"
        );
        let err = grants(&claim, &claim_ref(UID), "node-a", &Inventory::default()).unwrap_err();
        assert_eq!(err.reason(), PrepareFailure::GpuUnavailable, "{err}");
    }

    #[test]
    fn configurations_apply_to_the_requests_they_name_and_their_subrequests() {
        let claim = allocated_claim(
            UID,
            &[
                ("train/big", DEV0, None, Some(("1Gi", "10"))),
                ("serve", DEV1, None, Some(("1Gi", "10"))),
            ],
            &[(
                "FromClaim",
                &["train"],
                json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig", "priority": "low"}),
            )],
        );
        let grants = grants(&claim, &claim_ref(UID), "node-a", &inventory()).unwrap();
        assert_eq!(grants[0].config.priority, Some(Priority::Low));
        assert_eq!(grants[1].config.priority, None);
    }
}
