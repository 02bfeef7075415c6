//! The environment variables the shim reads. The shim refuses any other `GPUSLICE_*`
//! variable (a typo must not pass for a setting), and the command's `doctor` flags one
//! before it gets that far: both read this list.

/// The ledger directory where `GPUSLICE_DIR` is not set.
pub const DEFAULT_DIR: &str = "/run/gpuslice";

/// Where a container's tenant and ledger are pinned: a file mounted read-only there by the
/// CDI specs gpuslice writes, `GPUSLICE_TENANT=<name>` and `GPUSLICE_DIR=<path>` lines.
/// Where it exists the shim takes the tenant and the ledger from it, and the environment
/// (which a process can change) may only repeat them.
pub const PINNED_TENANT_FILE: &str = "/etc/gpuslice/tenant";

/// Every variable the shim reads.
pub const SHIM_VARIABLES: &[&str] = &[
    "GPUSLICE_TENANT",
    "GPUSLICE_MEMORY_LIMIT",
    "GPUSLICE_COMPUTE_SHARE",
    "GPUSLICE_COMPUTE_LIMIT",
    "GPUSLICE_PRIORITY",
    "GPUSLICE_DIR",
    "GPUSLICE_LOG",
    "GPUSLICE_TRACE",
];
