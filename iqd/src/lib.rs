//! iqd's logic, shared by the `iqd` daemon and the `roster` tool.
//!
//! What is here: building iq answers and errors (`stanza`), the built-in
//! answers (ping, version, time, last activity, disco#info; `builtin`), the
//! roster cache format and roster pushes (`roster`), and the file-system
//! paths iqd derives from network data (`paths`). Everything is pure or
//! touches only the account directory, so it is unit-tested here.
//!
//! What is not here: the event loop, handler processes and delegation
//! (`src/main.rs`).

pub mod builtin;
pub mod paths;
pub mod roster;
pub mod stanza;
