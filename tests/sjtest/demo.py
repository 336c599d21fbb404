"""The demo behind `make demo`: a throwaway Prosody on 127.0.0.1, sj-proxy for
alice with two raw clients (laptop, phone), and bob on slixmpp."""

import sys

from .contact import Contact
from .prosody import Prosody
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
    server = proxy = bob = None
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

        say("3. bob (slixmpp) sends alice a message:")
        bob = Contact("bob@localhost", "bob-pw", server.addr, server.port).connect()
        bob.send_message("alice@localhost", "Hi Alice, lunch at noon?")
        for c in (laptop, phone):
            line, _ = c.wait_record(lambda el: local(el.tag) == "message"
                                    and "lunch" in "".join(el.itertext()), timeout=10)
            show(c.name, line)

        say("4. laptop replies by writing one line into clients/laptop/out:")
        reply = "<message to='bob@localhost' type='chat'><body>Noon works.</body></message>"
        say(f"    laptop  -> {reply}")
        start = bob.mark()
        laptop.send(reply)
        m = bob.wait_message(lambda m: m["body"] == "Noon works.", start=start)
        line, _ = phone.wait_record(lambda el: "Noon works." in "".join(el.itertext())
                                    and el.find("{urn:xmpp:carbons:2}sent") is not None)
        bob.send_message("alice@localhost", "See you.")
        laptop.wait_record(lambda el: "See you." in "".join(el.itertext()))
        n = len(bob.messages(lambda m: m["body"] == "Noon works.", start=start))
        say(f"    bob got it {n} time(s), from {m['from']} (sj-proxy's session {bound})")
        show("phone", line)

        say("5. Stopping sj-proxy with SIGTERM ...")
        code = proxy.stop()
        say(f"   exit status {code}; DIR/state: {(proxy.state() or '').strip()}")
        return 0 if code == 0 and n == 1 else 1
    except Exception as e:  # a person reads this, not a test runner
        say(f"demo: failed: {e}")
        return 1
    finally:
        if bob is not None:
            bob.disconnect()
        if proxy is not None:
            proxy.kill()
        if server is not None:
            server.stop()
            say("6. Prosody stopped. Done.")


if __name__ == "__main__":
    sys.exit(main())
