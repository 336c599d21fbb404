//! A record's top-level start tag, read once per hop: its name and
//! attributes answer routing questions, and `rewrite` makes the edited
//! record in one copy, whatever the number of edits. Every byte an edit
//! does not touch stays as it was (DESIGN §4: no re-serialisation).

use super::chars::{escape_into, is_ws};
use super::tag::start_tag;
use super::{unescape_str, Element};
use std::borrow::Cow;
use std::ops::Range;

/// The parsed top-level start tag of one record.
#[derive(Debug, Clone)]
pub struct Top<'a> {
    rec: &'a [u8],
    /// The start tag, through its `>`, checked as UTF-8 once: names and
    /// values are slices of it.
    tag: &'a str,
    name: Range<usize>,
    attrs: Spans,
    /// Index of `>`, or of `/` in `/>`: where new attributes go.
    close: usize,
}

/// Where one attribute is in the record: the whitespace before it from
/// `ws`, its name, its value inside the quotes.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    ws: usize,
    name: (usize, usize),
    value: (usize, usize),
}

/// Attributes kept inline: a top-level tag has a few, and an allocation
/// per tag cost as much as reading it (the tag is read on every hop).
const INLINE: usize = 6;

#[derive(Debug, Clone, Default)]
struct Spans {
    len: usize,
    inline: [Span; INLINE],
    more: Vec<Span>,
}

impl Spans {
    fn push(&mut self, a: Span) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = a,
            None => self.more.push(a),
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Span> {
        self.inline[..self.len.min(INLINE)].iter().chain(&self.more)
    }
}

/// One change `Top::rewrite` makes. When several edits name one attribute,
/// the last one wins.
#[derive(Debug, Clone, Copy)]
pub enum Edit<'e> {
    /// Set a top-level attribute: its value is replaced where it stands,
    /// or it is appended after the others. The value is escaped and
    /// single-quoted.
    Set(&'e str, &'e str),
    /// Remove a top-level attribute, with the whitespace before it.
    Remove(&'e str),
    /// Add XML as the last child of an element parsed from the same record
    /// (the top-level one, or any below it).
    Child(&'e Element<'e>, &'e str),
}

impl<'a> Top<'a> {
    /// Parse the start tag of `record` (with or without its LF). `None` if
    /// it is not a start tag.
    pub fn parse(record: &'a [u8]) -> Option<Top<'a>> {
        let at = record.iter().position(|&b| !is_ws(b))?;
        let (name, mut scan) = start_tag(record, at)?;
        let mut attrs = Spans::default();
        for a in scan.by_ref() {
            attrs.push(Span {
                ws: a.ws_start,
                name: (a.name.start, a.name.end),
                value: (a.value.start, a.value.end),
            });
        }
        let close = scan.close?;
        let end = if record[close] == b'/' {
            close + 2
        } else {
            close + 1
        };
        Some(Top {
            rec: record,
            tag: std::str::from_utf8(&record[..end]).ok()?,
            name,
            attrs,
            close,
        })
    }

    /// The record this tag starts.
    pub fn record(&self) -> &'a [u8] {
        self.rec
    }

    /// The qualified name, e.g. `message`.
    pub fn name(&self) -> &'a str {
        self.tag.get(self.name.clone()).unwrap_or_default()
    }

    /// Whether the element is empty (`<presence/>`).
    pub fn is_self_closing(&self) -> bool {
        self.rec[self.close] == b'/'
    }

    fn find(&self, name: &str) -> Option<&Span> {
        self.attrs
            .iter()
            .find(|a| &self.rec[a.name.0..a.name.1] == name.as_bytes())
    }

    /// The unescaped value of an attribute, by qualified name.
    pub fn attr(&self, name: &str) -> Option<Cow<'a, str>> {
        let a = self.find(name)?;
        unescape_str(self.tag.get(a.value.0..a.value.1)?, true)
    }

    /// The record with `edits` made, in one copy.
    pub fn rewrite(&self, edits: &[Edit<'_>]) -> Vec<u8> {
        let rec = self.rec;
        let grow: usize = edits
            .iter()
            .map(|e| match e {
                Edit::Set(k, v) => k.len() + v.len() + 4,
                Edit::Remove(_) => 0,
                Edit::Child(el, xml) => el.name.len() + xml.len() + 3,
            })
            .sum();
        let mut out = Vec::with_capacity(rec.len() + grow + 16);
        let mut at = 0;
        for a in self.attrs.iter() {
            match last_edit(edits, &rec[a.name.0..a.name.1]) {
                Some(Edit::Set(_, v)) => {
                    // The quotes too, so the value may contain either quote.
                    out.extend_from_slice(&rec[at..a.value.0 - 1]);
                    push_value(&mut out, v);
                    at = a.value.1 + 1;
                }
                Some(Edit::Remove(_)) => {
                    out.extend_from_slice(&rec[at..a.ws]);
                    at = a.value.1 + 1;
                }
                _ => {}
            }
        }
        out.extend_from_slice(&rec[at..self.close]);
        for (i, e) in edits.iter().enumerate() {
            if let Edit::Set(k, v) = e {
                let last = edits
                    .iter()
                    .rposition(|e| edit_name(e) == Some(k.as_bytes()));
                if last == Some(i) && self.find(k).is_none() {
                    out.push(b' ');
                    out.extend_from_slice(k.as_bytes());
                    out.push(b'=');
                    push_value(&mut out, v);
                }
            }
        }
        self.children(&mut out, edits);
        out
    }

    /// The rest of the record from `close`, with the `Child` edits made.
    fn children(&self, out: &mut Vec<u8>, edits: &[Edit<'_>]) {
        let rec = self.rec;
        let mut kids: Vec<(Range<usize>, &Element<'_>, &str)> = edits
            .iter()
            .filter_map(|e| match e {
                Edit::Child(el, xml) => Some((self.child_at(el)?, *el, *xml)),
                _ => None,
            })
            .collect();
        kids.sort_by_key(|(r, _, _)| r.start);
        let mut at = self.close;
        for (r, el, xml) in kids {
            out.extend_from_slice(&rec[at..r.start]);
            if r.is_empty() {
                out.extend_from_slice(xml.as_bytes());
            } else {
                // `/>` becomes `>CHILD</NAME>`.
                out.push(b'>');
                out.extend_from_slice(xml.as_bytes());
                out.extend_from_slice(b"</");
                out.extend_from_slice(el.name.as_bytes());
                out.push(b'>');
            }
            at = r.end;
        }
        out.extend_from_slice(&rec[at..]);
    }

    /// What a child of `el` replaces: the `/>` of an empty element, or
    /// nothing just before its end tag. `None` (the edit is not made) for
    /// an element that is not in this record after the start tag.
    fn child_at(&self, el: &Element<'_>) -> Option<Range<usize>> {
        let bytes = self.rec.get(el.span.clone())?;
        if bytes.ends_with(b"/>") {
            let from = el.span.end - 2;
            return (from >= self.close).then_some(from..el.span.end);
        }
        let from = el.span.start + memchr::memmem::rfind(bytes, b"</")?;
        (from >= self.close).then_some(from..from)
    }
}

fn edit_name<'e>(e: &Edit<'e>) -> Option<&'e [u8]> {
    match e {
        Edit::Set(k, _) | Edit::Remove(k) => Some(k.as_bytes()),
        Edit::Child(..) => None,
    }
}

fn last_edit<'s, 'e>(edits: &'s [Edit<'e>], name: &[u8]) -> Option<&'s Edit<'e>> {
    edits.iter().rev().find(|e| edit_name(e) == Some(name))
}

fn push_value(out: &mut Vec<u8>, v: &str) {
    out.push(b'\'');
    escape_into(out, v, true);
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(r: &str, edits: &[Edit<'_>]) -> String {
        let top = Top::parse(r.as_bytes()).expect("a start tag");
        String::from_utf8(top.rewrite(edits)).expect("utf8")
    }

    #[test]
    fn name_and_attr() {
        let r = b"<iq type=\"get\" id='a&apos;b' x='>'><query/></iq>\n";
        let top = Top::parse(r).expect("parses");
        assert_eq!(top.name(), "iq");
        assert_eq!(top.attr("id").as_deref(), Some("a'b"));
        assert_eq!(top.attr("type").as_deref(), Some("get"));
        assert_eq!(top.attr("x").as_deref(), Some(">"));
        assert_eq!(top.attr("query"), None);
        assert!(!top.is_self_closing());
        let p = Top::parse(b"<presence/>\n").expect("parses");
        assert_eq!((p.name(), p.is_self_closing()), ("presence", true));
        assert!(Top::parse(b"junk").is_none());
        assert!(Top::parse(b"<a x='1").is_none());
    }

    #[test]
    fn set_in_place_and_appended() {
        use Edit::Set;
        let cases = [
            (
                "<m to='a' id=\"1\"><b/></m>\n",
                "id",
                "2",
                "<m to='a' id='2'><b/></m>\n",
            ),
            (
                "<m to='a' id=\"1\"><b/></m>\n",
                "to",
                "x'y",
                "<m to='x&apos;y' id=\"1\"><b/></m>\n",
            ),
            (
                "<m to='a'><b id='x'/></m>\n",
                "id",
                "2",
                "<m to='a' id='2'><b id='x'/></m>\n",
            ),
            (
                "<presence/>\n",
                "from",
                "a@b/c",
                "<presence from='a@b/c'/>\n",
            ),
            (
                "<presence type='x' />\n",
                "from",
                "a",
                "<presence type='x'  from='a'/>\n",
            ),
            (
                "<m a=\"x>y\">t</m>\n",
                "b",
                "1",
                "<m a=\"x>y\" b='1'>t</m>\n",
            ),
            ("<m a='1'/>", "a", "line\nbreak", "<m a='line&#10;break'/>"),
        ];
        for (r, k, v, want) in cases {
            assert_eq!(edit(r, &[Set(k, v)]), want);
        }
    }

    #[test]
    fn remove_keeps_other_bytes() {
        use Edit::Remove;
        let cases = [
            (
                "<m to='a' from=\"b\" id='1'><x from='c'/></m>\n",
                "<m to='a' id='1'><x from='c'/></m>\n",
            ),
            ("<m from=\"b\"/>\n", "<m/>\n"),
            ("<m to='a' from='b' />\n", "<m to='a' />\n"),
            ("<m to='a'/>\n", "<m to='a'/>\n"),
            ("<m\tfrom='b'\tto='a'>x</m>\n", "<m\tto='a'>x</m>\n"),
        ];
        for (r, want) in cases {
            assert_eq!(edit(r, &[Remove("from")]), want);
        }
    }

    #[test]
    fn more_attributes_than_kept_inline() {
        let r = "<m a='1' b='2' c='3' d='4' e='5' f='6' g='7' h='8'/>";
        let top = Top::parse(r.as_bytes()).expect("parses");
        assert_eq!(top.attr("a").as_deref(), Some("1"));
        assert_eq!(top.attr("h").as_deref(), Some("8"));
        assert_eq!(
            edit(
                r,
                &[Edit::Remove("b"), Edit::Set("g", "x"), Edit::Set("i", "9")]
            ),
            "<m a='1' c='3' d='4' e='5' f='6' g='x' h='8' i='9'/>"
        );
    }

    #[test]
    fn several_edits_are_one_rewrite() {
        use Edit::{Remove, Set};
        let r = "<iq from='x' id=\"1\" type='result'><q/></iq>\n";
        // What the edits one after another would give.
        assert_eq!(
            edit(r, &[Remove("from"), Set("id", "7"), Set("to", "a@b")]),
            "<iq id='7' type='result' to='a@b'><q/></iq>\n"
        );
        assert_eq!(
            edit(r, &[Set("to", "a"), Set("xmlns", "jabber:client")]),
            "<iq from='x' id=\"1\" type='result' to='a' xmlns='jabber:client'><q/></iq>\n"
        );
        // The last edit of a name wins.
        assert_eq!(
            edit(r, &[Set("from", "y"), Remove("from")]),
            "<iq id=\"1\" type='result'><q/></iq>\n"
        );
        assert_eq!(
            edit(r, &[Remove("to"), Set("to", "b")]),
            "<iq from='x' id=\"1\" type='result' to='b'><q/></iq>\n"
        );
        assert_eq!(
            edit(r, &[Set("to", "a"), Set("to", "b")]),
            "<iq from='x' id=\"1\" type='result' to='b'><q/></iq>\n"
        );
        assert_eq!(edit(r, &[]), r);
    }

    #[test]
    fn child_goes_last_with_prefixes_and_spaces() {
        let rec = b"<iq type='result'><q:query xmlns:q='jabber:iq:roster' ><item jid='a'/></q:query ></iq>\n";
        let el = Element::parse(rec).expect("parse");
        let q = el.elements().next().expect("query");
        let top = Top::parse(rec).expect("top");
        let out = top.rewrite(&[Edit::Child(q, "<x/>"), Edit::Set("to", "me")]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "<iq type='result' to='me'><q:query xmlns:q='jabber:iq:roster' ><item jid='a'/><x/></q:query ></iq>\n"
        );
        let rec = b"<iq type='result'><query xmlns='jabber:iq:roster'/></iq>\n";
        let el = Element::parse(rec).expect("parse");
        let q = el.elements().next().expect("query");
        let out = Top::parse(rec)
            .expect("top")
            .rewrite(&[Edit::Child(q, "<x/>")]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "<iq type='result'><query xmlns='jabber:iq:roster'><x/></query></iq>\n"
        );
    }

    #[test]
    fn child_of_the_top_element() {
        for (r, want) in [
            ("<presence/>\n", "<presence to='a'><c/></presence>\n"),
            ("<m><b/></m>", "<m to='a'><b/><c/></m>"),
        ] {
            let el = Element::parse(r.as_bytes()).expect("parse");
            let out = Top::parse(r.as_bytes())
                .expect("top")
                .rewrite(&[Edit::Set("to", "a"), Edit::Child(&el, "<c/>")]);
            assert_eq!(String::from_utf8(out).expect("utf8"), want);
        }
    }
}
