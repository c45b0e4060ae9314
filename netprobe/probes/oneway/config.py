"""Settings of the `oneway` probe: one-way delay, loss, reordering and duplicates per
ECMP source port, measured at a netprobe peer (UDPing's job, protocol v2).

Source ports: a UDPing descriptor ("5000", "5000-5009", "5000,5005",
"5000-5001,5005-5006"; with `port_count`, a bare "5000" means 5000 ..
5000+count-1) or "auto": enough kernel-chosen ports that every one of
`ecmp_width` equal-cost paths is hit with 99 % probability.
"""
import math
import re
from dataclasses import dataclass

from netprobe.config.schema import BOOL, CHOICE, DURATION, FLOAT, INT, SIZE, STR, STR_LIST, setting
from netprobe.probes.base import NAME_RE, ProbeConfig
from netprobe.stats.buckets import parse_bounds
from netprobe.units import show

HDR_LEN, TAG_LEN, MAX_LEN = 64, 32, 65507       # wire.pxd: header, HMAC tag, largest UDP payload
MAX_PORTS = 5000                                 # UDPing's limit, and the receiver's per session
PORT_MIN, PORT_MAX = 1024, 60000                 # UDPing's range for explicit source ports
MISS_PROBABILITY = 0.01                          # "auto": P(some path gets no port) <= 1 %
DESCRIPTOR_RE = re.compile(r"[0-9,-]+")
MAX_PEERS = 4096                                 # peers one worker serves (sockets: peers x ports)
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def ports_for_ecmp(width, miss=MISS_PROBABILITY):
    """Source ports so that all `width` equally likely paths get one with probability >= 1 - miss.

    Union bound: P(some path missed) <= N (1 - 1/N)^k, so k >= ln(N/miss) / -ln(1 - 1/N),
    which is about N ln(N/miss) (the issue's k >= N ln(N/0.01)): 51 ports for 8 paths,
    115 for 16, 255 for 32. One path needs one port.
    """
    if width <= 1:
        return 1
    return math.ceil(math.log(width / miss) / -math.log1p(-1.0 / width))


def parse_ports(text, count=None):
    """A UDPing port descriptor -> sorted list of distinct ports; ValueError naming what is wrong.

    count: with a bare single port, that many consecutive ports (UDPing's -n); it is an
    error with any other descriptor.
    """
    if not isinstance(text, str) or not DESCRIPTOR_RE.fullmatch(text):
        raise ValueError(f'"{text}" is not a port descriptor: only digits, "," and "-" '
                         '(examples: "5000", "5000-5009", "5000,5005", "5000-5001,5005-5006")')
    ports = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        if not lo or (sep and not hi) or "-" in hi:
            raise ValueError(f'"{text}": "{part}" is not PORT or PORT-PORT')
        a, b = int(lo), int(hi) if sep else int(lo)
        for p in (a, b):
            if not PORT_MIN <= p <= PORT_MAX:
                raise ValueError(f'"{text}": port {p} is out of range ({PORT_MIN}-{PORT_MAX})')
        if b < a:
            raise ValueError(f'"{text}": range {part} runs backwards')
        if b - a + 1 > MAX_PORTS:
            raise ValueError(f'"{text}": more than {MAX_PORTS} ports')
        ports.extend(range(a, b + 1))
    if count is not None:
        if len(ports) != 1 or "-" in text or "," in text:
            raise ValueError(f'port_count applies to a single starting port, not "{text}"')
        if not 1 <= count <= MAX_PORTS:
            raise ValueError(f"port_count must be 1 to {MAX_PORTS} (got {count})")
        if ports[0] + count - 1 > PORT_MAX:
            raise ValueError(f'"{text}" + {count} ports passes {PORT_MAX}')
        ports = list(range(ports[0], ports[0] + count))
    ports = sorted(set(ports))
    if len(ports) > MAX_PORTS:
        raise ValueError(f'"{text}": more than {MAX_PORTS} ports')
    return ports


@dataclass(frozen=True)
class Config(ProbeConfig):
    """The [[probe]] table with kind = "oneway"."""
    peer: str = setting(STR, "", "a [peer.NAME] table or HOST[:PORT] running `netprobe serve` (or peers)")
    peers: tuple = setting(STR_LIST, [], 'instead of peer: several peers served by this one worker, each '
                           '"NAME=HOST[:PORT]"; each peer\'s records are named NAME (default: none)')
    key: str = setting(STR, "", "shared key if the peer asks for one (default: the [peer.NAME] key); "
                       "with a key every probe carries an HMAC-SHA256 tag")
    auth: bool = setting(BOOL, False, "tag probes with HMAC-SHA256 under a per-session key even without a "
                         "shared key (always on with a key)")
    ports: str = setting(STR, "auto", 'source ports: "auto" (sized from ecmp_width) or a descriptor '
                         'such as "5000-5009" or "5000,5005"')
    port_count: int = setting(INT, None, "with ports = one number: use that many consecutive ports",
                              min=1, max=MAX_PORTS)
    ecmp_width: int = setting(INT, 16, 'equal-cost paths to cover with ports = "auto" (99 percent chance '
                              "that every path gets a port)", min=1, max=512)
    local: str = setting(STR, "", "local address to send from (default: chosen by the route)")
    next_hops: tuple = setting(STR_LIST, [], "raw mode: next-hop MACs; each source port rotates through them "
                               "packet by packet, whole Ethernet frames sent on `interface` (needs CAP_NET_RAW)")
    interface: str = setting(STR, "", "raw mode: the interface to send frames on (required with next_hops)")
    next_hop_spread: str = setting(CHOICE, "packet", "raw mode: packet (each port rotates through next_hops "
                                   "packet by packet, as UDPing) or port (source port i always through next hop "
                                   "i mod N, so per-port loss and traces tell the next hops apart)",
                                   choices=("packet", "port"))
    dst_port: int = setting(INT, 0, "UDP port the peer receives on; 0 = the peer picks one", min=0, max=65535)
    gap: float = setting(DURATION, 0.001, "mean time between probes over all ports (s)", min=1e-6, max=60)
    schedule: str = setting(CHOICE, "poisson", "probe spacing: poisson (exponential gaps, capped at 10x the "
                            "mean, as UDPing) or fixed", choices=("poisson", "fixed"))
    size_min: int = setting(SIZE, None, "smallest probe, UDP payload bytes (default: the header, 64, "
                            "plus the 32-byte tag when probes are tagged)", min=HDR_LEN, max=MAX_LEN)
    size_max: int = setting(SIZE, 128, "largest probe, UDP payload bytes; sizes are uniform between "
                            "size_min and this, filled with random bytes", min=HDR_LEN, max=MAX_LEN)
    tx_timestamps: bool = setting(BOOL, True, "measure from each probe's kernel TX time (software stamp at the "
                                  "driver, carried in the port's next probe) instead of the user-space time "
                                  "before the send call, so the sender's own stack and qdisc are not counted "
                                  "as path delay; falls back to user-space times when the peer lacks it")
    spin: float = setting(DURATION, 0.0, "busy-wait this long before each send slot for a precise "
                          "schedule (costs CPU; 0 = sleep only)", min=0.0, max=0.1)
    grace: float = setting(DURATION, 0.5, "how long the receiver waits after an interval ends for "
                           "its late packets before closing it (s)", min=0.05, max=10)
    control_copies: int = setting(INT, 3, "end-of-interval control records sent per port", min=1, max=16)
    max_loss_pct: float = setting(FLOAT, 1.0, "BREACH metric=loss when an interval loses more than this "
                                  "share of probes (percent)", min=0.0, max=100.0)
    max_delay_p99: float = setting(DURATION, None, "BREACH metric=delay_p99 when the interval's p99 "
                                   "one-way delay exceeds this (s; default: none)", min=0.0, max=60)
    blackhole_pct: float = setting(FLOAT, 90.0, "BREACH metric=path_blackhole for a port losing at least "
                                   "this share while the other ports are clean (percent)", min=1.0, max=100.0)
    per_port: bool = setting(BOOL, False, "also print a RESULT line per source port each interval")
    delay_buckets: tuple = setting(STR_LIST, [], "add the interval's one-way delay histogram (delay_hist=) with "
                                   'these bucket bounds, e.g. ["1ms", "5ms", "20ms"] (default: none)')
    connect_timeout: float = setting(DURATION, 5.0, "TCP connect and handshake timeout (s)", min=0.1, max=120)
    trace: bool = setting(BOOL, False, "trace each source port's path (Paris-style, the probe's own 5-tuple, "
                          "TTL 1..max_hops) at start, every trace_every and at once for ports that start to "
                          "breach, and name the hop the degraded ports share (suspect_hop on BREACH lines); in raw "
                          'mode through each port\'s next hop, with next_hop_spread = "port"')
    max_hops: int = setting(INT, 16, "with trace: the highest TTL / hop limit tried", min=1, max=64)
    trace_every: float = setting(DURATION, 600.0, "with trace: each port is traced again this often, the ports "
                                 "spread evenly over the period (s)", min=10.0, max=86400)
    trace_rate: float = setting(FLOAT, 20.0, "with trace: trace packets per second at most", min=1.0, max=1000.0)
    trace_share: float = setting(FLOAT, 1.0, "with trace: trace packets at most this share of the probe's "
                                 "own packets on average (percent)", min=0.01, max=10.0)
    trace_retries: int = setting(INT, 2, "with trace: tries again for a silent hop (routers rate-limit ICMP)",
                                 min=0, max=5)

    def check(self, where):
        super().check(where)
        if bool(self.peer) == bool(self.peers):
            raise where.error("peer", "missing (required: a [peer.NAME] table or HOST[:PORT]; or peers = "
                                      '["NAME=HOST[:PORT]", ...] for several)' if not self.peer else
                              "goes with a single peer; with peers, every peer is a peers entry")
        try:
            self.peer_list()
        except ValueError as exc:
            raise where.error("peers", str(exc)) from None
        try:
            parse_bounds(self.delay_buckets)
        except ValueError as exc:
            raise where.error("delay_buckets", str(exc)) from None
        if self.ports != "auto":
            try:
                parse_ports(self.ports, self.port_count)
            except ValueError as exc:
                raise where.error("ports", str(exc)) from None
        elif self.port_count is not None:
            raise where.error("port_count", 'goes with ports = "PORT" (a single starting port), not "auto"')
        for mac in self.next_hops:
            if not MAC_RE.fullmatch(mac):
                raise where.error("next_hops", f'"{mac}" is not a MAC address (example: "02:1a:b0:00:01:01")')
        if self.next_hops and not self.interface:
            raise where.error("interface", "is required with next_hops (the interface frames leave on)")
        if self.interface and not self.next_hops:
            raise where.error("interface", "goes with next_hops (raw mode); without it the route picks the way")
        if self.next_hop_spread != "packet" and not self.next_hops:
            raise where.error("next_hop_spread", "goes with next_hops (raw mode)")
        if self.trace and self.next_hops and self.next_hop_spread != "port":
            raise where.error("trace", 'with next_hops needs next_hop_spread = "port": a port rotating through '
                                       "every next hop crosses them all, so no port's loss tells them apart")
        if self.next_hop_spread == "port" and self.port_list_len() < len(self.next_hops):
            raise where.error("ports", f'{self.port_list_len()} ports for {len(self.next_hops)} next_hops: with '
                                       'next_hop_spread = "port" some next hop would carry none')
        if len(self.next_hops) > 64:
            raise where.error("next_hops", "at most 64 next hops")
        least = HDR_LEN + (TAG_LEN if self.key or self.auth else 0)
        if self.size_min is not None and self.size_min < least:
            raise where.error("size_min", f"must be at least {least} bytes (header"
                              f"{' and HMAC tag' if least > HDR_LEN else ''})")
        if self.size_max < self.min_len:
            raise where.error("size_max", f"must be at least the smallest probe ({self.min_len} bytes)")
        if self.grace >= self.interval:
            raise where.error("grace", "must be shorter than interval")
        if self.gap * self.port_list_len() > self.interval * 1000:
            raise where.error("gap", "each port would get less than one probe per 1000 intervals")

    def peer_list(self):
        """[(record name, HOST[:PORT])] of the peers entries; ValueError naming a bad one."""
        out, seen = [], set()
        for entry in self.peers:
            name, sep, address = entry.partition("=")
            if not sep or not NAME_RE.fullmatch(name) or not address or any(c.isspace() for c in address):
                raise ValueError(f'{show(entry)} is not NAME=HOST[:PORT] (NAME: letters, digits, ".", "_", "-")')
            if name in seen:
                raise ValueError(f'"{name}" is named twice; each peer needs its own name')
            seen.add(name)
            out.append((name, address))
        if len(out) > MAX_PEERS:
            raise ValueError(f"{len(out)} peers exceed the limit of {MAX_PEERS} per worker")
        return out

    def port_list_len(self):
        return ports_for_ecmp(self.ecmp_width) if self.ports == "auto" else \
            len(parse_ports(self.ports, self.port_count))

    def source_ports(self):
        """The explicit source ports, or None for "auto" (that many kernel-chosen ports)."""
        return None if self.ports == "auto" else parse_ports(self.ports, self.port_count)

    @property
    def min_len(self):
        """The smallest datagram: size_min, raised to fit the tag when probes are tagged."""
        least = HDR_LEN + (TAG_LEN if self.key or self.auth else 0)
        return least if self.size_min is None else max(self.size_min, least)

    @property
    def max_len(self):
        return self.size_max
