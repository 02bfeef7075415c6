//! Our `dlsym`: hands out our hooks to programs that look the driver up by name.
//!
//! It is a naked trampoline, not a forwarding function: when it does not substitute a hook
//! it *jumps* to glibc's `dlsym` with the caller's return address still on the stack. glibc
//! decides what `RTLD_NEXT` means from that return address, so another interposer's
//! `dlsym(RTLD_NEXT, ...)` keeps resolving relative to itself. A forwarding function would
//! make every such lookup resolve relative to the shim (a peer project crashed under
//! `import torch` for exactly this reason).

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use crate::exports::{boundary, hook_for_name};
use crate::real::{ensure_real_dlsym, real_dlsym};

#[cfg(not(target_arch = "x86_64"))]
compile_error!("gpuslice's dlsym trampoline is written for x86-64 only");

/// `dlsym`, interposed. Calls [`lookup`]; a non-null answer is returned, a null one means
/// "not ours": tail-jump to glibc's `dlsym` with the original arguments.
///
/// # Safety
/// Same contract as glibc's `dlsym`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        // Keep the two arguments; three pushes keep the stack 16-byte aligned at the call.
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {lookup}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jz 2f",
        "ret",
        "2:",
        // `lookup` has made sure REAL_DLSYM holds a callable function.
        "jmp qword ptr [rip + {real}]",
        lookup = sym lookup,
        real = sym crate::real::REAL_DLSYM,
    )
}

/// Decides whether a `dlsym` call gets one of our hooks. Null means "let glibc answer". It
/// allocates nothing and locks nothing: it runs for every `dlsym` in every process the
/// shim is preloaded into, CUDA or not.
extern "C" fn lookup(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    boundary(ptr::null_mut(), || {
        ensure_real_dlsym();
        // RTLD_NEXT means "the definition after the caller's", whose answer only glibc
        // can give from the caller's return address; another interposer asks this way.
        if symbol.is_null() || handle == libc::RTLD_NEXT {
            return ptr::null_mut();
        }
        // SAFETY: `dlsym`'s contract: `symbol` is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(symbol) };
        let Some(export) = hook_for_name(name) else {
            return ptr::null_mut();
        };
        // Hand out the hook only where the real lookup would find the function, so a
        // program probing for a newer entry point sees the driver's true answer.
        // SAFETY: the caller's handle, valid by `dlsym`'s contract (RTLD_NEXT is excluded).
        if unsafe { real_dlsym(handle, name) }.is_null() {
            return ptr::null_mut();
        }
        export.hook.cast_mut()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_cuda_names_pass_through() {
        assert!(lookup(libc::RTLD_DEFAULT, c"getpid".as_ptr()).is_null());
        assert!(lookup(libc::RTLD_DEFAULT, ptr::null()).is_null());
    }

    #[test]
    fn rtld_next_is_left_to_glibc() {
        assert!(lookup(libc::RTLD_NEXT, c"cuMemAlloc_v2".as_ptr()).is_null());
    }

    #[test]
    fn trampoline_passes_through_to_glibc() {
        // SAFETY: RTLD_DEFAULT and a literal name are valid dlsym arguments.
        let getpid = unsafe { dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) };
        assert_eq!(getpid, libc::getpid as *mut c_void);
    }
}
