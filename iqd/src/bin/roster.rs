//! roster: read and change the account's roster through a running sj-proxy.
//!
//! `list` prints the cache `DIR/roster` kept by iqd. The other commands
//! build one roster set (RFC 6121 §2.3, §2.5), create `DIR/iq/<id>` as a
//! FIFO, write the request into `DIR/in` in one write, and wait (10 s) for
//! iqd to write the answer into the FIFO. See roster(1).

use iqd::roster::{set_request, Item, Roster};
use iqd::stanza;
use sj::account::Dir;
use sj::exit::Fatal;
use sj::io::{LineReader, Read};
use sj::jid::Jid;
use sj::xml::Element;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: roster [-d DIR] [-t SECS] list | add JID [NAME] [-g GROUP]... | remove JID | name JID NAME | groups JID [GROUP]...";

fn main() -> ExitCode {
    sj::log::init("roster");
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => sj::exit::finish(Err(e)),
    }
}

fn usage(why: impl std::fmt::Display) -> Fatal {
    Fatal::permanent(format!("{why}; {USAGE}"))
}

struct Args {
    dir: Option<PathBuf>,
    timeout: Duration,
    groups: Vec<String>,
    words: Vec<String>,
}

fn parse_args() -> Result<Args, Fatal> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut a = Args {
        dir: None,
        timeout: Duration::from_secs(10),
        groups: Vec::new(),
        words: Vec::new(),
    };
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('d') => a.dir = Some(p.value().map_err(usage)?.into()),
            Short('g') => a.groups.push(
                p.value()
                    .map_err(usage)?
                    .into_string()
                    .map_err(|_| usage("group is not UTF-8"))?,
            ),
            Short('t') => {
                let s: u64 = p.value().map_err(usage)?.parse().map_err(usage)?;
                a.timeout = Duration::from_secs(s.max(1));
            }
            Short('h') | Long("help") => return Err(usage("help")),
            Value(v) => a.words.push(
                v.into_string()
                    .map_err(|_| usage("argument is not UTF-8"))?,
            ),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(a)
}

/// `-d`, else `SJ_DIR`, else `$HOME/xmpp/<bare JID of SJ_JID>`.
fn account_dir(a: &Args) -> Result<Dir, Fatal> {
    if let Some(d) = &a.dir {
        return Ok(Dir::new(d));
    }
    if let Some(d) = std::env::var_os("SJ_DIR") {
        return Ok(Dir::new(d));
    }
    let jid = std::env::var("SJ_JID").map_err(|_| usage("no -d DIR and no SJ_DIR"))?;
    let jid = Jid::parse(&jid).map_err(|e| Fatal::permanent(format!("SJ_JID: {e}")))?;
    let root = sj::account::home_root().ok_or_else(|| usage("no -d DIR and no HOME"))?;
    root.account(&jid)
        .map_err(|e| Fatal::permanent(format!("SJ_JID: {e}")))
}

fn run() -> Result<u8, Fatal> {
    let a = parse_args()?;
    let dir = account_dir(&a)?;
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let cache = || Roster::parse(&iqd::roster::read_file(&dir).unwrap_or_default());
    let jid = |s: &str| -> Result<String, Fatal> {
        Jid::parse(s)
            .map(|j| j.to_string())
            .map_err(|e| Fatal::permanent(format!("{s}: {e}")))
    };
    let item = match words.as_slice() {
        ["list"] => return list(&dir),
        ["add", j] | ["add", j, _] => Item {
            jid: jid(j)?,
            subscription: String::new(),
            name: words.get(2).map(|s| s.to_string()).unwrap_or_default(),
            groups: a.groups.clone(),
        },
        ["remove", j] => Item {
            jid: jid(j)?,
            subscription: "remove".into(),
            ..Item::default()
        },
        ["name", j, n] => {
            let j = jid(j)?;
            let old = cache().items.remove(&j).unwrap_or_default();
            Item {
                jid: j,
                subscription: String::new(),
                name: n.to_string(),
                groups: old.groups,
            }
        }
        ["groups", j, gs @ ..] => {
            let j = jid(j)?;
            let old = cache().items.remove(&j).unwrap_or_default();
            let mut groups: Vec<String> = gs.iter().map(|s| s.to_string()).collect();
            groups.extend(a.groups.iter().cloned());
            Item {
                jid: j,
                subscription: String::new(),
                name: old.name,
                groups,
            }
        }
        _ => return Err(usage("bad command")),
    };
    request(&dir, &item, a.timeout)
}

fn list(dir: &Dir) -> Result<u8, Fatal> {
    let p = dir.roster();
    let text =
        iqd::roster::read_file(dir).map_err(|e| Fatal::io(format!("read {}", p.display()), &e))?;
    let mut out = String::new();
    for i in Roster::parse(&text).items.values() {
        out.push_str(&i.line());
        out.push('\n');
    }
    use std::io::Write;
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| Fatal::io("write stdout", &e))?;
    Ok(0)
}

/// Removes the answer FIFO however the request ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn request(dir: &Dir, item: &Item, timeout: Duration) -> Result<u8, Fatal> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("roster-{}-{n}", std::process::id());
    let rec = set_request(&id, item);
    if rec.len() > 4096 {
        return Err(Fatal::permanent(
            "request too large for DIR/in (4096 bytes)",
        ));
    }
    let iq_dir = dir.iq();
    sj::fifo::make_subdir(&iq_dir)
        .map_err(|e| Fatal::io(format!("create {}", iq_dir.display()), &e))?;
    let fifo = dir
        .iq_result(&id)
        .map_err(|e| Fatal::permanent(format!("id {id} cannot name a file: {e}")))?;
    let _ = std::fs::remove_file(&fifo);
    sj::fifo::make(&fifo).map_err(|e| Fatal::io(format!("create {}", fifo.display()), &e))?;
    let _cleanup = Cleanup(fifo.clone());
    let answer = sj::fifo::open_read(&fifo)
        .map_err(|e| Fatal::io(format!("open {}", fifo.display()), &e))?;

    let inp = dir.in_fifo();
    let w = match sj::fifo::open_write(&inp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        r => r.map_err(|e| Fatal::io(format!("open {}", inp.display()), &e))?,
    };
    let w = w.ok_or_else(|| {
        Fatal::temporary(format!(
            "unable to write {}: no reader (is sj-proxy running?)",
            inp.display()
        ))
    })?;
    match nix::unistd::write(&w, rec.as_bytes()) {
        Ok(k) if k == rec.len() => {}
        Ok(_) => {
            return Err(Fatal::temporary(format!(
                "short write to {}",
                inp.display()
            )))
        }
        Err(e) => return Err(Fatal::io(format!("write {}", inp.display()), &e.into())),
    }
    drop(w);

    let own = sj::state::read(dir).map(|s| s.jid);
    let end = Instant::now() + timeout;
    let mut reader = LineReader::new(sj::framer::MAX_LINE);
    loop {
        while let Some(line) = reader.next_line() {
            if from_account(line, own.as_ref()) {
                return Ok(outcome(line, &item.jid));
            }
            sj::log::warn("ignored an answer not from the account's server");
        }
        reader.warn_overlong(&fifo.display().to_string());
        if Instant::now() >= end {
            return Err(Fatal::temporary(format!(
                "timed out waiting for the answer to {id}"
            )));
        }
        sj::poll::wait_one(answer.as_fd(), sj::poll::Interest::Read, Some(end))
            .map_err(|e| Fatal::io("poll", &e))?;
        match reader.fill(&answer) {
            Ok(Read::Data(_)) | Ok(Read::WouldBlock) | Ok(Read::Eof) => {}
            Err(e) => return Err(Fatal::io(format!("read {}", fifo.display()), &e)),
        }
    }
}

/// Roster answers come from the account's server: no `from`, or the
/// account's own (bare or full) JID as bound in DIR/state. Anyone else could
/// only be guessing the id.
fn from_account(line: &[u8], own: Option<&Jid>) -> bool {
    match sj::xml::Top::parse(line).and_then(|t| t.attr("from")) {
        None => true,
        Some(f) => match (Jid::parse(&f), own) {
            (Ok(j), Some(own)) => j.bare() == own.bare(),
            _ => false,
        },
    }
}

/// 0 on a result, 1 on an error (the condition printed on stderr).
fn outcome(line: &[u8], jid: &str) -> u8 {
    match Element::parse(line) {
        Some(e) if e.attr("type") == Some("result") => 0,
        Some(e) => {
            let cond = stanza::error_condition(&e).unwrap_or_else(|| "unknown error".into());
            sj::log::warn(&format!("{jid}: {cond}"));
            1
        }
        None => {
            sj::log::warn(&format!("{jid}: unreadable answer"));
            1
        }
    }
}
