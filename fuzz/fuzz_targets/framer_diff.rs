//! Fuzz target 2: every record the framer emits, read again by a strict
//! independent parser (quick-xml plus the oracle in `sj_fuzz::reference`).
//!
//! Properties (DESIGN §4): each record is exactly one complete element on
//! one line, LF-terminated, with no literal LF or CR, well-formed and
//! namespace-well-formed with `jabber:client` implied; its infoset equals
//! that of the element the peer sent (after end-of-line handling and
//! attribute-value normalisation); record i is element i of the input, so
//! boundaries agree; the framer never accepts an element the oracle
//! refuses; a record is canonical (a fixed point of `canonical_record`);
//! and `sj::xml`, which every daemon reads records with, sees the same
//! infoset. The stream header's attributes agree too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sj::framer::{canonical_record, Event, Limits, Mode};
use sj_fuzz::reference::{self, Elem, Node, IMPLIED};
use sj_fuzz::{frame, Case};
use std::collections::BTreeMap;

/// `sj::xml`'s reading of a record, as the oracle's infoset.
fn from_sj(el: &sj::xml::Element<'_>, scope: &[(String, String)]) -> Result<Elem, String> {
    let mut scope = scope.to_vec();
    for (k, v) in &el.attrs {
        if let Some(p) = k.strip_prefix("xmlns:") {
            scope.push((p.to_owned(), v.to_string()));
        }
    }
    let mut attrs = BTreeMap::new();
    for (k, v) in &el.attrs {
        if k == "xmlns" || k.starts_with("xmlns:") {
            continue;
        }
        let key = match k.split_once(':') {
            None => (String::new(), k.to_string()),
            Some(("xml", l)) => (sj::ns::XML.to_owned(), l.to_owned()),
            Some((p, l)) => {
                let (_, uri) = scope
                    .iter()
                    .rev()
                    .find(|(sp, _)| sp == p)
                    .ok_or_else(|| format!("sj::xml: undeclared attribute prefix {p}"))?;
                (uri.clone(), l.to_owned())
            }
        };
        attrs.insert(key, v.to_string());
    }
    let mut children: Vec<Node> = Vec::new();
    for n in &el.children {
        match n {
            sj::xml::Node::Element(c) => children.push(Node::Elem(from_sj(c, &scope)?)),
            sj::xml::Node::Text(t) if t.is_empty() => {}
            sj::xml::Node::Text(t) => match children.last_mut() {
                Some(Node::Text(prev)) => prev.push_str(t),
                _ => children.push(Node::Text(t.to_string())),
            },
        }
    }
    Ok(Elem {
        ns: el.ns.to_string(),
        local: el.local_name().to_owned(),
        attrs,
        children,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(case) = Case::decode(data) else {
        return;
    };
    let out = frame(case.mode, case.limits, &[case.payload], 1);
    let stream = case.mode == Mode::Stream;
    let want = reference::parse(case.payload, stream);
    // A header with another default namespace is accepted (sj-proxy only
    // talks to jabber:client), but its children are then in another
    // namespace than the records that imply jabber:client.
    let comparable = want
        .header_default_ns
        .as_deref()
        .is_none_or(|ns| ns == IMPLIED);
    // Canonical records may be longer than what was sent (`&#10;`, added
    // declarations): the fixed point is checked without the size limits.
    let relaxed = Limits::new(usize::MAX / 2, case.limits.max_depth, usize::MAX / 2);
    for (i, rec) in out.records().into_iter().enumerate() {
        let show = String::from_utf8_lossy(rec);
        let got = reference::record(rec)
            .unwrap_or_else(|e| panic!("record {i} is not one well-formed element: {e}: {show:?}"));
        assert_eq!(
            canonical_record(rec, relaxed).as_deref(),
            Ok(rec),
            "record {i} is not canonical: {show:?}"
        );
        let sj_view = sj::xml::Element::parse(rec)
            .ok_or_else(|| "sj::xml refused it".to_owned())
            .and_then(|e| from_sj(&e, &[]));
        assert_eq!(
            sj_view.as_ref(),
            Ok(&got),
            "sj::xml reads record {i} differently: {show:?}"
        );
        if comparable {
            match want.elements.get(i) {
                Some(w) => assert_eq!(&got, w, "record {i} differs from what was sent: {show:?}"),
                None => panic!(
                    "framer emitted record {i} but the reference stopped: {:?}: {show:?}",
                    want.stop
                ),
            }
        }
    }
    for ev in &out.events {
        match ev {
            Event::Header(h) => assert_eq!(
                Some(&h.attrs),
                want.header.as_ref(),
                "header differs (reference stopped: {:?})",
                want.stop
            ),
            Event::End => assert!(want.ended, "End but the reference: {:?}", want.stop),
            _ => {}
        }
    }
});
