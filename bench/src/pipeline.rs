//! The pipeline: chat messages written into a socket that sj-proxy has as
//! fds 6/7 (a fake server, `xmpp::serve_login_sm`), through sj-proxy and
//! mirrord (messaged logging them beside), into K raw clients'
//! `DIR/clients/NAME/in` FIFOs drained as fast as the bench can read.
//! The baseline moves the same bytes through the same number of pipes
//! with plain relays: `cat` from the socket, then `cat` (one client) or
//! `tee` (K FIFOs) into the same FIFOs.

use crate::procfs;
use crate::spawn::{self, Proc, Scratch};
use crate::xmpp;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const JID: &str = "alice@localhost/bench";
pub(crate) const PASSWORD: &str = "bench-pw";
/// The timed part of one run may take this long before it counts as failed.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Bytes per record, without its LF.
    pub size: usize,
    pub clients: usize,
    pub records: usize,
}

/// One timed run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub secs: f64,
    /// Peak RSS (KiB) by process name; empty for the baseline.
    pub rss: Vec<(String, u64)>,
    /// Warnings sj-proxy and its daemons logged during the run.
    pub warnings: Vec<String>,
}

/// Record `i` of `size` bytes: a chat message whose body pads it out.
pub(crate) fn message(size: usize, i: usize) -> Vec<u8> {
    let head = format!(
        "<message from='bob@localhost' to='alice@localhost' type='chat' id='{i:07}'><body>"
    );
    let tail = "</body></message>";
    let pad = size.saturating_sub(head.len() + tail.len()).max(1);
    const TEXT: &[u8] = b"All work and no play makes Jack a dull boy. ";
    let mut r = Vec::with_capacity(size + 1);
    r.extend_from_slice(head.as_bytes());
    r.extend(TEXT.iter().cycle().take(pad));
    r.extend_from_slice(tail.as_bytes());
    r.push(b'\n');
    r
}

/// `n` records of `size` bytes, numbered from `first`, LF after each.
pub(crate) fn corpus(size: usize, first: usize, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity((size + 1) * n);
    for i in first..first + n {
        v.extend_from_slice(&message(size, i));
    }
    v
}

/// The reading ends of the clients' `in` FIFOs, and what came out of each.
pub(crate) struct Drain {
    fds: Vec<OwnedFd>,
    pub(crate) lines: Vec<usize>,
    buf: Vec<u8>,
}

impl Drain {
    /// Make `DIR/clients/cN/{in,out}` and open every `in` the way a raw
    /// client does (read-write, non-blocking: never EOF).
    pub(crate) fn open(dir: &Path, clients: usize) -> Result<Drain, String> {
        let mut fds = Vec::new();
        for i in 0..clients {
            let c = dir.join("clients").join(format!("c{i}"));
            sj::fifo::make_dir(&c).map_err(|e| format!("unable to create {}: {e}", c.display()))?;
            for f in ["in", "out"] {
                sj::fifo::make(&c.join(f))
                    .map_err(|e| format!("unable to create {}/{f}: {e}", c.display()))?;
            }
            fds.push(
                sj::fifo::open_read(&c.join("in"))
                    .map_err(|e| format!("unable to open {}/in: {e}", c.display()))?,
            );
        }
        Ok(Drain {
            lines: vec![0; fds.len()],
            fds,
            buf: vec![0; 1 << 20],
        })
    }

    fn paths(dir: &Path, clients: usize) -> Vec<PathBuf> {
        (0..clients)
            .map(|i| dir.join("clients").join(format!("c{i}")).join("in"))
            .collect()
    }

    /// Read until every client has `each` lines, or `deadline`.
    fn wait(&mut self, each: usize, deadline: Instant) -> Result<(), String> {
        let expect = vec![each; self.fds.len()];
        self.wait_for(&expect, deadline)
    }

    /// Read until client `i` has `expect[i]` lines, or `deadline`.
    pub(crate) fn wait_for(&mut self, expect: &[usize], deadline: Instant) -> Result<(), String> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        loop {
            let open: Vec<usize> = (0..self.fds.len())
                .filter(|&i| self.lines[i] < expect[i])
                .collect();
            if open.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let short: usize = open.iter().map(|&i| expect[i] - self.lines[i]).sum();
                let each = open.iter().map(|&i| expect[i]).max().unwrap_or(0);
                return Err(format!(
                    "{} of {} clients short of {each} records ({short} missing) at the deadline",
                    open.len(),
                    self.fds.len()
                ));
            }
            let mut pfds: Vec<PollFd> = open
                .iter()
                .map(|&i| PollFd::new(self.fds[i].as_fd(), PollFlags::POLLIN))
                .collect();
            match nix::poll::poll(&mut pfds, PollTimeout::from(100u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("unable to poll the client FIFOs: {e}")),
            }
            let ready: Vec<usize> = open
                .iter()
                .zip(&pfds)
                .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                .map(|(&i, _)| i)
                .collect();
            drop(pfds);
            for i in ready {
                loop {
                    match nix::unistd::read(&self.fds[i], &mut self.buf) {
                        Ok(n) if n > 0 => {
                            self.lines[i] += memchr::memchr_iter(b'\n', &self.buf[..n]).count()
                        }
                        Err(nix::errno::Errno::EINTR) => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}

/// Write `data` from a thread (the drain must run meanwhile).
pub(crate) fn writer(
    mut sock: UnixStream,
    data: Arc<Vec<u8>>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        sock.write_all(&data)
            .map_err(|e| format!("unable to write the records: {e}"))
    })
}

/// Warm the path with one record per client, then time `data`.
fn timed(
    drain: &mut Drain,
    sock: &UnixStream,
    n: usize,
    data: &Arc<Vec<u8>>,
) -> Result<f64, String> {
    let mut s = sock
        .try_clone()
        .map_err(|e| format!("unable to dup the socket: {e}"))?;
    s.write_all(&message(100, 9_999_999))
        .map_err(|e| format!("unable to write the warm-up record: {e}"))?;
    drain.wait(1, Instant::now() + Duration::from_secs(20))?;
    let t = Instant::now();
    let w = writer(s, Arc::clone(data));
    let r = drain.wait(1 + n, t + RUN_LIMIT);
    let secs = t.elapsed().as_secs_f64();
    match w.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the writer thread panicked".into()),
    }
    r.map(|()| secs)
}

pub struct Pipeline {
    /// Run sj-proxy with its account archive (the default); off sets
    /// SJ_ARCHIVE=off, the baseline of the archive's cost.
    pub archive: bool,
    /// Bytes in the archive after the last run with it on.
    pub archive_bytes: u64,
    bin: PathBuf,
    data: std::collections::HashMap<(usize, usize), Arc<Vec<u8>>>,
    sm_data: std::collections::HashMap<(usize, usize), Arc<Vec<u8>>>,
}

impl Pipeline {
    pub fn new(bin: &Path) -> Pipeline {
        Pipeline {
            archive: true,
            archive_bytes: 0,
            bin: bin.to_path_buf(),
            data: Default::default(),
            sm_data: Default::default(),
        }
    }

    fn data(&mut self, c: Case) -> Arc<Vec<u8>> {
        Arc::clone(
            self.data
                .entry((c.size, c.records))
                .or_insert_with(|| Arc::new(corpus(c.size, 0, c.records))),
        )
    }

    /// The baseline: `cat` | `cat` or `tee FIFO...`.
    pub fn baseline(&mut self, c: Case) -> Result<Run, String> {
        let data = self.data(c);
        let scratch = Scratch::new(&format!("cat-{}-{}", c.size, c.clients))?;
        let mut drain = Drain::open(&scratch.0, c.clients)?;
        let (srv, cli) =
            UnixStream::pair().map_err(|e| format!("unable to make a socketpair: {e}"))?;
        let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("unable to make a pipe: {e}"))?;
        let mut first = Command::new("cat");
        first
            .stdin(Stdio::from(OwnedFd::from(cli)))
            .stdout(Stdio::from(pw));
        let first = spawn::spawn("cat", first, &[])?;
        let fifos = Drain::paths(&scratch.0, c.clients);
        let mut second = if c.clients == 1 {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifos[0])
                .map_err(|e| format!("unable to open {}: {e}", fifos[0].display()))?;
            let mut cmd = Command::new("cat");
            cmd.stdout(out);
            cmd
        } else {
            let mut cmd = Command::new("tee");
            cmd.args(&fifos).stdout(Stdio::null());
            cmd
        };
        second.stdin(Stdio::from(pr));
        let second = spawn::spawn("tee", second, &[])?;
        let mut procs = [first, second];
        let secs = timed(&mut drain, &srv, c.records, &data);
        drop(srv);
        for p in &mut procs {
            p.wait(Duration::from_secs(5));
        }
        Ok(Run {
            secs: secs?,
            ..Run::default()
        })
    }

    /// sj-proxy with its daemons, the fake server on the other end.
    pub fn proxy(&mut self, c: Case) -> Result<Run, String> {
        self.proxy_sm(c, false)
    }

    /// The same records with XEP-0198 on (`sm`): the fake server offers
    /// it and asks for an acknowledgement every 64 stanzas, as Prosody
    /// and ejabberd do under load.
    pub fn proxy_sm(&mut self, c: Case, sm: bool) -> Result<Run, String> {
        let data = if sm {
            Arc::clone(self.sm_data.entry((c.size, c.records)).or_insert_with(|| {
                let mut v = Vec::new();
                for i in 0..c.records {
                    v.extend_from_slice(&message(c.size, i));
                    if i % 64 == 63 {
                        v.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>\n");
                    }
                }
                Arc::new(v)
            }))
        } else {
            self.data(c)
        };
        let scratch = Scratch::new(&format!("sj-{}-{}", c.size, c.clients))?;
        let dir = scratch.0.join("dir");
        let mut drain = Drain::open(&dir, c.clients)?;
        let log = scratch.0.join("stderr");
        let env: &[(&str, &str)] = if self.archive {
            &[]
        } else {
            &[("SJ_ARCHIVE", "off")]
        };
        let Started {
            mut proxy,
            conn,
            sock,
        } = start_proxy(&self.bin, &dir, &scratch.0, &log, env, sm)?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = discard(conn, Arc::clone(&stop));
        let secs = timed(&mut drain, &sock, c.records, &data);
        let rss = memory(&proxy)
            .into_iter()
            .map(|m| (m.name, m.hwm))
            .collect();
        let st = proxy.stop(Duration::from_secs(10));
        if self.archive {
            self.archive_bytes = crate::archive::bytes(&dir.join("archive"));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        let warnings = warnings(&log);
        let secs = secs.map_err(|e| with_log(e, &warnings))?;
        if !st.is_some_and(|s| s.success()) {
            return Err(with_log(format!("sj-proxy ended with {st:?}"), &warnings));
        }
        Ok(Run {
            secs,
            rss,
            warnings,
        })
    }
}

/// sj-proxy for `dir` (password `PASSWORD`, account `JID`) on one end of
/// a socket pair, logged in by the fake server on the other end (offering
/// XEP-0198 with `sm`), and ready.
pub struct Started {
    pub proxy: Proc,
    pub conn: xmpp::Conn<UnixStream>,
    /// The server's socket again, for writing while `conn` is read.
    pub sock: UnixStream,
}

pub fn start_proxy(
    bin: &Path,
    dir: &Path,
    scratch: &Path,
    log: &Path,
    env: &[(&str, &str)],
    sm: bool,
) -> Result<Started, String> {
    let pwfile = scratch.join("password");
    spawn::write_password(&pwfile, PASSWORD)?;
    let (srv, cli) = UnixStream::pair().map_err(|e| format!("unable to make a socketpair: {e}"))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("unable to make a pipe: {e}"))?;
    let mut cmd = spawn::command(&bin.join("sj-proxy"), log)?;
    cmd.arg("-d")
        .arg(dir)
        .arg("-p")
        .arg(&pwfile)
        .args(["-n", "8", JID])
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    let cli = OwnedFd::from(cli);
    let proxy = spawn::spawn("sj-proxy", cmd, &[(&cli, 6), (&cli, 7), (&ready_w, 8)])?;
    drop((cli, ready_w));
    let conn = xmpp::serve_login_sm(srv, PASSWORD, JID, sm)?;
    spawn::wait_ready(&ready_r, Duration::from_secs(20), "sj-proxy")?;
    let sock = conn
        .sock
        .try_clone()
        .map_err(|e| format!("unable to dup the socket: {e}"))?;
    Ok(Started { proxy, conn, sock })
}

/// Read and forget what sj-proxy sends the server (presence, iq) until
/// told to stop or the stream ends.
pub(crate) fn discard<S: xmpp::Sock + 'static>(
    mut conn: xmpp::Conn<S>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match conn.fill() {
                Ok(_) => while let Ok(Some(_)) = conn.pop() {},
                Err(_) => return,
            }
        }
    })
}

/// sj-proxy and each of its children.
pub fn memory(proxy: &Proc) -> Vec<procfs::Mem> {
    let mut v: Vec<procfs::Mem> = procfs::mem(proxy.pid(), "sj-proxy").into_iter().collect();
    v.extend(procfs::children_mem(proxy.pid()));
    v
}

/// The log lines that are neither informational nor traces.
pub fn warnings(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(": warning: ") || l.contains(": fatal: "))
        .map(str::to_string)
        .collect()
}

pub(crate) fn with_log(e: String, warnings: &[String]) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for w in warnings {
        if !distinct.contains(&w.as_str()) {
            distinct.push(w);
        }
    }
    if distinct.is_empty() {
        return e;
    }
    format!("{e} (log: {})", distinct.join(" / "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_size_asked_for() {
        for size in [100, 1024, 262144] {
            let r = message(size, 7);
            assert_eq!(r.len(), size + 1);
            assert_eq!(r.last(), Some(&b'\n'));
            assert!(sj::framer::canonical_record(&r[..size], sj::framer::Limits::DEFAULT).is_ok());
        }
        assert_eq!(corpus(200, 0, 3).len(), 603);
    }
}
