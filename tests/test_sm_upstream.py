"""XEP-0198 toward the server: the upstream connection is cut in the middle
of a 2,000-message flow in both directions (a relay between sj-proxy and
the server), sj-proxy exits 111 and is started again as a supervisor would,
resumes the session, and every message arrives exactly once at the contact,
at every raw client and in the out log, in order. With real Prosody
(mod_smacks) and ejabberd (mod_stream_mgmt)."""

import os
import re
import threading
import time

import pytest

from sjtest import ejabberd as ejabberd_mod
from sjtest.contact import Contact
from sjtest.poll import read, wait_until
from sjtest.prosody import Prosody
from sjtest.proxy import Proxy
from sjtest.relay import Relay

N = 2000
ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw"}


def make_server(kind, window=60):
    if kind == "prosody":
        s = Prosody(modules=("smacks",), options=f"smacks_hibernation_time = {window}\nsmacks_max_queue_size = 10000",
                    loglevel="info").start()
    else:
        if not ejabberd_mod.available():
            pytest.skip("ejabberd is not installed")
        s = ejabberd_mod.Ejabberd(
            modules={"mod_stream_mgmt": {"resume_timeout": window}}).start()
    for u, pw in ACCOUNTS.items():
        s.register(u, pw)
    return s


@pytest.fixture(params=["prosody", "ejabberd"])
def server(request):
    s = make_server(request.param)
    yield s
    s.stop()


class Supervised:
    """sj-proxy through the relay, started again on exit 111 the way s6
    would, in one account directory."""

    def __init__(self, server, relay):
        self.server, self.relay = server, relay
        self.procs = []
        self.workdir = None

    def start(self):
        p = Proxy(self.server.jid("alice"), ACCOUNTS["alice"], self.relay.addr, self.relay.port,
                  workdir=self.workdir)
        self.workdir = p.workdir
        self.procs.append(p.start())
        return p

    @property
    def current(self):
        return self.procs[-1]

    def stderr(self):
        return self.current.stderr_text()

    def log(self):
        """All of sj-proxy's stderr so far, across restarts."""
        return read(self.current.stderr_path) or ""

    def kill(self):
        for p in self.procs:
            p.kill()


def bodies(lines, prefix):
    """Bodies starting with `prefix` in raw-client lines, in order (the
    sent copies, which wrap the message, are not counted)."""
    out = []
    for ln in lines:
        if b"urn:xmpp:carbons:2" in ln:
            continue
        out += [m.decode() for m in re.findall(rb"<body>(" + prefix.encode() + rb"-\d+)</body>", ln)]
    return out


def log_bodies(path, prefix):
    text = read(path) or ""
    return re.findall(r"\b(" + re.escape(prefix) + r"-\d+)$", text, re.M)


class Drainer:
    """Read raw clients' `in` FIFOs all the time, as a live client does
    (mirrord holds what a client does not read for a second at most when
    it stops)."""

    def __init__(self, clients):
        self.clients = clients
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            for c in self.clients:
                c._fill(0.05)

    def close(self):
        self.stop = True
        self.t.join(5)


def archive_bodies(d, prefix):
    """Bodies starting with `prefix` in the account archive, one per line
    (a sent copy's line holds the message once)."""
    adir, out = os.path.join(d, "archive"), []
    for f in sorted(os.listdir(adir)):
        path = os.path.join(adir, f)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                for ln in fh:
                    out += [m.decode() for m in re.findall(rb"<body>(" + prefix.encode() + rb"-\d+)</body>", ln)]
    return out


def expected(prefix, n=N):
    return [f"{prefix}-{i:04d}" for i in range(n)]


def test_cut_mid_flow_resumes_and_loses_nothing(server):
    relay = Relay(server.addr, server.port)
    sup = Supervised(server, relay)
    bob = drainer = None
    try:
        p = sup.start()
        a, b = p.raw_client("a"), p.raw_client("b")
        drainer = Drainer([a, b])
        bound = p.online(timeout=30)
        bob = Contact(server.jid("bob"), ACCOUNTS["bob"], host=server.addr, port=server.port,
                      resource="slix").connect()
        sent = []

        def flood():
            for i in range(N):
                bob.send_message(bound, f"in-{i:04d}")
                sent.append(i)
                if i % 50 == 49:
                    time.sleep(0.05)  # a steady flow, not one burst
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        assert wait_until(lambda: len(sent) >= N // 4, 60), "bob is not sending"
        # Half of our own flow, then the cut while it is in flight.
        for i in range(N // 2):
            a.send(f"<message to='bob@localhost' type='chat'><body>out-{i:04d}</body></message>")
        relay.cut()
        assert p.wait_exit(30) == 111, p.stderr_text()
        # a keeps its end of `out` open: what sj-proxy had not read yet
        # stays in the FIFO for the next one.
        p = sup.start()
        p.clients = {"a": a, "b": b}
        assert p.online(timeout=30) == bound, "a resumed session keeps its JID"
        assert wait_until(lambda: sup.log().count("sj-proxy: info: client a arrived") >= 2, 15)
        for i in range(N // 2, N):
            a.send(f"<message to='bob@localhost' type='chat'><body>out-{i:04d}</body></message>")
        t.join(120)
        assert not t.is_alive()
        # Everything arrives: at bob, at both raw clients, in the log.
        want_in, want_out = expected("in"), expected("out")
        assert wait_until(lambda: len(bob.messages(
            lambda m: str(m["body"]).startswith("out-"))) >= N, 90), \
            f"bob got {len(bob.messages(lambda m: str(m['body']).startswith('out-')))}\n{sup.stderr()}"
        for c in (a, b):
            assert wait_until(lambda: len(bodies(c.lines, "in")) >= N, 90), \
                f"{c.name} got {len(bodies(c.lines, 'in'))}\n{sup.stderr()}"
        logpath = os.path.join(p.dir, "bob@localhost", "out")
        assert wait_until(lambda: len(log_bodies(logpath, "in")) >= N
                          and len(log_bodies(logpath, "out")) >= N, 60), sup.stderr()
        # ... and exactly once, in order: a marker each way flushes any late copy.
        bob.send_message(bound, "marker-in")
        a.send("<message to='bob@localhost' type='chat'><body>marker-out</body></message>")
        bob.wait_message(lambda m: m["body"] == "marker-out", timeout=30)
        for c in (a, b):
            assert wait_until(lambda: any(b"<body>marker-in</body>" in ln for ln in c.lines), 30)
        drainer.close()
        got_out = [str(m["body"]) for m in bob.messages(lambda m: str(m["body"]).startswith("out-"))]
        assert got_out == want_out, f"bob: {len(got_out)} messages, dups or gaps"
        logged_in = log_bodies(logpath, "in")
        assert sorted(logged_in) == want_in, "out log: dups or gaps"
        for c in (a, b):
            got = bodies(c.lines, "in")
            assert sorted(got) == want_in, f"client {c.name}: dups or gaps"
            assert got == logged_in, f"client {c.name} and the out log disagree on the order"
        if isinstance(server, Prosody):
            assert logged_in == want_in, "Prosody keeps the order across a resumption"
        # ejabberd 23.01 may deliver the last stanza of its resent queue
        # after a few new ones; sj-proxy keeps the order it gets.
        assert log_bodies(logpath, "out") == want_out
        assert sorted(archive_bodies(p.dir, "in")) == want_in, "archive: dups or gaps"
        assert archive_bodies(p.dir, "out") == want_out, "archive: dups, gaps or order"
        assert "resumed the upstream session" in sup.log(), sup.stderr()
        assert read(os.path.join(p.dir, "sm", "last")).startswith("resumed")
        assert "panicked" not in sup.log()
    finally:
        if drainer:
            drainer.close()
        if bob:
            bob.disconnect()
        sup.kill()
        relay.close()


def test_resumption_fails_after_a_server_restart_and_binds_afresh():
    server = make_server("prosody")
    relay = Relay(server.addr, server.port)
    sup = Supervised(server, relay)
    bob = None
    try:
        p = sup.start()
        a = p.raw_client("a")
        p.online(timeout=30)
        since1 = p.state().split("\t")[2]
        assert os.path.exists(os.path.join(p.dir, "sm", "session"))
        # The server restarts while sj-proxy is cut off: the session is gone.
        relay.cut()
        assert p.wait_exit(30) == 111
        server.stop()
        server.proc = None
        server.start()
        time.sleep(1.1)  # DIR/state's time has second resolution
        p = sup.start()
        p.clients = {"a": a}
        p.online(timeout=30)
        err = sup.log()
        assert len(re.findall(r"unable to resume the upstream session", err)) == 1, err
        assert read(os.path.join(p.dir, "sm", "last")).startswith("failed")
        assert p.state().split("\t")[2] != since1, "a new session says so in DIR/state"
        # And the fresh session works, with stream management on again.
        bob = Contact(server.jid("bob"), ACCOUNTS["bob"], host=server.addr, port=server.port,
                      resource="slix").connect()
        a.send("<message to='bob@localhost' type='chat'><body>after</body></message>")
        bob.wait_message(lambda m: m["body"] == "after", timeout=30)
        assert sup.log().count("stream management on, resumable") == 2
    finally:
        if bob:
            bob.disconnect()
        sup.kill()
        relay.close()
        server.stop()
