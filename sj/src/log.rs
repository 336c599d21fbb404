//! One-line diagnostics on stderr in the skarnet style:
//! `prog: fatal: unable to open DIR/in: Permission denied`.
//!
//! Each line is written with one `write(2)` so lines from several processes
//! sharing a log pipe (s6-log) never interleave.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static PROG: OnceLock<String> = OnceLock::new();
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Set the program name used as the prefix of every line.
pub fn init(prog: &str) {
    let _ = PROG.set(prog.to_string());
}

pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

fn prog() -> &'static str {
    PROG.get().map(String::as_str).unwrap_or("sj")
}

fn emit(level: &str, msg: &str) {
    let mut line = String::with_capacity(msg.len() + 32);
    line.push_str(prog());
    line.push_str(": ");
    line.push_str(level);
    line.push_str(": ");
    // One line per message, whatever the message holds.
    for c in msg.chars() {
        line.push(if c == '\n' || c == '\r' { ' ' } else { c });
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn fatal(msg: &str) {
    emit("fatal", msg);
}

pub fn warn(msg: &str) {
    emit("warning", msg);
}

pub fn info(msg: &str) {
    emit("info", msg);
}

/// Trace a record when `-v` is on. SASL payloads are redacted.
pub fn trace(dir: &str, record: &[u8]) {
    if !verbose() {
        return;
    }
    let text = String::from_utf8_lossy(record);
    let text = text.trim_end_matches('\n');
    if text.contains(crate::ns::SASL) {
        let name = text.split([' ', '>']).next().unwrap_or("<?");
        emit("trace", &format!("{dir} {name} [sasl payload redacted]"));
    } else {
        emit("trace", &format!("{dir} {text}"));
    }
}

/// strerror without Rust's " (os error N)" suffix.
pub fn strerror(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => err.to_string(),
    }
}
