//! The command line every daemon sj-proxy starts shares: `PROG [-v] -d DIR
//! JID`, with `SJ_DIR` / `SJ_JID` from the environment when `-d` / the JID
//! are not given. Each program parses its own options (lexopt) and hands
//! the optional DIR and JID here.

use crate::account::{Account, Dir, Root};
use crate::exit::Fatal;
use crate::jid::Jid;
use std::ffi::OsString;
use std::path::PathBuf;

/// Resolve the account: its directory and the bound JID.
///
/// JID: the argument, else a non-empty `SJ_JID`. DIR: `-d`, else a
/// non-empty `SJ_DIR`, else `$HOME/xmpp/BARE` (`sj::account::Root`).
/// Errors are permanent (exit 100) and end with `usage`. A DIR that a
/// live sj-proxy other than our parent owns is refused with exit 111
/// (`sj::lock::check_daemon`).
pub fn resolve(dir: Option<PathBuf>, jid: Option<String>, usage: &str) -> Result<Account, Fatal> {
    let (dir, jid) = resolve_from(dir, jid, usage, &|k| std::env::var_os(k))?;
    crate::lock::check_daemon(&dir)?;
    Ok(Account::new(&jid, dir))
}

type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn non_empty(env: Env, k: &str) -> Option<OsString> {
    env(k).filter(|v| !v.is_empty())
}

fn resolve_from(
    dir: Option<PathBuf>,
    jid: Option<String>,
    usage: &str,
    env: Env,
) -> Result<(Dir, Jid), Fatal> {
    let jid = jid
        .or_else(|| non_empty(env, "SJ_JID").and_then(|v| v.into_string().ok()))
        .ok_or_else(|| Fatal::permanent(format!("missing JID; {usage}")))?;
    let jid = Jid::parse(&jid).map_err(|e| Fatal::permanent(format!("{e}: {jid}")))?;
    if let Some(d) = dir.or_else(|| non_empty(env, "SJ_DIR").map(PathBuf::from)) {
        return Ok((Dir::new(d), jid));
    }
    let home = non_empty(env, "HOME")
        .ok_or_else(|| Fatal::permanent(format!("no -d DIR, SJ_DIR or HOME; {usage}")))?;
    let dir = Root::in_home(home)
        .account(&jid)
        .map_err(|e| Fatal::permanent(format!("unable to name a directory for {jid}: {e}")))?;
    Ok((dir, jid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn arguments_then_environment_then_home() {
        let u = "usage: x";
        let (d, j) = resolve_from(
            Some("/a".into()),
            Some("me@h/r".into()),
            u,
            &env(&[("SJ_DIR", "/b"), ("SJ_JID", "o@h")]),
        )
        .expect("ok");
        assert_eq!((d, j.to_string()), (Dir::new("/a"), "me@h/r".into()));
        let (d, j) =
            resolve_from(None, None, u, &env(&[("SJ_DIR", "/b"), ("SJ_JID", "o@h")])).expect("ok");
        assert_eq!((d, j.to_string()), (Dir::new("/b"), "o@h".into()));
        let (d, _) = resolve_from(
            None,
            Some("Me@H/r".into()),
            u,
            &env(&[("SJ_DIR", ""), ("HOME", "/home/me")]),
        )
        .expect("ok");
        assert_eq!(d, Dir::new("/home/me/xmpp/me@h"));
        // The one rule for every JID-named directory: the same name sj-c2s
        // -R looks for, and the roster tool.
        let (d, _) = resolve_from(
            None,
            Some("a!b@h/r".into()),
            u,
            &env(&[("HOME", "/home/me")]),
        )
        .expect("ok");
        assert_eq!(d, Dir::new("/home/me/xmpp/a%21b@h"));
    }

    #[test]
    fn errors_are_permanent() {
        let u = "usage: x";
        for (dir, jid, vars) in [
            (Some("/a"), None, vec![("SJ_JID", "")]),
            (Some("/a"), Some("@"), vec![]),
            (None, Some("me@h"), vec![("HOME", "")]),
        ] {
            let e = resolve_from(
                dir.map(PathBuf::from),
                jid.map(String::from),
                u,
                &env(&vars),
            )
            .expect_err("fails");
            assert_eq!(e.code, crate::exit::PERMANENT);
            assert!(jid == Some("@") || e.msg.ends_with(u), "{}", e.msg);
        }
    }
}
