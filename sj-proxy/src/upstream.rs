//! The upstream connection: fds from the UCSPI wrapper, the framer on them,
//! and the negotiation (RFC 6120 §5-§7) up to a bound session with carbons
//! enabled. What the wrapper hands over, the stream header and stream
//! errors are `sj::ucspi`'s; the decisions of each step (which TLS, which
//! mechanism, what a bind result says) are the free functions below,
//! unit-tested without a server.

use crate::route::OWN_ID;
use sj::exit::{Fatal, PERMANENT, PROTOCOL, TEMPORARY};
use sj::framer::{Dropped, Event, FrameError, Framer, Limits, Mode, StreamHeader};
use sj::io::WriteQueue;
use sj::ns::{
    BIND as NS_BIND, CARBONS as NS_CARBONS, CLIENT as NS_CLIENT, DISCO_INFO as NS_DISCO_INFO,
    ROSTER as NS_ROSTER, SASL as NS_SASL, SESSION as NS_SESSION, STANZAS as NS_STANZAS,
    STREAMS as NS_STREAM, TLS as NS_TLS,
};
use sj::sasl::{self, Hash, ScramClient};
use sj::ucspi::Handover;
use sj::xml::Element;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// How to run sj-proxy, for the error about a descriptor the wrapper did
/// not pass.
pub const UCSPI_HINT: &str =
    "run sj-proxy under a UCSPI client (tcpclient, s6-tlsc, socat ...,fdin=6,fdout=7)";

/// How long one negotiation step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Upstream {
    pub rfd: OwnedFd,
    pub wfd: OwnedFd,
    pub framer: Framer,
    /// The channel is encrypted (direct TLS by the wrapper, or STARTTLS done).
    pub tls: bool,
    /// The wrapper's UCSPI-TLS descriptors, if it gave any, until STARTTLS.
    handover: Option<Result<Handover, Fatal>>,
    /// The stream was ended (`close`): nothing more is written.
    closed: bool,
}

/// What negotiation produced.
pub struct Session {
    pub full: sj::jid::Jid,
    pub carbons: bool,
    /// Stanzas that arrived while negotiating, to route once online.
    pub early: Vec<Vec<u8>>,
    /// XEP-0198 with the server, when it offers it (crate::sm).
    pub sm: Option<crate::sm::UpSm>,
    /// A session resumed, and when it began (unix seconds).
    pub resumed: Option<i64>,
}

pub struct Credentials {
    pub jid: sj::jid::Jid,
    pub password: String,
    pub resource: Option<String>,
}

/// The map from a stream error condition to an exit code (DESIGN §7).
pub fn stream_error_exit(condition: &str) -> u8 {
    match condition {
        "host-unknown"
        | "host-gone"
        | "improper-addressing"
        | "invalid-namespace"
        | "not-authorized"
        | "unsupported-version"
        | "unsupported-encoding"
        | "unsupported-stanza-type"
        | "invalid-from" => PERMANENT,
        _ => TEMPORARY,
    }
}

/// The fatal error for a framing error in the server's stream (the
/// caller ends the stream with `error_tail` of its condition).
pub fn refused(e: &FrameError) -> Fatal {
    Fatal::new(PROTOCOL, format!("unable to read from the server: {e}"))
}

/// The fatal error for a `<stream:error>` from the server: the exit code
/// of DESIGN §7 for its condition. `how` is "closed" once online,
/// "refused" for the stream header's answer.
pub fn server_error(rec: &[u8], how: &str) -> Fatal {
    let c = sj::ucspi::stream_error_condition(rec);
    Fatal::new(
        stream_error_exit(&c),
        format!("the server {how} the stream: {c}"),
    )
}

/// The log line for a stanza the framer skipped, what is known of it
/// included.
pub fn describe_dropped(d: &Dropped) -> String {
    let mut who = format!("<{}>", d.name);
    for (k, v) in [("from", &d.from), ("id", &d.id), ("type", &d.kind)] {
        if let Some(v) = v {
            let v: String = v.chars().take(200).collect();
            who.push_str(&format!(" {k} '{}'", v.escape_debug()));
        }
    }
    format!(
        "dropping a stanza from the server: {}: {who}, {} bytes",
        d.reason, d.bytes
    )
}

impl Upstream {
    pub fn new(
        rfd: OwnedFd,
        wfd: OwnedFd,
        tls: bool,
        handover: Option<Result<Handover, Fatal>>,
    ) -> Self {
        Upstream {
            rfd,
            wfd,
            framer: Framer::new(Mode::Stream, Limits::PRE_AUTH),
            tls,
            handover,
            closed: false,
        }
    }

    pub fn send(&self, data: &[u8]) -> Result<(), Fatal> {
        sj::log::trace(">>", data);
        sj::io::write_all(&self.wfd, data).map_err(|e| Fatal::io("write to the server", &e))
    }

    /// The one way the stream to the server ends, on every path: what
    /// `queue` holds, then `tail` (a stream error and/or
    /// `</stream:stream>`, or nothing when the server is gone), then the
    /// lingering close of `sj::io::close_stream` (`end`: who ends it).
    /// Once only.
    pub fn close(&mut self, queue: &mut WriteQueue, tail: &[u8], end: sj::io::End) {
        if self.closed {
            return;
        }
        self.closed = true;
        if !tail.is_empty() {
            sj::log::trace(">>", tail);
            queue.push(tail.to_vec());
        }
        let c = sj::io::close_stream(
            &self.rfd,
            &mut self.wfd,
            queue,
            sj::io::Linger::DEFAULT,
            end,
        );
        if c.unsent > 0 {
            sj::log::warn(&format!(
                "closing the stream with {} bytes the server did not take",
                c.unsent
            ));
        }
    }

    /// Send a stream error and close the stream (negotiation: nothing else
    /// is queued); the exit code is the caller's.
    pub fn send_stream_error(&mut self, condition: &str) {
        self.close(
            &mut WriteQueue::new(),
            sj::ucspi::stream_error_end(condition).as_bytes(),
            sj::io::End::Close,
        );
    }

    /// The server ended the stream with `<stream:error>`: close ours too
    /// (RFC 6120 §4.4, as for a plain `</stream:stream>`).
    pub fn stream_error_fatal(&mut self, rec: &[u8], how: &str) -> Fatal {
        self.close(
            &mut WriteQueue::new(),
            b"</stream:stream>",
            sj::io::End::Answer,
        );
        server_error(rec, how)
    }

    /// A framing error from the server: answer it with the stream error it
    /// deserves and turn it into the fatal error that ends sj-proxy.
    pub fn refuse(&mut self, e: &FrameError) -> Fatal {
        self.send_stream_error(e.condition.as_str());
        refused(e)
    }

    /// Block (with a deadline, and woken by a stop signal) for the next event.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Event, Fatal> {
        let mut buf = Vec::new();
        loop {
            match self.framer.next_event() {
                Ok(Some(ev)) => {
                    if let Event::Record(r) | Event::StreamError(r) = &ev {
                        sj::log::trace("<<", r);
                    }
                    return Ok(ev);
                }
                Ok(None) => {}
                Err(e) => return Err(self.refuse(&e)),
            }
            if sj::signal::stopping() {
                return Err(Fatal::new(
                    sj::exit::OK,
                    "stopped by a signal while negotiating",
                ));
            }
            if Instant::now() >= deadline {
                return Err(Fatal::temporary(
                    "unable to negotiate with the server: timed out",
                ));
            }
            if !self.wait_readable(deadline)? {
                continue;
            }
            buf.clear();
            match sj::io::read_into(&self.rfd, &mut buf) {
                Ok(sj::io::Read::Data(_)) => self.framer.feed(&buf),
                Ok(sj::io::Read::WouldBlock) => {}
                Ok(sj::io::Read::Eof) => {
                    return Err(Fatal::temporary(
                        "unable to read from the server: connection closed",
                    ))
                }
                Err(e) => return Err(Fatal::io("read from the server", &e)),
            }
        }
    }

    /// Wait for the server's bytes until `deadline`, or a signal; true
    /// when they came.
    fn wait_readable(&self, deadline: Instant) -> Result<bool, Fatal> {
        use sj::poll::{Interest, PollSet};
        let mut set = PollSet::with_capacity(2);
        set.add(self.rfd.as_fd(), true, Interest::Read);
        if let Some(sig) = sj::signal::fd() {
            set.add(sig, false, Interest::Read);
        }
        let ready = set
            .wait(Some(deadline))
            .map_err(|e| Fatal::io("poll the server connection", &e))?;
        if ready.iter().any(|(up, _)| !up) {
            sj::signal::drain();
        }
        Ok(ready.iter().any(|(up, _)| *up))
    }

    /// The next record, with stream errors and stream end as fatal errors.
    fn next_record(&mut self) -> Result<Vec<u8>, Fatal> {
        loop {
            match self.next_event(Instant::now() + STEP_TIMEOUT)? {
                Event::Record(r) => return Ok(r),
                // Negotiation is short: each is logged, none answered.
                Event::Dropped(d) => sj::log::warn(&describe_dropped(&d)),
                Event::StreamError(r) => return Err(self.stream_error_fatal(&r, "closed")),
                Event::End => {
                    self.close(
                        &mut WriteQueue::new(),
                        b"</stream:stream>",
                        sj::io::End::Answer,
                    );
                    return Err(Fatal::temporary("the server closed the stream"));
                }
                Event::Header(_) => {
                    self.send_stream_error("bad-format");
                    return Err(Fatal::protocol("the server sent a second stream header"));
                }
            }
        }
    }

    pub(crate) fn next_element(&mut self) -> Result<(Element<'static>, Vec<u8>), Fatal> {
        let r = self.next_record()?;
        let el = Element::parse(&r)
            .map(Element::into_owned)
            .ok_or_else(|| Fatal::protocol("unable to parse a record from the server"))?;
        Ok((el, r))
    }

    /// Open (or restart) the stream and return the features.
    fn restart(&mut self, domain: &str, from: Option<&str>) -> Result<Element<'static>, Fatal> {
        self.framer.reset();
        self.send(sj::ucspi::client_header(domain, from).as_bytes())?;
        match self.next_event(Instant::now() + STEP_TIMEOUT)? {
            Event::Header(h) => {
                if let Some((condition, e)) = header_problem(&h) {
                    self.send_stream_error(condition);
                    return Err(e);
                }
            }
            Event::StreamError(r) => return Err(self.stream_error_fatal(&r, "refused")),
            _ => return Err(Fatal::protocol("the server did not send a stream header")),
        }
        let (el, _) = self.next_element()?;
        if el.local_name() != "features" || el.ns != NS_STREAM {
            self.send_stream_error("bad-format");
            return Err(Fatal::protocol(format!(
                "expected stream features, got <{}>",
                el.name
            )));
        }
        Ok(el)
    }

    fn starttls(&mut self) -> Result<(), Fatal> {
        let handover = match self.handover.take() {
            Some(h) => h?,
            None => return Err(Fatal::permanent("SSLCTLFD is not set")),
        };
        self.send(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes())?;
        let (el, _) = self.next_element()?;
        if el.local_name() != "proceed" || el.ns != NS_TLS {
            return Err(Fatal::temporary("the server refused STARTTLS"));
        }
        // After the switch the wrapper owns the plain socket; we talk through
        // its pipes. The old descriptors are closed by replacing them.
        let (rfd, wfd) = handover.start()?;
        self.rfd = rfd;
        self.wfd = wfd;
        self.tls = true;
        Ok(())
    }

    fn authenticate(&mut self, features: &Element, creds: &Credentials) -> Result<(), Fatal> {
        let user = creds
            .jid
            .local()
            .ok_or_else(|| Fatal::permanent("the JID has no localpart to log in with"))?;
        let rfd = self.rfd.as_fd();
        let plain_ok = self.tls || sj::ucspi::peer_is_loopback(rfd);
        match mechanism(features, plain_ok)? {
            Mechanism::Scram(hash) => {
                let mut scram = ScramClient::new(hash, user, &creds.password, None);
                let first = scram.first();
                self.send(sasl::element("auth", Some(hash.mechanism()), &first).as_bytes())?;
                let (el, _) = self.next_element()?;
                let challenge = sasl_step(&el, "challenge")?;
                let fin = scram
                    .final_message(&challenge)
                    .map_err(|e| Fatal::protocol(format!("SCRAM: {e}")))?;
                self.send(sasl::element("response", None, &fin).as_bytes())?;
                let (el, _) = self.next_element()?;
                let server_final = sasl_step(&el, "success")?;
                scram.verify(&server_final).map_err(|e| {
                    Fatal::permanent(format!(
                        "unable to trust the server: SCRAM server signature: {e}"
                    ))
                })
            }
            Mechanism::Plain => {
                let msg = sasl::plain_encode("", user, &creds.password);
                self.send(sasl::element("auth", Some("PLAIN"), &msg).as_bytes())?;
                let (el, _) = self.next_element()?;
                sasl_step(&el, "success").map(|_| ())
            }
        }
    }

    /// Send an iq of ours and wait for its answer; other stanzas that arrive
    /// meanwhile are kept for routing later.
    fn request(
        &mut self,
        id: &str,
        iq: &str,
        early: &mut Vec<Vec<u8>>,
    ) -> Result<Element<'static>, Fatal> {
        self.send(iq.as_bytes())?;
        loop {
            let (el, rec) = self.next_element()?;
            if el.local_name() == "iq" && el.attr("id") == Some(id) {
                return Ok(el);
            }
            early.push(rec);
        }
    }

    /// Negotiate up to a bound session, or resume the one an earlier
    /// sj-proxy left in `dir` (crate::sm).
    pub fn negotiate(
        &mut self,
        creds: &Credentials,
        dir: &sj::account::Dir,
    ) -> Result<Session, Fatal> {
        let domain = creds.jid.domain().to_string();
        let bare = creds.jid.bare().to_string();
        let mut features = self.restart(&domain, self.tls.then_some(bare.as_str()))?;
        if start_tls(&features, self.tls, self.handover.is_some())? {
            self.starttls()?;
            features = self.restart(&domain, Some(&bare))?;
        }
        self.authenticate(&features, creds)?;
        self.framer.set_limits(Limits::FROM_SERVER);
        let features = self.restart(&domain, Some(&bare))?;
        if features.child("bind", NS_BIND).is_none() {
            return Err(Fatal::protocol("the server offers no resource binding"));
        }
        let mut early = Vec::new();
        let sm_offered = features.child("sm", sj::sm::NS).is_some();
        let mut leftover = None;
        if let Some(saved) = sm_offered
            .then(|| crate::sm::load(dir, &creds.jid.bare()))
            .flatten()
        {
            match crate::sm::resume(self, dir, saved, &mut early)? {
                crate::sm::Resumed::Yes {
                    full,
                    carbons,
                    since,
                    sm,
                } => {
                    return Ok(Session {
                        full,
                        carbons,
                        early,
                        sm: Some(*sm),
                        resumed: Some(since),
                    })
                }
                crate::sm::Resumed::No(left) => leftover = Some(left),
            }
        }
        let bind = self.request(
            "sjp-bind",
            &bind_request("sjp-bind", creds.resource.as_deref()),
            &mut early,
        )?;
        let full = bound_jid(&bind)?;
        // The session iq only where the server still requires it (RFC 6121 legacy).
        if session_required(&features) {
            let r = self.request(
                "sjp-session",
                &format!("<iq type='set' id='sjp-session'><session xmlns='{NS_SESSION}'/></iq>"),
                &mut early,
            )?;
            if r.attr("type") != Some("result") {
                return Err(Fatal::temporary(format!(
                    "unable to establish a session: {}",
                    stanza_error(&r)
                )));
            }
        }
        let carbons = self.enable_carbons(&domain, &mut early)?;
        // RFC 6121 §2.1.6: the server pushes roster changes only to
        // "interested" resources, those that have asked for the roster. Ask
        // now, before any client's record can go up, or a client's roster
        // set racing iqd's first get leaves every client without the push.
        // The answer is only for the server's sake: iqd fetches the roster
        // itself, as it must after each of its restarts.
        let roster = self.request(
            "sjp-roster",
            &format!("<iq type='get' id='sjp-roster'><query xmlns='{NS_ROSTER}'/></iq>"),
            &mut early,
        )?;
        if roster.attr("type") != Some("result") {
            sj::log::warn(&format!(
                "unable to get the roster: {}; roster pushes may not arrive",
                stanza_error(&roster)
            ));
        }
        debug_assert!(OWN_ID.starts_with("sjp"));
        let sm = if sm_offered {
            crate::sm::enable(self, dir, &full, carbons, leftover, &mut early)?
        } else {
            None
        };
        Ok(Session {
            full,
            carbons,
            early,
            sm,
            resumed: None,
        })
    }

    /// Ask the server whether it has carbons (XEP-0280) and enable them if
    /// it does: whether they are on.
    fn enable_carbons(&mut self, domain: &str, early: &mut Vec<Vec<u8>>) -> Result<bool, Fatal> {
        let info = self.request(
            "sjp-disco",
            &format!(
                "<iq type='get' id='sjp-disco' to='{}'><query xmlns='{NS_DISCO_INFO}'/></iq>",
                sj::xml::escape_attr(domain)
            ),
            early,
        )?;
        if !offers_carbons(&info) {
            return Ok(false);
        }
        let r = self.request(
            "sjp-carbons",
            &format!("<iq type='set' id='sjp-carbons'><enable xmlns='{NS_CARBONS}'/></iq>"),
            early,
        )?;
        let on = r.attr("type") == Some("result");
        if !on {
            sj::log::warn(&format!("unable to enable carbons: {}", stanza_error(&r)));
        }
        Ok(on)
    }
}

/// What is wrong with the server's stream header, if anything: the stream
/// error to answer with and the fatal error. The server answers our 1.0
/// with 1.x (RFC 6120 §4.7.5): any other major version is refused.
pub fn header_problem(h: &StreamHeader) -> Option<(&'static str, Fatal)> {
    if let Some(why) = sj::ucspi::namespace_problem(h) {
        let e = Fatal::protocol(format!("the server's stream header: {why}"));
        return Some(("invalid-namespace", e));
    }
    if sj::ucspi::major_version(h) != Some(1) {
        let e = Fatal::protocol("the server does not speak XMPP 1.0 streams");
        return Some(("unsupported-version", e));
    }
    None
}

/// Whether to start TLS now: when the server offers STARTTLS, the channel
/// is in clear and the wrapper can (`handover`); an error when the server
/// requires it and the wrapper cannot.
pub fn start_tls(features: &Element, encrypted: bool, handover: bool) -> Result<bool, Fatal> {
    let Some(tls) = features.child("starttls", NS_TLS) else {
        return Ok(false);
    };
    if encrypted {
        return Ok(false);
    }
    if handover {
        return Ok(true);
    }
    if tls.child("required", NS_TLS).is_some() {
        return Err(Fatal::permanent(
            "unable to start TLS: the server requires STARTTLS and no UCSPI-TLS wrapper is present (SSLCTLFD unset)",
        ));
    }
    Ok(false)
}

/// How to authenticate.
#[derive(Debug, PartialEq, Eq)]
pub enum Mechanism {
    Scram(Hash),
    Plain,
}

/// The mechanism to use among those the features offer: the best SCRAM,
/// else PLAIN where `plain_ok` (encrypted, or a loopback peer).
pub fn mechanism(features: &Element, plain_ok: bool) -> Result<Mechanism, Fatal> {
    let offered: Vec<String> = features
        .child("mechanisms", NS_SASL)
        .map(|m| {
            m.elements()
                .filter(|e| e.local_name() == "mechanism")
                .map(|e| e.text().trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    if let Some(hash) = sasl::best_scram(&offered) {
        return Ok(Mechanism::Scram(hash));
    }
    if offered.iter().any(|o| o == "PLAIN") {
        if !plain_ok {
            return Err(Fatal::permanent(
                "unable to authenticate: the server offers only PLAIN on an unencrypted non-loopback channel",
            ));
        }
        return Ok(Mechanism::Plain);
    }
    Err(Fatal::permanent(format!(
        "unable to authenticate: no supported SASL mechanism offered ({})",
        offered.join(" ")
    )))
}

/// Check a SASL reply is `want` and return its decoded payload.
pub fn sasl_step(el: &Element, want: &str) -> Result<Vec<u8>, Fatal> {
    if el.ns != NS_SASL {
        return Err(Fatal::protocol(format!(
            "unexpected <{}> during SASL",
            el.name
        )));
    }
    if el.local_name() == "failure" {
        let cond = el
            .elements()
            .find(|c| c.local_name() != "text")
            .map(|c| c.local_name().to_string());
        return Err(Fatal::permanent(format!(
            "unable to authenticate: {}",
            cond.unwrap_or_else(|| "failure".to_string())
        )));
    }
    if el.local_name() != want {
        return Err(Fatal::protocol(format!(
            "expected SASL <{want}>, got <{}>",
            el.name
        )));
    }
    let t = el.text();
    let t = t.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    sasl::b64decode(t).map_err(|e| Fatal::protocol(format!("bad base64 in SASL <{want}>: {e}")))
}

/// The bind request, for `resource` or one the server picks.
pub fn bind_request(id: &str, resource: Option<&str>) -> String {
    let res = resource
        .map(|r| format!("<resource>{}</resource>", sj::xml::escape_text(r)))
        .unwrap_or_default();
    format!(
        "<iq type='set' id='{}'><bind xmlns='{NS_BIND}'>{res}</bind></iq>",
        sj::xml::escape_attr(id)
    )
}

/// The full JID a bind answer gives, or why there is none: a conflict is
/// temporary (the other session may go), any other refusal permanent.
pub fn bound_jid(answer: &Element) -> Result<sj::jid::Jid, Fatal> {
    if answer.attr("type") != Some("result") {
        let cond = stanza_error(answer);
        let code = if cond == "conflict" {
            TEMPORARY
        } else {
            PERMANENT
        };
        return Err(Fatal::new(
            code,
            format!("unable to bind a resource: {cond}"),
        ));
    }
    let jid_text = answer
        .child("bind", NS_BIND)
        .and_then(|b| b.child("jid", NS_BIND))
        .map(|j| j.text())
        .ok_or_else(|| Fatal::protocol("bind result without a JID"))?;
    let full = sj::jid::Jid::parse(jid_text.trim())
        .map_err(|e| Fatal::protocol(format!("bound JID: {e}")))?;
    if full.resource().is_none() {
        return Err(Fatal::protocol("the server bound a JID without a resource"));
    }
    Ok(full)
}

/// The server still requires the legacy session iq (RFC 3921; RFC 6121
/// lets it mark the feature optional).
pub fn session_required(features: &Element) -> bool {
    features
        .child("session", NS_SESSION)
        .is_some_and(|s| s.child("optional", NS_SESSION).is_none())
}

/// The server's disco#info answer lists carbons.
pub fn offers_carbons(info: &Element) -> bool {
    info.child("query", NS_DISCO_INFO).is_some_and(|q| {
        q.elements()
            .any(|f| f.local_name() == "feature" && f.attr("var") == Some(NS_CARBONS))
    })
}

/// The defined condition of a stanza error.
pub fn stanza_error(el: &Element) -> String {
    el.child("error", NS_CLIENT)
        .and_then(|e| {
            e.elements()
                .find(|c| c.ns == NS_STANZAS && c.local_name() != "text")
        })
        .map(|c| c.local_name().to_string())
        .unwrap_or_else(|| "undefined-condition".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element<'static> {
        Element::parse(s.as_bytes()).expect("parse").into_owned()
    }

    fn features(inner: &str) -> Element<'static> {
        el(&format!(
            "<stream:features xmlns:stream='{NS_STREAM}'>{inner}</stream:features>"
        ))
    }

    fn mechanisms(names: &[&str]) -> Element<'static> {
        let m: String = names
            .iter()
            .map(|n| format!("<mechanism>{n}</mechanism>"))
            .collect();
        features(&format!("<mechanisms xmlns='{NS_SASL}'>{m}</mechanisms>"))
    }

    /// The server's stream header with `attrs`, as the framer reads it.
    fn header(attrs: &str) -> StreamHeader {
        let mut f = Framer::new(Mode::Stream, Limits::PRE_AUTH);
        f.feed(
            format!("<?xml version='1.0'?><stream:stream xmlns:stream='{NS_STREAM}' {attrs}>")
                .as_bytes(),
        );
        match f.next_event() {
            Ok(Some(Event::Header(h))) => h,
            other => panic!("{attrs}: {other:?}"),
        }
    }

    #[test]
    fn server_header_checks() {
        let ok = header("xmlns='jabber:client' from='example.org' id='x' version='1.0'");
        assert!(header_problem(&ok).is_none());
        let cond = |attrs: &str| header_problem(&header(attrs)).map(|(c, e)| (c, e.code));
        assert_eq!(
            cond("xmlns='jabber:server' version='1.0'"),
            Some(("invalid-namespace", PROTOCOL))
        );
        // jabber:client is implied.
        assert_eq!(cond("version='1.0'"), None);
        for v in ["0.9", "2.0", "x.0", ""] {
            assert_eq!(
                cond(&format!("version='{v}'")),
                Some(("unsupported-version", PROTOCOL)),
                "{v}"
            );
        }
        assert_eq!(cond(""), Some(("unsupported-version", PROTOCOL)));
    }

    #[test]
    fn starttls_when_offered_in_clear_and_possible() {
        let none = features("");
        let offered = features(&format!("<starttls xmlns='{NS_TLS}'/>"));
        let required = features(&format!(
            "<starttls xmlns='{NS_TLS}'><required/></starttls>"
        ));
        assert!(!start_tls(&none, false, true).expect("ok"));
        assert!(start_tls(&offered, false, true).expect("ok"));
        assert!(start_tls(&required, false, true).expect("ok"));
        // Already encrypted by the wrapper: never twice.
        assert!(!start_tls(&required, true, true).expect("ok"));
        assert!(!start_tls(&required, true, false).expect("ok"));
        // No wrapper to do it: go on in clear unless it is required.
        assert!(!start_tls(&offered, false, false).expect("ok"));
        let e = start_tls(&required, false, false).expect_err("required");
        assert_eq!(e.code, PERMANENT);
        assert!(e.msg.contains("SSLCTLFD"), "{}", e.msg);
    }

    #[test]
    fn mechanism_choice() {
        let m = |names: &[&str], plain_ok| mechanism(&mechanisms(names), plain_ok);
        assert_eq!(
            m(&["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], false).expect("ok"),
            Mechanism::Scram(Hash::Sha256)
        );
        assert_eq!(
            m(&["SCRAM-SHA-1", "PLAIN"], true).expect("ok"),
            Mechanism::Scram(Hash::Sha1)
        );
        assert_eq!(m(&["PLAIN"], true).expect("ok"), Mechanism::Plain);
        let e = m(&["PLAIN"], false).expect_err("plain in clear");
        assert_eq!(e.code, PERMANENT);
        let e = m(&["DIGEST-MD5", "X-OAUTH2"], true).expect_err("none");
        assert!(e.msg.contains("DIGEST-MD5 X-OAUTH2"), "{}", e.msg);
        assert!(mechanism(&features(""), true).is_err());
    }

    #[test]
    fn sasl_steps() {
        let ch = el(&format!(
            "<challenge xmlns='{NS_SASL}'>cj1hYmM=</challenge>"
        ));
        assert_eq!(sasl_step(&ch, "challenge").expect("ok"), b"r=abc");
        let empty = el(&format!("<success xmlns='{NS_SASL}'>=</success>"));
        assert_eq!(sasl_step(&empty, "success").expect("ok"), b"");
        let fail = el(&format!(
            "<failure xmlns='{NS_SASL}'><text>no</text><not-authorized/></failure>"
        ));
        let e = sasl_step(&fail, "success").expect_err("failure");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (PERMANENT, "unable to authenticate: not-authorized")
        );
        let e = sasl_step(&ch, "success").expect_err("wrong step");
        assert_eq!(e.code, PROTOCOL);
        let e = sasl_step(&el("<iq type='result'/>"), "success").expect_err("not sasl");
        assert_eq!(e.code, PROTOCOL);
        let bad = el(&format!("<challenge xmlns='{NS_SASL}'>!!</challenge>"));
        assert_eq!(
            sasl_step(&bad, "challenge").expect_err("b64").code,
            PROTOCOL
        );
    }

    #[test]
    fn bind_request_and_answer() {
        assert_eq!(
            bind_request("sjp-bind", Some("a<b")),
            format!("<iq type='set' id='sjp-bind'><bind xmlns='{NS_BIND}'><resource>a&lt;b</resource></bind></iq>")
        );
        assert!(!bind_request("sjp-bind", None).contains("<resource>"));
        let ok = el(&format!(
            "<iq type='result' id='sjp-bind'><bind xmlns='{NS_BIND}'><jid> a@example.org/r </jid></bind></iq>"
        ));
        assert_eq!(bound_jid(&ok).expect("jid").to_string(), "a@example.org/r");
        let err = |cond: &str| {
            el(&format!(
                "<iq type='error' id='sjp-bind'><error type='cancel'><{cond} xmlns='{NS_STANZAS}'/></error></iq>"
            ))
        };
        assert_eq!(bound_jid(&err("conflict")).expect_err("c").code, TEMPORARY);
        assert_eq!(
            bound_jid(&err("not-allowed")).expect_err("n").code,
            PERMANENT
        );
        let bare = el(&format!(
            "<iq type='result'><bind xmlns='{NS_BIND}'><jid>a@example.org</jid></bind></iq>"
        ));
        assert_eq!(bound_jid(&bare).expect_err("bare").code, PROTOCOL);
        assert_eq!(
            bound_jid(&el("<iq type='result'/>"))
                .expect_err("no jid")
                .code,
            PROTOCOL
        );
    }

    #[test]
    fn session_and_carbons_features() {
        assert!(!session_required(&features("")));
        assert!(session_required(&features(&format!(
            "<session xmlns='{NS_SESSION}'/>"
        ))));
        assert!(!session_required(&features(&format!(
            "<session xmlns='{NS_SESSION}'><optional/></session>"
        ))));
        let info = |var: &str| {
            el(&format!(
                "<iq type='result'><query xmlns='{NS_DISCO_INFO}'><feature var='{var}'/></query></iq>"
            ))
        };
        assert!(offers_carbons(&info(NS_CARBONS)));
        assert!(!offers_carbons(&info("urn:xmpp:ping")));
    }

    #[test]
    fn server_stream_errors_map_to_exit_codes() {
        let rec = |c: &str| {
            format!(
                "<stream:error xmlns:stream='{NS_STREAM}'><{c} xmlns='{}'/></stream:error>",
                sj::ns::STREAM_ERRORS
            )
        };
        let e = server_error(rec("host-unknown").as_bytes(), "refused");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (PERMANENT, "the server refused the stream: host-unknown")
        );
        assert_eq!(
            server_error(rec("conflict").as_bytes(), "closed").code,
            TEMPORARY
        );
    }
}
