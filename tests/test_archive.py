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


# ---- sj-c2s clients (slixmpp) ---------------------------------------------

import asyncio  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402

import slixmpp  # noqa: E402
from slixmpp.xmlstream.handler import Callback  # noqa: E402
from slixmpp.xmlstream.matcher import MatchXPath  # noqa: E402

from sjtest.xmpp import C2S  # noqa: E402

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)
ALICE = "alice@localhost"


class Loop:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class Slix:
    """A slixmpp client of sj-c2s keeping every message it gets as XML text."""

    def __init__(self, loop, resource, port):
        self.L = loop
        self.cond = threading.Condition()
        self.messages = []
        self.started = False
        self.L.call(self._make(resource))
        self.port = port

    async def _make(self, resource):
        x = slixmpp.ClientXMPP(f"{ALICE}/{resource}", "local-pw")
        for p in ("xep_0030", "xep_0059", "xep_0203", "xep_0297", "xep_0313", "xep_0359"):
            x.register_plugin(p)
        x.plugin["feature_mechanisms"].unencrypted_scram = True
        x.enable_plaintext = True
        x.enable_starttls = False
        x.enable_direct_tls = False
        x.register_handler(Callback("keep", MatchXPath("{jabber:client}message"), self._keep))
        x.add_event_handler("session_start", self._start)
        self.x = x

    def _keep(self, st):
        with self.cond:
            self.messages.append(str(st))
            self.cond.notify_all()

    async def _start(self, _ev):
        self.x.send_presence()
        with self.cond:
            self.started = True
            self.cond.notify_all()

    def connect(self):
        async def go():
            self.x.connect("127.0.0.1", self.port)
        self.L.call(go())
        with self.cond:
            assert self.cond.wait_for(lambda: self.started, 30), "no session"
        return self

    def wait(self, pred, timeout=60):
        with self.cond:
            assert self.cond.wait_for(lambda: any(pred(m) for m in self.messages), timeout), \
                self.messages[-5:]

    def close(self):
        async def go():
            self.x.disconnect()
        try:
            self.L.call(go(), timeout=10)
        except Exception:
            pass


def nums(msgs, tag):
    return numbers([m.encode() for m in msgs], tag)


def test_c2s_client_away_gets_all_on_relogin_with_delay_sibling_once(proxy, contact):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    c2s = C2S(p.dir)
    L = Loop()
    try:
        sib = Slix(L, "sib", c2s.port).connect()
        away = Slix(L, "away", c2s.port).connect()
        bob.send_message(bound, "first-0000")
        away.wait(lambda m: "first-0000" in m)
        sib.wait(lambda m: "first-0000" in m)
        away.close()
        assert wait_until(lambda: not os.path.exists(os.path.join(p.dir, "clients", "away")), 20)
        send_batch(bob, bound, "c", 500)
        sib.wait(lambda m: "<body>c-0499</body>" in m)
        back = Slix(L, "away", c2s.port).connect()
        back.wait(lambda m: "<body>c-0499</body>" in m)
        bob.send_message(bound, "after-0000")
        back.wait(lambda m: "after-0000" in m)
        sib.wait(lambda m: "after-0000" in m)
        got = [m for m in back.messages if "<body>c-" in m]
        assert nums(got, "c") == list(range(500))
        assert all("urn:xmpp:delay" in m and "stamp=" in m for m in got), got[:2]
        assert nums(back.messages, "first") == [], "replayed what it had"
        assert nums(sib.messages, "c") == list(range(500)), "the sibling got each once"
        assert nums(sib.messages, "after") == [0]
        assert all("urn:xmpp:delay" not in m for m in sib.messages if "<body>c-" in m)
        back.close()
        sib.close()
    finally:
        c2s.stop()


def test_mam_pages_a_5000_message_history(proxy, contact):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    send_batch(bob, bound, "h", 5000, batch=250)
    wait_archived(p, "h", 5000, timeout=120)
    c2s = C2S(p.dir)
    L = Loop()
    try:
        c = Slix(L, "mam", c2s.port).connect()
        info = L.call(c.x.plugin["xep_0030"].get_info(jid=ALICE, timeout=30))
        feats = info["disco_info"]["features"]
        assert "urn:xmpp:mam:2" in feats and "urn:xmpp:sid:0" in feats, feats

        async def page_all():
            got = []
            async for m in c.x.plugin["xep_0313"].iterate(jid=slixmpp.JID(ALICE), with_jid=slixmpp.JID(BOB),
                                                   rsm={"max": 250}):
                got.append(m)
            return got
        got = L.call(page_all(), timeout=120)
        bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in got]
        assert [int(b[2:]) for b in bodies if b.startswith("h-")] == list(range(5000))
        assert all(m["mam_result"]["forwarded"]["delay"]["stamp"] for m in got[:3])

        # The last page, backwards (RSM <before/>), by hand.
        import xml.etree.ElementTree as ET

        async def last_page():
            iq = c.x.Iq()
            iq["type"] = "set"
            iq["to"] = ALICE
            iq.append(ET.fromstring(
                "<query xmlns='urn:xmpp:mam:2' queryid='last'><set xmlns='http://jabber.org/protocol/rsm'>"
                "<max>10</max><before/></set></query>"))
            return await iq.send(timeout=30)
        iq = L.call(last_page())
        fin = iq.xml.find("{urn:xmpp:mam:2}fin")
        assert fin is not None and fin.get("complete") == "false", str(iq)
        last = [m for m in c.messages if "queryid=\"last\"" in m or "queryid='last'" in m]
        assert nums(last, "h") == list(range(4990, 5000)), last[:2]
        c.close()
    finally:
        c2s.stop()


# ---- crash safety, the horizon, sj-log ------------------------------------

def newest_segment(p):
    return sorted(glob.glob(os.path.join(p.dir, "archive", "????-??.*")))[-1]


def test_archive_survives_sigkill_mid_append(proxy, contact, prosody):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    send_batch(bob, bound, "k", 300)
    wait_archived(p, "k", 300)
    # SIGKILL while records still come in.
    send_batch(bob, bound, "m", 300)
    os.kill(p.proxy_pid(), signal.SIGKILL)
    p.wait_exit(15)
    before = archive_text(p)
    # A kill (or power loss) in the middle of a write leaves half a line.
    seg = newest_segment(p)
    torn = b"1900000000000000 2030-03-17T17:46:40.000000Z <* <message from='bob@localhost'><body>torn-00"
    with open(seg, "ab") as f:
        f.write(torn)
    # Started again on the same directory, it cuts the torn line, keeps
    # everything before it and goes on after it.
    for c in p.clients.values():
        c.close()
    q = proxy("alice", workdir=p.workdir)
    bound = q.online()
    assert wait_until(lambda: "archive: cut a torn last line" in (read(q.stderr_path) or ""), 15), \
        q.stderr_text()
    bob.send_message(bound, "again-0000")
    assert wait_until(lambda: b"<body>again-0000</body>" in archive_text(q), 20)
    after = archive_text(q)
    assert after.startswith(before), "something before the torn line was lost"
    assert b"torn-00" not in after
    assert numbers([before], "k") == list(range(300))
    # Every line parses: id, stamp, flow, record.
    line = re.compile(rb"^\d{16} \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (<\*|<-|>c|>-|=\*|!!) <.*>$")
    for ln in after.split(b"\n")[:-1]:
        assert line.match(ln), ln[:200]
    assert after.endswith(b"\n")
    ids = [int(ln[:16]) for ln in after.split(b"\n")[:-1]]
    assert ids == sorted(set(ids)), "ids not strictly increasing"


def test_client_away_past_the_horizon_gets_one_notice_and_the_recent_part(proxy, contact):
    p = proxy("alice", env={"SJ_CATCHUP_RECORDS": "50"})
    bound = p.online()
    bob = contact("bob")
    rc = p.raw_client("far")
    bob.send_message(bound, "hello-0000")
    rc.wait_line(lambda l: b"<body>hello-0000</body>" in l, 20)
    rc.close()
    send_batch(bob, bound, "z", 200)
    wait_archived(p, "z", 200)
    rc = RawClient(p.dir, "far")
    p.clients["far2"] = rc
    rc.wait_line(lambda l: b"<body>z-0199</body>" in l, 60)
    bob.send_message(bound, "live-0000")
    rc.wait_line(lambda l: b"<body>live-0000</body>" in l, 20)
    got = rc.drain()
    notices = [l for l in got if b"sj-horizon-" in l]
    assert len(notices) == 1, notices
    assert b"catch-up horizon" in notices[0] and b"type='headline'" in notices[0]
    assert got.index(notices[0]) < min(i for i, l in enumerate(got) if b"<body>z-" in l)
    assert numbers(got, "z") == list(range(150, 200))
    assert numbers(got, "live") == [0]


def test_sj_log_prints_history_between_two_times(proxy, contact, prosody):
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    carol = contact("carol")
    send_batch(bob, bound, "a", 20)
    carol.send_message(bound, "carol-0000")
    wait_archived(p, "a", 20)
    assert wait_until(lambda: b"carol-0000" in archive_text(p), 20)
    # A message the account sends, from a raw client.
    rc = p.raw_client("sh")
    rc.send(f"<message to='{BOB}' type='chat'><body>reply-0000</body></message>")
    assert wait_until(lambda: b"reply-0000" in archive_text(p), 20)
    send_batch(bob, bound, "b", 20)
    wait_archived(p, "b", 20)
    lines = archive_text(p).split(b"\n")
    stamp = lambda tag: [ln for ln in lines if tag in ln][0].split(b" ")[1].decode()
    t0, t1 = stamp(b"<body>a-0010</body>"), stamp(b"<body>b-0005</body>")
    log = sj_bin("sj-log")
    r = subprocess.run([log, "-d", p.dir, "-s", t0, "-e", t1, BOB], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    fields = [l.split("\t") for l in out]
    assert all(len(f) == 4 for f in fields), out
    bodies = [f[3] for f in fields]
    assert bodies == [f"a-{i:04d}" for i in range(10, 20)] + ["reply-0000"] + \
        [f"b-{i:04d}" for i in range(6)], bodies
    assert [f[1] for f in fields if f[3] == "reply-0000"] == [">"]
    assert fields[0][2].startswith(BOB) and fields[0][1] == "<"
    # The whole account: carol too. Raw records: archive lines.
    r = subprocess.run([log, "-d", p.dir, "-a", ALICE], capture_output=True, timeout=30)
    assert "carol-0000" in r.stdout.decode() and "a-0000" in r.stdout.decode()
    r = subprocess.run([log, "-r", "-d", p.dir, "-s", t0, "-e", t1, BOB], capture_output=True,
                       timeout=30)
    raw = r.stdout.split(b"\n")[:-1]
    assert len(raw) == 17 and all(re.match(rb"^\d{16} ", ln) for ln in raw), raw[:2]
    r = subprocess.run([log, "-d", p.dir, "-s", "yesterday"], capture_output=True, timeout=30)
    assert r.returncode == 100 and b"sj-log: fatal:" in r.stderr
