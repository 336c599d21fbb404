//! presenced's pieces shared by the `presenced` daemon and the `presence`
//! tool: the show words and the `mypresence` file format (`common`).
//!
//! What is not here: the daemon's state and its event loop
//! (`src/main.rs`), the tool's commands (`src/bin/presence.rs`).

pub mod common;
