"""Peer side of the throughput probe, run inside `netprobe serve`.

A session is two TCP connections from the client, so that each direction
has its own congestion state and its own TCP_INFO:

  "up"   client -> peer: paced payload, drained here. Its idle reverse half
         carries our reports back: one JSON line per sampling chunk,
         {"rows": [[...sample row...], ...], "sender": {counters}}, the
         TCP_INFO of our b->a sender, which only this end can read.
  "down" peer -> client: payload paced here at the rate the client asked for.

The up connection is opened first with {"role": "up", "session": ID,
"rate_down": bit/s, "sample_ns": N}; its ok carries a "ticket" (a server
nonce). The down one follows with {"role": "down", "session": ID, "ticket":
T} from the same client address: a session id alone joins nothing. The
rate_down, counted on the wire (each segment's IP, TCP and Ethernet headers
added, peer.server.tcp_wire_factor), is reserved from [serve] max_rate and
max_rate_per_address for the session's life, and what the down leg sends,
counted the same way, is held to it. The session ends
when either connection ends or a limit (idle_timeout, max_session_length) is
reached.
"""
import hmac
import logging
import re
import secrets
import threading
import time

import numpy as np

from netprobe.errors import PeerError, load_extension
from netprobe.peer.client import SEND_TIMEOUT
from netprobe.peer.server import TokenBucket, tcp_wire_factor
from netprobe.probes.throughput.config import MAX_RATE
from netprobe.probes.throughput.protocol import set_congestion
from netprobe.probes.throughput.samples import NCOLS

log = logging.getLogger("netprobe.serve.throughput")

CHUNK_NS = 100_000_000       # the loops return to Python this often to see stop flags
PAIR_TIMEOUT = 5.0           # an up connection whose down one never comes is dropped
SESSION_RE = re.compile(r"[0-9a-f]{16,64}")
TICKET_RE = re.compile(r"[0-9a-f]{32}")


class Pair:
    """The two connections of one session: the up leg's state the down leg joins."""

    def __init__(self, sid, up, address, rate_down, sample_ns):
        self.sid = sid
        self.up = up
        self.address = address
        self.rate_down = rate_down
        self.sample_ns = sample_ns
        self.ticket = secrets.token_hex(16)
        self.has_down = False
        self.rate_wire = 0.0              # rate_down with the headers on the wire, as reserved
        self.hold = 0.0                   # s the reservation stays held after the session (its debt)
        self.closed = threading.Event()
        self._send_lock = threading.Lock()

    def report(self, rows, counters):
        with self._send_lock:
            self.up.send({"rows": rows.tolist(), "sender": counters})


def respond(session):
    pairs = session.state.setdefault("throughput", {})
    hello = session.hello
    role = hello.get("role")
    sid = hello.get("session")
    if not isinstance(sid, str) or not SESSION_RE.fullmatch(sid):
        return session.refuse("session must be 16-64 lowercase hex digits")
    if role == "up":
        return _serve_up(session, pairs, sid)
    if role == "down":
        return _serve_down(session, pairs, sid)
    return session.refuse('role must be "up" or "down"')


def _serve_up(session, pairs, sid):
    hello = session.hello
    rate = hello.get("rate_down")
    sample_ns = hello.get("sample_ns", 100_000_000)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= MAX_RATE:
        return session.refuse(f"rate_down must be 0 to {MAX_RATE:.0f} bit/s")
    if isinstance(sample_ns, bool) or not isinstance(sample_ns, int) or not 10**7 <= sample_ns <= 10**10:
        return session.refuse("sample_ns must be 10 ms to 10 s in ns")
    if sid in pairs:
        return session.refuse("session already open")
    rates = session.server.rates
    wire = rate * tcp_wire_factor(session.sock)
    if rate and not rates.reserve(session.address, wire):
        return session.refuse(rates.why_refused(session.address))
    pair = pairs[sid] = Pair(sid, session, session.address, float(rate), sample_ns)
    pair.rate_wire = wire
    try:
        session.ok(ticket=pair.ticket)
        session.sock.settimeout(SEND_TIMEOUT)   # bounds a report; set once: the drain loop shares the fd
        drain = load_extension("_pacer").TcpDrain(session.sock.fileno())
        rows = np.empty((64, NCOLS), dtype=np.int64)
        started = time.monotonic()
        while not pair.closed.is_set():
            try:
                got = drain.run(rows, CHUNK_NS, sample_ns, 0)
            except OSError:                      # recv failed
                break
            if got.eof:
                break
            if got.bytes_received:
                session.progress()
            if rate and not pair.has_down and time.monotonic() - started > PAIR_TIMEOUT:
                log.info("session %s: no down connection within %gs; closed", sid[:8], PAIR_TIMEOUT)
                break
            session.check()
    finally:
        pair.closed.set()
        pairs.pop(sid, None)
        if rate:
            rates.release(session.address, wire, hold=pair.hold)


def _serve_down(session, pairs, sid):
    hello = session.hello
    pair = pairs.get(sid)
    ticket = hello.get("ticket")
    if pair is None or pair.has_down or pair.address != session.address or not isinstance(ticket, str) \
            or not TICKET_RE.fullmatch(ticket) or not hmac.compare_digest(ticket, pair.ticket):
        return session.refuse("no such session waiting for its down connection")
    pair.has_down = True
    if not pair.rate_down:
        return session.refuse("this session asked for rate_down 0: no down connection")
    congestion = hello.get("congestion") or ""
    if congestion:
        if not isinstance(congestion, str) or len(congestion) > 15:
            return session.refuse("congestion must be a congestion control name")
        try:
            set_congestion(session.sock, congestion, session.limits.congestion_allow)
        except PeerError as exc:
            return session.refuse(str(exc))
    session.ok()
    pacer = load_extension("_pacer")
    sender = pacer.TcpPacedSender(session.sock.fileno(), pair.rate_down, pacing=bool(hello.get("pacing")))
    bucket = TokenBucket(pair.rate_wire)
    factor = tcp_wire_factor(session.sock)
    rows = np.empty((64, NCOLS), dtype=np.int64)
    keep = ("ticks", "timer_overruns", "late_ticks", "eagain", "bytes_sent")
    totals = dict.fromkeys(keep, 0)
    try:
        while not pair.closed.is_set():
            try:
                got, failed = sender.run(rows, CHUNK_NS, pair.sample_ns, 0), False
            except OSError as exc:               # the send failed; the chunk's counts are exc.result
                got, failed = exc.result, True
            for k in keep:
                totals[k] += getattr(got, k)
            if got.rows:
                pair.report(rows[:got.rows], totals)
            if failed:
                break
            if got.bytes_sent:
                session.progress()
                now = time.monotonic()
                ahead = bucket.reserve(got.bytes_sent * factor, now) - now
                if ahead > 0:                     # the pacer ran ahead of the reserved rate: hold it to it
                    pair.closed.wait(min(ahead, 1.0))
            session.check()
    except OSError as exc:                       # the up connection (our report channel) is gone
        log.debug("session %s: report failed: %s", sid[:8], exc)
    finally:
        pair.hold = bucket.debt(time.monotonic())
        pair.closed.set()
        sender.close()
