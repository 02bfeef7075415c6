//! Old images: the shim is built against an old glibc (`scripts/glibc-baseline.sh`), so that
//! the dynamic loader of an image whose glibc is older than the build machine's loads it
//! and the quota holds there.
//!
//! The image is Debian 11 (bullseye, glibc 2.31, as old as Ubuntu 20.04's), built once with
//! `debootstrap --variant=minbase` and kept under `target/`; podman (with runc) runs
//! containers from it with `--rootfs`. Those tests are skipped, loudly, only where
//! containers cannot run or debootstrap cannot reach the Debian mirror; CI installs
//! podman, debootstrap and the old-glibc build's tools (`.ci/run`), so there they run.

mod util;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use util::*;

/// The Debian release of the old image, and where its packages come from.
const OLD_RELEASE: &str = "bullseye";
const MIRROR: &str = "http://deb.debian.org/debian";

/// The first glibc whose symbol versions a plain build of the shim on a current machine asks
/// for: an image older than this refuses that build.
const FIRST_GLIBC_OF_A_PLAIN_BUILD: (u32, u32) = (2, 34);

/// How long building (the shim, or the image) may take on a loaded CI machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/`: where the old-glibc build and the image are kept between runs.
fn target_dir() -> PathBuf {
    deps_dir()
        .parent()
        .and_then(Path::parent)
        .expect("target dir above <profile>/deps")
        .to_path_buf()
}

/// Runs `scripts/glibc-baseline.sh ARGS`.
fn baseline_script(args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(repository().join("scripts/glibc-baseline.sh"))
        .args(args)
        .current_dir(repository())
        .env("CARGO_TARGET_DIR", target_dir());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The directory holding `libgpuslice.so` and `libfakecuda.so` built against the old glibc,
/// built (once per test process; cargo makes it a no-op when nothing changed) by the same
/// script as dist/ and the image, which also checks what it built.
fn baseline_build() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let output = Running::spawn(&mut baseline_script(&["build", "gpuslice", "fakecuda"]))
            .wait_output(BUILD_TIMEOUT);
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "scripts/glibc-baseline.sh build failed ({}):\n{}",
            output.status,
            text(&output.stderr)
        );
        let dir = PathBuf::from(stdout.lines().last().expect("the build's directory").trim());
        assert!(dir.join("libgpuslice.so").is_file(), "{}", dir.display());
        dir
    })
}

/// Compiles a C program (or, with `-shared`, a library) against the old glibc, as the
/// image's own programs are: `scripts/glibc-baseline.sh cc`, i.e. zig's C compiler. `-lcuda`
/// links the simulated GPU built for the old glibc.
fn compile_for_old_glibc(source: &str, flags: &[&str], output: &Path) {
    let link_dir = tempfile::tempdir().expect("link dir");
    std::os::unix::fs::symlink(
        baseline_build().join("libfakecuda.so"),
        link_dir.path().join("libcuda.so"),
    )
    .expect("libcuda.so link");
    let mut command = baseline_script(&["cc", "-std=gnu11", "-O1", "-Wall", "-Werror", "-o"]);
    command
        .arg(output)
        .arg(repository().join(source))
        .args(flags)
        .arg(format!("-L{}", link_dir.path().display()))
        .args(["-lpthread", "-ldl"]);
    let result = Running::spawn(&mut command).wait_output(BUILD_TIMEOUT);
    assert!(
        result.status.success(),
        "compiling {source} for the old glibc failed:\n{}",
        text(&result.stderr)
    );
}

/// The old image's root filesystem, built by debootstrap on first use and kept in
/// `target/old-glibc-rootfs/`, or why it cannot be had here.
fn old_rootfs() -> Result<PathBuf, String> {
    static ROOTFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOTFS.get_or_init(build_old_rootfs).clone()
}

fn build_old_rootfs() -> Result<PathBuf, String> {
    let parent = target_dir().join("old-glibc-rootfs");
    let rootfs = parent.join(OLD_RELEASE);
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    std::fs::create_dir_all(&parent).expect("rootfs parent");
    remove_abandoned_builds(&parent);
    // Built aside and renamed into place, so an interrupted build is never taken for a
    // finished one.
    let partial = parent.join(format!(".{OLD_RELEASE}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    // Debian puts it in /usr/sbin, which a non-login shell's PATH may lack.
    let Some(debootstrap) = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
        .into_iter()
        .find(|path| Path::new(path).is_file())
    else {
        panic!("debootstrap is not installed (Debian: apt-get install debootstrap; .ci/run does)");
    };
    let mut command = Command::new(debootstrap);
    command
        .args(["--variant=minbase", OLD_RELEASE])
        .arg(&partial)
        .arg(MIRROR);
    let output = Running::spawn(&mut command).wait_output(BUILD_TIMEOUT);
    let log = format!("{}{}", text(&output.stdout), text(&output.stderr));
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        if log.contains("Failed getting release file") || log.contains("Couldn't download") {
            return Err(format!("debootstrap cannot reach {MIRROR}:\n{log}"));
        }
        panic!(
            "debootstrap {OLD_RELEASE} failed ({}):\n{log}",
            output.status
        );
    }
    // Mount points of the tests' bind mounts, made here so that running containers (from a
    // read-only root) never changes the kept root filesystem.
    for dir in ["mnt/gpuslice", "mnt/node"] {
        std::fs::create_dir_all(partial.join(dir)).expect("mount point");
    }
    if std::fs::rename(&partial, &rootfs).is_err() {
        // Another test process finished first: use its.
        let _ = std::fs::remove_dir_all(&partial);
        assert!(rootfs.is_dir(), "{} was not built", rootfs.display());
    }
    Ok(rootfs)
}

/// Removes what builds of the root filesystem by test processes that no longer run left
/// behind (`.bullseye.<pid>`: a build interrupted by a killed test run).
fn remove_abandoned_builds(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{OLD_RELEASE}.");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `podman run` of `command_line` in the old image: its root read-only, the test's files at
/// /mnt/gpuslice (read-only) and the node's ledger and simulated GPU at /mnt/node. The
/// lowered rlimits are what podman would otherwise raise, which a runtime without
/// CAP_SYS_RESOURCE (a sandbox) may not do.
fn podman_run(
    rootfs: &Path,
    files: &Path,
    node: &Path,
    env: &[(&str, &str)],
    command_line: &[&str],
) -> Command {
    let mut command = Command::new("podman");
    command.args([
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    command
        .arg("--volume")
        .arg(format!("{}:/mnt/gpuslice:ro", files.display()))
        .arg("--volume")
        .arg(format!("{}:/mnt/node", node.display()));
    for (name, value) in env {
        command.arg("--env").arg(format!("{name}={value}"));
    }
    command.arg("--rootfs").arg(rootfs).args(command_line);
    command
}

/// Why there is no podman to use, if there is none.
fn no_podman() -> Option<String> {
    match Command::new("podman").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("podman --version failed: {out:?}")),
        Err(e) => Some(format!("podman is not installed ({e})")),
    }
}

/// Why containers of the old image cannot run here, if they cannot: podman fails a trivial
/// one.
fn cannot_run_containers(rootfs: &Path, files: &Path, node: &Path) -> Option<String> {
    let out = run(&mut podman_run(
        rootfs,
        files,
        node,
        &[],
        &["/bin/sh", "-c", "echo container-ok"],
    ));
    if out.status.success() && text(&out.stdout).contains("container-ok") {
        return None;
    }
    Some(format!(
        "podman cannot run a trivial container here ({}): {}",
        out.status,
        text(&out.stderr).trim()
    ))
}

/// Whether this machine has what building against the old glibc needs (cargo-zigbuild and
/// zig), and, for `image`, what building the old image needs (debootstrap). Where it has not:
/// a failure when `REQUIRE_OLD_GLIBC_TESTS` is set (CI sets it, and `.ci/run` installs
/// them), else a loud skip, so that the README's test command still runs everything else on
/// a machine without them.
fn has_tools(test: &str, image: bool) -> bool {
    let mut missing = Vec::new();
    if !Command::new("cargo-zigbuild")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        missing.push("cargo-zigbuild");
    }
    if !Command::new("python3")
        .args(["-c", "import ziglang"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        missing.push("zig (python3 -m ziglang)");
    }
    if image
        && !["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
            .iter()
            .any(|p| Path::new(p).is_file())
    {
        missing.push("debootstrap");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (pip install cargo-zigbuild ziglang; apt-get install debootstrap; \
         .ci/run installs them)",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("REQUIRE_OLD_GLIBC_TESTS").is_none(),
        "REQUIRE_OLD_GLIBC_TESTS is set but {why}"
    );
    skip(test, &why);
    false
}

/// Says loudly that a test did not run, and why: on stderr itself, not through the test
/// harness's capture (which would show it only for a failing test).
fn skip(test: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED {test}: {why}\n\
         *** The shim is NOT tested in an image with an old glibc on this machine.\n"
    );
}

/// One test's view of the old image: the image, a directory of files mounted into its
/// containers, and a node (ledger, simulated GPU state) shared with them.
struct OldImage {
    rootfs: PathBuf,
    files: tempfile::TempDir,
    node: Node,
}

/// The simulated GPU in the old image, and the quota put on its tenant.
const DEVICE: &str = "1Gi";
const LIMIT: &str = "256Mi";
const LIMIT_BYTES: u64 = 256 * MIB;

impl OldImage {
    /// The image and a node for `test`, or `None` (having said why) where containers
    /// cannot run or the image cannot be built for want of the mirror.
    fn for_test(test: &str) -> Option<OldImage> {
        if !has_tools(test, true) {
            return None;
        }
        if let Some(why) = no_podman() {
            skip(test, &why);
            return None;
        }
        // The image and the old-glibc build each take a minute or so the first time: at once.
        let rootfs = std::thread::scope(|scope| {
            scope.spawn(baseline_build);
            old_rootfs()
        });
        let rootfs = match rootfs {
            Ok(rootfs) => rootfs,
            Err(why) => {
                skip(test, &why);
                return None;
            }
        };
        let files = tempfile::tempdir().expect("files dir");
        let node = Node::with_devices(DEVICE);
        if let Some(why) = cannot_run_containers(&rootfs, files.path(), node.root.path()) {
            skip(test, &why);
            return None;
        }
        Some(OldImage {
            rootfs,
            files,
            node,
        })
    }

    /// Copies `from` into the mounted files as `name`; returns its path in the container.
    fn add_file(&self, from: &Path, name: &str) -> String {
        let to = self.files.path().join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("files subdir");
        std::fs::copy(from, &to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        format!("/mnt/gpuslice/{name}")
    }

    /// Compiles `source` for the old glibc into the mounted files as `name`; returns its path
    /// in the container.
    fn compile(&self, source: &str, name: &str, flags: &[&str]) -> String {
        compile_for_old_glibc(source, flags, &self.files.path().join(name));
        format!("/mnt/gpuslice/{name}")
    }

    /// Puts the simulated GPU built for the old glibc where the image's loader finds the
    /// driver and NVML; returns that directory (for `LD_LIBRARY_PATH`).
    fn add_old_fake_gpu(&self) -> String {
        let fake = baseline_build().join("libfakecuda.so");
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            self.add_file(&fake, &format!("lib/{name}"));
        }
        "/mnt/gpuslice/lib".to_string()
    }

    /// Runs `command_line` in the image with the simulated GPU's and the tenant's settings,
    /// and `LD_PRELOAD=preload`.
    fn run(&self, preload: &str, library_path: &str, command_line: &[&str]) -> Output {
        let env = [
            ("LD_PRELOAD", preload),
            ("LD_LIBRARY_PATH", library_path),
            ("FAKECUDA_DEVICES", DEVICE),
            ("FAKECUDA_STATE_DIR", "/mnt/node/gpu"),
            ("GPUSLICE_DIR", "/mnt/node/ledger"),
            ("GPUSLICE_TENANT", "old"),
            ("GPUSLICE_MEMORY_LIMIT", LIMIT),
        ];
        run(&mut podman_run(
            &self.rootfs,
            self.files.path(),
            self.node.root.path(),
            &env,
            command_line,
        ))
    }

    /// The image's glibc version, as its own `getconf` says.
    fn glibc_version(&self) -> (u32, u32) {
        let out = run(&mut podman_run(
            &self.rootfs,
            self.files.path(),
            self.node.root.path(),
            &[],
            &["getconf", "GNU_LIBC_VERSION"],
        ));
        let stdout = text(&out.stdout);
        let version = stdout
            .trim()
            .strip_prefix("glibc ")
            .and_then(|v| v.split_once('.'))
            .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
        version.unwrap_or_else(|| panic!("getconf GNU_LIBC_VERSION in the image: {out:?}"))
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The shim built on this machine asks for glibc 2.34; Debian 11's loader refuses it and
/// the workload never runs under its quota. The shim built against the baseline loads
/// there, and a 256 MiB quota holds through each way a program reaches the driver.
#[test]
fn old_glibc_image_still_enforces_the_quota() {
    let test = "old_glibc_image_still_enforces_the_quota";
    let Some(image) = OldImage::for_test(test) else {
        return;
    };
    let glibc = image.glibc_version();
    assert!(
        glibc < FIRST_GLIBC_OF_A_PLAIN_BUILD,
        "the image's glibc {glibc:?} is not old: this test would prove nothing"
    );

    let libs = image.add_old_fake_gpu();
    let shim = image.add_file(&baseline_build().join("libgpuslice.so"), "libgpuslice.so");
    let plain_shim = image.add_file(&shim_library(), "plain/libgpuslice.so");
    let probe = image.compile("tests/programs/cudaprobe.c", "cudaprobe", &[]);
    let direct_probe = image.compile(
        "tests/programs/cudaprobe.c",
        "cudaprobe-direct",
        &["-DDIRECT", "-lcuda"],
    );

    // The plain build: the loader refuses it, so nothing is enforced (the program does not
    // even start).
    let out = image.run(
        &plain_shim,
        &libs,
        &[&probe, "dlsym", "info", "fill", "16M"],
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&plain_shim)
            && stderr.contains("version `GLIBC_2.34' not found"),
        "the old image's loader took the shim built for this machine's glibc: {}",
        describe(&out)
    );
    assert!(!text(&out.stdout).contains("fill"), "{}", describe(&out));

    // The baseline build, through each call path: the quota is the GPU's total, and
    // allocations stop at it.
    let paths: [(&str, &[&str]); 3] = [
        ("direct", &[&direct_probe]),
        ("dlsym", &[&probe, "dlsym"]),
        ("procaddr", &[&probe, "procaddr"]),
    ];
    for (path, program) in paths {
        let mut command_line = program.to_vec();
        command_line.extend(["info", "fill", "16M"]);
        let out = image.run(&shim, &libs, &command_line);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{path}: {}", describe(&out));
        let info = line(&stdout, "info");
        assert_eq!(
            field(info, "total"),
            LIMIT_BYTES,
            "{path}: {}",
            describe(&out)
        );
        let fill = line(&stdout, "fill");
        assert_eq!(
            field(fill, "bytes"),
            LIMIT_BYTES - CONTEXT,
            "{path}: {}",
            describe(&out)
        );
        assert_eq!(
            field(fill, "rc"),
            2,
            "{path}: refused past the quota: {}",
            describe(&out)
        );
    }
    // Judged from outside too: the ledger on the host counts the three refusals, and the
    // tenant's memory was given back as each process exited.
    let ledger = image.node.ledger();
    let tenant = gpuslice_ledger::TenantName::new("old").expect("tenant name");
    assert_eq!(tenant_usage(&image.node, "old"), 0);
    let usage = ledger.snapshot_usage(&tenant).expect("usage snapshot");
    let refusals: u64 = usage
        .gpus()
        .into_iter()
        .map(|(gpu, _)| usage.oom_refusals(gpu))
        .sum();
    assert_eq!(refusals, 3);
}

/// The `dlsym` trampoline under the old glibc (whose `dlsym` lives in libdl and is found
/// with `dlvsym(..., "GLIBC_2.2.5")`): another interposer's `dlsym(RTLD_NEXT, ...)` still
/// resolves relative to that interposer, not to the shim.
#[test]
fn old_glibc_image_keeps_rtld_next_lookups_relative_to_their_caller() {
    let test = "old_glibc_image_keeps_rtld_next_lookups_relative_to_their_caller";
    let Some(image) = OldImage::for_test(test) else {
        return;
    };
    let shim = image.add_file(&baseline_build().join("libgpuslice.so"), "libgpuslice.so");
    let interposer = image.compile(
        "tests/programs/next_interposer.c",
        "libnext-interposer.so",
        &["-shared", "-fPIC"],
    );
    let program = image.compile("tests/programs/call_getppid.c", "call_getppid", &[]);
    let out = image.run(&format!("{shim}:{interposer}"), "", &[&program]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    // In the container the program is PID 1, whose parent is 0; -1 would mean the
    // interposer found no "next" getppid.
    assert_eq!(stdout, "getppid=0\n", "{}", describe(&out));
}

/// The check that guards the build can fail: it refuses the plain build of the shim made on
/// this machine, naming the symbols that ask for a newer glibc.
#[test]
fn the_baseline_check_names_what_a_plain_build_needs() {
    let out = run(baseline_script(&["check"]).arg(shim_library()));
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs glibc newer than"),
        "{}",
        describe(&out)
    );
    let needs_2_34 = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("GLIBC_2.34:"))
        .unwrap_or_else(|| panic!("no GLIBC_2.34 line: {}", describe(&out)));
    assert!(
        needs_2_34.split_whitespace().any(|name| name == "dlvsym"),
        "{needs_2_34}"
    );
}

/// It also refuses what linking against the baseline leaves of a function glibc added
/// later: a reference with no version, which an older glibc cannot satisfy.
#[test]
fn the_baseline_check_names_functions_the_baseline_glibc_lacks() {
    if !has_tools(
        "the_baseline_check_names_functions_the_baseline_glibc_lacks",
        false,
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let library = dir.path().join("libuses-memfd-create.so");
    compile_for_old_glibc(
        "tests/programs/uses_memfd_create.c",
        &["-shared", "-fPIC"],
        &library,
    );
    let out = run(baseline_script(&["check"]).arg(&library));
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not define"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.split_whitespace().any(|word| word == "memfd_create"),
        "{}",
        describe(&out)
    );
}

/// What dist/ and the image ship passes that check.
#[test]
fn shipped_shim_needs_no_glibc_newer_than_the_baseline() {
    if !has_tools("shipped_shim_needs_no_glibc_newer_than_the_baseline", false) {
        return;
    }
    let dir = baseline_build();
    let out = run(baseline_script(&["check"])
        .arg(dir.join("libgpuslice.so"))
        .arg(dir.join("libfakecuda.so")));
    assert!(out.status.success(), "{}", describe(&out));
}

/// The baseline build is also what runs on a current glibc (this machine's; a GPU node's
/// images): the quota holds through each call path there too.
#[test]
fn shipped_shim_enforces_the_quota_on_a_current_glibc() {
    if !has_tools("shipped_shim_enforces_the_quota_on_a_current_glibc", false) {
        return;
    }
    let shim = baseline_build().join("libgpuslice.so");
    for path in ALL_PATHS {
        let node = Node::new();
        let mut command = node.probe(path, "a", Some("1Gi"), &["info", "fill", "64M"]);
        let out = run_ok(command.env("LD_PRELOAD", &shim));
        assert_eq!(field(line(&out, "info"), "total"), GIB, "{path:?}: {out}");
        let fill = line(&out, "fill");
        assert_eq!(field(fill, "bytes"), GIB - CONTEXT, "{path:?}: {fill}");
        assert_eq!(field(fill, "rc"), 2, "{path:?}: {fill}");
    }
}

/// The `dlsym` trampoline of the baseline build on a current glibc (whose `dlsym` is in
/// libc and versioned GLIBC_2.34): another interposer's `RTLD_NEXT` lookups still resolve
/// relative to it.
#[test]
fn shipped_shim_keeps_rtld_next_lookups_relative_to_their_caller_on_a_current_glibc() {
    if !has_tools(
        "shipped_shim_keeps_rtld_next_lookups_relative_to_their_caller_on_a_current_glibc",
        false,
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let interposer = dir.path().join("libnext-interposer.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&interposer)
        .arg(repository().join("tests/programs/next_interposer.c"))
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(status.success());
    let program = compile_c("tests/programs/call_getppid.c", &[]);
    let node = Node::new();
    let preload = format!(
        "{}:{}",
        baseline_build().join("libgpuslice.so").display(),
        interposer.display()
    );
    let out = run_ok(node.bare(&program).env("LD_PRELOAD", preload));
    // -1 would mean the interposer found no "next" getppid; a crash, that it found itself.
    assert_eq!(out, format!("getppid={}\n", std::process::id()));
}
