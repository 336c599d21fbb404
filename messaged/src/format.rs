//! The text of lines read from a contact's `in` FIFO and the record made
//! of one. Pure functions: no I/O, no XML parsing. (The `out` log format is
//! `sj::outlog`; timestamps are `sj::time`.)

/// Turn one line read from a contact's `in` FIFO into the text of a body:
/// a trailing CR (CRLF writers) is removed, characters XML 1.0 does not
/// allow are dropped. `None` for an empty or whitespace-only line, or a line
/// that is not UTF-8.
pub fn in_line(raw: &[u8]) -> Result<Option<String>, std::str::Utf8Error> {
    let s = std::str::from_utf8(raw)?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(s.chars().filter(|&c| xml_char(c)).collect()))
}

/// XML 1.0 `Char`, minus CR (which an XML parser would turn into LF).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escape character data (`&`, `<`, `>`), and write LF as `&#10;` so the
/// record stays on one line (DESIGN §4).
pub fn escape_text(s: &str) -> String {
    sj::escape::text(s).replace('\n', "&#10;")
}

/// The record for one line written to `in`.
pub fn message_record(to: &str, groupchat: bool, id: &str, body: &str) -> String {
    let kind = if groupchat { "groupchat" } else { "chat" };
    format!(
        "<message to='{}' type='{kind}' id='{}'><body>{}</body></message>\n",
        sj::escape::attr(to),
        sj::escape::attr(id),
        escape_text(body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lines() {
        assert_eq!(in_line(b""), Ok(None));
        assert_eq!(in_line(b"  \r"), Ok(None));
        assert_eq!(in_line(b"hi\r"), Ok(Some("hi".into())));
        assert_eq!(in_line(b"a\x01b\x0cc"), Ok(Some("abc".into())));
        assert!(in_line(b"\xff\xfe").is_err());
    }

    #[test]
    fn escaped_text() {
        assert_eq!(escape_text("<b>&'\"\n"), "&lt;b&gt;&amp;'\"&#10;");
    }

    #[test]
    fn record_for_in_line() {
        let r = message_record(
            "bob@localhost",
            false,
            "msgd-1-1-0",
            "</body><x a='1'>&amp;",
        );
        assert_eq!(
            r,
            "<message to='bob@localhost' type='chat' id='msgd-1-1-0'><body>&lt;/body&gt;&lt;x a='1'&gt;&amp;amp;</body></message>\n"
        );
        let r = message_record("room@muc.localhost", true, "i", "hi");
        assert!(r.contains("type='groupchat'"));
        assert_eq!(r.matches('\n').count(), 1);
    }
}
