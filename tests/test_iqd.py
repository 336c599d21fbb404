"""iqd and the roster tool, end to end: real Prosody, slixmpp contacts, a
real sj-proxy (harness fixtures in conftest.py)."""

import os
import stat
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from sjtest.poll import read, wait_until
from sjtest.proxy import sj_bin

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def iq_answer(contact, iq_id, timeout=10.0, start=0):
    """The iq result/error with this id that `contact` received, parsed."""
    s = contact.wait_for(lambda s: s.name == "iq" and s["id"] == iq_id
                         and s["type"] in ("result", "error"), timeout, start)
    return ET.fromstring(str(s))


def condition(el):
    err = [c for c in el if c.tag.split("}")[-1] == "error"]
    assert err, ET.tostring(el)
    err = err[0]
    return [c.tag.split("}")[1] for c in err if c.tag.startswith("{" + STANZAS)][0]


def write_in(d, record):
    fd = os.open(os.path.join(d, "in"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (record + "\n").encode())
    finally:
        os.close(fd)


@pytest.fixture
def alice(proxy):
    p = proxy("alice")
    full = p.online()
    # iqd is up once its roster get was answered (DIR/roster exists).
    wait_until(lambda: os.path.exists(os.path.join(p.dir, "roster")), 10)
    return p, full


def test_version_query_answered_by_iqd(alice, contact):
    p, full = alice
    bob = contact("bob")
    m = bob.mark()
    bob.send_raw(f"<iq type='get' id='v1' to='{full}'><query xmlns='jabber:iq:version'/></iq>")
    el = iq_answer(bob, "v1", start=m)
    assert el.get("type") == "result", ET.tostring(el)
    q = el.find("{jabber:iq:version}query")
    assert q.findtext("{jabber:iq:version}name") == "sj-proxy"
    assert q.findtext("{jabber:iq:version}version")


def test_ping_and_disco(alice, contact):
    p, full = alice
    bob = contact("bob")
    m = bob.mark()
    bob.send_raw(f"<iq type='get' id='p1' to='{full}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert iq_answer(bob, "p1", start=m).get("type") == "result"
    bob.send_raw(f"<iq type='get' id='d1' to='{full}'>"
                 "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    el = iq_answer(bob, "d1", start=m)
    feats = {f.get("var") for f in el.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {"urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time"} <= feats


def test_handler_answers_custom_namespace(alice, contact):
    p, full = alice
    d = os.path.join(p.dir, "iq.d")
    os.makedirs(d, mode=0o700, exist_ok=True)
    h = os.path.join(d, "urn:example:echo")
    with open(h, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\n"
                "printf \"<echo xmlns='urn:example:echo'>%s %s</echo>\\n\" \"$IQ_TYPE\" \"$IQ_ID\"\n")
    os.chmod(h, 0o700)
    bob = contact("bob")
    m = bob.mark()
    bob.send_raw(f"<iq type='get' id='e1' to='{full}'><echo xmlns='urn:example:echo'/></iq>")
    el = iq_answer(bob, "e1", start=m)
    assert el.get("type") == "result", ET.tostring(el)
    assert el.findtext("{urn:example:echo}echo") == "get e1"


def test_unknown_namespace_without_client_is_service_unavailable(alice, contact):
    p, full = alice
    bob = contact("bob")
    m = bob.mark()
    bob.send_raw(f"<iq type='get' id='u1' to='{full}'><query xmlns='urn:example:nobody'/></iq>")
    el = iq_answer(bob, "u1", start=m)
    assert el.get("type") == "error"
    assert condition(el) == "service-unavailable"


def test_unknown_namespace_is_delegated_to_primary_client(alice, contact):
    p, full = alice
    c = p.raw_client("zz")
    a = p.raw_client("aa")
    bob = contact("bob")
    bob.send_raw(f"<iq type='get' id='g1' to='{full}'><query xmlns='urn:example:client'/></iq>")
    bare = full.split("/")[0]
    _, el = a.wait_record(lambda e: e.tag.endswith("iq") and e.get("id") == "g1")
    assert el.get("to") == f"{bare}/aa"
    assert el.get("from") == bob.full_jid
    # Only the primary gets it.
    time.sleep(0.3)
    assert not any(b"id='g1'" in line for line in c.drain())


def run_roster(p, *args, timeout=20):
    return subprocess.run([sj_bin("roster"), "-d", p.dir, *args], capture_output=True,
                          text=True, timeout=timeout)


def test_roster_tool_add_list_remove(alice):
    p, _ = alice
    roster_file = os.path.join(p.dir, "roster")
    r = run_roster(p, "add", "carol@localhost", "Carol", "-g", "Friends")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: "carol@localhost\t" in (read(roster_file) or ""))
    line = [ln for ln in read(roster_file).splitlines() if ln.startswith("carol@localhost\t")][0]
    jid, sub, name, groups = line.split("\t")
    assert (name, groups) == ("Carol", "Friends")
    assert stat.S_IMODE(os.stat(roster_file).st_mode) == 0o600
    r = run_roster(p, "list")
    assert r.returncode == 0
    assert any(ln.split("\t")[0] == "carol@localhost" and ln.split("\t")[2] == "Carol"
               for ln in r.stdout.splitlines()), r.stdout
    r = run_roster(p, "name", "carol@localhost", "Caroline")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: "carol@localhost\tnone\tCaroline\tFriends" in (read(roster_file) or "")
                      or "\tCaroline\tFriends" in (read(roster_file) or ""))
    r = run_roster(p, "remove", "carol@localhost")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: "carol@localhost" not in (read(roster_file) or "x"))
    assert "carol@localhost" not in run_roster(p, "list").stdout
    # The answer FIFOs are gone.
    assert not [n for n in os.listdir(os.path.join(p.dir, "iq")) if n.startswith("roster-")]


def test_roster_tool_without_proxy(tmp_path):
    r = subprocess.run([sj_bin("roster"), "-d", str(tmp_path), "add", "carol@localhost"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 111
    assert "no reader" in r.stderr


def test_forged_roster_push_refused(alice, contact):
    p, full = alice
    before = read(os.path.join(p.dir, "roster"))
    bob = contact("bob")
    m = bob.mark()
    bob.send_raw(f"<iq type='set' id='f1' to='{full}'><query xmlns='jabber:iq:roster'>"
                 "<item jid='mallory@localhost' name='M'/></query></iq>")
    el = iq_answer(bob, "f1", start=m)
    assert el.get("type") == "error"
    assert condition(el) == "service-unavailable"
    assert read(os.path.join(p.dir, "roster")) == before


def snapshot(root):
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def test_hostile_result_id_stays_in_iq_dir(alice):
    p, _ = alice
    hostile = "../../x/../.."
    before = snapshot(p.workdir)
    write_in(p.dir, f"<iq type='get' id='{hostile}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    iqdir = os.path.join(p.dir, "iq")

    def answered():
        for n in os.listdir(iqdir):
            if hostile in (read(os.path.join(iqdir, n)) or ""):
                return n
        return None
    name = wait_until(answered)
    assert name, os.listdir(iqdir)
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    new = snapshot(p.workdir) - before
    outside = [n for n in new
               if not n.startswith(os.path.join("dir", "iq") + os.sep)
               and not n.startswith(os.path.join("dir", "clients"))
               and os.path.basename(n) not in ("stderr", "stdout")]
    # Contact directories may appear from other traffic; nothing named after the id.
    assert not [n for n in outside if "x" == os.path.basename(n)], outside
    assert not os.path.exists(os.path.join(p.workdir, "x"))
    assert not os.path.exists(os.path.join(os.path.dirname(p.workdir), "x"))
    rec = read(os.path.join(iqdir, name))
    assert rec.endswith("\n") and rec.count("\n") == 1
    assert stat.S_IMODE(os.stat(os.path.join(iqdir, name)).st_mode) == 0o600


# -- iqd alone on a pipe pair, as sj-proxy runs it (no server needed) ------

class Iqd:
    def __init__(self, d, args=()):
        self.p = subprocess.Popen([sj_bin("iqd"), *args, "-d", str(d), "alice@localhost/sj-proxy"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.buf = b""
        # Records read but not yet matched, in arrival order. Answers from
        # handlers that run concurrently come in whatever order they finish,
        # so a record skipped while waiting for another must not be lost.
        self.backlog = []

    def send(self, rec):
        self.p.stdin.write(rec.encode() + b"\n")
        self.p.stdin.flush()

    def line(self, pred=lambda el: True, timeout=10.0):
        """The first record (in arrival order) not yet returned that matches."""
        import select
        for k, el in enumerate(self.backlog):
            if pred(el):
                return self.backlog.pop(k)
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                ln, self.buf = self.buf.split(b"\n", 1)
                el = ET.fromstring(b"<r xmlns='jabber:client'>" + ln + b"</r>")[0]
                if pred(el):
                    return el
                self.backlog.append(el)
            left = deadline - time.monotonic()
            assert left > 0, "no matching record from iqd"
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                assert chunk, "iqd closed stdout"
                self.buf += chunk

    def close(self):
        self.p.stdin.close()
        rc = self.p.wait(10)
        self.p.stdout.close()
        self.p.stderr.close()
        return rc


def by_id(i):
    return lambda el: el.get("id") == i


def handler(d, ns, body):
    os.makedirs(d / "iq.d", mode=0o700, exist_ok=True)
    p = d / "iq.d" / ns
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o700)


def test_daemon_handler_failures_and_timeout(tmp_path):
    handler(tmp_path, "urn:x:fail", "cat >/dev/null; echo \"<x xmlns='urn:x:fail'/>\"; exit 3\n")
    handler(tmp_path, "urn:x:slow", "exec sleep 30\n")
    handler(tmp_path, "urn:x:junk", "cat >/dev/null; echo '<unclosed'\n")
    handler(tmp_path, "urn:x:empty", "cat >/dev/null\n")
    handler(tmp_path, "urn:x:full", "cat >/dev/null; echo \"<iq type='result' id='zzz' to='evil@x'>"
                                    "<ok xmlns='urn:x:full'/></iq>\"\n")
    d = Iqd(tmp_path, ["-t", "1"])
    try:
        d.line(by_id("iqd-roster-1"))
        t0 = time.monotonic()
        for ns, i in [("slow", "s"), ("fail", "f"), ("junk", "j"), ("empty", "e"), ("full", "u")]:
            d.send(f"<iq type='get' id='{i}' from='bob@localhost/r'><q xmlns='urn:x:{ns}'/></iq>")
        for i in ("f", "j"):
            el = d.line(by_id(i))
            assert el.get("type") == "error" and condition(el) == "internal-server-error"
            assert el.get("to") == "bob@localhost/r"
        el = d.line(by_id("e"))
        assert el.get("type") == "result" and len(el) == 0
        el = d.line(by_id("u"))
        assert el.get("type") == "result" and el.get("to") == "bob@localhost/r"
        assert el.find("{urn:x:full}ok") is not None
        el = d.line(by_id("s"), timeout=5)
        assert condition(el) == "internal-server-error"
        assert time.monotonic() - t0 < 4, "other handlers ran while the slow one was pending"
    finally:
        assert d.close() == 0


def test_daemon_never_answers_results_and_delegates(tmp_path):
    c = tmp_path / "clients" / "laptop"
    c.mkdir(parents=True)
    os.mkfifo(c / "in")
    os.mkfifo(c / "out")
    d = Iqd(tmp_path)
    try:
        d.line(by_id("iqd-roster-1"))
        d.send("<iq type='error' id='x1' from='bob@localhost/r'><error type='cancel'/></iq>")
        d.send("<iq type='get' id='g1' from='bob@localhost/r' to='alice@localhost/sj-proxy'>"
               "<q xmlns='urn:x:client'/></iq>")
        d.send("<iq type='set' id='b1' from='bob@localhost/r'/>")
        el = d.line(lambda el: el.get("id") in ("x1", "g1", "b1"))
        assert el.get("id") == "g1", "a result/error was answered"
        assert el.get("to") == "alice@localhost/laptop" and el.get("from") == "bob@localhost/r"
        el = d.line(by_id("b1"))
        assert condition(el) == "bad-request"
        assert (tmp_path / "iq" / "x1").read_text().count("\n") == 1
    finally:
        assert d.close() == 0


def test_daemon_hostile_namespace_runs_nothing_outside(tmp_path):
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    evil.chmod(0o700)
    (tmp_path / "iq.d").mkdir()
    d = Iqd(tmp_path)
    try:
        for i, ns in enumerate(["../evil", "..", "/", f"{tmp_path}/evil", "a/../../evil"]):
            d.send(f"<iq type='get' id='h{i}' from='bob@localhost/r'><q xmlns='{ns}'/></iq>")
            assert condition(d.line(by_id(f"h{i}"))) == "service-unavailable"
        assert not (tmp_path / "ran").exists()
    finally:
        assert d.close() == 0


def test_daemon_roster_result_believed_only_from_the_server(tmp_path):
    """The id of iqd's roster get is predictable; a contact's 'result' for
    it must not become DIR/roster (CVE-2017-5589's family)."""
    d = Iqd(tmp_path)
    try:
        get = d.line(by_id("iqd-roster-1"))
        assert get.get("type") == "get"
        d.send("<iq type='result' id='iqd-roster-1' from='bob@localhost/r'>"
               "<query xmlns='jabber:iq:roster'><item jid='eve@localhost' subscription='both'/>"
               "</query></iq>")
        # Still pending: the server's own answer is taken.
        d.send("<iq type='result' id='iqd-roster-1'><query xmlns='jabber:iq:roster'>"
               "<item jid='dave@localhost' subscription='both'/></query></iq>")
        roster = tmp_path / "roster"
        assert wait_until(lambda: "dave@localhost" in (read(str(roster)) or ""), 10)
        assert "eve@localhost" not in roster.read_text()
        assert not (tmp_path / "iq" / "iqd-roster-1").exists()
    finally:
        assert d.close() == 0
