//! The device plugin's settings: a YAML (or JSON) file, usually a ConfigMap, with flags on
//! top. Every value is checked before the plugin starts, and an error names the file, the
//! field and what it accepts.
//!
//! The file is in gpuslice's format, or in NVIDIA's device plugin's (`version: v1`,
//! `sharing.timeSlicing`: [`nvidia_config`](super::nvidia_config)), told apart by the
//! fields only NVIDIA's has; a file with fields of both is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuslice_ledger::Priority;
use serde::Deserialize;

use super::nvidia_config::{self, Converted, NvidiaConfigError};
use crate::cdi::{Layout, Preload, is_device_template};

/// `gpuslice device-plugin`'s flags (the command adds how it logs); each one, where given,
/// overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Settings file (YAML or JSON); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Slices each GPU is cut into [default: 4]
    #[arg(long, value_name = "N")]
    pub slices_per_gpu: Option<u32>,

    /// Ledger directory on the host [default: /run/gpuslice]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The shim on the host [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// How containers preload the shim [default: env]
    #[arg(long, value_enum)]
    pub preload: Option<crate::cdi::Preload>,

    /// Where CDI specs of allocations are written [default: /var/run/cdi]
    #[arg(long, value_name = "DIR")]
    pub cdi_dir: Option<PathBuf>,

    /// The kubelet's device plugin directory [default: /var/lib/kubelet/device-plugins]
    #[arg(long, value_name = "DIR")]
    pub kubelet_dir: Option<PathBuf>,

    /// NVIDIA's CDI device per GPU, {uuid} or {index}; "" for none [default: nvidia.com/gpu={uuid}]
    #[arg(long, value_name = "TEMPLATE")]
    pub nvidia_cdi_device: Option<String>,

    /// Milliseconds between GPU health checks [default: 5000]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub health_interval_ms: Option<u64>,

    /// Serve Prometheus metrics, /healthz and /readyz at this address (e.g. 0.0.0.0:10400)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// The kubelet's pod resources socket, "" for none [default: /var/lib/kubelet/pod-resources/kubelet.sock]
    #[arg(long, value_name = "PATH", value_parser = parse_path_or_none)]
    pub pod_resources_socket: Option<PathBuf>,

    /// Where the shim is when neither `--shim` nor the file says (the command looks next to
    /// itself); asked at each load of the settings.
    #[arg(skip)]
    pub find_shim: Option<fn() -> Option<PathBuf>>,
}

/// The value parser of a path flag whose `""` means "none": clap's own refuses an empty
/// path.
fn parse_path_or_none(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

/// The resource advertised when the file names none.
pub const DEFAULT_RESOURCE: &str = "gpuslice.dev/gpu";
/// Slices per GPU when neither the file nor a flag says.
pub const DEFAULT_SLICES_PER_GPU: u32 = 4;
/// The most slices a GPU may be cut into (a slice's share is stored in permille).
pub const MAX_SLICES_PER_GPU: u32 = 100;
/// The kubelet's device plugin directory.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Where CDI specs for allocations are written (a directory CDI runtimes read).
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// NVIDIA's CDI device for a GPU, as `nvidia-ctk cdi generate` names it.
pub const DEFAULT_NVIDIA_DEVICE: &str = "nvidia.com/gpu={uuid}";
/// How often GPU health is checked.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// The kubelet's pod resources socket.
pub const DEFAULT_POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// How often tenants and CDI specs are swept.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How old an allocation must be before the pod resources API's word removes it.
pub const DEFAULT_CLEANUP_GRACE: Duration = Duration::from_secs(120);

/// The settings file, as written (camelCase keys, every one optional).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    slices_per_gpu: Option<u32>,
    resources: Option<Vec<FileResource>>,
    ledger_dir: Option<PathBuf>,
    ledger_container_dir: Option<PathBuf>,
    shim: Option<PathBuf>,
    shim_container_path: Option<PathBuf>,
    preload: Option<Preload>,
    cdi_dir: Option<PathBuf>,
    kubelet_dir: Option<PathBuf>,
    nvidia_cdi_device: Option<String>,
    health_interval_seconds: Option<f64>,
    metrics_listen: Option<String>,
    pod_resources_socket: Option<PathBuf>,
    sweep_interval_seconds: Option<f64>,
    cleanup_grace_seconds: Option<f64>,
}

/// One resource in the file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileResource {
    name: String,
    slices: Option<u32>,
    priority: Option<PriorityName>,
    compute_limit: Option<ComputeLimit>,
    max_slices_per_container: Option<u32>,
}

/// The top-level fields of gpuslice's format (those of [`File`]), to name them in a file
/// that mixes them with NVIDIA's.
const GPUSLICE_FIELDS: [&str; 15] = [
    "slicesPerGpu",
    "resources",
    "ledgerDir",
    "ledgerContainerDir",
    "shim",
    "shimContainerPath",
    "preload",
    "cdiDir",
    "kubeletDir",
    "nvidiaCdiDevice",
    "healthIntervalSeconds",
    "metricsListen",
    "podResourcesSocket",
    "sweepIntervalSeconds",
    "cleanupGraceSeconds",
];

/// The format a settings file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gpuslice's own.
    Gpuslice,
    /// NVIDIA's device plugin's (`version: v1`).
    Nvidia,
}

/// A settings file, read: gpuslice's settings, and what of NVIDIA's was accepted and
/// ignored.
#[derive(Debug)]
struct Read {
    file: File,
    format: Format,
    ignored: Vec<String>,
}

/// A priority as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    /// `high`.
    High,
    /// `normal`.
    Normal,
    /// `low`.
    Low,
}

/// Whether a tenant's kernel time is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeLimit {
    /// No cap: a tenant may use time others leave idle (its share is what it is guaranteed).
    #[default]
    None,
    /// Capped at its share (k of N slices: k/N of the time even when the GPU is idle).
    Share,
}

/// One advertised resource: a name and the slices of each GPU that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The extended resource name, e.g. `gpuslice.dev/gpu`.
    pub name: String,
    /// The slice indexes of each GPU that this resource advertises (`first..first+count`).
    pub first_slice: u32,
    /// How many.
    pub slices: u32,
    /// The priority its tenants get.
    pub priority: Priority,
    /// Whether its tenants are capped at their share.
    pub compute_limit: ComputeLimit,
    /// The most slices one container may have (`None`: any number).
    pub max_slices_per_container: Option<u32>,
}

impl Resource {
    /// The kubelet socket file name of this resource's plugin: `gpuslice-<name part>.sock`.
    pub fn socket_name(&self) -> String {
        let class = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("gpuslice-{class}.sock")
    }

    /// Whether slice `index` of a GPU belongs to this resource.
    pub fn owns(&self, index: u32) -> bool {
        (self.first_slice..self.first_slice + self.slices).contains(&index)
    }
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Slices each GPU is cut into, over all resources.
    pub slices_per_gpu: u32,
    /// The resources, whose slices partition each GPU's.
    pub resources: Vec<Resource>,
    /// Where the ledger and the shim are, on the host and in containers.
    pub layout: Layout,
    /// Where per-allocation CDI specs are written.
    pub cdi_dir: PathBuf,
    /// The kubelet's device plugin directory (its `kubelet.sock` and the plugins' sockets).
    pub kubelet_dir: PathBuf,
    /// NVIDIA's CDI device name for a GPU, with `{uuid}` or `{index}`; `None` to leave it out.
    pub nvidia_cdi_device: Option<String>,
    /// How often GPU health is checked.
    pub health_interval: Duration,
    /// Where to serve Prometheus metrics; `None` for nowhere.
    pub metrics_listen: Option<String>,
    /// The kubelet's pod resources socket; `None` not to ask it.
    pub pod_resources_socket: Option<PathBuf>,
    /// How often tenants and CDI specs are swept.
    pub sweep_interval: Duration,
    /// How old an allocation must be before the pod resources API's word removes it.
    pub cleanup_grace: Duration,
    /// The format of the file (gpuslice's without one).
    pub format: Format,
    /// Settings of NVIDIA's format that were accepted and are ignored, each with why.
    pub ignored: Vec<String>,
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read the config file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the settings.
    #[error("invalid config file {}: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// The file is in NVIDIA's device plugin format, and something in it cannot be used.
    #[error("invalid config file {} (NVIDIA device plugin format): {source}", .path.display())]
    Nvidia {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: NvidiaConfigError,
    },
    /// A value is out of range or malformed.
    #[error("invalid {field} {value:?} (in {origin}): expected {expected}")]
    Value {
        /// The field or flag.
        field: &'static str,
        /// The value found.
        value: String,
        /// The file, or "flags".
        origin: String,
        /// What is accepted.
        expected: String,
    },
}

impl Config {
    /// The settings: the file `args.config` names (if any), then the flags over it.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let (read, origin) = match &args.config {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (
                Read {
                    file: File::default(),
                    format: Format::Gpuslice,
                    ignored: Vec::new(),
                },
                "flags".to_string(),
            ),
        };
        resolve_read(read, args, &origin)
    }
}

/// [`resolve`], keeping what the file's reading found.
fn resolve_read(read: Read, args: &Args, origin: &str) -> Result<Config, ConfigError> {
    let mut config = resolve(read.file, args, origin)?;
    config.format = read.format;
    config.ignored = read.ignored;
    Ok(config)
}

/// Reads and parses the settings file.
fn read_file(path: &Path) -> Result<Read, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses settings text (YAML, of which JSON is a subset) in either format. An empty file is
/// all defaults.
fn parse(text: &str, path: &Path) -> Result<Read, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let format = detect(text).map_err(parse_error)?;
    match format {
        Format::Gpuslice => {
            let file = if text.trim().is_empty() {
                File::default()
            } else {
                nvidia_config::from_yaml(text).map_err(|e| parse_error(e.to_string()))?
            };
            Ok(Read {
                file,
                format,
                ignored: Vec::new(),
            })
        }
        Format::Nvidia => {
            let converted =
                nvidia_config::parse(text, nvidia_config::Mps::Refuse).map_err(|source| {
                    ConfigError::Nvidia {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
            let ignored = converted.ignored.clone();
            Ok(Read {
                file: File::from_nvidia(converted),
                format,
                ignored,
            })
        }
    }
}

/// The format of settings text: NVIDIA's when it has a field only NVIDIA's format has,
/// gpuslice's otherwise (text that is not a mapping is left to gpuslice's parser to refuse).
/// An error for a file with fields of both.
pub fn detect(text: &str) -> Result<Format, String> {
    if text.trim().is_empty() {
        return Ok(Format::Gpuslice);
    }
    let value: serde_norway::Value = nvidia_config::from_yaml(text).map_err(|e| e.to_string())?;
    let Some(mapping) = value.as_mapping() else {
        return Ok(Format::Gpuslice);
    };
    if !nvidia_config::is_nvidia_format(mapping) {
        return Ok(Format::Gpuslice);
    }
    let keys: Vec<&str> = mapping
        .keys()
        .filter_map(serde_norway::Value::as_str)
        .collect();
    // `resources` is in both formats: a list is gpuslice's, a mapping NVIDIA's.
    let ours: Vec<&str> = mapping
        .iter()
        .filter_map(|(key, value)| {
            let key = key.as_str()?;
            let gpuslices = GPUSLICE_FIELDS.contains(&key)
                && (!nvidia_config::TOP_LEVEL_FIELDS.contains(&key) || value.is_sequence());
            gpuslices.then_some(key)
        })
        .collect();
    if !ours.is_empty() {
        let theirs: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| nvidia_config::TOP_LEVEL_FIELDS.contains(k) && !ours.contains(k))
            .collect();
        return Err(format!(
            "it mixes fields of NVIDIA's device plugin format ({}) with gpuslice's ({}); a \
             file is in one format or the other (gpuslice config convert turns NVIDIA's into \
             gpuslice's)",
            theirs.join(", "),
            ours.join(", ")
        ));
    }
    Ok(Format::Nvidia)
}

/// The settings in `text` (of the file `path`) with flags `args`, as [`Config::load`] makes
/// them from a file.
pub fn load_text(text: &str, path: &Path, args: &Args) -> Result<Config, ConfigError> {
    resolve_read(parse(text, path)?, args, &path.display().to_string())
}

/// Whether text in gpuslice's format parses (its values are checked when they are resolved);
/// the parser's message if not.
pub fn check_gpuslice_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Ok(());
    }
    nvidia_config::from_yaml::<File>(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl File {
    /// gpuslice's settings for what a file in NVIDIA's format says.
    fn from_nvidia(converted: Converted) -> File {
        File {
            slices_per_gpu: Some(converted.slices_per_gpu),
            resources: Some(vec![FileResource {
                name: converted.resource,
                slices: None,
                priority: None,
                compute_limit: Some(converted.compute_limit),
                max_slices_per_container: converted.max_slices_per_container,
            }]),
            nvidia_cdi_device: converted.nvidia_cdi_device,
            ..File::default()
        }
    }
}

/// The file's values, with the flags over them, checked.
fn resolve(file: File, args: &Args, origin: &str) -> Result<Config, ConfigError> {
    let bad = |field: &'static str, value: String, expected: &str| ConfigError::Value {
        field,
        value,
        origin: origin.to_string(),
        expected: expected.to_string(),
    };
    let slices_per_gpu = args
        .slices_per_gpu
        .or(file.slices_per_gpu)
        .unwrap_or(DEFAULT_SLICES_PER_GPU);
    if !(1..=MAX_SLICES_PER_GPU).contains(&slices_per_gpu) {
        return Err(bad(
            "slicesPerGpu",
            slices_per_gpu.to_string(),
            &format!("1 to {MAX_SLICES_PER_GPU}"),
        ));
    }
    let resources = resources(file.resources, slices_per_gpu, &bad)?;

    let ledger_host = args
        .dir
        .clone()
        .or(file.ledger_dir)
        .unwrap_or_else(|| PathBuf::from(gpuslice_ledger::DEFAULT_DIR));
    let shim_host = args
        .shim
        .clone()
        .or(file.shim)
        .or_else(|| args.find_shim.and_then(|find| find()))
        .ok_or_else(|| {
            bad(
                "shim",
                String::new(),
                "the host path of libgpuslice.so (the `shim` field or --shim)",
            )
        })?;
    let layout = Layout {
        ledger_container: file
            .ledger_container_dir
            .unwrap_or_else(|| ledger_host.clone()),
        shim_container: file
            .shim_container_path
            .unwrap_or_else(|| shim_host.clone()),
        ledger_host,
        shim_host,
        preload: args.preload.or(file.preload).unwrap_or_default(),
    };
    for (field, path) in [
        ("ledgerDir", &layout.ledger_host),
        ("ledgerContainerDir", &layout.ledger_container),
        ("shim", &layout.shim_host),
        ("shimContainerPath", &layout.shim_container),
    ] {
        // CDI specs are UTF-8 text: a path that is not would be written as another path.
        if !path.is_absolute() || path.to_str().is_none_or(|p| p.contains([' ', ':'])) {
            return Err(bad(
                field,
                path.display().to_string(),
                "an absolute path of UTF-8 text without spaces or ':'",
            ));
        }
    }

    let nvidia_cdi_device = match args.nvidia_cdi_device.clone().or(file.nvidia_cdi_device) {
        None => Some(DEFAULT_NVIDIA_DEVICE.to_string()),
        Some(t) if t.is_empty() => None,
        Some(t) if is_device_template(&t) => Some(t),
        Some(t) => {
            return Err(bad(
                "nvidiaCdiDevice",
                t,
                "a CDI device name with {uuid} or {index}, such as nvidia.com/gpu={uuid}, \
                 or \"\" to leave NVIDIA's device out",
            ));
        }
    };

    let seconds = |field: &'static str,
                   value: Option<f64>,
                   range: std::ops::RangeInclusive<f64>,
                   default: Duration| match value {
        None => Ok(default),
        Some(s) if s.is_finite() && range.contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(bad(
            field,
            s.to_string(),
            &format!("{} to {} (seconds)", range.start(), range.end()),
        )),
    };
    let sweep_interval = seconds(
        "sweepIntervalSeconds",
        file.sweep_interval_seconds,
        0.1..=3600.0,
        DEFAULT_SWEEP_INTERVAL,
    )?;
    let cleanup_grace = seconds(
        "cleanupGraceSeconds",
        file.cleanup_grace_seconds,
        0.0..=86400.0,
        DEFAULT_CLEANUP_GRACE,
    )?;
    let pod_resources_socket = match args
        .pod_resources_socket
        .clone()
        .or(file.pod_resources_socket)
    {
        None => Some(PathBuf::from(DEFAULT_POD_RESOURCES_SOCKET)),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p),
    };

    let health_interval = match args.health_interval_ms {
        Some(ms) => Duration::from_millis(ms),
        None => match file.health_interval_seconds {
            None => DEFAULT_HEALTH_INTERVAL,
            Some(s) if s.is_finite() && (0.01..=3600.0).contains(&s) => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(bad("healthIntervalSeconds", s.to_string(), "0.01 to 3600"));
            }
        },
    };

    Ok(Config {
        slices_per_gpu,
        resources,
        layout,
        cdi_dir: args
            .cdi_dir
            .clone()
            .or(file.cdi_dir)
            .unwrap_or_else(|| DEFAULT_CDI_DIR.into()),
        kubelet_dir: args
            .kubelet_dir
            .clone()
            .or(file.kubelet_dir)
            .unwrap_or_else(|| DEFAULT_KUBELET_DIR.into()),
        nvidia_cdi_device,
        health_interval,
        metrics_listen: args
            .metrics_listen
            .clone()
            .or(file.metrics_listen)
            .filter(|a| !a.is_empty()),
        pod_resources_socket,
        sweep_interval,
        cleanup_grace,
        format: Format::Gpuslice,
        ignored: Vec::new(),
    })
}

/// The resources, their slices laid out one after another on each GPU. Without a list, one
/// resource, `gpuslice.dev/gpu`, has every slice; with one, the counts must add up to
/// `slices_per_gpu` (a single resource without a count takes them all).
fn resources(
    listed: Option<Vec<FileResource>>,
    slices_per_gpu: u32,
    bad: &impl Fn(&'static str, String, &str) -> ConfigError,
) -> Result<Vec<Resource>, ConfigError> {
    let listed = listed.unwrap_or_else(|| {
        vec![FileResource {
            name: DEFAULT_RESOURCE.to_string(),
            slices: None,
            priority: None,
            compute_limit: None,
            max_slices_per_container: None,
        }]
    });
    if listed.is_empty() {
        return Err(bad(
            "resources",
            "[]".into(),
            "at least one resource (or no `resources` field)",
        ));
    }
    let single = listed.len() == 1;
    let mut names = HashSet::new();
    let mut next = 0u32;
    let mut out = Vec::new();
    for r in listed {
        if !is_resource_name(&r.name) {
            return Err(bad(
                "resources[].name",
                r.name,
                "an extended resource name such as gpuslice.dev/gpu (a DNS domain, '/', \
                 and a name of letters, digits, '-', '_' and '.')",
            ));
        }
        if !names.insert(r.name.clone()) {
            return Err(bad("resources[].name", r.name, "each resource once"));
        }
        let slices = match (r.slices, single) {
            (Some(n), _) => n,
            (None, true) => slices_per_gpu,
            (None, false) => {
                return Err(bad(
                    "resources[].slices",
                    format!("(missing for {})", r.name),
                    "a count for every resource when there are several",
                ));
            }
        };
        if slices == 0 {
            return Err(bad(
                "resources[].slices",
                format!("0 (for {})", r.name),
                "at least 1",
            ));
        }
        if r.max_slices_per_container == Some(0) {
            return Err(bad(
                "resources[].maxSlicesPerContainer",
                format!("0 (for {})", r.name),
                "at least 1, or no field for any number",
            ));
        }
        out.push(Resource {
            name: r.name,
            first_slice: next,
            slices,
            priority: match r.priority {
                Some(PriorityName::High) => Priority::High,
                Some(PriorityName::Low) => Priority::Low,
                Some(PriorityName::Normal) | None => Priority::Normal,
            },
            compute_limit: r.compute_limit.unwrap_or_default(),
            max_slices_per_container: r.max_slices_per_container,
        });
        next = next.saturating_add(slices);
    }
    if next != slices_per_gpu {
        return Err(bad(
            "resources[].slices",
            format!("{next} in all"),
            &format!("counts that add up to slicesPerGpu ({slices_per_gpu})"),
        ));
    }
    Ok(out)
}

/// `domain/name`: a DNS subdomain, a slash, and a name of `[A-Za-z0-9._-]` that starts and
/// ends with a letter or digit (what Kubernetes accepts as an extended resource).
fn is_resource_name(name: &str) -> bool {
    let Some((domain, class)) = name.split_once('/') else {
        return false;
    };
    let label_ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    domain.contains('.')
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|l| label_ok(l, &[]) && l == l.to_ascii_lowercase())
        && label_ok(class, &['_', '.'])
}

/// `gpuslice device-plugin ...` parsed as the command parses it, for tests: the command's
/// logging flags are accepted and dropped.
#[cfg(test)]
pub(crate) mod test_cli {
    use std::ffi::OsString;

    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(name = "gpuslice")]
    enum Cli {
        DevicePlugin {
            #[command(flatten)]
            args: super::Args,
            #[arg(long)]
            log_level: Option<String>,
            #[arg(long)]
            log_format: Option<String>,
        },
    }

    /// The device plugin's flags in `argv` (`gpuslice device-plugin FLAGS...`).
    pub(crate) fn parse<I, T>(argv: I) -> Result<super::Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let Cli::DevicePlugin { args, .. } = Cli::try_parse_from(argv)?;
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "gpuslice",
            "device-plugin",
            "--shim",
            "/opt/gpuslice/libgpuslice.so",
        ];
        argv.extend_from_slice(extra);
        test_cli::parse(argv).unwrap()
    }

    fn from_text(text: &str, extra: &[&str]) -> Result<Config, ConfigError> {
        let read = parse(text, Path::new("test.yaml"))?;
        resolve_read(read, &args(extra), "test.yaml")
    }

    /// Issue 15, item 8: a path that is not UTF-8 would be written into CDI specs as
    /// another path.
    #[test]
    fn a_ledger_dir_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::OsStr::from_bytes(b"/run/gpu\xffslice");
        let argv = [
            std::ffi::OsStr::new("gpuslice"),
            std::ffi::OsStr::new("device-plugin"),
            std::ffi::OsStr::new("--shim"),
            std::ffi::OsStr::new("/opt/gpuslice/libgpuslice.so"),
            std::ffi::OsStr::new("--dir"),
            dir,
        ];
        let args = test_cli::parse(argv).unwrap();
        let err = resolve(File::default(), &args, "flags")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ledgerDir") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn defaults_are_four_slices_of_gpuslice_dev_gpu() {
        let c = from_text("", &[]).unwrap();
        assert_eq!(c.slices_per_gpu, 4);
        assert_eq!(c.resources.len(), 1);
        let r = &c.resources[0];
        assert_eq!(
            (r.name.as_str(), r.first_slice, r.slices),
            ("gpuslice.dev/gpu", 0, 4)
        );
        assert_eq!(r.priority, Priority::Normal);
        assert_eq!(r.socket_name(), "gpuslice-gpu.sock");
        assert_eq!(c.layout.ledger_host, Path::new("/run/gpuslice"));
        assert_eq!(c.cdi_dir, Path::new("/var/run/cdi"));
        assert_eq!(
            c.nvidia_cdi_device.as_deref(),
            Some("nvidia.com/gpu={uuid}")
        );
        assert_eq!(c.metrics_listen, None);
        assert_eq!(
            c.pod_resources_socket.as_deref(),
            Some(Path::new("/var/lib/kubelet/pod-resources/kubelet.sock"))
        );
        assert_eq!(c.sweep_interval, Duration::from_secs(30));
        assert_eq!(c.cleanup_grace, Duration::from_secs(120));
        let c = from_text("podResourcesSocket: \"\"\ncleanupGraceSeconds: 0", &[]).unwrap();
        assert_eq!(c.pod_resources_socket, None);
        assert_eq!(c.cleanup_grace, Duration::ZERO);
    }

    /// Issue 16, item 6: `--pod-resources-socket ""` was documented as turning the lookup
    /// off, and clap refused the empty path.
    #[test]
    fn an_empty_pod_resources_socket_flag_turns_the_lookup_off() {
        let c = from_text("", &["--pod-resources-socket", ""]).unwrap();
        assert_eq!(c.pod_resources_socket, None);
        let c = from_text(
            "podResourcesSocket: /elsewhere.sock",
            &["--pod-resources-socket", ""],
        )
        .unwrap();
        assert_eq!(c.pod_resources_socket, None, "the flag overrides the file");
        let c = from_text("", &["--pod-resources-socket", "/run/pr.sock"]).unwrap();
        assert_eq!(
            c.pod_resources_socket.as_deref(),
            Some(Path::new("/run/pr.sock"))
        );
    }

    #[test]
    fn resources_partition_each_gpus_slices_and_flags_override_the_file() {
        let text = "\
slicesPerGpu: 4
resources:
  - name: gpuslice.dev/gpu
    slices: 3
  - name: gpuslice.dev/gpu-realtime
    slices: 1
    priority: high
    computeLimit: share
nvidiaCdiDevice: \"\"
healthIntervalSeconds: 0.5
";
        let c = from_text(text, &["--cdi-dir", "/tmp/cdi"]).unwrap();
        let rt = &c.resources[1];
        assert_eq!((rt.first_slice, rt.slices), (3, 1));
        assert_eq!(rt.priority, Priority::High);
        assert_eq!(rt.compute_limit, ComputeLimit::Share);
        assert!(rt.owns(3) && !rt.owns(2));
        assert_eq!(rt.socket_name(), "gpuslice-gpu-realtime.sock");
        assert_eq!(c.nvidia_cdi_device, None);
        assert_eq!(c.health_interval, Duration::from_millis(500));
        assert_eq!(c.cdi_dir, Path::new("/tmp/cdi"));
    }

    #[test]
    fn invalid_files_are_refused_naming_the_field() {
        for (text, field) in [
            ("slicesPerGpu: 0", "slicesPerGpu"),
            ("slicesPerGpu: 101", "slicesPerGpu"),
            ("slicesPerGpu: four", "invalid config file"),
            ("slicesPerGpus: 4", "unknown field"),
            ("resources: []", "resources"),
            ("resources: [{name: gpu}]", "resources[].name"),
            ("resources: [{name: Gpuslice.dev/gpu}]", "resources[].name"),
            (
                "resources: [{name: a.io/x, slices: 2}, {name: a.io/x, slices: 2}]",
                "each resource once",
            ),
            ("resources: [{name: a.io/x, slices: 3}]", "add up"),
            (
                "resources: [{name: a.io/x}, {name: a.io/y}]",
                "a count for every",
            ),
            (
                "resources: [{name: a.io/x, priority: urgent}]",
                "unknown variant",
            ),
            ("nvidiaCdiDevice: nvidia.com/gpu", "nvidiaCdiDevice"),
            (
                "nvidiaCdiDevice: nvidia.com/gpu=_{index}",
                "nvidiaCdiDevice",
            ),
            ("nvidiaCdiDevice: nvidia.com/gpu={uuid}-", "nvidiaCdiDevice"),
            ("nvidiaCdiDevice: nvidia/com/gpu={uuid}", "nvidiaCdiDevice"),
            ("ledgerDir: relative/dir", "ledgerDir"),
            ("ledgerDir: /run/gpu slice", "ledgerDir"),
            ("healthIntervalSeconds: 0", "healthIntervalSeconds"),
            ("sweepIntervalSeconds: 0", "sweepIntervalSeconds"),
            ("cleanupGraceSeconds: -1", "cleanupGraceSeconds"),
            ("preload: ld_preload", "unknown variant"),
            (
                "resources: [{name: a.io/x, maxSlicesPerContainer: 0}]",
                "maxSlicesPerContainer",
            ),
            ("version: v1\nslicesPerGpu: 4", "mixes fields"),
            ("sharing: {}\nresources: [{name: a.io/x}]", "mixes fields"),
        ] {
            let err = from_text(text, &[]).unwrap_err().to_string();
            assert!(err.contains(field), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_resource_may_cap_the_slices_of_one_container() {
        let c = from_text(
            "resources: [{name: gpuslice.dev/gpu, maxSlicesPerContainer: 2}]",
            &[],
        )
        .unwrap();
        assert_eq!(c.resources[0].max_slices_per_container, Some(2));
        assert_eq!(c.format, Format::Gpuslice);
        assert!(c.ignored.is_empty());
    }

    /// The list that names gpuslice's fields in a mixed file is the fields of [`File`].
    #[test]
    fn every_gpuslice_field_is_one_the_file_takes() {
        for field in GPUSLICE_FIELDS {
            let text = format!("{field}: null");
            assert!(check_gpuslice_text(&text).is_ok(), "{field}");
        }
        assert!(check_gpuslice_text("slicesPerGpus: null").is_err());
    }

    #[test]
    fn json_is_accepted_too() {
        let c = from_text(r#"{"slicesPerGpu": 2, "preload": "ld-so-preload"}"#, &[]).unwrap();
        assert_eq!(c.slices_per_gpu, 2);
        assert_eq!(c.layout.preload, Preload::LdSoPreload);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = Config::load(&args(&["--config", "/nonexistent/gpuslice.yaml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/gpuslice.yaml"), "{err}");
    }

    /// The plugin's container in deploy/kustomize/base/daemonset.yaml, and what the
    /// DaemonSet mounts from the host: (path in the container, path on the host, read-only).
    fn deploy_daemonset() -> (serde_norway::Value, Vec<(PathBuf, PathBuf, bool)>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/kustomize/base/daemonset.yaml");
        let daemonset: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "device-plugin")
            .expect("a container named device-plugin")
            .clone();
        let host_path_of = |volume: &str| {
            pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == volume)
                .and_then(|v| v["hostPath"]["path"].as_str())
                .map(PathBuf::from)
        };
        let mounts = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let host = host_path_of(m["name"].as_str().unwrap())?;
                let read_only = m["readOnly"].as_bool().unwrap_or(false);
                Some((
                    PathBuf::from(m["mountPath"].as_str().unwrap()),
                    host,
                    read_only,
                ))
            })
            .collect();
        (container, mounts)
    }

    /// Every settings file the kustomize layout ships (the base's and each overlay's) is
    /// valid with the flags the DaemonSet passes, and every host path the plugin then
    /// uses is mounted from the same path on the host: read-write where it writes (the
    /// ledger, CDI specs, the kubelet's sockets), at all where it only reads (the shim, the
    /// pod resources socket).
    #[test]
    fn the_settings_in_deploy_are_valid_and_their_host_paths_are_mounted() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kustomize");
        let (container, mounts) = deploy_daemonset();
        let mut argv = vec!["gpuslice".to_string()];
        argv.extend(
            container["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string()),
        );
        let Ok(mut args) = test_cli::parse(&argv) else {
            panic!("the DaemonSet does not run device-plugin: {argv:?}")
        };
        assert!(args.config.is_some(), "the DaemonSet passes no --config");
        // Mounted from the host at the same path, read-write or not.
        let mount_of = |path: &Path| {
            mounts
                .iter()
                .find(|(inside, host, _)| inside == host && path.starts_with(inside))
                .map(|(_, _, read_only)| *read_only)
        };

        let expected: [(&str, &[(&str, Priority)]); 2] = [
            (
                "base/device-plugin.yaml",
                &[("gpuslice.dev/gpu", Priority::Normal)],
            ),
            (
                "overlays/realtime/device-plugin.yaml",
                &[
                    ("gpuslice.dev/gpu", Priority::Normal),
                    ("gpuslice.dev/gpu-realtime", Priority::High),
                ],
            ),
        ];
        for (file, resources) in expected {
            // The file as the plugin reads it, with the DaemonSet's other flags.
            args.config = Some(root.join(file));
            let config = Config::load(&args).unwrap();
            let got: Vec<(&str, Priority)> = config
                .resources
                .iter()
                .map(|r| (r.name.as_str(), r.priority))
                .collect();
            assert_eq!(got, resources, "{file}");
            assert!(config.metrics_listen.is_some(), "{file}: no metrics");
            for written in [
                &config.layout.ledger_host,
                &config.cdi_dir,
                &config.kubelet_dir,
            ] {
                assert_eq!(
                    mount_of(written),
                    Some(false),
                    "{file}: {} is not mounted read-write from the host",
                    written.display()
                );
            }
            let socket = config.pod_resources_socket.as_deref().unwrap();
            for read in [&config.layout.shim_host, socket] {
                assert!(
                    mount_of(read).is_some(),
                    "{file}: {} is not mounted from the host",
                    read.display()
                );
            }
            // What containers are given is what the plugin sees, on the host.
            assert_eq!(config.layout.ledger_container, config.layout.ledger_host);
            assert_eq!(config.layout.shim_container, config.layout.shim_host);
        }

        // No settings file in deploy/kustomize escapes the check above.
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.file_name().unwrap() == "device-plugin.yaml" {
                    found.push(path.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        found.sort();
        let mut checked: Vec<String> = expected.iter().map(|(f, _)| f.to_string()).collect();
        checked.sort();
        assert_eq!(found, checked);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A settings file made of the fields the plugin knows, with values of any shape.
        fn settings_text() -> impl Strategy<Value = String> {
            let value = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                "[a-zA-Z0-9./_: -]{0,40}".prop_map(|s| format!("{s:?}")),
                Just("[]".to_string()),
                Just("{}".to_string()),
                Just("null".to_string()),
            ];
            let resource = (
                "[a-z0-9./-]{0,30}",
                proptest::option::of(0u32..2000),
                proptest::option::of(prop_oneof!["high", "normal", "low", "urgent"]),
                proptest::option::of(prop_oneof!["share", "none", "all"]),
            )
                .prop_map(|(name, slices, priority, limit)| {
                    let mut r = format!("{{name: {name:?}");
                    if let Some(slices) = slices {
                        r.push_str(&format!(", slices: {slices}"));
                    }
                    if let Some(priority) = priority {
                        r.push_str(&format!(", priority: {priority}"));
                    }
                    if let Some(limit) = limit {
                        r.push_str(&format!(", computeLimit: {limit}"));
                    }
                    r.push('}');
                    r
                });
            (
                proptest::collection::vec(
                    (
                        prop_oneof![
                            "slicesPerGpu",
                            "ledgerDir",
                            "shim",
                            "preload",
                            "healthIntervalSeconds",
                            "unknownField",
                        ],
                        value,
                    ),
                    0..5,
                ),
                proptest::collection::vec(resource, 0..4),
            )
                .prop_map(|(fields, resources)| {
                    let mut text: String = fields
                        .into_iter()
                        .map(|(k, v)| format!("{k}: {v}\n"))
                        .collect();
                    if !resources.is_empty() {
                        text.push_str(&format!("resources: [{}]\n", resources.join(", ")));
                    }
                    text
                })
        }

        proptest! {
            /// Any text at all: a configuration or a named error, never a panic.
            #[test]
            fn any_text_is_read_or_refused_without_panicking(text in any::<String>()) {
                let _ = from_text(&text, &[]);
            }

            /// Settings files of the right shape with values of any kind: every one the
            /// plugin accepts has the invariants the rest of it relies on, and every one it
            /// refuses says which field (or the file's syntax) was wrong.
            #[test]
            fn accepted_settings_hold_their_invariants(text in settings_text()) {
                match from_text(&text, &[]) {
                    Ok(c) => {
                        prop_assert!((1..=MAX_SLICES_PER_GPU).contains(&c.slices_per_gpu));
                        prop_assert!(!c.resources.is_empty());
                        // The resources partition each GPU's slices: none empty, none past
                        // the GPU's, no slice in two.
                        let mut owner = vec![0u32; c.slices_per_gpu as usize];
                        for r in &c.resources {
                            prop_assert!(r.slices >= 1, "{r:?}");
                            prop_assert!(!r.name.is_empty());
                            for i in r.first_slice..r.first_slice + r.slices {
                                let slot = owner.get_mut(i as usize);
                                prop_assert!(slot.is_some(), "slice {i} past the GPU's: {c:?}");
                                if let Some(n) = slot {
                                    *n += 1;
                                }
                            }
                        }
                        prop_assert!(owner.iter().all(|&n| n <= 1), "a slice in two resources");
                        let mut names: Vec<_> = c.resources.iter().map(|r| &r.name).collect();
                        names.sort();
                        names.dedup();
                        prop_assert_eq!(names.len(), c.resources.len(), "a resource twice");
                    }
                    Err(e) => {
                        let message = e.to_string();
                        prop_assert!(!message.is_empty());
                        prop_assert!(message.contains("test.yaml"), "{message}");
                    }
                }
            }
        }
    }
}
