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
//! first allocation. `never_refused allocated=N` replaces the refusal when `--give-up-at` was reached first
//! (no quota was enforced). Any other CUDA error is a message on stderr and exit 1.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::time::Duration;

use anyhow::anyhow;

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

type Init = unsafe extern "C" fn(c_uint) -> CuResult;
type DeviceGet = unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult;
type PrimaryCtxRetain = unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult;
type CtxSetCurrent = unsafe extern "C" fn(CuContext) -> CuResult;
type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult;
type MemAlloc = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type MemFree = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
type GetErrorName = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;

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
    };
    result
        .map(|()| exit::OK)
        .map_err(|e| Failure::new(exit::PROBLEMS, e))
}

/// Allocates `--chunk` after `--chunk` until refused, frees everything, allocates again.
fn memory_phase(args: &DemoWorkerArgs) -> anyhow::Result<()> {
    let chunk = usize::try_from(args.chunk).map_err(|_| anyhow!("--chunk is too large"))?;
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
        let mut go = String::new();
        std::io::stdin()
            .read_line(&mut go)
            .map_err(|e| anyhow!("could not read the start signal: {e}"))?;
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
