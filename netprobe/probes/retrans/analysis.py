"""Retransmit verdicts from per-flow counters (sans-IO: plain data in, records out).

Flows are grouped per direction and per peer prefix (source prefix ->
destination prefix, /32 and /128 by default, i.e. per host pair). For each
group: data packets, retransmissions (netprobe's verdict: see
pyx/pcapread.pyx), out-of-order segments, retransmissions of segments lost
before the capture point, D-SACK-reported spurious retransmissions, and the
retransmit rate. The rate is over wire segments, not captured frames: a
GSO/TSO frame (offloads on the capturing host) counts as the segments the
peer's MSS cuts it into, so the rate compares with the kernel's
TcpRetransSegs whatever the offload settings. A group whose rate exceeds the threshold is a BREACH that
names the direction and its worst flows.
"""
import ipaddress
import math
import re
import time
from dataclasses import dataclass, field

from netprobe.results import BREACH, RESULT, Record, event, percent, seconds

KIND = "retrans"
MAX_FLOWS_NAMED = 5


@dataclass
class Group:
    src: str                         # source prefix (the data sender's side)
    dst: str
    data_pkts: int = 0
    data_bytes: int = 0
    data_segs: int = 0
    retrans_segs: int = 0
    retrans: int = 0
    lost_retrans: int = 0
    ooo: int = 0
    spurious: int = 0
    dsack: int = 0
    lost_segment: int = 0
    dupack: int = 0
    zero_window: int = 0
    last_ns: int = 0
    flows: list = field(default_factory=list)    # (retrans, "a:p->b:q")

    @property
    def retrans_pct(self):
        return 100.0 * self.retrans_segs / self.data_segs if self.data_segs else 0.0


def _prefix(addr, v4len, v6len):
    ip = ipaddress.ip_address(addr)
    n = ipaddress.ip_network(f"{addr}/{v4len if ip.version == 4 else v6len}", strict=False)
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def group_directions(flows, v4len=32, v6len=128):
    """Groups keyed (src prefix, dst prefix) over both directions of every flow, sorted."""
    groups = {}
    for f in flows:
        for (src, sp, dst, dp), c in (((f.a, f.a_port, f.b, f.b_port), f.ab), ((f.b, f.b_port, f.a, f.a_port), f.ba)):
            if not c["pkts"]:
                continue
            key = (_prefix(src, v4len, v6len), _prefix(dst, v4len, v6len))
            g = groups.setdefault(key, Group(*key))
            g.data_pkts += c["data_pkts"]
            g.data_bytes += c["data_bytes"]
            for name in ("retrans", "lost_retrans", "ooo", "dsack", "dupack", "zero_window", "data_segs",
                         "retrans_segs"):
                setattr(g, name, getattr(g, name) + c[name])
            g.spurious += c["spurious"]
            g.lost_segment += c["lost_segment"]
            g.last_ns = max(g.last_ns, f.last_ns)
            if c["retrans"]:
                g.flows.append((c["retrans"], f"{_endpoint(src, sp)}->{_endpoint(dst, dp)}"))
    return [groups[k] for k in sorted(groups)]


def records(groups, *, name, source, max_retrans_pct=None, min_data_pkts=100, now=None):
    """RESULT per group, and BREACH per group above max_retrans_pct (with at least
    min_data_pkts data packets, so three packets and one resend are not an alarm)."""
    out = []
    for g in groups:
        ts = g.last_ns / 1e9 if g.last_ns else (now if now is not None else time.time())
        direction = f"{g.src}->{g.dst}"
        g.flows.sort(key=lambda rf: (-rf[0], rf[1]))
        out.append(Record(RESULT, KIND, name, {
            "source": source, "dir": direction, "data_pkts": g.data_pkts, "retrans": g.retrans,
            "data_segs": g.data_segs, "retrans_segs": g.retrans_segs,
            "retrans_pct": percent(g.retrans_pct), "lost_before_capture": g.lost_retrans, "ooo": g.ooo,
            "spurious_dsack": g.dsack, "dupack": g.dupack, "zero_window": g.zero_window,
            "flows_retransmitting": len(g.flows)}, ts))
        if max_retrans_pct is not None and g.data_segs >= min_data_pkts and g.retrans_pct > max_retrans_pct:
            named = ",".join(f"{fl}({n})" for n, fl in g.flows[:MAX_FLOWS_NAMED])
            out.append(event(BREACH, KIND, name, metric="retrans", value=percent(g.retrans_pct), op="<=",
                             threshold=percent(max_retrans_pct), ts=ts, dir=direction, source=source,
                             flows=named))
    return out


# ---- live mode: tcp tracepoint lines from the probe's tracefs instance

_EVENT_RE = re.compile(r"\s(\d+\.\d+): (tcp_retransmit_skb|tcp_retransmit_synack|tcp_send_reset): (.*)$")
_KV_RE = re.compile(r"(\w+)=(\S+)")
_ISP_RE = re.compile(r"^\[?([0-9a-fA-F:.]+?)\]?:(\d+)$")
LIVE_KINDS = {"tcp_retransmit_skb": "retrans", "tcp_retransmit_synack": "synack_retrans",
              "tcp_send_reset": "resets"}


def parse_event(line):
    """(kind, local addr, local port, remote addr, remote port, time s) of one trace_pipe line, or
    None. kind is retrans, synack_retrans or resets; the local end is the sender of the packet; the
    time is the trace clock's (CLOCK_MONOTONIC in the probe's instance)."""
    m = _EVENT_RE.search(line)
    if not m:
        return None
    kv = dict(_KV_RE.findall(m.group(3)))
    try:
        ts = float(m.group(1))
        if m.group(2) == "tcp_send_reset":
            src, dst = _ISP_RE.match(kv["src"]), _ISP_RE.match(kv["dest"])
            return LIVE_KINDS[m.group(2)], src.group(1), int(src.group(2)), dst.group(1), int(dst.group(2)), ts
        v6 = kv.get("family") == "AF_INET6"
        return (LIVE_KINDS[m.group(2)], kv["saddrv6" if v6 else "saddr"], int(kv["sport"]),
                kv["daddrv6" if v6 else "daddr"], int(kv["dport"]), ts)
    except (KeyError, AttributeError, ValueError):
        return None


class SegmentCounter:
    """Retransmitted segments per flow from each socket's tcp_info total_retrans.

    A tcp_retransmit_skb event is one skb, and TCP builds multi-segment (GSO) skbs
    whatever the device's offloads: in a lab run with offload off, 5 events stood for
    32 resent segments. total_retrans counts segments, as the namespace's RetransSegs
    does, so the runner dumps the watched sockets when events arrive and at the end
    of each interval, and their increases become the flows' segments. Sockets in the
    first dump count from their value then; later ones started after us, from 0.
    With the kernel's destroy messages (`hold` > 0), a socket's final total_retrans
    counts what it resent since its last dump (destroyed(), before the next dump); a flow
    whose socket left the dumps with events since its last one waits up to `hold` s for
    that message. Without it (or when none comes in time), each such event counts as one
    segment (a lower bound: its last resends may have been GSO skbs too; take() says how
    many such events it counted), and a message that comes later adds only the rest.
    An event read only after a dump (or destroy message) that already counted it (its time
    is not after the end of the last dump that listed its socket) is not pending. Flows are
    (local address, local port, remote address, remote port), addresses as ipaddress
    objects; times are CLOCK_MONOTONIC seconds."""

    KEEP_S = 10.0                  # how long a listed flow's last dump time is kept after it is gone

    def __init__(self, hold=0.0):
        self.hold = hold
        self.base = None           # cookie -> (flow, total_retrans) at the last dump (None before the first)
        self.listed = {}           # flow -> end time of the last dump (or destroy message) that listed its socket
        self.pending = {}          # flow -> events since the last dump that listed it
        self.missing = {}          # flow -> time its socket was first missing with events pending (hold > 0)
        self.gone = {}             # cookie -> (flow, total_retrans, time) of sockets gone from the dumps (hold > 0)
        self.counted = {}          # flow -> (events counted at close, time), for a message that comes later
        self.segments = {}         # flow -> segments so far this interval
        self.at_close = {}         # flow -> of those, events counted as one segment as its socket was gone

    def event(self, flow, ts):
        if ts > self.listed.get(flow, -math.inf):
            self.pending[flow] = self.pending.get(flow, 0) + 1

    def _add(self, flow, n):
        if n > 0:
            self.segments[flow] = self.segments.get(flow, 0) + n

    def dump(self, sockets, t_end, final=False):
        """sockets: (cookie, flow, total_retrans) of every watched socket with total_retrans > 0, read by
        a dump that ended at t_end; final: the last one (nothing waits for a destroy message)."""
        seen = {}
        for cookie, flow, total in sockets:
            seen[cookie] = (flow, total)
            if self.base is not None:
                self._add(flow, total - self.base.get(cookie, (None, 0))[1])
            self.pending.pop(flow, None)
            self.missing.pop(flow, None)
            self.listed[flow] = t_end
        if self.base is None:
            self.pending = {}
        else:
            if self.hold:
                for cookie, (flow, total) in self.base.items():
                    if cookie not in seen:
                        self.gone[cookie] = (flow, total, t_end)
            for flow, n in list(self.pending.items()):
                since = self.missing.setdefault(flow, t_end)
                if self.hold and not final and t_end - since < self.hold:
                    continue                      # its destroy message may still come
                self._add(flow, n)                # closed since: each event is at least one segment
                self.at_close[flow] = self.at_close.get(flow, 0) + n
                if self.hold:
                    self.counted[flow] = (self.counted.get(flow, (0,))[0] + n, t_end)
                del self.pending[flow], self.missing[flow]
        self.base = seen
        old = t_end - self.KEEP_S
        self.listed = {f: t for f, t in self.listed.items() if t >= old}
        if self.hold:
            self.gone = {c: g for c, g in self.gone.items() if g[2] >= old}
            self.counted = {f: c for f, c in self.counted.items() if c[1] >= old}

    def destroyed(self, sockets):
        """sockets: (cookie, flow, total_retrans, time read) of watched sockets the kernel destroyed
        (total_retrans > 0), read before the next dump."""
        if self.base is None:                    # before the first dump: not counted, as for a dump
            return
        for cookie, flow, total, t in sockets:
            last = self.base.pop(cookie, None) or self.gone.pop(cookie, None)
            done = self.counted.pop(flow, (0,))[0]
            self._add(flow, total - (last[1] if last else 0) - done)
            self.pending.pop(flow, None)
            self.missing.pop(flow, None)
            self.listed[flow] = max(self.listed.get(flow, t), t)

    def take(self):
        """This interval's segments per flow (from dumps only; events not yet dumped wait), and
        per flow the events among them counted as one segment each (socket gone)."""
        out, closed, self.segments, self.at_close = self.segments, self.at_close, {}, {}
        return out, closed


def _addr_text(ip):
    return f"::ffff:{ip.ipv4_mapped}" if getattr(ip, "ipv4_mapped", None) else str(ip)


class LiveCounter:
    """Outgoing retransmits, SYN-ACK retransmits and resets per (local prefix -> remote
    prefix) and per flow, for one interval; peers outside `peers` and, when `ports` is
    given, packets with neither port in it are ignored (the kernel filters most already).
    Retransmits are segments (SegmentCounter, from dumps fed to add_dump) beside the
    tracepoint's events (skbs); without dumps, segments are the events."""

    def __init__(self, peers=(), v4len=32, v6len=128, ports=()):
        self.peers = tuple(peers)
        self.ports = frozenset(ports)
        self.v4len, self.v6len = v4len, v6len
        self.segs = SegmentCounter()
        self.dumped = False
        self.resent = {}           # flow -> segments resent in the interval records() last reported
        self.reset()

    def reset(self):
        self.groups = {}
        self.events = {}           # flow -> retransmit events this interval
        self.unparsed = 0
        self.ignored = 0

    def _watched(self, rip, lp, rp):
        return (not self.peers or any(rip in net for net in self.peers)) and \
            (not self.ports or lp in self.ports or rp in self.ports)

    def watches(self, flow):
        """Whether a (local ip, port, remote ip, port) flow is one this probe watches."""
        return self._watched(flow[2], flow[1], flow[3])

    def add_lines(self, lines):
        for line in lines:
            ev = parse_event(line)
            if ev is None:
                self.unparsed += 1
                continue
            kind, la, lp, ra, rp, ts = ev
            try:
                lip, rip = ipaddress.ip_address(la), ipaddress.ip_address(ra)
            except ValueError:
                self.unparsed += 1
                continue
            if not self._watched(rip, lp, rp):
                self.ignored += 1
                continue
            if kind == "retrans":
                flow = (lip, lp, rip, rp)
                self.events[flow] = self.events.get(flow, 0) + 1
                self.segs.event(flow, ts)
            else:
                g = self.groups.setdefault(self._key(lip, rip), {"synack_retrans": 0, "resets": 0})
                g[kind] += 1

    def add_dump(self, sockets, t_end, final=False):
        """One dump of the watched sockets, ended at t_end (time.monotonic()):
        (cookie, (local ip, port, remote ip, port), total_retrans) of those with total_retrans > 0."""
        self.dumped = True
        self.segs.dump((s for s in sockets if self.watches(s[1])), t_end, final)

    def add_destroyed(self, sockets):
        """Destroy messages read since the last dump: (cookie, flow, total_retrans, time read) as for
        add_dump, each the socket's final count."""
        self.segs.destroyed(s for s in sockets if self.watches(s[1]))

    def _key(self, lip, rip):
        return (_prefix(lip, self.v4len, self.v6len), _prefix(rip, self.v4len, self.v6len))

    def direction(self, flow):
        """The dir= of a flow (local ip, port, remote ip, port): "local prefix->remote prefix"."""
        return "%s->%s" % self._key(flow[0], flow[2])

    def records(self, *, name, interval_s, lost, out_segs=None, retrans_segs=None, max_retrans=None, now=None,
                capture=None):
        """(RESULT records, verdicts). One RESULT per group (dir=local->remote) and one
        host RESULT (dir=out) with the events lost and the kernel's own segment counters
        over the interval, and with a capture (frames, drops) the packets it analysed and
        those the kernel dropped from its ring; verdicts {dir: (bad, retrans, worst flows)}
        for max_retrans."""
        ts = now if now is not None else time.time()
        host = {"dir": "out", "events_lost": lost, "unparsed": self.unparsed,
                "host_out_segs": out_segs, "host_retrans_segs": retrans_segs,
                "host_retrans_pct": percent(100.0 * retrans_segs / out_segs) if out_segs else None}
        if capture is not None:
            host["capture_frames"], host["capture_drops"] = capture
        host["window"] = seconds(interval_s)
        out = [Record(RESULT, KIND, name, host, ts)]
        verdicts = {}
        segments, at_close = self.segs.take() if self.dumped else (dict(self.events), {})
        self.resent = segments       # per flow, for the passive votes
        counts = {"retrans": 0, "retrans_events": 0, "retrans_at_close": 0}
        groups = {k: {**g, **counts, "flows": {}} for k, g in self.groups.items()}
        for flow in set(segments) | set(self.events):
            lip, lp, rip, rp = flow
            g = groups.setdefault(self._key(lip, rip), {"synack_retrans": 0, "resets": 0, **counts, "flows": {}})
            n = segments.get(flow, 0)
            g["retrans"] += n
            g["retrans_events"] += self.events.get(flow, 0)
            g["retrans_at_close"] += at_close.get(flow, 0)
            g["flows"][f"{_endpoint(_addr_text(lip), lp)}->{_endpoint(_addr_text(rip), rp)}"] = n
        for (src, dst), g in sorted(groups.items()):
            flows = sorted(g["flows"].items(), key=lambda kv: (-kv[1], kv[0]))
            direction = f"{src}->{dst}"
            out.append(Record(RESULT, KIND, name, {
                # retrans_at_close: resends of sockets that closed before a dump read their
                # tcp_info and whose final count the kernel did not send (no destroy messages, or
                # theirs lost), counted one segment each (a lower bound for a GSO skb)
                "dir": direction, "retrans": g["retrans"], "retrans_events": g["retrans_events"],
                "retrans_at_close": g["retrans_at_close"],
                "synack_retrans": g["synack_retrans"], "resets": g["resets"], "flows_retransmitting": len(flows),
                "window": seconds(interval_s)}, ts))
            if max_retrans is not None:
                named = ",".join(f"{fl}({n})" for fl, n in flows[:MAX_FLOWS_NAMED])
                verdicts[direction] = (g["retrans"] > max_retrans, g["retrans"], named)
        return out, verdicts
