"""statsd sink: any probe kind's RESULT fields as statsd gauges, timers and counters.

A field in seconds is a timer in milliseconds (`|ms`); a field that counts events
within its interval (the counters of [output.prometheus]) is a counter (`|c`);
every other number is a gauge (`|g`) in base units (bit/s, bytes; percentages as
percent). A BREACH sets `breach.<metric>` to 1, its CLEAR back to 0.

Names: dotted (Graphite) `<prefix>.<kind>.<probe>[.<dir>][.<group>][.port.<port>][.hop.<suspect_hop>].<field>`,
or tagged (InfluxDB/Telegraf style, as udping_server's -t) `<prefix>.<kind>.<field>,probe=..,dir=..`.
Lines go out packed into datagrams of at most `max_packet` bytes (under the path MTU,
whole lines only), over UDP or a Unix datagram socket. statsd is best effort: a send
that fails is reported once by the sink runner and the datagram is lost.
"""
import math
import re
import socket
from dataclasses import dataclass

from netprobe.config.schema import CHOICE, INT, STR, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.outputs.prometheus import SPEC, SUM
from netprobe.results import BREACH, CLEAR, RESULT, Quantity
from netprobe.units import show

LABEL_FIELDS = ("dir", "group", "port")
EVENT_LABELS = LABEL_FIELDS + ("suspect_hop",)      # a BREACH/CLEAR of path localisation names its hop
SKIP_FIELDS = ("interval_id", "scope", "peer")
_SEGMENT_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_TAG_BAD = re.compile(r"[,=:|\s]+")


def parse_address(text):
    """udp://HOST:PORT ([V6]:PORT) -> (AF_INET/AF_INET6, (host, port)); an absolute path -> (AF_UNIX, path)."""
    if text.startswith("/"):
        return socket.AF_UNIX, text
    if not text.startswith("udp://"):
        raise ValueError("not udp://HOST:PORT or an absolute Unix socket path")
    host, sep, port = text[6:].rpartition(":")
    v6 = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if v6 else host
    if not sep or not host or (":" in host and not v6):
        raise ValueError("not udp://HOST:PORT (IPv6: udp://[::1]:8125)")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{show(port)} is not a port (1-65535)")
    return (socket.AF_INET6 if v6 else socket.AF_INET), (host, int(port))


@dataclass(frozen=True)
class StatsdConfig(SinkConfig):
    """[output.statsd]: RESULT fields and breach states as statsd metrics."""
    address: str = setting(STR, "udp://127.0.0.1:8125", "udp://HOST:PORT, or the path of a Unix datagram socket")
    format: str = setting(CHOICE, "dotted", "metric names: dotted (Graphite paths) or tagged (name,tag=value)",
                          choices=("dotted", "tagged"))
    prefix: str = setting(STR, "netprobe", "first part of every metric name")
    max_packet: int = setting(INT, 1432, "bytes per datagram at most (1432: under a 1500-byte MTU with "
                                         "IPv6 and UDP headers)", min=64, max=65000)

    def check(self, where):
        super().check(where)
        try:
            parse_address(self.address)
        except ValueError as exc:
            raise where.error("address", f"{show(self.address)}: {exc}") from None
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", self.prefix):
            raise where.error("prefix", f"{show(self.prefix)} is not a metric prefix "
                                        "(letters, digits, '.', '_', '-')")


def _segment(text):
    return _SEGMENT_BAD.sub("_", str(text).replace("->", "_to_")).strip("_") or "_"


def _name(key):
    return ".".join(_segment(part) for part in key.split("."))


def _tag(text):
    return _TAG_BAD.sub("_", str(text)) or "_"


def _num(v):
    return repr(v) if isinstance(v, float) else str(v)


def metric_lines(record, fmt, prefix):
    """statsd lines (without newlines) of one record; empty for record types it does not carry."""
    f = record.fields
    if record.type in (BREACH, CLEAR):
        items = [(f"breach.{f.get('metric', 'unknown')}", 1 if record.type == BREACH else 0, "g")]
    elif record.type == RESULT and not (record.probe == "flows" and f.get("scope") not in ("group", "sampler")):
        scope = "port" if "port" in f else f.get("scope")
        sums = {k for k, (how, _) in SPEC.get((record.probe, scope), {}).items() if how == SUM}
        items = []
        for key, v in f.items():
            if key in LABEL_FIELDS or key in SKIP_FIELDS:
                continue
            unit = v.unit if isinstance(v, Quantity) else ""
            value = v.value if isinstance(v, Quantity) else v
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if unit == "s":
                items.append((key, value * 1000.0, "ms"))
            else:
                items.append((key, value, "c" if key in sums else "g"))
    else:
        return []
    labels = [(k, f[k]) for k in (LABEL_FIELDS if record.type == RESULT else EVENT_LABELS) if f.get(k) is not None]
    if fmt == "tagged":
        tags = "".join(f",{k}={_tag(v)}" for k, v in [("probe", record.name), *labels])
        return [f"{prefix}.{record.probe}.{_name(k)}{tags}:{_num(v)}|{t}" for k, v, t in items]
    named = {"port": "port.", "suspect_hop": "hop."}
    path = ".".join([_segment(record.name)] + [named.get(k, "") + _segment(v) for k, v in labels])
    return [f"{prefix}.{record.probe}.{path}.{_name(k)}:{_num(v)}|{t}" for k, v, t in items]


def datagrams(lines, max_packet):
    """statsd text lines (str, no newline) packed whole into datagrams (bytes) of at most
    `max_packet` bytes, in order; a line that cannot fit in one is returned apart.
    Returns (datagrams, too_long). The sink and udping_server both send this way."""
    out, too_long, buf = [], [], bytearray()
    for line in lines:
        data = line.encode() + b"\n"
        if len(data) > max_packet:
            too_long.append(line)
            continue
        if len(buf) + len(data) > max_packet:
            out.append(bytes(buf))
            buf.clear()
        buf += data
    if buf:
        out.append(bytes(buf))
    return out, too_long


class StatsdSink(Sink):
    def __init__(self, cfg, name="statsd"):
        self.cfg = cfg
        self.name = name
        self.family, self.addr = parse_address(cfg.address)
        self.sock = None
        self.buf = bytearray()

    def start(self, run_info):
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)

    def write(self, record):
        packed, too_long = datagrams(metric_lines(record, self.cfg.format, self.cfg.prefix), self.cfg.max_packet)
        for data in packed:       # a record's lines continue the buffer of the ones before
            if len(self.buf) + len(data) > self.cfg.max_packet:
                self._send()
            self.buf += data
        if too_long:           # the runner logs it once and counts the record as failed
            raise OSError(f"{self.name}: {len(too_long)} line(s) of a {record.probe} record exceed "
                          f"max_packet={self.cfg.max_packet} bytes; not sent")

    def flush(self):
        if self.buf:
            self._send()

    def _send(self):
        data, self.buf = bytes(self.buf), bytearray()
        if self.sock is None:
            return
        try:
            self.sock.sendto(data, self.addr)
        except OSError as exc:     # no listener (ECONNREFUSED, ENOENT) or a full socket buffer: lost
            raise OSError(f"{self.name}: cannot send to {self.cfg.address}: {exc.strerror or exc}") from None

    def close(self):
        try:
            self.flush()
        finally:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
