//! Child processes of the bench: descriptors placed at fixed numbers (the
//! UCSPI fds 6/7, a readiness fd), bounded waits, and no orphan left behind.

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running child; killed (SIGKILL) if still there when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        self.wait(grace).or_else(|| {
            let _ = self.child.kill();
            self.child.wait().ok()
        })
    }

    /// Wait for the child to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < end => {
                    // std has no timed wait; exit is not an event we can poll.
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawn `cmd`, with each `(fd, n)` of `fds` as descriptor `n` in the child.
pub fn spawn(name: &str, mut cmd: Command, fds: &[(&OwnedFd, RawFd)]) -> Result<Proc, String> {
    // Move every source above the targets first, so that placing one
    // never overwrites another source.
    let mut high = Vec::new();
    for (fd, n) in fds {
        let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(64))
            .map_err(|e| format!("unable to dup a descriptor for {name}: {e}"))?;
        // SAFETY: fcntl returned a fresh descriptor that we now own.
        high.push((unsafe { OwnedFd::from_raw_fd(raw) }, *n));
    }
    let pairs: Vec<(RawFd, RawFd)> = high.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    // SAFETY: the closure only calls dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for &(src, dst) in &pairs {
                if nix::libc::dup2(src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("unable to start {name}: {e}"))?;
    drop(high);
    Ok(Proc { child })
}

/// A command with stdin from /dev/null and stderr appended to `log`.
/// A password file as a user makes one: the password on its first line,
/// mode 0600 (sj-proxy warns about anything more open).
pub fn write_password(path: &Path, password: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes()))
        .map_err(|e| format!("unable to write {}: {e}", path.display()))
}

pub fn command(prog: &Path, log: &Path) -> Result<Command, String> {
    let mut cmd = Command::new(prog);
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("unable to open {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stderr(err);
    Ok(cmd)
}

/// Wait (bounded) for one readiness byte on `fd`.
pub fn wait_ready(fd: &OwnedFd, limit: Duration, what: &str) -> Result<(), String> {
    let pfd = nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN);
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut [pfd], nix::poll::PollTimeout::from(ms)) {
        Ok(1) => {}
        _ => return Err(format!("{what} did not become ready within {limit:?}")),
    }
    let mut b = [0u8; 8];
    match nix::unistd::read(fd, &mut b) {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(format!("{what} exited before it was ready")),
    }
}

/// A scratch directory, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch, String> {
        Scratch::under(std::env::temp_dir(), tag)
    }

    /// In memory (/dev/shm) where there is one: for measuring a program's
    /// own cost per file, which a journalling disk under a VM would bury
    /// (creating one file there took about 1 ms, from Python as from us).
    pub fn in_memory(tag: &str) -> Result<Scratch, String> {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Scratch::under(base, tag)
    }

    /// SJ_BENCH_TMP, when set, overrides `base`.
    fn under(base: std::path::PathBuf, tag: &str) -> Result<Scratch, String> {
        let base = std::env::var_os("SJ_BENCH_TMP")
            .map(std::path::PathBuf::from)
            .unwrap_or(base);
        let p = base.join(format!("sj-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        sj::fifo::make_dir(&p).map_err(|e| format!("unable to create {}: {e}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
