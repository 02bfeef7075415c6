//! Bad settings and bad ledger files: refused with one clear line, CUDA fails closed.

mod util;

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
