//! JIDs (RFC 7622): parse, validate, normalise, bare and full forms.
//!
//! Normalisation here is the subset that needs no Unicode tables: the
//! localpart and domain are lowercased (full Unicode lowercase), the
//! resource is kept as is. Rejected: empty parts, parts over 1023 bytes,
//! forbidden localpart characters (`"&'/:<>@` and space), control
//! characters, a domain with `/`/`@`, a trailing dot is removed.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JidError(pub &'static str);

impl fmt::Display for JidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JID: {}", self.0)
    }
}

impl std::error::Error for JidError {}

impl Jid {
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        if s.is_empty() {
            return Err(JidError("empty"));
        }
        // Cheap bound before any work: three parts of at most 1023 bytes.
        if s.len() > 3 * MAX_PART + 2 {
            return Err(JidError("too long"));
        }
        let (rest, resource) = match s.split_once('/') {
            Some((rest, res)) => (rest, Some(check_resource(res)?)),
            None => (s, None),
        };
        let (local, domain) = match rest.split_once('@') {
            Some((l, d)) => (Some(check_local(l)?), d),
            None => (None, rest),
        };
        let domain = check_domain(domain)?;
        Ok(Jid {
            local,
            domain,
            resource,
        })
    }
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }
    /// The same JID without the resource.
    pub fn bare(&self) -> Jid {
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }
    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }
    /// This JID's bare form with another resource.
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        let resource = check_resource(resource)?;
        Ok(Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: Some(resource),
        })
    }
}

/// Longest part in bytes (RFC 7622 §3.2, §3.3, §3.4).
pub const MAX_PART: usize = 1023;

/// Control characters and XML non-characters are refused in every part.
fn bad_char(c: char) -> bool {
    c.is_control() || !crate::escape::is_xml_char(c)
}

fn check_local(l: &str) -> Result<String, JidError> {
    if l.is_empty() {
        return Err(JidError("empty localpart"));
    }
    if l.chars().any(bad_char) {
        return Err(JidError("control character in localpart"));
    }
    if l.chars()
        .any(|c| matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@') || c.is_whitespace())
    {
        return Err(JidError("forbidden character in localpart"));
    }
    let l = l.to_lowercase();
    if l.len() > MAX_PART {
        return Err(JidError("localpart too long"));
    }
    Ok(l)
}

fn check_resource(r: &str) -> Result<String, JidError> {
    if r.is_empty() {
        return Err(JidError("empty resourcepart"));
    }
    if r.len() > MAX_PART {
        return Err(JidError("resourcepart too long"));
    }
    if r.chars().any(bad_char) {
        return Err(JidError("control character in resourcepart"));
    }
    Ok(r.to_string())
}

fn check_domain(d: &str) -> Result<String, JidError> {
    if d.chars().any(bad_char) {
        return Err(JidError("control character in domainpart"));
    }
    if d.contains('@') {
        return Err(JidError("'@' in domainpart"));
    }
    if d.chars().any(char::is_whitespace) {
        return Err(JidError("space in domainpart"));
    }
    // Checks apply to the lowercased form, the one that is kept: lowercasing
    // can lengthen a part, and turn a non-ASCII label into an ASCII one
    // (KELVIN SIGN is 'k'), so a JID checked before it could come out as a
    // string that no longer parses.
    let lower = d.strip_suffix('.').unwrap_or(d).to_lowercase();
    let d = lower.as_str();
    if d.is_empty() {
        return Err(JidError("empty domainpart"));
    }
    if d.len() > MAX_PART {
        return Err(JidError("domainpart too long"));
    }
    if let Some(inner) = d.strip_prefix('[') {
        // IPv6 literal (RFC 7622 §3.2 / RFC 3986 IP-literal).
        let inner = inner
            .strip_suffix(']')
            .ok_or(JidError("unterminated IPv6 literal"))?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| JidError("bad IPv6 literal"))?;
        return Ok(format!("[{ip}]"));
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(JidError("empty label in domainpart"));
        }
        if label.is_ascii() && label.len() > 63 {
            return Err(JidError("label over 63 bytes in domainpart"));
        }
        // ASCII: letters, digits, '-' and '_' (SRV-style names); non-ASCII
        // (IDN U-labels) is allowed except for symbols checked above.
        let ok = label.chars().all(|c| {
            if c.is_ascii() {
                c.is_ascii_alphanumeric() || c == '-' || c == '_'
            } else {
                true
            }
        });
        if !ok {
            return Err(JidError("forbidden character in domainpart"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(JidError("label starts or ends with '-' in domainpart"));
        }
    }
    Ok(lower)
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain write_str: `write!` ran the format machinery per part, and
        // JIDs are turned into strings per message.
        if let Some(l) = &self.local {
            f.write_str(l)?;
            f.write_str("@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            f.write_str("/")?;
            f.write_str(r)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Jid {
        Jid::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn jid_parse_forms() {
        let j = ok("User@Example.COM/Res");
        assert_eq!(j.local(), Some("user"));
        assert_eq!(j.domain(), "example.com");
        assert_eq!(j.resource(), Some("Res"));
        assert_eq!(j.to_string(), "user@example.com/Res");
        assert_eq!(j.bare().to_string(), "user@example.com");
        assert!(!j.is_bare() && j.bare().is_bare());

        let j = ok("example.com");
        assert_eq!(
            (j.local(), j.domain(), j.resource()),
            (None, "example.com", None)
        );
        let j = ok("example.com/r");
        assert_eq!((j.local(), j.resource()), (None, Some("r")));
        assert_eq!(ok("a@example.com.").to_string(), "a@example.com");
        assert_eq!(ok("a@localhost").domain(), "localhost");
        assert_eq!(ok("a@127.0.0.1").domain(), "127.0.0.1");
        assert_eq!(ok("a@[::1]").domain(), "[::1]");
        assert_eq!(ok("a@[2001:DB8::1]").domain(), "[2001:db8::1]");
        assert_eq!(ok("ÄÖÜ@Bücher.example").to_string(), "äöü@bücher.example");
        assert_eq!(ok("a@_xmpp.example").domain(), "_xmpp.example");
    }

    #[test]
    fn jid_resource_is_everything_after_first_slash() {
        let j = ok("a@b/c/d@e/../f");
        assert_eq!(j.resource(), Some("c/d@e/../f"));
        assert_eq!(j.domain(), "b");
        let j = ok("b/x@y");
        assert_eq!(
            (j.local(), j.domain(), j.resource()),
            (None, "b", Some("x@y"))
        );
        let j = ok("a@b/ Mixed Case ");
        assert_eq!(j.resource(), Some(" Mixed Case "));
        assert_eq!(j.to_string(), "a@b/ Mixed Case ");
    }

    #[test]
    fn jid_display_round_trips() {
        for s in ["a@b", "a@b/c", "b", "b/c/d", "x@[::1]/r", "ü@ß.example/Ω"] {
            let j = ok(s);
            assert_eq!(ok(&j.to_string()), j, "{s}");
        }
    }

    #[test]
    fn jid_rejects_hostile() {
        let long = "a".repeat(3000);
        let part = "a".repeat(1024);
        let max = "a".repeat(1023);
        let label = "a".repeat(64);
        for bad in [
            String::new(),
            "@".into(),
            "/".into(),
            "@b".into(),
            "a@".into(),
            "a@/r".into(),
            "a@b/".into(),
            "a@@b".into(),
            "a@b@c".into(),
            "..".into(),
            ".".into(),
            "a@..".into(),
            "a@.b".into(),
            "a@b..c".into(),
            "a@b c".into(),
            "a b@c".into(),
            "a\0@b".into(),
            "a@b\0".into(),
            "a@b/r\0".into(),
            "a@b/r\n".into(),
            "a@b/\u{85}".into(),
            "a@b/\u{FFFE}".into(),
            "a\t@b".into(),
            "a\"@b".into(),
            "a&@b".into(),
            "a'@b".into(),
            "a:b@c".into(),
            "a<@b".into(),
            "a>@b".into(),
            "a@b:5222".into(),
            "a@b<c".into(),
            "a@-b".into(),
            "a@[::1".into(),
            "a@[nothex]".into(),
            "a@b.c..".into(),
            long.clone(),
            format!("{long}@b"),
            format!("a@{long}"),
            format!("a@b/{long}"),
            format!("{part}@b"),
            format!("a@b/{part}"),
            format!("a@{label}.b"),
        ] {
            assert!(Jid::parse(&bad).is_err(), "{bad:?} accepted");
        }
        assert!(Jid::parse(&format!("{max}@b/{max}")).is_ok());
    }

    /// Found by fuzzing (fuzz/jid_path): the domain was checked before
    /// lowercasing, so the normalised JID did not parse again.
    #[test]
    fn jid_domain_checked_after_lowercasing() {
        let kelvin = "\u{212A}".repeat(64);
        assert!(Jid::parse(&format!("a@{kelvin}.example")).is_err());
        let lengthens = "\u{23A}".repeat(400); // 2 bytes, 3 once lowercased
        assert!(Jid::parse(&format!("a@{lengthens}")).is_err());
        for s in ["a@\u{212A}.example", "a@\u{23A}x.example"] {
            let j = ok(s);
            assert_eq!(ok(&j.to_string()), j, "{s}");
        }
        assert_eq!(ok("a@\u{212A}.example").domain(), "k.example");
    }

    #[test]
    fn jid_with_resource() {
        let j = ok("A@B/old");
        let k = j.with_resource("new/x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.to_string(), "a@b/new/x");
        assert!(j.with_resource("").is_err());
        assert!(j.with_resource("a\0").is_err());
        assert!(j.with_resource(&"r".repeat(1024)).is_err());
    }
}
