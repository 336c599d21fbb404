//! The session: the client's connection, the poll loop, and the client
//! registered under `DIR/clients/NAME` once bound.
//!
//! Negotiation (header, STARTTLS, SASL, bind) is negotiate.rs's state
//! machine; this file carries out what it decides (the TLS hand-over, the
//! stream restart, the registration) and gives it the accounts on disk
//! (`Disk`). Nothing here blocks except three bounded waits: flushing
//! `<proceed/>` before TLS starts, waiting (≤ 5 s) for sj-proxy to open the
//! new client's `out` FIFO, and the final flush (≤ 2 s) on the way out. The
//! answer to a checked password may be held back (the account's failure
//! record, `sj::authfail`); the loop goes on polling meanwhile, without
//! reading the client.

use crate::control;
use crate::negotiate::{self, Accounts, Action as Step, Link, Negotiation, Scope};
use crate::translate::{self, Action, Inbound, Translator};
use crate::{Opts, Where};
use sj::account::{Account, ClientDir, Dir, Root};
use sj::authfail::{Failures, Gate};
use sj::exit::{Fatal, PROTOCOL, TEMPORARY};
use sj::fifo::LineFifo;
use sj::framer::{Event, FrameError, Framer, Limits, Mode};
use sj::io::{Read, WriteQueue};
use sj::jid::Jid;
use sj::poll::{Interest, PollSet};
use sj::sasl::StoredCredentials;
use sj::ucspi::Handover;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Bytes queued toward `out` before the client is cut off: a MiB that
/// sj-proxy has not read, on top of the longest record.
const OUT_LIMIT: usize = (1 << 20) + sj::framer::MAX_LINE;
/// Bytes queued toward the client before `in` stops being read.
const CLIENT_HIGH_WATER: usize = 1 << 20;
/// Bytes kept for a client whose session waits to be resumed, before the
/// session ends instead (sj-c2s(8), Stream management).
const HIBERNATION_MAX: usize = 32 << 20;
/// Longest line accepted from the `in` FIFO: the library's rule.
const IN_LINE_MAX: usize = sj::framer::MAX_LINE;
/// The largest `state` or `pid` file read.
const SMALL_FILE: u64 = 4096;
/// How to run sj-c2s, for the error about a descriptor it was not given.
const UCSPI_HINT: &str =
    "run sj-c2s under a UCSPI server (tcpserver, s6-tlsd, socat ... EXEC:sj-c2s)";

/// The registered client: `DIR/clients/NAME`, removed on drop.
struct Registration {
    cdir: PathBuf,
    /// Handed over to a resuming sj-c2s (sm.rs): the directory stays.
    keep: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
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
    /// XEP-0352: what waits while the client is inactive.
    held: crate::csi::Held,
    // Last so the FIFOs close before the directory goes.
    _reg: Registration,
}

pub struct Session {
    framer: Framer,
    rfd: OwnedFd,
    wfd: OwnedFd,
    to_client: WriteQueue,
    neg: Negotiation<Disk>,
    /// The wrapper's UCSPI-TLS descriptors, until STARTTLS.
    handover: Option<Handover>,
    /// The account, once authenticated.
    account: Option<Account>,
    client: Option<Client>,
    done: Option<Result<(), Fatal>>,
    peer_closed: bool,
    /// Who ends the stream (`sj::io::End`).
    end: sj::io::End,
    /// The client's input ended (EOF); it is not read any more.
    input_closed: bool,
    /// XEP-0198 with the client, once enabled or resumed (sm.rs).
    sm: Option<crate::sm::ClientSm>,
    /// The connection is gone and the session waits to be resumed until
    /// then (sm.rs).
    hibernating: Option<Instant>,
    resume_window: Duration,
    /// A resuming sj-c2s takes the session over: stop without ending it.
    handing_over: bool,
}

fn io_fatal(what: impl std::fmt::Display, e: &io::Error) -> Fatal {
    Fatal::io(what, e)
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
        if negotiate::valid_name(r, upstream) {
            candidates.push(r.to_string());
        }
    }
    for _ in 0..8 {
        candidates.push(format!("sj-{}", sj::ucspi::random_hex(4)));
    }
    for name in candidates {
        if !negotiate::valid_name(&name, upstream) {
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

/// The accounts on disk, for negotiate.rs: DIR (`-d`) or the account
/// directories under ROOT (`-R`).
struct Disk {
    place: Where,
}

impl Disk {
    /// The directory of the account `bare`.
    fn account_dir(&self, bare: &Jid) -> Option<Dir> {
        match &self.place {
            Where::Dir(d) => Some(d.clone()),
            Where::Root(r) => r.account(bare).ok(),
        }
    }

    /// The failure record a login to `who` counts in: the account's, or
    /// for a name that is no account here, DIR's (-d) or the root's (-R).
    fn record(&self, who: Option<&Jid>) -> Failures {
        match (who.and_then(|b| self.account_dir(b)), &self.place) {
            (Some(d), _) => Failures::at(d.auth_failures()),
            (None, Where::Dir(d)) => Failures::at(d.auth_failures()),
            (None, Where::Root(r)) => Failures::at(r.auth_failures()),
        }
    }

    fn record_error(rec: &Failures, e: &io::Error) {
        sj::log::warn(&format!(
            "unable to update {}: {}",
            rec.path().display(),
            sj::log::strerror(e)
        ));
    }
}

impl Accounts for Disk {
    fn dir_account(&mut self) -> Result<Jid, String> {
        let d = match &self.place {
            Where::Dir(d) => d,
            Where::Root(r) => return Err(format!("{} holds many accounts", r.path().display())),
        };
        dir_account(d).map(|a| a.jid().clone()).ok_or_else(|| {
            format!(
                "unable to tell the account of {}: no JID in its state file and its name is not a JID",
                d.display()
            )
        })
    }

    fn has_domain(&self, domain: &str) -> bool {
        match &self.place {
            Where::Root(r) => root_has_domain(r, domain),
            Where::Dir(d) => dir_account(d).is_some_and(|a| a.domain() == domain),
        }
    }

    fn exists(&self, bare: &Jid) -> bool {
        match &self.place {
            Where::Root(_) => self.account_dir(bare).is_some_and(|d| d.passwd().is_file()),
            Where::Dir(d) => dir_account(d).is_some_and(|a| a.jid() == bare),
        }
    }

    fn credentials(&self, bare: &Jid) -> Vec<StoredCredentials> {
        let Some(dir) = self.account_dir(bare) else {
            return Vec::new();
        };
        match sj::passwd::read(&dir.passwd()) {
            Ok(c) => c,
            Err(e) => {
                sj::log::warn(&format!(
                    "unable to read {}: {}",
                    dir.passwd().display(),
                    sj::log::strerror(&e)
                ));
                Vec::new()
            }
        }
    }

    /// DIR's or the root's `.salt-key`, or, when it cannot be read or
    /// made, one for this process (the salts then change between
    /// connections).
    fn salt_key(&self) -> Vec<u8> {
        let key = match &self.place {
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
            OWN.get_or_init(|| sj::ucspi::random_hex(32).into_bytes())
                .clone()
        })
    }

    fn attempt(&self, who: Option<&Jid>, ok: bool, max_wait: Duration) -> Gate {
        let rec = self.record(who);
        rec.attempt(ok, SystemTime::now(), max_wait)
            .unwrap_or_else(|e| {
                Self::record_error(&rec, &e);
                Gate::Answer {
                    wait: Duration::ZERO,
                    log: (!ok).then_some(0),
                }
            })
    }

    fn failures(&self, who: Option<&Jid>) -> u32 {
        self.record(who).count()
    }

    fn refused(&self) -> Option<u64> {
        let rec = self.record(None);
        rec.refused(SystemTime::now()).unwrap_or_else(|e| {
            Self::record_error(&rec, &e);
            Some(0)
        })
    }
}

impl Session {
    pub fn new(opts: Opts) -> Result<Session, Fatal> {
        // Owned, not copies: closing fd 1 when it is a pipe must close the
        // last descriptor of it in this process (`sj::io::close_stream`).
        // The UCSPI-TLS descriptors are taken with them, before this
        // process opens any of its own.
        let mut fds = sj::ucspi::Inherited::claim(&[0, 1], UCSPI_HINT)?;
        let handover = if opts.tls {
            None
        } else {
            Handover::claim().and_then(|h| {
                h.map_err(|e| sj::log::warn(&format!("{e}; not offering STARTTLS")))
                    .ok()
            })
        };
        let rfd = fds.take(0, "reading from the client")?;
        let wfd = fds.take(1, "writing to the client")?;
        sj::io::set_nonblocking(&rfd).map_err(|e| io_fatal("set fd 0 non-blocking", &e))?;
        sj::io::set_nonblocking(&wfd).map_err(|e| io_fatal("set fd 1 non-blocking", &e))?;

        // A stop ends the stream with `system-shutdown`; a hangup (the
        // terminal of a client run by hand) is a stop too. SIGPIPE stays
        // ignored (the Rust runtime's default): a closed peer shows as
        // EPIPE on write.
        use nix::sys::signal::Signal;
        sj::signal::install(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP], false)
            .map_err(|e| io_fatal("install a signal handler", &e))?;

        let scope = match &opts.place {
            Where::Dir(_) => Scope::One,
            Where::Root(_) => Scope::Many,
        };
        let d = match &opts.place {
            Where::Dir(d) => d.path(),
            Where::Root(r) => r.path(),
        };
        if !d.is_dir() {
            return Err(Fatal::permanent(format!(
                "unable to use {}: not a directory",
                d.display()
            )));
        }
        let link = Link {
            encrypted: opts.tls || sj::ucspi::encrypted(),
            loopback: sj::ucspi::peer_is_loopback(rfd.as_fd()),
            starttls: handover.is_some(),
        };
        let disk = Disk {
            place: opts.place.clone(),
        };
        let neg = Negotiation::new(disk, scope, link, opts.auth_timeout, Instant::now());
        Ok(Session {
            framer: Framer::new(Mode::Stream, Limits::PRE_AUTH),
            rfd,
            wfd,
            to_client: WriteQueue::new(),
            neg,
            handover,
            account: None,
            client: None,
            done: None,
            peer_closed: false,
            end: sj::io::End::Close,
            input_closed: false,
            sm: None,
            hibernating: None,
            resume_window: opts.resume_window,
            handing_over: false,
        })
    }

    fn send(&mut self, data: impl Into<Vec<u8>>) {
        let data = data.into();
        if let Some(sm) = &mut self.sm {
            sm.link.sending(&data);
        }
        // Kept in the queue for the connection that resumes, up to a bound.
        if self.hibernating.is_some() {
            if self
                .sm
                .as_ref()
                .is_some_and(|sm| sm.link.out.bytes() > HIBERNATION_MAX)
            {
                sj::log::warn(&format!(
                    "more than {HIBERNATION_MAX} bytes wait for a client that is gone; the session ends"
                ));
                self.finish_with(Ok(()));
            }
            return;
        }
        sj::log::trace("c<", &data);
        self.to_client.push(data);
    }

    fn finish_with(&mut self, r: Result<(), Fatal>) {
        if self.done.is_none() {
            self.done = Some(r);
        }
    }

    /// Send a stream error and close the stream; the process ends with `code`.
    fn stream_error(&mut self, cond: &str, code: u8, msg: String) {
        if self.done.is_some() {
            return;
        }
        let steps = self.neg.stream_error(cond, code, msg);
        self.apply(steps);
    }

    /// Carry out what negotiation decided.
    fn apply(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Send(s) => self.send(s),
                Step::Log(l) => sj::log::info(&l),
                Step::StartTls => self.start_tls(),
                Step::Authenticated(bare) => self.authenticated(bare),
                Step::Bind { id, requested } => self.bind(&id, requested.as_deref()),
                Step::Resume { previd, h } => self.resume(&previd, h),
                Step::End { code, why, .. } => {
                    self.end = sj::io::End::Close;
                    self.finish_with(Step::result(code, why));
                }
            }
        }
    }

    fn on_frame_error(&mut self, e: FrameError) {
        let msg = format!("client stream: {e}");
        self.stream_error(e.condition.as_str(), PROTOCOL, msg);
    }

    // ---- what negotiation asks for --------------------------------------

    /// The client sent `<starttls/>` and `<proceed/>` is queued: flush it
    /// in clear, then hand the connection to the wrapper.
    fn start_tls(&mut self) {
        let Some(handover) = self.handover.take() else {
            let e = Fatal::permanent("unable to start TLS: no UCSPI-TLS descriptors");
            return self.finish_with(Err(e));
        };
        // <proceed/> must be on the wire, in clear, before TLS starts.
        if let Err(e) = self.drain_client(Duration::from_secs(5)) {
            return self.finish_with(Err(io_fatal("write to the client", &e)));
        }
        match handover.start() {
            // The plain descriptors close here: they are the wrapper's now.
            Ok((rd, wr)) => (self.rfd, self.wfd) = (rd, wr),
            Err(e) => return self.finish_with(Err(e)),
        }
        self.framer.reset();
        self.neg.tls_started();
    }

    /// SASL success is queued: the stream restarts, with the limits for
    /// an authenticated peer.
    fn authenticated(&mut self, bare: Jid) {
        let Some(dir) = self.neg.accounts().account_dir(&bare) else {
            let msg = format!("unable to tell the directory of {bare}");
            return self.stream_error("internal-server-error", TEMPORARY, msg);
        };
        self.account = Some(Account::new(&bare, dir));
        self.framer.reset();
        self.framer.set_limits(Limits::DEFAULT);
    }

    /// Register the client for a bind request and answer it.
    fn bind(&mut self, id: &str, requested: Option<&str>) {
        let Some(acct) = self.account.clone() else {
            return;
        };
        match self.register(&acct, requested) {
            Ok(client) => {
                let up = client.tr.upstream.as_ref().and_then(Jid::resource);
                let steps = self.neg.bound(id, requested, &client.tr.full, up);
                self.client = Some(client);
                self.apply(steps);
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
            keep: false,
        };
        sj::fifo::make(&cdir.in_fifo()).map_err(io("create the client's in FIFO"))?;
        sj::fifo::make(&cdir.out_fifo()).map_err(io("create the client's out FIFO"))?;
        self.open_client(acct, name, cdir, reg, upstream, None)
    }

    /// Open a registered client's FIFOs (`infifo` when it is open
    /// already) and write its pid file.
    fn open_client(
        &self,
        acct: &Account,
        name: String,
        cdir: ClientDir,
        reg: Registration,
        upstream: Option<Jid>,
        infifo: Option<LineFifo>,
    ) -> Result<Client, RegisterError> {
        let io = |what: &'static str| move |e: io::Error| RegisterError::Io(what, e);
        sj::fifo::write_atomic(&cdir.pid(), format!("{}\n", std::process::id()).as_bytes())
            .map_err(io("write the client's pid file"))?;
        let infifo = match infifo {
            Some(f) => f,
            None => LineFifo::open(&cdir.in_fifo(), IN_LINE_MAX)
                .map_err(io("open the client's in FIFO"))?,
        };
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
            held: crate::csi::Held::new(),
            _reg: reg,
        })
    }

    // ---- online -------------------------------------------------------

    /// A first-level element that is not a stanza (`csi::nonza`): true
    /// when it was handled here.
    fn on_nonza(&mut self, rec: &[u8]) -> bool {
        use crate::csi::Nonza;
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        match crate::csi::nonza(rec) {
            Nonza::Stanza => return false,
            Nonza::Inactive => client.held.inactive(),
            Nonza::Active => {
                for r in client.held.active() {
                    self.send(r);
                }
            }
            Nonza::Unsupported => {
                let what = sj::xml::Top::parse(rec)
                    .map_or("?", |t| t.name())
                    .to_string();
                self.stream_error(
                    "unsupported-stanza-type",
                    PROTOCOL,
                    format!("client sent <{what}>, which is no stanza"),
                );
            }
        }
        true
    }

    fn on_stanza(&mut self, rec: &[u8]) {
        if self.on_nonza(rec) {
            return;
        }
        let Some(client) = self.client.as_mut() else {
            return;
        };
        // MAM for the account's own archive is answered here (mam.rs).
        if let Some(reply) = crate::mam::answer(rec, &client.account, &client.tr.full) {
            return self.send(reply);
        }
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
            Inbound::Deliver(b) => {
                for r in client.held.deliver(b) {
                    self.send(r);
                }
            }
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
            if self.done.is_some() || self.neg.holding() {
                return;
            }
            let ev = match self.framer.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => return self.on_frame_error(e),
            };
            match ev {
                Event::Header(h) => {
                    let steps = self.neg.header(&h);
                    self.apply(steps);
                }
                Event::Record(rec) => {
                    if is_control_passwd(&rec) {
                        sj::log::trace("c>", b"<message to='sj-proxy@control.invalid'>[passwd command redacted]</message>");
                    } else {
                        sj::log::trace("c>", &rec);
                    }
                    if self.neg.online() {
                        match sj::sm::kind(&rec) {
                            sj::sm::Kind::Sm if self.on_sm(&rec) => continue,
                            sj::sm::Kind::Stanza => {
                                if let Some(sm) = &mut self.sm {
                                    sm.link.received();
                                }
                            }
                            _ => {}
                        }
                        self.on_stanza(&rec);
                        continue;
                    }
                    let steps = self.neg.element(&rec, Instant::now());
                    self.apply(steps);
                    // A stream restart (STARTTLS, SASL success) has reset
                    // the framer; after bind, stanzas the client pipelined
                    // are still buffered and go on.
                    if self.neg.awaiting_header() {
                        return;
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
                    let end = self.neg.end_stream();
                    self.send(end);
                    self.end = sj::io::End::Answer;
                    return self.finish_with(Ok(()));
                }
            }
        }
    }

    /// The client's end of input: the session ends (a failure once
    /// authenticated; a probe that never logged in is none).
    fn end_of_input(&mut self) {
        if self.hibernate("the client closed the connection") {
            return;
        }
        let r = if self.neg.authenticated() {
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
        if sj::signal::stopping() && self.taken_over() {
            return false;
        }
        if self.hibernating.is_some_and(|t| Instant::now() >= t) {
            self.hibernation_over();
            return false;
        }
        if sj::signal::stopping() {
            if self.neg.header_sent() {
                self.stream_error("system-shutdown", 0, String::new());
            } else {
                self.finish_with(Ok(()));
            }
            return false;
        }
        if let Some(steps) = self.neg.release(Instant::now()) {
            self.apply(steps);
            // What the client pipelined behind it goes on now.
            self.on_client_data();
            if self.input_closed && !self.neg.holding() {
                self.end_of_input();
            }
        }
        if self.done.is_none() {
            let expired = self.neg.expire(Instant::now());
            self.apply(expired);
        }
        self.done.is_none()
    }

    /// When to stop waiting: the negotiation's next deadline or held answer.
    fn wake_at(&self) -> Option<Instant> {
        match (self.neg.wake(), self.hibernating) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What to wait for this turn, in the order it is handled.
    fn poll_set(&self) -> PollSet<'_, Token> {
        let mut set = PollSet::with_capacity(5);
        if let Some(fd) = sj::signal::fd() {
            set.add(fd, Token::Signal, Interest::Read);
        }
        if let Some(c) = &self.client {
            if let Some(fd) = c.infifo.fd() {
                // Not reading while the client is behind, or gone and
                // waiting for resumption (what comes meanwhile waits in
                // the pipe and the archive, not in a queue that dies with
                // this process), but still told when mirrord closes its end.
                let want = if self.hibernating.is_none() && self.to_client.len() < CLIENT_HIGH_WATER
                {
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
            let want = if self.neg.holding() {
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
                if !self.neg.holding() {
                    self.peer_closed = true;
                    self.end_of_input();
                }
                // Else the held answer, and what the client sent after
                // it, are still answered (a client may close its sending
                // side and read on): then the end.
            }
            Err(e) => {
                self.peer_closed = true;
                if !self.hibernate(&format!("unable to read: {}", sj::log::strerror(&e))) {
                    self.finish_with(Err(io_fatal("read from the client", &e)));
                }
            }
        }
    }

    /// Write what this turn queued now, not a poll later; a queue that
    /// would block waits for POLLOUT (all descriptors are non-blocking).
    fn flush_queues(&mut self) {
        if let Some(sm) = &mut self.sm {
            sm.link.write_ahead();
        }
        if let Err(e) = self.to_client.flush(&self.wfd) {
            self.peer_closed = true;
            if !self.hibernate(&format!("unable to write: {}", sj::log::strerror(&e))) {
                return self.finish_with(Err(io_fatal("write to the client", &e)));
            }
        }
        if let Some(c) = self.client.as_mut() {
            if let Err(e) = c.outq.flush(&c.outfd) {
                let msg = format!("unable to write {}/out: {}", c.name, sj::log::strerror(&e));
                self.stream_error("remote-connection-failed", TEMPORARY, msg);
            }
        }
        self.sm_turn();
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
            if c.tr.available && !self.handing_over {
                c.outq.push(b"<presence type='unavailable'/>\n".to_vec());
            }
            if let Err(e) = c.outq.drain(&c.outfd, Duration::from_secs(2)) {
                sj::log::warn(&format!(
                    "unable to write {}/out: {}",
                    c.name,
                    sj::log::strerror(&e)
                ));
            }
            if let Some(sm) = &mut self.sm {
                if self.handing_over {
                    let _ = sm.turn(c.outq.is_empty(), false);
                    save_gone(sm, &c, self.resume_window);
                    c._reg.keep = true;
                } else {
                    sm.clear();
                }
            }
            if self.handing_over {
                sj::log::info(&format!(
                    "{} handed over to a resumed connection",
                    c.tr.full
                ));
            } else {
                sj::log::info(&format!("{} left", c.tr.full));
            }
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

// ---- XEP-0198 (sm.rs) ---------------------------------------------------

impl Session {
    /// An sm:3 nonza from the client, online; false when it is not one.
    fn on_sm(&mut self, rec: &[u8]) -> bool {
        use crate::sm::{ClientSm, FromClient};
        let Some(parsed) = sj::sm::parse(rec) else {
            return false;
        };
        let n = match parsed {
            Ok(n) => n,
            Err(why) => {
                self.stream_error(
                    "undefined-condition",
                    PROTOCOL,
                    format!("client sent {why}"),
                );
                return true;
            }
        };
        let reply = match (&mut self.sm, n) {
            (None, sj::sm::Nonza::Enable { .. }) => {
                let Some(c) = self.client.as_ref() else {
                    return true;
                };
                let sm = ClientSm::enable(&c.cdir, &c.account, &c.name, self.resume_window);
                let reply = sm.enabled(self.resume_window);
                sj::log::info(&format!("{}: stream management on", c.tr.full));
                self.sm = Some(sm);
                FromClient::Reply(reply)
            }
            (None, other) => FromClient::Fail(
                "unsupported-stanza-type",
                format!("client sent {other:?} without enabling stream management"),
            ),
            (Some(sm), n) => sm.on_nonza(n),
        };
        match reply {
            FromClient::Nothing => {}
            FromClient::Reply(s) => {
                sj::log::trace("c<", s.as_bytes());
                self.to_client.push(s.into_bytes());
            }
            FromClient::Fail(cond, why) => self.stream_error(cond, PROTOCOL, why),
        }
        true
    }

    /// End of a turn: acknowledgements and requests, the counts saved.
    fn sm_turn(&mut self) {
        let handed_on = self.client.as_ref().is_none_or(|c| c.outq.is_empty());
        let connected = self.hibernating.is_none() && self.done.is_none() && !self.input_closed;
        let Some(sm) = &mut self.sm else {
            return;
        };
        if let Some(s) = sm.turn(handed_on, connected) {
            sj::log::trace("c<", s.as_bytes());
            self.to_client.push(s.into_bytes());
            if self.to_client.flush(&self.wfd).is_err() {
                // Seen again, and handled, on the next turn's flush.
            }
        }
    }

    /// The connection is gone: with resumption on, keep the session for
    /// the window, with `in` left unread (what comes meanwhile waits in the
    /// pipe and the archive). False when there is nothing to keep.
    fn hibernate(&mut self, why: &str) -> bool {
        if self.done.is_some() || self.hibernating.is_some() {
            return false;
        }
        let (Some(sm), Some(c)) = (&mut self.sm, &self.client) else {
            return false;
        };
        save_gone(sm, c, self.resume_window);
        sj::log::info(&format!(
            "{}: {why}; keeping the session {} s for resumption",
            c.tr.full,
            self.resume_window.as_secs()
        ));
        self.hibernating = Some(Instant::now() + self.resume_window);
        self.input_closed = true;
        self.peer_closed = true;
        self.to_client.clear();
        true
    }

    fn hibernation_over(&mut self) {
        if let Some(c) = &self.client {
            sj::log::info(&format!(
                "{}: not resumed within {} s; the session ends",
                c.tr.full,
                self.resume_window.as_secs()
            ));
            if let Some(sm) = &self.sm {
                crate::sm::leave_rewind(&c.account, &c.name, &sm.link.out);
            }
        }
        self.finish_with(Ok(()));
    }

    /// A stop: a resuming sj-c2s asked for the session (`sm-takeover`).
    fn taken_over(&mut self) -> bool {
        let asked = self
            .client
            .as_ref()
            .is_some_and(|c| self.sm.is_some() && crate::sm::takeover_asked(&c.cdir));
        if asked {
            self.handing_over = true;
            if self.hibernating.is_none() {
                self.to_client.push(b"</stream:stream>".to_vec());
            }
            self.finish_with(Ok(()));
        }
        asked
    }

    /// `<resume/>` before bind: take the session over from the files (and
    /// the process that keeps them), or answer `<failed/>`.
    fn resume(&mut self, previd: &str, h: u32) {
        use crate::sm::Refused;
        let Some(acct) = self.account.clone() else {
            return;
        };
        // `in` is opened before the old process lets go of it, so that
        // mirrord always finds a reader; it is read only once the old
        // process has put what it read in the queue.
        let infifo = crate::sm::name_of(previd)
            .and_then(|n| acct.dir().client(&n).ok())
            .filter(|c| sj::fifo::check_dir(c.path()).is_ok())
            .and_then(|c| LineFifo::open(&c.in_fifo(), IN_LINE_MAX).ok());
        let found = match crate::sm::take_over(&acct, previd, h) {
            Ok(f) => f,
            Err(Refused::NotFound(why)) => {
                sj::log::info(&format!("refused to resume a session: {why}"));
                let f = crate::sm::failed("item-not-found", None);
                sj::log::trace("c<", f.as_bytes());
                self.to_client.push(f.into_bytes());
                return;
            }
            Err(Refused::TooMany(why)) => {
                return self.stream_error("undefined-condition", PROTOCOL, why)
            }
        };
        let upstream = read_state_jid(acct.dir()).filter(|j| j.bare() == *acct.jid());
        let reg = Registration {
            cdir: found.cdir.path().to_path_buf(),
            keep: false,
        };
        match self.open_client(
            &acct,
            found.name.clone(),
            found.cdir.clone(),
            reg,
            upstream,
            infifo,
        ) {
            Ok(mut client) => {
                client.tr.carbons = found.carbons;
                client.tr.available = found.available;
                let again = found.sm.link.out.len();
                let bytes = found.sm.resumed(previd);
                sj::log::info(&format!(
                    "{} resumed ({again} stanza(s) sent again)",
                    client.tr.full
                ));
                sj::log::trace("c<", &bytes);
                self.to_client.push(bytes);
                self.client = Some(client);
                self.sm = Some(found.sm);
                self.neg.resumed();
            }
            Err(RegisterError::NoReader) => self.stream_error(
                "remote-connection-failed",
                TEMPORARY,
                "sj-proxy does not read the client's out FIFO: is it running?".into(),
            ),
            Err(RegisterError::Io(what, e)) => self.stream_error(
                "internal-server-error",
                TEMPORARY,
                format!("unable to {what}: {}", sj::log::strerror(&e)),
            ),
        }
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

/// Save the session of a client that went, as a resuming process finds it.
fn save_gone(sm: &mut crate::sm::ClientSm, c: &Client, window: Duration) {
    sm.save(
        &c.account,
        c.tr.carbons,
        c.tr.available,
        Some(SystemTime::now()),
        window,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
