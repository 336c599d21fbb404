"""A TCP relay between sj-proxy and the server, that a test can cut: every
connection it carries is closed at once, as a lost network would, while it
keeps accepting new ones (the restarted sj-proxy's)."""

import select
import socket
import threading

from .prosody import free_port


class Relay:
    def __init__(self, target_host, target_port, host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.addr = host
        self.port = free_port()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, self.port))
        self.lsock.listen(8)
        self.lock = threading.Lock()
        self.pairs = []
        self.accepted = 0
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=10)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.pairs.append((c, s))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(c, s), daemon=True).start()

    def _pump(self, a, b):
        socks = [a, b]
        try:
            while True:
                r, _, _ = select.select(socks, [], [], 1.0)
                if self.closed:
                    return
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self):
        """Drop every connection now (both sides see it end), keep listening."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.cut()
        try:
            self.lsock.close()
        except OSError:
            pass
