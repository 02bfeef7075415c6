//! The report as the screen's lines: each GPU (in UUID order) with its tenants' figures, the
//! tenants no GPU row shows, and the damaged ones. Nothing here draws.

use crate::report::{Report, TenantUsage};

/// One line of the body.
#[derive(Debug)]
pub(super) enum Item<'a> {
    /// A GPU, heading the tenants that use it.
    Gpu { uuid: &'a str, tenants: usize },
    /// A heading of tenants that have no GPU row.
    Heading(&'static str),
    /// A tenant on the GPU above, or a tenant with no GPU used yet.
    Tenant(Row<'a>),
    /// A tenant whose files could not be read: one line of its error.
    Damaged { name: &'a str, error: String },
    /// A note in place of rows (`no tenants`).
    Note(&'static str),
}

/// The figures of one tenant on one GPU: what the columns show.
#[derive(Debug)]
pub(super) struct Row<'a> {
    pub(super) tenant: &'a str,
    pub(super) used: u64,
    pub(super) limit: Option<u64>,
    pub(super) oom: u64,
    /// Compute share, limit (percent) and priority.
    pub(super) share: Option<f64>,
    pub(super) compute_limit: Option<f64>,
    pub(super) priority: Option<&'a str>,
    /// The share received since the last refresh, in percent.
    pub(super) gets: Option<f64>,
    /// Time its launches waited for credit, in total.
    pub(super) throttled_ns: Option<u64>,
    /// Live processes: those holding memory on this GPU, or for a tenant with no GPU used
    /// yet, those holding a slot.
    pub(super) processes: usize,
    pub(super) pids: Vec<u32>,
}

/// The report regrouped by GPU: each GPU (in UUID order) with its tenants (in name order),
/// then the tenants no GPU row shows, then the damaged ones. `width` is the width error lines
/// are wrapped at.
pub(super) fn items(report: &Report, width: u16) -> Vec<Item<'_>> {
    let readable: Vec<(&str, &TenantUsage)> = report
        .tenants
        .iter()
        .filter_map(|t| Some((t.name.as_str(), t.usage.as_ref()?)))
        .collect();
    let mut uuids: Vec<&str> = readable
        .iter()
        .flat_map(|(_, usage)| usage.gpus.iter().map(|g| g.uuid.as_str()))
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    let mut out = Vec::new();
    for uuid in uuids {
        let rows: Vec<Row<'_>> = readable
            .iter()
            .filter_map(|(name, usage)| {
                let gpu = usage.gpus.iter().find(|g| g.uuid == uuid)?;
                Some(Row {
                    tenant: name,
                    used: gpu.memory_used_bytes,
                    limit: gpu.memory_limit_bytes,
                    oom: gpu.oom_refusals,
                    share: gpu.compute_share_percent,
                    compute_limit: gpu.compute_limit_percent,
                    priority: gpu.priority,
                    gets: gpu.gets_percent,
                    throttled_ns: Some(gpu.throttled_ns),
                    processes: gpu.processes.len(),
                    pids: gpu.processes.iter().map(|p| p.pid).collect(),
                })
            })
            .collect();
        out.push(Item::Gpu {
            uuid,
            tenants: rows.len(),
        });
        out.extend(rows.into_iter().map(Item::Tenant));
    }
    let idle: Vec<Row<'_>> = readable
        .iter()
        .filter(|(_, usage)| usage.gpus.is_empty())
        .map(|(name, usage)| Row {
            tenant: name,
            used: 0,
            limit: usage.memory_limit_bytes,
            oom: 0,
            share: usage.compute_share_percent,
            compute_limit: usage.compute_limit_percent,
            priority: usage.priority,
            gets: None,
            throttled_ns: None,
            processes: usage.live_processes,
            pids: Vec::new(),
        })
        .collect();
    if !idle.is_empty() {
        out.push(Item::Heading("no GPU used yet"));
        out.extend(idle.into_iter().map(Item::Tenant));
    }
    let damaged: Vec<_> = report
        .tenants
        .iter()
        .filter(|t| t.usage.is_none())
        .collect();
    if !damaged.is_empty() {
        out.push(Item::Heading("unreadable"));
    }
    for tenant in damaged {
        let error = tenant.error.as_deref().unwrap_or("unreadable");
        // The name and `error: ` on the first line, the rest wrapped under it.
        let text: Vec<char> = format!("{}  error: {error}", tenant.name).chars().collect();
        let room = usize::from(width.saturating_sub(4)).max(1);
        for (i, chunk) in text.chunks(room).enumerate() {
            out.push(Item::Damaged {
                name: if i == 0 { &tenant.name } else { "" },
                error: chunk.iter().collect(),
            });
        }
    }
    if report.tenants.is_empty() {
        out.push(Item::Note("(no tenants)"));
    }
    out
}
