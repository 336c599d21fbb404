//! `DIR/state`: the one line sj-proxy keeps about its upstream session, and
//! the one parser every reader uses.
//!
//! Format: `WORD<TAB>JID<TAB>SINCE<LF>`, WORD one of `connecting`,
//! `online`, `offline`; JID the bound full JID once online, else the bare
//! one; SINCE the UTC time it was written (`2026-11-22T10:00:00Z`). Tabs,
//! because a resource may hold spaces (RFC 7622) and never a tab (a
//! control character): `cut -f2` gives the JID exactly, and
//! `IFS=$(printf '\t') read -r state jid since` reads all three.
//!
//! The file says what its writer last knew; whether that writer still runs
//! is the lock's business (`sj::lock`): `Report` puts the two together for
//! readers that tell a person the account's state.

use crate::account::Dir;
use crate::jid::Jid;
use crate::lock::Owner;
use std::fmt;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    Connecting,
    Online,
    Offline,
}

impl Word {
    pub fn as_str(self) -> &'static str {
        match self {
            Word::Connecting => "connecting",
            Word::Online => "online",
            Word::Offline => "offline",
        }
    }
    fn parse(s: &str) -> Option<Word> {
        match s {
            "connecting" => Some(Word::Connecting),
            "online" => Some(Word::Online),
            "offline" => Some(Word::Offline),
            _ => None,
        }
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed `DIR/state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub word: Word,
    pub jid: Jid,
    pub since: String,
}

/// The line for `word`, `jid` and the time `at`.
pub fn line(word: Word, jid: &Jid, at: SystemTime) -> String {
    format!("{word}\t{jid}\t{}\n", crate::time::utc_iso(at))
}

/// Replace DIR/state atomically with `word` and `jid`, as of now.
pub fn write(dir: &Dir, word: Word, jid: &Jid) -> std::io::Result<()> {
    let text = line(word, jid, SystemTime::now());
    crate::fifo::write_atomic(&dir.state(), text.as_bytes())
}

/// Parse the first line of a state file. A file of the older space-separated
/// form (`WORD JID SINCE`) is read too: WORD and SINCE hold no space, so the
/// JID is everything between the first space and the last.
pub fn parse(text: &str) -> Option<State> {
    let first = text.split('\n').next()?;
    let (word, jid, since) = if first.contains('\t') {
        let mut f = first.split('\t');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some(w), Some(j), Some(s), None) => (w, j, s),
            _ => return None,
        }
    } else {
        let (word, rest) = first.split_once(' ')?;
        let (jid, since) = rest.rsplit_once(' ')?;
        (word, jid, since)
    };
    Some(State {
        word: Word::parse(word)?,
        jid: Jid::parse(jid).ok()?,
        since: since.to_string(),
    })
}

/// DIR/state as its writer left it: `Ok(None)` when it is missing or not
/// a state line, an error when it cannot be read (the opening rules of
/// DIR, `sj::fifo`: a symlink or a FIFO in its place is refused, not
/// followed or waited on).
pub fn load(dir: &Dir) -> std::io::Result<Option<State>> {
    match crate::fifo::read_text(&dir.state(), 4096) {
        Ok(t) => Ok(parse(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// DIR/state, `None` when it is missing or unreadable (`load` says why).
pub fn read(dir: &Dir) -> Option<State> {
    load(dir).ok().flatten()
}

/// What a reader should tell a person: DIR/state together with whether its
/// writer still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub state: Option<State>,
    pub owner: Owner,
    /// Why DIR/state could not be read, when it could not.
    pub error: Option<String>,
}

/// Read DIR/state and probe DIR's lock.
pub fn report(dir: &Dir) -> Report {
    // The lock first: an owner that stops between the two reads then
    // shows as alive with its last line, never as dead with a line a new
    // owner wrote.
    let owner = crate::lock::owner(dir);
    let (state, error) = match load(dir) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(crate::log::strerror(&e))),
    };
    Report {
        state,
        owner,
        error,
    }
}

impl Report {
    /// The state to believe: what the file says while its owner runs,
    /// `offline` once it is gone (whatever it last wrote).
    pub fn word(&self) -> Word {
        match (&self.state, self.owner) {
            (Some(s), Owner::Alive(_)) => s.word,
            (None, Owner::Alive(_)) => Word::Connecting,
            _ => Word::Offline,
        }
    }
}

impl fmt::Display for Report {
    /// One line starting with the word to believe, e.g.
    /// `online alice@example.org/res since 2026-11-22T10:00:00Z (sj-proxy pid 42)`,
    /// `offline alice@example.org/res: sj-proxy (pid 42) is not running; DIR/state still says online since ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = |p: Option<i32>| p.map_or_else(|| "?".to_string(), |p| p.to_string());
        if let Some(e) = &self.error {
            return match self.owner {
                Owner::Alive(p) => write!(f, "unknown (state: {e}; sj-proxy pid {})", pid(p)),
                _ => write!(f, "unknown (state: {e}; no sj-proxy runs)"),
            };
        }
        match (&self.state, self.owner) {
            (Some(s), Owner::Alive(p)) => write!(
                f,
                "{} {} since {} (sj-proxy pid {})",
                s.word,
                s.jid,
                s.since,
                pid(p)
            ),
            (None, Owner::Alive(p)) => {
                write!(f, "connecting (sj-proxy pid {}, no state yet)", pid(p))
            }
            (Some(s), Owner::Gone(p)) if s.word != Word::Offline => write!(
                f,
                "offline {}: sj-proxy (pid {}) is not running; DIR/state still says {} since {}",
                s.jid,
                pid(p),
                s.word,
                s.since
            ),
            (Some(s), Owner::Never) if s.word != Word::Offline => write!(
                f,
                "offline {}: no sj-proxy holds DIR/lock; DIR/state says {} since {}",
                s.jid, s.word, s.since
            ),
            (Some(s), _) => write!(f, "offline {} since {}", s.jid, s.since),
            (None, _) => f.write_str("offline: no state file (sj-proxy has not run here)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::parse(s).expect("jid")
    }

    #[test]
    fn state_line_round_trips_a_resource_with_spaces() {
        let j = jid("alice@localhost/my laptop");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let l = line(Word::Online, &j, at);
        assert_eq!(
            l,
            "online\talice@localhost/my laptop\t2023-11-14T22:13:20Z\n"
        );
        let s = parse(&l).expect("parse");
        assert_eq!((s.word, &s.jid), (Word::Online, &j));
        assert_eq!(s.since, "2023-11-14T22:13:20Z");
        // The older form, with the JID between the first and last space.
        let old = parse("online alice@localhost/my laptop 1700000000\n").expect("old");
        assert_eq!(old.jid, j);
        assert_eq!(old.since, "1700000000");
        for bad in [
            "",
            "online",
            "online\talice@localhost",
            "online\ta@b\tT\textra",
            "sleeping\ta@b\tT",
            "online\t@\tT",
            "online a@b",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn report_believes_the_file_only_while_its_owner_lives() {
        let st = |w| {
            Some(State {
                word: w,
                jid: jid("a@b/r s"),
                since: "T".into(),
            })
        };
        let r = Report {
            state: st(Word::Online),
            owner: Owner::Alive(Some(7)),
            error: None,
        };
        assert_eq!(r.word(), Word::Online);
        assert_eq!(r.to_string(), "online a@b/r s since T (sj-proxy pid 7)");
        let r = Report {
            state: st(Word::Online),
            owner: Owner::Gone(Some(7)),
            error: None,
        };
        assert_eq!(r.word(), Word::Offline);
        assert_eq!(
            r.to_string(),
            "offline a@b/r s: sj-proxy (pid 7) is not running; DIR/state still says online since T"
        );
        let r = Report {
            state: st(Word::Offline),
            owner: Owner::Gone(Some(7)),
            error: None,
        };
        assert_eq!(r.to_string(), "offline a@b/r s since T");
        let r = Report {
            state: None,
            owner: Owner::Never,
            error: None,
        };
        assert!(r.to_string().starts_with("offline: no state file"));
    }
}
