//! `gpuslice doctor` (one line per check, exit 1 when one fails) and `gpuslice completions`.

use crate::util::*;

/// The line of `doctor`'s output about `topic`.
fn line<'a>(out: &'a Outcome, topic: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{topic}:")))
        })
        .unwrap_or_else(|| panic!("no {topic} line:\n{}", out.stdout))
}

#[test]
fn doctor_fails_on_a_shim_that_is_not_elf() {
    let t = TestDir::new();
    t.ledger();
    let out = finish(
        t.gpuslice(&["doctor", "--dir"])
            .arg(t.ledger_dir())
            .arg("--shim")
            .arg(t.not_a_shim()),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let shim = line(&out, "shim");
    assert!(shim.starts_with("FAIL"), "{shim}");
    assert!(shim.contains("not an ELF shared object"), "{shim}");
    assert!(line(&out, "ledger").starts_with("OK"), "{}", out.stdout);
    assert!(
        line(&out, "environment").starts_with("OK"),
        "{}",
        out.stdout
    );
}

#[test]
fn doctor_accepts_the_real_shim_and_reports_damaged_tenants() {
    let t = TestDir::new();
    let ledger = t.ledger();
    ledger
        .write_quota(&tenant("good"), &Default::default())
        .unwrap();
    ledger
        .write_quota(&tenant("bad"), &Default::default())
        .unwrap();
    std::fs::write(ledger.quota_path(&tenant("bad")), b"not a quota").unwrap();
    let shim = artifact("libgpuslice.so");
    let out = finish(
        t.gpuslice(&["doctor", "--dir"])
            .arg(t.ledger_dir())
            .arg("--shim")
            .arg(&shim),
    );
    let shim_line = line(&out, "shim");
    assert!(shim_line.starts_with("OK"), "{shim_line}");
    assert!(shim_line.contains("cuMemAlloc_v2"), "{shim_line}");
    let bad = line(&out, "tenant bad");
    assert!(bad.starts_with("FAIL"), "{bad}");
    assert!(
        bad.contains(&ledger.quota_path(&tenant("bad")).display().to_string()),
        "{bad}"
    );
    assert_eq!(out.code, Some(1), "{out:?}");

    std::fs::remove_dir_all(ledger.tenant_dir(&tenant("bad"))).unwrap();
    let out = finish(
        t.gpuslice(&["doctor", "--dir"])
            .arg(t.ledger_dir())
            .arg("--shim")
            .arg(&shim),
    );
    // Without a GPU the driver lines are warnings, which do not fail the check.
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(line(&out, "tenants").starts_with("OK"), "{}", out.stdout);
}

#[test]
fn doctor_flags_gpuslice_variables_the_shim_would_refuse() {
    let t = TestDir::new();
    t.ledger();
    let out = finish(
        t.gpuslice(&["doctor", "--dir"])
            .arg(t.ledger_dir())
            .arg("--shim")
            .arg(artifact("libgpuslice.so"))
            .env("GPUSLICE_MEMORY_LIMT", "1Gi")
            .env("GPUSLICE_LOG", "info"),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let env = line(&out, "environment");
    assert!(
        env.starts_with("FAIL") && env.contains("GPUSLICE_MEMORY_LIMT"),
        "{env}"
    );
    assert!(!out.stdout.contains("GPUSLICE_LOG"), "{}", out.stdout);
}

#[test]
fn doctor_lists_the_gpus_of_the_simulated_driver() {
    let node = Node::new();
    node.dir.ledger();
    let out = finish(
        node.gpuslice(&["doctor", "--dir"])
            .arg(node.dir.ledger_dir())
            .arg("--shim")
            .arg(&node.shim),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(line(&out, "driver").starts_with("OK"), "{}", out.stdout);
    let gpu = line(&out, "gpu 0");
    assert!(gpu.starts_with("OK") && gpu.contains(FAKE_GPU0), "{gpu}");
    assert!(gpu.contains("80 GiB total"), "{gpu}");
}

#[test]
fn completions_print_a_script_for_the_shell() {
    let t = TestDir::new();
    let out = finish(t.gpuslice(&["completions", "bash"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("gpuslice"), "{}", out.stdout);
    assert!(out.stdout.contains("complete"), "{}", out.stdout);
    let out = finish(t.gpuslice(&["completions", "tcsh"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

/// Issue 16, item 6: a missing ledger was a warning and an empty one a failure. An empty
/// ledger directory is a ledger without tenants (as status reads it); a missing one that was
/// named (--dir, GPUSLICE_DIR) is a failure, since the shim refuses a GPUSLICE_DIR that does
/// not exist.
#[test]
fn doctor_calls_an_empty_ledger_fine_and_a_missing_named_one_a_failure() {
    let t = TestDir::new();
    let empty = t.path().join("empty-ledger");
    std::fs::create_dir(&empty).unwrap();
    let shim = artifact("libgpuslice.so");
    let out = finish(
        t.gpuslice(&["doctor", "--dir"])
            .arg(&empty)
            .arg("--shim")
            .arg(&shim),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let ledger = line(&out, "ledger");
    assert!(
        ledger.starts_with("OK") && ledger.contains("is writable"),
        "{ledger}"
    );
    let tenants = line(&out, "tenants");
    assert!(
        tenants.starts_with("OK") && tenants.contains("none yet"),
        "{tenants}"
    );

    let missing = t.path().join("missing-ledger");
    for command in [
        t.gpuslice(&["doctor", "--dir"]).arg(&missing),
        t.gpuslice(&["doctor"]).env("GPUSLICE_DIR", &missing),
    ] {
        let out = finish(command.arg("--shim").arg(&shim));
        assert_eq!(out.code, Some(1), "{out:?}");
        let ledger = line(&out, "ledger");
        assert!(
            ledger.starts_with("FAIL") && ledger.contains("does not exist"),
            "{ledger}"
        );
    }
}
