#!/usr/bin/env python3
"""Cost per message with 10,000 contact directories.

usage: bench10k.py PATH/TO/messaged [CONTACTS] [MESSAGES]

1. startup: messaged makes CONTACTS directories (roster) and exits on EOF;
2. out: MESSAGES records spread round-robin over the contacts are piped in,
   timed from the first byte to exit (every line appended to its out);
3. in: one line written to each contact's in FIFO; timed until the last
   record comes out on stdout.
"""
import os, resource, subprocess, sys, tempfile, time

exe = sys.argv[1]
n_contacts = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
n_msgs = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
d = tempfile.mkdtemp(prefix="msgd-bench-")
jids = [f"c{i}@localhost" for i in range(n_contacts)]
with open(os.path.join(d, "roster"), "w") as f:
    f.writelines(f"{j}\t{j}\tboth\n" for j in jids)

cpu = []

def run(data):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    p = subprocess.run([exe, "-d", d, "alice@localhost/sj"], input=data, stdout=subprocess.DEVNULL)
    assert p.returncode == 0, p.returncode
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu.append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_maxrss))
    return time.monotonic() - t

t0 = run(b"")
print(f"startup with {n_contacts} contacts (mkdir+mkfifo+open, first run): {t0:.3f} s")
t1 = run(b"")
print(f"startup with {n_contacts} existing contact directories: {t1:.3f} s")
recs = b"".join(
    f"<message from='{jids[i % n_contacts]}/r' type='chat' id='m{i}'><body>message number {i} &amp; more</body></message>\n".encode()
    for i in range(n_msgs))
t2 = run(recs)
lines = sum(1 for j in jids for _ in open(os.path.join(d, j, "out")))
assert lines == n_msgs, lines
per = (t2 - t1) / n_msgs * 1e6
print(f"{n_msgs} messages over {n_contacts} contacts: {t2:.3f} s total, {t2 - t1:.3f} s after startup, {per:.1f} us/message wall")
(u1, s1, _), (u2, s2, _) = cpu[1], cpu[2]
print(f"  CPU beyond startup: user {(u2 - u1) / n_msgs * 1e6:.1f} + sys {(s2 - s1) / n_msgs * 1e6:.1f} us/message")

# in FIFOs -> records on stdout
p = subprocess.Popen([exe, "-d", d, "alice@localhost/sj"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
deadline = time.monotonic() + 60
for j in jids:  # messaged has the FIFO open once a non-blocking open for write works
    while True:
        try:
            os.close(os.open(os.path.join(d, j, "in"), os.O_WRONLY | os.O_NONBLOCK))
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
t = time.monotonic()
for j in jids:
    fd = os.open(os.path.join(d, j, "in"), os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"hello\n")
    os.close(fd)
got = 0
buf = b""
while got < n_contacts:
    chunk = os.read(p.stdout.fileno(), 65536)
    assert chunk
    got += chunk.count(b"\n")
t3 = time.monotonic() - t
p.stdin.close(); p.wait()
print(f"one line into each of {n_contacts} in FIFOs -> {got} records: {t3:.3f} s, {t3 / n_contacts * 1e6:.1f} us/line")
subprocess.run(["rm", "-rf", d])
