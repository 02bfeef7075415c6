//! `gpuslice cdi generate`: the specs it writes are ones container runtimes accept.

use gpuslice_ledger::TenantQuota;

use crate::util::*;

/// CDI's rule for a device name (the CDI library's parser): ASCII letters, digits, `_`, `-`,
/// `.` and `:`, starting and ending with a letter or a digit. Written out here, apart from
/// the command's own check, so that the test does not grade the code with itself.
fn cdi_accepts_device_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !name.is_empty()
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '_' | '-' | '.' | ':'))
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

/// Issue 15, item 7: tenants named `team_`, `a-` or `_x` were made, and `cdi generate` wrote
/// them into a spec that podman then refused whole, every other tenant's device with it.
#[test]
fn cdi_names_the_runtime_refuses_are_never_made_or_written() {
    let node = Node::new();
    let ledger = node.dir.ledger();
    for good in ["team-a", "b.2"] {
        ledger
            .write_quota(&tenant(good), &TenantQuota::default())
            .expect("quota");
    }
    let shim = node.shim.display().to_string();
    let generate = |extra: &[&str]| {
        let mut command = node.dir.gpuslice(&["cdi", "generate", "--dir"]);
        command
            .arg(node.dir.ledger_dir())
            .args(["--shim", &shim])
            .args(extra);
        finish(command)
    };

    for bad in ["team_", "a-", "_x", "x."] {
        // Where tenants are made: `run --tenant`.
        let out = finish(node.run(&["--tenant", bad, "--", "true"]));
        assert_eq!(out.code, Some(2), "run --tenant {bad}: {out:?}");
        assert!(
            out.stderr
                .contains("must start and end with a letter or a digit"),
            "{out:?}"
        );
        assert!(!node.dir.tenant_exists(bad), "run made tenant {bad}");
        // Where specs are made: `cdi generate --tenant`.
        let out = generate(&["--tenant", bad]);
        assert_eq!(out.code, Some(2), "cdi generate --tenant {bad}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }

    // A directory of such a name, left by an older version, is not a tenant: the spec of
    // the whole ledger holds the valid tenants only, and every name in it passes CDI's rule.
    std::fs::create_dir_all(node.dir.ledger_dir().join("tenants").join("team_")).unwrap();
    let out = generate(&[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let spec: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["b.2", "team-a"]);
    assert!(
        names.iter().all(|n| cdi_accepts_device_name(n)),
        "{names:?}"
    );
}

/// A spec without devices is refused by runtimes too: `cdi generate` on a ledger without
/// tenants says so instead of writing one.
#[test]
fn cdi_generate_without_tenants_writes_no_spec() {
    let node = Node::new();
    node.dir.ledger();
    let file = node.dir.path().join("spec.json");
    let out = finish(
        node.dir
            .gpuslice(&["cdi", "generate", "--dir"])
            .arg(node.dir.ledger_dir())
            .arg("--shim")
            .arg(&node.shim)
            .arg("--output")
            .arg(&file),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no tenants"), "{out:?}");
    assert!(!file.exists(), "an empty spec was written");
}

/// Issue 15, item 4, for specs: a container given a file that is not the shim would run
/// without limits, so `cdi generate` refuses to name one.
#[test]
fn cdi_generate_refuses_a_shim_that_is_not_the_shim() {
    let node = Node::new();
    node.dir
        .ledger()
        .write_quota(&tenant("team-a"), &TenantQuota::default())
        .expect("quota");
    for shim in [node.dir.not_a_shim(), artifact("libfakecuda.so")] {
        let out = finish(
            node.dir
                .gpuslice(&["cdi", "generate", "--dir"])
                .arg(node.dir.ledger_dir())
                .arg("--shim")
                .arg(&shim),
        );
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(out.stderr.contains(&shim.display().to_string()), "{out:?}");
    }
}

/// Issue 15, item 8, for specs: a ledger path that is not UTF-8 would be written into the
/// spec as another path (each odd byte replaced), so containers would use another ledger.
#[test]
fn cdi_generate_refuses_a_ledger_path_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let node = Node::new();
    let dir = node
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"ledger-\xff"));
    std::fs::create_dir(&dir).unwrap();
    let out = finish(
        node.dir
            .gpuslice(&["cdi", "generate", "--dir"])
            .arg(&dir)
            .arg("--shim")
            .arg(&node.shim),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("is not UTF-8"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}
