"""Settings of the `throughput` probe: constant-rate TCP both ways, judged against an SLA.

a->b is this host sending to the peer; b->a is the peer sending to us. Keys
without a suffix are the a->b SLA; `*_down` keys set b->a and default to
their a->b value.
"""
import math
from dataclasses import dataclass

from netprobe.config.schema import BOOL, DURATION, FLOAT, RATE, STR, STR_LIST, setting
from netprobe.probes.base import ProbeConfig
from netprobe.stats.buckets import parse_bounds

MAX_RATE = 10e9          # per direction: what the paced sender is built and tested for
DEFAULT_PORT = 7171


@dataclass(frozen=True)
class Config(ProbeConfig):
    """The [[probe]] table with kind = "throughput"."""
    peer: str = setting(STR, "", "a [peer.NAME] table or HOST[:PORT] running `netprobe serve`", required=True)
    key: str = setting(STR, "", "shared key if the peer asks for one (default: the [peer.NAME] key)")
    rate: float = setting(RATE, 0.0, "a->b payload rate to keep up and the SLA for it (bit/s)",
                          required=True, min=1e3, max=MAX_RATE)
    rate_down: float = setting(RATE, None, "b->a payload rate; 0 = one way only (bit/s; default: rate)",
                               min=0.0, max=MAX_RATE)
    window: float = setting(DURATION, 15.0, "sliding window the SLA is judged over (s)", min=1.0, max=3600)
    sample_interval: float = setting(DURATION, 0.1, "TCP_INFO sampling period (s)", min=0.01, max=10)
    min_ratio: float = setting(FLOAT, 0.95, "BREACH metric=rate when achieved/rate falls below this",
                               min=0.0, max=1.0)
    max_rtt: float = setting(DURATION, None, "BREACH metric=rtt when the window's mean RTT exceeds this (s)",
                             min=0.0, max=60)
    max_retrans_pct: float = setting(FLOAT, None, "BREACH metric=retrans when retransmitted bytes exceed "
                                     "this share of delivered bytes (percent)", min=0.0, max=100.0)
    min_fitness: float = setting(FLOAT, None, "BREACH metric=fitness when Pearson r of time vs delivered "
                                 "bytes falls below this (tcpxfer used 0.95)", min=-1.0, max=1.0)
    max_angle: float = setting(FLOAT, None, "BREACH metric=angle when the delivered-bytes line deviates "
                               "from the SLA line by more than this (radians)", min=0.0, max=math.pi / 2)
    min_ratio_down: float = setting(FLOAT, None, "min_ratio for b->a (default: min_ratio)", min=0.0, max=1.0)
    max_rtt_down: float = setting(DURATION, None, "max_rtt for b->a (s; default: max_rtt)", min=0.0, max=60)
    max_retrans_pct_down: float = setting(FLOAT, None, "max_retrans_pct for b->a (default: max_retrans_pct)",
                                          min=0.0, max=100.0)
    min_fitness_down: float = setting(FLOAT, None, "min_fitness for b->a (default: min_fitness)",
                                      min=-1.0, max=1.0)
    max_angle_down: float = setting(FLOAT, None, "max_angle for b->a (radians; default: max_angle)",
                                    min=0.0, max=math.pi / 2)
    congestion: str = setting(STR, "", "TCP congestion control of both senders, e.g. cubic or bbr "
                              "(default: the host's)")
    pacing: bool = setting(BOOL, False, "also set SO_MAX_PACING_RATE to the rate (kernel pacing under ours)")
    connect_timeout: float = setting(DURATION, 5.0, "TCP connect and handshake timeout (s)", min=0.1, max=120)
    rtt_buckets: tuple = setting(STR_LIST, [], "add a histogram of the RTT samples taken since the previous "
                                 'interval (rtt_hist=) with these bucket bounds, e.g. ["1ms", "10ms"] (default: none)')

    def check(self, where):
        super().check(where)
        try:
            parse_bounds(self.rtt_buckets)
        except ValueError as exc:
            raise where.error("rtt_buckets", str(exc)) from None
        if self.window < 3 * self.sample_interval:
            raise where.error("window", "must hold at least 3 samples (window >= 3 x sample_interval)")

    @property
    def down_rate(self):
        return self.rate if self.rate_down is None else self.rate_down

    def sla(self, direction):
        """The SLA of one direction ("a->b" or "b->a") as an analysis.SLA."""
        from netprobe.probes.throughput.analysis import SLA

        def pick(name):
            value = getattr(self, f"{name}_down") if direction == "b->a" else None
            return getattr(self, name) if value is None else value
        return SLA(rate_bps=self.rate if direction == "a->b" else self.down_rate,
                   min_ratio=pick("min_ratio"), max_rtt=pick("max_rtt"), max_retrans_pct=pick("max_retrans_pct"),
                   min_fitness=pick("min_fitness"), max_angle=pick("max_angle"))
