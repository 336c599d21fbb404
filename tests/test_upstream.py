"""sj-proxy's upstream half against a real Prosody (and a scripted bad peer).

Each test fails when the behaviour it names is missing."""

import os
import re
import select
import signal
import subprocess
import time
import types

import pytest

from badserver import CASES, NS_STREAMS, BadServer
from sjtest.poll import wait_until
from sjtest.proxy import JC, local, sj_bin

CARBONS = "{urn:xmpp:carbons:2}"
FORWARD = "{urn:xmpp:forward:0}"
STATE_RE = re.compile(r"^online\t(alice@localhost/[^\t\n]+)\t"
                      r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)\n?$")


def no_panic(p):
    assert "panicked" not in p.stderr_text(), p.stderr_text()


def body_of(el):
    b = el.find(JC + "body")
    return None if b is None else b.text


def is_message_with_body(body):
    return lambda el: local(el.tag) == "message" and body_of(el) == body


def sent_copy(el):
    """The inner message of an XEP-0280 sent copy, or None."""
    if local(el.tag) != "message":
        return None
    sent = el.find(CARBONS + "sent")
    if sent is None:
        return None
    fwd = sent.find(FORWARD + "forwarded")
    return None if fwd is None else fwd.find(JC + "message")


def test_login_scram_online_and_ready(proxy, prosody):
    p = proxy("alice")
    p.wait_ready()  # the readiness fd got exactly "\n"
    line = p.wait_state("online")
    m = STATE_RE.match(line)
    assert m, f"DIR/state is {line!r}"
    assert p.proc.poll() is None
    no_panic(p)


def test_message_from_bob_reaches_raw_clients_as_one_line(proxy, contact):
    p = proxy("alice")
    a, b = p.raw_client("a"), p.raw_client("b")
    bound = p.online()
    bob = contact("bob")
    body = "line one\nline two <&> 'q'"
    bob.send_message(bound, body)
    line_a, el = a.wait_record(is_message_with_body(body))
    line_b, _ = b.wait_record(is_message_with_body(body))
    # One line, the LF in character data written as &#10;, nothing re-serialised
    # differently for the two clients.
    assert b"&#10;" in line_a and b"\r" not in line_a, line_a
    assert line_a == line_b
    assert el.get("from") == bob.full_jid
    assert el.get("to") == bound
    assert el.get("type") == "chat"
    # Exactly one copy: a later marker from bob arrives, with no duplicate before it.
    bob.send_message(bound, "marker-1")
    a.wait_record(is_message_with_body("marker-1"))
    dup = [ln for ln in a.lines if b"line one&#10;line two" in ln]
    assert len(dup) == 1, dup
    no_panic(p)


def test_raw_client_message_reaches_bob_once_with_carbon_to_sibling(proxy, contact):
    p = proxy("alice")
    a, b = p.raw_client("a"), p.raw_client("b")
    bound = p.online()
    bob = contact("bob")
    start = bob.mark()
    a.send("<message to='bob@localhost' type='chat'><body>hi</body></message>")
    m = bob.wait_message(lambda m: m["body"] == "hi", start=start)
    assert str(m["from"]) == bound, "the server stamps the upstream full JID"
    # No second copy: a later marker from a reaches bob, and "hi" arrived once.
    a.send("<message to='bob@localhost' type='chat'><body>marker-2</body></message>")
    bob.wait_message(lambda m: m["body"] == "marker-2", start=start)
    assert len(bob.messages(lambda m: m["body"] == "hi", start=start)) == 1
    # The sibling raw client sees the XEP-0280 sent copy, stamped with a's origin.
    line, el = b.wait_record(lambda el: sent_copy(el) is not None
                             and body_of(sent_copy(el)) == "hi")
    inner = sent_copy(el)
    assert inner.get("from") == "alice@localhost/a", line
    assert inner.get("to") == "bob@localhost", line
    assert el.get("from") == "alice@localhost", line
    # a never gets its own copy: bob answers, and by the time a sees the answer
    # no copy of "hi" has reached a.
    bob.send_message(bound, "ack-from-bob")
    a.wait_record(is_message_with_body("ack-from-bob"))
    own = [ln for ln in a.lines if b"<body>hi</body>" in ln]
    assert own == [], own
    no_panic(p)


def test_tls_through_socat(proxy, contact, prosody):
    p = proxy("alice", mode="tls")
    a = p.raw_client("a")
    bound = p.online()
    assert bound.startswith("alice@localhost/")
    bob = contact("bob")
    bob.send_message(bound, "over tls")
    a.wait_record(is_message_with_body("over tls"))
    start = bob.mark()
    a.send("<message to='bob@localhost' type='chat'><body>tls reply</body></message>")
    m = bob.wait_message(lambda m: m["body"] == "tls reply", start=start)
    assert str(m["from"]) == bound
    no_panic(p)


def test_sigterm_exits_0_and_goes_offline(proxy):
    p = proxy("alice")
    p.online()
    assert p.stop(signal.SIGTERM) == 0
    assert p.state().split()[0] == "offline", p.state()
    no_panic(p)


def test_sigterm_server_sees_session_end(proxy, contact):
    p = proxy("alice")
    a = p.raw_client("a")
    bound = p.online()
    bob = contact("bob")
    # bob's initial presence has reached the server once his next stanza
    # has: only then does a directed presence find an available resource.
    bob.send_message(bound, "bob is here")
    a.wait_record(is_message_with_body("bob is here"))
    start = bob.mark()
    # Directed presence: the server sends bob unavailable when the session ends.
    a.send("<presence to='bob@localhost'/>")
    bob.wait_presence(lambda pr: str(pr["from"]) == bound and pr["type"] != "unavailable",
                      start=start)
    assert p.stop(signal.SIGTERM) == 0
    bob.wait_presence(lambda pr: str(pr["from"]) == bound and pr["type"] == "unavailable",
                      start=start)


def test_wrong_password_exits_100(proxy):
    p = proxy("alice", password="not-alice-pw")
    assert p.wait_exit(30) == 100, p.stderr_text()
    # Never signalled readiness: the pipe reports EOF with no newline.
    r, _, _ = select.select([p.ready_fd], [], [], 5)
    assert r and os.read(p.ready_fd, 64) == b""
    assert (p.state() or "offline").split()[0] != "online"
    no_panic(p)


def test_server_dies_exits_111(proxy, own_prosody):
    p = proxy("alice", server=own_prosody)
    p.online()
    own_prosody.stop()
    assert p.wait_exit(30) == 111, p.stderr_text()
    no_panic(p)


def test_daemons_do_not_hold_the_server_connection(proxy):
    """Only sj-proxy talks to the server: none of its children has the
    socket it got as fds 6/7 (else the server would not see the session
    end while a daemon lives on)."""
    p = proxy("alice")
    p.online()
    me = p.proxy_pid()

    def sockets(pid):
        out = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                out.add(target)
        return out
    upstream = sockets(me)
    assert upstream, "sj-proxy holds no socket"
    deadline = time.monotonic() + 15
    while True:
        kids = {n: p.child_pids(n) for n in ("messaged", "presenced", "iqd", "mirrord")}
        if all(kids.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for name, pids in kids.items():
        assert pids, f"{name} not running\n{p.stderr_text()}"
        for pid in pids:
            assert not sockets(pid) & upstream, f"{name} holds sj-proxy's server socket"
    no_panic(p)


def test_killed_child_is_restarted_and_records_flow(proxy, contact):
    p = proxy("alice")
    a = p.raw_client("a")
    bound = p.online()

    def wait_pids(pred, what, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            pids = p.child_pids("messaged")
            if pred(pids):
                return pids
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: messaged children {pids}\n{p.stderr_text()}")
            time.sleep(0.05)
    old = wait_pids(lambda pids: len(pids) == 1, "messaged not running")[0]
    os.kill(old, signal.SIGKILL)
    new = wait_pids(lambda pids: len(pids) == 1 and pids[0] != old, "messaged not restarted")
    assert new[0] != old
    assert p.proc.poll() is None, "sj-proxy died with its child"
    bob = contact("bob")
    bob.send_message(bound, "after restart")
    a.wait_record(is_message_with_body("after restart"))
    # ... and the restarted messaged got it too: bob's conversation log has it.
    log = os.path.join(p.dir, "bob@localhost", "out")
    deadline = time.monotonic() + 10
    text = ""
    while "after restart" not in text:
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                text = f.read()
        if "after restart" in text:
            break
        assert time.monotonic() < deadline, f"{log} lacks the message: {text!r}"
        time.sleep(0.05)
    no_panic(p)


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_from_server_is_a_stream_error(proxy, case):
    bad = BadServer(case)
    server = types.SimpleNamespace(jid=lambda u: f"{u}@localhost", addr="127.0.0.1",
                                   port=bad.port, tls_port=bad.port)
    p = proxy("alice", server=server)
    code = p.wait_exit(20)
    bad.wait(20)
    assert bad.error is None, bad.error
    assert bad.got_header, f"sj-proxy sent no stream header: {bad.received!r}"
    cond = bad.condition.encode()
    pat = (rb"<stream:error\b.*?<" + re.escape(cond) + rb"\b[^>]*xmlns=(['\"])"
           + re.escape(NS_STREAMS.encode()) + rb"\1")
    assert re.search(pat, bad.received, re.S), \
        f"no <{bad.condition}/> stream error in {bad.received[-500:]!r}\n{p.stderr_text()}"
    assert code == 1, f"exit {code}\n{p.stderr_text()}"
    no_panic(p)


@pytest.mark.parametrize("wrapper_env", [
    # A socketpair: no TCP address, no wrapper variables.
    {},
    # One variable naming loopback does not outvote another that does not
    # (sj::ucspi, the rule sj-c2s uses too).
    {"TCPREMOTEIP": "127.0.0.1", "SOCAT_PEERADDR": "192.0.2.1"},
    {"PROTO": "SSL", "TCPREMOTEIP": "127.0.0.1", "SSLREMOTEIP": "192.0.2.1", "SSLCTLFD": "x"},
    # PROTO=SSL with a UCSPI-TLS hand-over pending: still in clear (the
    # server offers no STARTTLS here, so the hand-over never happens).
    {"PROTO": "SSL", "SSLCTLFD": "97", "SSLREADFD": "98", "SSLWRITEFD": "99"},
], ids=["socketpair", "one-address-remote", "ssl-address-remote", "handover-pending"])
def test_plain_refused_in_clear_to_a_remote_server(tmp_path, wrapper_env):
    """A server offering only PLAIN, on an unencrypted channel whose peer is
    not loopback, gets no <auth/> and no password; sj-proxy exits 100."""
    import base64
    import socket

    srv, cli = socket.socketpair()
    pw = tmp_path / "pw"
    pw.write_text("secret-pw\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TCPREMOTEIP", "TCP6REMOTEIP", "SSLREMOTEIP", "SOCAT_PEERADDR", "PROTO",
                        "SSL_PROTOCOL", "SSLCTLFD", "SSLREADFD", "SSLWRITEFD")}
    env.update(wrapper_env)
    fd = cli.fileno()

    def on_6_and_7():
        os.dup2(fd, 6)
        os.dup2(fd, 7)

    proc = subprocess.Popen([sj_bin("sj-proxy"), "-d", str(tmp_path / "dir"), "-p", str(pw),
                             "alice@example.org"], env=env, preexec_fn=on_6_and_7,
                            pass_fds=(fd, 6, 7), stderr=subprocess.PIPE)
    cli.close()
    srv.settimeout(20)
    got = b""
    while b"version=" not in got or not got.rstrip().endswith(b">"):
        chunk = srv.recv(4096)
        assert chunk, got
        got += chunk
    srv.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                b"xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='p1' "
                b"version='1.0'><stream:features><mechanisms "
                b"xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
                b"</mechanisms></stream:features>")
    while True:
        chunk = srv.recv(4096)
        if not chunk:
            break
        got += chunk
    code = proc.wait(20)
    err = proc.stderr.read().decode()
    assert code == 100, err
    assert b"<auth" not in got
    assert b"secret-pw" not in got and base64.b64encode(b"\0alice\0secret-pw") not in got
    assert "PLAIN" in err, err


def test_roster_push_reaches_every_raw_client(proxy):
    p = proxy("alice")
    a, b = p.raw_client("a"), p.raw_client("b")
    p.online()
    # The server pushes roster changes only to a session that has fetched
    # the roster: wait for iqd's fetch (it writes DIR/roster) first.
    assert wait_until(lambda: os.path.exists(os.path.join(p.dir, "roster")), 15), p.stderr_text()
    a.send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
           "<item jid='carol@localhost' name='Carol'/></query></iq>")

    def is_push(el):
        q = el.find("{jabber:iq:roster}query")
        return (local(el.tag) == "iq" and el.get("type") == "set" and q is not None
                and any(i.get("jid") == "carol@localhost" for i in q))

    def is_result(el):
        return local(el.tag) == "iq" and el.get("id") == "r1" and el.get("type") == "result"

    b.wait_record(is_push)
    # a gets the push too, and the result of its own request with its own id
    # (the server may send them in either order).
    seen = set()
    deadline = time.monotonic() + 10
    while seen != {"push", "result"}:
        assert time.monotonic() < deadline, (seen, a.lines)
        _, el = a.wait_record(lambda el: is_push(el) or is_result(el),
                              timeout=deadline - time.monotonic())
        seen.add("push" if is_push(el) else "result")
    b.drain()
    assert not any(b"id='r1'" in ln for ln in b.lines), "b got a's result"
    no_panic(p)


def scripted_proxy(proxy, srv, **kw):
    server = types.SimpleNamespace(jid=lambda u: f"{u}@localhost", addr="127.0.0.1",
                                   port=srv.port, tls_port=srv.port)
    return proxy("alice", server=server, **kw)


def test_keepalive_silent_server_exits_111(proxy):
    from scripted_server import ScriptedServer
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv, extra_args=["-k", "1"])
    srv.handshake()
    # After a second of silence sj-proxy pings the server (the daemons'
    # own requests, left unanswered, may come first) ...
    for _ in range(10):
        ping = srv.read_until(rb"<iq [^>]*>.*?</iq>")
        if b"urn:xmpp:ping" in ping:
            break
    assert b"urn:xmpp:ping" in ping, ping
    # ... and, unanswered, gives up: a temporary failure for the supervisor.
    assert p.wait_exit(20) == 111, p.stderr_text()
    assert "keepalive" in p.stderr_text()
    srv.close()


def test_answers_server_ping_and_survives_answered_keepalive(proxy):
    from scripted_server import ScriptedServer
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv, extra_args=["-k", "1"])
    srv.handshake()
    srv.send(b"<iq type='get' id='srv-ping' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    answer = srv.read_until(rb"<iq [^>]*id='srv-ping'[^>]*/>")
    assert b"type='result'" in answer, answer
    for _ in range(3):
        ping = srv.read_until(rb"<iq [^>]*>.*?</iq>")
        if b"urn:xmpp:ping" not in ping:
            continue
        pid = re.search(rb"id='([^']+)'", ping).group(1)
        srv.send(b"<iq type='result' id='" + pid + b"' from='localhost'/>")
    assert p.proc.poll() is None, p.stderr_text()
    assert p.stop() == 0
    srv.close()


def test_password_file_open_to_others_is_warned_about(tmp_path):
    """A password file with mode 0644 still works, but the log says so, as
    ssh does for a private key; 0600 gets no warning."""
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    for mode, warned in ((0o644, True), (0o600, False)):
        os.chmod(pw, mode)
        # No fds 6/7: sj-proxy stops right after reading the password.
        r = subprocess.run([sj_bin(), "-d", str(tmp_path / "dir"), "-p", str(pw),
                            "alice@localhost"], capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        assert r.returncode in (100, 111), r.stderr
        assert ("sj-proxy: warning: password file" in r.stderr) == warned, r.stderr
        if warned:
            assert f"(mode {mode:04o}); chmod 600 it" in r.stderr
        assert "secret" not in r.stderr


def test_stalled_daemon_holds_the_server_back_and_loses_nothing(proxy):
    """A flood bigger than any queue while messaged cannot read: sj-proxy
    stops reading the server (TCP holds the rest back) instead of dropping
    messaged's records, and once messaged runs again every message is in
    the log and at the raw client."""
    import threading

    from scripted_server import ScriptedServer
    srv = ScriptedServer(timeout=120.0)
    p = scripted_proxy(proxy, srv)
    a = p.raw_client("a")
    srv.handshake()
    p.online()
    deadline = time.monotonic() + 15
    while not p.child_pids("messaged"):
        assert time.monotonic() < deadline, p.stderr_text()
        time.sleep(0.05)
    messaged = p.child_pids("messaged")[0]
    body = "x" * 4000
    n = 9216  # about 36 MiB: more than sj-proxy keeps for a daemon that is down
    data = b"".join(f"<message from='bob@localhost/r' to='alice@localhost' type='chat' "
                    f"id='m{i}'><body>{body}</body></message>".encode() for i in range(n))
    sender = threading.Thread(target=srv.send, args=(data,), daemon=True)

    def count(limit, timeout):
        end = time.monotonic() + timeout
        while len(a.lines) < limit and time.monotonic() < end:
            a._fill(end - time.monotonic())
        return sum(1 for ln in a.lines if b"<body>" in ln)

    os.kill(messaged, signal.SIGSTOP)
    try:
        sender.start()
        # No event says "sj-proxy stopped reading": give the flood a bounded
        # while to run ahead of the stopped daemon. 2 MiB is past what the
        # pipe and sj-proxy's queue for messaged hold.
        ahead = count(512, 3.0)
        assert ahead < 512, f"{ahead} records passed a stopped messaged"
    finally:
        os.kill(messaged, signal.SIGCONT)
    assert count(n, 90.0) == n, p.stderr_text()[-2000:]
    sender.join(30)
    log = os.path.join(p.dir, "bob@localhost", "out")
    deadline = time.monotonic() + 60
    while True:
        with open(log, "rb") as f:
            lines = f.read().count(b"\n")
        if lines >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lines == n, f"{lines} of {n} messages logged\n{p.stderr_text()[-2000:]}"
    assert "dropping a record" not in p.stderr_text()
    no_panic(p)


def test_overlong_fifo_line_is_dropped_with_a_log_line(proxy):
    """A line past the reader's limit is skipped to its LF like any invalid
    record: logged, and the next line still goes upstream."""
    from scripted_server import ScriptedServer
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv)
    srv.handshake()
    p.online()
    a = p.raw_client("a")
    # Longer than any record can be on one line (sj::framer::MAX_LINE).
    big = "<message to='bob@localhost'><body>" + "x" * (17 * 256 * 1024 + 4096) + "</body></message>"
    a.send(big + "\n<message to='carol@localhost'><body>after</body></message>")
    got = srv.read_until(rb"<body>after</body></message>")
    assert b"xxxxxxxx" not in got
    # Logged before the next line was routed.
    assert "from client a: policy-violation: line over" in p.stderr_text(), p.stderr_text()
    assert p.stop() == 0
    srv.close()


def test_stanza_pipelined_with_the_last_negotiation_reply_is_routed(proxy):
    """A message in the same read as the disco#info answer reaches the
    clients at once, not when the server next sends something."""
    from scripted_server import ScriptedServer
    srv = ScriptedServer()
    p = scripted_proxy(proxy, srv)
    a = p.raw_client("a")  # before the session is up: mirrord finds it at start
    srv.handshake(after=b"<message from='bob@localhost/x' to='alice@localhost/scripted' "
                        b"type='chat'><body>pipelined</body></message>")
    p.online()
    a.wait_record(is_message_with_body("pipelined"))
    assert p.stop() == 0
    srv.close()
