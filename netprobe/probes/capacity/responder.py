"""Peer side of the capacity probe, run inside `netprobe serve`: it sends the trains.

After the peer handshake ({"kind": "capacity"}; allow list and key are
checked by netprobe.peer) the client sends one JSON line per message:

  {"udp_port": P, "token": T}       setup: trains go to the client's own
                                     address (the TCP peer), port P, with
                                     session token T. Reply {"ok": true,
                                     "max_size": the path MTU - IP - UDP}.
  {"plan": [[train, count, size, primers, primer_size, gap_ns], ...]}
                                     send these trains (netprobe._train
                                     TrainSender). Reply {"sent": [[t_start_ns,
                                     t_end_ns, packets, bytes], ...],
                                     "error": errno or 0}.

A malformed, oversized or out-of-bounds message is counted
(server.state["capacity"]["malformed"]) and ends the session with one
refusal line {"ok": false, "error": "..."} naming what refused it, as the
other kinds do: a client that breaks the protocol once is not served more.
Trains only ever go to the address the control connection came from, so a
peer cannot be used to flood a third party.

Rate, counted on the wire (UDP payload + UDP, IP and Ethernet headers):
a train leaves at line rate, so over any window of WINDOW_S a session may
send its bucket's rate x WINDOW_S plus one train. A session therefore
reserves from [serve] max_rate and max_rate_per_address its plan's average
rate (bytes over the sum of its gaps, the last row's gap included) plus its
largest train per WINDOW_S, or what is free if that leaves at least
MIN_SHARE of the average rate, else the plan is refused busy. This end sends
the plan a train at a time under a token bucket at the reservation less the
train allowance. TrainSender never sleeps after the last train of a call, so
the pacing is done here: the next train (of this plan or the next) waits for
the gap and the bucket. A session keeps its reservation from plan to plan
(growing it when a plan needs more, giving back a surplus WINDOW_S later);
when it ends, what it sent in its last WINDOW_S stays reserved for
WINDOW_S more, so the next session's trains never add to a window its last
ones are in.
"""
import collections
import logging
import socket
import time

import numpy as np

from netprobe.errors import load_extension
from netprobe.peer.protocol import ProtocolError
from netprobe.peer.server import SessionEnd, TokenBucket

log = logging.getLogger("netprobe.serve.capacity")

LINE_MAX = 1 << 20            # bytes per control line
MAX_TRAINS = 4096             # per plan message
MAX_PLAN_BYTES = 32 << 20     # bytes one plan may ask us to send
MIN_SPAN_NS = 1_000_000       # a plan takes a millisecond at least
MIN_SHARE = 0.25              # a plan runs at no less than this share of its own rate, or is refused busy
WINDOW_S = 1.0                # the window max_rate holds over (s)
ETHERNET = 14                 # link header the interface counts
IP_MTU = 14                   # <linux/in.h>
IPV6_MTU = 24


class BadMessage(ValueError):
    """A control message that is not valid; the text goes back to the client."""


def _counters(state):
    return state.setdefault("capacity", {"malformed": 0, "sessions": 0, "trains": 0, "bytes": 0})


def parse_setup(msg):
    """(port, token) of a setup message, or BadMessage."""
    if not isinstance(msg, dict):
        raise BadMessage('expected {"udp_port": P, "token": T}')
    port, token = msg.get("udp_port"), msg.get("token")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadMessage("udp_port must be 1-65535")
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= 0xffffffff:
        raise BadMessage("token must be a 32-bit unsigned integer")
    return port, token


def train_bytes(plan):
    """UDP payload bytes of each plan row."""
    _, count, size, primers, primer, _ = plan.T
    return (count - primers) * size + primers * primer


def parse_plan(msg, max_size, max_rate):
    """A plan message as an int64 array (rows: train, count, size, primers, primer_size, gap_ns),
    or BadMessage."""
    train = load_extension("_train")
    if not isinstance(msg, dict) or not isinstance(msg.get("plan"), list):
        raise BadMessage('expected {"plan": [[train, count, size, primers, primer_size, gap_ns], ...]}')
    rows = msg["plan"]
    if not 1 <= len(rows) <= MAX_TRAINS:
        raise BadMessage(f"a plan holds 1 to {MAX_TRAINS} trains")
    for r in rows:
        if not isinstance(r, list) or len(r) != train.PLAN_NCOLS or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in r):
            raise BadMessage(f"each train is a list of {train.PLAN_NCOLS} integers")
    try:
        plan = np.asarray(rows, dtype=np.int64)
    except OverflowError:
        raise BadMessage("a plan value is out of range") from None
    ids, count, size, primers, primer, gap = plan.T
    if np.any(ids < 0) or np.any(ids > 0xffffffff):
        raise BadMessage("train ids are 32-bit unsigned")
    if np.any(count < 2) or np.any(count > train.MAX_TRAIN):
        raise BadMessage(f"count must be 2 to {train.MAX_TRAIN}")
    if np.any(size < train.HEADER_LEN) or np.any(size > max_size):
        raise BadMessage(f"size must be {train.HEADER_LEN} to {max_size} bytes (this path's largest)")
    if np.any(primers < 0) or np.any(primers > count - 2):
        raise BadMessage("primers must be 0 to count - 2")
    if np.any((primers > 0) & ((primer < train.HEADER_LEN) | (primer > max_size))):
        raise BadMessage(f"primer_size must be {train.HEADER_LEN} to {max_size} bytes")
    if np.any(gap < 0) or np.any(gap > 10**9):
        raise BadMessage("gap_ns must be 0 to 1 s")
    nbytes = int(np.sum(train_bytes(plan)))
    if nbytes > MAX_PLAN_BYTES:
        raise BadMessage(f"a plan may send at most {MAX_PLAN_BYTES} bytes")
    if nbytes * 8e9 > max_rate * plan_span_ns(plan):
        raise BadMessage(f"the plan's average rate exceeds this peer's max_rate ({max_rate / 1e6:g} Mbit/s)")
    return np.ascontiguousarray(plan)


def wire_bytes(plan, family):
    """Bytes each plan row puts on the wire: payload plus UDP, IP and Ethernet headers."""
    ip = 40 if family == socket.AF_INET6 else 20
    return train_bytes(plan) + plan[:, 1] * (8 + ip + ETHERNET)


def plan_span_ns(plan):
    """The time a plan takes: every gap, the last row's included."""
    return int(plan[:, 5].sum()) + MIN_SPAN_NS


def path_max_size(udp):
    """Largest UDP payload to the connected client without fragmentation (route MTU - headers)."""
    if udp.family == socket.AF_INET6:
        mtu = udp.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        return mtu - 48
    return udp.getsockopt(socket.IPPROTO_IP, IP_MTU) - 28


class Trains:
    """The session's sender: one train per TrainSender call, paced here (gaps and bucket)."""

    def __init__(self, train, udp, token):
        self.train = train
        self.family = udp.family
        self.sender = train.TrainSender(udp.fileno(), token)
        self.recent = collections.deque()     # (monotonic s, wire bytes) of the trains of the last WINDOW_S
        self.due = 0.0                # monotonic s the next train may start (the last gap)
        self.bucket = None

    def send(self, plan, rate, session):
        """Send `plan` at no more than `rate` bit/s; returns (sent rows, send counters). Waits are
        cut into slices that check the session's limits (SessionEnd)."""
        if self.bucket is None:
            self.bucket = TokenBucket(rate)
        self.bucket.rate = rate
        sent = np.zeros((len(plan), self.train.SENT_NCOLS), dtype=np.int64)
        nbytes = wire_bytes(plan, self.family)
        total = {"trains": 0, "bytes": 0, "error": 0}
        for i in range(len(plan)):
            start = self.bucket.reserve(int(nbytes[i]), max(time.monotonic(), self.due))
            while (wait := start - time.monotonic()) > 0:
                time.sleep(min(wait, 0.5))
                session.check()
            try:
                got, error = self.sender.send(plan[i:i + 1], sent[i:i + 1]), 0
            except OSError as exc:               # a send failed; what went is exc.result
                got, error = exc.result, exc.errno
            total["trains"] += got.trains
            total["bytes"] += got.bytes
            self.recent.append((time.monotonic(), int(nbytes[i])))
            self.due = time.monotonic() + plan[i, 5] / 1e9
            if error or got.interrupted or not got.trains:
                total["error"] = error
                break
        return sent[:total["trains"]], total

    def recent_bps(self):
        """What this session sent in the last WINDOW_S, as bit/s over WINDOW_S."""
        now = time.monotonic()
        while self.recent and self.recent[0][0] < now - WINDOW_S:
            self.recent.popleft()
        return sum(n for _, n in self.recent) * 8 / WINDOW_S


def respond(session):
    counters = _counters(session.state)
    rates = session.server.rates
    session.ok()
    session.set_line_limit(LINE_MAX)
    client = session.address
    udp = trains = None
    max_size = 0
    reserved = 0.0
    counters["sessions"] += 1
    train = load_extension("_train")
    try:
        while True:
            try:
                msg = session.read()
                if msg is None:
                    return
                if udp is None:
                    port, token = parse_setup(msg)
                    udp = socket.socket(session.sock.family, socket.SOCK_DGRAM)
                    udp.connect((session.sock.getpeername()[0], port))
                    trains = Trains(train, udp, token)
                    max_size = min(path_max_size(udp), train.MAX_SIZE)
                    session.send({"ok": True, "max_size": max_size})
                    continue
                plan = parse_plan(msg, max_size, session.limits.max_rate)
            except ProtocolError:
                counters["malformed"] += 1
                raise                     # the server refuses "bad control line: ..." and closes
            except (BadMessage, ValueError) as exc:
                counters["malformed"] += 1
                log.info("capacity session from %s: bad control message: %s", client, exc)
                raise SessionEnd(f"bad capacity message: {exc}") from None
            wire = wire_bytes(plan, udp.family)
            want = int(wire.sum()) * 8e9 / plan_span_ns(plan)
            burst = int(wire.max()) * 8 / WINDOW_S
            least = burst + MIN_SHARE * want
            if least > min(rates.total, rates.per_address):
                session.send({"error": f"a train of {int(wire.max())} bytes on the wire is more than max_rate "
                                       f"({min(rates.total, rates.per_address) / 1e6:g} Mbit/s) allows "
                                       f"in {WINDOW_S:g} s with this plan's rate"})
                continue
            if reserved < burst + want:
                more = burst + want - reserved
                reserved += rates.reserve(client, more, partial=max(0.0, least - reserved) / more)
            elif reserved > burst + want:
                rates.release(client, reserved - burst - want, hold=WINDOW_S)
                reserved = burst + want
            if reserved < least:
                session.send({"error": rates.why_refused(client)})
                continue
            sent, got = trains.send(plan, reserved - burst, session)
            counters["trains"] += got["trains"]
            counters["bytes"] += got["bytes"]
            session.progress()
            session.send({"sent": sent.tolist(), "error": got["error"]})
            session.check()
    finally:
        held = min(reserved, trains.recent_bps()) if trains else 0.0
        rates.release(client, reserved - held)
        rates.release(client, held, hold=WINDOW_S)
        if udp is not None:
            udp.close()
