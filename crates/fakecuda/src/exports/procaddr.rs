//! `cuGetProcAddress` (v1 ABI) and `cuGetProcAddress_v2`: the address of the exported
//! function itself, exactly what `dlsym` on libcuda.so.1 returns for the versioned name.

use std::ffi::{c_char, c_int, c_void};

use super::{Out, c_str, cuda_api, put_if, symbols};
use crate::error::{CuError, CuResult};
use crate::procaddr::{self, LEGACY_STREAM, Lookup, PER_THREAD_DEFAULT_STREAM};

/// `CU_GET_PROC_ADDRESS_SUCCESS`, `_SYMBOL_NOT_FOUND`, `_VERSION_NOT_SUFFICIENT`.
const STATUS_SUCCESS: u32 = 0;
const STATUS_SYMBOL_NOT_FOUND: u32 = 1;
const STATUS_VERSION_NOT_SUFFICIENT: u32 = 2;

/// Looks `symbol` up; writes the function (or NULL) and returns the query status.
///
/// # Safety
///
/// `symbol` must be NULL or a NUL-terminated string.
unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: Out<'_, *const c_void>,
    version: c_int,
    flags: u64,
) -> CuResult<u32> {
    let pfn = pfn.ok_or(CuError::InvalidValue)?;
    pfn.write(std::ptr::null());
    // SAFETY: forwarded from the caller.
    let symbol = unsafe { c_str(symbol) }?;
    if flags & !(LEGACY_STREAM | PER_THREAD_DEFAULT_STREAM) != 0 {
        return Err(CuError::InvalidValue);
    }
    let per_thread = flags & PER_THREAD_DEFAULT_STREAM != 0;
    match procaddr::select(symbol, version, per_thread) {
        Lookup::Found(name) => {
            let address = symbols::address_of(name).ok_or(CuError::Unknown)?;
            pfn.write(address);
            Ok(STATUS_SUCCESS)
        }
        Lookup::VersionNotSufficient => Ok(STATUS_VERSION_NOT_SUFFICIENT),
        Lookup::NotFound => Ok(STATUS_SYMBOL_NOT_FOUND),
    }
}

cuda_api! {
    /// `cuGetProcAddress` (the CUDA 11.3 ABI): `CUDA_ERROR_NOT_FOUND` for unknown symbols and
    /// versions too old for them.
    fn cuGetProcAddress(symbol: *const c_char, pfn: Out<'_, *const c_void>, version: c_int, flags: u64) {
        // SAFETY: the caller passes a NUL-terminated symbol name.
        match unsafe { get_proc_address(symbol, pfn, version, flags) }? {
            STATUS_SUCCESS => Ok(()),
            _ => Err(CuError::NotFound),
        }
    }

    /// `cuGetProcAddress_v2` (CUDA 12): as `cuGetProcAddress`, but a symbol that is unknown
    /// or too new is not an error: like driver 580, it returns `CUDA_SUCCESS` with a NULL
    /// function and says why in `status` (which may be NULL).
    fn cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: Out<'_, *const c_void>,
        version: c_int,
        flags: u64,
        status: Out<'_, u32>,
    ) {
        // SAFETY: the caller passes a NUL-terminated symbol name.
        let found = unsafe { get_proc_address(symbol, pfn, version, flags) }?;
        put_if(status, found);
        Ok(())
    }
}
