//! Memory quotas, end to end: the shim preloaded into real processes over the simulated GPU.

mod util;

use std::time::Duration;

use util::*;

/// With a 1 GiB quota and a 64 MiB context, exactly 960 MiB can be allocated, whichever way
/// the program reaches the driver, and the refusal is CUDA_ERROR_OUT_OF_MEMORY (2).
#[test]
fn quota_is_honoured_exactly_through_each_call_path() {
    for path in ALL_PATHS {
        let node = Node::new();
        let out = run_ok(&mut node.probe(
            path,
            "a",
            Some("1Gi"),
            &["fill", "64M", "free-all", "fill", "64M"],
        ));
        let fills: Vec<_> = out.lines().filter(|l| l.starts_with("fill")).collect();
        assert_eq!(fills.len(), 2, "{path:?}: {out}");
        for fill in fills {
            assert_eq!(field(fill, "bytes"), GIB - CONTEXT, "{path:?}: {fill}");
            assert_eq!(field(fill, "rc"), 2, "{path:?}: {fill}");
        }
    }
}

#[test]
fn views_report_the_quota() {
    for path in ALL_PATHS {
        let node = Node::new();
        let out =
            run_ok(&mut node.probe(path, "a", Some("1Gi"), &["alloc", "256M", "info", "nvml"]));
        let info = line(&out, "info");
        assert_eq!(field(info, "total"), GIB, "{path:?}");
        assert_eq!(field(info, "free"), GIB - CONTEXT - 256 * MIB, "{path:?}");
        assert_eq!(field(info, "device_total"), GIB, "{path:?}");
        let nvml = line(&out, "nvml ");
        assert_eq!(field(nvml, "total"), GIB);
        assert_eq!(field(nvml, "free"), GIB - CONTEXT - 256 * MIB);
        assert_eq!(field(nvml, "used"), CONTEXT + 256 * MIB);
        let v2 = line(&out, "nvml_v2");
        assert_eq!(field(v2, "total"), GIB);
        assert_eq!(field(v2, "used"), CONTEXT + 256 * MIB);
        assert_eq!(
            field(v2, "reserved") + field(v2, "used") + field(v2, "free"),
            GIB
        );
    }
}

#[test]
fn views_never_exceed_the_physical_gpu() {
    let node = Node::with_devices("2Gi");
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("8Gi"), &["info"]));
    let info = line(&out, "info");
    assert_eq!(field(info, "total"), 2 * GIB);
    assert_eq!(field(info, "free"), 2 * GIB - CONTEXT);
}

#[test]
fn without_a_limit_views_are_the_devices_own() {
    let node = Node::with_devices("2Gi");
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", None, &["alloc", "1G", "info"]));
    let info = line(&out, "info");
    assert_eq!(field(info, "total"), 2 * GIB);
    assert_eq!(field(info, "free"), GIB - CONTEXT);
    // The usage is still recorded for the tenant.
    assert_eq!(tenant_usage(&node, "a"), 0, "usage is given back at exit");
}

/// Managed, stream-ordered, pool, VMM, pitched and array allocations all count, and free
/// gives back exactly what each took.
#[test]
fn every_allocation_path_counts() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::ProcAddress,
        "a",
        Some("1Gi"),
        &[
            "managed", "256M", "async", "128M", "pool", "128M", "vmm", "64M", "pitch", "1000",
            "1000", "array", "256", "256", "array3d", "64", "64", "64", "info", "alloc", "512M",
            "free-all", "info",
        ],
    ));
    for prefix in [
        "managed", "async", "pool", "vmm", "pitch", "array rc", "array3d",
    ] {
        assert_eq!(field(line(&out, prefix), "rc"), 0, "{prefix}: {out}");
    }
    let pitch = field(line(&out, "pitch"), "pitch");
    let arrays = 256 * 256 * 16 + 64 * 64 * 64;
    let taken = 256 * MIB + 128 * MIB + 128 * MIB + 64 * MIB + pitch * 1000 + arrays;
    let infos: Vec<_> = out.lines().filter(|l| l.starts_with("info")).collect();
    assert_eq!(field(infos[0], "free"), GIB - CONTEXT - taken);
    assert_eq!(field(line(&out, "alloc"), "rc"), 2, "512M no longer fits");
    assert_eq!(field(infos[1], "free"), GIB - CONTEXT);
}

#[test]
fn two_processes_of_one_tenant_share_one_quota() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &["alloc", "512M", "hold"],
    ));
    holder.wait_for_line("holding", Duration::from_secs(10));
    let out = run_ok(&mut node.probe(CallPath::Direct, "a", Some("1Gi"), &["fill", "32M"]));
    assert_eq!(
        field(line(&out, "fill"), "bytes"),
        GIB - 2 * CONTEXT - 512 * MIB
    );
}

#[test]
fn tenants_do_not_affect_each_other() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("512Mi"),
        &["fill", "64M", "hold"],
    ));
    holder.wait_for_line("holding", Duration::from_secs(10));
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "b", Some("1Gi"), &["fill", "64M"]));
    assert_eq!(field(line(&out, "fill"), "bytes"), GIB - CONTEXT);
}

/// Hundreds of threads in two processes allocate and free against one tight quota. Every
/// grant is added to a witness counter both processes share before the block is used and
/// taken out before it is freed: the witness never passes what the quota leaves after the
/// two contexts, and the tenant ends at exactly zero.
///
/// (Summing the ledger's slots from outside is no witness: a reader can load one process's
/// slot before it gives 16 MiB back and another's after it took them, and see both.)
#[test]
fn concurrent_allocation_never_passes_the_limit() {
    let node = Node::new();
    let limit = 2 * CONTEXT + 40 * 16 * MIB; // both contexts plus 40 blocks
    let limit_text = limit.to_string();
    let budget = (limit - 2 * CONTEXT).to_string();
    let witness = node.root.path().join("witness");
    std::fs::write(&witness, [0u8; 8]).unwrap();
    let go = node.root.path().join("go");
    let go_text = go.display().to_string();
    // Both stay alive until both are done: a process that has exited no longer holds its
    // context's memory, and the other may then rightly take it.
    let done = node.root.path().join("done");
    let done_text = done.display().to_string();
    let stress = [
        "wait-file",
        go_text.as_str(),
        "stress",
        "150",
        "1500",
        "16M",
        "wait-file",
        done_text.as_str(),
    ];
    let spawn = |path| {
        let mut command = node.probe(path, "a", Some(&limit_text), &stress);
        command
            .env("PROBE_WITNESS", &witness)
            .env("PROBE_BUDGET", &budget)
            .env("PROBE_HOLD_US", "300");
        Running::spawn(&mut command)
    };
    let mut first = spawn(CallPath::Dlsym);
    let mut second = spawn(CallPath::Direct);
    first.wait_for_line("waiting", Duration::from_secs(10));
    second.wait_for_line("waiting", Duration::from_secs(10));
    std::fs::write(&go, b"").unwrap();
    let results = [
        first.wait_for_line("stress ok", Duration::from_secs(120)),
        second.wait_for_line("stress ok", Duration::from_secs(120)),
    ];
    std::fs::write(&done, b"").unwrap();
    for process in [first, second] {
        let output = process.wait_output(Duration::from_secs(30));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (mut granted, mut refused, mut highest) = (0, 0, 0);
    for result in &results {
        let stress = line(result, "stress");
        assert_eq!(field(stress, "other"), 0, "{stress}");
        assert_eq!(field(stress, "violations"), 0, "{stress}");
        granted += field(stress, "ok");
        refused += field(stress, "refused");
        highest = highest.max(field(stress, "witness_max"));
    }
    assert!(
        highest <= limit - 2 * CONTEXT,
        "granted blocks held at once: {highest}"
    );
    // The grants really overlapped, so the witness could have caught an over-grant (how
    // close to the whole quota they come depends on scheduling: at least half of it).
    assert!(
        highest >= (limit - 2 * CONTEXT) / 2,
        "the witness saw at most {highest}"
    );
    assert!(
        granted > 0 && refused > 0,
        "the quota was contended: {granted} granted, {refused} refused"
    );
    assert_eq!(tenant_usage(&node, "a"), 0);
}

#[test]
fn kill_9_returns_memory_to_tenant() {
    let node = Node::new();
    let mut holder = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &["alloc", "768M", "hold"],
    ));
    holder.wait_for_line("holding", Duration::from_secs(10));
    holder.kill9();
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("1Gi"), &["fill", "64M"]));
    assert_eq!(field(line(&out, "fill"), "bytes"), GIB - CONTEXT);
}

#[test]
fn normal_exit_gives_everything_back() {
    let node = Node::new();
    run_ok(&mut node.probe(
        CallPath::Direct,
        "a",
        Some("1Gi"),
        &["alloc", "512M", "vmm", "64M"],
    ));
    assert_eq!(tenant_usage(&node, "a"), 0);
}

#[test]
fn forked_child_exiting_keeps_parents_usage() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &["alloc", "256M", "fork-exit", "info"],
    ));
    assert_eq!(field(line(&out, "fork-exit"), "child_status"), 0);
    assert_eq!(field(line(&out, "info"), "free"), GIB - CONTEXT - 256 * MIB);
}

/// The device frees a process's memory when the last copy of its descriptors of the driver
/// closes: a child forked after the parent allocated, and still running, keeps the parent's
/// memory on the device after the parent is killed. The ledger must keep charging it until
/// the child is gone too (before, the killed parent's charge went at once, and a tenant with
/// a 1 GiB quota held 2 GiB of the device).
#[test]
fn forked_child_outliving_its_killed_parent_keeps_the_parents_memory_charged() {
    let node = Node::new();
    let mut parent = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &["alloc", "512M", "fork-hold", "hold"],
    ));
    let forked = parent.wait_for_line("fork-hold", Duration::from_secs(30));
    let child = libc::pid_t::try_from(field(line(&forked, "fork-hold"), "child_pid")).unwrap();
    /// Kills the forked child whatever happens to the test (it is nobody's child here).
    struct KillOnDrop(libc::pid_t);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _child_guard = KillOnDrop(child);
    parent.wait_for_line("holding", Duration::from_secs(30));
    parent.kill9();

    // The device still holds the parent's context and 512 MiB, as NVML read without the shim
    // says; the tenant's next process gets only what is left of the quota.
    let bare = run_ok(
        node.bare(probe(CallPath::Dlsym).0)
            .args(probe(CallPath::Dlsym).1)
            .arg("nvml"),
    );
    let held = field(line(&bare, "nvml "), "used");
    assert!(
        held >= CONTEXT + 512 * MIB,
        "the device let go already: {bare}"
    );
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("1Gi"), &["alloc", "512M"]));
    assert_eq!(
        field(line(&out, "alloc"), "rc"),
        2,
        "512M more would take the tenant past its quota while the child lives: {out}"
    );

    // SAFETY: kill has no memory-safety preconditions; `child` is the probe's child.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("1Gi"), &["alloc", "512M"]));
        if field(line(&out, "alloc"), "rc") == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the charge stayed after the child died: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tenant whose every process slot is taken refuses a new process's memory and says so:
/// the slots are full, not the quota (which was what the log said before).
#[test]
fn the_process_past_the_last_slot_is_told_the_slots_are_full_not_the_quota() {
    let node = Node::new();
    raise_open_file_limit(gpuslice_ledger::MAX_SLOTS as u64 + 256);
    let usage = node
        .ledger()
        .open_usage(&gpuslice_ledger::TenantName::new("crowded").unwrap())
        .unwrap();
    let held: Vec<_> = (0..gpuslice_ledger::MAX_SLOTS)
        .map(|_| usage.claim_slot().unwrap())
        .collect();
    let output = run(&mut node.probe(CallPath::Dlsym, "crowded", Some("1Gi"), &["alloc", "64M"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stderr.contains(&format!(
            "all {} process slots are held by live processes of this tenant",
            gpuslice_ledger::MAX_SLOTS
        )),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("does not fit in the tenant's quota"),
        "{stderr}"
    );
    // Its context is the first memory it asks for: refused, as out of memory (2).
    assert_eq!(field(line(&stdout, "context"), "rc"), 2, "{stdout}");
    drop(held);
}

/// Children that use the GPU (fork + exec, since the driver refuses CUDA in a child forked
/// after the parent initialized it) share the parent's quota and give their part back.
#[test]
fn children_share_the_parents_quota() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "alloc",
            "512M",
            "fork-exec",
            "2",
            "alloc",
            "512M",
            "fork-exec",
            "2",
            "alloc",
            "256M",
            "info",
        ],
    ));
    let children: Vec<_> = out.lines().filter(|l| l.starts_with("alloc")).collect();
    assert_eq!(children.len(), 3, "{out}");
    assert_eq!(field(children[0], "rc"), 0, "{out}");
    assert_eq!(
        field(children[1], "rc"),
        2,
        "a second 512M does not fit beside the parent's: {out}"
    );
    assert_eq!(field(children[2], "rc"), 0, "256M does: {out}");
    assert_eq!(
        field(line(&out, "info"), "free"),
        GIB - CONTEXT - 512 * MIB,
        "children's memory went back"
    );
}

#[test]
fn context_footprint_is_measured_and_counted() {
    let mut node = Node::new();
    node.extra_env
        .push(("FAKECUDA_CONTEXT_FOOTPRINT".into(), "100Mi".into()));
    let out = run_ok(&mut node.probe(
        CallPath::ProcAddress,
        "a",
        Some("1Gi"),
        &["info", "ctx-create", "info"],
    ));
    let infos: Vec<_> = out.lines().filter(|l| l.starts_with("info")).collect();
    assert_eq!(field(infos[0], "free"), GIB - 100 * MIB);
    assert_eq!(field(line(&out, "ctx-create"), "rc"), 0);
    assert_eq!(field(line(&out, "ctx-destroy"), "rc"), 0);
    assert_eq!(
        field(infos[1], "free"),
        GIB - 100 * MIB,
        "a destroyed context gives its memory back"
    );
}

#[test]
fn a_context_that_does_not_fit_is_refused() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("32Mi"), &[]));
    assert_eq!(field(line(&out, "context"), "rc"), 2, "{out}");
}

#[test]
fn quota_file_is_the_ceiling() {
    let node = Node::new();
    let tenant = gpuslice_ledger::TenantName::new("a").unwrap();
    let quota = gpuslice_ledger::TenantQuota {
        defaults: gpuslice_ledger::Limits {
            memory_bytes: Some(512 * MIB),
            ..Default::default()
        },
        per_gpu: vec![],
    };
    node.ledger().write_quota(&tenant, &quota).unwrap();
    let higher = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("1Gi"), &["info"]));
    assert_eq!(
        field(line(&higher, "info"), "total"),
        512 * MIB,
        "env may not raise the file's limit"
    );
    let lower = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("256Mi"), &["info"]));
    assert_eq!(
        field(line(&lower, "info"), "total"),
        256 * MIB,
        "env may lower it"
    );
    let file_only = run_ok(&mut node.probe(CallPath::Dlsym, "a", None, &["info"]));
    assert_eq!(field(line(&file_only, "info"), "total"), 512 * MIB);
}

#[test]
fn quotas_are_per_gpu_uuid_not_per_ordinal() {
    let node = Node::with_devices("80Gi,80Gi");
    let tenant = gpuslice_ledger::TenantName::new("a").unwrap();
    let second =
        gpuslice_ledger::GpuUuid::parse("GPU-fa4ec0da-0000-4000-8000-000000000001").unwrap();
    let quota = gpuslice_ledger::TenantQuota {
        defaults: gpuslice_ledger::Limits {
            memory_bytes: Some(GIB),
            ..Default::default()
        },
        per_gpu: vec![(
            second,
            gpuslice_ledger::Limits {
                memory_bytes: Some(2 * GIB),
                ..Default::default()
            },
        )],
    };
    node.ledger().write_quota(&tenant, &quota).unwrap();
    let mut first_gpu = node.probe(CallPath::Dlsym, "a", None, &["info"]);
    first_gpu.env("PROBE_DEVICE", "0");
    assert_eq!(field(line(&run_ok(&mut first_gpu), "info"), "total"), GIB);
    let mut second_gpu = node.probe(CallPath::Dlsym, "a", None, &["info"]);
    second_gpu.env("PROBE_DEVICE", "1");
    assert_eq!(
        field(line(&run_ok(&mut second_gpu), "info"), "total"),
        2 * GIB
    );
}

/// The cudarc example runs unchanged under the shim and stops at the quota.
#[test]
fn cudarc_example_stops_at_the_quota() {
    let node = Node::new();
    let out = run_ok(
        node.tenant("a", Some("1Gi"), example("alloc_until_oom"))
            .args(["--chunk", "64Mi"]),
    );
    let allocated = line(&out, "allocated");
    assert_eq!(field(allocated, "allocated"), GIB - CONTEXT, "{out}");
    assert!(
        allocated.contains("CUDA_ERROR_OUT_OF_MEMORY"),
        "{allocated}"
    );
    assert!(out.contains("realloc_after_free=ok"), "{out}");
    let info = line(&out, "mem_get_info");
    assert_eq!(field(info, "total"), GIB);
}

/// Memory the driver takes without an allocation call (here: a loaded module, as kernel
/// code is on a real GPU) is found through NVML near the limit and charged, so the
/// process never holds more than its quota.
#[test]
fn memory_the_driver_takes_on_its_own_is_charged_near_the_limit() {
    let mut node = Node::new();
    node.extra_env
        .push(("FAKECUDA_MODULE_FOOTPRINT".into(), "100Mi".into()));
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ptx/spin.ptx");
    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &["module", ptx, "fill", "16M", "info"],
    ));
    assert_eq!(field(line(&out, "module"), "rc"), 0, "{out}");
    let fill = line(&out, "fill");
    // 1 GiB - 64 MiB context - 100 MiB module leaves 860 MiB: 53 blocks of 16 MiB.
    assert_eq!(field(fill, "bytes"), 53 * 16 * MIB, "{out}");
    assert_eq!(
        field(line(&out, "info"), "free"),
        GIB - CONTEXT - 100 * MIB - 53 * 16 * MIB
    );
}

/// Far from the limit nothing is asked of NVML on the allocation path, yet the free memory
/// a program is told about already accounts for what the driver took.
#[test]
fn free_memory_reported_includes_what_the_driver_took() {
    let mut node = Node::new();
    node.extra_env
        .push(("FAKECUDA_MODULE_FOOTPRINT".into(), "100Mi".into()));
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ptx/spin.ptx");
    let out = run_ok(&mut node.probe(
        CallPath::ProcAddress,
        "a",
        Some("4Gi"),
        &["module", ptx, "alloc", "64M", "info"],
    ));
    assert_eq!(
        field(line(&out, "info"), "free"),
        4 * GIB - CONTEXT - 100 * MIB - 64 * MIB
    );
}

/// Tenants whose processes create their contexts at the same moment are each charged their
/// own context only, not the others' that appeared in the same instant.
#[test]
fn contexts_created_at_the_same_moment_are_each_charged_once() {
    let node = Node::new();
    let start = node.root.path().join("start");
    let tenants = ["a", "b", "c", "d", "e", "f"];
    let mut running: Vec<Running> = tenants
        .iter()
        .map(|tenant| {
            let mut command = node.probe(CallPath::Dlsym, tenant, Some("1Gi"), &["info"]);
            command.env("PROBE_START_FILE", &start);
            Running::spawn(&mut command)
        })
        .collect();
    for process in &mut running {
        process.wait_for_line("ready", Duration::from_secs(10));
    }
    std::fs::write(&start, b"").unwrap();
    for (tenant, process) in tenants.iter().zip(running) {
        let output = process.wait_output(Duration::from_secs(30));
        let out = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            field(line(&out, "info"), "free"),
            GIB - CONTEXT,
            "tenant {tenant}: {out}"
        );
    }
}

/// Threads of one process retaining and releasing the primary context at once, so that
/// it is made and ended many times under them: a thread that holds it always sees it
/// charged exactly once (never uncharged while live, never twice), and once every thread
/// released it the ledger holds nothing, as the device does. The shim holds no lock across
/// these driver calls; the context book's states keep the count.
#[test]
fn threads_retaining_and_releasing_the_primary_context_at_once_charge_it_once() {
    let node = Node::new();
    let mut command = node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &["stress-primary", "8", "150", "hold"],
    );
    command.env("PROBE_NO_CONTEXT", "1");
    let mut holder = Running::spawn(&mut command);
    let out = holder.wait_for_line("holding", Duration::from_secs(120));
    let stress = line(&out, "stress-primary");
    assert_eq!(field(stress, "other"), 0, "{out}");
    assert_eq!(field(stress, "ok"), 8 * 150, "{out}");
    assert_eq!(field(stress, "samples"), 8 * 150, "{out}");
    assert_eq!(
        (field(stress, "used_min"), field(stress, "used_max")),
        (CONTEXT, CONTEXT),
        "{out}"
    );
    assert_eq!(device_used(&node, 0), 0, "every thread released it: {out}");
    assert_eq!(tenant_usage(&node, "a"), 0, "{out}");
}

/// A reset ends the primary context but keeps its retains (the driver's documentation:
/// "resetting the primary context does not release it"), so a retain after it makes the
/// context anew and an older holder's release then leaves it live. It must stay charged
/// while it is live. Before, the book forgot the retains at the reset and that release
/// gave the new context's charge back: the ledger said 0 beside a live context, and in a
/// container (its own PID namespace, where the shim cannot read its process's memory from
/// NVML to catch it) the tenant then filled its whole quota beside the context.
#[test]
fn a_reset_between_retains_cannot_leave_a_live_context_uncharged() {
    let node = Node::new();
    let go = node.root.path().join("go");
    let mut command = node.probe(
        CallPath::Dlsym,
        "a",
        Some("256Mi"),
        &[
            "retain-primary",
            "reset-primary",
            "retain-primary",
            "release-primary",
            "wait-file",
            go.to_str().unwrap(),
            "fill",
            "16M",
            "hold",
        ],
    );
    let mut holder = Running::spawn(&mut command);
    let out = holder.wait_for_line("waiting", Duration::from_secs(30));
    for step in ["retain-primary", "reset-primary", "release-primary"] {
        assert_eq!(field(line(&out, step), "rc"), 0, "{step}: {out}");
    }
    assert_eq!(device_used(&node, 0), CONTEXT, "the context is live: {out}");
    assert_eq!(
        tenant_usage(&node, "a"),
        CONTEXT,
        "a live context is charged: {out}"
    );
    std::fs::write(&go, b"").unwrap();
    let out = holder.wait_for_line("holding", Duration::from_secs(30));
    assert!(
        device_used(&node, 0) <= 256 * MIB,
        "the device holds {} MiB for a tenant limited to 256 MiB: {out}",
        device_used(&node, 0) / MIB
    );
    assert_eq!(
        tenant_usage(&node, "a"),
        device_used(&node, 0),
        "the ledger counts what the device holds: {out}"
    );
}

/// Runs the probe with `commands` then "hold", under a 256 MiB limit, and checks, once it
/// holds, that the ledger counts what the simulated GPU holds (judged by the device's own
/// count) and that this is `expected`. Returns its output.
fn holding_at(node: &Node, commands: &[&str], expected: u64) -> String {
    let mut all = commands.to_vec();
    all.push("hold");
    let mut command = node.probe(CallPath::Dlsym, "a", Some("256Mi"), &all);
    let mut holder = Running::spawn(&mut command);
    let out = holder.wait_for_line("holding", Duration::from_secs(30));
    assert_eq!(
        device_used(node, 0),
        expected,
        "the device holds {} MiB: {out}",
        device_used(node, 0) / MIB
    );
    assert_eq!(
        tenant_usage(node, "a"),
        device_used(node, 0),
        "the ledger counts what the device holds: {out}"
    );
    out
}

/// The red team's case: cuDevicePrimaryCtxReset (what cudaDeviceReset calls) frees every
/// allocation of the primary context, and the shim kept them charged, so the second 150 MiB
/// was refused ("uses 214 MiB of its 256 MiB limit") until the process exited. Device,
/// managed, pitched and array memory all go with the context; the same address given out
/// again in the context made anew is charged once, and a free of an old pointer after the
/// reset gives back nothing more.
#[test]
fn memory_freed_by_a_primary_context_reset_does_not_stay_charged() {
    let node = Node::new();
    let out = holding_at(
        &node,
        &[
            "alloc",
            "150M",
            "reset-primary",
            "retain-primary",
            "alloc",
            "150M",
            "info",
        ],
        CONTEXT + 150 * MIB,
    );
    assert_eq!(field(line(&out, "reset-primary"), "rc"), 0, "{out}");
    let allocs: Vec<_> = out.lines().filter(|l| l.starts_with("alloc ")).collect();
    assert_eq!(allocs.len(), 2, "{out}");
    for alloc in &allocs {
        assert_eq!(field(alloc, "rc"), 0, "{alloc}: {out}");
    }
    assert_eq!(
        field(line(&out, "info"), "free"),
        256 * MIB - CONTEXT - 150 * MIB,
        "{out}"
    );

    // Every kind of memory a context owns, then a free of each old handle after the
    // reset (one of which the new allocation may have been given), then of the new one.
    let node = Node::new();
    let out = holding_at(
        &node,
        &[
            "alloc",
            "100M",
            "managed",
            "16M",
            "pitch",
            "1M",
            "16",
            "array",
            "1024",
            "1024",
            "reset-primary",
            "retain-primary",
            "alloc",
            "150M",
            "info",
            "free-all",
            "info",
        ],
        CONTEXT,
    );
    for step in [
        "managed",
        "pitch",
        "array",
        "reset-primary",
        "retain-primary",
    ] {
        assert_eq!(field(line(&out, step), "rc"), 0, "{step}: {out}");
    }
    let infos: Vec<_> = out.lines().filter(|l| l.starts_with("info")).collect();
    assert_eq!(
        field(infos[0], "free"),
        256 * MIB - CONTEXT - 150 * MIB,
        "{out}"
    );
    assert_eq!(
        field(infos[1], "free"),
        256 * MIB - CONTEXT,
        "freed once each, nothing given back twice: {out}"
    );
}

/// The last release of the primary context ends it as a reset does.
#[test]
fn memory_freed_by_the_last_release_of_the_primary_context_does_not_stay_charged() {
    let node = Node::new();
    let out = holding_at(
        &node,
        &[
            "alloc",
            "150M",
            "release-primary",
            "retain-primary",
            "alloc",
            "150M",
        ],
        CONTEXT + 150 * MIB,
    );
    assert_eq!(field(line(&out, "release-primary"), "rc"), 0, "{out}");
    for alloc in out.lines().filter(|l| l.starts_with("alloc ")) {
        assert_eq!(field(alloc, "rc"), 0, "{alloc}: {out}");
    }
}

/// cuCtxDestroy frees what was allocated in the context.
#[test]
fn memory_freed_by_destroying_its_context_does_not_stay_charged() {
    let node = Node::new();
    let out = holding_at(
        &node,
        &["ctx-alloc-destroy", "100M", "alloc", "150M"],
        CONTEXT + 150 * MIB,
    );
    let made = line(&out, "ctx-alloc-destroy");
    for key in ["rc", "alloc", "destroy"] {
        assert_eq!(field(made, key), 0, "{key}: {out}");
    }
    assert_eq!(field(line(&out, "alloc "), "rc"), 0, "{out}");
}
