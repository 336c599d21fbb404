//! The routing table of DESIGN §5 as pure functions on records.
//!
//! Nothing here does I/O: the event loop asks where a record goes and gets
//! back a list of destinations with the (possibly edited) bytes for each.

use memchr::memmem::Finder;
use sj::account::Account;
use sj::ns;
use sj::xml::{Edit, Element, Top};
use std::sync::LazyLock;

/// Where a record may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Upstream,
    Messaged,
    Presenced,
    Iqd,
    /// mirrord, to be fanned out (or targeted by its `to`).
    Mirror,
    /// Consumed by sj-proxy itself (replies to its own requests).
    Own,
    /// Refused, with the reason for the log.
    Drop(String),
}

/// Who wrote a record that is not from upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// One of the daemons (messaged, presenced, iqd).
    Daemon,
    /// `DIR/in`.
    In,
    /// `DIR/clients/NAME/out`.
    Client(String),
}

/// The name `DIR/in` stamps as its origin (reserved: never a client name).
pub const IN_ORIGIN: &str = "in";

/// Prefix of ids sj-proxy uses for its own requests.
pub const OWN_ID: &str = "sjp-";

/// The largest stanza the server takes, counted as it reads it: 256 KiB,
/// the default of Prosody (`c2s_stanza_size_limit`) and ejabberd
/// (`max_stanza_size`). One larger would make it close the stream, and so
/// end the session of every client.
pub const SERVER_MAX: usize = sj::framer::Limits::DEFAULT.max_record;

/// The account's rules as routing asks them (`sj::account::Account`).
trait Own {
    /// Is `jid` the account's own bare JID?
    fn is_own_bare(&self, jid: Option<&str>) -> bool;
    /// The `from` stamped on a record of `origin`.
    fn origin_jid(&self, origin: &Origin) -> String;
}

impl Own for Account {
    fn is_own_bare(&self, jid: Option<&str>) -> bool {
        jid.is_some_and(|j| self.is_bare(j))
    }

    fn origin_jid(&self, origin: &Origin) -> String {
        match origin {
            Origin::Daemon => self.full().to_string(),
            Origin::In => self.client_jid(IN_ORIGIN),
            Origin::Client(n) => self.client_jid(n),
        }
    }
}

/// Tag an iq id so its answer comes back to client `name` only.
pub fn tag_id(name: &str, id: &str) -> String {
    let mut s = String::with_capacity(4 + name.len() * 2 + id.len());
    s.push_str("sj.");
    for b in name.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('.');
    s.push_str(id);
    s
}

/// Undo `tag_id`: (client name, original id).
pub fn untag_id(id: &str) -> Option<(String, &str)> {
    let rest = id.strip_prefix("sj.")?;
    let (hex, orig) = rest.split_once('.')?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(2) {
        bytes.push(u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()?);
    }
    Some((String::from_utf8(bytes).ok()?, orig))
}

/// Searchers for the namespaces asked about per record, built once:
/// memmem::find builds one per call, which cost more than searching a chat
/// message (7% of sj-proxy's time in the pipeline bench).
type Searcher = LazyLock<Finder<'static>>;
static CARBONS: Searcher = LazyLock::new(|| Finder::new(ns::CARBONS));
static ROSTER: Searcher = LazyLock::new(|| Finder::new(ns::ROSTER));
static PING: Searcher = LazyLock::new(|| Finder::new(ns::PING));

/// Does `hay` mention the namespace `ns` searches for?
fn mentions(hay: &[u8], ns: &Searcher) -> bool {
    ns.find(hay).is_some()
}

/// Does the record carry a carbon (`<sent/>` or `<received/>` in
/// `urn:xmpp:carbons:2`) as a direct child?
fn carbon_child(el: &Element) -> bool {
    el.elements()
        .any(|c| c.ns == ns::CARBONS && matches!(c.local_name(), "sent" | "received"))
}

/// Routing of a record that came from upstream.
pub fn from_upstream(acct: &Account, rec: &[u8]) -> Vec<(Dest, Vec<u8>)> {
    let Some(top) = Top::parse(rec) else {
        return drop("unexpected <> from the server".into());
    };
    let name = top.name();
    // The control contact lives in sj-c2s and never on the server: anything
    // the server sends in its name (a bounce of a stanza that leaked, or a
    // forgery) would reach clients as if the proxy had said it.
    if let Some(from) = top.attr("from").filter(|f| sj::jid::is_control(f)) {
        return drop(format!(
            "<{name}> from {from} (the control contact) from the server"
        ));
    }
    match name {
        "message" => {
            if mentions(rec, &CARBONS) {
                if let Some(el) = Element::parse(rec) {
                    if carbon_child(&el) && !acct.is_own_bare(el.attr("from")) {
                        let from = el.attr("from").unwrap_or("(none)");
                        return drop(format!("forged carbon from {from}"));
                    }
                }
            }
            vec![(Dest::Messaged, rec.to_vec()), (Dest::Mirror, rec.to_vec())]
        }
        "presence" => vec![
            (Dest::Presenced, rec.to_vec()),
            (Dest::Mirror, rec.to_vec()),
        ],
        "iq" => from_upstream_iq(acct, &top),
        _ => drop(format!("unexpected <{name}> from the server")),
    }
}

/// Refused, with the reason for the log.
fn drop(why: String) -> Vec<(Dest, Vec<u8>)> {
    vec![(Dest::Drop(why), Vec::new())]
}

fn from_upstream_iq(acct: &Account, top: &Top<'_>) -> Vec<(Dest, Vec<u8>)> {
    let rec = top.record();
    let ty = top.attr("type").unwrap_or_default();
    let id = top.attr("id").unwrap_or_default();
    match &*ty {
        "result" | "error" => {
            if id.starts_with(OWN_ID) {
                return vec![(Dest::Own, rec.to_vec())];
            }
            if let Some((client, orig)) = untag_id(&id) {
                let to = acct.client_jid(&client);
                let r = top.rewrite(&[Edit::Set("id", orig), Edit::Set("to", &to)]);
                return vec![(Dest::Mirror, r)];
            }
            vec![(Dest::Iqd, rec.to_vec())]
        }
        "get" | "set" => {
            let from = top.attr("from");
            if ty == "set" && mentions(rec, &ROSTER) {
                let is_push =
                    Element::parse(rec).is_some_and(|e| e.child("query", ns::ROSTER).is_some());
                if is_push && (from.is_none() || acct.is_own_bare(from.as_deref())) {
                    return vec![(Dest::Iqd, rec.to_vec()), (Dest::Mirror, rec.to_vec())];
                }
            }
            if ty == "get" && mentions(rec, &PING) {
                let from_server = match from.as_deref() {
                    None => true,
                    Some(f) => f == acct.domain() || acct.is_own_bare(Some(f)),
                };
                if from_server {
                    return vec![(Dest::Own, rec.to_vec())];
                }
            }
            vec![(Dest::Iqd, rec.to_vec())]
        }
        _ => drop(format!("iq with type '{ty}' from the server")),
    }
}

/// XEP-0280 §6: would the server copy this message to other resources?
pub fn carbon_copyable(el: &Element) -> bool {
    if el.child("private", ns::CARBONS).is_some() || el.child("no-copy", ns::HINTS).is_some() {
        return false;
    }
    match el.attr("type").unwrap_or("normal") {
        "chat" => true,
        "normal" => {
            el.child("body", ns::CLIENT).is_some()
                || el
                    .elements()
                    .any(|c| [ns::RECEIPTS, ns::MARKERS, ns::CHATSTATES].contains(&&*c.ns))
        }
        _ => false,
    }
}

/// The XEP-0280 sent copy of message `msg`, stamped with its origin `from`.
pub fn sent_copy(acct: &Account, msg: &Top<'_>, from: &str) -> Vec<u8> {
    let mut edits = vec![Edit::Set("from", from)];
    if msg.attr("xmlns").is_none() {
        edits.push(Edit::Set("xmlns", ns::CLIENT));
    }
    let inner = msg.rewrite(&edits);
    let inner = inner.strip_suffix(b"\n").unwrap_or(&inner);
    let mut out = Vec::with_capacity(inner.len() + 256);
    out.extend_from_slice(
        format!(
            "<message from='{}' to='{}' type='chat'><sent xmlns='{}'><forwarded xmlns='{}'>",
            sj::xml::escape_attr(acct.bare()),
            sj::xml::escape_attr(acct.full()),
            ns::CARBONS,
            ns::FORWARD,
        )
        .as_bytes(),
    );
    out.extend_from_slice(inner);
    out.extend_from_slice(b"</forwarded></sent></message>\n");
    out
}

/// Routing of a record from a daemon, `DIR/in` or a client. `clients`
/// tells whether a name is a connected client.
pub fn from_local(
    acct: &Account,
    origin: &Origin,
    rec: &[u8],
    is_client: impl Fn(&str) -> bool,
) -> Vec<(Dest, Vec<u8>)> {
    let top = Top::parse(rec);
    let name = top.as_ref().map_or("", |t| t.name());
    let top = match top {
        Some(t) if matches!(name, "message" | "presence" | "iq") => t,
        _ => return drop(format!("<{name}> is not a stanza")),
    };
    // Records imply jabber:client; one in another namespace is no stanza,
    // and the server would end the whole session over it
    // (unsupported-stanza-type from Prosody).
    if let Some(ns) = top.attr("xmlns").filter(|ns| ns != ns::CLIENT) {
        return drop(format!("<{name}> in {ns} is not a stanza"));
    }
    // The control contact answers in sj-c2s and is never on the server: a
    // stanza to it from a raw client, DIR/in or a daemon would go upstream
    // (and into the out log as a sent message) for nothing.
    if let Some(to) = top.attr("to").filter(|t| sj::jid::is_control(t)) {
        return drop(format!(
            "<{name}> to {to} (the control contact) from {}: it answers clients of sj-c2s only",
            who(origin)
        ));
    }
    let origin_jid = acct.origin_jid(origin);
    // The id the sender knows, should the stanza come back as an error,
    // and the tagged one that brings the answer back to it.
    let (sent_id, tagged) = match client_request_id(origin, &top) {
        Some((id, tagged)) => (Some(id), Some(tagged)),
        None => (None, None),
    };
    let retag = tagged.as_deref().map(|t| Edit::Set("id", t));
    // Origin stamp: what a client says about itself is never believed.
    let stamp = match origin {
        Origin::Client(_) | Origin::In => Some(Edit::Set("from", &origin_jid)),
        Origin::Daemon => None,
    };
    let here = || top.rewrite(&[stamp, retag].into_iter().flatten().collect::<Vec<_>>());
    let to = top.attr("to");
    // Another resource of the account that is not a client here (a device
    // connected to the server directly) is reached through the server.
    if let Some(target) = to.as_deref().and_then(|t| acct.client_of(t)) {
        if is_client(target) {
            return vec![(Dest::Mirror, here())];
        }
    }
    if name == "presence" && to.is_none() {
        if let Origin::Client(_) = origin {
            return vec![(Dest::Presenced, here())];
        }
    }
    // Literal line breaks toward the server: as long as the sender wrote
    // it, which is what the server's limit counts.
    let up_edits: Vec<Edit<'_>> = [Some(Edit::Remove("from")), retag]
        .into_iter()
        .flatten()
        .collect();
    let upstream = sj::framer::wire_form(top.rewrite(&up_edits));
    let size = upstream.strip_suffix(b"\n").unwrap_or(&upstream).len();
    if size > SERVER_MAX {
        return too_large(acct, origin, name, sent_id, &top, size);
    }
    let mut out = vec![(Dest::Upstream, upstream)];
    if name == "message" && Element::parse(rec).is_some_and(|el| carbon_copyable(&el)) {
        let copy = sent_copy(acct, &top, &origin_jid);
        out.push((Dest::Messaged, copy.clone()));
        out.push((Dest::Mirror, copy));
    }
    out
}

/// For an iq request from a client: its id, and the id tagged with the
/// client's name (`tag_id`) it goes upstream with.
fn client_request_id(origin: &Origin, top: &Top<'_>) -> Option<(String, String)> {
    let Origin::Client(client) = origin else {
        return None;
    };
    if top.name() != "iq" || !matches!(top.attr("type").as_deref(), Some("get" | "set")) {
        return None;
    }
    let id = top.attr("id").unwrap_or_default().into_owned();
    let tagged = tag_id(client, &id);
    Some((id, tagged))
}

/// The sender of a local record, for log lines.
fn who(origin: &Origin) -> String {
    match origin {
        Origin::Daemon => "a daemon".to_string(),
        Origin::In => "DIR/in".to_string(),
        Origin::Client(n) => format!("client {n}"),
    }
}

/// A stanza too large for the server is never sent (DESIGN §8): refused
/// with a log line, and a client that sent it gets a policy-violation
/// error (RFC 6120 §8.3.3.12), unless it was an error itself (§8.3.1).
fn too_large(
    acct: &Account,
    origin: &Origin,
    name: &str,
    sent_id: Option<String>,
    top: &Top<'_>,
    size: usize,
) -> Vec<(Dest, Vec<u8>)> {
    let why = format!(
        "policy-violation: a <{name}> of {size} bytes from {}, the server takes at most {SERVER_MAX}",
        who(origin)
    );
    let mut out = drop(why);
    let is_error = top.attr("type").as_deref() == Some("error");
    if let (Origin::Client(_), false) = (origin, is_error) {
        let mut e = format!("<{name} type='error'");
        if let Some(id) = sent_id.or_else(|| top.attr("id").map(|i| i.into_owned())) {
            e.push_str(&format!(" id='{}'", sj::xml::escape_attr(&id)));
        }
        if let Some(to) = top.attr("to") {
            e.push_str(&format!(" from='{}'", sj::xml::escape_attr(&to)));
        }
        e.push_str(&format!(
            " to='{}'><error type='modify'><policy-violation xmlns='{stanzas}'/>\
             <text xmlns='{stanzas}'>stanza of {size} bytes; the server takes at most \
             {SERVER_MAX}</text></error></{name}>\n",
            sj::xml::escape_attr(&acct.origin_jid(origin)),
            stanzas = ns::STANZAS,
        ));
        out.push((Dest::Mirror, e.into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A top-level attribute of a routed record.
    fn attr(rec: &[u8], name: &str) -> Option<String> {
        Top::parse(rec)?.attr(name).map(|v| v.into_owned())
    }

    fn acct() -> Account {
        let jid = sj::jid::Jid::parse("alice@localhost/sj").expect("jid");
        Account::new(&jid, sj::account::Dir::new("/nonexistent"))
    }

    fn dests(v: &[(Dest, Vec<u8>)]) -> Vec<Dest> {
        v.iter().map(|(d, _)| d.clone()).collect()
    }

    #[test]
    fn tags_round_trip_any_name_and_id() {
        for (n, i) in [
            ("laptop", "abc"),
            ("a.b", "x.y.z"),
            ("é/..", ""),
            ("x", "sj.00.q"),
        ] {
            let t = tag_id(n, i);
            assert_eq!(untag_id(&t), Some((n.to_string(), i)));
        }
        assert_eq!(untag_id("sj.zz.a"), None);
        assert_eq!(untag_id("other"), None);
    }

    #[test]
    fn upstream_message_goes_to_messaged_and_mirror() {
        let r = b"<message from='bob@localhost/x' to='alice@localhost/sj' type='chat'><body>hi</body></message>\n";
        assert_eq!(
            dests(&from_upstream(&acct(), r)),
            vec![Dest::Messaged, Dest::Mirror]
        );
    }

    #[test]
    fn forged_carbon_is_dropped_own_is_kept() {
        let forged = b"<message from='bob@localhost/x' to='alice@localhost/sj'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/y' to='carol@localhost'><body>lie</body></message></forwarded></sent></message>\n";
        assert!(matches!(from_upstream(&acct(), forged)[0].0, Dest::Drop(_)));
        let own = b"<message from='Alice@LocalHost' to='alice@localhost/sj'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@localhost/y' to='alice@localhost/z'><body>ok</body></message></forwarded></received></message>\n";
        assert_eq!(
            dests(&from_upstream(&acct(), own)),
            vec![Dest::Messaged, Dest::Mirror]
        );
    }

    #[test]
    fn tagged_result_goes_back_to_its_client_only() {
        let id = tag_id("laptop", "r1");
        let r = format!("<iq type='result' id='{id}' to='alice@localhost/sj'/>\n");
        let out = from_upstream(&acct(), r.as_bytes());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Dest::Mirror);
        assert_eq!(attr(&out[0].1, "id").as_deref(), Some("r1"));
        assert_eq!(
            attr(&out[0].1, "to").as_deref(),
            Some("alice@localhost/laptop")
        );
    }

    #[test]
    fn roster_push_believed_only_from_own_account() {
        let push = b"<iq type='set' id='p1' to='alice@localhost/sj'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>\n";
        assert_eq!(
            dests(&from_upstream(&acct(), push)),
            vec![Dest::Iqd, Dest::Mirror]
        );
        let forged = b"<iq type='set' id='p1' from='bob@localhost/x'><query xmlns='jabber:iq:roster'><item jid='eve@localhost'/></query></iq>\n";
        assert_eq!(dests(&from_upstream(&acct(), forged)), vec![Dest::Iqd]);
    }

    #[test]
    fn server_ping_is_ours_contact_ping_is_iqds() {
        let p = b"<iq type='get' id='s1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>\n";
        assert_eq!(dests(&from_upstream(&acct(), p)), vec![Dest::Own]);
        let p =
            b"<iq type='get' id='s1' from='bob@localhost/x'><ping xmlns='urn:xmpp:ping'/></iq>\n";
        assert_eq!(dests(&from_upstream(&acct(), p)), vec![Dest::Iqd]);
    }

    #[test]
    fn client_message_goes_up_once_with_sent_copy() {
        let rec =
            b"<message to='bob@localhost' type='chat' from='evil@x'><body>hi</body></message>\n";
        let out = from_local(&acct(), &Origin::Client("a".into()), rec, |_| true);
        assert_eq!(
            dests(&out),
            vec![Dest::Upstream, Dest::Messaged, Dest::Mirror]
        );
        assert_eq!(attr(&out[0].1, "from"), None, "no from toward the server");
        let copy = Element::parse(&out[2].1).expect("copy parses");
        assert_eq!(copy.attr("from"), Some("alice@localhost"));
        let inner = copy
            .child("sent", ns::CARBONS)
            .and_then(|s| s.child("forwarded", ns::FORWARD))
            .and_then(|f| f.child("message", "jabber:client"))
            .expect("inner message");
        assert_eq!(inner.attr("from"), Some("alice@localhost/a"));
        assert_eq!(inner.attr("to"), Some("bob@localhost"));
    }

    /// A chat message whose body is `n` times `unit`, as a client's record.
    fn long_message(unit: &str, n: usize) -> Vec<u8> {
        format!(
            "<message to='bob@localhost' type='chat' id='m1'><body>{}</body></message>\n",
            unit.repeat(n)
        )
        .into_bytes()
    }

    #[test]
    fn multi_line_message_goes_up_as_long_as_it_was_sent() {
        // 120 KB as typed, 360 KB as a record with `&#10;`.
        let rec = long_message("x&#10;", 60_000);
        assert!(rec.len() > SERVER_MAX);
        let out = from_local(&acct(), &Origin::Client("a".into()), &rec, |_| true);
        assert_eq!(
            dests(&out),
            vec![Dest::Upstream, Dest::Messaged, Dest::Mirror]
        );
        let up = &out[0].1;
        assert!(up.len() < 121_000, "{}", up.len());
        assert_eq!(up.iter().filter(|&&b| b == b'\n').count(), 60_001);
        // Same body for the server and in the sent copy.
        let body = |r: &[u8], copy: bool| {
            let el = Element::parse(r).expect("parses");
            let el = if copy {
                el.child("sent", ns::CARBONS)
                    .and_then(|s| s.child("forwarded", ns::FORWARD))
                    .and_then(|f| f.child("message", "jabber:client"))
                    .expect("inner")
                    .clone()
            } else {
                el
            };
            el.child("body", "jabber:client").expect("body").text()
        };
        assert_eq!(body(up, false), "x\n".repeat(60_000));
        assert_eq!(body(&out[2].1, true), body(up, false));
        // Internally the copy stays one line.
        assert!(!out[2].1[..out[2].1.len() - 1].contains(&b'\n'));
    }

    #[test]
    fn too_large_for_the_server_refused_with_an_error_to_the_client() {
        // Exactly SERVER_MAX bytes as written upstream go; one more does not.
        let envelope = long_message("", 0).len() - 1;
        let fits = long_message("y", SERVER_MAX - envelope);
        let out = from_local(&acct(), &Origin::Client("a".into()), &fits, |_| true);
        assert_eq!(out[0].0, Dest::Upstream);
        assert_eq!(out[0].1.len() - 1, SERVER_MAX);
        let over = long_message("y", SERVER_MAX - envelope + 1);
        let out = from_local(&acct(), &Origin::Client("a".into()), &over, |_| true);
        assert_eq!(out.len(), 2, "refused, no copies: {:?}", dests(&out));
        assert!(matches!(&out[0].0, Dest::Drop(why) if why.contains("client a")));
        assert_eq!(out[1].0, Dest::Mirror);
        let e = Element::parse(&out[1].1).expect("error parses");
        assert_eq!(e.name, "message");
        assert_eq!(e.attr("type"), Some("error"));
        assert_eq!(e.attr("id"), Some("m1"));
        assert_eq!(e.attr("to"), Some("alice@localhost/a"));
        assert_eq!(e.attr("from"), Some("bob@localhost"));
        let err = e.child("error", "jabber:client").expect("error child");
        assert_eq!(err.attr("type"), Some("modify"));
        assert!(err.child("policy-violation", ns::STANZAS).is_some());
        // An iq gets its own id back, not the tagged one.
        let iq = format!(
            "<iq type='set' id='q1' to='bob@localhost'><query xmlns='x'>{}</query></iq>",
            "z".repeat(SERVER_MAX)
        );
        let out = from_local(&acct(), &Origin::Client("a".into()), iq.as_bytes(), |_| {
            true
        });
        let e = Element::parse(&out[1].1).expect("iq error parses");
        assert_eq!((&*e.name, e.attr("id")), ("iq", Some("q1")));
        // No error for an error, nor for a sender that is not a client.
        let err = format!(
            "<message to='bob@localhost' type='error'><body>{}</body></message>",
            "y".repeat(SERVER_MAX)
        );
        let out = from_local(&acct(), &Origin::Client("a".into()), err.as_bytes(), |_| {
            true
        });
        assert!(
            matches!(dests(&out)[..], [Dest::Drop(_)]),
            "{:?}",
            dests(&out)
        );
        for o in [Origin::Daemon, Origin::In] {
            let out = from_local(&acct(), &o, &over, |_| true);
            assert!(
                matches!(dests(&out)[..], [Dest::Drop(_)]),
                "{:?}",
                dests(&out)
            );
        }
    }

    /// The error for a too-large stanza whose id holds a line break
    /// (`&#10;` in the client's record) is one record line with the id
    /// as the client sent it.
    #[test]
    fn too_large_error_keeps_a_line_break_of_the_id_on_one_line() {
        let iq = format!(
            "<iq type='set' id='q&#10;1&#9;' to='bob@localhost'><query xmlns='x'>{}</query></iq>",
            "z".repeat(SERVER_MAX)
        );
        let out = from_local(&acct(), &Origin::Client("a".into()), iq.as_bytes(), |_| {
            true
        });
        let e = &out[1].1;
        assert_eq!(e.iter().position(|&b| b == b'\n'), Some(e.len() - 1));
        let e = Element::parse(e).expect("iq error parses");
        assert_eq!(e.attr("id"), Some("q\n1\t"));
    }

    #[test]
    fn groupchat_and_private_get_no_copy() {
        let gc = b"<message to='room@muc' type='groupchat'><body>hi</body></message>\n";
        assert_eq!(
            dests(&from_local(&acct(), &Origin::In, gc, |_| true)),
            vec![Dest::Upstream]
        );
        let p = b"<message to='bob@localhost' type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>\n";
        assert_eq!(
            dests(&from_local(&acct(), &Origin::In, p, |_| true)),
            vec![Dest::Upstream]
        );
    }

    #[test]
    fn client_iq_is_tagged_and_presence_goes_to_presenced() {
        let iq = b"<iq type='get' id='q'><query xmlns='jabber:iq:roster'/></iq>\n";
        let out = from_local(&acct(), &Origin::Client("b".into()), iq, |_| true);
        assert_eq!(out[0].0, Dest::Upstream);
        assert_eq!(attr(&out[0].1, "id"), Some(tag_id("b", "q")));
        let pres = b"<presence><show>away</show></presence>\n";
        let out = from_local(&acct(), &Origin::Client("b".into()), pres, |_| true);
        assert_eq!(dests(&out), vec![Dest::Presenced]);
        assert_eq!(
            attr(&out[0].1, "from").as_deref(),
            Some("alice@localhost/b")
        );
    }

    #[test]
    fn local_record_outside_jabber_client_is_dropped() {
        for r in [
            &b"<message xmlns='urn:evil' to='bob@localhost'/>\n"[..],
            b"<iq xmlns='jabber:server' type='get' id='x'/>\n",
            b"<presence xmlns=''/>\n",
        ] {
            for o in [Origin::Daemon, Origin::In, Origin::Client("a".into())] {
                assert!(
                    matches!(
                        from_local(&acct(), &o, r, |_| true)[..],
                        [(Dest::Drop(_), _)]
                    ),
                    "{}",
                    String::from_utf8_lossy(r)
                );
            }
        }
        let ok = b"<message xmlns='jabber:client' to='bob@localhost' type='chat'/>\n";
        assert_eq!(
            from_local(&acct(), &Origin::In, ok, |_| true)[0].0,
            Dest::Upstream
        );
    }

    #[test]
    fn control_contact_never_crosses_the_upstream_link() {
        for r in [
            &b"<message from='sj-proxy@control.invalid' to='alice@localhost/sj' type='error'><body>status</body></message>\n"[..],
            b"<message from='SJ-Proxy@Control.Invalid/x' type='chat'><body>kicked</body></message>\n",
            b"<presence from='sj-proxy@control.invalid'/>\n",
            b"<iq type='get' id='v' from='sj-proxy@control.invalid/r'><query xmlns='jabber:iq:version'/></iq>\n",
        ] {
            assert!(
                matches!(&from_upstream(&acct(), r)[..], [(Dest::Drop(why), _)] if why.contains("control contact")),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
        let to =
            b"<message to='sj-proxy@control.invalid' type='chat'><body>status</body></message>\n";
        for o in [Origin::Daemon, Origin::In, Origin::Client("raw".into())] {
            assert!(
                matches!(
                    &from_local(&acct(), &o, to, |_| true)[..],
                    [(Dest::Drop(_), _)]
                ),
                "{o:?}"
            );
        }
        let p = b"<presence to='sj-proxy@control.invalid/x' type='subscribe'/>\n";
        assert!(matches!(
            &from_local(&acct(), &Origin::In, p, |_| true)[..],
            [(Dest::Drop(_), _)]
        ));
        // Look-alikes are ordinary contacts.
        let r = b"<message to='sj-proxy@control.invalid.example' type='chat'><body>x</body></message>\n";
        assert_eq!(
            from_local(&acct(), &Origin::In, r, |_| true)[0].0,
            Dest::Upstream
        );
    }

    #[test]
    fn stanza_to_local_client_stays_local() {
        let r = b"<presence to='alice@localhost/b' from='bob@localhost/x'/>\n";
        assert_eq!(
            dests(&from_local(&acct(), &Origin::Daemon, r, |n| n == "b")),
            vec![Dest::Mirror]
        );
        // Not a client here: another device of the account, on the server.
        assert_eq!(
            dests(&from_local(&acct(), &Origin::Daemon, r, |_| false)),
            vec![Dest::Upstream]
        );
        let err =
            b"<iq type='error' id='p1' to='alice@localhost/phone'><error type='cancel'/></iq>\n";
        assert_eq!(
            dests(&from_local(&acct(), &Origin::Daemon, err, |n| n == "b")),
            vec![Dest::Upstream]
        );
        // The upstream resource is not a local client.
        let r = b"<message to='alice@localhost/sj' type='chat'><body>x</body></message>\n";
        assert_eq!(
            from_local(&acct(), &Origin::Daemon, r, |_| true)[0].0,
            Dest::Upstream
        );
    }
}
