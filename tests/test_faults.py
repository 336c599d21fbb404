"""Faults against the live stack (issue 7): the server connection cut or
closed with a stream error, daemons killed under traffic, clients dying in
the middle of a stanza, a client FIFO nobody reads, a full disk under the
out logs, SIGTERM under load. Each test asserts what the user sees: the exit
code, the log line the design names, that nothing the server delivered or a
client handed over is lost (or exactly what may be, and no more), and that
routing goes on. tests/fault_results.md summarises the outcomes.

Run: python3 -m pytest -q tests/test_faults.py
"""

import os
import re
import shutil
import signal
import subprocess
import time
import types

import pytest

from scripted_server import ScriptedServer
from sjtest.poll import read, wait_until
from sjtest.proxy import JC, local, parse_record

BOB = "bob@localhost"
ALICE = "alice@localhost"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d <([^>]+)> (.*)$")
CARBONS = "{urn:xmpp:carbons:2}"
FORWARD = "{urn:xmpp:forward:0}"


# -- helpers ---------------------------------------------------------------

def no_panic(p):
    assert "panicked" not in p.stderr_text(), p.stderr_text()


def scripted_proxy(proxy, srv, **kw):
    server = types.SimpleNamespace(jid=lambda u: f"{u}@localhost", addr="127.0.0.1",
                                   port=srv.port, tls_port=srv.port)
    return proxy("alice", server=server, **kw)


def body_of(el):
    b = el.find(JC + "body")
    return None if b is None else b.text


def sent_inner(el):
    """The forwarded message of an XEP-0280 sent copy, or None."""
    sent = el.find(CARBONS + "sent")
    fwd = None if sent is None else sent.find(FORWARD + "forwarded")
    return None if fwd is None else fwd.find(JC + "message")


def body_is(text):
    return lambda el: local(el.tag) == "message" and body_of(el) == text


def said(path):
    """(nick, text) of every `<nick> text` line of an out log."""
    out = []
    for line in (read(path) or "").splitlines():
        m = LOG_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def wait_said(path, want, timeout=20.0):
    got = wait_until(lambda: want in said(path) and said(path), timeout)
    assert got and want in got, f"{want!r} not in {path}: {said(path)[-5:]!r}"
    return got


def all_records(client):
    """Every line a raw client received, each checked to be one whole record."""
    client.drain()
    out = []
    for line in client.lines:
        try:
            out.append(parse_record(line))
        except Exception as e:
            raise AssertionError(f"raw client {client.name} got a line that is not a "
                                 f"record: {line[:200]!r} ({e})")
    return out


def wait_pids(p, name, pred, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        pids = p.child_pids(name)
        if pred(pids):
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {name} children {pids}\n{p.stderr_text()}")
        time.sleep(0.02)


# -- the server connection --------------------------------------------------

def test_server_cut_mid_record_exits_111_and_forwards_nothing_partial(proxy):
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv)
    a, b = p.raw_client("a"), p.raw_client("b")
    srv.handshake()
    p.online()
    full = "alice@localhost/scripted"
    srv.send(f"<message from='{BOB}/x' to='{full}' type='chat' id='w1'>"
             f"<body>whole</body></message>".encode())
    for c in (a, b):
        c.wait_record(body_is("whole"))
    out = os.path.join(p.dir, BOB, "out")
    wait_said(out, (BOB, "whole"))
    # Half a stanza, then the connection goes away.
    srv.send(f"<message from='{BOB}/x' to='{full}' type='chat' id='h1'><body>half of it".encode())
    srv.conn.shutdown(2)
    srv.close()
    assert p.wait_exit(20) == 111, p.stderr_text()
    assert "sj-proxy: fatal: unable to read from the server: connection closed" \
        in p.stderr_text(), p.stderr_text()
    assert p.state().split()[0] == "offline", p.state()
    for c in (a, b):
        recs = all_records(c)
        assert not [r for r in recs if r.get("id") == "h1"], c.lines
        assert not any(b"half of it" in ln for ln in c.lines), c.lines
    assert "half of it" not in (read(out) or "")
    no_panic(p)


# condition -> exit code (DESIGN §7: 111 temporary incl. resource conflict,
# 100 permanent configuration problems such as a wrong host)
STREAM_ERRORS = {"conflict": 111, "system-shutdown": 111, "host-unknown": 100,
                 "not-authorized": 100, "policy-violation": 111}


@pytest.mark.parametrize("condition", sorted(STREAM_ERRORS))
def test_server_stream_error_online(proxy, condition):
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv)
    a = p.raw_client("a")
    srv.handshake()
    p.online()
    srv.send(b"<message from='bob@localhost/x' type='chat'><body>before</body></message>")
    a.wait_record(body_is("before"))
    srv.send(f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
             f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bye</text></stream:error>"
             f"</stream:stream>".encode())
    # sj-proxy closes its stream too (RFC 6120 4.4) and the connection.
    tail = srv.read_until(rb"</stream:stream>")
    assert b"<stream:error" not in tail, tail
    while True:
        try:
            chunk = srv.conn.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        assert b"<message" not in chunk and b"<presence" not in chunk, chunk
    code = p.wait_exit(20)
    assert code == STREAM_ERRORS[condition], p.stderr_text()
    assert f"sj-proxy: fatal: the server closed the stream: {condition}" in p.stderr_text()
    assert p.state().split()[0] == "offline", p.state()
    srv.close()
    no_panic(p)


def test_server_stream_error_answering_the_header(proxy):
    """A server that does not serve the JID's domain answers the stream
    header with <host-unknown/>: permanent (100), and sj-proxy closes its
    stream rather than dropping the connection."""
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv)
    srv.conn, _ = srv.sock.accept()
    srv.conn.settimeout(20)
    srv.read_until(rb"<stream:stream[^>]*>")
    srv.send(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
             b"xmlns:stream='http://etherx.jabber.org/streams' id='e1' version='1.0'>"
             b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
             b"</stream:error></stream:stream>")
    srv.read_until(rb"</stream:stream>")
    assert p.wait_exit(20) == 100, p.stderr_text()
    assert "sj-proxy: fatal: the server closed the stream: host-unknown" in p.stderr_text()
    assert p.state().split()[0] == "offline", p.state()
    srv.close()
