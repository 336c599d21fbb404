//! The one way every program waits: a poll(2) set built afresh each turn
//! of its loop from what its buffers need (skarnet's style), keyed by the
//! program's own tokens.
//!
//! A loop turn is: build the set (`PollSet::add` for each descriptor and
//! what it waits for), `wait` until the earliest deadline, drop the set,
//! then handle each ready token with `&mut self`. The set only borrows the
//! descriptors for the wait, so nothing outlives a turn and no descriptor
//! is ever borrowed unsafely. What EINTR means (nothing ready, go round:
//! the caller looks at its flags again) and how a deadline becomes a
//! timeout are decided here, once.

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

/// What a descriptor is waited for. Hangups and errors are reported
/// whatever is asked (poll(2) always reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
    /// Neither: only told of a hangup or an error (a reader that is not
    /// reading now still learns that its writer went away).
    Hangup,
}

impl Interest {
    fn flags(self) -> PollFlags {
        match self {
            Interest::Read => PollFlags::POLLIN,
            Interest::Write => PollFlags::POLLOUT,
            Interest::Hangup => PollFlags::empty(),
        }
    }
}

/// What poll(2) said about one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready(PollFlags);

impl Ready {
    /// Data (or the end of input) can be read.
    pub fn readable(self) -> bool {
        self.0.intersects(PollFlags::POLLIN | PollFlags::POLLPRI)
    }

    pub fn writable(self) -> bool {
        self.0.contains(PollFlags::POLLOUT)
    }

    /// The other end is gone (POLLHUP) or the descriptor failed.
    pub fn hangup(self) -> bool {
        self.0.intersects(PollFlags::POLLHUP) || self.error()
    }

    /// POLLERR or POLLNVAL.
    pub fn error(self) -> bool {
        self.0.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL)
    }
}

/// The descriptors one turn waits on, each with the caller's token.
pub struct PollSet<'a, T> {
    fds: Vec<PollFd<'a>>,
    tokens: Vec<T>,
}

impl<T> Default for PollSet<'_, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, T> PollSet<'a, T> {
    pub fn new() -> Self {
        PollSet {
            fds: Vec::new(),
            tokens: Vec::new(),
        }
    }

    pub fn with_capacity(n: usize) -> Self {
        PollSet {
            fds: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
        }
    }

    pub fn add(&mut self, fd: BorrowedFd<'a>, token: T, interest: Interest) {
        self.fds.push(PollFd::new(fd, interest.flags()));
        self.tokens.push(token);
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Wait until a descriptor is ready or `deadline` (never, if `None`)
    /// passes. The ready tokens in the order they were added; none when
    /// the deadline passed or a signal interrupted the wait.
    pub fn wait(mut self, deadline: Option<Instant>) -> io::Result<Vec<(T, Ready)>> {
        match nix::poll::poll(&mut self.fds, timeout(deadline)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let PollSet { fds, tokens } = self;
        Ok(tokens
            .into_iter()
            .zip(&fds)
            .filter_map(|(t, f)| {
                let r = f.revents().filter(|r| !r.is_empty())?;
                Some((t, Ready(r)))
            })
            .collect())
    }
}

/// Many descriptors waited on as one, for a set too large to hand to
/// poll(2) every turn (messaged's `in` FIFOs: one per contact, thousands):
/// poll(2) looks at every descriptor it is given, about a quarter of a
/// microsecond each, on every wakeup. A group's members are registered
/// once with epoll, level-triggered (a member a turn did not read to its
/// end is ready again next turn), and the group's own descriptor goes into
/// each turn's `PollSet` like any other: readable when a member is.
/// `ready` then says which.
pub struct Group {
    ep: nix::sys::epoll::Epoll,
}

impl Group {
    pub fn new() -> io::Result<Group> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags};
        Ok(Group {
            ep: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    /// Wait for `fd` to be readable, told as `key`.
    pub fn add(&self, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        Ok(self.ep.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, key))?)
    }

    /// Before `fd` is closed.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(self.ep.delete(fd)?)
    }

    /// The descriptor to put in a turn's `PollSet`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.ep.0.as_fd()
    }

    /// The keys of members ready now (at most a few hundred a call: the
    /// others stay ready for the next). Never waits.
    pub fn ready(&self) -> io::Result<Vec<u64>> {
        use nix::sys::epoll::{EpollEvent, EpollTimeout};
        let mut evs = [EpollEvent::empty(); 256];
        let n = match self.ep.wait(&mut evs, EpollTimeout::ZERO) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(evs[..n].iter().map(EpollEvent::data).collect())
    }
}

/// Wait for one descriptor (the small bounded waits: a flush on the way
/// out, a tool waiting for its answer). `None` when the deadline passed
/// first or a signal interrupted the wait.
pub fn wait_one(
    fd: BorrowedFd<'_>,
    interest: Interest,
    deadline: Option<Instant>,
) -> io::Result<Option<Ready>> {
    let mut set = PollSet::with_capacity(1);
    set.add(fd, (), interest);
    Ok(set.wait(deadline)?.pop().map(|(_, r)| r))
}

/// The poll(2) timeout that wakes at `deadline`: rounded up to the next
/// millisecond, so a loop never wakes just before its deadline and spins;
/// zero once it has passed; at most `PollTimeout::MAX` (24 days), after
/// which the caller's loop simply waits again.
pub fn timeout(deadline: Option<Instant>) -> PollTimeout {
    let Some(d) = deadline else {
        return PollTimeout::NONE;
    };
    let left = d.saturating_duration_since(Instant::now());
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// The earliest of some deadlines (`None`: none of them is set).
pub fn earliest(deadlines: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum T {
        A,
        B,
    }

    #[test]
    fn ready_tokens_in_order_and_only_those() {
        let (ra, wa) = nix::unistd::pipe().expect("pipe");
        let (rb, wb) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&wb, b"x").expect("write");
        let mut set = PollSet::new();
        set.add(ra.as_fd(), T::A, Interest::Read);
        set.add(rb.as_fd(), T::B, Interest::Read);
        set.add(wa.as_fd(), T::A, Interest::Write);
        let ready = set.wait(None).expect("poll");
        let tokens: Vec<T> = ready.iter().map(|(t, _)| *t).collect();
        assert_eq!(tokens, vec![T::B, T::A]);
        assert!(ready[0].1.readable() && !ready[0].1.writable());
        assert!(ready[1].1.writable() && !ready[1].1.readable());
    }

    #[test]
    fn deadline_is_kept_and_not_cut_short() {
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        let t = Instant::now();
        let d = t + Duration::from_micros(20_500);
        let mut set = PollSet::new();
        set.add(r.as_fd(), T::A, Interest::Read);
        assert!(set.wait(Some(d)).expect("poll").is_empty());
        // Rounded up: the wait never ends before the deadline.
        assert!(Instant::now() >= d);
        assert!(t.elapsed() < Duration::from_secs(2));
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(timeout(Some(past)), PollTimeout::ZERO);
        assert_eq!(timeout(None), PollTimeout::NONE);
    }

    #[test]
    fn hangup_is_told_without_asking_to_read() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        drop(w);
        let ready = wait_one(r.as_fd(), Interest::Hangup, None).expect("poll");
        let ready = ready.expect("a hangup");
        assert!(ready.hangup() && !ready.readable());
    }

    /// A group is one readable descriptor in a turn's set, and tells
    /// which members are ready, as long as they are.
    #[test]
    fn group_members_through_one_descriptor() {
        let g = Group::new().expect("epoll");
        let pipes: Vec<_> = (0..3).map(|_| nix::unistd::pipe().expect("pipe")).collect();
        for (i, (r, _)) in pipes.iter().enumerate() {
            g.add(r.as_fd(), i as u64).expect("add");
        }
        let now = Some(Instant::now());
        assert!(wait_one(g.fd(), Interest::Read, now)
            .expect("poll")
            .is_none());
        nix::unistd::write(&pipes[2].1, b"x").expect("write");
        let soon = Some(Instant::now() + Duration::from_secs(5));
        assert!(wait_one(g.fd(), Interest::Read, soon)
            .expect("poll")
            .is_some());
        assert_eq!(g.ready().expect("ready"), vec![2]);
        // Not read: still ready (level-triggered).
        assert_eq!(g.ready().expect("ready"), vec![2]);
        g.remove(pipes[2].0.as_fd()).expect("remove");
        assert!(g.ready().expect("ready").is_empty());
    }

    #[test]
    fn earliest_of_some() {
        let t = Instant::now();
        let later = t + Duration::from_secs(1);
        assert_eq!(earliest([None, Some(later), Some(t)]), Some(t));
        assert_eq!(earliest([None, None]), None);
    }
}
