//! A record as a tree of borrowed elements.
//!
//! Names, attribute values and text point into the record where they need
//! no unescaping, so a record that is read once (messaged's classification,
//! per chat message) costs a few vector allocations rather than one or two
//! per name, attribute and text. `into_owned` detaches a tree from its
//! record, for the few places that keep one.

use super::chars::is_ws;
use super::tag::{start_tag, AttrPos};
use super::unescape;
use crate::ns;
use std::borrow::Cow;
use std::ops::Range;

/// One element of a record. `span` is its byte range in the record it was
/// parsed from, so callers can forward a subtree verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element<'a> {
    /// Qualified name as written, e.g. `message` or `stream:error`.
    pub name: Cow<'a, str>,
    /// Resolved namespace URI (`jabber:client` by default).
    pub ns: Cow<'a, str>,
    /// Attributes as written (qualified names), values unescaped; `xmlns`
    /// declarations included.
    pub attrs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub children: Vec<Node<'a>>,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node<'a> {
    Element(Element<'a>),
    /// Unescaped character data; adjacent text and CDATA are one node.
    Text(Cow<'a, str>),
}

impl<'a> Element<'a> {
    /// Parse one record (with or without its trailing LF). `None` if it is
    /// not one well-formed element with its prefixes declared.
    pub fn parse(record: &'a [u8]) -> Option<Element<'a>> {
        Parser::new(record)?.run()
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

    /// The unescaped value of an attribute, by qualified name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element<'a>> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child element with this local name and namespace.
    pub fn child(&self, local: &str, ns: &str) -> Option<&Element<'a>> {
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

    /// The same tree, owning its strings.
    pub fn into_owned(self) -> Element<'static> {
        Element {
            name: Cow::Owned(self.name.into_owned()),
            ns: Cow::Owned(self.ns.into_owned()),
            attrs: self
                .attrs
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
            children: self
                .children
                .into_iter()
                .map(|n| match n {
                    Node::Element(e) => Node::Element(e.into_owned()),
                    Node::Text(t) => Node::Text(Cow::Owned(t.into_owned())),
                })
                .collect(),
            span: self.span,
        }
    }

    fn push(&mut self, node: Node<'a>) {
        if let (Node::Text(t), Some(Node::Text(prev))) = (&node, self.children.last_mut()) {
            prev.to_mut().push_str(t);
            return;
        }
        self.children.push(node);
    }
}

/// The prefix of a qualified name ("" for none).
fn prefix(q: &str) -> &str {
    // A byte search: str's pattern searcher cost more than the rest of
    // looking up a name (it runs for every element and attribute).
    match q.bytes().position(|b| b == b':') {
        Some(i) => &q[..i],
        None => "",
    }
}

/// One pass over a record, element by element.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    /// Namespace bindings in scope: (prefix, URI); "" is the default.
    bindings: Vec<(&'a str, Cow<'a, str>)>,
    /// Open elements with the binding count to restore when they close.
    stack: Vec<(Element<'a>, usize)>,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Option<Parser<'a>> {
        Some(Parser {
            s,
            i: s.iter().position(|&b| !is_ws(b))?,
            bindings: vec![
                ("", Cow::Borrowed(ns::CLIENT)),
                ("xml", Cow::Borrowed(ns::XML)),
            ],
            stack: Vec::new(),
        })
    }

    /// Each step consumes one token; the root's end ends the pass.
    fn run(mut self) -> Option<Element<'a>> {
        loop {
            let s = self.s;
            let closed = match (s.get(self.i)?, s.get(self.i + 1)) {
                (b'<', Some(b'/')) => Some(self.end_tag()?),
                (b'<', Some(b'!')) => {
                    self.cdata()?;
                    None
                }
                (b'<', Some(b'?')) => return None,
                (b'<', _) => self.start_tag()?,
                _ => {
                    self.text()?;
                    None
                }
            };
            if let Some(el) = closed {
                match self.stack.last_mut() {
                    Some((parent, _)) => parent.push(Node::Element(el)),
                    // Only whitespace (the record's LF) may follow the root.
                    None => return s[self.i..].iter().all(|&b| is_ws(b)).then_some(el),
                }
            }
        }
    }

    fn text(&mut self) -> Option<()> {
        let s = self.s;
        let (parent, _) = self.stack.last_mut()?;
        let end = memchr::memchr(b'<', &s[self.i..]).map_or(s.len(), |o| self.i + o);
        parent.push(Node::Text(unescape(&s[self.i..end], false)?));
        self.i = end;
        Some(())
    }

    fn cdata(&mut self) -> Option<()> {
        let s = self.s;
        if !s[self.i..].starts_with(b"<![CDATA[") {
            return None;
        }
        let (parent, _) = self.stack.last_mut()?;
        let cs = self.i + 9;
        let ce = cs + memchr::memmem::find(&s[cs..], b"]]>")?;
        let t = std::str::from_utf8(&s[cs..ce]).ok()?;
        let t = if t.contains('\r') {
            Cow::Owned(t.replace("\r\n", "\n").replace('\r', "\n"))
        } else {
            Cow::Borrowed(t)
        };
        parent.push(Node::Text(t));
        self.i = ce + 3;
        Some(())
    }

    /// An end tag: the element it closes.
    fn end_tag(&mut self) -> Option<Element<'a>> {
        let s = self.s;
        let ns = self.i + 2;
        let ne = ns + s[ns..].iter().position(|&b| is_ws(b) || b == b'>')?;
        let close = ne + s[ne..].iter().position(|&b| !is_ws(b))?;
        if s[close] != b'>' {
            return None;
        }
        let (mut el, nb) = self.stack.pop()?;
        if el.name.as_bytes() != &s[ns..ne] {
            return None;
        }
        el.span.end = close + 1;
        self.bindings.truncate(nb);
        self.i = close + 1;
        Some(el)
    }

    /// A start tag: the element if it was self-closing (else it is opened).
    fn start_tag(&mut self) -> Option<Option<Element<'a>>> {
        let (s, start) = (self.s, self.i);
        let (name, mut scan) = start_tag(s, start)?;
        let nb = self.bindings.len();
        let mut attrs = Vec::new();
        for a in scan.by_ref() {
            attrs.push(self.attribute(a)?);
        }
        let close = scan.close?;
        let self_closing = s[close] == b'/';
        let name = std::str::from_utf8(&s[name]).ok()?;
        let ns = self.lookup(prefix(name))?;
        for (k, _) in &attrs {
            let p = prefix(k);
            if !p.is_empty() && p != "xmlns" {
                self.lookup(p)?;
            }
        }
        self.i = close + if self_closing { 2 } else { 1 };
        let el = Element {
            name: Cow::Borrowed(name),
            ns,
            attrs,
            children: Vec::new(),
            span: start..self.i,
        };
        if self_closing {
            self.bindings.truncate(nb);
            return Some(Some(el));
        }
        self.stack.push((el, nb));
        Some(None)
    }

    /// One attribute, its namespace declaration (if it is one) now in scope.
    fn attribute(&mut self, a: AttrPos) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        let s = self.s;
        let k = std::str::from_utf8(&s[a.name]).ok()?;
        let v = unescape(&s[a.value], true)?;
        if k == "xmlns" {
            self.bindings.push(("", v.clone()));
        } else if let Some(p) = k.strip_prefix("xmlns:") {
            self.bindings.push((p, v.clone()));
        }
        Some((Cow::Borrowed(k), v))
    }

    fn lookup(&self, p: &str) -> Option<Cow<'a, str>> {
        self.bindings
            .iter()
            .rev()
            .find(|(bp, _)| *bp == p)
            .map(|(_, u)| u.clone())
    }
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
            (err.local_name(), err.ns.as_ref()),
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
            b"<?xml version='1.0'?><a/>",
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
    fn into_owned_keeps_the_tree() {
        let r = b"<m a='1&amp;2'><b xmlns='x'>t&lt;</b>u</m>".to_vec();
        let e = Element::parse(&r).expect("parses");
        let before = format!("{e:?}");
        let owned: Element<'static> = e.into_owned();
        drop(r);
        // Only the Cow variants differ, and Debug does not show them.
        assert_eq!(format!("{owned:?}"), before);
        assert_eq!(owned.attr("a"), Some("1&2"));
        assert_eq!(owned.child("b", "x").map(|b| b.text()), Some("t<".into()));
        assert_eq!(owned.text(), "u");
    }

    #[test]
    fn escaped_values_round_trip_through_a_record() {
        let v = "a'b\"<&>\n\r\tz";
        let r = format!(
            "<message to='{}'><body>{}</body></message>",
            super::super::escape_attr(v),
            super::super::escape_text(v)
        );
        assert!(!r.contains(['\n', '\r']), "{r}");
        let e = Element::parse(r.as_bytes()).expect("round trip");
        assert_eq!(e.attr("to"), Some(v));
        assert_eq!(e.elements().next().map(|b| b.text()), Some(v.into()));
    }
}
