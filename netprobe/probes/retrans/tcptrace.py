"""Paris-style traces of live TCP flows, on each flow's own 5-tuple (root: raw sockets).

For each flow (local address, port, remote address, port) TCP segments with
exactly those addresses and ports and TTL / hop limit 1, 2, ... are sent from
an IPPROTO_RAW socket (send-only: it receives nothing), so every ECMP hash on
the way puts them on the flow's own member; the routers' ICMP time-exceeded
is read from raw ICMP / ICMPv6 sockets and matched by the TCP header the
router quotes (addresses, ports and sequence number: the 8 bytes RFC 792
guarantees).  The segments never disturb the connection (docs/votes.md): ACK
only, no data, no SYN/FIN/RST, a sequence number that is a per-trace token
rather than the flow's, and a TCP checksum made wrong on purpose, so a
segment that reaches the peer is dropped by its stack before TCP sees it.

The schedule is trace.py's: one segment in flight per flow, flows
interleaved at random and paced at `rate`, a silent TTL retried then kept
as a star, `gap_limit` silent TTLs in a row end a flow's trace (the segment
reached the peer, which answers nothing).  A destination's depth (routers
on the way) from an earlier trace caps later flows to it, so only the first
trace to a peer sends segments past the last router.
"""
import ipaddress
import os
import random
import select
import socket
import struct
import time

from netprobe.probes.oneway.trace import (
    IP4,
    IP6,
    MAX_WAIT,
    MIN_WAIT,
    PSEUDO4,
    PSEUDO6,
    RTT_FACTOR,
    TIME_EXCEEDED,
    UNREACH,
    PortPath,
    _Port,
    _silent,
    answered,
    checksum,
)

IPPROTO_RAW = 255
ICMP6_FILTER = 1
TCP_ACK = 0x10
WINDOW = 65535
TRY_BITS = 3                     # seq = token + (ttl << TRY_BITS) + try
TCP = struct.Struct("!HHIIBBHHH")


def segment(src, dst, sport, dport, seq, ack, ttl):
    """One trace segment, IP header included: ACK only, no payload, the TCP checksum off by one
    bit (never valid, whatever the rest), the IPv6 flow label 0."""
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    tcp = TCP.pack(sport, dport, seq, ack, 5 << 4, TCP_ACK, WINDOW, 0, 0)
    if src.version == 4:
        pseudo = PSEUDO4.pack(src.packed, dst.packed, 0, socket.IPPROTO_TCP, len(tcp))
    else:
        pseudo = PSEUDO6.pack(src.packed, dst.packed, len(tcp), socket.IPPROTO_TCP)
    bad = checksum(pseudo + tcp) ^ 1
    tcp = tcp[:16] + struct.pack("!H", bad) + tcp[18:]
    if src.version == 4:        # the kernel fills the IP id and header checksum
        return IP4.pack(0x45, 0, IP4.size + len(tcp), 0, 0x4000, ttl, socket.IPPROTO_TCP, 0,
                        src.packed, dst.packed) + tcp
    return IP6.pack(6 << 28, len(tcp), socket.IPPROTO_TCP, ttl, src.packed, dst.packed) + tcp


def parse_icmp(data, family, sender=None):
    """An ICMP error quoting a TCP segment -> (type, code, offender, quoted src, quoted dst, sport,
    dport, seq), addresses as text; None for anything else (an echo, a truncated quote, a quoted
    UDP datagram, an IPv6 quote behind extension headers).

    IPv4: data is what a raw IPPROTO_ICMP socket reads, IP header first (the offender is its
    source).  IPv6: data starts at the ICMPv6 header; the offender is `sender`."""
    try:
        if family == 4:
            if len(data) < 20 or data[0] >> 4 != 4:
                return None
            ihl = (data[0] & 0xF) * 4
            offender = socket.inet_ntop(socket.AF_INET, data[12:16])
            icmp = data[ihl:]
            if len(icmp) < 8 or icmp[0] not in (TIME_EXCEEDED[4], UNREACH[4]):
                return None
            q = icmp[8:]
            if len(q) < 20 or q[0] >> 4 != 4 or q[9] != socket.IPPROTO_TCP:
                return None
            qihl = (q[0] & 0xF) * 4
            if qihl < 20 or len(q) < qihl + 8:
                return None
            qsrc, qdst = socket.inet_ntop(socket.AF_INET, q[12:16]), socket.inet_ntop(socket.AF_INET, q[16:20])
            tcp = q[qihl:qihl + 8]
        else:
            if sender is None or len(data) < 8 or data[0] not in (TIME_EXCEEDED[6], UNREACH[6]):
                return None
            icmp, offender = data, str(ipaddress.ip_address(sender.split("%")[0]))
            q = icmp[8:]
            if len(q) < 48 or q[0] >> 4 != 6 or q[6] != socket.IPPROTO_TCP:
                return None
            qsrc, qdst = socket.inet_ntop(socket.AF_INET6, q[8:24]), socket.inet_ntop(socket.AF_INET6, q[24:40])
            tcp = q[40:48]
    except (ValueError, OSError):
        return None
    sport, dport, seq = struct.unpack("!HHI", tcp)
    return icmp[0], icmp[1], offender, qsrc, qdst, sport, dport, seq


def _block_all_but(types):
    """struct icmp6_filter passing only these ICMPv6 types."""
    words = [0xFFFFFFFF] * 8
    for t in types:
        words[t >> 5] &= ~(1 << (t & 31))
    return struct.pack("=8I", *words)


def _flow_key(flow):
    """(family, local text, local port, remote text, remote port); IPv4-mapped IPv6 as IPv4."""
    la, lp, ra, rp = flow
    la, ra = ipaddress.ip_address(la), ipaddress.ip_address(ra)
    la, ra = getattr(la, "ipv4_mapped", None) or la, getattr(ra, "ipv4_mapped", None) or ra
    return la.version, str(la), int(lp), str(ra), int(rp)


class Tracer:
    """Raw sockets for tracing TCP flows (opened once, closed by close()), the depth learned per
    destination (kept depth_ttl s: a path that changed length is found again), segments sent."""

    def __init__(self, *, max_hops=16, rate=20.0, retries=2, gap_limit=2, timeout=None, depth_ttl=600.0):
        self.max_hops, self.rate, self.retries = max_hops, rate, retries
        self.gap_limit, self.timeout, self.depth_ttl = gap_limit, timeout, depth_ttl
        self.depth = {}          # destination -> (routers on the way, time.monotonic() learned)
        self.sent = 0
        self.send = {}
        self.recv = {}
        try:
            for fam, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
                try:
                    snd = socket.socket(af, socket.SOCK_RAW, IPPROTO_RAW)
                except PermissionError:
                    raise
                except OSError:      # the family is off on this host: its flows are not traced
                    continue
                self.send[fam] = snd
                r = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_ICMP if fam == 4 else socket.IPPROTO_ICMPV6)
                self.recv[fam] = r
                if fam == 6:
                    r.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _block_all_but((1, 3)))
                r.setblocking(False)
        except BaseException:
            self.close()
            raise

    def close(self):
        for s in (*self.send.values(), *self.recv.values()):
            s.close()
        self.send, self.recv = {}, {}

    def trace(self, flows, *, deadline=None, stop=None):
        """Trace each flow ((local ip, port, remote ip, port)) -> {flow: PortPath} (its `port`
        holds (family, local, port, remote, port)).  Flows to a destination of unknown depth go
        first, one per destination, uncapped; the others follow capped at the depth they found."""
        flows = list(dict.fromkeys(flows))
        by_key = {_flow_key(f): f for f in flows}
        now = time.monotonic()
        self.depth = {d: v for d, v in self.depth.items() if now - v[1] < self.depth_ttl}
        scouts, seen = [], set()
        for k in by_key:
            if k[0] not in self.send:
                continue
            if k[3] not in self.depth and k[3] not in seen:
                scouts.append(k)
                seen.add(k[3])
        out = self._run(scouts, uncapped=True, deadline=deadline, stop=stop)
        out.update(self._run([k for k in by_key if k not in out and k[0] in self.send], uncapped=False,
                             deadline=deadline, stop=stop))
        return {by_key[k]: path for k, path in out.items()}

    def _drain(self, states, rtt):
        for fam, sock in self.recv.items():
            while True:
                try:
                    data, addr = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                got = parse_icmp(data, fam, addr[0] if fam == 6 else None)
                st = None if got is None else states.get((fam, got[3], got[5], got[4], got[6]))
                if st is not None:          # else an error about other traffic of this host
                    self._answer(st, fam, got, rtt)

    def _answer(self, st, fam, got, rtt):
        etype, _, offender, _, dst, _, _, seq = got
        d = (seq - st.token) & 0xFFFFFFFF
        if st.done or d >> TRY_BITS != st.ttl or (d & ((1 << TRY_BITS) - 1)) > self.retries:
            return                        # another trace's, or an answer for an earlier TTL
        # the peer itself answering (e.g. a firewall's reject) ends the path at the last router
        answered(st, offender, offender == dst, etype == TIME_EXCEEDED[fam], self.gap_limit, st.cap, rtt)

    def _run(self, keys, *, uncapped, deadline, stop):
        if not keys:
            return {}
        states = {}
        for k in keys:
            st = _Port(k, None)
            st.token = int.from_bytes(os.urandom(4), "big")
            st.cap = self.max_hops if uncapped else min(self.max_hops, self.depth.get(k[3], (self.max_hops,))[0])
            states[k] = st
        rtt = [0.0]
        poller = select.poll()
        for s in self.recv.values():
            poller.register(s.fileno(), select.POLLIN)
        spacing, next_send = 1.0 / self.rate, time.monotonic()
        while not all(st.done for st in states.values()):
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (stop is not None and stop.is_set()):
                break
            self._drain(states, rtt)
            now = time.monotonic()
            wait_for = self.timeout or (min(MAX_WAIT, max(MIN_WAIT, RTT_FACTOR * rtt[0])) if rtt[0] else MAX_WAIT)
            for st in states.values():
                if st.out and now - st.out[0] >= wait_for:
                    _silent(st, self.retries, self.gap_limit, st.cap)
            ready = [st for st in states.values() if not st.done and st.out is None]
            if ready and now >= next_send:
                st = random.choice(ready)
                fam, la, lp, ra, rp = st.path.port
                seq = (st.token + (st.ttl << TRY_BITS) + st.tries) & 0xFFFFFFFF
                pkt = segment(la, ra, lp, rp, seq, st.token ^ 0x5A5A5A5A, st.ttl)
                try:
                    self.send[fam].sendto(pkt, (ra, 0))
                except OSError:           # no route now, or a full queue: a silence like any other
                    pass
                else:
                    self.sent += 1
                    st.path.sent += 1
                st.out = (now, st.ttl, st.tries)
                next_send = max(next_send + spacing, now - spacing)
            wait = max(0.0, min(next_send - time.monotonic(), 0.05)) if ready else 0.05
            poller.poll(wait * 1000)
        self._drain(states, rtt)
        for k, st in states.items():
            if uncapped:                  # silent TTLs past the last answer: the peer took them
                del st.path.hops[st.deepest:]
                if st.path.reached:
                    self.depth[k[3]] = (len(st.path.hops), time.monotonic())
            elif st.ttl > st.cap:         # reached the known depth
                st.path.reached = True
        return {k: PortPath(k, st.path.hops, st.path.reached, st.path.sent) for k, st in states.items()}
