//! The validating pass: one hand-written pass over an element that checks
//! it (DESIGN §8: restricted XML, strict UTF-8 and `Char`s, names,
//! attributes, namespaces, limits) and canonicalises it into a record
//! (DESIGN §4) together. Its state lives in a `Scratch` the framer keeps,
//! so that a pass can stop at a mark and go on from there.

use super::header::{Header, STREAMS_NS};
use super::line::{over_line, CDATA_BREAK};
use super::names::{check_ns_decl, ns_name, qname, resolve, Decl};
use super::{fail, Condition, Event, Limits, Res};
use crate::xml::{escape_into, is_xml_char, name_end, NAME_CHAR_ASCII};
use std::borrow::Cow;

/// Strict UTF-8 and XML `Char`s only.
pub(super) fn check_text_bytes(s: &[u8]) -> Res<()> {
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

/// End of the entity or character reference at `s[i] == b'&'`.
pub(super) fn reference_end(s: &[u8], i: usize) -> Res<usize> {
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
        if !char::from_u32(v).is_some_and(is_xml_char) {
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
pub(super) struct Attr {
    pub(super) name: (usize, usize),
    /// Index of the first `:` of the name, if any.
    pub(super) colon: Option<usize>,
    pub(super) value: (usize, usize),
}

pub(super) struct StartTag {
    pub(super) name: (usize, usize),
    pub(super) colon: Option<usize>,
    pub(super) self_closing: bool,
}

/// The validating pass's state for one element. The framer keeps one, so
/// a record costs one allocation (its own bytes), and so an element split
/// over reads can be checked once: from its start up to the last complete
/// markup token on the read that began it, from there on when it is whole.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    attrs: Vec<Attr>,
    /// Open elements: qualified-name ranges.
    stack: Vec<(usize, usize)>,
    decls: Vec<Decl>,
    /// Indexes into the header's prefixes that the record relies on.
    needed: Vec<usize>,
    out: Vec<u8>,
    pub(super) mark: Mark,
}

/// How far the validating pass got without error: up to `i`, the end of a
/// markup token with the element still open. Past a mark the pass only
/// appends to the vectors (an end tag pops only once it has been checked,
/// and a mark follows), so truncating them restores the state at the mark.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Mark {
    pub(super) i: usize,
    copied: usize,
    out: usize,
    pub(super) stack: usize,
    decls: usize,
    needed: usize,
    insert_at: usize,
    is_error: bool,
}

impl Scratch {
    /// Before a new element.
    pub(super) fn begin(&mut self) {
        self.stack.clear();
        self.decls.clear();
        self.needed.clear();
        self.out.clear();
        self.mark = Mark::default();
    }

    /// Back to the state at the mark, after a pass that failed past it.
    pub(super) fn rewind(&mut self) {
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
///
/// `repr(C)` keeps `i` and `copied` apart: side by side, the mark was
/// saved with one 16-byte load of both just after `i` was stored alone,
/// a store-forwarding stall that cost the framer 4% of its time.
#[repr(C)]
pub(super) struct Checker<'a> {
    s: &'a [u8],
    i: usize,
    out: &'a mut Vec<u8>,
    copied: usize,
    pub(super) attrs: &'a mut Vec<Attr>,
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
    pub(super) fn new(
        s: &'a [u8],
        max_attrs: usize,
        attrs: &'a mut Vec<Attr>,
        out: &'a mut Vec<u8>,
    ) -> Self {
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
    pub(super) fn start_tag(&mut self) -> Res<StartTag> {
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
pub(super) struct Checked {
    /// Where the element ends in the input.
    pub(super) end: usize,
    /// Its canonical record, ending in LF.
    out: Vec<u8>,
    /// Whether it is a `<stream:error>`.
    is_error: bool,
}

impl Checked {
    /// Within the line-size rule. Judged after the pass, as a pass that
    /// fails after the end of its element cannot be resumed.
    pub(super) fn fits(&self, limits: Limits) -> bool {
        self.out.len() <= limits.max_line().saturating_add(1)
    }

    pub(super) fn into_event(self) -> Event {
        if self.is_error {
            Event::StreamError(self.out)
        } else {
            Event::Record(self.out)
        }
    }
}

/// Validate and canonicalise a complete record `s` (the boundary scanner
/// found its end): exactly one element. With `resume`, the pass goes on
/// from the state in `sc` (see `Framer::finish_record`).
pub(super) fn canonicalise(
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
///
/// The loop keeps its state in locals, and the tokens go to functions
/// that take what they need, inlined: a struct with methods for that
/// state cost 3% of the framer's time (its fields lived in memory).
pub(super) fn check_element(
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
    let (mut insert_at, mut is_error) = (mark.insert_at, mark.is_error);
    loop {
        if c.i >= s.len() {
            return fail(Condition::NotWellFormed, "unclosed element");
        }
        if s[c.i] != b'<' {
            // No mark inside text: a line break, reference or `]]>` may
            // be cut at the end of what is buffered.
            c.text()?;
            continue;
        }
        match s.get(c.i + 1) {
            Some(b'/') => end_tag(&mut c, stack, decls)?,
            Some(b'!') if s[c.i..].starts_with(b"<![CDATA[") => c.cdata()?,
            Some(b'!' | b'?') => return refused(&s[c.i..]),
            _ => {
                let depth = stack.len() + 1;
                if depth > limits.max_depth {
                    return too_deep(limits.max_depth);
                }
                let st = c.start_tag()?;
                let ns = Scope::new(decls, header, needed).start_tag(s, c.attrs, &st, depth)?;
                if depth == 1 {
                    (insert_at, is_error) = top_level(s, &st, ns);
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
    let ins = header.map_or_else(Vec::new, |h| header_decls(h, needed));
    let mut out = c.finish(end, ins.len() + 1);
    if !ins.is_empty() {
        out.splice(insert_at..insert_at, ins);
    }
    out.push(b'\n');
    Ok(Checked { end, out, is_error })
}

/// An element nested deeper than the limits allow.
pub(super) fn too_deep<T>(max_depth: usize) -> Res<T> {
    fail(
        Condition::PolicyViolation,
        format!("nesting deeper than {max_depth}"),
    )
}

/// Of the top-level start tag `st` in namespace `ns`: where declarations
/// copied from the header go (nothing before the end of the top-level
/// name is ever rewritten, so input and output offsets agree there), and
/// whether the element is a `<stream:error>`.
#[inline(always)]
fn top_level(s: &[u8], st: &StartTag, ns: Option<&[u8]>) -> (usize, bool) {
    let local = &s[st.colon.map_or(st.name.0, |k| k + 1)..st.name.1];
    (st.name.1, local == b"error" && ns == Some(STREAMS_NS))
}

/// At `<!` or `<?` that is not CDATA: restricted XML (RFC 6120 §11.1).
fn refused<T>(at: &[u8]) -> Res<T> {
    let what = if at.starts_with(b"<?") {
        "processing instruction"
    } else if at.starts_with(b"<!--") {
        "comment"
    } else {
        "DTD or markup declaration"
    };
    fail(Condition::RestrictedXml, what)
}

/// At `</`: the end tag of the open element.
#[inline(always)]
fn end_tag(c: &mut Checker<'_>, stack: &mut Vec<(usize, usize)>, decls: &mut Vec<Decl>) -> Res<()> {
    let s = c.s;
    c.i += 2;
    let nm = match stack.last() {
        // The usual case: the name of the open element, already checked,
        // and nothing more of a name after it. Bytes from 0x80 may
        // continue a name: slow path.
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
    Ok(())
}

/// The namespaces of one record: the declarations in scope, and the
/// header's prefixes the record relies on.
struct Scope<'a, 'h> {
    decls: &'a mut Vec<Decl>,
    header: Option<&'h Header>,
    needed: &'a mut Vec<usize>,
}

impl<'a, 'h> Scope<'a, 'h> {
    #[inline(always)]
    fn new(
        decls: &'a mut Vec<Decl>,
        header: Option<&'h Header>,
        needed: &'a mut Vec<usize>,
    ) -> Self {
        Scope {
            decls,
            header,
            needed,
        }
    }

    /// The namespace checks of a start tag `st` at `depth`, whose
    /// attributes are `attrs`; its declarations are now in scope. The
    /// element's namespace, if it has one.
    #[inline(always)]
    fn start_tag<'s>(
        &mut self,
        s: &'s [u8],
        attrs: &[Attr],
        st: &StartTag,
        depth: usize,
    ) -> Res<Option<&'s [u8]>>
    where
        'h: 's,
    {
        let qname = &s[st.name.0..st.name.1];
        if self.header.is_some_and(|h| qname == h.qname.as_slice()) {
            return fail(Condition::BadFormat, "stream header inside the stream");
        }
        let (default_ns, prefixed_attrs) = self.declare(s, attrs, depth)?;
        let (local, uri) = match st.colon {
            Some(k) => (
                &s[k + 1..st.name.1],
                Some(resolve(
                    s,
                    &s[st.name.0..k],
                    self.decls,
                    self.header,
                    self.needed,
                )?),
            ),
            None => (qname, None),
        };
        if local == b"stream" && self.is_streams_ns(s, uri) {
            return fail(Condition::BadFormat, "stream header inside the stream");
        }
        if prefixed_attrs > 0 {
            self.attribute_namespaces(s, attrs, prefixed_attrs > 1)?;
        }
        Ok(uri.or(default_ns))
    }

    /// Put the namespace declarations among `attrs` in scope at `depth`:
    /// the default namespace declared, if one is, and how many other
    /// attributes have a prefix.
    #[inline(always)]
    fn declare<'s>(
        &mut self,
        s: &'s [u8],
        attrs: &[Attr],
        depth: usize,
    ) -> Res<(Option<&'s [u8]>, usize)> {
        let mut default_ns = None;
        let mut prefixed_attrs = 0;
        for a in attrs {
            match a.colon {
                None if a.name.1 - a.name.0 == 5 && &s[a.name.0..a.name.1] == b"xmlns" => {
                    check_ns_decl(None, &s[a.value.0..a.value.1])?;
                    default_ns = Some(&s[a.value.0..a.value.1]);
                    // An empty prefix: the default namespace, which
                    // resolve (never asked for "") does not see.
                    self.decls.push(Decl {
                        prefix: (a.name.0, a.name.0),
                        value: a.value,
                        depth,
                    });
                }
                None => {}
                Some(k) if &s[a.name.0..k] == b"xmlns" => {
                    check_ns_decl(Some(&s[k + 1..a.name.1]), &s[a.value.0..a.value.1])?;
                    self.decls.push(Decl {
                        prefix: (k + 1, a.name.1),
                        value: a.value,
                        depth,
                    });
                }
                Some(_) => prefixed_attrs += 1,
            }
        }
        Ok((default_ns, prefixed_attrs))
    }

    /// Whether an element named `stream` is in the streams namespace: by
    /// its prefix's `uri`, or else the default namespace in scope.
    fn is_streams_ns(&self, s: &[u8], uri: Option<&[u8]>) -> bool {
        let ns = uri.or_else(|| {
            self.decls
                .iter()
                .rev()
                .find(|d| d.prefix.0 == d.prefix.1)
                .map(|d| &s[d.value.0..d.value.1])
        });
        ns.is_some_and(|n| *ns_name(n) == *STREAMS_NS)
    }

    /// Every attribute prefix is declared; with `several` prefixed
    /// attributes, no two have one expanded name (`a:k` and `b:k` with a
    /// and b bound to one namespace, Namespaces in XML §6.3).
    fn attribute_namespaces(&mut self, s: &[u8], attrs: &[Attr], several: bool) -> Res<()> {
        let mut expanded: Vec<(Cow<'_, [u8]>, &[u8])> = Vec::new();
        for a in attrs {
            let Some(k) = a.colon else { continue };
            let p = &s[a.name.0..k];
            if p == b"xmlns" {
                continue;
            }
            let uri = resolve(s, p, self.decls, self.header, self.needed)?;
            if several {
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
        Ok(())
    }
}

/// The declarations of the header's prefixes a record relies on, as
/// attributes for its start tag.
fn header_decls(h: &Header, needed: &[usize]) -> Vec<u8> {
    let mut ins = Vec::new();
    for &k in needed {
        let (p, uri) = &h.prefixes[k];
        ins.extend_from_slice(b" xmlns:");
        ins.extend_from_slice(p);
        ins.extend_from_slice(b"='");
        escape_into(&mut ins, uri, true);
        ins.push(b'\'');
    }
    ins
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
