//! The account's own entity capabilities (XEP-0115), for the server's PEP
//! (XEP-0163).
//!
//! The server sees one resource for all the clients, so the caps in the
//! account's presence must say what all of them can do: sj-proxy learns
//! each client's features by asking it (disco#info of the `node#ver` its
//! presence names, once per distinct hash), and puts its own `<c/>` in
//! every broadcast presence presenced sends up, with the XEP-0115 hash of
//! the union of the clients' features (their `+notify` interests too) and
//! a few of its own. When that union changes (a client comes, goes or
//! changes its caps) the last presence is sent again with the new hash;
//! the server's disco#info for `NODE#ver` is answered here. PEP events
//! then come to the upstream resource for any node one client wants, and
//! routing gives them to every client.
//!
//! It does not verify the clients' hashes (a client that lies about its
//! features only gets events it asked for), keep identities other than
//! its own, or touch directed presences.

use crate::route::{Dest, Origin, OWN_ID};
use sj::account::Account;
use sj::xml::{escape_attr, Edit, Element, Top};
use std::collections::{BTreeMap, BTreeSet};

const CAPS: &str = sj::ns::CAPS;
const DISCO_INFO: &str = sj::ns::DISCO_INFO;
/// sj-proxy's caps node (XEP-0115 §4: a URI naming the software).
pub const NODE: &str = "https://sj-proxy.invalid/caps";
/// The one identity advertised.
const IDENTITY: (&str, &str, &str) = ("client", "pc", "sj-proxy");
/// What sj-proxy and its daemons answer whatever the clients do.
const OWN_FEATURES: [&str; 6] = [
    DISCO_INFO,
    CAPS,
    sj::ns::PING,
    sj::ns::VERSION,
    sj::ns::TIME,
    sj::ns::LAST,
];
/// Ids of the disco#info queries sent to clients.
const QUERY_ID: &str = "caps-";
/// Features kept per client, and distinct hashes remembered.
const MAX_FEATURES: usize = 1000;
const MAX_KNOWN: usize = 256;

type Routed = Vec<(Dest, Vec<u8>)>;

#[derive(Debug, Default)]
pub struct Caps {
    /// Each client's `node#ver`, from its last presence with caps.
    clients: BTreeMap<String, String>,
    /// Features of each `node#ver` a client told us.
    known: BTreeMap<String, BTreeSet<String>>,
    /// Queries out: id -> (client, node#ver).
    pending: BTreeMap<String, (String, String)>,
    seq: u64,
    /// The last broadcast presence sent up, with our `<c/>` still to add.
    last: Option<Vec<u8>>,
    /// The hash last announced.
    announced: Option<String>,
}

/// XEP-0115 §5.1 verification string of one identity and `features`,
/// hashed with SHA-1 and written in base64.
pub fn ver(features: &BTreeSet<String>) -> String {
    use sha1::Digest as _;
    let (cat, ty, name) = IDENTITY;
    let mut s = format!("{cat}/{ty}//{name}<");
    // BTreeSet<String> iterates in byte order: i;octet, as §5.1 asks.
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    sj::sasl::b64encode(&sha1::Sha1::digest(s.as_bytes()))
}

/// `rec` without its top-level `<c xmlns='http://jabber.org/protocol/caps'/>`.
fn strip_caps(rec: &[u8]) -> Option<Vec<u8>> {
    let el = Element::parse(rec)?;
    let mut out = Vec::with_capacity(rec.len());
    let mut at = 0;
    for c in el
        .elements()
        .filter(|c| c.local_name() == "c" && c.ns == CAPS)
    {
        out.extend_from_slice(rec.get(at..c.span.start)?);
        at = c.span.end;
    }
    out.extend_from_slice(rec.get(at..)?);
    Some(out)
}

impl Caps {
    pub fn new() -> Caps {
        Caps::default()
    }

    /// The union of the connected clients' features and ours.
    fn features(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = OWN_FEATURES.iter().map(|f| f.to_string()).collect();
        for nv in self.clients.values() {
            if let Some(f) = self.known.get(nv) {
                all.extend(f.iter().cloned());
            }
        }
        all
    }

    fn element(&self, ver: &str) -> String {
        format!(
            "<c xmlns='{CAPS}' hash='sha-1' node='{NODE}' ver='{}'/>",
            escape_attr(ver)
        )
    }

    /// `presence` (without caps) with ours.
    fn with_ours(&mut self, presence: &[u8]) -> Option<Vec<u8>> {
        let v = ver(&self.features());
        let c = self.element(&v);
        let el = Element::parse(presence)?;
        let out = Top::parse(presence)?.rewrite(&[Edit::Child(&el, &c)]);
        self.announced = Some(v);
        Some(out)
    }

    /// The presence again when the hash changed since it was sent.
    fn reannounce(&mut self) -> Routed {
        let Some(last) = self.last.clone() else {
            return Vec::new();
        };
        if self.announced.as_deref() == Some(ver(&self.features()).as_str()) {
            return Vec::new();
        }
        match self.with_ours(&last) {
            Some(p) => vec![(Dest::Upstream, p)],
            None => Vec::new(),
        }
    }

    /// A record from a local origin, before routing: `Some` for a
    /// client's answer to one of our queries (consumed here).
    pub fn on_local(&mut self, origin: &Origin, rec: &[u8]) -> Option<Routed> {
        let Origin::Client(name) = origin else {
            return None;
        };
        if !rec.starts_with(b"<iq") {
            return None;
        }
        let top = Top::parse(rec)?;
        let id = top.attr("id")?;
        let (asked, nv) = self.pending.get(id.as_ref())?.clone();
        if asked != *name {
            return None;
        }
        self.pending.remove(id.as_ref());
        if top.attr("type").as_deref() == Some("result") {
            let el = Element::parse(rec)?;
            let feats: BTreeSet<String> = el
                .child("query", DISCO_INFO)
                .into_iter()
                .flat_map(|q| q.elements())
                .filter(|f| f.local_name() == "feature")
                .filter_map(|f| f.attr("var"))
                .take(MAX_FEATURES)
                .map(str::to_string)
                .collect();
            if self.known.len() >= MAX_KNOWN {
                self.known.pop_first();
            }
            self.known.insert(nv, feats);
        }
        Some(self.reannounce())
    }

    /// After routing decided `routed` for a local record: learn a client's
    /// caps from its presence (asking it for its features), and put ours
    /// in the account's presence on its way up.
    pub fn after_local(&mut self, acct: &Account, origin: &Origin, routed: Routed) -> Routed {
        let mut out = Routed::with_capacity(routed.len());
        let mut extra = Routed::new();
        for (d, r) in routed {
            match (&d, origin) {
                (Dest::Presenced, Origin::Client(name)) => {
                    extra.extend(self.client_presence(acct, name, &r))
                }
                (Dest::Upstream, Origin::Daemon) if is_broadcast_presence(&r) => {
                    if let Some(bare) = strip_caps(&r) {
                        let available = Top::parse(&bare).is_some_and(|t| t.attr("type").is_none());
                        if available {
                            self.last = Some(bare.clone());
                            if let Some(p) = self.with_ours(&bare) {
                                out.push((d, p));
                                continue;
                            }
                        } else {
                            self.last = None;
                            self.announced = None;
                        }
                    }
                }
                _ => {}
            }
            out.push((d, r));
        }
        out.extend(extra);
        out
    }

    /// A client's broadcast presence: its caps, asked about when new.
    fn client_presence(&mut self, acct: &Account, name: &str, rec: &[u8]) -> Routed {
        let Some(el) = Element::parse(rec) else {
            return Vec::new();
        };
        if el.attr("type") == Some("unavailable") {
            return self.client_left(name);
        }
        let Some(c) = el.child("c", CAPS) else {
            return Vec::new();
        };
        let (Some(node), Some(v)) = (c.attr("node"), c.attr("ver")) else {
            return Vec::new();
        };
        let nv = format!("{node}#{v}");
        if self.clients.get(name) == Some(&nv) {
            return Vec::new();
        }
        self.clients.insert(name.to_string(), nv.clone());
        if self.known.contains_key(&nv) {
            return self.reannounce();
        }
        if self.pending.values().any(|(_, p)| *p == nv) {
            return Vec::new();
        }
        self.seq += 1;
        let id = format!("{OWN_ID}{QUERY_ID}{}", self.seq);
        self.pending.retain(|_, (n, _)| n != name);
        self.pending
            .insert(id.clone(), (name.to_string(), nv.clone()));
        let q = format!(
            "<iq type='get' id='{id}' from='{}' to='{}'><query xmlns='{DISCO_INFO}' node='{}'/></iq>\n",
            escape_attr(acct.full()),
            escape_attr(&acct.client_jid(name)),
            escape_attr(&nv),
        );
        vec![(Dest::Mirror, q.into_bytes())]
    }

    /// A client went away: its features no longer count.
    pub fn client_left(&mut self, name: &str) -> Routed {
        self.pending.retain(|_, (n, _)| n != name);
        if self.clients.remove(name).is_none() {
            return Vec::new();
        }
        self.reannounce()
    }

    /// A record from the server: the disco#info of our node is answered
    /// here.
    pub fn on_upstream(&self, rec: &[u8], routed: Routed) -> Routed {
        if !rec.starts_with(b"<iq") || memchr::memmem::find(rec, NODE.as_bytes()).is_none() {
            return routed;
        }
        let Some(el) = Element::parse(rec) else {
            return routed;
        };
        let Some(q) = el.child("query", DISCO_INFO) else {
            return routed;
        };
        let node = q.attr("node").unwrap_or_default();
        if el.attr("type") != Some("get") || !node.starts_with(NODE) {
            return routed;
        }
        let (cat, ty, name) = IDENTITY;
        let mut answer = format!(
            "<iq type='result' id='{}'",
            escape_attr(el.attr("id").unwrap_or_default())
        );
        if let Some(from) = el.attr("from") {
            answer.push_str(&format!(" to='{}'", escape_attr(from)));
        }
        answer.push_str(&format!(
            "><query xmlns='{DISCO_INFO}' node='{}'><identity category='{cat}' type='{ty}' name='{name}'/>",
            escape_attr(node)
        ));
        for f in self.features() {
            answer.push_str(&format!("<feature var='{}'/>", escape_attr(&f)));
        }
        answer.push_str("</query></iq>\n");
        vec![(Dest::Upstream, answer.into_bytes())]
    }
}

/// A presence with no `to`: the account's broadcast presence.
fn is_broadcast_presence(rec: &[u8]) -> bool {
    rec.starts_with(b"<presence") && Top::parse(rec).is_some_and(|t| t.attr("to").is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> Account {
        let jid = sj::jid::Jid::parse("alice@localhost/sj").expect("jid");
        Account::new(&jid, sj::account::Dir::new("/nonexistent"))
    }

    #[test]
    fn xep_0115_example_hash() {
        // XEP-0115 §5.2's simple example, with its identity.
        let mut s = String::from("client/pc//Exodus 0.9.1<");
        for f in [
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/muc",
        ] {
            s.push_str(f);
            s.push('<');
        }
        use sha1::Digest as _;
        let v = sj::sasl::b64encode(&sha1::Sha1::digest(s.as_bytes()));
        assert_eq!(v, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn union_of_clients_announced_and_answered() {
        let a = acct();
        let mut c = Caps::new();
        let gajim = Origin::Client("gajim".into());
        let pres = b"<presence from='alice@localhost/gajim'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://g' ver='v1='/></presence>\n";
        let out = c.after_local(&a, &gajim, vec![(Dest::Presenced, pres.to_vec())]);
        assert_eq!(out.len(), 2, "{out:?}");
        let q = String::from_utf8_lossy(&out[1].1).to_string();
        assert!(
            q.contains("node='http://g#v1='") && q.contains("to='alice@localhost/gajim'"),
            "{q}"
        );
        // presenced sends the account presence: our caps replace the client's.
        let up = b"<presence><priority>1</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://g' ver='v1='/></presence>\n";
        let out = c.after_local(&a, &Origin::Daemon, vec![(Dest::Upstream, up.to_vec())]);
        let sent = String::from_utf8_lossy(&out[0].1).to_string();
        assert!(sent.contains(NODE) && !sent.contains("http://g"), "{sent}");
        let before = ver(&c.features());
        // The client answers: the union grows, the presence goes again.
        let id = c.pending.keys().next().expect("pending").clone();
        let ans = format!("<iq type='result' id='{id}' to='alice@localhost/sj'><query xmlns='{DISCO_INFO}' node='http://g#v1='><feature var='urn:xmpp:omemo:2:devices+notify'/></query></iq>\n");
        let out = c.on_local(&gajim, ans.as_bytes()).expect("consumed");
        assert_eq!(out.len(), 1);
        let again = String::from_utf8_lossy(&out[0].1).to_string();
        assert!(again.contains("<priority>1</priority>"));
        let after = ver(&c.features());
        assert_ne!(before, after);
        assert!(again.contains(&after));
        // The server asks about our node: the union, answered here.
        let q = format!("<iq type='get' id='d1' from='localhost'><query xmlns='{DISCO_INFO}' node='{NODE}#{after}'/></iq>\n");
        let out = c.on_upstream(q.as_bytes(), vec![(Dest::Iqd, Vec::new())]);
        let r = String::from_utf8_lossy(&out[0].1).to_string();
        assert_eq!(out[0].0, Dest::Upstream);
        assert!(
            r.contains("urn:xmpp:omemo:2:devices+notify") && r.contains("id='d1'"),
            "{r}"
        );
        // The client goes: announced again without its features.
        let out = c.client_left("gajim");
        assert!(String::from_utf8_lossy(&out[0].1).contains(&before));
    }
}
