//! The report every observer of the ledger shares: what each tenant holds and gets, per
//! GPU, read the way an observer must read another tenant's files. `gpuslice status` prints
//! it (as a table or as JSON), `gpuslice top` draws it, and the metrics exporter and the
//! device plugin's metrics render it.
//!
//! Quota files are read through the ledger's validating reader, usage files as `pread`
//! copies ([`Ledger::snapshot_usage`]), so a tenant's damaged or truncated file is reported as
//! that tenant's error and the others are still shown.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use gpuslice_ledger::{
    ComputeSettings, GpuUuid, Ledger, LedgerError, Priority, TenantName, TenantQuota, UsageSnapshot,
};
use serde::Serialize;

use crate::compute::{self, Source, percent_number};
use crate::unenforced;

/// The version of the JSON schema; bumped only when a field changes meaning or goes away
/// (new fields may appear without a bump).
pub const SCHEMA_VERSION: u32 = 1;

/// The whole report (the JSON document).
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub version: u32,
    /// The ledger directory.
    pub ledger: String,
    /// The wall time over which `gets_percent` was measured; `None` (null) when it was not.
    pub gets_window_ms: Option<u64>,
    /// Every tenant, sorted by name.
    pub tenants: Vec<TenantReport>,
    /// Processes using a GPU without a live slot: not under gpuslice's limits. Checked by
    /// `status` (not by every reader of the ledger: it asks NVML).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unenforced: Option<unenforced::Check>,
    /// When the ledger was read (for measuring what tenants get between two reports).
    #[serde(skip)]
    pub read_at: Instant,
}

/// One tenant: its usage, or why it could not be read.
#[derive(Debug, Serialize)]
pub struct TenantReport {
    /// The tenant's name.
    pub name: String,
    /// Why the tenant's files could not be read; when set, the usage fields are absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The usage, when it could be read.
    #[serde(flatten)]
    pub usage: Option<TenantUsage>,
}

/// A readable tenant's usage.
#[derive(Debug, Serialize)]
pub struct TenantUsage {
    /// The limit on GPUs without a limit of their own; `None` (null) = unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// The quota's compute share in percent; `None` (null) = none.
    pub compute_share_percent: Option<f64>,
    /// The quota's compute limit in percent; `None` (null) = none.
    pub compute_limit_percent: Option<f64>,
    /// The quota's priority (`high`, `normal`, `low`); `None` (null) = not set (normal).
    pub priority: Option<&'static str>,
    /// Processes holding a live slot (using a GPU through the shim), with or without memory.
    pub live_processes: usize,
    /// The GPUs the tenant's processes have used, then those its quota names.
    pub gpus: Vec<GpuReport>,
}

/// One GPU of a tenant.
#[derive(Debug, Serialize)]
pub struct GpuReport {
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// What the live processes hold on it.
    pub memory_used_bytes: u64,
    /// The quota's limit on it; `None` (null) = unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Allocations refused for being over the limit.
    pub oom_refusals: u64,
    /// The compute share the tenant enforces on it, in percent; `None` (null) = none.
    pub compute_share_percent: Option<f64>,
    /// The compute limit the tenant enforces on it, in percent; `None` (null) = none.
    pub compute_limit_percent: Option<f64>,
    /// The priority the tenant enforces on it; `None` (null) = not set (normal).
    pub priority: Option<&'static str>,
    /// Where the three above come from: `published` by live processes, or the `quota`.
    pub compute_source: &'static str,
    /// GPU time charged to the tenant on it, in total (departed processes included).
    pub gpu_time_ns: u64,
    /// Wall time the tenant's launches waited for credit on it, in total.
    pub throttled_ns: u64,
    /// The share of the GPU's time the tenant received over `gets_window_ms`, in percent;
    /// `None` (null) when not measured.
    pub gets_percent: Option<f64>,
    /// The live processes holding memory on it, by slot.
    pub processes: Vec<ProcessReport>,
}

/// One live process's memory on one GPU.
#[derive(Debug, Serialize)]
pub struct ProcessReport {
    /// Its slot in the usage file.
    pub slot: u32,
    /// The PID it recorded, in its own PID namespace.
    pub pid: u32,
    /// What it holds on the GPU.
    pub memory_bytes: u64,
    /// GPU time charged to it on the GPU.
    pub gpu_time_ns: u64,
}

/// Reads the ledger twice, `window` apart, and measures what each tenant got in between
/// ([`measure_gets`]); with a zero `window`, once.
pub fn read_sampled_report(dir: &Path, window: Duration) -> anyhow::Result<Report> {
    let first = read_report(dir)?;
    if window.is_zero() {
        return Ok(first);
    }
    std::thread::sleep(window);
    let mut second = read_report(dir)?;
    measure_gets(&first, &mut second);
    Ok(second)
}

/// Fills in `gets_percent` of `after` from the GPU time gained since `before`, for every
/// tenant and GPU in both, and `gets_window_ms`.
pub fn measure_gets(before: &Report, after: &mut Report) {
    let wall = after.read_at.saturating_duration_since(before.read_at);
    let wall_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
    after.gets_window_ms = Some(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX));
    for tenant in &mut after.tenants {
        let Some(usage) = &mut tenant.usage else {
            continue;
        };
        let earlier = before
            .tenants
            .iter()
            .find(|t| t.name == tenant.name)
            .and_then(|t| t.usage.as_ref());
        for gpu in &mut usage.gpus {
            let Some(was) = earlier.and_then(|u| u.gpus.iter().find(|g| g.uuid == gpu.uuid)) else {
                continue;
            };
            gpu.gets_percent = compute::received(was.gpu_time_ns, gpu.gpu_time_ns, wall_ns)
                .map(|fraction| (fraction * 1000.0).round() / 10.0);
        }
    }
}

/// Looks for processes using a GPU outside gpuslice ([`unenforced::check`]) and records
/// what it found in `report`.
pub fn check_unenforced(dir: &Path, report: &mut Report) {
    if let Ok(ledger) = Ledger::open_existing(dir) {
        report.unenforced = Some(unenforced::check(&ledger));
    }
}

/// [`read_report`], with the check for unenforced processes.
pub fn read_report_checked(dir: &Path) -> anyhow::Result<Report> {
    let mut report = read_report(dir)?;
    check_unenforced(dir, &mut report);
    Ok(report)
}

/// Reads the whole ledger at `dir` once (no `gets_percent`); an error only when the
/// directory itself is unusable. A directory that exists but holds nothing yet is a new
/// ledger without tenants; one that does not exist is an error (a mistyped `--dir` must not
/// pass for an idle node).
pub fn read_report(dir: &Path) -> anyhow::Result<Report> {
    check_ledger_dir(dir)?;
    let tenants = match Ledger::open_existing(dir) {
        Ok(ledger) => ledger
            .tenants()
            .with_context(|| format!("could not list the tenants of {}", dir.display()))?
            .iter()
            .filter_map(|t| tenant_report(&ledger, t))
            .collect(),
        // The directory is there, and nothing was made in it yet.
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "no usable gpuslice ledger at {} (pass --dir DIR or set GPUSLICE_DIR)",
                    dir.display()
                )
            });
        }
    };
    Ok(Report {
        version: SCHEMA_VERSION,
        ledger: dir.display().to_string(),
        gets_window_ms: None,
        tenants,
        unenforced: None,
        read_at: Instant::now(),
    })
}

/// An error unless `dir` is a directory.
fn check_ledger_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(anyhow!(
            "{} is not a directory, so not a gpuslice ledger (pass --dir DIR or set \
             GPUSLICE_DIR)",
            dir.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(anyhow!(
            "the ledger directory {} does not exist (pass --dir DIR or set GPUSLICE_DIR; \
             gpuslice run and the device plugin create it)",
            dir.display()
        )),
        Err(e) => Err(anyhow!(
            "cannot read the ledger directory {}: {e}",
            dir.display()
        )),
    }
}

/// One tenant's report; `None` if it was removed while being read.
fn tenant_report(ledger: &Ledger, tenant: &TenantName) -> Option<TenantReport> {
    let failed = |e: LedgerError| {
        Some(TenantReport {
            name: tenant.to_string(),
            error: Some(e.to_string()),
            usage: None,
        })
    };
    let quota = match ledger.read_quota(tenant) {
        Ok(quota) => quota.map(|q| q.quota()),
        Err(e) => return failed(e),
    };
    let usage = match ledger.snapshot_usage(tenant) {
        Ok(usage) => Some(usage),
        Err(e) if e.is_not_found() => None,
        Err(e) => return failed(e),
    };
    if quota.is_none() && usage.is_none() && !ledger.tenant_dir(tenant).exists() {
        return None;
    }
    Some(TenantReport {
        name: tenant.to_string(),
        error: None,
        usage: Some(tenant_usage(quota.as_ref(), usage.as_ref())),
    })
}

/// A tenant's usage from its quota and a copy of its usage file (either may be missing).
fn tenant_usage(quota: Option<&TenantQuota>, usage: Option<&UsageSnapshot>) -> TenantUsage {
    let limit_on = |gpu: &GpuUuid| quota.and_then(|q| q.limits_for(gpu).memory_bytes);
    // The quota's compute settings on a GPU: its entry's, else the defaults.
    let quota_compute = |gpu: &GpuUuid| quota.map(|q| q.limits_for(gpu).compute());
    let live: Vec<_> = usage
        .map(|u| u.slots().into_iter().filter(|s| s.live).collect())
        .unwrap_or_default();
    let registered = usage.map(UsageSnapshot::gpus).unwrap_or_default();
    let mut gpus: Vec<GpuReport> = registered
        .iter()
        .map(|(index, uuid)| {
            let slot_times = usage.map(|u| u.compute_slots(*index)).unwrap_or_default();
            let processes: Vec<ProcessReport> = live
                .iter()
                .filter_map(|slot| {
                    let (_, bytes) = slot.memory_bytes.iter().find(|(g, _)| g == index)?;
                    Some(ProcessReport {
                        slot: slot.index,
                        pid: slot.pid,
                        memory_bytes: *bytes,
                        gpu_time_ns: slot_times
                            .iter()
                            .find(|s| s.index == slot.index)
                            .map_or(0, |s| s.gpu_time_ns),
                    })
                })
                .collect();
            let (settings, source) =
                compute::enforced(usage, &live, Some(*index), quota_compute(uuid));
            let mut gpu = gpu_report(uuid, limit_on(uuid), settings, source);
            gpu.memory_used_bytes = processes
                .iter()
                .fold(0u64, |sum, p| sum.saturating_add(p.memory_bytes));
            gpu.oom_refusals = usage.map_or(0, |u| u.oom_refusals(*index));
            gpu.gpu_time_ns = usage.map_or(0, |u| u.gpu_time_ns(*index));
            gpu.throttled_ns = usage.map_or(0, |u| u.throttled_ns(*index));
            gpu.processes = processes;
            gpu
        })
        .collect();
    for (uuid, limits) in quota.map(|q| q.per_gpu.as_slice()).unwrap_or_default() {
        if !registered.iter().any(|(_, u)| u == uuid) {
            gpus.push(gpu_report(
                &uuid.to_string(),
                limits.memory_bytes,
                limits.compute(),
                Source::Quota,
            ));
        }
    }
    let defaults = quota.map(|q| q.defaults.compute()).unwrap_or_default();
    TenantUsage {
        memory_limit_bytes: quota.and_then(|q| q.defaults.memory_bytes),
        compute_share_percent: defaults.share_permille.map(percent_number),
        compute_limit_percent: defaults.limit_permille.map(percent_number),
        priority: defaults.priority.map(Priority::name),
        live_processes: live.len(),
        gpus,
    }
}

/// A GPU's report with its limits and compute settings, and nothing used yet.
fn gpu_report(
    uuid: &(impl ToString + ?Sized),
    memory_limit_bytes: Option<u64>,
    settings: ComputeSettings,
    source: Source,
) -> GpuReport {
    GpuReport {
        uuid: uuid.to_string(),
        memory_used_bytes: 0,
        memory_limit_bytes,
        oom_refusals: 0,
        compute_share_percent: settings.share_permille.map(percent_number),
        compute_limit_percent: settings.limit_permille.map(percent_number),
        priority: settings.priority.map(Priority::name),
        compute_source: source.name(),
        gpu_time_ns: 0,
        throttled_ns: 0,
        gets_percent: None,
        processes: Vec::new(),
    }
}
