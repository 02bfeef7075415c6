//! Launches the `gpuslice_spin` kernel of `examples/ptx/spin.ptx` back to back and reports
//! how busy it kept the GPU; or launches `gpuslice_noop` to measure launch throughput. Runs
//! unchanged on a real GPU (which JIT-compiles the PTX) and on fakecuda (which knows both
//! kernels by name).
//!
//! ```text
//! spin [--kernels N] [--ns D]     N launches (default 100) of D nanoseconds (default 1000000)
//! spin --noop N                   N launches of gpuslice_noop
//! spin --for MS [--ns D] [where] [shape] [--idle-after MS --idle-for MS]
//!                                 kernels of D ns for MS milliseconds, idle for a while in
//!                                 the middle if asked
//! spin --for MS --requests-every P [--ns D] [--launches K [--gap-us G]]
//!                                 requests for MS milliseconds, P milliseconds apart (or
//!                                 LO-HI: a pause drawn at random, uniform, each time): K
//!                                 kernels of D ns (default 1), each followed by G µs of
//!                                 host work (a busy wait, as a framework's Python between
//!                                 two launches: K short kernels with a gap longer than
//!                                 each is a launch-bound inference request), then a
//!                                 synchronization
//!
//! where (one of; default: one stream of its own):
//!   --streams K                   K streams of its own, kernels round-robin across them
//!   --legacy                      the legacy NULL stream
//!   --per-thread                  the per-thread default stream: launches through the
//!                                 cuLaunchKernel_ptsz entry point (from cuGetProcAddress) on
//!                                 NULL, events on CU_STREAM_PER_THREAD
//! shape (one of; default: --depth 4):
//!   --depth K [--mix S:E]         K kernels in flight on each stream, as a training loop
//!                                 keeps them queued; with --mix, kernels of S ns but every
//!                                 E-th (the first included), which is of D ns
//!   --sync-every N [--pause-us U] N kernels back to back, then cuCtxSynchronize, repeated
//!                                 (a training step; --ns 20000 --sync-every 1 is a
//!                                 launch-bound loop); U microseconds asleep after each
//!                                 synchronization (a light tenant: a kernel, then a pause)
//!   --graph N [--pause-us U]      N kernels run once and synchronized (a warm-up, as
//!                                 frameworks do), then captured into a CUDA graph (global
//!                                 capture mode), then the graph replayed, with
//!                                 cuCtxSynchronize after each replay (not with --legacy or
//!                                 several streams)
//! ```
//!
//! Prints `kernels=<n> ns_each=<d> elapsed_ms=<..> busy_fraction=<..> event_ms=<..>`, where
//! `elapsed_ms` is host time from the first launch to the end of the synchronization,
//! `busy_fraction` is the kernels' total time divided by it, and `event_ms` is the time between
//! events recorded before and after the kernels; or, with `--noop`,
//! `launches=<n> elapsed_ms=<..> launches_per_sec=<..>`; or, with `--for`, a line
//! `done at_ns=<t> kernels=<n>` each time kernels are seen finished (`t` on `CLOCK_MONOTONIC`,
//! which all processes share, so that the shares of several processes can be compared over
//! the same window; `n` counts the kernels finished so far: with `--depth` one more each
//! line, the oldest kernel of a stream seen finished through its event; otherwise a whole
//! step or replay at each synchronization), then the summary line. With `--idle-after`, the
//! kernels in flight are waited for, `idle at_ns=<t>` printed, and `resume at_ns=<t>` when it
//! launches again. With `--requests-every`, a line `request at_ns=<t> latency_ns=<l>` per
//! request (launch to end of synchronization), then `requests=<n> p50_ns=<..> p99_ns=<..>`.
//!
//! Context, streams, events, graphs and synchronization use cudarc's safe API. Loading a
//! module from PTX and launching use cudarc's result API: the safe API's `load_module` and
//! launch builder need cudarc's `nvrtc` feature, which this workspace does not enable.

use std::collections::VecDeque;
use std::ffi::{CString, c_void};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::{
    self, CUdriverProcAddress_flags, CUdriverProcAddressQueryResult, CUevent_flags, CUfunction,
    CUgraphInstantiate_flags, CUmodule, CUresult, CUstream, CUstreamCaptureMode,
};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError, result};
use gpuslice_ledger::monotonic_ns;

const PTX: &str = include_str!("ptx/spin.ptx");
const USAGE: &str = "usage: spin [--kernels N] [--ns D] | spin --noop N | \
                     spin --for MS [--ns D] [--streams K | --legacy | --per-thread] \
                     [--depth K [--mix S:E] | --sync-every N [--pause-us U] | --graph N [--pause-us U]] \
                     [--idle-after MS --idle-for MS] | \
                     spin --for MS --requests-every P|LO-HI [--ns D] [--launches K [--gap-us G]]";

enum Mode {
    Spin { kernels: u64, ns: u64 },
    Noop { launches: u64 },
    Load(Load),
    Requests(Requests),
}

/// Kernels for a while, in some shape.
struct Load {
    millis: u64,
    ns: u64,
    place: Place,
    shape: Shape,
    /// Goes idle (launches nothing) after this many milliseconds...
    idle_after: Option<u64>,
    /// ...for this many.
    idle_for: u64,
    /// With `--depth`: kernels of this many ns, all but every so many (those of `ns`).
    mix: Option<(u64, u64)>,
}

/// Requests, one after another with a pause between them.
struct Requests {
    millis: u64,
    /// Each kernel's length.
    ns: u64,
    /// The pause after each request, milliseconds: drawn from this range, uniform.
    every_ms: (u64, u64),
    /// Kernels per request.
    launches: u64,
    /// Host work after each launch.
    gap: Duration,
}

/// Keeps the thread busy for `how_long`, as host code between two launches does (a sleep
/// would give the core away and wake up late).
fn busy_wait(how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < how_long {
        std::hint::spin_loop();
    }
}

/// Which streams the kernels go to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// This many streams of its own.
    Streams(u64),
    /// The legacy NULL stream.
    Legacy,
    /// The per-thread default stream.
    PerThread,
}

/// How the kernels are launched and waited for.
#[derive(Clone, Copy)]
enum Shape {
    /// This many in flight on each stream, each waited for through its event.
    InFlight(u64),
    /// This many back to back, then a context synchronization, then the pause.
    SyncEvery(u64, Duration),
    /// A graph of this many captured once, replayed with a synchronization after each
    /// replay, then the pause.
    Graph(u64, Duration),
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

/// `cuLaunchKernel`'s signature, which its `_ptsz` twin shares.
type LaunchKernelFn = unsafe extern "C" fn(
    CUfunction,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;

/// `cuLaunchKernel_ptsz`, as a program built for per-thread default streams finds it: through
/// `cuGetProcAddress` with the per-thread flag.
fn per_thread_launch() -> Result<LaunchKernelFn, String> {
    let mut pfn: *mut c_void = std::ptr::null_mut();
    let mut status = CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    let flags = CUdriverProcAddress_flags::CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM as u64;
    // SAFETY: the symbol is NUL-terminated and both outputs are valid places to write.
    unsafe {
        sys::cuGetProcAddress_v2(
            c"cuLaunchKernel".as_ptr(),
            &mut pfn,
            12000,
            flags,
            &mut status,
        )
    }
    .result()
    .map_err(|e| format!("cuGetProcAddress_v2(cuLaunchKernel, per-thread): {e}"))?;
    if pfn.is_null() || status != CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SUCCESS {
        return Err(format!(
            "cuGetProcAddress_v2(cuLaunchKernel, per-thread): {status:?}"
        ));
    }
    // SAFETY: the driver returned the address of cuLaunchKernel_ptsz, whose C signature is
    // LaunchKernelFn.
    Ok(unsafe { std::mem::transmute::<*mut c_void, LaunchKernelFn>(pfn) })
}

/// Launches one kernel of the module: through `cuLaunchKernel` on a stream, or through
/// `cuLaunchKernel_ptsz` on NULL (the thread's per-thread default stream).
struct Launcher {
    function: CUfunction,
    kernel: &'static str,
    per_thread: Option<LaunchKernelFn>,
}

impl Launcher {
    /// One launch with `params` (one pointer to a u64 for gpuslice_spin, none for
    /// gpuslice_noop) on `stream` (ignored for the per-thread stream).
    fn launch(&self, stream: &CudaStream, params: &mut [*mut c_void]) -> Result<(), String> {
        let launched = match self.per_thread {
            // SAFETY: function belongs to the loaded module and params match its parameters;
            // NULL in a _ptsz entry point is the thread's per-thread default stream.
            Some(launch) => unsafe {
                launch(
                    self.function,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    0,
                    std::ptr::null_mut(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .result(),
            // SAFETY: as above, on a stream of the current context.
            None => unsafe {
                result::launch_kernel(
                    self.function,
                    (1, 1, 1),
                    (1, 1, 1),
                    0,
                    stream.cu_stream(),
                    params,
                )
            },
        };
        launched.map_err(|e| format!("launching {}: {e}", self.kernel))
    }

    /// One `gpuslice_spin` of `ns` on `stream`.
    fn spin(&self, stream: &CudaStream, ns: u64) -> Result<(), String> {
        let mut argument = ns;
        self.launch(stream, &mut [(&raw mut argument).cast()])
    }
}

fn run(mode: Mode) -> Result<(), String> {
    let ctx = CudaContext::new(0).map_err(|e| format!("creating a context on device 0: {e}"))?;
    let place = match &mode {
        Mode::Load(load) => load.place,
        _ => Place::Legacy,
    };
    let streams: Vec<Arc<CudaStream>> = match place {
        Place::Streams(k) => (0..k)
            .map(|_| ctx.new_stream().map_err(|e| format!("cuStreamCreate: {e}")))
            .collect::<Result<_, _>>()?,
        Place::Legacy => vec![ctx.default_stream()],
        Place::PerThread => vec![ctx.per_thread_stream()],
    };
    let stream = &streams[0];
    let module = Module::load(PTX).map_err(|e| format!("loading spin.ptx: {e}"))?;
    let kernel = match mode {
        Mode::Spin { .. } | Mode::Load(_) | Mode::Requests(_) => "gpuslice_spin",
        Mode::Noop { .. } => "gpuslice_noop",
    };
    let launcher = Launcher {
        function: module
            .function(kernel)
            .map_err(|e| format!("finding {kernel}: {e}"))?,
        kernel,
        per_thread: match place {
            Place::PerThread => Some(per_thread_launch()?),
            _ => None,
        },
    };

    match mode {
        Mode::Spin { kernels, ns } => {
            let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let before = stream
                .record_event(timing)
                .map_err(|e| format!("cuEventRecord: {e}"))?;
            let start = Instant::now();
            for _ in 0..kernels {
                launcher.spin(stream, ns)?;
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
        Mode::Load(load) => run_load(&ctx, &streams, &launcher, &load)?,
        Mode::Requests(requests) => {
            let mut random = XorShift::seeded();
            let start = Instant::now();
            let mut latencies = Vec::new();
            while start.elapsed().as_millis() < u128::from(requests.millis) {
                let sent = monotonic_ns();
                for _ in 0..requests.launches {
                    launcher.spin(stream, requests.ns)?;
                    busy_wait(requests.gap);
                }
                stream
                    .synchronize()
                    .map_err(|e| format!("cuStreamSynchronize: {e}"))?;
                let answered = monotonic_ns();
                let latency = answered.saturating_sub(sent);
                println!("request at_ns={answered} latency_ns={latency}");
                latencies.push(latency);
                let (low, high) = requests.every_ms;
                let pause_us = low * 1_000 + random.below((high - low) * 1_000 + 1);
                std::thread::sleep(Duration::from_micros(pause_us));
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
                launcher.launch(stream, &mut [])?;
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

/// Counts the kernels seen finished and prints a `done` line for each sighting.
struct Finished {
    kernels: u64,
}

impl Finished {
    fn saw(&mut self, kernels: u64) {
        self.kernels += kernels;
        println!("done at_ns={} kernels={}", monotonic_ns(), self.kernels);
    }
}

/// The kernels in flight on each stream, oldest first, each with the event recorded behind
/// it.
struct InFlight {
    queues: Vec<VecDeque<CudaEvent>>,
}

impl InFlight {
    /// Waits for the oldest kernel in flight on stream `i`, if any.
    fn wait_oldest(&mut self, i: usize, finished: &mut Finished) -> Result<(), String> {
        if let Some(oldest) = self.queues[i].pop_front() {
            oldest
                .synchronize()
                .map_err(|e| format!("cuEventSynchronize: {e}"))?;
            finished.saw(1);
        }
        Ok(())
    }

    /// Waits for everything in flight, stream by stream.
    fn drain(&mut self, finished: &mut Finished) -> Result<(), String> {
        for i in 0..self.queues.len() {
            while !self.queues[i].is_empty() {
                self.wait_oldest(i, finished)?;
            }
        }
        Ok(())
    }
}

fn synchronize(ctx: &CudaContext) -> Result<(), String> {
    ctx.synchronize()
        .map_err(|e| format!("cuCtxSynchronize: {e}"))
}

/// Runs a `--for` load: see the module's documentation.
fn run_load(
    ctx: &Arc<CudaContext>,
    streams: &[Arc<CudaStream>],
    launcher: &Launcher,
    load: &Load,
) -> Result<(), String> {
    let ns = load.ns;
    let mut finished = Finished { kernels: 0 };
    let graph = match load.shape {
        Shape::Graph(n, _) => {
            // A warm-up run first, as frameworks do before capturing (and so that a shim
            // watching the process is at work during the capture).
            let stream = &streams[0];
            for _ in 0..n {
                launcher.spin(stream, ns)?;
            }
            synchronize(ctx)?;
            finished.saw(n);
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
                .map_err(|e| format!("cuStreamBeginCapture_v2: {e}"))?;
            for _ in 0..n {
                launcher.spin(stream, ns)?;
            }
            let graph = stream
                .end_capture(CUgraphInstantiate_flags(0))
                .map_err(|e| format!("cuStreamEndCapture / cuGraphInstantiateWithFlags: {e}"))?;
            Some(graph.ok_or("cuStreamEndCapture gave no graph")?)
        }
        _ => None,
    };
    let mut in_flight = InFlight {
        queues: streams.iter().map(|_| VecDeque::new()).collect(),
    };
    let mut next_stream = 0;
    let mut idled = false;
    let mut launched = 0u64;
    let mut launched_ns = 0u64;
    let start = Instant::now();
    while start.elapsed().as_millis() < u128::from(load.millis) {
        let idle_now = load
            .idle_after
            .is_some_and(|after| start.elapsed().as_millis() >= u128::from(after));
        if idle_now && !idled {
            idled = true;
            in_flight.drain(&mut finished)?;
            println!("idle at_ns={}", monotonic_ns());
            std::thread::sleep(Duration::from_millis(load.idle_for));
            println!("resume at_ns={}", monotonic_ns());
        }
        match load.shape {
            Shape::InFlight(depth) => {
                let i = next_stream;
                next_stream = (next_stream + 1) % streams.len();
                let this_ns = match load.mix {
                    Some((short, every)) if !launched.is_multiple_of(every.max(1)) => short,
                    _ => ns,
                };
                launched += 1;
                launched_ns += this_ns;
                launcher.spin(&streams[i], this_ns)?;
                in_flight.queues[i].push_back(
                    streams[i]
                        .record_event(None)
                        .map_err(|e| format!("cuEventRecord: {e}"))?,
                );
                if in_flight.queues[i].len() as u64 >= depth.max(1) {
                    in_flight.wait_oldest(i, &mut finished)?;
                }
            }
            Shape::SyncEvery(n, pause) => {
                for _ in 0..n {
                    launcher.spin(&streams[next_stream], ns)?;
                    next_stream = (next_stream + 1) % streams.len();
                }
                synchronize(ctx)?;
                finished.saw(n);
                std::thread::sleep(pause);
            }
            Shape::Graph(n, pause) => {
                if let Some(graph) = &graph {
                    graph.launch().map_err(|e| format!("cuGraphLaunch: {e}"))?;
                }
                synchronize(ctx)?;
                finished.saw(n);
                std::thread::sleep(pause);
            }
        }
    }
    in_flight.drain(&mut finished)?;
    drop(graph);
    let elapsed = start.elapsed();
    // With --mix every launched kernel has finished by now (drained): their own times.
    let busy_ns = if load.mix.is_some() {
        launched_ns as f64
    } else {
        finished.kernels as f64 * ns as f64
    };
    println!(
        "kernels={} ns_each={ns} elapsed_ms={:.3} busy_fraction={:.4}",
        finished.kernels,
        elapsed.as_secs_f64() * 1e3,
        busy_ns / elapsed.as_nanos().max(1) as f64,
    );
    Ok(())
}

fn number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{flag} {value:?}: expected a whole number\n{USAGE}"))
}

/// A count that must be at least 1.
fn count(flag: &str, value: Option<String>) -> Result<u64, String> {
    match number(flag, value)? {
        0 => Err(format!("{flag} must be at least 1\n{USAGE}")),
        n => Ok(n),
    }
}

/// Which of several exclusive options was given, if any; more than one is an error.
fn one_of<T>(given: Vec<(&str, Option<T>)>) -> Result<Option<T>, String> {
    let names: Vec<&str> = given
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .collect();
    if names.len() > 1 {
        return Err(format!("{} go not together\n{USAGE}", names.join(" and ")));
    }
    Ok(given.into_iter().find_map(|(_, v)| v))
}

fn parse_args() -> Result<Mode, String> {
    let (mut kernels, mut ns, mut noop) = (100, 1_000_000, None);
    let (mut millis, mut depth, mut legacy, mut per_thread) = (None, None, None, None);
    let (mut streams, mut sync_every, mut graph, mut pause_us) = (None, None, None, None);
    let (mut idle_after, mut idle_for, mut every_ms) = (None, 0, None);
    let (mut mix, mut launches, mut gap_us) = (None, None, None);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--kernels" => kernels = number("--kernels", argv.next())?,
            "--ns" => ns = number("--ns", argv.next())?,
            "--noop" => noop = Some(number("--noop", argv.next())?),
            "--for" => millis = Some(number("--for", argv.next())?),
            "--depth" => depth = Some(number("--depth", argv.next())?),
            "--legacy" => legacy = Some(Place::Legacy),
            "--per-thread" => per_thread = Some(Place::PerThread),
            "--streams" => streams = Some(Place::Streams(count("--streams", argv.next())?)),
            "--sync-every" => sync_every = Some(count("--sync-every", argv.next())?),
            "--graph" => graph = Some(count("--graph", argv.next())?),
            "--pause-us" => pause_us = Some(number("--pause-us", argv.next())?),
            "--idle-after" => idle_after = Some(number("--idle-after", argv.next())?),
            "--idle-for" => idle_for = number("--idle-for", argv.next())?,
            "--mix" => mix = Some(mix_of(argv.next())?),
            "--launches" => launches = Some(count("--launches", argv.next())?),
            "--gap-us" => gap_us = Some(number("--gap-us", argv.next())?),
            "--requests-every" => {
                every_ms = Some(range_ms("--requests-every", argv.next())?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let place = one_of(vec![
        ("--streams", streams),
        ("--legacy", legacy),
        ("--per-thread", per_thread),
    ])?
    .unwrap_or(Place::Streams(1));
    let pause = Duration::from_micros(pause_us.unwrap_or(0));
    let shape = match one_of(vec![
        ("--depth", depth.map(Shape::InFlight)),
        (
            "--sync-every",
            sync_every.map(|n| Shape::SyncEvery(n, pause)),
        ),
        ("--graph", graph.map(|n| Shape::Graph(n, pause))),
    ])? {
        Some(Shape::InFlight(_)) | None if pause_us.is_some() => {
            return Err(format!(
                "--pause-us goes with --sync-every or --graph\n{USAGE}"
            ));
        }
        Some(shape) => shape,
        None => Shape::InFlight(4),
    };
    if matches!(shape, Shape::Graph(..)) && !matches!(place, Place::Streams(1) | Place::PerThread) {
        return Err(format!(
            "--graph captures on one stream: not with --legacy (which cannot capture) or \
             several streams\n{USAGE}"
        ));
    }
    if every_ms.is_none() && (launches.is_some() || gap_us.is_some()) {
        return Err(format!(
            "--launches and --gap-us go with --requests-every\n{USAGE}"
        ));
    }
    Ok(match (noop, millis) {
        (Some(launches), _) => Mode::Noop { launches },
        (None, Some(millis)) if let Some(every_ms) = every_ms => Mode::Requests(Requests {
            millis,
            ns,
            every_ms,
            launches: launches.unwrap_or(1),
            gap: Duration::from_micros(gap_us.unwrap_or(0)),
        }),
        (None, Some(millis)) => Mode::Load(Load {
            millis,
            ns,
            place,
            shape,
            idle_after,
            idle_for,
            mix,
        }),
        (None, None) => Mode::Spin { kernels, ns },
    })
}

/// `--mix SHORT_NS:EVERY`.
/// `P` or `LO-HI` (milliseconds, LO no more than HI).
fn range_ms(flag: &str, value: Option<String>) -> Result<(u64, u64), String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    let Some((low, high)) = value.split_once('-') else {
        let every = number(flag, Some(value))?;
        return Ok((every, every));
    };
    let (low, high) = (
        number(flag, Some(low.to_string()))?,
        number(flag, Some(high.to_string()))?,
    );
    if low > high {
        return Err(format!("{flag} {value:?}: LO is more than HI\n{USAGE}"));
    }
    Ok((low, high))
}

/// A small pseudo-random generator for pauses that no one can anticipate (xorshift64*):
/// a dependency would be more than this test program needs.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        XorShift(monotonic_ns() ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// A number below `bound` (at least 1), nearly uniform.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

fn mix_of(value: Option<String>) -> Result<(u64, u64), String> {
    let value = value.ok_or("--mix needs SHORT_NS:EVERY")?;
    let (short, every) = value
        .split_once(':')
        .ok_or_else(|| format!("--mix {value:?}: expected SHORT_NS:EVERY"))?;
    let short = number("--mix", Some(short.to_string()))?;
    let every = count("--mix", Some(every.to_string()))?;
    Ok((short, every))
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
