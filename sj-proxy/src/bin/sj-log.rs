//! sj-log: print a contact's or the whole account's history from the
//! account archive, between two times, as lines or as raw records.
//!
//! It only reads `DIR/archive` (sj(7), ARCHIVE); it needs no running
//! sj-proxy and never writes anything. See sj-log(1).

use sj::account::Dir;
use sj::archive::{entries, Reader};
use sj::exit::Fatal;
use sj::jid::Jid;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: sj-log [-r] [-d DIR] [-a JID] [-s START] [-e END] [CONTACT]";

fn usage(why: impl std::fmt::Display) -> Fatal {
    Fatal::permanent(format!("{why}\n{USAGE}"))
}

struct Args {
    raw: bool,
    dir: Option<PathBuf>,
    account: Option<String>,
    start: Option<u64>,
    end: Option<u64>,
    contact: Option<Jid>,
}

/// `2026-12-06`, `2026-12-06T10:00:00Z` or any XEP-0082 date-time (UTC
/// when it has no zone), in microseconds; `end` makes a day or a second
/// inclusive.
fn parse_time(s: &str, end: bool) -> Option<u64> {
    let (t, span) = if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        (
            sj::time::parse_xmpp_datetime(&format!("{s}T00:00:00Z"))?,
            86_400,
        )
    } else if let Some(t) = sj::time::parse_xmpp_datetime(s) {
        (t, 1)
    } else {
        (sj::time::parse_xmpp_datetime(&format!("{s}Z"))?, 1)
    };
    let t = u64::try_from(t).ok()? * 1_000_000;
    // A fraction of a second (an archive stamp) is kept to the microsecond.
    if let Some((_, frac)) = s.split_once('.') {
        let digits: String = frac
            .chars()
            .take_while(char::is_ascii_digit)
            .take(6)
            .collect();
        let n = digits.len();
        let us: u64 = digits.parse().ok()?;
        let us = us * 10u64.pow(6 - n as u32);
        return Some(t + us);
    }
    Some(if end { t + span * 1_000_000 - 1 } else { t })
}

fn parse_args() -> Result<Args, Fatal> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut a = Args {
        raw: false,
        dir: None,
        account: None,
        start: None,
        end: None,
        contact: None,
    };
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('r') => a.raw = true,
            Short('d') => a.dir = Some(p.value().map_err(usage)?.into()),
            Short('a') => a.account = Some(p.value().map_err(usage)?.string().map_err(usage)?),
            Short('s') | Short('e') => {
                let end = arg == Short('e');
                let v = p.value().map_err(usage)?.string().map_err(usage)?;
                let t = parse_time(&v, end).ok_or_else(|| usage(format!("not a time: {v}")))?;
                if end {
                    a.end = Some(t);
                } else {
                    a.start = Some(t);
                }
            }
            Short('h') | Long("help") => return Err(usage("help requested")),
            Value(v) if a.contact.is_none() => {
                let v = v.string().map_err(usage)?;
                a.contact = Some(Jid::parse(&v).map_err(|e| usage(format!("{e}: {v}")))?);
            }
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(a)
}

/// The account directory and bare JID: `-d`/`SJ_DIR`/`$HOME/xmpp/BARE`,
/// `-a`/`SJ_JID`/`DIR/state`/DIR's name.
fn account(a: &Args) -> Result<(Dir, Jid), Fatal> {
    let jid = a
        .account
        .clone()
        .or_else(|| std::env::var("SJ_JID").ok().filter(|v| !v.is_empty()))
        .map(|j| Jid::parse(&j).map_err(|e| usage(format!("{e}: {j}"))))
        .transpose()?;
    let dir = match a
        .dir
        .clone()
        .or_else(|| std::env::var_os("SJ_DIR").map(PathBuf::from))
    {
        Some(d) => Dir::new(d),
        None => {
            let jid = jid
                .as_ref()
                .ok_or_else(|| usage("no -d DIR, SJ_DIR, -a JID or SJ_JID"))?;
            let home = std::env::var_os("HOME").ok_or_else(|| usage("no -d DIR and no HOME"))?;
            sj::account::Root::in_home(home)
                .account(jid)
                .map_err(|e| usage(format!("unable to name a directory for {jid}: {e}")))?
        }
    };
    let jid = match jid {
        Some(j) => j,
        None => sj::state::load(&dir)
            .ok()
            .flatten()
            .map(|s| s.jid)
            .or_else(|| {
                let base = dir.path().file_name()?.to_str()?;
                Jid::parse(&sj::path::decode(base).unwrap_or_else(|| base.to_string())).ok()
            })
            .filter(|j| j.local().is_some())
            .ok_or_else(|| usage("unable to tell the account's JID: give -a JID"))?,
    };
    Ok((dir, jid.bare()))
}

/// A body on one line: `\` `LF` `TAB` escaped as `\\` `\n` `\t`.
fn one_line(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o
}

fn run() -> Result<(), Fatal> {
    let a = parse_args()?;
    let (dir, own) = account(&a)?;
    let adir = dir.archive();
    if !adir.is_dir() {
        return Err(Fatal::permanent(format!(
            "unable to read {}: no archive there",
            adir.display()
        )));
    }
    let fail = |e: std::io::Error| Fatal::io(format!("read {}", adir.display()), &e);
    let mut r = Reader::open(&adir).map_err(fail)?;
    let lo = a.start.unwrap_or(0).saturating_sub(1);
    let hi = a.end.unwrap_or(u64::MAX);
    let filter = sj::history::Filter {
        with: a.contact.clone(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut pos = r.seek_after(lo).map_err(fail)?;
    let mut write = |b: &[u8]| -> Result<bool, Fatal> {
        match out.write_all(b) {
            Ok(()) => Ok(true),
            // A reader that had enough (`| head`): done, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(Fatal::io("write to standard output", &e)),
        }
    };
    'walk: loop {
        let (buf, next) = r
            .read_forward(&pos, 256 * 1024 + sj::archive::LINE_MAX)
            .map_err(fail)?;
        if buf.is_empty() {
            break;
        }
        for line in buf.split_inclusive(|&b| b == b'\n') {
            let Some(e) = entries(line).next() else {
                continue;
            };
            if e.id <= lo {
                continue;
            }
            if e.id > hi {
                break 'walk;
            }
            let m = sj::history::message(&e, &own).filter(|m| filter.wants(m));
            let keep = if a.raw {
                a.contact.is_none() || m.is_some()
            } else {
                m.is_some()
            };
            if !keep {
                continue;
            }
            let go_on = if a.raw {
                write(line)?
            } else if let Some(m) = m {
                let l = format!(
                    "{}\t{}\t{}\t{}\n",
                    sj::archive::stamp(m.id),
                    if m.outgoing { ">" } else { "<" },
                    m.peer,
                    one_line(&m.body)
                );
                write(l.as_bytes())?
            } else {
                true
            };
            if !go_on {
                return Ok(());
            }
        }
        pos = next;
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Fatal::io("write to standard output", &e))
        }
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    sj::log::init("sj-log");
    sj::exit::finish(run())
}
