//! The `DevicePlugin` gRPC service the kubelet calls, for one resource.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::allocate::Allocator;
use super::api::{self, device_plugin_server::DevicePlugin};
use super::config::Resource;
use super::health::Inventory;
use super::slices;

/// One resource's device plugin.
#[derive(Debug)]
pub struct SlicePlugin {
    resource: Resource,
    allocator: Arc<Allocator>,
    inventory: watch::Receiver<Inventory>,
    /// Becomes true when this server stops, which ends the `ListAndWatch` streams (the
    /// kubelet then knows to expect a new registration).
    stop: watch::Receiver<bool>,
}

impl SlicePlugin {
    /// The service for `resource`.
    pub fn new(
        resource: Resource,
        allocator: Arc<Allocator>,
        inventory: watch::Receiver<Inventory>,
        stop: watch::Receiver<bool>,
    ) -> SlicePlugin {
        SlicePlugin {
            resource,
            allocator,
            inventory,
            stop,
        }
    }

    /// What this plugin tells the kubelet about itself.
    pub fn options() -> api::DevicePluginOptions {
        api::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }
    }
}

/// The stream type of `ListAndWatch`.
type DeviceStream = Pin<Box<dyn Stream<Item = Result<api::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for SlicePlugin {
    async fn get_device_plugin_options(
        &self,
        _request: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(SlicePlugin::options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _request: Request<api::Empty>,
    ) -> Result<Response<DeviceStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let resource = self.resource.clone();
        let mut inventory = self.inventory.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let devices = slices::devices(&resource, &inventory.borrow_and_update().gpus);
                if last.as_ref() != Some(&devices) {
                    let answer = api::ListAndWatchResponse {
                        devices: devices.clone(),
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return; // the kubelet hung up
                    }
                    last = Some(devices);
                }
                tokio::select! {
                    changed = inventory.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| {
                let size = usize::try_from(c.allocation_size).map_err(|_| {
                    Status::invalid_argument(format!(
                        "allocation_size {} is negative",
                        c.allocation_size
                    ))
                })?;
                Ok(api::ContainerPreferredAllocationResponse {
                    device_i_ds: slices::preferred(
                        &c.available_device_i_ds,
                        &c.must_include_device_i_ds,
                        size,
                    ),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(api::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            let allocator = Arc::clone(&self.allocator);
            let ids = container.devices_ids;
            let answer = tokio::task::spawn_blocking(move || allocator.allocate(&ids))
                .await
                .map_err(|e| Status::internal(format!("allocation failed: {e}")))?;
            match answer {
                Ok(response) => container_responses.push(response),
                Err(e) => {
                    tracing::warn!("refused an allocation of {}: {e}", self.resource.name);
                    return Err(e.status());
                }
            }
        }
        Ok(Response::new(api::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}
