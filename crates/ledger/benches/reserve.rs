//! The allocation hot path: what the shim adds to every cuMemAlloc/cuMemFree pair (one
//! `try_reserve` + one `release`), and the `memory_used` read behind cuMemGetInfo, with 1 and
//! with 8 occupied slots.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gpuslice_ledger::{GpuIndex, GpuUuid, Ledger, ProcessSlot, TenantName, UsageFile};

const LIMIT: u64 = 80 << 30;
const REQUEST: u64 = 2 << 20;

/// A usage file with `occupied` live slots, each holding 1 GiB; returns the first slot.
fn setup(
    occupied: usize,
) -> (
    tempfile::TempDir,
    Arc<UsageFile>,
    GpuIndex,
    ProcessSlot,
    Vec<ProcessSlot>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(dir.path()).expect("ledger");
    let usage = ledger
        .open_usage(&TenantName::new("bench").expect("name"))
        .expect("usage file");
    let gpu = usage.register_gpu(&GpuUuid([7; 16])).expect("register");
    let slot = usage.claim_slot().expect("slot");
    let others: Vec<_> = (1..occupied)
        .map(|_| usage.claim_slot().expect("slot"))
        .collect();
    for s in std::iter::once(&slot).chain(&others) {
        s.try_reserve(gpu, 1 << 30, LIMIT).expect("reserve");
    }
    (dir, usage, gpu, slot, others)
}

fn hot_path(c: &mut Criterion) {
    for occupied in [1, 8] {
        let (_dir, usage, gpu, slot, _others) = setup(occupied);
        c.bench_function(&format!("try_reserve+release/{occupied}_slots"), |b| {
            b.iter(|| {
                slot.try_reserve(black_box(gpu), black_box(REQUEST), black_box(LIMIT))
                    .expect("fits");
                slot.release(black_box(gpu), black_box(REQUEST));
            })
        });
        c.bench_function(&format!("memory_used/{occupied}_slots"), |b| {
            b.iter(|| black_box(usage.memory_used(black_box(gpu))))
        });
    }
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
