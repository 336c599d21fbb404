//! messaged as a process: records in on stdin, logs in DIR, FIFO lines out
//! on stdout. Waits poll with deadlines; nothing sleeps to synchronise.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

struct Daemon {
    dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    records: Receiver<String>,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("messaged-it-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        Self::start_in(dir)
    }

    fn start_in(dir: PathBuf) -> Daemon {
        Self::start_with(dir, None)
    }

    /// `nofile`: run under this hard limit of open files.
    fn start_with(dir: PathBuf, nofile: Option<u32>) -> Daemon {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_messaged"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_messaged")),
        };
        let mut child = cmd
            .arg("-d")
            .arg(&dir)
            .arg("alice@localhost/sj")
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn messaged");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            dir,
            child,
            stdin,
            records: rx,
        }
    }

    fn feed(&mut self, rec: &str) {
        let s = self.stdin.as_mut().expect("stdin open");
        s.write_all(rec.as_bytes()).expect("write");
        s.write_all(b"\n").expect("write");
        s.flush().expect("flush");
    }

    fn next_record(&self) -> String {
        self.records
            .recv_timeout(DEADLINE)
            .expect("a record on stdout before the deadline")
    }

    fn no_record(&self, within: Duration) {
        if let Ok(r) = self.records.recv_timeout(within) {
            panic!("unexpected record {r}");
        }
    }

    /// Open `DIR/<c>/in` once messaged reads it, and write `data` in one write.
    fn write_in(&self, contact: &str, data: &[u8]) {
        let p = self.dir.join(contact).join("in");
        let t = Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .custom_flags_nonblock()
                .open(&p)
            {
                Ok(mut f) => {
                    f.write_all(data).expect("write in");
                    return;
                }
                Err(e) => {
                    assert!(t.elapsed() < DEADLINE, "{}: {e}", p.display());
                    std::thread::yield_now();
                }
            }
        }
    }

    fn stop(mut self) -> i32 {
        drop(self.stdin.take());
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                let _ = fs::remove_dir_all(&self.dir);
                return st.code().unwrap_or(-1);
            }
            assert!(t.elapsed() < DEADLINE, "messaged did not exit on EOF");
            std::thread::yield_now();
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_NONBLOCK)
    }
}

/// Poll a log until it has `n` lines (bounded by the deadline).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let t = Instant::now();
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            t.elapsed() < DEADLINE,
            "{} has {lines:?}, want {n} lines",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `YYYY-MM-DD HH:MM ` then the rest.
fn strip_stamp(line: &str) -> &str {
    let b = line.as_bytes();
    assert!(b.len() > 17, "{line}");
    for (i, c) in b[..16].iter().enumerate() {
        let want_digit = !matches!(i, 4 | 7 | 10 | 13);
        assert_eq!(c.is_ascii_digit(), want_digit, "{line}");
    }
    assert_eq!(b[16], b' ', "{line}");
    &line[17..]
}

fn sent_copy(to: &str, body: &str) -> String {
    format!("<message from='alice@localhost' to='alice@localhost/sj' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/gajim' to='{to}' type='chat'><body>{body}</body></message></forwarded></sent></message>")
}

#[test]
fn conversation_in_order() {
    let mut d = Daemon::start("conv");
    d.feed("<message from='bob@localhost/phone' type='chat'><body>hi alice</body></message>");
    d.feed(&sent_copy("bob@localhost", "hi bob &amp; co"));
    d.feed("<message from='bob@localhost/phone' type='chat'><body>two&#10;lines</body></message>");
    d.feed("<message from='bob@localhost/phone' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
    d.feed("<message from='bob@localhost/phone' type='chat'><body>old</body><delay xmlns='urn:xmpp:delay' stamp='2002-09-10T23:08:25Z'/></message>");
    let out = d.dir.join("bob@localhost/out");
    let lines = wait_lines(&out, 5);
    let rest: Vec<&str> = lines.iter().map(|l| strip_stamp(l)).collect();
    assert_eq!(
        rest,
        [
            "<bob@localhost> hi alice",
            "<alice@localhost> hi bob & co",
            "<bob@localhost> two",
            "<bob@localhost> lines",
            "<bob@localhost> old"
        ]
    );
    assert!(lines[4].starts_with("2002-09-10 23:08 "), "{}", lines[4]);
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600);
    assert_eq!(mode(&d.dir.join("bob@localhost")), 0o700);
    assert_eq!(d.stop(), 0);
}

#[test]
fn in_fifo_lines_become_messages() {
    let mut d = Daemon::start("in");
    d.feed("<message from='bob@localhost/phone' type='chat'><body>hello</body></message>");
    wait_lines(&d.dir.join("bob@localhost/out"), 1);
    d.write_in("bob@localhost", b"echo <hi> & 'x'\n");
    let r = d.next_record();
    assert!(
        r.starts_with("<message to='bob@localhost' type='chat' id='msgd-"),
        "{r}"
    );
    assert!(
        r.ends_with("><body>echo &lt;hi&gt; &amp; 'x'</body></message>"),
        "{r}"
    );
    // Several lines in one write, an empty one, and one over PIPE_BUF.
    let long = "y".repeat(10_000);
    d.write_in("bob@localhost", format!("one\n\ntwo\n{long}\n").as_bytes());
    let a = d.next_record();
    let b = d.next_record();
    let c = d.next_record();
    assert!(a.contains("<body>one</body>"), "{a}");
    assert!(b.contains("<body>two</body>"), "{b}");
    assert!(c.contains(&format!("<body>{long}</body>")));
    let ids: Vec<String> = [&r, &a, &b, &c]
        .iter()
        .map(|r| {
            r.split("id='")
                .nth(1)
                .unwrap_or("")
                .split('\'')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 4, "{ids:?}");
    // Invalid UTF-8 is dropped; the next line still goes.
    d.write_in("bob@localhost", b"\xff\xfe\nafter\n");
    assert!(d.next_record().contains("<body>after</body>"));
    // Nothing is logged until the sent copy comes back.
    assert_eq!(wait_lines(&d.dir.join("bob@localhost/out"), 1).len(), 1);
    d.no_record(Duration::from_millis(100));
    assert_eq!(d.stop(), 0);
}

#[test]
fn rooms_and_roster() {
    let dir = std::env::temp_dir().join(format!("messaged-it-room-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("roster"), "carol@localhost\tCarol\tboth\n").expect("roster");
    let mut d = Daemon::start_in(dir);
    d.feed(
        "<message from='room@muc.localhost/Bobby' type='groupchat'><body>hey all</body></message>",
    );
    let lines = wait_lines(&d.dir.join("room@muc.localhost/out"), 1);
    assert_eq!(strip_stamp(&lines[0]), "<Bobby> hey all");
    d.write_in("room@muc.localhost", b"hi room\n");
    let r = d.next_record();
    assert!(
        r.starts_with("<message to='room@muc.localhost' type='groupchat' id="),
        "{r}"
    );
    // Roster items get their directory, FIFO and an empty log.
    d.write_in("carol@localhost", b"hi carol\n");
    assert_eq!(
        fs::read(d.dir.join("carol@localhost/out")).expect("carol's out"),
        b""
    );
    assert!(d
        .next_record()
        .starts_with("<message to='carol@localhost' type='chat'"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn forged_carbon_not_logged_as_ours() {
    let mut d = Daemon::start("forged");
    d.feed("<message from='bob@localhost/evil' to='alice@localhost/sj' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@localhost/x' to='bob@localhost' type='chat'><body>forged</body></message></forwarded></sent></message>");
    d.feed("<message from='bob@localhost/evil' type='chat'><body>marker</body></message>");
    let lines = wait_lines(&d.dir.join("bob@localhost/out"), 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(strip_stamp(&lines[0]), "<bob@localhost> marker");
    assert_eq!(d.stop(), 0);
}

#[test]
fn hostile_names_stay_in_dir() {
    let root = std::env::temp_dir().join(format!("messaged-it-hostile-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let dir = root.join("acct");
    fs::create_dir_all(&dir).expect("mkdir");
    let mut d = Daemon::start_in(dir.clone());
    for from in [
        "../../evil@localhost/x",
        "..",
        "../escape",
        "in@localhost",
        "roster",
        "a@../../b",
        "%2e%2e@localhost",
        ".hidden@localhost",
        "x&#10;y@localhost",
    ] {
        d.feed(&format!(
            "<message from='{from}' type='chat'><body>hostile</body></message>"
        ));
    }
    d.feed("<message from='bob@localhost/x' type='chat'><body>marker</body></message>");
    wait_lines(&dir.join("bob@localhost/out"), 1);
    // Nothing outside DIR, no reserved name used, every entry a plain dir.
    let outside: Vec<_> = fs::read_dir(&root)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("acct")]);
    for e in fs::read_dir(&dir).expect("ls").flatten() {
        let name = e.file_name().into_string().expect("utf-8 name");
        assert!(!name.starts_with('.'), "{name}");
        assert!(
            !["in", "out", "roster", "clients", "state"].contains(&name.as_str()),
            "{name}"
        );
        assert!(e.file_type().expect("type").is_dir(), "{name}");
    }
    assert_eq!(d.stop(), 0);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn write_errors_do_not_stop_routing() {
    let mut d = Daemon::start("enospc");
    d.feed("<message from='bob@localhost/x' type='chat'><body>first</body></message>");
    let out = d.dir.join("bob@localhost/out");
    wait_lines(&out, 1);
    // An `out` that cannot be opened (a symlink is refused): warning, go on.
    fs::remove_file(&out).expect("rm");
    std::os::unix::fs::symlink("/dev/full", &out).expect("symlink");
    d.feed("<message from='bob@localhost/x' type='chat'><body>lost</body></message>");
    d.feed("<message from='carol@localhost/x' type='chat'><body>still here</body></message>");
    wait_lines(&d.dir.join("carol@localhost/out"), 1);
    d.write_in("bob@localhost", b"still routing\n");
    assert!(d.next_record().contains("still routing"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn usage_errors_are_permanent() {
    let st = Command::new(env!("CARGO_BIN_EXE_messaged"))
        .arg("-x")
        .env_remove("SJ_JID")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(100));
    let st = Command::new(env!("CARGO_BIN_EXE_messaged"))
        .args(["-d", "/tmp/x", "not a jid@@"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(100));
}

#[test]
fn out_of_descriptors_still_logs() {
    let dir = std::env::temp_dir().join(format!("messaged-it-emfile-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let mut d = Daemon::start_with(dir, Some(24));
    for i in 0..40 {
        d.feed(&format!(
            "<message from='c{i}@localhost/x' type='chat'><body>n{i}</body></message>"
        ));
    }
    for i in 0..40 {
        let lines = wait_lines(&d.dir.join(format!("c{i}@localhost/out")), 1);
        assert_eq!(strip_stamp(&lines[0]), format!("<c{i}@localhost> n{i}"));
    }
    // The first contacts got their FIFO and still work.
    d.write_in("c0@localhost", b"still here\n");
    assert!(d.next_record().contains("<body>still here</body>"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn roster_changes_make_directories() {
    let mut d = Daemon::start("roster");
    d.feed("<message from='bob@localhost/x' type='chat'><body>up</body></message>");
    wait_lines(&d.dir.join("bob@localhost/out"), 1);
    fs::write(
        d.dir.join("roster"),
        "dave@localhost\tDave\tboth\nEve@LocalHost\t\tnone\n# comment\n\nnot a jid@@\n",
    )
    .expect("roster");
    // The roster is checked every second; the FIFO answers once it is read.
    d.write_in("dave@localhost", b"hi dave\n");
    assert!(d
        .next_record()
        .starts_with("<message to='dave@localhost' type='chat'"));
    d.write_in("eve@localhost", b"hi eve\n");
    assert!(d
        .next_record()
        .starts_with("<message to='eve@localhost' type='chat'"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn rooms_survive_a_restart_and_sigterm_is_clean() {
    let mut d = Daemon::start("restart");
    d.feed("<message from='room@muc.localhost/Bobby' type='groupchat'><body>x</body></message>");
    wait_lines(&d.dir.join("room@muc.localhost/out"), 1);
    let dir = d.dir.clone();
    drop(d.stdin.take());
    let t = Instant::now();
    while d.child.try_wait().expect("wait").is_none() {
        assert!(t.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
    // Same directory, new process: the room is still a room, and old
    // contact directories are served without new traffic.
    let mut d = Daemon::start_in(dir);
    d.write_in("room@muc.localhost", b"back\n");
    assert!(d.next_record().contains("type='groupchat'"));
    // SIGTERM: queued lines are handed over, exit 0.
    d.write_in("room@muc.localhost", b"bye\n");
    assert!(d.next_record().contains("<body>bye</body>"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let t = Instant::now();
    let st = loop {
        if let Some(st) = d.child.try_wait().expect("wait") {
            break st;
        }
        assert!(t.elapsed() < DEADLINE, "no exit after SIGTERM");
        std::thread::yield_now();
    };
    assert_eq!(st.code(), Some(0));
    let _ = fs::remove_dir_all(&d.dir);
}

#[test]
fn environment_fallbacks() {
    let dir = std::env::temp_dir().join(format!("messaged-it-env-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_messaged"))
        .env("SJ_DIR", &dir)
        .env("SJ_JID", "alice@localhost/sj")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    {
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(b"<message from='bob@localhost/x' type='chat'><body>env</body></message>\n")
            .expect("write");
    }
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let lines = wait_lines(&dir.join("bob@localhost/out"), 1);
    assert_eq!(strip_stamp(&lines[0]), "<bob@localhost> env");
    let _ = fs::remove_dir_all(&dir);
}
