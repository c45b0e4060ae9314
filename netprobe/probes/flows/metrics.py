"""The flows probe's sampler counters on a listener of its own (`http_listen`, cgmon's
-run-http-server), for a `netprobe probe flows` run that has no [output.prometheus].

A daemon exports the same counters through [output.prometheus] from the sampler's
RESULT records; this listener serves the worker's running totals under the same
names (netprobe_flows_*, label probe=<probe name>), through the same HTTP code.
"""
from netprobe.errors import ProbeError
from netprobe.outputs.prometheus import MetricsServer as _HttpServer
from netprobe.outputs.prometheus import parse_listen, registry_of

# counter/gauge name -> (type, help)
METRICS = {
    "dumps_total": ("counter", "inet_diag dumps taken"),
    "dump_errors_total": ("counter", "dumps that failed (netlink error or syscall)"),
    "dump_seconds_total": ("counter", "wall time spent in dumps"),
    "track_seconds_total": ("counter", "wall time spent matching dumps to flows"),
    "sockets": ("gauge", "sockets in the last dump"),
    "tracked": ("gauge", "sockets tracked (flows and filtered ones)"),
    "stored": ("gauge", "flows keeping samples"),
    "stored_samples": ("gauge", "samples held by all flows"),
    "flows_new_total": ("counter", "sockets seen for the first time"),
    "flows_closed_total": ("counter", "flows that left the dump"),
    "flows_written_total": ("counter", "flow records written (ended, segments, snapshots)"),
    "flows_filtered_total": ("counter", "new sockets not stored because of max_flows"),
    "overflow_total": ("counter", "sockets that did not fit in the records array"),
    "malformed_total": ("counter", "netlink messages or attributes dropped as malformed"),
    "truncated_total": ("counter", "truncated netlink datagrams or tails"),
    "dump_intr_total": ("counter", "messages flagged NLM_F_DUMP_INTR (socket table changed mid-dump)"),
    "spoofed_total": ("counter", "netlink datagrams not sent by the kernel, dropped unread"),
    "late_total": ("counter", "dump slots skipped because a dump or write ran late"),
}

__all__ = ["METRICS", "MetricsServer", "parse_listen"]


class _Collector:
    def __init__(self, name, snapshot):
        self.name, self.snapshot = name, snapshot

    def collect(self):
        from prometheus_client.core import Metric  # only a probe with http_listen needs it
        values = self.snapshot()
        out = []
        for key, (kind, doc) in METRICS.items():
            full = f"netprobe_flows_{key}"
            m = Metric(full[:-6] if kind == "counter" else full, doc, kind)
            m.add_sample(full, {"probe": self.name}, float(values.get(key, 0)))
            out.append(m)
        return out


class MetricsServer:
    """GET /metrics over HTTP from daemon threads; `snapshot()` supplies the values."""

    def __init__(self, listen, name, snapshot):
        try:
            self._http = _HttpServer(listen, registry_of(_Collector(name, snapshot)))
        except OSError as exc:
            raise ProbeError(f"http_listen {listen}: {exc.strerror or exc}") from None

    @property
    def port(self):
        return self._http.port

    def close(self):
        self._http.close()
