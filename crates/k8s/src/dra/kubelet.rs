//! The driver's side of the kubelet: the DRA service (v1 and v1beta1) on a socket in the
//! driver's plugin directory, and the registration service on a socket in the kubelet's
//! `plugins_registry` directory, which the kubelet watches.
//!
//! The kubelet finds the registration socket, asks it what it is (`GetInfo`: type
//! `DRAPlugin`, the driver's name, the DRA socket, the versions served), says whether it
//! registered it (`NotifyRegistrationStatus`), and from then on calls
//! `NodePrepareResources` and `NodeUnprepareResources` on the DRA socket. A restarting
//! kubelet looks at the registration directory again and registers the driver again; one
//! that removed the sockets (or an administrator who did) finds them made again within a
//! second, as the driver checks that both are still the files it created.
//!
//! The services only translate: what a call does is [`Driver::prepare`] and
//! [`Driver::unprepare`], one claim at a time, and each claim's failure is its own entry in
//! the answer (the kubelet retries that claim), never an error of the whole call. Both
//! versions are one implementation: `dra_service!` writes each version's service over the
//! same driver from its generated types, which differ only in what a device carries.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::ResourceClaim;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::api::{self, registration, v1, v1beta1};
use super::claim::{self, ClaimRef};
use super::gpus::Inventory;
use super::slice::DRIVER;
use super::state::{Claims, PreparedDevice};
use super::status::{DriverStatus, PrepareFailure, UnprepareFailure};

/// How often the sockets are checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a read of a claim from the API server may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What the kubelet's calls do: prepare and unprepare claims.
pub struct Driver {
    claims: Arc<Claims>,
    client: kube::Client,
    inventory: watch::Receiver<Inventory>,
    node: String,
    status: Arc<DriverStatus>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("claims", &self.claims)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for `node` (the name of its pool), reading claims with `client`, counting
    /// its failures in `status`.
    pub fn new(
        claims: Arc<Claims>,
        client: kube::Client,
        inventory: watch::Receiver<Inventory>,
        node: String,
        status: Arc<DriverStatus>,
    ) -> Driver {
        Driver {
            claims,
            client,
            inventory,
            node,
            status,
        }
    }

    /// Prepares one claim: from its record if prepared already, else from the claim as the
    /// API server has it. A failure is counted by its reason.
    pub async fn prepare(&self, claim: ClaimRef) -> Result<Vec<PreparedDevice>, String> {
        self.try_prepare(claim).await.map_err(|(why, message)| {
            self.status.prepare_failed(why);
            message
        })
    }

    /// [`Driver::prepare`], with why it failed.
    async fn try_prepare(
        &self,
        claim: ClaimRef,
    ) -> Result<Vec<PreparedDevice>, (PrepareFailure, String)> {
        let internal = |e: tokio::task::JoinError, claim: &ClaimRef| {
            (PrepareFailure::Internal, format!("claim {claim}: {e}"))
        };
        let failed = |e: super::state::PrepareError| (e.reason(), e.to_string());
        let inventory = self.inventory.borrow().clone();
        let claims = Arc::clone(&self.claims);
        let (c, inv) = (claim.clone(), inventory.clone());
        let known = tokio::task::spawn_blocking(move || claims.already_prepared(&c, &inv))
            .await
            .map_err(|e| internal(e, &claim))?;
        if let Some(answer) = known {
            return answer.map_err(failed);
        }
        let object = self
            .read_claim(&claim)
            .await
            .map_err(|e| (PrepareFailure::ApiServer, e))?;
        let grants = claim::grants(&object, &claim, &self.node, &inventory)
            .map_err(|e| (e.reason(), e.to_string()))?;
        let claims = Arc::clone(&self.claims);
        let c = claim.clone();
        tokio::task::spawn_blocking(move || claims.prepare(&c, &grants, &inventory))
            .await
            .map_err(|e| internal(e, &claim))?
            .map_err(failed)
    }

    /// Unprepares one claim. A failure is counted by its reason.
    pub async fn unprepare(&self, claim: ClaimRef) -> Result<(), String> {
        let claims = Arc::clone(&self.claims);
        let c = claim.clone();
        let answer = match tokio::task::spawn_blocking(move || claims.unprepare(&c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err((e.reason(), e.to_string())),
            Err(e) => Err((UnprepareFailure::Internal, format!("claim {claim}: {e}"))),
        };
        answer.map_err(|(why, message)| {
            self.status.unprepare_failed(why);
            message
        })
    }

    /// The claim as the API server has it.
    async fn read_claim(&self, claim: &ClaimRef) -> Result<ResourceClaim, String> {
        let api: kube::Api<ResourceClaim> =
            kube::Api::namespaced(self.client.clone(), &claim.namespace);
        match tokio::time::timeout(API_TIMEOUT, api.get_opt(&claim.name)).await {
            Ok(Ok(Some(object))) => Ok(object),
            Ok(Ok(None)) => Err(format!("claim {claim} does not exist in the API server")),
            Ok(Err(e)) => Err(format!(
                "claim {claim}: cannot read it from the API server: {e}"
            )),
            Err(_) => Err(format!(
                "claim {claim}: the API server did not answer within {}s",
                API_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Calls `call` on each claim in turn (`what` it does, for the log); per claim UID, its
/// answer in the terms of the caller's version, an error included (the kubelet retries that
/// claim alone).
async fn answer_each<T, R, Answer>(
    what: &str,
    claims: Vec<impl Into<ClaimRef>>,
    call: impl Fn(ClaimRef) -> Answer,
) -> HashMap<String, R>
where
    Answer: Future<Output = Result<T, String>>,
    R: From<Result<T, String>>,
{
    let mut out = HashMap::new();
    for claim in claims {
        let claim = claim.into();
        let uid = claim.uid.clone();
        let answer = call(claim.clone()).await;
        if let Err(e) = &answer {
            tracing::warn!("could not {what} claim {claim}: {e}");
        }
        out.insert(uid, R::from(answer));
    }
    out
}

/// What preparing one claim gave: its devices, or why not.
type PrepareAnswer = Result<Vec<PreparedDevice>, String>;
/// What unpreparing one claim gave: nothing, or why not.
type UnprepareAnswer = Result<(), String>;

/// The DRA service of one version of the kubelet's API (`api::v1`, `api::v1beta1`), over the
/// one [`Driver`]. The versions' generated types have the same names and fields but for what
/// a prepared device carries, so this writes the translation once: a claim the kubelet sends
/// as a [`ClaimRef`], each claim's answer as its response (devices through the version's
/// `From<PreparedDevice>`, written out below, since that is where versions differ; an error
/// as the claim's `error`, which the kubelet retries), and the service's two calls.
macro_rules! dra_service {
    ($(#[$doc:meta])* $service:ident serves $version:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $service(Arc<Driver>);

        impl From<$version::Claim> for ClaimRef {
            fn from(claim: $version::Claim) -> ClaimRef {
                ClaimRef {
                    namespace: claim.namespace,
                    name: claim.name,
                    uid: claim.uid,
                }
            }
        }

        impl From<PrepareAnswer> for $version::NodePrepareResourceResponse {
            fn from(answer: PrepareAnswer) -> Self {
                match answer {
                    Ok(devices) => Self {
                        devices: devices.into_iter().map($version::Device::from).collect(),
                        error: String::new(),
                    },
                    Err(error) => Self {
                        devices: Vec::new(),
                        error,
                    },
                }
            }
        }

        impl From<UnprepareAnswer> for $version::NodeUnprepareResourceResponse {
            fn from(answer: UnprepareAnswer) -> Self {
                Self {
                    error: answer.err().unwrap_or_default(),
                }
            }
        }

        #[tonic::async_trait]
        impl $version::dra_plugin_server::DraPlugin for $service {
            async fn node_prepare_resources(
                &self,
                request: Request<$version::NodePrepareResourcesRequest>,
            ) -> Result<Response<$version::NodePrepareResourcesResponse>, Status> {
                let claims = answer_each("prepare", request.into_inner().claims, |claim| {
                    self.0.prepare(claim)
                })
                .await;
                Ok(Response::new($version::NodePrepareResourcesResponse { claims }))
            }

            async fn node_unprepare_resources(
                &self,
                request: Request<$version::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$version::NodeUnprepareResourcesResponse>, Status> {
                let claims = answer_each("unprepare", request.into_inner().claims, |claim| {
                    self.0.unprepare(claim)
                })
                .await;
                Ok(Response::new($version::NodeUnprepareResourcesResponse { claims }))
            }
        }
    };
}

dra_service!(
    /// The v1 service (kubelets of Kubernetes 1.34 and later).
    V1 serves v1
);
dra_service!(
    /// The v1beta1 service (kubelets of 1.32 and 1.33).
    V1beta1 serves v1beta1
);

/// A v1 device answers with its share ID (set where the claim consumed part of a device).
impl From<PreparedDevice> for v1::Device {
    fn from(device: PreparedDevice) -> v1::Device {
        v1::Device {
            request_names: vec![device.request],
            pool_name: device.pool,
            device_name: device.device,
            cdi_device_ids: device.cdi_device_ids,
            share_id: device.share_id,
        }
    }
}

/// A v1beta1 device has no share ID: the v1 device without it.
impl From<PreparedDevice> for v1beta1::Device {
    fn from(device: PreparedDevice) -> v1beta1::Device {
        let v1::Device {
            request_names,
            pool_name,
            device_name,
            cdi_device_ids,
            share_id: _,
        } = device.into();
        v1beta1::Device {
            request_names,
            pool_name,
            device_name,
            cdi_device_ids,
        }
    }
}

/// The registration service.
#[derive(Debug)]
struct Registration {
    endpoint: PathBuf,
    status: Arc<DriverStatus>,
}

#[tonic::async_trait]
impl registration::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _request: Request<registration::InfoRequest>,
    ) -> Result<Response<registration::PluginInfo>, Status> {
        Ok(Response::new(registration::PluginInfo {
            r#type: api::PLUGIN_TYPE.to_string(),
            name: DRIVER.to_string(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: vec![
                api::V1_SERVICE.to_string(),
                api::V1BETA1_SERVICE.to_string(),
            ],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<registration::RegistrationStatus>,
    ) -> Result<Response<registration::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            self.status.registered();
            tracing::info!("the kubelet registered the driver");
        } else {
            self.status.registration_refused(&status.error);
            tracing::error!(
                "the kubelet refused to register the driver: {}",
                status.error
            );
        }
        Ok(Response::new(registration::RegistrationStatusResponse {}))
    }
}

/// Where the driver's sockets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    /// The DRA service's socket (`/var/lib/kubelet/plugins/gpuslice.dev/dra.sock`).
    pub plugin: PathBuf,
    /// The registration socket (`/var/lib/kubelet/plugins_registry/gpuslice.dev-reg.sock`).
    pub registration: PathBuf,
}

impl Sockets {
    /// The sockets in the kubelet's plugin directory and registration directory.
    pub fn in_dirs(plugins_dir: &Path, registry_dir: &Path) -> Sockets {
        Sockets {
            plugin: plugins_dir.join(DRIVER).join("dra.sock"),
            registration: registry_dir.join(format!("{DRIVER}-reg.sock")),
        }
    }
}

/// A socket that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("could not listen on {}: {source}", .path.display())]
pub struct ListenError {
    /// The socket.
    pub path: PathBuf,
    /// The operating system's error.
    pub source: io::Error,
}

/// The identity of a file (device and inode), or `None` if it is missing.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A fresh listener at `path` (its directory made, a file already there removed).
fn listen(path: &Path) -> Result<UnixListener, ListenError> {
    let failed = |source| ListenError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    UnixListener::bind(path).map_err(failed)
}

/// Serves the DRA and registration services until `stop` turns true, making the sockets
/// again whenever one is removed or replaced. Removes both when it stops.
pub async fn serve(sockets: Sockets, driver: Arc<Driver>, mut stop: watch::Receiver<bool>) {
    let mut last_error = String::new();
    while !*stop.borrow() {
        match serve_once(&sockets, &driver, &stop).await {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::error!("{text}; retrying every second");
                    last_error = text;
                }
                tokio::select! {
                    () = tokio::time::sleep(CHECK_INTERVAL) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
        }
    }
    let _ = std::fs::remove_file(&sockets.registration);
    let _ = std::fs::remove_file(&sockets.plugin);
}

/// One round: both sockets made, both servers started, then watched until a socket changes
/// (`Ok`) or `stop` turns true (`Ok`).
async fn serve_once(
    sockets: &Sockets,
    driver: &Arc<Driver>,
    stop: &watch::Receiver<bool>,
) -> Result<(), ListenError> {
    // The DRA socket first: the kubelet may call it as soon as it sees the registration.
    let plugin_listener = listen(&sockets.plugin)?;
    let registration_listener = listen(&sockets.registration)?;
    // New sockets: the kubelet registers the driver anew (before the servers answer).
    driver.status.sockets_made();
    let ours = (identity(&sockets.plugin), identity(&sockets.registration));
    let (round_tx, round) = watch::channel(false);
    let until_stopped = |mut round: watch::Receiver<bool>| async move {
        let _ = round.wait_for(|s| *s).await;
    };
    let plugin_server = tokio::spawn(
        Server::builder()
            .add_service(v1::dra_plugin_server::DraPluginServer::new(V1(Arc::clone(
                driver,
            ))))
            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(V1beta1(
                Arc::clone(driver),
            )))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(plugin_listener),
                until_stopped(round.clone()),
            ),
    );
    let registration_server = tokio::spawn(
        Server::builder()
            .add_service(registration::registration_server::RegistrationServer::new(
                Registration {
                    endpoint: sockets.plugin.clone(),
                    status: Arc::clone(&driver.status),
                },
            ))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(registration_listener),
                until_stopped(round.clone()),
            ),
    );
    tracing::info!(
        "serving the DRA API on {} and registration on {}",
        sockets.plugin.display(),
        sockets.registration.display()
    );
    let mut stop = stop.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now = (identity(&sockets.plugin), identity(&sockets.registration));
        if now != ours {
            tracing::info!(
                "a socket of the driver was removed or replaced (the kubelet restarted?); \
                 making both again"
            );
            break;
        }
    }
    let _ = round_tx.send(true);
    for server in [plugin_server, registration_server] {
        if let Ok(Err(e)) = server.await {
            tracing::warn!("a gRPC server ended with an error: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(share_id: Option<&str>) -> PreparedDevice {
        PreparedDevice {
            request: "gpu".into(),
            pool: "node-a".into(),
            device: "gpu-0".into(),
            share_id: share_id.map(String::from),
            cdi_device_ids: vec![
                "nvidia.com/gpu=GPU-0".into(),
                "gpuslice.dev/gpu=dra-1".into(),
            ],
        }
    }

    #[test]
    fn a_claim_of_either_version_is_the_same_claim() {
        let expected = ClaimRef {
            namespace: "ns".into(),
            name: "claim".into(),
            uid: "uid-1".into(),
        };
        let from_v1 = ClaimRef::from(v1::Claim {
            namespace: "ns".into(),
            name: "claim".into(),
            uid: "uid-1".into(),
        });
        let from_v1beta1 = ClaimRef::from(v1beta1::Claim {
            namespace: "ns".into(),
            name: "claim".into(),
            uid: "uid-1".into(),
        });
        assert_eq!(from_v1, expected);
        assert_eq!(from_v1beta1, expected);
    }

    #[test]
    fn a_prepared_claim_answers_its_devices_with_the_share_id_where_the_version_has_one() {
        let answer = || Ok(vec![device(Some("share-1")), device(None)]);
        let v1 = v1::NodePrepareResourceResponse::from(answer());
        assert_eq!(v1.error, "");
        assert_eq!(
            v1.devices,
            [
                v1::Device {
                    request_names: vec!["gpu".into()],
                    pool_name: "node-a".into(),
                    device_name: "gpu-0".into(),
                    cdi_device_ids: vec![
                        "nvidia.com/gpu=GPU-0".into(),
                        "gpuslice.dev/gpu=dra-1".into()
                    ],
                    share_id: Some("share-1".into()),
                },
                v1::Device {
                    share_id: None,
                    ..v1.devices[0].clone()
                },
            ]
        );
        let v1beta1 = v1beta1::NodePrepareResourceResponse::from(answer());
        assert_eq!(v1beta1.error, "");
        let expected = v1beta1::Device {
            request_names: vec!["gpu".into()],
            pool_name: "node-a".into(),
            device_name: "gpu-0".into(),
            cdi_device_ids: vec![
                "nvidia.com/gpu=GPU-0".into(),
                "gpuslice.dev/gpu=dra-1".into(),
            ],
        };
        assert_eq!(v1beta1.devices, [expected.clone(), expected]);
    }

    #[test]
    fn a_claim_that_failed_answers_its_error_and_no_devices_in_either_version() {
        let error = || Err("claim ns/claim: no room on GPU-0".to_string());
        let v1 = v1::NodePrepareResourceResponse::from(error());
        assert_eq!(
            (v1.devices.len(), v1.error.as_str()),
            (0, "claim ns/claim: no room on GPU-0")
        );
        let v1beta1 = v1beta1::NodePrepareResourceResponse::from(error());
        assert_eq!(
            (v1beta1.devices.len(), v1beta1.error.as_str()),
            (0, "claim ns/claim: no room on GPU-0")
        );
        for (answer, expected) in [(Ok(()), ""), (Err("in use".to_string()), "in use")] {
            let v1 = v1::NodeUnprepareResourceResponse::from(answer.clone());
            let v1beta1 = v1beta1::NodeUnprepareResourceResponse::from(answer);
            assert_eq!(v1.error, expected);
            assert_eq!(v1beta1.error, expected);
        }
    }
}
