//! Cursors and catch-up: nothing lost for a client that was away or slow.
//!
//! What is here: each client's place in the account archive (`Track`),
//! what its cursor means, the files that keep cursors between sessions
//! (`DIR/archive/cursors/NAME`), the catch-up horizon and its notice, and
//! the form of a replayed record (a message gets a XEP-0203 `<delay/>`).
//!
//! The cursor of a client is the archive id of the last record its reader
//! has TAKEN out of its `in` FIFO (or that was not for it): what mirrord
//! wrote into the FIFO but the reader has not read yet (`FIONREAD` on the
//! write end) is not counted, so a reader that dies with records in the
//! pipe gets them again from the archive. A reader that took the first
//! part of a line and died gets that whole record again. Cursors are
//! kept in memory while mirrord runs and written to disk lazily (every
//! second when they moved, when a client leaves, at exit): a crash of
//! mirrord itself can replay up to a second of records, never skip any.
//!
//! What is not here: the fan-out (`fanout`), the routing of a record
//! (`route`), the archive format (`sj::archive`).

use sj::archive::{Entry, Flow, Pos, Reader};
use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// A client whose queue is below this gets the next part of its
/// catch-up read from the archive.
pub const LOW: usize = 256 * 1024;
/// Bytes of archive read per client per turn.
pub const CHUNK: usize = 256 * 1024;
/// Ids of records addressed to one client kept for a replay of group chat
/// lines, at most (the oldest go first).
pub const FOR_IT_MAX: usize = 100_000;

/// Default horizon: records, and age.
pub const HORIZON_RECORDS: u64 = 10_000;
pub const HORIZON_SECS: u64 = 7 * 24 * 3600;

/// One client's place in the archive.
#[derive(Debug, Default)]
pub struct Track {
    /// The last id decided for it: queued, or not for it.
    pub upto: u64,
    /// Takes records from the archive, not from the live stream: it was
    /// away (no reader) or fell more than the queue bound behind.
    pub behind: bool,
    /// Whether the horizon was looked at since it fell behind.
    pub horizon_checked: bool,
    /// Where `upto` ends in the archive, when known.
    pub pos: Option<Pos>,
    /// (id, end) of each queued record not yet taken by the reader, `end`
    /// counted in bytes ever queued.
    marks: VecDeque<(u64, u64)>,
    queued_total: u64,
    /// The last id the reader took, while records are outstanding.
    taken: u64,
    /// The cursor last written to disk.
    saved: Option<u64>,
    /// The last id queued for it: a group chat record comes once per
    /// client in the room, each copy with the one id.
    last_queued: u64,
    /// Ids of records addressed to this client alone that it may not have
    /// taken yet: a group chat's `<#` line is replayed to the clients whose
    /// copy it was.
    for_it: BTreeSet<u64>,
}

impl Track {
    /// A client seen for the first time at `cursor`, behind when the live
    /// stream is past it.
    pub fn at(cursor: u64, live: u64, saved: bool) -> Track {
        Track {
            upto: cursor,
            behind: cursor < live,
            taken: cursor,
            saved: saved.then_some(cursor),
            ..Track::default()
        }
    }

    /// A record of `len` bytes with `id` was queued.
    pub fn queued(&mut self, id: u64, len: usize) {
        self.last_queued = id;
        self.queued_total += len as u64;
        self.marks.push_back((id, self.queued_total));
        self.upto = id;
        self.pos = None;
    }

    /// The cursor now: `unread` bytes (queue and pipe) are not taken.
    pub fn cursor(&mut self, unread: u64) -> u64 {
        let taken = self.queued_total.saturating_sub(unread);
        while let Some(&(id, end)) = self.marks.front() {
            if end > taken {
                break;
            }
            self.taken = id;
            self.marks.pop_front();
        }
        if self.marks.is_empty() {
            // All taken: what came after the last one was not for it.
            self.taken = self.upto;
        }
        let taken = self.taken;
        self.for_it = self.for_it.split_off(&(taken + 1));
        taken
    }

    /// Whether a live record with `id` was decided for it already (queued,
    /// replayed, or passed over); a group chat's copy for it comes after
    /// the copies for others, with the same id.
    pub fn decided(&self, id: u64) -> bool {
        id < self.upto || (id == self.upto && self.last_queued == id)
    }

    /// A record with `id` was addressed to it alone.
    pub fn addressed(&mut self, id: u64) {
        self.for_it.insert(id);
        if self.for_it.len() > FOR_IT_MAX {
            self.for_it.pop_first();
        }
    }

    /// Was the record with `id` addressed to it?
    pub fn was_addressed(&self, id: u64) -> bool {
        self.for_it.contains(&id)
    }

    /// The reader went away (or a new FIFO replaced the old one): what it
    /// did not take comes again from the archive.
    pub fn rewind(&mut self, unread: u64) {
        let c = self.cursor(unread);
        self.marks.clear();
        self.upto = c;
        self.taken = c;
        self.pos = None;
        self.fall_behind();
    }

    /// Replay from after `id` when that is before where it stands (a
    /// client's stanzas that were taken but never acknowledged).
    pub fn rewind_to(&mut self, id: u64) {
        if id < self.upto || id < self.taken {
            self.marks.clear();
            self.upto = id;
            self.taken = id;
            self.pos = None;
            self.saved = None;
            self.fall_behind();
        }
    }

    pub fn fall_behind(&mut self) {
        if !self.behind {
            self.behind = true;
            self.horizon_checked = false;
        }
    }

    /// Whether the disk copy differs from `c`.
    pub fn unsaved(&self, c: u64) -> bool {
        self.saved != Some(c)
    }

    pub fn mark_saved(&mut self, c: u64) {
        self.saved = Some(c);
    }
}

/// Bytes written into a pipe and not read yet (`FIONREAD`; 0 when it
/// cannot be asked).
pub fn unread_in_pipe(fd: impl AsFd) -> u64 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let r = unsafe { nix::libc::ioctl(fd.as_fd().as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as u64
    }
}

/// Does a record of this flow go to clients?
pub fn for_clients(flow: Flow) -> bool {
    matches!(flow, Flow::FromServer | Flow::ToServerCopied | Flow::Local)
}

/// Is a record replayed at all? An iq is a question or answer of the
/// moment: a request replayed later would be answered twice or too late,
/// a result matches no question any more.
pub fn replayed(record: &[u8]) -> bool {
    !record.starts_with(b"<iq")
}

/// The form of a record replayed from the archive: a message gets a
/// XEP-0203 `<delay/>` with the time it was archived (unless it carries
/// one already); LF-terminated.
pub fn replay_form(e: &Entry<'_>, by: &str) -> Vec<u8> {
    let has_delay = memchr::memmem::find(e.record, sj::ns::DELAY.as_bytes()).is_some();
    if !has_delay {
        let d = format!(
            "<delay xmlns='{}' from='{by}' stamp='{}'/>",
            sj::ns::DELAY,
            sj::archive::stamp(e.id)
        );
        if let Some(v) = sj::archive::append_child(e.record, d.as_bytes()) {
            return v;
        }
    }
    let mut v = Vec::with_capacity(e.record.len() + 1);
    v.extend_from_slice(e.record);
    v.push(b'\n');
    v
}

/// The catch-up horizon.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    pub records: u64,
    pub secs: u64,
}

/// Where a catch-up from `upto` starts, given the horizon: `None` when
/// everything after `upto` is replayed, else the id to start after.
/// Counts records for clients backwards from `live` (bounded by
/// `h.records` lines read).
pub fn horizon_cut(
    r: &mut Reader,
    upto: u64,
    live: u64,
    h: Horizon,
    now: u64,
) -> std::io::Result<Option<u64>> {
    let by_age = now.saturating_sub(h.secs.saturating_mul(1_000_000));
    let mut cut = if upto < by_age { Some(by_age) } else { None };
    let mut pos = r.end()?;
    let mut count = 0u64;
    'back: loop {
        let (buf, first) = r.read_backward(&pos, CHUNK)?;
        if buf.is_empty() {
            break;
        }
        let lines: Vec<Entry<'_>> = sj::archive::entries(&buf).collect();
        for e in lines.iter().rev() {
            if e.id > live || !for_clients(e.flow) {
                continue;
            }
            if e.id <= upto {
                break 'back;
            }
            count += 1;
            if count > h.records {
                // Everything up to and with this one is past the bound.
                cut = Some(cut.map_or(e.id, |c| c.max(e.id)));
                break 'back;
            }
        }
        pos = first;
    }
    Ok(cut.filter(|&c| c > upto))
}

/// The one notice a client gets when the horizon cut its catch-up.
pub fn notice(bare: &str, from_id: u64, to_id: u64, h: Horizon) -> Vec<u8> {
    let text = format!(
        "sj-proxy: you were away longer than the catch-up horizon ({} records or {} days): \
         what arrived from {} to {} is not replayed here; it is in the archive (sj-log, MAM).",
        h.records,
        h.secs / 86_400,
        sj::archive::stamp(from_id),
        sj::archive::stamp(to_id),
    );
    let bare = sj::xml::escape_attr(bare);
    format!(
        "<message from='{bare}' type='headline' id='sj-horizon-{to_id}'>\
         <subject>History not replayed</subject><body>{}</body></message>\n",
        sj::xml::escape_text(&text)
    )
    .into_bytes()
}

/// `DIR/archive/cursors`: cursors outlive the client directory, which
/// sj-c2s removes when its client logs out.
pub fn cursors_dir(archive: &Path) -> PathBuf {
    archive.join("cursors")
}

/// The saved cursor of client `name`, if any.
pub fn load(dir: &Path, name: &str) -> Option<u64> {
    let p = dir.join(name);
    let meta = std::fs::symlink_metadata(&p).ok()?;
    if !meta.is_file() || meta.len() > 64 {
        return None;
    }
    std::fs::read_to_string(&p).ok()?.trim().parse().ok()
}

/// Take (read and remove) the rewind left for client `name` at `path`
/// (`Dir::archive_rewind`), if any.
pub fn take_rewind(path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 64 {
        return None;
    }
    let id = std::fs::read_to_string(path).ok()?.trim().parse().ok();
    let _ = std::fs::remove_file(path);
    id
}

/// Save the cursor of client `name` (replaced atomically).
pub fn save(dir: &Path, name: &str, id: u64) -> std::io::Result<()> {
    sj::fifo::make_subdir(dir)?;
    sj::fifo::write_atomic(&dir.join(name), format!("{id}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_counts_what_the_reader_took() {
        let mut t = Track::at(10, 10, false);
        t.queued(11, 100);
        t.queued(12, 100);
        t.upto = 13; // 13 was not for it
        assert_eq!(t.cursor(200), 10);
        assert_eq!(t.cursor(150), 10);
        assert_eq!(t.cursor(100), 11);
        assert_eq!(t.cursor(0), 13);
        t.queued(14, 50);
        t.rewind(20);
        assert_eq!(t.upto, 13);
        assert!(t.behind);
    }

    #[test]
    fn copies_of_one_group_chat_record_reach_each_member_once() {
        let mut t = Track::at(10, 10, false);
        // The copy for another client passes it over...
        assert!(!t.decided(11));
        t.upto = 11;
        // ...and its own copy, with the same id, still reaches it, once.
        assert!(!t.decided(11));
        t.addressed(11);
        t.queued(11, 100);
        assert!(t.decided(11));
        assert!(t.was_addressed(11));
        // Taken by the reader: no longer kept for a replay.
        assert_eq!(t.cursor(0), 11);
        assert!(!t.was_addressed(11));
        // Addressed while it had no reader: kept for the catch-up.
        t.addressed(12);
        t.rewind(0);
        assert!(t.was_addressed(12));
    }

    #[test]
    fn replayed_message_gets_delay() {
        let e = Entry {
            id: 1_796_520_014_123_456,
            flow: Flow::FromServer,
            record: b"<message from='b@x'><body>hi</body></message>",
        };
        let v = replay_form(&e, "a@l");
        assert_eq!(
            String::from_utf8_lossy(&v),
            "<message from='b@x'><body>hi</body><delay xmlns='urn:xmpp:delay' from='a@l' stamp='2026-12-06T01:20:14.123456Z'/></message>\n"
        );
        let p = Entry {
            record: b"<presence from='b@x'/>",
            ..e
        };
        assert_eq!(replay_form(&p, "a@l"), b"<presence from='b@x'/>\n");
    }
}
