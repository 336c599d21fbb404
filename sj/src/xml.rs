//! A read-only view of a record, and edits of its top-level start tag.
//!
//! Records have already been validated by the framer, so this module trusts
//! their syntax but never panics on a record that is not well-formed: it
//! returns `None`/`Err`. Edits touch only the top-level start tag and leave
//! every other byte as it was.

use std::borrow::Cow;

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
        View::parse(record).map(Element::from)
    }
    /// Local name (after any prefix).
    pub fn local_name(&self) -> &str {
        // A byte search: the `rsplit` pattern searcher cost more than the
        // comparisons this name is asked for in (several per child).
        match self.name.bytes().rposition(|b| b == b':') {
            Some(i) => &self.name[i + 1..],
            None => &self.name,
        }
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

/// A borrowed parse of a record: names, attribute values and text point
/// into the record where they need no unescaping, so a record that is read
/// once (messaged's classification, per chat message) costs a few vector
/// allocations rather than one or two per name, attribute and text. Same
/// parser, same results as `Element` (which is made from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View<'a> {
    /// Qualified name as written.
    pub name: &'a str,
    /// Resolved namespace URI (`jabber:client` by default).
    pub ns: Cow<'a, str>,
    /// Attributes as written, values unescaped; `xmlns` declarations included.
    pub attrs: Vec<(&'a str, Cow<'a, str>)>,
    pub children: Vec<ViewNode<'a>>,
    pub span: std::ops::Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewNode<'a> {
    Element(View<'a>),
    /// Unescaped character data.
    Text(Cow<'a, str>),
}

impl<'a> View<'a> {
    /// Parse one record (with or without its trailing LF).
    pub fn parse(record: &'a [u8]) -> Option<View<'a>> {
        parse_tree(record)
    }
    /// Local name (after any prefix).
    pub fn local_name(&self) -> &'a str {
        match self.name.bytes().rposition(|b| b == b':') {
            Some(i) => &self.name[i + 1..],
            None => self.name,
        }
    }
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }
    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &View<'a>> {
        self.children.iter().filter_map(|n| match n {
            ViewNode::Element(e) => Some(e),
            ViewNode::Text(_) => None,
        })
    }
    /// First child element with this local name and namespace.
    pub fn child(&self, local: &str, ns: &str) -> Option<&View<'a>> {
        self.elements()
            .find(|e| e.local_name() == local && e.ns == ns)
    }
    /// Concatenated text of the direct text children (`Element::text`).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let ViewNode::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }
}

impl From<View<'_>> for Element {
    fn from(v: View<'_>) -> Element {
        Element {
            name: v.name.to_owned(),
            ns: v.ns.into_owned(),
            attrs: v
                .attrs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_owned()))
                .collect(),
            children: v
                .children
                .into_iter()
                .map(|n| match n {
                    ViewNode::Element(e) => Node::Element(e.into()),
                    ViewNode::Text(t) => Node::Text(t.into_owned()),
                })
                .collect(),
            span: v.span,
        }
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
    let found = scan
        .by_ref()
        .find(|a| &record[a.name.clone()] == name.as_bytes());
    let mut out = Vec::with_capacity(record.len() + name.len() + value.len() + 16);
    match (found, scan.close) {
        (Some(a), _) => {
            // Replace the quotes too, so the value may contain either quote.
            out.extend_from_slice(&record[..a.value.start - 1]);
            out.push(b'\'');
            escape_into(&mut out, value, true);
            out.push(b'\'');
            out.extend_from_slice(&record[a.value.end + 1..]);
        }
        (None, Some(close)) => {
            out.extend_from_slice(&record[..close]);
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            escape_into(&mut out, value, true);
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
        Some(AttrPos {
            ws_start,
            name,
            value: vs..ve,
        })
    }
}

/// The top-level start tag: its name range and a walker over its attributes.
fn top_tag(s: &[u8]) -> Option<(std::ops::Range<usize>, TagScan<'_>)> {
    let start = s.iter().position(|&b| !is_ws(b))?;
    if s[start] != b'<' {
        return None;
    }
    let ns = start + 1;
    let ne = ns
        + s[ns..]
            .iter()
            .position(|&b| is_ws(b) || b == b'/' || b == b'>')?;
    if ne == ns {
        return None;
    }
    Some((
        ns..ne,
        TagScan {
            s,
            i: ne,
            close: None,
            done: false,
        },
    ))
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
    let mut out = Vec::with_capacity(s.len() + 8);
    escape_into(&mut out, s, attr);
    // Only ASCII bytes were replaced, so this is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Every byte that needs escaping is ASCII, so working on UTF-8 bytes is exact.
fn escape_into(out: &mut Vec<u8>, s: &str, attr: bool) {
    let b = s.as_bytes();
    let mut from = 0;
    for (i, &c) in b.iter().enumerate() {
        let rep: &[u8] = match c {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' if attr => b"&apos;",
            b'"' if attr => b"&quot;",
            b'\n' => b"&#10;",
            b'\r' => b"&#13;",
            b'\t' if attr => b"&#9;",
            _ => continue,
        };
        out.extend_from_slice(&b[from..i]);
        out.extend_from_slice(rep);
        from = i + 1;
    }
    out.extend_from_slice(&b[from..]);
}

/// Resolve references in raw character data or an attribute value (`attr`:
/// apply attribute-value normalisation to literal whitespace). `None` on
/// invalid UTF-8, an unknown entity or a reference to a non-`Char`.
pub(crate) fn unescape_bytes(raw: &[u8], attr: bool) -> Option<String> {
    unescape_cow(raw, attr).map(Cow::into_owned)
}

/// `unescape_bytes`, borrowing `raw` when it holds nothing to resolve.
fn unescape_cow(raw: &[u8], attr: bool) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(raw).ok()?;
    // memchr scans many bytes a step; a body is hundreds of bytes and
    // nearly always plain, and this test ran a byte a step before.
    let plain = if attr {
        memchr::memchr3(b'&', b'\r', b'\n', raw).is_none() && memchr::memchr(b'\t', raw).is_none()
    } else {
        memchr::memchr2(b'&', b'\r', raw).is_none()
    };
    if plain {
        return Some(Cow::Borrowed(s));
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
                        if r.starts_with("#x+")
                            || r.starts_with("#+")
                            || !crate::framer::is_xml_char(v)
                        {
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
    Some(Cow::Owned(out))
}

fn split_qname(q: &str) -> (&str, &str) {
    // A byte search: str's pattern searcher cost more than the rest of
    // looking up a name (it runs for every element and attribute).
    match q.bytes().position(|b| b == b':') {
        Some(i) => (&q[..i], &q[i + 1..]),
        None => ("", q),
    }
}

fn push_node<'a>(parent: &mut View<'a>, node: ViewNode<'a>) {
    if let (ViewNode::Text(t), Some(ViewNode::Text(prev))) = (&node, parent.children.last_mut()) {
        prev.to_mut().push_str(t);
        return;
    }
    parent.children.push(node);
}

fn parse_tree(s: &[u8]) -> Option<View<'_>> {
    // Namespace bindings in scope: (prefix, URI); "" is the default.
    let mut bindings: Vec<(&str, Cow<'_, str>)> = vec![
        ("", Cow::Borrowed("jabber:client")),
        ("xml", Cow::Borrowed(XML_NS)),
    ];
    // Open elements with the binding count to restore when they close.
    let mut stack: Vec<(View<'_>, usize)> = Vec::new();
    let mut i = s.iter().position(|&b| !is_ws(b))?;
    loop {
        if i >= s.len() {
            return None;
        }
        if s[i] != b'<' {
            let (parent, _) = stack.last_mut()?;
            let end = memchr::memchr(b'<', &s[i..]).map_or(s.len(), |o| i + o);
            push_node(parent, ViewNode::Text(unescape_cow(&s[i..end], false)?));
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
                    Some((parent, _)) => push_node(parent, ViewNode::Element(el)),
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
                let t = if t.contains('\r') {
                    Cow::Owned(t.replace("\r\n", "\n").replace('\r', "\n"))
                } else {
                    Cow::Borrowed(t)
                };
                push_node(parent, ViewNode::Text(t));
                i = ce + 3;
            }
            b'?' => return None,
            _ => {
                let (name, mut scan) = top_tag(&s[i..])?;
                let mut attrs = Vec::new();
                let nb = bindings.len();
                for a in scan.by_ref() {
                    let k = std::str::from_utf8(&s[i + a.name.start..i + a.name.end]).ok()?;
                    let v = unescape_cow(&s[i + a.value.start..i + a.value.end], true)?;
                    if k == "xmlns" {
                        bindings.push(("", v.clone()));
                    } else if let Some(p) = k.strip_prefix("xmlns:") {
                        bindings.push((p, v.clone()));
                    }
                    attrs.push((k, v));
                }
                let close = i + scan.close?;
                let self_closing = s[close] == b'/';
                let name = std::str::from_utf8(&s[i + name.start..i + name.end]).ok()?;
                let lookup = |p: &str| {
                    bindings
                        .iter()
                        .rev()
                        .find(|(bp, _)| *bp == p)
                        .map(|(_, u)| u.clone())
                };
                let (prefix, _) = split_qname(name);
                let ns = lookup(prefix)?;
                for (k, _) in &attrs {
                    let (p, _) = split_qname(k);
                    if !p.is_empty() && p != "xmlns" {
                        lookup(p)?;
                    }
                }
                let start = i;
                i = close + if self_closing { 2 } else { 1 };
                let el = View {
                    name,
                    ns,
                    attrs,
                    children: Vec::new(),
                    span: start..i,
                };
                if self_closing {
                    bindings.truncate(nb);
                    match stack.last_mut() {
                        Some((parent, _)) => push_node(parent, ViewNode::Element(el)),
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
fn finish<'a>(s: &[u8], i: usize, el: View<'a>) -> Option<View<'a>> {
    s[i..].iter().all(|&b| is_ws(b)).then_some(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_namespaces_and_text() {
        let r = b"<message xmlns:s='http://etherx.jabber.org/streams' to='a@b' id=\"x&amp;y\">\
            <body>a &lt; b&#10;c</body><s:error/>\
            <x xmlns='jabber:x:data'><field var='v'><value>1</value></field></x></message>\n";
        let e = Element::parse(r).expect("parses");
        assert_eq!(e.name, "message");
        assert_eq!(e.ns, "jabber:client");
        assert_eq!(e.attr("id"), Some("x&y"));
        assert_eq!(
            e.child("body", "jabber:client").map(|b| b.text()),
            Some("a < b\nc".to_owned())
        );
        let err = e.elements().nth(1).expect("s:error");
        assert_eq!(
            (err.local_name(), err.ns.as_str()),
            ("error", "http://etherx.jabber.org/streams")
        );
        let x = e.child("x", "jabber:x:data").expect("x");
        let field = x
            .child("field", "jabber:x:data")
            .expect("inherited default namespace");
        assert_eq!(field.attr("var"), Some("v"));
        assert_eq!(e.span, 0..r.len() - 1);
        assert_eq!(
            Element::parse(b"<a xml:lang='en'><![CDATA[<x>]]>y</a>").map(|a| a.text()),
            Some("<x>y".into())
        );
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            &b""[..],
            b"<a>",
            b"<a></b>",
            b"<p:a/>",
            b"<a p:x='1'/>",
            b"<a>&foo;</a>",
            b"<a/><b/>",
            b"text",
            b"<a x='1/>",
            b"<a>\xff</a>",
            b"</a>",
            b"<a><!-- c --></a>",
        ] {
            assert_eq!(
                Element::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn span_slices_nested_element() {
        let inner = "<message from='a@b/c' to='d@e' type='chat'><body>hi</body></message>";
        let r = format!(
            "<message from='a@b' to='a@b/r'><sent xmlns='urn:xmpp:carbons:2'>\
             <forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></sent></message>\n"
        );
        let e = Element::parse(r.as_bytes()).expect("parses");
        let fwd = e
            .child("sent", "urn:xmpp:carbons:2")
            .and_then(|s| s.child("forwarded", "urn:xmpp:forward:0"))
            .expect("forwarded");
        let m = fwd
            .child("message", "urn:xmpp:forward:0")
            .expect("message inherits forward ns");
        assert_eq!(&r[m.span.clone()], inner);
        let own = "<x xmlns='jabber:client'/>";
        let r2 = format!("<a><b>{own}</b></a>");
        let e2 = Element::parse(r2.as_bytes()).expect("parses");
        let x = &e2
            .elements()
            .next()
            .expect("b")
            .elements()
            .next()
            .expect("x");
        assert_eq!(&r2[x.span.clone()], own);
    }

    #[test]
    fn to_xml_escapes() {
        let e = Element {
            name: "message".into(),
            ns: "jabber:client".into(),
            attrs: vec![("to".into(), "a'b\"<&>".into())],
            children: vec![Node::Element(Element {
                name: "body".into(),
                ns: "jabber:client".into(),
                attrs: vec![],
                children: vec![Node::Text("1 < 2 & 3\nx".into())],
                span: 0..0,
            })],
            span: 0..0,
        };
        let x = e.to_xml();
        assert_eq!(x, "<message to='a&apos;b&quot;&lt;&amp;&gt;'><body>1 &lt; 2 &amp; 3&#10;x</body></message>");
        let back = Element::parse(x.as_bytes()).expect("round trip");
        assert_eq!(back.attr("to"), Some("a'b\"<&>"));
        assert_eq!(
            back.elements().next().map(|b| b.text()),
            Some("1 < 2 & 3\nx".into())
        );
    }

    #[test]
    fn top_level_name_and_attr() {
        let r = b"<iq type=\"get\" id='a&apos;b' x='>'><query/></iq>\n";
        assert_eq!(name(r), Some("iq"));
        assert_eq!(name(b"<presence/>\n"), Some("presence"));
        assert_eq!(attr(r, "id"), Some("a'b".into()));
        assert_eq!(attr(r, "type"), Some("get".into()));
        assert_eq!(attr(r, "x"), Some(">".into()));
        assert_eq!(attr(r, "query"), None);
        assert_eq!(name(b"junk"), None);
    }

    #[test]
    fn set_attr_in_place_and_appended() {
        let s = |r: &str, k: &str, v: &str| {
            String::from_utf8(set_attr(r.as_bytes(), k, v)).expect("utf8")
        };
        assert_eq!(
            s("<m to='a' id=\"1\"><b/></m>\n", "id", "2"),
            "<m to='a' id='2'><b/></m>\n"
        );
        assert_eq!(
            s("<m to='a' id=\"1\"><b/></m>\n", "to", "x'y"),
            "<m to='x&apos;y' id=\"1\"><b/></m>\n"
        );
        assert_eq!(
            s("<m to='a'><b id='x'/></m>\n", "id", "2"),
            "<m to='a' id='2'><b id='x'/></m>\n"
        );
        assert_eq!(
            s("<presence/>\n", "from", "a@b/c"),
            "<presence from='a@b/c'/>\n"
        );
        assert_eq!(
            s("<presence type='x' />\n", "from", "a"),
            "<presence type='x'  from='a'/>\n"
        );
        assert_eq!(
            s("<m a=\"x>y\">t</m>\n", "b", "1"),
            "<m a=\"x>y\" b='1'>t</m>\n"
        );
        assert_eq!(
            s("<m a='1'/>", "a", "line\nbreak"),
            "<m a='line&#10;break'/>"
        );
    }

    #[test]
    fn remove_attr_keeps_other_bytes() {
        let r = |r: &str, k: &str| String::from_utf8(remove_attr(r.as_bytes(), k)).expect("utf8");
        assert_eq!(
            r("<m to='a' from=\"b\" id='1'><x from='c'/></m>\n", "from"),
            "<m to='a' id='1'><x from='c'/></m>\n"
        );
        assert_eq!(r("<m from=\"b\"/>\n", "from"), "<m/>\n");
        assert_eq!(r("<m to='a' from='b' />\n", "from"), "<m to='a' />\n");
        assert_eq!(r("<m to='a'/>\n", "from"), "<m to='a'/>\n");
        assert_eq!(
            r("<m\tfrom='b'\tto='a'>x</m>\n", "from"),
            "<m\tto='a'>x</m>\n"
        );
    }

    #[test]
    fn unescape_rules() {
        assert_eq!(
            unescape_bytes(b"a&#x41;&#66;&quot;", false),
            Some("aAB\"".into())
        );
        assert_eq!(unescape_bytes(b"a\r\nb\tc", true), Some("a b c".into()));
        assert_eq!(unescape_bytes(b"a\r\nb\rc", false), Some("a\nb\nc".into()));
        assert_eq!(unescape_bytes(b"&#0;", false), None);
        assert_eq!(unescape_bytes(b"&#x+41;", false), None);
        assert_eq!(unescape_bytes(b"&nbsp;", false), None);
    }
}
