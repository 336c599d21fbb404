//! The account archive's rows: what archiving costs the pipeline, its size
//! per message, a client's catch-up from it against `cat` of the same
//! bytes, and a MAM page through sj-c2s from a large archive.

use crate::pipeline::{self, Case, Pipeline};
use crate::spawn::{self, Scratch};
use crate::table::Table;
use crate::xmpp;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records a client misses, then catches up on.
pub const MISSED: usize = 10_000;
const SIZE: usize = 512;
const LIMIT: Duration = Duration::from_secs(60);

/// Bytes of the archive's files.
pub fn bytes(dir: &Path) -> u64 {
    sj::archive::segments(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum()
}

/// Read `fd` until `n` lines came, or the deadline.
fn drain_lines(fd: &OwnedFd, n: usize, deadline: Instant) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    while got < n {
        if Instant::now() >= deadline {
            return Err(format!("{got} of {n} records at the deadline"));
        }
        match sj::poll::wait_one(fd.as_fd(), sj::poll::Interest::Read, Some(deadline)) {
            Ok(_) => {}
            Err(e) => return Err(format!("unable to poll: {e}")),
        }
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(k) if k > 0 => got += memchr::memchr_iter(b'\n', &buf[..k]).count(),
                Err(nix::errno::Errno::EINTR) => continue,
                _ => break,
            }
        }
    }
    Ok(())
}

/// sj-proxy for `pipeline::JID` on DIR, against the bench's fake server:
/// the process, a socket to write records on as the server, and the
/// thread that reads and forgets what sj-proxy sends.
struct FakeUp {
    proxy: spawn::Proc,
    sock: UnixStream,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FakeUp {
    fn start(bin: &Path, dir: &Path, scratch: &Path, log: &Path) -> Result<FakeUp, String> {
        let pipeline::Started { proxy, conn, sock } =
            pipeline::start_proxy(bin, dir, scratch, log, &[], false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Some(pipeline::discard(conn, Arc::clone(&stop)));
        Ok(FakeUp {
            proxy,
            sock,
            stop,
            reader,
        })
    }

    fn stop(&mut self) {
        self.proxy.stop(Duration::from_secs(10));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `cat FILE > FIFO` of `data`, drained: seconds.
fn cat_run(data: &[u8], lines: usize) -> Result<f64, String> {
    let scratch = Scratch::new("catchup-cat")?;
    let file = scratch.0.join("records");
    std::fs::write(&file, data).map_err(|e| format!("unable to write {}: {e}", file.display()))?;
    let fifo = scratch.0.join("in");
    sj::fifo::make(&fifo).map_err(|e| format!("unable to make a FIFO: {e}"))?;
    let rd = sj::fifo::open_read(&fifo).map_err(|e| format!("unable to open the FIFO: {e}"))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .map_err(|e| format!("unable to open the FIFO: {e}"))?;
    let t = Instant::now();
    let mut cmd = std::process::Command::new("cat");
    cmd.arg(&file).stdout(out);
    let mut p = spawn::spawn("cat", cmd, &[])?;
    drain_lines(&rd, lines, t + LIMIT)?;
    let secs = t.elapsed().as_secs_f64();
    p.wait(Duration::from_secs(5));
    Ok(secs)
}

/// sj-proxy against the fake server; a raw client that reads one record,
/// goes away while `MISSED` more arrive, and comes back: seconds from its
/// reader's return to the last record (the next live record, which wakes
/// mirrord's look for a reader, is counted with them).
fn catchup_run(bin: &Path, data: &Arc<Vec<u8>>) -> Result<f64, String> {
    let scratch = Scratch::new("catchup-sj")?;
    let dir = scratch.0.join("dir");
    let c = dir.join("clients").join("c0");
    sj::fifo::make_dir(&c).map_err(|e| format!("unable to create {}: {e}", c.display()))?;
    for f in ["in", "out"] {
        sj::fifo::make(&c.join(f)).map_err(|e| format!("unable to create {f}: {e}"))?;
    }
    let log = scratch.0.join("stderr");
    let mut up = FakeUp::start(bin, &dir, &scratch.0, &log)?;
    let mut sock = up
        .sock
        .try_clone()
        .map_err(|e| format!("unable to dup the socket: {e}"))?;
    let r = (|| {
        let infifo = c.join("in");
        let rd = sj::fifo::open_read(&infifo).map_err(|e| format!("unable to open in: {e}"))?;
        sock.write_all(&pipeline::message(100, 9_999_998))
            .map_err(|e| format!("unable to write: {e}"))?;
        drain_lines(&rd, 1, Instant::now() + Duration::from_secs(20))?;
        // The client goes away; the records arrive meanwhile.
        drop(rd);
        sock.write_all(data)
            .map_err(|e| format!("unable to write: {e}"))?;
        let last = format!("id='{:07}'", MISSED - 1);
        let adir = dir.join("archive");
        let archived = || {
            let segs = sj::archive::segments(&adir).unwrap_or_default();
            let Some(s) = segs.last() else { return false };
            let Ok(f) = std::fs::File::open(&s.path) else {
                return false;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let n = 4096.min(len as usize);
            let mut tail = vec![0u8; n];
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut tail, len - n as u64).is_ok()
                && memchr::memmem::find(&tail, last.as_bytes()).is_some()
        };
        let end = Instant::now() + LIMIT;
        while !archived() {
            if Instant::now() >= end {
                return Err("the missed records were not archived in time".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // It comes back.
        let t = Instant::now();
        let rd = sj::fifo::open_read(&infifo).map_err(|e| format!("unable to open in: {e}"))?;
        sock.write_all(&pipeline::message(100, 9_999_999))
            .map_err(|e| format!("unable to write: {e}"))?;
        drain_lines(&rd, MISSED + 1, t + LIMIT)?;
        Ok(t.elapsed().as_secs_f64())
    })();
    up.stop();
    r.map_err(|e| {
        let w = pipeline::warnings(&log);
        if w.is_empty() {
            e
        } else {
            format!("{e} (log: {})", w.join(" / "))
        }
    })
}

fn rate(n: usize, s: f64) -> String {
    crate::table::thousands(n as f64 / s)
}

/// The section's rows.
pub fn rows(t: &mut Table, bin: &Path, rounds: usize) {
    cost_rows(t, bin, rounds);
    mam_rows(t, bin);
}

/// Append cost, size, catch-up.
fn cost_rows(t: &mut Table, bin: &Path, rounds: usize) {
    // 1. Append cost: the same pipeline case with the archive off and on,
    // interleaved, best of the rounds.
    let case = Case {
        size: SIZE,
        clients: 1,
        records: crate::records_for(SIZE, 1),
    };
    let mut p = Pipeline::new(bin);
    let (mut on, mut off): (Option<f64>, Option<f64>) = (None, None);
    let mut err = None;
    for round in 1..=rounds {
        crate::progress(&format!("archive round {round}/{rounds}: pipeline off/on"));
        for arch in [false, true] {
            p.archive = arch;
            match p.proxy(case) {
                Ok(r) => {
                    let best = if arch { &mut on } else { &mut off };
                    *best = Some(best.map_or(r.secs, |s: f64| s.min(r.secs)));
                }
                Err(e) => err = Some(e),
            }
        }
    }
    match (on, off) {
        (Some(on), Some(off)) => {
            let ratio = off / on;
            t.row(
                "12",
                "pipeline 512 B, 1 client, archive on: records/s",
                rate(case.records, on),
                format!("archive off {}", rate(case.records, off)),
                format!("{ratio:.3}"),
                format!(
                    "≥ 0.90 {}",
                    if ratio >= 0.90 { "met" } else { "MISSED" }
                ),
                format!(
                    "{} rec; drop {:.1} %; best of {rounds}, interleaved; SJ_ARCHIVE=off for the baseline",
                    case.records,
                    (1.0 - ratio) * 100.0
                ),
            );
            let per = p.archive_bytes as f64 / (case.records + 1) as f64;
            t.row(
                "12",
                "archive bytes per 512 B message",
                format!("{per:.0}"),
                format!("record {}", SIZE + 1),
                format!("{:.3}", per / (SIZE + 1) as f64),
                "",
                "48 B prefix (id, stamp, flow) + XEP-0359 stanza-id (~75 B) per line",
            );
        }
        _ => t.fail("12", "pipeline 512 B, archive on", &err.unwrap_or_default()),
    }
    // 2. Catch-up against cat.
    let data = Arc::new(pipeline::corpus(SIZE, 0, MISSED));
    let (mut sj_best, mut cat_best): (Option<f64>, Option<f64>) = (None, None);
    let mut err = None;
    for round in 1..=rounds {
        crate::progress(&format!(
            "archive round {round}/{rounds}: catch-up of {MISSED}"
        ));
        match cat_run(&data, MISSED) {
            Ok(s) => cat_best = Some(cat_best.map_or(s, |b: f64| b.min(s))),
            Err(e) => err = Some(format!("cat: {e}")),
        }
        match catchup_run(bin, &data) {
            Ok(s) => sj_best = Some(sj_best.map_or(s, |b: f64| b.min(s))),
            Err(e) => err = Some(e),
        }
    }
    match (sj_best, cat_best) {
        (Some(s), Some(c)) => {
            let ratio = c / s;
            t.row(
                "12",
                "catch-up of 10,000 missed 512 B records: records/s",
                rate(MISSED, s),
                format!("cat {}", rate(MISSED, c)),
                format!("{ratio:.3}"),
                format!("≥ 0.25 {}", if ratio >= 0.25 { "met" } else { "MISSED" }),
                format!(
                    "one raw client, from its reader's return to the last record ({:.1} ms); best of {rounds}",
                    s * 1000.0
                ),
            );
        }
        _ => t.fail("12", "catch-up of 10,000 records", &err.unwrap_or_default()),
    }
}

/// Records in the archive a MAM page is read from.
pub const MAM_ARCHIVE: usize = 1_000_000;
/// Messages in Prosody's mod_mam archive for the baseline: filling it goes
/// through the server at a few thousand a second.
pub const MAM_PROSODY: usize = 10_000;
/// Pages asked for; the median is reported.
const MAM_QUERIES: usize = 21;

/// A chat message from bob to carol, numbered.
fn chat(i: usize) -> String {
    format!(
        "<message from='bob@localhost/x' to='carol@localhost' type='chat' id='m{i}'><body>bench message {i:07} All work and no play makes Jack a dull boy.</body></message>"
    )
}

/// The last page of 50 (RSM `<before/>`) from `to`'s archive: seconds, and
/// the results it had.
fn mam_page(
    c: &mut xmpp::Conn<std::net::TcpStream>,
    to: &str,
    n: usize,
) -> Result<(f64, usize), String> {
    let id = format!("mam{n}");
    let t = Instant::now();
    c.send(
        format!(
            "<iq type='set' id='{id}' to='{to}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>50</max><before/></set></query></iq>"
        )
        .as_bytes(),
    )?;
    let deadline = t + LIMIT;
    let mut results = 0;
    loop {
        let el = c.element(deadline)?;
        match el.local_name() {
            "message" if el.child("result", sj::ns::MAM).is_some() => results += 1,
            "iq" if el.attr("id") == Some(id.as_str()) => {
                if el.attr("type") != Some("result") {
                    return Err(format!(
                        "MAM query refused: {}",
                        el.attr("type").unwrap_or("")
                    ));
                }
                return Ok((t.elapsed().as_secs_f64(), results));
            }
            _ => {}
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// sj-c2s over an archive of `MAM_ARCHIVE` records (written directly with
/// `sj::archive::Writer`): median seconds per page.
fn mam_sj(bin: &Path) -> Result<f64, String> {
    let scratch = Scratch::new("mam-sj")?;
    let dir = scratch.0.join("alice@localhost");
    let (mut w, _) = sj::archive::Writer::open(&dir.join("archive"), sj::archive::FILE_MAX)
        .map_err(|e| format!("unable to open the archive: {e}"))?;
    let start = std::time::SystemTime::now() - Duration::from_secs(MAM_ARCHIVE as u64 / 100);
    for i in 0..MAM_ARCHIVE {
        let at = start + Duration::from_millis(i as u64 * 10);
        w.append(
            sj::archive::Flow::FromServer,
            chat(i)
                .replace("'carol@localhost'", "'alice@localhost'")
                .as_bytes(),
            at,
        );
        if i % 10_000 == 9_999 {
            w.flush()
                .map_err(|e| format!("unable to write the archive: {e}"))?;
        }
    }
    w.flush()
        .map_err(|e| format!("unable to write the archive: {e}"))?;
    drop(w);
    let mut pw = std::process::Command::new(bin.join("sj-passwd"))
        .arg("-d")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("unable to run sj-passwd: {e}"))?;
    if let Some(mut i) = pw.stdin.take() {
        i.write_all(format!("{}\n", crate::server::LOCAL_PW).as_bytes())
            .map_err(|e| format!("unable to write to sj-passwd: {e}"))?;
    }
    if !pw.wait().is_ok_and(|s| s.success()) {
        return Err("sj-passwd failed".into());
    }
    let log = scratch.0.join("stderr");
    // sj-c2s serves an account whose sj-proxy runs.
    let mut up = FakeUp::start(bin, &dir, &scratch.0, &log)?;
    let port = crate::server::free_port()?;
    let mut cmd = spawn::command(Path::new("tcpserver"), &log)?;
    cmd.args(["-RHl0", "127.0.0.1", &port.to_string()])
        .arg(bin.join("sj-c2s"))
        .arg("-d")
        .arg(&dir)
        .stdout(Stdio::null());
    let mut server = spawn::spawn("tcpserver", cmd, &[])?;
    let r = (|| {
        let s = crate::server::connect(port, Duration::from_secs(10))?;
        let (mut c, _) = xmpp::login(s, "localhost", "alice", crate::server::LOCAL_PW, "mam")?;
        let mut times = Vec::new();
        for n in 0..MAM_QUERIES {
            let (secs, got) = mam_page(&mut c, "alice@localhost", n)?;
            if got != 50 {
                return Err(format!("a page had {got} results, not 50"));
            }
            times.push(secs);
        }
        c.close();
        Ok(median(times))
    })();
    server.stop(Duration::from_secs(5));
    up.stop();
    r.map_err(|e| {
        let w = pipeline::warnings(&log);
        if w.is_empty() {
            e
        } else {
            format!("{e} (log: {})", w.join(" / "))
        }
    })
}

/// Prosody with mod_mam, `MAM_PROSODY` messages from bob to carol sent
/// through it: median seconds per page.
fn mam_prosody() -> Result<f64, String> {
    let scratch = Scratch::new("mam-prosody")?;
    let mut prosody = crate::server::Prosody::start_with(&scratch.0.join("prosody"), true)?;
    let r = (|| {
        for acct in [crate::server::PROXIED, crate::server::CONTACT] {
            prosody.register(acct)?;
        }
        let mut carol = prosody.login(crate::server::PROXIED, "mam")?;
        let mut bob = prosody.login(crate::server::CONTACT, "load")?;
        const BATCH: usize = 500;
        for start in (0..MAM_PROSODY).step_by(BATCH) {
            let mut b = String::new();
            for i in start..(start + BATCH).min(MAM_PROSODY) {
                b.push_str(&chat(i).replace(" from='bob@localhost/x'", ""));
            }
            bob.send(b.as_bytes())?;
            let last = format!("id='m{}'", (start + BATCH).min(MAM_PROSODY) - 1);
            let deadline = Instant::now() + LIMIT;
            loop {
                let r = carol.record(deadline)?;
                if memchr::memmem::find(&r, last.as_bytes()).is_some() {
                    break;
                }
            }
        }
        let mut times = Vec::new();
        for n in 0..MAM_QUERIES {
            let (secs, got) = mam_page(&mut carol, "carol@localhost", n)?;
            if got != 50 {
                return Err(format!("a page had {got} results, not 50"));
            }
            times.push(secs);
        }
        bob.close();
        carol.close();
        Ok(median(times))
    })();
    prosody.stop();
    r
}

/// The MAM row (last: it costs the most time).
pub fn mam_rows(t: &mut Table, bin: &Path) {
    crate::progress(&format!(
        "archive: MAM from {MAM_ARCHIVE} records through sj-c2s"
    ));
    let sj = mam_sj(bin);
    crate::progress(&format!(
        "archive: MAM from {MAM_PROSODY} messages in Prosody's mod_mam"
    ));
    let pr = mam_prosody();
    match (sj, pr) {
        (Ok(s), Ok(p)) => {
            let ratio = s / p;
            t.row(
                "12",
                "MAM page of 50 (last page), through sj-c2s: ms",
                format!("{:.2}", s * 1000.0),
                format!("mod_mam {:.2}", p * 1000.0),
                format!("{ratio:.3}"),
                format!("faster {}", if ratio < 1.0 { "met" } else { "MISSED" }),
                format!(
                    "median of {MAM_QUERIES}; sj-c2s reads a {} record archive, Prosody 0.12 mod_mam (internal storage) holds {}",
                    crate::table::thousands(MAM_ARCHIVE as f64),
                    crate::table::thousands(MAM_PROSODY as f64)
                ),
            );
        }
        (Err(e), _) => t.fail("12", "MAM page of 50 through sj-c2s", &e),
        (_, Err(e)) => t.fail("12", "MAM page of 50 from Prosody mod_mam", &e),
    }
}
