"""Records longer than the server's stanza limit once on one line (DESIGN §4):
an LF in character data is 5 bytes in a record, so a 120 KB message of short
lines is a 360 KB line on the pipes. Every program must take it, the server
must get it as long as it was sent, and a stanza too large for the server is
refused locally with an error to its sender, never sent (it would end the
session for everyone).

Real Prosody, sj-proxy, sj-c2s under tcpserver and slixmpp on both sides
(the module-scoped environment of test_c2s.py), plus raw FIFO clients.
About 15 s.
"""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("slixmpp")
from sjtest.proxy import JC, RawClient, local  # noqa: E402
from test_c2s import BARE, Client, c2s_env, wait_until  # noqa: E402,F401

# The server's limit (Prosody's c2s_stanza_size_limit default, 256 KiB) and
# the library's line rule (sj::framer::MAX_LINE: 17 x 256 KiB + 4 KiB).
SERVER_MAX = 256 * 1024
MAX_LINE = 17 * 256 * 1024 + 4096
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
LOG_RE = re.compile(r"^\S+ \S+ <([^>]*)> (.*)$")


def many_lines(end):
    """About 120 KB in 60000 lines, ending with the line `end`: far under the
    server's limit as sent, about 360 KB as a record."""
    return "\n".join(str(i % 10) for i in range(60000)) + "\n" + end


def body_text(xml_text):
    """The body of a stanza slixmpp kept as text (its namespace left implied)."""
    for b in ET.fromstring(xml_text):
        if local(b.tag) == "body":
            return b.text
    return None


def body_of(el):
    b = el.find(JC + "body")
    return None if b is None else b.text


def stderr_text(env):
    return (Path(env["dir"]).parent / "stderr").read_text(errors="replace")


def state_line(env):
    return (Path(env["dir"]) / "state").read_text()


@pytest.fixture(scope="module")
def big(c2s_env):
    """One sj-c2s slixmpp client of alice's and one raw client, both known to
    mirrord (a message from bob has reached them)."""
    c = Client(c2s_env["loop"], f"{BARE}/big", "local-pw", c2s_env["port"]).connect()
    raw = RawClient(str(c2s_env["dir"]), "raw")
    yield {"client": c, "raw": raw}
    raw.close()
    c.close()


def up_jid(env):
    return state_line(env).split()[1]


def barrier(env, bob, big, text):
    """bob -> alice; returns once both of alice's clients have it."""
    bob.send_message(up_jid(env), text)
    big["raw"].wait_record(lambda el: body_of(el) == text, timeout=20)
    big["client"].wait(lambda s: body_text(s) == text, f"barrier {text}")


def test_long_multi_line_message_from_contact_reaches_every_client_and_log(
        c2s_env, big, contact):
    bob = contact("bob")
    barrier(c2s_env, bob, big, "warm-up a")
    body = many_lines("end-of-a")
    bob.send_message(up_jid(c2s_env), body)
    line, el = big["raw"].wait_record(lambda el: body_of(el) == body, timeout=30)
    assert len(line) > 300 * 1024, len(line)  # over every old cap but messaged's
    assert el.get("from") == bob.full_jid
    got = big["client"].wait(lambda s: body_text(s) == body, "the long message", timeout=30)
    assert len(got) == 1
    # messaged logs it, one log line per body line, all of them in order.
    log = Path(c2s_env["dir"]) / "bob@localhost" / "out"
    wait_until(lambda: log.exists() and log.read_text().endswith(" end-of-a\n"),
               timeout=30, what="messaged's log of the long message")
    texts = [m.group(2) for m in map(LOG_RE.match, log.read_text().splitlines()) if m]
    lines = body.split("\n")
    assert texts[-len(lines):] == lines
    assert "line over" not in stderr_text(c2s_env)


def test_contact_stanza_the_server_reserialised_larger_still_arrives(c2s_env, big, contact):
    """bob sends 150 KB of apostrophes: Prosody takes it (under its 256 KiB)
    and writes each one to us as `&apos;`, 900 KB. Refusing that would let
    any contact end the session at will; it reaches every client."""
    bob = contact("bob")
    barrier(c2s_env, bob, big, "warm-up q")
    before = state_line(c2s_env)
    body = "'" * (150 * 1024)
    bob.send_raw(f"<message to='{up_jid(c2s_env)}' type='chat'><body>{body}</body></message>")
    line, _ = big["raw"].wait_record(lambda el: body_of(el) == body, timeout=30)
    assert len(line) > SERVER_MAX, len(line)  # it came larger than it was sent
    big["client"].wait(lambda s: body_text(s) == body, "the re-escaped message", timeout=30)
    barrier(c2s_env, bob, big, "after q")
    assert state_line(c2s_env) == before


def test_long_multi_line_message_from_sj_c2s_client_reaches_contact_once(
        c2s_env, big, contact):
    bob = contact("bob")
    barrier(c2s_env, bob, big, "warm-up b")
    before = state_line(c2s_env)
    body = many_lines("end-of-b")
    big["client"].send("bob@localhost", body)
    bob.wait_message(lambda m: m["body"] == body, timeout=30)
    # Once, and the session never restarted: a later message still flows.
    big["client"].send("bob@localhost", "after b")
    bob.wait_message(lambda m: m["body"] == "after b", timeout=20)
    assert len(bob.messages(lambda m: m["body"] == body)) == 1
    assert state_line(c2s_env) == before
    # The raw client got the sent copy, one line, the body intact.
    _, copy = big["raw"].wait_record(
        lambda el: local(el.tag) == "message" and body in "".join(el.itertext()), timeout=20)
    assert copy.get("from") == BARE


def test_too_large_for_the_server_gets_an_error_and_session_stays(c2s_env, big, contact):
    bob = contact("bob")
    barrier(c2s_env, bob, big, "warm-up c")
    before = state_line(c2s_env)
    raw = big["raw"]
    huge = "y" * (SERVER_MAX + 1000)
    raw.send(f"<message to='bob@localhost' type='chat' id='huge-1'><body>{huge}</body></message>")
    _, err = raw.wait_record(
        lambda el: el.get("type") == "error" and el.get("id") == "huge-1", timeout=20)
    assert local(err.tag) == "message"
    assert err.get("to") == f"{BARE}/raw"
    assert err.get("from") == "bob@localhost"
    e = err.find(JC + "error")
    assert e.get("type") == "modify"
    assert e.find(STANZAS + "policy-violation") is not None
    wait_until(lambda: "from client raw, the server takes at most 262144" in
               stderr_text(c2s_env), what="the log line")
    # Not sent: the stream and the session are still up.
    raw.send("<message to='bob@localhost' type='chat'><body>after c</body></message>")
    bob.wait_message(lambda m: m["body"] == "after c", timeout=20)
    assert not bob.messages(lambda m: m["body"] == huge)
    assert state_line(c2s_env) == before


def test_raw_client_lines_over_the_rule_logged_long_records_go_up(c2s_env, big, contact):
    bob = contact("bob")
    barrier(c2s_env, bob, big, "warm-up d")
    raw = big["raw"]
    # A line longer than any record can be: dropped with a log line naming
    # the client; reading resumes at the next LF.
    raw.send(b"<message><body>" + b"z" * MAX_LINE + b"</body></message>")
    # A 300 KB record that is 100 KB as written to the server.
    raw.send("<message to='bob@localhost' type='chat'><body>"
             + "x&#10;" * 50000 + "</body></message>")
    bob.wait_message(lambda m: m["body"] == "x\n" * 50000, timeout=30)
    wait_until(lambda: f"from client raw: policy-violation: line over {MAX_LINE} bytes"
               in stderr_text(c2s_env), what="the over-long line's log line")
