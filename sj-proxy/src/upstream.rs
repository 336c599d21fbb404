//! The upstream connection: fds from the UCSPI wrapper, the framer on them,
//! and the negotiation state machine (RFC 6120 §5-§7) up to a bound session
//! with carbons enabled.

use crate::route::OWN_ID;
use sj::exit::{Fatal, PERMANENT, PROTOCOL, TEMPORARY};
use sj::framer::{Dropped, Event, FrameError, Framer, Limits, Mode};
use sj::io::WriteQueue;
use sj::sasl::{self, ScramClient, NS as NS_SASL};
use sj::xml::Element;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// How long one negotiation step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Upstream {
    pub rfd: OwnedFd,
    pub wfd: OwnedFd,
    pub framer: Framer,
    /// The channel is encrypted (direct TLS by the wrapper, or STARTTLS done).
    pub tls: bool,
    /// The stream was ended (`close`): nothing more is written.
    closed: bool,
}

/// What negotiation produced.
pub struct Session {
    pub full: sj::jid::Jid,
    pub carbons: bool,
    /// Stanzas that arrived while negotiating, to route once online.
    pub early: Vec<Vec<u8>>,
}

pub struct Credentials {
    pub jid: sj::jid::Jid,
    pub password: String,
    pub resource: Option<String>,
}

/// Take ownership of a descriptor number inherited from the wrapper.
pub fn inherit_fd(n: RawFd, what: &str) -> Result<OwnedFd, Fatal> {
    own_fd(n, what)?.ok_or_else(|| not_given(n, what))
}

fn not_given(n: RawFd, what: &str) -> Fatal {
    Fatal::permanent(format!(
        "unable to use fd {n} ({what}): not open; run sj-proxy under a UCSPI client (tcpclient, s6-tlsc, socat ...,fdin=6,fdout=7)"
    ))
}

/// The descriptor `n` if it is open, made close-on-exec.
fn own_fd(n: RawFd, what: &str) -> Result<Option<OwnedFd>, Fatal> {
    if nix::fcntl::fcntl(
        unsafe { BorrowedFd::borrow_raw(n) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .is_err()
    {
        return Ok(None);
    }
    // SAFETY: the descriptor is open (checked above) and nothing else in this
    // process owns it: it was inherited from the wrapper.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    // The daemons must not inherit the server connection (or any other
    // descriptor the wrapper gave us).
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Fatal::io(format!("set close-on-exec on fd {n} ({what})"), &e.into()))?;
    Ok(Some(fd))
}

/// The descriptors the wrapper hands over by number (6, 7, the readiness
/// fd), taken before this process opens any of its own: a descriptor of
/// ours (DIR/lock, a signal pipe) could otherwise get a number the wrapper
/// left closed and pass for the server connection. A missing one is an
/// error only when it is asked for, so errors keep their order.
pub struct Inherited(Vec<(RawFd, Option<OwnedFd>)>);

impl Inherited {
    pub fn claim(numbers: &[RawFd]) -> Result<Inherited, Fatal> {
        let mut v = Vec::with_capacity(numbers.len());
        for &n in numbers {
            v.push((n, own_fd(n, "an inherited descriptor")?));
        }
        Ok(Inherited(v))
    }

    /// The descriptor `n` claimed at startup.
    pub fn take(&mut self, n: RawFd, what: &str) -> Result<OwnedFd, Fatal> {
        self.0
            .iter_mut()
            .find(|(m, _)| *m == n)
            .and_then(|(_, fd)| fd.take())
            .ok_or_else(|| not_given(n, what))
    }
}

fn env_fd(name: &str) -> Option<RawFd> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Is the peer on loopback, as far as the wrapper tells us?
pub fn peer_is_loopback(rfd: BorrowedFd<'_>) -> bool {
    for var in [
        "TCPREMOTEIP",
        "SOCAT_PEERADDR",
        "TCP6REMOTEIP",
        "SSLREMOTEIP",
    ] {
        if let Ok(ip) = std::env::var(var) {
            if let Ok(addr) = ip.parse::<std::net::IpAddr>() {
                return addr.is_loopback();
            }
        }
    }
    use std::os::fd::AsRawFd;
    match nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(rfd.as_raw_fd()) {
        Ok(sa) => {
            if let Some(v4) = sa.as_sockaddr_in() {
                return v4.ip().is_loopback();
            }
            if let Some(v6) = sa.as_sockaddr_in6() {
                return v6.ip().is_loopback();
            }
            false
        }
        Err(_) => false,
    }
}

/// The wrapper says the channel is already encrypted.
pub fn wrapper_did_tls() -> bool {
    matches!(std::env::var("PROTO").as_deref(), Ok("SSL") | Ok("TLS"))
        || std::env::var_os("SSL_PROTOCOL").is_some()
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

/// What sj-proxy writes to end the stream with a stream error.
pub fn error_tail(condition: &str) -> Vec<u8> {
    format!(
        "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    )
    .into_bytes()
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
    let c = stream_error_condition(rec);
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

/// The condition element of a `<stream:error>` record.
pub fn stream_error_condition(rec: &[u8]) -> String {
    Element::parse(rec)
        .and_then(|e| {
            e.elements()
                .find(|c| c.ns == "urn:ietf:params:xml:ns:xmpp-streams" && c.local_name() != "text")
                .map(|c| c.local_name().to_string())
        })
        .unwrap_or_else(|| "undefined-condition".to_string())
}

impl Upstream {
    pub fn new(rfd: OwnedFd, wfd: OwnedFd, tls: bool) -> Self {
        Upstream {
            rfd,
            wfd,
            framer: Framer::new(Mode::Stream, Limits::PRE_AUTH),
            tls,
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
            &error_tail(condition),
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

    fn open_stream(&self, domain: &str, from: Option<&str>) -> Result<(), Fatal> {
        let from = from
            .map(|f| format!(" from='{}'", sj::escape::attr(f)))
            .unwrap_or_default();
        let hdr = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' to='{}'{from} version='1.0' xml:lang='en'>",
            sj::escape::attr(domain)
        );
        self.send(hdr.as_bytes())
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

    fn next_element(&mut self) -> Result<(Element, Vec<u8>), Fatal> {
        let r = self.next_record()?;
        let el = Element::parse(&r)
            .ok_or_else(|| Fatal::protocol("unable to parse a record from the server"))?;
        Ok((el, r))
    }

    /// Open (or restart) the stream and return the features.
    fn restart(&mut self, domain: &str, from: Option<&str>) -> Result<Element, Fatal> {
        self.framer.reset();
        self.open_stream(domain, from)?;
        match self.next_event(Instant::now() + STEP_TIMEOUT)? {
            Event::Header(h) => {
                if !h.is_jabber_client() {
                    self.send_stream_error("invalid-namespace");
                    return Err(Fatal::protocol(format!(
                        "the server's stream is in {}, not jabber:client",
                        h.get("xmlns").unwrap_or_default()
                    )));
                }
                if h.get("version").is_none_or(|v| !v.starts_with('1')) {
                    self.send_stream_error("unsupported-version");
                    return Err(Fatal::protocol(
                        "the server does not speak XMPP 1.0 streams",
                    ));
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
        let ctl = env_fd("SSLCTLFD").ok_or_else(|| Fatal::permanent("SSLCTLFD is not set"))?;
        let rd = env_fd("SSLREADFD")
            .ok_or_else(|| Fatal::permanent("SSLCTLFD is set but SSLREADFD is not"))?;
        let wr = env_fd("SSLWRITEFD")
            .ok_or_else(|| Fatal::permanent("SSLCTLFD is set but SSLWRITEFD is not"))?;
        self.send(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes())?;
        let (el, _) = self.next_element()?;
        if el.local_name() != "proceed" || el.ns != NS_TLS {
            return Err(Fatal::temporary("the server refused STARTTLS"));
        }
        let ctl = inherit_fd(ctl, "SSLCTLFD")?;
        sj::io::write_all(&ctl, b"y").map_err(|e| Fatal::io("start TLS through SSLCTLFD", &e))?;
        // After the switch the wrapper owns the plain socket; we talk through
        // its pipes. The old descriptors are closed by replacing them.
        let rfd = inherit_fd(rd, "SSLREADFD")?;
        let wfd = if wr == rd {
            rfd.try_clone()
                .map_err(|e| Fatal::io("dup SSLWRITEFD", &e))?
        } else {
            inherit_fd(wr, "SSLWRITEFD")?
        };
        sj::io::set_nonblocking(&rfd).map_err(|e| Fatal::io("set SSLREADFD non-blocking", &e))?;
        sj::io::set_nonblocking(&wfd).map_err(|e| Fatal::io("set SSLWRITEFD non-blocking", &e))?;
        self.rfd = rfd;
        self.wfd = wfd;
        std::mem::forget(ctl);
        self.tls = true;
        Ok(())
    }

    fn authenticate(&mut self, features: &Element, creds: &Credentials) -> Result<(), Fatal> {
        let offered: Vec<String> = features
            .child("mechanisms", NS_SASL)
            .map(|m| {
                m.elements()
                    .filter(|e| e.local_name() == "mechanism")
                    .map(|e| e.text().trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let user = creds
            .jid
            .local()
            .ok_or_else(|| Fatal::permanent("the JID has no localpart to log in with"))?;
        let has = |m: &str| offered.iter().any(|o| o == m);
        if let Some(hash) = sasl::best_scram(&offered) {
            let mut scram = ScramClient::new(hash, user, &creds.password, None);
            let first = scram.first();
            self.send(sasl::element("auth", Some(hash.mechanism()), &first).as_bytes())?;
            let (el, _) = self.next_element()?;
            let challenge = self.sasl_step(&el, "challenge")?;
            let fin = scram
                .final_message(&challenge)
                .map_err(|e| Fatal::protocol(format!("SCRAM: {e}")))?;
            self.send(sasl::element("response", None, &fin).as_bytes())?;
            let (el, _) = self.next_element()?;
            let server_final = self.sasl_step(&el, "success")?;
            scram.verify(&server_final).map_err(|e| {
                Fatal::permanent(format!(
                    "unable to trust the server: SCRAM server signature: {e}"
                ))
            })?;
            return Ok(());
        }
        if has("PLAIN") {
            if !self.tls && !peer_is_loopback(self.rfd.as_fd()) {
                return Err(Fatal::permanent(
                    "unable to authenticate: the server offers only PLAIN on an unencrypted non-loopback channel",
                ));
            }
            let msg = sasl::plain_encode("", user, &creds.password);
            self.send(sasl::element("auth", Some("PLAIN"), &msg).as_bytes())?;
            let (el, _) = self.next_element()?;
            self.sasl_step(&el, "success")?;
            return Ok(());
        }
        Err(Fatal::permanent(format!(
            "unable to authenticate: no supported SASL mechanism offered ({})",
            offered.join(" ")
        )))
    }

    /// Check a SASL reply is `want` and return its decoded payload.
    fn sasl_step(&self, el: &Element, want: &str) -> Result<Vec<u8>, Fatal> {
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

    /// Send an iq of ours and wait for its answer; other stanzas that arrive
    /// meanwhile are kept for routing later.
    fn request(&mut self, id: &str, iq: &str, early: &mut Vec<Vec<u8>>) -> Result<Element, Fatal> {
        self.send(iq.as_bytes())?;
        loop {
            let (el, rec) = self.next_element()?;
            if el.local_name() == "iq" && el.attr("id") == Some(id) {
                return Ok(el);
            }
            early.push(rec);
        }
    }

    /// Negotiate up to a bound session.
    pub fn negotiate(&mut self, creds: &Credentials) -> Result<Session, Fatal> {
        let domain = creds.jid.domain().to_string();
        let bare = creds.jid.bare().to_string();
        let mut features = self.restart(&domain, self.tls.then_some(bare.as_str()))?;
        if let Some(tls) = features.child("starttls", NS_TLS) {
            let required = tls.child("required", NS_TLS).is_some();
            if !self.tls && std::env::var_os("SSLCTLFD").is_some() {
                self.starttls()?;
                features = self.restart(&domain, Some(&bare))?;
            } else if required && !self.tls {
                return Err(Fatal::permanent(
                    "unable to start TLS: the server requires STARTTLS and no UCSPI-TLS wrapper is present (SSLCTLFD unset)",
                ));
            }
        }
        self.authenticate(&features, creds)?;
        self.framer.set_limits(Limits::FROM_SERVER);
        let features = self.restart(&domain, Some(&bare))?;
        if features.child("bind", NS_BIND).is_none() {
            return Err(Fatal::protocol("the server offers no resource binding"));
        }
        let mut early = Vec::new();
        let res = creds
            .resource
            .as_deref()
            .map(|r| format!("<resource>{}</resource>", sj::escape::text(r)))
            .unwrap_or_default();
        let bind = self.request(
            "sjp-bind",
            &format!("<iq type='set' id='sjp-bind'><bind xmlns='{NS_BIND}'>{res}</bind></iq>"),
            &mut early,
        )?;
        if bind.attr("type") != Some("result") {
            let cond = stanza_error(&bind);
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
        let jid_text = bind
            .child("bind", NS_BIND)
            .and_then(|b| b.child("jid", NS_BIND))
            .map(|j| j.text())
            .ok_or_else(|| Fatal::protocol("bind result without a JID"))?;
        let full = sj::jid::Jid::parse(jid_text.trim())
            .map_err(|e| Fatal::protocol(format!("bound JID: {e}")))?;
        if full.resource().is_none() {
            return Err(Fatal::protocol("the server bound a JID without a resource"));
        }
        // The session iq only where the server still requires it (RFC 6121 legacy).
        if let Some(s) = features.child("session", NS_SESSION) {
            if s.child("optional", NS_SESSION).is_none() {
                let r = self.request(
                    "sjp-session",
                    &format!(
                        "<iq type='set' id='sjp-session'><session xmlns='{NS_SESSION}'/></iq>"
                    ),
                    &mut early,
                )?;
                if r.attr("type") != Some("result") {
                    return Err(Fatal::temporary(format!(
                        "unable to establish a session: {}",
                        stanza_error(&r)
                    )));
                }
            }
        }
        let info = self.request(
            "sjp-disco",
            &format!(
                "<iq type='get' id='sjp-disco' to='{}'><query xmlns='{NS_DISCO_INFO}'/></iq>",
                sj::escape::attr(&domain)
            ),
            &mut early,
        )?;
        let offers_carbons = info.child("query", NS_DISCO_INFO).is_some_and(|q| {
            q.elements().any(|f| {
                f.local_name() == "feature" && f.attr("var") == Some(crate::route::NS_CARBONS)
            })
        });
        let mut carbons = false;
        if offers_carbons {
            let r = self.request(
                "sjp-carbons",
                &format!(
                    "<iq type='set' id='sjp-carbons'><enable xmlns='{}'/></iq>",
                    crate::route::NS_CARBONS
                ),
                &mut early,
            )?;
            carbons = r.attr("type") == Some("result");
            if !carbons {
                sj::log::warn(&format!("unable to enable carbons: {}", stanza_error(&r)));
            }
        }
        // RFC 6121 §2.1.6: the server pushes roster changes only to
        // "interested" resources, those that have asked for the roster. Ask
        // now, before any client's record can go up, or a client's roster
        // set racing iqd's first get leaves every client without the push.
        // The answer is only for the server's sake: iqd fetches the roster
        // itself, as it must after each of its restarts.
        let roster = self.request(
            "sjp-roster",
            "<iq type='get' id='sjp-roster'><query xmlns='jabber:iq:roster'/></iq>",
            &mut early,
        )?;
        if roster.attr("type") != Some("result") {
            sj::log::warn(&format!(
                "unable to get the roster: {}; roster pushes may not arrive",
                stanza_error(&roster)
            ));
        }
        debug_assert!(OWN_ID.starts_with("sjp"));
        Ok(Session {
            full,
            carbons,
            early,
        })
    }
}

/// The defined condition of a stanza error.
pub fn stanza_error(el: &Element) -> String {
    el.child("error", "jabber:client")
        .and_then(|e| {
            e.elements()
                .find(|c| c.ns == NS_STANZAS && c.local_name() != "text")
        })
        .map(|c| c.local_name().to_string())
        .unwrap_or_else(|| "undefined-condition".to_string())
}
