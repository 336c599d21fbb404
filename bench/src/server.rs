//! Against a real server: a throwaway Prosody on 127.0.0.1 (configured like
//! tests/sjtest/prosody.py, minus TLS, rate limits and debug logging), a
//! contact sending chat messages, and a receiving client that is either
//! logged into Prosody directly or into sj-c2s (under tcpserver) in front
//! of sj-proxy (under tcpclient). The same load code drives both.

use crate::procfs;
use crate::spawn::{self, Proc};
use crate::xmpp::{self, Conn};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "localhost";
/// (user, password): the direct receiver, the proxied account, the contact.
pub const DIRECT: (&str, &str) = ("alice", "alice-pw");
pub const PROXIED: (&str, &str) = ("carol", "carol-pw");
pub const CONTACT: (&str, &str) = ("bob", "bob-pw");
/// The proxied account's local password (DIR/passwd, for sj-c2s).
pub const LOCAL_PW: &str = "carol-local-pw";

/// How the server is kept from being the bottleneck; quoted in BENCHMARKS.md.
const CONFIG: &str = r#"-- written by sj-bench: a throwaway server on 127.0.0.1
daemonize = false
-- The bench may run as root (CI containers); a throwaway server anyway.
run_as_root = true
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
certificates = "@DIR@/certs"
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { @PORT@ }
c2s_direct_tls_ports = { }
s2s_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }
-- No "tls" (plain TCP on loopback, SCRAM), no "limits" (no c2s rate
-- limiting), no offline storage, no debug log: the bench measures routing.
modules_enabled = { "roster"; "saslauth"; "disco"; "carbons"; "ping"; }
modules_disabled = { "s2s"; "register"; "admin_socket"; "limits"; "offline"; }
limits = { c2s = { rate = "1000mb/s"; burst = "10s" } }
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"
storage = "internal"
log = { { levels = { min = "error" }, to = "file", filename = "@DIR@/prosody.log" } }
VirtualHost "localhost"
"#;

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("unable to find a free port: {e}"))
}

/// Connect to 127.0.0.1:port, retrying until `limit` (the listener is
/// starting up).
pub fn connect(port: u16, limit: Duration) -> Result<TcpStream, String> {
    let end = Instant::now() + limit;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() >= end => {
                return Err(format!("unable to connect to 127.0.0.1:{port}: {e}"))
            }
            // Nothing signals "listening" to a process that did not bind it.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub struct Prosody {
    proc: Proc,
    pub port: u16,
    cfg: PathBuf,
    dir: PathBuf,
}

impl Prosody {
    pub fn start(dir: &Path) -> Result<Prosody, String> {
        Prosody::start_with(dir, false)
    }

    /// `mam`: with mod_mam archiving every user's messages (the archive
    /// rows' baseline).
    pub fn start_with(dir: &Path, mam: bool) -> Result<Prosody, String> {
        let port = free_port()?;
        for sub in ["data", "certs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("unable to create {}/{sub}: {e}", dir.display()))?;
        }
        let cfg = dir.join("prosody.cfg.lua");
        let mut text = CONFIG
            .replace("@DIR@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string());
        if mam {
            text = text.replace("\"ping\"; }", "\"ping\"; \"mam\"; }").replace(
                "VirtualHost",
                "archive_expires_after = \"never\"\ndefault_archive_policy = true\nVirtualHost",
            );
        }
        std::fs::write(&cfg, text)
            .map_err(|e| format!("unable to write {}: {e}", cfg.display()))?;
        let mut cmd = spawn::command(Path::new("prosody"), &dir.join("prosody.stderr"))?;
        cmd.arg("--config").arg(&cfg).arg("-F").current_dir(dir);
        cmd.stdout(Stdio::null());
        let proc = spawn::spawn("prosody", cmd, &[])?;
        drop(connect(port, Duration::from_secs(20))?);
        Ok(Prosody {
            proc,
            port,
            cfg,
            dir: dir.to_path_buf(),
        })
    }

    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(&self.cfg)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("unable to run prosodyctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "prosodyctl {} failed: {}{}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn register(&self, (user, pw): (&str, &str)) -> Result<(), String> {
        self.ctl(&["register", user, DOMAIN, pw]).map(|_| ())
    }

    /// "Prosody 0.12.3", from `prosodyctl about`.
    pub fn version(&self) -> String {
        self.ctl(&["about"])
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "Prosody (version unknown)".into())
    }

    pub fn login(
        &self,
        (user, pw): (&str, &str),
        resource: &str,
    ) -> Result<Conn<TcpStream>, String> {
        let s = connect(self.port, Duration::from_secs(5))?;
        xmpp::login(s, DOMAIN, user, pw, resource)
            .map(|(c, _)| c)
            .map_err(|e| format!("{user}@{DOMAIN} on Prosody: {e}"))
    }

    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }
}

/// sj-proxy for the proxied account, and sj-c2s under tcpserver in front.
pub struct Proxied {
    proxy: Proc,
    tcpserver: Proc,
    pub c2s_port: u16,
    pub log: PathBuf,
}

impl Proxied {
    pub fn start(bin: &Path, work: &Path, server: &Prosody) -> Result<Proxied, String> {
        let dir = work.join("carol");
        sj::fifo::make_dir(&dir).map_err(|e| format!("unable to create {}: {e}", dir.display()))?;
        let pwfile = work.join("carol.password");
        spawn::write_password(&pwfile, PROXIED.1)?;
        let log = work.join("proxy.stderr");
        // The local password, the way a user sets it.
        let mut pw = Command::new(bin.join("sj-passwd"))
            .arg("-d")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("unable to run sj-passwd: {e}"))?;
        if let Some(mut i) = pw.stdin.take() {
            std::io::Write::write_all(&mut i, format!("{LOCAL_PW}\n").as_bytes())
                .map_err(|e| format!("unable to write to sj-passwd: {e}"))?;
        }
        if !pw.wait().is_ok_and(|s| s.success()) {
            return Err("sj-passwd failed".into());
        }
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("unable to make a pipe: {e}"))?;
        let mut cmd = spawn::command(Path::new("tcpclient"), &log)?;
        cmd.args(["-RHl0", "127.0.0.1", &server.port.to_string()])
            .arg(bin.join("sj-proxy"))
            .arg("-d")
            .arg(&dir)
            .arg("-p")
            .arg(&pwfile)
            .args(["-n", "9", &format!("{}@{DOMAIN}/proxy", PROXIED.0)])
            .stdout(Stdio::null());
        let proxy = spawn::spawn("sj-proxy", cmd, &[(&ready_w, 9)])?;
        drop(ready_w);
        spawn::wait_ready(&ready_r, Duration::from_secs(20), "sj-proxy")?;
        let c2s_port = free_port()?;
        let mut cmd = spawn::command(Path::new("tcpserver"), &log)?;
        // -c: room for the 64 clients of the memory run.
        cmd.args(["-RHl0", "-c", "100", "127.0.0.1", &c2s_port.to_string()])
            .arg(bin.join("sj-c2s"))
            .arg("-d")
            .arg(&dir)
            .stdout(Stdio::null());
        let tcpserver = spawn::spawn("tcpserver", cmd, &[])?;
        let me = Proxied {
            proxy,
            tcpserver,
            c2s_port,
            log,
        };
        // A probe that opens no stream: sj-c2s ends quietly.
        drop(connect(c2s_port, Duration::from_secs(10))?);
        Ok(me)
    }

    pub fn login(&self, resource: &str) -> Result<Conn<TcpStream>, String> {
        let s = connect(self.c2s_port, Duration::from_secs(5))?;
        xmpp::login(s, DOMAIN, PROXIED.0, LOCAL_PW, resource)
            .map(|(c, _)| c)
            .map_err(|e| format!("{}@{DOMAIN} through sj-c2s: {e}", PROXIED.0))
    }

    /// Memory of sj-proxy, its daemons, and every sj-c2s.
    pub fn memory(&self) -> Vec<procfs::Mem> {
        let mut v = crate::pipeline::memory(&self.proxy);
        v.extend(procfs::children_mem(self.tcpserver.pid()));
        v
    }

    pub fn stop(&mut self) {
        self.tcpserver.stop(Duration::from_secs(5));
        self.proxy.stop(Duration::from_secs(10));
    }
}

fn chat(to: &str, id: &str) -> Vec<u8> {
    format!("<message to='{to}@{DOMAIN}' type='chat' id='{id}'><body>bench message {id}</body></message>")
        .into_bytes()
}

/// Memory of the smallest process there is, `sleep`: the floor every
/// dynamically linked program pays (ld.so, libc) on this machine.
pub fn floor() -> Result<procfs::Mem, String> {
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null()).stdout(Stdio::null());
    let mut p = spawn::spawn("sleep", cmd, &[])?;
    let end = Instant::now() + Duration::from_secs(5);
    // Sleeping in nanosleep means its start-up is over.
    while procfs::state(p.pid()) != Some('S') || procfs::comm(p.pid()).as_deref() != Some("sleep") {
        if Instant::now() >= end {
            return Err("sleep did not start".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let m =
        procfs::mem(p.pid(), "sleep").ok_or_else(|| "unable to read sleep's memory".to_string());
    p.stop(Duration::from_secs(1));
    m
}

/// The id of a chat message record, if it is one.
fn message_id(rec: &[u8]) -> Option<String> {
    let top = sj::xml::Top::parse(rec).filter(|t| t.name() == "message")?;
    top.attr("id").map(|id| id.into_owned())
}

/// One receiving path; the contact's connection is passed to each call.
pub struct Route<'a> {
    pub rx: &'a mut Conn<TcpStream>,
    /// The receiving account's localpart.
    pub to: &'a str,
    pub tag: &'a str,
}

impl Route<'_> {
    /// Send until one message arrives: the receiver's presence has reached
    /// the server (the messages before it may bounce).
    pub fn warm(&mut self, sender: &mut Conn<TcpStream>) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(20);
        let mut i = 0;
        loop {
            i += 1;
            let id = format!("{}w{i}", self.tag);
            sender.send(&chat(self.to, &id))?;
            let step = (Instant::now() + Duration::from_millis(300)).min(end);
            loop {
                match self.rx.record(step) {
                    Ok(r) if message_id(&r).as_deref() == Some(id.as_str()) => return Ok(()),
                    Ok(_) => {}
                    Err(_) if Instant::now() < end => break,
                    Err(e) => return Err(format!("no message reached {}: {e}", self.to)),
                }
            }
        }
    }

    /// One message alone in flight: its latency in µs.
    pub fn one(&mut self, sender: &mut Conn<TcpStream>, id: &str) -> Result<f64, String> {
        let id = format!("{}{id}", self.tag);
        let t = Instant::now();
        sender.send(&chat(self.to, &id))?;
        let end = t + Duration::from_secs(10);
        loop {
            let r = self.rx.record(end)?;
            if message_id(&r).as_deref() == Some(id.as_str()) {
                return Ok(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }

    /// `n` messages with at most `window` in flight; seconds to the last.
    pub fn flood(
        &mut self,
        sender: &mut Conn<TcpStream>,
        n: usize,
        window: usize,
        round: usize,
    ) -> Result<f64, String> {
        let prefix = format!("{}r{round}-", self.tag);
        let (mut sent, mut got) = (0, 0);
        let t = Instant::now();
        let end = t + Duration::from_secs(60);
        let mut batch = Vec::new();
        while got < n {
            batch.clear();
            while sent < n && sent - got < window {
                batch.extend_from_slice(&chat(self.to, &format!("{prefix}{sent}")));
                sent += 1;
            }
            if !batch.is_empty() {
                sender.send(&batch)?;
            }
            let r = self.rx.record(end)?;
            if message_id(&r).is_some_and(|id| id.starts_with(&prefix)) {
                got += 1;
            }
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// `n` messages to the proxied account, every one to reach every client;
/// seconds until the last client has the last.
pub fn fan_out(
    sender: &mut Conn<TcpStream>,
    clients: &mut [Conn<TcpStream>],
    n: usize,
) -> Result<f64, String> {
    let prefix = "fan-";
    let mut got = vec![0usize; clients.len()];
    let t = Instant::now();
    let end = t + Duration::from_secs(60);
    let mut batch = Vec::new();
    let mut sent = 0;
    // Keep a window so the contact's own socket never stalls the server.
    let window = 256;
    while got.iter().any(|&g| g < n) {
        let slowest = got.iter().copied().min().unwrap_or(0);
        batch.clear();
        while sent < n && sent - slowest < window {
            batch.extend_from_slice(&chat(PROXIED.0, &format!("{prefix}{sent}")));
            sent += 1;
        }
        if !batch.is_empty() {
            sender.send(&batch)?;
        }
        if Instant::now() >= end {
            return Err(format!("fan-out to {} clients timed out", clients.len()));
        }
        let mut pfds: Vec<PollFd> = clients
            .iter()
            .map(|c| PollFd::new(c.fd(), PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut pfds, PollTimeout::from(100u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("unable to poll the clients: {e}")),
        }
        let ready: Vec<usize> = pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| i)
            .collect();
        drop(pfds);
        for i in ready {
            clients[i].fill()?;
            while let Some(ev) = clients[i].pop()? {
                if let sj::framer::Event::Record(r) = ev {
                    if message_id(&r).is_some_and(|id| id.starts_with(prefix)) {
                        got[i] += 1;
                    }
                }
            }
        }
    }
    Ok(t.elapsed().as_secs_f64())
}
