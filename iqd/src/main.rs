//! iqd: sj-proxy's iq endpoint (DESIGN §2, §3, §5; RFC 6120 §8.2.3, §8.4).
//!
//! Reads records from sj-proxy on stdin, writes records to sj-proxy on
//! stdout. Results and errors for file-system requesters go to
//! `DIR/iq/<id>`; every incoming get/set gets exactly one answer from an
//! executable in `DIR/iq.d/`, a built-in, the primary client (delegation),
//! or `service-unavailable`. Keeps the roster cache `DIR/roster`.
//!
//! One non-blocking poll(2) loop (`sj::poll`) over stdin, stdout, the
//! handler pipes and the SIGCHLD self-pipe (`sj::signal`). See iqd(8).

use iqd::builtin;
use iqd::paths::{self, Handler};
use iqd::roster::{self, Roster};
use iqd::stanza::{self, Cond, Request};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sj::account::Account;
use sj::exit::Fatal;
use sj::io::{LineReader, Read, WriteQueue};
use sj::poll::{Interest, PollSet};
use sj::xml::Element;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Handlers allowed to run at once; more get `resource-constraint`.
const MAX_HANDLERS: usize = 32;
/// How long a delegated request is remembered.
const DELEGATION_TTL: Duration = Duration::from_secs(30);
/// How long a slow FIFO reader of DIR/iq/<id> is waited for.
const FIFO_WRITE_TTL: Duration = Duration::from_secs(10);
/// Regular files kept in DIR/iq (anyone can send results to the account).
const MAX_RESULT_FILES: usize = 256;
/// Final flush of stdout at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    sj::log::init("iqd");
    sj::exit::finish(run())
}

struct Opts {
    acct: Account,
    timeout: Duration,
}

const USAGE: &str = "usage: iqd [-v] [-t SECS] -d DIR JID";

fn parse_args() -> Result<Opts, Fatal> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut dir: Option<PathBuf> = None;
    let mut jid: Option<String> = None;
    let mut timeout = Duration::from_secs(10);
    let bad = |e: lexopt::Error| Fatal::permanent(format!("{e}; {USAGE}"));
    while let Some(arg) = p.next().map_err(bad)? {
        match arg {
            Short('v') => sj::log::set_verbose(true),
            Short('d') => dir = Some(p.value().map_err(bad)?.into()),
            Short('t') => {
                let s: u64 = p.value().map_err(bad)?.parse().map_err(bad)?;
                if s == 0 {
                    return Err(Fatal::permanent("timeout must be at least 1 second"));
                }
                timeout = Duration::from_secs(s);
            }
            Value(v) if jid.is_none() => {
                jid = Some(
                    v.into_string()
                        .map_err(|_| Fatal::permanent(format!("JID is not UTF-8; {USAGE}")))?,
                );
            }
            _ => return Err(bad(arg.unexpected())),
        }
    }
    let acct = sj::daemon::resolve(dir, jid, USAGE)?;
    Ok(Opts { acct, timeout })
}

/// One handler process in flight.
struct Running {
    pid: Pid,
    ns: String,
    to: Option<String>,
    id: String,
    stdin: Option<OwnedFd>,
    inq: WriteQueue,
    stdout: Option<OwnedFd>,
    out: Vec<u8>,
    /// Exit status once reaped: true for exit 0.
    status: Option<bool>,
    deadline: Instant,
    /// Answer already sent (timeout, overflow); waiting to be reaped.
    answered: bool,
}

/// A result being written into a requester's FIFO that did not take it at once.
struct FifoWrite {
    fd: OwnedFd,
    q: WriteQueue,
    deadline: Instant,
    path: PathBuf,
}

struct Iqd {
    acct: Account,
    timeout: Duration,
    stdin: std::io::Stdin,
    stdout: std::io::Stdout,
    /// Records from sj-proxy, split into lines.
    reader: LineReader,
    stdin_open: bool,
    out: WriteQueue,
    handlers: Vec<Running>,
    fifo_writes: Vec<FifoWrite>,
    roster: Roster,
    roster_pending: Vec<String>,
    roster_n: u64,
    delegated: HashMap<(String, String), Instant>,
    started: Instant,
    os: String,
}

fn run() -> Result<(), Fatal> {
    let o = parse_args()?;
    // DIR itself must exist; DIR/iq is made again before each answer is
    // written there, so one that cannot be made now only costs those.
    let dir = o.acct.dir();
    sj::fifo::make_dir(dir.path())
        .map_err(|e| Fatal::io(format!("create {}", dir.display()), &e))?;
    let iq_dir = dir.iq();
    if let Err(e) = sj::fifo::make_subdir(&iq_dir) {
        sj::log::warn(&format!(
            "unable to create {}: {}",
            iq_dir.display(),
            sj::log::strerror(&e)
        ));
    }
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    sj::io::set_nonblocking(&stdin).map_err(|e| Fatal::io("set stdin non-blocking", &e))?;
    sj::io::set_nonblocking(&stdout).map_err(|e| Fatal::io("set stdout non-blocking", &e))?;
    // SIGCHLD wakes the loop to reap handlers; SIGTERM keeps its default.
    sj::signal::install(&[], true).map_err(|e| Fatal::io("catch SIGCHLD", &e))?;

    let roster_text = iqd::roster::read_file(dir).unwrap_or_else(|e| {
        sj::log::warn(&format!(
            "unable to read {}: {}",
            dir.roster().display(),
            sj::log::strerror(&e)
        ));
        String::new()
    });
    let mut d = Iqd {
        acct: o.acct,
        timeout: o.timeout,
        stdin,
        stdout,
        reader: LineReader::new(sj::framer::MAX_LINE),
        stdin_open: true,
        out: WriteQueue::new(),
        handlers: Vec::new(),
        fifo_writes: Vec::new(),
        roster: Roster::parse(&roster_text),
        roster_pending: Vec::new(),
        roster_n: 0,
        delegated: HashMap::new(),
        started: Instant::now(),
        os: builtin::os_name(),
    };
    d.request_roster();
    loop {
        d.expire(Instant::now());
        if !d.stdin_open {
            break;
        }
        d.turn()?;
    }
    d.finish();
    Ok(())
}

/// What each descriptor of a turn's poll set is.
#[derive(Clone, Copy)]
enum Tag {
    Stdin,
    Sig,
    Stdout,
    HOut(usize),
    HIn(usize),
    Fifo(usize),
}

impl Iqd {
    /// One turn: wait for what the state needs, handle what is ready,
    /// then the records read, the handlers that finished, and stdout.
    fn turn(&mut self) -> Result<(), Fatal> {
        let ready = self
            .poll_set()
            .wait(self.next_deadline())
            .map_err(|e| Fatal::io("poll", &e))?;
        for (tag, _) in ready {
            match tag {
                Tag::Stdin => match self.reader.fill(&self.stdin) {
                    Ok(Read::Data(_)) | Ok(Read::WouldBlock) => {}
                    Ok(Read::Eof) => self.stdin_open = false,
                    Err(e) => return Err(Fatal::io("read stdin", &e)),
                },
                Tag::Sig => {
                    sj::signal::drain();
                }
                Tag::Stdout => self.flush_stdout()?,
                Tag::HOut(i) => self.read_handler(i),
                Tag::HIn(i) => self.feed_handler(i),
                Tag::Fifo(i) => self.flush_fifo(i),
            }
        }
        while let Some(line) = self.reader.next_line() {
            let line = line.to_vec();
            self.record(&line);
        }
        self.reader.warn_overlong("sj-proxy");
        self.forget_flushed();
        self.reap();
        self.finish_handlers();
        if !self.out.is_empty() {
            self.flush_stdout()?;
        }
        Ok(())
    }

    /// What to wait for, recomputed from state every turn.
    fn poll_set(&self) -> PollSet<'_, Tag> {
        let mut set = PollSet::new();
        set.add(self.stdin.as_fd(), Tag::Stdin, Interest::Read);
        if let Some(fd) = sj::signal::fd() {
            set.add(fd, Tag::Sig, Interest::Read);
        }
        if !self.out.is_empty() {
            set.add(self.stdout.as_fd(), Tag::Stdout, Interest::Write);
        }
        for (i, h) in self.handlers.iter().enumerate() {
            if let Some(fd) = &h.stdout {
                set.add(fd.as_fd(), Tag::HOut(i), Interest::Read);
            }
            if let (Some(fd), false) = (&h.stdin, h.inq.is_empty()) {
                set.add(fd.as_fd(), Tag::HIn(i), Interest::Write);
            }
        }
        for (i, w) in self.fifo_writes.iter().enumerate() {
            set.add(w.fd.as_fd(), Tag::Fifo(i), Interest::Write);
        }
        set
    }

    fn flush_stdout(&mut self) -> Result<(), Fatal> {
        self.out
            .flush(&self.stdout)
            .map(|_| ())
            .map_err(|e| Fatal::io("write stdout", &e))
    }

    /// EOF on stdin: the session is over. Stop handlers, flush, exit 0.
    fn finish(&mut self) {
        for h in &mut self.handlers {
            if !h.answered {
                let _ = killpg(h.pid, Signal::SIGKILL);
            }
        }
        let end = Instant::now() + DRAIN;
        while !self.out.is_empty() && Instant::now() < end {
            match self.out.flush(&self.stdout) {
                Ok(true) => break,
                Ok(false) => {
                    let wake = Some(end.min(Instant::now() + Duration::from_millis(100)));
                    let _ = sj::poll::wait_one(self.stdout.as_fd(), Interest::Write, wake);
                }
                Err(_) => break,
            }
        }
        self.reap();
    }

    fn send(&mut self, rec: String) {
        sj::log::trace("out", rec.as_bytes());
        let mut b = rec.into_bytes();
        if b.last() != Some(&b'\n') {
            b.push(b'\n');
        }
        self.out.push(b);
    }

    fn request_roster(&mut self) {
        self.roster_n += 1;
        let id = format!("iqd-roster-{}", self.roster_n);
        self.send(roster::get_request(&id));
        self.roster_pending.push(id);
    }

    fn save_roster(&self) {
        let p = self.acct.dir().roster();
        if let Err(e) = sj::fifo::write_atomic(&p, self.roster.render().as_bytes()) {
            sj::log::warn(&format!(
                "unable to write {}: {}",
                p.display(),
                sj::log::strerror(&e)
            ));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let h = self
            .handlers
            .iter()
            .filter(|h| !h.answered)
            .map(|h| h.deadline);
        let f = self.fifo_writes.iter().map(|w| w.deadline);
        let d = self.delegated.values().copied();
        h.chain(f).chain(d).min()
    }

    /// Time-outs: handlers (killed, answered with an error), FIFO writes, delegations.
    fn expire(&mut self, now: Instant) {
        let mut late = Vec::new();
        for h in &mut self.handlers {
            if !h.answered && now >= h.deadline {
                sj::log::warn(&format!("handler for {} timed out; killed", h.ns));
                let _ = killpg(h.pid, Signal::SIGKILL);
                h.answered = true;
                h.stdin = None;
                h.stdout = None;
                late.push(stanza::error(
                    h.to.as_deref(),
                    &h.id,
                    Cond::InternalServerError,
                ));
            }
        }
        for r in late {
            self.send(r);
        }
        self.fifo_writes.retain(|w| {
            let keep = now < w.deadline;
            if !keep {
                sj::log::warn(&format!(
                    "{}: reader too slow; result dropped",
                    w.path.display()
                ));
            }
            keep
        });
        self.delegated.retain(|(from, id), t| {
            let keep = now < *t;
            if !keep {
                sj::log::trace(
                    "forget",
                    format!("delegated iq {id} from {from}").as_bytes(),
                );
            }
            keep
        });
    }

    /// One record from sj-proxy.
    fn record(&mut self, line: &[u8]) {
        sj::log::trace("in", line);
        let Some(e) = Element::parse(line) else {
            sj::log::warn("dropped a record that does not parse");
            return;
        };
        let Some(req) = Request::from_element(&e) else {
            return;
        };
        match req.kind.as_str() {
            "result" | "error" => self.response(&e, &req, line),
            "get" | "set" => self.request(&e, &req, line),
            other => sj::log::warn(&format!("ignored an iq of type '{other}'")),
        }
    }

    /// A result or error: ours (roster), or for a file-system requester.
    fn response(&mut self, e: &Element, req: &Request, line: &[u8]) {
        if let Some(pos) = self.roster_pending.iter().position(|i| *i == req.id) {
            // The id is predictable and anyone may send a result: only the
            // server's answer is the roster (kept pending for the real one).
            if !roster::push_believed(req.from.as_deref(), self.acct.full_jid()) {
                sj::log::warn(&format!(
                    "ignored a roster result from {}: not from the server",
                    req.from.as_deref().unwrap_or("(none)")
                ));
                return;
            }
            self.roster_pending.remove(pos);
            if req.kind == "result" {
                // No <query/> means "unchanged" (roster versioning).
                if let Some(q) = roster::query(e) {
                    self.roster.replace(q);
                    self.save_roster();
                }
            } else {
                sj::log::warn(&format!(
                    "roster get refused: {}",
                    stanza::error_condition(e).unwrap_or_default()
                ));
            }
            return;
        }
        let Ok(path) = self.acct.dir().iq_result(&req.id) else {
            sj::log::warn("dropped an iq result whose id cannot name a file");
            return;
        };
        // DIR/iq is a real directory (never a symbolic link out of DIR).
        let iq_dir = self.acct.dir().iq();
        if let Err(e) = sj::fifo::make_subdir(&iq_dir) {
            sj::log::warn(&format!(
                "dropped the answer to {}: unable to create {}: {}",
                req.id,
                iq_dir.display(),
                sj::log::strerror(&e)
            ));
            return;
        }
        let mut data = line.to_vec();
        data.push(b'\n');
        let is_fifo = std::fs::symlink_metadata(&path)
            .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
            .unwrap_or(false);
        if is_fifo {
            match sj::fifo::open_write(&path) {
                Ok(Some(fd)) => {
                    let mut q = WriteQueue::new();
                    q.push(data);
                    match q.flush(&fd) {
                        Ok(true) => {}
                        Ok(false) => self.fifo_writes.push(FifoWrite {
                            fd,
                            q,
                            deadline: Instant::now() + FIFO_WRITE_TTL,
                            path,
                        }),
                        Err(err) => sj::log::warn(&format!(
                            "unable to write {}: {}",
                            path.display(),
                            sj::log::strerror(&err)
                        )),
                    }
                    return;
                }
                // The requester gave up: leave the answer as a file.
                Ok(None) => {}
                Err(err) => {
                    sj::log::warn(&format!(
                        "unable to open {}: {}",
                        path.display(),
                        sj::log::strerror(&err)
                    ));
                    return;
                }
            }
        }
        if let Err(err) = sj::fifo::write_atomic(&path, &data) {
            sj::log::warn(&format!(
                "unable to write {}: {}",
                path.display(),
                sj::log::strerror(&err)
            ));
        }
        paths::prune(&iq_dir, MAX_RESULT_FILES);
    }

    /// A get or set: exactly one answer (RFC 6120 §8.4).
    fn request(&mut self, e: &Element, req: &Request, line: &[u8]) {
        let to = req.from.as_deref();
        let Some(ns) = req.ns().filter(|_| req.well_formed).map(str::to_string) else {
            self.send(stanza::error(to, &req.id, Cond::BadRequest));
            return;
        };
        if ns == sj::ns::ROSTER {
            if req.kind == "set" && roster::push_believed(to, self.acct.full_jid()) {
                if let Some(q) = roster::query(e) {
                    self.roster.apply_push(q);
                    self.save_roster();
                }
                self.send(stanza::result(None, &req.id, ""));
            } else {
                sj::log::warn(&format!(
                    "refused a roster {} from {}",
                    req.kind,
                    to.unwrap_or("(none)")
                ));
                self.send(stanza::error(to, &req.id, Cond::ServiceUnavailable));
            }
            return;
        }
        if let Handler::Exec(p) = paths::handler(self.acct.dir(), &ns) {
            self.spawn(&p, &ns, req, line);
            return;
        }
        let names = paths::handler_namespaces(self.acct.dir());
        let env = builtin::Env {
            now: SystemTime::now(),
            tz_offset: sj::time::local_offset(),
            idle: self.started.elapsed(),
            os: &self.os,
            handler_namespaces: &names,
        };
        if let Some(payload) = builtin::answer(e, &env) {
            self.send(stanza::result(to, &req.id, &payload));
            return;
        }
        if let Some(name) = sj::fifo::list_clients(self.acct.dir()).into_iter().next() {
            let target = self.acct.client_jid(&name);
            let rec = match sj::xml::Top::parse(line) {
                Some(top) => top.rewrite(&[sj::xml::Edit::Set("to", &target)]),
                None => line.to_vec(),
            };
            match String::from_utf8(rec) {
                Ok(r) => {
                    sj::log::trace("delegate", target.as_bytes());
                    self.delegated.insert(
                        (to.unwrap_or("").to_string(), req.id.clone()),
                        Instant::now() + DELEGATION_TTL,
                    );
                    self.send(r);
                    return;
                }
                Err(_) => sj::log::warn("record is not UTF-8; not delegated"),
            }
        }
        self.send(stanza::error(to, &req.id, Cond::ServiceUnavailable));
    }

    fn spawn(&mut self, prog: &Path, ns: &str, req: &Request, line: &[u8]) {
        let to = req.from.as_deref();
        if self.handlers.iter().filter(|h| !h.answered).count() >= MAX_HANDLERS {
            sj::log::warn(&format!("too many handlers running; refused {ns}"));
            self.send(stanza::error(to, &req.id, Cond::ResourceConstraint));
            return;
        }
        let mut cmd = Command::new(prog);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .current_dir(self.acct.dir().path())
            .env("SJ_DIR", self.acct.dir().path())
            .env("SJ_JID", self.acct.full())
            .env("IQ_FROM", to.unwrap_or(""))
            .env("IQ_ID", &req.id)
            .env("IQ_TYPE", &req.kind)
            .env("IQ_NS", ns)
            .process_group(0);
        let spawned = cmd.spawn().and_then(|mut c| {
            let i: OwnedFd = c
                .stdin
                .take()
                .ok_or_else(|| std::io::Error::other("no stdin pipe"))?
                .into();
            let o: OwnedFd = c
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("no stdout pipe"))?
                .into();
            sj::io::set_nonblocking(&i)?;
            sj::io::set_nonblocking(&o)?;
            let pid = i32::try_from(c.id()).map_err(std::io::Error::other)?;
            Ok((Pid::from_raw(pid), i, o))
        });
        match spawned {
            Ok((pid, i, o)) => {
                let mut inq = WriteQueue::new();
                let mut data = line.to_vec();
                data.push(b'\n');
                inq.push(data);
                self.handlers.push(Running {
                    pid,
                    ns: ns.to_string(),
                    to: to.map(str::to_string),
                    id: req.id.clone(),
                    stdin: Some(i),
                    inq,
                    stdout: Some(o),
                    out: Vec::new(),
                    status: None,
                    deadline: Instant::now() + self.timeout,
                    answered: false,
                });
                let n = self.handlers.len() - 1;
                self.feed_handler(n);
            }
            Err(e) => {
                sj::log::warn(&format!(
                    "unable to run {}: {}",
                    prog.display(),
                    sj::log::strerror(&e)
                ));
                self.send(stanza::error(to, &req.id, Cond::ServiceUnavailable));
            }
        }
    }

    fn feed_handler(&mut self, i: usize) {
        let Some(h) = self.handlers.get_mut(i) else {
            return;
        };
        let Some(fd) = &h.stdin else {
            return;
        };
        match h.inq.flush(fd) {
            Ok(true) => h.stdin = None, // all written: close so it sees EOF
            Ok(false) => {}
            Err(_) => {
                // The handler does not read its stdin (EPIPE): fine.
                h.inq.clear();
                h.stdin = None;
            }
        }
    }

    fn read_handler(&mut self, i: usize) {
        let Some(h) = self.handlers.get_mut(i) else {
            return;
        };
        let Some(fd) = &h.stdout else {
            return;
        };
        match sj::io::read_into(fd, &mut h.out) {
            Ok(Read::Data(_)) if h.out.len() > stanza::MAX_ANSWER => {
                sj::log::warn(&format!("handler for {} wrote too much; killed", h.ns));
                let _ = killpg(h.pid, Signal::SIGKILL);
                h.stdout = None;
                h.stdin = None;
                h.answered = true;
                let r = stanza::error(h.to.as_deref(), &h.id, Cond::InternalServerError);
                self.send(r);
            }
            Ok(Read::Data(_)) | Ok(Read::WouldBlock) => {}
            Ok(Read::Eof) | Err(_) => h.stdout = None,
        }
    }

    /// Flush one pending FIFO write; a finished one is emptied here and
    /// forgotten by `forget_flushed` once the turn is over, so the indices
    /// of this turn's poll tags stay valid.
    fn flush_fifo(&mut self, i: usize) {
        let Some(w) = self.fifo_writes.get_mut(i) else {
            return;
        };
        if !matches!(w.q.flush(&w.fd), Ok(false)) {
            w.q.clear();
        }
    }

    fn forget_flushed(&mut self) {
        self.fifo_writes.retain(|w| !w.q.is_empty());
    }

    /// Collect the exit status of finished handlers.
    fn reap(&mut self) {
        for h in &mut self.handlers {
            if h.status.is_some() {
                continue;
            }
            match waitpid(h.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => h.status = Some(code == 0),
                Ok(WaitStatus::Signaled(..)) => h.status = Some(false),
                Ok(_) => {}
                Err(_) => h.status = Some(false),
            }
        }
    }

    /// Answer for every handler that exited and closed its stdout; forget
    /// the reaped ones.
    fn finish_handlers(&mut self) {
        let mut answers = Vec::new();
        self.handlers.retain_mut(|h| {
            if h.answered {
                return h.status.is_none();
            }
            let (Some(ok), None) = (h.status, &h.stdout) else {
                return true;
            };
            if !ok {
                sj::log::warn(&format!("handler for {} failed", h.ns));
            }
            answers.push(stanza::from_handler(h.to.as_deref(), &h.id, ok, &h.out));
            false
        });
        for a in answers {
            self.send(a);
        }
    }
}
