//! presence: set and read the account's presence files for presenced.
//!
//! What it does: writes `DIR/mypresence` (show, status, priority) and
//! `DIR/<contact>/mypresence` (directed presence) atomically, prints them,
//! lists the contacts' `presence` files, sends subscription stanzas
//! through the `DIR/in` FIFO, and tells the account's connection state
//! (`DIR/state`, believed only while its sj-proxy runs).
//!
//! What it does not do: talk to the server or to presenced directly;
//! presenced notices the files with inotify.

use sj::account::Dir;
use sj::exit::Fatal;
use sj::jid::Jid;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use presenced::common::{self, MyPresence, Show};

const USAGE: &str = "usage: presence [-d DIR] show [online|chat|away|xa|dnd|offline] [status...]
       presence [-d DIR] priority [N]
       presence [-d DIR] to CONTACT [SHOW [status...] | -]
       presence [-d DIR] subscribe|subscribed|unsubscribe|unsubscribed CONTACT
       presence [-d DIR] list
       presence [-d DIR] state";

fn main() -> ExitCode {
    sj::log::init("presence");
    sj::exit::finish(run())
}

const SHORT_USAGE: &str =
    "usage: presence [-d DIR] show|priority|to|subscribe|subscribed|unsubscribe|unsubscribed|list|state [ARGS]";

fn usage(why: impl std::fmt::Display) -> Fatal {
    Fatal::permanent(format!("{why}; {SHORT_USAGE}"))
}

fn run() -> Result<(), Fatal> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut dir: Option<PathBuf> = None;
    let mut words: Vec<String> = Vec::new();
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('d') if words.is_empty() => dir = Some(p.value().map_err(usage)?.into()),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                return Ok(());
            }
            Value(v) => words.push(os_string(v)?),
            // After the command, everything is a word (statuses may start with -).
            Short(c) if !words.is_empty() => words.push(format!("-{c}")),
            Long(l) if !words.is_empty() => words.push(format!("--{l}")),
            _ => return Err(usage(arg.unexpected())),
        }
        if !words.is_empty() {
            // Take the rest verbatim.
            for v in p.raw_args().map_err(usage)? {
                words.push(os_string(v)?);
            }
        }
    }
    let dir = dir
        .or_else(|| std::env::var_os("SJ_DIR").map(PathBuf::from))
        .map(Dir::new)
        .ok_or_else(|| usage("no DIR: give -d DIR or set SJ_DIR"))?;
    let Some((cmd, rest)) = words.split_first() else {
        return Err(usage("no command"));
    };
    match cmd.as_str() {
        "show" => cmd_show(&dir, rest),
        "priority" => cmd_priority(&dir, rest),
        "to" => cmd_to(&dir, rest),
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
            cmd_subscription(&dir, cmd, rest)
        }
        "list" if rest.is_empty() => cmd_list(&dir),
        "state" if rest.is_empty() => cmd_state(&dir),
        _ => Err(usage(format!("unknown command: {cmd}"))),
    }
}

fn os_string(v: OsString) -> Result<String, Fatal> {
    v.into_string()
        .map_err(|v| usage(format!("not UTF-8: {}", v.to_string_lossy())))
}

fn read_file(path: &Path) -> Result<MyPresence, Fatal> {
    match sj::fifo::read_file(path, 64 * 1024) {
        Ok(b) => MyPresence::parse(&String::from_utf8_lossy(&b))
            .ok_or_else(|| Fatal::permanent(format!("{}: bad format", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MyPresence::default()),
        Err(e) => Err(Fatal::io(format_args!("read {}", path.display()), &e)),
    }
}

fn write_file(path: &Path, m: &MyPresence) -> Result<(), Fatal> {
    sj::fifo::write_atomic(path, m.to_file().as_bytes())
        .map_err(|e| Fatal::io(format_args!("write {}", path.display()), &e))
}

/// `SHOW [status...]` → a presence, keeping `old`'s priority.
fn parse_show(words: &[String], old: &MyPresence) -> Result<MyPresence, Fatal> {
    let Some((w, status)) = words.split_first() else {
        return Err(usage("no show given"));
    };
    let show = Show::parse(w).ok_or_else(|| usage(format!("unknown show: {w}")))?;
    Ok(MyPresence {
        show,
        status: common::one_line(&status.join(" ")),
        priority: old.priority,
    })
}

fn print(line: &str) -> Result<(), Fatal> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Fatal::io("write to stdout", &e))
}

fn cmd_show(dir: &Dir, words: &[String]) -> Result<(), Fatal> {
    let path = dir.mypresence();
    if words.is_empty() {
        return print(&read_file(&path)?.line());
    }
    // A malformed file is replaced, not an obstacle.
    let old = read_file(&path).unwrap_or_default();
    write_file(&path, &parse_show(words, &old)?)
}

fn cmd_priority(dir: &Dir, words: &[String]) -> Result<(), Fatal> {
    let path = dir.mypresence();
    match words {
        [] => print(&read_file(&path)?.priority.to_string()),
        [n] => {
            let mut m = read_file(&path).unwrap_or_default();
            m.priority = n
                .parse::<i8>()
                .map_err(|_| usage(format!("priority must be -128..127: {n}")))?;
            write_file(&path, &m)
        }
        _ => Err(usage("priority takes one number")),
    }
}

fn cmd_to(dir: &Dir, words: &[String]) -> Result<(), Fatal> {
    let Some((contact, rest)) = words.split_first() else {
        return Err(usage("to: no contact given"));
    };
    let jid = Jid::parse(contact).map_err(|e| usage(format!("{e}: {contact}")))?;
    let cdir = dir
        .contact(&jid.bare().to_string())
        .map_err(|e| usage(format!("{contact}: {e}")))?;
    let path = cdir.mypresence();
    match rest {
        [] => {
            if fs::symlink_metadata(&path).is_ok() {
                print(&read_file(&path)?.line())
            } else {
                print("-")
            }
        }
        [dash] if dash == "-" => match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Fatal::io(format_args!("remove {}", path.display()), &e)),
        },
        _ => {
            let m = parse_show(rest, &MyPresence::default())?;
            sj::fifo::make_subdir(cdir.path())
                .map_err(|e| Fatal::io(format_args!("create {}", cdir.path().display()), &e))?;
            write_file(&path, &m)
        }
    }
}

/// The stanza a subscription command sends.
fn subscription_stanza(typ: &str, bare: &str) -> String {
    format!(
        "<presence to='{}' type='{typ}'/>\n",
        sj::xml::escape_attr(bare)
    )
}

fn cmd_subscription(dir: &Dir, typ: &str, words: &[String]) -> Result<(), Fatal> {
    let [contact] = words else {
        return Err(usage(format!("{typ} takes one contact")));
    };
    let jid = Jid::parse(contact).map_err(|e| usage(format!("{e}: {contact}")))?;
    let rec = subscription_stanza(typ, &jid.bare().to_string());
    let path = dir.in_fifo();
    let no_reader = || {
        Fatal::temporary(format!(
            "unable to open {}: no reader (is sj-proxy running?)",
            path.display()
        ))
    };
    let fd = match sj::fifo::open_write(&path) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Err(no_reader()),
        // No FIFO at all: sj-proxy has not run here (yet).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_reader()),
        Err(e) => return Err(Fatal::io(format_args!("open {}", path.display()), &e)),
    };
    // One write of at most PIPE_BUF bytes is atomic; the FIFO is
    // non-blocking, so wait for room rather than fail.
    sj::io::write_all(&fd, rec.as_bytes())
        .map_err(|e| Fatal::io(format_args!("write {}", path.display()), &e))
}

/// One line: the state to believe first (`online`, `connecting`,
/// `offline`), then what DIR/state says and whether its sj-proxy runs.
/// Exit 0 when online, 111 otherwise, so scripts can test it.
fn cmd_state(dir: &Dir) -> Result<(), Fatal> {
    let report = sj::state::report(dir);
    print(&report.to_string())?;
    if report.word() == sj::state::Word::Online {
        Ok(())
    } else {
        std::process::exit(i32::from(sj::exit::TEMPORARY))
    }
}

fn cmd_list(dir: &Dir) -> Result<(), Fatal> {
    // DIR must be readable: an empty list would say no contact is online.
    fs::read_dir(dir.path()).map_err(|e| Fatal::io(format_args!("read {}", dir.display()), &e))?;
    let mut rows = Vec::new();
    for c in dir.contacts() {
        let Ok(text) = sj::fifo::read_file(&c.presence(), 64 * 1024) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        let jid = c.decoded().unwrap_or_else(|| c.name().to_string());
        rows.push(format!(
            "{jid}\t{}",
            text.lines().next().unwrap_or("offline")
        ));
    }
    rows.sort();
    let mut out = std::io::stdout().lock();
    for r in rows {
        writeln!(out, "{r}").map_err(|e| Fatal::io("write to stdout", &e))?;
    }
    out.flush().map_err(|e| Fatal::io("write to stdout", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_keeps_priority() {
        let old = MyPresence {
            show: Show::Online,
            status: String::new(),
            priority: 5,
        };
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let m = parse_show(&w("dnd busy now"), &old).expect("parse");
        assert_eq!(m.to_file(), "dnd busy now\npriority 5\n");
        assert!(parse_show(&w("bogus"), &old).is_err());
        assert!(parse_show(&[], &old).is_err());
    }

    #[test]
    fn subscription_stanza_is_escaped() {
        assert_eq!(
            subscription_stanza("subscribe", "bob@localhost"),
            "<presence to='bob@localhost' type='subscribe'/>\n"
        );
    }
}
