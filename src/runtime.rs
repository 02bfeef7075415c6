//! The shim's one piece of global state: built on the first intercepted call, rebuilt in a
//! forked child.
//!
//! Nothing is given back at exit: the driver frees a process's memory (its context above
//! all) only as the process is torn down, after every `atexit` handler, so emptying the
//! process slot earlier would let the tenant's other processes take memory the GPU still
//! holds. The kernel drops the slot's lock when the process is really gone, and the next
//! reclaim gives its usage back.
//!
//! The fast path is one atomic load (`mode`). Initialization is an atomic state machine,
//! not a `Once`: it can be re-entered on the initializing thread (opening the driver runs
//! its constructors), which a `Once` would deadlock on; such a nested call passes through.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use crate::config::Config;
use crate::log::{self, Level, log};
use crate::shim::Shim;

const UNINITIALIZED: u8 = 0;
const INITIALIZING: u8 = 1;
const PASS_THROUGH: u8 = 2;
const ENFORCING: u8 = 3;
const FAILED: u8 = 4;

static PHASE: AtomicU8 = AtomicU8::new(UNINITIALIZED);
/// Set before `PHASE` becomes `ENFORCING`; never freed (a `Shim` is leaked on purpose: other
/// threads may hold references to it until the process ends).
static SHIM: AtomicPtr<Shim> = AtomicPtr::new(std::ptr::null_mut());
static HANDLERS_REGISTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static INITIALIZING_HERE: Cell<bool> = const { Cell::new(false) };
}

/// What the shim does with an intercepted call.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// No gpuslice settings: call the real function, change nothing.
    PassThrough,
    /// Enforce the tenant's quota.
    Enforcing(&'static Shim),
    /// The settings or the ledger were unusable: fail closed.
    Failed,
}

/// The shim's mode, initializing on first use.
#[inline]
pub fn mode() -> Mode {
    match PHASE.load(Ordering::Acquire) {
        ENFORCING => enforcing(),
        PASS_THROUGH => Mode::PassThrough,
        FAILED => Mode::Failed,
        _ => initialize(),
    }
}

fn enforcing() -> Mode {
    let shim = SHIM.load(Ordering::Acquire);
    if shim.is_null() {
        return Mode::Failed;
    }
    // SAFETY: `SHIM` is published before `PHASE` says ENFORCING and is never freed.
    Mode::Enforcing(unsafe { &*shim })
}

/// The shim's mode without initializing it (for exit handlers).
pub fn current_mode() -> Mode {
    match PHASE.load(Ordering::Acquire) {
        ENFORCING => enforcing(),
        PASS_THROUGH => Mode::PassThrough,
        _ => Mode::Failed,
    }
}

#[cold]
#[inline(never)]
fn initialize() -> Mode {
    if INITIALIZING_HERE.get() {
        return Mode::PassThrough;
    }
    match PHASE.compare_exchange(
        UNINITIALIZED,
        INITIALIZING,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            INITIALIZING_HERE.set(true);
            let phase = build();
            INITIALIZING_HERE.set(false);
            PHASE.store(phase, Ordering::Release);
        }
        Err(_) => {
            while PHASE.load(Ordering::Acquire) == INITIALIZING {
                std::thread::yield_now();
            }
        }
    }
    match PHASE.load(Ordering::Acquire) {
        ENFORCING => enforcing(),
        PASS_THROUGH => Mode::PassThrough,
        // UNINITIALIZED again only after a fork raced this; failing closed is safe.
        _ => Mode::Failed,
    }
}

fn build() -> u8 {
    let config = match Config::from_process_env() {
        Ok(config) => config,
        Err(error) => {
            log!(Level::Error, "{error}; CUDA initialization will fail");
            return FAILED;
        }
    };
    log::set_level(config.log);
    let Some(settings) = config.tenant else {
        log!(
            Level::Debug,
            "no GPUSLICE_TENANT set: passing every call through"
        );
        return PASS_THROUGH;
    };
    register_process_handlers();
    match Shim::open(settings) {
        Ok(shim) => {
            log!(Level::Info, "{}", shim.describe());
            SHIM.store(Box::into_raw(Box::new(shim)), Ordering::Release);
            ENFORCING
        }
        Err(error) => {
            log!(Level::Error, "{error}; CUDA initialization will fail");
            FAILED
        }
    }
}

fn register_process_handlers() {
    if HANDLERS_REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handler is an `extern "C"` function that lives as long as the process.
    if unsafe { libc::pthread_atfork(None, None, Some(child_after_fork)) } != 0 {
        log!(
            Level::Warn,
            "could not register a fork handler; a forked child may not reinitialize"
        );
    }
}

/// In a forked child: the parent's state stays the parent's. Leak it (its locks may be
/// held by threads that do not exist here) with the parent's process slot, whose lock the
/// child keeps holding until it exits or execs (as it keeps the parent's device memory),
/// forget what the launch path and the NVML probe cached for the parent, and start over on
/// the child's first CUDA call.
extern "C" fn child_after_fork() {
    let reset = without_unwinding("the fork handler", || {
        let old = SHIM.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: never freed; the child has a single thread, so nothing else uses it.
            unsafe { &*old }.abandon_after_fork();
        }
        crate::hooks::forget_after_fork();
    });
    // Half reset, the child's CUDA calls are refused rather than let through unlimited.
    PHASE.store(
        if reset { UNINITIALIZED } else { FAILED },
        Ordering::Release,
    );
}

/// Runs a process handler (fork, exit) so that a panic in it never unwinds into C, which
/// would abort the program: as every export does, it is caught and said. Whether it ran to
/// its end.
pub(crate) fn without_unwinding(what: &str, handler: impl FnOnce()) -> bool {
    let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)).is_ok();
    if !finished {
        log!(Level::Error, "internal error in {what}");
    }
    finished
}
