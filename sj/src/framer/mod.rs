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
//!
//! The parts: this module (`Framer`, its events and limits), `scanner`
//! (the boundary scanner), `checker` (the validating pass), `names`
//! (qualified names and namespace resolution), `header` (the XML
//! declaration and the stream header), `line` (the line rule,
//! `canonical_record`, `wire_form`) and `skip` (elements skipped for a
//! limit). Characters and escaping are `crate::xml`'s.

mod checker;
mod header;
mod line;
mod names;
mod scanner;
mod skip;

use checker::Scratch;
use header::Header;
pub use line::{canonical_record, grown, wire_form, MAX_LINE};
use scanner::{Lex, Pending};
use skip::Skip;

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
        self.get("xmlns").unwrap_or(crate::ns::CLIENT) == crate::ns::CLIENT
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

type Res<T> = Result<T, FrameError>;

fn fail<T>(condition: Condition, detail: impl Into<String>) -> Res<T> {
    Err(FrameError {
        condition,
        detail: detail.into(),
    })
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
}

#[cfg(test)]
mod tests;
