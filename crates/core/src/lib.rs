//! What the gpuslice shim decides and keeps, with no CUDA in it. The shim (`libgpuslice.so`,
//! the crate at the repository's root) is the C edge: its hooks turn a CUDA call into a
//! question for this crate (may this tenant take these bytes? may this launch go now?) and
//! its watcher feeds this crate what it polled from the driver. Everything here tests
//! without a process, a driver or a GPU.
//!
//! - [`policy`]: memory quotas, the compute controller (credit, turns, priority, GPU time)
//!   and the charging formulas, over the ledger (`gpuslice-ledger`).
//! - [`gate`]: the per-GPU gate a launch passes, opened and closed by the watcher.
//! - [`streams`]: the table of streams the launch path marks and the watcher polls.
//! - [`allocations`]: what each allocation was charged and in which context, to release it
//!   exactly once, at its free or with its context.
//! - [`contexts`]: the process's contexts and their charges, made and ended without a lock
//!   held across the driver's call.
//! - [`neighbours`]: every tenant's records on the node, read each tick.
//! - [`trace`]: the watcher's decisions written down, and replayed in tests.
//! - [`log`]: the shim's one-line diagnostics on stderr.
//!
//! The only `unsafe` here is the futex the gate waits on and the lock-free table of memory
//! accounts (`policy::memory`), each with its `// SAFETY:` reason.

pub mod allocations;
pub mod contexts;
pub mod gate;
pub mod log;
pub mod neighbours;
pub mod policy;
pub mod streams;
pub mod trace;
