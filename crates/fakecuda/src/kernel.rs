//! What simulated kernels do. Kernels are known by name, and the only effect of running one
//! is the time it occupies its stream:
//!
//! - `gpuslice_spin(.u64 ns)` runs for `ns` nanoseconds;
//! - `gpuslice_noop()` and every other kernel run in zero time.
//!
//! `run` is the one place where a kernel turns into device time, so that hardware-like
//! time-slicing between processes can be added here later.

use std::time::{Duration, Instant};

use crate::error::{CuError, CuResult};

/// The kernel that runs for as many nanoseconds as its one `.u64` argument says.
pub const SPIN: &str = "gpuslice_spin";
/// The kernel that does nothing.
pub const NOOP: &str = "gpuslice_noop";

/// The behaviour of a kernel, chosen by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `gpuslice_spin`: busy for its argument's nanoseconds.
    Spin,
    /// Any other kernel (`gpuslice_noop` included): zero time.
    Instant,
}

impl Kernel {
    /// The behaviour of the kernel called `name`.
    pub fn from_name(name: &str) -> Kernel {
        if name == SPIN {
            Kernel::Spin
        } else {
            Kernel::Instant
        }
    }

    /// Whether the launch must pass a first `.u64` argument.
    pub fn needs_u64_argument(self) -> bool {
        self == Kernel::Spin
    }

    /// How long one launch runs, given its first `.u64` argument (if it has one).
    pub fn duration(self, first_u64: Option<u64>) -> CuResult<Duration> {
        match self {
            Kernel::Spin => first_u64
                .map(Duration::from_nanos)
                .ok_or(CuError::InvalidValue),
            Kernel::Instant => Ok(Duration::ZERO),
        }
    }
}

/// Runs a kernel that the stream could start at `start` (the later of its launch and the end
/// of the stream's previous work) for `duration`; returns when it ends, on the stream's clock.
///
/// Ends are computed, not measured, so that back-to-back kernels take exactly the sum of their
/// durations however late the thread wakes up.
pub fn run(start: Instant, duration: Duration) -> Instant {
    let end = start + duration;
    let now = Instant::now();
    if end > now {
        std::thread::sleep(end - now);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_takes_its_argument_and_everything_else_no_time() {
        assert_eq!(Kernel::from_name("gpuslice_spin"), Kernel::Spin);
        assert_eq!(Kernel::from_name("gpuslice_noop"), Kernel::Instant);
        assert_eq!(Kernel::from_name("matmul"), Kernel::Instant);
        assert_eq!(
            Kernel::Spin.duration(Some(5_000_000)),
            Ok(Duration::from_millis(5))
        );
        assert_eq!(Kernel::Spin.duration(None), Err(CuError::InvalidValue));
        assert_eq!(Kernel::Instant.duration(None), Ok(Duration::ZERO));
    }

    #[test]
    fn back_to_back_kernels_do_not_accumulate_wakeup_delay() {
        let t0 = Instant::now();
        let mut clock = t0;
        for _ in 0..10 {
            clock = run(clock, Duration::from_millis(2));
        }
        assert_eq!(clock - t0, Duration::from_millis(20));
        assert!(Instant::now() >= clock);
    }
}
