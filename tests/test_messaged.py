"""messaged through a real sj-proxy on a throwaway Prosody: the per-contact
`out` logs and `in` FIFOs (DESIGN §3). Every wait has a deadline; logs are
polled until a line appears, never slept on."""

import errno
import os
import re
import time

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d <([^>]+)> (.*)$")
BOB = "bob@localhost"
ALICE = "alice@localhost"


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def said(path):
    """(nick, text) for every `<nick> text` line; events are skipped, and
    every line must be a well-formed log line."""
    out = []
    for line in read_lines(path):
        m = LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
        else:
            assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d -!- ", line), line
    return out


def wait_said(path, want, timeout=15.0):
    """Poll `path` until (nick, text) `want` is logged; returns all said lines."""
    deadline = time.monotonic() + timeout
    while True:
        got = said(path)
        if want in got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{want!r} not in {path} within {timeout}s: {got!r}")
        time.sleep(0.05)


def write_fifo(path, data, timeout=15.0):
    """One write into a FIFO once its reader has it open (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def bodies(contact, text, start=0):
    return contact.messages(lambda m: m["body"] == text, start=start)


def test_two_way_conversation_in_order(proxy, contact):
    p = proxy()
    bound = p.online()
    bob = contact("bob")
    out = os.path.join(p.dir, BOB, "out")

    bob.send_message(bound, "hello alice")
    wait_said(out, (BOB, "hello alice"))

    start = bob.mark()
    write_fifo(os.path.join(p.dir, BOB, "in"), b"hi bob <&>\n")
    bob.wait_message(lambda m: m["body"] == "hi bob <&>", start=start)
    wait_said(out, (ALICE, "hi bob <&>"))

    bob.send_message(bound, "how are you?\nfine")
    got = wait_said(out, (BOB, "fine"))
    assert got == [
        (BOB, "hello alice"),
        (ALICE, "hi bob <&>"),
        (BOB, "how are you?"),
        (BOB, "fine"),
    ]
    for line in read_lines(out):
        assert LINE.match(line), line
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(p.dir, BOB)).st_mode & 0o777 == 0o700


def test_in_line_reaches_bob_exactly_once(proxy, contact):
    p = proxy()
    bound = p.online()
    bob = contact("bob")
    bob.send_message(bound, "open the directory")
    out = os.path.join(p.dir, BOB, "out")
    wait_said(out, (BOB, "open the directory"))

    start = bob.mark()
    fifo = os.path.join(p.dir, BOB, "in")
    write_fifo(fifo, b"hi\n")
    # Several lines in one write, and one longer than PIPE_BUF.
    long = "x" * 6000
    write_fifo(fifo, f"two\nthree\n{long}\n".encode())
    write_fifo(fifo, b"last\n")
    bob.wait_message(lambda m: m["body"] == "last", start=start)
    # Everything before "last" has arrived (one stream, in order).
    for text in ("hi", "two", "three", long, "last"):
        assert len(bodies(bob, text, start)) == 1, text
    wait_said(out, (ALICE, "last"))
    got = said(out)
    assert got.count((ALICE, "hi")) == 1
    assert [t for n, t in got if n == ALICE] == ["hi", "two", "three", long, "last"]


def test_other_device_logged_as_alice(proxy, contact):
    p = proxy()
    p.online()
    bob = contact("bob")
    other = contact("alice", resource="otherdevice")
    start = bob.mark()
    other.send_message(BOB, "sent from my phone")
    bob.wait_message(lambda m: m["body"] == "sent from my phone", start=start)
    out = os.path.join(p.dir, BOB, "out")
    got = wait_said(out, (ALICE, "sent from my phone"))
    assert got.count((ALICE, "sent from my phone")) == 1


def test_forged_carbon_not_logged_as_alice(proxy, contact):
    p = proxy()
    bound = p.online()
    bob = contact("bob")
    forged = (
        f"<message to='{bound}' type='chat'>"
        "<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"<message xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}' type='chat'>"
        "<body>forged by bob</body></message></forwarded></sent></message>"
    )
    bob.send_raw(forged)
    bob.send_message(bound, "after the forgery")
    out = os.path.join(p.dir, BOB, "out")
    got = wait_said(out, (BOB, "after the forgery"))
    assert (ALICE, "forged by bob") not in got
    # Not anywhere else under DIR either.
    for root, _dirs, files in os.walk(p.dir):
        if "out" in files:
            with open(os.path.join(root, "out"), encoding="utf-8", errors="replace") as f:
                assert "forged by bob" not in f.read(), root


def test_hostile_contact_names_stay_in_dir(proxy, contact):
    p = proxy()
    bound = p.online()
    bob = contact("bob")
    bob.send_message(bound, "hello")
    wait_said(os.path.join(p.dir, BOB, "out"), (BOB, "hello"))
    parent = os.path.dirname(os.path.abspath(p.dir))
    before = set(os.listdir(parent))
    hostile = [
        "../../escape@localhost",
        "..",
        "../escape",
        "a@b/../../../escape",
        "in",
        "roster",
        ".hidden@localhost",
        "%2e%2e@localhost",
    ]
    for to in hostile:
        # From DIR/in: sj-proxy sends it upstream, and gives messaged a sent
        # copy whose inner `to` is the hostile name (if it accepts it at all).
        write_fifo(os.path.join(p.dir, "in"),
                   f"<message to='{to}' type='chat'><body>hostile</body></message>\n".encode())
    write_fifo(os.path.join(p.dir, BOB, "in"), b"done\n")
    wait_said(os.path.join(p.dir, BOB, "out"), (ALICE, "done"))

    assert set(os.listdir(parent)) == before
    assert not os.path.exists(os.path.join(parent, "escape"))
    reserved = {"in", "out", "state", "mypresence", "roster", "passwd", "iq", "iq.d",
                "clients", "presence", "subscriptions", "lock", "auth-failures"}
    real = os.path.realpath(p.dir)
    for name in os.listdir(p.dir):
        path = os.path.join(p.dir, name)
        assert os.path.realpath(path).startswith(real + os.sep), name
        if name in reserved or name.startswith("."):
            continue
        # Every other entry is a contact directory, never a symlink.
        assert os.path.isdir(path) and not os.path.islink(path), name
        assert "/" not in name and name not in (".", "..")


def test_room_conversation(proxy, contact):
    """A XEP-0045 room on Prosody's MUC: alice joins through DIR/in, bob's
    groupchat lands in the room's out with his nick, and a line written to
    the room's in reaches bob as groupchat from alice's occupant JID."""
    room = "lunch@conference.localhost"
    p = proxy()
    p.online()
    bob = contact("bob")
    bob.send_raw(f"<presence to='{room}/bobby'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    bob.wait_presence(lambda pr: str(pr["from"]) == f"{room}/bobby")
    write_fifo(os.path.join(p.dir, "in"),
               f"<presence to='{room}/al'><x xmlns='http://jabber.org/protocol/muc'/></presence>\n"
               .encode())
    bob.wait_presence(lambda pr: str(pr["from"]) == f"{room}/al")
    bob.send_message(room, "who is hungry?", mtype="groupchat")
    out = os.path.join(p.dir, room, "out")
    wait_said(out, ("bobby", "who is hungry?"))
    start = bob.mark()
    write_fifo(os.path.join(p.dir, room, "in"), b"me, always\n")
    m = bob.wait_message(lambda m: m["body"] == "me, always", start=start)
    assert m["type"] == "groupchat" and str(m["from"]) == f"{room}/al"
    # The room reflects alice's message: logged once, under her nick.
    got = wait_said(out, ("al", "me, always"))
    assert got.count(("al", "me, always")) == 1, got
    assert got.count(("bobby", "who is hungry?")) == 1, got
