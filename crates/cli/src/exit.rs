//! Exit codes, chosen on purpose, and the failure type that carries one.
//!
//! They follow the convention of programs that run another program (`env`, `nice`,
//! `timeout`, `docker run`): the command's own status is passed through, so gpuslice's own
//! failures use codes a command rarely uses for itself.

/// Everything went well (for `run`: the command exited 0).
pub const OK: u8 = 0;
/// `doctor`: at least one check failed; `tenant delete` and `tenant create`: the tenant is in
/// use.
pub const PROBLEMS: u8 = 1;
/// A usage or configuration error: a bad flag or value, no usable ledger directory, no shim,
/// `--memory` above the quota of the tenant being joined. Also what clap exits with.
pub const USAGE: u8 = 2;
/// gpuslice itself failed: for `run`, before it could start the command (a corrupt ledger
/// file, a failed system call); for `status`, only when its output cannot be written.
pub const FAILED: u8 = 125;
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// Why gpuslice stops, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub status: u8,
    /// What went wrong, for the one line printed to stderr.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure with exit code `status`.
    pub fn new(status: u8, error: anyhow::Error) -> Failure {
        Failure { status, error }
    }
}

/// Classifies an error by the exit code it should end gpuslice with.
pub trait ResultExt<T> {
    /// A usage or configuration error ([`USAGE`]).
    fn usage(self) -> Result<T, Failure>;
    /// gpuslice failed ([`FAILED`]).
    fn failed(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn usage(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(USAGE, e.into()))
    }

    fn failed(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(FAILED, e.into()))
    }
}
