//! The conversation messages of the account archive, for the programs
//! that show history (sj-c2s's MAM, sj-log).
//!
//! What is here: which archive lines are messages of a conversation
//! (with a body; not groupchat, not errors, not what local programs said
//! to each other), the message as it was sent (a XEP-0280 sent copy or a
//! server carbon is unwrapped), its direction and peer, and walks forwards
//! and backwards through the archive between two ids that collect a page
//! of them.
//!
//! What is not here: the archive format (`sj::archive`), MAM's protocol
//! (sj-c2s), the output formats of sj-log.

use crate::archive::{entries, Entry, Flow, Pos, Reader};
use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;
use std::io;

/// One conversation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Its archive id (also its time, in microseconds).
    pub id: u64,
    /// Sent by the account (else received).
    pub outgoing: bool,
    /// The other side, as the stanza names it (`to` or `from`).
    pub peer: String,
    /// The message element as sent, with `xmlns='jabber:client'`.
    pub xml: Vec<u8>,
    /// Its body text.
    pub body: String,
}

/// Which messages a walk collects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only with this peer: a bare JID matches every resource.
    pub with: Option<Jid>,
}

impl Filter {
    /// Is `m` one the filter lets through?
    pub fn wants(&self, m: &Msg) -> bool {
        let Some(w) = &self.with else { return true };
        let Ok(p) = Jid::parse(&m.peer) else {
            return false;
        };
        if w.resource().is_some() {
            p == *w
        } else {
            p.bare() == *w
        }
    }
}

/// The conversation message an archive line holds, if any. `own` is the
/// account's bare JID.
pub fn message(e: &Entry<'_>, own: &Jid) -> Option<Msg> {
    if !e.record.starts_with(b"<message") || memchr::memmem::find(e.record, b"<body").is_none() {
        return None;
    }
    let el = Element::parse(e.record)?;
    if el.local_name() != "message" {
        return None;
    }
    let own_bare = |j: Option<&str>| {
        j.and_then(|s| Jid::parse(s).ok())
            .is_some_and(|j| j == *own)
    };
    let (inner, outgoing) = match e.flow {
        Flow::FromServer => {
            if own_bare(el.attr("from")) {
                carbon(&el).unwrap_or((el.clone(), false))
            } else {
                (el.clone(), false)
            }
        }
        Flow::ToServerCopied => carbon(&el).filter(|(_, out)| *out)?,
        Flow::ToServer => (el.clone(), true),
        _ => return None,
    };
    if matches!(inner.attr("type"), Some("groupchat" | "error")) {
        return None;
    }
    let body = inner.child("body", ns::CLIENT)?.text();
    let peer = if outgoing {
        inner.attr("to")?
    } else {
        inner.attr("from")?
    }
    .to_string();
    let raw = e.record.get(inner.span.clone())?;
    Some(Msg {
        id: e.id,
        outgoing,
        peer,
        xml: with_client_ns(raw),
        body,
    })
}

/// The message a XEP-0280 carbon forwards, and whether it was sent.
fn carbon<'a>(el: &Element<'a>) -> Option<(Element<'a>, bool)> {
    for (name, out) in [("sent", true), ("received", false)] {
        if let Some(m) = el
            .child(name, ns::CARBONS)
            .and_then(|c| c.child("forwarded", ns::FORWARD))
            .and_then(|f| f.child("message", ns::CLIENT))
        {
            return Some((m.clone(), out));
        }
    }
    None
}

/// The element with `xmlns='jabber:client'` on its start tag (a record's
/// top element implies it; forwarded, it must say it).
fn with_client_ns(raw: &[u8]) -> Vec<u8> {
    let end = memchr::memchr(b'>', raw).unwrap_or(raw.len());
    let tag = &raw[..end];
    if memchr::memmem::find(tag, b"xmlns='").is_some()
        || memchr::memmem::find(tag, b"xmlns=\"").is_some()
    {
        return raw.to_vec();
    }
    let name_end = tag
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'/' | b'>'))
        .unwrap_or(tag.len());
    let mut v = Vec::with_capacity(raw.len() + 24);
    v.extend_from_slice(&raw[..name_end]);
    v.extend_from_slice(b" xmlns='jabber:client'");
    v.extend_from_slice(&raw[name_end..]);
    v
}

/// Bytes read per step of a walk.
const STEP: usize = 256 * 1024;

/// Up to `max` messages with `lo < id <= hi`, oldest first, starting from
/// `lo`; and whether there are more after them.
pub fn forward(
    r: &mut Reader,
    own: &Jid,
    f: &Filter,
    lo: u64,
    hi: u64,
    max: usize,
) -> io::Result<(Vec<Msg>, bool)> {
    let mut out = Vec::new();
    let mut pos = r.seek_after(lo)?;
    loop {
        let (buf, next) = r.read_forward(&pos, STEP.max(crate::archive::LINE_MAX))?;
        if buf.is_empty() {
            return Ok((out, false));
        }
        for e in entries(&buf) {
            if e.id <= lo {
                continue;
            }
            if e.id > hi {
                return Ok((out, false));
            }
            if let Some(m) = message(&e, own).filter(|m| f.wants(m)) {
                if out.len() == max {
                    return Ok((out, true));
                }
                out.push(m);
            }
        }
        pos = next;
    }
}

/// Up to `max` messages with `lo < id <= hi`, the newest ones, oldest
/// first; and whether there are more before them.
pub fn backward(
    r: &mut Reader,
    own: &Jid,
    f: &Filter,
    lo: u64,
    hi: u64,
    max: usize,
) -> io::Result<(Vec<Msg>, bool)> {
    let mut out = Vec::new();
    let mut pos: Pos = if hi == u64::MAX {
        r.end()?
    } else {
        r.seek_after(hi)?
    };
    'walk: loop {
        let (buf, first) = r.read_backward(&pos, STEP.max(crate::archive::LINE_MAX))?;
        if buf.is_empty() {
            break;
        }
        let lines: Vec<Entry<'_>> = entries(&buf).collect();
        for e in lines.iter().rev() {
            if e.id > hi {
                continue;
            }
            if e.id <= lo {
                break 'walk;
            }
            if let Some(m) = message(e, own).filter(|m| f.wants(m)) {
                if out.len() == max {
                    out.reverse();
                    return Ok((out, true));
                }
                out.push(m);
            }
        }
        pos = first;
    }
    out.reverse();
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Jid {
        Jid::parse("alice@l").expect("jid")
    }

    fn e(flow: Flow, rec: &str) -> Option<Msg> {
        let e = Entry {
            id: 5,
            flow,
            record: rec.as_bytes(),
        };
        message(&e, &own())
    }

    #[test]
    fn messages_of_a_conversation() {
        let m = e(
            Flow::FromServer,
            "<message from='bob@l/x' to='alice@l/p' type='chat'><body>hi</body></message>",
        )
        .expect("in");
        assert!(!m.outgoing);
        assert_eq!(m.peer, "bob@l/x");
        assert_eq!(m.body, "hi");
        assert!(m.xml.starts_with(b"<message xmlns='jabber:client' from="));
        let sent = "<message from='alice@l' to='alice@l/sj'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@l/c' to='bob@l' type='chat'><body>yo</body></message></forwarded></sent></message>";
        let m = e(Flow::ToServerCopied, sent).expect("out");
        assert!(m.outgoing);
        assert_eq!(m.peer, "bob@l");
        assert_eq!(m.body, "yo");
        assert!(m
            .xml
            .starts_with(b"<message xmlns='jabber:client' from='alice@l/c'"));
        // A server carbon is unwrapped too.
        let m = e(Flow::FromServer, sent).expect("carbon");
        assert!(m.outgoing);
        assert!(e(
            Flow::FromServer,
            "<message from='r@muc' type='groupchat'><body>x</body></message>"
        )
        .is_none());
        assert!(e(
            Flow::FromServer,
            "<message from='b@l'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
        .is_none());
        assert!(e(Flow::Local, "<message from='b@l'><body>x</body></message>").is_none());
        assert!(e(Flow::FromServer, "<presence from='b@l'/>").is_none());
        let f = Filter {
            with: Some(Jid::parse("bob@l").expect("jid")),
        };
        assert!(f.wants(
            &e(
                Flow::ToServer,
                "<message to='bob@l/r'><body>a</body></message>"
            )
            .expect("m")
        ));
        assert!(!f.wants(
            &e(
                Flow::ToServer,
                "<message to='eve@l'><body>a</body></message>"
            )
            .expect("m")
        ));
    }
}
