//! Exit codes (skarnet/djb convention, DESIGN §7) and the error type that
//! carries one.

use std::fmt;
use std::process::ExitCode;

/// Clean stop.
pub const OK: u8 = 0;
/// The peer broke the protocol.
pub const PROTOCOL: u8 = 1;
/// Permanent failure: usage, bad configuration, authentication refused.
pub const PERMANENT: u8 = 100;
/// Temporary failure: connection lost, timeout, resource conflict.
pub const TEMPORARY: u8 = 111;

/// A failure that ends a program: what it was doing, why, and the exit code.
#[derive(Debug)]
pub struct Fatal {
    pub code: u8,
    pub msg: String,
}

impl Fatal {
    pub fn new(code: u8, msg: impl Into<String>) -> Self {
        Fatal {
            code,
            msg: msg.into(),
        }
    }
    pub fn permanent(msg: impl Into<String>) -> Self {
        Self::new(PERMANENT, msg)
    }
    pub fn temporary(msg: impl Into<String>) -> Self {
        Self::new(TEMPORARY, msg)
    }
    pub fn protocol(msg: impl Into<String>) -> Self {
        Self::new(PROTOCOL, msg)
    }
    /// "unable to X: reason" for an I/O error; the code follows the error kind.
    pub fn io(what: impl fmt::Display, err: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let code = match err.kind() {
            NotFound | PermissionDenied | InvalidInput | InvalidData | AlreadyExists => PERMANENT,
            _ => TEMPORARY,
        };
        Self::new(
            code,
            format!("unable to {what}: {}", crate::log::strerror(err)),
        )
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Fatal {}

/// The one place a `main` turns its outcome into an exit code: `Ok` is 0, a
/// `Fatal` is logged as `prog: fatal: msg` and exits with its code. A
/// `Fatal` with an empty message exits without a line: what it ends was
/// logged already, or deliberately not (rate-limited lines).
pub fn finish(result: Result<(), Fatal>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(e) => {
            if !e.msg.is_empty() {
                crate::log::fatal(&e.msg);
            }
            ExitCode::from(e.code)
        }
    }
}
