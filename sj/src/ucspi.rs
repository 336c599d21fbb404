//! What a UCSPI wrapper hands a session end, and the stream framing both
//! session ends write (DESIGN §2, §6, §7; the PLAIN rule these feed is
//! §8's).
//!
//! A wrapper (tcpclient, tcpserver, s6-tlsc, s6-tlsd, socat) owns the
//! socket and any TLS. The program gets descriptors by number (sj-proxy
//! 6 and 7, sj-c2s 0 and 1: `Inherited`) and an environment that
//! describes the connection:
//! - `SSLCTLFD`, `SSLREADFD`, `SSLWRITEFD`: UCSPI-TLS, TLS on request
//!   (`Handover`); until then the channel is in clear;
//! - `PROTO=SSL` or `TLS`, or `SSL_PROTOCOL`: the wrapper did the TLS
//!   handshake (`encrypted`);
//! - `TCPREMOTEIP`, `TCP6REMOTEIP`, `SSLREMOTEIP`, `${PROTO}REMOTEIP`,
//!   `SOCAT_PEERADDR`: the peer's address (`peer_is_loopback`).
//!
//! sj-proxy (the client end) and sj-c2s (the server end) read all of this
//! here, and build their stream headers and stream errors here, so the
//! two ends cannot drift apart.

use crate::exit::Fatal;
use crate::framer::StreamHeader;
use crate::ns::{CLIENT as NS_CLIENT, STREAMS as NS_STREAM, STREAM_ERRORS as NS_STREAM_ERRORS};
use crate::xml::Element;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An environment lookup: the process's, or a table in tests.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

// ---- descriptors ----------------------------------------------------

/// The descriptor `n` if it is open, made close-on-exec: nothing this
/// process starts (sj-proxy's daemons) inherits the connection.
fn own_fd(n: RawFd, what: &str) -> Result<Option<OwnedFd>, Fatal> {
    if n < 0 {
        return Ok(None);
    }
    // SAFETY: only asks whether the descriptor is open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
    if nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Ok(None);
    }
    // SAFETY: the descriptor is open (checked above) and nothing else in this
    // process owns it: it was inherited from the wrapper.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Fatal::io(format!("set close-on-exec on fd {n} ({what})"), &e.into()))?;
    Ok(Some(fd))
}

/// The descriptors a wrapper hands over by number, taken before this
/// process opens any of its own: a descriptor of ours (DIR/lock, a signal
/// pipe) could otherwise get a number the wrapper left closed and pass for
/// the connection. A missing one is an error only when it is asked for,
/// so errors keep their order.
pub struct Inherited {
    fds: Vec<(RawFd, Option<OwnedFd>)>,
    /// How to run the program, for the error about a missing descriptor.
    hint: &'static str,
}

impl Inherited {
    pub fn claim(numbers: &[RawFd], hint: &'static str) -> Result<Inherited, Fatal> {
        let mut fds = Vec::with_capacity(numbers.len());
        for &n in numbers {
            fds.push((n, own_fd(n, "an inherited descriptor")?));
        }
        Ok(Inherited { fds, hint })
    }

    /// The descriptor `n` claimed at startup.
    pub fn take(&mut self, n: RawFd, what: &str) -> Result<OwnedFd, Fatal> {
        self.fds
            .iter_mut()
            .find(|(m, _)| *m == n)
            .and_then(|(_, fd)| fd.take())
            .ok_or_else(|| {
                Fatal::permanent(format!(
                    "unable to use fd {n} ({what}): not open; {}",
                    self.hint
                ))
            })
    }
}

// ---- the environment ------------------------------------------------

/// The wrapper did the TLS handshake: `PROTO=SSL` or `TLS` (ucspi-ssl), or
/// `SSL_PROTOCOL` (s6-tlsd, s6-tlsc), and no UCSPI-TLS hand-over pending
/// (with `SSLCTLFD` the channel is in clear until `Handover::start`,
/// whatever else the wrapper set).
pub fn encrypted() -> bool {
    encrypted_in(&process_env)
}

fn encrypted_in(env: Env) -> bool {
    if env("SSLCTLFD").is_some() {
        return false;
    }
    matches!(env("PROTO").as_deref(), Some("SSL" | "TLS")) || env("SSL_PROTOCOL").is_some()
}

/// Is the peer on a loopback address? Every address variable the wrapper
/// set must say so (one naming any other address, or none readable, wins:
/// PLAIN in clear hangs on this); without any, the socket's peer
/// (`getpeername`, false for a pipe).
pub fn peer_is_loopback(fd: BorrowedFd<'_>) -> bool {
    loopback_in(&process_env, || peer_address(fd))
}

fn loopback_in(env: Env, peer: impl FnOnce() -> Option<IpAddr>) -> bool {
    let mut names = vec![
        "TCPREMOTEIP".to_string(),
        "TCP6REMOTEIP".to_string(),
        "SSLREMOTEIP".to_string(),
        "SOCAT_PEERADDR".to_string(),
    ];
    if let Some(proto) = env("PROTO") {
        let var = format!("{proto}REMOTEIP");
        if proto.bytes().all(|b| b.is_ascii_alphanumeric()) && !names.contains(&var) {
            names.push(var);
        }
    }
    let mut named = false;
    for name in &names {
        let Some(value) = env(name) else { continue };
        if !parse_ip(&value).is_some_and(|ip| ip.is_loopback()) {
            return false;
        }
        named = true;
    }
    named || peer().is_some_and(|ip| ip.to_canonical().is_loopback())
}

/// An address as wrappers write it: maybe in brackets, maybe IPv4 mapped
/// into IPv6.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn peer_address(fd: BorrowedFd<'_>) -> Option<IpAddr> {
    use nix::sys::socket::{getpeername, SockaddrStorage};
    let sa = getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    if let Some(v4) = sa.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    sa.as_sockaddr_in6()
        .map(|v6| IpAddr::V6(v6.ip()).to_canonical())
}

// ---- UCSPI-TLS --------------------------------------------------------

/// The UCSPI-TLS descriptors (`SSLCTLFD`, `SSLREADFD`, `SSLWRITEFD`),
/// claimed at startup for the reason `Inherited` gives.
pub struct Handover {
    ctl: OwnedFd,
    rd: OwnedFd,
    wr: OwnedFd,
}

impl Handover {
    /// None without `SSLCTLFD`; an error when it is set and the three do
    /// not name open descriptors.
    pub fn claim() -> Option<Result<Handover, Fatal>> {
        Self::claim_in(&process_env)
    }

    fn claim_in(env: Env) -> Option<Result<Handover, Fatal>> {
        env("SSLCTLFD")?;
        let number = |name: &str| -> Result<RawFd, Fatal> {
            env(name)
                .and_then(|v| v.trim().parse::<RawFd>().ok())
                .filter(|&n| n >= 0)
                .ok_or_else(|| {
                    Fatal::permanent(format!(
                        "unable to start TLS: SSLCTLFD is set but {name} is not a descriptor number"
                    ))
                })
        };
        let open = |n: RawFd, name: &str| -> Result<OwnedFd, Fatal> {
            own_fd(n, name)?.ok_or_else(|| {
                Fatal::permanent(format!(
                    "unable to use fd {n} ({name}): not open; the UCSPI-TLS wrapper did not pass it"
                ))
            })
        };
        let claim = || -> Result<Handover, Fatal> {
            let (c, r, w) = (
                number("SSLCTLFD")?,
                number("SSLREADFD")?,
                number("SSLWRITEFD")?,
            );
            let ctl = open(c, "SSLCTLFD")?;
            let rd = open(r, "SSLREADFD")?;
            let wr = if w == r {
                rd.try_clone()
                    .map_err(|e| Fatal::io("dup SSLWRITEFD", &e))?
            } else {
                open(w, "SSLWRITEFD")?
            };
            Ok(Handover { ctl, rd, wr })
        };
        Some(claim())
    }

    /// Start TLS: the caller has exchanged `<starttls/>` and `<proceed/>`
    /// in clear. Returns the descriptors to read and write from now on
    /// (non-blocking); the plain ones are the wrapper's from here.
    pub fn start(self) -> Result<(OwnedFd, OwnedFd), Fatal> {
        crate::io::write_all(&self.ctl, b"y")
            .map_err(|e| Fatal::io("start TLS through SSLCTLFD", &e))?;
        crate::io::set_nonblocking(&self.rd)
            .map_err(|e| Fatal::io("set SSLREADFD non-blocking", &e))?;
        crate::io::set_nonblocking(&self.wr)
            .map_err(|e| Fatal::io("set SSLWRITEFD non-blocking", &e))?;
        // Kept open to the end: a wrapper may take its closing for the
        // end of the connection.
        std::mem::forget(self.ctl);
        Ok((self.rd, self.wr))
    }
}

// ---- ids ----------------------------------------------------------------

/// `n` random bytes as hex: stream ids, generated resource names, a
/// process's own salt key.
pub fn random_hex(n: usize) -> String {
    crate::sasl::random_bytes(n)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- stream headers and errors -------------------------------------

/// The header sj-proxy opens (and restarts) its stream with: `to` the
/// server's domain, `from` the account once the channel is encrypted
/// (RFC 6120 §4.7.1).
pub fn client_header(to: &str, from: Option<&str>) -> String {
    header(("to", to), from)
}

/// The header sj-c2s answers a client's with: a fresh `id`, and `from` the
/// domain it serves once it knows it (RFC 6120 §4.7.1; an error before
/// then goes out under a header without one, §4.9.1.1).
pub fn server_header(id: &str, from: Option<&str>) -> String {
    header(("id", id), from)
}

fn header((name, value): (&str, &str), from: Option<&str>) -> String {
    let from = from
        .map(|f| format!(" from='{}'", crate::xml::escape_attr(f)))
        .unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}' {name}='{}'{from} version='1.0' xml:lang='en'>",
        crate::xml::escape_attr(value)
    )
}

/// Why a peer's stream header is in the wrong namespaces, if it is (its
/// condition is `invalid-namespace`, RFC 6120 §4.9.3.10): the stream
/// element outside the stream namespace, or content in another namespace
/// than jabber:client (the records imply it).
pub fn namespace_problem(h: &StreamHeader) -> Option<String> {
    if let Some(ns) = h.get("xmlns:stream").filter(|ns| *ns != NS_STREAM) {
        return Some(format!("stream namespace {ns:?}, not {NS_STREAM}"));
    }
    if !h.is_jabber_client() {
        return Some(format!(
            "default namespace {:?}, not jabber:client",
            h.get("xmlns").unwrap_or_default()
        ));
    }
    None
}

/// The major version a header declares ("1.0": 1; RFC 6120 §4.7.5 ignores
/// leading zeros); None when it has no readable one. Only the major
/// version decides anything here, so the rest is not read.
pub fn major_version(h: &StreamHeader) -> Option<u32> {
    let v = h.get("version")?;
    v.split('.').next()?.trim().parse::<u32>().ok()
}

/// `<stream:error>` with `condition` (RFC 6120 §4.9.3) and, if given, a
/// `<text/>` for people.
pub fn stream_error(condition: &str, text: Option<&str>) -> String {
    let text = text
        .map(|t| {
            format!(
                "<text xmlns='{NS_STREAM_ERRORS}' xml:lang='en'>{}</text>",
                crate::xml::escape_text(t)
            )
        })
        .unwrap_or_default();
    format!("<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>{text}</stream:error>")
}

/// A stream error and the end of the stream: the last bytes of a stream
/// ended for `condition`.
pub fn stream_error_end(condition: &str) -> String {
    format!("{}</stream:stream>", stream_error(condition, None))
}

/// The condition of a `<stream:error>` record (`undefined-condition` when
/// it names none).
pub fn stream_error_condition(rec: &[u8]) -> String {
    Element::parse(rec)
        .and_then(|e| {
            e.elements()
                .find(|c| c.ns == NS_STREAM_ERRORS && c.local_name() != "text")
                .map(|c| c.local_name().to_string())
        })
        .unwrap_or_else(|| "undefined-condition".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn header(attrs: &[(&str, &str)]) -> StreamHeader {
        StreamHeader {
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn encrypted_only_without_a_pending_handover() {
        assert!(!encrypted_in(&env(&[])));
        assert!(!encrypted_in(&env(&[("PROTO", "TCP")])));
        assert!(encrypted_in(&env(&[("PROTO", "SSL")])));
        assert!(encrypted_in(&env(&[("PROTO", "TLS")])));
        assert!(encrypted_in(&env(&[("SSL_PROTOCOL", "TLSv1.3")])));
        // UCSPI-TLS before the hand-over: in clear, whatever else is set.
        assert!(!encrypted_in(&env(&[("PROTO", "SSL"), ("SSLCTLFD", "8")])));
        assert!(!encrypted_in(&env(&[
            ("SSL_PROTOCOL", "TLSv1.3"),
            ("SSLCTLFD", "8")
        ])));
    }

    #[test]
    fn loopback_needs_every_named_address() {
        let none = || None;
        let lo = || Some(IpAddr::from([127, 0, 0, 1]));
        let far = || Some(IpAddr::from([192, 0, 2, 1]));
        assert!(loopback_in(&env(&[("TCPREMOTEIP", "127.0.0.1")]), none));
        assert!(loopback_in(&env(&[("TCP6REMOTEIP", "::1")]), none));
        assert!(loopback_in(&env(&[("TCP6REMOTEIP", "[::1]")]), none));
        assert!(loopback_in(
            &env(&[("TCP6REMOTEIP", "::ffff:127.0.0.1")]),
            none
        ));
        assert!(loopback_in(&env(&[("SOCAT_PEERADDR", "127.0.0.2")]), far));
        assert!(loopback_in(&env(&[("SSLREMOTEIP", "127.0.0.1")]), none));
        assert!(!loopback_in(&env(&[("TCPREMOTEIP", "192.0.2.1")]), lo));
        // Any variable naming another address wins, in any order.
        assert!(!loopback_in(
            &env(&[
                ("TCPREMOTEIP", "127.0.0.1"),
                ("SOCAT_PEERADDR", "192.0.2.1")
            ]),
            none
        ));
        assert!(!loopback_in(
            &env(&[
                ("SOCAT_PEERADDR", "192.0.2.1"),
                ("TCPREMOTEIP", "127.0.0.1")
            ]),
            none
        ));
        assert!(!loopback_in(
            &env(&[
                ("PROTO", "X"),
                ("XREMOTEIP", "192.0.2.1"),
                ("TCPREMOTEIP", "127.0.0.1")
            ]),
            none
        ));
        // An address that cannot be read is not loopback.
        assert!(!loopback_in(&env(&[("TCPREMOTEIP", "localhost")]), lo));
        // Nothing named: the socket's peer.
        assert!(loopback_in(&env(&[]), lo));
        assert!(!loopback_in(&env(&[]), far));
        assert!(!loopback_in(&env(&[]), none));
        assert!(loopback_in(&env(&[]), || Some(
            "::ffff:127.0.0.1".parse().expect("ip")
        )));
    }

    #[test]
    fn peer_of_a_socket_and_of_a_pipe() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        use std::os::fd::AsFd;
        assert_eq!(peer_address(c.as_fd()), Some(IpAddr::from([127, 0, 0, 1])));
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        assert_eq!(peer_address(r.as_fd()), None);
    }

    #[test]
    fn handover_from_the_environment() {
        assert!(Handover::claim_in(&env(&[])).is_none());
        // Numbers are read before any descriptor is taken.
        let e = Handover::claim_in(&env(&[("SSLCTLFD", "x")]));
        assert!(e.is_some_and(|r| r.is_err()));
        let e = Handover::claim_in(&env(&[("SSLCTLFD", "1000"), ("SSLREADFD", "-1")]));
        assert!(e.is_some_and(|r| r.is_err()));
        // Pipes stand for the wrapper's descriptors.
        let (ctl_r, ctl_w) = nix::unistd::pipe().expect("pipe");
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        let n = |fd: &OwnedFd| fd.as_raw_fd().to_string();
        let (c, r, w) = (n(&ctl_w), n(&rd), n(&wr));
        let vars = [
            ("SSLCTLFD", c.as_str()),
            ("SSLREADFD", r.as_str()),
            ("SSLWRITEFD", w.as_str()),
        ];
        // The claim owns them now.
        std::mem::forget((ctl_w, rd, wr));
        let h = Handover::claim_in(&env(&vars))
            .expect("set")
            .expect("claimed");
        let (rd, wr) = h.start().expect("start");
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&ctl_r, &mut b).expect("read"), 1);
        assert_eq!(&b, b"y");
        crate::io::write_all(&wr, b"z").expect("write");
        assert_eq!(nix::unistd::read(&rd, &mut b).expect("read"), 1);
        assert_eq!(&b, b"z");
    }

    #[test]
    fn handover_with_one_descriptor_for_both_ways() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (ctl_r, ctl_w) = nix::unistd::pipe().expect("pipe");
        let fa = OwnedFd::from(a);
        let (c, s) = (ctl_w.as_raw_fd().to_string(), fa.as_raw_fd().to_string());
        let vars = [
            ("SSLCTLFD", c.as_str()),
            ("SSLREADFD", s.as_str()),
            ("SSLWRITEFD", s.as_str()),
        ];
        std::mem::forget((ctl_w, fa));
        let h = Handover::claim_in(&env(&vars))
            .expect("set")
            .expect("claimed");
        let (rd, wr) = h.start().expect("start");
        assert_ne!(rd.as_raw_fd(), wr.as_raw_fd());
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(&ctl_r, &mut one).expect("read"), 1);
        crate::io::write_all(&wr, b"q").expect("write");
        use std::io::Read;
        (&b).read_exact(&mut one).expect("read");
        assert_eq!(&one, b"q");
    }

    #[test]
    fn inherited_takes_once_and_says_how_to_run() {
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        let n = r.as_raw_fd();
        std::mem::forget(r);
        let mut i = Inherited::claim(&[n, 1000], "run it under tcpserver").expect("claim");
        assert!(i.take(n, "reading").is_ok());
        let e = i.take(n, "reading").expect_err("taken twice");
        assert!(
            e.msg.contains("not open; run it under tcpserver"),
            "{}",
            e.msg
        );
        assert_eq!(e.code, crate::exit::PERMANENT);
        assert!(i.take(1000, "writing").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            client_header("example.org", Some("a@example.org")),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' from='a@example.org' version='1.0' xml:lang='en'>"
        );
        assert!(!client_header("x'y", None).contains("from="));
        assert!(client_header("x'y", None).contains("to='x&apos;y'"));
        assert_eq!(
            server_header("ab12", Some("example.org")),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='ab12' from='example.org' version='1.0' xml:lang='en'>"
        );
        assert!(!server_header("ab12", None).contains("from="));
        let id = random_hex(8);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, random_hex(8));
    }

    #[test]
    fn header_checks() {
        let good = header(&[
            ("xmlns", "jabber:client"),
            ("xmlns:stream", NS_STREAM),
            ("version", "1.0"),
        ]);
        assert_eq!(namespace_problem(&good), None);
        assert_eq!(major_version(&good), Some(1));
        assert!(namespace_problem(&header(&[("xmlns", "jabber:server")])).is_some());
        assert!(namespace_problem(&header(&[("xmlns:stream", "urn:x")])).is_some());
        // Implied jabber:client.
        assert_eq!(namespace_problem(&header(&[])), None);
        for (v, want) in [
            ("1.0", Some(1)),
            ("01.00", Some(1)),
            ("2.0", Some(2)),
            ("0.9", Some(0)),
            ("1", Some(1)),
            ("x.0", None),
            ("", None),
        ] {
            assert_eq!(major_version(&header(&[("version", v)])), want, "{v}");
        }
        assert_eq!(major_version(&header(&[])), None);
    }

    #[test]
    fn stream_errors() {
        assert_eq!(
            stream_error_end("host-unknown"),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        );
        let with_text = stream_error("policy-violation", Some("too <big>"));
        assert!(with_text.contains("<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>too &lt;big&gt;</text>"));
        let rec = format!(
            "<stream:error xmlns:stream='{NS_STREAM}'><text xmlns='{NS_STREAM_ERRORS}'>x</text><conflict xmlns='{NS_STREAM_ERRORS}'/></stream:error>"
        );
        assert_eq!(stream_error_condition(rec.as_bytes()), "conflict");
        assert_eq!(
            stream_error_condition(
                b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>"
            ),
            "undefined-condition"
        );
        let ours = stream_error("see-other-host", None);
        let rec = ours.replace(
            "<stream:error>",
            &format!("<stream:error xmlns:stream='{NS_STREAM}'>"),
        );
        assert_eq!(stream_error_condition(rec.as_bytes()), "see-other-host");
    }
}
