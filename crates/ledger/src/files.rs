//! Opening, creating and validating ledger files and directories (safe code over `std::fs`;
//! `std` opens every file with `O_CLOEXEC`).

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LedgerError;
use crate::layout::{Geometry, HEADER_SIZE};

/// Mode of ledger directories.
pub(crate) const DIR_MODE: u32 = 0o755;
/// Mode of ledger files: the tenant's processes write their usage file through a read-write
/// bind mount; everyone else reads.
pub(crate) const FILE_MODE: u32 = 0o644;

/// How a ledger file is opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    ReadOnly,
    ReadWrite,
}

/// Opens an existing ledger file; `None` when it (or its directory) does not exist.
///
/// `O_NOFOLLOW`: a ledger file is never a symlink, and following one planted in a tenant's
/// directory would let a writer be pointed at another file. `O_NONBLOCK`: opening a FIFO
/// planted in its place must not hang an observer (it is then refused as not a regular file).
pub(crate) fn open_existing(path: &Path, access: Access) -> Result<Option<File>, LedgerError> {
    let result = OpenOptions::new()
        .read(true)
        .write(access == Access::ReadWrite)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    match result {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(LedgerError::corrupt(
            path,
            "it is a symbolic link; ledger files are never links",
        )),
        Err(e) => Err(LedgerError::io(path, "open", e)),
    }
}

/// Checks that `file` (opened from `path`) is a regular file of `geometry`'s kind, reading its
/// header with `pread` (never through a mapping, so a short file cannot fault). Returns its
/// metadata.
pub(crate) fn validate(
    file: &File,
    path: &Path,
    geometry: &Geometry,
) -> Result<fs::Metadata, LedgerError> {
    let meta = file
        .metadata()
        .map_err(|e| LedgerError::io(path, "inspect", e))?;
    if !meta.file_type().is_file() {
        return Err(LedgerError::corrupt(path, "it is not a regular file"));
    }
    let mut header = [0u8; HEADER_SIZE];
    let got = read_at_most(file, &mut header, 0).map_err(|e| LedgerError::io(path, "read", e))?;
    let len = meta.len();
    // A file that shrank between fstat and read is as truncated as one that was short.
    let seen_len = if got < HEADER_SIZE {
        len.min(got as u64)
    } else {
        len
    };
    geometry.validate(path, &header, seen_len)?;
    Ok(meta)
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns how much was read.
pub(crate) fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..) {
        if rest.is_empty() {
            break;
        }
        match file.read_at(rest, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Makes sure `path` is a directory, creating it (and missing parents) if needed. A directory
/// this call creates gets mode 0755 whatever the umask, so other tenants can read it. An
/// existing one is left alone, which also keeps this working on a read-only mount.
pub(crate) fn ensure_dir(path: &Path) -> Result<(), LedgerError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(LedgerError::io(
                path,
                "use as a directory",
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LedgerError::io(path, "inspect", e)),
    }
    match DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
    {
        Ok(()) => fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
            .map_err(|e| LedgerError::io(path, "set the mode of", e)),
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(LedgerError::io(path, "create", e)),
    }
}

/// A new file under a unique temporary name beside where it will be published; removed on
/// drop unless it was published.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

impl TempFile {
    /// Creates `dir/.<stem>.tmp-<pid>-<n>` with `mode`, `len` bytes of zeros.
    pub(crate) fn create(
        dir: &Path,
        stem: &str,
        len: u64,
        mode: u32,
    ) -> Result<TempFile, LedgerError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{stem}.tmp-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| LedgerError::io(&path, "create", e))?;
        let temp = TempFile { path, file };
        // The umask may have taken bits away (readers of a 0644 file need them).
        temp.file
            .set_permissions(Permissions::from_mode(mode))
            .map_err(|e| LedgerError::io(&temp.path, "set the mode of", e))?;
        // Every page allocated now: a full filesystem is an error here, never a SIGBUS
        // later in a process writing through the mapping.
        crate::sys::allocate(std::os::fd::AsFd::as_fd(&temp.file), len)
            .map_err(|e| LedgerError::io(&temp.path, "allocate", e))?;
        Ok(temp)
    }

    /// Publishes the file at `target` unless something is already there (a hard link never
    /// replaces an existing name, so a file another process published first wins). Returns
    /// whether this call published it. The temporary name is removed either way.
    pub(crate) fn publish_no_clobber(self, target: &Path) -> Result<bool, LedgerError> {
        match fs::hard_link(&self.path, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(LedgerError::io(target, "create", e)),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The (device, inode) pair of an open file, to tell whether two opens reached the same file.
pub(crate) fn identity(meta: &fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}
