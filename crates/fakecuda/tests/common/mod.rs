//! Harness for tests that run real processes on the simulated GPU: a directory of
//! `libcuda.so*` / `libnvidia-ml.so*` symlinks to the built libfakecuda.so, a fresh state
//! directory per test, C programs compiled once per content, and children killed on drop.
#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Keeps tests that measure wall-clock time from running beside the tests that start
/// processes (on a machine of two CPUs, those delay a stream's worker by a millisecond or two).
static TIMING: RwLock<()> = RwLock::new(());

/// Taken by a test whose assertions are about wall-clock time: no `share_cpu` test runs
/// while it is held.
pub fn timing_alone() -> RwLockWriteGuard<'static, ()> {
    TIMING.write().unwrap_or_else(PoisonError::into_inner)
}

/// Taken by every other test that starts processes, to stay out of `timing_alone`'s way.
pub fn share_cpu() -> RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(PoisonError::into_inner)
}

/// How long any child may run.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A name for a temporary file no other test thread or process uses.
fn unique_suffix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Names under which test programs load the simulator.
const LIBRARY_NAMES: [&str; 4] = [
    "libcuda.so",
    "libcuda.so.1",
    "libnvidia-ml.so",
    "libnvidia-ml.so.1",
];

/// `target/<profile>/deps`, where the test binary and libfakecuda.so live.
pub fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .expect("test binary has a directory")
        .to_owned()
}

/// `target/<profile>`.
pub fn profile_dir() -> PathBuf {
    deps_dir().parent().expect("deps has a parent").to_owned()
}

/// The built simulator.
pub fn library() -> PathBuf {
    let lib = deps_dir().join("libfakecuda.so");
    assert!(
        lib.exists(),
        "{} is missing: `cargo test -p fakecuda` builds it with the tests",
        lib.display()
    );
    lib
}

/// Makes `dir` hold the four symlinks to the simulator (replacing existing ones atomically).
pub fn link_library(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let lib = library();
    for name in LIBRARY_NAMES {
        let tmp = dir.join(format!(".{name}.{}", unique_suffix()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&lib, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A simulated machine for one test: its own library directory and state directory.
pub struct Sim {
    root: tempfile::TempDir,
    devices: String,
    footprint: String,
}

impl Sim {
    /// A machine with these device capacities (`FAKECUDA_DEVICES`) and a 64Mi footprint.
    pub fn new(devices: &str) -> Sim {
        let root = tempfile::tempdir().unwrap();
        link_library(&root.path().join("lib"));
        Sim {
            root,
            devices: devices.to_owned(),
            footprint: "64Mi".to_owned(),
        }
    }

    /// The directory of `libcuda.so.1` and friends.
    pub fn lib_dir(&self) -> PathBuf {
        self.root.path().join("lib")
    }

    /// `FAKECUDA_STATE_DIR`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// Bytes in use on device `index`, as the shared state file says (no dead-process scan).
    pub fn used_in_state_file(&self, index: usize) -> u64 {
        let bytes = std::fs::read(self.state_dir().join(format!("device-{index}.state"))).unwrap();
        u64::from_ne_bytes(bytes[16..24].try_into().unwrap())
    }

    /// A command running `program` on this machine.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FAKECUDA_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("LD_PRELOAD")
            .env("LD_LIBRARY_PATH", self.lib_dir())
            .env("FAKECUDA_DEVICES", &self.devices)
            .env("FAKECUDA_STATE_DIR", self.state_dir())
            .env("FAKECUDA_CONTEXT_FOOTPRINT", &self.footprint);
        cmd
    }
}

/// 64-bit FNV-1a: a content hash that is stable across runs and toolchains.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        hash = (hash ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Compiles C `source` with `cc` into `target/<profile>/fakecuda-c/<name>-<hash>`, once per
/// content and flags (parallel test processes write a temporary file and rename it).
/// `-lcuda` links against the simulator.
pub fn compile_c(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let out_dir = profile_dir().join("fakecuda-c");
    std::fs::create_dir_all(&out_dir).unwrap();
    let lib_dir = out_dir.join("lib");
    link_library(&lib_dir);
    let flag_bytes = flags.join(" ");
    let hash = fnv1a(&[name.as_bytes(), source.as_bytes(), flag_bytes.as_bytes()]);
    let out = out_dir.join(format!("{name}-{hash:016x}"));
    if out.exists() {
        return out;
    }
    let tmp = out_dir.join(format!("{name}-{hash:016x}.{}.tmp", unique_suffix()));
    let src = tmp.with_extension("c");
    std::fs::write(&src, source).unwrap();
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg(format!("-L{}", lib_dir.display()))
        .args(flags)
        .arg("-ldl")
        .status()
        .expect("running cc");
    assert!(status.success(), "cc failed for {name}");
    std::fs::rename(&tmp, &out).unwrap();
    let _ = std::fs::remove_file(&src);
    out
}

/// The probe program (tests/c/probe.c), loading the driver with dlopen/dlsym.
pub fn probe_dlopen() -> PathBuf {
    compile_c(
        "probe-dlopen",
        include_str!("../c/probe.c"),
        &["-DPROBE_DLOPEN", "-pthread"],
    )
}

/// The probe program (tests/c/probe.c), linked with `-lcuda`.
pub fn probe_linked() -> PathBuf {
    compile_c(
        "probe-linked",
        include_str!("../c/probe.c"),
        &["-lcuda", "-pthread"],
    )
}

/// Runs a command to completion (killing it after `TIMEOUT`) and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a test program");
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("waiting for a test program"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("test program {pid} ran longer than {TIMEOUT:?}");
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let output = run(cmd);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The `key=value` fields of a line.
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The `key=value` fields of all lines of an output, merged.
pub fn all_fields(output: &str) -> HashMap<String, String> {
    output.lines().flat_map(fields).collect()
}

/// A field parsed as a number.
pub fn num(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {fields:?}"))
}

/// A child process that keeps running while the test talks to it; killed on drop.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Running {
    /// Starts `cmd` with piped stdin and stdout.
    pub fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning a test program");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next line of output, which must be `want`.
    pub fn expect_line(&mut self, want: &str) {
        let line = self
            .lines
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("no {want:?} from the child within {TIMEOUT:?}"));
        assert_eq!(line, want);
    }

    /// Waits for the next line of output.
    pub fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("no output from the child within {TIMEOUT:?}"))
    }

    /// Closes stdin and waits for the next line of output, which must be `want`.
    pub fn expect_line_after_close(&mut self, want: &str) {
        drop(self.stdin.take());
        self.expect_line(want);
    }

    /// Writes a line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Closes stdin and waits for the child to exit successfully; returns remaining output.
    pub fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "child exited with {status}");
                // Everything up to the end of its output, which the reading thread may not
                // have passed on yet when the child exits.
                let mut rest = Vec::new();
                while let Ok(line) = self.lines.recv_timeout(TIMEOUT) {
                    rest.push(line);
                }
                return rest;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit within {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
