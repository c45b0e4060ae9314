"""The flows probe's internal metrics over HTTP (cgmon's -run-http-server): GET /metrics in the
Prometheus text format (version 0.0.4), names netprobe_flows_*, label name="<probe name>".

Served from a daemon thread of the probe's worker; a request reads a snapshot of the counters
the sampling loop keeps, so it never blocks a dump.
"""
import http.server
import socket
import threading

from netprobe.errors import ProbeError

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


def parse_listen(text):
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError with an example."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'"{text}" is not HOST:PORT (example: 127.0.0.1:9465, [::1]:9465)')
    return host, int(port)


def exposition(name, values):
    """The text body: one HELP, TYPE and sample line per metric."""
    label = name.replace("\\", "\\\\").replace('"', '\\"')
    lines = []
    for key, (kind, doc) in METRICS.items():
        full = f"netprobe_flows_{key}"
        lines += [f"# HELP {full} {doc}", f"# TYPE {full} {kind}",
                  f'{full}{{name="{label}"}} {float(values.get(key, 0)):.9g}']
    return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /metrics over HTTP from a daemon thread; `snapshot()` supplies the values."""

    def __init__(self, listen, name, snapshot):
        host, port = parse_listen(listen)

        def body_of():
            return exposition(name, snapshot()).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = body_of()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        cls = type("Server", (http.server.ThreadingHTTPServer,), {"daemon_threads": True})
        if ":" in host:
            cls.address_family = socket.AF_INET6
        try:
            self.server = cls((host, port), Handler)
        except OSError as exc:
            raise ProbeError(f"http_listen {listen}: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
