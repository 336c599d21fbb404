"""Relay pieces shared by the test-only UCSPI-TLS wrappers ucspi_tlsc.py
and ucspi_tlsd.py (imported from the script's own directory)."""

import os
import ssl


def fd_setter(fdmap):
    """A preexec_fn that puts each source descriptor on its fixed number,
    without clobbering sources that sit on the targets."""

    def preexec():
        tmp = {k: os.dup(v) for k, v in fdmap.items()}
        for k, v in tmp.items():
            os.dup2(v, k)
            os.set_inheritable(k, True)

    return preexec


def tls_read(tls):
    """Decrypted bytes from `tls`: None when nothing is ready yet, b"" at
    end of stream or on error."""
    try:
        return tls.recv(65536)
    except ssl.SSLWantReadError:
        return None
    except OSError:
        return b""


def decrypted_to_fd(tls, data, fd):
    """Write `data` and whatever else `tls` already decrypted to `fd`."""
    os.write(fd, data)
    while tls.pending():
        os.write(fd, tls.recv(65536))


def fd_to_tls(fd, tls):
    """Relay one read of the program's clear text to `tls`; False at EOF."""
    data = os.read(fd, 65536)
    if not data:
        return False
    # sendall on a non-blocking TLS socket may stop half-way; block for it.
    was = tls.getblocking()
    tls.setblocking(True)
    try:
        tls.sendall(data)
    finally:
        tls.setblocking(was)
    return True
