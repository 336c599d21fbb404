//! XEP-0313 message archive management (urn:xmpp:mam:2), answered from
//! the account archive for queries to the account's bare JID.
//!
//! What it does: a query `<iq type='set'><query xmlns='urn:xmpp:mam:2'/>`
//! with no `to` or `to` the account's bare JID is answered here, whatever
//! the server offers: the form fields `with`, `start`, `end`, `before-id`,
//! `after-id`, RSM `max`, `after`, `before` (empty: the last page), one
//! `<message><result><forwarded><delay/>` per message, then `<fin/>` with
//! `complete` and the page's first and last ids. A `get` gets the form.
//!
//! What it does not do: a query to any other JID (a MUC room's archive)
//! is not looked at and goes upstream as any iq does; no `ids` field, no
//! `flip-page`, no RSM `index` or `count` (counting would read the whole
//! archive).

use sj::account::Account;
use sj::history::{self, Filter};
use sj::jid::Jid;
use sj::ns;
use sj::xml::{escape_attr, Element};

/// Results per page when the client does not say, and at most.
const DEFAULT_MAX: usize = 50;
const MAX_MAX: usize = 1000;

/// The answer to `rec` when it is a MAM query for this account (the bytes
/// to send to the client), or `None` to handle it as any other stanza.
pub fn answer(rec: &[u8], acct: &Account, full: &Jid) -> Option<Vec<u8>> {
    if !rec.starts_with(b"<iq") || !rec.windows(ns::MAM.len()).any(|w| w == ns::MAM.as_bytes()) {
        return None;
    }
    let el = Element::parse(rec)?;
    let q = el.child("query", ns::MAM)?;
    let bare = acct.jid();
    // Another JID's archive (a room's) is the server's business.
    if let Some(to) = el.attr("to") {
        if Jid::parse(to).ok().as_ref() != Some(bare) {
            return None;
        }
    }
    let id = escape_attr(el.attr("id").unwrap_or(""));
    let to = escape_attr(&full.to_string());
    let from = escape_attr(&bare.to_string());
    let ty = el.attr("type");
    if ty == Some("get") {
        return Some(
            format!(
                "<iq type='result' id='{id}' to='{to}' from='{from}'><query xmlns='{mam}'>\
                 <x xmlns='{data}' type='form'><field type='hidden' var='FORM_TYPE'><value>{mam}</value></field>\
                 <field type='jid-single' var='with'/><field type='text-single' var='start'/>\
                 <field type='text-single' var='end'/><field type='text-single' var='before-id'/>\
                 <field type='text-single' var='after-id'/></x></query></iq>",
                mam = ns::MAM,
                data = ns::DATA,
            )
            .into_bytes(),
        );
    }
    if ty != Some("set") {
        return None;
    }
    let err = |cond: &str, text: &str| {
        Some(
            format!(
                "<iq type='error' id='{id}' to='{to}' from='{from}'><error type='modify'>\
                 <{cond} xmlns='{st}'/><text xmlns='{st}'>{}</text></error></iq>",
                sj::xml::escape_text(text),
                st = ns::STANZAS,
            )
            .into_bytes(),
        )
    };
    let mut lo = 0u64;
    let mut hi = u64::MAX;
    let mut filter = Filter::default();
    if let Some(x) = q.child("x", ns::DATA) {
        for f in x.elements().filter(|f| f.local_name() == "field") {
            let v = f
                .child("value", ns::DATA)
                .map(|v| v.text())
                .unwrap_or_default();
            let v = v.trim();
            match f.attr("var") {
                Some("with") => match Jid::parse(v) {
                    Ok(j) => filter.with = Some(j),
                    Err(_) => return err("jid-malformed", "with: not a JID"),
                },
                Some("start") => match sj::time::parse_xmpp_datetime(v) {
                    Some(t) => lo = lo.max((t.max(0) as u64 * 1_000_000).saturating_sub(1)),
                    None => return err("bad-request", "start: not a date-time"),
                },
                Some("end") => match sj::time::parse_xmpp_datetime(v) {
                    Some(t) => hi = hi.min(t.max(0) as u64 * 1_000_000 + 999_999),
                    None => return err("bad-request", "end: not a date-time"),
                },
                Some("after-id") => match v.parse::<u64>() {
                    Ok(n) => lo = lo.max(n),
                    Err(_) => return err("item-not-found", "after-id: no such id"),
                },
                Some("before-id") => match v.parse::<u64>() {
                    Ok(n) => hi = hi.min(n.saturating_sub(1)),
                    Err(_) => return err("item-not-found", "before-id: no such id"),
                },
                _ => {}
            }
        }
    }
    let mut max = DEFAULT_MAX;
    let mut backward = false;
    if let Some(set) = q.child("set", ns::RSM) {
        if let Some(m) = set.child("max", ns::RSM) {
            match m.text().trim().parse::<usize>() {
                Ok(n) => max = n.min(MAX_MAX),
                Err(_) => return err("bad-request", "max: not a number"),
            }
        }
        if let Some(a) = set.child("after", ns::RSM) {
            match a.text().trim().parse::<u64>() {
                Ok(n) => lo = lo.max(n),
                Err(_) => return err("item-not-found", "after: no such id"),
            }
        }
        if let Some(b) = set.child("before", ns::RSM) {
            backward = true;
            let t = b.text();
            let t = t.trim();
            if !t.is_empty() {
                match t.parse::<u64>() {
                    Ok(n) => hi = hi.min(n.saturating_sub(1)),
                    Err(_) => return err("item-not-found", "before: no such id"),
                }
            }
        }
    }
    let dir = acct.dir().archive();
    let page = sj::archive::Reader::open(&dir).and_then(|mut r| {
        if backward {
            history::backward(&mut r, bare, &filter, lo, hi, max)
        } else {
            history::forward(&mut r, bare, &filter, lo, hi, max)
        }
    });
    let (msgs, more) = match page {
        Ok(p) => p,
        Err(e) => {
            sj::log::warn(&format!(
                "MAM: unable to read {}: {}",
                dir.display(),
                sj::log::strerror(&e)
            ));
            return Some(
                format!(
                    "<iq type='error' id='{id}' to='{to}' from='{from}'><error type='wait'>\
                     <internal-server-error xmlns='{}'/></error></iq>",
                    ns::STANZAS
                )
                .into_bytes(),
            );
        }
    };
    let queryid = q
        .attr("queryid")
        .map(|v| format!(" queryid='{}'", escape_attr(v)))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(msgs.iter().map(|m| m.xml.len() + 300).sum::<usize>() + 300);
    for m in &msgs {
        out.extend_from_slice(
            format!(
                "<message to='{to}' from='{from}' id='mam-{mid}'><result xmlns='{mam}'{queryid} id='{mid}'>\
                 <forwarded xmlns='{fwd}'><delay xmlns='{delay}' stamp='{stamp}'/>",
                mid = m.id,
                mam = ns::MAM,
                fwd = ns::FORWARD,
                delay = ns::DELAY,
                stamp = sj::archive::stamp(m.id),
            )
            .as_bytes(),
        );
        out.extend_from_slice(&m.xml);
        out.extend_from_slice(b"</forwarded></result></message>");
    }
    let set = match (msgs.first(), msgs.last()) {
        (Some(f), Some(l)) => format!(
            "<set xmlns='{}'><first>{}</first><last>{}</last></set>",
            ns::RSM,
            f.id,
            l.id
        ),
        _ => format!("<set xmlns='{}'/>", ns::RSM),
    };
    out.extend_from_slice(
        format!(
            "<iq type='result' id='{id}' to='{to}' from='{from}'><fin xmlns='{}' complete='{}'>{set}</fin></iq>",
            ns::MAM,
            !more
        )
        .as_bytes(),
    );
    Some(out)
}
