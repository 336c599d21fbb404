//! XEP-0198 toward the server: enable with resumption after bind, resume
//! a session an earlier sj-proxy left in `DIR/sm/`, count and acknowledge
//! what the server sends, keep what we send until the server acknowledges
//! it, and ask for acknowledgements.
//!
//! The files (`sj::sm::Store`): `DIR/sm/session` (id, location, max, the
//! bound JID, carbons, since), `DIR/sm/counts` (the h we report, the h the
//! server reported), `DIR/sm/queue` (our unacknowledged stanzas, written
//! before they go to the server), `DIR/sm/last` (how the last start went:
//! enabled, resumed or failed). The inbound count is made durable only
//! once every record routed from those stanzas has been written to the
//! daemons (`Router` calls `handed_on` when their queues are empty), so a
//! restart neither loses nor duplicates what the daemons got.
//! Routing, the daemons and the keepalive timer are the router's.

use crate::upstream::Upstream;
use sj::account::Dir;
use sj::exit::Fatal;
use sj::jid::Jid;
use sj::sm::{Counts, Kind, Link, Nonza, Outbox, Store};
use std::time::Duration;

/// Stanzas sent before an `<r/>` goes with them.
const REQUEST_EVERY: u32 = 64;
/// What a failed write of the session's files may cost.
const RISK: &str = "a restart may lose or repeat stanzas";
/// An unacknowledged stanza waits at most this long before an `<r/>`.
const REQUEST_AFTER: Duration = Duration::from_secs(2);

fn store(dir: &Dir) -> Store {
    let d = dir.sm();
    Store::new(d.join("session"), d.join("counts"), d.join("queue"))
}

fn warn_io(what: &str, e: &std::io::Error) {
    sj::log::warn(&format!("unable to {what}: {}", sj::log::strerror(e)));
}

/// A session an earlier sj-proxy left.
pub struct Saved {
    id: String,
    full: Jid,
    carbons: bool,
    since: i64,
    counts: Counts,
    outbox: Outbox,
}

/// The session in `DIR/sm/` for the account `bare`, if there is one that
/// can be resumed; files that cannot be read are logged and ignored.
pub fn load(dir: &Dir, bare: &Jid) -> Option<Saved> {
    let st = store(dir);
    let kv = match st.load_session() {
        Ok(Some(kv)) => kv,
        Ok(None) => return None,
        Err(e) => {
            warn_io(&format!("read {}", st.session_path().display()), &e);
            return None;
        }
    };
    let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    let id = get("id").filter(|i| !i.is_empty())?.to_string();
    let full = Jid::parse(get("jid")?).ok()?;
    if full.bare() != *bare || full.resource().is_none() {
        return None;
    }
    let counts = st
        .load_counts()
        .map_err(|e| warn_io("read DIR/sm/counts", &e))
        .ok()?;
    let outbox = st
        .load_queue(counts.acked)
        .map_err(|e| warn_io("read DIR/sm/queue", &e))
        .unwrap_or_else(|_| Outbox::new(counts.acked));
    Some(Saved {
        id,
        full,
        carbons: get("carbons") == Some("1"),
        since: get("since").and_then(|s| s.parse().ok()).unwrap_or(0),
        counts,
        outbox,
    })
}

/// One line in `DIR/sm/last`: how the last start went.
fn note_last(dir: &Dir, what: &str) {
    let line = format!(
        "{what}\t{}\n",
        sj::time::utc_iso(std::time::SystemTime::now())
    );
    if let Err(e) = sj::fifo::write_atomic(&dir.sm().join("last"), line.as_bytes()) {
        warn_io("write DIR/sm/last", &e);
    }
}

/// What a resumption attempt gave.
pub enum Resumed {
    /// The session goes on: its JID, carbons, when it began.
    Yes {
        full: Jid,
        carbons: bool,
        since: i64,
        sm: Box<UpSm>,
    },
    /// It is gone: what was never acknowledged, to send again once bound.
    No(Vec<Vec<u8>>),
}

/// Resume `saved` (the server offered sm:3). Stanzas that arrive before
/// the answer go to `early`.
pub fn resume(
    up: &mut Upstream,
    dir: &Dir,
    mut saved: Saved,
    early: &mut Vec<Vec<u8>>,
) -> Result<Resumed, Fatal> {
    up.send(
        format!(
            "<resume xmlns='{}' previd='{}' h='{}'/>",
            sj::sm::NS,
            sj::xml::escape_attr(&saved.id),
            saved.counts.inbound
        )
        .as_bytes(),
    )?;
    loop {
        let (_, rec) = up.next_element()?;
        match sj::sm::parse(&rec) {
            Some(Ok(Nonza::Resumed { h, .. })) => {
                if let Err(e) = saved.outbox.ack(h) {
                    up.send_stream_error("undefined-condition");
                    return Err(Fatal::protocol(format!("the server {e}")));
                }
                let n = saved.outbox.len();
                sj::log::info(&format!(
                    "resumed the upstream session {} ({n} stanza(s) to send again)",
                    saved.full
                ));
                note_last(dir, "resumed");
                let mut st = store(dir);
                let c = Counts {
                    inbound: saved.counts.inbound,
                    acked: h,
                };
                if let Err(e) = st.save_counts(c) {
                    warn_io("write DIR/sm/counts", &e);
                }
                let mut sm = UpSm::new(st, saved.outbox, saved.counts.inbound);
                sm.resend = true;
                return Ok(Resumed::Yes {
                    full: saved.full,
                    carbons: saved.carbons,
                    since: saved.since,
                    sm: Box::new(sm),
                });
            }
            Some(Ok(Nonza::Failed { h, condition })) => {
                if let Some(h) = h {
                    // What the server says it had is not sent again.
                    let _ = saved.outbox.ack(h);
                }
                sj::log::warn(&format!(
                    "unable to resume the upstream session: {condition}; binding afresh ({} unacknowledged stanza(s) of the old session)",
                    saved.outbox.len()
                ));
                note_last(dir, &format!("failed {condition}"));
                let mut st = store(dir);
                st.clear();
                return Ok(Resumed::No(saved.outbox.take()));
            }
            Some(Ok(_)) | Some(Err(_)) | None if sj::sm::kind(&rec) != Kind::Stanza => {
                return Err(Fatal::protocol(format!(
                    "unexpected answer to <resume/>: {}",
                    String::from_utf8_lossy(&rec[..rec.len().min(200)])
                )));
            }
            _ => early.push(rec),
        }
    }
}

/// Enable stream management with resumption in a freshly bound session;
/// `None` when the server refuses. `leftover`: the unacknowledged
/// messages of a session that could not be resumed, sent first (`None`:
/// there was none to resume).
pub fn enable(
    up: &mut Upstream,
    dir: &Dir,
    full: &Jid,
    carbons: bool,
    leftover: Option<Vec<Vec<u8>>>,
    early: &mut Vec<Vec<u8>>,
) -> Result<Option<UpSm>, Fatal> {
    up.send(format!("<enable xmlns='{}' resume='true'/>", sj::sm::NS).as_bytes())?;
    let enabled = loop {
        let (_, rec) = up.next_element()?;
        match sj::sm::parse(&rec) {
            Some(Ok(Nonza::Enabled {
                id,
                resume,
                location,
                max,
            })) => break Some((id, resume, location, max)),
            Some(Ok(Nonza::Failed { condition, .. })) => {
                sj::log::warn(&format!(
                    "the server refused stream management: {condition}"
                ));
                break None;
            }
            _ if sj::sm::kind(&rec) != Kind::Stanza => {
                return Err(Fatal::protocol(format!(
                    "unexpected answer to <enable/>: {}",
                    String::from_utf8_lossy(&rec[..rec.len().min(200)])
                )));
            }
            _ => early.push(rec),
        }
    };
    let mut st = store(dir);
    st.clear();
    let Some((id, resume, location, max)) = enabled else {
        return Ok(None);
    };
    if let Err(e) = sj::fifo::make_subdir(&dir.sm()) {
        warn_io(&format!("create {}", dir.sm().display()), &e);
    }
    let id = id.filter(|_| resume).unwrap_or_default();
    let since = sj::time::now_secs().to_string();
    let max_s = max.map(|m| m.to_string()).unwrap_or_default();
    let full_s = full.to_string();
    if id.is_empty() {
        sj::log::info("stream management on, without resumption");
    } else {
        sj::log::info(&format!(
            "stream management on, resumable for {}",
            max.map_or("the server's default time".to_string(), |m| format!(
                "{m} s"
            ))
        ));
        if let Err(e) = st.save_session(&[
            ("id", &id),
            ("location", location.as_deref().unwrap_or("")),
            ("max", &max_s),
            ("jid", &full_s),
            ("carbons", if carbons { "1" } else { "0" }),
            ("since", &since),
        ]) {
            warn_io("write DIR/sm/session", &e);
        }
    }
    // After a failed resumption DIR/sm/last keeps saying so.
    if leftover.is_none() {
        note_last(dir, "enabled");
    }
    if let Err(e) = st.save_counts(Counts::default()) {
        warn_io("write DIR/sm/counts", &e);
    }
    let mut sm = UpSm::new(st, Outbox::new(0), 0);
    // Messages only: an old session's iq and presence mean nothing now
    // (presenced and iqd start over in the new one).
    for r in leftover.unwrap_or_default() {
        if r.starts_with(b"<message") {
            sm.pending.push(r);
        }
    }
    Ok(Some(sm))
}

/// The live state of stream management with the server.
pub struct UpSm {
    /// The counts, the queue and their files (`routed`: stanzas received
    /// and routed; `durable`: those whose records the daemons have).
    pub link: Link,
    /// The outbox holds stanzas to send again first (a resumed session).
    pub resend: bool,
    /// Records to send as new stanzas first (a failed resumption's
    /// messages).
    pub pending: Vec<Vec<u8>>,
}

/// What the router does with a record from the server.
pub enum Inbound {
    /// A stanza (counted): route it.
    Route,
    /// A nonza of ours, handled.
    Done,
    /// The server broke the protocol: end the stream with this condition.
    Fail(&'static str, String),
}

impl UpSm {
    fn new(store: Store, out: Outbox, inbound: u32) -> UpSm {
        UpSm {
            link: Link::new(store, out, inbound, REQUEST_EVERY, REQUEST_AFTER, RISK),
            resend: false,
            pending: Vec::new(),
        }
    }

    /// The unacknowledged stanzas of a resumed session, to write again
    /// (they are in the outbox and the queue file already).
    pub fn take_resend(&mut self) -> Vec<Vec<u8>> {
        if !std::mem::take(&mut self.resend) {
            return Vec::new();
        }
        self.link
            .out
            .unacked()
            .map(|(_, r)| {
                let mut v = r.to_vec();
                v.push(b'\n');
                v
            })
            .collect()
    }

    /// A record from the server.
    pub fn inbound(&mut self, rec: &[u8]) -> Inbound {
        match sj::sm::kind(rec) {
            Kind::Stanza => {
                self.link.received();
                return Inbound::Route;
            }
            Kind::Other => return Inbound::Route,
            Kind::Sm => {}
        }
        match sj::sm::parse(rec) {
            None => Inbound::Route,
            Some(Ok(n @ (Nonza::R | Nonza::A { .. }))) => match self.link.on_nonza(&n) {
                Ok(()) => Inbound::Done,
                Err(e) => Inbound::Fail("undefined-condition", format!("the server {e}")),
            },
            Some(Ok(other)) => Inbound::Fail(
                "unsupported-stanza-type",
                format!("the server sent {other:?} in an established session"),
            ),
            Some(Err(why)) => {
                Inbound::Fail("undefined-condition", format!("the server sent {why}"))
            }
        }
    }

    /// End of a turn: `handed_on` when the daemons' queues are empty (all
    /// routed records are in their pipes), so the count becomes durable.
    /// What to send the server now (`<a/>`, `<r/>`), not counted.
    pub fn turn(&mut self, handed_on: bool) -> Option<Vec<u8>> {
        let send: Vec<u8> = self
            .link
            .turn(handed_on, true)
            .into_iter()
            .flat_map(|n| n.into_bytes().into_iter().chain([b'\n']))
            .collect();
        (!send.is_empty()).then_some(send)
    }

    /// An `<r/>` for the keepalive (the server's silence), unless one is
    /// out already.
    pub fn keepalive_request(&mut self) -> Vec<u8> {
        let mut r = self.link.request_now().into_bytes();
        r.push(b'\n');
        r
    }

    /// An `<r/>` has gone unanswered for `max`.
    pub fn overdue(&self, max: Duration) -> bool {
        self.link.request_sent.is_some_and(|t| t.elapsed() >= max)
    }

    /// The session ends: `clean` (we closed the stream: nothing to resume)
    /// removes the files; otherwise the counts are saved for the next
    /// start, with `handed_on` as in `turn`.
    pub fn finish(&mut self, clean: bool, handed_on: bool) {
        if clean {
            self.link.store.clear();
            return;
        }
        let _ = self.turn(handed_on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(tag: &str, inbound: u32, acked: u32) -> (UpSm, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("sjp-sm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        let st = Store::new(d.join("session"), d.join("counts"), d.join("queue"));
        (UpSm::new(st, Outbox::new(acked), inbound), d)
    }

    #[test]
    fn counts_wrap_and_floods_get_one_answer_a_turn() {
        let (mut s, d) = sm("flood", u32::MAX, u32::MAX);
        for _ in 0..3 {
            assert!(matches!(
                s.inbound(b"<message><body>x</body></message>"),
                Inbound::Route
            ));
        }
        for _ in 0..10_000 {
            assert!(matches!(
                s.inbound(b"<r xmlns='urn:xmpp:sm:3'/>"),
                Inbound::Done
            ));
        }
        // The count is reported once the daemons have the records.
        let out = s.turn(false).expect("an answer");
        assert_eq!(out, b"<a xmlns='urn:xmpp:sm:3' h='4294967295'/>\n");
        let out = s.turn(true);
        assert_eq!(out, None, "one answer for the whole flood");
        assert!(matches!(
            s.inbound(b"<r xmlns='urn:xmpp:sm:3'/>"),
            Inbound::Done
        ));
        assert_eq!(
            s.turn(true).expect("answer"),
            b"<a xmlns='urn:xmpp:sm:3' h='2'/>\n"
        );
        let c = Store::new(d.join("session"), d.join("counts"), d.join("queue"))
            .load_counts()
            .expect("counts");
        assert_eq!(c.inbound, 2);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_undefined_condition() {
        let (mut s, d) = sm("ack", 0, u32::MAX - 1);
        s.link
            .sending(b"<message to='b@x'><body>1</body></message>\n");
        s.link
            .sending(b"<message to='b@x'><body>2</body></message>\n");
        s.link.sending(b"<r xmlns='urn:xmpp:sm:3'/>\n");
        assert_eq!(s.link.out.len(), 2, "nonzas are not counted");
        let r = s.turn(true).expect("a request");
        assert_eq!(r, b"<r xmlns='urn:xmpp:sm:3'/>\n");
        assert!(matches!(
            s.inbound(b"<a xmlns='urn:xmpp:sm:3' h='4294967295'/>"),
            Inbound::Done
        ));
        assert_eq!(s.link.out.len(), 1);
        assert!(!s.overdue(Duration::ZERO), "answered");
        match s.inbound(b"<a xmlns='urn:xmpp:sm:3' h='1'/>") {
            Inbound::Fail(c, why) => {
                assert_eq!(c, "undefined-condition");
                assert!(why.contains("only 0 were sent"), "{why}");
            }
            _ => panic!("accepted"),
        }
        assert!(matches!(
            s.inbound(b"<a xmlns='urn:xmpp:sm:3'/>"),
            Inbound::Fail(..)
        ));
        s.turn(true);
        let q = std::fs::read_to_string(d.join("queue")).expect("queue");
        assert!(q.starts_with("4294967295 <message"), "{q}");
        assert!(q.contains("\n0 <message"), "{q}");
        std::fs::remove_dir_all(&d).ok();
    }
}
