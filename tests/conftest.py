"""Fixtures for the sj-proxy integration tests: a throwaway Prosody on
127.0.0.1, slixmpp contacts, and sj-proxy processes with raw clients."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sjtest.contact import Contact  # noqa: E402
from sjtest.prosody import Prosody  # noqa: E402
from sjtest.proxy import Proxy  # noqa: E402

ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def _make_prosody():
    p = Prosody().start()
    for user, pw in ACCOUNTS.items():
        p.register(user, pw)
    return p


@pytest.fixture(scope="session")
def prosody():
    p = _make_prosody()
    yield p
    p.stop()


@pytest.fixture
def own_prosody():
    """A Prosody of this test's own, for tests that stop the server."""
    p = _make_prosody()
    yield p
    p.stop()


@pytest.fixture
def contact(prosody):
    """Factory: contact('bob') -> a connected slixmpp Contact on the session Prosody."""
    made = []

    def make(user, server=None, resource="slix"):
        server = server or prosody
        c = Contact(server.jid(user), ACCOUNTS[user], host=server.addr, port=server.port,
                    resource=resource).connect()
        made.append(c)
        return c
    yield make
    for c in made:
        c.disconnect()


@pytest.fixture
def proxy(prosody, request):
    """Factory: proxy(user='alice', server=prosody, mode='tcp'|'tls', password=None, ...)
    -> a started Proxy. All are killed at teardown; stderr shown on failure."""
    made = []

    def make(user="alice", server=None, mode="tcp", password=None, **kw):
        server = server or prosody
        port = server.tls_port if mode == "tls" else server.port
        p = Proxy(server.jid(user), password if password is not None else ACCOUNTS[user],
                  server.addr, port, mode=mode, **kw)
        made.append(p)
        return p.start()
    yield make
    failed = getattr(request.node, "rep_call", None)
    for p in made:
        p.kill()
        if failed is not None and failed.failed:
            sys.stderr.write(f"\n{p.stderr_text()}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
