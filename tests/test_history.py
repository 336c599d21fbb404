"""The control contact's `history` on a very large log (issue 17, item 8).

A client of sj-c2s asks `history bob@localhost N` while bob's out log is
about 190 MB (mostly a sparse run of NUL bytes, then ordinary lines, one of
them 100 KiB long). sj-c2s reads the log from its end in blocks: its peak
resident memory (VmHWM of that sj-c2s in /proc) stays small, the reply is
at most 64 KiB of text and says what it left out, an over-long line is cut
with a marker, and the answer comes at once.

Run: python3 -m pytest -q -s tests/test_history.py
"""

import html
import os
import re
import time

from sjtest.poll import read, wait_until
from sjtest.xmpp import C2S

CONTROL = "sj-proxy@control.invalid"
BOB = "bob@localhost"
SPARSE = 190 * 1000 * 1000
BUDGET = 64 * 1024


def vm_hwm_kib(pid):
    for line in (read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def ask(session, text):
    """Send a command to the control contact; (reply text, seconds)."""
    t0 = time.monotonic()
    session.send(f"<message to='{CONTROL}' type='chat'><body>{html.escape(text)}</body></message>")
    while True:
        got = session.read_until(rb"</message>|<message[^>]*/>").decode("utf-8", "replace")
        if f"from='{CONTROL}'" in got:
            m = re.search(r"<body>(.*)</body>", got, re.S)
            return html.unescape(m.group(1) if m else ""), time.monotonic() - t0


def line(i, text=None):
    return f"2024-01-01 10:00 <{BOB}> {text or f'm{i:03d}'}\n"


def test_history_of_a_huge_log_is_bounded(proxy):
    p = proxy("alice")
    p.online()
    out = os.path.join(p.dir, BOB, "out")
    os.makedirs(os.path.dirname(out), mode=0o700, exist_ok=True)
    with open(out, "ab") as f:
        f.truncate(SPARSE)  # sparse: made at once, and no disk used
        f.seek(SPARSE)
        f.write(b"\n")
        f.write("".join(line(i) for i in range(80)).encode())
        f.write(line(80, "L" * 100 * 1024).encode())
        f.write("".join(line(i) for i in range(81, 100)).encode())
    c2s = C2S(p.dir)
    try:
        ctl = c2s.client("ctl")
        pid = int(read(os.path.join(p.dir, "clients", "ctl", "pid")).strip())
        before = vm_hwm_kib(pid)

        # The last 100 lines: the 100 KiB one does not fit in the reply
        # with the 19 after it, so it and the ones before it are left out
        # (and not even looked for).
        reply, took = ask(ctl, f"history {BOB} 100")
        after = vm_hwm_kib(pid)
        print(f"\nhistory {BOB} 100 on a {os.path.getsize(out) / 1e6:.0f} MB log: "
              f"{len(reply.encode())} bytes in {took:.3f} s; sj-c2s VmHWM {before} kB before, "
              f"{after} kB after")
        assert len(reply.encode()) <= BUDGET + 200, len(reply.encode())
        lines = reply.split("\n")
        assert lines[0] == "... earlier lines not shown (a reply holds at most 64 KiB)", lines[0]
        assert lines[1:] == [line(i).rstrip("\n") for i in range(81, 100)]
        assert after - before < 16 * 1024, f"sj-c2s grew by {after - before} kB reading history"
        assert took < 2.0, took

        # The newest line is longer than a reply: its head, and a marker.
        with open(out, "ab") as f:
            f.write(line(100, "Z" * 200 * 1024).encode())
        reply, took = ask(ctl, f"history {BOB} 5")
        lines = reply.split("\n")
        assert lines[0] == "... 4 earlier line(s) not shown (a reply holds at most 64 KiB)", lines[0]
        m = re.fullmatch(r"(2024-01-01 10:00 <bob@localhost> Z+) \[… (\d+) more bytes\]", lines[1])
        assert m, lines[1][:100] + "..." + lines[1][-60:]
        assert len(m.group(1)) + int(m.group(2)) == len(line(100, "Z" * 200 * 1024)) - 1
        assert len(reply.encode()) <= BUDGET + 200

        # Only what is asked for, and the ordinary case unchanged.
        reply, _ = ask(ctl, f"history {BOB} 2")
        assert reply.split("\n")[0] == "... 1 earlier line(s) not shown (a reply holds at most 64 KiB)"
        assert len(reply.split("\n")) == 2
        reply, _ = ask(ctl, "history carol@localhost")
        assert reply == "no history with carol@localhost"
        assert vm_hwm_kib(pid) - before < 16 * 1024
        ctl.close()
    finally:
        c2s.stop()
    assert wait_until(lambda: not os.path.exists(os.path.join(p.dir, "clients", "ctl")), 10)
