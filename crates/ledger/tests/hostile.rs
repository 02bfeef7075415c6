//! A hostile tenant with what a container gets: read access to every other tenant's ledger
//! files. Run as a second Unix user, it takes every lock a read-only descriptor allows on
//! every file it can open, and the victim tenant's processes must still start, register
//! GPUs, have their dead reclaimed, and get quota updates, none of it hanging or miscounted.
//!
//! Needs root (to run the attacker as another user); skipped with a message otherwise.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{ChildProcess, ROLE_ENV, gpu, publish, tenant, wait_for_file};
use gpuslice_ledger::{Ledger, Limits, ReclaimReport, TenantQuota};

const ENTRY: &str = "child_role_runs_only_when_spawned_by_a_test";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);
/// The attacker's user and group: `nobody`.
const ATTACKER: u32 = 65534;

/// The child side: does nothing in a normal test run; in a child, plays its role.
#[test]
fn child_role_runs_only_when_spawned_by_a_test() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let ledger_dir = PathBuf::from(var("LEDGER_DIR"));
    let ready = PathBuf::from(var("READY_FILE"));
    match role.as_str() {
        "attack" => {
            let report = attack(&ledger_dir);
            publish(&ready, &report);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "hold" => {
            let ledger = Ledger::open_existing(&ledger_dir).unwrap();
            let usage = ledger.open_usage(&tenant("victim")).unwrap();
            let index = usage.register_gpu(&gpu(1)).unwrap();
            let slot = usage.claim_slot().unwrap();
            slot.try_reserve(index, 64 * MIB, u64::MAX).unwrap();
            publish(&ready, &format!("{}\n", slot.index()));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Everything a read-only descriptor allows, on every file under `dir` this user can open:
/// OFD and POSIX read locks over the whole file (and past its end), `flock` exclusive, a
/// lease; and whether it could open the file for writing at all. Returns lines per file:
/// what it could open and take.
fn attack(dir: &Path) -> String {
    let mut report = String::new();
    let mut files = Vec::new();
    walk(dir, &mut files);
    for path in files {
        let writable = std::fs::OpenOptions::new().write(true).open(&path).is_ok();
        report.push_str(&format!("{} write:{writable}\n", path.display()));
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                report.push_str(&format!("{} open:{}\n", path.display(), e.kind()));
                continue;
            }
        };
        let fd = file.as_raw_fd();
        let whole = |cmd| {
            let fl = libc::flock {
                l_type: libc::c_short::try_from(libc::F_RDLCK).unwrap(),
                l_whence: libc::c_short::try_from(libc::SEEK_SET).unwrap(),
                l_start: 0,
                l_len: 0,
                l_pid: 0,
            };
            // SAFETY: fcntl reads one flock struct, which outlives the call.
            unsafe { libc::fcntl(fd, cmd, &fl) == 0 }
        };
        let ofd = whole(libc::F_OFD_SETLK);
        let posix = whole(libc::F_SETLK);
        // SAFETY: flock and fcntl(F_SETLEASE) have no memory-safety preconditions.
        let flock = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
        // SAFETY: as above.
        let lease = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0;
        report.push_str(&format!(
            "{} ofd:{ofd} posix:{posix} flock:{flock} lease:{lease}\n",
            path.display()
        ));
        // Kept open: the locks live as long as the descriptions.
        std::mem::forget(file);
    }
    report
}

/// Every regular file and directory under `dir`, `dir` included.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

/// Whether this test can run the attacker as another user.
fn can_switch_users() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run the attacker as uid {ATTACKER}");
        return false;
    }
    true
}

/// Makes `path` and its parents up to `/` traversable by others (a temporary directory is
/// 0700), so that the attacker reaches the ledger as a container would.
fn open_up(path: &Path) {
    for p in path.ancestors() {
        if p == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        if mode & 0o005 != 0o005 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
        }
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit` (it hung).
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} hung for {limit:?} behind the attacker's locks"))
}

#[test]
fn a_read_only_neighbour_cannot_block_or_fake_another_tenants_locks() {
    if !can_switch_users() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("ledger");
    let ledger = Ledger::open(&ledger_dir).unwrap();
    let victim = tenant("victim");
    let limits = Limits {
        memory_bytes: Some(128 * MIB),
        ..Limits::default()
    };
    ledger
        .write_quota(
            &victim,
            &TenantQuota {
                defaults: limits,
                per_gpu: vec![],
            },
        )
        .unwrap();
    // A fresh usage file, before any process of the victim used it (the case that hung).
    drop(ledger.open_usage(&victim).unwrap());
    open_up(&ledger_dir);
    let test_binary = std::env::current_exe().unwrap();
    open_up(test_binary.parent().unwrap());

    // The attacker, as another user, locks everything it can open, and reports in a
    // directory of its own.
    let reports = dir.path().join("attacker");
    std::fs::create_dir(&reports).unwrap();
    std::fs::set_permissions(&reports, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ready = reports.join("ready");
    let mut attacker = ChildProcess {
        child: Command::new(&test_binary)
            .args([ENTRY, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, "attack")
            .env("LEDGER_DIR", &ledger_dir)
            .env("READY_FILE", &ready)
            .uid(ATTACKER)
            .gid(ATTACKER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let report = wait_for_file(&ready, WAIT);
    let usage_path = ledger.usage_path(&victim).display().to_string();
    let lock_path = ledger.lock_path(&victim).display().to_string();
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&usage_path) && l.contains("ofd:true")),
        "the attacker read-locked the victim's usage file, as a container can: {report}"
    );
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with(&lock_path) && l.contains("ofd:")),
        "the attacker must not even open the victim's lock file: {report}"
    );
    assert!(
        !report.contains("write:true"),
        "the attacker could open one of the victim's files for writing: {report}"
    );

    // The victim's first process registers its GPU and claims a slot without hanging.
    let setup = Setup {
        dir: &ledger_dir,
        files: dir.path(),
    };
    let mut holder = setup.spawn("hold", "holder");
    setup.wait_ready("holder");
    let l = ledger.clone();
    let v = victim.clone();
    let usage = within("opening the victim's usage", WAIT, move || {
        l.open_usage(&v).unwrap()
    });
    let index = usage.gpu_index(&gpu(1)).unwrap();
    assert_eq!(usage.memory_used(index), 64 * MIB);
    assert!(usage.slots()[0].live);

    // It dies: the attacker's read locks do not keep its slot looking alive.
    holder.kill();
    assert!(!usage.slots()[0].live);
    let report = usage.reclaim_dead().unwrap();
    assert_eq!(report.bytes, vec![(index, 64 * MIB)]);
    assert_eq!(usage.reclaim_dead().unwrap(), ReclaimReport::default());

    // Registering another GPU, and updating the quota in place, do not hang.
    let u = usage.clone();
    within("registering a GPU", WAIT, move || {
        u.register_gpu(&gpu(2)).unwrap()
    });
    let l = ledger.clone();
    let v = victim.clone();
    within("updating the quota", WAIT, move || {
        l.write_quota(&v, &TenantQuota::default()).unwrap();
    });
    assert_eq!(
        ledger.read_quota(&victim).unwrap().unwrap().defaults(),
        Limits::default()
    );
    attacker.kill();
}

/// Where the victim's test children report.
struct Setup<'a> {
    dir: &'a Path,
    files: &'a Path,
}

impl Setup<'_> {
    fn spawn(&self, role: &str, name: &str) -> ChildProcess {
        ChildProcess::spawn(
            ENTRY,
            role,
            &[
                ("LEDGER_DIR", self.dir.display().to_string()),
                (
                    "READY_FILE",
                    self.files
                        .join(format!("{name}.ready"))
                        .display()
                        .to_string(),
                ),
            ],
        )
    }

    fn wait_ready(&self, name: &str) -> String {
        wait_for_file(&self.files.join(format!("{name}.ready")), WAIT)
    }
}
