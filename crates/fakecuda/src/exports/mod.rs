//! The C ABI: every exported CUDA driver and NVML function, one module per family. Each
//! export checks its arguments, calls ordinary Rust in the modules above, and returns a plain
//! `CUresult` / `nvmlReturn_t`; panics are caught and returned as `CUDA_ERROR_UNKNOWN` /
//! `NVML_ERROR_UNKNOWN`.
//!
//! Handles (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`, `CUarray`,
//! `CUmemoryPool`, `CUlibrary`, `CUkernel`) are declared as `usize`, which every 64-bit Linux
//! ABI passes exactly like a pointer. Output pointers are `Option<&mut MaybeUninit<T>>`
//! (FFI-safe: NULL is `None`), so writing a result needs no `unsafe`.

pub mod context;
pub mod device;
pub mod launch;
pub mod memory;
pub mod nvml;
pub mod procaddr;
pub mod stream;
pub mod symbols;
pub mod vmm;

use std::ffi::{CStr, c_char};
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{CuError, CuResult, code_of};

const _: () = assert!(size_of::<usize>() == size_of::<*const ()>());

/// An output argument: `T*` in C.
pub type Out<'a, T> = Option<&'a mut MaybeUninit<T>>;

/// Writes `value` through an output argument; NULL is `CUDA_ERROR_INVALID_VALUE`.
pub fn put<T>(out: Out<'_, T>, value: T) -> CuResult {
    out.ok_or(CuError::InvalidValue)?.write(value);
    Ok(())
}

/// Writes `value` through an optional output argument (NULL means "not wanted").
pub fn put_if<T>(out: Out<'_, T>, value: T) {
    if let Some(out) = out {
        out.write(value);
    }
}

/// A `CUdeviceptr` argument as an address.
pub fn addr(ptr: u64) -> CuResult<usize> {
    usize::try_from(ptr).map_err(|_| CuError::InvalidValue)
}

/// A byte count as a `size_t`, saturating (only device capacities can exceed it).
pub fn size(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Runs an export's body, turning its result (or a panic) into a `CUresult`.
pub fn guard(body: impl FnOnce() -> CuResult) -> u32 {
    code_of(catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(CuError::Unknown)))
}

/// Whether an exported name is a per-thread default stream variant (`_ptsz`, `_ptds`), in
/// which a NULL stream means the calling thread's per-thread stream.
pub const fn is_per_thread_variant(name: &str) -> bool {
    let b = name.as_bytes();
    let n = b.len();
    n >= 5
        && b[n - 5] == b'_'
        && b[n - 4] == b'p'
        && b[n - 3] == b't'
        && ((b[n - 2] == b's' && b[n - 1] == b'z') || (b[n - 2] == b'd' && b[n - 1] == b's'))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
///
/// `ptr` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub unsafe fn c_str<'a>(ptr: *const c_char) -> CuResult<&'a str> {
    if ptr.is_null() {
        return Err(CuError::InvalidValue);
    }
    // SAFETY: non-null, and the caller guarantees NUL termination and lifetime.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| CuError::InvalidValue)
}

/// Copies `text` into a C buffer of `len` bytes, truncating and always NUL-terminating;
/// returns whether it fit whole.
///
/// # Safety
///
/// `buf` must be NULL or writable for `len` bytes.
pub unsafe fn write_c_string(buf: *mut c_char, len: usize, text: &[u8]) -> CuResult<bool> {
    if buf.is_null() || len == 0 {
        return Err(CuError::InvalidValue);
    }
    let n = text.len().min(len - 1);
    // SAFETY: n + 1 <= len bytes of buf are writable (caller); text has n readable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    Ok(n == text.len())
}

/// Declares exported driver functions. Each `fn a | b (args) { body }` exports every listed
/// name with the same arguments and body (the `_ptsz` / `_ptds` and `_v2` twins, the former
/// running the body with NULL meaning the thread's per-thread default stream); the body
/// returns `CuResult`.
macro_rules! cuda_api {
    () => {};
    (
        $(#[doc = $doc:literal])+
        fn $($name:ident)|+ ($($args:tt)*) $body:block
        $($rest:tt)*
    ) => {
        $crate::exports::cuda_api!(@each [$(#[doc = $doc])+] [$($name)+] ($($args)*) $body);
        $crate::exports::cuda_api!($($rest)*);
    };
    (@each $docs:tt [$($name:ident)+] $args:tt $body:block) => {
        $( $crate::exports::cuda_api!(@one $docs $name $args $body); )+
    };
    (@one [$($doc:tt)+] $name:ident ($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $($doc)+
        ///
        /// # Safety
        ///
        /// Called from C: every pointer argument must be valid as the CUDA driver API
        /// documents for this function.
        #[cfg_attr(not(test), unsafe(no_mangle))]
        #[allow(non_snake_case)] // the C name
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> u32 {
            const PER_THREAD: bool = $crate::exports::is_per_thread_variant(stringify!($name));
            $crate::exports::guard(move || -> $crate::error::CuResult {
                $crate::stream::with_default_stream(PER_THREAD, move || -> $crate::error::CuResult {
                    $body
                })
            })
        }
    };
}

pub(crate) use cuda_api;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_thread_variants_are_known_by_their_suffix() {
        for name in [
            "cuLaunchKernel_ptsz",
            "cuMemcpy_ptds",
            "cuStreamBeginCapture_v2_ptsz",
        ] {
            assert!(is_per_thread_variant(name), "{name}");
        }
        for name in [
            "cuLaunchKernel",
            "cuMemcpyHtoD_v2",
            "_ptz",
            "ptsz",
            "cuGraphLaunch_pts",
        ] {
            assert!(!is_per_thread_variant(name), "{name}");
        }
    }
}
