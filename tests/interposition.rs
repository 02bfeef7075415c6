//! How calls reach the shim, and that everything else is left alone.

mod util;

use std::path::Path;

use util::*;

/// cuGetProcAddress hands out our hook whatever version and flags the caller asks with,
/// and dlsym of the exported name does too: all three paths land on the same hooks (the
/// quota tests run through each path; this checks they are the same functions).
#[test]
fn every_call_path_reaches_the_same_hooks() {
    let node = Node::new();
    for path in ALL_PATHS {
        let out = run_ok(&mut node.probe(path, "a", Some("512Mi"), &["alloc", "1G"]));
        assert_eq!(
            field(line(&out, "alloc"), "rc"),
            2,
            "{path:?} slipped past the quota: {out}"
        );
    }
}

#[test]
fn rtld_next_lookups_resolve_relative_to_their_caller() {
    let deps = deps_dir();
    let out_dir = deps.parent().unwrap().join("test-programs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let interposer = out_dir.join(format!("libnext-interposer-{}.so", std::process::id()));
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&interposer)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/next_interposer.c"))
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(status.success());
    let program = compile_c("tests/programs/call_getppid.c", &[]);
    let node = Node::new();
    let preload = format!("{}:{}", shim_library().display(), interposer.display());
    let out = run_ok(node.bare(&program).env("LD_PRELOAD", preload));
    let _ = std::fs::remove_file(&interposer);
    assert!(out.starts_with("getppid="), "{out}");
    assert_ne!(field(line(&out, "getppid"), "getppid"), u64::MAX);
}

/// A shell, ls and Python run under the preload with gpuslice settings exactly as without.
#[test]
fn programs_that_do_not_use_cuda_are_unaffected() {
    let node = Node::new();
    let cases: [(&str, &[&str], &str); 3] = [
        ("sh", &["-c", "echo hello"], "hello\n"),
        ("ls", &["/"], ""),
        ("python3", &["-c", "print(1 + 1)"], "2\n"),
    ];
    for (program, args, expected) in cases {
        if program == "python3"
            && std::process::Command::new("python3")
                .arg("-c")
                .arg("1")
                .output()
                .is_err()
        {
            continue;
        }
        let output = run(node.tenant("a", Some("1Gi"), program).args(args));
        assert!(output.status.success(), "{program}: {output:?}");
        assert!(
            output.stderr.is_empty(),
            "{program} printed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if !expected.is_empty() {
            assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
        }
    }
}

/// Settings are read at the first CUDA call, so a wrong one never bothers a program that
/// makes none.
#[test]
fn bad_settings_do_not_bother_programs_without_cuda() {
    let node = Node::new();
    let output = run(node
        .tenant("a", Some("lots"), "sh")
        .args(["-c", "echo fine"]));
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fine\n");
    assert!(output.stderr.is_empty());
}

/// Without any GPUSLICE_ settings the shim changes nothing: the device's own answers.
#[test]
fn without_settings_everything_passes_through() {
    let node = Node::with_devices("2Gi");
    let mut command = node.probe(CallPath::Dlsym, "unused", None, &["info", "fill", "256M"]);
    command.env_remove("GPUSLICE_TENANT");
    let out = run_ok(&mut command);
    assert_eq!(field(line(&out, "info"), "total"), 2 * GIB);
    assert_eq!(
        field(line(&out, "fill"), "bytes"),
        2 * GIB - CONTEXT - 192 * MIB
    );
    assert!(!node.ledger_dir().join("tenants").join("unused").exists());
}
