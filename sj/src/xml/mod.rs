//! Reading and editing records (DESIGN §4), and XML characters.
//!
//! Records were validated by the framer, so nothing here checks what the
//! framer checks, but nothing panics on a record that is not well-formed
//! either: it answers `None`.
//!
//! - `chars`: which characters XML allows, escaping and unescaping; the
//!   framer uses it too.
//! - `Top`: the top-level start tag, read once per hop for routing, and the
//!   record rewritten with several edits in one copy.
//! - `Element`: the whole record as a tree of borrowed names, values and
//!   text, for the programs that look inside stanzas.

mod chars;
mod tag;
mod top;
mod tree;

pub use chars::{
    escape_attr, escape_text, is_name_char, is_name_start, is_ws, is_xml_char, unescape,
};
pub(crate) use chars::{
    escape_into, find_byte, name_end, unescape_str, NAME_CHAR_ASCII, NAME_CHAR_ASCII_NO_COLON,
    NAME_START_ASCII,
};
pub use top::{Edit, Top};
pub use tree::{Element, Node};
