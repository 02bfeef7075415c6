//! NVML state: return codes, the initialization count, device handles and event sets.

use std::ffi::CStr;
use std::time::Duration;

use gpuslice_cuda_abi as cuda;
use parking_lot::Mutex;

use crate::config::MAX_DEVICES;
use crate::device::Device;
use crate::driver::{self, Driver};
use crate::faults;

/// An `nvmlReturn_t` error the simulated NVML returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum NvmlError {
    /// `NVML_ERROR_UNINITIALIZED`.
    Uninitialized = cuda::NVML_ERROR_UNINITIALIZED,
    /// `NVML_ERROR_INVALID_ARGUMENT`.
    InvalidArgument = cuda::NVML_ERROR_INVALID_ARGUMENT,
    /// `NVML_ERROR_NOT_SUPPORTED`: an event type the simulated devices never raise.
    NotSupported = cuda::NVML_ERROR_NOT_SUPPORTED,
    /// `NVML_ERROR_NOT_FOUND`.
    NotFound = cuda::NVML_ERROR_NOT_FOUND,
    /// `NVML_ERROR_INSUFFICIENT_SIZE`.
    InsufficientSize = cuda::NVML_ERROR_INSUFFICIENT_SIZE,
    /// `NVML_ERROR_DRIVER_NOT_LOADED`: the simulated driver's configuration is invalid.
    DriverNotLoaded = cuda::NVML_ERROR_DRIVER_NOT_LOADED,
    /// `NVML_ERROR_TIMEOUT`: no event came in time.
    Timeout = cuda::NVML_ERROR_TIMEOUT,
    /// `NVML_ERROR_GPU_IS_LOST`: the device is listed in the state directory's `lost-gpus`
    /// file (see `faults`).
    GpuIsLost = cuda::NVML_ERROR_GPU_IS_LOST,
    /// `NVML_ERROR_FUNCTION_NOT_FOUND`: what driver 580 returns for a versioned struct of a
    /// version it does not know.
    FunctionNotFound = cuda::NVML_ERROR_FUNCTION_NOT_FOUND,
    /// `NVML_ERROR_UNKNOWN`: an internal failure (a caught panic).
    Unknown = cuda::NVML_ERROR_UNKNOWN,
}

/// The result of a simulated NVML call.
pub type NvmlResult<T = ()> = Result<T, NvmlError>;

/// The `nvmlReturn_t` value of a result.
pub fn code_of(result: NvmlResult) -> u32 {
    match result {
        Ok(()) => cuda::NVML_SUCCESS,
        Err(e) => e as u32,
    }
}

/// What `nvmlErrorString` says for each `nvmlReturn_t`.
pub fn error_string(code: u32) -> &'static CStr {
    match code {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        11 => c"Interrupt request issue",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        14 => c"Corrupted infoROM",
        15 => c"GPU is lost",
        16 => c"GPU requires restart",
        17 => c"The operating system has blocked the request.",
        18 => c"RM has detected an NVML/RM version mismatch.",
        19 => c"In use by another client",
        20 => c"Insufficient Memory",
        21 => c"No data",
        23 => c"Insufficient resources",
        25 => c"Argument version mismatch",
        26 => c"Deprecated",
        27 => c"Not Ready",
        28 => c"GPU not found",
        29 => c"Invalid state",
        _ => c"Unknown Error",
    }
}

static INIT_COUNT: Mutex<u32> = Mutex::new(0);

/// `nvmlInit`: starts the simulated driver (without `cuInit`) and counts the initialization.
pub fn init() -> NvmlResult {
    driver::load().map_err(|_| NvmlError::DriverNotLoaded)?;
    *INIT_COUNT.lock() += 1;
    Ok(())
}

/// `nvmlShutdown`: undoes one `nvmlInit`.
pub fn shutdown() -> NvmlResult {
    let mut count = INIT_COUNT.lock();
    *count = count.checked_sub(1).ok_or(NvmlError::Uninitialized)?;
    Ok(())
}

/// The driver, for calls that need `nvmlInit` first.
pub fn driver() -> NvmlResult<&'static Driver> {
    if *INIT_COUNT.lock() == 0 {
        return Err(NvmlError::Uninitialized);
    }
    driver::load().map_err(|_| NvmlError::Uninitialized)
}

/// Distinct addresses used as `nvmlDevice_t` handles, one per device.
static HANDLES: [u8; MAX_DEVICES] = [0; MAX_DEVICES];

/// The `nvmlDevice_t` of device `index`.
pub fn handle_of(index: usize) -> usize {
    HANDLES.as_ptr() as usize + index
}

/// The device behind an `nvmlDevice_t`; `NVML_ERROR_GPU_IS_LOST` if it is listed as lost.
pub fn device(handle: usize) -> NvmlResult<&'static Device> {
    let index = handle
        .checked_sub(HANDLES.as_ptr() as usize)
        .ok_or(NvmlError::InvalidArgument)?;
    let driver = driver()?;
    let device = driver
        .devices
        .get(index)
        .ok_or(NvmlError::InvalidArgument)?;
    not_lost(driver, device)
}

/// `device`, unless the state directory's `lost-gpus` file lists it (`faults`).
pub fn not_lost(driver: &Driver, device: &'static Device) -> NvmlResult<&'static Device> {
    if faults::is_lost(
        &driver.config.state_dir,
        device.index,
        &device.uuid_string(),
    ) {
        return Err(NvmlError::GpuIsLost);
    }
    Ok(device)
}

/// An event set: the devices registered in it for XID events, and how many lines of the
/// `xid-events` file it has read (see `xid`).
#[derive(Debug)]
struct EventSet {
    handle: usize,
    devices: Vec<usize>,
    seen: usize,
}

/// The live event sets.
static EVENT_SETS: Mutex<Vec<EventSet>> = Mutex::new(Vec::new());
/// The next `nvmlEventSet_t` value (never NULL).
static NEXT_EVENT_SET: Mutex<usize> = Mutex::new(0x1000);

/// `nvmlEventSetCreate`: a set that will deliver the events raised from now on.
pub fn create_event_set() -> NvmlResult<usize> {
    let driver = driver()?;
    let mut next = NEXT_EVENT_SET.lock();
    let handle = *next;
    *next += 1;
    EVENT_SETS.lock().push(EventSet {
        handle,
        devices: Vec::new(),
        seen: crate::xid::current_end(&driver.config.state_dir),
    });
    Ok(handle)
}

/// `nvmlDeviceRegisterEvents`: the device's XID events go to the set from now on (ECC events
/// are accepted and never raised). `NVML_ERROR_NOT_SUPPORTED` for other event types.
pub fn register_events(device_handle: usize, types: u64, set: usize) -> NvmlResult {
    let index = device(device_handle)?.index;
    if types & !crate::xid::SUPPORTED_EVENTS != 0 {
        return Err(NvmlError::NotSupported);
    }
    let mut sets = EVENT_SETS.lock();
    let set = sets
        .iter_mut()
        .find(|s| s.handle == set)
        .ok_or(NvmlError::InvalidArgument)?;
    if types & crate::xid::EVENT_XID_CRITICAL != 0 && !set.devices.contains(&index) {
        set.devices.push(index);
    }
    Ok(())
}

/// `nvmlEventSetWait_v2`: the next XID event of the set's devices as `(device, xid)`, or
/// `NVML_ERROR_TIMEOUT` after `timeout`.
pub fn wait_event(set: usize, timeout: Duration) -> NvmlResult<(usize, u64)> {
    let driver = driver()?;
    let (devices, mut seen) = {
        let sets = EVENT_SETS.lock();
        let found = sets
            .iter()
            .find(|s| s.handle == set)
            .ok_or(NvmlError::InvalidArgument)?;
        (found.devices.clone(), found.seen)
    };
    let uuids: Vec<String> = driver.devices.iter().map(Device::uuid_string).collect();
    let event = crate::xid::wait(
        &driver.config.state_dir,
        &uuids,
        &devices,
        &mut seen,
        timeout,
    );
    if let Some(found) = EVENT_SETS.lock().iter_mut().find(|s| s.handle == set) {
        found.seen = found.seen.max(seen);
    }
    event.map(|e| (e.device, e.xid)).ok_or(NvmlError::Timeout)
}

/// `nvmlEventSetFree`.
pub fn free_event_set(set: usize) -> NvmlResult {
    let mut sets = EVENT_SETS.lock();
    let before = sets.len();
    sets.retain(|s| s.handle != set);
    if sets.len() == before {
        return Err(NvmlError::InvalidArgument);
    }
    Ok(())
}
