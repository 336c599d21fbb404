//! Translation between one client's stream and the records (DESIGN §6).
//!
//! Pure functions over records: no I/O here, so every rule is unit-tested.
//! `outbound` decides what happens to a stanza the client sent, `inbound`
//! what happens to a record mirrord wrote into the client's `in` FIFO.

use sj::jid::Jid;
use sj::ns;
use sj::xml::{escape_attr, escape_text, Edit, Element, Top};
use std::collections::{HashSet, VecDeque};

/// The control contact's reserved JID (`.invalid` never resolves, RFC 2606).
pub const CONTROL: &str = sj::jid::CONTROL;

/// Remembered roster-push ids (results to them are swallowed).
const MAX_PUSH_IDS: usize = 64;
/// Outstanding roster/disco queries remembered per client.
const MAX_PENDING: usize = 256;

/// What to do with a stanza the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this record to `DIR/clients/NAME/out`.
    Out(Vec<u8>),
    /// Send these bytes straight back to the client.
    Client(Vec<u8>),
    /// A chat message to the control contact: run this command text.
    Control(String),
    /// End the stream with this stream error condition.
    StreamError(&'static str),
}

/// What to do with a record read from `DIR/clients/NAME/in`.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Send these bytes to the client.
    Deliver(Vec<u8>),
    /// Do not deliver; the reason is logged when it is worth a warning.
    Drop(Option<String>),
    /// Addressed to another full JID of the account: the upstream resource
    /// may have changed, so the caller re-reads DIR/state and retries.
    Stranger,
}

/// The per-session translation state.
pub struct Translator {
    pub bare: Jid,
    /// The client's full JID, `BARE/NAME`.
    pub full: Jid,
    /// The upstream session's full JID (from DIR/state), if known.
    pub upstream: Option<Jid>,
    pub carbons: bool,
    pub available: bool,
    control_presence_sent: bool,
    roster_ids: HashSet<String>,
    disco_ids: HashSet<String>,
    push_ids: VecDeque<String>,
}

fn parse_jid(s: Option<&str>) -> Option<Jid> {
    s.and_then(|s| Jid::parse(s).ok())
}

/// The first child element with this local name and namespace, at any depth
/// along a path of (local, ns) pairs.
fn path<'e, 'a>(el: &'e Element<'a>, steps: &[(&str, &str)]) -> Option<&'e Element<'a>> {
    let mut cur = el;
    for (local, ns) in steps {
        cur = cur.child(local, ns)?;
    }
    Some(cur)
}

/// Ensure a trailing LF (records are lines; the client stream does not care).
fn line(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() != Some(&b'\n') {
        v.push(b'\n');
    }
    v
}

/// A chat message from the control contact to `to`.
pub fn control_message(to: &Jid, text: &str) -> Vec<u8> {
    format!(
        "<message from='{CONTROL}' to='{}' type='chat'><body>{}</body></message>\n",
        escape_attr(&to.to_string()),
        escape_text(text)
    )
    .into_bytes()
}

/// The roster item for the control contact.
pub fn control_item() -> String {
    format!("<item jid='{CONTROL}' name='sj-proxy' subscription='both'/>")
}

impl Translator {
    pub fn new(bare: Jid, full: Jid, upstream: Option<Jid>) -> Self {
        Translator {
            bare,
            full,
            upstream,
            carbons: false,
            available: false,
            control_presence_sent: false,
            roster_ids: HashSet::new(),
            disco_ids: HashSet::new(),
            push_ids: VecDeque::new(),
        }
    }

    /// `to` names the account itself: absent, the bare JID.
    fn to_account(&self, to: Option<&Jid>) -> bool {
        match to {
            None => true,
            Some(j) => *j == self.bare,
        }
    }

    /// `to`/`from` names the account or its server: absent, bare JID, domain.
    fn account_or_server(&self, j: Option<&Jid>) -> bool {
        match j {
            None => true,
            Some(j) => {
                *j == self.bare
                    || (j.local().is_none()
                        && j.resource().is_none()
                        && j.domain() == self.bare.domain())
            }
        }
    }

    fn is_control(j: Option<&Jid>) -> bool {
        j.is_some_and(Jid::is_control)
    }

    /// An iq result to the client for one of its requests answered locally.
    fn iq_result(&self, el: &Element, payload: &str) -> Vec<u8> {
        let id = el.attr("id").unwrap_or("");
        let from = match el.attr("to") {
            Some(t) => format!(" from='{}'", escape_attr(t)),
            None => String::new(),
        };
        let body = if payload.is_empty() {
            "/>".to_string()
        } else {
            format!(">{payload}</iq>")
        };
        format!(
            "<iq type='result' id='{}'{from} to='{}'{body}\n",
            escape_attr(id),
            escape_attr(&self.full.to_string())
        )
        .into_bytes()
    }

    fn iq_error(&self, el: &Element, etype: &str, cond: &str) -> Vec<u8> {
        let id = el.attr("id").unwrap_or("");
        let from = match el.attr("to") {
            Some(t) => format!(" from='{}'", escape_attr(t)),
            None => String::new(),
        };
        format!(
            "<iq type='error' id='{}'{from} to='{}'><error type='{etype}'><{cond} xmlns='{}'/></error></iq>\n",
            escape_attr(id),
            escape_attr(&self.full.to_string()),
            ns::STANZAS,
        )
        .into_bytes()
    }

    /// The presence the control contact sends after the client's initial presence.
    pub fn control_presence(&self) -> Vec<u8> {
        format!(
            "<presence from='{CONTROL}' to='{}'/>\n",
            escape_attr(&self.full.to_string())
        )
        .into_bytes()
    }

    /// A stanza the client sent (one canonical record).
    pub fn outbound(&mut self, record: &[u8]) -> Vec<Action> {
        let Some(el) = Element::parse(record) else {
            return vec![Action::StreamError("not-well-formed")];
        };
        if el.ns != ns::CLIENT {
            return vec![Action::StreamError("invalid-namespace")];
        }
        let to_raw = el.attr("to");
        let to = parse_jid(to_raw);
        if to_raw.is_some() && to.is_none() {
            // RFC 6120 §8.3.3.8: jid-malformed, answered by the server.
            return match &*el.name {
                "iq" | "message" | "presence" if el.attr("type") != Some("error") => {
                    vec![Action::Client(self.stanza_error(
                        &el,
                        "modify",
                        "jid-malformed",
                    ))]
                }
                _ => vec![],
            };
        }
        let ty = el.attr("type");
        match &*el.name {
            "iq" => self.outbound_iq(record, &el, to.as_ref(), ty),
            "message" => {
                if Self::is_control(to.as_ref()) {
                    if ty == Some("error") {
                        return vec![];
                    }
                    return match el.child("body", ns::CLIENT) {
                        Some(b) => vec![Action::Control(b.text())],
                        None => vec![],
                    };
                }
                vec![Action::Out(line(record.to_vec()))]
            }
            "presence" => {
                if Self::is_control(to.as_ref()) {
                    return vec![];
                }
                let mut acts = vec![Action::Out(line(record.to_vec()))];
                if to.is_none() {
                    match ty {
                        None => {
                            self.available = true;
                            if !self.control_presence_sent {
                                self.control_presence_sent = true;
                                acts.push(Action::Client(self.control_presence()));
                            }
                        }
                        Some("unavailable") => self.available = false,
                        _ => {}
                    }
                }
                acts
            }
            _ => vec![Action::StreamError("unsupported-stanza-type")],
        }
    }

    fn stanza_error(&self, el: &Element, etype: &str, cond: &str) -> Vec<u8> {
        if el.name == "iq" {
            return self.iq_error(el, etype, cond);
        }
        let id = el
            .attr("id")
            .map(|i| format!(" id='{}'", escape_attr(i)))
            .unwrap_or_default();
        format!(
            "<{} type='error'{id} to='{}'><error type='{etype}'><{cond} xmlns='{}'/></error></{}>\n",
            el.name,
            escape_attr(&self.full.to_string()),
            ns::STANZAS,
            el.name
        )
        .into_bytes()
    }

    fn outbound_iq(
        &mut self,
        record: &[u8],
        el: &Element,
        to: Option<&Jid>,
        ty: Option<&str>,
    ) -> Vec<Action> {
        let id = el.attr("id").unwrap_or("").to_string();
        let request = matches!(ty, Some("get") | Some("set"));
        if Self::is_control(to) {
            if !request {
                return vec![];
            }
            if ty == Some("get") && el.child("ping", ns::PING).is_some() {
                return vec![Action::Client(self.iq_result(el, ""))];
            }
            return vec![Action::Client(self.iq_error(
                el,
                "cancel",
                "service-unavailable",
            ))];
        }
        if ty == Some("set") && self.to_account(to) {
            if el.child("enable", ns::CARBONS).is_some() {
                self.carbons = true;
                return vec![Action::Client(self.iq_result(el, ""))];
            }
            if el.child("disable", ns::CARBONS).is_some() {
                self.carbons = false;
                return vec![Action::Client(self.iq_result(el, ""))];
            }
        }
        if ty == Some("set") && self.account_or_server(to) {
            if el.child("session", ns::SESSION).is_some() {
                return vec![Action::Client(self.iq_result(el, ""))];
            }
            if el.child("bind", ns::BIND).is_some() {
                return vec![Action::Client(self.iq_error(el, "cancel", "not-allowed"))];
            }
        }
        if ty == Some("set") && self.to_account(to) {
            if let Some(q) = el.child("query", ns::ROSTER) {
                if q.elements().any(|i| i.attr("jid") == Some(CONTROL)) {
                    // The control contact lives here, never in the server's roster.
                    return vec![Action::Client(self.iq_result(el, ""))];
                }
            }
        }
        if ty == Some("get")
            && self.to_account(to)
            && el.child("query", ns::ROSTER).is_some()
            && self.roster_ids.len() < MAX_PENDING
        {
            self.roster_ids.insert(id.clone());
        }
        if ty == Some("get")
            && self.account_or_server(to)
            && el
                .child("query", ns::DISCO_INFO)
                .is_some_and(|q| q.attr("node").is_none())
            && self.disco_ids.len() < MAX_PENDING
        {
            self.disco_ids.insert(id.clone());
        }
        if matches!(ty, Some("result") | Some("error")) && self.account_or_server(to) {
            if let Some(pos) = self.push_ids.iter().position(|p| *p == id) {
                // sj-proxy and iqd answered the push upstream once already.
                self.push_ids.remove(pos);
                return vec![];
            }
        }
        vec![Action::Out(line(record.to_vec()))]
    }

    /// A record from mirrord.
    pub fn inbound(&mut self, record: &[u8]) -> Inbound {
        let (Some(el), Some(top)) = (Element::parse(record), Top::parse(record)) else {
            return Inbound::Drop(Some("unparsable record".into()));
        };
        let retarget = match self.retarget(&el) {
            Ok(r) => r,
            Err(not_here) => return not_here,
        };
        let full = self.full.to_string();
        let edits = [Edit::Set("to", &full)];
        let as_is = || Inbound::Deliver(line(top.rewrite(if retarget { &edits } else { &[] })));
        match &*el.name {
            "message" => self.inbound_message(record, &el).unwrap_or_else(as_is),
            "iq" => self.inbound_iq(&top, &el).unwrap_or_else(as_is),
            _ => as_is(),
        }
    }

    /// Whether the record's `to` names the upstream session, to be
    /// rewritten to the client's full JID; `Err` for a record not to
    /// deliver here.
    fn retarget(&self, el: &Element<'_>) -> Result<bool, Inbound> {
        let Some(to_raw) = el.attr("to") else {
            return Ok(false);
        };
        let Ok(to) = Jid::parse(to_raw) else {
            return Err(Inbound::Drop(Some(format!("bad to {to_raw:?}"))));
        };
        if to.bare() != self.bare || to.resource().is_none() || to == self.full {
            return Ok(false);
        }
        if Some(&to) == self.upstream.as_ref() {
            Ok(true)
        } else {
            Err(Inbound::Stranger)
        }
    }

    /// A message from mirrord: what becomes of a carbon (`None`: deliver
    /// it as it is).
    fn inbound_message(&self, record: &[u8], el: &Element<'_>) -> Option<Inbound> {
        let sent = el.child("sent", ns::CARBONS);
        let received = el.child("received", ns::CARBONS);
        let carbon = sent.or(received)?;
        if parse_jid(el.attr("from")).as_ref() != Some(&self.bare) {
            return Some(Inbound::Drop(Some(format!(
                "carbon from {:?} is not from the account: dropped",
                el.attr("from").unwrap_or("")
            ))));
        }
        let Some(inner) = path(
            carbon,
            &[("forwarded", ns::FORWARD), ("message", ns::CLIENT)],
        ) else {
            return Some(Inbound::Drop(Some(
                "carbon without a forwarded message".into(),
            )));
        };
        if sent.is_some() {
            if parse_jid(inner.attr("from")).as_ref() == Some(&self.full) {
                return Some(Inbound::Drop(None));
            }
            return (!self.carbons).then_some(Inbound::Drop(None));
        }
        if self.carbons {
            return None;
        }
        // A client without carbons gets the message it would have had.
        let Some(bytes) = record.get(inner.span.clone()) else {
            return Some(Inbound::Drop(Some("bad span".into())));
        };
        let full = self.full.to_string();
        let msg = match (Top::parse(bytes), parse_jid(inner.attr("to"))) {
            (Some(m), Some(t)) if Some(&t) == self.upstream.as_ref() => {
                m.rewrite(&[Edit::Set("to", &full)])
            }
            _ => bytes.to_vec(),
        };
        Some(Inbound::Deliver(line(msg)))
    }

    /// An iq from mirrord: answers to the client's roster and disco
    /// queries get the control contact and the carbons features, roster
    /// pushes are remembered (`None`: deliver it as it is).
    fn inbound_iq(&mut self, top: &Top<'_>, el: &Element<'_>) -> Option<Inbound> {
        let from = parse_jid(el.attr("from"));
        let id = el.attr("id").unwrap_or("").to_string();
        match el.attr("type") {
            Some(ty @ ("result" | "error")) => {
                let result = ty == "result";
                let roster = el.child("query", ns::ROSTER);
                if let (true, Some(q)) = (self.roster_ids.remove(&id) && result, roster) {
                    if !q.elements().any(|i| i.attr("jid") == Some(CONTROL)) {
                        let item = control_item();
                        let r = self.with_child(top, el, Edit::Child(q, &item));
                        return Some(Inbound::Deliver(line(r)));
                    }
                }
                if self.disco_ids.remove(&id) && result && self.account_or_server(from.as_ref()) {
                    let account = from.as_ref() == Some(&self.bare);
                    let (q, add) = missing_features(el, account)?;
                    let r = self.with_child(top, el, Edit::Child(q, &add));
                    return Some(Inbound::Deliver(line(r)));
                }
                None
            }
            Some("set") => {
                // Block-list pushes (XEP-0191) are answered upstream once
                // as roster pushes are (sj-proxy's `queries`).
                let blocking = ["block", "unblock"]
                    .iter()
                    .any(|n| el.child(n, "urn:xmpp:blocking").is_some());
                if (el.child("query", ns::ROSTER).is_some() || blocking)
                    && (from.is_none() || from.as_ref() == Some(&self.bare))
                {
                    if self.push_ids.len() >= MAX_PUSH_IDS {
                        self.push_ids.pop_front();
                    }
                    self.push_ids.push_back(id);
                }
                None
            }
            _ => None,
        }
    }

    /// The record with `child` added, and `to` rewritten as `inbound`
    /// does when it names the upstream session.
    fn with_child(&self, top: &Top<'_>, el: &Element<'_>, child: Edit<'_>) -> Vec<u8> {
        let full = self.full.to_string();
        match parse_jid(el.attr("to")) {
            Some(t) if Some(&t) == self.upstream.as_ref() => {
                top.rewrite(&[Edit::Set("to", &full), child])
            }
            _ => top.rewrite(&[child]),
        }
    }
}

/// The carbons features a disco#info result lacks, as XML to add to its
/// query.
/// On the account's bare JID also MAM and stanza ids, which sj-c2s
/// serves from the account archive (mam.rs).
fn missing_features<'e, 'a>(
    el: &'e Element<'a>,
    account: bool,
) -> Option<(&'e Element<'a>, String)> {
    let q = el.child("query", ns::DISCO_INFO)?;
    let has = |var: &str| {
        q.elements()
            .any(|f| f.local_name() == "feature" && f.attr("var") == Some(var))
    };
    let mut add = String::new();
    let archive: &[&str] = if account { &[ns::MAM, ns::SID] } else { &[] };
    for &var in [ns::CARBONS, ns::CARBONS_RULES].iter().chain(archive) {
        if !has(var) {
            add.push_str(&format!("<feature var='{var}'/>"));
        }
    }
    (!add.is_empty()).then_some((q, add))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr() -> Translator {
        let bare = Jid::parse("alice@localhost").expect("jid");
        let full = Jid::parse("alice@localhost/phone").expect("jid");
        let up = Jid::parse("alice@localhost/sj-proxy").expect("jid");
        Translator::new(bare, full, Some(up))
    }

    fn deliver(t: &mut Translator, rec: &str) -> String {
        match t.inbound(rec.as_bytes()) {
            Inbound::Deliver(v) => String::from_utf8(v).expect("utf8"),
            other => panic!("not delivered: {other:?}"),
        }
    }

    fn dropped(t: &mut Translator, rec: &str) -> bool {
        matches!(t.inbound(rec.as_bytes()), Inbound::Drop(_))
    }

    #[test]
    fn to_upstream_full_is_rewritten_bare_unchanged() {
        let mut t = tr();
        let r = deliver(
            &mut t,
            "<message from='bob@localhost/x' to='alice@localhost/sj-proxy' type='chat'><body>hi</body></message>",
        );
        assert_eq!(
            r,
            "<message from='bob@localhost/x' to='alice@localhost/phone' type='chat'><body>hi</body></message>\n"
        );
        let bare = "<message from='bob@localhost/x' to='alice@localhost' type='chat'><body>hi</body></message>";
        assert_eq!(deliver(&mut t, bare), format!("{bare}\n"));
        let own = "<iq type='result' id='a' to='alice@localhost/phone'/>";
        assert_eq!(deliver(&mut t, own), format!("{own}\n"));
        assert_eq!(
            t.inbound(b"<message to='alice@localhost/laptop'><body>x</body></message>"),
            Inbound::Stranger
        );
    }

    const SENT_FROM_SIBLING: &str = "<message from='alice@localhost' to='alice@localhost/sj-proxy' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/laptop' to='bob@localhost' type='chat'><body>yo</body></message></forwarded></sent></message>";

    #[test]
    fn sent_carbons_only_to_carbon_clients_never_origin() {
        let mut t = tr();
        assert!(dropped(&mut t, SENT_FROM_SIBLING));
        t.carbons = true;
        let r = deliver(&mut t, SENT_FROM_SIBLING);
        assert!(r.starts_with("<message from='alice@localhost' to='alice@localhost/phone'"));
        assert!(r.contains("<sent xmlns='urn:xmpp:carbons:2'>"));
        let own = SENT_FROM_SIBLING.replace("alice@localhost/laptop", "alice@localhost/phone");
        assert!(dropped(&mut t, &own));
    }

    const RECEIVED: &str = "<message from='alice@localhost' to='alice@localhost/sj-proxy' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@localhost/x' to='alice@localhost/tablet' type='chat'><body>hey</body></message></forwarded></received></message>";

    #[test]
    fn received_carbons_passed_or_unwrapped() {
        let mut t = tr();
        assert_eq!(
            deliver(&mut t, RECEIVED),
            "<message xmlns='jabber:client' from='bob@localhost/x' to='alice@localhost/tablet' type='chat'><body>hey</body></message>\n"
        );
        t.carbons = true;
        let r = deliver(&mut t, RECEIVED);
        assert!(r.contains("<received xmlns='urn:xmpp:carbons:2'>"));
        assert!(r.starts_with("<message from='alice@localhost' to='alice@localhost/phone'"));
    }

    #[test]
    fn forged_carbons_dropped() {
        let mut t = tr();
        t.carbons = true;
        let forged = RECEIVED.replacen("from='alice@localhost'", "from='mallory@evil'", 1);
        assert!(dropped(&mut t, &forged));
        let forged =
            SENT_FROM_SIBLING.replacen("from='alice@localhost'", "from='alice@localhost/x'", 1);
        assert!(dropped(&mut t, &forged));
        t.carbons = false;
        let noform = RECEIVED.replacen("from='alice@localhost' ", "", 1);
        assert!(dropped(&mut t, &noform));
    }

    #[test]
    fn roster_result_gets_control_contact() {
        let mut t = tr();
        let acts = t.outbound(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
        assert!(matches!(acts.as_slice(), [Action::Out(_)]));
        let r = deliver(
            &mut t,
            "<iq type='result' id='r1' to='alice@localhost/phone'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='both'/></query></iq>",
        );
        assert_eq!(
            r,
            "<iq type='result' id='r1' to='alice@localhost/phone'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='both'/><item jid='sj-proxy@control.invalid' name='sj-proxy' subscription='both'/></query></iq>\n"
        );
        // Only once per request.
        let again = "<iq type='result' id='r1' to='alice@localhost/phone'><query xmlns='jabber:iq:roster'/></iq>";
        assert_eq!(deliver(&mut t, again), format!("{again}\n"));
        // Empty roster, self-closing query.
        t.outbound(b"<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>");
        assert_eq!(
            deliver(&mut t, "<iq type='result' id='r2' to='alice@localhost/sj-proxy'><query xmlns='jabber:iq:roster'/></iq>"),
            "<iq type='result' id='r2' to='alice@localhost/phone'><query xmlns='jabber:iq:roster'><item jid='sj-proxy@control.invalid' name='sj-proxy' subscription='both'/></query></iq>\n"
        );
    }

    #[test]
    fn disco_info_gets_carbons_features() {
        let mut t = tr();
        t.outbound(b"<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        let r = deliver(
            &mut t,
            "<iq type='result' id='d1' from='localhost' to='alice@localhost/phone'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im'/><feature var='urn:xmpp:carbons:2'/></query></iq>",
        );
        assert_eq!(
            r,
            "<iq type='result' id='d1' from='localhost' to='alice@localhost/phone'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im'/><feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:carbons:rules:0'/></query></iq>\n"
        );
        // Not a tracked id: unchanged.
        let other = "<iq type='result' id='zz' from='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>";
        assert_eq!(deliver(&mut t, other), format!("{other}\n"));
        // Someone else's disco#info is never touched.
        t.outbound(b"<iq type='get' id='d2' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        let bob = "<iq type='result' id='d2' from='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>";
        assert_eq!(deliver(&mut t, bob), format!("{bob}\n"));
    }

    #[test]
    fn carbons_enable_and_session_answered_locally() {
        let mut t = tr();
        let acts = t.outbound(b"<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>");
        assert_eq!(
            acts,
            vec![Action::Client(
                b"<iq type='result' id='c1' to='alice@localhost/phone'/>\n".to_vec()
            )]
        );
        assert!(t.carbons);
        t.outbound(b"<iq type='set' id='c2'><disable xmlns='urn:xmpp:carbons:2'/></iq>");
        assert!(!t.carbons);
        let acts = t.outbound(
            b"<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        );
        assert!(matches!(acts.as_slice(), [Action::Client(_)]));
    }

    #[test]
    fn roster_push_results_swallowed() {
        let mut t = tr();
        deliver(&mut t, "<iq type='set' id='push1' to='alice@localhost/sj-proxy'><query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query></iq>");
        assert!(t.outbound(b"<iq type='result' id='push1'/>").is_empty());
        // A second result with that id is forwarded.
        assert_eq!(t.outbound(b"<iq type='result' id='push1'/>").len(), 1);
        // A forged push (from a contact) is not remembered.
        deliver(
            &mut t,
            "<iq type='set' id='p2' from='mallory@evil'><query xmlns='jabber:iq:roster'/></iq>",
        );
        assert_eq!(
            t.outbound(b"<iq type='result' id='p2' to='mallory@evil'/>")
                .len(),
            1
        );
    }

    #[test]
    fn control_contact_never_forwarded() {
        let mut t = tr();
        let acts = t.outbound(
            b"<message to='sj-proxy@control.invalid' type='chat'><body>status</body></message>",
        );
        assert_eq!(acts, vec![Action::Control("status".into())]);
        assert!(t
            .outbound(b"<presence to='sj-proxy@control.invalid' type='subscribe'/>")
            .is_empty());
        let acts = t.outbound(b"<iq type='get' id='v' to='sj-proxy@control.invalid'><query xmlns='jabber:iq:version'/></iq>");
        assert!(matches!(acts.as_slice(), [Action::Client(_)]));
        // Initial presence: forwarded, then the control contact is online.
        let acts = t.outbound(b"<presence/>");
        assert_eq!(acts.len(), 2);
        assert!(
            matches!(&acts[1], Action::Client(v) if v.starts_with(b"<presence from='sj-proxy@control.invalid'"))
        );
        assert!(t.available);
        assert_eq!(
            t.outbound(b"<presence><show>away</show></presence>").len(),
            1
        );
        t.outbound(b"<presence type='unavailable'/>");
        assert!(!t.available);
    }

    #[test]
    fn roster_set_of_control_contact_stays_local() {
        let mut t = tr();
        let acts = t.outbound(b"<iq type='set' id='rs'><query xmlns='jabber:iq:roster'><item jid='sj-proxy@control.invalid' subscription='remove'/></query></iq>");
        assert!(matches!(acts.as_slice(), [Action::Client(_)]));
        let acts = t.outbound(b"<iq type='set' id='rs2'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'/></query></iq>");
        assert!(matches!(acts.as_slice(), [Action::Out(_)]));
    }

    #[test]
    fn ordinary_stanzas_forwarded_verbatim() {
        let mut t = tr();
        let m = b"<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>";
        let mut want = m.to_vec();
        want.push(b'\n');
        assert_eq!(t.outbound(m), vec![Action::Out(want)]);
        let acts =
            t.outbound(b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>");
        assert!(matches!(acts.as_slice(), [Action::StreamError(_)]));
    }

    #[test]
    fn control_item_goes_into_a_prefixed_roster_query() {
        let mut t = tr();
        t.outbound(b"<iq type='get' id='r9'><query xmlns='jabber:iq:roster'/></iq>");
        let r = deliver(
            &mut t,
            "<iq type='result' id='r9' to='alice@localhost/sj-proxy'><q:query xmlns:q='jabber:iq:roster'></q:query ></iq>",
        );
        assert_eq!(
            r,
            format!(
                "<iq type='result' id='r9' to='alice@localhost/phone'><q:query xmlns:q='jabber:iq:roster'>{}</q:query ></iq>\n",
                control_item()
            )
        );
    }
}
