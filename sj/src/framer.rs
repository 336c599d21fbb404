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

pub struct Framer {
    _private: (),
}

impl Framer {
    pub fn new(mode: Mode, limits: Limits) -> Self {
        let _ = (mode, limits);
        todo!("framer")
    }

    /// Change limits (e.g. to `Limits::DEFAULT` after authentication).
    pub fn set_limits(&mut self, limits: Limits) {
        let _ = limits;
        todo!("framer")
    }

    /// Stream restart (after STARTTLS or SASL success): forget everything
    /// buffered and expect a new stream header.
    pub fn reset(&mut self) {
        todo!("framer")
    }

    /// Append bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        let _ = data;
        todo!("framer")
    }

    /// The next event, `Ok(None)` when more bytes are needed. Whitespace
    /// between top-level elements is skipped. After an `Err` every call
    /// returns the same error until `reset`.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        todo!("framer")
    }

    /// Bytes buffered but not yet returned as an event.
    pub fn buffered(&self) -> usize {
        todo!("framer")
    }
}

/// Validate and canonicalise one record given as one line (from a FIFO or a
/// pipe): exactly one top-level element, optional surrounding whitespace.
pub fn canonical_record(line: &[u8], limits: Limits) -> Result<Vec<u8>, FrameError> {
    let _ = (line, limits);
    todo!("framer")
}
