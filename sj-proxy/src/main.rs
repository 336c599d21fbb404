//! sj-proxy: the one upstream XMPP session of an account, and the router
//! between it, the daemons and the clients.
//!
//! It reads the server on fd 6 and writes it on fd 7 (a UCSPI client wrapper
//! owns the socket and any TLS), negotiates the stream, then starts
//! messaged, presenced, iqd and mirrord and routes records (DESIGN §5).
//! It does not parse conversations, keep logs or talk to clients directly:
//! those are the daemons' and sj-c2s's jobs.

mod archive;
mod caps;
mod queries;
mod rooms;
mod route;
mod router;
mod shared;
mod sm;
mod upstream;

use sj::account::{Account, Dir};
use sj::exit::{Fatal, OK};
use sj::jid::Jid;
use sj::state::Word;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: sj-proxy [-v] [-t] [-d DIR] [-r RESOURCE] [-p PASSWORD_FILE] [-n FD] [-k SECS] JID";

struct Args {
    verbose: bool,
    tls: bool,
    dir: Option<PathBuf>,
    resource: Option<String>,
    password_file: Option<PathBuf>,
    notify_fd: Option<i32>,
    keepalive: u64,
    jid: String,
}

fn parse_args() -> Result<Args, Fatal> {
    use lexopt::prelude::*;
    let usage = |e: lexopt::Error| Fatal::permanent(format!("{e}\n{USAGE}"));
    let mut p = lexopt::Parser::from_env();
    let mut a = Args {
        verbose: false,
        tls: false,
        dir: std::env::var_os("SJ_DIR").map(PathBuf::from),
        resource: std::env::var("SJ_RESOURCE").ok(),
        password_file: std::env::var_os("SJ_PASSWORD_FILE").map(PathBuf::from),
        notify_fd: None,
        keepalive: 90,
        jid: String::new(),
    };
    let mut jid = None;
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('v') => a.verbose = true,
            Short('t') => a.tls = true,
            Short('d') => a.dir = Some(p.value().map_err(usage)?.into()),
            Short('r') => a.resource = Some(p.value().map_err(usage)?.string().map_err(usage)?),
            Short('p') => a.password_file = Some(p.value().map_err(usage)?.into()),
            Short('n') => a.notify_fd = Some(p.value().map_err(usage)?.parse().map_err(usage)?),
            Short('k') => a.keepalive = p.value().map_err(usage)?.parse().map_err(usage)?,
            Short('h') | Long("help") => return Err(Fatal::permanent(USAGE)),
            Value(v) if jid.is_none() => jid = Some(v.string().map_err(usage)?),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    a.jid = jid.ok_or_else(|| Fatal::permanent(format!("missing JID\n{USAGE}")))?;
    if a.keepalive == 0 {
        return Err(Fatal::permanent(
            "the keepalive interval must be at least 1 second",
        ));
    }
    Ok(a)
}

/// The password: first line of the password file, or a prompt on a terminal.
fn read_password(args: &Args) -> Result<String, Fatal> {
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Fatal::io(format!("read {}", path.display()), &e))?;
        warn_if_exposed(path);
        let line = text.split('\n').next().unwrap_or("");
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return Err(Fatal::permanent(format!(
                "unable to use {}: the first line is empty",
                path.display()
            )));
        }
        return Ok(line.to_string());
    }
    if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return prompt_password();
    }
    Err(Fatal::permanent(
        "no password: give -p PASSWORD_FILE or SJ_PASSWORD_FILE",
    ))
}

/// Like ssh with a private key: a password file others may read still
/// works (the supervisor's setup may be deliberate), but says so.
fn warn_if_exposed(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            sj::log::warn(&format!(
                "password file {} is open to group or others (mode {mode:04o}); chmod 600 it",
                path.display()
            ));
        }
    }
}

fn prompt_password() -> Result<String, Fatal> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let old = tcgetattr(&stdin).map_err(|e| Fatal::io("read the terminal settings", &e.into()))?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("password: ");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)
        .map_err(|e| Fatal::io("turn off echo", &e.into()))?;
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &old);
    eprintln!();
    r.map_err(|e| Fatal::io("read the password", &e))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn write_state(dir: &Dir, word: Word, jid: &Jid) {
    if let Err(e) = sj::state::write(dir, word, jid) {
        sj::log::warn(&format!(
            "unable to write {}: {}",
            dir.state().display(),
            sj::log::strerror(&e)
        ));
    }
}

fn run() -> Result<(), Fatal> {
    sj::log::init("sj-proxy");
    let args = parse_args()?;
    sj::log::set_verbose(args.verbose);
    let mut fds = vec![6, 7];
    fds.extend(args.notify_fd);
    let inherited = sj::ucspi::Inherited::claim(&fds, upstream::UCSPI_HINT)?;
    let handover = sj::ucspi::Handover::claim();
    let jid = Jid::parse(&args.jid)
        .map_err(|e| Fatal::permanent(format!("unable to use {}: {e}", args.jid)))?;
    let bare = jid.bare();
    let dir = match &args.dir {
        Some(d) => Dir::new(d),
        None => sj::account::home_root()
            .ok_or_else(|| Fatal::permanent("neither -d, SJ_DIR nor HOME is set"))?
            .account(&bare)
            .map_err(|e| Fatal::permanent(format!("unable to name a directory for {bare}: {e}")))?,
    };
    sj::fifo::make_dir(dir.path())
        .map_err(|e| Fatal::io(format!("create {}", dir.display()), &e))?;
    // One owner per DIR, for our whole life: a second sj-proxy (or a
    // supervisor's twin) stops here. Then the state is made truthful
    // before anything else can fail: whatever an earlier owner left
    // (`online` after a SIGKILL) is replaced.
    let _lock = sj::lock::acquire(&dir)?;
    write_state(&dir, Word::Connecting, &bare);
    let result = session(&args, &jid, &dir, inherited, handover);
    write_state(&dir, Word::Offline, &bare);
    result
}

/// Everything after the lock: the password, the upstream session, the
/// daemons and the routing, until the session ends.
fn session(
    args: &Args,
    jid: &Jid,
    dir: &Dir,
    mut inherited: sj::ucspi::Inherited,
    handover: Option<Result<sj::ucspi::Handover, Fatal>>,
) -> Result<(), Fatal> {
    let password = read_password(args)?;
    let resource = args
        .resource
        .clone()
        .or_else(|| jid.resource().map(str::to_string));

    // SIGTERM/SIGINT stop the session (DESIGN §7); SIGCHLD reaps and
    // restarts the daemons.
    sj::signal::install(sj::signal::STOP_SIGNALS, true)
        .map_err(|e| Fatal::io("set a signal handler", &e))?;

    let rfd = inherited.take(6, "reading from the server")?;
    let wfd = inherited.take(7, "writing to the server")?;
    sj::io::set_nonblocking(&rfd).map_err(|e| Fatal::io("set fd 6 non-blocking", &e))?;
    // The router never blocks on the server: fd 7 may be a pipe of its own
    // (socat, s6-tlsc), not just the socket fd 6 shares.
    sj::io::set_nonblocking(&wfd).map_err(|e| Fatal::io("set fd 7 non-blocking", &e))?;
    let tls = args.tls || sj::ucspi::encrypted();
    let mut up = upstream::Upstream::new(rfd, wfd, tls, handover);

    let creds = upstream::Credentials {
        jid: jid.clone(),
        password,
        resource,
    };
    let mut session = match up.negotiate(&creds, dir) {
        Ok(s) => s,
        Err(e) => {
            // Every way out closes the stream (a no-op where it is closed).
            up.close(
                &mut sj::io::WriteQueue::new(),
                b"</stream:stream>",
                sj::io::End::Close,
            );
            if e.code == OK {
                return Ok(());
            }
            return Err(e);
        }
    };
    let full = session.full.to_string();
    sj::log::info(&format!(
        "online as {full}{}",
        if session.carbons { " with carbons" } else { "" }
    ));
    let acct = Account::new(&session.full, dir.clone());
    let opts = router::Options {
        verbose: args.verbose,
        keepalive: Duration::from_secs(args.keepalive),
        keepalive_timeout: Duration::from_secs(args.keepalive.min(30)),
        resumed: session.resumed.is_some(),
    };
    let mut router = router::Router::new(up, acct, opts)?;
    router.start_daemons();
    match session.resumed {
        // The session goes on: DIR/state keeps the time it began.
        Some(since) => {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(since.max(0) as u64);
            let line = sj::state::line(Word::Online, &session.full, at);
            if let Err(e) = sj::fifo::write_atomic(&dir.state(), line.as_bytes()) {
                sj::log::warn(&format!(
                    "unable to write {}: {}",
                    dir.state().display(),
                    sj::log::strerror(&e)
                ));
            }
        }
        None => write_state(dir, Word::Online, &session.full),
    }
    if let Some(sm) = session.sm.take() {
        router.stream_management(sm);
    }
    if let Some(fd) = args.notify_fd {
        let owned = inherited.take(fd, "the readiness notification")?;
        let _ = sj::io::write_all(&owned, b"\n");
    }
    router.route_early(session.early);
    let result = router.run();
    router.shutdown_children();
    match result {
        Err(e) if e.code == OK => Ok(()),
        r => r,
    }
}

fn main() -> ExitCode {
    sj::exit::finish(run())
}
