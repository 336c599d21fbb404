//! First-level elements of an online client stream that are not stanzas,
//! and XEP-0352 client state indication.
//!
//! `nonza` sorts what a bound client sends: stanzas go on to the
//! translation, `<active/>` and `<inactive/>` (urn:xmpp:csi:0) change the
//! client's state here, and any other first-level element is refused with
//! `unsupported-stanza-type` (RFC 6120 §4.9.3.24), whatever its namespace
//! (a message, presence or iq in another namespace than jabber:client is
//! a stanza, which the translation refuses with `invalid-namespace`).
//! Other nonzas (stream management, say) get their own arm in `nonza`.
//!
//! `Held` is what an inactive client is not sent yet: presence and
//! messages without a body (chat states, receipts, markers), kept in
//! order and sent before the next urgent record (a message with a body,
//! an iq, anything else) or when the client is active again. It holds at
//! most `MAX_HELD` bytes; past that it is sent at once, never dropped.

use sj::xml::{Element, Top};

/// The namespace of XEP-0352.
pub const NS: &str = "urn:xmpp:csi:0";
/// The stream feature advertised after authentication.
pub const FEATURE: &str = "<csi xmlns='urn:xmpp:csi:0'/>";
/// Bytes held for an inactive client before they go anyway.
const MAX_HELD: usize = 256 << 10;

/// What a first-level element from a bound client is.
#[derive(Debug, PartialEq, Eq)]
pub enum Nonza {
    /// message, presence or iq (the translation checks the rest).
    Stanza,
    /// XEP-0352 `<active/>`.
    Active,
    /// XEP-0352 `<inactive/>`.
    Inactive,
    /// Anything else: `unsupported-stanza-type`.
    Unsupported,
}

/// Sort one first-level element (a canonical record) of a bound client.
pub fn nonza(rec: &[u8]) -> Nonza {
    let Some(top) = Top::parse(rec) else {
        // Not for us to judge: the translation reports the stanza.
        return Nonza::Stanza;
    };
    let name = top.name();
    let ns = top.attr("xmlns");
    let ns = ns.as_deref().unwrap_or(sj::ns::CLIENT);
    if ns == sj::ns::CLIENT && matches!(name, "message" | "presence" | "iq") {
        return Nonza::Stanza;
    }
    // A prefixed element names its namespace through its own declaration;
    // only the parsed tree says which.
    let (local, ns) = match Element::parse(rec) {
        Some(el) => (el.local_name().to_string(), el.ns.into_owned()),
        None => return Nonza::Unsupported,
    };
    match (ns.as_str(), local.as_str()) {
        // A stanza in another namespace (jabber:server) is the
        // translation's: invalid-namespace.
        (_, "message" | "presence" | "iq") => Nonza::Stanza,
        (NS, "active") => Nonza::Active,
        (NS, "inactive") => Nonza::Inactive,
        _ => Nonza::Unsupported,
    }
}

/// Is this record for the client urgent (sent at once even while it is
/// inactive)?
pub fn urgent(rec: &[u8]) -> bool {
    let Some(top) = Top::parse(rec) else {
        return true;
    };
    match top.name() {
        "presence" => false,
        "message" => Element::parse(rec)
            .is_none_or(|el| el.child("body", sj::ns::CLIENT).is_some() || carries_body(&el)),
        _ => true,
    }
}

/// A carbon or other wrapper with a message that has a body inside.
fn carries_body(el: &Element) -> bool {
    el.elements().any(|c| {
        c.elements().any(|f| {
            f.elements()
                .any(|m| m.local_name() == "message" && m.child("body", sj::ns::CLIENT).is_some())
        })
    })
}

/// The client's state and what waits for it.
#[derive(Debug, Default)]
pub struct Held {
    inactive: bool,
    held: Vec<Vec<u8>>,
    bytes: usize,
}

impl Held {
    pub fn new() -> Held {
        Held::default()
    }

    /// Records to send to the client now, in order, for `rec` arriving.
    pub fn deliver(&mut self, rec: Vec<u8>) -> Vec<Vec<u8>> {
        if !self.inactive || urgent(&rec) || self.bytes + rec.len() > MAX_HELD {
            let mut out = self.take();
            out.push(rec);
            return out;
        }
        self.bytes += rec.len();
        self.held.push(rec);
        Vec::new()
    }

    /// The client said it is inactive.
    pub fn inactive(&mut self) {
        self.inactive = true;
    }

    /// The client said it is active: what was held, in order.
    pub fn active(&mut self) -> Vec<Vec<u8>> {
        self.inactive = false;
        self.take()
    }

    fn take(&mut self) -> Vec<Vec<u8>> {
        self.bytes = 0;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_first_level_elements() {
        assert_eq!(nonza(b"<message to='a@b'/>"), Nonza::Stanza);
        assert_eq!(nonza(b"<iq type='get' id='1'/>"), Nonza::Stanza);
        assert_eq!(
            nonza(b"<inactive xmlns='urn:xmpp:csi:0'/>"),
            Nonza::Inactive
        );
        assert_eq!(
            nonza(b"<c:active xmlns:c='urn:xmpp:csi:0'/>"),
            Nonza::Active
        );
        assert_eq!(
            nonza(b"<enable xmlns='urn:xmpp:sm:3'/>"),
            Nonza::Unsupported
        );
        assert_eq!(nonza(b"<message xmlns='jabber:server'/>"), Nonza::Stanza);
        assert_eq!(nonza(b"<foo/>"), Nonza::Unsupported);
    }

    #[test]
    fn holds_presence_and_chat_states_until_urgent_or_active() {
        let mut h = Held::new();
        let p = b"<presence from='bob@x/y'/>".to_vec();
        assert_eq!(h.deliver(p.clone()), vec![p.clone()], "active: at once");
        h.inactive();
        assert!(h.deliver(p.clone()).is_empty());
        let state = b"<message from='bob@x/y'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>".to_vec();
        assert!(h.deliver(state.clone()).is_empty());
        let msg = b"<message from='bob@x/y'><body>hi</body></message>".to_vec();
        assert_eq!(h.deliver(msg.clone()), vec![p.clone(), state, msg]);
        assert!(h.deliver(p.clone()).is_empty());
        assert_eq!(h.active(), vec![p.clone()]);
        assert_eq!(h.deliver(p.clone()), vec![p]);
        // A carbon of a message with a body is urgent too.
        h.inactive();
        let carbon = b"<message from='a@b'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message></forwarded></sent></message>".to_vec();
        assert_eq!(h.deliver(carbon.clone()), vec![carbon]);
    }
}
