//! Keeping this node's ResourceSlice in the API server as the GPUs are: written when the
//! driver starts, whenever a GPU appears, fails or comes back, and made again if someone
//! deleted it (looked at every [`RESYNC`]).
//!
//! The slice is the node's pool, alone in it (`resourceSliceCount: 1`). Each change bumps
//! the pool's generation, which is read from the slice in the API server, so a restarted
//! driver goes on from where the last one left it; the scheduler uses the generation to
//! tell the current slice from a stale one.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::{Device, ResourceSlice};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use super::gpus::{Gpu, Inventory};
use super::slice::{device, resource_slice, slice_name};
use super::status::DriverStatus;

/// How often the slice is looked at even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed write is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// What a write of the slice did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The slice was created, at this generation.
    Created(i64),
    /// The slice was updated to this generation.
    Updated(i64),
    /// The slice already listed these devices.
    Unchanged,
}

/// Makes the API server's slice of `node` list `gpus`.
pub async fn write_slice(
    api: &Api<ResourceSlice>,
    node: &str,
    gpus: &[Gpu],
) -> Result<Written, kube::Error> {
    let name = slice_name(node);
    let wanted: Vec<Device> = gpus.iter().map(device).collect();
    match api.get_opt(&name).await? {
        None => {
            let slice = resource_slice(node, gpus, 1);
            api.create(&PostParams::default(), &slice).await?;
            Ok(Written::Created(1))
        }
        Some(existing) => {
            let spec = &existing.spec;
            let same = spec.devices.as_deref().unwrap_or_default() == wanted.as_slice()
                && spec.node_name.as_deref() == Some(node)
                && spec.pool.name == node
                && spec.pool.resource_slice_count == 1
                && spec.driver == super::slice::DRIVER;
            if same {
                return Ok(Written::Unchanged);
            }
            let generation = spec.pool.generation.saturating_add(1);
            let mut slice = resource_slice(node, gpus, generation);
            slice.metadata.resource_version = existing.metadata.resource_version.clone();
            api.replace(&name, &PostParams::default(), &slice).await?;
            Ok(Written::Updated(generation))
        }
    }
}

/// Keeps the slice of `node` current until `stop` turns true, telling `status` whether it
/// is.
pub async fn publish_forever(
    client: kube::Client,
    node: String,
    mut inventory: watch::Receiver<Inventory>,
    status: Arc<DriverStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<ResourceSlice> = Api::all(client);
    let mut last_error = String::new();
    loop {
        let snapshot = inventory.borrow_and_update().clone();
        let mut wait = RESYNC;
        if snapshot.discovered {
            let gpus: Vec<Gpu> = snapshot.healthy().cloned().collect();
            match write_slice(&api, &node, &gpus).await {
                Ok(written) => {
                    status.slice_published(&gpus);
                    if !last_error.is_empty() {
                        tracing::info!("the API server takes the ResourceSlice again");
                        last_error.clear();
                    }
                    let listed: Vec<String> = gpus.iter().map(|g| g.uuid.to_string()).collect();
                    match written {
                        Written::Created(g) => tracing::info!(
                            "created ResourceSlice {} (generation {g}) with {} GPU(s): {}",
                            slice_name(&node),
                            gpus.len(),
                            listed.join(", ")
                        ),
                        Written::Updated(g) => tracing::info!(
                            "updated ResourceSlice {} (generation {g}) with {} GPU(s): {}",
                            slice_name(&node),
                            gpus.len(),
                            listed.join(", ")
                        ),
                        Written::Unchanged => {}
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    status.slice_failed(text.clone());
                    if text != last_error {
                        tracing::error!(
                            "could not write ResourceSlice {}: {text}; retrying",
                            slice_name(&node)
                        );
                        last_error = text;
                    }
                    wait = RETRY;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = inventory.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
