//! The server side of stream negotiation (RFC 6120 §4-§7, DESIGN §6), as a
//! state machine without descriptors, the way translate.rs is for the
//! stanzas after it.
//!
//! Header → features (STARTTLS, SASL) → restart → features (bind) → bind
//! request → online. session.rs feeds it the client's stream header, its
//! elements and the clock, and carries out what it answers (`Action`):
//! bytes for the client, the TLS hand-over, the stream restart after
//! authentication, the registration of a bound client, the end of the
//! stream. Accounts are reached through `Accounts`: the file system in
//! sj-c2s, a table in the tests.
//!
//! A checked password's answer waits for the account's slot in its
//! failure record (`sj::authfail`), success and failure alike: the answer
//! is held (`holding`) and given by `release` when its time comes; the
//! client is not read meanwhile, so what it pipelined comes after.

use sj::authfail::Gate;
use sj::exit::{Fatal, PERMANENT, PROTOCOL, TEMPORARY};
use sj::framer::StreamHeader;
use sj::jid::Jid;
use sj::ns::{BIND as NS_BIND, SASL as NS_SASL, SESSION as NS_SESSION, TLS as NS_TLS};
use sj::path::{component, Kind};
use sj::sasl::{self, Hash, ScramServer, StoredCredentials};
use sj::ucspi;
use sj::xml::Element;
use std::time::{Duration, Instant};

/// SASL attempts before the stream is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;
/// Time allowed from authentication to a bound resource.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(60);
/// What a held answer keeps back from the authentication deadline, so the
/// answer is on the wire before the deadline's stream error would be.
const HOLD_MARGIN: Duration = Duration::from_millis(250);
/// Longest resource bound as it is.
const MAX_NAME: usize = 64;

/// How many accounts a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `-d DIR`: DIR's account only.
    One,
    /// `-R ROOT`: every account under ROOT, chosen by the username.
    Many,
}

/// What negotiation asks of the accounts. Failure records
/// (`sj::authfail`) are kept per account; `None` names the record of
/// names that are no account (DIR's under `-d`, ROOT's under `-R`).
pub trait Accounts {
    /// Under `-d`: DIR's account, or why it cannot be told. Asked at each
    /// stream header until it is known (sj-proxy may be connecting).
    fn dir_account(&mut self) -> Result<Jid, String>;
    /// Under `-R`: ROOT holds an account in `domain`.
    fn has_domain(&self, domain: &str) -> bool;
    /// Under `-R`: `bare` is an account here that may log in.
    fn exists(&self, bare: &Jid) -> bool;
    /// `bare`'s stored credentials (none when they cannot be read).
    fn credentials(&self, bare: &Jid) -> Vec<StoredCredentials>;
    /// The key of made-up salts (`sj::passwd::salt_key`).
    fn salt_key(&self) -> Vec<u8>;
    /// A password was checked, `ok` its outcome: when to answer.
    fn attempt(&self, who: Option<&Jid>, ok: bool, max_wait: Duration) -> Gate;
    /// Failures in a row in `who`'s record.
    fn failures(&self, who: Option<&Jid>) -> u32;
    /// A failure that checked no password (counted in the record of names
    /// that are no account): `Some(unlogged)` when it gets a log line.
    fn refused(&self) -> Option<u64>;
}

/// What the connection is, as the wrapper tells it (`sj::ucspi`).
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Encrypted by the wrapper (`-t`, `PROTO`, `SSL_PROTOCOL`).
    pub encrypted: bool,
    /// The client is on a loopback address.
    pub loopback: bool,
    /// The wrapper can start TLS (UCSPI-TLS).
    pub starttls: bool,
}

/// What session.rs does for the machine, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the client.
    Send(String),
    /// `<proceed/>` is queued: flush it in clear, hand the connection to
    /// the TLS wrapper, reset the framer, then call `tls_started`.
    StartTls,
    /// SASL success is queued: the stream restarts (reset the framer, the
    /// limits after authentication) and the session is this account's.
    Authenticated(Jid),
    /// A bind request: register a client named `requested` or another
    /// name, then call `bound` (or `stream_error`).
    Bind {
        id: String,
        requested: Option<String>,
    },
    /// XEP-0198 `<resume/>` instead of bind: resume the session `previd`
    /// (sm.rs), then call `resumed`, or answer `<failed/>` and go on.
    Resume { previd: String, h: u32 },
    /// A line for the log (info).
    Log(String),
    /// The stream ends (the error and `</stream:stream>` are queued):
    /// exit with `code` (0: a clean end), `why` the fatal line.
    End {
        condition: String,
        code: u8,
        why: String,
    },
}

impl Action {
    /// The outcome an `End` makes the process's.
    pub fn result(code: u8, why: String) -> Result<(), Fatal> {
        if code == 0 {
            Ok(())
        } else {
            Err(Fatal::new(code, why))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the (re)started stream header.
    Header,
    /// Features sent; STARTTLS/SASL (before auth) or bind (after).
    Negotiate,
    /// Resource bound: the rest is translate.rs's.
    Online,
}

enum Sasl {
    None,
    /// `<auth/>` without an initial response: waiting for client-first.
    AwaitFirst(Hash),
    /// server-first sent: to the account, or (None) a made-up challenge to
    /// a name with no credentials here, which fails at the next step; the
    /// failure's log text.
    AwaitFinal(Box<ScramServer>, Option<Jid>, String),
    /// Success computed; waiting for the restart.
    Done,
}

/// The outcome of a checked password, until the account's failure record
/// lets it be told.
enum Verdict {
    Success(Jid, String),
    Failure(&'static str),
}

struct Held {
    until: Instant,
    verdict: Verdict,
}

pub struct Negotiation<A: Accounts> {
    accounts: A,
    scope: Scope,
    link: Link,
    auth_timeout: Duration,
    phase: Phase,
    header_sent: bool,
    /// The domain this stream is for (the `from` of our header).
    domain: Option<String>,
    /// Under `-d`: DIR's account once known.
    dir_account: Option<Jid>,
    sasl: Sasl,
    failures: u32,
    /// A checked password's answer, held back until its slot.
    held: Option<Held>,
    authed: Option<Jid>,
    /// Authentication, then bind, must be done by then.
    deadline: Option<Instant>,
    ended: bool,
    out: Vec<Action>,
}

impl<A: Accounts> Negotiation<A> {
    /// A connection that arrived at `now`; it must authenticate within
    /// `auth_timeout`.
    pub fn new(
        accounts: A,
        scope: Scope,
        link: Link,
        auth_timeout: Duration,
        now: Instant,
    ) -> Self {
        Negotiation {
            accounts,
            scope,
            link,
            auth_timeout,
            phase: Phase::Header,
            header_sent: false,
            domain: None,
            dir_account: None,
            sasl: Sasl::None,
            failures: 0,
            held: None,
            authed: None,
            deadline: Some(now + auth_timeout),
            ended: false,
            out: Vec::new(),
        }
    }

    // ---- what the driver asks ----------------------------------------

    pub fn accounts(&self) -> &A {
        &self.accounts
    }

    /// Our stream header is out (a stream error needs one before it).
    pub fn header_sent(&self) -> bool {
        self.header_sent
    }

    /// A checked password's answer is held: do not read the client.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    pub fn authenticated(&self) -> bool {
        self.authed.is_some()
    }

    /// A resource is bound: records go to translate.rs.
    pub fn online(&self) -> bool {
        self.phase == Phase::Online
    }

    /// Waiting for a stream header: after a restart, what the client sent
    /// before it is not read on.
    pub fn awaiting_header(&self) -> bool {
        self.phase == Phase::Header
    }

    /// When `release` or `expire` has something to do.
    pub fn wake(&self) -> Option<Instant> {
        match (&self.held, self.deadline) {
            (Some(h), Some(d)) => Some(d.min(h.until)),
            (Some(h), None) => Some(h.until),
            (None, d) => d,
        }
    }

    // ---- events ---------------------------------------------------------

    /// The client's stream header.
    pub fn header(&mut self, h: &StreamHeader) -> Vec<Action> {
        if self.phase != Phase::Header {
            self.fail("bad-format", PROTOCOL, "second stream header".into());
        } else {
            self.on_header(h);
        }
        self.take()
    }

    /// One record of the client's before it is online.
    pub fn element(&mut self, rec: &[u8], now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Header => self.fail(
                "bad-format",
                PROTOCOL,
                "element before the stream header".into(),
            ),
            Phase::Negotiate => match Element::parse(rec) {
                Some(el) => self.on_negotiate(&el, now),
                None => self.fail("not-well-formed", PROTOCOL, "unparsable element".into()),
            },
            Phase::Online => {}
        }
        self.take()
    }

    /// The wrapper has TLS running: the client restarts the stream.
    pub fn tls_started(&mut self) {
        self.link.encrypted = true;
    }

    /// A held answer whose time has come, if there is one.
    pub fn release(&mut self, now: Instant) -> Option<Vec<Action>> {
        if self.held.as_ref().is_none_or(|h| now < h.until) {
            return None;
        }
        let h = self.held.take()?;
        self.answer(h.verdict, now);
        Some(self.take())
    }

    /// The deadline for authentication or bind, if it has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Action> {
        if self.deadline.is_some_and(|d| now >= d) {
            let why = if self.authed.is_some() {
                "no resource bound in time".to_string()
            } else {
                format!("not authenticated within {} s", self.auth_timeout.as_secs())
            };
            self.fail("connection-timeout", TEMPORARY, why);
        }
        self.take()
    }

    /// The client asked to bind `requested` (`Action::Bind`) and got
    /// `full`; `upstream` is the upstream session's resource, which no
    /// client may take.
    pub fn bound(
        &mut self,
        id: &str,
        requested: Option<&str>,
        full: &Jid,
        upstream: Option<&str>,
    ) -> Vec<Action> {
        match requested.filter(|r| Some(*r) != full.resource()) {
            // A refused name is replaced, not an error (RFC 6120 §7.6.1
            // lets the server pick): the client goes on with the JID the
            // result names.
            Some(r) => {
                let why = name_problem(r, upstream).unwrap_or_else(|| "in use".into());
                self.log(format!("bound {full} instead of {r:?}: {why}"));
            }
            None => self.log(format!("bound {full}")),
        }
        self.send(format!(
            "<iq type='result' id='{}'><bind xmlns='{NS_BIND}'><jid>{}</jid></bind></iq>",
            sj::xml::escape_attr(id),
            sj::xml::escape_text(&full.to_string())
        ));
        self.phase = Phase::Online;
        self.deadline = None;
        self.take()
    }

    /// End the stream with a stream error (after our header, sent first if
    /// it is not out yet, RFC 6120 §4.9.1.1); the process exits with
    /// `code`. Once only.
    pub fn stream_error(&mut self, condition: &str, code: u8, why: String) -> Vec<Action> {
        self.fail(condition, code, why);
        self.take()
    }

    /// The bytes that answer the client's `</stream:stream>`.
    pub fn end_stream(&mut self) -> String {
        let mut s = self.header_once();
        s.push_str("</stream:stream>");
        self.ended = true;
        s
    }

    // ---- the machine ----------------------------------------------------

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, s: String) {
        self.out.push(Action::Send(s));
    }

    fn log(&mut self, s: String) {
        self.out.push(Action::Log(s));
    }

    fn header_once(&mut self) -> String {
        if self.header_sent {
            return String::new();
        }
        self.header_sent = true;
        ucspi::server_header(&ucspi::random_hex(8), self.domain.as_deref())
    }

    fn fail(&mut self, condition: &str, code: u8, why: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        let mut s = self.header_once();
        s.push_str(&ucspi::stream_error_end(condition));
        self.send(s);
        self.out.push(Action::End {
            condition: condition.to_string(),
            code,
            why,
        });
    }

    fn on_header(&mut self, h: &StreamHeader) {
        // Our header goes first, errors after it (RFC 6120 §4.9.1.1).
        let to = h.get("to");
        let to_domain = to.and_then(|t| Jid::parse(t).ok()).and_then(|j| {
            (j.local().is_none() && j.resource().is_none()).then(|| j.domain().to_string())
        });
        if self.scope == Scope::One && self.dir_account.is_none() {
            match self.accounts.dir_account() {
                Ok(a) => self.dir_account = Some(a),
                Err(why) => return self.fail("remote-connection-failed", TEMPORARY, why),
            }
        }
        let expected = self
            .authed
            .as_ref()
            .or(self.dir_account.as_ref())
            .map(|a| a.domain().to_string());
        self.domain = expected.clone().or_else(|| to_domain.clone());
        if let Some(why) = ucspi::namespace_problem(h) {
            return self.fail("invalid-namespace", PROTOCOL, why);
        }
        if let Some(why) = self.domain_problem(expected.as_deref(), to, to_domain.as_deref()) {
            return self.fail("host-unknown", PROTOCOL, why);
        }
        if ucspi::major_version(h).is_none_or(|m| m < 1) {
            let why = "stream version below 1.0".into();
            return self.fail("unsupported-version", PROTOCOL, why);
        }
        let mut s = self.header_once();
        s.push_str(&self.features());
        self.send(s);
        self.phase = Phase::Negotiate;
    }

    /// Why `to` is not a domain served here, if it is not.
    fn domain_problem(
        &self,
        expected: Option<&str>,
        to: Option<&str>,
        to_domain: Option<&str>,
    ) -> Option<String> {
        match (expected, to_domain) {
            (Some(e), Some(t)) if e != t => Some(format!("stream to {t}, not {e}")),
            (None, Some(t)) if self.scope == Scope::Many && !self.accounts.has_domain(t) => {
                Some(format!("stream to {t}: no account in that domain"))
            }
            (None, None) => Some("stream without to".into()),
            _ if to.is_some() && to_domain.is_none() => Some("bad to".into()),
            _ => None,
        }
    }

    fn features(&self) -> String {
        if self.authed.is_some() {
            return format!(
                "<stream:features><bind xmlns='{NS_BIND}'/><session xmlns='{NS_SESSION}'><optional/></session>{}<sm xmlns='{}'/></stream:features>",
                crate::csi::FEATURE,
                sj::sm::NS
            );
        }
        let mut f = String::from("<stream:features>");
        if self.link.starttls && !self.link.encrypted {
            f.push_str(&format!("<starttls xmlns='{NS_TLS}'/>"));
        }
        f.push_str(&format!("<mechanisms xmlns='{NS_SASL}'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>"));
        if self.plain_allowed() {
            f.push_str("<mechanism>PLAIN</mechanism>");
        }
        f.push_str("</mechanisms></stream:features>");
        f
    }

    fn plain_allowed(&self) -> bool {
        self.link.encrypted || self.link.loopback
    }

    fn on_negotiate(&mut self, el: &Element, now: Instant) {
        if self.authed.is_some() {
            return self.on_bind(el);
        }
        match (&*el.ns, el.local_name()) {
            (NS_TLS, "starttls") if self.link.starttls && !self.link.encrypted => {
                self.link.starttls = false;
                self.send(format!("<proceed xmlns='{NS_TLS}'/>"));
                self.out.push(Action::StartTls);
                self.header_sent = false;
                self.phase = Phase::Header;
            }
            (NS_SASL, "auth") => self.on_auth(el, now),
            (NS_SASL, "response") => self.on_response(el, now),
            (NS_SASL, "abort") => {
                self.sasl = Sasl::None;
                self.sasl_failure("aborted");
            }
            _ => self.fail(
                "not-authorized",
                PROTOCOL,
                format!("<{}/> before authentication", el.name),
            ),
        }
    }

    /// Send a SASL failure; the third in a connection ends the stream.
    /// Logging is the caller's (through the failure record).
    fn sasl_failure(&mut self, cond: &str) {
        self.failures += 1;
        self.send(format!("<failure xmlns='{NS_SASL}'><{cond}/></failure>"));
        if self.failures >= MAX_AUTH_FAILURES {
            // No line of its own: the failures were logged, within the
            // account's limit, and one line per connection would undo it.
            self.fail("not-authorized", PERMANENT, String::new());
        }
    }

    /// One failure log line, when the record's limit lets it through.
    fn log_failure(&mut self, log: Option<u64>, what: &str) {
        match log {
            Some(0) => self.log(format!("authentication failed: {what}")),
            Some(n) => self.log(format!(
                "authentication failed: {what} ({n} more since the last such line, not logged)"
            )),
            None => {}
        }
    }

    /// A failure that checked no password (malformed, wrong mechanism or
    /// authorization identity): answered at once, logged within the limit.
    fn refuse(&mut self, cond: &'static str, what: String) {
        let log = self.accounts.refused();
        self.log_failure(log, &what);
        self.sasl_failure(cond);
    }

    /// A password was checked: its answer waits for the account's next
    /// slot (`sj::authfail`), success and failure alike, so that neither
    /// the answer nor its delay tells anything before the slot.
    fn checked(&mut self, who: Option<&Jid>, verdict: Verdict, what: String, now: Instant) {
        let ok = matches!(verdict, Verdict::Success(..));
        let max_wait = self
            .deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now))
            .saturating_sub(HOLD_MARGIN);
        match self.accounts.attempt(who, ok, max_wait) {
            Gate::Busy { log } => {
                let n = self.accounts.failures(who);
                let what = format!("{what}: refused unchecked, {n} failures in a row");
                self.log_failure(log, &what);
                self.sasl_failure("temporary-auth-failure");
            }
            Gate::Answer { wait, log } => {
                if !ok {
                    self.log_failure(log, &what);
                }
                if wait.is_zero() {
                    self.answer(verdict, now);
                } else {
                    self.held = Some(Held {
                        until: now + wait,
                        verdict,
                    });
                }
            }
        }
    }

    fn answer(&mut self, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Success(bare, msg) => self.succeed(bare, msg, now),
            Verdict::Failure(cond) => self.sasl_failure(cond),
        }
    }

    fn succeed(&mut self, bare: Jid, msg: String, now: Instant) {
        self.log(format!("authenticated as {bare}"));
        self.send(msg);
        self.deadline = Some(now + BIND_TIMEOUT);
        self.domain = Some(bare.domain().to_string());
        self.out.push(Action::Authenticated(bare.clone()));
        self.authed = Some(bare);
        self.sasl = Sasl::Done;
        self.header_sent = false;
        self.phase = Phase::Header;
    }

    /// The bare JID a SASL username claims: `user@domain` of this stream.
    fn claimed(&self, authcid: &str) -> Option<Jid> {
        let domain = match self.scope {
            Scope::One => self.dir_account.as_ref()?.domain().to_string(),
            Scope::Many => self.domain.clone()?,
        };
        Jid::parse(&format!("{authcid}@{domain}"))
            .ok()
            .filter(|j| j.is_bare() && j.local().is_some())
    }

    /// The account `authcid` names, if it may log in here.
    fn resolve(&self, authcid: &str) -> Option<Jid> {
        let bare = self.claimed(authcid)?;
        match self.scope {
            Scope::One => self.dir_account.clone().filter(|a| *a == bare),
            Scope::Many => self.accounts.exists(&bare).then_some(bare),
        }
    }

    fn payload(el: &Element) -> Option<Vec<u8>> {
        let t = el.text();
        let t = t.trim();
        if t.is_empty() || t == "=" {
            return Some(Vec::new());
        }
        sasl::b64decode(t).ok()
    }

    fn on_auth(&mut self, el: &Element, now: Instant) {
        if !matches!(self.sasl, Sasl::None) {
            self.sasl = Sasl::None;
            return self.refuse("malformed-request", "second <auth/>".into());
        }
        let mech = el.attr("mechanism").unwrap_or("");
        let Some(data) = Self::payload(el) else {
            return self.refuse("incorrect-encoding", "bad base64 in <auth/>".into());
        };
        match mech {
            "SCRAM-SHA-256" | "SCRAM-SHA-1" => {
                let hash = if mech == "SCRAM-SHA-1" {
                    Hash::Sha1
                } else {
                    Hash::Sha256
                };
                if data.is_empty() {
                    self.sasl = Sasl::AwaitFirst(hash);
                    self.send(format!("<challenge xmlns='{NS_SASL}'/>"));
                } else {
                    self.scram_first(hash, &data);
                }
            }
            "PLAIN" if self.plain_allowed() => self.plain(&data, now),
            _ => {
                let what = format!("mechanism {mech:?} not offered");
                self.refuse("invalid-mechanism", what)
            }
        }
    }

    fn scram_first(&mut self, hash: Hash, data: &[u8]) {
        let mut srv = ScramServer::new(hash, None);
        let user = match srv.client_first(data) {
            Ok(u) => u,
            Err(e) => {
                self.sasl = Sasl::None;
                return self.refuse("malformed-request", format!("SCRAM client-first: {e}"));
            }
        };
        let claimed = self.claimed(&user);
        if !authzid_ok(srv.authzid(), claimed.as_ref()) {
            self.sasl = Sasl::None;
            let what = format!(
                "user {user:?} asked to act as {:?}",
                srv.authzid().unwrap_or("")
            );
            return self.refuse("invalid-authzid", what);
        }
        let acct = self.resolve(&user);
        let creds = acct.as_ref().and_then(|a| {
            let all = self.accounts.credentials(a);
            sj::passwd::find(&all, hash).cloned()
        });
        let (creds, what) = match (creds, &acct) {
            (Some(c), Some(a)) => (c, format!("wrong password for {a}")),
            // No such user, or no credentials of this hash: a challenge
            // like a real one, the same on every try, that no password
            // passes. The exchange then fails where a wrong password does.
            (_, a) => {
                let name = claimed.as_ref().map_or(user.clone(), Jid::to_string);
                let salt = sasl::fake_salt(&self.accounts.salt_key(), hash, &name);
                let what = match a {
                    Some(a) => format!("no {} credentials for {a}", hash.mechanism()),
                    None => format!("unknown user {user:?}"),
                };
                (
                    StoredCredentials::unmatchable(hash, salt, sj::passwd::ITERATIONS),
                    what,
                )
            }
        };
        let first = srv.server_first(&creds);
        self.send(sasl::element("challenge", None, &first));
        self.sasl = Sasl::AwaitFinal(Box::new(srv), acct, what);
    }

    fn on_response(&mut self, el: &Element, now: Instant) {
        let Some(data) = Self::payload(el) else {
            self.sasl = Sasl::None;
            let what = "bad base64 in <response/>".into();
            return self.refuse("incorrect-encoding", what);
        };
        match std::mem::replace(&mut self.sasl, Sasl::None) {
            Sasl::AwaitFirst(hash) => self.scram_first(hash, &data),
            Sasl::AwaitFinal(mut srv, acct, what) => match (srv.client_final(&data), acct) {
                (Ok(v), Some(a)) => {
                    let msg = sasl::element("success", None, &v);
                    let (who, what) = (a.clone(), format!("login as {a}"));
                    self.checked(Some(&who), Verdict::Success(a, msg), what, now);
                }
                (Ok(_), None) => {
                    // Unreachable: no proof matches random keys.
                    self.checked(None, Verdict::Failure("not-authorized"), what, now);
                }
                (Err(e), acct) => {
                    let what = format!("{what} (SCRAM: {e})");
                    let verdict = Verdict::Failure("not-authorized");
                    self.checked(acct.as_ref(), verdict, what, now);
                }
            },
            _ => self.refuse("malformed-request", "<response/> out of order".into()),
        }
    }

    fn plain(&mut self, data: &[u8], now: Instant) {
        let Ok((authzid, authcid, pw)) = sasl::plain_decode(data) else {
            return self.refuse("malformed-request", "malformed PLAIN message".into());
        };
        let claimed = self.claimed(&authcid);
        if !authzid_ok(Some(&authzid), claimed.as_ref()) {
            let what = format!("user {authcid:?} asked to act as {authzid:?}");
            return self.refuse("invalid-authzid", what);
        }
        let acct = self.resolve(&authcid);
        let ok = match &acct {
            Some(a) => self
                .accounts
                .credentials(a)
                .iter()
                .any(|c| c.verify_plain(&pw)),
            None => {
                // The same work as a real check, so the time tells nothing.
                let salt = vec![0u8; 16];
                StoredCredentials::unmatchable(Hash::Sha256, salt, sj::passwd::ITERATIONS)
                    .verify_plain(&pw)
            }
        };
        match (ok, acct) {
            (true, Some(a)) => {
                let msg = format!("<success xmlns='{NS_SASL}'/>");
                let (who, what) = (a.clone(), format!("login as {a} (PLAIN)"));
                self.checked(Some(&who), Verdict::Success(a, msg), what, now);
            }
            (_, a) => {
                let what = match &a {
                    Some(a) => format!("wrong password for {a} (PLAIN)"),
                    None => format!("unknown user {authcid:?} (PLAIN)"),
                };
                let verdict = Verdict::Failure("not-authorized");
                self.checked(a.as_ref(), verdict, what, now);
            }
        }
    }

    fn on_bind(&mut self, el: &Element) {
        if el.ns == sj::sm::NS {
            return self.on_sm_before_bind(el);
        }
        let bind = el.child("bind", NS_BIND);
        if el.name != "iq" || el.attr("type") != Some("set") || bind.is_none() {
            let cond = if matches!(&*el.name, "iq" | "message" | "presence") {
                "not-authorized"
            } else {
                "unsupported-stanza-type"
            };
            return self.fail(cond, PROTOCOL, format!("<{}/> before bind", el.name));
        }
        let requested = bind
            .and_then(|b| b.child("resource", NS_BIND))
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty());
        self.out.push(Action::Bind {
            id: el.attr("id").unwrap_or("").to_string(),
            requested,
        });
    }
}

impl<A: Accounts> Negotiation<A> {
    /// XEP-0198 before bind: `<resume/>` is for session.rs (sm.rs);
    /// `<enable/>` comes too early (§3).
    fn on_sm_before_bind(&mut self, el: &Element) {
        let h = el.attr("h").and_then(|h| h.trim().parse::<u32>().ok());
        match (el.local_name(), el.attr("previd"), h) {
            ("resume", Some(previd), Some(h)) => self.out.push(Action::Resume {
                previd: previd.to_string(),
                h,
            }),
            ("resume", _, _) => self.send(crate::sm::failed("bad-request", None)),
            ("enable", _, _) => self.send(crate::sm::failed("unexpected-request", None)),
            (other, _, _) => self.fail(
                "unsupported-stanza-type",
                PROTOCOL,
                format!("<{other}/> before bind"),
            ),
        }
    }

    /// A `<resume/>` succeeded: the session is online as it was, without
    /// a bind.
    pub fn resumed(&mut self) {
        self.phase = Phase::Online;
        self.deadline = None;
    }
}

/// The authorization identity rule of RFC 6120 §6.3.8, the same for every
/// mechanism: none, or exactly the bare JID the username claims; anything
/// else is `invalid-authzid` (§6.5.6), decided before any account is
/// looked up so the answer tells nothing about accounts.
fn authzid_ok(authzid: Option<&str>, claimed: Option<&Jid>) -> bool {
    match authzid.filter(|a| !a.is_empty()) {
        None => true,
        Some(a) => claimed.is_some_and(|c| Jid::parse(a).ok().as_ref() == Some(c)),
    }
}

/// Is `name` usable as a resource and a client directory name as it is?
pub fn valid_name(name: &str, upstream: Option<&str>) -> bool {
    name_problem(name, upstream).is_none()
}

/// Why `name` cannot be bound as it is, if it cannot.
pub fn name_problem(name: &str, upstream: Option<&str>) -> Option<String> {
    if let Err(e) = sj::jid::resource_allowed(name) {
        return Some(e.0.to_string());
    }
    if name.len() > MAX_NAME {
        return Some(format!("longer than {MAX_NAME} bytes"));
    }
    if component(Kind::Client, name).map_or(true, |c| c != name) {
        return Some("not a client directory name as it is".into());
    }
    if Some(name) == upstream {
        return Some("the upstream session's resource".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use sj::ns::{STREAMS as NS_STREAM, STREAM_ERRORS as NS_STREAM_ERRORS};
    use std::cell::RefCell;
    use std::collections::HashMap;

    const ITER: u32 = 64;

    /// Accounts in memory, with a failure record whose answers the test
    /// chooses.
    #[derive(Default)]
    struct Table {
        dir: Option<Jid>,
        accounts: HashMap<String, Vec<StoredCredentials>>,
        /// What `attempt` answers; an immediate answer by default.
        gate: Option<Gate>,
        attempts: RefCell<Vec<(Option<String>, bool, Duration)>>,
        refusals: RefCell<u32>,
    }

    impl Table {
        fn with(mut self, bare: &str, pw: &str) -> Self {
            let creds = [Hash::Sha1, Hash::Sha256]
                .into_iter()
                .map(|h| StoredCredentials::derive(h, pw, b"0123456789abcdef", ITER))
                .collect();
            self.accounts.insert(bare.to_string(), creds);
            self
        }
    }

    impl Accounts for Table {
        fn dir_account(&mut self) -> Result<Jid, String> {
            self.dir.clone().ok_or_else(|| "no account".to_string())
        }
        fn has_domain(&self, domain: &str) -> bool {
            self.accounts
                .keys()
                .any(|k| k.ends_with(&format!("@{domain}")))
        }
        fn exists(&self, bare: &Jid) -> bool {
            self.accounts.contains_key(&bare.to_string())
        }
        fn credentials(&self, bare: &Jid) -> Vec<StoredCredentials> {
            self.accounts
                .get(&bare.to_string())
                .cloned()
                .unwrap_or_default()
        }
        fn salt_key(&self) -> Vec<u8> {
            b"test key".to_vec()
        }
        fn attempt(&self, who: Option<&Jid>, ok: bool, max_wait: Duration) -> Gate {
            self.attempts
                .borrow_mut()
                .push((who.map(Jid::to_string), ok, max_wait));
            self.gate.unwrap_or(Gate::Answer {
                wait: Duration::ZERO,
                log: (!ok).then_some(0),
            })
        }
        fn failures(&self, _who: Option<&Jid>) -> u32 {
            7
        }
        fn refused(&self) -> Option<u64> {
            *self.refusals.borrow_mut() += 1;
            Some(0)
        }
    }

    const ALICE: &str = "alice@example.org";
    const LOOPBACK: Link = Link {
        encrypted: false,
        loopback: true,
        starttls: false,
    };
    const REMOTE: Link = Link {
        encrypted: false,
        loopback: false,
        starttls: true,
    };

    struct T {
        n: Negotiation<Table>,
        now: Instant,
        /// Everything sent to the client.
        sent: String,
        logs: Vec<String>,
        end: Option<(String, u8, String)>,
        authed: Option<Jid>,
        bind: Option<(String, Option<String>)>,
        tls: bool,
    }

    impl T {
        fn new(table: Table, scope: Scope, link: Link) -> T {
            let now = Instant::now();
            T {
                n: Negotiation::new(table, scope, link, Duration::from_secs(10), now),
                now,
                sent: String::new(),
                logs: Vec::new(),
                end: None,
                authed: None,
                bind: None,
                tls: false,
            }
        }

        /// -d for alice, who has a password.
        fn dir(link: Link) -> T {
            let table = Table {
                dir: Jid::parse(ALICE).ok(),
                ..Table::default()
            }
            .with(ALICE, "secret");
            T::new(table, Scope::One, link)
        }

        fn apply(&mut self, acts: Vec<Action>) {
            for a in acts {
                match a {
                    Action::Send(s) => self.sent.push_str(&s),
                    Action::Log(l) => self.logs.push(l),
                    Action::End {
                        condition,
                        code,
                        why,
                    } => self.end = Some((condition, code, why)),
                    Action::Authenticated(j) => self.authed = Some(j),
                    Action::Bind { id, requested } => self.bind = Some((id, requested)),
                    Action::StartTls => self.tls = true,
                    Action::Resume { previd, h } => self.logs.push(format!("resume {previd} {h}")),
                }
            }
        }

        fn take(&mut self) -> String {
            std::mem::take(&mut self.sent)
        }

        fn header(&mut self, attrs: &[(&str, &str)]) -> String {
            let h = StreamHeader {
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            let acts = self.n.header(&h);
            self.apply(acts);
            self.take()
        }

        fn open(&mut self) -> String {
            self.header(&[
                ("xmlns", "jabber:client"),
                ("xmlns:stream", NS_STREAM),
                ("to", "example.org"),
                ("version", "1.0"),
            ])
        }

        fn el(&mut self, rec: &str) -> String {
            let acts = self.n.element(rec.as_bytes(), self.now);
            self.apply(acts);
            self.take()
        }

        fn auth(&mut self, mech: &str, data: &[u8]) -> String {
            let b = sasl::b64encode(data);
            self.el(&format!(
                "<auth xmlns='{NS_SASL}' mechanism='{mech}'>{b}</auth>"
            ))
        }

        fn response(&mut self, data: &[u8]) -> String {
            let b = sasl::b64encode(data);
            self.el(&format!("<response xmlns='{NS_SASL}'>{b}</response>"))
        }

        /// A SCRAM exchange; what the last step sent. With an `authzid`
        /// only the first step (ScramClient cannot ask for one).
        fn scram(&mut self, hash: Hash, user: &str, pw: &str, authzid: Option<&str>) -> String {
            let mut c = sasl::ScramClient::new(hash, user, pw, None);
            let mut first = c.first();
            if let Some(a) = authzid {
                let s = String::from_utf8(first).expect("utf8");
                first = s.replacen("n,,", &format!("n,a={a},"), 1).into_bytes();
                return self.auth(hash.mechanism(), &first);
            }
            let got = self.auth(hash.mechanism(), &first);
            let Some(ch) = payload_of(&got, "challenge") else {
                return got;
            };
            let fin = c.final_message(&ch).expect("server-first");
            self.response(&fin)
        }

        fn end_condition(&self) -> Option<&str> {
            self.end.as_ref().map(|(c, _, _)| c.as_str())
        }
    }

    fn failure(cond: &str) -> String {
        format!("<failure xmlns='{NS_SASL}'><{cond}/></failure>")
    }

    fn payload_of(sent: &str, name: &str) -> Option<Vec<u8>> {
        let start = sent.find(&format!("<{name} xmlns='{NS_SASL}'>"))?;
        let rest = &sent[start..];
        let text = &rest[rest.find('>')? + 1..rest.find("</")?];
        sasl::b64decode(text).ok()
    }

    fn mechanisms(sent: &str) -> Vec<&str> {
        sent.split("<mechanism>")
            .skip(1)
            .filter_map(|s| s.split("</mechanism>").next())
            .collect()
    }

    #[test]
    fn header_is_answered_with_features() {
        let mut t = T::dir(LOOPBACK);
        let out = t.open();
        assert!(
            out.starts_with("<?xml version='1.0'?><stream:stream "),
            "{out}"
        );
        assert!(out.contains(" from='example.org' "), "{out}");
        assert!(out.contains("<stream:features>"), "{out}");
        assert_eq!(mechanisms(&out), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]);
        assert!(!out.contains("starttls"));
        assert!(t.n.header_sent() && !t.n.authenticated() && !t.n.awaiting_header());
        assert!(t.end.is_none());
    }

    #[test]
    fn header_errors_follow_our_header() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[
                    ("xmlns", "jabber:server"),
                    ("to", "example.org"),
                    ("version", "1.0"),
                ],
                "invalid-namespace",
            ),
            (
                &[
                    ("xmlns:stream", "urn:x"),
                    ("to", "example.org"),
                    ("version", "1.0"),
                ],
                "invalid-namespace",
            ),
            (&[("to", "example.com"), ("version", "1.0")], "host-unknown"),
            (
                &[("to", "a@example.org"), ("version", "1.0")],
                "host-unknown",
            ),
            (
                &[("to", "example.org"), ("version", "0.9")],
                "unsupported-version",
            ),
            (&[("to", "example.org")], "unsupported-version"),
        ];
        for (attrs, cond) in cases {
            let mut t = T::dir(LOOPBACK);
            let out = t.header(attrs);
            assert_eq!(t.end_condition(), Some(*cond), "{attrs:?}");
            assert_eq!(t.end.as_ref().map(|e| e.1), Some(PROTOCOL));
            assert!(
                out.starts_with("<?xml version='1.0'?><stream:stream "),
                "{out}"
            );
            assert!(
                out.ends_with(&format!(
                    "<stream:error><{cond} xmlns='{NS_STREAM_ERRORS}'/></stream:error></stream:stream>"
                )),
                "{out}"
            );
            assert!(!out.contains("<stream:features>"));
        }
    }

    #[test]
    fn a_version_above_one_is_accepted() {
        let mut t = T::dir(LOOPBACK);
        let out = t.header(&[("to", "example.org"), ("version", "2.0")]);
        assert!(
            out.contains("<stream:features>") && t.end.is_none(),
            "{out}"
        );
    }

    #[test]
    fn dir_account_unknown_is_temporary() {
        let mut t = T::new(Table::default(), Scope::One, LOOPBACK);
        let out = t.open();
        assert_eq!(t.end_condition(), Some("remote-connection-failed"));
        assert_eq!(t.end.as_ref().map(|e| e.1), Some(TEMPORARY));
        assert!(
            out.contains("<stream:stream ") && !out.contains(" from="),
            "{out}"
        );
    }

    #[test]
    fn dir_needs_no_to() {
        let mut t = T::dir(LOOPBACK);
        let out = t.header(&[("version", "1.0")]);
        assert!(
            out.contains(" from='example.org' ") && t.end.is_none(),
            "{out}"
        );
    }

    #[test]
    fn root_checks_the_domain() {
        let table = Table::default().with("bob@example.net", "pw");
        let mut t = T::new(table, Scope::Many, LOOPBACK);
        t.header(&[("to", "example.org"), ("version", "1.0")]);
        assert_eq!(t.end_condition(), Some("host-unknown"));
        let table = Table::default().with("bob@example.net", "pw");
        let mut t = T::new(table, Scope::Many, LOOPBACK);
        t.header(&[("version", "1.0")]);
        assert_eq!(t.end.map(|e| e.2).as_deref(), Some("stream without to"));
        let table = Table::default().with("bob@example.net", "pw");
        let mut t = T::new(table, Scope::Many, LOOPBACK);
        let out = t.header(&[("to", "example.net"), ("version", "1.0")]);
        assert!(
            out.contains(" from='example.net' ") && t.end.is_none(),
            "{out}"
        );
        let out = t.scram(Hash::Sha256, "bob", "pw", None);
        assert!(
            out.starts_with(&format!("<success xmlns='{NS_SASL}'>")),
            "{out}"
        );
        assert_eq!(
            t.authed.as_ref().map(Jid::to_string).as_deref(),
            Some("bob@example.net")
        );
    }

    #[test]
    fn second_header_and_early_element_are_bad_format() {
        let mut t = T::dir(LOOPBACK);
        t.el("<iq type='get' id='1'/>");
        assert_eq!(t.end_condition(), Some("bad-format"));
        let mut t = T::dir(LOOPBACK);
        t.open();
        t.header(&[("to", "example.org"), ("version", "1.0")]);
        assert_eq!(t.end_condition(), Some("bad-format"));
    }

    #[test]
    fn plain_only_when_encrypted_or_loopback() {
        let mut t = T::dir(REMOTE);
        let out = t.open();
        assert_eq!(mechanisms(&out), ["SCRAM-SHA-256", "SCRAM-SHA-1"]);
        assert!(
            out.contains(&format!("<starttls xmlns='{NS_TLS}'/>")),
            "{out}"
        );
        let out = t.auth("PLAIN", &sasl::plain_encode("", "alice", "secret"));
        assert_eq!(out, failure("invalid-mechanism"));
        assert!(t.authed.is_none());
        let mut t = T::dir(Link {
            encrypted: true,
            loopback: false,
            starttls: false,
        });
        assert!(mechanisms(&t.open()).contains(&"PLAIN"));
    }

    #[test]
    fn starttls_then_restart_without_it() {
        let mut t = T::dir(REMOTE);
        t.open();
        let out = t.el(&format!("<starttls xmlns='{NS_TLS}'/>"));
        assert_eq!(out, format!("<proceed xmlns='{NS_TLS}'/>"));
        assert!(t.tls && t.n.awaiting_header() && !t.n.header_sent());
        t.n.tls_started();
        let out = t.open();
        assert!(out.starts_with("<?xml"), "{out}");
        assert!(!out.contains("starttls"), "{out}");
        assert!(mechanisms(&out).contains(&"PLAIN"));
        // Asked again, once encrypted: not offered, so not allowed.
        t.el(&format!("<starttls xmlns='{NS_TLS}'/>"));
        assert_eq!(t.end_condition(), Some("not-authorized"));
    }

    #[test]
    fn scram_both_hashes_then_bind_features() {
        for hash in [Hash::Sha256, Hash::Sha1] {
            let mut t = T::dir(REMOTE);
            t.open();
            let out = t.scram(hash, "alice", "secret", None);
            assert!(
                out.starts_with(&format!("<success xmlns='{NS_SASL}'>")),
                "{out}"
            );
            assert_eq!(
                t.authed.as_ref().map(Jid::to_string).as_deref(),
                Some(ALICE)
            );
            assert!(t.logs.contains(&format!("authenticated as {ALICE}")));
            assert!(t.n.authenticated() && t.n.awaiting_header() && !t.n.header_sent());
            let out = t.open();
            assert!(out.contains(&format!("<bind xmlns='{NS_BIND}'/>")), "{out}");
            assert!(out.contains("<optional/></session>"), "{out}");
            assert!(!out.contains("<mechanisms"), "{out}");
        }
    }

    #[test]
    fn scram_without_initial_response() {
        let mut t = T::dir(REMOTE);
        t.open();
        let out = t.auth("SCRAM-SHA-1", b"");
        assert_eq!(out, format!("<challenge xmlns='{NS_SASL}'/>"));
        let mut c = sasl::ScramClient::new(Hash::Sha1, "alice", "secret", None);
        let out = t.response(&c.first());
        let ch = payload_of(&out, "challenge").expect("challenge");
        let out = t.response(&c.final_message(&ch).expect("final"));
        let v = payload_of(&out, "success").expect("success");
        c.verify(&v).expect("server signature");
    }

    #[test]
    fn wrong_password_fails_and_is_logged() {
        let mut t = T::dir(REMOTE);
        t.open();
        let out = t.scram(Hash::Sha256, "alice", "guess", None);
        assert_eq!(out, failure("not-authorized"));
        assert!(t.authed.is_none());
        assert!(
            t.logs.iter().any(|l| l.starts_with(&format!(
                "authentication failed: wrong password for {ALICE} (SCRAM: "
            ))),
            "{:?}",
            t.logs
        );
        let a = t.n.accounts.attempts.borrow();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0.as_deref(), Some(ALICE));
        assert!(!a[0].1);
    }

    #[test]
    fn unknown_user_gets_a_steady_fake_challenge() {
        let challenge = |t: &mut T| {
            let mut c = sasl::ScramClient::new(Hash::Sha256, "mallory", "x", None);
            let out = t.auth("SCRAM-SHA-256", &c.first());
            let ch = payload_of(&out, "challenge").expect("challenge");
            let text = String::from_utf8(ch.clone()).expect("utf8");
            (c, ch, text)
        };
        let mut t = T::dir(REMOTE);
        t.open();
        let (mut c, ch, text) = challenge(&mut t);
        let salt = |s: &str| {
            s.split(',')
                .find(|f| f.starts_with("s="))
                .map(str::to_string)
        };
        assert!(
            text.ends_with(&format!(",i={}", sj::passwd::ITERATIONS)),
            "{text}"
        );
        // The same salt on the next try: nothing tells it from an account.
        let mut t2 = T::dir(REMOTE);
        t2.open();
        let (_, _, text2) = challenge(&mut t2);
        assert_eq!(salt(&text), salt(&text2));
        let out = t.response(&c.final_message(&ch).expect("final"));
        assert_eq!(out, failure("not-authorized"));
        assert!(t
            .logs
            .iter()
            .any(|l| l.contains("unknown user \"mallory\"")));
        // Counted in the record of names that are no account.
        assert_eq!(t.n.accounts.attempts.borrow()[0].0, None);
    }

    #[test]
    fn authzid_must_be_the_account() {
        // The account itself: the exchange goes on (ScramClient sends no
        // authzid, so it stops at the challenge here).
        let mut t = T::dir(LOOPBACK);
        t.open();
        let out = t.scram(Hash::Sha256, "alice", "secret", Some(ALICE));
        assert!(
            out.starts_with(&format!("<challenge xmlns='{NS_SASL}'>")),
            "{out}"
        );
        let mut t = T::dir(LOOPBACK);
        t.open();
        let out = t.scram(Hash::Sha256, "alice", "secret", Some("bob@example.org"));
        assert_eq!(out, failure("invalid-authzid"));
        // Decided before any password is checked.
        assert!(t.n.accounts.attempts.borrow().is_empty());
        assert_eq!(*t.n.accounts.refusals.borrow(), 1);
        let mut t = T::dir(LOOPBACK);
        t.open();
        let out = t.auth(
            "PLAIN",
            &sasl::plain_encode("bob@example.org", "alice", "secret"),
        );
        assert_eq!(out, failure("invalid-authzid"));
        let out = t.auth("PLAIN", &sasl::plain_encode(ALICE, "alice", "secret"));
        assert_eq!(out, format!("<success xmlns='{NS_SASL}'/>"));
    }

    #[test]
    fn plain_success_and_unknown_user() {
        let mut t = T::dir(LOOPBACK);
        t.open();
        let out = t.auth("PLAIN", &sasl::plain_encode("", "nobody", "x"));
        assert_eq!(out, failure("not-authorized"));
        assert!(t
            .logs
            .iter()
            .any(|l| l.contains("unknown user \"nobody\" (PLAIN)")));
        let out = t.auth("PLAIN", &sasl::plain_encode("", "alice", "secret"));
        assert_eq!(out, format!("<success xmlns='{NS_SASL}'/>"));
        assert_eq!(
            t.authed.as_ref().map(Jid::to_string).as_deref(),
            Some(ALICE)
        );
    }

    #[test]
    fn three_failures_end_the_stream() {
        let mut t = T::dir(LOOPBACK);
        t.open();
        let mut out = String::new();
        for _ in 0..3 {
            assert!(t.end.is_none());
            out += &t.auth("PLAIN", &sasl::plain_encode("", "alice", "wrong"));
        }
        let (cond, code, why) = t.end.clone().expect("ended");
        assert_eq!(
            (cond.as_str(), code, why.as_str()),
            ("not-authorized", PERMANENT, "")
        );
        assert_eq!(
            out.matches("<not-authorized/></failure>").count(),
            3,
            "{out}"
        );
        assert!(out.ends_with(&format!(
            "</failure><stream:error><not-authorized xmlns='{NS_STREAM_ERRORS}'/></stream:error></stream:stream>"
        )), "{out}");
    }

    #[test]
    fn malformed_exchanges_are_refused_unchecked() {
        let mut t = T::dir(LOOPBACK);
        t.open();
        let out = t.el(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>!!</auth>"
        ));
        assert!(out.contains("<incorrect-encoding/>"), "{out}");
        let out = t.el(&format!("<response xmlns='{NS_SASL}'>eA==</response>"));
        assert!(out.contains("<malformed-request/>"), "{out}");
        let mut t = T::dir(LOOPBACK);
        t.open();
        t.auth("SCRAM-SHA-1", b"");
        let out = t.auth("SCRAM-SHA-1", b"");
        assert!(out.contains("<malformed-request/>"), "{out}");
        let out = t.el(&format!("<abort xmlns='{NS_SASL}'/>"));
        assert!(out.contains("<aborted/>"), "{out}");
        assert!(t.n.accounts.attempts.borrow().is_empty());
        let mut t = T::dir(LOOPBACK);
        t.open();
        let out = t.auth("DIGEST-MD5", b"");
        assert!(out.contains("<invalid-mechanism/>"), "{out}");
        let out = t.auth("SCRAM-SHA-256", b"x,,n=alice,r=abc");
        assert!(out.contains("<malformed-request/>"), "{out}");
    }

    #[test]
    fn stanzas_before_authentication_are_refused() {
        let mut t = T::dir(LOOPBACK);
        t.open();
        t.el("<message to='x@example.org'><body>hi</body></message>");
        assert_eq!(t.end_condition(), Some("not-authorized"));
        assert_eq!(t.end.as_ref().map(|e| e.1), Some(PROTOCOL));
        let mut t = T::dir(LOOPBACK);
        t.open();
        t.el("<presence/<");
        assert_eq!(t.end_condition(), Some("not-well-formed"));
    }

    #[test]
    fn held_answer_waits_for_its_slot() {
        let table = Table {
            dir: Jid::parse(ALICE).ok(),
            gate: Some(Gate::Answer {
                wait: Duration::from_secs(2),
                log: None,
            }),
            ..Table::default()
        }
        .with(ALICE, "secret");
        let mut t = T::new(table, Scope::One, LOOPBACK);
        t.open();
        let out = t.auth("PLAIN", &sasl::plain_encode("", "alice", "secret"));
        assert_eq!(out, "");
        assert!(t.n.holding() && t.authed.is_none());
        assert_eq!(t.n.wake(), Some(t.now + Duration::from_secs(2)));
        // The wait asked for leaves the margin before the deadline.
        let max_wait = t.n.accounts.attempts.borrow()[0].2;
        assert_eq!(max_wait, Duration::from_secs(10) - HOLD_MARGIN);
        assert!(t.n.release(t.now + Duration::from_millis(1999)).is_none());
        let acts = t.n.release(t.now + Duration::from_secs(2)).expect("due");
        t.apply(acts);
        assert_eq!(t.take(), format!("<success xmlns='{NS_SASL}'/>"));
        assert!(!t.n.holding());
        assert_eq!(
            t.authed.as_ref().map(Jid::to_string).as_deref(),
            Some(ALICE)
        );
        // Now the bind deadline.
        assert_eq!(
            t.n.wake(),
            Some(t.now + Duration::from_secs(2) + BIND_TIMEOUT)
        );
    }

    #[test]
    fn held_failure_and_busy_record() {
        let table = Table {
            dir: Jid::parse(ALICE).ok(),
            gate: Some(Gate::Answer {
                wait: Duration::from_secs(1),
                log: Some(3),
            }),
            ..Table::default()
        }
        .with(ALICE, "secret");
        let mut t = T::new(table, Scope::One, LOOPBACK);
        t.open();
        assert_eq!(t.auth("PLAIN", &sasl::plain_encode("", "alice", "no")), "");
        // Logged at once, with what went unlogged; answered at the slot.
        assert!(t.logs.iter().any(|l| l.ends_with(
            "wrong password for alice@example.org (PLAIN) (3 more since the last such line, not logged)"
        )), "{:?}", t.logs);
        let acts = t.n.release(t.now + Duration::from_secs(1)).expect("due");
        t.apply(acts);
        assert_eq!(t.take(), failure("not-authorized"));
        t.n.accounts.gate = Some(Gate::Busy { log: Some(0) });
        let out = t.auth("PLAIN", &sasl::plain_encode("", "alice", "secret"));
        assert_eq!(out, failure("temporary-auth-failure"));
        assert!(
            t.logs.iter().any(|l| l
                == "authentication failed: login as alice@example.org (PLAIN): refused unchecked, 7 failures in a row"),
            "{:?}",
            t.logs
        );
        assert!(t.authed.is_none());
    }

    #[test]
    fn timeouts_are_connection_timeout() {
        let mut t = T::dir(LOOPBACK);
        t.open();
        assert_eq!(t.n.wake(), Some(t.now + Duration::from_secs(10)));
        let acts = t.n.expire(t.now + Duration::from_secs(9));
        assert!(acts.is_empty());
        let acts = t.n.expire(t.now + Duration::from_secs(10));
        t.apply(acts);
        let (cond, code, why) = t.end.clone().expect("ended");
        assert_eq!(
            (cond.as_str(), code, why.as_str()),
            (
                "connection-timeout",
                TEMPORARY,
                "not authenticated within 10 s"
            )
        );
        assert!(t.sent.ends_with("</stream:error></stream:stream>"));
        // After authentication, the bind deadline.
        let mut t = T::dir(LOOPBACK);
        t.open();
        t.auth("PLAIN", &sasl::plain_encode("", "alice", "secret"));
        t.open();
        assert!(t.n.expire(t.now + Duration::from_secs(59)).is_empty());
        let acts = t.n.expire(t.now + BIND_TIMEOUT);
        t.apply(acts);
        assert_eq!(
            t.end.map(|e| e.2).as_deref(),
            Some("no resource bound in time")
        );
    }

    #[test]
    fn a_timeout_before_our_header_still_sends_one() {
        let mut t = T::dir(LOOPBACK);
        let acts = t.n.expire(t.now + Duration::from_secs(11));
        t.apply(acts);
        assert!(
            t.sent.starts_with("<?xml version='1.0'?><stream:stream "),
            "{}",
            t.sent
        );
        assert!(t.sent.contains("<connection-timeout "));
        // One end only.
        assert!(t
            .n
            .stream_error("system-shutdown", 0, String::new())
            .is_empty());
    }

    fn online_ready() -> T {
        let mut t = T::dir(LOOPBACK);
        t.open();
        t.auth("PLAIN", &sasl::plain_encode("", "alice", "secret"));
        t.open();
        t
    }

    #[test]
    fn bind_requests_and_results() {
        let mut t = online_ready();
        t.el(&format!(
            "<iq type='set' id='b&apos;1'><bind xmlns='{NS_BIND}'><resource> phone </resource></bind></iq>"
        ));
        assert_eq!(t.bind, Some(("b'1".to_string(), Some("phone".to_string()))));
        let full = Jid::parse("alice@example.org/phone").expect("jid");
        let acts = t.n.bound("b'1", Some("phone"), &full, Some("sj-proxy"));
        t.apply(acts);
        assert_eq!(
            t.take(),
            format!("<iq type='result' id='b&apos;1'><bind xmlns='{NS_BIND}'><jid>alice@example.org/phone</jid></bind></iq>")
        );
        assert!(t.n.online());
        assert_eq!(t.n.wake(), None);
        assert_eq!(
            t.logs.last().map(String::as_str),
            Some("bound alice@example.org/phone")
        );
        // No resource asked for.
        let mut t = online_ready();
        t.el(&format!(
            "<iq type='set' id='b'><bind xmlns='{NS_BIND}'/></iq>"
        ));
        assert_eq!(t.bind, Some(("b".to_string(), None)));
    }

    #[test]
    fn bind_replaces_refused_and_conflicting_names() {
        let cases = [
            ("a\u{202e}b", "invisible"),
            ("sj-proxy", "the upstream session's resource"),
            ("phone", "in use"),
            ("..", "not a client directory name as it is"),
        ];
        for (asked, why) in cases {
            let mut t = online_ready();
            let full = Jid::parse("alice@example.org/sj-1a2b3c4d").expect("jid");
            let acts = t.n.bound("b", Some(asked), &full, Some("sj-proxy"));
            t.apply(acts);
            let line = t.logs.last().cloned().unwrap_or_default();
            assert!(
                line.starts_with(&format!(
                    "bound alice@example.org/sj-1a2b3c4d instead of {asked:?}: "
                )),
                "{line}"
            );
            assert!(line.contains(why), "{asked:?}: {line}");
            assert!(t
                .take()
                .contains("<jid>alice@example.org/sj-1a2b3c4d</jid>"));
        }
    }

    #[test]
    fn before_bind_only_bind() {
        for (rec, cond) in [
            (
                format!("<iq type='set' id='s'><session xmlns='{NS_SESSION}'/></iq>"),
                "not-authorized",
            ),
            (
                "<message><body>x</body></message>".to_string(),
                "not-authorized",
            ),
            (
                format!("<iq type='get' id='b'><bind xmlns='{NS_BIND}'/></iq>"),
                "not-authorized",
            ),
            (
                "<r xmlns='urn:xmpp:sm:3'/>".to_string(),
                "unsupported-stanza-type",
            ),
        ] {
            let mut t = online_ready();
            t.el(&rec);
            assert_eq!(t.end_condition(), Some(cond), "{rec}");
            assert!(t.bind.is_none());
        }
        // XEP-0198 §3: <enable/> before bind fails, the stream goes on;
        // <resume/> is for the session to carry out.
        let mut t = online_ready();
        let got = t.el("<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
        assert!(
            got.contains("<failed") && got.contains("unexpected-request"),
            "{got}"
        );
        assert_eq!(t.end_condition(), None);
        t.el("<resume xmlns='urn:xmpp:sm:3' previd='70.x' h='4294967295'/>");
        assert!(
            t.logs.iter().any(|l| l == "resume 70.x 4294967295"),
            "{:?}",
            t.logs
        );
        let got = t.el("<resume xmlns='urn:xmpp:sm:3' previd='70.x' h='-1'/>");
        assert!(got.contains("bad-request"), "{got}");
    }

    #[test]
    fn end_stream_sends_a_header_once() {
        let mut t = T::dir(LOOPBACK);
        let s = t.n.end_stream();
        assert!(
            s.starts_with("<?xml") && s.ends_with("</stream:stream>"),
            "{s}"
        );
        let mut t = T::dir(LOOPBACK);
        t.open();
        assert_eq!(t.n.end_stream(), "</stream:stream>");
    }

    #[test]
    fn resource_names() {
        assert!(valid_name("phone", Some("sj-proxy")));
        assert!(!valid_name("sj-proxy", Some("sj-proxy")));
        assert!(!valid_name("a/b", None));
        assert!(!valid_name("..", None));
        assert!(!valid_name("in", None));
        assert!(!valid_name("", None));
        assert!(!valid_name("with space", None));
        assert!(!valid_name(&"x".repeat(65), None));
        assert!(valid_name(&"x".repeat(64), None));
    }
}
