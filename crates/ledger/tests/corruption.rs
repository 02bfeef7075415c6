//! Bad data is refused, never trusted: every kind of damaged or foreign file is refused with
//! an error that names the file and says what to do, and garbage inside a valid header never
//! makes an index go out of bounds.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{gpu, ledger, tenant};
use gpuslice_ledger::layout::{self, header};
use gpuslice_ledger::{GpuIndex, Ledger, LedgerError, TenantName, TenantQuota};

/// Overwrites bytes of `path` at `offset`.
fn poke(path: &Path, offset: usize, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset as u64).unwrap();
}

/// Sets the length of `path`.
fn resize(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// A ledger with a valid usage file (and no process holding it open).
fn with_usage() -> (tempfile::TempDir, Ledger, TenantName) {
    let (dir, ledger) = ledger();
    let t = tenant("victim");
    let usage = ledger.open_usage(&t).unwrap();
    usage.register_gpu(&gpu(1)).unwrap();
    (dir, ledger, t)
}

/// A ledger with a valid quota file.
fn with_quota() -> (tempfile::TempDir, Ledger, TenantName) {
    let (dir, ledger) = ledger();
    let t = tenant("victim");
    ledger.write_quota(&t, &TenantQuota::default()).unwrap();
    (dir, ledger, t)
}

/// Checks that `err` refuses `path` as corrupt, saying `reason` and what to do.
fn assert_refused(err: LedgerError, path: &Path, kind: &str, reason: &str) {
    let msg = err.to_string();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!(
            "{} is not a valid gpuslice {kind} file: ",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.contains(reason), "expected {reason:?} in: {msg}");
    assert!(
        msg.ends_with("remove it or point GPUSLICE_DIR elsewhere"),
        "{msg}"
    );
}

/// Checks that opening, snapshotting and (for usage) re-creating all refuse the usage file,
/// and that the refusal leaves the file as it was.
fn assert_usage_refused(ledger: &Ledger, t: &TenantName, reason: &str) {
    let path = ledger.usage_path(t);
    let before = std::fs::read(&path).unwrap();
    assert_refused(ledger.open_usage(t).unwrap_err(), &path, "usage", reason);
    assert_refused(
        ledger.snapshot_usage(t).unwrap_err(),
        &path,
        "usage",
        reason,
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refused file is left alone"
    );
}

fn assert_quota_refused(ledger: &Ledger, t: &TenantName, reason: &str) {
    let path = ledger.quota_path(t);
    assert_refused(ledger.read_quota(t).unwrap_err(), &path, "quota", reason);
    assert_refused(
        ledger.write_quota(t, &TenantQuota::default()).unwrap_err(),
        &path,
        "quota",
        reason,
    );
}

#[test]
fn truncated_usage_file_is_refused() {
    let (_d, ledger, t) = with_usage();
    resize(&ledger.usage_path(&t), 1000);
    assert_usage_refused(
        &ledger,
        &t,
        &format!(
            "1000 bytes long but its header records {}",
            layout::USAGE_FILE_SIZE
        ),
    );
}

#[test]
fn usage_file_shorter_than_the_header_is_refused() {
    let (_d, ledger, t) = with_usage();
    resize(&ledger.usage_path(&t), 10);
    assert_usage_refused(&ledger, &t, "shorter than the 64-byte header");
}

#[test]
fn empty_usage_file_is_refused_not_recreated() {
    let (_d, ledger, t) = with_usage();
    resize(&ledger.usage_path(&t), 0);
    assert_usage_refused(&ledger, &t, "it is 0 bytes long");
}

#[test]
fn extended_usage_file_is_refused() {
    let (_d, ledger, t) = with_usage();
    resize(
        &ledger.usage_path(&t),
        layout::USAGE_FILE_SIZE as u64 + 4096,
    );
    assert_usage_refused(&ledger, &t, "(truncated or extended)");
}

#[test]
fn usage_file_with_bad_magic_is_refused() {
    let (_d, ledger, t) = with_usage();
    poke(&ledger.usage_path(&t), header::MAGIC, b"NOTMAGIC");
    assert_usage_refused(&ledger, &t, "bad magic NOTMAGIC, expected GPUSLUSE");
}

#[test]
fn quota_file_given_as_usage_file_is_refused() {
    let (_d, ledger, t) = with_quota();
    std::fs::copy(ledger.quota_path(&t), ledger.usage_path(&t)).unwrap();
    assert_usage_refused(&ledger, &t, "it is a gpuslice quota file (magic GPUSLQTA)");
}

#[test]
fn usage_file_given_as_quota_file_is_refused() {
    let (_d, ledger, t) = with_usage();
    std::fs::copy(ledger.usage_path(&t), ledger.quota_path(&t)).unwrap();
    assert_quota_refused(&ledger, &t, "it is a gpuslice usage file (magic GPUSLUSE)");
}

#[test]
fn unknown_layout_version_is_refused() {
    let (_d, ledger, t) = with_usage();
    poke(
        &ledger.usage_path(&t),
        header::LAYOUT_VERSION,
        &1u32.to_le_bytes(),
    );
    assert_usage_refused(&ledger, &t, "unknown layout_version 1");

    let (_d, ledger, t) = with_quota();
    poke(
        &ledger.quota_path(&t),
        header::LAYOUT_VERSION,
        &0u32.to_le_bytes(),
    );
    assert_quota_refused(&ledger, &t, "unknown layout_version 0");
}

#[test]
fn wrong_header_size_is_refused() {
    let (_d, ledger, t) = with_usage();
    poke(
        &ledger.usage_path(&t),
        header::HEADER_SIZE,
        &128u32.to_le_bytes(),
    );
    assert_usage_refused(&ledger, &t, "header_size is 128, expected 64");
}

#[test]
fn recorded_file_size_that_differs_from_the_layout_is_refused() {
    let (_d, ledger, t) = with_usage();
    poke(
        &ledger.usage_path(&t),
        header::FILE_SIZE,
        &99_999u64.to_le_bytes(),
    );
    assert_usage_refused(
        &ledger,
        &t,
        &format!(
            "records file_size 99999, expected {}",
            layout::USAGE_FILE_SIZE
        ),
    );
}

#[test]
fn every_wrong_geometry_field_is_refused_by_name() {
    let usage_cases: [(usize, &[u8], &str); 6] = [
        (
            header::MAX_GPUS,
            &32u32.to_le_bytes(),
            "max_gpus is 32, expected 16",
        ),
        (
            header::MAX_SLOTS,
            &128u32.to_le_bytes(),
            "max_slots is 128, expected 1024",
        ),
        (
            header::TABLE_OFFSET,
            &72u64.to_le_bytes(),
            "table_offset is 72, expected 64",
        ),
        (
            header::SLOT_OFFSET,
            &1024u64.to_le_bytes(),
            "slot_offset is 1024, expected 1216",
        ),
        (
            header::ENTRY_SIZE,
            &48u32.to_le_bytes(),
            "entry_size is 48, expected 64",
        ),
        (
            header::SLOT_SIZE,
            &512u32.to_le_bytes(),
            "slot_size is 512, expected 672",
        ),
    ];
    for (offset, bytes, reason) in usage_cases {
        let (_d, ledger, t) = with_usage();
        poke(&ledger.usage_path(&t), offset, bytes);
        assert_usage_refused(&ledger, &t, reason);
    }
    let quota_cases: [(usize, &[u8], &str); 3] = [
        (
            header::MAX_SLOTS,
            &64u32.to_le_bytes(),
            "max_slots is 64, expected 0",
        ),
        (
            header::TABLE_OFFSET,
            &64u64.to_le_bytes(),
            "table_offset is 64, expected 96",
        ),
        (
            header::SLOT_SIZE,
            &544u32.to_le_bytes(),
            "slot_size is 544, expected 0",
        ),
    ];
    for (offset, bytes, reason) in quota_cases {
        let (_d, ledger, t) = with_quota();
        poke(&ledger.quota_path(&t), offset, bytes);
        assert_quota_refused(&ledger, &t, reason);
    }
}

#[test]
fn truncated_quota_file_is_refused() {
    let (_d, ledger, t) = with_quota();
    resize(&ledger.quota_path(&t), 96);
    assert_quota_refused(&ledger, &t, "96 bytes long but its header records 1120");
}

#[test]
fn quota_entries_with_impossible_values_are_refused() {
    let entry = layout::QUOTA_TABLE_OFFSET + 2 * layout::QUOTA_ENTRY_SIZE;
    let (_d, ledger, t) = with_quota();
    poke(&ledger.quota_path(&t), entry + 16, &7u32.to_le_bytes());
    assert_refused(
        ledger.read_quota(&t).unwrap_err(),
        &ledger.quota_path(&t),
        "quota",
        "GPU entry 2: in_use is 7, expected 0 or 1",
    );

    let (_d, ledger, t) = with_quota();
    poke(
        &ledger.quota_path(&t),
        layout::QUOTA_DEFAULTS_OFFSET + 16,
        &9u32.to_le_bytes(),
    );
    assert_refused(
        ledger.read_quota(&t).unwrap_err(),
        &ledger.quota_path(&t),
        "quota",
        "defaults: priority is 9, expected 0 to 3",
    );
}

#[test]
fn directory_in_place_of_the_usage_file_is_refused() {
    let (_d, ledger) = ledger();
    let t = tenant("t");
    std::fs::create_dir_all(ledger.usage_path(&t)).unwrap();
    let err = ledger.snapshot_usage(&t).unwrap_err();
    // Opening a directory for reading works; it is then refused as not a regular file.
    assert_refused(err, &ledger.usage_path(&t), "usage", "not a regular file");
    assert!(ledger.open_usage(&t).is_err());
}

#[test]
fn snapshot_of_a_file_truncated_while_mapped_is_an_error_not_a_crash() {
    let (_d, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 5, 10).unwrap();
    // The tenant (which may write its own file) truncates it under everyone's feet.
    resize(&ledger.usage_path(&t), 100);
    let err = ledger.snapshot_usage(&t).unwrap_err();
    assert_refused(err, &ledger.usage_path(&t), "usage", "100 bytes long");
    // Restore the length before `usage` touches its mapping again (past the end is SIGBUS).
    resize(&ledger.usage_path(&t), layout::USAGE_FILE_SIZE as u64);
    drop(slot);
}

#[test]
fn garbage_in_the_tables_is_bounded_not_trusted() {
    let (_d, ledger, t) = with_usage();
    let path = ledger.usage_path(&t);
    // Every slot, bitmap word and GPU entry filled with 0xff; the header left valid.
    let table = vec![0xffu8; layout::USAGE_FILE_SIZE - layout::HEADER_SIZE];
    poke(&path, layout::HEADER_SIZE, &table);
    poke(&path, header::WORD, &u64::MAX.to_le_bytes());
    let slots = gpuslice_ledger::MAX_SLOTS;

    let usage = ledger.open_usage(&t).unwrap();
    assert!(
        usage.gpus().is_empty(),
        "state 0xffffffff is not 'registered'"
    );
    assert_eq!(
        usage.memory_used(GpuIndex(0)),
        u64::MAX,
        "sums saturate, never wrap"
    );
    let snap = ledger.snapshot_usage(&t).unwrap();
    assert_eq!(snap.memory_used(GpuIndex(0)), u64::MAX);
    assert_eq!(snap.slots().len(), slots);

    // Nobody holds any slot's lock: they all belonged to dead processes.
    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.slots as usize, slots);
    assert_eq!(usage.memory_used(GpuIndex(0)), 0);
    let slot = usage.claim_slot().unwrap();
    assert_eq!(slot.held(GpuIndex(0)), 0);
    // The GPU table holds only corrupt entries, none of them free.
    assert!(matches!(
        usage.register_gpu(&gpu(1)),
        Err(LedgerError::GpuTableFull { .. })
    ));
}

/// The tenant's lock file, damaged: every open of the tenant's usage refuses it.
fn assert_lock_file_refused(ledger: &Ledger, t: &TenantName, reason: &str) {
    let path = ledger.lock_path(t);
    assert_refused(ledger.open_usage(t).unwrap_err(), &path, "lock", reason);
    assert_refused(ledger.open_locks(t).unwrap_err(), &path, "lock", reason);
}

#[test]
fn damaged_lock_file_is_refused_not_recreated() {
    let (_d, ledger, t) = with_usage();
    poke(&ledger.lock_path(&t), header::MAGIC, b"NOTMAGIC");
    assert_lock_file_refused(&ledger, &t, "bad magic NOTMAGIC, expected GPUSLLCK");

    let (_d, ledger, t) = with_usage();
    std::fs::copy(ledger.usage_path(&t), ledger.lock_path(&t)).unwrap();
    assert_lock_file_refused(&ledger, &t, "it is a gpuslice usage file (magic GPUSLUSE)");

    let (_d, ledger, t) = with_usage();
    resize(&ledger.lock_path(&t), 0);
    assert_lock_file_refused(&ledger, &t, "it is 0 bytes long");

    let (_d, ledger, t) = with_usage();
    let lock = ledger.lock_path(&t);
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(ledger.usage_path(&t), &lock).unwrap();
    assert_lock_file_refused(&ledger, &t, "it is a symbolic link");
}

#[test]
fn reclaim_dead_empties_a_dirty_slot_left_outside_the_bitmap() {
    let (_d, ledger, t) = with_usage();
    let path = ledger.usage_path(&t);
    // Slot 0 holds memory on GPU 0 but its bit is clear (a process died mid-claim).
    let rec = layout::USAGE_SLOT_OFFSET + layout::SLOT_GPUS_OFFSET;
    poke(&path, rec, &12345u64.to_le_bytes());
    let usage = ledger.open_usage(&t).unwrap();
    assert_eq!(
        usage.memory_used(GpuIndex(0)),
        0,
        "outside the bitmap: not counted"
    );
    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.slots, 1);
    assert_eq!(report.bytes, vec![(GpuIndex(0), 12345)]);
}

#[test]
fn a_tenant_that_damages_its_own_lock_file_does_not_make_its_dead_look_alive() {
    let (_d, ledger) = ledger();
    let t = tenant("t");
    let usage = ledger.open_usage(&t).unwrap();
    let i = usage.register_gpu(&gpu(1)).unwrap();
    let slot = usage.claim_slot().unwrap();
    slot.try_reserve(i, 5, 10).unwrap();
    slot.close_as_if_dead();
    // The tenant may write its own lock file: garbage there does not change who holds locks.
    poke(&ledger.lock_path(&t), header::MAGIC, b"GARBAGE!");
    let snap = ledger.snapshot_usage(&t).unwrap();
    assert_eq!(snap.slots().len(), 1);
    assert!(
        !snap.slots()[0].live,
        "an observer still sees the process is gone"
    );
}

#[test]
fn grown_usage_and_lock_files_are_cut_back_and_files_of_their_size_left_alone() {
    let (_dir, ledger, t) = with_usage();
    assert_eq!(ledger.cut_back_grown_files(&t).unwrap(), []);
    let usage = layout::USAGE_FILE_SIZE as u64;
    let lock = layout::LOCK_FILE_SIZE as u64;
    resize(&ledger.usage_path(&t), usage * 3);
    resize(&ledger.lock_path(&t), 1 << 20);
    assert_eq!(
        ledger.cut_back_grown_files(&t).unwrap(),
        [
            (ledger.usage_path(&t), usage * 3),
            (ledger.lock_path(&t), 1 << 20)
        ]
    );
    for (path, len) in [(ledger.usage_path(&t), usage), (ledger.lock_path(&t), lock)] {
        assert_eq!(std::fs::metadata(path).unwrap().len(), len);
    }
    // Whole again: its processes can open it and claim a slot.
    drop(ledger.open_usage(&t).unwrap().claim_slot().unwrap());
    // A tenant without files has nothing to cut.
    assert_eq!(ledger.cut_back_grown_files(&tenant("absent")).unwrap(), []);
}
