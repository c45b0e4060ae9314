"""Peer side of the oneway probe, run inside `netprobe serve`: the receiver.

The client's hello (after serve.py's access list and key challenge) names
the session; this end opens a UDP socket for it, registers the session in a
netprobe._udpio.UdpProbeReceiver and answers with the UDP port and how probes are authenticated ("auth": "shared"
key, "session" key from the hello, or "none"). Then:

  client -> {"close": I}       interval I ended at the sender (sent after its control records)
  client -> {"bye": true}      the sender stopped: close what is pending, then the session ends
  server -> {"results": [...], "counters": {...}, "clock": {...}}
                               interval records (close_through) once `grace` has passed after
                               the close, the receiver's counters and this host's clock state

Memory is what add_session allocates (fixed per port); nothing grows with
uptime. A session ends when the control connection closes.
"""
import logging
import re
import socket
import time

from netprobe import serve, sysinfo
from netprobe.errors import load_extension
from netprobe.probes.oneway.config import MAX_PORTS
from netprobe.probes.oneway.protocol import LineReader, send_line, session_key

log = logging.getLogger("netprobe.serve.oneway")

CHUNK_NS = 50_000_000         # the receive loop returns to Python this often
SESSION_RE = re.compile(r"[0-9a-f]{16}")
RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33          # <asm-generic/socket.h>; the socket module lacks it


def clock_state():
    """This host's clock as both ends report it: synced, maxerror_us (None if unknown)."""
    got, _ = sysinfo.clock_sync()
    if got is None:
        return {"synced": False, "maxerror_us": None}
    return {"synced": bool(got["synced"]), "maxerror_us": int(got["maxerror_us"])}


def _int_field(hello, name, lo, hi, default=None):
    v = hello.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer {lo} to {hi}")
    return v


def respond(sock, hello, server):
    sid = hello.get("session")
    if not isinstance(sid, str) or not SESSION_RE.fullmatch(sid):
        return serve.refuse(sock, "session must be 16 lowercase hex digits")
    try:
        nports = _int_field(hello, "nports", 1, MAX_PORTS)
        udp_port = _int_field(hello, "udp_port", 0, 65535, 0)
        grace_ns = _int_field(hello, "grace_ns", 10_000_000, 10_000_000_000, 500_000_000)
    except ValueError as exc:
        return serve.refuse(sock, str(exc))
    udp_key = hello.get("udp_key", "")
    mode = "shared" if server.key else "session" if udp_key else "none"
    if server.key:
        key = session_key(server.key, sid)
    elif udp_key:
        if not isinstance(udp_key, str) or not re.fullmatch(r"[0-9a-f]{64}", udp_key):
            return serve.refuse(sock, "udp_key must be 64 hex digits")
        key = bytes.fromhex(udp_key)
    else:
        key = b""
    udp = socket.socket(sock.family, socket.SOCK_DGRAM)
    try:
        try:                     # a deep buffer rides out scheduling stalls; beyond rmem_max with CAP_NET_ADMIN
            udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        udp.bind((sock.getsockname()[0], udp_port))
    except OSError as exc:
        udp.close()
        return serve.refuse(sock, f"cannot receive on UDP port {udp_port}: {exc.strerror}")
    try:
        _serve_session(sock, udp, server, sid, nports, grace_ns, key, mode)
    finally:
        udp.close()


def _serve_session(sock, udp, server, sid, nports, grace_ns, key, mode):
    rx = load_extension("_udpio").UdpProbeReceiver(udp.fileno(), max_sessions=1)
    session = int(sid, 16)
    rx.add_session(session, nports, key)
    serve.reply_ok(sock)
    sock.setblocking(False)
    send_line(sock, {"udp_port": udp.getsockname()[1], "clock": clock_state(), "auth": mode,
                     "tx_follow_up": True})
    reader = LineReader(sock)
    pending = []                 # (due monotonic ns, interval id)
    bye = False
    log.info("session %s: %d ports on UDP %d", sid[:8], nports, udp.getsockname()[1])
    while not server.stop.is_set():
        rx.run(CHUNK_NS)
        for msg in reader.read():
            if msg.get("bye") is True:
                bye = True
            close = msg.get("close")
            if isinstance(close, int) and not isinstance(close, bool) and 0 <= close < 1 << 32:
                pending.append((time.monotonic_ns() + grace_ns, close))
        now = time.monotonic_ns()
        due = [i for t, i in pending if t <= now]
        if due:
            pending = [(t, i) for t, i in pending if t > now]
            try:
                results = rx.close_through(session, max(due))
            except ValueError as exc:            # a close far beyond the open intervals
                log.info("session %s: %s; closed", sid[:8], exc)
                break
            counters = {**rx.counters, **rx.session_counters(session)}
            send_line(sock, {"results": results, "counters": counters, "clock": clock_state()})
        if reader.closed or (bye and not pending):
            if reader.error and not bye:
                log.debug("session %s: %s", sid[:8], reader.error)
            break


serve.RESPONDERS["oneway"] = respond
