"""Settings of the `flows` probe: congestion state of every matching TCP socket on this host (cgmon).

Nothing is sent: the probe dumps the kernel's TCP sockets over netlink
(inet_diag) every sample_interval, in this network namespace. sport/src are
the local end of a socket, dport/dst the remote end; the port and prefix
filters run in the kernel.
"""
from dataclasses import dataclass

from netprobe.config.schema import BOOL, CHOICE, DURATION, FLOAT, INT, PREFIX_LIST, STR, STR_LIST, setting
from netprobe.probes.base import ProbeConfig
from netprobe.probes.flows import filters, metrics

MAX_SOCKETS = 1_000_000


@dataclass(frozen=True)
class Config(ProbeConfig):
    """The [[probe]] table with kind = "flows"."""
    sport: str = setting(STR, "", "local ports to watch, e.g. 80,443,2000-3000 (default: all)")
    dport: str = setting(STR, "", "remote ports to watch, e.g. 80,443,2000-3000 (default: all)")
    src: tuple = setting(PREFIX_LIST, [], "local address prefixes to watch (default: all)")
    dst: tuple = setting(PREFIX_LIST, [], "remote address prefixes to watch (default: all)")
    family: str = setting(CHOICE, "both", "address families dumped", choices=("both", "ipv4", "ipv6"))
    sample_interval: float = setting(DURATION, None, "time between socket dumps (s; default: 1s, or interval "
                                     "if shorter)", min=0.01, max=60)
    max_sockets: int = setting(INT, 65536, "sockets one dump holds (448 bytes each; the array grows on demand "
                               "up to this); more are counted as overflow", min=16, max=MAX_SOCKETS)
    max_flows: int = setting(INT, 10000, "flows that keep samples; later ones are counted, not stored "
                             "(0 = no limit)", min=0, max=10_000_000)
    min_samples: int = setting(INT, 0, "flows with fewer stored samples are not written", min=0, max=1_000_000)
    max_samples: int = setting(INT, 10000, "stored samples per flow before it is written and continues "
                               "as a new segment", min=2, max=10_000_000)
    max_total_samples: int = setting(INT, 1_000_000, "samples all flows together hold (~200 bytes each); "
                                     "beyond it the biggest flows are written early", min=100, max=100_000_000)
    idle_timeout: float = setting(DURATION, 0.0, "write a flow whose values have not changed for this long "
                                  "and continue it as a new segment (s, 0 = never)", min=0.0, max=86400)
    congestion_info: bool = setting(BOOL, True, "also dump the congestion control name and BBR's model "
                                  "(a bbr flow's record gains bbr_bw, bbr_bw_p50 and bbr_min_rtt)")
    memory_info: bool = setting(BOOL, False, "also dump socket memory (skmem_*)")
    write_flows: bool = setting(BOOL, True, "write a record per ended flow (per segment)")
    destroy_events: bool = setting(BOOL, True, "read each socket's final tcp_info as the kernel destroys it "
                                   "(sock_diag destroy groups): a flow that closes between two dumps still "
                                   "gives its record, with its final counters")
    flow_format: str = setting(CHOICE, "native", "per-flow record fields: native (base units, nulls with "
                               "reasons) or cgmon (cgmon 0.2 names, -2/-3 sentinels)", choices=("native", "cgmon"))
    cumulant_kind: str = setting(CHOICE, "lininterp", "quantile method of the seven-number summaries",
                                 choices=("lininterp", "empirical"))
    unweighted_quantiles: bool = setting(BOOL, False, "summaries without the time weights")
    unweighted_correlations: bool = setting(BOOL, False, "correlations without the time weights")
    group_prefixes: tuple = setting(PREFIX_LIST, [], "aggregate per remote prefix (first match wins)")
    group_ports: tuple = setting(STR_LIST, [], 'aggregate per port group NAME=PORTS, local or remote port, '
                                 'e.g. ["web=80,443", "app=2000-3000"] (after the prefixes)')
    http_listen: str = setting(STR, "", "serve the sampler's internal metrics at http://HOST:PORT/metrics "
                               "(Prometheus text), e.g. 127.0.0.1:9465 (default: off)")
    max_rtt_p99: float = setting(DURATION, None, "BREACH metric=rtt_p99 when a group's p99 RTT exceeds this (s)",
                                 min=0.0, max=60)
    max_retrans_pct: float = setting(FLOAT, None, "BREACH metric=retrans when a group retransmits more than "
                                     "this share of the segments it sent (percent)", min=0.0, max=100.0)
    max_rcv_ooo_pct: float = setting(FLOAT, None, "BREACH metric=rcv_ooo when more than this share of a "
                                     "group's received segments arrived out of order (percent)",
                                     min=0.0, max=100.0)

    def check(self, where):
        super().check(where)
        for key in ("sport", "dport"):
            try:
                filters.parse_ports(getattr(self, key))
            except ValueError as exc:
                raise where.error(key, str(exc)) from None
        for i, text in enumerate(self.group_ports):
            name, sep, ports = text.partition("=")
            try:
                if not sep or not name or not ports.strip():
                    raise ValueError(f'"{text}" is not NAME=PORTS (example: "web=80,443")')
                filters.parse_ports(ports)
            except ValueError as exc:
                raise where.error(f"group_ports[{i}]", str(exc)) from None
        if self.http_listen:
            try:
                metrics.parse_listen(self.http_listen)
            except ValueError as exc:
                raise where.error("http_listen", str(exc)) from None
        if self.interval < self.dump_interval:
            raise where.error("interval", "must be >= sample_interval (each interval aggregates whole dumps)")
        try:
            self.bytecode()
        except ValueError as exc:
            raise where.error("sport", str(exc)) from None

    @property
    def dump_interval(self):
        return min(1.0, self.interval) if self.sample_interval is None else self.sample_interval

    def filter_args(self):
        return {"sport": filters.parse_ports(self.sport), "dport": filters.parse_ports(self.dport),
                "src": self.src, "dst": self.dst}

    def bytecode(self):
        return filters.compile_filter(**self.filter_args())

    def port_groups(self):
        out = []
        for text in self.group_ports:
            name, _, ports = text.partition("=")
            out.append((name.strip(), filters.parse_ports(ports)))
        return out

    def sla(self):
        return {"max_rtt_p99": self.max_rtt_p99, "max_retrans_pct": self.max_retrans_pct,
                "max_rcv_ooo_pct": self.max_rcv_ooo_pct}
