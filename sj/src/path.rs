//! The ONE rule that turns a name from the network into a path component
//! under the account directory (DESIGN §3).
//!
//! Contacts are normalised bare JIDs; iq ids and namespaces are arbitrary
//! strings. The result never contains `/` or NUL, is never `.`, `..` or
//! empty, never one of the reserved names of the account directory, never
//! starts with `.`, and is at most 255 bytes. Bytes that would break these
//! rules are percent-encoded (`%2F`), and so is `%` itself, so the mapping
//! is reversible and two different names never share a path.

/// Names the account directory reserves for itself (its layout is
/// `sj::account`'s).
pub use crate::account::RESERVED;

/// What kind of name is being mapped (contacts must be valid bare JIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Contact,
    IqId,
    Namespace,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PathError {}

/// Map `name` to a single safe path component.
pub fn component(kind: Kind, name: &str) -> Result<String, PathError> {
    let what = match kind {
        Kind::Contact => "contact",
        Kind::IqId => "iq id",
        Kind::Namespace => "namespace",
        Kind::Client => "client name",
    };
    if name.is_empty() {
        return Err(PathError(format!("empty {what}")));
    }
    // A contact may come as a full JID with a long resource: only its bare
    // form counts (and Jid::parse bounds the input).
    if kind != Kind::Contact && name.len() > MAX {
        return Err(PathError(format!("{what} longer than {MAX} bytes")));
    }
    let out = match kind {
        Kind::Contact => {
            let jid =
                crate::jid::Jid::parse(name).map_err(|e| PathError(format!("contact {e}")))?;
            encode(&jid.bare().to_string())
        }
        _ => encode(name),
    };
    if out.len() > MAX {
        return Err(PathError(format!(
            "{what} longer than {MAX} bytes once encoded"
        )));
    }
    Ok(out)
}

/// Longest path component (NAME_MAX on common file systems).
pub const MAX: usize = 255;

/// ASCII bytes kept as they are: readable, and harmless to shells and globs.
fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'~' | b':' | b'@' | b'#' | b'+' | b'=' | b','
        )
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// The encoding proper, the same for every kind. Non-ASCII characters are
/// kept unless they are controls or white space.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let reserved = RESERVED.contains(&name);
    for (i, c) in name.char_indices() {
        let first = i == 0;
        let keep = if c.is_ascii() {
            let b = c as u8;
            safe(b) && !(first && (b == b'.' || reserved))
        } else {
            !c.is_control() && !c.is_whitespace()
        };
        if keep {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                push_pct(&mut out, b);
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The inverse of `component` (for listing directories).
/// `None` for a name `component` never produces (a stray file, a
/// non-canonical encoding), so a listing never shows one name twice.
pub fn decode(component: &str) -> Option<String> {
    if component.is_empty() || component.len() > MAX {
        return None;
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (encode(&name) == component).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [Kind; 4] = [Kind::Contact, Kind::IqId, Kind::Namespace, Kind::Client];

    fn c(kind: Kind, s: &str) -> String {
        component(kind, s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn assert_safe(out: &str) {
        assert!(!out.is_empty());
        assert!(!out.contains('/') && !out.contains('\0'), "{out:?}");
        assert!(out != "." && out != "..", "{out:?}");
        assert!(!out.starts_with('.'), "{out:?}");
        assert!(!RESERVED.contains(&out), "{out:?}");
        assert!(out.len() <= MAX, "{out:?}");
        assert!(!out.chars().any(char::is_control), "{out:?}");
    }

    #[test]
    fn path_examples() {
        assert_eq!(c(Kind::Namespace, "urn:xmpp:ping"), "urn:xmpp:ping");
        assert_eq!(
            c(Kind::Namespace, "http://jabber.org/protocol/disco#info"),
            "http:%2F%2Fjabber.org%2Fprotocol%2Fdisco#info"
        );
        assert_eq!(c(Kind::IqId, "in"), "%69n");
        assert_eq!(c(Kind::Client, "clients"), "%63lients");
        assert_eq!(c(Kind::IqId, "iq.d"), "%69q.d");
        assert_eq!(c(Kind::IqId, "."), "%2E");
        assert_eq!(c(Kind::IqId, ".."), "%2E.");
        assert_eq!(c(Kind::IqId, ".hidden"), "%2Ehidden");
        assert_eq!(c(Kind::IqId, "a.b"), "a.b");
        assert_eq!(c(Kind::IqId, "100%"), "100%25");
        assert_eq!(c(Kind::IqId, "a b"), "a%20b");
        assert_eq!(c(Kind::IqId, "a\0b"), "a%00b");
        assert_eq!(c(Kind::IqId, "inx"), "inx");
        assert_eq!(c(Kind::Client, "Gajim"), "Gajim");
    }

    #[test]
    fn path_contacts() {
        assert_eq!(c(Kind::Contact, "Juliet@Capulet.LIT"), "juliet@capulet.lit");
        assert_eq!(
            c(Kind::Contact, "juliet@capulet.lit/balcony/../x"),
            "juliet@capulet.lit"
        );
        assert_eq!(c(Kind::Contact, "Jürgen@Example.de"), "jürgen@example.de");
        assert_eq!(c(Kind::Contact, "capulet.lit."), "capulet.lit");
        assert_eq!(c(Kind::Contact, "a@[::1]"), "a@%5B::1%5D");
        assert_eq!(c(Kind::Contact, "a*?@b"), "a%2A%3F@b");
        for bad in [
            "", ".", "..", "../etc", "a@..", "a@b/", "in", "a@b@c", "a\0@b", "/",
        ] {
            // "in" is a valid domain JID: it maps to a safe name instead.
            if let Ok(out) = component(Kind::Contact, bad) {
                assert_eq!(bad, "in");
                assert_eq!(out, "%69n");
            }
        }
        assert!(component(Kind::Contact, &"a".repeat(300)).is_err());
        let long_resource = format!("Romeo@Montague.LIT/{}", "r".repeat(1000));
        assert_eq!(c(Kind::Contact, &long_resource), "romeo@montague.lit");
        assert!(component(Kind::Contact, &format!("a@b/{}", "r".repeat(1024))).is_err());
        assert!(component(Kind::Contact, &"a".repeat(5000)).is_err());
    }

    #[test]
    fn path_rejects() {
        for k in KINDS {
            assert!(component(k, "").is_err());
            assert!(component(k, &"x".repeat(256)).is_err());
        }
        assert_eq!(c(Kind::IqId, &"x".repeat(255)).len(), 255);
        // Grows past the limit once encoded.
        assert!(component(Kind::IqId, &"/".repeat(100)).is_err());
    }

    #[test]
    fn path_decode() {
        assert_eq!(decode("%69n").as_deref(), Some("in"));
        assert_eq!(decode("http:%2F%2Fx").as_deref(), Some("http://x"));
        assert_eq!(decode("a%20b").as_deref(), Some("a b"));
        for bad in [
            "", "in", ".", "..", ".x", "%", "%2", "%zz", "%2f", "%41", "%FF", "a/b", "a b", "%C3",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    /// A tiny deterministic generator: no dependency, same cases every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    #[test]
    fn path_property_hostile() {
        const ALPHABET: &[&str] = &[
            "/", ".", "..", "%", "\0", "\n", "\r", "\t", " ", "a", "Z", "0", "@", ":", "#", "\\",
            "'", "\"", "*", "?", "[", "]", "$", "~", "-", "é", "€", "😀", "\u{85}", "\u{2028}",
            "\u{a0}", "in", "out", "iq", ".d", "%2F", "%25", "\u{7f}", "\u{1}", "&", "<", ">", "=",
            ",", "+",
        ];
        let mut rng = Lcg(0x5eed);
        let mut names: Vec<String> = RESERVED.iter().map(|s| s.to_string()).collect();
        names.extend([".", "..", "...", "./", "../..", "%", "%%", "%2E", "/"].map(String::from));
        for _ in 0..20000 {
            let n = rng.next() % 12;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(ALPHABET[rng.next() as usize % ALPHABET.len()]);
            }
            names.push(s);
        }
        let mut seen = std::collections::HashMap::new();
        for name in &names {
            for k in KINDS {
                let Ok(out) = component(k, name) else {
                    assert!(
                        name.is_empty() || k == Kind::Contact || name.len() > 60,
                        "{k:?} {name:?}"
                    );
                    continue;
                };
                assert_safe(&out);
                if k == Kind::Contact {
                    // Contacts map from their normalised bare form.
                    let bare = crate::jid::Jid::parse(name).map(|j| j.bare().to_string());
                    assert_eq!(decode(&out), bare.ok(), "{name:?}");
                } else {
                    assert_eq!(
                        decode(&out).as_deref(),
                        Some(name.as_str()),
                        "{k:?} {name:?} -> {out:?}"
                    );
                }
                if k == Kind::IqId {
                    // Injective: two names never share a path.
                    if let Some(prev) = seen.insert(out.clone(), name.clone()) {
                        assert_eq!(&prev, name, "{out:?}");
                    }
                }
            }
        }
    }
}
