//! The one start-tag scanner of the record readers (`Top`, `Element`).
//!
//! Records were validated by the framer, so this trusts their syntax but
//! never panics on one that is not: it stops, and its callers answer
//! `None`. It does not allocate.

use super::chars::{find_byte, is_ws, name_end};
use std::ops::Range;

/// One attribute of a start tag: the whitespace before it starts at
/// `ws_start`; `value` is inside the quotes.
#[derive(Debug, Clone)]
pub(super) struct AttrPos {
    pub ws_start: usize,
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Walks the attributes of the start tag at `s[at..]`. After the last one,
/// `close` is the index of `>` or of `/` in `/>`, or `None` if the tag is
/// malformed (then every later call answers `None` again).
pub(super) struct TagScan<'a> {
    s: &'a [u8],
    i: usize,
    pub close: Option<usize>,
}

/// The start tag at `s[at] == '<'`: its name and a walker over its attributes.
pub(super) fn start_tag(s: &[u8], at: usize) -> Option<(Range<usize>, TagScan<'_>)> {
    if s.get(at) != Some(&b'<') {
        return None;
    }
    let ns = at + 1;
    let ne = name_end(s, ns);
    if ne == ns || !matches!(s.get(ne), Some(&b) if is_ws(b) || b == b'/' || b == b'>') {
        return None;
    }
    let scan = TagScan {
        s,
        i: ne,
        close: None,
    };
    Some((ns..ne, scan))
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_ws(s[i]) {
        i += 1;
    }
    i
}

impl Iterator for TagScan<'_> {
    type Item = AttrPos;
    #[inline]
    fn next(&mut self) -> Option<AttrPos> {
        let s = self.s;
        let ws_start = self.i;
        let mut i = skip_ws(s, self.i);
        match s.get(i)? {
            b'>' => {
                self.close = Some(i);
                return None;
            }
            b'/' => {
                if s.get(i + 1) == Some(&b'>') {
                    self.close = Some(i);
                }
                return None;
            }
            _ if i == ws_start => return None,
            _ => {}
        }
        let name = i..name_end(s, i);
        i = skip_ws(s, name.end);
        if name.is_empty() || s.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_ws(s, i + 1);
        let q = *s.get(i).filter(|&&q| q == b'\'' || q == b'"')?;
        let vs = i + 1;
        let ve = vs + find_byte(q, s.get(vs..)?)?;
        self.i = ve + 1;
        Some(AttrPos {
            ws_start,
            name,
            value: vs..ve,
        })
    }
}
