"""Every place a program opens a path under DIR, against what a local user
or an accident can put there (issue 14, item 4): a symbolic link (to a file
or a directory outside DIR), a FIFO where a file is expected (whose open
would block forever), a regular file or a directory where a FIFO is
expected, a directory replaced by a symbolic link after it was made.

The rules (SECURITY.md, "Opening files"; one place: sj::fifo): never follow
the last component; check the kind of file opened and refuse another with
one log line that says what was found; never wait on a FIFO that is not
ours to read; a directory under DIR is a real directory. DIR itself may be
a symbolic link (its owner's choice), and so may handlers in DIR/iq.d.

The programs run for real: sj-proxy under tcpclient against Prosody with
its four daemons, sj-c2s under tcpserver, the presence and roster tools.
tests/openers.md lists each opener with its rule and the test here.
Tests that check a contact's presence file exactly run on a Prosody of
their own: on the shared one, earlier tests leave alice subscribed to bob,
and the server's answer to alice's initial presence (bob's own presence)
may land after a directed one and replace it.

Run: python3 -m pytest -q tests/test_openers.py
"""

import os
import re
import subprocess

import pytest

from sjtest.poll import read, wait_until
from sjtest.prosody import make_workdir
from sjtest.proxy import sj_bin
from sjtest.xmpp import C2S

BOB = "bob@localhost"
CAROL = "carol@localhost"
CONTROL = "sj-proxy@control.invalid"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d <([^>]+)> (.*)$")


# -- helpers ---------------------------------------------------------------

def err(p):
    return read(p.stderr_path) or ""


def wait_err(p, text, timeout=15):
    assert wait_until(lambda: text in err(p), timeout), f"no {text!r}\n{p.stderr_text()}"


def said(path):
    out = []
    for line in (read(path) or "").splitlines():
        m = LOG_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def wait_said(path, want, timeout=15):
    assert wait_until(lambda: want in said(path), timeout), f"{want!r} not in {path}: {said(path)}"


def prepared(proxy, setup, **kw):
    """A proxy whose DIR was arranged by setup(dir, outside) before start
    (keyword arguments go to the proxy fixture, `server` for one)."""
    work = make_workdir("proxy-")
    d = os.path.join(work, "dir")
    os.makedirs(d, mode=0o700)
    outside = os.path.join(work, "outside")
    os.makedirs(outside, mode=0o700)
    setup(d, outside)
    return proxy("alice", workdir=work, **kw), outside


def listing(path):
    """Everything under `path`, relative, for "nothing was written here"."""
    out = []
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(root, n), path))
    return sorted(out)


def write_dir_in(d, record):
    fd = os.open(os.path.join(d, "in"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (record + "\n").encode())
    finally:
        os.close(fd)


def directed(who, bound, show, status):
    who.send_raw(f"<presence to='{bound}'><show>{show}</show><status>{status}</status></presence>")


def no_panic(p):
    assert "panicked" not in err(p), p.stderr_text()


# -- contact directories (messaged, presenced) --------------------------------

def test_contact_directory_symlink_is_never_followed(proxy, contact, own_prosody):
    """DIR/bob@localhost is a symbolic link to a directory outside DIR from
    the start: neither messaged (out, in) nor presenced (presence, out
    events) writes through it. presenced used to write bob's presence file
    there."""
    def setup(d, outside):
        os.makedirs(os.path.join(outside, "bob"))
        os.symlink(os.path.join(outside, "bob"), os.path.join(d, BOB))
    p, outside = prepared(proxy, setup, server=own_prosody)
    bound = p.online()
    bob, carol = contact("bob", server=own_prosody), contact("carol", server=own_prosody)
    directed(bob, bound, "away", "b1")
    bob.send_message(bound, "to a link")
    # Barriers through presenced and messaged, which handle records in order.
    directed(carol, bound, "chat", "barrier")
    carol.send_message(bound, "barrier")
    cpres = os.path.join(p.dir, CAROL, "presence")
    assert wait_until(lambda: (read(cpres) or "").strip() == "chat barrier", 15)
    wait_said(os.path.join(p.dir, CAROL, "out"), (CAROL, "barrier"))
    link = os.path.join(p.dir, BOB)
    wait_err(p, f"presenced: warning: unable to write {link}/presence: is a symbolic link, "
                f"not a directory; keeping its latest content to retry")
    wait_err(p, f"messaged: warning: unable to create {link}: is a symbolic link, not a directory")
    assert listing(outside) == ["bob"], listing(outside)
    no_panic(p)


def test_contact_directory_replaced_by_a_symlink_later(proxy, contact, own_prosody):
    """messaged made DIR/bob@localhost and logged into it; then the
    directory is moved away and a symbolic link to a directory outside DIR
    put in its place. messaged checks it again before every write: it used
    to go on appending through the link."""
    p = proxy("alice", server=own_prosody)
    bound = p.online()
    bob, carol = contact("bob", server=own_prosody), contact("carol", server=own_prosody)
    bob.send_message(bound, "first")
    directed(bob, bound, "away", "b1")
    out = os.path.join(p.dir, BOB, "out")
    wait_said(out, (BOB, "first"))
    assert wait_until(lambda: (read(os.path.join(p.dir, BOB, "presence")) or "").strip() == "away b1", 15)
    outside = make_workdir("outside-")
    os.rename(os.path.join(p.dir, BOB), os.path.join(p.dir, ".bob-moved"))
    os.symlink(outside, os.path.join(p.dir, BOB))
    bob.send_message(bound, "second")
    directed(bob, bound, "dnd", "b2")
    carol.send_message(bound, "barrier")
    directed(carol, bound, "chat", "barrier")
    wait_said(os.path.join(p.dir, CAROL, "out"), (CAROL, "barrier"))
    assert wait_until(lambda: (read(os.path.join(p.dir, CAROL, "presence")) or "").strip()
                      == "chat barrier", 15)
    link = os.path.join(p.dir, BOB)
    wait_err(p, f"messaged: warning: unable to append to {link}/out: is a symbolic link, "
                f"not a directory; keeping its lines to retry")
    wait_err(p, f"presenced: warning: unable to write {link}/presence: is a symbolic link, "
                f"not a directory")
    assert listing(outside) == [], listing(outside)
    # The directory comes back: messaged writes what it kept.
    os.unlink(link)
    os.rename(os.path.join(p.dir, ".bob-moved"), link)
    wait_said(out, (BOB, "second"), timeout=10)
    assert wait_until(lambda: (read(os.path.join(link, "presence")) or "").strip() == "dnd b2", 10)
    no_panic(p)


@pytest.mark.parametrize("name", ["out", "subscriptions"])
def test_appended_file_is_a_fifo(proxy, contact, own_prosody, name):
    """DIR/bob@localhost/out or DIR/subscriptions is a FIFO nobody reads.
    Appending used to open it for writing and wait for a reader forever:
    messaged at its start (it makes an empty out in each contact
    directory), presenced at bob's subscription request. (A Prosody of its
    own: the request stays pending there, and would be logged again at
    every later login of alice.)"""
    def setup(d, outside):
        if name == "out":
            os.makedirs(os.path.join(d, BOB), mode=0o700)
            os.mkfifo(os.path.join(d, BOB, "out"), 0o600)
        else:
            os.mkfifo(os.path.join(d, "subscriptions"), 0o600)
    p, _ = prepared(proxy, setup, server=own_prosody)
    bound = p.online()
    bob, carol = contact("bob", server=own_prosody), contact("carol", server=own_prosody)
    bob.send_message(bound, "into a fifo")
    bob.subscribe(bound.split("/")[0])
    carol.send_message(bound, "barrier")
    directed(carol, bound, "chat", "barrier")
    wait_said(os.path.join(p.dir, CAROL, "out"), (CAROL, "barrier"))
    assert wait_until(lambda: (read(os.path.join(p.dir, CAROL, "presence")) or "").strip()
                      == "chat barrier", 15), p.stderr_text()
    path = os.path.join(p.dir, BOB, "out") if name == "out" else os.path.join(p.dir, "subscriptions")
    if name == "out":
        wait_err(p, f"messaged: warning: unable to append to {path}: is a FIFO, not a regular file")
    wait_err(p, f"presenced: warning: unable to write {path}: is a FIFO, not a regular file; "
                f"keeping its lines to retry")
    no_panic(p)


def test_roster_is_a_fifo(proxy, contact):
    """DIR/roster is a FIFO: messaged (roster watch) and iqd (roster cache
    at start) used to block reading it forever; now each says so once and
    goes on (iqd's next roster result replaces it with a file)."""
    p, _ = prepared(proxy, lambda d, o: os.mkfifo(os.path.join(d, "roster"), 0o600))
    bound = p.online()
    bob = contact("bob")
    bob.send_message(bound, "alive")
    wait_said(os.path.join(p.dir, BOB, "out"), (BOB, "alive"))
    start = bob.mark()
    bob.send_raw(f"<iq type='get' id='ping1' to='{bound}'><ping xmlns='urn:xmpp:ping'/></iq>")
    bob.wait_for(lambda s: s.name == "iq" and s["id"] == "ping1" and s["type"] == "result", start=start)
    roster = os.path.join(p.dir, "roster")
    wait_err(p, f"iqd: warning: unable to read {roster}: is a FIFO, not a regular file")
    assert f"messaged: warning: unable to read {roster}: is a FIFO, not a regular file" in err(p) \
        or os.path.isfile(roster), p.stderr_text()
    no_panic(p)


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_mypresence_files_unreadable(proxy, contact, own_prosody, kind):
    """DIR/mypresence and DIR/bob@localhost/mypresence are FIFOs (presenced
    used to block reading them) or symbolic links to a file outside DIR
    saying dnd (presenced used to follow them and send it). Each is ignored
    with one log line; presence goes on."""
    bob = contact("bob", server=own_prosody)  # online first: a directed presence at start reaches it

    def setup(d, outside):
        os.makedirs(os.path.join(d, BOB), mode=0o700)
        target = os.path.join(outside, "mypresence")
        with open(target, "w") as f:
            f.write("dnd from outside\n")
        for f in (os.path.join(d, "mypresence"), os.path.join(d, BOB, "mypresence")):
            if kind == "fifo":
                os.mkfifo(f, 0o600)
            else:
                os.symlink(target, f)
        if kind == "symlink":
            # A stale presence file that is a link: reset at start by a
            # rename over the link, never written through it.
            with open(os.path.join(outside, "presence"), "w") as f:
                f.write("untouched\n")
            os.symlink(os.path.join(outside, "presence"), os.path.join(d, BOB, "presence"))
    p, outside = prepared(proxy, setup, server=own_prosody)
    start = bob.mark()
    bound = p.online()
    what = "is a FIFO, not a regular file" if kind == "fifo" else "is a symbolic link"
    for f in (os.path.join(p.dir, "mypresence"), os.path.join(p.dir, BOB, "mypresence")):
        wait_err(p, f"presenced: warning: ignoring {f}: unable to read it: {what}")
    directed(bob, bound, "away", "alive")
    assert wait_until(lambda: (read(os.path.join(p.dir, BOB, "presence")) or "").strip()
                      == "away alive", 15), p.stderr_text()
    # Whatever presenced sent at its start went before this message.
    write_dir_in(p.dir, f"<message to='{BOB}' type='chat'><body>barrier</body></message>")
    bob.wait_message(lambda m: m["body"] == "barrier", start=start)
    dnd = [s for s in bob.received[start:] if s.name == "presence" and s["show"] == "dnd"]
    assert not dnd, [str(s) for s in dnd]
    if kind == "symlink":
        assert read(os.path.join(outside, "presence")) == "untouched\n"
    no_panic(p)


def test_groupchat_marker_is_a_fifo(proxy, contact):
    """messaged marks a room's directory with .groupchat when it first sees
    a groupchat message; a FIFO put there used to block it forever."""
    p = proxy("alice")
    bound = p.online()
    bob, carol = contact("bob"), contact("carol")
    bob.send_message(bound, "plain first")
    wait_said(os.path.join(p.dir, BOB, "out"), (BOB, "plain first"))
    marker = os.path.join(p.dir, BOB, ".groupchat")
    os.mkfifo(marker, 0o600)
    bob.send_raw(f"<message to='{bound}' type='groupchat'><body>as a room</body></message>")
    carol.send_message(bound, "barrier")
    wait_said(os.path.join(p.dir, CAROL, "out"), (CAROL, "barrier"))
    wait_err(p, f"messaged: warning: unable to create {marker}: is a FIFO, not a regular file")
    no_panic(p)


def test_contact_in_fifo_replaced(proxy, contact):
    """DIR/bob@localhost/in is a regular file, a directory or a symbolic
    link to a FIFO when messaged starts: refused with a line saying which
    (this was refused before too), and bob is still logged."""
    kinds = {"bob@localhost": "regular", "carol@localhost": "dir"}

    def setup(d, outside):
        for c, k in kinds.items():
            os.makedirs(os.path.join(d, c), mode=0o700)
            f = os.path.join(d, c, "in")
            if k == "regular":
                open(f, "w").close()
            else:
                os.mkdir(f)
        os.makedirs(os.path.join(d, "dave@localhost"), mode=0o700)
        os.mkfifo(os.path.join(outside, "fifo"), 0o600)
        os.symlink(os.path.join(outside, "fifo"), os.path.join(d, "dave@localhost", "in"))
    p, _ = prepared(proxy, setup)
    bound = p.online()
    bob = contact("bob")
    bob.send_message(bound, "logged anyway")
    wait_said(os.path.join(p.dir, BOB, "out"), (BOB, "logged anyway"))
    for c, what in [(BOB, "is a regular file, not a FIFO"), (CAROL, "is a directory, not a FIFO"),
                    ("dave@localhost", "is a symbolic link, not a FIFO")]:
        wait_err(p, f"messaged: warning: unable to open {os.path.join(p.dir, c)}/in: {what}")
    no_panic(p)


# -- the client registry (sj-proxy, mirrord, sj-c2s) ---------------------------

def test_clients_directory_is_a_symlink(proxy):
    """DIR/clients is a symbolic link to a directory outside DIR: sj-proxy
    refuses to start (exit 100, one line) instead of serving FIFOs there."""
    def setup(d, outside):
        os.makedirs(os.path.join(outside, "clients"))
        os.symlink(os.path.join(outside, "clients"), os.path.join(d, "clients"))
    p, outside = prepared(proxy, setup)
    assert p.wait_exit(20) == 100, p.stderr_text()
    assert (f"sj-proxy: fatal: unable to watch {p.dir}/clients: is a symbolic link, "
            f"not a directory") in err(p), p.stderr_text()
    assert listing(outside) == ["clients"]


def test_client_directory_is_a_symlink(proxy, contact):
    """DIR/clients/evil is a symbolic link to a directory outside DIR with
    in and out FIFOs: not a client (a line from sj-proxy and one from
    mirrord); it used to be one, and got every record."""
    def setup(d, outside):
        os.makedirs(os.path.join(outside, "evil"))
        for f in ("in", "out"):
            os.mkfifo(os.path.join(outside, "evil", f), 0o600)
        os.makedirs(os.path.join(d, "clients"), mode=0o700)
        os.symlink(os.path.join(outside, "evil"), os.path.join(d, "clients", "evil"))
    p, outside = prepared(proxy, setup)
    evil_in = os.open(os.path.join(outside, "evil", "in"), os.O_RDWR | os.O_NONBLOCK)
    try:
        watch = p.raw_client("watch")
        bound = p.online()
        bob = contact("bob")
        bob.send_message(bound, "not for evil")
        watch.wait_line(lambda ln: b"not for evil" in ln)
        with pytest.raises(BlockingIOError):
            os.read(evil_in, 65536)
    finally:
        os.close(evil_in)
    for prog in ("sj-proxy", "mirrord"):
        wait_err(p, f"{prog}: warning: not a client: clients/evil: is a symbolic link")
    no_panic(p)


@pytest.mark.parametrize("fifo", ["in", "out"])
def test_client_fifo_replaced_by_a_regular_file(proxy, contact, fifo):
    """A registered raw client's in (or out) FIFO is replaced by a regular
    file: it is no longer a client, one line says why, nothing is written
    into the file. Nothing was written before either, but silently."""
    p = proxy("alice")
    watch, x = p.raw_client("watch"), p.raw_client("x")
    bound = p.online()
    bob = contact("bob")
    bob.send_message(bound, "before")
    x.wait_line(lambda ln: b"before" in ln)
    path = os.path.join(p.dir, "clients", "x", fifo)
    x.close()
    os.unlink(path)
    open(path, "w").close()
    wait_err(p, f"mirrord: warning: not a client: clients/x: {fifo} is a regular file, not a FIFO")
    wait_err(p, f"sj-proxy: warning: not a client: clients/x: {fifo} is a regular file, not a FIFO")
    bob.send_message(bound, "after")
    watch.wait_line(lambda ln: b"after" in ln)
    assert os.path.getsize(path) == 0
    assert err(p).count("not a client: clients/x") == 2, "one line from each, not one per scan"
    no_panic(p)


def test_dir_in_is_not_a_fifo(proxy, contact):
    """DIR/in is replaced by a regular file while sj-proxy runs: when its
    writer leaves, sj-proxy does not read the file but says so (as before)."""
    p = proxy("alice")
    bound = p.online()
    bob = contact("bob")
    path = os.path.join(p.dir, "in")
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.unlink(path)
    with open(path, "w") as f:
        f.write(f"<message to='{BOB}' type='chat'><body>from the file</body></message>\n")
    os.write(fd, f"<message to='{BOB}' type='chat'><body>from the fifo</body></message>\n".encode())
    os.close(fd)
    bob.wait_message(lambda m: m["body"] == "from the fifo")
    wait_err(p, "sj-proxy: warning: DIR/in: unable to read its FIFO again: is a regular file, not a FIFO")
    bob.send_message(bound, "still routing")
    wait_said(os.path.join(p.dir, BOB, "out"), (BOB, "still routing"))
    assert not bob.messages(lambda m: m["body"] == "from the file")
    no_panic(p)


def test_c2s_clients_directory_is_a_symlink():
    """sj-c2s alone: DIR/clients is a symbolic link out of DIR. Binding is
    refused at once with internal-server-error and a line saying why; it
    used to register the client there and wait for sj-proxy."""
    from sjtest.xmpp import RawXmpp
    work = make_workdir("c2s-")
    d = os.path.join(work, "alice@localhost")
    os.makedirs(d, mode=0o700)
    outside = os.path.join(work, "outside")
    os.makedirs(outside)
    os.symlink(outside, os.path.join(d, "clients"))
    c2s = C2S(d)
    try:
        s = RawXmpp("127.0.0.1", c2s.port, "alice", c2s.password, resource="phone", timeout=10)
        with pytest.raises(EOFError) as e:
            s.login()
        assert "internal-server-error" in str(e.value), e.value
        s.close()
        # The line comes as sj-c2s exits, after its stream's lingering close.
        want = ("sj-c2s: fatal: unable to create a client directory: is a symbolic link, "
                "not a directory")
        assert wait_until(lambda: want in c2s.log_text(), 10), c2s.log_text()
        assert listing(outside) == []
    finally:
        c2s.stop()


# -- sj-c2s reading state, pid files and logs -----------------------------------

def control(session, text):
    session.send(f"<message to='{CONTROL}' type='chat'><body>{text}</body></message>")
    while True:
        got = session.read_until(rb"</message>").decode()
        if f"from='{CONTROL}'" in got:
            return re.search(r"<body>(.*)</body>", got, re.S).group(1)


def test_c2s_state_is_a_fifo(proxy):
    """DIR/state is replaced by a FIFO: sj-c2s used to block reading it, in
    the control contact's status and when a client connected. Now status
    says what it found, and a new client (whose account sj-c2s can no
    longer tell, DIR not being named by a JID here) is refused at once."""
    from sjtest.xmpp import RawXmpp
    p = proxy("alice")
    p.online()
    c2s = C2S(p.dir)
    try:
        s = c2s.client("phone", timeout=10)
        state = os.path.join(p.dir, "state")
        os.unlink(state)
        os.mkfifo(state, 0o600)
        assert control(s, "status").startswith("unknown (state: is a FIFO, not a regular file; sj-proxy pid ")
        late = RawXmpp("127.0.0.1", c2s.port, "alice", c2s.password, resource="late", timeout=10)
        with pytest.raises(EOFError) as e:
            late.login()
        assert "remote-connection-failed" in str(e.value), e.value
        late.close()
        assert f"sj-c2s: warning: unable to read {state}: is a FIFO, not a regular file" \
            in c2s.log_text(), c2s.log_text()
        s.close()
    finally:
        c2s.stop()


def test_c2s_pid_file_is_a_fifo(proxy):
    """clients/phone exists with a FIFO as its pid file: sj-c2s checking
    whether it is stale used to block reading it; now the name is taken as
    in use (another name is bound) and `kick phone` says it has no pid."""
    from sjtest.xmpp import RawXmpp
    p = proxy("alice")
    p.online()
    cdir = os.path.join(p.dir, "clients", "phone")
    os.makedirs(cdir, mode=0o700)
    os.mkfifo(os.path.join(cdir, "pid"), 0o600)
    c2s = C2S(p.dir)
    try:
        s = RawXmpp("127.0.0.1", c2s.port, "alice", c2s.password, resource="phone",
                    timeout=10).login()
        assert s.jid.startswith("alice@localhost/") and s.jid != "alice@localhost/phone", s.jid
        assert control(s, "kick phone") == "client phone has no pid file (a raw client?)"
        # clients/tablet is a link to a directory whose pid file names a
        # process that is gone: not taken for a stale registration (which
        # would be replaced) since it is not a real directory.
        outside = make_workdir("outside-")
        with open(os.path.join(outside, "pid"), "w") as f:
            f.write("999999999\n")
        os.symlink(outside, os.path.join(p.dir, "clients", "tablet"))
        t = RawXmpp("127.0.0.1", c2s.port, "alice", c2s.password, resource="tablet",
                    timeout=10).login()
        assert t.jid != "alice@localhost/tablet", t.jid
        assert os.path.islink(os.path.join(p.dir, "clients", "tablet"))
        assert "removing stale client tablet" not in c2s.log_text()
        t.close()
        s.close()
    finally:
        c2s.stop()


def test_c2s_history_log_is_a_fifo(proxy):
    """DIR/bob@localhost/out is a FIFO: history used to block the session
    reading it; now it answers what it found."""
    def setup(d, outside):
        os.makedirs(os.path.join(d, BOB), mode=0o700)
        os.mkfifo(os.path.join(d, BOB, "out"), 0o600)
    p, _ = prepared(proxy, setup)
    p.online()
    c2s = C2S(p.dir)
    try:
        s = c2s.client("phone", timeout=10)
        assert control(s, f"history {BOB}") == \
            f"unable to read the log with {BOB}: is a FIFO, not a regular file"
        s.close()
    finally:
        c2s.stop()


# -- iqd -----------------------------------------------------------------------

def test_iq_directory_is_a_symlink(proxy):
    """DIR/iq is a symbolic link out of DIR: iqd does not write the answer
    to a DIR/in requester there (it used to), and says so."""
    def setup(d, outside):
        os.makedirs(os.path.join(outside, "iq"))
        os.symlink(os.path.join(outside, "iq"), os.path.join(d, "iq"))
    p, outside = prepared(proxy, setup)
    p.online()
    write_dir_in(p.dir, "<iq type='get' id='q1' to='localhost'>"
                        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    wait_err(p, f"iqd: warning: dropped the answer to q1: unable to create {p.dir}/iq: "
                f"is a symbolic link, not a directory")
    assert listing(outside) == ["iq"], listing(outside)
    no_panic(p)


def test_iq_answer_path_is_a_symlink(proxy):
    """DIR/iq/q2 is a symbolic link to a file outside DIR: the answer
    replaces the link (rename never follows it); the file is untouched."""
    p = proxy("alice")
    p.online()
    outside = make_workdir("outside-")
    target = os.path.join(outside, "target")
    with open(target, "w") as f:
        f.write("untouched\n")
    os.makedirs(os.path.join(p.dir, "iq"), exist_ok=True)
    link = os.path.join(p.dir, "iq", "q2")
    os.symlink(target, link)
    write_dir_in(p.dir, "<iq type='get' id='q2' to='localhost'>"
                        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert wait_until(lambda: not os.path.islink(link) and "disco#info" in (read(link) or ""), 15)
    assert read(target) == "untouched\n"
    no_panic(p)


# -- the tools -------------------------------------------------------------------

def tool(name, d, *args, timeout=15):
    return subprocess.run([sj_bin(name), "-d", d, *args], capture_output=True, text=True,
                          timeout=timeout)


def tool_dir(setup):
    work = make_workdir("tools-")
    d = os.path.join(work, "alice@localhost")
    os.makedirs(d, mode=0o700)
    outside = os.path.join(work, "outside")
    os.makedirs(outside)
    setup(d, outside)
    return d, outside


def test_tools_never_write_into_a_regular_dir_in():
    """DIR/in is a regular file: presence and roster used to write their
    stanza into it (and roster waited for an answer); now they refuse."""
    d, _ = tool_dir(lambda d, o: open(os.path.join(d, "in"), "w").close())
    r = tool("presence", d, "subscribe", BOB)
    assert r.returncode == 100, r
    assert r.stderr == f"presence: fatal: unable to open {d}/in: is a regular file, not a FIFO\n"
    r = tool("roster", d, "-t", "2", "add", BOB)
    assert r.returncode == 100, r
    assert r.stderr == f"roster: fatal: unable to open {d}/in: is a regular file, not a FIFO\n"
    assert os.path.getsize(os.path.join(d, "in")) == 0


def test_tools_never_wait_on_a_fifo():
    """DIR/roster, DIR/mypresence, DIR/state and a contact's presence file
    are FIFOs: `roster list`, `presence show`, `presence list` and `roster
    add` (which reads DIR/state for the account's JID) used to block
    reading them forever."""
    def setup(d, o):
        for f in ("roster", "mypresence", "state"):
            os.mkfifo(os.path.join(d, f), 0o600)
        os.makedirs(os.path.join(d, BOB))
        os.mkfifo(os.path.join(d, BOB, "presence"), 0o600)
        os.makedirs(os.path.join(d, CAROL))
        with open(os.path.join(d, CAROL, "presence"), "w") as f:
            f.write("away\n")
        os.mkfifo(os.path.join(d, "in"), 0o600)
    d, _ = tool_dir(setup)
    r = tool("roster", d, "list")
    assert (r.returncode, r.stderr) == (
        100, f"roster: fatal: unable to read {d}/roster: is a FIFO, not a regular file\n"), r
    r = tool("presence", d, "show")
    assert (r.returncode, r.stderr) == (
        100, f"presence: fatal: unable to read {d}/mypresence: is a FIFO, not a regular file\n"), r
    r = tool("presence", d, "list")
    assert (r.returncode, r.stdout) == (0, f"{CAROL}\taway\n"), r
    # A reader on DIR/in (nobody answers): the request is written, DIR/state
    # is not waited on, and the answer times out.
    rd = os.open(os.path.join(d, "in"), os.O_RDWR | os.O_NONBLOCK)
    try:
        r = tool("roster", d, "-t", "1", "add", BOB)
        assert r.returncode == 111 and "timed out" in r.stderr, r
        assert b"jabber:iq:roster" in os.read(rd, 65536)
    finally:
        os.close(rd)


def test_roster_tool_never_writes_through_a_linked_iq_directory():
    """DIR/iq is a symbolic link out of DIR: `roster add` used to make its
    answer FIFO there."""
    def setup(d, o):
        os.symlink(o, os.path.join(d, "iq"))
        os.mkfifo(os.path.join(d, "in"), 0o600)
    d, outside = tool_dir(setup)
    r = tool("roster", d, "-t", "1", "add", BOB)
    assert (r.returncode, r.stderr) == (
        100, f"roster: fatal: unable to create {d}/iq: is a symbolic link, not a directory\n"), r
    assert listing(outside) == []


def test_presence_tool_never_writes_through_a_contact_symlink():
    """DIR/bob@localhost is a symbolic link out of DIR: `presence to` used
    to write bob's mypresence there."""
    def setup(d, o):
        os.symlink(o, os.path.join(d, BOB))
    d, outside = tool_dir(setup)
    r = tool("presence", d, "to", BOB, "dnd")
    assert (r.returncode, r.stderr) == (
        100, f"presence: fatal: unable to create {d}/{BOB}: is a symbolic link, not a directory\n"), r
    assert listing(outside) == []
