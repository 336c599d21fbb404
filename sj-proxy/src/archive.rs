//! The router's side of the account archive (sj(7), ARCHIVE): every
//! routing of a record is appended once, and what mirrord gets carries
//! the archive id.
//!
//! What it does: picks the one form of a routed record that is archived
//! (the one the clients get when there is one, else the one that goes
//! upstream), stamps a message's client form with a XEP-0359
//! `<stanza-id by='BARE'/>` of its archive id by splicing bytes (no
//! parse: records are canonical, DESIGN §4), prefixes the record for
//! mirrord with `ID ` so mirrord can keep cursors without reading the
//! file, and writes all lines of one poll turn in one `write`.
//!
//! What it does not do: read the archive (mirrord, sj-c2s, sj-log do),
//! decide routes (`route`), or sync each write (a crash of the process
//! loses nothing the kernel has; a power loss may cut the last lines,
//! which the next open finds and cuts cleanly).

use crate::route::Dest;
use sj::account::Account;
use sj::archive::{Flow, Writer};
use std::time::SystemTime;

/// Environment switch: `SJ_ARCHIVE=off` runs without an archive (the
/// benchmark's baseline; a user who wants no history on disk).
pub const ENV: &str = "SJ_ARCHIVE";

/// Length of the stanza-id element without its `by`.
const SID_LEN: usize = 64;

/// Stop holding lines for a disk that takes nothing past this.
const PENDING_MAX: usize = 64 << 20;

/// Which side a routed record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Local,
}

pub struct Archive {
    w: Writer,
    /// `by` of the stanza-id: the bare JID, escaped for an attribute.
    by: String,
    /// A write failed and was logged; the next success is logged too.
    failing: bool,
}

impl Archive {
    /// Open the archive of `acct` unless switched off (`None` then).
    pub fn open(acct: &Account) -> Result<Option<Archive>, sj::exit::Fatal> {
        if std::env::var(ENV).is_ok_and(|v| v == "off" || v == "0" || v == "no") {
            sj::log::info("archive off (SJ_ARCHIVE)");
            return Ok(None);
        }
        let dir = acct.dir().archive();
        let (w, rec) = Writer::open(&dir, sj::archive::FILE_MAX)
            .map_err(|e| sj::exit::Fatal::io(format!("open the archive {}", dir.display()), &e))?;
        if rec.torn > 0 {
            sj::log::warn(&format!(
                "archive: cut a torn last line ({} bytes) off {}",
                rec.torn,
                rec.file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
        Ok(Some(Archive {
            w,
            by: sj::xml::escape_attr(acct.bare()),
            failing: false,
        }))
    }

    /// Archive one routing: the list `route` made for one record. The
    /// record for mirrord (if any) is stamped and prefixed in place.
    pub fn record(&mut self, side: Side, routed: &mut [(Dest, Vec<u8>)]) {
        let mirror = routed.iter().position(|(d, _)| *d == Dest::Mirror);
        let upstream = routed.iter().any(|(d, _)| *d == Dest::Upstream);
        let flow = match (side, mirror.is_some(), upstream) {
            (Side::Server, true, _) => Flow::FromServer,
            (Side::Server, false, _) => Flow::FromServerQuiet,
            (Side::Local, true, true) => Flow::ToServerCopied,
            (Side::Local, true, false) => Flow::Local,
            (Side::Local, false, true) => Flow::ToServer,
            // Between local programs only (a client's presence for
            // presenced): not a record of the account's traffic.
            (Side::Local, false, false) => return,
        };
        let now = SystemTime::now();
        match mirror {
            Some(i) => {
                // One buffer: `ID ` for mirrord, then the record, stamped
                // when it is a message; the archive line is made from it.
                let id = self.w.next_id(now);
                let rec = &routed[i].1;
                let mut line = Vec::with_capacity(17 + rec.len() + 24 + SID_LEN + self.by.len());
                sj::archive::push_digits(&mut line, id, 16);
                line.push(b' ');
                let by = self.by.as_bytes();
                let stamped = sj::archive::append_child_into(&mut line, rec, |v| {
                    v.extend_from_slice(b"<stanza-id xmlns='urn:xmpp:sid:0' by='");
                    v.extend_from_slice(by);
                    v.extend_from_slice(b"' id='");
                    sj::archive::push_digits(v, id, 16);
                    v.extend_from_slice(b"'/>");
                });
                if !stamped {
                    line.extend_from_slice(rec.strip_suffix(b"\n").unwrap_or(rec));
                    line.push(b'\n');
                }
                let got = self.w.append(flow, &line[17..], now);
                debug_assert_eq!(got, id);
                routed[i].1 = line;
            }
            None => {
                let pick = routed
                    .iter()
                    .find(|(d, _)| *d == Dest::Upstream)
                    .or_else(|| routed.iter().find(|(d, _)| !matches!(d, Dest::Drop(_))));
                if let Some((_, rec)) = pick {
                    self.w.append(flow, rec, now);
                }
            }
        }
    }

    /// Archive a group chat's record as it came from the server (`<#`),
    /// after `rooms` made one copy per client in the room: every copy for
    /// mirrord carries the one archive id, so mirrord knows which clients
    /// it was for when it replays the line. No stanza-id by the account:
    /// a group chat message's stable id is the room's.
    pub fn record_room(&mut self, rec: &[u8], routed: &mut [(Dest, Vec<u8>)]) {
        let now = SystemTime::now();
        let id = self.w.append(Flow::Room, rec, now);
        for (d, r) in routed.iter_mut() {
            if *d == Dest::Mirror {
                let mut line = Vec::with_capacity(17 + r.len());
                sj::archive::push_digits(&mut line, id, 16);
                line.push(b' ');
                line.extend_from_slice(r);
                *r = line;
            }
        }
    }

    /// Write what this turn appended: before mirrord gets the turn's
    /// records, so an id mirrord sees is always in the file.
    pub fn flush(&mut self) {
        match self.w.flush() {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    sj::log::info("archive: writing again");
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    sj::log::warn(&format!(
                        "archive: unable to write: {}; holding records",
                        sj::log::strerror(&e)
                    ));
                }
                if self.w.pending() > PENDING_MAX {
                    sj::log::warn(&format!(
                        "archive: dropping {} bytes the disk did not take",
                        self.w.pending()
                    ));
                    self.w.discard();
                }
            }
        }
    }

    /// On the way out: written and synced.
    pub fn close(&mut self) {
        self.flush();
        if let Err(e) = self.w.sync() {
            sj::log::warn(&format!(
                "archive: unable to sync: {}",
                sj::log::strerror(&e)
            ));
        }
    }
}

/// The mirrord line: `ID record` (the record keeps its LF).
#[cfg(test)]
fn prefixed(id: u64, rec: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + rec.len() + 1);
    v.extend_from_slice(format!("{id:016} ").as_bytes());
    v.extend_from_slice(rec);
    if v.last() != Some(&b'\n') {
        v.push(b'\n');
    }
    v
}

/// A `<message>` record with a `<stanza-id/>` of `id` as its last child
/// (`sj::archive::append_child`); `None` for anything else.
#[cfg(test)]
pub fn stamp(rec: &[u8], id: u64, by: &str) -> Option<Vec<u8>> {
    let sid = format!(
        "<stanza-id xmlns='{}' by='{by}' id='{id:016}'/>",
        sj::ns::SID
    );
    sj::archive::append_child(rec, sid.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_messages_only() {
        let s = stamp(b"<message from='b@x'><body>hi</body></message>\n", 7, "a@l").expect("stamp");
        assert_eq!(
            s,
            b"<message from='b@x'><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' by='a@l' id='0000000000000007'/></message>\n"
        );
        let s = stamp(b"<message to='b@x'/>", 8, "a@l").expect("stamp");
        assert_eq!(
            s,
            b"<message to='b@x'><stanza-id xmlns='urn:xmpp:sid:0' by='a@l' id='0000000000000008'/></message>\n"
        );
        assert!(stamp(b"<presence/>\n", 1, "a@l").is_none());
        assert!(stamp(b"<messages/>\n", 1, "a@l").is_none());
        assert!(stamp(b"<message a='/>'", 1, "a@l").is_none());
    }

    #[test]
    fn prefix() {
        assert_eq!(prefixed(12, b"<a/>\n"), b"0000000000000012 <a/>\n");
    }
}
