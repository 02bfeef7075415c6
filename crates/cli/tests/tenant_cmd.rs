//! `gpuslice tenant create|flags|delete|list`: tenants for podman and Docker users, which
//! outlive any one command. A process given the printed flags runs under the quota (here
//! without a container; `podman.rs` runs one), and a tenant in use is kept unless forced.

use gpuslice_ledger::Priority;

use crate::util::*;

/// `gpuslice tenant ARGS` on `t`'s ledger, with its shim.
fn tenant_command(t: &TestDir, args: &[&str]) -> std::process::Command {
    let mut command = t.gpuslice(&["tenant"]);
    command.args(args).arg("--dir").arg(t.ledger_dir());
    command
}

/// `gpuslice tenant create NAME ARGS`, which must succeed; its flags line.
fn create(t: &TestDir, name: &str, args: &[&str]) -> String {
    let mut command = tenant_command(t, &["create", name]);
    command.args(args).arg("--shim").arg(t.shim());
    let out = finish(&mut command);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    out.stdout.trim_end().to_string()
}

/// The `-e NAME=value` flags of a flags line.
fn env_of(line: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = line.split(' ').collect();
    words
        .windows(2)
        .filter(|w| w[0] == "-e")
        .filter_map(|w| w[1].split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn tenant_create_writes_the_quota_and_prints_the_flags_of_its_containers() {
    let t = TestDir::new();
    let line = create(
        &t,
        "team-a",
        &[
            "--memory",
            "1Gi",
            "--compute-share",
            "30",
            "--priority",
            "high",
        ],
    );
    let quota = t
        .ledger()
        .read_quota(&tenant("team-a"))
        .unwrap()
        .expect("a quota")
        .quota();
    assert_eq!(quota.defaults.memory_bytes, Some(GIB));
    assert_eq!(quota.defaults.compute_share_permille, Some(300));
    assert_eq!(quota.defaults.priority, Some(Priority::High));
    let env = env_of(&line);
    assert!(
        env.contains(&("GPUSLICE_TENANT".into(), "team-a".into())),
        "{line}"
    );
    let ledger = t.ledger();
    let usage = ledger.usage_path(&tenant("team-a"));
    assert!(usage.is_file(), "the usage file a container mounts");
    assert!(
        line.contains(&format!(
            "--mount type=bind,source={0},target={0} ",
            usage.display()
        )),
        "{line}"
    );

    // Listed, with who made it.
    let out = finish(tenant_command(&t, &["list"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("team-a "))
        .unwrap_or_else(|| panic!("{out:?}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "team-a", "1", "GiB", "30%", "-", "high", "0", "tenant", "create"
        ]
    );

    // Once only; flags prints the line again.
    let mut again = tenant_command(&t, &["create", "team-a"]);
    let out = finish(again.arg("--shim").arg(t.shim()));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("exists already"), "{out:?}");
    let mut flags = tenant_command(&t, &["flags", "team-a"]);
    let out = finish(flags.arg("--shim").arg(t.shim()));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim_end(), line);
}

#[test]
fn a_process_given_the_printed_environment_runs_under_the_tenants_quota() {
    let node = Node::new();
    let line = create(&node.dir, "team-b", &["--memory", "512Mi"]);
    // What a container started with these flags gets in its environment (the mounts put the
    // same host paths at the same places).
    let mut probe = node.bare(&cudaprobe());
    for (name, value) in env_of(&line) {
        probe.env(name, value);
    }
    let out = finish(probe.args(["dlsym", "info", "fill", "64M"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(field(&out.stdout, "info", "total"), 512 * MIB, "{out:?}");
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        512 * MIB - CONTEXT,
        "{out:?}"
    );
    assert_eq!(
        field(&out.stdout, "fill", "rc"),
        2,
        "refused at the quota: {out:?}"
    );
    // The tenant outlives its process.
    assert!(node.dir.tenant_exists("team-b"));
}

#[test]
fn tenant_delete_keeps_a_tenant_in_use_unless_forced() {
    let t = TestDir::new();
    create(&t, "busy", &["--memory", "1Gi"]);

    // A process of it using the GPU (here: this test holding a slot).
    let usage = t.ledger().open_usage(&tenant("busy")).unwrap();
    let slot = usage.claim_slot().unwrap();
    let out = finish(tenant_command(&t, &["delete", "busy"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains("kept tenant busy: 1 process(es) of it hold a live slot"),
        "{out:?}"
    );
    assert!(t.tenant_exists("busy"));
    drop(slot);
    let out = finish(tenant_command(&t, &["delete", "busy"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!t.tenant_exists("busy"));

    // A gpuslice run in it whose command has not used the GPU yet.
    create(&t, "joined", &[]);
    let mut run = t.run(&["--tenant", "joined", "--"]);
    run.args(hold(&t.release_file()));
    let mut running = Running::spawn(&mut run);
    running.wait_for_line("ready");
    let out = finish(tenant_command(&t, &["delete", "joined"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("a gpuslice run is in it"), "{out:?}");
    let out = finish(tenant_command(&t, &["delete", "joined", "--force"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("runs without limits"), "{out:?}");
    assert!(!t.tenant_exists("joined"));
    t.release();
    assert_eq!(running.wait(TIMEOUT).code, Some(0));

    // The device plugin's tenant is its own business.
    let ledger = t.ledger();
    ledger
        .write_quota(&tenant("GPU-x-slice-0"), &Default::default())
        .unwrap();
    std::fs::write(
        ledger
            .tenant_dir(&tenant("GPU-x-slice-0"))
            .join("device-plugin-allocation"),
        "{}",
    )
    .unwrap();
    let out = finish(tenant_command(&t, &["delete", "GPU-x-slice-0"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("the device plugin made it"), "{out:?}");
    let out = finish(tenant_command(&t, &["delete", "GPU-x-slice-0", "--force"]));
    assert_eq!(out.code, Some(0), "{out:?}");

    let out = finish(tenant_command(&t, &["delete", "nobody"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no tenant nobody"), "{out:?}");
}

#[test]
fn tenant_create_with_a_cdi_dir_writes_its_spec_and_delete_removes_it() {
    let t = TestDir::new();
    let cdi_dir = t.path().join("cdi");
    let line = create(
        &t,
        "team-c",
        &[
            "--memory",
            "2Gi",
            "--cdi-dir",
            cdi_dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(line, "--device gpuslice.dev/gpu=team-c");
    let spec_path = cdi_dir.join("gpuslice.dev-gpu_team-c.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec_path).expect("spec")).expect("JSON");
    assert_eq!(spec["kind"], "gpuslice.dev/gpu");
    assert_eq!(spec["devices"][0]["name"], "team-c");
    let out = finish(tenant_command(&t, &["delete", "team-c"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!spec_path.exists(), "the spec was left behind");
}

#[test]
fn tenant_list_of_a_missing_ledger_is_a_usage_error_and_of_an_empty_one_says_so() {
    let t = TestDir::new();
    let out = finish(tenant_command(&t, &["list"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
    std::fs::create_dir(t.ledger_dir()).unwrap();
    let out = finish(tenant_command(&t, &["list"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("(no tenants)"), "{out:?}");
}

#[test]
fn podman_runs_a_container_in_a_tenant_made_by_tenant_create_with_the_printed_flags() {
    use crate::podman::{cannot_run_containers, no_podman, podman_run, rootfs, skip_test};
    let skip = |why: &str| {
        skip_test(
            "podman_runs_a_container_in_a_tenant_made_by_tenant_create_with_the_printed_flags",
            "The flags of gpuslice tenant create are",
            why,
        );
    };
    let node = Node::new();
    if let Some(why) = no_podman() {
        return skip(&why);
    }
    let root = rootfs(node.dir.path());
    if let Some(why) = cannot_run_containers(&root) {
        return skip(&why);
    }
    let line = create(&node.dir, "team-p", &["--memory", "256Mi"]);
    let mut options: Vec<String> = line.split(' ').map(String::from).collect();
    // The simulated GPU stands in for what NVIDIA's toolkit would add.
    for env in [
        "FAKECUDA_DEVICES=1Gi",
        "FAKECUDA_STATE_DIR=/tmp/gpu",
        "LD_LIBRARY_PATH=/usr/lib/gpu",
    ] {
        options.push("-e".into());
        options.push(env.into());
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let out = finish(podman_run(
        &options,
        &root,
        &["/cudaprobe", "dlsym", "info", "fill", "16M"],
    ));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(field(&out.stdout, "info", "total"), 256 * MIB, "{out:?}");
    assert_eq!(
        field(&out.stdout, "fill", "bytes"),
        256 * MIB - CONTEXT,
        "{out:?}"
    );
    assert_eq!(
        field(&out.stdout, "fill", "rc"),
        2,
        "refused at the quota: {out:?}"
    );
    // What it did is in the ledger, through its read-write usage file, and the tenant is
    // still there for the next container.
    let status = node.dir.status_json();
    let entry = status["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["name"] == "team-p")
        .cloned()
        .expect("the tenant in status");
    assert_eq!(entry["gpus"][0]["oom_refusals"], 1, "{status}");
}

/// A process of the tenant can take its entry lock (its containers have its lock file) and
/// never let go: delete must not wait for it forever.
#[test]
fn tenant_delete_does_not_hang_on_an_entry_lock_a_process_of_the_tenant_holds() {
    let t = TestDir::new();
    create(&t, "stuck", &[]);
    let locks = t.ledger().open_locks(&tenant("stuck")).unwrap();
    let holder = locks.handle().unwrap();
    assert!(
        holder
            .try_lock(
                gpuslice_ledger::layout::lock_bytes::RUN_ENTRY,
                gpuslice_ledger::LockKind::Exclusive
            )
            .unwrap()
    );
    let out = finish(tenant_command(&t, &["delete", "stuck"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("entry lock stayed taken"), "{out:?}");
    assert!(t.tenant_exists("stuck"));
    let out = finish(tenant_command(&t, &["delete", "stuck", "--force"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!t.tenant_exists("stuck"));
    drop(holder);
}

/// `tenant create` of a name that exists (a typo, a tenant the device plugin made) waited
/// for the tenant's entry lock without end before it looked: a process of that tenant can
/// take the lock (its containers have its lock file) and hung the operator's command
/// forever, instead of its being told the tenant exists.
#[test]
fn tenant_create_of_an_existing_tenant_does_not_hang_on_an_entry_lock_it_holds() {
    let t = TestDir::new();
    create(&t, "taken", &[]);
    let locks = t.ledger().open_locks(&tenant("taken")).unwrap();
    let holder = locks.handle().unwrap();
    assert!(
        holder
            .try_lock(
                gpuslice_ledger::layout::lock_bytes::RUN_ENTRY,
                gpuslice_ledger::LockKind::Exclusive
            )
            .unwrap()
    );
    let mut command = tenant_command(&t, &["create", "taken"]);
    command.arg("--shim").arg(t.shim());
    let out = finish(&mut command);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("tenant taken exists already"),
        "{out:?}"
    );

    // A lock file without a quota (a tenant half made, or half removed) whose entry lock is
    // held: a clear error after a while, not a wait without end.
    let ledger = t.ledger();
    let half = tenant("half");
    let locks = ledger.open_locks(&half).unwrap();
    let holder = locks.handle().unwrap();
    assert!(
        holder
            .try_lock(
                gpuslice_ledger::layout::lock_bytes::RUN_ENTRY,
                gpuslice_ledger::LockKind::Exclusive
            )
            .unwrap()
    );
    let mut command = tenant_command(&t, &["create", "half"]);
    command.arg("--shim").arg(t.shim());
    let out = finish(&mut command);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("entry lock") && out.stderr.contains("half"),
        "{out:?}"
    );
    assert!(ledger.read_quota(&half).unwrap().is_none());
}

/// A tenant made by `tenant create` or `run` under a name of the device plugin's form
/// (`GPU-<uuid>-slice-<n>`) was removed by the plugin's next `Allocate` of that slice, or,
/// with a process in it, put under the pod's quota beside the pod's container; one under
/// `dra-<claim uid>` kept that claim from being prepared. Such names are refused when a
/// tenant would be made under them (joining one that exists is still allowed).
#[test]
fn tenant_create_and_run_refuse_names_of_the_device_plugins_and_the_dra_drivers_form() {
    let t = TestDir::new();
    for name in [
        format!("{FAKE_GPU0}-slice-0"),
        "dra-6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f".to_string(),
    ] {
        let mut command = tenant_command(&t, &["create", &name]);
        command.arg("--shim").arg(t.shim());
        let out = finish(&mut command);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("tenant name {name} is of the form")),
            "{out:?}"
        );
        assert!(!t.tenant_exists(&name));
        let out = finish(t.run(&["--tenant", &name, "--", "true"]));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains("choose another name"), "{out:?}");
        assert!(!t.tenant_exists(&name));
    }
    // Names that only look alike are anyone's.
    create(&t, "dra-team", &[]);
    create(&t, "GPU-team-slice-0", &[]);
}

/// `run` and `tenant create` take one set of quota flags (issue 17: they were two copies,
/// free to drift): a table of flag sets, each given to both, must be accepted by both with
/// the same quota file, or refused by both with the same message naming the flag.
#[test]
fn run_and_tenant_create_accept_and_refuse_exactly_the_same_quota_flags() {
    use gpuslice_ledger::{GpuUuid, Ledger, Limits, TenantQuota};

    let node = Node::new();
    let gpu0 = GpuUuid::parse(FAKE_GPU0).unwrap();
    let gpu1 = GpuUuid::parse("GPU-fa4ec0da-0000-4000-8000-000000000001").unwrap();
    let memory = |bytes: u64| TenantQuota {
        defaults: Limits {
            memory_bytes: Some(bytes),
            ..Limits::default()
        },
        per_gpu: Vec::new(),
    };
    let compute = Limits {
        compute_share_permille: Some(125),
        compute_limit_permille: Some(500),
        priority: Some(Priority::Low),
        ..Limits::default()
    };
    let high = Limits {
        priority: Some(Priority::High),
        ..Limits::default()
    };
    // Each flag set, and what both must make of it: the quota, or a flag the refusal names.
    let table: Vec<(&[&str], Result<TenantQuota, &str>)> = vec![
        (&[], Ok(TenantQuota::default())),
        (&["--memory", "1.5Gi"], Ok(memory(3 * GIB / 2))),
        (
            &[
                "--memory",
                "512Mi",
                "--compute-share",
                "12.5%",
                "--compute-limit",
                "50",
                "--priority",
                "low",
            ],
            Ok(TenantQuota {
                defaults: Limits {
                    memory_bytes: Some(512 * MIB),
                    ..compute
                },
                per_gpu: Vec::new(),
            }),
        ),
        (
            &["--memory", "1Gi", "--gpu", "1"],
            Ok(TenantQuota {
                defaults: Limits::default(),
                per_gpu: vec![(
                    gpu1,
                    Limits {
                        memory_bytes: Some(GIB),
                        ..Limits::default()
                    },
                )],
            }),
        ),
        (
            &["--priority", "High", "--memory", "2G", "--gpu", FAKE_GPU0],
            Ok(TenantQuota {
                defaults: high,
                per_gpu: vec![(
                    gpu0,
                    Limits {
                        memory_bytes: Some(2_000_000_000),
                        ..high
                    },
                )],
            }),
        ),
        (&["--memory", "4GB"], Err("--memory")),
        (&["--memory", "1Gi", "--memory", "2Gi"], Err("--memory")),
        (&["--compute-share", "0"], Err("--compute-share")),
        (&["--compute-share", "100.1"], Err("--compute-share")),
        (&["--compute-limit", "30.25"], Err("--compute-limit")),
        (&["--priority", "urgent"], Err("--priority")),
        // --gpu places --memory; alone it would place nothing.
        (&["--gpu", "0"], Err("--memory")),
        (&["--memory", "1Gi", "--gpu", "2"], Err("--gpu 2")),
        (
            &["--memory", "1Gi", "--gpu", "GPU-nope"],
            Err("--gpu \"GPU-nope\""),
        ),
    ];
    let two_gpus = |mut command: std::process::Command| {
        command.env("FAKECUDA_DEVICES", "80Gi,80Gi");
        command
    };
    let from_run = node.dir.path().join("from-run");
    let ledger = node.dir.ledger();
    for (i, (flags, expected)) in table.into_iter().enumerate() {
        let name = format!("quota-{i}");
        // run: its command copies the quota file of the tenant it was given, which run
        // removes when it exits, into a ledger of its own.
        let copy_dir = from_run.join("tenants").join(&name);
        let copy = format!(
            "mkdir -p '{0}' && cp '{1}' '{0}/quota'",
            copy_dir.display(),
            ledger.quota_path(&tenant(&name)).display()
        );
        let mut run = two_gpus(node.run(&["--tenant", &name]));
        run.args(flags).args(["--", "sh", "-c", &copy]);
        let by_run = finish(run);
        assert!(!node.dir.tenant_exists(&name), "{flags:?}: run left it");

        let mut create = two_gpus(node.gpuslice(&["tenant", "create", &name]));
        create
            .args(flags)
            .arg("--dir")
            .arg(node.dir.ledger_dir())
            .arg("--shim")
            .arg(&node.shim);
        let by_create = finish(create);

        match expected {
            Ok(quota) => {
                assert_eq!(by_run.code, Some(0), "{flags:?}: {by_run:?}");
                assert_eq!(by_create.code, Some(0), "{flags:?}: {by_create:?}");
                let read = |ledger: &Ledger| {
                    ledger
                        .read_quota(&tenant(&name))
                        .expect("a readable quota")
                        .unwrap_or_else(|| panic!("{flags:?}: no quota file"))
                        .quota()
                };
                assert_eq!(read(&ledger), quota, "{flags:?}: tenant create");
                assert_eq!(read(&Ledger::at_path(&from_run)), quota, "{flags:?}: run");
                assert_eq!(
                    std::fs::read(copy_dir.join("quota")).unwrap(),
                    std::fs::read(ledger.quota_path(&tenant(&name))).unwrap(),
                    "{flags:?}: the two quota files differ"
                );
            }
            Err(flag) => {
                assert_eq!(by_run.code, Some(2), "{flags:?}: {by_run:?}");
                assert_eq!(by_create.code, Some(2), "{flags:?}: {by_create:?}");
                // The same message (clap's usage line, which names the subcommand, aside).
                let message =
                    |stderr: &str| stderr.split("Usage:").next().unwrap_or("").to_string();
                assert_eq!(
                    message(&by_run.stderr),
                    message(&by_create.stderr),
                    "{flags:?}"
                );
                assert!(by_run.stderr.contains(flag), "{flags:?}: {by_run:?}");
                assert!(!copy_dir.exists(), "{flags:?}: run ran its command");
                assert!(!node.dir.tenant_exists(&name), "{flags:?}: created");
            }
        }
    }
}
