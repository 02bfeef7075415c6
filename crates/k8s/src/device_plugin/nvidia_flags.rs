//! The `flags` of NVIDIA's device plugin config: the command-line flags of NVIDIA's plugin
//! and of GPU feature discovery.
//!
//! Flags that say how NVIDIA's plugin hands devices over, finds its driver, runs MPS or
//! labels nodes mean nothing to gpuslice (NVIDIA's CDI spec hands the GPU over, NVML finds
//! it): they are accepted, their values checked as NVIDIA's plugin checks them, and each one
//! present is named at startup with why it is ignored. `deviceIDStrategy` is honoured: it
//! chooses how NVIDIA's CDI device for the GPU is named. A flag this reader does not know
//! (a newer release's) is reported and ignored: none changes what a slice is.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::nvidia_config::{NVIDIA_GPU, NvidiaConfigError, field_error};

/// `flags`: the command-line flags of NVIDIA's plugin and of GPU feature discovery.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flags {
    mig_strategy: Option<String>,
    fail_on_init_error: Option<bool>,
    mps_root: Option<String>,
    nvidia_driver_root: Option<String>,
    nvidia_dev_root: Option<String>,
    gdrcopy_enabled: Option<bool>,
    gds_enabled: Option<bool>,
    mofed_enabled: Option<bool>,
    #[serde(rename = "useNodeFeatureAPI")]
    use_node_feature_api: Option<bool>,
    device_discovery_strategy: Option<String>,
    plugin: Option<PluginFlags>,
    gfd: Option<GfdFlags>,
    /// Flags of newer releases than this reader knows: reported, ignored.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// `flags.plugin`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PluginFlags {
    pass_device_specs: Option<bool>,
    device_list_strategy: Option<OneOrMany>,
    #[serde(rename = "deviceIDStrategy")]
    device_id_strategy: Option<String>,
    cdi_annotation_prefix: Option<String>,
    #[serde(rename = "nvidiaCTKPath")]
    nvidia_ctk_path: Option<String>,
    container_driver_root: Option<String>,
    shared_devices_allocation_policy: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// `flags.gfd`: GPU feature discovery's, none of the plugin's business.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GfdFlags {
    oneshot: Option<bool>,
    no_timestamp: Option<bool>,
    sleep_interval: Option<serde_norway::Value>,
    output_file: Option<String>,
    machine_type_file: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// A string, or a list of them (`deviceListStrategy` takes both).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Reads `flags`: checks the values NVIDIA's plugin checks, notes each one gpuslice ignores,
/// and returns NVIDIA's CDI device name template `deviceIDStrategy` asks for.
pub fn read(flags: &Flags, ignored: &mut Vec<String>) -> Result<Option<String>, NvidiaConfigError> {
    let mut note = |name: &str, value: String, why: &str| {
        ignored.push(format!("flags.{name}: {value}: {why}"));
    };
    if let Some(strategy) = &flags.mig_strategy {
        match strategy.as_str() {
            "none" => {}
            "single" | "mixed" => note(
                "migStrategy",
                strategy.clone(),
                "gpuslice slices whole GPUs and exposes no MIG devices; a GPU in MIG mode \
                 should stay with NVIDIA's device plugin",
            ),
            _ => {
                return Err(field_error(
                    "flags.migStrategy",
                    strategy,
                    "NVIDIA's plugin takes none, single or mixed",
                ));
            }
        }
    }
    let driver_files = "gpuslice leaves the GPU's device nodes and driver files to NVIDIA's \
                        CDI spec (nvidia-ctk cdi generate), which its CDI device names";
    for (name, value) in [
        ("nvidiaDriverRoot", &flags.nvidia_driver_root),
        ("nvidiaDevRoot", &flags.nvidia_dev_root),
    ] {
        if let Some(value) = value {
            note(name, value.clone(), driver_files);
        }
    }
    if let Some(value) = flags.fail_on_init_error {
        note(
            "failOnInitError",
            value.to_string(),
            "gpuslice never exits over a GPU it cannot reach: it reports it and tries again",
        );
    }
    if let Some(value) = &flags.mps_root {
        note("mpsRoot", value.clone(), "gpuslice runs no MPS daemon");
    }
    for (name, value) in [
        ("gdrcopyEnabled", flags.gdrcopy_enabled),
        ("gdsEnabled", flags.gds_enabled),
        ("mofedEnabled", flags.mofed_enabled),
    ] {
        if let Some(value) = value {
            note(
                name,
                value.to_string(),
                "gpuslice injects no GDRCopy, GDS or MOFED devices (NVIDIA's CDI spec may)",
            );
        }
    }
    if let Some(value) = flags.use_node_feature_api {
        note(
            "useNodeFeatureAPI",
            value.to_string(),
            "GPU feature discovery's; gpuslice labels no nodes",
        );
    }
    if let Some(value) = &flags.device_discovery_strategy {
        note(
            "deviceDiscoveryStrategy",
            value.clone(),
            "gpuslice finds GPUs through NVML",
        );
    }
    if let Some(g) = &flags.gfd {
        let mut names: Vec<&str> = [
            ("oneshot", g.oneshot.is_some()),
            ("noTimestamp", g.no_timestamp.is_some()),
            ("sleepInterval", g.sleep_interval.is_some()),
            ("outputFile", g.output_file.is_some()),
            ("machineTypeFile", g.machine_type_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        names.extend(g.unknown.keys().map(String::as_str));
        if !names.is_empty() {
            note(
                "gfd",
                names.join(", "),
                "GPU feature discovery's settings, not the device plugin's",
            );
        }
    }
    for name in flags.unknown.keys() {
        note(
            name,
            "(set)".into(),
            "not a flag gpuslice knows of NVIDIA's plugin (a newer one?)",
        );
    }
    let mut cdi_device = None;
    if let Some(plugin) = &flags.plugin {
        cdi_device = read_plugin_flags(plugin, &mut note)?;
    }
    Ok(cdi_device)
}

/// Reads `flags.plugin`; returns NVIDIA's CDI device name template for `deviceIDStrategy`.
fn read_plugin_flags(
    plugin: &PluginFlags,
    note: &mut impl FnMut(&str, String, &str),
) -> Result<Option<String>, NvidiaConfigError> {
    if let Some(list) = &plugin.device_list_strategy {
        let items = list.items();
        for item in &items {
            if !["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"].contains(item) {
                return Err(field_error(
                    "flags.plugin.deviceListStrategy",
                    *item,
                    "NVIDIA's plugin takes envvar, volume-mounts, cdi-annotations or cdi-cri",
                ));
            }
        }
        if items != ["cdi-cri"] {
            note(
                "plugin.deviceListStrategy",
                items.join(","),
                "gpuslice always hands devices over as CDI devices in the kubelet's answer \
                 (as cdi-cri does): the container runtime must have CDI enabled",
            );
        }
    }
    let cdi_device = match plugin.device_id_strategy.as_deref() {
        None | Some("uuid") => None,
        Some("index") => Some(format!("{NVIDIA_GPU}={{index}}")),
        Some(other) => {
            return Err(field_error(
                "flags.plugin.deviceIDStrategy",
                other,
                "NVIDIA's plugin takes uuid or index",
            ));
        }
    };
    if let Some(policy) = &plugin.shared_devices_allocation_policy {
        match policy.as_str() {
            "packed" => {}
            "distributed" => note(
                "plugin.sharedDevicesAllocationPolicy",
                policy.clone(),
                "gpuslice packs a container's slices onto as few GPUs as it can",
            ),
            _ => {
                return Err(field_error(
                    "flags.plugin.sharedDevicesAllocationPolicy",
                    policy,
                    "NVIDIA's plugin takes distributed or packed",
                ));
            }
        }
    }
    if let Some(value) = plugin.pass_device_specs {
        note(
            "plugin.passDeviceSpecs",
            value.to_string(),
            "NVIDIA's CDI spec passes the GPU's device nodes",
        );
    }
    for (name, value) in [
        ("plugin.cdiAnnotationPrefix", &plugin.cdi_annotation_prefix),
        ("plugin.nvidiaCTKPath", &plugin.nvidia_ctk_path),
        ("plugin.containerDriverRoot", &plugin.container_driver_root),
    ] {
        if let Some(value) = value {
            note(
                name,
                value.clone(),
                "gpuslice writes its own CDI specs and leaves the driver's to nvidia-ctk",
            );
        }
    }
    for name in plugin.unknown.keys() {
        note(
            &format!("plugin.{name}"),
            "(set)".into(),
            "not a flag gpuslice knows of NVIDIA's plugin (a newer one?)",
        );
    }
    Ok(cdi_device)
}

#[cfg(test)]
mod tests {
    use super::super::nvidia_config::{Mps, parse};

    fn ok(text: &str) -> super::super::nvidia_config::Converted {
        parse(text, Mps::Refuse).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn flags_that_mean_nothing_here_are_named_and_device_id_strategy_is_honoured() {
        let c = ok(
            "version: v1\nflags:\n  migStrategy: none\n  failOnInitError: true\n  nvidiaDriverRoot: /run/nvidia/driver\n  futureFlag: 3\n  plugin:\n    passDeviceSpecs: false\n    deviceListStrategy: [envvar, cdi-annotations]\n    deviceIDStrategy: index\n  gfd:\n    oneshot: false\n    sleepInterval: 60s\n",
        );
        assert_eq!(
            c.nvidia_cdi_device.as_deref(),
            Some("nvidia.com/gpu={index}")
        );
        let text = c.ignored.join("\n");
        for name in [
            "flags.failOnInitError: true",
            "flags.nvidiaDriverRoot",
            "flags.futureFlag",
            "flags.plugin.passDeviceSpecs",
            "flags.plugin.deviceListStrategy: envvar,cdi-annotations",
            "flags.gfd: oneshot, sleepInterval",
        ] {
            assert!(text.contains(name), "{name} not in {text}");
        }
        assert!(!text.contains("migStrategy"), "{text}");
    }
}
