//! `gpuslice run`: enter a tenant, run the command under the shim, leave the tenant.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use anyhow::anyhow;
use gpuslice_ledger::{GpuUuid, Ledger, Limits, TenantName, TenantQuota};

use crate::cli::RunArgs;
use crate::exit::{self, Failure, ResultExt};
use crate::gpu;
use crate::locate::{self, ENV_DIR, ENV_FAKECUDA, ENV_SHIM};
use crate::quantity::format_quantity;
use crate::signals::{self, Forwarder};
use crate::tenancy::{self, Entry, Join};

/// The tenant of the command (the shim reads it; `run` sets it).
const ENV_TENANT: &str = "GPUSLICE_TENANT";
/// A limit below the tenant's quota (the shim reads it; `run` sets it when lowering).
const ENV_MEMORY_LIMIT: &str = "GPUSLICE_MEMORY_LIMIT";
/// The shim's log level, which `run` passes through untouched.
const ENV_LOG: &str = "GPUSLICE_LOG";
/// Compute settings, refused until compute isolation exists (as the shim refuses them).
const NOT_YET_ENFORCED: [&str; 3] = [
    "GPUSLICE_COMPUTE_SHARE",
    "GPUSLICE_COMPUTE_LIMIT",
    "GPUSLICE_PRIORITY",
];

/// Runs `gpuslice run`; the exit code is the command's.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))
        .usage()?;
    check_environment().usage()?;
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let shim = locate::shim(args.shim.as_deref()).usage()?;
    let gpu = args.gpu.as_deref().map(gpu::resolve).transpose().usage()?;
    let (tenant, join) = match args.tenant {
        Some(tenant) => (tenant, Join::Allowed),
        None => (generated_tenant(), Join::Refused),
    };
    let ledger = Ledger::open(&dir).usage()?;

    // From here on a signal must not kill gpuslice before the tenant is left again.
    let forwarder = Forwarder::install()
        .map_err(|e| anyhow!("could not install signal handlers: {e}"))
        .failed()?;
    let quota = new_quota(args.memory, gpu.as_ref());
    let membership = tenancy::enter(&ledger, &tenant, &quota, join).failed()?;
    let memory_limit = match &membership.entry {
        Entry::Created => None,
        // On refusal `membership` is dropped: it withdraws without removing anything.
        Entry::Joined(existing) => lowered_limit(&tenant, existing, args.memory, gpu.as_ref())?,
    };

    let mut command = tenant_command(program, &shim, &tenant, &dir);
    command.args(program_args);
    if let Some(limit) = memory_limit {
        command.env(ENV_MEMORY_LIMIT, limit.to_string());
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
/// unnoticed until then. Notes an inherited limit, which `run` replaces.
fn check_environment() -> anyhow::Result<()> {
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("GPUSLICE_") {
            continue;
        }
        if NOT_YET_ENFORCED.contains(&name) {
            return Err(anyhow!(
                "{name} is set, but this version of gpuslice enforces memory quotas only; unset it"
            ));
        }
        if name == ENV_MEMORY_LIMIT {
            eprintln!(
                "gpuslice: note: ignoring {name}={} from the environment; `gpuslice run` takes \
                 the limit from --memory",
                value.to_string_lossy()
            );
        }
        if ![
            ENV_TENANT,
            ENV_MEMORY_LIMIT,
            ENV_DIR,
            ENV_LOG,
            ENV_SHIM,
            ENV_FAKECUDA,
        ]
        .contains(&name)
        {
            return Err(anyhow!(
                "unknown variable {name} in the environment: gpuslice reads only {ENV_TENANT}, \
                 {ENV_MEMORY_LIMIT}, {ENV_DIR}, {ENV_LOG}, {ENV_SHIM} and {ENV_FAKECUDA}; \
                 unset it"
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

/// The quota of a tenant this run creates: `memory` on every GPU, or on `gpu` only.
pub fn new_quota(memory: Option<u64>, gpu: Option<&GpuUuid>) -> TenantQuota {
    let limits = Limits {
        memory_bytes: memory,
        ..Limits::default()
    };
    match gpu {
        Some(gpu) => TenantQuota {
            defaults: Limits::default(),
            per_gpu: vec![(*gpu, limits)],
        },
        None => TenantQuota {
            defaults: limits,
            per_gpu: Vec::new(),
        },
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

    fn quota(memory: Option<u64>) -> TenantQuota {
        new_quota(memory, None)
    }

    #[test]
    fn joining_may_lower_the_quota_but_not_raise_it() {
        let t = TenantName::new("t").unwrap();
        let q = quota(Some(4 << 30));
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
            lowered_limit(&t, &quota(None), Some(1), None).unwrap(),
            Some(1)
        );
    }

    #[test]
    fn per_gpu_quota_applies_to_that_gpu_only() {
        let gpu = GpuUuid([7; 16]);
        let q = new_quota(Some(1 << 30), Some(&gpu));
        assert_eq!(q.limits_for(&gpu).memory_bytes, Some(1 << 30));
        assert_eq!(q.limits_for(&GpuUuid([8; 16])).memory_bytes, None);
        let t = TenantName::new("t").unwrap();
        assert!(lowered_limit(&t, &q, Some(2 << 30), Some(&gpu)).is_err());
        assert_eq!(
            lowered_limit(&t, &q, Some(2 << 30), None).unwrap(),
            Some(2 << 30)
        );
    }
}
