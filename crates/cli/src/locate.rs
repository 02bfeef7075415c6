//! Where things are: the ledger directory and the shim library.
//!
//! Both follow the same order: the flag, then the environment, then places found on their
//! own. A place that was named explicitly (flag or variable) is used or refused, never
//! silently skipped for another.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The system-wide ledger directory (the shim's default, `GPUSLICE_DEFAULT_DIR`).
pub const SYSTEM_LEDGER_DIR: &str = gpuslice_ledger::DEFAULT_DIR;
/// The variable that names the ledger directory (the shim reads it too).
pub const ENV_DIR: &str = "GPUSLICE_DIR";
/// The variable that names the shim library (read by this command only).
pub const ENV_SHIM: &str = "GPUSLICE_SHIM";
/// The shim's file name.
pub const SHIM_NAME: &str = "libgpuslice.so";
/// The variable that names the simulated GPU library (read by `gpuslice demo` only).
pub const ENV_FAKECUDA: &str = "GPUSLICE_FAKECUDA";
/// The simulated GPU's file name (`crates/fakecuda`).
pub const FAKECUDA_NAME: &str = "libfakecuda.so";

/// A ledger directory or shim that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No usable default ledger directory.
    #[error(
        "no ledger directory: {system} is not writable and XDG_RUNTIME_DIR is not set; \
         pass --dir DIR (or set GPUSLICE_DIR) to choose where the ledger lives"
    )]
    NoLedgerDir {
        /// The system directory that was tried.
        system: String,
    },
    /// The path could not be made absolute (the current directory is gone).
    #[error("cannot make {} absolute: {source}", .path.display())]
    Absolute {
        /// The path as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An explicitly named shim that is not a file.
    #[error("the shim {} (from {origin}) is not a file; give the path of {SHIM_NAME}",
            .path.display())]
    ShimMissing {
        /// The path.
        path: PathBuf,
        /// Where the path came from: `--shim` or `GPUSLICE_SHIM`.
        origin: &'static str,
    },
    /// No shim anywhere.
    #[error("cannot find {SHIM_NAME}: looked in {}; pass --shim PATH or set GPUSLICE_SHIM",
            .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ShimNotFound {
        /// The places looked at.
        searched: Vec<PathBuf>,
    },
    /// A simulated GPU named by `GPUSLICE_FAKECUDA` that is not a file.
    #[error("the simulated GPU {} (from {ENV_FAKECUDA}) is not a file; give the path of \
             {FAKECUDA_NAME}", .path.display())]
    FakeCudaMissing {
        /// The path.
        path: PathBuf,
    },
    /// No simulated GPU anywhere.
    #[error("no GPU here and no simulated GPU: cannot find {FAKECUDA_NAME} in {}; build it \
             with `cargo build --release --workspace` or set {ENV_FAKECUDA} to its path",
            .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    FakeCudaNotFound {
        /// The places looked at.
        searched: Vec<PathBuf>,
    },
    /// A shim path that `LD_PRELOAD` cannot carry.
    #[error("the shim path {} contains a space or ':', which LD_PRELOAD uses to separate \
             libraries; move or link the shim to a path without them", .path.display())]
    ShimPathUnusable {
        /// The path.
        path: PathBuf,
    },
}

/// The ledger directory, as an absolute path: `--dir`, else `$GPUSLICE_DIR`, else
/// [`SYSTEM_LEDGER_DIR`] if this process can write or create it, else
/// `$XDG_RUNTIME_DIR/gpuslice`. Nothing is created here.
pub fn ledger_dir(flag: Option<&Path>) -> Result<PathBuf, LocateError> {
    if let Some(dir) = flag {
        return absolute(dir);
    }
    if let Some(dir) = non_empty_var(ENV_DIR) {
        return absolute(Path::new(&dir));
    }
    default_ledger_dir(
        Path::new(SYSTEM_LEDGER_DIR),
        non_empty_var("XDG_RUNTIME_DIR"),
    )
}

/// The default ledger directory: `system` if usable, else `<xdg>/gpuslice`.
fn default_ledger_dir(system: &Path, xdg: Option<OsString>) -> Result<PathBuf, LocateError> {
    if writable_or_creatable(system) {
        return Ok(system.to_path_buf());
    }
    match xdg {
        Some(xdg) => absolute(&Path::new(&xdg).join("gpuslice")),
        None => Err(LocateError::NoLedgerDir {
            system: system.display().to_string(),
        }),
    }
}

/// Whether `dir` is a directory this process may write, or could be created (its parent is).
fn writable_or_creatable(dir: &Path) -> bool {
    match std::fs::metadata(dir) {
        Ok(meta) => meta.is_dir() && may_write(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => dir
            .parent()
            .is_some_and(|parent| parent.is_dir() && may_write(parent)),
        Err(_) => false,
    }
}

/// `access(dir, W_OK | X_OK)`: whether this process may create entries in `dir`.
fn may_write(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; access(2)
    // only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// The shim library, as an absolute path: `--shim`, else `$GPUSLICE_SHIM`, else
/// `libgpuslice.so` next to this executable, else `../lib/libgpuslice.so` relative to it.
pub fn shim(flag: Option<&Path>) -> Result<PathBuf, LocateError> {
    let explicit = match (flag, non_empty_var(ENV_SHIM)) {
        (Some(path), _) => Some((path.to_path_buf(), "--shim")),
        (None, Some(path)) => Some((PathBuf::from(path), ENV_SHIM)),
        (None, None) => None,
    };
    let path = match explicit {
        Some((path, origin)) => {
            if !path.is_file() {
                return Err(LocateError::ShimMissing { path, origin });
            }
            absolute(&path)?
        }
        None => {
            let searched = installed_shim_candidates();
            searched
                .iter()
                .find(|p| p.is_file())
                .cloned()
                .ok_or(LocateError::ShimNotFound { searched })?
        }
    };
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| b" :".contains(b))
    {
        return Err(LocateError::ShimPathUnusable { path });
    }
    Ok(path)
}

/// Where an installed shim sits relative to this executable.
fn installed_shim_candidates() -> Vec<PathBuf> {
    beside_this_program(SHIM_NAME)
}

/// The simulated GPU library (`libfakecuda.so`), as an absolute path: `$GPUSLICE_FAKECUDA`,
/// else next to this executable, else in `../lib` or `deps/` relative to it (where cargo
/// leaves it when it was built only as a dependency).
pub fn fakecuda() -> Result<PathBuf, LocateError> {
    if let Some(path) = non_empty_var(ENV_FAKECUDA) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(LocateError::FakeCudaMissing { path });
        }
        return absolute(&path);
    }
    let mut searched = beside_this_program(FAKECUDA_NAME);
    if let Some(bin_dir) = searched.first().and_then(|p| p.parent()) {
        let deps = bin_dir.join("deps").join(FAKECUDA_NAME);
        searched.push(deps);
    }
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(LocateError::FakeCudaNotFound { searched })
}

/// `name` next to this executable, then in `../lib` relative to it.
fn beside_this_program(name: &str) -> Vec<PathBuf> {
    let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    vec![
        bin_dir.join(name),
        bin_dir.join("..").join("lib").join(name),
    ]
}

/// `LD_PRELOAD` for the command: the shim first, then whatever was preloaded before (without
/// the shim a second time). `ld.so` separates entries with spaces or colons.
pub fn ld_preload(shim: &Path, existing: Option<&OsStr>) -> OsString {
    let shim = shim.as_os_str().as_bytes();
    let mut out = shim.to_vec();
    for entry in existing
        .map(OsStrExt::as_bytes)
        .unwrap_or_default()
        .split(|b| b" :".contains(b))
        .filter(|e| !e.is_empty() && *e != shim)
    {
        out.push(b':');
        out.extend_from_slice(entry);
    }
    OsString::from(std::ffi::OsStr::from_bytes(&out))
}

/// An environment variable, unless unset or empty.
fn non_empty_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `path` made absolute against the current directory (symbolic links are kept).
fn absolute(path: &Path) -> Result<PathBuf, LocateError> {
    std::path::absolute(path).map_err(|source| LocateError::Absolute {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ledger_dir_is_preferred_when_it_can_be_created() {
        let tmp = tempfile::tempdir().unwrap();
        let system = tmp.path().join("gpuslice");
        let xdg = Some(OsString::from("/xdg"));
        assert_eq!(default_ledger_dir(&system, xdg.clone()).unwrap(), system);
        std::fs::create_dir(&system).unwrap();
        assert_eq!(default_ledger_dir(&system, xdg).unwrap(), system);
    }

    #[test]
    fn ledger_dir_falls_back_to_xdg_runtime_dir() {
        let tmp = tempfile::tempdir().unwrap();
        // A path under a regular file can never be created, not even by root.
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let system = file.join("gpuslice");
        assert_eq!(
            default_ledger_dir(&system, Some(OsString::from("/run/user/1000"))).unwrap(),
            Path::new("/run/user/1000/gpuslice")
        );
        let err = default_ledger_dir(&system, None).unwrap_err().to_string();
        assert!(err.contains("--dir"), "{err}");
        assert!(err.contains("XDG_RUNTIME_DIR"), "{err}");
    }

    #[test]
    fn ld_preload_puts_the_shim_first_and_keeps_the_rest_once() {
        let shim = Path::new("/opt/gpuslice/lib/libgpuslice.so");
        assert_eq!(ld_preload(shim, None), shim.as_os_str());
        assert_eq!(
            ld_preload(
                shim,
                Some(OsStr::new("/a.so /b.so:/opt/gpuslice/lib/libgpuslice.so"))
            ),
            OsStr::new("/opt/gpuslice/lib/libgpuslice.so:/a.so:/b.so")
        );
        assert_eq!(ld_preload(shim, Some(OsStr::new(""))), shim.as_os_str());
    }
}
