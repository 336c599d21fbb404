"""A slixmpp client running its asyncio loop in a background thread, with
blocking helpers for tests. Every wait is an awaited event with a deadline."""

import asyncio
import logging
import threading
import time

import slixmpp


class ContactError(Exception):
    pass


class Contact:
    """One XMPP account logged into Prosody over plain TCP on loopback (SCRAM)."""

    def __init__(self, jid, password, host="127.0.0.1", port=5222, resource="slix"):
        self.jid = jid
        self.password = password
        self.addr = (host, port)
        self.resource = resource
        self.received = []  # every incoming stanza, in order (slixmpp stanza objects)
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"slixmpp-{jid}",
                                        daemon=True)
        self._thread.start()
        self.client = self._call(self._make_client)

    # -- plumbing -----------------------------------------------------------
    def _call(self, fn, *args, timeout=10.0):
        """Run fn(*args) on the loop thread and return its result (bounded)."""
        async def wrap():
            r = fn(*args)
            if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future):
                r = await r
            return r
        fut = asyncio.run_coroutine_threadsafe(wrap(), self._loop)
        return fut.result(timeout)

    def _make_client(self):
        c = slixmpp.ClientXMPP(f"{self.jid}/{self.resource}", self.password)
        c.loop = self._loop
        # Loopback test server: no TLS, SCRAM over the plain connection.
        c.enable_starttls = False
        c.enable_direct_tls = False
        c.enable_plaintext = True
        c.plugin["feature_mechanisms"].unencrypted_scram = True
        c.auto_authorize = True
        c.auto_subscribe = True
        c.add_filter("in", self._on_stanza)
        self._session = self._loop.create_future()
        c.add_event_handler("session_start", self._on_session_start)
        c.add_event_handler("failed_all_auth", self._on_failed_auth)
        c.add_event_handler("disconnected", self._on_disconnected)
        return c

    def _on_stanza(self, stanza):
        with self._cond:
            self.received.append(stanza)
            self._cond.notify_all()
        return stanza

    async def _on_session_start(self, _event):
        await self.client.get_roster(timeout=10)
        self.client.send_presence()
        if not self._session.done():
            self._session.set_result(True)

    def _on_failed_auth(self, _event):
        if not self._session.done():
            self._session.set_exception(ContactError(f"{self.jid}: authentication failed"))

    def _on_disconnected(self, _event):
        if not self._session.done():
            self._session.set_exception(ContactError(f"{self.jid}: disconnected before session"))

    # -- public API ---------------------------------------------------------
    def connect(self, timeout=15.0):
        async def go():
            self.client.connect(*self.addr)
            await asyncio.wait_for(asyncio.shield(self._session), timeout)
        self._call(go, timeout=timeout + 2)
        return self

    @property
    def full_jid(self):
        return str(self.client.boundjid)

    def send_message(self, to, body, mtype="chat"):
        self._call(lambda: self.client.send_message(mto=to, mbody=body, mtype=mtype))

    def send_raw(self, xml):
        self._call(lambda: self.client.send_raw(xml))

    def send_presence(self, **kw):
        self._call(lambda: self.client.send_presence(**kw))

    def subscribe(self, to):
        self._call(lambda: self.client.send_presence_subscription(pto=to, ptype="subscribe"))

    def mark(self):
        """Index to pass as `start` so that a wait only sees later stanzas."""
        with self._cond:
            return len(self.received)

    def wait_for(self, predicate, timeout=10.0, start=0):
        """First received stanza at index >= start for which predicate(stanza)
        is true; blocks on the condition variable until one arrives or the
        deadline passes."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.received):
                    s = self.received[i]
                    i += 1
                    try:
                        if predicate(s):
                            return s
                    except (KeyError, AttributeError, TypeError):
                        pass
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.jid}: no matching stanza within {timeout}s; "
                                       f"got {[str(s) for s in self.received[start:]][-10:]}")
                self._cond.wait(left)

    def wait_message(self, predicate=lambda m: True, timeout=10.0, start=0):
        return self.wait_for(lambda s: s.name == "message" and predicate(s), timeout, start)

    def wait_presence(self, predicate=lambda p: True, timeout=10.0, start=0):
        return self.wait_for(lambda s: s.name == "presence" and predicate(s), timeout, start)

    def messages(self, predicate=lambda m: True, start=0):
        with self._cond:
            out = []
            for s in self.received[start:]:
                try:
                    if s.name == "message" and predicate(s):
                        out.append(s)
                except (KeyError, AttributeError, TypeError):
                    pass
            return out

    def disconnect(self, timeout=5.0):
        async def go():
            try:
                await asyncio.wait_for(self.client.disconnect(wait=1.0), timeout)
            except (asyncio.TimeoutError, Exception):
                self.client.abort()
        try:
            self._call(go, timeout=timeout + 2)
        except Exception:
            pass

        async def cancel_all():
            if self.client._run_out_filters is not None:
                self.client._run_out_filters.cancel()
                self.client._run_out_filters = None
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self._call(cancel_all, timeout=timeout)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.disconnect()


logging.getLogger("slixmpp").setLevel(logging.WARNING)
