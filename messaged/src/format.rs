//! The `out` log line format (DESIGN §3), timestamps, and the text of lines
//! read from `in`. Pure functions: no I/O, no XML parsing.
//!
//! `YYYY-MM-DD HH:MM <nick> text` for what someone said,
//! `YYYY-MM-DD HH:MM -!- text` for events, in local time at minute
//! resolution, as sj, cii and sjt write and parse it.

use nix::libc;

/// What one `out` line carries after its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `<nick> text`
    Said { nick: String },
    /// `-!- text`
    Event,
}

/// `YYYY-MM-DD HH:MM` for a Unix time, in the local time zone (TZ).
pub fn stamp(t: i64) -> String {
    let tt = t as libc::time_t;
    // SAFETY: `tm` is plain old data; localtime_r writes into our buffer only.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&tt, &mut tm).is_null() };
    if !ok {
        return utc_stamp(t);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

/// The same format in UTC (fallback, and for tests).
pub fn utc_stamp(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// Make one log text safe for a one-line, terminal-friendly log: control
/// characters other than TAB (C0, DEL, C1) become U+FFFD.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// The `out` lines for one message: one line per body line, same prefix.
/// Trailing empty lines of the body are dropped; an empty text gives no line.
/// `when` is the formatted timestamp (see `stamp`).
pub fn lines(when: &str, kind: &Kind, text: &str) -> String {
    let prefix = match kind {
        Kind::Said { nick } => format!("{when} <{}> ", clean(nick)),
        Kind::Event => format!("{when} -!- "),
    };
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let text = text.trim_end_matches('\n');
    let mut out = String::new();
    if text.is_empty() {
        return out;
    }
    for line in text.split('\n') {
        out.push_str(&prefix);
        out.push_str(&clean(line));
        out.push('\n');
    }
    out
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse an XEP-0082 date-time (`2002-09-10T23:08:25Z`, optional fraction,
/// `Z` or `±HH:MM` offset) or a legacy XEP-0091 stamp (`20020910T23:08:25`,
/// UTC) into Unix seconds.
pub fn parse_stamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_ascii() {
        return None;
    }
    let (date, rest) = s.split_once(['T', 't'])?;
    let (y, mo, d) = if date.len() == 8 && !date.contains('-') {
        (num(&date[..4])?, num(&date[4..6])?, num(&date[6..8])?)
    } else {
        let mut it = date.splitn(3, '-');
        let y = it.next()?;
        let mo = it.next()?;
        let d = it.next()?;
        if y.len() != 4 || mo.len() != 2 || d.len() != 2 {
            return None;
        }
        (num(y)?, num(mo)?, num(d)?)
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if rest.len() < 8 {
        return None;
    }
    let time = rest.get(..8)?;
    let zone = rest.get(8..)?;
    let b = time.as_bytes();
    if b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(&time[..2])?, num(&time[3..5])?, num(&time[6..8])?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Optional fraction.
    let zone = match zone.strip_prefix('.') {
        Some(f) => {
            let n = f.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            &f[n..]
        }
        None => zone,
    };
    let offset = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let z = &zone[1..];
            if z.len() != 5 || z.as_bytes()[2] != b':' {
                return None;
            }
            let (oh, om) = (num(&z[..2])?, num(&z[3..])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

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
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' => out.push_str("&#10;"),
            _ => out.push(c),
        }
    }
    out
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
    fn rfc3339_stamps() {
        assert_eq!(parse_stamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_stamp("2002-09-10T23:08:25Z"), Some(1_031_699_305));
        assert_eq!(parse_stamp("2002-09-10T23:08:25.123Z"), Some(1_031_699_305));
        assert_eq!(
            parse_stamp("2002-09-11T01:08:25+02:00"),
            Some(1_031_699_305)
        );
        assert_eq!(
            parse_stamp("2002-09-10T18:08:25-05:00"),
            Some(1_031_699_305)
        );
        assert_eq!(parse_stamp("20020910T23:08:25"), Some(1_031_699_305));
        for bad in [
            "",
            "2002-09-10",
            "2002-13-10T23:08:25Z",
            "2002-09-10T25:08:25Z",
            "2002-09-10T23:08:25+2",
            "2002-09-10T23:08:25.Z",
            "x002-09-10T23:08:25Z",
            "2002-09-10T23:08:25Q",
            "2002-09-10T2é:08:25Z",
            "200é910T23:08:25",
            "2002-09-10T23:0é25Z",
            "2002-09-10T23:08:25+é:00",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn stamps_never_panic() {
        let base = "2002-09-10T23:08:25.123+02:00";
        let alphabet = ['0', '9', '-', ':', 'T', 'Z', '.', '+', 'é', ' ', 'x'];
        for cut in 0..=base.len() {
            let _ = parse_stamp(&base[..cut]);
            for &c in &alphabet {
                let mut s = base[..cut].to_string();
                s.push(c);
                s.push_str(&base[cut..]);
                let _ = parse_stamp(&s);
                let mut compact = "20020910T23:08:25".to_string();
                if cut < compact.len() {
                    compact.insert(cut, c);
                }
                let _ = parse_stamp(&compact);
            }
        }
    }

    #[test]
    fn utc_format() {
        assert_eq!(utc_stamp(1_031_699_305), "2002-09-10 23:08");
        assert_eq!(utc_stamp(0), "1970-01-01 00:00");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29 00:00");
    }

    #[test]
    fn local_time_follows_tz() {
        // Only this test touches TZ; the process is otherwise TZ-agnostic.
        std::env::set_var("TZ", "UTC");
        assert_eq!(stamp(1_031_699_305), "2002-09-10 23:08");
        std::env::set_var("TZ", "EST5");
        extern "C" {
            fn tzset();
        }
        // SAFETY: tzset only re-reads TZ.
        unsafe { tzset() };
        assert_eq!(stamp(1_031_699_305), "2002-09-10 18:08");
        std::env::set_var("TZ", "UTC");
        unsafe { tzset() };
    }

    #[test]
    fn multi_line_same_prefix() {
        let p = "2002-09-10 23:08";
        let t = p;
        let k = Kind::Said {
            nick: "bob@localhost".into(),
        };
        assert_eq!(
            lines(t, &k, "one\ntwo\r\nthree\n\n"),
            format!(
                "{p} <bob@localhost> one\n{p} <bob@localhost> two\n{p} <bob@localhost> three\n"
            )
        );
        assert_eq!(lines(t, &k, ""), "");
        assert_eq!(lines(t, &k, "\n"), "");
        assert_eq!(
            lines(t, &Kind::Event, "bob@localhost sent an encrypted message"),
            format!("{p} -!- bob@localhost sent an encrypted message\n")
        );
        // Controls never reach the log; nicks cannot forge a new line.
        assert_eq!(
            lines(
                t,
                &Kind::Said {
                    nick: "a\nb".into()
                },
                "x\u{1b}[2Jy"
            ),
            format!("{p} <a\u{FFFD}b> x\u{FFFD}[2Jy\n")
        );
    }

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
