//! What the server sends because one client asked, and what it sends for
//! all of them.
//!
//! - XEP-0313 archive results (`<message><result queryid='Q'>`) are
//!   answers to one client's query, as an iq result is: they go to the
//!   client whose query named `Q`, addressed to it, and to no other
//!   client (a client that gets results it did not ask for logs them as
//!   unknown or shows them as new messages). A result nobody here asked
//!   for reaches no client. The query ids are remembered per client as the
//!   queries go up (the iq's own id is tagged as usual, `route::tag_id`).
//! - XEP-0191 block-list pushes (`<iq type='set'>` with `<block/>` or
//!   `<unblock/>` from the account) concern every client: they are
//!   answered upstream once, here, and reach every client, as roster
//!   pushes do (iqd would hand them to one client only).
//!
//! It does not look inside the results, nor change what the server sees
//! of a query.

use crate::route::{Dest, Origin};
use memchr::memmem::Finder;
use sj::account::Account;
use sj::xml::{escape_attr, Edit, Element, Top};
use std::collections::VecDeque;
use std::sync::LazyLock;

const MAM: [&str; 2] = ["urn:xmpp:mam:2", "urn:xmpp:mam:1"];
const BLOCKING: &str = "urn:xmpp:blocking";
/// What both archive namespaces start with, searched for in every message
/// from the server: built once (a `memmem::find` builds its searcher per
/// call, which costs more than the search).
static MAM_ANY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("urn:xmpp:mam:"));
/// Query ids remembered; the oldest are forgotten first.
const MAX_QUERIES: usize = 256;

type Routed = Vec<(Dest, Vec<u8>)>;

#[derive(Debug, Default)]
pub struct Queries {
    /// (query id, client name), newest last.
    asked: VecDeque<(String, String)>,
}

/// The archive query element of an iq, if it is one.
fn mam_child<'e, 'a>(el: &'e Element<'a>, name: &str) -> Option<&'e Element<'a>> {
    MAM.iter().find_map(|ns| el.child(name, ns))
}

impl Queries {
    pub fn new() -> Queries {
        Queries::default()
    }

    /// A record from a local origin, on its way: remember the query id of
    /// a client's archive query.
    pub fn on_local(&mut self, origin: &Origin, rec: &[u8]) {
        let Origin::Client(name) = origin else {
            return;
        };
        if !rec.starts_with(b"<iq") || MAM_ANY.find(rec).is_none() {
            return;
        }
        let Some(el) = Element::parse(rec) else {
            return;
        };
        if el.attr("type") != Some("set") {
            return;
        }
        let Some(qid) = mam_child(&el, "query").and_then(|q| q.attr("queryid")) else {
            return;
        };
        self.asked.retain(|(q, n)| !(q == qid && n == name));
        if self.asked.len() >= MAX_QUERIES {
            self.asked.pop_front();
        }
        self.asked.push_back((qid.to_string(), name.clone()));
    }

    /// Who asked the query `qid` (the newest asker when two used it).
    fn asker(&self, qid: &str) -> Option<&str> {
        self.asked
            .iter()
            .rev()
            .find(|(q, _)| q == qid)
            .map(|(_, n)| n.as_str())
    }

    /// A record from the server, after routing decided `routed`.
    pub fn on_upstream(&mut self, acct: &Account, rec: &[u8], routed: Routed) -> Routed {
        if rec.starts_with(b"<message") && MAM_ANY.find(rec).is_some() {
            return self.archive_result(acct, rec, routed);
        }
        if rec.starts_with(b"<iq") && contains(rec, BLOCKING.as_bytes()) {
            return block_push(acct, rec).unwrap_or(routed);
        }
        routed
    }

    fn archive_result(&mut self, acct: &Account, rec: &[u8], routed: Routed) -> Routed {
        let Some(el) = Element::parse(rec) else {
            return routed;
        };
        let Some(qid) = mam_child(&el, "result").and_then(|r| r.attr("queryid")) else {
            return routed;
        };
        let mut out: Routed = routed
            .into_iter()
            .filter(|(d, _)| *d != Dest::Mirror)
            .collect();
        match self.asker(qid) {
            Some(name) => {
                let to = acct.client_jid(name);
                if let Some(top) = Top::parse(rec) {
                    out.push((Dest::Mirror, top.rewrite(&[Edit::Set("to", &to)])));
                }
            }
            None if sj::log::verbose() => sj::log::info(&format!(
                "archive result for query {qid:?}, which no client asked: not mirrored"
            )),
            None => {}
        }
        out
    }
}

/// A block-list push from the account: the answer to the server, and the
/// push for every client.
fn block_push(acct: &Account, rec: &[u8]) -> Option<Routed> {
    let el = Element::parse(rec)?;
    if el.attr("type") != Some("set") {
        return None;
    }
    if let Some(from) = el.attr("from") {
        if !acct.is_bare(from) {
            return None;
        }
    }
    if el.child("block", BLOCKING).is_none() && el.child("unblock", BLOCKING).is_none() {
        return None;
    }
    let id = el.attr("id").unwrap_or_default();
    let mut answer = format!("<iq type='result' id='{}'", escape_attr(id));
    if let Some(from) = el.attr("from") {
        answer.push_str(&format!(" to='{}'", escape_attr(from)));
    }
    answer.push_str("/>\n");
    Some(vec![
        (Dest::Upstream, answer.into_bytes()),
        (Dest::Mirror, rec.to_vec()),
    ])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> Account {
        let jid = sj::jid::Jid::parse("alice@localhost/sj").expect("jid");
        Account::new(&jid, sj::account::Dir::new("/nonexistent"))
    }

    fn mirrors(r: &Routed) -> Vec<String> {
        r.iter()
            .filter(|(d, _)| *d == Dest::Mirror)
            .filter_map(|(_, b)| Top::parse(b)?.attr("to").map(|t| t.into_owned()))
            .collect()
    }

    #[test]
    fn archive_results_go_to_the_asker_only() {
        let mut q = Queries::new();
        let ask = b"<iq type='set' id='q1' to='room@muc.localhost'><query xmlns='urn:xmpp:mam:2' queryid='abc'/></iq>\n";
        q.on_local(&Origin::Client("gajim".into()), ask);
        let res = b"<message from='room@muc.localhost' to='alice@localhost/sj'><result xmlns='urn:xmpp:mam:2' queryid='abc' id='1'/></message>\n";
        let routed = vec![(Dest::Messaged, res.to_vec()), (Dest::Mirror, res.to_vec())];
        let out = q.on_upstream(&acct(), res, routed);
        assert_eq!(mirrors(&out), vec!["alice@localhost/gajim".to_string()]);
        assert_eq!(out[0].0, Dest::Messaged);
        // Nobody asked: nobody gets it.
        let other = b"<message from='room@muc.localhost'><result xmlns='urn:xmpp:mam:2' queryid='zzz' id='1'/></message>\n";
        let routed = vec![(Dest::Mirror, other.to_vec())];
        assert!(mirrors(&q.on_upstream(&acct(), other, routed)).is_empty());
        // A raw client's query counts the same; DIR/in's is nobody's.
        q.on_local(&Origin::In, &ask.replace_all("abc", "in1"));
    }

    trait ReplaceAll {
        fn replace_all(&self, a: &str, b: &str) -> Vec<u8>;
    }
    impl ReplaceAll for [u8] {
        fn replace_all(&self, a: &str, b: &str) -> Vec<u8> {
            String::from_utf8_lossy(self).replace(a, b).into_bytes()
        }
    }

    #[test]
    fn block_push_answered_once_and_broadcast() {
        let mut q = Queries::new();
        let push = b"<iq type='set' id='b1' from='alice@localhost' to='alice@localhost/sj'><block xmlns='urn:xmpp:blocking'><item jid='eve@localhost'/></block></iq>\n";
        let out = q.on_upstream(&acct(), push, vec![(Dest::Iqd, push.to_vec())]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, Dest::Upstream);
        assert!(String::from_utf8_lossy(&out[0].1).contains("type='result' id='b1'"));
        assert_eq!(out[1], (Dest::Mirror, push.to_vec()));
        // From someone else: not a push.
        let forged = push.replace_all("from='alice@localhost'", "from='eve@localhost'");
        let out = q.on_upstream(&acct(), &forged, vec![(Dest::Iqd, forged.clone())]);
        assert_eq!(out, vec![(Dest::Iqd, forged)]);
    }
}
