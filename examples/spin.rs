//! Launches the `gpuslice_spin` kernel of `examples/ptx/spin.ptx` back to back on one stream
//! and reports how busy it kept the GPU; or launches `gpuslice_noop` to measure launch
//! throughput. Runs unchanged on a real GPU (which JIT-compiles the PTX) and on fakecuda
//! (which knows both kernels by name).
//!
//! ```text
//! spin [--kernels N] [--ns D]     N launches (default 100) of D nanoseconds (default 1000000)
//! spin --noop N                   N launches of gpuslice_noop
//! spin --for MS [--ns D] [--depth K] [--legacy] [--idle-after MS --idle-for MS]
//!                                 kernels of D ns for MS milliseconds, K in flight at once,
//!                                 idle for a while in the middle if asked
//! spin --for MS --requests-every P [--ns D]
//!                                 requests for MS milliseconds: one kernel of D ns and a
//!                                 synchronization each, P milliseconds apart
//! ```
//!
//! Prints `kernels=<n> ns_each=<d> elapsed_ms=<..> busy_fraction=<..> event_ms=<..>`, where
//! `elapsed_ms` is host time from the first launch to the end of the synchronization,
//! `busy_fraction` is the kernels' total time divided by it, and `event_ms` is the time between
//! events recorded before and after the kernels; or, with `--noop`,
//! `launches=<n> elapsed_ms=<..> launches_per_sec=<..>`; or, with `--for`, a line
//! `done at_ns=<t> kernels=<n>` each time a kernel is seen finished (`t` on
//! `CLOCK_MONOTONIC`, which all processes share, so that the shares of several processes
//! can be compared over the same window), then the summary line. `--for` uses a stream of
//! its own (`--legacy`: the legacy NULL stream) and keeps K kernels queued, as a training
//! loop does. With `--requests-every`, a line `request at_ns=<t> latency_ns=<l>` per request
//! (launch to end of synchronization), then `requests=<n> p50_ns=<..> p99_ns=<..>`.
//!
//! Context, stream, events and synchronization use cudarc's safe API. Loading a module from
//! PTX and launching use cudarc's result API: the safe API's `load_module` and launch builder
//! need cudarc's `nvrtc` feature, which this workspace does not enable.

use std::collections::VecDeque;
use std::ffi::{CString, c_void};
use std::process::ExitCode;
use std::time::Instant;

use cudarc::driver::sys::{CUevent_flags, CUfunction, CUmodule};
use cudarc::driver::{CudaContext, DriverError, result};
use gpuslice_ledger::monotonic_ns;

const PTX: &str = include_str!("ptx/spin.ptx");
const USAGE: &str = "usage: spin [--kernels N] [--ns D] | spin --noop N | \
                     spin --for MS [--ns D] [--depth K] [--legacy] [--idle-after MS --idle-for MS] | \
                     spin --for MS --requests-every P [--ns D]";

enum Mode {
    Spin { kernels: u64, ns: u64 },
    Noop { launches: u64 },
    Load(Load),
    Requests { millis: u64, ns: u64, every_ms: u64 },
}

/// Kernels back to back for a while.
struct Load {
    millis: u64,
    ns: u64,
    depth: u64,
    legacy: bool,
    /// Goes idle (launches nothing) after this many milliseconds...
    idle_after: Option<u64>,
    /// ...for this many.
    idle_for: u64,
}

/// A module loaded from PTX, unloaded on drop.
struct Module(CUmodule);

impl Module {
    fn load(ptx: &str) -> Result<Module, DriverError> {
        let text = CString::new(ptx).expect("the PTX has no NUL byte");
        // SAFETY: text is NUL-terminated PTX and outlives the call; a context is current.
        unsafe { result::module::load_data(text.as_ptr().cast()) }.map(Module)
    }

    fn function(&self, name: &str) -> Result<CUfunction, DriverError> {
        let name = CString::new(name).expect("kernel names have no NUL byte");
        // SAFETY: self.0 is a loaded module (unloaded only on drop).
        unsafe { result::module::get_function(self.0, name) }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the module was loaded and is unloaded once; its functions are no longer used.
        if let Err(e) = unsafe { result::module::unload(self.0) } {
            eprintln!("spin: cuModuleUnload: {e}");
        }
    }
}

fn run(mode: Mode) -> Result<(), String> {
    let ctx = CudaContext::new(0).map_err(|e| format!("creating a context on device 0: {e}"))?;
    let stream = match &mode {
        Mode::Load(load) if !load.legacy => ctx
            .new_stream()
            .map_err(|e| format!("cuStreamCreate: {e}"))?,
        _ => ctx.default_stream(),
    };
    let module = Module::load(PTX).map_err(|e| format!("loading spin.ptx: {e}"))?;
    let kernel = match mode {
        Mode::Spin { .. } | Mode::Load(_) | Mode::Requests { .. } => "gpuslice_spin",
        Mode::Noop { .. } => "gpuslice_noop",
    };
    let function = module
        .function(kernel)
        .map_err(|e| format!("finding {kernel}: {e}"))?;
    let launch = |params: &mut [*mut c_void]| {
        // SAFETY: function belongs to the loaded module and params match its parameters:
        // one pointer to a u64 for gpuslice_spin, none for gpuslice_noop.
        unsafe {
            result::launch_kernel(
                function,
                (1, 1, 1),
                (1, 1, 1),
                0,
                stream.cu_stream(),
                params,
            )
        }
        .map_err(|e| format!("launching {kernel}: {e}"))
    };

    match mode {
        Mode::Spin { kernels, ns } => {
            let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let before = stream
                .record_event(timing)
                .map_err(|e| format!("cuEventRecord: {e}"))?;
            let start = Instant::now();
            for _ in 0..kernels {
                let mut argument = ns;
                launch(&mut [(&raw mut argument).cast()])?;
            }
            let after = stream
                .record_event(timing)
                .map_err(|e| format!("cuEventRecord: {e}"))?;
            stream
                .synchronize()
                .map_err(|e| format!("cuStreamSynchronize: {e}"))?;
            let elapsed = start.elapsed();
            let event_ms = before
                .elapsed_ms(&after)
                .map_err(|e| format!("cuEventElapsedTime: {e}"))?;
            let busy_ns = kernels as f64 * ns as f64;
            println!(
                "kernels={kernels} ns_each={ns} elapsed_ms={:.3} busy_fraction={:.4} event_ms={event_ms:.3}",
                elapsed.as_secs_f64() * 1e3,
                busy_ns / elapsed.as_nanos().max(1) as f64,
            );
        }
        Mode::Load(Load {
            millis,
            ns,
            depth,
            idle_after,
            idle_for,
            ..
        }) => {
            let start = Instant::now();
            let mut queued = VecDeque::new();
            let mut done = 0u64;
            let mut idled = false;
            let sync = |event: cudarc::driver::CudaEvent| {
                event
                    .synchronize()
                    .map_err(|e| format!("cuEventSynchronize: {e}"))
            };
            while start.elapsed().as_millis() < u128::from(millis) {
                let idle_now = idle_after
                    .is_some_and(|after| start.elapsed().as_millis() >= u128::from(after));
                if idle_now && !idled {
                    idled = true;
                    while let Some(oldest) = queued.pop_front() {
                        sync(oldest)?;
                        done += 1;
                        println!("done at_ns={} kernels={done}", monotonic_ns());
                    }
                    println!("idle at_ns={}", monotonic_ns());
                    std::thread::sleep(std::time::Duration::from_millis(idle_for));
                    println!("resume at_ns={}", monotonic_ns());
                }
                let mut argument = ns;
                launch(&mut [(&raw mut argument).cast()])?;
                queued.push_back(
                    stream
                        .record_event(None)
                        .map_err(|e| format!("cuEventRecord: {e}"))?,
                );
                if queued.len() as u64 >= depth.max(1)
                    && let Some(oldest) = queued.pop_front()
                {
                    sync(oldest)?;
                    done += 1;
                    println!("done at_ns={} kernels={done}", monotonic_ns());
                }
            }
            while let Some(oldest) = queued.pop_front() {
                sync(oldest)?;
                done += 1;
                println!("done at_ns={} kernels={done}", monotonic_ns());
            }
            let elapsed = start.elapsed();
            println!(
                "kernels={done} ns_each={ns} elapsed_ms={:.3} busy_fraction={:.4}",
                elapsed.as_secs_f64() * 1e3,
                done as f64 * ns as f64 / elapsed.as_nanos().max(1) as f64,
            );
        }
        Mode::Requests {
            millis,
            ns,
            every_ms,
        } => {
            let start = Instant::now();
            let mut latencies = Vec::new();
            while start.elapsed().as_millis() < u128::from(millis) {
                let sent = monotonic_ns();
                let mut argument = ns;
                launch(&mut [(&raw mut argument).cast()])?;
                stream
                    .synchronize()
                    .map_err(|e| format!("cuStreamSynchronize: {e}"))?;
                let answered = monotonic_ns();
                let latency = answered.saturating_sub(sent);
                println!("request at_ns={answered} latency_ns={latency}");
                latencies.push(latency);
                std::thread::sleep(std::time::Duration::from_millis(every_ms));
            }
            latencies.sort_unstable();
            let at = |percent: usize| {
                let last = latencies.len().saturating_sub(1);
                latencies.get(last * percent / 100).copied().unwrap_or(0)
            };
            println!(
                "requests={} p50_ns={} p99_ns={}",
                latencies.len(),
                at(50),
                at(99)
            );
        }
        Mode::Noop { launches } => {
            let start = Instant::now();
            for _ in 0..launches {
                launch(&mut [])?;
            }
            stream
                .synchronize()
                .map_err(|e| format!("cuStreamSynchronize: {e}"))?;
            let elapsed = start.elapsed();
            println!(
                "launches={launches} elapsed_ms={:.3} launches_per_sec={:.0}",
                elapsed.as_secs_f64() * 1e3,
                launches as f64 / elapsed.as_secs_f64().max(1e-9),
            );
        }
    }
    drop(module);
    Ok(())
}

fn number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{flag} {value:?}: expected a whole number\n{USAGE}"))
}

fn parse_args() -> Result<Mode, String> {
    let (mut kernels, mut ns, mut noop) = (100, 1_000_000, None);
    let (mut millis, mut depth, mut legacy) = (None, 4, false);
    let (mut idle_after, mut idle_for, mut every_ms) = (None, 0, None);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--kernels" => kernels = number("--kernels", argv.next())?,
            "--ns" => ns = number("--ns", argv.next())?,
            "--noop" => noop = Some(number("--noop", argv.next())?),
            "--for" => millis = Some(number("--for", argv.next())?),
            "--depth" => depth = number("--depth", argv.next())?,
            "--legacy" => legacy = true,
            "--idle-after" => idle_after = Some(number("--idle-after", argv.next())?),
            "--idle-for" => idle_for = number("--idle-for", argv.next())?,
            "--requests-every" => {
                every_ms = Some(number("--requests-every", argv.next())?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(match (noop, millis) {
        (Some(launches), _) => Mode::Noop { launches },
        (None, Some(millis)) if let Some(every_ms) = every_ms => Mode::Requests {
            millis,
            ns,
            every_ms,
        },
        (None, Some(millis)) => Mode::Load(Load {
            millis,
            ns,
            depth,
            legacy,
            idle_after,
            idle_for,
        }),
        (None, None) => Mode::Spin { kernels, ns },
    })
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("spin: {message}");
            ExitCode::FAILURE
        }
    }
}
