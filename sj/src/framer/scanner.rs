//! The resumable boundary scanner: where a top-level item ends, for an
//! element not yet whole in the buffer. It remembers where it stopped
//! (`Lex`), so one-byte feeds never rescan, and refuses what must be
//! refused before a record completes (size and depth limits, comments,
//! PIs, a nested stream header). One method per state. The validating
//! pass (`checker`) runs on whole elements first (`start_item`) and at
//! the end the scanner finds (`finish_record`).

use super::checker::{canonicalise, check_element, too_deep};
use super::header::{in_streams_ns, parse_decl, parse_header};
use super::names::{split_qname, tag_name};
use super::{fail, Condition, Event, Framer, Limits, Phase, Res, StreamHeader};
use crate::xml::{find_byte, is_ws};

/// RFC 6120 §11.6: a stream in another encoding gets unsupported-encoding.
/// A UTF-16 (or UTF-32) stream shows itself in its first bytes: a byte
/// order mark, or NUL bytes around the first `<`. (A UTF-8 BOM is a
/// character, U+FEFF, and so text before the header: not-well-formed.)
const UTF16: &str = "the stream is not UTF-8 (UTF-16 or UTF-32)";

/// Where the boundary scanner stopped, so that feeding one byte never
/// rescans what was already looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lex {
    /// In character data (inside a record) or between top-level items.
    Idle,
    /// At a `<` whose kind is not known yet.
    Lt,
    /// Inside a start or end tag; `quote` is the open quote or 0.
    Tag {
        start: usize,
        quote: u8,
        end_tag: bool,
    },
    /// Inside a CDATA section whose content starts at `content`.
    Cdata { content: usize },
    /// Inside `<?xml ... ?>` at stream start.
    Decl,
}

/// A validating pass that stopped before the end of its element.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    /// The limits it was made with.
    limits: Limits,
    /// How many bytes of the element it saw.
    seen: usize,
}

/// What one step of the scanner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Nothing yet: go on.
    Go,
    /// More bytes are needed.
    More,
    /// A top-level item starts here (at its `<`).
    Item(usize),
    /// A start or end tag is complete.
    Tag {
        start: usize,
        end: usize,
        end_tag: bool,
    },
}

impl Framer {
    /// Refuse an item that has grown past the record limit. `upto` is the
    /// end of the bytes known to belong to it. Every scanner error checks
    /// this first, so the outcome does not depend on how input was chunked.
    pub(super) fn limit(&self, upto: usize) -> Res<()> {
        match self.item {
            Some(s) if upto - s > self.limits.max_record => fail(
                Condition::PolicyViolation,
                format!("element exceeds {} bytes", self.limits.max_record),
            ),
            _ => Ok(()),
        }
    }

    fn fail_at<T>(&self, upto: usize, c: Condition, detail: &str) -> Res<T> {
        self.limit(upto)?;
        fail(c, detail)
    }

    /// The next event, `None` when more bytes are needed: a pass kept at
    /// its mark goes on if enough bytes came; else the scanner goes on
    /// from where it stopped, one state method at a time.
    // Inlined into its one caller, `next_event`, as it was when they
    // shared a module: a call per event showed in the framer bench.
    #[inline(always)]
    pub(super) fn step(&mut self) -> Res<Option<Event>> {
        if let Some(ev) = self.resume_pass() {
            return Ok(Some(ev));
        }
        loop {
            let flow = match self.lex {
                Lex::Idle if self.item.is_none() => self.between_items()?,
                Lex::Idle => self.in_text()?,
                Lex::Lt => self.at_lt()?,
                Lex::Tag {
                    start,
                    quote,
                    end_tag,
                } => self.in_tag(start, quote, end_tag)?,
                Lex::Cdata { content } => self.in_cdata(content)?,
                Lex::Decl => self.in_decl()?,
            };
            // The events are made here, not in the states: returned
            // through them, the (large) event cost a copy per state.
            let ev = match flow {
                Flow::Go => None,
                Flow::More => return Ok(None),
                Flow::Item(at) => self.start_item(at),
                Flow::Tag {
                    start,
                    end,
                    end_tag,
                } => self.tag_done(start, end, end_tag)?,
            };
            if ev.is_some() {
                return Ok(ev);
            }
        }
    }

    /// The pass kept at its mark (`pending`) over more of its element.
    fn resume_pass(&mut self) -> Option<Event> {
        let (Some(p), Some(at)) = (self.pending, self.item) else {
            return None;
        };
        let avail = self.buf.len().min(at.saturating_add(p.limits.max_record)) - at;
        let redo = p.seen - self.scratch.mark.i;
        if p.limits != self.limits {
            // Changed mid-element: a fresh pass at the end, as before.
            self.pending = None;
            return None;
        }
        // Going on from the mark redoes the bytes after it; waiting for as
        // many new bytes keeps that linear in tiny reads.
        if avail > p.seen && avail - p.seen >= redo {
            return self.try_pass(at);
        }
        None
    }

    /// Between top-level items: whitespace, then the next item's `<`.
    fn between_items(&mut self) -> Res<Flow> {
        let n = self.buf.len();
        let mut i = self.scan;
        while i < n && is_ws(self.buf[i]) {
            i += 1;
        }
        self.scan = i;
        self.pos = i;
        if i == n {
            return Ok(Flow::More);
        }
        if self.phase == Phase::Ended {
            return fail(Condition::NotWellFormed, "data after the end of the stream");
        }
        if self.phase == Phase::Start && matches!(self.buf[i], 0x00 | 0xFE | 0xFF) {
            return fail(Condition::UnsupportedEncoding, UTF16);
        }
        if self.buf[i] != b'<' {
            return fail(Condition::NotWellFormed, "text outside an element");
        }
        Ok(Flow::Item(i))
    }

    /// Character data inside an element: up to the next `<`.
    fn in_text(&mut self) -> Res<Flow> {
        let n = self.buf.len();
        match find_byte(b'<', &self.buf[self.scan..]) {
            None => {
                self.scan = n;
                self.limit(n)?;
                Ok(Flow::More)
            }
            Some(off) => {
                self.scan += off;
                self.limit(self.scan + 1)?;
                self.lex = Lex::Lt;
                Ok(Flow::Go)
            }
        }
    }

    /// At `<`: what kind of markup it starts.
    fn at_lt(&mut self) -> Res<Flow> {
        let p = self.scan;
        let Some(&b) = self.buf.get(p + 1) else {
            self.limit(self.buf.len())?;
            return Ok(Flow::More);
        };
        if b == 0 && self.phase == Phase::Start {
            return fail(Condition::UnsupportedEncoding, UTF16);
        }
        let tag = |end_tag| Lex::Tag {
            start: p,
            quote: 0,
            end_tag,
        };
        match b {
            b'/' => {
                self.lex = tag(true);
                self.scan = p + 2;
            }
            b'?' if self.phase == Phase::Start => {
                self.lex = Lex::Decl;
                self.scan = p + 2;
            }
            b'?' => return self.fail_at(p + 2, Condition::RestrictedXml, "processing instruction"),
            b'!' => return self.at_bang(p),
            _ => {
                self.lex = tag(false);
                self.scan = p + 1;
            }
        }
        Ok(Flow::Go)
    }

    /// At `<!` (at `p`): a CDATA section inside an element, or refused.
    fn at_bang(&mut self, p: usize) -> Res<Flow> {
        const CDATA: &[u8] = b"<![CDATA[";
        let n = self.buf.len();
        let avail = &self.buf[p..n.min(p + CDATA.len())];
        if !CDATA.starts_with(avail) {
            let what = if avail.starts_with(b"<!-") {
                "comment"
            } else {
                "DTD or markup declaration"
            };
            // Judged at the first byte that is not CDATA, not at however
            // much has arrived, so the size check does not depend on
            // chunking.
            let bad = avail
                .iter()
                .zip(CDATA)
                .position(|(a, b)| a != b)
                .unwrap_or(avail.len());
            return self.fail_at(p + bad + 1, Condition::RestrictedXml, what);
        }
        if avail.len() < CDATA.len() {
            self.limit(n)?;
            return Ok(Flow::More);
        }
        if self.depth == 0 {
            return self.fail_at(
                p + CDATA.len(),
                Condition::NotWellFormed,
                "CDATA outside an element",
            );
        }
        self.lex = Lex::Cdata {
            content: p + CDATA.len(),
        };
        self.scan = p + CDATA.len();
        Ok(Flow::Go)
    }

    /// Inside a tag that starts at `start`: to its `>`, past quoted values.
    fn in_tag(&mut self, start: usize, quote: u8, end_tag: bool) -> Res<Flow> {
        let n = self.buf.len();
        let rest = &self.buf[self.scan..];
        let found = if quote == 0 {
            let head = rest.len().min(16);
            match rest[..head]
                .iter()
                .position(|&b| matches!(b, b'>' | b'\'' | b'"'))
            {
                Some(i) => Some(i),
                None => memchr::memchr3(b'>', b'\'', b'"', &rest[head..]).map(|i| i + head),
            }
        } else {
            find_byte(quote, rest)
        };
        let Some(off) = found else {
            self.scan = n;
            self.limit(n)?;
            return Ok(Flow::More);
        };
        let p = self.scan + off;
        self.scan = p + 1;
        let c = self.buf[p];
        let quote = match (quote, c) {
            (0, b'>') => {
                self.limit(p + 1)?;
                self.lex = Lex::Idle;
                return Ok(Flow::Tag {
                    start,
                    end: p + 1,
                    end_tag,
                });
            }
            (0, q) => q,
            _ => 0,
        };
        self.lex = Lex::Tag {
            start,
            quote,
            end_tag,
        };
        Ok(Flow::Go)
    }

    /// The next `>` from `scan`, which moves past it; `None`: more bytes
    /// are needed.
    fn next_gt(&mut self) -> Res<Option<usize>> {
        let n = self.buf.len();
        let Some(off) = memchr::memchr(b'>', &self.buf[self.scan..]) else {
            self.scan = n;
            self.limit(n)?;
            return Ok(None);
        };
        let p = self.scan + off;
        self.scan = p + 1;
        Ok(Some(p))
    }

    /// Inside a CDATA section: to its `]]>`.
    fn in_cdata(&mut self, content: usize) -> Res<Flow> {
        let Some(p) = self.next_gt()? else {
            return Ok(Flow::More);
        };
        if p >= content + 2 && &self.buf[p - 2..p] == b"]]" {
            self.limit(p + 1)?;
            self.lex = Lex::Idle;
        }
        Ok(Flow::Go)
    }

    /// Inside the XML declaration: to its `?>`.
    fn in_decl(&mut self) -> Res<Flow> {
        let Some(p) = self.next_gt()? else {
            return Ok(Flow::More);
        };
        if self.buf[p - 1] == b'?' {
            self.limit(p + 1)?;
            let start = self.item.unwrap_or(0);
            parse_decl(&self.buf[start..p + 1])?;
            self.phase = Phase::Header;
            self.item = None;
            self.pos = p + 1;
            self.lex = Lex::Idle;
        }
        Ok(Flow::Go)
    }

    /// A start or end tag `buf[start..end]` is complete.
    fn tag_done(&mut self, start: usize, end: usize, end_tag: bool) -> Res<Option<Event>> {
        match self.phase {
            Phase::Start | Phase::Header => {
                if end_tag {
                    return fail(Condition::NotWellFormed, "end tag before the stream header");
                }
                let (header, attrs) = parse_header(&self.buf[start..end], self.limits)?;
                self.header = Some(header);
                self.phase = Phase::Body;
                self.item = None;
                self.pos = end;
                Ok(Some(Event::Header(StreamHeader { attrs })))
            }
            Phase::Body | Phase::Ended if end_tag => self.end_tag_done(start, end),
            Phase::Body | Phase::Ended => self.start_tag_done(start, end),
        }
    }

    /// An end tag in the stream: the end of the stream, or of an element.
    fn end_tag_done(&mut self, start: usize, end: usize) -> Res<Option<Event>> {
        if self.depth > 0 {
            self.depth -= 1;
            if self.depth == 0 {
                return self.finish_record(end).map(Some);
            }
            return Ok(None);
        }
        let name = tag_name(&self.buf[start..end]);
        let ok = match &self.header {
            Some(h) => name == h.qname.as_slice(),
            None => false,
        };
        let tail = &self.buf[start + 2 + name.len()..end - 1];
        if !ok || !tail.iter().all(|&b| is_ws(b)) {
            return fail(Condition::NotWellFormed, "end tag without a start tag");
        }
        self.phase = Phase::Ended;
        self.item = None;
        self.pos = end;
        Ok(Some(Event::End))
    }

    /// A start tag in the stream: one level deeper, or a whole empty element.
    fn start_tag_done(&mut self, start: usize, end: usize) -> Res<Option<Event>> {
        let name = tag_name(&self.buf[start..end]);
        if let Some(h) = &self.header {
            // A second header may never end: refuse it at its start tag,
            // under any prefix (deeper ones: the validating pass).
            if name == h.qname.as_slice()
                || (self.depth == 0
                    && split_qname(name).1 == b"stream"
                    && in_streams_ns(&self.buf[start..end], h))
            {
                return fail(Condition::BadFormat, "stream header inside the stream");
            }
        }
        if self.depth + 1 > self.limits.max_depth {
            return too_deep(self.limits.max_depth);
        }
        let self_closing = end - start >= 3 && self.buf[end - 2] == b'/';
        if !self_closing {
            self.depth += 1;
        } else if self.depth == 0 {
            return self.finish_record(end).map(Some);
        }
        Ok(None)
    }

    fn finish_record(&mut self, end: usize) -> Res<Event> {
        // `item` stays until the record is made: a limit error may skip it.
        let start = self.item.unwrap_or(self.pos);
        let resume = self.pending.take().is_some_and(|p| p.limits == self.limits);
        #[cfg(test)]
        {
            self.pass_bytes += end - start - if resume { self.scratch.mark.i } else { 0 };
        }
        let c = canonicalise(
            &self.buf[start..end],
            self.limits,
            self.header.as_ref(),
            &mut self.scratch,
            resume,
        )?;
        self.item = None;
        self.pos = end;
        Ok(c.into_event())
    }

    /// A top-level item starts at `at` (a `<`). For an element, the fast
    /// path: validate and canonicalise what is buffered of it in one pass,
    /// without the boundary scanner. The record, if it is whole and valid.
    /// Otherwise the scanner takes over (see `try_pass`).
    fn start_item(&mut self, at: usize) -> Option<Event> {
        self.item = Some(at);
        self.lex = Lex::Lt;
        self.pending = None;
        if self.phase != Phase::Body
            || matches!(self.buf.get(at + 1), None | Some(b'/' | b'?' | b'!'))
        {
            return None;
        }
        self.scratch.begin();
        self.try_pass(at)
    }

    /// Run the validating pass from the state in `scratch` over what is
    /// buffered of the element at `at`. The record, if it is whole and
    /// valid; the scanner path would have produced the same one: it ends an
    /// element where the pass does, and refuses nothing in a valid one of
    /// at most `max_record` bytes.
    ///
    /// Otherwise the scanner path decides, which gives the answer (and any
    /// error) the same bytes always give. The pass is kept at its mark for
    /// a later `try_pass` or for `finish_record`, and the scanner is moved
    /// up to the mark if it is behind: the scanner refuses nothing before
    /// the mark and would be there at depth `stack` in character data, as
    /// the pass accepted every token before it and is inside `max_record`.
    /// The caller keeps the work linear: each byte is scanned once, and the
    /// pass sees each byte a bounded number of times.
    fn try_pass(&mut self, at: usize) -> Option<Event> {
        let lim = self
            .buf
            .len()
            .min(at.saturating_add(self.limits.max_record));
        let s = &self.buf[at..lim];
        #[cfg(test)]
        {
            self.pass_bytes += s.len() - self.scratch.mark.i;
        }
        match check_element(s, self.limits, self.header.as_ref(), &mut self.scratch) {
            Ok(c) if !c.fits(self.limits) => {
                // The scanner path refuses it, after a pass from the start.
                self.pending = None;
                None
            }
            Ok(c) => {
                self.pending = None;
                // Invalid UTF-8: the scanner path reports it.
                std::str::from_utf8(&s[..c.end]).ok()?;
                self.item = None;
                self.lex = Lex::Idle;
                self.depth = 0;
                self.pos = at + c.end;
                self.scan = self.pos;
                Some(c.into_event())
            }
            Err(_) => {
                self.pending = Some(Pending {
                    limits: self.limits,
                    seen: s.len(),
                });
                self.scratch.rewind();
                let m = self.scratch.mark;
                if m.i > 0 && at + m.i > self.scan {
                    self.depth = m.stack;
                    self.lex = Lex::Idle;
                    self.scan = at + m.i;
                }
                None
            }
        }
    }
}
