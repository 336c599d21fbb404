"""XEP-0198 toward clients: a slixmpp client with its xep_0198 plugin,
behind sj-c2s, loses its TCP connection (a relay between them is cut) in
the middle of 200 incoming messages, reconnects and resumes: a new sj-c2s
process takes the session over from the old one and the client gets each
message exactly once. A resumption id works for its own account only, and
only whole; after the window the session is gone, the client binds
afresh and the archive's catch-up gives it what it never acknowledged and
what came since. Real Prosody upstream, real sj-proxy."""

import asyncio
import os
import re
import threading
import time

import pytest

from sjtest.contact import Contact
from sjtest.poll import read, wait_until
from sjtest.relay import Relay
from sjtest.xmpp import C2S, RawXmpp

slixmpp = pytest.importorskip("slixmpp")

N = 200


class SmClient:
    """A slixmpp client with stream management that reconnects by itself
    when its connection drops, and resumes."""

    def __init__(self, jid, password, port):
        self.port = port
        self.cond = threading.Condition()
        self.bodies = []
        self.started = 0
        self.resumed = 0
        self.enabled = False
        self.closing = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._make(jid, password))

    def call(self, coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _make(self, jid, password):
        x = slixmpp.ClientXMPP(jid, password)
        x.register_plugin("xep_0198")
        # A lost connection is not the end of the session: that is what
        # resumption is for.
        x.end_session_on_disconnect = False
        x["feature_mechanisms"].unencrypted_scram = True
        x.enable_plaintext = True
        x.enable_starttls = False
        x.enable_direct_tls = False
        x.add_event_handler("session_start", self._start)
        x.add_event_handler("session_resumed", self._resumed)
        x.add_event_handler("sm_enabled", self._enabled)
        x.add_event_handler("message", self._message)
        x.add_event_handler("disconnected", self._lost)
        self.x = x

    def _notify(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def _start(self, _ev):
        self.x.send_presence()
        self._notify(lambda: setattr(self, "started", self.started + 1))

    def _resumed(self, _ev):
        self._notify(lambda: setattr(self, "resumed", self.resumed + 1))

    def _enabled(self, _ev):
        self._notify(lambda: setattr(self, "enabled", True))

    def _message(self, m):
        body = str(m["body"])
        self._notify(lambda: self.bodies.append(body))

    def _lost(self, _ev):
        if not self.closing:
            self.loop.call_soon(lambda: self.x.connect("127.0.0.1", self.port))

    def connect(self):
        async def go():
            self.x.connect("127.0.0.1", self.port)
        self.call(go())
        self.wait(lambda: self.started and self.enabled, "session with stream management")
        return self

    def wait(self, pred, what, timeout=30):
        with self.cond:
            assert self.cond.wait_for(pred, timeout), f"timed out waiting for {what}"

    def close(self):
        self.closing = True
        async def go():
            self.x.disconnect()
        try:
            self.call(go(), timeout=5)
        except Exception:
            pass


@pytest.fixture
def env(proxy, prosody, tmp_path):
    p = proxy("alice")
    up = p.online()
    # -R: the account directory under its JID in a root, beside carol's
    # (an account of its own here, with no session of alice's).
    root = tmp_path / "root"
    root.mkdir()
    (root / "alice@localhost").symlink_to(p.dir)
    carol = root / "carol@localhost"
    carol.mkdir(mode=0o700)
    c2s = C2S(str(root / "alice@localhost"), args=("-v", "-w", "20"), mode="-R")
    import subprocess
    from sjtest.proxy import sj_bin
    subprocess.run([sj_bin("sj-passwd"), "-d", str(carol)], input="carol-local\n", text=True,
                   check=True, timeout=20)
    relay = Relay("127.0.0.1", c2s.port)
    yield {"proxy": p, "up": up, "c2s": c2s, "relay": relay, "dir": p.dir}
    relay.close()
    c2s.stop()


def c2s_pids(c2s):
    return set(int(x) for x in re.findall(r"sj-c2s: info: pid (\d+)", c2s.log_text()))


def test_slixmpp_client_resumes_through_a_new_process_and_gets_each_once(env, contact):
    relay, c2s = env["relay"], env["c2s"]
    c = SmClient("alice@localhost/phone", "local-pw", relay.port).connect()
    try:
        pid1 = int(read(os.path.join(env["dir"], "clients", "phone", "pid")))
        bob = contact("bob")
        # The flow: bob sends N messages; the connection drops in the middle.
        def flood():
            for i in range(N):
                bob.send_message(env["up"], f"m-{i:03d}")
                if i == N // 2:
                    relay.cut()
                if i % 20 == 19:
                    time.sleep(0.05)
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t.join(60)
        c.wait(lambda: c.resumed >= 1, "the resumption")
        want = [f"m-{i:03d}" for i in range(N)]
        c.wait(lambda: len([b for b in c.bodies if b.startswith("m-")]) >= N, "every message",
               timeout=60)
        bob.send_message(env["up"], "marker")
        c.wait(lambda: "marker" in c.bodies, "the marker")
        got = [b for b in c.bodies if b.startswith("m-")]
        assert got == want, f"{len(got)} messages; dups or gaps"
        assert c.started == 1, "resumed, not a new session"
        # A new sj-c2s serves the client now; the old one handed over and left.
        pid2 = int(read(os.path.join(env["dir"], "clients", "phone", "pid")))
        assert pid2 != pid1
        assert wait_until(lambda: not os.path.exists(f"/proc/{pid1}"), 10)
        log = c2s.log_text()
        assert "handed over to a resumed connection" in log, log[-3000:]
        assert re.search(r"alice@localhost/phone resumed \(\d+ stanza", log), log[-3000:]
        assert "panicked" not in log
    finally:
        c.close()


def sm_session(c2s, resource):
    """A raw session of alice with stream management on: (client, id)."""
    r = c2s.client(resource)
    r.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    got = r.read_until(rb"<enabled[^>]*/>").decode()
    return r, re.search(r"id='([^']+)'", got).group(1)


def test_an_id_resumes_only_its_own_account_and_only_whole(env):
    c2s = env["c2s"]
    a, sid = sm_session(c2s, "laptop")
    pid = int(read(os.path.join(env["dir"], "clients", "laptop", "pid")))
    # carol, authenticated for her own account, presents alice's id.
    carol = RawXmpp("127.0.0.1", c2s.port, "carol", "carol-local").login(bind=False)
    carol.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{sid}' h='0'/>")
    got = carol.read_until(rb"</failed>|<resumed[^>]*/>")
    assert b"<failed" in got and b"item-not-found" in got, got
    # alice herself with the id's client part and a made-up secret.
    forged = sid.split(".")[0] + ".0123456789abcdef01234567"
    alice2 = RawXmpp("127.0.0.1", c2s.port, "alice", "local-pw").login(bind=False)
    alice2.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{forged}' h='0'/>")
    got = alice2.read_until(rb"</failed>|<resumed[^>]*/>")
    assert b"<failed" in got, got
    # Refused without touching the session: its process still serves it.
    assert os.path.exists(f"/proc/{pid}")
    a.send("<r xmlns='urn:xmpp:sm:3'/>")
    assert b"<a " in a.read_until(rb"<a [^>]*/>")
    # A client refused a resumption binds as usual.
    alice2.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert b"<jid>" in alice2.read_until(rb"</iq>")
    for x in (a, carol, alice2):
        x.close()


def test_acknowledging_more_than_was_sent_is_a_stream_error_and_floods_are_fine(env):
    c2s = env["c2s"]
    a, _ = sm_session(c2s, "flood")
    # A flood of requests and stale acknowledgements: answered, no harm.
    a.send("<r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='0'/>" * 2000)
    a.send("<iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>")
    a.read_until(rb"id=['\"]ping1['\"]")
    a.send("<a xmlns='urn:xmpp:sm:3' h='1000'/>")
    got = a.read_until(rb"</stream:stream>")
    assert b"undefined-condition" in got, got
    a.close()


def in_archive(d, text):
    adir = os.path.join(d, "archive")
    for f in os.listdir(adir):
        path = os.path.join(adir, f)
        if os.path.isfile(path) and text.encode() in open(path, "rb").read():
            return True
    return False


def test_after_the_window_resumption_fails_and_the_client_binds_and_gets_what_it_missed(
        env, contact):
    c2s, relay = env["c2s"], env["relay"]
    bob = contact("bob")
    r = RawXmpp("127.0.0.1", relay.port, "alice", "local-pw", resource="tablet").login()
    r.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    sid = re.search(r"id='([^']+)'", r.read_until(rb"<enabled[^>]*/>").decode()).group(1)
    # Received, never acknowledged (this client sends no <a/>).
    bob.send_message(env["up"], "unacked-1")
    r.read_until(rb"<body>unacked-1</body>")
    cdir = os.path.join(env["dir"], "clients", "tablet")
    relay.cut()
    # The session waits for the window (20 s); what comes meanwhile is not
    # lost when nobody resumes it.
    assert wait_until(lambda: "keeping the session 20 s" in c2s.log_text(), 15)
    bob.send_message(env["up"], "while-away-1")
    assert wait_until(lambda: in_archive(env["dir"], "<body>while-away-1</body>"), 15)
    # Then it ends: directory gone.
    assert wait_until(lambda: not os.path.exists(cdir), 40), c2s.log_text()[-2000:]
    r2 = RawXmpp("127.0.0.1", c2s.port, "alice", "local-pw").login(bind=False)
    r2.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{sid}' h='0'/>")
    got = r2.read_until(rb"</failed>|<resumed[^>]*/>")
    assert b"<failed" in got and b"item-not-found" in got, got
    r2.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>tablet</resource></bind></iq>")
    assert b"alice@localhost/tablet" in r2.read_until(rb"</iq>")
    # The catch-up of the archive: the unacknowledged message and what came
    # while it was away, once each, with their original time.
    seen = r2.read_until(rb"<body>while-away-1</body>.*?</message>")
    bob.send_message(env["up"], "marker")
    seen += r2.read_until(rb"<body>marker</body>")
    assert seen.count(b"<body>unacked-1</body>") == 1, seen[-2000:]
    assert seen.count(b"<body>while-away-1</body>") == 1, seen[-2000:]
    replayed = re.search(rb"<message[^>]*>(?:(?!</message>).)*<body>unacked-1</body>.*?</message>",
                         seen, re.S).group(0)
    assert b"urn:xmpp:delay" in replayed, replayed
    assert "unacknowledged stanza(s) come again" in c2s.log_text()
    r2.close()
