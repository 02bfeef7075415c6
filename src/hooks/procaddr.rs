//! `cuGetProcAddress`: how the CUDA runtime (and Triton, and cudarc) reach the driver.
//!
//! The real function picks the right ABI version (`_v2`, `_v3`), the per-thread-stream
//! variant (`_ptsz`, `_ptds`) or the pre-version answer for old requests, from the caller's
//! version and flags. The shim lets it choose, then swaps the address it returned for our
//! hook of that exact function (pointer identity, checked on a real H100 with driver 580:
//! every address it returns is one of the library's exported symbols). Asked for
//! `cuGetProcAddress` itself, it returns our hook of that too, so every later lookup comes
//! back through here.

use std::ffi::{c_char, c_void};

use crate::cuda::*;
use crate::exports::driver::{hook_for_real, real};
use crate::hooks::real_or_missing;

/// `cuGetProcAddress` (CUDA 11.3 ABI).
pub(crate) unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    let real = real_or_missing!(real::cuGetProcAddress);
    // SAFETY: the caller's arguments, unchanged.
    let status = unsafe { real(symbol, pfn, version, flags) };
    // SAFETY: `pfn` is only read after the driver wrote it successfully.
    unsafe { substitute(status, pfn) }
}

/// `cuGetProcAddress_v2` (CUDA 12.0 ABI, with the symbol status).
pub(crate) unsafe fn get_proc_address_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status_out: *mut i32,
) -> CUresult {
    let real = real_or_missing!(real::cuGetProcAddress_v2);
    // SAFETY: the caller's arguments, unchanged.
    let status = unsafe { real(symbol, pfn, version, flags, status_out) };
    // SAFETY: as in `get_proc_address`.
    unsafe { substitute(status, pfn) }
}

unsafe fn substitute(status: CUresult, pfn: *mut *mut c_void) -> CUresult {
    if status == CUDA_SUCCESS && !pfn.is_null() {
        // SAFETY: the driver wrote a function address to `*pfn` on success.
        let found = unsafe { *pfn };
        if let Some(hook) = hook_for_real(found) {
            // SAFETY: as above; same place, a function of the same signature.
            unsafe { *pfn = hook };
        }
    }
    status
}
