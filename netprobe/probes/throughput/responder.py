"""Peer side of the throughput probe, run inside `netprobe serve`.

A session is two TCP connections from the client, so that each direction
has its own congestion state and its own TCP_INFO:

  "up"   client -> peer: paced payload, drained here. Its idle reverse half
         carries our reports back: one JSON line per sampling chunk,
         {"rows": [[...sample row...], ...], "sender": {counters}}, the
         TCP_INFO of our b->a sender, which only this end can read.
  "down" peer -> client: payload paced here at the rate the client asked for.

The up connection is opened first with {"role": "up", "session": ID,
"rate_down": bit/s, "sample_ns": N}; the down one follows with {"role":
"down", "session": ID}. The session ends when either connection ends.
"""
import json
import logging
import re
import threading
import time

import numpy as np

from netprobe import serve
from netprobe.errors import PeerError, load_extension
from netprobe.probes.throughput.config import MAX_RATE
from netprobe.probes.throughput.runner import set_congestion
from netprobe.probes.throughput.samples import NCOLS

log = logging.getLogger("netprobe.serve.throughput")

CHUNK_NS = 100_000_000       # the loops return to Python this often to see stop flags
PAIR_TIMEOUT = 5.0           # an up connection whose down one never comes is dropped
SESSION_RE = re.compile(r"[0-9a-f]{16,64}")


class Session:
    def __init__(self, sid, up, rate_down, sample_ns):
        self.sid = sid
        self.up = up
        self.rate_down = rate_down
        self.sample_ns = sample_ns
        self.has_down = False
        self.closed = threading.Event()
        self._send_lock = threading.Lock()

    def report(self, rows, counters):
        line = json.dumps({"rows": rows.tolist(), "sender": counters}, separators=(",", ":")) + "\n"
        with self._send_lock:
            self.up.sendall(line.encode())


def respond(sock, hello, server):
    sessions = server.state.setdefault("throughput", {})
    role = hello.get("role")
    sid = hello.get("session")
    if not isinstance(sid, str) or not SESSION_RE.fullmatch(sid):
        return serve.refuse(sock, "session must be 16-64 lowercase hex digits")
    if role == "up":
        return _serve_up(sock, hello, server, sessions, sid)
    if role == "down":
        return _serve_down(sock, hello, server, sessions, sid)
    return serve.refuse(sock, 'role must be "up" or "down"')


def _serve_up(sock, hello, server, sessions, sid):
    rate = hello.get("rate_down")
    sample_ns = hello.get("sample_ns", 100_000_000)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= MAX_RATE:
        return serve.refuse(sock, f"rate_down must be 0 to {MAX_RATE:.0f} bit/s")
    if isinstance(sample_ns, bool) or not isinstance(sample_ns, int) or not 10**7 <= sample_ns <= 10**10:
        return serve.refuse(sock, "sample_ns must be 10 ms to 10 s in ns")
    if sid in sessions:
        return serve.refuse(sock, "session already open")
    if not server.reserve_rate(rate):
        return serve.refuse(sock, f"this peer's send budget (max_rate {server.max_rate / 1e9:g} Gbit/s) "
                                  "is taken by other sessions")
    session = sessions[sid] = Session(sid, sock, float(rate), sample_ns)
    try:
        serve.reply_ok(sock)
        sock.settimeout(2.0)                    # bounds how long a report may block
        drain = load_extension("_pacer").TcpDrain(sock.fileno())
        rows = np.empty((64, NCOLS), dtype=np.int64)
        started = time.monotonic()
        while not server.stop.is_set() and not session.closed.is_set():
            try:
                if drain.run(rows, CHUNK_NS, sample_ns, 0).eof:
                    break
            except OSError:                      # recv failed
                break
            if rate and not session.has_down and time.monotonic() - started > PAIR_TIMEOUT:
                log.info("session %s: no down connection within %gs; closed", sid[:8], PAIR_TIMEOUT)
                break
    finally:
        session.closed.set()
        sessions.pop(sid, None)
        server.release_rate(rate)


def _serve_down(sock, hello, server, sessions, sid):
    session = sessions.get(sid)
    if session is None or session.has_down:
        return serve.refuse(sock, "no such session waiting for its down connection")
    session.has_down = True
    if not session.rate_down:
        return serve.refuse(sock, "this session asked for rate_down 0: no down connection")
    congestion = hello.get("congestion") or ""
    if congestion:
        if not isinstance(congestion, str) or len(congestion) > 15:
            return serve.refuse(sock, "congestion must be a congestion control name")
        try:
            set_congestion(sock, congestion)
        except PeerError as exc:
            return serve.refuse(sock, str(exc))
    serve.reply_ok(sock)
    pacer = load_extension("_pacer")
    sender = pacer.TcpPacedSender(sock.fileno(), session.rate_down, pacing=bool(hello.get("pacing")))
    rows = np.empty((64, NCOLS), dtype=np.int64)
    keep = ("ticks", "timer_overruns", "late_ticks", "eagain", "bytes_sent")
    totals = dict.fromkeys(keep, 0)
    try:
        while not server.stop.is_set() and not session.closed.is_set():
            try:
                got, failed = sender.run(rows, CHUNK_NS, session.sample_ns, 0), False
            except OSError as exc:               # the send failed; the chunk's counts are exc.result
                got, failed = exc.result, True
            for k in keep:
                totals[k] += getattr(got, k)
            if got.rows:
                session.report(rows[:got.rows], totals)
            if failed:
                break
    except OSError as exc:                       # the up connection (our report channel) is gone
        log.debug("session %s: report failed: %s", sid[:8], exc)
    finally:
        session.closed.set()
        sender.close()


serve.RESPONDERS["throughput"] = respond
