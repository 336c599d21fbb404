//! The roster cache `DIR/roster` (RFC 6121 §2) and roster pushes.
//!
//! One item a line, four tab-separated fields:
//! `jid<TAB>subscription<TAB>name<TAB>group1,group2`. An empty name or no
//! groups leave the field empty. Inside the name and group fields `%`, TAB,
//! LF, CR (and `,` inside a group name) are percent-encoded (`%25`, `%09`,
//! `%0A`, `%0D`, `%2C`) so every line splits the same way. Lines are sorted
//! by JID; the file is replaced atomically (mode 0600).

use sj::jid::Jid;
use sj::ns::ROSTER as NS;
use sj::xml::{escape_attr, escape_text, Element};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Item {
    pub jid: String,
    /// none, to, from, both (or `remove` in a push / set).
    pub subscription: String,
    pub name: String,
    pub groups: Vec<String>,
}

fn enc(s: &str, comma: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => o.push_str("%25"),
            '\t' => o.push_str("%09"),
            '\n' => o.push_str("%0A"),
            '\r' => o.push_str("%0D"),
            ',' if comma => o.push_str("%2C"),
            c => o.push(c),
        }
    }
    o
}

fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                o.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        o.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&o).into_owned()
}

impl Item {
    /// The cache line, without LF.
    pub fn line(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(|g| enc(g, true)).collect();
        format!(
            "{}\t{}\t{}\t{}",
            enc(&self.jid, false),
            enc(&self.subscription, false),
            enc(&self.name, false),
            groups.join(",")
        )
    }

    /// Parse a cache line; `None` for a line without a JID.
    pub fn parse_line(line: &str) -> Option<Item> {
        let mut f = line.split('\t');
        let jid = dec(f.next()?);
        if jid.is_empty() {
            return None;
        }
        let subscription = dec(f.next().unwrap_or(""));
        let name = dec(f.next().unwrap_or(""));
        let groups = f
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|g| !g.is_empty())
            .map(dec)
            .collect();
        Some(Item {
            jid,
            subscription,
            name,
            groups,
        })
    }

    /// From an `<item/>` of a roster query; `None` without a valid JID.
    pub fn from_element(e: &Element) -> Option<Item> {
        if e.local_name() != "item" || e.ns != NS {
            return None;
        }
        let jid = Jid::parse(e.attr("jid")?).ok()?.to_string();
        let groups = e
            .elements()
            .filter(|g| g.local_name() == "group" && g.ns == NS)
            .map(|g| g.text())
            .filter(|g| !g.is_empty())
            .collect();
        Some(Item {
            jid,
            subscription: e.attr("subscription").unwrap_or("none").to_string(),
            name: e.attr("name").unwrap_or("").to_string(),
            groups,
        })
    }

    /// The `<item/>` for a roster set (the tool), every value escaped.
    pub fn to_xml(&self) -> String {
        let mut s = format!("<item jid='{}'", escape_attr(&self.jid));
        if !self.name.is_empty() {
            s.push_str(&format!(" name='{}'", escape_attr(&self.name)));
        }
        if self.subscription == "remove" {
            s.push_str(" subscription='remove'");
        }
        if self.groups.is_empty() {
            s.push_str("/>");
        } else {
            s.push('>');
            for g in &self.groups {
                s.push_str(&format!("<group>{}</group>", escape_text(g)));
            }
            s.push_str("</item>");
        }
        s
    }
}

/// A roster set request (RFC 6121 §2.3/§2.5), one record line.
pub fn set_request(id: &str, item: &Item) -> String {
    format!(
        "<iq type='set' id='{}'><query xmlns='{NS}'>{}</query></iq>\n",
        escape_attr(id),
        item.to_xml()
    )
}

/// The roster get iqd sends on start.
pub fn get_request(id: &str) -> String {
    format!(
        "<iq type='get' id='{}'><query xmlns='{NS}'/></iq>\n",
        escape_attr(id)
    )
}

/// The cached roster, keyed by JID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    pub items: BTreeMap<String, Item>,
}

/// The largest `DIR/roster` read.
pub const FILE_MAX: u64 = 64 << 20;

/// The text of `DIR/roster` (a regular file, not through a symbolic link:
/// `sj::fifo::read_file`); empty when there is none yet.
pub fn read_file(dir: &sj::account::Dir) -> std::io::Result<String> {
    match sj::fifo::read_file(&dir.roster(), FILE_MAX) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

impl Roster {
    pub fn parse(text: &str) -> Roster {
        let mut r = Roster::default();
        for l in text.lines() {
            if let Some(i) = Item::parse_line(l) {
                r.items.insert(i.jid.clone(), i);
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for i in self.items.values() {
            s.push_str(&i.line());
            s.push('\n');
        }
        s
    }

    /// Replace everything with the items of a roster result's `<query/>`.
    pub fn replace(&mut self, query: &Element) {
        self.items.clear();
        for i in query.elements().filter_map(Item::from_element) {
            if i.subscription != "remove" {
                self.items.insert(i.jid.clone(), i);
            }
        }
    }

    /// Apply the items of a push: `remove` deletes, anything else replaces.
    pub fn apply_push(&mut self, query: &Element) {
        for i in query.elements().filter_map(Item::from_element) {
            if i.subscription == "remove" {
                self.items.remove(&i.jid);
            } else {
                self.items.insert(i.jid.clone(), i);
            }
        }
    }
}

/// Whether a roster push (RFC 6121 §2.1.6, CVE-2017-5589) or the result of
/// our roster get is believed: no `from`, or `from` is exactly the
/// account's bare JID, as the server sends them.
pub fn push_believed(from: Option<&str>, account: &Jid) -> bool {
    match from {
        None => true,
        Some(f) => match Jid::parse(f) {
            Ok(j) => j.is_bare() && j == account.bare(),
            Err(_) => false,
        },
    }
}

/// The `<query xmlns='jabber:iq:roster'/>` child of an iq, if any.
pub fn query<'e, 'a>(iq: &'e Element<'a>) -> Option<&'e Element<'a>> {
    iq.child("query", NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group or name with a line break (the roster tool takes any
    /// text) makes a one-line roster set that reads back the same.
    #[test]
    fn set_request_with_line_breaks_is_one_line() {
        let i = Item {
            jid: "carol@localhost".into(),
            subscription: "none".into(),
            name: "Carol\nC".into(),
            groups: vec!["Friends\r\nold".into()],
        };
        let s = set_request("r1", &i);
        assert_eq!(s.find('\n'), Some(s.len() - 1), "{s:?}");
        let e = Element::parse(s.as_bytes()).expect("parses");
        let item = query(&e)
            .and_then(|q| q.elements().next())
            .and_then(Item::from_element)
            .expect("item");
        assert_eq!(item, i);
    }

    #[test]
    fn line_format_round_trips() {
        let i = Item {
            jid: "carol@localhost".into(),
            subscription: "both".into(),
            name: "Carol\tC%".into(),
            groups: vec!["Friends".into(), "a,b".into()],
        };
        assert_eq!(
            i.line(),
            "carol@localhost\tboth\tCarol%09C%25\tFriends,a%2Cb"
        );
        assert_eq!(Item::parse_line(&i.line()), Some(i));
        let bare = Item::parse_line("d@x\tnone\t\t").expect("line");
        assert_eq!(bare.name, "");
        assert!(bare.groups.is_empty());
        assert_eq!(Item::parse_line(""), None);
    }

    #[test]
    fn cache_follows_result_and_pushes() {
        let mut r = Roster::default();
        let res = Element::parse(
            b"<iq type='result' id='iqd-roster-1'><query xmlns='jabber:iq:roster'>\
              <item jid='Bob@Localhost' subscription='both' name='Bob'><group>W</group></item>\
              <item jid='carol@localhost'/></query></iq>",
        )
        .expect("parse");
        r.replace(query(&res).expect("query"));
        assert_eq!(
            r.render(),
            "bob@localhost\tboth\tBob\tW\ncarol@localhost\tnone\t\t\n"
        );
        let push = Element::parse(
            b"<iq type='set' id='p'><query xmlns='jabber:iq:roster'>\
              <item jid='carol@localhost' subscription='remove'/></query></iq>",
        )
        .expect("parse");
        r.apply_push(query(&push).expect("query"));
        assert_eq!(r.render(), "bob@localhost\tboth\tBob\tW\n");
        assert_eq!(Roster::parse(&r.render()), r);
    }

    #[test]
    fn push_belief() {
        let me = Jid::parse("alice@localhost/sj-proxy").expect("jid");
        assert!(push_believed(None, &me));
        assert!(push_believed(Some("alice@localhost"), &me));
        assert!(push_believed(Some("Alice@LOCALHOST"), &me));
        assert!(!push_believed(Some("alice@localhost/other"), &me));
        assert!(!push_believed(Some("mallory@localhost"), &me));
        assert!(!push_believed(Some("localhost"), &me));
        assert!(!push_believed(Some(""), &me));
    }

    #[test]
    fn set_request_escapes() {
        let i = Item {
            jid: "c@x".into(),
            subscription: String::new(),
            name: "<O'Neil & co>".into(),
            groups: vec!["a<b".into()],
        };
        let s = set_request("roster-1-1", &i);
        let e = Element::parse(s.as_bytes()).expect("well-formed");
        let it = query(&e).and_then(|q| q.elements().next()).expect("item");
        assert_eq!(it.attr("name"), Some("<O'Neil & co>"));
        assert_eq!(
            it.elements().next().map(|g| g.text()).as_deref(),
            Some("a<b")
        );
        let rm = Item {
            jid: "c@x".into(),
            subscription: "remove".into(),
            ..Item::default()
        };
        assert!(set_request("r", &rm).contains("<item jid='c@x' subscription='remove'/>"));
    }
}
