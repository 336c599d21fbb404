//! The account archive: every record the router handled, in the order it
//! handled them, one line each, in plain files under `DIR/archive/`.
//!
//! What is here: the on-disk format (sj(7), ARCHIVE), the one writer that
//! appends to it (crash-safe: a torn last line is found and cut off when
//! the archive is opened again, never what came before it), rotation, and
//! readers that find a record by id or time in O(log n) reads and walk the
//! archive forwards or backwards.
//!
//! What is not here: what a record means. Who gets a record, what a MAM
//! result looks like and what a client's cursor is belong to the programs
//! that read the archive (mirrord, sj-c2s, sj-log).
//!
//! Format of a line (one `write` per batch of lines):
//!
//! ```text
//! 1796520014123456 2026-12-06T01:20:14.123456Z <* <message from='bob@example.org/x' ...>...</message>
//! ```
//!
//! - the id: microseconds since the Unix epoch, strictly increasing
//!   (a clock that steps back does not make an id smaller: the next id is
//!   the last one plus one until the clock catches up), so ids sort by
//!   time and are unique across archives of the same account;
//! - the same instant as an RFC 3339 UTC time stamp, for people and grep;
//! - the flow: where the record went (`Flow`), two characters;
//! - the record, exactly as routed (DESIGN §4: one line, no LF).
//!
//! Files are named `YYYY-MM.ID` after the month and the id of their first
//! line: a new file is started when the month (UTC) changes or the file
//! would pass its size bound, so names sort by time and by id.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default size bound of one archive file.
pub const FILE_MAX: u64 = 64 << 20;

/// Bytes of the prefix before the record: id, stamp, flow and three spaces.
pub const PREFIX_LEN: usize = 16 + 1 + 27 + 1 + 2 + 1;

/// The longest line: the prefix, the longest record (the pipes' line
/// rule) and the LF. A read of this many bytes always holds a whole line.
pub const LINE_MAX: usize = PREFIX_LEN + crate::framer::MAX_LINE + 1;

/// Where a record went when the router handled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// `<*`: from the server, for the clients (by its `to`).
    FromServer,
    /// `<-`: from the server, for the daemons only (an iq for iqd).
    FromServerQuiet,
    /// `<#`: from the server, a group chat's traffic: the record as it
    /// came; the clients in the room then got a copy each (sj-proxy's
    /// `rooms`), so only those get it again from the archive.
    Room,
    /// `>c`: toward the server; the other clients get a XEP-0280 sent copy.
    ToServerCopied,
    /// `>-`: toward the server, nothing for the clients.
    ToServer,
    /// `=*`: made here (a daemon's record) for the clients (by its `to`).
    Local,
    /// `!!`: a line about the archive itself, not a record (skipped by
    /// every reader that wants records).
    Meta,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::FromServer => "<*",
            Flow::FromServerQuiet => "<-",
            Flow::Room => "<#",
            Flow::ToServerCopied => ">c",
            Flow::ToServer => ">-",
            Flow::Local => "=*",
            Flow::Meta => "!!",
        }
    }

    pub fn parse(s: &[u8]) -> Option<Flow> {
        Some(match s {
            b"<*" => Flow::FromServer,
            b"<-" => Flow::FromServerQuiet,
            b"<#" => Flow::Room,
            b">c" => Flow::ToServerCopied,
            b">-" => Flow::ToServer,
            b"=*" => Flow::Local,
            b"!!" => Flow::Meta,
            _ => return None,
        })
    }

    /// Did the record come from the server?
    pub fn from_server(self) -> bool {
        matches!(self, Flow::FromServer | Flow::FromServerQuiet | Flow::Room)
    }

    /// Did the record go to the server?
    pub fn to_server(self) -> bool {
        matches!(self, Flow::ToServerCopied | Flow::ToServer)
    }
}

/// One line of the archive, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub id: u64,
    pub flow: Flow,
    pub record: &'a [u8],
}

impl Entry<'_> {
    /// The time of the entry, in microseconds since the epoch (its id).
    pub fn micros(&self) -> u64 {
        self.id
    }
}

/// Microseconds since the Unix epoch.
pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The RFC 3339 / XEP-0082 stamp of an id: `2026-12-06T01:20:14.123456Z`.
pub fn stamp(id: u64) -> String {
    let mut s = String::with_capacity(27);
    push_stamp(&mut s, id);
    s
}

fn push_stamp(out: &mut String, id: u64) {
    use std::fmt::Write;
    let secs = (id / 1_000_000) as i64;
    let frac = id % 1_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::time::civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
}

/// Year and month (UTC) of an id, as in the file names.
fn month(id: u64) -> (i64, u32) {
    let days = ((id / 1_000_000) as i64).div_euclid(86_400);
    let (y, m, _) = crate::time::civil_from_days(days);
    (y, m)
}

/// Parse one line (without its LF). `None` for anything that is not a
/// whole line of the format: a torn line, garbage after a power loss.
pub fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    if line.len() < PREFIX_LEN + 2 {
        return None;
    }
    let head = parse_prefix(line)?;
    let record = &line[PREFIX_LEN..];
    if head.flow != Flow::Meta && (record[0] != b'<' || record[record.len() - 1] != b'>') {
        return None;
    }
    Some(Entry { record, ..head })
}

/// Append one line to `out`. Formatted by hand, the date part of the
/// stamp cached per second: this runs once per routed record.
pub fn format_line(out: &mut Vec<u8>, id: u64, flow: Flow, record: &[u8]) {
    out.reserve(PREFIX_LEN + record.len() + 1);
    push_digits(out, id, 16);
    out.push(b' ');
    push_stamp_bytes(out, id);
    out.push(b' ');
    out.extend_from_slice(flow.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(record.strip_suffix(b"\n").unwrap_or(record));
    out.push(b'\n');
}

/// `n` as exactly `width` decimal digits (the low ones).
pub fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut d = [b'0'; 20];
    for i in (0..width.min(20)).rev() {
        d[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&d[..width.min(20)]);
}

/// The stamp of `id` as bytes; the `YYYY-MM-DDTHH:MM:SS` part is made
/// once per second.
fn push_stamp_bytes(out: &mut Vec<u8>, id: u64) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = id / 1_000_000;
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let mut s = stamp(secs * 1_000_000);
            s.truncate(19);
            *c = (secs, s);
        }
        out.extend_from_slice(c.1.as_bytes());
    });
    out.push(b'.');
    push_digits(out, id % 1_000_000, 6);
    out.push(b'Z');
}

/// A `<message>` record (with or without its LF) with `child` spliced in
/// as its last child, LF-terminated; `None` for anything else. Records are
/// canonical (one line, default namespace, DESIGN §4), so a message ends
/// with `</message>` or is one self-closing start tag: the splice is exact
/// and costs no parse.
pub fn append_child(rec: &[u8], child: &[u8]) -> Option<Vec<u8>> {
    let mut v = Vec::with_capacity(rec.len() + child.len() + 12);
    append_child_into(&mut v, rec, |v| v.extend_from_slice(child)).then_some(v)
}

/// The archive id sj-proxy stamped on a message for the clients: its last
/// XEP-0359 `<stanza-id/>` by `bare` (the stamp is always the last child;
/// one a contact put there comes before it). `None` when it has none.
pub fn stamped_id(rec: &[u8], bare: &str) -> Option<u64> {
    if !rec.starts_with(b"<message") {
        return None;
    }
    let el = crate::xml::Element::parse(rec)?;
    el.elements()
        .filter(|c| c.local_name() == "stanza-id" && c.ns == crate::ns::SID)
        .last()
        .filter(|c| c.attr("by") == Some(bare))?
        .attr("id")?
        .parse()
        .ok()
}

/// `append_child` into `out` (after what it holds), the child written by
/// `child`; false (and `out` unchanged) when `rec` is not a message.
pub fn append_child_into(out: &mut Vec<u8>, rec: &[u8], child: impl FnOnce(&mut Vec<u8>)) -> bool {
    let body = rec.strip_suffix(b"\n").unwrap_or(rec);
    let Some(after) = body.get(8) else {
        return false;
    };
    if !body.starts_with(b"<message") || !matches!(after, b' ' | b'\t' | b'>' | b'/') {
        return false;
    }
    if body.ends_with(b"</message>") {
        out.extend_from_slice(&body[..body.len() - 10]);
    } else if body.ends_with(b"/>") && memchr::memchr(b'>', body) == Some(body.len() - 1) {
        out.extend_from_slice(&body[..body.len() - 2]);
        out.push(b'>');
    } else {
        return false;
    }
    child(out);
    out.extend_from_slice(b"</message>\n");
    true
}

/// The `ID ` prefix sj-proxy puts before a record it gives mirrord:
/// the id and the record, or `None` and the line as it is.
pub fn split_id(line: &[u8]) -> (Option<u64>, &[u8]) {
    if line.len() > 17 && line[16] == b' ' && line[..16].iter().all(u8::is_ascii_digit) {
        let id = line[..16]
            .iter()
            .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
        return (Some(id), &line[17..]);
    }
    (None, line)
}

/// One archive file: its first id and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub path: PathBuf,
}

fn segment_name(first: u64) -> String {
    let (y, m) = month(first);
    format!("{y:04}-{m:02}.{first:016}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let (ym, id) = name.split_once('.')?;
    if ym.len() != 7 || ym.as_bytes()[4] != b'-' || id.len() != 16 {
        return None;
    }
    if !ym
        .bytes()
        .enumerate()
        .all(|(i, b)| i == 4 || b.is_ascii_digit())
    {
        return None;
    }
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The archive's files, oldest first. Anything else in the directory
/// (a user's notes, a file torn off in recovery) is not a segment.
pub fn segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut v = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(first) = parse_segment_name(&name) else {
            continue;
        };
        if !e.file_type()?.is_file() {
            continue;
        }
        v.push(Segment {
            first,
            path: e.path(),
        });
    }
    v.sort_by_key(|s| s.first);
    Ok(v)
}

fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

/// Block size for reads that look for line boundaries.
const BLOCK: usize = 64 * 1024;

/// Read `len` bytes at `off` (fewer at the end of the file).
fn read_at(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The line that ends at `end` (just after its LF, or the end of a file
/// whose last line has none): its start, its bytes without the LF, and
/// whether it had one. `None` at offset 0. A stretch without LF longer than
/// any line can be is returned as one unparsable line of its last bytes.
fn line_before(f: &File, end: u64) -> io::Result<Option<(u64, Vec<u8>, bool)>> {
    if end == 0 {
        return Ok(None);
    }
    let limit = (crate::framer::MAX_LINE + PREFIX_LEN + 2) as u64;
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = end;
    let mut had_lf = None;
    loop {
        let start = pos.saturating_sub(BLOCK as u64);
        let mut chunk = read_at(f, start, (pos - start) as usize)?;
        let mut hay = chunk.len();
        if had_lf.is_none() {
            let lf = chunk.last() == Some(&b'\n');
            had_lf = Some(lf);
            if lf {
                hay -= 1;
            }
        }
        if let Some(i) = memchr::memrchr(b'\n', &chunk[..hay]) {
            chunk.drain(..=i);
            chunk.extend_from_slice(&buf);
            let line_start = start + i as u64 + 1;
            return Ok(Some((line_start, strip_lf(chunk), had_lf == Some(true))));
        }
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
        if pos == 0 || end - pos > limit {
            return Ok(Some((pos, strip_lf(buf), had_lf == Some(true))));
        }
    }
}

fn strip_lf(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

/// Where the good part of a file of length `len` ends (after the last
/// whole line that parses; everything after it is torn) and the id of
/// that line.
fn recover(f: &File, len: u64) -> io::Result<(u64, Option<u64>)> {
    let mut end = len;
    while let Some((start, line, had_lf)) = line_before(f, end)? {
        if had_lf {
            if let Some(e) = parse_line(&line) {
                return Ok((end, Some(e.id)));
            }
        }
        end = start;
    }
    Ok((0, None))
}

/// What opening the archive found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the end of the last file (a torn last line).
    pub torn: u64,
    /// The file they were cut from.
    pub file: Option<PathBuf>,
}

/// The one appender of an account's archive.
///
/// Lines go into a buffer (`append`) and to the file in one `write` per
/// `flush`; a write that fails keeps the buffer for the next flush, so the
/// caller decides how long to hold records (and whether to stop reading)
/// while the disk is full.
pub struct Writer {
    dir: PathBuf,
    file: Option<File>,
    /// Size of the current file, as written.
    size: u64,
    /// Month of the current file.
    month: (i64, u32),
    file_max: u64,
    last: u64,
    buf: Vec<u8>,
    /// Ids of the first and last line in `buf`.
    buf_first: u64,
    dirty: bool,
}

impl Writer {
    /// Open the archive in `dir` (created 0700 if missing), cut a torn last
    /// line off its newest file, and find the last id.
    pub fn open(dir: &Path, file_max: u64) -> io::Result<(Writer, Recovery)> {
        crate::fifo::make_dir(dir)?;
        let meta = fs::symlink_metadata(dir)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the archive is not a directory",
            ));
        }
        let mut rec = Recovery::default();
        let mut w = Writer {
            dir: dir.to_path_buf(),
            file: None,
            size: 0,
            month: (0, 0),
            file_max: file_max.max(BLOCK as u64),
            last: 0,
            buf: Vec::new(),
            buf_first: 0,
            dirty: false,
        };
        let segs = segments(dir)?;
        // The newest file with a good line gives the last id; an empty or
        // all-torn newest file (a crash right after rotation) is reused.
        for seg in segs.iter().rev() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&seg.path)?;
            let len = f.metadata()?.len();
            let (end, last) = recover(&f, len)?;
            if end < len {
                rec.torn += len - end;
                rec.file = Some(seg.path.clone());
                f.set_len(end)?;
                f.sync_data()?;
            }
            match last {
                Some(id) => {
                    w.last = id;
                    w.size = end;
                    w.month = month(seg.first);
                    w.file = Some(open_append(&seg.path)?);
                    break;
                }
                None => {
                    // Nothing good in it: it is not a segment any more.
                    fs::remove_file(&seg.path)?;
                }
            }
        }
        Ok((w, rec))
    }

    /// The id of the last line appended (0 when the archive is empty).
    pub fn last_id(&self) -> u64 {
        self.last
    }

    /// Bytes appended but not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forget the lines not yet written (a disk that takes nothing for
    /// too long): the archive misses them, nothing else does.
    pub fn discard(&mut self) {
        self.buf.clear();
    }

    /// The next id at time `now`: never smaller than or equal to the last.
    pub fn next_id(&self, now: SystemTime) -> u64 {
        micros(now).max(self.last + 1)
    }

    /// Append one record (to the buffer); its id.
    pub fn append(&mut self, flow: Flow, record: &[u8], now: SystemTime) -> u64 {
        let id = self.next_id(now);
        if self.buf.is_empty() {
            self.buf_first = id;
        }
        format_line(&mut self.buf, id, flow, record);
        self.last = id;
        id
    }

    /// Write the buffer to the archive: one `write` (two when it starts a
    /// new file). On an error the buffer stays for the next call.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.rotate_if_due()?;
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("no archive file"));
        };
        let mut done = 0;
        let r = loop {
            if done == self.buf.len() {
                break Ok(());
            }
            match io::Write::write(f, &self.buf[done..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if done > 0 {
            self.dirty = true;
        }
        match r {
            Ok(()) => {
                self.size += done as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                // A short write leaves part of a line: cut the file back to
                // the last whole line so the next write starts clean.
                if done > 0 {
                    let whole = memchr::memrchr(b'\n', &self.buf[..done]).map_or(0, |i| i + 1);
                    if let Some(f) = &self.file {
                        let _ = f.set_len(self.size + whole as u64);
                    }
                    self.size += whole as u64;
                    self.buf.drain(..whole);
                    if let Some(first) = self.buf.get(..16) {
                        self.buf_first = std::str::from_utf8(first)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(self.buf_first);
                    }
                }
                Err(e)
            }
        }
    }

    /// Start a new file when the month of the first buffered line differs
    /// from the current file's, or the buffer would pass the size bound.
    fn rotate_if_due(&mut self) -> io::Result<()> {
        let m = month(self.buf_first);
        let due = self.file.is_none()
            || m != self.month
            || (self.size > 0 && self.size + self.buf.len() as u64 > self.file_max);
        if !due {
            return Ok(());
        }
        if let Some(f) = &self.file {
            if self.dirty {
                f.sync_data()?;
                self.dirty = false;
            }
        }
        let path = self.dir.join(segment_name(self.buf_first));
        let f = open_append(&path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        self.month = m;
        Ok(())
    }

    /// Make what was written durable (fdatasync), if anything was.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            if let Some(f) = &self.file {
                f.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }
}

/// A position in the archive: the file (by its first id, so that removing
/// old files does not move positions) and a byte offset at a line start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// Reads an archive that may be growing. Cheap to make; reads the list of
/// files again when it reaches the end of the newest one it knows.
pub struct Reader {
    dir: PathBuf,
    segs: Vec<Segment>,
    file: Option<(u64, File)>,
}

impl Reader {
    pub fn open(dir: &Path) -> io::Result<Reader> {
        Ok(Reader {
            dir: dir.to_path_buf(),
            segs: segments(dir)?,
            file: None,
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Look again for files (after a rotation).
    pub fn refresh(&mut self) -> io::Result<()> {
        self.segs = segments(&self.dir)?;
        self.file = None;
        Ok(())
    }

    /// Index of the file holding `pos`: the last whose first id is at
    /// most `pos.segment` (a removed file's position falls to the next).
    fn index(&self, pos: &Pos) -> Option<usize> {
        match self.segs.partition_point(|s| s.first <= pos.segment) {
            0 => (!self.segs.is_empty()).then_some(0),
            n => Some(n - 1),
        }
    }

    fn file(&mut self, i: usize) -> io::Result<&File> {
        let first = self.segs[i].first;
        if self.file.as_ref().is_none_or(|(j, _)| *j != first) {
            let f = open_read(&self.segs[i].path)?;
            self.file = Some((first, f));
        }
        match &self.file {
            Some((_, f)) => Ok(f),
            None => Err(io::Error::other("no archive file")),
        }
    }

    fn start_of(&self, i: usize) -> Pos {
        Pos {
            segment: self.segs[i].first,
            offset: 0,
        }
    }

    /// The position of the first line whose id is greater than `id`
    /// (the start of the archive for 0; the end when there is none).
    pub fn seek_after(&mut self, id: u64) -> io::Result<Pos> {
        if self.segs.is_empty() {
            return Ok(Pos::default());
        }
        let i = match self.segs.partition_point(|s| s.first <= id) {
            0 => return Ok(self.start_of(0)),
            n => n - 1,
        };
        let f = self.file(i)?;
        let len = f.metadata()?.len();
        let off = bisect(f, len, |e| e.id > id)?;
        if off >= len && i + 1 < self.segs.len() {
            return Ok(self.start_of(i + 1));
        }
        Ok(Pos {
            segment: self.segs[i].first,
            offset: off,
        })
    }

    /// The position of the first line at or after time `micros`.
    pub fn seek_time(&mut self, micros: u64) -> io::Result<Pos> {
        self.seek_after(micros.saturating_sub(1))
    }

    /// The end of the archive as it is now.
    pub fn end(&mut self) -> io::Result<Pos> {
        self.refresh()?;
        let Some(i) = self.segs.len().checked_sub(1) else {
            return Ok(Pos::default());
        };
        let len = self.file(i)?.metadata()?.len();
        Ok(Pos {
            segment: self.segs[i].first,
            offset: len,
        })
    }

    /// Up to `max` bytes of whole lines from `pos` on, and the position
    /// after them; on to the next file at the end of one. Empty at the end
    /// of the archive for now, or when the line at `pos` is longer than
    /// `max` (a `max` of `LINE_MAX` always holds one line).
    pub fn read_forward(&mut self, pos: &Pos, max: usize) -> io::Result<(Vec<u8>, Pos)> {
        let mut pos = *pos;
        let mut refreshed = false;
        loop {
            let Some(i) = self.index(&pos) else {
                if refreshed {
                    return Ok((Vec::new(), pos));
                }
                self.refresh()?;
                refreshed = true;
                continue;
            };
            if self.segs[i].first > pos.segment {
                // The file pos was in is gone: go on from the next one.
                pos = self.start_of(i);
            }
            let f = self.file(i)?;
            let mut chunk = read_at(f, pos.offset, max)?;
            if let Some(lf) = memchr::memrchr(b'\n', &chunk) {
                chunk.truncate(lf + 1);
                let next = Pos {
                    segment: pos.segment,
                    offset: pos.offset + chunk.len() as u64,
                };
                return Ok((chunk, next));
            }
            if chunk.len() == max {
                return Ok((Vec::new(), pos));
            }
            // Nothing whole left in this file. A later file means this one
            // is finished (the writer writes whole lines before it rotates).
            if i + 1 < self.segs.len() {
                pos = self.start_of(i + 1);
                continue;
            }
            if refreshed {
                return Ok((Vec::new(), pos));
            }
            self.refresh()?;
            refreshed = true;
        }
    }

    /// Up to `max` bytes of whole lines that end at `pos`, and the
    /// position of the first of them: for reading backwards. Empty at the
    /// start of the archive (or for a line longer than `max`).
    pub fn read_backward(&mut self, pos: &Pos, max: usize) -> io::Result<(Vec<u8>, Pos)> {
        let mut pos = *pos;
        loop {
            let Some(i) = self.index(&pos) else {
                return Ok((Vec::new(), pos));
            };
            let first = self.segs[i].first;
            if first > pos.segment {
                // Before the oldest file.
                return Ok((Vec::new(), self.start_of(i)));
            }
            if first < pos.segment {
                // pos was in a file that is gone: the end of the one before.
                let len = self.file(i)?.metadata()?.len();
                pos = Pos {
                    segment: first,
                    offset: len,
                };
            }
            if pos.offset == 0 {
                if i == 0 {
                    return Ok((Vec::new(), pos));
                }
                let len = self.file(i - 1)?.metadata()?.len();
                pos = Pos {
                    segment: self.segs[i - 1].first,
                    offset: len,
                };
                continue;
            }
            let f = self.file(i)?;
            let start = pos.offset.saturating_sub(max as u64);
            let chunk = read_at(f, start, (pos.offset - start) as usize)?;
            // Whole lines only: from after the first LF, unless the chunk
            // starts at the beginning of the file.
            let from = if start == 0 {
                0
            } else {
                match memchr::memchr(b'\n', &chunk) {
                    Some(i) => i + 1,
                    None => return Ok((Vec::new(), pos)),
                }
            };
            let at = Pos {
                segment: pos.segment,
                offset: start + from as u64,
            };
            return Ok((chunk[from..].to_vec(), at));
        }
    }
}

/// The first line boundary in `f` (of length `len`) whose line satisfies
/// `after` (a predicate monotonic in the file's order), by bisection on
/// byte offsets; `len` when none does.
fn bisect(f: &File, len: u64, after: impl Fn(&Entry) -> bool) -> io::Result<u64> {
    // Invariant: the line starting at `lo` does not satisfy, or lo == 0;
    // every line starting at or after `hi` satisfies (or hi == len).
    let mut lo = 0u64;
    let mut hi = len;
    while hi - lo > BLOCK as u64 {
        let mid = lo + (hi - lo) / 2;
        // The first line that starts after mid.
        let Some((start, entry_after)) = line_after(f, mid, hi, &after)? else {
            hi = mid;
            continue;
        };
        if entry_after {
            hi = start;
        } else {
            lo = start;
        }
    }
    // Linear scan of the last stretch: only the prefixes are needed.
    let chunk = read_at(f, lo, (hi - lo) as usize + PREFIX_LEN)?;
    let mut off = 0usize;
    while lo + (off as u64) < hi {
        if let Some(e) = parse_prefix(&chunk[off..]) {
            if after(&e) {
                return Ok(lo + off as u64);
            }
        }
        match memchr::memchr(b'\n', &chunk[off..]) {
            Some(lf) => off += lf + 1,
            None => break,
        }
    }
    Ok(hi)
}

/// The first parsable line starting after byte `mid` (and before `hi`):
/// its start and whether it satisfies `after`.
fn line_after(
    f: &File,
    mid: u64,
    hi: u64,
    after: &impl Fn(&Entry) -> bool,
) -> io::Result<Option<(u64, bool)>> {
    let mut off = mid;
    while off < hi {
        let chunk = read_at(f, off, BLOCK)?;
        let Some(lf) = memchr::memchr(b'\n', &chunk) else {
            off += chunk.len() as u64;
            if chunk.is_empty() {
                return Ok(None);
            }
            continue;
        };
        let start = off + lf as u64 + 1;
        if start >= hi {
            return Ok(None);
        }
        // Read the line starting there (it may be long).
        let head = read_at(f, start, PREFIX_LEN + 2)?;
        // Only the prefix is needed to know the id and flow.
        if head.len() >= PREFIX_LEN {
            if let Some(e) = parse_prefix(&head) {
                return Ok(Some((start, after(&e))));
            }
        }
        off = start;
    }
    Ok(None)
}

/// Parse only the prefix of a line (for bisection, where the record's end
/// is not at hand): the entry's record is empty.
fn parse_prefix(head: &[u8]) -> Option<Entry<'static>> {
    if head.len() < PREFIX_LEN || head[16] != b' ' || head[44] != b' ' || head[47] != b' ' {
        return None;
    }
    let mut id: u64 = 0;
    for &b in &head[..16] {
        if !b.is_ascii_digit() {
            return None;
        }
        id = id * 10 + u64::from(b - b'0');
    }
    if head[17..21].iter().any(|b| !b.is_ascii_digit()) || head[43] != b'Z' {
        return None;
    }
    Some(Entry {
        id,
        flow: Flow::parse(&head[45..47])?,
        record: b"",
    })
}

/// Split a buffer of whole lines into entries, skipping lines that do not
/// parse (meta lines are entries too: callers that want records skip them).
pub fn entries(buf: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    buf.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamped_id_is_the_last_stanza_id_by_the_account() {
        let by = "a@l";
        let rec = b"<message from='b@x'><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' by='a@l' id='0000000000000001'/><stanza-id xmlns='urn:xmpp:sid:0' by='a@l' id='0000000000000042'/></message>\n";
        assert_eq!(super::stamped_id(rec, by), Some(42));
        // A forged one before another's last child is not taken.
        let rec = b"<message><stanza-id xmlns='urn:xmpp:sid:0' by='a@l' id='1'/><stanza-id xmlns='urn:xmpp:sid:0' by='srv' id='x'/></message>";
        assert_eq!(super::stamped_id(rec, by), None);
        assert_eq!(super::stamped_id(b"<presence/>", by), None);
    }

    use super::*;
    use std::time::Duration;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("sj-archive-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        Tmp(d)
    }
    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }
    fn all(dir: &Path) -> Vec<(u64, Flow, String)> {
        let mut r = Reader::open(dir).expect("open");
        let mut pos = r.seek_after(0).expect("seek");
        let mut out = Vec::new();
        loop {
            let (buf, next) = r.read_forward(&pos, 1 << 16).expect("read");
            if buf.is_empty() {
                break;
            }
            for e in entries(&buf) {
                out.push((e.id, e.flow, String::from_utf8_lossy(e.record).into_owned()));
            }
            pos = next;
        }
        out
    }

    #[test]
    fn line_format_round_trip() {
        let mut v = Vec::new();
        format_line(
            &mut v,
            1_796_520_014_123_456,
            Flow::FromServer,
            b"<message/>\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&v),
            "1796520014123456 2026-12-06T01:20:14.123456Z <* <message/>\n"
        );
        let e = parse_line(&v[..v.len() - 1]).expect("parse");
        assert_eq!(e.id, 1_796_520_014_123_456);
        assert_eq!(e.flow, Flow::FromServer);
        assert_eq!(e.record, b"<message/>");
        for bad in [
            &b"1796520014123456 2026-12-06T01:20:14.123456Z <* <message"[..],
            b"179652001412345x 2026-12-06T01:20:14.123456Z <* <a/>",
            b"1796520014123456 2026-12-06T01:20:14.123456Z ?? <a/>",
            b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ] {
            assert!(parse_line(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn ids_strictly_increase_even_when_the_clock_steps_back() {
        let d = tmp("mono");
        let (mut w, _) = Writer::open(&d.0, FILE_MAX).expect("open");
        let a = w.append(Flow::FromServer, b"<a/>", at(1_800_000_000));
        let b = w.append(Flow::FromServer, b"<b/>", at(1_700_000_000));
        let c = w.append(Flow::FromServer, b"<c/>", at(1_800_000_000));
        assert!(a < b && b < c, "{a} {b} {c}");
        w.flush().expect("flush");
        drop(w);
        let (w, rec) = Writer::open(&d.0, FILE_MAX).expect("reopen");
        assert_eq!(rec, Recovery::default());
        assert_eq!(w.last_id(), c);
        assert!(w.next_id(at(1)) > c);
    }

    #[test]
    fn torn_last_line_is_cut_and_nothing_before_it_lost() {
        let d = tmp("torn");
        let (mut w, _) = Writer::open(&d.0, FILE_MAX).expect("open");
        let mut ids = Vec::new();
        for i in 0..100u64 {
            let rec = format!(
                "<message id='m{i}'><body>{}</body></message>",
                "x".repeat(500)
            );
            ids.push(w.append(Flow::FromServer, rec.as_bytes(), at(1_800_000_000 + i)));
        }
        w.flush().expect("flush");
        drop(w);
        let seg = segments(&d.0).expect("segs").remove(0);
        let good = fs::read(&seg.path).expect("read");
        // A crash in the middle of a write: half a line, no LF.
        let mut torn = good.clone();
        torn.extend_from_slice(
            b"1800000100000000 2026-01-15T08:00:00.000000Z <* <message id='half'><bo",
        );
        fs::write(&seg.path, &torn).expect("write");
        let (mut w, rec) = Writer::open(&d.0, FILE_MAX).expect("reopen");
        assert_eq!(rec.torn, (torn.len() - good.len()) as u64);
        assert_eq!(fs::read(&seg.path).expect("read"), good);
        assert_eq!(w.last_id(), ids[99]);
        // Appending after recovery continues cleanly.
        let next = w.append(Flow::FromServer, b"<after/>", at(1_800_000_200));
        w.flush().expect("flush");
        let got = all(&d.0);
        assert_eq!(got.len(), 101);
        assert_eq!(got[100].0, next);
        assert_eq!(got[100].2, "<after/>");
    }

    #[test]
    fn zeros_after_power_loss_are_cut() {
        let d = tmp("zeros");
        let (mut w, _) = Writer::open(&d.0, FILE_MAX).expect("open");
        w.append(Flow::FromServer, b"<a/>", at(1_800_000_000));
        w.append(Flow::ToServer, b"<b/>", at(1_800_000_001));
        w.flush().expect("flush");
        drop(w);
        let seg = segments(&d.0).expect("segs").remove(0);
        let good = fs::read(&seg.path).expect("read");
        let mut bad = good.clone();
        bad.extend_from_slice(&[0u8; 4096]);
        bad.push(b'\n');
        bad.extend_from_slice(&[0u8; 100]);
        fs::write(&seg.path, &bad).expect("write");
        let (_w, rec) = Writer::open(&d.0, FILE_MAX).expect("reopen");
        assert_eq!(rec.torn, (bad.len() - good.len()) as u64);
        assert_eq!(fs::read(&seg.path).expect("read"), good);
    }

    #[test]
    fn an_all_torn_file_is_removed_and_the_previous_one_used() {
        let d = tmp("alltorn");
        let (mut w, _) = Writer::open(&d.0, FILE_MAX).expect("open");
        let a = w.append(Flow::FromServer, b"<a/>", at(1_800_000_000));
        w.flush().expect("flush");
        drop(w);
        let later = d.0.join(segment_name(1_900_000_000_000_000));
        fs::write(
            &later,
            b"1900000000000000 2030-03-17T17:46:40.000000Z <* <x",
        )
        .expect("w");
        let (w, rec) = Writer::open(&d.0, FILE_MAX).expect("reopen");
        assert!(rec.torn > 0);
        assert!(!later.exists());
        assert_eq!(w.last_id(), a);
    }

    #[test]
    fn rotation_by_month_and_size_and_reading_across_files() {
        let d = tmp("rotate");
        let (mut w, _) = Writer::open(&d.0, BLOCK as u64).expect("open");
        let jan = 1_767_225_600; // 2026-01-01T00:00:00Z
        let feb = 1_769_904_000; // 2026-02-01T00:00:00Z
        let mut ids = Vec::new();
        for i in 0..10u64 {
            ids.push(w.append(Flow::FromServer, b"<jan/>", at(jan + i)));
        }
        w.flush().expect("flush");
        for i in 0..10u64 {
            ids.push(w.append(Flow::FromServer, b"<feb/>", at(feb + i)));
        }
        w.flush().expect("flush");
        // Size: many lines in several flushes.
        let big = format!("<big>{}</big>", "y".repeat(4000));
        for i in 0..60u64 {
            ids.push(w.append(Flow::FromServer, big.as_bytes(), at(feb + 100 + i)));
            w.flush().expect("flush");
        }
        let segs = segments(&d.0).expect("segs");
        assert!(segs.len() >= 3, "{segs:?}");
        assert!(segs[0]
            .path
            .to_string_lossy()
            .ends_with("2026-01.1767225600000000"));
        assert!(segs[1].path.to_string_lossy().contains("2026-02."));
        for s in &segs {
            assert!(fs::metadata(&s.path).expect("m").len() <= BLOCK as u64 + 5000);
        }
        let got: Vec<u64> = all(&d.0).into_iter().map(|e| e.0).collect();
        assert_eq!(got, ids);
        // Seeking by id lands on the next line, in any file.
        let mut r = Reader::open(&d.0).expect("reader");
        for (k, id) in ids.iter().enumerate() {
            let pos = r.seek_after(*id).expect("seek");
            let (buf, _) = r.read_forward(&pos, 1 << 16).expect("read");
            let first = entries(&buf).next().map(|e| e.id);
            assert_eq!(first, ids.get(k + 1).copied(), "after {k}");
        }
        let pos = r.seek_after(0).expect("seek");
        let (buf, _) = r.read_forward(&pos, 1 << 16).expect("read");
        assert_eq!(entries(&buf).next().map(|e| e.id), Some(ids[0]));
    }

    #[test]
    fn bisection_in_a_large_file() {
        let d = tmp("bisect");
        let (mut w, _) = Writer::open(&d.0, 1 << 30).expect("open");
        let mut ids = Vec::new();
        for i in 0..20_000u64 {
            let rec = format!(
                "<message id='{i}'><body>{}</body></message>",
                "z".repeat(i as usize % 300)
            );
            ids.push(w.append(Flow::FromServer, rec.as_bytes(), at(1_800_000_000)));
        }
        w.flush().expect("flush");
        let mut r = Reader::open(&d.0).expect("reader");
        for k in [0usize, 1, 2, 999, 5000, 12_345, 19_998, 19_999] {
            let pos = r.seek_after(ids[k]).expect("seek");
            let (buf, _) = r.read_forward(&pos, 1 << 16).expect("read");
            assert_eq!(
                entries(&buf).next().map(|e| e.id),
                ids.get(k + 1).copied(),
                "{k}"
            );
        }
        // Backwards from the end: the last lines, in file order.
        let end = r.end().expect("end");
        let (buf, first) = r.read_backward(&end, 4096).expect("back");
        let back: Vec<u64> = entries(&buf).map(|e| e.id).collect();
        assert!(!back.is_empty());
        assert_eq!(*back.last().expect("last"), ids[19_999]);
        let (buf2, _) = r.read_backward(&first, 4096).expect("back");
        let back2: Vec<u64> = entries(&buf2).map(|e| e.id).collect();
        assert_eq!(back2.last().map(|i| i + 1), back.first().copied());
    }

    #[test]
    fn a_reader_follows_a_growing_archive() {
        let d = tmp("follow");
        let (mut w, _) = Writer::open(&d.0, BLOCK as u64).expect("open");
        let mut r = Reader::open(&d.0).expect("reader");
        let mut pos = r.end().expect("end");
        let mut seen = Vec::new();
        let mut made = Vec::new();
        for round in 0..50u64 {
            for i in 0..20u64 {
                let rec = format!("<m r='{round}' i='{i}'>{}</m>", "q".repeat(200));
                made.push(w.append(Flow::Local, rec.as_bytes(), at(1_800_000_000 + round)));
            }
            w.flush().expect("flush");
            loop {
                let (buf, next) = r.read_forward(&pos, 1 << 14).expect("read");
                if buf.is_empty() {
                    break;
                }
                seen.extend(entries(&buf).map(|e| e.id));
                pos = next;
            }
        }
        assert_eq!(seen, made);
        assert!(segments(&d.0).expect("segs").len() > 1);
    }
}
