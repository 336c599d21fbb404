//! Group chats (XEP-0045) shared by the clients of one account: the proxy
//! owns the one occupant the server knows.
//!
//! Every client of the proxy is the same resource to the room, so a room
//! sees one occupant whichever client joined. This module keeps, per room,
//! which clients joined (`DIR/in` counts as the client `in`), the room's
//! occupant presences and subject, and turns what clients and the room
//! say into what each should see:
//! - room traffic (presences from `room@service/nick`, its messages,
//!   history and subject) goes to the clients that joined, each addressed
//!   to `BARE/NAME`; messaged still gets each room message once;
//! - a join of a room already joined is answered here from the cache
//!   (occupants, the account's own presence, the subject), never sent up:
//!   the room would rename the occupant (303) or replay its history to all;
//! - a leave leaves the room upstream only when the last client leaves;
//!   a client that goes away leaves its rooms the same way;
//! - a client that did not join is not in the room: its presence or error
//!   to the room (mcabber and poezio answer a groupchat they did not join
//!   with `unavailable`, which would make the account leave) never goes up.
//!
//! It does not change nicks, track roles or affiliations, or answer
//! anything but joins and leaves; a room no client joined through the
//! proxy (joined by another device of the account) is left as routing
//! has it: broadcast. State is per upstream session: it dies with it, as
//! the occupant does.

use crate::route::Dest;
use sj::account::Account;
use sj::jid::Jid;
use sj::xml::{escape_attr, Edit, Element, Top};
use std::collections::{BTreeMap, BTreeSet};

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// The status code that marks a room's presence about the occupant itself.
const SELF_PRESENCE: &str = "110";
/// The status code of an unavailable presence that is a nick change.
const NICK_CHANGE: &str = "303";
/// Occupant presences kept per room; a larger room is answered with
/// these (a later join still sees every change after it joined).
const MAX_OCCUPANTS: usize = 2000;
/// Rooms tracked at once; joins past it go upstream untracked.
const MAX_ROOMS: usize = 1000;

/// The name `DIR/in` joins under (it gets no copies: it has no `in` FIFO).
pub const IN_MEMBER: &str = crate::route::IN_ORIGIN;

#[derive(Debug, Default)]
struct Room {
    /// The nick the account joined with.
    nick: String,
    /// Clients (directory names) in the room.
    members: BTreeSet<String>,
    /// The room confirmed the join (our own presence, status 110).
    joined: bool,
    /// The last client left: the leave is upstream, the room's answer due.
    leaving: bool,
    /// Other occupants' last presence, by nick.
    occupants: BTreeMap<String, Vec<u8>>,
    /// The account's own occupant presence.
    own: Option<Vec<u8>>,
    /// The last subject message.
    subject: Option<Vec<u8>>,
}

/// Join state of every room joined through the proxy.
#[derive(Debug, Default)]
pub struct Rooms {
    /// By the room's normalised bare JID.
    rooms: BTreeMap<String, Room>,
    /// The last `on_upstream` made one copy per member.
    copied: bool,
}

type Routed = Vec<(Dest, Vec<u8>)>;

/// The room's key and the nick of a `room@service/nick` JID.
fn room_and_nick(jid: &str) -> Option<(String, Option<String>)> {
    let j = Jid::parse(jid).ok()?;
    j.local()?;
    Some((j.bare().to_string(), j.resource().map(str::to_string)))
}

/// The status codes of a room's presence.
fn statuses<'e>(el: &'e Element) -> impl Iterator<Item = &'e str> {
    el.child("x", MUC_USER)
        .into_iter()
        .flat_map(|x| x.elements())
        .filter(|s| s.local_name() == "status")
        .filter_map(|s| s.attr("code"))
}

/// Does the room's presence carry `<status code='110'/>`?
fn is_self(el: &Element) -> bool {
    statuses(el).any(|c| c == SELF_PRESENCE)
}

/// The record addressed to local client `name`.
fn to_client(acct: &Account, name: &str, rec: &[u8]) -> Option<Vec<u8>> {
    let to = acct.client_jid(name);
    Some(Top::parse(rec)?.rewrite(&[Edit::Set("to", &to)]))
}

impl Rooms {
    pub fn new() -> Rooms {
        Rooms::default()
    }

    /// Is `name` in a room (for tests and the log)?
    #[cfg(test)]
    fn is_member(&self, room: &str, name: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.contains(name))
    }

    /// Copies of `rec` for every client in `room` (not `DIR/in`).
    fn copies(&self, acct: &Account, room: &Room, rec: &[u8]) -> Routed {
        room.members
            .iter()
            .filter(|m| *m != IN_MEMBER)
            .filter_map(|m| to_client(acct, m, rec))
            .map(|r| (Dest::Mirror, r))
            .collect()
    }

    /// A record from the server, after `route::from_upstream` decided
    /// `routed`: room traffic reaches the room's clients only.
    pub fn on_upstream(&mut self, acct: &Account, rec: &[u8], routed: Routed) -> Routed {
        self.copied = false;
        if self.rooms.is_empty() || !routed.iter().any(|(d, _)| *d == Dest::Mirror) {
            return routed;
        }
        let Some(top) = Top::parse(rec) else {
            return routed;
        };
        let name = top.name();
        if name != "message" && name != "presence" {
            return routed;
        }
        let Some((key, nick)) = top.attr("from").as_deref().and_then(room_and_nick) else {
            return routed;
        };
        if !self.rooms.contains_key(&key) {
            return routed;
        }
        if name == "presence" {
            self.room_presence(&key, nick, rec);
        } else if let Some(el) =
            memchr::memmem::find(rec, b"subject").and_then(|_| Element::parse(rec))
        {
            // Parsed only when it may hold a subject: most room messages
            // do not, and the tree costs more than the routing.
            let subject = el.attr("type") == Some("groupchat")
                && el.child("subject", sj::ns::CLIENT).is_some()
                && el.child("body", sj::ns::CLIENT).is_none();
            if let (true, Some(room)) = (subject, self.rooms.get_mut(&key)) {
                room.subject = Some(rec.to_vec());
            }
        }
        let Some(room) = self.rooms.get(&key) else {
            return routed;
        };
        // Occupant presences are the room's clients' business: presenced
        // would keep them and replay them to every client that connects
        // later, and never hears that they are stale once the account
        // has left.
        let presence = name == "presence";
        let mut out: Routed = routed
            .into_iter()
            .filter(|(d, _)| *d != Dest::Mirror && !(presence && *d == Dest::Presenced))
            .collect();
        out.extend(self.copies(acct, room, rec));
        self.copied = true;
        if room.leaving && room.own.is_none() && !room.joined {
            // The room confirmed the last leave: forget it.
            self.rooms.remove(&key);
        }
        out
    }

    /// Whether the last record from the server was a tracked room's
    /// traffic, handed out one copy per member.
    pub fn copied(&self) -> bool {
        self.copied
    }

    /// Keep the room's occupant list from one of its presences.
    fn room_presence(&mut self, key: &str, nick: Option<String>, rec: &[u8]) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(el) = Element::parse(rec) else {
            return;
        };
        let ty = el.attr("type");
        if ty == Some("error") && !room.joined {
            // The join failed (from the room or the nick): the clients
            // waiting get the error, and the room is forgotten.
            room.leaving = true;
            room.own = None;
            return;
        }
        let own = is_self(&el) || nick.as_deref() == Some(room.nick.as_str());
        if ty == Some("unavailable") && statuses(&el).any(|c| c == NICK_CHANGE) {
            // A nick change: the presence under the new nick follows.
            if !own {
                if let Some(n) = nick {
                    room.occupants.remove(&n);
                }
            }
            return;
        }
        match (own, ty) {
            (true, Some("unavailable")) => {
                // Left, kicked or the room went away: the clients in it get
                // this, and the room is forgotten (`from_upstream`).
                room.joined = false;
                room.own = None;
                room.leaving = true;
                room.occupants.clear();
            }
            (true, None) => {
                room.joined = true;
                room.own = Some(rec.to_vec());
                if let Some(n) = nick {
                    room.nick = n;
                }
            }
            (false, Some("unavailable")) => {
                if let Some(n) = nick {
                    room.occupants.remove(&n);
                }
            }
            (false, None) => {
                if let Some(n) = nick {
                    if room.occupants.len() < MAX_OCCUPANTS || room.occupants.contains_key(&n) {
                        room.occupants.insert(n, rec.to_vec());
                    }
                }
            }
            _ => {}
        }
    }

    /// A record from client `name` (or `DIR/in`, as `in`), before
    /// `route::from_local`: `Some` when it is a join, leave or other
    /// stanza to a room that is decided here.
    pub fn on_client(&mut self, acct: &Account, name: &str, rec: &[u8]) -> Option<Routed> {
        let top = Top::parse(rec)?;
        let kind = top.name();
        if kind != "presence" && kind != "message" {
            return None;
        }
        let to = top.attr("to")?;
        if sj::jid::is_control(&to) {
            return None;
        }
        let (key, nick) = room_and_nick(&to)?;
        let ty = top.attr("type");
        let tracked = self.rooms.contains_key(&key);
        let member = self
            .rooms
            .get(&key)
            .is_some_and(|r| r.members.contains(name));
        if kind == "message" {
            // An error to a room from a client not in it (a client that
            // got room traffic it did not ask for) would only annoy the
            // room; everything else is the client's business.
            if tracked && !member && ty.as_deref() == Some("error") {
                return Some(refused(format!(
                    "an error to room {key} from {name}, which is not in it"
                )));
            }
            return None;
        }
        let nick = nick?;
        let el = Element::parse(rec)?;
        match ty.as_deref() {
            None if el.child("x", MUC).is_some() => self.join(acct, name, &key, &nick),
            Some("unavailable") if tracked => self.leave(acct, name, &key),
            // Status, nick changes, errors: from a client in the room they
            // are the occupant's; from one that is not, nobody's.
            _ if tracked && !member => Some(refused(format!(
                "a presence to room {key} from {name}, which is not in it"
            ))),
            _ => None,
        }
    }

    /// A join: `None` when it goes to the room, else what answers it here.
    fn join(&mut self, acct: &Account, name: &str, key: &str, nick: &str) -> Option<Routed> {
        let fresh = match self.rooms.get(key) {
            None => true,
            Some(r) => r.leaving || r.members.is_empty(),
        };
        if fresh {
            if self.rooms.len() >= MAX_ROOMS && !self.rooms.contains_key(key) {
                sj::log::warn(&format!(
                    "{MAX_ROOMS} rooms joined: {key} is not tracked, its traffic reaches every client"
                ));
                return None;
            }
            let room = Room {
                nick: nick.to_string(),
                members: BTreeSet::from([name.to_string()]),
                ..Room::default()
            };
            self.rooms.insert(key.to_string(), room);
            return None;
        }
        let room = self.rooms.get_mut(key)?;
        room.members.insert(name.to_string());
        if !room.joined || name == IN_MEMBER {
            // The room's answer to the pending join reaches every member.
            return Some(Vec::new());
        }
        // Answered from the cache, the way the room would: the others,
        // then the occupant itself (110), then the subject.
        let mut out = Routed::new();
        let room = &self.rooms[key];
        for p in room
            .occupants
            .values()
            .chain(&room.own)
            .chain(&room.subject)
        {
            if let Some(r) = to_client(acct, name, p) {
                out.push((Dest::Mirror, r));
            }
        }
        Some(out)
    }

    /// A leave: `None` when it goes to the room, else what answers it here.
    fn leave(&mut self, acct: &Account, name: &str, key: &str) -> Option<Routed> {
        let room = self.rooms.get_mut(key)?;
        if !room.members.contains(name) {
            return Some(refused(format!(
                "a leave of room {key} from {name}, which is not in it"
            )));
        }
        if room.members.len() == 1 {
            // The last one out: the account leaves; the room's answer
            // reaches this client.
            room.leaving = true;
            return None;
        }
        room.members.remove(name);
        if name == IN_MEMBER {
            return Some(Vec::new());
        }
        let gone = format!(
            "<presence from='{}/{}' to='{}' type='unavailable'><x xmlns='{MUC_USER}'>\
             <item affiliation='none' role='none'/><status code='{SELF_PRESENCE}'/></x></presence>\n",
            escape_attr(key),
            escape_attr(&room.nick),
            escape_attr(&acct.client_jid(name)),
        );
        Some(vec![(Dest::Mirror, gone.into_bytes())])
    }

    /// Client `name` went away: it leaves its rooms, and the account
    /// leaves those it was the last one in.
    pub fn client_left(&mut self, name: &str) -> Routed {
        let mut out = Routed::new();
        for (key, room) in self.rooms.iter_mut() {
            if !room.members.remove(name) || !room.members.is_empty() || room.leaving {
                continue;
            }
            room.leaving = true;
            let leave = format!(
                "<presence to='{}/{}' type='unavailable'/>\n",
                escape_attr(key),
                escape_attr(&room.nick)
            );
            out.push((Dest::Upstream, leave.into_bytes()));
        }
        // Rooms nobody waits for an answer from are forgotten now.
        self.rooms.retain(|_, r| !r.members.is_empty() || r.leaving);
        out
    }
}

fn refused(why: String) -> Routed {
    vec![(Dest::Drop(why), Vec::new())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> Account {
        let jid = Jid::parse("alice@localhost/sj").expect("jid");
        Account::new(&jid, sj::account::Dir::new("/nonexistent"))
    }

    const JOIN: &[u8] = b"<presence to='room@muc.localhost/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>\n";
    const LEAVE: &[u8] = b"<presence to='room@muc.localhost/alice' type='unavailable'/>\n";

    fn dests(r: &Routed) -> Vec<(Dest, Option<String>)> {
        r.iter()
            .map(|(d, b)| {
                let to = Top::parse(b).and_then(|t| t.attr("to").map(|t| t.into_owned()));
                (d.clone(), to)
            })
            .collect()
    }

    fn from_room(rooms: &mut Rooms, rec: &str) -> Routed {
        let routed = vec![
            (Dest::Messaged, rec.as_bytes().to_vec()),
            (Dest::Mirror, rec.as_bytes().to_vec()),
        ];
        rooms.on_upstream(&acct(), rec.as_bytes(), routed)
    }

    fn mirrored_to(r: &Routed) -> Vec<String> {
        dests(r)
            .into_iter()
            .filter(|(d, _)| *d == Dest::Mirror)
            .filter_map(|(_, t)| t)
            .collect()
    }

    const CAROL: &str = "<presence from='room@muc.localhost/carol' to='alice@localhost/sj'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/></x></presence>";
    const SELF: &str = "<presence from='room@muc.localhost/alice' to='alice@localhost/sj'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/><status code='110'/></x></presence>";
    const SUBJECT: &str = "<message from='room@muc.localhost/carol' to='alice@localhost/sj' type='groupchat'><subject>topic</subject></message>";
    const SAY: &str = "<message from='room@muc.localhost/carol' to='alice@localhost/sj' type='groupchat'><body>hi</body></message>";

    #[test]
    fn one_join_upstream_second_answered_locally_last_leave_goes_up() {
        let a = acct();
        let mut r = Rooms::new();
        assert_eq!(r.on_client(&a, "one", JOIN), None, "first join goes up");
        assert!(r.is_member("room@muc.localhost", "one"));
        for p in [CAROL, SELF, SUBJECT] {
            from_room(&mut r, p);
        }
        // Traffic reaches the member only; messaged gets it once.
        let out = from_room(&mut r, SAY);
        assert_eq!(out[0].0, Dest::Messaged);
        assert_eq!(mirrored_to(&out), vec!["alice@localhost/one"]);
        // A second client: answered here, in the room's order.
        let out = r.on_client(&a, "two", JOIN).expect("answered locally");
        assert_eq!(mirrored_to(&out), vec!["alice@localhost/two"; 3]);
        let text: Vec<String> = out
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into())
            .collect();
        assert!(
            text[0].contains("/carol'")
                && text[1].contains("code='110'")
                && text[2].contains("<subject>")
        );
        let out = from_room(&mut r, SAY);
        assert_eq!(
            mirrored_to(&out),
            vec!["alice@localhost/one", "alice@localhost/two"]
        );
        // A client not in the room: its leave and errors never go up.
        assert!(matches!(
            &r.on_client(&a, "mcabber", LEAVE).expect("refused")[..],
            [(Dest::Drop(_), _)]
        ));
        let err =
            b"<message to='room@muc.localhost' type='error'><error type='cancel'/></message>\n";
        assert!(matches!(
            &r.on_client(&a, "mcabber", err).expect("refused")[..],
            [(Dest::Drop(_), _)]
        ));
        // One of two leaves: answered here; the last: goes up.
        let out = r.on_client(&a, "one", LEAVE).expect("answered locally");
        assert_eq!(mirrored_to(&out), vec!["alice@localhost/one"]);
        assert_eq!(r.on_client(&a, "two", LEAVE), None, "last one out goes up");
        let gone = SELF.replace("<presence ", "<presence type='unavailable' ");
        let out = from_room(&mut r, &gone);
        assert_eq!(mirrored_to(&out), vec!["alice@localhost/two"]);
        assert!(r.rooms.is_empty(), "forgotten once left");
    }

    #[test]
    fn nick_change_is_no_leave_and_a_failed_join_is_forgotten() {
        let a = acct();
        let mut r = Rooms::new();
        assert_eq!(r.on_client(&a, "one", JOIN), None);
        from_room(&mut r, SELF);
        let renamed = SELF
            .replace("<presence ", "<presence type='unavailable' ")
            .replace(
                "<status code='110'/>",
                "<status code='303'/><status code='110'/>",
            );
        from_room(&mut r, &renamed);
        from_room(&mut r, &SELF.replace("/alice'", "/al2'"));
        let room = &r.rooms["room@muc.localhost"];
        assert!(room.joined && room.nick == "al2");
        // A join the room refuses: the error reaches the client, a later
        // join goes to the room again.
        let mut r = Rooms::new();
        assert_eq!(r.on_client(&a, "one", JOIN), None);
        let err = "<presence from='room@muc.localhost/alice' type='error'><error type='auth'/></presence>";
        assert_eq!(
            mirrored_to(&from_room(&mut r, err)),
            vec!["alice@localhost/one"]
        );
        assert_eq!(r.on_client(&a, "one", JOIN), None);
    }

    #[test]
    fn a_client_that_goes_away_leaves_only_when_last() {
        let a = acct();
        let mut r = Rooms::new();
        assert_eq!(r.on_client(&a, "one", JOIN), None);
        from_room(&mut r, SELF);
        r.on_client(&a, "two", JOIN).expect("local");
        assert!(r.client_left("one").is_empty());
        let out = r.client_left("two");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Dest::Upstream);
        assert!(String::from_utf8_lossy(&out[0].1).contains("type='unavailable'"));
        // DIR/in joins too, and gets no copies.
        let mut r = Rooms::new();
        assert_eq!(r.on_client(&a, IN_MEMBER, JOIN), None);
        from_room(&mut r, SELF);
        assert!(mirrored_to(&from_room(&mut r, SAY)).is_empty());
        // A room nobody joined here: as routing had it.
        let out = from_room(&mut Rooms::new(), SAY);
        assert_eq!(mirrored_to(&out), vec!["alice@localhost/sj"]);
    }
}
