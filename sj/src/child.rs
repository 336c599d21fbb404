//! Child daemons on a pipe pair, restarted with backoff when they die.
//!
//! The parent writes records to the child's stdin and reads records from its
//! stdout; stderr is inherited so every program logs to the same place.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where to find a sibling program: next to the running executable first
/// (so a build tree or an install prefix works as a unit), then `$PATH`.
pub fn locate(program: &str) -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join(program);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(program)
}

/// One supervised child.
pub struct Child {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub pid: Option<i32>,
    /// Write end of the child's stdin.
    pub stdin: Option<OwnedFd>,
    /// Read end of the child's stdout.
    pub stdout: Option<OwnedFd>,
    started: Instant,
    backoff: Duration,
    /// When to try again after a death.
    pub restart_at: Option<Instant>,
    pub restarts: u32,
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: its next death restarts fast.
const HEALTHY: Duration = Duration::from_secs(60);

impl Child {
    pub fn new(name: &str, program: &Path, args: Vec<String>, env: Vec<(String, String)>) -> Self {
        Child {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env,
            pid: None,
            stdin: None,
            stdout: None,
            started: Instant::now(),
            backoff: BACKOFF_MIN,
            restart_at: None,
            restarts: 0,
        }
    }

    /// Start the child; both pipe ends we keep are non-blocking and close-on-exec.
    pub fn spawn(&mut self) -> io::Result<()> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdin: OwnedFd = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin pipe"))?
            .into();
        let stdout: OwnedFd = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?
            .into();
        crate::io::set_nonblocking(&stdin)?;
        crate::io::set_nonblocking(&stdout)?;
        self.pid = i32::try_from(child.id()).ok();
        // The std handle is dropped; reaping is done with waitpid by pid.
        drop(child);
        self.stdin = Some(stdin);
        self.stdout = Some(stdout);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    /// Record the child's death and schedule its restart with backoff.
    pub fn died(&mut self) {
        self.pid = None;
        self.stdin = None;
        self.stdout = None;
        if self.started.elapsed() >= HEALTHY {
            self.backoff = BACKOFF_MIN;
        }
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.restarts += 1;
    }

    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }

    /// Close our end of its stdin so it drains and exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

/// Reap every child that has exited: (pid, description of how it ended).
pub fn reap() -> Vec<(i32, String)> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), format!("exited {code}"))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                out.push((pid.as_raw(), format!("killed by {sig}")))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cat_child_echoes_and_backoff_grows() {
        let mut c = Child::new("cat", Path::new("cat"), vec![], vec![]);
        c.spawn().expect("spawn cat");
        let stdin = c.stdin.take().expect("stdin");
        crate::io::write_all(&stdin, b"rec\n").expect("write");
        drop(stdin);
        let out = c.stdout.take().expect("stdout");
        let mut buf = Vec::new();
        loop {
            let wake = std::time::Instant::now() + Duration::from_secs(5);
            let fd = std::os::fd::AsFd::as_fd(&out);
            crate::poll::wait_one(fd, crate::poll::Interest::Read, Some(wake)).expect("poll");
            match crate::io::read_into(&out, &mut buf).expect("read") {
                crate::io::Read::Eof => break,
                _ => continue,
            }
        }
        assert_eq!(buf, b"rec\n");
        c.died();
        let first = c.restart_at.expect("scheduled");
        c.died();
        assert!(c.restart_at.expect("scheduled") > first);
        assert_eq!(c.restarts, 2);
    }
}
