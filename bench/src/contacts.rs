//! messaged with many contacts: a roster of N contacts (one directory, `in`
//! FIFO and `out` log each), then chat messages spread round-robin over
//! them on stdin; peak RSS and time to the last line logged, in /dev/shm
//! (`Scratch::in_memory`). messaged runs alone under `sj-bench --peak-rss`,
//! so the peak is its own.

use crate::spawn::Scratch;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct Outcome {
    pub kib: u64,
    pub secs: f64,
}

/// The JID of contact `i`.
fn jid(i: usize) -> String {
    format!("c{i}@localhost")
}

/// An account directory whose roster holds `contacts` contacts, in memory:
/// the file system's cost is not messaged's. The scratch space, and DIR.
fn with_roster(tag: &str, contacts: usize) -> Result<(Scratch, PathBuf), String> {
    let scratch = Scratch::in_memory(tag)?;
    let dir = scratch.0.join("dir");
    sj::fifo::make_dir(&dir).map_err(|e| format!("unable to create {}: {e}", dir.display()))?;
    let roster: String = (0..contacts)
        .map(|i| format!("{}\t{}\tboth\n", jid(i), jid(i)))
        .collect();
    std::fs::write(dir.join("roster"), roster)
        .map_err(|e| format!("unable to write the roster: {e}"))?;
    Ok((scratch, dir))
}

/// Run messaged on `contacts` contacts with `messages` messages.
pub fn run(bin: &Path, contacts: usize, messages: usize) -> Result<Outcome, String> {
    let (_scratch, dir) = with_roster(&format!("contacts-{contacts}"), contacts)?;
    let mut data = Vec::with_capacity(messages * 110);
    for i in 0..messages {
        writeln!(
            data,
            "<message from='{}/r' type='chat' id='m{i}'><body>message number {i} &amp; more</body></message>",
            jid(i % contacts)
        )
        .map_err(|e| format!("unable to build the messages: {e}"))?;
    }
    let me = std::env::current_exe().map_err(|e| format!("unable to find sj-bench itself: {e}"))?;
    let t = Instant::now();
    let mut child = Command::new(me)
        .arg("--peak-rss")
        .arg(bin.join("messaged"))
        .arg("-d")
        .arg(&dir)
        .arg("alice@localhost/sj")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("unable to start messaged: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&data)
            .map_err(|e| format!("unable to write to messaged: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("unable to wait for messaged: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("messaged ended with {}", out.status));
    }
    let kib = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "no peak RSS from --peak-rss".to_string())?;
    // Every message must be in its contact's log, or the time means nothing.
    let logged: usize = (0..contacts)
        .map(|i| {
            std::fs::read(dir.join(jid(i)).join("out"))
                .map(|b| memchr::memchr_iter(b'\n', &b).count())
                .unwrap_or(0)
        })
        .sum();
    if logged != messages {
        return Err(format!("{logged} of {messages} messages logged"));
    }
    Ok(Outcome { kib, secs })
}

/// CPU messaged spends on each of `messages` messages that come alone
/// (one wakeup each), once the roster of `contacts` contacts is made: what
/// a message costs on a quiet account, where a loop that looks at every
/// `in` FIFO on each wakeup shows. Microseconds, from /proc (clock ticks:
/// enough messages make the ticks fine enough).
pub fn lone(bin: &Path, contacts: usize, messages: usize) -> Result<f64, String> {
    use std::time::Duration;
    let (_scratch, dir) = with_roster(&format!("lone-{contacts}"), contacts)?;
    let mut child = Command::new(bin.join("messaged"))
        .arg("-d")
        .arg(&dir)
        .arg("alice@localhost/sj")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("unable to start messaged: {e}"))?;
    let pid = child.id() as i32;
    let result = (|| {
        let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
        // The roster is made when the last contact's FIFO is there.
        let last = dir.join(jid(contacts - 1)).join("in");
        let give_up = Instant::now() + Duration::from_secs(60);
        while !last.exists() {
            if Instant::now() > give_up {
                return Err("messaged made no directories in 60 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu0 = crate::procfs::cpu_ticks(pid).ok_or("no CPU time in /proc")?;
        for i in 0..messages {
            writeln!(
                stdin,
                "<message from='{}/r' type='chat' id='m{i}'><body>alone</body></message>",
                jid(i % contacts)
            )
            .map_err(|e| format!("unable to write to messaged: {e}"))?;
            // Pacing, so each message is a wakeup of its own.
            std::thread::sleep(Duration::from_millis(1));
        }
        // The last one logged: messaged is done with all of them.
        let k = (messages - 1) % contacts;
        let out = dir.join(jid(k)).join("out");
        let expect = messages / contacts + usize::from(k < messages % contacts);
        while std::fs::read(&out).map_or(0, |b| memchr::memchr_iter(b'\n', &b).count()) < expect {
            if Instant::now() > give_up {
                return Err("messaged did not log the last message".to_string());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let cpu1 = crate::procfs::cpu_ticks(pid).ok_or("no CPU time in /proc")?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        Ok((cpu1 - cpu0) as f64 / hz * 1e6 / messages as f64)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `sj-bench --peak-rss PROG ARGS...`: run PROG (stdin inherited, stdout
/// to /dev/null) and print its peak RSS in KiB. Being PROG's only child
/// makes RUSAGE_CHILDREN's maximum PROG's own.
pub fn peak_rss_main(argv: &[std::ffi::OsString]) -> Result<(), String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| "usage: sj-bench --peak-rss PROG [ARGS...]".to_string())?;
    let st = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("unable to run {}: {e}", prog.to_string_lossy()))?;
    if !st.success() {
        return Err(format!("{} ended with {st}", prog.to_string_lossy()));
    }
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| format!("unable to get the peak RSS: {e}"))?;
    println!("{}", u.max_rss());
    Ok(())
}
