//! Reaching the real driver and NVML without landing on our own hooks.
//!
//! Everything here runs on paths that may be entered re-entrantly (a library constructor
//! calling `dlsym` while we `dlopen` it), so state lives in atomics: no `Once`, no locks.
//! Two threads racing to fill a slot both compute the same value; the loser's store is
//! harmless.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The signature of `dlsym`.
pub type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// glibc's own `dlsym`, once found. Read by the `dlsym` trampoline's tail jump, so it must
/// never be null once the trampoline's lookup has returned: see [`ensure_real_dlsym`].
pub static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Stands in for `dlsym` if glibc's could not be found, so the trampoline never jumps to
/// null. Finding nothing is what a caller of `dlsym` is prepared for.
unsafe extern "C" fn dlsym_unavailable(_: *mut c_void, _: *const c_char) -> *mut c_void {
    ptr::null_mut()
}

/// Makes sure [`REAL_DLSYM`] holds a callable function and returns it.
pub fn ensure_real_dlsym() -> DlsymFn {
    let mut found = REAL_DLSYM.load(Ordering::Acquire);
    if found.is_null() {
        found = find_glibc_dlsym();
        REAL_DLSYM.store(found, Ordering::Release);
    }
    // SAFETY: `found` is either glibc's `dlsym` (looked up under that name and version) or
    // `dlsym_unavailable`, both with `DlsymFn`'s signature.
    unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(found) }
}

fn find_glibc_dlsym() -> *mut c_void {
    // Versioned lookups skip our own `dlsym`: GLIBC_2.34 is current glibc, 2.2.5 and 2.17
    // are the base versions on x86-64 and aarch64.
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: both strings are NUL-terminated literals; RTLD_NEXT asks for the next
        // definition after this library, which is glibc's.
        let found = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !found.is_null() {
            return found;
        }
    }
    dlsym_unavailable as *mut c_void
}

/// Looks `name` up with glibc's `dlsym`, never ours.
///
/// # Safety
/// `handle` is a handle `dlopen` returned and that is still open, or a pseudo-handle
/// (`RTLD_DEFAULT`, `RTLD_NEXT`).
pub unsafe fn real_dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    let dlsym = ensure_real_dlsym();
    // SAFETY: `dlsym` is glibc's (or the null-returning stand-in); `name` is NUL-terminated
    // and `handle` is valid per this function's contract.
    unsafe { dlsym(handle, name.as_ptr()) }
}

/// A shared library the shim forwards to, opened on first use.
#[derive(Debug)]
pub struct RealLibrary {
    soname: &'static CStr,
    handle: AtomicPtr<c_void>,
}

/// The CUDA driver.
pub static CUDA: RealLibrary = RealLibrary::new(c"libcuda.so.1");
/// NVML.
pub static NVML: RealLibrary = RealLibrary::new(c"libnvidia-ml.so.1");

impl RealLibrary {
    const fn new(soname: &'static CStr) -> RealLibrary {
        RealLibrary {
            soname,
            handle: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The library's handle, or null if it cannot be opened (no driver on this machine).
    pub fn handle(&self) -> *mut c_void {
        let handle = self.handle.load(Ordering::Acquire);
        if !handle.is_null() {
            return handle;
        }
        let name = self.soname.to_str().unwrap_or_default();
        // SAFETY: opening the driver runs its constructors, which is what the program that
        // called into CUDA expects to happen anyway.
        let opened = unsafe { libloading::os::unix::Library::open(Some(name), libc::RTLD_NOW) };
        match opened {
            Ok(library) => {
                let raw = library.into_raw();
                self.handle.store(raw, Ordering::Release);
                raw
            }
            Err(_) => ptr::null_mut(),
        }
    }

    /// The library's own definition of `name`, or null.
    pub fn symbol(&self, name: &CStr) -> *mut c_void {
        let handle = self.handle();
        if handle.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `handle` came from dlopen, and libraries the shim opens are never closed.
        unsafe { real_dlsym(handle, name) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_dlsym_is_found_by_version() {
        let dlsym = ensure_real_dlsym();
        assert_ne!(dlsym as usize, dlsym_unavailable as DlsymFn as usize);
        // SAFETY: RTLD_DEFAULT and a literal name are valid arguments.
        let getpid = unsafe { dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) };
        assert!(!getpid.is_null());
    }

    #[test]
    fn missing_library_gives_null_not_a_crash() {
        let missing = RealLibrary::new(c"libgpuslice-does-not-exist.so.1");
        assert!(missing.handle().is_null());
        assert!(missing.symbol(c"cuInit").is_null());
    }
}

/// Declares real functions the shim calls but does not hook (it must not export them):
/// each becomes a typed accessor that finds the function on first use.
macro_rules! imports {
    (library: $library:path; $( fn $name:ident ( $( $ty:ty ),* $(,)? ); )*) => {
        $(
            #[allow(non_snake_case)]
            #[doc = concat!("The real `", stringify!($name), "`, if the library has it.")]
            pub fn $name() -> Option<unsafe extern "C" fn($($ty),*) -> u32> {
                static FOUND: std::sync::atomic::AtomicPtr<std::ffi::c_void> =
                    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
                let mut found = FOUND.load(std::sync::atomic::Ordering::Acquire);
                if found.is_null() {
                    found = $library.symbol($crate::exports::cstr(concat!(stringify!($name), "\0")));
                    FOUND.store(found, std::sync::atomic::Ordering::Release);
                }
                if found.is_null() {
                    return None;
                }
                // SAFETY: the real library's definition of this exact name, whose C
                // prototype is the signature declared here.
                Some(unsafe {
                    std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn($($ty),*) -> u32>(found)
                })
            }
        )*
    };
}

/// Driver functions the shim calls without hooking them.
pub mod cuda {
    use crate::cuda::{CUcontext, CUdevice, CUdeviceptr, CUhostFn, CUmemoryPool, CUstream, CUuuid};
    use std::ffi::c_void;

    imports! {
        library: crate::real::CUDA;
        fn cuCtxGetDevice(*mut CUdevice);
        fn cuCtxGetCurrent(*mut CUcontext);
        fn cuEventCreate(*mut *mut c_void, u32);
        fn cuEventRecord(*mut c_void, CUstream);
        fn cuEventRecord_ptsz(*mut c_void, CUstream);
        fn cuEventElapsedTime_v2(*mut f32, *mut c_void, *mut c_void);
        fn cuEventElapsedTime(*mut f32, *mut c_void, *mut c_void);
        fn cuEventQuery(*mut c_void);
        fn cuEventDestroy_v2(*mut c_void);
        fn cuStreamQuery(CUstream);
        fn cuDeviceGetUuid_v2(*mut CUuuid, CUdevice);
        fn cuDeviceGetUuid(*mut CUuuid, CUdevice);
        fn cuStreamGetDevice(CUstream, *mut CUdevice);
        fn cuStreamIsCapturing(CUstream, *mut u32);
        fn cuStreamIsCapturing_ptsz(CUstream, *mut u32);
        fn cuLaunchHostFunc(CUstream, CUhostFn, *mut c_void);
        fn cuLaunchHostFunc_ptsz(CUstream, CUhostFn, *mut c_void);
        fn cuPointerGetAttribute(*mut c_void, u32, CUdeviceptr);
        fn cuMemPoolGetAttribute(CUmemoryPool, u32, *mut c_void);
    }
}

/// NVML functions the shim calls without hooking them.
pub mod nvml {
    use crate::cuda::{NvmlDevice, NvmlProcessInfo};
    use std::ffi::c_char;

    imports! {
        library: crate::real::NVML;
        fn nvmlInit_v2();
        fn nvmlDeviceGetHandleByUUID(*const c_char, *mut NvmlDevice);
        fn nvmlDeviceGetUUID(NvmlDevice, *mut c_char, u32);
        fn nvmlDeviceGetComputeRunningProcesses_v3(NvmlDevice, *mut u32, *mut NvmlProcessInfo);
    }
}
