//! The start of a stream: the XML declaration and the stream header, and
//! what the header declares that records need (DESIGN §4: a record never
//! relies on a prefix declared only on the header).

use super::checker::{check_text_bytes, Checker};
use super::names::{check_ns_decl, ns_name, split_qname};
use super::{fail, Condition, FrameError, Limits, Res};
use crate::xml::{is_ws, unescape};

/// The streams namespace, as the framer compares it.
pub(super) const STREAMS_NS: &[u8] = crate::ns::STREAMS.as_bytes();

/// What the stream header declared, needed to make records self-contained.
#[derive(Debug, Clone)]
pub(super) struct Header {
    /// Qualified name of the stream element as sent, e.g. `stream:stream`.
    pub qname: Vec<u8>,
    /// `xmlns:p` declarations of the header: prefix and unescaped URI.
    pub prefixes: Vec<(Vec<u8>, String)>,
}

/// `<?xml version='1.0' encoding='UTF-8' standalone='yes'?>`.
pub(super) fn parse_decl(d: &[u8]) -> Res<()> {
    if d.len() < 4 {
        return fail(Condition::RestrictedXml, "processing instruction");
    }
    let inner = &d[2..d.len() - 2];
    let tlen = inner.iter().position(|&b| is_ws(b)).unwrap_or(inner.len());
    if &inner[..tlen] != b"xml" {
        return fail(Condition::RestrictedXml, "processing instruction");
    }
    let mut i = tlen;
    let mut seen_version = false;
    while let Some((name, value, next)) = pseudo_attr(inner, i)? {
        i = next;
        match name {
            b"version"
                if !seen_version
                    && value.len() > 2
                    && value.starts_with(b"1.")
                    && value[2..].iter().all(u8::is_ascii_digit) =>
            {
                seen_version = true
            }
            b"encoding" if seen_version => {
                if !value.eq_ignore_ascii_case(b"UTF-8") {
                    return fail(
                        Condition::UnsupportedEncoding,
                        format!("encoding {}", String::from_utf8_lossy(value)),
                    );
                }
            }
            b"standalone" if seen_version && (value == b"yes" || value == b"no") => {}
            _ => return bad_decl(),
        }
    }
    if !seen_version {
        return bad_decl();
    }
    Ok(())
}

fn bad_decl<T>() -> Res<T> {
    fail(Condition::NotWellFormed, "malformed XML declaration")
}

/// A pseudo-attribute of the XML declaration: name, value, and where the
/// next one starts.
type PseudoAttr<'a> = (&'a [u8], &'a [u8], usize);

/// The pseudo-attribute of the declaration at `inner[i..]` (after the
/// whitespace before it); `None` at the end.
fn pseudo_attr(inner: &[u8], mut i: usize) -> Res<Option<PseudoAttr<'_>>> {
    let skip_ws = |mut i: usize| {
        while i < inner.len() && is_ws(inner[i]) {
            i += 1;
        }
        i
    };
    let ws_start = i;
    i = skip_ws(i);
    if i == inner.len() {
        return Ok(None);
    }
    if i == ws_start {
        return bad_decl();
    }
    let ns = i;
    while i < inner.len() && inner[i].is_ascii_alphabetic() {
        i += 1;
    }
    let name = &inner[ns..i];
    i = skip_ws(i);
    if inner.get(i) != Some(&b'=') {
        return bad_decl();
    }
    i = skip_ws(i + 1);
    let q = match inner.get(i) {
        Some(&q @ (b'\'' | b'"')) => q,
        _ => return bad_decl(),
    };
    let vs = i + 1;
    let Some(len) = inner[vs..].iter().position(|&b| b == q) else {
        return bad_decl();
    };
    Ok(Some((name, &inner[vs..vs + len], vs + len + 1)))
}

/// Is this top-level start tag in the streams namespace (declared on the
/// tag itself or, for a prefix, on the stream header)? A malformed tag is
/// not: the validating pass reports it.
pub(super) fn in_streams_ns(tag: &[u8], h: &Header) -> bool {
    let (mut attrs, mut out) = (Vec::new(), Vec::new());
    let mut c = Checker::new(tag, usize::MAX, &mut attrs, &mut out);
    let Ok(st) = c.start_tag() else {
        return false;
    };
    let (prefix, _) = split_qname(&tag[st.name.0..st.name.1]);
    let decl: Vec<u8> = match prefix {
        Some(p) => [b"xmlns:".as_slice(), p].concat(),
        None => b"xmlns".to_vec(),
    };
    if let Some(a) = attrs.iter().find(|a| tag[a.name.0..a.name.1] == *decl) {
        return *ns_name(&tag[a.value.0..a.value.1]) == *STREAMS_NS;
    }
    prefix.is_some_and(|p| {
        h.prefixes
            .iter()
            .any(|(hp, uri)| hp.as_slice() == p && uri.as_bytes() == STREAMS_NS)
    })
}

pub(super) fn parse_header(tag: &[u8], limits: Limits) -> Res<(Header, Vec<(String, String)>)> {
    check_text_bytes(tag)?;
    let (mut attrs, mut out) = (Vec::new(), Vec::new());
    let mut c = Checker::new(tag, limits.max_attrs, &mut attrs, &mut out);
    let st = c.start_tag()?;
    if st.self_closing {
        return fail(Condition::BadFormat, "empty stream element");
    }
    let qname = &tag[st.name.0..st.name.1];
    let (prefix, local) = split_qname(qname);
    let decl: Vec<u8> = match prefix {
        Some(p) => [b"xmlns:".as_slice(), p].concat(),
        None => b"xmlns".to_vec(),
    };
    let mut attrs = Vec::with_capacity(c.attrs.len());
    let mut prefixes = Vec::new();
    let mut ns_ok = false;
    for a in c.attrs.iter() {
        let name = &tag[a.name.0..a.name.1];
        let raw = &tag[a.value.0..a.value.1];
        let value = unescape(raw, true)
            .ok_or_else(|| FrameError {
                condition: Condition::NotWellFormed,
                detail: "bad attribute value".into(),
            })?
            .into_owned();
        if name == b"xmlns" {
            check_ns_decl(None, raw)?;
        } else if let Some(p) = name.strip_prefix(b"xmlns:") {
            check_ns_decl(Some(p), raw)?;
        }
        if name == decl.as_slice() && raw == STREAMS_NS {
            ns_ok = true;
        }
        if let Some(p) = name.strip_prefix(b"xmlns:") {
            prefixes.push((p.to_vec(), value.clone()));
        }
        // Names and values were checked as UTF-8 above.
        attrs.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    if !ns_ok || local != b"stream" {
        return fail(
            Condition::InvalidNamespace,
            "stream element not in the streams namespace",
        );
    }
    Ok((
        Header {
            qname: qname.to_vec(),
            prefixes,
        },
        attrs,
    ))
}
