//! Sleeping on a 32-bit word until it changes, and waking its sleepers: Linux futexes, for
//! the shim's launch gates (one process) and the simulated GPU's state file (every process
//! that maps it).

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Who may sleep on the word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Threads of this process only (the cheaper private futex).
    Process,
    /// Every process that maps the word (a shared mapping of a file).
    Shared,
}

impl Scope {
    fn op(self, op: libc::c_int) -> libc::c_int {
        match self {
            Scope::Process => op | libc::FUTEX_PRIVATE_FLAG,
            Scope::Shared => op,
        }
    }
}

/// Sleeps while `word` is `expected`, for at most `timeout`: `false` if the timeout ran
/// out, `true` if the wait ended otherwise (the word was not or no longer `expected`, a
/// wake, a signal). Callers look at the word again either way.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration, scope: Scope) -> bool {
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: `word` is a live, aligned u32 for the duration of the call (in a shared
    // mapping that outlives it, for `Scope::Shared`); FUTEX_WAIT only reads it and sleeps
    // at most the relative timeout, whose timespec outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            scope.op(libc::FUTEX_WAIT),
            expected,
            &raw const timeout,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ETIMEDOUT)
}

/// Wakes every sleeper on `word`.
pub fn wake_all(word: &AtomicU32, scope: Scope) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE reads no memory but the word and
    // ignores the other arguments.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            scope.op(libc::FUTEX_WAKE),
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn a_wait_on_a_word_that_changed_returns_at_once_and_says_it_did_not_time_out() {
        let word = AtomicU32::new(1);
        // Not 0 any more: the kernel refuses to sleep (EAGAIN), which is not a timeout.
        assert!(wait(&word, 0, Duration::from_secs(60), Scope::Process));
        assert!(wait(&word, 0, Duration::from_secs(60), Scope::Shared));
    }

    #[test]
    fn a_wait_nobody_ends_says_it_timed_out() {
        let word = AtomicU32::new(0);
        assert!(!wait(&word, 0, Duration::from_millis(1), Scope::Process));
    }

    #[test]
    fn a_wake_ends_the_sleep_of_a_thread_waiting_on_the_word() {
        for scope in [Scope::Process, Scope::Shared] {
            let word = Arc::new(AtomicU32::new(0));
            let sleeper = {
                let word = Arc::clone(&word);
                std::thread::spawn(move || {
                    // Loops until the word changes: a wake before the sleep began is caught
                    // by the value, not by timing.
                    while word.load(SeqCst) == 0 {
                        wait(&word, 0, Duration::from_secs(60), scope);
                    }
                })
            };
            word.store(1, SeqCst);
            wake_all(&word, scope);
            sleeper.join().unwrap();
        }
    }
}
