//! Names: qualified names as the framer checks them (XML names, one colon
//! at most, Namespaces in XML) and namespace resolution, with the reserved
//! prefixes and the declarations copied from the stream header.

use super::{fail, Condition, Header, Res};
use crate::ns;
use crate::xml::{is_ws, name_end, unescape, NAME_CHAR_ASCII_NO_COLON, NAME_START_ASCII};
use std::borrow::Cow;

/// The qualified name at the start of a tag (`<name` or `</name`), as sent.
#[inline]
pub(super) fn tag_name(tag: &[u8]) -> &[u8] {
    let from = if tag.get(1) == Some(&b'/') { 2 } else { 1 };
    let rest = tag.get(from..).unwrap_or(&[]);
    let len = rest
        .iter()
        .position(|&b| is_ws(b) || b == b'/' || b == b'>')
        .unwrap_or(rest.len());
    &rest[..len]
}

/// Names are short: a plain loop beats `memchr` here.
#[inline]
pub(super) fn colon(q: &[u8]) -> Option<usize> {
    q.iter().position(|&b| b == b':')
}

#[inline]
pub(super) fn split_qname(q: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match colon(q) {
        Some(i) => (Some(&q[..i]), &q[i + 1..]),
        None => (None, q),
    }
}

/// A namespace-well-formed QName: `local` or `prefix:local`.
pub(super) fn is_qname(q: &[u8]) -> bool {
    match colon(q) {
        None => true,
        // The local part must itself start with a NameStartChar.
        Some(i) => {
            i > 0
                && i + 1 < q.len()
                && colon(&q[i + 1..]).is_none()
                && name_end(q, i + 1) == q.len()
        }
    }
}

/// The QName starting at `s[start]`: its end and the index of its colon.
/// Fails as `name_end` and `is_qname` would; names are nearly always
/// ASCII, checked here in one loop, and anything else goes to those two.
#[inline]
pub(super) fn qname(s: &[u8], start: usize) -> Res<(usize, Option<usize>)> {
    let mut j = start;
    let mut colon = None;
    let mut colons = 0;
    loop {
        while j < s.len() && NAME_CHAR_ASCII_NO_COLON[s[j] as usize] {
            j += 1;
        }
        if j < s.len() && s[j] == b':' {
            colon.get_or_insert(j);
            colons += 1;
            j += 1;
            continue;
        }
        break;
    }
    if j < s.len() && s[j] >= 0x80 {
        return qname_general(s, start);
    }
    if j == start || !NAME_START_ASCII[s[start] as usize] {
        return fail(Condition::NotWellFormed, "invalid name");
    }
    if let Some(k) = colon {
        if k == start || k + 1 == j || colons > 1 || !NAME_START_ASCII[s[k + 1] as usize] {
            return fail(Condition::NotWellFormed, "invalid qualified name");
        }
    }
    Ok((j, colon))
}

/// `qname` for any characters.
#[inline(never)]
pub(super) fn qname_general(s: &[u8], start: usize) -> Res<(usize, Option<usize>)> {
    let end = name_end(s, start);
    if end == start {
        return fail(Condition::NotWellFormed, "invalid name");
    }
    if !is_qname(&s[start..end]) {
        return fail(Condition::NotWellFormed, "invalid qualified name");
    }
    Ok((end, colon(&s[start..end]).map(|k| start + k)))
}

/// A prefix declaration in scope: `xmlns:prefix='value'` on an element at
/// `depth`; an empty prefix is the default namespace.
#[derive(Debug, Clone, Copy)]
pub(super) struct Decl {
    pub prefix: (usize, usize),
    pub value: (usize, usize),
    pub depth: usize,
}

const XML_NS: &[u8] = ns::XML.as_bytes();
const XMLNS_NS: &[u8] = ns::XMLNS.as_bytes();

/// Namespaces in XML 1.0 §3 constraints on a declaration of `prefix` (None:
/// the default namespace) with value `raw` as sent: a prefix is never
/// undeclared (`xmlns:p=''`), `xmlns` is never declared, `xml` only to its
/// own name, and neither reserved name is bound to another prefix. Strict
/// XML parsers in clients refuse these, so a record must never carry one
/// (RFC 6120 §4.9.3.13: XML-NAMES violations are not-well-formed).
pub(super) fn check_ns_decl(prefix: Option<&[u8]>, raw: &[u8]) -> Res<()> {
    let v = &*ns_name(raw);
    let ok = match prefix {
        None => v != XML_NS && v != XMLNS_NS,
        Some(b"xml") => v == XML_NS,
        Some(p) => !v.is_empty() && p != b"xmlns" && v != XML_NS && v != XMLNS_NS,
    };
    if ok {
        Ok(())
    } else {
        fail(
            Condition::NotWellFormed,
            "namespace declaration breaks the reserved-name rules",
        )
    }
}

/// A namespace name as sent (`raw`), its references resolved: rarely any.
#[inline]
pub(super) fn ns_name(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.contains(&b'&') {
        let v = unescape(raw, true).unwrap_or_default();
        return Cow::Owned(v.into_owned().into_bytes());
    }
    Cow::Borrowed(raw)
}

/// The namespace of prefix `p` in scope; a prefix known only from the
/// stream header is noted in `needed` so its declaration can be added.
pub(super) fn resolve<'a>(
    s: &'a [u8],
    p: &[u8],
    decls: &[Decl],
    header: Option<&'a Header>,
    needed: &mut Vec<usize>,
) -> Res<&'a [u8]> {
    if let Some(d) = decls.iter().rev().find(|d| &s[d.prefix.0..d.prefix.1] == p) {
        return Ok(&s[d.value.0..d.value.1]);
    }
    if p == b"xml" {
        return Ok(XML_NS);
    }
    if let Some(h) = header {
        if let Some(k) = h.prefixes.iter().position(|(hp, _)| hp.as_slice() == p) {
            if !needed.contains(&k) {
                needed.push(k);
            }
            return Ok(h.prefixes[k].1.as_bytes());
        }
    }
    // A Namespaces in XML constraint, so not-well-formed (RFC 6120
    // §4.9.3.13); invalid-namespace is about the stream's namespaces.
    fail(
        Condition::NotWellFormed,
        format!("undeclared prefix {}", String::from_utf8_lossy(p)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qname_fast_path_matches_general() {
        // Every string of up to four characters from name starts, name
        // characters, colons, non-name ASCII and multibyte characters.
        let alphabet = [
            "a", "Z", "_", ":", "1", "-", ".", "é", "\u{300}", "\u{B7}", " ", ">", "=",
        ];
        let mut cases = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &last {
                for a in alphabet {
                    next.push(format!("{p}{a}"));
                }
            }
            cases.extend(next.iter().cloned());
            last = next;
        }
        for c in &cases {
            for tail in ["", "/", "'"] {
                let s = format!("{c}{tail}");
                let b = s.as_bytes();
                assert_eq!(qname(b, 0), qname_general(b, 0), "{s:?}");
                // Not at the start of the buffer, too.
                let t = format!("<{s}");
                assert_eq!(
                    qname(t.as_bytes(), 1),
                    qname_general(t.as_bytes(), 1),
                    "{t:?}"
                );
            }
        }
        // Truncated UTF-8 at the end of what is buffered.
        for s in [&b"a\xC3"[..], b"ab\xE2\x82", b"\xC3", b"a:\xC3"] {
            assert_eq!(qname(s, 0), qname_general(s, 0), "{s:?}");
        }
    }
}
