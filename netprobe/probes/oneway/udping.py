"""`udping_client` and `udping_server`: UDPing-compatible entry points over netprobe's
oneway machinery, so an existing UDPing pipeline keeps working.

Same flags, ranges and error messages as yahoo/UDPing (seed-tools.md section 2),
the same 72-byte v1 header (pyx/includes/wire.pxd), the same JSON lines (every
value a quoted string, latencies in ms) and statsd formats (dotted and tagged),
with UDPing's bugs fixed: any gap or reordering size is counted (no 10-packet
window, so loss is never negative), duplicates are not counted twice, payloads
are random bytes, receive times come from the kernel. The statsd host-level
aggregate that UDPing's README promised (and no version had) is sent too:
`<peer>.<recvhost>.<listenport>.<metric>` per sweep, summed over the peer's ports.

The per-packet work is netprobe._udpio's: the client is UdpProbeSender in raw
v1 mode, the server UdpingV1Receiver, which hands over rows in batches.
"""
import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

import numpy as np

from netprobe.errors import load_extension
from netprobe.probes.oneway.config import parse_ports

EXIT_USAGE = 2
MAXBUF = 2000
MAX_SOCKETS = 5000
STATSD_PORT = 8125
CLIENT_USAGE = ("Usage:  udping_client -r <remote hostname> -p <remote port> -d <delay> -l <local IP> "
                "-s <starting port or port list> -n <number of ports> -i <measurement interval seconds> "
                "-m <max packet size> -a <next-hop MAC,...> [-v] [-q]\n")
SERVER_USAGE = ("Usage: udping_server -l <local hostname> -p <port number> -k <keepalive interval seconds> "
                "[-r <receive hostname>] [-s <statsd host:port>] [-t <tagged statsd host:port>] "
                "[-m <metric prefix>] [-v] [-q]\n"
                "-s: statsd host:port (default port 8125)\n-t: statsd host:port, tagged metrics (default port 8125)\n"
                "-m: metric name prefix for -t (default udping)\n-v: verbose\n-q: quiet\n")


class UsageExit(Exception):
    """A usage error: UDPing prints the usage, then the message."""


def getopt(argv, optstring):
    """UDPing's option parsing: getopt(3) letters; returns {letter: value or True}."""
    takes = {c for i, c in enumerate(optstring) if c != ":" and optstring[i + 1:i + 2] == ":"}
    known = set(optstring.replace(":", ""))
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
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
    opts = getopt(argv, "p:k:l:m:r:s:t:vhq")
    if opts.get("h"):
        return {"help": True}
    try:
        o = {"port": int_option(opts, "p", 1, 1024, 65536, "Port number is out of range 1024-65532\n"),
             "listen": str_option(opts, "l", 1, "Hostname not provided\n"),
             "keepalive": int_option(opts, "k", 1, 1, 60, "Keepalive interval is out of range 1-60s\n")}
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
    """UDPing's names: an IPv4 literal is reverse-resolved (else kept); dots become "_"."""
    try:
        ipaddress.IPv4Address(text)
        try:
            text = socket.gethostbyaddr(text)[0]
        except OSError:
            pass
    except ValueError:
        pass
    return text.replace(".", "_")


# -- server: sans-IO session accounting ------------------------------------------------------

class Session:
    """One (peer, source port, GUID): UDPing's count/targetCount/sum/sumOfSquares/max, fixed."""

    __slots__ = ("ip", "port", "guid", "start_s", "seen", "min_seq", "max_seq", "sum", "sumsq", "max", "last",
                 "successor", "dups")

    def __init__(self, ip, port, guid, start_s):
        self.ip, self.port, self.guid, self.start_s = ip, port, guid, start_s
        self.seen = np.empty(0, dtype=np.int64)
        self.min_seq = self.max_seq = None
        self.sum = self.sumsq = 0.0
        self.max = -sys.float_info.max
        self.last = 0.0
        self.successor = None
        self.dups = 0

    def add(self, seqs, lat_ms, now):
        uniq, first = np.unique(seqs, return_index=True)
        fresh = ~np.isin(uniq, self.seen)
        self.dups += len(seqs) - int(fresh.sum())
        keep = first[fresh]
        if not len(keep):
            self.last = now
            return
        self.seen = np.union1d(self.seen, uniq[fresh])
        lat = lat_ms[keep]
        self.sum += float(lat.sum())
        self.sumsq += float((lat * lat).sum())
        self.max = max(self.max, float(lat.max()))
        self.min_seq = int(self.seen[0])
        self.max_seq = int(self.seen[-1])
        self.last = now

    @property
    def count(self):
        return len(self.seen)

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
    """All sessions of one server; rows in (UdpingV1Receiver), finished sessions out (sweep)."""

    def __init__(self, keepalive):
        self.keepalive = keepalive
        self.by_key = {}            # (ip, port, guid) -> Session
        self.latest = {}            # (ip, port) -> newest Session (for successors)

    def add_rows(self, rows, now):
        if not len(rows):
            return
        keys, first, inverse = np.unique(rows[:, 0:4], axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        for g in np.argsort(first, kind="stable"):     # in order of arrival: successors link oldest first
            key = keys[g]
            idx = order[bounds[g]:bounds[g + 1]]
            ip, port, hi, lo = (int(x) for x in key)
            guid = guid_of(hi, lo)
            k = (ip, port, guid)
            s = self.by_key.get(k)
            if s is None:
                start_s = int(rows[idx[0], 4])
                s = self.by_key[k] = Session(ip, port, guid, start_s)
                prev = self.latest.get((ip, port))
                if prev is not None and prev.start_s == start_s and prev.guid != guid:
                    prev.successor = s
                self.latest[(ip, port)] = s
            s.add(rows[idx, 5], (rows[idx, 7] - rows[idx, 6]) / 1e6, now)

    def sweep(self, now, everything=False):
        """Sessions idle longer than keepalive (or all): removed and returned."""
        done = [s for s in self.by_key.values() if everything or now - s.last > self.keepalive]
        for s in done:
            del self.by_key[(s.ip, s.port, s.guid)]
            if self.latest.get((s.ip, s.port)) is s:
                del self.latest[(s.ip, s.port)]
        return [s for s in done if s.count]


def json_line(s, from_host, to_host, to_port):
    """UDPing's console line: every value a quoted string, ms with %lf."""
    fields = [("from_host", from_host), ("from_port", str(s.port)), ("to_host", to_host), ("to_port", str(to_port)),
              ("guid", s.guid), ("count", str(s.count)), ("targetCount", str(s.target())),
              ("sum", f"{s.sum:f}"), ("sumOfSquares", f"{s.sumsq:f}"), ("max", f"{s.max:f}")]
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in fields) + "}"


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
        sock.bind((socket.gethostbyname(o["listen"]), o["port"]))
    except (OSError, OverflowError) as exc:
        return _fail(f"udping_server: Failed to create socket: {getattr(exc, 'strerror', None) or exc}\n")
    to_host = name_of(o["recv_host"])
    names = {}

    def peer(ip):
        if ip not in names:
            names[ip] = name_of(str(ipaddress.IPv4Address(ip)))
        return names[ip]

    out = None
    if o["statsd"] or o["tagged"]:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.bind((sock.getsockname()[0], 0))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rx = udpio.UdpingV1Receiver(sock.fileno())
    rows = np.empty((4096, len(udpio.V1_COLUMNS)), dtype=np.int64)
    sessions = Sessions(o["keepalive"])
    next_sweep = time.monotonic() + o["keepalive"]
    while True:
        got = rx.run(rows, 200_000_000)
        batch = rows[:got.rows]
        now = time.monotonic()
        if o["verbose"]:              # UDPing's per-packet debug line: guid:clientStartTime:seq - sec:nsec
            for r in batch:
                print(f"{guid_of(int(r[2]), int(r[3]))}:{r[4]}:{r[5]} - {r[7] // 10**9}:{r[7] % 10**9}")
        sessions.add_rows(batch, now)
        if now >= next_sweep or stop.is_set():
            next_sweep = now + o["keepalive"]
            done = sessions.sweep(now, everything=stop.is_set())
            _emit(done, o, peer, to_host, out)
        if stop.is_set():
            return 0


def _emit(done, o, peer, to_host, out):
    lp = o["port"]
    for s in done:
        if not o["quiet"]:
            print(json_line(s, peer(s.ip), to_host, lp), flush=True)
        if o["statsd"]:
            _send(out, o["statsd"], statsd_lines(s, peer(s.ip), to_host, lp))
        if o["tagged"]:
            _send(out, o["tagged"], tagged_lines(s, o["metric"], peer(s.ip), to_host, lp))
    if done:
        agg = host_aggregates(done, peer)
        if o["statsd"]:
            _send(out, o["statsd"], host_statsd_lines(agg, to_host, lp))
        if o["tagged"]:
            _send(out, o["tagged"], host_tagged_lines(agg, o["metric"], to_host, lp))


def _send(sock, addr, text):
    try:
        sock.sendto(text.encode(), addr)
    except OSError:
        pass                        # statsd is best effort, as in UDPing


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
