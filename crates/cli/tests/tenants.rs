//! `gpuslice run` and tenants: the quota it writes, joining, and who removes the tenant.

use std::os::unix::fs::PermissionsExt;

use gpuslice_ledger::{GpuUuid, Limits, Priority, TenantQuota};

use crate::util::*;

/// `gpuslice run ARGS -- <hold>` started, and ready.
fn start_holding(t: &TestDir, args: &[&str]) -> Running {
    let mut command = t.run(args);
    command.arg("--").args(hold(&t.release_file()));
    let mut run = Running::spawn(&mut command);
    run.wait_for_line("ready");
    run
}

/// The tenant's quota, which must exist.
fn quota_of(t: &TestDir, name: &str) -> TenantQuota {
    t.ledger()
        .read_quota(&tenant(name))
        .expect("readable quota")
        .unwrap_or_else(|| panic!("tenant {name} has no quota file"))
        .quota()
}

#[test]
fn run_creates_the_tenant_with_its_quota_and_removes_it_after() {
    let t = TestDir::new();
    let run = start_holding(&t, &["--tenant", "team-a", "--memory", "1.5Gi"]);
    let quota = quota_of(&t, "team-a");
    assert_eq!(quota.defaults.memory_bytes, Some(3 * GIB / 2));
    assert!(quota.per_gpu.is_empty());
    assert!(
        t.ledger_dir()
            .join("tenants/team-a/created-by-run")
            .exists()
    );
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
    assert!(!t.tenant_exists("team-a"), "the tenant was left behind");
}

#[test]
fn run_without_memory_creates_an_unlimited_tenant() {
    let t = TestDir::new();
    let run = start_holding(&t, &["--tenant", "free"]);
    assert_eq!(quota_of(&t, "free"), TenantQuota::default());
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
}

/// `gpuslice run ARGS -- <hold>` on the simulated node, started, and ready.
fn start_holding_on(node: &Node, args: &[&str]) -> Running {
    let mut command = node.run(args);
    command.arg("--").args(hold(&node.dir.release_file()));
    let mut run = Running::spawn(&mut command);
    run.wait_for_line("ready");
    run
}

#[test]
fn run_with_gpu_limits_that_gpu_only() {
    let node = Node::new();
    let run = start_holding_on(
        &node,
        &[
            "--tenant", "one-gpu", "--memory", "512Mi", "--gpu", FAKE_GPU0,
        ],
    );
    let quota = quota_of(&node.dir, "one-gpu");
    assert_eq!(
        quota.defaults,
        Limits::default(),
        "other GPUs stay unlimited"
    );
    assert_eq!(
        quota.per_gpu,
        vec![(
            GpuUuid::parse(FAKE_GPU0).unwrap(),
            Limits {
                memory_bytes: Some(512 * MIB),
                ..Limits::default()
            }
        )]
    );
    node.dir.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
}

#[test]
fn gpu_index_is_looked_up_with_nvml() {
    let node = Node::new();
    let two_gpus = |args: &[&str]| {
        let mut command = node.run(args);
        command.env("FAKECUDA_DEVICES", "80Gi,80Gi");
        command
    };
    let mut command = two_gpus(&["--tenant", "by-index", "--memory", "1Gi", "--gpu", "1"]);
    command.arg("--").args(hold(&node.dir.release_file()));
    let mut run = Running::spawn(&mut command);
    run.wait_for_line("ready");
    let quota = quota_of(&node.dir, "by-index");
    assert_eq!(
        quota.per_gpu[0].0.to_string(),
        "GPU-fa4ec0da-0000-4000-8000-000000000001"
    );
    node.dir.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));

    let out = finish(two_gpus(&["--memory", "1Gi", "--gpu", "2", "--", "true"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no such GPU"), "{out:?}");
    assert!(
        out.stderr
            .contains("0 GPU-fa4ec0da-0000-4000-8000-000000000000, 1 GPU-fa4ec0da"),
        "{out:?}"
    );
}

/// Issue 15, item 4: without NVML, whether a GPU exists cannot be known, and a quota on a
/// GPU that is not there would limit nothing.
#[test]
fn gpu_without_nvml_is_refused() {
    let t = TestDir::new();
    let marker = t.path().join("ran");
    for gpu in ["0", "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d"] {
        let out = finish(
            t.run(&["--memory", "1Gi", "--gpu", gpu, "--", "touch"])
                .arg(&marker),
        );
        assert_eq!(out.code, Some(2), "--gpu {gpu}: {out:?}");
        assert!(out.stderr.contains(&format!("--gpu {gpu}")), "{out:?}");
        assert!(out.stderr.contains("NVML"), "{out:?}");
        assert!(!marker.exists(), "the command ran");
    }
}

#[test]
fn joining_with_more_memory_than_the_quota_fails_naming_both() {
    let t = TestDir::new();
    let first = start_holding(&t, &["--tenant", "shared", "--memory", "1Gi"]);
    let marker = t.path().join("second-ran");
    let out = finish(t.run(&[
        "--tenant",
        "shared",
        "--memory",
        "2Gi",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("2Gi") && out.stderr.contains("1Gi"),
        "{out:?}"
    );
    assert!(out.stderr.contains("shared"), "{out:?}");
    assert!(!marker.exists(), "the command ran");
    // The refused run changed nothing.
    assert_eq!(quota_of(&t, "shared").defaults.memory_bytes, Some(GIB));
    t.release();
    assert_eq!(first.wait(TIMEOUT).code, Some(0));
    assert!(!t.tenant_exists("shared"));
}

#[test]
fn joining_with_less_memory_lowers_the_limit_for_that_command() {
    let t = TestDir::new();
    let first = start_holding(&t, &["--tenant", "shared", "--memory", "1Gi"]);
    let echo = ["sh", "-c", "echo ${GPUSLICE_MEMORY_LIMIT-unset}"];
    let out = finish(
        t.run(&["--tenant", "shared", "--memory", "512Mi", "--"])
            .args(echo),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), (512 * MIB).to_string());
    // The same limit, or none, sets nothing: the quota file already says it.
    for memory in [&["--memory", "1Gi"][..], &[][..]] {
        let out = finish(
            t.run(&["--tenant", "shared"])
                .args(memory)
                .arg("--")
                .args(echo),
        );
        assert_eq!(out.stdout.trim(), "unset", "{memory:?}: {out:?}");
    }
    assert!(
        t.tenant_exists("shared"),
        "a joiner removed the creator's tenant"
    );
    t.release();
    assert_eq!(first.wait(TIMEOUT).code, Some(0));
}

#[test]
fn last_run_to_leave_removes_the_tenant_whoever_created_it() {
    let t = TestDir::new();
    let creator_release = t.path().join("creator-done");
    let mut creator = t.run(&["--tenant", "pair", "--memory", "1Gi", "--"]);
    creator.args(hold(&creator_release));
    let mut creator = Running::spawn(&mut creator);
    creator.wait_for_line("ready");
    let joiner = start_holding(&t, &["--tenant", "pair"]);

    std::fs::write(&creator_release, "").unwrap();
    assert_eq!(creator.wait(TIMEOUT).code, Some(0));
    assert!(
        t.tenant_exists("pair"),
        "removed while a joined run was still in it"
    );
    assert_eq!(quota_of(&t, "pair").defaults.memory_bytes, Some(GIB));

    t.release();
    assert_eq!(joiner.wait(TIMEOUT).code, Some(0));
    assert!(
        !t.tenant_exists("pair"),
        "the last run out did not remove it"
    );
}

#[test]
fn tenant_is_kept_while_a_process_holds_a_live_slot() {
    let t = TestDir::new();
    let run = start_holding(&t, &["--tenant", "busy", "--memory", "1Gi"]);
    // A process of the tenant outside `gpuslice run` (here: this test) uses the GPU.
    let usage = t.ledger().open_usage(&tenant("busy")).unwrap();
    let slot = usage.claim_slot().unwrap();
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
    assert!(t.tenant_exists("busy"), "removed under a live process");
    drop(slot);

    // Once it is gone, the next run of the tenant cleans up after itself.
    let out = finish(t.run(&["--tenant", "busy", "--", "true"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!t.tenant_exists("busy"));
}

#[test]
fn tenant_not_created_by_a_run_is_joined_and_kept() {
    let t = TestDir::new();
    let ledger = t.ledger();
    let quota = TenantQuota {
        defaults: Limits {
            memory_bytes: Some(2 * GIB),
            ..Limits::default()
        },
        per_gpu: vec![],
    };
    ledger.write_quota(&tenant("pod-1"), &quota).unwrap();
    let out = finish(t.run(&[
        "--tenant",
        "pod-1",
        "--memory",
        "1Gi",
        "--",
        "sh",
        "-c",
        "echo $GPUSLICE_MEMORY_LIMIT",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), GIB.to_string());
    assert_eq!(
        quota_of(&t, "pod-1"),
        quota,
        "the creator's quota was changed"
    );
    assert!(!t.ledger_dir().join("tenants/pod-1/created-by-run").exists());

    let out = finish(t.run(&["--tenant", "pod-1", "--memory", "3Gi", "--", "true"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn tenant_left_behind_by_a_killed_run_is_created_afresh() {
    let t = TestDir::new();
    // What a `gpuslice run --tenant old --memory 1Gi` killed with SIGKILL leaves behind.
    let ledger = t.ledger();
    ledger
        .write_quota(
            &tenant("old"),
            &TenantQuota {
                defaults: Limits {
                    memory_bytes: Some(GIB),
                    ..Limits::default()
                },
                per_gpu: vec![],
            },
        )
        .unwrap();
    std::fs::write(t.ledger_dir().join("tenants/old/created-by-run"), "").unwrap();

    let run = start_holding(&t, &["--tenant", "old", "--memory", "4Gi"]);
    assert_eq!(quota_of(&t, "old").defaults.memory_bytes, Some(4 * GIB));
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
    assert!(!t.tenant_exists("old"));
}

#[test]
fn killed_gpuslice_leaves_a_tenant_the_next_run_replaces() {
    let t = TestDir::new();
    let mut first = start_holding(&t, &["--tenant", "crash", "--memory", "1Gi"]);
    first.signal(libc::SIGKILL);
    // Its command outlives it (and keeps its stdout open) until released.
    t.release();
    let _ = first.wait(TIMEOUT);
    assert!(t.tenant_exists("crash"));
    let out = finish(t.run(&["--tenant", "crash", "--memory", "2Gi", "--", "true"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!t.tenant_exists("crash"));
}

#[test]
fn many_runs_of_one_tenant_at_once_leave_nothing_behind() {
    let t = TestDir::new();
    let runs: Vec<Running> = (0..8)
        .map(|_| {
            let mut command = t.run(&["--tenant", "crowd", "--memory", "1Gi", "--"]);
            command.args(hold(&t.release_file()));
            Running::spawn(&mut command)
        })
        .collect();
    let mut runs: Vec<Running> = runs
        .into_iter()
        .map(|mut r| {
            r.wait_for_line("ready");
            r
        })
        .collect();
    assert_eq!(quota_of(&t, "crowd").defaults.memory_bytes, Some(GIB));
    t.release();
    for run in runs.drain(..) {
        assert_eq!(run.wait(TIMEOUT).code, Some(0));
    }
    assert!(!t.tenant_exists("crowd"));
}

#[test]
fn run_writes_compute_settings_into_the_quota_and_not_the_environment() {
    let node = Node::new();
    let t = &node.dir;
    let mut command = node.run(&[
        "--tenant",
        "shares",
        "--memory",
        "1Gi",
        "--gpu",
        FAKE_GPU0,
        "--compute-share",
        "30%",
        "--compute-limit",
        "12.5",
        "--priority",
        "low",
        "--",
        "sh",
        "-c",
    ]);
    command.arg(format!(
        "echo \"${{GPUSLICE_COMPUTE_SHARE-unset}}|${{GPUSLICE_PRIORITY-unset}}\"; {}",
        hold(&t.release_file())[2]
    ));
    let mut run = Running::spawn(&mut command);
    let seen = run.wait_for_line("ready");
    assert!(seen.starts_with("unset|unset"), "{seen}");
    let quota = quota_of(t, "shares");
    // Compute settings are per tenant, on every GPU; --gpu places the memory limit.
    assert_eq!(quota.defaults.compute_share_permille, Some(300));
    assert_eq!(quota.defaults.compute_limit_permille, Some(125));
    assert_eq!(quota.defaults.priority, Some(Priority::Low));
    assert_eq!(quota.defaults.memory_bytes, None);
    assert_eq!(quota.per_gpu.len(), 1);
    assert_eq!(quota.per_gpu[0].1.memory_bytes, Some(GIB));
    assert_eq!(quota.per_gpu[0].1.compute_share_permille, Some(300));
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
}

#[test]
fn joining_with_a_higher_share_limit_or_priority_fails_and_a_lower_one_is_passed_on() {
    let t = TestDir::new();
    let first = start_holding(
        &t,
        &[
            "--tenant",
            "shared",
            "--compute-share",
            "50",
            "--compute-limit",
            "80",
            "--priority",
            "normal",
        ],
    );
    let marker = t.path().join("second-ran");
    for (flag, value, names) in [
        ("--compute-share", "60", ["60%", "50%"]),
        ("--compute-limit", "100", ["100%", "80%"]),
        ("--priority", "high", ["high", "normal"]),
    ] {
        let out = finish(t.run(&[
            "--tenant",
            "shared",
            flag,
            value,
            "--",
            "touch",
            marker.to_str().unwrap(),
        ]));
        assert_eq!(out.code, Some(2), "{flag}: {out:?}");
        assert!(
            out.stderr.contains(names[0]) && out.stderr.contains(names[1]),
            "{flag}: {out:?}"
        );
        assert!(out.stderr.contains("shared"), "{out:?}");
        assert!(!marker.exists(), "the command ran");
    }
    let echo = "echo ${GPUSLICE_COMPUTE_SHARE-unset} ${GPUSLICE_COMPUTE_LIMIT-unset} \
                ${GPUSLICE_PRIORITY-unset}";
    let out = finish(t.run(&[
        "--tenant",
        "shared",
        "--compute-share",
        "20.5",
        "--compute-limit",
        "80",
        "--priority",
        "low",
        "--",
        "sh",
        "-c",
        echo,
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "20.5 unset low",
        "the same limit sets nothing"
    );
    assert!(
        out.stderr.contains("joining tenant shared")
            && out
                .stderr
                .contains("compute share 20.5% (the tenant's: 50%)"),
        "{out:?}"
    );
    // The refused and the lowering runs changed nothing.
    let quota = quota_of(&t, "shared");
    assert_eq!(quota.defaults.compute_share_permille, Some(500));
    assert_eq!(quota.defaults.priority, Some(Priority::Normal));
    t.release();
    assert_eq!(first.wait(TIMEOUT).code, Some(0));
}

/// Makes `path` and its parents traversable (and readable) by everyone, as a shared ledger
/// directory is, so that another user reaches it.
fn open_to_others(path: &std::path::Path) {
    for p in path
        .ancestors()
        .take_while(|p| *p != std::path::Path::new("/"))
    {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
    }
}

#[test]
fn another_users_locks_on_a_run_tenant_neither_hang_nor_keep_it() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run the other user (uid 65534)");
        return;
    }
    let t = TestDir::new();
    let run = start_holding(&t, &["--tenant", "shared", "--memory", "1Gi"]);
    open_to_others(&t.ledger_dir().join("tenants/shared"));
    let dir = t.ledger_dir().join("tenants/shared");
    let marker = dir.join("created-by-run");
    // Another user holds flock(2) locks, exclusive, on what it can open of the tenant: its
    // directory and marker (what runs locked before the tenant's lock file did it).
    let mut other = Running::spawn(
        std::process::Command::new("flock")
            .arg("-x")
            .arg(&dir)
            .args(["flock", "-x"])
            .arg(&marker)
            .args(["sh", "-c"])
            .arg("echo ready; sleep 600")
            .uid(65534)
            .gid(65534),
    );
    other.wait_for_line("ready");
    // A second run of the tenant enters and leaves, and so does the first: nobody waits on
    // the other user.
    let out = finish(t.run(&["--tenant", "shared", "--", "true"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    t.release();
    assert_eq!(run.wait(TIMEOUT).code, Some(0));
    assert!(
        !t.tenant_exists("shared"),
        "the other user's locks kept the tenant"
    );
    assert!(
        !t.ledger().lock_path(&tenant("shared")).exists(),
        "the lock file goes with the tenant"
    );
    drop(other);
}
