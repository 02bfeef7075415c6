//! The Dynamic Resource Allocation driver `gpuslice.dev`: a pod claims "4Gi and 30% of a
//! GPU", the scheduler places the claim on a GPU with that much left, and the driver makes
//! the tenant whose quota holds the pod to it.
//!
//! ```text
//! gpus      NVML -> the GPUs and whether each answers --watch--> publish, prepare
//! slice     the GPUs as a ResourceSlice: attributes, capacities memory and compute
//! publish   the slice written to the API server, kept current
//! claim     a ResourceClaim's allocation -> grants: GPU, memory, compute share, config
//! config    the opaque configuration: compute limit, priority
//! state     prepare/unprepare as tenants in the ledger (quota, record, files, CDI spec);
//!           the files a claim's containers can write, cut back if they grow
//! files     a tenant's files and CDI spec on a node, as the device plugin makes them
//! kubelet   registration and the DRA gRPC service (v1, v1beta1) on Unix sockets
//! status    where the driver stands (registered, slice published, failures by reason),
//!           for the command's /readyz and /metrics
//! api       the kubelet's APIs, generated from proto/
//! ```
//!
//! Nothing here exits on trouble from outside: NVML that does not answer is asked again,
//! an API server that refuses a write is tried again, a claim that cannot be prepared is
//! answered with an error that says why (the kubelet retries it), and sockets that vanish
//! are made again.

pub mod api;
pub mod claim;
pub mod config;
pub mod files;
pub mod gpus;
pub mod kubelet;
pub mod publish;
pub mod slice;
pub mod state;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpuslice_ledger::Ledger;
use tokio::sync::watch;

use gpus::{GpuSource, Inventory};
use state::{Claims, TenantFiles};
use status::DriverStatus;

/// How the driver runs on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The node's name: the pool's, and the slice's node.
    pub node: String,
    /// The kubelet's plugin directory (`/var/lib/kubelet/plugins`); the DRA socket goes in
    /// its `gpuslice.dev/`.
    pub plugins_dir: PathBuf,
    /// The kubelet's registration directory (`/var/lib/kubelet/plugins_registry`).
    pub registry_dir: PathBuf,
    /// How often the GPUs are looked at.
    pub health_interval: Duration,
    /// NVIDIA's CDI device for a GPU (`{uuid}`, `{index}`); `None` for none.
    pub nvidia_cdi_device: Option<String>,
}

/// Runs the driver until `shutdown` turns true: watches the GPUs, publishes the node's
/// ResourceSlice, and serves the kubelet, telling `status` where it stands.
pub async fn run(
    settings: Settings,
    ledger: Ledger,
    files: Arc<dyn TenantFiles>,
    source: Box<dyn GpuSource>,
    client: kube::Client,
    status: Arc<DriverStatus>,
    shutdown: watch::Receiver<bool>,
) {
    let (inventory_tx, inventory) = watch::channel(Inventory::default());
    status.watch_inventory(inventory.clone());
    if let Err(e) = gpus::spawn_watch(source, settings.health_interval, inventory_tx) {
        tracing::error!("could not start the thread that watches the GPUs: {e}");
    }
    let claims = Arc::new(Claims::new(
        ledger,
        files,
        settings.nvidia_cdi_device.clone(),
    ));
    let prepared = claims.prepared();
    if !prepared.is_empty() {
        tracing::info!(
            "{} claim(s) prepared before this start, found in the ledger",
            prepared.len()
        );
    }
    let driver = Arc::new(kubelet::Driver::new(
        Arc::clone(&claims),
        client.clone(),
        inventory.clone(),
        settings.node.clone(),
        Arc::clone(&status),
    ));
    let tidy = tokio::spawn(cut_back_forever(
        Arc::clone(&claims),
        settings.health_interval,
        shutdown.clone(),
    ));
    let sockets = kubelet::Sockets::in_dirs(&settings.plugins_dir, &settings.registry_dir);
    let kubelet = tokio::spawn(kubelet::serve(sockets, driver, shutdown.clone()));
    let publisher = tokio::spawn(publish::publish_forever(
        client,
        settings.node.clone(),
        inventory,
        status,
        shutdown,
    ));
    let _ = kubelet.await;
    let _ = publisher.await;
    let _ = tidy.await;
}

/// Looks at the prepared claims' files every `interval` (as at the GPUs) until `stop`
/// turns true, cutting back those their containers made grow.
async fn cut_back_forever(
    claims: Arc<Claims>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let c = Arc::clone(&claims);
        let _ = tokio::task::spawn_blocking(move || c.cut_back_grown_files()).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
