//! Memory pools (`CUmemoryPool`): each device's default pool and created ones, keeping
//! memory as a real driver's pools do.
//!
//! A pool holds memory *reserved* on its device: charged to the process like any
//! allocation, so that NVML's per-process figure, `cuMemGetInfo` and every other process see
//! it. An allocation from the pool takes idle reserved memory when there is enough, and
//! otherwise grows the pool (by the request rounded up to [`GRANULARITY`]). A block goes
//! back to the pool, not to the device, when it is freed: at `cuMemFree`, or when a stream
//! reaches `cuMemFreeAsync` (a free still queued leaves the block in use). Idle memory goes
//! back to the device only when the program synchronizes (`cuStreamSynchronize`,
//! `cuEventSynchronize`, `cuCtxSynchronize`), down to the pool's release threshold
//! (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, default 0), or at `cuMemPoolTrimTo`.
//!
//! The pool counts bytes, not blocks: idle memory serves any request no larger than it (a
//! real pool may be too fragmented to), and a pool that must grow grows by the whole
//! request even when some memory is idle (as a real pool does when its idle blocks are too
//! small).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::{Charge, Device};
use crate::error::{CuError, CuResult};
use crate::handles::Table;

/// The smallest step by which a pool grows: 2 MiB, the large-page size pools reserve in.
pub const GRANULARITY: u64 = 2 << 20;

/// `CUmemPool_attribute` values.
pub mod attribute {
    /// `CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES` (int).
    pub const REUSE_FOLLOW_EVENT_DEPENDENCIES: u32 = 1;
    /// `CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC` (int).
    pub const REUSE_ALLOW_OPPORTUNISTIC: u32 = 2;
    /// `CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES` (int).
    pub const REUSE_ALLOW_INTERNAL_DEPENDENCIES: u32 = 3;
    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD` (cuuint64_t).
    pub const RELEASE_THRESHOLD: u32 = 4;
    /// `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT` (cuuint64_t, read-only).
    pub const RESERVED_MEM_CURRENT: u32 = 5;
    /// `CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH` (cuuint64_t, may be reset to 0).
    pub const RESERVED_MEM_HIGH: u32 = 6;
    /// `CU_MEMPOOL_ATTR_USED_MEM_CURRENT` (cuuint64_t, read-only).
    pub const USED_MEM_CURRENT: u32 = 7;
    /// `CU_MEMPOOL_ATTR_USED_MEM_HIGH` (cuuint64_t, may be reset to 0).
    pub const USED_MEM_HIGH: u32 = 8;
}

/// A pool's numbers, without the device memory behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Books {
    /// Bytes reserved on the device.
    pub reserved: u64,
    /// Bytes of it in allocations not yet given back to the pool.
    pub used: u64,
    /// The most ever reserved since the watermark was last reset.
    pub reserved_high: u64,
    /// The most ever used since the watermark was last reset.
    pub used_high: u64,
    /// Idle memory a synchronization keeps reserved.
    pub release_threshold: u64,
    /// The three reuse policies, `CU_MEMPOOL_ATTR_REUSE_*` (recorded; every reuse the
    /// simulator does is of completed frees, which all three allow).
    pub reuse: [i32; 3],
}

impl Default for Books {
    fn default() -> Self {
        Books {
            reserved: 0,
            used: 0,
            reserved_high: 0,
            used_high: 0,
            release_threshold: 0,
            reuse: [1; 3],
        }
    }
}

impl Books {
    /// Reserved memory no allocation holds.
    pub fn idle(&self) -> u64 {
        self.reserved.saturating_sub(self.used)
    }

    /// How much the pool must grow to serve `bytes`: nothing if idle memory does.
    pub fn growth_for(&self, bytes: u64) -> u64 {
        if self.idle() >= bytes {
            0
        } else {
            bytes.div_ceil(GRANULARITY).saturating_mul(GRANULARITY)
        }
    }

    /// An allocation of `bytes` was served, after the pool grew by `grown`.
    pub fn allocated(&mut self, bytes: u64, grown: u64) {
        self.reserved += grown;
        self.used += bytes;
        self.reserved_high = self.reserved_high.max(self.reserved);
        self.used_high = self.used_high.max(self.used);
    }

    /// A block of `bytes` came back to the pool.
    pub fn returned(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// How much idle memory to release so that the pool keeps at most `keep` reserved (or
    /// what its allocations use, if more): what `cuMemPoolTrimTo(pool, keep)` and a
    /// synchronization (with `keep` the release threshold) give back.
    pub fn releasable(&self, keep: u64) -> u64 {
        self.reserved.saturating_sub(self.used.max(keep))
    }

    /// `bytes` of idle memory went back to the device.
    pub fn released(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }
}

/// A memory pool of one device.
#[derive(Debug)]
pub struct Pool {
    /// The device ordinal.
    pub device: usize,
    /// Whether this is the device's default pool (which cannot be destroyed).
    pub is_default: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    books: Books,
    /// The device memory behind `books.reserved` (none before the pool first grows).
    memory: Option<Charge>,
    /// Destroyed with allocations outstanding: whatever comes back goes to the device.
    destroyed: bool,
}

impl State {
    fn release(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(memory) = &mut self.memory {
            memory.shrink(bytes);
        }
        self.books.released(bytes);
    }
}

/// Memory of a pool that an allocation holds; back to the pool when dropped.
#[derive(Debug)]
pub struct Block {
    pool: Arc<Pool>,
    bytes: u64,
}

impl Drop for Block {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock();
        state.books.returned(self.bytes);
        if state.destroyed {
            let idle = state.books.releasable(0);
            state.release(idle);
        }
    }
}

impl Pool {
    fn new(device: usize, is_default: bool) -> Pool {
        Pool {
            device,
            is_default,
            state: Mutex::new(State::default()),
        }
    }

    /// Serves `bytes` from the pool, growing it on `device` (its device) if idle memory
    /// does not suffice: `CUDA_ERROR_OUT_OF_MEMORY` if the device has no room.
    pub fn allocate(self: &Arc<Self>, device: &'static Device, bytes: u64) -> CuResult<Block> {
        let mut state = self.state.lock();
        let growth = state.books.growth_for(bytes);
        if growth > 0 {
            match &mut state.memory {
                Some(memory) => memory.grow(growth)?,
                None => state.memory = Some(device.reserve(growth)?),
            }
        }
        state.books.allocated(bytes, growth);
        Ok(Block {
            pool: Arc::clone(self),
            bytes,
        })
    }

    /// Gives idle memory back to the device until at most `keep` bytes stay reserved.
    pub fn trim_to(&self, keep: u64) {
        let mut state = self.state.lock();
        let releasable = state.books.releasable(keep);
        state.release(releasable);
    }

    /// What a synchronization does: gives back idle memory above the release threshold.
    pub fn release_above_threshold(&self) {
        let mut state = self.state.lock();
        let releasable = state.books.releasable(state.books.release_threshold);
        state.release(releasable);
    }

    /// The pool's numbers now.
    pub fn books(&self) -> Books {
        self.state.lock().books
    }

    /// `cuMemPoolGetAttribute`.
    pub fn attribute(&self, attribute: u32) -> CuResult<AttributeValue> {
        let books = self.books();
        Ok(match attribute {
            attribute::REUSE_FOLLOW_EVENT_DEPENDENCIES
                ..=attribute::REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
                AttributeValue::Int(books.reuse[reuse_index(attribute)])
            }
            attribute::RELEASE_THRESHOLD => AttributeValue::Bytes(books.release_threshold),
            attribute::RESERVED_MEM_CURRENT => AttributeValue::Bytes(books.reserved),
            attribute::RESERVED_MEM_HIGH => AttributeValue::Bytes(books.reserved_high),
            attribute::USED_MEM_CURRENT => AttributeValue::Bytes(books.used),
            attribute::USED_MEM_HIGH => AttributeValue::Bytes(books.used_high),
            _ => return Err(CuError::InvalidValue),
        })
    }

    /// `cuMemPoolSetAttribute`: the reuse policies, the release threshold, and a reset of
    /// either high watermark (to the current value; only 0 may be written).
    pub fn set_attribute(&self, attribute: u32, value: AttributeValue) -> CuResult {
        let mut state = self.state.lock();
        let books = &mut state.books;
        match (attribute, value) {
            (
                attribute::REUSE_FOLLOW_EVENT_DEPENDENCIES
                    ..=attribute::REUSE_ALLOW_INTERNAL_DEPENDENCIES,
                AttributeValue::Int(flag),
            ) => books.reuse[reuse_index(attribute)] = flag,
            (attribute::RELEASE_THRESHOLD, AttributeValue::Bytes(bytes)) => {
                books.release_threshold = bytes;
            }
            (attribute::RESERVED_MEM_HIGH, AttributeValue::Bytes(0)) => {
                books.reserved_high = books.reserved;
            }
            (attribute::USED_MEM_HIGH, AttributeValue::Bytes(0)) => {
                books.used_high = books.used;
            }
            _ => return Err(CuError::InvalidValue),
        }
        Ok(())
    }

    fn destroyed(&self) {
        let mut state = self.state.lock();
        state.destroyed = true;
        let idle = state.books.releasable(0);
        state.release(idle);
    }
}

/// The index of a reuse policy in [`Books::reuse`].
fn reuse_index(attribute: u32) -> usize {
    usize::try_from(attribute - attribute::REUSE_FOLLOW_EVENT_DEPENDENCIES).unwrap_or(0)
}

/// The value of a pool attribute, of the type the attribute documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeValue {
    /// An `int` (the reuse policies).
    Int(i32),
    /// A `cuuint64_t` (thresholds and byte counts).
    Bytes(u64),
}

/// Whether `attribute` is of `int` type (the others are `cuuint64_t`).
pub fn is_int_attribute(attribute: u32) -> bool {
    (attribute::REUSE_FOLLOW_EVENT_DEPENDENCIES..=attribute::REUSE_ALLOW_INTERNAL_DEPENDENCIES)
        .contains(&attribute)
}

static POOLS: Table<Pool> = Table::new();

/// Creates device `device`'s default pool; returns its handle.
pub fn create_default(device: usize) -> usize {
    POOLS.insert(Arc::new(Pool::new(device, true)))
}

/// Creates a pool on device `device`; returns its handle.
pub fn create(device: usize) -> usize {
    POOLS.insert(Arc::new(Pool::new(device, false)))
}

/// The pool behind `handle`.
pub fn get(handle: usize) -> CuResult<Arc<Pool>> {
    POOLS.get(handle).ok_or(CuError::InvalidHandle)
}

/// Destroys a created pool. Its idle memory goes back to the device at once; memory of
/// allocations still outstanding goes back as each is freed (the allocations stay valid).
pub fn destroy(handle: usize) -> CuResult {
    if get(handle)?.is_default {
        return Err(CuError::InvalidValue);
    }
    let pool = POOLS.remove(handle).ok_or(CuError::InvalidHandle)?;
    pool.destroyed();
    Ok(())
}

/// After a stream, event or context synchronization: every pool of the process gives back
/// its idle memory above its release threshold.
pub fn synchronized() {
    for pool in POOLS.values() {
        pool.release_above_threshold();
    }
}

/// After a context on `device` was torn down (its allocations freed): the device's pools
/// give back their idle memory above their release thresholds, as at a synchronization.
pub fn context_ended(device: usize) {
    for pool in POOLS.values() {
        if pool.device == device {
            pool.release_above_threshold();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Sizes;
    use std::path::Path;

    const MI: u64 = 1 << 20;

    fn device(dir: &Path) -> &'static Device {
        let sizes = Sizes {
            capacity: 1024 * MI,
            context_footprint: 0,
            module_footprint: 0,
        };
        Box::leak(Box::new(Device::open(0, sizes, dir, true, 0).unwrap()))
    }

    fn used_on(device: &Device) -> u64 {
        let (free, total) = device.memory_info();
        total - free
    }

    #[test]
    fn idle_memory_serves_requests_that_fit_and_the_pool_grows_for_the_others() {
        let mut books = Books::default();
        assert_eq!(books.growth_for(MI), 2 * MI, "grows by whole 2 MiB steps");
        books.allocated(MI, 2 * MI);
        assert_eq!(books.growth_for(MI), 0, "the idle MiB serves the next");
        books.allocated(MI, 0);
        assert_eq!(books.growth_for(3 * MI), 4 * MI);
        books.returned(MI);
        assert_eq!((books.reserved, books.used, books.idle()), (2 * MI, MI, MI));
        assert_eq!((books.reserved_high, books.used_high), (2 * MI, 2 * MI));
    }

    #[test]
    fn release_keeps_the_threshold_and_never_what_allocations_use() {
        let mut books = Books::default();
        books.allocated(10 * MI, 10 * MI);
        books.returned(6 * MI);
        assert_eq!(books.releasable(0), 6 * MI);
        assert_eq!(books.releasable(8 * MI), 2 * MI);
        assert_eq!(books.releasable(20 * MI), 0, "under the threshold: kept");
        books.released(books.releasable(0));
        assert_eq!((books.reserved, books.used), (4 * MI, 4 * MI));
    }

    #[test]
    fn a_pool_holds_its_memory_on_the_device_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let pool = Arc::new(Pool::new(0, false));
        let first = pool.allocate(dev, 100 * MI).unwrap();
        assert_eq!(used_on(dev), 100 * MI);
        drop(first);
        assert_eq!(used_on(dev), 100 * MI, "a freed block stays in the pool");
        let second = pool.allocate(dev, 50 * MI).unwrap();
        assert_eq!(used_on(dev), 100 * MI, "served from idle memory");
        pool.release_above_threshold();
        assert_eq!(
            used_on(dev),
            50 * MI,
            "idle memory above threshold 0 released"
        );
        drop(second);
        pool.set_attribute(attribute::RELEASE_THRESHOLD, AttributeValue::Bytes(30 * MI))
            .unwrap();
        pool.release_above_threshold();
        assert_eq!(used_on(dev), 30 * MI, "the threshold is kept");
        pool.trim_to(0);
        assert_eq!(used_on(dev), 0, "trimming ignores the threshold");
    }

    #[test]
    fn a_pool_that_cannot_grow_is_out_of_memory_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let pool = Arc::new(Pool::new(0, false));
        let held = pool.allocate(dev, 1000 * MI).unwrap();
        assert_eq!(
            pool.allocate(dev, 100 * MI).unwrap_err(),
            CuError::OutOfMemory
        );
        assert_eq!(pool.books().reserved, 1000 * MI);
        assert_eq!(pool.books().used, 1000 * MI);
        drop(held);
    }

    #[test]
    fn a_destroyed_pool_gives_memory_back_as_its_allocations_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let pool = Arc::new(Pool::new(0, false));
        let a = pool.allocate(dev, 100 * MI).unwrap();
        let b = pool.allocate(dev, 100 * MI).unwrap();
        drop(a);
        pool.destroyed();
        assert_eq!(used_on(dev), 100 * MI, "idle memory went at once");
        drop(b);
        assert_eq!(used_on(dev), 0, "the rest as it came back");
    }

    #[test]
    fn watermarks_reset_to_the_current_value_and_only_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let pool = Arc::new(Pool::new(0, false));
        let a = pool.allocate(dev, 100 * MI).unwrap();
        drop(pool.allocate(dev, 100 * MI).unwrap());
        pool.trim_to(0);
        let high = |attribute| pool.attribute(attribute).unwrap();
        assert_eq!(
            high(attribute::RESERVED_MEM_HIGH),
            AttributeValue::Bytes(200 * MI)
        );
        assert_eq!(
            high(attribute::USED_MEM_HIGH),
            AttributeValue::Bytes(200 * MI)
        );
        assert_eq!(
            pool.set_attribute(attribute::USED_MEM_HIGH, AttributeValue::Bytes(5)),
            Err(CuError::InvalidValue)
        );
        pool.set_attribute(attribute::RESERVED_MEM_HIGH, AttributeValue::Bytes(0))
            .unwrap();
        pool.set_attribute(attribute::USED_MEM_HIGH, AttributeValue::Bytes(0))
            .unwrap();
        assert_eq!(
            high(attribute::RESERVED_MEM_HIGH),
            AttributeValue::Bytes(100 * MI)
        );
        assert_eq!(
            high(attribute::USED_MEM_HIGH),
            AttributeValue::Bytes(100 * MI)
        );
        assert_eq!(
            pool.set_attribute(attribute::RESERVED_MEM_CURRENT, AttributeValue::Bytes(0)),
            Err(CuError::InvalidValue),
            "read-only"
        );
        drop(a);
    }
}
