//! Answers to iq requests (RFC 6120 §8.2.3, §8.3).
//!
//! An answer carries `to` = the requester (the request's `from`; omitted when
//! the request had none, i.e. it came from the account's server) and the
//! request's `id`. iqd's records carry no `from`: sj-proxy strips it and the
//! server stamps it.

use sj::ns::{CLIENT, STANZAS};
use sj::xml::{escape_attr, Edit, Element, Top};

/// The stanza error conditions iqd sends, with their error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// No handler, no built-in, no client (type cancel).
    ServiceUnavailable,
    /// A handler failed, timed out or gave a bad answer (type cancel).
    InternalServerError,
    /// A get/set without exactly one payload child (type modify).
    BadRequest,
    /// A disco node iqd does not know (type cancel).
    ItemNotFound,
    /// Too many handlers in flight (type wait).
    ResourceConstraint,
}

impl Cond {
    pub fn name(self) -> &'static str {
        match self {
            Cond::ServiceUnavailable => "service-unavailable",
            Cond::InternalServerError => "internal-server-error",
            Cond::BadRequest => "bad-request",
            Cond::ItemNotFound => "item-not-found",
            Cond::ResourceConstraint => "resource-constraint",
        }
    }
    pub fn error_type(self) -> &'static str {
        match self {
            Cond::BadRequest => "modify",
            Cond::ResourceConstraint => "wait",
            _ => "cancel",
        }
    }
}

/// The start of an answer: `<iq type='T' to='FROM' id='ID'`, no `>`.
fn head(kind: &str, to: Option<&str>, id: &str) -> String {
    let mut s = format!("<iq type='{kind}'");
    if let Some(to) = to {
        s.push_str(&format!(" to='{}'", escape_attr(to)));
    }
    s.push_str(&format!(" id='{}'", escape_attr(id)));
    s
}

/// A result with an optional payload (already serialised XML), as one record line.
pub fn result(to: Option<&str>, id: &str, payload: &str) -> String {
    let mut s = head("result", to, id);
    if payload.is_empty() {
        s.push_str("/>\n");
    } else {
        s.push('>');
        s.push_str(payload);
        s.push_str("</iq>\n");
    }
    s
}

/// An error answer, as one record line.
pub fn error(to: Option<&str>, id: &str, cond: Cond) -> String {
    format!(
        "{}><error type='{}'><{} xmlns='{STANZAS}'/></error></iq>\n",
        head("error", to, id),
        cond.error_type(),
        cond.name()
    )
}

/// What an incoming iq is, as far as iqd's dispatch is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: String,
    pub id: String,
    pub from: Option<String>,
    /// Namespace and local name of the payload child of a get/set.
    pub payload: Option<(String, String)>,
    /// Whether the get/set has exactly one child element (RFC 6120 §8.2.3).
    pub well_formed: bool,
}

impl Request {
    /// `None` when the element is not an iq.
    pub fn from_element(e: &Element) -> Option<Request> {
        if e.local_name() != "iq" || e.ns != CLIENT {
            return None;
        }
        let kinds: Vec<&Element> = e.elements().collect();
        let payload = kinds
            .first()
            .map(|c| (c.ns.to_string(), c.local_name().to_string()));
        Some(Request {
            kind: e.attr("type").unwrap_or("").to_string(),
            id: e.attr("id").unwrap_or("").to_string(),
            from: e.attr("from").map(str::to_string),
            payload,
            well_formed: kinds.len() == 1,
        })
    }
    pub fn is_request(&self) -> bool {
        self.kind == "get" || self.kind == "set"
    }
    pub fn ns(&self) -> Option<&str> {
        self.payload.as_ref().map(|(ns, _)| ns.as_str())
    }
}

/// The defined condition of an error answer, e.g. `item-not-found`, with
/// the error's text if any.
pub fn error_condition(e: &Element) -> Option<String> {
    let err = e.elements().find(|c| c.local_name() == "error")?;
    let cond = err
        .elements()
        .find(|c| c.ns == STANZAS && c.local_name() != "text")
        .map(|c| c.local_name().to_string())
        .unwrap_or_else(|| "undefined-condition".to_string());
    match err.child("text", STANZAS).map(|t| t.text()) {
        Some(t) if !t.is_empty() => Some(format!("{cond}: {t}")),
        _ => Some(cond),
    }
}

/// Largest handler output iqd takes (the record size limit).
pub const MAX_ANSWER: usize = sj::framer::Limits::DEFAULT.max_record;

/// Exactly one canonical record from `bytes`, or `None`.
fn one_record(bytes: &[u8]) -> Option<Vec<u8>> {
    use sj::framer::{Event, Framer, Limits, Mode};
    let mut f = Framer::new(Mode::Fragments, Limits::DEFAULT);
    f.feed(bytes);
    let rec = match f.next_event() {
        Ok(Some(Event::Record(r))) => r,
        _ => return None,
    };
    match f.next_event() {
        Ok(None) if f.buffered() == 0 => Some(rec),
        _ => None,
    }
}

/// The answer to a get/set from a handler's outcome (see iqd(8)):
/// failure (nonzero exit, signal, timeout) is `internal-server-error`;
/// empty output is an empty result; output starting `<iq` must be one iq of
/// type result or error, whose `to` and `id` iqd sets (and `from` removes);
/// other output is a payload iqd wraps in a result. Output that is not
/// well-formed is `internal-server-error`.
pub fn from_handler(to: Option<&str>, id: &str, success: bool, out: &[u8]) -> String {
    let fail = || error(to, id, Cond::InternalServerError);
    if !success || out.len() > MAX_ANSWER {
        return fail();
    }
    let t = out.trim_ascii();
    if t.is_empty() {
        return result(to, id, "");
    }
    let full = t.starts_with(b"<iq")
        && matches!(t.get(3), Some(b' ' | b'\t' | b'\n' | b'\r' | b'>' | b'/'));
    let rec = if full {
        let Some(rec) = one_record(t) else {
            return fail();
        };
        let Some(e) = Element::parse(&rec) else {
            return fail();
        };
        if e.local_name() != "iq"
            || e.ns != CLIENT
            || !matches!(e.attr("type"), Some("result" | "error"))
        {
            return fail();
        }
        let Some(top) = Top::parse(&rec) else {
            return fail();
        };
        let to = match to {
            Some(to) => Edit::Set("to", to),
            None => Edit::Remove("to"),
        };
        let body = top.rewrite(&[Edit::Remove("from"), Edit::Set("id", id), to]);
        body.strip_suffix(b"\n").unwrap_or(&body).to_vec()
    } else {
        let mut w = result(to, id, "\u{0}").into_bytes();
        // Replace the placeholder with the payload bytes as they are.
        let Some(pos) = w.iter().position(|&b| b == 0) else {
            return fail();
        };
        w.splice(pos..pos + 1, t.iter().copied());
        let Some(rec) = one_record(&w) else {
            return fail();
        };
        // RFC 6120 §8.2.3: a result has zero or one payload child, and
        // character data is no payload.
        match Element::parse(&rec) {
            Some(e)
                if e.elements().count() <= 1
                    && e.text().chars().all(|c| c.is_ascii_whitespace()) => {}
            _ => return fail(),
        }
        rec.strip_suffix(b"\n").unwrap_or(&rec).to_vec()
    };
    match String::from_utf8(rec) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        Err(_) => fail(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id with a line break (`&#10;` in the request) is answered on one
    /// record line, and comes back as it was.
    #[test]
    fn answers_to_an_id_with_line_breaks_stay_one_line() {
        for s in [
            result(Some("bob@x/r"), "a\nb\r\tc", ""),
            error(None, "a\nb\r\tc", Cond::BadRequest),
            from_handler(None, "a\nb\r\tc", true, b"<iq type='result' id='z'/>"),
        ] {
            assert_eq!(s.find('\n'), Some(s.len() - 1), "{s:?}");
            assert!(!s.contains(['\r', '\t']), "{s:?}");
            let e = Element::parse(s.as_bytes()).expect("parses");
            assert_eq!(e.attr("id"), Some("a\nb\r\tc"));
        }
    }

    #[test]
    fn error_shape() {
        let s = error(Some("bob@x/r"), "a1", Cond::ServiceUnavailable);
        assert_eq!(
            s,
            "<iq type='error' to='bob@x/r' id='a1'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>\n"
        );
        let e = Element::parse(s.as_bytes()).expect("parses");
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
        let s = error(None, "x", Cond::BadRequest);
        assert!(s.starts_with("<iq type='error' id='x'><error type='modify'><bad-request "));
    }

    #[test]
    fn result_shape() {
        assert_eq!(result(None, "p1", ""), "<iq type='result' id='p1'/>\n");
        assert_eq!(
            result(Some("a@b"), "p1", "<x xmlns='y'/>"),
            "<iq type='result' to='a@b' id='p1'><x xmlns='y'/></iq>\n"
        );
    }

    #[test]
    fn request_view() {
        let e = Element::parse(
            b"<iq type='get' id='1' from='b@x/r'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .expect("parse");
        let r = Request::from_element(&e).expect("iq");
        assert!(r.is_request() && r.well_formed);
        assert_eq!(r.ns(), Some("urn:xmpp:ping"));
        let e = Element::parse(b"<iq type='get' id='1'/>").expect("parse");
        let r = Request::from_element(&e).expect("iq");
        assert!(!r.well_formed);
        assert_eq!(r.ns(), None);
    }

    #[test]
    fn handler_answers() {
        let to = Some("bob@x/r");
        assert_eq!(
            from_handler(to, "7", true, b"\n"),
            "<iq type='result' to='bob@x/r' id='7'/>\n"
        );
        assert_eq!(
            from_handler(to, "7", true, b"<echo xmlns='urn:example:echo'>hi</echo>\n"),
            "<iq type='result' to='bob@x/r' id='7'><echo xmlns='urn:example:echo'>hi</echo></iq>\n"
        );
        let full = from_handler(
            to,
            "7",
            true,
            b"<iq type='result' id='wrong' to='evil@x' from='me@x'><q xmlns='u'/></iq>",
        );
        let e = Element::parse(full.as_bytes()).expect("record");
        assert_eq!(e.attr("id"), Some("7"));
        assert_eq!(e.attr("to"), Some("bob@x/r"));
        assert_eq!(e.attr("from"), None);
        assert!(full.ends_with("</iq>\n") && full.matches('\n').count() == 1);
        let ise = error(to, "7", Cond::InternalServerError);
        assert_eq!(from_handler(to, "7", false, b"<x xmlns='u'/>"), ise);
        assert_eq!(from_handler(to, "7", true, b"<x xmlns='u'>"), ise);
        assert_eq!(from_handler(to, "7", true, b"not xml"), ise);
        assert_eq!(from_handler(to, "7", true, b"<iq type='get' id='1'/>"), ise);
        // No smuggling a second stanza out of the wrapper.
        assert_eq!(
            from_handler(
                to,
                "7",
                true,
                b"<a xmlns='u'/></iq><iq type='set' id='z'><b xmlns='v'/>"
            ),
            ise
        );
        assert_eq!(
            from_handler(to, "7", true, b"<a xmlns='u'/><message to='c@x'/>"),
            ise
        );
    }
}
