//! A read-only view of a record, and edits of its top-level start tag.
//!
//! Records have already been validated by the framer, so this module trusts
//! their syntax but never panics on a record that is not well-formed: it
//! returns `None`/`Err`. Edits touch only the top-level start tag and leave
//! every other byte as it was.

/// A parsed element tree. `span` is the byte range of the element in the
/// record it was parsed from, so callers can forward a subtree verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Qualified name as written, e.g. `message` or `stream:error`.
    pub name: String,
    /// Resolved namespace URI (`jabber:client` by default).
    pub ns: String,
    /// Attributes as written (qualified names), values unescaped; `xmlns`
    /// declarations included.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
    pub span: std::ops::Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Unescaped character data.
    Text(String),
}

impl Element {
    /// Parse one record (with or without its trailing LF).
    pub fn parse(record: &[u8]) -> Option<Element> {
        parse_tree(record)
    }
    /// Local name (after any prefix).
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }
    /// First child element with this local name and namespace.
    pub fn child(&self, local: &str, ns: &str) -> Option<&Element> {
        self.elements()
            .find(|e| e.local_name() == local && e.ns == ns)
    }
    /// Concatenated text of the direct text children.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }
    /// Serialise (used to build new stanzas; not for forwarding received ones).
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            out.push_str(&escape_attr(v));
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for n in &self.children {
            match n {
                Node::Element(e) => e.write(out),
                Node::Text(t) => out.push_str(&escape_text(t)),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

/// The top-level element's qualified name, e.g. `message`.
pub fn name(record: &[u8]) -> Option<&str> {
    let (name, _) = top_tag(record)?;
    std::str::from_utf8(&record[name]).ok()
}

/// The unescaped value of a top-level attribute.
pub fn attr(record: &[u8], name: &str) -> Option<String> {
    let (_, mut scan) = top_tag(record)?;
    let a = scan.find(|a| &record[a.name.clone()] == name.as_bytes())?;
    unescape_bytes(&record[a.value], true)
}

/// Set (replace in place, or append) a top-level attribute; the value is
/// escaped and single-quoted. Returns the new record.
pub fn set_attr(record: &[u8], name: &str, value: &str) -> Vec<u8> {
    let Some((_, mut scan)) = top_tag(record) else {
        return record.to_vec();
    };
    let value = escape_attr(value);
    let found = scan.by_ref().find(|a| &record[a.name.clone()] == name.as_bytes());
    let mut out = Vec::with_capacity(record.len() + name.len() + value.len() + 4);
    match (found, scan.close) {
        (Some(a), _) => {
            // Replace the quotes too, so the value may contain either quote.
            out.extend_from_slice(&record[..a.value.start - 1]);
            out.push(b'\'');
            out.extend_from_slice(value.as_bytes());
            out.push(b'\'');
            out.extend_from_slice(&record[a.value.end + 1..]);
        }
        (None, Some(close)) => {
            out.extend_from_slice(&record[..close]);
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            out.extend_from_slice(value.as_bytes());
            out.push(b'\'');
            out.extend_from_slice(&record[close..]);
        }
        (None, None) => out.extend_from_slice(record),
    }
    out
}

/// Remove a top-level attribute if present. Returns the new record.
pub fn remove_attr(record: &[u8], name: &str) -> Vec<u8> {
    let Some((_, mut scan)) = top_tag(record) else {
        return record.to_vec();
    };
    match scan.find(|a| &record[a.name.clone()] == name.as_bytes()) {
        Some(a) => {
            let mut out = Vec::with_capacity(record.len());
            out.extend_from_slice(&record[..a.ws_start]);
            out.extend_from_slice(&record[a.value.end + 1..]);
            out
        }
        None => record.to_vec(),
    }
}

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// One attribute of a start tag: the whitespace before it starts at
/// `ws_start`; `value` is inside the quotes.
struct AttrPos {
    ws_start: usize,
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// Walks the attributes of a start tag without allocating. After the last
/// one, `close` is the index of `>` or of `/` in `/>`, or `None` if the tag
/// is malformed.
struct TagScan<'a> {
    s: &'a [u8],
    i: usize,
    close: Option<usize>,
    done: bool,
}

impl Iterator for TagScan<'_> {
    type Item = AttrPos;
    fn next(&mut self) -> Option<AttrPos> {
        if self.done {
            return None;
        }
        self.done = true;
        let s = self.s;
        let ws_start = self.i;
        let mut i = self.i;
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        match s.get(i)? {
            b'>' => {
                self.close = Some(i);
                return None;
            }
            b'/' => {
                if s.get(i + 1) == Some(&b'>') {
                    self.close = Some(i);
                }
                return None;
            }
            _ if i == ws_start => return None,
            _ => {}
        }
        let ns = i;
        while i < s.len() && !is_ws(s[i]) && !matches!(s[i], b'=' | b'>' | b'/' | b'\'' | b'"') {
            i += 1;
        }
        let name = ns..i;
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        if name.is_empty() || s.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        let q = *s.get(i).filter(|&&q| q == b'\'' || q == b'"')?;
        let vs = i + 1;
        let ve = vs + memchr::memchr(q, s.get(vs..)?)?;
        self.i = ve + 1;
        self.done = false;
        Some(AttrPos { ws_start, name, value: vs..ve })
    }
}

/// The top-level start tag: its name range and a walker over its attributes.
fn top_tag(s: &[u8]) -> Option<(std::ops::Range<usize>, TagScan<'_>)> {
    let start = s.iter().position(|&b| !is_ws(b))?;
    if s[start] != b'<' {
        return None;
    }
    let ns = start + 1;
    let ne = ns + s[ns..].iter().position(|&b| is_ws(b) || b == b'/' || b == b'>')?;
    if ne == ns {
        return None;
    }
    Some((ns..ne, TagScan { s, i: ne, close: None, done: false }))
}

/// Escape for a single- or double-quoted attribute value; line breaks and
/// tabs become references so the result stays one line and round-trips.
pub(crate) fn escape_attr(s: &str) -> String {
    escape(s, true)
}

pub(crate) fn escape_text(s: &str) -> String {
    escape(s, false)
}

fn escape(s: &str, attr: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attr => out.push_str("&apos;"),
            '"' if attr => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attr => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// Resolve references in raw character data or an attribute value (`attr`:
/// apply attribute-value normalisation to literal whitespace). `None` on
/// invalid UTF-8, an unknown entity or a reference to a non-`Char`.
pub(crate) fn unescape_bytes(raw: &[u8], attr: bool) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let plain = if attr {
        !s.bytes().any(|b| matches!(b, b'&' | b'\r' | b'\n' | b'\t'))
    } else {
        !s.bytes().any(|b| matches!(b, b'&' | b'\r'))
    };
    if plain {
        return Some(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '&' => {
                let end = rest.find(';')?;
                let r = &rest[..end];
                rest = &rest[end + 1..];
                let ch = match r {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    _ => {
                        let v = if let Some(h) = r.strip_prefix("#x") {
                            u32::from_str_radix(h, 16).ok()?
                        } else {
                            r.strip_prefix('#')?.parse::<u32>().ok()?
                        };
                        if r.starts_with("#x+") || r.starts_with("#+") || !crate::framer::is_xml_char(v) {
                            return None;
                        }
                        char::from_u32(v)?
                    }
                };
                out.push(ch);
            }
            '\r' => {
                rest = rest.strip_prefix('\n').unwrap_or(rest);
                out.push(if attr { ' ' } else { '\n' });
            }
            '\n' | '\t' if attr => out.push(' '),
            c => out.push(c),
        }
    }
    Some(out)
}

fn split_qname(q: &str) -> (&str, &str) {
    match q.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", q),
    }
}

fn push_node(parent: &mut Element, node: Node) {
    if let (Node::Text(t), Some(Node::Text(prev))) = (&node, parent.children.last_mut()) {
        prev.push_str(t);
        return;
    }
    parent.children.push(node);
}

fn parse_tree(s: &[u8]) -> Option<Element> {
    // Namespace bindings in scope: (prefix, URI); "" is the default.
    let mut bindings: Vec<(String, String)> =
        vec![(String::new(), "jabber:client".to_owned()), ("xml".to_owned(), XML_NS.to_owned())];
    // Open elements with the binding count to restore when they close.
    let mut stack: Vec<(Element, usize)> = Vec::new();
    let mut i = s.iter().position(|&b| !is_ws(b))?;
    loop {
        if i >= s.len() {
            return None;
        }
        if s[i] != b'<' {
            let (parent, _) = stack.last_mut()?;
            let end = memchr::memchr(b'<', &s[i..]).map_or(s.len(), |o| i + o);
            push_node(parent, Node::Text(unescape_bytes(&s[i..end], false)?));
            i = end;
            continue;
        }
        match s.get(i + 1)? {
            b'/' => {
                let ns = i + 2;
                let ne = ns + s[ns..].iter().position(|&b| is_ws(b) || b == b'>')?;
                let close = ne + s[ne..].iter().position(|&b| !is_ws(b))?;
                if s[close] != b'>' {
                    return None;
                }
                let (mut el, nb) = stack.pop()?;
                if el.name.as_bytes() != &s[ns..ne] {
                    return None;
                }
                el.span.end = close + 1;
                bindings.truncate(nb);
                i = close + 1;
                match stack.last_mut() {
                    Some((parent, _)) => push_node(parent, Node::Element(el)),
                    None => return finish(s, i, el),
                }
            }
            b'!' => {
                if !s[i..].starts_with(b"<![CDATA[") {
                    return None;
                }
                let (parent, _) = stack.last_mut()?;
                let cs = i + 9;
                let ce = cs + memchr::memmem::find(&s[cs..], b"]]>")?;
                let t = std::str::from_utf8(&s[cs..ce]).ok()?;
                push_node(parent, Node::Text(t.replace("\r\n", "\n").replace('\r', "\n")));
                i = ce + 3;
            }
            b'?' => return None,
            _ => {
                let (name, mut scan) = top_tag(&s[i..])?;
                let mut attrs = Vec::new();
                let nb = bindings.len();
                for a in scan.by_ref() {
                    let k = std::str::from_utf8(&s[i + a.name.start..i + a.name.end]).ok()?;
                    let v = unescape_bytes(&s[i + a.value.start..i + a.value.end], true)?;
                    if k == "xmlns" {
                        bindings.push((String::new(), v.clone()));
                    } else if let Some(p) = k.strip_prefix("xmlns:") {
                        bindings.push((p.to_owned(), v.clone()));
                    }
                    attrs.push((k.to_owned(), v));
                }
                let close = i + scan.close?;
                let self_closing = s[close] == b'/';
                let name = std::str::from_utf8(&s[i + name.start..i + name.end]).ok()?.to_owned();
                let lookup = |p: &str| bindings.iter().rev().find(|(bp, _)| bp == p).map(|(_, u)| u.clone());
                let (prefix, _) = split_qname(&name);
                let ns = lookup(prefix)?;
                for (k, _) in &attrs {
                    if let Some((p, _)) = k.split_once(':') {
                        if p != "xmlns" {
                            lookup(p)?;
                        }
                    }
                }
                let start = i;
                i = close + if self_closing { 2 } else { 1 };
                let el = Element { name, ns, attrs, children: Vec::new(), span: start..i };
                if self_closing {
                    bindings.truncate(nb);
                    match stack.last_mut() {
                        Some((parent, _)) => push_node(parent, Node::Element(el)),
                        None => return finish(s, i, el),
                    }
                } else {
                    stack.push((el, nb));
                }
            }
        }
    }
}

/// The root closed at `i`: only whitespace (the record's LF) may follow.
fn finish(s: &[u8], i: usize, el: Element) -> Option<Element> {
    s[i..].iter().all(|&b| is_ws(b)).then_some(el)
}
