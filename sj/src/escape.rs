//! XML escaping for character data and attribute values.

/// Escape `&`, `<`, `>` for character data.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escape `&`, `<`, `>`, `'`, `"` for an attribute value (either quote).
pub fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// Whether `c` matches the XML 1.0 `Char` production.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Resolve the five predefined entities and character references.
/// `None` on an unknown entity or a reference to a non-`Char`.
pub fn unescape(s: &str) -> Option<String> {
    if !s.contains('&') {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';')?;
        let name = &after[..semi];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "apos" => '\'',
            "quot" => '"',
            _ => {
                let num = name.strip_prefix('#')?;
                let (digits, radix) = match num.strip_prefix('x') {
                    Some(hex) => (hex, 16),
                    None => (num, 10),
                };
                let valid = match radix {
                    16 => digits.bytes().all(|b| b.is_ascii_hexdigit()),
                    _ => digits.bytes().all(|b| b.is_ascii_digit()),
                };
                if digits.is_empty() || !valid {
                    return None;
                }
                let n = u32::from_str_radix(digits, radix).ok()?;
                let c = char::from_u32(n)?;
                if !is_xml_char(c) {
                    return None;
                }
                c
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_text() {
        assert_eq!(text("a<b>&c'\""), "a&lt;b&gt;&amp;c'\"");
        assert_eq!(text(""), "");
        assert_eq!(text("héllo"), "héllo");
    }

    #[test]
    fn escape_attr() {
        assert_eq!(attr("a<b>&c'\""), "a&lt;b&gt;&amp;c&apos;&quot;");
    }

    #[test]
    fn escape_unescape_predefined() {
        assert_eq!(
            unescape("&amp;&lt;&gt;&apos;&quot;").as_deref(),
            Some("&<>'\"")
        );
        assert_eq!(unescape("plain").as_deref(), Some("plain"));
        assert_eq!(unescape("a &amp; b").as_deref(), Some("a & b"));
        assert_eq!(unescape("&amp;amp;").as_deref(), Some("&amp;"));
    }

    #[test]
    fn escape_unescape_charrefs() {
        assert_eq!(
            unescape("&#65;&#x42;&#x1F600;&#10;").as_deref(),
            Some("AB\u{1F600}\n")
        );
        assert_eq!(unescape("&#x00041;").as_deref(), Some("A"));
    }

    #[test]
    fn escape_unescape_rejects() {
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
        ] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn escape_round_trip() {
        for s in ["", "a&b", "<x y='1'>\"&amp;\"</x>", "ünïcödé & <>"] {
            assert_eq!(unescape(&text(s)).as_deref(), Some(s));
            assert_eq!(unescape(&attr(s)).as_deref(), Some(s));
        }
    }
}
