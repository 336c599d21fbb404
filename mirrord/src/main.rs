//! mirrord: the fan-out of sj-proxy (DESIGN §2).
//!
//! Reads records, one per line, on stdin and writes each into the `in`
//! FIFO of every client registered under `DIR/clients/` (or only into the
//! addressed client's, and never a sent copy back to the client it came
//! from). It never blocks on a client: each FIFO is written non-blocking
//! through its own bounded queue, and a client whose queue passes the bound
//! is dropped until it registers again. EOF on stdin: flush what can be
//! flushed within a second, exit 0.

mod fanout;
mod route;

use fanout::Fanout;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use route::Account;
use sj::exit::Fatal;
use sj::io::{LineReader, Read};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: mirrord [-v] [-q BYTES] -d DIR JID";
/// Default per-client queue bound.
const DEFAULT_BOUND: usize = 4 << 20;
/// The environment variable that sets the bound when `-q` is not given.
const QUEUE_ENV: &str = "SJ_MIRRORD_QUEUE";
/// Longest record accepted on stdin (the library's rule); longer lines
/// are skipped.
const MAX_RECORD: usize = sj::framer::MAX_LINE;
/// Rescan of `DIR/clients` even without inotify.
const TICK: Duration = Duration::from_secs(1);
/// How long to keep flushing after EOF on stdin.
const GRACE: Duration = Duration::from_secs(1);

struct Opts {
    verbose: bool,
    bound: usize,
    dir: PathBuf,
    account: Account,
}

/// `4096`, `64k`, `4M`, `4MiB`, `1G` (powers of 1024).
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

fn parse_args() -> Result<Opts, Fatal> {
    use lexopt::prelude::*;
    let usage = |m: String| Fatal::permanent(format!("{m}\n{USAGE}"));
    let mut parser = lexopt::Parser::from_env();
    let mut verbose = false;
    // sj-proxy passes its environment on: this is how a bound reaches a
    // mirrord it starts (mirrord(8), ENVIRONMENT).
    let mut bound = match std::env::var(QUEUE_ENV) {
        Ok(v) if !v.is_empty() => parse_size(&v)
            .ok_or_else(|| usage(format!("invalid queue bound in {QUEUE_ENV}: {v}")))?,
        _ => DEFAULT_BOUND,
    };
    let mut dir: Option<PathBuf> = None;
    let mut jid: Option<String> = None;
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Short('v') | Long("verbose") => verbose = true,
            Short('q') | Long("queue") => {
                let v = parser.value().map_err(|e| usage(e.to_string()))?;
                let v = v.to_string_lossy();
                bound = parse_size(&v).ok_or_else(|| usage(format!("invalid queue bound: {v}")))?;
            }
            Short('d') | Long("dir") => {
                dir = Some(parser.value().map_err(|e| usage(e.to_string()))?.into())
            }
            Short('h') | Long("help") => return Err(usage("help requested".into())),
            Value(v) if jid.is_none() => jid = Some(v.to_string_lossy().into_owned()),
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let jid = sj::daemon::jid(jid, USAGE)?;
    let account = Account::parse(&jid).map_err(Fatal::permanent)?;
    let dir = sj::daemon::dir(dir, account.bare(), USAGE)?;
    Ok(Opts {
        verbose,
        bound,
        dir,
        account,
    })
}

fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code; nothing else runs yet.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigIgn);
    }
}

fn poll_timeout(d: Duration) -> PollTimeout {
    // At most TICK (1000 ms), so it fits.
    PollTimeout::from(d.as_millis().min(1000) as u16)
}

fn run() -> Result<(), Fatal> {
    let opts = parse_args()?;
    sj::log::set_verbose(opts.verbose);
    ignore_sigpipe();
    let clients_dir = opts.dir.join("clients");
    let mut watcher = sj::fifo::ClientWatcher::new(&clients_dir)
        .map_err(|e| Fatal::io(format!("watch {}", clients_dir.display()), &e))?;
    let mut fan = Fanout::new(&clients_dir, opts.account, opts.bound);
    let rescan = |watcher: &mut sj::fifo::ClientWatcher, fan: &mut Fanout| {
        let (added, removed) = watcher.changes();
        if sj::log::verbose() {
            for n in &added {
                sj::log::info(&format!("client {n} arrived"));
            }
            for n in &removed {
                sj::log::info(&format!("client {n} left"));
            }
        }
        fan.sync(watcher.known());
    };
    rescan(&mut watcher, &mut fan);

    let stdin = std::io::stdin();
    let stdin = stdin.as_fd();
    sj::io::set_nonblocking(stdin).map_err(|e| Fatal::io("set stdin non-blocking", &e))?;
    let mut reader = LineReader::new(MAX_RECORD);
    let mut next_tick = Instant::now() + TICK;

    loop {
        let (stdin_ready, inotify_ready, writable) = {
            let pending = fan.pending();
            let mut fds = Vec::with_capacity(pending.len() + 2);
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
            let ino = watcher.fd();
            if let Some(fd) = ino {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            for (_, fd) in &pending {
                fds.push(PollFd::new(*fd, PollFlags::POLLOUT));
            }
            let timeout = poll_timeout(next_tick.saturating_duration_since(Instant::now()));
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Fatal::io("poll", &e.into())),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let skip = 1 + usize::from(ino.is_some());
            let writable: Vec<String> = pending
                .iter()
                .zip(&fds[skip..])
                .filter(|(_, f)| ready(f))
                .map(|((n, _), _)| n.to_string())
                .collect();
            (ready(&fds[0]), ino.is_some() && ready(&fds[1]), writable)
        };

        if !writable.is_empty() {
            fan.flush_some(&writable);
        }
        if inotify_ready || Instant::now() >= next_tick {
            watcher.drain();
            rescan(&mut watcher, &mut fan);
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
            }
        }
        if stdin_ready {
            let eof = match reader.fill(stdin) {
                Ok(Read::Data(_)) => false,
                Ok(Read::WouldBlock) => continue,
                Ok(Read::Eof) => true,
                Err(e) => return Err(Fatal::io("read stdin", &e)),
            };
            while let Some(line) = reader.next_line() {
                if line.is_empty() {
                    continue;
                }
                let (target, _) = fan.deliver(line);
                if sj::log::verbose() {
                    sj::log::trace(&format!("> {target:?}"), line);
                }
            }
            reader.warn_overlong("sj-proxy");
            fan.flush_all();
            if eof {
                if reader.pending() > 0 {
                    sj::log::warn("incomplete last line at end of input: dropped");
                }
                drain(&mut fan);
                return Ok(());
            }
        }
    }
}

/// Flush what can be flushed within GRACE.
fn drain(fan: &mut Fanout) {
    let deadline = Instant::now() + GRACE;
    loop {
        fan.flush_all();
        let now = Instant::now();
        let writable: Vec<String> = {
            let pending = fan.pending();
            if pending.is_empty() || now >= deadline {
                return;
            }
            let mut fds: Vec<PollFd> = pending
                .iter()
                .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLOUT))
                .collect();
            if let Err(e) = nix::poll::poll(&mut fds, poll_timeout(deadline - now)) {
                if e != nix::errno::Errno::EINTR {
                    return;
                }
            }
            pending
                .iter()
                .zip(&fds)
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|((n, _), _)| n.to_string())
                .collect()
        };
        fan.flush_some(&writable);
    }
}

fn main() -> ExitCode {
    sj::log::init("mirrord");
    sj::exit::finish(run())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("1T"), None);
    }
}
