"""Structured (rule-based) fuzz of the oneway receivers against tests/reference/oneway.py.

A model sender emits probe streams over a few ports and intervals; the network delivers
any in-flight datagram in any order, drops it, or delivers it again; control records,
closes, truncated and oversized datagrams, wrong keys, unknown sessions, port indexes
out of range and path-trace datagrams come at any step. Datagrams reach the receiver
either through feed() or through a real loopback socket and run(), with one to three
receive lanes (the peer's SO_REUSEPORT group, a lane per port index modulo lanes).
After every close the receiver's records must equal the reference's (received, lost,
dup, reordered, control and next-interval counts), and every datagram must be counted
exactly once under the right reason.

The normal suite runs 40 examples per machine; `make fuzz` runs 200,000
(tests/fuzz/__init__.py).
"""
import ipaddress
import socket
import time
from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from netprobe.errors import load_extension
from netprobe.probes.oneway import analysis, responder, trace
from tests.fuzz import examples
from tests.reference import oneway as ref

udpio = load_extension("_udpio")
udping = load_extension("_udping")

SID, OTHER_SID = 0x5EED, 0xBAD5EED
T0 = 1_700_000_000 * 10**9
KEY = b"oneway fuzz key"
EXAMPLES = examples(40)
PROFILE = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                   suppress_health_check=list(HealthCheck))


class Link:
    """feed() or a loopback socket pair in front of a receiver; deliveries are queued and
    flushed (in order) before anything is checked."""

    def __init__(self, rx_factory, loopback, lanes=1):
        self.loopback = loopback
        self.queue = []
        if loopback:
            if lanes > 1:                 # the peer's SO_REUSEPORT group, one receive lane each
                self.rsocks, _ = responder.receive_sockets(socket.AF_INET, "127.0.0.1", [0], lanes)
                assert len(self.rsocks) == lanes
            else:
                self.rsocks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
                self.rsocks[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                self.rsocks[0].bind(("127.0.0.1", 0))
            self.ssock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.ssock.connect(self.rsocks[0].getsockname())
            fds = [s.fileno() for s in self.rsocks]
            self.rx = rx_factory(fds if lanes > 1 else fds[0])
        else:
            self.rx = rx_factory(-1)

    def close(self):
        if self.loopback:
            for s in self.rsocks:
                s.close()
            self.ssock.close()


def _port_check(c, closed_ref, sent):
    """One closed interval of the receiver against the reference's record of it."""
    i, ref_ports = closed_ref
    assert c["interval"] == i
    counts = [sent[(p, i)] for p in range(len(ref_ports))]
    summary = analysis.summarize(c, counts)
    for p, (got, want) in enumerate(zip(c["ports"], ref_ports, strict=True)):
        assert {k: got[k] for k in want} == want, (i, p)
        assert got["n"] == got["received"]          # each new packet's delay accounted once
        pl = summary["ports"][p]
        assert (pl.received, pl.lost) == (want["received"], counts[p] - want["received"]), (i, p)


class ProbeReceiverMachine(RuleBasedStateMachine):
    @initialize(nports=st.integers(1, 4), keyed=st.booleans(), loopback=st.booleans(), lanes=st.integers(1, 3))
    def setup(self, nports, keyed, loopback, lanes):
        """lanes: receive lanes, a port index each modulo lanes (the peer's SO_REUSEPORT group)."""
        self.nports, self.key = nports, KEY if keyed else b""

        def make(fd):
            rx = udpio.UdpProbeReceiver(fd, lanes=lanes if fd == -1 and lanes > 1 else 0)
            rx.add_session(SID, nports, self.key)
            return rx

        self.link = Link(make, loopback, lanes)
        self.ref = ref.ReferenceSession()
        self.seq, self.count, self.prev = [0] * nports, [0] * nports, [0] * nports
        self.interval = 0
        self.flight = []                  # (datagram, ("data", port, seq, interval, index, prev) | ("ctl", ...))
        self.sent = defaultdict(int)      # (port, interval) -> data packets sent
        self.want = defaultdict(int)      # counter -> expected value
        self.clock = T0

    def teardown(self):
        if hasattr(self, "link"):
            try:
                self._check(force=True)
            finally:
                self.link.close()

    def _datagram(self, key=None, **fields):
        self.clock += 1000
        base = {"flags": 0, "session": SID, "start_ns": T0, "send_ns": self.clock, "clock_err_us": 0}
        return udpio.push_header(key=self.key if key is None else key, **{**base, **fields})

    def _deliver(self, data, event):
        self.want["datagrams"] += 1
        self.link.queue.append(data)
        if event[0] == "data":
            self.want["packets"] += 1
            self.ref.data(*event[1:])
        elif event[0] == "ctl":
            self.want["controls"] += 1
            self.ref.control(*event[1:])
        else:
            self.want[event[0]] += 1

    def _flush(self):
        if not self.link.queue:
            return
        if self.link.loopback:
            for d in self.link.queue:
                self.link.ssock.send(d)
            for _ in range(500):
                if self.link.rx.datagrams == self.want["datagrams"]:
                    break
                self.link.rx.run(1_000_000)
        else:
            for d in self.link.queue:
                self.link.rx.feed(d, self.clock + 50_000)
        self.link.queue.clear()

    @rule(port=st.integers(0, 3), n=st.integers(1, 6))
    def send(self, port, n):
        port %= self.nports
        for _ in range(n):
            s, k = self.seq[port], self.count[port]
            d = self._datagram(port=port, seq=s, interval=self.interval, index=k, count=self.prev[port])
            self.flight.append((d, ("data", port, s, self.interval, k, self.prev[port])))
            self.seq[port] += 1
            self.count[port] += 1
            self.sent[(port, self.interval)] += 1

    @precondition(lambda self: self.interval - self.ref.last_closed <= 2)
    @rule(copies=st.integers(1, 3))
    def end_interval(self, copies):
        for port in range(self.nports):
            for c in range(copies):
                d = self._datagram(flags=ref.F_CONTROL, port=port, seq=self.seq[port], interval=self.interval,
                                   index=c, count=self.count[port])
                self.flight.append((d, ("ctl", port, self.interval, self.count[port], self.seq[port])))
            self.prev[port], self.count[port] = self.count[port], 0
        self.interval += 1

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), again=st.booleans())
    def deliver(self, data, again):
        """Any in-flight datagram, in any order; `again` keeps it in flight (a duplicate later)."""
        i = data.draw(st.integers(0, len(self.flight) - 1))
        d, event = self.flight[i] if again else self.flight.pop(i)
        self._deliver(d, event)

    @precondition(lambda self: self.flight)
    @rule(data=st.data())
    def drop(self, data):
        self.flight.pop(data.draw(st.integers(0, len(self.flight) - 1)))

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), cut=st.integers(0, 200))
    def truncated(self, data, cut):
        d, _ = self.flight[data.draw(st.integers(0, len(self.flight) - 1))]
        d = d[:cut % len(d)]
        assert isinstance(ref.decode(d, self.key), tuple)
        self._deliver(d, ("malformed",))

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), extra=st.binary(min_size=1, max_size=64))
    def oversized(self, data, extra):
        d, _ = self.flight[data.draw(st.integers(0, len(self.flight) - 1))]
        d += extra                                    # the length field no longer matches
        assert ref.decode(d, self.key)[0] == "length"
        self._deliver(d, ("malformed",))

    @rule(port=st.integers(0, 3), seq=st.integers(0, 100))
    def wrong_key(self, port, seq):
        """Signed with another key (keyed session), or carrying a tag the session has no key for."""
        d = self._datagram(key=b"not the key", port=port % self.nports, seq=seq, interval=self.interval,
                           index=0, count=0)
        assert isinstance(ref.decode(d, self.key), tuple)
        self._deliver(d, ("unauthenticated",))

    @rule(seq=st.integers(0, 2**62 - 1), interval=st.integers(0, 2**32 - 1))
    def unknown_session(self, seq, interval):
        self._deliver(self._datagram(session=OTHER_SID, port=0, seq=seq, interval=interval, index=0, count=0),
                      ("unknown_session",))

    @rule(port=st.integers(4, 0xFFFF), seq=st.integers(0, 2**64 - 1), interval=st.integers(0, 2**32 - 1))
    def out_of_range(self, port, seq, interval):
        """A port index beyond the session's, or a valid one with a sequence number >= 2**62."""
        if seq < 2**62:
            port = max(port, self.nports)
        else:
            port %= self.nports
        self._deliver(self._datagram(port=port, seq=seq, interval=interval, index=0, count=0), ("malformed",))

    @rule(token=st.binary(min_size=8, max_size=8), port=st.integers(0, 0xFFFF), ttl=st.integers(0, 255),
          tail=st.sampled_from([0, 1, -1, 48]))
    def path_trace(self, token, port, ttl, tail):
        """A path-trace datagram that reached this end (trace.PAYLOAD): counted apart; one of
        another length that starts with its magic is malformed (bad magic)."""
        d = trace.PAYLOAD.pack(trace.TRACE_MAGIC, token, port, ttl, 0)
        d = d + b"\0" * tail if tail >= 0 else d[:tail]
        self._deliver(d, ("trace",) if len(d) == trace.PAYLOAD.size else ("malformed",))

    @precondition(lambda self: self.interval - 1 > self.ref.last_closed)
    @rule(data=st.data())
    def close(self, data):
        self._flush()
        through = data.draw(st.integers(self.ref.last_closed + 1, self.interval - 1))
        got = self.link.rx.close_through(SID, through)
        want = self.ref.close_through(through, self.nports)
        assert len(got) == len(want)
        for c, w in zip(got, want, strict=True):
            _port_check(c, w, self.sent)

    @invariant()
    def every_datagram_counted_once_under_its_reason(self):
        """After every step with feed(); through the socket every 16 datagrams and at the end
        (each check waits for the loopback)."""
        if hasattr(self, "link"):
            self._check(force=not self.link.loopback or len(self.link.queue) >= 16)

    def _check(self, force):
        if not force:
            return
        self._flush()
        c = self.link.rx.counters
        s = self.link.rx.session_counters(SID)
        got = {"datagrams": c["datagrams"], "malformed": c["malformed"], "unauthenticated": c["unauthenticated"],
               "unknown_session": c["unknown_session"], "packets": s["packets"], "controls": s["controls"],
               "trace": c["trace"]}
        assert got == {k: self.want[k] for k in got}
        assert (c["truncated"], s["overrun"], c["misrouted"]) == (0, 0, 0)
        assert s["late_closed"] == self.ref.late


ProbeReceiverMachine.TestCase.settings = PROFILE
test_probe_receiver_against_reference = ProbeReceiverMachine.TestCase


def v1_row(data, ip, port, rx_ns):
    """The UdpingV1Receiver row of one datagram, from the struct reference; None if refused."""
    h = ref.decode_v1(data)
    if isinstance(h, tuple) or not 0 <= h["sent_sec"] < 2**33:
        return None
    g = int(h["guid"], 16)
    low = g & (2**64 - 1)
    return [int(ipaddress.IPv4Address(ip)), port, (len(h["guid"]) << 16) | (g >> 64),
            low - 2**64 if low >= 2**63 else low, h["start_s"], h["seq"],
            h["sent_sec"] * 10**9 + h["sent_nsec"], rx_ns]


guids = st.text("0123456789abcdef", min_size=1, max_size=20)


class UdpingV1ReceiverMachine(RuleBasedStateMachine):
    @initialize(loopback=st.booleans())
    def setup(self, loopback):
        self.fsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # feed() only: an idle socket
        self.link = Link(lambda fd: udping.UdpingV1Receiver(fd if fd >= 0 else self.fsock.fileno()), loopback)
        self.flight = []
        self.delivered = []
        self.accepted = 0
        self.rows = np.empty((4096, 8), dtype=np.int64)

    def teardown(self):
        try:
            if hasattr(self, "link"):
                self._check(force=True)
        finally:
            if hasattr(self, "link"):
                self.link.close()
            self.fsock.close()

    @rule(guid=guids, start=st.integers(-2**63, 2**63 - 1), seq=st.integers(0, 2**32 - 1),
          sec=st.one_of(st.integers(0, 2**33 - 1), st.integers(-2**63, 2**63 - 1)),
          nsec=st.one_of(st.integers(0, 999_999_999), st.integers(-2**63, 2**63 - 1)), extra=st.integers(0, 40))
    def send(self, guid, start, seq, sec, nsec, extra):
        d = bytearray(udping.push_udping(start_s=start, guid=guid, seq=seq, sent_sec=0, sent_nsec=0,
                                         length=udping.V1_HDR + extra))
        d[48:64] = sec.to_bytes(8, "little", signed=True) + nsec.to_bytes(8, "little", signed=True)
        self.flight.append(bytes(d))

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), again=st.booleans(),
          damage=st.sampled_from(["none", "truncate", "oversize", "version", "guid", "nul"]), cut=st.integers(0, 120))
    def deliver(self, data, again, damage, cut):
        i = data.draw(st.integers(0, len(self.flight) - 1))
        d = bytearray(self.flight[i] if again else self.flight.pop(i))
        if damage == "truncate":
            d = d[:cut % len(d)]
        elif damage == "oversize":
            d += b"\0" * (1 + cut)
        elif damage == "version":
            d[0] = 2
        elif damage == "guid":
            d[16] = ord("G")
        elif damage == "nul":
            d[16:37] = b"a" * 21
        self.delivered.append(bytes(d))

    @invariant()
    def rows_match_the_reference(self):
        """After every step with feed(); through the socket every 16 datagrams and at the end."""
        if hasattr(self, "link"):
            self._check(force=not self.link.loopback or len(self.delivered) >= 16)

    def _check(self, force):
        if not force or not self.delivered:
            return
        rx, n = self.link.rx, len(self.delivered)
        before = rx.datagrams
        if self.link.loopback:
            t0 = time.time_ns()
            for d in self.delivered:
                self.link.ssock.send(d)
            got = []
            for _ in range(200):
                if rx.datagrams - before == n:
                    break
                r = rx.run(self.rows, 1_000_000)
                got += self.rows[:r.rows].tolist()
            t1 = time.time_ns()
            ip, port = self.link.ssock.getsockname()
            for g in got:
                assert t0 <= g[7] <= t1
            got = [g[:7] for g in got]
            want = [w[:7] for w in (v1_row(d, ip, port, 0) for d in self.delivered) if w is not None]
        else:
            got = [r for r in (rx.feed(d, T0 + k, "10.1.2.3", 4242) for k, d in enumerate(self.delivered))
                   if r is not None]
            want = [w for w in (v1_row(d, "10.1.2.3", 4242, T0 + k) for k, d in enumerate(self.delivered))
                    if w is not None]
        assert rx.datagrams - before == n
        assert got == want
        self.accepted += len(want)
        assert rx.malformed == rx.datagrams - self.accepted
        self.delivered.clear()


UdpingV1ReceiverMachine.TestCase.settings = PROFILE
test_udping_v1_receiver_against_reference = UdpingV1ReceiverMachine.TestCase
