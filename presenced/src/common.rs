//! Pieces shared by `presenced` and the `presence` tool: the show words,
//! and the `mypresence` file format.
//!
//! The library of this crate (`src/lib.rs`): both binaries use it.

use std::fmt;

/// A presence "show" value as the account directory spells it.
///
/// Ordered from most to least available: chat, online, away, xa, dnd,
/// offline. This is the order used everywhere presenced has to pick one
/// presence out of several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Show {
    Chat,
    Online,
    Away,
    Xa,
    Dnd,
    Offline,
}

impl Show {
    /// Parse a word of the file format (`online chat away xa dnd offline`).
    pub fn parse(word: &str) -> Option<Show> {
        Some(match word {
            "chat" => Show::Chat,
            "online" | "available" => Show::Online,
            "away" => Show::Away,
            "xa" => Show::Xa,
            "dnd" => Show::Dnd,
            "offline" | "unavailable" => Show::Offline,
            _ => return None,
        })
    }

    /// From the text of an XMPP `<show/>` element (absent = online).
    /// An unknown value is treated as online (RFC 6121 4.7.2.1 leaves it to us).
    pub fn from_stanza(show: Option<&str>) -> Show {
        match show.map(str::trim) {
            Some("chat") => Show::Chat,
            Some("away") => Show::Away,
            Some("xa") => Show::Xa,
            Some("dnd") => Show::Dnd,
            _ => Show::Online,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Show::Chat => "chat",
            Show::Online => "online",
            Show::Away => "away",
            Show::Xa => "xa",
            Show::Dnd => "dnd",
            Show::Offline => "offline",
        }
    }

    /// The `<show/>` text to send, `None` for plain available.
    pub fn stanza_word(self) -> Option<&'static str> {
        match self {
            Show::Chat | Show::Away | Show::Xa | Show::Dnd => Some(self.as_str()),
            Show::Online | Show::Offline => None,
        }
    }
}

impl fmt::Display for Show {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contents of a `mypresence` file.
///
/// Line 1: `<show> [status text]`. Optional line 2: `priority N`
/// (-128..127, default 0). A missing or empty file means `online`. A file
/// with an unknown show word is rejected (`None`), so a typo never silently
/// changes what contacts see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyPresence {
    pub show: Show,
    pub status: String,
    pub priority: i8,
}

impl Default for MyPresence {
    fn default() -> Self {
        MyPresence {
            show: Show::Online,
            status: String::new(),
            priority: 0,
        }
    }
}

impl MyPresence {
    /// Parse a file's text. `None` when line 1 has an unknown show word or
    /// line 2 is not `priority N`.
    pub fn parse(text: &str) -> Option<MyPresence> {
        let mut lines = text.lines();
        let mut me = MyPresence::default();
        let first = lines.next().unwrap_or("").trim();
        if !first.is_empty() {
            let (word, rest) = match first.split_once(char::is_whitespace) {
                Some((w, r)) => (w, r.trim()),
                None => (first, ""),
            };
            me.show = Show::parse(word)?;
            me.status = rest.to_string();
        }
        for line in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            me.priority = parse_priority_line(line)?;
        }
        Some(me)
    }

    /// Serialise in the file format (line 2 only when the priority is not 0).
    pub fn to_file(&self) -> String {
        let mut s = self.show.as_str().to_string();
        if !self.status.is_empty() {
            s.push(' ');
            s.push_str(&self.status);
        }
        s.push('\n');
        if self.priority != 0 {
            s.push_str(&format!("priority {}\n", self.priority));
        }
        s
    }

    /// Line 1 only: `<show> [status]`.
    pub fn line(&self) -> String {
        if self.status.is_empty() {
            self.show.as_str().to_string()
        } else {
            format!("{} {}", self.show, self.status)
        }
    }
}

fn parse_priority_line(line: &str) -> Option<i8> {
    let rest = line.strip_prefix("priority")?;
    rest.trim().parse::<i8>().ok()
}

/// Collapse a status text to one line (CR, LF, TAB become spaces).
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_most_available_first() {
        let mut v = vec![
            Show::Dnd,
            Show::Offline,
            Show::Away,
            Show::Chat,
            Show::Xa,
            Show::Online,
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                Show::Chat,
                Show::Online,
                Show::Away,
                Show::Xa,
                Show::Dnd,
                Show::Offline
            ]
        );
    }

    #[test]
    fn mypresence_parsing() {
        assert_eq!(MyPresence::parse(""), Some(MyPresence::default()));
        assert_eq!(MyPresence::parse("\n"), Some(MyPresence::default()));
        let p = MyPresence::parse("dnd  busy right now \n").expect("parse");
        assert_eq!(p.show, Show::Dnd);
        assert_eq!(p.status, "busy right now");
        assert_eq!(p.priority, 0);
        let p = MyPresence::parse("away\npriority -5\n").expect("parse");
        assert_eq!((p.show, p.priority), (Show::Away, -5));
        assert_eq!(p.status, "");
        assert_eq!(
            MyPresence::parse("offline").map(|p| p.show),
            Some(Show::Offline)
        );
        assert_eq!(MyPresence::parse("busy at work"), None);
        assert_eq!(MyPresence::parse("away\npriority 500"), None);
        assert_eq!(MyPresence::parse("away\nbogus"), None);
    }

    #[test]
    fn mypresence_roundtrip() {
        let p = MyPresence {
            show: Show::Xa,
            status: "gone fishing".into(),
            priority: 7,
        };
        assert_eq!(p.to_file(), "xa gone fishing\npriority 7\n");
        assert_eq!(MyPresence::parse(&p.to_file()), Some(p.clone()));
        assert_eq!(p.line(), "xa gone fishing");
        assert_eq!(MyPresence::default().to_file(), "online\n");
    }

    #[test]
    fn stanza_show_words() {
        assert_eq!(Show::from_stanza(None), Show::Online);
        assert_eq!(Show::from_stanza(Some("away")), Show::Away);
        assert_eq!(Show::from_stanza(Some("bogus")), Show::Online);
        assert_eq!(Show::Online.stanza_word(), None);
        assert_eq!(Show::Dnd.stanza_word(), Some("dnd"));
    }

    #[test]
    fn one_line_status() {
        assert_eq!(one_line(" a\nb\tc\r "), "a b c");
    }
}
