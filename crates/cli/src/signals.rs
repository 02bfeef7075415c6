//! Forwarding SIGINT, SIGTERM and SIGHUP from `gpuslice run` to its command.
//!
//! `gpuslice run` stays alive while its command runs (it must remove the tenant afterwards),
//! so a signal meant to stop the command, sent to `gpuslice` by a supervisor, `kill` or
//! `docker stop`, is passed on with kill(2) from the handler (async-signal-safe: an atomic
//! load and a system call, nothing else).
//!
//! A signal the kernel sent (`si_code == SI_KERNEL`) is not forwarded: that is how a
//! terminal delivers Ctrl-C and hang-ups, to the whole foreground process group, so the
//! command already has it, and a second copy would look like a second Ctrl-C (which many
//! programs take as "stop cleaning up and quit"). sudo relays signals by the same rule.
//!
//! The signals are blocked from before the tenant is entered until the command's PID is
//! known, so one that arrives in between is neither lost nor fatal to `gpuslice` (which
//! would leave the tenant behind): it stays pending and is forwarded once unblocked. The
//! command starts with the signal mask `gpuslice` had before ([`Forwarder::prepare`]); a
//! child inherits its parent's mask, and the standard library does not reset it.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

/// The signals that are forwarded.
pub const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The PID of the running command; 0 while there is none (before it starts, and once it has
/// exited, so that a signal never reaches a process that reused its PID).
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

/// The forwarding handlers, installed with the forwarded signals blocked. Created once per
/// process, before the tenant is entered.
#[derive(Debug)]
pub struct Forwarder {
    /// The signal mask before [`Forwarder::install`].
    previous_mask: libc::sigset_t,
}

/// The set of [`FORWARDED`] signals.
fn forwarded_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set it is given; sigaddset then only modifies it.
    // Both are given a valid pointer to a sigset_t owned by this frame.
    unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for sig in FORWARDED {
            if libc::sigaddset(set.as_mut_ptr(), sig) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set.assume_init())
    }
}

/// The handler: forwards the signal to the command, unless the kernel sent it.
extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t for the duration of the
    // handler; it is only read, and only when non-null.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let pid = COMMAND_PID.load(SeqCst);
    if !from_kernel && pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers. It sets errno on
        // failure (the command already exited); errno is saved and restored around it, as a
        // handler must not change it under the interrupted code.
        unsafe {
            let errno = *libc::__errno_location();
            libc::kill(pid, sig);
            *libc::__errno_location() = errno;
        }
    }
}

impl Forwarder {
    /// Blocks the forwarded signals and installs the forwarding handler for each.
    pub fn install() -> io::Result<Forwarder> {
        let set = forwarded_set()?;
        let mut previous_mask = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set` is an initialized signal set and `previous_mask` valid storage for
        // the old mask, which pthread_sigmask fills in on success.
        let rc =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, previous_mask.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: pthread_sigmask succeeded, so it wrote the previous mask.
        let previous_mask = unsafe { previous_mask.assume_init() };
        for sig in FORWARDED {
            // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags), which is
            // then filled in field by field.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = forward as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            // Handling one forwarded signal holds the others back (they queue, one each).
            action.sa_mask = set;
            // SAFETY: `action` is fully initialized, and `forward` has the SA_SIGINFO
            // signature and does only async-signal-safe work.
            if unsafe { libc::sigaction(sig, &action, ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Forwarder { previous_mask })
    }

    /// Makes `command` start with the signal mask of before [`Forwarder::install`], not with
    /// the forwarded signals blocked (a mask survives exec).
    pub fn prepare(&self, command: &mut Command) {
        let mask = self.previous_mask;
        let restore = move || {
            // SAFETY: `mask` is an initialized signal set owned by the closure.
            let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, ptr::null_mut()) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(rc))
            }
        };
        // SAFETY: `restore` runs in the forked child before exec, where only
        // async-signal-safe functions may be called: it calls pthread_sigmask (sigprocmask)
        // on a mask copied into it, and allocates nothing.
        unsafe { command.pre_exec(restore) };
    }

    /// Publishes the command's PID, unblocks the signals (any that came meanwhile are
    /// forwarded now), waits for the command to exit, and reaps it. The PID is withdrawn
    /// between exit and reaping, while it cannot be reused yet.
    pub fn wait(self, mut child: Child) -> io::Result<ExitStatus> {
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        COMMAND_PID.store(pid, SeqCst);
        self.unblock()?;
        let waited = wait_without_reaping(pid);
        COMMAND_PID.store(0, SeqCst);
        waited?;
        child.wait()
    }

    /// Restores the signal mask of before [`Forwarder::install`] (for when the command is
    /// never started).
    pub fn unblock(&self) -> io::Result<()> {
        // SAFETY: `previous_mask` is the initialized mask pthread_sigmask returned earlier.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous_mask, ptr::null_mut())
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }
}

/// Waits until process `pid` (a child) has exited, leaving it a zombie (`WNOWAIT`), so that
/// its PID stays taken until [`Child::wait`] reaps it.
fn wait_without_reaping(pid: i32) -> io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(io::Error::other)?;
    loop {
        // SAFETY: an all-zero siginfo_t is valid storage for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid storage owned by this frame; waitid writes only into it.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The exit code `gpuslice run` passes on for a command that ended with `status`: its own
/// exit code, or 128 + the signal that killed it (as shells report it).
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(u8::MAX),
        (None, Some(sig)) => u8::try_from((128 + sig) & 0xff).unwrap_or(u8::MAX),
        (None, None) => u8::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        // Killed by SIGSEGV with a core dump.
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGSEGV | 0x80)), 139);
    }
}
