"""Run sj-proxy under a UCSPI wrapper (tcpclient, or socat for TLS) and talk
to it through raw clients (DIR/clients/NAME/{in,out} FIFOs)."""

import errno
import fcntl
import os
import re
import select
import shlex
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

from .prosody import REPO, make_workdir

JC = "{jabber:client}"


def bin_dir():
    """$SJ_BIN_DIR, else ${CARGO_TARGET_DIR:-REPO/target}/debug."""
    if os.environ.get("SJ_BIN_DIR"):
        return os.environ["SJ_BIN_DIR"]
    return os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"), "debug")


def sj_bin(name="sj-proxy"):
    path = os.path.join(bin_dir(), name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} not found or not executable "
                                f"(build it with `cargo build`, or set SJ_BIN_DIR)")
    return path


def parse_record(line):
    """Parse one record (a line, bytes or str) the way a record is defined:
    the default namespace jabber:client is implied. Returns an Element."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    assert "\n" not in line.rstrip("\n") and "\r" not in line, f"record spans lines: {line!r}"
    root = ET.fromstring("<r xmlns='jabber:client'>" + line.rstrip("\n") + "</r>")
    kids = list(root)
    assert len(kids) == 1, f"not exactly one element: {line!r}"
    assert not (root.text or "").strip() and not (kids[0].tail or "").strip(), line
    return kids[0]


_STAMP = re.compile(rb"<stanza-id xmlns='urn:xmpp:sid:0' by='[^']*' id='\d+'/>(</message>)$")


def unstamp(line):
    """A record as it was before sj-proxy stamped its archive id on it
    (the XEP-0359 <stanza-id/> it adds as a message's last child, sj(7))."""
    return _STAMP.sub(rb"\1", line)


def local(tag):
    return tag.rsplit("}", 1)[-1]


class RawClient:
    """A hand-made raw client: mkdir + mkfifo, `in` opened read-write and
    non-blocking (never EOF), `out` opened for writing once sj-proxy reads it."""

    def __init__(self, dirpath, name):
        self.name = name
        self.path = os.path.join(dirpath, "clients", name)
        os.makedirs(os.path.join(dirpath, "clients"), mode=0o700, exist_ok=True)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        for f in ("in", "out"):
            p = os.path.join(self.path, f)
            if not os.path.exists(p):
                os.mkfifo(p, 0o600)
        self.infd = os.open(os.path.join(self.path, "in"), os.O_RDWR | os.O_NONBLOCK)
        self.outfd = None
        self.buf = b""
        self.lines = []   # every complete line received, bytes without the LF
        self.pos = 0      # lines before this index were consumed by wait_line

    def _fill(self, timeout):
        r, _, _ = select.select([self.infd], [], [], max(0.0, timeout))
        if not r:
            return False
        try:
            chunk = os.read(self.infd, 65536)
        except BlockingIOError:
            return False
        self.buf += chunk
        *complete, self.buf = self.buf.split(b"\n")
        self.lines.extend(complete)
        return True

    def drain(self):
        while self._fill(0):
            pass
        return self.lines

    def wait_line(self, predicate=lambda line: True, timeout=10.0):
        """Next unconsumed line (bytes, no LF) satisfying predicate. Lines
        skipped on the way are consumed too."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pos < len(self.lines):
                line = self.lines[self.pos]
                self.pos += 1
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"raw client {self.name}: no matching line within {timeout}s; "
                                   f"got {self.lines[-10:]!r}")
            self._fill(left)

    def wait_record(self, predicate=lambda el: True, timeout=10.0):
        """Like wait_line, but the predicate gets the parsed element; returns (line, element)."""
        found = {}

        def pred(line):
            try:
                el = parse_record(line)
            except (ET.ParseError, AssertionError, UnicodeDecodeError):
                return False
            if predicate(el):
                found["el"] = el
                return True
            return False
        line = self.wait_line(pred, timeout)
        return line, found["el"]

    def send(self, record, timeout=10.0):
        """Write one record (str or bytes; LF appended) into clients/NAME/out,
        waiting (bounded) for sj-proxy to open the FIFO for reading."""
        if isinstance(record, str):
            record = record.encode()
        if not record.endswith(b"\n"):
            record += b"\n"
        if self.outfd is None:
            p = os.path.join(self.path, "out")
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.outfd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nobody opened {p} for reading within {timeout}s")
                time.sleep(0.05)  # no event exists for "a reader opened the FIFO"
            fl = fcntl.fcntl(self.outfd, fcntl.F_GETFL)
            fcntl.fcntl(self.outfd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        n = os.write(self.outfd, record)
        assert n == len(record)

    def close(self):
        for fd in (self.infd, self.outfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.infd = self.outfd = None


class Proxy:
    """One sj-proxy process for one account.

    mode: "tcp" (tcpclient -RHl0 ADDR PORT sj-proxy ...) or
          "tls" (socat OPENSSL:ADDR:PORT,verify=0 EXEC:'sj-proxy -t ...',fdin=6,fdout=7)."""

    def __init__(self, jid, password, addr, port, mode="tcp", resource=None, workdir=None,
                 verbose=True, extra_args=(), env=None):
        self.jid = jid
        self.bare = jid.split("/")[0]
        self.password = password
        self.addr, self.port, self.mode = addr, port, mode
        self.resource = resource
        self.workdir = workdir or make_workdir("proxy-")
        self.dir = os.path.join(self.workdir, "dir")
        self.pwfile = os.path.join(self.workdir, "password")
        self.stderr_path = os.path.join(self.workdir, "stderr")
        self.stdout_path = os.path.join(self.workdir, "stdout")
        self.verbose = verbose
        self.extra_args = list(extra_args)
        # Added to the environment sj-proxy and its daemons inherit (for
        # example SJ_MIRRORD_QUEUE, mirrord's queue bound).
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.ready_fd = None
        self.ready = False
        self.clients = {}

    def argv(self, ready_fd):
        args = [sj_bin("sj-proxy")]
        if self.verbose:
            args.append("-v")
        if self.mode == "tls":
            args.append("-t")
        args += ["-d", self.dir, "-p", self.pwfile, "-n", str(ready_fd)]
        if self.resource:
            args += ["-r", self.resource]
        args += self.extra_args + [self.jid]
        if self.mode == "tcp":
            return ["tcpclient", "-RHl0", self.addr, str(self.port)] + args
        if self.mode == "tls":
            # socat closes inherited fds, so a small script run by EXEC opens
            # the readiness FIFO as fd `ready_fd` and execs sj-proxy.
            script = os.path.join(self.workdir, "run-tls.sh")
            with open(script, "w") as f:
                f.write("#!/bin/sh\n")
                f.write(f"exec {ready_fd}>{shlex.quote(self.ready_fifo)}\n")
                f.write("exec " + " ".join(shlex.quote(a) for a in args) + "\n")
            os.chmod(script, 0o700)
            assert not re.search(r"[\s',!:]", script), f"path unsafe for socat EXEC: {script!r}"
            return ["socat", f"OPENSSL:{self.addr}:{self.port},verify=0,snihost={self.bare.split('@')[-1]}",
                    f"EXEC:{script},fdin=6,fdout=7"]
        raise ValueError(self.mode)

    def start(self):
        with open(self.pwfile, "w") as f:
            f.write(self.password + "\n")
        os.chmod(self.pwfile, 0o600)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._stderr = open(self.stderr_path, "ab")
        self._stdout = open(self.stdout_path, "ab")
        if self.mode == "tls":
            self.ready_fifo = os.path.join(self.workdir, "ready")
            os.mkfifo(self.ready_fifo, 0o600)
            # Non-blocking reader first, so that the script's open for writing
            # does not block; no writer yet is not EOF on Linux.
            self.ready_fd = os.open(self.ready_fifo, os.O_RDONLY | os.O_NONBLOCK)
            self.proc = subprocess.Popen(self.argv(9), stdin=subprocess.DEVNULL,
                                         stdout=self._stdout, stderr=self._stderr,
                                         start_new_session=True, env=self.env)
            return self
        r, w = os.pipe()
        # Keep the readiness fd clear of 0-2 and of the wrapper's 6/7.
        w2 = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(w)
        self.proc = subprocess.Popen(self.argv(w2), stdin=subprocess.DEVNULL,
                                     stdout=self._stdout, stderr=self._stderr,
                                     pass_fds=(w2,), start_new_session=True, env=self.env)
        os.close(w2)
        self.ready_fd = r
        return self

    # -- observation --------------------------------------------------------
    def wait_ready(self, timeout=15.0):
        """Block until the readiness fd gets its newline (or EOF/timeout)."""
        r, _, _ = select.select([self.ready_fd], [], [], timeout)
        if not r:
            raise TimeoutError(f"no readiness newline within {timeout}s\n{self.stderr_text()}")
        data = os.read(self.ready_fd, 64)
        if data != b"\n":
            raise AssertionError(f"readiness fd gave {data!r}, wanted b'\\n' "
                                 f"(exit {self.proc.poll()})\n{self.stderr_text()}")
        self.ready = True
        return data

    def state(self):
        try:
            with open(os.path.join(self.dir, "state")) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def wait_state(self, word, timeout=15.0):
        """Poll DIR/state (bounded) until its first word is `word`; returns the line."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.state()
            if s and s.split() and s.split()[0] == word:
                return s
            if self.proc.poll() is not None and word != "offline":
                raise AssertionError(f"sj-proxy exited {self.proc.returncode} before state "
                                     f"{word!r} (state {s!r})\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"state not {word!r} within {timeout}s (state {s!r})\n"
                                   f"{self.stderr_text()}")
            time.sleep(0.05)

    def online(self, timeout=15.0):
        """Wait for readiness and the online state; returns the bound full JID."""
        self.wait_ready(timeout)
        line = self.wait_state("online", timeout)
        # WORD<TAB>JID<TAB>SINCE (sj::state); older builds separated by spaces.
        line = line.rstrip("\n")
        return line.split("\t")[1] if "\t" in line else line.split()[1]

    def raw_client(self, name):
        c = RawClient(self.dir, name)
        self.clients[name] = c
        return c

    def child_pids(self, name):
        """PIDs of sj-proxy's children called `name` (pgrep -P)."""
        r = subprocess.run(["pgrep", "-P", str(self.proxy_pid()), "-x", name],
                           capture_output=True, text=True, timeout=5)
        return [int(x) for x in r.stdout.split()]

    def proxy_pid(self):
        if self.mode == "tcp":
            return self.proc.pid  # tcpclient execs sj-proxy
        r = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "sj-proxy"],
                           capture_output=True, text=True, timeout=5)
        pids = r.stdout.split()
        if not pids:
            raise AssertionError("no sj-proxy under socat")
        return int(pids[0])

    def stderr_text(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "--- sj-proxy stderr ---\n" + f.read()[-8000:]
        except OSError:
            return ""

    def wait_exit(self, timeout=15.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"sj-proxy did not exit within {timeout}s\n{self.stderr_text()}")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Send sig (to sj-proxy itself), wait bounded; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proxy_pid() if self.mode == "tls" else self.proc.pid, sig)
            except (ProcessLookupError, AssertionError):
                pass
        return self.wait_exit(timeout)

    def kill(self):
        """Last-resort cleanup: kill the whole process group we started."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for c in self.clients.values():
            c.close()
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        for f in (getattr(self, "_stderr", None), getattr(self, "_stdout", None)):
            if f:
                f.close()
