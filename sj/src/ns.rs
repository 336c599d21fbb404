//! Namespace names, each written once for every program.

/// XML itself (the `xml` prefix) and namespace declarations.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
pub const XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// RFC 6120: streams and their errors, the content namespace of records,
/// stanza errors, STARTTLS, SASL, resource binding.
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const CLIENT: &str = "jabber:client";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 session establishment, still answered for old clients.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// RFC 6121 roster.
pub const ROSTER: &str = "jabber:iq:roster";

/// XEP-0030 service discovery, XEP-0115 entity capabilities.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const CAPS: &str = "http://jabber.org/protocol/caps";

/// XEP-0280 message carbons and XEP-0297 forwarding.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
pub const CARBONS_RULES: &str = "urn:xmpp:carbons:rules:0";
pub const FORWARD: &str = "urn:xmpp:forward:0";

/// iqs answered by iqd: XEP-0199 ping, XEP-0092 version, XEP-0202 time,
/// XEP-0012 last activity.
pub const PING: &str = "urn:xmpp:ping";
pub const VERSION: &str = "jabber:iq:version";
pub const TIME: &str = "urn:xmpp:time";
pub const LAST: &str = "jabber:iq:last";

/// XEP-0203 delayed delivery and its legacy form, XEP-0091.
pub const DELAY: &str = "urn:xmpp:delay";
pub const LEGACY_DELAY: &str = "jabber:x:delay";

/// Message extensions: XEP-0334 hints, XEP-0184 receipts, XEP-0333
/// markers, XEP-0085 chat states, XEP-0308 corrections.
pub const HINTS: &str = "urn:xmpp:hints";
pub const RECEIPTS: &str = "urn:xmpp:receipts";
pub const MARKERS: &str = "urn:xmpp:chat-markers:0";
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
pub const CORRECT: &str = "urn:xmpp:message-correct:0";

/// Encrypted payloads: OMEMO (XEP-0384, and its old Conversations
/// namespace), OpenPGP (XEP-0373) and legacy OpenPGP (XEP-0027).
pub const OMEMO: &str = "urn:xmpp:omemo:2";
pub const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
pub const OPENPGP: &str = "urn:xmpp:openpgp:0";
pub const LEGACY_OPENPGP: &str = "jabber:x:encrypted";

/// XEP-0313 message archive management, XEP-0359 stanza ids, XEP-0059
/// result set management, XEP-0004 data forms.
pub const MAM: &str = "urn:xmpp:mam:2";
pub const SID: &str = "urn:xmpp:sid:0";
pub const RSM: &str = "http://jabber.org/protocol/rsm";
pub const DATA: &str = "jabber:x:data";
