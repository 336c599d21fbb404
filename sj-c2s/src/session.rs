//! The session state machine and the poll loop.
//!
//! Header → Features (STARTTLS, SASL) → stream restart → Bind → Online.
//! Nothing here blocks except three bounded waits: flushing `<proceed/>`
//! before TLS starts, waiting (≤ 5 s) for sj-proxy to open the new client's
//! `out` FIFO, and the final flush (≤ 2 s) on the way out. The answer to a
//! checked password may be held back (the account's failure record,
//! `sj::authfail`); the loop goes on polling meanwhile, without reading
//! the client.

use crate::control;
use crate::translate::{self, Action, Inbound, Translator};
use crate::{Opts, Where};
use sj::account::{Account, ClientDir, Dir, Root};
use sj::authfail::{Failures, Gate};
use sj::escape;
use sj::exit::{Fatal, PERMANENT, PROTOCOL, TEMPORARY};
use sj::fifo::LineFifo;
use sj::framer::{Event, FrameError, Framer, Limits, Mode, StreamHeader};
use sj::io::{Read, WriteQueue};
use sj::jid::Jid;
use sj::path::{component, Kind};
use sj::poll::{Interest, PollSet};
use sj::sasl::{self, Hash, ScramServer, StoredCredentials, NS as NS_SASL};
use sj::xml::Element;
use std::fs;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_STREAMS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// SASL attempts before the stream is closed.
const MAX_AUTH_FAILURES: u32 = 3;
/// Time allowed from authentication to a bound resource.
const BIND_TIMEOUT: Duration = Duration::from_secs(60);
/// What a held answer keeps back from the authentication deadline, so the
/// answer is on the wire before the deadline's stream error would be.
const HOLD_MARGIN: Duration = Duration::from_millis(250);
/// Bytes queued toward `out` before the client is cut off: a MiB that
/// sj-proxy has not read, on top of the longest record.
const OUT_LIMIT: usize = (1 << 20) + sj::framer::MAX_LINE;
/// Bytes queued toward the client before `in` stops being read.
const CLIENT_HIGH_WATER: usize = 1 << 20;
/// Longest line accepted from the `in` FIFO: the library's rule.
const IN_LINE_MAX: usize = sj::framer::MAX_LINE;
/// The largest `state` or `pid` file read.
const SMALL_FILE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the (re)started stream header.
    Header,
    /// Features sent; STARTTLS/SASL (before auth) or bind (after).
    Negotiate,
    /// Resource bound, records flowing.
    Online,
}

enum SaslState {
    None,
    /// `<auth/>` without an initial response: waiting for client-first.
    AwaitFirst(Hash),
    /// server-first sent: to the account, or (None) a made-up challenge to
    /// a name with no credentials here, which fails at the next step.
    AwaitFinal(Box<ScramServer>, Option<Account>, String),
    /// Success computed and sent; waiting for the restart.
    Done,
}

/// The outcome of a checked password, until the account's failure record
/// lets it be told.
enum Verdict {
    Success(Account, String),
    Failure(&'static str),
}

struct Held {
    until: Instant,
    verdict: Verdict,
}

/// The registered client: `DIR/clients/NAME`, removed on drop.
struct Registration {
    cdir: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.cdir) {
            if e.kind() != io::ErrorKind::NotFound {
                sj::log::warn(&format!(
                    "unable to remove {}: {}",
                    self.cdir.display(),
                    sj::log::strerror(&e)
                ));
            }
        }
    }
}

struct Client {
    name: String,
    account: Account,
    /// `clients/NAME/in`, read-only so that mirrord closing its end shows
    /// (as POLLHUP, then end of input): see `dropped_by_mirrord`.
    infifo: LineFifo,
    /// `clients/NAME`, where mirrord leaves its `dropped` marker.
    cdir: ClientDir,
    outfd: OwnedFd,
    outq: WriteQueue,
    tr: Translator,
    // Last so the FIFOs close before the directory goes.
    _reg: Registration,
}

struct Tls {
    ctl: i32,
    rd: i32,
    wr: i32,
}

pub struct Session {
    opts: Opts,
    framer: Framer,
    rfd: OwnedFd,
    wfd: OwnedFd,
    to_client: WriteQueue,
    phase: Phase,
    header_sent: bool,
    /// The domain this stream is for (the `from` of our header).
    domain: Option<String>,
    /// With -d: the account of DIR, known before auth.
    dir_account: Option<Account>,
    encrypted: bool,
    loopback: bool,
    starttls: Option<Tls>,
    sasl: SaslState,
    failures: u32,
    /// A checked password's answer, held back until its slot.
    held: Option<Held>,
    authed: Option<Account>,
    client: Option<Client>,
    done: Option<Result<(), Fatal>>,
    deadline: Option<Instant>,
    peer_closed: bool,
    /// Who ends the stream (`sj::io::End`).
    end: sj::io::End,
    /// The client's input ended (EOF); it is not read any more.
    input_closed: bool,
}

fn io_fatal(what: impl std::fmt::Display, e: &io::Error) -> Fatal {
    Fatal::io(what, e)
}

/// A few random bytes as hex (stream ids, generated resources).
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let ok = fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Is the remote end of this connection a loopback address, going by the
/// environment the UCSPI server set?
pub fn remote_is_loopback() -> bool {
    let mut vars = vec![
        "TCPREMOTEIP".to_string(),
        "TCP6REMOTEIP".to_string(),
        "SOCAT_PEERADDR".to_string(),
    ];
    if let Ok(proto) = std::env::var("PROTO") {
        if !proto.is_empty() && proto.bytes().all(|b| b.is_ascii_alphanumeric()) {
            vars.push(format!("{proto}REMOTEIP"));
        }
    }
    let mut seen = false;
    for v in vars {
        let Ok(val) = std::env::var(&v) else { continue };
        let s = val.trim().trim_start_matches('[').trim_end_matches(']');
        let s = s.strip_prefix("::ffff:").unwrap_or(s);
        match s.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_loopback() => seen = true,
            // Any non-loopback address named anywhere wins.
            Ok(_) => return false,
            Err(_) => {}
        }
    }
    seen
}

fn env_fd(name: &str) -> Option<i32> {
    std::env::var(name)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&n| n >= 0)
}

/// The JID of DIR/state: the upstream session's full JID once online.
pub fn read_state_jid(dir: &Dir) -> Option<Jid> {
    match sj::state::load(dir) {
        Ok(s) => s.map(|s| s.jid).filter(|j| j.local().is_some()),
        Err(e) => {
            sj::log::warn(&format!(
                "unable to read {}: {}",
                dir.state().display(),
                sj::log::strerror(&e)
            ));
            None
        }
    }
}

/// The account of DIR: DIR/state's JID, or DIR's name if it is a JID.
fn dir_account(dir: &Dir) -> Option<Account> {
    let bare = read_state_jid(dir).map(|j| j.bare()).or_else(|| {
        let base = dir.path().file_name()?.to_str()?;
        let name = sj::path::decode(base).unwrap_or_else(|| base.to_string());
        Jid::parse(&name)
            .ok()
            .filter(|j| j.local().is_some())
            .map(|j| j.bare())
    })?;
    Some(Account::new(&bare, dir.clone()))
}

/// Does ROOT hold an account directory in this domain?
fn root_has_domain(root: &Root, domain: &str) -> bool {
    let Ok(rd) = fs::read_dir(root.path()) else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(name) = e.file_name().into_string() else {
            return false;
        };
        let Some(dec) = sj::path::decode(&name) else {
            return false;
        };
        Jid::parse(&dec)
            .map(|j| j.local().is_some() && j.domain() == domain && e.path().is_dir())
            .unwrap_or(false)
    })
}

/// Is `name` usable as a resource and a client directory name as it is?
pub fn valid_name(name: &str, upstream: Option<&str>) -> bool {
    name_problem(name, upstream).is_none()
}

/// Why `name` cannot be bound as it is, if it cannot.
fn name_problem(name: &str, upstream: Option<&str>) -> Option<String> {
    if let Err(e) = sj::jid::resource_allowed(name) {
        return Some(e.0.to_string());
    }
    if name.len() > 64 {
        return Some("longer than 64 bytes".into());
    }
    if component(Kind::Client, name).map_or(true, |c| c != name) {
        return Some("not a client directory name as it is".into());
    }
    if Some(name) == upstream {
        return Some("the upstream session's resource".into());
    }
    None
}

/// A client directory left by an sj-c2s that was killed: its pid file names
/// a process that no longer exists. Raw clients (no pid file) are never stale.
fn is_stale(cdir: &ClientDir) -> bool {
    // Never read through a symbolic link put in a client's place.
    if sj::fifo::check_dir(cdir.path()).is_err() {
        return false;
    }
    let Some(pid) = sj::fifo::read_file(&cdir.pid(), SMALL_FILE)
        .ok()
        .and_then(|s| String::from_utf8_lossy(&s).trim().parse::<i32>().ok())
        .filter(|&p| p > 1)
    else {
        return false;
    };
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Create `clients/NAME` atomically: the requested name if free and valid,
/// else a generated one. Returns the name.
fn claim_name(dir: &Dir, requested: Option<&str>, upstream: Option<&str>) -> io::Result<String> {
    sj::fifo::make_subdir(&dir.clients())?;
    let mut candidates: Vec<String> = Vec::new();
    if let Some(r) = requested {
        if valid_name(r, upstream) {
            candidates.push(r.to_string());
        }
    }
    for _ in 0..8 {
        candidates.push(format!("sj-{}", random_hex(4)));
    }
    for name in candidates {
        if !valid_name(&name, upstream) {
            continue;
        }
        let cdir = dir.client(&name).map_err(io::Error::other)?;
        for attempt in 0..2 {
            match fs::DirBuilder::new().mode(0o700).create(cdir.path()) {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if attempt == 0 && is_stale(&cdir) {
                        sj::log::info(&format!("removing stale client {name}"));
                        let _ = fs::remove_dir_all(cdir.path());
                        continue;
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free client name",
    ))
}

impl Session {
    pub fn new(opts: Opts) -> Result<Session, Fatal> {
        // Owned, not copies: closing fd 1 when it is a pipe must close the
        // last descriptor of it in this process (`sj::io::close_stream`).
        for n in [0, 1] {
            // SAFETY: only asks whether the descriptor is open.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
            if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) {
                return Err(io_fatal(format!("use fd {n}"), &e.into()));
            }
        }
        // SAFETY: fds 0 and 1 are the wrapper's connection, open (checked
        // above) and used by nothing else here: nothing in sj-c2s prints
        // to stdout.
        let (rfd, wfd) = unsafe { (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1)) };
        sj::io::set_nonblocking(&rfd).map_err(|e| io_fatal("set fd 0 non-blocking", &e))?;
        sj::io::set_nonblocking(&wfd).map_err(|e| io_fatal("set fd 1 non-blocking", &e))?;

        // A stop ends the stream with `system-shutdown`; a hangup (the
        // terminal of a client run by hand) is a stop too. SIGPIPE stays
        // ignored (the Rust runtime's default): a closed peer shows as
        // EPIPE on write.
        use nix::sys::signal::Signal;
        sj::signal::install(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP], false)
            .map_err(|e| io_fatal("install a signal handler", &e))?;

        let starttls = match (
            env_fd("SSLCTLFD"),
            env_fd("SSLREADFD"),
            env_fd("SSLWRITEFD"),
        ) {
            (Some(ctl), Some(rd), Some(wr)) if !opts.tls => Some(Tls { ctl, rd, wr }),
            _ => None,
        };
        // s6-tlsd and friends set SSL_PROTOCOL once they did the handshake.
        let encrypted =
            opts.tls || (starttls.is_none() && std::env::var_os("SSL_PROTOCOL").is_some());
        let dir_account = match &opts.place {
            Where::Dir(d) => {
                if !d.path().is_dir() {
                    return Err(Fatal::permanent(format!(
                        "unable to use {}: not a directory",
                        d.display()
                    )));
                }
                // May be unknown while sj-proxy is (re)connecting; checked
                // again when the stream header arrives.
                dir_account(d)
            }
            Where::Root(r) => {
                if !r.path().is_dir() {
                    return Err(Fatal::permanent(format!(
                        "unable to use {}: not a directory",
                        r.path().display()
                    )));
                }
                None
            }
        };
        let auth_deadline = Instant::now() + opts.auth_timeout;
        Ok(Session {
            opts,
            framer: Framer::new(Mode::Stream, Limits::PRE_AUTH),
            rfd,
            wfd,
            to_client: WriteQueue::new(),
            phase: Phase::Header,
            header_sent: false,
            domain: None,
            dir_account,
            encrypted,
            loopback: remote_is_loopback(),
            starttls,
            sasl: SaslState::None,
            failures: 0,
            held: None,
            authed: None,
            client: None,
            done: None,
            deadline: Some(auth_deadline),
            peer_closed: false,
            end: sj::io::End::Close,
            input_closed: false,
        })
    }

    fn send(&mut self, data: impl Into<Vec<u8>>) {
        let data = data.into();
        sj::log::trace("c<", &data);
        self.to_client.push(data);
    }

    fn finish_with(&mut self, r: Result<(), Fatal>) {
        if self.done.is_none() {
            self.done = Some(r);
        }
    }

    /// Our stream header, for `domain`.
    fn header(&self) -> String {
        let from = self
            .domain
            .as_deref()
            .map(|d| format!(" from='{}'", escape::attr(d)))
            .unwrap_or_default();
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' id='{}'{from} version='1.0' xml:lang='en'>",
            random_hex(8)
        )
    }

    /// Send a stream error and close the stream; the process ends with `code`.
    fn stream_error(&mut self, cond: &str, code: u8, msg: String) {
        if self.done.is_some() {
            return;
        }
        if !self.header_sent {
            let h = self.header();
            self.send(h);
            self.header_sent = true;
        }
        self.send(format!(
            "<stream:error><{cond} xmlns='{NS_STREAMS_ERR}'/></stream:error></stream:stream>"
        ));
        self.end = sj::io::End::Close;
        let r = if code == 0 {
            Ok(())
        } else {
            Err(Fatal::new(code, msg))
        };
        self.finish_with(r);
    }

    fn on_frame_error(&mut self, e: FrameError) {
        let msg = format!("client stream: {e}");
        self.stream_error(e.condition.as_str(), PROTOCOL, msg);
    }

    // ---- negotiation -------------------------------------------------

    fn on_header(&mut self, h: StreamHeader) {
        // Our header goes first, errors after it (RFC 6120 §4.9.1.1).
        let to = h.get("to").map(str::to_string);
        let to_domain = to
            .as_deref()
            .and_then(|t| Jid::parse(t).ok())
            .and_then(|j| {
                (j.local().is_none() && j.resource().is_none()).then(|| j.domain().to_string())
            });
        if let (Where::Dir(d), None) = (&self.opts.place, &self.dir_account) {
            self.dir_account = dir_account(d);
            if self.dir_account.is_none() {
                let msg = format!(
                    "unable to tell the account of {}: no JID in its state file and its name is not a JID",
                    d.display()
                );
                return self.stream_error("remote-connection-failed", TEMPORARY, msg);
            }
        }
        let expected: Option<String> = match (&self.authed, &self.dir_account) {
            (Some(a), _) | (None, Some(a)) => Some(a.domain().to_string()),
            _ => None,
        };
        self.domain = expected.clone().or_else(|| to_domain.clone());
        let h_ns = h.get("xmlns:stream");
        if h_ns.is_some() && h_ns != Some(NS_STREAM) {
            return self.stream_error("invalid-namespace", PROTOCOL, "bad stream namespace".into());
        }
        if !h.is_jabber_client() {
            return self.stream_error(
                "invalid-namespace",
                PROTOCOL,
                "default namespace is not jabber:client".into(),
            );
        }
        match (&expected, &to_domain) {
            (Some(e), Some(t)) if e != t => {
                return self.stream_error(
                    "host-unknown",
                    PROTOCOL,
                    format!("stream to {t}, not {e}"),
                );
            }
            (None, Some(t)) => {
                if let Where::Root(r) = &self.opts.place {
                    if !root_has_domain(r, t) {
                        let r = format!("stream to {t}: no account in that domain");
                        return self.stream_error("host-unknown", PROTOCOL, r);
                    }
                }
            }
            (None, None) => {
                return self.stream_error("host-unknown", PROTOCOL, "stream without to".into());
            }
            _ if to.is_some() && to_domain.is_none() => {
                return self.stream_error("host-unknown", PROTOCOL, "bad to".into());
            }
            _ => {}
        }
        let v1 = h
            .get("version")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.trim().parse::<u32>().ok())
            .is_some_and(|m| m >= 1);
        if !v1 {
            return self.stream_error(
                "unsupported-version",
                PROTOCOL,
                "stream version below 1.0".into(),
            );
        }
        let hdr = self.header();
        self.send(hdr);
        self.header_sent = true;
        let features = if self.authed.is_some() {
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>".to_string()
        } else {
            let mut f = String::from("<stream:features>");
            if self.starttls.is_some() && !self.encrypted {
                f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            }
            f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>");
            if self.plain_allowed() {
                f.push_str("<mechanism>PLAIN</mechanism>");
            }
            f.push_str("</mechanisms></stream:features>");
            f
        };
        self.send(features);
        self.phase = Phase::Negotiate;
    }

    fn plain_allowed(&self) -> bool {
        self.encrypted || self.loopback
    }

    fn on_negotiate(&mut self, rec: &[u8]) {
        let Some(el) = Element::parse(rec) else {
            return self.stream_error("not-well-formed", PROTOCOL, "unparsable element".into());
        };
        if self.authed.is_some() {
            return self.on_bind(&el);
        }
        match (el.ns.as_str(), el.local_name()) {
            (NS_TLS, "starttls") if self.starttls.is_some() && !self.encrypted => self.start_tls(),
            (NS_SASL, "auth") => self.on_auth(&el),
            (NS_SASL, "response") => self.on_response(&el),
            (NS_SASL, "abort") => {
                self.sasl = SaslState::None;
                self.sasl_failure("aborted");
            }
            _ => self.stream_error(
                "not-authorized",
                PROTOCOL,
                format!("<{}/> before authentication", el.name),
            ),
        }
    }

    fn start_tls(&mut self) {
        let Some(tls) = self.starttls.take() else {
            return;
        };
        self.send(format!("<proceed xmlns='{NS_TLS}'/>"));
        // <proceed/> must be on the wire, in clear, before TLS starts.
        if let Err(e) = self.drain_client(Duration::from_secs(5)) {
            return self.finish_with(Err(io_fatal("write to the client", &e)));
        }
        // SAFETY: the UCSPI-TLS wrapper handed us these descriptors by
        // number in the environment; nothing else in this process owns them.
        let (ctl, rd, wr) = unsafe {
            (
                OwnedFd::from_raw_fd(tls.ctl),
                OwnedFd::from_raw_fd(tls.rd),
                OwnedFd::from_raw_fd(tls.wr),
            )
        };
        if let Err(e) = sj::io::write_all(&ctl, b"y") {
            return self.finish_with(Err(io_fatal("start TLS through SSLCTLFD", &e)));
        }
        for fd in [&rd, &wr] {
            if let Err(e) = sj::io::set_nonblocking(fd) {
                return self.finish_with(Err(io_fatal("set the TLS descriptors non-blocking", &e)));
            }
        }
        // Keep the control descriptor open for the wrapper's sake.
        std::mem::forget(ctl);
        self.rfd = rd;
        self.wfd = wr;
        self.encrypted = true;
        self.framer.reset();
        self.header_sent = false;
        self.phase = Phase::Header;
    }

    /// Send a SASL failure; the third in a connection ends the stream.
    /// Logging is the caller's (through the failure record).
    fn sasl_failure(&mut self, cond: &str) {
        self.failures += 1;
        self.send(format!("<failure xmlns='{NS_SASL}'><{cond}/></failure>"));
        if self.failures >= MAX_AUTH_FAILURES {
            // No line of its own: the failures were logged, within the
            // account's limit, and one line per connection would undo it.
            self.stream_error("not-authorized", PERMANENT, String::new());
        }
    }

    /// The failure record a login to `acct` counts in: the account's, or
    /// for a name that is no account here, DIR's (-d) or the root's (-R).
    fn record(&self, acct: Option<&Account>) -> Failures {
        match (acct, &self.opts.place) {
            (Some(a), _) => Failures::at(a.dir().auth_failures()),
            (None, Where::Dir(d)) => Failures::at(d.auth_failures()),
            (None, Where::Root(r)) => Failures::at(r.auth_failures()),
        }
    }

    /// One failure log line, when the record's limit lets it through.
    fn log_failure(log: Option<u64>, what: &str) {
        match log {
            Some(0) => sj::log::info(&format!("authentication failed: {what}")),
            Some(n) => sj::log::info(&format!(
                "authentication failed: {what} ({n} more since the last such line, not logged)"
            )),
            None => {}
        }
    }

    /// A failure that checked no password (malformed, wrong mechanism or
    /// authorization identity): answered at once, logged within the limit.
    fn refuse(&mut self, acct: Option<&Account>, cond: &'static str, what: String) {
        let rec = self.record(acct);
        let log = rec.refused(SystemTime::now()).unwrap_or_else(|e| {
            Self::record_error(&rec, &e);
            Some(0)
        });
        Self::log_failure(log, &what);
        self.sasl_failure(cond);
    }

    fn record_error(rec: &Failures, e: &io::Error) {
        sj::log::warn(&format!(
            "unable to update {}: {}",
            rec.path().display(),
            sj::log::strerror(e)
        ));
    }

    /// A password was checked: its answer waits for the account's next
    /// slot (`sj::authfail`), success and failure alike, so that neither
    /// the answer nor its delay tells anything before the slot.
    fn checked(&mut self, acct: Option<&Account>, verdict: Verdict, what: String) {
        let ok = matches!(verdict, Verdict::Success(..));
        let now = Instant::now();
        let max_wait = self
            .deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now))
            .saturating_sub(HOLD_MARGIN);
        let rec = self.record(acct);
        let gate = rec
            .attempt(ok, SystemTime::now(), max_wait)
            .unwrap_or_else(|e| {
                Self::record_error(&rec, &e);
                Gate::Answer {
                    wait: Duration::ZERO,
                    log: (!ok).then_some(0),
                }
            });
        match gate {
            Gate::Busy { log } => {
                let n = rec.count();
                Self::log_failure(
                    log,
                    &format!("{what}: refused unchecked, {n} failures in a row"),
                );
                self.sasl_failure("temporary-auth-failure");
            }
            Gate::Answer { wait, log } => {
                if !ok {
                    Self::log_failure(log, &what);
                }
                if wait.is_zero() {
                    self.release(verdict);
                } else {
                    self.held = Some(Held {
                        until: now + wait,
                        verdict,
                    });
                }
            }
        }
    }

    fn release(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Success(acct, msg) => self.succeed(acct, msg),
            Verdict::Failure(cond) => self.sasl_failure(cond),
        }
    }

    /// The bare JID a SASL username claims: `user@domain` of this stream.
    fn claimed(&self, authcid: &str) -> Option<Jid> {
        let domain = match (&self.opts.place, &self.dir_account) {
            (Where::Dir(_), Some(a)) => a.domain().to_string(),
            (Where::Dir(_), None) => return None,
            (Where::Root(_), _) => self.domain.clone()?,
        };
        Jid::parse(&format!("{authcid}@{domain}"))
            .ok()
            .filter(|j| j.is_bare() && j.local().is_some())
    }

    /// The account `authcid` names, if it may log in here.
    fn resolve(&self, authcid: &str) -> Option<Account> {
        let bare = self.claimed(authcid)?;
        match &self.opts.place {
            Where::Dir(_) => self.dir_account.clone().filter(|a| *a.jid() == bare),
            Where::Root(root) => {
                let dir = root.account(&bare).ok()?;
                dir.passwd().is_file().then(|| Account::new(&bare, dir))
            }
        }
    }

    /// The authorization identity rule of RFC 6120 §6.3.8, the same for
    /// every mechanism: none, or exactly the bare JID the username claims;
    /// anything else is `invalid-authzid` (§6.5.6), decided before any
    /// account is looked up so the answer tells nothing about accounts.
    fn authzid_ok(authzid: Option<&str>, claimed: Option<&Jid>) -> bool {
        match authzid.filter(|a| !a.is_empty()) {
            None => true,
            Some(a) => claimed.is_some_and(|c| Jid::parse(a).ok().as_ref() == Some(c)),
        }
    }

    /// The key for made-up salts: DIR's or the root's `.salt-key`, or, when
    /// it cannot be read or made, one for this process (the salts then
    /// change between connections).
    fn salt_key(&self) -> Vec<u8> {
        let key = match &self.opts.place {
            Where::Dir(d) => d.salt_key(),
            Where::Root(r) => r.salt_key(),
        };
        sj::passwd::salt_key(&key).unwrap_or_else(|e| {
            sj::log::warn(&format!(
                "unable to use {}: {}",
                key.display(),
                sj::log::strerror(&e)
            ));
            static OWN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            OWN.get_or_init(|| random_hex(32).into_bytes()).clone()
        })
    }

    fn credentials(acct: &Account) -> Vec<sasl::StoredCredentials> {
        match sj::passwd::read(&acct.dir().passwd()) {
            Ok(c) => c,
            Err(e) => {
                sj::log::warn(&format!(
                    "unable to read {}: {}",
                    acct.dir().passwd().display(),
                    sj::log::strerror(&e)
                ));
                Vec::new()
            }
        }
    }

    fn payload(el: &Element) -> Option<Vec<u8>> {
        let t = el.text();
        let t = t.trim();
        if t.is_empty() || t == "=" {
            return Some(Vec::new());
        }
        sasl::b64decode(t).ok()
    }

    fn on_auth(&mut self, el: &Element) {
        if !matches!(self.sasl, SaslState::None) {
            self.sasl = SaslState::None;
            return self.refuse(None, "malformed-request", "second <auth/>".into());
        }
        let mech = el.attr("mechanism").unwrap_or("");
        let Some(data) = Self::payload(el) else {
            return self.refuse(None, "incorrect-encoding", "bad base64 in <auth/>".into());
        };
        match mech {
            "SCRAM-SHA-256" | "SCRAM-SHA-1" => {
                let hash = if mech == "SCRAM-SHA-1" {
                    Hash::Sha1
                } else {
                    Hash::Sha256
                };
                if data.is_empty() {
                    self.sasl = SaslState::AwaitFirst(hash);
                    self.send(format!("<challenge xmlns='{NS_SASL}'/>"));
                } else {
                    self.scram_first(hash, &data);
                }
            }
            "PLAIN" if self.plain_allowed() => self.plain(&data),
            _ => {
                let what = format!("mechanism {:?} not offered", mech);
                self.refuse(None, "invalid-mechanism", what)
            }
        }
    }

    fn scram_first(&mut self, hash: Hash, data: &[u8]) {
        let mut srv = ScramServer::new(hash, None);
        let user = match srv.client_first(data) {
            Ok(u) => u,
            Err(e) => {
                self.sasl = SaslState::None;
                return self.refuse(
                    None,
                    "malformed-request",
                    format!("SCRAM client-first: {e}"),
                );
            }
        };
        let claimed = self.claimed(&user);
        if !Self::authzid_ok(srv.authzid(), claimed.as_ref()) {
            self.sasl = SaslState::None;
            let what = format!(
                "user {user:?} asked to act as {:?}",
                srv.authzid().unwrap_or("")
            );
            return self.refuse(None, "invalid-authzid", what);
        }
        let acct = self.resolve(&user);
        let creds = acct.as_ref().and_then(|a| {
            let all = Self::credentials(a);
            sj::passwd::find(&all, hash).cloned()
        });
        let (creds, what) = match (creds, &acct) {
            (Some(c), Some(a)) => (c, format!("wrong password for {}", a.bare())),
            // No such user, or no credentials of this hash: a challenge
            // like a real one, the same on every try, that no password
            // passes. The exchange then fails where a wrong password does.
            (_, a) => {
                let name = claimed.as_ref().map_or(user.clone(), Jid::to_string);
                let salt = sasl::fake_salt(&self.salt_key(), hash, &name);
                let what = match a {
                    Some(a) => format!("no {} credentials for {}", hash.mechanism(), a.bare()),
                    None => format!("unknown user {user:?}"),
                };
                (
                    StoredCredentials::unmatchable(hash, salt, sj::passwd::ITERATIONS),
                    what,
                )
            }
        };
        let first = srv.server_first(&creds);
        self.send(sasl::element("challenge", None, &first));
        self.sasl = SaslState::AwaitFinal(Box::new(srv), acct, what);
    }

    fn on_response(&mut self, el: &Element) {
        let Some(data) = Self::payload(el) else {
            self.sasl = SaslState::None;
            return self.refuse(
                None,
                "incorrect-encoding",
                "bad base64 in <response/>".into(),
            );
        };
        match std::mem::replace(&mut self.sasl, SaslState::None) {
            SaslState::AwaitFirst(hash) => self.scram_first(hash, &data),
            SaslState::AwaitFinal(mut srv, acct, what) => match (srv.client_final(&data), acct) {
                (Ok(v), Some(a)) => {
                    let msg = sasl::element("success", None, &v);
                    self.checked(Some(&a.clone()), Verdict::Success(a, msg), String::new());
                }
                (Ok(_), None) => {
                    // Unreachable: no proof matches random keys.
                    self.checked(None, Verdict::Failure("not-authorized"), what);
                }
                (Err(e), acct) => {
                    let what = format!("{what} (SCRAM: {e})");
                    self.checked(acct.as_ref(), Verdict::Failure("not-authorized"), what);
                }
            },
            _ => self.refuse(None, "malformed-request", "<response/> out of order".into()),
        }
    }

    fn plain(&mut self, data: &[u8]) {
        let Ok((authzid, authcid, pw)) = sasl::plain_decode(data) else {
            return self.refuse(None, "malformed-request", "malformed PLAIN message".into());
        };
        let claimed = self.claimed(&authcid);
        if !Self::authzid_ok(Some(&authzid), claimed.as_ref()) {
            let what = format!("user {authcid:?} asked to act as {authzid:?}");
            return self.refuse(None, "invalid-authzid", what);
        }
        let acct = self.resolve(&authcid);
        let ok = match &acct {
            Some(a) => Self::credentials(a).iter().any(|c| c.verify_plain(&pw)),
            None => {
                // The same work as a real check, so the time tells nothing.
                let salt = vec![0u8; 16];
                StoredCredentials::unmatchable(Hash::Sha256, salt, sj::passwd::ITERATIONS)
                    .verify_plain(&pw)
            }
        };
        match (ok, acct) {
            (true, Some(a)) => {
                let msg = format!("<success xmlns='{NS_SASL}'/>");
                self.checked(Some(&a.clone()), Verdict::Success(a, msg), String::new());
            }
            (_, a) => {
                let what = match &a {
                    Some(a) => format!("wrong password for {} (PLAIN)", a.bare()),
                    None => format!("unknown user {authcid:?} (PLAIN)"),
                };
                self.checked(a.as_ref(), Verdict::Failure("not-authorized"), what);
            }
        }
    }

    fn succeed(&mut self, acct: Account, msg: String) {
        sj::log::info(&format!("authenticated as {}", acct.bare()));
        self.send(msg);
        self.deadline = Some(Instant::now() + BIND_TIMEOUT);
        self.domain = Some(acct.domain().to_string());
        self.authed = Some(acct);
        self.sasl = SaslState::Done;
        self.framer.reset();
        self.framer.set_limits(Limits::DEFAULT);
        self.header_sent = false;
        self.phase = Phase::Header;
    }

    fn on_bind(&mut self, el: &Element) {
        let id = el.attr("id").unwrap_or("").to_string();
        let bind = el.child("bind", translate::NS_BIND);
        if el.name != "iq" || el.attr("type") != Some("set") || bind.is_none() {
            if el.name == "iq" || el.name == "message" || el.name == "presence" {
                return self.stream_error(
                    "not-authorized",
                    PROTOCOL,
                    format!("<{}/> before bind", el.name),
                );
            }
            return self.stream_error(
                "unsupported-stanza-type",
                PROTOCOL,
                format!("<{}/> before bind", el.name),
            );
        }
        let requested = bind
            .and_then(|b| b.child("resource", translate::NS_BIND))
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty());
        let Some(acct) = self.authed.clone() else {
            return;
        };
        match self.register(&acct, requested.as_deref()) {
            Ok(client) => {
                let full = client.tr.full.to_string();
                match requested.as_deref().filter(|r| *r != client.name) {
                    // A refused name is replaced, not an error (RFC 6120
                    // §7.6.1 lets the server pick): the client goes on with
                    // the JID the result names.
                    Some(r) => {
                        let up = client.tr.upstream.as_ref().and_then(Jid::resource);
                        let why = name_problem(r, up).unwrap_or_else(|| "in use".into());
                        sj::log::info(&format!("bound {full} instead of {r:?}: {why}"));
                    }
                    None => sj::log::info(&format!("bound {full}")),
                }
                self.send(format!(
                    "<iq type='result' id='{}'><bind xmlns='{}'><jid>{}</jid></bind></iq>",
                    escape::attr(&id),
                    translate::NS_BIND,
                    escape::text(&full)
                ));
                self.client = Some(client);
                self.phase = Phase::Online;
                self.deadline = None;
            }
            Err(RegisterError::NoReader) => self.stream_error(
                "remote-connection-failed",
                TEMPORARY,
                format!(
                    "sj-proxy does not read {}: is it running?",
                    acct.dir().clients().display()
                ),
            ),
            Err(RegisterError::Io(what, e)) => self.stream_error(
                "internal-server-error",
                TEMPORARY,
                format!("unable to {what}: {}", sj::log::strerror(&e)),
            ),
        }
    }

    fn register(&self, acct: &Account, requested: Option<&str>) -> Result<Client, RegisterError> {
        let upstream = read_state_jid(acct.dir()).filter(|j| j.bare() == *acct.jid());
        let up_res = upstream
            .as_ref()
            .and_then(|j| j.resource())
            .map(str::to_string);
        let io = |what: &'static str| move |e: io::Error| RegisterError::Io(what, e);
        let name = claim_name(acct.dir(), requested, up_res.as_deref())
            .map_err(io("create a client directory"))?;
        let cdir = acct
            .dir()
            .client(&name)
            .map_err(|e| RegisterError::Io("create a client directory", io::Error::other(e)))?;
        let reg = Registration {
            cdir: cdir.path().to_path_buf(),
        };
        sj::fifo::make(&cdir.in_fifo()).map_err(io("create the client's in FIFO"))?;
        sj::fifo::make(&cdir.out_fifo()).map_err(io("create the client's out FIFO"))?;
        sj::fifo::write_atomic(&cdir.pid(), format!("{}\n", std::process::id()).as_bytes())
            .map_err(io("write the client's pid file"))?;
        let infifo = LineFifo::open(&cdir.in_fifo(), IN_LINE_MAX)
            .map_err(io("open the client's in FIFO"))?;
        // sj-proxy notices the new directory by itself; give it a moment.
        let give_up = Instant::now() + Duration::from_secs(5);
        let outfd = loop {
            match sj::fifo::open_write(&cdir.out_fifo())
                .map_err(io("open the client's out FIFO"))?
            {
                Some(fd) => break fd,
                None if Instant::now() < give_up && !sj::signal::stopping() => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                None => return Err(RegisterError::NoReader),
            }
        };
        let full = acct.jid().with_resource(&name).map_err(|e| {
            RegisterError::Io("make the bound JID", io::Error::other(e.to_string()))
        })?;
        Ok(Client {
            name,
            account: acct.clone(),
            infifo,
            cdir,
            outfd,
            outq: WriteQueue::new(),
            tr: Translator::new(acct.jid().clone(), full, upstream),
            _reg: reg,
        })
    }

    // ---- online -------------------------------------------------------

    fn on_stanza(&mut self, rec: &[u8]) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let acts = client.tr.outbound(rec);
        for a in acts {
            match a {
                Action::Out(r) => {
                    let Some(client) = self.client.as_mut() else {
                        return;
                    };
                    sj::log::trace("out<", &r);
                    client.outq.push(r);
                    if client.outq.len() > OUT_LIMIT {
                        let msg = format!("{}: sj-proxy is not reading out", client.name);
                        return self.stream_error("resource-constraint", TEMPORARY, msg);
                    }
                }
                Action::Client(b) => self.send(b),
                Action::Control(text) => {
                    let Some(client) = self.client.as_ref() else {
                        return;
                    };
                    let reply = control::run(client.account.dir(), &client.name, &text);
                    let msg = translate::control_message(&client.tr.full, &reply);
                    self.send(msg);
                }
                Action::StreamError(c) => {
                    return self.stream_error(
                        c,
                        PROTOCOL,
                        format!("client sent a bad stanza ({c})"),
                    )
                }
            }
        }
    }

    fn on_in_line(&mut self, line: &[u8]) {
        let rec = match sj::framer::canonical_record(line, Limits::DEFAULT) {
            Ok(r) => r,
            Err(e) => {
                sj::log::warn(&format!("dropped an invalid record from in: {e}"));
                return;
            }
        };
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut verdict = client.tr.inbound(&rec);
        if verdict == Inbound::Stranger {
            let up = read_state_jid(client.account.dir()).filter(|j| j.bare() == client.tr.bare);
            if up != client.tr.upstream {
                client.tr.upstream = up;
                verdict = client.tr.inbound(&rec);
            }
        }
        match verdict {
            Inbound::Deliver(b) => self.send(b),
            Inbound::Drop(Some(why)) => sj::log::warn(&format!("{}: {why}", client.name)),
            Inbound::Drop(None) => {}
            Inbound::Stranger => sj::log::info(&format!(
                "{}: dropped a record for another resource",
                client.name
            )),
        }
    }

    fn on_client_data(&mut self) {
        loop {
            // A held answer comes before anything the client sent after it.
            if self.done.is_some() || self.held.is_some() {
                return;
            }
            let ev = match self.framer.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => return self.on_frame_error(e),
            };
            match ev {
                Event::Header(h) => {
                    if self.phase != Phase::Header {
                        return self.stream_error(
                            "bad-format",
                            PROTOCOL,
                            "second stream header".into(),
                        );
                    }
                    self.on_header(h);
                }
                Event::Record(rec) => {
                    if is_control_passwd(&rec) {
                        sj::log::trace("c>", b"<message to='sj-proxy@control.invalid'>[passwd command redacted]</message>");
                    } else {
                        sj::log::trace("c>", &rec);
                    }
                    match self.phase {
                        Phase::Header => {
                            return self.stream_error(
                                "bad-format",
                                PROTOCOL,
                                "element before the stream header".into(),
                            )
                        }
                        Phase::Negotiate => {
                            self.on_negotiate(&rec);
                            // A stream restart (STARTTLS, SASL success) has
                            // reset the framer; after bind, stanzas the client
                            // pipelined are still buffered and go on.
                            if self.phase == Phase::Header {
                                return;
                            }
                        }
                        Phase::Online => self.on_stanza(&rec),
                    }
                }
                Event::StreamError(rec) => {
                    sj::log::info(&format!(
                        "client sent a stream error: {}",
                        String::from_utf8_lossy(&rec).trim_end()
                    ));
                    self.send("</stream:stream>");
                    self.end = sj::io::End::Answer;
                    return self.finish_with(Ok(()));
                }
                // Client streams never skip (their limits are fatal): the
                // client is the peer itself.
                Event::Dropped(d) => return self.on_frame_error(d.reason),
                Event::End => {
                    if !self.header_sent {
                        let h = self.header();
                        self.send(h);
                        self.header_sent = true;
                    }
                    self.send("</stream:stream>");
                    self.end = sj::io::End::Answer;
                    return self.finish_with(Ok(()));
                }
            }
        }
    }

    /// The client's end of input: the session ends (a failure once
    /// authenticated; a probe that never logged in is none).
    fn end_of_input(&mut self) {
        let r = if self.authed.is_some() {
            Err(Fatal::temporary("client closed the connection"))
        } else {
            Ok(())
        };
        self.finish_with(r);
    }

    /// Flush the client queue, waiting at most `max`.
    fn drain_client(&mut self, max: Duration) -> io::Result<()> {
        self.to_client.drain(&self.wfd, max)
    }

    pub fn run(mut self) -> Result<(), Fatal> {
        let mut buf = Vec::with_capacity(64 * 1024);
        'turn: while self.done.is_none() && self.before_wait() {
            let ready = self
                .poll_set()
                .wait(self.wake_at())
                .map_err(|e| io_fatal("poll", &e))?;
            for (token, r) in ready {
                match token {
                    // Back to the top, where a stop is seen.
                    Token::Signal => {
                        sj::signal::drain();
                        continue 'turn;
                    }
                    Token::In => {
                        self.on_in_ready(r);
                        if self.done.is_some() {
                            break 'turn;
                        }
                    }
                    Token::ClientRead => self.on_client_readable(&mut buf),
                    // Flushed below, as every turn.
                    Token::ClientWrite | Token::OutWrite => {}
                }
            }
            self.flush_queues();
        }
        self.shutdown()
    }

    /// What comes due before waiting: a stop signal, a held answer whose
    /// time has come, the negotiation deadline. False once the session is
    /// over.
    fn before_wait(&mut self) -> bool {
        if sj::signal::stopping() {
            if self.header_sent {
                self.stream_error("system-shutdown", 0, String::new());
            } else {
                self.finish_with(Ok(()));
            }
            return false;
        }
        if self
            .held
            .as_ref()
            .is_some_and(|h| Instant::now() >= h.until)
        {
            if let Some(h) = self.held.take() {
                self.release(h.verdict);
            }
            // What the client pipelined behind it goes on now.
            self.on_client_data();
            if self.input_closed && self.held.is_none() {
                self.end_of_input();
            }
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let why = if self.authed.is_some() {
                "no resource bound in time".to_string()
            } else {
                format!(
                    "not authenticated within {} s",
                    self.opts.auth_timeout.as_secs()
                )
            };
            self.stream_error("connection-timeout", TEMPORARY, why);
        }
        self.done.is_none()
    }

    /// When to stop waiting: the negotiation deadline, or a held answer's
    /// time if that comes first.
    fn wake_at(&self) -> Option<Instant> {
        let d = self.deadline?;
        Some(self.held.as_ref().map_or(d, |h| d.min(h.until)))
    }

    /// What to wait for this turn, in the order it is handled.
    fn poll_set(&self) -> PollSet<'_, Token> {
        let mut set = PollSet::with_capacity(5);
        if let Some(fd) = sj::signal::fd() {
            set.add(fd, Token::Signal, Interest::Read);
        }
        if let Some(c) = &self.client {
            if let Some(fd) = c.infifo.fd() {
                // Not reading while the client is behind, but still told
                // when mirrord closes its end.
                let want = if self.to_client.len() < CLIENT_HIGH_WATER {
                    Interest::Read
                } else {
                    Interest::Hangup
                };
                set.add(fd, Token::In, want);
            }
        }
        // The client is not read while an answer is held back (a hangup
        // still shows), nor after its end of input.
        if !self.input_closed {
            let want = if self.held.is_some() {
                Interest::Hangup
            } else {
                Interest::Read
            };
            set.add(self.rfd.as_fd(), Token::ClientRead, want);
        }
        if !self.to_client.is_empty() {
            set.add(self.wfd.as_fd(), Token::ClientWrite, Interest::Write);
        }
        if let Some(c) = self.client.as_ref().filter(|c| !c.outq.is_empty()) {
            set.add(c.outfd.as_fd(), Token::OutWrite, Interest::Write);
        }
        set
    }

    /// `in` is readable, or mirrord closed its end.
    fn on_in_ready(&mut self, r: sj::poll::Ready) {
        if r.hangup() && self.dropped_by_mirrord() {
            return;
        }
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let got = match c.infifo.read() {
            Ok(got) => got,
            Err(e) => {
                let msg = format!("unable to read {}/in: {}", c.name, sj::log::strerror(&e));
                return self.stream_error("internal-server-error", TEMPORARY, msg);
            }
        };
        if got.cut > 0 {
            sj::log::warn(&format!(
                "{}/in: dropped an incomplete line ({} bytes) its writer left when it closed",
                c.name, got.cut
            ));
        }
        sj::io::warn_overlong(got.overlong, IN_LINE_MAX, &format!("{}/in", c.name));
        for l in got.lines {
            if !l.iter().all(u8::is_ascii_whitespace) {
                self.on_in_line(&l);
            }
        }
    }

    /// One read from the client, and what it completed.
    fn on_client_readable(&mut self, buf: &mut Vec<u8>) {
        buf.clear();
        match sj::io::read_into(&self.rfd, buf) {
            Ok(Read::Data(_)) => {
                self.framer.feed(buf);
                self.on_client_data();
            }
            Ok(Read::WouldBlock) => {}
            Ok(Read::Eof) => {
                self.input_closed = true;
                if self.held.is_none() {
                    self.peer_closed = true;
                    self.end_of_input();
                }
                // Else the held answer, and what the client sent after
                // it, are still answered (a client may close its sending
                // side and read on): then the end.
            }
            Err(e) => {
                self.peer_closed = true;
                self.finish_with(Err(io_fatal("read from the client", &e)));
            }
        }
    }

    /// Write what this turn queued now, not a poll later; a queue that
    /// would block waits for POLLOUT (all descriptors are non-blocking).
    fn flush_queues(&mut self) {
        if let Err(e) = self.to_client.flush(&self.wfd) {
            self.peer_closed = true;
            return self.finish_with(Err(io_fatal("write to the client", &e)));
        }
        if let Some(c) = self.client.as_mut() {
            if let Err(e) = c.outq.flush(&c.outfd) {
                let msg = format!("unable to write {}/out: {}", c.name, sj::log::strerror(&e));
                self.stream_error("remote-connection-failed", TEMPORARY, msg);
            }
        }
    }

    /// mirrord closed its end of `in`: if it left its `dropped` marker,
    /// this client fell too far behind and is not written to any more
    /// (mirrord(8)); end the stream so it reconnects rather than wait for
    /// records that never come. Without the marker mirrord stopped or was
    /// restarted: `in` is read to its end and opened again.
    fn dropped_by_mirrord(&mut self) -> bool {
        let Some(c) = self.client.as_ref() else {
            return false;
        };
        let marked = fs::symlink_metadata(c.cdir.dropped()).is_ok_and(|m| m.is_file());
        if marked {
            let msg = format!(
                "{}: mirrord dropped this client: it fell more than mirrord's queue bound behind",
                c.name
            );
            self.stream_error("resource-constraint", TEMPORARY, msg);
        }
        marked
    }

    fn shutdown(mut self) -> Result<(), Fatal> {
        if let Some(mut c) = self.client.take() {
            if c.tr.available {
                c.outq.push(b"<presence type='unavailable'/>\n".to_vec());
            }
            if let Err(e) = c.outq.drain(&c.outfd, Duration::from_secs(2)) {
                sj::log::warn(&format!(
                    "unable to write {}/out: {}",
                    c.name,
                    sj::log::strerror(&e)
                ));
            }
            sj::log::info(&format!("{} left", c.tr.full));
            drop(c);
        }
        // Every close path ends here: what is queued (the stream error and
        // `</stream:stream>` among it), then the lingering close. A peer
        // that is gone makes it short (EOF, or EPIPE on write).
        let c = sj::io::close_stream(
            &self.rfd,
            &mut self.wfd,
            &mut self.to_client,
            sj::io::Linger::DEFAULT,
            self.end,
        );
        if c.unsent > 0 && !self.peer_closed {
            sj::log::warn(&format!(
                "closing the stream with {} bytes the client did not take",
                c.unsent
            ));
        }
        self.done.take().unwrap_or(Ok(()))
    }
}

/// What each descriptor of a turn's poll set is.
enum Token {
    Signal,
    In,
    ClientRead,
    ClientWrite,
    OutWrite,
}

/// A message to the control contact that may carry a password.
fn is_control_passwd(rec: &[u8]) -> bool {
    let has = |n: &[u8]| rec.windows(n.len()).any(|w| w == n);
    has(translate::CONTROL.as_bytes()) && has(b"passwd")
}

enum RegisterError {
    NoReader,
    Io(&'static str, io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("phone", Some("sj-proxy")));
        assert!(!valid_name("sj-proxy", Some("sj-proxy")));
        assert!(!valid_name("a/b", None));
        assert!(!valid_name("..", None));
        assert!(!valid_name("in", None));
        assert!(!valid_name("", None));
        assert!(!valid_name("with space", None));
    }

    #[test]
    fn claim_requested_then_generated() {
        let d = std::env::temp_dir().join(format!("sj-c2s-claim-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let c = d.join("clients");
        let acct = Dir::new(&d);
        assert_eq!(
            claim_name(&acct, Some("phone"), None).expect("claim"),
            "phone"
        );
        let second = claim_name(&acct, Some("phone"), None).expect("claim");
        assert!(second.starts_with("sj-") && second != "phone");
        let up = claim_name(&acct, Some("sj-proxy"), Some("sj-proxy")).expect("claim");
        assert_ne!(up, "sj-proxy");
        // A dead sj-c2s's directory is reclaimed; a live one's or a raw client's is not.
        fs::write(c.join("phone/pid"), "999999999\n").expect("w");
        assert_eq!(
            claim_name(&acct, Some("phone"), None).expect("claim"),
            "phone"
        );
        fs::write(c.join("phone/pid"), format!("{}\n", std::process::id())).expect("w");
        assert_ne!(
            claim_name(&acct, Some("phone"), None).expect("claim"),
            "phone"
        );
        fs::remove_file(c.join("phone/pid")).expect("rm");
        assert_ne!(
            claim_name(&acct, Some("phone"), None).expect("claim"),
            "phone"
        );
        let odd = claim_name(&acct, Some("../x"), None).expect("claim");
        assert!(odd.starts_with("sj-"));
        assert!(c.join("phone").is_dir());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn state_and_dir_accounts() {
        let d = std::env::temp_dir().join(format!("sj-c2s-acct-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let a = d.join("alice@localhost");
        fs::create_dir_all(&a).expect("mkdir");
        assert_eq!(
            dir_account(&Dir::new(&a)).expect("acct").bare(),
            "alice@localhost"
        );
        let other = d.join("plain");
        fs::create_dir_all(&other).expect("mkdir");
        assert!(dir_account(&Dir::new(&other)).is_none());
        fs::write(
            other.join("state"),
            "online Bob@Example.org/sj-proxy 1700000000\n",
        )
        .expect("w");
        assert_eq!(
            dir_account(&Dir::new(&other)).expect("acct").bare(),
            "bob@example.org"
        );
        assert_eq!(
            read_state_jid(&Dir::new(&other)).expect("jid").to_string(),
            "bob@example.org/sj-proxy"
        );
        assert!(root_has_domain(&Root::new(&d), "localhost"));
        assert!(!root_has_domain(&Root::new(&d), "example.com"));
        fs::remove_dir_all(&d).ok();
    }
}
