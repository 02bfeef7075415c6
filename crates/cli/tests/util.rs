//! The test harness: each test gets a [`TestDir`] (a fresh temp dir with its own ledger) and
//! runs the real `gpuslice` binary in it, with a timeout, killing whatever it started if the
//! test fails.

#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gpuslice_ledger::{Ledger, TenantName};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// How long any one command may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test.
pub const GPUSLICE: &str = env!("CARGO_BIN_EXE_gpuslice");

/// A fresh directory for one test: the ledger lives in `ledger/`, the shim of this build is
/// linked as `libgpuslice.so`, and commands run with it as their working directory.
pub struct TestDir {
    pub root: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let root = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(
            artifact("libgpuslice.so"),
            root.path().join("libgpuslice.so"),
        )
        .expect("link the shim");
        TestDir { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.path().join("ledger")
    }

    /// The ledger, created if missing.
    pub fn ledger(&self) -> Ledger {
        Ledger::open(&self.ledger_dir()).expect("open ledger")
    }

    /// The shim, as this directory has it (a link to the shim of this build).
    pub fn shim(&self) -> PathBuf {
        self.path().join("libgpuslice.so")
    }

    /// A file named like the shim that is not it: empty (the dynamic loader says it cannot
    /// preload it and starts the program anyway, without limits).
    pub fn not_a_shim(&self) -> PathBuf {
        let path = self.path().join("not-the-shim").join("libgpuslice.so");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, "").expect("empty file");
        path
    }

    /// `gpuslice ARGS`, in this directory, with an environment free of gpuslice settings.
    pub fn gpuslice(&self, args: &[&str]) -> Command {
        let mut command = Command::new(GPUSLICE);
        for (name, _) in std::env::vars() {
            if name.starts_with("GPUSLICE_") || name == "LD_PRELOAD" {
                command.env_remove(name);
            }
        }
        command.current_dir(self.path()).args(args);
        command
    }

    /// `gpuslice run --dir <ledger> --shim <shim> ARGS`, on a machine without a GPU.
    pub fn run(&self, args: &[&str]) -> Command {
        let mut command = self.gpuslice(&["run"]);
        command
            .arg("--dir")
            .arg(self.ledger_dir())
            .arg("--shim")
            .arg(self.shim())
            .args(args);
        command
    }

    /// `gpuslice status --json --dir <ledger>`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = finish(
            self.gpuslice(&["status", "--json", "--dir"])
                .arg(self.ledger_dir()),
        );
        assert_eq!(out.code, Some(0), "status failed: {out:?}");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", out.stdout))
    }

    /// Whether the tenant's directory exists.
    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.ledger_dir().join("tenants").join(tenant).exists()
    }

    /// A file whose creation releases every [`hold`] command of this test.
    pub fn release_file(&self) -> PathBuf {
        self.path().join("release")
    }

    /// Releases the [`hold`] commands.
    pub fn release(&self) {
        std::fs::write(self.release_file(), "").expect("release file");
    }
}

/// A tenant name that must be valid.
pub fn tenant(name: &str) -> TenantName {
    TenantName::new(name).expect("tenant name")
}

/// A shell command (for after `--`) that prints `ready` and waits until `file` exists.
pub fn hold(file: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo ready; while [ ! -e '{}' ]; do sleep 0.02; done",
            file.display()
        ),
    ]
}

/// What a finished command did.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit code; `None` if a signal killed it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion (at most [`TIMEOUT`]).
pub fn finish(command: impl BorrowMut<Command>) -> Outcome {
    Running::spawn(command).wait(TIMEOUT)
}

/// A started command, in a process group of its own, that is killed (SIGKILL, with everything
/// it started) and reaped if the test lets go of it or it times out.
pub struct Running {
    child: Option<Child>,
}

impl Running {
    pub fn spawn(mut command: impl BorrowMut<Command>) -> Running {
        let command = command.borrow_mut();
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Running { child: Some(child) }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running child")
    }

    pub fn pid(&mut self) -> i32 {
        i32::try_from(self.child().id()).expect("pid")
    }

    /// Reads stdout until a line contains `marker`; returns what was read.
    pub fn wait_for_line(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let stdout = self.child().stdout.as_mut().expect("piped stdout");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        // Each read waits only as long as is left: a child that stays silent must fail the
        // test at the deadline, not hang it.
        while readable_within(stdout, deadline.saturating_duration_since(Instant::now())) {
            match stdout.read(&mut byte) {
                Ok(1) => {
                    seen.push(byte[0]);
                    if byte[0] == b'\n' && String::from_utf8_lossy(&seen).contains(marker) {
                        return String::from_utf8_lossy(&seen).into_owned();
                    }
                }
                _ => break,
            }
        }
        // Killed first: its stderr ends only when every process holding it is gone, and a
        // child that is still running (a slow start past the deadline) would hang the test.
        kill_group(self.child());
        let mut stderr = String::new();
        if let Some(err) = self.child().stderr.as_mut() {
            let _ = err.read_to_string(&mut stderr);
        }
        panic!(
            "never printed {marker:?} within {TIMEOUT:?}; stdout:\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&seen)
        );
    }

    /// Sends `signal` to the process.
    pub fn signal(&mut self, signal: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) takes plain integers; the child is ours and not yet reaped, so the
        // PID is still its own.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the process to exit (at most `timeout`) and collects its output.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let mut child = self.child.take().expect("running child");
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                let output = child.wait_with_output().expect("output");
                return outcome(output.status, &output.stdout, &output.stderr);
            }
            if Instant::now() > deadline {
                kill_group(&child);
                let output = child.wait_with_output().expect("output");
                panic!(
                    "timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&child);
            let _ = child.wait();
        }
    }
}

/// Whether `pipe` has something to read (or its end) within `time`.
fn readable_within(pipe: &impl std::os::fd::AsRawFd, time: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(time.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one pollfd, valid for the call; the descriptor is open (the pipe is
        // borrowed).
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return ready > 0;
        }
    }
}

/// Kills the process group `child` leads: the child and whatever it started that is left.
fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers; the child is not reaped yet, so its PID (and
        // the group named after it) is still its own.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

fn outcome(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Outcome {
    Outcome {
        code: status.code(),
        stdout: String::from_utf8_lossy(stdout).into_owned(),
        stderr: String::from_utf8_lossy(stderr).into_owned(),
    }
}

/// Where cargo put this build's artifacts: `target/<profile>/deps`.
pub fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("deps dir").to_path_buf()
}

/// An artifact of the build that the end-to-end tests need; missing is a failure, not a skip.
pub fn artifact(name: &str) -> PathBuf {
    let path = deps_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: it is built as a dev-dependency of gpuslice-cli, so run the tests with \
         `cargo test -p gpuslice-cli` or `cargo test --workspace`",
        path.display()
    );
    path
}

/// The cudaprobe test program of the root package's end-to-end tests (in its dlopen form:
/// run it as `cudaprobe dlsym COMMANDS...`), compiled once per build.
pub fn cudaprobe() -> PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let source =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/programs/cudaprobe.c");
            let text =
                std::fs::read(&source).unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            let out_dir = deps_dir()
                .parent()
                .expect("profile dir")
                .join("cli-test-programs");
            std::fs::create_dir_all(&out_dir).expect("program dir");
            let output = out_dir.join(format!("cudaprobe-{:016x}", hasher.finish()));
            if output.exists() {
                return output;
            }
            let partial = out_dir.join(format!(".cudaprobe.{}.partial", std::process::id()));
            let status = Command::new("cc")
                .args(["-std=gnu11", "-O1", "-Wall", "-Werror", "-o"])
                .arg(&partial)
                .arg(&source)
                .args(["-lpthread", "-ldl"])
                .status()
                .expect("run cc (is a C compiler installed?)");
            assert!(status.success(), "compiling {} failed", source.display());
            std::fs::rename(&partial, &output).expect("rename compiled program");
            output
        })
        .clone()
}

/// A simulated node for end-to-end tests: the real shim and the simulated GPU
/// (`crates/fakecuda`), with one 80 GiB GPU whose contexts take 64 MiB.
pub struct Node {
    pub dir: TestDir,
    pub shim: PathBuf,
}

/// The UUID of the simulated GPU 0.
pub const FAKE_GPU0: &str = "GPU-fa4ec0da-0000-4000-8000-000000000000";
/// What each simulated context takes.
pub const CONTEXT: u64 = 64 * MIB;

impl Node {
    pub fn new() -> Node {
        let dir = TestDir::new();
        let shim = artifact("libgpuslice.so");
        let fake_gpu = artifact("libfakecuda.so");
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&lib).expect("lib dir");
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            std::os::unix::fs::symlink(&fake_gpu, lib.join(name)).expect("symlink");
        }
        std::fs::create_dir_all(dir.path().join("gpu")).expect("gpu state dir");
        Node { dir, shim }
    }

    /// `gpuslice ARGS` on this node: the simulated GPU in the environment.
    pub fn gpuslice(&self, args: &[&str]) -> Command {
        self.on_gpu(self.dir.gpuslice(args))
    }

    /// `program` on this node's simulated GPU, without gpuslice.
    pub fn bare(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for (name, _) in std::env::vars() {
            if name.starts_with("GPUSLICE_") || name == "LD_PRELOAD" {
                command.env_remove(name);
            }
        }
        self.on_gpu(command)
    }

    /// `command` with the simulated GPU in its environment.
    fn on_gpu(&self, mut command: Command) -> Command {
        for (name, _) in std::env::vars() {
            if name.starts_with("FAKECUDA_") {
                command.env_remove(name);
            }
        }
        command
            .env("LD_LIBRARY_PATH", self.dir.path().join("lib"))
            .env("FAKECUDA_STATE_DIR", self.dir.path().join("gpu"))
            .env("FAKECUDA_DEVICES", "80Gi");
        command
    }

    /// `gpuslice run --dir <ledger> --shim <real shim> ARGS`.
    pub fn run(&self, args: &[&str]) -> Command {
        let mut command = self.gpuslice(&["run"]);
        command
            .arg("--dir")
            .arg(self.dir.ledger_dir())
            .arg("--shim")
            .arg(&self.shim)
            .args(args);
        command
    }
}

/// The numeric `key=value` field of a line of cudaprobe's output.
pub fn field(output: &str, line_prefix: &str, key: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no line starting with {line_prefix:?} in:\n{output}"));
    let wanted = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(wanted.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}
