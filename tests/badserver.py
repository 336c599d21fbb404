"""A scripted XMPP "server" that answers a client's stream header with a
valid header and then sends one malformed thing, recording what the client
writes back. Used by test_upstream.py; runnable by hand:

    python3 tests/badserver.py CASE      (CASE from CASES below)
"""

import socket
import sys
import threading
import time

NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' "
          b"id='bad-1' version='1.0' xml:lang='en'>")

# name -> (header to send, payload after it, expected stream error condition)
CASES = {
    "comment": (HEADER, b"<!-- a comment -->", "restricted-xml"),
    "pi": (HEADER, b"<?foo bar?>", "restricted-xml"),
    "doctype": (HEADER, b"<!DOCTYPE message [<!ENTITY x 'y'>]>", "restricted-xml"),
    "undefined-entity": (HEADER, b"<message><body>&foo;</body></message>", "restricted-xml"),
    "invalid-utf8": (HEADER, b"<message><body>\xff\xfe\xc3(</body></message>",
                     "not-well-formed"),
    "illegal-char": (HEADER, b"<message><body>a\x01b</body></message>", "not-well-formed"),
    "bad-name": (HEADER, b"<message><1body>x</1body></message>", "not-well-formed"),
    "duplicate-attribute": (HEADER, b"<message to='a@localhost' to='b@localhost'/>",
                            "not-well-formed"),
    "mismatched-end-tag": (HEADER, b"<message><body>x</bdy></message>", "not-well-formed"),
    "oversize": (HEADER, b"<message><body>" + b"a" * (9 * 1024) + b"</body></message>",
                 "policy-violation"),
    "too-deep": (HEADER, b"<message>" + b"<a>" * 100 + b"</a>" * 100 + b"</message>",
                 "policy-violation"),
    "too-many-attributes": (HEADER, b"<message " +
                            b" ".join(b"a%d='x'" % i for i in range(100)) + b"/>",
                            "policy-violation"),
    "second-stream-header": (HEADER, HEADER.split(b"?>", 1)[1], "bad-format"),
    "wrong-stream-namespace": (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        b"xmlns:stream='urn:example:not-streams' from='localhost' id='bad-2' "
        b"version='1.0' xml:lang='en'>", b"", "invalid-namespace"),
    "wrong-content-namespace": (HEADER.replace(b"'jabber:client'", b"'jabber:server'"), b"",
                                "invalid-namespace"),
}


class BadServer:
    """Listens on 127.0.0.1 (free port), serves one connection in a thread."""

    def __init__(self, case, timeout=15.0):
        self.header, self.payload, self.condition = CASES[case]
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.received = b""      # everything the client wrote
        self.got_header = False  # the client's stream header arrived
        self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.sock.settimeout(self.timeout)
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(self.timeout)
                deadline = time.monotonic() + self.timeout
                # Read the client's stream header: "<stream:stream ... >".
                while not self.got_header:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    self.received += chunk
                    i = self.received.find(b"<stream:stream")
                    if i >= 0 and self.received.find(b">", i) >= 0:
                        self.got_header = True
                    if time.monotonic() > deadline:
                        return
                conn.sendall(self.header)
                if self.payload:
                    conn.sendall(self.payload)
                # Record the reply until the client closes (or the deadline).
                while time.monotonic() < deadline:
                    try:
                        chunk = conn.recv(4096)
                    except socket.timeout:
                        break
                    except OSError:
                        break
                    if not chunk:
                        break
                    self.received += chunk
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.sock.close()
            self.done.set()

    def wait(self, timeout=None):
        return self.done.wait(self.timeout + 5 if timeout is None else timeout)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        sys.exit("usage: badserver.py CASE; cases: " + ", ".join(CASES))
    s = BadServer(sys.argv[1], timeout=60.0)
    print(f"listening on 127.0.0.1:{s.port}, case {sys.argv[1]}", flush=True)
    s.wait()
    sys.stdout.write(s.received.decode("utf-8", "replace") + "\n")
