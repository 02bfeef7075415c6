//! Usage files within one process: creation, the GPU table, slots, reservations, snapshots,
//! and the ledger directory itself.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use common::{gpu, ledger, tenant};
use gpuslice_ledger::{
    GpuIndex, GpuUuid, Ledger, LedgerError, MAX_GPUS, MAX_SLOTS, OverLimit, ReclaimReport, layout,
};

const MIB: u64 = 1 << 20;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn open_creates_the_ledger_and_tenants_directories_with_mode_0755() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/ledger");
    let ledger = Ledger::open(&root).unwrap();
    assert_eq!(ledger.dir(), root);
    assert_eq!(mode(&root), 0o755);
    assert_eq!(mode(&root.join("tenants")), 0o755);
    // Opening again is fine.
    Ledger::open(&root).unwrap();
}

#[test]
fn open_existing_creates_nothing_and_names_the_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ledger");
    let err = Ledger::open_existing(&root).unwrap_err();
    assert!(err.is_not_found());
    assert!(
        err.to_string().contains(&root.display().to_string()),
        "{err}"
    );
    assert!(!root.exists());

    Ledger::open(&root).unwrap();
    let ledger = Ledger::open_existing(&root).unwrap();
    assert!(ledger.tenants().unwrap().is_empty());
}

#[test]
fn open_usage_creates_the_file_with_mode_0644_and_its_exact_size() {
    let (_dir, ledger) = ledger();
    let t = tenant("team-a");
    let usage = ledger.open_usage(&t).unwrap();
    let path = ledger.usage_path(&t);
    assert_eq!(usage.path(), path);
    assert_eq!(path, ledger.dir().join("tenants/team-a/usage"));
    assert_eq!(mode(&path), 0o644);
    assert_eq!(mode(&ledger.tenant_dir(&t)), 0o755);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        layout::USAGE_FILE_SIZE as u64
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"GPUSLUSE");
    // Only the usage file: no temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(ledger.tenant_dir(&t))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["usage"]);
}

#[test]
fn two_opens_of_one_usage_file_share_its_counters() {
    let (_dir, ledger) = ledger();
    let t = tenant("team-a");
    let a = ledger.open_usage(&t).unwrap();
    let b = ledger.open_usage(&t).unwrap();
    let ia = a.register_gpu(&gpu(1)).unwrap();
    assert_eq!(b.gpu_index(&gpu(1)), Some(ia));
    let sa = a.claim_slot().unwrap();
    let sb = b.claim_slot().unwrap();
    assert_ne!(sa.index(), sb.index());
    sa.try_reserve(ia, 6 * MIB, 10 * MIB).unwrap();
    assert_eq!(b.memory_used(ia), 6 * MIB);
    assert_eq!(
        sb.try_reserve(ia, 5 * MIB, 10 * MIB),
        Err(OverLimit {
            used: 6 * MIB,
            requested: 5 * MIB,
            limit: 10 * MIB
        })
    );
    sb.try_reserve(ia, 4 * MIB, 10 * MIB).unwrap();
    assert_eq!(a.memory_used(ia), 10 * MIB);
    assert_eq!((sa.held(ia), sb.held(ia)), (6 * MIB, 4 * MIB));
}

#[test]
fn reopening_a_usage_file_keeps_what_it_holds() {
    let (_dir, ledger) = ledger();
    let t = tenant("team-a");
    let usage = ledger.open_usage(&t).unwrap();
    let i = usage.register_gpu(&gpu(3)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, MIB, u64::MAX).unwrap();
    let again = ledger.open_usage(&t).unwrap();
    assert_eq!(again.gpu_index(&gpu(3)), Some(i));
    assert_eq!(again.memory_used(i), MIB);
}

#[test]
fn register_gpu_is_idempotent() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    assert_eq!(usage.gpu_index(&gpu(1)), None);
    let a = usage.register_gpu(&gpu(1)).unwrap();
    let b = usage.register_gpu(&gpu(2)).unwrap();
    assert_ne!(a, b);
    assert_eq!(usage.register_gpu(&gpu(1)).unwrap(), a);
    assert_eq!(usage.gpu_index(&gpu(2)), Some(b));
    assert_eq!(usage.gpus(), vec![(a, gpu(1)), (b, gpu(2))]);
}

#[test]
fn register_gpu_from_many_threads_gives_one_index_per_uuid() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let handles: Vec<_> = (0..4).map(|_| ledger.open_usage(&t).unwrap()).collect();
    let results: Vec<Vec<(GpuUuid, GpuIndex)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16u8)
            .map(|n| {
                let usage = &handles[usize::from(n) % handles.len()];
                s.spawn(move || {
                    (0..12u8)
                        .map(|k| {
                            let u = gpu((k + n) % 12);
                            (u, usage.register_gpu(&u).unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut seen: HashMap<GpuUuid, GpuIndex> = HashMap::new();
    for (u, i) in results.into_iter().flatten() {
        assert_eq!(*seen.entry(u).or_insert(i), i, "{u} got two indexes");
    }
    assert_eq!(seen.len(), 12);
    let mut indexes: Vec<_> = seen.values().map(|i| i.0).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), 12, "no two GPUs share an index");
    assert_eq!(handles[0].gpus().len(), 12);
}

#[test]
fn full_gpu_table_is_an_error_naming_the_file() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    for n in 0..MAX_GPUS {
        usage.register_gpu(&gpu(u8::try_from(n).unwrap())).unwrap();
    }
    let err = usage.register_gpu(&gpu(200)).unwrap_err();
    assert!(
        matches!(&err, LedgerError::GpuTableFull { max: MAX_GPUS, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&ledger.usage_path(&t).display().to_string())
    );
    // Registered GPUs still resolve.
    assert_eq!(
        usage.register_gpu(&gpu(5)).unwrap(),
        usage.gpu_index(&gpu(5)).unwrap()
    );
}

#[test]
fn claimed_slot_is_occupied_live_and_carries_this_pid() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 3, 10).unwrap();
    let slots = usage.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].index, slot.index());
    assert_eq!(slots[0].pid, std::process::id());
    assert!(slots[0].live);
    assert!(slots[0].claimed_unix_ms > 1_600_000_000_000);
    assert_eq!(slots[0].memory_bytes, vec![(i, 3)]);
    assert!(Arc::ptr_eq(slot.usage_file(), &usage));
}

#[test]
fn slots_full_after_1024_live_claims() {
    // Each claim holds a descriptor of its own: more than a default soft limit of 1024.
    common::raise_open_file_limit(MAX_SLOTS as u64 + 64);
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    let held: Vec<_> = (0..MAX_SLOTS)
        .map(|_| usage.claim_slot().unwrap())
        .collect();
    let mut indexes: Vec<_> = held.iter().map(|s| s.index()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..1024).collect::<Vec<u32>>());

    let err = usage.claim_slot().unwrap_err();
    assert!(
        matches!(&err, LedgerError::SlotsFull { max: MAX_SLOTS, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&ledger.usage_path(&t).display().to_string())
    );
    // Another handle (as another process would) is refused too.
    assert!(matches!(
        ledger.open_usage(&t).unwrap().claim_slot(),
        Err(LedgerError::SlotsFull { .. })
    ));

    drop(held);
    usage.claim_slot().unwrap();
}

#[test]
fn dropped_slot_gives_back_its_memory_and_its_place() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    let index = slot.index();
    slot.try_reserve(i, 8 * MIB, u64::MAX).unwrap();
    drop(slot);
    assert_eq!(usage.memory_used(i), 0);
    assert!(usage.slots().is_empty());
    assert_eq!(usage.claim_slot().unwrap().index(), index);
}

#[test]
fn gpu_time_of_a_dropped_slot_stays_counted_as_retired() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let a = usage.claim_slot().unwrap();
    let b = usage.claim_slot().unwrap();
    a.add_gpu_time(i, 500);
    b.add_gpu_time(i, 70);
    assert_eq!((a.gpu_time_ns(i), usage.gpu_time_ns(i)), (500, 570));
    drop(a);
    assert_eq!(usage.gpu_time_ns(i), 570);
    assert_eq!(
        ledger.snapshot_usage(&tenant("t")).unwrap().gpu_time_ns(i),
        570
    );
}

#[test]
fn reserve_over_the_limit_is_refused_with_what_others_hold() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 60, 100).unwrap();
    assert_eq!(
        slot.try_reserve(i, 41, 100),
        Err(OverLimit {
            used: 60,
            requested: 41,
            limit: 100
        })
    );
    assert_eq!(slot.held(i), 60, "a refusal leaves nothing behind");
    slot.try_reserve(i, 40, 100).unwrap();
    assert_eq!(usage.memory_used(i), 100, "exactly at the limit is allowed");
    assert!(slot.try_reserve(i, 1, 100).is_err());
}

#[test]
fn request_larger_than_the_limit_is_refused_without_touching_counters() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    let err = slot.try_reserve(i, u64::MAX, 1000).unwrap_err();
    assert_eq!((err.used, err.requested), (0, u64::MAX));
    slot.try_reserve(i, 10, u64::MAX).unwrap();
    // Even an unlimited quota cannot make the counter wrap.
    assert!(slot.try_reserve(i, u64::MAX, u64::MAX).is_err());
    assert_eq!(slot.held(i), 10);
}

#[test]
fn release_stops_at_zero() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 5, 100).unwrap();
    slot.release(i, 7);
    assert_eq!(slot.held(i), 0);
    assert_eq!(usage.memory_used(i), 0);
}

#[test]
fn gpu_index_outside_the_table_reads_zero_and_writes_nothing() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let slot = usage.claim_slot().unwrap();
    for bad in [GpuIndex(16), GpuIndex(1000), GpuIndex(u32::MAX)] {
        assert_eq!(
            slot.try_reserve(bad, 1, u64::MAX),
            Err(OverLimit {
                used: 0,
                requested: 1,
                limit: u64::MAX
            })
        );
        slot.release(bad, 1);
        slot.add_gpu_time(bad, 1);
        usage.record_oom(bad);
        assert_eq!(slot.held(bad), 0);
        assert_eq!(slot.gpu_time_ns(bad), 0);
        assert_eq!(usage.memory_used(bad), 0);
        assert_eq!(usage.gpu_time_ns(bad), 0);
        assert_eq!(usage.oom_refusals(bad), 0);
    }
    let snap = ledger.snapshot_usage(&tenant("t")).unwrap();
    assert_eq!(snap.memory_used(GpuIndex(99)), 0);
    assert_eq!(snap.oom_refusals(GpuIndex(99)), 0);
}

#[test]
fn oom_refusals_are_counted_per_gpu() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let a = usage.register_gpu(&gpu(1)).unwrap();
    let b = usage.register_gpu(&gpu(2)).unwrap();
    usage.record_oom(a);
    usage.record_oom(a);
    usage.record_oom(b);
    assert_eq!((usage.oom_refusals(a), usage.oom_refusals(b)), (2, 1));
}

#[test]
fn reclaim_dead_leaves_live_slots_of_this_process_alone() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slots: Vec<_> = (0..3).map(|_| usage.claim_slot().unwrap()).collect();
    for s in &slots {
        s.try_reserve(i, MIB, u64::MAX).unwrap();
    }
    assert_eq!(usage.reclaim_dead().unwrap(), ReclaimReport::default());
    assert_eq!(usage.memory_used(i), 3 * MIB);
    assert!(usage.slots().iter().all(|s| s.live));
}

#[test]
fn threads_on_two_handles_sharing_a_tight_limit_never_exceed_it() {
    const THREADS: u64 = 64;
    const ITERATIONS: u64 = 2000;
    const SLOTS_PER_HANDLE: usize = 4;
    const LIMIT: u64 = 10 * MIB;
    // Held throughout by one more slot: the threads race for the 3 MiB left with requests of
    // 1 to 4 MiB, so 4 MiB requests are always refused and the others clash often.
    const BASE: u64 = 7 * MIB;
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    // Two opens, as two processes would do.
    let handles = [
        ledger.open_usage(&t).unwrap(),
        ledger.open_usage(&t).unwrap(),
    ];
    let i = handles[0].register_gpu(&gpu(1)).unwrap();
    assert_eq!(handles[1].register_gpu(&gpu(1)).unwrap(), i);
    let slots: Vec<_> = handles
        .iter()
        .flat_map(|h| (0..SLOTS_PER_HANDLE).map(|_| h.claim_slot().unwrap()))
        .collect();
    let base = handles[1].claim_slot().unwrap();
    base.try_reserve(i, BASE, LIMIT).unwrap();

    // Counts a reservation only between its success and its release, so its value is never
    // more than what is committed at that instant.
    let witness = AtomicU64::new(0);
    let (granted, refused, max_seen) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|n| {
                let slot = &slots[usize::try_from(n).unwrap() % slots.len()];
                let witness = &witness;
                s.spawn(move || {
                    let (mut granted, mut refused, mut max_seen) = (0u64, 0u64, 0u64);
                    for k in 0..ITERATIONS {
                        let bytes = (1 + (n + k) % 4) * MIB;
                        if slot.try_reserve(i, bytes, LIMIT).is_ok() {
                            granted += 1;
                            let now = witness.fetch_add(bytes, SeqCst) + bytes;
                            max_seen = max_seen.max(now);
                            std::hint::spin_loop();
                            witness.fetch_sub(bytes, SeqCst);
                            slot.release(i, bytes);
                        } else {
                            refused += 1;
                        }
                    }
                    (granted, refused, max_seen)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0, 0), |(g, r, m), (g2, r2, m2)| {
                (g + g2, r + r2, m.max(m2))
            })
    });
    assert!(
        BASE + max_seen <= LIMIT,
        "committed {} > limit {LIMIT}",
        BASE + max_seen
    );
    assert!(granted > 0);
    assert!(
        refused >= THREADS * ITERATIONS / 4,
        "every 4 MiB request is refused"
    );
    assert_eq!(granted + refused, THREADS * ITERATIONS);
    drop(base);
    assert_eq!(handles[0].memory_used(i), 0, "everything was given back");
    assert_eq!(handles[1].memory_used(i), 0);
    assert!(slots.iter().all(|s| s.held(i) == 0));
}

#[test]
fn snapshot_reads_what_the_live_file_holds() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    let a = usage.register_gpu(&gpu(1)).unwrap();
    let b = usage.register_gpu(&gpu(2)).unwrap();
    let s1 = usage.claim_slot().unwrap();
    let s2 = usage.claim_slot().unwrap();
    s1.try_reserve(a, 100, u64::MAX).unwrap();
    s2.try_reserve(a, 20, u64::MAX).unwrap();
    s2.try_reserve(b, 3, u64::MAX).unwrap();
    usage.record_oom(b);

    let snap = ledger.snapshot_usage(&t).unwrap();
    assert_eq!(snap.path(), usage.path());
    assert_eq!(snap.gpus(), usage.gpus());
    assert_eq!(snap.gpu_index(&gpu(2)), Some(b));
    assert_eq!((snap.memory_used(a), snap.memory_used(b)), (120, 3));
    assert_eq!((snap.oom_refusals(a), snap.oom_refusals(b)), (0, 1));
    assert_eq!(snap.slots(), usage.slots());
    assert!(snap.slots().iter().all(|s| s.live));

    // A copy: later changes do not show.
    s1.release(a, 100);
    assert_eq!(snap.memory_used(a), 120);
}

#[test]
fn snapshot_of_a_tenant_without_usage_is_not_found() {
    let (_dir, ledger) = ledger();
    let err = ledger.snapshot_usage(&tenant("nobody")).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[test]
fn tenants_are_sorted_and_invalid_entries_skipped() {
    let (_dir, ledger) = ledger();
    for t in ["zeta", "alpha", "Mid"] {
        ledger.open_usage(&tenant(t)).unwrap();
    }
    let tenants_dir = ledger.dir().join("tenants");
    std::fs::create_dir(tenants_dir.join(".hidden")).unwrap();
    std::fs::create_dir(tenants_dir.join("bad name")).unwrap();
    std::fs::write(tenants_dir.join("a-file"), b"").unwrap();
    let names: Vec<_> = ledger
        .tenants()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(names, ["Mid", "alpha", "zeta"]);
}

#[test]
fn remove_tenant_deletes_its_files_and_is_idempotent() {
    let (_dir, ledger) = ledger();
    let t = tenant("gone");
    let usage = ledger.open_usage(&t).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    ledger.write_quota(&t, &Default::default()).unwrap();
    ledger.remove_tenant(&t).unwrap();
    assert!(!ledger.tenant_dir(&t).exists());
    assert!(ledger.tenants().unwrap().is_empty());
    ledger.remove_tenant(&t).unwrap();
    // A process that still has the file keeps working on its now nameless copy.
    slot.try_reserve(i, 1, 10).unwrap();
    assert_eq!(usage.memory_used(i), 1);
}

#[test]
fn claim_after_the_file_was_replaced_is_refused() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    ledger.remove_tenant(&t).unwrap();
    ledger.open_usage(&t).unwrap();
    // Through /proc the claim still reaches the original (unlinked) file, which is fine;
    // it must never lock a byte of the new file while counting in the old one.
    match usage.claim_slot() {
        Ok(slot) => {
            let fresh = ledger.open_usage(&t).unwrap();
            assert!(
                fresh.slots().is_empty(),
                "claimed in the new file: {slot:?}"
            );
        }
        Err(e) => assert!(matches!(e, LedgerError::Replaced { .. }), "{e:?}"),
    }
}

#[test]
fn unasked_charges_count_even_past_the_limit_and_block_reservations() {
    let (_dir, ledger) = ledger();
    let usage = ledger.open_usage(&tenant("t")).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 80, 100).unwrap();
    slot.charge(i, 50);
    assert_eq!(usage.memory_used(i), 130);
    assert!(slot.try_reserve(i, 1, 100).is_err());
    slot.release(i, 50);
    slot.try_reserve(i, 20, 100).unwrap();
    assert_eq!(usage.memory_used(i), 100);
}

/// An old CDI spec mounted the whole ledger directory, lock files included, into every
/// container: there another tenant can hold a lock it should never reach. A registration
/// then fails, naming the lock, instead of hanging the program's first CUDA call.
#[test]
fn a_gpu_registration_behind_a_held_table_lock_fails_instead_of_hanging() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    let holder = ledger.open_locks(&t).unwrap().handle().unwrap();
    holder
        .lock_wait(
            gpuslice_ledger::layout::lock_bytes::GPU_TABLE,
            gpuslice_ledger::LockKind::Exclusive,
        )
        .unwrap();
    let start = std::time::Instant::now();
    let err = usage.register_gpu(&gpu(1)).unwrap_err();
    assert!(matches!(err, LedgerError::LockHeld { .. }), "{err:?}");
    assert!(err.to_string().contains("GPU table"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    drop(holder);
    usage.register_gpu(&gpu(1)).unwrap();
}

/// Who is alive is asked of the lock file alone: exact whatever the usage file says, and
/// whichever slots are held.
#[test]
fn live_processes_are_counted_from_the_lock_file_alone() {
    common::raise_open_file_limit(512);
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    assert_eq!(ledger.live_processes(&t).unwrap(), 0);
    let mut held: Vec<_> = (0..300).map(|_| usage.claim_slot().unwrap()).collect();
    // Drop every third, scattered through the range.
    let mut i = 0;
    held.retain(|_| {
        i += 1;
        i % 3 != 0
    });
    assert_eq!(ledger.live_processes(&t).unwrap(), held.len());
    // Garbage in the usage file (its header here; the length kept, since this process maps
    // it) changes nothing.
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(ledger.usage_path(&t))
            .unwrap(),
        b"garbage!",
        0,
    )
    .unwrap();
    assert!(ledger.snapshot_usage(&t).is_err());
    assert_eq!(ledger.live_processes(&t).unwrap(), held.len());
    drop(held);
    assert_eq!(ledger.live_processes(&t).unwrap(), 0);
    assert_eq!(ledger.live_processes(&tenant("nobody")).unwrap(), 0);
}
