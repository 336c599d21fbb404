"""Issue 14, items 2 and 3, through real processes (the session Prosody and
the scripted server): one owner per account directory (DIR/lock, flock'd by
sj-proxy for its whole life), and a DIR/state that readers can see through
after a crash.

Each test fails on the code before the change (said per test). Results:
tests/fault_results.md ("Issue 14" section), SECURITY.md.
"""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from sjtest.poll import wait_until
from sjtest.proxy import sj_bin
from sjtest.xmpp import C2S

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scripted_server import ScriptedServer  # noqa: E402

CONTROL = "sj-proxy@control.invalid"
DAEMONS = ("messaged", "presenced", "iqd", "mirrord")


def taken_line(prog, d, pid):
    return f"{prog}: fatal: unable to lock {d}: another sj-proxy (pid {pid}) runs it\n"


def run(argv, timeout=15, **kw):
    """Run to completion (bounded); a process still running at the bound is
    killed and reported as such."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=5)
        raise AssertionError(f"{argv[0]} still running after {timeout}s:\n{err[-3000:]}")
    return p.returncode, out, err


def presence_state(d):
    return run([sj_bin("presence"), "-d", d, "state"])


def kill9(p):
    pid = p.proxy_pid()
    os.kill(pid, signal.SIGKILL)
    p.wait_exit(15)
    return pid


def scripted(srv):
    return SimpleNamespace(jid=lambda u: f"{u}@localhost", addr="127.0.0.1", port=srv.port,
                           tls_port=srv.port)


def test_second_sj_proxy_on_the_same_dir_exits_111(proxy, prosody):
    """Before: the second sj-proxy logged in too (a second session of the
    account writing the same DIR) and ran on; the run() bound fails it."""
    p = proxy("alice")
    p.online()
    pid = p.proxy_pid()
    before = p.state()
    code, _, err = run(["tcpclient", "-RHl0", prosody.addr, str(prosody.port),
                        sj_bin("sj-proxy"), "-d", p.dir, "-p", p.pwfile, prosody.jid("alice")])
    assert (code, err) == (111, taken_line("sj-proxy", p.dir, pid))
    # It wrote nothing: the owner's state stands, the owner runs on.
    assert p.state() == before
    assert p.proc.poll() is None
    with open(os.path.join(p.dir, "lock")) as f:
        assert f.read() == f"{pid}\n"


def test_daemons_by_hand_refused_while_sj_proxy_owns_the_dir(proxy):
    """Before: a hand-started messaged/presenced/iqd/mirrord ran beside the
    ones sj-proxy started, against the same DIR."""
    p = proxy("alice")
    full = p.online()
    pid = p.proxy_pid()
    for name in DAEMONS:
        code, _, err = run([sj_bin(name), "-d", p.dir, full])
        assert (code, err) == (111, taken_line(name, p.dir, pid)), name
        # Its own children, started by the lock's owner, run.
        assert p.child_pids(name), name
    # Once the owner is gone, a daemon may be run by hand (it ends at the
    # end of its input).
    kill9(p)
    code, _, err = run([sj_bin("messaged"), "-d", p.dir, full])
    assert code == 0, err


def test_sigkill_state_seen_through_and_restart_takes_over_at_once(proxy, prosody):
    """Before: after SIGKILL, DIR/state said `online` and every reader
    believed it (the control contact's status said online; `presence state`
    did not exist). Now readers probe the lock; the next sj-proxy takes it
    at once and writes `connecting` before it talks to the server."""
    p = proxy("alice")
    full = p.online()
    c2s = C2S(p.dir)
    try:
        c = c2s.client("phone")
        c.timeout = 10
        pid = kill9(p)
        assert p.state().split()[0] == "online"  # what it last wrote
        code, out, _ = presence_state(p.dir)
        assert code == 111, out
        assert out.startswith(f"offline {full}: sj-proxy (pid {pid}) is not running; "
                              "DIR/state still says online since "), out
        c.send(f"<message to='{CONTROL}' type='chat' id='st'><body>status</body></message>")
        got = c.read_until(rb"clients: \d+</body>").decode()
        assert f"offline {full}: sj-proxy (pid {pid}) is not running" in got, got
        c.close()
    finally:
        c2s.stop()
    # The next sj-proxy, to a server that has not answered yet.
    srv = ScriptedServer()
    try:
        t0 = time.monotonic()
        p2 = proxy("alice", server=scripted(srv), workdir=p.workdir)
        assert wait_until(lambda: (p2.state() or "").startswith("connecting\talice@localhost\t"),
                          10), p2.state()
        assert time.monotonic() - t0 < 5
        code, out, _ = presence_state(p2.dir)
        assert code == 111 and out.startswith("connecting alice@localhost since ") \
            and out.rstrip().endswith(f"(sj-proxy pid {p2.proxy_pid()})"), out
        srv.handshake()
        p2.wait_state("online")
        code, out, _ = presence_state(p2.dir)
        assert code == 0 and out.startswith("online alice@localhost/scripted since "), out
        assert "unable to lock" not in p2.stderr_text()
        assert p2.stop() == 0
        code, out, _ = presence_state(p2.dir)
        assert code == 111 and out.startswith("offline alice@localhost since "), out
    finally:
        srv.close()


def test_failed_start_after_a_crash_leaves_offline(proxy, prosody):
    """Before: an sj-proxy that failed before `connecting` (here: no
    password file) left the dead owner's `online` in place."""
    p = proxy("alice")
    p.online()
    kill9(p)
    assert p.state().split()[0] == "online", p.state()
    code, _, err = run(["tcpclient", "-RHl0", prosody.addr, str(prosody.port),
                        sj_bin("sj-proxy"), "-d", p.dir, "-p", os.path.join(p.workdir, "nope"),
                        "alice@localhost"])
    assert code == 100, err
    assert p.state().startswith("offline\talice@localhost\t"), p.state()


def test_lock_is_held_by_sj_proxy_alone(proxy):
    """The lock is close-on-exec: no daemon sj-proxy starts holds DIR/lock
    open (one that did would keep the lock alive after sj-proxy died).
    Before: there was no DIR/lock."""
    p = proxy("alice")
    p.online()
    lock = os.path.join(p.dir, "lock")

    def holds(pid):
        out = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        return lock in out

    assert holds(p.proxy_pid())
    for name in DAEMONS:
        pids = p.child_pids(name)
        assert pids, name
        assert not any(holds(pid) for pid in pids), name
