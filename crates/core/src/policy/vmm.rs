//! What each VMM allocation (`cuMemCreate`) of this process is charged, and when the charge
//! goes back.
//!
//! The driver frees a VMM allocation only once nothing refers to it: its handle released as
//! often as it was taken (`cuMemCreate` gives one reference, each
//! `cuMemRetainAllocationHandle` one more, each `cuMemRelease` takes one), and every range it
//! is mapped into (`cuMemMap`) unmapped again (`cuMemUnmap`). Programs release the handle
//! right after mapping it and go on using the memory (CUDA's vectorAddMMAP sample, NCCL,
//! PyTorch's expandable segments), so the charge follows the same references: it goes back
//! when the last one does, not at `cuMemRelease`.
//!
//! Plain Rust: the hooks say what the driver did, this answers with the charges that are
//! free to go back. Every reference a driver call may create is taken here *before* the call
//! (a [`Pin`]), and one a call ends is dropped only *after* the call succeeded; so however
//! threads interleave, this table never counts fewer references than the driver holds. A
//! failed call changes nothing (its pin is dropped). Where the table and the driver disagree
//! (the driver names an allocation the table thinks is another), the allocation stays
//! charged until the process exits: over-counting is the safe side.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::policy::memory::Charge;

/// One allocation, as long as anything refers to it. Handle values can come back from the
/// driver for a new allocation once an old one is gone, so allocations have ids of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AllocationId(u64);

#[derive(Debug)]
struct Allocation {
    charge: Charge,
    /// The handle value that names it; kept after the handle is released (a released handle
    /// of mapped memory is still the one `cuMemRetainAllocationHandle` returns).
    handle: Option<u64>,
    /// `cuMemCreate`'s reference and each retained one, less the releases.
    handle_references: u32,
    /// Ranges it is mapped into ([`State::ranges`]).
    mappings: u32,
    /// Driver calls under way that may add a reference to it.
    pins: u32,
    /// The table lost track of its references: charged until the process exits.
    kept_until_exit: bool,
}

impl Allocation {
    fn unreferenced(&self) -> bool {
        self.handle_references == 0 && self.mappings == 0 && self.pins == 0 && !self.kept_until_exit
    }
}

/// A mapped range: `[start, end)` (the key of [`State::ranges`] is `start`).
#[derive(Debug)]
struct Range {
    end: u64,
    allocation: AllocationId,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    allocations: HashMap<AllocationId, Allocation>,
    /// Live handle values to what they name.
    handles: HashMap<u64, AllocationId>,
    /// Mapped ranges by start address; they never overlap.
    ranges: BTreeMap<u64, Range>,
}

/// A reference held for a driver call under way: [`VmmCharges::pin_handle`] or
/// [`VmmCharges::pin_address`] before the call; after it, handed to what the call did
/// ([`VmmCharges::mapped`], [`VmmCharges::released`], [`VmmCharges::retained`]) or, if it
/// failed, to [`VmmCharges::unpin`].
#[must_use = "a pin keeps its allocation charged until it is handed back"]
#[derive(Debug)]
pub struct Pin(AllocationId);

/// The VMM allocations of this process, their references and the ranges they are mapped
/// into. One lock, never held across a driver call.
#[derive(Debug, Default)]
pub struct VmmCharges {
    state: Mutex<State>,
}

impl VmmCharges {
    /// An empty table.
    pub fn new() -> VmmCharges {
        VmmCharges::default()
    }

    /// `cuMemCreate` returned `handle` for memory charged `charge`: one reference. If the
    /// table still had an allocation under that value, the driver freed it without this table
    /// seeing the last reference go; its handle references go, and its charge is returned if
    /// nothing else (a recorded mapping) holds it.
    pub fn created(&self, handle: u64, charge: Charge) -> Option<Charge> {
        let mut state = self.state.lock();
        let stale = match state.handles.remove(&handle) {
            Some(old) => {
                if let Some(allocation) = state.allocations.get_mut(&old) {
                    allocation.handle = None;
                    allocation.handle_references = 0;
                }
                state.free_if_unreferenced(old)
            }
            None => None,
        };
        let id = AllocationId(state.next_id);
        state.next_id += 1;
        state.allocations.insert(
            id,
            Allocation {
                charge,
                handle: Some(handle),
                handle_references: 1,
                mappings: 0,
                pins: 0,
                kept_until_exit: false,
            },
        );
        state.handles.insert(handle, id);
        stale
    }

    /// Before `cuMemMap` or `cuMemRelease` of `handle`: pins the allocation it names, if this
    /// table has it (memory imported from another process is not charged here).
    pub fn pin_handle(&self, handle: u64) -> Option<Pin> {
        let mut state = self.state.lock();
        let id = *state.handles.get(&handle)?;
        state.pin(id)
    }

    /// Before `cuMemRetainAllocationHandle` of `address`: pins the allocation mapped there,
    /// if the table knows one.
    pub fn pin_address(&self, address: u64) -> Option<Pin> {
        let mut state = self.state.lock();
        let (_, range) = state.ranges.range(..=address).next_back()?;
        if range.end <= address {
            return None;
        }
        let id = range.allocation;
        state.pin(id)
    }

    /// The driver call failed: the pin goes, and with it the charge if it was the last
    /// reference.
    pub fn unpin(&self, pin: Pin) -> Option<Charge> {
        let mut state = self.state.lock();
        state.unpin(pin.0);
        state.free_if_unreferenced(pin.0)
    }

    /// `cuMemMap` mapped `size` bytes at `start` with the handle `pin` was taken for (`None`:
    /// memory this table does not charge). The driver maps only where nothing is mapped, so a
    /// range the table still had there was unmapped without its seeing it: that goes first.
    /// Returns the charges free to go back.
    pub fn mapped(&self, pin: Option<Pin>, start: u64, size: u64) -> Vec<Charge> {
        let mut state = self.state.lock();
        let end = start.saturating_add(size);
        let mut freed = state.unmap(start, end);
        if let Some(Pin(id)) = pin {
            if start < end
                && let Some(allocation) = state.allocations.get_mut(&id)
            {
                allocation.mappings = allocation.mappings.saturating_add(1);
                state.ranges.insert(
                    start,
                    Range {
                        end,
                        allocation: id,
                    },
                );
            }
            state.unpin(id);
            freed.extend(state.free_if_unreferenced(id));
        }
        freed
    }

    /// `cuMemUnmap` of `size` bytes at `start` succeeded: every allocation mapped there
    /// loses that mapping. (The driver unmaps whole mappings only; should it ever take part
    /// of one, the rest stays recorded and keeps its allocation charged.) Returns the charges
    /// free to go back.
    pub fn unmapped(&self, start: u64, size: u64) -> Vec<Charge> {
        self.state.lock().unmap(start, start.saturating_add(size))
    }

    /// `cuMemRelease` of the handle `pin` was taken for succeeded: one handle reference goes
    /// (never a mapping's: a release the table has no reference for changes nothing).
    pub fn released(&self, pin: Pin) -> Option<Charge> {
        let mut state = self.state.lock();
        if let Some(allocation) = state.allocations.get_mut(&pin.0) {
            allocation.handle_references = allocation.handle_references.saturating_sub(1);
        }
        state.unpin(pin.0);
        state.free_if_unreferenced(pin.0)
    }

    /// `cuMemRetainAllocationHandle` succeeded and returned `handle` for the address `pin` was
    /// taken for (`None`: no range the table knows was mapped there): one more handle
    /// reference, on the allocation the driver named.
    pub fn retained(&self, pin: Option<Pin>, handle: u64) -> Option<Charge> {
        let mut state = self.state.lock();
        let named = state.handles.get(&handle).copied();
        if let Some(named) = named
            && let Some(allocation) = state.allocations.get_mut(&named)
        {
            allocation.handle_references = allocation.handle_references.saturating_add(1);
        }
        let Pin(id) = pin?;
        if named != Some(id)
            && let Some(allocation) = state.allocations.get_mut(&id)
        {
            // The driver says another handle (or one the table gave up) backs this range:
            // the table has lost track of this allocation's references.
            allocation.kept_until_exit = true;
        }
        state.unpin(id);
        state.free_if_unreferenced(id)
    }

    /// Bytes charged to allocations this table still holds, on every GPU.
    #[cfg(test)]
    fn charged(&self) -> u64 {
        let state = self.state.lock();
        state.allocations.values().map(|a| a.charge.bytes).sum()
    }
}

impl State {
    fn pin(&mut self, id: AllocationId) -> Option<Pin> {
        let allocation = self.allocations.get_mut(&id)?;
        allocation.pins = allocation.pins.saturating_add(1);
        Some(Pin(id))
    }

    fn unpin(&mut self, id: AllocationId) {
        if let Some(allocation) = self.allocations.get_mut(&id) {
            allocation.pins = allocation.pins.saturating_sub(1);
        }
    }

    /// Forgets `id` and returns its charge if nothing refers to it any more.
    fn free_if_unreferenced(&mut self, id: AllocationId) -> Option<Charge> {
        if !self.allocations.get(&id)?.unreferenced() {
            return None;
        }
        let allocation = self.allocations.remove(&id)?;
        if let Some(handle) = allocation.handle
            && self.handles.get(&handle) == Some(&id)
        {
            self.handles.remove(&handle);
        }
        Some(allocation.charge)
    }

    /// Takes `[start, end)` out of every recorded range (what is left of a range on either
    /// side stays recorded) and returns the charges of the allocations left unreferenced.
    fn unmap(&mut self, start: u64, end: u64) -> Vec<Charge> {
        if start >= end {
            return Vec::new();
        }
        // Ranges never overlap, so those that reach into [start, end) are the last ones
        // starting before `end`, back to the first that ends at or before `start`.
        let touched: Vec<(u64, u64, AllocationId)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, range)| range.end > start)
            .map(|(&from, range)| (from, range.end, range.allocation))
            .collect();
        for &(from, to, id) in &touched {
            self.ranges.remove(&from);
            let mut left = 0;
            for (rest_start, rest_end) in [(from, start.min(to)), (end.max(from), to)] {
                if rest_start < rest_end {
                    self.ranges.insert(
                        rest_start,
                        Range {
                            end: rest_end,
                            allocation: id,
                        },
                    );
                    left += 1;
                }
            }
            if let Some(allocation) = self.allocations.get_mut(&id) {
                allocation.mappings = allocation.mappings.saturating_sub(1).saturating_add(left);
            }
        }
        touched
            .into_iter()
            .filter_map(|(_, _, id)| self.free_if_unreferenced(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::GpuIndex;

    const MIB: u64 = 1 << 20;
    const VA: u64 = 0x7f00_0000_0000;

    fn charge(mib: u64) -> Charge {
        Charge {
            gpu: GpuIndex(0),
            bytes: mib * MIB,
        }
    }

    /// `cuMemCreate` of `mib` MiB returning `handle`.
    fn create(table: &VmmCharges, handle: u64, mib: u64) {
        assert_eq!(table.created(handle, charge(mib)), None);
    }

    /// A successful `cuMemMap` of `handle` at `VA + offset_mib`.
    fn map(table: &VmmCharges, handle: u64, offset_mib: u64, mib: u64) -> Vec<Charge> {
        let pin = table.pin_handle(handle);
        table.mapped(pin, VA + offset_mib * MIB, mib * MIB)
    }

    /// A successful `cuMemRelease` of `handle`.
    fn release(table: &VmmCharges, handle: u64) -> Option<Charge> {
        table.pin_handle(handle).and_then(|pin| table.released(pin))
    }

    fn unmap(table: &VmmCharges, offset_mib: u64, mib: u64) -> Vec<Charge> {
        table.unmapped(VA + offset_mib * MIB, mib * MIB)
    }

    #[test]
    fn a_handle_released_while_mapped_stays_charged_until_unmapped() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(
            release(&table, 1),
            None,
            "the mapping still holds the memory"
        );
        assert_eq!(table.charged(), 64 * MIB);
        assert_eq!(unmap(&table, 0, 64), [charge(64)]);
        assert_eq!(table.charged(), 0);
    }

    #[test]
    fn unmapping_first_then_releasing_gives_the_charge_back_at_the_release() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(
            unmap(&table, 0, 64),
            [],
            "the handle still holds the memory"
        );
        assert_eq!(release(&table, 1), Some(charge(64)));
        assert_eq!(table.charged(), 0);
    }

    #[test]
    fn an_unmapped_handle_is_freed_at_its_release() {
        let table = VmmCharges::new();
        create(&table, 1, 2);
        assert_eq!(release(&table, 1), Some(charge(2)));
        assert_eq!(release(&table, 1), None, "nothing left to release");
    }

    #[test]
    fn each_mapping_of_one_allocation_holds_it() {
        let table = VmmCharges::new();
        create(&table, 1, 4);
        assert_eq!(map(&table, 1, 0, 4), []);
        assert_eq!(map(&table, 1, 100, 4), [], "a second, aliasing mapping");
        assert_eq!(release(&table, 1), None);
        assert_eq!(unmap(&table, 0, 4), []);
        assert_eq!(unmap(&table, 100, 4), [charge(4)]);
    }

    #[test]
    fn a_retained_handle_must_be_released_too() {
        // NCCL's free: retain, release, unmap, release.
        let table = VmmCharges::new();
        create(&table, 7, 8);
        assert_eq!(map(&table, 7, 0, 8), []);
        let pin = table.pin_address(VA + 3 * MIB);
        assert!(pin.is_some(), "any address inside the mapping finds it");
        assert_eq!(table.retained(pin, 7), None);
        assert_eq!(release(&table, 7), None);
        assert_eq!(
            unmap(&table, 0, 8),
            [],
            "the create's reference is still held"
        );
        assert_eq!(release(&table, 7), Some(charge(8)));
    }

    #[test]
    fn a_retain_after_the_release_holds_the_memory_again() {
        let table = VmmCharges::new();
        create(&table, 7, 8);
        assert_eq!(map(&table, 7, 0, 8), []);
        assert_eq!(release(&table, 7), None);
        let pin = table.pin_address(VA);
        assert_eq!(table.retained(pin, 7), None);
        assert_eq!(unmap(&table, 0, 8), [], "the retained reference holds it");
        assert_eq!(release(&table, 7), Some(charge(8)));
    }

    #[test]
    fn one_unmap_over_several_handles_frees_each() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        create(&table, 2, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(map(&table, 2, 64, 64), []);
        assert_eq!(release(&table, 1), None);
        assert_eq!(release(&table, 2), None);
        let mut freed = unmap(&table, 0, 128);
        freed.sort_by_key(|c| c.bytes);
        assert_eq!(freed, [charge(64), charge(64)]);
        assert_eq!(table.charged(), 0);
    }

    #[test]
    fn unmapping_part_of_a_range_over_several_handles_frees_only_those_unmapped() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        create(&table, 2, 32);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(map(&table, 2, 64, 32), []);
        assert_eq!(release(&table, 1), None);
        assert_eq!(release(&table, 2), None);
        assert_eq!(unmap(&table, 64, 32), [charge(32)]);
        assert_eq!(table.charged(), 64 * MIB);
        assert_eq!(unmap(&table, 0, 64), [charge(64)]);
    }

    #[test]
    fn what_is_left_of_a_partly_unmapped_range_keeps_its_allocation_charged() {
        // The driver refuses to unmap part of a mapping; were it to, the rest still holds.
        let table = VmmCharges::new();
        create(&table, 1, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(release(&table, 1), None);
        assert_eq!(unmap(&table, 16, 16), [], "both ends are still mapped");
        assert_eq!(unmap(&table, 0, 16), [], "the end is still mapped");
        assert_eq!(unmap(&table, 32, 32), [charge(64)]);
    }

    #[test]
    fn failed_calls_change_nothing() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        // A failed cuMemMap.
        let pin = table.pin_handle(1).unwrap();
        assert_eq!(table.unpin(pin), None);
        // A failed cuMemRelease, then a failed retain of an address never mapped.
        let pin = table.pin_handle(1).unwrap();
        assert_eq!(table.unpin(pin), None);
        assert!(table.pin_address(VA).is_none());
        assert_eq!(table.charged(), 64 * MIB);
        assert_eq!(release(&table, 1), Some(charge(64)));
    }

    #[test]
    fn a_failed_map_of_a_handle_released_meanwhile_gives_the_charge_back() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        let pin = table.pin_handle(1).unwrap();
        // Another thread's cuMemRelease completes while the map is under way.
        assert_eq!(release(&table, 1), None, "the pin holds it");
        assert_eq!(table.unpin(pin), Some(charge(64)));
    }

    #[test]
    fn a_map_racing_the_release_keeps_the_memory_charged() {
        // Thread A maps (its driver call succeeds first), thread B releases and is done before
        // A records the mapping: the pin taken before A's call holds the charge throughout.
        let table = VmmCharges::new();
        create(&table, 1, 64);
        let pin = table.pin_handle(1);
        assert_eq!(release(&table, 1), None);
        assert_eq!(table.mapped(pin, VA, 64 * MIB), []);
        assert_eq!(table.charged(), 64 * MIB);
        assert_eq!(unmap(&table, 0, 64), [charge(64)]);
    }

    #[test]
    fn a_release_beyond_the_references_never_takes_a_mappings_charge() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(release(&table, 1), None);
        assert_eq!(
            release(&table, 1),
            None,
            "the driver's business; the mapping still holds"
        );
        assert_eq!(table.charged(), 64 * MIB);
    }

    #[test]
    fn memory_the_table_did_not_create_is_not_charged() {
        let table = VmmCharges::new();
        assert!(table.pin_handle(99).is_none(), "an imported handle");
        assert_eq!(table.mapped(None, VA, 64 * MIB), []);
        assert_eq!(table.retained(None, 99), None);
        assert_eq!(unmap(&table, 0, 64), []);
        assert_eq!(table.charged(), 0);
    }

    #[test]
    fn a_new_mapping_where_the_table_had_one_drops_the_stale_one() {
        // The driver maps only where nothing is mapped: a range the table still has there
        // was unmapped behind its back (cuMemAddressFree of the reservation, say).
        let table = VmmCharges::new();
        create(&table, 1, 64);
        create(&table, 2, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(release(&table, 1), None);
        assert_eq!(map(&table, 2, 0, 64), [charge(64)]);
        assert_eq!(table.charged(), 64 * MIB);
    }

    #[test]
    fn a_handle_value_the_driver_hands_out_again_replaces_the_stale_one() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        assert_eq!(table.created(1, charge(32)), Some(charge(64)));
        assert_eq!(release(&table, 1), Some(charge(32)));
    }

    #[test]
    fn a_stale_handle_value_leaves_its_mappings_charged() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        assert_eq!(map(&table, 1, 0, 64), []);
        assert_eq!(
            table.created(1, charge(32)),
            None,
            "the old mapping still holds"
        );
        assert_eq!(release(&table, 1), Some(charge(32)), "the new allocation");
        assert_eq!(unmap(&table, 0, 64), [charge(64)], "the old one");
    }

    #[test]
    fn a_release_racing_a_reuse_of_its_handle_value_takes_nothing_from_the_new_allocation() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        let pin = table.pin_handle(1).unwrap();
        // The driver freed it; another thread's cuMemCreate got the same value back.
        assert_eq!(
            table.created(1, charge(32)),
            None,
            "the pin still holds the old one"
        );
        assert_eq!(table.released(pin), Some(charge(64)));
        assert_eq!(table.charged(), 32 * MIB);
    }

    #[test]
    fn a_retain_naming_another_allocation_keeps_both_charged() {
        let table = VmmCharges::new();
        create(&table, 1, 64);
        create(&table, 2, 32);
        assert_eq!(map(&table, 1, 0, 64), []);
        let pin = table.pin_address(VA);
        assert_eq!(table.retained(pin, 2), None);
        assert_eq!(unmap(&table, 0, 64), []);
        assert_eq!(release(&table, 1), None, "kept: the table lost track of it");
        assert_eq!(release(&table, 2), None, "the retained reference");
        assert_eq!(release(&table, 2), Some(charge(32)));
        assert_eq!(table.charged(), 64 * MIB);
    }

    /// The driver's own bookkeeping, as the CUDA reference describes it, over a small
    /// address space of 1 MiB slots: what a random sequence of calls (most of them failing)
    /// leaves allocated must be exactly what the table charges, at every step.
    mod against_the_driver {
        use super::*;
        use proptest::prelude::*;

        const SLOTS: usize = 12;

        #[derive(Clone, Debug)]
        enum Call {
            Create { slots: usize },
            Map { handle: usize, at: usize },
            Unmap { at: usize, slots: usize },
            Release { handle: usize },
            Retain { at: usize },
        }

        fn call() -> impl Strategy<Value = Call> {
            prop_oneof![
                (1usize..4).prop_map(|slots| Call::Create { slots }),
                (1usize..8, 0..SLOTS).prop_map(|(handle, at)| Call::Map { handle, at }),
                (0..SLOTS, 1..SLOTS).prop_map(|(at, slots)| Call::Unmap { at, slots }),
                (1usize..8).prop_map(|handle| Call::Release { handle }),
                (0..SLOTS).prop_map(|at| Call::Retain { at }),
            ]
        }

        /// One allocation as the driver keeps it; freed once both counts are 0.
        #[derive(Clone, Copy)]
        struct Kept {
            slots: usize,
            handle_references: u32,
            mappings: u32,
        }

        impl Kept {
            fn live(&self) -> bool {
                self.handle_references > 0 || self.mappings > 0
            }
        }

        #[derive(Default)]
        struct Driver {
            /// By handle - 1 (handles are 1, 2, ...).
            allocations: Vec<Kept>,
            /// What is mapped in each slot: (handle, first slot of its mapping).
            slots: [Option<(usize, usize)>; SLOTS],
        }

        impl Driver {
            fn get(&mut self, handle: usize) -> Option<&mut Kept> {
                self.allocations
                    .get_mut(handle.checked_sub(1)?)
                    .filter(|a| a.live())
            }

            fn allocated(&self) -> u64 {
                let slots: usize = self
                    .allocations
                    .iter()
                    .filter(|a| a.live())
                    .map(|a| a.slots)
                    .sum();
                slots as u64 * MIB
            }
        }

        fn address(slot: usize) -> u64 {
            VA + slot as u64 * MIB
        }

        fn bytes(charge: Option<Charge>) -> u64 {
            charge.map_or(0, |c| c.bytes)
        }

        proptest! {
            #[test]
            fn the_table_charges_exactly_what_the_driver_keeps_allocated(
                calls in proptest::collection::vec(call(), 1..60)
            ) {
                let table = VmmCharges::new();
                let mut driver = Driver::default();
                let mut given_back = 0u64;
                let mut freed_by_driver = 0u64;
                for call in calls {
                    let before = driver.allocated();
                    match call {
                        Call::Create { slots } => {
                            driver.allocations.push(Kept { slots, handle_references: 1, mappings: 0 });
                            let handle = driver.allocations.len() as u64;
                            prop_assert_eq!(table.created(handle, charge(slots as u64)), None);
                        }
                        Call::Map { handle, at } => {
                            let pin = table.pin_handle(handle as u64);
                            let free = driver.slots;
                            let mapped = driver.get(handle).and_then(|a| {
                                let end = at + a.slots;
                                let fits = a.handle_references > 0
                                    && end <= SLOTS
                                    && free[at..end].iter().all(Option::is_none);
                                fits.then(|| {
                                    a.mappings += 1;
                                    a.slots
                                })
                            });
                            match mapped {
                                Some(slots) => {
                                    for slot in &mut driver.slots[at..at + slots] {
                                        *slot = Some((handle, at));
                                    }
                                    for c in table.mapped(pin, address(at), slots as u64 * MIB) {
                                        given_back += c.bytes;
                                    }
                                }
                                None => given_back += bytes(pin.and_then(|p| table.unpin(p))),
                            }
                        }
                        Call::Unmap { at, slots } => {
                            let end = (at + slots).min(SLOTS);
                            let range = &driver.slots[at..end];
                            // Whole mappings only, and at least one.
                            let whole = range.iter().any(Option::is_some)
                                && range.iter().flatten().all(|&(handle, first)| {
                                    first >= at && first + driver.allocations[handle - 1].slots <= end
                                });
                            if whole {
                                let mut seen = Vec::new();
                                for slot in &mut driver.slots[at..end] {
                                    if let Some(mapping) = slot.take()
                                        && !seen.contains(&mapping)
                                    {
                                        seen.push(mapping);
                                        driver.allocations[mapping.0 - 1].mappings -= 1;
                                    }
                                }
                                for c in table.unmapped(address(at), (end - at) as u64 * MIB) {
                                    given_back += c.bytes;
                                }
                            }
                        }
                        Call::Release { handle } => {
                            let pin = table.pin_handle(handle as u64);
                            let valid = match driver.get(handle) {
                                Some(a) if a.handle_references > 0 => {
                                    a.handle_references -= 1;
                                    true
                                }
                                _ => false,
                            };
                            if let Some(pin) = pin {
                                given_back += bytes(if valid { table.released(pin) } else { table.unpin(pin) });
                            }
                        }
                        Call::Retain { at } => {
                            let pin = table.pin_address(address(at));
                            match driver.slots[at] {
                                Some((handle, _)) => {
                                    driver.allocations[handle - 1].handle_references += 1;
                                    given_back += bytes(table.retained(pin, handle as u64));
                                }
                                None => given_back += bytes(pin.and_then(|p| table.unpin(p))),
                            }
                        }
                    }
                    freed_by_driver += before.saturating_sub(driver.allocated());
                    prop_assert_eq!(table.charged(), driver.allocated());
                    prop_assert_eq!(given_back, freed_by_driver);
                }
            }
        }
    }
}
