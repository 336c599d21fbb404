//! Where several clients acting as one resource need more than the
//! routing table of DESIGN §5: group chats (`rooms`), capabilities
//! (`caps`), and the answers and pushes of `queries`. The router calls
//! these hooks around `route`; each hook gets what routing decided and
//! returns what is to be delivered instead.

use crate::caps::Caps;
use crate::queries::Queries;
use crate::rooms::{Rooms, IN_MEMBER};
use crate::route::{Dest, Origin};
use sj::account::Account;

type Routed = Vec<(Dest, Vec<u8>)>;

#[derive(Debug, Default)]
pub struct Shared {
    rooms: Rooms,
    caps: Caps,
    queries: Queries,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            rooms: Rooms::new(),
            caps: Caps::new(),
            queries: Queries::new(),
        }
    }

    /// A record from the server, after `route::from_upstream`.
    pub fn on_upstream(&mut self, acct: &Account, rec: &[u8], routed: Routed) -> Routed {
        let routed = self.caps.on_upstream(rec, routed);
        let routed = self.queries.on_upstream(acct, rec, routed);
        self.rooms.on_upstream(acct, rec, routed)
    }

    /// Whether the last record from the server was a group chat's
    /// traffic, copied to the room's clients only: who gets it depends on
    /// who is in the room at that moment, so the archive keeps it without
    /// replaying it (sj(7), ARCHIVE).
    pub fn room_traffic(&self) -> bool {
        self.rooms.copied()
    }

    /// A local record, before `route::from_local`: `Some` when it is
    /// decided here.
    pub fn on_local(&mut self, acct: &Account, origin: &Origin, rec: &[u8]) -> Option<Routed> {
        if let Some(r) = self.caps.on_local(origin, rec) {
            return Some(r);
        }
        self.queries.on_local(origin, rec);
        let member = match origin {
            Origin::Client(n) => n.as_str(),
            Origin::In => IN_MEMBER,
            Origin::Daemon => return None,
        };
        self.rooms.on_client(acct, member, rec)
    }

    /// A local record, after `route::from_local` decided `routed`.
    pub fn after_local(&mut self, acct: &Account, origin: &Origin, routed: Routed) -> Routed {
        self.caps.after_local(acct, origin, routed)
    }

    pub fn client_arrived(&mut self, _acct: &Account, _name: &str) -> Routed {
        Vec::new()
    }

    /// Client `name` went away.
    pub fn client_left(&mut self, _acct: &Account, name: &str) -> Routed {
        let mut out = self.rooms.client_left(name);
        out.extend(self.caps.client_left(name));
        out
    }
}
