"""`udping_client` and `udping_server`: UDPing-compatible entry points over netprobe's
oneway machinery, so an existing UDPing pipeline keeps working.

Same flags, ranges and error messages as yahoo/UDPing,
the same 72-byte v1 header (pyx/includes/wire.pxd), the same JSON lines (every
value a quoted string, latencies in ms) and statsd formats (dotted and tagged),
with UDPing's bugs fixed: any gap or reordering size is counted (no 10-packet
window, so loss is never negative), duplicates are not counted twice, payloads
are random bytes, receive times come from the kernel. The statsd host-level
aggregate that UDPing's README promised (and no version had) is sent too:
`<peer>.<recvhost>.<listenport>.<metric>` per sweep, summed over the peer's ports.

Anyone can send the server packets from any source, so its state is bounded: at
most --max-sessions sessions (the least recently used is ended first, and
reported as an idle one is), duplicates found in a window of SEEN_WINDOW
sequence numbers as in the v2 receiver, peer names resolved by a rate-limited
worker thread into a bounded cache (never in the receive loop; --no-dns: not at
all), at most --max-series statsd series (the rest summed into `_overflow`), and
an optional --allow list of prefixes. What was dropped is counted and printed
to stderr at exit (and after every sweep with -v).

The per-packet work is netprobe._udpio's: the client is UdpProbeSender in raw
v1 mode, the server UdpingV1Receiver, which hands over rows in batches; the
session table counts them row by row (about 1.5 us a packet, 3 us a new source).
"""
import fcntl
import ipaddress
import json
import os
import queue
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict

import numpy as np

from netprobe.errors import load_extension
from netprobe.outputs import statsd
from netprobe.probes.oneway.config import parse_ports
from netprobe.probes.oneway.responder import RCVBUF, SO_RCVBUFFORCE

EXIT_USAGE = 2
MAXBUF = 2000
MAX_SOCKETS = 5000
STATSD_PORT = 8125
CLIENT_USAGE = ("Usage:  udping_client -r <remote hostname> -p <remote port> -d <delay> -l <local IP> "
                "-s <starting port or port list> -n <number of ports> -i <measurement interval seconds> "
                "-m <max packet size> -a <next-hop MAC,...> [-v] [-q]\n")
SERVER_USAGE = ("Usage: udping_server -l <local hostname> -p <port number> -k <keepalive interval seconds> "
                "[-r <receive hostname>] [-s <statsd host:port>] [-t <tagged statsd host:port>] "
                "[-m <metric prefix>] [-v] [-q] [--allow <prefix,...>] [--max-sessions <n>] [--max-series <n>] "
                "[--no-dns]\n"
                "-s: statsd host:port (default port 8125)\n-t: statsd host:port, tagged metrics (default port 8125)\n"
                "-m: metric name prefix for -t (default udping)\n-v: verbose\n-q: quiet\n"
                "--allow: count only packets from these IPv4 prefixes (default: any)\n"
                "--max-sessions: sessions kept, least recently used ended first (default 16384)\n"
                "--max-series: statsd series created, the rest summed into _overflow (default 20000)\n"
                "--no-dns: name peers by address, without reverse DNS\n")
SERVER_LONG = ("allow=", "max-sessions=", "max-series=", "no-dns")
LIMIT_MAX = 10_000_000
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


class UsageExit(Exception):
    """A usage error: UDPing prints the usage, then the message."""


def getopt(argv, optstring, longopts=()):
    """UDPing's option parsing: getopt(3) letters, and getopt_long(3) names (`--name value` or
    `--name=value`; a name given as "name=" takes a value); returns {letter or name: value or True}."""
    takes = {c for i, c in enumerate(optstring) if c != ":" and optstring[i + 1:i + 2] == ":"}
    known = set(optstring.replace(":", ""))
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            i = _long_option(argv, i, longopts, opts)
            continue
        j = 1
        while j < len(a):
            c = a[j]
            if c not in known:
                raise UsageExit(f"invalid option -- '{c}'\n")
            if c in takes:
                if j + 1 < len(a):
                    opts[c] = a[j + 1:]
                elif i + 1 < len(argv):
                    i += 1
                    opts[c] = argv[i]
                else:
                    raise UsageExit(f"option requires an argument -- '{c}'\n")
                break
            opts[c] = True
            j += 1
        i += 1
    return opts


def _long_option(argv, i, longopts, opts):
    """One `--name[=value]` at argv[i] into opts; returns the index of the next argument."""
    name, eq, value = argv[i][2:].partition("=")
    if name + "=" in longopts:
        if not eq:
            if i + 1 >= len(argv):
                raise UsageExit(f"option '--{name}' requires an argument\n")
            i += 1
            value = argv[i]
        opts[name] = value
    elif name in longopts and not eq:
        opts[name] = True
    elif name in longopts:
        raise UsageExit(f"option '--{name}' doesn't allow an argument\n")
    else:
        raise UsageExit(f"unrecognized option '--{name}'\n")
    return i + 1


def _atoi(text):
    """C atoi: leading whitespace, sign, digits; anything else ends it (0 if none)."""
    t = text.lstrip()
    n = 0
    while n < len(t) and (t[n].isdigit() or (n == 0 and t[n] in "+-")):
        n += 1
    try:
        return int(t[:n])
    except ValueError:
        return 0


def int_option(opts, c, required, lo, hi, error):
    if c not in opts or opts[c] is True:
        if required:
            raise UsageExit(error)
        return None
    v = _atoi(opts[c])
    if not lo <= v <= hi:
        raise UsageExit(error)
    return v


def str_option(opts, c, required, error):
    v = opts.get(c)
    if not isinstance(v, str):
        if required:
            raise UsageExit(error)
        return None
    return v


def parse_macs(text):
    """'aa:bb:cc:dd:ee:ff[,...]' -> list of 6-byte values; [] if any is invalid (UDPing's rule)."""
    out = []
    for part in text.split(","):
        bits = part.split(":")
        if len(bits) != 6 or not all(len(b) in (1, 2) and all(c in "0123456789abcdefABCDEF" for c in b)
                                     for b in bits):
            return []
        out.append(bytes(int(b, 16) for b in bits))
    return out


def client_options(argv):
    opts = getopt(argv, "l:r:p:d:i:s:n:m:a:vhq")
    u = CLIENT_USAGE
    try:
        if opts.get("h"):
            return {"help": True}
        o = {"remote": str_option(opts, "r", 1, "No remote hostname provided\n"),
             "port": int_option(opts, "p", 1, 1024, 65536, "Port number is out of range 1024-65532\n"),
             "local": str_option(opts, "l", 1, "No local IP provided\n")}
        desc = str_option(opts, "s", 1, "Starting port is out of range 1024-60000\n")
        count = int_option(opts, "n", 0, 1, MAX_SOCKETS, f"Number of ports is out of range 1-{MAX_SOCKETS}\n")
        try:
            o["ports"] = parse_ports(desc, count if count is not None and desc.isdigit() else None)
        except ValueError:
            raise UsageExit("Starting port is out of range 1024-60000\n") from None
        o["delay"] = int_option(opts, "d", 1, 0, 1000, "Delay is out of range 0-1000 ms\n")
        o["interval"] = int_option(opts, "i", 1, 1, 900, "Measurement interval is out of range 1-900 s\n")
        o["max_size"] = int_option(opts, "m", 1, 1, MAXBUF, f"Max packet size is out of range 1-{MAXBUF}\n")
        macs = str_option(opts, "a", 1, "You must specify one or more next-hop MAC addresses\n")
        o["macs"] = parse_macs(macs)
        if not o["macs"]:
            raise UsageExit("Invalid next-hop MAC address string\n")
    except UsageExit as exc:
        raise UsageExit(u + str(exc)) from None
    o["verbose"], o["quiet"] = bool(opts.get("v")), bool(opts.get("q"))
    return o


def server_options(argv):
    opts = getopt(argv, "p:k:l:m:r:s:t:vhq", SERVER_LONG)
    if opts.get("h"):
        return {"help": True}
    try:
        o = {"port": int_option(opts, "p", 1, 1024, 65536, "Port number is out of range 1024-65532\n"),
             "listen": str_option(opts, "l", 1, "Hostname not provided\n"),
             "keepalive": int_option(opts, "k", 1, 1, 60, "Keepalive interval is out of range 1-60s\n"),
             "max_sessions": int_option(opts, "max-sessions", 0, 1, LIMIT_MAX,
                                        f"Max sessions is out of range 1-{LIMIT_MAX}\n") or MAX_SESSIONS,
             "max_series": int_option(opts, "max-series", 0, 1, LIMIT_MAX,
                                      f"Max series is out of range 1-{LIMIT_MAX}\n") or MAX_SERIES,
             "allow": parse_allow(opts["allow"]) if isinstance(opts.get("allow"), str) else None,
             "no_dns": bool(opts.get("no-dns"))}
    except UsageExit as exc:
        raise UsageExit(SERVER_USAGE + str(exc)) from None
    o["recv_host"] = str_option(opts, "r", 0, "") or o["listen"]
    o["statsd"] = _statsd_address(str_option(opts, "s", 0, ""))
    o["tagged"] = _statsd_address(str_option(opts, "t", 0, ""))
    o["metric"] = str_option(opts, "m", 0, "") or "udping"
    o["verbose"], o["quiet"] = bool(opts.get("v")), bool(opts.get("q"))
    return o


def _statsd_address(text):
    if not text:
        return None
    host, _, port = text.partition(":")
    return host, (_atoi(port) if port else STATSD_PORT)


def name_of(text):
    """UDPing's names: an IPv4 literal is reverse-resolved (else kept); dots become "_", and so
    does anything else that is not a letter, digit or "-" (a PTR record is the peer's to write,
    and the name goes into statsd lines)."""
    try:
        ipaddress.IPv4Address(text)
        try:
            text = socket.gethostbyaddr(text)[0]
        except (OSError, UnicodeError):
            pass
    except ValueError:
        pass
    return NAME_UNSAFE.sub("_", text)


# -- server: sans-IO session accounting ------------------------------------------------------

SEEN_WINDOW = 16384         # sequence numbers below a session's highest whose duplicates are found (as v2)
_WINDOW_MASK = (1 << SEEN_WINDOW) - 1
MAX_SESSIONS = 16384        # sessions kept (<= 3 KB each with a full window); beyond, the LRU one ends
MAX_SERIES = 20_000         # statsd series (name prefixes) created; the rest summed into OVERFLOW
SERIES_IDLE_S = 3600        # a series unused this long gives its place to a new one
OVERFLOW = "_overflow"      # from_host (and from_port) of the summed series
DNS_RATE = 20               # reverse lookups per second at most
DNS_CACHE = 4096            # peer names kept, least recently used dropped
DNS_QUEUE = 1024            # addresses waiting for a lookup; beyond, dropped (counted) and asked again later


class Session:
    """One (peer, source port, GUID): UDPing's count/targetCount/sum/sumOfSquares/max, fixed.

    Duplicates are found in a bitmap of the SEEN_WINDOW sequence numbers up to the highest
    (bit i: max_seq - i seen; a Python int of at most 2 KB, as small as the span seen); a
    packet further behind than that is `stale` and not counted, as in the v2 receiver."""

    __slots__ = ("ip", "port", "hi", "lo", "start_s", "count", "bits", "min_seq", "max_seq", "sum", "sumsq", "max",
                 "last", "successor", "dups", "stale")

    def __init__(self, ip, port, hi, lo, start_s):
        self.ip, self.port, self.hi, self.lo, self.start_s = ip, port, hi, lo, start_s
        self.count = self.bits = self.dups = self.stale = 0
        self.min_seq = self.max_seq = None
        self.sum = self.sumsq = 0.0
        self.max = -sys.float_info.max
        self.last = 0.0
        self.successor = None

    @property
    def guid(self):
        return guid_of(self.hi, self.lo)

    def add(self, seq, lat, now):
        """Count one packet: its sequence number and latency (ms)."""
        self.last = now
        top = self.max_seq
        if top is None or seq > top:
            gap = SEEN_WINDOW if top is None else seq - top
            self.bits = (self.bits << gap) & _WINDOW_MASK | 1 if gap < SEEN_WINDOW else 1
            self.max_seq = seq
        elif top - seq >= SEEN_WINDOW:
            self.stale += 1
            return
        elif self.bits >> (top - seq) & 1:
            self.dups += 1
            return
        else:
            self.bits |= 1 << (top - seq)
        self.count += 1
        if self.min_seq is None or seq < self.min_seq:
            self.min_seq = seq
        self.sum += lat
        self.sumsq += lat * lat
        if lat > self.max:
            self.max = lat

    def target(self):
        """Sequence numbers the client sent in this GUID: min..max, extended to the successor's
        first one when the next GUID of the same client port has begun (the tail losses)."""
        top = self.max_seq
        if self.successor is not None and self.successor.min_seq is not None and self.successor.min_seq > top:
            top = self.successor.min_seq - 1
        return top - self.min_seq + 1


def guid_of(hi, lo):
    """The GUID text from UdpingV1Receiver's two columns (length << 16 | top 16 bits, low 64 bits)."""
    return format(((hi & 0xFFFF) << 64) | (lo & (2**64 - 1)), f"0{hi >> 16}x")


class Sessions:
    """All sessions of one server, least recently used first; rows in (UdpingV1Receiver),
    finished sessions out (sweep, and add_rows for those it evicts). At most `cap` sessions: a
    new one beyond ends the least recently used, reported like an idle one, so a flood of
    spoofed sources costs bounded memory and active sessions are the last to go."""

    def __init__(self, keepalive, cap=MAX_SESSIONS):
        self.keepalive, self.cap = keepalive, cap
        self.by_key = OrderedDict()     # (ip, port, guid_hi, guid_lo) -> Session
        self.latest = {}                # (ip, port) -> newest Session (for successors)
        self.evicted = 0

    def add_rows(self, rows, now):
        """Count a batch of rows; returns the sessions ended to make room for new ones."""
        ended = []
        # by column: zip reuses its tuple, where rows.tolist() would make a list per row for the GC to track
        for ip, port, hi, lo, start_s, seq, sent_ns, rx_ns in zip(*rows.T.tolist(), strict=True):
            k = (ip, port, hi, lo)
            s = self.by_key.get(k)
            if s is None:
                if len(self.by_key) >= self.cap:
                    ended.append(self._drop(next(iter(self.by_key.values()))))
                    self.evicted += 1
                s = self.by_key[k] = Session(ip, port, hi, lo, start_s)
                prev = self.latest.get((ip, port))
                if prev is not None and prev.start_s == start_s:
                    prev.successor = s
                self.latest[(ip, port)] = s
            else:
                self.by_key.move_to_end(k)
            s.add(seq, (rx_ns - sent_ns) / 1e6, now)
        return ended

    def _drop(self, s):
        del self.by_key[(s.ip, s.port, s.hi, s.lo)]
        if self.latest.get((s.ip, s.port)) is s:
            del self.latest[(s.ip, s.port)]
        return s

    def sweep(self, now, everything=False):
        """Sessions idle longer than keepalive (or all): removed and returned."""
        done = []
        while self.by_key:
            s = next(iter(self.by_key.values()))
            if not everything and now - s.last <= self.keepalive:
                break                   # least recently used first: the rest are younger
            done.append(self._drop(s))
        return done


def literal_name(ip):
    """An address as UDPing names a peer without a PTR record: 192_0_2_1."""
    return socket.inet_ntoa(ip.to_bytes(4, "big")).replace(".", "_")


class PeerNames:
    """Peer address -> name for output, never blocking the receive loop: want(ip) queues a
    reverse lookup (`resolve`, UDPing's name_of by default) for a worker thread that does at
    most `rate` a second; names(ip) is the cached name, or the literal until it is known.
    `cache` names are kept and `queue` addresses wait at most; a wish beyond is dropped and
    counted (`dropped`), and comes again with the next packet. resolve=None: no reverse DNS."""

    def __init__(self, resolve=lambda ip: name_of(str(ipaddress.IPv4Address(ip))), rate=DNS_RATE,
                 cache=DNS_CACHE, queue_len=DNS_QUEUE):
        self.resolve, self.rate, self.cap = resolve, rate, cache
        self.cache = OrderedDict()
        self.pending = set()
        self.dropped = 0
        self.lock = threading.Lock()
        self.queue = queue.Queue(queue_len)
        self.stop = threading.Event()
        self.thread = None
        if resolve is not None:
            self.thread = threading.Thread(target=self._work, name="udping-dns", daemon=True)
            self.thread.start()

    def want(self, ip):
        if self.resolve is None:
            return
        with self.lock:
            if ip in self.cache:
                self.cache.move_to_end(ip)
            elif ip not in self.pending:
                if len(self.pending) >= self.queue.maxsize:
                    self.dropped += 1
                else:
                    self.pending.add(ip)
                    self.queue.put_nowait(ip)

    def __call__(self, ip):
        with self.lock:
            name = self.cache.get(ip)
        return name if name is not None else literal_name(ip)

    def _work(self):
        due = time.monotonic()
        while not self.stop.is_set():
            try:
                ip = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            due = max(due, time.monotonic()) + 1 / self.rate
            name = self.resolve(ip)
            with self.lock:
                self.pending.discard(ip)
                self.cache[ip] = name
                if len(self.cache) > self.cap:
                    self.cache.popitem(last=False)

    def close(self):
        """Stop the worker; one stuck in a lookup is left behind (a daemon thread)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=1.0)


def parse_allow(text):
    """--allow's 'prefix,prefix' -> merged IPv4 ranges (starts, ends) as int64 arrays."""
    nets = []
    for part in text.split(","):
        try:
            nets.append(ipaddress.IPv4Network(part.strip(), strict=False))
        except ValueError:
            raise UsageExit(f"Invalid allow prefix: {part.strip()!r}\n") from None
    merged = list(ipaddress.collapse_addresses(nets))
    return (np.array([int(n.network_address) for n in merged], dtype=np.int64),
            np.array([int(n.broadcast_address) for n in merged], dtype=np.int64))


def allowed(ips, ranges):
    """Mask of the addresses (int64 array) inside the sorted, disjoint ranges."""
    starts, ends = ranges
    i = np.searchsorted(starts, ips, side="right") - 1
    return (i >= 0) & (ips <= ends[np.maximum(i, 0)])


def json_line(s, from_host, to_host, to_port):
    """UDPing's console line: every value a quoted string, ms with %lf."""
    return (f'{{"from_host":{json.dumps(from_host)},"from_port":"{s.port}","to_host":{json.dumps(to_host)},'
            f'"to_port":"{to_port}","guid":"{s.guid}","count":"{s.count}","targetCount":"{s.target()}",'
            f'"sum":"{s.sum:f}","sumOfSquares":"{s.sumsq:f}","max":"{s.max:f}"}}')


def _num(x):
    """C++ ostream's default double format (6 significant digits)."""
    return f"{x:g}" if isinstance(x, float) else str(x)


def _metrics(count, target, total, sumsq, mx):
    return (("count", count, "c"), ("targetCount", target, "c"), ("sum", total, "c"), ("sos", sumsq, "c"),
            ("max", mx, "g"))


def statsd_lines(s, from_host, to_host, to_port):
    prefix = f"{from_host}.{s.port}.{to_host}.{to_port}."
    return "".join(f"{prefix}{m}:{_num(v)}|{t}\n" for m, v, t in _metrics(s.count, s.target(), s.sum, s.sumsq, s.max))


def tagged_lines(s, metric, from_host, to_host, to_port):
    tags = f"from_host={from_host},from_port={s.port},to_host={to_host},to_port={to_port}"
    return "".join(f"{metric}.{m},{tags}:{_num(v)}|{t}\n" for m, v, t in _metrics(s.count, s.target(), s.sum,
                                                                                   s.sumsq, s.max))


def host_aggregates(sessions, names):
    """Per peer host over the sessions of one sweep: (host, count, target, sum, sos, max)."""
    acc = {}
    for s in sessions:
        a = acc.setdefault(names(s.ip), [0, 0, 0.0, 0.0, -sys.float_info.max])
        a[0] += s.count
        a[1] += s.target()
        a[2] += s.sum
        a[3] += s.sumsq
        a[4] = max(a[4], s.max)
    return [(h, *v) for h, v in sorted(acc.items())]


def host_statsd_lines(agg, to_host, to_port):
    return "".join(f"{h}.{to_host}.{to_port}.{m}:{_num(v)}|{t}\n"
                   for h, *vals in agg for m, v, t in _metrics(*vals))


def host_tagged_lines(agg, metric, to_host, to_port):
    return "".join(f"{metric}.{m},from_host={h},to_host={to_host},to_port={to_port}:{_num(v)}|{t}\n"
                   for h, *vals in agg for m, v, t in _metrics(*vals))


class SeriesCap:
    """The statsd series one server may create: at most `cap` names; a new name beyond takes
    the place of one unused for `idle` seconds, or has none (the caller sums it into OVERFLOW).
    A statsd backend keeps every name it was sent, so spoofed sources must not make new ones."""

    def __init__(self, cap=MAX_SERIES, idle=SERIES_IDLE_S):
        self.cap, self.idle = cap, idle
        self.used = OrderedDict()       # name -> last use, least recently used first
        self.overflow = 0               # sessions summed into OVERFLOW

    def admit(self, name, now):
        if name not in self.used and len(self.used) >= self.cap:
            if now - next(iter(self.used.values())) < self.idle:
                return False
            self.used.popitem(last=False)
        self.used[name] = now
        self.used.move_to_end(name)
        return True


class Overflow:
    """Sessions without a statsd series of their own, summed: what statsd_lines reads of one."""
    port = OVERFLOW

    def __init__(self, sessions):
        ((_, self.count, self._target, self.sum, self.sumsq, self.max),) = host_aggregates(sessions, lambda _: OVERFLOW)

    def target(self):
        return self._target


def bounded_statsd(done, name, series, now):
    """One sweep's statsd rows within the series cap: [(from_host, session)] and host_aggregates
    rows; what has no series of its own is summed into one OVERFLOW row of each kind."""
    rows, spilled = [], []
    for s in done:
        h = name(s.ip)
        if series.admit((h, s.port), now):
            rows.append((h, s))
        else:
            spilled.append(s)
    if spilled:
        rows.append((OVERFLOW, Overflow(spilled)))
        series.overflow += len(spilled)
    agg, rest = [], []
    for a in host_aggregates(done, name):
        (agg if series.admit((a[0],), now) else rest).append(a)
    if rest:
        _, count, target, total, sumsq, mx = zip(*rest, strict=True)
        agg.append((OVERFLOW, sum(count), sum(target), sum(total), sum(sumsq), max(mx)))
    return rows, agg


# -- entry points ----------------------------------------------------------------------------

def _fail(text):
    sys.stderr.write(text)
    return EXIT_USAGE


def server_main(argv=None):
    try:
        o = server_options(sys.argv[1:] if argv is None else argv)
    except UsageExit as exc:
        return _fail(str(exc))
    if o.get("help"):
        sys.stderr.write(SERVER_USAGE)
        return 0
    udpio = load_extension("_udping")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:                     # a deep buffer rides out the loop's absences (output, a stall) under a flood
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((socket.gethostbyname(o["listen"]), o["port"]))
    except (OSError, OverflowError) as exc:
        return _fail(f"udping_server: Failed to create socket: {getattr(exc, 'strerror', None) or exc}\n")
    to_host = name_of(o["recv_host"])
    names = PeerNames(resolve=None) if o["no_dns"] else PeerNames()
    out = None
    if o["statsd"] or o["tagged"]:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.bind((sock.getsockname()[0], 0))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rx = udpio.UdpingV1Receiver(sock.fileno())
    rows = np.empty((4096, len(udpio.V1_COLUMNS)), dtype=np.int64)
    sessions = Sessions(o["keepalive"], o["max_sessions"])
    series = SeriesCap(o["max_series"])
    totals = {"not_allowed": 0, "stale": 0, "dups": 0}
    next_sweep = time.monotonic() + o["keepalive"]
    while True:
        got = rx.run(rows, 200_000_000)
        batch = rows[:got.rows]
        now = time.monotonic()
        if o["allow"] is not None:
            ok = allowed(batch[:, 0], o["allow"])
            totals["not_allowed"] += len(batch) - int(ok.sum())
            batch = batch[ok]
        if o["verbose"]:              # UDPing's per-packet debug line: guid:clientStartTime:seq - sec:nsec
            for r in batch:
                print(f"{guid_of(int(r[2]), int(r[3]))}:{r[4]}:{r[5]} - {r[7] // 10**9}:{r[7] % 10**9}")
        for ip in np.unique(batch[:, 0]):
            names.want(int(ip))
        done = sessions.add_rows(batch, now)
        swept = now >= next_sweep or stop.is_set()
        if swept:
            next_sweep = now + o["keepalive"]
            done += sessions.sweep(now, everything=stop.is_set())
        _emit(done, o, names, series, to_host, out, now)
        for s in done:
            totals["stale"] += s.stale
            totals["dups"] += s.dups
        if stop.is_set() or (swept and o["verbose"]):
            summary = {"datagrams": rx.datagrams, "malformed": rx.malformed, **totals, "evicted": sessions.evicted,
                       "series_overflow": series.overflow, "dns_dropped": names.dropped}
            if not o["quiet"]:
                sys.stderr.write("udping_server: " + " ".join(f"{k}={v}" for k, v in summary.items()) + "\n")
        if stop.is_set():
            names.close()
            return 0


def _emit(done, o, names, series, to_host, out, now):
    if not done:
        return
    lp = o["port"]
    name = {s.ip: names(s.ip) for s in done}.__getitem__     # one name per peer in this output
    if not o["quiet"]:
        sys.stdout.write("".join(json_line(s, name(s.ip), to_host, lp) + "\n" for s in done))
        sys.stdout.flush()
    if out is None:
        return
    rows, agg = bounded_statsd(done, name, series, now)
    for h, s in rows:
        if o["statsd"]:
            _send(out, o["statsd"], statsd_lines(s, h, to_host, lp))
        if o["tagged"]:
            _send(out, o["tagged"], tagged_lines(s, o["metric"], h, to_host, lp))
    if o["statsd"]:
        _send(out, o["statsd"], host_statsd_lines(agg, to_host, lp))
    if o["tagged"]:
        _send(out, o["tagged"], host_tagged_lines(agg, o["metric"], to_host, lp))


STATSD_DATAGRAM = 1432      # statsd's advice for a datagram on a 1500-byte path


def _send(sock, addr, text):
    """Best effort, as in UDPing: whole lines, packed into datagrams of at most STATSD_DATAGRAM
    bytes as the [output.statsd] sink packs them."""
    packed, _ = statsd.datagrams(text.splitlines(), STATSD_DATAGRAM)
    for data in packed:
        try:
            sock.sendto(data, addr)
        except OSError:
            pass


SIOCGIFADDR = 0x8915


def interface_of(ip):
    """The interface holding IPv4 address `ip` (UDPing: getifaddrs), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == ip:
                return name
    return None


def client_main(argv=None):
    if os.geteuid() != 0:
        return _fail("udping_client must run as root\n")
    try:
        o = client_options(sys.argv[1:] if argv is None else argv)
    except UsageExit as exc:
        return _fail(str(exc))
    if o.get("help"):
        sys.stderr.write(CLIENT_USAGE + "\n")
        return 0
    if o["port"] > 65535:
        return _fail(CLIENT_USAGE + "Port number is out of range 1024-65532\n")
    udpio = load_extension("_udpio")
    ifname = interface_of(o["local"])
    if ifname is None:
        return _fail(f"udping_client: no interface has the local IP {o['local']}\n")
    try:
        dst = socket.gethostbyname(o["remote"])
    except OSError:
        return _fail(f"udping_client: cannot resolve {o['remote']}\n")
    with open(f"/sys/class/net/{ifname}/address") as fh:
        src_mac = bytes.fromhex(fh.read().strip().replace(":", ""))
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    raw.bind((ifname, 0))
    if o["verbose"]:
        for p in o["ports"]:
            print(f"Adding port {p}")
    sender = udpio.UdpProbeSender(
        None, int.from_bytes(os.urandom(8), "big"), time.time_ns(), max(1000, o["delay"] * 1_000_000),
        min_len=udpio.V1_HDR, max_len=max(udpio.V1_HDR, o["max_size"]), poisson=True, v1=True,
        raw={"fd": raw.fileno(), "src_mac": src_mac, "macs": o["macs"], "src_ip": socket.inet_aton(o["local"]),
             "dst_ip": socket.inet_aton(dst), "sports": o["ports"], "dport": o["port"] & 0xFFFF})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    i = o["interval"]
    boundary = (time.time() // i + 1) * i            # GUIDs roll over on wall-clock multiples of -i
    while not stop.is_set():
        left = boundary - time.time()
        if left <= 0:
            sender.end_interval(0)
            sender.new_guids()
            boundary += i
            continue
        sender.run(round(min(left, 0.1) * 1e9))
    raw.close()
    return 0
