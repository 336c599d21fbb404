//! The streaming framer: XMPP bytes in, canonical one-line records out.
//!
//! A record (DESIGN §4) is one complete top-level element on one line,
//! followed by LF: CRLF and lone CR become LF (XML end-of-line handling), an
//! LF in character data is written `&#10;`, an LF or TAB in an attribute
//! value becomes a space; every other byte is exactly what the peer sent.
//! A record never relies on a prefix declared only on the stream header: the
//! declaration is added to the record's top-level start tag when needed.
//!
//! Validation (DESIGN §8, RFC 6120 §11): restricted XML (no comments, PIs,
//! DTDs, entity references beyond the five predefined ones), strict UTF-8
//! and XML `Char`s, XML names, attribute syntax and duplicates, matching end
//! tags, size, depth and attribute-count limits, and the line-size rule of
//! the pipes (`Limits::max_line`). After an error the framer is dead until
//! `reset`.
//!
//! Not here: what a record means. The framer knows nothing of stanzas.
//!
//! How: one hand-written pass validates and canonicalises together (quick-xml
//! is not used because it would need a second pass anyway for UTF-8,
//! `Char`, name and reference checks). An element already whole in the
//! buffer is done in that one pass. One that is not goes to a resumable
//! boundary scanner (memchr for `<`, quote tracking inside tags, CDATA,
//! depth) that remembers where it stopped, so one-byte feeds never rescan;
//! it also refuses what must be refused before a record completes (size
//! and depth limits, comments, PIs, a nested stream header). The pass keeps
//! its state at its last complete markup token (its mark) and goes on from
//! there when more bytes come or the scanner finds the end, so a record
//! split over reads is still checked about once. Scanner errors come from
//! the bytes up to a fixed position and the pass reports errors for whole
//! records only; the fast path yields only what the scanner path would,
//! and leaves every doubt to it, so errors, too, do not depend on chunking.
//!
//! Namespaces in XML too: declared prefixes, reserved prefixes, and no two
//! attributes with one expanded name (`a:x` and `b:x` bound to one URI).
//! What strict parsers downstream (Expat in clients and servers) would
//! refuse must be refused here, or one stanza would end every sibling's
//! stream through mirrord, or the upstream session.
//!
//! Lenient on purpose: whitespace before the XML declaration or the header
//! is skipped. Not checked: the value of the header's default namespace
//! (the session programs look at the header attributes).

use std::borrow::Cow;

/// Limits on what one record may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes in one record as received (before canonicalisation).
    pub max_record: usize,
    /// Element nesting depth inside one record (the top-level element is 1).
    pub max_depth: usize,
    /// Attributes on one element.
    pub max_attrs: usize,
    /// Bytes in the record as one line, without its LF (see `grown`).
    pub max_line: usize,
    /// 0: breaking any limit above is a stream error. Otherwise an element
    /// that breaks one is skipped (checked on the way, never buffered) and
    /// reported as `Event::Dropped`, as long as it is at most this many
    /// bytes; past that it is a stream error (policy-violation).
    pub max_skip: usize,
}

impl Limits {
    /// Before authentication (DESIGN §8): 8 KiB.
    pub const PRE_AUTH: Limits = Limits::new(8 * 1024, 16, 32);
    /// After authentication: 256 KiB, like Prosody and ejabberd.
    pub const DEFAULT: Limits = Limits::new(256 * 1024, 64, 64);
    /// What a server sends after authentication. A server counts its
    /// 256 KiB on what it receives, then serialises the stanza again on the
    /// way out: Prosody and ejabberd write a `'` or `"` in text as
    /// `&apos;`/`&quot;`, 6 bytes for 1, so a contact's 256 KiB stanza can
    /// reach us as 1.5 MiB, plus what the server adds (a `from` with a
    /// 1023-byte resource, itself escaped, stanza-id, delay, a carbons or
    /// archive wrapper): 64 KiB of room for that. Such a stanza does not
    /// grow again on one line (no CDATA, and a byte that became 6 is not a
    /// line break), so the lines stay within `MAX_LINE`.
    ///
    /// Anything past these limits was sent by a third party the server
    /// relays, not by the server: it is skipped (`Event::Dropped`), never
    /// a stream error, or any contact could end the session at will, and a
    /// stored offline message could end every later one. 16 MiB in one
    /// element is past anything a server forwards: a stream error.
    pub const FROM_SERVER: Limits = Limits {
        max_record: 6 * 256 * 1024 + 64 * 1024,
        max_line: MAX_LINE,
        max_skip: 16 << 20,
        ..Limits::DEFAULT
    };

    /// Limits whose line rule follows from `max_record` (`grown`).
    pub const fn new(max_record: usize, max_depth: usize, max_attrs: usize) -> Limits {
        Limits {
            max_record,
            max_depth,
            max_attrs,
            max_line: grown(max_record),
            max_skip: 0,
        }
    }

    /// The line-size rule of every pipe and FIFO (DESIGN §4): the longest
    /// line, without its LF, that a record framed under these limits can
    /// be; the framer refuses (policy-violation) a record whose line would
    /// be longer. A reader that takes lines this long never drops a record
    /// the framer made.
    pub const fn max_line(&self) -> usize {
        self.max_line
    }
}

/// The longest line an element of `max_record` bytes as received can make.
/// Records grow when put on one line: a line break in character data
/// becomes `&#10;` and one inside CDATA `]]>&#10;<![CDATA[`, so 17 times as
/// long at most; declarations copied from the stream header come on top,
/// and the framer refuses the record whose declarations do not fit in
/// `DECL_ROOM`.
pub const fn grown(max_record: usize) -> usize {
    max_record
        .saturating_mul(CDATA_BREAK.len())
        .saturating_add(DECL_ROOM)
}

/// The longest line a program reads from a pipe or FIFO of records: those
/// framed under `Limits::DEFAULT` (4.25 MiB + 4 KiB).
pub const MAX_LINE: usize = Limits::DEFAULT.max_line();

/// A line break inside CDATA, on one line: the section is closed around it.
const CDATA_BREAK: &[u8] = b"]]>&#10;<![CDATA[";

/// Room in `Limits::max_line` for namespace declarations copied from the
/// stream header into a record (a real header declares a few dozen bytes).
const DECL_ROOM: usize = 4096;

/// Stream-level error conditions (RFC 6120 §4.9.3) the framer can detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Malformed XML or XML-Names (RFC 6120 §4.9.3.13): bad UTF-8, bad
    /// names, mismatched tags, undeclared prefixes.
    NotWellFormed,
    /// Comments, PIs, DTDs, non-predefined entities.
    RestrictedXml,
    /// Over a size, depth or attribute-count limit.
    PolicyViolation,
    /// The stream element is not in the streams namespace.
    InvalidNamespace,
    /// A second stream header inside the stream, or other misuse of the stream element.
    BadFormat,
    /// The XML declaration names an encoding other than UTF-8.
    UnsupportedEncoding,
}

impl Condition {
    /// The RFC 6120 element name, e.g. `not-well-formed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::NotWellFormed => "not-well-formed",
            Condition::RestrictedXml => "restricted-xml",
            Condition::PolicyViolation => "policy-violation",
            Condition::InvalidNamespace => "invalid-namespace",
            Condition::BadFormat => "bad-format",
            Condition::UnsupportedEncoding => "unsupported-encoding",
        }
    }
}

/// Why the input was refused: the stream error to send, and a detail for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub condition: Condition,
    pub detail: String,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.condition.as_str(), self.detail)
    }
}

impl std::error::Error for FrameError {}

/// The opening `<stream:stream ...>` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Attributes in document order: qualified name and unescaped value,
    /// including `xmlns` and `xmlns:*` declarations.
    pub attrs: Vec<(String, String)>,
}

impl StreamHeader {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The content namespace is `jabber:client` (declared, or left implied):
    /// records imply it, so a stream in any other is refused with
    /// invalid-namespace (RFC 6120 §4.9.3.10).
    pub fn is_jabber_client(&self) -> bool {
        self.get("xmlns").unwrap_or("jabber:client") == "jabber:client"
    }
}

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The stream header (only in `Mode::Stream`).
    Header(StreamHeader),
    /// One canonical record, ending in `\n`. Includes nonzas such as
    /// `<stream:features>` (with the stream namespace declared on it).
    Record(Vec<u8>),
    /// `<stream:error>` as a self-contained record line, ending in `\n`.
    StreamError(Vec<u8>),
    /// `</stream:stream>`.
    End,
    /// An element skipped for breaking a limit (`Limits::max_skip`).
    Dropped(Dropped),
}

/// What is known of a skipped element: why, and what its top-level start
/// tag said (raw attribute values as sent, when short enough to keep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The limit it broke (always policy-violation).
    pub reason: FrameError,
    /// Its qualified name, e.g. `message`.
    pub name: String,
    pub from: Option<String>,
    pub id: Option<String>,
    /// Its `type` attribute.
    pub kind: Option<String>,
    /// Its size as received.
    pub bytes: usize,
}

/// Whether the input is an XMPP stream or a sequence of bare records
/// (a FIFO: no header, default namespace `jabber:client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Stream,
    Fragments,
}

const STREAMS_NS: &[u8] = b"http://etherx.jabber.org/streams";

/// RFC 6120 §11.6: a stream in another encoding gets unsupported-encoding.
/// A UTF-16 (or UTF-32) stream shows itself in its first bytes: a byte
/// order mark, or NUL bytes around the first `<`. (A UTF-8 BOM is a
/// character, U+FEFF, and so text before the header: not-well-formed.)
const UTF16: &str = "the stream is not UTF-8 (UTF-16 or UTF-32)";

type Res<T> = Result<T, FrameError>;

fn fail<T>(condition: Condition, detail: impl Into<String>) -> Res<T> {
    Err(FrameError {
        condition,
        detail: detail.into(),
    })
}

/// What the stream header declared, needed to make records self-contained.
#[derive(Debug, Clone)]
struct Header {
    /// Qualified name of the stream element as sent, e.g. `stream:stream`.
    qname: Vec<u8>,
    /// `xmlns:p` declarations of the header: prefix and unescaped URI.
    prefixes: Vec<(Vec<u8>, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet: the XML declaration is still allowed.
    Start,
    /// Declaration seen, header not yet.
    Header,
    Body,
    Ended,
}

/// Where the boundary scanner stopped, so that feeding one byte never
/// rescans what was already looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// In character data (inside a record) or between top-level items.
    Idle,
    /// At a `<` whose kind is not known yet.
    Lt,
    /// Inside a start or end tag; `quote` is the open quote or 0.
    Tag {
        start: usize,
        quote: u8,
        end_tag: bool,
    },
    /// Inside a CDATA section whose content starts at `content`.
    Cdata { content: usize },
    /// Inside `<?xml ... ?>` at stream start.
    Decl,
}

pub struct Framer {
    mode: Mode,
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes before `pos` have been returned as events (or skipped).
    pos: usize,
    /// Bytes before `scan` have been looked at by the boundary scanner.
    scan: usize,
    /// Start of the top-level item being scanned.
    item: Option<usize>,
    depth: usize,
    lex: Lex,
    phase: Phase,
    header: Option<Header>,
    err: Option<FrameError>,
    scratch: Scratch,
    /// `scratch` holds the validating pass over the element at `item` up
    /// to its mark.
    pending: Option<Pending>,
    /// The element being skipped (`Limits::max_skip`): the bytes before
    /// `pos` went to it, none are kept.
    skip: Option<Box<Skip>>,
    /// Bytes handed to the validating pass, at most: the tests bound it.
    #[cfg(test)]
    pass_bytes: usize,
}

/// A validating pass that stopped before the end of its element.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The limits it was made with.
    limits: Limits,
    /// How many bytes of the element it saw.
    seen: usize,
}

impl Framer {
    pub fn new(mode: Mode, limits: Limits) -> Self {
        let mut f = Framer {
            mode,
            limits,
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            item: None,
            depth: 0,
            lex: Lex::Idle,
            phase: Phase::Start,
            header: None,
            err: None,
            scratch: Scratch::default(),
            pending: None,
            skip: None,
            #[cfg(test)]
            pass_bytes: 0,
        };
        f.reset();
        f
    }

    /// Change limits (e.g. to `Limits::DEFAULT` after authentication).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Stream restart (after STARTTLS or SASL success): forget everything
    /// buffered and expect a new stream header.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.scan = 0;
        self.item = None;
        self.depth = 0;
        self.lex = Lex::Idle;
        self.phase = match self.mode {
            Mode::Stream => Phase::Start,
            Mode::Fragments => Phase::Body,
        };
        self.header = None;
        self.err = None;
        self.pending = None;
        self.skip = None;
    }

    /// Append bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.err.is_some() {
            // A dead stream only needs its error; buffering more is a waste.
            return;
        }
        // Compact only when at least half the buffer is consumed, so each
        // byte is moved a bounded number of times (amortised linear).
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            let d = self.pos;
            self.buf.drain(..d);
            self.pos = 0;
            self.scan -= d;
            self.item = self.item.map(|i| i - d);
            self.lex = match self.lex {
                Lex::Tag {
                    start,
                    quote,
                    end_tag,
                } => Lex::Tag {
                    start: start - d,
                    quote,
                    end_tag,
                },
                Lex::Cdata { content } => Lex::Cdata {
                    content: content - d,
                },
                other => other,
            };
        }
        self.buf.extend_from_slice(data);
    }

    /// The next event, `Ok(None)` when more bytes are needed. Whitespace
    /// between top-level elements is skipped. After an `Err` every call
    /// returns the same error until `reset`.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        if let Some(e) = &self.err {
            return Err(e.clone());
        }
        let r = match self.skip.is_some() {
            true => self.skip_step(),
            false => match self.step() {
                Err(e) if self.skippable(&e) => {
                    self.begin_skip(e);
                    self.skip_step()
                }
                r => r,
            },
        };
        match r {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.err = Some(e.clone());
                Err(e)
            }
        }
    }

    /// A limit broken by an element inside the stream, where the limits
    /// say to skip it. Every limit error is raised while `item` marks the
    /// element's start.
    fn skippable(&self, e: &FrameError) -> bool {
        e.condition == Condition::PolicyViolation
            && self.limits.max_skip > 0
            && self.phase == Phase::Body
            && self.item.is_some()
    }

    /// Hand the element at `item` to a skipper, from its first byte: the
    /// skipper checks all of it, so where the limit was noticed does not
    /// matter, and the element's bytes are let go as they are checked.
    fn begin_skip(&mut self, reason: FrameError) {
        let start = self.item.take().unwrap_or(self.pos);
        self.skip = Some(Box::new(Skip::new(
            reason,
            self.limits.max_skip,
            self.header.as_ref(),
        )));
        self.pos = start;
        self.scan = start;
        self.depth = 0;
        self.lex = Lex::Idle;
        self.pending = None;
    }

    fn skip_step(&mut self) -> Res<Option<Event>> {
        let Some(sk) = self.skip.as_mut() else {
            return Ok(None);
        };
        match sk.feed(&self.buf[self.pos..])? {
            Some(n) => {
                self.pos += n;
                self.scan = self.pos;
                Ok(self.skip.take().map(|sk| Event::Dropped(sk.into_dropped())))
            }
            None => {
                self.pos = self.buf.len();
                self.scan = self.pos;
                Ok(None)
            }
        }
    }

    /// Bytes buffered but not yet returned as an event.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Refuse an item that has grown past the record limit. `upto` is the
    /// end of the bytes known to belong to it. Every scanner error checks
    /// this first, so the outcome does not depend on how input was chunked.
    fn limit(&self, upto: usize) -> Res<()> {
        match self.item {
            Some(s) if upto - s > self.limits.max_record => fail(
                Condition::PolicyViolation,
                format!("element exceeds {} bytes", self.limits.max_record),
            ),
            _ => Ok(()),
        }
    }

    fn fail_at<T>(&self, upto: usize, c: Condition, detail: &str) -> Res<T> {
        self.limit(upto)?;
        fail(c, detail)
    }

    fn step(&mut self) -> Res<Option<Event>> {
        if let (Some(p), Some(at)) = (self.pending, self.item) {
            let avail = self.buf.len().min(at.saturating_add(p.limits.max_record)) - at;
            let redo = p.seen - self.scratch.mark.i;
            if p.limits != self.limits {
                // Changed mid-element: a fresh pass at the end, as before.
                self.pending = None;
            } else if avail > p.seen && avail - p.seen >= redo {
                // Going on from the mark redoes the bytes after it; waiting
                // for as many new bytes keeps that linear in tiny reads.
                if let Some(ev) = self.try_pass(at) {
                    return Ok(Some(ev));
                }
            }
        }
        loop {
            let n = self.buf.len();
            match self.lex {
                Lex::Idle if self.item.is_none() => {
                    let mut i = self.scan;
                    while i < n && is_ws(self.buf[i]) {
                        i += 1;
                    }
                    self.scan = i;
                    self.pos = i;
                    if i == n {
                        return Ok(None);
                    }
                    if self.phase == Phase::Ended {
                        return fail(Condition::NotWellFormed, "data after the end of the stream");
                    }
                    if self.phase == Phase::Start && matches!(self.buf[i], 0x00 | 0xFE | 0xFF) {
                        return fail(Condition::UnsupportedEncoding, UTF16);
                    }
                    if self.buf[i] != b'<' {
                        return fail(Condition::NotWellFormed, "text outside an element");
                    }
                    if let Some(ev) = self.start_item(i) {
                        return Ok(Some(ev));
                    }
                }
                Lex::Idle => match find_byte(b'<', &self.buf[self.scan..]) {
                    None => {
                        self.scan = n;
                        self.limit(n)?;
                        return Ok(None);
                    }
                    Some(off) => {
                        self.scan += off;
                        self.limit(self.scan + 1)?;
                        self.lex = Lex::Lt;
                    }
                },
                Lex::Lt => {
                    let p = self.scan;
                    let Some(&b) = self.buf.get(p + 1) else {
                        self.limit(n)?;
                        return Ok(None);
                    };
                    let top = self.depth == 0;
                    if b == 0 && self.phase == Phase::Start {
                        return fail(Condition::UnsupportedEncoding, UTF16);
                    }
                    match b {
                        b'/' => {
                            self.lex = Lex::Tag {
                                start: p,
                                quote: 0,
                                end_tag: true,
                            };
                            self.scan = p + 2;
                        }
                        b'?' if self.phase == Phase::Start => {
                            self.lex = Lex::Decl;
                            self.scan = p + 2;
                        }
                        b'?' => {
                            return self.fail_at(
                                p + 2,
                                Condition::RestrictedXml,
                                "processing instruction",
                            )
                        }
                        b'!' => {
                            const CDATA: &[u8] = b"<![CDATA[";
                            let avail = &self.buf[p..n.min(p + CDATA.len())];
                            if CDATA.starts_with(avail) {
                                if avail.len() < CDATA.len() {
                                    self.limit(n)?;
                                    return Ok(None);
                                }
                                if top {
                                    return self.fail_at(
                                        p + CDATA.len(),
                                        Condition::NotWellFormed,
                                        "CDATA outside an element",
                                    );
                                }
                                self.lex = Lex::Cdata {
                                    content: p + CDATA.len(),
                                };
                                self.scan = p + CDATA.len();
                            } else {
                                let what = if avail.starts_with(b"<!-") {
                                    "comment"
                                } else {
                                    "DTD or markup declaration"
                                };
                                // Judged at the first byte that is not CDATA,
                                // not at however much has arrived, so the
                                // size check does not depend on chunking.
                                let bad = avail
                                    .iter()
                                    .zip(CDATA)
                                    .position(|(a, b)| a != b)
                                    .unwrap_or(avail.len());
                                return self.fail_at(p + bad + 1, Condition::RestrictedXml, what);
                            }
                        }
                        _ => {
                            self.lex = Lex::Tag {
                                start: p,
                                quote: 0,
                                end_tag: false,
                            };
                            self.scan = p + 1;
                        }
                    }
                }
                Lex::Tag {
                    start,
                    quote,
                    end_tag,
                } => {
                    let rest = &self.buf[self.scan..];
                    let found = if quote == 0 {
                        let head = rest.len().min(16);
                        match rest[..head]
                            .iter()
                            .position(|&b| matches!(b, b'>' | b'\'' | b'"'))
                        {
                            Some(i) => Some(i),
                            None => {
                                memchr::memchr3(b'>', b'\'', b'"', &rest[head..]).map(|i| i + head)
                            }
                        }
                    } else {
                        find_byte(quote, rest)
                    };
                    let Some(off) = found else {
                        self.scan = n;
                        self.limit(n)?;
                        return Ok(None);
                    };
                    let p = self.scan + off;
                    self.scan = p + 1;
                    let c = self.buf[p];
                    if quote != 0 {
                        self.lex = Lex::Tag {
                            start,
                            quote: 0,
                            end_tag,
                        };
                    } else if c != b'>' {
                        self.lex = Lex::Tag {
                            start,
                            quote: c,
                            end_tag,
                        };
                    } else {
                        self.limit(p + 1)?;
                        self.lex = Lex::Idle;
                        if let Some(ev) = self.tag_done(start, p + 1, end_tag)? {
                            return Ok(Some(ev));
                        }
                    }
                }
                Lex::Cdata { content } => match memchr::memchr(b'>', &self.buf[self.scan..]) {
                    None => {
                        self.scan = n;
                        self.limit(n)?;
                        return Ok(None);
                    }
                    Some(off) => {
                        let p = self.scan + off;
                        self.scan = p + 1;
                        if p >= content + 2 && &self.buf[p - 2..p] == b"]]" {
                            self.limit(p + 1)?;
                            self.lex = Lex::Idle;
                        }
                    }
                },
                Lex::Decl => match memchr::memchr(b'>', &self.buf[self.scan..]) {
                    None => {
                        self.scan = n;
                        self.limit(n)?;
                        return Ok(None);
                    }
                    Some(off) => {
                        let p = self.scan + off;
                        self.scan = p + 1;
                        if self.buf[p - 1] == b'?' {
                            self.limit(p + 1)?;
                            let start = self.item.unwrap_or(0);
                            parse_decl(&self.buf[start..p + 1])?;
                            self.phase = Phase::Header;
                            self.item = None;
                            self.pos = p + 1;
                            self.lex = Lex::Idle;
                        }
                    }
                },
            }
        }
    }

    /// A start or end tag `buf[start..end]` is complete.
    fn tag_done(&mut self, start: usize, end: usize, end_tag: bool) -> Res<Option<Event>> {
        match self.phase {
            Phase::Start | Phase::Header => {
                if end_tag {
                    return fail(Condition::NotWellFormed, "end tag before the stream header");
                }
                let (header, attrs) = parse_header(&self.buf[start..end], self.limits)?;
                self.header = Some(header);
                self.phase = Phase::Body;
                self.item = None;
                self.pos = end;
                Ok(Some(Event::Header(StreamHeader { attrs })))
            }
            Phase::Body | Phase::Ended => {
                let name = tag_name(&self.buf[start..end]);
                if end_tag {
                    if self.depth == 0 {
                        let ok = match &self.header {
                            Some(h) => name == h.qname.as_slice(),
                            None => false,
                        };
                        let tail = &self.buf[start + 2 + name.len()..end - 1];
                        if !ok || !tail.iter().all(|&b| is_ws(b)) {
                            return fail(Condition::NotWellFormed, "end tag without a start tag");
                        }
                        self.phase = Phase::Ended;
                        self.item = None;
                        self.pos = end;
                        return Ok(Some(Event::End));
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        return self.finish_record(end).map(Some);
                    }
                    return Ok(None);
                }
                if let Some(h) = &self.header {
                    // A second header may never end: refuse it at its start
                    // tag, under any prefix (deeper ones: the validating pass).
                    if name == h.qname.as_slice()
                        || (self.depth == 0
                            && split_qname(name).1 == b"stream"
                            && in_streams_ns(&self.buf[start..end], h))
                    {
                        return fail(Condition::BadFormat, "stream header inside the stream");
                    }
                }
                if self.depth + 1 > self.limits.max_depth {
                    return fail(
                        Condition::PolicyViolation,
                        format!("nesting deeper than {}", self.limits.max_depth),
                    );
                }
                let self_closing = end - start >= 3 && self.buf[end - 2] == b'/';
                if !self_closing {
                    self.depth += 1;
                } else if self.depth == 0 {
                    return self.finish_record(end).map(Some);
                }
                Ok(None)
            }
        }
    }

    fn finish_record(&mut self, end: usize) -> Res<Event> {
        // `item` stays until the record is made: a limit error may skip it.
        let start = self.item.unwrap_or(self.pos);
        let resume = self.pending.take().is_some_and(|p| p.limits == self.limits);
        #[cfg(test)]
        {
            self.pass_bytes += end - start - if resume { self.scratch.mark.i } else { 0 };
        }
        let c = canonicalise(
            &self.buf[start..end],
            self.limits,
            self.header.as_ref(),
            &mut self.scratch,
            resume,
        )?;
        self.item = None;
        self.pos = end;
        Ok(c.into_event())
    }

    /// A top-level item starts at `at` (a `<`). For an element, the fast
    /// path: validate and canonicalise what is buffered of it in one pass,
    /// without the boundary scanner. The record, if it is whole and valid.
    /// Otherwise the scanner takes over (see `try_pass`).
    fn start_item(&mut self, at: usize) -> Option<Event> {
        self.item = Some(at);
        self.lex = Lex::Lt;
        self.pending = None;
        if self.phase != Phase::Body
            || matches!(self.buf.get(at + 1), None | Some(b'/' | b'?' | b'!'))
        {
            return None;
        }
        self.scratch.begin();
        self.try_pass(at)
    }

    /// Run the validating pass from the state in `scratch` over what is
    /// buffered of the element at `at`. The record, if it is whole and
    /// valid; the scanner path would have produced the same one: it ends an
    /// element where the pass does, and refuses nothing in a valid one of
    /// at most `max_record` bytes.
    ///
    /// Otherwise the scanner path decides, which gives the answer (and any
    /// error) the same bytes always give. The pass is kept at its mark for
    /// a later `try_pass` or for `finish_record`, and the scanner is moved
    /// up to the mark if it is behind: the scanner refuses nothing before
    /// the mark and would be there at depth `stack` in character data, as
    /// the pass accepted every token before it and is inside `max_record`.
    /// The caller keeps the work linear: each byte is scanned once, and the
    /// pass sees each byte a bounded number of times.
    fn try_pass(&mut self, at: usize) -> Option<Event> {
        let lim = self
            .buf
            .len()
            .min(at.saturating_add(self.limits.max_record));
        let s = &self.buf[at..lim];
        #[cfg(test)]
        {
            self.pass_bytes += s.len() - self.scratch.mark.i;
        }
        match check_element(s, self.limits, self.header.as_ref(), &mut self.scratch) {
            Ok(c) if !c.fits(self.limits) => {
                // The scanner path refuses it, after a pass from the start.
                self.pending = None;
                None
            }
            Ok(c) => {
                self.pending = None;
                // Invalid UTF-8: the scanner path reports it.
                std::str::from_utf8(&s[..c.end]).ok()?;
                self.item = None;
                self.lex = Lex::Idle;
                self.depth = 0;
                self.pos = at + c.end;
                self.scan = self.pos;
                Some(c.into_event())
            }
            Err(_) => {
                self.pending = Some(Pending {
                    limits: self.limits,
                    seen: s.len(),
                });
                self.scratch.rewind();
                let m = self.scratch.mark;
                if m.i > 0 && at + m.i > self.scan {
                    self.depth = m.stack;
                    self.lex = Lex::Idle;
                    self.scan = at + m.i;
                }
                None
            }
        }
    }
}

/// Levels of a skipped element whose end tags are matched by name: deeper
/// ones are only counted, so memory stays bounded whatever the depth.
const SKIP_NAMED_LEVELS: usize = 1024;
/// Attributes of one tag of a skipped element checked for duplicates.
const SKIP_ATTR_NAMES: usize = 256;
/// Longest attribute value of a skipped element's top-level tag kept for
/// `Dropped` (a `from` with a 1023-byte localpart, domain and resource).
const SKIP_KEEP_VALUE: usize = 3 * 1024 + 2;
/// Longest name kept while skipping (to compare with the stream header's
/// and to name the element); longer names are hashed only.
const SKIP_KEEP_NAME: usize = 256;
/// Longest reference (`&...;`) taken while skipping.
const SKIP_MAX_REF: usize = 64;

/// Where the skipper is, one character at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SkLex {
    Text,
    /// In a reference; `quote` is the attribute value's quote, 0 in text.
    Ref {
        quote: u8,
    },
    Lt,
    /// After `<!`: how much of `[CDATA[` matched.
    Bang(u8),
    Cdata,
    StartName,
    InTag {
        ws: bool,
    },
    AttrName,
    AttrEq,
    AttrQuote,
    AttrValue(u8),
    Slash,
    EndName,
    EndWs,
}

/// The top-level attributes `Dropped` reports.
const SKIP_ATTRS: [&[u8]; 3] = [b"from", b"id", b"type"];

/// Skips one element that broke a limit without keeping it: a streaming
/// check, one character at a time, of what the validating pass checks
/// that does not need the whole element: strict UTF-8 and `Char`s, names,
/// tag and attribute syntax, duplicate attributes (the first
/// `SKIP_ATTR_NAMES` of a tag), references, CDATA, restricted XML, end
/// tags matching start tags (the first `SKIP_NAMED_LEVELS` levels) and no
/// nested stream header. Not checked: namespace prefixes. Its memory is
/// bounded by the constants above, not by the element.
struct Skip {
    reason: FrameError,
    max: usize,
    bytes: usize,
    lx: SkLex,
    depth: usize,
    /// `]` in a row, up to 2 (for `]]>`).
    brackets: u8,
    /// UTF-8 decoding: the code point so far, continuation bytes to come,
    /// and the range the next one must be in.
    cp: u32,
    need: u8,
    lo: u8,
    hi: u8,
    /// Hashes of the open elements' names.
    names: Vec<u64>,
    /// The name being read: hash, bytes kept, colons, and whether the last
    /// character was a colon.
    nh: u64,
    nbuf: Vec<u8>,
    nlen: usize,
    colons: u8,
    after_colon: bool,
    /// Hash of the name of the tag being read.
    tag_hash: u64,
    /// Hashes of the attribute names of the tag being read.
    attrs: Vec<u64>,
    refbuf: Vec<u8>,
    /// In the element's own start tag.
    top: bool,
    /// The stream header's qualified name.
    header: Option<Vec<u8>>,
    name: Vec<u8>,
    /// Which of `SKIP_ATTRS` the value being read is, and the values.
    capture: Option<usize>,
    vals: [Option<Vec<u8>>; 3],
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: u64, c: char) -> u64 {
    (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
}

fn is_xml_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

impl Skip {
    fn new(reason: FrameError, max: usize, header: Option<&Header>) -> Skip {
        Skip {
            reason,
            max,
            bytes: 0,
            lx: SkLex::Text,
            depth: 0,
            brackets: 0,
            cp: 0,
            need: 0,
            lo: 0,
            hi: 0,
            names: Vec::new(),
            nh: FNV_OFFSET,
            tag_hash: 0,
            nbuf: Vec::new(),
            nlen: 0,
            colons: 0,
            after_colon: false,
            attrs: Vec::new(),
            refbuf: Vec::new(),
            top: false,
            header: header.map(|h| h.qname.clone()),
            name: Vec::new(),
            capture: None,
            vals: [None, None, None],
        }
    }

    /// Take bytes of the element (from its `<` on). `Some(n)`: it ended
    /// after `data[..n]`.
    fn feed(&mut self, data: &[u8]) -> Res<Option<usize>> {
        for (i, &b) in data.iter().enumerate() {
            self.bytes += 1;
            if self.bytes > self.max {
                return fail(
                    Condition::PolicyViolation,
                    format!("element exceeds {} bytes", self.max),
                );
            }
            let Some(c) = self.decode(b)? else {
                continue;
            };
            if !is_xml_char(c as u32) {
                return fail(Condition::NotWellFormed, "control character");
            }
            if self.char(c)? {
                return Ok(Some(i + 1));
            }
        }
        Ok(None)
    }

    fn decode(&mut self, b: u8) -> Res<Option<char>> {
        let bad = || fail(Condition::NotWellFormed, "invalid UTF-8");
        if self.need == 0 {
            if b < 0x80 {
                return Ok(Some(b as char));
            }
            let (need, cp, lo, hi) = match b {
                0xC2..=0xDF => (1, b & 0x1F, 0x80, 0xBF),
                0xE0 => (2, 0, 0xA0, 0xBF),
                0xE1..=0xEC | 0xEE..=0xEF => (2, b & 0x0F, 0x80, 0xBF),
                0xED => (2, 0x0D, 0x80, 0x9F),
                0xF0 => (3, 0, 0x90, 0xBF),
                0xF1..=0xF3 => (3, b & 0x07, 0x80, 0xBF),
                0xF4 => (3, 4, 0x80, 0x8F),
                _ => return bad(),
            };
            (self.need, self.cp, self.lo, self.hi) = (need, cp as u32, lo, hi);
            return Ok(None);
        }
        if b < self.lo || b > self.hi {
            return bad();
        }
        self.cp = (self.cp << 6) | (b & 0x3F) as u32;
        self.need -= 1;
        (self.lo, self.hi) = (0x80, 0xBF);
        if self.need > 0 {
            return Ok(None);
        }
        match char::from_u32(self.cp) {
            Some(c) => Ok(Some(c)),
            None => bad(),
        }
    }

    fn name_begin(&mut self, c: char) -> Res<()> {
        if c == ':' || !is_name_start(c) {
            return fail(Condition::NotWellFormed, "invalid name");
        }
        self.nh = FNV_OFFSET;
        self.nbuf.clear();
        self.nlen = 0;
        self.colons = 0;
        self.after_colon = false;
        self.name_push(c);
        Ok(())
    }

    fn name_push(&mut self, c: char) {
        self.nh = fnv(self.nh, c);
        self.nlen += c.len_utf8();
        if self.nbuf.len() < SKIP_KEEP_NAME {
            let mut b = [0u8; 4];
            self.nbuf
                .extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }

    /// Whether `c` goes on the name being read (else the name ended).
    fn name_more(&mut self, c: char) -> Res<bool> {
        if c == ':' {
            self.colons += 1;
            if self.colons > 1 {
                return fail(Condition::NotWellFormed, "invalid qualified name");
            }
            self.after_colon = true;
        } else if is_name_char(c) {
            if self.after_colon && !is_name_start(c) {
                return fail(Condition::NotWellFormed, "invalid qualified name");
            }
            self.after_colon = false;
        } else {
            if self.after_colon {
                return fail(Condition::NotWellFormed, "invalid qualified name");
            }
            return Ok(false);
        }
        self.name_push(c);
        Ok(true)
    }

    /// The name just read, if it was kept whole.
    fn whole_name(&self) -> Option<&[u8]> {
        (self.nlen == self.nbuf.len()).then_some(self.nbuf.as_slice())
    }

    /// A start tag ended; true when it was the element's own, self-closing.
    fn open(&mut self, self_closing: bool) -> bool {
        self.top = false;
        self.capture = None;
        self.lx = SkLex::Text;
        if self_closing {
            return self.depth == 0;
        }
        self.depth += 1;
        if self.depth <= SKIP_NAMED_LEVELS {
            self.names.push(self.tag_hash);
        }
        false
    }

    /// An end tag ended; true when it closed the element.
    fn close(&mut self) -> Res<bool> {
        if self.depth == 0 {
            return fail(Condition::NotWellFormed, "end tag without a start tag");
        }
        if self.depth <= SKIP_NAMED_LEVELS && self.names.pop() != Some(self.nh) {
            return fail(Condition::NotWellFormed, "mismatched end tag");
        }
        self.depth -= 1;
        self.lx = SkLex::Text;
        Ok(self.depth == 0)
    }

    /// The start tag's name ended.
    fn tag_named(&mut self) -> Res<()> {
        if self.header.is_some() && self.whole_name() == self.header.as_deref() {
            return fail(Condition::BadFormat, "stream header inside the stream");
        }
        self.tag_hash = self.nh;
        self.attrs.clear();
        if self.top {
            self.name = self.nbuf.clone();
        }
        Ok(())
    }

    /// An attribute's name ended.
    fn attr_named(&mut self) -> Res<()> {
        let seen = &self.attrs[..self.attrs.len().min(SKIP_ATTR_NAMES)];
        if seen.contains(&self.nh) {
            return fail(Condition::NotWellFormed, "duplicate attribute");
        }
        if self.attrs.len() < SKIP_ATTR_NAMES {
            self.attrs.push(self.nh);
        }
        self.capture = None;
        if self.top {
            if let Some(name) = self.whole_name() {
                self.capture = SKIP_ATTRS.iter().position(|a| *a == name);
                if let Some(k) = self.capture {
                    self.vals[k] = Some(Vec::new());
                }
            }
        }
        Ok(())
    }

    /// Keep `c` of a top-level value being captured, up to the bound.
    fn keep(&mut self, c: char) {
        if let Some(k) = self.capture {
            let over = match &mut self.vals[k] {
                Some(v) if v.len() + c.len_utf8() <= SKIP_KEEP_VALUE => {
                    let mut b = [0u8; 4];
                    v.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    false
                }
                _ => true,
            };
            if over {
                self.vals[k] = None;
                self.capture = None;
            }
        }
    }

    /// A reference ended (at `;`) or went wrong: check what it holds.
    fn reference(&mut self) -> Res<()> {
        match reference_end(&self.refbuf, 0) {
            Ok(end) if end == self.refbuf.len() => Ok(()),
            Ok(_) => fail(Condition::NotWellFormed, "'&' not starting a reference"),
            Err(e) => Err(e),
        }
    }

    /// One character; true when it ended the element.
    fn char(&mut self, c: char) -> Res<bool> {
        match self.lx {
            SkLex::Text => match c {
                '<' => self.lx = SkLex::Lt,
                '&' => {
                    self.refbuf.clear();
                    self.refbuf.push(b'&');
                    self.lx = SkLex::Ref { quote: 0 };
                }
                ']' => self.brackets = (self.brackets + 1).min(2),
                '>' if self.brackets == 2 => {
                    return fail(Condition::NotWellFormed, "']]>' in character data")
                }
                _ => self.brackets = 0,
            },
            SkLex::Ref { quote } => {
                if quote != 0 {
                    self.keep(c);
                }
                let mut b = [0u8; 4];
                self.refbuf
                    .extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                if c == ';' || !(c == '#' || is_name_char(c)) || self.refbuf.len() > SKIP_MAX_REF {
                    self.reference()?;
                    self.brackets = 0;
                    self.lx = match quote {
                        0 => SkLex::Text,
                        q => SkLex::AttrValue(q),
                    };
                }
            }
            SkLex::Lt => match c {
                '/' => {
                    self.nlen = 0;
                    self.lx = SkLex::EndName;
                }
                '!' => self.lx = SkLex::Bang(0),
                '?' => return fail(Condition::RestrictedXml, "processing instruction"),
                _ => {
                    self.top = self.depth == 0;
                    self.name_begin(c)?;
                    self.lx = SkLex::StartName;
                }
            },
            SkLex::Bang(k) => {
                const CDATA: &[u8] = b"[CDATA[";
                if c as u32 == CDATA[k as usize] as u32 {
                    self.lx = if k as usize + 1 == CDATA.len() {
                        self.brackets = 0;
                        SkLex::Cdata
                    } else {
                        SkLex::Bang(k + 1)
                    };
                } else {
                    let what = if k == 0 && c == '-' {
                        "comment"
                    } else {
                        "DTD or markup declaration"
                    };
                    return fail(Condition::RestrictedXml, what);
                }
            }
            SkLex::Cdata => match c {
                ']' => self.brackets = (self.brackets + 1).min(2),
                '>' if self.brackets == 2 => {
                    self.brackets = 0;
                    self.lx = SkLex::Text;
                }
                _ => self.brackets = 0,
            },
            SkLex::StartName => {
                if !self.name_more(c)? {
                    self.tag_named()?;
                    self.lx = SkLex::InTag { ws: false };
                    return self.char(c);
                }
            }
            SkLex::InTag { ws } => match c {
                _ if is_xml_ws(c) => self.lx = SkLex::InTag { ws: true },
                '>' => return Ok(self.open(false)),
                '/' => self.lx = SkLex::Slash,
                _ if !ws => {
                    return fail(
                        Condition::NotWellFormed,
                        "missing whitespace before attribute",
                    )
                }
                _ => {
                    self.name_begin(c)?;
                    self.lx = SkLex::AttrName;
                }
            },
            SkLex::AttrName => {
                if !self.name_more(c)? {
                    self.attr_named()?;
                    self.lx = SkLex::AttrEq;
                    return self.char(c);
                }
            }
            SkLex::AttrEq => match c {
                _ if is_xml_ws(c) => {}
                '=' => self.lx = SkLex::AttrQuote,
                _ => {
                    return fail(
                        Condition::NotWellFormed,
                        "expected '=' after attribute name",
                    )
                }
            },
            SkLex::AttrQuote => match c {
                _ if is_xml_ws(c) => {}
                '\'' | '"' => self.lx = SkLex::AttrValue(c as u8),
                _ => return fail(Condition::NotWellFormed, "unquoted attribute value"),
            },
            SkLex::AttrValue(q) => match c {
                _ if c as u32 == q as u32 => {
                    self.capture = None;
                    self.lx = SkLex::InTag { ws: false };
                }
                '<' => return fail(Condition::NotWellFormed, "'<' in attribute value"),
                '&' => {
                    self.keep(c);
                    self.refbuf.clear();
                    self.refbuf.push(b'&');
                    self.lx = SkLex::Ref { quote: q };
                }
                _ => self.keep(c),
            },
            SkLex::Slash => match c {
                '>' => return Ok(self.open(true)),
                _ => return fail(Condition::NotWellFormed, "expected '>' after '/'"),
            },
            SkLex::EndName => {
                if self.nlen == 0 {
                    self.name_begin(c)?;
                } else if !self.name_more(c)? {
                    self.lx = SkLex::EndWs;
                    return self.char(c);
                }
            }
            SkLex::EndWs => match c {
                _ if is_xml_ws(c) => {}
                '>' => return self.close(),
                _ => return fail(Condition::NotWellFormed, "expected '>' in end tag"),
            },
        }
        Ok(false)
    }

    fn into_dropped(self) -> Dropped {
        let text = |v: &Option<Vec<u8>>| {
            v.as_deref()
                .and_then(|raw| crate::xml::unescape_bytes(raw, true))
        };
        Dropped {
            name: String::from_utf8_lossy(&self.name).into_owned(),
            from: text(&self.vals[0]),
            id: text(&self.vals[1]),
            kind: text(&self.vals[2]),
            bytes: self.bytes,
            reason: self.reason,
        }
    }
}

/// Validate and canonicalise one record given as one line (from a FIFO or a
/// pipe): exactly one top-level element, optional surrounding whitespace.
/// The line, and the record made of it, may be as long as
/// `limits.max_line()`: a line is usually a record already, grown by
/// canonicalisation. Depth and attribute limits apply as they are.
pub fn canonical_record(line: &[u8], limits: Limits) -> Result<Vec<u8>, FrameError> {
    let as_line = Limits {
        max_record: limits.max_line(),
        ..limits
    };
    let mut f = Framer::new(Mode::Fragments, as_line);
    f.feed(line);
    match f.next_event()? {
        // A stream error is still one element: a script may log or send it.
        Some(Event::Record(r) | Event::StreamError(r)) => match f.next_event()? {
            // A raw line's lone CRs grow like LFs do.
            None if f.buffered() == 0 && r.len() > limits.max_line().saturating_add(1) => {
                over_line(limits)
            }
            None if f.buffered() == 0 => Ok(r),
            _ => fail(
                Condition::NotWellFormed,
                "more than one element on the line",
            ),
        },
        Some(_) => fail(Condition::NotWellFormed, "not a record"),
        None => fail(Condition::NotWellFormed, "incomplete element"),
    }
}

fn over_line<T>(limits: Limits) -> Res<T> {
    fail(
        Condition::PolicyViolation,
        format!("record exceeds {} bytes on one line", limits.max_line()),
    )
}

/// A record as written to a server: the line breaks that canonicalisation
/// escaped in character data (`&#10;`, and `]]>&#10;<![CDATA[` inside
/// CDATA) become literal LFs again, so the stanza is about as long as its
/// sender wrote it, which is what the server's size limit counts. The
/// infoset is unchanged: a literal LF and `&#10;` are the same character
/// in content, and attribute values, where they differ, are kept as they
/// are. `record` must be a canonical record; one without `&#10;` is
/// returned untouched.
pub fn wire_form(record: Vec<u8>) -> Vec<u8> {
    const LF: &[u8] = b"&#10;";
    if memchr::memmem::find(&record, LF).is_none() {
        return record;
    }
    let s = &record[..];
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        // Character data up to the next markup or reference.
        let Some(k) = memchr::memchr2(b'<', b'&', &s[i..]) else {
            out.extend_from_slice(&s[i..]);
            break;
        };
        out.extend_from_slice(&s[i..i + k]);
        i += k;
        if s[i..].starts_with(LF) {
            out.push(b'\n');
            i += LF.len();
        } else if s[i] == b'&' {
            out.push(b'&');
            i += 1;
        } else if s[i..].starts_with(b"<![CDATA[") {
            // The section with its escaped line breaks, joined again: in a
            // well-formed record `]]>` ends a section and nothing else.
            let mut at = i + 9;
            out.extend_from_slice(b"<![CDATA[");
            loop {
                let Some(k) = memchr::memmem::find(&s[at..], b"]]>") else {
                    out.extend_from_slice(&s[at..]);
                    return out;
                };
                out.extend_from_slice(&s[at..at + k]);
                at += k;
                if s[at..].starts_with(CDATA_BREAK) {
                    out.push(b'\n');
                    at += CDATA_BREAK.len();
                } else {
                    out.extend_from_slice(b"]]>");
                    i = at + 3;
                    break;
                }
            }
        } else {
            // A tag: through its `>`, which may also stand in a quoted value.
            let mut at = i + 1;
            let mut quote = 0u8;
            while let Some(k) = memchr::memchr3(b'>', b'\'', b'"', &s[at..]) {
                let b = s[at + k];
                at += k + 1;
                match quote {
                    0 if b == b'>' => break,
                    0 => quote = b,
                    q if q == b => quote = 0,
                    _ => {}
                }
            }
            out.extend_from_slice(&s[i..at]);
            i = at;
        }
    }
    out
}

/// `memchr`, but text between tags is usually a few bytes long, where a
/// plain loop wins over the vector setup.
fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    let head = hay.len().min(16);
    match hay[..head].iter().position(|&b| b == needle) {
        Some(i) => Some(i),
        None => memchr::memchr(needle, &hay[head..]).map(|i| i + head),
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The qualified name at the start of a tag (`<name` or `</name`), as sent.
fn tag_name(tag: &[u8]) -> &[u8] {
    let from = if tag.get(1) == Some(&b'/') { 2 } else { 1 };
    let rest = tag.get(from..).unwrap_or(&[]);
    let len = rest
        .iter()
        .position(|&b| is_ws(b) || b == b'/' || b == b'>')
        .unwrap_or(rest.len());
    &rest[..len]
}

/// `<?xml version='1.0' encoding='UTF-8' standalone='yes'?>`.
fn parse_decl(d: &[u8]) -> Res<()> {
    let bad = || fail(Condition::NotWellFormed, "malformed XML declaration");
    if d.len() < 4 {
        return fail(Condition::RestrictedXml, "processing instruction");
    }
    let inner = &d[2..d.len() - 2];
    let tlen = inner.iter().position(|&b| is_ws(b)).unwrap_or(inner.len());
    if &inner[..tlen] != b"xml" {
        return fail(Condition::RestrictedXml, "processing instruction");
    }
    let mut i = tlen;
    let mut seen_version = false;
    loop {
        let ws_start = i;
        while i < inner.len() && is_ws(inner[i]) {
            i += 1;
        }
        if i == inner.len() {
            break;
        }
        if i == ws_start {
            return bad();
        }
        let ns = i;
        while i < inner.len() && inner[i].is_ascii_alphabetic() {
            i += 1;
        }
        let name = &inner[ns..i];
        while i < inner.len() && is_ws(inner[i]) {
            i += 1;
        }
        if inner.get(i) != Some(&b'=') {
            return bad();
        }
        i += 1;
        while i < inner.len() && is_ws(inner[i]) {
            i += 1;
        }
        let q = match inner.get(i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return bad(),
        };
        i += 1;
        let vs = i;
        while i < inner.len() && inner[i] != q {
            i += 1;
        }
        if i == inner.len() {
            return bad();
        }
        let value = &inner[vs..i];
        i += 1;
        match name {
            b"version"
                if !seen_version
                    && value.len() > 2
                    && value.starts_with(b"1.")
                    && value[2..].iter().all(u8::is_ascii_digit) =>
            {
                seen_version = true
            }
            b"encoding" if seen_version => {
                if !value.eq_ignore_ascii_case(b"UTF-8") {
                    return fail(
                        Condition::UnsupportedEncoding,
                        format!("encoding {}", String::from_utf8_lossy(value)),
                    );
                }
            }
            b"standalone" if seen_version && (value == b"yes" || value == b"no") => {}
            _ => return bad(),
        }
    }
    if !seen_version {
        return bad();
    }
    Ok(())
}

/// Is this top-level start tag in the streams namespace (declared on the
/// tag itself or, for a prefix, on the stream header)? A malformed tag is
/// not: the validating pass reports it.
fn in_streams_ns(tag: &[u8], h: &Header) -> bool {
    let (mut attrs, mut out) = (Vec::new(), Vec::new());
    let mut c = Checker::new(tag, usize::MAX, &mut attrs, &mut out);
    let Ok(st) = c.start_tag() else {
        return false;
    };
    let (prefix, _) = split_qname(&tag[st.name.0..st.name.1]);
    let decl: Vec<u8> = match prefix {
        Some(p) => [b"xmlns:".as_slice(), p].concat(),
        None => b"xmlns".to_vec(),
    };
    if let Some(a) = attrs.iter().find(|a| tag[a.name.0..a.name.1] == *decl) {
        return *ns_name(&tag[a.value.0..a.value.1]) == *STREAMS_NS;
    }
    prefix.is_some_and(|p| {
        h.prefixes
            .iter()
            .any(|(hp, uri)| hp.as_slice() == p && uri.as_bytes() == STREAMS_NS)
    })
}

fn parse_header(tag: &[u8], limits: Limits) -> Res<(Header, Vec<(String, String)>)> {
    check_text_bytes(tag)?;
    let (mut attrs, mut out) = (Vec::new(), Vec::new());
    let mut c = Checker::new(tag, limits.max_attrs, &mut attrs, &mut out);
    let st = c.start_tag()?;
    if st.self_closing {
        return fail(Condition::BadFormat, "empty stream element");
    }
    let qname = &tag[st.name.0..st.name.1];
    let (prefix, local) = split_qname(qname);
    let decl: Vec<u8> = match prefix {
        Some(p) => [b"xmlns:".as_slice(), p].concat(),
        None => b"xmlns".to_vec(),
    };
    let mut attrs = Vec::with_capacity(c.attrs.len());
    let mut prefixes = Vec::new();
    let mut ns_ok = false;
    for a in c.attrs.iter() {
        let name = &tag[a.name.0..a.name.1];
        let raw = &tag[a.value.0..a.value.1];
        let value = crate::xml::unescape_bytes(raw, true).ok_or_else(|| FrameError {
            condition: Condition::NotWellFormed,
            detail: "bad attribute value".into(),
        })?;
        if name == b"xmlns" {
            check_ns_decl(None, raw)?;
        } else if let Some(p) = name.strip_prefix(b"xmlns:") {
            check_ns_decl(Some(p), raw)?;
        }
        if name == decl.as_slice() && raw == STREAMS_NS {
            ns_ok = true;
        }
        if let Some(p) = name.strip_prefix(b"xmlns:") {
            prefixes.push((p.to_vec(), value.clone()));
        }
        // Names and values were checked as UTF-8 above.
        attrs.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    if !ns_ok || local != b"stream" {
        return fail(
            Condition::InvalidNamespace,
            "stream element not in the streams namespace",
        );
    }
    Ok((
        Header {
            qname: qname.to_vec(),
            prefixes,
        },
        attrs,
    ))
}

/// Names are short: a plain loop beats `memchr` here.
fn colon(q: &[u8]) -> Option<usize> {
    q.iter().position(|&b| b == b':')
}

fn split_qname(q: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match colon(q) {
        Some(i) => (Some(&q[..i]), &q[i + 1..]),
        None => (None, q),
    }
}

/// Strict UTF-8 and XML `Char`s only.
fn check_text_bytes(s: &[u8]) -> Res<()> {
    if std::str::from_utf8(s).is_err() {
        return fail(Condition::NotWellFormed, "invalid UTF-8");
    }
    for (i, &b) in s.iter().enumerate() {
        if b < 0x20 {
            if !matches!(b, b'\t' | b'\n' | b'\r') {
                return fail(Condition::NotWellFormed, "control character");
            }
        } else if b == 0xEF
            && s.get(i + 1) == Some(&0xBF)
            && matches!(s.get(i + 2), Some(0xBE | 0xBF))
        {
            return fail(Condition::NotWellFormed, "U+FFFE or U+FFFF");
        }
    }
    Ok(())
}

pub(crate) fn is_xml_char(v: u32) -> bool {
    matches!(v, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

const fn ascii_name_table(start: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphabetic()
            || c == b':'
            || c == b'_'
            || (!start && (c.is_ascii_digit() || c == b'-' || c == b'.'));
        b += 1;
    }
    t
}

static NAME_START_ASCII: [bool; 256] = ascii_name_table(true);
static NAME_CHAR_ASCII: [bool; 256] = ascii_name_table(false);
static NAME_CHAR_ASCII_NO_COLON: [bool; 256] = {
    let mut t = ascii_name_table(false);
    t[b':' as usize] = false;
    t
};

/// End of the XML `Name` starting at `i` (0 length if none).
fn name_end(s: &[u8], mut i: usize) -> usize {
    let start = i;
    while let Some(&b) = s.get(i) {
        if b < 0x80 {
            let ok = if i == start {
                NAME_START_ASCII[b as usize]
            } else {
                NAME_CHAR_ASCII[b as usize]
            };
            if !ok {
                break;
            }
            i += 1;
            continue;
        }
        let len = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        let Some(c) = s
            .get(i..i + len)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.chars().next())
        else {
            break;
        };
        let ok = if i == start {
            is_name_start(c)
        } else {
            is_name_char(c)
        };
        if !ok {
            break;
        }
        i += len;
    }
    i
}

/// A namespace-well-formed QName: `local` or `prefix:local`.
fn is_qname(q: &[u8]) -> bool {
    match colon(q) {
        None => true,
        // The local part must itself start with a NameStartChar.
        Some(i) => {
            i > 0
                && i + 1 < q.len()
                && colon(&q[i + 1..]).is_none()
                && name_end(q, i + 1) == q.len()
        }
    }
}

/// The QName starting at `s[start]`: its end and the index of its colon.
/// Fails as `name_end` and `is_qname` would; names are nearly always
/// ASCII, checked here in one loop, and anything else goes to those two.
#[inline]
fn qname(s: &[u8], start: usize) -> Res<(usize, Option<usize>)> {
    let mut j = start;
    let mut colon = None;
    let mut colons = 0;
    loop {
        while j < s.len() && NAME_CHAR_ASCII_NO_COLON[s[j] as usize] {
            j += 1;
        }
        if j < s.len() && s[j] == b':' {
            colon.get_or_insert(j);
            colons += 1;
            j += 1;
            continue;
        }
        break;
    }
    if j < s.len() && s[j] >= 0x80 {
        return qname_general(s, start);
    }
    if j == start || !NAME_START_ASCII[s[start] as usize] {
        return fail(Condition::NotWellFormed, "invalid name");
    }
    if let Some(k) = colon {
        if k == start || k + 1 == j || colons > 1 || !NAME_START_ASCII[s[k + 1] as usize] {
            return fail(Condition::NotWellFormed, "invalid qualified name");
        }
    }
    Ok((j, colon))
}

/// `qname` for any characters.
#[inline(never)]
fn qname_general(s: &[u8], start: usize) -> Res<(usize, Option<usize>)> {
    let end = name_end(s, start);
    if end == start {
        return fail(Condition::NotWellFormed, "invalid name");
    }
    if !is_qname(&s[start..end]) {
        return fail(Condition::NotWellFormed, "invalid qualified name");
    }
    Ok((end, colon(&s[start..end]).map(|k| start + k)))
}

/// End of the entity or character reference at `s[i] == b'&'`.
fn reference_end(s: &[u8], i: usize) -> Res<usize> {
    let rest = &s[i + 1..];
    if rest.first() == Some(&b'#') {
        let (hex, from) = if rest.get(1) == Some(&b'x') {
            (true, 2)
        } else {
            (false, 1)
        };
        let mut v: u32 = 0;
        let mut k = from;
        while let Some(&b) = rest.get(k) {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' if hex => b - b'a' + 10,
                b'A'..=b'F' if hex => b - b'A' + 10,
                _ => break,
            };
            v = v
                .saturating_mul(if hex { 16 } else { 10 })
                .saturating_add(d as u32);
            k += 1;
        }
        if k == from || rest.get(k) != Some(&b';') {
            return fail(Condition::NotWellFormed, "malformed character reference");
        }
        // XML 1.0 WFC "Legal Character": a well-formedness error, not one
        // of the features RFC 6120 §11.1 restricts.
        if !is_xml_char(v) {
            return fail(
                Condition::NotWellFormed,
                "character reference to a non-Char",
            );
        }
        return Ok(i + 1 + k + 1);
    }
    let e = name_end(s, i + 1);
    if e == i + 1 || s.get(e) != Some(&b';') {
        return fail(Condition::NotWellFormed, "'&' not starting a reference");
    }
    match &s[i + 1..e] {
        b"amp" | b"lt" | b"gt" | b"quot" | b"apos" => Ok(e + 1),
        _ => fail(Condition::RestrictedXml, "entity reference"),
    }
}

const fn table(special: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = true;
        i += 1;
    }
    t
}

/// Besides markup, the bytes that may start a non-`Char`: C0 controls and
/// 0xEF (U+FFFE, U+FFFF), so no separate pass over the record is needed.
static TEXT_SPECIAL: [bool; 256] = table(b"<&\r\n]\xEF\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0B\x0C\x0E\x0F\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1A\x1B\x1C\x1D\x1E\x1F");
static ATTR_SPECIAL: [bool; 256] = table(b"'\"<&\r\n\t\xEF\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0B\x0C\x0E\x0F\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1A\x1B\x1C\x1D\x1E\x1F");

/// At a byte from the extra part of the tables above: refuse a non-`Char`,
/// else copy it.
fn check_special_char(s: &[u8], i: usize) -> Res<()> {
    match s[i] {
        0xEF if s.get(i + 1) == Some(&0xBF) && matches!(s.get(i + 2), Some(0xBE | 0xBF)) => {
            fail(Condition::NotWellFormed, "U+FFFE or U+FFFF")
        }
        0xEF => Ok(()),
        _ => fail(Condition::NotWellFormed, "control character"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Attr {
    name: (usize, usize),
    /// Index of the first `:` of the name, if any.
    colon: Option<usize>,
    value: (usize, usize),
}

struct StartTag {
    name: (usize, usize),
    colon: Option<usize>,
    self_closing: bool,
}

/// A prefix declaration in scope: `xmlns:prefix='value'` on an element at
/// `depth`.
#[derive(Debug, Clone, Copy)]
struct Decl {
    prefix: (usize, usize),
    value: (usize, usize),
    depth: usize,
}

/// The validating pass's state for one element. The framer keeps one, so
/// a record costs one allocation (its own bytes), and so an element split
/// over reads can be checked once: from its start up to the last complete
/// markup token on the read that began it, from there on when it is whole.
#[derive(Debug, Default)]
struct Scratch {
    attrs: Vec<Attr>,
    /// Open elements: qualified-name ranges.
    stack: Vec<(usize, usize)>,
    decls: Vec<Decl>,
    /// Indexes into the header's prefixes that the record relies on.
    needed: Vec<usize>,
    out: Vec<u8>,
    mark: Mark,
}

/// How far the validating pass got without error: up to `i`, the end of a
/// markup token with the element still open. Past a mark the pass only
/// appends to the vectors (an end tag pops only once it has been checked,
/// and a mark follows), so truncating them restores the state at the mark.
#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    i: usize,
    copied: usize,
    out: usize,
    stack: usize,
    decls: usize,
    needed: usize,
    insert_at: usize,
    is_error: bool,
}

impl Scratch {
    /// Before a new element.
    fn begin(&mut self) {
        self.stack.clear();
        self.decls.clear();
        self.needed.clear();
        self.out.clear();
        self.mark = Mark::default();
    }

    /// Back to the state at the mark, after a pass that failed past it.
    fn rewind(&mut self) {
        let m = self.mark;
        self.stack.truncate(m.stack);
        self.decls.truncate(m.decls);
        self.needed.truncate(m.needed);
        self.out.truncate(m.out);
    }
}

/// One validating, canonicalising pass over an element.
///
/// The output is built lazily: `out` holds the canonical form of
/// `s[..copied]`, and bytes are copied only where canonicalisation changes
/// something (line breaks, tabs in attribute values), so a record that
/// needs no change costs one copy at the end.
struct Checker<'a> {
    s: &'a [u8],
    i: usize,
    out: &'a mut Vec<u8>,
    copied: usize,
    attrs: &'a mut Vec<Attr>,
    max_attrs: usize,
}

/// End of the line break at `s[i]` (CR or LF): CRLF is one.
fn line_break_end(s: &[u8], i: usize) -> usize {
    if s[i] == b'\r' && s.get(i + 1) == Some(&b'\n') {
        i + 2
    } else {
        i + 1
    }
}

/// Length of the run of bytes at the start of `s` that are not in `special`.
#[inline]
fn run_len(s: &[u8], special: &[bool; 256]) -> usize {
    // Eight at a time, one branch for all: the loop overhead is most of
    // the cost per byte.
    let mut n = 0;
    while let Some(w) = s.get(n..n + 8) {
        let hit = w.iter().fold(false, |h, &b| h | special[b as usize]);
        if hit {
            break;
        }
        n += 8;
    }
    while n < s.len() && !special[s[n] as usize] {
        n += 1;
    }
    n
}

impl<'a> Checker<'a> {
    fn new(s: &'a [u8], max_attrs: usize, attrs: &'a mut Vec<Attr>, out: &'a mut Vec<u8>) -> Self {
        Checker {
            s,
            i: 0,
            out,
            copied: 0,
            attrs,
            max_attrs,
        }
    }

    /// The canonical form of `s[from..to]` is `with`.
    fn replace(&mut self, from: usize, to: usize, with: &[u8]) {
        if self.out.capacity() == 0 {
            // `s` may run far past the element; guess, and let it grow.
            self.out.reserve(from.max(256) + 64);
        }
        self.out.extend_from_slice(&self.s[self.copied..from]);
        self.out.extend_from_slice(with);
        self.copied = to;
    }

    /// The canonical form of `s[..end]`, with room for `extra` more bytes.
    fn finish(self, end: usize, extra: usize) -> Vec<u8> {
        let rest = &self.s[self.copied..end];
        self.out.reserve_exact(rest.len() + extra);
        self.out.extend_from_slice(rest);
        std::mem::take(self.out)
    }

    /// Skip a run of bytes not in `special`.
    fn run(&mut self, special: &[bool; 256]) {
        self.i += run_len(&self.s[self.i..], special);
    }

    /// Whitespace inside a tag: a line break becomes a space.
    #[inline]
    fn ws(&mut self) -> bool {
        let start = self.i;
        // Nearly always none or one space.
        match self.s.get(self.i) {
            Some(b' ') if !matches!(self.s.get(self.i + 1), Some(b' ' | b'\t' | b'\r' | b'\n')) => {
                self.i += 1;
                return true;
            }
            Some(b' ' | b'\t' | b'\r' | b'\n') => {}
            _ => return false,
        }
        while let Some(&b) = self.s.get(self.i) {
            match b {
                b'\r' => {
                    let to = line_break_end(self.s, self.i);
                    self.replace(self.i, to, b" ");
                    self.i = to;
                    continue;
                }
                b'\n' => self.replace(self.i, self.i + 1, b" "),
                b' ' | b'\t' => {}
                _ => break,
            }
            self.i += 1;
        }
        self.i > start
    }

    #[inline]
    fn name(&mut self) -> Res<((usize, usize), Option<usize>)> {
        let start = self.i;
        let (end, colon) = qname(self.s, start)?;
        self.i = end;
        Ok(((start, end), colon))
    }

    fn expect(&mut self, b: u8, what: &str) -> Res<()> {
        if self.s.get(self.i) != Some(&b) {
            return fail(Condition::NotWellFormed, what);
        }
        self.i += 1;
        Ok(())
    }

    /// At `<name`.
    fn start_tag(&mut self) -> Res<StartTag> {
        self.expect(b'<', "expected '<'")?;
        let (name, colon) = self.name()?;
        self.attrs.clear();
        loop {
            let had_ws = self.ws();
            match self.s.get(self.i) {
                None => return fail(Condition::NotWellFormed, "unterminated start tag"),
                Some(b'>') => {
                    self.i += 1;
                    return Ok(StartTag {
                        name,
                        colon,
                        self_closing: false,
                    });
                }
                Some(b'/') => {
                    self.i += 1;
                    self.expect(b'>', "expected '>' after '/'")?;
                    return Ok(StartTag {
                        name,
                        colon,
                        self_closing: true,
                    });
                }
                Some(_) => {
                    if !had_ws {
                        return fail(
                            Condition::NotWellFormed,
                            "missing whitespace before attribute",
                        );
                    }
                    let (an, acolon) = self.name()?;
                    self.ws();
                    self.expect(b'=', "expected '=' after attribute name")?;
                    self.ws();
                    let q = match self.s.get(self.i) {
                        Some(&q @ (b'\'' | b'"')) => q,
                        _ => return fail(Condition::NotWellFormed, "unquoted attribute value"),
                    };
                    self.i += 1;
                    let vs = self.i;
                    self.attr_value(q)?;
                    let ve = self.i;
                    self.i += 1;
                    if self.attrs.len() >= self.max_attrs {
                        return fail(
                            Condition::PolicyViolation,
                            format!("more than {} attributes", self.max_attrs),
                        );
                    }
                    let this = &self.s[an.0..an.1];
                    // Length and first byte first: most names differ there.
                    if self.attrs.iter().any(|a| {
                        a.name.1 - a.name.0 == this.len()
                            && self.s[a.name.0] == this[0]
                            && &self.s[a.name.0..a.name.1] == this
                    }) {
                        return fail(Condition::NotWellFormed, "duplicate attribute");
                    }
                    self.attrs.push(Attr {
                        name: an,
                        colon: acolon,
                        value: (vs, ve),
                    });
                }
            }
        }
    }

    /// Inside an attribute value quoted with `q`; stops at the closing quote.
    fn attr_value(&mut self, q: u8) -> Res<()> {
        loop {
            self.run(&ATTR_SPECIAL);
            match self.s.get(self.i) {
                None => return fail(Condition::NotWellFormed, "unterminated attribute value"),
                Some(&b) if b == q => return Ok(()),
                Some(b'<') => return fail(Condition::NotWellFormed, "'<' in attribute value"),
                Some(b'&') => self.i = reference_end(self.s, self.i)?,
                Some(b'\r') => {
                    let to = line_break_end(self.s, self.i);
                    self.replace(self.i, to, b" ");
                    self.i = to;
                }
                Some(b'\n' | b'\t') => {
                    self.replace(self.i, self.i + 1, b" ");
                    self.i += 1;
                }
                // The other quote character.
                Some(b'\'' | b'"') => self.i += 1,
                Some(_) => {
                    check_special_char(self.s, self.i)?;
                    self.i += 1;
                }
            }
        }
    }

    fn text(&mut self) -> Res<()> {
        loop {
            self.run(&TEXT_SPECIAL);
            match self.s.get(self.i) {
                None | Some(b'<') => return Ok(()),
                Some(b'&') => self.i = reference_end(self.s, self.i)?,
                Some(b'\r') => {
                    let to = line_break_end(self.s, self.i);
                    self.replace(self.i, to, b"&#10;");
                    self.i = to;
                }
                Some(b'\n') => {
                    self.replace(self.i, self.i + 1, b"&#10;");
                    self.i += 1;
                }
                Some(b']') => {
                    if self.s[self.i..].starts_with(b"]]>") {
                        return fail(Condition::NotWellFormed, "']]>' in character data");
                    }
                    self.i += 1;
                }
                Some(_) => {
                    check_special_char(self.s, self.i)?;
                    self.i += 1;
                }
            }
        }
    }

    /// At `<![CDATA[`. A line break cannot be escaped inside CDATA, so the
    /// section is closed around it: `]]>&#10;<![CDATA[` has the same characters.
    fn cdata(&mut self) -> Res<()> {
        self.i += 9;
        let Some(len) = memchr::memmem::find(&self.s[self.i..], b"]]>") else {
            return fail(Condition::NotWellFormed, "unterminated CDATA section");
        };
        let end = self.i + len;
        check_text_bytes(&self.s[self.i..end])?;
        while let Some(off) = memchr::memchr2(b'\r', b'\n', &self.s[self.i..end]) {
            let p = self.i + off;
            let to = line_break_end(self.s, p);
            self.replace(p, to, CDATA_BREAK);
            self.i = to;
        }
        self.i = end + 3;
        Ok(())
    }
}

/// The result of validating one element.
struct Checked {
    /// Where the element ends in the input.
    end: usize,
    /// Its canonical record, ending in LF.
    out: Vec<u8>,
    /// Whether it is a `<stream:error>`.
    is_error: bool,
}

impl Checked {
    /// Within the line-size rule. Judged after the pass, as a pass that
    /// fails after the end of its element cannot be resumed.
    fn fits(&self, limits: Limits) -> bool {
        self.out.len() <= limits.max_line().saturating_add(1)
    }

    fn into_event(self) -> Event {
        if self.is_error {
            Event::StreamError(self.out)
        } else {
            Event::Record(self.out)
        }
    }
}

/// Validate and canonicalise a complete record `s` (the boundary scanner
/// found its end): exactly one element. With `resume`, the pass goes on
/// from the state in `sc` (see `Framer::whole_record`).
fn canonicalise(
    s: &[u8],
    limits: Limits,
    header: Option<&Header>,
    sc: &mut Scratch,
    resume: bool,
) -> Res<Checked> {
    // Non-Chars are caught where the tokenizer meets them: names, tag
    // whitespace and the tables for text and attribute values.
    if std::str::from_utf8(s).is_err() {
        return fail(Condition::NotWellFormed, "invalid UTF-8");
    }
    if !resume {
        sc.begin();
    }
    let c = check_element(s, limits, header, sc)?;
    if c.end != s.len() {
        return fail(Condition::NotWellFormed, "content after the element");
    }
    if !c.fits(limits) {
        return over_line(limits);
    }
    Ok(c)
}

/// Validate and canonicalise the element at the start of `s`, stopping
/// where it ends; what follows it is not looked at. Starts from the state
/// in `sc` (after `begin`, or at its mark after `rewind`: the same bytes
/// then give the same answer as a pass from the start, since no token
/// looks past its own end). Does not check UTF-8 (the callers do, over
/// exactly the element) but never panics without it.
fn check_element(
    s: &[u8],
    limits: Limits,
    header: Option<&Header>,
    sc: &mut Scratch,
) -> Res<Checked> {
    let Scratch {
        attrs,
        stack,
        decls,
        needed,
        out,
        mark,
    } = sc;
    if mark.i == 0 && s.first() != Some(&b'<') {
        return fail(Condition::NotWellFormed, "record does not start with '<'");
    }
    let mut c = Checker::new(s, limits.max_attrs, attrs, out);
    c.i = mark.i;
    c.copied = mark.copied;
    let mut insert_at = mark.insert_at;
    let mut is_error = mark.is_error;
    loop {
        if c.i >= s.len() {
            return fail(Condition::NotWellFormed, "unclosed element");
        }
        if s[c.i] != b'<' {
            c.text()?;
            continue;
        }
        match s.get(c.i + 1) {
            Some(b'/') => {
                c.i += 2;
                let nm = match stack.last() {
                    // The usual case: the name of the open element,
                    // already checked, and nothing more of a name after
                    // it. Bytes from 0x80 may continue a name: slow path.
                    Some(&(os, oe))
                        if s[c.i..].starts_with(&s[os..oe])
                            && !matches!(s.get(c.i + oe - os),
                                Some(&b) if b >= 0x80 || NAME_CHAR_ASCII[b as usize]) =>
                    {
                        c.i += oe - os;
                        (c.i - (oe - os), c.i)
                    }
                    _ => c.name()?.0,
                };
                c.ws();
                c.expect(b'>', "expected '>' in end tag")?;
                match stack.last() {
                    Some(open) if s[open.0..open.1] == s[nm.0..nm.1] => stack.pop(),
                    _ => return fail(Condition::NotWellFormed, "mismatched end tag"),
                };
                let d = stack.len();
                while decls.last().is_some_and(|x| x.depth > d) {
                    decls.pop();
                }
            }
            Some(b'!') if s[c.i..].starts_with(b"<![CDATA[") => c.cdata()?,
            Some(b'!') => {
                let what = if s[c.i..].starts_with(b"<!--") {
                    "comment"
                } else {
                    "DTD or markup declaration"
                };
                return fail(Condition::RestrictedXml, what);
            }
            Some(b'?') => return fail(Condition::RestrictedXml, "processing instruction"),
            _ => {
                let depth = stack.len() + 1;
                if depth > limits.max_depth {
                    return fail(
                        Condition::PolicyViolation,
                        format!("nesting deeper than {}", limits.max_depth),
                    );
                }
                let st = c.start_tag()?;
                let qname = &s[st.name.0..st.name.1];
                if let Some(h) = header {
                    if qname == h.qname.as_slice() {
                        return fail(Condition::BadFormat, "stream header inside the stream");
                    }
                }
                let mut default_ns = None;
                let mut prefixed_attrs = 0;
                for a in c.attrs.iter() {
                    match a.colon {
                        None if a.name.1 - a.name.0 == 5 && &s[a.name.0..a.name.1] == b"xmlns" => {
                            check_ns_decl(None, &s[a.value.0..a.value.1])?;
                            default_ns = Some(&s[a.value.0..a.value.1]);
                            // An empty prefix: the default namespace, which
                            // resolve (never asked for "") does not see.
                            decls.push(Decl {
                                prefix: (a.name.0, a.name.0),
                                value: a.value,
                                depth,
                            });
                        }
                        None => {}
                        Some(k) if &s[a.name.0..k] == b"xmlns" => {
                            check_ns_decl(Some(&s[k + 1..a.name.1]), &s[a.value.0..a.value.1])?;
                            decls.push(Decl {
                                prefix: (k + 1, a.name.1),
                                value: a.value,
                                depth,
                            });
                        }
                        Some(_) => prefixed_attrs += 1,
                    }
                }
                let local = match st.colon {
                    Some(k) => &s[k + 1..st.name.1],
                    None => qname,
                };
                let mut uri = None;
                if let Some(k) = st.colon {
                    uri = Some(resolve(s, &s[st.name.0..k], decls, header, needed)?);
                }
                if local == b"stream" {
                    let ns = match st.colon {
                        Some(_) => uri,
                        None => decls
                            .iter()
                            .rev()
                            .find(|d| d.prefix.0 == d.prefix.1)
                            .map(|d| &s[d.value.0..d.value.1]),
                    };
                    if ns.is_some_and(|n| *ns_name(n) == *STREAMS_NS) {
                        return fail(Condition::BadFormat, "stream header inside the stream");
                    }
                }
                if prefixed_attrs > 0 {
                    // Expanded names, to catch `a:k` and `b:k` with a and b
                    // bound to one namespace (Namespaces in XML §6.3).
                    let mut expanded: Vec<(Cow<'_, [u8]>, &[u8])> = Vec::new();
                    for a in c.attrs.iter() {
                        if let Some(k) = a.colon {
                            let p = &s[a.name.0..k];
                            if p != b"xmlns" {
                                let uri = resolve(s, p, decls, header, needed)?;
                                if prefixed_attrs > 1 {
                                    let key = (ns_name(uri), &s[k + 1..a.name.1]);
                                    if expanded.contains(&key) {
                                        return fail(
                                            Condition::NotWellFormed,
                                            "duplicate attribute (two prefixes, one namespace)",
                                        );
                                    }
                                    expanded.push(key);
                                }
                            }
                        }
                    }
                }
                if depth == 1 {
                    // Nothing before the end of the top-level name is
                    // ever rewritten: input and output offsets agree.
                    insert_at = st.name.1;
                    is_error = local == b"error" && uri.or(default_ns) == Some(STREAMS_NS);
                }
                if st.self_closing {
                    while decls.last().is_some_and(|x| x.depth >= depth) {
                        decls.pop();
                    }
                } else {
                    stack.push(st.name);
                }
            }
        }
        if stack.is_empty() {
            break;
        }
        *mark = Mark {
            i: c.i,
            copied: c.copied,
            out: c.out.len(),
            stack: stack.len(),
            decls: decls.len(),
            needed: needed.len(),
            insert_at,
            is_error,
        };
    }
    let end = c.i;
    let mut ins = Vec::new();
    if let (Some(h), false) = (header, needed.is_empty()) {
        for &k in needed.iter() {
            let (p, uri) = &h.prefixes[k];
            ins.extend_from_slice(b" xmlns:");
            ins.extend_from_slice(p);
            ins.extend_from_slice(b"='");
            ins.extend_from_slice(crate::xml::escape_attr(uri).as_bytes());
            ins.push(b'\'');
        }
    }
    let mut out = c.finish(end, ins.len() + 1);
    if !ins.is_empty() {
        out.splice(insert_at..insert_at, ins);
    }
    out.push(b'\n');
    Ok(Checked { end, out, is_error })
}

const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// Namespaces in XML 1.0 §3 constraints on a declaration of `prefix` (None:
/// the default namespace) with value `raw` as sent: a prefix is never
/// undeclared (`xmlns:p=''`), `xmlns` is never declared, `xml` only to its
/// own name, and neither reserved name is bound to another prefix. Strict
/// XML parsers in clients refuse these, so a record must never carry one
/// (RFC 6120 §4.9.3.13: XML-NAMES violations are not-well-formed).
fn check_ns_decl(prefix: Option<&[u8]>, raw: &[u8]) -> Res<()> {
    let v = &*ns_name(raw);
    let ok = match prefix {
        None => v != XML_NS && v != XMLNS_NS,
        Some(b"xml") => v == XML_NS,
        Some(p) => !v.is_empty() && p != b"xmlns" && v != XML_NS && v != XMLNS_NS,
    };
    if ok {
        Ok(())
    } else {
        fail(
            Condition::NotWellFormed,
            "namespace declaration breaks the reserved-name rules",
        )
    }
}

/// A namespace name as sent (`raw`), its references resolved: rarely any.
fn ns_name(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.contains(&b'&') {
        let v = crate::xml::unescape_bytes(raw, true).unwrap_or_default();
        return Cow::Owned(v.into_bytes());
    }
    Cow::Borrowed(raw)
}

/// The namespace of prefix `p` in scope; a prefix known only from the
/// stream header is noted in `needed` so its declaration can be added.
fn resolve<'a>(
    s: &'a [u8],
    p: &[u8],
    decls: &[Decl],
    header: Option<&'a Header>,
    needed: &mut Vec<usize>,
) -> Res<&'a [u8]> {
    if let Some(d) = decls.iter().rev().find(|d| &s[d.prefix.0..d.prefix.1] == p) {
        return Ok(&s[d.value.0..d.value.1]);
    }
    if p == b"xml" {
        return Ok(XML_NS);
    }
    if let Some(h) = header {
        if let Some(k) = h.prefixes.iter().position(|(hp, _)| hp.as_slice() == p) {
            if !needed.contains(&k) {
                needed.push(k);
            }
            return Ok(h.prefixes[k].1.as_bytes());
        }
    }
    // A Namespaces in XML constraint, so not-well-formed (RFC 6120
    // §4.9.3.13); invalid-namespace is about the stream's namespaces.
    fail(
        Condition::NotWellFormed,
        format!("undeclared prefix {}", String::from_utf8_lossy(p)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

    /// All events (and the final error, if any) for `input` fed in `chunks`.
    fn run(mode: Mode, limits: Limits, chunks: &[&[u8]]) -> (Vec<Event>, Option<FrameError>) {
        let mut f = Framer::new(mode, limits);
        let mut evs = Vec::new();
        for c in chunks {
            f.feed(c);
            loop {
                match f.next_event() {
                    Ok(Some(e)) => evs.push(e),
                    Ok(None) => break,
                    Err(e) => {
                        assert_eq!(f.next_event(), Err(e.clone()), "error must stick");
                        return (evs, Some(e));
                    }
                }
            }
        }
        (evs, None)
    }

    fn stream(body: &str) -> (Vec<Event>, Option<FrameError>) {
        let input = format!("{HDR}{body}");
        run(Mode::Stream, Limits::DEFAULT, &[input.as_bytes()])
    }

    fn records(body: &str) -> Vec<String> {
        let (evs, err) = stream(body);
        assert_eq!(err, None, "{body}");
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Record(r) | Event::StreamError(r) => Some(String::from_utf8(r).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn cond(body: &str) -> Condition {
        match stream(body).1 {
            Some(e) => e.condition,
            None => panic!("accepted: {body:?}"),
        }
    }

    fn frag_cond(line: &str) -> Condition {
        match canonical_record(line.as_bytes(), Limits::DEFAULT) {
            Err(e) => e.condition,
            Ok(r) => panic!("accepted: {line:?} -> {:?}", String::from_utf8_lossy(&r)),
        }
    }

    #[test]
    fn header_and_records() {
        let (evs, err) =
            stream("<message to='a@b'><body>hi</body></message> \n <presence/></stream:stream>");
        assert_eq!(err, None);
        assert_eq!(evs.len(), 4);
        match &evs[0] {
            Event::Header(h) => {
                assert_eq!(h.get("to"), Some("example.org"));
                assert_eq!(
                    h.get("xmlns:stream"),
                    Some("http://etherx.jabber.org/streams")
                );
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(
            evs[1],
            Event::Record(b"<message to='a@b'><body>hi</body></message>\n".to_vec())
        );
        assert_eq!(evs[2], Event::Record(b"<presence/>\n".to_vec()));
        assert_eq!(evs[3], Event::End);
    }

    #[test]
    fn header_content_namespace() {
        let ns = |hdr: &[u8]| match run(Mode::Stream, Limits::PRE_AUTH, &[hdr]).0.first() {
            Some(Event::Header(h)) => h.is_jabber_client(),
            e => panic!("{e:?}"),
        };
        let s = "xmlns:stream='http://etherx.jabber.org/streams'";
        assert!(ns(
            format!("<stream:stream xmlns='jabber:client' {s}>").as_bytes()
        ));
        assert!(ns(format!("<stream:stream {s}>").as_bytes()));
        assert!(!ns(
            format!("<stream:stream xmlns='jabber:server' {s}>").as_bytes()
        ));
        assert!(!ns(format!("<stream:stream xmlns='' {s}>").as_bytes()));
    }

    #[test]
    fn header_without_declaration() {
        let input = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><a/>";
        let (evs, err) = run(Mode::Stream, Limits::DEFAULT, &[input]);
        assert_eq!(err, None);
        assert_eq!(evs.len(), 2);
    }

    #[test]
    fn canonical_line_breaks() {
        assert_eq!(
            records("<m>a\r\nb\rc\nd</m>"),
            ["<m>a&#10;b&#10;c&#10;d</m>\n"]
        );
        assert_eq!(
            records("<m a='x\r\ny\tz\nw\rv'/>"),
            ["<m a='x y z w v'/>\n"]
        );
        assert_eq!(
            records("<m>\n  <body>x</body>\r\n</m>"),
            ["<m>&#10;  <body>x</body>&#10;</m>\n"]
        );
        assert_eq!(
            records("<m><![CDATA[a\r\nb<c]]></m>"),
            ["<m><![CDATA[a]]>&#10;<![CDATA[b<c]]></m>\n"]
        );
        assert_eq!(records("<m\r\n  to=\"x\"\n/>"), ["<m   to=\"x\" />\n"]);
        // Everything else is kept byte for byte.
        assert_eq!(
            records("<m  b=\"1\" a='&amp;&#10;'>&lt;é&#x1F600;></m >"),
            ["<m  b=\"1\" a='&amp;&#10;'>&lt;é&#x1F600;></m >\n"]
        );
    }

    #[test]
    fn header_prefix_added() {
        let r = records(
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>\
             <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        assert_eq!(
            r[0],
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
             <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>\n"
        );
        let (evs, _) = stream(
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        assert_eq!(
            evs[1],
            Event::StreamError(
                b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'>\
                  <conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\n"
                    .to_vec()
            )
        );
        // Used only on a nested element: declared on the top-level one.
        assert_eq!(
            records("<a><b stream:x='1'/></a>"),
            ["<a xmlns:stream='http://etherx.jabber.org/streams'><b stream:x='1'/></a>\n"]
        );
        // Declared in the record itself: nothing added.
        assert_eq!(
            records("<s:a xmlns:s='u'><s:b/></s:a>"),
            ["<s:a xmlns:s='u'><s:b/></s:a>\n"]
        );
        // Another header prefix.
        let input = b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>\
            <db:result from='a'/><s:features/>";
        let (evs, err) = run(Mode::Stream, Limits::DEFAULT, &[input]);
        assert_eq!(err, None);
        assert_eq!(
            evs[1],
            Event::Record(b"<db:result xmlns:db='jabber:server:dialback' from='a'/>\n".to_vec())
        );
        assert_eq!(
            evs[2],
            Event::Record(b"<s:features xmlns:s='http://etherx.jabber.org/streams'/>\n".to_vec())
        );
    }

    #[test]
    fn stream_namespace_checked() {
        let bad: [&[u8]; 4] = [
            b"<stream:stream xmlns:stream='urn:wrong'>",
            b"<stream xmlns='jabber:client'>",
            b"<stream:foo xmlns:stream='http://etherx.jabber.org/streams'>",
            b"<stream:stream>",
        ];
        for b in bad {
            let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[b]);
            assert_eq!(
                err.map(|e| e.condition),
                Some(Condition::InvalidNamespace),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn utf16_stream_is_unsupported_encoding() {
        let hdr =
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
        let le: Vec<u8> = hdr.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let be: Vec<u8> = hdr.encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        for input in [
            [&[0xFF, 0xFE][..], &le].concat(),
            [&[0xFE, 0xFF][..], &be].concat(),
            le.clone(),
            be.clone(),
        ] {
            // One byte at a time too: the outcome does not depend on chunking.
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            for chunks in [vec![input.as_slice()], bytes] {
                let (_, err) = run(Mode::Stream, Limits::PRE_AUTH, &chunks);
                assert_eq!(
                    err.map(|e| e.condition),
                    Some(Condition::UnsupportedEncoding),
                    "{:?}",
                    &input[..4]
                );
            }
        }
        let bom8 = [&b"\xEF\xBB\xBF"[..], hdr.as_bytes()].concat();
        assert_eq!(
            run(Mode::Stream, Limits::PRE_AUTH, &[&bom8])
                .1
                .map(|e| e.condition),
            Some(Condition::NotWellFormed)
        );
    }

    #[test]
    fn declaration_rules() {
        let enc = b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>";
        let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[enc]);
        assert_eq!(
            err.map(|e| e.condition),
            Some(Condition::UnsupportedEncoding)
        );
        let ok = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
        assert_eq!(run(Mode::Stream, Limits::DEFAULT, &[ok]).1, None);
        let pi = b"<?foo bar?><stream:stream>";
        assert_eq!(
            run(Mode::Stream, Limits::DEFAULT, &[pi])
                .1
                .map(|e| e.condition),
            Some(Condition::RestrictedXml)
        );
        assert_eq!(cond("<?xml version='1.0'?>"), Condition::RestrictedXml);
        let v = b"<?xml version='1.0>'?><stream:stream>";
        assert_eq!(
            run(Mode::Stream, Limits::DEFAULT, &[v])
                .1
                .map(|e| e.condition),
            Some(Condition::NotWellFormed)
        );
        let bad = b"<?xml encoding='UTF-8'?>";
        assert_eq!(
            run(Mode::Stream, Limits::DEFAULT, &[bad])
                .1
                .map(|e| e.condition),
            Some(Condition::NotWellFormed)
        );
    }

    #[test]
    fn restricted_xml() {
        for body in [
            "<!-- hi -->",
            "<m><!-- hi --></m>",
            "<m><?pi x?></m>",
            "<?pi x?>",
            "<!DOCTYPE x>",
            "<m><!ENTITY x 'y'></m>",
            "<m>&foo;</m>",
            "<m a='&foo;'/>",
        ] {
            assert_eq!(cond(body), Condition::RestrictedXml, "{body}");
        }
    }

    #[test]
    fn reference_to_a_non_char_is_not_well_formed() {
        for body in [
            "<m>&#0;</m>",
            "<m>&#x0;</m>",
            "<m>&#1;</m>",
            "<m>&#xD800;</m>",
            "<m>&#xDFFF;</m>",
            "<m>&#xFFFE;</m>",
            "<m>&#xFFFF;</m>",
            "<m>&#x110000;</m>",
            "<m>&#99999999999999999999;</m>",
            "<m a='&#0;'/>",
        ] {
            assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
        }
        assert_eq!(
            records("<m>&#9;&#xD7FF;&#xE000;&#xFFFD;&#x10FFFF;</m>"),
            ["<m>&#9;&#xD7FF;&#xE000;&#xFFFD;&#x10FFFF;</m>\n"]
        );
    }

    #[test]
    fn not_well_formed() {
        for body in [
            "text<m/>",
            "<m>a</n>",
            "<m><a></m></a>",
            "<s:m xmlns:s='u'></t:m>",
            "<m a=1/>",
            "<m a='1'b='2'/>",
            "<m a='1' a='2'/>",
            "<m a='<'/>",
            "<m a='x & y'/>",
            "<m>x & y</m>",
            "<m>&#;</m>",
            "<m>&#xZ;</m>",
            "<m>&amp</m>",
            "<m>]]></m>",
            "<1m/>",
            "<m -a='1'/>",
            "<:m/>",
            "<a:b:c xmlns:a='u'/>",
            "<m\u{1}/>",
            "<m>\u{1}</m>",
            "<m>\u{FFFE}</m>",
            "<m a='\u{FFFF}'/>",
            "<m>\u{7}</m>",
            "<m></m\u{1}>",
            "<m a='1'\u{1}/>",
            "<m><![CDATA[\u{2}]]></m>",
            "<m>\u{FFFF}</m>",
            "<m\u{FFFE}/>",
            "<![CDATA[x]]>",
            "</m>",
            "<m></m></stream:stream>x",
            "</stream:stream><m/>",
            "<a:\u{300}b xmlns:a='u'/>",
        ] {
            assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
        }
    }

    #[test]
    fn strict_utf8() {
        for bad in [
            &b"<m>\xC0\xAF</m>"[..], // overlong '/'
            b"<m>\xED\xA0\x80</m>",  // surrogate
            b"<m>\xE2\x82</m>",      // truncated
            b"<m>\xFF</m>",
            b"<m a='\x80'/>",
        ] {
            let input = [HDR.as_bytes(), bad].concat();
            let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[&input]);
            assert_eq!(
                err.map(|e| e.condition),
                Some(Condition::NotWellFormed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn undeclared_prefix() {
        assert_eq!(cond("<x:m/>"), Condition::NotWellFormed);
        assert_eq!(cond("<m x:a='1'/>"), Condition::NotWellFormed);
        assert_eq!(
            cond("<m><x:b xmlns:x='u'/><x:c/></m>"),
            Condition::NotWellFormed
        );
        assert_eq!(frag_cond("<stream:features/>"), Condition::NotWellFormed);
        // The xml prefix is always declared.
        assert_eq!(records("<m xml:lang='en'/>"), ["<m xml:lang='en'/>\n"]);
    }

    /// Found by fuzzing (fuzz/framer_diff): namespace declarations that
    /// Namespaces in XML forbids were passed on in records, which strict
    /// parsers (quick-xml, Expat in clients) then refuse.
    #[test]
    fn reserved_namespace_declarations() {
        for body in [
            "<m xmlns:xml='urn:x'/>",
            "<m xmlns:xmlns='urn:x'/>",
            "<m xmlns:p=''><p:b/></m>",
            "<m><b xmlns:p=\"\"/></m>",
            "<m xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            "<m xmlns:p='http://www.w3.org/2000/xmlns/'/>",
            "<m xmlns='http://www.w3.org/2000/xmlns/'/>",
            "<m xmlns='http://www.w3.org/XML/1998/namespace'/>",
            "<m xmlns:p='http://www.w3.org/XML/1998/&#110;amespace'/>",
        ] {
            assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
            assert_eq!(frag_cond(body), Condition::NotWellFormed, "{body}");
        }
        // The header's declarations are checked too: they would be copied
        // into records.
        let input = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:p=''>";
        let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[input]);
        assert_eq!(err.map(|e| e.condition), Some(Condition::NotWellFormed));
        // What the rules allow.
        assert_eq!(
            records(
                "<m xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/><m xmlns=''/>"
            ),
            [
                "<m xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>\n",
                "<m xmlns=''/>\n"
            ]
        );
    }

    #[test]
    fn duplicate_expanded_attribute_names() {
        for body in [
            "<m xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:k='2'/>",
            "<m xmlns:a='urn:u'><n xmlns:b='urn:u' a:k='1' b:k='2'/></m>",
            "<m xmlns:a='urn&#58;u' xmlns:b='urn:u' a:k='1' b:k='2'/>",
            "<m xmlns:s='http://etherx.jabber.org/streams' s:k='1' stream:k='2'/>",
        ] {
            assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
        }
        for ok in [
            "<m xmlns:a='urn:a' xmlns:b='urn:b' a:k='1' b:k='2'/>",
            "<m xmlns:a='urn:a' k='1' a:k='2'/>",
            "<m xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:j='2'/>",
        ] {
            assert_eq!(records(ok), [format!("{ok}\n")], "{ok}");
        }
    }

    #[test]
    fn second_header_is_bad_format() {
        assert_eq!(
            cond("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"),
            Condition::BadFormat
        );
        assert_eq!(cond("<m><stream:stream>"), Condition::BadFormat);
        // Any prefix, or none: the namespace is what counts, and a header
        // that never ends is refused at once.
        for body in [
            "<s:stream xmlns:s='http://etherx.jabber.org/streams' version='1.0'>",
            "<stream xmlns='http://etherx.jabber.org/streams'>",
            "<stream xmlns='http://etherx.jabber.org/streams'/>",
            "<m><s:stream xmlns:s='http://etherx.jabber.org/streams'/></m>",
            "<m xmlns:s='http://etherx.jabber.org/streams'><s:stream/></m>",
            "<m><x xmlns='http://etherx.jabber.org/streams'><stream/></x></m>",
        ] {
            assert_eq!(cond(body), Condition::BadFormat, "{body}");
        }
        // Other elements named stream are fine.
        assert_eq!(
            records("<stream xmlns='urn:x'/><m><stream/></m>"),
            ["<stream xmlns='urn:x'/>\n", "<m><stream/></m>\n"]
        );
    }

    #[test]
    fn limits() {
        let pre = Limits::PRE_AUTH;
        // Never completes: refused once it passes 8 KiB.
        let big = format!("{HDR}<message><body>{}", "x".repeat(9000));
        let (evs, err) = run(Mode::Stream, pre, &[big.as_bytes()]);
        assert_eq!(evs.len(), 1);
        assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
        let mut f = Framer::new(Mode::Stream, pre);
        f.feed(HDR.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
        f.feed(b"<message><body>");
        let mut n = 0;
        let e = loop {
            f.feed(&[b'y'; 100]);
            n += 100;
            match f.next_event() {
                Ok(None) => assert!(n < 9000),
                Ok(Some(e)) => panic!("{e:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.condition, Condition::PolicyViolation);
        assert!(n <= 8300, "caught at {n}");
        // Just under the limit is fine.
        let fits = format!("<m>{}</m>", "z".repeat(8 * 1024 - 7));
        assert_eq!(fits.len(), 8 * 1024);
        assert_eq!(run(Mode::Fragments, pre, &[fits.as_bytes()]).1, None);
        let over = format!("<m>{}</m>", "z".repeat(8 * 1024 - 6));
        assert_eq!(
            run(Mode::Fragments, pre, &[over.as_bytes()])
                .1
                .map(|e| e.condition),
            Some(Condition::PolicyViolation)
        );
        // Depth and attribute count.
        let deep = "<a>".repeat(17) + &"</a>".repeat(17);
        assert_eq!(frag_cond_l(&deep, pre), Condition::PolicyViolation);
        let ok_deep = "<a>".repeat(16) + &"</a>".repeat(16);
        assert!(canonical_record(ok_deep.as_bytes(), pre).is_ok());
        let attrs: String = (0..33).map(|i| format!(" a{i}='1'")).collect();
        assert_eq!(
            frag_cond_l(&format!("<m{attrs}/>"), pre),
            Condition::PolicyViolation
        );
        let attrs: String = (0..32).map(|i| format!(" a{i}='1'")).collect();
        assert!(canonical_record(format!("<m{attrs}/>").as_bytes(), pre).is_ok());
    }

    fn frag_cond_l(line: &str, l: Limits) -> Condition {
        canonical_record(line.as_bytes(), l)
            .err()
            .map(|e| e.condition)
            .unwrap_or_else(|| panic!("accepted {line}"))
    }

    /// Feed `input` after the header in chunks of `step` bytes under
    /// `Limits::FROM_SERVER`; the events after the header, or the error.
    fn from_server(body: &[u8], step: usize) -> (Vec<Event>, Option<FrameError>) {
        let mut input = HDR.as_bytes().to_vec();
        input.extend_from_slice(body);
        let chunks: Vec<&[u8]> = input.chunks(step.max(1)).collect();
        let (mut evs, err) = run(Mode::Stream, Limits::FROM_SERVER, &chunks);
        assert!(matches!(evs.first(), Some(Event::Header(_))));
        evs.remove(0);
        (evs, err)
    }

    fn dropped(ev: &Event) -> &Dropped {
        match ev {
            Event::Dropped(d) => d,
            e => panic!("not dropped: {e:?}"),
        }
    }

    const NEXT: &[u8] = b"<message from='c@d/e'><body>next</body></message>";

    #[test]
    fn from_server_over_a_limit_is_dropped_and_the_stream_goes_on() {
        let head = "<message from='bob@example.org/r&apos;1' id='x&amp;y' type='chat'>";
        let deep = format!("{head}{}{}</message>", "<a>".repeat(64), "</a>".repeat(64));
        let attrs: String = (0..65).map(|i| format!(" a{i}='v'")).collect();
        let wide = format!("{head}<x{attrs}/></message>");
        let big = format!("{head}<body>{}</body></message>", "'".repeat(1700 * 1024));
        let one_tag = format!(
            "<message from='bob@example.org/r&apos;1' id='x&amp;y' type='chat' v='{}'/>",
            "v".repeat(1700 * 1024)
        );
        for (what, el) in [
            ("nesting deeper than 64", &deep),
            ("more than 64 attributes", &wide),
            ("element exceeds 1638400 bytes", &big),
            ("element exceeds 1638400 bytes", &one_tag),
        ] {
            let mut body = el.as_bytes().to_vec();
            body.extend_from_slice(NEXT);
            let want_bytes = el.len();
            for step in [body.len(), 65536, 4096, 1499, 7] {
                if step < 1000 && el.len() > 100_000 {
                    continue;
                }
                let (evs, err) = from_server(&body, step);
                assert_eq!(err, None, "{what} in {step}-byte reads");
                assert_eq!(evs.len(), 2, "{what} in {step}-byte reads: {evs:?}");
                let d = dropped(&evs[0]);
                assert_eq!(d.reason.condition, Condition::PolicyViolation);
                assert_eq!(d.reason.detail, what);
                assert_eq!(d.name, "message");
                assert_eq!(d.from.as_deref(), Some("bob@example.org/r'1"));
                assert_eq!(d.id.as_deref(), Some("x&y"));
                assert_eq!(d.kind.as_deref(), Some("chat"));
                assert_eq!(d.bytes, want_bytes);
                assert_eq!(evs[1], Event::Record([NEXT, b"\n"].concat()));
            }
        }
        // What is under the limits is delivered as always.
        let fits = format!(
            "<message>{}{}</message>",
            "<a>".repeat(63),
            "</a>".repeat(63)
        );
        let (evs, err) = from_server(fits.as_bytes(), 4096);
        assert_eq!(err, None);
        assert!(matches!(&evs[..], [Event::Record(_)]));
    }

    #[test]
    fn skipping_holds_no_more_than_a_read() {
        let mut f = Framer::new(Mode::Stream, Limits::FROM_SERVER);
        f.feed(HDR.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
        f.feed(b"<message><body>");
        let chunk = vec![b'q'; 65536];
        // Up to the record limit it is buffered, as any element; once
        // skipping, a read at a time.
        let mut most = 0;
        for _ in 0..(10 << 20) / chunk.len() {
            let skipping = f.skip.is_some();
            f.feed(&chunk);
            if skipping {
                most = most.max(f.buf.len());
            }
            assert_eq!(f.next_event(), Ok(None));
        }
        assert!(f.skip.is_some());
        assert!(most <= 2 * chunk.len(), "held {most} bytes while skipping");
        f.feed(b"</body></message><presence/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Dropped(_)))));
        assert_eq!(
            f.next_event(),
            Ok(Some(Event::Record(b"<presence/>\n".to_vec())))
        );
    }

    #[test]
    fn past_the_skip_bound_is_a_stream_error() {
        let mut f = Framer::new(Mode::Stream, Limits::FROM_SERVER);
        f.feed(HDR.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
        f.feed(b"<message><body>");
        let chunk = vec![b'q'; 1 << 20];
        let e = loop {
            f.feed(&chunk);
            match f.next_event() {
                Ok(None) => {}
                Ok(Some(e)) => panic!("{e:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.condition, Condition::PolicyViolation);
        assert_eq!(e.detail, format!("element exceeds {} bytes", 16 << 20));
        // Deep and unterminated: the same bound.
        let deep = b"<a>".repeat(6 << 20);
        let (_, err) = from_server(&deep, 65536);
        assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
    }

    /// The skipper refuses what the validating pass refuses (other than
    /// namespace prefixes), wherever the reads cut the element.
    #[test]
    fn malformed_skipped_elements_are_still_stream_errors() {
        let deep = |inner: &str| {
            format!(
                "<message>{}{inner}{}</message>",
                "<a>".repeat(65),
                "</a>".repeat(65)
            )
        };
        let big = |inner: &str| {
            format!(
                "<message><body>{}</body>{inner}</message>",
                "b".repeat(1700 * 1024)
            )
        };
        let cases: Vec<(&str, Condition)> = vec![
            ("<!-- c -->", Condition::RestrictedXml),
            ("<?pi x?>", Condition::RestrictedXml),
            ("<!DOCTYPE x>", Condition::RestrictedXml),
            ("&nbsp;", Condition::RestrictedXml),
            ("&#0;", Condition::NotWellFormed),
            ("a & b", Condition::NotWellFormed),
            ("a]]>b", Condition::NotWellFormed),
            ("\u{1}", Condition::NotWellFormed),
            ("<x>\u{FFFE}</x>", Condition::NotWellFormed),
            ("<b></c>", Condition::NotWellFormed),
            ("<1b/>", Condition::NotWellFormed),
            ("<b a='1' a='2'/>", Condition::NotWellFormed),
            ("<b a='1'c='2'/>", Condition::NotWellFormed),
            ("<b a=1/>", Condition::NotWellFormed),
            ("<b a='<'/>", Condition::NotWellFormed),
            ("<a:b:c/>", Condition::NotWellFormed),
            ("<stream:stream>", Condition::BadFormat),
        ];
        for (inner, want) in cases {
            for el in [deep(inner), big(inner)] {
                for step in [el.len(), 65536, 4093] {
                    let (_, err) = from_server(el.as_bytes(), step);
                    assert_eq!(
                        err.as_ref().map(|e| e.condition),
                        Some(want),
                        "{inner:?} in {step}-byte reads: {err:?}"
                    );
                }
            }
        }
        // Invalid UTF-8, split over reads or not.
        for bad in [
            &b"\xc0\xaf"[..],
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82<",
        ] {
            let mut el = deep("").into_bytes();
            let at = el.len() - 20;
            el.splice(at..at, bad.iter().copied());
            for step in [el.len(), 1, 2, 3] {
                let (_, err) = from_server(&el, step);
                assert_eq!(err.map(|e| e.condition), Some(Condition::NotWellFormed));
            }
        }
    }

    #[test]
    fn well_formed_oddities_in_a_skipped_element() {
        let inner = "<x a=\"'>\" b='&lt;&#x1F600;&apos;'>é😀]]&gt;<![CDATA[ ]] > ]]]>\
            &#65;&amp;</x><y\n/><z\t></z   >\r\n";
        let el = format!(
            "<message type='headline'>{}{inner}{}</message>",
            "<a>".repeat(65),
            "</a>".repeat(65)
        );
        let mut body = el.clone().into_bytes();
        body.extend_from_slice(NEXT);
        for step in [body.len(), 1, 2, 5, 64] {
            let (evs, err) = from_server(&body, step);
            assert_eq!(err, None, "{step}-byte reads");
            let d = dropped(&evs[0]);
            assert_eq!((d.from.as_deref(), d.id.as_deref()), (None, None));
            assert_eq!(d.kind.as_deref(), Some("headline"));
            assert_eq!(evs[1], Event::Record([NEXT, b"\n"].concat()));
        }
    }

    #[test]
    fn over_the_line_rule_is_dropped_where_limits_skip() {
        let limits = Limits {
            max_record: 200,
            max_line: 150,
            max_skip: 10_000,
            ..Limits::DEFAULT
        };
        let grows = format!("<m><![CDATA[{}]]></m><n/>", "\n".repeat(20));
        let (evs, err) = run(Mode::Fragments, limits, &[grows.as_bytes()]);
        assert_eq!(err, None);
        assert!(matches!(&evs[..], [Event::Dropped(_), Event::Record(r)] if r == b"<n/>\n"));
        // Without max_skip it is the stream error it always was.
        let fatal = Limits {
            max_skip: 0,
            ..limits
        };
        let (_, err) = run(Mode::Fragments, fatal, &[grows.as_bytes()]);
        assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
    }

    #[test]
    fn before_auth_and_by_default_limits_stay_fatal() {
        for l in [Limits::PRE_AUTH, Limits::DEFAULT] {
            assert_eq!(l.max_skip, 0);
            let deep = format!("{HDR}<m>{}</m>", "<a>".repeat(70));
            let (_, err) = run(Mode::Stream, l, &[deep.as_bytes()]);
            assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
        }
    }

    #[test]
    fn set_limits_after_auth() {
        let mut f = Framer::new(Mode::Fragments, Limits::PRE_AUTH);
        f.set_limits(Limits::DEFAULT);
        let big = format!("<m>{}</m>", "z".repeat(20000));
        f.feed(big.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::Record(_)))));
    }

    #[test]
    fn reset_restarts_stream() {
        let mut f = Framer::new(Mode::Stream, Limits::DEFAULT);
        f.feed(HDR.as_bytes());
        f.feed(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><partial");
        assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
        assert!(matches!(f.next_event(), Ok(Some(Event::Record(_)))));
        assert_eq!(f.next_event(), Ok(None));
        assert!(f.buffered() > 0);
        f.reset();
        assert_eq!(f.buffered(), 0);
        f.feed(HDR.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
        // An error sticks until reset.
        f.feed(b"<!---->");
        let e = f.next_event().unwrap_err();
        f.feed(b"<m/>");
        assert_eq!(f.next_event(), Err(e));
        f.reset();
        f.feed(HDR.as_bytes());
        f.feed(b"<m/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
        assert_eq!(f.next_event(), Ok(Some(Event::Record(b"<m/>\n".to_vec()))));
    }

    #[test]
    fn fragments_and_canonical_record() {
        assert_eq!(
            canonical_record(
                b"  <message to='a@b'><body>x\ny</body></message>\r\n",
                Limits::DEFAULT
            ),
            Ok(b"<message to='a@b'><body>x&#10;y</body></message>\n".to_vec())
        );
        assert_eq!(frag_cond("<a/><b/>"), Condition::NotWellFormed);
        assert_eq!(frag_cond("<a/><b"), Condition::NotWellFormed);
        assert_eq!(frag_cond("<a>"), Condition::NotWellFormed);
        assert_eq!(frag_cond("<m a='1'"), Condition::NotWellFormed);
        assert_eq!(frag_cond(""), Condition::NotWellFormed);
        assert_eq!(frag_cond("<a/>x"), Condition::NotWellFormed);
        let (evs, err) = run(Mode::Fragments, Limits::DEFAULT, &[b"<a/>\n<b>x</b>\n"]);
        assert_eq!(err, None);
        assert_eq!(
            evs,
            [
                Event::Record(b"<a/>\n".to_vec()),
                Event::Record(b"<b>x</b>\n".to_vec())
            ]
        );
    }

    /// A realistic stream: chat, caps presences, a roster, features, CDATA,
    /// quotes with `>` inside, whitespace keepalives, CRLF.
    fn sample() -> Vec<u8> {
        let mut s = String::from(HDR);
        s.push_str(
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\n",
        );
        for i in 0..20 {
            s.push_str(&format!(
                "<message from='a@b/r{i}' to='c@d' type='chat' id='m{i}'>\r\n <body>hi &amp; \"bye\" > {i}\nline2</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/></message> \n\t",
            ));
            s.push_str(&format!(
                "<presence from=\"x@y/{i}\"><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
                 node='https://a.org?x=>' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/><status><![CDATA[<ok>\r\n]]]]></status></presence>",
            ));
        }
        s.push_str("<iq type='result' id='r'><query xmlns='jabber:iq:roster'>");
        for i in 0..50 {
            s.push_str(&format!(
                "<item jid='u{i}@ex.org' name='Ü{i}' subscription='both'><group>G</group></item>"
            ));
        }
        s.push_str("</query></iq>  ");
        s.push_str("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>");
        s.into_bytes()
    }

    fn split_run(input: &[u8], cuts: &[usize]) -> (Vec<Event>, Option<FrameError>) {
        let mut chunks = Vec::new();
        let mut last = 0;
        for &c in cuts {
            chunks.push(&input[last..c]);
            last = c;
        }
        chunks.push(&input[last..]);
        run(Mode::Stream, Limits::DEFAULT, &chunks)
    }

    #[test]
    fn chunking_independent() {
        let input = sample();
        let whole = run(Mode::Stream, Limits::DEFAULT, &[&input]);
        assert_eq!(whole.1, None);
        assert_eq!(whole.0.len(), 1 + 1 + 40 + 1 + 1 + 1);
        assert!(matches!(whole.0.last(), Some(Event::End)));
        for e in &whole.0 {
            if let Event::Record(r) | Event::StreamError(r) = e {
                assert_eq!(memchr::memchr(b'\n', r), Some(r.len() - 1));
                assert!(!r.contains(&b'\r'));
                // Records are self-contained and canonical: a fixed point.
                assert_eq!(canonical_record(r, Limits::DEFAULT).as_ref(), Ok(r));
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(Mode::Stream, Limits::DEFAULT, &bytes), whole);
        // Deterministic LCG for pseudo-random cut points.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..20 {
            let mut cuts = Vec::new();
            let mut p = 0;
            loop {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                p += 1 + (x >> 33) as usize % (if round % 2 == 0 { 7 } else { 300 });
                if p >= input.len() {
                    break;
                }
                cuts.push(p);
            }
            assert_eq!(split_run(&input, &cuts), whole, "round {round}");
        }
        // Errors are chunking-independent too.
        let mut bad = input.clone();
        let at = bad.len() / 2;
        bad.splice(at..at, b"<!--x-->".iter().copied());
        let whole_bad = run(Mode::Stream, Limits::DEFAULT, &[&bad]);
        assert!(whole_bad.1.is_some());
        let bytes: Vec<&[u8]> = bad.chunks(1).collect();
        assert_eq!(run(Mode::Stream, Limits::DEFAULT, &bytes), whole_bad);
    }

    /// Found by fuzzing (fuzz/framer_chunks): a markup declaration that
    /// starts just under the record limit was refused as restricted XML
    /// when fed a byte at a time, but as over the limit when the bytes
    /// after `<!` had already arrived.
    #[test]
    fn markup_declaration_at_the_limit_is_chunking_independent() {
        let tiny = Limits::new(64, 2, 2);
        let mut input = b"<m>".to_vec();
        input.resize(58, b'v');
        input.extend_from_slice(b"<!v[vvvvvvvvvvvv></m>\n");
        let whole = run(Mode::Fragments, tiny, &[&input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(Mode::Fragments, tiny, &bytes), whole);
        assert_eq!(whole.1.map(|e| e.condition), Some(Condition::RestrictedXml));
    }

    #[test]
    fn linear_in_one_byte_feeds() {
        // One 4 MiB record fed a byte at a time: quadratic rescanning would
        // take minutes here.
        let limits = Limits::new(8 << 20, 64, 64);
        let mut f = Framer::new(Mode::Fragments, limits);
        let mut input = b"<message a='x'><body>".to_vec();
        input.resize(4 << 20, b'a');
        input.extend_from_slice(b"</body></message>");
        let mut got = 0;
        for b in input.chunks(1) {
            f.feed(b);
            if let Ok(Some(_)) = f.next_event() {
                got += 1;
            }
        }
        assert_eq!(got, 1);
        // Many small records, also one byte at a time: the buffer stays small.
        let mut f = Framer::new(Mode::Fragments, Limits::DEFAULT);
        let rec = b"<presence from='a@b/c'><show>away</show></presence>\n";
        let mut max_buf = 0;
        for _ in 0..20_000 {
            for b in rec.chunks(1) {
                f.feed(b);
                while let Ok(Some(_)) = f.next_event() {}
                max_buf = max_buf.max(f.buf.len());
            }
        }
        assert!(max_buf < 2 * rec.len(), "{max_buf}");
    }

    #[test]
    fn qname_fast_path_matches_general() {
        // Every string of up to four characters from name starts, name
        // characters, colons, non-name ASCII and multibyte characters.
        let alphabet = [
            "a", "Z", "_", ":", "1", "-", ".", "é", "\u{300}", "\u{B7}", " ", ">", "=",
        ];
        let mut cases = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &last {
                for a in alphabet {
                    next.push(format!("{p}{a}"));
                }
            }
            cases.extend(next.iter().cloned());
            last = next;
        }
        for c in &cases {
            for tail in ["", "/", "'"] {
                let s = format!("{c}{tail}");
                let b = s.as_bytes();
                assert_eq!(qname(b, 0), qname_general(b, 0), "{s:?}");
                // Not at the start of the buffer, too.
                let t = format!("<{s}");
                assert_eq!(
                    qname(t.as_bytes(), 1),
                    qname_general(t.as_bytes(), 1),
                    "{t:?}"
                );
            }
        }
        // Truncated UTF-8 at the end of what is buffered.
        for s in [&b"a\xC3"[..], b"ab\xE2\x82", b"\xC3", b"a:\xC3"] {
            assert_eq!(qname(s, 0), qname_general(s, 0), "{s:?}");
        }
    }

    #[test]
    fn run_len_matches_table() {
        for table in [&TEXT_SPECIAL, &ATTR_SPECIAL] {
            let plain = |s: &[u8]| s.iter().position(|&b| table[b as usize]).unwrap_or(s.len());
            for len in 0..40 {
                let mut s = vec![b'x'; len];
                assert_eq!(run_len(&s, table), len);
                for at in 0..len {
                    for b in 0..=255u8 {
                        s[at] = b;
                        assert_eq!(run_len(&s, table), plain(&s), "{len} {at} {b}");
                    }
                    s[at] = b'x';
                }
            }
        }
    }

    /// Records and mistakes where the fast path, its resumption at a mark
    /// and the scanner path meet: every split point must give what the
    /// whole input and one byte a read give.
    fn tricky() -> Vec<&'static str> {
        vec![
            "<m>a\r\nb</m>",
            "<m a='x\r\ny'\r\n b='\t'>t\r</m>",
            "<m><![CDATA[a\r\nb]]><x/><![CDATA[]]]]></m>",
            "<m><a><b/><c>x&amp;y&#x1F600;</c></a></m>",
            "<stream:features><x xmlns:p='u'><p:y p:a='1' stream:b='2'/></x></stream:features>",
            "<stream:error><bad-format xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
            "<é a='ü'><ü:é xmlns:ü='u'>ö</ü:é></é>",
            "<m><a></a ><b/></m\n>",
            "<m><a>x</b></m>",
            "<m><a><b/></a><c d='1' d='2'/></m>",
            "<m><a/><p:b/></m>",
            "<m><a/><!--x--></m>",
            "<m><a/>&#0;</m>",
            "<m><a/>\u{1}</m>",
            "<m><a/><b 1='x'/></m>",
            "<m><a/>]]></m>",
            "<m><a/><b a='<'/></m>",
            "<m><a/><stream:stream></m>",
            "<m><a/><?pi?></m>",
            "<m><a/><b>",
        ]
    }

    #[test]
    fn every_split_point() {
        let mut input = HDR.as_bytes().to_vec();
        for (k, r) in tricky().iter().enumerate() {
            let mut one = input.clone();
            one.extend_from_slice(r.as_bytes());
            one.extend_from_slice(b"<tail/>");
            let whole = run(Mode::Stream, Limits::DEFAULT, &[&one]);
            let bytes: Vec<&[u8]> = one.chunks(1).collect();
            assert_eq!(run(Mode::Stream, Limits::DEFAULT, &bytes), whole, "{r}");
            for a in HDR.len()..one.len() {
                let got = run(Mode::Stream, Limits::DEFAULT, &[&one[..a], &one[a..]]);
                assert_eq!(got, whole, "{r} split at {a}");
                let b = a + (one.len() - a) * (k + 1) / (tricky().len() + 1);
                let got = run(
                    Mode::Stream,
                    Limits::DEFAULT,
                    &[&one[..a], &one[a..b], &one[b..]],
                );
                assert_eq!(got, whole, "{r} split at {a}, {b}");
            }
            if whole.1.is_none() {
                input.extend_from_slice(r.as_bytes());
            }
        }
        // All the valid ones in one stream, cut at every point.
        let whole = run(Mode::Stream, Limits::DEFAULT, &[&input]);
        assert_eq!(whole.1, None);
        for a in HDR.len()..input.len() {
            assert_eq!(
                run(Mode::Stream, Limits::DEFAULT, &[&input[..a], &input[a..]]),
                whole,
                "split at {a}"
            );
        }
    }

    #[test]
    fn end_tag_names() {
        // The end tag is compared with the open element's name without
        // reading it as a name first; a longer name still is another name.
        for (line, detail) in [
            ("<a></ab>", "mismatched end tag"),
            ("<a></a:b>", "mismatched end tag"),
            ("<a></a-1>", "mismatched end tag"),
            ("<a></a.>", "mismatched end tag"),
            ("<a></aé>", "mismatched end tag"),
            ("<a></a\u{300}>", "mismatched end tag"),
            ("<ab></a>", "mismatched end tag"),
            ("<a></a/>", "expected '>' in end tag"),
            ("<a></a x>", "expected '>' in end tag"),
            ("<a></1>", "invalid name"),
            ("<a></>", "invalid name"),
            ("<a></a:>", "invalid qualified name"),
        ] {
            let e = canonical_record(line.as_bytes(), Limits::DEFAULT);
            assert_eq!(e.map_err(|e| e.detail), Err(detail.to_string()), "{line}");
        }
        for line in [
            "<a></a >",
            "<a></a\r\n>",
            "<aé></aé>",
            "<p:a xmlns:p='u'></p:a>",
        ] {
            assert!(
                canonical_record(line.as_bytes(), Limits::DEFAULT).is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn header_prefix_with_a_split() {
        // The declaration is added whether the record arrives whole or in
        // pieces (the pass resumes at a mark past the top-level start tag).
        let r = "<x><y stream:a='1'/><z/></x>";
        let want = "<x xmlns:stream='http://etherx.jabber.org/streams'><y stream:a='1'/><z/></x>\n";
        let input = format!("{HDR}{r}");
        for a in HDR.len()..input.len() {
            let (evs, err) = split_run(input.as_bytes(), &[a]);
            assert_eq!(err, None);
            assert_eq!(
                evs[1],
                Event::Record(want.as_bytes().to_vec()),
                "split at {a}"
            );
        }
    }

    #[test]
    fn pass_stays_linear_after_a_mark() {
        // The first read holds a mark (after `<body>`), then the long text
        // comes a byte at a time: going on from the mark on every byte
        // would redo the whole text each time.
        let limits = Limits::new(1 << 20, 64, 64);
        let mut input = b"<message a='x'><body>".to_vec();
        input.resize(20_000, b'a');
        input.extend_from_slice(b"</body></message>");
        let mut f = Framer::new(Mode::Fragments, limits);
        f.feed(&input[..100]);
        assert_eq!(f.next_event(), Ok(None));
        assert!(f.pending.is_some());
        let mut got = Vec::new();
        for b in input[100..].chunks(1) {
            f.feed(b);
            while let Ok(Some(e)) = f.next_event() {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], Event::Record([input.as_slice(), b"\n"].concat()));
        assert!(f.pass_bytes <= 4 * input.len(), "{}", f.pass_bytes);
        // A whole record is passed over once.
        let mut f = Framer::new(Mode::Fragments, limits);
        f.feed(&input);
        assert!(matches!(f.next_event(), Ok(Some(Event::Record(_)))));
        assert_eq!(f.pass_bytes, input.len());
    }

    #[test]
    fn limits_changed_mid_element() {
        // The kept pass was made with other limits: a fresh one decides.
        let mut f = Framer::new(Mode::Fragments, Limits::DEFAULT);
        let attrs: String = (0..40).map(|i| format!(" a{i}='1'")).collect();
        let rec = format!("<m><x{attrs}/><y/></m>");
        let cut = rec.find("<y/>").unwrap_or(0);
        f.feed(&rec.as_bytes()[..cut]);
        assert_eq!(f.next_event(), Ok(None));
        assert!(f.pending.is_some());
        f.set_limits(Limits::PRE_AUTH);
        f.feed(&rec.as_bytes()[cut..]);
        assert_eq!(
            f.next_event().map_err(|e| e.condition),
            Err(Condition::PolicyViolation)
        );
    }

    #[test]
    fn no_panic_on_garbage() {
        let input = sample();
        let mut x: u64 = 7;
        for _ in 0..500 {
            let mut v = input.clone();
            for _ in 0..5 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (x >> 33) as usize % v.len();
                const MARKUP: &[u8] = b"<>/'\"&!?[]-:= \n\r\x00\xEF";
                v[i] = if x & (1 << 40) == 0 {
                    MARKUP[(x >> 20) as usize % MARKUP.len()]
                } else {
                    (x >> 13) as u8
                };
            }
            // Errors, too, must not depend on chunking.
            let whole = run(Mode::Stream, Limits::DEFAULT, &[&v]);
            let cuts: Vec<usize> = (1..v.len())
                .filter(|c| c.wrapping_mul(7919).wrapping_add(x as usize) % 13 == 3)
                .collect();
            assert_eq!(split_run(&v, &cuts), whole);
            let small = Limits::new(700, 3, 4);
            let chunks: Vec<&[u8]> = v.chunks(5).collect();
            assert_eq!(
                run(Mode::Stream, small, &chunks),
                run(Mode::Stream, small, &[&v])
            );
            let _ = canonical_record(&v[200..600], Limits::DEFAULT);
            let _ = crate::xml::Element::parse(&v[200..600]);
        }
        for junk in [
            &b"<"[..],
            b"<?",
            b"<?>",
            b"</",
            b"<!",
            b"<a/",
            b"<![CDATA[]]>",
            b"\xff\xfe",
        ] {
            let _ = run(Mode::Stream, Limits::DEFAULT, &[junk]);
            let _ = run(Mode::Fragments, Limits::DEFAULT, &[junk]);
            let _ = canonical_record(junk, Limits::DEFAULT);
        }
    }

    /// An element of at most `max_record` bytes that is all `unit`s inside
    /// CDATA (`cdata`) or character data: the worst growth there is.
    fn all_breaks(limits: Limits, unit: &str, cdata: bool) -> String {
        let (open, close) = if cdata {
            ("<m><![CDATA[", "]]></m>")
        } else {
            ("<m>", "</m>")
        };
        let n = (limits.max_record - open.len() - close.len()) / unit.len();
        format!("{open}{}{close}", unit.repeat(n))
    }

    #[test]
    fn line_rule_holds_for_the_worst_records() {
        for limits in [Limits::PRE_AUTH, Limits::DEFAULT] {
            for (unit, cdata) in [
                ("\n", true),
                ("\r", true),
                ("\r\n", true),
                ("x\n", true),
                ("\n", false),
            ] {
                let el = all_breaks(limits, unit, cdata);
                assert!(el.len() <= limits.max_record);
                let (evs, err) = run(Mode::Fragments, limits, &[el.as_bytes()]);
                assert_eq!(err, None, "{unit:?} {cdata}");
                let Some(Event::Record(r)) = evs.first() else {
                    panic!("no record for {unit:?} {cdata}");
                };
                let line = &r[..r.len() - 1];
                assert!(line.len() <= limits.max_line(), "{unit:?} {cdata}");
                // A pipe's reader takes it whole, and it is a record there.
                let mut lr = crate::io::LineReader::new(limits.max_line());
                lr.push(r);
                assert_eq!(lr.next_line(), Some(line));
                assert_eq!(canonical_record(r, limits).as_ref(), Ok(r));
                // Toward a server it is as long as what was sent.
                let sent = el.replace("\r\n", "\n").replace('\r', "\n") + "\n";
                assert_eq!(wire_form(r.clone()), sent.into_bytes());
            }
            // The rule is not slack: LFs in CDATA come close to it.
            let el = all_breaks(limits, "\n", true);
            let r = canonical_record(el.as_bytes(), limits).expect("record");
            assert!(r.len() > 16 * limits.max_record, "{}", r.len());
        }
        assert_eq!(MAX_LINE, Limits::DEFAULT.max_line());
        assert_eq!(MAX_LINE, 17 * 256 * 1024 + 4096);
    }

    #[test]
    fn declarations_that_do_not_fit_on_the_line_are_refused() {
        let limits = Limits::new(8192, 8, 8);
        let uri = "u".repeat(5000);
        let hdr = format!(
            "<stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='{uri}'>"
        );
        let (open, close) = ("<p:m><![CDATA[", "]]></p:m>");
        let el = format!(
            "{open}{}{close}",
            "\n".repeat(limits.max_record - open.len() - close.len())
        );
        let input = format!("{hdr}{el}");
        let (evs, err) = run(Mode::Stream, limits, &[input.as_bytes()]);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            err.as_ref().map(|e| e.condition),
            Some(Condition::PolicyViolation),
            "{err:?}"
        );
        // However it is chunked.
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(1000).collect();
        let (_, err) = run(Mode::Stream, limits, &chunks);
        assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
        // A short declaration fits.
        let input = format!("{}{el}", hdr.replace(&uri, "u"));
        let (evs, err) = run(Mode::Stream, limits, &[input.as_bytes()]);
        assert_eq!(err, None);
        assert!(matches!(&evs[1], Event::Record(r) if r.len() <= limits.max_line() + 1));
    }

    #[test]
    fn canonical_record_takes_lines_as_long_as_the_rule() {
        let limits = Limits::PRE_AUTH;
        // Grown past max_record by canonicalisation, it is still a record.
        let grown = format!("<m>{}</m>", "&#10;".repeat(limits.max_record / 5 + 10));
        assert!(grown.len() > limits.max_record);
        assert_eq!(
            canonical_record(grown.as_bytes(), limits),
            Ok(format!("{grown}\n").into_bytes())
        );
        let longest = format!("<m>{}</m>", "z".repeat(limits.max_line() - 7));
        assert!(canonical_record(longest.as_bytes(), limits).is_ok());
        let over = format!("<m>{}</m>", "z".repeat(limits.max_line() - 6));
        assert_eq!(
            canonical_record(over.as_bytes(), limits).map_err(|e| e.condition),
            Err(Condition::PolicyViolation)
        );
        // Lone CRs on a raw line would make a record longer than the rule.
        let crs = format!("<m>{}</m>", "\r".repeat(limits.max_line() / 5));
        assert!(crs.len() <= limits.max_line());
        assert_eq!(
            canonical_record(crs.as_bytes(), limits).map_err(|e| e.condition),
            Err(Condition::PolicyViolation)
        );
    }

    #[test]
    fn wire_form_undoes_only_the_line_break_escapes() {
        for (sent, wire) in [
            ("<m>a\nb</m>", "<m>a\nb</m>\n"),
            ("<m>a\r\nb\rc</m>", "<m>a\nb\nc</m>\n"),
            (
                "<m>\n  <body>x</body>\n</m>",
                "<m>\n  <body>x</body>\n</m>\n",
            ),
            (
                "<m><![CDATA[a\n\nb<c]]></m>",
                "<m><![CDATA[a\n\nb<c]]></m>\n",
            ),
            ("<m><![CDATA[\n]]></m>", "<m><![CDATA[\n]]></m>\n"),
            (
                "<m><![CDATA[x]]>&#10;y<![CDATA[z]]></m>",
                "<m><![CDATA[x]]>\ny<![CDATA[z]]></m>\n",
            ),
            // Attribute values keep theirs, a quoted `>` included.
            (
                "<m a='&#10;>&#10;' b=\"'&#10;\">&#10;</m>",
                "<m a='&#10;>&#10;' b=\"'&#10;\">\n</m>\n",
            ),
            ("<m a='x\ny'>z\n</m>", "<m a='x y'>z\n</m>\n"),
            ("<m>&amp;#10;&#10;&lt;</m>", "<m>&amp;#10;\n&lt;</m>\n"),
            (
                "<p:m xmlns:p='u'><p:b>\n</p:b></p:m>",
                "<p:m xmlns:p='u'><p:b>\n</p:b></p:m>\n",
            ),
        ] {
            let rec = canonical_record(sent.as_bytes(), Limits::DEFAULT).expect(sent);
            let w = wire_form(rec.clone());
            assert_eq!(String::from_utf8_lossy(&w), wire, "{sent:?}");
            // Framed again, it is the same record.
            assert_eq!(
                run(Mode::Fragments, Limits::DEFAULT, &[&w]),
                (vec![Event::Record(rec)], None),
                "{sent:?}"
            );
        }
        let plain = b"<m a='&#10;'>x</m>\n".to_vec();
        assert_eq!(wire_form(plain.clone()), plain);
    }
}
