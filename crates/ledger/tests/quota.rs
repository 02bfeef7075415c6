//! Quota files: written whole the first time, updated live in place afterwards, refused when
//! they cannot hold what was asked.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use common::{gpu, ledger, tenant};
use gpuslice_ledger::{LedgerError, Limits, MAX_GPUS, Priority, TenantQuota, layout};

const GIB: u64 = 1 << 30;

fn limits(memory_gib: u64, share: u32) -> Limits {
    Limits {
        memory_bytes: Some(memory_gib * GIB),
        compute_share_permille: Some(share),
        compute_limit_permille: None,
        priority: Some(Priority::Normal),
    }
}

#[test]
fn quota_round_trips_defaults_and_per_gpu_entries() {
    let (_dir, ledger) = ledger();
    let t = tenant("team-a");
    let q = TenantQuota {
        defaults: Limits {
            memory_bytes: Some(4 * GIB),
            compute_share_permille: Some(250),
            compute_limit_permille: Some(300),
            priority: Some(Priority::High),
        },
        per_gpu: vec![
            (gpu(1), limits(8, 500)),
            (
                gpu(2),
                Limits {
                    priority: Some(Priority::Low),
                    ..Limits::default()
                },
            ),
        ],
    };
    ledger.write_quota(&t, &q).unwrap();
    let file = ledger.read_quota(&t).unwrap().unwrap();
    assert_eq!(file.path(), ledger.quota_path(&t));
    assert_eq!(file.quota(), q);
    assert_eq!(file.defaults(), q.defaults);
    assert_eq!(file.limits_for(&gpu(1)), limits(8, 500));
    assert_eq!(
        file.limits_for(&gpu(2)).memory_bytes,
        None,
        "an entry replaces the defaults"
    );
    assert_eq!(
        file.limits_for(&gpu(9)),
        q.defaults,
        "a GPU without an entry gets the defaults"
    );
    assert_eq!(file.generation(), 0);
}

#[test]
fn unset_limits_read_back_as_unset() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    ledger.write_quota(&t, &TenantQuota::default()).unwrap();
    let file = ledger.read_quota(&t).unwrap().unwrap();
    assert_eq!(file.defaults(), Limits::default());
    // u64::MAX is how "unlimited" is stored, so it reads back as unlimited.
    let unlimited = TenantQuota {
        defaults: Limits {
            memory_bytes: Some(u64::MAX),
            ..Limits::default()
        },
        per_gpu: vec![],
    };
    ledger.write_quota(&t, &unlimited).unwrap();
    assert_eq!(file.defaults().memory_bytes, None);
}

#[test]
fn tenant_without_quota_file_reads_as_none() {
    let (_dir, ledger) = ledger();
    assert!(ledger.read_quota(&tenant("nobody")).unwrap().is_none());
    ledger.open_usage(&tenant("usage-only")).unwrap();
    assert!(ledger.read_quota(&tenant("usage-only")).unwrap().is_none());
}

#[test]
fn quota_update_is_seen_live_by_an_open_quota_file() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    ledger
        .write_quota(
            &t,
            &TenantQuota {
                defaults: limits(4, 100),
                per_gpu: vec![],
            },
        )
        .unwrap();
    let file = ledger.read_quota(&t).unwrap().unwrap();
    let before = file.generation();
    assert_eq!(file.limits_for(&gpu(1)).memory_bytes, Some(4 * GIB));

    let updated = TenantQuota {
        defaults: limits(2, 100),
        per_gpu: vec![(gpu(1), limits(6, 900))],
    };
    ledger.write_quota(&t, &updated).unwrap();
    assert!(file.generation() > before);
    assert_eq!(file.generation() % 2, 0, "even once the update is complete");
    assert_eq!(file.limits_for(&gpu(1)), limits(6, 900));
    assert_eq!(file.limits_for(&gpu(2)), limits(2, 100));

    // Entries removed by an update are gone.
    ledger.write_quota(&t, &TenantQuota::default()).unwrap();
    assert_eq!(file.quota(), TenantQuota::default());
    assert_eq!(file.generation(), before + 4);
}

#[test]
fn concurrent_readers_never_see_a_half_written_update() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    // Two quotas whose fields all differ; a reader must see one or the other, never a mix.
    let a = TenantQuota {
        defaults: limits(1, 100),
        per_gpu: (0..8).map(|n| (gpu(n), limits(10, 110))).collect(),
    };
    let b = TenantQuota {
        defaults: limits(2, 200),
        per_gpu: (8..16).map(|n| (gpu(n), limits(20, 220))).collect(),
    };
    ledger.write_quota(&t, &a).unwrap();
    let file = ledger.read_quota(&t).unwrap().unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in 0..400 {
                ledger
                    .write_quota(&t, if k % 2 == 0 { &b } else { &a })
                    .unwrap();
            }
            done.store(true, Relaxed);
        });
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Relaxed) {
                    let q = file.quota();
                    assert!(q == a || q == b, "torn read: {q:?}");
                    let l = file.limits_for(&gpu(3));
                    assert!(
                        l == limits(10, 110) || l == limits(2, 200),
                        "torn read: {l:?}"
                    );
                }
            });
        }
    });
    assert_eq!(file.quota(), a);
}

#[test]
fn too_many_gpu_limits_are_refused_and_nothing_is_written() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let q = TenantQuota {
        defaults: Limits::default(),
        per_gpu: (0..=MAX_GPUS)
            .map(|n| (gpu(u8::try_from(n).unwrap()), Limits::default()))
            .collect(),
    };
    let err = ledger.write_quota(&t, &q).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::TooManyGpuLimits {
                count: 17,
                max: 16,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&ledger.quota_path(&t).display().to_string())
    );
    assert!(ledger.read_quota(&t).unwrap().is_none());
}

#[test]
fn sixteen_gpu_limits_fit() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let q = TenantQuota {
        defaults: Limits::default(),
        per_gpu: (0..MAX_GPUS)
            .map(|n| (gpu(u8::try_from(n).unwrap()), limits(1 + n as u64, 1)))
            .collect(),
    };
    ledger.write_quota(&t, &q).unwrap();
    assert_eq!(ledger.read_quota(&t).unwrap().unwrap().quota(), q);
}

#[test]
fn the_same_gpu_listed_twice_is_refused() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    let q = TenantQuota {
        defaults: Limits::default(),
        per_gpu: vec![
            (gpu(1), limits(1, 1)),
            (gpu(2), limits(1, 1)),
            (gpu(1), limits(2, 2)),
        ],
    };
    let err = ledger.write_quota(&t, &q).unwrap_err();
    assert!(matches!(err, LedgerError::DuplicateGpuLimit { uuid, .. } if uuid == gpu(1)));
}

#[test]
fn permille_outside_1_to_1000_is_refused() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    for bad in [0, 1001] {
        let q = TenantQuota {
            defaults: Limits::default(),
            per_gpu: vec![(gpu(1), limits(1, bad))],
        };
        let err = ledger.write_quota(&t, &q).unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::InvalidLimit {
                    what: "compute_share_permille",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn quota_file_is_mode_0644_the_documented_size_and_leaves_no_temporary_files() {
    let (_dir, ledger) = ledger();
    let t = tenant("t");
    ledger.write_quota(&t, &TenantQuota::default()).unwrap();
    ledger.write_quota(&t, &TenantQuota::default()).unwrap();
    let path = ledger.quota_path(&t);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(meta.len(), layout::QUOTA_FILE_SIZE as u64);
    assert_eq!(&std::fs::read(&path).unwrap()[..8], b"GPUSLQTA");
    let names: Vec<_> = std::fs::read_dir(ledger.tenant_dir(&t))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["quota"]);
}

#[test]
fn write_quota_refuses_to_follow_a_symlink_planted_at_the_quota_path() {
    let (dir, ledger) = ledger();
    let t = tenant("t");
    std::fs::create_dir_all(ledger.tenant_dir(&t)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, vec![7u8; layout::QUOTA_FILE_SIZE]).unwrap();
    std::os::unix::fs::symlink(&victim, ledger.quota_path(&t)).unwrap();
    let err = ledger.write_quota(&t, &TenantQuota::default()).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        vec![7u8; layout::QUOTA_FILE_SIZE]
    );
}
