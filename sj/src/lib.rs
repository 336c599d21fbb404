//! Protocol code shared by the sj-proxy programs.
//!
//! What is here: the streaming framer that turns XMPP bytes into one-line
//! records (`framer`), reading and editing records and XML escaping
//! (`xml`), namespace names (`ns`), JIDs and the one function that maps a
//! name to a path component (`jid`, `path`), SASL SCRAM and PLAIN (`sasl`),
//! the local credential file (`passwd`), FIFOs and non-blocking line I/O
//! (`fifo`, `io`), child processes on a pipe pair (`child`), and one-line errors with
//! the skarnet exit codes (`exit`, `log`), the daemons' shared command
//! line (`daemon`), dates and times (`time`), the contact `out` log
//! format (`outlog`), `DIR/state` and the owner's lock (`state`, `lock`),
//! the per-account record of failed logins (`authfail`), and what a UCSPI
//! wrapper hands both session ends, with the stream headers and stream
//! errors they write (`ucspi`).
//!
//! The floor every program stands on: the account directory's layout and
//! who the account is (`account`: every path under DIR is named there),
//! and the event loop's two pieces (`poll`: one poll(2) set per turn;
//! `signal`: the handlers, one stop flag and one self-pipe).
//!
//! What is not here: policy. Routing, logging formats and session state
//! machines live in the programs that own them.

pub mod account;
pub mod archive;
pub mod authfail;
pub mod child;
pub mod daemon;
pub mod exit;
pub mod fifo;
pub mod framer;
pub mod history;
pub mod io;
pub mod jid;
pub mod lock;
pub mod log;
pub mod ns;
pub mod outlog;
pub mod passwd;
pub mod path;
pub mod poll;
pub mod sasl;
pub mod signal;
pub mod sm;
pub mod state;
pub mod time;
pub mod ucspi;
pub mod xml;
