//! Diagnostics on stderr, one line each, prefixed `gpuslice[pid]:`.
//!
//! The level comes from `GPUSLICE_LOG` (default `warn`). Messages a workload can trigger
//! over and over (an allocation refused in a retry loop) go through [`RateLimit`], so a
//! training loop never floods its own log.

use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much the shim says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Nothing, not even configuration errors.
    Off = 0,
    /// Failures that change what the program sees.
    Error = 1,
    /// Refusals and anything surprising (the default).
    Warn = 2,
    /// Start-up facts: tenant, limits, ledger.
    Info = 3,
    /// Per-call decisions that are not on a hot path.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl Level {
    /// Parses a `GPUSLICE_LOG` value.
    pub fn parse(text: &str) -> Option<Level> {
        Some(match text {
            "off" => Level::Off,
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);

/// Sets the level for the rest of the process.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether messages at `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Prints one line if `level` is enabled. Use the macros instead.
pub fn write_line(level: Level, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format!("gpuslice[{}]: {}\n", std::process::id(), args);
    // A failed write to stderr has nowhere better to go.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Logs at a given level: `log!(Level::Info, "tenant {name}")`.
// Exported under a hidden name and re-exported here, so that both this crate and the shim
// name it `log::log` beside `Level` and `RateLimit`.
#[doc(hidden)]
#[macro_export]
macro_rules! __gpuslice_log {
    ($level:expr, $($arg:tt)*) => {
        $crate::log::write_line($level, format_args!($($arg)*))
    };
}
pub use crate::__gpuslice_log as log;

/// Lets a message through at most once per second; counts the ones held back.
#[derive(Debug)]
pub struct RateLimit {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limiter that has let nothing through yet.
    pub const fn new() -> RateLimit {
        RateLimit {
            last_second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a message may go out now, `n` being how many were held back since the
    /// last one; `None` when it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if now != last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_message_through_per_second() {
        let limit = RateLimit::new();
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        limit.last_second.store(1, Ordering::Relaxed);
        assert_eq!(limit.admit(), Some(2));
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("debug"), Some(Level::Debug));
        assert_eq!(Level::parse("DEBUG"), None);
        assert!(Level::Error < Level::Warn);
    }
}
