//! Opaque handles (`CUcontext`, `CUstream`, `CUevent`, ...) handed to C, and the tables that
//! map them back to objects.
//!
//! Handles are never pointers into Rust memory: they are unique numbers that look like
//! aligned addresses, shared across all tables, so that a stale or wrong-typed handle is
//! reported as invalid instead of being dereferenced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(0x5000_0000);

/// A fresh handle value, never handed out before in this process (and never 0, 1 or 2, the
/// special stream handles).
pub fn fresh() -> usize {
    NEXT_HANDLE.fetch_add(0x40, Ordering::Relaxed)
}

/// Objects of one kind by handle.
#[derive(Debug)]
pub struct Table<T> {
    objects: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Table<T> {
    /// An empty table.
    pub const fn new() -> Self {
        Table {
            objects: Mutex::new(BTreeMap::new()),
        }
    }

    /// Stores `object` under a fresh handle and returns the handle.
    pub fn insert(&self, object: Arc<T>) -> usize {
        let handle = fresh();
        self.objects.lock().insert(handle, object);
        handle
    }

    /// Stores `object` under `handle` (one made by `fresh`), replacing what was there.
    pub fn insert_at(&self, handle: usize, object: Arc<T>) {
        self.objects.lock().insert(handle, object);
    }

    /// The object behind `handle`.
    pub fn get(&self, handle: usize) -> Option<Arc<T>> {
        self.objects.lock().get(&handle).cloned()
    }

    /// Removes and returns the object behind `handle`.
    pub fn remove(&self, handle: usize) -> Option<Arc<T>> {
        self.objects.lock().remove(&handle)
    }

    /// Every object, in handle order.
    pub fn values(&self) -> Vec<Arc<T>> {
        self.objects.lock().values().cloned().collect()
    }

    /// The handles of every object for which `pred` holds (called with the table locked).
    pub fn select(&self, mut pred: impl FnMut(&T) -> bool) -> Vec<usize> {
        self.objects
            .lock()
            .iter()
            .filter(|(_, object)| pred(object))
            .map(|(&handle, _)| handle)
            .collect()
    }

    /// Removes and returns every object for which `pred` holds.
    pub fn remove_where(&self, mut pred: impl FnMut(&T) -> bool) -> Vec<Arc<T>> {
        let mut objects = self.objects.lock();
        let doomed: Vec<usize> = objects
            .iter()
            .filter(|(_, object)| pred(object))
            .map(|(&handle, _)| handle)
            .collect();
        doomed
            .into_iter()
            .filter_map(|handle| objects.remove(&handle))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_unique_and_stale_ones_miss() {
        let table = Table::new();
        let a = table.insert(Arc::new(1));
        let b = table.insert(Arc::new(2));
        assert_ne!(a, b);
        assert!(a > 2 && b > 2);
        assert_eq!(table.get(b).as_deref(), Some(&2));
        assert_eq!(table.select(|&v| v == 2), [b]);
        assert_eq!(table.remove(a).as_deref(), Some(&1));
        assert!(table.get(a).is_none());
        assert_eq!(table.remove_where(|&v| v == 2).len(), 1);
        assert!(table.get(b).is_none());
    }
}
