//! The environment variables the shim reads. The shim refuses any other `GPUSLICE_*`
//! variable (a typo must not pass for a setting), and the command's `doctor` flags one
//! before it gets that far: both read this list.

/// Every variable the shim reads.
pub const SHIM_VARIABLES: &[&str] = &[
    "GPUSLICE_TENANT",
    "GPUSLICE_MEMORY_LIMIT",
    "GPUSLICE_COMPUTE_SHARE",
    "GPUSLICE_COMPUTE_LIMIT",
    "GPUSLICE_PRIORITY",
    "GPUSLICE_DIR",
    "GPUSLICE_LOG",
];
