//! Processes that use a GPU without gpuslice's limits: on a node where GPUs are shared
//! through gpuslice, every process with a context on a GPU should hold a live slot in some
//! tenant's usage file. One that does not got past the shim (an image whose loader ignored
//! the preload, a static binary, `LD_PRELOAD` unset by the program, a process started
//! outside any tenant) and runs unlimited. Nothing can stop it from here; it must be seen.
//!
//! NVML lists the processes by the host's PIDs. A slot names its process by the PID in the
//! process's own PID namespace and the inode of that namespace, which the host maps to its
//! own PIDs through `/proc/<pid>/status` (`NSpid`) and `/proc/<pid>/ns/pid`. So the check
//! runs only in the host's PID namespace, and says so where it cannot.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use gpuslice_ledger::{GpuUuid, Ledger, SlotInfo, TenantName};
use serde::Serialize;

use gpuslice_k8s::nvml::{GpuProcess, Nvml};

/// The inode of the initial PID namespace, fixed by the kernel (`PROC_PID_INIT_INO`).
const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// A process as it names itself in its slot: its PID namespace and its PID there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The inode of its PID namespace.
    pub pid_namespace: u64,
    /// Its PID in that namespace.
    pub pid: u32,
}

/// A process using a GPU without a live slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnenforcedProcess {
    /// Its PID on the host.
    pub pid: u32,
    /// The GPU it has a context on.
    pub gpu: String,
    /// The device memory NVML says it holds.
    pub memory_bytes: u64,
    /// The tenant whose container (PID namespace) it runs in, where one is known: a live
    /// process of that tenant shares its PID namespace.
    pub tenant: Option<String>,
    /// The process is gone while the GPU still holds its memory: something it left behind
    /// keeps it (a forked child that kept its descriptors of the driver and let go of its
    /// gpuslice slot), and no quota counts it.
    pub gone: bool,
}

/// How a process with this host PID names itself, as far as the host can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its PID namespace and its PID there.
    Found(Identity),
    /// There is no such process (it ended; NVML still lists what it held).
    Gone,
    /// It exists but cannot be read (hidden from this process).
    Hidden,
}

/// The outcome of the check, as `status --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Whether the GPUs' processes could be checked at all.
    pub checked: bool,
    /// Why not, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The processes found without a live slot (empty when not checked).
    pub processes: Vec<UnenforcedProcess>,
    /// GPU processes whose PID exists but could not be read (hidden from this process):
    /// neither enforced nor unenforced as far as this check knows.
    pub unresolved: usize,
}

impl Check {
    /// A check that could not run, and why.
    fn unavailable(reason: impl Into<String>) -> Check {
        Check {
            checked: false,
            reason: Some(reason.into()),
            processes: Vec::new(),
            unresolved: 0,
        }
    }
}

/// Runs the check on this node: NVML's processes of every GPU against the live slots of
/// every tenant of `ledger`.
pub fn check(ledger: &Ledger) -> Check {
    if own_pid_namespace() != Some(INIT_PID_NAMESPACE) {
        return Check::unavailable(
            "this process is not in the host's PID namespace, and NVML numbers processes by \
             the host's PIDs (run it on the host, or with hostPID)",
        );
    }
    let nvml = match Nvml::open() {
        Ok(nvml) => nvml,
        Err(e) => return Check::unavailable(format!("NVML: {e}")),
    };
    let gpus = match nvml.gpus() {
        Ok(gpus) => gpus,
        Err(e) => return Check::unavailable(format!("NVML: {e}")),
    };
    let mut listed = Vec::new();
    for gpu in gpus {
        match nvml.processes(&gpu.uuid) {
            Ok(processes) => listed.extend(processes.into_iter().map(|p| (gpu.uuid, p))),
            Err(e) => return Check::unavailable(format!("NVML on {}: {e}", gpu.uuid)),
        }
    }
    let slots = live_slots(ledger);
    let (processes, unresolved) = classify(&listed, &slots, host_identity, INIT_PID_NAMESPACE);
    Check {
        checked: true,
        reason: None,
        processes,
        unresolved,
    }
}

/// Every live slot of every tenant. A tenant whose files cannot be read contributes none
/// (its processes then show as unenforced, which is what a reader cannot tell apart).
fn live_slots(ledger: &Ledger) -> Vec<(TenantName, SlotInfo)> {
    let Ok(tenants) = ledger.tenants() else {
        return Vec::new();
    };
    tenants
        .into_iter()
        .filter_map(|t| Some((ledger.snapshot_usage(&t).ok()?, t)))
        .flat_map(|(usage, t)| {
            usage
                .slots()
                .into_iter()
                .filter(|s| s.live)
                .map(move |s| (t.clone(), s))
        })
        .collect()
}

/// The GPU processes of `listed` that no live slot of `slots` names, with how many could not
/// be looked up. `identity` maps a host PID to how the process names itself; `host` is the
/// observer's own PID namespace, which no tenant's container is.
pub fn classify(
    listed: &[(GpuUuid, GpuProcess)],
    slots: &[(TenantName, SlotInfo)],
    identity: impl Fn(u32) -> Lookup,
    host: u64,
) -> (Vec<UnenforcedProcess>, usize) {
    let enforced: HashSet<Identity> = slots
        .iter()
        .map(|(_, s)| Identity {
            pid_namespace: s.pid_namespace,
            pid: s.pid,
        })
        .collect();
    let mut unresolved = 0;
    let mut out = Vec::new();
    for (gpu, process) in listed {
        let who = match identity(process.pid) {
            Lookup::Found(who) => who,
            Lookup::Hidden => {
                unresolved += 1;
                continue;
            }
            Lookup::Gone => {
                out.push(UnenforcedProcess {
                    pid: process.pid,
                    gpu: gpu.to_string(),
                    memory_bytes: process.memory_bytes,
                    tenant: None,
                    gone: true,
                });
                continue;
            }
        };
        if enforced.contains(&who) {
            continue;
        }
        let tenant = (who.pid_namespace != host)
            .then(|| {
                slots
                    .iter()
                    .find(|(_, s)| s.pid_namespace == who.pid_namespace)
                    .map(|(t, _)| t.to_string())
            })
            .flatten();
        out.push(UnenforcedProcess {
            pid: process.pid,
            gpu: gpu.to_string(),
            memory_bytes: process.memory_bytes,
            tenant,
            gone: false,
        });
    }
    (out, unresolved)
}

/// How the process with this host PID names itself: its PID namespace and its PID there
/// (the last `NSpid` entry); or that it is gone, or hidden.
pub fn host_identity(pid: u32) -> Lookup {
    match read_identity(pid) {
        Some(who) => Lookup::Found(who),
        None if !std::path::Path::new(&format!("/proc/{pid}")).exists() => Lookup::Gone,
        None => Lookup::Hidden,
    }
}

/// [`host_identity`]'s reading of `/proc`.
fn read_identity(pid: u32) -> Option<Identity> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let inner = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()?;
    let pid_namespace = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?.ino();
    Some(Identity {
        pid_namespace,
        pid: inner,
    })
}

/// The inode of this process's PID namespace.
fn own_pid_namespace() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// One line per unenforced process, for logs and the table.
pub fn describe(p: &UnenforcedProcess) -> String {
    if p.gone {
        return format!(
            "pid {} is gone but {} still holds {} for it, counted in no quota (a forked child \
             that kept its descriptors of the driver?)",
            p.pid,
            p.gpu,
            crate::quantity::format_size(p.memory_bytes)
        );
    }
    let whose = p.tenant.as_deref().map_or_else(
        || "outside any tenant".to_string(),
        |t| format!("in tenant {t}'s container"),
    );
    format!(
        "pid {} ({whose}) uses {} without gpuslice's limits ({})",
        p.pid,
        p.gpu,
        crate::quantity::format_size(p.memory_bytes)
    )
}

/// Logs processes that use a GPU outside gpuslice's limits, each once (while it lasts), and
/// why the check cannot run or how many processes it could not look at, once until that
/// changes. The device plugin and the DRA driver log through it.
#[derive(Debug, Default)]
pub struct UnenforcedLog {
    seen: HashSet<(u32, String)>,
    unavailable: Option<String>,
    unresolved: usize,
}

impl UnenforcedLog {
    /// Logs what `check` found that was not logged yet.
    pub fn log(&mut self, check: &Check) {
        if let Some(reason) = &check.reason {
            if self.unavailable.as_ref() != Some(reason) {
                tracing::warn!("cannot check for processes outside gpuslice's limits: {reason}");
                self.unavailable = Some(reason.clone());
            }
            return;
        }
        self.unavailable = None;
        if check.unresolved != self.unresolved && check.unresolved > 0 {
            tracing::warn!(
                "{} process(es) using a GPU could not be looked at (another user's, and this \
                 process lacks CAP_SYS_PTRACE): whether they are under gpuslice's limits is \
                 not known",
                check.unresolved
            );
        }
        self.unresolved = check.unresolved;
        let now: HashSet<(u32, String)> = check
            .processes
            .iter()
            .map(|p| (p.pid, p.gpu.clone()))
            .collect();
        for p in &check.processes {
            if !self.seen.contains(&(p.pid, p.gpu.clone())) {
                tracing::warn!("{}", describe(p));
            }
        }
        self.seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = INIT_PID_NAMESPACE;
    const POD: u64 = 4_026_532_999;

    fn slot(pid: u32, pid_namespace: u64) -> SlotInfo {
        SlotInfo {
            index: 0,
            pid,
            pid_namespace,
            claimed_unix_ms: 0,
            live: true,
            memory_bytes: Vec::new(),
        }
    }

    fn gpu() -> GpuUuid {
        GpuUuid([7; 16])
    }

    fn listed(pids: &[u32]) -> Vec<(GpuUuid, GpuProcess)> {
        pids.iter()
            .map(|&pid| {
                (
                    gpu(),
                    GpuProcess {
                        pid,
                        memory_bytes: 1 << 20,
                    },
                )
            })
            .collect()
    }

    /// Host PIDs 100.. map to PIDs 1.. in the pod's namespace; 50.. are host processes;
    /// 10.. are hidden, the rest gone.
    fn table(pid: u32) -> Lookup {
        match pid {
            100.. => Lookup::Found(Identity {
                pid_namespace: POD,
                pid: pid - 99,
            }),
            50..100 => Lookup::Found(Identity {
                pid_namespace: HOST,
                pid,
            }),
            10..50 => Lookup::Hidden,
            _ => Lookup::Gone,
        }
    }

    #[test]
    fn a_process_with_a_live_slot_is_enforced_whatever_namespace_it_is_in() {
        let t = TenantName::new("a").unwrap();
        let slots = vec![(t.clone(), slot(1, POD)), (t, slot(60, HOST))];
        let (found, unresolved) = classify(&listed(&[100, 60]), &slots, table, HOST);
        assert_eq!((found, unresolved), (vec![], 0));
    }

    #[test]
    fn a_process_in_a_tenants_container_without_a_slot_is_named_with_the_tenant() {
        let slots = vec![(TenantName::new("a").unwrap(), slot(1, POD))];
        let (found, _) = classify(&listed(&[100, 101]), &slots, table, HOST);
        assert_eq!(
            found,
            vec![UnenforcedProcess {
                pid: 101,
                gpu: gpu().to_string(),
                memory_bytes: 1 << 20,
                tenant: Some("a".into()),
                gone: false,
            }]
        );
    }

    #[test]
    fn a_host_process_without_a_slot_is_outside_any_tenant_even_beside_host_tenants() {
        let slots = vec![(TenantName::new("run-1").unwrap(), slot(60, HOST))];
        let (found, _) = classify(&listed(&[61]), &slots, table, HOST);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].tenant, None);
        assert!(describe(&found[0]).contains("outside any tenant"));
    }

    #[test]
    fn the_same_pid_in_another_namespace_is_not_enforced_by_a_slot() {
        // A slot naming PID 1 of the host namespace does not cover PID 1 of the pod.
        let slots = vec![(TenantName::new("a").unwrap(), slot(1, HOST))];
        let (found, _) = classify(&listed(&[100]), &slots, table, HOST);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn hidden_processes_are_counted_apart_and_gone_ones_are_unenforced() {
        let (found, unresolved) = classify(&listed(&[13, 14, 3]), &[], table, HOST);
        assert_eq!(unresolved, 2);
        assert_eq!(found.len(), 1);
        assert!(found[0].gone);
        assert!(describe(&found[0]).contains("is gone"));
    }

    #[test]
    fn this_process_can_look_itself_up_and_a_pid_no_process_has_is_gone() {
        let Lookup::Found(me) = host_identity(std::process::id()) else {
            panic!("cannot look this process up");
        };
        assert_eq!(Some(me.pid_namespace), own_pid_namespace());
        assert_eq!(host_identity(u32::MAX), Lookup::Gone);
    }
}
