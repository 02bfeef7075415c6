//! `gpuslice dra-driver` on a simulated node: the real binary over the simulated GPU, a fake
//! kubelet that speaks the real gRPC protocols over Unix sockets (plugin registration
//! through the `plugins_registry` directory, then `NodePrepareResources` and
//! `NodeUnprepareResources`, v1 and v1beta1), and an in-process stand-in of the API server
//! that stores and serves real `resource.k8s.io/v1` objects: the ResourceSlice the driver
//! writes, and ResourceClaims with their allocation as the scheduler writes them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_k8s::dra::api::{registration, v1, v1beta1};
use gpuslice_ledger::{GpuUuid, Priority};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::metrics::{get, parse};
use crate::plugin::{Daemon, FAKE_GPU1, runtime};
use crate::plugin_metrics::{metrics_address, number, one, samples};
use crate::util::*;

/// How long the driver gets to do anything the tests wait for.
const WAIT: Duration = Duration::from_secs(15);
/// The node the driver runs on.
const NODE: &str = "node-a";
/// The devices of the simulated GPUs 0 and 1, as the driver names them.
const DEV0: &str = "gpu-fa4ec0da-0000-4000-8000-000000000000";
const DEV1: &str = "gpu-fa4ec0da-0000-4000-8000-000000000001";

// ---------------------------------------------------------------------------------------
// The stand-in API server.

/// What the stand-in stores: objects by name, each with the resource version it got.
#[derive(Default)]
struct Store {
    slices: BTreeMap<String, ResourceSlice>,
    claims: BTreeMap<(String, String), ResourceClaim>,
    version: u64,
    /// Every request, as `METHOD path`.
    requests: Vec<String>,
    /// Why writes of ResourceSlices are forbidden, while they are.
    refuse_slices: Option<String>,
}

/// An API server for the driver: `resourceslices` (get, create, replace) and
/// `resourceclaims` (get), on 127.0.0.1, over plain HTTP.
pub struct ApiServer {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Decodes a written object as `T`, refusing what does not round-trip (a field the API type
/// does not have).
fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) -> Result<T, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back != value {
        return Err(format!("not a valid object of its type: {value}"));
    }
    Ok(typed)
}

async fn handle(
    store: Arc<Mutex<Store>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &e.to_string(),
            ));
        }
    };
    let mut store = store.lock().expect("store");
    store.requests.push(format!("{method} {path}"));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(why) = &store.refuse_slices
        && (method == Method::POST || method == Method::PUT)
        && parts.get(3) == Some(&"resourceslices")
    {
        return Ok(status(StatusCode::FORBIDDEN, "Forbidden", why));
    }
    let answer = match (method, parts.as_slice()) {
        (Method::GET, ["apis", "resource.k8s.io", "v1", "resourceslices", name]) => {
            match store.slices.get(*name) {
                Some(slice) => respond(StatusCode::OK, &serde_json::to_value(slice).expect("json")),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("resourceslices \"{name}\" not found"),
                ),
            }
        }
        (Method::POST, ["apis", "resource.k8s.io", "v1", "resourceslices"]) => {
            match decode::<ResourceSlice>(&body) {
                Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e),
                Ok(mut slice) => {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    if store.slices.contains_key(&name) {
                        status(
                            StatusCode::CONFLICT,
                            "AlreadyExists",
                            &format!("resourceslices \"{name}\" already exists"),
                        )
                    } else {
                        store.version += 1;
                        slice.metadata.resource_version = Some(store.version.to_string());
                        slice.metadata.uid = Some(format!("slice-uid-{}", store.version));
                        let value = serde_json::to_value(&slice).expect("json");
                        store.slices.insert(name, slice);
                        respond(StatusCode::CREATED, &value)
                    }
                }
            }
        }
        (Method::PUT, ["apis", "resource.k8s.io", "v1", "resourceslices", name]) => {
            match decode::<ResourceSlice>(&body) {
                Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e),
                Ok(mut slice) => {
                    let current = store
                        .slices
                        .get(*name)
                        .map(|s| s.metadata.resource_version.clone());
                    match current {
                        None => status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            &format!("resourceslices \"{name}\" not found"),
                        ),
                        Some(version) if version != slice.metadata.resource_version => status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version",
                        ),
                        Some(_) => {
                            store.version += 1;
                            slice.metadata.resource_version = Some(store.version.to_string());
                            let value = serde_json::to_value(&slice).expect("json");
                            store.slices.insert((*name).to_string(), slice);
                            respond(StatusCode::OK, &value)
                        }
                    }
                }
            }
        }
        (
            Method::GET,
            [
                "apis",
                "resource.k8s.io",
                "v1",
                "namespaces",
                ns,
                "resourceclaims",
                name,
            ],
        ) => match store.claims.get(&((*ns).to_string(), (*name).to_string())) {
            Some(claim) => respond(StatusCode::OK, &serde_json::to_value(claim).expect("json")),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("resourceclaims \"{name}\" not found"),
            ),
        },
        (method, _) => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no {method} {path} here"),
        ),
    };
    Ok(answer)
}

impl ApiServer {
    /// Starts serving on a free port of 127.0.0.1.
    pub async fn start() -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let store = Arc::new(Mutex::new(Store::default()));
        let shared = Arc::clone(&store);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |r| handle(Arc::clone(&store), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiServer { addr, store, task }
    }

    /// A kubeconfig file in `dir` that points at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Stores a claim, as the scheduler leaves it.
    pub fn put_claim(&self, claim: ResourceClaim) {
        let ns = claim.metadata.namespace.clone().expect("namespace");
        let name = claim.metadata.name.clone().expect("name");
        self.store
            .lock()
            .expect("store")
            .claims
            .insert((ns, name), claim);
    }

    /// The node's slice, once `wanted` holds for it.
    pub fn wait_for_slice(&self, wanted: impl Fn(&ResourceSlice) -> bool) -> ResourceSlice {
        let name = format!("{NODE}-gpuslice.dev");
        let deadline = Instant::now() + WAIT;
        loop {
            let slice = self.store.lock().expect("store").slices.get(&name).cloned();
            if let Some(slice) = slice.filter(|s| wanted(s)) {
                return slice;
            }
            assert!(
                Instant::now() < deadline,
                "the slice never became as wanted: {:?}",
                self.store.lock().expect("store").slices
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Forbids writes of ResourceSlices with `why` (as RBAC would), or allows them again.
    pub fn refuse_slice_writes(&self, why: Option<&str>) {
        self.store.lock().expect("store").refuse_slices = why.map(String::from);
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().expect("store").requests.clone()
    }
}

/// The devices a slice lists, by name.
fn device_names(slice: &ResourceSlice) -> Vec<String> {
    slice
        .spec
        .devices
        .iter()
        .flatten()
        .map(|d| d.name.clone())
        .collect()
}

/// A claim allocated on this node as the scheduler writes it: `results` are (request,
/// device, share ID, consumed memory and compute), `config` the claim's opaque parameters.
pub fn claim(
    name: &str,
    uid: &str,
    results: &[(&str, &str, &str, &str, &str)],
    config: Option<Value>,
) -> ResourceClaim {
    let mut allocation = json!({"devices": {
        "results": results.iter().map(|(request, device, share, memory, compute)| json!({
            "request": request, "driver": "gpuslice.dev", "pool": NODE, "device": device,
            "shareID": share, "consumedCapacity": {"memory": memory, "compute": compute},
        })).collect::<Vec<_>>(),
    }});
    if let Some(parameters) = config {
        allocation["devices"]["config"] = json!([{
            "source": "FromClaim",
            "opaque": {"driver": "gpuslice.dev", "parameters": parameters},
        }]);
    }
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"devices": {"requests": results.iter().map(|r| json!({
            "name": r.0,
            "exactly": {"deviceClassName": "gpuslice.dev", "capacity": {"requests": {"memory": r.3, "compute": r.4}}},
        })).collect::<Vec<_>>()}},
        "status": {"allocation": allocation},
    }))
    .expect("a valid ResourceClaim")
}

/// `claim` with `parameters` as a DeviceClass's configuration for all its requests, before
/// the claim's own, as the scheduler lists them.
pub fn with_class_config(mut claim: ResourceClaim, parameters: Value) -> ResourceClaim {
    let devices = claim
        .status
        .as_mut()
        .and_then(|s| s.allocation.as_mut())
        .and_then(|a| a.devices.as_mut())
        .expect("allocated devices");
    let class = serde_json::from_value(json!({
        "source": "FromClass",
        "opaque": {"driver": "gpuslice.dev", "parameters": parameters},
    }))
    .expect("a configuration");
    devices.config.get_or_insert_with(Vec::new).insert(0, class);
    claim
}

// ---------------------------------------------------------------------------------------
// The fake kubelet.

/// A gRPC channel over the Unix socket at `path`.
async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// The kubelet, as far as a DRA driver can tell: it finds the registration socket in its
/// `plugins_registry`, registers the driver, and calls the DRA service it names.
pub struct FakeKubelet {
    registry: PathBuf,
}

impl FakeKubelet {
    /// Waits for a registration socket, registers the plugin, and returns what it said about
    /// itself.
    pub async fn register(&self) -> registration::PluginInfo {
        let deadline = Instant::now() + WAIT;
        loop {
            let socket = std::fs::read_dir(&self.registry)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "sock"));
            if let Some(socket) = socket
                && tokio::net::UnixStream::connect(&socket).await.is_ok()
            {
                let mut client = registration::registration_client::RegistrationClient::new(
                    unix_channel(&socket).await,
                );
                let info = client
                    .get_info(registration::InfoRequest {})
                    .await
                    .expect("GetInfo")
                    .into_inner();
                client
                    .notify_registration_status(registration::RegistrationStatus {
                        plugin_registered: true,
                        error: String::new(),
                    })
                    .await
                    .expect("NotifyRegistrationStatus");
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "no plugin registered in {}",
                self.registry.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A v1 client of the registered plugin.
    pub async fn v1(&self) -> v1::dra_plugin_client::DraPluginClient<Channel> {
        let info = self.register().await;
        v1::dra_plugin_client::DraPluginClient::new(unix_channel(Path::new(&info.endpoint)).await)
    }
}

/// The claim as the kubelet names it.
fn v1_claim(name: &str, uid: &str) -> v1::Claim {
    v1::Claim {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

/// Prepares one claim; its answer. Like the kubelet, it asks again while the driver has not
/// looked at its GPUs yet (slow on a loaded machine), for up to 10 s.
pub async fn prepare(
    client: &mut v1::dra_plugin_client::DraPluginClient<Channel>,
    name: &str,
    uid: &str,
) -> v1::NodePrepareResourceResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut response = client
            .node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: vec![v1_claim(name, uid)],
            })
            .await
            .expect("NodePrepareResources")
            .into_inner();
        let answer = response
            .claims
            .remove(uid)
            .expect("an answer for the claim");
        if !answer.error.contains("are not known yet") || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unprepares one claim; its error ("" for none).
async fn unprepare(
    client: &mut v1::dra_plugin_client::DraPluginClient<Channel>,
    name: &str,
    uid: &str,
) -> String {
    let mut response = client
        .node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
            claims: vec![v1_claim(name, uid)],
        })
        .await
        .expect("NodeUnprepareResources")
        .into_inner();
    response
        .claims
        .remove(uid)
        .expect("an answer for the claim")
        .error
}

// ---------------------------------------------------------------------------------------
// The node.

/// A simulated node with two GPUs, a kubelet's plugin directories and a CDI directory.
pub struct DraNode {
    pub node: Node,
    pub plugins_dir: PathBuf,
    pub registry_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub devices: String,
}

impl DraNode {
    pub fn new() -> DraNode {
        let node = Node::new();
        let root = node.dir.path().to_path_buf();
        DraNode {
            plugins_dir: root.join("plugins"),
            registry_dir: root.join("plugins_registry"),
            cdi_dir: root.join("cdi"),
            devices: "8Gi,8Gi".into(),
            node,
        }
    }

    /// Starts `gpuslice dra-driver` talking to `api`.
    pub fn start(&self, api: &ApiServer, extra: &[&str]) -> Daemon {
        Daemon::spawn(self.command(api, &self.node.shim, extra))
    }

    /// `gpuslice dra-driver` talking to `api`, with `shim` as its shim.
    pub fn command(&self, api: &ApiServer, shim: &Path, extra: &[&str]) -> std::process::Command {
        std::fs::create_dir_all(&self.registry_dir).expect("registry dir");
        let mut command = self.node.gpuslice(&["dra-driver", "--node-name", NODE]);
        command
            .env("FAKECUDA_DEVICES", &self.devices)
            .env("KUBECONFIG", api.kubeconfig(self.node.dir.path()))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("NODE_NAME")
            .arg("--dir")
            .arg(self.node.dir.ledger_dir())
            .arg("--shim")
            .arg(shim)
            .arg("--cdi-dir")
            .arg(&self.cdi_dir)
            .arg("--plugins-dir")
            .arg(&self.plugins_dir)
            .arg("--registry-dir")
            .arg(&self.registry_dir)
            .args(["--health-interval-ms", "100"])
            .args(extra);
        command
    }

    pub fn kubelet(&self) -> FakeKubelet {
        FakeKubelet {
            registry: self.registry_dir.clone(),
        }
    }

    /// The simulated GPUs' state directory (where `lost-gpus` goes).
    pub fn gpu_state_dir(&self) -> PathBuf {
        self.node.dir.path().join("gpu")
    }

    /// The tenant of a claim.
    pub fn tenant_of(uid: &str) -> String {
        format!("dra-{uid}")
    }

    /// The CDI spec file of a claim's tenant.
    pub fn spec_of(&self, uid: &str) -> PathBuf {
        self.cdi_dir
            .join(format!("gpuslice.dev-gpu_dra-{uid}.json"))
    }
}

fn gpu(uuid: &str) -> GpuUuid {
    GpuUuid::parse(uuid).expect("uuid")
}

const UID_A: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
const UID_B: &str = "7a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";

fn config(extra: Value) -> Value {
    let mut v = json!({"apiVersion": "gpuslice.dev/v1", "kind": "TenantConfig"});
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn the_driver_publishes_each_gpu_with_its_capacities_and_registers_as_a_dra_plugin() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &[]);
        let slice = api.wait_for_slice(|s| device_names(s).len() == 2);
        assert_eq!(device_names(&slice), [DEV0, DEV1], "{}", driver.log());
        assert_eq!(slice.spec.driver, "gpuslice.dev");
        assert_eq!(slice.spec.node_name.as_deref(), Some(NODE));
        assert_eq!(slice.spec.pool.name, NODE);
        let device = &slice.spec.devices.as_ref().expect("devices")[0];
        assert_eq!(device.allow_multiple_allocations, Some(true));
        let capacity = device.capacity.as_ref().expect("capacity");
        assert_eq!(capacity["memory"].value.0, "8Gi");
        assert_eq!(capacity["compute"].value.0, "100");
        let attributes = device.attributes.as_ref().expect("attributes");
        assert_eq!(attributes["uuid"].string.as_deref(), Some(FAKE_GPU0));
        assert_eq!(attributes["index"].int, Some(0));
        assert!(attributes["productName"].string.is_some());
        assert_eq!(
            attributes["cudaComputeCapability"].version.as_deref(),
            Some("9.0.0")
        );
        assert_eq!(
            attributes["driverVersion"].version.as_deref(),
            Some("580.65.6")
        );

        let info = node.kubelet().register().await;
        assert_eq!(info.r#type, "DRAPlugin");
        assert_eq!(info.name, "gpuslice.dev");
        assert_eq!(
            info.supported_versions,
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        );
        assert_eq!(
            PathBuf::from(&info.endpoint),
            node.plugins_dir.join("gpuslice.dev/dra.sock")
        );
        driver.wait_for_log("the kubelet registered the driver");
        assert_eq!(driver.stop(libc::SIGTERM), Some(0));
        assert!(
            !node.registry_dir.join("gpuslice.dev-reg.sock").exists(),
            "sockets removed at exit"
        );
    });
}

#[test]
fn prepare_twice_gives_one_tenant_with_the_claims_quota_and_unprepare_twice_removes_it_once() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &[]);
        api.put_claim(with_class_config(
            claim(
                "small",
                UID_A,
                &[("gpu", DEV0, "share-1", "4Gi", "30")],
                Some(config(json!({"computeLimit": 50}))),
            ),
            config(json!({"priority": "high"})),
        ));
        let mut client = node.kubelet().v1().await;
        let first = prepare(&mut client, "small", UID_A).await;
        assert_eq!(first.error, "", "{}", driver.log());
        let tenant = DraNode::tenant_of(UID_A);
        assert_eq!(first.devices.len(), 1);
        let device = &first.devices[0];
        assert_eq!(device.request_names, ["gpu"]);
        assert_eq!(device.pool_name, NODE);
        assert_eq!(device.device_name, DEV0);
        assert_eq!(device.share_id.as_deref(), Some("share-1"));
        assert_eq!(
            device.cdi_device_ids,
            [
                format!("nvidia.com/gpu={FAKE_GPU0}"),
                format!("gpuslice.dev/gpu={tenant}")
            ]
        );
        let ledger = node.node.dir.ledger();
        let quota = ledger
            .read_quota(&crate::util::tenant(&tenant))
            .expect("quota")
            .expect("a quota")
            .quota();
        let limits = quota.limits_for(&gpu(FAKE_GPU0));
        assert_eq!(limits.memory_bytes, Some(4 * GIB));
        assert_eq!(limits.compute_share_permille, Some(300));
        assert_eq!(limits.compute_limit_permille, Some(500));
        assert_eq!(limits.priority, Some(Priority::High));
        assert_eq!(quota.limits_for(&gpu(FAKE_GPU1)).memory_bytes, Some(0));
        assert!(node.spec_of(UID_A).is_file(), "CDI spec written");
        let usage_inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(ledger.usage_path(&crate::util::tenant(&tenant)))
                .expect("usage file"),
        );

        let again = prepare(&mut client, "small", UID_A).await;
        assert_eq!(again, first, "prepare twice: the same answer");
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(ledger.usage_path(&crate::util::tenant(&tenant)))
                .expect("usage file"),
        );
        assert_eq!(inode, usage_inode, "the same tenant, not made afresh");

        assert_eq!(unprepare(&mut client, "small", UID_A).await, "");
        assert!(!node.node.dir.tenant_exists(&tenant), "tenant removed");
        assert!(!node.spec_of(UID_A).exists(), "CDI spec removed");
        assert_eq!(
            unprepare(&mut client, "small", UID_A).await,
            "",
            "unprepare twice"
        );
        assert_eq!(
            unprepare(&mut client, "never-prepared", UID_B).await,
            "",
            "unprepare of an unknown claim"
        );
        let missing = prepare(&mut client, "never-made", UID_B).await;
        assert!(
            missing.error.contains("does not exist in the API server"),
            "{missing:?}"
        );
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_B)));
    });
}

#[test]
fn a_claim_survives_a_driver_restart_between_prepare_and_unprepare() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &[]);
        api.put_claim(claim("c", UID_A, &[("gpu", DEV1, "s", "2Gi", "25")], None));
        let mut client = node.kubelet().v1().await;
        let first = prepare(&mut client, "c", UID_A).await;
        assert_eq!(first.error, "", "{}", driver.log());
        drop(driver); // SIGKILL: nothing kept in memory survives.

        let driver = node.start(&api, &[]);
        driver.wait_for_log("1 claim(s) prepared before this start");
        let mut client = node.kubelet().v1().await;
        // The claim is gone from the API server: the answer comes from the ledger alone.
        api.put_claim(claim(
            "c",
            "another-uid-0000-0000-0000-000000000000",
            &[],
            None,
        ));
        assert_eq!(prepare(&mut client, "c", UID_A).await, first);
        // A second claim still sees the first's share of GPU 1.
        api.put_claim(claim("d", UID_B, &[("gpu", DEV1, "t", "7Gi", "25")], None));
        let refused = prepare(&mut client, "d", UID_B).await;
        assert!(refused.error.contains("memory left"), "{refused:?}");
        assert_eq!(unprepare(&mut client, "c", UID_A).await, "");
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
    });
}

#[test]
fn a_kubelet_restart_registers_the_driver_again_and_prepared_claims_keep_their_tenants() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &[]);
        api.put_claim(claim("c", UID_A, &[("gpu", DEV0, "s", "1Gi", "10")], None));
        let mut client = node.kubelet().v1().await;
        let first = prepare(&mut client, "c", UID_A).await;
        assert_eq!(first.error, "");
        let tenant = crate::util::tenant(&DraNode::tenant_of(UID_A));
        // A process of the pod holds a slot in the tenant.
        let ledger = node.node.dir.ledger();
        let usage = ledger.open_usage(&tenant).expect("usage");
        let slot = usage.claim_slot().expect("slot");

        // The kubelet restarts: it clears its registration directory and looks again.
        drop(client);
        for entry in std::fs::read_dir(&node.registry_dir)
            .expect("registry")
            .flatten()
        {
            std::fs::remove_file(entry.path()).expect("remove socket");
        }
        let mut client = node.kubelet().v1().await;
        driver.wait_for_log("making both again");
        assert_eq!(
            prepare(&mut client, "c", UID_A).await,
            first,
            "prepared again, same answer"
        );
        assert_eq!(
            ledger.live_processes(&tenant).expect("live"),
            1,
            "the pod's process kept its tenant"
        );
        // Unprepare while the process lives: refused, the kubelet retries.
        let error = unprepare(&mut client, "c", UID_A).await;
        assert!(error.contains("1 process(es) of tenant"), "{error}");
        drop(slot);
        drop(usage);
        assert_eq!(unprepare(&mut client, "c", UID_A).await, "");
    });
}

#[test]
fn a_lost_gpu_leaves_the_slice_and_claims_on_it_are_refused() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &[]);
        let before = api.wait_for_slice(|s| device_names(s).len() == 2);
        std::fs::write(node.gpu_state_dir().join("lost-gpus"), "1\n").expect("lose GPU 1");
        let after = api.wait_for_slice(|s| device_names(s) == [DEV0]);
        assert!(
            after.spec.pool.generation > before.spec.pool.generation,
            "a new generation"
        );
        api.put_claim(claim("c", UID_A, &[("gpu", DEV1, "s", "1Gi", "10")], None));
        let mut client = node.kubelet().v1().await;
        let refused = prepare(&mut client, "c", UID_A).await;
        assert!(
            refused
                .error
                .contains(&format!("GPU {FAKE_GPU1} ({DEV1}) cannot be used")),
            "{refused:?}"
        );
        assert!(refused.devices.is_empty());
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
        // Back again: published again.
        std::fs::remove_file(node.gpu_state_dir().join("lost-gpus")).expect("find GPU 1");
        api.wait_for_slice(|s| device_names(s).len() == 2);
        assert_eq!(
            prepare(&mut client, "c", UID_A).await.error,
            "",
            "{}",
            driver.log()
        );
    });
}

#[test]
fn a_claim_past_what_is_left_on_its_gpu_is_refused_with_a_clear_error_and_nothing_created() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.put_claim(claim("a", UID_A, &[("gpu", DEV0, "s1", "6Gi", "60")], None));
        api.put_claim(claim("b", UID_B, &[("gpu", DEV0, "s2", "1Gi", "50")], None));
        let mut client = node.kubelet().v1().await;
        assert_eq!(prepare(&mut client, "a", UID_A).await.error, "");
        let refused = prepare(&mut client, "b", UID_B).await;
        assert!(
            refused
                .error
                .contains(&format!("GPU {FAKE_GPU0} has 400 permille of compute left")),
            "{refused:?}"
        );
        assert!(
            refused
                .error
                .contains("the claim consumes 500; nothing was created"),
            "{refused:?}"
        );
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_B)));
        assert!(!node.spec_of(UID_B).exists());
    });
}

#[test]
fn bad_opaque_config_is_refused_naming_the_field_and_nothing_is_created() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.put_claim(claim(
            "c",
            UID_A,
            &[("gpu", DEV0, "s", "1Gi", "10")],
            Some(config(json!({"priorty": "high"}))),
        ));
        let mut client = node.kubelet().v1().await;
        let refused = prepare(&mut client, "c", UID_A).await;
        assert!(
            refused
                .error
                .contains("opaque configuration for gpuslice.dev: unknown field \"priorty\""),
            "{refused:?}"
        );
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
        assert!(!node.spec_of(UID_A).exists());
    });
}

#[test]
fn a_claim_on_two_gpus_gets_a_quota_on_each_through_the_v1beta1_api() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &["--nvidia-cdi-device", "nvidia.com/gpu={index}"]);
        api.put_claim(claim(
            "two",
            UID_A,
            &[
                ("a", DEV0, "s1", "1Gi", "10"),
                ("b", DEV1, "s2", "3Gi", "40"),
            ],
            None,
        ));
        let info = node.kubelet().register().await;
        let mut client = v1beta1::dra_plugin_client::DraPluginClient::new(
            unix_channel(Path::new(&info.endpoint)).await,
        );
        let mut answer = client
            .node_prepare_resources(v1beta1::NodePrepareResourcesRequest {
                claims: vec![v1beta1::Claim {
                    namespace: "default".into(),
                    name: "two".into(),
                    uid: UID_A.into(),
                }],
            })
            .await
            .expect("NodePrepareResources")
            .into_inner();
        let claim = answer.claims.remove(UID_A).expect("answer");
        assert_eq!(claim.error, "");
        let ids: Vec<Vec<String>> = claim
            .devices
            .iter()
            .map(|d| d.cdi_device_ids.clone())
            .collect();
        let tenant = DraNode::tenant_of(UID_A);
        assert_eq!(
            ids,
            [
                vec![
                    "nvidia.com/gpu=0".to_string(),
                    format!("gpuslice.dev/gpu={tenant}")
                ],
                vec![
                    "nvidia.com/gpu=1".to_string(),
                    format!("gpuslice.dev/gpu={tenant}")
                ],
            ]
        );
        let quota = node
            .node
            .dir
            .ledger()
            .read_quota(&crate::util::tenant(&tenant))
            .expect("quota")
            .expect("a quota")
            .quota();
        assert_eq!(quota.limits_for(&gpu(FAKE_GPU0)).memory_bytes, Some(GIB));
        assert_eq!(
            quota.limits_for(&gpu(FAKE_GPU1)).memory_bytes,
            Some(3 * GIB)
        );
        assert_eq!(
            quota.limits_for(&gpu(FAKE_GPU1)).compute_share_permille,
            Some(400)
        );
        let mut gone = client
            .node_unprepare_resources(v1beta1::NodeUnprepareResourcesRequest {
                claims: vec![v1beta1::Claim {
                    namespace: "default".into(),
                    name: "two".into(),
                    uid: UID_A.into(),
                }],
            })
            .await
            .expect("NodeUnprepareResources")
            .into_inner();
        assert_eq!(gone.claims.remove(UID_A).expect("answer").error, "");
        assert!(!node.node.dir.tenant_exists(&tenant));
    });
}

#[test]
fn without_an_api_server_configuration_the_driver_says_where_it_looked() {
    let node = DraNode::new();
    let mut command = node.node.gpuslice(&["dra-driver", "--node-name", NODE]);
    command
        .env(
            "KUBECONFIG",
            node.node.dir.path().join("missing-kubeconfig"),
        )
        .env("HOME", node.node.dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--dir")
        .arg(node.node.dir.ledger_dir())
        .arg("--shim")
        .arg(&node.node.shim)
        .arg("--cdi-dir")
        .arg(&node.cdi_dir);
    let out = finish(command);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("no Kubernetes API server to talk to"),
        "{out:?}"
    );
}

#[test]
fn the_api_servers_requests_are_the_drivers_own_objects_only() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.wait_for_slice(|s| device_names(s).len() == 2);
        for request in api.requests() {
            assert!(
                request.contains("/apis/resource.k8s.io/v1/resourceslices"),
                "the driver asked for {request}"
            );
        }
    });
}

/// The CDI spec of a prepared claim in a real container runtime: podman runs a container
/// with the claim's CDI device on the simulated GPU; inside, the shim is preloaded, the
/// process is the claim's tenant, the memory it sees and may take is the claim's, and the
/// compute settings the shim reads are the claim's.
#[test]
fn podman_runs_a_container_with_a_prepared_claims_cdi_spec_within_the_claims_quota() {
    use crate::podman::{cannot_run_containers, no_podman, podman_run, rootfs, skip_test};
    let skip = |why: &str| {
        skip_test(
            "podman_runs_a_container_with_a_prepared_claims_cdi_spec_within_the_claims_quota",
            "The DRA driver's CDI spec is",
            why,
        );
    };
    let mut node = DraNode::new();
    node.devices = "1Gi".into();
    if let Some(why) = no_podman() {
        return skip(&why);
    }
    let root = rootfs(node.node.dir.path());
    if let Some(why) = cannot_run_containers(&root) {
        return skip(&why);
    }
    let tenant = DraNode::tenant_of(UID_A);
    let names = runtime().block_on(async {
        let api = ApiServer::start().await;
        // NVIDIA's CDI device does not exist here: the rootfs has the (simulated) driver.
        let driver = node.start(&api, &["--nvidia-cdi-device", ""]);
        api.put_claim(with_class_config(
            claim(
                "c",
                UID_A,
                &[("gpu", DEV0, "s", "512Mi", "30")],
                Some(config(json!({"computeLimit": "share"}))),
            ),
            config(json!({"priority": "high"})),
        ));
        let mut client = node.kubelet().v1().await;
        let answer = prepare(&mut client, "c", UID_A).await;
        assert_eq!(answer.error, "", "{}", driver.log());
        answer.devices[0].cdi_device_ids.clone()
    });
    assert_eq!(names, [format!("gpuslice.dev/gpu={tenant}")]);

    // Where podman reads CDI specs (Debian's podman 4.3 has no flag for another directory).
    let installed =
        Path::new("/var/run/cdi").join(format!("gpuslice-dra-test-{}.json", std::process::id()));
    if let Err(e) = std::fs::create_dir_all("/var/run/cdi")
        .and_then(|()| std::fs::copy(node.spec_of(UID_A), &installed).map(|_| ()))
    {
        return skip(&format!("cannot install the spec in /var/run/cdi: {e}"));
    }
    let out = finish(podman_run(
        &[
            "--device",
            &names[0],
            "-e",
            "FAKECUDA_DEVICES=1Gi",
            "-e",
            "FAKECUDA_STATE_DIR=/tmp/gpu",
            "-e",
            "LD_LIBRARY_PATH=/usr/lib/gpu",
        ],
        &root,
        &[
            "/bin/sh",
            "-c",
            "echo \"preload=$LD_PRELOAD tenant=$GPUSLICE_TENANT\"; \
             exec /cudaprobe dlsym info fill 16M",
        ],
    ));
    let _ = std::fs::remove_file(&installed);
    assert_eq!(out.code, Some(0), "{out:?}");
    let shim = node.node.shim.display().to_string();
    assert!(
        out.stdout
            .contains(&format!("preload={shim} tenant={tenant}")),
        "{out:?}"
    );
    assert_eq!(
        field(&out.stdout, "info", "total"),
        512 * MIB,
        "the claim's memory: {out:?}"
    );
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        512 * MIB - CONTEXT,
        "{out:?}"
    );
    assert_eq!(
        field(&out.stdout, "fill", "rc"),
        2,
        "refused past the quota: {out:?}"
    );
    // What it did and what it was held to, in the ledger it wrote through its usage file.
    let status = node.node.dir.status_json();
    let entry = status["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["name"] == tenant.as_str())
        .cloned()
        .expect("the tenant in status");
    let gpu = &entry["gpus"][0];
    assert_eq!(gpu["oom_refusals"], 1, "{status}");
    assert_eq!(gpu["memory_limit_bytes"], 512 * MIB, "{status}");
    assert_eq!(gpu["compute_share_percent"], 30.0, "{status}");
    assert_eq!(gpu["compute_limit_percent"], 30.0, "{status}");
    assert_eq!(gpu["priority"], "high", "{status}");
}

// ---------------------------------------------------------------------------------------
// Red team: what a careless operator or a hostile tenant can do to the driver.

/// A claim as [`claim`] makes it, with its results in `pool` instead of this node's.
fn claim_in_pool(name: &str, uid: &str, pool: &str) -> ResourceClaim {
    let mut claim = claim(name, uid, &[("gpu", DEV0, "s", "1Gi", "10")], None);
    for result in claim
        .status
        .as_mut()
        .and_then(|s| s.allocation.as_mut())
        .and_then(|a| a.devices.as_mut())
        .and_then(|d| d.results.as_mut())
        .expect("results")
    {
        result.pool = pool.to_string();
    }
    claim
}

/// A driver started with another node's name (a copied manifest, a typo) saw every claim's
/// devices in a pool not its own, prepared nothing, and answered success with no CDI
/// device: the pod started without its tenant, and where the runtime gives it the GPU some
/// other way (NVIDIA's runtime and `NVIDIA_VISIBLE_DEVICES` in the image), without limits.
#[test]
fn a_claim_whose_devices_are_in_another_nodes_pool_is_refused_not_prepared_empty() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.put_claim(claim_in_pool("c", UID_A, "node-b"));
        let mut client = node.kubelet().v1().await;
        let refused = prepare(&mut client, "c", UID_A).await;
        assert!(refused.devices.is_empty(), "{refused:?}");
        assert!(
            refused.error.contains("pool node-b")
                && refused.error.contains(&format!("this node's pool {NODE}"))
                && refused.error.contains("--node-name"),
            "{refused:?}"
        );
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
    });
}

/// `--shim` naming the shim's directory instead of the file (`/opt/gpuslice/lib`): the
/// driver warned that it was "not a file" and prepared claims whose CDI spec mounted the
/// directory and preloaded it; the dynamic loader ignores a directory in `LD_PRELOAD` (and
/// in `/etc/ld.so.preload`) and starts the program without the shim, so without limits.
#[test]
fn a_shim_path_that_is_a_directory_is_refused_at_start() {
    let node = DraNode::new();
    let directory = node.node.dir.path().join("lib");
    std::fs::create_dir_all(&directory).expect("directory");
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let out = finish(node.command(&api, &directory, &[]));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("the shim {} cannot be read", directory.display())),
            "{out:?}"
        );
    });
}

/// The file the CDI specs mount as the shim replaced after the driver started (an upgrade
/// that copied the wrong file, a failed init container): the driver checked it only at
/// start, and went on preparing claims whose containers preload something that is not the
/// shim, so run without limits.
#[test]
fn a_claim_is_not_prepared_while_the_shim_is_not_the_shim() {
    let node = DraNode::new();
    let shim = node
        .node
        .dir
        .path()
        .join("installed")
        .join("libgpuslice.so");
    std::fs::create_dir_all(shim.parent().expect("parent")).expect("directory");
    std::fs::copy(&node.node.shim, &shim).expect("install the shim");
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = Daemon::spawn(node.command(&api, &shim, &[]));
        let mut client = node.kubelet().v1().await;
        std::fs::write(&shim, "").expect("replace the shim with an empty file");
        api.put_claim(claim("c", UID_A, &[("gpu", DEV0, "s", "1Gi", "10")], None));
        let refused = prepare(&mut client, "c", UID_A).await;
        assert!(refused.devices.is_empty(), "{refused:?}");
        assert!(
            refused
                .error
                .contains(&format!("the shim {}", shim.display()))
                && refused.error.contains("not an ELF shared object"),
            "{refused:?}\n{}",
            driver.log()
        );
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
        assert!(!node.spec_of(UID_A).exists());
        // With the shim back, the claim is prepared.
        std::fs::copy(&node.node.shim, &shim).expect("put the shim back");
        assert_eq!(prepare(&mut client, "c", UID_A).await.error, "");
    });
}

/// A claim's containers can write their usage and lock files (mounted read-write): one that
/// grows them fills the ledger's filesystem (a tmpfs: the node's memory), and no tenant can
/// be made any more. The device plugin's sweep cut a grown usage file back; the DRA driver
/// never looked, and nobody looked at lock files.
#[test]
fn a_claims_usage_and_lock_files_grown_by_its_containers_are_cut_back() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &[]);
        api.put_claim(claim("c", UID_A, &[("gpu", DEV0, "s", "1Gi", "10")], None));
        let mut client = node.kubelet().v1().await;
        assert_eq!(prepare(&mut client, "c", UID_A).await.error, "");
        let ledger = node.node.dir.ledger();
        let tenant = crate::util::tenant(&DraNode::tenant_of(UID_A));
        let files = [ledger.usage_path(&tenant), ledger.lock_path(&tenant)];
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).expect("file").len())
            .collect();
        // What a container can do with the two files it has read-write.
        for file in &files {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .and_then(|f| f.set_len(64 * MIB))
                .expect("grow the file");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let now: Vec<u64> = files
                .iter()
                .map(|f| std::fs::metadata(f).expect("file").len())
                .collect();
            if now == sizes {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still {now:?} bytes, not {sizes:?}; log:\n{}",
                driver.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver.wait_for_log(&format!("had grown to {} bytes", 64 * MIB));
        // The tenant is whole again: a process of it can claim a slot.
        let usage = ledger.open_usage(&tenant).expect("usage file");
        drop(usage.claim_slot().expect("a slot"));
    });
}

/// `gpuslice tenant delete` kept the device plugin's tenants unless forced, but not the DRA
/// driver's: a prepared claim's tenant went with its quota and record, so its containers
/// started from then on without the claim's quota, and the driver forgot the claim's share
/// of the GPU and granted it again. `tenant list` called it made by nobody ("-").
#[test]
fn tenant_delete_keeps_a_prepared_claims_tenant_unless_forced() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.put_claim(claim("c", UID_A, &[("gpu", DEV0, "s", "1Gi", "10")], None));
        let mut client = node.kubelet().v1().await;
        assert_eq!(prepare(&mut client, "c", UID_A).await.error, "");
    });
    let tenant = DraNode::tenant_of(UID_A);
    let tenant_command = |args: &[&str]| {
        let mut command = node.node.gpuslice(&["tenant"]);
        command
            .args(args)
            .arg("--dir")
            .arg(node.node.dir.ledger_dir());
        command
    };
    let out = finish(tenant_command(&["list"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&tenant))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(row.ends_with("DRA driver"), "{out:?}");
    // The claim's share is on its GPU alone: shown there, not as "-".
    assert!(
        out.stdout
            .contains(&format!("1 GiB on {FAKE_GPU0}, share 10%, priority normal")),
        "{out:?}"
    );
    let out = finish(tenant_command(&["delete", &tenant]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("the DRA driver made it"), "{out:?}");
    assert!(node.node.dir.tenant_exists(&tenant));
    let out = finish(tenant_command(&["delete", &tenant, "--force"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!node.node.dir.tenant_exists(&tenant));
}

/// Any user who may create a pod writes its claim, and a claim's opaque configuration gave
/// its tenant priority high: it then held every neighbour on its GPU to little work in
/// flight whenever it was active. High comes from a DeviceClass (an administrator's) only.
#[test]
fn a_claim_cannot_give_itself_priority_high() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.put_claim(claim(
            "c",
            UID_A,
            &[("gpu", DEV0, "s", "1Gi", "10")],
            Some(config(json!({"priority": "high"}))),
        ));
        let mut client = node.kubelet().v1().await;
        let refused = prepare(&mut client, "c", UID_A).await;
        assert!(
            refused
                .error
                .contains("field priority: high is given only by a DeviceClass's configuration"),
            "{refused:?}"
        );
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
        // From the class, it is given.
        api.put_claim(with_class_config(
            claim("d", UID_B, &[("gpu", DEV0, "s", "1Gi", "10")], None),
            config(json!({"priority": "high"})),
        ));
        assert_eq!(prepare(&mut client, "d", UID_B).await.error, "");
        let quota = node
            .node
            .dir
            .ledger()
            .read_quota(&crate::util::tenant(&DraNode::tenant_of(UID_B)))
            .expect("quota")
            .expect("a quota")
            .quota();
        assert_eq!(
            quota.limits_for(&gpu(FAKE_GPU0)).priority,
            Some(Priority::High)
        );
    });
}

/// A claim with admin access (a monitoring pod in a namespace allowed it) is given a GPU
/// that others use, and the scheduler counts none of its capacity; the driver took it for
/// the whole GPU: where the GPU was free it recorded all of it as held and refused every
/// later claim the scheduler placed there, and elsewhere it refused the admin claim for want
/// of room. gpuslice has nothing to give such a claim: it is refused, and nothing is held.
#[test]
fn a_claim_with_admin_access_is_refused_and_holds_no_capacity() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        let mut admin = claim("admin", UID_A, &[], None);
        let results = serde_json::from_value(json!([{
            "request": "gpu", "driver": "gpuslice.dev", "pool": NODE, "device": DEV0,
            "adminAccess": true,
        }]))
        .expect("results");
        admin
            .status
            .as_mut()
            .and_then(|s| s.allocation.as_mut())
            .and_then(|a| a.devices.as_mut())
            .expect("devices")
            .results = Some(results);
        api.put_claim(admin);
        let mut client = node.kubelet().v1().await;
        let refused = prepare(&mut client, "admin", UID_A).await;
        assert!(refused.error.contains("admin access"), "{refused:?}");
        assert!(!node.node.dir.tenant_exists(&DraNode::tenant_of(UID_A)));
        // The GPU is still all there for the claims the scheduler counts.
        api.put_claim(claim("b", UID_B, &[("gpu", DEV0, "s", "8Gi", "100")], None));
        assert_eq!(prepare(&mut client, "b", UID_B).await.error, "");
    });
}

/// Every tenant reads the ledger's `tenants/` (mounted into its containers), and the record
/// of a prepared claim there names the claim and its namespace: any pod could list the
/// claims of every other namespace on its node. The record is the driver's alone now.
#[test]
fn another_user_cannot_read_a_prepared_claims_record() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let _driver = node.start(&api, &[]);
        api.put_claim(claim("c", UID_A, &[("gpu", DEV0, "s", "1Gi", "10")], None));
        let mut client = node.kubelet().v1().await;
        assert_eq!(prepare(&mut client, "c", UID_A).await.error, "");
    });
    let record = node
        .node
        .dir
        .ledger_dir()
        .join("tenants")
        .join(DraNode::tenant_of(UID_A))
        .join("dra-claim");
    let meta = std::fs::metadata(&record).expect("record");
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", record.display());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || meta.uid() != 0 {
        return;
    }
    // As `nobody`, with the directories open to it as a container's mount is.
    for dir in record
        .ancestors()
        .skip(1)
        .take_while(|p| *p != Path::new("/"))
    {
        let mode = std::fs::metadata(dir).expect("dir").permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o005))
            .expect("chmod");
    }
    let out = finish(
        std::process::Command::new("cat")
            .arg(&record)
            .uid(65534)
            .gid(65534),
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Probes and metrics.

/// `/readyz` once `wanted` holds for its status and body (asked every 50 ms for [`WAIT`]).
fn wait_for_readyz(address: &str, wanted: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(address, "/readyz");
        if wanted(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered as wanted; last {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/metrics`, parsed.
fn scrape(address: &str) -> (prometheus_parse::Scrape, String) {
    let (status, body) = get(address, "/metrics");
    assert_eq!(status, 200, "{body}");
    (parse(&body), body)
}

/// The value of the one sample of `metric` with `labels`.
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    number(one(scrape, metric, labels))
}

#[test]
fn readyz_is_503_naming_what_is_missing_until_registered_and_published_then_200() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        api.refuse_slice_writes(Some(
            "resourceslices.resource.k8s.io is forbidden: User cannot create resource",
        ));
        let driver = node.start(&api, &["--metrics-listen", "127.0.0.1:0"]);
        let address = metrics_address(&driver);
        assert_eq!(get(&address, "/healthz"), (200, "ok\n".to_string()));

        // Neither registered nor published: both named, the API server's words included.
        let (_, reason) = wait_for_readyz(&address, |status, body| {
            status == 503 && body.contains("ResourceSlice not published: ")
        });
        assert!(
            reason.contains("not registered with the kubelet yet"),
            "{reason}"
        );
        assert!(reason.contains("is forbidden"), "{reason}");
        assert_eq!(reason.lines().count(), 1, "{reason:?}");
        let (metrics, body) = scrape(&address);
        assert_eq!(value(&metrics, "gpuslice_ready", &[]), 0.0, "{body}");
        assert_eq!(value(&metrics, "gpuslice_dra_kubelet_registered", &[]), 0.0);
        assert_eq!(
            value(&metrics, "gpuslice_dra_resource_slice_published", &[]),
            0.0
        );
        assert!(
            samples(&metrics, "gpuslice_dra_memory_capacity_bytes", &[]).is_empty(),
            "nothing published: {body}"
        );

        // The API server takes the slice: only the registration is missing.
        api.refuse_slice_writes(None);
        api.wait_for_slice(|s| device_names(s).len() == 2);
        let (status, reason) = wait_for_readyz(&address, |status, body| {
            status == 503 && !body.contains("ResourceSlice")
        });
        assert_eq!(
            (status, reason.as_str()),
            (503, "not registered with the kubelet yet\n")
        );

        node.kubelet().register().await;
        let (_, body) = wait_for_readyz(&address, |status, _| status == 200);
        assert_eq!(body, "ready\n");
        let (metrics, body) = scrape(&address);
        assert_eq!(value(&metrics, "gpuslice_ready", &[]), 1.0, "{body}");
        assert_eq!(value(&metrics, "gpuslice_dra_kubelet_registered", &[]), 1.0);
        assert_eq!(
            value(&metrics, "gpuslice_dra_resource_slice_published", &[]),
            1.0
        );
        for gpu in [FAKE_GPU0, FAKE_GPU1] {
            let labels = [("UUID", gpu), ("Hostname", NODE)];
            assert_eq!(
                value(&metrics, "gpuslice_dra_memory_capacity_bytes", &labels),
                (8 * GIB) as f64,
                "{body}"
            );
            assert_eq!(
                value(&metrics, "gpuslice_dra_compute_capacity_ratio", &labels),
                1.0
            );
            assert_eq!(
                value(&metrics, "gpuslice_dra_prepared_claims", &labels),
                0.0
            );
            assert_eq!(value(&metrics, "gpuslice_gpu_healthy", &labels), 1.0);
        }

        // The kubelet restarts and removes the sockets: not ready until it registers the
        // driver again.
        for entry in std::fs::read_dir(&node.registry_dir)
            .expect("registry")
            .flatten()
        {
            std::fs::remove_file(entry.path()).expect("remove socket");
        }
        let (status, reason) = wait_for_readyz(&address, |status, _| status == 503);
        assert_eq!(
            (status, reason.as_str()),
            (503, "not registered with the kubelet yet\n")
        );
        node.kubelet().register().await;
        wait_for_readyz(&address, |status, _| status == 200);
    });
}

#[test]
fn metrics_list_a_prepared_claims_tenant_and_the_dra_series_and_drop_them_after_unprepare() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &["--metrics-listen", "127.0.0.1:0"]);
        let address = metrics_address(&driver);
        api.put_claim(claim(
            "small",
            UID_A,
            &[("gpu", DEV0, "share-1", "4Gi", "30")],
            None,
        ));
        api.put_claim(claim(
            "big",
            UID_B,
            &[("gpu", DEV0, "s", "6Gi", "10")],
            None,
        ));
        let mut client = node.kubelet().v1().await;
        assert_eq!(
            prepare(&mut client, "small", UID_A).await.error,
            "",
            "{}",
            driver.log()
        );
        let tenant = DraNode::tenant_of(UID_A);
        let gpu0 = [("UUID", FAKE_GPU0), ("Hostname", NODE)];
        let gpu1 = [("UUID", FAKE_GPU1), ("Hostname", NODE)];
        let (metrics, body) = scrape(&address);
        // The ledger's series, as every gpuslice exposition has them, in the claim's
        // namespace.
        let of_tenant = [
            ("tenant", tenant.as_str()),
            ("namespace", "default"),
            ("pod", ""),
            ("UUID", FAKE_GPU0),
        ];
        assert_eq!(
            value(&metrics, "gpuslice_memory_limit_bytes", &of_tenant),
            (4 * GIB) as f64,
            "{body}"
        );
        assert_eq!(
            value(&metrics, "gpuslice_compute_share_ratio", &of_tenant),
            0.3
        );
        assert_eq!(
            value(&metrics, "gpuslice_memory_used_bytes", &of_tenant),
            0.0
        );
        // The driver's own.
        assert_eq!(
            value(
                &metrics,
                "gpuslice_dra_claim_info",
                &[
                    ("tenant", tenant.as_str()),
                    ("namespace", "default"),
                    ("claim", "small"),
                    ("UUID", FAKE_GPU0),
                ]
            ),
            1.0
        );
        assert_eq!(value(&metrics, "gpuslice_dra_prepared_claims", &gpu0), 1.0);
        assert_eq!(value(&metrics, "gpuslice_dra_prepared_claims", &gpu1), 0.0);
        assert_eq!(
            value(&metrics, "gpuslice_dra_memory_allocated_bytes", &gpu0),
            (4 * GIB) as f64
        );
        assert_eq!(
            value(&metrics, "gpuslice_dra_compute_allocated_ratio", &gpu0),
            0.3
        );
        assert_eq!(
            value(&metrics, "gpuslice_dra_memory_capacity_bytes", &gpu0),
            (8 * GIB) as f64
        );
        // Whether processes outside gpuslice's limits are looked for: here, in the host's
        // PID namespace (the simulated GPU's NVML lists processes), or not.
        let host_pid_namespace = std::fs::metadata("/proc/self/ns/pid")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == 0xEFFF_FFFC)
            .unwrap_or(false);
        assert_eq!(
            value(&metrics, "gpuslice_unenforced_check_up", &[]),
            if host_pid_namespace { 1.0 } else { 0.0 },
            "{body}"
        );
        for reason in ["capacity_exceeded", "api_server", "invalid_config"] {
            assert_eq!(
                value(
                    &metrics,
                    "gpuslice_dra_prepare_errors_total",
                    &[("reason", reason)]
                ),
                0.0,
                "{body}"
            );
        }

        // Failures, counted by reason: no room left, a claim the API server does not have,
        // an unprepare while a process of the tenant lives.
        let refused = prepare(&mut client, "big", UID_B).await;
        assert!(refused.error.contains("memory left"), "{refused:?}");
        let missing = prepare(
            &mut client,
            "never-made",
            "8b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
        )
        .await;
        assert!(missing.error.contains("does not exist"), "{missing:?}");
        let ledger = node.node.dir.ledger();
        let usage = ledger
            .open_usage(&crate::util::tenant(&tenant))
            .expect("usage");
        let slot = usage.claim_slot().expect("slot");
        let busy = unprepare(&mut client, "small", UID_A).await;
        assert!(busy.contains("still use the GPU"), "{busy}");
        let (metrics, body) = scrape(&address);
        for (metric, reason, count) in [
            (
                "gpuslice_dra_prepare_errors_total",
                "capacity_exceeded",
                1.0,
            ),
            ("gpuslice_dra_prepare_errors_total", "api_server", 1.0),
            ("gpuslice_dra_prepare_errors_total", "invalid_claim", 0.0),
            ("gpuslice_dra_unprepare_errors_total", "in_use", 1.0),
            ("gpuslice_dra_unprepare_errors_total", "files", 0.0),
        ] {
            assert_eq!(
                value(&metrics, metric, &[("reason", reason)]),
                count,
                "{metric} {reason}: {body}"
            );
        }
        assert_eq!(
            value(
                &metrics,
                "gpuslice_processes",
                &[("tenant", tenant.as_str())]
            ),
            1.0,
            "{body}"
        );

        drop(slot);
        drop(usage);
        assert_eq!(unprepare(&mut client, "small", UID_A).await, "");
        let (metrics, body) = scrape(&address);
        assert!(
            metrics
                .samples
                .iter()
                .all(|s| s.labels.get("tenant") != Some(tenant.as_str())),
            "the unprepared claim's tenant is gone from every series: {body}"
        );
        assert_eq!(value(&metrics, "gpuslice_dra_prepared_claims", &gpu0), 0.0);
        assert_eq!(
            value(&metrics, "gpuslice_dra_memory_allocated_bytes", &gpu0),
            0.0
        );
        assert!(samples(&metrics, "gpuslice_dra_claim_info", &[]).is_empty());
    });
}

/// The red team's case: a prepared claim whose record (its tenant's `dra-claim` file) was
/// damaged vanished from the gpuslice_dra_* figures while its quota still held its share
/// of the GPU (and the capacity check counted it by that quota). The figures count it the
/// same way, and gpuslice_dra_unreadable_claim_records says there is such a claim.
#[test]
fn metrics_count_a_claim_whose_record_cannot_be_read_by_its_quota() {
    let node = DraNode::new();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        let driver = node.start(&api, &["--metrics-listen", "127.0.0.1:0"]);
        let address = metrics_address(&driver);
        api.put_claim(claim(
            "small",
            UID_A,
            &[("gpu", DEV0, "share-1", "4Gi", "30")],
            None,
        ));
        let mut client = node.kubelet().v1().await;
        assert_eq!(
            prepare(&mut client, "small", UID_A).await.error,
            "",
            "{}",
            driver.log()
        );
        let tenant = DraNode::tenant_of(UID_A);
        let gpu0 = [("UUID", FAKE_GPU0), ("Hostname", NODE)];
        let (metrics, body) = scrape(&address);
        for counted_by in ["quota", "nothing"] {
            assert_eq!(
                value(
                    &metrics,
                    "gpuslice_dra_unreadable_claim_records",
                    &[("counted_by", counted_by)]
                ),
                0.0,
                "{body}"
            );
        }

        let ledger = node.node.dir.ledger();
        let dir = ledger.tenant_dir(&crate::util::tenant(&tenant));
        std::fs::write(dir.join("dra-claim"), "{\"claim\": ").expect("damage the record");
        let (metrics, body) = scrape(&address);
        assert_eq!(
            value(&metrics, "gpuslice_dra_prepared_claims", &gpu0),
            1.0,
            "{body}"
        );
        assert_eq!(
            value(&metrics, "gpuslice_dra_memory_allocated_bytes", &gpu0),
            (4 * GIB) as f64,
            "{body}"
        );
        assert_eq!(
            value(&metrics, "gpuslice_dra_compute_allocated_ratio", &gpu0),
            0.3,
            "{body}"
        );
        assert_eq!(
            value(
                &metrics,
                "gpuslice_dra_claim_info",
                &[
                    ("tenant", tenant.as_str()),
                    ("namespace", ""),
                    ("claim", ""),
                    ("UUID", FAKE_GPU0),
                ]
            ),
            1.0,
            "{body}"
        );
        assert_eq!(
            value(
                &metrics,
                "gpuslice_dra_unreadable_claim_records",
                &[("counted_by", "quota")]
            ),
            1.0,
            "{body}"
        );
        // The capacity check agrees: what is left beside it is 4 GiB, not 8.
        api.put_claim(claim(
            "big",
            UID_B,
            &[("gpu", DEV0, "s", "6Gi", "10")],
            None,
        ));
        let refused = prepare(&mut client, "big", UID_B).await;
        assert!(refused.error.contains("memory left"), "{refused:?}");

        // Its quota damaged too: counted nowhere, and said so.
        std::fs::write(ledger.quota_path(&crate::util::tenant(&tenant)), b"damaged")
            .expect("damage the quota");
        let (metrics, body) = scrape(&address);
        assert_eq!(
            value(
                &metrics,
                "gpuslice_dra_unreadable_claim_records",
                &[("counted_by", "nothing")]
            ),
            1.0,
            "{body}"
        );
        assert_eq!(
            value(
                &metrics,
                "gpuslice_dra_unreadable_claim_records",
                &[("counted_by", "quota")]
            ),
            0.0,
            "{body}"
        );
    });
}

#[test]
fn a_bad_metrics_listen_address_is_a_usage_error_naming_the_flag() {
    let node = DraNode::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address").to_string();
    runtime().block_on(async {
        let api = ApiServer::start().await;
        for address in ["not-an-address", taken.as_str()] {
            let out = finish(node.command(&api, &node.node.shim, &["--metrics-listen", address]));
            assert_eq!(out.code, Some(2), "{address}: {out:?}");
            assert!(
                out.stderr
                    .contains(&format!("--metrics-listen {address:?}")),
                "{address}: {out:?}"
            );
            assert!(
                !node.registry_dir.join("gpuslice.dev-reg.sock").exists(),
                "it stopped before registering"
            );
        }
        assert!(api.requests().is_empty(), "{:?}", api.requests());
    });
}
