//! The control contact (`sj-proxy@control.invalid`): text commands a client
//! sends as chat messages, answered from the account directory.

use sj::account::Dir;
use sj::path::{component, Kind};

/// Largest `history` request.
const MAX_HISTORY: usize = 200;
/// Most text one `history` reply carries: however large the log and its
/// lines, the reply stays one modest message, read from the log's end in
/// bounded time and memory (`sj::outlog::tail`).
const HISTORY_BUDGET: usize = 64 * 1024;
/// The largest `state` or `pid` file read.
const SMALL_FILE: u64 = 4096;

pub const HELP: &str = "commands:
help                  this text
status                connection state (and whether sj-proxy runs), number of clients
clients               connected clients
kick NAME             disconnect client NAME
passwd NEWPASSWORD    change the password clients log in with
history CONTACT [N]   last N (default 10) lines of the log with CONTACT";

/// Run one command for the client `me` of the account in `dir`; the reply text.
pub fn run(dir: &Dir, me: &str, text: &str) -> String {
    let text = text.trim();
    let (cmd, rest) = match text.split_once(char::is_whitespace) {
        Some((c, r)) => (c, r.trim()),
        None => (text, ""),
    };
    match cmd.to_ascii_lowercase().as_str() {
        "" | "help" | "?" => HELP.to_string(),
        "status" => status(dir),
        "clients" => clients(dir, me),
        "kick" => kick(dir, rest),
        "passwd" => passwd(dir, rest),
        "history" => history(dir, rest),
        other => format!("unknown command: {other} (try help)"),
    }
}

fn status(dir: &Dir) -> String {
    // DIR/state with its owner's liveness: after a crash it still says
    // online, and only the lock tells.
    let state = sj::state::report(dir);
    let n = sj::fifo::list_clients(dir).len();
    format!("{state}\nclients: {n}")
}

fn clients(dir: &Dir, me: &str) -> String {
    let names = sj::fifo::list_clients(dir);
    if names.is_empty() {
        return "no clients".to_string();
    }
    names
        .iter()
        .map(|n| {
            if n == me {
                format!("{n} (this client)")
            } else {
                n.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn kick(dir: &Dir, name: &str) -> String {
    if name.is_empty() {
        return "usage: kick NAME".to_string();
    }
    // Only names that are already path components: nothing can escape DIR/clients.
    match component(Kind::Client, name) {
        Ok(c) if c == name => {}
        _ => return format!("no such client: {name}"),
    }
    let Ok(cdir) = dir.client(name) else {
        return format!("no such client: {name}");
    };
    if sj::fifo::check_dir(cdir.path()).is_err() {
        return format!("no such client: {name}");
    }
    let pid = sj::fifo::read_file(&cdir.pid(), SMALL_FILE)
        .ok()
        .and_then(|s| String::from_utf8_lossy(&s).trim().parse::<i32>().ok())
        .filter(|&p| p > 1);
    let Some(pid) = pid else {
        return format!("client {name} has no pid file (a raw client?)");
    };
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    ) {
        Ok(()) => format!("kicked {name}"),
        Err(e) => format!("unable to kick {name}: {}", e.desc()),
    }
}

fn passwd(dir: &Dir, new: &str) -> String {
    if new.is_empty() {
        return "usage: passwd NEWPASSWORD".to_string();
    }
    if new.chars().any(char::is_control) {
        return "password refused: control characters".to_string();
    }
    match sj::passwd::write(&dir.passwd(), new) {
        Ok(()) => "password changed".to_string(),
        Err(e) => format!("unable to change the password: {}", sj::log::strerror(&e)),
    }
}

fn history(dir: &Dir, args: &str) -> String {
    let mut it = args.split_whitespace();
    let Some(contact) = it.next() else {
        return "usage: history CONTACT [N]".to_string();
    };
    let n = match it.next() {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) => n.min(MAX_HISTORY),
            Err(_) => return "usage: history CONTACT [N]".to_string(),
        },
    };
    let Ok(c) = dir.contact(contact) else {
        return format!("not a contact JID: {contact}");
    };
    // At least one line, to tell an empty log from `history CONTACT 0`.
    let t = match sj::outlog::tail(&c.out(), n.max(1), HISTORY_BUDGET) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return format!("no history with {contact}")
        }
        Err(e) => {
            return format!(
                "unable to read the log with {contact}: {}",
                sj::log::strerror(&e)
            )
        }
    };
    if t.lines.is_empty() && !t.more_before {
        return format!("no history with {contact}");
    }
    if n == 0 {
        return String::new();
    }
    let limit = HISTORY_BUDGET / 1024;
    if t.lines.is_empty() {
        return format!("the last line of the log with {contact} is too long to be shown here");
    }
    let mut out = if t.more_before {
        format!("... earlier lines not shown (a reply holds at most {limit} KiB)\n")
    } else if t.left_out > 0 {
        format!(
            "... {} earlier line(s) not shown (a reply holds at most {limit} KiB)\n",
            t.left_out
        )
    } else {
        String::new()
    };
    out.push_str(
        &t.lines
            .iter()
            .map(|l| xml_safe(l))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    out
}

/// A log line as text a reply can carry: whatever the file holds (a log
/// written by hand, a stray NUL), no character XML forbids, no control
/// character (`sj::outlog::clean`).
fn xml_safe(line: &str) -> String {
    sj::outlog::clean(line)
        .chars()
        .map(|c| {
            if sj::xml::is_xml_char(c) {
                c
            } else {
                '\u{FFFD}'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sj-c2s-ctl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("clients")).expect("mkdir");
        d
    }

    #[test]
    fn status_clients_history() {
        let path = tmp("a");
        let d = Dir::new(&path);
        fs::write(
            d.state(),
            "online\talice@localhost/sj-proxy\t2023-11-14T22:13:20Z\n",
        )
        .expect("w");
        for n in ["phone", "laptop"] {
            let c = d.clients().join(n);
            fs::create_dir_all(&c).expect("mkdir");
            sj::fifo::make(&c.join("in")).expect("fifo");
            sj::fifo::make(&c.join("out")).expect("fifo");
        }
        // No sj-proxy holds DIR/lock: the line is not believed.
        let s = run(&d, "phone", "status");
        assert!(
            s.starts_with("offline alice@localhost/sj-proxy: no sj-proxy holds DIR/lock"),
            "{s}"
        );
        assert!(s.ends_with("clients: 2"));
        let lock = sj::lock::acquire(&d).expect("lock");
        let s = run(&d, "phone", "status");
        assert!(
            s.starts_with(
                "online alice@localhost/sj-proxy since 2023-11-14T22:13:20Z (sj-proxy pid "
            ),
            "{s}"
        );
        drop(lock);
        assert!(
            run(&d, "phone", "status").contains(") is not running; DIR/state still says online")
        );
        assert_eq!(run(&d, "phone", " clients "), "laptop\nphone (this client)");
        let bob = path.join(component(Kind::Contact, "bob@localhost").expect("c"));
        fs::create_dir_all(&bob).expect("mkdir");
        let log: String = (1..=12)
            .map(|i| format!("2024-01-01 10:{i:02} bob@localhost m{i}\n"))
            .collect();
        fs::write(bob.join("out"), log).expect("w");
        let h = run(&d, "phone", "history bob@localhost 2");
        assert_eq!(
            h,
            "2024-01-01 10:11 bob@localhost m11\n2024-01-01 10:12 bob@localhost m12"
        );
        assert_eq!(
            run(&d, "phone", "history Bob@LocalHost").lines().count(),
            10
        );
        assert!(run(&d, "phone", "history ../etc").starts_with("n"));
        assert!(run(&d, "phone", "kick ../../x").starts_with("no such client"));
        assert!(run(&d, "phone", "kick laptop").contains("no pid file"));
        assert!(run(&d, "phone", "frobnicate").starts_with("unknown command"));
        assert_eq!(run(&d, "phone", "help"), HELP);
        assert_eq!(run(&d, "phone", "passwd"), "usage: passwd NEWPASSWORD");
        assert_eq!(run(&d, "phone", "passwd s3cret"), "password changed");
        let creds = sj::passwd::read(&d.passwd()).expect("read");
        assert!(creds.iter().all(|c| c.verify_plain("s3cret")));
        assert!(!creds.is_empty());
        fs::remove_dir_all(&path).ok();
    }
}
