//! XML characters: which ones XML allows (`Char`, whitespace, name
//! characters) and how they are escaped and unescaped. One rule for every
//! program, and a leaf: the framer and the tree parser both build on it.
//!
//! Escaping keeps a record on one line (DESIGN §4) and makes values
//! round-trip: LF and CR are always written as character references, and
//! so is TAB in an attribute value, where a parser would turn a literal one
//! into a space. Character data escapes `&`, `<`, `>`; an attribute value
//! also both quotes, so it may be put in either.

use std::borrow::Cow;

/// XML 1.0 `Char`.
#[inline]
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// XML whitespace (`S`).
#[inline]
pub fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// XML 1.0 `NameStartChar` (the colon included, as XML 1.0 has it).
#[inline]
pub fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar`.
#[inline]
pub fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

const fn ascii_name_table(start: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphabetic()
            || c == b':'
            || c == b'_'
            || (!start && (c.is_ascii_digit() || c == b'-' || c == b'.'));
        b += 1;
    }
    t
}

/// `is_name_start` and `is_name_char` for ASCII bytes, as tables: names
/// are nearly always ASCII, and a lookup is what the framer can afford per
/// byte. False for every byte from 0x80.
pub(crate) static NAME_START_ASCII: [bool; 256] = ascii_name_table(true);
pub(crate) static NAME_CHAR_ASCII: [bool; 256] = ascii_name_table(false);
pub(crate) static NAME_CHAR_ASCII_NO_COLON: [bool; 256] = {
    let mut t = ascii_name_table(false);
    t[b':' as usize] = false;
    t
};

/// End of the XML `Name` starting at `s[i]` (`i` itself if there is none).
/// Stops at a byte that does not start a name character, or at UTF-8 that
/// is cut or invalid.
#[inline]
pub(crate) fn name_end(s: &[u8], i: usize) -> usize {
    // Names are nearly always ASCII: a table lookup a byte.
    match s.get(i) {
        Some(&b) if b < 0x80 && !NAME_START_ASCII[b as usize] => return i,
        Some(&b) if b < 0x80 => {}
        _ => return name_end_general(s, i),
    }
    let mut j = i + 1;
    while let Some(&b) = s.get(j) {
        if b >= 0x80 {
            return name_end_general(s, i);
        }
        if !NAME_CHAR_ASCII[b as usize] {
            break;
        }
        j += 1;
    }
    j
}

/// `name_end` for any characters.
#[inline(never)]
fn name_end_general(s: &[u8], mut i: usize) -> usize {
    let start = i;
    while let Some(&b) = s.get(i) {
        let len = match b {
            0..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        let Some(c) = s
            .get(i..i + len)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.chars().next())
        else {
            break;
        };
        let ok = if i == start {
            is_name_start(c)
        } else {
            is_name_char(c)
        };
        if !ok {
            break;
        }
        i += len;
    }
    i
}

/// `memchr`, but what is searched is usually a few bytes long (text
/// between tags, an attribute value), where a plain loop wins over the
/// vector setup.
#[inline]
pub(crate) fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    let head = hay.len().min(16);
    match hay[..head].iter().position(|&b| b == needle) {
        Some(i) => Some(i),
        None => memchr::memchr(needle, &hay[head..]).map(|i| i + head),
    }
}

/// Escape character data: `&`, `<`, `>`, and LF and CR as references.
pub fn escape_text(s: &str) -> String {
    escape(s, false)
}

/// Escape an attribute value for either quote: as `escape_text`, and `'`,
/// `"` and TAB too.
pub fn escape_attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, attr: bool) -> String {
    let mut out = Vec::with_capacity(s.len() + 8);
    escape_into(&mut out, s, attr);
    // Only ASCII bytes were replaced, so this is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// `escape_text` (or, with `attr`, `escape_attr`) appended to `out`. Every
/// byte that needs escaping is ASCII, so working on UTF-8 bytes is exact.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str, attr: bool) {
    let b = s.as_bytes();
    let mut from = 0;
    for (i, &c) in b.iter().enumerate() {
        let rep: &[u8] = match c {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' if attr => b"&apos;",
            b'"' if attr => b"&quot;",
            b'\n' => b"&#10;",
            b'\r' => b"&#13;",
            b'\t' if attr => b"&#9;",
            _ => continue,
        };
        out.extend_from_slice(&b[from..i]);
        out.extend_from_slice(rep);
        from = i + 1;
    }
    out.extend_from_slice(&b[from..]);
}

/// Character data or (with `attr`) an attribute value as sent, its
/// references resolved: the five predefined entities and character
/// references to a `Char`. A literal CRLF or CR is a LF (end-of-line
/// handling); in an attribute value, LF, CR and TAB are a space
/// (attribute-value normalisation). Borrows `raw` when there is nothing to
/// do. `None` on invalid UTF-8, an unknown entity, or a malformed
/// reference or one to a non-`Char`.
pub fn unescape(raw: &[u8], attr: bool) -> Option<Cow<'_, str>> {
    unescape_str(std::str::from_utf8(raw).ok()?, attr)
}

/// `unescape` of text already known to be UTF-8.
pub(crate) fn unescape_str(s: &str, attr: bool) -> Option<Cow<'_, str>> {
    let raw = s.as_bytes();
    // memchr scans many bytes a step; a body is hundreds of bytes and
    // nearly always plain, and this test ran a byte a step before. A
    // short value (a JID, an id) is done faster a byte at a time.
    let plain = match (attr, raw.len() <= 32) {
        (true, true) => !raw
            .iter()
            .any(|b| matches!(b, b'&' | b'\r' | b'\n' | b'\t')),
        (false, true) => !raw.iter().any(|b| matches!(b, b'&' | b'\r')),
        (true, false) => {
            memchr::memchr3(b'&', b'\r', b'\n', raw).is_none()
                && memchr::memchr(b'\t', raw).is_none()
        }
        (false, false) => memchr::memchr2(b'&', b'\r', raw).is_none(),
    };
    if plain {
        return Some(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '&' => {
                let end = rest.find(';')?;
                out.push(reference(&rest[..end])?);
                rest = &rest[end + 1..];
            }
            '\r' => {
                rest = rest.strip_prefix('\n').unwrap_or(rest);
                out.push(if attr { ' ' } else { '\n' });
            }
            '\n' | '\t' if attr => out.push(' '),
            c => out.push(c),
        }
    }
    Some(Cow::Owned(out))
}

/// The character a reference stands for, given what is between `&` and `;`.
fn reference(r: &str) -> Option<char> {
    Some(match r {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let (digits, radix) = match r.strip_prefix("#x") {
                Some(h) => (h, 16),
                None => (r.strip_prefix('#')?, 10),
            };
            // from_str_radix takes a sign, XML does not.
            if digits.starts_with('+') {
                return None;
            }
            let c = char::from_u32(u32::from_str_radix(digits, radix).ok()?)?;
            if !is_xml_char(c) {
                return None;
            }
            c
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_text_and_attr() {
        assert_eq!(escape_text("a<b>&c'\""), "a&lt;b&gt;&amp;c'\"");
        assert_eq!(escape_text(""), "");
        assert_eq!(escape_text("héllo"), "héllo");
        assert_eq!(escape_text("a\nb\rc\td"), "a&#10;b&#13;c\td");
        assert_eq!(escape_attr("a<b>&c'\""), "a&lt;b&gt;&amp;c&apos;&quot;");
        assert_eq!(escape_attr("a\nb\rc\td"), "a&#10;b&#13;c&#9;d");
    }

    fn un(s: &str, attr: bool) -> Option<String> {
        unescape(s.as_bytes(), attr).map(Cow::into_owned)
    }

    #[test]
    fn unescape_predefined_and_charrefs() {
        assert_eq!(
            un("&amp;&lt;&gt;&apos;&quot;", false).as_deref(),
            Some("&<>'\"")
        );
        assert_eq!(un("plain", false).as_deref(), Some("plain"));
        assert_eq!(un("a &amp; b", false).as_deref(), Some("a & b"));
        assert_eq!(un("&amp;amp;", false).as_deref(), Some("&amp;"));
        assert_eq!(
            un("&#65;&#x42;&#x1F600;&#10;", false).as_deref(),
            Some("AB\u{1F600}\n")
        );
        assert_eq!(un("&#x00041;", false).as_deref(), Some("A"));
        assert_eq!(un("a&#x41;&#66;&quot;", false).as_deref(), Some("aAB\""));
    }

    #[test]
    fn unescape_normalises_line_breaks() {
        assert_eq!(un("a\r\nb\tc", true).as_deref(), Some("a b c"));
        assert_eq!(un("a\r\nb\rc", false).as_deref(), Some("a\nb\nc"));
        assert_eq!(un("a&#13;&#9;b", true).as_deref(), Some("a\r\tb"));
    }

    #[test]
    fn unescape_rejects() {
        for bad in [
            "&",
            "&amp",
            "&foo;",
            "&;",
            "&#;",
            "&#x;",
            "&#0;",
            "&#x0;",
            "&#1;",
            "&#xD800;",
            "&#xFFFE;",
            "&#xFFFF;",
            "&#x110000;",
            "&#99999999999999999999;",
            "&#-1;",
            "&#+65;",
            "&#x+41;",
            "&#X41;",
            "&#65",
            "& amp;",
            "&AMP;",
            "&nbsp;",
        ] {
            assert_eq!(un(bad, false), None, "{bad:?}");
        }
        assert_eq!(unescape(b"a\xff", false), None);
    }

    #[test]
    fn escape_round_trip() {
        for s in [
            "",
            "a&b",
            "<x y='1'>\"&amp;\"</x>",
            "ünïcödé & <>",
            "l\ni\r\nn\te",
        ] {
            assert_eq!(un(&escape_text(s), false).as_deref(), Some(s));
            assert_eq!(un(&escape_attr(s), true).as_deref(), Some(s));
        }
    }

    #[test]
    fn name_classes() {
        assert_eq!(name_end(b"abc def", 0), 3);
        assert_eq!(name_end(b"1abc", 0), 0);
        assert_eq!(name_end(b"a-1.b:c>", 0), 7);
        assert_eq!(name_end("é\u{300}x ".as_bytes(), 0), 5);
        assert_eq!(name_end(b"a\xC3", 0), 1);
        for t in [
            &b"ab-c d"[..],
            b"a\xC3\xA9b>",
            b"\xC3\xA9",
            b"_:x/",
            b"-a",
            b"",
            b"a\xFF",
        ] {
            for i in 0..t.len() {
                assert_eq!(name_end(t, i), name_end_general(t, i), "{t:?} {i}");
            }
        }
        for b in 0..128u8 {
            let c = b as char;
            assert_eq!(NAME_START_ASCII[b as usize], is_name_start(c), "{b}");
            assert_eq!(NAME_CHAR_ASCII[b as usize], is_name_char(c), "{b}");
        }
    }
}
