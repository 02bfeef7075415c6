//! What each hooked call does, grouped by concern. A hook translates a CUDA call into a
//! question for a policy ("may this tenant take 256 MiB on GPU-…?"), then calls the real
//! function or returns an error. Hooks hold no policy of their own.

pub mod context;
pub mod device;
pub mod launch;
pub mod memory;
pub mod nvml;
pub mod nvml_probe;
pub mod pools;
pub mod procaddr;
pub mod stream;
pub mod vmm;

/// The enforcing shim; with no settings the hook returns `$pass_through` (the real call),
/// with unusable settings it fails closed with `CUDA_ERROR_NOT_INITIALIZED`.
macro_rules! shim_or {
    ($pass_through:expr) => {
        match $crate::runtime::mode() {
            $crate::runtime::Mode::Enforcing(shim) => shim,
            $crate::runtime::Mode::PassThrough => return $pass_through,
            $crate::runtime::Mode::Failed => return $crate::cuda::CUDA_ERROR_NOT_INITIALIZED,
        }
    };
}
pub(crate) use shim_or;

/// In a forked child, before anything else runs there: what the hooks cached for the
/// parent (its sole context, the NULL-stream entries of its stream table, NVML's state)
/// goes, so that the child's new state is never read through the parent's caches.
pub(crate) fn forget_after_fork() {
    stream::forget_after_fork();
    launch::forget_after_fork();
    nvml_probe::forget_after_fork();
}
