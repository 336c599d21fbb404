//! sj-bench: every benchmark of the project in one run, printed as one
//! Markdown table (BENCHMARKS.md holds a real one).
//!
//! What it measures, each beside a baseline run in the same process:
//! the framer (rows taken from `cargo bench -p sj --bench framer`, whose
//! output `-f` names), the record pipeline sj-proxy → mirrord → raw client
//! FIFOs against `cat`/`tee` relays over as many pipes, chat messages from
//! a contact on a real Prosody to a client connected directly against one
//! connected through sj-proxy and sj-c2s, peak RSS of every daemon, and how
//! throughput and RSS grow with record size and client count. Targets are
//! reported as ratios with a verdict, never asserted. Every run is bounded
//! in records and in time.
//!
//! Nothing in a measured path is Python: the fake server, the load client
//! and the drains are this program.

mod archive;
mod contacts;
mod pipeline;
mod procfs;
mod room;
mod server;
mod spawn;
mod table;
mod xmpp;

use pipeline::{Case, Pipeline};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use table::{fit, mib, quantile, size, thousands, Table};

const USAGE: &str = "usage: sj-bench [-b BIN_DIR] [-f FRAMER_OUTPUT] [-r ROUNDS] [-s pipeline,server,contacts,archive,rooms,sm] [-c SIZE:CLIENTS]...\n       sj-bench --peak-rss PROG [ARGS...]";

/// A chat message with the usual extensions is about this big.
const TYPICAL: usize = 512;
const SIZES: [usize; 5] = [100, 1024, 16 << 10, 64 << 10, 256 << 10];
const CLIENTS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Bytes each client is sent per pipeline run (before the floors below).
const BYTES_PER_RUN: usize = 48 << 20;
/// Chat messages per latency round (one in flight) and per rate round.
const LATENCY_N: usize = 1000;
const RATE_N: usize = 10_000;
/// Messages in flight during a rate round: enough that the rate is the
/// servers' capacity, not the round trip.
const WINDOW: usize = 256;
/// Messages each of the 64 sj-c2s clients gets in the memory run.
const FAN_N: usize = 1000;
const MANY_CONTACTS: usize = 10_000;
const CONTACT_MESSAGES: usize = 50_000;
/// Messages sent one at a time to messaged (`contacts::lone`).
const LONE_MESSAGES: usize = 1_000;

struct Opts {
    bin: PathBuf,
    framer: Option<PathBuf>,
    rounds: usize,
    /// Sections to run (all by default).
    only: Vec<String>,
    /// Pipeline cases to run (all by default): (record size, clients).
    cases: Vec<(usize, usize)>,
}

const SECTIONS: [&str; 6] = ["pipeline", "server", "contacts", "archive", "rooms", "sm"];

impl Opts {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn parse_args() -> Result<Opts, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let here = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let mut o = Opts {
        bin: here,
        framer: None,
        rounds: 5,
        only: Vec::new(),
        cases: Vec::new(),
    };
    let usage = |e: lexopt::Error| format!("{e}\n{USAGE}");
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('b') => o.bin = p.value().map_err(usage)?.into(),
            Short('f') => o.framer = Some(p.value().map_err(usage)?.into()),
            Short('r') => {
                o.rounds = p.value().map_err(usage)?.parse().map_err(usage)?;
                if o.rounds == 0 {
                    return Err(format!("-r must be at least 1\n{USAGE}"));
                }
            }
            Short('s') => {
                let v = p.value().map_err(usage)?.string().map_err(usage)?;
                for s in v.split(',') {
                    if !SECTIONS.contains(&s) {
                        return Err(format!("unknown section {s:?}\n{USAGE}"));
                    }
                    o.only.push(s.to_string());
                }
            }
            Short('c') => {
                let v = p.value().map_err(usage)?.string().map_err(usage)?;
                let case = v
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .filter(|&(s, k): &(usize, usize)| s > 0 && k > 0)
                    .ok_or_else(|| format!("-c wants SIZE:CLIENTS, got {v:?}\n{USAGE}"))?;
                o.cases.push(case);
            }
            Short('h') | Long("help") => return Err(USAGE.into()),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    for prog in ["sj-proxy", "sj-c2s", "sj-passwd", "messaged", "mirrord"] {
        if !o.bin.join(prog).is_file() {
            return Err(format!(
                "unable to find {}/{prog}: build with `cargo build --release` or give -b",
                o.bin.display()
            ));
        }
    }
    Ok(o)
}

fn progress(msg: &str) {
    eprintln!("sj-bench: {msg}");
}

fn machine(prosody: &str) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown kernel".into());
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "rustc (unknown)".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|k| format!("{:.1} GiB RAM", k as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    vec![
        format!("CPU: {model}, {cores} cores available, {mem}"),
        format!("kernel: {kernel}"),
        format!("rustc: {rustc}"),
        format!("server: {prosody}"),
        format!("date: {}", sj::time::utc_iso(std::time::SystemTime::now())),
    ]
}

/// Rows from the framer bench's own output: each framer line against the
/// quick-xml line of the same run.
fn framer_rows(t: &mut Table, path: Option<&Path>) {
    let Some(path) = path else {
        t.row(
            "1",
            "framer",
            "not run",
            "",
            "",
            "",
            "give -f with the output of `cargo bench -p sj --bench framer`",
        );
        return;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return t.fail(
                "1",
                "framer",
                &format!("unable to read {}: {e}", path.display()),
            )
        }
    };
    // "<name>   <MB/s> <records/s> <time / quick-xml> <MB/s / quick-xml>"
    const COLUMNS: usize = 4;
    let rows: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() <= COLUMNS {
                return None;
            }
            let nums: Vec<f64> = f[f.len() - COLUMNS..]
                .iter()
                .filter_map(|x| x.parse().ok())
                .collect();
            (nums.len() == COLUMNS).then(|| (f[..f.len() - COLUMNS].join(" "), nums[0]))
        })
        .collect();
    let Some(q) = rows
        .iter()
        .find(|(n, _)| n.starts_with("quick-xml"))
        .map(|r| r.1)
    else {
        return t.fail(
            "1",
            "framer",
            &format!("no quick-xml line in {}", path.display()),
        );
    };
    let input = text
        .lines()
        .find(|l| l.starts_with("input:"))
        .unwrap_or("")
        .to_string();
    for (name, mbs) in rows.iter().filter(|(n, _)| n.starts_with("framer")) {
        t.row(
            "1",
            format!("{name}: MB/s"),
            format!("{mbs:.0}"),
            format!("quick-xml {q:.0}"),
            format!("{:.2}", mbs / q),
            format!("≥ 0.80 {}", if mbs / q >= 0.8 { "met" } else { "MISSED" }),
            input.clone(),
        );
    }
}

#[derive(Default)]
struct Best {
    sj: Option<f64>,
    base: Option<f64>,
    rss: BTreeMap<String, u64>,
    err: Option<String>,
    warnings: usize,
}

fn records_for(size: usize, clients: usize) -> usize {
    let n = BYTES_PER_RUN / (size + 1) / clients;
    n.max(if size <= 1024 { 8000 } else { 128 })
}

fn run_pipeline(o: &Opts) -> BTreeMap<(usize, usize), (Case, Best)> {
    let cases: Vec<Case> = SIZES
        .iter()
        .map(|&s| (s, 1))
        .chain(CLIENTS.iter().map(|&k| (TYPICAL, k)))
        .filter(|c| o.cases.is_empty() || o.cases.contains(c))
        .map(|(size, clients)| Case {
            size,
            clients,
            records: records_for(size, clients),
        })
        .collect();
    let mut out: BTreeMap<(usize, usize), (Case, Best)> = cases
        .iter()
        .map(|c| ((c.size, c.clients), (*c, Best::default())))
        .collect();
    let mut p = Pipeline::new(&o.bin);
    for round in 1..=o.rounds {
        for c in &cases {
            progress(&format!(
                "pipeline round {round}/{}: {} records of {} to {} client(s)",
                o.rounds,
                c.records,
                size(c.size),
                c.clients
            ));
            let Some((_, b)) = out.get_mut(&(c.size, c.clients)) else {
                continue;
            };
            match p.baseline(*c) {
                Ok(r) => b.base = Some(b.base.map_or(r.secs, |s: f64| s.min(r.secs))),
                Err(e) => b.err = Some(format!("baseline: {e}")),
            }
            match p.proxy(*c) {
                Ok(r) => {
                    b.sj = Some(b.sj.map_or(r.secs, |s: f64| s.min(r.secs)));
                    for (name, k) in r.rss {
                        let e = b.rss.entry(name).or_default();
                        *e = (*e).max(k);
                    }
                    b.warnings += r.warnings.len();
                }
                Err(e) => b.err = Some(e),
            }
        }
    }
    out
}

/// Item 6: what XEP-0198 costs the pipeline (numbering, the queue file
/// written ahead, the counts rewritten each turn, `<a/>` answers): the
/// typical case with and without it, interleaved, best of each.
fn sm_rows(t: &mut Table, o: &Opts) {
    let c = Case {
        size: TYPICAL,
        clients: 1,
        records: records_for(TYPICAL, 1),
    };
    let measure = format!(
        "pipeline {}, 1 client, XEP-0198 on: records/s",
        size(TYPICAL)
    );
    let mut p = Pipeline::new(&o.bin);
    let (mut off, mut on) = (None::<f64>, None::<f64>);
    for round in 1..=o.rounds {
        progress(&format!(
            "sm round {round}/{}: {} records",
            o.rounds, c.records
        ));
        for sm in [false, true] {
            match p.proxy_sm(c, sm) {
                Ok(r) => {
                    let best = if sm { &mut on } else { &mut off };
                    *best = Some(best.map_or(r.secs, |s| s.min(r.secs)));
                }
                Err(e) => return t.fail("6", measure, &e),
            }
        }
    }
    let (Some(off), Some(on)) = (off, on) else {
        return t.fail("6", measure, "no run finished");
    };
    let (r_on, r_off) = (c.records as f64 / on, c.records as f64 / off);
    let ratio = r_on / r_off;
    t.row(
        "6",
        measure,
        thousands(r_on),
        format!("SM off {}", thousands(r_off)),
        format!("{ratio:.3}"),
        format!("≥ 0.95 {}", if ratio >= 0.95 { "met" } else { "MISSED" }),
        format!(
            "{} rec, an <r/> from the server every 64; {:.2} µs/rec added; best of {} interleaved",
            c.records,
            (on - off) / c.records as f64 * 1e6,
            o.rounds
        ),
    );
}

fn rss_note(rss: &BTreeMap<String, u64>) -> String {
    let order = ["sj-proxy", "mirrord", "messaged", "presenced", "iqd"];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|n| {
            rss.get(*n)
                .map(|k| format!("{n} {:.1}", *k as f64 / 1024.0))
        })
        .collect();
    format!("peak RSS MiB: {}", parts.join(", "))
}

/// `all`: every case was asked for (no -c), so a missing one is a failure.
fn pipeline_rows(t: &mut Table, res: &BTreeMap<(usize, usize), (Case, Best)>, all: bool) {
    let rate = |c: &Case, s: f64| c.records as f64 / s;
    let row = |t: &mut Table, item: &'static str, size_: usize, k: usize, target: Option<f64>| {
        let Some((c, b)) = res.get(&(size_, k)) else {
            return;
        };
        let measure = format!(
            "pipeline {}, {k} client{}: records/s",
            size(size_),
            if k == 1 { "" } else { "s" }
        );
        if let Some(e) = &b.err {
            return t.fail(item, measure, e);
        }
        let (Some(sj), Some(base)) = (b.sj, b.base) else {
            return t.fail(item, measure, "no run finished");
        };
        let ratio = rate(c, sj) / rate(c, base);
        let tgt = match target {
            Some(x) => format!("≥ {x:.2} {}", if ratio >= x { "met" } else { "MISSED" }),
            None => String::new(),
        };
        let mut note = format!(
            "{} rec; {:.1} µs/rec; {:.0} MB/s per client; {}",
            c.records,
            sj / c.records as f64 * 1e6,
            rate(c, sj) * (c.size + 1) as f64 / 1e6,
            rss_note(&b.rss)
        );
        if b.warnings > 0 {
            note.push_str(&format!("; {} warnings logged", b.warnings));
        }
        let base_name = if k == 1 { "cat|cat" } else { "cat|tee" };
        t.row(
            item,
            measure,
            thousands(rate(c, sj)),
            format!("{base_name} {}", thousands(rate(c, base))),
            format!("{ratio:.3}"),
            tgt,
            note,
        );
    };
    row(t, "2", TYPICAL, 1, Some(0.25));
    row(t, "2", TYPICAL, 8, None);
    row(t, "2", TYPICAL, 64, None);
    // Cost per extra client: slope of time per record against clients.
    let pts = |pick: fn(&Best) -> Option<f64>| -> Vec<(f64, f64)> {
        CLIENTS
            .iter()
            .filter_map(|&k| {
                let (c, b) = res.get(&(TYPICAL, k))?;
                Some((k as f64, pick(b)? / c.records as f64 * 1e6))
            })
            .collect()
    };
    let (sj_pts, base_pts) = (pts(|b| b.sj), pts(|b| b.base));
    if sj_pts.len() == CLIENTS.len() && base_pts.len() == CLIENTS.len() {
        let (a, b, r2) = fit(&sj_pts);
        let (ba, bb, br2) = fit(&base_pts);
        t.row(
            "2",
            format!("pipeline {}: µs per record per extra client", size(TYPICAL)),
            format!("{b:.2} (r² {r2:.3})"),
            format!("cat|tee {bb:.2} (r² {br2:.3})"),
            format!("{:.2}", b / bb),
            format!("linear: {}", if r2 >= 0.95 { "yes" } else { "NO" }),
            format!(
                "fit over 1..64 clients: sj {a:.2} + {b:.2}·K µs, cat|tee {ba:.2} + {bb:.2}·K µs"
            ),
        );
    } else if all {
        t.fail(
            "2",
            "pipeline: cost per extra client",
            "not every client count ran",
        );
    }
    for s in SIZES {
        row(t, "5", s, 1, None);
    }
    for k in CLIENTS {
        row(t, "5", TYPICAL, k, None);
    }
}

/// Clients in the room run; one of them joined.
const ROOM_CLIENTS: usize = 8;

/// Groupchat from a room one client of `ROOM_CLIENTS` joined, against the
/// 1-client chat pipeline of the same size in the same rounds: the room's
/// traffic should cost one delivery, not one per client.
fn room_rows(t: &mut Table, o: &Opts) {
    let records = records_for(TYPICAL, 1);
    let room_case = Case {
        size: TYPICAL,
        clients: ROOM_CLIENTS,
        records,
    };
    let one = Case {
        size: TYPICAL,
        clients: 1,
        records,
    };
    let measure = format!(
        "room groupchat {}, 1 of {ROOM_CLIENTS} clients in it: records/s",
        size(TYPICAL)
    );
    let mut p = Pipeline::new(&o.bin);
    let (mut best_room, mut best_one): (Option<f64>, Option<f64>) = (None, None);
    for round in 1..=o.rounds {
        progress(&format!(
            "rooms round {round}/{}: {records} groupchat records of {} to 1 of {ROOM_CLIENTS} clients",
            o.rounds,
            size(TYPICAL)
        ));
        match room::run(&o.bin, room_case) {
            Ok(r) => best_room = Some(best_room.map_or(r.secs, |s| s.min(r.secs))),
            Err(e) => return t.fail("6", measure, &e),
        }
        match p.proxy(one) {
            Ok(r) => best_one = Some(best_one.map_or(r.secs, |s| s.min(r.secs))),
            Err(e) => return t.fail("6", measure, &format!("1-client pipeline: {e}")),
        }
    }
    let (Some(room_s), Some(one_s)) = (best_room, best_one) else {
        return t.fail("6", measure, "no run finished");
    };
    let (room_rate, one_rate) = (records as f64 / room_s, records as f64 / one_s);
    let ratio = room_rate / one_rate;
    t.row(
        "6",
        measure,
        thousands(room_rate),
        format!("chat to 1 client {}", thousands(one_rate)),
        format!("{ratio:.3}"),
        format!("≥ 0.80 {}", if ratio >= 0.8 { "met" } else { "MISSED" }),
        format!(
            "{records} rec; {:.1} µs/rec; the {} others get none (checked)",
            room_s / records as f64 * 1e6,
            ROOM_CLIENTS - 1
        ),
    );
}

/// Memory by program: (largest peak, sum of peaks, count, anon, file).
#[derive(Default, Clone, Copy)]
struct Agg {
    big: u64,
    sum: u64,
    n: usize,
    anon: u64,
    file: u64,
    pss: u64,
    private: u64,
}

fn by_program(mem: &[procfs::Mem]) -> BTreeMap<String, Agg> {
    let mut m: BTreeMap<String, Agg> = BTreeMap::new();
    for p in mem {
        let e = m.entry(p.name.clone()).or_default();
        e.big = e.big.max(p.hwm);
        e.sum += p.hwm;
        e.n += 1;
        e.anon += p.anon;
        e.file += p.file;
        e.pss += p.pss;
        e.private += p.private;
    }
    m
}

const DAEMONS: [&str; 6] = [
    "sj-proxy",
    "messaged",
    "presenced",
    "iqd",
    "mirrord",
    "sj-c2s",
];

fn memory_rows(t: &mut Table, idle: &[procfs::Mem], many: &[procfs::Mem], floor: &procfs::Mem) {
    let idle = by_program(idle);
    let many = by_program(many);
    let (mut total, mut anon, mut file, mut pss, mut private) = (0, 0, 0, 0, 0);
    for d in DAEMONS {
        let Some(a) = idle.get(d) else {
            t.fail("4", format!("peak RSS idle: {d}"), "process not found");
            continue;
        };
        total += a.big;
        anon += a.anon;
        file += a.file;
        pss += a.pss;
        private += a.private;
        let m = many
            .get(d)
            .map(|m| {
                if m.n > 1 {
                    format!(
                        "with 64 clients: {} each at most, {} for all {}",
                        mib(m.big),
                        mib(m.sum),
                        m.n
                    )
                } else {
                    format!("with 64 clients: {}", mib(m.big))
                }
            })
            .unwrap_or_default();
        t.row(
            "4",
            format!("peak RSS idle: {d}"),
            mib(a.big),
            format!("sleep {}", mib(floor.hwm)),
            format!("{:.2}", a.big as f64 / floor.hwm as f64),
            "",
            format!(
                "now {} anon + {} file, PSS {}, private {}; {m}",
                mib(a.anon),
                mib(a.file),
                mib(a.pss),
                mib(a.private)
            ),
        );
    }
    let limit = 10 * 1024;
    t.row(
        "4",
        "peak RSS idle: all six together",
        mib(total),
        format!("6 × sleep {}", mib(6 * floor.hwm)),
        format!("{:.2}", total as f64 / (6 * floor.hwm) as f64),
        format!("≤ 10 MiB {}", if total <= limit { "met" } else { "MISSED" }),
        format!(
            "one sj-c2s with one client, nothing flowing; RSS now {} anon (private) + {} file-backed (libc, program text: page cache shared by all)",
            mib(anon),
            mib(file)
        ),
    );
    // RSS counts libc and the other shared pages once per process; PSS
    // divides each among the processes mapping it, so summed it is what the
    // six cost the machine together; private pages are what stopping them
    // would free.
    t.row(
        "4",
        "PSS idle: all six together",
        mib(pss),
        format!("6 × sleep {}", mib(6 * floor.pss)),
        format!("{:.2}", pss as f64 / (6 * floor.pss).max(1) as f64),
        format!("≤ 10 MiB {}", if pss <= limit { "met" } else { "MISSED" }),
        format!(
            "same processes and moment as the RSS rows; private to them (freed if they stop): {}",
            mib(private)
        ),
    );
}

fn contact_rows(t: &mut Table, bin: &Path) {
    // Each size runs three times: no messages (startup: the roster made into
    // directories and FIFOs), one message per contact (each creates its
    // out log), then CONTACT_MESSAGES more; the differences are the cost of
    // a contact's first message and of every later one.
    let run = |n: usize| {
        progress(&format!("messaged with {n} contact(s)"));
        let start = contacts::run(bin, n, 0)?;
        let first = contacts::run(bin, n, n)?;
        let full = contacts::run(bin, n, n + CONTACT_MESSAGES)?;
        Ok::<_, String>([start, first, full])
    };
    let us = |a: &contacts::Outcome, b: &contacts::Outcome, count: usize| {
        (b.secs - a.secs).max(0.0) * 1e6 / count as f64
    };
    match (run(MANY_CONTACTS), run(1)) {
        (Ok([m0, m1, m]), Ok([o0, o1, o])) => {
            let (many_us, one_us) = (us(&m1, &m, CONTACT_MESSAGES), us(&o1, &o, CONTACT_MESSAGES));
            t.row(
                "4",
                format!("peak RSS: messaged, {MANY_CONTACTS} contacts"),
                mib(m.kib),
                format!("1 contact {}", mib(o.kib)),
                format!("{:.2}", m.kib as f64 / o.kib as f64),
                "",
                format!(
                    "{:.0} B per contact; startup (roster to {MANY_CONTACTS} directories and FIFOs) {:.2} s",
                    (m.kib as f64 - o.kib as f64) * 1024.0 / MANY_CONTACTS as f64,
                    m0.secs
                ),
            );
            t.row(
                "4",
                format!("messaged, {MANY_CONTACTS} contacts: µs per message logged"),
                format!("{many_us:.1}"),
                format!("1 contact {one_us:.1}"),
                format!("{:.2}", many_us / one_us.max(0.001)),
                "",
                format!(
                    "{CONTACT_MESSAGES} messages round-robin (each to another out log); a contact's first message, which creates its out log: {:.0} µs (1 contact: {:.0} µs)",
                    us(&m0, &m1, MANY_CONTACTS),
                    us(&o0, &o1, 1)
                ),
            );
        }
        (Err(e), _) | (_, Err(e)) => t.fail("4", "messaged with many contacts", &e),
    }
    progress("messaged: messages that come alone");
    match (
        contacts::lone(bin, MANY_CONTACTS, LONE_MESSAGES),
        contacts::lone(bin, 1, LONE_MESSAGES),
    ) {
        (Ok(many), Ok(one)) => t.row(
            "4",
            format!("messaged, {MANY_CONTACTS} contacts: CPU µs per lone message"),
            format!("{many:.0}"),
            format!("1 contact {one:.0}"),
            format!("{:.2}", many / one.max(1.0)),
            "",
            format!(
                "{LONE_MESSAGES} messages 1 ms apart, a wakeup each: the cost of a quiet account's message, however many in FIFOs wait (clock ticks over all of them)"
            ),
        ),
        (Err(e), _) | (_, Err(e)) => t.fail("4", "messaged, messages that come alone", &e),
    }
}

struct ServerOutcome {
    version: String,
    idle: Rss,
    many: Rss,
    floor: procfs::Mem,
}

fn run_server(t: &mut Table, o: &Opts) -> Result<ServerOutcome, String> {
    let work = spawn::Scratch::new("server")?;
    progress("starting Prosody");
    let mut prosody = server::Prosody::start(&work.0.join("prosody"))?;
    let version = prosody.version();
    for acct in [server::DIRECT, server::PROXIED, server::CONTACT] {
        prosody.register(acct)?;
    }
    progress("starting sj-proxy and sj-c2s");
    let mut proxied = server::Proxied::start(&o.bin, &work.0, &prosody)?;
    let result = chat_rows(t, o, &prosody, &proxied);
    proxied.stop();
    prosody.stop();
    let warnings = pipeline::warnings(&proxied.log);
    if !warnings.is_empty() {
        progress(&format!(
            "sj-proxy/sj-c2s logged {} warnings, first: {}",
            warnings.len(),
            warnings[0]
        ));
    }
    let (idle, many) = result?;
    let floor = server::floor()?;
    Ok(ServerOutcome {
        version,
        idle,
        many,
        floor,
    })
}

type Rss = Vec<procfs::Mem>;

/// Items 3 and 4 against the running server: rows for rate and latency,
/// and the peak RSS idle and with 64 clients.
fn chat_rows(
    t: &mut Table,
    o: &Opts,
    prosody: &server::Prosody,
    proxied: &server::Proxied,
) -> Result<(Rss, Rss), String> {
    let mut bob = prosody.login(server::CONTACT, "load")?;
    let mut direct = prosody.login(server::DIRECT, "load")?;
    let mut via = proxied.login("load")?;
    let mut d = server::Route {
        rx: &mut direct,
        to: server::DIRECT.0,
        tag: "d",
    };
    let mut p = server::Route {
        rx: &mut via,
        to: server::PROXIED.0,
        tag: "p",
    };
    d.warm(&mut bob)?;
    p.warm(&mut bob)?;
    let idle = proxied.memory();
    let (mut lat_d, mut lat_p) = (Vec::new(), Vec::new());
    let (mut rate_d, mut rate_p) = (f64::INFINITY, f64::INFINITY);
    for round in 1..=o.rounds {
        progress(&format!("chat round {round}/{}", o.rounds));
        // Alternating, so both paths see the same disturbances.
        for i in 0..LATENCY_N {
            let id = format!("l{round}-{i}");
            lat_d.push(d.one(&mut bob, &id)?);
            lat_p.push(p.one(&mut bob, &id)?);
        }
        rate_d = rate_d.min(d.flood(&mut bob, RATE_N, WINDOW, round)?);
        rate_p = rate_p.min(p.flood(&mut bob, RATE_N, WINDOW, round)?);
    }
    let (rd, rp) = (RATE_N as f64 / rate_d, RATE_N as f64 / rate_p);
    let ratio = rp / rd;
    t.row(
        "3",
        "chat messages contact → client: msg/s",
        thousands(rp),
        format!("direct {}", thousands(rd)),
        format!("{ratio:.3}"),
        format!("≥ 0.90 {}", if ratio >= 0.9 { "met" } else { "MISSED" }),
        format!(
            "{RATE_N} messages, {WINDOW} in flight, best of {}",
            o.rounds
        ),
    );
    for (q, name, target) in [(0.5, "p50", None), (0.99, "p99", Some(100.0))] {
        let (a, b) = (quantile(&mut lat_p, q), quantile(&mut lat_d, q));
        let added = a - b;
        let tgt = target
            .map(|x| format!("≤ +{x:.0} µs {}", if added <= x { "met" } else { "MISSED" }))
            .unwrap_or_default();
        t.row(
            "3",
            format!("chat latency {name}: µs"),
            format!("{a:.0}"),
            format!("direct {b:.0}"),
            format!("{added:+.0} µs"),
            tgt,
            format!(
                "{} messages each, one in flight, the two paths alternating",
                lat_p.len()
            ),
        );
    }
    progress("64 clients through sj-c2s");
    let mut clients = vec![via];
    for i in 1..64 {
        clients.push(proxied.login(&format!("load{i}"))?);
    }
    let secs = server::fan_out(&mut bob, &mut clients, FAN_N)?;
    t.row(
        "3",
        "chat messages to 64 sj-c2s clients: msg/s",
        thousands(FAN_N as f64 / secs),
        "",
        "",
        "",
        format!(
            "{FAN_N} messages, each delivered to all 64 ({} deliveries/s)",
            thousands(64.0 * FAN_N as f64 / secs)
        ),
    );
    let many = proxied.memory();
    for c in clients.into_iter().chain([bob, direct]) {
        c.close();
    }
    Ok((idle, many))
}

fn run() -> Result<bool, String> {
    let o = parse_args()?;
    let mut t = Table::default();
    framer_rows(&mut t, o.framer.as_deref());
    if o.wants("pipeline") {
        let res = run_pipeline(&o);
        pipeline_rows(&mut t, &res, o.cases.is_empty());
    }
    let mut version = "Prosody (not run)".to_string();
    if o.wants("server") {
        match run_server(&mut t, &o) {
            Ok(s) => {
                memory_rows(&mut t, &s.idle, &s.many, &s.floor);
                version = s.version;
            }
            Err(e) => {
                t.fail("3", "against Prosody", &e);
                version = "Prosody (failed)".into();
            }
        }
    }
    if o.wants("contacts") {
        contact_rows(&mut t, &o.bin);
    }
    if o.wants("archive") {
        archive::rows(&mut t, &o.bin, o.rounds);
    }
    if o.wants("rooms") {
        room_rows(&mut t, &o);
    }
    if o.wants("sm") {
        sm_rows(&mut t, &o);
    }
    println!("sj-bench: one run, {} round(s) per measurement\n", o.rounds);
    for l in machine(&version) {
        println!("- {l}");
    }
    println!();
    t.print();
    Ok(t.failures == 0)
}

fn main() -> ExitCode {
    sj::log::init("sj-bench");
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let r = if argv.first().is_some_and(|a| a == "--peak-rss") {
        contacts::peak_rss_main(&argv[1..]).map(|()| true)
    } else {
        run()
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(111),
        Err(e) => {
            sj::log::fatal(&e);
            ExitCode::from(111)
        }
    }
}
