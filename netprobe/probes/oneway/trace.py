"""Paris-style path tracing per source port (the I/O side of fault localisation).

For each source port, UDP datagrams with the probe's own 5-tuple (same
addresses, ports, protocol) and TTL / hop limit 1, 2, ... set per packet by
ancillary data; the routers' ICMP time-exceeded comes back on the socket's
error queue (IP_RECVERR / IPV6_RECVERR, MSG_ERRQUEUE), so no raw socket is
needed.  The trace socket is bound to the port with SO_REUSEADDR and
SO_REUSEPORT beside the probe's own socket (which must have SO_REUSEPORT
too) and connected to the same destination; the kernel hands ICMP errors of
that 4-tuple to the socket bound last, the trace socket.

One packet in flight per port (so an answer is matched even when a router
quotes too little of the packet to return our token), ports interleaved in
random order, all paced at `rate` packets/s and capped by an optional
budget.  A silent TTL is retried (routers rate-limit ICMP), then kept as a
star (None).  `gap_limit` silent TTLs in a row end a port's trace: the
datagram reached the peer, which answers nothing (its port is open).  Once
the depth is known (the first port's trace, or an earlier one), the other
ports go up to it, and a silent TTL short of it is a star: on routers that
rate-limit ICMP, two TTLs in a row can miss every try.

Raw mode (the probe's `next_hops`, pinned one per port): the trace datagrams
leave as frames on an AF_PACKET socket to the port's own next-hop MAC, as its
probes do, with the TTL in the IP header built here.  The trace socket is bound
and connected all the same: the kernel hands an ICMP error to the UDP socket
matching the quoted 5-tuple, however the datagram left (checked on 6.18, IPv4
and IPv6), so answers are read from its error queue as in routed mode.

Trace datagrams start with TRACE_MAGIC ("NPTR"), which no probe carries.
"""
import errno
import ipaddress
import os
import random
import select
import socket
import struct
import time
from dataclasses import dataclass, field

TRACE_MAGIC = b"NPTR"
IP_RECVERR, IPV6_RECVERR = 11, 25
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
EE = struct.Struct("=IBBBBII")          # struct sock_extended_err
TIME_EXCEEDED = {4: 11, 6: 3}           # ICMP / ICMPv6 type
UNREACH = {4: 3, 6: 1}
PORT_UNREACH = {4: 3, 6: 4}
PAYLOAD = struct.Struct("!4s8sHBB")     # magic, trace token, port, ttl, try
IP4 = struct.Struct("!BBHHHBBH4s4s")      # version/IHL, TOS, length, id, frag, TTL, proto, checksum, src, dst
IP6 = struct.Struct("!IHBB16s16s")        # version/class/flow, payload length, next header, hop limit, src, dst
UDP = struct.Struct("!HHHH")
PSEUDO4 = struct.Struct("!4s4sBBH")       # src, dst, zero, protocol, length (RFC 768)
PSEUDO6 = struct.Struct("!16s16sIxxxB")   # src, dst, length, zeros, next header (RFC 8200 8.1)
ETHERTYPE = {4: 0x0800, 6: 0x86DD}
MIN_WAIT, MAX_WAIT, RTT_FACTOR = 0.25, 1.0, 4    # s: no answer after 4x the slowest one seen is a miss


@dataclass
class PortPath:
    """One port's trace: hops[i] is the address answering TTL i+1, None = no answer."""
    port: int
    hops: list = field(default_factory=list)
    reached: bool = False       # the destination answered, or the path went silent after its last hop
    sent: int = 0
    to_peer: int = 0            # datagrams sent past the last router: the peer got them


def parse_error(anc, family):
    """(icmp type, code, offender address) of one MSG_ERRQUEUE message's ancillary data,
    or None when it holds no ICMP error (e.g. a local error, or a truncated cmsg)."""
    want = (socket.IPPROTO_IP, IP_RECVERR) if family == 4 else (socket.IPPROTO_IPV6, IPV6_RECVERR)
    for level, kind, data in anc:
        if (level, kind) != want or len(data) < EE.size:
            continue
        _, origin, etype, code, _, _, _ = EE.unpack_from(data)
        if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            continue
        off = data[EE.size:]
        if family == 4 and len(off) >= 8 and struct.unpack_from("=H", off)[0] == socket.AF_INET:
            addr = socket.inet_ntop(socket.AF_INET, off[4:8])
        elif family == 6 and len(off) >= 24 and struct.unpack_from("=H", off)[0] == socket.AF_INET6:
            addr = socket.inet_ntop(socket.AF_INET6, off[8:24])
        else:
            continue
        return etype, code, addr
    return None


def open_socket(dst, dport, sport, local=None):
    """A trace socket for one source port: bound beside the probe's socket, connected, RECVERR on."""
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        s.bind((local or ("::" if family == socket.AF_INET6 else "0.0.0.0"), sport))
        s.connect((dst, dport))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def checksum(data):
    """RFC 1071 Internet checksum of `data` (an odd last byte padded with zero)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp(src, dst, sport, dport, ttl, payload):
    """An IPv4 or IPv6 + UDP datagram with TTL / hop limit `ttl`, both checksums filled
    (src, dst: ipaddress objects of one family): a raw-mode trace datagram."""
    ulen = UDP.size + len(payload)
    proto = socket.IPPROTO_UDP
    pseudo = PSEUDO4.pack(src.packed, dst.packed, 0, proto, ulen) if src.version == 4 else \
        PSEUDO6.pack(src.packed, dst.packed, ulen, proto)
    csum = checksum(pseudo + UDP.pack(sport, dport, ulen, 0) + payload) or 0xFFFF
    udp = UDP.pack(sport, dport, ulen, csum) + payload
    if src.version == 6:
        return IP6.pack(6 << 28, ulen, proto, ttl, src.packed, dst.packed) + udp
    head = IP4.pack(0x45, 0, IP4.size + ulen, random.getrandbits(16), 0, ttl, proto, 0, src.packed, dst.packed)
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + udp


class Frames:
    """Raw mode's way out: each port's trace datagrams as frames on `interface` to its next-hop
    MAC (via {port: 6-byte MAC}), from `src` to dst:dport.  Needs CAP_NET_RAW."""

    def __init__(self, interface, via, src, dst, dport):
        self.interface, self.via, self.dport = interface, dict(via), dport
        self.src, self.dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)    # protocol 0: send only

    def send(self, port, ttl, payload):
        packet = ip_udp(self.src, self.dst, port, self.dport, ttl, payload)
        self.sock.sendto(packet, (self.interface, ETHERTYPE[self.src.version], 0, 0, self.via[port]))

    def close(self):
        self.sock.close()


class Budget:
    """Trace packets allowed: `share` of the probe's packets (refilled at share x probe rate,
    at most `burst` banked; starts full so the first trace can run at once)."""

    def __init__(self, share, probe_rate, burst, clock=time.monotonic):
        self.rate = share * probe_rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.t = clock()
        self.spent = 0

    def take(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        self.spent += 1
        return True


class _Port:
    def __init__(self, port, sock):
        self.path = PortPath(port)
        self.sock = sock
        self.ttl = 1
        self.tries = 0
        self.silent = 0
        self.out = None         # (sent at, ttl, try) of the packet in flight
        self.deepest = 0        # the highest TTL a router answered
        self.sent_ttls = []
        self.done = False


def trace(dst, dport, ports, *, depth=None, **kw):
    """Trace every source port in `ports` towards dst:dport; returns {port: PortPath}.

    depth: the routers on the way (from an earlier trace): no TTL beyond it is sent, so
    no trace datagram reaches the peer.  None: the first port is traced alone until the
    path goes silent (those last datagrams reach the peer), and its depth caps the rest.
    Keywords: local, max_hops, rate, retries, timeout (default: 4 x the slowest answer so
    far, 0.25 to 1 s; MAX_WAIT until one came), gap_limit (silent TTLs that end a
    path), budget (take() -> bool), deadline (time.monotonic()), stop (an Event), socks
    ({port: socket from open_socket}, else opened and closed here), frames (raw mode: a
    Frames the datagrams leave by; its ports' sockets only read the answers).
    """
    ports = list(ports)
    if depth is None and len(ports) > 1:
        scout = {**kw, "retries": kw.get("retries", 2) + 2}    # a star at its end would cap every port short
        out = _trace(dst, dport, ports[:1], cap=None, **scout)
        depth = max(len(out[ports[0]].hops), 0) if out[ports[0]].reached else None
        return {**out, **_trace(dst, dport, ports[1:], cap=depth, **kw)}
    return _trace(dst, dport, ports, cap=depth, **kw)


def _trace(dst, dport, ports, *, cap, local=None, max_hops=16, rate=20.0, retries=2, timeout=None, gap_limit=2,
           budget=None, deadline=None, stop=None, socks=None, frames=None):
    if not ports:
        return {}
    max_hops = max_hops if cap is None else min(cap, max_hops)
    if cap is not None:     # the depth is known: a silent TTL short of it is a star, not the path's end
        gap_limit = max_hops + 1
    dst_ip = ipaddress.ip_address(dst)
    family = dst_ip.version
    token = os.urandom(8)
    rtt = [0.0]                 # the slowest answer so far: a silence is judged against it
    own = socks is None
    socks = socks or {}
    states = {}
    try:
        for p in ports:
            if p not in socks:
                socks[p] = open_socket(dst, dport, p, local)
            states[p] = _Port(p, socks[p])
        by_fd = {st.sock.fileno(): st for st in states.values()}
        level, opt = (socket.IPPROTO_IP, socket.IP_TTL) if family == 4 else \
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLERR)
        spacing = 1.0 / rate
        next_send = time.monotonic()
        while not all(st.done for st in states.values()):
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (stop is not None and stop.is_set()):
                break
            for fd, _ in poller.poll(0):    # answers already queued count, however late we woke
                _read_errors(by_fd[fd], family, dst_ip, token, gap_limit, max_hops, rtt)
            now = time.monotonic()
            wait_for = timeout or (min(MAX_WAIT, max(MIN_WAIT, RTT_FACTOR * rtt[0])) if rtt[0] else MAX_WAIT)
            for st in states.values():
                if st.out and now - st.out[0] >= wait_for:
                    _silent(st, retries, gap_limit, max_hops)
            ready = [st for st in states.values() if not st.done and st.out is None]
            if ready and now >= next_send and (budget is None or budget.take()):
                st = random.choice(ready)
                payload = PAYLOAD.pack(TRACE_MAGIC, token, st.path.port, st.ttl, st.tries)
                try:
                    if frames is not None:
                        frames.send(st.path.port, st.ttl, payload)
                    else:
                        st.sock.sendmsg([payload], [(level, opt, struct.pack("=i", st.ttl))])
                except OSError as exc:      # a queued ICMP error surfaces here once: read it, retry later
                    if exc.errno not in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED,
                                         errno.EAGAIN, errno.ENOBUFS):
                        raise
                else:
                    st.out = (now, st.ttl, st.tries)
                    st.path.sent += 1
                    st.sent_ttls.append(st.ttl)
                next_send = max(next_send + spacing, now - spacing)
            wait = max(0.0, min(next_send - time.monotonic(), 0.05)) if ready else 0.05
            for fd, _ in poller.poll(wait * 1000):
                _read_errors(by_fd[fd], family, dst_ip, token, gap_limit, max_hops, rtt)
        for st in states.values():
            if cap is None:             # silent TTLs past the last answer: the peer took them
                del st.path.hops[st.deepest:]
                st.path.to_peer = sum(1 for t in st.sent_ttls if t > st.deepest)
            elif st.ttl > max_hops:     # reached the known depth
                st.path.reached = True
        return {p: st.path for p, st in states.items()}
    finally:
        if own:
            for s in socks.values():
                s.close()


def _advance(st, gap_limit, max_hops):
    st.ttl += 1
    st.tries = 0
    st.out = None
    if st.silent >= gap_limit:          # went silent after its last hop: the peer took them
        st.path.reached = True
        st.done = True
    elif st.ttl > max_hops:
        st.done = True


def _silent(st, retries, gap_limit, max_hops):
    st.tries += 1
    st.out = None
    if st.tries > retries:
        st.path.hops.append(None)
        st.silent += 1
        _advance(st, gap_limit, max_hops)


def _read_errors(st, family, dst, token, gap_limit, max_hops, rtt):
    while True:
        try:
            data, anc, _, _ = st.sock.recvmsg(64, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        got = parse_error(anc, family)
        if got is None or st.done:
            continue
        if len(data) >= PAYLOAD.size:        # the router quoted our token: any try at this TTL will do
            magic, tok, _, ttl, _ = PAYLOAD.unpack_from(data)
            if magic != TRACE_MAGIC or tok != token or ttl != st.ttl:
                continue                     # an answer for an earlier TTL or trace
        elif st.out is None:                 # too short a quote: only the packet in flight can match
            continue
        etype, code, addr = got
        peer = ipaddress.ip_address(addr) == dst         # the peer itself (no listener)
        answered(st, addr, peer, etype == TIME_EXCEEDED[family], gap_limit, max_hops, rtt)
        if not peer and etype != TIME_EXCEEDED[family]:  # the destination (port unreachable) or a router refusing
            st.path.reached = etype == UNREACH[family] and code == PORT_UNREACH[family]


def answered(st, addr, is_peer, time_exceeded, gap_limit, max_hops, rtt):
    """An answer to the segment in flight at st.ttl: the peer itself ends the path at its last
    router; a router's time-exceeded adds it and moves on; any other error ends the path there.
    rtt[0] keeps the slowest answer seen."""
    if st.out is not None:
        rtt[0] = max(rtt[0], time.monotonic() - st.out[0])
    if is_peer:
        del st.path.hops[st.deepest:]
        st.path.reached, st.out, st.done = True, None, True
        return
    st.path.hops.append(addr)
    st.silent = 0
    st.deepest = len(st.path.hops)
    if time_exceeded:
        _advance(st, gap_limit, max_hops)
    else:
        st.out, st.done = None, True


def merge(old, new):
    """new's hops, with a star filled from `old` where old saw a hop at that TTL
    (a rate-limiting router misses answers now and then; the path rarely changes)."""
    if old is None:
        return new
    hops = [h if h is not None or i >= len(old.hops) else old.hops[i] for i, h in enumerate(new.hops)]
    return PortPath(new.port, hops, new.reached, new.sent, new.to_peer)
