"""Issue 17, items 4, 5, 6 and 9, through real processes: sj-c2s under
tcpserver on 127.0.0.1 driven by raw sockets, sj-proxy against the session
Prosody or the scripted server, the `presence` tool.

Each test fails on the code before the issue's fix (said per test).
Results: tests/hostile_results.md and tests/fault_results.md ("Issue 17"
sections), SECURITY.md.
"""

import base64
import hashlib
import hmac
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from sjtest.poll import read, wait_until
from sjtest.prosody import make_workdir
from sjtest.proxy import sj_bin
from sjtest.xmpp import C2S, HEADER, RawXmpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scripted_server import ScriptedServer  # noqa: E402

for _tool in ("tcpserver", "tcpclient"):
    if not shutil.which(_tool):
        pytest.skip(f"{_tool} not installed", allow_module_level=True)

BARE = "alice@localhost"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
HDR = HEADER.format(to="localhost")


def b64(b):
    return base64.b64encode(b).decode()


def account_dir():
    """A fresh DIR named after the account, local password `local-pw`
    (set by C2S); no sj-proxy is needed to authenticate."""
    d = os.path.join(make_workdir("sec-"), BARE)
    os.makedirs(d, mode=0o700)
    return d


class Conn:
    """A raw socket to sj-c2s; every read is bounded."""

    def __init__(self, port, timeout=20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def until(self, pattern, timeout=None):
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {pattern!r}: {self.buf[-300:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError(f"closed before {pattern!r}: {self.buf[-300:]!r}")
            self.buf += chunk

    def rest(self, timeout=5.0):
        """Everything until the peer closes (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out.decode(errors="replace")

    def close(self):
        self.sock.close()


def scram_first(conn, user, authzid="", mech="SCRAM-SHA-1", nonce="abcdefghijkl"):
    """Send SCRAM client-first; return (client-first-bare, the server's answer)."""
    gs2 = f"n,{('a=' + authzid) if authzid else ''},"
    cfirst = f"n={user},r={nonce}"
    conn.send(f"<auth xmlns='{SASL}' mechanism='{mech}'>{b64((gs2 + cfirst).encode())}</auth>")
    return gs2, cfirst, conn.until(r"</challenge>|</failure>|<failure[^>]*/>")


def scram_final(conn, gs2, cfirst, challenge, password, algo="sha1"):
    sfirst = base64.b64decode(re.search(r"<challenge[^>]*>([^<]*)<", challenge).group(1)).decode()
    attrs = dict(kv.split("=", 1) for kv in sfirst.split(","))
    salted = hashlib.pbkdf2_hmac(algo, password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    ckey = hmac.new(salted, b"Client Key", algo).digest()
    final_wo = f"c={b64(gs2.encode())},r={attrs['r']}"
    sig = hmac.new(hashlib.new(algo, ckey).digest(), f"{cfirst},{sfirst},{final_wo}".encode(),
                   algo).digest()
    proof = bytes(a ^ b for a, b in zip(ckey, sig))
    conn.send(f"<response xmlns='{SASL}'>{b64((final_wo + ',p=' + b64(proof)).encode())}</response>")
    return attrs, conn.until(r"</success>|<success[^>]*/>|</failure>")


def plain(user, pw, authzid=""):
    msg = "\0".join([authzid, user, pw]).encode()
    return f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(msg)}</auth>"


# ---------------------------------------------------------------- item 4

def test_upstream_resource_with_a_space_reaches_sj_c2s_clients(proxy, contact):
    """Before: DIR/state was split on white space, so sj-c2s took
    `alice@localhost/my` for the upstream JID and dropped every message to
    the real one as "for another resource"; the client got nothing."""
    p = proxy("alice", resource="my laptop")
    p.wait_ready()
    p.wait_state("online")
    full = f"{BARE}/my laptop"
    c2s = C2S(p.dir)
    try:
        c = c2s.client("phone")
        c.timeout = 8
        bob = contact("bob")
        bob.send_message(full, "to the spaced resource")
        # The message ends with sj-proxy's <stanza-id/> after the body (sj(7)).
        got = c.read_until(rb"to the spaced resource</body>.*?</message>").decode()
        assert f"to='{BARE}/phone'" in got or f'to="{BARE}/phone"' in got, got
        c.close()
    finally:
        c2s.stop()
    # The state line keeps the JID whole for shell readers and the tools.
    assert p.wait_state("online").split("\t") == ["online", full, p.state().split("\t")[2]]
    r = subprocess.run(["cut", "-f2", os.path.join(p.dir, "state")], capture_output=True,
                       text=True, timeout=10)
    assert r.stdout == f"{full}\n", p.state()
    r = subprocess.run([sj_bin("presence"), "-d", p.dir, "state"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.startswith(f"online {full} since "), r


# ---------------------------------------------------------------- item 5

def guess_loop(port, seconds, threads):
    """Wrong PLAIN passwords from `threads` connections at a time, each
    guess sent once the previous one is answered, three per connection,
    reconnecting, for `seconds`. Returns (not-authorized answers,
    temporary-auth-failure answers, connections)."""
    stop = time.monotonic() + seconds
    counts = {"no": 0, "busy": 0, "conns": 0}
    lock = threading.Lock()
    answer = re.compile(rb"<(not-authorized|temporary-auth-failure)/></failure>")

    def one_connection():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        with lock:
            counts["conns"] += 1
        buf = b""
        try:
            s.sendall(HDR.encode())
            for _ in range(3):
                s.sendall(plain("alice", "wrong-guess").encode())
                while not answer.search(buf):
                    left = stop - time.monotonic()
                    if left <= 0:
                        return
                    s.settimeout(left)
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        return
                    if not chunk:
                        return
                    buf += chunk
                m = answer.search(buf)
                buf = buf[m.end():]
                with lock:
                    counts["no" if m.group(1) == b"not-authorized" else "busy"] += 1
        finally:
            s.close()

    def run():
        while time.monotonic() < stop:
            try:
                one_connection()
            except OSError:
                pass

    ts = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 10)
    return counts["no"], counts["busy"], counts["conns"]


def test_password_guessing_is_slowed_per_account_and_logged_sparingly():
    """Before: every wrong password was answered at once and logged (about
    1,100 guesses/s on loopback, one log line each). Now the account's
    record spaces the checks (0.5 s, 1 s, 2 s, ...) across connections, in
    parallel too, and logs at most one failure line per 10 s."""
    d = account_dir()
    c2s = C2S(d)
    try:
        seconds = 4.0
        no, busy, conns = guess_loop(c2s.port, seconds, threads=8)
        rate = no / seconds
        print(f"\nguessing for {seconds} s with 8 parallel connections: {no} wrong passwords "
              f"checked ({rate:.1f}/s), {busy} refused unchecked, {conns} connections")
        # Slots at 0, 0.5, 1.5, 3.5 s: four answers in four seconds (five
        # with scheduling slack), however many connections ask.
        assert 1 <= no <= 5, (no, busy, conns)
        # Checked: also those whose slot (7.5 s, reserved at once) came after
        # the loop stopped listening; never more than the reachable slots.
        record = read(os.path.join(d, "auth-failures"))
        checked = int(re.match(r"failures=(\d+) ", record).group(1))
        assert no <= checked <= 6, record
        lines = [ln for ln in c2s.log_text().splitlines() if "authentication failed" in ln]
        assert 1 <= len(lines) <= 2, lines
        assert lines[0].startswith("sj-c2s: info: authentication failed: wrong password for "
                                   f"{BARE} (PLAIN)"), lines
        # The right password gets in once its slot is within reach (until
        # then it is refused unchecked, temporary-auth-failure), and resets
        # the count. A polling loop: the slot is a time, not an event.
        t0 = time.monotonic()
        while True:
            assert time.monotonic() - t0 < 40, "never let in"
            conn = Conn(c2s.port)
            conn.send(HDR + plain("alice", "local-pw"))
            got = conn.until(r"<success[^>]*/>|</success>|</failure>", timeout=15)
            conn.close()
            if "success" in got:
                break
            assert "<temporary-auth-failure/>" in got, got
            time.sleep(0.25)
        print(f"the right password got in {time.monotonic() - t0:.1f} s after the guessing")
        assert read(os.path.join(d, "auth-failures")).startswith("failures=0 ")
        # A single wrong guess after that is answered at once again.
        conn = Conn(c2s.port)
        t0 = time.monotonic()
        conn.send(HDR + plain("alice", "nope"))
        conn.until(r"<not-authorized/></failure>")
        assert time.monotonic() - t0 < 1.0
        conn.close()
    finally:
        c2s.stop()


# ---------------------------------------------------------------- item 6

def test_preauth_deadline_option_sends_connection_timeout():
    """Before: there was no -a (usage error, the connection just closed) and
    the deadline was 60 s to bind, so 40 idle headers held tcpserver's
    default concurrency for a minute."""
    d = account_dir()
    c2s = C2S(d, args=("-a", "2"))
    try:
        conns = [Conn(c2s.port) for _ in range(5)]
        t0 = time.monotonic()
        for c in conns:
            c.send(HDR)
        for c in conns:
            got = c.until(r"</stream:stream>", timeout=8)
            assert ("<stream:error><connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                    "</stream:error></stream:stream>") in got, got
            assert c.rest(2) == ""  # and the connection is closed
            c.close()
        took = time.monotonic() - t0
        assert 1.5 <= took <= 6, took
        assert wait_until(lambda: "not authenticated within 2 s" in c2s.log_text(), 10), \
            c2s.log_text()
    finally:
        c2s.stop()


def test_preauth_deadline_defaults_to_10_seconds():
    """Before: 60 s (the test's 14 s bound fails)."""
    d = account_dir()
    c2s = C2S(d)
    try:
        c = Conn(c2s.port)
        t0 = time.monotonic()
        c.send(HDR)
        got = c.until(r"</stream:stream>", timeout=14)
        took = time.monotonic() - t0
        assert "<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in got, got
        assert 9 <= took <= 13, took
        c.close()
    finally:
        c2s.stop()


# ---------------------------------------------------------------- item 9

def test_scram_authzid_of_another_identity_refused():
    """Before: `a=bob@localhost` was ignored and the session was alice's;
    PLAIN refused the same request. Now both refuse with invalid-authzid,
    before any account lookup; `a=` naming the account itself is fine."""
    d = account_dir()
    c2s = C2S(d)
    try:
        c = Conn(c2s.port)
        c.send(HDR)
        c.until("</stream:features>")
        _, _, got = scram_first(c, "alice", authzid="bob@localhost")
        assert f"<failure xmlns='{SASL}'><invalid-authzid/></failure>" in got, got
        c.send(plain("alice", "local-pw", authzid="bob@localhost"))
        assert "<invalid-authzid/>" in c.until(r"</failure>")
        # The account's own bare JID as authzid: accepted.
        gs2, cfirst, got = scram_first(c, "alice", authzid="Alice@LocalHost")
        assert "<challenge" in got, got
        _, got = scram_final(c, gs2, cfirst, got, "local-pw")
        assert "<success" in got, got
        c.close()
    finally:
        c2s.stop()


@pytest.mark.parametrize("mode", ["-d", "-R"])
def test_unknown_user_gets_a_challenge_and_fails_like_a_wrong_password(mode):
    """Before: an unknown user was refused at the first SCRAM message while
    a known one got a challenge: under -R that enumerates accounts. Now the
    unknown user gets a challenge (salt from a per-directory key and the
    name, the same on each try, the same iteration count) and fails at the
    last step with the same not-authorized."""
    d = account_dir()
    c2s = C2S(d, mode=mode)
    try:
        def exchange(user, password, nonce):
            c = Conn(c2s.port)
            c.send(HDR)
            c.until("</stream:features>")
            gs2, cfirst, ch = scram_first(c, user, nonce=nonce)
            assert "<challenge" in ch, (user, ch)
            attrs, fin = scram_final(c, gs2, cfirst, ch, password)
            c.close()
            return attrs, fin

        known, known_fin = exchange("alice", "wrong", "n1n1n1n1")
        ghost, ghost_fin = exchange("mallory", "wrong", "n2n2n2n2")
        again, _ = exchange("Mallory", "wrong", "n3n3n3n3")
        assert known_fin == ghost_fin == f"<failure xmlns='{SASL}'><not-authorized/></failure>"
        assert ghost["i"] == known["i"] == "4096"
        assert len(base64.b64decode(ghost["s"])) == len(base64.b64decode(known["s"])) == 16
        assert again["s"] == ghost["s"] and ghost["s"] != known["s"]
        key_home = os.path.dirname(d) if mode == "-R" else d
        assert oct(os.stat(os.path.join(key_home, ".salt-key")).st_mode & 0o777) == "0o600"
    finally:
        c2s.stop()


@pytest.fixture(scope="module")
def bind_env(prosody):
    from sjtest.proxy import Proxy
    p = Proxy(prosody.jid("alice"), "alice-pw", prosody.addr, prosody.port).start()
    p.online()
    c2s = C2S(p.dir)
    yield p, c2s
    c2s.stop()
    p.stop()
    p.kill()


@pytest.mark.parametrize("name,resource,kept", [
    ("zero-width-space", "zero\u200bwidth", False),
    ("bidi-override", "\u202eevil", False),
    ("nfd-combining-mark", "cafe\u0301", False),
    ("ohm-sign", "\u2126", False),
    ("nfc", "caf\u00e9", True),
    ("cyrillic", "телефон", True),
])
def test_bind_applies_the_resource_rule(bind_env, name, resource, kept):
    """Before: zero-width, bidi and NFD resources were bound as they came
    (two look-alike clients `café` and `cafe` + U+0301 could coexist). Now
    sj::jid::resource_allowed refuses them and a generated sj-XXXX is bound,
    with a log line saying why."""
    p, c2s = bind_env
    c = RawXmpp("127.0.0.1", c2s.port, "alice", "local-pw", resource=resource).login()
    try:
        if kept:
            assert c.jid == f"{BARE}/{resource}", c.jid
        else:
            assert re.fullmatch(re.escape(BARE) + r"/sj-[0-9a-f]{8}", c.jid), c.jid
            assert wait_until(lambda: f"bound {c.jid} instead of" in c2s.log_text(), 10), \
                c2s.log_text()[-2000:]
    finally:
        c.close()


def test_control_contact_never_crosses_the_upstream_link(proxy):
    """Before: a raw client's message to the control contact went to the
    server (and into DIR/sj-proxy@control.invalid/out as a sent message), and
    a message from sj-proxy@control.invalid that the server sent (a bounce)
    reached every client as if from the control contact."""
    srv = ScriptedServer()
    try:
        from types import SimpleNamespace
        server = SimpleNamespace(jid=lambda u: f"{u}@localhost", addr="127.0.0.1",
                                 port=srv.port, tls_port=srv.port)
        p = proxy("alice", server=server)
        raw = p.raw_client("raw")
        srv.handshake()
        p.online()
        raw.send("<message to='sj-proxy@control.invalid' type='chat'><body>status</body></message>")
        raw.send("<message to='bob@localhost' type='chat'><body>marker-up</body></message>")
        got = srv.read_until(rb"marker-up</body></message>")
        assert b"control.invalid" not in got, got
        assert not os.path.exists(os.path.join(p.dir, "sj-proxy@control.invalid"))
        assert wait_until(lambda: "(the control contact) from client raw" in p.stderr_text(), 10)
        full = "alice@localhost/scripted"
        srv.send(f"<message from='sj-proxy@control.invalid' to='{full}' type='error'>"
                 f"<body>bounced</body><error type='cancel'><remote-server-not-found "
                 f"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
                 f"<message from='SJ-Proxy@Control.Invalid/x' to='{full}' type='chat'>"
                 f"<body>forged</body></message>"
                 f"<message from='bob@localhost/x' to='{full}' type='chat'>"
                 f"<body>marker-down</body></message>".encode())
        raw.wait_line(lambda ln: b"marker-down" in ln)
        assert not [ln for ln in raw.lines if b"control.invalid" in ln.lower()], raw.lines
        assert p.stderr_text().count("(the control contact) from the server") == 2
    finally:
        srv.close()


def test_atomic_write_never_follows_a_planted_temporary_name(tmp_path):
    """Before: the temporary file was DIR/.NAME.tmp.PID, opened without
    O_EXCL|O_NOFOLLOW: a symlink planted under that name (the pid is known
    when the writer is exec'ed by a shell) made `presence show` write
    through it, outside DIR, and rename the link into place."""
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.write_text("untouched\n")
    script = ('ln -s "$1" "$2/.mypresence.tmp.$$" && exec "$3" -d "$2" show away out')
    r = subprocess.run(["sh", "-c", script, "sh", str(outside), str(d), sj_bin("presence")],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert outside.read_text() == "untouched\n"
    mp = d / "mypresence"
    assert mp.is_file() and not mp.is_symlink()
    assert mp.read_text().startswith("away out")
    assert oct(mp.stat().st_mode & 0o777) == "0o600"
