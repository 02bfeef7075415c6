//! Policies: what a tenant may do, decided from its quota and the ledger. No CUDA here.

pub mod arrivals;
pub mod compute;
pub mod controller;
pub mod driver_memory;
pub mod footprint;
pub mod gpu_time;
pub mod launch_time;
pub mod memory;
pub mod pools;
pub mod priority;
pub mod standing;
pub mod turns;
pub mod vmm;
