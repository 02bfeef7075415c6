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

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::Limits;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const GPU_A: GpuUuid = GpuUuid([0xa; 16]);
    const GPU_B: GpuUuid = GpuUuid([0xb; 16]);
    const GPU_C: GpuUuid = GpuUuid([0xc; 16]);

    fn name(text: &str) -> TenantName {
        TenantName::new(text).unwrap()
    }

    /// A fresh ledger in a temporary directory.
    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        (dir, ledger)
    }

    fn tenant<'a>(report: &'a Report, name: &str) -> &'a TenantReport {
        report
            .tenants
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tenant {name} in {report:#?}"))
    }

    fn usage_of<'a>(report: &'a Report, name: &str) -> &'a TenantUsage {
        let t = tenant(report, name);
        assert_eq!(t.error, None, "{t:#?}");
        t.usage.as_ref().expect("usage")
    }

    fn gpu<'a>(usage: &'a TenantUsage, uuid: &GpuUuid) -> &'a GpuReport {
        usage
            .gpus
            .iter()
            .find(|g| g.uuid == uuid.to_string())
            .unwrap_or_else(|| panic!("no GPU {uuid} in {usage:#?}"))
    }

    #[test]
    fn a_missing_ledger_directory_is_an_error_and_an_empty_one_has_no_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = read_report(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!missing.exists(), "reading created the ledger");

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = read_report(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");

        let report = read_report(dir.path()).unwrap();
        assert!(report.tenants.is_empty());
        assert_eq!(report.version, SCHEMA_VERSION);
        assert_eq!(report.ledger, dir.path().display().to_string());
        assert_eq!(report.gets_window_ms, None);
    }

    #[test]
    fn a_tenant_without_usage_shows_its_quota_and_nothing_used() {
        let (dir, ledger) = ledger();
        let quota = TenantQuota {
            defaults: Limits {
                memory_bytes: Some(4 * GIB),
                compute_share_permille: Some(300),
                compute_limit_permille: Some(725),
                priority: Some(Priority::Low),
            },
            per_gpu: vec![(
                GPU_B,
                Limits {
                    memory_bytes: Some(GIB),
                    compute_share_permille: Some(100),
                    ..Limits::default()
                },
            )],
        };
        ledger.write_quota(&name("idle"), &quota).unwrap();

        let report = read_report(dir.path()).unwrap();
        let usage = usage_of(&report, "idle");
        assert_eq!(usage.memory_limit_bytes, Some(4 * GIB));
        assert_eq!(usage.compute_share_percent, Some(30.0));
        assert_eq!(usage.compute_limit_percent, Some(72.5));
        assert_eq!(usage.priority, Some("low"));
        assert_eq!(usage.live_processes, 0);
        // Only the GPU the quota names, with its own limits, from the quota.
        assert_eq!(usage.gpus.len(), 1, "{usage:#?}");
        let b = gpu(usage, &GPU_B);
        assert_eq!(b.memory_limit_bytes, Some(GIB));
        assert_eq!(b.compute_share_percent, Some(10.0));
        assert_eq!(b.compute_limit_percent, None);
        assert_eq!(b.compute_source, "quota");
        assert_eq!(
            (b.memory_used_bytes, b.gpu_time_ns, b.oom_refusals),
            (0, 0, 0)
        );
        assert!(b.processes.is_empty());
    }

    #[test]
    fn a_tenant_on_several_gpus_shows_each_gpus_memory_time_and_processes() {
        let (dir, ledger) = ledger();
        let t = name("busy");
        ledger
            .write_quota(
                &t,
                &TenantQuota {
                    defaults: Limits {
                        memory_bytes: Some(4 * GIB),
                        ..Limits::default()
                    },
                    per_gpu: vec![
                        (
                            GPU_B,
                            Limits {
                                memory_bytes: Some(2 * GIB),
                                ..Limits::default()
                            },
                        ),
                        (
                            GPU_C,
                            Limits {
                                memory_bytes: Some(GIB),
                                ..Limits::default()
                            },
                        ),
                    ],
                },
            )
            .unwrap();
        let usage = ledger.open_usage(&t).unwrap();
        let a = usage.register_gpu(&GPU_A).unwrap();
        let b = usage.register_gpu(&GPU_B).unwrap();
        let first = usage.claim_slot().unwrap();
        let second = usage.claim_slot().unwrap();
        first.try_reserve(a, GIB, 4 * GIB).unwrap();
        first.try_reserve(b, 256 * MIB, 2 * GIB).unwrap();
        second.try_reserve(a, 512 * MIB, 4 * GIB).unwrap();
        first.add_gpu_time(a, 3_000);
        second.add_gpu_time(a, 4_000);
        first.add_gpu_time(b, 500);
        usage.record_oom(b);
        usage.record_oom(b);
        usage.add_throttled(b, 7_000);

        let report = read_report(dir.path()).unwrap();
        let tenant = usage_of(&report, "busy");
        assert_eq!(tenant.live_processes, 2);
        // The GPUs used, in the order they were first used, then those only the quota names.
        let uuids: Vec<&str> = tenant.gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(
            uuids,
            [GPU_A, GPU_B, GPU_C].map(|g| g.to_string()),
            "{tenant:#?}"
        );

        let on_a = gpu(tenant, &GPU_A);
        assert_eq!(on_a.memory_used_bytes, GIB + 512 * MIB);
        assert_eq!(on_a.memory_limit_bytes, Some(4 * GIB), "the defaults");
        assert_eq!(on_a.gpu_time_ns, 7_000);
        assert_eq!((on_a.oom_refusals, on_a.throttled_ns), (0, 0));
        let slots: Vec<(u32, u64, u64)> = on_a
            .processes
            .iter()
            .map(|p| (p.slot, p.memory_bytes, p.gpu_time_ns))
            .collect();
        assert_eq!(
            slots,
            [
                (first.index(), GIB, 3_000),
                (second.index(), 512 * MIB, 4_000)
            ]
        );
        assert!(on_a.processes.iter().all(|p| p.pid == std::process::id()));

        let on_b = gpu(tenant, &GPU_B);
        assert_eq!(on_b.memory_used_bytes, 256 * MIB);
        assert_eq!(on_b.memory_limit_bytes, Some(2 * GIB), "its own entry");
        assert_eq!(on_b.gpu_time_ns, 500);
        assert_eq!((on_b.oom_refusals, on_b.throttled_ns), (2, 7_000));
        // A process with nothing on a GPU is not listed under it.
        assert_eq!(
            on_b.processes.iter().map(|p| p.slot).collect::<Vec<_>>(),
            [first.index()]
        );

        let on_c = gpu(tenant, &GPU_C);
        assert_eq!(on_c.memory_limit_bytes, Some(GIB));
        assert_eq!(on_c.memory_used_bytes, 0);
        assert!(on_c.processes.is_empty());
        drop((first, second));
    }

    #[test]
    fn processes_that_are_gone_hold_nothing_but_their_gpu_time_stays() {
        let (dir, ledger) = ledger();
        let t = name("left");
        let usage = ledger.open_usage(&t).unwrap();
        let a = usage.register_gpu(&GPU_A).unwrap();
        let live = usage.claim_slot().unwrap();
        live.try_reserve(a, 100 * MIB, u64::MAX).unwrap();
        let dead = usage.claim_slot().unwrap();
        dead.try_reserve(a, 200 * MIB, u64::MAX).unwrap();
        dead.add_gpu_time(a, 9_000);
        dead.publish_compute(
            a,
            ComputeSettings {
                share_permille: Some(900),
                ..ComputeSettings::default()
            },
        );
        // What the kernel leaves of a process that died: its slot, without its lock.
        dead.close_as_if_dead();
        let exited = usage.claim_slot().unwrap();
        exited.add_gpu_time(a, 1_000);
        // A clean exit: the slot is emptied, its GPU time retired into the tenant's.
        drop(exited);

        let report = read_report(dir.path()).unwrap();
        let tenant = usage_of(&report, "left");
        assert_eq!(tenant.live_processes, 1);
        assert_eq!(tenant.memory_limit_bytes, None, "no quota file: unlimited");
        let on_a = gpu(tenant, &GPU_A);
        assert_eq!(on_a.memory_used_bytes, 100 * MIB);
        assert_eq!(on_a.processes.len(), 1);
        assert_eq!(on_a.processes[0].slot, live.index());
        assert_eq!(on_a.gpu_time_ns, 10_000, "departed processes' time counts");
        // What a dead process published is not what the tenant enforces.
        assert_eq!(on_a.compute_share_percent, None);
        assert_eq!(on_a.compute_source, "quota");
        drop(live);
    }

    #[test]
    fn live_processes_settings_are_shown_under_the_quotas_ceiling() {
        let (dir, ledger) = ledger();
        let t = name("capped");
        ledger
            .write_quota(
                &t,
                &TenantQuota {
                    defaults: Limits {
                        compute_share_permille: Some(500),
                        compute_limit_permille: Some(800),
                        ..Limits::default()
                    },
                    per_gpu: Vec::new(),
                },
            )
            .unwrap();
        let usage = ledger.open_usage(&t).unwrap();
        let a = usage.register_gpu(&GPU_A).unwrap();
        let b = usage.register_gpu(&GPU_B).unwrap();
        let slot = usage.claim_slot().unwrap();
        // Lower than the quota on A; above it on B (a process wrote its own usage file).
        slot.publish_compute(
            a,
            ComputeSettings {
                share_permille: Some(250),
                limit_permille: Some(500),
                priority: Some(Priority::Low),
            },
        );
        slot.publish_compute(
            b,
            ComputeSettings {
                share_permille: Some(1000),
                limit_permille: None,
                priority: Some(Priority::High),
            },
        );

        let report = read_report(dir.path()).unwrap();
        let tenant = usage_of(&report, "capped");
        assert_eq!(tenant.compute_share_percent, Some(50.0), "the quota's");
        let on_a = gpu(tenant, &GPU_A);
        assert_eq!(
            (
                on_a.compute_share_percent,
                on_a.compute_limit_percent,
                on_a.priority,
                on_a.compute_source
            ),
            (Some(25.0), Some(50.0), Some("low"), "published")
        );
        let on_b = gpu(tenant, &GPU_B);
        assert_eq!(
            (
                on_b.compute_share_percent,
                on_b.compute_limit_percent,
                on_b.priority,
            ),
            (Some(50.0), Some(80.0), Some("normal")),
            "capped by the quota: {on_b:#?}"
        );
        drop(slot);
    }

    #[test]
    fn damaged_files_are_their_tenants_error_and_the_others_are_still_reported() {
        let (dir, ledger) = ledger();
        for t in ["a-fine", "b-bad-quota", "c-short-usage"] {
            ledger
                .write_quota(&name(t), &TenantQuota::default())
                .unwrap();
        }
        ledger.open_usage(&name("c-short-usage")).unwrap();
        let bad_quota = ledger.quota_path(&name("b-bad-quota"));
        std::fs::write(&bad_quota, "not a quota file").unwrap();
        let short_usage = ledger.usage_path(&name("c-short-usage"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&short_usage)
            .unwrap()
            .set_len(100)
            .unwrap();

        let report = read_report(dir.path()).unwrap();
        let names: Vec<&str> = report.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a-fine", "b-bad-quota", "c-short-usage"], "by name");
        assert!(usage_of(&report, "a-fine").gpus.is_empty());
        for (t, path) in [("b-bad-quota", &bad_quota), ("c-short-usage", &short_usage)] {
            let entry = tenant(&report, t);
            assert!(entry.usage.is_none(), "{entry:#?}");
            let error = entry.error.as_deref().expect("an error");
            assert!(error.contains(&path.display().to_string()), "{error}");
            // In JSON: the name and the error, no usage fields.
            let json = serde_json::to_value(entry).unwrap();
            assert_eq!(
                json,
                serde_json::json!({ "name": t, "error": error }),
                "{json:#}"
            );
        }
    }

    #[test]
    fn a_tenant_directory_with_nothing_in_it_is_shown_and_one_that_is_gone_is_not() {
        let (_dir, ledger) = ledger();
        let empty = name("empty");
        std::fs::create_dir(ledger.tenant_dir(&empty)).unwrap();
        let shown = tenant_report(&ledger, &empty).expect("an empty tenant is still one");
        let usage = shown.usage.as_ref().expect("usage");
        assert_eq!(
            (
                usage.memory_limit_bytes,
                usage.live_processes,
                usage.gpus.len()
            ),
            (None, 0, 0)
        );
        // Listed, then removed before it was read.
        assert!(tenant_report(&ledger, &name("gone")).is_none());
    }

    #[test]
    fn gets_is_the_gpu_time_gained_over_the_wall_time_between_two_reports() {
        let (dir, ledger) = ledger();
        let t = name("worker");
        let usage = ledger.open_usage(&t).unwrap();
        let a = usage.register_gpu(&GPU_A).unwrap();
        let slot = usage.claim_slot().unwrap();
        slot.add_gpu_time(a, 5_000_000);
        let before = read_report(dir.path()).unwrap();
        // 250 ms of GPU time in a second of wall time; a GPU first used in between has no
        // earlier reading to measure against.
        slot.add_gpu_time(a, 250_000_000);
        let b = usage.register_gpu(&GPU_B).unwrap();
        slot.add_gpu_time(b, 1_000);
        let mut after = read_report(dir.path()).unwrap();
        after.read_at = before.read_at + Duration::from_secs(1);
        measure_gets(&before, &mut after);

        assert_eq!(after.gets_window_ms, Some(1000));
        let tenant = usage_of(&after, "worker");
        assert_eq!(gpu(tenant, &GPU_A).gets_percent, Some(25.0));
        assert_eq!(gpu(tenant, &GPU_B).gets_percent, None);
        drop(slot);
    }
}
