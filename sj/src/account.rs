//! The account: who it is (`Account`) and where it lives (`Dir`, DESIGN
//! §3). Every path under the account directory is named here and nowhere
//! else; names that come from the network or from a person (contacts, iq
//! ids, namespaces, client names) become path components only through
//! `sj::path::component`, the one mapping rule.
//!
//! ```text
//! DIR/in  state  lock  mypresence  roster  passwd  auth-failures  .salt-key
//! DIR/subscriptions  archive/  iq/<id>  iq.d/<namespace>
//! DIR/clients/<name>/{in,out,pid,dropped}
//! DIR/<contact>/{in,out,presence,mypresence,.groupchat}
//! ROOT/<bare JID>/ (sj-c2s -R)  ROOT/.auth-failures  ROOT/.salt-key
//! ```
//!
//! What is not here: opening the files (`sj::fifo` has the rules for
//! that) or what is in them.

use crate::jid::Jid;
use crate::path::{component, Kind, PathError};
use std::fmt;
use std::path::{Path, PathBuf};

/// The default root's name in a home directory.
const HOME_ROOT: &str = "xmpp";
const IN: &str = "in";
const OUT: &str = "out";
const STATE: &str = "state";
const LOCK: &str = "lock";
const MYPRESENCE: &str = "mypresence";
const PRESENCE: &str = "presence";
const ROSTER: &str = "roster";
const PASSWD: &str = "passwd";
const AUTH_FAILURES: &str = "auth-failures";
const SUBSCRIPTIONS: &str = "subscriptions";
const ARCHIVE: &str = "archive";
const IQ: &str = "iq";
const IQ_D: &str = "iq.d";
const CLIENTS: &str = "clients";
/// sj-proxy's XEP-0198 state (`sj::sm`).
const SM: &str = "sm";
/// The key made-up SCRAM salts are derived from (DIR's, or ROOT's).
const SALT_KEY: &str = ".salt-key";
/// Under ROOT: the failure record of names that are no account there.
const ROOT_FAILURES: &str = ".auth-failures";
const PID: &str = "pid";
/// The marker mirrord leaves in a client's directory when it drops the
/// client for falling behind (mirrord(8)).
const DROPPED: &str = "dropped";
/// The marker of a groupchat room's directory (messaged(8)).
const GROUPCHAT: &str = ".groupchat";

/// The names DIR keeps for itself: no contact, iq id, namespace or client
/// name is ever mapped to one of them (`sj::path::component`).
pub const RESERVED: &[&str] = &[
    IN,
    OUT,
    STATE,
    MYPRESENCE,
    ROSTER,
    PASSWD,
    IQ,
    IQ_D,
    CLIENTS,
    PRESENCE,
    SUBSCRIPTIONS,
    LOCK,
    AUTH_FAILURES,
    ARCHIVE,
    SM,
];

/// Where accounts live by default: `$HOME/xmpp`; `None` without `HOME`.
pub fn home_root() -> Option<Root> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(Root::in_home)
}

/// `parent/name` for a name `component` made, checked once more to be one
/// plain component directly under `parent` (what the network names can
/// never be more than that).
fn under(parent: PathBuf, name: String) -> Result<PathBuf, PathError> {
    if !plain(&name) {
        return Err(PathError(format!("not one path component: {name:?}")));
    }
    Ok(parent.join(name))
}

/// A name that is one plain path component as it is: not empty, not `.`
/// or `..`, no `/` and no NUL (a directory entry's name, or what
/// `sj::path::component` made).
fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// A directory holding one account directory per bare JID (sj-c2s -R;
/// `$HOME/xmpp` by default for every program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Root {
        Root { path: path.into() }
    }

    /// `HOME/xmpp`: the default root under a home directory.
    pub fn in_home(home: impl Into<PathBuf>) -> Root {
        Root::new(home.into().join(HOME_ROOT))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ROOT/<bare JID>`, the JID mapped by the one rule (a JID whose
    /// characters are all safe in a file name, the usual case, is its own
    /// name).
    pub fn account(&self, jid: &Jid) -> Result<Dir, PathError> {
        let c = component(Kind::Contact, &jid.bare().to_string())?;
        Ok(Dir::new(under(self.path.clone(), c)?))
    }

    pub fn auth_failures(&self) -> PathBuf {
        self.path.join(ROOT_FAILURES)
    }

    pub fn salt_key(&self) -> PathBuf {
        self.path.join(SALT_KEY)
    }
}

/// DIR, the account directory, and where everything in it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    pub fn new(path: impl Into<PathBuf>) -> Dir {
        Dir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `DIR/in`: records to send upstream (read by sj-proxy).
    pub fn in_fifo(&self) -> PathBuf {
        self.file(IN)
    }

    pub fn state(&self) -> PathBuf {
        self.file(STATE)
    }

    pub fn lock(&self) -> PathBuf {
        self.file(LOCK)
    }

    pub fn mypresence(&self) -> PathBuf {
        self.file(MYPRESENCE)
    }

    pub fn roster(&self) -> PathBuf {
        self.file(ROSTER)
    }

    pub fn passwd(&self) -> PathBuf {
        self.file(PASSWD)
    }

    pub fn auth_failures(&self) -> PathBuf {
        self.file(AUTH_FAILURES)
    }

    pub fn salt_key(&self) -> PathBuf {
        self.file(SALT_KEY)
    }

    pub fn subscriptions(&self) -> PathBuf {
        self.file(SUBSCRIPTIONS)
    }

    /// `DIR/archive/` (`sj::archive`).
    pub fn archive(&self) -> PathBuf {
        self.file(ARCHIVE)
    }

    /// `DIR/archive/rewind/NAME`: where an sj-c2s whose resumable session
    /// ended unresumed leaves the archive id before the first stanza its
    /// client never acknowledged; mirrord takes it when NAME comes again
    /// and replays from there (sj(7), Catch-up). `name` is a client name.
    pub fn archive_rewind(&self, name: &str) -> PathBuf {
        self.archive().join("rewind").join(name)
    }

    /// `DIR/iq/`, where answers to file-system requesters go.
    pub fn iq(&self) -> PathBuf {
        self.file(IQ)
    }

    /// `DIR/iq/<id>`.
    pub fn iq_result(&self, id: &str) -> Result<PathBuf, PathError> {
        under(self.iq(), component(Kind::IqId, id)?)
    }

    /// `DIR/iq.d/`, the handlers of incoming requests.
    pub fn iq_d(&self) -> PathBuf {
        self.file(IQ_D)
    }

    /// `DIR/iq.d/<namespace>`.
    pub fn iq_handler(&self, ns: &str) -> Result<PathBuf, PathError> {
        under(self.iq_d(), component(Kind::Namespace, ns)?)
    }

    /// `DIR/sm/`: the upstream XEP-0198 session (sj-proxy(8)).
    pub fn sm(&self) -> PathBuf {
        self.file(SM)
    }

    /// `DIR/clients/`.
    pub fn clients(&self) -> PathBuf {
        self.file(CLIENTS)
    }

    /// `DIR/clients/<name>`, `name` as the directory is named (from a
    /// listing, or made by `sj::path::component(Kind::Client, ..)`): one
    /// plain component, or an error.
    pub fn client(&self, name: &str) -> Result<ClientDir, PathError> {
        if !plain(name) {
            return Err(PathError(format!("not a client directory name: {name:?}")));
        }
        Ok(ClientDir {
            path: self.clients().join(name),
        })
    }

    /// `DIR/<contact>` for a JID (its bare form), by the one rule.
    pub fn contact(&self, jid: &str) -> Result<ContactDir, PathError> {
        let name = component(Kind::Contact, jid)?;
        Ok(ContactDir {
            path: under(self.path.clone(), name.clone())?,
            name,
        })
    }

    /// `DIR/<name>` for a name found in DIR, if it may be a contact's
    /// directory: a plain name that is not hidden and not one of DIR's own.
    pub fn contact_named(&self, name: &str) -> Option<ContactDir> {
        let ok = plain(name) && !name.starts_with('.') && !RESERVED.contains(&name);
        ok.then(|| ContactDir {
            path: self.file(name),
            name: name.to_string(),
        })
    }

    /// The contact directories in DIR now: real directories (never a
    /// symbolic link) that `contact_named` accepts.
    pub fn contacts(&self) -> Vec<ContactDir> {
        let Ok(rd) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| self.contact_named(e.file_name().to_str()?))
            .collect()
    }
}

/// `DIR/clients/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDir {
    path: PathBuf,
}

impl ClientDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// `in`: records for the client (written by mirrord only).
    pub fn in_fifo(&self) -> PathBuf {
        self.path.join(IN)
    }

    /// `out`: records from the client (read by sj-proxy).
    pub fn out_fifo(&self) -> PathBuf {
        self.path.join(OUT)
    }

    /// `pid`: the sj-c2s serving it (a raw client has none).
    pub fn pid(&self) -> PathBuf {
        self.path.join(PID)
    }

    /// `dropped`: mirrord's marker.
    pub fn dropped(&self) -> PathBuf {
        self.path.join(DROPPED)
    }

    /// `sm`, `sm-counts`, `sm-queue`, `sm-takeover`: the client's XEP-0198
    /// session, kept for a later sj-c2s to resume (sj-c2s(8)).
    pub fn sm_file(&self, which: &str) -> PathBuf {
        if which.is_empty() {
            self.path.join(SM)
        } else {
            self.path.join(format!("{SM}-{which}"))
        }
    }
}

/// `DIR/<contact>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactDir {
    path: PathBuf,
    name: String,
}

impl ContactDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// The directory's name (the contact's path component).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a string again (`sj::path::decode`): `None` for a
    /// name the rule never makes.
    pub fn decoded(&self) -> Option<String> {
        crate::path::decode(&self.name)
    }

    /// `in`: each line is a chat message to send (read by messaged).
    pub fn in_fifo(&self) -> PathBuf {
        self.path.join(IN)
    }

    /// `out`: the conversation's log.
    pub fn out(&self) -> PathBuf {
        self.path.join(OUT)
    }

    /// `<contact>/out` relative to DIR, to open beneath it.
    pub fn out_beneath(&self) -> PathBuf {
        Path::new(&self.name).join(OUT)
    }

    pub fn presence(&self) -> PathBuf {
        self.path.join(PRESENCE)
    }

    pub fn mypresence(&self) -> PathBuf {
        self.path.join(MYPRESENCE)
    }

    /// `.groupchat`: the directory is a room's.
    pub fn groupchat(&self) -> PathBuf {
        self.path.join(GROUPCHAT)
    }
}

/// The account: its bare JID, the full JID its upstream session is bound
/// to when that is known, and its directory. The JIDs are kept as text
/// too: records are compared with them one by one. Boxed: sessions keep
/// one in their states, which should stay small.
#[derive(Debug, Clone)]
pub struct Account(Box<Who>);

#[derive(Debug, Clone)]
struct Who {
    bare: Jid,
    full: Option<Jid>,
    bare_text: String,
    /// The full JID's text, or the bare one's while none is bound.
    full_text: String,
    dir: Dir,
}

impl Account {
    /// The account of `jid` (bare, or the bound full JID) living in `dir`.
    pub fn new(jid: &Jid, dir: Dir) -> Account {
        let bare = jid.bare();
        let full = (!jid.is_bare()).then(|| jid.clone());
        Account(Box::new(Who {
            bare_text: bare.to_string(),
            full_text: full.as_ref().unwrap_or(&bare).to_string(),
            bare,
            full,
            dir,
        }))
    }

    /// The bare JID.
    pub fn jid(&self) -> &Jid {
        &self.0.bare
    }

    /// The bare JID's text.
    pub fn bare(&self) -> &str {
        &self.0.bare_text
    }

    /// The bound full JID (the bare one while none is known).
    pub fn full_jid(&self) -> &Jid {
        self.0.full.as_ref().unwrap_or(&self.0.bare)
    }

    /// The bound full JID's text (the bare one while none is known).
    pub fn full(&self) -> &str {
        &self.0.full_text
    }

    /// The upstream session's resource, when known.
    pub fn resource(&self) -> Option<&str> {
        self.0.full.as_ref().and_then(Jid::resource)
    }

    pub fn domain(&self) -> &str {
        self.0.bare.domain()
    }

    pub fn dir(&self) -> &Dir {
        &self.0.dir
    }

    /// Is `jid` (as written in a record) the account's bare JID, as
    /// normalisation (`Jid::parse`) would make it? The same answer as
    /// parsing it, without parsing the usual cases: the exact text, and
    /// ASCII text, which normalisation only lowercases and rids of one
    /// trailing dot (an IPv6 literal aside).
    pub fn is_bare(&self, jid: &str) -> bool {
        if jid == self.0.bare_text {
            return true;
        }
        if jid.is_ascii() && !jid.contains('[') {
            let t = jid.strip_suffix('.').unwrap_or(jid);
            return t.eq_ignore_ascii_case(&self.0.bare_text);
        }
        Jid::parse(jid).is_ok_and(|j| j.is_bare() && j == self.0.bare)
    }

    /// The resource of `jid` when it is `BARE/RESOURCE` for this account.
    pub fn resource_of<'a>(&self, jid: &'a str) -> Option<&'a str> {
        let (bare, res) = jid.split_once('/')?;
        (!res.is_empty() && self.is_bare(bare)).then_some(res)
    }

    /// The local client `jid` names: `BARE/NAME` for a resource other than
    /// the upstream session's.
    pub fn client_of<'a>(&self, jid: &'a str) -> Option<&'a str> {
        self.resource_of(jid)
            .filter(|r| Some(*r) != self.resource())
    }

    /// `BARE/name`: the JID of a local client (or origin) `name`.
    pub fn client_jid(&self, name: &str) -> String {
        let mut s = String::with_capacity(self.0.bare_text.len() + 1 + name.len());
        s.push_str(&self.0.bare_text);
        s.push('/');
        s.push_str(name);
        s
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.full_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(jid: &str) -> Account {
        Account::new(&Jid::parse(jid).expect("jid"), Dir::new("/d"))
    }

    #[test]
    fn layout() {
        let d = Dir::new("/d");
        assert_eq!(d.in_fifo(), Path::new("/d/in"));
        assert_eq!(d.state(), Path::new("/d/state"));
        assert_eq!(d.archive(), Path::new("/d/archive"));
        assert_eq!(d.iq_result("x/y").expect("id"), Path::new("/d/iq/x%2Fy"));
        assert_eq!(
            d.iq_handler("urn:xmpp:ping").expect("ns"),
            Path::new("/d/iq.d/urn:xmpp:ping")
        );
        let c = d.client("gajim").expect("client");
        assert_eq!(c.out_fifo(), Path::new("/d/clients/gajim/out"));
        assert_eq!(c.dropped(), Path::new("/d/clients/gajim/dropped"));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(d.client(bad).is_err(), "{bad:?}");
        }
        let b = d.contact("Bob@Example.org/phone").expect("contact");
        assert_eq!(b.name(), "bob@example.org");
        assert_eq!(b.presence(), Path::new("/d/bob@example.org/presence"));
        assert_eq!(b.out_beneath(), Path::new("bob@example.org/out"));
        assert!(d.contact("not a jid").is_err());
        for n in ["in", "clients", "archive", ".hidden", "a/b", ".."] {
            assert!(d.contact_named(n).is_none(), "{n:?}");
        }
        let root = Root::new("/r");
        let j = Jid::parse("a!b@x.org/r").expect("jid");
        assert_eq!(
            root.account(&j).expect("dir").path(),
            Path::new("/r/a%21b@x.org")
        );
    }

    /// No contact, id, namespace or client name maps onto DIR's own
    /// entries, the archive among them.
    #[test]
    fn reserved_names_are_never_made() {
        for r in RESERVED {
            for k in [Kind::IqId, Kind::Namespace, Kind::Client] {
                let c = component(k, r).expect("maps");
                assert_ne!(&c, r);
            }
        }
        assert_eq!(component(Kind::IqId, "archive").expect("id"), "%61rchive");
    }

    #[test]
    fn identity() {
        let a = acct("Alice@Example.org/sj-proxy");
        assert_eq!(a.bare(), "alice@example.org");
        assert_eq!(a.full(), "alice@example.org/sj-proxy");
        assert_eq!(a.resource(), Some("sj-proxy"));
        assert_eq!(a.domain(), "example.org");
        assert_eq!(a.client_jid("gajim"), "alice@example.org/gajim");
        assert_eq!(a.resource_of("ALICE@example.org/gajim"), Some("gajim"));
        assert_eq!(a.resource_of("alice@example.org/"), None);
        assert_eq!(a.resource_of("bob@example.org/gajim"), None);
        assert_eq!(a.client_of("alice@example.org/gajim"), Some("gajim"));
        assert_eq!(a.client_of("alice@example.org/sj-proxy"), None);
        let b = acct("alice@example.org");
        assert_eq!(b.full(), "alice@example.org");
        assert_eq!(b.resource(), None);
        assert_eq!(b.client_of("alice@example.org/sj-proxy"), Some("sj-proxy"));
    }

    /// `is_bare` answers as parsing would, on every kind of input.
    #[test]
    fn is_bare_agrees_with_parsing() {
        for own in ["alice@example.org", "élise@exämple.org", "a@[::1]"] {
            let a = acct(own);
            for s in [
                own,
                "alice@example.org",
                "ALICE@Example.ORG",
                "alice@example.org.",
                "alice@example.org..",
                "alice@example.org/r",
                "alice@example.org/",
                "alicE@exampLe.org.",
                "bob@example.org",
                "example.org",
                "alice@",
                "@example.org",
                "alice example.org",
                "ÉLISE@EXÄMPLE.ORG",
                "élise@exämple.org.",
                "a@[0:0::1]",
                "A@[::1]",
                "",
            ] {
                let parsed = Jid::parse(s).is_ok_and(|j| j.is_bare() && j == *a.jid());
                assert_eq!(a.is_bare(s), parsed, "{own} vs {s:?}");
            }
        }
    }
}
