"""The commands documented in examples/README.md and the Makefile's install
targets, each run for real: make install/uninstall, cargo install --path,
sj-proxy under the TLS wrappers, the shell scripts in examples/sh/ against
Prosody + sj-proxy + a slixmpp contact, and the systemd units."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import pytest

from sjtest.prosody import REPO, make_workdir
from sjtest.proxy import JC, Proxy, RawClient, bin_dir, local, sj_bin

EXAMPLES = os.path.join(REPO, "examples")
SH = os.path.join(EXAMPLES, "sh")
PROGS = ["sj-proxy", "sj-c2s", "sj-passwd", "messaged", "presenced", "presence", "iqd",
         "roster", "mirrord"]


def workspace_version():
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
    return m.group(1)


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def built(name):
    """Whether a real (not placeholder) program `name` is on main yet: the
    placeholder crates are `fn main() {}` with a "(being written)" doc line."""
    crate = {"sj-c2s": "sj-c2s/src/main.rs", "messaged": "messaged/src/main.rs",
             "iqd": "iqd/src/main.rs"}.get(name)
    if crate:
        with open(os.path.join(REPO, crate)) as f:
            if "(being written)" in f.read(200):
                return False
    return os.access(os.path.join(bin_dir(), name), os.X_OK)


def body_is(body):
    def pred(el):
        b = el.find(JC + "body")
        return local(el.tag) == "message" and b is not None and b.text == body
    return pred


def stop(proc, sig=signal.SIGTERM, timeout=10):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- install ---------------------------------------------------------------

@pytest.mark.timeout(900)
def test_make_install(tmp_path):
    dest = tmp_path / "dest"
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir())
    r = subprocess.run(["make", "-C", REPO, "install", f"DESTDIR={dest}", "PREFIX=/usr"],
                       env=env, capture_output=True, text=True, timeout=850)
    assert r.returncode == 0, r.stdout + r.stderr
    version = workspace_version()
    bindir = dest / "usr" / "bin"
    release = os.path.join(target_dir(), "release")
    expect = [p for p in PROGS if os.access(os.path.join(release, p), os.X_OK)]
    assert "sj-proxy" in expect and "mirrord" in expect and "presence" in expect
    for p in expect:
        assert os.access(bindir / p, os.X_OK), p
    pages = [f for f in os.listdir(os.path.join(REPO, "man")) if re.search(r"\.[178]$", f)]
    assert "sj-proxy.8" in pages
    for page in pages:
        inst = dest / "usr" / "share" / "man" / ("man" + page[-1]) / page
        text = inst.read_text()
        assert "@VERSION@" not in text, page
        with open(os.path.join(REPO, "man", page)) as f:
            if "@VERSION@" in f.read():
                assert re.search(r"^\.Os .*" + re.escape(version) + "$", text, re.M), page
    # The installed program runs.
    r = subprocess.run([str(bindir / "sj-proxy")], capture_output=True, text=True, timeout=10)
    assert r.returncode == 100, (r.returncode, r.stderr)  # usage: no JID
    # MANPREFIX is honoured.
    r = subprocess.run(["make", "-C", REPO, "install", f"DESTDIR={dest}", "PREFIX=/usr",
                        "MANPREFIX=/usr/man"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dest / "usr" / "man" / "man8" / "sj-proxy.8").exists()
    subprocess.run(["make", "-C", REPO, "uninstall", f"DESTDIR={dest}", "PREFIX=/usr",
                    "MANPREFIX=/usr/man"], check=True, capture_output=True, timeout=60)
    r = subprocess.run(["make", "-C", REPO, "uninstall", f"DESTDIR={dest}", "PREFIX=/usr"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    left = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs]
    assert left == [], left


@pytest.mark.timeout(900)
@pytest.mark.parametrize("crate", ["sj-proxy", "sj-c2s", "messaged", "presenced", "iqd",
                                   "mirrord"])
def test_cargo_install_path(tmp_path, crate):
    root = tmp_path / "root"
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir())
    r = subprocess.run(["cargo", "install", "--locked", "--path", os.path.join(REPO, crate),
                        "--root", str(root)], env=env, capture_output=True, text=True,
                       timeout=850)
    assert r.returncode == 0, r.stderr[-3000:]
    bins = os.listdir(root / "bin")
    assert crate in bins, bins
    if crate == "sj-c2s":
        assert "sj-passwd" in bins, bins
    if crate == "presenced":
        assert "presence" in bins, bins


def test_man_pages_lint_clean():
    pages = [os.path.join(REPO, "man", f) for f in os.listdir(os.path.join(REPO, "man"))]
    r = subprocess.run(["mandoc", "-Tlint", "-Wwarning"] + pages, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# -- TLS wrappers (examples/README.md) --------------------------------------

def sh_run(cmd, env, workdir):
    """Start `cmd` (a command line as documented, with $VARIABLES) under sh."""
    out = open(os.path.join(workdir, "wrapper.log"), "ab")
    proc = subprocess.Popen(["sh", "-c", cmd], env=env, stdin=subprocess.DEVNULL, cwd=REPO,
                            stdout=out, stderr=out, start_new_session=True)
    proc.log_path = out.name
    out.close()
    return proc


def wait_online(proc, d, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(os.path.join(d, "state")) as f:
                st = f.read()
            if st.split() and st.split()[0] == "online":
                return st.split()[1]
        except FileNotFoundError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(proc.log_path, errors="replace") as f:
                raise AssertionError(f"not online (exit {proc.poll()}):\n{f.read()[-6000:]}")
        time.sleep(0.05)


def account_env(prosody, **more):
    sj_bin("sj-proxy")
    work = make_workdir("ex-")
    d = os.path.join(work, "alice")
    pw = os.path.join(work, "password")
    with open(pw, "w") as f:
        f.write("alice-pw\n")
    os.chmod(pw, 0o600)
    env = dict(os.environ, PATH=bin_dir() + os.pathsep + os.environ["PATH"], DIR=d,
               PWFILE=pw, HOST=prosody.addr, JID="alice@localhost",
               CAFILE=os.path.join(prosody.dir, "certs", "localhost.crt"), **more)
    return work, d, env


# The commands exactly as examples/README.md gives them.
SOCAT_DIRECT_TLS = ("socat OPENSSL:$HOST:$PORT,verify=1,cafile=$CAFILE,commonname=localhost "
                    "EXEC:\"sj-proxy -t -d $DIR -p $PWFILE $JID\",fdin=6,fdout=7")
UCSPI_TLS = "python3 tests/ucspi_tlsc.py $HOST $PORT sj-proxy -v -d $DIR -p $PWFILE $JID"


def test_socat_direct_tls_verified(prosody, contact):
    work, d, env = account_env(prosody, PORT=str(prosody.tls_port))
    proc = sh_run(SOCAT_DIRECT_TLS, env, work)
    try:
        bound = wait_online(proc, d)
        c = RawClient(d, "a")
        bob = contact("bob")
        bob.send_message(bound, "direct tls, verified")
        c.wait_record(body_is("direct tls, verified"), timeout=15)
        c.close()
    finally:
        stop(proc)


def test_socat_direct_tls_wrong_name_never_online(prosody):
    work, d, env = account_env(prosody, PORT=str(prosody.tls_port))
    proc = sh_run(SOCAT_DIRECT_TLS.replace("commonname=localhost", "commonname=wrong.example"),
                  env, work)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop(proc)
    assert not os.path.exists(os.path.join(d, "state")) or \
        open(os.path.join(d, "state")).read().split()[0] != "online"


def test_prosody_offers_starttls(prosody):
    import socket
    with socket.create_connection((prosody.addr, prosody.port), timeout=5) as s:
        s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                  b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        data = b""
        deadline = time.monotonic() + 5
        while b"</stream:features>" not in data and time.monotonic() < deadline:
            data += s.recv(4096)
    assert b"urn:ietf:params:xml:ns:xmpp-tls" in data, data


def test_ucspi_tls_starttls(prosody, contact):
    work, d, env = account_env(prosody, PORT=str(prosody.port))
    proc = sh_run(UCSPI_TLS, env, work)
    try:
        bound = wait_online(proc, d)
        with open(proc.log_path, errors="replace") as f:
            trace = f.read()
        assert "<starttls" in trace, trace[-4000:]
        assert "<proceed" in trace, trace[-4000:]
        c = RawClient(d, "a")
        bob = contact("bob")
        bob.send_message(bound, "after starttls")
        c.wait_record(body_is("after starttls"), timeout=15)
        c.close()
    finally:
        stop(proc)


# -- shell examples (examples/sh) --------------------------------------------

def script(name):
    return os.path.join(SH, name)


class Lines:
    """A process's standard output, read line by line with deadlines."""

    def __init__(self, proc):
        self.proc = proc
        os.set_blocking(proc.stdout.fileno(), False)
        self.buf = b""
        self.lines = []

    def poll(self):
        """Read what is there without blocking; returns the lines so far."""
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            chunk = b""
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [d.decode() for d in done]
        return self.lines

    def wait(self, pred, timeout=10):
        import select
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.lines):
                if pred(self.lines[i]):
                    return self.lines[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching line; got {self.lines!r}")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"exited {self.proc.returncode}; got {self.lines!r}")
                self.buf += chunk
                *done, self.buf = self.buf.split(b"\n")
                self.lines += [d.decode() for d in done]


def until(check, act, timeout=15, every=1.0):
    """Repeat act() every `every` seconds until check() is true (bounded):
    for the moment between a raw client appearing and mirrord serving it."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        act(n)
        n += 1
        end = min(deadline, time.monotonic() + every)
        while time.monotonic() < end:
            if check():
                return
            time.sleep(0.05)
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")


def start_script(argv, **kw):
    return subprocess.Popen(["sh"] + argv, stdin=subprocess.DEVNULL, start_new_session=True,
                            **kw)


def test_mirror_log(proxy, contact, tmp_path):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    log = tmp_path / "mirror.log"
    client = os.path.join(p.dir, "clients", "mlog")
    proc = start_script([script("mirror-log"), "-n", "mlog", p.dir, str(log)],
                        stderr=subprocess.PIPE)
    try:
        def logged(text):
            return lambda: log.exists() and text in log.read_text()
        until(logged("warm-up"), lambda n: bob.send_message(bound, f"warm-up {n}"))
        assert stat_mode(client) == 0o700
        bob.send_message(bound, "to the <log> & beyond\nline 2")
        until(logged("to the &lt;log&gt; &amp; beyond&#10;line 2"), lambda n: None)
        from sjtest.proxy import parse_record
        for line in log.read_text().splitlines():
            parse_record(line)  # every line is one record
        # A second instance with the same name refuses, leaving the first alone.
        r = subprocess.run(["sh", script("mirror-log"), "-n", "mlog", p.dir, str(log)],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 111 and "exists" in r.stderr, r
        assert os.path.isdir(client)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()
    assert not os.path.exists(client), "client directory left behind"
    # No reader left behind (the cat): nothing holds the log open.
    holders = subprocess.run(["sh", "-c", f"ls -l /proc/[0-9]*/fd 2>/dev/null | grep -F '{log}'"],
                             capture_output=True, text=True).stdout
    assert holders == "", holders


def stat_mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("with_notify_send", [False, True])
def test_notify_mention(proxy, contact, tmp_path, with_notify_send):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    calls = tmp_path / "notify-send.calls"
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    if with_notify_send:
        ns = fakebin / "notify-send"
        ns.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> '{calls}'\necho >> '{calls}'\n")
        ns.chmod(0o755)
        env["DISPLAY"] = ":99"
    env["PATH"] = f"{fakebin}:/usr/bin:/bin"
    proc = start_script([script("notify-mention"), p.dir, "Alice"], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Lines(proc)

    def seen(text):
        if with_notify_send:
            return lambda: calls.exists() and text in calls.read_text()
        return lambda: any(text in ln for ln in out.poll())
    try:
        until(seen("warm-up"), lambda n: bob.send_message(bound, f"alice warm-up {n}"))
        bob.send_message(bound, "nothing to see")
        bob.send_message(bound, "hey ALICE, <look> & see")
        until(seen("hey ALICE, <look> & see"), lambda n: None)
        if with_notify_send:
            text = calls.read_text()
            assert "--|XMPP: bob@localhost|hey ALICE, <look> & see|" in text, text
            assert "nothing to see" not in text
        else:
            assert "bob@localhost: hey ALICE, <look> & see" in out.lines, out.lines
            assert not [ln for ln in out.lines if "nothing to see" in ln]
        # The account's own messages (sent copies) are not mentions.
        c = p.raw_client("me")
        c.send("<message to='bob@localhost' type='chat'><body>alice says hi</body></message>")
        bob.wait_message(lambda m: m["body"] == "alice says hi")
        bob.send_message(bound, "alice marker")
        until(seen("alice marker"), lambda n: None)
        everything = calls.read_text() if with_notify_send else "\n".join(out.lines)
        assert "alice says hi" not in everything
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()
    assert not os.path.exists(os.path.join(p.dir, "clients", "notify-mention"))


def own_contact(prosody, user, resource):
    """A slixmpp contact this test disconnects itself (not the fixture's)."""
    from sjtest.contact import Contact
    return Contact(prosody.jid(user), f"{user}-pw", host=prosody.addr, port=prosody.port,
                   resource=resource).connect()


def subscribe_both_ways(prosody, users):
    """alice (a direct slixmpp session) and each user subscribe to each other."""
    alice = own_contact(prosody, "alice", "direct")
    for u in users:
        c = own_contact(prosody, u, "sub")
        alice.subscribe(f"{u}@localhost")
        alice.wait_presence(lambda s, u=u: str(s["from"].bare) == f"{u}@localhost"
                            and s["type"] == "subscribed", timeout=10)
        c.disconnect()
    alice.disconnect()


def test_statusline(proxy, contact, own_prosody):
    # A Prosody of its own: the subscriptions made here would change what
    # other tests on the shared server see.
    prosody = own_prosody
    subscribe_both_ways(prosody, ["bob", "carol"])
    p = proxy("alice", server=prosody)
    p.online()
    assert subprocess.run(["sh", script("statusline"), p.dir], capture_output=True,
                          text=True, timeout=10).stdout.startswith("online alice@localhost")
    bob = contact("bob", server=prosody, resource="status")
    carol = own_contact(prosody, "carol", "status")
    bobp = os.path.join(p.dir, "bob@localhost", "presence")
    carolp = os.path.join(p.dir, "carol@localhost", "presence")

    def content(f):
        try:
            with open(f) as fh:
                return fh.read()
        except FileNotFoundError:
            return ""
    bob.send_presence(pshow="away", pstatus="lunch")
    until(lambda: content(bobp).startswith("away"), lambda n: None)
    until(lambda: content(carolp).startswith("online"), lambda n: None)
    carol.disconnect()
    until(lambda: content(carolp).startswith("offline"), lambda n: None)
    r = subprocess.run(["sh", script("statusline"), p.dir], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    line = r.stdout
    assert line.endswith("\n") and line.count("\n") == 1, line
    assert line.startswith("online alice@localhost · "), line
    assert " · bob: away" in line and " · carol: offline" in line, line
    # DIR/iq/<id> files are iq results, not contacts, even with id "presence".
    os.makedirs(os.path.join(p.dir, "iq"), exist_ok=True)
    with open(os.path.join(p.dir, "iq", "presence"), "w") as f:
        f.write("<iq type='result' id='presence'/>\n")
    assert subprocess.run(["sh", script("statusline"), p.dir], capture_output=True,
                          text=True, timeout=10).stdout == line
    # SJ_DIR works as the default, and no state at all says offline.
    env = dict(os.environ, SJ_DIR=p.dir)
    assert subprocess.run(["sh", script("statusline")], env=env, capture_output=True,
                          text=True, timeout=10).stdout == line
    empty = make_workdir("status-")
    assert subprocess.run(["sh", script("statusline"), empty], capture_output=True,
                          text=True, timeout=10).stdout == "offline\n"


@pytest.mark.skipif(not built("messaged"),
                    reason="messaged (DIR/<contact>/{in,out}) is not on this branch yet")
def test_echobot(proxy, contact):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    # A line already in a log when echobot starts is history, not a request.
    bob.send_message(bound, "old line")
    out = os.path.join(p.dir, "bob@localhost", "out")
    until(lambda: os.path.exists(out) and "old line" in open(out).read(), lambda n: None)
    proc = start_script([script("echobot"), p.dir], stderr=subprocess.PIPE)
    try:
        # echobot starts at the end of the logs as it finds them: send until
        # its first look at DIR is over and an echo comes back.
        warm = bob.mark()
        until(lambda: bob.messages(lambda m: m["body"].startswith("echo: warm-up"), start=warm),
              lambda n: bob.send_message(bound, f"warm-up {n}"), every=2.0)
        time.sleep(2.5)  # the echoes of the other warm-ups
        start = bob.mark()
        bob.send_message(bound, "hello bot")
        m = bob.wait_message(lambda m: m["body"] == "echo: hello bot", timeout=15, start=start)
        assert str(m["from"]).startswith("alice@localhost")
        bob.send_message(bound, "second <one> & more")
        bob.wait_message(lambda m: m["body"] == "echo: second <one> & more", timeout=15,
                         start=start)
        # It never answers itself: exactly one echo per message.
        time.sleep(2.5)
        echoes = bob.messages(lambda m: m["body"].startswith("echo: "), start=start)
        assert len(echoes) == 2, [m["body"] for m in echoes]
        assert not bob.messages(lambda m: m["body"] == "echo: old line")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()


# -- systemd units (examples/systemd) ---------------------------------------

SYSTEMD = os.path.join(EXAMPLES, "systemd")


def unit_copy(tmp_path):
    """The units with /usr/local/bin pointing at the binaries under test."""
    d = tmp_path / "units"
    d.mkdir()
    for f in os.listdir(SYSTEMD):
        with open(os.path.join(SYSTEMD, f)) as fh:
            text = fh.read().replace("/usr/local/bin/", bin_dir() + "/")
        (d / f).write_text(text)
    return d


def exec_start(path):
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return lines[0][len("ExecStart="):]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    d = unit_copy(tmp_path)
    inst = subprocess.run(["systemd-escape", "--template=sj-proxy@.service",
                           "alice@example.org"], capture_output=True, text=True,
                          timeout=10).stdout.strip()
    assert inst == "sj-proxy@alice\\x40example.org.service", inst
    names = [inst, "sj-c2s.socket"]
    if built("sj-c2s"):
        names.append("sj-c2s@1.service")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no"] + ["./" + n for n in names],
                       cwd=d, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    # A unit user that does not exist on the test machine is fine.
    problems = [ln for ln in out.splitlines() if ln.strip() and "sj" in ln
                and "User" not in ln and "user" not in ln]
    assert r.returncode == 0 and not problems, out


def test_systemd_proxy_exec_start_runs(prosody, contact, tmp_path):
    """sj-proxy@.service's ExecStart= line, with the specifiers and the
    EnvironmentFile= variables filled in as systemd would, reaches online."""
    sj_bin("sj-proxy")
    d = unit_copy(tmp_path)
    cmd = exec_start(d / "sj-proxy@.service")
    root = tmp_path / "lib"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "password").write_text("alice-pw\n")
    acct = root / "alice@localhost"
    acct.mkdir(parents=True, mode=0o700)
    cmd = (cmd.replace("%I", "alice@localhost").replace("%d", str(creds))
           .replace("/var/lib/sj-proxy", str(root))
           .replace("${HOST}", prosody.addr).replace("${PORT}", str(prosody.port)))
    assert "%" not in cmd and "$" not in cmd, cmd
    out = open(tmp_path / "log", "wb")
    proc = subprocess.Popen(shlex.split(cmd), stdin=subprocess.DEVNULL, stdout=out,
                            stderr=out, start_new_session=True)
    proc.log_path = out.name
    out.close()
    try:
        bound = wait_online(proc, str(acct))
        c = RawClient(str(acct), "a")
        contact("bob").send_message(bound, "from the unit")
        c.wait_record(body_is("from the unit"), timeout=15)
        c.close()
    finally:
        stop(proc)


@pytest.mark.skipif(not built("sj-c2s"), reason="sj-c2s is not on this branch yet")
def test_c2s_socat_openssl_listen(proxy, tmp_path, prosody):
    """The documented direct-TLS listener: socat OPENSSL-LISTEN ... sj-c2s -t."""
    import socket
    import ssl
    from sjtest.prosody import free_port

    p = proxy("alice")
    p.online()
    r = subprocess.run([sj_bin("sj-passwd"), "-d", p.dir], input="local-pw\n",
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    pem = tmp_path / "c2s.pem"
    certs = os.path.join(prosody.dir, "certs")
    pem.write_text(open(os.path.join(certs, "localhost.crt")).read()
                   + open(os.path.join(certs, "localhost.key")).read())
    port = free_port()
    env = dict(os.environ, PATH=bin_dir() + os.pathsep + os.environ["PATH"], PORT=str(port),
               PEM=str(pem), DIR=p.dir)
    proc = sh_run(SOCAT_C2S_TLS, env, str(tmp_path))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "listener not up"
                time.sleep(0.1)
        ctx = ssl.create_default_context(cafile=os.path.join(certs, "localhost.crt"))
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.settimeout(10)
            s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                      b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
            data = b""
            while b"</stream:features>" not in data:
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
            assert b"<mechanism>PLAIN</mechanism>" in data, data
            import base64
            s.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                      + base64.b64encode(b"\0alice\0local-pw") + b"</auth>")
            data = b""
            while b"success" not in data and b"failure" not in data:
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
            assert b"<success" in data, data
    finally:
        stop(proc)


SOCAT_C2S_TLS = ("socat OPENSSL-LISTEN:$PORT,bind=127.0.0.1,fork,reuseaddr,cert=$PEM,verify=0 "
                 "EXEC:\"sj-c2s -t -d $DIR\"")
