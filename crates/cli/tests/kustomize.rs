//! The manifests in deploy/kustomize, rendered offline as `kubectl apply -k` renders them
//! (`kubectl kustomize`) and decoded with the real Kubernetes API types (k8s-openapi): the
//! base gives the plugin what it needs, the monitoring add-on scrapes it, each overlay
//! changes what it claims to and nothing else, and a kustomization of one's own (as
//! docs/kubernetes.md writes it) sets the image.
//!
//! Every object must decode into its API type and serialize back to exactly what was
//! rendered, so a misspelt or misplaced field (which the API server would drop or refuse)
//! fails here. The kubectl binaries are those in `KUBECTL_FOR_TESTS` (colon-separated), or
//! `kubectl` on the PATH; `.ci/run` adds Debian's (kustomize 2.0.3), the oldest the layout
//! is written for. Without any, the tests say so loudly and skip, unless
//! `REQUIRE_KUBECTL_TESTS=1` makes that a failure.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// The image the base names; a kustomization of one's own retargets it with `images`.
const IMAGE: &str = "gpuslice:0.1.0";
/// The namespace everything is installed in.
const NAMESPACE: &str = "gpuslice";
/// The overlays there are, each tested below (dra in dra_deploy.rs).
const OVERLAYS: [&str; 3] = ["dra", "realtime", "time-slicing-migration"];

/// Host directories the plugin uses, each mounted at the same path in its container, and
/// whether it writes there. The paths are the plugin's defaults (crates/cli/src/plugin/
/// config.rs), and the shim's directory is where the settings put it; the unit test
/// `the_settings_in_deploy_are_valid_and_their_host_paths_are_mounted` checks them
/// against the settings files as the plugin resolves them.
const HOST_PATHS: [(&str, bool); 5] = [
    // Its gRPC sockets and the kubelet's registration socket.
    ("/var/lib/kubelet/device-plugins", true),
    // The kubelet's pod resources socket: which devices containers still have.
    ("/var/lib/kubelet/pod-resources", false),
    // The CDI specs it writes for each allocation.
    ("/var/run/cdi", true),
    // The ledger: tenants, their quotas and usage.
    ("/run/gpuslice", true),
    // The shim, which the CDI specs mount into workloads.
    ("/opt/gpuslice/lib", false),
];

/// A PodMonitor (monitoring.coreos.com/v1) with the fields the monitoring add-on uses. No
/// crate has the Prometheus Operator's types, so unknown fields are refused here instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: PodMonitorSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodMonitorSpec {
    selector: LabelSelector,
    pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodMetricsEndpoint {
    port: String,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    honor_labels: Option<bool>,
}

/// One rendered object, decoded. A kind not listed here fails the test that renders it:
/// any new object must be decoded (and an RBAC object never appears, since the plugin
/// needs none).
#[derive(Debug, Clone, PartialEq)]
// A render has a handful of objects: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ConfigMap(ConfigMap),
    DaemonSet(DaemonSet),
    Service(Service),
    PodMonitor(PodMonitor),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ConfigMap(_) => "ConfigMap",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Service(_) => "Service",
            Object::PodMonitor(_) => "PodMonitor",
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::PodMonitor(o) => &o.metadata,
        }
    }
}

/// Decodes `value` as `T`, and checks that `T` serializes back to `value`: a field the type
/// does not have is lost on the way, and fails the comparison.
pub fn decode_strictly<T>(value: &serde_json::Value, what: &str) -> T
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what} does not decode: {e}\n{value:#}"));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(path) = first_difference(value, &back, String::new()) {
        panic!("{what}: {path} is not a field of its API type, or not of that shape\n{value:#}");
    }
    typed
}

/// Where `rendered` and `decoded` first differ, as a path such as
/// `.spec.template.spec.containers[1].readinesProbe`.
fn first_difference(
    rendered: &serde_json::Value,
    decoded: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    match (rendered, decoded) {
        (Value::Object(r), Value::Object(d)) => r
            .iter()
            .find_map(|(k, v)| match d.get(k) {
                None => Some(format!("{path}.{k}")),
                Some(w) => first_difference(v, w, format!("{path}.{k}")),
            })
            .or_else(|| {
                d.keys()
                    .find(|k| !r.contains_key(*k))
                    .map(|k| format!("{path}.{k} (added)"))
            }),
        (Value::Array(r), Value::Array(d)) if r.len() == d.len() => r
            .iter()
            .zip(d)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        _ => (rendered != decoded).then_some(path),
    }
}

/// Decodes one rendered document by its apiVersion and kind.
fn decode(value: &serde_json::Value, source: &str) -> Object {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default();
    let what = format!("{kind} {} from {source}", value["metadata"]["name"]);
    match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(decode_strictly(value, &what)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(decode_strictly(value, &what)),
        ("v1", "ConfigMap") => Object::ConfigMap(decode_strictly(value, &what)),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(decode_strictly(value, &what)),
        ("v1", "Service") => Object::Service(decode_strictly(value, &what)),
        ("monitoring.coreos.com/v1", "PodMonitor") => {
            Object::PodMonitor(decode_strictly(value, &what))
        }
        _ => panic!("{what}: {api_version} {kind} is not an object this test knows"),
    }
}

/// deploy/kustomize in this checkout.
fn layout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/kustomize")
        .canonicalize()
        .unwrap()
}

/// The kubectl binaries to render with; `None` (after saying so) when there is none.
fn kubectls() -> Option<Vec<PathBuf>> {
    let listed = std::env::var("KUBECTL_FOR_TESTS").unwrap_or_else(|_| "kubectl".into());
    let found: Vec<PathBuf> = listed
        .split(':')
        .filter(|k| !k.is_empty())
        .filter(|k| {
            Command::new(k)
                .args(["version", "--client"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(PathBuf::from)
        .collect();
    if !found.is_empty() {
        return Some(found);
    }
    let why = format!("no kubectl that runs among {listed:?} (KUBECTL_FOR_TESTS, or the PATH)");
    assert!(
        std::env::var("REQUIRE_KUBECTL_TESTS").as_deref() != Ok("1"),
        "REQUIRE_KUBECTL_TESTS=1, but {why}"
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED the kustomize tests: {why}\n\
         *** deploy/kustomize is NOT rendered or checked on this machine \
         (apt-get install kubernetes-client).\n"
    );
    None
}

/// Runs `test` once with each kubectl (nothing, loudly, without one).
pub fn with_each_kubectl(test: impl Fn(&Path)) {
    for kubectl in kubectls().unwrap_or_default() {
        test(&kubectl);
    }
}

/// `kubectl kustomize DIR`, every object decoded.
fn render(kubectl: &Path, dir: &Path) -> Vec<Object> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    let source = format!("{} kustomize {}", kubectl.display(), dir.display());
    assert!(
        out.status.success(),
        "{source} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<Object> = serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let value = serde_json::Value::deserialize(document).unwrap();
            decode(&value, &source)
        })
        .collect();
    assert!(!objects.is_empty(), "{source} rendered nothing");
    objects
}

/// The one object of a kind.
fn only<'a, T>(objects: &'a [Object], pick: impl Fn(&'a Object) -> Option<&'a T>) -> &'a T {
    let found: Vec<&T> = objects.iter().filter_map(pick).collect();
    assert_eq!(found.len(), 1, "expected one, found {}", found.len());
    found[0]
}

fn daemonset(objects: &[Object]) -> &DaemonSet {
    only(objects, |o| match o {
        Object::DaemonSet(d) => Some(d),
        _ => None,
    })
}

fn configmap(objects: &[Object]) -> &ConfigMap {
    only(objects, |o| match o {
        Object::ConfigMap(c) => Some(c),
        _ => None,
    })
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().unwrap()
}

fn pod_labels(ds: &DaemonSet) -> &BTreeMap<String, String> {
    let template = &ds.spec.template;
    template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
}

fn plugin_container(ds: &DaemonSet) -> &Container {
    pod_spec(ds)
        .containers
        .iter()
        .find(|c| c.name == "device-plugin")
        .expect("a container named device-plugin")
}

/// Every container of the pod, init containers first.
fn all_containers(ds: &DaemonSet) -> Vec<&Container> {
    let spec = pod_spec(ds);
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect()
}

/// The port the plugin's `--metrics-listen` flag names.
fn metrics_listen_port(container: &Container) -> i32 {
    container
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--metrics-listen="))
        .and_then(|address| address.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .expect("the plugin's args name --metrics-listen=ADDRESS:PORT")
}

/// `container` mounts the hostPath volume `host` at the same path: `Some(read_only)`.
fn host_mount(ds: &DaemonSet, container: &Container, host: &str) -> Option<bool> {
    let volumes = pod_spec(ds).volumes.as_ref()?;
    container.volume_mounts.iter().flatten().find_map(|m| {
        let volume = volumes.iter().find(|v| v.name == m.name)?;
        let path = &volume.host_path.as_ref()?.path;
        (path == host && m.mount_path == host).then(|| m.read_only.unwrap_or(false))
    })
}

/// The selector `selector` matches exactly `labels` by matchLabels (what the layout uses).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A label selector, matchLabels and matchExpressions both, matches `labels` (as the API
/// server reads one; an empty selector is refused here, since it would select every pod).
pub fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.clone().unwrap_or_default();
    let expressions = selector.match_expressions.clone().unwrap_or_default();
    assert!(
        !by_labels.is_empty() || !expressions.is_empty(),
        "an empty selector selects everything: {selector:?}"
    );
    by_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("no such selector operator {other}"),
            }
        })
}

/// The capabilities `container` adds to none (it drops ALL).
pub fn added_capabilities(container: &Container) -> Vec<String> {
    let capabilities = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    assert_eq!(
        capabilities.and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()]),
        "{} drops every capability first",
        container.name
    );
    capabilities.and_then(|c| c.add.clone()).unwrap_or_default()
}

/// The YAML block that follows `marker` in docs/kubernetes.md.
pub fn documented_yaml(marker: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubernetes.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let after = text
        .split_once(marker)
        .unwrap_or_else(|| panic!("docs/kubernetes.md has no {marker:?}"))
        .1;
    let block = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no YAML block after {marker:?} in docs/kubernetes.md"))
        .0;
    block.to_string()
}

#[test]
fn the_base_installs_the_plugin_with_what_it_needs() {
    with_each_kubectl(|kubectl| {
        let objects = render(kubectl, &layout().join("base"));
        let mut kinds: Vec<&str> = objects.iter().map(Object::kind).collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            [
                "ConfigMap",
                "DaemonSet",
                "Namespace",
                "Service",
                "ServiceAccount"
            ],
            "no RBAC objects: the plugin never calls the API server"
        );
        for o in &objects {
            let expected = match o {
                Object::Namespace(_) => None,
                _ => Some(NAMESPACE),
            };
            assert_eq!(o.metadata().namespace.as_deref(), expected, "{o:?}");
        }

        // The namespace admits hostPath volumes.
        let namespace = only(&objects, |o| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        });
        assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
        let labels = namespace.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("privileged")
        );

        // Its own identity, without API credentials.
        let account = only(&objects, |o| match o {
            Object::ServiceAccount(a) => Some(a),
            _ => None,
        });
        assert_eq!(account.automount_service_account_token, Some(false));
        let ds = daemonset(&objects);
        let spec = pod_spec(ds);
        assert_eq!(spec.service_account_name, account.metadata.name);
        assert_eq!(spec.automount_service_account_token, Some(false));

        // The runtime's default seccomp profile for the pod, overridden by no container.
        let seccomp = spec
            .security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref();
        assert_eq!(seccomp.map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        for c in all_containers(ds) {
            let security = c.security_context.as_ref().expect("a securityContext");
            assert_eq!(security.seccomp_profile, None, "{}", c.name);
            assert_eq!(security.privileged, None, "{}", c.name);
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{}",
                c.name
            );
            let dropped = security.capabilities.as_ref().unwrap().drop.as_ref();
            assert_eq!(dropped, Some(&vec!["ALL".to_string()]), "{}", c.name);
            // One image for both, so that one `images` entry retargets them.
            assert_eq!(c.image.as_deref(), Some(IMAGE), "{}", c.name);
            // Requests for both, and a memory limit.
            let resources = c.resources.as_ref().expect("resources");
            let requests = resources.requests.as_ref().expect("requests");
            assert!(
                requests.contains_key("cpu") && requests.contains_key("memory"),
                "{}",
                c.name
            );
            let limits = resources.limits.as_ref().expect("limits");
            assert!(limits.contains_key("memory"), "{}", c.name);
        }

        // The host's PID namespace and SYS_PTRACE, for the unenforced check alone (as
        // docs/kubernetes.md and docs/security.md say): the init container gets neither.
        assert_eq!(spec.host_pid, Some(true));
        assert_eq!(spec.host_network, None);
        assert_eq!(spec.host_ipc, None);
        assert_eq!(added_capabilities(plugin_container(ds)), ["SYS_PTRACE"]);
        for init in spec.init_containers.iter().flatten() {
            assert!(added_capabilities(init).is_empty(), "{}", init.name);
        }

        // The host paths the plugin uses, at the same paths, writable where it writes.
        let plugin = plugin_container(ds);
        for (path, writes) in HOST_PATHS {
            match host_mount(ds, plugin, path) {
                None => panic!("{path} is not mounted from the host at the same path"),
                Some(read_only) => {
                    assert!(!(writes && read_only), "{path} is mounted read-only")
                }
            }
        }
        // The init container puts the shim there.
        let install = spec.init_containers.as_ref().unwrap();
        assert_eq!(install.len(), 1);
        assert_eq!(
            host_mount(ds, &install[0], "/opt/gpuslice/lib"),
            Some(false)
        );
        let copy = install[0].command.as_ref().unwrap().join(" ");
        assert!(copy.contains("/opt/gpuslice/lib/libgpuslice.so"), "{copy}");

        // The settings: the ConfigMap made from base/device-plugin.yaml, mounted where
        // --config reads it.
        let config = configmap(&objects);
        let settings = std::fs::read_to_string(layout().join("base/device-plugin.yaml")).unwrap();
        let data = config.data.as_ref().unwrap();
        assert_eq!(data.get("device-plugin.yaml"), Some(&settings));
        assert_eq!(data.len(), 1);
        let config_path = plugin
            .args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--config="))
            .expect("--config=FILE");
        let volumes = spec.volumes.as_ref().unwrap();
        let mount = plugin
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(config_path).parent() == Some(Path::new(&m.mount_path)))
            .expect("a mount where --config points");
        let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
        assert_eq!(
            volume.config_map.as_ref().unwrap().name,
            *config.metadata.name.as_ref().unwrap()
        );
        assert!(
            config_path.ends_with("/device-plugin.yaml"),
            "{config_path}"
        );

        // Probes on the metrics port the plugin serves, which is not DCGM's exporter's.
        let port = metrics_listen_port(plugin);
        assert_ne!(port, 9400, "DCGM's exporter's port: both run on a GPU node");
        let ports = plugin.ports.as_ref().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == port),
            "{ports:?}"
        );
        let annotations = ds
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .unwrap();
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&port.to_string())
        );
        let metrics = IntOrString::String("metrics".into());
        let http_probe = |probe: Option<&Probe>, what: &str| {
            let get = probe
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("an HTTP {what} probe"));
            assert_eq!(get.port, metrics, "{what}");
            get.path.clone().unwrap_or_default()
        };
        assert_eq!(
            http_probe(plugin.readiness_probe.as_ref(), "readiness"),
            "/readyz"
        );
        assert_eq!(
            http_probe(plugin.liveness_probe.as_ref(), "liveness"),
            "/healthz"
        );

        // The Service reaches every plugin pod's metrics port.
        let service = only(&objects, |o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        });
        let service = service.spec.as_ref().unwrap();
        assert_eq!(service.cluster_ip.as_deref(), Some("None"));
        assert!(selects(service.selector.as_ref().unwrap(), pod_labels(ds)));
        let service_ports = service.ports.as_ref().unwrap();
        assert_eq!(service_ports.len(), 1);
        assert_eq!(service_ports[0].target_port, Some(metrics));
        assert!(selects(
            ds.spec.selector.match_labels.as_ref().unwrap(),
            pod_labels(ds)
        ));
    });
}

#[test]
fn the_monitoring_addon_scrapes_the_plugins_metrics_port() {
    with_each_kubectl(|kubectl| {
        let base = render(kubectl, &layout().join("base"));
        let objects = render(kubectl, &layout().join("monitoring"));
        let [Object::PodMonitor(monitor)] = objects.as_slice() else {
            panic!("the add-on is one PodMonitor: {objects:?}")
        };
        assert_eq!(monitor.metadata.namespace.as_deref(), Some(NAMESPACE));
        let [endpoint] = monitor.spec.pod_metrics_endpoints.as_slice() else {
            panic!("one endpoint: {monitor:?}")
        };
        // The device plugin's pods (the DRA driver's: dra_deploy.rs).
        let ds = daemonset(&base);
        assert!(label_selector_matches(
            &monitor.spec.selector,
            pod_labels(ds)
        ));
        let ports = plugin_container(ds).ports.as_ref().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some(endpoint.port.as_str())),
            "{endpoint:?} names no port of the plugin: {ports:?}"
        );
        // Nothing else in the namespace.
        for labels in [
            BTreeMap::from([("app.kubernetes.io/name".to_string(), "other".to_string())]),
            BTreeMap::new(),
        ] {
            assert!(!label_selector_matches(&monitor.spec.selector, &labels));
        }
        assert_eq!(endpoint.path, "/metrics");
        // The workload's namespace, pod and container labels are kept, not renamed
        // exported_*: the dashboard and DCGM's series name them so.
        assert_eq!(endpoint.honor_labels, Some(true));
    });
}

#[test]
fn every_overlay_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(layout().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, OVERLAYS);
}

#[test]
fn the_migration_overlay_only_adds_the_takeover_node_affinity() {
    with_each_kubectl(|kubectl| {
        let base = render(kubectl, &layout().join("base"));
        let mut overlay = render(kubectl, &layout().join("overlays/time-slicing-migration"));
        let ds = daemonset(&overlay);
        let affinity = pod_spec(ds).affinity.as_ref().expect("an affinity");
        let required = affinity
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        let [term] = required.node_selector_terms.as_slice() else {
            panic!("one node selector term: {required:?}")
        };
        let [expression] = term.match_expressions.as_deref().unwrap() else {
            panic!("one expression: {term:?}")
        };
        assert_eq!(
            (
                expression.key.as_str(),
                expression.operator.as_str(),
                expression.values.as_deref()
            ),
            (
                "gpuslice.dev/device-plugin",
                "In",
                Some(&["true".to_string()][..])
            )
        );
        // The base's GPU-node selector still applies too.
        assert_eq!(
            pod_spec(ds).node_selector,
            pod_spec(daemonset(&base)).node_selector
        );

        // Without that affinity, the overlay is the base.
        for o in &mut overlay {
            if let Object::DaemonSet(ds) = o {
                let spec = ds.spec.template.spec.as_mut().unwrap();
                spec.affinity = None;
            }
        }
        assert_eq!(overlay, base);
    });
}

#[test]
fn the_realtime_overlay_only_adds_a_high_priority_resource() {
    with_each_kubectl(|kubectl| {
        let base = render(kubectl, &layout().join("base"));
        let overlay = render(kubectl, &layout().join("overlays/realtime"));
        let config = configmap(&overlay);
        let settings =
            std::fs::read_to_string(layout().join("overlays/realtime/device-plugin.yaml")).unwrap();
        let data = config.data.as_ref().unwrap();
        assert_eq!(data.get("device-plugin.yaml"), Some(&settings));
        assert_eq!(data.len(), 1);
        // Same name, so the DaemonSet mounts it unchanged.
        let base_config = configmap(&base);
        assert_eq!(config.metadata.name, base_config.metadata.name);
        assert_eq!(config.metadata.namespace, base_config.metadata.namespace);

        // (The plugin's own parser checks these settings in its unit tests.)
        let parsed: serde_norway::Value = serde_norway::from_str(&settings).unwrap();
        let resources = parsed["resources"].as_sequence().unwrap();
        let high: Vec<&str> = resources
            .iter()
            .filter(|r| r["priority"] == "high")
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(high, ["gpuslice.dev/gpu-realtime"]);

        // Everything but the ConfigMap is the base's.
        let others = |objects: &[Object]| -> Vec<Object> {
            objects
                .iter()
                .filter(|o| !matches!(o, Object::ConfigMap(_)))
                .cloned()
                .collect()
        };
        assert_eq!(others(&overlay), others(&base));
    });
}

/// Whether `kubectl`'s kustomize takes directories under `resources`, as docs/kubernetes.md
/// writes them: kubectl 1.21 and later, which report their kustomize version. Before that,
/// kubectl embedded kustomize 2.0.3, which takes them only under `bases`.
fn takes_directories_as_resources(kubectl: &Path) -> bool {
    let out = Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    version.get("kustomizeVersion").is_some()
}

/// The path of `to` from `from`, both absolute: kustomize refuses absolute paths to bases.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    path
}

#[test]
fn a_kustomization_of_your_own_sets_the_image_the_settings_and_monitoring() {
    with_each_kubectl(|kubectl| {
        // As docs/kubernetes.md writes it for a migration: the overlay and the monitoring
        // add-on, settings of one's own in place of the overlay's, and the image that was
        // built and pushed.
        let mine = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let here = mine.path().canonicalize().unwrap();
        let to = |dir: &str| relative(&here, &layout().join(dir)).display().to_string();
        let directories = if takes_directories_as_resources(kubectl) {
            "resources"
        } else {
            "bases"
        };
        let kustomization = format!(
            "{directories}:\n  - {}\n  - {}\n\
             configMapGenerator:\n  - name: gpuslice-device-plugin\n    namespace: gpuslice\n    \
             behavior: replace\n    files:\n      - device-plugin.yaml\n\
             generatorOptions:\n  disableNameSuffixHash: true\n\
             images:\n  - name: gpuslice\n    \
             newName: registry.example.com/gpuslice\n    newTag: \"0.1.0\"\n",
            to("overlays/time-slicing-migration"),
            to("monitoring"),
        );
        std::fs::write(mine.path().join("kustomization.yaml"), kustomization).unwrap();
        let base_settings =
            std::fs::read_to_string(layout().join("base/device-plugin.yaml")).unwrap();
        let settings = base_settings.replace("\nslicesPerGpu: 4\n", "\nslicesPerGpu: 8\n");
        assert_ne!(settings, base_settings);
        std::fs::write(mine.path().join("device-plugin.yaml"), &settings).unwrap();

        let objects = render(kubectl, mine.path());
        let ds = daemonset(&objects);
        for c in all_containers(ds) {
            assert_eq!(
                c.image.as_deref(),
                Some("registry.example.com/gpuslice:0.1.0"),
                "{}",
                c.name
            );
        }
        assert!(pod_spec(ds).affinity.is_some(), "the overlay's affinity");
        let config = configmap(&objects);
        assert_eq!(config.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(
            config.data.as_ref().unwrap().get("device-plugin.yaml"),
            Some(&settings)
        );
        assert_eq!(
            objects
                .iter()
                .filter(|o| matches!(o, Object::PodMonitor(_)))
                .count(),
            1
        );
    });
}

/// Renders `dir` (a kustomization's directory under deploy/kustomize) with the patch
/// docs/kubernetes.md gives after `marker` applied, as the docs say to apply it; the JSON
/// of every object, removed ones (kustomize 2.0.3's empty documents) left out.
pub fn render_with_documented_patch(
    kubectl: &Path,
    dir: &str,
    marker: &str,
) -> Vec<serde_json::Value> {
    let mine = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let here = mine.path().canonicalize().unwrap();
    let directories = if takes_directories_as_resources(kubectl) {
        "resources"
    } else {
        "bases"
    };
    let kustomization = format!(
        "{directories}:\n  - {}\npatchesStrategicMerge:\n  - {marker}\n",
        relative(&here, &layout().join(dir)).display()
    );
    std::fs::write(mine.path().join("kustomization.yaml"), kustomization).unwrap();
    std::fs::write(mine.path().join(marker), documented_yaml(marker)).unwrap();
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(mine.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} kustomize with {marker} failed: {}",
        kubectl.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_norway::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|document| serde_json::Value::deserialize(document).unwrap())
        .filter(|v| !v.is_null() && v != &serde_json::json!({}))
        .collect()
}

#[test]
fn the_unenforced_check_can_be_turned_off_with_the_patch_docs_kubernetes_md_gives() {
    with_each_kubectl(|kubectl| {
        let objects = render_with_documented_patch(kubectl, "base", "no-unenforced-check.yaml");
        let daemonsets: Vec<DaemonSet> = objects
            .iter()
            .filter(|o| o["kind"] == "DaemonSet")
            .map(|o| decode_strictly(o, "the patched DaemonSet"))
            .collect();
        let [ds] = daemonsets.as_slice() else {
            panic!("one DaemonSet: {daemonsets:?}")
        };
        assert_eq!(pod_spec(ds).host_pid, Some(false));
        for c in all_containers(ds) {
            assert!(added_capabilities(c).is_empty(), "{}", c.name);
        }
        // Everything else as the base has it: the patch takes away only what the check needs.
        let base = render(kubectl, &layout().join("base"));
        let mut unpatched = daemonset(&base).clone();
        let spec = unpatched.spec.template.spec.as_mut().unwrap();
        spec.host_pid = Some(false);
        for c in &mut spec.containers {
            if let Some(caps) = c
                .security_context
                .as_mut()
                .and_then(|s| s.capabilities.as_mut())
                && caps.add.is_some()
            {
                caps.add = Some(Vec::new());
            }
        }
        assert_eq!(ds, &unpatched);
    });
}
