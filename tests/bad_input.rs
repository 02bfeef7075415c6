//! Bad settings and bad ledger files: refused with one clear line, CUDA fails closed.

mod util;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use gpuslice_ledger::{Ledger, Limits, TenantName, TenantQuota};
use util::*;

/// Runs cudaprobe and returns (stdout, stderr).
fn probe_with(node: &Node, vars: &[(&str, &str)]) -> (String, String) {
    let mut command = node.probe(CallPath::Dlsym, "a", None, &["alloc", "1M"]);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = run(&mut command);
    assert!(output.status.success(), "{output:?}");
    (
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn assert_fails_closed(stdout: &str, stderr: &str, expected: &str) {
    assert_eq!(
        field(line(stdout, "init"), "rc"),
        3,
        "CUDA init must fail: {stdout}"
    );
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].starts_with("gpuslice["), "{stderr}");
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in {stderr}"
    );
}

#[test]
fn each_invalid_setting_is_refused_with_its_name_value_and_form() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "GPUSLICE_MEMORY_LIMIT",
            "4GB",
            "invalid GPUSLICE_MEMORY_LIMIT=\"4GB\": expected a byte quantity such as 4Gi",
        ),
        (
            "GPUSLICE_MEMORY_LIMIT",
            "-1",
            "invalid GPUSLICE_MEMORY_LIMIT=\"-1\"",
        ),
        (
            "GPUSLICE_MEMORY_LIMIT",
            "",
            "invalid GPUSLICE_MEMORY_LIMIT=\"\"",
        ),
        (
            "GPUSLICE_TENANT",
            "../x",
            "invalid GPUSLICE_TENANT=\"../x\": expected 1 to 63 characters",
        ),
        (
            "GPUSLICE_DIR",
            "relative/dir",
            "invalid GPUSLICE_DIR=\"relative/dir\": expected an absolute path",
        ),
        (
            "GPUSLICE_LOG",
            "loud",
            "invalid GPUSLICE_LOG=\"loud\": expected one of off, error",
        ),
        (
            "GPUSLICE_MEMORY_LIMT",
            "1Gi",
            "unknown variable GPUSLICE_MEMORY_LIMT",
        ),
        (
            "GPUSLICE_COMPUTE_SHARE",
            "0",
            "invalid GPUSLICE_COMPUTE_SHARE=\"0\": expected a percentage from 0.1 to 100",
        ),
        (
            "GPUSLICE_COMPUTE_LIMIT",
            "30 percent",
            "invalid GPUSLICE_COMPUTE_LIMIT=\"30 percent\": expected a percentage",
        ),
        (
            "GPUSLICE_PRIORITY",
            "urgent",
            "invalid GPUSLICE_PRIORITY=\"urgent\": expected one of high, normal, low",
        ),
    ];
    for (name, value, expected) in cases {
        let node = Node::new();
        let (stdout, stderr) = probe_with(&node, &[(name, value)]);
        assert_fails_closed(&stdout, &stderr, expected);
    }
}

#[test]
fn a_limit_without_a_tenant_is_refused() {
    let node = Node::new();
    let mut command = node.probe(CallPath::Dlsym, "a", Some("1Gi"), &["alloc", "1M"]);
    command.env_remove("GPUSLICE_TENANT");
    let output = run(&mut command);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_fails_closed(
        &stdout,
        &stderr,
        "GPUSLICE_MEMORY_LIMIT is set but GPUSLICE_TENANT is not",
    );
}

fn write_usage_file(node: &Node, bytes: &[u8]) -> std::path::PathBuf {
    let path = node.ledger_dir().join("tenants").join("a").join("usage");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_corrupt_usage_file_is_refused_naming_the_file() {
    let node = Node::new();
    let path = write_usage_file(&node, &[0x42; 35904]);
    let (stdout, stderr) = probe_with(&node, &[("GPUSLICE_MEMORY_LIMIT", "1Gi")]);
    assert_fails_closed(&stdout, &stderr, &path.display().to_string());
}

#[test]
fn a_truncated_usage_file_is_refused() {
    let node = Node::new();
    // A real usage file, cut short.
    let ledger = node.ledger();
    let tenant = gpuslice_ledger::TenantName::new("a").unwrap();
    drop(ledger.open_usage(&tenant).unwrap());
    let path = ledger.usage_path(&tenant);
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let (stdout, stderr) = probe_with(&node, &[("GPUSLICE_MEMORY_LIMIT", "1Gi")]);
    assert_fails_closed(&stdout, &stderr, &path.display().to_string());
}

#[test]
fn a_usage_file_of_another_layout_version_is_refused() {
    let node = Node::new();
    let ledger = node.ledger();
    let tenant = gpuslice_ledger::TenantName::new("a").unwrap();
    drop(ledger.open_usage(&tenant).unwrap());
    let path = ledger.usage_path(&tenant);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let (stdout, stderr) = probe_with(&node, &[("GPUSLICE_MEMORY_LIMIT", "1Gi")]);
    assert_fails_closed(&stdout, &stderr, &path.display().to_string());
    assert!(
        stderr.contains("99"),
        "the message names the version found: {stderr}"
    );
}

#[test]
fn a_quota_file_in_the_usage_files_place_is_refused() {
    let node = Node::new();
    let ledger = node.ledger();
    let tenant = gpuslice_ledger::TenantName::new("a").unwrap();
    ledger
        .write_quota(&tenant, &gpuslice_ledger::TenantQuota::default())
        .unwrap();
    let quota = std::fs::read(ledger.quota_path(&tenant)).unwrap();
    let path = write_usage_file(&node, &quota);
    let (stdout, stderr) = probe_with(&node, &[("GPUSLICE_MEMORY_LIMIT", "1Gi")]);
    assert_fails_closed(&stdout, &stderr, &path.display().to_string());
}

#[test]
fn a_corrupt_quota_file_is_refused() {
    let node = Node::new();
    let ledger = node.ledger();
    let tenant = gpuslice_ledger::TenantName::new("a").unwrap();
    let path = ledger.quota_path(&tenant);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"memory=4Gi\n").unwrap();
    let (stdout, stderr) = probe_with(&node, &[("GPUSLICE_MEMORY_LIMIT", "1Gi")]);
    assert_fails_closed(&stdout, &stderr, &path.display().to_string());
}

#[test]
fn an_unusable_ledger_directory_is_refused() {
    let node = Node::new();
    let blocker = node.root.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let dir = blocker.join("ledger");
    let (stdout, stderr) = probe_with(
        &node,
        &[
            ("GPUSLICE_MEMORY_LIMIT", "1Gi"),
            ("GPUSLICE_DIR", dir.to_str().unwrap()),
        ],
    );
    assert_fails_closed(&stdout, &stderr, &blocker.display().to_string());
}

/// A quota of `limit` bytes on every GPU for tenant `a` in the ledger at `dir`.
fn quota_for_a(dir: &std::path::Path, limit: u64) {
    let quota = TenantQuota {
        defaults: Limits {
            memory_bytes: Some(limit),
            ..Limits::default()
        },
        per_gpu: vec![],
    };
    Ledger::open(dir)
        .expect("ledger")
        .write_quota(&TenantName::new("a").expect("name"), &quota)
        .expect("quota");
}

/// Issue 15, item 8: the shim created a `GPUSLICE_DIR` that did not exist, so a typo in it
/// gave a fresh ledger without the tenant's quota file, and the tenant ran without limits.
#[test]
fn a_missing_ledger_directory_is_refused_not_created() {
    let node = Node::new();
    quota_for_a(&node.ledger_dir(), 256 * MIB);
    let typo = node.root.path().join("ledgr");
    let (stdout, stderr) = probe_with(&node, &[("GPUSLICE_DIR", typo.to_str().unwrap())]);
    assert_fails_closed(
        &stdout,
        &stderr,
        &format!("the ledger directory {} (GPUSLICE_DIR", typo.display()),
    );
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!typo.exists(), "the shim created {}", typo.display());
}

/// An existing, empty directory is a new ledger: the shim makes what it needs inside it.
#[test]
fn an_empty_ledger_directory_is_a_new_ledger() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "a", Some("1Gi"), &["fill", "64M"]));
    assert_eq!(field(line(&out, "fill"), "bytes"), GIB - CONTEXT);
    assert!(node.ledger_dir().join("tenants/a/usage").is_file());
}

/// Issue 15, item 8: a `GPUSLICE_DIR` with bytes that are not UTF-8 was rewritten (each
/// such byte became U+FFFD), so the process used another directory: not the tenant's
/// ledger, and not its quota.
#[test]
fn a_gpuslice_dir_that_is_not_utf8_is_used_as_given() {
    let node = Node::new();
    let dir = node.root.path().join(OsStr::from_bytes(b"ledger-\xff"));
    std::fs::create_dir(&dir).unwrap();
    quota_for_a(&dir, 256 * MIB);
    let mut command = node.probe(CallPath::Dlsym, "a", None, &["fill", "64M"]);
    command.env("GPUSLICE_DIR", &dir);
    let out = run_ok(&mut command);
    assert_eq!(
        field(line(&out, "fill"), "bytes"),
        256 * MIB - CONTEXT,
        "the quota in {} applies",
        dir.display()
    );
    let rewritten = node.root.path().join("ledger-\u{fffd}");
    assert!(!rewritten.exists(), "the shim used {}", rewritten.display());
}

/// Issue 15, item 8: a `GPUSLICE_` variable whose name is not UTF-8 was skipped, where any
/// other unknown `GPUSLICE_` variable (a misspelling) is refused.
#[test]
fn a_gpuslice_variable_whose_name_is_not_utf8_is_refused() {
    let node = Node::new();
    let mut command = node.probe(CallPath::Dlsym, "a", None, &["alloc", "1M"]);
    command.env(OsStr::from_bytes(b"GPUSLICE_MEMORY_LIM\xffT"), "1Gi");
    let output = run(&mut command);
    assert!(output.status.success(), "{output:?}");
    assert_fails_closed(
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
        "unknown variable GPUSLICE_MEMORY_LIM",
    );
}
