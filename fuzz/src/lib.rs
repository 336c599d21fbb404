//! Shared pieces of the sj fuzz targets (run them with `make fuzz`).
//!
//! What is here: how a fuzz input chooses the framer's mode, limits and
//! chunking (`Case`), a driver that feeds a framer the way the programs do
//! (`run_framer`), and an oracle for the differential target (`reference`):
//! an independent reading of the same bytes with quick-xml for structure
//! and namespaces, plus a few lines of XML 1.0 for end-of-line handling,
//! attribute-value normalisation and references, so that the oracle does
//! not share code with the framer it judges.
//!
//! What is not here: the properties themselves; each target states its own.

use sj::framer::{Event, FrameError, Framer, Limits, Mode};

/// Limits small enough that fuzz inputs reach them.
pub const SMALL: Limits = Limits::new(700, 3, 4);
pub const TINY: Limits = Limits::new(64, 2, 2);

/// One framer fuzz input: a three-byte prefix chooses how to run, the rest
/// is what the peer sends.
///
/// Byte 0: bit 0 mode (0 stream, 1 fragments); bits 1-2 limits (default,
/// pre-auth, `SMALL`, `TINY`); bits 3-4 largest chunk (1, 8, 64, 1024
/// bytes); bit 5 drain events only after every third chunk. Bytes 1-2 seed
/// the chunk lengths.
#[derive(Debug, Clone)]
pub struct Case<'a> {
    pub mode: Mode,
    pub limits: Limits,
    pub max_chunk: usize,
    pub drain_every: usize,
    pub seed: u16,
    pub payload: &'a [u8],
}

impl<'a> Case<'a> {
    pub fn decode(data: &'a [u8]) -> Option<Case<'a>> {
        let (&flags, rest) = data.split_first()?;
        let (seed, payload) = match rest {
            [a, b, payload @ ..] => (u16::from_le_bytes([*a, *b]), payload),
            _ => return None,
        };
        Some(Case {
            mode: if flags & 1 == 0 {
                Mode::Stream
            } else {
                Mode::Fragments
            },
            limits: match (flags >> 1) & 3 {
                0 => Limits::DEFAULT,
                1 => Limits::PRE_AUTH,
                2 => SMALL,
                _ => TINY,
            },
            max_chunk: [1, 8, 64, 1024][usize::from((flags >> 3) & 3)],
            drain_every: if flags & 0x20 == 0 { 1 } else { 3 },
            seed,
            payload,
        })
    }

    /// The payload cut into chunks whose lengths come from the seed.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut x = u64::from(self.seed) | 1 << 32;
        let mut out = Vec::new();
        let mut rest = self.payload;
        while !rest.is_empty() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 1 + (x >> 33) as usize % self.max_chunk;
            let (a, b) = rest.split_at(len.min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}

/// Everything a framer said about some input: its events, then the error
/// that ended it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub error: Option<FrameError>,
}

impl Outcome {
    /// The record lines (stream errors included), in order.
    pub fn records(&self) -> Vec<&[u8]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Record(r) | Event::StreamError(r) => Some(r.as_slice()),
                _ => None,
            })
            .collect()
    }
}

/// Feed `chunks` the way the programs do (read, then take events until the
/// framer needs more), draining only after every `drain_every`-th chunk
/// and after the last one. Asserts that an error sticks.
pub fn run_framer(f: &mut Framer, chunks: &[&[u8]], drain_every: usize) -> Outcome {
    let mut events = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        f.feed(c);
        if (i + 1) % drain_every != 0 && i + 1 != chunks.len() {
            continue;
        }
        loop {
            match f.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(f.next_event(), Err(e.clone()), "an error must stick");
                    return Outcome {
                        events,
                        error: Some(e),
                    };
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
    }
}

/// A fresh framer for `mode` and `limits`, run over `chunks`.
pub fn frame(mode: Mode, limits: Limits, chunks: &[&[u8]], drain_every: usize) -> Outcome {
    run_framer(&mut Framer::new(mode, limits), chunks, drain_every)
}

pub mod reference {
    //! The oracle: what a strict, namespace-aware XML 1.0 reader makes of
    //! the same bytes, as an infoset (namespace URI and local name of each
    //! element, its non-declaration attributes by expanded name, and its
    //! character data merged across text, references and CDATA).

    use quick_xml::events::{BytesStart, Event};
    use quick_xml::name::ResolveResult;
    use quick_xml::reader::NsReader;
    use std::collections::BTreeMap;

    /// The namespace a record's unprefixed elements are in (DESIGN §4).
    pub const IMPLIED: &str = "jabber:client";

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Node {
        Elem(Elem),
        Text(String),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Elem {
        pub ns: String,
        pub local: String,
        /// (namespace URI or "", local name) -> normalised value.
        pub attrs: BTreeMap<(String, String), String>,
        pub children: Vec<Node>,
    }

    impl Elem {
        fn push_text(&mut self, t: &str) {
            if t.is_empty() {
                return;
            }
            if let Some(Node::Text(prev)) = self.children.last_mut() {
                prev.push_str(t);
            } else {
                self.children.push(Node::Text(t.to_owned()));
            }
        }
    }

    /// What the reader made of a whole input.
    #[derive(Debug, Default)]
    pub struct Parsed {
        /// Stream mode: the header's attributes, qualified name and
        /// normalised value, in document order.
        pub header: Option<Vec<(String, String)>>,
        /// Stream mode: the header's `xmlns`, if it has one.
        pub header_default_ns: Option<String>,
        /// The top-level elements (children of the stream element in
        /// stream mode), complete ones only.
        pub elements: Vec<Elem>,
        /// Stream mode: the stream element was closed.
        pub ended: bool,
        /// Why the reader stopped early, if it did: nothing after this
        /// point is well-formed XMPP.
        pub stop: Option<String>,
    }

    /// XML end-of-line handling (XML 1.0 §2.11): CRLF and a lone CR become LF.
    pub fn eol(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    fn is_xml_char(c: char) -> bool {
        matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
    }

    /// The character a reference `&name;` stands for (`name` without `&`
    /// and `;`): the five predefined entities and character references
    /// to a `Char` only, as RFC 6120 §11.1 allows.
    pub fn reference(name: &str) -> Result<char, String> {
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let num = name
                    .strip_prefix('#')
                    .ok_or_else(|| format!("entity reference &{name};"))?;
                let v = match num.strip_prefix('x') {
                    Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        u32::from_str_radix(h, 16).ok()
                    }
                    None if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) => {
                        num.parse().ok()
                    }
                    _ => None,
                };
                v.and_then(char::from_u32)
                    .filter(|&c| is_xml_char(c))
                    .ok_or_else(|| format!("bad character reference &{name};"))?
            }
        };
        Ok(c)
    }

    /// Attribute-value normalisation (XML 1.0 §3.3.3, CDATA type): after
    /// end-of-line handling each literal LF or TAB is a space; references
    /// are then resolved (a `&#10;` stays a line feed).
    pub fn attr_value(raw: &str) -> Result<String, String> {
        let s = eol(raw).replace(['\n', '\t'], " ");
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let end = after.find(';').ok_or("'&' without ';' in a value")?;
            out.push(reference(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        if raw.contains('<') {
            return Err("'<' in a value".into());
        }
        if out.chars().any(|c| !is_xml_char(c)) {
            return Err("non-Char in a value".into());
        }
        Ok(out)
    }

    fn text_chars(s: &str) -> Result<(), String> {
        match s.chars().find(|&c| !is_xml_char(c)) {
            Some(c) => Err(format!("non-Char U+{:04X} in text", c as u32)),
            None => Ok(()),
        }
    }

    fn ns_of(res: ResolveResult<'_>, default: &str) -> Result<String, String> {
        match res {
            ResolveResult::Bound(ns) => attr_value(ns.0),
            ResolveResult::Unbound => Ok(default.to_owned()),
            ResolveResult::Unknown(p) => Err(format!("undeclared prefix {p}")),
        }
    }

    fn start(
        r: &NsReader<&[u8]>,
        e: &BytesStart<'_>,
        ns: Result<String, String>,
    ) -> Result<Elem, String> {
        let ns = ns?;
        let local = e.local_name().into_inner().to_owned();
        let mut attrs = BTreeMap::new();
        for a in e.attributes().with_checks(true) {
            let a = a.map_err(|e| format!("attribute: {e}"))?;
            let key = a.key;
            let value = attr_value(&a.value)?;
            if key.as_namespace_binding().is_some() {
                continue;
            }
            let (res, local) = r.resolver().resolve_attribute(key);
            let ans = ns_of(res, "")?;
            attrs.insert((ans, local.into_inner().to_owned()), value);
        }
        Ok(Elem {
            ns,
            local,
            attrs,
            children: Vec::new(),
        })
    }

    /// The default namespace an element declares (`xmlns`), normalised.
    fn default_decl(e: &BytesStart<'_>) -> Option<String> {
        e.attributes()
            .with_checks(false)
            .flatten()
            .find(|a| a.key.as_ref() == "xmlns")
            .and_then(|a| attr_value(&a.value).ok())
    }

    fn is_ws(s: &str) -> bool {
        s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    }

    /// Read `input` as an XMPP stream (`stream`: header first, records
    /// are its children) or as a sequence of bare records.
    pub fn parse(input: &[u8], stream: bool) -> Parsed {
        let mut p = Parsed::default();
        if let Err(e) = walk(input, stream, &mut p) {
            p.stop = Some(e);
        }
        p
    }

    fn walk(input: &[u8], stream: bool, p: &mut Parsed) -> Result<(), String> {
        let mut r = NsReader::from_reader(input);
        {
            let c = r.config_mut();
            c.check_end_names = true;
            c.check_comments = true;
            c.expand_empty_elements = false;
            c.trim_text(false);
        }
        let mut stack: Vec<Elem> = Vec::new();
        // The `xmlns` each open element declares, if any.
        let mut defaults: Vec<Option<String>> = Vec::new();
        // Only whitespace yet: the XML declaration is still allowed (the
        // framer skips whitespace before it, on purpose).
        let mut at_start = true;
        loop {
            let (res, ev) = r
                .read_resolved_event()
                .map_err(|e| format!("quick-xml: {e}"))?;
            // The element's namespace, resolved while its bindings are in
            // scope. quick-xml says Unbound both where no default namespace
            // was declared (then jabber:client is implied) and under
            // `xmlns=''` (no namespace), so the declarations are followed here.
            let own_default = match &ev {
                Event::Start(e) | Event::Empty(e) => default_decl(e),
                _ => None,
            };
            let default = own_default
                .clone()
                .or_else(|| defaults.iter().rev().find_map(|d| d.clone()));
            let ens = ns_of(res, default.as_deref().unwrap_or(IMPLIED));
            let was_start = at_start;
            at_start &= matches!(&ev, Event::Text(t) if is_ws(t));
            let header_open = stream && p.header.is_some() && !p.ended;
            if p.ended && !matches!(&ev, Event::Eof | Event::Text(_)) {
                return Err("data after the end of the stream".into());
            }
            match ev {
                Event::Eof => return Ok(()),
                Event::Decl(_) if stream && was_start => {}
                Event::Decl(_) | Event::PI(_) => return Err("processing instruction".into()),
                Event::Comment(_) => return Err("comment".into()),
                Event::DocType(_) => return Err("DTD".into()),
                Event::Start(e) if stream && p.header.is_none() => {
                    let mut attrs = Vec::new();
                    for a in e.attributes().with_checks(true) {
                        let a = a.map_err(|e| format!("header attribute: {e}"))?;
                        let k = a.key.as_ref().to_owned();
                        let v = attr_value(&a.value)?;
                        if k == "xmlns" {
                            p.header_default_ns = Some(v.clone());
                        }
                        attrs.push((k, v));
                    }
                    p.header = Some(attrs);
                }
                Event::Empty(_) if stream && p.header.is_none() => {
                    return Err("empty stream element".into())
                }
                Event::Start(e) => {
                    stack.push(start(&r, &e, ens)?);
                    defaults.push(own_default);
                }
                Event::Empty(e) => {
                    let el = start(&r, &e, ens)?;
                    close(el, &mut stack, p);
                }
                Event::End(_) => match stack.pop() {
                    Some(el) => {
                        defaults.pop();
                        close(el, &mut stack, p)
                    }
                    None if header_open => p.ended = true,
                    None => return Err("end tag without a start tag".into()),
                },
                Event::Text(t) => {
                    let s = eol(&t);
                    text_chars(&s)?;
                    if s.contains("]]>") {
                        return Err("']]>' in text".into());
                    }
                    match stack.last_mut() {
                        Some(el) => el.push_text(&s),
                        None if is_ws(&s) => {}
                        None => return Err("text outside an element".into()),
                    }
                }
                Event::CData(c) => {
                    let s = eol(&c);
                    text_chars(&s)?;
                    stack
                        .last_mut()
                        .ok_or("CDATA outside an element")?
                        .push_text(&s);
                }
                Event::GeneralRef(g) => {
                    let c = reference(&g)?;
                    stack
                        .last_mut()
                        .ok_or("reference outside an element")?
                        .push_text(c.encode_utf8(&mut [0; 4]));
                }
            }
        }
    }

    fn close(el: Elem, stack: &mut [Elem], p: &mut Parsed) {
        match stack.last_mut() {
            Some(parent) => parent.children.push(Node::Elem(el)),
            None => p.elements.push(el),
        }
    }

    /// Check that `rec` is one record (DESIGN §4): one complete element on
    /// one line, then LF, nothing else, well-formed and namespace-well-formed
    /// with `jabber:client` implied. Returns its infoset.
    pub fn record(rec: &[u8]) -> Result<Elem, String> {
        let body = rec.strip_suffix(b"\n").ok_or("no LF at the end")?;
        if body.contains(&b'\n') || body.contains(&b'\r') {
            return Err("literal LF or CR inside".into());
        }
        if body.first() != Some(&b'<') || body.last() != Some(&b'>') {
            return Err("text around the element".into());
        }
        let mut p = parse(body, false);
        if let Some(e) = p.stop {
            return Err(e);
        }
        match p.elements.len() {
            1 => Ok(p.elements.remove(0)),
            n => Err(format!("{n} elements")),
        }
    }
}
