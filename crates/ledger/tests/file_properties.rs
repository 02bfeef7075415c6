//! Ledger files are outside input: a tenant can write its own usage and lock files with
//! anything. Whatever bytes a file holds, opening, copying and reading it never panics and
//! never reads out of bounds; a header that is not exactly right is refused, naming the file.

mod common;

use common::{gpu, ledger, tenant};
use gpuslice_ledger::layout::{self, HEADER_SIZE};
use gpuslice_ledger::{GpuIndex, Ledger, LedgerError, Limits, TenantName, TenantQuota};
use proptest::prelude::*;

/// A valid file's bytes with some of them overwritten (mostly in the header, where every
/// field is checked) and perhaps cut short or extended.
fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        proptest::collection::vec((prop_oneof![0..HEADER_SIZE, 0..len], any::<u8>()), 0..12),
        prop_oneof![
            4 => Just(None),
            1 => (0..len + 64).prop_map(Some),
        ],
    )
        .prop_map(move |(pokes, resize)| {
            let mut bytes = valid.clone();
            for (at, byte) in pokes {
                if let Some(b) = bytes.get_mut(at) {
                    *b = byte;
                }
            }
            if let Some(n) = resize {
                bytes.resize(n, 0);
            }
            bytes
        })
}

/// Reads everything there is to read of tenant `t` in `ledger`, as the shim, the command and
/// other tenants do; returns whether each file was accepted.
fn read_all(ledger: &Ledger, t: &TenantName) -> (bool, bool) {
    let quota = match ledger.read_quota(t) {
        Ok(Some(q)) => {
            let _ = (q.quota(), q.defaults(), q.limits_for(&gpu(1)));
            true
        }
        Ok(None) => false,
        Err(e) => {
            assert_refused_by_name(&e, &ledger.quota_path(t));
            false
        }
    };
    let usage = match ledger.snapshot_usage(t) {
        Ok(snap) => {
            let _ = snap.slots();
            for g in 0..17 {
                let g = GpuIndex(g);
                let _ = (
                    snap.memory_used(g),
                    snap.gpu_time_ns(g),
                    snap.compute_slots(g),
                    snap.credit_ns(g),
                );
            }
            true
        }
        Err(e) => {
            assert_refused_by_name(&e, &ledger.usage_path(t));
            false
        }
    };
    if usage && let Ok(file) = ledger.open_usage(t) {
        let _ = (file.gpus(), file.slots(), file.memory_used(GpuIndex(0)));
        let _ = file.reclaim_dead();
    }
    (quota, usage)
}

/// A refusal names the file it refused.
fn assert_refused_by_name(e: &LedgerError, path: &std::path::Path) {
    let text = e.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

/// The bytes of a valid usage file holding a slot with memory, and of a valid quota file.
fn valid_files() -> (Vec<u8>, Vec<u8>) {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    ledger
        .write_quota(
            &t,
            &TenantQuota {
                defaults: Limits {
                    memory_bytes: Some(1 << 30),
                    compute_share_permille: Some(300),
                    ..Limits::default()
                },
                per_gpu: vec![(gpu(1), Limits::default())],
            },
        )
        .unwrap();
    let usage = ledger.open_usage(&t).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 5 << 20, u64::MAX).unwrap();
    let bytes = (
        std::fs::read(ledger.usage_path(&t)).unwrap(),
        std::fs::read(ledger.quota_path(&t)).unwrap(),
    );
    drop(slot);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_damage_to_a_usage_file_is_read_safely_or_refused(
        bytes in damaged(valid_files().0)
    ) {
        let (_dir, ledger) = ledger();
        let t = tenant("t");
        drop(ledger.open_usage(&t).unwrap());
        std::fs::write(ledger.usage_path(&t), &bytes).unwrap();
        let (_, accepted) = read_all(&ledger, &t);
        if bytes.len() != layout::USAGE_FILE_SIZE {
            prop_assert!(!accepted, "a usage file of {} bytes was accepted", bytes.len());
        }
    }

    #[test]
    fn any_damage_to_a_quota_file_is_read_safely_or_refused(
        bytes in damaged(valid_files().1)
    ) {
        let (_dir, ledger) = ledger();
        let t = tenant("t");
        ledger.write_quota(&t, &TenantQuota::default()).unwrap();
        std::fs::write(ledger.quota_path(&t), &bytes).unwrap();
        let (accepted, _) = read_all(&ledger, &t);
        if bytes.len() != layout::QUOTA_FILE_SIZE {
            prop_assert!(!accepted, "a quota file of {} bytes was accepted", bytes.len());
        }
    }

    #[test]
    fn any_bytes_at_all_are_refused_or_read_safely(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let (_dir, ledger) = ledger();
        let t = tenant("t");
        ledger.write_quota(&t, &TenantQuota::default()).unwrap();
        drop(ledger.open_usage(&t).unwrap());
        std::fs::write(ledger.quota_path(&t), &bytes).unwrap();
        std::fs::write(ledger.usage_path(&t), &bytes).unwrap();
        std::fs::write(ledger.lock_path(&t), &bytes).unwrap();
        let (quota, usage) = read_all(&ledger, &t);
        prop_assert!(!quota && !usage, "random bytes passed for a ledger file");
        let locks = ledger.open_locks(&t);
        prop_assert!(locks.is_err() || bytes.len() == layout::LOCK_FILE_SIZE);
    }
}
