//! The one error type of the ledger: every message names the file (or the value) that was
//! wrong and says what to do about it.

use std::io;
use std::path::{Path, PathBuf};

use crate::names::GpuUuid;

/// Everything that can go wrong when opening, reading or writing the ledger.
///
/// The messages are written for the person who reads them in a log: they name the file and
/// say what to do. The shim prints them and fails closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A system call on a ledger file or directory failed.
    #[error(
        "could not {action} {}: {source}; check that GPUSLICE_DIR points at the gpuslice ledger \
         and that this process may access it",
        .path.display()
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done, as a verb phrase ("open", "map", "lock a slot in").
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },

    /// A ledger file exists but does not have the layout this version of gpuslice expects.
    #[error(
        "{} is not a valid gpuslice {} file: {reason}; remove it or point GPUSLICE_DIR elsewhere",
        .path.display(),
        file_kind(.path)
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// A tenant name that the ledger cannot use as a directory name.
    #[error(
        "invalid tenant name {name:?}: {reason}; use 1 to 63 characters of A-Z a-z 0-9 . _ -, \
         starting and ending with a letter or a digit"
    )]
    InvalidTenantName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A string that is not a GPU UUID.
    #[error(
        "invalid GPU UUID {value:?}: expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx \
         (hex digits, as printed by `nvidia-smi -L`)"
    )]
    InvalidUuid {
        /// The string as given.
        value: String,
    },

    /// Every process slot of the tenant's usage file is held by a live process.
    #[error(
        "{}: all {max} process slots are held by live processes of this tenant; \
         each process that uses the GPU takes one, so end some of them and retry",
        .path.display()
    )]
    SlotsFull {
        /// The usage file.
        path: PathBuf,
        /// How many slots a usage file has ([`MAX_SLOTS`](crate::MAX_SLOTS)).
        max: usize,
    },

    /// The tenant's processes have already seen as many distinct GPUs as the table holds.
    #[error(
        "{}: the GPU table is full ({max} GPUs registered); remove the usage file while none \
         of the tenant's processes runs to start a fresh table",
        .path.display()
    )]
    GpuTableFull {
        /// The usage file.
        path: PathBuf,
        /// How many GPUs a usage file can track ([`MAX_GPUS`](crate::MAX_GPUS)).
        max: usize,
    },

    /// A quota lists more per-GPU limits than the quota file can hold.
    #[error(
        "{}: the quota lists limits for {count} GPUs but a quota file holds at most {max}; \
         put the common limits in the defaults",
        .path.display()
    )]
    TooManyGpuLimits {
        /// The quota file that was to be written.
        path: PathBuf,
        /// How many per-GPU entries were given.
        count: usize,
        /// How many fit ([`MAX_GPUS`](crate::MAX_GPUS)).
        max: usize,
    },

    /// A quota lists the same GPU twice.
    #[error(
        "{}: the quota lists limits for {uuid} twice; give each GPU one entry",
        .path.display()
    )]
    DuplicateGpuLimit {
        /// The quota file that was to be written.
        path: PathBuf,
        /// The GPU listed twice.
        uuid: GpuUuid,
    },

    /// A limit value that the quota file cannot represent.
    #[error(
        "{}: {what} = {value} is out of range; give 1 to 1000 permille, or leave it unset",
        .path.display()
    )]
    InvalidLimit {
        /// The quota file that was to be written.
        path: PathBuf,
        /// Which limit ("compute_share_permille", "compute_limit_permille").
        what: &'static str,
        /// The value given.
        value: u64,
    },

    /// The file at a ledger path is no longer the one this process has mapped (the tenant
    /// was removed and created again while the process ran).
    #[error(
        "{} was replaced while this process had it open (was the tenant removed and created \
         again?); restart the process",
        .path.display()
    )]
    Replaced {
        /// The usage file.
        path: PathBuf,
    },

    /// A lock of the tenant's lock file that is held for microseconds stayed held for
    /// seconds: something holds it (only the tenant's own processes should be able to).
    #[error(
        "{what} in {} stayed held for seconds (only the tenant's own processes should be able to \
         open that file: is the ledger directory mounted whole into a container by an old CDI \
         spec?); retry, or end what holds it",
        .path.display()
    )]
    LockHeld {
        /// The lock file.
        path: PathBuf,
        /// Which lock.
        what: &'static str,
    },
}

/// The kind of ledger file a path names, for messages: a file named `quota` or `usage`, or
/// one in the `locks` directory.
fn file_kind(path: &Path) -> &'static str {
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    match (path.file_name().and_then(|n| n.to_str()), parent) {
        (Some("quota"), _) => "quota",
        (Some("usage"), _) => "usage",
        (_, Some("locks")) => "lock",
        _ => "ledger",
    }
}

impl LedgerError {
    /// Shorthand for [`LedgerError::Io`].
    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> LedgerError {
        LedgerError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    /// Shorthand for [`LedgerError::Corrupt`].
    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> LedgerError {
        LedgerError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// True for an [`LedgerError::Io`] whose cause is that the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LedgerError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A file operation outside the ledger's own files that failed (a tenant's marker, a CDI
/// spec, an allocation record): what was being done, to which file, and what the operating
/// system said. The ledger's users share it rather than each declaring the same variant.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}: {source}", .path.display())]
pub struct FileError {
    /// What was being done (`create`, `write`, `remove`, ...).
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The operating system's error.
    pub source: io::Error,
}

impl FileError {
    /// A maker of the error for `action` on `path`, for `map_err`.
    pub fn on(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError + use<> {
        let path = path.to_path_buf();
        move |source| FileError {
            action,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod file_error_tests {
    use super::*;

    #[test]
    fn a_file_error_names_the_action_the_file_and_the_system_error() {
        let make = FileError::on("remove", Path::new("/var/run/cdi/x.json"));
        let e = make(io::Error::from(io::ErrorKind::PermissionDenied));
        let text = e.to_string();
        assert!(
            text.starts_with("could not remove /var/run/cdi/x.json: "),
            "{text}"
        );
        assert!(text.contains("denied"), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
