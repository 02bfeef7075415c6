//! The device plugin's metrics, end to end: a node with two simulated GPUs, a fake kubelet
//! whose pod resources API lists pods, containers and their slices, the plugin allocating
//! them, and the exposition parsed with a Prometheus text parser. Every tenant's series
//! must name the pod container the kubelet said has its slices, and every GPU must be
//! labelled as DCGM's exporter labels it. `/healthz` and `/readyz` are checked through a
//! settings file that is invalid, then fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_ledger::GpuUuid;
use prometheus_parse::{Sample, Scrape, Value};

use crate::metrics::{get, parse};
use crate::plugin::{
    Daemon, FAKE_GPU1, FakeContainer, FakeKubelet, PluginNode, WAIT, allocate, runtime,
    serve_pod_resources, slice,
};
use crate::util::*;

/// The node's name, as the DaemonSet passes it (`spec.nodeName`).
const NODE_NAME: &str = "gpu-node-7";
/// What the simulated GPU calls itself through NVML.
const MODEL: &str = "gpuslice simulated GPU";

/// A tenant the test made through the plugin, and the container the kubelet lists it
/// under (`None`: no container has its slices yet).
struct Placed {
    tenant: String,
    gpu: &'static str,
    index: &'static str,
    owner: Option<FakeContainer>,
}

/// A node whose plugin has allocated slices to pods, with usage in the ledger as the shim
/// would publish it; its metrics server's address and what the kubelet lists.
pub struct PodNode {
    // Its directory (ledger, kubelet, GPUs) lives as long as the test.
    _node: PluginNode,
    plugin: Daemon,
    address: String,
    assigned: Arc<Mutex<Vec<FakeContainer>>>,
    placed: Vec<Placed>,
    // The processes' slots, held as a live process holds them.
    _held: Vec<Box<dyn std::any::Any>>,
    // The fake kubelet's services run on it.
    _runtime: tokio::runtime::Runtime,
}

/// The address `gpuslice device-plugin` (or `dra-driver`) logged it serves metrics on.
pub fn metrics_address(plugin: &Daemon) -> String {
    plugin.wait_for_log("serving metrics on http://");
    plugin
        .log()
        .split("serving metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("metrics address")
        .to_string()
}

impl PodNode {
    /// Three tenants: `ml/train-0/trainer` with two slices of GPU 0, `web/infer-5d8f/server`
    /// with one slice of GPU 1, and one slice of GPU 0 the kubelet lists under no container
    /// (allocated, its container not started yet). The resource caps each at its share, so
    /// that every per-tenant series is there.
    pub fn start() -> PodNode {
        let node = PluginNode::new();
        let config = node.node.dir.path().join("plugin.yaml");
        std::fs::write(
            &config,
            "resources:\n  - name: gpuslice.dev/gpu\n    slices: 4\n    computeLimit: share\n",
        )
        .expect("config");
        let mut command = node.plugin_command(&[
            "--config",
            config.to_str().expect("utf-8"),
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        command.env("NODE_NAME", NODE_NAME);
        let plugin = Daemon::spawn(command);
        let address = metrics_address(&plugin);

        let train = FakeContainer::new(
            "ml",
            "train-0",
            "trainer",
            &[slice(FAKE_GPU0, 1), slice(FAKE_GPU0, 0)],
        );
        let infer = FakeContainer::new("web", "infer-5d8f", "server", &[slice(FAKE_GPU1, 2)]);
        let pending = vec![slice(FAKE_GPU0, 3)];
        let assigned = Arc::new(Mutex::new(vec![train.clone(), infer.clone()]));
        let rt = runtime();
        rt.block_on(async {
            serve_pod_resources(&node.pod_resources_socket(), Arc::clone(&assigned));
            let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
            let registration = kubelet.registration().await;
            let mut client = kubelet.plugin(&registration.endpoint).await;
            for ids in [&train.devices, &infer.devices, &pending] {
                allocate(&mut client, ids).await.expect("Allocate");
            }
        });
        let placed = vec![
            Placed {
                tenant: slice(FAKE_GPU0, 0),
                gpu: FAKE_GPU0,
                index: "0",
                owner: Some(train),
            },
            Placed {
                tenant: slice(FAKE_GPU1, 2),
                gpu: FAKE_GPU1,
                index: "1",
                owner: Some(infer),
            },
            Placed {
                tenant: slice(FAKE_GPU0, 3),
                gpu: FAKE_GPU0,
                index: "0",
                owner: None,
            },
        ];

        // What a process under the shim would publish: 100 MiB held, 2 s of GPU time,
        // 0.5 s throttled, one refusal.
        let ledger = node.node.dir.ledger();
        let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
        for p in &placed {
            let usage = ledger.open_usage(&tenant(&p.tenant)).expect("usage");
            let gpu = GpuUuid::parse(p.gpu).expect("uuid");
            let index = usage.register_gpu(&gpu).expect("register");
            let slot = usage.claim_slot().expect("slot");
            slot.try_reserve(index, 100 * MIB, 8 * GIB)
                .expect("reserve");
            slot.add_gpu_time(index, 2_000_000_000);
            usage.add_throttled(index, 500_000_000);
            usage.record_oom(index);
            held.push(Box::new(slot));
            held.push(Box::new(usage));
        }
        PodNode {
            _node: node,
            plugin,
            address,
            assigned,
            placed,
            _held: held,
            _runtime: rt,
        }
    }

    /// A scrape of `/metrics`, parsed, once the plugin is ready and the kubelet answered.
    pub fn scrape(&self) -> (Scrape, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = get(&self.address, "/metrics");
            assert_eq!(status, 200, "{body}");
            let scrape = parse(&body);
            let up = |metric: &str| {
                scrape
                    .samples
                    .iter()
                    .any(|s| s.metric == metric && number(s) == 1.0)
            };
            if up("gpuslice_ready") && up("gpuslice_pod_resources_up") {
                return (scrape, body);
            }
            assert!(
                Instant::now() < deadline,
                "never ready:\n{body}\nlog:\n{}",
                self.plugin.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A sample's value.
pub fn number(sample: &Sample) -> f64 {
    match sample.value {
        Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
        ref other => panic!("{}: unexpected {other:?}", sample.metric),
    }
}

/// The samples of `metric` whose labels include `labels`.
pub fn samples<'s>(scrape: &'s Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect()
}

/// The one sample of `metric` with `labels`.
pub fn one<'s>(scrape: &'s Scrape, metric: &str, labels: &[(&str, &str)]) -> &'s Sample {
    let found = samples(scrape, metric, labels);
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:#?}");
    found[0]
}

/// For each metric of a scrape, every label name any of its samples has.
pub fn served_labels(scrape: &Scrape) -> BTreeMap<String, BTreeSet<String>> {
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in &scrape.samples {
        served
            .entry(sample.metric.clone())
            .or_default()
            .extend(sample.labels.keys().cloned());
    }
    served
}

/// A scrape of a [`PodNode`], for the dashboard's test.
pub fn pod_node_scrape() -> Scrape {
    PodNode::start().scrape().0
}

#[test]
fn each_tenant_is_labelled_with_the_pod_container_the_kubelet_gave_its_slices_to() {
    let node = PodNode::start();
    let (scrape, text) = node.scrape();
    for p in &node.placed {
        let (namespace, pod, container) = p.owner.as_ref().map_or(("", "", ""), |c| {
            (c.namespace.as_str(), c.pod.as_str(), c.container.as_str())
        });
        for metric in [
            "gpuslice_memory_used_bytes",
            "gpuslice_memory_limit_bytes",
            "gpuslice_oom_refusals_total",
            "gpuslice_gpu_time_seconds_total",
            "gpuslice_throttled_seconds_total",
            "gpuslice_compute_share_ratio",
            "gpuslice_compute_limit_ratio",
            "gpuslice_compute_priority",
        ] {
            let sample = one(&scrape, metric, &[("tenant", &p.tenant)]);
            // The parser leaves out a label whose value is empty, as Prometheus stores it.
            for (label, want) in [
                ("namespace", namespace),
                ("pod", pod),
                ("container", container),
                ("Hostname", NODE_NAME),
                ("UUID", p.gpu),
                ("gpu", p.index),
                ("device", &format!("nvidia{}", p.index)),
                ("modelName", MODEL),
            ] {
                assert_eq!(
                    sample.labels.get(label).unwrap_or(""),
                    want,
                    "{metric} of {}: {label} in\n{text}",
                    p.tenant
                );
            }
        }
        let processes = one(&scrape, "gpuslice_processes", &[("tenant", &p.tenant)]);
        assert_eq!(processes.labels.get("pod").unwrap_or(""), pod);
        // The numbers are the tenant's.
        let t = [("tenant", p.tenant.as_str())];
        assert_eq!(
            number(one(&scrape, "gpuslice_memory_used_bytes", &t)),
            (100 * MIB) as f64
        );
        assert_eq!(
            number(one(&scrape, "gpuslice_gpu_time_seconds_total", &t)),
            2.0
        );
        assert_eq!(
            number(one(&scrape, "gpuslice_throttled_seconds_total", &t)),
            0.5
        );
        assert_eq!(number(one(&scrape, "gpuslice_oom_refusals_total", &t)), 1.0);
    }
    // Two of four slices of an 8 GiB GPU: 4 GiB and half its time, capped there.
    let train = [("pod", "train-0")];
    assert_eq!(
        number(one(&scrape, "gpuslice_memory_limit_bytes", &train)),
        (4 * GIB) as f64
    );
    assert_eq!(
        number(one(&scrape, "gpuslice_compute_share_ratio", &train)),
        0.5
    );
    assert_eq!(
        number(one(&scrape, "gpuslice_compute_limit_ratio", &train)),
        0.5
    );

    // Per GPU: capacity, quota given out, slices advertised and held, health.
    for (uuid, index, allocated, quota) in [
        (FAKE_GPU0, "0", 3.0, 6 * GIB),
        (FAKE_GPU1, "1", 1.0, 2 * GIB),
    ] {
        let gpu = [
            ("UUID", uuid),
            ("gpu", index),
            ("modelName", MODEL),
            ("Hostname", NODE_NAME),
        ];
        assert_eq!(
            number(one(&scrape, "gpuslice_gpu_memory_total_bytes", &gpu)),
            (8 * GIB) as f64
        );
        assert_eq!(
            number(one(
                &scrape,
                "gpuslice_gpu_memory_quota_allocated_bytes",
                &gpu
            )),
            quota as f64
        );
        let mut resource = gpu.to_vec();
        resource.push(("resource", "gpuslice.dev/gpu"));
        assert_eq!(number(one(&scrape, "gpuslice_gpu_slices", &resource)), 4.0);
        assert_eq!(
            number(one(&scrape, "gpuslice_gpu_slices_allocated", &resource)),
            allocated
        );
        assert_eq!(number(one(&scrape, "gpuslice_gpu_healthy", &gpu)), 1.0);
    }
    let build = one(&scrape, "gpuslice_build_info", &[]);
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(
        build.labels.get("commit").is_some_and(|c| !c.is_empty()),
        "{build:?}"
    );

    // The kubelet starts the pending slice's container: the next scrape names it.
    let pending = &node.placed[2];
    node.assigned
        .lock()
        .expect("assigned")
        .push(FakeContainer::new(
            "batch",
            "job-1",
            "worker",
            std::slice::from_ref(&pending.tenant),
        ));
    let (scrape, text) = node.scrape();
    let sample = one(
        &scrape,
        "gpuslice_memory_used_bytes",
        &[("tenant", &pending.tenant)],
    );
    for (label, want) in [
        ("namespace", "batch"),
        ("pod", "job-1"),
        ("container", "worker"),
    ] {
        assert_eq!(sample.labels.get(label), Some(want), "{label} in\n{text}");
    }
}

/// Waits until `path` answers `status`; returns the body.
pub fn wait_for_status(address: &str, path: &str, status: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, body) = get(address, path);
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; last {got}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn healthz_answers_while_the_settings_are_invalid_and_readyz_says_why_until_they_are_fixed() {
    let node = PluginNode::new();
    let config = node.node.dir.path().join("plugin.yaml");
    std::fs::write(&config, "slicesPerGpu: 0\n").expect("config");
    let plugin = node.start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let address = metrics_address(&plugin);

    let (status, body) = get(&address, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, reason) = get(&address, "/readyz");
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("slicesPerGpu"), "{reason}");
    assert_eq!(reason.lines().count(), 1, "{reason:?}");
    // The metrics say so too, and what is known without settings.
    let (status, body) = get(&address, "/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = parse(&body);
    assert_eq!(number(one(&scrape, "gpuslice_ready", &[])), 0.0);
    one(&scrape, "gpuslice_build_info", &[]);
    assert!(
        samples(&scrape, "gpuslice_tenants", &[]).is_empty(),
        "{body}"
    );

    // Fixed: ready, without a restart.
    std::fs::write(&config, "slicesPerGpu: 2\n").expect("config");
    assert_eq!(wait_for_status(&address, "/readyz", 200), "ready\n");
    let (_, body) = get(&address, "/metrics");
    let scrape = parse(&body);
    assert_eq!(number(one(&scrape, "gpuslice_ready", &[])), 1.0);
    assert_eq!(number(one(&scrape, "gpuslice_tenants", &[])), 0.0);
    let (status, _) = get(&address, "/healthz");
    assert_eq!(status, 200);
    let (status, body) = get(&address, "/nothing");
    assert_eq!(status, 404, "{body}");
}
