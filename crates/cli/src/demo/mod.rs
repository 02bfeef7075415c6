//! `gpuslice demo`: two tenants share one GPU, side by side, first under memory quotas, then
//! with compute shares, and a table says what each was promised and what it got.
//!
//! The demo is made of what `run` does: it creates the tenants with their quota files
//! ([`tenancy::enter`]) and starts each tenant's program under the shim
//! ([`run::tenant_command`]). That program is this binary again, as the hidden
//! `__demo-worker` subcommand ([`worker`]), so nothing else needs building.
//!
//! The demo runs in [`Phase`]s, each a worker per tenant whose `key=value` lines are shown as
//! they come and then judged: memory ([`memory`]), then compute
//! ([`compute`]).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;

pub mod compute;
pub mod memory;
pub mod plot;
pub mod worker;

use anyhow::anyhow;
use gpuslice_ledger::{ComputeSettings, Ledger, TenantName};

use crate::cli::{DemoArgs, DemoPhase};
use crate::doctor;
use crate::exit::{self, Failure, ResultExt};
use crate::locate;
use crate::quota_flags::QuotaRequest;
use crate::run;
use crate::tenancy::{self, Entry, Join, Membership};
use compute::ComputePhase;
use memory::MemoryPhase;
use plot::{Plot, PlotGpu};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The tenants' compute shares, in permille.
const SHARES: [u32; 2] = [300, 700];
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
pub struct Tenant {
    /// Its name.
    pub name: TenantName,
    /// Its memory quota, bytes.
    pub quota: u64,
    /// What its memory worker allocates at a time.
    pub chunk: u64,
    /// Its compute share, permille.
    pub share_permille: u32,
}

/// One phase of the demo: what its workers are asked to do, and what becomes of their lines.
pub trait Phase {
    /// The worker's `--phase`.
    fn kind(&self) -> DemoPhase;
    /// The worker's arguments after `--phase`, for `tenant`.
    fn worker_args(&self, tenant: &Tenant) -> Vec<String>;
    /// Takes in line `line` of the stdout of the worker of tenant `index`.
    fn line(&mut self, index: usize, line: &str);
    /// The worker of tenant `index` did not exit 0, for this reason.
    fn failed(&mut self, index: usize, why: String);
}

/// Runs `gpuslice demo`.
pub fn demo(args: DemoArgs) -> Result<u8, Failure> {
    let shim = crate::shim_check::proven(args.shim.as_deref()).usage()?;
    let plot = args
        .plot
        .as_deref()
        .map(Plot::prepare)
        .transpose()
        .usage()?;
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
        .zip(SHARES)
        .map(|((name, quota), share_permille)| Tenant {
            name: TenantName::new(name).unwrap_or_else(|e| unreachable!("{name}: {e}")),
            quota,
            chunk,
            share_permille,
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
            "tenant {}: quota {} per GPU, compute share {}%",
            tenant.name,
            exact_size(tenant.quota),
            tenant.share_permille / 10
        );
    }

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
    let outcome = both_phases(&tenants, &gpu, &shim, &dir, args.compute_seconds);
    memberships.into_iter().for_each(leave);
    let (memory, compute) = outcome?;

    println!(
        "\n{}",
        compute::summary_table(&tenants, &memory.outcomes, &compute)
    );
    if let Some(plot) = &plot {
        let promised: Vec<f64> = tenants
            .iter()
            .map(|t| f64::from(t.share_permille) / 10.0)
            .collect();
        let steps = compute.over_time(plot::STEP_NS);
        let plotted = match gpu {
            Gpu::Real(_) => PlotGpu::Real,
            Gpu::Simulated { .. } => PlotGpu::Simulated,
        };
        plot.draw(plotted, compute.names(), &promised, &steps)
            .failed()?;
        println!("\nplot: {}", plot.path().display());
    }
    let problems = tenants
        .iter()
        .enumerate()
        .filter_map(|(i, tenant)| {
            let memory = memory::memory_problem(tenant, &memory.outcomes[i]);
            let compute = compute.problem(i, tenant);
            match (memory, compute) {
                (Some(m), Some(c)) => Some(format!("{m}; {c}")),
                (m, c) => m.or(c),
            }
        })
        .collect::<Vec<_>>();
    if !problems.is_empty() {
        println!("\n{}", compute::verdict(&tenants, &compute, &problems));
        return Err(Failure::new(
            exit::PROBLEMS,
            anyhow!(
                "the tenants did not get what was promised: {}",
                problems.join("; ")
            ),
        ));
    }
    println!(
        "\nEach tenant was refused at its own memory quota (its CUDA context counts against\n\
         it) and could allocate again after freeing, while the other allocated side by\n\
         side; and each got its share of the GPU's time while both wanted all of it."
    );
    println!("\n{}", compute::verdict(&tenants, &compute, &[]));
    Ok(exit::OK)
}

/// The memory phase, its table, then the compute phase.
fn both_phases(
    tenants: &[Tenant],
    gpu: &Gpu,
    shim: &Path,
    dir: &Path,
    compute_seconds: u64,
) -> Result<(MemoryPhase, ComputePhase), Failure> {
    println!(
        "\nMemory: each allocates {} at a time until refused, frees it all and allocates \
         again.\n",
        exact_size(tenants[0].chunk)
    );
    let mut memory = MemoryPhase::new(tenants);
    run_phase(tenants, gpu, shim, dir, &mut memory)?;
    println!("\n{}", memory::memory_table(tenants, &memory.outcomes));

    let mut trial = ComputePhase::trial(&tenants[0]);
    run_phase(&tenants[..1], gpu, shim, dir, &mut trial)?;
    let calibration = trial
        .calibrated()
        .map_err(|why| anyhow!("could not size the compute phase's kernels: {why}"))
        .failed()?;
    println!(
        "\nCompute: a kernel of {} rounds of work takes {:.2} ms on the GPU alone. Both now\n\
         launch such kernels back to back for {compute_seconds} s; the shares are measured from \
         the\nkernels each got through while both ran.\n",
        calibration.rounds,
        calibration.solo_ns / 1e6
    );
    let mut compute = ComputePhase::new(tenants, compute_seconds * 1000, calibration);
    run_phase(tenants, gpu, shim, dir, &mut compute)?;
    // What the ledger says, read while the tenants still exist.
    if let Ok(report) = crate::report::read_report(dir) {
        compute.take_ledger(tenants, &report);
    }
    Ok((memory, compute))
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
    let quota = QuotaRequest {
        memory: Some(tenant.quota),
        compute: ComputeSettings {
            share_permille: Some(tenant.share_permille),
            ..ComputeSettings::default()
        },
        gpu: None,
    }
    .new_tenant_quota();
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

/// Runs one worker of `phase` per tenant, side by side, and hands their lines to `phase` as
/// they come.
fn run_phase(
    tenants: &[Tenant],
    gpu: &Gpu,
    shim: &Path,
    dir: &Path,
    phase: &mut dyn Phase,
) -> Result<(), Failure> {
    let (events, received) = mpsc::channel();
    let mut workers: Vec<(Child, thread::JoinHandle<String>)> = Vec::new();
    for (index, tenant) in tenants.iter().enumerate() {
        let mut child = match spawn_worker(tenant, gpu, shim, dir, phase) {
            Ok(child) => child,
            Err(e) => {
                for (mut child, _) in workers {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e);
            }
        };
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("a demo worker's output was not piped")).failed();
        };
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
                phase.line(from, line);
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
            phase.line(index, &line);
        }
    }
    for (index, ((mut child, errors), tenant)) in workers.into_iter().zip(tenants).enumerate() {
        let status = child
            .wait()
            .map_err(|e| anyhow!("could not wait for a demo worker: {e}"))
            .failed()?;
        let errors = errors.join().unwrap_or_default();
        if status.success() {
            // The shim's notes, such as the refusal it logged.
            for line in errors.lines() {
                eprintln!("[{}] {line}", tenant.name);
            }
        } else {
            phase.failed(
                index,
                format!("its program ended with {status}: {}", errors.trim()),
            );
        }
    }
    Ok(())
}

/// The worker of `phase` for `tenant`, under the shim, with stdout and stderr piped.
fn spawn_worker(
    tenant: &Tenant,
    gpu: &Gpu,
    shim: &Path,
    dir: &Path,
    phase: &dyn Phase,
) -> Result<Child, Failure> {
    let me = std::env::current_exe()
        .map_err(|e| anyhow!("cannot find this program to start the demo's workers: {e}"))
        .failed()?;
    let mut command = run::tenant_command(&me, shim, &tenant.name, dir);
    let name = match phase.kind() {
        DemoPhase::Memory => "memory",
        DemoPhase::Compute => "compute",
    };
    command
        .args(["__demo-worker", "--phase", name])
        .args(phase.worker_args(tenant))
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

/// `bytes` in whole GiB or MiB when it is a multiple of one, else in bytes.
pub fn exact_size(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}
