//! `gpuslice run`: enter a tenant, run the command under the shim, leave the tenant.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use anyhow::anyhow;
use gpuslice_ledger::{GpuUuid, Ledger, Priority, TenantName, TenantQuota};

use crate::cli::RunArgs;
use crate::compute::format_percent;
use crate::exit::{self, Failure, ResultExt};
use crate::locate::{self, ENV_DIR, ENV_FAKECUDA, ENV_SHIM};
use crate::quantity::format_quantity;
use crate::quota_flags::QuotaRequest;
use crate::shim_check;
use crate::signals::{self, Forwarder};
use crate::tenancy::{self, Entry, Join};

/// The tenant of the command (the shim reads it; `run` sets it).
const ENV_TENANT: &str = "GPUSLICE_TENANT";
/// A limit below the tenant's quota (the shim reads it; `run` sets it when lowering).
const ENV_MEMORY_LIMIT: &str = "GPUSLICE_MEMORY_LIMIT";
/// A compute share below the tenant's (the shim reads it; `run` sets it when lowering).
const ENV_COMPUTE_SHARE: &str = "GPUSLICE_COMPUTE_SHARE";
/// A compute limit below the tenant's (the shim reads it; `run` sets it when lowering).
const ENV_COMPUTE_LIMIT: &str = "GPUSLICE_COMPUTE_LIMIT";
/// A priority below the tenant's (the shim reads it; `run` sets it when lowering).
const ENV_PRIORITY: &str = "GPUSLICE_PRIORITY";
/// The shim's log level, which `run` passes through untouched.
const ENV_LOG: &str = "GPUSLICE_LOG";
/// The settings `run` takes from its flags, and the flag each comes from: inherited values
/// are replaced.
const FROM_FLAGS: [(&str, &str); 4] = [
    (ENV_MEMORY_LIMIT, "--memory"),
    (ENV_COMPUTE_SHARE, "--compute-share"),
    (ENV_COMPUTE_LIMIT, "--compute-limit"),
    (ENV_PRIORITY, "--priority"),
];

/// Settings below the joined tenant's quota, which the command gets in its environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lowered {
    memory: Option<u64>,
    share: Option<u32>,
    limit: Option<u32>,
    priority: Option<Priority>,
}

/// Runs `gpuslice run`; the exit code is the command's.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))
        .usage()?;
    check_environment().usage()?;
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    // Nothing starts until the shim is shown to be the shim, preloaded by the loader, and
    // the GPU named to exist: any of them wrong, the command would run without limits.
    let shim = shim_check::proven(args.shim.as_deref()).usage()?;
    let request = args.quota.request().usage()?;
    let (tenant, join) = match args.tenant {
        Some(tenant) => (tenant, Join::Allowed),
        None => (generated_tenant(), Join::Refused),
    };
    let ledger = Ledger::open(&dir).usage()?;

    // From here on a signal must not kill gpuslice before the tenant is left again.
    let forwarder = Forwarder::install()
        .map_err(|e| anyhow!("could not install signal handlers: {e}"))
        .failed()?;
    let quota = request.new_tenant_quota();
    let membership = match tenancy::enter(&ledger, &tenant, &quota, join) {
        Ok(membership) => membership,
        Err(e @ tenancy::TenancyError::Reserved { .. }) => return Err(e).usage(),
        Err(e) => return Err(e).failed(),
    };
    let lowered = match &membership.entry {
        Entry::Created => Lowered::default(),
        // On refusal `membership` is dropped: it withdraws without removing anything.
        Entry::Joined(existing) => lowered(&tenant, existing, &request)?,
    };

    let mut command = tenant_command(program, &shim, &tenant, &dir);
    command.args(program_args);
    if let Some(limit) = lowered.memory {
        command.env(ENV_MEMORY_LIMIT, limit.to_string());
    }
    if let Some(share) = lowered.share {
        command.env(ENV_COMPUTE_SHARE, format_percent(share));
    }
    if let Some(limit) = lowered.limit {
        command.env(ENV_COMPUTE_LIMIT, format_percent(limit));
    }
    if let Some(priority) = lowered.priority {
        command.env(ENV_PRIORITY, priority.name());
    }

    forwarder.prepare(&mut command);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = forwarder.unblock();
            leave(membership);
            return Err(spawn_failure(program, e));
        }
    };
    let status = forwarder.wait(child);
    leave(membership);
    let status = status
        .map_err(|e| anyhow!("could not wait for {}: {e}", program.to_string_lossy()))
        .failed()?;
    Ok(signals::exit_code(status))
}

/// `program` as a process of `tenant`: the shim first in `LD_PRELOAD`, `GPUSLICE_TENANT` and
/// `GPUSLICE_DIR` set, every other inherited `GPUSLICE_` variable but `GPUSLICE_LOG` removed.
/// `gpuslice demo` starts its workers with it too.
pub fn tenant_command(
    program: impl AsRef<OsStr>,
    shim: &Path,
    tenant: &TenantName,
    dir: &Path,
) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.as_bytes().starts_with(b"GPUSLICE_") && name != ENV_LOG {
            command.env_remove(name);
        }
    }
    command
        .env(
            "LD_PRELOAD",
            locate::ld_preload(shim, std::env::var_os("LD_PRELOAD").as_deref()),
        )
        .env(ENV_TENANT, tenant.as_str())
        .env(ENV_DIR, dir);
    command
}

/// Refuses `GPUSLICE_` variables in the environment that neither `run` nor the shim reads,
/// as the shim would refuse them once the command used the GPU: a typo must not go
/// unnoticed until then. Notes an inherited limit, share or priority, which `run` replaces
/// with what its flags say.
fn check_environment() -> anyhow::Result<()> {
    for (name, value) in std::env::vars_os() {
        if !name.as_bytes().starts_with(b"GPUSLICE_") {
            continue;
        }
        // A name that is not UTF-8 is none of gpuslice's, as unknown as a misspelled one.
        let Some(name) = name.to_str() else {
            return Err(anyhow!(
                "unknown variable {} in the environment (its name is not UTF-8): gpuslice \
                 reads no such variable, and the shim would refuse it; unset it",
                name.to_string_lossy()
            ));
        };
        if let Some((_, flag)) = FROM_FLAGS.iter().find(|(env, _)| *env == name) {
            eprintln!(
                "gpuslice: note: ignoring {name}={} from the environment; `gpuslice run` takes \
                 it from {flag}",
                value.to_string_lossy()
            );
            continue;
        }
        if ![ENV_TENANT, ENV_DIR, ENV_LOG, ENV_SHIM, ENV_FAKECUDA].contains(&name) {
            return Err(anyhow!(
                "unknown variable {name} in the environment: gpuslice reads only {ENV_TENANT}, \
                 {ENV_MEMORY_LIMIT}, {ENV_COMPUTE_SHARE}, {ENV_COMPUTE_LIMIT}, {ENV_PRIORITY}, \
                 {ENV_DIR}, {ENV_LOG}, {ENV_SHIM} and {ENV_FAKECUDA}; unset it"
            ));
        }
    }
    Ok(())
}

/// The name of a tenant made for one run: `run-<pid>`.
fn generated_tenant() -> TenantName {
    let name = format!("run-{}", std::process::id());
    // "run-" and digits: always a valid name.
    TenantName::new(&name).unwrap_or_else(|e| unreachable!("{name}: {e}"))
}

/// What a run joining a tenant with quota `existing` passes to its command: each setting
/// below the quota; an error naming both values for one above it.
fn lowered(
    tenant: &TenantName,
    existing: &TenantQuota,
    wanted: &QuotaRequest,
) -> Result<Lowered, Failure> {
    let memory = lowered_limit(tenant, existing, wanted.memory, wanted.gpu.as_ref())?;
    let ceiling = existing.defaults;
    let share = lowered_percent(
        tenant,
        "--compute-share",
        "share",
        wanted.compute.share_permille,
        ceiling.compute_share_permille,
    )?;
    let limit = lowered_percent(
        tenant,
        "--compute-limit",
        "compute limit",
        wanted.compute.limit_permille,
        ceiling.compute_limit_permille,
    )?;
    let priority = match (wanted.compute.priority, ceiling.priority) {
        (Some(wanted), Some(quota)) if wanted > quota => {
            return Err(anyhow!(
                "--priority {} is higher than the priority of tenant {tenant}, {}; a run that \
                 joins an existing tenant may lower its quota, not raise it",
                wanted.name(),
                quota.name(),
            ))
            .usage();
        }
        (Some(wanted), Some(quota)) if wanted == quota => None,
        (wanted, _) => wanted,
    };
    let lowered = Lowered {
        memory,
        share,
        limit,
        priority,
    };
    note_lowered(tenant, existing, &lowered);
    Ok(lowered)
}

/// Says on stderr which compute settings of the joined tenant this command gets lowered
/// (memory is silent, as it always was: the shim's OOM line names the limit).
fn note_lowered(tenant: &TenantName, existing: &TenantQuota, lowered: &Lowered) {
    let quota = existing.defaults;
    let percent = |v: Option<u32>| {
        v.map_or_else(|| "none".to_string(), |p| format!("{}%", format_percent(p)))
    };
    let mut changes = Vec::new();
    if let Some(share) = lowered.share {
        changes.push(format!(
            "compute share {}% (the tenant's: {})",
            format_percent(share),
            percent(quota.compute_share_permille)
        ));
    }
    if let Some(limit) = lowered.limit {
        changes.push(format!(
            "compute limit {}% (the tenant's: {})",
            format_percent(limit),
            percent(quota.compute_limit_permille)
        ));
    }
    if let Some(priority) = lowered.priority {
        changes.push(format!(
            "priority {} (the tenant's: {})",
            priority.name(),
            quota.priority.map_or("none", Priority::name)
        ));
    }
    if !changes.is_empty() {
        eprintln!(
            "gpuslice: note: joining tenant {tenant}; this command gets {}",
            changes.join(", ")
        );
    }
}

/// A percent setting of a joining run: `None` when not below the quota's `ceiling`; an
/// error when above it.
fn lowered_percent(
    tenant: &TenantName,
    flag: &str,
    what: &str,
    wanted: Option<u32>,
    ceiling: Option<u32>,
) -> Result<Option<u32>, Failure> {
    match (wanted, ceiling) {
        (Some(wanted), Some(ceiling)) if wanted > ceiling => Err(anyhow!(
            "{flag} {}% is more than the {what} of tenant {tenant}, {}%; a run that joins an \
             existing tenant may lower its quota, not raise it",
            format_percent(wanted),
            format_percent(ceiling),
        ))
        .usage(),
        (Some(wanted), Some(ceiling)) if wanted == ceiling => Ok(None),
        (wanted, _) => Ok(wanted),
    }
}

/// What `GPUSLICE_MEMORY_LIMIT` a run joining a tenant with quota `existing` sets: `None`
/// when `memory` is not below the quota; an error when it is above it.
fn lowered_limit(
    tenant: &TenantName,
    existing: &TenantQuota,
    memory: Option<u64>,
    gpu: Option<&GpuUuid>,
) -> Result<Option<u64>, Failure> {
    let (ceiling, scope) = match gpu {
        Some(gpu) => (existing.limits_for(gpu).memory_bytes, format!("on {gpu}")),
        None => (existing.defaults.memory_bytes, "per GPU".to_string()),
    };
    match (memory, ceiling) {
        (None, _) => Ok(None),
        (Some(wanted), Some(ceiling)) if wanted > ceiling => Err(anyhow!(
            "--memory {} ({wanted} bytes) is more than the quota of tenant {tenant}, {} \
             ({ceiling} bytes) {scope}; a run that joins an existing tenant may lower its \
             quota, not raise it",
            format_quantity(wanted),
            format_quantity(ceiling),
        ))
        .usage(),
        (Some(wanted), Some(ceiling)) if wanted == ceiling => Ok(None),
        (Some(wanted), _) => Ok(Some(wanted)),
    }
}

/// Leaves the tenant; a failure is reported but does not change the exit code, which is
/// the command's.
fn leave(membership: tenancy::Membership) {
    let tenant = membership.tenant().clone();
    if let Err(e) = membership.leave() {
        eprintln!("gpuslice: warning: could not clean up tenant {tenant}: {e}");
    }
}

/// The failure of a command that could not be started, with the exit code shells use.
fn spawn_failure(program: &OsStr, e: io::Error) -> Failure {
    let name = Path::new(program).display();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Failure::new(
            exit::NOT_FOUND,
            anyhow!("cannot run {name}: command not found"),
        ),
        Some(libc::EAGAIN | libc::ENOMEM) => {
            Failure::new(exit::FAILED, anyhow!("could not start {name}: {e}"))
        }
        _ => Failure::new(exit::NOT_EXECUTABLE, anyhow!("cannot run {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::ComputeSettings;

    fn quota(memory: Option<u64>, gpu: Option<GpuUuid>) -> TenantQuota {
        QuotaRequest {
            memory,
            gpu,
            ..QuotaRequest::default()
        }
        .new_tenant_quota()
    }

    #[test]
    fn joining_may_lower_the_quota_but_not_raise_it() {
        let t = TenantName::new("t").unwrap();
        let q = quota(Some(4 << 30), None);
        assert_eq!(lowered_limit(&t, &q, None, None).unwrap(), None);
        assert_eq!(lowered_limit(&t, &q, Some(4 << 30), None).unwrap(), None);
        assert_eq!(
            lowered_limit(&t, &q, Some(1 << 30), None).unwrap(),
            Some(1 << 30)
        );
        let err = lowered_limit(&t, &q, Some(8 << 30), None).unwrap_err();
        assert_eq!(err.status, exit::USAGE);
        let msg = format!("{:#}", err.error);
        assert!(msg.contains("8Gi") && msg.contains("4Gi"), "{msg}");
        // An unlimited tenant can be lowered to anything.
        assert_eq!(
            lowered_limit(&t, &quota(None, None), Some(1), None).unwrap(),
            Some(1)
        );
    }

    #[test]
    fn joining_a_per_gpu_quota_is_held_to_that_gpus_limit_only() {
        let gpu = GpuUuid([7; 16]);
        let q = quota(Some(1 << 30), Some(gpu));
        let t = TenantName::new("t").unwrap();
        assert!(lowered_limit(&t, &q, Some(2 << 30), Some(&gpu)).is_err());
        assert_eq!(
            lowered_limit(&t, &q, Some(2 << 30), None).unwrap(),
            Some(2 << 30)
        );
    }

    fn compute(share: Option<u32>, limit: Option<u32>, priority: Option<Priority>) -> QuotaRequest {
        QuotaRequest {
            compute: ComputeSettings {
                share_permille: share,
                limit_permille: limit,
                priority,
            },
            ..QuotaRequest::default()
        }
    }

    #[test]
    fn joining_may_lower_compute_settings_but_not_raise_them() {
        let t = TenantName::new("t").unwrap();
        let q = compute(Some(500), Some(800), Some(Priority::Normal)).new_tenant_quota();
        let got = lowered(&t, &q, &compute(Some(300), Some(800), Some(Priority::Low))).unwrap();
        assert_eq!(got.share, Some(300));
        assert_eq!(got.limit, None, "the same as the quota: nothing to set");
        assert_eq!(got.priority, Some(Priority::Low));
        for (wanted, names) in [
            (compute(Some(501), None, None), ["50.1%", "50%"]),
            (compute(None, Some(1000), None), ["100%", "80%"]),
            (
                compute(None, None, Some(Priority::High)),
                ["high", "normal"],
            ),
        ] {
            let err = lowered(&t, &q, &wanted).unwrap_err();
            assert_eq!(err.status, exit::USAGE);
            let msg = format!("{:#}", err.error);
            assert!(msg.contains(names[0]) && msg.contains(names[1]), "{msg}");
        }
        // A tenant without compute settings may be given any.
        let free = QuotaRequest::default().new_tenant_quota();
        let got = lowered(
            &t,
            &free,
            &compute(Some(1000), Some(1), Some(Priority::High)),
        )
        .unwrap();
        assert_eq!(
            (got.share, got.limit, got.priority),
            (Some(1000), Some(1), Some(Priority::High))
        );
    }
}
