"""The hostile-input table (tests/hostile.py) against the live programs.

Server side: a scripted upstream server on 127.0.0.1 feeds sj-proxy (under
tcpclient, fds 6/7, with its four daemons). Client side: raw TCP to sj-c2s
under tcpserver, and raw FIFO clients writing DIR/clients/NAME/out and
DIR/in. No Prosody: a real server would refuse to relay most of these
inputs, and only a scripted one shows exactly what sj-proxy sends upstream.

After every row: no 'panicked' on stderr, the designed exit code, and no
file created outside DIR. Server rows that end the stream run four at a
time, each with its own sj-proxy; sj-c2s rows run one after the other (their
exit codes and stderr come from one tcpserver log); rows that do not end a
stream share one session.

SJ_HOSTILE_REPORT=PATH writes the results table (tests/hostile_results.md
is that file, committed).
"""

import base64
import collections
import os
import re
import socket
import stat
import subprocess
import threading
import time
import types
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from hostile import CASES, C2S_HDR, UP
from scripted_server import HEADER, ScriptedServer
from sjtest.poll import wait_until
from sjtest.prosody import free_port, make_workdir
from sjtest.proxy import Proxy, bin_dir, sj_bin, unstamp

NS_STREAMS = b"urn:ietf:params:xml:ns:xmpp-streams"
BARE = "alice@localhost"
WAIT = 20.0
PARALLEL = 4
MARK = "sjpwn"  # every path-aimed payload carries it; ancestors of DIR are checked for it

RESULTS = {}    # (side, name) -> (observed outcome, problems)


def by_side(*sides):
    return [c for c in CASES if c.side in sides]


def selected(request, *sides):
    """The rows of these sides whose tests this session runs (so `-k` runs few)."""
    ids = {it.callspec.id for it in request.session.items if hasattr(it, "callspec")}
    return [c for c in by_side(*sides) if case_id(c) in ids]


def case_id(c):
    return f"{c.side}:{c.name}"


# ------------------------------------------------------------------ files
def tree(root, skip=()):
    """Every path under `root` (relative), not descending into `skip`."""
    out = set()
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if os.path.join(d, x) not in skip]
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


def ancestors_marked(path):
    """Names carrying MARK in every ancestor directory of `path` and in /tmp."""
    out = set()
    p = os.path.abspath(path)
    dirs = {"/tmp"}
    while p != "/":
        p = os.path.dirname(p)
        dirs.add(p)
    for d in dirs:
        try:
            out |= {os.path.join(d, n) for n in os.listdir(d) if MARK in n}
        except OSError:
            pass
    return out


class Snapshot:
    """What exists around DIR (the work directory holding it, its ancestors)."""

    def __init__(self, workdir, dirpath):
        self.workdir, self.dir = workdir, dirpath
        self.before = self.take()

    def take(self):
        return tree(self.workdir, skip=(self.dir,)), ancestors_marked(self.workdir)

    def created(self):
        a, b = self.take()
        return sorted(a - self.before[0]) + sorted(b - self.before[1])


def stream_error(data, cond):
    pat = (rb"<stream:error\b[^>]*>\s*<" + re.escape(cond.encode()) + rb"\s+xmlns=(['\"])"
           + re.escape(NS_STREAMS) + rb"\1")
    return re.search(pat, data) is not None


def conditions(data):
    """The stream error conditions in `data`, for the report."""
    found = [m.group(1).decode() for m in re.finditer(
        rb"<stream:error\b[^>]*>\s*<([a-z-]+)\s+xmlns=['\"]" + re.escape(NS_STREAMS), data)]
    return " ".join(found) or "(none)"


def common(problems, log_text, code, want_code, created):
    if "panicked" in log_text:
        problems.append("panicked: " + log_text[log_text.find("panicked") - 200:][:600])
    if code != want_code:
        problems.append(f"exit {code}, designed {want_code}")
    if created:
        problems.append(f"created outside DIR: {created}")


def record(c, observed, problems):
    RESULTS[(c.side, c.name)] = (observed, list(problems))


def check(c):
    observed, problems = RESULTS[(c.side, c.name)]
    assert not problems, f"{case_id(c)}: expected {c.expect}, observed {observed}: {problems}"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base():
    return make_workdir("hostile-")


def scripted_proxy(srv, workdir, **kw):
    server = types.SimpleNamespace(jid=lambda u: f"{u}@localhost", addr="127.0.0.1",
                                   port=srv.port, tls_port=srv.port)
    p = Proxy(server.jid("alice"), "alice-pw", server.addr, server.port, workdir=workdir, **kw)
    return p.start()


def read_to_eof(conn, timeout=WAIT):
    """What the peer sends until it closes, and how it closed: "eof" (a FIN,
    the clean end), "reset" (a TCP reset: the kernel may have dropped what
    was not read yet) or "timeout"."""
    conn.settimeout(timeout)
    got = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            return got, "timeout"
        except OSError:
            return got, "reset"
        if not chunk:
            return got, "eof"
        got += chunk
    return got, "timeout"


def payload(c):
    """The row's bytes, with opts['trailer'] bytes of valid stanzas behind."""
    n = c.opts.get("trailer", 0)
    if not n:
        return c.data
    one = b"<message to='x@y'><body>" + b"t" * 1000 + b"</body></message>"
    return c.data + (one * (n // len(one) + 1))[:n]


def send_all(sock_send, data, step):
    """Write `data` in `step`-byte writes without waiting for an answer; a
    peer that refused it and closed may cut the writes short."""
    try:
        for i in range(0, len(data), step):
            sock_send(data[i:i + step])
    except OSError:
        pass


def ended_cleanly(how, problems):
    if how != "eof":
        problems.append(f"the connection ended with a {how}, not a clean close")


# ------------------------------------------------------------------ server rows
def run_server(c, base):
    """One sj-proxy: `c.data` is the server's whole answer to its header
    (server-pre), or comes after a complete session (server)."""
    wd = os.path.join(base, c.side + "-" + c.name)
    os.makedirs(wd)
    srv = ScriptedServer(timeout=WAIT)
    p = scripted_proxy(srv, wd, verbose=False)
    snap = Snapshot(wd, p.dir)
    problems = []
    got = b""
    code = None
    try:
        if c.side == "server-pre":
            srv.conn, _ = srv.sock.accept()
            srv.conn.settimeout(WAIT)
            srv.read_until(rb"<stream:stream[^>]*>")
        else:
            srv.handshake(jid=UP.decode())
            p.online()
        data = payload(c)
        send_all(srv.send, data, c.opts.get("chunk") or len(data))
        got, how = read_to_eof(srv.conn)
        got = srv.buf + got
        ended_cleanly(how, problems)
        # The server's side of the closing handshake: sj-proxy waits for it.
        try:
            srv.conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        code = p.wait_exit(WAIT)
    finally:
        srv.close()
        p.kill()
    cond = c.expect.split(":", 1)[1]
    if not stream_error(got, cond):
        problems.append(f"no <{cond}/> in {got[-300:]!r}")
    common(problems, p.stderr_text(), code, 1, snap.created())
    record(c, f"stream error {conditions(got)} received, {how}, exit {code}", problems)


@pytest.fixture(scope="module")
def server_runs(base, request):
    cases = selected(request, "server-pre", "server")
    with ThreadPoolExecutor(PARALLEL) as ex:
        futs = {ex.submit(run_server, c, base): c for c in cases}
        for f, c in futs.items():
            try:
                f.result(timeout=120)
            except Exception as e:  # reported per case
                record(c, "harness error", [repr(e)])


# The first test of each group waits for the whole group (a module fixture).
GROUP_TIMEOUT = pytest.mark.timeout(600)


@GROUP_TIMEOUT
@pytest.mark.parametrize("c", by_side("server-pre", "server"), ids=case_id)
def test_server_side(server_runs, c):
    check(c)


# ------------------------------------------------------------------ sj-c2s under tcpserver
class C2SListener:
    """tcpserver -v running sj-c2s -d DIR; exit codes come from its log."""

    def __init__(self, dirpath, workdir):
        self.log_path = os.path.join(workdir, "tcpserver.log")
        self.log = open(self.log_path, "ab")
        self.port = free_port()
        env = dict(os.environ, PATH=f"{bin_dir()}:{os.environ['PATH']}")
        self.proc = subprocess.Popen(
            ["tcpserver", "-v", "-RHl0", "127.0.0.1", str(self.port), sj_bin("sj-c2s"),
             "-d", dirpath], env=env, stderr=self.log, start_new_session=True)
        wait_until(self.listening, timeout=10)

    def listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def exit_code(self, local_port, timeout=WAIT):
        """The exit status of the sj-c2s that served the connection from local_port."""
        def find():
            t = self.text()
            m = re.search(rf"tcpserver: ok (\d+) \S+ \S*::{local_port}\n", t)
            if not m:
                return None
            e = re.search(rf"tcpserver: end {m.group(1)} status (\d+)\n", t)
            return e and [int(e.group(1))]  # a list: status 0 is an answer
        found = wait_until(find, timeout=timeout)
        if not found:
            return None
        st = found[0]
        return st >> 8 if st & 0x7f == 0 else -(st & 0x7f)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class C2SConn:
    """A raw TCP client of sj-c2s."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.local_port = self.s.getsockname()[1]
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_until(self, pattern):
        rx = re.compile(pattern, re.S)
        end = time.monotonic() + WAIT
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out
            if time.monotonic() > end:
                raise TimeoutError(f"no {pattern!r} in {self.buf[-300:]!r}")
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError(f"closed; no {pattern!r} in {self.buf[-300:]!r}")
            self.buf += chunk

    def login(self, resource):
        self.send(C2S_HDR)
        self.read_until(rb"</stream:features>")
        pw = base64.b64encode(b"\0alice\0local-pw")
        self.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + pw
                  + b"</auth>")
        self.read_until(rb"<success[^>]*/>|</success>")
        self.send(C2S_HDR)
        self.read_until(rb"</stream:features>")
        res = resource if isinstance(resource, bytes) else resource.encode()
        self.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  b"<resource>" + res + b"</resource></bind></iq>")
        got = self.read_until(rb"</iq>")
        m = re.search(rb"<jid>([^<]*)</jid>", got)
        assert m, got
        self.bound = m.group(1).decode()
        if not isinstance(resource, bytes):
            assert self.bound == f"{BARE}/{resource}", got
        return self

    def rest(self):
        got, how = read_to_eof(self.s)
        got, self.buf = self.buf + got, b""
        return got, how

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


# ------------------------------------------------------------------ the live session
class LiveUpstream(ScriptedServer):
    """The scripted server after the handshake: a reader thread keeps all
    sj-proxy sent, and the second header declares prefixes some rows use."""

    HEADER2 = (HEADER % 2)[:-1] + (b" xmlns:cb='urn:xmpp:carbons:2'"
                                   b" xmlns:r='jabber:iq:roster'>")

    def start_reader(self):
        self.cond = threading.Condition()
        self.got = self.buf
        self.eof = False
        self.conn.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                chunk = self.conn.recv(65536)
            except OSError:
                chunk = b""
            with self.cond:
                if not chunk:
                    self.eof = True
                else:
                    self.got += chunk
                self.cond.notify_all()
            if not chunk:
                return

    def mark(self):
        with self.cond:
            return len(self.got)

    def wait_for(self, pattern, start=0, timeout=WAIT):
        rx = re.compile(pattern, re.S)
        with self.cond:
            ok = self.cond.wait_for(lambda: rx.search(self.got, start) or self.eof, timeout)
            m = rx.search(self.got, start)
            if not m:
                raise TimeoutError(f"upstream got no {pattern!r} (eof {self.eof}); "
                                   f"tail {self.got[-400:]!r}")
            assert ok
            return m


def handshake2(srv, jid):
    srv.handshake(jid=jid.decode(), header2=LiveUpstream.HEADER2)


class LineReaderThread:
    """Lines from a socket (sj-c2s writes one record a line once bound)."""

    def __init__(self, conn):
        self.conn = conn
        self.lines = []
        self.cond = threading.Condition()
        self.buf = conn.buf
        conn.buf = b""
        conn.s.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                chunk = self.conn.s.recv(65536)
            except OSError:
                chunk = b""
            with self.cond:
                if chunk:
                    self.buf += chunk
                    *done, self.buf = self.buf.split(b"\n")
                    self.lines.extend(done)
                else:
                    self.lines.append(None)
                self.cond.notify_all()
            if not chunk:
                return

    def wait(self, pred, start=0, timeout=WAIT):
        with self.cond:
            def find():
                for i in range(start, len(self.lines)):
                    if self.lines[i] is None or pred(self.lines[i]):
                        return i + 1
                return None
            i = self.cond.wait_for(find, timeout)
            if not i or self.lines[i - 1] is None:
                raise TimeoutError(f"c2s client: no match; tail {self.lines[-5:]!r}")
            return i


class Live:
    """One sj-proxy session with two raw clients and one sj-c2s client."""

    def __init__(self, base):
        self.workdir = os.path.join(base, "live")
        os.makedirs(self.workdir)
        self.srv = LiveUpstream(timeout=WAIT)
        self.proxy = scripted_proxy(self.srv, self.workdir)
        self.dir = self.proxy.dir
        handshake2(self.srv, UP)
        self.srv.start_reader()
        self.proxy.online()
        # A handler a path escape from DIR/iq.d would find and run.
        trap = os.path.join(self.dir, "sjpwn-handler")
        with open(trap, "w") as f:
            f.write("#!/bin/sh\ntouch \"$SJ_DIR/handler-ran\"\n")
        os.chmod(trap, 0o700)
        os.makedirs(os.path.join(self.dir, "iq.d"), exist_ok=True)
        subprocess.run([sj_bin("sj-passwd"), "-d", self.dir], input=b"local-pw\n", check=True)
        with open(os.path.join(self.dir, "passwd"), "rb") as f:
            self.passwd = f.read()
        self.watch = self.proxy.raw_client("a-watch")   # the primary client: first by name
        self.hostile = self.proxy.raw_client("hostile")
        self.c2s = C2SListener(self.dir, self.workdir)
        self.tcp = C2SConn(self.c2s.port).login("tcpwatch")
        self.tcp.send(b"<iq type='set' id='cb1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        self.tcp.read_until(rb"<iq [^>]*id='cb1'[^>]*/>")
        self.tcp_lines = LineReaderThread(self.tcp)
        self.snap = Snapshot(self.workdir, self.dir)
        self.pids = {n: self.proxy.child_pids(n) for n in ("messaged", "presenced", "iqd",
                                                             "mirrord")}
        self.n = 0
        self.watch_pos = 0
        self.tcp_pos = 0
        self.srv_pos = self.srv.mark()
        self.barrier()  # both clients are in mirrord's list before the first row

    def stderr(self):
        with open(self.proxy.stderr_path, errors="replace") as f:
            return f.read()

    def barrier(self):
        """A marker message from bob; returns the lines each client got
        before it since the last barrier."""
        self.n += 1
        tag = f"mark-{self.n}".encode()
        self.srv.send(b"<message from='bob@localhost/m' to='" + UP + b"' type='chat'><body>"
                      + tag + b"</body></message>")
        line = self.watch.wait_line(lambda ln: tag + b"</body>" in ln, timeout=WAIT)
        i = self.watch.lines.index(line, self.watch_pos)
        # Records as they were before sj-proxy stamped its archive id.
        got_watch = [unstamp(ln) for ln in self.watch.lines[self.watch_pos:i]]
        self.watch_pos = i + 1
        j = self.tcp_lines.wait(lambda ln: tag + b"</body>" in ln, start=self.tcp_pos)
        got_tcp = [unstamp(ln) for ln in self.tcp_lines.lines[self.tcp_pos:j - 1]]
        self.tcp_pos = j
        return got_watch, got_tcp

    def contacts(self):
        return set(os.listdir(self.dir))


def top_attr(line, name):
    m = re.match(rb"<[^\s>/]+((?:\s+[^\s=]+\s*=\s*(?:'[^']*'|\"[^\"]*\"))*)", line)
    if not m:
        return None
    for a in re.finditer(rb"\s+([^\s=]+)\s*=\s*('([^']*)'|\"([^\"]*)\")", m.group(1)):
        if a.group(1) == name.encode():
            return a.group(3) if a.group(3) is not None else a.group(4)
    return None


def file_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


def files_check(live, spec, before_contacts, problems):
    d = live.dir
    if spec in ("no-eve", "no-new-contact"):
        # messaged takes records in order: once it logged this row's
        # marker, it is done with the row, so an absence means something.
        mark = f"mark-{live.n}"
        log = os.path.join(d, "bob@localhost", "out")
        if not wait_until(lambda: mark in (file_text(log) or ""), 10):
            problems.append(f"messaged did not log {mark}")
    if spec == "no-eve":
        if os.path.exists(os.path.join(d, "eve@localhost")):
            problems.append("a forged carbon created DIR/eve@localhost")
    elif spec == "no-eve-roster":
        if "eve@localhost" in (file_text(os.path.join(d, "roster")) or ""):
            problems.append("a forged roster stanza reached DIR/roster")
    elif spec.startswith("roster-has:"):
        jid = spec.split(":", 1)[1]
        if not wait_until(lambda: jid in (file_text(os.path.join(d, "roster")) or ""), 10):
            problems.append(f"DIR/roster lacks {jid}")
    elif spec == "no-new-contact":
        # messaged makes a directory for every roster item when it notices
        # DIR/roster change, so earlier rows' roster pushes may land now.
        roster = {ln.split("\t", 1)[0]
                  for ln in (file_text(os.path.join(d, "roster")) or "").splitlines()}
        new = live.contacts() - before_contacts - roster
        if new:
            problems.append(f"new contact directories {new}")
    elif spec.startswith("log:") or spec.startswith("bob-log:"):
        if spec.startswith("bob-log:"):
            comp, text = "bob@localhost", spec.split(":", 1)[1]
        else:
            comp, text = spec[4:].rsplit(":", 1)
        p = os.path.join(d, comp, "out")
        if not wait_until(lambda: text in (file_text(p) or ""), 10):
            problems.append(f"{comp}/out lacks {text!r}; DIR has {sorted(os.listdir(d))}")
    elif spec.startswith("presence:"):
        p = os.path.join(d, spec.split(":", 1)[1], "presence")
        if not wait_until(lambda: (file_text(p) or "").startswith("away"), 10):
            problems.append(f"{p} is {file_text(p)!r}")
    elif spec == "no-handler-run":
        if os.path.exists(os.path.join(d, "handler-ran")):
            problems.append("a handler outside DIR/iq.d was run")
    else:
        raise ValueError(spec)


def run_live_case(live, c):
    problems = []
    log_start = len(live.stderr())
    before_contacts = live.contacts()
    srv_start = live.srv.mark()
    iq_before = set(os.listdir(os.path.join(live.dir, "iq"))) \
        if os.path.isdir(os.path.join(live.dir, "iq")) else set()
    send_all(live.srv.send, c.data, c.opts.get("chunk") or len(c.data))
    exp = c.expect
    rid = c.opts.get("id")
    if exp.startswith("refused:") or exp == "answered":
        ty = "error" if exp.startswith("refused:") else "result"
        m = live.srv.wait_for(rb"<iq\b[^>]*\bid='" + re.escape(rid.encode()) + rb"'[^>]*"
                              rb"(/>|>.*?</iq>)", srv_start)
        ans = m.group(0)
        if b"type='" + ty.encode() + b"'" not in ans:
            problems.append(f"answer is not type {ty}: {ans!r}")
        if ty == "error" and exp.split(":")[1].encode() not in ans:
            problems.append(f"answer lacks {exp.split(':')[1]}: {ans!r}")
    if exp == "delegated":
        # iqd's copy takes a longer way than the marker: wait for it first.
        def is_copy(ln):
            return (top_attr(ln, "to") == f"{BARE}/a-watch".encode()
                    and top_attr(ln, "id") == rid.encode())
        try:
            live.watch.wait_line(is_copy, timeout=WAIT)
        except TimeoutError:
            pass  # reported below
    got_watch, got_tcp = live.barrier()
    want = c.opts.get("want", c.data)
    if exp in ("delivered", "answered"):
        if want not in got_watch:
            problems.append(f"raw client did not get it unchanged; got {got_watch!r:.600}")
        if not got_tcp:
            problems.append("the sj-c2s client got nothing")
        observed = "delivered unchanged" if not problems else "not delivered unchanged"
        if exp == "answered":
            observed = "answered upstream, delivered to every client"
    elif exp == "delegated":
        hit = [ln for ln in got_watch if top_attr(ln, "to") == f"{BARE}/a-watch".encode()
               and top_attr(ln, "id") == rid.encode()]
        if not hit:
            problems.append(f"not delegated to the primary client: {got_watch!r:.600}")
        observed = "delegated to the primary client, id kept" if hit else "not delegated"
    else:
        # Nothing of this row reached a client (delegation never happens here).
        if got_watch:
            problems.append(f"raw client got {got_watch!r:.600}")
        if got_tcp:
            problems.append(f"sj-c2s client got {got_tcp!r:.600}")
        observed = {"dropped": "dropped", "stored": "stored by iqd"}.get(exp.split(":")[0], exp)
        if exp.startswith("refused:"):
            observed = f"refused with {exp.split(':')[1]}"
    if exp == "dropped":
        want_log = c.opts["log"]
        if not wait_until(lambda: want_log in live.stderr()[log_start:], 10):
            problems.append(f"no log line with {want_log!r}: {live.stderr()[log_start:][-500:]!r}")
    if c.opts.get("answer"):
        # The sender (bob) learns it was not delivered; the error is the
        # stanza's kind, to its from, and carries nothing of it.
        try:
            m = live.srv.wait_for(rb"<message type='error' to='bob@localhost/x'[^>]*>"
                                  rb"<error type='modify'><policy-violation [^>]*/>.*?</message>",
                                  srv_start, timeout=10)
            if len(m.group(0)) > 1000:
                problems.append(f"the error answer is {len(m.group(0))} bytes")
            observed += ", policy-violation error to the sender"
        except TimeoutError as e:
            problems.append(f"no policy-violation error to the sender: {e}")
    if exp == "stored":
        iqdir = os.path.join(live.dir, "iq")

        def stored():
            try:
                names = set(os.listdir(iqdir)) - iq_before
            except FileNotFoundError:
                return None
            return [n for n in names if urllib.parse.unquote(n) == rid]
        names = wait_until(stored, 10)
        if not names:
            problems.append(f"no DIR/iq file for {rid!r}: {sorted(os.listdir(iqdir))[:20]}")
        else:
            p = os.path.join(iqdir, names[0])
            if "/" in names[0] or os.path.dirname(os.path.realpath(p)) != os.path.realpath(iqdir):
                problems.append(f"result stored at {p}")
            observed = f"stored as DIR/iq/{names[0]}"
    if c.opts.get("files"):
        files_check(live, c.opts["files"], before_contacts, problems)
    return observed, problems, log_start


def run_fifo_case(live, c, k):
    problems = []
    log_start = len(live.stderr())
    srv_start = live.srv.mark()
    token = f"tok{k}x".encode()
    barrier = (b"<message to='carol@localhost' type='chat'><body>fb-" + token
               + b"</body></message>")
    via = c.opts.get("via")
    origin = "in" if via == "in" else "hostile"
    data = c.data.replace(b">T<", b">" + token + b"<").replace(b"id='T'", b"id='" + token + b"'")
    if via == "in":
        fd = os.open(os.path.join(live.dir, "in"), os.O_WRONLY)
        try:
            for rec in (data, barrier):  # one write per record, as sj.7 asks
                os.write(fd, rec + b"\n")
        finally:
            os.close(fd)
    else:
        # One write: the bad line and the next; reading must resume at the LF.
        live.hostile.send(data + b"\n" + barrier)
    live.srv.wait_for(re.escape(b"fb-" + token) + rb"</body>", srv_start)
    seg = live.srv.got[srv_start:live.srv.mark()]
    got_watch, got_tcp = live.barrier()
    if c.expect == "dropped":
        if b"to='bob@localhost'" in seg or b"xmlns='urn:evil'" in seg:
            problems.append(f"sent upstream: {seg[:400]!r}")
        copies = [ln for ln in got_watch if b"fb-" + token not in ln]
        if copies:
            problems.append(f"sibling got {copies!r:.400}")
        want_log = c.opts["log"]
        if want_log not in live.stderr()[log_start:]:
            problems.append(f"no log line with {want_log!r}: {live.stderr()[log_start:][-400:]!r}")
        observed = "dropped with a log line"
    else:
        observed = check_restamped(data, token, seg, got_watch, origin, problems)
    return observed, problems, log_start


def check_restamped(data, token, seg, got_watch, origin, problems):
    """What the server got (`seg`) carries no from; a message's sent copy at
    the sibling names BARE/origin as its sender."""
    recs = [r for r in re.findall(rb"<(?:message|iq|presence)\b.*?</(?:message|iq|presence)>",
                                  seg, re.S) if token in r]
    if not recs:
        problems.append(f"not sent upstream: {seg[:400]!r}")
    for r in recs:
        if top_attr(r, "from") is not None:
            problems.append(f"sent upstream with from: {r!r}")
    if data.startswith(b"<message"):
        copies = [ln for ln in got_watch if token in ln and b"carbons:2" in ln]
        want = f"from='{BARE}/{origin}'".encode()
        if not copies or want not in copies[0]:
            problems.append(f"no sent copy naming {BARE}/{origin}: {got_watch!r:.400}")
    return "re-stamped, no from upstream"


def run_c2s_live_case(live, c, k):
    problems = []
    log_start = len(live.stderr())
    srv_start = live.srv.mark()
    token = f"ctok{k}x".encode()
    data = c.data.replace(b">T<", b">" + token + b"<").replace(b"id='T'", b"id='" + token + b"'")
    live.tcp.send(data)
    live.srv.wait_for(re.escape(token), srv_start)
    got_watch, _ = live.barrier()
    seg = live.srv.got[srv_start:live.srv.mark()]
    observed = check_restamped(data, token, seg, got_watch, "tcpwatch", problems)
    return observed, problems, log_start


@pytest.fixture(scope="module")
def live_runs(base, request):
    live = Live(base)
    order = selected(request, "live", "fifo", "c2s-live")
    try:
        for k, c in enumerate(order):
            if live.proxy.proc.poll() is not None:
                record(c, "harness error", [f"sj-proxy exited {live.proxy.proc.returncode}"])
                continue
            try:
                if c.side == "live":
                    observed, problems, log_start = run_live_case(live, c)
                elif c.side == "fifo":
                    observed, problems, log_start = run_fifo_case(live, c, k)
                else:
                    observed, problems, log_start = run_c2s_live_case(live, c, k)
            except Exception as e:
                record(c, "harness error", [repr(e)])
                continue
            text = live.stderr()[log_start:] + live.c2s.text()
            code = live.proxy.proc.poll()
            common(problems, text, code, None, live.snap.created())
            record(c, observed, problems)
        # The session survived all of it: same daemons, DIR's own files intact.
        after = {n: live.proxy.child_pids(n) for n in live.pids}
        end_problems = []
        if after != live.pids:
            end_problems.append(f"daemons restarted: {live.pids} -> {after}")
        if not stat.S_ISFIFO(os.stat(os.path.join(live.dir, "in")).st_mode):
            end_problems.append("DIR/in is no longer a FIFO")
        if not (file_text(os.path.join(live.dir, "state")) or "").startswith("online\t"):
            end_problems.append("DIR/state is not online")
        with open(os.path.join(live.dir, "passwd"), "rb") as f:
            if f.read() != live.passwd:
                end_problems.append("DIR/passwd changed")
        clients = set(os.listdir(os.path.join(live.dir, "clients")))
        if clients != {"a-watch", "hostile", "tcpwatch"}:
            end_problems.append(f"DIR/clients holds {clients}")
        live.tcp.send(b"</stream:stream>")
        live.tcp.close()
        code = live.proxy.stop()
        if code != 0:
            end_problems.append(f"sj-proxy exit {code} on SIGTERM")
        if "panicked" in live.stderr() or "panicked" in live.c2s.text():
            end_problems.append("panicked")
        live.end_problems = end_problems
        yield live
    finally:
        live.proxy.kill()
        live.c2s.stop()
        live.srv.close()


@GROUP_TIMEOUT
@pytest.mark.parametrize("c", by_side("live", "fifo", "c2s-live"), ids=case_id)
def test_live_session(live_runs, c):
    check(c)


def test_live_session_survives(live_runs):
    assert not live_runs.end_problems, live_runs.end_problems


# ------------------------------------------------------------------ c2s rows
def run_c2s_bind(c, listener, live):
    """Bind the resource `c.data`: kept as the client name when it is a safe
    one, else a generated sj-XXXXXXXX; the directory is DIR/clients/NAME."""
    problems = []
    conn = C2SConn(listener.port).login(c.data)
    name = conn.bound.split("/", 1)[1]
    cdir = os.path.join(live.dir, "clients", name)
    if c.expect == "kept":
        if name != c.data.decode():
            problems.append(f"bound {conn.bound}, not the resource asked for")
    elif not re.fullmatch(r"sj-[0-9a-f]{8}", name):
        problems.append(f"bound {conn.bound}, not a generated name")
    if not (os.path.isdir(cdir) and os.path.dirname(os.path.realpath(cdir))
            == os.path.realpath(os.path.join(live.dir, "clients"))):
        problems.append(f"no client directory {cdir}")
    conn.send(b"</stream:stream>")
    _, how = conn.rest()
    ended_cleanly(how, problems)
    conn.close()
    code = listener.exit_code(conn.local_port)
    return f"bound {'kept' if c.expect == 'kept' else 'generated'} name", problems, code, 0


def run_c2s(c, listener, k):
    problems = []
    log_start = len(listener.text())
    conn = C2SConn(listener.port)
    how = None
    try:
        if c.side == "c2s":
            conn.login(f"h{k}")
        send_all(conn.send, payload(c), c.opts.get("chunk") or len(payload(c)))
        if c.expect == "accepted":
            got = conn.read_until(rb"</stream:features>")
            conn.close()
        else:
            got, how = conn.rest()
            # The client's side of the closing handshake.
            conn.s.shutdown(socket.SHUT_WR)
    except OSError as e:
        got, how = conn.buf, f"error ({e})"
    finally:
        conn.close()
    code = listener.exit_code(conn.local_port)
    text = listener.text()[log_start:]
    if c.expect == "accepted":
        if b"<mechanism>" not in got:
            problems.append(f"no features: {got[-300:]!r}")
        want_code = 0
        observed = f"accepted, exit {code}"
    else:
        cond = c.expect.split(":", 1)[1]
        if not stream_error(got, cond):
            problems.append(f"no <{cond}/> in {got[-300:]!r}")
        ended_cleanly(how, problems)
        want_code = 1
        observed = f"stream error {conditions(got)} received, {how}, exit {code}"
    return observed, problems, text, code, want_code


@pytest.fixture(scope="module")
def c2s_runs(live_runs_for_c2s, request):
    live, listener = live_runs_for_c2s
    for k, c in enumerate(selected(request, "c2s-pre", "c2s", "c2s-bind")):
        try:
            if c.side == "c2s-bind":
                log_start = len(listener.text())
                observed, problems, code, want_code = run_c2s_bind(c, listener, live)
                text = listener.text()[log_start:]
            else:
                observed, problems, text, code, want_code = run_c2s(c, listener, k)
        except Exception as e:
            record(c, "harness error", [repr(e)])
            continue
        common(problems, text, code, want_code, live.snap.created())
        if c.side == "c2s" and wait_until(
                lambda: not os.path.exists(os.path.join(live.dir, "clients", f"h{k}")), 10) is False:
            problems.append(f"DIR/clients/h{k} left behind")
        record(c, observed, problems)


@pytest.fixture(scope="module")
def live_runs_for_c2s(base):
    """A session of its own for the c2s rows: they register and drop clients."""
    wd = os.path.join(base, "c2s")
    os.makedirs(wd)
    srv = LiveUpstream(timeout=WAIT)
    p = scripted_proxy(srv, wd, verbose=False)
    handshake2(srv, UP)
    srv.start_reader()
    p.online()
    subprocess.run([sj_bin("sj-passwd"), "-d", p.dir], input=b"local-pw\n", check=True)
    listener = C2SListener(p.dir, wd)
    live = types.SimpleNamespace(dir=p.dir, snap=Snapshot(wd, p.dir))
    try:
        yield live, listener
        assert p.proc.poll() is None, "sj-proxy died during the c2s rows"
        assert p.stop() == 0
    finally:
        listener.stop()
        p.kill()
        srv.close()


@GROUP_TIMEOUT
@pytest.mark.parametrize("c", by_side("c2s-pre", "c2s", "c2s-bind"), ids=case_id)
def test_c2s_side(c2s_runs, c):
    check(c)


# ------------------------------------------------------------------ floods
def run_floods(base, cases):
    wd = os.path.join(base, "flood")
    os.makedirs(wd)
    srv = LiveUpstream(timeout=WAIT)
    p = scripted_proxy(srv, wd, verbose=False)
    snap = Snapshot(wd, p.dir)
    d = p.dir
    try:
        handshake2(srv, UP)
        srv.start_reader()
        p.online()
        pids = {n: p.child_pids(n) for n in ("messaged", "presenced", "iqd", "mirrord")}
        for c in cases:
            n = c.opts["n"]
            problems = []
            start = srv.mark()
            log_start = len(open(p.stderr_path, errors="replace").read())
            kind = c.opts["check"]
            if kind == "contacts":
                data = b"".join(b"<message from='c%d@localhost/r' to='%s' type='chat'>"
                                b"<body>hello %d</body></message>" % (i, UP, i) for i in range(n))
            elif kind == "presence":
                data = b"".join(b"<presence from='p%d@localhost/r' to='%s'><show>dnd</show>"
                                b"</presence>" % (i, UP) for i in range(n))
            elif kind == "result-ids":
                data = b"".join(b"<iq type='result' id='flood-%d' from='bob@localhost/x' to='%s'/>"
                                % (i, UP) for i in range(n))
            else:
                data = b"".join(b"<iq type='get' id='g-%d' from='bob@localhost/x' to='%s'>"
                                b"<query xmlns='%s'/></iq>"
                                % (i, UP, b"urn:xmpp:ping" if i % 2 else b"urn:x:nothing")
                                for i in range(n))
                data = data.replace(b"<query xmlns='urn:xmpp:ping'/>", b"<ping xmlns='urn:xmpp:ping'/>")
            srv.send(data)
            if kind == "contacts":
                def logged(i):
                    return f"hello {i}" in (file_text(os.path.join(d, f"c{i}@localhost", "out"))
                                            or "")
                # messaged goes in order: the last one logged means all were.
                ok = wait_until(lambda: logged(n - 1), 180, step=0.5)
                missing = [i for i in range(n) if not logged(i)]
                if not ok or missing:
                    problems.append(f"{len(missing)} of {n} contact logs lack their message")
                observed = f"{n - len(missing)} of {n} contact directories with their message"
            elif kind == "presence":
                def pres(i):
                    return file_text(os.path.join(d, f"p{i}@localhost", "presence")) or ""
                ok = wait_until(lambda: pres(n - 1).startswith("dnd"), 180, step=0.5)
                missing = [i for i in range(n) if not pres(i).startswith("dnd")]
                if missing:
                    problems.append(f"{len(missing)} of {n} presence files missing")
                observed = f"{n - len(missing)} of {n} presence files"
            elif kind == "result-ids":
                iqdir = os.path.join(d, "iq")
                ok = wait_until(lambda: os.path.exists(os.path.join(iqdir, f"flood-{n - 1}")), 180,
                                step=0.5)
                files = os.listdir(iqdir) if os.path.isdir(iqdir) else []
                if not ok:
                    problems.append("the last result was not stored")
                if len(files) > 256:
                    problems.append(f"DIR/iq holds {len(files)} files, over 256")
                observed = f"DIR/iq kept {len(files)} files (bound 256), the newest present"
            else:
                def answered():
                    with srv.cond:
                        return srv.got.count(b"id='g-", start)
                wait_until(lambda: answered() >= n, 180, step=0.5)
                with srv.cond:
                    seg = srv.got[start:]
                ids = collections.Counter(re.findall(rb"<iq [^>]*id='g-(\d+)'", seg))
                once = sum(1 for i in range(n) if ids.get(b"%d" % i) == 1)
                if once != n:
                    problems.append(f"{once} of {n} gets answered exactly once")
                observed = f"{once} of {n} gets answered exactly once"
            text = open(p.stderr_path, errors="replace").read()[log_start:]
            common(problems, text, p.proc.poll(), None, snap.created())
            after = {n_: p.child_pids(n_) for n_ in pids}
            if after != pids:
                problems.append(f"daemons restarted: {pids} -> {after}")
            record(c, observed, problems)
        assert p.stop() == 0
    finally:
        p.kill()
        srv.close()


@pytest.fixture(scope="module")
def flood_runs(base, request):
    run_floods(base, selected(request, "flood"))


@GROUP_TIMEOUT
@pytest.mark.parametrize("c", by_side("flood"), ids=case_id)
def test_flood(flood_runs, c):
    check(c)


# ------------------------------------------------------------------ the report
def test_report(tmp_path):
    """Writes $SJ_HOSTILE_REPORT (tests/hostile_results.md) from the rows
    run; without it, the report goes to a scratch file and is only checked."""
    path = os.environ.get("SJ_HOSTILE_REPORT") or str(tmp_path / "hostile_results.md")
    missing = [case_id(c) for c in CASES if (c.side, c.name) not in RESULTS]
    if missing:
        pytest.skip(f"the report needs the whole table; {len(missing)} rows not run")
    write_report(path)
    with open(path) as f:
        text = f.read()
    rows = text.split("## Every case", 1)[1].count("\n| ") - 1  # less the header row
    assert rows == len(CASES), f"{rows} rows for {len(CASES)} cases"


def files_text(spec):
    if spec.startswith("log:"):
        return f"logged in DIR/{spec[4:].rsplit(':', 1)[0]}/out"
    if spec.startswith("bob-log:"):
        return "logged in DIR/bob@localhost/out"
    if spec.startswith("roster-has:"):
        return f"DIR/roster gains {spec.split(':', 1)[1]}"
    if spec.startswith("presence:"):
        return f"DIR/{spec.split(':', 1)[1]}/presence written"
    return {"no-eve": "no DIR/eve@localhost", "no-eve-roster": "DIR/roster unchanged",
            "no-new-contact": "no contact directory", "no-handler-run": "no handler run"}[spec]


def expect_text(c, details=False):
    if details and c.opts.get("files"):
        return expect_text(c) + "; " + files_text(c.opts["files"])
    e = c.expect
    if e.startswith("error:"):
        more = ", 1 MiB more written behind" if c.opts.get("trailer") else ""
        return f"stream error {e[6:]} received, clean close{more}, exit 1"
    if e == "dropped" and c.opts.get("answer"):
        return "dropped, log line, session up, error to the sender"
    if e == "dropped":
        return "dropped, log line"
    if e.startswith("refused:"):
        return f"iq error {e[8:]}"
    return {"delivered": "delivered unchanged", "accepted": "stream accepted",
            "restamped": "re-stamped from", "answered": "iq result", "stored": "DIR/iq/<id>",
            "delegated": "to the primary client", "counted": "bounded",
            "kept": "bound as asked", "renamed": "bound a generated name"}.get(e, e)


def write_report(path):
    sides = {"server-pre": "server, before auth", "server": "server, after auth",
             "live": "server, live session", "c2s-pre": "sj-c2s, before auth",
             "c2s": "sj-c2s, after bind", "c2s-live": "sj-c2s, live session",
             "c2s-bind": "sj-c2s, bind",
             "fifo": "FIFO (clients/NAME/out, DIR/in)", "flood": "server, flood session"}
    lines = ["# Hostile-input table: results", "",
             "Generated by `SJ_HOSTILE_REPORT=tests/hostile_results.md python3 -m pytest "
             "tests/test_hostile.py`; the cases are in tests/hostile.py. Every case also "
             "checks: no panic, the designed exit code, no file created outside DIR.", "",
             "| category | cases | sides | outcome | passed |", "|---|---|---|---|---|"]
    cats = collections.OrderedDict()
    for c in CASES:
        cats.setdefault(c.category, []).append(c)
    total = passed = 0
    for cat, cs in cats.items():
        outcomes = collections.Counter(expect_text(c) for c in cs)
        ok = sum(1 for c in cs if not RESULTS[(c.side, c.name)][1])
        total += len(cs)
        passed += ok
        out = "; ".join(f"{k} ({v})" for k, v in outcomes.items())
        sd = "; ".join(sides[x] for x in sides if any(c.side == x for c in cs))
        lines.append(f"| {md(cat)} | {len(cs)} | {md(sd)} | {md(out)} | {ok}/{len(cs)} |")
    lines += [f"| **all** | **{total}** | | | **{passed}/{total}** |", "", "## Every case", "",
              "| category | side | case | expected | observed |", "|---|---|---|---|---|"]
    for c in CASES:
        obs, probs = RESULTS[(c.side, c.name)]
        mark = "" if not probs else " **FAILED**"
        lines.append(f"| {md(c.category.split(' (')[0])} | {c.side} | {md(c.name)} | "
                     f"{md(expect_text(c, True))} | {md(obs)}{mark} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def md(s):
    return str(s).replace("|", "\\|").replace("<", "&lt;")
