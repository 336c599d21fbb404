//! sj-c2s: the server side of one client-to-server XMPP stream (DESIGN §6).
//!
//! Started per connection by a UCSPI server (tcpserver, s6-tcpserver,
//! s6-tlsd, socat): reads the client on fd 0, writes it on fd 1. Negotiates
//! the stream (STARTTLS through UCSPI-TLS, SASL, bind), registers
//! `DIR/clients/NAME/{in,out}`, then translates between the client's stream
//! and the records (translate.rs). Negotiation is a state machine without
//! descriptors (negotiate.rs); session.rs has the one poll loop.

mod control;
mod csi;
mod mam;
mod negotiate;
mod session;
mod sm;
mod translate;

use sj::exit::Fatal;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: sj-c2s [-v] [-t] [-a SECS] [-w SECS] [-d DIR | -R ROOT]";

/// Time from connect to a successful authentication, unless `-a` says.
const AUTH_TIMEOUT: u64 = 10;
/// How long a client's XEP-0198 session waits to be resumed, unless `-w`
/// says.
const RESUME_WINDOW: u64 = 300;

/// Where the accounts are.
#[derive(Debug, Clone)]
pub enum Where {
    /// One account directory.
    Dir(sj::account::Dir),
    /// A directory holding one account directory per bare JID.
    Root(sj::account::Root),
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub verbose: bool,
    /// The wrapper already encrypted the connection (direct TLS).
    pub tls: bool,
    pub place: Where,
    /// Time allowed from connect to a successful authentication.
    pub auth_timeout: std::time::Duration,
    /// How long a session with stream management outlives its connection.
    pub resume_window: std::time::Duration,
}

fn parse_args() -> Result<Opts, Fatal> {
    use lexopt::prelude::*;
    let mut verbose = false;
    let mut tls = false;
    let mut dir: Option<PathBuf> = None;
    let mut root: Option<PathBuf> = None;
    let mut auth_timeout = AUTH_TIMEOUT;
    let mut resume_window = RESUME_WINDOW;
    let mut p = lexopt::Parser::from_env();
    let usage = |e: String| Fatal::permanent(format!("{e}\n{USAGE}"));
    while let Some(arg) = p.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Short('v') | Long("verbose") => verbose = true,
            Short('t') | Long("tls") => tls = true,
            Short('d') | Long("dir") => {
                dir = Some(PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?))
            }
            Short('a') | Long("auth-timeout") => {
                auth_timeout = p
                    .value()
                    .map_err(|e| usage(e.to_string()))?
                    .parse()
                    .map_err(|e: lexopt::Error| usage(e.to_string()))?;
                if auth_timeout == 0 {
                    return Err(usage("-a takes at least 1 second".into()));
                }
            }
            Short('w') | Long("resume-window") => {
                resume_window = p
                    .value()
                    .map_err(|e| usage(e.to_string()))?
                    .parse()
                    .map_err(|e: lexopt::Error| usage(e.to_string()))?;
                if resume_window == 0 {
                    return Err(usage("-w takes at least 1 second".into()));
                }
            }
            Short('R') | Long("root") => {
                root = Some(PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?))
            }
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let place = match (dir, root) {
        (Some(_), Some(_)) => return Err(usage("-d and -R exclude each other".into())),
        (Some(d), None) => Where::Dir(sj::account::Dir::new(d)),
        (None, Some(r)) => Where::Root(sj::account::Root::new(r)),
        (None, None) => match (std::env::var_os("SJ_DIR"), std::env::var_os("SJ_ROOT")) {
            (Some(d), _) if !d.is_empty() => Where::Dir(sj::account::Dir::new(d)),
            (_, Some(r)) if !r.is_empty() => Where::Root(sj::account::Root::new(r)),
            _ => match std::env::var_os("HOME") {
                Some(h) => Where::Root(sj::account::Root::in_home(h)),
                None => return Err(usage("no -d, -R, SJ_DIR, SJ_ROOT or HOME".into())),
            },
        },
    };
    Ok(Opts {
        verbose,
        tls,
        place,
        auth_timeout: std::time::Duration::from_secs(auth_timeout),
        resume_window: std::time::Duration::from_secs(resume_window),
    })
}

fn run() -> Result<(), Fatal> {
    let opts = parse_args()?;
    sj::log::set_verbose(opts.verbose);
    session::Session::new(opts)?.run()
}

fn main() -> ExitCode {
    sj::log::init("sj-c2s");
    sj::exit::finish(run())
}
