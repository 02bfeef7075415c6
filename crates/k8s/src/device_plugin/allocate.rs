//! `Allocate`: from the slices the kubelet chose for a container to a tenant with its quota,
//! a CDI spec for it, and the CDI device names the kubelet passes to the container runtime.
//!
//! k slices of a GPU cut into N are k/N of its memory and a k/N share of its time, on that
//! GPU; the resource's priority and compute limit come from the configuration. The quota
//! gives nothing on other GPUs (a memory limit of 0), which the container does not see
//! anyway: NVIDIA's CDI device gives it only its own GPUs.

use std::collections::BTreeMap;

use gpuslice_ledger::{GpuUuid, Ledger, Limits, TenantName, TenantQuota};
use tokio::sync::watch;

use super::api;
use super::config::{ComputeLimit, Config, Resource};
use super::health::Inventory;
use super::slices::SliceId;
use super::tenants::{self, Record, Removal, TenantError};
use crate::cdi::{self, Preload};
use crate::nvml::Gpu;

/// Why a container's slices could not be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    /// No device IDs at all.
    #[error("the request names no devices")]
    Empty,
    /// A device ID this plugin never advertised.
    #[error("{id:?} is not a device of {resource} (expected GPU-<uuid>-slice-<n>)")]
    Unknown {
        /// The ID.
        id: String,
        /// The resource.
        resource: String,
    },
    /// The slice's GPU is not on this node (any more).
    #[error("{id}: GPU {gpu} is not on this node")]
    GpuGone {
        /// The ID.
        id: String,
        /// The GPU.
        gpu: GpuUuid,
    },
    /// The slice's GPU is unhealthy.
    #[error("{id}: GPU {gpu} is unhealthy: {problem}")]
    GpuUnhealthy {
        /// The ID.
        id: String,
        /// The GPU.
        gpu: GpuUuid,
        /// What is wrong with it.
        problem: String,
    },
    /// More slices than the resource gives one container (NVIDIA's
    /// `failRequestsGreaterThanOne`).
    #[error(
        "request for '{resource}: {requested}' too large: a container may have at most {max} \
         slice(s) of {resource} (maxSlicesPerContainer; failRequestsGreaterThanOne in NVIDIA's \
         format), since {resource} is an access to a shared GPU; ask for {max}"
    )]
    TooMany {
        /// The resource.
        resource: String,
        /// How many slices were asked for.
        requested: usize,
        /// How many are allowed.
        max: u32,
    },
    /// The GPUs have not been discovered yet (NVML not answering).
    #[error("the GPUs of this node are not known yet (NVML has not answered); retry")]
    NotDiscovered,
    /// The tenant's files could not be written.
    #[error("could not create the tenant for {devices}: {source}")]
    Tenant {
        /// The device IDs.
        devices: String,
        /// Why.
        source: TenantError,
    },
}

impl AllocateError {
    /// The gRPC status the kubelet gets.
    pub fn status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            AllocateError::Empty
            | AllocateError::Unknown { .. }
            | AllocateError::TooMany { .. } => tonic::Status::invalid_argument(message),
            AllocateError::GpuGone { .. } | AllocateError::GpuUnhealthy { .. } => {
                tonic::Status::failed_precondition(message)
            }
            AllocateError::NotDiscovered => tonic::Status::unavailable(message),
            AllocateError::Tenant { .. } => tonic::Status::internal(message),
        }
    }
}

/// A request's slices, and per GPU how many of them.
type Checked = (Vec<SliceId>, Vec<(Gpu, u32)>);

/// Allocates the slices of one resource.
#[derive(Debug)]
pub struct Allocator {
    ledger: Ledger,
    config: Config,
    resource: Resource,
    inventory: watch::Receiver<Inventory>,
    /// One allocation at a time: they read and remove each other's tenants.
    serial: std::sync::Mutex<()>,
}

impl Allocator {
    /// An allocator for `resource`.
    pub fn new(
        ledger: Ledger,
        config: Config,
        resource: Resource,
        inventory: watch::Receiver<Inventory>,
    ) -> Allocator {
        Allocator {
            ledger,
            config,
            resource,
            inventory,
            serial: std::sync::Mutex::new(()),
        }
    }

    /// Allocates the slices `ids` to one container.
    pub fn allocate(
        &self,
        ids: &[String],
    ) -> Result<api::ContainerAllocateResponse, AllocateError> {
        let _serial = self
            .serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inventory = self.inventory.borrow().clone();
        let (slices, per_gpu) = self.check(ids, &inventory)?;
        let mut devices: Vec<String> = slices.iter().map(ToString::to_string).collect();
        devices.sort();
        let failed = |source: TenantError| AllocateError::Tenant {
            devices: devices.join(","),
            source,
        };
        let tenant = tenants::tenant_name(&slices).map_err(failed)?;
        self.remove_earlier_holders(&tenant, &slices);
        let quota = quota(&self.resource, self.config.slices_per_gpu, &per_gpu);
        let record = Record {
            resource: self.resource.name.clone(),
            devices: devices.clone(),
            allocated_unix_ms: tenants::now_ms(),
        };
        self.create_tenant(&tenant, &record, &quota)
            .map_err(failed)?;
        let gpus: Vec<Gpu> = per_gpu.iter().map(|(gpu, _)| gpu.clone()).collect();
        tracing::info!(
            "allocated {} to tenant {tenant} ({})",
            devices.join(","),
            describe(&quota, &per_gpu)
        );
        Ok(self.response(&tenant, &gpus))
    }

    /// Parses and checks the IDs; returns the slices and, per GPU, how many of them.
    fn check(&self, ids: &[String], inventory: &Inventory) -> Result<Checked, AllocateError> {
        if ids.is_empty() {
            return Err(AllocateError::Empty);
        }
        if !inventory.discovered {
            return Err(AllocateError::NotDiscovered);
        }
        let mut slices = Vec::new();
        let mut counts: BTreeMap<u32, (Gpu, u32)> = BTreeMap::new();
        for id in ids {
            let slice = SliceId::parse(id)
                .filter(|s| self.resource.owns(s.index))
                .ok_or_else(|| AllocateError::Unknown {
                    id: id.clone(),
                    resource: self.resource.name.clone(),
                })?;
            if slices.contains(&slice) {
                continue;
            }
            let state = inventory
                .gpu(&slice.gpu)
                .ok_or_else(|| AllocateError::GpuGone {
                    id: id.clone(),
                    gpu: slice.gpu,
                })?;
            if let Some(problem) = &state.problem {
                return Err(AllocateError::GpuUnhealthy {
                    id: id.clone(),
                    gpu: slice.gpu,
                    problem: problem.clone(),
                });
            }
            counts
                .entry(state.gpu.index)
                .or_insert((state.gpu.clone(), 0))
                .1 += 1;
            slices.push(slice);
        }
        if let Some(max) = self.resource.max_slices_per_container
            && slices.len() > usize::try_from(max).unwrap_or(usize::MAX)
        {
            return Err(AllocateError::TooMany {
                resource: self.resource.name.clone(),
                requested: slices.len(),
                max,
            });
        }
        Ok((slices, counts.into_values().collect()))
    }

    /// Removes the plugin's other tenants that hold any of `slices`: the kubelet would not
    /// allocate them again if their container were still there.
    fn remove_earlier_holders(&self, tenant: &TenantName, slices: &[SliceId]) {
        let holders = match tenants::plugin_tenants(&self.ledger, |t, e| {
            tracing::warn!("tenant {t}: {e}");
        }) {
            Ok(holders) => holders,
            Err(e) => {
                tracing::warn!("could not look for earlier tenants of these slices: {e}");
                return;
            }
        };
        for (other, record) in holders {
            if other == *tenant || !record.slices().any(|s| slices.contains(&s)) {
                continue;
            }
            match tenants::remove_unless_in_use(&self.ledger, &other, &self.config.cdi_dir) {
                Ok(Removal::Removed) => {
                    tracing::info!("removed tenant {other}: its slices were allocated again");
                }
                Ok(Removal::InUse(n)) => tracing::warn!(
                    "tenant {other} held slices allocated again, but {n} process(es) still use \
                     it; kept"
                ),
                Err(e) => tracing::warn!("could not remove earlier tenant {other}: {e}"),
            }
        }
    }

    /// Creates the tenant (afresh unless processes are in it, whose quota is then updated in
    /// place), its usage file and its CDI spec.
    fn create_tenant(
        &self,
        tenant: &TenantName,
        record: &Record,
        quota: &TenantQuota,
    ) -> Result<(), TenantError> {
        let exists = self.ledger.tenant_dir(tenant).exists();
        if exists
            && tenants::read_record(&self.ledger, tenant)?.is_none()
            && self.ledger.read_quota(tenant)?.is_some()
        {
            // Someone else's (a run's, an administrator's): neither removed nor taken over.
            return Err(TenantError::NotOurs {
                tenant: tenant.clone(),
            });
        }
        if exists && tenants::live_slots(&self.ledger, tenant)? == 0 {
            // Fresh counters for a new container; a live one (a sidecar sharing the slices)
            // keeps its tenant.
            self.ledger.remove_tenant(tenant)?;
        }
        tenants::write_record(&self.ledger, tenant, record)?;
        self.ledger.write_quota(tenant, quota)?;
        tenants::prepare_usage(&self.ledger, tenant)?;
        let layout = &self.config.layout;
        if layout.preload == Preload::LdSoPreload {
            cdi::ensure_preload_file(layout)?;
        }
        tenants::ensure_spec(layout, &self.config.cdi_dir, tenant)?;
        Ok(())
    }

    /// The answer for the kubelet: NVIDIA's device for each GPU, then gpuslice's.
    fn response(&self, tenant: &TenantName, gpus: &[Gpu]) -> api::ContainerAllocateResponse {
        let mut names: Vec<String> = match &self.config.nvidia_cdi_device {
            Some(template) => gpus
                .iter()
                .map(|g| {
                    template
                        .replace("{uuid}", &g.uuid.to_string())
                        .replace("{index}", &g.index.to_string())
                })
                .collect(),
            None => Vec::new(),
        };
        names.push(cdi::device_name(tenant));
        api::ContainerAllocateResponse {
            cdi_devices: names
                .into_iter()
                .map(|name| api::CdiDevice { name })
                .collect(),
            ..Default::default()
        }
    }
}

/// The quota for `k` of `n` slices on each GPU: k/n of its memory and a k/n share, the
/// resource's priority, and a cap at the share if the resource says so; nothing elsewhere.
pub fn quota(resource: &Resource, n: u32, per_gpu: &[(Gpu, u32)]) -> TenantQuota {
    let n = n.max(1);
    TenantQuota {
        defaults: Limits {
            memory_bytes: Some(0),
            ..Limits::default()
        },
        per_gpu: per_gpu
            .iter()
            .map(|(gpu, k)| {
                let k = (*k).min(n);
                let memory = u128::from(gpu.memory_bytes) * u128::from(k) / u128::from(n);
                let share = (1000 * k / n).max(1);
                (
                    gpu.uuid,
                    Limits {
                        memory_bytes: Some(u64::try_from(memory).unwrap_or(u64::MAX)),
                        compute_share_permille: Some(share),
                        compute_limit_permille: match resource.compute_limit {
                            ComputeLimit::Share => Some(share),
                            ComputeLimit::None => None,
                        },
                        priority: Some(resource.priority),
                    },
                )
            })
            .collect(),
    }
}

/// The quota in words, for the log: `GPU-...: 20 GiB, 25%`.
fn describe(quota: &TenantQuota, per_gpu: &[(Gpu, u32)]) -> String {
    per_gpu
        .iter()
        .map(|(gpu, k)| {
            let limits = quota.limits_for(&gpu.uuid);
            format!(
                "{}: {k} slice(s), {} MiB, {}% of the time",
                gpu.uuid,
                limits.memory_bytes.unwrap_or(0) >> 20,
                limits.compute_share_permille.unwrap_or(0) / 10
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::Priority;

    fn gpu(i: u8, memory: u64) -> Gpu {
        Gpu {
            index: u32::from(i),
            uuid: GpuUuid::parse(&format!("GPU-fa4ec0da-0000-4000-8000-0000000000{i:02x}"))
                .unwrap(),
            model: "test GPU".into(),
            memory_bytes: memory,
        }
    }

    fn resource(priority: Priority, compute_limit: ComputeLimit) -> Resource {
        Resource {
            name: "gpuslice.dev/gpu".into(),
            first_slice: 0,
            slices: 4,
            priority,
            compute_limit,
            max_slices_per_container: None,
        }
    }

    #[test]
    fn k_of_n_slices_are_k_over_n_of_memory_and_time() {
        let g = gpu(0, 80 << 30);
        let q = quota(
            &resource(Priority::Normal, ComputeLimit::None),
            4,
            &[(g.clone(), 1)],
        );
        let l = q.limits_for(&g.uuid);
        assert_eq!(l.memory_bytes, Some(20 << 30));
        assert_eq!(l.compute_share_permille, Some(250));
        assert_eq!(l.compute_limit_permille, None);
        assert_eq!(l.priority, Some(Priority::Normal));
        assert_eq!(q.defaults.memory_bytes, Some(0), "nothing on other GPUs");

        let q = quota(
            &resource(Priority::High, ComputeLimit::Share),
            3,
            &[(g.clone(), 2)],
        );
        let l = q.limits_for(&g.uuid);
        assert_eq!(l.memory_bytes, Some((80u64 << 30) * 2 / 3));
        assert_eq!(l.compute_share_permille, Some(666));
        assert_eq!(l.compute_limit_permille, Some(666));
        assert_eq!(l.priority, Some(Priority::High));
    }

    #[test]
    fn slices_on_two_gpus_get_a_quota_on_each() {
        let (a, b) = (gpu(0, 8 << 30), gpu(1, 16 << 30));
        let q = quota(
            &resource(Priority::Low, ComputeLimit::None),
            4,
            &[(a.clone(), 1), (b.clone(), 3)],
        );
        assert_eq!(q.limits_for(&a.uuid).memory_bytes, Some(2 << 30));
        assert_eq!(q.limits_for(&b.uuid).memory_bytes, Some(12 << 30));
        assert_eq!(q.limits_for(&b.uuid).compute_share_permille, Some(750));
    }
}
