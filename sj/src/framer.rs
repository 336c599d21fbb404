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
//! tags, size, depth and attribute-count limits. After an error the framer
//! is dead until `reset`.
//!
//! Not here: what a record means. The framer knows nothing of stanzas.

/// Limits on what one record may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes in one record as received (before canonicalisation).
    pub max_record: usize,
    /// Element nesting depth inside one record (the top-level element is 1).
    pub max_depth: usize,
    /// Attributes on one element.
    pub max_attrs: usize,
}

impl Limits {
    /// Before authentication (DESIGN §8): 8 KiB.
    pub const PRE_AUTH: Limits = Limits {
        max_record: 8 * 1024,
        max_depth: 16,
        max_attrs: 32,
    };
    /// After authentication: 256 KiB, like Prosody and ejabberd.
    pub const DEFAULT: Limits = Limits {
        max_record: 256 * 1024,
        max_depth: 64,
        max_attrs: 64,
    };
}

/// Stream-level error conditions (RFC 6120 §4.9.3) the framer can detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Malformed XML, bad UTF-8, bad names, mismatched tags.
    NotWellFormed,
    /// Comments, PIs, DTDs, non-predefined entities.
    RestrictedXml,
    /// Over a size, depth or attribute-count limit.
    PolicyViolation,
    /// Wrong stream namespace or an undeclared prefix.
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
}

/// Whether the input is an XMPP stream or a sequence of bare records
/// (a FIFO: no header, default namespace `jabber:client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Stream,
    Fragments,
}

const STREAMS_NS: &[u8] = b"http://etherx.jabber.org/streams";

type Res<T> = Result<T, FrameError>;

fn fail<T>(condition: Condition, detail: impl Into<String>) -> Res<T> {
    Err(FrameError { condition, detail: detail.into() })
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
    Tag { start: usize, quote: u8, end_tag: bool },
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
                Lex::Tag { start, quote, end_tag } => Lex::Tag { start: start - d, quote, end_tag },
                Lex::Cdata { content } => Lex::Cdata { content: content - d },
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
        match self.step() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.err = Some(e.clone());
                Err(e)
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
                    if self.buf[i] != b'<' {
                        let what = if self.phase == Phase::Ended {
                            "data after the end of the stream"
                        } else {
                            "text outside an element"
                        };
                        return fail(Condition::NotWellFormed, what);
                    }
                    self.item = Some(i);
                    self.lex = Lex::Lt;
                }
                Lex::Idle => match memchr::memchr(b'<', &self.buf[self.scan..]) {
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
                    match b {
                        b'/' => {
                            self.lex = Lex::Tag { start: p, quote: 0, end_tag: true };
                            self.scan = p + 2;
                        }
                        b'?' if self.phase == Phase::Start => {
                            self.lex = Lex::Decl;
                            self.scan = p + 2;
                        }
                        b'?' => {
                            return self.fail_at(p + 2, Condition::RestrictedXml, "processing instruction")
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
                                self.lex = Lex::Cdata { content: p + CDATA.len() };
                                self.scan = p + CDATA.len();
                            } else {
                                let what = if avail.starts_with(b"<!-") { "comment" } else { "DTD or markup declaration" };
                                return self.fail_at(p + avail.len(), Condition::RestrictedXml, what);
                            }
                        }
                        _ => {
                            self.lex = Lex::Tag { start: p, quote: 0, end_tag: false };
                            self.scan = p + 1;
                        }
                    }
                }
                Lex::Tag { start, quote, end_tag } => {
                    let rest = &self.buf[self.scan..];
                    let found = if quote == 0 {
                        memchr::memchr3(b'>', b'\'', b'"', rest)
                    } else {
                        memchr::memchr(quote, rest)
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
                        self.lex = Lex::Tag { start, quote: 0, end_tag };
                    } else if c != b'>' {
                        self.lex = Lex::Tag { start, quote: c, end_tag };
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
                    if name == h.qname.as_slice() {
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
        let start = self.item.take().unwrap_or(self.pos);
        let (out, is_error) = canonicalise(&self.buf[start..end], self.limits, self.header.as_ref())?;
        self.pos = end;
        Ok(if is_error { Event::StreamError(out) } else { Event::Record(out) })
    }
}

/// Validate and canonicalise one record given as one line (from a FIFO or a
/// pipe): exactly one top-level element, optional surrounding whitespace.
pub fn canonical_record(line: &[u8], limits: Limits) -> Result<Vec<u8>, FrameError> {
    let mut f = Framer::new(Mode::Fragments, limits);
    f.feed(line);
    match f.next_event()? {
        Some(Event::Record(r)) => match f.next_event()? {
            None if f.buffered() == 0 => Ok(r),
            _ => fail(Condition::NotWellFormed, "more than one element on the line"),
        },
        Some(_) => fail(Condition::NotWellFormed, "not a record"),
        None => fail(Condition::NotWellFormed, "incomplete element"),
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The qualified name at the start of a tag (`<name` or `</name`), as sent.
fn tag_name(tag: &[u8]) -> &[u8] {
    let from = if tag.get(1) == Some(&b'/') { 2 } else { 1 };
    let rest = tag.get(from..).unwrap_or(&[]);
    let len = rest.iter().position(|&b| is_ws(b) || b == b'/' || b == b'>').unwrap_or(rest.len());
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
            b"version" if !seen_version && value.starts_with(b"1.") && value.len() > 2 => seen_version = true,
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

fn parse_header(tag: &[u8], limits: Limits) -> Res<(Header, Vec<(String, String)>)> {
    check_text_bytes(tag)?;
    let mut c = Checker::new(tag, limits.max_attrs);
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
    for a in &c.attrs {
        let name = &tag[a.name.0..a.name.1];
        let raw = &tag[a.value.0..a.value.1];
        let value = crate::xml::unescape_bytes(raw, true)
            .ok_or_else(|| FrameError { condition: Condition::NotWellFormed, detail: "bad attribute value".into() })?;
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
        return fail(Condition::InvalidNamespace, "stream element not in the streams namespace");
    }
    Ok((Header { qname: qname.to_vec(), prefixes }, attrs))
}

fn split_qname(q: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match memchr::memchr(b':', q) {
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
        } else if b == 0xEF && s.get(i + 1) == Some(&0xBF) && matches!(s.get(i + 2), Some(0xBE | 0xBF)) {
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

/// End of the XML `Name` starting at `i` (0 length if none). Input must be UTF-8.
fn name_end(s: &[u8], mut i: usize) -> usize {
    let start = i;
    while let Some(&b) = s.get(i) {
        let (c, len) = if b < 0x80 {
            (b as char, 1)
        } else {
            let len = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            match s.get(i..i + len).and_then(|t| std::str::from_utf8(t).ok()).and_then(|t| t.chars().next()) {
                Some(c) => (c, len),
                None => break,
            }
        };
        let ok = if i == start { is_name_start(c) } else { is_name_char(c) };
        if !ok {
            break;
        }
        i += len;
    }
    i
}

/// A namespace-well-formed QName: `local` or `prefix:local`.
fn is_qname(q: &[u8]) -> bool {
    match memchr::memchr(b':', q) {
        None => true,
        Some(i) => i > 0 && i + 1 < q.len() && memchr::memchr(b':', &q[i + 1..]).is_none() && q[i + 1] != b'-' && !q[i + 1].is_ascii_digit() && q[i + 1] != b'.',
    }
}

/// End of the entity or character reference at `s[i] == b'&'`.
fn reference_end(s: &[u8], i: usize) -> Res<usize> {
    let rest = &s[i + 1..];
    if rest.first() == Some(&b'#') {
        let (hex, from) = if rest.get(1) == Some(&b'x') { (true, 2) } else { (false, 1) };
        let mut v: u32 = 0;
        let mut k = from;
        while let Some(&b) = rest.get(k) {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' if hex => b - b'a' + 10,
                b'A'..=b'F' if hex => b - b'A' + 10,
                _ => break,
            };
            v = v.saturating_mul(if hex { 16 } else { 10 }).saturating_add(d as u32);
            k += 1;
        }
        if k == from || rest.get(k) != Some(&b';') {
            return fail(Condition::NotWellFormed, "malformed character reference");
        }
        if !is_xml_char(v) {
            return fail(Condition::RestrictedXml, "character reference to a non-Char");
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

static TEXT_SPECIAL: [bool; 256] = table(b"<&\r\n]");
static ATTR_SPECIAL: [bool; 256] = table(b"'\"<&\r\n\t");

struct Attr {
    name: (usize, usize),
    value: (usize, usize),
}

struct StartTag {
    name: (usize, usize),
    /// `out.len()` right after the element name.
    name_end_out: usize,
    self_closing: bool,
}

/// One validating, canonicalising pass over a complete element.
struct Checker<'a> {
    s: &'a [u8],
    i: usize,
    out: Vec<u8>,
    attrs: Vec<Attr>,
    max_attrs: usize,
}

impl<'a> Checker<'a> {
    fn new(s: &'a [u8], max_attrs: usize) -> Self {
        Checker { s, i: 0, out: Vec::with_capacity(s.len() + 64), attrs: Vec::new(), max_attrs }
    }

    /// Copy a run of bytes not in `special`.
    fn run(&mut self, special: &[bool; 256]) {
        let start = self.i;
        let mut i = start;
        while i < self.s.len() && !special[self.s[i] as usize] {
            i += 1;
        }
        self.out.extend_from_slice(&self.s[start..i]);
        self.i = i;
    }

    /// Whitespace inside a tag: a line break becomes a space.
    fn ws(&mut self) -> bool {
        let start = self.i;
        while let Some(&b) = self.s.get(self.i) {
            match b {
                b'\r' => {
                    self.out.push(b' ');
                    if self.s.get(self.i + 1) == Some(&b'\n') {
                        self.i += 1;
                    }
                }
                b'\n' => self.out.push(b' '),
                b' ' | b'\t' => self.out.push(b),
                _ => break,
            }
            self.i += 1;
        }
        self.i > start
    }

    fn name(&mut self) -> Res<(usize, usize)> {
        let start = self.i;
        let end = name_end(self.s, start);
        if end == start {
            return fail(Condition::NotWellFormed, "invalid name");
        }
        if !is_qname(&self.s[start..end]) {
            return fail(Condition::NotWellFormed, "invalid qualified name");
        }
        self.out.extend_from_slice(&self.s[start..end]);
        self.i = end;
        Ok((start, end))
    }

    fn expect(&mut self, b: u8, what: &str) -> Res<()> {
        if self.s.get(self.i) != Some(&b) {
            return fail(Condition::NotWellFormed, what);
        }
        self.out.push(b);
        self.i += 1;
        Ok(())
    }

    /// At `<name`.
    fn start_tag(&mut self) -> Res<StartTag> {
        self.expect(b'<', "expected '<'")?;
        let name = self.name()?;
        let name_end_out = self.out.len();
        self.attrs.clear();
        loop {
            let had_ws = self.ws();
            match self.s.get(self.i) {
                None => return fail(Condition::NotWellFormed, "unterminated start tag"),
                Some(b'>') => {
                    self.out.push(b'>');
                    self.i += 1;
                    return Ok(StartTag { name, name_end_out, self_closing: false });
                }
                Some(b'/') => {
                    self.i += 1;
                    self.out.push(b'/');
                    self.expect(b'>', "expected '>' after '/'")?;
                    return Ok(StartTag { name, name_end_out, self_closing: true });
                }
                Some(_) => {
                    if !had_ws {
                        return fail(Condition::NotWellFormed, "missing whitespace before attribute");
                    }
                    let an = self.name()?;
                    self.ws();
                    self.expect(b'=', "expected '=' after attribute name")?;
                    self.ws();
                    let q = match self.s.get(self.i) {
                        Some(&q @ (b'\'' | b'"')) => q,
                        _ => return fail(Condition::NotWellFormed, "unquoted attribute value"),
                    };
                    self.out.push(q);
                    self.i += 1;
                    let vs = self.i;
                    loop {
                        self.run(&ATTR_SPECIAL);
                        match self.s.get(self.i) {
                            None => return fail(Condition::NotWellFormed, "unterminated attribute value"),
                            Some(&b) if b == q => break,
                            Some(b'<') => return fail(Condition::NotWellFormed, "'<' in attribute value"),
                            Some(b'&') => {
                                let e = reference_end(self.s, self.i)?;
                                self.out.extend_from_slice(&self.s[self.i..e]);
                                self.i = e;
                            }
                            Some(b'\r') => {
                                self.out.push(b' ');
                                self.i += 1;
                                if self.s.get(self.i) == Some(&b'\n') {
                                    self.i += 1;
                                }
                            }
                            Some(b'\n' | b'\t') => {
                                self.out.push(b' ');
                                self.i += 1;
                            }
                            Some(&b) => {
                                // The other quote character.
                                self.out.push(b);
                                self.i += 1;
                            }
                        }
                    }
                    let ve = self.i;
                    self.out.push(q);
                    self.i += 1;
                    if self.attrs.len() >= self.max_attrs {
                        return fail(
                            Condition::PolicyViolation,
                            format!("more than {} attributes", self.max_attrs),
                        );
                    }
                    let this = &self.s[an.0..an.1];
                    if self.attrs.iter().any(|a| &self.s[a.name.0..a.name.1] == this) {
                        return fail(Condition::NotWellFormed, "duplicate attribute");
                    }
                    self.attrs.push(Attr { name: an, value: (vs, ve) });
                }
            }
        }
    }

    fn text(&mut self) -> Res<()> {
        loop {
            self.run(&TEXT_SPECIAL);
            match self.s.get(self.i) {
                None | Some(b'<') => return Ok(()),
                Some(b'&') => {
                    let e = reference_end(self.s, self.i)?;
                    self.out.extend_from_slice(&self.s[self.i..e]);
                    self.i = e;
                }
                Some(b'\r') => {
                    self.out.extend_from_slice(b"&#10;");
                    self.i += 1;
                    if self.s.get(self.i) == Some(&b'\n') {
                        self.i += 1;
                    }
                }
                Some(b'\n') => {
                    self.out.extend_from_slice(b"&#10;");
                    self.i += 1;
                }
                Some(_) => {
                    if self.s[self.i..].starts_with(b"]]>") {
                        return fail(Condition::NotWellFormed, "']]>' in character data");
                    }
                    self.out.push(b']');
                    self.i += 1;
                }
            }
        }
    }

    /// At `<![CDATA[`. A line break cannot be escaped inside CDATA, so the
    /// section is closed around it: `]]>&#10;<![CDATA[` has the same characters.
    fn cdata(&mut self) -> Res<()> {
        self.i += 9;
        self.out.extend_from_slice(b"<![CDATA[");
        let Some(len) = memchr::memmem::find(&self.s[self.i..], b"]]>") else {
            return fail(Condition::NotWellFormed, "unterminated CDATA section");
        };
        let end = self.i + len;
        while let Some(off) = memchr::memchr2(b'\r', b'\n', &self.s[self.i..end]) {
            let p = self.i + off;
            self.out.extend_from_slice(&self.s[self.i..p]);
            self.out.extend_from_slice(b"]]>&#10;<![CDATA[");
            self.i = if self.s[p] == b'\r' && self.s.get(p + 1) == Some(&b'\n') { p + 2 } else { p + 1 };
        }
        self.out.extend_from_slice(&self.s[self.i..end]);
        self.out.extend_from_slice(b"]]>");
        self.i = end + 3;
        Ok(())
    }
}

/// Validate one complete top-level element and write its canonical record.
/// Returns the record and whether it is a `<stream:error>`.
fn canonicalise(s: &[u8], limits: Limits, header: Option<&Header>) -> Res<(Vec<u8>, bool)> {
    check_text_bytes(s)?;
    let mut c = Checker::new(s, limits.max_attrs);
    // Open elements (qualified-name ranges) and prefix declarations in
    // scope: (prefix range, value range, depth).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let mut decls: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    // Indexes into the header's prefixes that the record relies on.
    let mut needed: Vec<usize> = Vec::new();
    let mut insert_at = 0;
    let mut is_error = false;
    if s.first() != Some(&b'<') {
        return fail(Condition::NotWellFormed, "record does not start with '<'");
    }
    while c.i < s.len() {
        if stack.is_empty() && c.i > 0 {
            return fail(Condition::NotWellFormed, "content after the element");
        }
        if s[c.i] != b'<' {
            c.text()?;
            continue;
        }
        match s.get(c.i + 1) {
            Some(b'/') => {
                c.out.extend_from_slice(b"</");
                c.i += 2;
                let nm = c.name()?;
                c.ws();
                c.expect(b'>', "expected '>' in end tag")?;
                match stack.pop() {
                    Some(open) if s[open.0..open.1] == s[nm.0..nm.1] => {}
                    _ => return fail(Condition::NotWellFormed, "mismatched end tag"),
                }
                let d = stack.len();
                while decls.last().is_some_and(|x| x.4 > d) {
                    decls.pop();
                }
            }
            Some(b'!') if s[c.i..].starts_with(b"<![CDATA[") => c.cdata()?,
            Some(b'!') => {
                let what = if s[c.i..].starts_with(b"<!--") { "comment" } else { "DTD or markup declaration" };
                return fail(Condition::RestrictedXml, what);
            }
            Some(b'?') => return fail(Condition::RestrictedXml, "processing instruction"),
            _ => {
                let depth = stack.len() + 1;
                if depth > limits.max_depth {
                    return fail(Condition::PolicyViolation, format!("nesting deeper than {}", limits.max_depth));
                }
                let st = c.start_tag()?;
                let qname = &s[st.name.0..st.name.1];
                if let Some(h) = header {
                    if qname == h.qname.as_slice() {
                        return fail(Condition::BadFormat, "stream header inside the stream");
                    }
                }
                let mut default_ns = None;
                for a in &c.attrs {
                    let an = &s[a.name.0..a.name.1];
                    if an == b"xmlns" {
                        default_ns = Some(&s[a.value.0..a.value.1]);
                    } else if an.starts_with(b"xmlns:") {
                        decls.push((a.name.0 + 6, a.name.1, a.value.0, a.value.1, depth));
                    }
                }
                let (prefix, local) = split_qname(qname);
                let mut uri = None;
                if let Some(p) = prefix {
                    uri = Some(resolve(s, p, &decls, header, &mut needed)?);
                }
                for a in &c.attrs {
                    let an = &s[a.name.0..a.name.1];
                    if let (Some(p), _) = split_qname(an) {
                        if p != b"xmlns" {
                            resolve(s, p, &decls, header, &mut needed)?;
                        }
                    }
                }
                if depth == 1 {
                    insert_at = st.name_end_out;
                    let ns = match uri {
                        Some(u) => Some(u),
                        None => default_ns.map(|v| v.to_vec()),
                    };
                    is_error = local == b"error" && ns.as_deref() == Some(STREAMS_NS);
                }
                if st.self_closing {
                    while decls.last().is_some_and(|x| x.4 >= depth) {
                        decls.pop();
                    }
                } else {
                    stack.push(st.name);
                }
            }
        }
    }
    if !stack.is_empty() {
        return fail(Condition::NotWellFormed, "unclosed element");
    }
    let mut out = c.out;
    if let (Some(h), false) = (header, needed.is_empty()) {
        let mut ins = Vec::new();
        for &k in &needed {
            let (p, uri) = &h.prefixes[k];
            ins.extend_from_slice(b" xmlns:");
            ins.extend_from_slice(p);
            ins.extend_from_slice(b"='");
            ins.extend_from_slice(crate::xml::escape_attr(uri).as_bytes());
            ins.push(b'\'');
        }
        out.splice(insert_at..insert_at, ins);
    }
    out.push(b'\n');
    Ok((out, is_error))
}

/// The namespace of prefix `p` in scope; a prefix known only from the
/// stream header is noted in `needed` so its declaration can be added.
fn resolve(
    s: &[u8],
    p: &[u8],
    decls: &[(usize, usize, usize, usize, usize)],
    header: Option<&Header>,
    needed: &mut Vec<usize>,
) -> Res<Vec<u8>> {
    if let Some(d) = decls.iter().rev().find(|d| &s[d.0..d.1] == p) {
        return Ok(s[d.2..d.3].to_vec());
    }
    if p == b"xml" {
        return Ok(b"http://www.w3.org/XML/1998/namespace".to_vec());
    }
    if let Some(h) = header {
        if let Some(k) = h.prefixes.iter().position(|(hp, _)| hp.as_slice() == p) {
            if !needed.contains(&k) {
                needed.push(k);
            }
            return Ok(h.prefixes[k].1.as_bytes().to_vec());
        }
    }
    fail(Condition::InvalidNamespace, format!("undeclared prefix {}", String::from_utf8_lossy(p)))
}
