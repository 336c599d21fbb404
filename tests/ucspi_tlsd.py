#!/usr/bin/env python3
"""A test-only UCSPI-TLS server wrapper (s6-networking is not in Debian).

    ucspi_tlsd.py HOST PORT CERTFILE PROG ARGS...

Listens on HOST:PORT; for each connection forks and runs PROG with
descriptors 0 and 1 on the plain connection and SSLCTLFD (3), SSLREADFD (4),
SSLWRITEFD (5) set as the UCSPI-TLS spec says: when PROG writes 'y' (or 'Y')
to SSLCTLFD, the wrapper does the TLS server handshake with CERTFILE (a PEM
holding key and certificate) and from then on PROG talks through
SSLREADFD/SSLWRITEFD. Prints "ready" on stdout once listening.
"""
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys


def serve(conn, peer, cert, argv):
    """PROG gets the connection itself on 0 and 1 until it asks for TLS."""
    ctl_parent, ctl_child = socket.socketpair()
    tls_rd_r, tls_rd_w = os.pipe()  # program reads decrypted data
    tls_wr_r, tls_wr_w = os.pipe()  # program writes data to encrypt
    fdmap = {3: ctl_child.fileno(), 4: tls_rd_r, 5: tls_wr_w}
    env = dict(os.environ, SSLCTLFD="3", SSLREADFD="4", SSLWRITEFD="5",
               PROTO="TCP", TCPREMOTEIP=peer[0])

    def preexec():
        tmp = {k: os.dup(v) for k, v in fdmap.items()}
        for k, v in tmp.items():
            os.dup2(v, k)
            os.set_inheritable(k, True)

    proc = subprocess.Popen(argv, env=env, stdin=conn, stdout=conn,
                            preexec_fn=preexec, pass_fds=tuple(fdmap), close_fds=True)
    os.close(tls_rd_r)
    os.close(tls_wr_w)
    ctl_child.close()
    sel = selectors.DefaultSelector()
    sel.register(ctl_parent, selectors.EVENT_READ, "ctl")
    tls = None
    while proc.poll() is None:
        for key, _ in sel.select(timeout=0.2):
            what = key.data
            if what == "net":
                try:
                    data = tls.recv(65536)
                except ssl.SSLWantReadError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    os.close(tls_rd_w)
                    continue
                os.write(tls_rd_w, data)
                while tls.pending():
                    os.write(tls_rd_w, tls.recv(65536))
            elif what == "tlsout":
                data = os.read(tls_wr_r, 65536)
                if not data:
                    sel.unregister(tls_wr_r)
                    continue
                tls.sendall(data)
            elif what == "ctl":
                cmd = ctl_parent.recv(16)
                if not cmd:
                    sel.unregister(ctl_parent)
                    continue
                if cmd[:1] in (b"y", b"Y") and tls is None:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.load_cert_chain(cert)
                    tls = ctx.wrap_socket(conn, server_side=True)
                    sel.register(tls, selectors.EVENT_READ, "net")
                    sel.register(tls_wr_r, selectors.EVENT_READ, "tlsout")
    os._exit(0)


def main():
    host, port, cert, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    lsn = socket.create_server((host, port), reuse_port=False)
    print("ready", flush=True)
    while True:
        conn, peer = lsn.accept()
        if os.fork() == 0:
            lsn.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                serve(conn, peer, cert, argv)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
