//! messaged: the conversation view of an sj-proxy account (DESIGN §2, §3).
//!
//! What it does: reads `<message>` records from sj-proxy on stdin and
//! appends them, in order, to `DIR/<contact>/out` (`YYYY-MM-DD HH:MM <nick>
//! text`, events as `-!- text`); keeps one directory per contact, per roster
//! item and per groupchat room, each with an `in` FIFO whose lines it turns
//! into chat (or groupchat) messages on stdout.
//!
//! What it does not do: talk to the server (sj-proxy routes its stdout),
//! log what the account sends except from sent copies (XEP-0280 form, made
//! by sj-proxy or the server), handle presence or subscriptions
//! (presenced), or parse XML bytes itself (sj::xml, sj::framer).
//!
//! Rooms: a directory is a room once a `type='groupchat'` message was seen
//! for it; this is remembered in memory and by an empty marker file
//! `DIR/<room>/.groupchat`, so lines written to its `in` go out as
//! `type='groupchat'` to the room's bare JID, also after a restart.

mod classify;
mod format;

use sj::account::{Account, ContactDir};
use sj::exit::Fatal;
use sj::io::{LineReader, Read, WriteQueue};
use sj::jid::Jid;
use sj::poll::{Group, Interest, PollSet};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// Longest record accepted from sj-proxy: the library's rule.
const MAX_RECORD: usize = sj::framer::MAX_LINE;
/// Longest line accepted from an `in` FIFO: escaped, it stays under the
/// 256 KiB record limit even when every character is `<`.
const MAX_IN_LINE: usize = 48 * 1024;
/// Stop reading `in` FIFOs while this much waits for sj-proxy.
const QUEUE_HIGH: usize = 1024 * 1024;
/// How often DIR/roster is checked for changes.
const ROSTER_EVERY: Duration = Duration::from_secs(1);
/// The largest `DIR/roster` read.
const ROSTER_MAX: u64 = 64 << 20;
/// Log lines kept in memory, over all contacts, while their `out` cannot
/// be written (a full disk); past this, lines are counted, not kept.
const KEPT_MAX: usize = 1 << 20;

const USAGE: &str = "usage: messaged [-v] -d DIR JID";

fn main() -> ExitCode {
    sj::log::init("messaged");
    sj::exit::finish(run())
}

struct Args {
    acct: Account,
}

fn parse_args() -> Result<Args, Fatal> {
    use lexopt::prelude::*;
    let usage = |m: String| Fatal::permanent(format!("{m}; {USAGE}"));
    let mut parser = lexopt::Parser::from_env();
    let mut dir: Option<PathBuf> = None;
    let mut jid: Option<String> = None;
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Short('v') => sj::log::set_verbose(true),
            Short('d') => dir = Some(parser.value().map_err(|e| usage(e.to_string()))?.into()),
            Short('h') | Long("help") => return Err(Fatal::permanent(USAGE)),
            Value(v) if jid.is_none() => {
                jid = Some(
                    v.into_string()
                        .map_err(|_| usage("JID is not UTF-8".into()))?,
                )
            }
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    Ok(Args {
        acct: sj::daemon::resolve(dir, jid, USAGE)?,
    })
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                sj::log::warn(&format!(
                    "unable to raise the descriptor limit: {}",
                    e.desc()
                ));
            }
        }
    }
}

/// How many `in` FIFOs may be open: the descriptor limit less a reserve
/// (an eighth, at least 16) for stdin/stdout, the poller and `out` files.
fn fifo_cap() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(1024);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub((soft / 8).max(16))
}

fn run() -> Result<(), Fatal> {
    let args = parse_args()?;
    raise_nofile();
    let dir = args.acct.dir();
    sj::fifo::make_dir(dir.path())
        .map_err(|e| Fatal::io(format_args!("create {}", dir.display()), &e))?;
    // A stop hands over what is queued, like the end of input.
    sj::signal::install(sj::signal::STOP_SIGNALS, false)
        .map_err(|e| Fatal::io("install a signal handler", &e))?;
    let mut d = Daemon::new(args.acct)?;
    d.adopt_existing();
    d.check_roster();
    d.run()
}

/// One contact or room directory.
struct Contact {
    /// Normalised bare JID, as written in messages.
    jid: String,
    dir: ContactDir,
    /// `None` while the FIFO cannot be made or opened (e.g. EMFILE).
    fifo: Option<OwnedFd>,
    fifo_warned: bool,
    /// The incomplete last line read from the FIFO.
    partial: Partial,
    room: bool,
    /// A write to `out` failed and was reported; cleared on success.
    warned: bool,
    /// Lines not yet in `out` because writing it failed, oldest first.
    kept: Kept,
    /// In `Daemon::ready`: read until it would block, a few reads a
    /// turn, so one busy FIFO cannot starve the others.
    ready: bool,
}

struct Daemon {
    /// Who we are (our bare JID is the nick of what the account says) and
    /// DIR.
    acct: Account,
    /// DIR held open: logs are opened beneath it, never through a link.
    root: sj::fifo::Root,
    /// Every open `in` FIFO, waited on as one descriptor: with thousands
    /// of contacts, handing them all to poll(2) each turn would cost
    /// milliseconds per message.
    fifos: Group,
    contacts: Vec<Contact>,
    by_name: HashMap<String, usize>,
    /// The same contacts by normalised bare JID: the JID of nearly every
    /// record was seen before, and this spares mapping it to a path
    /// component (a JID parse, an encode) per message.
    by_jid: HashMap<String, usize>,
    /// The contact of the last message, which is nearly always the next
    /// one's too: compared as a JID, it spares turning the JID into a
    /// string and hashing it per message. Contacts are never removed or
    /// renumbered, so an entry never goes stale.
    last_contact: Option<(Jid, usize)>,
    /// The last `out` stamp made, by Unix minute (see `stamp`).
    stamp: Option<(i64, String)>,
    ready: VecDeque<usize>,
    /// fd 0 and fd 1: records from and to sj-proxy.
    input: std::io::Stdin,
    output: std::io::Stdout,
    stdin: LineReader,
    /// One read buffer shared by all FIFOs (10,000 private 64 KiB buffers
    /// would be 640 MiB).
    scratch: Vec<u8>,
    out: WriteQueue,
    /// Contacts whose `kept` lines came from the records read so far,
    /// written once per read from stdin (one open and one write per
    /// contact, not per line).
    unlogged: HashSet<usize>,
    counter: u64,
    pid: u32,
    roster_seen: Option<(SystemTime, u64, u64)>,
    /// `in` FIFOs held open, and the most that leaves descriptors for
    /// appending to logs.
    fifos_open: usize,
    fifo_cap: usize,
    cap_warned: bool,
    /// Bytes in every contact's `kept`.
    kept_bytes: usize,
}

impl Daemon {
    fn new(acct: Account) -> Result<Daemon, Fatal> {
        // Regular files and /dev/null on either are fine too: poll(2)
        // finds them always ready, and they never block.
        let (input, output) = (std::io::stdin(), std::io::stdout());
        sj::io::set_nonblocking(&input).map_err(|e| Fatal::io("set stdin non-blocking", &e))?;
        sj::io::set_nonblocking(&output).map_err(|e| Fatal::io("set stdout non-blocking", &e))?;
        let dir = acct.dir();
        let root = sj::fifo::Root::open(dir.path())
            .map_err(|e| Fatal::io(format_args!("open {}", dir.display()), &e))?;
        let fifos = Group::new().map_err(|e| Fatal::io("create an epoll instance", &e))?;
        Ok(Daemon {
            acct,
            root,
            fifos,
            contacts: Vec::new(),
            by_name: HashMap::new(),
            by_jid: HashMap::new(),
            last_contact: None,
            stamp: None,
            ready: VecDeque::new(),
            input,
            output,
            stdin: LineReader::new(MAX_RECORD),
            scratch: vec![0; 64 * 1024],
            out: WriteQueue::new(),
            unlogged: HashSet::new(),
            counter: 0,
            pid: std::process::id(),
            roster_seen: None,
            fifos_open: 0,
            fifo_cap: fifo_cap(),
            cap_warned: false,
            kept_bytes: 0,
        })
    }

    /// The contact directory for a bare JID, made (with its FIFO) if new.
    /// `room` marks it as a groupchat room.
    fn contact(&mut self, bare: &Jid, room: bool) -> Option<usize> {
        let i = match &self.last_contact {
            Some((j, i)) if j == bare => *i,
            _ => {
                let i = self.find_or_make(bare)?;
                self.last_contact = Some((bare.clone(), i));
                i
            }
        };
        if room && !self.contacts[i].room {
            self.contacts[i].room = true;
            self.write_marker(i);
        }
        Some(i)
    }

    /// The index of a contact past the one-entry cache: by JID, then by
    /// path component (two JIDs the path rule maps to one name share it),
    /// else a new directory, room or not as its marker says.
    fn find_or_make(&mut self, bare: &Jid) -> Option<usize> {
        let jid = bare.to_string();
        if let Some(&i) = self.by_jid.get(&jid) {
            return Some(i);
        }
        let dir = match self.acct.dir().contact(&jid) {
            Ok(d) => d,
            Err(e) => {
                sj::log::warn(&format!("no directory for {jid:?}: {e}"));
                return None;
            }
        };
        if let Some(&i) = self.by_name.get(dir.name()) {
            self.by_jid.insert(jid, i);
            return Some(i);
        }
        if let Err(e) = make_contact_dir(&dir) {
            sj::log::warn(&format!(
                "unable to create {}: {}",
                dir.display(),
                sj::log::strerror(&e)
            ));
            return None;
        }
        let i = self.contacts.len();
        let marked = fs::symlink_metadata(dir.groupchat()).is_ok();
        let name = dir.name().to_string();
        self.by_jid.insert(jid.clone(), i);
        self.contacts.push(Contact {
            jid,
            dir,
            fifo: None,
            fifo_warned: false,
            partial: Partial::default(),
            room: marked,
            warned: false,
            kept: Kept::default(),
            ready: false,
        });
        self.by_name.insert(name, i);
        self.attach_fifo(i);
        Some(i)
    }

    /// Make and open a contact's `in` FIFO and wait on it with the others
    /// (`fifos`). Without it the contact is still logged; the FIFO is tried
    /// again on its next message.
    fn attach_fifo(&mut self, i: usize) {
        let c = &mut self.contacts[i];
        if let Some(old) = c.fifo.take() {
            let _ = self.fifos.remove(old.as_fd());
            self.fifos_open -= 1;
        }
        if self.fifos_open >= self.fifo_cap {
            // Keep descriptors for the logs: they matter more than FIFOs.
            if !self.cap_warned {
                sj::log::warn(&format!(
                    "{} in FIFOs open, the most the descriptor limit allows; \
                     further contacts are logged but get no in FIFO",
                    self.fifos_open
                ));
                self.cap_warned = true;
            }
            return;
        }
        let key = i as u64;
        match open_fifo(&c.dir).and_then(|fd| self.fifos.add(fd.as_fd(), key).map(|()| fd)) {
            Ok(fd) => {
                c.fifo = Some(fd);
                c.fifo_warned = false;
                self.fifos_open += 1;
                // Lines may already wait in it.
                if !c.ready {
                    c.ready = true;
                    self.ready.push_back(i);
                }
            }
            Err(e) => {
                if !c.fifo_warned {
                    sj::log::warn(&format!(
                        "unable to open {}/in: {}",
                        c.dir.display(),
                        sj::log::strerror(&e)
                    ));
                    c.fifo_warned = true;
                }
            }
        }
    }

    fn write_marker(&self, i: usize) {
        let p = self.contacts[i].dir.groupchat();
        if let Err(e) = sj::fifo::write_marker(&p, b"") {
            sj::log::warn(&format!(
                "unable to create {}: {}",
                p.display(),
                sj::log::strerror(&e)
            ));
        }
    }

    /// Directories left by an earlier run: keep their `in` FIFOs served.
    fn adopt_existing(&mut self) {
        for c in self.acct.dir().contacts() {
            let Some(jid) = c.decoded().and_then(|s| Jid::parse(&s).ok()) else {
                continue;
            };
            // Only the directory the rule makes for that JID.
            let made = self.acct.dir().contact(&jid.to_string()).ok();
            if !jid.is_bare() || made.as_ref().map(ContactDir::name) != Some(c.name()) {
                continue;
            }
            self.contact(&jid, false);
        }
    }

    /// Make a directory for every roster item when DIR/roster changed.
    fn check_roster(&mut self) {
        let path = self.acct.dir().roster();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return;
        };
        let seen = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
            meta.ino(),
        );
        if self.roster_seen == Some(seen) {
            return;
        }
        self.roster_seen = Some(seen);
        let text = match sj::fifo::read_file(&path, ROSTER_MAX) {
            Ok(t) => t,
            Err(e) => {
                // Said once per change of the file (`roster_seen`).
                sj::log::warn(&format!(
                    "unable to read {}: {}",
                    path.display(),
                    sj::log::strerror(&e)
                ));
                return;
            }
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let first = line.split('\t').next().unwrap_or("").trim();
            if first.is_empty() || first.starts_with('#') {
                continue;
            }
            if let Ok(j) = Jid::parse(first) {
                self.contact(&j.bare(), false);
            }
        }
    }

    fn run(&mut self) -> Result<(), Fatal> {
        let mut next_roster = Instant::now() + ROSTER_EVERY;
        loop {
            if sj::signal::stopping() {
                return self.drain_and_exit();
            }
            self.serve_fifos();
            self.flush()?;
            let now = Instant::now();
            if now >= next_roster {
                self.check_roster();
                self.retry_kept();
                next_roster = now + ROSTER_EVERY;
            }
            let busy = !self.ready.is_empty() && self.out.len() < QUEUE_HIGH;
            let wake = if busy { Instant::now() } else { next_roster };
            let ready = self
                .poll_set()
                .wait(Some(wake))
                .map_err(|e| Fatal::io("wait for input", &e))?;
            for (token, _) in ready {
                match token {
                    Token::Signal => {
                        sj::signal::drain();
                    }
                    Token::Stdin => {
                        if self.read_stdin()? == Read::Eof {
                            return self.drain_and_exit();
                        }
                    }
                    // Writable stdout only wakes the loop to flush.
                    Token::Stdout => {}
                    Token::Fifos => {
                        let ready = self
                            .fifos
                            .ready()
                            .map_err(|e| Fatal::io("wait for input", &e))?;
                        for i in ready {
                            self.mark_ready(usize::try_from(i).unwrap_or(usize::MAX));
                        }
                    }
                }
            }
        }
    }

    /// What to wait for: stdin, stdout while records wait, and the `in`
    /// FIFOs while the queue has room.
    fn poll_set(&self) -> PollSet<'_, Token> {
        let mut set = PollSet::with_capacity(4);
        if let Some(fd) = sj::signal::fd() {
            set.add(fd, Token::Signal, Interest::Read);
        }
        set.add(self.input.as_fd(), Token::Stdin, Interest::Read);
        if !self.out.is_empty() {
            set.add(self.output.as_fd(), Token::Stdout, Interest::Write);
        }
        if self.out.len() < QUEUE_HIGH {
            set.add(self.fifos.fd(), Token::Fifos, Interest::Read);
        }
        set
    }

    fn mark_ready(&mut self, i: usize) {
        if let Some(c) = self.contacts.get_mut(i) {
            if !c.ready {
                c.ready = true;
                self.ready.push_back(i);
            }
        }
    }

    /// Read and handle records until stdin would block (or ends).
    fn read_stdin(&mut self) -> Result<Read, Fatal> {
        loop {
            let r = self
                .stdin
                .fill(&self.input)
                .map_err(|e| Fatal::io("read from sj-proxy", &e))?;
            // Handled where they lie in the reader's buffer, not copied out
            // one allocation each; the reader is lent out meanwhile
            // (`record` never reads stdin).
            let mut stdin = std::mem::replace(&mut self.stdin, LineReader::new(MAX_RECORD));
            while let Some(line) = stdin.next_line() {
                self.record(line);
            }
            stdin.warn_overlong("sj-proxy");
            self.stdin = stdin;
            self.write_logs();
            match r {
                Read::Data(_) => continue,
                other => return Ok(other),
            }
        }
    }

    fn record(&mut self, rec: &[u8]) {
        sj::log::trace("<", rec);
        if rec.is_empty() {
            return;
        }
        let Some(el) = sj::xml::Element::parse(rec) else {
            sj::log::warn("dropping a record that does not parse");
            return;
        };
        for e in classify::classify(&el, self.acct.jid()) {
            self.log(e);
        }
    }

    fn log(&mut self, e: classify::Entry) {
        let Some(i) = self.contact(&e.contact, e.room) else {
            return;
        };
        if self.contacts[i].fifo.is_none() {
            self.attach_fifo(i);
        }
        let t = e.when.unwrap_or_else(sj::time::now_secs);
        let when = self.stamp(t);
        let text = sj::outlog::lines(&when, &e.kind, &e.text);
        if text.is_empty() {
            return;
        }
        let room = KEPT_MAX.saturating_sub(self.kept_bytes);
        let c = &mut self.contacts[i];
        if c.kept.push(&text, room) {
            self.kept_bytes += text.len();
        } else if c.kept.lost == 1 {
            sj::log::warn(&format!(
                "{}/out: {KEPT_MAX} bytes of log lines kept in all; counting further lines, not keeping them",
                c.dir.display()
            ));
        }
        self.unlogged.insert(i);
    }

    /// `sj::time::local_minute(t)`, made once per minute rather than per
    /// message (a localtime_r and a format). Keyed by the Unix minute: since
    /// 1973 every time zone's offset is whole minutes and changes on a
    /// minute boundary, so one Unix minute is one local minute; earlier
    /// stamps (a `<delay/>` from long ago) are not cached.
    fn stamp(&mut self, t: i64) -> String {
        const CACHE_FROM: i64 = 100_000_000;
        if t < CACHE_FROM {
            return sj::time::local_minute(t);
        }
        let key = t.div_euclid(60);
        match &self.stamp {
            Some((k, s)) if *k == key => s.clone(),
            _ => {
                let s = sj::time::local_minute(t);
                self.stamp = Some((key, s.clone()));
                s
            }
        }
    }

    /// Append what `log` gathered: one write per contact per batch read.
    fn write_logs(&mut self) {
        for i in std::mem::take(&mut self.unlogged) {
            self.write_kept(i);
        }
    }

    /// Append what a contact's log is owed: the kept lines in order, then
    /// an event saying how many were lost past the bound. Kept on failure,
    /// reported once per outage, retried with the next line and every
    /// second (`retry_kept`).
    fn write_kept(&mut self, i: usize) {
        if self.contacts[i].kept.is_empty() {
            return;
        }
        let lost = self.contacts[i].kept.lost;
        // Taken, not copied: a batch is up to a read's worth of lines. It
        // goes back into `kept` if the write fails.
        let mut text = std::mem::take(&mut self.contacts[i].kept.text);
        let kept_len = text.len();
        if lost > 0 {
            text.push_str(&sj::outlog::lines(
                &sj::time::local_minute(sj::time::now_secs()),
                &sj::outlog::Kind::Event,
                &format!(
                    "messaged: {lost} line(s) not logged here: this file could not be written"
                ),
            ));
        }
        let rel = &self.contacts[i].dir.out_beneath();
        let repair = self.contacts[i].warned;
        // Opened beneath DIR with no link followed: a contact directory
        // replaced by a symbolic link since it was made is never written
        // through.
        let mut result = sj::outlog::append_beneath(&self.root, rel, &text, repair);
        if matches!(&result, Err(err) if err.kind() == io::ErrorKind::NotFound) {
            // The directory went away under us: make it again.
            self.remake(i);
            let rel = &self.contacts[i].dir.out_beneath();
            result = sj::outlog::append_beneath(&self.root, rel, &text, repair);
        }
        let c = &mut self.contacts[i];
        match result {
            Ok(()) => {
                if c.warned {
                    sj::log::info(&format!(
                        "{}/out written again ({} kept line(s))",
                        c.dir.display(),
                        c.kept.lines
                    ));
                }
                c.warned = false;
                self.kept_bytes -= kept_len;
                c.kept = Kept::default();
            }
            Err(err) => {
                text.truncate(kept_len);
                c.kept.text = text;
                if !c.warned {
                    sj::log::warn(&format!(
                        "unable to append to {}/out: {}; keeping its lines to retry",
                        c.dir.display(),
                        sj::log::strerror(&err)
                    ));
                    c.warned = true;
                }
            }
        }
    }

    /// Try again every log that is owed lines.
    fn retry_kept(&mut self) {
        if self.kept_bytes == 0 && !self.contacts.iter().any(|c| c.kept.lost > 0) {
            return;
        }
        for i in 0..self.contacts.len() {
            self.write_kept(i);
        }
    }

    /// Recreate a contact's directory and FIFO after someone removed them.
    fn remake(&mut self, i: usize) {
        if make_contact_dir(&self.contacts[i].dir).is_err() {
            return;
        }
        self.attach_fifo(i);
        if self.contacts[i].room {
            self.write_marker(i);
        }
    }

    /// Turn lines from ready `in` FIFOs into messages, while the queue
    /// toward sj-proxy has room.
    fn serve_fifos(&mut self) {
        while self.out.len() < QUEUE_HIGH {
            let Some(i) = self.ready.pop_front() else {
                return;
            };
            let mut lines = Vec::new();
            let c = &mut self.contacts[i];
            let Some(fifo) = &c.fifo else {
                c.ready = false;
                continue;
            };
            let before = c.partial.overlong;
            let mut open = true;
            // Bounded per turn so one busy FIFO cannot starve the others.
            for _ in 0..16 {
                match nix::unistd::read(fifo.as_fd(), &mut self.scratch) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => c.partial.feed(&self.scratch[..n], MAX_IN_LINE, &mut lines),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(nix::errno::Errno::EAGAIN) => {
                        open = false;
                        break;
                    }
                    Err(e) => {
                        sj::log::warn(&format!(
                            "unable to read {}/in: {}",
                            c.dir.display(),
                            e.desc()
                        ));
                        open = false;
                        break;
                    }
                }
            }
            if c.partial.overlong > before {
                sj::log::warn(&format!(
                    "dropped {} line(s) over {MAX_IN_LINE} bytes from {}/in",
                    c.partial.overlong - before,
                    c.dir.display()
                ));
            }
            if open {
                self.ready.push_back(i);
            } else {
                c.ready = false;
            }
            for l in lines {
                self.send_line(i, &l);
            }
        }
    }

    fn send_line(&mut self, i: usize, raw: &[u8]) {
        let c = &self.contacts[i];
        let body = match format::in_line(raw) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(_) => {
                sj::log::warn(&format!(
                    "dropping a line that is not UTF-8 from {}/in",
                    c.dir.display()
                ));
                return;
            }
        };
        self.counter += 1;
        let id = format!(
            "msgd-{}-{}-{}",
            self.pid,
            self.counter,
            sj::time::now_secs()
        );
        let rec = format::message_record(&c.jid, c.room, &id, &body);
        sj::log::trace(">", rec.as_bytes());
        self.out.push(rec.into_bytes());
    }

    fn flush(&mut self) -> Result<(), Fatal> {
        self.out
            .flush(&self.output)
            .map(|_| ())
            .map_err(|e| Fatal::io("write to sj-proxy", &e))
    }

    /// Stdin ended or a signal came: hand over what is queued, then stop.
    fn drain_and_exit(&mut self) -> Result<(), Fatal> {
        self.retry_kept();
        for c in &self.contacts {
            let n = c.kept.lines + c.kept.lost;
            if n > 0 {
                sj::log::warn(&format!(
                    "{n} line(s) never reached {}/out: it could not be written",
                    c.dir.display()
                ));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // Lines already written into the FIFOs are sent too.
        for i in 0..self.contacts.len() {
            if !self.contacts[i].ready {
                self.contacts[i].ready = true;
                self.ready.push_back(i);
            }
        }
        loop {
            self.serve_fifos();
            let done = self
                .out
                .flush(&self.output)
                .map_err(|e| Fatal::io("write to sj-proxy", &e))?;
            if done && self.ready.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Fatal::temporary(format!(
                    "sj-proxy did not take {} queued bytes",
                    self.out.len()
                )));
            }
            if !done {
                let wake = Some(deadline.min(Instant::now() + Duration::from_millis(100)));
                let _ = sj::poll::wait_one(self.output.as_fd(), Interest::Write, wake);
            }
        }
    }
}

/// What each descriptor of a turn's poll set is.
enum Token {
    Signal,
    Stdin,
    Stdout,
    /// One or more `in` FIFOs (`Daemon::fifos`).
    Fifos,
}

/// Log lines owed to one `out` file: kept in order while they fit in the
/// daemon's bound, counted once they do not (and from then on until the
/// file is written again, so the count marks one gap at the end).
#[derive(Default)]
struct Kept {
    text: String,
    lines: usize,
    lost: usize,
}

impl Kept {
    /// Keep `text` if `room` bytes allow and nothing was lost yet; else
    /// count its lines as lost. True when kept. The first text is kept
    /// whatever its size: the bound is on what waits behind a file that
    /// cannot be written, and one long message (a record may be 4 MiB,
    /// sj(7)) is no sign of that.
    fn push(&mut self, text: &str, room: usize) -> bool {
        // memchr's counter: `matches` searched a word at a time.
        let n = memchr::memchr_iter(b'\n', text.as_bytes()).count();
        if self.lost > 0 || (text.len() > room && self.lines > 0) {
            self.lost += n;
            return false;
        }
        self.text.push_str(text);
        self.lines += n;
        true
    }

    fn is_empty(&self) -> bool {
        self.lines == 0 && self.lost == 0
    }
}

/// Line splitting for many FIFOs read through one shared buffer: only an
/// incomplete line is kept per FIFO, and no memory once a line is complete.
/// A line longer than `max` is dropped up to its LF and counted.
#[derive(Default)]
struct Partial {
    buf: Vec<u8>,
    skipping: bool,
    overlong: u64,
}

impl Partial {
    fn feed(&mut self, mut data: &[u8], max: usize, lines: &mut Vec<Vec<u8>>) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let piece = &data[..i];
            data = &data[i + 1..];
            if self.skipping || self.buf.len() + piece.len() > max {
                self.skipping = false;
                self.overlong += 1;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(piece);
                lines.push(std::mem::take(&mut self.buf));
            }
        }
        if self.skipping {
            return;
        }
        if self.buf.len() + data.len() > max {
            self.skipping = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }
}

/// Make `dir` (mode 0700, a real directory, not a symlink) and an empty
/// `out` in it unless there is one, so `tail -f out` works from the start.
fn make_contact_dir(dir: &ContactDir) -> io::Result<()> {
    sj::fifo::make_subdir(dir.path())?;
    // Best effort: a failure shows (and is reported) on the first append.
    let _ = sj::outlog::append(&dir.out(), "", false);
    Ok(())
}

/// Make `dir/in` (a FIFO, 0600) unless it is there, and open it for reading.
fn open_fifo(dir: &ContactDir) -> io::Result<OwnedFd> {
    let fifo = dir.in_fifo();
    sj::fifo::make(&fifo)?;
    sj::fifo::open_read(&fifo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn partial_lines() {
        let mut p = Partial::default();
        let mut lines = Vec::new();
        p.feed(b"ab", 8, &mut lines);
        p.feed(b"c\nde\n\nf", 8, &mut lines);
        assert_eq!(lines, vec![b"abc".to_vec(), b"de".to_vec(), b"".to_vec()]);
        lines.clear();
        // Over-long, split over several reads, then a good line.
        p.feed(b"012345", 8, &mut lines);
        p.feed(b"6789", 8, &mut lines);
        p.feed(b"xyz\nok\n", 8, &mut lines);
        assert_eq!(lines, vec![b"ok".to_vec()]);
        assert_eq!(p.overlong, 1);
        assert!(p.buf.capacity() == 0, "nothing kept between lines");
        // Over-long within one read.
        lines.clear();
        p.feed(b"0123456789\nk\n", 8, &mut lines);
        assert_eq!(lines, vec![b"k".to_vec()]);
        assert_eq!(p.overlong, 2);
    }

    #[test]
    fn kept_lines_then_one_counted_gap() {
        let mut k = Kept::default();
        assert!(k.is_empty());
        assert!(k.push("a\nb\n", 10));
        assert!(!k.push("0123456789\n", 10), "over the room");
        assert!(
            !k.push("c\n", 10),
            "nothing kept after a loss, so the gap is one"
        );
        assert_eq!((k.text.as_str(), k.lines, k.lost), ("a\nb\n", 2, 2));
        assert!(!k.is_empty());
        // One message longer than the room, with nothing before it, is kept.
        let mut k = Kept::default();
        assert!(k.push("0123456789\n", 4));
        assert!(!k.push("x\n", 0), "no room left behind it");
        assert_eq!((k.lines, k.lost), (1, 1));
    }

    /// Hostile JIDs go through sj::path and stay one level under DIR.
    #[test]
    fn hostile_jids_stay_in_dir() {
        let base = Path::new("/tmp/acct");
        let dir = sj::account::Dir::new(base);
        for hostile in [
            "../../etc@localhost",
            "..",
            "../x",
            "a@..",
            "a@./x",
            "%2e%2e@localhost",
            "in@localhost",
            "roster",
            "clients",
            "x@y/../../z",
            "a@b\u{0}c",
            ".hidden@localhost",
        ] {
            let Ok(j) = Jid::parse(hostile) else {
                continue;
            };
            let bare = j.bare().to_string();
            if let Ok(c) = dir.contact(&bare) {
                let p = c.path();
                assert_eq!(p.parent(), Some(base), "{hostile:?} -> {p:?}");
                assert!(!c.name().starts_with('.'), "{hostile:?} -> {p:?}");
                assert!(!sj::path::RESERVED.contains(&c.name()), "{hostile:?}");
                assert_eq!(p.components().count(), base.components().count() + 1);
            }
        }
    }
}
