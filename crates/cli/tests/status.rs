//! `gpuslice status`: what it reports, in JSON and as a table, and how it treats damage.

use gpuslice_ledger::{ComputeSettings, GpuUuid, Limits, Priority, TenantQuota};
use serde_json::Value;

use crate::util::*;

/// The JSON entry of tenant `name`.
fn tenant_entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["tenants"]
        .as_array()
        .expect("tenants array")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {status:#}"))
}

fn gib_quota(gib: u64) -> TenantQuota {
    TenantQuota {
        defaults: Limits {
            memory_bytes: Some(gib * GIB),
            ..Limits::default()
        },
        per_gpu: vec![],
    }
}

#[test]
fn status_of_an_empty_ledger_lists_no_tenants() {
    let t = TestDir::new();
    t.ledger();
    let status = t.status_json();
    assert_eq!(status["version"], 1);
    assert_eq!(status["ledger"], t.ledger_dir().display().to_string());
    assert_eq!(status["tenants"], Value::Array(vec![]));
    let out = finish(t.gpuslice(&["status", "--dir"]).arg(t.ledger_dir()));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("(no tenants)"), "{out:?}");
}

/// Issue 15, item 8: `status` exited 2 on a new ledger directory (made, nothing in it yet).
#[test]
fn status_of_an_empty_ledger_directory_lists_no_tenants() {
    let t = TestDir::new();
    std::fs::create_dir(t.ledger_dir()).unwrap();
    let out = finish(t.gpuslice(&["status", "--dir"]).arg(t.ledger_dir()));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("(no tenants)"), "{out:?}");
    assert_eq!(t.status_json()["tenants"], Value::Array(vec![]));
    assert!(
        !t.ledger_dir().join("tenants").exists(),
        "status wrote into the ledger"
    );
}

#[test]
fn status_without_a_ledger_exits_2() {
    let t = TestDir::new();
    let out = finish(
        t.gpuslice(&["status", "--dir"])
            .arg(t.path().join("missing")),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--dir"), "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
    assert!(
        !t.path().join("missing").exists(),
        "status created the ledger"
    );
}

#[test]
fn status_finds_the_ledger_through_gpuslice_dir() {
    let t = TestDir::new();
    t.ledger().write_quota(&tenant("a"), &gib_quota(1)).unwrap();
    let out = finish(
        t.gpuslice(&["status", "--json"])
            .env("GPUSLICE_DIR", t.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"a\""), "{out:?}");
}

#[test]
fn status_reports_what_a_process_actually_holds() {
    let t = TestDir::new();
    let ledger = t.ledger();
    let a = tenant("team-a");
    let gpu = GpuUuid::parse("GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d").unwrap();
    // A quota with a share above what the process enforces (it lowered it).
    let mut quota = gib_quota(1);
    quota.defaults.compute_share_permille = Some(500);
    ledger.write_quota(&a, &quota).unwrap();

    // What a shim process does: claim a slot, register the GPU, reserve, be refused.
    let usage = ledger.open_usage(&a).unwrap();
    let slot = usage.claim_slot().unwrap();
    let index = usage.register_gpu(&gpu).unwrap();
    slot.try_reserve(index, 300 * MIB, GIB).unwrap();
    assert!(slot.try_reserve(index, GIB, GIB).is_err());
    usage.record_oom(index);
    // What its watcher does: publish the settings it enforces, charge GPU time, count the
    // time its launches waited.
    slot.publish_compute(
        index,
        ComputeSettings {
            share_permille: Some(250),
            limit_permille: Some(500),
            priority: Some(Priority::Low),
        },
    );
    slot.add_gpu_time(index, 1_500_000_000);
    usage.add_throttled(index, 20_000_000);
    // A second process holding nothing yet.
    let idle = usage.claim_slot().unwrap();

    let status = t.status_json();
    assert_eq!(status["version"], 1);
    assert!(
        status["gets_window_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 250),
        "{status:#}"
    );
    let entry = tenant_entry(&status, "team-a");
    assert!(entry.get("error").is_none(), "{entry:#}");
    assert_eq!(entry["memory_limit_bytes"], GIB);
    assert_eq!(entry["live_processes"], 2);
    let gpus = entry["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1, "{entry:#}");
    assert_eq!(gpus[0]["uuid"], gpu.to_string());
    assert_eq!(gpus[0]["memory_used_bytes"], 300 * MIB);
    assert_eq!(gpus[0]["memory_limit_bytes"], GIB);
    assert_eq!(gpus[0]["oom_refusals"], 1);
    assert_eq!(
        gpus[0]["processes"],
        serde_json::json!([{
            "slot": slot.index(),
            "pid": std::process::id(),
            "memory_bytes": 300 * MIB,
            "gpu_time_ns": 1_500_000_000u64,
        }])
    );
    // The quota's share is 50%; the process published lower settings of its own.
    assert_eq!(entry["compute_share_percent"], 50.0, "{entry:#}");
    assert!(entry["priority"].is_null(), "{entry:#}");
    assert_eq!(gpus[0]["compute_share_percent"], 25.0);
    assert_eq!(gpus[0]["compute_limit_percent"], 50.0);
    assert_eq!(gpus[0]["priority"], "low");
    assert_eq!(gpus[0]["compute_source"], "published");
    assert_eq!(gpus[0]["gpu_time_ns"], 1_500_000_000u64);
    assert_eq!(gpus[0]["throttled_ns"], 20_000_000u64);
    // Nothing ran while status sampled.
    assert_eq!(gpus[0]["gets_percent"], 0.0);

    // The table says the same.
    let out = finish(t.gpuslice(&["status", "--dir"]).arg(t.ledger_dir()));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("team-a (2 processes)"),
        "{}",
        out.stdout
    );
    let gpu_line = out
        .stdout
        .lines()
        .find(|l| l.contains(&gpu.to_string()))
        .unwrap_or_else(|| panic!("no GPU line:\n{}", out.stdout));
    assert!(
        gpu_line.contains("300 MiB") && gpu_line.contains("1 GiB"),
        "{gpu_line}"
    );
    assert!(gpu_line.trim_end().ends_with(" 1"), "{gpu_line}");
    assert!(
        out.stdout.contains(
            "share 25%, limit 50%, priority low; gets 0%; GPU time 1.5 s, throttled 20 ms"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "slot {}, pid {}",
            slot.index(),
            std::process::id()
        )),
        "{}",
        out.stdout
    );
    for line in out.stdout.lines() {
        assert!(line.len() <= 80, "{line:?}");
    }
    drop((slot, idle));
}

#[test]
fn memory_of_dead_processes_is_not_counted() {
    let t = TestDir::new();
    let ledger = t.ledger();
    let a = tenant("a");
    let gpu = GpuUuid([3; 16]);
    let usage = ledger.open_usage(&a).unwrap();
    let index = usage.register_gpu(&gpu).unwrap();
    let live = usage.claim_slot().unwrap();
    live.try_reserve(index, 100 * MIB, u64::MAX).unwrap();
    let dead = usage.claim_slot().unwrap();
    dead.try_reserve(index, 200 * MIB, u64::MAX).unwrap();
    // Drops the slot's lock without emptying it: what a process that died leaves behind.
    dead.close_as_if_dead();

    let status = t.status_json();
    let entry = tenant_entry(&status, "a");
    assert_eq!(entry["live_processes"], 1);
    assert!(
        entry["memory_limit_bytes"].is_null(),
        "no quota file: unlimited"
    );
    let gpu_entry = &entry["gpus"][0];
    assert_eq!(gpu_entry["memory_used_bytes"], 100 * MIB);
    assert!(gpu_entry["memory_limit_bytes"].is_null());
    assert_eq!(gpu_entry["processes"].as_array().unwrap().len(), 1);
    drop(live);
}

#[test]
fn per_gpu_quota_is_shown_before_the_gpu_is_used() {
    let t = TestDir::new();
    let gpu = GpuUuid([9; 16]);
    let quota = TenantQuota {
        defaults: Limits::default(),
        per_gpu: vec![(
            gpu,
            Limits {
                memory_bytes: Some(512 * MIB),
                ..Limits::default()
            },
        )],
    };
    t.ledger().write_quota(&tenant("a"), &quota).unwrap();
    t.ledger().write_quota(&tenant("b"), &gib_quota(2)).unwrap();

    let status = t.status_json();
    let a = tenant_entry(&status, "a");
    assert!(a["memory_limit_bytes"].is_null());
    assert_eq!(a["gpus"][0]["uuid"], gpu.to_string());
    assert_eq!(a["gpus"][0]["memory_limit_bytes"], 512 * MIB);
    assert_eq!(a["gpus"][0]["memory_used_bytes"], 0);
    let b = tenant_entry(&status, "b");
    assert_eq!(b["memory_limit_bytes"], 2 * GIB);
    assert_eq!(b["gpus"], Value::Array(vec![]));

    let out = finish(t.gpuslice(&["status", "--dir"]).arg(t.ledger_dir()));
    assert!(out.stdout.contains("no GPU used yet"), "{}", out.stdout);
}

#[test]
fn damaged_tenant_files_are_reported_per_tenant_and_the_rest_is_shown() {
    let t = TestDir::new();
    let ledger = t.ledger();
    ledger.write_quota(&tenant("good"), &gib_quota(1)).unwrap();
    ledger
        .write_quota(&tenant("bad-quota"), &gib_quota(1))
        .unwrap();
    let bad_quota = ledger.quota_path(&tenant("bad-quota"));
    std::fs::write(&bad_quota, b"not a quota file").unwrap();
    ledger.open_usage(&tenant("bad-usage")).unwrap();
    let bad_usage = ledger.usage_path(&tenant("bad-usage"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&bad_usage)
        .unwrap();
    file.set_len(100).unwrap();

    let status = t.status_json();
    let good = tenant_entry(&status, "good");
    assert!(good.get("error").is_none());
    assert_eq!(good["memory_limit_bytes"], GIB);
    for (name, path) in [("bad-quota", &bad_quota), ("bad-usage", &bad_usage)] {
        let entry = tenant_entry(&status, name);
        let error = entry["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{entry:#}"));
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(entry.get("gpus").is_none(), "{entry:#}");
    }

    let out = finish(t.gpuslice(&["status", "--dir"]).arg(t.ledger_dir()));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches("  error: ").count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("good"), "{}", out.stdout);
    for line in out.stdout.lines() {
        assert!(line.len() <= 80, "{line:?}");
    }
}

#[test]
fn status_shows_a_tenant_while_gpuslice_run_holds_it() {
    let t = TestDir::new();
    let mut command = t.run(&["--tenant", "running", "--memory", "2Gi", "--"]);
    command.args(hold(&t.release_file()));
    let mut run = Running::spawn(&mut command);
    run.wait_for_line("ready");
    let status = t.status_json();
    let entry = tenant_entry(&status, "running");
    assert_eq!(entry["memory_limit_bytes"], 2 * GIB);
    assert_eq!(
        entry["live_processes"], 0,
        "a shell that never used the GPU"
    );
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
    assert_eq!(t.status_json()["tenants"], Value::Array(vec![]));
}

#[test]
fn status_shows_the_quotas_compute_settings_until_a_process_publishes_its_own() {
    let t = TestDir::new();
    let mut run = Running::spawn(
        t.run(&[
            "--tenant",
            "shares",
            "--compute-share",
            "30",
            "--compute-limit",
            "12.5%",
            "--priority",
            "high",
            "--",
        ])
        .args(hold(&t.release_file())),
    );
    run.wait_for_line("ready");
    let out = finish(
        t.gpuslice(&["status", "--json", "--sample", "0", "--dir"])
            .arg(t.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        status["gets_window_ms"].is_null(),
        "one reading: {status:#}"
    );
    let entry = tenant_entry(&status, "shares");
    assert_eq!(entry["compute_share_percent"], 30.0);
    assert_eq!(entry["compute_limit_percent"], 12.5);
    assert_eq!(entry["priority"], "high");
    // No GPU used yet, so no GPU entries; the table says what the quota says.
    assert_eq!(entry["gpus"], serde_json::json!([]));
    let out = finish(t.gpuslice(&["status", "--dir"]).arg(t.ledger_dir()));
    assert!(
        out.stdout
            .contains("    share 30%, limit 12.5%, priority high\n"),
        "{}",
        out.stdout
    );
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
}

/// `gpuslice status` on `node`, as JSON.
fn node_status_json(node: &Node) -> Value {
    let out = finish(
        node.gpuslice(&["status", "--json", "--dir"])
            .arg(node.dir.ledger_dir()),
    );
    assert_eq!(out.code, Some(0), "status failed: {out:?}");
    serde_json::from_str(&out.stdout).expect("JSON")
}

#[test]
fn a_process_using_the_gpu_outside_gpuslice_is_reported_unenforced() {
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino());
    if host.ok() != Some(0xEFFF_FFFC) {
        eprintln!("SKIPPED: not in the host's PID namespace, where NVML's PIDs can be looked up");
        return;
    }
    let node = Node::new();
    let probe = cudaprobe();
    let probe = probe.to_str().unwrap();
    // One process under gpuslice, one beside it with the same program and no shim (what an
    // image whose loader ignores the preload, or a static binary, amounts to).
    let mut enforced = Running::spawn(node.run(&[
        "--tenant", "a", "--memory", "1Gi", "--", probe, "dlsym", "alloc", "64M", "hold",
    ]));
    enforced.wait_for_line("holding");
    let mut bare = Running::spawn(
        node.bare(std::path::Path::new(probe))
            .args(["dlsym", "alloc", "64M", "hold"]),
    );
    bare.wait_for_line("holding");

    let status = node_status_json(&node);
    let check = &status["unenforced"];
    assert_eq!(check["checked"], true, "{check}");
    let found = check["processes"].as_array().unwrap();
    assert_eq!(found.len(), 1, "only the process without the shim: {check}");
    assert_eq!(found[0]["pid"], bare.pid());
    assert_eq!(found[0]["gpu"], FAKE_GPU0);
    assert!(found[0]["memory_bytes"].as_u64().unwrap() >= 64 * MIB);
    assert!(
        found[0]["tenant"].is_null(),
        "a host process is in no tenant's container"
    );

    let table = finish(
        node.gpuslice(&["status", "--dir"])
            .arg(node.dir.ledger_dir()),
    );
    assert!(
        table
            .stdout
            .contains("UNENFORCED: 1 process(es) use a GPU without gpuslice's limits"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&format!("pid {}", bare.pid())),
        "{}",
        table.stdout
    );
    drop((enforced, bare));
}

/// A process that writes its own usage file can publish any settings; what observers (and
/// the other tenants' watchers) take is capped by the tenant's quota, which it cannot write.
#[test]
fn settings_a_process_publishes_above_its_quota_are_not_believed() {
    let t = TestDir::new();
    let ledger = t.ledger();
    let a = tenant("boaster");
    let gpu = GpuUuid([9; 16]);
    let mut quota = gib_quota(1);
    quota.defaults.compute_share_permille = Some(100);
    ledger.write_quota(&a, &quota).unwrap();
    let usage = ledger.open_usage(&a).unwrap();
    let slot = usage.claim_slot().unwrap();
    let index = usage.register_gpu(&gpu).unwrap();
    slot.publish_compute(
        index,
        ComputeSettings {
            share_permille: Some(1000),
            limit_permille: None,
            priority: Some(Priority::High),
        },
    );
    let status = t.status_json();
    let gpus = &tenant_entry(&status, "boaster")["gpus"];
    assert_eq!(gpus[0]["compute_share_percent"], 10.0, "{gpus:#}");
    assert_eq!(gpus[0]["priority"], "normal", "{gpus:#}");
    drop(slot);
}

/// A hostile tenant's forked child can close its copy of the lock file and keep the
/// driver's descriptors: the parent's slot then looks dead when the parent dies, and the
/// device still holds its memory for the child, counted in no quota. gpuslice cannot see
/// the child holds it, but NVML still lists the memory under the dead parent's PID: status
/// reports that as unenforced memory of a process that is gone.
#[test]
fn memory_a_dead_process_left_to_a_child_is_reported_unenforced() {
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino());
    if host.ok() != Some(0xEFFF_FFFC) {
        eprintln!("SKIPPED: not in the host's PID namespace, where NVML's PIDs can be looked up");
        return;
    }
    let node = Node::new();
    let probe = cudaprobe();
    // Before the process starts: the shim never creates the ledger directory (this raced,
    // and failed once in the suite).
    std::fs::create_dir_all(node.dir.ledger_dir()).unwrap();
    let mut parent = Running::spawn(
        node.bare(&probe)
            .env("LD_PRELOAD", &node.shim)
            .env("GPUSLICE_TENANT", "evil")
            .env("GPUSLICE_DIR", node.dir.ledger_dir())
            .env("GPUSLICE_MEMORY_LIMIT", "1Gi")
            .args(["dlsym", "alloc", "512M", "fork-hold-unlocked", "hold"]),
    );
    let forked = parent.wait_for_line("fork-hold-unlocked");
    let child: i32 = forked
        .split("child_pid=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("child pid");
    parent.wait_for_line("holding");
    let parent_pid = parent.pid();
    parent.signal(libc::SIGKILL);
    let _ = parent.wait(TIMEOUT);

    let status = node_status_json(&node);
    let found = status["unenforced"]["processes"]
        .as_array()
        .unwrap()
        .clone();
    // SAFETY: kill has no memory-safety preconditions; `child` is the probe's child.
    unsafe { libc::kill(child, libc::SIGKILL) };
    assert!(
        found
            .iter()
            .any(|p| p["pid"] == parent_pid && p["gone"] == true),
        "{status:#}"
    );
}
