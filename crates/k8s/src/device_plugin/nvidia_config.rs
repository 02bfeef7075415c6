//! NVIDIA's device plugin config (k8s-device-plugin's `api/config/v1`: `version: v1`,
//! `flags`, `sharing.timeSlicing`), read as it is, so that a node moves from NVIDIA's
//! time-slicing to gpuslice by a change of DaemonSet, not of the ConfigMap its users have.
//!
//! What it means in gpuslice's terms:
//! - `sharing.timeSlicing.resources[].replicas: N` is N slices per GPU: each replica a slice,
//!   with 1/N of the GPU's memory and a 1/N share of its time (which NVIDIA's replicas lack);
//! - the advertised name is the one NVIDIA's plugin advertises: the resource's name, or
//!   `<name>.shared` with `renameByDefault: true`. NVIDIA's plugin ignores `rename` and
//!   `devices` (it says so and shares every GPU under those names), and so does gpuslice,
//!   saying so too: the pods that run today keep asking for what they ask for;
//! - `failRequestsGreaterThanOne: true` refuses a container more than one slice, as NVIDIA's
//!   plugin refuses it more than one replica; without it, k slices are k/N of the GPU;
//! - `sharing.mps` is refused: gpuslice runs no MPS daemon (`gpuslice config convert` prints
//!   the gpuslice settings that give what MPS's limits gave);
//! - `flags` are read in [`nvidia_flags`](super::nvidia_flags).
//!
//! The file is checked as strictly as NVIDIA's plugin checks it (`version` v1, at least 2
//! replicas, a resource name, `devices` of the forms it takes), and stricter about field
//! names outside `flags`: a misspelt `failRequestsGreaterThanOne` would silently hand out
//! several slices, so an unknown field there is refused. Unknown flags are only reported,
//! since NVIDIA adds flags with its releases and none of them changes what a slice is.

use serde::Deserialize;

use super::config::ComputeLimit;
use super::nvidia_flags;

/// The only version of NVIDIA's format.
pub const VERSION: &str = "v1";
/// The fields of NVIDIA's format at the top of the file.
pub const TOP_LEVEL_FIELDS: [&str; 5] = ["version", "flags", "resources", "sharing", "imex"];
/// The domain NVIDIA's resource names are in (a name without one is put in it).
const NVIDIA_DOMAIN: &str = "nvidia.com";
/// The only whole-GPU resource NVIDIA's plugin shares.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";
/// What `renameByDefault` appends.
const SHARED_SUFFIX: &str = ".shared";
/// The longest resource name Kubernetes accepts (NVIDIA's plugin checks it too).
const MAX_RESOURCE_NAME: usize = 63;
/// The most slices gpuslice cuts a GPU into.
const MAX_REPLICAS: i64 = super::config::MAX_SLICES_PER_GPU as i64;

/// Why a file in NVIDIA's format cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NvidiaConfigError {
    /// The text is not YAML of NVIDIA's format (a wrong type, an unknown field, bad syntax).
    #[error("{0}")]
    Parse(String),
    /// A field holds a value NVIDIA's plugin or gpuslice cannot use.
    #[error("{field}: {value}: {problem}")]
    Field {
        /// The field, as a path: `sharing.timeSlicing.resources[0].replicas`.
        field: String,
        /// The value found.
        value: String,
        /// What is wrong, and what to do.
        problem: String,
    },
}

/// Where the sharing settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// No `sharing`: each GPU whole.
    None,
    /// `sharing.timeSlicing`.
    TimeSlicing,
    /// `sharing.mps` (only for `gpuslice config convert`).
    Mps,
}

impl Sharing {
    /// The field the settings are under.
    pub fn field(self) -> &'static str {
        match self {
            Sharing::None => "sharing",
            Sharing::TimeSlicing => "sharing.timeSlicing",
            Sharing::Mps => "sharing.mps",
        }
    }
}

/// What a file in NVIDIA's format says, in gpuslice's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Slices per GPU: the replicas (1 without sharing).
    pub slices_per_gpu: u32,
    /// The advertised resource: NVIDIA's name for it.
    pub resource: String,
    /// At most this many slices per container (`failRequestsGreaterThanOne`).
    pub max_slices_per_container: Option<u32>,
    /// Whether a slice is capped at its share (under MPS, as MPS caps its clients).
    pub compute_limit: ComputeLimit,
    /// NVIDIA's CDI device name for a GPU, from `deviceIDStrategy`; `None` for the default.
    pub nvidia_cdi_device: Option<String>,
    /// Where the sharing came from.
    pub sharing: Sharing,
    /// `renameByDefault`, as written.
    pub rename_by_default: bool,
    /// `failRequestsGreaterThanOne`, as written.
    pub fail_requests_greater_than_one: Option<bool>,
    /// Settings accepted but ignored, each with why; said at startup.
    pub ignored: Vec<String>,
}

/// Whether `sharing.mps` may be converted (for `gpuslice config convert`) or is refused (by
/// the device plugin, which cannot run it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mps {
    /// The device plugin: refused.
    Refuse,
    /// `gpuslice config convert`: converted to what gives the same limits.
    Convert,
}

/// The file, as written (camelCase keys, as NVIDIA's Go structs name them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: Option<String>,
    flags: Option<nvidia_flags::Flags>,
    resources: Option<NamedResources>,
    sharing: Option<SharingSection>,
    imex: Option<Imex>,
}

/// The top-level `resources`: renaming by pattern, which NVIDIA's plugin ignores.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedResources {
    gpus: Option<Vec<NamedResource>>,
    mig: Option<Vec<NamedResource>>,
}

/// One pattern and the name for what matches it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Checked for shape only: NVIDIA's plugin ignores them.
struct NamedResource {
    pattern: String,
    name: String,
}

/// `sharing`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SharingSection {
    time_slicing: Option<Replicated>,
    mps: Option<Replicated>,
}

/// `sharing.timeSlicing` and `sharing.mps`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Replicated {
    rename_by_default: Option<bool>,
    fail_requests_greater_than_one: Option<bool>,
    resources: Option<Vec<ReplicatedResource>>,
}

/// One shared resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicatedResource {
    name: String,
    rename: Option<String>,
    devices: Option<serde_norway::Value>,
    replicas: Option<i64>,
}

/// `imex`: IMEX channels, which gpuslice does not inject.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Imex {
    #[serde(rename = "channelIDs")]
    channel_ids: Option<Vec<i64>>,
    required: Option<bool>,
}

/// Parses text in NVIDIA's format and says what it means in gpuslice's terms.
pub fn parse(text: &str, mps: Mps) -> Result<Converted, NvidiaConfigError> {
    let file: File = from_yaml(text).map_err(|e| NvidiaConfigError::Parse(e.to_string()))?;
    convert(file, mps)
}

/// `text` as NVIDIA's plugin reads YAML: with merge keys (`<<: *anchor`) applied, as its
/// YAML library applies them. Text without them is read directly, so that errors keep
/// their line and column.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_norway::Error> {
    if !text.contains("<<") {
        return serde_norway::from_str(text);
    }
    let mut value: serde_norway::Value = serde_norway::from_str(text)?;
    if !has_merge_key(&value) {
        return serde_norway::from_str(text);
    }
    value.apply_merge()?;
    T::deserialize(value)
}

/// Whether a mapping anywhere in `value` has the merge key `<<`.
fn has_merge_key(value: &serde_norway::Value) -> bool {
    use serde_norway::Value;
    match value {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

/// Whether a top-level mapping with these keys is in NVIDIA's format: it has one of the
/// fields only NVIDIA's format has, or a `resources` that is a mapping (gpuslice's is a
/// list).
pub fn is_nvidia_format(mapping: &serde_norway::Mapping) -> bool {
    mapping.iter().any(|(key, value)| match key.as_str() {
        Some("version" | "flags" | "sharing" | "imex") => true,
        Some("resources") => value.is_mapping(),
        _ => false,
    })
}

pub(super) fn field_error(
    field: impl Into<String>,
    value: impl Into<String>,
    problem: impl Into<String>,
) -> NvidiaConfigError {
    NvidiaConfigError::Field {
        field: field.into(),
        value: value.into(),
        problem: problem.into(),
    }
}

/// The file's settings in gpuslice's terms, checked.
fn convert(file: File, mps: Mps) -> Result<Converted, NvidiaConfigError> {
    match file.version.as_deref() {
        None | Some(VERSION) => {}
        Some(other) => {
            return Err(field_error(
                "version",
                other,
                "NVIDIA's config format has one version, v1",
            ));
        }
    }
    let mut ignored = Vec::new();
    let mut converted = Converted {
        slices_per_gpu: 1,
        resource: NVIDIA_GPU.to_string(),
        max_slices_per_container: None,
        compute_limit: ComputeLimit::None,
        nvidia_cdi_device: None,
        sharing: Sharing::None,
        rename_by_default: false,
        fail_requests_greater_than_one: None,
        ignored: Vec::new(),
    };
    if let Some(sharing) = file.sharing {
        share(sharing, mps, &mut converted, &mut ignored)?;
    }
    if let Some(flags) = &file.flags {
        converted.nvidia_cdi_device = nvidia_flags::read(flags, &mut ignored)?;
    }
    if let Some(resources) = &file.resources
        && (resources.gpus.as_ref().is_some_and(|g| !g.is_empty())
            || resources.mig.as_ref().is_some_and(|m| !m.is_empty()))
    {
        ignored.push(
            "resources (renaming by pattern): NVIDIA's device plugin ignores it too, and \
             advertises the names under sharing"
                .to_string(),
        );
    }
    if let Some(imex) = &file.imex {
        let ids = imex.channel_ids.as_deref().unwrap_or_default();
        if !(ids.is_empty() || ids == [0]) {
            return Err(field_error(
                "imex.channelIDs",
                format!("{ids:?}"),
                "NVIDIA's plugin accepts [] or [0]",
            ));
        }
        if !ids.is_empty() {
            let required = if imex.required == Some(true) {
                " (required: true)"
            } else {
                ""
            };
            ignored.push(format!(
                "imex.channelIDs [0]{required}: gpuslice does not inject IMEX channels; \
                 workloads that need them should stay on NVIDIA's device plugin"
            ));
        }
    }
    converted.ignored = ignored;
    Ok(converted)
}

/// Reads `sharing` into `converted`.
fn share(
    sharing: SharingSection,
    mps: Mps,
    converted: &mut Converted,
    ignored: &mut Vec<String>,
) -> Result<(), NvidiaConfigError> {
    let (kind, replicated) = match (sharing.time_slicing, sharing.mps) {
        (Some(_), Some(_)) => {
            return Err(field_error(
                "sharing",
                "timeSlicing and mps",
                "NVIDIA's plugin takes one of them, not both",
            ));
        }
        (None, Some(_)) if mps == Mps::Refuse => {
            return Err(field_error(
                "sharing.mps",
                "(present)",
                "gpuslice does not use MPS: it enforces each slice's memory quota and share \
                 of the GPU's time itself, in the workload's processes, with no MPS control \
                 daemon. `gpuslice config convert FILE` prints gpuslice's settings that give \
                 what these MPS settings gave (each replica 1/N of the memory and at most 1/N \
                 of the time); give the plugin that file, or replace `mps:` with \
                 `timeSlicing:` to let slices use time others leave idle",
            ));
        }
        (None, Some(m)) => (Sharing::Mps, m),
        (Some(t), None) => (Sharing::TimeSlicing, t),
        (None, None) => return Ok(()),
    };
    let prefix = kind.field();
    let rename_by_default = replicated.rename_by_default.unwrap_or(false);
    let resources = replicated.resources.unwrap_or_default();
    if resources.is_empty() {
        return Err(field_error(
            format!("{prefix}.resources"),
            "(none)",
            "no resources specified: list nvidia.com/gpu with its replicas",
        ));
    }
    let mut chosen: Option<(String, i64)> = None;
    for (i, r) in resources.iter().enumerate() {
        let field = |name: &str| format!("{prefix}.resources[{i}].{name}");
        let name =
            resource_name(&r.name).map_err(|why| field_error(field("name"), &r.name, why))?;
        if let Some(profile) = name.strip_prefix("nvidia.com/mig-") {
            return Err(field_error(
                field("name"),
                &r.name,
                format!(
                    "gpuslice slices whole GPUs, not MIG devices ({profile}); keep NVIDIA's \
                     device plugin on nodes whose GPUs are in MIG mode"
                ),
            ));
        }
        if name != NVIDIA_GPU {
            return Err(field_error(
                field("name"),
                &r.name,
                "NVIDIA's plugin shares nvidia.com/gpu (and MIG devices, which gpuslice does \
                 not slice); name nvidia.com/gpu",
            ));
        }
        if chosen.is_some() {
            return Err(field_error(
                field("name"),
                &r.name,
                "listed twice: one entry of nvidia.com/gpu says how every GPU is shared",
            ));
        }
        let replicas = r
            .replicas
            .ok_or_else(|| field_error(field("replicas"), "(missing)", "no replicas specified"))?;
        if replicas < 2 {
            return Err(field_error(
                field("replicas"),
                replicas.to_string(),
                "NVIDIA's plugin requires at least 2 (leave `sharing` out to give each GPU \
                 whole)",
            ));
        }
        if replicas > MAX_REPLICAS {
            return Err(field_error(
                field("replicas"),
                replicas.to_string(),
                format!("gpuslice cuts a GPU into at most {MAX_REPLICAS} slices"),
            ));
        }
        let advertised = if rename_by_default {
            format!("{name}{SHARED_SUFFIX}")
        } else {
            name.clone()
        };
        if let Some(rename) = &r.rename {
            let wanted =
                resource_name(rename).map_err(|why| field_error(field("rename"), rename, why))?;
            if wanted != advertised {
                ignored.push(format!(
                    "{}: {rename}: NVIDIA's device plugin ignores `rename` and advertises \
                     {advertised}, and so does gpuslice, so that pods keep asking for what \
                     they ask for today (to advertise {wanted}, name it in gpuslice's \
                     format, which `gpuslice config convert` prints)",
                    field("rename")
                ));
            }
        }
        if let Some(devices) = &r.devices {
            let shown = check_devices(devices)
                .map_err(|why| field_error(field("devices"), show_value(devices), why))?;
            if shown != "all" {
                ignored.push(format!(
                    "{}: {shown}: every GPU is shared, as NVIDIA's device plugin shares them \
                     (it ignores `devices` too)",
                    field("devices")
                ));
            }
        }
        chosen = Some((advertised, replicas));
    }
    let Some((advertised, replicas)) = chosen else {
        return Ok(());
    };
    if advertised.len() > MAX_RESOURCE_NAME {
        return Err(field_error(
            format!("{prefix}.renameByDefault"),
            "true",
            format!("{advertised} is longer than {MAX_RESOURCE_NAME} characters"),
        ));
    }
    // MPS's plugin refuses more than one replica unless told otherwise; time-slicing's
    // allows it.
    let fail_greater = replicated
        .fail_requests_greater_than_one
        .unwrap_or(kind == Sharing::Mps);
    converted.slices_per_gpu = u32::try_from(replicas).unwrap_or(1);
    converted.resource = advertised;
    converted.max_slices_per_container = fail_greater.then_some(1);
    converted.compute_limit = if kind == Sharing::Mps {
        ComputeLimit::Share
    } else {
        ComputeLimit::None
    };
    converted.sharing = kind;
    converted.rename_by_default = rename_by_default;
    converted.fail_requests_greater_than_one = replicated.fail_requests_greater_than_one;
    Ok(())
}

/// A resource name as NVIDIA's plugin reads one: put in `nvidia.com/` when it has no
/// domain, at most 63 characters, and a DNS subdomain after the domain.
fn resource_name(raw: &str) -> Result<String, String> {
    let full = if raw.starts_with(&format!("{NVIDIA_DOMAIN}/")) {
        raw.to_string()
    } else {
        format!("{NVIDIA_DOMAIN}/{raw}")
    };
    if full.len() > MAX_RESOURCE_NAME {
        return Err(format!(
            "a resource name is at most {MAX_RESOURCE_NAME} characters ({full})"
        ));
    }
    let name = &full[NVIDIA_DOMAIN.len() + 1..];
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && label.starts_with(|c: char| c.is_ascii_alphanumeric())
            && label.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if name.split('.').all(label_ok) {
        Ok(full)
    } else {
        Err(format!(
            "{full} is not a resource name NVIDIA's plugin takes (nvidia.com/ and lowercase \
             letters, digits, '-' and '.')"
        ))
    }
}

/// Checks `devices` as NVIDIA's plugin does: `all`, a count above 0, or a list of GPU
/// indexes, MIG indexes (`1:0`) and GPU or MIG UUIDs. Returns it as text.
fn check_devices(value: &serde_norway::Value) -> Result<String, String> {
    use serde_norway::Value;
    match value {
        Value::String(s) if s == "all" => Ok("all".into()),
        Value::String(s) => Err(format!(
            "the only word `devices` takes is \"all\", not {s:?}"
        )),
        Value::Number(n) => match n.as_i64() {
            Some(count) if count > 0 => Ok(count.to_string()),
            _ => Err("a count of devices must be a whole number above 0".into()),
        },
        Value::Sequence(items) => {
            let mut shown = Vec::new();
            for item in items {
                let text = match item {
                    Value::Number(n) if n.as_u64().is_some() => n.to_string(),
                    Value::String(s) if is_device_ref(s) => s.clone(),
                    other => {
                        return Err(format!(
                            "{} is not a GPU index, a MIG index (1:0) or a GPU or MIG UUID",
                            show_value(other)
                        ));
                    }
                };
                shown.push(text);
            }
            Ok(format!("[{}]", shown.join(", ")))
        }
        _ => Err("expected \"all\", a count, or a list of GPU indexes and UUIDs".into()),
    }
}

/// A GPU index, a MIG index (`gpu:mig`), a GPU UUID or a MIG UUID (`MIG-<uuid>` or
/// `MIG-GPU-<uuid>/gi/ci`).
fn is_device_ref(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let gpu_uuid = |t: &str| t.starts_with("GPU-") && gpuslice_ledger::GpuUuid::parse(t).is_ok();
    if digits(s) || gpu_uuid(s) {
        return true;
    }
    if let Some((a, b)) = s.split_once(':') {
        return digits(a) && digits(b);
    }
    let Some(mig) = s.strip_prefix("MIG-") else {
        return false;
    };
    if gpuslice_ledger::GpuUuid::parse(mig).is_ok() && !mig.starts_with("GPU-") {
        return true;
    }
    let mut parts = mig.splitn(3, '/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(gpu), Some(gi), Some(ci)) if gpu_uuid(gpu) && digits(gi) && digits(ci)
    )
}

/// A YAML value on one line, for a message.
fn show_value(value: &serde_norway::Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "(unprintable)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Converted {
        parse(text, Mps::Refuse).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        parse(text, Mps::Refuse)
            .map(|c| format!("accepted: {c:?}"))
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn replicas_are_slices_and_rename_by_default_adds_shared() {
        let c = ok(
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n",
        );
        assert_eq!(
            (c.slices_per_gpu, c.resource.as_str()),
            (10, "nvidia.com/gpu")
        );
        assert_eq!(c.max_slices_per_container, None);
        assert_eq!(c.compute_limit, ComputeLimit::None);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = ok(
            "sharing:\n  timeSlicing:\n    renameByDefault: true\n    failRequestsGreaterThanOne: true\n    resources: [{name: gpu, replicas: 4}]\n",
        );
        assert_eq!(
            (c.slices_per_gpu, c.resource.as_str()),
            (4, "nvidia.com/gpu.shared")
        );
        assert_eq!(c.max_slices_per_container, Some(1));
    }

    #[test]
    fn without_sharing_each_gpu_is_one_slice_of_nvidia_com_gpu() {
        let c = ok("version: v1\nflags:\n  migStrategy: none\n");
        assert_eq!(
            (c.slices_per_gpu, c.resource.as_str()),
            (1, "nvidia.com/gpu")
        );
        assert_eq!(c.sharing, Sharing::None);
    }

    #[test]
    fn rename_and_devices_are_ignored_as_nvidia_ignores_them_and_said_so() {
        let c = ok(
            "sharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      rename: gpu-small\n      devices: [0, \"GPU-fa4ec0da-0000-4000-8000-000000000001\", \"1:0\"]\n      replicas: 2\n",
        );
        assert_eq!(c.resource, "nvidia.com/gpu");
        let text = c.ignored.join("\n");
        assert!(
            text.contains("nvidia.com/gpu-small") && text.contains("rename"),
            "{text}"
        );
        assert!(text.contains("resources[0].devices"), "{text}");
        // "all" and a rename that is what would be advertised anyway are no news.
        let c = ok(
            "sharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n    - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, devices: all, replicas: 2}\n",
        );
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn bad_files_are_refused_naming_the_field_and_the_problem() {
        for (text, expected) in [
            (
                "version: v2\n",
                "version: v2: NVIDIA's config format has one version, v1",
            ),
            (
                "sharing:\n  mps:\n    resources: [{name: nvidia.com/gpu, replicas: 2}]\n",
                "sharing.mps: (present): gpuslice does not use MPS",
            ),
            (
                "sharing:\n  timeSlicing: {}\n",
                "sharing.timeSlicing.resources: (none): no resources specified",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 1}]\n",
                "sharing.timeSlicing.resources[0].replicas: 1: NVIDIA's plugin requires at least 2",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu}]\n",
                "resources[0].replicas: (missing): no replicas specified",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 101}]\n",
                "at most 100 slices",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/mig-1g.5gb, replicas: 2}]\n",
                "resources[0].name: nvidia.com/mig-1g.5gb: gpuslice slices whole GPUs, not MIG devices",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: example.com/gpu, replicas: 2}]\n",
                "resources[0].name: example.com/gpu",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/GPU, replicas: 2}]\n",
                "not a resource name",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: gpu, replicas: 2}, {name: nvidia.com/gpu, replicas: 3}]\n",
                "resources[1].name: nvidia.com/gpu: listed twice",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: gpu, replicas: 2, devices: some}]\n",
                "resources[0].devices: \"some\": the only word",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: gpu, replicas: 2, devices: 0}]\n",
                "a count of devices must be",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: gpu, replicas: 2, devices: [GPU-12]}]\n",
                "\"GPU-12\" is not a GPU index",
            ),
            (
                "sharing:\n  timeSlicing:\n    failRequestGreaterThanOne: true\n    resources: [{name: gpu, replicas: 2}]\n",
                "unknown field `failRequestGreaterThanOne`",
            ),
            (
                "sharing:\n  timeSlicing:\n    resources: [{name: gpu, replica: 2}]\n",
                "unknown field `replica`",
            ),
            (
                "sharing:\n  timeSlicing: {resources: [{name: gpu, replicas: 2}]}\n  mps: {resources: [{name: gpu, replicas: 2}]}\n",
                "not both",
            ),
            ("flags:\n  migStrategy: some\n", "flags.migStrategy: some"),
            (
                "flags:\n  plugin:\n    deviceIDStrategy: serial\n",
                "flags.plugin.deviceIDStrategy: serial",
            ),
            (
                "flags:\n  plugin:\n    deviceListStrategy: [envvar, files]\n",
                "deviceListStrategy: files",
            ),
            ("flags:\n  failOnInitError: maybe\n", "invalid type"),
            ("imex:\n  channelIDs: [1]\n", "imex.channelIDs: [1]"),
        ] {
            let got = err(text);
            assert!(
                got.contains(expected),
                "{text:?}\n  got: {got}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn mps_converts_to_capped_slices_of_one_per_container_for_convert_only() {
        let text = "sharing:\n  mps:\n    renameByDefault: true\n    resources: [{name: nvidia.com/gpu, replicas: 10}]\n";
        let c = parse(text, Mps::Convert).unwrap();
        assert_eq!(c.sharing, Sharing::Mps);
        assert_eq!(
            (c.slices_per_gpu, c.resource.as_str()),
            (10, "nvidia.com/gpu.shared")
        );
        assert_eq!(c.compute_limit, ComputeLimit::Share);
        assert_eq!(
            c.max_slices_per_container,
            Some(1),
            "MPS refuses more than one by default"
        );
        let relaxed = "sharing:\n  mps:\n    failRequestsGreaterThanOne: false\n    resources: [{name: gpu, replicas: 2}]\n";
        assert_eq!(
            parse(relaxed, Mps::Convert)
                .unwrap()
                .max_slices_per_container,
            None
        );
    }

    #[test]
    fn the_format_is_told_by_fields_only_nvidia_has() {
        let mapping =
            |text: &str| -> serde_norway::Mapping { serde_norway::from_str(text).unwrap() };
        assert!(is_nvidia_format(&mapping("version: v1")));
        assert!(is_nvidia_format(&mapping("sharing: {}")));
        assert!(is_nvidia_format(&mapping("resources: {gpus: []}")));
        assert!(!is_nvidia_format(&mapping("resources: [{name: a.io/b}]")));
        assert!(!is_nvidia_format(&mapping("slicesPerGpu: 4")));
    }

    #[test]
    fn device_references_take_nvidias_forms() {
        for good in [
            "0",
            "12",
            "1:0",
            "GPU-fa4ec0da-0000-4000-8000-000000000001",
            "MIG-fa4ec0da-0000-4000-8000-000000000001",
            "MIG-GPU-fa4ec0da-0000-4000-8000-000000000001/3/0",
        ] {
            assert!(is_device_ref(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "1:",
            ":1",
            "GPU-1",
            "MIG-GPU-fa4ec0da-0000-4000-8000-000000000001/3",
            "fa4ec0da-0000-4000-8000-000000000001",
        ] {
            assert!(!is_device_ref(bad), "{bad}");
        }
    }
}
