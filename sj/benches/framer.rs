//! Framer throughput beside quick-xml's plain event loop and a memchr scan
//! for `<` (the floor) over the same realistic stream.
//!
//! Run: `cargo bench -p sj --bench framer`

use std::hint::black_box;
use std::time::{Duration, Instant};

use sj::framer::{Event, Framer, Limits, Mode};

const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='s1' version='1.0'>";

/// Chat messages, caps presences, 200-item roster results and a few
/// 50 KiB payloads, roughly in the proportions a busy account sees.
fn sample() -> (Vec<u8>, usize) {
    let mut s = String::from(HDR);
    let mut records = 0;
    for round in 0..40 {
        for i in 0..100 {
            s.push_str(&format!(
                "<message from='juliet@capulet.lit/balcony{i}' to='romeo@montague.lit' type='chat' id='m{round}-{i}'>\
                 <body>Wherefore art thou, Romeo? Deny thy father &amp; refuse thy name; {i}\nor, if thou wilt not, \
                 be but sworn my love.</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
                 <origin-id xmlns='urn:xmpp:sid:0' id='0e0c2b7a-{round}-{i}'/></message>\n"
            ));
            s.push_str(&format!(
                "<presence from='nurse@capulet.lit/phone{i}' to='romeo@montague.lit/orchard'>\
                 <show>away</show><status>Be right back</status><priority>5</priority>\
                 <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' \
                 ver='QgayPKawpkPSDYmwT/WM94uAlu0='/><x xmlns='vcard-temp:x:update'>\
                 <photo>01b87fcd030b72895ff8e88db57ec525450f000d</photo></x></presence> "
            ));
            records += 2;
        }
        s.push_str(&format!("<iq type='result' id='roster{round}' to='romeo@montague.lit/orchard'><query xmlns='jabber:iq:roster' ver='v{round}'>"));
        for i in 0..200 {
            s.push_str(&format!(
                "<item jid='contact{i}@example.net' name='Contact Nümber {i}' subscription='both'><group>Friends</group></item>"
            ));
        }
        s.push_str("</query></iq>");
        records += 1;
        if round % 10 == 0 {
            let payload: String = (0..50 * 1024 / 64)
                .map(|i| format!("{:063}\n", i))
                .collect();
            s.push_str(&format!(
                "<message from='bot@example.org/x' to='romeo@montague.lit' type='normal'><body>{payload}</body></message>"
            ));
            records += 1;
        }
    }
    s.push_str("</stream:stream>");
    (s.into_bytes(), records)
}

#[inline(never)] // a symbol of its own for callgrind --toggle-collect
fn framer(input: &[u8], chunk: usize) -> usize {
    framer_with(input, chunk, |r| {
        black_box(r);
    })
}

/// Feed `input` in `chunk`-byte reads, handing each record to `each`.
fn framer_with(input: &[u8], chunk: usize, mut each: impl FnMut(&[u8])) -> usize {
    let mut f = Framer::new(Mode::Stream, Limits::DEFAULT);
    let mut records = 0;
    for c in input.chunks(chunk) {
        f.feed(c);
        loop {
            match f.next_event() {
                Ok(Some(Event::Record(r))) | Ok(Some(Event::StreamError(r))) => {
                    each(&r);
                    records += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("bench input refused: {e}"),
            }
        }
    }
    records
}

#[inline(never)] // a symbol of its own for callgrind --toggle-collect
fn quick_xml(input: &[u8]) -> usize {
    use quick_xml::events::Event as Q;
    let mut r = quick_xml::Reader::from_reader(input);
    let mut depth = 0usize;
    let mut records = 0;
    loop {
        match r.read_event() {
            Ok(Q::Start(_)) => depth += 1,
            Ok(Q::End(_)) => {
                depth -= 1;
                if depth == 1 {
                    records += 1;
                }
            }
            Ok(Q::Empty(_)) if depth == 1 => records += 1,
            Ok(Q::Eof) => break,
            Ok(e) => {
                black_box(e);
            }
            Err(e) => panic!("quick-xml: {e}"),
        }
    }
    records
}

#[inline(never)] // a symbol of its own for callgrind --toggle-collect
fn memchr_floor(input: &[u8]) -> usize {
    memchr::memchr_iter(b'<', input).count()
}

/// A digest of every record byte, so a faster framer can be shown to
/// produce the same records as before (compare the printed value).
fn records_digest(input: &[u8], chunk: usize) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    framer_with(input, chunk, |r| h.write(r));
    h.finish()
}

fn main() {
    let (input, expected) = sample();
    // SJ_BENCH_ONLY=WORD runs only the cases whose name contains WORD and
    // skips the digest check: for counting one case's instructions with
    // `valgrind --tool=callgrind --toggle-collect=framer::framer` (or
    // `framer::quick_xml`), together with SJ_BENCH_ROUNDS=1.
    let only = std::env::var("SJ_BENCH_ONLY").ok();
    // Untimed: every chunking, down to one byte a read, gives the same records.
    let digest = records_digest(&input, input.len());
    for chunk in [16 * 1024, 1500, 1].into_iter().filter(|_| only.is_none()) {
        assert_eq!(records_digest(&input, chunk), digest, "{chunk}-byte reads");
    }
    let mb = input.len() as f64 / (1024.0 * 1024.0);
    type Case<'a> = (&'static str, Box<dyn Fn() -> usize + 'a>);
    let cases: Vec<Case> = vec![
        (
            "framer, 16 KiB reads",
            Box::new(|| framer(&input, 16 * 1024)),
        ),
        ("framer, 1500 B reads", Box::new(|| framer(&input, 1500))),
        ("framer, one feed", Box::new(|| framer(&input, input.len()))),
        ("quick-xml Reader loop", Box::new(|| quick_xml(&input))),
        ("memchr '<' (floor)", Box::new(|| memchr_floor(&input))),
    ];
    // Interleaved rounds, best time per case: the machine may be shared,
    // and the minimum is the least disturbed run.
    // SJ_BENCH_ROUNDS=1 for a quick run under callgrind.
    let rounds: usize = std::env::var("SJ_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let run = |name: &str| match only.as_deref() {
        Some(w) => name.contains(w),
        None => true,
    };
    let mut best = vec![Duration::MAX; cases.len()];
    for _ in 0..rounds {
        for (k, (name, f)) in cases.iter().enumerate() {
            if !run(name) {
                continue;
            }
            let t = Instant::now();
            let n = black_box(f());
            best[k] = best[k].min(t.elapsed());
            if !name.starts_with("memchr") {
                assert_eq!(n, expected, "{name}");
            }
        }
    }
    println!("input: {mb:.2} MiB, {expected} records (digest {digest:016x}); best of {rounds} interleaved runs\n");
    // Without the quick-xml case (SJ_BENCH_ONLY) the ratios are NaN.
    let q = if run(cases[3].0) {
        best[3].as_secs_f64()
    } else {
        f64::NAN
    };
    println!(
        "{:<24} {:>10} {:>14} {:>18} {:>18}",
        "", "MB/s", "records/s", "time / quick-xml", "MB/s / quick-xml"
    );
    for ((name, _), t) in cases.iter().zip(&best) {
        if !run(name) {
            continue;
        }
        let s = t.as_secs_f64();
        println!(
            "{:<24} {:>10.0} {:>14.0} {:>18.2} {:>18.2}",
            name,
            mb / s,
            expected as f64 / s,
            s / q,
            q / s
        );
    }
}
