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
//! the answer (the kubelet retries that claim), never an error of the whole call.

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

    /// Prepares each claim; per claim UID, its devices or why not.
    async fn prepare_all(
        &self,
        claims: Vec<ClaimRef>,
    ) -> HashMap<String, Result<Vec<PreparedDevice>, String>> {
        let mut out = HashMap::new();
        for claim in claims {
            let uid = claim.uid.clone();
            let answer = self.prepare(claim.clone()).await;
            if let Err(e) = &answer {
                tracing::warn!("could not prepare claim {claim}: {e}");
            }
            out.insert(uid, answer);
        }
        out
    }

    /// Unprepares each claim; per claim UID, an error or nothing.
    async fn unprepare_all(&self, claims: Vec<ClaimRef>) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for claim in claims {
            let uid = claim.uid.clone();
            let error = match self.unprepare(claim.clone()).await {
                Ok(()) => String::new(),
                Err(e) => {
                    tracing::warn!("could not unprepare claim {claim}: {e}");
                    e
                }
            };
            out.insert(uid, error);
        }
        out
    }
}

/// A claim as the kubelet sends it.
fn claim_ref(namespace: String, name: String, uid: String) -> ClaimRef {
    ClaimRef {
        namespace,
        name,
        uid,
    }
}

/// The v1 service.
#[derive(Debug)]
struct V1(Arc<Driver>);

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for V1 {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let claims = request
            .into_inner()
            .claims
            .into_iter()
            .map(|c| claim_ref(c.namespace, c.name, c.uid))
            .collect();
        let claims = self
            .0
            .prepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, answer)| {
                let response = match answer {
                    Ok(devices) => v1::NodePrepareResourceResponse {
                        devices: devices
                            .into_iter()
                            .map(|d| v1::Device {
                                request_names: vec![d.request],
                                pool_name: d.pool,
                                device_name: d.device,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: d.share_id,
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    },
                };
                (uid, response)
            })
            .collect();
        Ok(Response::new(v1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request
            .into_inner()
            .claims
            .into_iter()
            .map(|c| claim_ref(c.namespace, c.name, c.uid))
            .collect();
        let claims = self
            .0
            .unprepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, error)| (uid, v1::NodeUnprepareResourceResponse { error }))
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

/// The v1beta1 service: the same, without share IDs.
#[derive(Debug)]
struct V1beta1(Arc<Driver>);

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for V1beta1 {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let claims = request
            .into_inner()
            .claims
            .into_iter()
            .map(|c| claim_ref(c.namespace, c.name, c.uid))
            .collect();
        let claims = self
            .0
            .prepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, answer)| {
                let response = match answer {
                    Ok(devices) => v1beta1::NodePrepareResourceResponse {
                        devices: devices
                            .into_iter()
                            .map(|d| v1beta1::Device {
                                request_names: vec![d.request],
                                pool_name: d.pool,
                                device_name: d.device,
                                cdi_device_ids: d.cdi_device_ids,
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1beta1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    },
                };
                (uid, response)
            })
            .collect();
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse {
            claims,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request
            .into_inner()
            .claims
            .into_iter()
            .map(|c| claim_ref(c.namespace, c.name, c.uid))
            .collect();
        let claims = self
            .0
            .unprepare_all(claims)
            .await
            .into_iter()
            .map(|(uid, error)| (uid, v1beta1::NodeUnprepareResourceResponse { error }))
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse {
            claims,
        }))
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
