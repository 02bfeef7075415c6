//! `libgpuslice.so`: an `LD_PRELOAD` shim that gives each tenant sharing an NVIDIA GPU a
//! memory quota and a share of kernel time, enforced inside its own processes, with no
//! daemon on the hot path.
//!
//! How to read this crate, in the order a call travels:
//! - [`exports`]: every C symbol we export (driver, NVML, and a `dlsym` trampoline), and the
//!   tables that hand our hooks to programs that look the driver up by name or through
//!   `cuGetProcAddress`. [`real`] reaches the real libraries without landing on our hooks.
//! - [`hooks`]: what each hooked call does, by concern (memory, context, launch, NVML).
//! - [`policy`] and the rest of `gpuslice-core` (`crates/core`): the decisions (may this
//!   tenant take these bytes? may this launch go now?) and the tables the hooks and the
//!   watcher share, plain Rust over the ledger (`gpuslice-ledger`), no CUDA. They are
//!   re-exported here under their old names, so `crate::policy` in a hook is the core's.
//! - Compute shares: launches pass a per-GPU [`gate`] after marking their stream in the
//!   [`streams`] table; the [`watcher`] thread measures GPU time, reads every tenant's
//!   records ([`neighbours`]) and opens or closes the gates.
//! - [`cuda`] is the CUDA and NVML ABI the hooks read and write (the `gpuslice-cuda-abi`
//!   crate, which the simulated GPU speaks too).
//! - [`config`] reads the `GPUSLICE_*` settings; [`runtime`] builds the per-process state
//!   ([`shim::Shim`]) lazily on the first CUDA call and again in a forked child.
//!
//! A process that never calls CUDA pays for one thing only: our `dlsym` checking whether a
//! looked-up name is one we hook.

pub use gpuslice_core::{allocations, contexts, gate, log, neighbours, policy, streams, trace};

pub mod config;
/// The CUDA and NVML ABI (codes, handles, structs), shared with the simulated GPU.
pub use gpuslice_cuda_abi as cuda;
pub mod exports;
pub(crate) mod hooks;
pub mod real;
pub mod runtime;
pub mod shim;
pub mod watcher;
