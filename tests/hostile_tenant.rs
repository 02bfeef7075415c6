//! A hostile neighbour, end to end: with what a container gets (read access to every other
//! tenant's ledger files) and as another Unix user, it takes every lock it can on every file
//! of the ledger, and a victim tenant's processes still start, still have their dead
//! reclaimed, and still get their whole quota.
//!
//! Needs root (to run the neighbour as another user); skipped with a message otherwise.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gpuslice_ledger::{Limits, TenantName, TenantQuota};
use util::*;

/// `nobody`.
const NEIGHBOUR: u32 = 65534;
const WAIT: Duration = Duration::from_secs(30);

/// Makes `path` and its parents traversable and readable by everyone, as a ledger mounted
/// into every container is.
fn open_to_others(path: &Path) {
    for p in path.ancestors().take_while(|p| *p != Path::new("/")) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
    }
}

#[test]
fn a_read_only_neighbour_can_neither_hang_a_tenant_nor_keep_its_dead_alive() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run the neighbour as uid {NEIGHBOUR}");
        return;
    }
    let node = Node::new();
    // The victim's tenant, made as the device plugin makes one: quota, usage and lock files
    // before any process of it runs (a fresh usage file is the case that hung).
    let ledger = node.ledger();
    let victim = TenantName::new("victim").unwrap();
    let quota = TenantQuota {
        defaults: Limits {
            memory_bytes: Some(GIB),
            ..Limits::default()
        },
        per_gpu: vec![],
    };
    ledger.write_quota(&victim, &quota).unwrap();
    drop(ledger.open_usage(&victim).unwrap());
    open_to_others(&node.ledger_dir().join("tenants/victim"));
    open_to_others(&node.ledger_dir().join("locks"));

    let locker = compile_c("tests/programs/lock_everything.c", &[]);
    open_to_others(&locker);
    let mut neighbour = Running::spawn(
        Command::new(&locker)
            .arg(node.ledger_dir())
            .uid(NEIGHBOUR)
            .gid(NEIGHBOUR),
    );
    let report = neighbour.wait_for_line("locked", WAIT);
    let usage = ledger.usage_path(&victim).display().to_string();
    assert!(
        report.contains(&format!("{usage} open=yes ofd=1")),
        "the neighbour read-locked the victim's usage file, as any tenant can: {report}"
    );
    let lock = ledger.lock_path(&victim).display().to_string();
    assert!(
        report.contains(&format!("{lock} open=denied")),
        "the victim's lock file is out of the neighbour's reach: {report}"
    );

    // The victim's first process starts (registers its GPU, claims a slot) and allocates.
    let mut first = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "victim",
        None,
        &["alloc", "512M", "hold"],
    ));
    let out = first.wait_for_line("holding", WAIT);
    assert_eq!(field(line(&out, "alloc"), "rc"), 0, "{out}");
    first.kill9();

    // It died: its memory comes back to the tenant although the neighbour still holds
    // read locks on every byte of the usage file.
    let out = run_ok(&mut node.probe(CallPath::Dlsym, "victim", None, &["alloc", "900M"]));
    assert_eq!(
        field(line(&out, "alloc"), "rc"),
        0,
        "the dead process's 512M is still counted: {out}"
    );
    drop(neighbour);
}

/// A container running as root, without a user namespace, has the same filesystem user as
/// the device plugin's files, so the kernel lets it take a read lease on a neighbour's usage
/// file before any process of that neighbour runs; a process opening the file for writing
/// then waits until the lease is broken (`lease-break-time`, 45 s by default). The shim opens
/// without blocking: the neighbour's process fails to start at once, closed and saying why,
/// rather than hang. (docs/security.md says what to run containers as where this matters.)
#[test]
fn a_lease_on_a_neighbours_usage_file_fails_its_process_closed_instead_of_hanging_it() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to own the ledger's files and lease them");
        return;
    }
    let node = Node::new();
    let ledger = node.ledger();
    let victim = TenantName::new("victim").unwrap();
    drop(ledger.open_usage(&victim).unwrap());
    let locker = compile_c("tests/programs/lock_everything.c", &[]);
    let mut neighbour = Running::spawn(Command::new(&locker).arg(ledger.usage_path(&victim)));
    let report = neighbour.wait_for_line("locked", WAIT);
    assert!(
        report.contains("lease=1"),
        "root could not lease its own file: {report}"
    );

    let started = std::time::Instant::now();
    let output = run(&mut node.probe(CallPath::Dlsym, "victim", Some("1Gi"), &["alloc", "64M"]));
    let waited = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        waited < Duration::from_secs(20),
        "it waited {waited:?} for the lease"
    );
    assert!(
        stderr.contains(&ledger.usage_path(&victim).display().to_string()),
        "the refusal names the usage file: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_ne!(
        field(line(&stdout, "init"), "rc"),
        0,
        "it ran without its ledger: {stdout}"
    );
    drop(neighbour);
}

/// Unmounts a filesystem when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tenant can write its own usage file, so it can also make it grow until the ledger's
/// filesystem is full. Ledger files were created sparse and written through shared
/// mappings, so the next process to touch a page that was never written died of SIGBUS: a
/// neighbour's first CUDA call, `gpuslice run`, the device plugin. Now every ledger file has
/// all its pages when it is created: a neighbour that already exists works on, and a tenant
/// created on a full filesystem is refused with an error.
#[test]
fn a_tenant_filling_the_ledger_filesystem_cannot_crash_a_neighbour() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to mount a small tmpfs for the ledger");
        return;
    }
    let node = Node::new();
    let dir = node.ledger_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "gpuslice-test"])
        .arg(&dir)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    let _unmount = Mounted(dir.clone());
    let ledger = node.ledger();
    let victim = TenantName::new("victim").unwrap();
    let evil = TenantName::new("evil").unwrap();
    for t in [&victim, &evil] {
        ledger
            .write_quota(
                t,
                &TenantQuota {
                    defaults: Limits {
                        memory_bytes: Some(GIB),
                        ..Limits::default()
                    },
                    per_gpu: vec![],
                },
            )
            .unwrap();
        drop(ledger.open_usage(t).unwrap());
    }
    // The hostile tenant grows its own usage file until the filesystem is full.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(ledger.usage_path(&evil))
        .unwrap();
    let chunk = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}

    let out = run(&mut node.probe(CallPath::Dlsym, "victim", None, &["alloc", "64M"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the neighbour's process died ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(line(&stdout, "alloc"), "rc"), 0, "{stdout}");

    // A tenant made now is refused, not half made.
    let err = ledger
        .open_usage(&TenantName::new("latecomer").unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
}

/// Hole: a stream the launch path could not put in its table (more streams alive at once
/// than the table holds) had its launches let through neither gated nor measured, so a
/// tenant under a compute limit only had to keep that many streams alive to run past its
/// limit on every stream after them. Such launches are refused now, and said so; the
/// streams the table does hold still launch.
#[test]
fn launches_on_more_streams_than_gpuslice_can_follow_are_refused_not_let_through_unlimited() {
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ptx/spin.ptx");
    let capacity = gpuslice::streams::CAPACITY;
    let node = Node::new();
    for path in ALL_PATHS {
        let mut command = node.probe(
            path,
            "many-streams",
            None,
            &["module", ptx, "streams-fill", &capacity.to_string()],
        );
        command.env("GPUSLICE_COMPUTE_LIMIT", "30");
        let output = run(&mut command);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let filled = line(&stdout, "streams-fill");
        // As many streams as the table has entries (one of which the NULL stream may hold,
        // and a lookup probes only so far): the last of them do not fit, and their launches
        // are refused; most do fit, and theirs went through.
        let refused = field(filled, "failed");
        assert!(
            refused > 0 && refused < (capacity / 8) as u64,
            "{path:?}: {refused} of {capacity} launches refused: {stdout}{stderr}"
        );
        assert_eq!(
            field(filled, "last"),
            701,
            "{path:?}: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES expected: {stdout}{stderr}"
        );
        assert!(
            stderr.contains("refused a launch on a stream gpuslice cannot follow"),
            "{path:?}: {stderr}"
        );
    }
}
