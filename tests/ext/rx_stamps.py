"""Kernel RX software stamps, for the tests of the receivers that read them.

The kernel switches RX stamping on for the whole host only when the first
socket asks for it, and from a deferred work item: packets that arrive before
it has run carry no stamp. A test that needs every packet stamped waits here
first; one that is about that window builds it itself."""
import socket
import struct
import time

SO_TIMESTAMPING = 37                    # <asm-generic/socket.h>; the socket module lacks it


def stamp_of(anc):
    """The software RX stamp (ns) in recvmsg's ancillary data, or None."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
            sec, nsec = struct.unpack("qq", data[:16])
            if sec or nsec:
                return sec * 10**9 + nsec
    return None


def wait_until_stamped(tx, rx, timeout=2.0):
    """Send one-byte datagrams on tx (connected to rx, which has asked for stamps) and read
    them off rx until one comes stamped; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    old = rx.gettimeout()
    rx.settimeout(timeout)
    try:
        while True:
            tx.send(b"\0")
            _, anc, _, _ = rx.recvmsg(1, 256)
            if stamp_of(anc) is not None:
                return
            assert time.monotonic() < deadline, f"the kernel did not stamp received packets within {timeout} s"
            time.sleep(0.001)
    finally:
        rx.settimeout(old)
