//! One owner per account directory: `DIR/lock`.
//!
//! sj-proxy opens `DIR/lock` (close-on-exec, so no child inherits it),
//! takes an exclusive `flock(2)` on it for its whole life and writes its
//! pid into it. The kernel drops the lock when the process ends, however
//! it ends (SIGKILL included), so a restart never waits on a stale lock
//! and a reader can tell a live owner from a dead one by probing the lock
//! (`owner`) rather than trusting what the owner last wrote.

use crate::account::Dir;
use crate::exit::Fatal;
use nix::errno::Errno;
use nix::fcntl::{open, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long `acquire` keeps trying a lock that is taken: a reader's probe
/// holds a shared lock for a few microseconds, which must not make a
/// starting sj-proxy give up.
const PROBE_GRACE: Duration = Duration::from_millis(500);

/// The lock of an account directory, held until dropped (or the process
/// ends).
pub struct Lock {
    _fd: Flock<OwnedFd>,
}

/// Who owns a directory, as the lock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The lock is held: that process (its pid as it wrote it) runs DIR.
    Alive(Option<i32>),
    /// The lock file is there and free: its last owner is gone.
    Gone(Option<i32>),
    /// No lock file: no sj-proxy of this version has run here.
    Never,
}

impl Owner {
    pub fn is_alive(self) -> bool {
        matches!(self, Owner::Alive(_))
    }
}

fn open_lock(dir: &Dir, flags: OFlag) -> nix::Result<OwnedFd> {
    open(
        &dir.lock(),
        flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY,
        Mode::from_bits_truncate(0o600),
    )
}

/// The pid written in DIR/lock, if any.
fn written_pid(dir: &Dir) -> Option<i32> {
    crate::fifo::read_text(&dir.lock(), 4096)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
}

/// The one error for a directory someone else runs (exit 111: the other
/// owner may stop).
fn taken(dir: &Dir, pid: Option<i32>) -> Fatal {
    let pid = pid.map_or_else(|| "?".to_string(), |p| p.to_string());
    Fatal::temporary(format!(
        "unable to lock {}: another sj-proxy (pid {pid}) runs it",
        dir.display()
    ))
}

/// Take DIR's lock for this process and write our pid into it. When another
/// process holds it: exit 111 with a line naming that process.
pub fn acquire(dir: &Dir) -> Result<Lock, Fatal> {
    let what = || format!("lock {}", dir.display());
    let mut fd = open_lock(dir, OFlag::O_RDWR | OFlag::O_CREAT)
        .map_err(|e| Fatal::io(format!("open {}", dir.lock().display()), &e.into()))?;
    let give_up = Instant::now() + PROBE_GRACE;
    let lock = loop {
        match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < give_up => {
                fd = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => return Err(taken(dir, written_pid(dir))),
            Err((_, e)) => return Err(Fatal::io(what(), &e.into())),
        }
    };
    let pid = format!("{}\n", std::process::id());
    nix::unistd::ftruncate(&*lock, 0).map_err(|e| Fatal::io(what(), &e.into()))?;
    nix::sys::uio::pwrite(&*lock, pid.as_bytes(), 0).map_err(|e| Fatal::io(what(), &e.into()))?;
    Ok(Lock { _fd: lock })
}

/// Who owns DIR. Probes the lock with a shared non-blocking `flock`, which
/// fails while an owner holds it and, when it succeeds, is let go at once;
/// the owner is never disturbed.
pub fn owner(dir: &Dir) -> Owner {
    let fd = match open_lock(dir, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Owner::Never,
        // Unreadable or not a file: nothing can be told; say what was written.
        Err(_) => return Owner::Gone(written_pid(dir)),
    };
    let pid = written_pid(dir);
    match Flock::lock(fd, FlockArg::LockSharedNonblock) {
        Ok(probe) => {
            drop(probe);
            Owner::Gone(pid)
        }
        Err((_, Errno::EWOULDBLOCK)) => Owner::Alive(pid),
        Err(_) => Owner::Gone(pid),
    }
}

/// For a daemon at startup (messaged, presenced, iqd, mirrord): refuse to run
/// against a DIR that a live sj-proxy owns, unless that sj-proxy is our
/// parent (it started us). Exit 111 with the same line as `acquire`.
pub fn check_daemon(dir: &Dir) -> Result<(), Fatal> {
    match owner(dir) {
        Owner::Alive(Some(pid)) if pid == nix::unistd::getppid().as_raw() => Ok(()),
        Owner::Alive(pid) => Err(taken(dir, pid)),
        Owner::Gone(_) | Owner::Never => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sj-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::fifo::make_dir(&d).expect("mkdir");
        Dir::new(d)
    }

    #[test]
    fn lock_owner_probe_and_release() {
        let d = tmpdir("a");
        assert_eq!(owner(&d), Owner::Never);
        let me = i32::try_from(std::process::id()).ok();
        let l = acquire(&d).expect("lock");
        assert_eq!(owner(&d), Owner::Alive(me));
        // The probe did not take it from us: a second owner still fails.
        let e = acquire(&d).err().expect("taken");
        assert_eq!(e.code, crate::exit::TEMPORARY);
        assert_eq!(
            e.msg,
            format!(
                "unable to lock {}: another sj-proxy (pid {}) runs it",
                d.display(),
                std::process::id()
            )
        );
        drop(l);
        assert_eq!(owner(&d), Owner::Gone(me));
        let again = acquire(&d).expect("free again");
        drop(again);
        std::fs::remove_dir_all(d.path()).ok();
    }

    #[test]
    fn lock_refuses_a_symlink() {
        let d = tmpdir("link");
        std::os::unix::fs::symlink("/dev/null", d.lock()).expect("symlink");
        assert!(acquire(&d).is_err());
        std::fs::remove_dir_all(d.path()).ok();
    }
}
