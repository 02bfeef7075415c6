//! Proof that a file given as the shim is the gpuslice shim, of this command's ledger layout,
//! and that the dynamic loader preloads it.
//!
//! A command started with anything else in `LD_PRELOAD` runs without limits: the loader
//! ignores a file it cannot load ("cannot be preloaded ... ignored") and a library that is not
//! the shim hooks nothing. So `run` refuses to start a command until both checks pass:
//!
//! - [`identify`] reads the file as ELF: a shared object for this machine's architecture that
//!   exports `cuMemAlloc_v2`, `dlsym` and the marker `gpuslice_ledger_layout_version`
//!   (`src/exports/marker.rs`), whose value must be [`LAYOUT_VERSION`];
//! - [`check_preloads`] starts this program again with the shim in `LD_PRELOAD` (the hidden
//!   `__shim-probe` subcommand, [`probe`]), which looks the marker up with `dlsym` and says
//!   where it was found. That catches what only the loader knows: a library it needs that is
//!   missing, a glibc too old for it, a file it may not read.
//!
//! `cdi generate` and the device plugin, whose shim is loaded inside containers (another
//! loader, another glibc), use [`identify`] alone.

use std::ffi::{CStr, OsStr};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpuslice_ledger::LAYOUT_VERSION;
use object::{Object, ObjectKind, ObjectSection, ObjectSymbol, SymbolSection};

use crate::locate;

/// The marker the shim exports: its ledger layout version, a `u32`.
pub const MARKER: &str = "gpuslice_ledger_layout_version";
/// [`MARKER`] as `dlsym` takes it.
const MARKER_C: &CStr = c"gpuslice_ledger_layout_version";
/// What a shim must export besides the marker: an allocation it gates and the `dlsym` it
/// interposes.
pub const SHIM_SYMBOLS: [&str; 2] = ["cuMemAlloc_v2", "dlsym"];
/// The hidden subcommand that [`check_preloads`] runs.
pub const PROBE_SUBCOMMAND: &str = "__shim-probe";

/// Why a file cannot be used as the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The file cannot be read.
    #[error("the shim {} cannot be read: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Not an ELF shared object for this machine.
    #[error("the shim {} is not an ELF shared object for this machine ({why}): it is not \
             {}", .path.display(), locate::SHIM_NAME)]
    NotLoadable {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
    /// A shared object without the shim's symbols.
    #[error("the shim {} does not export {}: it is not the gpuslice shim \
             ({})", .path.display(), .missing.join(", "), locate::SHIM_NAME)]
    NotTheShim {
        /// The file.
        path: PathBuf,
        /// The symbols it lacks.
        missing: Vec<&'static str>,
    },
    /// The shim of another ledger layout.
    #[error("the shim {} was built for ledger layout version {found} and this gpuslice \
             uses version {LAYOUT_VERSION}; use the {} of the same build as this \
             command", .path.display(), locate::SHIM_NAME)]
    OtherLayout {
        /// The file.
        path: PathBuf,
        /// The version it was built for.
        found: u32,
    },
    /// The dynamic loader does not preload it.
    #[error("the dynamic loader does not preload the shim {}: {why}", .path.display())]
    NotPreloaded {
        /// The file.
        path: PathBuf,
        /// What the loader or the probe said.
        why: String,
    },
}

/// The shim `run` and `demo` preload: found as [`locate::shim`] finds it, then shown to be
/// the shim ([`identify`]) and to be preloaded by the loader ([`check_preloads`]) with the
/// `LD_PRELOAD` this process has.
pub fn proven(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let shim = locate::shim(flag)?;
    identify(&shim)?;
    check_preloads(&shim, std::env::var_os("LD_PRELOAD").as_deref())?;
    Ok(shim)
}

/// What [`identify`] found out about a shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimInfo {
    /// The ledger layout version it was built for (always [`LAYOUT_VERSION`] once accepted).
    pub layout_version: u32,
}

/// Reads `path` as ELF and checks that it is the gpuslice shim for this machine and this
/// ledger layout.
pub fn identify(path: &Path) -> Result<ShimInfo, ShimError> {
    let data = std::fs::read(path).map_err(|source| ShimError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_loadable = |why: String| ShimError::NotLoadable {
        path: path.to_path_buf(),
        why,
    };
    let file = object::File::parse(&*data).map_err(|e| not_loadable(e.to_string()))?;
    if file.format() != object::BinaryFormat::Elf || file.kind() != ObjectKind::Dynamic {
        return Err(not_loadable(format!(
            "a {:?} file of kind {:?}",
            file.format(),
            file.kind()
        )));
    }
    if Some(file.architecture()) != host_architecture() || !file.is_64() {
        return Err(not_loadable(format!(
            "built for {:?}{}",
            file.architecture(),
            if file.is_64() { "" } else { ", 32-bit" }
        )));
    }
    let exported = |name: &str| {
        file.dynamic_symbols()
            .find(|s| s.is_definition() && s.is_global() && s.name().is_ok_and(|n| n == name))
    };
    let missing: Vec<&'static str> = SHIM_SYMBOLS
        .into_iter()
        .chain([MARKER])
        .filter(|name| exported(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(ShimError::NotTheShim {
            path: path.to_path_buf(),
            missing,
        });
    }
    let value = exported(MARKER).and_then(|marker| {
        let SymbolSection::Section(index) = marker.section() else {
            return None;
        };
        let bytes = file
            .section_by_index(index)
            .ok()?
            .data_range(marker.address(), 4)
            .ok()??;
        let bytes: [u8; 4] = bytes.try_into().ok()?;
        Some(if file.is_little_endian() {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    });
    let Some(layout_version) = value else {
        return Err(not_loadable(format!("its {MARKER} cannot be read")));
    };
    if layout_version != LAYOUT_VERSION {
        return Err(ShimError::OtherLayout {
            path: path.to_path_buf(),
            found: layout_version,
        });
    }
    Ok(ShimInfo { layout_version })
}

/// The architecture of this build, the one a preloaded library must have.
fn host_architecture() -> Option<object::Architecture> {
    if cfg!(target_arch = "x86_64") {
        Some(object::Architecture::X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(object::Architecture::Aarch64)
    } else {
        None
    }
}

/// Starts this program with `LD_PRELOAD` set as a command of `run` gets it (the shim first,
/// then `existing_preload`), and checks that the loader mapped the shim and that its marker
/// says this ledger layout.
pub fn check_preloads(shim: &Path, existing_preload: Option<&OsStr>) -> Result<(), ShimError> {
    let not_preloaded = |why: String| ShimError::NotPreloaded {
        path: shim.to_path_buf(),
        why,
    };
    let program = std::env::current_exe()
        .map_err(|e| not_preloaded(format!("cannot find this program to test it ({e})")))?;
    let mut command = Command::new(&program);
    for (name, _) in std::env::vars_os() {
        if name.as_bytes().starts_with(b"GPUSLICE_") {
            command.env_remove(name);
        }
    }
    let output = command
        .arg(PROBE_SUBCOMMAND)
        .env("LD_PRELOAD", locate::ld_preload(shim, existing_preload))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| not_preloaded(format!("{} could not be started ({e})", program.display())))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let loader_said = stderr
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string);
    let Some(found) = parse_probe(&output.stdout).filter(|_| output.status.success()) else {
        return Err(not_preloaded(loader_said.unwrap_or_else(|| {
            format!(
                "a program started with it did not find it loaded ({})",
                output.status
            )
        })));
    };
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    if !same_file(&found.path, shim) {
        return Err(not_preloaded(format!(
            "a program started with it found {MARKER} in {} instead",
            found.path.display()
        )));
    }
    if found.layout_version != LAYOUT_VERSION {
        return Err(ShimError::OtherLayout {
            path: shim.to_path_buf(),
            found: found.layout_version,
        });
    }
    Ok(())
}

/// What the probe found: the marker's value and the file it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeReport {
    layout_version: u32,
    path: PathBuf,
}

/// Parses the probe's output: the layout version on the first line, the library's path (as
/// bytes) on the second.
fn parse_probe(stdout: &[u8]) -> Option<ProbeReport> {
    let mut lines = stdout.split(|b| *b == b'\n');
    let version = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    let path = lines.next().filter(|p| !p.is_empty())?;
    Some(ProbeReport {
        layout_version: version,
        path: PathBuf::from(OsStr::from_bytes(path)),
    })
}

/// `gpuslice __shim-probe`, run by [`check_preloads`] with the shim preloaded: prints the
/// marker's value and the path of the library that holds it; exits 1 when no loaded library
/// exports it.
pub fn probe() -> u8 {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the name up.
    let marker = unsafe { libc::dlsym(libc::RTLD_DEFAULT, MARKER_C.as_ptr()) };
    if marker.is_null() {
        return 1;
    }
    // SAFETY: a zeroed Dl_info is a valid place for dladdr to fill (pointers and integers).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `marker` is an address dlsym returned; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(marker, &raw mut info) } == 0 || info.dli_fname.is_null() {
        return 1;
    }
    // SAFETY: dladdr filled dli_fname with the NUL-terminated name of a loaded object,
    // which stays valid while that object is loaded (it is never unloaded here).
    let path = unsafe { CStr::from_ptr(info.dli_fname) };
    // SAFETY: the marker is a `u32` in the shim's read-only data (src/exports/marker.rs):
    // aligned, initialized, and never written.
    let version = unsafe { marker.cast::<u32>().read() };
    let mut out = io::stdout().lock();
    let written = writeln!(out, "{version}")
        .and_then(|()| out.write_all(path.to_bytes()))
        .and_then(|()| out.write_all(b"\n"));
    if written.is_ok() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_subcommand_is_the_hidden_one() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["gpuslice", PROBE_SUBCOMMAND]).unwrap();
        assert!(matches!(cli.command, crate::cli::Command::ShimProbe));
    }

    #[test]
    fn probe_output_gives_the_version_and_the_path() {
        assert_eq!(
            parse_probe(b"1\n/opt/gpuslice/lib/libgpuslice.so\n"),
            Some(ProbeReport {
                layout_version: 1,
                path: "/opt/gpuslice/lib/libgpuslice.so".into()
            })
        );
        for bad in [&b""[..], b"1\n", b"x\n/a.so\n", b"1\n\n"] {
            assert_eq!(parse_probe(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_file_that_is_not_elf_is_not_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libgpuslice.so");
        std::fs::write(&path, "not a library").unwrap();
        let err = identify(&path).unwrap_err();
        assert!(matches!(err, ShimError::NotLoadable { .. }), "{err}");
        assert!(
            err.to_string().contains("not an ELF shared object"),
            "{err}"
        );
    }

    #[test]
    fn a_library_that_is_not_the_shim_is_refused_naming_what_it_lacks() {
        // The C library this test runs with: a shared object of this machine that exports
        // dlsym but not the shim's marker.
        // SAFETY: a zeroed Dl_info is a valid place for dladdr to fill.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let getpid: unsafe extern "C" fn() -> libc::pid_t = libc::getpid;
        // SAFETY: the address of a function of a loaded library; `info` is a valid place.
        let found = unsafe { libc::dladdr(getpid as *const libc::c_void, &raw mut info) };
        assert_ne!(found, 0, "dladdr found no library for getpid");
        // SAFETY: dladdr filled dli_fname with a NUL-terminated path of a loaded library.
        let path = unsafe { CStr::from_ptr(info.dli_fname) };
        let libc_path = Path::new(OsStr::from_bytes(path.to_bytes()));
        let err = identify(libc_path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ShimError::NotTheShim { .. }), "{msg}");
        assert!(
            msg.contains(MARKER) && msg.contains("cuMemAlloc_v2"),
            "{msg}"
        );
        assert!(!msg.contains("dlsym"), "libc exports dlsym: {msg}");
    }
}
