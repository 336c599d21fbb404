//! Just enough XMPP over a blocking socket for the bench: the client side
//! of a login (SCRAM, bind, presence) for the load tool, and the server side
//! that lets sj-proxy log in on its fds 6/7. Records come from the shared
//! framer, SCRAM from `sj::sasl`; nothing here is a second implementation
//! of either.

use sj::framer::{Event, Framer, Limits, Mode};
use sj::ns::{
    BIND as NS_BIND, DISCO_INFO as NS_DISCO_INFO, ROSTER as NS_ROSTER, SASL as NS_SASL,
    SESSION as NS_SESSION,
};
use sj::sasl::{self, Hash, ScramClient, ScramServer, StoredCredentials};
use sj::xml::Element;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// One negotiation step may take this long.
pub const STEP: Duration = Duration::from_secs(20);
/// Longest a single blocking read waits before the caller's deadline is checked.
const READ_SLICE: Duration = Duration::from_millis(500);

/// A blocking stream socket (TCP to a server, or one end of a socketpair).
pub trait Sock: Read + Write + AsFd + Send {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Sock for TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Sock for UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// A socket with the framer on its input.
pub struct Conn<S: Sock> {
    pub sock: S,
    framer: Framer,
    buf: Vec<u8>,
}

impl<S: Sock> Conn<S> {
    pub fn new(sock: S) -> Result<Self, String> {
        sock.set_timeout(Some(READ_SLICE))
            .map_err(|e| format!("unable to set a read timeout: {e}"))?;
        Ok(Conn {
            sock,
            framer: Framer::new(Mode::Stream, Limits::DEFAULT),
            buf: vec![0; 256 * 1024],
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.sock
            .write_all(data)
            .map_err(|e| format!("unable to write to the peer: {e}"))
    }

    /// End the stream the polite way; the peer closes the socket.
    pub fn close(mut self) {
        let _ = self.send(b"<presence type='unavailable'/></stream:stream>");
        let end = Instant::now() + Duration::from_secs(2);
        while let Ok(ev) = self.next(end) {
            if ev == Event::End {
                return;
            }
        }
    }

    /// The next event the bytes read so far complete, without reading.
    pub fn pop(&mut self) -> Result<Option<Event>, String> {
        self.framer
            .next_event()
            .map_err(|e| format!("unable to frame the peer's stream: {e}"))
    }

    /// One read (blocking at most READ_SLICE). False when it timed out.
    pub fn fill(&mut self) -> Result<bool, String> {
        match self.sock.read(&mut self.buf) {
            Ok(0) => Err("unable to read from the peer: connection closed".into()),
            Ok(n) => {
                self.framer.feed(&self.buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("unable to read from the peer: {e}")),
        }
    }

    /// The next event, reading as needed until `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<Event, String> {
        loop {
            if let Some(ev) = self.pop()? {
                return Ok(ev);
            }
            if Instant::now() >= deadline {
                return Err("unable to read from the peer: timed out".into());
            }
            self.fill()?;
        }
    }

    /// The next record; a stream error or the end of the stream is an error.
    pub fn record(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        match self.next(deadline)? {
            Event::Record(r) => Ok(r),
            Event::StreamError(r) => Err(format!(
                "the peer sent a stream error: {}",
                String::from_utf8_lossy(&r).trim_end()
            )),
            Event::End => Err("the peer closed the stream".into()),
            Event::Header(_) => Err("the peer sent a stream header out of turn".into()),
            // Only under limits that skip, which this client does not use.
            Event::Dropped(d) => Err(format!("the peer sent a stanza over a limit: {}", d.reason)),
        }
    }

    pub fn element(&mut self, deadline: Instant) -> Result<Element<'static>, String> {
        let r = self.record(deadline)?;
        Element::parse(&r)
            .map(Element::into_owned)
            .ok_or_else(|| "unable to parse a record from the peer".to_string())
    }

    fn expect_header(&mut self, deadline: Instant) -> Result<(), String> {
        match self.next(deadline)? {
            Event::Header(_) => Ok(()),
            _ => Err("expected a stream header".into()),
        }
    }

    /// Wait for `want` (local name, SASL namespace); return its decoded text.
    fn sasl_reply(&mut self, want: &str) -> Result<Vec<u8>, String> {
        let el = self.element(Instant::now() + STEP)?;
        if el.ns != NS_SASL || el.local_name() != want {
            return Err(format!("expected SASL <{want}>, got <{}>", el.name));
        }
        let t = el.text();
        let t = t.trim();
        if t.is_empty() || t == "=" {
            return Ok(Vec::new());
        }
        sasl::b64decode(t).map_err(|e| format!("bad base64 in <{want}>: {e}"))
    }
}

/// Log in as `user@domain/resource` with SCRAM, bind, send initial
/// presence. Returns the connection and the bound full JID.
pub fn login<S: Sock>(
    sock: S,
    domain: &str,
    user: &str,
    password: &str,
    resource: &str,
) -> Result<(Conn<S>, String), String> {
    let mut c = Conn::new(sock)?;
    let step = || Instant::now() + STEP;
    c.send(sj::ucspi::client_header(domain, None).as_bytes())?;
    c.expect_header(step())?;
    let features = c.element(step())?;
    let offered: Vec<String> = features
        .child("mechanisms", NS_SASL)
        .map(|m| m.elements().map(|e| e.text().trim().to_string()).collect())
        .unwrap_or_default();
    let hash = sasl::best_scram(&offered)
        .ok_or_else(|| format!("no SCRAM offered ({})", offered.join(" ")))?;
    let mut scram = ScramClient::new(hash, user, password, None);
    let first = scram.first();
    c.send(sasl::element("auth", Some(hash.mechanism()), &first).as_bytes())?;
    let challenge = c.sasl_reply("challenge")?;
    let fin = scram
        .final_message(&challenge)
        .map_err(|e| format!("SCRAM: {e}"))?;
    c.send(sasl::element("response", None, &fin).as_bytes())?;
    let server_final = c.sasl_reply("success")?;
    scram
        .verify(&server_final)
        .map_err(|e| format!("SCRAM server signature: {e}"))?;
    c.framer.reset();
    c.send(sj::ucspi::client_header(domain, None).as_bytes())?;
    c.expect_header(step())?;
    let features = c.element(step())?;
    c.send(
        format!(
            "<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
            sj::xml::escape_text(resource)
        )
        .as_bytes(),
    )?;
    let full = loop {
        let el = c.element(step())?;
        if el.local_name() == "iq" && el.attr("id") == Some("bind") {
            break el
                .child("bind", NS_BIND)
                .and_then(|b| b.child("jid", NS_BIND))
                .map(|j| j.text().trim().to_string())
                .ok_or_else(|| "bind failed".to_string())?;
        }
    };
    if let Some(s) = features.child("session", NS_SESSION) {
        if s.child("optional", NS_SESSION).is_none() {
            c.send(
                format!("<iq type='set' id='sess'><session xmlns='{NS_SESSION}'/></iq>").as_bytes(),
            )?;
            loop {
                let el = c.element(step())?;
                if el.local_name() == "iq" && el.attr("id") == Some("sess") {
                    break;
                }
            }
        }
    }
    c.send(b"<presence/>")?;
    Ok((c, full))
}

/// The server side of sj-proxy's login, on the socket it has as fds 6/7:
/// SCRAM against `password`, bind to `full`, a disco#info answer without
/// carbons, an empty roster. Returns once sj-proxy is online.
/// With `sm` it offers XEP-0198 too, and answers sj-proxy's `<enable/>`
/// with `<enabled/>` before it returns.
pub fn serve_login_sm<S: Sock>(
    sock: S,
    password: &str,
    full: &str,
    sm: bool,
) -> Result<Conn<S>, String> {
    let mut c = Conn::new(sock)?;
    let step = || Instant::now() + STEP;
    let domain = full
        .split_once('@')
        .and_then(|(_, d)| d.split('/').next())
        .unwrap_or("localhost")
        .to_string();
    let srv_header = |id: u32| sj::ucspi::server_header(&format!("bench{id}"), Some(&domain));
    c.expect_header(step())?;
    c.send(
        format!(
            "{}<stream:features><mechanisms xmlns='{NS_SASL}'><mechanism>SCRAM-SHA-256</mechanism>\
             <mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>",
            srv_header(1)
        )
        .as_bytes(),
    )?;
    let auth = c.element(step())?;
    let hash = auth
        .attr("mechanism")
        .and_then(Hash::from_mechanism)
        .ok_or_else(|| "sj-proxy chose no SCRAM mechanism".to_string())?;
    let first = sasl::b64decode(auth.text().trim()).map_err(|e| format!("auth: {e}"))?;
    let mut scram = ScramServer::new(hash, None);
    scram
        .client_first(&first)
        .map_err(|e| format!("SCRAM client-first: {e}"))?;
    // Few iterations: the bench measures routing, not PBKDF2.
    let creds = StoredCredentials::derive(hash, password, b"sj-bench-salt", 4096);
    let challenge = scram.server_first(&creds);
    c.send(sasl::element("challenge", None, &challenge).as_bytes())?;
    let resp = c.element(step())?;
    let fin = sasl::b64decode(resp.text().trim()).map_err(|e| format!("response: {e}"))?;
    let server_final = scram
        .client_final(&fin)
        .map_err(|e| format!("SCRAM client-final: {e}"))?;
    c.send(sasl::element("success", None, &server_final).as_bytes())?;
    c.framer.reset();
    c.expect_header(step())?;
    c.send(
        format!(
            "{}<stream:features><bind xmlns='{NS_BIND}'/>{}</stream:features>",
            srv_header(2),
            if sm {
                format!("<sm xmlns='{}'/>", sj::sm::NS)
            } else {
                String::new()
            }
        )
        .as_bytes(),
    )?;
    loop {
        let el = c.element(step())?;
        if el.local_name() != "iq" {
            continue;
        }
        let id = el.attr("id").unwrap_or_default().to_string();
        if el.child("bind", NS_BIND).is_some() {
            c.send(
                format!(
                    "<iq type='result' id='{}'><bind xmlns='{NS_BIND}'><jid>{}</jid></bind></iq>",
                    sj::xml::escape_attr(&id),
                    sj::xml::escape_text(full)
                )
                .as_bytes(),
            )?;
        } else if el.child("query", NS_DISCO_INFO).is_some() {
            c.send(
                format!(
                    "<iq type='result' id='{}' from='{domain}'><query xmlns='{NS_DISCO_INFO}'/></iq>",
                    sj::xml::escape_attr(&id)
                )
                .as_bytes(),
            )?;
        } else if el.child("query", NS_ROSTER).is_some() {
            // sj-proxy's own roster get, the last step before it is online
            // (but for <enable/>).
            c.send(
                format!(
                    "<iq type='result' id='{}'><query xmlns='{NS_ROSTER}'/></iq>",
                    sj::xml::escape_attr(&id)
                )
                .as_bytes(),
            )?;
            if !sm {
                return Ok(c);
            }
            loop {
                let el = c.element(step())?;
                if el.ns == sj::sm::NS && el.local_name() == "enable" {
                    c.send(
                        format!(
                            "<enabled xmlns='{}' id='bench' resume='true' max='300'/>",
                            sj::sm::NS
                        )
                        .as_bytes(),
                    )?;
                    return Ok(c);
                }
            }
        }
    }
}
