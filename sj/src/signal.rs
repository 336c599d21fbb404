//! Signals, installed once per process: each handler only sets a flag and
//! writes a byte into one self-pipe, whose read end the program's loop
//! puts in its poll set (`fd`) so a signal wakes it however long it
//! waits; `drain` empties the pipe and tells what arrived.
//!
//! One fact, one flag: `stopping` is true once any of the program's stop
//! signals (SIGTERM, SIGINT, and SIGHUP for sj-c2s) arrived, for the loop
//! and for anything that waits outside it (sj-proxy's negotiation).

use nix::sys::signal::Signal;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static STOP: AtomicBool = AtomicBool::new(false);
static CHILD: AtomicBool = AtomicBool::new(false);
/// The read end of the self-pipe, once installed.
static PIPE: OnceLock<OwnedFd> = OnceLock::new();

/// What arrived since the last `drain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrived {
    /// A stop signal arrived (now or before: the flag stays set).
    pub stop: bool,
    /// SIGCHLD: a child may have exited (reap them all).
    pub child: bool,
}

/// The signals SIGTERM and SIGINT: stop.
pub const STOP_SIGNALS: &[Signal] = &[Signal::SIGTERM, Signal::SIGINT];

/// Install the handlers: every signal of `stop` sets the stop flag, and
/// SIGCHLD, if `children`, is told by `drain`. Once per process: a second
/// call is an error (two sets of handlers would mean two truths).
pub fn install(stop: &[Signal], children: bool) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    if PIPE.set(rd).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "signal handlers installed twice",
        ));
    }
    let on = |sig: Signal, flag: &'static AtomicBool| -> io::Result<()> {
        // The flag first: whoever wakes on the byte finds it set.
        signal_hook::flag::register(sig as i32, flag)?;
        signal_hook::low_level::pipe::register(sig as i32, wr.try_clone()?)?;
        Ok(())
    };
    for &sig in stop {
        on(sig, &STOP)?;
    }
    if children {
        on(Signal::SIGCHLD, &CHILD)?;
    }
    Ok(())
}

/// The self-pipe's read end, to wait on; `None` before `install`.
pub fn fd() -> Option<BorrowedFd<'static>> {
    PIPE.get().map(|p| p.as_fd())
}

/// Empty the self-pipe; what arrived since the last call.
pub fn drain() -> Arrived {
    if let Some(p) = PIPE.get() {
        let mut b = [0u8; 64];
        while matches!(nix::unistd::read(p, &mut b), Ok(n) if n > 0) {}
    }
    Arrived {
        stop: stopping(),
        child: CHILD.swap(false, Ordering::SeqCst),
    }
}

/// Has a stop signal arrived?
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::{wait_one, Interest};
    use std::time::{Duration, Instant};

    /// The only test that installs: handlers are per process.
    #[test]
    fn stop_and_child_wake_the_pipe_once_installed() {
        assert!(fd().is_none());
        install(&[Signal::SIGUSR2], true).expect("install");
        assert!(install(&[Signal::SIGUSR2], true).is_err(), "once only");
        let fd = fd().expect("installed");
        assert_eq!(drain(), Arrived::default());

        nix::sys::signal::raise(Signal::SIGUSR2).expect("raise");
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        assert!(wait_one(fd, Interest::Read, deadline)
            .expect("poll")
            .is_some_and(|r| r.readable()));
        assert!(stopping());
        assert_eq!(
            drain(),
            Arrived {
                stop: true,
                child: false
            }
        );

        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        child.wait().expect("wait");
        assert!(wait_one(fd, Interest::Read, deadline)
            .expect("poll")
            .is_some());
        let a = drain();
        assert!(a.child && a.stop);
    }
}
