"""Several clients acting as one resource (issue 16): group chats, caps and
PEP, archive results, block-list pushes, client state indication and
unknown first-level elements.

Real Prosody (the session server of conftest.py, with its MUC component
conference.localhost, muc_mam, pep and blocklist), real sj-proxy for alice,
sj-c2s under tcpserver, slixmpp clients behind it, mcabber (Debian's) in
tmux behind it, and carol as a slixmpp contact on Prosody directly.

Run: python3 -m pytest -q tests/test_rooms.py
Needs prosody, tcpserver, tcpclient, tmux and mcabber (tests/setup.sh).
"""

import asyncio
import base64
import copy
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slixmpp = pytest.importorskip("slixmpp")
from slixmpp.xmlstream.handler import Callback  # noqa: E402
from slixmpp.xmlstream.matcher import MatchXPath  # noqa: E402
from sjtest.proxy import Proxy, RawClient, parse_record, sj_bin  # noqa: E402
from sjtest.prosody import free_port, wait_port  # noqa: E402

BARE = "alice@localhost"
MUC = "conference.localhost"
WAIT = 20.0
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MAM = "urn:xmpp:mam:2"
NS_BLOCK = "urn:xmpp:blocking"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_TUNE = "http://jabber.org/protocol/tune"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
JC = "{jabber:client}"

for tool in ("tcpserver", "tcpclient"):
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed", allow_module_level=True)


def wait_until(pred, timeout=WAIT, what="condition"):
    """Poll `pred` until true; a bounded wait, never a fixed sleep."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def room_jid(tag):
    return f"{tag}-{uuid.uuid4().hex[:8]}@{MUC}"


def muc_statuses(el):
    x = el.find(f"{{{NS_MUC_USER}}}x")
    if x is None:
        return set()
    return {s.get("code") for s in x.findall(f"{{{NS_MUC_USER}}}status")}


def is_self_presence(room):
    def pred(el):
        return (el.tag == JC + "presence" and (el.get("from") or "").startswith(room + "/")
                and "110" in muc_statuses(el))
    return pred


def body(el):
    b = el.find(JC + "body")
    return None if b is None else b.text


def groupchat_from(room):
    return lambda el: (el.tag == JC + "message" and el.get("type") == "groupchat"
                       and (el.get("from") or "").split("/")[0] == room)


class Loop:
    """One asyncio loop in a thread for every slixmpp client."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout=WAIT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class Client:
    """A slixmpp client; every stanza it receives is kept as an ElementTree
    element, and whether its stream ended."""

    def __init__(self, loop, jid, password, port, interests=()):
        self.L = loop
        self.jid = jid
        self.port = port
        self.cond = threading.Condition()
        self.stanzas = []
        self.started = False
        self.ended = False
        self.L.call(self._make(password, interests))

    async def _make(self, password, interests):
        x = slixmpp.ClientXMPP(self.jid, password)
        for p in ("xep_0030", "xep_0115", "xep_0163", "xep_0199"):
            x.register_plugin(p)
        x.plugin["feature_mechanisms"].unencrypted_scram = True
        x.enable_plaintext = True
        x.enable_starttls = False
        x.enable_direct_tls = False
        for ns in interests:
            x.plugin["xep_0030"].add_feature(ns + "+notify")
        for xp in ("{jabber:client}message", "{jabber:client}iq", "{jabber:client}presence"):
            x.register_handler(Callback("keep " + xp, MatchXPath(xp), self._keep))
        x.add_event_handler("session_start", self._start)
        x.add_event_handler("disconnected", self._ended)
        self.x = x

    def _keep(self, st):
        with self.cond:
            self.stanzas.append(copy.deepcopy(st.xml))
            self.cond.notify_all()

    async def _start(self, _ev):
        # Caps with the interests, in the first presence.
        await self.x.plugin["xep_0115"].update_caps(preserve=True)
        self.x.send_presence()
        with self.cond:
            self.started = True
            self.cond.notify_all()

    def _ended(self, _ev):
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def connect(self):
        async def go():
            self.x.connect("127.0.0.1", self.port)
        self.L.call(go())
        with self.cond:
            assert self.cond.wait_for(lambda: self.started or self.ended, WAIT), self.jid
        assert self.started, f"{self.jid}: no session"
        return self

    def send_raw(self, xml):
        self.L.loop.call_soon_threadsafe(lambda: self.x.send_raw(xml))

    def mark(self):
        with self.cond:
            return len(self.stanzas)

    def wait(self, pred, what="stanza", timeout=WAIT, start=0):
        with self.cond:
            ok = self.cond.wait_for(
                lambda: any(pred(s) for s in self.stanzas[start:]), timeout)
            assert ok, (f"{self.jid}: timed out waiting for {what}; got "
                        f"{[ET.tostring(s)[:300] for s in self.stanzas[-8:]]}")
            return [s for s in self.stanzas[start:] if pred(s)]

    def count(self, pred, start=0):
        with self.cond:
            return sum(1 for s in self.stanzas[start:] if pred(s))

    def close(self):
        async def go():
            self.x.disconnect()
        try:
            self.L.call(go(), timeout=5)
        except Exception:
            pass


class Carol:
    """carol, connected to Prosody directly: the room as others see it."""

    def __init__(self, loop, port):
        self.c = Client(loop, "carol@localhost/slix", "carol-pw", port).connect()

    def join(self, room):
        self.c.send_raw(f"<presence to='{room}/carol'><x xmlns='{NS_MUC}'/></presence>")
        self.c.wait(is_self_presence(room), "carol's own room presence")

    def say(self, room, text):
        self.c.send_raw(f"<message to='{room}' type='groupchat'><body>{text}</body></message>")

    def wait_said(self, room, text):
        """The room reflected `text` (said by anyone) to carol."""
        return self.c.wait(lambda el: groupchat_from(room)(el) and body(el) == text,
                           f"{text!r} in {room}")

    def alice_presences(self, room, start=0):
        """Presences carol got for the account's nick (`alice`)."""
        with self.c.cond:
            return [s for s in self.c.stanzas[start:]
                    if s.tag == JC + "presence" and s.get("from") == f"{room}/alice"]


def join(client, room, nick="alice"):
    start = client.mark()
    client.send_raw(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>"
                    f"<history maxstanzas='20'/></x></presence>")
    client.wait(is_self_presence(room), f"own presence in {room}", start=start)
    return start


@pytest.fixture(scope="module")
def env(prosody, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rooms")
    proxy = Proxy(prosody.jid("alice"), "alice-pw", prosody.addr, prosody.port).start()
    proxy.online()
    d = Path(proxy.dir)
    subprocess.run([sj_bin("sj-passwd"), "-d", str(d)], input=b"local-pw\n", check=True)
    bins = os.path.dirname(sj_bin("sj-c2s"))
    envv = dict(os.environ, PATH=f"{bins}:{os.environ['PATH']}")
    port = free_port()
    log = open(tmp / "sj-c2s.log", "wb")
    server = subprocess.Popen(
        ["tcpserver", "-RHl0", "127.0.0.1", str(port), sj_bin("sj-c2s"), "-v", "-d", str(d)],
        env=envv, stderr=log)
    wait_port("127.0.0.1", port)
    loop = Loop()
    carol = Carol(loop, prosody.port)
    yield {"dir": d, "port": port, "loop": loop, "carol": carol, "proxy": proxy, "tmp": tmp,
           "c2s_log": tmp / "sj-c2s.log"}
    carol.c.close()
    proxy.stop()
    proxy.kill()
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture
def clients(env):
    """Factory: clients('name', interests=()) -> a connected slixmpp client
    of sj-c2s bound to resource `name`; all closed after the test, and
    their client directories gone."""
    made = []

    def make(name, interests=()):
        c = Client(env["loop"], f"{BARE}/{name}", "local-pw", env["port"], interests).connect()
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()
    for c in made:
        wait_until(lambda: not (env["dir"] / "clients" / c.jid.split("/")[1]).exists(),
                   what="client directory removed")


MCABBERRC = """\
set jid = {jid}
set password = local-pw
set server = 127.0.0.1
set port = {port}
set tls = 0
set ssl = 0
set resource = mcabber
set disable_random_resource = 1
set tracelog_level = 3
set tracelog_file = {trace}
set logging = 0
set load_logs = 0
set beep_on_message = 0
set autoaway = 0
set iq_hide_requests = 1
"""


class Mcabber:
    """mcabber in a tmux session of its own (its own server socket)."""

    def __init__(self, workdir, port):
        self.home = workdir / "mcabber-home"
        (self.home / ".mcabber").mkdir(parents=True, exist_ok=True)
        os.chmod(self.home / ".mcabber", 0o700)
        self.trace = self.home / "trace.log"
        self.rc = self.home / ".mcabber" / "mcabberrc"
        self.rc.write_text(MCABBERRC.format(jid=BARE, port=port, trace=self.trace))
        os.chmod(self.rc, 0o600)
        self.sock = f"sjtest-mcabber-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run(
            ["tmux", "-L", self.sock, "new-session", "-d", "-x", "160", "-y", "48", "-s", "mc",
             f"env HOME={self.home} TERM=screen mcabber -f {self.rc}"],
            check=True, timeout=30)

    def trace_text(self):
        try:
            return self.trace.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def mcabber(env):
    if not (shutil.which("mcabber") and shutil.which("tmux")):
        pytest.skip("mcabber and tmux not installed (tests/setup.sh)")
    m = Mcabber(env["tmp"], env["port"])
    try:
        wait_until(lambda: (env["dir"] / "clients" / "mcabber").exists(), what="mcabber logged in")
        yield m
    finally:
        m.stop()
        wait_until(lambda: not (env["dir"] / "clients" / "mcabber").exists(),
                   what="mcabber gone")


def test_room_traffic_only_to_the_joined_client_mcabber_stays_quiet(env, clients, mcabber):
    """A joins; mcabber (connected, not joined) gets none of carol's ten
    messages and so sends no leave; the room still has alice; a raw
    client that did not join sees nothing of the room either."""
    carol = env["carol"]
    room = room_jid("quiet")
    carol.join(room)
    watch = env["proxy"].raw_client("watch")
    a = clients("a")
    join(a, room)
    for i in range(10):
        carol.say(room, f"ten-{i}")
    got = a.wait(lambda el: groupchat_from(room)(el) and (body(el) or "").startswith("ten-")
                 and len([s for s in a.stanzas if groupchat_from(room)(s)
                          and (body(s) or "").startswith("ten-")]) >= 10, "ten messages")
    assert len(got) >= 1
    bodies = [body(s) for s in a.stanzas if groupchat_from(room)(s)
              and (body(s) or "").startswith("ten-")]
    assert bodies == [f"ten-{i}" for i in range(10)], bodies
    # A barrier through every client: mcabber has handled what came before.
    carol.c.send_raw(f"<message to='{BARE}' type='chat'><body>barrier-q</body></message>")
    wait_until(lambda: "barrier-q" in mcabber.trace_text(), what="mcabber got the barrier")
    watch.wait_line(lambda ln: b"barrier-q" in ln)
    trace = mcabber.trace_text()
    assert "ten-" not in trace, "mcabber got room traffic it did not ask for"
    assert room not in trace, "mcabber heard of the room"
    assert not any(b"ten-" in ln or room.encode() in ln for ln in watch.lines)
    # The account is still in the room: what A says reaches carol, and
    # carol never saw alice leave.
    a.send_raw(f"<message to='{room}' type='groupchat'><body>still-here</body></message>")
    carol.wait_said(room, "still-here")
    assert not [p for p in carol.alice_presences(room) if p.get("type") == "unavailable"]
    # A client that connects later is not replayed the room's presences.
    late = clients("late")
    late.send_raw("<iq type='get' id='late-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
    late.wait(lambda el: el.get("id") == "late-ping", "a round trip through the server")
    carol.c.send_raw(f"<message to='{BARE}' type='chat'><body>barrier-late</body></message>")
    late.wait(lambda el: body(el) == "barrier-late", "barrier at the late client")
    assert late.count(lambda el: (el.get("from") or "").split("/")[0] == room) == 0
    # DIR/<room>/out has each of carol's messages once.
    out = env["dir"] / room / "out"
    wait_until(lambda: out.exists() and "still-here" in out.read_text(), what="room log")
    text = out.read_text()
    for i in range(10):
        assert text.count(f"ten-{i}\n") == 1, text


def test_room_member_away_gets_the_room_from_the_archive_others_do_not(env):
    """A raw client in a room stops reading while carol says 20 things
    there; when it reads again it gets each once, in order, with its time
    (the archive's catch-up); a raw client that was away as long but never
    joined gets none of them."""
    carol = env["carol"]
    room = room_jid("away")
    carol.join(room)
    p = env["proxy"]
    member, other = p.raw_client("rmember"), p.raw_client("rother")
    member.send(f"<presence to='{room}/alice'><x xmlns='{NS_MUC}'/></presence>")
    member.wait_line(lambda ln: room.encode() in ln and b"code='110'" in ln, WAIT)
    carol.say(room, "before-00")
    member.wait_line(lambda ln: b"<body>before-00</body>" in ln, WAIT)
    carol.c.send_raw(f"<message to='{BARE}' type='chat'><body>barrier-a1</body></message>")
    other.wait_line(lambda ln: b"barrier-a1" in ln, WAIT)
    member.close()
    other.close()
    for i in range(20):
        carol.say(room, f"away-{i:02d}")
    carol.wait_said(room, "away-19")
    # The router had them: the room's log holds the last one.
    out = env["dir"] / room / "out"
    wait_until(lambda: out.exists() and "away-19" in out.read_text(), what="the room's log")
    member, other = RawClient(p.dir, "rmember"), RawClient(p.dir, "rother")
    p.clients["rmember-2"], p.clients["rother-2"] = member, other
    member.wait_line(lambda ln: b"<body>away-19</body>" in ln, 30)
    carol.c.send_raw(f"<message to='{BARE}' type='chat'><body>barrier-a2</body></message>")
    member.wait_line(lambda ln: b"barrier-a2" in ln, WAIT)
    other.wait_line(lambda ln: b"barrier-a2" in ln, WAIT)
    said = [ln for ln in member.drain() if b"<body>away-" in ln]
    assert [ln.split(b"<body>")[1][:7].decode() for ln in said] == \
        [f"away-{i:02d}" for i in range(20)], said[:3]
    assert all(b"urn:xmpp:delay" in ln for ln in said), said[0]
    assert not any(b"<body>before-00</body>" in ln for ln in member.lines[-40:]), \
        "a record it had taken came again"
    assert not any(b"away-" in ln or room.encode() in ln for ln in other.drain()), \
        "a client not in the room got the room's traffic"


def test_second_join_answered_locally_and_leave_semantics(env, clients):
    """B joins a room A is in: occupants from the cache, one join for the
    room (carol sees one presence of alice, no rename); B leaving keeps
    the account in; A, the last one, leaves upstream. A raw client joins
    like any client."""
    carol = env["carol"]
    room = room_jid("twice")
    carol.join(room)
    mark = carol.c.mark()
    a = clients("a")
    join(a, room)
    carol.c.wait(lambda el: el.tag == JC + "presence" and el.get("from") == f"{room}/alice",
                 "alice joined", start=mark)
    carol.say(room, "before-b")
    a.wait(lambda el: body(el) == "before-b", "before-b")
    b = clients("b")
    start = join(b, room, nick="otherb")
    got = b.stanzas[start:]
    # The occupant list, from the cache: carol is there; and B's own
    # presence is the account's occupant.
    assert any(s.tag == JC + "presence" and s.get("from") == f"{room}/carol" for s in got)
    own = [s for s in got if is_self_presence(room)(s)]
    assert own[-1].get("from") == f"{room}/alice"
    assert own[-1].get("to") == f"{BARE}/b"
    # The room saw one join: carol got one presence for alice, no 303.
    carol.say(room, "after-b")
    a.wait(lambda el: body(el) == "after-b", "after-b at A")
    b.wait(lambda el: body(el) == "after-b", "after-b at B")
    pres = carol.alice_presences(room, mark)
    assert len(pres) == 1, [ET.tostring(p) for p in pres]
    assert not any("303" in muc_statuses(p) for p in carol.c.stanzas[mark:])
    assert not any((s.get("from") or "").startswith(f"{room}/otherb") for s in carol.c.stanzas)
    # No history replayed to A by B's join.
    assert a.count(lambda el: body(el) == "before-b") == 1
    # A raw client joins from its FIFO: answered from the cache too.
    raw = env["proxy"].raw_client("rawjoin")
    raw.send(f"<presence to='{room}/alice'><x xmlns='{NS_MUC}'/></presence>")
    raw.wait_record(is_self_presence(room))
    carol.say(room, "to-three")
    raw.wait_record(lambda el: body(el) == "to-three")
    # B leaves: B is told it left, the account stays.
    mb = b.mark()
    b.send_raw(f"<presence to='{room}/alice' type='unavailable'/>")
    b.wait(lambda el: el.tag == JC + "presence" and el.get("type") == "unavailable"
           and (el.get("from") or "").startswith(room), "B's leave answered", start=mb)
    raw.send(f"<presence to='{room}/alice' type='unavailable'/>")
    raw.wait_record(lambda el: el.tag == JC + "presence" and el.get("type") == "unavailable")
    carol.say(room, "after-b-left")
    a.wait(lambda el: body(el) == "after-b-left", "after-b-left at A")
    assert not [p for p in carol.alice_presences(room) if p.get("type") == "unavailable"]
    assert b.count(lambda el: body(el) == "after-b-left") == 0
    # DIR/<room>/out logged each message once though three clients got it.
    out = env["dir"] / room / "out"
    wait_until(lambda: out.exists() and "after-b-left" in out.read_text(), what="room log")
    assert out.read_text().count("to-three\n") == 1
    # A, the last one, leaves: the room sees alice go.
    a.send_raw(f"<presence to='{room}/alice' type='unavailable'/>")
    carol.c.wait(lambda el: el.tag == JC + "presence" and el.get("from") == f"{room}/alice"
                 and el.get("type") == "unavailable", "alice left the room")


@pytest.mark.parametrize("notify,publisher", [("anna", "zeno"), ("zora", "bert")])
def test_pep_event_reaches_the_client_with_notify(env, clients, notify, publisher):
    """A client with +notify for tune gets the event its sibling publishes,
    whichever sorts first and whichever presence came last."""
    since = os.path.getsize(env["proxy"].stderr_path)
    n = clients(notify, interests=(NS_TUNE,))
    p = clients(publisher)
    # The account's caps are re-announced with the union; the server asks
    # sj-proxy about them (its -v trace shows the answer). Publishing
    # before that would notify nobody.
    def answered():
        with open(env["proxy"].stderr_path, "rb") as f:
            f.seek(since)
            return any(b">>" in ln and b"sj-proxy.invalid/caps" in ln and b"tune+notify" in ln
                       for ln in f.read().splitlines())
    wait_until(answered, what="sj-proxy answered the server's disco#info with tune+notify")
    start = n.mark()
    item = uuid.uuid4().hex[:8]
    p.send_raw(
        f"<iq type='set' id='pub-{item}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{NS_TUNE}'>"
        f"<item id='{item}'><tune xmlns='{NS_TUNE}'><title>t-{item}</title></tune></item>"
        f"</publish></pubsub></iq>")
    p.wait(lambda el: el.tag == JC + "iq" and el.get("id") == f"pub-{item}", "publish result")

    def event(el):
        ev = el.find(f"{{{NS_EVENT}}}event")
        return (el.tag == JC + "message" and ev is not None
                and ev.find(f"{{{NS_EVENT}}}items/{{{NS_EVENT}}}item[@id='{item}']") is not None)
    n.wait(event, "the tune event", start=start)


def test_archive_results_reach_only_the_asker(env, clients):
    """A MAM query to a room from one client: its results go to it only."""
    carol = env["carol"]
    room = room_jid("mam")
    carol.join(room)
    for i in range(3):
        carol.say(room, f"arch-{i}")
    carol.wait_said(room, "arch-2")
    asker = clients("asker")
    other = clients("other")
    watch = env["proxy"].raw_client("mamwatch")
    asker.send_raw(f"<iq type='set' id='mam1' to='{room}'><query xmlns='{NS_MAM}' "
                   f"queryid='q-{room[:8]}'/></iq>")
    asker.wait(lambda el: el.tag == JC + "iq" and el.get("id") == "mam1", "the query's end")

    def result(el):
        return el.tag == JC + "message" and el.find(f"{{{NS_MAM}}}result") is not None
    assert asker.count(result) >= 3
    # A barrier through every client, after the results.
    carol.c.send_raw(f"<message to='{BARE}' type='chat'><body>barrier-mam</body></message>")
    other.wait(lambda el: body(el) == "barrier-mam", "barrier at other")
    watch.wait_line(lambda ln: b"barrier-mam" in ln)
    assert other.count(result) == 0
    assert not any(NS_MAM.encode() in ln for ln in watch.lines)


def test_block_push_reaches_every_client(env, clients):
    aa = clients("aa")
    zz = clients("zz")
    # The server pushes to sessions that asked for the list (Prosody).
    aa.send_raw(f"<iq type='get' id='bl0'><blocklist xmlns='{NS_BLOCK}'/></iq>")
    aa.wait(lambda el: el.tag == JC + "iq" and el.get("id") == "bl0", "block list")
    ma, mz = aa.mark(), zz.mark()
    who = f"blocked-{uuid.uuid4().hex[:6]}@localhost"
    zz.send_raw(f"<iq type='set' id='blk'><block xmlns='{NS_BLOCK}'><item jid='{who}'/></block></iq>")
    zz.wait(lambda el: el.tag == JC + "iq" and el.get("id") == "blk" and el.get("type") == "result",
            "block result")

    def push(el):
        b = el.find(f"{{{NS_BLOCK}}}block")
        return (el.tag == JC + "iq" and el.get("type") == "set" and b is not None
                and b.find(f"{{{NS_BLOCK}}}item[@jid='{who}']") is not None)
    aa.wait(push, "the push at aa", start=ma)
    zz.wait(push, "the push at zz", start=mz)
    zz.send_raw(f"<iq type='set' id='unblk'><unblock xmlns='{NS_BLOCK}'><item jid='{who}'/></unblock></iq>")
    zz.wait(lambda el: el.get("id") == "unblk", "unblock result")


def test_inactive_client_gets_presence_on_active(env, clients):
    """XEP-0352: presence waits while the client is inactive, and comes
    when it is active again; the stream stays up."""
    c = clients("csi")
    watch = env["proxy"].raw_client("csiwatch")
    c.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
    # sj-c2s reads in order: once the ping after it is answered, the
    # client is inactive.
    c.send_raw("<iq type='get' id='csi-ping' to='sj-proxy@control.invalid'>"
               "<ping xmlns='urn:xmpp:ping'/></iq>")
    c.wait(lambda el: el.get("id") == "csi-ping", "ping answered")
    inactive_at = c.mark()
    status = f"held-{uuid.uuid4().hex[:6]}"
    # A directed presence to the account: it reaches every client.
    env["carol"].c.send_raw(f"<presence to='{BARE}'><status>{status}</status></presence>")
    watch.wait_line(lambda ln: status.encode() in ln)

    def held(el):
        st = el.find(JC + "status")
        return el.tag == JC + "presence" and st is not None and st.text == status
    # It reached mirrord's FIFOs; the inactive client does not get it
    # (a bounded look: an absence has no event to wait for).
    def urgent(el):
        return el.tag == JC + "iq" or (el.tag == JC + "message" and body(el) is not None)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with c.cond:
            since = c.stanzas[inactive_at:]
        got = [i for i, el in enumerate(since) if held(el)]
        if got:
            # Held presence goes out before the next urgent stanza (an iq
            # from sj-proxy, say), never on its own.
            assert any(urgent(el) for el in since[got[0] + 1:]), \
                "presence delivered to an inactive client before anything urgent"
        assert not c.ended
        time.sleep(0.1)
    c.send_raw("<active xmlns='urn:xmpp:csi:0'/>")
    c.wait(held, "the held presence")
    assert not c.ended


def raw_login(port):
    """A raw stream into sj-c2s: PLAIN (loopback), bind; returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    hdr = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")

    def until(token):
        got = b""
        end = time.monotonic() + WAIT
        while token not in got and time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert token in got, got
        return got
    s.sendall(hdr.encode())
    until(b"</stream:features>")
    cred = base64.b64encode(b"\0alice\0local-pw").decode()
    s.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>".encode())
    until(b"<success")
    s.sendall(hdr.encode())
    feats = until(b"</stream:features>")
    s.sendall(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
              b"<resource>rawstream</resource></bind></iq>")
    until(b"</iq>")
    return s, until, feats


def test_unknown_first_level_element_is_unsupported_stanza_type(env):
    s, until, feats = raw_login(env["port"])
    with s:
        s.sendall(b"<frobnicate xmlns='urn:example:unknown'/>")
        got = until(b"</stream:stream>")
    assert b"<unsupported-stanza-type xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in got, got
    assert b"invalid-namespace" not in got
    # What it does know is offered after authentication (XEP-0352 §3).
    assert b"<csi xmlns='urn:xmpp:csi:0'/>" in feats
