//! The node-wide clock the compute records are dated by: `CLOCK_MONOTONIC`, which every
//! process on the machine shares (containers included) and which reads without a system
//! call (the vDSO). The shim, the command and the test programs all date by it, so that
//! their stamps compare.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn it_counts_the_nanoseconds_instant_counts() {
        // Both read CLOCK_MONOTONIC: what passes on one has passed on the other (the
        // simulated GPU converts between the two).
        let (a, start) = (super::monotonic_ns(), Instant::now());
        while start.elapsed() < Duration::from_millis(1) {
            std::hint::spin_loop();
        }
        let passed = start.elapsed();
        let b = super::monotonic_ns();
        assert!(u128::from(b - a) >= passed.as_nanos(), "{a} {b} {passed:?}");
    }
}
