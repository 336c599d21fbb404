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
    // CR too: an XML parser would turn it into LF.
    Ok(Some(
        s.chars()
            .filter(|&c| c != '\r' && sj::xml::is_xml_char(c))
            .collect(),
    ))
}

/// The record for one line written to `in`.
pub fn message_record(to: &str, groupchat: bool, id: &str, body: &str) -> String {
    let kind = if groupchat { "groupchat" } else { "chat" };
    format!(
        "<message to='{}' type='{kind}' id='{}'><body>{}</body></message>\n",
        sj::xml::escape_attr(to),
        sj::xml::escape_attr(id),
        sj::xml::escape_text(body)
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
        // One line: a line break in the text is a reference.
        let r = message_record("bob@localhost", false, "i", "a\nb");
        assert!(r.contains("<body>a&#10;b</body>"), "{r}");
        let r = message_record("room@muc.localhost", true, "i", "hi");
        assert!(r.contains("type='groupchat'"));
        assert_eq!(r.matches('\n').count(), 1);
    }
}
