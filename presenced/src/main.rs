//! presenced: the presence authority of sj-proxy (DESIGN §2, §3, §5).
//!
//! What it does: reads presence records from sj-proxy on stdin and writes
//! records to send on stdout. It keeps `DIR/<contact>/presence` (one line,
//! the most available of the contact's resources), caches each contact
//! resource's last available presence and replays the cache to a client
//! the first time that client says it is available, logs subscription
//! requests and presence errors as events in `DIR/<contact>/out` and
//! `DIR/subscriptions`, and computes the account's broadcast presence from
//! `DIR/mypresence` and the presences of the connected clients. Directed
//! presence comes from `DIR/<contact>/mypresence`. Both files are watched
//! with inotify.
//!
//! What it does not do: talk to the network, route records, touch the
//! roster, or approve subscriptions unless `-a` is given.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use sj::account::{Account, ContactDir};
use sj::exit::Fatal;
use sj::jid::Jid;
use sj::ns::{CAPS as CAPS_NS, CLIENT as CLIENT_NS, STANZAS as STANZAS_NS};
use sj::poll::{Interest, PollSet};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod owed;
use presenced::common::{one_line, MyPresence, Show};

const USAGE: &str = "usage: presenced [-v] [-a] -d DIR JID";
/// Longest record accepted on stdin: the library's rule.
const MAX_LINE: usize = sj::framer::MAX_LINE;
/// The largest `mypresence` file read (a show word, a status, a priority).
const MYPRESENCE_MAX: u64 = 64 * 1024;
/// How often writes that failed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    sj::log::init("presenced");
    sj::exit::finish(run())
}

struct Args {
    acct: Account,
    auto_approve: bool,
}

fn parse_args() -> Result<Args, Fatal> {
    use lexopt::prelude::*;
    let usage = |e: &dyn std::fmt::Display| Fatal::permanent(format!("{e}; {USAGE}"));
    let mut p = lexopt::Parser::from_env();
    let mut dir: Option<PathBuf> = None;
    let mut jid: Option<String> = None;
    let mut auto_approve = false;
    while let Some(arg) = p.next().map_err(|e| usage(&e))? {
        match arg {
            Short('v') => sj::log::set_verbose(true),
            Short('a') => auto_approve = true,
            Short('d') => dir = Some(p.value().map_err(|e| usage(&e))?.into()),
            Short('h') | Long("help") => return Err(Fatal::permanent(USAGE)),
            Value(v) if jid.is_none() => {
                jid = Some(v.string().map_err(|e| usage(&e))?);
            }
            _ => return Err(usage(&arg.unexpected())),
        }
    }
    let acct = sj::daemon::resolve(dir, jid, USAGE)?;
    Ok(Args { acct, auto_approve })
}

// ---------------------------------------------------------------------------
// Pure logic: what a presence stanza says, aggregation, stanzas to send.

/// The parts of a `<presence/>` record presenced looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pres {
    from: Option<String>,
    to: Option<String>,
    typ: Option<String>,
    show: Option<String>,
    status: String,
    priority: i8,
    /// The entity-caps `<c/>` element, verbatim.
    caps: Option<Vec<u8>>,
    /// Error condition and text for `type='error'`.
    error: Option<String>,
}

fn parse_presence(record: &[u8]) -> Option<Pres> {
    let e = sj::xml::Element::parse(record)?;
    if e.local_name() != "presence" || e.ns != CLIENT_NS {
        return None;
    }
    let mut p = Pres {
        from: e.attr("from").map(str::to_string),
        to: e.attr("to").map(str::to_string),
        typ: e.attr("type").map(str::to_string),
        ..Pres::default()
    };
    p.show = e.child("show", CLIENT_NS).map(|s| s.text());
    // Prefer a status without xml:lang, else the first one.
    let mut statuses = e
        .elements()
        .filter(|c| c.local_name() == "status" && c.ns == CLIENT_NS);
    let first = statuses.next();
    let plain = e
        .elements()
        .find(|c| c.local_name() == "status" && c.ns == CLIENT_NS && c.attr("xml:lang").is_none());
    if let Some(s) = plain.or(first) {
        p.status = one_line(&s.text());
    }
    p.priority = e
        .child("priority", CLIENT_NS)
        .and_then(|c| c.text().trim().parse::<i8>().ok())
        .unwrap_or(0);
    p.caps = e
        .child("c", CAPS_NS)
        .and_then(|c| record.get(c.span.clone()))
        .map(<[u8]>::to_vec);
    if let Some(err) = e.child("error", CLIENT_NS) {
        let cond = err
            .elements()
            .find(|c| c.ns == STANZAS_NS && c.local_name() != "text")
            .map(|c| c.local_name().to_string())
            .unwrap_or_else(|| "undefined-condition".to_string());
        let text = err
            .child("text", STANZAS_NS)
            .map(|t| one_line(&t.text()))
            .filter(|t| !t.is_empty());
        p.error = Some(match text {
            Some(t) => format!("{cond}: {t}"),
            None => cond,
        });
    }
    Some(p)
}

/// One resource's available presence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resource {
    show: Show,
    status: String,
    priority: i8,
    /// The record as received (for replay), with its LF.
    record: Vec<u8>,
}

/// The one-line summary of a contact's resources: the most available
/// (chat > online > away > xa > dnd), ties broken by higher priority, then
/// by resource name; `offline` when none is available.
fn aggregate<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> String {
    let best = resources
        .into_iter()
        .min_by_key(|r| (r.show, std::cmp::Reverse(r.priority)));
    match best {
        None => "offline".to_string(),
        Some(r) if r.status.is_empty() => r.show.as_str().to_string(),
        Some(r) => format!("{} {}", r.show, r.status),
    }
}

/// A connected client's own broadcast presence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientPres {
    show: Show,
    status: String,
    priority: i8,
    caps: Option<Vec<u8>>,
    /// When it last changed (higher = more recent).
    seq: u64,
}

/// The chosen presence: show, status, priority, caps element.
type Chosen<'a> = (Show, &'a str, i8, Option<&'a [u8]>);

/// What the account's broadcast presence is: the most available of
/// `mypresence` and the clients' presences; on equal show the higher
/// priority, then a client over `mypresence` (it has caps), then the most
/// recently changed client. `None` = unavailable.
fn choose<'a>(
    mine: &'a MyPresence,
    clients: impl IntoIterator<Item = &'a ClientPres>,
) -> Option<Chosen<'a>> {
    type Key = (Show, std::cmp::Reverse<i8>, u8, std::cmp::Reverse<u64>);
    let mut best: Option<(Key, Chosen<'a>)> = None;
    let mut offer = |key: Key, val| {
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, val));
        }
    };
    if mine.show != Show::Offline {
        offer(
            (
                mine.show,
                std::cmp::Reverse(mine.priority),
                1,
                std::cmp::Reverse(0),
            ),
            (mine.show, mine.status.as_str(), mine.priority, None),
        );
    }
    for c in clients {
        if c.show == Show::Offline {
            continue;
        }
        offer(
            (
                c.show,
                std::cmp::Reverse(c.priority),
                0,
                std::cmp::Reverse(c.seq),
            ),
            (c.show, c.status.as_str(), c.priority, c.caps.as_deref()),
        );
    }
    best.map(|(_, v)| v)
}

/// `<presence>` with show, status, priority and caps as needed, LF-terminated.
fn build_presence(
    to: Option<&str>,
    show: Show,
    status: &str,
    priority: i8,
    caps: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = b"<presence".to_vec();
    if let Some(to) = to {
        head.extend_from_slice(format!(" to='{}'", sj::xml::escape_attr(to)).as_bytes());
    }
    if show == Show::Offline {
        head.extend_from_slice(b" type='unavailable'");
        if !status.is_empty() {
            head.extend_from_slice(format!(">{}</presence>\n", status_el(status)).as_bytes());
        } else {
            head.extend_from_slice(b"/>\n");
        }
        return head;
    }
    let mut body = Vec::new();
    if let Some(w) = show.stanza_word() {
        body.extend_from_slice(format!("<show>{w}</show>").as_bytes());
    }
    if !status.is_empty() {
        body.extend_from_slice(status_el(status).as_bytes());
    }
    if priority != 0 {
        body.extend_from_slice(format!("<priority>{priority}</priority>").as_bytes());
    }
    if let Some(c) = caps {
        body.extend_from_slice(c);
    }
    if body.is_empty() {
        head.extend_from_slice(b"/>\n");
    } else {
        head.push(b'>');
        head.extend_from_slice(&body);
        head.extend_from_slice(b"</presence>\n");
    }
    head
}

fn status_el(status: &str) -> String {
    format!("<status>{}</status>", sj::xml::escape_text(status))
}

const UNAVAILABLE: &[u8] = b"<presence type='unavailable'/>\n";

/// The text of the `-!-` event for a subscription-related presence type.
fn subscription_event(typ: &str, bare: &str, auto: bool) -> Option<String> {
    Some(match typ {
        "subscribe" if auto => {
            format!("<{bare}> asks to subscribe to your presence (approved automatically)")
        }
        "subscribe" => format!("<{bare}> asks to subscribe to your presence"),
        "subscribed" => format!("<{bare}> approved your subscription to their presence"),
        "unsubscribe" => format!("<{bare}> unsubscribed from your presence"),
        "unsubscribed" => {
            format!("<{bare}> denied or cancelled your subscription to their presence")
        }
        _ => return None,
    })
}

/// Replays of cached contact presences, each addressed to `to`.
fn replay<'a>(cache: impl IntoIterator<Item = &'a Resource>, to: &str) -> Vec<Vec<u8>> {
    cache
        .into_iter()
        .map(|r| {
            let rec = r.record.strip_suffix(b"\n").unwrap_or(&r.record);
            let mut out = match sj::xml::Top::parse(rec) {
                Some(top) => top.rewrite(&[sj::xml::Edit::Set("to", to)]),
                None => rec.to_vec(),
            };
            if out.last() != Some(&b'\n') {
                out.push(b'\n');
            }
            out
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The daemon state.

struct State {
    /// Who we are (the bound full JID) and DIR.
    acct: Account,
    auto_approve: bool,
    /// Contact bare JID → full JID → available presence.
    contacts: BTreeMap<String, BTreeMap<String, Resource>>,
    /// Connected clients (first available until unavailable), by name.
    clients: BTreeMap<String, ClientPres>,
    mine: MyPresence,
    /// DIR/mypresence is malformed (warned once).
    mine_bad: bool,
    /// Contact directory → (contact JID, directed presence last sent).
    directed: BTreeMap<String, (String, MyPresence)>,
    last_broadcast: Option<Vec<u8>>,
    seq: u64,
    /// Records to write to stdout.
    out: Vec<Vec<u8>>,
    /// Every write into DIR, and the ones still owed.
    files: owed::Writer,
    /// `mypresence` files that could not be read, logged once each.
    unreadable: BTreeSet<PathBuf>,
}

impl State {
    fn new(acct: Account, auto_approve: bool) -> State {
        State {
            files: owed::Writer::new(acct.dir().path()),
            acct,
            auto_approve,
            contacts: BTreeMap::new(),
            clients: BTreeMap::new(),
            mine: MyPresence::default(),
            mine_bad: false,
            directed: BTreeMap::new(),
            last_broadcast: None,
            seq: 0,
            out: Vec::new(),
            unreadable: BTreeSet::new(),
        }
    }

    fn send(&mut self, rec: Vec<u8>) {
        sj::log::trace(">", &rec);
        self.out.push(rec);
    }

    /// The contact's directory (made when a file is written in it, never
    /// through a symbolic link: `owed::Writer`); `None` when the JID cannot
    /// name one.
    fn contact_dir(&self, bare: &str) -> Option<ContactDir> {
        match self.acct.dir().contact(bare) {
            Ok(c) => Some(c),
            Err(e) => {
                sj::log::warn(&format!("no directory for {bare}: {e}"));
                None
            }
        }
    }

    fn handle_record(&mut self, rec: &[u8]) {
        sj::log::trace("<", rec);
        let Some(p) = parse_presence(rec) else {
            return;
        };
        let Some(from) = p.from.as_deref() else {
            return;
        };
        let Ok(fj) = Jid::parse(from) else {
            sj::log::warn(&format!("presence with invalid from: {from}"));
            return;
        };
        if fj == *self.acct.full_jid() {
            return; // the server echoing our own presence
        }
        if fj.bare() == *self.acct.jid() && p.to.is_none() {
            if let Some(name) = fj.resource() {
                let name = name.to_string();
                self.client_presence(&name, &p);
            }
            return;
        }
        let bare = fj.bare().to_string();
        let mut line = rec.to_vec();
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        match p.typ.as_deref() {
            None => {
                let r = Resource {
                    show: Show::from_stanza(p.show.as_deref()),
                    status: p.status.clone(),
                    priority: p.priority,
                    record: line,
                };
                self.contacts
                    .entry(bare.clone())
                    .or_default()
                    .insert(fj.to_string(), r);
                self.write_contact(&bare);
            }
            Some("unavailable") => {
                if let Some(m) = self.contacts.get_mut(&bare) {
                    if fj.is_bare() {
                        m.clear();
                    } else {
                        m.remove(&fj.to_string());
                    }
                    if m.is_empty() {
                        self.contacts.remove(&bare);
                    }
                }
                self.write_contact(&bare);
            }
            Some(t @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
                let t = t.to_string();
                self.subscription(&bare, &t);
            }
            Some("error") => {
                let why = p.error.as_deref().unwrap_or("undefined-condition");
                self.event(&bare, &format!("presence error from <{from}>: {why}"));
            }
            Some(_) => {} // probe, or unknown: the server's business
        }
    }

    fn client_presence(&mut self, name: &str, p: &Pres) {
        match p.typ.as_deref() {
            None => {
                self.seq += 1;
                let c = ClientPres {
                    show: Show::from_stanza(p.show.as_deref()),
                    status: p.status.clone(),
                    priority: p.priority,
                    caps: p.caps.clone(),
                    seq: self.seq,
                };
                let new = self.clients.insert(name.to_string(), c).is_none();
                if new {
                    let to = self.acct.client_jid(name);
                    let recs = replay(self.contacts.values().flat_map(|m| m.values()), &to);
                    for r in recs {
                        self.send(r);
                    }
                }
                self.broadcast();
            }
            Some("unavailable") => {
                if self.clients.remove(name).is_some() {
                    self.broadcast();
                }
            }
            Some(_) => {}
        }
    }

    /// Recompute and send the account's presence if it changed.
    fn broadcast(&mut self) {
        let rec = match choose(&self.mine, self.clients.values()) {
            Some((show, status, prio, caps)) => build_presence(None, show, status, prio, caps),
            None => UNAVAILABLE.to_vec(),
        };
        if self.last_broadcast.as_deref() == Some(&rec[..]) {
            return;
        }
        self.last_broadcast = Some(rec.clone());
        self.send(rec);
        // A broadcast reaches subscribed contacts too; directed presences
        // are sent again after it so they stay what the files say.
        let again: Vec<Vec<u8>> = self
            .directed
            .values()
            .map(|(jid, m)| build_presence(Some(jid), m.show, &m.status, m.priority, None))
            .collect();
        for r in again {
            self.send(r);
        }
    }

    fn write_contact(&mut self, bare: &str) {
        let line = match self.contacts.get(bare) {
            Some(m) => aggregate(m.values()),
            None => "offline".to_string(),
        };
        let Some(path) = self.contact_dir(bare).map(|c| c.presence()) else {
            return;
        };
        self.files.replace(path, format!("{line}\n").into_bytes());
    }

    fn subscription(&mut self, bare: &str, typ: &str) {
        let auto = self.auto_approve && typ == "subscribe";
        if let Some(text) = subscription_event(typ, bare, auto) {
            self.event(bare, &text);
        }
        let line = format!(
            "{bare} {typ} {}\n",
            sj::time::utc_iso(std::time::SystemTime::now())
        );
        self.files.append(self.acct.dir().subscriptions(), &line);
        if auto {
            let rec = format!(
                "<presence to='{}' type='subscribed'/>\n",
                sj::xml::escape_attr(bare)
            );
            self.send(rec.into_bytes());
        }
    }

    /// Append `YYYY-MM-DD HH:MM -!- text` to the contact's `out` log.
    fn event(&mut self, bare: &str, text: &str) {
        let Some(path) = self.contact_dir(bare).map(|c| c.out()) else {
            return;
        };
        let when = sj::time::local_minute(sj::time::now_secs());
        let line = sj::outlog::lines(&when, &sj::outlog::Kind::Event, &one_line(text));
        self.files.append(path, &line);
    }

    /// Re-read `DIR/mypresence` and every `DIR/<contact>/mypresence`; send
    /// what changed. Each contact directory is watched before its file is
    /// read, so a file written just after the read still wakes us.
    fn rescan(&mut self, watcher: Option<&mut Watcher>) {
        match self.read_mypresence(&self.acct.dir().mypresence()) {
            Some(m) => {
                self.mine = m;
                self.mine_bad = false;
            }
            None if !self.mine_bad => {
                self.mine_bad = true;
                sj::log::warn("ignoring DIR/mypresence: unknown show word or bad priority");
            }
            None => {}
        }
        self.broadcast();
        let seen = self.directed_files(watcher);
        for (name, (jid, m)) in &seen {
            if self.directed.get(name).map(|(_, o)| o) != Some(m) {
                let rec = build_presence(Some(jid), m.show, &m.status, m.priority, None);
                self.send(rec);
            }
        }
        // A removed directed presence: the contact gets the broadcast one.
        let gone: Vec<String> = self
            .directed
            .iter()
            .filter(|(n, _)| !seen.contains_key(*n))
            .map(|(_, (jid, _))| jid.clone())
            .collect();
        for jid in gone {
            let rec = match choose(&self.mine, self.clients.values()) {
                Some((show, status, prio, caps)) => {
                    build_presence(Some(&jid), show, status, prio, caps)
                }
                None => build_presence(Some(&jid), Show::Offline, "", 0, None),
            };
            self.send(rec);
        }
        self.directed = seen;
    }

    /// The directed presences the contact directories hold now, by
    /// directory: (contact JID, presence). A file with a bad format keeps
    /// what it said last.
    fn directed_files(
        &mut self,
        mut watcher: Option<&mut Watcher>,
    ) -> BTreeMap<String, (String, MyPresence)> {
        let mut seen = BTreeMap::new();
        for c in self.acct.dir().contacts() {
            if let Some(w) = watcher.as_deref_mut() {
                w.watch(c.path());
            }
            let f = c.mypresence();
            if fs::symlink_metadata(&f).is_err() {
                continue;
            }
            if let Some(w) = watcher.as_deref_mut() {
                w.watch_file(&f);
            }
            let Some(jid) = c.decoded() else {
                continue;
            };
            let name = c.name().to_string();
            match self.read_mypresence(&f) {
                Some(m) => {
                    seen.insert(name, (jid, m));
                }
                None => {
                    sj::log::warn(&format!("ignoring {}: bad format", f.display()));
                    if let Some(old) = self.directed.get(&name) {
                        seen.insert(name, old.clone());
                    }
                }
            }
        }
        seen
    }

    /// At start: contacts' presence files from an earlier run are stale.
    fn reset_presence_files(&mut self) {
        for c in self.acct.dir().contacts() {
            let p = c.presence();
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                self.files.replace(p, b"offline\n".to_vec());
            }
        }
    }

    /// Read a mypresence file; missing means online. One that cannot be
    /// read (a symbolic link, a FIFO, a directory: the opening rules of
    /// `sj::fifo`) counts as missing, with one log line until it can be.
    fn read_mypresence(&mut self, path: &Path) -> Option<MyPresence> {
        match sj::fifo::read_file(path, MYPRESENCE_MAX) {
            Ok(b) => {
                self.unreadable.remove(path);
                MyPresence::parse(&String::from_utf8_lossy(&b))
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound
                    && self.unreadable.insert(path.to_path_buf())
                {
                    sj::log::warn(&format!(
                        "ignoring {}: unable to read it: {}",
                        path.display(),
                        sj::log::strerror(&e)
                    ));
                }
                Some(MyPresence::default())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The event loop.

struct Watcher {
    ino: Inotify,
    watched: HashSet<PathBuf>,
}

impl Watcher {
    fn new(dir: &Path) -> Option<Watcher> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let w = Watcher {
            ino,
            watched: HashSet::new(),
        };
        // DIR itself: DIR/mypresence is rewritten in place too.
        let _ = w.ino.add_watch(
            dir,
            Self::DIR_FLAGS | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ONLYDIR,
        );
        Some(w)
    }

    /// What a directory's watch reports: names coming and going. Not
    /// IN_CLOSE_WRITE: in a contact directory that is messaged appending to
    /// `out`, a wakeup per batch of logged messages (about 1,000 per
    /// pipeline bench run) for nothing. A contact's `mypresence` rewritten
    /// in place is seen by a watch on that file (`watch_file`).
    const DIR_FLAGS: AddWatchFlags = AddWatchFlags::IN_MOVED_TO
        .union(AddWatchFlags::IN_MOVED_FROM)
        .union(AddWatchFlags::IN_CREATE)
        .union(AddWatchFlags::IN_DELETE);

    /// Watch a contact directory.
    fn watch(&mut self, dir: &Path) {
        if self.watched.contains(dir) {
            return;
        }
        if self
            .ino
            .add_watch(dir, Self::DIR_FLAGS | AddWatchFlags::IN_ONLYDIR)
            .is_ok()
        {
            self.watched.insert(dir.to_path_buf());
        }
    }

    /// Watch a contact's `mypresence` for being rewritten. Added on every
    /// rescan, before the file is read, not remembered: a file replaced by
    /// a rename is a new inode that needs its own watch, and adding a watch
    /// an inode already has only returns the same one.
    fn watch_file(&mut self, file: &Path) {
        let _ = self.ino.add_watch(file, AddWatchFlags::IN_CLOSE_WRITE);
    }

    /// Drain events; true when a `mypresence` file or a directory changed.
    fn drain(&mut self) -> bool {
        let mut relevant = false;
        while let Ok(evs) = self.ino.read_events() {
            if evs.is_empty() {
                break;
            }
            for ev in evs {
                let is_mine = ev.name.as_deref().is_some_and(|n| n == "mypresence");
                // A file watch's events carry no name: they are a
                // `mypresence` (`watch_file`).
                let file = ev.name.is_none() && ev.mask.contains(AddWatchFlags::IN_CLOSE_WRITE);
                if is_mine
                    || file
                    || ev.mask.contains(AddWatchFlags::IN_ISDIR)
                    || ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                {
                    relevant = true;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // A watched directory went away; forget it so a new one
                    // of the same name gets watched again.
                    self.watched.clear();
                    relevant = true;
                }
            }
        }
        relevant
    }
}

fn run() -> Result<(), Fatal> {
    let args = parse_args()?;
    let dir = args.acct.dir().clone();
    sj::fifo::make_dir(dir.path())
        .map_err(|e| Fatal::io(format_args!("create {}", dir.display()), &e))?;
    let mut st = State::new(args.acct, args.auto_approve);
    // A resumed upstream session (XEP-0198, sj-proxy(8)) gets no presence
    // again from the server: the files of the old one stay true.
    if std::env::var_os("SJ_SM_RESUMED").is_none() {
        st.reset_presence_files();
    }
    let mut watcher = Watcher::new(dir.path());
    if watcher.is_none() {
        sj::log::warn("inotify unavailable; checking mypresence files every second");
    }
    st.rescan(watcher.as_mut());
    let mut lp = Loop::new(watcher)?;
    while lp.turn(&mut st)? {}
    // EOF on stdin: the account goes unavailable with presenced.
    for r in st.out.drain(..) {
        lp.queue.push(r);
    }
    lp.queue.push(UNAVAILABLE.to_vec());
    lp.drain_out()
}

/// The event loop's side: stdin, stdout and the inotify watch.
struct Loop {
    stdin: std::io::Stdin,
    stdout: std::io::Stdout,
    reader: sj::io::LineReader,
    queue: sj::io::WriteQueue,
    watcher: Option<Watcher>,
    last_scan: Instant,
    last_retry: Instant,
}

/// What each descriptor of a turn's poll set is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Stdin,
    Stdout,
    Inotify,
}

impl Loop {
    fn new(watcher: Option<Watcher>) -> Result<Loop, Fatal> {
        let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
        sj::io::set_nonblocking(&stdin).map_err(|e| Fatal::io("set stdin non-blocking", &e))?;
        sj::io::set_nonblocking(&stdout).map_err(|e| Fatal::io("set stdout non-blocking", &e))?;
        Ok(Loop {
            stdin,
            stdout,
            reader: sj::io::LineReader::new(MAX_LINE),
            queue: sj::io::WriteQueue::new(),
            watcher,
            last_scan: Instant::now(),
            last_retry: Instant::now(),
        })
    }

    /// One turn; false once stdin ended.
    fn turn(&mut self, st: &mut State) -> Result<bool, Fatal> {
        for r in st.out.drain(..) {
            self.queue.push(r);
        }
        if !self.queue.is_empty() {
            self.queue
                .flush(&self.stdout)
                .map_err(|e| Fatal::io("write to stdout", &e))?;
        }
        if st.files.owes() && self.last_retry.elapsed() >= RETRY_EVERY {
            self.last_retry = Instant::now();
            st.files.retry();
        }
        // Without inotify, or with writes owed, a second at most.
        let wake =
            (self.watcher.is_none() || st.files.owes()).then(|| Instant::now() + RETRY_EVERY);
        let ready: Vec<Token> = self
            .poll_set()
            .wait(wake)
            .map_err(|e| Fatal::io("poll", &e))?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        if ready.contains(&Token::Inotify) {
            if let Some(w) = self.watcher.as_mut() {
                if w.drain() {
                    st.rescan(Some(w));
                }
            }
        }
        if self.watcher.is_none() && self.last_scan.elapsed() >= RETRY_EVERY {
            self.last_scan = Instant::now();
            st.rescan(None);
        }
        // Writable stdout just wakes the loop, which flushes at its top.
        if ready.contains(&Token::Stdin) {
            return self.read_stdin(st);
        }
        Ok(true)
    }

    fn poll_set(&self) -> PollSet<'_, Token> {
        let mut set = PollSet::with_capacity(3);
        set.add(self.stdin.as_fd(), Token::Stdin, Interest::Read);
        if !self.queue.is_empty() {
            set.add(self.stdout.as_fd(), Token::Stdout, Interest::Write);
        }
        if let Some(w) = &self.watcher {
            set.add(w.ino.as_fd(), Token::Inotify, Interest::Read);
        }
        set
    }

    /// Read and handle records until stdin would block; false at its end.
    fn read_stdin(&mut self, st: &mut State) -> Result<bool, Fatal> {
        loop {
            match self.reader.fill(&self.stdin) {
                Ok(sj::io::Read::Data(_)) => {
                    while let Some(line) = self.reader.next_line() {
                        st.handle_record(line);
                    }
                    self.reader.warn_overlong("sj-proxy");
                }
                Ok(sj::io::Read::WouldBlock) => return Ok(true),
                Ok(sj::io::Read::Eof) => return Ok(false),
                Err(e) => return Err(Fatal::io("read stdin", &e)),
            }
        }
    }

    /// Flush what is left at shutdown, waiting at most a few seconds.
    fn drain_out(&mut self) -> Result<(), Fatal> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.queue.flush(&self.stdout) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => return Ok(()),
                Err(e) => return Err(Fatal::io("write to stdout", &e)),
            }
            if Instant::now() >= deadline {
                sj::log::warn("giving up flushing stdout at shutdown");
                return Ok(());
            }
            let wake = Some(deadline.min(Instant::now() + Duration::from_millis(200)));
            let _ = sj::poll::wait_one(self.stdout.as_fd(), Interest::Write, wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(show: Show, status: &str, priority: i8) -> Resource {
        Resource {
            show,
            status: status.into(),
            priority,
            record: Vec::new(),
        }
    }

    fn client(show: Show, priority: i8, caps: Option<&str>, seq: u64) -> ClientPres {
        ClientPres {
            show,
            status: format!("{show}"),
            priority,
            caps: caps.map(|c| c.as_bytes().to_vec()),
            seq,
        }
    }

    #[test]
    fn aggregation_most_available_then_priority() {
        assert_eq!(aggregate([]), "offline");
        let rs = [
            res(Show::Dnd, "meeting", 10),
            res(Show::Away, "lunch", 0),
            res(Show::Xa, "", 50),
        ];
        assert_eq!(aggregate(&rs), "away lunch");
        let rs = [res(Show::Online, "a", 1), res(Show::Online, "b", 5)];
        assert_eq!(aggregate(&rs), "online b");
        let rs = [res(Show::Online, "", -1), res(Show::Chat, "", -5)];
        assert_eq!(aggregate(&rs), "chat");
    }

    #[test]
    fn choose_broadcast() {
        let mut mine = MyPresence::default();
        // mypresence alone.
        let c = choose(&mine, []).expect("online");
        assert_eq!((c.0, c.3), (Show::Online, None));
        // offline with no clients: unavailable.
        mine.show = Show::Offline;
        assert!(choose(&mine, []).is_none());
        // A client wins over offline and carries its caps and priority.
        let cl = [client(Show::Away, 3, Some("<c/>"), 1)];
        let c = choose(&mine, &cl).expect("client");
        assert_eq!((c.0, c.2, c.3), (Show::Away, 3, Some(&b"<c/>"[..])));
        // The most available wins.
        mine.show = Show::Dnd;
        let cl = [
            client(Show::Dnd, 9, Some("<c a/>"), 1),
            client(Show::Online, 0, Some("<c b/>"), 2),
        ];
        assert_eq!(choose(&mine, &cl).map(|c| c.3), Some(Some(&b"<c b/>"[..])));
        // mypresence more available than every client.
        mine.show = Show::Chat;
        assert_eq!(choose(&mine, &cl).map(|c| c.0), Some(Show::Chat));
        // Equal show: a client over mypresence; then most recent client.
        mine.show = Show::Online;
        let cl = [
            client(Show::Online, 0, Some("<c old/>"), 1),
            client(Show::Online, 0, Some("<c new/>"), 2),
        ];
        assert_eq!(
            choose(&mine, &cl).map(|c| c.3),
            Some(Some(&b"<c new/>"[..]))
        );
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("presenced-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        sj::fifo::make_dir(&d).expect("mkdir");
        d
    }

    fn state(dir: &Path, auto: bool) -> State {
        let jid = Jid::parse("alice@localhost/sj-proxy").expect("jid");
        State::new(Account::new(&jid, sj::account::Dir::new(dir)), auto)
    }

    fn sent(st: &mut State) -> Vec<String> {
        st.out
            .drain(..)
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .collect()
    }

    #[test]
    fn stanzas_built() {
        let p = |to, show, status, prio, caps: Option<&str>| {
            String::from_utf8(build_presence(
                to,
                show,
                status,
                prio,
                caps.map(str::as_bytes),
            ))
            .expect("utf8")
        };
        assert_eq!(p(None, Show::Online, "", 0, None), "<presence/>\n");
        assert_eq!(
            p(None, Show::Dnd, "a<b", 5, Some("<c xmlns='http://jabber.org/protocol/caps' node='n' ver='v' hash='sha-1'/>")),
            "<presence><show>dnd</show><status>a&lt;b</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' node='n' ver='v' hash='sha-1'/></presence>\n"
        );
        assert_eq!(
            p(Some("bob@x"), Show::Offline, "", 0, None),
            "<presence to='bob@x' type='unavailable'/>\n"
        );
        assert_eq!(
            p(Some("o'k@x"), Show::Away, "", 0, None),
            "<presence to='o&apos;k@x'><show>away</show></presence>\n"
        );
    }

    #[test]
    fn mypresence_files_drive_what_is_sent() {
        let d = tmpdir("scan");
        let mut st = state(&d, false);
        st.rescan(None);
        assert_eq!(sent(&mut st), vec!["<presence/>\n"], "initial presence");
        st.rescan(None);
        assert!(sent(&mut st).is_empty(), "nothing changed, nothing sent");
        fs::write(d.join("mypresence"), "dnd busy\n").expect("write");
        st.rescan(None);
        assert_eq!(
            sent(&mut st),
            vec!["<presence><show>dnd</show><status>busy</status></presence>\n"]
        );
        let bob = d.join(sj::path::component(sj::path::Kind::Contact, "bob@localhost").expect("c"));
        sj::fifo::make_dir(&bob).expect("mkdir");
        fs::write(bob.join("mypresence"), "away not for you\n").expect("write");
        st.rescan(None);
        assert_eq!(
            sent(&mut st),
            vec!["<presence to='bob@localhost'><show>away</show><status>not for you</status></presence>\n"]
        );
        fs::write(d.join("mypresence"), "offline\n").expect("write");
        st.rescan(None);
        assert_eq!(
            sent(&mut st),
            vec![
                "<presence type='unavailable'/>\n",
                "<presence to='bob@localhost'><show>away</show><status>not for you</status></presence>\n"
            ]
        );
        fs::write(d.join("mypresence"), "bogus words\n").expect("write");
        st.rescan(None);
        assert!(sent(&mut st).is_empty(), "a bad file changes nothing");
        fs::remove_file(bob.join("mypresence")).expect("rm");
        st.rescan(None);
        assert_eq!(
            sent(&mut st),
            vec!["<presence to='bob@localhost' type='unavailable'/>\n"]
        );
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn subscription_writes_event_and_list() {
        let d = tmpdir("sub");
        let mut st = state(&d, false);
        st.subscription("carol@localhost", "subscribe");
        assert!(sent(&mut st).is_empty(), "not approved without -a");
        let out = fs::read_to_string(d.join("carol@localhost/out")).expect("out");
        assert!(
            out.ends_with(" -!- <carol@localhost> asks to subscribe to your presence\n"),
            "{out}"
        );
        assert_eq!(out.len(), "YYYY-MM-DD HH:MM".len() + out[16..].len());
        let subs = fs::read_to_string(d.join("subscriptions")).expect("subs");
        assert!(subs.starts_with("carol@localhost subscribe 20"), "{subs}");
        assert!(subs.ends_with("Z\n"));
        let mut st = state(&d, true);
        st.subscription("carol@localhost", "subscribe");
        assert_eq!(
            sent(&mut st),
            vec!["<presence to='carol@localhost' type='subscribed'/>\n"]
        );
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn contact_presence_files_cache_and_replay() {
        let d = tmpdir("contacts");
        let mut st = state(&d, false);
        let bob = d.join("bob@localhost/presence");
        let rd = |p: &Path| fs::read_to_string(p).expect("read");
        st.handle_record(b"<presence from='bob@localhost/phone' to='alice@localhost/sj-proxy'><show>away</show><status>lunch\nbreak</status><priority>1</priority></presence>");
        assert_eq!(rd(&bob), "away lunch break\n");
        st.handle_record(b"<presence from='Bob@LOCALHOST/pc' to='alice@localhost/sj-proxy'><priority>-1</priority></presence>");
        assert_eq!(rd(&bob), "online\n", "most available wins");
        st.handle_record(b"<presence from='carol@localhost/x' to='alice@localhost/sj-proxy'><show>dnd</show></presence>");
        assert!(sent(&mut st).is_empty());
        // A client's first available presence gets the cache, addressed to it.
        st.handle_record(b"<presence from='alice@localhost/gajim'><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/></presence>");
        let out = sent(&mut st);
        let replays: Vec<&String> = out
            .iter()
            .filter(|r| r.contains("to='alice@localhost/gajim'"))
            .collect();
        assert_eq!(replays.len(), 3, "{out:?}");
        assert!(replays
            .iter()
            .all(|r| !r.contains("sj-proxy") && r.ends_with("</presence>\n")));
        assert_eq!(
            out.last().map(String::as_str),
            Some("<presence><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/></presence>\n")
        );
        // A second available presence from the same client: no replay;
        // away is less available than mypresence (online), which wins.
        st.handle_record(b"<presence from='alice@localhost/gajim'><show>away</show></presence>");
        assert_eq!(sent(&mut st), vec!["<presence/>\n"]);
        // Unavailable removes from the cache.
        st.handle_record(
            b"<presence from='bob@localhost/pc' to='alice@localhost/sj-proxy' type='unavailable'/>",
        );
        assert_eq!(rd(&bob), "away lunch break\n");
        st.handle_record(b"<presence from='bob@localhost/phone' to='alice@localhost/sj-proxy' type='unavailable'/>");
        assert_eq!(rd(&bob), "offline\n");
        // The client leaves: mypresence (online) still, nothing new to send.
        st.handle_record(b"<presence from='alice@localhost/gajim' type='unavailable'/>");
        assert!(sent(&mut st).is_empty());
        // Reconnected, it is new again and gets carol only.
        st.handle_record(b"<presence from='alice@localhost/gajim'/>");
        let out = sent(&mut st);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("carol@localhost/x") && out[0].contains("to='alice@localhost/gajim'")
        );
        // Own echo is ignored.
        st.handle_record(
            b"<presence from='alice@localhost/sj-proxy' to='alice@localhost/sj-proxy'/>",
        );
        assert!(sent(&mut st).is_empty());
        assert!(!d.join("alice@localhost").exists());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn subscription_and_error_records() {
        let d = tmpdir("subrec");
        let mut st = state(&d, false);
        st.handle_record(
            b"<presence from='carol@localhost' to='alice@localhost' type='subscribe'/>",
        );
        st.handle_record(b"<presence from='bob@localhost/x' to='alice@localhost/sj-proxy' type='error'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>");
        assert!(sent(&mut st).is_empty());
        let out = fs::read_to_string(d.join("carol@localhost/out")).expect("out");
        assert!(out.ends_with("-!- <carol@localhost> asks to subscribe to your presence\n"));
        let out = fs::read_to_string(d.join("bob@localhost/out")).expect("out");
        assert!(
            out.ends_with("-!- presence error from <bob@localhost/x>: remote-server-not-found\n"),
            "{out}"
        );
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn subscription_events() {
        assert_eq!(
            subscription_event("subscribe", "bob@localhost", false).as_deref(),
            Some("<bob@localhost> asks to subscribe to your presence")
        );
        assert!(subscription_event("subscribe", "b@x", true)
            .is_some_and(|s| s.ends_with("(approved automatically)")));
        assert!(subscription_event("subscribed", "b@x", false).is_some());
        assert!(subscription_event("unsubscribe", "b@x", false).is_some());
        assert!(subscription_event("unsubscribed", "b@x", false).is_some());
        assert_eq!(subscription_event("probe", "b@x", false), None);
    }
}
