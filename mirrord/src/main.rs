//! mirrord: the fan-out of sj-proxy (DESIGN §2).
//!
//! Reads records, one per line, on stdin and writes each into the `in`
//! FIFO of every client registered under `DIR/clients/` (or only into the
//! addressed client's, and never a sent copy back to the client it came
//! from). It never blocks on a client: each FIFO is written non-blocking
//! through its own bounded queue, and a client whose queue passes the bound
//! is dropped until it registers again. EOF on stdin: flush what can be
//! flushed within a second, exit 0.

mod catchup;
mod fanout;
mod route;

use fanout::Fanout;
use sj::account::Account;
use sj::exit::Fatal;
use sj::io::{LineReader, Read};
use sj::poll::{Interest, PollSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: mirrord [-v] [-q BYTES] [-n RECORDS] [-a SECONDS] -d DIR JID";
/// The environment variables that set the catch-up horizon when `-n`
/// and `-a` are not given.
const HORIZON_RECORDS_ENV: &str = "SJ_CATCHUP_RECORDS";
const HORIZON_SECS_ENV: &str = "SJ_CATCHUP_SECONDS";
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
    horizon: catchup::Horizon,
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
    let number = |name: &str, v: &str| {
        v.parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| usage(format!("invalid {name}: {v}")))
    };
    let mut horizon = catchup::Horizon {
        records: catchup::HORIZON_RECORDS,
        secs: catchup::HORIZON_SECS,
    };
    if let Ok(v) = std::env::var(HORIZON_RECORDS_ENV) {
        horizon.records = number(HORIZON_RECORDS_ENV, &v)?;
    }
    if let Ok(v) = std::env::var(HORIZON_SECS_ENV) {
        horizon.secs = number(HORIZON_SECS_ENV, &v)?;
    }
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
            Short('n') => {
                let v = parser.value().map_err(|e| usage(e.to_string()))?;
                horizon.records = number("-n", &v.to_string_lossy())?;
            }
            Short('a') => {
                let v = parser.value().map_err(|e| usage(e.to_string()))?;
                horizon.secs = number("-a", &v.to_string_lossy())?;
            }
            Short('d') | Long("dir") => {
                dir = Some(parser.value().map_err(|e| usage(e.to_string()))?.into())
            }
            Short('h') | Long("help") => return Err(usage("help requested".into())),
            Value(v) if jid.is_none() => jid = Some(v.to_string_lossy().into_owned()),
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let account = sj::daemon::resolve(dir, jid, USAGE)?;
    Ok(Opts {
        verbose,
        bound,
        horizon,
        account,
    })
}

fn run() -> Result<(), Fatal> {
    let opts = parse_args()?;
    sj::log::set_verbose(opts.verbose);
    // A client gone while written to is EPIPE, not a death: SIGPIPE is
    // ignored, as the Rust runtime sets it up before main.
    let dir = opts.account.dir();
    let watcher = sj::fifo::ClientWatcher::new(dir)
        .map_err(|e| Fatal::io(format!("watch {}", dir.clients().display()), &e))?;
    let stdin = std::io::stdin();
    sj::io::set_nonblocking(&stdin).map_err(|e| Fatal::io("set stdin non-blocking", &e))?;
    // sj-proxy archives unless SJ_ARCHIVE=off (it passes its environment
    // on): then the records carry ids and clients catch up.
    let off = std::env::var("SJ_ARCHIVE").is_ok_and(|v| v == "off" || v == "0" || v == "no");
    let archive = dir.archive();
    let archive = (!off && archive.is_dir()).then_some(archive);
    let mut fan = Fanout::new(opts.account, opts.bound);
    if let Some(a) = archive {
        fan.open_archive(opts.horizon)
            .map_err(|e| Fatal::io(format!("read {}", a.display()), &e))?;
    }
    let mut m = Mirror {
        fan,
        watcher,
        stdin,
        reader: LineReader::new(MAX_RECORD),
        next_tick: Instant::now() + TICK,
        pump_more: false,
    };
    m.rescan();
    while m.turn()? {}
    m.drain();
    m.fan.save_cursors();
    Ok(())
}

/// The loop: records from stdin, the clients' FIFOs, the watch on
/// `DIR/clients`.
struct Mirror {
    fan: Fanout,
    watcher: sj::fifo::ClientWatcher,
    stdin: std::io::Stdin,
    reader: LineReader,
    next_tick: Instant,
    /// A behind client can take more from the archive now.
    pump_more: bool,
}

/// What each descriptor of a turn's poll set is.
enum Token {
    Stdin,
    Inotify,
    /// A client's `in` (its place among the pending ones), writable.
    Client(usize),
}

impl Mirror {
    fn rescan(&mut self) {
        let (added, removed) = self.watcher.changes();
        if sj::log::verbose() {
            for n in &added {
                sj::log::info(&format!("client {n} arrived"));
            }
            for n in &removed {
                sj::log::info(&format!("client {n} left"));
            }
        }
        self.fan.sync(self.watcher.known());
    }

    /// One turn; false once stdin ended.
    fn turn(&mut self) -> Result<bool, Fatal> {
        // The clients with records waiting, named by their place in it.
        let pending = self.fan.pending();
        let mut set = PollSet::with_capacity(2 + pending.len());
        set.add(self.stdin.as_fd(), Token::Stdin, Interest::Read);
        if let Some(fd) = self.watcher.fd() {
            set.add(fd, Token::Inotify, Interest::Read);
        }
        for (i, (_, fd)) in pending.iter().enumerate() {
            set.add(*fd, Token::Client(i), Interest::Write);
        }
        let when = if self.pump_more {
            Instant::now()
        } else {
            self.next_tick
        };
        let ready = set.wait(Some(when)).map_err(|e| Fatal::io("poll", &e))?;
        let (mut stdin_ready, mut inotify_ready, mut writable) = (false, false, Vec::new());
        for (t, _) in ready {
            match t {
                Token::Stdin => stdin_ready = true,
                Token::Inotify => inotify_ready = true,
                Token::Client(i) => writable.push(pending[i].0.to_string()),
            }
        }
        if !writable.is_empty() {
            self.fan.flush_some(&writable);
        }
        let tick = Instant::now() >= self.next_tick;
        if inotify_ready || tick {
            self.watcher.drain();
            self.rescan();
            if tick {
                self.fan.save_cursors();
                self.next_tick = Instant::now() + TICK;
            }
        }
        let go_on = if stdin_ready {
            self.read_stdin()?
        } else {
            true
        };
        self.fan.pump(tick || inotify_ready || stdin_ready);
        self.fan.flush_all();
        // A reader that took all of a chunk at once leaves no queue to
        // wait on: the next chunk is due now.
        self.pump_more = self.fan.can_pump();
        Ok(go_on)
    }

    /// One read of records, queued for their clients; false at the end
    /// of input.
    fn read_stdin(&mut self) -> Result<bool, Fatal> {
        let eof = match self.reader.fill(&self.stdin) {
            Ok(Read::Data(_)) => false,
            Ok(Read::WouldBlock) => return Ok(true),
            Ok(Read::Eof) => true,
            Err(e) => return Err(Fatal::io("read stdin", &e)),
        };
        while let Some(line) = self.reader.next_line() {
            if line.is_empty() {
                continue;
            }
            let (id, line) = sj::archive::split_id(line);
            let (target, _) = self.fan.deliver_id(id, line);
            if sj::log::verbose() {
                sj::log::trace(&format!("> {target:?}"), line);
            }
        }
        self.reader.warn_overlong("sj-proxy");
        self.fan.flush_all();
        if eof && self.reader.pending() > 0 {
            sj::log::warn("incomplete last line at end of input: dropped");
        }
        Ok(!eof)
    }

    /// Flush what can be flushed within GRACE.
    fn drain(&mut self) {
        let deadline = Instant::now() + GRACE;
        loop {
            self.fan.flush_all();
            let pending = self.fan.pending();
            if pending.is_empty() || Instant::now() >= deadline {
                return;
            }
            let mut set = PollSet::with_capacity(pending.len());
            for (name, fd) in pending {
                set.add(fd, name.to_string(), Interest::Write);
            }
            let Ok(ready) = set.wait(Some(deadline)) else {
                return;
            };
            let writable: Vec<String> = ready.into_iter().map(|(n, _)| n).collect();
            self.fan.flush_some(&writable);
        }
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
