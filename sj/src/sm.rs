//! XEP-0198 stream management (urn:xmpp:sm:3), the parts both ends share:
//! the nonzas (`<enable/>`, `<r/>`, `<a h/>` ...) told from stanzas, the
//! counters (mod 2^32), the queue of unacknowledged stanzas, and the files
//! that keep them across processes: a key=value `session` file, a
//! fixed-width `counts` file rewritten in place, and an append-only
//! `queue` of `SEQ RECORD` lines.
//!
//! It decides nothing about when to ask for acknowledgements, what a
//! resumption window is, or where the files live: sj-proxy (upstream) and
//! sj-c2s (downstream) own those policies.

use crate::xml::Element;
use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The namespace of XEP-0198 version 3.
pub const NS: &str = "urn:xmpp:sm:3";
/// The largest `session` or `counts` file read.
const SMALL: u64 = 4096;
/// The largest `queue` file read back: as large as the queues it holds.
pub const QUEUE_MAX: u64 = 64 << 20;

/// What a record is to stream management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// message, presence or iq: counted.
    Stanza,
    /// Possibly an sm:3 nonza (its namespace is checked by `parse`).
    Sm,
    /// Anything else (a stream error, another nonza): not counted.
    Other,
}

/// The kind of `rec` from its element name alone: no parse, so that
/// every stanza of the pipeline pays only for a few byte compares.
pub fn kind(rec: &[u8]) -> Kind {
    let start = rec
        .iter()
        .position(|&b| b == b'<')
        .map_or(rec.len(), |i| i + 1);
    let rest = &rec[start..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'/' | b'>'))
        .unwrap_or(rest.len());
    match &rest[..end] {
        b"message" | b"presence" | b"iq" => Kind::Stanza,
        b"r" | b"a" | b"enable" | b"enabled" | b"resume" | b"resumed" | b"failed" => Kind::Sm,
        _ => Kind::Other,
    }
}

/// An sm:3 nonza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nonza {
    Enable {
        resume: bool,
        max: Option<u32>,
    },
    Enabled {
        id: Option<String>,
        resume: bool,
        location: Option<String>,
        max: Option<u32>,
    },
    Resume {
        previd: String,
        h: u32,
    },
    Resumed {
        previd: String,
        h: u32,
    },
    Failed {
        h: Option<u32>,
        condition: String,
    },
    R,
    A {
        h: u32,
    },
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1"))
}

fn number(el: &Element, name: &str) -> Result<Option<u32>, String> {
    match el.attr(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| format!("<{}/> with a bad {name} '{}'", el.name, v.escape_debug())),
    }
}

fn required(el: &Element, name: &str) -> Result<u32, String> {
    number(el, name)?.ok_or_else(|| format!("<{}/> without {name}", el.name))
}

/// `rec` as an sm:3 nonza: `None` when it is not one (another namespace,
/// a stanza), `Some(Err)` when it is one that cannot be understood (an
/// `<a/>` without `h`).
pub fn parse(rec: &[u8]) -> Option<Result<Nonza, String>> {
    if kind(rec) != Kind::Sm {
        return None;
    }
    let el = Element::parse(rec)?;
    if el.ns != NS {
        return None;
    }
    let n = match el.local_name() {
        "r" => Ok(Nonza::R),
        "a" => required(&el, "h").map(|h| Nonza::A { h }),
        "enable" => number(&el, "max").map(|max| Nonza::Enable {
            resume: truthy(el.attr("resume")),
            max,
        }),
        "enabled" => number(&el, "max").map(|max| Nonza::Enabled {
            id: el.attr("id").map(str::to_string),
            resume: truthy(el.attr("resume")),
            location: el.attr("location").map(str::to_string),
            max,
        }),
        "resume" | "resumed" => required(&el, "h").and_then(|h| {
            let previd = el
                .attr("previd")
                .map(str::to_string)
                .ok_or_else(|| format!("<{}/> without previd", el.name))?;
            Ok(if el.local_name() == "resume" {
                Nonza::Resume { previd, h }
            } else {
                Nonza::Resumed { previd, h }
            })
        }),
        "failed" => number(&el, "h").map(|h| Nonza::Failed {
            h,
            condition: el
                .elements()
                .find(|c| c.ns == crate::ns::STANZAS && c.local_name() != "text")
                .map(|c| c.local_name().to_string())
                .unwrap_or_else(|| "undefined-condition".to_string()),
        }),
        _ => return None,
    };
    Some(n)
}

/// `<a h='N'/>`.
pub fn ack(h: u32) -> String {
    format!("<a xmlns='{NS}' h='{h}'/>")
}

/// `<r/>`.
pub fn request() -> String {
    format!("<r xmlns='{NS}'/>")
}

/// The peer acknowledged more stanzas than were sent: XEP-0198 §4 makes
/// it a stream error (undefined-condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooMany {
    pub h: u32,
    pub sent: u32,
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged {} stanzas, only {} were sent",
            self.h, self.sent
        )
    }
}

/// The stanzas sent and not yet acknowledged, in order, with the count of
/// those sent (`sent`, the h the peer will reach) and acknowledged
/// (`acked`), both mod 2^32.
#[derive(Debug, Default, Clone)]
pub struct Outbox {
    sent: u32,
    acked: u32,
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Outbox {
    /// An empty outbox whose count starts at `acked`.
    pub fn new(acked: u32) -> Outbox {
        Outbox {
            sent: acked,
            acked,
            ..Outbox::default()
        }
    }

    /// One more stanza sent (without its LF); its sequence number.
    /// Number `rec` when it is a stanza (a nonza is not counted), keep it,
    /// and add its queue line to `lines` for the queue file.
    pub fn number(&mut self, rec: &[u8], lines: &mut Vec<u8>) -> bool {
        if kind(rec) != Kind::Stanza {
            return false;
        }
        let seq = self.push(rec.strip_suffix(b"\n").unwrap_or(rec).to_vec());
        lines.extend_from_slice(&queue_line(seq, rec));
        true
    }

    pub fn push(&mut self, rec: Vec<u8>) -> u32 {
        self.sent = self.sent.wrapping_add(1);
        self.bytes += rec.len();
        self.queue.push_back(rec);
        self.sent
    }

    /// The peer handled `h` stanzas: drop those from the queue; how many
    /// were dropped. An `h` behind the last one (a stale or repeated
    /// answer) drops nothing; one ahead of what was sent is `TooMany`.
    pub fn ack(&mut self, h: u32) -> Result<usize, TooMany> {
        let d = h.wrapping_sub(self.acked);
        let outstanding = self.sent.wrapping_sub(self.acked);
        if d > outstanding {
            // Behind (wrapped into the upper half) is stale, not too many.
            if d > u32::MAX / 2 {
                return Ok(0);
            }
            return Err(TooMany { h, sent: self.sent });
        }
        for _ in 0..d {
            if let Some(r) = self.queue.pop_front() {
                self.bytes -= r.len();
            }
        }
        self.acked = h;
        Ok(d as usize)
    }

    pub fn sent(&self) -> u32 {
        self.sent
    }

    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// Stanzas waiting for acknowledgement.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes of the stanzas waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The unacknowledged stanzas, oldest first, with their numbers.
    pub fn unacked(&self) -> impl Iterator<Item = (u32, &[u8])> {
        let first = self.acked;
        self.queue
            .iter()
            .enumerate()
            .map(move |(i, r)| (first.wrapping_add(i as u32 + 1), r.as_slice()))
    }

    /// Empty the queue (its stanzas are given up): the counts stay.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.bytes = 0;
        self.acked = self.sent;
        self.queue.drain(..).collect()
    }
}

/// One `queue` line: `SEQ RECORD` and a LF.
pub fn queue_line(seq: u32, rec: &[u8]) -> Vec<u8> {
    let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
    let mut l = Vec::with_capacity(rec.len() + 12);
    l.extend_from_slice(seq.to_string().as_bytes());
    l.push(b' ');
    l.extend_from_slice(rec);
    l.push(b'\n');
    l
}

/// The outbox a `queue` file holds after the acknowledgement `acked`:
/// lines numbered at or before `acked` are done; the others must follow it
/// without a gap. A torn last line (a crash mid-append) is dropped.
pub fn parse_queue(text: &[u8], acked: u32) -> Result<Outbox, String> {
    let mut out = Outbox::new(acked);
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            // What follows the last LF: empty, or torn.
            break;
        }
        let Some(sp) = line.iter().position(|&b| b == b' ') else {
            return Err("a queue line without a number".into());
        };
        let seq: u32 = std::str::from_utf8(&line[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a queue line with a bad number")?;
        let d = seq.wrapping_sub(acked);
        if d == 0 || d > u32::MAX / 2 {
            continue;
        }
        if seq != out.sent.wrapping_add(1) {
            return Err(format!("queue line {seq} does not follow {}", out.sent));
        }
        out.push(line[sp + 1..].to_vec());
    }
    Ok(out)
}

/// The two counts kept durably: stanzas received and handed on (`inbound`,
/// the h this end reports) and stanzas of ours the peer acknowledged
/// (`acked`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub inbound: u32,
    pub acked: u32,
}

impl Counts {
    /// Fixed width, so that rewriting it in place is one small write.
    pub fn line(&self) -> String {
        format!("in {:010} acked {:010}\n", self.inbound, self.acked)
    }

    pub fn parse(text: &str) -> Option<Counts> {
        let mut w = text.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("in"), Some(i), Some("acked"), Some(a)) => Some(Counts {
                inbound: i.parse().ok()?,
                acked: a.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Open (creating, mode 0600) a regular file of ours for writing, never
/// through a symbolic link, never a FIFO or anything else in its place.
fn open_own(path: &Path, append: bool) -> io::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    let mut flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if append {
        flags |= OFlag::O_APPEND;
    }
    let fd = open(path, flags, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
    let st = fstat(&fd).map_err(io::Error::from)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(fd)
}

/// The files of one stream-management session in directory `dir`:
/// `session` (key=value lines), `counts` and `queue` (or, downstream, the
/// names given).
pub struct Store {
    session: PathBuf,
    counts: PathBuf,
    queue: PathBuf,
    counts_fd: Option<OwnedFd>,
    queue_fd: Option<OwnedFd>,
    /// Bytes in the queue file, to know when compacting pays.
    queue_bytes: usize,
    last: Option<Counts>,
}

impl Store {
    pub fn new(session: PathBuf, counts: PathBuf, queue: PathBuf) -> Store {
        Store {
            session,
            counts,
            queue,
            counts_fd: None,
            queue_fd: None,
            queue_bytes: 0,
            last: None,
        }
    }

    pub fn session_path(&self) -> &Path {
        &self.session
    }

    /// The session file as key=value pairs; `None` when there is none.
    pub fn load_session(&self) -> io::Result<Option<Vec<(String, String)>>> {
        let text = match crate::fifo::read_text(&self.session, SMALL) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    /// Replace the session file.
    pub fn save_session(&self, pairs: &[(&str, &str)]) -> io::Result<()> {
        let mut text = String::new();
        for (k, v) in pairs {
            let v: String = v.chars().filter(|c| !c.is_control()).collect();
            text.push_str(&format!("{k}={v}\n"));
        }
        crate::fifo::write_atomic(&self.session, text.as_bytes())
    }

    pub fn load_counts(&self) -> io::Result<Counts> {
        match crate::fifo::read_text(&self.counts, SMALL) {
            Ok(t) => Counts::parse(&t)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad counts")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Counts::default()),
            Err(e) => Err(e),
        }
    }

    /// The outbox kept in the queue file, after `acked`.
    pub fn load_queue(&self, acked: u32) -> io::Result<Outbox> {
        let text = match crate::fifo::read_file(&self.queue, QUEUE_MAX) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outbox::new(acked)),
            Err(e) => return Err(e),
        };
        parse_queue(&text, acked).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Write `c` over the counts file, in place (one write of a fixed
    /// width: a reader after a crash sees the old line or the new one).
    pub fn save_counts(&mut self, c: Counts) -> io::Result<()> {
        if self.last == Some(c) {
            return Ok(());
        }
        if self.counts_fd.is_none() {
            self.counts_fd = Some(open_own(&self.counts, false)?);
        }
        let Some(fd) = &self.counts_fd else {
            return Ok(());
        };
        let line = c.line();
        let n = nix::sys::uio::pwrite(fd.as_fd(), line.as_bytes(), 0).map_err(io::Error::from)?;
        if n != line.len() {
            return Err(io::Error::other("short write"));
        }
        self.last = Some(c);
        Ok(())
    }

    /// Append queue lines (`queue_line`) to the queue file.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if self.queue_fd.is_none() {
            self.queue_fd = Some(open_own(&self.queue, true)?);
        }
        if let Some(fd) = &self.queue_fd {
            crate::io::write_all(fd, lines)?;
            self.queue_bytes += lines.len();
        }
        Ok(())
    }

    /// Rewrite the queue file to hold only `out`'s stanzas, when the
    /// acknowledged lines are most of it (amortised: the file is rewritten
    /// after it has doubled past what is still unacknowledged).
    pub fn compact(&mut self, out: &Outbox, force: bool) -> io::Result<()> {
        if !force && self.queue_bytes < 2 * out.bytes() + (256 << 10) {
            return Ok(());
        }
        let mut text = Vec::with_capacity(out.bytes() + 12 * out.len());
        for (seq, r) in out.unacked() {
            text.extend_from_slice(&queue_line(seq, r));
        }
        crate::fifo::write_atomic(&self.queue, &text)?;
        self.queue_fd = None;
        self.queue_bytes = text.len();
        Ok(())
    }

    /// End of a turn: the counts (`inbound` the durable count) and, when
    /// due, the compacted queue to disk. On an error, which file it was.
    pub fn settle(&mut self, inbound: u32, out: &Outbox) -> Result<(), (&'static str, io::Error)> {
        let c = Counts {
            inbound,
            acked: out.acked(),
        };
        self.save_counts(c).map_err(|e| ("write", e))?;
        self.compact(out, false).map_err(|e| ("rewrite", e))
    }

    /// Remove every file: the session is over.
    pub fn clear(&mut self) {
        self.counts_fd = None;
        self.queue_fd = None;
        self.last = None;
        self.queue_bytes = 0;
        for p in [&self.session, &self.counts, &self.queue] {
            let _ = fs::remove_file(p);
        }
    }
}

/// One end of a XEP-0198 session, as both sj-proxy (toward the server) and
/// sj-c2s (toward a client) keep it: what it sent and numbered (`out`,
/// written ahead to the queue file), what it received (`routed`) and how
/// much of that is handed on (`durable`, what `<a/>` says), and when to
/// ask with `<r/>`. What each end adds (resumption, the session file) is
/// its own.
pub struct Link {
    pub store: Store,
    pub out: Outbox,
    /// Stanzas received and passed on.
    pub routed: u32,
    /// Of those, the ones handed on for good (what `<a/>` reports).
    pub durable: u32,
    /// Queue lines not yet in the queue file.
    append: Vec<u8>,
    /// The peer asked for an acknowledgement.
    ack_due: bool,
    /// Stanzas sent since the last `<r/>`.
    since_request: u32,
    /// When the oldest `<r/>` not yet answered went.
    pub request_sent: Option<std::time::Instant>,
    /// An `<r/>` after this many stanzas, or after `request_after` when
    /// fewer wait.
    request_every: u32,
    request_after: std::time::Duration,
    /// What a failed file write may cost, for its warning.
    risk: &'static str,
    broken: bool,
}

impl Link {
    pub fn new(
        store: Store,
        out: Outbox,
        inbound: u32,
        request_every: u32,
        request_after: std::time::Duration,
        risk: &'static str,
    ) -> Link {
        Link {
            store,
            out,
            routed: inbound,
            durable: inbound,
            append: Vec::new(),
            ack_due: false,
            since_request: 0,
            request_sent: None,
            request_every,
            request_after,
            risk,
            broken: false,
        }
    }

    /// A stanza received and passed on.
    pub fn received(&mut self) {
        self.routed = self.routed.wrapping_add(1);
    }

    /// Something to send: a stanza is numbered and kept.
    pub fn sending(&mut self, rec: &[u8]) {
        if self.out.number(rec, &mut self.append) {
            self.since_request += 1;
        }
    }

    /// Write what `sending` numbered to the queue file, before it goes out.
    pub fn write_ahead(&mut self) {
        if self.append.is_empty() {
            return;
        }
        let r = self.store.append(&self.append);
        self.append.clear();
        if let Err(e) = r {
            let q = self.store.queue.display().to_string();
            self.warn_once(&format!("append to {q}"), &e);
        }
    }

    /// A failed write of the session's files, said once.
    pub fn warn_once(&mut self, what: &str, e: &io::Error) {
        if !self.broken {
            self.broken = true;
            crate::log::warn(&format!(
                "unable to {what}: {} ({})",
                crate::log::strerror(e),
                self.risk
            ));
        }
    }

    /// An `<r/>` or `<a/>` from the peer; `Err` for an `<a/>` that
    /// acknowledges more than was sent.
    pub fn on_nonza(&mut self, n: &Nonza) -> Result<(), TooMany> {
        match n {
            Nonza::R => self.ack_due = true,
            Nonza::A { h } => {
                self.out.ack(*h)?;
                self.request_sent = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// An `<r/>` for a silent peer, unless one is out already.
    pub fn request_now(&mut self) -> String {
        self.request_sent
            .get_or_insert_with(std::time::Instant::now);
        request()
    }

    /// End of a turn: `handed_on` when everything received is handed on,
    /// so the count becomes durable; the counts and queue files settled.
    /// The nonzas to send now (`<a/>`, `<r/>`), unless `!ask` (nobody to
    /// send them to).
    pub fn turn(&mut self, handed_on: bool, ask: bool) -> Vec<String> {
        if handed_on {
            self.durable = self.routed;
        }
        self.write_ahead();
        if let Err((what, e)) = self.store.settle(self.durable, &self.out) {
            let file = if what == "write" {
                &self.store.counts
            } else {
                &self.store.queue
            };
            let f = file.display().to_string();
            self.warn_once(&format!("{what} {f}"), &e);
        }
        let mut send = Vec::new();
        if !ask {
            return send;
        }
        if std::mem::take(&mut self.ack_due) {
            send.push(ack(self.durable));
        }
        let stale = self
            .request_sent
            .is_none_or(|t| t.elapsed() >= self.request_after);
        if !self.out.is_empty()
            && (self.since_request >= self.request_every || (self.since_request > 0 && stale))
        {
            send.push(request());
            self.since_request = 0;
            self.request_sent
                .get_or_insert_with(std::time::Instant::now);
        }
        send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(b"<message to='a'/>"), Kind::Stanza);
        assert_eq!(kind(b"<iq type='get'>"), Kind::Stanza);
        assert_eq!(kind(b"<presence/>\n"), Kind::Stanza);
        assert_eq!(kind(b"<r xmlns='urn:xmpp:sm:3'/>"), Kind::Sm);
        assert_eq!(kind(b"<a h='1'/>"), Kind::Sm);
        assert_eq!(kind(b"<stream:error/>"), Kind::Other);
        assert_eq!(kind(b"<messages/>"), Kind::Other);
        assert_eq!(kind(b""), Kind::Other);
    }

    #[test]
    fn nonzas() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(p("<r xmlns='urn:xmpp:sm:3'/>"), Some(Ok(Nonza::R)));
        assert_eq!(
            p("<a xmlns='urn:xmpp:sm:3' h='4294967295'/>"),
            Some(Ok(Nonza::A { h: u32::MAX }))
        );
        assert!(matches!(p("<a xmlns='urn:xmpp:sm:3'/>"), Some(Err(_))));
        assert!(matches!(
            p("<a xmlns='urn:xmpp:sm:3' h='-1'/>"),
            Some(Err(_))
        ));
        assert_eq!(p("<r xmlns='urn:xmpp:sm:2'/>"), None);
        assert_eq!(p("<message/>"), None);
        assert_eq!(
            p("<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true' max='60'/>"),
            Some(Ok(Nonza::Enabled {
                id: Some("x".into()),
                resume: true,
                location: None,
                max: Some(60)
            }))
        );
        assert_eq!(
            p("<resume xmlns='urn:xmpp:sm:3' previd='x' h='3'/>"),
            Some(Ok(Nonza::Resume {
                previd: "x".into(),
                h: 3
            }))
        );
        assert_eq!(
            p("<failed xmlns='urn:xmpp:sm:3' h='2'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"),
            Some(Ok(Nonza::Failed {
                h: Some(2),
                condition: "item-not-found".into()
            }))
        );
    }

    #[test]
    fn outbox_acks_and_wraps() {
        let mut o = Outbox::new(u32::MAX - 1);
        assert_eq!(o.push(b"a".to_vec()), u32::MAX);
        assert_eq!(o.push(b"b".to_vec()), 0);
        assert_eq!(o.push(b"c".to_vec()), 1);
        assert_eq!(o.ack(u32::MAX), Ok(1));
        // Stale and repeated answers drop nothing.
        assert_eq!(o.ack(u32::MAX - 1), Ok(0));
        assert_eq!(o.ack(u32::MAX), Ok(0));
        let left: Vec<_> = o.unacked().collect();
        assert_eq!(left, vec![(0, &b"b"[..]), (1, &b"c"[..])]);
        assert_eq!(o.ack(2), Err(TooMany { h: 2, sent: 1 }));
        assert_eq!(o.ack(1), Ok(2));
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn queue_file_round_trip() {
        let mut o = Outbox::new(u32::MAX);
        let mut text = Vec::new();
        for r in ["<message>1</message>", "<iq/>", "<presence/>"] {
            let seq = o.push(r.as_bytes().to_vec());
            text.extend_from_slice(&queue_line(seq, format!("{r}\n").as_bytes()));
        }
        text.extend_from_slice(b"3 <mess");
        let back = parse_queue(&text, 0).expect("parse");
        let left: Vec<_> = back.unacked().map(|(s, r)| (s, r.to_vec())).collect();
        assert_eq!(
            left,
            vec![(1, b"<iq/>".to_vec()), (2, b"<presence/>".to_vec())]
        );
        assert_eq!(back.sent(), 2);
        assert!(parse_queue(b"5 <x/>\n", 0).is_err());
        assert!(parse_queue(b"x <x/>\n", 0).is_err());
    }

    #[test]
    fn store_files() {
        let d = std::env::temp_dir().join(format!("sj-sm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        let mut s = Store::new(d.join("session"), d.join("counts"), d.join("queue"));
        assert_eq!(s.load_session().expect("none"), None);
        s.save_session(&[("id", "abc"), ("jid", "a@b/c\n")])
            .expect("save");
        let kv = s.load_session().expect("load").expect("some");
        assert_eq!(kv[1], ("jid".to_string(), "a@b/c".to_string()));
        s.save_counts(Counts {
            inbound: 7,
            acked: u32::MAX,
        })
        .expect("counts");
        s.save_counts(Counts {
            inbound: 8,
            acked: 1,
        })
        .expect("counts");
        assert_eq!(
            s.load_counts().expect("load"),
            Counts {
                inbound: 8,
                acked: 1
            }
        );
        let mut o = Outbox::new(1);
        for r in ["<a/>", "<b/>"] {
            let seq = o.push(r.as_bytes().to_vec());
            s.append(&queue_line(seq, r.as_bytes())).expect("append");
        }
        o.ack(2).expect("ack");
        s.compact(&o, true).expect("compact");
        assert_eq!(fs::read(d.join("queue")).expect("read"), b"3 <b/>\n");
        assert_eq!(s.load_queue(2).expect("q").len(), 1);
        std::os::unix::fs::symlink("/etc/passwd", d.join("evil")).expect("ln");
        let mut bad = Store::new(d.join("s"), d.join("evil"), d.join("q"));
        assert!(bad.save_counts(Counts::default()).is_err());
        s.clear();
        assert!(!d.join("queue").exists());
        fs::remove_dir_all(&d).ok();
    }
}
