//! What each live allocation of this process holds against the quota, so that a free gives
//! back exactly what was counted, whichever context, stream or thread frees it, and so that
//! the end of a context gives back what the driver freed with it.
//!
//! The driver frees a context's memory when the context ends (`cuCtxDestroy`, the last
//! release of a primary context, `cuDevicePrimaryCtxReset`): what `cuMemAlloc`,
//! `cuMemAllocPitch`, `cuMemAllocManaged` and the array calls made in it. Not what
//! `cuMemCreate`, `cuMemAllocAsync` and `cuMemAllocFromPoolAsync` made: the driver's
//! documentation says those are "not associated with any CUDA context" (a pool is charged
//! what it holds, read from the driver, `policy::pools`; a VMM allocation until the driver
//! frees it, `policy::vmm`). So each allocation is recorded with the context it was made in
//! ([`Held::context`]), or none for memory that outlives contexts, and
//! [`Allocations::context_ended`] takes out every allocation of an ended context. A free
//! after that finds nothing to give back, and an address the driver hands out again in a
//! new context is charged afresh.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use gpuslice_ledger::GpuIndex;
use parking_lot::Mutex;

use crate::policy::memory::Charge;
use crate::policy::vmm::VmmCharges;

const SHARDS: usize = 16;

/// A context, by the handle the driver gave it (`CUcontext` as a number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContextHandle(pub usize);

/// What a live allocation holds: its charge, and the context whose end frees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The bytes counted against the quota.
    pub charge: Charge,
    /// The context it was made in; `None` for memory no context's end frees (a
    /// stream-ordered allocation charged by its size) or made where the context could not
    /// be told: it stays charged until it is freed, or the process exits.
    pub context: Option<ContextHandle>,
}

type Shard = Mutex<HashMap<u64, Held, BuildHasherDefault<std::hash::DefaultHasher>>>;

/// Handles of one kind (device pointers, arrays) to what they hold. Sharded so threads
/// allocating at once rarely meet on one lock.
#[derive(Debug)]
pub struct ChargeTable {
    shards: [Shard; SHARDS],
}

impl ChargeTable {
    /// An empty table.
    pub fn new() -> ChargeTable {
        ChargeTable {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }

    fn shard(&self, key: u64) -> &Shard {
        // Device pointers are aligned to at least 256 bytes: skip the always-zero bits.
        let index = usize::try_from((key >> 8) ^ (key >> 21)).unwrap_or(0) % SHARDS;
        &self.shards[index]
    }

    /// Records what a handle holds. A key already present (a handle the driver reused after
    /// a free we never saw) is replaced, and its old charge returned so it can be given
    /// back.
    pub fn insert(&self, key: u64, held: Held) -> Option<Charge> {
        self.shard(key)
            .lock()
            .insert(key, held)
            .map(|stale| stale.charge)
    }

    /// Takes what a handle being freed holds, if it was counted (and not given back with
    /// its context already).
    pub fn remove(&self, key: u64) -> Option<Held> {
        self.shard(key).lock().remove(&key)
    }

    /// Takes out every allocation made in `context` on `gpu` (it ended, and the driver
    /// freed them with it), and returns the bytes they held. Each shard is locked in turn,
    /// briefly; a context's end is rare. Matching the GPU too keeps a context made on
    /// another GPU meanwhile, to which the driver gave the ended one's handle, whole.
    pub fn take_context(&self, context: ContextHandle, gpu: GpuIndex) -> u64 {
        let mut bytes = 0u64;
        for shard in &self.shards {
            shard.lock().retain(|_, held| {
                let ended = held.context == Some(context) && held.charge.gpu == gpu;
                if ended {
                    bytes = bytes.saturating_add(held.charge.bytes);
                }
                !ended
            });
        }
        bytes
    }

    /// How many handles are recorded.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ChargeTable {
    fn default() -> Self {
        ChargeTable::new()
    }
}

/// Every kind of memory the shim counts, each in its own handle namespace.
#[derive(Debug, Default)]
pub struct Allocations {
    /// `cuMemAlloc*` and friends: device pointers.
    pub device: ChargeTable,
    /// `cuMemCreate`: VMM allocations, their references and mappings.
    pub vmm: VmmCharges,
    /// `cuArrayCreate`, `cuArray3DCreate`, `cuMipmappedArrayCreate`: array handles.
    pub arrays: ChargeTable,
}

impl Allocations {
    /// `context` on `gpu` ended: takes out what the driver freed with it (its device
    /// memory, pitched and managed allocations, arrays; VMM allocations are no context's)
    /// and returns the charge to give back, if any. Call it once the driver ended the
    /// context and before another context can be made on the GPU
    /// (`crate::contexts` hands the ended context over at that point), so that nothing
    /// made in a new context under the same handle is taken.
    pub fn context_ended(&self, context: ContextHandle, gpu: GpuIndex) -> Option<Charge> {
        let bytes = self
            .device
            .take_context(context, gpu)
            .saturating_add(self.arrays.take_context(context, gpu));
        (bytes > 0).then_some(Charge { gpu, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G0: GpuIndex = GpuIndex(0);
    const G1: GpuIndex = GpuIndex(1);
    const A: ContextHandle = ContextHandle(0xa000);
    const B: ContextHandle = ContextHandle(0xb000);

    fn charge(bytes: u64) -> Charge {
        Charge { gpu: G0, bytes }
    }

    fn held(gpu: GpuIndex, bytes: u64, context: Option<ContextHandle>) -> Held {
        Held {
            charge: Charge { gpu, bytes },
            context,
        }
    }

    #[test]
    fn a_free_takes_back_exactly_the_recorded_charge() {
        let table = ChargeTable::new();
        assert_eq!(table.insert(0x7000_0000_0000, held(G0, 64, Some(A))), None);
        assert_eq!(table.insert(0x7000_0020_0000, held(G0, 128, Some(A))), None);
        assert_eq!(table.remove(0x7000_0000_0000), Some(held(G0, 64, Some(A))));
        assert_eq!(table.remove(0x7000_0000_0000), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_reused_handle_returns_the_stale_charge() {
        let table = ChargeTable::new();
        table.insert(42, held(G0, 1, Some(A)));
        assert_eq!(table.insert(42, held(G0, 2, Some(A))), Some(charge(1)));
    }

    #[test]
    fn memory_freed_with_its_context_does_not_stay_charged() {
        // The red team's case: 150 MiB in the primary context, which a reset ends; the
        // driver freed it, so the quota gets it back.
        let allocations = Allocations::default();
        allocations
            .device
            .insert(0x7000_0000_0000, held(G0, 150, Some(A)));
        allocations
            .device
            .insert(0x7000_1000_0000, held(G0, 20, Some(A)));
        allocations.arrays.insert(0x5000, held(G0, 8, Some(A)));
        assert_eq!(
            allocations.context_ended(A, G0),
            Some(Charge {
                gpu: G0,
                bytes: 178
            })
        );
        assert!(allocations.device.is_empty() && allocations.arrays.is_empty());
        assert_eq!(
            allocations.context_ended(A, G0),
            None,
            "nothing is given back twice"
        );
    }

    #[test]
    fn a_context_end_takes_only_that_contexts_memory_on_its_gpu() {
        let allocations = Allocations::default();
        allocations.device.insert(1 << 20, held(G0, 150, Some(A)));
        // Another context's, on the same GPU.
        allocations.device.insert(2 << 20, held(G0, 10, Some(B)));
        // A context on another GPU under the same handle (the driver gave the ended
        // context's handle out again before the end was seen).
        allocations.device.insert(3 << 20, held(G1, 20, Some(A)));
        // Memory no context frees (a stream-ordered allocation charged by its size).
        allocations.device.insert(4 << 20, held(G0, 30, None));
        assert_eq!(
            allocations.context_ended(A, G0),
            Some(Charge {
                gpu: G0,
                bytes: 150
            })
        );
        assert_eq!(allocations.device.len(), 3);
        assert_eq!(
            allocations.device.remove(2 << 20),
            Some(held(G0, 10, Some(B)))
        );
        assert_eq!(
            allocations.device.remove(3 << 20),
            Some(held(G1, 20, Some(A)))
        );
        assert_eq!(allocations.device.remove(4 << 20), Some(held(G0, 30, None)));
    }

    #[test]
    fn a_free_after_its_context_ended_gives_nothing_back_twice() {
        let table = ChargeTable::new();
        table.insert(1 << 20, held(G0, 150, Some(A)));
        assert_eq!(table.take_context(A, G0), 150);
        assert_eq!(table.remove(1 << 20), None, "given back with its context");
    }

    #[test]
    fn an_address_reused_in_the_context_made_anew_is_charged_afresh() {
        // A reset ends the primary context; a retain makes it anew under the same handle;
        // its first allocation gets the address the ended context's had.
        let allocations = Allocations::default();
        allocations.device.insert(1 << 20, held(G0, 150, Some(A)));
        assert!(allocations.context_ended(A, G0).is_some());
        assert_eq!(
            allocations.device.insert(1 << 20, held(G0, 150, Some(A))),
            None,
            "no stale charge to give back: it went with the context"
        );
        assert_eq!(
            allocations.device.remove(1 << 20),
            Some(held(G0, 150, Some(A))),
            "freed, the new allocation gives back what it was charged, once"
        );
        assert_eq!(allocations.context_ended(A, G0), None);
    }
}
