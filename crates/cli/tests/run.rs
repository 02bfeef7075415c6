//! `gpuslice run`: exit codes, signals, the environment the command gets, refused settings.

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

#[test]
fn run_passes_the_command_exit_code_through() {
    let t = TestDir::new();
    for (script, code) in [("exit 0", 0), ("exit 7", 7), ("exit 255", 255)] {
        let out = finish(t.run(&["--", "sh", "-c", script]));
        assert_eq!(out.code, Some(code), "{script}: {out:?}");
    }
}

#[test]
fn command_may_follow_the_flags_without_a_double_dash() {
    let t = TestDir::new();
    let out = finish(t.run(&["--memory", "1Gi", "sh", "-c", "echo $1; exit 3", "sh", "-x"]));
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "-x\n");
}

#[test]
fn command_killed_by_a_signal_exits_128_plus_the_signal() {
    let t = TestDir::new();
    let out = finish(t.run(&["--", "sh", "-c", "kill -TERM $$"]));
    assert_eq!(out.code, Some(143), "{out:?}");
    let out = finish(t.run(&["--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(out.code, Some(137), "{out:?}");
}

#[test]
fn sigterm_to_gpuslice_is_forwarded_to_the_command() {
    let t = TestDir::new();
    let mut run = Running::spawn(t.run(&[
        "--tenant",
        "sig",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 30",
    ]));
    run.wait_for_line("ready");
    run.signal(libc::SIGTERM);
    let out = run.wait(TIMEOUT);
    // gpuslice itself survives the signal: it reports the command's death and cleans up.
    assert_eq!(out.code, Some(143), "{out:?}");
    assert!(!t.tenant_exists("sig"), "the tenant was left behind");
}

#[test]
fn sigint_and_sighup_from_kill_are_forwarded_too() {
    let t = TestDir::new();
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGHUP, 129)] {
        let mut run = Running::spawn(t.run(&["--", "sh", "-c", "echo ready; exec sleep 30"]));
        run.wait_for_line("ready");
        run.signal(signal);
        let out = run.wait(TIMEOUT);
        assert_eq!(out.code, Some(code), "signal {signal}: {out:?}");
    }
}

#[test]
fn missing_command_exits_127() {
    let t = TestDir::new();
    let out = finish(t.run(&["--tenant", "x", "--", "no-such-command-gpuslice-test"]));
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(
        out.stderr
            .contains("no-such-command-gpuslice-test: command not found"),
        "{out:?}"
    );
    assert!(!t.tenant_exists("x"), "the tenant was left behind");
}

#[test]
fn command_that_cannot_be_executed_exits_126() {
    let t = TestDir::new();
    let script = t.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = finish(t.run(&["--", script.to_str().unwrap()]));
    assert_eq!(out.code, Some(126), "{out:?}");
    assert!(out.stderr.contains("cannot run"), "{out:?}");
    // A directory cannot be executed either.
    let out = finish(t.run(&["--", t.path().to_str().unwrap()]));
    assert_eq!(out.code, Some(126), "{out:?}");
}

#[test]
fn command_gets_the_settings_the_shim_needs() {
    let t = TestDir::new();
    let out = finish(
        t.run(&[
            "--tenant",
            "team-a",
            "--memory",
            "1Gi",
            "--",
            "sh",
            "-c",
            "echo \"$LD_PRELOAD|$GPUSLICE_TENANT|$GPUSLICE_DIR|${GPUSLICE_MEMORY_LIMIT-unset}\"",
        ])
        .env("LD_PRELOAD", "/other/preloaded.so"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let shim = t.shim();
    assert_eq!(
        out.stdout.trim(),
        format!(
            "{}:/other/preloaded.so|team-a|{}|unset",
            shim.display(),
            t.ledger_dir().display()
        ),
        "the creator's limit is in the quota file, not the environment"
    );
}

#[test]
fn relative_ledger_dir_is_passed_on_as_an_absolute_path() {
    let t = TestDir::new();
    let out = finish(
        t.gpuslice(&["run", "--dir", "relative", "--shim", "libgpuslice.so", "--"])
            .args(["sh", "-c", "echo $GPUSLICE_DIR; echo $LD_PRELOAD"]),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], t.path().join("relative").display().to_string());
    assert_eq!(lines[1], t.shim().display().to_string());
}

#[test]
fn generated_tenant_is_run_and_the_pid_of_gpuslice() {
    let t = TestDir::new();
    let mut run = Running::spawn(t.run(&["--", "sh", "-c", "echo tenant=$GPUSLICE_TENANT"]));
    let pid = run.pid();
    let line = run.wait_for_line("tenant=");
    assert_eq!(line.trim(), format!("tenant=run-{pid}"));
    let out = run.wait(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!t.tenant_exists(&format!("run-{pid}")));
}

#[test]
fn shim_comes_from_gpuslice_shim_when_not_given_and_is_not_passed_on() {
    let t = TestDir::new();
    let out = finish(
        t.gpuslice(&["run", "--dir"])
            .arg(t.ledger_dir())
            .args([
                "--",
                "sh",
                "-c",
                "echo \"$LD_PRELOAD|${GPUSLICE_SHIM-unset}|$GPUSLICE_LOG\"",
            ])
            .env("GPUSLICE_SHIM", t.shim())
            .env("GPUSLICE_LOG", "debug"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("{}|unset|debug", t.shim().display())
    );
}

#[test]
fn missing_shim_is_a_usage_error() {
    let t = TestDir::new();
    let out = finish(t.gpuslice(&["run", "--dir"]).arg(t.ledger_dir()).args([
        "--shim",
        "/nonexistent/libgpuslice.so",
        "--",
        "true",
    ]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/libgpuslice.so"),
        "{out:?}"
    );
    assert!(
        !t.ledger_dir().exists(),
        "nothing is created before the checks pass"
    );
}

#[test]
fn bad_values_are_usage_errors() {
    let t = TestDir::new();
    for (args, expected) in [
        (&["--memory", "4GB"][..], "4Gi"),
        (&["--tenant", "../etc"][..], "invalid tenant name"),
        (&["--gpu", "GPU-nope", "--memory", "1Gi"][..], "GPU UUID"),
        (
            &["--gpu", "GPU-fa4ec0da-0000-4000-8000-000000000000"][..],
            "--memory",
        ),
    ] {
        let out = finish(t.run(args).args(["--", "true"]));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {out:?}");
    }
    let out = finish(t.run(&[]));
    assert_eq!(out.code, Some(2), "no command: {out:?}");
}

#[test]
fn unusable_ledger_dir_is_a_usage_error() {
    let t = TestDir::new();
    let file = t.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = finish(
        t.gpuslice(&["run", "--shim", "libgpuslice.so", "--dir"])
            .arg(file.join("ledger"))
            .args(["--", "true"]),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains(&file.display().to_string()), "{out:?}");
}

#[test]
fn bad_compute_values_are_usage_errors_naming_the_accepted_form() {
    let t = TestDir::new();
    let marker = t.path().join("ran");
    for (flag, value, expected) in [
        ("--compute-share", "0", "0.1 to 100"),
        ("--compute-share", "100.1", "0.1 to 100"),
        ("--compute-limit", "30.25", "at most one decimal"),
        ("--compute-limit", "thirty", "such as 30, 12.5 or 30%"),
        ("--priority", "urgent", "high, normal or low"),
    ] {
        let out = finish(t.run(&[flag, value, "--", "touch", marker.to_str().unwrap()]));
        assert_eq!(out.code, Some(2), "{flag} {value}: {out:?}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(expected),
            "{flag} {value}: {out:?}"
        );
        assert!(!marker.exists(), "the command ran");
    }
    let help = finish(&mut t.gpuslice(&["run", "--help"]));
    assert_eq!(help.code, Some(0));
    for flag in ["--compute-share", "--compute-limit", "--priority"] {
        assert!(help.stdout.contains(flag), "{flag}: {}", help.stdout);
    }
}

#[test]
fn inherited_compute_settings_are_replaced_with_a_note() {
    let t = TestDir::new();
    let out = finish(
        t.run(&[
            "--",
            "sh",
            "-c",
            "echo ${GPUSLICE_COMPUTE_SHARE-unset} ${GPUSLICE_COMPUTE_LIMIT-unset} \
             ${GPUSLICE_PRIORITY-unset}",
        ])
        .env("GPUSLICE_COMPUTE_SHARE", "30")
        .env("GPUSLICE_COMPUTE_LIMIT", "bogus")
        .env("GPUSLICE_PRIORITY", "high"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "unset unset unset");
    for (name, flag) in [
        ("GPUSLICE_COMPUTE_SHARE=30", "--compute-share"),
        ("GPUSLICE_COMPUTE_LIMIT=bogus", "--compute-limit"),
        ("GPUSLICE_PRIORITY=high", "--priority"),
    ] {
        assert!(
            out.stderr.contains(&format!("ignoring {name}")) && out.stderr.contains(flag),
            "{out:?}"
        );
    }
}

#[test]
fn misspelled_gpuslice_variable_is_refused_before_the_command_runs() {
    let t = TestDir::new();
    let marker = t.path().join("ran");
    let out = finish(
        t.run(&["--", "touch", marker.to_str().unwrap()])
            .env("GPUSLICE_MEMORY_LIMT", "1Gi"),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("GPUSLICE_MEMORY_LIMT"), "{out:?}");
    assert!(!marker.exists(), "the command ran");
}

/// Issue 15, item 8: a `GPUSLICE_` variable whose name is not UTF-8 passed unnoticed.
#[test]
fn gpuslice_variable_whose_name_is_not_utf8_is_refused_before_the_command_runs() {
    use std::os::unix::ffi::OsStrExt;
    let t = TestDir::new();
    let marker = t.path().join("ran");
    let out = finish(t.run(&["--", "touch", marker.to_str().unwrap()]).env(
        std::ffi::OsStr::from_bytes(b"GPUSLICE_MEMORY_LIM\xffT"),
        "1Gi",
    ));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("unknown variable GPUSLICE_MEMORY_LIM"),
        "{out:?}"
    );
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn inherited_limit_is_replaced_with_a_note() {
    let t = TestDir::new();
    let out = finish(
        t.run(&["--", "sh", "-c", "echo ${GPUSLICE_MEMORY_LIMIT-unset}"])
            .env("GPUSLICE_MEMORY_LIMIT", "1Gi"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "unset");
    assert!(
        out.stderr.contains("ignoring GPUSLICE_MEMORY_LIMIT=1Gi"),
        "{out:?}"
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let t = TestDir::new();
    for args in [&["--help"][..], &["run", "--help"][..]] {
        let out = finish(&mut t.gpuslice(args));
        assert_eq!(out.code, Some(0), "{out:?}");
        for code in ["125", "126", "127", "128+"] {
            assert!(
                out.stdout.contains(code),
                "{args:?} lacks {code}:\n{}",
                out.stdout
            );
        }
    }
}
