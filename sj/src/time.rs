//! Dates and times without a date library: XEP-0082 UTC date-times, the
//! `out` log's local `YYYY-MM-DD HH:MM` stamp, and the local UTC offset.
//!
//! Civil dates use Howard Hinnant's proleptic Gregorian algorithms; local
//! time comes from `localtime_r(3)`, so it follows `TZ`.

use nix::libc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for a time before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    unix_secs(SystemTime::now())
}

/// XEP-0082 UTC date-time, second resolution: `2026-11-22T04:05:06Z`.
pub fn utc_iso(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD HH:MM` for a Unix time in UTC.
pub fn utc_minute(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// `YYYY-MM-DD HH:MM` for a Unix time in the local time zone (`TZ`): the
/// `out` log stamp. UTC when the local time cannot be had.
pub fn local_minute(t: i64) -> String {
    let Some(tm) = local_tm(t) else {
        return utc_minute(t);
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

/// The local time zone's offset from UTC in seconds (east positive), now.
#[allow(clippy::unnecessary_cast)] // `long` is 32 bits on some targets
pub fn local_offset() -> i64 {
    local_tm(now_secs()).map_or(0, |tm| tm.tm_gmtoff as i64)
}

/// XEP-0082 time zone offset: `+HH:MM` / `-HH:MM` (`Z` is not used, for
/// clients that expect the numeric form), as XEP-0202 `<tzo/>` carries it.
pub fn tzo(offset: i64) -> String {
    let sign = if offset < 0 { '-' } else { '+' };
    let a = offset.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

fn local_tm(t: i64) -> Option<libc::tm> {
    let tt = t as libc::time_t;
    // SAFETY: an all-zero `struct tm` is a valid value; localtime_r reads
    // `tt` and writes into the buffer we own only.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&tt, &mut tm).is_null() };
    ok.then_some(tm)
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
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
pub fn parse_xmpp_datetime(s: &str) -> Option<i64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_stamps() {
        let p = parse_xmpp_datetime;
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("2002-09-10T23:08:25Z"), Some(1_031_699_305));
        assert_eq!(p("2002-09-10T23:08:25.123Z"), Some(1_031_699_305));
        assert_eq!(p("2002-09-11T01:08:25+02:00"), Some(1_031_699_305));
        assert_eq!(p("2002-09-10T18:08:25-05:00"), Some(1_031_699_305));
        assert_eq!(p("20020910T23:08:25"), Some(1_031_699_305));
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
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn stamps_never_panic() {
        let base = "2002-09-10T23:08:25.123+02:00";
        let alphabet = ['0', '9', '-', ':', 'T', 'Z', '.', '+', 'é', ' ', 'x'];
        for cut in 0..=base.len() {
            let _ = parse_xmpp_datetime(&base[..cut]);
            for &c in &alphabet {
                let mut s = base[..cut].to_string();
                s.push(c);
                s.push_str(&base[cut..]);
                let _ = parse_xmpp_datetime(&s);
                let mut compact = "20020910T23:08:25".to_string();
                if cut < compact.len() {
                    compact.insert(cut, c);
                }
                let _ = parse_xmpp_datetime(&compact);
            }
        }
    }

    #[test]
    fn utc_formats() {
        assert_eq!(utc_minute(1_031_699_305), "2002-09-10 23:08");
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_iso(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_iso(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            utc_iso(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        // Round trip over a few centuries, leap days included.
        for t in (-5_000_000_000i64..10_000_000_000).step_by(86_400 * 37 + 3_601) {
            let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            if t >= 0 {
                let iso = utc_iso(UNIX_EPOCH + Duration::from_secs(t as u64));
                assert_eq!(parse_xmpp_datetime(&iso), Some(t), "{iso}");
                assert_eq!(
                    &iso[11..16],
                    &format!("{:02}:{:02}", rem / 3600, rem % 3600 / 60)
                );
            }
        }
    }

    #[test]
    fn tz_offsets() {
        assert_eq!(tzo(0), "+00:00");
        assert_eq!(tzo(-5 * 3600 - 1800), "-05:30");
        assert_eq!(tzo(5 * 3600 + 45 * 60), "+05:45");
    }

    #[test]
    fn local_time_follows_tz() {
        // Only this test touches TZ; the library is otherwise TZ-agnostic.
        extern "C" {
            fn tzset();
        }
        std::env::set_var("TZ", "UTC");
        // SAFETY: tzset only re-reads TZ.
        unsafe { tzset() };
        assert_eq!(local_minute(1_031_699_305), "2002-09-10 23:08");
        assert_eq!(local_offset(), 0);
        std::env::set_var("TZ", "EST5");
        unsafe { tzset() };
        assert_eq!(local_minute(1_031_699_305), "2002-09-10 18:08");
        assert_eq!(local_offset(), -5 * 3600);
        std::env::set_var("TZ", "UTC");
        unsafe { tzset() };
    }
}
