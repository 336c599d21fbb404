"""The account archive, catch-up and MAM (issue 12), end to end: real
Prosody, slixmpp contacts and clients, sj-proxy with its daemons.

Run: python3 -m pytest -q --timeout=300 tests/test_archive.py
"""

import glob
import os
import re
import signal
import subprocess

from sjtest.poll import read, wait_until
from sjtest.proxy import RawClient, sj_bin

BOB = "bob@localhost"
BODY = re.compile(rb"<body>(\w+?)-(\d{4})</body>")


def archive_text(p):
    out = b""
    for f in sorted(glob.glob(os.path.join(p.dir, "archive", "????-??.*"))):
        with open(f, "rb") as fh:
            out += fh.read()
    return out


def wait_archived(p, tag, n, timeout=60):
    """Until the archive holds message `tag-(n-1)` (all n came through)."""
    needle = f"<body>{tag}-{n - 1:04d}</body>".encode()
    assert wait_until(lambda: needle in archive_text(p), timeout), \
        f"{tag}: not all {n} archived\n{p.stderr_text()}"


def send_batch(bob, to, tag, n, batch=100):
    for start in range(0, n, batch):
        bob.send_raw("".join(f"<message to='{to}' type='chat'><body>{tag}-{i:04d}</body></message>"
                             for i in range(start, min(n, start + batch))))


def numbers(lines, tag):
    out = []
    for line in lines:
        for m in BODY.finditer(line):
            if m.group(1) == tag.encode():
                out.append(int(m.group(2)))
    return out


def test_raw_client_reader_restarted_gets_all_it_missed_once_in_order(proxy, contact):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    rc = p.raw_client("raw")
    bob.send_message(bound, "hello-0000")
    rc.wait_line(lambda l: b"<body>hello-0000</body>" in l, 20)
    # The reader stops: nobody reads clients/raw/in while 1,000 arrive.
    rc.close()
    send_batch(bob, bound, "r", 1000)
    wait_archived(p, "r", 1000)
    # It comes back.
    rc = RawClient(p.dir, "raw")
    p.clients["raw2"] = rc
    rc.wait_line(lambda l: b"<body>r-0999</body>" in l, 60)
    bob.send_message(bound, "live-0000")
    rc.wait_line(lambda l: b"<body>live-0000</body>" in l, 20)
    got = rc.drain()
    assert numbers(got, "r") == list(range(1000))
    assert numbers(got, "hello") == [], "a record it had taken came again"
    assert numbers(got, "live") == [0]
    # Replayed messages carry their archive time and id; live ones only the id.
    replayed = [l for l in got if b"<body>r-0500</body>" in l][0]
    assert b"<delay xmlns='urn:xmpp:delay'" in replayed, replayed
    assert f"<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost'".encode() in replayed
    live = [l for l in got if b"<body>live-0000</body>" in l][0]
    assert b"urn:xmpp:delay" not in live and b"urn:xmpp:sid:0" in live
    assert "panicked" not in (read(p.stderr_path) or "")
