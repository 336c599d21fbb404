"""Load with accounting (issue 7): 100,000 messages from a contact on a real
Prosody through sj-proxy to 8 clients of the account: 6 raw FIFO clients and
2 XMPP clients through sj-c2s. Every client gets every message exactly once
and in order, and every one is in the contact's out log. The rate is
printed, with the CPU time each process used (where the time goes), not
asserted.

Why this source: the messages enter where a user's messages do, from a
contact's session on the server, so they cross the whole incoming path:
Prosody, the upstream framer and router, messaged (the log) and mirrord
(the fan-out), and sj-c2s for its clients. Messages written by a client
instead would not reach that client (no copy goes back to the origin), and
would mostly measure the server's delivery to the contact. The contact is a
raw socket client (sjtest.xmpp: real SCRAM login, batched writes) because
slixmpp cannot produce 100,000 stanzas in the time; the test Prosody loads no
rate limiting (mod_limits is not enabled) and logs at "info" here.

The sender keeps at most WINDOW messages ahead of the slowest client, so
the Python readers sharing two cores never lag past mirrord's per-client
bound (4 MiB), which would drop a client by design.

Run: python3 -m pytest -q -s tests/test_load.py     (N: $SJ_LOAD_N)
"""

import os
import re
import select
import socket
import threading
import time

import pytest

from conftest import ACCOUNTS
from sjtest.poll import wait_until
from sjtest.prosody import Prosody
from sjtest.proxy import Proxy
from sjtest.xmpp import C2S, RawXmpp

N = int(os.environ.get("SJ_LOAD_N", "100000"))
WINDOW = int(os.environ.get("SJ_LOAD_WINDOW", "5000"))
BATCH = 500
RAW_CLIENTS = 6
C2S_CLIENTS = 2
DEADLINE = 200.0  # seconds for the whole exchange; a bound, not a measure
BODY = re.compile(rb"<body>load (\d+)</body>")


class Tally:
    """Message numbers seen by one client, checked as they arrive: the
    n-th one must be n. Anything else is kept as the first error."""

    def __init__(self, name):
        self.name = name
        self.count = 0
        self.error = None
        self.buf = b""

    def feed(self, data, boundary):
        self.buf += data
        cut = self.buf.rfind(boundary)
        if cut < 0:
            return
        cut += len(boundary)
        done, self.buf = self.buf[:cut], self.buf[cut:]
        for m in BODY.finditer(done):
            k = int(m.group(1))
            if k != self.count and self.error is None:
                self.error = f"{self.name}: message {k} where {self.count} was due"
            self.count += 1


def fifo_reader(fd, tally, stop):
    while not stop.is_set():
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            continue
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            continue
        tally.feed(data, b"\n")


def socket_reader(sock, tally, stop):
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            return
        tally.feed(data, b"</message>")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


@pytest.fixture(scope="module")
def quiet_prosody():
    p = Prosody(loglevel="info").start()
    for user in ("alice", "bob"):
        p.register(user, ACCOUNTS[user])
    yield p
    p.stop()


@pytest.mark.timeout(300)
def test_100k_messages_to_8_clients(quiet_prosody):
    server = quiet_prosody
    proxy = Proxy(server.jid("alice"), ACCOUNTS["alice"], server.addr, server.port,
                  verbose=False)
    raws = [proxy.raw_client(f"raw{i}") for i in range(RAW_CLIENTS)]
    stop = threading.Event()
    threads, socks = [], []
    c2s = None
    try:
        proxy.start()
        bound = proxy.online(timeout=30)
        c2s = C2S(proxy.dir)
        tallies = [Tally(r.name) for r in raws]
        for r, t in zip(raws, tallies):
            threads.append(threading.Thread(target=fifo_reader, args=(r.infd, t, stop),
                                            daemon=True))
        for i in range(C2S_CLIENTS):
            c = c2s.client(f"c2s{i}")
            c.send("<presence/>")
            socks.append(c)
            t = Tally(f"c2s{i}")
            tallies.append(t)
            # What login left in its buffer counts too.
            t.feed(c.buf, b"</message>")
            threads.append(threading.Thread(target=socket_reader, args=(c.sock, t, stop),
                                            daemon=True))
        for th in threads:
            th.start()
        bob = RawXmpp(server.addr, server.port, "bob", ACCOUNTS["bob"], resource="load").login()
        socks.append(bob)

        t0 = time.monotonic()
        deadline = t0 + DEADLINE
        sent = 0
        while sent < N:
            slowest = min(t.count for t in tallies)
            if sent - slowest >= WINDOW:
                assert time.monotonic() < deadline, \
                    f"stalled: sent {sent}, slowest client at {slowest}: " \
                    f"{[(t.name, t.count) for t in tallies]}\n{proxy.stderr_text()}"
                bad = [t.error for t in tallies if t.error]
                assert not bad, bad
                time.sleep(0.002)  # waiting on other threads' counters; no event to wait on
                continue
            k = min(BATCH, N - sent)
            bob.send("".join(f"<message to='{bound}' type='chat' id='l{j}'>"
                             f"<body>load {j}</body></message>" for j in range(sent, sent + k)))
            sent += k
        ok = wait_until(lambda: all(t.count >= N for t in tallies) or
                        any(t.error for t in tallies), max(1.0, deadline - time.monotonic()),
                        step=0.01)
        elapsed = time.monotonic() - t0
        counts = [(t.name, t.count) for t in tallies]
        assert ok, f"not all delivered within {DEADLINE}s: {counts}\n{proxy.stderr_text()}"
        bad = [t.error for t in tallies if t.error]
        assert not bad, bad
        assert all(t.count == N for t in tallies), counts

        # The log: every message, once, in order.
        out = os.path.join(proxy.dir, "bob@localhost", "out")
        line = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d <bob@localhost> load (\d+)$", re.M)

        def logged():
            with open(out, "rb") as f:
                return [int(m.group(1)) for m in line.finditer(f.read())]
        assert wait_until(lambda: len(logged()) >= N, 60), f"{len(logged())} of {N} logged"
        got = logged()
        assert got == list(range(N)), \
            f"log: {len(got)} lines; first wrong at {next(i for i, k in enumerate(got) if k != i)}"

        cpu = {}
        pids = [proxy.proc.pid] + children(proxy.proc.pid) + children(c2s.proc.pid) \
            + [server.proc.pid]
        for pid in pids:
            s = cpu_seconds(pid)
            if s is not None:
                name = comm(pid)
                cpu[name] = cpu.get(name, 0.0) + s
        cpu["python (test)"] = sum(os.times()[:2])
        print(f"\nload: {N} messages to {len(tallies)} clients ({RAW_CLIENTS} raw FIFO, "
              f"{C2S_CLIENTS} sj-c2s) and the out log in {elapsed:.1f} s: "
              f"{N / elapsed:,.0f} messages/s, {N * len(tallies) / elapsed:,.0f} deliveries/s")
        print("load: CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                 sorted(cpu.items(), key=lambda kv: -kv[1])))
        err = proxy.stderr_text()
        for bad in ("dropping", "panicked", "queue is full"):
            assert bad not in err, err
    finally:
        stop.set()
        for th in threads:
            th.join(2)
        for s in socks:
            s.close()
        if c2s is not None:
            c2s.stop()
        proxy.kill()
