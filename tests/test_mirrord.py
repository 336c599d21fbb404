"""mirrord on its own: records on stdin, raw FIFO clients, no server.

Run: python3 -m pytest -s tests/test_mirrord.py
The binary is $MIRRORD, else $SJ_BIN_DIR/mirrord, else
${CARGO_TARGET_DIR:-target}/debug/mirrord (built with cargo if missing).
"""

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sjtest.proxy import bin_dir

REPO = Path(__file__).resolve().parent.parent
JID = "alice@localhost/sj-proxy"
BARE = "alice@localhost"
DROP_LINE = "mirrord: warning: dropping client {name}: queue over {n} bytes"


def mirrord_bin():
    if os.environ.get("MIRRORD"):
        return os.environ["MIRRORD"]
    path = Path(bin_dir()) / "mirrord"
    if not os.environ.get("SJ_BIN_DIR") and not path.exists():
        if not shutil.which("cargo"):
            pytest.skip("no mirrord binary and no cargo")
        subprocess.run(["cargo", "build", "-q", "-p", "mirrord"], cwd=REPO, check=True)
    return str(path)


def make_client(d, name):
    c = Path(d) / "clients" / name
    c.mkdir(parents=True, mode=0o700)
    os.mkfifo(c / "in", 0o600)
    os.mkfifo(c / "out", 0o600)
    return c


class Reader:
    """A raw client reading its `in` FIFO in a thread, stamping each line."""

    def __init__(self, d, name):
        # Read-write, as a reader that must never see EOF does (DESIGN §3).
        self.fd = os.open(Path(d) / "clients" / name / "in", os.O_RDWR)
        self.lines = []  # (monotonic_ns, text)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buf = b""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic_ns()
            buf += data
            *complete, buf = buf.split(b"\n")
            with self.cond:
                self.lines.extend((now, l.decode()) for l in complete)
                self.cond.notify_all()

    def wait_for(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred([l for _, l in self.lines]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def texts(self):
        with self.cond:
            return [l for _, l in self.lines]

    def close(self):
        os.close(self.fd)


class Mirrord:
    def __init__(self, d, *args):
        self.p = subprocess.Popen(
            [mirrord_bin(), *args, "-d", str(d), JID],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        self.err = []
        self.t = threading.Thread(target=self._stderr, daemon=True)
        self.t.start()

    def _stderr(self):
        for line in self.p.stderr:
            self.err.append(line.decode().rstrip("\n"))

    def send(self, *records):
        self.p.stdin.write("".join(r + "\n" for r in records).encode())
        self.p.stdin.flush()

    def close(self, timeout=5.0):
        self.p.stdin.close()
        rc = self.p.wait(timeout)
        self.t.join(2)
        return rc

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def acct(tmp_path):
    d = tmp_path / "acct"
    (d / "clients").mkdir(parents=True)
    procs, readers = [], []
    yield d, procs, readers
    for p in procs:
        p.kill()
    for r in readers:
        r.close()


def sent_copy(origin, n):
    return (
        f"<message from='{BARE}' to='{JID}' type='chat'>"
        "<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"<message xmlns='jabber:client' from='{BARE}/{origin}' to='bob@localhost' "
        f"type='chat' id='s{n}'><body>hi {n}</body></message></forwarded></sent></message>"
    )


def test_targeting_broadcast_origin_exclusion(acct):
    d, procs, readers = acct
    for n in ("a", "b", "c", "noreader"):
        make_client(d, n)
    a, b, c = (Reader(d, n) for n in ("a", "b", "c"))
    readers += [a, b, c]
    m = Mirrord(d)
    procs.append(m)
    pres = "<presence from='bob@localhost/phone'><show>away</show></presence>"
    iq_b = f"<iq to='{BARE}/b' from='bob@localhost' type='result' id='x1'/>"
    copy_a = sent_copy("a", 1)
    copy_in = sent_copy("in", 2)  # from DIR/in: every client gets it
    to_up = f"<message to='{JID}' from='bob@localhost/phone' type='chat'><body>yo</body></message>"
    to_gone = f"<iq to='{BARE}/gone' type='result' id='x2'/>"
    done = "<presence from='carol@localhost' type='unavailable'/>"
    m.send(pres, iq_b, copy_a, copy_in, to_up, to_gone, done)
    for r in (a, b, c):
        assert r.wait_for(lambda ls: done in ls), r.texts()
    assert a.texts() == [pres, copy_in, to_up, done]
    assert b.texts() == [pres, iq_b, copy_a, copy_in, to_up, done]
    assert c.texts() == [pres, copy_a, copy_in, to_up, done]
    assert m.close() == 0
    assert not [e for e in m.err if "fatal" in e], m.err


def test_client_arriving_and_leaving_while_running(acct):
    d, procs, readers = acct
    make_client(d, "a")
    a = Reader(d, "a")
    readers.append(a)
    m = Mirrord(d)
    procs.append(m)
    m.send("<presence id='p0'/>")
    assert a.wait_for(lambda ls: "<presence id='p0'/>" in ls)
    make_client(d, "late")
    late = Reader(d, "late")
    readers.append(late)
    # Noticed by inotify or the 1 s rescan: probe until it gets one.
    deadline = time.monotonic() + 5
    i = 0
    while time.monotonic() < deadline:
        i += 1
        m.send(f"<presence id='q{i}'/>")
        if late.wait_for(lambda ls: len(ls) > 0, timeout=0.1):
            break
    assert late.texts(), "late client never received anything"
    # Addressed to it now.
    m.send(f"<iq to='{BARE}/late' type='result' id='only'/>", "<presence id='end'/>")
    assert late.wait_for(lambda ls: "<presence id='end'/>" in ls)
    assert f"<iq to='{BARE}/late' type='result' id='only'/>" in late.texts()
    assert a.wait_for(lambda ls: "<presence id='end'/>" in ls)
    assert not [l for l in a.texts() if "id='only'" in l]
    # It leaves (reader closes, directory removed): the others go on.
    late.close()
    readers.remove(late)
    shutil.rmtree(d / "clients" / "late")
    m.send("<presence id='after'/>")
    assert a.wait_for(lambda ls: "<presence id='after'/>" in ls)
    assert m.close() == 0


def pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * p / 100))]


@pytest.mark.parametrize("with_stuck", [True, False], ids=["stuck", "baseline"])
def test_stuck_client_does_not_delay_others_and_is_dropped(acct, with_stuck):
    d, procs, readers = acct
    for n in ("fast", "stuck", "noreader"):
        make_client(d, n)
    fast = Reader(d, "fast")
    readers.append(fast)
    # Opened for reading, never read (baseline: nobody opens it).
    if with_stuck:
        stuck_fd = os.open(d / "clients" / "stuck" / "in", os.O_RDONLY | os.O_NONBLOCK)
    # Small enough that the stuck client passes it (pipe + bound < all sent),
    # roomy enough that a fast reader in Python never does under load.
    bound = 256 * 1024
    m = Mirrord(d, "-q", str(bound))
    procs.append(m)
    n = 3000
    pad = "x" * 200
    sent_at = {}
    for i in range(n):
        sent_at[i] = time.monotonic_ns()
        m.send(f"<message id='m{i}' type='chat'><body>{pad}</body></message>")
        if i % 50 == 0:
            time.sleep(0.001)  # spread the load a little, like real traffic
    want = f"<message id='m{n - 1}' type='chat'><body>{pad}</body></message>"
    # Bounded deadline, not a timing threshold.
    assert fast.wait_for(lambda ls: want in ls, timeout=20), len(fast.texts())
    with fast.cond:
        got = list(fast.lines)
    assert len(got) == n
    lat = []
    for i, (t, line) in enumerate(got):
        assert line.startswith(f"<message id='m{i}' "), f"order at {i}"
        lat.append((t - sent_at[i]) / 1e6)
    lat.sort()
    print(
        f"\nmirrord fast-client latency, {'with a stuck client' if with_stuck else 'baseline'}, "
        f"{n} records: "
        f"p50 {pct(lat, 50):.3f} ms, p99 {pct(lat, 99):.3f} ms, max {lat[-1]:.3f} ms"
    )
    assert m.close() == 0
    drops = [e for e in m.err if e == DROP_LINE.format(name="stuck", n=bound)]
    assert len(drops) == (1 if with_stuck else 0), m.err
    if not with_stuck:
        return
    assert not [e for e in m.err if "fast" in e or "noreader" in e], m.err
    # The stuck client got at most the pipe's worth plus the bound, then nothing.
    data = b""
    while True:
        try:
            chunk = os.read(stuck_fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    os.close(stuck_fd)
    assert 0 < len(data) < n * 240


def test_dropped_client_comes_back_when_it_registers_again(acct):
    d, procs, readers = acct
    make_client(d, "a")
    a = Reader(d, "a")
    readers.append(a)
    make_client(d, "s")
    stuck_fd = os.open(d / "clients" / "s" / "in", os.O_RDWR)
    m = Mirrord(d, "-q", "8k")
    procs.append(m)
    # In steps the fast client keeps up with, so only the stuck one passes
    # the small bound.
    for step in range(30):
        m.send(
            *[f"<message id='m{i}'><body>{'z' * 500}</body></message>"
              for i in range(step * 10, step * 10 + 10)]
        )
        assert a.wait_for(lambda ls: len(ls) == step * 10 + 10), m.err
    drop = DROP_LINE.format(name="s", n=8192)
    deadline = time.monotonic() + 5
    while drop not in m.err and time.monotonic() < deadline:
        time.sleep(0.02)
    assert drop in m.err, m.err
    assert a.wait_for(lambda ls: len(ls) == 300)
    # Not written to while it is the same FIFO, even once it reads again.
    m.send("<presence id='still-dropped'/>")
    assert a.wait_for(lambda ls: "<presence id='still-dropped'/>" in ls)
    os.close(stuck_fd)
    # Registers again: a new directory and FIFOs.
    shutil.rmtree(d / "clients" / "s")
    make_client(d, "s")
    s = Reader(d, "s")
    readers.append(s)
    deadline = time.monotonic() + 5
    i = 0
    while time.monotonic() < deadline and not s.texts():
        i += 1
        m.send(f"<presence id='back{i}'/>")
        s.wait_for(lambda ls: len(ls) > 0, timeout=0.1)
    assert s.texts() and s.texts()[0].startswith("<presence id='back"), s.texts()[:3]
    assert m.close() == 0
    assert m.err.count(drop) == 1, m.err


def test_eof_with_stuck_client_exits_within_grace(acct):
    d, procs, readers = acct
    make_client(d, "stuck")
    stuck_fd = os.open(d / "clients" / "stuck" / "in", os.O_RDWR)
    m = Mirrord(d)  # default bound (4 MiB): never dropped here
    procs.append(m)
    m.send(*[f"<message id='m{i}'><body>{'y' * 500}</body></message>" for i in range(400)])
    time.sleep(0.2)
    t0 = time.monotonic()
    assert m.close(timeout=5) == 0
    assert time.monotonic() - t0 < 3
    assert not [e for e in m.err if "dropping" in e], m.err
    os.close(stuck_fd)


def test_usage_errors(tmp_path):
    r = subprocess.run([mirrord_bin()], capture_output=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 100
    assert r.stderr.decode().startswith("mirrord: fatal: ")
    r = subprocess.run(
        [mirrord_bin(), "-q", "lots", "-d", str(tmp_path), JID], capture_output=True
    )
    assert r.returncode == 100


def test_env_fallback(tmp_path):
    d = tmp_path / "acct"
    make_client(d, "a")
    a = Reader(d, "a")
    try:
        env = dict(os.environ, SJ_DIR=str(d), SJ_JID=JID)
        p = subprocess.Popen([mirrord_bin()], stdin=subprocess.PIPE, env=env)
        p.communicate(b"<presence id='env'/>\n", timeout=5)
        assert p.returncode == 0
        assert a.wait_for(lambda ls: "<presence id='env'/>" in ls)
    finally:
        a.close()
