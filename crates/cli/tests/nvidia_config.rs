//! NVIDIA's device plugin config, as NVIDIA's docs show it (`tests/nvidia-configs/`): the
//! device plugin started with one against the fake kubelet advertises what NVIDIA's plugin
//! would, gives each slice its part of the GPU, and refuses what NVIDIA's refuses;
//! `gpuslice config convert` prints gpuslice's equivalent, and names what is wrong in a bad
//! file.

use std::path::{Path, PathBuf};

use gpuslice_ledger::GpuUuid;

use crate::plugin::{
    FAKE_GPU1, FakeKubelet, PluginNode, allocate, first_list, runtime, slice, watch,
};
use crate::util::*;

/// One of NVIDIA's example files.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/nvidia-configs")
        .join(name)
}

/// The plugin on a node of two 8 GiB GPUs, with NVIDIA's file `name` as its config.
fn start_with(node: &PluginNode, name: &str) -> crate::plugin::Daemon {
    let config = node.node.dir.path().join(name);
    std::fs::copy(fixture(name), &config).expect("copy the config");
    node.start(&["--config", config.to_str().expect("utf-8")])
}

#[test]
fn plugin_with_nvidias_config_advertises_its_resource_and_refuses_more_than_one_replica() {
    let node = PluginNode::new();
    // 4 replicas of nvidia.com/gpu, failRequestsGreaterThanOne: true.
    let plugin = start_with(&node, "gpu-operator-any.yaml");
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        assert_eq!(registration.resource_name, "nvidia.com/gpu");
        assert_eq!(registration.endpoint, "gpuslice-gpu.sock");
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        let devices = first_list(&mut stream).await;
        assert_eq!(devices.len(), 8, "2 GPUs x 4 replicas: {devices:?}");

        // One replica: a quarter of the GPU, as a gpuslice slice.
        let one = [slice(FAKE_GPU0, 0)];
        allocate(&mut client, &one).await.expect("one replica");
        let quota = node
            .node
            .dir
            .ledger()
            .read_quota(&tenant(&one[0]))
            .expect("quota")
            .expect("a quota file");
        let limits = quota.limits_for(&GpuUuid::parse(FAKE_GPU0).expect("uuid"));
        assert_eq!(limits.memory_bytes, Some(2 * GIB));
        assert_eq!(limits.compute_share_permille, Some(250));

        // Two: refused, as NVIDIA's plugin refuses them, and nothing is created.
        let two = [slice(FAKE_GPU1, 0), slice(FAKE_GPU1, 1)];
        let refused = allocate(&mut client, &two)
            .await
            .expect_err("two replicas were allocated");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("'nvidia.com/gpu: 2' too large"),
            "{refused:?}"
        );
        assert!(!node.node.dir.tenant_exists(&two[0]));
    });
    plugin.wait_for_log("NVIDIA's device plugin config: advertising nvidia.com/gpu");
}

#[test]
fn plugin_with_nvidias_renamed_config_advertises_the_shared_name_and_says_what_it_ignores() {
    let node = PluginNode::new();
    // 3 replicas, renameByDefault: true, devices: [0, 1] (ignored, as NVIDIA ignores it).
    let plugin = start_with(&node, "time-slicing.json");
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        assert_eq!(registration.resource_name, "nvidia.com/gpu.shared");
        assert_eq!(registration.endpoint, "gpuslice-gpu.shared.sock");
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        assert_eq!(
            first_list(&mut stream).await.len(),
            6,
            "2 GPUs x 3 replicas"
        );
        // failRequestsGreaterThanOne is false: two replicas are two thirds of the GPU.
        let two = [slice(FAKE_GPU1, 0), slice(FAKE_GPU1, 1)];
        allocate(&mut client, &two).await.expect("two replicas");
        let quota = node
            .node
            .dir
            .ledger()
            .read_quota(&tenant(&two[0]))
            .expect("quota")
            .expect("a quota file");
        let limits = quota.limits_for(&GpuUuid::parse(FAKE_GPU1).expect("uuid"));
        assert_eq!(limits.memory_bytes, Some(8 * GIB * 2 / 3));
        assert_eq!(limits.compute_share_permille, Some(666));
    });
    plugin.wait_for_log("ignoring sharing.timeSlicing.resources[0].devices: [0, 1]");
}

#[test]
fn plugin_refuses_an_mps_config_and_says_what_to_use_instead() {
    let node = PluginNode::new();
    let mut plugin = start_with(&node, "mps.yaml");
    plugin.wait_for_log("does not use MPS");
    let log = plugin.log();
    assert!(
        log.contains("mps.yaml") && log.contains("sharing.mps"),
        "{log}"
    );
    assert!(log.contains("gpuslice config convert"), "{log}");
    assert!(plugin.running(), "exited over a bad config file");
    assert!(
        !node.kubelet_dir.join("gpuslice-gpu.sock").exists(),
        "served an MPS configuration"
    );
}

#[test]
fn config_convert_prints_the_gpuslice_equivalent_of_nvidias_examples() {
    let dir = TestDir::new();
    for (name, slices, resource) in [
        ("time-slicing.yaml", 10, "nvidia.com/gpu"),
        ("time-slicing-renamed.yaml", 10, "nvidia.com/gpu.shared"),
        ("gpu-operator-any.yaml", 4, "nvidia.com/gpu"),
        ("flags-only.yaml", 1, "nvidia.com/gpu"),
        ("helm-values.yaml", 2, "nvidia.com/gpu"),
        ("time-slicing.json", 3, "nvidia.com/gpu.shared"),
        ("mps.yaml", 10, "nvidia.com/gpu"),
    ] {
        let out = finish(dir.gpuslice(&["config", "convert"]).arg(fixture(name)));
        assert_eq!(out.code, Some(0), "{name}: {out:?}");
        assert!(
            out.stdout.contains(&format!("\nslicesPerGpu: {slices}\n")),
            "{name}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!("  - name: {resource}\n")),
            "{name}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("memory quota"),
            "{name}: {}",
            out.stdout
        );

        // What it printed is a config the plugin reads (in gpuslice's format), and
        // converting it again changes nothing.
        let converted = dir.path().join(format!("{name}.converted.yaml"));
        std::fs::write(&converted, &out.stdout).expect("write");
        let again = finish(dir.gpuslice(&["config", "convert"]).arg(&converted));
        assert_eq!(again.code, Some(0), "{name}: {again:?}");
        assert_eq!(again.stdout, out.stdout, "{name}");
        assert!(
            again.stderr.contains("gpuslice's format already"),
            "{again:?}"
        );
    }
}

#[test]
fn config_convert_names_the_file_and_the_field_of_a_bad_config() {
    let dir = TestDir::new();
    for (text, expected) in [
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n",
            "sharing.timeSlicing.resources[0].replicas: 1: NVIDIA's plugin requires at least 2",
        ),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    renameByDefaults: true\n    resources: [{name: gpu, replicas: 2}]\n",
            "unknown field `renameByDefaults`",
        ),
        ("version: v1\nslicesPerGpu: 2\n", "mixes fields"),
        (
            "version: \"2\"\n",
            "version: 2: NVIDIA's config format has one version, v1",
        ),
    ] {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, text).expect("write");
        let out = finish(dir.gpuslice(&["config", "convert"]).arg(&file));
        assert_eq!(out.code, Some(2), "{text}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(
            out.stderr.contains(&file.display().to_string()) && out.stderr.contains(expected),
            "{text}: {}",
            out.stderr
        );
    }
    let out = finish(
        dir.gpuslice(&["config", "convert"])
            .arg(dir.path().join("missing.yaml")),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("missing.yaml"), "{out:?}");
}

/// YAML merge keys (`<<: *anchor`), which NVIDIA's plugin applies (its YAML library does):
/// gpuslice refused such a file with "unknown field `<<`", so a node whose ConfigMap uses
/// them could not move to gpuslice as it is.
#[test]
fn config_convert_and_the_plugin_apply_yaml_merge_keys_as_nvidias_plugin_does() {
    let dir = TestDir::new();
    let merged = dir.path().join("merged.yaml");
    std::fs::write(
        &merged,
        "version: v1\nsharing:\n  timeSlicing:\n    renameByDefault: false\n    resources:\n    - <<: &gpu {name: nvidia.com/gpu, replicas: 2}\n      replicas: 10\n",
    )
    .expect("write");
    let plain = finish(
        dir.gpuslice(&["config", "convert"])
            .arg(fixture("time-slicing.yaml")),
    );
    let out = finish(dir.gpuslice(&["config", "convert"]).arg(&merged));
    assert_eq!(out.code, Some(0), "{out:?}");
    // What follows the header, which names the file.
    let body = |text: &str| {
        text.split_once("\nslicesPerGpu:")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    };
    assert!(!body(&plain.stdout).is_empty(), "{plain:?}");
    assert_eq!(body(&out.stdout), body(&plain.stdout), "{out:?}");

    let node = PluginNode::new();
    let config = node.node.dir.path().join("merged.yaml");
    std::fs::copy(&merged, &config).expect("copy");
    let _plugin = node.start(&["--config", config.to_str().expect("utf-8")]);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        assert_eq!(registration.resource_name, "nvidia.com/gpu");
        let mut client = kubelet.plugin(&registration.endpoint).await;
        let mut stream = watch(&mut client).await;
        assert_eq!(first_list(&mut stream).await.len(), 20, "2 GPUs x 10");
    });
}
