//! The set of client FIFOs and their write queues.
//!
//! Every client `in` FIFO is opened non-blocking for writing only when a
//! record is due and only if it has a reader; each has its own bounded
//! queue, flushed when the descriptor is writable. A client whose queue
//! passes the bound is dropped until it registers again (its directory or
//! its `in` FIFO is made anew). Dropping writes the marker `dropped` into
//! the client's directory before closing the FIFO, so its reader, which
//! sees the end of input next, can tell a drop from mirrord stopping.

use crate::catchup::{self, Track};
use crate::route::{self, Target};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sj::account::{Account, ClientDir};
use sj::io::WriteQueue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Identity of a FIFO: device and inode.
type Ino = (u64, u64);

fn fs_is_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

fn ino_of(path: &Path) -> Option<Ino> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

// st_dev/st_ino are not u64 on every platform.
#[allow(clippy::unnecessary_cast)]
fn ino_of_fd(fd: &OwnedFd) -> Option<Ino> {
    nix::sys::stat::fstat(fd)
        .ok()
        .map(|st| (st.st_dev as u64, st.st_ino as u64))
}

/// One registered client.
struct Client {
    /// `DIR/clients/NAME/in`.
    path: PathBuf,
    /// `DIR/clients/NAME/dropped`.
    marker: PathBuf,
    /// Open write end, when there is a reader.
    fd: Option<OwnedFd>,
    queue: WriteQueue,
    /// The `in` FIFO we wrote to or dropped; a different one means the
    /// client registered again.
    ino: Option<Ino>,
    /// Over the bound: written to no more until it registers again.
    dropped: bool,
    /// While dropped, an `O_PATH` descriptor on the FIFO it was dropped
    /// from: not a writer, but it keeps that inode alive so a FIFO made
    /// anew in its place cannot get the same inode number.
    pin: Option<OwnedFd>,
    /// Why its `in` could not be opened last time, logged once.
    refused: Option<String>,
    /// Its place in the archive (`catchup`), when records carry ids.
    track: Track,
}

impl Client {
    fn new(dir: &ClientDir) -> Self {
        Client {
            path: dir.in_fifo(),
            marker: dir.dropped(),
            fd: None,
            queue: WriteQueue::new(),
            ino: None,
            dropped: false,
            pin: None,
            refused: None,
            track: Track::default(),
        }
    }

    fn close(&mut self) {
        self.fd = None;
        self.queue.clear();
    }

    /// Bytes queued or in the pipe that its reader has not taken.
    fn unread(&self) -> u64 {
        self.queue.len() as u64 + self.fd.as_ref().map_or(0, catchup::unread_in_pipe)
    }

    /// Over the bound: mark the drop, close, forget the queue, remember
    /// which FIFO it was. The marker is written before the FIFO closes, so
    /// a reader that sees the end of input finds it.
    fn drop_until_new(&mut self, name: &str, bound: usize) {
        let pin = nix::fcntl::open(
            &self.path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok();
        if let Some(p) = &pin {
            if ino_of_fd(p) != self.ino {
                // Already replaced while we were writing: not dropped.
                self.close();
                self.ino = None;
                return;
            }
        }
        self.pin = pin;
        let why = format!("queue over {bound} bytes\n");
        if let Err(e) = sj::fifo::write_marker(&self.marker, why.as_bytes()) {
            sj::log::warn(&format!(
                "client {name}: unable to write {}: {}",
                self.marker.display(),
                sj::log::strerror(&e)
            ));
        }
        self.close();
        self.dropped = true;
    }
}

/// What happened to the clients in one call, for the caller to log or test.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub dropped: Vec<String>,
    /// Fell behind the bound and goes on from the archive.
    pub behind: Vec<String>,
    pub gone: Vec<String>,
}

/// The archive side of the fan-out: present when sj-proxy archives.
pub struct Arch {
    reader: sj::archive::Reader,
    /// The id of the newest record seen on stdin (or in the archive at
    /// start): catch-up reads up to it, the live stream goes on from it.
    live: u64,
    /// The id of the newest record seen on stdin (0 before the first):
    /// where a client seen for the first time starts. Not `live`: what
    /// sj-proxy archived while mirrord was starting is still on its way
    /// in the pipe.
    seen: u64,
    cursors: PathBuf,
    horizon: catchup::Horizon,
    by: String,
}

/// All clients of one account directory.
pub struct Fanout {
    account: Account,
    bound: usize,
    arch: Option<Arch>,
    clients: BTreeMap<String, Client>,
    /// Resource → directory name.
    by_resource: HashMap<String, String>,
}

impl Fanout {
    pub fn new(account: Account, bound: usize) -> Self {
        Fanout {
            arch: None,
            account,
            bound,
            clients: BTreeMap::new(),
            by_resource: HashMap::new(),
        }
    }

    /// Read the archive too (catch-up, cursors); the newest id in it is
    /// where the live stream starts.
    pub fn open_archive(&mut self, horizon: catchup::Horizon) -> std::io::Result<()> {
        let dir = self.account.dir().archive();
        let mut reader = sj::archive::Reader::open(&dir)?;
        let end = reader.end()?;
        let (buf, _) = reader.read_backward(&end, sj::archive::LINE_MAX)?;
        let live = sj::archive::entries(&buf).last().map_or(0, |e| e.id);
        self.arch = Some(Arch {
            reader,
            live,
            seen: 0,
            cursors: catchup::cursors_dir(&dir),
            horizon,
            by: sj::xml::escape_attr(self.account.bare()),
        });
        Ok(())
    }

    /// Bring the client set in line with `names` (the directories that are
    /// clients now), and notice clients whose `in` FIFO was made anew.
    pub fn sync(&mut self, names: &BTreeSet<String>) {
        if self.arch.is_some() {
            let gone: Vec<String> = self
                .clients
                .keys()
                .filter(|n| !names.contains(*n))
                .cloned()
                .collect();
            for n in gone {
                if let Some(mut c) = self.clients.remove(&n) {
                    let unread = c.unread();
                    c.track.rewind(unread);
                    self.save_cursor(&n, &mut c, true);
                }
            }
        }
        self.clients.retain(|n, _| names.contains(n));
        self.by_resource.retain(|_, d| names.contains(d));
        for name in names {
            let Ok(dir) = self.account.dir().client(name) else {
                continue;
            };
            let arch = &self.arch;
            let mut arrived = !self.clients.contains_key(name);
            let c = self.clients.entry(name.clone()).or_insert_with(|| {
                let mut c = Client::new(&dir);
                if let Some(a) = arch {
                    // A client seen before starts where it stopped; a new
                    // one with the live stream, and its cursor is written
                    // at once (a restarted mirrord must find it).
                    match catchup::load(&a.cursors, name) {
                        Some(cur) => c.track = Track::at(cur, a.live, true),
                        None => {
                            c.track = Track::at(a.seen, a.seen, false);
                            // Before the first record (mirrord starting)
                            // the first tick writes it: 0 would replay all.
                            if a.seen > 0 && catchup::save(&a.cursors, name, a.seen).is_ok() {
                                c.track.mark_saved(a.seen);
                            }
                        }
                    }
                }
                c
            });
            if let Some(old) = c.ino {
                if ino_of(&c.path) != Some(old) {
                    // Registered again: start afresh.
                    if arch.is_some() {
                        let unread = c.unread();
                        c.track.rewind(unread);
                    }
                    arrived = true;
                    c.close();
                    c.ino = None;
                    if c.dropped {
                        sj::log::info(&format!("client {name} registered again"));
                        // Its drop is over; a marker left by it would
                        // mislead the new reader.
                        if fs_is_file(&c.marker) {
                            let _ = std::fs::remove_file(&c.marker);
                        }
                    }
                    c.dropped = false;
                    c.pin = None;
                }
            }
            if arrived && arch.is_some() {
                // An sj-c2s session that ended unresumed left where its
                // client's unacknowledged stanzas start.
                if let Some(id) = catchup::take_rewind(&self.account.dir().archive_rewind(name)) {
                    if id < c.track.upto {
                        sj::log::info(&format!(
                            "client {name}: replaying what it did not acknowledge, from after {id}"
                        ));
                    }
                    c.track.rewind_to(id);
                }
            }
            self.by_resource
                .entry(route::resource_of_dir(name))
                .or_insert_with(|| name.clone());
        }
    }

    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// Queue `record` (without its LF) for the clients it is for. Returns
    /// where it went.
    #[cfg(test)]
    pub fn deliver(&mut self, record: &[u8]) -> (Target, Report) {
        self.deliver_id(None, record)
    }

    /// `deliver` for a record with its archive id: a client that is
    /// behind gets it from the archive later, in its turn.
    pub fn deliver_id(&mut self, id: Option<u64>, record: &[u8]) -> (Target, Report) {
        let id = id.filter(|_| self.arch.is_some());
        if let (Some(id), Some(a)) = (id, self.arch.as_mut()) {
            a.live = a.live.max(id);
            a.seen = a.seen.max(id);
        }
        let by_resource = &self.by_resource;
        let target = route::target(record, &self.account, |r| {
            by_resource.get(r).map(String::as_str)
        });
        let mut report = Report::default();
        let bound = self.bound;
        for (name, c) in self.clients.iter_mut() {
            let wanted = match &target {
                Target::All => true,
                Target::Only(n) => n == name,
                Target::AllBut(n) => n != name,
                Target::Nobody => false,
            };
            if let Some(id) = id {
                if wanted && matches!(target, Target::Only(_)) {
                    c.track.addressed(id);
                }
                if c.track.behind || c.track.decided(id) {
                    continue;
                }
                if !wanted {
                    c.track.upto = id;
                    continue;
                }
            }
            if !wanted || c.dropped {
                continue;
            }
            if c.fd.is_none() {
                match sj::fifo::open_write(&c.path) {
                    Ok(Some(fd)) => {
                        c.ino = ino_of_fd(&fd);
                        c.fd = Some(fd);
                        c.refused = None;
                    }
                    // No reader: nothing to keep for it (the archive
                    // keeps it, when there is one).
                    Ok(None) => {
                        c.track.fall_behind();
                        continue;
                    }
                    // Replaced by something that is not a FIFO since the
                    // scan (never written into), or removed: said once.
                    Err(e) => {
                        let why = sj::log::strerror(&e);
                        if c.refused.as_deref() != Some(why.as_str()) {
                            sj::log::warn(&format!("client {name}: unable to open in: {why}"));
                            c.refused = Some(why);
                        }
                        continue;
                    }
                }
            }
            c.queue.push_parts(&[record, b"\n"]);
            if let Some(id) = id {
                c.track.queued(id, record.len() + 1);
            }
            // The bound is on what waits besides this record: a record
            // longer than the bound is no sign of a slow client.
            let judged = bound.saturating_add(record.len() + 1);
            if c.queue.len() > judged {
                // Give the pipe a chance before judging.
                Self::flush_one(name, c, &mut report);
                if c.queue.len() > judged && id.is_some() {
                    // Not dropped: it goes on from the archive at its pace.
                    sj::log::info(&format!(
                        "client {name}: more than {bound} bytes behind; catching up from the archive"
                    ));
                    c.track.fall_behind();
                    report.behind.push(name.clone());
                } else if c.queue.len() > judged {
                    sj::log::warn(&format!("dropping client {name}: queue over {bound} bytes"));
                    c.drop_until_new(name, bound);
                    report.dropped.push(name.clone());
                }
            }
        }
        (target, report)
    }

    fn flush_one(name: &str, c: &mut Client, report: &mut Report) {
        let Some(fd) = &c.fd else {
            c.queue.clear();
            return;
        };
        if let Err(e) = c.queue.flush(fd) {
            let gone = [
                nix::errno::Errno::EPIPE as i32,
                nix::errno::Errno::EBADF as i32,
            ];
            let why = if e.raw_os_error().is_some_and(|n| gone.contains(&n)) {
                "reader went away".to_string()
            } else {
                sj::log::strerror(&e)
            };
            sj::log::info(&format!(
                "client {name}: {why}; reopening when a reader comes back"
            ));
            // What the reader did not take comes again from the archive.
            let unread = c.unread();
            c.track.rewind(unread);
            c.close();
            report.gone.push(name.to_string());
        }
    }

    /// Write a client's cursor to disk if it moved (`force`: even if not).
    fn save_cursor(&self, name: &str, c: &mut Client, force: bool) {
        let Some(a) = &self.arch else { return };
        let unread = c.unread();
        let cur = c.track.cursor(unread);
        if !force && !c.track.unsaved(cur) {
            return;
        }
        match catchup::save(&a.cursors, name, cur) {
            Ok(()) => c.track.mark_saved(cur),
            Err(e) => sj::log::warn(&format!(
                "client {name}: unable to save its cursor: {}",
                sj::log::strerror(&e)
            )),
        }
    }

    /// Write the cursors that moved (lazily: each tick, and at exit).
    pub fn save_cursors(&mut self) {
        if self.arch.is_none() {
            return;
        }
        let names: Vec<String> = self.clients.keys().cloned().collect();
        for n in names {
            if let Some(mut c) = self.clients.remove(&n) {
                self.save_cursor(&n, &mut c, false);
                self.clients.insert(n, c);
            }
        }
    }

    /// Feed the clients that are behind from the archive, a chunk each,
    /// while their queue is short. `probe`: also look for a reader of
    /// those that had none (`can_pump` says whether to come back at once).
    pub fn pump(&mut self, probe: bool) {
        let Some(a) = self.arch.as_mut() else {
            return;
        };
        let by_resource = &self.by_resource;
        let account = &self.account;
        for (name, c) in self.clients.iter_mut() {
            if !c.track.behind {
                continue;
            }
            if c.fd.is_none() {
                // With each read of records and each tick: a failed open
                // (ENXIO) is one system call.
                if !probe {
                    continue;
                }
                match sj::fifo::open_write(&c.path) {
                    Ok(Some(fd)) => {
                        c.ino = ino_of_fd(&fd);
                        c.fd = Some(fd);
                        c.refused = None;
                    }
                    _ => continue,
                }
            }
            if c.queue.len() >= catchup::LOW {
                continue;
            }
            if let Err(e) = Self::catch_up(a, name, c, account, by_resource) {
                sj::log::warn(&format!(
                    "client {name}: unable to read the archive: {}",
                    sj::log::strerror(&e)
                ));
                // Nothing to replay that can be read: on with the live stream.
                c.track.upto = a.live;
                c.track.pos = None;
                c.track.behind = false;
            }
        }
    }

    /// Is there a client the archive can feed at once (behind, with a
    /// reader, its queue short)? Then the loop does not wait.
    pub fn can_pump(&self) -> bool {
        self.arch.is_some()
            && self
                .clients
                .values()
                .any(|c| c.track.behind && c.fd.is_some() && c.queue.len() < catchup::LOW)
    }

    /// One chunk of a client's catch-up.
    fn catch_up(
        a: &mut Arch,
        name: &str,
        c: &mut Client,
        account: &Account,
        by_resource: &HashMap<String, String>,
    ) -> std::io::Result<()> {
        if !c.track.horizon_checked {
            c.track.horizon_checked = true;
            let now = sj::archive::micros(std::time::SystemTime::now());
            if let Some(cut) =
                catchup::horizon_cut(&mut a.reader, c.track.upto, a.live, a.horizon, now)?
            {
                sj::log::info(&format!(
                    "client {name}: away past the catch-up horizon; replaying from {}",
                    sj::archive::stamp(cut)
                ));
                let n = catchup::notice(account.bare(), c.track.upto.max(1), cut, a.horizon);
                c.queue.push(n);
                c.track.upto = cut;
                c.track.pos = None;
            }
        }
        let pos = match c.track.pos {
            Some(p) => p,
            None => a.reader.seek_after(c.track.upto)?,
        };
        let (buf, next) = a.reader.read_forward(&pos, catchup::CHUNK)?;
        // read_forward may have moved on to the next file: the lines start
        // where `next` says, less their length.
        let chunk_start = sj::archive::Pos {
            segment: next.segment,
            offset: next.offset - buf.len() as u64,
        };
        let mut end = next;
        let mut reached = buf.is_empty();
        let mut off = 0usize;
        for line in buf.split_inclusive(|&b| b == b'\n') {
            let start = off;
            off += line.len();
            let Some(e) = sj::archive::parse_line(line.strip_suffix(b"\n").unwrap_or(line)) else {
                continue;
            };
            if e.id > a.live {
                // Not live yet: it comes on stdin.
                end = sj::archive::Pos {
                    segment: chunk_start.segment,
                    offset: chunk_start.offset + start as u64,
                };
                reached = true;
                break;
            }
            if e.id <= c.track.upto {
                continue;
            }
            let room_copy = e.flow == sj::archive::Flow::Room && c.track.was_addressed(e.id);
            if room_copy {
                let v = catchup::replay_form(&e, &a.by);
                let len = v.len();
                c.queue.push(v);
                c.track.queued(e.id, len);
            } else if catchup::for_clients(e.flow) && catchup::replayed(e.record) {
                let target = route::target(e.record, account, |r| {
                    by_resource.get(r).map(String::as_str)
                });
                let wanted = match &target {
                    Target::All => true,
                    Target::Only(n) => n == name,
                    Target::AllBut(n) => n != name,
                    Target::Nobody => false,
                };
                if wanted {
                    let v = catchup::replay_form(&e, &a.by);
                    let len = v.len();
                    c.queue.push(v);
                    c.track.queued(e.id, len);
                }
            }
            c.track.upto = e.id;
        }
        c.track.pos = Some(end);
        if reached || c.track.upto >= a.live {
            // The seam: everything up to the live stream's newest record is
            // queued; what comes next comes live.
            c.track.upto = c.track.upto.max(a.live);
            c.track.pos = None;
            c.track.behind = false;
            sj::log::info(&format!("client {name}: caught up"));
        }
        Ok(())
    }

    /// Write what each client's descriptor takes now.
    pub fn flush_all(&mut self) -> Report {
        let mut report = Report::default();
        for (name, c) in self.clients.iter_mut() {
            if !c.queue.is_empty() {
                Self::flush_one(name, c, &mut report);
            }
        }
        report
    }

    /// Flush only the named clients (those poll found writable).
    pub fn flush_some(&mut self, names: &[String]) -> Report {
        let mut report = Report::default();
        for name in names {
            if let Some(c) = self.clients.get_mut(name) {
                if !c.queue.is_empty() {
                    Self::flush_one(name, c, &mut report);
                }
            }
        }
        report
    }

    /// Descriptors with data waiting, to wait for writability on.
    pub fn pending(&self) -> Vec<(&str, BorrowedFd<'_>)> {
        self.clients
            .iter()
            .filter(|(_, c)| !c.queue.is_empty())
            .filter_map(|(n, c)| c.fd.as_ref().map(|fd| (n.as_str(), fd.as_fd())))
            .collect()
    }

    /// Bytes waiting for one client (tests, tracing).
    #[cfg(test)]
    pub fn queued(&self, name: &str) -> usize {
        self.clients.get(name).map_or(0, |c| c.queue.len())
    }

    #[cfg(test)]
    pub fn is_dropped(&self, name: &str) -> bool {
        self.clients.get(name).is_some_and(|c| c.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sj::io::{LineReader, Read};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str, names: &[&str]) -> (Dir, PathBuf) {
        let d = std::env::temp_dir().join(format!("mirrord-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let c = d.join("clients");
        for n in names {
            sj::fifo::make_dir(&c.join(n)).expect("mkdir");
            sj::fifo::make(&c.join(n).join("in")).expect("fifo");
            sj::fifo::make(&c.join(n).join("out")).expect("fifo");
        }
        (Dir(d), c)
    }

    fn fanout(c: &Path, bound: usize) -> Fanout {
        let jid = sj::jid::Jid::parse("alice@localhost/sj-proxy").expect("jid");
        let dir = sj::account::Dir::new(c.parent().expect("DIR"));
        let mut f = Fanout::new(Account::new(&jid, dir.clone()), bound);
        f.sync(&sj::fifo::list_clients(&dir));
        f
    }

    /// Everything a reader can read now, as lines.
    fn drain(fd: &OwnedFd) -> Vec<String> {
        let mut r = LineReader::new(1 << 20);
        while let Ok(Read::Data(_)) = r.fill(fd) {}
        let mut out = Vec::new();
        while let Some(l) = r.next_line() {
            out.push(String::from_utf8_lossy(l).into_owned());
        }
        out
    }

    #[test]
    fn targeting_and_skipping_readerless() {
        let (_d, c) = setup("target", &["a", "b", "noreader"]);
        let ra = sj::fifo::open_read(&c.join("a/in")).expect("open");
        let rb = sj::fifo::open_read(&c.join("b/in")).expect("open");
        let mut f = fanout(&c, 1 << 20);
        let recs = [
            "<presence from='bob@x'/>",
            "<iq to='alice@localhost/a' type='result' id='1'/>",
            "<message from='alice@localhost'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/b' to='bob@x'><body>x</body></message></forwarded></sent></message>",
            "<iq to='alice@localhost/b' type='result' id='2'/>",
        ];
        for r in recs {
            f.deliver(r.as_bytes());
        }
        // Nobody reads "noreader": nothing kept for it.
        assert_eq!(f.queued("noreader"), 0);
        assert_eq!(f.flush_all(), Report::default());
        assert_eq!(drain(&ra), vec![recs[0], recs[1], recs[2]]);
        assert_eq!(drain(&rb), vec![recs[0], recs[3]]);
    }

    #[test]
    fn stuck_client_dropped_others_get_everything_in_order() {
        let (_d, c) = setup("stuck", &["fast", "stuck"]);
        let rf = sj::fifo::open_read(&c.join("fast/in")).expect("open");
        let _rs = sj::fifo::open_read(&c.join("stuck/in")).expect("open");
        let bound = 16 * 1024;
        let mut f = fanout(&c, bound);
        let mut got = Vec::new();
        let mut dropped = Vec::new();
        let n = 5000;
        for i in 0..n {
            let rec = format!(
                "<message id='m{i}'><body>{}</body></message>",
                "x".repeat(100)
            );
            let (_, rep) = f.deliver(rec.as_bytes());
            dropped.extend(rep.dropped);
            f.flush_all();
            if i % 16 == 0 {
                got.extend(drain(&rf));
            }
            assert!(f.queued("stuck") <= bound + rec.len() + 1);
        }
        f.flush_all();
        got.extend(drain(&rf));
        assert_eq!(dropped, vec!["stuck".to_string()], "dropped exactly once");
        assert!(f.is_dropped("stuck"));
        // The marker says why, for the reader that sees its end of input.
        assert_eq!(
            std::fs::read_to_string(c.join("stuck/dropped")).expect("marker"),
            format!("queue over {bound} bytes\n")
        );
        assert_eq!(got.len(), n);
        for (i, l) in got.iter().enumerate() {
            assert!(
                l.starts_with(&format!("<message id='m{i}'>")),
                "order at {i}"
            );
        }
        // Still dropped while its FIFO is the same one.
        f.sync(&sj::fifo::list_clients(&sj::account::Dir::new(
            c.parent().expect("DIR"),
        )));
        assert!(f.is_dropped("stuck"));
        // It registers again (new FIFO): it is written to again.
        drop(_rs);
        std::fs::remove_file(c.join("stuck/in")).expect("rm");
        sj::fifo::make(&c.join("stuck/in")).expect("fifo");
        let rs = sj::fifo::open_read(&c.join("stuck/in")).expect("open");
        f.sync(&sj::fifo::list_clients(&sj::account::Dir::new(
            c.parent().expect("DIR"),
        )));
        assert!(!f.is_dropped("stuck"));
        assert!(!c.join("stuck/dropped").exists(), "marker gone");
        f.deliver(b"<presence/>");
        f.flush_all();
        assert_eq!(drain(&rs), vec!["<presence/>"]);
    }

    #[test]
    fn reader_going_away_is_reopened_lazily() {
        let (_d, c) = setup("epipe", &["a"]);
        let ra = sj::fifo::open_read(&c.join("a/in")).expect("open");
        let mut f = fanout(&c, 1 << 20);
        f.deliver(b"<one/>");
        f.flush_all();
        assert_eq!(drain(&ra), vec!["<one/>"]);
        drop(ra);
        // Written into a FIFO with no reader: EPIPE (SIGPIPE is ignored in
        // the test harness? make sure).
        // SAFETY: setting a signal disposition to SIG_IGN has no handler.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigIgn,
            );
        }
        f.deliver(b"<two/>");
        let rep = f.flush_all();
        assert_eq!(rep.gone, vec!["a".to_string()]);
        // No reader: skipped at no cost.
        f.deliver(b"<three/>");
        assert_eq!(f.queued("a"), 0);
        let ra = sj::fifo::open_read(&c.join("a/in")).expect("open");
        f.deliver(b"<four/>");
        f.flush_all();
        assert_eq!(drain(&ra), vec!["<four/>"]);
    }

    #[test]
    fn record_longer_than_the_bound_is_delivered() {
        let (_d, c) = setup("long", &["a"]);
        let ra = sj::fifo::open_read(&c.join("a/in")).expect("open");
        let mut f = fanout(&c, 1024);
        let rec = format!("<message><body>{}</body></message>", "x".repeat(4000));
        let (_, rep) = f.deliver(rec.as_bytes());
        assert!(rep.dropped.is_empty());
        f.flush_all();
        assert_eq!(drain(&ra), vec![rec]);
    }

    #[test]
    fn never_writes_into_a_regular_file() {
        let (_d, c) = setup("regular", &["a"]);
        let mut f = fanout(&c, 1024);
        std::fs::remove_file(c.join("a/in")).expect("rm");
        std::fs::write(c.join("a/in"), b"").expect("write");
        f.deliver(b"<presence/>");
        assert_eq!(f.queued("a"), 0);
        assert_eq!(std::fs::read(c.join("a/in")).expect("read"), b"");
    }

    #[test]
    fn clients_come_and_go() {
        let (_d, c) = setup("comego", &["a"]);
        let mut f = fanout(&c, 1024);
        assert_eq!(f.names().collect::<Vec<_>>(), vec!["a"]);
        std::fs::remove_dir_all(c.join("a")).expect("rm");
        f.sync(&sj::fifo::list_clients(&sj::account::Dir::new(
            c.parent().expect("DIR"),
        )));
        assert_eq!(f.names().count(), 0);
        assert_eq!(f.deliver(b"<iq to='alice@localhost/a'/>").0, Target::Nobody);
    }
}
