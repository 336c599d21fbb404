"""sj-c2s end to end: real Prosody upstream, real sj-proxy, sj-c2s under
tcpserver (plain TCP on loopback) and under socat OPENSSL-LISTEN (direct TLS),
slixmpp clients on the proxy and slixmpp contacts on Prosody.

Run: python3 -m pytest -s tests/test_c2s.py
Binaries: $SJ_BIN_DIR, else ${CARGO_TARGET_DIR:-target}/debug (built with
cargo if missing). Needs prosody, tcpserver, tcpclient, socat, openssl.

Uses the harness (tests/conftest.py: the session Prosody with alice, bob and
carol; sjtest.proxy.Proxy for sj-proxy); its own fixtures are module-scoped
and prefixed c2s_ because the clients are set up once for all the tests.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slixmpp = pytest.importorskip("slixmpp")
from slixmpp.xmlstream.handler import Callback  # noqa: E402
from slixmpp.xmlstream.matcher import MatchXPath  # noqa: E402
from sjtest.proxy import Proxy  # noqa: E402
from sjtest.proxy import bin_dir as proxy_bin_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BARE = "alice@localhost"
CONTROL = "sj-proxy@control.invalid"
WAIT = 20.0

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)

for tool in ("tcpserver", "tcpclient", "socat", "openssl"):
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed", allow_module_level=True)


def bin_dir():
    d = Path(proxy_bin_dir())
    if os.environ.get("SJ_BIN_DIR"):
        return d
    need = ["sj-proxy", "sj-c2s", "sj-passwd", "mirrord", "messaged", "presenced", "iqd"]
    if not all((d / n).exists() for n in need):
        subprocess.run(["cargo", "build", "-q", "--workspace"], cwd=REPO, check=True)
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=WAIT, what="condition"):
    """Poll `pred` until true; a bounded wait, never a fixed sleep."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port):
    def check():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return check


class Loop:
    """One asyncio loop in a thread for every slixmpp client."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout=WAIT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Client:
    """A slixmpp client; every stanza it receives is kept as XML text."""

    def __init__(self, loop, jid, password, port, tls=False, carbons=False, starttls=False):
        self.L = loop
        self.jid = jid
        self.password = password
        self.port = port
        self.tls = tls
        self.starttls = starttls
        self.carbons = carbons
        self.cond = threading.Condition()
        self.stanzas = []
        self.started = False
        self.failed = False
        self.L.call(self._make())

    async def _make(self):
        x = slixmpp.ClientXMPP(self.jid, self.password)
        x.register_plugin("xep_0030")
        x.register_plugin("xep_0280")
        x.register_plugin("xep_0199")
        x["feature_mechanisms"].unencrypted_scram = True
        x.enable_plaintext = not (self.tls or self.starttls)
        x.enable_starttls = self.starttls
        x.enable_direct_tls = self.tls
        if self.tls or self.starttls:
            x.ssl_context.check_hostname = False
            x.ssl_context.verify_mode = ssl.CERT_NONE
        for xp in ("{jabber:client}message", "{jabber:client}iq", "{jabber:client}presence"):
            x.register_handler(Callback("keep " + xp, MatchXPath(xp), self._keep))
        x.add_event_handler("session_start", self._start)
        x.add_event_handler("failed_auth", self._failed)
        x.add_event_handler("failed_all_auth", self._failed)
        self.x = x

    def _keep(self, st):
        with self.cond:
            self.stanzas.append(str(st))
            self.cond.notify_all()

    async def _start(self, _ev):
        if self.carbons:
            await self.x["xep_0280"].enable(timeout=WAIT)
        self.x.send_presence()
        with self.cond:
            self.started = True
            self.cond.notify_all()

    def _failed(self, _ev):
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def connect(self, expect_fail=False):
        async def go():
            self.x.connect("127.0.0.1", self.port)

        self.L.call(go())
        with self.cond:
            ok = self.cond.wait_for(lambda: self.started or self.failed, WAIT)
        assert ok, f"{self.jid}: no session and no failure"
        if not expect_fail:
            assert self.started and not self.failed, f"{self.jid}: authentication failed"
        return self

    def send(self, to, body):
        self.L.loop.call_soon_threadsafe(
            lambda: self.x.send_message(mto=to, mbody=body, mtype="chat")
        )

    def wait(self, pred, what="stanza", timeout=WAIT):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(s) for s in self.stanzas), timeout)
            assert ok, f"{self.jid}: timed out waiting for {what}; got {self.stanzas[-10:]}"
            return [s for s in self.stanzas if pred(s)]

    def count(self, pred):
        with self.cond:
            return sum(1 for s in self.stanzas if pred(s))

    def full(self):
        return str(self.x.boundjid)

    def close(self):
        async def go():
            self.x.disconnect()

        try:
            self.L.call(go(), timeout=5)
        except Exception:
            pass


def body_is(text):
    return lambda s: f"<body>{text}</body>" in s


@pytest.fixture(scope="module")
def c2s_env(prosody, tmp_path_factory):
    """sj-proxy for alice (the harness's Proxy) and three ways in for clients:
    tcpserver (plain TCP), socat OPENSSL-LISTEN (direct TLS) and a UCSPI-TLS
    server wrapper (STARTTLS)."""
    tmp = tmp_path_factory.mktemp("c2s")
    bins = bin_dir()
    procs = []
    proxy = Proxy(prosody.jid("alice"), "alice-pw", prosody.addr, prosody.port).start()
    proxy.online()
    d = Path(proxy.dir)
    subprocess.run([str(bins / "sj-passwd"), "-d", str(d)], input=b"local-pw\n", check=True)
    assert (d / "passwd").exists()
    # A root holding the account under its JID, for -R.
    root = tmp / "root"
    root.mkdir()
    (root / BARE).symlink_to(d)
    env = dict(os.environ, PATH=f"{bins}:{os.environ['PATH']}")
    cport = free_port()
    c2s_log = open(tmp / "sj-c2s.log", "wb")
    server = subprocess.Popen(
        ["tcpserver", "-RHl0", "127.0.0.1", str(cport), str(bins / "sj-c2s"), "-d", str(d)],
        env=env,
        stderr=c2s_log,
    )
    procs.append(server)
    wait_until(port_open(cport), what="tcpserver")
    # Direct TLS through socat.
    pem = tmp / "c2s.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(pem), "-out", str(tmp / "cert.pem")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with open(pem, "a") as f:
        f.write((tmp / "cert.pem").read_text())
    tport = free_port()
    socat = subprocess.Popen(
        ["socat", f"OPENSSL-LISTEN:{tport},bind=127.0.0.1,fork,reuseaddr,cert={pem},verify=0",
         f"EXEC:{bins / 'sj-c2s'} -t -d {d}"],
        env=env,
        stderr=c2s_log,
    )
    procs.append(socat)
    wait_until(port_open(tport), what="socat")
    # STARTTLS through a UCSPI-TLS server wrapper.
    sport = free_port()
    tlsd = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "ucspi_tlsd.py"), "127.0.0.1", str(sport), str(pem),
         str(bins / "sj-c2s"), "-d", str(d)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=c2s_log,
    )
    procs.append(tlsd)
    assert tlsd.stdout.readline().strip() == b"ready"
    loop = Loop()
    yield {"dir": d, "port": cport, "tls_port": tport, "starttls_port": sport,
           "prosody_port": prosody.port, "loop": loop, "tmp": tmp, "root": root}
    proxy.stop()
    proxy.kill()
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    # The loop thread is a daemon; stopping it under live slixmpp objects
    # only makes their destructors complain.


@pytest.fixture(scope="module")
def c2s_clients(c2s_env):
    e = c2s_env
    L = e["loop"]
    bob = Client(L, "bob@localhost/test", "bob-pw", e["prosody_port"]).connect()
    c1 = Client(L, f"{BARE}/one", "local-pw", e["port"]).connect()
    c2 = Client(L, f"{BARE}/two", "local-pw", e["port"], carbons=True).connect()
    c3 = Client(L, f"{BARE}/three", "local-pw", e["port"], carbons=True).connect()
    clients = sj = [c1, c2, c3]
    wait_until(
        lambda: {"one", "two", "three"} <= set(os.listdir(e["dir"] / "clients")),
        what="client directories",
    )
    # Messages to the upstream full JID exercise the `to` rewriting and do not
    # depend on presenced having announced the account yet.
    up = (e["dir"] / "state").read_text().split()[1]
    yield {"bob": bob, "clients": sj, "up": up}
    for c in clients + [bob]:
        c.close()


def test_bound_resources_and_directories(c2s_env, c2s_clients):
    c1, c2, c3 = c2s_clients["clients"]
    assert c1.full() == f"{BARE}/one"
    assert c2.full() == f"{BARE}/two"
    for name in ("one", "two", "three"):
        cd = c2s_env["dir"] / "clients" / name
        assert (cd / "pid").read_text().strip().isdigit()
        assert oct(cd.stat().st_mode & 0o777) == "0o700"


def test_incoming_reaches_all_three(c2s_clients):
    bob = c2s_clients["bob"]
    bob.send(c2s_clients["up"], "hello all")
    for c in c2s_clients["clients"]:
        got = c.wait(body_is("hello all"), "bob's message")
        # Plain message, `to` rewritten to this client's full JID.
        assert any(f"to=\"{c.full()}\"" in s or f"to='{c.full()}'" in s for s in got), got
        assert all("urn:xmpp:carbons:2" not in s for s in got)


def test_outgoing_once_upstream_carbons_to_siblings(c2s_clients):
    bob = c2s_clients["bob"]
    c1, c2, c3 = c2s_clients["clients"]
    c1.send("bob@localhost", "from one")
    c1.send("bob@localhost", "from one end")
    bob.wait(body_is("from one end"), "client 1's second message")
    assert bob.count(body_is("from one")) == 1
    for c in (c2, c3):
        got = c.wait(lambda s: "from one end" in s, "sent carbon")
        assert all("<sent xmlns=\"urn:xmpp:carbons:2\"" in s or "carbons:2" in s for s in got)
        assert c.count(lambda s: "<body>from one</body>" in s) == 1
    # Barrier: bob's next message passes the same mirrord queue after the copies.
    bob.send(c2s_clients["up"], "barrier one")
    c1.wait(body_is("barrier one"), "barrier")
    assert c1.count(lambda s: "from one" in s) == 0


def test_client_without_carbons_gets_plain_messages(c2s_clients):
    bob = c2s_clients["bob"]
    c1 = c2s_clients["clients"][0]
    bob.send(c2s_clients["up"], "plain for one")
    got = c1.wait(body_is("plain for one"), "plain message")
    assert all("carbons" not in s for s in got)


def test_roster_results_to_requester_only(c2s_env, c2s_clients):
    c1, c2, _ = c2s_clients["clients"]
    L = c2s_env["loop"]

    async def roster(c):
        iq = c.x.make_iq_get(queryxmlns="jabber:iq:roster")
        iq["id"] = "same-id"
        return str(await iq.send(timeout=WAIT))

    async def both():
        return await asyncio.gather(roster(c1), roster(c2))

    r1, r2 = L.call(both())
    for r, c in ((r1, c1), (r2, c2)):
        assert CONTROL in r and "sj-proxy" in r
        assert c.full() in r
    # Each client saw exactly one answer to its id.
    for c in (c1, c2):
        assert c.count(lambda s: "same-id" in s and "result" in s) == 1


def test_control_contact_status_and_clients(c2s_clients):
    c1 = c2s_clients["clients"][0]
    c1.send(CONTROL, "status")
    got = c1.wait(lambda s: CONTROL in s and "clients: " in s, "status reply")
    assert "online alice@localhost/" in got[0]
    c1.send(CONTROL, "clients")
    got = c1.wait(lambda s: CONTROL in s and "(this client)" in s, "clients reply")
    assert "one (this client)" in got[0] and "two" in got[0] and "three" in got[0]


def test_control_contact_history(c2s_env, c2s_clients):
    c1 = c2s_clients["clients"][0]
    log = c2s_env["dir"] / "bob@localhost" / "out"
    wait_until(lambda: log.exists() and "from one end" in log.read_text(), what="messaged's log")
    c1.send(CONTROL, "history bob@localhost 50")
    got = c1.wait(lambda s: CONTROL in s and "from one end" in s, "history reply")
    assert "alice@localhost&gt; from one" in got[0]


def test_wrong_password_refused(c2s_env):
    bad = Client(c2s_env["loop"], f"{BARE}/bad", "wrong-pw", c2s_env["port"])
    bad.connect(expect_fail=True)
    assert bad.failed and not bad.started
    bad.close()


def test_direct_tls_via_socat(c2s_env, c2s_clients):
    bob = c2s_clients["bob"]
    t = Client(c2s_env["loop"], f"{BARE}/tls", "local-pw", c2s_env["tls_port"], tls=True)
    t.connect()
    try:
        wait_until(lambda: "tls" in os.listdir(c2s_env["dir"] / "clients"), what="tls client dir")
        bob.send(c2s_clients["up"], "over tls")
        t.wait(body_is("over tls"), "message over TLS")
    finally:
        t.close()
    wait_until(
        lambda: "tls" not in os.listdir(c2s_env["dir"] / "clients"),
        what="client directory removed",
    )


def test_disco_info_advertises_carbons(c2s_env, c2s_clients):
    c1 = c2s_clients["clients"][0]

    async def disco():
        iq = c1.x.make_iq_get(queryxmlns="http://jabber.org/protocol/disco#info", ito=BARE)
        return str(await iq.send(timeout=WAIT))

    r = c2s_env["loop"].call(disco())
    assert 'var="urn:xmpp:carbons:2"' in r and 'var="urn:xmpp:carbons:rules:0"' in r


def test_server_carbons_passed_or_unwrapped(c2s_env, c2s_clients):
    """A device on the server directly: its traffic comes back as carbons."""
    bob = c2s_clients["bob"]
    c1, c2, _ = c2s_clients["clients"]
    direct = Client(c2s_env["loop"], f"{BARE}/direct", "alice-pw", c2s_env["prosody_port"],
                    carbons=True).connect()
    try:
        bob.send(f"{BARE}/direct", "to direct")
        direct.wait(body_is("to direct"), "bob's message on the direct device")
        got = c2.wait(lambda s: "to direct" in s, "received carbon")
        assert "urn:xmpp:carbons:2" in got[0] and "received" in got[0]
        got = c1.wait(lambda s: "to direct" in s, "unwrapped carbon")
        assert "carbons" not in got[0] and 'from="bob@localhost/test"' in got[0]
    finally:
        direct.close()


def test_kick_via_control_contact(c2s_env, c2s_clients):
    c1 = c2s_clients["clients"][0]
    k = Client(c2s_env["loop"], f"{BARE}/victim", "local-pw", c2s_env["port"]).connect()
    clients = c2s_env["dir"] / "clients"
    wait_until(lambda: (clients / "victim").exists(), what="victim registered")
    c1.send(CONTROL, "kick victim")
    c1.wait(lambda s: CONTROL in s and "kicked victim" in s, "kick reply")
    wait_until(lambda: not (clients / "victim").exists(), what="victim's directory removed")
    k.close()


def raw_session(port, data, until=b"</stream:stream>"):
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(data)
        got = b""
        end = time.monotonic() + WAIT
        while until not in got and time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got.decode()


HDR = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
       "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")


def test_stream_errors(c2s_env):
    port = c2s_env["port"]
    r = raw_session(port, HDR.format(to="example.com").encode())
    assert "<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in r
    r = raw_session(port, HDR.format(to="localhost").encode() + b"<message><body>x</bo></message>")
    assert "<not-well-formed" in r or "<bad-format" in r
    r = raw_session(port, HDR.format(to="localhost").encode() + b"<message to='bob@localhost'/>")
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in r
    r = raw_session(port, HDR.format(to="localhost").replace("jabber:client", "jabber:server").encode())
    assert "<invalid-namespace" in r
    big = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + b"A" * 10000 + b"</auth>"
    r = raw_session(port, HDR.format(to="localhost").encode() + big)
    assert "<policy-violation" in r
    # Features before auth: SCRAM both ways, PLAIN on loopback, no STARTTLS without UCSPI-TLS.
    r = raw_session(port, HDR.format(to="localhost").encode(), until=b"</stream:features>")
    assert "SCRAM-SHA-256" in r and "SCRAM-SHA-1" in r and "PLAIN" in r and "starttls" not in r


def test_starttls_via_ucspi_tls(c2s_env, c2s_clients):
    r = raw_session(c2s_env["starttls_port"], HDR.format(to="localhost").encode(),
                    until=b"</stream:features>")
    assert "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in r
    bob = c2s_clients["bob"]
    t = Client(c2s_env["loop"], f"{BARE}/starttls", "local-pw", c2s_env["starttls_port"],
               starttls=True)
    t.connect()
    try:
        assert "starttls" in t.x.features
        bob.send(c2s_clients["up"], "after starttls")
        t.wait(body_is("after starttls"), "message after STARTTLS")
    finally:
        t.close()


def test_root_mode_picks_account_from_login(c2s_env, c2s_clients):
    bins = bin_dir()
    port = free_port()
    env = dict(os.environ, PATH=f"{bins}:{os.environ['PATH']}")
    srv = subprocess.Popen(
        ["tcpserver", "-RHl0", "127.0.0.1", str(port), str(bins / "sj-c2s"),
         "-R", str(c2s_env["root"])],
        env=env,
        stderr=open(c2s_env["tmp"] / "sj-c2s-root.log", "wb"),
    )
    try:
        wait_until(port_open(port), what="tcpserver -R")
        r = raw_session(port, HDR.format(to="example.com").encode())
        assert "<host-unknown" in r
        c = Client(c2s_env["loop"], f"{BARE}/rooted", "local-pw", port).connect()
        try:
            assert c.full() == f"{BARE}/rooted"
            assert (c2s_env["dir"] / "clients" / "rooted").is_dir()
        finally:
            c.close()
        wrong = Client(c2s_env["loop"], "carol@localhost/x", "local-pw", port)
        wrong.connect(expect_fail=True)
        assert wrong.failed
        wrong.close()
    finally:
        srv.terminate()
        srv.wait(10)


def test_bare_jid_message_reaches_all_three(c2s_clients):
    bob = c2s_clients["bob"]
    bob.send(BARE, "hello bare")
    for c in c2s_clients["clients"]:
        got = c.wait(body_is("hello bare"), "bob's message to the bare JID")
        assert all("urn:xmpp:carbons:2" not in s for s in got)


def run_c2s(args, data=b"", env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([str(bin_dir() / "sj-c2s")] + args, input=data, capture_output=True,
                          env=env, timeout=WAIT)


def test_exit_codes(c2s_env, tmp_path):
    r = run_c2s(["-x"])
    assert r.returncode == 100 and b"usage" in r.stderr
    r = run_c2s(["-d", str(tmp_path / "missing")])
    assert r.returncode == 100 and r.stderr.startswith(b"sj-c2s: fatal: ")
    # A directory that names no account while nothing says which: temporary.
    (tmp_path / "noname").mkdir()
    r = run_c2s(["-d", str(tmp_path / "noname")], HDR.format(to="localhost").encode())
    assert r.returncode == 111 and b"<remote-connection-failed" in r.stdout
    # Three wrong passwords: not-authorized, then the stream ends, exit 100.
    bad = base64.b64encode(b"\0alice\0wrong").decode()
    auth = f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{bad}</auth>"
    r = run_c2s(["-d", str(c2s_env["dir"])],
                (HDR.format(to="localhost") + auth * 3).encode(),
                {"TCPREMOTEIP": "127.0.0.1"})
    out = r.stdout.decode()
    assert out.count("<not-authorized/></failure>") == 3, out
    assert out.endswith("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                        "</stream:error></stream:stream>"), out
    assert r.returncode == 100
    # PLAIN is not offered, nor accepted, from a remote address in clear.
    r = run_c2s(["-d", str(c2s_env["dir"])], (HDR.format(to="localhost") + auth).encode(),
                {"TCPREMOTEIP": "192.0.2.1"})
    out = r.stdout.decode()
    assert "<mechanism>PLAIN</mechanism>" not in out and "<invalid-mechanism/>" in out
    # A clean close before authentication: exit 0, our header and close.
    r = run_c2s(["-d", str(c2s_env["dir"])], (HDR.format(to="localhost") + "</stream:stream>").encode())
    assert r.returncode == 0 and r.stdout.decode().endswith("</stream:stream>")


WRAPPER_VARS = ("TCPREMOTEIP", "TCP6REMOTEIP", "SSLREMOTEIP", "SOCAT_PEERADDR", "PROTO",
                "SSL_PROTOCOL", "SSLCTLFD", "SSLREADFD", "SSLWRITEFD")


def c2s_features(args, extra_env, stdin=None):
    """sj-c2s's answer to a stream header with the wrapper variables
    `extra_env` only (none from this process): (features, stderr, exit)."""
    env = {k: v for k, v in os.environ.items() if k not in WRAPPER_VARS}
    env.update(extra_env)
    data = (HDR.format(to="localhost") + "</stream:stream>").encode()
    if stdin is None:
        r = subprocess.run([str(bin_dir() / "sj-c2s")] + args, input=data, capture_output=True,
                           env=env, timeout=WAIT)
        return r.stdout.decode(), r.stderr.decode(), r.returncode
    # A socket as fds 0 and 1, as inetd or systemd would pass it.
    client, conn = stdin
    proc = subprocess.Popen([str(bin_dir() / "sj-c2s")] + args, stdin=conn.fileno(),
                            stdout=conn.fileno(), stderr=subprocess.PIPE, env=env)
    conn.close()
    client.settimeout(WAIT)
    client.sendall(data)
    got = b""
    while True:
        chunk = client.recv(65536)
        if not chunk:
            break
        got += chunk
    client.close()
    err = proc.stderr.read().decode()
    return got.decode(), err, proc.wait(WAIT)


def test_wrapper_environment(c2s_env):
    """One reading of the UCSPI environment for both session ends
    (sj::ucspi): the peer is on loopback only if every address variable
    says so, or, with none, if the socket's peer is; PROTO=SSL means the
    wrapper did TLS unless a UCSPI-TLS hand-over is pending; descriptors a
    UCSPI-TLS wrapper names but did not pass are not used."""
    args = ["-d", str(c2s_env["dir"])]
    plain = "<mechanism>PLAIN</mechanism>"
    # No variables, fd 0 a TCP socket from 127.0.0.1: getpeername says loopback.
    with socket.create_server(("127.0.0.1", 0)) as ls:
        client = socket.create_connection(ls.getsockname(), timeout=WAIT)
        conn, _ = ls.accept()
        out, err, code = c2s_features(args, {}, stdin=(client, conn))
    assert plain in out and code == 0, (out, err)
    # No variables and a pipe: nothing says loopback.
    out, err, code = c2s_features(args, {})
    assert "SCRAM-SHA-256" in out and plain not in out, (out, err)
    # One variable naming another address is enough to refuse PLAIN in clear.
    out, err, code = c2s_features(args, {"TCPREMOTEIP": "127.0.0.1", "SOCAT_PEERADDR": "192.0.2.1"})
    assert "SCRAM-SHA-256" in out and plain not in out, (out, err)
    out, err, code = c2s_features(args, {"PROTO": "SSL", "SSLREMOTEIP": "192.0.2.1",
                                         "TCPREMOTEIP": "127.0.0.1", "SSLCTLFD": "x"})
    assert "SCRAM-SHA-256" in out and plain not in out, (out, err)
    # ucspi-ssl's sslserver did TLS: PLAIN from anywhere.
    out, err, code = c2s_features(args, {"PROTO": "SSL", "SSLREMOTEIP": "192.0.2.1"})
    assert plain in out, (out, err)
    # UCSPI-TLS descriptors that are not open: no STARTTLS offered (it
    # could not be done), one warning, and the connection is still in
    # clear whatever SSL_PROTOCOL says.
    out, err, code = c2s_features(args, {"SSLCTLFD": "97", "SSLREADFD": "98", "SSLWRITEFD": "99",
                                         "SSL_PROTOCOL": "TLSv1.3", "TCPREMOTEIP": "192.0.2.1"})
    assert "<stream:features>" in out and "starttls" not in out and plain not in out, (out, err)
    assert code == 0, (out, err)
    assert err.count("sj-c2s: warning: unable to use fd 97 (SSLCTLFD): not open") == 1, err
    assert "not offering STARTTLS" in err, err


def test_pipelined_bind_scram_without_initial_response(c2s_env, c2s_clients):
    """A raw client: SCRAM-SHA-1 with an empty initial response, then bind,
    session and a message pipelined in one write."""
    def b64(b):
        return base64.b64encode(b).decode()

    with socket.create_connection(("127.0.0.1", c2s_env["port"]), timeout=WAIT) as s:
        def read_until(tag):
            got = b""
            while tag.encode() not in got:
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
            return got.decode()

        s.sendall(HDR.format(to="localhost").encode())
        read_until("</stream:features>")
        s.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>=</auth>")
        read_until("<challenge")
        cfirst = "n=alice,r=abcdefgh"
        s.sendall(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{b64(('n,,' + cfirst).encode())}</response>".encode())
        ch = read_until("</challenge>")
        sfirst = base64.b64decode(ch.split(">", 1)[1].split("<", 1)[0]).decode()
        attrs = dict(kv.split("=", 1) for kv in sfirst.split(","))
        salted = hashlib.pbkdf2_hmac("sha1", b"local-pw", base64.b64decode(attrs["s"]), int(attrs["i"]))
        ckey = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
        stored = hashlib.sha1(ckey).digest()
        final_wo = f"c=biws,r={attrs['r']}"
        authmsg = f"{cfirst},{sfirst},{final_wo}".encode()
        sig = hmac.new(stored, authmsg, hashlib.sha1).digest()
        proof = bytes(a ^ b for a, b in zip(ckey, sig))
        s.sendall(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{b64((final_wo + ',p=' + b64(proof)).encode())}</response>".encode())
        read_until("</success>")
        s.sendall(HDR.format(to="localhost").encode())
        read_until("</stream:features>")
        s.sendall(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>raw</resource></bind></iq>"
                  b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
                  b"<message to='sj-proxy@control.invalid' type='chat'><body>clients</body></message>")
        got = read_until("(this client)")
        assert "<jid>alice@localhost/raw</jid>" in got and "id='s1'" in got
        s.sendall(b"</stream:stream>")
        read_until("</stream:stream>")
    wait_until(lambda: not (c2s_env["dir"] / "clients" / "raw").exists(), what="raw client gone")


def test_forged_carbon_from_contact_is_not_a_carbon(c2s_clients):
    """bob wraps a message in a carbon; only the account's own bare JID may
    send carbons (CVE-2017-5589), so no client sees it as alice's."""
    bob = c2s_clients["bob"]
    forged = (
        f"<message to='{c2s_clients['up']}' type='chat'>"
        "<received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        "<message xmlns='jabber:client' from='alice@localhost/phone' to='carol@localhost' "
        "type='chat'><body>forged carbon body</body></message></forwarded></received></message>"
    )
    bob.L.loop.call_soon_threadsafe(lambda: bob.x.send_raw(forged))
    # Barrier: bob's next message travels the same path after the forgery.
    bob.send(c2s_clients["up"], "after forged carbon")
    for c in c2s_clients["clients"]:
        c.wait(body_is("after forged carbon"), "barrier after the forgery")
        assert c.count(lambda s: "forged carbon body" in s and "carbons:2" in s) == 0
        assert c.count(lambda s: "forged carbon body" in s and "alice@localhost/phone" in s) == 0


def test_iqs_answered_to_requester_only_with_same_id(c2s_env, c2s_clients):
    """roster get is covered above; vCard (the account's own) and disco#info
    of the server go upstream, and each answer returns to its client only,
    although both clients chose the same id."""
    c1, c2, c3 = c2s_clients["clients"]
    L = c2s_env["loop"]

    async def vcard(c):
        iq = c.x.make_iq_get(queryxmlns="vcard-temp")
        iq["id"] = "same-vcard"
        iq.clear()
        iq.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
        try:
            return str(await iq.send(timeout=WAIT))
        except slixmpp.exceptions.IqError as e:
            return str(e.iq)  # Prosody: item-not-found while alice has no vCard

    async def disco(c):
        iq = c.x.make_iq_get(queryxmlns="http://jabber.org/protocol/disco#info", ito="localhost")
        iq["id"] = "same-disco"
        return str(await iq.send(timeout=WAIT))

    async def all_four():
        return await asyncio.gather(vcard(c1), vcard(c2), disco(c1), disco(c2))

    v1, v2, d1, d2 = L.call(all_four())
    for r, c in ((v1, c1), (v2, c2)):
        # Answered by Prosody (result, or item-not-found: no vCard stored).
        assert 'type="result"' in r or "item-not-found" in r, r
        assert f'to="{c.full()}"' in r, r
    for r in (d1, d2):
        assert 'type="result"' in r and "disco#info" in r and "identity" in r, r
    for c in (c1, c2):
        for i in ("same-vcard", "same-disco"):
            assert c.count(lambda s: f'id="{i}"' in s) == 1, (c.jid, i)
    # The third client asked nothing and saw nothing.
    bob = c2s_clients["bob"]
    bob.send(c2s_clients["up"], "after iq barrier")
    c3.wait(body_is("after iq barrier"), "barrier")
    assert c3.count(lambda s: "same-vcard" in s or "same-disco" in s) == 0


def test_roster_push_reaches_every_client(c2s_env, c2s_clients):
    c1, c2, c3 = c2s_clients["clients"]
    L = c2s_env["loop"]

    async def add():
        iq = c1.x.make_iq_set()
        iq.append(ET.fromstring(
            "<query xmlns='jabber:iq:roster'><item jid='dave@localhost' name='Dave'/></query>"))
        iq["id"] = "add-dave"
        return str(await iq.send(timeout=WAIT))

    r = L.call(add())
    assert 'type="result"' in r

    def is_push(s):
        return s.startswith("<iq") and 'type="set"' in s and "dave@localhost" in s

    for c in (c1, c2, c3):
        got = c.wait(is_push, "roster push")
        assert len(got) == 1, got
        # The client's own full JID (the server's push to the upstream
        # resource, rewritten) or the bare JID, never another client's.
        assert "/one" not in got[0] or c is c1


def test_late_client_sees_contact_presence(c2s_env, c2s_clients):
    """alice subscribes to bob from client one; bob sets a status; a client
    that logs in afterwards is told bob's presence after its own initial
    presence, as a server would."""
    bob = c2s_clients["bob"]
    c1 = c2s_clients["clients"][0]
    bob.x.auto_authorize = True
    bob.x.auto_subscribe = False
    c1.L.loop.call_soon_threadsafe(
        lambda: c1.x.send_presence(pto="bob@localhost", ptype="subscribe"))
    c1.wait(lambda s: s.startswith("<presence") and "bob@localhost" in s
            and 'type="subscribed"' in s, "bob's approval")
    bob.L.loop.call_soon_threadsafe(
        lambda: bob.x.send_presence(pshow="dnd", pstatus="late status 42"))
    # presenced has it once every client does (same route, same order).
    c1.wait(lambda s: s.startswith("<presence") and "late status 42" in s, "bob's presence")
    late = Client(c2s_env["loop"], f"{BARE}/late", "local-pw", c2s_env["port"]).connect()
    try:
        got = late.wait(lambda s: s.startswith("<presence") and "late status 42" in s,
                        "replayed presence")
        assert f'to="{BARE}/late"' in got[0] and 'from="bob@localhost/test"' in got[0], got
        assert "<show>dnd</show>" in got[0]
    finally:
        late.close()
