//! Non-blocking byte and line I/O on raw descriptors, for event loops that
//! recompute what to wait for from buffer state.

use crate::poll::{Interest, PollSet};
use memchr::memchr;
use nix::errno::Errno;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Largest single read.
const CHUNK: usize = 64 * 1024;

/// Outcome of one read attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// This many bytes arrived.
    Data(usize),
    /// Nothing now; wait for readiness.
    WouldBlock,
    /// The writer closed.
    Eof,
}

pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Read once from `fd`, appending to `buf`.
///
/// The bytes are read into `buf`'s spare capacity, never zero-filled
/// first: clearing 64 KiB before every read cost more than reading a chat
/// message.
pub fn read_into(fd: impl AsFd, buf: &mut Vec<u8>) -> io::Result<Read> {
    let old = buf.len();
    buf.reserve(CHUNK);
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(CHUNK);
    loop {
        // SAFETY: read(2) writes at most `want` bytes into the spare
        // capacity it is given and reads none of it; `buf` is not touched
        // until the call returns.
        let r = unsafe {
            nix::libc::read(
                fd.as_fd().as_raw_fd(),
                spare.as_mut_ptr().cast::<nix::libc::c_void>(),
                want,
            )
        };
        match r {
            0 => return Ok(Read::Eof),
            n if n > 0 => {
                let n = n as usize;
                // SAFETY: the kernel initialised the first n bytes of the spare
                // capacity, which follow the old length.
                unsafe { buf.set_len(old + n) };
                return Ok(Read::Data(n));
            }
            _ => match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return Ok(Read::WouldBlock),
                e => return Err(e.into()),
            },
        }
    }
}

/// Splits a byte stream into LF-terminated lines. A line longer than `max`
/// is discarded up to its LF and counted in `overlong`, so one bad writer
/// cannot make the reader hold unbounded memory.
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
    max: usize,
    skipping: bool,
    pub overlong: u64,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::new(),
            start: 0,
            max,
            skipping: false,
            overlong: 0,
        }
    }

    /// Read once from `fd` into the buffer.
    pub fn fill(&mut self, fd: impl AsFd) -> io::Result<Read> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        read_into(fd, &mut self.buf)
    }

    /// Append bytes directly (tests, or data from elsewhere).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, without its LF.
    pub fn next_line(&mut self) -> Option<&[u8]> {
        loop {
            let rest = &self.buf[self.start..];
            match memchr(b'\n', rest) {
                Some(i) => {
                    let s = self.start;
                    self.start += i + 1;
                    if self.skipping || i > self.max {
                        self.skipping = false;
                        self.overlong += 1;
                        continue;
                    }
                    return Some(&self.buf[s..s + i]);
                }
                None => {
                    if rest.len() > self.max {
                        // Drop the partial over-long line now; skip to its LF.
                        if !self.skipping {
                            self.skipping = true;
                        }
                        self.buf.truncate(self.start);
                    }
                    return None;
                }
            }
        }
    }

    /// Forget an incomplete line (its writer is gone); returns its length
    /// as far as it was kept.
    pub fn drop_partial(&mut self) -> usize {
        let n = self.pending();
        self.buf.truncate(self.start);
        self.skipping = false;
        n
    }

    /// Bytes of an incomplete line held.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Log the lines dropped for being over `max` since the last call
    /// (see the free `warn_overlong`).
    pub fn warn_overlong(&mut self, source: &str) {
        warn_overlong(std::mem::take(&mut self.overlong), self.max, source);
    }
}

/// Log `n` lines over `max` bytes dropped from `source`, in one line: a
/// line too long to be a record is an invalid record like any other
/// (DESIGN §4), never dropped silently.
pub fn warn_overlong(n: u64, max: usize, source: &str) {
    if n > 0 {
        crate::log::warn(&format!(
            "dropping {n} invalid record(s) from {source}: policy-violation: line over {max} bytes"
        ));
    }
}

/// An outgoing byte queue flushed with non-blocking writes.
#[derive(Default)]
pub struct WriteQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Offset already written in the front chunk.
    off: usize,
    len: usize,
}

impl WriteQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        // Coalesce small writes so one writev-free write carries many records.
        if let Some(back) = self.chunks.back_mut() {
            if back.len() + data.len() <= CHUNK {
                back.extend_from_slice(&data);
                return;
            }
        }
        self.chunks.push_back(data);
    }

    /// Queue the concatenation of `parts` without the caller making a
    /// buffer for it: copied into the last chunk when it fits.
    pub fn push_parts(&mut self, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if n == 0 {
            return;
        }
        self.len += n;
        match self.chunks.back_mut() {
            Some(back) if back.len() + n <= CHUNK => {}
            _ => self.chunks.push_back(Vec::with_capacity(n.max(CHUNK))),
        }
        if let Some(back) = self.chunks.back_mut() {
            for p in parts {
                back.extend_from_slice(p);
            }
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Write as much as the descriptor takes. `Ok(true)` when empty.
    pub fn flush(&mut self, fd: impl AsFd) -> io::Result<bool> {
        while let Some(front) = self.chunks.front() {
            match nix::unistd::write(fd.as_fd(), &front[self.off..]) {
                Ok(n) => {
                    self.off += n;
                    self.len -= n;
                    if self.off == front.len() {
                        self.chunks.pop_front();
                        self.off = 0;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Flush, waiting for the descriptor at most `max` (on the way out).
    pub fn drain(&mut self, fd: impl AsFd, max: std::time::Duration) -> io::Result<()> {
        let end = std::time::Instant::now() + max;
        loop {
            if self.flush(fd.as_fd())? {
                return Ok(());
            }
            if std::time::Instant::now() >= end {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            crate::poll::wait_one(fd.as_fd(), Interest::Write, Some(end))?;
        }
    }

    /// The reader went away after taking only the head of the front
    /// record (a pipe takes what fits, not whole records): drop that
    /// record's tail, so a new reader starts at a record boundary instead
    /// of reading a fragment as a line. Chunks hold whole LF-terminated
    /// records (`push` never splits one), so the tail ends in the front
    /// chunk. Returns the bytes dropped.
    pub fn drop_partial_record(&mut self) -> usize {
        if self.off == 0 {
            return 0;
        }
        let Some(front) = self.chunks.front() else {
            return 0;
        };
        if front[self.off - 1] == b'\n' {
            return 0;
        }
        let end = memchr(b'\n', &front[self.off..]).map_or(front.len(), |i| self.off + i + 1);
        let n = end - self.off;
        self.len -= n;
        if end == front.len() {
            self.chunks.pop_front();
            self.off = 0;
        } else {
            self.off = end;
        }
        n
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.off = 0;
        self.len = 0;
    }
}

/// How long, and how much of the peer's input, a closing stream waits for
/// the peer to close its side (`close_stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    pub time: std::time::Duration,
    pub bytes: usize,
}

impl Linger {
    /// 2 s and 4 MiB: enough for a peer that was in the middle of a large
    /// write to finish it and read what we wrote.
    pub const DEFAULT: Linger = Linger {
        time: std::time::Duration::from_secs(2),
        bytes: 4 << 20,
    };
}

/// Who ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed its stream first (`</stream:stream>`, a stream
    /// error): ours is the answer, and nothing more is waited for once it
    /// is written (input already here is still read).
    Answer,
    /// We end it (a stream error, or `</stream:stream>`): the peer is
    /// waited for.
    Close,
}

/// How a `close_stream` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Bytes of the queue the peer did not take in time.
    pub unsent: usize,
    /// Bytes the peer sent after the end, read and thrown away.
    pub discarded: usize,
    /// The peer closed its side (EOF) within the bounds.
    pub peer_closed: bool,
}

/// End a stream (RFC 6120 §4.4): write what `queue` holds (its last bytes
/// are the caller's stream error and `</stream:stream>`), shut down the
/// write side so the peer sees the end, then read and throw away what the
/// peer still sends until it closes or `linger` is used up, and only then
/// let the descriptors close.
///
/// Closing a socket that has unread input makes the kernel send a TCP
/// reset, and a reset makes the peer's kernel drop what it had received
/// and not yet read, the stream error with it; and a peer blocked writing
/// to us never reads at all. So input is read all along, the queue is
/// written as the peer takes it, and the socket is closed only once
/// nothing is left unread.
///
/// `wfd` may be the socket `rfd` is (tcpclient, tcpserver: it is shut
/// down for writing) or a pipe of its own to a wrapper (socat, s6-tlsc,
/// UCSPI-TLS: it is closed, by putting /dev/null in its place, so the
/// wrapper sees EOF and the caller's descriptor stays valid). The caller
/// must hold no other descriptor of that pipe. Both descriptors are
/// non-blocking.
///
/// `end` says who ends the stream (`End`).
pub fn close_stream(
    rfd: impl AsFd,
    wfd: &mut std::os::fd::OwnedFd,
    queue: &mut WriteQueue,
    linger: Linger,
    end: End,
) -> Closed {
    use std::time::Instant;
    let deadline = Instant::now() + linger.time;
    let mut flushed = false;
    let mut shut = false;
    let mut eof = false;
    let mut discarded = 0usize;
    let mut sink = Vec::with_capacity(CHUNK);
    loop {
        if !flushed {
            flushed = queue.flush(wfd.as_fd()).unwrap_or_else(|_| {
                // The peer is gone for writing: nothing more will go out.
                queue.clear();
                true
            });
        }
        if flushed && !shut {
            shut_write(wfd);
            shut = true;
        }
        if (shut && eof) || discarded > linger.bytes {
            break;
        }
        if shut && end == End::Answer {
            // Read what is here (a reset would drop our answer), no more.
            sink.clear();
            while let Ok(Read::Data(n)) = read_into(rfd.as_fd(), &mut sink) {
                discarded += n;
                sink.clear();
                if discarded > linger.bytes {
                    break;
                }
            }
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        let mut set = PollSet::with_capacity(2);
        if !eof {
            set.add(rfd.as_fd(), (), Interest::Read);
        }
        if !flushed {
            set.add(wfd.as_fd(), (), Interest::Write);
        }
        if set.wait(Some(deadline)).is_err() {
            break;
        }
        if !eof {
            sink.clear();
            match read_into(rfd.as_fd(), &mut sink) {
                Ok(Read::Data(n)) => discarded += n,
                Ok(Read::WouldBlock) => {}
                Ok(Read::Eof) | Err(_) => eof = true,
            }
        }
    }
    if !shut {
        shut_write(wfd);
    }
    Closed {
        unsent: queue.len(),
        discarded,
        peer_closed: eof,
    }
}

/// Let the peer see the end of what we write: `shutdown(SHUT_WR)` on a
/// socket, closing a pipe.
fn shut_write(wfd: &mut std::os::fd::OwnedFd) {
    use nix::sys::stat::{fstat, SFlag};
    let is_socket = fstat(wfd.as_fd())
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
        .unwrap_or(false);
    if is_socket {
        let _ = nix::sys::socket::shutdown(wfd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        return;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(&null, wfd);
    }
}

/// Write all of `data` to a blocking descriptor (small control messages).
pub fn write_all(fd: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd.as_fd(), data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                let wake = std::time::Instant::now() + std::time::Duration::from_secs(1);
                let _ = crate::poll::wait_one(fd.as_fd(), Interest::Write, Some(wake));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The raw number of a descriptor, for logging.
pub fn fd_num(fd: impl AsFd) -> i32 {
    fd.as_fd().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_pushes() {
        let mut r = LineReader::new(100);
        r.push(b"ab");
        assert!(r.next_line().is_none());
        r.push(b"c\nde\nf");
        assert_eq!(r.next_line(), Some(&b"abc"[..]));
        assert_eq!(r.next_line(), Some(&b"de"[..]));
        assert!(r.next_line().is_none());
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn overlong_line_skipped_without_holding_it() {
        let mut r = LineReader::new(4);
        r.push(b"0123456789");
        assert!(r.next_line().is_none());
        assert_eq!(r.pending(), 0);
        r.push(b"abc\nok\n");
        assert_eq!(r.next_line(), Some(&b"ok"[..]));
        assert_eq!(r.overlong, 1);
        r.warn_overlong("a test");
        assert_eq!(r.overlong, 0);
    }

    /// A reader that dies holding the head of a record: the next reader
    /// gets whole records only, and only the cut record is missing.
    #[test]
    fn partial_record_dropped_for_the_next_reader() {
        use nix::fcntl::{fcntl, FcntlArg};
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&wr).expect("nb");
        let cap = fcntl(&wr, FcntlArg::F_SETPIPE_SZ(4096)).expect("pipe size");
        let recs: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("<r n='{i}'>{}</r>\n", "x".repeat(97 + i % 7)).into_bytes())
            .collect();
        let mut q = WriteQueue::new();
        for r in &recs {
            q.push(r.clone());
        }
        assert!(!q.flush(&wr).expect("flush"), "the pipe took everything");
        let mut dead = vec![0u8; usize::try_from(cap).expect("cap") + 1];
        let n = nix::unistd::read(&rd, &mut dead).expect("read");
        let dead = &dead[..n];
        assert_ne!(dead.last(), Some(&b'\n'), "the cut is inside a record");
        drop((rd, wr));
        let cut = q.drop_partial_record();
        assert!(cut > 0);
        assert_eq!(
            q.drop_partial_record(),
            0,
            "once at a boundary, nothing more"
        );
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&wr).expect("nb");
        set_nonblocking(&rd).expect("nb");
        let mut next = Vec::new();
        while !q.flush(&wr).expect("flush") {
            let _ = read_into(&rd, &mut next).expect("read");
        }
        while let Read::Data(_) = read_into(&rd, &mut next).expect("read") {}
        let whole = dead.iter().filter(|&&b| b == b'\n').count();
        let expect: Vec<u8> = recs[whole + 1..].concat();
        assert_eq!(next, expect);
        assert_eq!(dead.len() + cut, recs[..=whole].concat().len());
    }

    /// The peer is in the middle of a large write and reads only once it
    /// is done: it still gets all we queued, then a clean end (FIN, not a
    /// reset), and our close waits for its own.
    #[test]
    fn close_stream_lets_a_writing_peer_read_the_end() {
        use std::io::{Read as _, Write as _};
        use std::os::unix::net::UnixStream;
        let (ours, mut peer) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nb");
        let mut wfd: std::os::fd::OwnedFd = ours.try_clone().expect("dup").into();
        let writer = std::thread::spawn(move || {
            let sent = peer.write_all(&vec![b'x'; 1 << 20]);
            let mut got = Vec::new();
            let read = peer.read_to_end(&mut got);
            drop(peer);
            (sent.is_ok(), read.is_ok(), got)
        });
        let mut q = WriteQueue::new();
        q.push(b"<stream:error/></stream:stream>".to_vec());
        let c = close_stream(&ours, &mut wfd, &mut q, Linger::DEFAULT, End::Close);
        let (sent, read, got) = writer.join().expect("peer");
        assert!(sent && read, "the peer's write and read both ended well");
        assert_eq!(got, b"<stream:error/></stream:stream>");
        assert_eq!(c.unsent, 0);
        assert_eq!(c.discarded, 1 << 20);
        assert!(c.peer_closed);
    }

    /// A wrapper's pipe is closed, so the wrapper sees EOF after the tail;
    /// a peer that never closes is waited for no longer than the bound.
    #[test]
    fn close_stream_closes_a_pipe_and_is_bounded() {
        let (our_rd, _peer_wr) = nix::unistd::pipe().expect("pipe");
        let (peer_rd, mut our_wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&our_rd).expect("nb");
        set_nonblocking(&our_wr).expect("nb");
        set_nonblocking(&peer_rd).expect("nb");
        let mut q = WriteQueue::new();
        q.push(b"</stream:stream>".to_vec());
        let t = std::time::Instant::now();
        let linger = Linger {
            time: std::time::Duration::from_millis(300),
            bytes: 1 << 20,
        };
        let c = close_stream(&our_rd, &mut our_wr, &mut q, linger, End::Close);
        assert!(!c.peer_closed);
        // When the peer ended its stream first, nothing is waited for.
        let (our_rd, _peer_wr) = nix::unistd::pipe().expect("pipe");
        let (_peer_rd, mut our_wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&our_rd).expect("nb");
        let t2 = std::time::Instant::now();
        close_stream(
            &our_rd,
            &mut our_wr,
            &mut WriteQueue::new(),
            linger,
            End::Answer,
        );
        assert!(t2.elapsed() < linger.time);
        let took = t.elapsed();
        assert!(took >= linger.time && took < linger.time * 5, "{took:?}");
        assert!(!c.peer_closed);
        let mut got = Vec::new();
        loop {
            match read_into(&peer_rd, &mut got).expect("read") {
                Read::Data(_) => {}
                Read::Eof => break,
                Read::WouldBlock => panic!("the write end is still open"),
            }
        }
        assert_eq!(got, b"</stream:stream>");
    }

    #[test]
    fn read_into_appends_and_reports_would_block_and_eof() {
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&rd).expect("nb");
        let mut buf = b"kept:".to_vec();
        assert_eq!(read_into(&rd, &mut buf).expect("read"), Read::WouldBlock);
        assert_eq!(buf, b"kept:");
        nix::unistd::write(&wr, b"abc").expect("write");
        assert_eq!(read_into(&rd, &mut buf).expect("read"), Read::Data(3));
        assert_eq!(buf, b"kept:abc");
        drop(wr);
        assert_eq!(read_into(&rd, &mut buf).expect("read"), Read::Eof);
        assert_eq!(buf, b"kept:abc");
    }

    #[test]
    fn parts_coalesce_and_keep_order() {
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&wr).expect("nb");
        let mut q = WriteQueue::new();
        q.push_parts(&[b"<a/>", b"\n"]);
        q.push(b"<b/>\n".to_vec());
        q.push_parts(&[b"<c/>", b"", b"\n"]);
        q.push_parts(&[]);
        assert_eq!(q.len(), 15);
        assert!(q.flush(&wr).expect("flush"));
        let mut buf = [0u8; 32];
        let n = nix::unistd::read(&rd, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"<a/>\n<b/>\n<c/>\n");
    }

    #[test]
    fn queue_flushes_through_pipe() {
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        set_nonblocking(&wr).expect("nb");
        let mut q = WriteQueue::new();
        q.push(b"hello ".to_vec());
        q.push(b"world\n".to_vec());
        assert_eq!(q.len(), 12);
        assert!(q.flush(&wr).expect("flush"));
        let mut buf = [0u8; 32];
        let n = nix::unistd::read(&rd, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"hello world\n");
    }
}
