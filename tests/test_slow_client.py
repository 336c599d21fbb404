"""A slow sj-c2s client: with the account archive (issue 12, the default)
it is no longer dropped: mirrord stops queueing for it at the bound, and it
catches up from the archive at its own pace, getting every message once and
in order. Without the archive (SJ_ARCHIVE=off) the old rule of issue 17,
item 3 holds and is tested too:

A client of sj-c2s stops reading while a contact on Prosody sends more than
mirrord's queue bound holds (SJ_MIRRORD_QUEUE, passed to mirrord through
sj-proxy's environment). mirrord drops it and leaves DIR/clients/NAME/dropped;
its sj-c2s sees mirrord close its end of `in`, ends the client's stream with
`resource-constraint` (read here from the client's socket, after everything
it was sent before), exits 111 and unregisters. The sibling sj-c2s client,
which reads all along, gets every message, in order.

Run: python3 -m pytest -q tests/test_slow_client.py
"""

import os
import re
import threading

from sjtest.poll import read, wait_until
from sjtest.xmpp import C2S

BOB = "bob@localhost"
N = 2500
PAD = "p" * 4000
BODY = re.compile(rb"<body>s(\d{4}) p+</body>")
RC_ERROR = (b"<stream:error><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            b"</stream:error></stream:stream>")


def bodies(data):
    return [int(m.group(1)) for m in BODY.finditer(data)]


class SocketTally(threading.Thread):
    """Reads a RawXmpp session's socket to the end, keeping every byte and
    the message numbers seen so far (parsed as they come, so a reader that
    must keep up never stops to re-read what it has)."""

    def __init__(self, session):
        super().__init__(daemon=True)
        self.session = session
        self.data = bytearray(session.buf)
        self.seen = []
        self.parsed = 0
        self.lock = threading.Lock()
        self.done = False
        self._parse()

    def _parse(self):
        end = self.data.rfind(b"</body>")
        if end >= self.parsed:
            self.seen += bodies(bytes(self.data[self.parsed:end + 7]))
            self.parsed = end + 7

    def run(self):
        sock = self.session.sock
        sock.settimeout(60)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                with self.lock:
                    self.data += chunk
                    self._parse()
        except OSError:
            pass
        self.done = True

    def snapshot(self):
        with self.lock:
            return bytes(self.data)

    def count(self):
        with self.lock:
            return len(self.seen)

    def numbers(self):
        with self.lock:
            return list(self.seen)


def test_slow_c2s_client_catches_up_from_the_archive_not_dropped(proxy, contact):
    p = proxy("alice", env={"SJ_MIRRORD_QUEUE": "1M"})
    bound = p.online()
    bob = contact("bob")
    c2s = C2S(p.dir, verbose=True)
    try:
        sib = c2s.client("sib")
        sib_tally = SocketTally(sib)
        sib_tally.start()
        slow = c2s.client("slow", rcvbuf=4096)
        # `slow` reads nothing until the sibling has everything: mirrord
        # must not wait for it, and must not drop it.
        behind = "mirrord: info: client slow: more than 1048576 bytes behind; catching up from the archive"
        for start in range(0, N, 50):
            bob.send_raw("".join(f"<message to='{bound}' type='chat'><body>s{i:04d} {PAD}</body></message>"
                                 for i in range(start, start + 50)))
            assert wait_until(lambda: sib_tally.count() >= start + 50, 30), sib_tally.count()
        assert sib_tally.numbers() == list(range(N))
        assert wait_until(lambda: behind in (read(p.stderr_path) or ""), 15), p.stderr_text()
        assert "dropping client" not in (read(p.stderr_path) or "")
        # Now it reads, at its own pace: everything, once, in order, and
        # its stream stays open for what comes next.
        tally = SocketTally(slow)
        tally.start()
        assert wait_until(lambda: tally.count() >= N, 120), tally.count()
        assert tally.numbers() == list(range(N))
        bob.send_message(bound, "after the catch-up")
        assert wait_until(lambda: b"<body>after the catch-up</body>" in tally.snapshot(), 20)
        assert not tally.done and RC_ERROR not in tally.snapshot()
        assert os.path.isdir(os.path.join(p.dir, "clients", "slow"))
        # What came from the archive carries its time.
        assert b"urn:xmpp:delay" in tally.snapshot()
        slow.close()
        sib.close()
    finally:
        c2s.stop()
    assert "panicked" not in (read(p.stderr_path) or "")


def test_slow_c2s_client_dropped_by_mirrord_ends_with_resource_constraint(proxy, contact):
    # Without the archive (SJ_ARCHIVE=off) there is nothing to catch up
    # from: the old rule holds.
    p = proxy("alice", env={"SJ_MIRRORD_QUEUE": "1M", "SJ_ARCHIVE": "off"})
    bound = p.online()
    bob = contact("bob")
    c2s = C2S(p.dir, verbose=True)
    try:
        sib = c2s.client("sib")
        sib_tally = SocketTally(sib)
        sib_tally.start()
        slow = c2s.client("slow", rcvbuf=4096)
        slow_dir = os.path.join(p.dir, "clients", "slow")
        pid = int(read(os.path.join(slow_dir, "pid")).strip())
        # From here on `slow` reads nothing until mirrord has dropped it.
        # Batches no larger than what sits between mirrord and a client
        # that reads, each sent once the sibling has the one before: the
        # sibling is never the one that falls behind.
        # The slow client reads again as soon as mirrord has dropped it
        # (sj-c2s gives a client 2 s to take what is queued for it before
        # closing): it gets what it was sent, then the error.
        drop = "mirrord: warning: dropping client slow: queue over 1048576 bytes"
        tally = SocketTally(slow)
        started = False
        for start in range(0, N, 50):
            bob.send_raw("".join(f"<message to='{bound}' type='chat'><body>s{i:04d} {PAD}</body></message>"
                                 for i in range(start, start + 50)))
            assert wait_until(lambda: sib_tally.count() >= start + 50, 30), sib_tally.count()
            if not started and drop in (read(p.stderr_path) or ""):
                tally.start()
                started = True
        assert drop in (read(p.stderr_path) or ""), p.stderr_text()
        if not started:
            tally.start()
        tally.join(60)
        assert tally.done, "sj-c2s did not close the slow client's stream"
        got = tally.snapshot()
        assert got.endswith(RC_ERROR), got[-300:]
        seen = bodies(got)
        assert seen == list(range(len(seen))), "the slow client's messages are not a prefix"
        assert 0 < len(seen) < N, len(seen)

        # Its sj-c2s said why, exited 111, and unregistered.
        assert wait_until(lambda: not os.path.exists(slow_dir), 15), os.listdir(os.path.dirname(slow_dir))
        assert wait_until(lambda: f"end {pid} status {111 << 8}" in c2s.log_text(), 15), c2s.log_text()
        assert "sj-c2s: fatal: slow: mirrord dropped this client" in c2s.log_text(), c2s.log_text()

        # The others got everything, in order, and go on.
        assert sib_tally.numbers() == list(range(N))
        assert "dropping client sib" not in (read(p.stderr_path) or "")
        bob.send_message(bound, "after the drop")
        assert wait_until(lambda: b"<body>after the drop</body>" in sib_tally.snapshot(), 20)
        print(f"\nslow client: {len(seen)} of {N} messages, then resource-constraint; "
              f"sibling: all {N}")
        sib.close()
    finally:
        c2s.stop()
    assert "panicked" not in (read(p.stderr_path) or "")
