//! `gpuslice demo`: two tenants share one GPU under memory quotas, side by side, and a table
//! says what each was promised, what it saw and what it got.
//!
//! The demo is made of what `run` does: it creates the tenants with their quota files
//! ([`tenancy::enter`]) and starts each tenant's program under the shim
//! ([`run::tenant_command`]). That program is this binary again, as the hidden
//! `__demo-worker` subcommand ([`crate::demo_worker`]), so nothing else needs building.
//!
//! The demo runs in phases, each a worker per tenant whose `key=value` lines are shown as
//! they come and then judged. There is one phase, memory; compute shares will be the next.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;

use anyhow::anyhow;
use gpuslice_ledger::{Ledger, TenantName};

use crate::cli::{DemoArgs, DemoPhase};
use crate::demo_worker::CUDA_ERROR_OUT_OF_MEMORY;
use crate::doctor;
use crate::exit::{self, Failure, ResultExt};
use crate::locate;
use crate::run;
use crate::tenancy::{self, Entry, Join, Membership};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// What each worker waits after an allocation, so that the progress can be watched; a whole
/// demo on the simulated GPU takes about 31 of them.
const PAUSE_MS: u64 = 40;
/// The names the simulated GPU library is loaded under.
const DRIVER_NAMES: [&str; 4] = [
    "libcuda.so",
    "libcuda.so.1",
    "libnvidia-ml.so",
    "libnvidia-ml.so.1",
];

/// The GPU the demo runs on.
#[derive(Debug)]
enum Gpu {
    /// NVML's line for GPU 0 (`UUID, N GiB total, M GiB free`).
    Real(String),
    /// `libfakecuda.so` under the driver's names in `lib_dir`, its state in `state_dir`.
    Simulated {
        lib_dir: PathBuf,
        state_dir: PathBuf,
    },
}

/// One tenant of the demo.
#[derive(Debug)]
struct Tenant {
    name: TenantName,
    quota: u64,
    chunk: u64,
}

/// What one tenant's memory worker reported.
#[derive(Debug, Default)]
struct MemoryOutcome {
    total: Option<u64>,
    allocated: u64,
    refused_at: Option<u64>,
    refusal: Option<u32>,
    never_refused: bool,
    recovered: bool,
    /// Its exit status and stderr, when it did not exit 0.
    failure: Option<String>,
}

/// Runs `gpuslice demo`.
pub fn demo(args: DemoArgs) -> Result<u8, Failure> {
    let shim = locate::shim(args.shim.as_deref()).usage()?;
    let scratch = tempfile::Builder::new()
        .prefix("gpuslice-demo.")
        .tempdir()
        .map_err(|e| anyhow!("could not create a temporary directory: {e}"))
        .failed()?;
    let gpu = choose_gpu(args.simulated, scratch.path())?;
    let dir = match &args.dir {
        Some(dir) => locate::ledger_dir(Some(dir)).usage()?,
        None => scratch.path().join("ledger"),
    };
    let ledger = Ledger::open(&dir).usage()?;
    let (quotas, chunk) = match gpu {
        Gpu::Real(_) => ([4 * GIB, 8 * GIB], 256 * MIB),
        Gpu::Simulated { .. } => ([GIB, 2 * GIB], 64 * MIB),
    };
    let tenants = ["demo-a", "demo-b"]
        .into_iter()
        .zip(quotas)
        .map(|(name, quota)| Tenant {
            name: TenantName::new(name).unwrap_or_else(|e| unreachable!("{name}: {e}")),
            quota,
            chunk,
        })
        .collect::<Vec<_>>();

    match &gpu {
        Gpu::Real(line) => println!("gpuslice demo on the real GPU 0: {line}"),
        Gpu::Simulated { .. } => println!(
            "gpuslice demo on the SIMULATED GPU (libfakecuda.so: 80 GiB, contexts of 64 MiB), \
             not a real one"
        ),
    }
    println!("ledger: {}", dir.display());
    for tenant in &tenants {
        println!(
            "tenant {}: quota {} per GPU",
            tenant.name,
            exact_size(tenant.quota)
        );
    }
    println!(
        "Each allocates {} at a time until refused, frees it all and allocates again.\n",
        exact_size(chunk)
    );

    let mut memberships = Vec::new();
    for tenant in &tenants {
        match enter(&ledger, &dir, tenant) {
            Ok(membership) => memberships.push(membership),
            Err(failure) => {
                memberships.into_iter().for_each(leave);
                return Err(failure);
            }
        }
    }
    let outcomes = memory_phase(&tenants, &gpu, &shim, &dir);
    memberships.into_iter().for_each(leave);
    let outcomes = outcomes?;

    println!("\n{}", memory_table(&tenants, &outcomes));
    let problems = tenants
        .iter()
        .zip(&outcomes)
        .filter_map(|(tenant, outcome)| memory_problem(tenant, outcome))
        .collect::<Vec<_>>();
    if !problems.is_empty() {
        return Err(Failure::new(
            exit::PROBLEMS,
            anyhow!(
                "the quotas did not hold as promised: {}",
                problems.join("; ")
            ),
        ));
    }
    let first = &tenants[0];
    println!(
        "\nA CUDA context's own memory counts against its tenant's quota, which is why\n\
         {} could allocate {} of its {} MiB.",
        first.name,
        outcomes[0].refused_at.unwrap_or_default() / MIB,
        first.quota / MIB
    );
    println!(
        "Neither tenant affected the other: each saw its own quota as the GPU's total\n\
         and was refused at its own quota while the other allocated side by side."
    );
    Ok(exit::OK)
}

/// The real GPU if NVML lists one (and `--simulated` was not given), else the simulated GPU
/// set up under `scratch`; neither is a usage error.
fn choose_gpu(simulated: bool, scratch: &Path) -> Result<Gpu, Failure> {
    if !simulated && let Some(gpus) = doctor::real_gpus() {
        return Ok(Gpu::Real(gpus[0].clone()));
    }
    let fakecuda = locate::fakecuda().usage()?;
    let lib_dir = scratch.join("lib");
    let state_dir = scratch.join("gpu-state");
    let made = std::fs::create_dir(&lib_dir)
        .and_then(|()| std::fs::create_dir(&state_dir))
        .and_then(|()| {
            DRIVER_NAMES
                .iter()
                .try_for_each(|name| std::os::unix::fs::symlink(&fakecuda, lib_dir.join(name)))
        });
    made.map_err(|e| {
        anyhow!(
            "could not set up the simulated GPU in {}: {e}",
            scratch.display()
        )
    })
    .failed()?;
    Ok(Gpu::Simulated { lib_dir, state_dir })
}

/// Creates `tenant` with its quota, as `run` does; one that exists already is refused, as
/// its quota may not be the demo's.
fn enter(ledger: &Ledger, dir: &Path, tenant: &Tenant) -> Result<Membership, Failure> {
    let quota = run::new_quota(Some(tenant.quota), None);
    let membership = tenancy::enter(ledger, &tenant.name, &quota, Join::Allowed).failed()?;
    if let Entry::Joined(_) = membership.entry {
        return Err(anyhow!(
            "tenant {} already exists in {} (is another demo running there?); pass another \
             --dir, or none for a fresh one",
            tenant.name,
            dir.display()
        ))
        .usage();
    }
    Ok(membership)
}

/// Leaves a tenant; a failure is reported and changes nothing else.
fn leave(membership: Membership) {
    let tenant = membership.tenant().clone();
    if let Err(e) = membership.leave() {
        eprintln!("gpuslice: warning: could not clean up tenant {tenant}: {e}");
    }
}

/// Runs one memory worker per tenant, side by side, shows their progress and collects what
/// they reported.
fn memory_phase(
    tenants: &[Tenant],
    gpu: &Gpu,
    shim: &Path,
    dir: &Path,
) -> Result<Vec<MemoryOutcome>, Failure> {
    let (events, received) = mpsc::channel();
    let mut workers: Vec<(Child, thread::JoinHandle<String>)> = Vec::new();
    let mut outcomes: Vec<MemoryOutcome> =
        tenants.iter().map(|_| MemoryOutcome::default()).collect();
    let mut display = Display::new(tenants);
    for (index, tenant) in tenants.iter().enumerate() {
        let worker = spawn_worker(tenant, gpu, shim, dir, DemoPhase::Memory);
        let mut child = match worker {
            Ok(child) => child,
            Err(e) => {
                for (mut child, _) in workers {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e);
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let events = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = events.send((index, Some(line)));
            }
            // The end of its output (`None`), which the start waits for too.
            let _ = events.send((index, None));
        });
        let errors = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        workers.push((child, errors));
        // One context at a time (see the worker's --start-on-stdin): where NVML cannot see
        // the worker's own process (a PID namespace of its own), the shim measures a new
        // context by the whole GPU's growth, and two created at once would each be charged
        // both. Wait for this one's first line, or for its end.
        for (from, line) in received.iter() {
            if let Some(line) = &line {
                read_line(&mut outcomes[from], line);
                display.line(from, line, &outcomes);
            }
            if from == index {
                break;
            }
        }
    }
    drop(events);
    for (child, _) in &mut workers {
        if let Some(mut stdin) = child.stdin.take() {
            // A worker that already ended cannot read it; what it printed says why.
            let _ = stdin.write_all(b"go\n");
        }
    }

    // Until every worker's stdout is closed: each reader thread holds a sender.
    for (index, line) in received {
        if let Some(line) = line {
            read_line(&mut outcomes[index], &line);
            display.line(index, &line, &outcomes);
        }
    }
    for (((mut child, errors), outcome), tenant) in
        workers.into_iter().zip(&mut outcomes).zip(tenants)
    {
        let status = child
            .wait()
            .map_err(|e| anyhow!("could not wait for a demo worker: {e}"))
            .failed()?;
        let errors = errors.join().unwrap_or_default();
        if !status.success() {
            outcome.failure = Some(format!(
                "its program ended with {status}: {}",
                errors.trim()
            ));
        } else {
            // The shim's notes, such as the refusal it logged.
            for line in errors.lines() {
                eprintln!("[{}] {line}", tenant.name);
            }
        }
    }
    Ok(outcomes)
}

/// The worker of `phase` for `tenant`, under the shim, with stdout and stderr piped.
fn spawn_worker(
    tenant: &Tenant,
    gpu: &Gpu,
    shim: &Path,
    dir: &Path,
    phase: DemoPhase,
) -> Result<Child, Failure> {
    let me = std::env::current_exe()
        .map_err(|e| anyhow!("cannot find this program to start the demo's workers: {e}"))
        .failed()?;
    let mut command = run::tenant_command(&me, shim, &tenant.name, dir);
    let phase = match phase {
        DemoPhase::Memory => "memory",
    };
    command
        .args(["__demo-worker", "--phase", phase, "--chunk"])
        .arg(tenant.chunk.to_string())
        .arg("--give-up-at")
        .arg((2 * tenant.quota).to_string())
        .arg("--pause-ms")
        .arg(PAUSE_MS.to_string())
        .arg("--start-on-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Gpu::Simulated { lib_dir, state_dir } = gpu {
        // The simulated GPU as the demo describes it, whatever FAKECUDA_ settings are around.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FAKECUDA_") {
                command.env_remove(name);
            }
        }
        let mut path = OsString::from(lib_dir.as_os_str());
        if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(existing);
        }
        command
            .env("LD_LIBRARY_PATH", path)
            .env("FAKECUDA_STATE_DIR", state_dir);
    }
    command
        .spawn()
        .map_err(|e| anyhow!("could not start {}: {e}", me.display()))
        .failed()
}

/// Takes in one `key=value` line of a memory worker.
fn read_line(outcome: &mut MemoryOutcome, line: &str) {
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if line.starts_with("total=") {
        outcome.total = value("total");
    } else if line.starts_with("progress ") {
        outcome.allocated = value("allocated").unwrap_or(outcome.allocated);
    } else if line.starts_with("refused_at=") {
        outcome.refused_at = value("refused_at");
        outcome.refusal = value("error").and_then(|e| u32::try_from(e).ok());
    } else if line.starts_with("never_refused ") {
        outcome.never_refused = true;
    } else if line == "recovered=ok" {
        outcome.recovered = true;
    }
}

/// How progress is shown: a bar per tenant on a terminal, else the workers' lines.
struct Display {
    names: Vec<(String, u64)>,
    bars: bool,
    drawn: bool,
}

impl Display {
    fn new(tenants: &[Tenant]) -> Display {
        Display {
            names: tenants
                .iter()
                .map(|t| (t.name.to_string(), t.quota))
                .collect(),
            bars: std::io::stdout().is_terminal(),
            drawn: false,
        }
    }

    /// Shows `line` of tenant `index`, or redraws the bars.
    fn line(&mut self, index: usize, line: &str, outcomes: &[MemoryOutcome]) {
        let mut out = std::io::stdout().lock();
        if !self.bars {
            let _ = writeln!(out, "[{}] {line}", self.names[index].0);
            return;
        }
        if self.drawn {
            let _ = write!(out, "\x1b[{}A", self.names.len());
        }
        for ((name, quota), outcome) in self.names.iter().zip(outcomes) {
            let _ = writeln!(out, "\x1b[2K{}", bar(name, *quota, outcome));
        }
        let _ = out.flush();
        self.drawn = true;
    }
}

/// `demo-a  [########............]   640 MiB of 1 GiB  refused, allocated again`.
fn bar(name: &str, quota: u64, outcome: &MemoryOutcome) -> String {
    const WIDTH: u64 = 30;
    let filled = (outcome.allocated.min(quota) * WIDTH)
        .checked_div(quota)
        .unwrap_or_default();
    let filled = usize::try_from(filled).unwrap_or_default();
    let width = usize::try_from(WIDTH).unwrap_or_default();
    let state = match (outcome.refused_at, outcome.recovered) {
        (Some(_), true) => "refused, allocated again",
        (Some(_), false) => "refused",
        (None, _) => "",
    };
    format!(
        "{name:<8}[{}{}] {:>9} of {}  {state}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        exact_size(outcome.allocated),
        exact_size(quota)
    )
}

/// The table of what each tenant was promised, saw and got.
fn memory_table(tenants: &[Tenant], outcomes: &[MemoryOutcome]) -> String {
    let row = |cells: [&str; 6]| {
        format!(
            "{:<9}{:<11}{:<15}{:<27}{:<27}{}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    let mut lines = vec![row([
        "tenant",
        "promised",
        "saw as total",
        "allocated before refusal",
        "refusal",
        "after freeing",
    ])];
    for (tenant, outcome) in tenants.iter().zip(outcomes) {
        let saw = outcome.total.map_or("-".into(), exact_size);
        let (before, refusal) = match (outcome.refused_at, outcome.refusal) {
            (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) => {
                (exact_size(at), "CUDA_ERROR_OUT_OF_MEMORY".to_string())
            }
            (Some(at), Some(rc)) => (exact_size(at), format!("CUDA error {rc}")),
            _ if outcome.never_refused => (exact_size(outcome.allocated), "never refused".into()),
            _ => (exact_size(outcome.allocated), "-".into()),
        };
        let after = if outcome.recovered {
            "allocated again"
        } else {
            "-"
        };
        lines.push(row([
            tenant.name.as_str(),
            &exact_size(tenant.quota),
            &saw,
            &before,
            &refusal,
            after,
        ]));
    }
    lines.join("\n")
}

/// Why `tenant` did not get what it was promised, if it did not.
fn memory_problem(tenant: &Tenant, outcome: &MemoryOutcome) -> Option<String> {
    let name = &tenant.name;
    let quota = exact_size(tenant.quota);
    if let Some(failure) = &outcome.failure {
        return Some(format!("{name}: {failure}"));
    }
    if outcome.total != Some(tenant.quota) {
        let saw = outcome.total.map_or("nothing".into(), exact_size);
        return Some(format!(
            "{name} saw {saw} as the GPU's total, not its quota {quota}"
        ));
    }
    match (outcome.refused_at, outcome.refusal) {
        (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) if at <= tenant.quota => {}
        (Some(at), Some(CUDA_ERROR_OUT_OF_MEMORY)) => {
            return Some(format!(
                "{name} was refused only at {}, above its quota {quota}",
                exact_size(at)
            ));
        }
        _ => {
            return Some(format!(
                "{name} allocated {} without being refused, beyond its quota {quota} (is the \
                 shim loaded?)",
                exact_size(outcome.allocated)
            ));
        }
    }
    if !outcome.recovered {
        return Some(format!("{name} could not allocate again after freeing"));
    }
    None
}

/// `bytes` in whole GiB or MiB when it is a multiple of one, else in bytes.
fn exact_size(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, quota: u64) -> Tenant {
        Tenant {
            name: TenantName::new(name).unwrap(),
            quota,
            chunk: 64 * MIB,
        }
    }

    fn outcome_of(lines: &[&str]) -> MemoryOutcome {
        let mut outcome = MemoryOutcome::default();
        for line in lines {
            read_line(&mut outcome, line);
        }
        outcome
    }

    #[test]
    fn a_tenant_refused_within_its_quota_that_recovers_is_as_promised() {
        let outcome = outcome_of(&[
            "total=1073741824 free=1006632960",
            "progress allocated=67108864",
            "refused_at=1006632960 error=2",
            "recovered=ok",
        ]);
        assert_eq!(memory_problem(&tenant("a", GIB), &outcome), None);
        let table = memory_table(&[tenant("a", GIB)], &[outcome]);
        let row = table.lines().nth(1).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "a",
                "1",
                "GiB",
                "1",
                "GiB",
                "960",
                "MiB",
                "CUDA_ERROR_OUT_OF_MEMORY",
                "allocated",
                "again"
            ]
        );
    }

    #[test]
    fn a_tenant_never_refused_or_seeing_the_whole_gpu_is_a_problem() {
        let unrefused = outcome_of(&[
            "total=1073741824 free=1",
            "never_refused allocated=2147483648",
            "recovered=ok",
        ]);
        let problem = memory_problem(&tenant("a", GIB), &unrefused).unwrap();
        assert!(problem.contains("without being refused"), "{problem}");
        let whole = outcome_of(&["total=85899345920 free=1", "refused_at=0 error=2"]);
        let problem = memory_problem(&tenant("a", GIB), &whole).unwrap();
        assert!(problem.contains("80 GiB"), "{problem}");
    }
}
