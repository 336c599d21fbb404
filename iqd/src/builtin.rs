//! Built-in answers: XEP-0199 ping, XEP-0092 version, XEP-0202 time,
//! XEP-0012 last activity, XEP-0030 disco#info.
//!
//! Each answers a `get` only; anything else (a `set`, a disco `node` iqd
//! does not own) is not for the built-ins and goes on to delegation.

use sj::ns::{CARBONS, DISCO_INFO, LAST, PING, TIME, VERSION};
use sj::xml::{escape_attr, escape_text, Element};
use std::time::{Duration, SystemTime};

/// Features advertised in disco#info besides the handlers' namespaces.
pub const FEATURES: &[&str] = &[DISCO_INFO, PING, VERSION, TIME, LAST, CARBONS];

/// What the built-ins need to know about the world.
pub struct Env<'a> {
    pub now: SystemTime,
    /// Seconds east of UTC of the local time zone.
    pub tz_offset: i64,
    /// How long the account has been idle, for XEP-0012.
    pub idle: Duration,
    /// The operating system, for XEP-0092.
    pub os: &'a str,
    /// Namespaces that have an executable handler in DIR/iq.d.
    pub handler_namespaces: &'a [String],
}

/// The payload of the answer to `iq`, or `None` when no built-in answers it.
/// `Some("")` is an empty result.
pub fn answer(iq: &Element, env: &Env) -> Option<String> {
    if iq.attr("type") != Some("get") {
        return None;
    }
    let mut kids = iq.elements();
    let q = kids.next()?;
    if kids.next().is_some() {
        return None;
    }
    match (&*q.ns, q.local_name()) {
        (PING, "ping") => Some(String::new()),
        (VERSION, "query") => Some(format!(
            "<query xmlns='{VERSION}'><name>sj-proxy</name><version>{}</version><os>{}</os></query>",
            escape_text(env!("CARGO_PKG_VERSION")),
            escape_text(env.os)
        )),
        (TIME, "time") => Some(format!(
            "<time xmlns='{TIME}'><tzo>{}</tzo><utc>{}</utc></time>",
            sj::time::tzo(env.tz_offset),
            sj::time::utc_iso(env.now)
        )),
        (LAST, "query") => Some(format!(
            "<query xmlns='{LAST}' seconds='{}'/>",
            env.idle.as_secs()
        )),
        (DISCO_INFO, "query") if q.attr("node").is_none() => Some(disco(env.handler_namespaces)),
        _ => None,
    }
}

fn disco(extra: &[String]) -> String {
    let mut feats: Vec<&str> = FEATURES.to_vec();
    for ns in extra {
        feats.push(ns);
    }
    feats.sort_unstable();
    feats.dedup();
    let mut s = format!(
        "<query xmlns='{DISCO_INFO}'><identity category='client' type='pc' name='sj-proxy'/>"
    );
    for f in feats {
        s.push_str(&format!("<feature var='{}'/>", escape_attr(f)));
    }
    s.push_str("</query>");
    s
}

/// The OS name for XEP-0092: `uname -s` and release, e.g. `Linux 6.1.0`.
pub fn os_name() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => format!(
            "{} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy()
        ),
        Err(_) => std::env::consts::OS.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ns: &[String]) -> Env<'_> {
        Env {
            now: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tz_offset: -5 * 3600 - 1800,
            idle: Duration::from_secs(42),
            os: "Linux",
            handler_namespaces: ns,
        }
    }

    fn ask(xml: &str, ns: &[String]) -> Option<String> {
        let e = Element::parse(xml.as_bytes()).expect("parse");
        answer(&e, &env(ns))
    }

    #[test]
    fn ping() {
        assert_eq!(
            ask(
                "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
                &[]
            ),
            Some(String::new())
        );
        assert_eq!(
            ask(
                "<iq type='set' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
                &[]
            ),
            None
        );
    }

    #[test]
    fn version() {
        let a = ask(
            "<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>",
            &[],
        )
        .expect("answered");
        assert!(a.contains("<name>sj-proxy</name>"));
        assert!(a.contains(&format!("<version>{}</version>", env!("CARGO_PKG_VERSION"))));
        assert!(a.contains("<os>Linux</os>"));
        let e = Element::parse(a.as_bytes()).expect("well-formed");
        assert_eq!(e.ns, VERSION);
    }

    #[test]
    fn time() {
        let a = ask(
            "<iq type='get' id='1'><time xmlns='urn:xmpp:time'/></iq>",
            &[],
        )
        .expect("answered");
        assert_eq!(
            a,
            "<time xmlns='urn:xmpp:time'><tzo>-05:30</tzo><utc>2023-11-14T22:13:20Z</utc></time>"
        );
    }

    #[test]
    fn last() {
        let a = ask(
            "<iq type='get' id='1'><query xmlns='jabber:iq:last'/></iq>",
            &[],
        );
        assert_eq!(
            a.as_deref(),
            Some("<query xmlns='jabber:iq:last' seconds='42'/>")
        );
    }

    #[test]
    fn disco() {
        let ns = vec!["urn:example:echo".to_string()];
        let a = ask(
            "<iq type='get' id='1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            &ns,
        )
        .expect("answered");
        let e = Element::parse(a.as_bytes()).expect("well-formed");
        let id = e
            .elements()
            .find(|c| c.local_name() == "identity")
            .expect("identity");
        assert_eq!(id.attr("category"), Some("client"));
        assert_eq!(id.attr("type"), Some("pc"));
        assert_eq!(id.attr("name"), Some("sj-proxy"));
        let feats: Vec<&str> = e
            .elements()
            .filter(|c| c.local_name() == "feature")
            .filter_map(|c| c.attr("var"))
            .collect();
        for f in FEATURES.iter().copied().chain(["urn:example:echo"]) {
            assert!(feats.contains(&f), "{f} advertised");
        }
        // A node iqd does not own is not answered by the built-ins.
        assert_eq!(
            ask(
                "<iq type='get' id='1'><query xmlns='http://jabber.org/protocol/disco#info' node='n'/></iq>",
                &ns
            ),
            None
        );
    }

    #[test]
    fn unknown_is_not_builtin() {
        assert_eq!(
            ask(
                "<iq type='get' id='1'><query xmlns='urn:example:x'/></iq>",
                &[]
            ),
            None
        );
        assert_eq!(ask("<iq type='get' id='1'/>", &[]), None);
    }
}
