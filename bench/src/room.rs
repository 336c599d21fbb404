//! Group-chat traffic through sj-proxy (issue 16): groupchat messages from
//! a room that one raw client of K joined, written by the fake server,
//! reach that client only. Timed like the pipeline (one warm-up record to
//! every client, then `records` to the one in the room), and checked: a
//! room message that reaches a client not in the room fails the run.
//! Its baseline is the pipeline's 1-client chat run of the same size in
//! the same sj-bench run: the room costs what one delivery costs,
//! whatever the number of clients not in it.

use crate::pipeline::{message, with_log, writer, Case, Drain, Run, JID, RUN_LIMIT};
use crate::spawn::Scratch;
use crate::xmpp;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOM: &str = "room@muc.localhost";

/// Groupchat message `i` of `size` bytes from the room (as
/// `pipeline::message`, from the room to the upstream resource).
fn groupchat(size: usize, i: usize) -> Vec<u8> {
    let head = format!("<message from='{ROOM}/bob' to='{JID}' type='groupchat' id='{i:07}'><body>");
    let tail = "</body></message>";
    let pad = size.saturating_sub(head.len() + tail.len()).max(1);
    const TEXT: &[u8] = b"All work and no play makes Jack a dull boy. ";
    let mut r = Vec::with_capacity(size + 1);
    r.extend_from_slice(head.as_bytes());
    r.extend(TEXT.iter().cycle().take(pad));
    r.extend_from_slice(tail.as_bytes());
    r.push(b'\n');
    r
}

/// One run: `c.clients` raw clients, client c0 in the room.
pub fn run(bin: &Path, c: Case) -> Result<Run, String> {
    let data: Vec<u8> = (0..c.records).flat_map(|i| groupchat(c.size, i)).collect();
    let data = Arc::new(data);
    let scratch = Scratch::new(&format!("room-{}-{}", c.size, c.clients))?;
    let dir = scratch.0.join("dir");
    let mut drain = Drain::open(&dir, c.clients)?;
    let log = scratch.0.join("stderr");
    let crate::pipeline::Started {
        mut proxy,
        conn,
        sock,
    } = crate::pipeline::start_proxy(bin, &dir, &scratch.0, &log, &[], false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicBool::new(false));
    let reader = watch_join(conn, Arc::clone(&stop), Arc::clone(&joined));
    let r = join_then_time(&dir, &mut drain, &sock, &joined, c, &data);
    let st = proxy.stop(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let warnings = crate::pipeline::warnings(&log);
    let secs = r.map_err(|e| with_log(e, &warnings))?;
    if !st.is_some_and(|s| s.success()) {
        return Err(with_log(format!("sj-proxy ended with {st:?}"), &warnings));
    }
    Ok(Run {
        secs,
        rss: Vec::new(),
        warnings,
    })
}

/// Client c0 joins (its presence reaches the fake server: sj-proxy has
/// decided), every client gets a warm-up chat message, then the room's
/// records are timed to c0; the others must have had the warm-up only.
fn join_then_time(
    dir: &Path,
    drain: &mut Drain,
    sock: &UnixStream,
    joined: &AtomicBool,
    c: Case,
    data: &Arc<Vec<u8>>,
) -> Result<f64, String> {
    let out = dir.join("clients").join("c0").join("out");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fd = loop {
        match sj::fifo::open_write(&out)
            .map_err(|e| format!("unable to open {}: {e}", out.display()))?
        {
            Some(fd) => break std::fs::File::from(fd),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => return Err(format!("sj-proxy did not open {}", out.display())),
        }
    };
    fd.write_all(
        format!(
            "<presence to='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>\n"
        )
        .as_bytes(),
    )
    .map_err(|e| format!("unable to write the join: {e}"))?;
    while !joined.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            return Err("the join did not reach the server".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = sock
        .try_clone()
        .map_err(|e| format!("unable to dup the socket: {e}"))?;
    s.write_all(&message(100, 9_999_999))
        .map_err(|e| format!("unable to write the warm-up record: {e}"))?;
    drain.wait_for(
        &vec![1; c.clients],
        Instant::now() + Duration::from_secs(20),
    )?;
    let t = Instant::now();
    let w = writer(s, Arc::clone(data));
    let mut expect = vec![1; c.clients];
    expect[0] = 1 + c.records;
    let r = drain.wait_for(&expect, t + RUN_LIMIT);
    let secs = t.elapsed().as_secs_f64();
    match w.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the writer thread panicked".into()),
    }
    r?;
    // mirrord hands records out in order: what it wrote to the others
    // before the last one reached c0 is in their FIFOs; one short read
    // (its deadline is the point, not an error) collects it.
    let _ = drain.wait_for(
        &vec![usize::MAX; c.clients],
        Instant::now() + Duration::from_millis(100),
    );
    let leaked: usize = drain.lines[1..].iter().map(|n| n - 1).sum();
    if leaked > 0 {
        return Err(format!(
            "{leaked} room records reached clients not in the room"
        ));
    }
    Ok(secs)
}

/// Read and forget what sj-proxy sends the server, noting the join.
fn watch_join<S: xmpp::Sock + 'static>(
    mut conn: xmpp::Conn<S>,
    stop: Arc<AtomicBool>,
    joined: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match conn.fill() {
                Ok(_) => {
                    while let Ok(Some(ev)) = conn.pop() {
                        if let sj::framer::Event::Record(r) = ev {
                            if memchr::memmem::find(&r, ROOM.as_bytes()).is_some() {
                                joined.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(_) => return,
            }
        }
    })
}
