"""A minimal XMPP client on a plain socket (SCRAM-SHA-1, bind), for tests that
need what slixmpp will not do: stop in the middle of a stanza, or read and
write hundreds of thousands of stanzas without parsing each one in Python.
And sj-c2s under tcpserver for an account directory. Every wait is bounded."""

import base64
import hashlib
import hmac
import os
import re
import socket
import subprocess
import threading
import time

from .poll import wait_until
from .prosody import free_port, wait_port
from .proxy import bin_dir, sj_bin

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")


def _b64(b):
    return base64.b64encode(b).decode()


class RawXmpp:
    """One logged-in session: `login()` does SCRAM-SHA-1 and binds `resource`."""

    def __init__(self, host, port, user, password, domain="localhost", resource="raw",
                 timeout=20.0, rcvbuf=None):
        self.addr = (host, port)
        # A small receive buffer (SO_RCVBUF, set before connecting so the
        # window stays small) for a client that is to fall behind quickly.
        self.rcvbuf = rcvbuf
        self.user, self.password, self.domain = user, password, domain
        self.resource = resource
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.jid = None

    def read_until(self, pattern):
        """Bytes up to and including the first match of `pattern` (regex)."""
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + self.timeout
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} within {self.timeout}s: {self.buf[-300:]!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"peer closed; unread {self.buf[-300:]!r}")
            self.buf += chunk

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _open(self):
        self.send(HEADER.format(to=self.domain))
        self.read_until(rb"</stream:features>")

    def login(self, bind=True):
        """SCRAM-SHA-1, the restart, and (unless `bind` is false) bind."""
        if self.rcvbuf:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            self.sock.settimeout(self.timeout)
            self.sock.connect(self.addr)
        else:
            self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        self._open()
        nonce = _b64(os.urandom(12))
        cfirst = f"n={self.user},r={nonce}"
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
                  f"{_b64(('n,,' + cfirst).encode())}</auth>")
        ch = self.read_until(rb"</challenge>").decode()
        sfirst = base64.b64decode(re.search(r"<challenge[^>]*>([^<]*)<", ch).group(1)).decode()
        attrs = dict(kv.split("=", 1) for kv in sfirst.split(","))
        salted = hashlib.pbkdf2_hmac("sha1", self.password.encode(),
                                     base64.b64decode(attrs["s"]), int(attrs["i"]))
        ckey = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
        final_wo = f"c=biws,r={attrs['r']}"
        sig = hmac.new(hashlib.sha1(ckey).digest(), f"{cfirst},{sfirst},{final_wo}".encode(),
                       hashlib.sha1).digest()
        proof = bytes(a ^ b for a, b in zip(ckey, sig))
        self.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                  f"{_b64((final_wo + ',p=' + _b64(proof)).encode())}</response>")
        got = self.read_until(rb"</success>|<success[^>]*/>|</failure>")
        if b"success" not in got:
            raise AssertionError(f"{self.user}: SASL failed: {got!r}")
        self._open()
        if not bind:
            return self
        self.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{self.resource}</resource></bind></iq>")
        got = self.read_until(rb"</iq>|<iq[^>]*/>").decode()
        m = re.search(r"<jid>([^<]+)</jid>", got)
        assert m, got
        self.jid = m.group(1)
        return self

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class Reader(threading.Thread):
    """Reads a byte stream (socket or FIFO fd) in a thread and hands each
    chunk to `on_data(bytes)`; stops at EOF, error, or `stop()`."""

    def __init__(self, read, on_data, name):
        super().__init__(name=name, daemon=True)
        self._read = read
        self.on_data = on_data
        self.stopped = False
        self.error = None

    def run(self):
        try:
            while not self.stopped:
                data = self._read()
                if data is None:
                    continue
                if not data:
                    return
                self.on_data(data)
        except Exception as e:  # reported by the test
            self.error = e

    def stop(self):
        self.stopped = True


class C2S:
    """sj-c2s under tcpserver on 127.0.0.1 for account directory `d`, with the
    local password set through sj-passwd."""

    def __init__(self, d, password="local-pw", log_path=None, args=(), mode="-d", verbose=False):
        self.dir = d
        # mode "-R": serve every account in d's parent directory.
        self.root = os.path.dirname(d) if mode == "-R" else None
        self.password = password
        r = subprocess.run([sj_bin("sj-passwd"), "-d", d], input=password + "\n",
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        self.port = free_port()
        self.log_path = log_path or os.path.join(os.path.dirname(d), "sj-c2s.log")
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PATH=bin_dir() + os.pathsep + os.environ["PATH"])
        # verbose: tcpserver logs "end PID status S" (a wait status) for
        # each sj-c2s, so a test can check its exit code.
        opts = ["-vRHl0"] if verbose else ["-RHl0"]
        self.proc = subprocess.Popen(
            ["tcpserver", *opts, "127.0.0.1", str(self.port), sj_bin("sj-c2s"), *args,
             mode, self.root or d],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            start_new_session=True)
        wait_port("127.0.0.1", self.port, 15, self.proc)

    def client(self, resource, **kw):
        """A logged-in RawXmpp session through this listener; returns once
        DIR/clients/<resource> exists."""
        c = RawXmpp("127.0.0.1", self.port, "alice", self.password, resource=resource,
                    **kw).login()
        assert wait_until(lambda: os.path.isdir(os.path.join(self.dir, "clients", resource)),
                          15), f"clients/{resource} not registered"
        return c

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self._log.close()
