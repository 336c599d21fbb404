//! Skipping an element that broke a limit (`Limits::max_skip`): checked
//! on the way, one character at a time, and never buffered.

use super::checker::reference_end;
use super::header::Header;
use super::{fail, Condition, Dropped, FrameError, Res};
use crate::xml::{is_name_char, is_name_start, is_ws, is_xml_char, unescape};
use std::borrow::Cow;

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
pub(super) struct Skip {
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
    c.is_ascii() && is_ws(c as u8)
}

impl Skip {
    pub(super) fn new(reason: FrameError, max: usize, header: Option<&Header>) -> Skip {
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
    pub(super) fn feed(&mut self, data: &[u8]) -> Res<Option<usize>> {
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
            if !is_xml_char(c) {
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

    /// One character; true when it ended the element. One method per
    /// state below.
    fn char(&mut self, c: char) -> Res<bool> {
        match self.lx {
            SkLex::Text => self.text(c),
            SkLex::Ref { quote } => self.in_reference(c, quote),
            SkLex::Lt => self.lt(c),
            SkLex::Bang(k) => self.bang(c, k),
            SkLex::Cdata => self.cdata(c),
            SkLex::StartName => self.start_name(c),
            SkLex::InTag { ws } => self.in_tag(c, ws),
            SkLex::AttrName => self.attr_name(c),
            SkLex::AttrEq => self.attr_eq(c),
            SkLex::AttrQuote => self.attr_quote(c),
            SkLex::AttrValue(q) => self.attr_value(c, q),
            SkLex::Slash => match c {
                '>' => Ok(self.open(true)),
                _ => fail(Condition::NotWellFormed, "expected '>' after '/'"),
            },
            SkLex::EndName => self.end_name(c),
            SkLex::EndWs => match c {
                _ if is_xml_ws(c) => Ok(false),
                '>' => self.close(),
                _ => fail(Condition::NotWellFormed, "expected '>' in end tag"),
            },
        }
    }

    fn text(&mut self, c: char) -> Res<bool> {
        match c {
            '<' => self.lx = SkLex::Lt,
            '&' => self.begin_reference(0),
            ']' => self.brackets = (self.brackets + 1).min(2),
            '>' if self.brackets == 2 => {
                return fail(Condition::NotWellFormed, "']]>' in character data")
            }
            _ => self.brackets = 0,
        }
        Ok(false)
    }

    /// At `&` in text (`quote` 0) or in an attribute value.
    fn begin_reference(&mut self, quote: u8) {
        self.refbuf.clear();
        self.refbuf.push(b'&');
        self.lx = SkLex::Ref { quote };
    }

    fn in_reference(&mut self, c: char, quote: u8) -> Res<bool> {
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
        Ok(false)
    }

    fn lt(&mut self, c: char) -> Res<bool> {
        match c {
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
        }
        Ok(false)
    }

    /// After `<!` and `k` characters of `[CDATA[`.
    fn bang(&mut self, c: char, k: u8) -> Res<bool> {
        const CDATA: &[u8] = b"[CDATA[";
        if c as u32 != CDATA[k as usize] as u32 {
            let what = if k == 0 && c == '-' {
                "comment"
            } else {
                "DTD or markup declaration"
            };
            return fail(Condition::RestrictedXml, what);
        }
        self.lx = if k as usize + 1 == CDATA.len() {
            self.brackets = 0;
            SkLex::Cdata
        } else {
            SkLex::Bang(k + 1)
        };
        Ok(false)
    }

    fn cdata(&mut self, c: char) -> Res<bool> {
        match c {
            ']' => self.brackets = (self.brackets + 1).min(2),
            '>' if self.brackets == 2 => {
                self.brackets = 0;
                self.lx = SkLex::Text;
            }
            _ => self.brackets = 0,
        }
        Ok(false)
    }

    fn start_name(&mut self, c: char) -> Res<bool> {
        if self.name_more(c)? {
            return Ok(false);
        }
        self.tag_named()?;
        self.lx = SkLex::InTag { ws: false };
        self.char(c)
    }

    /// Between attributes; `ws`: after whitespace.
    fn in_tag(&mut self, c: char, ws: bool) -> Res<bool> {
        match c {
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
        }
        Ok(false)
    }

    fn attr_name(&mut self, c: char) -> Res<bool> {
        if self.name_more(c)? {
            return Ok(false);
        }
        self.attr_named()?;
        self.lx = SkLex::AttrEq;
        self.char(c)
    }

    fn attr_eq(&mut self, c: char) -> Res<bool> {
        match c {
            _ if is_xml_ws(c) => {}
            '=' => self.lx = SkLex::AttrQuote,
            _ => {
                return fail(
                    Condition::NotWellFormed,
                    "expected '=' after attribute name",
                )
            }
        }
        Ok(false)
    }

    fn attr_quote(&mut self, c: char) -> Res<bool> {
        match c {
            _ if is_xml_ws(c) => {}
            '\'' | '"' => self.lx = SkLex::AttrValue(c as u8),
            _ => return fail(Condition::NotWellFormed, "unquoted attribute value"),
        }
        Ok(false)
    }

    /// Inside a value quoted with `q`.
    fn attr_value(&mut self, c: char, q: u8) -> Res<bool> {
        match c {
            _ if c as u32 == q as u32 => {
                self.capture = None;
                self.lx = SkLex::InTag { ws: false };
            }
            '<' => return fail(Condition::NotWellFormed, "'<' in attribute value"),
            '&' => {
                self.keep(c);
                self.begin_reference(q);
            }
            _ => self.keep(c),
        }
        Ok(false)
    }

    fn end_name(&mut self, c: char) -> Res<bool> {
        if self.nlen == 0 {
            self.name_begin(c)?;
        } else if !self.name_more(c)? {
            self.lx = SkLex::EndWs;
            return self.char(c);
        }
        Ok(false)
    }

    pub(super) fn into_dropped(self) -> Dropped {
        let text = |v: &Option<Vec<u8>>| {
            v.as_deref()
                .and_then(|raw| unescape(raw, true))
                .map(Cow::into_owned)
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
