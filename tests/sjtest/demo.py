"""The demo behind `make demo`: a throwaway Prosody on 127.0.0.1, sj-proxy for
alice with two raw FIFO clients (laptop, phone) and one real XMPP client
(desktop, slixmpp logged into sj-c2s under tcpserver), and bob on slixmpp."""

import os
import subprocess
import sys

from .contact import Contact
from .poll import read, wait_until
from .prosody import Prosody, free_port, wait_port
from .proxy import Proxy, local, parse_record, sj_bin


def say(*a):
    print(*a, flush=True)


def show(name, line):
    say(f"    {name:7} <- {line.decode('utf-8', 'replace')}")


def main():
    try:
        sj_bin("sj-proxy")
    except FileNotFoundError as e:
        say(f"demo: {e}")
        return 100
    server = proxy = bob = desktop = listener = None
    try:
        say("1. Starting a throwaway Prosody on 127.0.0.1 ...")
        server = Prosody(loglevel="info").start()
        server.register("alice", "alice-pw")
        server.register("bob", "bob-pw")
        say(f"   Prosody: c2s port {server.port}, direct TLS port {server.tls_port}, "
            f"files in {server.dir}")

        proxy = Proxy("alice@localhost", "alice-pw", server.addr, server.port, verbose=False)
        laptop = proxy.raw_client("laptop")
        phone = proxy.raw_client("phone")
        say("2. Starting sj-proxy for alice@localhost under tcpclient:")
        say("   " + " ".join(proxy.argv(3)).replace(" -n 3", " -n FD"))
        proxy.start()
        bound = proxy.online(timeout=20)
        say(f"   DIR/state: {proxy.state().strip()}")
        say(f"   raw clients: {proxy.dir}/clients/laptop and .../phone")

        say("3. A real XMPP client, desktop (slixmpp), logs into sj-c2s:")
        subprocess.run([sj_bin("sj-passwd"), "-d", proxy.dir], input=b"local-pw\n",
                       check=True)
        port = free_port()
        argv = ["tcpserver", "-RHl0", "127.0.0.1", str(port), sj_bin("sj-c2s"), "-d", proxy.dir]
        say("   sj-passwd -d DIR; " + " ".join(argv).replace(proxy.dir, "DIR"))
        listener = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", port)
        desktop = Contact("alice@localhost", "local-pw", "127.0.0.1", port,
                          resource="desktop").connect()
        desktop.send_raw("<iq type='set' id='carbons1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        desktop.wait_for(lambda st: st.name == "iq" and st["id"] == "carbons1"
                         and st["type"] == "result")
        say(f"   desktop is {desktop.full_jid}, carbons enabled; its roster holds "
            f"{', '.join(sorted(str(j) for j in desktop.client.client_roster))}")

        say("4. bob (slixmpp, on Prosody) sends alice a message; every client has it:")
        bob = Contact("bob@localhost", "bob-pw", server.addr, server.port).connect()
        bob.send_message("alice@localhost", "Hi Alice, lunch at noon?")
        for c in (laptop, phone):
            line, _ = c.wait_record(lambda el: local(el.tag) == "message"
                                    and "lunch" in "".join(el.itertext()), timeout=10)
            show(c.name, line)
        m = desktop.wait_message(lambda m: "lunch" in m["body"])
        show("desktop", str(m).encode())

        say("5. desktop replies; bob gets it once, every other client gets a carbon:")
        start = bob.mark()
        desktop.send_message("bob@localhost", "Noon works.")
        m = bob.wait_message(lambda m: m["body"] == "Noon works.", start=start)
        for c in (laptop, phone):
            line, _ = c.wait_record(lambda el: "Noon works." in "".join(el.itertext())
                                    and el.find("{urn:xmpp:carbons:2}sent") is not None)
            show(c.name, line)
        say("   laptop writes one line into clients/laptop/out:")
        reply = "<message to='bob@localhost' type='chat'><body>See you there.</body></message>"
        say(f"    laptop  -> {reply}")
        laptop.send(reply)
        bob.wait_message(lambda m: m["body"] == "See you there.", start=start)
        m2 = desktop.wait_message(lambda m: "See you there." in str(m) and "carbons:2" in str(m))
        show("desktop", str(m2).encode())
        bob.send_message("alice@localhost", "Great.")
        laptop.wait_record(lambda el: "Great." in "".join(el.itertext()))
        n = len(bob.messages(lambda m: m["body"] == "Noon works.", start=start))
        say(f"    bob got 'Noon works.' {n} time(s), from {m['from']} "
            f"(sj-proxy's session {bound})")

        say("6. The whole conversation, in DIR/bob@localhost/out:")
        log = os.path.join(proxy.dir, "bob@localhost", "out")
        text = wait_until(lambda: "Great." in (read(log) or "") and read(log))
        for line in (text or "").splitlines():
            say("    " + line)

        say("7. Stopping sj-proxy with SIGTERM ...")
        code = proxy.stop()
        say(f"   exit status {code}; DIR/state: {(proxy.state() or '').strip()}")
        return 0 if code == 0 and n == 1 else 1
    except Exception as e:  # a person reads this, not a test runner
        say(f"demo: failed: {e}")
        return 1
    finally:
        for c in (bob, desktop):
            if c is not None:
                c.disconnect()
        if listener is not None:
            listener.terminate()
            listener.wait(10)
        if proxy is not None:
            proxy.kill()
        if server is not None:
            server.stop()
            say("8. sj-c2s listener and Prosody stopped. Done.")


if __name__ == "__main__":
    sys.exit(main())
