#!/usr/bin/env python3
"""Time from a dropped upstream connection to a resumed XEP-0198 session,
under s6: Prosody with mod_smacks, a TCP relay between sj-proxy and it,
the example s6 service (examples/s6/sj-proxy) supervising sj-proxy. Each
run cuts the relay and measures until DIR/sm/last says `resumed` again
and DIR/state is online; the median of N runs is printed, with s6's
restart delay (s6-supervise waits 1 s before restarting a service that
ran less than a second, none otherwise).

  python3 bench/sm_resume.py [-n RUNS] [-b BIN_DIR]

Uses the test harness (tests/sjtest) for Prosody and the relay; needs
prosody, s6 and tcpclient. Every wait is bounded."""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from sjtest.prosody import REPO, Prosody, make_workdir  # noqa: E402
from sjtest.relay import Relay  # noqa: E402


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.002)
    raise SystemExit(f"sm_resume: timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=11, help="runs (default 11)")
    ap.add_argument("-b", default=os.path.join(REPO, "target", "release"),
                    help="directory of the sj-proxy binaries")
    a = ap.parse_args()
    for tool in ("s6-svscan", "tcpclient", "prosody"):
        if not shutil.which(tool):
            raise SystemExit(f"sm_resume: {tool} is not installed")
    server = Prosody(modules=("smacks",), loglevel="warn",
                     options="smacks_hibernation_time = 120\nsmacks_max_queue_size = 10000").start()
    server.register("alice", "alice-pw")
    relay = Relay(server.addr, server.port)
    work = make_workdir("sm-resume-")
    scandir = os.path.join(work, "service")
    svc = os.path.join(scandir, "sj-proxy")
    d = os.path.join(work, "dir")
    os.makedirs(scandir)
    subprocess.run(["cp", "-R", os.path.join(REPO, "examples", "s6", "sj-proxy"), scandir + "/"],
                   check=True, timeout=10)
    pw = os.path.join(work, "password")
    with open(pw, "w") as f:
        f.write("alice-pw\n")
    os.chmod(pw, 0o600)
    with open(os.path.join(svc, "conf"), "w") as f:
        f.write(f"JID=alice@localhost\nDIR={d}\nPASSWORD_FILE={pw}\n"
                f"HOST={relay.addr}\nPORT={relay.port}\n")
    env = dict(os.environ, PATH=a.b + os.pathsep + os.environ["PATH"])
    out = open(os.path.join(work, "svscan.log"), "ab")
    scan = subprocess.Popen(["s6-svscan", scandir], env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    times = []
    try:
        last = os.path.join(d, "sm", "last")
        wait(lambda: read(last).startswith("enabled"), 30, "the first session")
        for i in range(a.n):
            # Let the running sj-proxy live past s6's one-second rule, so
            # that what is timed is sj-proxy, not s6-supervise's throttle.
            time.sleep(1.2)
            before = read(last)
            t = time.monotonic()
            relay.cut()
            wait(lambda: read(last) != before and read(last).startswith("resumed")
                 and read(os.path.join(d, "state")).startswith("online"), 30, f"resumption {i}")
            times.append(time.monotonic() - t)
    finally:
        subprocess.run(["s6-svscanctl", "-t", scandir], timeout=20)
        try:
            scan.wait(20)
        except subprocess.TimeoutExpired:
            scan.kill()
        relay.close()
        server.stop()
    ms = sorted(x * 1000 for x in times)
    print(f"sm_resume: {len(ms)} runs, dropped connection to resumed session under s6: "
          f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f}, max {ms[-1]:.1f} "
          f"(s6 restart delay: 0 for a service up over 1 s; target < 1000 ms + that)")


if __name__ == "__main__":
    main()
