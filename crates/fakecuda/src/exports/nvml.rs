//! NVML: initialization, the driver version, device enumeration, names, UUIDs, memory
//! information (the same numbers as `cuMemGetInfo`), the processes using a device with
//! the memory each holds, and event sets that deliver XID events (see `xid`).

use std::ffi::{c_char, c_int, c_uint};
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::Out;
use crate::device::{COMPUTE_CAPABILITY, NAME};
use crate::exports::device::DRIVER_VERSION;
use crate::ledger::Process;
use crate::nvml::{self, NvmlError, NvmlResult};
use gpuslice_cuda_abi::{
    NVML_MEMORY_V2, NVML_VALUE_NOT_AVAILABLE_U32, NvmlEventData, NvmlMemory, NvmlMemoryV2,
    NvmlProcessInfo, NvmlProcessInfoV1,
};

/// The driver version NVML reports (an R580 driver, which comes with CUDA 13.0).
const DRIVER_VERSION_STRING: &str = "580.65.06";
/// The NVML library version.
const NVML_VERSION_STRING: &str = "13.580.65.06";

/// Runs an NVML export's body, turning its result (or a panic) into an `nvmlReturn_t`.
fn guard(body: impl FnOnce() -> NvmlResult) -> u32 {
    nvml::code_of(catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(NvmlError::Unknown)))
}

fn put<T>(out: Out<'_, T>, value: T) -> NvmlResult {
    out.ok_or(NvmlError::InvalidArgument)?.write(value);
    Ok(())
}

/// Copies `text` and a NUL into `buf`, or fails with `NVML_ERROR_INSUFFICIENT_SIZE`.
///
/// # Safety
///
/// `buf` must be NULL or writable for `len` bytes.
unsafe fn put_string(buf: *mut c_char, len: c_uint, text: &str) -> NvmlResult {
    if buf.is_null() {
        return Err(NvmlError::InvalidArgument);
    }
    let len = usize::try_from(len).map_err(|_| NvmlError::InvalidArgument)?;
    if len <= text.len() {
        return Err(NvmlError::InsufficientSize);
    }
    // SAFETY: text.len() + 1 <= len bytes of buf are writable (caller).
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

/// `(total, free, used)` of a device, after reclaiming dead processes' memory.
fn memory(handle: usize) -> NvmlResult<(u64, u64, u64)> {
    let (free, total) = nvml::device(handle)?.memory_info();
    Ok((total, free, total - free))
}

/// `nvmlDeviceGetComputeRunningProcesses*`: every live process with a context on the device,
/// as `make` lays it out. `*count` is the capacity of `infos` on entry and the number of
/// processes on return. As driver 580 answers on an H100: a capacity short of the number of
/// processes fails with `NVML_ERROR_INSUFFICIENT_SIZE` after setting `*count` to the number
/// needed (a zero capacity with no processes succeeds); a NULL `infos` with enough capacity
/// sets `*count` and fails with `NVML_ERROR_INVALID_ARGUMENT` if there is any process to
/// write, and succeeds if there is none. Nothing is written to `infos` on failure.
///
/// # Safety
///
/// `infos` must be NULL or writable for `*count` elements.
unsafe fn running_processes<T>(
    device: usize,
    count: Option<&mut c_uint>,
    infos: *mut T,
    make: impl Fn(Process) -> T,
) -> NvmlResult {
    let count = count.ok_or(NvmlError::InvalidArgument)?;
    let processes = nvml::device(device)?.processes();
    let capacity = usize::try_from(*count).map_err(|_| NvmlError::InvalidArgument)?;
    *count = c_uint::try_from(processes.len()).unwrap_or(c_uint::MAX);
    if capacity < processes.len() {
        return Err(NvmlError::InsufficientSize);
    }
    if processes.is_empty() {
        return Ok(());
    }
    if infos.is_null() {
        return Err(NvmlError::InvalidArgument);
    }
    // SAFETY: infos is non-null and writable for capacity >= len elements (caller);
    // MaybeUninit needs no initialized contents.
    let out =
        unsafe { std::slice::from_raw_parts_mut(infos.cast::<MaybeUninit<T>>(), processes.len()) };
    for (slot, process) in out.iter_mut().zip(processes) {
        slot.write(make(process));
    }
    Ok(())
}

/// A process as `nvmlProcessInfo_t` (v2 / v3) describes it: no MIG instances.
fn process_info(p: Process) -> NvmlProcessInfo {
    NvmlProcessInfo {
        pid: p.pid,
        used_gpu_memory: p.used,
        gpu_instance_id: NVML_VALUE_NOT_AVAILABLE_U32,
        compute_instance_id: NVML_VALUE_NOT_AVAILABLE_U32,
    }
}

/// A process as `nvmlProcessInfo_v1_t` describes it.
fn process_info_v1(p: Process) -> NvmlProcessInfoV1 {
    NvmlProcessInfoV1 {
        pid: p.pid,
        used_gpu_memory: p.used,
    }
}

macro_rules! nvml_api {
    () => {};
    (
        $(#[doc = $doc:literal])+
        fn $($name:ident)|+ ($($args:tt)*) $body:block
        $($rest:tt)*
    ) => {
        nvml_api!(@each [$(#[doc = $doc])+] [$($name)+] ($($args)*) $body);
        nvml_api!($($rest)*);
    };
    (@each $docs:tt [$($name:ident)+] $args:tt $body:block) => {
        $( nvml_api!(@one $docs $name $args $body); )+
    };
    (@one [$($doc:tt)+] $name:ident ($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $($doc)+
        ///
        /// # Safety
        ///
        /// Called from C: every pointer argument must be valid as the NVML documentation
        /// says for this function.
        #[cfg_attr(not(test), unsafe(no_mangle))]
        #[allow(non_snake_case)] // the C name
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> u32 {
            guard(move || -> NvmlResult { $body })
        }
    };
}

nvml_api! {
    /// `nvmlInit_v2`: reads the `FAKECUDA_*` configuration if `cuInit` has not.
    fn nvmlInit_v2 | nvmlInit () {
        nvml::init()
    }

    /// `nvmlInitWithFlags`: flags are ignored.
    fn nvmlInitWithFlags(flags: c_uint) {
        let _ = flags;
        nvml::init()
    }

    /// `nvmlShutdown`.
    fn nvmlShutdown() {
        nvml::shutdown()
    }

    /// `nvmlSystemGetDriverVersion`: "580.65.06".
    fn nvmlSystemGetDriverVersion(version: *mut c_char, len: c_uint) {
        nvml::driver()?;
        // SAFETY: the caller passes a buffer of len bytes.
        unsafe { put_string(version, len, DRIVER_VERSION_STRING) }
    }

    /// `nvmlSystemGetNVMLVersion`.
    fn nvmlSystemGetNVMLVersion(version: *mut c_char, len: c_uint) {
        // SAFETY: the caller passes a buffer of len bytes.
        unsafe { put_string(version, len, NVML_VERSION_STRING) }
    }

    /// `nvmlSystemGetCudaDriverVersion`: 13000.
    fn nvmlSystemGetCudaDriverVersion | nvmlSystemGetCudaDriverVersion_v2 (version: Out<'_, c_int>) {
        put(version, DRIVER_VERSION)
    }

    /// `nvmlDeviceGetCount_v2`.
    fn nvmlDeviceGetCount_v2 | nvmlDeviceGetCount (count: Out<'_, c_uint>) {
        let n = nvml::driver()?.devices.len();
        put(count, c_uint::try_from(n).unwrap_or(c_uint::MAX))
    }

    /// `nvmlDeviceGetHandleByIndex_v2`.
    fn nvmlDeviceGetHandleByIndex_v2 | nvmlDeviceGetHandleByIndex (index: c_uint, device: Out<'_, usize>) {
        let index = usize::try_from(index).map_err(|_| NvmlError::InvalidArgument)?;
        let driver = nvml::driver()?;
        let found = driver.devices.get(index).ok_or(NvmlError::InvalidArgument)?;
        nvml::not_lost(driver, found)?;
        put(device, nvml::handle_of(index))
    }

    /// `nvmlDeviceGetHandleByUUID`: by the "GPU-..." string.
    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: Out<'_, usize>) {
        // SAFETY: the caller passes a NUL-terminated UUID string.
        let uuid = unsafe { super::c_str(uuid) }.map_err(|_| NvmlError::InvalidArgument)?;
        let driver = nvml::driver()?;
        let found = driver
            .devices
            .iter()
            .find(|d| d.uuid_string() == uuid)
            .ok_or(NvmlError::NotFound)?;
        nvml::not_lost(driver, found)?;
        put(device, nvml::handle_of(found.index))
    }

    /// `nvmlDeviceGetUUID`: `GPU-fa4ec0da-0000-4000-8000-00000000000<index>`.
    fn nvmlDeviceGetUUID(device: usize, uuid: *mut c_char, len: c_uint) {
        let text = nvml::device(device)?.uuid_string();
        // SAFETY: the caller passes a buffer of len bytes.
        unsafe { put_string(uuid, len, &text) }
    }

    /// `nvmlDeviceGetName`: "gpuslice simulated GPU".
    fn nvmlDeviceGetName(device: usize, name: *mut c_char, len: c_uint) {
        nvml::device(device)?;
        let text = NAME.to_str().map_err(|_| NvmlError::Unknown)?;
        // SAFETY: the caller passes a buffer of len bytes.
        unsafe { put_string(name, len, text) }
    }

    /// `nvmlDeviceGetIndex`.
    fn nvmlDeviceGetIndex | nvmlDeviceGetMinorNumber (device: usize, index: Out<'_, c_uint>) {
        let i = nvml::device(device)?.index;
        put(index, c_uint::try_from(i).unwrap_or(c_uint::MAX))
    }

    /// `nvmlDeviceGetCudaComputeCapability`: 9.0.
    fn nvmlDeviceGetCudaComputeCapability(device: usize, major: Out<'_, c_int>, minor: Out<'_, c_int>) {
        nvml::device(device)?;
        put(major, COMPUTE_CAPABILITY.0)?;
        put(minor, COMPUTE_CAPABILITY.1)
    }

    /// `nvmlDeviceGetMemoryInfo`: total = capacity; used = what all live processes hold.
    fn nvmlDeviceGetMemoryInfo(device: usize, info: Out<'_, NvmlMemory>) {
        let out = info.ok_or(NvmlError::InvalidArgument)?;
        let (total, free, used) = memory(device)?;
        out.write(NvmlMemory { total, free, used });
        Ok(())
    }

    /// `nvmlDeviceGetMemoryInfo_v2`: `version` must be `nvmlMemory_v2` (otherwise
    /// `NVML_ERROR_FUNCTION_NOT_FOUND`, as from driver 580); nothing is reserved.
    fn nvmlDeviceGetMemoryInfo_v2(device: usize, info: Option<&mut MaybeUninit<NvmlMemoryV2>>) {
        let out = info.ok_or(NvmlError::InvalidArgument)?;
        // SAFETY: the caller sets the version field before the call; only it is read.
        let version = unsafe { (&raw const (*out.as_ptr()).version).read() };
        if version != NVML_MEMORY_V2 {
            return Err(NvmlError::FunctionNotFound);
        }
        let (total, free, used) = memory(device)?;
        out.write(NvmlMemoryV2 { version, total, reserved: 0, free, used });
        Ok(())
    }

    /// `nvmlDeviceGetComputeRunningProcesses_v3`: the live processes with a context on the
    /// device (in any process using the same state directory), each with its pid and all
    /// the device memory it holds: context footprints, allocations and module memory.
    /// Instance ids are `0xFFFFFFFF` (no MIG). `NVML_ERROR_INSUFFICIENT_SIZE` with the
    /// number needed in `*count` if `infos` is too short (see `running_processes`).
    fn nvmlDeviceGetComputeRunningProcesses_v3 | nvmlDeviceGetComputeRunningProcesses_v2 (
        device: usize,
        count: Option<&mut c_uint>,
        infos: *mut NvmlProcessInfo,
    ) {
        // SAFETY: the caller passes NULL or an array of *count elements.
        unsafe { running_processes(device, count, infos, process_info) }
    }

    /// `nvmlDeviceGetComputeRunningProcesses`: as `_v3`, with the 16-byte v1 struct (pid
    /// and used memory only).
    fn nvmlDeviceGetComputeRunningProcesses(
        device: usize,
        count: Option<&mut c_uint>,
        infos: *mut NvmlProcessInfoV1,
    ) {
        // SAFETY: the caller passes NULL or an array of *count elements.
        unsafe { running_processes(device, count, infos, process_info_v1) }
    }

    /// `nvmlDeviceGetSupportedEventTypes`: single- and double-bit ECC errors and critical
    /// XID errors.
    fn nvmlDeviceGetSupportedEventTypes(device: usize, types: Out<'_, u64>) {
        nvml::device(device)?;
        put(types, crate::xid::SUPPORTED_EVENTS)
    }

    /// `nvmlEventSetCreate`: a set that delivers the events raised from now on.
    fn nvmlEventSetCreate(set: Out<'_, usize>) {
        let handle = nvml::create_event_set()?;
        put(set, handle)
    }

    /// `nvmlDeviceRegisterEvents`: the device's XID events go to the set.
    fn nvmlDeviceRegisterEvents(device: usize, types: u64, set: usize) {
        nvml::register_events(device, types, set)
    }

    /// `nvmlEventSetWait_v2`: the next XID event of the set's devices (instance ids
    /// `0xFFFFFFFF`, as without MIG), or `NVML_ERROR_TIMEOUT` after `timeout_ms`.
    fn nvmlEventSetWait_v2(set: usize, data: Out<'_, NvmlEventData>, timeout_ms: c_uint) {
        let out = data.ok_or(NvmlError::InvalidArgument)?;
        let (device, xid) =
            nvml::wait_event(set, std::time::Duration::from_millis(u64::from(timeout_ms)))?;
        out.write(NvmlEventData {
            device: nvml::handle_of(device),
            event_type: crate::xid::EVENT_XID_CRITICAL,
            event_data: xid,
            gpu_instance_id: NVML_VALUE_NOT_AVAILABLE_U32,
            compute_instance_id: NVML_VALUE_NOT_AVAILABLE_U32,
        });
        Ok(())
    }

    /// `nvmlEventSetFree`.
    fn nvmlEventSetFree(set: usize) {
        nvml::free_event_set(set)
    }
}

/// `nvmlErrorString`: a static description of any `nvmlReturn_t`.
#[cfg_attr(not(test), unsafe(no_mangle))]
#[allow(non_snake_case)] // the C name
pub extern "C" fn nvmlErrorString(result: u32) -> *const c_char {
    nvml::error_string(result).as_ptr()
}
