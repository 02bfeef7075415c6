//! Which devices the kubelet has given to containers on this node, through its pod resources
//! API (`List` on `/var/lib/kubelet/pod-resources/kubelet.sock`). The sweep removes a tenant
//! whose slices no container has any more: its pod is gone; the metrics name the pod
//! container each tenant is.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::kubelet::{self, KubeletError};

/// The generated API (`proto/podresources/v1/api.proto`).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod api {
    tonic::include_proto!("v1");
}

/// How long the kubelet has to answer.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// A container on this node and the devices the kubelet gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDevices {
    /// Its pod's namespace.
    pub namespace: String,
    /// Its pod.
    pub pod: String,
    /// The container's name.
    pub container: String,
    /// The IDs of its devices, of any resource.
    pub devices: Vec<String>,
}

/// Every container on this node that the kubelet gave devices to, with them.
pub async fn containers(socket: &Path) -> Result<Vec<ContainerDevices>, KubeletError> {
    let channel = kubelet::connect(socket).await?;
    let mut client = api::pod_resources_lister_client::PodResourcesListerClient::new(channel);
    let failed = |message: String| KubeletError::Connect {
        path: socket.to_path_buf(),
        message,
    };
    let answer = tokio::time::timeout(LIST_TIMEOUT, client.list(api::ListPodResourcesRequest {}))
        .await
        .map_err(|_| failed("no answer to List".into()))?
        .map_err(|status| failed(format!("List failed: {}", status.message())))?;
    Ok(answer
        .into_inner()
        .pod_resources
        .into_iter()
        .flat_map(|pod| {
            pod.containers
                .into_iter()
                .map(move |container| ContainerDevices {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.name,
                    devices: container
                        .devices
                        .into_iter()
                        .flat_map(|d| d.device_ids)
                        .collect(),
                })
        })
        .filter(|c| !c.devices.is_empty())
        .collect())
}

/// Every device ID the kubelet has assigned to a container on this node, of any resource.
pub async fn devices_in_use(socket: &Path) -> Result<HashSet<String>, KubeletError> {
    Ok(containers(socket)
        .await?
        .into_iter()
        .flat_map(|c| c.devices)
        .collect())
}
