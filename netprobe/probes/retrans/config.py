"""Settings of the `retrans` probe (live): outgoing retransmits from the kernel's tcp tracepoints,
incoming ones from a header-only capture analysed like a pcap file."""
from dataclasses import dataclass

from netprobe.config.schema import BOOL, CHOICE, DURATION, FLOAT, INT, PREFIX_LIST, SIZE, STR, STR_LIST, setting
from netprobe.probes.base import ProbeConfig


@dataclass(frozen=True)
class Config(ProbeConfig):
    """The [[probe]] table with kind = "retrans"."""
    ports: tuple = setting(STR_LIST, [], "TCP ports to watch, either end (kernel-side filter; "
                           "example: [\"443\", \"5201\"]; default: all)")
    peers: tuple = setting(PREFIX_LIST, [], "remote prefixes to report (default: all)")
    prefix_v4: int = setting(INT, 32, "group IPv4 peers by this prefix length", min=0, max=32)
    prefix_v6: int = setting(INT, 128, "group IPv6 peers by this prefix length", min=0, max=128)
    buffer_size: int = setting(SIZE, 4 << 20, "trace buffer per CPU of the probe's tracefs instance "
                               "(bytes; events beyond it are lost and reported)", min=64 << 10, max=256 << 20)
    poll: float = setting(DURATION, 0.2, "how often the trace buffer is read (s)", min=0.01, max=10)
    destroy_events: bool = setting(BOOL, True, "read each watched socket's final tcp_info as the kernel "
                                   "destroys it (sock_diag destroy groups): the resends of a socket that "
                                   "closes between two dumps count exactly")
    max_retrans: int = setting(INT, None, "BREACH metric=retrans when one direction (local -> remote "
                               "prefix) retransmits more packets than this in an interval", min=0,
                               max=10**12)
    capture_iface: str = setting(STR, "", "also capture TCP headers on this interface (`any`: all) for "
                                 "retransmits in both directions, incoming included: an AF_PACKET ring in "
                                 "the probe, BPF filter on `ports` compiled by libpcap; each captured packet "
                                 "costs the kernel a copy, ~10-15 % of the rate of a host whose receive path "
                                 "is its bottleneck (default: off)")
    capture_direction: str = setting(CHOICE, "both", "capture: both directions, or `in`: only data arriving "
                                     "from peers (and their SYN/FIN/RST), so the cost follows what this "
                                     "host receives; outgoing retransmits come from the tracepoints either way",
                                     choices=("both", "in"))
    snaplen: int = setting(INT, 128, "bytes kept per captured packet (headers and options)", min=64, max=65535)
    max_retrans_pct: float = setting(FLOAT, None, "capture: BREACH metric=retrans_pct when a direction's "
                                     "retransmitted share of segments exceeds this (percent)", min=0.0,
                                     max=100.0)
    trace_votes: bool = setting(BOOL, False, "passive votes: trace the path of each flow whose retransmits "
                                "reach trace_min_retrans in an interval (and, as a baseline, of flows that "
                                "resend nothing) on the flow's own 5-tuple, TCP segments from a raw socket "
                                "the connection never takes (wrong checksum); scope=votes RESULTs per hop and "
                                "suspect_hop on the retrans BREACH (docs/votes.md; default: off)")
    trace_min_retrans: int = setting(INT, 3, "with trace_votes: segments a flow resends in an interval "
                                     "before its path is traced and it votes", min=1, max=10**9)
    max_hops: int = setting(INT, 16, "with trace_votes: the highest TTL / hop limit tried", min=1, max=64)
    trace_rate: float = setting(FLOAT, 20.0, "with trace_votes: trace segments per second at most",
                                min=1.0, max=1000.0)
    trace_retries: int = setting(INT, 2, "with trace_votes: tries again for a silent hop (routers "
                                 "rate-limit ICMP)", min=0, max=5)
    trace_flows: int = setting(INT, 16, "with trace_votes: flows traced per interval at most (their paths "
                               "are kept 10 minutes)", min=1, max=1000)

    @property
    def port_numbers(self):
        return tuple(int(p) for p in self.ports)

    def check(self, where):
        super().check(where)
        for p in self.ports:
            if not p.isdigit() or not 1 <= int(p) <= 65535:
                raise where.error("ports", f'"{p}" is not a TCP port (1..65535)')
        if self.capture_iface and not all(c.isalnum() or c in "._-@" for c in self.capture_iface):
            raise where.error("capture_iface", f'"{self.capture_iface}" is not an interface name')
