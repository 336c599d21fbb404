//! The online event loop: one poll set recomputed each turn from buffer
//! state, moving records between upstream, the daemons, `DIR/in` and the
//! clients according to `route`.

use crate::route::{self, Dest, Origin};
use crate::upstream::Upstream;
use sj::account::Account;
use sj::child::Child;
use sj::exit::{Fatal, OK, TEMPORARY};
use sj::fifo::LineFifo;
use sj::framer::{canonical_record, Dropped, Event, Limits};
use sj::io::{LineReader, Read, WriteQueue};
use sj::poll::{Interest, PollSet};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Stop reading local sources while this much waits for the server.
const UPSTREAM_HIGH: usize = 4 << 20;
/// Records kept for a daemon that is down, before the newest are refused.
const CHILD_QUEUE_MAX: usize = 32 << 20;
/// Stop reading the server while a running daemon has this much waiting:
/// a slow daemon slows the upstream (TCP pushes back on the server)
/// instead of losing what the server delivered.
const CHILD_HIGH: usize = 1 << 20;
/// How long a stop waits for the daemons to drain and the server to take
/// what is queued, before the stream is closed regardless.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest line accepted from a FIFO or a daemon: the library's rule.
const LINE_MAX: usize = sj::framer::MAX_LINE;
/// How often `DIR/clients` is rescanned and children reaped and restarted
/// without being woken for it (no inotify; a restart's backoff is over).
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// The four daemons, in the order they are started.
pub const DAEMONS: [&str; 4] = ["messaged", "presenced", "iqd", "mirrord"];

struct Daemon {
    child: Child,
    queue: WriteQueue,
    lines: LineReader,
}

pub struct Options {
    pub verbose: bool,
    /// Seconds of upstream silence before a keepalive ping.
    pub keepalive: Duration,
    /// Seconds to wait for any data after a keepalive ping.
    pub keepalive_timeout: Duration,
    /// The upstream session was resumed (XEP-0198): the daemons are told
    /// with SJ_SM_RESUMED=1.
    pub resumed: bool,
}

pub struct Router {
    up: Upstream,
    up_queue: WriteQueue,
    acct: Account,
    daemons: Vec<Daemon>,
    dir_in: LineFifo,
    /// Each client's `out` FIFO, by name.
    clients: BTreeMap<String, LineFifo>,
    watcher: sj::fifo::ClientWatcher,
    opts: Options,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    ping_seq: u64,
    stopping: Option<Instant>,
    /// How the stream to the server ends, once that is decided: a stream
    /// error and/or `</stream:stream>`, or nothing (the server is gone).
    tail: Option<Vec<u8>>,
    /// Who ends the stream (`sj::io::End`), with `tail`.
    end: sj::io::End,
    drops: DropLog,
    /// The account archive (`crate::archive`), unless switched off.
    archive: Option<crate::archive::Archive>,
    /// Who is in which group chat (`rooms`), and what the clients asked.
    shared: crate::shared::Shared,
    /// XEP-0198 with the server, when enabled (crate::sm).
    sm: Option<crate::sm::UpSm>,
}

/// Stanzas dropped for a limit are logged one line each, up to
/// `DROP_LINES` a minute; past that they are counted, and the count is
/// logged when the minute is over: a flood cannot flood the log.
struct DropLog {
    since: Instant,
    lines: u32,
    quiet: u64,
}

const DROP_LINES: u32 = 10;
const DROP_WINDOW: Duration = Duration::from_secs(60);

impl DropLog {
    fn new() -> DropLog {
        DropLog {
            since: Instant::now(),
            lines: 0,
            quiet: 0,
        }
    }

    /// Log `line`, or count it if this minute had its share.
    fn note(&mut self, line: impl FnOnce() -> String) {
        self.roll();
        if self.lines < DROP_LINES {
            self.lines += 1;
            sj::log::warn(&line());
        } else {
            self.quiet += 1;
        }
    }

    /// A new minute: say how many went unlogged in the last.
    fn roll(&mut self) {
        if self.since.elapsed() < DROP_WINDOW {
            return;
        }
        self.flush();
        self.since = Instant::now();
        self.lines = 0;
    }

    fn flush(&mut self) {
        if self.quiet > 0 {
            sj::log::warn(&format!(
                "dropped {} more stanza(s) from the server for a limit (policy-violation), not logged one by one",
                std::mem::take(&mut self.quiet)
            ));
        }
    }
}

fn daemon_index(d: &Dest) -> Option<usize> {
    match d {
        Dest::Messaged => Some(0),
        Dest::Presenced => Some(1),
        Dest::Iqd => Some(2),
        Dest::Mirror => Some(3),
        _ => None,
    }
}

impl Router {
    pub fn new(up: Upstream, acct: Account, opts: Options) -> Result<Router, Fatal> {
        let dir = acct.dir();
        let in_path = dir.in_fifo();
        sj::fifo::make(&in_path)
            .map_err(|e| Fatal::io(format!("create {}", in_path.display()), &e))?;
        let dir_in = LineFifo::open(&in_path, LINE_MAX)
            .map_err(|e| Fatal::io(format!("open {}", in_path.display()), &e))?;
        let watcher = sj::fifo::ClientWatcher::new(dir)
            .map_err(|e| Fatal::io(format!("watch {}", dir.clients().display()), &e))?;
        let mut daemons = Vec::new();
        for name in DAEMONS {
            let mut args = Vec::new();
            if opts.verbose {
                args.push("-v".to_string());
            }
            args.extend([
                "-d".to_string(),
                dir.display().to_string(),
                acct.full().to_string(),
            ]);
            let mut env = vec![
                ("SJ_DIR".to_string(), dir.display().to_string()),
                ("SJ_JID".to_string(), acct.full().to_string()),
            ];
            if opts.resumed {
                env.push(("SJ_SM_RESUMED".to_string(), "1".to_string()));
            }
            daemons.push(Daemon {
                child: Child::new(name, &sj::child::locate(name), args, env),
                queue: WriteQueue::new(),
                lines: LineReader::new(LINE_MAX),
            });
        }
        let archive = crate::archive::Archive::open(&acct)?;
        Ok(Router {
            archive,
            up,
            up_queue: WriteQueue::new(),
            acct,
            daemons,
            dir_in,
            clients: BTreeMap::new(),
            watcher,
            opts,
            last_heard: Instant::now(),
            ping_sent: None,
            ping_seq: 0,
            stopping: None,
            tail: None,
            end: sj::io::End::Close,
            drops: DropLog::new(),
            shared: crate::shared::Shared::new(),
            sm: None,
        })
    }

    /// Stream management is on: what a resumed session did not get
    /// acknowledged goes first, then a failed resumption's messages.
    pub fn stream_management(&mut self, mut sm: crate::sm::UpSm) {
        for r in sm.take_resend() {
            sj::log::trace(">>", &r);
            self.up_queue.push(r);
        }
        let pending = std::mem::take(&mut sm.pending);
        self.sm = Some(sm);
        for r in pending {
            self.push_up(r);
        }
    }

    /// Queue a record for the server; with stream management a stanza is
    /// numbered and kept until acknowledged.
    fn push_up(&mut self, rec: Vec<u8>) {
        if let Some(sm) = &mut self.sm {
            sm.link.sending(&rec);
        }
        self.up_queue.push(rec);
    }

    /// Write what is queued for the server (the queue file first).
    fn flush_up(&mut self) -> Result<(), Fatal> {
        if let Some(sm) = &mut self.sm {
            sm.link.write_ahead();
        }
        self.up_queue
            .flush(&self.up.wfd)
            .map(|_| ())
            .map_err(|e| Fatal::io("write to the server", &e))
    }

    /// End of a turn with stream management: the inbound count is
    /// durable once the daemons have every record routed; `<a/>` and
    /// `<r/>` go out.
    fn sm_turn(&mut self) -> Result<(), Fatal> {
        let handed_on = self.daemons.iter().all(|d| d.queue.is_empty());
        let Some(sm) = &mut self.sm else {
            return Ok(());
        };
        if let Some(nonzas) = sm.turn(handed_on) {
            sj::log::trace(">>", &nonzas);
            self.up_queue.push(nonzas);
            return self.flush_up();
        }
        Ok(())
    }

    /// Start the daemons. A daemon that cannot start is retried with backoff.
    pub fn start_daemons(&mut self) {
        for d in &mut self.daemons {
            if let Err(e) = d.child.spawn() {
                sj::log::warn(&format!(
                    "unable to start {}: {}",
                    d.child.name,
                    sj::log::strerror(&e)
                ));
                d.child.died();
            }
        }
    }

    fn deliver(&mut self, dest: Dest, rec: Vec<u8>) {
        match dest {
            Dest::Upstream => {
                sj::log::trace(">>", &rec);
                self.push_up(rec);
            }
            Dest::Own => self.own(&rec),
            Dest::Drop(why) => sj::log::warn(&format!("dropping a record: {why}")),
            d => {
                let Some(i) = daemon_index(&d) else { return };
                let dm = &mut self.daemons[i];
                if dm.queue.len() + rec.len() > CHILD_QUEUE_MAX {
                    sj::log::warn(&format!(
                        "dropping a record for {}: its queue is full",
                        dm.child.name
                    ));
                    return;
                }
                dm.queue.push(rec);
            }
        }
    }

    /// Records addressed to sj-proxy itself: replies to its pings, the
    /// server's pings.
    fn own(&mut self, rec: &[u8]) {
        let top = sj::xml::Top::parse(rec).filter(|t| t.attr("type").as_deref() == Some("get"));
        if let Some(top) = top {
            let id = top.attr("id").unwrap_or_default();
            let mut reply = format!("<iq type='result' id='{}'", sj::xml::escape_attr(&id));
            if let Some(from) = top.attr("from") {
                reply.push_str(&format!(" to='{}'", sj::xml::escape_attr(&from)));
            }
            reply.push_str("/>\n");
            self.push_up(reply.into_bytes());
        } else {
            // A keepalive answer: hearing anything already reset the timer.
            self.ping_sent = None;
        }
    }

    /// A stanza the framer skipped for a limit (it came from a third
    /// party the server relays, not from the server): one log line, and
    /// for a message or an iq request from someone else than the account
    /// and its server, a `policy-violation` stanza error (RFC 6120 §8.3.3),
    /// so the sender learns it did not arrive. Never an answer to an
    /// error, to groupchat (a room may eject an occupant that bounces its
    /// traffic) or to presence.
    fn on_dropped(&mut self, d: Dropped) {
        self.drops.note(|| crate::upstream::describe_dropped(&d));
        let answer = match (d.name.as_str(), d.kind.as_deref()) {
            ("iq", Some("get" | "set")) => true,
            ("message", k) => !matches!(k, Some("error" | "groupchat")),
            _ => false,
        };
        let Some(from) = d.from.as_deref() else {
            return;
        };
        let own = match sj::jid::Jid::parse(from) {
            Ok(j) => j.bare() == *self.acct.jid() || j.to_string() == self.acct.domain(),
            // Not a JID: nobody to answer.
            Err(_) => true,
        };
        if !answer || own {
            return;
        }
        let id =
            d.id.as_deref()
                .map(|i| format!(" id='{}'", sj::xml::escape_attr(i)))
                .unwrap_or_default();
        let err = format!(
            "<{name} type='error' to='{to}'{id}><error type='modify'>\
             <policy-violation xmlns='{stanzas}'/>\
             <text xmlns='{stanzas}'>{text}</text></error></{name}>\n",
            name = d.name,
            to = sj::xml::escape_attr(from),
            text = sj::xml::escape_text(&format!("not delivered: {}", d.reason.detail)),
            stanzas = sj::ns::STANZAS,
        );
        sj::log::trace(">>", err.as_bytes());
        self.push_up(err.into_bytes());
    }

    fn route_upstream(&mut self, rec: &[u8]) {
        let routed = route::from_upstream(&self.acct, rec);
        let mut routed = self.shared.on_upstream(&self.acct, rec, routed);
        if let Some(a) = &mut self.archive {
            if self.shared.room_traffic() {
                a.record_room(rec, &mut routed);
            } else {
                a.record(crate::archive::Side::Server, &mut routed);
            }
        }
        for (d, r) in routed {
            self.deliver(d, r);
        }
    }

    fn route_local(&mut self, origin: Origin, line: &[u8]) {
        let rec = match canonical_record(line, Limits::DEFAULT) {
            Ok(r) => r,
            Err(e) => {
                let who = match &origin {
                    Origin::Daemon => "a daemon".to_string(),
                    Origin::In => "DIR/in".to_string(),
                    Origin::Client(n) => format!("client {n}"),
                };
                sj::log::warn(&format!("dropping an invalid record from {who}: {e}"));
                return;
            }
        };
        if let Some(routed) = self.shared.on_local(&self.acct, &origin, &rec) {
            for (d, r) in routed {
                self.deliver(d, r);
            }
            return;
        }
        let clients = &self.clients;
        let routed = route::from_local(&self.acct, &origin, &rec, |n| clients.contains_key(n));
        let mut routed = self.shared.after_local(&self.acct, &origin, routed);
        if let Some(a) = &mut self.archive {
            a.record(crate::archive::Side::Local, &mut routed);
        }
        for (d, r) in routed {
            self.deliver(d, r);
        }
    }

    fn client_arrived(&mut self, name: &str) {
        let path = match self.acct.dir().client(name) {
            Ok(c) => c.out_fifo(),
            Err(e) => return sj::log::warn(&format!("ignoring client directory {name}: {e}")),
        };
        match LineFifo::open(&path, LINE_MAX) {
            Ok(out) => {
                sj::log::info(&format!("client {name} arrived"));
                self.clients.insert(name.to_string(), out);
                for (d, r) in self.shared.client_arrived(&self.acct, name) {
                    self.deliver(d, r);
                }
            }
            Err(e) => sj::log::warn(&format!(
                "unable to open {}: {}",
                path.display(),
                sj::log::strerror(&e)
            )),
        }
    }

    fn client_left(&mut self, name: &str) {
        if !self.clients.contains_key(name) {
            return;
        }
        // Whatever the client managed to write before leaving still counts.
        while self.read_local(Origin::Client(name.to_string())) {}
        self.clients.remove(name);
        sj::log::info(&format!("client {name} left"));
        let gone = format!(
            "<presence from='{}' type='unavailable'/>\n",
            sj::xml::escape_attr(&self.acct.client_jid(name))
        );
        self.deliver(Dest::Presenced, gone.into_bytes());
        for (d, r) in self.shared.client_left(&self.acct, name) {
            self.deliver(d, r);
        }
    }

    /// One read from `DIR/in` or a client's `out` FIFO, and route the
    /// lines it completed; true if it read data (more may wait).
    fn read_local(&mut self, origin: Origin) -> bool {
        let (fifo, who) = match &origin {
            Origin::In => (&mut self.dir_in, "DIR/in".to_string()),
            Origin::Client(n) => match self.clients.get_mut(n) {
                Some(f) => (f, format!("client {n}")),
                None => return false,
            },
            Origin::Daemon => return false,
        };
        let got = match fifo.read() {
            Ok(got) => got,
            Err(e) => {
                sj::log::warn(&format!(
                    "{who}: unable to read its FIFO again: {}",
                    sj::log::strerror(&e)
                ));
                return false;
            }
        };
        if got.cut > 0 {
            sj::log::warn(&format!(
                "{who}: dropped an incomplete line ({} bytes) its writer left when it closed",
                got.cut
            ));
        }
        sj::io::warn_overlong(got.overlong, LINE_MAX, &who);
        for l in got.lines {
            if !l.iter().all(u8::is_ascii_whitespace) {
                self.route_local(origin.clone(), &l);
            }
        }
        got.more
    }

    /// Route everything already written into `DIR/in` and the clients'
    /// FIFOs: a writer whose write returned has handed it over.
    fn drain_local(&mut self) {
        let mut origins = vec![Origin::In];
        origins.extend(self.clients.keys().map(|n| Origin::Client(n.clone())));
        for o in origins {
            // Bounded: a writer that keeps writing cannot hold the stop.
            for _ in 0..64 {
                if !self.read_local(o.clone()) {
                    break;
                }
            }
        }
    }

    fn rescan_clients(&mut self) {
        self.watcher.drain();
        let (added, removed) = self.watcher.changes();
        for n in removed {
            self.client_left(&n);
        }
        for n in added {
            if sj::path::RESERVED.contains(&n.as_str()) || Some(n.as_str()) == self.acct.resource()
            {
                sj::log::warn(&format!("ignoring client directory {n}: reserved name"));
                continue;
            }
            self.client_arrived(&n);
        }
    }

    fn reap_children(&mut self) {
        for (pid, how) in sj::child::reap() {
            let Some(i) = self.daemons.iter().position(|d| d.child.pid == Some(pid)) else {
                continue;
            };
            // What it wrote before dying is still routed.
            self.drain_child_output(i);
            let d = &mut self.daemons[i];
            if self.stopping.is_none() {
                sj::log::warn(&format!("{} (pid {pid}) {how}; restarting", d.child.name));
            }
            d.child.died();
            d.lines = LineReader::new(LINE_MAX);
            // The head of the record being written died with the pipe;
            // its tail alone must not reach the next process.
            let cut = d.queue.drop_partial_record();
            if cut > 0 {
                sj::log::warn(&format!(
                    "{} died in the middle of a record: its other {cut} bytes are dropped",
                    d.child.name
                ));
            }
        }
        if self.stopping.is_some() {
            return;
        }
        let now = Instant::now();
        for d in &mut self.daemons {
            if !d.child.is_running() && d.child.restart_at.is_some_and(|t| t <= now) {
                if let Err(e) = d.child.spawn() {
                    sj::log::warn(&format!(
                        "unable to restart {}: {}",
                        d.child.name,
                        sj::log::strerror(&e)
                    ));
                    d.child.died();
                }
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        sj::log::info("stopping: sending what was handed over, then closing the daemons' input");
        self.drain_local();
        self.stopping = Some(Instant::now());
        for d in &mut self.daemons {
            d.child.restart_at = None;
        }
        self.close_drained_stdins();
    }

    /// While stopping: a daemon whose queue is written gets its end of
    /// input (records queued for it, such as sent copies, are not dropped).
    fn close_drained_stdins(&mut self) {
        for d in &mut self.daemons {
            if d.queue.is_empty() || d.child.stdin.is_none() {
                d.child.close_stdin();
            }
        }
    }

    /// Decide how the stream ends (the first decision holds).
    fn end_stream(&mut self, tail: &[u8], end: sj::io::End) {
        if self.tail.is_none() {
            self.tail = Some(tail.to_vec());
            self.end = end;
        }
    }

    /// Run until stopped (Ok) or the upstream session ends (Err); either
    /// way the stream is closed (`Upstream::close`: what is queued, the
    /// tail, the lingering close) and the daemons get what was routed to
    /// them (`hand_over`) before the caller closes their input.
    pub fn run(&mut self) -> Result<(), Fatal> {
        let r = self.run_loop();
        let tail = self.tail.take().unwrap_or_default();
        if let Some(sm) = &mut self.sm {
            sm.link.write_ahead();
        }
        self.up.close(&mut self.up_queue, &tail, self.end);
        if let Some(a) = &mut self.archive {
            a.close();
        }
        self.hand_over(STOP_GRACE);
        self.drops.flush();
        let handed_on = self.daemons.iter().all(|d| d.queue.is_empty());
        if let Some(sm) = &mut self.sm {
            // A stop closed the stream: the server ends the session.
            let clean = matches!(&r, Err(e) if e.code == OK) || r.is_ok();
            sm.finish(clean, handed_on);
        }
        r
    }

    /// Write what the daemons' queues hold, waiting for their pipes at
    /// most `max` in all: records routed from the same read as a fatal
    /// error are delivered, as on a stop.
    fn hand_over(&mut self, max: Duration) {
        if let Some(a) = &mut self.archive {
            a.flush();
        }
        let end = Instant::now() + max;
        loop {
            for i in 0..self.daemons.len() {
                if !self.daemons[i].queue.is_empty() {
                    self.flush_daemon(i);
                }
            }
            let mut waiting = PollSet::with_capacity(self.daemons.len());
            for d in self.daemons.iter().filter(|d| !d.queue.is_empty()) {
                if let Some(fd) = &d.child.stdin {
                    waiting.add(fd.as_fd(), (), Interest::Write);
                }
            }
            if waiting.is_empty() || Instant::now() >= end {
                for d in self.daemons.iter().filter(|d| !d.queue.is_empty()) {
                    sj::log::warn(&format!(
                        "stopping with {} bytes {} did not take",
                        d.queue.len(),
                        d.child.name
                    ));
                }
                return;
            }
            if waiting.wait(Some(end)).is_err() {
                return;
            }
        }
    }

    fn run_loop(&mut self) -> Result<(), Fatal> {
        // What came in the same read as the last negotiation reply is in
        // the framer already: poll would not report it again.
        self.drain_upstream()?;
        let mut upbuf = Vec::with_capacity(64 * 1024);
        let mut next_scan = Instant::now();
        loop {
            if Instant::now() >= next_scan {
                self.rescan_clients();
                self.reap_children();
                next_scan = Instant::now() + SCAN_EVERY;
            }
            if self.stop_done() {
                return Ok(());
            }
            self.keepalive()?;
            let ready = self
                .poll_set()
                .wait(Some(next_scan))
                .map_err(|e| Fatal::io("poll", &e))?;
            for (token, _) in ready {
                self.handle(token, &mut upbuf)?;
            }
            self.flush_queues()?;
        }
    }

    /// While stopping: true (and the stream's end decided) once the
    /// daemons have drained and exited and the server took what was
    /// queued, or the grace time is over.
    fn stop_done(&mut self) -> bool {
        let Some(t) = self.stopping else {
            return false;
        };
        self.close_drained_stdins();
        let drained = self.daemons.iter().all(|d| !d.child.is_running());
        if (drained && self.up_queue.is_empty()) || t.elapsed() > STOP_GRACE {
            self.end_stream(b"</stream:stream>", sj::io::End::Close);
            return true;
        }
        false
    }

    /// A running daemon has so much waiting that the server is not read.
    fn daemons_full(&self) -> bool {
        self.daemons
            .iter()
            .any(|d| d.child.is_running() && d.queue.len() >= CHILD_HIGH)
    }

    /// What to wait for this turn, from what each buffer needs.
    fn poll_set(&self) -> PollSet<'_, Token> {
        let up_full = self.up_queue.len() >= UPSTREAM_HIGH;
        let mut set = PollSet::with_capacity(8 + self.clients.len() + 2 * self.daemons.len());
        if let Some(fd) = sj::signal::fd() {
            set.add(fd, Token::Signal, Interest::Read);
        }
        if !self.daemons_full() {
            set.add(self.up.rfd.as_fd(), Token::UpRead, Interest::Read);
        }
        if !self.up_queue.is_empty() {
            set.add(self.up.wfd.as_fd(), Token::UpWrite, Interest::Write);
        }
        if let Some(fd) = self.watcher.fd() {
            set.add(fd, Token::Watcher, Interest::Read);
        }
        if !up_full && self.stopping.is_none() {
            if let Some(fd) = self.dir_in.fd() {
                set.add(fd, Token::DirIn, Interest::Read);
            }
            for (name, c) in &self.clients {
                if let Some(fd) = c.fd() {
                    set.add(fd, Token::Client(name.clone()), Interest::Read);
                }
            }
        }
        for (i, d) in self.daemons.iter().enumerate() {
            if let (Some(out), false) = (&d.child.stdout, up_full) {
                set.add(out.as_fd(), Token::ChildRead(i), Interest::Read);
            }
            if let (Some(inp), false) = (&d.child.stdin, d.queue.is_empty()) {
                set.add(inp.as_fd(), Token::ChildWrite(i), Interest::Write);
            }
        }
        set
    }

    /// Write what this turn queued now rather than a poll later: each
    /// queue goes out in one write per turn when its descriptor takes it
    /// (all are non-blocking), and only a queue that would block waits for
    /// POLLOUT. One poll and one wakeup fewer per hop.
    fn flush_queues(&mut self) -> Result<(), Fatal> {
        if let Some(a) = &mut self.archive {
            a.flush();
        }
        if !self.up_queue.is_empty() {
            self.flush_up()?;
        }
        // mirrord (last) first: clients wait for it, and the first write
        // decides which reader the scheduler wakes first.
        for i in (0..self.daemons.len()).rev() {
            if !self.daemons[i].queue.is_empty() {
                self.flush_daemon(i);
            }
        }
        self.sm_turn()
    }

    fn flush_daemon(&mut self, i: usize) {
        let d = &mut self.daemons[i];
        if let Some(inp) = &d.child.stdin {
            if let Err(e) = d.queue.flush(inp) {
                // EPIPE: it died; SIGCHLD will restart it and the queue waits.
                sj::log::warn(&format!(
                    "unable to write to {}: {}",
                    d.child.name,
                    sj::log::strerror(&e)
                ));
                d.child.stdin = None;
            }
        }
    }

    fn keepalive(&mut self) -> Result<(), Fatal> {
        if self.stopping.is_some() {
            return Ok(());
        }
        if self.daemons_full() {
            // Not reading is not silence: the server's bytes wait in the
            // socket, so no keepalive is due.
            self.last_heard = Instant::now();
            self.ping_sent = None;
        }
        if self
            .sm
            .as_ref()
            .is_some_and(|sm| sm.overdue(self.opts.keepalive_timeout))
        {
            self.end_stream(b"</stream:stream>", sj::io::End::Close);
            return Err(Fatal::temporary(format!(
                "the server did not acknowledge stanzas (XEP-0198) in {} seconds",
                self.opts.keepalive_timeout.as_secs()
            )));
        }
        if let Some(t) = self.ping_sent {
            if t.elapsed() >= self.opts.keepalive_timeout {
                self.end_stream(b"</stream:stream>", sj::io::End::Close);
                return Err(Fatal::temporary(format!(
                    "the server did not answer a keepalive ping in {} seconds",
                    self.opts.keepalive_timeout.as_secs()
                )));
            }
        } else if let (true, Some(sm)) = (
            self.last_heard.elapsed() >= self.opts.keepalive,
            self.sm.as_mut(),
        ) {
            // With stream management an <r/> is the ping: its answer
            // also tells that the server handled what we sent.
            let r = sm.keepalive_request();
            sj::log::trace(">>", &r);
            self.up_queue.push(r);
            self.ping_sent = Some(Instant::now());
        } else if self.last_heard.elapsed() >= self.opts.keepalive {
            self.ping_seq += 1;
            let ping = format!(
                "<iq type='get' id='{}ping-{}' to='{}'><ping xmlns='{}'/></iq>\n",
                route::OWN_ID,
                self.ping_seq,
                sj::xml::escape_attr(self.acct.domain()),
                sj::ns::PING,
            );
            self.push_up(ping.into_bytes());
            self.ping_sent = Some(Instant::now());
        }
        Ok(())
    }

    fn handle(&mut self, token: Token, upbuf: &mut Vec<u8>) -> Result<(), Fatal> {
        match token {
            Token::Signal => {
                let arrived = sj::signal::drain();
                self.reap_children();
                if arrived.stop {
                    self.begin_stop();
                }
            }
            Token::Watcher => self.rescan_clients(),
            Token::UpWrite => self.flush_up()?,
            Token::UpRead => self.read_upstream(upbuf)?,
            Token::DirIn => {
                self.read_local(Origin::In);
            }
            Token::Client(name) => {
                self.read_local(Origin::Client(name));
            }
            Token::ChildRead(i) => {
                self.read_child(i);
            }
            Token::ChildWrite(i) => self.flush_daemon(i),
        }
        Ok(())
    }

    /// One read from the server, and route what it completed.
    fn read_upstream(&mut self, upbuf: &mut Vec<u8>) -> Result<(), Fatal> {
        upbuf.clear();
        match sj::io::read_into(&self.up.rfd, upbuf) {
            Ok(Read::Data(_)) => {
                self.last_heard = Instant::now();
                self.ping_sent = None;
                self.up.framer.feed(upbuf);
                self.drain_upstream()
            }
            Ok(Read::WouldBlock) => Ok(()),
            Ok(Read::Eof) => Err(Fatal::temporary(
                "unable to read from the server: connection closed",
            )),
            Err(e) => Err(Fatal::io("read from the server", &e)),
        }
    }

    /// One read from a daemon's stdout; true while more may come.
    fn read_child(&mut self, i: usize) -> bool {
        let d = &mut self.daemons[i];
        let Some(out) = &d.child.stdout else {
            return false;
        };
        let r = d.lines.fill(out);
        let mut lines = Vec::new();
        while let Some(l) = d.lines.next_line() {
            lines.push(l.to_vec());
        }
        d.lines.warn_overlong(&d.child.name);
        let more = matches!(r, Ok(Read::Data(_)));
        if matches!(r, Ok(Read::Eof) | Err(_)) {
            d.child.stdout = None;
        }
        for l in lines {
            if !l.iter().all(u8::is_ascii_whitespace) {
                self.route_local(Origin::Daemon, &l);
            }
        }
        more
    }

    fn drain_child_output(&mut self, i: usize) {
        while self.read_child(i) {}
    }

    fn drain_upstream(&mut self) -> Result<(), Fatal> {
        loop {
            match self.up.framer.next_event() {
                Ok(None) => return Ok(()),
                Ok(Some(Event::Record(r))) => {
                    sj::log::trace("<<", &r);
                    if let Some(sm) = &mut self.sm {
                        match sm.inbound(&r) {
                            crate::sm::Inbound::Route => {}
                            crate::sm::Inbound::Done => continue,
                            crate::sm::Inbound::Fail(cond, why) => {
                                self.end_stream(
                                    sj::ucspi::stream_error_end(cond).as_bytes(),
                                    sj::io::End::Close,
                                );
                                return Err(Fatal::protocol(why));
                            }
                        }
                    }
                    self.route_upstream(&r);
                }
                Ok(Some(Event::Dropped(d))) => self.on_dropped(d),
                Ok(Some(Event::StreamError(r))) => {
                    self.end_stream(b"</stream:stream>", sj::io::End::Answer);
                    return Err(crate::upstream::server_error(&r, "closed"));
                }
                Ok(Some(Event::End)) => {
                    self.end_stream(b"</stream:stream>", sj::io::End::Answer);
                    if self.stopping.is_some() {
                        return Err(Fatal::new(OK, "stream closed"));
                    }
                    return Err(Fatal::new(TEMPORARY, "the server closed the stream"));
                }
                Ok(Some(Event::Header(_))) => {
                    self.end_stream(
                        sj::ucspi::stream_error_end("bad-format").as_bytes(),
                        sj::io::End::Close,
                    );
                    return Err(Fatal::protocol("the server sent a second stream header"));
                }
                Err(e) => {
                    self.end_stream(
                        sj::ucspi::stream_error_end(e.condition.as_str()).as_bytes(),
                        sj::io::End::Close,
                    );
                    return Err(crate::upstream::refused(&e));
                }
            }
        }
    }

    /// Route the stanzas that arrived during negotiation.
    pub fn route_early(&mut self, early: Vec<Vec<u8>>) {
        for r in early {
            self.route_upstream(&r);
        }
    }

    /// On the way out (any reason): stop the daemons, give them a moment.
    pub fn shutdown_children(&mut self) {
        for d in &mut self.daemons {
            d.child.close_stdin();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            for (pid, _) in sj::child::reap() {
                if let Some(d) = self.daemons.iter_mut().find(|d| d.child.pid == Some(pid)) {
                    d.child.pid = None;
                }
            }
            if !self.daemons.iter().any(|d| d.child.is_running()) || Instant::now() >= deadline {
                break;
            }
            // SIGCHLD wakes the wait (its byte stays in the self-pipe if
            // it came before the wait began).
            let Some(sig) = sj::signal::fd() else { break };
            let _ = sj::poll::wait_one(sig, Interest::Read, Some(deadline));
            sj::signal::drain();
        }
        for d in &self.daemons {
            if let Some(pid) = d.child.pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

/// What each descriptor of a turn's poll set is.
enum Token {
    Signal,
    Watcher,
    UpRead,
    UpWrite,
    DirIn,
    Client(String),
    ChildRead(usize),
    ChildWrite(usize),
}
