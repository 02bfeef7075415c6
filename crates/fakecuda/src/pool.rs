//! Memory pools (`CUmemoryPool`): each device's default pool and created ones. Pools only
//! label allocations: memory freed into a pool goes straight back to the device, as if every
//! pool had a release threshold of 0.

use std::sync::Arc;

use crate::error::{CuError, CuResult};
use crate::handles::Table;

/// A memory pool of one device.
#[derive(Debug)]
pub struct Pool {
    /// The device ordinal.
    pub device: usize,
    /// Whether this is the device's default pool (which cannot be destroyed).
    pub is_default: bool,
}

static POOLS: Table<Pool> = Table::new();

/// Creates device `device`'s default pool; returns its handle.
pub fn create_default(device: usize) -> usize {
    POOLS.insert(Arc::new(Pool {
        device,
        is_default: true,
    }))
}

/// Creates a pool on device `device`; returns its handle.
pub fn create(device: usize) -> usize {
    POOLS.insert(Arc::new(Pool {
        device,
        is_default: false,
    }))
}

/// The pool behind `handle`.
pub fn get(handle: usize) -> CuResult<Arc<Pool>> {
    POOLS.get(handle).ok_or(CuError::InvalidHandle)
}

/// Destroys a created pool. Allocations made from it stay valid until freed.
pub fn destroy(handle: usize) -> CuResult {
    match get(handle)? {
        pool if pool.is_default => Err(CuError::InvalidValue),
        _ => POOLS.remove(handle).map(drop).ok_or(CuError::InvalidHandle),
    }
}
