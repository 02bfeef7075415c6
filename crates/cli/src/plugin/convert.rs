//! `gpuslice config convert FILE`: NVIDIA's device plugin config as gpuslice's, with what
//! gpuslice adds to it (a memory quota and a compute share per slice, a priority) and its
//! defaults said in comments, so that an operator can see and change them.
//!
//! The device plugin reads NVIDIA's file as it is; this is for the step after, when the
//! operator wants what only gpuslice's format can say (another name, a priority, a cap).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};

use crate::cli::ConfigConvertArgs;
use crate::exit::{self, Failure, ResultExt};
use gpuslice_k8s::device_plugin::config::{self, ComputeLimit, Format};
use gpuslice_k8s::device_plugin::nvidia_config::{self, Converted, Mps, Sharing};

/// The width comments are wrapped at.
const WIDTH: usize = 90;

/// Runs `gpuslice config convert`.
pub fn convert(args: &ConfigConvertArgs) -> Result<u8, Failure> {
    let path = &args.file;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))
        .usage()?;
    let format = config::detect(&text)
        .map_err(|message| anyhow!("invalid config file {}: {message}", path.display()))
        .usage()?;
    let out = match format {
        Format::Gpuslice => {
            config::check_gpuslice_text(&text)
                .map_err(|message| anyhow!("invalid config file {}: {message}", path.display()))
                .usage()?;
            eprintln!(
                "gpuslice: {} is in gpuslice's format already; printed as it is",
                path.display()
            );
            text
        }
        Format::Nvidia => {
            let converted = nvidia_config::parse(&text, Mps::Convert)
                .map_err(|e| {
                    anyhow!(
                        "invalid config file {} (NVIDIA device plugin format): {e}",
                        path.display()
                    )
                })
                .usage()?;
            render(&converted, path)
        }
    };
    print!("{out}");
    Ok(exit::OK)
}

/// gpuslice's settings for `converted`, read from `source`, as commented YAML.
pub fn render(converted: &Converted, source: &Path) -> String {
    let mut out = String::new();
    let n = converted.slices_per_gpu;
    let alike = if converted.sharing == Sharing::Mps {
        "The device plugin refuses that file (it runs no MPS daemon) and reads this one."
    } else {
        "The device plugin reads either file alike: the same resource, the same count per GPU."
    };
    comment(
        &mut out,
        "",
        &format!(
            "gpuslice device plugin settings, converted by `gpuslice config convert` from \
             NVIDIA's device plugin config {}. {alike}",
            source.display()
        ),
    );
    out.push_str("#\n");
    let what = match converted.sharing {
        Sharing::TimeSlicing => format!(
            "NVIDIA's time-slicing gives each of the {n} replicas of a GPU all of its memory \
             and no part of its time. gpuslice makes each replica a slice: a container with k \
             of the {n} slices gets a memory quota of k/{n} of the GPU's memory (allocations \
             past it fail with CUDA_ERROR_OUT_OF_MEMORY, and CUDA and nvidia-smi report it as \
             the GPU's total) and a compute share of k/{n} of the GPU's time, guaranteed while \
             others want the GPU, at the resource's priority."
        ),
        Sharing::Mps => format!(
            "From sharing.mps: MPS held each of the {n} clients of a GPU to 1/{n} of its \
             memory and of its threads. gpuslice runs no MPS daemon: a container with k of \
             the {n} slices gets a memory quota of k/{n} of the GPU's memory and k/{n} of its \
             time, capped there (computeLimit: share), at the resource's priority."
        ),
        Sharing::None => "No sharing in NVIDIA's file: each GPU is one slice, given whole to \
                          one container, whose memory quota is the GPU's memory and whose \
                          compute share is all of its time. With slicesPerGpu N above 1, a \
                          container with k slices gets k/N of the memory as its quota and a \
                          compute share of k/N of the time."
            .to_string(),
    };
    comment(&mut out, "", &what);
    out.push('\n');

    let sharing = converted.sharing.field();
    match converted.sharing {
        Sharing::None => comment(&mut out, "", "No sharing: one slice per GPU."),
        _ => comment(
            &mut out,
            "",
            &format!("{sharing}.resources[].replicas: {n}"),
        ),
    }
    let _ = writeln!(out, "slicesPerGpu: {n}");
    out.push('\n');
    out.push_str("resources:\n");
    let name_why = match converted.sharing {
        Sharing::None => format!(
            "The resource NVIDIA's plugin advertises: {}.",
            converted.resource
        ),
        _ => format!(
            "{sharing}.renameByDefault: {}: advertised as {}.",
            converted.rename_by_default, converted.resource
        ),
    };
    comment(&mut out, "  ", &name_why);
    let _ = writeln!(out, "  - name: {}", converted.resource);
    comment(
        &mut out,
        "    ",
        "Added by gpuslice: the priority of the resource's tenants against other tenants, \
         high | normal | low (default normal).",
    );
    out.push_str("    priority: normal\n");
    let limit = match converted.compute_limit {
        ComputeLimit::None => "none",
        ComputeLimit::Share => "share",
    };
    comment(
        &mut out,
        "    ",
        "Added by gpuslice: none lets a tenant use the time others leave idle (its share is \
         what it is guaranteed); share caps it at its share even on an idle GPU (default \
         none).",
    );
    let _ = writeln!(out, "    computeLimit: {limit}");
    match converted.max_slices_per_container {
        Some(max) => {
            let why = match converted.fail_requests_greater_than_one {
                Some(true) => format!("{sharing}.failRequestsGreaterThanOne: true"),
                _ => format!("{sharing}.failRequestsGreaterThanOne is true by default under MPS"),
            };
            comment(
                &mut out,
                "    ",
                &format!(
                    "{why}: a container asking for more than {max} slice is refused, as \
                     NVIDIA's plugin refuses it."
                ),
            );
            let _ = writeln!(out, "    maxSlicesPerContainer: {max}");
        }
        None if converted.sharing != Sharing::None => comment(
            &mut out,
            "    ",
            &format!(
                "{sharing}.failRequestsGreaterThanOne: false: a container may ask for several \
                 slices, and gets k/{n} of the GPU (under NVIDIA's, they gave it no more than \
                 one). maxSlicesPerContainer: 1 refuses that."
            ),
        ),
        None => {}
    }
    out.push('\n');
    if let Some(template) = &converted.nvidia_cdi_device {
        comment(
            &mut out,
            "",
            "flags.plugin.deviceIDStrategy: index: containers are given the GPU by NVIDIA's CDI \
             device of its index.",
        );
        let _ = writeln!(out, "nvidiaCdiDevice: \"{template}\"");
        out.push('\n');
    }
    comment(
        &mut out,
        "",
        "Settings NVIDIA's format has no place for, with their defaults (the DaemonSet's \
         flags override them). The shim has none in a container: give its host path here or \
         with --shim.",
    );
    for line in [
        "shim: /opt/gpuslice/lib/libgpuslice.so",
        "ledgerDir: /run/gpuslice",
        "cdiDir: /var/run/cdi",
        "kubeletDir: /var/lib/kubelet/device-plugins",
        "preload: env",
        "podResourcesSocket: /var/lib/kubelet/pod-resources/kubelet.sock",
        "healthIntervalSeconds: 5",
    ] {
        let _ = writeln!(out, "# {line}");
    }
    if !converted.ignored.is_empty() {
        out.push('\n');
        comment(
            &mut out,
            "",
            "Accepted from NVIDIA's file and ignored by gpuslice (the device plugin says so \
             when it starts):",
        );
        for note in &converted.ignored {
            comment(&mut out, "  - ", note);
        }
    }
    out
}

/// Appends `text` as YAML comment lines wrapped at [`WIDTH`], each starting `# ` after
/// `indent` (the first after `indent` as given; a `- ` in it is followed by two spaces on
/// the next lines).
fn comment(out: &mut String, indent: &str, text: &str) {
    let (first, rest) = match indent.strip_suffix("- ") {
        Some(lead) => (format!("# {lead}- "), format!("# {lead}  ")),
        None => (format!("{indent}# "), format!("{indent}# ")),
    };
    let mut line = first.clone();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = rest.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/nvidia-configs")
            .join(name)
    }

    fn args() -> gpuslice_k8s::device_plugin::Args {
        let argv = [
            "gpuslice",
            "device-plugin",
            "--shim",
            "/opt/gpuslice/lib/libgpuslice.so",
        ];
        match Cli::try_parse_from(argv).unwrap().command {
            Command::DevicePlugin(a) => a.plugin,
            _ => unreachable!(),
        }
    }

    /// NVIDIA's examples: what the plugin makes of each (slices per GPU, the resource, the
    /// most slices per container, NVIDIA's CDI device, words among the ignored settings).
    #[test]
    fn nvidias_example_files_are_read_as_nvidias_plugin_reads_them() {
        for (name, slices, resource, max, cdi, ignored) in [
            (
                "time-slicing.yaml",
                10,
                "nvidia.com/gpu",
                None,
                None,
                &[][..],
            ),
            (
                "time-slicing-renamed.yaml",
                10,
                "nvidia.com/gpu.shared",
                None,
                None,
                &[],
            ),
            (
                "gpu-operator-any.yaml",
                4,
                "nvidia.com/gpu",
                Some(1),
                None,
                &[],
            ),
            (
                "flags-only.yaml",
                1,
                "nvidia.com/gpu",
                None,
                None,
                &[
                    "flags.failOnInitError",
                    "flags.nvidiaDriverRoot",
                    "flags.plugin.passDeviceSpecs",
                    "deviceListStrategy: envvar",
                ],
            ),
            (
                "helm-values.yaml",
                2,
                "nvidia.com/gpu",
                None,
                Some("nvidia.com/gpu={index}"),
                &[
                    "flags.migStrategy: single",
                    "flags.failOnInitError: false",
                    "flags.nvidiaDriverRoot: /run/nvidia/driver",
                    "flags.useNodeFeatureAPI",
                    "flags.gfd: oneshot, noTimestamp, sleepInterval, outputFile",
                    "deviceListStrategy: envvar,cdi-annotations",
                    "plugin.passDeviceSpecs: true",
                    "plugin.nvidiaCTKPath",
                    "plugin.containerDriverRoot",
                    "resources (renaming",
                    "rename: gpu-small",
                ],
            ),
            (
                "time-slicing.json",
                3,
                "nvidia.com/gpu.shared",
                None,
                None,
                &["devices: [0, 1]"],
            ),
        ] {
            let path = fixture(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let c =
                config::load_text(&text, &path, &args()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.format, Format::Nvidia, "{name}");
            assert_eq!(c.slices_per_gpu, slices, "{name}");
            assert_eq!(c.resources.len(), 1, "{name}");
            assert_eq!(c.resources[0].name, resource, "{name}");
            assert_eq!(c.resources[0].slices, slices, "{name}");
            assert_eq!(c.resources[0].max_slices_per_container, max, "{name}");
            let expected_cdi = cdi.unwrap_or(config::DEFAULT_NVIDIA_DEVICE);
            assert_eq!(c.nvidia_cdi_device.as_deref(), Some(expected_cdi), "{name}");
            let notes = c.ignored.join("\n");
            for words in ignored {
                assert!(notes.contains(words), "{name}: {words:?} not in\n{notes}");
            }
            assert_eq!(c.ignored.len(), ignored.len(), "{name}: {notes}");
        }
    }

    /// Every example converts to a file in gpuslice's format that the plugin reads into the
    /// same settings as NVIDIA's file.
    #[test]
    fn converted_files_give_the_plugin_the_same_settings() {
        for name in [
            "time-slicing.yaml",
            "time-slicing-renamed.yaml",
            "gpu-operator-any.yaml",
            "flags-only.yaml",
            "helm-values.yaml",
            "time-slicing.json",
        ] {
            let path = fixture(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let converted = nvidia_config::parse(&text, Mps::Convert).unwrap();
            let rendered = render(&converted, &path);
            for line in rendered.lines() {
                assert!(line.chars().count() <= WIDTH, "{name}: {line:?}");
            }
            let from_nvidia = config::load_text(&text, &path, &args()).unwrap();
            let from_gpuslice = config::load_text(&rendered, Path::new("converted.yaml"), &args())
                .unwrap_or_else(|e| panic!("{name}: {e}\n{rendered}"));
            assert_eq!(from_gpuslice.format, Format::Gpuslice);
            assert_eq!(
                from_gpuslice.resources, from_nvidia.resources,
                "{name}\n{rendered}"
            );
            assert_eq!(
                from_gpuslice.slices_per_gpu, from_nvidia.slices_per_gpu,
                "{name}"
            );
            assert_eq!(
                from_gpuslice.nvidia_cdi_device, from_nvidia.nvidia_cdi_device,
                "{name}"
            );
            for added in [
                "memory quota",
                "compute share",
                "priority: normal",
                "computeLimit:",
            ] {
                assert!(
                    rendered.contains(added),
                    "{name}: no {added:?} in\n{rendered}"
                );
            }
            for note in &from_nvidia.ignored {
                let first_words: String = note
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(
                    rendered.contains(&first_words),
                    "{name}: {note} not said in\n{rendered}"
                );
            }
        }
    }

    #[test]
    fn mps_is_refused_by_the_plugin_and_converted_to_capped_slices() {
        let path = fixture("mps.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let err = config::load_text(&text, &path, &args())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mps.yaml")
                && err.contains("sharing.mps")
                && err.contains("does not use MPS"),
            "{err}"
        );
        assert!(err.contains("gpuslice config convert"), "{err}");
        let rendered = render(&nvidia_config::parse(&text, Mps::Convert).unwrap(), &path);
        let c = config::load_text(&rendered, Path::new("converted.yaml"), &args()).unwrap();
        assert_eq!(c.slices_per_gpu, 10);
        assert_eq!(c.resources[0].compute_limit, ComputeLimit::Share);
        assert_eq!(c.resources[0].max_slices_per_container, Some(1));
        assert!(rendered.contains("MPS held each"), "{rendered}");
    }

    #[test]
    fn comments_wrap_and_keep_their_indent() {
        let mut out = String::new();
        comment(&mut out, "    ", &"word ".repeat(40));
        for line in out.lines() {
            assert!(line.starts_with("    # word"), "{line:?}");
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        let mut out = String::new();
        comment(&mut out, "  - ", &"word ".repeat(40));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("#   - word"), "{out}");
        assert!(lines[1].starts_with("#     word"), "{out}");
    }
}
