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
    let pwfile = scratch.0.join("password");
    spawn::write_password(&pwfile, pipeline::PASSWORD)?;
    let log = scratch.0.join("stderr");
    let (srv, cli) = UnixStream::pair().map_err(|e| format!("unable to make a socketpair: {e}"))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("unable to make a pipe: {e}"))?;
    let mut cmd = spawn::command(&bin.join("sj-proxy"), &log)?;
    cmd.arg("-d")
        .arg(&dir)
        .arg("-p")
        .arg(&pwfile)
        .args(["-n", "8", pipeline::JID])
        .stdout(Stdio::null());
    let cli = OwnedFd::from(cli);
    let mut proxy = spawn::spawn("sj-proxy", cmd, &[(&cli, 6), (&cli, 7), (&ready_w, 8)])?;
    drop((cli, ready_w));
    let conn = xmpp::serve_login(srv, pipeline::PASSWORD, pipeline::JID)?;
    spawn::wait_ready(&ready_r, Duration::from_secs(20), "sj-proxy")?;
    let mut sock = conn
        .sock
        .try_clone()
        .map_err(|e| format!("unable to dup the socket: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = pipeline::discard(conn, Arc::clone(&stop));
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
    proxy.stop(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
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
