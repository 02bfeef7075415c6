//! `gpuslice demo` on the simulated GPU, with the shim and `libfakecuda.so` of this build.

use std::time::Duration;

use crate::util::*;

/// The demo must finish well under a minute on the simulated GPU.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// The words of the table row of `tenant`.
fn row<'a>(stdout: &'a str, tenant: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{tenant} ")) && l.contains("GiB"))
        .unwrap_or_else(|| panic!("no table row for {tenant} in:\n{stdout}"))
        .split_whitespace()
        .collect()
}

/// The words of the closing summary row of `tenant` (the last line that starts with it).
fn summary_row<'a>(stdout: &'a str, tenant: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .rfind(|l| l.starts_with(&format!("{tenant} ")))
        .unwrap_or_else(|| panic!("no summary row for {tenant} in:\n{stdout}"))
        .split_whitespace()
        .collect()
}

/// The share a summary row says the tenant got, after the promised one.
fn got_share(row: &[&str], promised: &str) -> f64 {
    let at = row
        .iter()
        .position(|w| *w == promised)
        .unwrap_or_else(|| panic!("no {promised} in {row:?}"));
    row.get(at + 1)
        .and_then(|w| w.strip_suffix('%'))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no measured share after {promised} in {row:?}"))
}

#[test]
fn simulated_demo_keeps_quotas_and_gives_the_tenants_30_and_70_percent() {
    let started = std::time::Instant::now();
    let dir = TestDir::new();
    let plot = dir.path().join("shares.png");
    let mut command = dir.gpuslice(&["demo", "--simulated", "--shim"]);
    command
        .arg(artifact("libgpuslice.so"))
        .arg("--dir")
        .arg(dir.ledger_dir())
        .arg("--plot")
        .arg(&plot)
        .env("GPUSLICE_FAKECUDA", artifact("libfakecuda.so"));
    let out = Running::spawn(&mut command).wait(DEMO_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
    // A PNG of 960 x 480: the signature, then the IHDR chunk's width and height.
    let png = std::fs::read(&plot).expect("the demo wrote no plot");
    assert_eq!(png[..8], *b"\x89PNG\r\n\x1a\n");
    assert_eq!(png[12..16], *b"IHDR");
    assert_eq!(png[16..24], [0, 0, 3, 0xc0, 0, 0, 1, 0xe0]);
    assert!(out.stdout.contains("plot: "), "{out:?}");
    // The trial sized the kernels to 2 ms alone (the simulated GPU's rate is exact).
    assert!(
        out.stdout.contains("takes 2.00 ms on the GPU alone"),
        "{out:?}"
    );
    assert!(out.stdout.contains("SIMULATED GPU"), "{out:?}");
    // The context's 64 MiB counts against the quota: 960 of 1024 MiB, 1984 of 2048 MiB.
    assert_eq!(
        row(&out.stdout, "demo-a"),
        [
            "demo-a",
            "1",
            "GiB",
            "1",
            "GiB",
            "960",
            "MiB",
            "CUDA_ERROR_OUT_OF_MEMORY",
            "allocated",
            "again"
        ],
        "{out:?}"
    );
    assert_eq!(
        row(&out.stdout, "demo-b"),
        [
            "demo-b",
            "2",
            "GiB",
            "2",
            "GiB",
            "1984",
            "MiB",
            "CUDA_ERROR_OUT_OF_MEMORY",
            "allocated",
            "again"
        ],
        "{out:?}"
    );
    // Not on a terminal: plain lines in words, not the workers' key=value lines.
    assert!(
        out.stdout.contains("demo-a: 256 MiB of 1 GiB allocated\n"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("demo-b: refused at 1984 MiB with CUDA_ERROR_OUT_OF_MEMORY\n"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("allocated="), "{out:?}");

    // The compute phase: progress, then the summary with the measured shares.
    assert!(
        out.stdout
            .contains("\ncompute, 1.0 s of 4.0 s: demo-a got "),
        "{out:?}"
    );
    // It ends with its verdict, on one line.
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("verdict: PASS: "), "{out:?}");
    let a = summary_row(&out.stdout, "demo-a");
    let b = summary_row(&out.stdout, "demo-b");
    assert_eq!(
        a[..8],
        [
            "demo-a",
            "1",
            "GiB",
            "refused",
            "at",
            "960",
            "MiB,",
            "recovered"
        ]
    );
    assert_eq!(
        b[..8],
        [
            "demo-b",
            "2",
            "GiB",
            "refused",
            "at",
            "1984",
            "MiB,",
            "recovered"
        ]
    );
    let (got_a, got_b) = (got_share(&a, "30%"), got_share(&b, "70%"));
    eprintln!("demo shares: demo-a {got_a}% (30% promised), demo-b {got_b}% (70% promised)");
    assert!((got_a - 30.0).abs() <= 5.0, "demo-a got {got_a}%: {out:?}");
    assert!((got_b - 70.0).abs() <= 5.0, "demo-b got {got_b}%: {out:?}");
    let took = started.elapsed();
    eprintln!("the demo took {took:?}");
    assert!(took < DEMO_TIMEOUT, "{took:?}");
    assert!(
        !dir.tenant_exists("demo-a") && !dir.tenant_exists("demo-b"),
        "the demo left its tenants behind"
    );
}

#[test]
fn a_plot_that_cannot_be_drawn_is_refused_before_the_demo_starts() {
    let dir = TestDir::new();
    for (plot, why) in [
        (dir.path().join("shares.svg"), "ending in .png"),
        (dir.path().join("missing/shares.png"), "does not exist"),
    ] {
        let out = finish(
            dir.gpuslice(&["demo", "--simulated", "--shim"])
                .arg(artifact("libgpuslice.so"))
                .arg("--plot")
                .arg(&plot)
                .env("GPUSLICE_FAKECUDA", artifact("libfakecuda.so")),
        );
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(why), "{out:?}");
        assert!(!out.stdout.contains("Memory:"), "the demo ran: {out:?}");
    }
}

#[test]
fn simulated_demo_without_a_simulated_gpu_to_find_is_a_usage_error() {
    let dir = TestDir::new();
    // A copy of gpuslice with no libfakecuda.so next to it, in ../lib or in deps/.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let copy = bin.join("gpuslice");
    std::fs::copy(GPUSLICE, &copy).expect("copy gpuslice");
    let mut command = std::process::Command::new(&copy);
    for (name, _) in std::env::vars() {
        if name.starts_with("GPUSLICE_") || name == "LD_PRELOAD" {
            command.env_remove(name);
        }
    }
    command
        .args(["demo", "--simulated", "--shim"])
        .arg(artifact("libgpuslice.so"));
    let out = finish(&mut command);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("libfakecuda.so") && out.stderr.contains("GPUSLICE_FAKECUDA"),
        "{out:?}"
    );

    // A GPUSLICE_FAKECUDA that names nothing is refused, not skipped.
    let out = finish(
        dir.gpuslice(&["demo", "--simulated", "--shim"])
            .arg(artifact("libgpuslice.so"))
            .env("GPUSLICE_FAKECUDA", dir.path().join("missing.so")),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("missing.so"), "{out:?}");
}

#[test]
fn demo_worker_is_hidden_from_help() {
    let dir = TestDir::new();
    let out = finish(dir.gpuslice(&["--help"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("demo"), "{out:?}");
    assert!(!out.stdout.contains("__demo-worker"), "{out:?}");
}
