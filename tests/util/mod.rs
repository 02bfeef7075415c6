//! The end-to-end test harness: real processes, the real shim, the simulated GPU.
//!
//! Each test makes a [`Node`]: a fresh temp dir holding its ledger, its simulated GPU's
//! shared state and a library dir where `libcuda.so.1` and `libnvidia-ml.so.1` are the
//! simulated GPU. Programs run with the shim preloaded, a timeout, and are killed if the
//! test drops them.

#![allow(dead_code)]

pub mod compute;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// What each simulated context takes unless a test says otherwise.
pub const CONTEXT: u64 = 64 * MIB;

/// Where cargo put the artifacts of this build: `target/<profile>/deps`.
pub fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("deps dir").to_path_buf()
}

fn artifact(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run the tests through `cargo test --workspace` (or nextest), which builds it",
        path.display()
    );
    path
}

pub fn shim_library() -> PathBuf {
    artifact(deps_dir().join("libgpuslice.so"))
}

pub fn fake_gpu_library() -> PathBuf {
    artifact(deps_dir().join("libfakecuda.so"))
}

pub fn example(name: &str) -> PathBuf {
    artifact(
        deps_dir()
            .parent()
            .expect("profile dir")
            .join("examples")
            .join(name),
    )
}

/// Makes `dir` a library dir in which the driver and NVML are the simulated GPU.
pub fn link_fake_gpu(dir: &Path) {
    std::fs::create_dir_all(dir).expect("library dir");
    let target = fake_gpu_library();
    for name in [
        "libcuda.so",
        "libcuda.so.1",
        "libnvidia-ml.so",
        "libnvidia-ml.so.1",
    ] {
        let link = dir.join(name);
        if link.exists() {
            continue;
        }
        // Several test processes may race here: make the link aside, then rename it in.
        let aside = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&aside);
        std::os::unix::fs::symlink(&target, &aside).expect("symlink");
        std::fs::rename(&aside, &link).expect("rename symlink");
    }
}

/// The three ways programs reach the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPath {
    /// Linked with `-lcuda`.
    Direct,
    /// `dlopen` + `dlsym`.
    Dlsym,
    /// `cuGetProcAddress`, itself obtained through `cuGetProcAddress`.
    ProcAddress,
}

pub const ALL_PATHS: [CallPath; 3] = [CallPath::Direct, CallPath::Dlsym, CallPath::ProcAddress];

/// Compiles a C test program once per source and flags, into the target dir.
pub fn compile_c(source: &str, flags: &[&str]) -> PathBuf {
    // Tests of one binary run on threads: one compiles at a time (two writing the same
    // partial file, or running it while the other writes it, fail).
    static COMPILING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    let source_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let text = std::fs::read(&source_path).expect("C source");
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    flags.hash(&mut hasher);
    let out_dir = deps_dir()
        .parent()
        .expect("profile dir")
        .join("test-programs");
    let link_dir = out_dir.join("fakelib");
    link_fake_gpu(&link_dir);
    let stem = source_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("program");
    let output = out_dir.join(format!("{stem}-{:016x}", hasher.finish()));
    if output.exists() {
        return output;
    }
    let partial = out_dir.join(format!(".{stem}.{}.partial", std::process::id()));
    let status = Command::new("cc")
        .args(["-std=gnu11", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&partial)
        .arg(&source_path)
        .args(flags)
        .arg(format!("-L{}", link_dir.display()))
        .args(["-lpthread", "-ldl"])
        .status()
        .expect("run cc (is a C compiler installed?)");
    assert!(status.success(), "compiling {source} failed");
    std::fs::rename(&partial, &output).expect("rename compiled program");
    output
}

/// The cudaprobe test program for a call path: (program, leading arguments).
pub fn probe(path: CallPath) -> (PathBuf, Vec<&'static str>) {
    static DIRECT: OnceLock<PathBuf> = OnceLock::new();
    static DYNAMIC: OnceLock<PathBuf> = OnceLock::new();
    match path {
        CallPath::Direct => (
            DIRECT
                .get_or_init(|| compile_c("tests/programs/cudaprobe.c", &["-DDIRECT", "-lcuda"]))
                .clone(),
            vec![],
        ),
        CallPath::Dlsym => (
            DYNAMIC
                .get_or_init(|| compile_c("tests/programs/cudaprobe.c", &[]))
                .clone(),
            vec!["dlsym"],
        ),
        CallPath::ProcAddress => (
            DYNAMIC
                .get_or_init(|| compile_c("tests/programs/cudaprobe.c", &[]))
                .clone(),
            vec!["procaddr"],
        ),
    }
}

/// One simulated node: a ledger and a simulated GPU of its own.
pub struct Node {
    pub root: tempfile::TempDir,
    pub devices: String,
    pub extra_env: Vec<(String, String)>,
}

impl Node {
    /// A node with one simulated 80 GiB GPU.
    pub fn new() -> Node {
        Node::with_devices("80Gi")
    }

    /// A node with simulated GPUs of these capacities (`FAKECUDA_DEVICES`), and an empty
    /// ledger directory (which the shim never creates itself).
    pub fn with_devices(devices: &str) -> Node {
        let root = tempfile::tempdir().expect("temp dir");
        link_fake_gpu(&root.path().join("lib"));
        std::fs::create_dir_all(root.path().join("gpu")).expect("gpu state dir");
        std::fs::create_dir_all(root.path().join("ledger")).expect("ledger dir");
        Node {
            root,
            devices: devices.to_string(),
            extra_env: Vec::new(),
        }
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.root.path().join("ledger")
    }

    pub fn ledger(&self) -> gpuslice_ledger::Ledger {
        gpuslice_ledger::Ledger::open(&self.ledger_dir()).expect("open ledger")
    }

    /// A command with the simulated GPU and nothing of gpuslice.
    pub fn bare(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        for (name, _) in std::env::vars() {
            if name.starts_with("GPUSLICE_")
                || name.starts_with("FAKECUDA_")
                || name == "LD_PRELOAD"
            {
                command.env_remove(name);
            }
        }
        command
            .env("LD_LIBRARY_PATH", self.root.path().join("lib"))
            .env("FAKECUDA_STATE_DIR", self.root.path().join("gpu"))
            .env("FAKECUDA_DEVICES", &self.devices)
            .env("GPUSLICE_DIR", self.ledger_dir());
        for (name, value) in &self.extra_env {
            command.env(name, value);
        }
        command
    }

    /// A command run under the shim as a process of `tenant` (no limit unless given).
    pub fn tenant(
        &self,
        tenant: &str,
        limit: Option<&str>,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
        let mut command = self.bare(program);
        command
            .env("LD_PRELOAD", shim_library())
            .env("GPUSLICE_TENANT", tenant);
        if let Some(limit) = limit {
            command.env("GPUSLICE_MEMORY_LIMIT", limit);
        }
        command
    }

    /// cudaprobe through `path`, as a process of `tenant` with `limit`, running `commands`.
    pub fn probe(
        &self,
        path: CallPath,
        tenant: &str,
        limit: Option<&str>,
        commands: &[&str],
    ) -> Command {
        let (program, leading) = probe(path);
        let mut command = self.tenant(tenant, limit, program);
        command.args(leading).args(commands);
        command
    }
}

/// Runs a command to completion (30 s at most) and returns what it printed.
pub fn run(command: &mut Command) -> Output {
    let child = Running::spawn(command);
    child.wait_output(Duration::from_secs(30))
}

/// Runs a command and insists it exited 0; returns stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// A child process that is killed if the test lets go of it. What it prints is read as it
/// comes (a child that prints more than a pipe holds must not stall on a full pipe).
pub struct Running {
    child: Option<Child>,
    stdout: Captured,
    stderr: Captured,
    /// How much of stdout `wait_for_line` has handed out.
    seen: usize,
}

/// Everything read so far from one of a child's pipes, by a thread of its own.
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Captured {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Captured {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let bytes = Arc::clone(&bytes);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    bytes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            })
        });
        Captured { bytes, reader }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn ended(&self) -> bool {
        self.reader.as_ref().is_none_or(|r| r.is_finished())
    }

    /// Everything, once the pipe is closed.
    fn finish(&mut self) -> Vec<u8> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.snapshot()
    }
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = Captured::start(child.stdout.take());
        let stderr = Captured::start(child.stderr.take());
        Running {
            child: Some(child),
            stdout,
            stderr,
            seen: 0,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits until a line of stdout after those already handed out contains `marker` (the
    /// child says it is ready); returns the text up to the end of that line.
    pub fn wait_for_line(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let ended = self.stdout.ended();
            let bytes = self.stdout.snapshot();
            let fresh = &bytes[self.seen.min(bytes.len())..];
            let mut offset = 0;
            for line in fresh.split_inclusive(|&b| b == b'\n') {
                offset += line.len();
                if line.ends_with(b"\n") && String::from_utf8_lossy(line).contains(marker) {
                    let text = String::from_utf8_lossy(&fresh[..offset]).to_string();
                    self.seen += offset;
                    return text;
                }
            }
            if ended || Instant::now() >= deadline {
                panic!(
                    "child never printed {marker:?}; it printed:\n{}",
                    String::from_utf8_lossy(fresh)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running child");
        let _ = child.kill();
        child.wait().expect("reap child")
    }

    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("running child");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&self.stdout.finish()),
                    String::from_utf8_lossy(&self.stderr.finish())
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Output {
            status,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The line of `output` that starts with `prefix`.
pub fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"))
}

/// The numeric `key=value` field of a line.
pub fn field(line: &str, key: &str) -> u64 {
    let wanted = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(wanted.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}

/// What a tenant holds on the node's first GPU, according to the ledger, counting only
/// live processes.
pub fn tenant_usage(node: &Node, tenant: &str) -> u64 {
    let ledger = node.ledger();
    let name = gpuslice_ledger::TenantName::new(tenant).expect("tenant name");
    let usage = ledger.snapshot_usage(&name).expect("usage snapshot");
    usage
        .slots()
        .iter()
        .filter(|slot| slot.live)
        .flat_map(|slot| slot.memory_bytes.iter().map(|(_, bytes)| *bytes))
        .sum()
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

/// Bytes in use on the node's simulated GPU `index` by every process, as the simulated GPU
/// itself counts them (its shared state file), independent of gpuslice.
pub fn device_used(node: &Node, index: usize) -> u64 {
    let path = node
        .root
        .path()
        .join("gpu")
        .join(format!("device-{index}.state"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    u64::from_ne_bytes(bytes[16..24].try_into().expect("state file header"))
}

/// The UUID of the node's simulated GPU with physical index `index` (its place in
/// `FAKECUDA_DEVICES`, its NVML index), as NVML prints it.
pub fn gpu_uuid(index: usize) -> String {
    format!("GPU-fa4ec0da-0000-4000-8000-{index:012x}")
}

/// What a tenant holds on the GPU with `uuid`, according to the ledger, counting only live
/// processes (0 where the tenant never used that GPU).
pub fn tenant_usage_on(node: &Node, tenant: &str, uuid: &str) -> u64 {
    let ledger = node.ledger();
    let name = gpuslice_ledger::TenantName::new(tenant).expect("tenant name");
    let usage = ledger.snapshot_usage(&name).expect("usage snapshot");
    let uuid = gpuslice_ledger::GpuUuid::parse(uuid).expect("GPU UUID");
    let Some(gpu) = usage.gpu_index(&uuid) else {
        return 0;
    };
    usage
        .slots()
        .iter()
        .filter(|slot| slot.live)
        .flat_map(|slot| slot.memory_bytes.iter())
        .filter(|(index, _)| *index == gpu)
        .map(|(_, bytes)| *bytes)
        .sum()
}

/// The text `key=value` field of a line.
pub fn text_field<'a>(line: &'a str, key: &str) -> &'a str {
    let wanted = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(wanted.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
