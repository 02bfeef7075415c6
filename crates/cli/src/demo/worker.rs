//! `gpuslice __demo-worker`: the program each tenant of `gpuslice demo` runs, under the shim.
//!
//! It is `gpuslice` itself, started again by `demo`, so that the demo needs nothing but this
//! binary, the shim and a driver. It uses the CUDA driver API the way a CUDA program does,
//! loading `libcuda.so.1` at run time (the binary never links CUDA) and calling through
//! `dlsym`, which the shim answers. Each step prints one `key=value` line that `demo` reads:
//!
//! ```text
//! total=1073741824 free=1006632960       cuMemGetInfo_v2, after the context exists
//! progress allocated=67108864           after every successful cuMemAlloc_v2
//! refused_at=1006632960 error=2          the first refused allocation (2: out of memory)
//! recovered=ok                           after freeing all, one chunk could be allocated
//! ```
//!
//! With `--start-on-stdin` it waits for a line on stdin between the first line and the
//! first allocation. `never_refused allocated=N` replaces the refusal when `--give-up-at` was
//! reached first (no quota was enforced). Any other CUDA error is a message on stderr and
//! exit 1.
//!
//! The compute phase (`--phase compute`) loads `examples/ptx/spin.ptx` (compiled into this
//! binary; a real driver JIT-compiles it, the simulated GPU knows its kernels by name) and
//! launches `gpuslice_work(--rounds)` back to back on a stream of its own for `--for-ms`,
//! keeping `--depth` kernels queued, as a training loop does. Each kernel is a fixed amount
//! of work, which progresses only while the GPU runs this process, so the kernels finished
//! count the GPU time it got (a kernel spinning on the clock would end on time even while
//! time-sliced out):
//!
//! ```text
//! ready                                  context, stream and module are there
//! done at_ns=123456789 kernels=1         each time a kernel is seen finished
//! finished kernels=1480 rounds_each=66000  at the end
//! ```
//!
//! `at_ns` is `CLOCK_MONOTONIC`, which every process on the machine shares, so that `demo`
//! can count what each tenant got over the same stretch of time.

use std::collections::VecDeque;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use gpuslice_ledger::monotonic_ns;

use crate::cli::{DemoPhase, DemoWorkerArgs};
use crate::exit::{self, Failure};

/// `CUresult`.
type CuResult = u32;
/// `CUDA_SUCCESS`.
const CUDA_SUCCESS: CuResult = 0;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
/// `CUdevice`.
type CuDevice = c_int;
/// `CUcontext`.
type CuContext = *mut c_void;
/// `CUdeviceptr`.
type CuDevicePtr = u64;
/// `CUmodule`, `CUfunction`, `CUstream`, `CUevent`: opaque handles.
type Handle = *mut c_void;

/// The kernels, as PTX text with the NUL that `cuModuleLoadData` needs.
const SPIN_PTX: &str = concat!(include_str!("../../../../examples/ptx/spin.ptx"), "\0");
/// The kernel that does its argument's rounds of work.
const WORK_KERNEL: &CStr = c"gpuslice_work";

type Init = unsafe extern "C" fn(c_uint) -> CuResult;
type DeviceGet = unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult;
type PrimaryCtxRetain = unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult;
type CtxSetCurrent = unsafe extern "C" fn(CuContext) -> CuResult;
type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult;
type MemAlloc = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type MemFree = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
type GetErrorName = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;
type ModuleLoadData = unsafe extern "C" fn(*mut Handle, *const c_void) -> CuResult;
type ModuleGetFunction = unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CuResult;
type ModuleUnload = unsafe extern "C" fn(Handle) -> CuResult;
type StreamCreate = unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult;
type StreamDestroy = unsafe extern "C" fn(Handle) -> CuResult;
type EventCreate = unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult;
type EventRecord = unsafe extern "C" fn(Handle, Handle) -> CuResult;
type EventSynchronize = unsafe extern "C" fn(Handle) -> CuResult;
type EventDestroy = unsafe extern "C" fn(Handle) -> CuResult;
type LaunchKernel = unsafe extern "C" fn(
    Handle,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    Handle,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;

/// `CU_STREAM_NON_BLOCKING`: the stream does not wait for the legacy NULL stream.
const CU_STREAM_NON_BLOCKING: c_uint = 1;
/// `CU_EVENT_DISABLE_TIMING`: an event only to wait on.
const CU_EVENT_DISABLE_TIMING: c_uint = 2;

/// The driver functions the worker calls, valid while `_lib` is loaded.
struct Driver {
    _lib: libloading::Library,
    init: Init,
    device_get: DeviceGet,
    primary_ctx_retain: PrimaryCtxRetain,
    ctx_set_current: CtxSetCurrent,
    mem_get_info: MemGetInfo,
    mem_alloc: MemAlloc,
    mem_free: MemFree,
    get_error_name: GetErrorName,
    module_load_data: ModuleLoadData,
    module_get_function: ModuleGetFunction,
    module_unload: ModuleUnload,
    stream_create: StreamCreate,
    stream_destroy: StreamDestroy,
    event_create: EventCreate,
    event_record: EventRecord,
    event_synchronize: EventSynchronize,
    event_destroy: EventDestroy,
    launch_kernel: LaunchKernel,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

impl Driver {
    /// Loads `libcuda.so.1` and looks up the functions.
    fn load() -> anyhow::Result<Driver> {
        // SAFETY: loading libcuda runs its initializers (and the shim's hooks), which is
        // what every CUDA program does.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }
            .map_err(|e| anyhow!("cannot load libcuda.so.1: {e}"))?;
        // SAFETY: each type is the function's signature in cuda.h; the pointers live in
        // `Driver` next to the library, which stays loaded as long as they do.
        unsafe {
            Ok(Driver {
                init: symbol(&lib, "cuInit")?,
                device_get: symbol(&lib, "cuDeviceGet")?,
                primary_ctx_retain: symbol(&lib, "cuDevicePrimaryCtxRetain")?,
                ctx_set_current: symbol(&lib, "cuCtxSetCurrent")?,
                mem_get_info: symbol(&lib, "cuMemGetInfo_v2")?,
                mem_alloc: symbol(&lib, "cuMemAlloc_v2")?,
                mem_free: symbol(&lib, "cuMemFree_v2")?,
                get_error_name: symbol(&lib, "cuGetErrorName")?,
                module_load_data: symbol(&lib, "cuModuleLoadData")?,
                module_get_function: symbol(&lib, "cuModuleGetFunction")?,
                module_unload: symbol(&lib, "cuModuleUnload")?,
                stream_create: symbol(&lib, "cuStreamCreate")?,
                stream_destroy: symbol(&lib, "cuStreamDestroy_v2")?,
                event_create: symbol(&lib, "cuEventCreate")?,
                event_record: symbol(&lib, "cuEventRecord")?,
                event_synchronize: symbol(&lib, "cuEventSynchronize")?,
                event_destroy: symbol(&lib, "cuEventDestroy_v2")?,
                launch_kernel: symbol(&lib, "cuLaunchKernel")?,
                _lib: lib,
            })
        }
    }

    /// `rc` as an error naming the call, unless it is `CUDA_SUCCESS`.
    fn check(&self, call: &str, rc: CuResult) -> anyhow::Result<()> {
        if rc == CUDA_SUCCESS {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: `name` is a valid place for the pointer to a static string.
        let found = unsafe { (self.get_error_name)(rc, &raw mut name) } == CUDA_SUCCESS;
        let name = if found && !name.is_null() {
            // SAFETY: the driver returned a static NUL-terminated string.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown error".to_string()
        };
        Err(anyhow!("{call} failed: {name} ({rc})"))
    }
}

/// The function `name` of `lib`.
///
/// # Safety
///
/// `T` must be the symbol's type, and the pointer must not be used after `lib` is unloaded.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> anyhow::Result<T> {
    // SAFETY: the caller vouches for `T`.
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|e| anyhow!("libcuda.so.1 lacks {name}: {e}"))
}

/// Runs `gpuslice __demo-worker`.
pub fn worker(args: &DemoWorkerArgs) -> Result<u8, Failure> {
    let result = match args.phase {
        DemoPhase::Memory => memory_phase(args),
        DemoPhase::Compute => compute_phase(args),
    };
    result
        .map(|()| exit::OK)
        .map_err(|e| Failure::new(exit::PROBLEMS, e))
}

/// Loads the driver and makes device 0's primary context current.
fn driver_with_context() -> anyhow::Result<Driver> {
    let driver = Driver::load()?;
    // Every call below takes plain values or pointers to live locals of the types cuda.h
    // declares ("as above"), and the driver is loaded (`driver` owns it).
    // SAFETY: as said above.
    let rc = unsafe { (driver.init)(0) };
    driver.check("cuInit", rc)?;
    let mut device: CuDevice = 0;
    // SAFETY: as above.
    driver.check("cuDeviceGet", unsafe {
        (driver.device_get)(&raw mut device, 0)
    })?;
    let mut context: CuContext = std::ptr::null_mut();
    // SAFETY: as above.
    driver.check("cuDevicePrimaryCtxRetain", unsafe {
        (driver.primary_ctx_retain)(&raw mut context, device)
    })?;
    // SAFETY: as above; `context` was just retained.
    driver.check("cuCtxSetCurrent", unsafe {
        (driver.ctx_set_current)(context)
    })?;
    Ok(driver)
}

/// Waits for the start signal, a line on stdin.
fn wait_for_start() -> anyhow::Result<()> {
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .map_err(|e| anyhow!("could not read the start signal: {e}"))?;
    Ok(())
}

/// Allocates `--chunk` after `--chunk` until refused, frees everything, allocates again.
fn memory_phase(args: &DemoWorkerArgs) -> anyhow::Result<()> {
    let chunk = usize::try_from(args.chunk).map_err(|_| anyhow!("--chunk is too large"))?;
    let driver = driver_with_context()?;
    // Every call below takes plain values or pointers to live locals of the types cuda.h
    // declares ("as above"), and the driver is loaded (`driver` owns it).
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: as above.
    driver.check("cuMemGetInfo_v2", unsafe {
        (driver.mem_get_info)(&raw mut free, &raw mut total)
    })?;
    println!("total={total} free={free}");
    if args.start_on_stdin {
        // `demo` starts the tenants' allocations together, once every context exists: the
        // shim measures a context's footprint as the GPU's used memory before and after
        // creating it, which another process's allocations in between would inflate.
        wait_for_start()?;
    }

    let mut held: Vec<CuDevicePtr> = Vec::new();
    let mut allocated: u64 = 0;
    loop {
        if allocated >= args.give_up_at {
            println!("never_refused allocated={allocated}");
            break;
        }
        let mut pointer: CuDevicePtr = 0;
        // SAFETY: as above.
        let rc = unsafe { (driver.mem_alloc)(&raw mut pointer, chunk) };
        if rc == CUDA_ERROR_OUT_OF_MEMORY {
            println!("refused_at={allocated} error={rc}");
            break;
        }
        driver.check("cuMemAlloc_v2", rc)?;
        held.push(pointer);
        allocated += args.chunk;
        println!("progress allocated={allocated}");
        std::thread::sleep(Duration::from_millis(args.pause_ms));
    }
    for pointer in held.drain(..) {
        // SAFETY: as above; `pointer` was allocated by cuMemAlloc_v2 and is freed once.
        driver.check("cuMemFree_v2", unsafe { (driver.mem_free)(pointer) })?;
    }
    let mut pointer: CuDevicePtr = 0;
    // SAFETY: as above.
    let rc = unsafe { (driver.mem_alloc)(&raw mut pointer, chunk) };
    driver
        .check("cuMemAlloc_v2 after freeing everything", rc)
        .map_err(|e| anyhow!("could not allocate again: {e}"))?;
    // SAFETY: as above.
    driver.check("cuMemFree_v2", unsafe { (driver.mem_free)(pointer) })?;
    println!("recovered=ok");
    Ok(())
}

/// Launches `gpuslice_work(--rounds)` back to back for `--for-ms`, `--depth` queued, and
/// prints a `done` line for each kernel seen finished.
fn compute_phase(args: &DemoWorkerArgs) -> anyhow::Result<()> {
    let driver = driver_with_context()?;
    // As in the memory phase, every call takes plain values, handles the driver gave, or
    // pointers to live locals ("as above").
    let mut module: Handle = std::ptr::null_mut();
    // SAFETY: as above; SPIN_PTX is NUL-terminated and lives for the whole program.
    driver.check("cuModuleLoadData", unsafe {
        (driver.module_load_data)(&raw mut module, SPIN_PTX.as_ptr().cast())
    })?;
    let mut function: Handle = std::ptr::null_mut();
    // SAFETY: as above; `module` is loaded.
    driver.check("cuModuleGetFunction", unsafe {
        (driver.module_get_function)(&raw mut function, module, WORK_KERNEL.as_ptr())
    })?;
    let mut stream: Handle = std::ptr::null_mut();
    // SAFETY: as above.
    driver.check("cuStreamCreate", unsafe {
        (driver.stream_create)(&raw mut stream, CU_STREAM_NON_BLOCKING)
    })?;
    let depth = usize::try_from(args.depth).unwrap_or(1).max(1);
    let mut events: Vec<Handle> = Vec::with_capacity(depth);
    for _ in 0..depth {
        let mut event: Handle = std::ptr::null_mut();
        // SAFETY: as above.
        driver.check("cuEventCreate", unsafe {
            (driver.event_create)(&raw mut event, CU_EVENT_DISABLE_TIMING)
        })?;
        events.push(event);
    }
    println!("ready");
    if args.start_on_stdin {
        wait_for_start()?;
    }

    let mut queued: VecDeque<Handle> = VecDeque::with_capacity(depth);
    let mut free: Vec<Handle> = events.clone();
    let mut done = 0u64;
    let start = Instant::now();
    let run_for = Duration::from_millis(args.for_ms);
    while start.elapsed() < run_for {
        let mut rounds = args.rounds;
        let mut params: [*mut c_void; 1] = [(&raw mut rounds).cast()];
        // SAFETY: as above; `function` takes one .u64 parameter, and `params` holds one
        // pointer to a live u64 (the driver copies it before returning).
        driver.check("cuLaunchKernel", unsafe {
            (driver.launch_kernel)(
                function,
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })?;
        let Some(event) = free.pop() else {
            return Err(anyhow!("no free event: depth bookkeeping is wrong"));
        };
        // SAFETY: as above; `event` is not queued, so it may be recorded again.
        driver.check("cuEventRecord", unsafe {
            (driver.event_record)(event, stream)
        })?;
        queued.push_back(event);
        if queued.len() >= depth {
            finish_oldest(&driver, &mut queued, &mut free, &mut done)?;
        }
    }
    while !queued.is_empty() {
        finish_oldest(&driver, &mut queued, &mut free, &mut done)?;
    }
    println!("finished kernels={done} rounds_each={}", args.rounds);
    for event in events {
        // SAFETY: as above; every event is finished and destroyed once.
        driver.check("cuEventDestroy_v2", unsafe {
            (driver.event_destroy)(event)
        })?;
    }
    // SAFETY: as above; the stream is idle and destroyed once.
    driver.check("cuStreamDestroy_v2", unsafe {
        (driver.stream_destroy)(stream)
    })?;
    // SAFETY: as above; no kernel of the module is running any more.
    driver.check("cuModuleUnload", unsafe { (driver.module_unload)(module) })?;
    Ok(())
}

/// Waits for the oldest queued kernel (its event), gives the event back to `free`, counts it
/// in `done` and says so on stdout.
fn finish_oldest(
    driver: &Driver,
    queued: &mut VecDeque<Handle>,
    free: &mut Vec<Handle>,
    done: &mut u64,
) -> anyhow::Result<()> {
    let Some(oldest) = queued.pop_front() else {
        return Ok(());
    };
    // SAFETY: `oldest` was created by cuEventCreate and recorded on a live stream.
    driver.check("cuEventSynchronize", unsafe {
        (driver.event_synchronize)(oldest)
    })?;
    *done += 1;
    free.push(oldest);
    let mut out = std::io::stdout().lock();
    // A closed stdout (demo gone) is no reason to stop; the exit status says enough.
    let _ = writeln!(out, "done at_ns={} kernels={done}", monotonic_ns());
    let _ = out.flush();
    Ok(())
}
