//! `gpuslice doctor`: checks that gpuslice can work on this machine, one line per finding.
//!
//! It looks at what `run` and the shim need, in the order they need it: the shim library,
//! the NVIDIA driver (through NVML, loaded at run time so that a machine without a GPU gets
//! a warning, not a failure to start), the ledger directory and every tenant's files, and
//! the `GPUSLICE_` variables the shim would refuse.

use std::path::Path;

use gpuslice_ledger::SHIM_VARIABLES;

use crate::cli::DoctorArgs;
use crate::compute;
use crate::exit::{self, Failure};
use crate::locate;
use crate::quantity::format_size;
use crate::shim_check;
use crate::unenforced;
use gpuslice_k8s::nvml::{Nvml, NvmlError};

/// What a finding means for gpuslice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// The findings, printed as they are made.
#[derive(Debug, Default)]
struct Findings {
    failed: bool,
}

impl Findings {
    fn say(&mut self, level: Level, topic: &str, text: &str) {
        let word = match level {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        self.failed |= level == Level::Fail;
        println!("{word:<4}  {topic}: {text}");
    }
}

/// Runs `gpuslice doctor`; exit 0 when nothing failed, [`exit::PROBLEMS`] otherwise.
pub fn doctor(args: DoctorArgs) -> Result<u8, Failure> {
    let mut findings = Findings::default();
    check_shim(&mut findings, args.shim.as_deref());
    check_driver(&mut findings);
    let named =
        args.dir.is_some() || std::env::var_os(locate::ENV_DIR).is_some_and(|dir| !dir.is_empty());
    match locate::ledger_dir(args.dir.as_deref()) {
        Ok(dir) => check_ledger(&mut findings, &dir, named),
        Err(e) => findings.say(Level::Fail, "ledger", &e.to_string()),
    }
    check_environment(&mut findings);
    Ok(if findings.failed {
        exit::PROBLEMS
    } else {
        exit::OK
    })
}

/// The shim, found as `run` finds it, must be what `run` accepts: the gpuslice shim of this
/// ledger layout, which the dynamic loader preloads.
fn check_shim(findings: &mut Findings, flag: Option<&Path>) {
    let path = match locate::shim(flag) {
        Ok(path) => path,
        Err(e) => return findings.say(Level::Fail, "shim", &e.to_string()),
    };
    let proven = shim_check::identify(&path).and_then(|info| {
        shim_check::check_preloads(&path, std::env::var_os("LD_PRELOAD").as_deref()).map(|()| info)
    });
    match proven {
        Ok(info) => findings.say(
            Level::Ok,
            "shim",
            &format!(
                "{} is the gpuslice shim (exports {}; ledger layout version {}) and the \
                 dynamic loader preloads it",
                path.display(),
                shim_check::SHIM_SYMBOLS.join(" and "),
                info.layout_version
            ),
        ),
        Err(e) => findings.say(Level::Fail, "shim", &e.to_string()),
    }
}

/// The driver: `libcuda.so.1` and `libnvidia-ml.so.1` load, NVML starts and lists GPUs.
/// Everything here is a warning at worst: without a GPU nothing is enforced, but nothing
/// breaks either.
fn check_driver(findings: &mut Findings) {
    // SAFETY: loading libcuda runs its initializers, which is what every CUDA program does;
    // nothing of it is called here.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(_) => findings.say(Level::Ok, "driver", "libcuda.so.1 loads"),
        Err(e) => findings.say(
            Level::Warn,
            "driver",
            &format!("libcuda.so.1 cannot be loaded ({e}): no NVIDIA driver, or no GPU here"),
        ),
    }
    match list_gpus() {
        Ok(gpus) if gpus.is_empty() => findings.say(Level::Warn, "gpus", "NVML sees no GPU"),
        Ok(gpus) => {
            for (index, line) in gpus.iter().enumerate() {
                findings.say(Level::Ok, &format!("gpu {index}"), line);
            }
        }
        Err(e) => findings.say(Level::Warn, "gpus", &e),
    }
}

/// The GPUs NVML lists on this machine, one line each (`UUID, N GiB total, M GiB free`), or
/// `None` when there is no NVIDIA driver or it sees no GPU. `gpuslice demo` asks this to
/// choose between the real GPU and the simulated one.
pub fn real_gpus() -> Option<Vec<String>> {
    list_gpus().ok().filter(|gpus| !gpus.is_empty())
}

/// One line per GPU NVML lists (`UUID, N GiB total, M GiB free`), or why NVML failed.
fn list_gpus() -> Result<Vec<String>, String> {
    let nvml = Nvml::open().map_err(|e| match e {
        NvmlError::Load(_) => format!("{e}: no GPU can be listed"),
        _ => format!("NVML does not start: {e}; no usable GPU here"),
    })?;
    let gpus = nvml
        .gpus()
        .map_err(|e| format!("NVML cannot list the GPUs: {e}"))?;
    Ok(gpus
        .iter()
        .map(|gpu| match nvml.free_memory(&gpu.uuid) {
            Ok(free) => format!(
                "{}, {}, {} total, {} free",
                gpu.uuid,
                gpu.model,
                format_size(gpu.memory_bytes),
                format_size(free)
            ),
            Err(e) => format!("{}, {}, memory unknown ({e})", gpu.uuid, gpu.model),
        })
        .collect())
}

/// How bad a missing ledger directory is.
///
/// Named (`--dir`, `GPUSLICE_DIR`), it is a failure: the user says the ledger is there, and
/// the shim refuses a `GPUSLICE_DIR` that does not exist, so every process given it fails
/// to start CUDA (a typo, or a device plugin that is not running). At the default place it
/// is a warning: nothing has used gpuslice on this machine yet, and `gpuslice run` and the
/// device plugin create it when they start; only a process with the shim preloaded by hand
/// fails until then. An existing, empty directory is neither: it is a ledger without tenants
/// yet, as `status` and `metrics` read it.
fn missing_ledger_level(named: bool) -> Level {
    if named { Level::Fail } else { Level::Warn }
}

/// The ledger: the directory exists and can be written (or which tenants' usage files can),
/// and every tenant's files open. `named`: the directory was given (`--dir`, `GPUSLICE_DIR`).
fn check_ledger(findings: &mut Findings, dir: &Path, named: bool) {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return findings.say(
                Level::Fail,
                "ledger",
                &format!("{shown} is not a directory"),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = if named {
                format!(
                    "{shown} does not exist: the shim refuses a GPUSLICE_DIR that does not \
                     exist, so processes given it cannot start CUDA (a typo? is the device \
                     plugin running?)"
                )
            } else {
                format!(
                    "{shown} does not exist yet: gpuslice run and the device plugin create it, \
                     and until then a process with the shim preloaded by hand fails to start \
                     CUDA (the shim never creates it)"
                )
            };
            return findings.say(missing_ledger_level(named), "ledger", &text);
        }
        Err(e) => return findings.say(Level::Fail, "ledger", &format!("{shown}: {e}")),
    }
    let report = match crate::report::read_report(dir) {
        Ok(report) => report,
        Err(e) => return findings.say(Level::Fail, "ledger", &crate::message(&e)),
    };
    let ledger = gpuslice_ledger::Ledger::open_existing(dir);
    // A ledger without tenants yet has no tenants/ either: whoever makes the first tenant
    // creates it in the directory.
    let tenants_dir = dir.join("tenants");
    let target = if tenants_dir.exists() {
        tenants_dir
    } else {
        dir.to_path_buf()
    };
    if may_write(&target) {
        findings.say(Level::Ok, "ledger", &format!("{shown} is writable"));
    } else {
        let writable: Vec<&str> = report
            .tenants
            .iter()
            .map(|t| t.name.as_str())
            .filter(|name| {
                let usage = ledger.as_ref().ok().and_then(|l| {
                    gpuslice_ledger::TenantName::new(name)
                        .ok()
                        .map(|t| l.usage_path(&t))
                });
                usage.is_some_and(|p| may_write(&p))
            })
            .collect();
        let which = if writable.is_empty() {
            "no tenant's usage file is writable either: no process of this user can be \
             tracked"
                .to_string()
        } else {
            format!(
                "only these tenants' usage files are: {}",
                writable.join(", ")
            )
        };
        findings.say(
            Level::Warn,
            "ledger",
            &format!("{shown} is not writable by this user; {which}"),
        );
    }
    let mut damaged = 0;
    for tenant in &report.tenants {
        if let Some(error) = &tenant.error {
            damaged += 1;
            findings.say(Level::Fail, &format!("tenant {}", tenant.name), error);
        }
    }
    if report.tenants.is_empty() {
        findings.say(
            Level::Ok,
            "tenants",
            "none yet (gpuslice run, gpuslice tenant create and the device plugin make them)",
        );
    } else if damaged == 0 {
        findings.say(
            Level::Ok,
            "tenants",
            &format!("{} tenant(s), all readable", report.tenants.len()),
        );
    }
    if let Ok(ledger) = &ledger {
        check_unenforced(findings, ledger);
    }
}

/// Every process with a context on a GPU holds a live slot: none runs outside the limits.
fn check_unenforced(findings: &mut Findings, ledger: &gpuslice_ledger::Ledger) {
    let check = unenforced::check(ledger);
    if let Some(reason) = &check.reason {
        return findings.say(
            Level::Warn,
            "unenforced processes",
            &format!("not checked: {reason}"),
        );
    }
    for p in &check.processes {
        findings.say(Level::Fail, "unenforced process", &unenforced::describe(p));
    }
    if check.processes.is_empty() && check.unresolved == 0 {
        findings.say(
            Level::Ok,
            "unenforced processes",
            "every process using a GPU is under gpuslice",
        );
    } else if check.processes.is_empty() {
        findings.say(
            Level::Ok,
            "unenforced processes",
            "none found among the GPU processes that could be looked up",
        );
    }
    if check.unresolved > 0 {
        findings.say(
            Level::Warn,
            "unenforced processes",
            &format!(
                "{} GPU process(es) could not be looked up (gone, or hidden from this process)",
                check.unresolved
            ),
        );
    }
}

/// `access(path, W_OK)`: whether this process may write `path` (create entries, for a
/// directory).
fn may_write(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; access(2)
    // only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// Variables only this command reads, and removes before starting a command.
const COMMAND_VARIABLES: [&str; 2] = [locate::ENV_SHIM, locate::ENV_FAKECUDA];

/// `GPUSLICE_` variables in this environment that the shim would refuse: unknown ones, and
/// compute settings it could not read.
fn check_environment(findings: &mut Findings) {
    let mut stray = 0;
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if !name.starts_with("GPUSLICE_") {
            continue;
        }
        let value = value.to_string_lossy();
        let why = match name.as_ref() {
            "GPUSLICE_COMPUTE_SHARE" | "GPUSLICE_COMPUTE_LIMIT"
                if compute::parse_percent(&value).is_none() =>
            {
                format!("{value:?} is not {}", compute::PERCENT_FORM)
            }
            "GPUSLICE_PRIORITY" if compute::parse_priority(&value).is_none() => {
                format!("{value:?} is not {}", compute::PRIORITY_FORM)
            }
            known if SHIM_VARIABLES.contains(&known) || COMMAND_VARIABLES.contains(&known) => {
                continue;
            }
            _ => "no part of gpuslice reads it (a typo?)".to_string(),
        };
        stray += 1;
        findings.say(
            Level::Fail,
            "environment",
            &format!("{name} is set: the shim refuses it and CUDA would fail to start; {why}"),
        );
    }
    if stray == 0 {
        findings.say(Level::Ok, "environment", "no stray GPUSLICE_ variables");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ledger_fails_only_where_it_was_named() {
        assert_eq!(missing_ledger_level(true), Level::Fail);
        assert_eq!(missing_ledger_level(false), Level::Warn);
    }
}
