//! Shared helpers for the integration tests: fresh ledgers, child processes that kill
//! themselves on drop, and a counter shared between processes.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use gpuslice_ledger::{GpuUuid, Ledger, TenantName};

/// The variable that tells a re-executed test binary which child role to play.
pub const ROLE_ENV: &str = "GPUSLICE_LEDGER_TEST_ROLE";

/// A fresh ledger in its own temporary directory.
pub fn ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
    (dir, ledger)
}

/// A tenant name that must be valid.
pub fn tenant(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

/// A GPU UUID made of one repeated byte.
pub fn gpu(n: u8) -> GpuUuid {
    GpuUuid([n; 16])
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct ChildProcess {
    pub child: Child,
}

impl ChildProcess {
    /// Re-runs this test binary with only the test `entry` and `ROLE_ENV=role`.
    pub fn spawn(entry: &str, role: &str, env: &[(&str, String)]) -> ChildProcess {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        ChildProcess {
            child: cmd.spawn().unwrap(),
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for it to exit on its own (at most `timeout`); returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < end,
                "child {} did not exit in time",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists and returns its contents.
pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{} did not appear in time",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `contents` to `path` so that a reader never sees it half-written.
pub fn publish(path: &Path, contents: &str) {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A u64 in a file mapped `MAP_SHARED`, so that processes can share one atomic counter.
pub struct SharedCounter {
    ptr: *mut u8,
    _file: File,
}

// SAFETY: the mapping is shared memory accessed only through an AtomicU64.
unsafe impl Send for SharedCounter {}
// SAFETY: as above: all access is atomic.
unsafe impl Sync for SharedCounter {}

const COUNTER_LEN: usize = 4096;

impl SharedCounter {
    /// Maps (creating if needed) the counter file at `path`.
    pub fn open(path: &Path) -> SharedCounter {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        file.set_len(COUNTER_LEN as u64).unwrap();
        // SAFETY: a fresh shared mapping of a file we just sized to COUNTER_LEN bytes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                COUNTER_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        SharedCounter {
            ptr: ptr.cast::<u8>(),
            _file: file,
        }
    }

    /// The counter.
    pub fn get(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, COUNTER_LEN >= 8 bytes, lives as long as self,
        // and is only accessed atomically.
        unsafe { &*self.ptr.cast::<AtomicU64>() }
    }
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `open`; no reference from `get` outlives self.
        unsafe {
            libc::munmap(self.ptr.cast::<libc::c_void>(), COUNTER_LEN);
        }
    }
}

/// Raises this process's soft limit on open files to at least `wanted` (up to the hard
/// limit), for tests that hold a descriptor per process slot.
pub fn raise_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0);
    if limit.rlim_cur >= wanted {
        return;
    }
    assert!(
        limit.rlim_max >= wanted,
        "the hard limit on open files ({}) is below the {wanted} this test needs",
        limit.rlim_max
    );
    limit.rlim_cur = wanted;
    // SAFETY: setrlimit reads one rlimit, which `limit` is.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}
