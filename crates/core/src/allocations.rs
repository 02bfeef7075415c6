//! What each live allocation of this process holds against the quota, so that a free gives
//! back exactly what was counted, whichever context, stream or thread frees it.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use parking_lot::Mutex;

use crate::policy::memory::Charge;
use crate::policy::vmm::VmmCharges;

const SHARDS: usize = 16;

/// Handles of one kind (device pointers, VMM handles, arrays) to their charges. Sharded so
/// threads allocating at once rarely meet on one lock.
#[derive(Debug)]
pub struct ChargeTable {
    shards: [Mutex<HashMap<u64, Charge, BuildHasherDefault<std::hash::DefaultHasher>>>; SHARDS],
}

impl ChargeTable {
    /// An empty table.
    pub fn new() -> ChargeTable {
        ChargeTable {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }

    fn shard(
        &self,
        key: u64,
    ) -> &Mutex<HashMap<u64, Charge, BuildHasherDefault<std::hash::DefaultHasher>>> {
        // Device pointers are aligned to at least 256 bytes: skip the always-zero bits.
        let index = usize::try_from((key >> 8) ^ (key >> 21)).unwrap_or(0) % SHARDS;
        &self.shards[index]
    }

    /// Records a charge. A key already present (a handle the driver reused after a free we
    /// never saw) is replaced, and its old charge returned so it can be given back.
    pub fn insert(&self, key: u64, charge: Charge) -> Option<Charge> {
        self.shard(key).lock().insert(key, charge)
    }

    /// Takes the charge of a handle being freed, if it was counted.
    pub fn remove(&self, key: u64) -> Option<Charge> {
        self.shard(key).lock().remove(&key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::GpuIndex;

    fn charge(bytes: u64) -> Charge {
        Charge {
            gpu: GpuIndex(0),
            bytes,
        }
    }

    #[test]
    fn a_free_takes_back_exactly_the_recorded_charge() {
        let table = ChargeTable::new();
        assert_eq!(table.insert(0x7000_0000_0000, charge(64)), None);
        assert_eq!(table.insert(0x7000_0020_0000, charge(128)), None);
        assert_eq!(table.remove(0x7000_0000_0000), Some(charge(64)));
        assert_eq!(table.remove(0x7000_0000_0000), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_reused_handle_returns_the_stale_charge() {
        let table = ChargeTable::new();
        table.insert(42, charge(1));
        assert_eq!(table.insert(42, charge(2)), Some(charge(1)));
    }
}
