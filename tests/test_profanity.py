"""A new user's terminal client on the proxy: Profanity (Debian package),
driven through tmux, logs into sj-c2s under tcpserver on loopback.

The steps are the ones in README.md, "Connect a terminal client (Profanity)":
sj-proxy for alice on a throwaway Prosody, a local password set with
sj-passwd, `tcpserver -RHl0 127.0.0.1 PORT sj-c2s -d DIR`, then in Profanity
`/connect alice@localhost server 127.0.0.1 port PORT tls disable` and the
local password at its prompt. A TUI can only be observed through its screen,
so every check polls `tmux capture-pane` until a deadline. Each screen read
is saved under tests/.work/profanity-*/ for a person to look at.

Profanity and tmux are installed with apt-get the first time (bounded) when
missing and we are root or have passwordless sudo; otherwise the test is
skipped with the reason. Set SJ_NO_INSTALL=1 to never install.

Run: python3 -m pytest -q tests/test_profanity.py
"""

import os
import shutil
import subprocess
import time
import uuid

import pytest

from sjtest.prosody import free_port, make_workdir, wait_port
from sjtest.proxy import local, sj_bin

BARE = "alice@localhost"
BOB = "bob@localhost"
CONTROL = "sj-proxy@control.invalid"
LOCAL_PW = "local-pw"
WAIT = 20.0


def _have_tools():
    return shutil.which("profanity") and shutil.which("tmux")


def _install_tools():
    """apt-get install profanity tmux, bounded; returns why it could not, or None."""
    if os.environ.get("SJ_NO_INSTALL"):
        return "SJ_NO_INSTALL is set"
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    sudo = []
    if os.geteuid() != 0:
        if not shutil.which("sudo") or subprocess.run(
                ["sudo", "-n", "true"], capture_output=True, timeout=10).returncode != 0:
            return "not root and no passwordless sudo"
        sudo = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "profanity", "tmux"]

    def run(argv, timeout):
        try:
            return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    r = run(install, 600)
    if r is None or r.returncode != 0:
        run(sudo + ["apt-get", "update"], 300)
        r = run(install, 600)
    if r is None:
        return "apt-get install profanity tmux timed out"
    if r.returncode != 0:
        return f"apt-get install profanity tmux failed: {r.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def tools():
    if not _have_tools():
        why = _install_tools()
        if not _have_tools():
            pytest.skip(f"profanity or tmux missing and not installable: {why}")
    for tool in ("tcpserver", "tcpclient"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (tests/setup.sh installs ucspi-tcp)")


class Tmux:
    """Profanity in a tmux session on a private socket, 200x50, with its
    own HOME and XDG directories. Screens are read with capture-pane."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.socket = os.path.join(workdir, "tmux.sock")
        self.home = os.path.join(workdir, "home")
        os.makedirs(self.home, exist_ok=True)
        self.env = dict(os.environ, HOME=self.home,
                        XDG_CONFIG_HOME=os.path.join(self.home, ".config"),
                        XDG_DATA_HOME=os.path.join(self.home, ".local", "share"),
                        LANG="C.UTF-8", LC_ALL="C.UTF-8")
        self.env.pop("TMUX", None)
        self.n = 0
        self.last = ""

    def tmux(self, *args, check=True):
        return subprocess.run(["tmux", "-S", self.socket, *args], env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=10, check=check)

    def start(self):
        self.tmux("new-session", "-d", "-s", "prof", "-x", "200", "-y", "50", "profanity")
        return self

    def alive(self):
        return self.tmux("has-session", "-t", "prof", check=False).returncode == 0

    def type(self, text):
        """Type a line literally (-l: no key names) and press Enter."""
        self.tmux("send-keys", "-t", "prof", "-l", text)
        self.tmux("send-keys", "-t", "prof", "Enter")

    def screen(self):
        r = self.tmux("capture-pane", "-p", "-J", "-t", "prof", check=False)
        if r.returncode == 0:
            self.last = r.stdout
        return self.last

    def save(self, label):
        self.n += 1
        path = os.path.join(self.workdir, f"screen-{self.n:02d}-{label}.txt")
        with open(path, "w") as f:
            f.write(self.screen())
        return path

    def wait(self, *needles, label, timeout=WAIT):
        """Poll the screen until every needle is on it; bounded. The screen
        is saved either way."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if all(n in s for n in needles):
                self.save(label)
                return s
            if time.monotonic() > deadline or not self.alive():
                path = self.save(label + "-TIMEOUT")
                missing = [n for n in needles if n not in s]
                raise AssertionError(f"screen lacks {missing!r} after {timeout}s "
                                     f"(saved {path}):\n{s}")
            time.sleep(0.1)  # a TUI gives no event to wait on but its screen

    def kill(self):
        self.tmux("kill-server", check=False)


def body(stanza):
    return stanza["body"]


@pytest.mark.timeout(900)  # includes a first-time apt-get install
def test_profanity_through_sj_c2s(tools, own_prosody, contact, proxy):
    work = make_workdir("profanity-")
    tag = uuid.uuid4().hex[:8]
    tcpserver = term = c2s_log = None
    try:
        # 1. sj-proxy for alice (tcpclient -RHl0 127.0.0.1 PORT sj-proxy ...).
        p = proxy(server=own_prosody)
        upstream = p.online(timeout=WAIT)
        laptop = p.raw_client("laptop")  # a second client, ii-style FIFOs
        bob = contact("bob", server=own_prosody)

        # 2. The local password and the listener, as in the README.
        subprocess.run([sj_bin("sj-passwd"), "-d", p.dir], input=LOCAL_PW + "\n", text=True,
                       check=True, timeout=10)
        port = free_port()
        c2s_log = open(os.path.join(work, "sj-c2s.stderr"), "wb")
        env = dict(os.environ, PATH=os.path.dirname(sj_bin("sj-c2s")) + ":" + os.environ["PATH"])
        tcpserver = subprocess.Popen(
            ["tcpserver", "-RHl0", "127.0.0.1", str(port), "sj-c2s", "-v", "-d", p.dir],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=c2s_log,
            start_new_session=True)
        wait_port("127.0.0.1", port, WAIT, tcpserver)

        # 3. Profanity in tmux; connect and give the local password.
        term = Tmux(work).start()
        term.wait("Type '/help'", label="started")
        term.type(f"/connect {BARE} server 127.0.0.1 port {port} tls disable")
        term.wait("Enter password:", label="password-prompt")
        term.type(LOCAL_PW)
        s = term.wait(f"{BARE}/", "logged in successfully", label="logged-in")
        resource = s.split(f"{BARE}/", 1)[1].split()[0]
        assert os.path.isdir(os.path.join(p.dir, "clients", resource)), \
            f"no DIR/clients/{resource} for Profanity's bound resource"

        # 4. Roster: add bob, subscribe both ways (bob's client authorizes
        # and asks back), then /roster shows bob and the control contact.
        term.type(f"/roster add {BOB}")
        term.wait(f"Roster item added: {BOB}", label="roster-add")
        term.type(f"/sub request {BOB}")
        term.wait(f"Received authorization request from {BOB}", label="sub-request")
        term.type(f"/sub allow {BOB}")
        term.wait(f"Accepted subscription for {BOB}", label="sub-allow")
        term.type("/roster")
        term.wait(f"  {BOB} - both", f"  {CONTROL} (sj-proxy) - both", label="roster")

        # 5. A message from bob (on Prosody) appears in Profanity.
        hi = f"Hi Alice, this is bob {tag}"
        bob.send_message(BARE, hi)
        term.wait(f"<< chat message: {BOB}/", label="incoming-notice")
        term.type(f"/msg {BOB}")  # opens bob's chat window
        term.wait(f"{BOB}/slix: {hi}", label="incoming")

        # 6. A message typed in Profanity reaches bob once; laptop sees the sent copy.
        mark = bob.mark()
        hello = f"hello from profanity {tag}"
        term.type(f"/msg {BOB} {hello}")
        term.wait(f"me: {hello}", label="outgoing")
        m = bob.wait_message(lambda m: body(m) == hello, timeout=WAIT, start=mark)
        assert str(m["from"]) == upstream, "bob should see sj-proxy's upstream session"
        _, copy = laptop.wait_record(
            lambda el: local(el.tag) == "message"
            and el.find("{urn:xmpp:carbons:2}sent") is not None
            and hello in "".join(el.itertext()), timeout=WAIT)
        inner = copy.find("{urn:xmpp:carbons:2}sent/{urn:xmpp:forward:0}forwarded/"
                          "{jabber:client}message")
        assert inner is not None and inner.get("from") == f"{BARE}/{resource}"
        # A second message on the same stream: once bob has it, any duplicate
        # of the first would have arrived before it.
        second = f"second {tag}"
        term.type(f"/msg {BOB} {second}")
        bob.wait_message(lambda m: body(m) == second, timeout=WAIT, start=mark)
        got = [body(x) for x in bob.messages(lambda x: body(x) in (hello, second), start=mark)]
        assert got == [hello, second], f"bob got {got!r}"

        # 7. The control contact answers.
        term.type(f"/msg {CONTROL} status")
        term.wait(f"sj-proxy: online {upstream} ", "clients: 2", label="control-status")
        term.type("clients")
        term.wait(f"{resource} (this client)", label="control-clients")

        # 8. /quit ends Profanity; sj-c2s removes its client directory.
        term.type("/quit")
        deadline = time.monotonic() + WAIT
        while term.alive() or os.path.exists(os.path.join(p.dir, "clients", resource)):
            assert time.monotonic() < deadline, "Profanity or its client directory still there"
            time.sleep(0.1)
    finally:
        if term is not None:
            term.kill()
        if tcpserver is not None:
            tcpserver.terminate()
            try:
                tcpserver.wait(10)
            except subprocess.TimeoutExpired:
                tcpserver.kill()
                tcpserver.wait(5)
        if c2s_log is not None:
            c2s_log.close()
