"""What both ends of a throughput session share: the congestion control switch."""
import socket

from netprobe.errors import PeerError


def set_congestion(sock, name, allowed=None):
    """Choose the sending socket's congestion control; PeerError naming the allowed ones.

    With `allowed` (the peer's [serve] congestion_allow), a name outside it is
    refused before the kernel sees it, so a client cannot make the peer load a
    module (tcp_<name>) it was not meant to."""
    if allowed is not None and name not in allowed:
        raise PeerError(f'congestion "{name}" is not in congestion_allow={",".join(allowed) or "(none)"}')
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
    except OSError as exc:
        try:
            with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as fh:
                host = fh.read().split()
        except OSError:
            host = []
        raise PeerError(f'congestion "{name}": {exc.strerror} (allowed here: {", ".join(host) or "unknown"})') \
            from None
