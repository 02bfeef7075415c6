//! Stream-ordered memory (`cuMemAllocAsync`, memory pools), end to end: the shim preloaded
//! into real processes over the simulated GPU, whose pools keep memory as a real driver's
//! do. A pool is charged what it holds on the GPU, so memory behind a queued free, or kept
//! past the pool's release threshold, stays charged until the pool gives it back.

mod util;

use std::time::Duration;

use util::*;

const SPIN_PTX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ptx/spin.ptx");

/// Two seconds of simulated kernel: far longer than the commands queued behind it take.
const LONG_KERNEL_NS: &str = "2000000000";

fn infos(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("info")).collect()
}

/// A free queued behind a long kernel gives nothing back until the stream reaches it: the
/// memory is still the program's (and the pool's), so another stream cannot have it.
#[test]
fn stream_ordered_free_keeps_the_charge_until_the_stream_reaches_it() {
    for path in ALL_PATHS {
        let node = Node::new();
        let out = run_ok(&mut node.probe(
            path,
            "a",
            Some("1Gi"),
            &[
                "module",
                SPIN_PTX,
                "async-on",
                "1",
                "512M",
                "spin-on",
                "1",
                LONG_KERNEL_NS,
                "free-async-on",
                "1",
                "async-on",
                "2",
                "512M",
                "info",
                "sync",
                "1",
                "info",
                "async-on",
                "2",
                "512M",
            ],
        ));
        let allocations: Vec<_> = out.lines().filter(|l| l.starts_with("async-on")).collect();
        assert_eq!(field(allocations[0], "rc"), 0, "{path:?}: {out}");
        assert_eq!(
            field(allocations[1], "rc"),
            2,
            "{path:?}: the queued free still holds its 512 MiB, no room for 512 more: {out}"
        );
        let infos = infos(&out);
        assert_eq!(
            field(infos[0], "free"),
            GIB - CONTEXT - 512 * MIB,
            "{path:?}: {out}"
        );
        assert_eq!(
            field(infos[1], "free"),
            GIB - CONTEXT,
            "{path:?}: given back once the stream reached the free: {out}"
        );
        assert_eq!(field(allocations[2], "rc"), 0, "{path:?}: {out}");
    }
}

/// The same for a plain `cuMemAlloc` allocation freed with `cuMemFreeAsync`.
#[test]
fn a_plain_allocation_freed_in_stream_order_stays_charged_until_the_stream_reaches_it() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "module",
            SPIN_PTX,
            "alloc",
            "512M",
            "spin-on",
            "1",
            LONG_KERNEL_NS,
            "free-async-on",
            "1",
            "async-on",
            "2",
            "512M",
            "info",
            "sync",
            "1",
            "info",
        ],
    ));
    assert_eq!(field(line(&out, "async-on"), "rc"), 2, "{out}");
    let infos = infos(&out);
    assert_eq!(field(infos[0], "free"), GIB - CONTEXT - 512 * MIB, "{out}");
    assert_eq!(field(infos[1], "free"), GIB - CONTEXT, "{out}");
}

/// A pool whose release threshold is above what it holds keeps freed memory after a
/// synchronization: the GPU still gives it to the process, so the quota still counts it,
/// in the program's view, NVML's and the ledger's. A trim gives it back.
#[test]
fn pool_memory_kept_past_its_release_threshold_stays_charged() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::ProcAddress,
        "a",
        Some("1Gi"),
        &[
            "pool-threshold",
            "4G",
            "async-on",
            "0",
            "512M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "pool-reserved",
            "hold",
        ],
    ));
    let out = holder.wait_for_line("holding", Duration::from_secs(10));
    let pool = line(&out, "pool-reserved");
    assert_eq!(
        (field(pool, "reserved"), field(pool, "used")),
        (512 * MIB, 0),
        "the pool keeps the freed block: {out}"
    );
    assert_eq!(device_used(&node, 0), CONTEXT + 512 * MIB);
    assert_eq!(
        tenant_usage(&node, "a"),
        CONTEXT + 512 * MIB,
        "the ledger counts it"
    );
    drop(holder);

    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "pool-threshold",
            "4G",
            "async-on",
            "0",
            "512M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "info",
            "nvml",
        ],
    ));
    assert_eq!(
        field(line(&out, "info"), "free"),
        GIB - CONTEXT - 512 * MIB,
        "{out}"
    );
    assert_eq!(
        field(line(&out, "nvml "), "used"),
        CONTEXT + 512 * MIB,
        "{out}"
    );

    let out = run_ok(&mut node.probe(
        CallPath::Direct,
        "a",
        Some("1Gi"),
        &[
            "pool-threshold",
            "4G",
            "async-on",
            "0",
            "512M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "pool-trim",
            "info",
        ],
    ));
    assert_eq!(
        field(line(&out, "info"), "free"),
        GIB - CONTEXT,
        "trimmed, the pool holds nothing: {out}"
    );
}

/// The attack of issue 15: with a 2 GiB quota, fill it with stream-ordered allocations,
/// queue their frees behind a long kernel and keep allocating on another stream. The new
/// allocations are refused at the quota, the device (by its own count) never holds more
/// than the quota plus a context, and a neighbour still gets all of its own quota.
#[test]
fn queued_frees_behind_a_long_kernel_cannot_take_more_than_the_quota() {
    let node = Node::with_devices("8Gi");
    let mut attacker = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("2Gi"),
        &[
            "module",
            SPIN_PTX,
            "async-on",
            "1",
            "1G",
            "async-on",
            "1",
            "896M",
            "spin-on",
            "1",
            "3000000000",
            "free-async-on",
            "1",
            "async-fill-on",
            "2",
            "64M",
            "hold",
        ],
    ));
    let out = attacker.wait_for_line("holding", Duration::from_secs(10));
    let fill = line(&out, "async-fill");
    assert_eq!(field(fill, "rc"), 2, "refused at the quota: {out}");
    assert!(
        field(fill, "bytes") <= 2 * GIB - CONTEXT - (1024 + 896) * MIB,
        "only what the quota had left: {out}"
    );
    let on_device = device_used(&node, 0);
    assert!(
        on_device <= 2 * GIB + CONTEXT,
        "the device holds {} MiB for a 2 GiB quota",
        on_device / MIB
    );
    assert!(
        tenant_usage(&node, "a") >= on_device,
        "the ledger counts at least what the device holds"
    );
    let neighbour = run_ok(&mut node.probe(CallPath::Direct, "b", Some("6Gi"), &["fill", "64M"]));
    assert_eq!(
        field(line(&neighbour, "fill"), "bytes"),
        6 * GIB - CONTEXT,
        "the neighbour gets its whole quota: {neighbour}"
    );
}

/// A tenant at its quota whose pool holds freed memory it is done with is not refused: the
/// shim looks again at what the pool holds (a synchronization released it) or trims the
/// pool, then grants.
#[test]
fn a_tenant_at_its_quota_reuses_idle_pool_memory() {
    // The pool keeps its idle memory (threshold above the quota): it must be trimmed.
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::Direct,
        "a",
        Some("1Gi"),
        &[
            "pool-threshold",
            "4G",
            "async-on",
            "0",
            "900M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "async-on",
            "0",
            "900M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "alloc",
            "900M",
            "info",
        ],
    ));
    for allocation in out
        .lines()
        .filter(|l| l.starts_with("async-on") || l.starts_with("alloc"))
    {
        assert_eq!(field(allocation, "rc"), 0, "{allocation}: {out}");
    }
    assert_eq!(
        field(line(&out, "info"), "free"),
        GIB - CONTEXT - 900 * MIB,
        "{out}"
    );

    // The pool gave its memory back at the synchronization (threshold 0): the shim finds
    // out when it looks again.
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::ProcAddress,
        "a",
        Some("1Gi"),
        &[
            "async-on",
            "0",
            "900M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "async-on",
            "0",
            "900M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "alloc",
            "900M",
        ],
    ));
    for allocation in out
        .lines()
        .filter(|l| l.starts_with("async-on") || l.starts_with("alloc"))
    {
        assert_eq!(field(allocation, "rc"), 0, "{allocation}: {out}");
    }
}

/// Destroying a pool neither loses the charge of memory it still holds (an allocation whose
/// free is queued) nor keeps the charge of a pool that held nothing.
#[test]
fn destroying_a_pool_keeps_the_charge_of_what_it_still_holds() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "module",
            SPIN_PTX,
            "pool-create",
            "pool-alloc-on",
            "1",
            "256M",
            "spin-on",
            "1",
            LONG_KERNEL_NS,
            "free-async-on",
            "1",
            "pool-destroy",
            "hold",
        ],
    ));
    let out = holder.wait_for_line("holding", Duration::from_secs(10));
    assert_eq!(field(line(&out, "pool-destroy"), "rc"), 0, "{out}");
    assert_eq!(device_used(&node, 0), CONTEXT + 256 * MIB);
    assert_eq!(
        tenant_usage(&node, "a"),
        CONTEXT + 256 * MIB,
        "still charged"
    );
    drop(holder);

    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "pool-create",
            "pool-alloc-on",
            "0",
            "256M",
            "free-async-on",
            "0",
            "sync",
            "0",
            "pool-destroy",
            "info",
        ],
    ));
    assert_eq!(field(line(&out, "info"), "free"), GIB - CONTEXT, "{out}");
}

/// Threads allocating from one pool at once, each on a stream of its own and against a
/// tight quota, settle the pool's charge one at a time: no growth is counted twice or
/// lost. Once the pools have given everything back, the ledger holds exactly the context,
/// as the device does.
#[test]
fn concurrent_stream_ordered_allocations_are_counted_once() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("512Mi"),
        &[
            "stress-async",
            "12",
            "300",
            "40M",
            "sync",
            "0",
            "info",
            "hold",
        ],
    ));
    let out = holder.wait_for_line("holding", Duration::from_secs(120));
    let stress = line(&out, "stress-async");
    assert_eq!(field(stress, "other"), 0, "{out}");
    assert!(
        field(stress, "ok") > 0 && field(stress, "refused") > 0,
        "the quota was contended: {out}"
    );
    assert_eq!(
        field(line(&out, "info"), "free"),
        512 * MIB - CONTEXT,
        "{out}"
    );
    assert_eq!(device_used(&node, 0), CONTEXT);
    assert_eq!(tenant_usage(&node, "a"), CONTEXT);
}

/// Threads allocating from one pool at once that keeps what it grew to (its release
/// threshold above it): each reads what the pool holds with no lock held, the readings
/// come back in any order, and only the newest is applied, so once they are done the
/// ledger holds exactly the context and what the pool holds, as the device does.
#[test]
fn concurrent_allocations_from_a_pool_that_keeps_its_memory_leave_the_charge_at_what_it_holds() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("2Gi"),
        &[
            "pool-threshold",
            "4G",
            "stress-async",
            "12",
            "200",
            "8M",
            "sync",
            "0",
            "pool-reserved",
            "hold",
        ],
    ));
    let out = holder.wait_for_line("holding", Duration::from_secs(120));
    let stress = line(&out, "stress-async");
    assert_eq!(
        (field(stress, "other"), field(stress, "refused")),
        (0, 0),
        "{out}"
    );
    let reserved = field(line(&out, "pool-reserved"), "reserved");
    assert!(reserved >= 8 * MIB, "the pool kept memory: {out}");
    assert_eq!(device_used(&node, 0), CONTEXT + reserved, "{out}");
    assert_eq!(tenant_usage(&node, "a"), CONTEXT + reserved, "{out}");
}
