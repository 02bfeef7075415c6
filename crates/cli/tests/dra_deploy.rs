//! The DRA driver's manifests: the `dra` overlay of deploy/kustomize rendered as `kubectl
//! apply -k` renders it, and the examples of deploy/examples/dra, every object decoded with
//! the real API types (k8s-openapi, `resource.k8s.io/v1`) and checked against what the
//! driver needs and accepts: its RBAC, its host paths, the DeviceClass it serves, and
//! claims whose capacities and opaque configuration the driver would prepare.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuslice_k8s::dra::config::{Source, TenantConfig};
use gpuslice_ledger::parse_quantity;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Probe, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{
    DeviceClaim, DeviceClass, ResourceClaim, ResourceClaimTemplate,
};
use serde::Deserialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::kustomize::{
    added_capabilities, decode_strictly, label_selector_matches, render_with_documented_patch,
    with_each_kubectl,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every YAML document of `text`, as JSON values.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of the `dra` overlay.
#[derive(Default)]
struct Overlay {
    daemonsets: Vec<DaemonSet>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    device_classes: Vec<DeviceClass>,
}

/// `kubectl kustomize` of `dir` (under deploy/kustomize), every document as JSON.
fn render_dir(kubectl: &Path, dir: &str) -> Vec<serde_json::Value> {
    let dir = repo().join("deploy/kustomize").join(dir);
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{} kustomize {} failed: {}",
        kubectl.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).expect("UTF-8"))
}

fn render(kubectl: &Path) -> Overlay {
    decode_overlay(render_dir(kubectl, "overlays/dra"))
}

/// The objects of a render of the `dra` overlay, decoded.
fn decode_overlay(rendered: Vec<serde_json::Value>) -> Overlay {
    let mut overlay = Overlay::default();
    // kustomize 2.0.3 (kubectl 1.20) renders an object removed by `$patch: delete` as an
    // empty document; current ones leave it out. A kubectl that old cannot talk to a cluster
    // with DRA anyway (1.34+, kubectl within one minor version of it).
    for value in rendered.into_iter().filter(|v| v != &serde_json::json!({})) {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let what = format!("{kind} of the dra overlay");
        match kind.as_str() {
            "Namespace" => drop(decode_strictly::<Namespace>(&value, &what)),
            "ConfigMap" => drop(decode_strictly::<ConfigMap>(&value, &what)),
            "ServiceAccount" => overlay
                .service_accounts
                .push(decode_strictly(&value, &what)),
            "DaemonSet" => overlay.daemonsets.push(decode_strictly(&value, &what)),
            "Service" => overlay.services.push(decode_strictly(&value, &what)),
            "ClusterRole" => overlay.cluster_roles.push(decode_strictly(&value, &what)),
            "ClusterRoleBinding" => overlay.bindings.push(decode_strictly(&value, &what)),
            "DeviceClass" => overlay.device_classes.push(decode_strictly(&value, &what)),
            other => panic!("the dra overlay renders a {other}, which this test does not check"),
        }
    }
    overlay
}

#[test]
fn the_dra_overlay_installs_the_driver_instead_of_the_device_plugin() {
    with_each_kubectl(|kubectl| {
        let overlay = render(kubectl);
        let [ds] = overlay.daemonsets.as_slice() else {
            panic!("one DaemonSet, the driver's, not the device plugin's")
        };
        assert_eq!(ds.metadata.name.as_deref(), Some("gpuslice-dra-driver"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("gpuslice"));
        let pod = ds.spec.template.spec.as_ref().expect("pod spec");
        let account = pod
            .service_account_name
            .as_deref()
            .expect("a service account");
        assert!(
            overlay
                .service_accounts
                .iter()
                .any(|sa| sa.metadata.name.as_deref() == Some(account)),
            "{account} is installed"
        );
        assert_ne!(
            pod.automount_service_account_token,
            Some(false),
            "it needs its token"
        );
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_deref().unwrap_or_default()[0],
            "dra-driver"
        );
        let node_name = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NODE_NAME")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(node_name, Some("spec.nodeName"));
        // Every host path the driver uses, mounted at the same path, writable where it writes.
        for (host, writes) in [
            ("/var/lib/kubelet/plugins", true),
            ("/var/lib/kubelet/plugins_registry", true),
            ("/var/run/cdi", true),
            ("/run/gpuslice", true),
            ("/opt/gpuslice/lib", false),
        ] {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host))
                .unwrap_or_else(|| panic!("no volume of {host}"));
            let mount = container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == volume.name)
                .unwrap_or_else(|| panic!("{host} is not mounted"));
            assert_eq!(mount.mount_path, host);
            assert_eq!(mount.read_only.unwrap_or(false), !writes, "{host}");
        }

        // Probes and metrics on the port the container declares and --metrics-listen names,
        // as the device plugin's: /readyz for readiness, /healthz for liveness.
        let args = container.args.as_deref().unwrap_or_default();
        let listen = args
            .iter()
            .find_map(|a| a.strip_prefix("--metrics-listen="))
            .expect("the driver's args pass --metrics-listen=ADDRESS:PORT");
        let port: i32 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("--metrics-listen={listen} names no port"));
        assert!(
            listen.starts_with("0.0.0.0:"),
            "reachable from Prometheus: {listen}"
        );
        assert_ne!(port, 9400, "DCGM's exporter's port: both run on a GPU node");
        let declared = container.ports.as_deref().unwrap_or_default();
        let metrics_port = declared
            .iter()
            .find(|p| p.container_port == port)
            .unwrap_or_else(|| panic!("port {port} is not declared: {declared:?}"));
        let port_name = metrics_port.name.clone().expect("a named metrics port");
        let probe_path = |probe: Option<&Probe>, what: &str| {
            let get = probe
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("an HTTP {what} probe"));
            let declares = match &get.port {
                IntOrString::String(name) => *name == port_name,
                IntOrString::Int(number) => *number == port,
            };
            assert!(
                declares,
                "the {what} probe's port {:?} is not {port}",
                get.port
            );
            get.path.clone().unwrap_or_default()
        };
        assert_eq!(
            probe_path(container.readiness_probe.as_ref(), "readiness"),
            "/readyz"
        );
        assert_eq!(
            probe_path(container.liveness_probe.as_ref(), "liveness"),
            "/healthz"
        );
        let template = ds.spec.template.metadata.as_ref().expect("pod metadata");
        let annotations = template.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&port.to_string())
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics")
        );
        let pod_labels = template.labels.clone().expect("pod labels");
        // Its metrics Service (the device plugin's goes with the plugin): headless, every
        // driver pod, the metrics port.
        let [service] = overlay.services.as_slice() else {
            panic!(
                "one Service, the driver's: {:?}",
                overlay
                    .services
                    .iter()
                    .map(|s| &s.metadata.name)
                    .collect::<Vec<_>>()
            )
        };
        assert_eq!(
            service.metadata.name.as_deref(),
            Some("gpuslice-dra-driver-metrics")
        );
        assert_eq!(service.metadata.namespace.as_deref(), Some("gpuslice"));
        let spec = service.spec.as_ref().expect("service spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let selector = spec.selector.clone().expect("a selector");
        assert!(
            !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{selector:?} does not select {pod_labels:?}"
        );
        let service_ports = spec.ports.as_deref().unwrap_or_default();
        assert_eq!(service_ports.len(), 1);
        assert_eq!(
            service_ports[0].target_port,
            Some(IntOrString::String(port_name.clone()))
        );
        // The monitoring add-on's PodMonitor scrapes the driver's pods on that port.
        let monitoring = render_dir(kubectl, "monitoring");
        let [monitor] = monitoring.as_slice() else {
            panic!("the add-on is one PodMonitor")
        };
        let selector: LabelSelector =
            decode_strictly(&monitor["spec"]["selector"], "the PodMonitor's selector");
        assert!(
            label_selector_matches(&selector, &pod_labels),
            "the PodMonitor does not select the driver's pods {pod_labels:?}"
        );
        assert_eq!(
            monitor["spec"]["podMetricsEndpoints"][0]["port"].as_str(),
            Some(port_name.as_str())
        );

        // The host's PID namespace and SYS_PTRACE, for the unenforced check alone.
        assert_eq!(pod.host_pid, Some(true));
        assert_eq!(pod.host_network, None);
        assert_eq!(added_capabilities(container), ["SYS_PTRACE"]);
        for init in pod.init_containers.iter().flatten() {
            assert!(added_capabilities(init).is_empty(), "{}", init.name);
        }

        // RBAC: the slices written, the claims read, bound to the driver's account.
        let [role] = overlay.cluster_roles.as_slice() else {
            panic!("one ClusterRole")
        };
        let allows = |resource: &str, verb: &str| {
            role.rules.iter().flatten().any(|r| {
                r.api_groups
                    .iter()
                    .flatten()
                    .any(|g| g == "resource.k8s.io")
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        for verb in ["get", "create", "update"] {
            assert!(allows("resourceslices", verb), "resourceslices {verb}");
        }
        assert!(allows("resourceclaims", "get"));
        assert!(!allows("resourceclaims", "update"), "claims are only read");
        let [binding] = overlay.bindings.as_slice() else {
            panic!("one binding")
        };
        assert_eq!(
            binding.role_ref.name,
            role.metadata.name.clone().unwrap_or_default()
        );
        let subject = &binding.subjects.as_ref().expect("subjects")[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", account, Some("gpuslice"))
        );

        // The DeviceClasses: cluster-scoped, every device of the driver; the second gives
        // priority high, which a claim cannot give itself.
        // By name: kustomize versions order objects of one kind differently (2.0.3 put
        // gpuslice.dev-high first).
        let [first, second] = overlay.device_classes.as_slice() else {
            panic!("two DeviceClasses")
        };
        let named = |name: &str| {
            [first, second]
                .into_iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no DeviceClass {name}"))
        };
        let (class, high) = (named("gpuslice.dev"), named("gpuslice.dev-high"));
        for class in [class, high] {
            assert_eq!(
                class.metadata.namespace, None,
                "a DeviceClass has no namespace"
            );
            let expression = &class
                .spec
                .as_ref()
                .and_then(|s| s.selectors.as_ref())
                .expect("selectors")[0]
                .cel
                .as_ref()
                .expect("CEL")
                .expression;
            assert_eq!(expression, "device.driver == \"gpuslice.dev\"");
        }
        assert!(
            class
                .spec
                .as_ref()
                .and_then(|s| s.config.as_ref())
                .is_none(),
            "the plain class configures nothing"
        );
        let configs = high
            .spec
            .as_ref()
            .and_then(|s| s.config.as_ref())
            .expect("config");
        let mut given = TenantConfig::default();
        for config in configs {
            let opaque = config.opaque.as_ref().expect("opaque");
            assert_eq!(opaque.driver, "gpuslice.dev");
            given = given
                .overlaid_from(&opaque.parameters.0, Source::Class)
                .unwrap_or_else(|e| panic!("gpuslice.dev-high: {e}"));
        }
        assert_eq!(given.priority, Some(gpuslice_ledger::Priority::High));
    });
}

/// Checks the device requests and configuration of a claim's spec against what the driver
/// publishes and accepts.
fn check_claim(devices: &DeviceClaim, what: &str) {
    for request in devices.requests.iter().flatten() {
        let exactly = request
            .exactly
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: exactly"));
        assert!(
            ["gpuslice.dev", "gpuslice.dev-high"].contains(&exactly.device_class_name.as_str()),
            "{what}: a class of the dra overlay"
        );
        let asked = &exactly
            .capacity
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: capacity requests"))
            .requests
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: capacity requests"));
        let memory = parse_quantity(&asked["memory"].0).expect("memory quantity");
        assert_eq!(memory % (256 << 20), 0, "{what}: memory in steps of 256Mi");
        let compute: u32 = asked["compute"]
            .0
            .parse()
            .expect("compute in whole percent");
        assert!((1..=100).contains(&compute), "{what}: compute {compute}");
    }
    for config in devices.config.iter().flatten() {
        let opaque = config
            .opaque
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: opaque"));
        assert_eq!(opaque.driver, "gpuslice.dev");
        TenantConfig::default()
            .overlaid_from(&opaque.parameters.0, Source::Claim)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn the_dra_examples_are_api_objects_whose_claims_the_driver_prepares() {
    let dir = repo().join("deploy/examples/dra");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for file in files {
        let what = file.display().to_string();
        let text = std::fs::read_to_string(&file).expect("read");
        let (mut templates, mut claims, mut pods) = (Vec::new(), Vec::new(), Vec::new());
        for value in documents(&text) {
            match value["kind"].as_str() {
                Some("ResourceClaimTemplate") => {
                    let t: ResourceClaimTemplate = decode_strictly(&value, &what);
                    check_claim(
                        &t.spec
                            .clone()
                            .and_then(|s| s.spec)
                            .and_then(|s| s.devices)
                            .expect("devices"),
                        &what,
                    );
                    templates.push(t.metadata.name.expect("name"));
                }
                Some("ResourceClaim") => {
                    let c: ResourceClaim = decode_strictly(&value, &what);
                    check_claim(
                        &c.spec.clone().expect("spec").devices.expect("devices"),
                        &what,
                    );
                    claims.push(c.metadata.name.expect("name"));
                }
                Some("Pod") => pods.push(decode_strictly::<Pod>(&value, &what)),
                other => panic!("{what}: a {other:?}, which this test does not check"),
            }
        }
        assert!(!pods.is_empty(), "{what}: a pod that uses the claim");
        for pod in pods {
            let spec = pod.spec.expect("pod spec");
            let pod_claims = spec.resource_claims.expect("resourceClaims");
            for c in &pod_claims {
                let known = c
                    .resource_claim_template_name
                    .as_ref()
                    .is_some_and(|t| templates.contains(t))
                    || c.resource_claim_name
                        .as_ref()
                        .is_some_and(|n| claims.contains(n));
                assert!(known, "{what}: {c:?} names a claim or template of the file");
            }
            for container in &spec.containers {
                for used in container
                    .resources
                    .iter()
                    .flat_map(|r| r.claims.iter().flatten())
                {
                    assert!(
                        pod_claims.iter().any(|c| c.name == used.name),
                        "{what}: container {} uses an unknown claim {}",
                        container.name,
                        used.name
                    );
                }
            }
        }
    }
}

#[test]
fn the_drivers_unenforced_check_can_be_turned_off_with_the_patch_docs_kubernetes_md_gives() {
    with_each_kubectl(|kubectl| {
        let patched = decode_overlay(render_with_documented_patch(
            kubectl,
            "overlays/dra",
            "no-unenforced-check-dra.yaml",
        ));
        let [ds] = patched.daemonsets.as_slice() else {
            panic!("one DaemonSet")
        };
        let pod = ds.spec.template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.host_pid, Some(false));
        for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
            assert!(added_capabilities(c).is_empty(), "{}", c.name);
        }
        // The rest as the overlay has it: probes, metrics, mounts.
        let [unpatched] = render(kubectl)
            .daemonsets
            .try_into()
            .expect("one DaemonSet");
        let container = &pod.containers[0];
        let original = &unpatched
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0];
        assert_eq!(container.args, original.args);
        assert_eq!(container.readiness_probe, original.readiness_probe);
        assert_eq!(container.volume_mounts, original.volume_mounts);
    });
}
