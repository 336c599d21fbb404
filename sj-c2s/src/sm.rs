//! XEP-0198 toward a client: `<enable/>` after bind, `<r/>` and `<a/>`,
//! and the state a later sj-c2s process needs to resume the session, kept
//! under `DIR/clients/NAME` (`sm`: id, account, carbons, availability,
//! when the client went; `sm-counts`; `sm-queue`: the stanzas the client
//! has not acknowledged, written before they are sent).
//!
//! One process serves one connection, so resumption is a hand-over
//! between processes: the process whose client went away keeps the
//! session (it "hibernates") for the window, leaving `in` unread; a new process
//! asked to resume writes `sm-takeover`, stops the old one with SIGTERM,
//! waits for it to exit, and goes on from the files. The session loop and
//! the registration are session.rs's; this file holds the protocol and
//! the files.

use sj::account::{Account, ClientDir};
use sj::sm::{Counts, Link, Nonza, Outbox, Store};
use std::time::{Duration, Instant, SystemTime};

/// Stanzas sent before an `<r/>` goes with them.
const REQUEST_EVERY: u32 = 64;
/// An unacknowledged stanza waits at most this long before an `<r/>`.
const REQUEST_AFTER: Duration = Duration::from_secs(5);
/// What a failed write of the session's files may cost.
const RISK: &str = "resumption may lose or repeat stanzas";
/// How long a resuming process waits for the old one to hand over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

fn store(cdir: &ClientDir) -> Store {
    Store::new(
        cdir.sm_file(""),
        cdir.sm_file("counts"),
        cdir.sm_file("queue"),
    )
}

fn hexname(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A session ends unresumed: what its client never acknowledged is to be
/// replayed when `name` binds again. The archive id before the first
/// unacknowledged message goes to `DIR/archive/rewind/NAME`, which
/// mirrord takes (sj(7), Catch-up). Nothing without an archive.
pub fn leave_rewind(acct: &Account, name: &str, out: &Outbox) {
    let archive = acct.dir().archive();
    if !archive.is_dir() {
        return;
    }
    let Some(first) = out
        .unacked()
        .filter_map(|(_, rec)| sj::archive::stamped_id(rec, acct.bare()))
        .min()
    else {
        return;
    };
    let path = acct.dir().archive_rewind(name);
    let written = path
        .parent()
        .map_or(Ok(()), sj::fifo::make_subdir)
        .and_then(|()| {
            sj::fifo::write_atomic(&path, format!("{}\n", first.saturating_sub(1)).as_bytes())
        });
    match written {
        Ok(()) => sj::log::info(&format!(
            "{name}: {} unacknowledged stanza(s) come again at the next bind",
            out.len()
        )),
        Err(e) => sj::log::warn(&format!(
            "unable to write {}: {}",
            path.display(),
            sj::log::strerror(&e)
        )),
    }
}

/// The client name a resumption id names (`HEX(NAME).TOKEN`).
pub fn name_of(previd: &str) -> Option<String> {
    unhex(previd.split_once('.')?.0)
}

/// The live stream management state of one client.
pub struct ClientSm {
    pub id: String,
    /// The counts, the queue and their files (`routed`: stanzas from the
    /// client passed on; `durable`: those written into `out`).
    pub link: Link,
}

/// What session.rs does with a nonza from the client.
pub enum FromClient {
    Nothing,
    /// Bytes for the client (not counted).
    Reply(String),
    /// A stream error with this condition.
    Fail(&'static str, String),
}

impl ClientSm {
    /// `<enable/>` after bind: a new session, files made afresh.
    pub fn enable(cdir: &ClientDir, acct: &Account, name: &str, window: Duration) -> ClientSm {
        let mut st = store(cdir);
        st.clear();
        let id = format!("{}.{}", hexname(name), sj::ucspi::random_hex(12));
        let mut sm = ClientSm::new(st, id, Outbox::new(0), 0);
        sm.save(acct, false, false, None, window);
        if let Err(e) = sm.link.store.save_counts(Counts::default()) {
            sm.link.warn_once("write sm-counts", &e);
        }
        sm
    }

    fn new(store: Store, id: String, out: Outbox, inbound: u32) -> ClientSm {
        ClientSm {
            id,
            link: Link::new(store, out, inbound, REQUEST_EVERY, REQUEST_AFTER, RISK),
        }
    }

    /// Write the session file: what a resuming process checks and restores.
    pub fn save(
        &mut self,
        acct: &Account,
        carbons: bool,
        available: bool,
        gone: Option<SystemTime>,
        window: Duration,
    ) {
        let gone = gone
            .map(|t| sj::time::unix_secs(t).to_string())
            .unwrap_or_default();
        let r = self.link.store.save_session(&[
            ("id", &self.id),
            ("jid", &acct.jid().to_string()),
            ("carbons", if carbons { "1" } else { "0" }),
            ("available", if available { "1" } else { "0" }),
            ("gone", &gone),
            ("max", &window.as_secs().to_string()),
        ]);
        if let Err(e) = r {
            self.link.warn_once("write the client's sm file", &e);
        }
    }

    /// `<enabled/>` for the client.
    pub fn enabled(&self, window: Duration) -> String {
        format!(
            "<enabled xmlns='{}' id='{}' resume='true' max='{}'/>",
            sj::sm::NS,
            sj::xml::escape_attr(&self.id),
            window.as_secs()
        )
    }

    /// A nonza from the client, online.
    pub fn on_nonza(&mut self, n: Nonza) -> FromClient {
        match n {
            Nonza::R | Nonza::A { .. } => match self.link.on_nonza(&n) {
                Ok(()) => FromClient::Nothing,
                Err(e) => FromClient::Fail("undefined-condition", format!("the client {e}")),
            },
            Nonza::Enable { .. } => FromClient::Reply(failed("unexpected-request", None)),
            other => FromClient::Fail(
                "unsupported-stanza-type",
                format!("the client sent {other:?} in an established session"),
            ),
        }
    }

    /// End of a turn: `handed_on` when everything the client sent is in
    /// `out`. What to send the client now (`<a/>`, `<r/>`), or nothing;
    /// `connected`: whether there is a client to ask.
    pub fn turn(&mut self, handed_on: bool, connected: bool) -> Option<String> {
        let send = self.link.turn(handed_on, connected).concat();
        (!send.is_empty()).then_some(send)
    }

    /// The session is over for good: its files go.
    pub fn clear(&mut self) {
        self.link.store.clear();
    }

    /// `<resumed/>` and the stanzas to send again, after `h`.
    pub fn resumed(&self, previd: &str) -> Vec<u8> {
        let mut v = format!(
            "<resumed xmlns='{}' previd='{}' h='{}'/>",
            sj::sm::NS,
            sj::xml::escape_attr(previd),
            self.link.durable
        )
        .into_bytes();
        for (_, r) in self.link.out.unacked() {
            v.extend_from_slice(r);
        }
        v
    }
}

/// `<failed/>` with a stanza error condition.
pub fn failed(condition: &str, h: Option<u32>) -> String {
    let h = h.map(|h| format!(" h='{h}'")).unwrap_or_default();
    format!(
        "<failed xmlns='{}'{h}><{condition} xmlns='{}'/></failed>",
        sj::sm::NS,
        sj::ns::STANZAS
    )
}

/// What a resumable session on disk holds.
pub struct Found {
    pub name: String,
    pub cdir: ClientDir,
    pub carbons: bool,
    pub available: bool,
    pub sm: ClientSm,
}

/// Why a resumption is refused.
pub enum Refused {
    /// No such session for this account (or it expired): `<failed/>`.
    NotFound(String),
    /// The client acknowledged more than was sent: a stream error.
    TooMany(String),
}

fn alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Find the session `previd` of account `acct`, take it over from the
/// process that holds it (if one still runs), and load it with the
/// client's acknowledgement `h`. The caller then registers the client
/// in `cdir` again.
pub fn take_over(acct: &Account, previd: &str, h: u32) -> Result<Found, Refused> {
    let nf = |why: String| Refused::NotFound(why);
    let name = name_of(previd).ok_or_else(|| nf("a malformed id".into()))?;
    let cdir = acct
        .dir()
        .client(&name)
        .map_err(|e| nf(format!("id names no client: {e}")))?;
    // Never through a link put in a client's place.
    sj::fifo::check_dir(cdir.path()).map_err(|_| nf(format!("no client {name}")))?;
    let st = store(&cdir);
    let kv = match st.load_session() {
        Ok(Some(kv)) => kv,
        _ => return Err(nf(format!("no resumable session for {name}"))),
    };
    let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    // The id is the secret: compared whole; the account must be this one.
    if get("id").as_deref() != Some(previd)
        || get("jid").as_deref() != Some(&acct.jid().to_string())
    {
        return Err(nf(format!("id does not match {name}'s session")));
    }
    let window: u64 = get("max").and_then(|m| m.parse().ok()).unwrap_or(0);
    let pid = sj::fifo::read_text(&cdir.pid(), 64)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| p > 1 && p != std::process::id() as i32);
    match pid.filter(|&p| alive(p)) {
        Some(p) => {
            let _ = sj::fifo::write_marker(&cdir.sm_file("takeover"), b"\n");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGTERM,
            );
            let until = Instant::now() + TAKEOVER_WAIT;
            while alive(p) {
                if Instant::now() >= until {
                    let _ = std::fs::remove_file(cdir.sm_file("takeover"));
                    return Err(nf(format!("{name}'s process (pid {p}) did not hand over")));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        None => {
            // Nobody kept it: only within the window of when it went.
            let gone: Option<i64> = get("gone").and_then(|g| g.parse().ok());
            let now = sj::time::now_secs();
            if gone.is_none_or(|g| now - g > window as i64) {
                return Err(nf(format!("{name}'s session expired")));
            }
        }
    }
    // Read again: the old process wrote its last state on the way out.
    let kv = st.load_session().ok().flatten().unwrap_or_default();
    let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    if get("id").as_deref() != Some(previd) {
        return Err(nf(format!("{name}'s session ended meanwhile")));
    }
    let counts = st
        .load_counts()
        .map_err(|e| nf(format!("sm-counts: {}", sj::log::strerror(&e))))?;
    let mut out = st
        .load_queue(counts.acked)
        .map_err(|e| nf(format!("sm-queue: {}", sj::log::strerror(&e))))?;
    if let Err(e) = out.ack(h) {
        return Err(Refused::TooMany(format!("the client {e}")));
    }
    let _ = std::fs::remove_file(cdir.sm_file("takeover"));
    let mut sm = ClientSm::new(st, previd.to_string(), out, counts.inbound);
    if let Err(e) = sm.link.store.save_counts(Counts {
        inbound: counts.inbound,
        acked: h,
    }) {
        sm.link.warn_once("write sm-counts", &e);
    }
    Ok(Found {
        name,
        cdir,
        carbons: get("carbons").as_deref() == Some("1"),
        available: get("available").as_deref() == Some("1"),
        sm,
    })
}

/// This process is asked to hand its session over (`sm-takeover` is
/// there): it stops without ending the client's session.
pub fn takeover_asked(cdir: &ClientDir) -> bool {
    std::fs::symlink_metadata(cdir.sm_file("takeover")).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_client() {
        let id = format!("{}.abc", hexname("phone ü"));
        assert_eq!(name_of(&id).as_deref(), Some("phone ü"));
        assert_eq!(name_of("zz.abc"), None);
        assert_eq!(name_of("abc"), None);
        assert_eq!(name_of(".abc"), None);
    }

    #[test]
    fn failed_names_its_condition() {
        assert_eq!(
            failed("item-not-found", Some(3)),
            "<failed xmlns='urn:xmpp:sm:3' h='3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        );
    }
}
