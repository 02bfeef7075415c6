//! The marker that says "this library is the gpuslice shim, for this ledger layout".
//!
//! `gpuslice run` (and `doctor`, `cdi generate`, the device plugin) read it from the file's
//! dynamic symbol table before they trust a path given as the shim: a wrong file preloaded
//! in its place would be ignored by the loader or do nothing, and the command would run with
//! no limit at all. A shim built for another ledger layout would refuse the ledger (or worse,
//! misread it), so its layout version must be the one the command writes.

/// The ledger layout version this shim reads and writes (`GPUSLICE_LAYOUT_VERSION` in
/// `include/gpuslice.h`): a `uint32_t` in the library's read-only data, exported as
/// `gpuslice_ledger_layout_version`.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static gpuslice_ledger_layout_version: u32 = gpuslice_ledger::LAYOUT_VERSION;
