#!/usr/bin/env python3
"""A test-only UCSPI-TLS client wrapper (s6-networking is not in Debian).

    ucspi_tlsc.py HOST PORT PROG ARGS...

Connects to HOST:PORT and runs PROG with descriptors 6 (read) and 7 (write)
carrying the plain connection, and SSLCTLFD, SSLREADFD, SSLWRITEFD set as the
UCSPI-TLS spec says: when PROG writes 'y' (or 'Y') to SSLCTLFD, this wrapper
performs the TLS handshake with the server (certificate not verified: test
servers use self-signed certificates) and from then on PROG talks through
SSLREADFD/SSLWRITEFD. Exits with PROG's exit status.
"""
import os
import selectors
import socket
import ssl
import subprocess
import sys

from ucspi_tls import decrypted_to_fd, fd_setter, fd_to_tls, tls_read


def main():
    host, port, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    srv = socket.create_connection((host, port))
    plain_parent, plain_child = socket.socketpair()
    ctl_parent, ctl_child = socket.socketpair()
    tls_rd_r, tls_rd_w = os.pipe()  # program reads decrypted data
    tls_wr_r, tls_wr_w = os.pipe()  # program writes data to encrypt
    # Fixed descriptor numbers in the child.
    fdmap = {6: plain_child.fileno(), 7: plain_child.fileno(), 8: ctl_child.fileno(), 9: tls_rd_r, 10: tls_wr_w}
    env = dict(os.environ, SSLCTLFD="8", SSLREADFD="9", SSLWRITEFD="10", TCPREMOTEIP=host, PROTO="TCP")

    proc = subprocess.Popen(argv, env=env, preexec_fn=fd_setter(fdmap), pass_fds=tuple(fdmap), close_fds=True)
    os.close(tls_rd_r)
    os.close(tls_wr_w)
    plain_child.close()
    ctl_child.close()

    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, "srv")
    sel.register(plain_parent, selectors.EVENT_READ, "prog")
    sel.register(ctl_parent, selectors.EVENT_READ, "ctl")
    tls = None
    while proc.poll() is None:
        for key, _ in sel.select(timeout=0.2):
            if sel.get_map().get(key.fd) is not key:
                continue  # unregistered by an earlier event of this batch
            what = key.data
            if what == "srv":
                data = tls_read(tls or srv)
                if data is None:
                    continue
                if not data:
                    plain_parent.close() if tls is None else os.close(tls_rd_w)
                    sel.unregister(srv)
                    continue
                if tls is None:
                    plain_parent.sendall(data)
                else:
                    decrypted_to_fd(tls, data, tls_rd_w)
            elif what == "prog":
                data = plain_parent.recv(65536)
                if not data:
                    sel.unregister(plain_parent)
                    continue
                srv.sendall(data)
            elif what == "tlsout":
                if not fd_to_tls(tls_wr_r, tls):
                    sel.unregister(tls_wr_r)
            elif what == "ctl":
                cmd = ctl_parent.recv(16)
                if not cmd:
                    sel.unregister(ctl_parent)
                    continue
                if cmd[:1] in (b"y", b"Y") and tls is None:
                    sel.unregister(srv)
                    sel.unregister(plain_parent)
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    tls = ctx.wrap_socket(srv, server_hostname=host)
                    # Non-blocking from now on: a readable socket may carry
                    # only TLS records with no application data (TLS 1.3
                    # session tickets), and a blocking recv would hang here.
                    tls.setblocking(False)
                    if cmd[:1] == b"Y":
                        ctl_parent.sendall(b"SSL_PROTOCOL=" + tls.version().encode() + b"\0\0")
                    srv = tls
                    sel.register(tls, selectors.EVENT_READ, "srv")
                    sel.register(tls_wr_r, selectors.EVENT_READ, "tlsout")
    sys.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)


if __name__ == "__main__":
    main()
