"""presenced and the presence tool.

Two layers:
- daemon tests drive the `presenced` binary directly on a pipe pair, as
  sj-proxy does (no server needed);
- end-to-end tests use the harness fixtures (real Prosody, slixmpp contacts,
  real sj-proxy) and are skipped when the harness is not there.
"""

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sjtest.poll import read, wait_until
from sjtest.proxy import sj_bin

ROOT = Path(__file__).resolve().parent.parent


def wait_for(pred, timeout=3.0, step=0.02):
    """Poll `pred` until true or the deadline; return its last value."""
    return wait_until(pred, timeout, step)


class Daemon:
    """presenced on a pipe pair: write records, collect output lines."""

    def __init__(self, d, jid="alice@localhost/sj-proxy", args=()):
        self.p = subprocess.Popen(
            [sj_bin("presenced"), *args, "-d", str(d), jid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buf = b""
        self.lines = []

    def send(self, rec):
        self.p.stdin.write(rec.encode() + b"\n")
        self.p.stdin.flush()

    def _pump(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if r:
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                return False
            self.buf += chunk
            *done, self.buf = self.buf.split(b"\n")
            self.lines += [x.decode() for x in done]
        return True

    def expect(self, pred, timeout=3.0):
        """Wait for an output line matching pred; return it (consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, line in enumerate(self.lines):
                if pred(line):
                    del self.lines[i]
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line within {timeout}s; got {self.lines}")
            if not self._pump(left):
                raise AssertionError(f"presenced closed stdout; got {self.lines}")

    def quiet(self, t=0.3):
        end = time.monotonic() + t
        while time.monotonic() < end and self._pump(end - time.monotonic()):
            pass
        out, self.lines = self.lines, []
        return out

    def close(self):
        rest, err = self.p.communicate(timeout=5)
        self.lines += [x for x in (self.buf + rest).decode().split("\n") if x]
        return self.p.returncode, err.decode()


@pytest.fixture
def acct(tmp_path):
    d = tmp_path / "alice@localhost"
    d.mkdir(mode=0o700)
    return d


def test_initial_presence_mypresence_and_shutdown(acct):
    (acct / "mypresence").write_text("away lunch\npriority 3\n")
    dm = Daemon(acct)
    dm.expect(lambda x: x == "<presence><show>away</show><status>lunch</status><priority>3</priority></presence>")
    t0 = time.monotonic()
    (acct / "mypresence").write_text("dnd busy\n")
    dm.expect(lambda x: x == "<presence><show>dnd</show><status>busy</status></presence>")
    assert time.monotonic() - t0 < 3.0
    # A typo changes nothing.
    (acct / "mypresence").write_text("bussy\n")
    assert dm.quiet() == []
    rc, err = dm.close()
    assert rc == 0, err
    assert dm.lines == ["<presence type='unavailable'/>"]


def test_contact_presence_file_and_replay(acct):
    dm = Daemon(acct)
    dm.expect(lambda x: x == "<presence/>")
    dm.send("<presence from='bob@localhost/phone' to='alice@localhost/sj-proxy'><show>away</show><status>at lunch</status></presence>")
    bob = acct / "bob@localhost" / "presence"
    assert wait_for(lambda: read(bob) == "away at lunch\n")
    assert (bob.parent.stat().st_mode & 0o777) == 0o700
    assert (bob.stat().st_mode & 0o777) == 0o600
    dm.send("<presence from='bob@localhost/pc' to='alice@localhost/sj-proxy'><show>chat</show></presence>")
    assert wait_for(lambda: read(bob) == "chat\n")
    # A client's first available presence: replay, then the account presence with its caps.
    caps = "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://x' ver='abc='/>"
    dm.send(f"<presence from='alice@localhost/gajim'><priority>4</priority>{caps}</presence>")
    got = {dm.expect(lambda x: "to='alice@localhost/gajim'" in x) for _ in range(2)}
    assert any("bob@localhost/phone" in g and "<status>at lunch</status>" in g for g in got)
    assert any("bob@localhost/pc" in g for g in got)
    dm.expect(lambda x: x == f"<presence><priority>4</priority>{caps}</presence>")
    # The client leaves: mypresence (online) again.
    dm.send("<presence from='alice@localhost/gajim' type='unavailable'/>")
    dm.expect(lambda x: x == "<presence/>")
    dm.send("<presence from='bob@localhost/pc' to='alice@localhost/sj-proxy' type='unavailable'/>")
    dm.send("<presence from='bob@localhost/phone' to='alice@localhost/sj-proxy' type='unavailable'/>")
    assert wait_for(lambda: read(bob) == "offline\n")
    # Nothing cached any more: a new client gets no replay.
    dm.send("<presence from='alice@localhost/dino'/>")
    assert not any("to=" in x for x in dm.quiet())
    dm.close()


def test_subscription_events_not_auto_approved(acct):
    dm = Daemon(acct)
    dm.expect(lambda x: x == "<presence/>")
    dm.send("<presence from='carol@localhost' to='alice@localhost' type='subscribe'/>")
    out = acct / "carol@localhost" / "out"
    assert wait_for(lambda: read(out))
    line = read(out)
    assert line.endswith(" -!- <carol@localhost> asks to subscribe to your presence\n"), line
    assert len(line.split(" ", 2)[0]) == 10 and len(line.split(" ", 2)[1]) == 5
    subs = read(acct / "subscriptions").split()
    assert subs[:2] == ["carol@localhost", "subscribe"] and subs[2].endswith("Z")
    assert not any("subscribed" in x for x in dm.quiet())
    dm.close()


def test_auto_approve(acct):
    dm = Daemon(acct, args=["-a"])
    dm.send("<presence from='carol@localhost' to='alice@localhost' type='subscribe'/>")
    dm.expect(lambda x: x == "<presence to='carol@localhost' type='subscribed'/>")
    dm.close()


def test_directed_presence(acct):
    dm = Daemon(acct)
    dm.expect(lambda x: x == "<presence/>")
    tool = sj_bin("presence")
    subprocess.run([tool, "-d", str(acct), "to", "Bob@LocalHost/x", "xa", "not", "here"], check=True)
    assert read(acct / "bob@localhost" / "mypresence") == "xa not here\n"
    dm.expect(lambda x: x == "<presence to='bob@localhost'><show>xa</show><status>not here</status></presence>")
    subprocess.run([tool, "-d", str(acct), "to", "bob@localhost", "-"], check=True)
    dm.expect(lambda x: x == "<presence to='bob@localhost'/>")
    dm.close()


def test_presence_tool(acct):
    tool = sj_bin("presence")
    env = dict(os.environ, SJ_DIR=str(acct))

    def run(*a):
        return subprocess.run([tool, *a], env=env, capture_output=True, text=True)

    assert run("show").stdout == "online\n"
    assert run("show", "away", "gone", "fishing").returncode == 0
    assert read(acct / "mypresence") == "away gone fishing\n"
    assert run("priority", "7").returncode == 0
    assert read(acct / "mypresence") == "away gone fishing\npriority 7\n"
    assert run("show", "dnd").returncode == 0
    assert read(acct / "mypresence") == "dnd\npriority 7\n"
    assert run("show").stdout == "dnd\n"
    assert run("priority").stdout == "7\n"
    assert run("show", "bogus").returncode == 100
    assert run("priority", "300").returncode == 100
    (acct / "bob@localhost").mkdir()
    (acct / "bob@localhost" / "presence").write_text("away x\n")
    assert run("list").stdout == "bob@localhost\taway x\n"
    # subscribe through DIR/in: no reader is a clear temporary error.
    r = run("subscribe", "bob@localhost")
    assert r.returncode == 111
    assert r.stderr == f"presence: fatal: unable to open {acct}/in: no reader (is sj-proxy running?)\n"
    os.mkfifo(acct / "in", 0o600)
    fd = os.open(acct / "in", os.O_RDWR | os.O_NONBLOCK)
    try:
        assert run("subscribed", "Bob@localhost/res").returncode == 0
        assert os.read(fd, 4096) == b"<presence to='bob@localhost' type='subscribed'/>\n"
        assert run("unsubscribe", "carol@LOCALHOST").returncode == 0
        assert os.read(fd, 4096) == b"<presence to='carol@localhost' type='unsubscribe'/>\n"
        assert run("subscribe", "o'neil@localhost").returncode == 100
    finally:
        os.close(fd)
    assert run("frobnicate").returncode == 100
    # A malformed file is reported when read, and can be overwritten.
    (acct / "mypresence").write_text("bussy\n")
    assert run("show").returncode == 100
    assert run("show", "xa").returncode == 0
    assert read(acct / "mypresence") == "xa\n"


# ---------------------------------------------------------------------------
# End to end: real Prosody, slixmpp contacts, real sj-proxy (harness fixtures).


def fixture(request, name):
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"harness fixture {name!r} not available")


@pytest.fixture(scope="module")
def server(request):
    """A Prosody of this module's own (accounts alice, bob, carol; passwords
    USER-pw): the end-to-end tests start from "alice and bob not subscribed",
    which other modules' tests on the shared server do not leave alone."""
    try:
        from sjtest.prosody import Prosody
    except ImportError:
        pytest.skip("no Prosody harness (tests/sjtest)")
    if not shutil.which("prosody"):
        pytest.skip("prosody not installed")
    p = Prosody()
    for u in ("alice", "bob", "carol"):
        p.register(u, f"{u}-pw")
    p.start()
    request.addfinalizer(p.stop)
    return p


def contact(srv, user, resource="slix"):
    from sjtest.contact import Contact

    return Contact(f"{user}@localhost", f"{user}-pw", host=srv.addr, port=srv.port,
                   resource=resource).connect()


def is_presence(s, frm, ptype=None):
    return s.name == "presence" and str(s["from"].bare) == frm and \
        (ptype is None or s["type"] == ptype)


@pytest.fixture(scope="module")
def e2e(server, tmp_path_factory):
    """alice behind sj-proxy, bob subscribed both ways with alice (set up by
    a direct slixmpp alice before the proxy starts), carol a stranger."""
    if not shutil.which("tcpclient"):
        pytest.skip("tcpclient not installed")
    sjproxy = sj_bin("sj-proxy")
    sj_bin("presenced")
    bob = contact(server, "bob")
    alice = contact(server, "alice", resource="direct")
    m = bob.mark()
    alice.subscribe("bob@localhost")  # bob auto-authorizes and subscribes back
    bob.wait_for(lambda s: is_presence(s, "alice@localhost", "subscribe"), start=m)
    alice.wait_for(lambda s: is_presence(s, "bob@localhost", "subscribed"))
    bob.wait_for(lambda s: is_presence(s, "alice@localhost", "subscribed"), start=m)
    alice.disconnect()
    d = tmp_path_factory.mktemp("e2e") / "alice@localhost"
    d.mkdir(mode=0o700)
    pw = d.parent / "pw"
    pw.write_text("alice-pw\n")
    log = open(d.parent / "sj-proxy.log", "wb")
    proc = subprocess.Popen(
        ["tcpclient", server.addr, str(server.port), sjproxy, "-d", str(d), "-p", str(pw),
         "alice@localhost"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        ok = wait_for(lambda: (read(d / "state") or "").startswith("online"), timeout=20)
        if not ok:
            pytest.fail(f"sj-proxy not online: {read(d / 'state')!r}; "
                        f"log: {read(d.parent / 'sj-proxy.log')}")
        # presenced sent the initial presence: bob sees alice.
        bob.wait_presence(lambda s: str(s["from"].bare) == "alice@localhost"
                          and s["type"] == "available", timeout=10)
        carol = contact(server, "carol")
        yield {"dir": d, "bob": bob, "carol": carol, "server": server}
        carol.disconnect()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        bob.disconnect()


def test_e2e_contact_presence_file(e2e):
    d, bob = e2e["dir"], e2e["bob"]
    bob.send_presence(pshow="away", pstatus="out to lunch")
    f = d / "bob@localhost" / "presence"
    assert wait_for(lambda: read(f) == "away out to lunch\n", timeout=3), read(f)
    bob.send_presence(pstatus="back")
    assert wait_for(lambda: read(f) == "online back\n", timeout=3), read(f)


def test_e2e_mypresence_reaches_contact(e2e):
    d, bob = e2e["dir"], e2e["bob"]
    m = bob.mark()
    (d / "mypresence").write_text("dnd busy\n")
    p = bob.wait_presence(lambda s: str(s["from"].bare) == "alice@localhost"
                          and s["show"] == "dnd", timeout=3, start=m)
    assert p["status"] == "busy"
    # Directed presence with the tool: only bob sees it.
    m = bob.mark()
    subprocess.run([sj_bin("presence"), "-d", str(d), "to", "bob@localhost", "xa", "just", "you"],
                   check=True)
    p = bob.wait_presence(lambda s: str(s["from"].bare) == "alice@localhost"
                          and s["show"] == "xa", timeout=3, start=m)
    assert p["status"] == "just you"
    subprocess.run([sj_bin("presence"), "-d", str(d), "to", "bob@localhost", "-"], check=True)
    (d / "mypresence").write_text("online\n")
    bob.wait_presence(lambda s: str(s["from"].bare) == "alice@localhost"
                      and s["show"] == "" and s["type"] == "available", timeout=3, start=m)


def test_e2e_subscription_request_surfaces(e2e):
    d, carol = e2e["dir"], e2e["carol"]
    m = carol.mark()
    carol.subscribe("alice@localhost")
    out = d / "carol@localhost" / "out"
    assert wait_for(lambda: "asks to subscribe" in (read(out) or ""), timeout=5), read(out)
    assert read(out).splitlines()[-1].endswith(
        " -!- <carol@localhost> asks to subscribe to your presence")
    assert wait_for(lambda: "carol@localhost subscribe " in (read(d / "subscriptions") or ""))
    # Not auto-approved.
    time.sleep(1)
    assert not [s for s in carol.received[m:] if is_presence(s, "alice@localhost", "subscribed")]
    # The user approves with the tool.
    r = subprocess.run([sj_bin("presence"), "-d", str(d), "subscribed", "carol@localhost"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    carol.wait_for(lambda s: is_presence(s, "alice@localhost", "subscribed"), timeout=5, start=m)


def test_e2e_late_client_gets_replay(e2e):
    """A raw FIFO client that says it is available gets the contacts'
    presence, addressed to it, as a server would after initial presence."""
    src = ROOT / "mirrord" / "src" / "main.rs"
    if src.exists() and len(src.read_text().splitlines()) < 10:
        pytest.skip("mirrord not merged yet")
    d, bob = e2e["dir"], e2e["bob"]
    bob.send_presence(pshow="chat", pstatus="replay me")
    assert wait_for(lambda: read(d / "bob@localhost" / "presence") == "chat replay me\n",
                    timeout=3)
    c = d / "clients" / "lap"
    c.mkdir(parents=True, mode=0o700)
    os.mkfifo(c / "in", 0o600)
    rfd = os.open(c / "in", os.O_RDWR | os.O_NONBLOCK)
    os.mkfifo(c / "out", 0o600)
    try:
        wfd = None
        deadline = time.monotonic() + 5
        while wfd is None and time.monotonic() < deadline:
            try:
                wfd = os.open(c / "out", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)  # sj-proxy has not noticed the client yet
        assert wfd is not None, "sj-proxy never opened clients/lap/out"
        os.write(wfd, b"<presence><show>away</show></presence>\n")
        buf = b""
        deadline = time.monotonic() + 5
        want = b"to='alice@localhost/lap'"
        while time.monotonic() < deadline:
            r, _, _ = select.select([rfd], [], [], 0.1)
            if r:
                buf += os.read(rfd, 65536)
            if any(b"bob@localhost/slix" in ln and want in ln and b"replay me" in ln
                   for ln in buf.split(b"\n")):
                break
        else:
            pytest.fail(f"no replay of bob's presence to the client; got {buf!r}")
        os.close(wfd)
    finally:
        os.close(rfd)


def test_directed_presence_rewritten_in_place(acct):
    # A contact's mypresence written with plain open/write (no rename), then
    # rewritten the same way: the directory's watch sees it come, a watch
    # on the file sees it rewritten (contact directories are not watched for
    # IN_CLOSE_WRITE, which messaged's `out` appends would trigger).
    d = acct / "bob@localhost"
    d.mkdir(mode=0o700)
    dm = Daemon(acct)
    dm.expect(lambda x: x == "<presence/>")
    (d / "out").write_text("")
    (d / "mypresence").write_text("away first\n")
    dm.expect(lambda x: x == "<presence to='bob@localhost'><show>away</show><status>first</status></presence>")
    (d / "mypresence").write_text("dnd second\n")
    dm.expect(lambda x: x == "<presence to='bob@localhost'><show>dnd</show><status>second</status></presence>")
    (d / "mypresence").unlink()
    dm.expect(lambda x: x == "<presence to='bob@localhost'/>")
    dm.close()
