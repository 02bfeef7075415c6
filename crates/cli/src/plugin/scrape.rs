//! The device plugin's metrics and readiness: the ledger's exposition with what only the
//! plugin knows added (each tenant's pod container, from the kubelet's pod resources API;
//! each GPU's slices and health), and whether it is ready to hand out slices.
//!
//! The plugin says where it stands as it goes ([`PluginSource::no_settings`],
//! [`PluginSource::preparing`], [`PluginSource::serving`]); the endpoints read that. The
//! server starts before the settings are valid where the address is a flag, so that
//! `/healthz` answers (the process is alive) and `/readyz` says what is wrong.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use gpuslice_ledger::Ledger;
use tokio::sync::watch;

use crate::metrics::render::{self, GpuInfo, PodOwner, Scrape, SliceCount};
use crate::metrics::{self, serve};
use gpuslice_k8s::device_plugin::config::Config;
use gpuslice_k8s::device_plugin::health::Inventory;
use gpuslice_k8s::device_plugin::podresources::{self, ContainerDevices};
use gpuslice_k8s::device_plugin::tenants::{self, Record};

/// Where the plugin stands.
#[derive(Debug, Clone)]
enum Phase {
    /// No valid settings yet: why.
    NoSettings(String),
    /// Settings loaded, but nothing handed out yet: why (the ledger, the CDI directory or
    /// the shim is not usable).
    Preparing {
        config: Box<Config>,
        inventory: watch::Receiver<Inventory>,
        reason: String,
    },
    /// Advertising and allocating slices.
    Serving {
        config: Box<Config>,
        inventory: watch::Receiver<Inventory>,
    },
}

/// The plugin as the metrics endpoints see it.
#[derive(Debug)]
pub struct PluginSource {
    phase: Mutex<Phase>,
    hostname: String,
}

impl PluginSource {
    /// A plugin that has not read its settings yet, on the node `hostname`.
    pub fn new(hostname: String) -> PluginSource {
        PluginSource {
            phase: Mutex::new(Phase::NoSettings("the settings are being read".into())),
            hostname,
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    fn phase(&self) -> Phase {
        self.phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// No valid settings: `reason`.
    pub fn no_settings(&self, reason: String) {
        self.set(Phase::NoSettings(reason));
    }

    /// Running with `config`, but not handing out slices yet: `reason`.
    pub fn preparing(
        &self,
        config: &Config,
        inventory: &watch::Receiver<Inventory>,
        reason: String,
    ) {
        self.set(Phase::Preparing {
            config: Box::new(config.clone()),
            inventory: inventory.clone(),
            reason,
        });
    }

    /// Handing out slices with `config`.
    pub fn serving(&self, config: &Config, inventory: &watch::Receiver<Inventory>) {
        self.set(Phase::Serving {
            config: Box::new(config.clone()),
            inventory: inventory.clone(),
        });
    }
}

#[tonic::async_trait]
impl serve::Source for PluginSource {
    async fn metrics(&self) -> String {
        let hostname = self.hostname.clone();
        let (config, inventory, serving) = match self.phase() {
            Phase::NoSettings(_) => {
                return tokio::task::spawn_blocking(move || {
                    let gpus = metrics::nvml_gpus();
                    render::render(&Scrape {
                        gpus: &gpus,
                        hostname: &hostname,
                        ..Scrape::default()
                    })
                })
                .await
                .unwrap_or_default();
            }
            Phase::Preparing {
                config, inventory, ..
            } => (config, inventory, false),
            Phase::Serving { config, inventory } => (config, inventory, true),
        };
        let containers = match &config.pod_resources_socket {
            Some(socket) => Some(podresources::containers(socket).await.ok()),
            None => None,
        };
        let inventory = inventory.borrow().clone();
        tokio::task::spawn_blocking(move || {
            let dir = &config.layout.ledger_host;
            let report = crate::report::read_report_checked(dir).ok();
            let records = Ledger::open_existing(dir)
                .ok()
                .and_then(|ledger| tenants::plugin_tenants(&ledger, |_, _| {}).ok())
                .unwrap_or_default();
            let records: Vec<(String, Record)> = records
                .into_iter()
                .map(|(t, r)| (t.as_str().to_string(), r))
                .collect();
            let gpus: Vec<GpuInfo> = inventory
                .gpus
                .iter()
                .map(|s| GpuInfo {
                    index: s.gpu.index,
                    uuid: s.gpu.uuid,
                    model: s.gpu.model.clone(),
                    memory_bytes: s.gpu.memory_bytes,
                    healthy: Some(s.problem.is_none()),
                })
                .collect();
            let ready = serving && report.is_some();
            render::render(&Scrape {
                report: report.as_ref(),
                gpus: &gpus,
                owners: containers
                    .as_ref()
                    .and_then(Option::as_ref)
                    .map(|c| owners(&records, c))
                    .unwrap_or_default(),
                slices: slices(&config, &inventory, &records),
                pod_resources_up: containers.as_ref().map(Option::is_some),
                dra: None,
                ready,
                hostname: &hostname,
            })
        })
        .await
        .unwrap_or_default()
    }

    async fn readiness(&self) -> Result<(), String> {
        match self.phase() {
            Phase::NoSettings(reason) => Err(format!("no valid settings yet: {reason}")),
            Phase::Preparing { reason, .. } => Err(format!("advertising nothing: {reason}")),
            Phase::Serving { config, .. } => tokio::task::spawn_blocking(move || {
                metrics::ledger_readiness(&config.layout.ledger_host)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the readiness check failed: {e}"))),
        }
    }
}

/// The pod container of each of the plugin's tenants that a container has: the one the
/// kubelet gave one of the tenant's slices to.
fn owners(
    records: &[(String, Record)],
    containers: &[ContainerDevices],
) -> HashMap<String, PodOwner> {
    records
        .iter()
        .filter_map(|(tenant, record)| {
            let owner = containers
                .iter()
                .find(|c| c.devices.iter().any(|d| record.devices.contains(d)))?;
            Some((
                tenant.clone(),
                PodOwner {
                    namespace: owner.namespace.clone(),
                    pod: owner.pod.clone(),
                    container: owner.container.clone(),
                },
            ))
        })
        .collect()
}

/// Each resource's slices on each GPU: advertised, and held by the plugin's tenants.
fn slices(config: &Config, inventory: &Inventory, records: &[(String, Record)]) -> Vec<SliceCount> {
    let mut out = Vec::new();
    for state in &inventory.gpus {
        for resource in &config.resources {
            let allocated = records
                .iter()
                .filter(|(_, r)| r.resource == resource.name)
                .flat_map(|(_, r)| r.slices())
                .filter(|s| s.gpu == state.gpu.uuid && resource.owns(s.index))
                .count();
            out.push(SliceCount {
                gpu: state.gpu.uuid,
                resource: resource.name.clone(),
                advertised: resource.slices,
                allocated: u32::try_from(allocated).unwrap_or(u32::MAX),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_k8s::device_plugin::slices::SliceId;
    use gpuslice_ledger::GpuUuid;

    fn record(resource: &str, slices: &[SliceId]) -> Record {
        Record {
            resource: resource.into(),
            devices: slices.iter().map(ToString::to_string).collect(),
            allocated_unix_ms: 0,
        }
    }

    fn container(pod: &str, devices: &[SliceId]) -> ContainerDevices {
        ContainerDevices {
            namespace: "ml".into(),
            pod: pod.into(),
            container: "main".into(),
            devices: devices.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_tenant_is_the_container_its_slices_were_given_to() {
        let gpu = GpuUuid([1; 16]);
        let s = |i| SliceId::new(gpu, i);
        let records = vec![
            ("a".to_string(), record("gpuslice.dev/gpu", &[s(0), s(1)])),
            ("b".to_string(), record("gpuslice.dev/gpu", &[s(2)])),
            ("gone".to_string(), record("gpuslice.dev/gpu", &[s(3)])),
        ];
        let found = owners(
            &records,
            &[
                container("train", &[s(1), s(0)]),
                container("infer", &[s(2)]),
            ],
        );
        assert_eq!(found["a"].pod, "train");
        assert_eq!(found["b"].pod, "infer");
        assert_eq!(found["b"].namespace, "ml");
        assert!(!found.contains_key("gone"), "no container has its slice");
    }
}
