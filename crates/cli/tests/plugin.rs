//! `gpuslice device-plugin` against a fake kubelet that speaks the real v1beta1 gRPC protocol
//! over Unix sockets: registration, `ListAndWatch` (following GPU health on the simulated
//! GPU), `GetPreferredAllocation`, `Allocate` (the tenant in the ledger, the CDI spec on
//! disk), kubelet restarts, plugin restarts and bad input.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_ledger::{GpuUuid, Priority};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use crate::util::*;

// The kubelet's side of the APIs, as the plugin's crate generates them.
use gpuslice_k8s::device_plugin::api;
use gpuslice_k8s::device_plugin::podresources::api as podresources;

use api::device_plugin_client::DevicePluginClient;
use api::registration_server::{Registration, RegistrationServer};

/// The UUID of the simulated GPU 1.
pub const FAKE_GPU1: &str = "GPU-fa4ec0da-0000-4000-8000-000000000001";
/// How long the plugin gets to do anything the tests wait for.
pub const WAIT: Duration = Duration::from_secs(15);

/// A simulated node with two 8 GiB GPUs, a kubelet directory and a CDI directory.
pub struct PluginNode {
    pub node: Node,
    pub kubelet_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub devices: String,
}

impl PluginNode {
    pub fn new() -> PluginNode {
        let node = Node::new();
        let kubelet_dir = node.dir.path().join("device-plugins");
        let cdi_dir = node.dir.path().join("cdi");
        std::fs::create_dir_all(&kubelet_dir).expect("kubelet dir");
        PluginNode {
            node,
            kubelet_dir,
            cdi_dir,
            devices: "8Gi,8Gi".into(),
        }
    }

    /// Where the fake kubelet serves its pod resources API.
    pub fn pod_resources_socket(&self) -> PathBuf {
        self.node.dir.path().join("pod-resources.sock")
    }

    /// The simulated GPU's state directory (where `lost-gpus` goes).
    pub fn gpu_state_dir(&self) -> PathBuf {
        self.node.dir.path().join("gpu")
    }

    /// `gpuslice device-plugin` on this node, with `extra` flags.
    pub fn plugin_command(&self, extra: &[&str]) -> Command {
        self.plugin_command_with_shim(&self.node.shim, extra)
    }

    /// [`PluginNode::plugin_command`] with `shim` as `--shim`.
    pub fn plugin_command_with_shim(&self, shim: &Path, extra: &[&str]) -> Command {
        let mut command = self.node.gpuslice(&["device-plugin"]);
        command
            .env("FAKECUDA_DEVICES", &self.devices)
            .arg("--kubelet-dir")
            .arg(&self.kubelet_dir)
            .arg("--cdi-dir")
            .arg(&self.cdi_dir)
            .arg("--dir")
            .arg(self.node.dir.ledger_dir())
            .arg("--shim")
            .arg(shim)
            .args(["--health-interval-ms", "100"])
            .arg("--pod-resources-socket")
            .arg(self.pod_resources_socket())
            .args(extra);
        command
    }

    /// Starts the plugin.
    pub fn start(&self, extra: &[&str]) -> Daemon {
        Daemon::spawn(self.plugin_command(extra))
    }

    /// The plugin's socket for `gpuslice.dev/gpu`.
    pub fn socket(&self) -> PathBuf {
        self.kubelet_dir.join("gpuslice-gpu.sock")
    }
}

/// A daemon under test: its stderr (the log) collected line by line; killed with its
/// process group when dropped.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn(mut command: Command) -> Daemon {
        let mut child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("log").push(line);
            }
        });
        Daemon { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Waits until a log line contains `text`.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the plugin never logged {text:?}; log:\n{}", self.log());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal`, then waits for the exit code.
    pub fn stop(mut self, signal: i32) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) takes plain integers; the child is ours and not yet reaped.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the plugin did not stop; log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: as in `stop`; the group is the child's own.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// The kubelet's registration service: passes each request on to the test.
struct FakeRegistration(mpsc::UnboundedSender<api::RegisterRequest>);

#[tonic::async_trait]
impl Registration for FakeRegistration {
    async fn register(
        &self,
        request: tonic::Request<api::RegisterRequest>,
    ) -> Result<tonic::Response<api::Empty>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(api::Empty {}))
    }
}

/// A container as the fake kubelet's pod resources API lists it, with its devices.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub devices: Vec<String>,
}

impl FakeContainer {
    pub fn new(namespace: &str, pod: &str, container: &str, devices: &[String]) -> FakeContainer {
        FakeContainer {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
            devices: devices.to_vec(),
        }
    }
}

/// The kubelet's pod resources service: the containers the test says have devices, each
/// pod with its containers.
struct FakePodResources(Arc<Mutex<Vec<FakeContainer>>>);

#[tonic::async_trait]
impl podresources::pod_resources_lister_server::PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _request: tonic::Request<podresources::ListPodResourcesRequest>,
    ) -> Result<tonic::Response<podresources::ListPodResourcesResponse>, tonic::Status> {
        let mut pods: Vec<podresources::PodResources> = Vec::new();
        for c in self.0.lock().expect("assigned").iter() {
            let container = podresources::ContainerResources {
                name: c.container.clone(),
                devices: vec![podresources::ContainerDevices {
                    resource_name: "gpuslice.dev/gpu".into(),
                    device_ids: c.devices.clone(),
                }],
            };
            match pods
                .iter_mut()
                .find(|p| p.name == c.pod && p.namespace == c.namespace)
            {
                Some(pod) => pod.containers.push(container),
                None => pods.push(podresources::PodResources {
                    name: c.pod.clone(),
                    namespace: c.namespace.clone(),
                    containers: vec![container],
                }),
            }
        }
        Ok(tonic::Response::new(
            podresources::ListPodResourcesResponse {
                pod_resources: pods,
            },
        ))
    }
}

/// Serves the pod resources API at `socket`, listing the containers in `assigned`.
pub fn serve_pod_resources(socket: &Path, assigned: Arc<Mutex<Vec<FakeContainer>>>) {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).expect("bind pod resources");
    let service = podresources::pod_resources_lister_server::PodResourcesListerServer::new(
        FakePodResources(assigned),
    );
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

/// A kubelet, as far as device plugins can tell: `kubelet.sock` serving `Registration`, and
/// a client of the plugins' sockets.
pub struct FakeKubelet {
    dir: PathBuf,
    registrations: mpsc::UnboundedReceiver<api::RegisterRequest>,
    sender: mpsc::UnboundedSender<api::RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeKubelet {
    pub async fn start(dir: &Path) -> FakeKubelet {
        let (sender, registrations) = mpsc::unbounded_channel();
        let mut kubelet = FakeKubelet {
            dir: dir.to_path_buf(),
            registrations,
            sender,
            stop: None,
        };
        kubelet.serve();
        kubelet
    }

    fn serve(&mut self) {
        let socket = self.dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind kubelet.sock");
        let (stop, stopped) = oneshot::channel();
        let service = RegistrationServer::new(FakeRegistration(self.sender.clone()));
        tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.stop = Some(stop);
    }

    /// Restarts as the kubelet does: every socket in its directory is removed, and
    /// `kubelet.sock` is created anew.
    pub fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for entry in std::fs::read_dir(&self.dir).expect("kubelet dir").flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        self.serve();
    }

    /// The next registration.
    pub async fn registration(&mut self) -> api::RegisterRequest {
        tokio::time::timeout(WAIT, self.registrations.recv())
            .await
            .expect("no registration in time")
            .expect("registration channel")
    }

    /// A client of the plugin that registered `endpoint`.
    pub async fn plugin(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        let path = self.dir.join(endpoint);
        let channel = Endpoint::try_from("http://localhost")
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
            .expect("connect to the plugin");
        DevicePluginClient::new(channel)
    }
}

/// A runtime for one test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The plugin's `ListAndWatch` stream.
pub async fn watch(
    client: &mut DevicePluginClient<Channel>,
) -> tonic::Streaming<api::ListAndWatchResponse> {
    client
        .list_and_watch(api::Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner()
}

/// The next device list of a `ListAndWatch` stream, as ID -> health.
pub async fn next_list(
    stream: &mut tonic::Streaming<api::ListAndWatchResponse>,
) -> HashMap<String, String> {
    let item = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no device list in time")
        .expect("the stream ended")
        .expect("a stream error");
    item.devices.into_iter().map(|d| (d.id, d.health)).collect()
}

/// The first device list of a `ListAndWatch` stream once the plugin has discovered its GPUs:
/// until then it sends an empty list (slow on a loaded machine), as the kubelet expects.
pub async fn first_list(
    stream: &mut tonic::Streaming<api::ListAndWatchResponse>,
) -> HashMap<String, String> {
    loop {
        let devices = next_list(stream).await;
        if !devices.is_empty() {
            return devices;
        }
    }
}

/// Slice `i` of a simulated GPU.
pub fn slice(gpu: &str, i: u32) -> String {
    format!("{gpu}-slice-{i}")
}

/// Allocates `ids` to one container. Like the kubelet, it retries while the plugin answers `Unavailable`
/// (registered, but its GPUs not discovered yet: slow on a loaded machine), for up to 10 s.
pub async fn allocate(
    client: &mut DevicePluginClient<Channel>,
    ids: &[String],
) -> Result<api::ContainerAllocateResponse, tonic::Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = client
            .allocate(api::AllocateRequest {
                container_requests: vec![api::ContainerAllocateRequest {
                    devices_ids: ids.to_vec(),
                }],
            })
            .await;
        match answer {
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other?,
        }
    };
    Ok(answer
        .into_inner()
        .container_responses
        .into_iter()
        .next()
        .expect("one container response"))
}

/// The CDI device names of an answer.
fn cdi_names(answer: &api::ContainerAllocateResponse) -> Vec<String> {
    answer.cdi_devices.iter().map(|d| d.name.clone()).collect()
}

#[test]
fn plugin_registers_and_allocates_a_tenant_with_its_cdi_spec() {
    let node = PluginNode::new();
    let _plugin = node.start(&[]);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        assert_eq!(registration.version, "v1beta1");
        assert_eq!(registration.resource_name, "gpuslice.dev/gpu");
        assert_eq!(registration.endpoint, "gpuslice-gpu.sock");
        let options = registration.options.expect("options");
        assert!(options.get_preferred_allocation_available);
        assert!(!options.pre_start_required);

        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        let devices = first_list(&mut stream).await;
        assert_eq!(devices.len(), 8, "2 GPUs x 4 slices: {devices:?}");
        assert!(devices.values().all(|h| h == "Healthy"), "{devices:?}");
        assert!(devices.contains_key(&slice(FAKE_GPU1, 3)));

        // GPU 0 has slices 0 and 1 taken: 2 slices go to GPU 0 (the fullest that fits), 3
        // to GPU 1.
        let available: Vec<String> = [2, 3]
            .iter()
            .map(|&i| slice(FAKE_GPU0, i))
            .chain((0..4).map(|i| slice(FAKE_GPU1, i)))
            .collect();
        let preferred = client
            .get_preferred_allocation(api::PreferredAllocationRequest {
                container_requests: vec![
                    api::ContainerPreferredAllocationRequest {
                        available_device_i_ds: available.clone(),
                        must_include_device_i_ds: vec![],
                        allocation_size: 2,
                    },
                    api::ContainerPreferredAllocationRequest {
                        available_device_i_ds: available,
                        must_include_device_i_ds: vec![],
                        allocation_size: 3,
                    },
                ],
            })
            .await
            .expect("GetPreferredAllocation")
            .into_inner();
        assert_eq!(
            preferred.container_responses[0].device_i_ds,
            [slice(FAKE_GPU0, 2), slice(FAKE_GPU0, 3)]
        );
        assert_eq!(
            preferred.container_responses[1].device_i_ds,
            [0, 1, 2].map(|i| slice(FAKE_GPU1, i))
        );

        let ids = [slice(FAKE_GPU0, 3), slice(FAKE_GPU0, 2)];
        let answer = allocate(&mut client, &ids).await.expect("Allocate");
        let tenant = slice(FAKE_GPU0, 2);
        assert_eq!(
            cdi_names(&answer),
            [
                format!("nvidia.com/gpu={FAKE_GPU0}"),
                format!("gpuslice.dev/gpu={tenant}")
            ]
        );

        // The tenant: 2 of 4 slices of an 8 GiB GPU.
        let ledger = node.node.dir.ledger();
        let quota = ledger
            .read_quota(&crate::util::tenant(&tenant))
            .expect("quota")
            .expect("a quota file");
        let gpu0 = GpuUuid::parse(FAKE_GPU0).expect("uuid");
        let limits = quota.limits_for(&gpu0);
        assert_eq!(limits.memory_bytes, Some(4 * GIB));
        assert_eq!(limits.compute_share_permille, Some(500));
        assert_eq!(limits.priority, Some(Priority::Normal));
        let other = quota.limits_for(&GpuUuid::parse(FAKE_GPU1).expect("uuid"));
        assert_eq!(other.memory_bytes, Some(0), "nothing on the other GPU");
        assert!(ledger.usage_path(&crate::util::tenant(&tenant)).is_file());

        // The CDI spec is valid and describes the device the answer names.
        let spec_path = node.cdi_dir.join(format!("gpuslice.dev-gpu_{tenant}.json"));
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&spec_path).expect("spec file"))
                .expect("the spec is JSON");
        assert_eq!(spec["cdiVersion"], "0.5.0");
        assert_eq!(spec["kind"], "gpuslice.dev/gpu");
        let device = &spec["devices"][0];
        assert_eq!(device["name"], tenant.as_str());
        let env = device["containerEdits"]["env"].to_string();
        assert!(env.contains(&format!("GPUSLICE_TENANT={tenant}")), "{spec}");
        let common = spec["containerEdits"].to_string();
        let shim = node.node.shim.display().to_string();
        assert!(common.contains(&format!("LD_PRELOAD={shim}")), "{spec}");
        let usage_mount = &device["containerEdits"]["mounts"][0];
        assert_eq!(
            usage_mount["hostPath"],
            ledger
                .usage_path(&crate::util::tenant(&tenant))
                .display()
                .to_string()
        );
        assert!(usage_mount["options"].to_string().contains("\"rw\""));
    });
}

#[test]
fn a_lost_gpu_turns_its_slices_unhealthy_and_back() {
    let node = PluginNode::new();
    let plugin = node.start(&[]);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        assert!(
            first_list(&mut stream)
                .await
                .values()
                .all(|h| h == "Healthy")
        );

        let lost = node.gpu_state_dir().join("lost-gpus");
        std::fs::write(&lost, format!("{FAKE_GPU1}\n")).expect("lose GPU 1");
        let devices = next_list(&mut stream).await;
        assert_eq!(devices[&slice(FAKE_GPU1, 0)], "Unhealthy");
        assert_eq!(devices[&slice(FAKE_GPU0, 0)], "Healthy");
        plugin.wait_for_log("is unhealthy");

        // An allocation on the lost GPU is refused, and says why.
        let refused = allocate(&mut client, &[slice(FAKE_GPU1, 0)])
            .await
            .expect_err("allocated on a lost GPU");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("unhealthy"), "{refused:?}");

        std::fs::remove_file(&lost).expect("GPU 1 back");
        let devices = next_list(&mut stream).await;
        assert!(devices.values().all(|h| h == "Healthy"), "{devices:?}");
        allocate(&mut client, &[slice(FAKE_GPU1, 0)])
            .await
            .expect("healthy again");
    });
}

/// Appends XID events (`<device> <xid>` lines) for the simulated GPU to raise.
fn raise_xids(node: &PluginNode, lines: &str) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.gpu_state_dir().join("xid-events"))
        .and_then(|mut f| f.write_all(lines.as_bytes()))
        .expect("raise XID events");
}

/// Issue 16, item 5: a critical XID marks its GPU's slices unhealthy, as NVIDIA's plugin
/// does, and they stay so through a change of settings, until the plugin restarts; an
/// application's XID (13) leaves the GPU healthy.
#[test]
fn a_critical_xid_marks_its_gpu_unhealthy_until_the_plugin_restarts() {
    let node = PluginNode::new();
    let config = node.node.dir.path().join("plugin.yaml");
    std::fs::write(&config, "slicesPerGpu: 4\n").expect("config");
    let config_flag = ["--config", config.to_str().expect("utf-8")];
    let plugin = node.start(&config_flag);
    let rt = runtime();
    let mut kubelet = rt.block_on(FakeKubelet::start(&node.kubelet_dir));
    let registration = rt.block_on(kubelet.registration());
    let mut client = rt.block_on(kubelet.plugin(&registration.endpoint));
    let mut stream = rt.block_on(watch(&mut client));
    let devices = rt.block_on(first_list(&mut stream));
    assert!(devices.values().all(|h| h == "Healthy"), "{devices:?}");
    plugin.wait_for_log("watching the GPUs' XID errors");

    raise_xids(&node, "1 13\n");
    plugin.wait_for_log("reported XID 13, which is ignored");
    raise_xids(&node, &format!("{FAKE_GPU0} 79\n"));
    // The first change: GPU 0 unhealthy, GPU 1 (the application error) still healthy.
    let devices = rt.block_on(next_list(&mut stream));
    assert_eq!(devices[&slice(FAKE_GPU0, 0)], "Unhealthy", "{devices:?}");
    assert_eq!(devices[&slice(FAKE_GPU1, 0)], "Healthy", "{devices:?}");
    plugin.wait_for_log("reported the critical XID 79");
    let refused = rt
        .block_on(allocate(&mut client, &[slice(FAKE_GPU0, 1)]))
        .expect_err("allocated on a GPU with a critical XID");
    assert!(refused.message().contains("XID 79"), "{refused:?}");

    // New settings restart the plugin in place: the mark stays.
    std::fs::write(&config, "slicesPerGpu: 2\n").expect("new config");
    let registration = rt.block_on(kubelet.registration());
    let mut client = rt.block_on(kubelet.plugin(&registration.endpoint));
    let mut stream = rt.block_on(watch(&mut client));
    let devices = rt.block_on(first_list(&mut stream));
    assert_eq!(devices.len(), 4, "{devices:?}");
    assert_eq!(devices[&slice(FAKE_GPU0, 1)], "Unhealthy", "{devices:?}");
    assert_eq!(devices[&slice(FAKE_GPU1, 1)], "Healthy", "{devices:?}");

    // A restarted plugin starts afresh (the XID is in the past; NVML does not repeat it).
    assert_eq!(plugin.stop(libc::SIGTERM), Some(0));
    let plugin = node.start(&config_flag);
    let registration = rt.block_on(kubelet.registration());
    let mut client = rt.block_on(kubelet.plugin(&registration.endpoint));
    let mut stream = rt.block_on(watch(&mut client));
    let devices = rt.block_on(first_list(&mut stream));
    assert!(devices.values().all(|h| h == "Healthy"), "{devices:?}");
    rt.block_on(allocate(&mut client, &[slice(FAKE_GPU0, 1)]))
        .expect("healthy after the restart");
    drop(plugin);
}

/// NVIDIA's variables say which XIDs are ignored; a value that is not an XID is refused.
#[test]
fn dp_disable_healthchecks_ignores_the_xids_it_lists_and_refuses_a_typo() {
    let node = PluginNode::new();
    let mut command = node.plugin_command(&[]);
    command.env("DP_DISABLE_HEALTHCHECKS", "48");
    let plugin = Daemon::spawn(command);
    plugin.wait_for_log("XIDs 13, 31, 43, 45, 48, 68, 109 are ignored");
    raise_xids(&node, "0 48\n");
    plugin.wait_for_log("reported XID 48, which is ignored");
    assert!(!plugin.log().contains("is unhealthy"), "{}", plugin.log());

    let mut command = node.plugin_command(&[]);
    command.env("DP_DISABLE_HEALTHCHECKS", "48,79x");
    let out = finish(command);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("DP_DISABLE_HEALTHCHECKS") && out.stderr.contains("\"79x\""),
        "{out:?}"
    );
}

#[test]
fn plugin_registers_again_when_the_kubelet_restarts() {
    let node = PluginNode::new();
    let plugin = node.start(&[]);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let first = kubelet.registration().await;
        let mut client = kubelet.plugin(&first.endpoint).await;
        let mut stream = watch(&mut client).await;
        first_list(&mut stream).await;

        kubelet.restart();
        // The old stream ends (the plugin stopped that server) and a new registration comes.
        let ended = tokio::time::timeout(WAIT, stream.next()).await;
        assert!(matches!(ended, Ok(None | Some(Err(_)))), "{ended:?}");
        let again = kubelet.registration().await;
        assert_eq!(again.resource_name, "gpuslice.dev/gpu");
        let mut client = kubelet.plugin(&again.endpoint).await;
        let mut stream = watch(&mut client).await;
        assert_eq!(first_list(&mut stream).await.len(), 8);
        allocate(&mut client, &[slice(FAKE_GPU0, 0)])
            .await
            .expect("Allocate after the restart");
    });
    plugin.wait_for_log("registering again");
}

#[test]
fn a_restarted_plugin_keeps_its_tenants_and_drops_what_is_stale() {
    let mut node = PluginNode::new();
    let plugin = node.start(&[]);
    let rt = runtime();
    let (kept, on_gpu1) = (slice(FAKE_GPU0, 1), slice(FAKE_GPU1, 0));
    rt.block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        allocate(&mut client, &[slice(FAKE_GPU0, 2), kept.clone()])
            .await
            .expect("GPU 0");
        allocate(&mut client, std::slice::from_ref(&on_gpu1))
            .await
            .expect("GPU 1");
    });
    assert_eq!(plugin.stop(libc::SIGKILL), None);

    // While it was down: GPU 1 went away, and a stale spec of a tenant nobody has (and not
    // even valid JSON) appeared.
    let stale = node.cdi_dir.join("gpuslice.dev-gpu_ghost.json");
    std::fs::write(&stale, "{ not json").expect("stale spec");
    // ... and the spec of a tenant that is still in use was damaged.
    let kept_spec = node.cdi_dir.join(format!("gpuslice.dev-gpu_{kept}.json"));
    let good_spec = std::fs::read_to_string(&kept_spec).expect("spec");
    std::fs::write(&kept_spec, "{ damaged").expect("damaged spec");
    node.devices = "8Gi".into();
    let plugin = node.start(&[]);
    rt.block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        assert_eq!(first_list(&mut stream).await.len(), 4, "one GPU left");
        plugin.wait_for_log(&format!("removed tenant {on_gpu1}"));
        assert!(
            node.node.dir.tenant_exists(&kept),
            "GPU 0's tenant was kept"
        );
        plugin.wait_for_log(&format!("rewrote the CDI spec of tenant {kept}"));
        assert_eq!(
            std::fs::read_to_string(&kept_spec).expect("spec"),
            good_spec,
            "the damaged spec was not put right"
        );
        assert!(!node.node.dir.tenant_exists(&on_gpu1));
        // Stale specs go last in the sweep, after the kept tenants' specs are put right.
        plugin.wait_for_log(&format!("removed {}: no such tenant", stale.display()));
        assert!(!stale.exists(), "the stale spec is still there");
        assert!(
            !node
                .cdi_dir
                .join(format!("gpuslice.dev-gpu_{on_gpu1}.json"))
                .exists()
        );

        // The kubelet hands slice 1 to a new container, with slice 0: the tenant of the
        // container that had it goes, and the new one is named after slice 0.
        let fresh = slice(FAKE_GPU0, 0);
        let answer = allocate(&mut client, &[kept.clone(), fresh.clone()])
            .await
            .expect("Allocate");
        assert!(cdi_names(&answer).contains(&format!("gpuslice.dev/gpu={fresh}")));
        assert!(
            !node.node.dir.tenant_exists(&kept),
            "the earlier holder is still there"
        );
        let quota = node
            .node
            .dir
            .ledger()
            .read_quota(&crate::util::tenant(&fresh))
            .expect("quota")
            .expect("quota file");
        let limits = quota.limits_for(&GpuUuid::parse(FAKE_GPU0).expect("uuid"));
        assert_eq!(limits.memory_bytes, Some(4 * GIB), "2 slices");

        // A slice of a GPU that is gone is refused with a reason.
        let refused = allocate(&mut client, std::slice::from_ref(&on_gpu1))
            .await
            .expect_err("a gone GPU");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("not on this node"),
            "{refused:?}"
        );
    });
}

#[test]
fn a_tenant_with_a_live_process_is_never_removed() {
    let node = PluginNode::new();
    let plugin = node.start(&[]);
    let earlier = slice(FAKE_GPU0, 1);
    let rt = runtime();
    let mut client = rt.block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        allocate(&mut client, &[earlier.clone(), slice(FAKE_GPU0, 2)])
            .await
            .expect("Allocate");
        client
    });

    // A process of that tenant, under the shim, holding memory and its slot.
    let mut command = Command::new(cudaprobe());
    command
        .args(["dlsym", "alloc", "1M", "hold"])
        .env("LD_PRELOAD", &node.node.shim)
        .env("GPUSLICE_TENANT", &earlier)
        .env("GPUSLICE_DIR", node.node.dir.ledger_dir())
        .env("LD_LIBRARY_PATH", node.node.dir.path().join("lib"))
        .env("FAKECUDA_STATE_DIR", node.gpu_state_dir())
        .env("FAKECUDA_DEVICES", &node.devices);
    let mut holder = Running::spawn(&mut command);
    holder.wait_for_line("holding");

    // Slice 1 is allocated again (as if its container were gone, which it is not).
    rt.block_on(async {
        allocate(&mut client, &[slice(FAKE_GPU0, 0), earlier.clone()])
            .await
            .expect("Allocate");
    });
    plugin.wait_for_log(&format!(
        "tenant {earlier} held slices allocated again, but 1 process"
    ));
    assert!(
        node.node.dir.tenant_exists(&earlier),
        "removed under a live process"
    );

    // Once the process is gone, the next allocation of its slices removes it.
    drop(holder);
    rt.block_on(async {
        allocate(&mut client, &[slice(FAKE_GPU0, 0), earlier.clone()])
            .await
            .expect("Allocate");
    });
    plugin.wait_for_log(&format!("removed tenant {earlier}"));
    assert!(!node.node.dir.tenant_exists(&earlier));
}

#[test]
fn a_tenant_whose_pod_is_gone_is_removed() {
    let node = PluginNode::new();
    let config = node.node.dir.path().join("plugin.yaml");
    std::fs::write(
        &config,
        "cleanupGraceSeconds: 0\nsweepIntervalSeconds: 0.1\n",
    )
    .expect("config");
    let plugin = node.start(&["--config", config.to_str().expect("utf-8")]);
    let (stays, goes) = (slice(FAKE_GPU0, 0), slice(FAKE_GPU0, 1));
    let assigned = Arc::new(Mutex::new(vec![FakeContainer::new(
        "default",
        "pod",
        "main",
        &[stays.clone(), goes.clone()],
    )]));
    runtime().block_on(async {
        serve_pod_resources(&node.pod_resources_socket(), Arc::clone(&assigned));
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        for id in [&stays, &goes] {
            allocate(&mut client, std::slice::from_ref(id))
                .await
                .expect("Allocate");
        }
        // The pod that had `goes` is deleted: the kubelet no longer lists its device.
        assigned.lock().expect("assigned")[0]
            .devices
            .retain(|d| *d != goes);
        tokio::task::spawn_blocking(move || {
            plugin.wait_for_log(&format!("removed tenant {goes}: no container"));
            plugin
        })
        .await
        .expect("wait");
    });
    assert!(
        node.node.dir.tenant_exists(&stays),
        "a tenant in use was removed"
    );
    assert!(!node.node.dir.tenant_exists(&slice(FAKE_GPU0, 1)));
    assert!(
        !node
            .cdi_dir
            .join(format!("gpuslice.dev-gpu_{}.json", slice(FAKE_GPU0, 1)))
            .exists()
    );
}

#[test]
fn bad_requests_get_clear_errors_and_the_plugin_keeps_serving() {
    let node = PluginNode::new();
    let mut plugin = node.start(&[]);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        for (ids, code, says) in [
            (vec![], tonic::Code::InvalidArgument, "no devices"),
            (
                vec!["nvidia0".to_string()],
                tonic::Code::InvalidArgument,
                "nvidia0",
            ),
            (
                vec![slice(FAKE_GPU0, 7)],
                tonic::Code::InvalidArgument,
                "not a device of gpuslice.dev/gpu",
            ),
        ] {
            let refused = allocate(&mut client, &ids).await.expect_err("refused");
            assert_eq!(refused.code(), code, "{ids:?}: {refused:?}");
            assert!(refused.message().contains(says), "{refused:?}");
        }
        // The pool is full: the kubelet asks for more than is available; the answer is
        // what there is, and the kubelet decides.
        let preferred = client
            .get_preferred_allocation(api::PreferredAllocationRequest {
                container_requests: vec![api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: vec![slice(FAKE_GPU1, 3)],
                    must_include_device_i_ds: vec![],
                    allocation_size: 2,
                }],
            })
            .await
            .expect("GetPreferredAllocation")
            .into_inner();
        assert_eq!(
            preferred.container_responses[0].device_i_ds,
            [slice(FAKE_GPU1, 3)]
        );
        allocate(&mut client, &[slice(FAKE_GPU0, 0)])
            .await
            .expect("still serving");
    });
    assert!(plugin.running());
}

#[test]
fn an_invalid_config_file_is_reported_and_read_again_until_fixed() {
    let node = PluginNode::new();
    let config = node.node.dir.path().join("plugin.yaml");
    std::fs::write(&config, "slicesPerGpu: 0\n").expect("config");
    let mut plugin = node.start(&["--config", config.to_str().expect("utf-8")]);
    plugin.wait_for_log("invalid slicesPerGpu \"0\"");
    assert!(plugin.log().contains(config.to_str().expect("utf-8")));
    assert!(plugin.running(), "exited over a bad config file");
    assert!(!node.socket().exists(), "served a bad configuration");

    std::fs::write(
        &config,
        "slicesPerGpu: 2\nresources:\n  - name: gpuslice.dev/gpu\n",
    )
    .expect("fixed config");
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        assert_eq!(first_list(&mut stream).await.len(), 4, "2 GPUs x 2 slices");

        // Broken again while running: reported, and the plugin goes on as it was.
        std::fs::write(&config, "slicesPerGpu: [\n").expect("broken config");
        plugin.wait_for_log("invalid config file");
        allocate(&mut client, &[slice(FAKE_GPU0, 1)])
            .await
            .expect("still serving the last good settings");
    });
    assert!(plugin.running());
    assert_eq!(plugin.stop(libc::SIGTERM), Some(0));
    assert!(!node.socket().exists(), "the socket was left behind");
}

/// Issue 15, item 4, for the plugin: containers given a file that is not the shim would run
/// without limits, so the plugin advertises nothing until the file there is the shim.
#[test]
fn plugin_advertises_nothing_while_its_shim_is_not_the_shim() {
    let node = PluginNode::new();
    let shim = node.node.dir.not_a_shim();
    let plugin = Daemon::spawn(node.plugin_command_with_shim(&shim, &[]));
    plugin.wait_for_log("advertising nothing until the shim is in place");
    assert!(
        plugin.log().contains("not an ELF shared object"),
        "{}",
        plugin.log()
    );
    assert!(!node.socket().exists(), "the plugin served a resource");
    // Once the shim is put there, it starts serving.
    std::fs::copy(&node.node.shim, &shim).expect("put the shim in place");
    let deadline = Instant::now() + WAIT;
    while !node.socket().exists() {
        assert!(
            Instant::now() < deadline,
            "the plugin never served with the shim in place; log:\n{}",
            plugin.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--shim` naming the shim's directory (`/opt/gpuslice/lib`) was only a warning ("not a
/// file here"): the plugin advertised slices whose CDI specs preloaded the directory, which
/// the dynamic loader ignores, and the containers ran without limits.
#[test]
fn plugin_advertises_nothing_while_its_shim_path_is_a_directory() {
    let node = PluginNode::new();
    let directory = node.node.dir.path().join("lib");
    std::fs::create_dir_all(&directory).expect("directory");
    let plugin = Daemon::spawn(node.plugin_command_with_shim(&directory, &[]));
    plugin.wait_for_log("advertising nothing until the shim is in place");
    assert!(
        plugin
            .log()
            .contains(&format!("the shim {} cannot be read", directory.display())),
        "{}",
        plugin.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!node.socket().exists(), "the plugin served a resource");
}

/// A container can write its lock file as well as its usage file (both are mounted
/// read-write): the sweep cut a grown usage file back, but a lock file grown to fill the
/// ledger's filesystem stayed.
#[test]
fn a_lock_file_grown_by_its_container_is_cut_back_by_the_sweep() {
    let node = PluginNode::new();
    let config = node.node.dir.path().join("device-plugin.yaml");
    std::fs::write(&config, "sweepIntervalSeconds: 0.2\n").expect("config");
    let plugin = node.start(&["--config", config.to_str().expect("utf-8")]);
    let id = slice(FAKE_GPU0, 0);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        allocate(&mut client, std::slice::from_ref(&id))
            .await
            .expect("Allocate");
    });
    let ledger = node.node.dir.ledger();
    let lock = ledger.lock_path(&crate::util::tenant(&id));
    let size = std::fs::metadata(&lock).expect("lock file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&lock)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("grow the lock file");
    plugin.wait_for_log(&format!("had grown to {} bytes", 64 * MIB));
    assert_eq!(std::fs::metadata(&lock).expect("lock file").len(), size);
}

/// A tenant someone else made under a slice's name (by hand, or with an older `gpuslice
/// tenant create`): `Allocate` of that slice removed it when none of its processes held a
/// slot, and otherwise wrote its own quota and record over it, putting the pod's container
/// and the other tenant's processes in one tenant. The plugin's module says a tenant
/// without its record is never touched.
#[test]
fn allocate_neither_removes_nor_takes_over_a_tenant_of_a_slices_name_it_did_not_make() {
    let node = PluginNode::new();
    let _plugin = node.start(&[]);
    let name = slice(FAKE_GPU0, 0);
    let ledger = node.node.dir.ledger();
    let theirs = gpuslice_ledger::TenantQuota {
        defaults: gpuslice_ledger::Limits {
            memory_bytes: Some(3 * GIB),
            ..Default::default()
        },
        per_gpu: Vec::new(),
    };
    ledger
        .write_quota(&crate::util::tenant(&name), &theirs)
        .expect("someone else's tenant");
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let refused = allocate(&mut client, std::slice::from_ref(&name))
            .await
            .expect_err("another's tenant");
        assert!(
            refused.message().contains(&format!(
                "tenant {name} exists and was not made by the device plugin"
            )),
            "{refused:?}"
        );
    });
    let quota = ledger
        .read_quota(&crate::util::tenant(&name))
        .expect("quota")
        .expect("still there")
        .quota();
    assert_eq!(quota, theirs, "its quota is its own");
    assert!(
        !ledger
            .tenant_dir(&crate::util::tenant(&name))
            .join("device-plugin-allocation")
            .exists()
    );
}

#[test]
fn bad_flags_are_a_usage_error() {
    let node = PluginNode::new();
    let out = finish(node.plugin_command(&["--slices-per-gpu", "0"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("slicesPerGpu"), "{out:?}");
}

#[test]
fn plugin_serves_metrics_of_the_ledger() {
    let node = PluginNode::new();
    let plugin = node.start(&["--metrics-listen", "127.0.0.1:0"]);
    plugin.wait_for_log("serving metrics on http://");
    let log = plugin.log();
    let address = log
        .split("serving metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("metrics address")
        .to_string();
    // Served from the start; the ledger's series once the plugin is ready.
    crate::plugin_metrics::wait_for_status(&address, "/readyz", 200);
    let (status, body) = crate::metrics::get(&address, "/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = crate::metrics::parse(&body);
    let tenants = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gpuslice_tenants")
        .unwrap_or_else(|| panic!("no gpuslice_tenants in {body}"));
    assert!(
        matches!(tenants.value, prometheus_parse::Value::Gauge(v) if v == 0.0),
        "{tenants:?}"
    );
}

#[test]
fn cdi_generate_prints_the_spec_as_json_or_yaml() {
    let node = Node::new();
    let ledger = node.dir.ledger();
    let t = crate::util::tenant("team-a");
    ledger
        .write_quota(&t, &gpuslice_ledger::TenantQuota::default())
        .expect("quota");
    let dir = node.dir.ledger_dir();
    let shim = node.shim.display().to_string();
    let generate = |extra: &[&str]| {
        let mut command = node.dir.gpuslice(&["cdi", "generate", "--dir"]);
        command.arg(&dir).args(["--shim", &shim]).args(extra);
        finish(command)
    };
    let out = generate(&[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let spec: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(spec["cdiVersion"], "0.5.0");
    assert_eq!(spec["kind"], "gpuslice.dev/gpu");
    assert_eq!(spec["devices"][0]["name"], "team-a");
    let mounts = spec["containerEdits"]["mounts"].to_string();
    assert!(
        mounts.contains(&shim) && mounts.contains("\"ro\""),
        "{spec}"
    );
    assert!(ledger.usage_path(&t).is_file(), "the usage file to mount");

    let out = generate(&["--format", "yaml", "--preload", "ld-so-preload"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("cdiVersion: 0.5.0"), "{}", out.stdout);
    assert!(
        out.stdout.contains("containerPath: /etc/ld.so.preload"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("LD_PRELOAD"), "{}", out.stdout);
    let preload = std::fs::read_to_string(dir.join("ld.so.preload")).expect("preload file");
    assert_eq!(preload.trim(), shim);

    let file = node.dir.path().join("out.json");
    let out = generate(&["--output", file.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.is_empty());
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&file).expect("out"))
        .expect("JSON file");

    let out = generate(&["--tenant", "nobody"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("nobody"), "{out:?}");
}

/// A pod can write its own usage file with anything before it goes. Whether the tenant is
/// still in use is asked of its lock file alone, so the next pod given the same slice gets a
/// fresh tenant instead of an error, forever (red team).
#[test]
fn a_gone_pod_that_damaged_its_usage_file_does_not_block_its_slice() {
    let node = PluginNode::new();
    let _plugin = node.start(&[]);
    let first = slice(FAKE_GPU0, 0);
    let rt = runtime();
    let mut client = rt.block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        let mut client = kubelet.plugin(&registration.endpoint).await;
        allocate(&mut client, std::slice::from_ref(&first))
            .await
            .expect("Allocate");
        client
    });
    let usage = node
        .node
        .dir
        .ledger()
        .usage_path(&crate::util::tenant(&first));
    std::fs::write(&usage, b"garbage").expect("write own usage file");
    let answer = rt.block_on(async { allocate(&mut client, std::slice::from_ref(&first)).await });
    assert!(
        answer.is_ok(),
        "the next pod cannot get the slice: {answer:?}"
    );
    assert!(
        node.node
            .dir
            .ledger()
            .snapshot_usage(&crate::util::tenant(&first))
            .is_ok(),
        "the tenant was made afresh"
    );
}
