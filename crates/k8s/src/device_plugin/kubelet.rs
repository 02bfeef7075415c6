//! The plugin's side of the kubelet: serving one resource on a socket in the kubelet's
//! device plugin directory, registering it on `kubelet.sock`, and doing both again when the
//! kubelet restarts.
//!
//! A restarting kubelet removes every socket in its directory and creates `kubelet.sock`
//! anew. Every second the plugin checks that its own socket is still the one it created and
//! that `kubelet.sock` is the one it registered with; if either changed, it stops its
//! server (which ends the `ListAndWatch` stream) and starts over: a new socket, a new
//! registration. Until the kubelet answers, registration is retried every second.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use super::allocate::Allocator;
use super::api::{
    self, device_plugin_server::DevicePluginServer, registration_client::RegistrationClient,
};
use super::config::Resource;
use super::health::Inventory;
use super::server::SlicePlugin;

/// The API version this plugin speaks.
pub const API_VERSION: &str = "v1beta1";
/// The kubelet's registration socket, in its device plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// How often the sockets are checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a registration may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a round of serving and registering failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The plugin's socket could not be created.
    #[error("could not listen on {}: {source}", .path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The kubelet could not be reached.
    #[error("could not reach the kubelet at {}: {message}", .path.display())]
    Connect {
        /// `kubelet.sock`.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The kubelet refused the registration.
    #[error("the kubelet refused to register {resource}: {message}")]
    Refused {
        /// The resource.
        resource: String,
        /// What it said.
        message: String,
    },
}

/// A gRPC channel over the Unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, KubeletError> {
    let failed = |message: String| KubeletError::Connect {
        path: path.to_path_buf(),
        message,
    };
    let target = path.to_path_buf();
    // The URI is required by the API but unused: the connector below ignores it.
    Endpoint::try_from("http://localhost")
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(REGISTER_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .map_err(|e| failed(format!("{e} ({})", source_text(&e))))
}

/// The innermost cause of an error, which is what says what went wrong.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Registers `resource`, served on `endpoint` (a file name in the kubelet's directory).
async fn register(kubelet: &Path, resource: &Resource) -> Result<(), KubeletError> {
    let channel = connect(kubelet).await?;
    let request = api::RegisterRequest {
        version: API_VERSION.to_string(),
        endpoint: resource.socket_name(),
        resource_name: resource.name.clone(),
        options: Some(SlicePlugin::options()),
    };
    let mut client = RegistrationClient::new(channel);
    match tokio::time::timeout(REGISTER_TIMEOUT, client.register(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(KubeletError::Refused {
            resource: resource.name.clone(),
            message: status.message().to_string(),
        }),
        Err(_) => Err(KubeletError::Connect {
            path: kubelet.to_path_buf(),
            message: "no answer to the registration".into(),
        }),
    }
}

/// The identity of a file (device and inode), or `None` if it is missing.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Serves and registers `resource` until `stop` turns true, starting over whenever the
/// kubelet restarts. Removes its socket when it stops.
pub async fn serve_resource(
    kubelet_dir: PathBuf,
    resource: Resource,
    allocator: Arc<Allocator>,
    inventory: watch::Receiver<Inventory>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = kubelet_dir.join(resource.socket_name());
    let kubelet = kubelet_dir.join(KUBELET_SOCKET);
    let mut last_error = String::new();
    while !*stop.borrow() {
        let round = serve_once(&socket, &kubelet, &resource, &allocator, &inventory, &stop).await;
        if let Err(e) = round {
            let text = e.to_string();
            if text != last_error {
                tracing::warn!("{}: {text}; retrying every second", resource.name);
                last_error = text;
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        } else {
            last_error.clear();
        }
    }
    let _ = std::fs::remove_file(&socket);
}

/// One round: a fresh socket and server, a registration, then watching until the kubelet
/// restarts (`Ok`) or `stop` turns true (`Ok`). An error ends the round early.
async fn serve_once(
    socket: &Path,
    kubelet: &Path,
    resource: &Resource,
    allocator: &Arc<Allocator>,
    inventory: &watch::Receiver<Inventory>,
    stop: &watch::Receiver<bool>,
) -> Result<(), KubeletError> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KubeletError::Listen {
                path: socket.to_path_buf(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(socket).map_err(|source| KubeletError::Listen {
        path: socket.to_path_buf(),
        source,
    })?;
    let ours = identity(socket);
    let (round_stop_tx, round_stop) = watch::channel(false);
    let service = SlicePlugin::new(
        resource.clone(),
        Arc::clone(allocator),
        inventory.clone(),
        round_stop.clone(),
    );
    let mut server_stop = round_stop.clone();
    let server = tokio::spawn(
        Server::builder()
            .add_service(DevicePluginServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                let _ = server_stop.wait_for(|s| *s).await;
            }),
    );
    let result = watch_round(socket, ours, kubelet, resource, stop).await;
    let _ = round_stop_tx.send(true);
    if let Ok(Err(e)) = server.await {
        tracing::warn!("{}: the server ended with an error: {e}", resource.name);
    }
    result
}

/// Registers, then waits until the kubelet restarts or `stop` turns true.
async fn watch_round(
    socket: &Path,
    ours: Option<(u64, u64)>,
    kubelet: &Path,
    resource: &Resource,
    stop: &watch::Receiver<bool>,
) -> Result<(), KubeletError> {
    let registered_with = identity(kubelet);
    register(kubelet, resource).await?;
    tracing::info!(
        "registered {} with the kubelet, serving {}",
        resource.name,
        socket.display()
    );
    let mut stop = stop.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        if identity(socket) != ours {
            tracing::info!(
                "{} was removed: the kubelet restarted; registering again",
                socket.display()
            );
            return Ok(());
        }
        let now = identity(kubelet);
        if now.is_some() && now != registered_with {
            tracing::info!(
                "{} was re-created: the kubelet restarted; registering again",
                kubelet.display()
            );
            return Ok(());
        }
    }
}
