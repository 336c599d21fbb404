//! sj-passwd: set the downstream password of an account.
//!
//! `sj-passwd [-d DIR]` (env `SJ_DIR`) reads the new password from the first
//! line of stdin (the trailing newline, LF or CRLF, is not part of it) and
//! writes `DIR/passwd` with SCRAM-SHA-256 and SCRAM-SHA-1 entries, never the
//! password itself. `DIR` is created (mode 0700) if missing. On a terminal
//! it prompts on stderr and turns echo off while the password is typed.
//!
//! Exit status: 0 written; 100 usage, empty or invalid password, or a
//! permanent file error; 111 a temporary error.

use sj::exit::Fatal;
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: sj-passwd [-d DIR] < password (env SJ_DIR)";

/// Longest password line read (anything longer is refused, not truncated).
const MAX_LINE: u64 = 4096;

fn main() -> ExitCode {
    sj::log::init("sj-passwd");
    sj::exit::finish(run())
}

fn usage(what: impl std::fmt::Display) -> Fatal {
    Fatal::permanent(format!("{what}; {USAGE}"))
}

/// `Some(dir)` to act; `None` when help was printed.
fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    env_dir: Option<OsString>,
) -> Result<Option<PathBuf>, Fatal> {
    use lexopt::prelude::*;
    let mut dir: Option<PathBuf> = None;
    let mut parser = lexopt::Parser::from_args(args);
    loop {
        let arg = parser
            .next()
            .map_err(|e| usage(format!("unable to parse arguments: {e}")))?;
        match arg {
            None => break,
            Some(Short('d') | Long("dir")) => {
                let v = parser
                    .value()
                    .map_err(|e| usage(format!("unable to parse arguments: {e}")))?;
                dir = Some(PathBuf::from(v));
            }
            Some(Short('h') | Long("help")) => {
                println!("{USAGE}");
                return Ok(None);
            }
            Some(other) => {
                return Err(usage(format!(
                    "unable to parse arguments: {}",
                    other.unexpected()
                )))
            }
        }
    }
    let dir = dir.or_else(|| env_dir.filter(|d| !d.is_empty()).map(PathBuf::from));
    match dir {
        Some(d) if !d.as_os_str().is_empty() => Ok(Some(d)),
        _ => Err(usage(
            "unable to find the account directory: give -d DIR or set SJ_DIR",
        )),
    }
}

/// The first line of `input` without its line ending.
fn password_line(input: impl BufRead) -> Result<String, Fatal> {
    let mut line = Vec::new();
    input
        .take(MAX_LINE + 2)
        .read_until(b'\n', &mut line)
        .map_err(|e| Fatal::io("read the new password from stdin", &e))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let reason = if line.is_empty() {
        "empty password"
    } else if line.len() as u64 > MAX_LINE {
        "password too long"
    } else {
        match String::from_utf8(line) {
            Ok(pw) => return Ok(pw),
            Err(_) => "password is not UTF-8",
        }
    };
    Err(Fatal::permanent(format!(
        "unable to read the new password from stdin: {reason}"
    )))
}

/// Read the password from a terminal with echo off, restoring it after.
fn password_from_terminal() -> Result<String, Fatal> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("New password: ");
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet);
    }
    let result = password_line(stdin.lock());
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSAFLUSH, t);
    }
    eprintln!();
    result
}

fn run() -> Result<(), Fatal> {
    let Some(dir) = parse_args(std::env::args_os().skip(1), std::env::var_os("SJ_DIR"))? else {
        return Ok(());
    };
    let password = if std::io::stdin().is_terminal() {
        password_from_terminal()?
    } else {
        password_line(std::io::stdin().lock())?
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Fatal::io(format_args!("create {}", dir.display()), &e))?;
    let path = sj::account::Dir::new(&dir).passwd();
    sj::passwd::write(&path, &password)
        .map_err(|e| Fatal::io(format_args!("write {}", path.display()), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn options() {
        assert_eq!(
            parse_args(args(&["-d", "/x"]), None).ok().flatten(),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(
            parse_args(args(&["-d/x"]), None).ok().flatten(),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(
            parse_args(args(&[]), Some("/e".into())).ok().flatten(),
            Some(PathBuf::from("/e"))
        );
        assert_eq!(
            parse_args(args(&["-d", "/x"]), Some("/e".into()))
                .ok()
                .flatten(),
            Some(PathBuf::from("/x"))
        );
        for bad in [&[][..], &["-d"], &["-x"], &["extra"], &["-d", ""]] {
            let e = parse_args(args(bad), None).expect_err("usage error");
            assert_eq!(e.code, sj::exit::PERMANENT, "{bad:?}");
        }
        assert!(parse_args(args(&[]), Some("".into())).is_err());
    }

    #[test]
    fn password_lines() {
        let ok = |s: &[u8]| password_line(s).map_err(|e| e.msg);
        assert_eq!(ok(b"pencil\n").as_deref(), Ok("pencil"));
        assert_eq!(ok(b"pencil").as_deref(), Ok("pencil"));
        assert_eq!(ok(b"pencil\r\nsecond\n").as_deref(), Ok("pencil"));
        assert_eq!(ok(b" spaced pw \n").as_deref(), Ok(" spaced pw "));
        for bad in [&b""[..], b"\n", b"\r\n", b"\xff\n"] {
            let e = password_line(bad).expect_err("refused");
            assert_eq!(e.code, sj::exit::PERMANENT);
            assert!(
                e.msg
                    .starts_with("unable to read the new password from stdin: "),
                "{}",
                e.msg
            );
        }
        assert!(password_line(&vec![b'a'; 5000][..]).is_err());
    }
}
