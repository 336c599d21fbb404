//! Fuzz target 3: JIDs (`sj::jid`) and the path mapping (`sj::path`).
//!
//! Properties: nothing panics; a parsed JID is normalised (its string form
//! parses back to the same JID, so normalisation is idempotent); every
//! path component is one safe name (DESIGN §3: no `/`, no NUL, never `.`,
//! `..`, empty, hidden, reserved, longer than 255 bytes, no control
//! characters); the mapping is deterministic and reversible by
//! `path::decode` (so injective: two names never share a path); a contact
//! maps from its normalised bare JID only.
//!
//! Input: two names, the bytes split at the first 0xFF (never in UTF-8),
//! each read as UTF-8 with replacement characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sj::jid::Jid;
use sj::path::{self, Kind, RESERVED};

const KINDS: [Kind; 4] = [Kind::Contact, Kind::IqId, Kind::Namespace, Kind::Client];

fn assert_safe(out: &str, name: &str) {
    let ok = !out.is_empty()
        && !out.contains(['/', '\0'])
        && out != "."
        && out != ".."
        && !out.starts_with('.')
        && !RESERVED.contains(&out)
        && out.len() <= path::MAX
        && !out.chars().any(char::is_control);
    assert!(ok, "unsafe path component {out:?} for {name:?}");
}

fn check_jid(s: &str) {
    let Ok(j) = Jid::parse(s) else {
        return;
    };
    let t = j.to_string();
    let again = Jid::parse(&t).unwrap_or_else(|e| panic!("{s:?} -> {t:?} does not parse: {e}"));
    assert_eq!(again, j, "{s:?}: normalisation is not idempotent");
    assert_eq!(again.to_string(), t);
    let bare = j.bare();
    assert!(bare.is_bare());
    assert_eq!(
        Jid::parse(&bare.to_string()).as_ref(),
        Ok(&bare),
        "{s:?}: bare form"
    );
    assert_eq!((bare.local(), bare.domain()), (j.local(), j.domain()));
    if let Some(r) = j.resource() {
        assert_eq!(
            bare.with_resource(r).as_ref(),
            Ok(&j),
            "{s:?}: with_resource"
        );
        assert!(!j.is_bare());
    }
    for part in [j.local().unwrap_or("x"), j.domain()] {
        assert!(
            !part.is_empty() && !part.contains(['@', '/']),
            "{s:?}: part {part:?}"
        );
    }
}

fn check_paths(s: &str) {
    for k in KINDS {
        let Ok(out) = path::component(k, s) else {
            continue;
        };
        assert_safe(&out, s);
        assert_eq!(
            path::component(k, s).as_ref(),
            Ok(&out),
            "not deterministic"
        );
        let back = path::decode(&out);
        if k == Kind::Contact {
            let bare = Jid::parse(s)
                .unwrap_or_else(|e| panic!("contact {s:?} mapped but is no JID: {e}"))
                .bare()
                .to_string();
            assert_eq!(back.as_deref(), Some(bare.as_str()), "{s:?} -> {out:?}");
            assert_eq!(
                path::component(k, &bare).as_ref(),
                Ok(&out),
                "{s:?}: its bare form maps elsewhere"
            );
        } else {
            assert_eq!(back.as_deref(), Some(s), "{k:?} {s:?} -> {out:?}");
        }
    }
    // decode never panics, and what it accepts is exactly what encoding makes.
    if let Some(name) = path::decode(s) {
        for k in [Kind::IqId, Kind::Namespace, Kind::Client] {
            assert_eq!(
                path::component(k, &name).as_deref(),
                Ok(s),
                "decode({s:?}) = {name:?} does not map back"
            );
        }
    }
}

fn check_pair(a: &str, b: &str) {
    for k in KINDS {
        let (Ok(pa), Ok(pb)) = (path::component(k, a), path::component(k, b)) else {
            continue;
        };
        if pa != pb {
            continue;
        }
        if k == Kind::Contact {
            let bare = |s: &str| Jid::parse(s).map(|j| j.bare());
            assert_eq!(bare(a), bare(b), "{a:?} and {b:?} share {pa:?}");
        } else {
            assert_eq!(a, b, "{k:?} {a:?} and {b:?} share {pa:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.iter().position(|&x| x == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    for s in [&*a, &*b] {
        check_jid(s);
        check_paths(s);
    }
    check_pair(&a, &b);
    if let Ok(j) = Jid::parse(&a) {
        if let Ok(k) = j.with_resource(&b) {
            assert_eq!(k.resource(), Some(&*b));
            check_jid(&k.to_string());
        }
    }
});
