//! The exposition: what a scrape found (the ledger's report, the GPUs, the pods, the slices)
//! in the Prometheus text format, version 0.0.4.
//!
//! Series are labelled so that they join with DCGM's exporter: a GPU is `gpu` (NVML's
//! index), `UUID`, `device` (`nvidia<index>`), `modelName` and `Hostname`, as
//! dcgm-exporter names them, and a tenant that is a pod's container has `namespace`, `pod`
//! and `container`, as dcgm-exporter labels a GPU in use by a pod. A tenant made by
//! `gpuslice run` or by hand has those three empty, as dcgm-exporter leaves a GPU no pod
//! has; a GPU NVML does not list here has `gpu`, `device` and `modelName` empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{Display, Write as _};

use gpuslice_ledger::GpuUuid;

use crate::report::Report;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The version this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (`SOURCE_COMMIT` at build time, else git's, else
/// `unknown`; see build.rs).
pub const COMMIT: &str = include_str!(concat!(env!("OUT_DIR"), "/commit"));

/// A GPU as the metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML's index.
    pub index: u32,
    /// Its UUID.
    pub uuid: GpuUuid,
    /// Its product name.
    pub model: String,
    /// Its memory.
    pub memory_bytes: u64,
    /// Whether the device plugin advertises it healthy; `None` outside the plugin.
    pub healthy: Option<bool>,
}

/// The pod container a tenant is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOwner {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The container.
    pub container: String,
}

/// The slices of one resource on one GPU (device plugin only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceCount {
    /// The GPU.
    pub gpu: GpuUuid,
    /// The extended resource.
    pub resource: String,
    /// Slices advertised.
    pub advertised: u32,
    /// Slices held by the plugin's tenants.
    pub allocated: u32,
}

/// What only the DRA driver knows (`gpuslice dra-driver`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraScrape {
    /// Whether the kubelet registered the driver.
    pub registered: bool,
    /// Whether the node's ResourceSlice is in the API server as the driver wants it.
    pub slice_published: bool,
    /// The devices of the slice last published: one per GPU.
    pub devices: Vec<DraDevice>,
    /// Each device of each prepared claim; a claim whose record cannot be read, by what its
    /// quota gives.
    pub claims: Vec<DraClaim>,
    /// Prepared claims whose record cannot be read.
    pub unreadable_records: UnreadableRecords,
    /// Failed prepares since the driver started, by reason (every reason, zeros included).
    pub prepare_errors: Vec<(&'static str, u64)>,
    /// Failed unprepares since the driver started, by reason (every reason, zeros included).
    pub unprepare_errors: Vec<(&'static str, u64)>,
}

/// A device of the driver's ResourceSlice: its GPU and the capacities it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraDevice {
    /// The GPU.
    pub gpu: GpuUuid,
    /// The `memory` capacity, bytes.
    pub memory_bytes: u64,
    /// The `compute` capacity, percent of the GPU's time.
    pub compute_percent: u32,
}

/// Prepared claims whose record (the `dra-claim` file in the tenant's directory) cannot be
/// read: damaged, or of another version of the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnreadableRecords {
    /// Counted by their quota instead, in the capacity check and the figures.
    pub counted_by_quota: usize,
    /// Whose quota cannot be read either: counted nowhere, and while there is one the
    /// driver prepares no claim.
    pub uncounted: usize,
}

/// A device of a prepared claim, as its record has it (or, where the record cannot be read,
/// a GPU of its quota, with the namespace and claim empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraClaim {
    /// The claim's tenant.
    pub tenant: String,
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub claim: String,
    /// The GPU's UUID, as recorded.
    pub gpu: String,
    /// Memory consumed, bytes.
    pub memory_bytes: u64,
    /// Compute consumed, permille of the GPU's time.
    pub compute_permille: u32,
}

/// Everything one scrape found.
#[derive(Debug, Default)]
pub struct Scrape<'a> {
    /// The ledger's report; `None` when the ledger could not be read (or is not known yet).
    pub report: Option<&'a Report>,
    /// The GPUs NVML lists.
    pub gpus: &'a [GpuInfo],
    /// The pod container of each tenant that is one, by tenant name.
    pub owners: HashMap<String, PodOwner>,
    /// Slices per GPU and resource (device plugin only).
    pub slices: Vec<SliceCount>,
    /// Whether the kubelet's pod resources API answered; `None` where it is not asked.
    pub pod_resources_up: Option<bool>,
    /// What the DRA driver adds; `None` elsewhere.
    pub dra: Option<DraScrape>,
    /// What `/readyz` says.
    pub ready: bool,
    /// The node's name (`Hostname`).
    pub hostname: &'a str,
}

/// One metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(text));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The labels of one GPU, as dcgm-exporter names them.
struct GpuLabels {
    gpu: String,
    uuid: String,
    device: String,
    model: String,
}

impl GpuLabels {
    fn of(uuid: &str, gpus: &[GpuInfo]) -> GpuLabels {
        match gpus.iter().find(|g| g.uuid.to_string() == uuid) {
            Some(g) => GpuLabels {
                gpu: g.index.to_string(),
                uuid: uuid.to_string(),
                device: format!("nvidia{}", g.index),
                model: g.model.clone(),
            },
            None => GpuLabels {
                gpu: String::new(),
                uuid: uuid.to_string(),
                device: String::new(),
                model: String::new(),
            },
        }
    }
}

/// The labels of a tenant's series: the tenant, its pod container (empty if none), then the
/// GPU's (when it is about one) and the node.
fn tenant_labels<'l>(
    scrape: &'l Scrape<'_>,
    tenant: &'l str,
    gpu: Option<&'l GpuLabels>,
) -> Vec<(&'static str, &'l str)> {
    let owner = scrape.owners.get(tenant);
    let mut labels = vec![
        ("tenant", tenant),
        ("namespace", owner.map_or("", |o| o.namespace.as_str())),
        ("pod", owner.map_or("", |o| o.pod.as_str())),
        ("container", owner.map_or("", |o| o.container.as_str())),
    ];
    if let Some(g) = gpu {
        labels.extend(gpu_labels(g));
    }
    labels.push(("Hostname", scrape.hostname));
    labels
}

/// The GPU labels alone.
fn gpu_labels(g: &GpuLabels) -> [(&'static str, &str); 4] {
    [
        ("gpu", g.gpu.as_str()),
        ("UUID", g.uuid.as_str()),
        ("device", g.device.as_str()),
        ("modelName", g.model.as_str()),
    ]
}

/// The scrape in the Prometheus text exposition format (version 0.0.4).
pub fn render(scrape: &Scrape<'_>) -> String {
    let mut out = String::new();
    let mut f = Family::new(
        &mut out,
        "gpuslice_build_info",
        "gauge",
        "1, labelled with the version and the commit gpuslice was built from.",
    );
    f.sample(&[("version", VERSION), ("commit", COMMIT)], 1);
    let mut f = Family::new(
        &mut out,
        "gpuslice_ready",
        "gauge",
        "1 when /readyz answers 200 (settings loaded, ledger usable), else 0.",
    );
    f.sample(&[("Hostname", scrape.hostname)], u8::from(scrape.ready));
    if let Some(up) = scrape.pod_resources_up {
        let mut f = Family::new(
            &mut out,
            "gpuslice_pod_resources_up",
            "gauge",
            "1 if the kubelet's pod resources API named the pods at this scrape, 0 if not \
             (namespace, pod and container are empty then).",
        );
        f.sample(&[("Hostname", scrape.hostname)], u8::from(up));
    }
    render_gpus(&mut out, scrape);
    if let Some(dra) = &scrape.dra {
        render_dra(&mut out, scrape, dra);
    }
    if let Some(report) = scrape.report {
        render_tenants(&mut out, scrape, report);
    }
    out
}

/// A GPU as the DRA driver's series count it.
#[derive(Debug, Default)]
struct DraGpu<'a> {
    /// Its device in the published slice, if it is published.
    device: Option<&'a DraDevice>,
    /// Memory the prepared claims consume on it.
    memory_bytes: u64,
    /// Compute the prepared claims consume on it, permille.
    compute_permille: u64,
    /// Prepared claims with a device on it.
    claims: usize,
}

/// The DRA driver's series: its registration and slice, each device's capacity published
/// and consumed by prepared claims, the claims, and the failures by reason.
fn render_dra(out: &mut String, scrape: &Scrape<'_>, dra: &DraScrape) {
    let host = ("Hostname", scrape.hostname);
    let mut f = Family::new(
        out,
        "gpuslice_dra_kubelet_registered",
        "gauge",
        "1 once the kubelet registered the DRA driver (since its sockets were last made), \
         else 0.",
    );
    f.sample(&[host], u8::from(dra.registered));
    let mut f = Family::new(
        out,
        "gpuslice_dra_resource_slice_published",
        "gauge",
        "1 while the node's ResourceSlice is in the API server as the DRA driver wants it, 0 \
         before it was written or while writing it fails.",
    );
    f.sample(&[host], u8::from(dra.slice_published));

    // Per GPU: the published devices, then any other GPU a prepared claim holds (a GPU
    // taken out of the slice keeps its claims until they are unprepared).
    let mut per_gpu: BTreeMap<String, DraGpu<'_>> = dra
        .devices
        .iter()
        .map(|d| {
            let gpu = DraGpu {
                device: Some(d),
                ..DraGpu::default()
            };
            (d.gpu.to_string(), gpu)
        })
        .collect();
    let mut counted = HashSet::new();
    for c in &dra.claims {
        let gpu = per_gpu.entry(c.gpu.clone()).or_default();
        gpu.memory_bytes = gpu.memory_bytes.saturating_add(c.memory_bytes);
        gpu.compute_permille = gpu
            .compute_permille
            .saturating_add(u64::from(c.compute_permille));
        if counted.insert((c.tenant.as_str(), c.gpu.as_str())) {
            gpu.claims += 1;
        }
    }
    let gpu_sample = |f: &mut Family<'_>, uuid: &str, value: String| {
        let labels = GpuLabels::of(uuid, scrape.gpus);
        let mut l = gpu_labels(&labels).to_vec();
        l.push(host);
        f.sample(&l, value);
    };
    let mut f = Family::new(
        out,
        "gpuslice_dra_prepared_claims",
        "gauge",
        "Claims the DRA driver has prepared on a GPU (a claim with several devices on one GPU \
         counts once).",
    );
    for (uuid, gpu) in &per_gpu {
        gpu_sample(&mut f, uuid, gpu.claims.to_string());
    }
    let mut f = Family::new(
        out,
        "gpuslice_dra_memory_capacity_bytes",
        "gauge",
        "The memory capacity the DRA driver publishes for a GPU's device in its ResourceSlice \
         (no series for a GPU it does not publish).",
    );
    for (uuid, gpu) in &per_gpu {
        if let Some(d) = gpu.device {
            gpu_sample(&mut f, uuid, d.memory_bytes.to_string());
        }
    }
    let mut f = Family::new(
        out,
        "gpuslice_dra_memory_allocated_bytes",
        "gauge",
        "Memory of a GPU's device consumed by the claims the DRA driver has prepared on it.",
    );
    for (uuid, gpu) in &per_gpu {
        gpu_sample(&mut f, uuid, gpu.memory_bytes.to_string());
    }
    let mut f = Family::new(
        out,
        "gpuslice_dra_compute_capacity_ratio",
        "gauge",
        "The compute capacity the DRA driver publishes for a GPU's device, as a fraction of \
         the GPU's time (the slice's 100 percent is 1; no series for a GPU it does not \
         publish).",
    );
    for (uuid, gpu) in &per_gpu {
        if let Some(d) = gpu.device {
            gpu_sample(
                &mut f,
                uuid,
                (f64::from(d.compute_percent) / 100.0).to_string(),
            );
        }
    }
    let mut f = Family::new(
        out,
        "gpuslice_dra_compute_allocated_ratio",
        "gauge",
        "Compute of a GPU's device consumed by the claims the DRA driver has prepared on it, \
         as a fraction of the GPU's time (their guaranteed shares, added up).",
    );
    for (uuid, gpu) in &per_gpu {
        #[allow(clippy::cast_precision_loss)]
        let permille = gpu.compute_permille as f64;
        gpu_sample(&mut f, uuid, (permille / 1000.0).to_string());
    }
    let mut f = Family::new(
        out,
        "gpuslice_dra_unreadable_claim_records",
        "gauge",
        "Claims the DRA driver has prepared whose record in the ledger (the tenant's \
         dra-claim file) cannot be read: counted_by=\"quota\" are counted by their tenant's \
         quota instead; counted_by=\"nothing\" have an unreadable quota too, and while there \
         is one the driver prepares no claim.",
    );
    let unreadable = dra.unreadable_records;
    f.sample(
        &[("counted_by", "quota"), host],
        unreadable.counted_by_quota,
    );
    f.sample(&[("counted_by", "nothing"), host], unreadable.uncounted);
    let mut f = Family::new(
        out,
        "gpuslice_dra_claim_info",
        "gauge",
        "1 for each GPU of each claim the DRA driver has prepared, naming the claim \
         (namespace, claim; both empty where its record cannot be read) and its tenant.",
    );
    let mut named = HashSet::new();
    for c in &dra.claims {
        if !named.insert((c.tenant.as_str(), c.gpu.as_str())) {
            continue;
        }
        let g = GpuLabels::of(&c.gpu, scrape.gpus);
        let mut labels = vec![
            ("tenant", c.tenant.as_str()),
            ("namespace", c.namespace.as_str()),
            ("claim", c.claim.as_str()),
        ];
        labels.extend(gpu_labels(&g));
        labels.push(host);
        f.sample(&labels, 1);
    }
    for (name, help, errors) in [
        (
            "gpuslice_dra_prepare_errors_total",
            "Claims the DRA driver could not prepare since it started, by reason (the kubelet \
             retries them).",
            &dra.prepare_errors,
        ),
        (
            "gpuslice_dra_unprepare_errors_total",
            "Claims the DRA driver could not unprepare since it started, by reason (the \
             kubelet retries them).",
            &dra.unprepare_errors,
        ),
    ] {
        let mut f = Family::new(out, name, "counter", help);
        for (reason, n) in errors {
            f.sample(&[("reason", reason), host], n);
        }
    }
}

/// Each GPU's capacity, allocation and health.
fn render_gpus(out: &mut String, scrape: &Scrape<'_>) {
    let host = ("Hostname", scrape.hostname);
    let mut f = Family::new(
        out,
        "gpuslice_gpu_memory_total_bytes",
        "gauge",
        "A GPU's memory, as NVML reports it.",
    );
    for g in scrape.gpus {
        let labels = GpuLabels::of(&g.uuid.to_string(), scrape.gpus);
        let mut l = gpu_labels(&labels).to_vec();
        l.push(host);
        f.sample(&l, g.memory_bytes);
    }

    // What the tenants' quotas give out on each GPU: the GPUs NVML lists, then any other
    // a tenant's quota names.
    let mut quota: BTreeMap<String, u64> = scrape
        .gpus
        .iter()
        .map(|g| (g.uuid.to_string(), 0))
        .collect();
    for usage in scrape
        .report
        .iter()
        .flat_map(|r| &r.tenants)
        .filter_map(|t| t.usage.as_ref())
    {
        for gpu in &usage.gpus {
            let total = quota.entry(gpu.uuid.clone()).or_default();
            *total = total.saturating_add(gpu.memory_limit_bytes.unwrap_or(0));
        }
    }
    if scrape.report.is_some() {
        let mut f = Family::new(
            out,
            "gpuslice_gpu_memory_quota_allocated_bytes",
            "gauge",
            "The memory limits of the tenants on a GPU, added up (tenants without a limit \
             add nothing).",
        );
        for (uuid, bytes) in &quota {
            let labels = GpuLabels::of(uuid, scrape.gpus);
            let mut l = gpu_labels(&labels).to_vec();
            l.push(host);
            f.sample(&l, bytes);
        }
    }

    if scrape.gpus.iter().any(|g| g.healthy.is_some()) {
        let mut f = Family::new(
            out,
            "gpuslice_gpu_healthy",
            "gauge",
            "1 if the device plugin advertises a GPU's slices as healthy (the DRA driver: \
             publishes the GPU), 0 if not (lost, a critical XID error, not answering NVML).",
        );
        for g in scrape.gpus {
            if let Some(healthy) = g.healthy {
                let labels = GpuLabels::of(&g.uuid.to_string(), scrape.gpus);
                let mut l = gpu_labels(&labels).to_vec();
                l.push(host);
                f.sample(&l, u8::from(healthy));
            }
        }
    }

    if !scrape.slices.is_empty() {
        for (name, help, value) in [
            (
                "gpuslice_gpu_slices",
                "Slices of a GPU the device plugin advertises as a resource.",
                (|s: &SliceCount| s.advertised) as fn(&SliceCount) -> u32,
            ),
            (
                "gpuslice_gpu_slices_allocated",
                "Slices of a GPU held by the device plugin's tenants, by resource.",
                |s: &SliceCount| s.allocated,
            ),
        ] {
            let mut f = Family::new(out, name, "gauge", help);
            for s in &scrape.slices {
                let labels = GpuLabels::of(&s.gpu.to_string(), scrape.gpus);
                let mut l = gpu_labels(&labels).to_vec();
                l.push(("resource", s.resource.as_str()));
                l.push(host);
                f.sample(&l, value(s));
            }
        }
    }
}

/// One per-tenant, per-GPU family.
struct TenantGpuFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&crate::report::GpuReport) -> Option<String>,
}

/// The tenants' series.
fn render_tenants(out: &mut String, scrape: &Scrape<'_>, report: &Report) {
    let readable: Vec<_> = report
        .tenants
        .iter()
        .filter_map(|t| t.usage.as_ref().map(|u| (t.name.as_str(), u)))
        .collect();
    let families = [
        TenantGpuFamily {
            name: "gpuslice_memory_used_bytes",
            kind: "gauge",
            help: "GPU memory held by the live processes of a tenant on a GPU.",
            value: |g| Some(g.memory_used_bytes.to_string()),
        },
        TenantGpuFamily {
            name: "gpuslice_memory_limit_bytes",
            kind: "gauge",
            help: "The memory quota of a tenant on a GPU (no series when unlimited).",
            value: |g| g.memory_limit_bytes.map(|b| b.to_string()),
        },
        TenantGpuFamily {
            name: "gpuslice_oom_refusals_total",
            kind: "counter",
            help: "Allocations refused for being over the tenant's limit on a GPU.",
            value: |g| Some(g.oom_refusals.to_string()),
        },
        TenantGpuFamily {
            name: "gpuslice_gpu_time_seconds_total",
            kind: "counter",
            help: "GPU time charged to a tenant on a GPU, as the shim measures it (rate() of \
                   it is the share of the GPU the tenant gets).",
            value: |g| Some(seconds(g.gpu_time_ns).to_string()),
        },
        TenantGpuFamily {
            name: "gpuslice_throttled_seconds_total",
            kind: "counter",
            help: "Wall time a tenant's kernel launches waited for their share on a GPU.",
            value: |g| Some(seconds(g.throttled_ns).to_string()),
        },
        TenantGpuFamily {
            name: "gpuslice_compute_share_ratio",
            kind: "gauge",
            help: "The share of GPU time a tenant is guaranteed on a GPU under contention, as \
                   its processes enforce it (no series when it has none).",
            value: |g| g.compute_share_percent.map(|p| (p / 100.0).to_string()),
        },
        TenantGpuFamily {
            name: "gpuslice_compute_limit_ratio",
            kind: "gauge",
            help: "The most GPU time a tenant may use on a GPU, as its processes enforce it \
                   (no series when unlimited).",
            value: |g| g.compute_limit_percent.map(|p| (p / 100.0).to_string()),
        },
    ];
    for family in families {
        let mut f = Family::new(out, family.name, family.kind, family.help);
        for (tenant, usage) in &readable {
            for gpu in &usage.gpus {
                if let Some(value) = (family.value)(gpu) {
                    let g = GpuLabels::of(&gpu.uuid, scrape.gpus);
                    f.sample(&tenant_labels(scrape, tenant, Some(&g)), value);
                }
            }
        }
    }

    let mut f = Family::new(
        out,
        "gpuslice_compute_priority",
        "gauge",
        "1 for the priority a tenant has on a GPU (label priority: high, normal or low).",
    );
    for (tenant, usage) in &readable {
        for gpu in &usage.gpus {
            let g = GpuLabels::of(&gpu.uuid, scrape.gpus);
            let mut labels = tenant_labels(scrape, tenant, Some(&g));
            labels.push(("priority", gpu.priority.unwrap_or("normal")));
            f.sample(&labels, 1);
        }
    }

    let mut f = Family::new(
        out,
        "gpuslice_processes",
        "gauge",
        "Live processes of a tenant (processes that used a GPU through the shim).",
    );
    for (tenant, usage) in &readable {
        f.sample(
            &tenant_labels(scrape, tenant, None),
            count(usage.live_processes),
        );
    }

    let host = ("Hostname", scrape.hostname);
    let mut f = Family::new(
        out,
        "gpuslice_tenants",
        "gauge",
        "Tenants in the ledger, readable or not.",
    );
    f.sample(&[host], count(report.tenants.len()));
    let mut f = Family::new(
        out,
        "gpuslice_ledger_errors",
        "gauge",
        "Tenants whose ledger files could not be read at this scrape (see gpuslice status).",
    );
    f.sample(&[host], count(report.tenants.len() - readable.len()));

    render_unenforced(out, scrape, report);
}

/// Processes outside gpuslice's limits, where they could be looked for.
fn render_unenforced(out: &mut String, scrape: &Scrape<'_>, report: &Report) {
    let Some(check) = &report.unenforced else {
        return;
    };
    let host = ("Hostname", scrape.hostname);
    let mut f = Family::new(
        out,
        "gpuslice_unenforced_check_up",
        "gauge",
        "1 if the GPUs' processes could be checked for ones outside gpuslice's limits at \
         this scrape, 0 if not (see gpuslice status for why).",
    );
    f.sample(&[host], u64::from(check.checked));
    if !check.checked {
        return;
    }
    let mut f = Family::new(
        out,
        "gpuslice_unenforced_processes",
        "gauge",
        "Processes using a GPU without a live gpuslice slot: not under its limits.",
    );
    f.sample(&[host], count(check.processes.len()));
    let mut f = Family::new(
        out,
        "gpuslice_unenforced_unresolved_processes",
        "gauge",
        "Processes using a GPU that this check could not look at (another user's, seen \
         without CAP_SYS_PTRACE): neither enforced nor unenforced as far as it knows.",
    );
    f.sample(&[host], count(check.unresolved));
    let mut f = Family::new(
        out,
        "gpuslice_unenforced_process_memory_bytes",
        "gauge",
        "GPU memory held by a process outside gpuslice's limits (label tenant: the tenant \
         whose container it runs in, empty if none).",
    );
    for p in &check.processes {
        let pid = p.pid.to_string();
        let g = GpuLabels::of(&p.gpu, scrape.gpus);
        let mut labels = tenant_labels(scrape, p.tenant.as_deref().unwrap_or(""), Some(&g));
        labels.push(("pid", &pid));
        f.sample(&labels, p.memory_bytes);
    }
}

/// Nanoseconds as seconds, the base unit Prometheus wants.
fn seconds(ns: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let ns = ns as f64;
    ns / 1e9
}

/// A count as a sample value.
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A label value escaped for the text format: `\`, `"` and line feeds.
pub fn escape_label(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// HELP text escaped for the text format: `\` and line feeds.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{GpuReport, SCHEMA_VERSION, TenantReport, TenantUsage};

    const UUID: &str = "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d";

    fn report(tenants: Vec<TenantReport>) -> Report {
        Report {
            version: SCHEMA_VERSION,
            ledger: "/l".into(),
            gets_window_ms: None,
            unenforced: None,
            read_at: std::time::Instant::now(),
            tenants,
        }
    }

    fn gpu_report(limit: Option<u64>) -> GpuReport {
        GpuReport {
            uuid: UUID.into(),
            memory_used_bytes: 7,
            memory_limit_bytes: limit,
            oom_refusals: 2,
            compute_share_percent: Some(12.5),
            compute_limit_percent: None,
            priority: None,
            compute_source: "quota",
            gpu_time_ns: 1_500_000_000,
            throttled_ns: 1,
            gets_percent: None,
            processes: vec![],
        }
    }

    fn tenant(name: &str, limit: Option<u64>) -> TenantReport {
        TenantReport {
            name: name.into(),
            error: None,
            usage: Some(TenantUsage {
                memory_limit_bytes: None,
                live_processes: 3,
                compute_share_percent: None,
                compute_limit_percent: None,
                priority: None,
                gpus: vec![gpu_report(limit)],
            }),
        }
    }

    fn h100() -> GpuInfo {
        GpuInfo {
            index: 3,
            uuid: GpuUuid::parse(UUID).unwrap(),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 80 << 30,
            healthy: None,
        }
    }

    /// The commit came as a variable of the build script: cargo set it in the environment
    /// of the tests it ran too, and the shim under them refused CUDA for a `GPUSLICE_`
    /// variable it did not know.
    #[test]
    fn the_build_leaves_no_gpuslice_variable_in_the_environment_of_what_cargo_runs() {
        let unknown: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| name.starts_with("GPUSLICE_"))
            .filter(|name| {
                !gpuslice_ledger::SHIM_VARIABLES.contains(&name.as_str())
                    && ![crate::locate::ENV_SHIM, crate::locate::ENV_FAKECUDA]
                        .contains(&name.as_str())
            })
            .collect();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(
            !COMMIT.is_empty() && !COMMIT.contains(char::is_whitespace),
            "{COMMIT:?}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("line\nbreak"), r"line\nbreak");
        assert_eq!(escape_label("team-a.1_x"), "team-a.1_x");
    }

    #[test]
    fn exposition_escapes_odd_names_and_omits_unlimited_series() {
        let broken = TenantReport {
            name: "broken".into(),
            error: Some("bad".into()),
            usage: None,
        };
        let report = report(vec![tenant("we\"ird\\\n", None), broken]);
        let text = render(&Scrape {
            report: Some(&report),
            hostname: "node-1",
            ..Scrape::default()
        });
        let labels = format!(
            r#"{{tenant="we\"ird\\\n",namespace="",pod="",container="",gpu="",UUID="{UUID}",device="",modelName="",Hostname="node-1"}}"#
        );
        for sample in [
            format!("gpuslice_memory_used_bytes{labels} 7\n"),
            format!("gpuslice_gpu_time_seconds_total{labels} 1.5\n"),
            format!("gpuslice_throttled_seconds_total{labels} 0.000000001\n"),
            format!("gpuslice_compute_share_ratio{labels} 0.125\n"),
        ] {
            assert!(text.contains(&sample), "{sample} in {text}");
        }
        assert!(!text.contains("gpuslice_memory_limit_bytes{"), "{text}");
        assert!(!text.contains("gpuslice_compute_limit_ratio{"), "{text}");
        assert!(text.contains(r#"priority="normal"} 1"#), "{text}");
        assert!(
            text.contains("gpuslice_tenants{Hostname=\"node-1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gpuslice_ledger_errors{Hostname=\"node-1\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("broken"), "{text}");
        assert!(text.contains(&format!(
            "gpuslice_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1\n"
        )));
        assert!(text.lines().all(|line| !line.is_empty()));
    }

    #[test]
    fn a_gpu_is_labelled_as_dcgm_labels_it_and_a_pod_tenant_names_its_pod() {
        let report = report(vec![
            tenant("slice-0", Some(20 << 30)),
            tenant("run", Some(4 << 30)),
        ]);
        let gpus = [GpuInfo {
            healthy: Some(false),
            ..h100()
        }];
        let mut owners = HashMap::new();
        owners.insert(
            "slice-0".to_string(),
            PodOwner {
                namespace: "ml".into(),
                pod: "train-0".into(),
                container: "main".into(),
            },
        );
        let text = render(&Scrape {
            report: Some(&report),
            gpus: &gpus,
            owners,
            slices: vec![SliceCount {
                gpu: gpus[0].uuid,
                resource: "gpuslice.dev/gpu".into(),
                advertised: 4,
                allocated: 1,
            }],
            pod_resources_up: Some(true),
            dra: None,
            ready: true,
            hostname: "node-1",
        });
        let gpu =
            format!(r#"gpu="3",UUID="{UUID}",device="nvidia3",modelName="NVIDIA H100 80GB HBM3""#);
        for sample in [
            format!(
                r#"gpuslice_memory_limit_bytes{{tenant="slice-0",namespace="ml",pod="train-0",container="main",{gpu},Hostname="node-1"}} 21474836480"#
            ),
            format!(
                r#"gpuslice_memory_limit_bytes{{tenant="run",namespace="",pod="",container="",{gpu},Hostname="node-1"}} 4294967296"#
            ),
            format!(r#"gpuslice_gpu_memory_total_bytes{{{gpu},Hostname="node-1"}} 85899345920"#),
            format!(
                r#"gpuslice_gpu_memory_quota_allocated_bytes{{{gpu},Hostname="node-1"}} 25769803776"#
            ),
            format!(r#"gpuslice_gpu_healthy{{{gpu},Hostname="node-1"}} 0"#),
            format!(
                r#"gpuslice_gpu_slices{{{gpu},resource="gpuslice.dev/gpu",Hostname="node-1"}} 4"#
            ),
            format!(
                r#"gpuslice_gpu_slices_allocated{{{gpu},resource="gpuslice.dev/gpu",Hostname="node-1"}} 1"#
            ),
            r#"gpuslice_processes{tenant="slice-0",namespace="ml",pod="train-0",container="main",Hostname="node-1"} 3"#.to_string(),
            r#"gpuslice_pod_resources_up{Hostname="node-1"} 1"#.to_string(),
            r#"gpuslice_ready{Hostname="node-1"} 1"#.to_string(),
        ] {
            assert!(text.contains(&format!("{sample}\n")), "{sample} in {text}");
        }
    }

    #[test]
    fn without_a_ledger_only_what_is_known_is_served() {
        let gpus = [h100()];
        let text = render(&Scrape {
            gpus: &gpus,
            hostname: "n",
            ..Scrape::default()
        });
        assert!(
            text.contains("gpuslice_ready{Hostname=\"n\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("gpuslice_build_info{"), "{text}");
        assert!(text.contains("gpuslice_gpu_memory_total_bytes{"), "{text}");
        for absent in [
            "gpuslice_tenants",
            "gpuslice_gpu_memory_quota",
            "gpuslice_gpu_healthy",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }

    #[test]
    fn unenforced_processes_are_counted_and_each_named_by_gpu_pid_and_tenant() {
        let with = |check| Report {
            unenforced: Some(check),
            ..report(Vec::new())
        };
        let checked = with(crate::unenforced::Check {
            checked: true,
            reason: None,
            processes: vec![crate::unenforced::UnenforcedProcess {
                pid: 4242,
                gpu: UUID.into(),
                memory_bytes: 1024,
                tenant: Some("pod-a".into()),
                gone: false,
            }],
            unresolved: 0,
        });
        let text = render(&Scrape {
            report: Some(&checked),
            hostname: "n",
            ..Scrape::default()
        });
        assert!(
            text.contains("gpuslice_unenforced_check_up{Hostname=\"n\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gpuslice_unenforced_processes{Hostname=\"n\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gpuslice_unenforced_unresolved_processes{Hostname=\"n\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"gpuslice_unenforced_process_memory_bytes{{tenant="pod-a",namespace="",pod="",container="",gpu="",UUID="{UUID}",device="",modelName="",Hostname="n",pid="4242"}} 1024"#
            )),
            "{text}"
        );
        let unchecked = with(crate::unenforced::Check {
            checked: false,
            reason: Some("no NVML".into()),
            processes: Vec::new(),
            unresolved: 0,
        });
        let text = render(&Scrape {
            report: Some(&unchecked),
            hostname: "n",
            ..Scrape::default()
        });
        assert!(
            text.contains("gpuslice_unenforced_check_up{Hostname=\"n\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("gpuslice_unenforced_processes"), "{text}");
    }

    #[test]
    fn the_dra_driver_adds_capacity_published_and_allocated_per_gpu_its_claims_and_errors() {
        let gpus = [h100()];
        let other = "GPU-fa4ec0da-0000-4000-8000-0000000000ff";
        let claim = |tenant: &str, gpu: &str, memory, compute| DraClaim {
            tenant: tenant.into(),
            namespace: "ml".into(),
            claim: format!("{tenant}-claim"),
            gpu: gpu.into(),
            memory_bytes: memory,
            compute_permille: compute,
        };
        let text = render(&Scrape {
            gpus: &gpus,
            dra: Some(DraScrape {
                registered: true,
                slice_published: false,
                devices: vec![DraDevice {
                    gpu: gpus[0].uuid,
                    memory_bytes: 80 << 30,
                    compute_percent: 100,
                }],
                claims: vec![
                    // Two devices of one claim on one GPU: one claim there.
                    claim("dra-a", UUID, 4 << 30, 300),
                    claim("dra-a", UUID, 1 << 30, 50),
                    claim("dra-b", UUID, 2 << 30, 250),
                    // A GPU taken out of the slice keeps its claim.
                    claim("dra-c", other, 1 << 30, 100),
                ],
                unreadable_records: UnreadableRecords {
                    counted_by_quota: 1,
                    uncounted: 0,
                },
                prepare_errors: vec![("capacity_exceeded", 2), ("api_server", 0)],
                unprepare_errors: vec![("in_use", 1)],
            }),
            hostname: "n",
            ..Scrape::default()
        });
        let gpu =
            format!(r#"gpu="3",UUID="{UUID}",device="nvidia3",modelName="NVIDIA H100 80GB HBM3""#);
        let gone = format!(r#"gpu="",UUID="{other}",device="",modelName="""#);
        for sample in [
            r#"gpuslice_dra_kubelet_registered{Hostname="n"} 1"#.to_string(),
            r#"gpuslice_dra_resource_slice_published{Hostname="n"} 0"#.to_string(),
            format!(r#"gpuslice_dra_prepared_claims{{{gpu},Hostname="n"}} 2"#),
            format!(r#"gpuslice_dra_prepared_claims{{{gone},Hostname="n"}} 1"#),
            format!(r#"gpuslice_dra_memory_capacity_bytes{{{gpu},Hostname="n"}} 85899345920"#),
            format!(r#"gpuslice_dra_memory_allocated_bytes{{{gpu},Hostname="n"}} 7516192768"#),
            format!(r#"gpuslice_dra_memory_allocated_bytes{{{gone},Hostname="n"}} 1073741824"#),
            format!(r#"gpuslice_dra_compute_capacity_ratio{{{gpu},Hostname="n"}} 1"#),
            format!(r#"gpuslice_dra_compute_allocated_ratio{{{gpu},Hostname="n"}} 0.6"#),
            format!(
                r#"gpuslice_dra_claim_info{{tenant="dra-a",namespace="ml",claim="dra-a-claim",{gpu},Hostname="n"}} 1"#
            ),
            r#"gpuslice_dra_prepare_errors_total{reason="capacity_exceeded",Hostname="n"} 2"#
                .to_string(),
            r#"gpuslice_dra_prepare_errors_total{reason="api_server",Hostname="n"} 0"#.to_string(),
            r#"gpuslice_dra_unprepare_errors_total{reason="in_use",Hostname="n"} 1"#.to_string(),
            r#"gpuslice_dra_unreadable_claim_records{counted_by="quota",Hostname="n"} 1"#
                .to_string(),
            r#"gpuslice_dra_unreadable_claim_records{counted_by="nothing",Hostname="n"} 0"#
                .to_string(),
        ] {
            assert!(text.contains(&format!("{sample}\n")), "{sample} in {text}");
        }
        assert!(
            !text.contains(&format!("gpuslice_dra_memory_capacity_bytes{{{gone}")),
            "a GPU not published has no capacity: {text}"
        );
        assert_eq!(
            text.matches("gpuslice_dra_claim_info{").count(),
            3,
            "one per claim and GPU: {text}"
        );
        assert!(text.contains("# TYPE gpuslice_dra_prepare_errors_total counter\n"));
    }

    #[test]
    fn only_the_dra_driver_has_dra_series() {
        let text = render(&Scrape {
            hostname: "n",
            ..Scrape::default()
        });
        assert!(!text.contains("gpuslice_dra_"), "{text}");
    }
}
