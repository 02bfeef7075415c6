//! `cuGetProcAddress`: how the CUDA runtime (and Triton, and cudarc) reach the driver.
//!
//! The real function picks the right ABI version (`_v2`, `_v3`), the per-thread-stream
//! variant (`_ptsz`, `_ptds`) or the pre-version answer for old requests, from the caller's
//! version and flags. The shim lets it choose, then swaps the address it returned for our
//! hook of that exact function (pointer identity, checked on a real H100 with driver 580:
//! every address it returns is one of the library's exported symbols). Asked for
//! `cuGetProcAddress` itself, it returns our hook of that too, so every later lookup comes
//! back through here.

use std::ffi::c_void;

use crate::cuda::*;
use crate::exports::driver::hook_for_real;

/// `cuGetProcAddress` (CUDA 11.3 ABI) and its `_v2` (CUDA 12.0 ABI, with the symbol
/// status): the address the driver chose, swapped for our hook of it.
///
/// # Safety
/// `pfn` is the caller's out-pointer, null or writable, which `call` writes on success.
pub(crate) unsafe fn get_proc_address(
    call: impl Fn() -> CUresult,
    pfn: *mut *mut c_void,
) -> CUresult {
    let status = call();
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
