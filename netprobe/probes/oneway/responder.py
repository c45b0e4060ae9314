"""Peer side of the oneway probe, run inside `netprobe serve`: the receiver.

The client's hello (after the peer handshake: access list, key challenge)
names the session; this end opens UDP sockets for it on a port from
[serve] udp_ports (oneway_rx_threads of them, one SO_REUSEPORT group: the
receiver drains each on its own thread, every N-th source port on each),
registers the session in a netprobe._udpio.UdpProbeReceiver and answers
with the UDP port and how probes are authenticated ("auth": "shared" key,
"session" key from the hello, or "none"). Then:

  client -> {"close": I}       interval I ended at the sender (sent after its control records)
  client -> {"bye": true}      the sender stopped: close what is pending, then the session ends
  server -> {"results": [...], "counters": {...}, "clock": {...}}
                               interval records (close_through) once `grace` has passed after
                               the close, the receiver's counters and this host's clock state

Only OPEN_INTERVALS intervals past the last closed one can hold data, so a
close beyond them ends the session. max_port_intervals bounds a session's
ports x OPEN_INTERVALS, which bounds every results line;
max_port_intervals_total bounds the same for all open sessions together (a
session that would pass it is refused busy naming it), which bounds the
peer's receiver memory: add_session allocates a fixed amount per port
(about 11 kB), so the default 40000 (10,000 ports) is about 110 MB however
many sessions are open; nothing grows with uptime.
"""
import logging
import os
import re
import secrets
import socket
import threading
import time

from netprobe.errors import load_extension
from netprobe.peer.protocol import session_key
from netprobe.peer.server import SessionEnd
from netprobe.probes.oneway.config import MAX_PORTS
from netprobe.probes.oneway.protocol import CLIENT_LINE, OPEN_INTERVALS, clock_state

log = logging.getLogger("netprobe.serve.oneway")

CHUNK_NS = 50_000_000         # the receive loop returns to Python this often
SESSION_RE = re.compile(r"[0-9a-f]{16}")
RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33          # <asm-generic/socket.h>; the socket module lacks it
PORT_TRIES = 32              # random ports tried from udp_ports before giving up
AUTO_LANES = 4               # oneway_rx_threads = 0: at most this many (each ~0.25 MB a session)


def _int_field(hello, name, lo, hi, default=None):
    v = hello.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer {lo} to {hi}")
    return v


def _ports_text(ranges):
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def _candidates(udp_port, ranges):
    """`udp_port`, or with 0 up to PORT_TRIES random ports of `ranges`; (ports, error text)."""
    if udp_port:
        if not any(a <= udp_port <= b for a, b in ranges):
            return [], f"udp_port {udp_port} is outside udp_ports={_ports_text(ranges)}"
        return [udp_port], None
    sizes = [b - a + 1 for a, b in ranges]
    out = []
    for _ in range(PORT_TRIES):
        k = secrets.randbelow(sum(sizes))
        for (a, _b), n in zip(ranges, sizes, strict=True):
            if k < n:
                out.append(a + k)
                break
            k -= n
    return out, None


def _udp_socket(family, reuseport):
    udp = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:                     # a deep buffer rides out scheduling stalls; beyond rmem_max with CAP_NET_ADMIN
            udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    except BaseException:
        udp.close()
        raise
    return udp


def receive_sockets(family, host, ports, lanes):
    """Up to `lanes` UDP sockets on the first free port of `ports` (0: any), one SO_REUSEPORT
    group in the order bound (the receiver's lanes); [] and the last bind error if none is free.

    The first socket binds without SO_REUSEPORT, so a port another socket holds is refused
    as before (no other session or program joins ours by chance); SO_REUSEPORT is set on
    it after the bind, and only then do the others join."""
    err = None
    for port in ports:
        first = _udp_socket(family, False)
        try:
            first.bind((host, port))
        except OSError as exc:
            first.close()
            err = exc
            continue
        socks = [first]
        try:
            if lanes > 1:
                first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            while len(socks) < lanes:
                s = _udp_socket(family, True)
                try:
                    s.bind(first.getsockname())
                except BaseException:
                    s.close()
                    raise
                socks.append(s)
        except OSError as exc:               # fewer lanes, then
            log.warning("UDP %d: receiving on %d socket(s), not %d: %s", first.getsockname()[1], len(socks),
                        lanes, exc.strerror)
        except BaseException:
            for s in socks:
                s.close()
            raise
        return socks, None
    return [], err


def rx_lanes(setting, nports):
    """Receive lanes of a session: the [serve] setting, or with 0 min(ports, CPUs, AUTO_LANES)."""
    return min(setting or min(len(os.sched_getaffinity(0)), AUTO_LANES), nports)


def respond(session):
    hello, lim = session.hello, session.limits
    sid = hello.get("session")
    if not isinstance(sid, str) or not SESSION_RE.fullmatch(sid):
        return session.refuse("session must be 16 lowercase hex digits")
    try:
        nports = _int_field(hello, "nports", 1, MAX_PORTS)
        udp_port = _int_field(hello, "udp_port", 0, 65535, 0)
        grace_ns = _int_field(hello, "grace_ns", 10_000_000, 10_000_000_000, 500_000_000)
    except ValueError as exc:
        return session.refuse(str(exc))
    need = nports * OPEN_INTERVALS
    if need > lim.max_port_intervals:
        return session.refuse(f"nports {nports} x {OPEN_INTERVALS} open intervals exceeds "
                              f"max_port_intervals={lim.max_port_intervals}")
    ledger = session.state.setdefault("oneway_port_intervals", {"lock": threading.Lock(), "used": 0})
    with ledger["lock"]:
        free = lim.max_port_intervals_total - ledger["used"]
        if need > free:
            return session.refuse(f"busy: nports {nports} x {OPEN_INTERVALS} open intervals exceeds the "
                                  f"{free} left of max_port_intervals_total={lim.max_port_intervals_total}")
        ledger["used"] += need
    try:
        _open(session, sid, nports, udp_port, grace_ns)
    finally:
        with ledger["lock"]:
            ledger["used"] -= need


def _open(session, sid, nports, udp_port, grace_ns):
    hello, lim = session.hello, session.limits
    udp_key = hello.get("udp_key", "")
    server_key = session.server.key
    mode = "shared" if server_key else "session" if udp_key else "none"
    if server_key:
        key = session_key(server_key, sid)
    elif udp_key:
        if not isinstance(udp_key, str) or not re.fullmatch(r"[0-9a-f]{64}", udp_key):
            return session.refuse("udp_key must be 64 hex digits")
        key = bytes.fromhex(udp_key)
    else:
        key = b""
    sock = session.sock
    ports, why = _candidates(udp_port, lim.udp_ports)
    if why:
        return session.refuse(why)
    socks, err = receive_sockets(sock.family, sock.getsockname()[0], ports, rx_lanes(lim.oneway_rx_threads, nports))
    if not socks:
        return session.refuse(f"cannot receive on UDP port {udp_port or _ports_text(lim.udp_ports)}: {err.strerror}")
    try:
        _serve_session(session, socks, sid, nports, grace_ns, key, mode)
    finally:
        for s in socks:
            s.close()


def _serve_session(session, socks, sid, nports, grace_ns, key, mode):
    rx = load_extension("_udpio").UdpProbeReceiver([s.fileno() for s in socks], max_sessions=1)
    udp = socks[0]
    sess_id = int(sid, 16)
    rx.add_session(sess_id, nports, key)
    session.ok()
    session.set_line_limit(CLIENT_LINE)
    session.send({"udp_port": udp.getsockname()[1], "clock": clock_state(), "auth": mode, "tx_follow_up": True})
    pending = []                 # (due monotonic ns, interval id)
    closed_to = -1               # the highest interval a close was accepted for
    packets = 0
    bye = False
    log.info("session %s: %d ports on UDP %d, %d receive thread(s)", sid[:8], nports, udp.getsockname()[1],
             len(socks))
    while True:
        rx.run(CHUNK_NS)
        got = rx.session_counters(sess_id)["packets"]
        if got != packets:
            packets = got
            session.progress()
        msgs, eof = session.poll()
        for msg in msgs:
            if msg.get("bye") is True:
                bye = True
            close = msg.get("close")
            if isinstance(close, int) and not isinstance(close, bool) and close > closed_to:
                if close > closed_to + OPEN_INTERVALS:
                    raise SessionEnd(f"close {close}: only {OPEN_INTERVALS} intervals past the last closed "
                                     f"({closed_to}) can hold data (max_port_intervals="
                                     f"{session.limits.max_port_intervals})")
                closed_to = close
                pending.append((time.monotonic_ns() + grace_ns, close))
        now = time.monotonic_ns()
        due = [i for t, i in pending if t <= now]
        if due:
            pending = [(t, i) for t, i in pending if t > now]
            results = rx.close_through(sess_id, max(due))
            counters = {**rx.counters, **rx.session_counters(sess_id)}
            session.send({"results": results, "counters": counters, "clock": clock_state()})
        if eof or (bye and not pending):
            return
        session.check()
