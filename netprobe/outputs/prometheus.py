"""prometheus sink: every probe kind's latest interval over HTTP, rendered at scrape time.

One listener per daemon (the sink lives in the supervisor, fed the Records of
every probe worker). A scrape-time collector turns the latest RESULT of each
series (probe, peer, dir, group, port) into samples, so nothing is copied
into client-side metric objects per interval and a scrape sees one
consistent interval per series.

Names are netprobe_<kind>_<field>[_<unit>] in base units: a field in seconds
ends in _seconds, bytes in _bytes, a rate in bit/s becomes _bytes_per_second
(Prometheus' base unit is the byte), a percentage becomes a 0..1 _ratio. A
field that counts events within its interval is a counter (_total) summed
over the intervals this sink has seen; a field the probe already keeps as a
running total is a counter as it is; a `<name>_hist` field (a probe's delay
or RTT buckets) is accumulated into the histogram
netprobe_<kind>_<name>_seconds; everything else is a gauge of the latest
interval. Per-flow records (flows scope=flow) and per-hop votes (retrans
scope=votes) are never exported: their label values are unbounded. docs/metrics.md lists the cardinality bound.
"""
import base64
import errno
import hmac
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass

from netprobe import __version__
from netprobe.config.schema import DURATION, STR, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.outputs.httpauth import check_pair, read_password
from netprobe.results import BREACH, CLEAR, DROPS, ERROR, RESULT, Quantity

log = logging.getLogger("netprobe.outputs")

SUM, TOTAL, SKIP = "sum", "total", "skip"
# Per kind and record scope: field -> (how, name) where `how` is SUM (a count within the
# interval: summed into a counter), TOTAL (already a running total) or SKIP; `name` renames
# the metric (None: the field's own name). Fields not listed are gauges of the latest interval.
SPEC = {
    ("host", None): {"ticks": (SUM, None), "overruns": (SUM, None), "missed": (SUM, None)},
    ("throughput", None): {"rtt": (None, "rtt_mean"), "retrans": (None, "window_retrans"),
                           "retrans_total": (TOTAL, "retrans"),
                           "timer_overruns": (TOTAL, None), "late_ticks": (TOTAL, None), "eagain": (TOTAL, None)},
    ("oneway", None): {f: (SUM, None) for f in (
        "sent", "received", "lost", "dup", "reordered", "delay_samples", "delay_from_kernel_tx", "late_arrivals",
        "malformed", "unauthenticated", "unknown_session", "receiver_overrun", "send_errors")}
    | {"interval_id": (SKIP, None)},
    ("oneway", "port"): {f: (SUM, None) for f in ("sent", "received", "lost", "dup", "reordered")}
    | {"interval_id": (SKIP, None)},
    ("flows", "group"): {"retrans": (SUM, None), "rcv_ooopack": (SUM, None)},
    # the sampler's counters keep the names of the flows probe's former /metrics
    ("flows", "sampler"): {"dumps": (SUM, None), "errors": (SUM, "dump_errors"), "late": (SUM, None),
                           "overflow": (SUM, None), "malformed": (SUM, None), "truncated": (SUM, None),
                           "dump_intr": (SUM, None), "flows_written": (SUM, None),
                           "filtered": (TOTAL, "flows_filtered"), "window": (SKIP, None)},
    ("retrans", None): {f: (SUM, None) for f in (
        "data_pkts", "retrans", "data_segs", "retrans_segs", "lost_before_capture", "ooo", "spurious_dsack",
        "dupack", "zero_window", "retrans_events", "retrans_at_close", "synack_retrans", "resets",
        "events_lost", "host_out_segs", "host_retrans_segs", "capture_frames", "capture_drops")}
    | {"unparsed": (TOTAL, None)},
    ("capacity", None): {"bytes": (SUM, "sent_bytes")},
}
LABEL_FIELDS = ("peer", "dir", "group", "port")    # record fields that become labels
UNIT_SUFFIX = {"s": "_seconds", "bit/s": "_bytes_per_second", "B": "_bytes", "%": "_ratio", "": ""}
DIVISOR = {"bit/s": 8.0, "%": 100.0}               # to the base unit (promtool: bytes, not bits)
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def parse_listen(text):
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError with an example."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'"{text}" is not HOST:PORT (example: 127.0.0.1:9471, [::1]:9471)')
    return host, int(port)


@dataclass(frozen=True)
class PrometheusConfig(SinkConfig):
    """[output.prometheus]: GET /metrics (Prometheus text, or OpenMetrics when asked for)."""
    listen: str = setting(STR, "127.0.0.1:9471", "HOST:PORT of the HTTP listener ([::]:9471 for every address)")
    tls_cert_file: str = setting(STR, "", "serve HTTPS with this PEM certificate chain (with tls_key_file)")
    tls_key_file: str = setting(STR, "", "the PEM private key of tls_cert_file")
    basic_auth_user: str = setting(STR, "", "require HTTP basic auth with this user (with basic_auth_password_file)")
    basic_auth_password_file: str = setting(STR, "", "file holding the basic auth password (its first line)")
    expire: float = setting(DURATION, 900.0, "drop a series whose probe has sent no result for this long "
                                             "(a probe removed by a reload)", min=1.0, max=7 * 86400)

    def check(self, where):
        super().check(where)
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            raise where.error("listen", str(exc)) from None
        check_pair(self, where, "tls_cert_file", "tls_key_file")
        check_pair(self, where, "basic_auth_user", "basic_auth_password_file")


def metric_name(kind, scope, field, unit):
    """(how, full name) of one RESULT field; how is SUM, TOTAL, SKIP or None (a gauge)."""
    how, rename = SPEC.get((kind, scope), {}).get(field, (None, None))
    base = rename or field
    if unit == "%" and base.endswith("_pct"):
        base = base[:-4]
    prefix = f"netprobe_{kind}_port_" if scope == "port" else f"netprobe_{kind}_"
    name = _NAME_BAD.sub("_", prefix + base) + UNIT_SUFFIX.get(unit, "")
    return how, name + "_total" if how in (SUM, TOTAL) else name


def _number(v):
    """(value, unit) of a field, or None for text, lists, missing and non-finite values."""
    if isinstance(v, Quantity):
        value, unit = v.value, v.unit
    elif isinstance(v, bool):
        value, unit = float(v), ""
    elif isinstance(v, (int, float)):
        value, unit = v, ""
    else:
        return None
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value) / DIVISOR.get(unit, 1.0), unit


def _histogram(v):
    """(bounds, cumulative counts, count, sum) of a histogram field ({"le", "n", "count", "sum"}), or None."""
    if not isinstance(v, dict) or set(v) != {"le", "n", "count", "sum"}:
        return None
    le, n, count, total = v["le"], v["n"], v["count"], v["sum"]
    if not (isinstance(le, list) and isinstance(n, list) and len(le) == len(n)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (*le, *n, count, total))):
        return None
    return tuple(float(x) for x in le), [int(x) for x in n], int(count), float(total)


class _Series:
    """The latest interval of one (kind, scope, labels) and its running counters."""
    __slots__ = ("gauges", "counters", "hists", "end", "seen")

    def __init__(self):
        self.gauges = {}          # name -> value of the latest interval
        self.counters = {}        # name -> running total
        self.hists = {}           # name -> [bounds, cumulative counts, count, sum] over the intervals
        self.end = 0.0            # the latest interval's end (the record's time)
        self.seen = 0.0           # monotonic time of the latest record


class RecordCollector:
    """Scrape-time collector over the latest Records (fed by the sink thread, read by scrapes)."""

    def __init__(self, expire=900.0, clock=time.monotonic):
        self.expire = expire
        self.clock = clock
        self.lock = threading.Lock()
        self.series = {}          # (kind, scope, labels tuple) -> _Series
        self.breach = {}          # labels tuple -> (1/0, monotonic time of its latest BREACH/CLEAR)
        self.errors = {}          # (probe, kind) -> ERROR records
        self.dropped = {}         # sink -> records dropped
        self.peers = {}           # probe name -> configured peer
        self.info = {}            # host facts for netprobe_host_info

    def set_run_info(self, run_info):
        effective = (run_info or {}).get("config_effective") or {}
        peers = {p.get("name"): str(p["peer"]) for p in effective.get("probe", []) if p.get("peer")}
        host = (run_info or {}).get("host") or {}
        info = {k: str(host[k]) for k in ("hostname", "kernel", "clocksource") if host.get(k) is not None}
        with self.lock:
            self.peers, self.info = peers, info

    def _labels(self, record):
        f = record.fields
        labels = {"probe": record.name}
        peer = f.get("peer") or self.peers.get(record.name)
        if peer:
            labels["peer"] = str(peer)
        for key in LABEL_FIELDS[1:]:
            if f.get(key) is not None:
                labels[key] = str(f[key])
        return tuple(labels.items())

    def add(self, record):
        if record.type == RESULT:
            self._result(record)
        elif record.type in (BREACH, CLEAR):
            labels = dict(self._labels(record), kind=record.probe, metric=str(record.fields.get("metric", "")))
            if record.fields.get("suspect_hop") is not None:    # the hop path localisation blames
                labels["suspect_hop"] = str(record.fields["suspect_hop"])
            key, now = tuple(sorted(labels.items())), self.clock()
            with self.lock:
                if key not in self.breach:          # bounded even when nothing scrapes
                    self._expire_breaches(now)
                self.breach[key] = (1.0 if record.type == BREACH else 0.0, now)
        elif record.type == ERROR:
            with self.lock:
                key = (record.name, record.probe)
                self.errors[key] = self.errors.get(key, 0) + 1
        elif record.type == DROPS:
            sink, new = str(record.fields.get("sink", record.name)), record.fields.get("dropped", 0)
            if isinstance(new, int):
                with self.lock:
                    self.dropped[sink] = self.dropped.get(sink, 0) + new

    def _expire_breaches(self, now):
        """Drop breaches cleared more than `expire` ago (lock held): each hop blamed (suspect_hop)
        and each peer a mesh retired is a label set of its own. An open one stays: it is the alert."""
        for key in [k for k, (v, seen) in self.breach.items() if v == 0.0 and now - seen > self.expire]:
            del self.breach[key]

    def _result(self, record):
        kind = record.probe
        scope = record.fields.get("scope")
        if kind == "flows" and scope not in ("group", "sampler"):
            return                       # per-flow records: one label set per TCP connection
        if kind == "retrans" and scope == "votes":
            return                       # per-hop votes: no hop label; the suspect's BREACH carries the hop
        if "port" in record.fields and scope is None:     # a per-port record (scope=path has its own series)
            scope = "port"
        gauges, sums, totals, hists = {}, {}, {}, {}
        for field, v in record.fields.items():
            if field in LABEL_FIELDS or field == "scope":
                continue
            hist = _histogram(v) if field.endswith("_hist") else None
            if hist is not None:
                hists[f"netprobe_{kind}_{field[:-5]}_seconds"] = hist
                continue
            num = _number(v)
            if num is None:
                continue
            how, name = metric_name(kind, scope, field, num[1])
            (sums if how == SUM else totals if how == TOTAL else gauges if how is None else {})[name] = num[0]
        key = (kind, scope, self._labels(record))
        with self.lock:
            s = self.series.get(key)
            if s is None:
                s = self.series[key] = _Series()
            s.gauges = gauges
            for name, v in sums.items():
                s.counters[name] = s.counters.get(name, 0.0) + v
            s.counters.update(totals)
            for name, (le, n, count, total) in hists.items():
                h = s.hists.get(name)
                if h is None or h[0] != le:         # new, or its bounds were changed by a reload
                    h = s.hists[name] = [le, [0] * len(le), 0, 0.0]
                h[1] = [a + b for a, b in zip(h[1], n, strict=True)]
                h[2] += count
                h[3] += total
            s.end, s.seen = record.ts, self.clock()

    def collect(self):
        from prometheus_client.core import Metric  # here: every worker imports this module's config
        from prometheus_client.utils import floatToGoString
        now = self.clock()
        families = {}

        def family(name, typ, doc):
            m = families.get(name)
            if m is None:
                m = families[name] = Metric(name[:-6] if typ == "counter" else name, doc, typ)
            return m

        with self.lock:
            for key in [k for k, s in self.series.items() if now - s.seen > self.expire]:
                del self.series[key]
            self._expire_breaches(now)
            for (kind, _scope, labels), s in self.series.items():
                lab = dict(labels, kind=kind)
                family("netprobe_interval_end_timestamp_seconds", "gauge",
                       "end of the latest interval of this series (Unix time): tells stale from fresh"
                       ).add_sample("netprobe_interval_end_timestamp_seconds", lab, s.end)
                lab = dict(labels)
                for name, v in s.gauges.items():
                    family(name, "gauge", f"latest {kind} interval's {name}").add_sample(name, lab, v)
                for name, v in s.counters.items():
                    family(name, "counter", f"{kind} {name[:-6]} summed over intervals").add_sample(name, lab, v)
                for name, (le, n, count, total) in s.hists.items():
                    m = family(name, "histogram", f"{kind} {name[9:]} samples, over the intervals")
                    for bound, c in zip(le, n, strict=True):
                        m.add_sample(name + "_bucket", dict(lab, le=floatToGoString(bound)), c)
                    m.add_sample(name + "_bucket", dict(lab, le="+Inf"), count)
                    m.add_sample(name + "_count", lab, count)
                    m.add_sample(name + "_sum", lab, total)
            for labels, (v, _seen) in self.breach.items():
                family("netprobe_breach", "gauge", "1 while an SLA is in BREACH (after hysteresis), 0 after CLEAR"
                       ).add_sample("netprobe_breach", dict(labels), v)
            for (probe, kind), n in self.errors.items():
                family("netprobe_probe_errors_total", "counter", "ERROR records of a probe"
                       ).add_sample("netprobe_probe_errors_total", {"probe": probe, "kind": kind}, n)
            for sink, n in self.dropped.items():
                family("netprobe_sink_dropped_records_total", "counter", "records a sink dropped (DROPS records)"
                       ).add_sample("netprobe_sink_dropped_records_total", {"sink": sink}, n)
            info = dict(self.info)
        family("netprobe_build_info", "gauge", "netprobe version").add_sample(
            "netprobe_build_info", {"version": __version__}, 1.0)
        if info:
            family("netprobe_host_info", "gauge", "host facts of the daemon").add_sample(
                "netprobe_host_info", info, 1.0)
        return list(families.values())


def _guarded_app(app, user, password):
    """/metrics only; with a user, HTTP basic auth compared in constant time."""
    expected = base64.b64encode(f"{user}:{password}".encode()).decode() if user else None

    def guarded(environ, start_response):
        if environ.get("PATH_INFO", "") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        if expected is not None:
            got = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, token = got.partition(" ")
            if scheme.lower() != "basic" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
                start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                    ("WWW-Authenticate", 'Basic realm="netprobe"')])
                return [b"unauthorized\n"]
        return app(environ, start_response)
    return guarded


class MetricsServer:
    """HTTP(S) listener serving one registry at /metrics from daemon threads."""

    def __init__(self, listen, registry, *, cert_file="", key_file="", user="", password=""):
        import ssl
        from wsgiref.simple_server import WSGIRequestHandler

        from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
        host, port = parse_listen(listen)
        cls = type("Server", (ThreadingWSGIServer,), {
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
        # a client that stalls (TLS handshake included) holds only its own thread, for at most 10 s
        handler = type("Handler", (WSGIRequestHandler,), {"timeout": 10.0, "log_message": lambda *a: None})
        self.server = cls((host, port), handler)
        if cert_file:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert_file, key_file)
            # the handshake runs in the request's thread, not in accept() where it would stall the listener
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.server.set_app(_guarded_app(make_wsgi_app(registry), user, password))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="prometheus-http", daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def registry_of(collector):
    from prometheus_client.core import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


class PrometheusSink(Sink):
    """Feeds the collector; the listener starts with the sink and stops with it."""

    BIND_WAIT = 5.0          # a reload starts the new sink before the old one lets go of the port

    def __init__(self, cfg, name="prometheus"):
        self.cfg = cfg
        self.name = name
        self.collector = RecordCollector(cfg.expire)
        self.server = None

    def start(self, run_info):
        self.collector.set_run_info(run_info)
        password = read_password(self.cfg.basic_auth_password_file, self.name) if self.cfg.basic_auth_user else ""
        deadline = time.monotonic() + self.BIND_WAIT
        while True:
            try:
                self.server = MetricsServer(self.cfg.listen, registry_of(self.collector),
                                            cert_file=self.cfg.tls_cert_file, key_file=self.cfg.tls_key_file,
                                            user=self.cfg.basic_auth_user, password=password)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:       # the old sink still has it
                    raise OSError(f"{self.name}: cannot listen on {self.cfg.listen}: {exc.strerror or exc}") from None
                time.sleep(0.1)

    def write(self, record):
        self.collector.add(record)

    def close(self):
        if self.server is not None:
            self.server.close()
            self.server = None
