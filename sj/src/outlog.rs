//! A contact's `out` log (DESIGN §3): what messaged and presenced write,
//! what sj-c2s's `history` reads.
//!
//! `YYYY-MM-DD HH:MM <nick> text` for what someone said,
//! `YYYY-MM-DD HH:MM -!- text` for events, in local time at minute
//! resolution (`crate::time::local_minute`), one line per body line,
//! appended with O_APPEND in writes of whole lines.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// What one `out` line carries after its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `<nick> text`
    Said { nick: String },
    /// `-!- text`
    Event,
}

/// Make one log text safe for a one-line, terminal-friendly log: control
/// characters other than TAB (C0, DEL, C1) and the Unicode line and
/// paragraph separators become U+FFFD.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_clean(&mut out, s);
    out
}

/// `clean(s)` appended to `out`.
fn push_clean(out: &mut String, s: &str) {
    // Printable ASCII and TAB, nearly every log line, are copied as they are.
    if plain(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    out.extend(s.chars().map(|c| {
        if (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}' {
            '\u{FFFD}'
        } else {
            c
        }
    }));
}

/// Only printable ASCII and TAB. Tested 32 bytes at a time without an
/// early exit, which the compiler turns into vector code: a byte-at-a-time
/// `all` cost more than the rest of formatting a log line.
fn plain(b: &[u8]) -> bool {
    let ok = |c: u8| c == b'\t' || (0x20..0x7f).contains(&c);
    let mut chunks = b.chunks_exact(32);
    for c in &mut chunks {
        if !c.iter().fold(true, |acc, &x| acc & ok(x)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&c| ok(c))
}

/// The `out` lines for one message: one line per body line, same prefix.
/// Trailing empty lines of the body are dropped; an empty text gives no line.
/// `when` is the formatted timestamp (see `crate::time::local_minute`).
pub fn lines(when: &str, kind: &Kind, text: &str) -> String {
    // memchr (vector code) for the line breaks: this runs for every
    // message logged, and str's own searches went a word at a time.
    let text = if memchr::memchr(b'\r', text.as_bytes()).is_some() {
        std::borrow::Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    let text = text.trim_end_matches('\n');
    if text.is_empty() {
        return String::new();
    }
    let mut out = String::with_capacity(text.len() + when.len() + 64);
    out.push_str(when);
    match kind {
        Kind::Said { nick } => {
            out.push_str(" <");
            push_clean(&mut out, nick);
            out.push_str("> ");
        }
        Kind::Event => out.push_str(" -!- "),
    }
    let prefix = out.len();
    let mut from = 0;
    for end in memchr::memchr_iter(b'\n', text.as_bytes()).chain(std::iter::once(text.len())) {
        if from > 0 {
            out.extend_from_within(..prefix);
        }
        push_clean(&mut out, &text[from..end]);
        out.push('\n');
        from = end + 1;
    }
    out
}

/// Append `text` (whole lines) to a log, creating it 0600 and never
/// following a symlink: O_APPEND, one write for all of `text`, so lines
/// from another writer (presenced) land between whole lines only.
/// All or nothing: when the write fails (ENOSPC after a short write, say)
/// the file is cut back to its length before this call, so a reader never
/// sees half a line and the caller can retry the same text.
/// `repair`: if even that cut failed, an earlier write may have stopped
/// mid-line, so end that partial line first if the file does not end with LF.
pub fn append(path: &Path, text: &str, repair: bool) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .read(repair)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    let len = f.metadata()?.len();
    if repair {
        let mut last = [0u8; 1];
        if len > 0 && f.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    if let Err(e) = f.write_all(text.as_bytes()) {
        // Another writer (presenced's events) appending in this very
        // moment would be cut too; on a full disk its write fails anyway.
        let _ = f.set_len(len);
        return Err(e);
    }
    Ok(())
}

/// The last `n` lines of a log (invalid UTF-8 replaced), oldest first.
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let data = fs::read(path)?;
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    Ok(lines[start..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn append_lines_and_mode_then_tail() {
        let d = std::env::temp_dir().join(format!("sj-outlog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        crate::fifo::make_dir(&d).expect("mkdir");
        let p = d.join("out");
        append(&p, "a\nb\n", false).expect("append");
        append(&p, "c\n", false).expect("append");
        assert_eq!(fs::read_to_string(&p).expect("read"), "a\nb\nc\n");
        // After a failed write left half a line, the next line starts fresh.
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(b"parti"))
            .expect("partial");
        append(&p, "d\n", true).expect("append");
        append(&p, "e\n", true).expect("append");
        assert_eq!(
            fs::read_to_string(&p).expect("read"),
            "a\nb\nc\nparti\nd\ne\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(tail(&p, 2).expect("tail"), vec!["d", "e"]);
        assert_eq!(tail(&p, 100).expect("tail").len(), 6);
        assert!(tail(&p, 0).expect("tail").is_empty());
        assert!(tail(&d.join("none"), 3).is_err());
        // A symlink planted as out is not followed.
        let q = d.join("link");
        std::os::unix::fs::symlink(&p, &q).expect("symlink");
        assert!(append(&q, "x\n", false).is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
