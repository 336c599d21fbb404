//! Which clients a record goes to: the pure part of mirrord.
//!
//! Records arrive already validated (DESIGN §4), so this module only looks
//! at what it needs: the top-level `to` and `from` (`sj::xml::Top`), and,
//! for the rare record that starts with `<message` and mentions
//! `urn:xmpp:carbons:2`, the tree down to the forwarded message of a
//! XEP-0280 sent copy (`sj::xml::Element`). It never panics on a
//! malformed record; it answers "broadcast" instead.

use sj::account::Account;
use sj::ns::{CARBONS, CLIENT, FORWARD};
use sj::xml::{Element, Top};

/// Where one record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every client.
    All,
    /// Only this client (its directory name).
    Only(String),
    /// Every client but this one (the origin of a sent copy).
    AllBut(String),
    /// Nobody: addressed to a client of this account that is not there.
    Nobody,
}

/// Decide where `record` goes. `client` maps a resource to the directory
/// name of the registered client that has it, if any.
///
/// Cost: the top-level start tag is read once; only a `<message>` that
/// mentions `urn:xmpp:carbons:2` is parsed further.
pub fn target<'c>(
    record: &[u8],
    account: &Account,
    client: impl Fn(&str) -> Option<&'c str>,
) -> Target {
    let top = Top::parse(record);
    if let Some(to) = top.as_ref().and_then(|t| t.attr("to")) {
        if let Some(res) = account.resource_of(&to) {
            if let Some(dir) = client(res) {
                return Target::Only(dir.to_string());
            }
            if account.resource() != Some(res) {
                // A client that has gone away: nobody else should see it.
                return Target::Nobody;
            }
        }
    }
    let message = top.as_ref().is_some_and(|t| t.name() == "message");
    if message && mentions_carbons(record) {
        if let Some(origin) = sent_origin(top.as_ref(), account) {
            if let Some(dir) = client(&origin) {
                return Target::AllBut(dir.to_string());
            }
        }
    }
    Target::All
}

/// Does the record mention the carbons namespace anywhere? (The searcher
/// is built once: building it costs more than a search of a chat message.)
fn mentions_carbons(record: &[u8]) -> bool {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER
        .get_or_init(|| memchr::memmem::Finder::new(CARBONS))
        .find(record)
        .is_some()
}

/// The origin resource of a XEP-0280 sent copy made for this account:
/// `<message from='BARE'><sent xmlns='urn:xmpp:carbons:2'><forwarded
/// xmlns='urn:xmpp:forward:0'><message from='BARE/ORIGIN'>`.
fn sent_origin(top: Option<&Top<'_>>, account: &Account) -> Option<String> {
    let top = top?;
    if !account.is_bare(&top.attr("from")?) {
        return None;
    }
    let el = Element::parse(top.record())?;
    if el.local_name() != "message" || el.ns != CLIENT {
        return None;
    }
    let inner = el
        .child("sent", CARBONS)?
        .child("forwarded", FORWARD)?
        .child("message", CLIENT)?;
    account.resource_of(inner.attr("from")?).map(str::to_string)
}

/// The resource of the client whose directory is `name`: the name
/// decoded by the one path rule (`sj::path::decode`), or the name as it is
/// when the rule did not make it (a raw client's directory made by hand).
pub fn resource_of_dir(name: &str) -> String {
    sj::path::decode(name).unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> Account {
        let jid = sj::jid::Jid::parse("alice@localhost/sj-proxy").expect("jid");
        Account::new(&jid, sj::account::Dir::new("/nonexistent"))
    }

    fn known(res: &str) -> Option<&'static str> {
        match res {
            "gajim" => Some("gajim"),
            "dino" => Some("dino"),
            "a/b" => Some("a%2Fb"),
            _ => None,
        }
    }

    fn t(rec: &str) -> Target {
        target(rec.as_bytes(), &acct(), known)
    }

    #[test]
    fn addressed_to_a_client() {
        assert_eq!(
            t("<iq to='alice@localhost/gajim' type='result' id='1'/>"),
            Target::Only("gajim".into())
        );
        assert_eq!(
            t(r#"<presence from="bob@x" to="ALICE@localhost/dino"/>"#),
            Target::Only("dino".into())
        );
        assert_eq!(
            t("<iq to='alice@localhost/a&#47;b' type='result' id='1'/>"),
            Target::Only("a%2Fb".into())
        );
        // Our JID as normalisation knows it (sj::jid), trailing dot too.
        assert_eq!(
            t("<iq to='ALICE@LocalHost./dino' type='result' id='1'/>"),
            Target::Only("dino".into())
        );
    }

    #[test]
    fn broadcast() {
        assert_eq!(t("<presence from='bob@x'/>"), Target::All);
        assert_eq!(t("<message to='alice@localhost'/>"), Target::All);
        assert_eq!(t("<message to='alice@localhost/sj-proxy'/>"), Target::All);
        assert_eq!(t("<message to='bob@localhost/gajim'/>"), Target::All);
        assert_eq!(t("garbage"), Target::All);
        assert_eq!(t(""), Target::All);
        assert_eq!(t("<message to='unterminated"), Target::All);
    }

    #[test]
    fn gone_client_gets_nothing_and_nobody_else_does() {
        assert_eq!(
            t("<iq to='alice@localhost/gone' type='result'/>"),
            Target::Nobody
        );
    }

    const SENT: &str = "<message from='alice@localhost' to='alice@localhost/sj-proxy' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/gajim' to='bob@localhost' type='chat'><body>hi</body></message></forwarded></sent></message>";

    #[test]
    fn sent_copy_skips_origin() {
        assert_eq!(t(SENT), Target::AllBut("gajim".into()));
        // Origin not a client (DIR/in, a daemon, another device): everyone.
        assert_eq!(t(&SENT.replace("/gajim'", "/in'")), Target::All);
        // With a delay before the message and prefixed carbons element.
        let s = "<message from='alice@localhost'><c:sent xmlns:c='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='x'/><message xmlns='jabber:client' from='alice@localhost/dino'><body>a&lt;b</body></message></forwarded></c:sent></message>";
        assert_eq!(t(s), Target::AllBut("dino".into()));
    }

    #[test]
    fn not_a_sent_copy() {
        // Forged: not from our bare JID.
        assert_eq!(
            t(&SENT.replace("from='alice@localhost' ", "from='eve@x' ")),
            Target::All
        );
        // received, not sent.
        assert_eq!(
            t(&SENT
                .replace("<sent ", "<received ")
                .replace("</sent>", "</received>")),
            Target::All
        );
        // Wrong namespace on sent.
        assert_eq!(t(&SENT.replace("carbons:2'", "carbons:1'")), Target::All);
        // A body that merely mentions the namespace.
        assert_eq!(
            t("<message from='alice@localhost'><body>urn:xmpp:carbons:2</body><x><message from='alice@localhost/gajim'/></x></message>"),
            Target::All
        );
        // The path must be nested: a sibling message after sent is not it.
        assert_eq!(
            t("<message from='alice@localhost'><sent xmlns='urn:xmpp:carbons:2'/><forwarded xmlns='urn:xmpp:forward:0'><message from='alice@localhost/gajim'/></forwarded></message>"),
            Target::All
        );
    }

    #[test]
    fn decode() {
        assert_eq!(resource_of_dir("a%2Fb%25"), "a/b%");
        assert_eq!(resource_of_dir("plain"), "plain");
        assert_eq!(resource_of_dir("bad%zz%"), "bad%zz%");
    }
}
