//! `DIR/auth-failures`: the failed logins of an account, kept across
//! connections, so that password guessing is slowed per account however
//! many connections it uses, and logged without flooding the log.
//!
//! Every check of a password reserves the next answer slot of the account:
//! with no failure since the last success it is now; after N failures in a
//! row the slots are spaced by 0.5 s × 2^(N-1), at most 30 s, and a
//! connection's answer (success or failure alike, so the wait tells
//! nothing) is given at its slot. Guesses are then bounded by one per
//! spacing for the account, in parallel too. A slot further away than the
//! caller can wait is not taken: the caller refuses at once without
//! checking the password (`Gate::Busy`), so waiting connections never pile
//! up slots. A success resets the count; so do ten quiet minutes.
//!
//! Failure log lines: at most one per 10 s per account, with the number of
//! failures not logged since the previous one.
//!
//! The file is one line of `key=value` fields, read and rewritten in place
//! under an exclusive `flock(2)`, so concurrent sj-c2s processes see each
//! other's updates whole. Deleting it resets everything.

use nix::fcntl::{open, Flock, FlockArg, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Spacing after the first failure; it doubles with each further one.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
/// Largest spacing.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A count with no failure for this long starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// At most one failure log line per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What to do with one checked password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Answer after `wait`. `log`: for a failure, `Some(n)` when it gets a
    /// log line now, `n` earlier failures having gone unlogged; `None` to
    /// stay quiet (and for a success).
    Answer { wait: Duration, log: Option<u64> },
    /// The account's next slot is further than the caller can wait: refuse
    /// without checking (`temporary-auth-failure`); `log` as above.
    Busy { log: Option<u64> },
}

/// The spacing after `count` failures in a row.
pub fn delay(count: u32) -> Duration {
    match count {
        0 => Duration::ZERO,
        n => FIRST_DELAY
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(MAX_DELAY),
    }
}

/// The record, times in milliseconds since the epoch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Record {
    /// Failures since the last success.
    count: u32,
    /// The next free answer slot.
    next: u64,
    /// When the last failure was checked.
    last: u64,
    /// When the last failure line was logged.
    logged: u64,
    /// Failures not logged since then.
    quiet: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn epoch_ms(t: SystemTime) -> u64 {
    ms(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// Bytes of the record line on disk (padded with spaces): the longest
/// line `format` can make, five u64 fields and their names, fits.
const RECORD_WIDTH: usize = 160;

impl Record {
    fn parse(text: &str) -> Record {
        let mut r = Record::default();
        for field in text.split_whitespace() {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let Ok(n) = v.parse::<u64>() else { continue };
            match k {
                "failures" => r.count = u32::try_from(n).unwrap_or(u32::MAX),
                "next" => r.next = n,
                "last" => r.last = n,
                "logged" => r.logged = n,
                "quiet" => r.quiet = n,
                _ => {}
            }
        }
        r
    }

    fn format(&self) -> String {
        format!(
            "failures={} next={} last={} logged={} quiet={}\n",
            self.count, self.next, self.last, self.logged, self.quiet
        )
    }

    /// Does this failure get a log line now?
    fn log(&mut self, now: u64) -> Option<u64> {
        if self.logged == 0 || now.saturating_sub(self.logged) >= ms(LOG_EVERY) {
            self.logged = now;
            Some(std::mem::take(&mut self.quiet))
        } else {
            self.quiet += 1;
            None
        }
    }

    fn attempt(&mut self, ok: bool, now: u64, max_wait: Duration) -> Gate {
        if self.count > 0 && now.saturating_sub(self.last) >= ms(FORGET_AFTER) {
            self.count = 0;
        }
        let slot = if self.count == 0 {
            now
        } else {
            self.next.max(now)
        };
        let wait = slot - now;
        if wait > ms(max_wait) {
            return Gate::Busy { log: self.log(now) };
        }
        let wait = Duration::from_millis(wait);
        if ok {
            self.count = 0;
            self.next = 0;
            return Gate::Answer { wait, log: None };
        }
        self.count = self.count.saturating_add(1);
        self.last = now;
        self.next = slot.saturating_add(ms(delay(self.count)));
        Gate::Answer {
            wait,
            log: self.log(now),
        }
    }
}

/// The failure record of one account (or of a root's unknown names).
pub struct Failures {
    path: PathBuf,
}

impl Failures {
    /// The record at `path`: an account's (`Dir::auth_failures`), or a
    /// root's for the names of no account there (`Root::auth_failures`).
    pub fn at(path: PathBuf) -> Failures {
        Failures { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A password was checked, `ok` its outcome: when to answer.
    pub fn attempt(&self, ok: bool, now: SystemTime, max_wait: Duration) -> io::Result<Gate> {
        self.update(|r| r.attempt(ok, epoch_ms(now), max_wait))
    }

    /// A failure that checked no password (a malformed exchange, a bad
    /// mechanism or authorization identity): only the log limit applies.
    pub fn refused(&self, now: SystemTime) -> io::Result<Option<u64>> {
        self.update(|r| r.log(epoch_ms(now)))
    }

    /// Failures since the last success (0 without a file).
    pub fn count(&self) -> u32 {
        crate::fifo::read_text(&self.path, 4096)
            .map(|t| Record::parse(&t).count)
            .unwrap_or(0)
    }

    fn open(&self) -> io::Result<Flock<OwnedFd>> {
        let fd = open(
            &self.path,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(0o600),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        // Blocking: holders only read and write one short line.
        Flock::lock(fd, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
    }

    fn update<T>(&self, f: impl FnOnce(&mut Record) -> T) -> io::Result<T> {
        let fd = self.open()?;
        let mut buf = [0u8; 256];
        let n = nix::sys::uio::pread(&*fd, &mut buf, 0)?;
        let before = Record::parse(&String::from_utf8_lossy(&buf[..n]));
        let mut rec = before;
        let out = f(&mut rec);
        if rec != before || n == 0 {
            // One write of a fixed width, never a truncation first: a
            // reader without the lock (`count`) sees the old line or the
            // new one, never an empty file.
            let mut text = rec.format().into_bytes();
            text.pop();
            text.resize(RECORD_WIDTH - 1, b' ');
            text.push(b'\n');
            nix::sys::uio::pwrite(&*fd, &text, 0)?;
            nix::unistd::ftruncate(&*fd, RECORD_WIDTH as i64)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const WAIT: Duration = Duration::from_secs(10);

    fn answer(g: Gate) -> (u64, Option<u64>) {
        match g {
            Gate::Answer { wait, log } => (ms(wait), log),
            Gate::Busy { .. } => panic!("busy"),
        }
    }

    #[test]
    fn spacing_doubles_to_the_cap() {
        let d: Vec<u64> = (0..10).map(|n| ms(delay(n))).collect();
        assert_eq!(
            d,
            [0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn sequential_guesses_wait_for_their_slot() {
        let mut r = Record::default();
        let t0 = 1_000_000 * S;
        assert_eq!(answer(r.attempt(false, t0, WAIT)), (0, Some(0)));
        // The next guess at once waits for the slot 0.5 s on.
        assert_eq!(answer(r.attempt(false, t0 + 10, WAIT)), (490, None));
        assert_eq!(r.next, t0 + 500 + 1000);
        // Parallel guesses queue behind it, each spacing larger.
        assert_eq!(answer(r.attempt(false, t0 + 20, WAIT)).0, 1480);
        assert_eq!(r.next, t0 + 1500 + 2000);
        // A slot beyond what the caller can wait is not taken.
        let mut busy = r;
        busy.next = t0 + 60 * S;
        let before = busy;
        assert!(matches!(
            busy.attempt(false, t0 + 30, WAIT),
            Gate::Busy { .. }
        ));
        assert_eq!((busy.count, busy.next), (before.count, before.next));
        // The right password waits for its slot too, then resets.
        assert_eq!(answer(r.attempt(true, t0 + 40, WAIT)), (3460, None));
        assert_eq!((r.count, r.next), (0, 0));
        assert_eq!(answer(r.attempt(false, t0 + 50, WAIT)).0, 0);
    }

    #[test]
    fn log_lines_limited_with_a_count() {
        let mut r = Record::default();
        let t0 = 5_000_000 * S;
        assert_eq!(r.log(t0), Some(0));
        assert_eq!(r.log(t0 + S), None);
        assert_eq!(r.log(t0 + 2 * S), None);
        assert_eq!(r.log(t0 + 10 * S), Some(2));
        assert_eq!(r.log(t0 + 11 * S), None);
    }

    #[test]
    fn old_failures_are_forgotten() {
        let mut r = Record::default();
        let t0 = 7_000_000 * S;
        for i in 0..8 {
            r.attempt(false, t0 + i, Duration::from_secs(3600));
        }
        assert_eq!(r.count, 8);
        let later = r.next + ms(FORGET_AFTER);
        assert_eq!(answer(r.attempt(false, later, WAIT)).0, 0);
        assert_eq!(r.count, 1);
    }

    #[test]
    fn file_round_trip_and_refusals() {
        let d = std::env::temp_dir().join(format!("sj-authfail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::fifo::make_dir(&d).expect("mkdir");
        let f = Failures::at(crate::account::Dir::new(&d).auth_failures());
        assert_eq!(f.count(), 0);
        let now = SystemTime::now();
        assert!(matches!(
            f.attempt(false, now, WAIT).expect("attempt"),
            Gate::Answer { log: Some(0), .. }
        ));
        assert_eq!(f.refused(now).expect("refused"), None);
        assert_eq!(f.count(), 1);
        let text = std::fs::read_to_string(f.path()).expect("read");
        assert!(text.starts_with("failures=1 next="), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Not through a symlink.
        std::fs::remove_file(f.path()).expect("rm");
        std::os::unix::fs::symlink("/dev/null", f.path()).expect("ln");
        assert!(f.attempt(false, now, WAIT).is_err());
        std::fs::remove_dir_all(&d).ok();
    }
}
