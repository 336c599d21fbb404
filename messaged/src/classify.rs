//! What a `<message>` record means for the conversation logs: which contact
//! directory, which nick, which text, at what time. No I/O.
//!
//! Rules (DESIGN §3, §5, §8):
//! - `<sent>`/`<received>` carbons (XEP-0280) are believed only when the
//!   outer `from` is the account's own bare JID; otherwise the message is an
//!   ordinary message from its sender (whose carbon payload is not a body,
//!   so nothing is logged for it).
//! - a sent copy is logged under the inner `to` with the account's bare JID
//!   as nick; a received carbon is logged as if it had arrived here.
//! - `type='groupchat'` (XEP-0045): the room's bare JID names the
//!   directory, the occupant nick (resource) is the nick.
//! - no readable body: errors, corrections (XEP-0308) and encrypted payloads
//!   become `-!-` events; receipts, markers and chat states are not logged.

use sj::jid::Jid;
use sj::ns::{CARBONS, CLIENT, CORRECT, DELAY, FORWARD, LEGACY_DELAY, STANZAS};
use sj::outlog::Kind;
use sj::xml::Element;

/// Payloads that mean "this message is encrypted"; a body beside them is a
/// fallback text for clients that cannot decrypt, and is not logged.
const ENCRYPTED: &[(&str, &str)] = &[
    ("encrypted", sj::ns::OMEMO_LEGACY),
    ("encrypted", sj::ns::OMEMO),
    ("openpgp", sj::ns::OPENPGP),
    ("x", sj::ns::LEGACY_OPENPGP),
];

/// One thing to append to a contact's `out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The contact or room (bare JID) whose directory gets the lines.
    pub contact: Jid,
    /// The message was a groupchat message: the directory is a room.
    pub room: bool,
    /// XEP-0203 (or legacy XEP-0091) stamp, Unix seconds.
    pub when: Option<i64>,
    pub kind: Kind,
    pub text: String,
}

/// Classify one parsed record. `own` is the account's bare JID.
pub fn classify(msg: &Element, own: &Jid) -> Vec<Entry> {
    if msg.local_name() != "message" || msg.ns != CLIENT {
        return Vec::new();
    }
    let Some(from) = msg.attr("from").and_then(|f| Jid::parse(f).ok()) else {
        return Vec::new();
    };
    // Compared part by part: `from.bare() == *own` built a JID per message.
    if from.local() == own.local() && from.domain() == own.domain() && own.is_bare() {
        if let Some(sent) = msg.child("sent", CARBONS) {
            return match forwarded(sent) {
                Some((inner, delay)) => outgoing(inner, own, delay).into_iter().collect(),
                None => Vec::new(),
            };
        }
        if let Some(recv) = msg.child("received", CARBONS) {
            return match forwarded(recv) {
                Some((inner, delay)) => incoming(inner, delay).into_iter().collect(),
                None => Vec::new(),
            };
        }
    }
    incoming_from(msg, from, None).into_iter().collect()
}

/// The message inside `<forwarded/>`, and the forwarded wrapper's delay.
fn forwarded<'a, 'r>(carbon: &'r Element<'a>) -> Option<(&'r Element<'a>, Option<i64>)> {
    let fwd = carbon.child("forwarded", FORWARD)?;
    let inner = fwd.child("message", CLIENT)?;
    Some((inner, delay(fwd)))
}

fn delay(e: &Element) -> Option<i64> {
    if let Some(d) = e.child("delay", DELAY) {
        if let Some(t) = d.attr("stamp").and_then(sj::time::parse_xmpp_datetime) {
            return Some(t);
        }
    }
    e.child("x", LEGACY_DELAY)
        .and_then(|d| d.attr("stamp"))
        .and_then(sj::time::parse_xmpp_datetime)
}

/// The body to log: the one without `xml:lang`, else the first.
fn body(m: &Element) -> Option<String> {
    let mut first = None;
    for b in m.elements() {
        if b.local_name() == "body" && b.ns == CLIENT {
            if b.attr("xml:lang").is_none() {
                return Some(b.text());
            }
            if first.is_none() {
                first = Some(b.text());
            }
        }
    }
    first
}

fn encrypted(m: &Element) -> bool {
    m.elements().any(|e| {
        ENCRYPTED
            .iter()
            .any(|(n, ns)| e.ns == *ns && e.local_name() == *n)
    })
}

/// Prefix every line of `text` with `lead` (events keep their meaning on
/// every line of a multi-line text).
fn each_line(lead: &str, text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let text = text.trim_end_matches('\n');
    text.split('\n')
        .map(|l| format!("{lead}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a message with sender/nick `nick` says: `None` when nothing is to
/// be logged.
/// `nick` is taken by value: a said line keeps it, and the caller has just
/// made it (a second copy per message showed in the profile).
fn content(m: &Element, nick: String) -> Option<(Kind, String)> {
    if encrypted(m) {
        return Some((Kind::Event, format!("{nick} sent an encrypted message")));
    }
    let body = body(m).filter(|b| !b.trim().is_empty())?;
    if m.child("replace", CORRECT).is_some() {
        return Some((Kind::Event, each_line(&format!("{nick} corrects: "), &body)));
    }
    Some((Kind::Said { nick }, body))
}

fn error_text(m: &Element, from: &str) -> String {
    let mut cond = String::new();
    let mut text = String::new();
    if let Some(err) = m.child("error", CLIENT) {
        for c in err.elements().filter(|c| c.ns == STANZAS) {
            if c.local_name() == "text" {
                text = c.text();
            } else if cond.is_empty() {
                cond = c.local_name().to_string();
            }
        }
    }
    if cond.is_empty() {
        cond = "undefined-condition".into();
    }
    let mut s = format!("error from {from}: {cond}");
    if !text.trim().is_empty() {
        s.push(' ');
        s.push_str(text.trim());
    }
    s.replace('\n', " ")
}

/// A message that arrived here (or at another device of ours).
fn incoming(m: &Element, outer_delay: Option<i64>) -> Option<Entry> {
    let from = Jid::parse(m.attr("from")?).ok()?;
    incoming_from(m, from, outer_delay)
}

/// `incoming` with the sender's `from` already parsed.
fn incoming_from(m: &Element, from: Jid, outer_delay: Option<i64>) -> Option<Entry> {
    let contact = from.bare();
    let when = delay(m).or(outer_delay);
    let typ = m.attr("type").unwrap_or("normal");
    let entry = |room, kind, text| {
        Some(Entry {
            contact: contact.clone(),
            room,
            when,
            kind,
            text,
        })
    };
    match typ {
        "error" => entry(false, Kind::Event, error_text(m, &from.to_string())),
        "groupchat" => match from.resource() {
            Some(nick) => match content(m, nick.to_string()) {
                Some((k, t)) => entry(true, k, t),
                None => {
                    let subject = m.child("subject", CLIENT)?.text();
                    entry(
                        true,
                        Kind::Event,
                        format!("{nick} sets the topic: {}", subject.replace('\n', " ")),
                    )
                }
            },
            // The room itself speaks: events, never a nick.
            None => {
                if let Some(b) = body(m).filter(|b| !b.trim().is_empty()) {
                    entry(true, Kind::Event, b)
                } else {
                    let subject = m.child("subject", CLIENT)?.text();
                    entry(
                        true,
                        Kind::Event,
                        format!("topic: {}", subject.replace('\n', " ")),
                    )
                }
            }
        },
        _ => {
            let (k, t) = content(m, contact.to_string())?;
            entry(false, k, t)
        }
    }
}

/// A copy of a message the account sent (from any client or device).
fn outgoing(m: &Element, own: &Jid, outer_delay: Option<i64>) -> Option<Entry> {
    let to = Jid::parse(m.attr("to")?).ok()?;
    let room = m.attr("type") == Some("groupchat");
    let (kind, text) = content(m, own.to_string())?;
    Some(Entry {
        contact: to.bare(),
        room,
        when: delay(m).or(outer_delay),
        kind,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Jid {
        Jid::parse("alice@localhost").expect("jid")
    }

    fn run(rec: &str) -> Vec<Entry> {
        let e = Element::parse(rec.as_bytes()).expect("parse");
        classify(&e, &own())
    }

    fn said(contact: &str, nick: &str, text: &str) -> Entry {
        Entry {
            contact: Jid::parse(contact).expect("jid"),
            room: false,
            when: None,
            kind: Kind::Said { nick: nick.into() },
            text: text.into(),
        }
    }

    #[test]
    fn plain_chat() {
        assert_eq!(
            run("<message from='Bob@LocalHost/phone' to='alice@localhost/sj' type='chat'><body>hi &amp; bye</body></message>"),
            vec![said("bob@localhost", "bob@localhost", "hi & bye")]
        );
    }

    #[test]
    fn sent_copy_believed_from_own_bare() {
        let rec = "<message from='alice@localhost' to='alice@localhost/sj' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/gajim' to='bob@localhost/x' type='chat'><body>yo</body></message></forwarded></sent></message>";
        assert_eq!(
            run(rec),
            vec![said("bob@localhost", "alice@localhost", "yo")]
        );
        // Case differences in the own JID do not matter.
        let rec2 = rec.replacen("from='alice@localhost'", "from='ALICE@localhost'", 1);
        assert_eq!(run(&rec2).len(), 1);
    }

    #[test]
    fn forged_carbons_not_believed() {
        for outer in [
            "bob@localhost",
            "alice@localhost.evil",
            "alice@evil",
            "localhost",
        ] {
            for kind in ["sent", "received"] {
                let rec = format!("<message from='{outer}' to='alice@localhost/sj' type='chat'><{kind} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/gajim' to='carol@localhost' type='chat'><body>forged</body></message></forwarded></{kind}></message>");
                let got = run(&rec);
                assert!(
                    got.iter().all(|e| !e.text.contains("forged")
                        && e.kind
                            != Kind::Said {
                                nick: "alice@localhost".into()
                            }),
                    "{outer} {kind}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn carbon_from_own_full_jid_is_believed() {
        // From own *full* JID: the bare part is ours, the server stamped it.
        let rec = "<message from='alice@localhost/other' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='bob@localhost' type='chat'><body>x</body></message></forwarded></sent></message>";
        assert_eq!(
            run(rec),
            vec![said("bob@localhost", "alice@localhost", "x")]
        );
    }

    #[test]
    fn received_carbon_is_incoming() {
        let rec = "<message from='alice@localhost' to='alice@localhost/sj' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@localhost/x' to='alice@localhost/phone' type='chat'><body>hey</body></message></forwarded></received></message>";
        assert_eq!(
            run(rec),
            vec![said("bob@localhost", "bob@localhost", "hey")]
        );
    }

    #[test]
    fn delay_and_multiline() {
        let rec = "<message from='bob@localhost/x' type='chat'><body>a&#10;b</body><delay xmlns='urn:xmpp:delay' from='localhost' stamp='2002-09-10T23:08:25Z'/></message>";
        let got = run(rec);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].when, Some(1_031_699_305));
        assert_eq!(got[0].text, "a\nb");
    }

    #[test]
    fn groupchat_room_nick() {
        let got = run("<message from='room@muc.localhost/Bobby' type='groupchat'><body>hello room</body></message>");
        assert_eq!(got.len(), 1);
        assert!(got[0].room);
        assert_eq!(got[0].contact.to_string(), "room@muc.localhost");
        assert_eq!(
            got[0].kind,
            Kind::Said {
                nick: "Bobby".into()
            }
        );
        let got = run("<message from='room@muc.localhost/Bobby' type='groupchat'><subject>new</subject></message>");
        assert_eq!(got[0].kind, Kind::Event);
        assert_eq!(got[0].text, "Bobby sets the topic: new");
    }

    #[test]
    fn events_without_body() {
        let got = run("<message from='bob@localhost/x' type='error' id='1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone</text></error></message>");
        assert_eq!(got[0].kind, Kind::Event);
        assert_eq!(
            got[0].text,
            "error from bob@localhost/x: item-not-found gone"
        );

        let got = run("<message from='bob@localhost/x' type='chat'><body>I sent you an OMEMO encrypted message</body><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted></message>");
        assert_eq!(got[0].kind, Kind::Event);
        assert_eq!(got[0].text, "bob@localhost sent an encrypted message");

        let got = run("<message from='bob@localhost/x' type='chat'><body>fixed</body><replace xmlns='urn:xmpp:message-correct:0' id='m1'/></message>");
        assert_eq!(got[0].text, "bob@localhost corrects: fixed");

        for quiet in [
            "<message from='bob@localhost/x'><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
            "<message from='bob@localhost/x' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message from='bob@localhost/x' type='chat'><body>  </body></message>",
            "<message type='chat'><body>no from</body></message>",
            "<iq from='bob@localhost/x' type='get' id='1'/>",
        ] {
            assert!(run(quiet).is_empty(), "{quiet}");
        }
    }

    #[test]
    fn each_line_prefix() {
        assert_eq!(each_line("x: ", "a\nb\n"), "x: a\nx: b");
    }
}
