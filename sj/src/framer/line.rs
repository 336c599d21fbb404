//! The line rule (DESIGN §4): a record is one line, and how long that line
//! may be; a line read back as a record (`canonical_record`); and a record
//! with its escaped line breaks made literal again for a server
//! (`wire_form`).

use super::{fail, Condition, Event, FrameError, Framer, Limits, Mode, Res};

/// The longest line an element of `max_record` bytes as received can make.
/// Records grow when put on one line: a line break in character data
/// becomes `&#10;` and one inside CDATA `]]>&#10;<![CDATA[`, so 17 times as
/// long at most; declarations copied from the stream header come on top,
/// and the framer refuses the record whose declarations do not fit in
/// `DECL_ROOM`.
pub const fn grown(max_record: usize) -> usize {
    max_record
        .saturating_mul(CDATA_BREAK.len())
        .saturating_add(DECL_ROOM)
}

/// The longest line a program reads from a pipe or FIFO of records: those
/// framed under `Limits::DEFAULT` (4.25 MiB + 4 KiB).
pub const MAX_LINE: usize = Limits::DEFAULT.max_line();

/// A line break inside CDATA, on one line: the section is closed around it.
pub(super) const CDATA_BREAK: &[u8] = b"]]>&#10;<![CDATA[";

/// Room in `Limits::max_line` for namespace declarations copied from the
/// stream header into a record (a real header declares a few dozen bytes).
const DECL_ROOM: usize = 4096;

/// Validate and canonicalise one record given as one line (from a FIFO or a
/// pipe): exactly one top-level element, optional surrounding whitespace.
/// The line, and the record made of it, may be as long as
/// `limits.max_line()`: a line is usually a record already, grown by
/// canonicalisation. Depth and attribute limits apply as they are.
pub fn canonical_record(line: &[u8], limits: Limits) -> Result<Vec<u8>, FrameError> {
    let as_line = Limits {
        max_record: limits.max_line(),
        ..limits
    };
    let mut f = Framer::new(Mode::Fragments, as_line);
    f.feed(line);
    match f.next_event()? {
        // A stream error is still one element: a script may log or send it.
        Some(Event::Record(r) | Event::StreamError(r)) => match f.next_event()? {
            // A raw line's lone CRs grow like LFs do.
            None if f.buffered() == 0 && r.len() > limits.max_line().saturating_add(1) => {
                over_line(limits)
            }
            None if f.buffered() == 0 => Ok(r),
            _ => fail(
                Condition::NotWellFormed,
                "more than one element on the line",
            ),
        },
        Some(_) => fail(Condition::NotWellFormed, "not a record"),
        None => fail(Condition::NotWellFormed, "incomplete element"),
    }
}

pub(super) fn over_line<T>(limits: Limits) -> Res<T> {
    fail(
        Condition::PolicyViolation,
        format!("record exceeds {} bytes on one line", limits.max_line()),
    )
}

/// A record as written to a server: the line breaks that canonicalisation
/// escaped in character data (`&#10;`, and `]]>&#10;<![CDATA[` inside
/// CDATA) become literal LFs again, so the stanza is about as long as its
/// sender wrote it, which is what the server's size limit counts. The
/// infoset is unchanged: a literal LF and `&#10;` are the same character
/// in content, and attribute values, where they differ, are kept as they
/// are. `record` must be a canonical record; one without `&#10;` is
/// returned untouched.
pub fn wire_form(record: Vec<u8>) -> Vec<u8> {
    const LF: &[u8] = b"&#10;";
    if memchr::memmem::find(&record, LF).is_none() {
        return record;
    }
    let s = &record[..];
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        // Character data up to the next markup or reference.
        let Some(k) = memchr::memchr2(b'<', b'&', &s[i..]) else {
            out.extend_from_slice(&s[i..]);
            break;
        };
        out.extend_from_slice(&s[i..i + k]);
        i += k;
        if s[i..].starts_with(LF) {
            out.push(b'\n');
            i += LF.len();
        } else if s[i] == b'&' {
            out.push(b'&');
            i += 1;
        } else if s[i..].starts_with(b"<![CDATA[") {
            i = cdata_joined(s, i, &mut out);
        } else {
            // A tag: through its `>`, which may also stand in a quoted value.
            let end = tag_end(s, i);
            out.extend_from_slice(&s[i..end]);
            i = end;
        }
    }
    out
}

/// The CDATA section at `s[i..]` with its escaped line breaks joined
/// again (in a well-formed record `]]>` ends a section and nothing else),
/// appended to `out`; where it ends.
fn cdata_joined(s: &[u8], i: usize, out: &mut Vec<u8>) -> usize {
    let mut at = i + 9;
    out.extend_from_slice(b"<![CDATA[");
    loop {
        let Some(k) = memchr::memmem::find(&s[at..], b"]]>") else {
            out.extend_from_slice(&s[at..]);
            return s.len();
        };
        out.extend_from_slice(&s[at..at + k]);
        at += k;
        if s[at..].starts_with(CDATA_BREAK) {
            out.push(b'\n');
            at += CDATA_BREAK.len();
        } else {
            out.extend_from_slice(b"]]>");
            return at + 3;
        }
    }
}

/// The end of the tag at `s[i] == '<'`: after its `>` outside quotes (or
/// the end of `s`).
fn tag_end(s: &[u8], i: usize) -> usize {
    let mut at = i + 1;
    let mut quote = 0u8;
    while let Some(k) = memchr::memchr3(b'>', b'\'', b'"', &s[at..]) {
        let b = s[at + k];
        at += k + 1;
        match quote {
            0 if b == b'>' => break,
            0 => quote = b,
            q if q == b => quote = 0,
            _ => {}
        }
    }
    at
}
