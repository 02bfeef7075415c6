//! Every C symbol the shim exports, and the tables that map names and real addresses to them.
//!
//! One family per file (driver, NVML, `dlsym`). Each hooked function is declared once, in an
//! [`exports!`] list, which generates three things from that one line: the exported
//! function (a panic-proof boundary around the hook), a typed accessor for the real
//! function (`real::cuMemAlloc_v2()`), and the table entry that `dlsym` and
//! `cuGetProcAddress` use to hand out the hook instead of the real function.
//!
//! The export resolves the real function (a driver without it gets the family's `missing`
//! status) and hands the hook a closure that calls it with the caller's arguments: the one
//! `unsafe` forwarding call of the shim, with its SAFETY reason, is in the macro. A hook of
//! a kind with many members is named on the line with its pattern's arguments in
//! brackets, and is then one line: `=> launch::gated[stream, PER_THREAD]` gates a launch on
//! `stream`, `=> memory::released[Table::Device, dptr]` releases a handle's charge,
//! `=> memory::charged_out[dptr, bytes]` charges an allocation and reads its out-pointer.

use std::ffi::{CStr, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::log::{Level, RateLimit, log};

pub mod dlsym;
pub mod driver;
pub mod marker;
pub mod nvml;

/// A hooked symbol: the exported name and our function of that name.
#[derive(Debug)]
pub struct Export {
    /// The symbol's name, as `dlsym` is asked for it.
    pub name: &'static CStr,
    /// Our exported function.
    pub hook: *const c_void,
}

// SAFETY: `hook` is the address of a function: immutable, valid for the whole process.
unsafe impl Sync for Export {}

/// Turns `concat!(name, "\0")` into a `CStr` at compile time.
pub const fn cstr(with_nul: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(name) => name,
        Err(_) => panic!("export names are NUL-terminated and contain no NUL"),
    }
}

/// Runs a hook so that no panic crosses into C: a panic becomes `failure`.
///
/// Inlined into each export, so that a hooked call is one call frame deeper than the real
/// one, not two: with eleven arguments, five of them on the stack, each frame copies them
/// again (on the H100 a launch through the shim in pass-through mode cost 25 ns more).
#[inline(always)]
pub fn boundary<R: Copy>(failure: R, hook: impl FnOnce() -> R) -> R {
    static PANICS: RateLimit = RateLimit::new();
    match catch_unwind(AssertUnwindSafe(hook)) {
        Ok(result) => result,
        Err(_) => {
            if PANICS.admit().is_some() {
                log!(
                    Level::Error,
                    "internal error in a hooked call; returning an error to the caller"
                );
            }
            failure
        }
    }
}

/// Our hook for an exported symbol name, if we hook it.
pub fn hook_for_name(name: &CStr) -> Option<&'static Export> {
    let bytes = name.to_bytes();
    let table: &'static [Export] = if bytes.starts_with(b"cu") {
        &driver::EXPORTS
    } else if bytes.starts_with(b"nvml") {
        &nvml::EXPORTS
    } else {
        return None;
    };
    table.iter().find(|export| export.name == name)
}

/// Declares hooked functions. See the module documentation.
///
/// ```ignore
/// exports! {
///     library: crate::real::CUDA, failure: CUDA_ERROR_UNKNOWN, missing: CUDA_ERROR_NOT_FOUND;
///     fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) => crate::hooks::memory::alloc;
/// }
/// ```
macro_rules! exports {
    (
        library: $library:path, failure: $failure:expr, missing: $missing:expr;
        $( fn $name:ident ( $( $arg:ident : $ty:ty ),* $(,)? ) => $hook:path $( [ $( $pass:expr ),* ] )?; )*
    ) => {
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Clone, Copy, Debug)]
        enum Sym { $( $name, )* }

        const COUNT: usize = [$( Sym::$name ),*].len();

        /// Real addresses, filled on first use.
        static REAL: [std::sync::atomic::AtomicPtr<std::ffi::c_void>; COUNT] =
            [const { std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()) }; COUNT];

        /// Name and hook of every function of this family.
        pub static EXPORTS: [$crate::exports::Export; COUNT] = [
            $( $crate::exports::Export {
                name: $crate::exports::cstr(concat!(stringify!($name), "\0")),
                hook: $name as unsafe extern "C" fn($($ty),*) -> u32 as *const std::ffi::c_void,
            }, )*
        ];

        fn resolve(sym: Sym) -> *mut std::ffi::c_void {
            let slot = &REAL[sym as usize];
            let found = slot.load(std::sync::atomic::Ordering::Acquire);
            if !found.is_null() {
                return found;
            }
            let found = $library.symbol(EXPORTS[sym as usize].name);
            slot.store(found, std::sync::atomic::Ordering::Release);
            found
        }

        /// Our hook for a real function's address (pointer identity), for
        /// `cuGetProcAddress`, which may hand out any ABI version of a function.
        #[allow(dead_code)]
        pub fn hook_for_real(real: *mut std::ffi::c_void) -> Option<*mut std::ffi::c_void> {
            if real.is_null() {
                return None;
            }
            [$( Sym::$name ),*]
                .into_iter()
                .find(|sym| resolve(*sym) == real)
                .map(|sym| EXPORTS[sym as usize].hook.cast_mut())
        }

        /// Typed accessors for the real functions: `None` when the real library lacks one.
        #[allow(non_snake_case, dead_code)]
        pub mod real {
            #[allow(unused_imports)]
            use super::*;
            $(
                pub fn $name() -> Option<unsafe extern "C" fn($($ty),*) -> u32> {
                    let found = super::resolve(super::Sym::$name);
                    if found.is_null() {
                        return None;
                    }
                    // SAFETY: `found` is what the real library's dlsym gave for this exact
                    // name, whose C prototype is the signature declared in the list.
                    Some(unsafe {
                        std::mem::transmute::<
                            *mut std::ffi::c_void,
                            unsafe extern "C" fn($($ty),*) -> u32,
                        >(found)
                    })
                }
            )*
        }

        $(
            #[cfg_attr(not(test), unsafe(no_mangle))]
            #[allow(non_snake_case)]
            #[doc = concat!("Exported `", stringify!($name), "`: see the hook it calls.")]
            #[doc = ""]
            #[doc = "# Safety"]
            #[doc = concat!("The contract of the C function `", stringify!($name), "`.")]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> u32 {
                $crate::exports::boundary($failure, || {
                    let Some(real) = real::$name() else {
                        return $missing;
                    };
                    // SAFETY: the real function of this name, called with the caller's
                    // arguments unchanged, as the C API received them: the caller's contract
                    // is the real function's. Every hook forwards through this closure, so
                    // this is the one place the shim calls a hooked function's real self.
                    let forward = || unsafe { real($($arg),*) };
                    // SAFETY: the hook upholds the same contract as the real function
                    // (a hook of a pattern is a safe function: then there is nothing to
                    // uphold).
                    #[allow(unused_unsafe)]
                    unsafe {
                        $crate::exports::hook_call!($hook, forward, ($($arg),*) $(, ($($pass),*))?)
                    }
                })
            }
        )*
    };
}
pub(crate) use exports;

/// The call an export makes to its hook: the forwarding closure, then the C arguments as
/// they came, or (a hook of a pattern) only what the export's line passes in brackets.
macro_rules! hook_call {
    ($hook:path, $forward:ident, ($($arg:ident),*)) => {
        $hook($forward, $($arg),*)
    };
    ($hook:path, $forward:ident, ($($arg:ident),*), ($($pass:expr),*)) => {
        $hook($forward, $($pass),*)
    };
}
pub(crate) use hook_call;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooked_names_are_found_and_others_are_not() {
        assert!(hook_for_name(c"cuMemAlloc_v2").is_some());
        assert!(hook_for_name(c"cuGetProcAddress_v2").is_some());
        assert!(hook_for_name(c"nvmlDeviceGetMemoryInfo_v2").is_some());
        assert!(hook_for_name(c"cuMemcpyHtoD_v2").is_none());
        assert!(hook_for_name(c"cublasCreate_v2").is_none());
        assert!(hook_for_name(c"malloc").is_none());
    }

    #[test]
    fn export_names_are_unique() {
        let mut names: Vec<_> = driver::EXPORTS
            .iter()
            .chain(nvml::EXPORTS.iter())
            .map(|e| e.name)
            .collect();
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), before);
    }

    #[test]
    fn panics_become_the_failure_code() {
        assert_eq!(boundary(7u32, || panic!("boom")), 7);
        assert_eq!(boundary(7u32, || 0), 0);
    }
}
