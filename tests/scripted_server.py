"""A scripted XMPP server for what a real one will not do on demand: fall
silent, send a ping, or stream bytes the test chooses after a session is up.

It completes the minimum handshake sj-proxy needs (PLAIN, which sj-proxy
uses on loopback only; bind; a disco#info answer without carbons) on
127.0.0.1, then hands the socket to the test."""

import re
import socket

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' "
          b"id='s%d' version='1.0' xml:lang='en'>")


class ScriptedServer:
    def __init__(self, timeout=20.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.conn = None
        self.buf = b""

    def read_until(self, pattern):
        """Bytes up to and including the first match of `pattern` (regex)."""
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError(f"peer closed; unread {self.buf[-300:]!r}")
            self.buf += chunk

    def send(self, data):
        self.conn.sendall(data)

    def handshake(self, jid="alice@localhost/scripted", after=b"", header2=None):
        """`after` goes in the same write as the last reply (pipelined);
        `header2` replaces the stream header sent after SASL."""
        self.conn, _ = self.sock.accept()
        self.conn.settimeout(self.sock.gettimeout())
        self.read_until(rb"<stream:stream[^>]*>")
        self.send(HEADER % 1 + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                  b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
        self.read_until(rb"</auth>")
        self.send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        self.read_until(rb"<stream:stream[^>]*>")
        self.send((header2 or HEADER % 2) + b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                  b"</stream:features>")
        self.read_until(rb"</iq>")
        self.send(b"<iq type='result' id='sjp-bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  b"<jid>" + jid.encode() + b"</jid></bind></iq>")
        self.read_until(rb"</iq>")
        self.send(b"<iq type='result' id='sjp-disco' from='localhost'>"
                  b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.read_until(rb"id='sjp-roster'.*?</iq>")
        self.send(b"<iq type='result' id='sjp-roster'><query xmlns='jabber:iq:roster'/></iq>"
                  + after)

    def close(self):
        for s in (self.conn, self.sock):
            if s is not None:
                s.close()
