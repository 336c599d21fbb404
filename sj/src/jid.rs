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
    c.is_control() || !crate::xml::is_xml_char(c)
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

/// The control contact's reserved JID: `.invalid` never resolves (RFC
/// 2606), so nothing addressed to it can mean a real entity. sj-c2s answers
/// it; sj-proxy never lets a stanza to or from it cross the upstream link.
pub const CONTROL: &str = "sj-proxy@control.invalid";

impl Jid {
    /// Is this the control contact (any resource)?
    pub fn is_control(&self) -> bool {
        self.local.as_deref() == Some("sj-proxy") && self.domain == "control.invalid"
    }
}

/// Is `jid` (a JID as written in a stanza) the control contact, any case,
/// any resource?
pub fn is_control(jid: &str) -> bool {
    Jid::parse(jid).is_ok_and(|j| j.is_control())
}

/// The rule for a resource a client asks to bind: the part of PRECIS
/// OpaqueString (RFC 8265 §4.2, as RFC 7622 §3.4 uses it) that needs no
/// Unicode tables, refusing where PRECIS would map, so that what is bound
/// is exactly what another client sees.
///
/// Refused: control characters; format characters (zero-width spaces and
/// joiners, bidi embeddings, overrides and isolates, the BOM, tags, ...) and
/// the other default-ignorable code points (variation selectors, Hangul
/// fillers, ...), which show as nothing; private-use code points and
/// noncharacters; white space other than U+0020, and U+0020 at either end
/// (PRECIS would map or keep them invisible); and characters that NFC would
/// change, which make two look-alike names of one: the combining marks of
/// the Latin, Greek and Cyrillic scripts (U+0300-U+036F, U+1AB0-U+1AFF,
/// U+1DC0-U+1DFF, U+20D0-U+20FF, U+FE20-U+FE2F: write `é`, not `e` +
/// U+0301), Hangul conjoining jamo (PRECIS disallows them), and the
/// canonical singletons and composition exclusions (the ohm, kelvin and
/// angstrom signs, CJK compatibility ideographs, ...). Not checked, for
/// want of tables: unassigned code points, and marks of other scripts that
/// NFC would compose (a name with them is bound as it is, byte for byte).
pub fn resource_allowed(r: &str) -> Result<(), JidError> {
    check_resource(r)?;
    if r.starts_with(' ') || r.ends_with(' ') {
        return Err(JidError("space at either end of resourcepart"));
    }
    for c in r.chars() {
        if c != ' ' && c.is_whitespace() {
            return Err(JidError("white space other than U+0020 in resourcepart"));
        }
        let why = match u32::from(c) {
            _ if c.is_control() => "control character in resourcepart",
            n if invisible(n) => {
                "invisible (format or default-ignorable) character in resourcepart"
            }
            0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD => {
                "private-use character in resourcepart"
            }
            0xFDD0..=0xFDEF => "noncharacter in resourcepart",
            n if n & 0xFFFE == 0xFFFE => "noncharacter in resourcepart",
            n if combining(n) => "combining mark in resourcepart (use the precomposed character)",
            0x1100..=0x11FF | 0xA960..=0xA97F | 0xD7B0..=0xD7FF => {
                "Hangul conjoining jamo in resourcepart"
            }
            n if nfc_changes(n) => "character that NFC replaces in resourcepart",
            _ => continue,
        };
        return Err(JidError(why));
    }
    Ok(())
}

/// General category Cf and the other Default_Ignorable_Code_Point
/// characters (Unicode 15): they render as nothing.
fn invisible(n: u32) -> bool {
    matches!(n,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5
        | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
        | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB
        | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890 | 0x0891 | 0x08E2
        | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// Combining marks of the scripts with precomposed letters.
fn combining(n: u32) -> bool {
    matches!(n,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF
        | 0x20D0..=0x20FF | 0x302A..=0x302F | 0x3099 | 0x309A | 0xFE20..=0xFE2F)
}

/// Characters NFC replaces by others on their own (canonical singletons
/// and composition exclusions outside the ranges refused above).
fn nfc_changes(n: u32) -> bool {
    matches!(n,
        0x0340 | 0x0341 | 0x0343 | 0x0344 | 0x0374 | 0x037E | 0x0387
        | 0x0958..=0x095F | 0x09DC | 0x09DD | 0x09DF | 0x0A33 | 0x0A36
        | 0x0A59..=0x0A5B | 0x0A5E | 0x0B5C | 0x0B5D | 0x0F43 | 0x0F4D
        | 0x0F52 | 0x0F57 | 0x0F5C | 0x0F69 | 0x0F73 | 0x0F75 | 0x0F76
        | 0x0F78 | 0x0F81 | 0x0F93 | 0x0F9D | 0x0FA2 | 0x0FA7 | 0x0FAC
        | 0x0FB9 | 0x1F71 | 0x1F73 | 0x1F75 | 0x1F77 | 0x1F79 | 0x1F7B
        | 0x1F7D | 0x1FBB | 0x1FBE | 0x1FC9 | 0x1FCB | 0x1FD3 | 0x1FDB
        | 0x1FE3 | 0x1FEB | 0x1FEE | 0x1FEF | 0x1FF9 | 0x1FFB | 0x1FFD
        | 0x2000 | 0x2001 | 0x2126 | 0x212A | 0x212B | 0x2329 | 0x232A
        | 0x2ADC | 0xF900..=0xFA0D | 0xFA10 | 0xFA12 | 0xFA15..=0xFA1E
        | 0xFA20 | 0xFA22 | 0xFA25 | 0xFA26 | 0xFA2A..=0xFAD9
        | 0xFB1D | 0xFB1F | 0xFB2A..=0xFB4E | 0x1D15E..=0x1D164
        | 0x1D1BB..=0x1D1C0 | 0x2F800..=0x2FA1D)
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
    fn resource_rule_refuses_invisible_and_look_alike_names() {
        for good in [
            "phone",
            "Phone-2",
            "телефон",
            "my laptop",
            "caf\u{e9}",
            "\u{d55c}\u{ad6d}",
            "\u{3a9}mega",
            "emoji \u{1f600}",
            "a/b",
        ] {
            assert_eq!(resource_allowed(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            " lead",
            "trail ",
            "a\u{a0}b",
            "a\u{3000}b",
            "a\u{2028}b",
            "a\tb",
            "zero\u{200b}width",
            "joiner\u{200d}",
            "\u{feff}bom",
            "\u{202e}txet",
            "\u{2067}iso",
            "soft\u{ad}hyphen",
            "vs\u{fe0f}",
            "tag\u{e0041}",
            "cafe\u{301}",
            "\u{1112}\u{1161}\u{11ab}",
            "\u{2126}",
            "\u{212b}ngstrom",
            "\u{e000}",
            "\u{fdd0}",
            "\u{1fffe}",
            "\u{f900}",
        ] {
            assert!(resource_allowed(bad).is_err(), "{bad:?} allowed");
        }
    }

    #[test]
    fn control_contact_any_case_any_resource() {
        assert!(is_control(CONTROL));
        assert!(is_control("SJ-Proxy@Control.Invalid/x y"));
        assert!(!is_control("sj-proxy@control.invalid.example"));
        assert!(!is_control("control.invalid"));
        assert!(!is_control("bob@localhost"));
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
