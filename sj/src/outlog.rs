//! A contact's `out` log (DESIGN §3): what messaged and presenced write,
//! what sj-c2s's `history` reads.
//!
//! `YYYY-MM-DD HH:MM <nick> text` for what someone said,
//! `YYYY-MM-DD HH:MM -!- text` for events, in local time at minute
//! resolution (`crate::time::local_minute`), one line per body line,
//! appended with O_APPEND in writes of whole lines.

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
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
/// from another writer (presenced) land between whole lines only. Only a
/// regular file is written: a FIFO or a directory in its place is an
/// error at once (`sj::fifo`'s opening rules), never a wait for a reader.
/// All or nothing: when the write fails (ENOSPC after a short write, say)
/// the file is cut back to its length before this call, so a reader never
/// sees half a line and the caller can retry the same text.
/// `repair`: if even that cut failed, an earlier write may have stopped
/// mid-line, so end that partial line first if the file does not end with LF.
pub fn append(path: &Path, text: &str, repair: bool) -> io::Result<()> {
    let (fd, st) = crate::fifo::open_stat(path, flags(repair), mode(), SFlag::S_IFREG)?;
    write_appended(fd, st, text, repair)
}

/// `append` to `root/rel` (`bob@example.org/out`), where the contact
/// directory, too, is never a symbolic link: checked by the same open
/// (`sj::fifo::open_stat_beneath`), at no extra cost per line.
pub fn append_beneath(
    root: &crate::fifo::Root,
    rel: &Path,
    text: &str,
    repair: bool,
) -> io::Result<()> {
    let (fd, st) =
        crate::fifo::open_stat_beneath(root, rel, flags(repair), mode(), SFlag::S_IFREG)?;
    write_appended(fd, st, text, repair)
}

fn flags(repair: bool) -> OFlag {
    let rw = if repair {
        OFlag::O_RDWR
    } else {
        OFlag::O_WRONLY
    };
    rw | OFlag::O_APPEND | OFlag::O_CREAT
}

fn mode() -> Mode {
    Mode::from_bits_truncate(0o600)
}

/// The write of `append`, on the descriptor it opened.
fn write_appended(
    fd: std::os::fd::OwnedFd,
    st: nix::sys::stat::FileStat,
    text: &str,
    repair: bool,
) -> io::Result<()> {
    let mut f = fs::File::from(fd);
    let len = u64::try_from(st.st_size).unwrap_or(0);
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

/// The last lines of a log, as `tail` found them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Oldest first, invalid UTF-8 replaced. The newest line alone may be
    /// cut to the budget; it then ends with `[… N more bytes]`.
    pub lines: Vec<String>,
    /// Lines asked for, found, and left out to stay within the budget.
    pub left_out: usize,
    /// Fewer lines than asked for were found, and the log goes on before
    /// them: they were not looked for (the budget or the scan bound).
    pub more_before: bool,
}

/// How far back `tail` looks for the start of the newest line: the
/// longest line a log can get (one body line of the longest record) and
/// room for its prefix. A longer line is not shown at all.
const SCAN_MAX: u64 = crate::framer::MAX_LINE as u64 + 64 * 1024;
/// Block read backwards at a time.
const BLOCK: u64 = 64 * 1024;

/// The last `n` lines of a log in at most about `budget` bytes of text,
/// read from the end in blocks: memory and time depend on `n` and
/// `budget`, not on the log's size. Lines are what `str::lines` would
/// give (a final LF ends the last line; a CR before an LF is dropped).
/// The log must be a regular file, not opened through a symbolic link.
pub fn tail(path: &Path, n: usize, budget: usize) -> io::Result<Tail> {
    let f = crate::fifo::open_file(path)?;
    let size = f.metadata()?.len();
    let mut out = Tail::default();
    if n == 0 || size == 0 {
        return Ok(out);
    }
    // Pass 1, backwards: where the last n lines start and end, newest
    // first, without keeping their text.
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut block = vec![0u8; BLOCK as usize];
    let mut line_end = size;
    let mut last = [0u8; 1];
    if f.read_at(&mut last, size - 1)? == 1 && last[0] == b'\n' {
        line_end = size - 1;
    }
    let mut pos = line_end;
    // Bytes of the lines found after the newest: past the budget, no
    // older line could be shown.
    let mut older_bytes: u64 = 0;
    let mut found_start = false;
    loop {
        if spans.len() == n {
            break;
        }
        if pos == 0 {
            spans.push((0, line_end));
            found_start = true;
            break;
        }
        if (spans.is_empty() && size - pos >= SCAN_MAX) || older_bytes > budget as u64 {
            break;
        }
        let from = pos.saturating_sub(BLOCK);
        let buf = &mut block[..(pos - from) as usize];
        f.read_exact_at(buf, from)?;
        let mut upto = buf.len();
        while let Some(i) = memchr::memrchr(b'\n', &buf[..upto]) {
            let at = from + i as u64;
            if !spans.is_empty() {
                older_bytes += line_end - (at + 1);
            }
            spans.push((at + 1, line_end));
            line_end = at;
            upto = i;
            if spans.len() == n || older_bytes > budget as u64 {
                break;
            }
        }
        pos = from;
    }
    out.more_before = spans.len() < n && !found_start;
    // Pass 2, newest first: the text of as many lines as the budget holds.
    let mut left = budget;
    let mut shown: Vec<String> = Vec::new();
    for (k, &(start, end)) in spans.iter().enumerate() {
        let mut len = (end - start) as usize;
        if len > left && k > 0 {
            out.left_out = spans.len() - k;
            break;
        }
        let take = len.min(left);
        let mut buf = vec![0u8; take];
        f.read_exact_at(&mut buf, start)?;
        if take == len && buf.last() == Some(&b'\r') {
            buf.pop();
            len -= 1;
        }
        let line = if take < len {
            // Cut at a character boundary, and say how much is missing.
            let cut = char_boundary(&buf);
            buf.truncate(cut);
            format!(
                "{} [… {} more bytes]",
                String::from_utf8_lossy(&buf),
                len - cut
            )
        } else {
            String::from_utf8_lossy(&buf).into_owned()
        };
        left = left.saturating_sub(take + 1);
        shown.push(line);
    }
    shown.reverse();
    out.lines = shown;
    Ok(out)
}

/// The length of `buf` without a UTF-8 sequence its end cuts short.
fn char_boundary(buf: &[u8]) -> usize {
    let mut i = buf.len();
    while i > 0 && buf.len() - i < 3 && buf[i - 1] & 0xC0 == 0x80 {
        i -= 1;
    }
    let Some(&lead) = i.checked_sub(1).and_then(|l| buf.get(l)) else {
        return buf.len();
    };
    let need = match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    };
    if buf.len() - (i - 1) < need {
        i - 1
    } else {
        buf.len()
    }
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
        assert_eq!(tail(&p, 2, 1024).expect("tail").lines, vec!["d", "e"]);
        assert_eq!(tail(&p, 100, 1024).expect("tail").lines.len(), 6);
        assert!(tail(&p, 0, 1024).expect("tail").lines.is_empty());
        assert!(tail(&d.join("none"), 3, 1024).is_err());
        // A symlink planted as out is not followed.
        let q = d.join("link");
        std::os::unix::fs::symlink(&p, &q).expect("symlink");
        assert!(append(&q, "x\n", false).is_err());
        assert!(tail(&q, 1, 1024).is_err());
        // Nor is a FIFO waited on (no reader: the open would block) or
        // written into.
        let f = d.join("fifo");
        crate::fifo::make(&f).expect("mkfifo");
        let e = append(&f, "x\n", false).expect_err("a FIFO");
        assert_eq!(crate::log::strerror(&e), "is a FIFO, not a regular file");
        let r = crate::fifo::open_read(&f).expect("reader");
        let e = append(&f, "x\n", true).expect_err("a FIFO with a reader");
        assert_eq!(crate::log::strerror(&e), "is a FIFO, not a regular file");
        drop(r);
        assert!(tail(&f, 1, 1024).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn append_beneath_never_through_a_link() {
        let d = std::env::temp_dir().join(format!("sj-outlog-beneath-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (dir, elsewhere) = (d.join("dir"), d.join("elsewhere"));
        crate::fifo::make_dir(&dir.join("bob")).expect("mkdir");
        crate::fifo::make_dir(&elsewhere).expect("mkdir");
        // DIR itself through a link is the owner's choice.
        std::os::unix::fs::symlink(&dir, d.join("link-to-dir")).expect("symlink");
        let root = crate::fifo::Root::open(&d.join("link-to-dir")).expect("root");
        append_beneath(&root, Path::new("bob/out"), "a\n", false).expect("append");
        assert_eq!(
            fs::read_to_string(dir.join("bob/out")).expect("read"),
            "a\n"
        );
        // A contact directory that is a link, a log that is a link or a FIFO.
        std::os::unix::fs::symlink(&elsewhere, dir.join("carol")).expect("symlink");
        let e = append_beneath(&root, Path::new("carol/out"), "x\n", false).expect_err("link");
        assert_eq!(
            crate::log::strerror(&e),
            "is a symbolic link, not a directory"
        );
        std::os::unix::fs::symlink(elsewhere.join("f"), dir.join("bob/link")).expect("symlink");
        let e = append_beneath(&root, Path::new("bob/link"), "x\n", false).expect_err("link");
        assert_eq!(crate::log::strerror(&e), "is a symbolic link");
        crate::fifo::make(&dir.join("bob/fifo")).expect("mkfifo");
        let e = append_beneath(&root, Path::new("bob/fifo"), "x\n", false).expect_err("fifo");
        assert_eq!(crate::log::strerror(&e), "is a FIFO, not a regular file");
        let e = append_beneath(&root, Path::new("dave/out"), "x\n", false).expect_err("none");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(fs::read_dir(&elsewhere).expect("ls").next().is_none());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn tail_reads_from_the_end_within_its_budget() {
        let d = std::env::temp_dir().join(format!("sj-outlog-tail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        crate::fifo::make_dir(&d).expect("mkdir");
        let p = d.join("out");
        let t = |text: &[u8], n, budget| {
            fs::write(&p, text).expect("write");
            tail(&p, n, budget).expect("tail")
        };
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // What str::lines gives: a final LF ends a line, CR LF is one break.
        assert_eq!(
            t(b"a\r\nb\n\nc", 10, 100).lines,
            lines(&["a", "b", "", "c"])
        );
        assert_eq!(t(b"\n", 10, 100).lines, lines(&[""]));
        assert_eq!(t(b"", 10, 100), Tail::default());
        // Across blocks.
        let big: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        let got = t(big.as_bytes(), 3, 1 << 20);
        assert_eq!(
            got.lines,
            lines(&["line 49997", "line 49998", "line 49999"])
        );
        assert_eq!((got.left_out, got.more_before), (0, false));
        // The budget: older lines left out and counted.
        let got = t(b"aaaa\nbbbb\ncccc\n", 3, 10);
        assert_eq!(got.lines, lines(&["bbbb", "cccc"]));
        assert_eq!((got.left_out, got.more_before), (1, false));
        // One line over the budget: cut at a character boundary, said so.
        let long = format!("{}é{}\n", "x".repeat(9), "y".repeat(100));
        let got = t(long.as_bytes(), 5, 10);
        assert_eq!(got.lines, lines(&["xxxxxxxxx [… 102 more bytes]"]));
        // Older lines past the budget are not even looked for.
        let mut many = "z".repeat(1 << 20);
        many.push('\n');
        many.push_str(&big);
        let got = t(many.as_bytes(), 200, 1000);
        assert!(got.more_before && got.lines.len() < 200);
        assert_eq!(got.lines.last().map(String::as_str), Some("line 49999"));
        // A last line longer than the scan bound is not shown at all.
        let f = fs::File::create(&p).expect("create");
        f.set_len(SCAN_MAX + BLOCK).expect("sparse");
        drop(f);
        let got = tail(&p, 10, 1000).expect("tail");
        assert!(got.lines.is_empty() && got.more_before);
        let _ = fs::remove_dir_all(&d);
    }
}
