"""Sans-IO analysis of the oneway probe: loss accounting, delay percentiles, verdicts.

Input: what the receiver (netprobe._udpio.UdpProbeReceiver.close_through)
reports for one closed interval, per source port, plus what the sender says
it sent. Nothing here reads a clock or a socket.

Loss accounting (what UDPing got wrong):
- "expected" for (port, interval) comes from the best source available, in
  this order: the sender's own count (reported over the control connection:
  exact), an in-band end-of-interval control record (sent `control_copies`
  times), the count that every data packet of the next interval carries for
  the previous one, the next interval's first sequence number, and only when
  none of these arrived, inference from the highest sequence number seen
  (which cannot see a tail loss, so it can under-count loss, never invent
  it). Any gap size works: nothing is tracked relative to a 10-packet window.
- received counts distinct sequence numbers (a duplicate is counted as dup,
  not received); a packet that arrives after one with a higher sequence
  number is "reordered" and still received, so reordering is never loss.
- lost = expected - received, and never negative: a receiver that saw more
  distinct packets than the source says were sent counts "inconsistent".
"""
import math
from dataclasses import dataclass

import numpy as np

PORT_SUB_BITS = 3         # netprobe._udpio: per-port histogram, 2**3 bins per octave
SESSION_SUB_BITS = 7      # per-session histogram, 2**7 bins per octave
HIST_TOP = 36             # |delay| < 2**36 ns; larger values share the last bin
MIN_EXPECTED = 3          # a port needs this many expected probes before it can be a black hole
SOURCES = ("sender", "control", "next", "inferred")


def hist_bins(sub):
    """Bins per sign of the log-linear histogram with 2**sub bins per octave."""
    return (HIST_TOP - sub + 1) << sub


def bin_range(index, sub):
    """[lo, hi) in ns of signed histogram bin `index` (negative delays: the first half)."""
    nb = hist_bins(sub)
    neg = index < nb
    i = index if neg else index - nb
    if i < (1 << sub):
        lo, width = i, 1
    else:
        m = (i >> sub) + sub - 1
        lo = ((1 << sub) + (i & ((1 << sub) - 1))) << (m - sub)
        width = 1 << (m - sub)
    if neg:
        return -(lo + width), -lo
    return lo, lo + width


def percentiles(hist, sub, qs):
    """Percentiles (ns, linear inside a bin) of a sparse histogram [[bin, count], ...]; None if empty."""
    if not hist:
        return [None for _ in qs]
    bins = sorted(hist, key=lambda bc: bin_range(bc[0], sub)[0])
    counts = np.array([c for _, c in bins], dtype=np.float64)
    ranges = [bin_range(b, sub) for b, _ in bins]
    cum = np.cumsum(counts)
    total = cum[-1]
    out = []
    for q in qs:
        rank = q / 100.0 * total
        k = int(np.searchsorted(cum, rank, side="left"))
        k = min(k, len(bins) - 1)
        before = cum[k - 1] if k else 0.0
        lo, hi = ranges[k]
        frac = (rank - before) / counts[k] if counts[k] else 0.0
        out.append(lo + (hi - lo) * min(max(frac, 0.0), 1.0))
    return out


def counts_le(hist, sub, bounds_ns):
    """Samples <= each bound of a sparse histogram; a bin is counted under a bound only when it
    ends at or below it, so a bin straddling a bound (< 0.6 % wide at sub 7) goes to the next."""
    his = np.array([bin_range(b, sub)[1] for b, _ in hist], dtype=np.float64)
    counts = np.array([c for _, c in hist], dtype=np.int64)
    return [int(counts[his <= b].sum()) for b in bounds_ns]


@dataclass(frozen=True)
class PortLoss:
    port: int                  # port index in the session
    expected: int
    received: int
    lost: int
    dup: int
    reordered: int
    stale: int
    source: str                # where `expected` came from (SOURCES)
    inconsistent: int          # distinct packets received beyond `expected` (0 unless a peer lies)

    @property
    def loss_pct(self):
        return 100.0 * self.lost / self.expected if self.expected else 0.0


def expected_of(rec, sent=None):
    """(expected, source) for one port's interval record, best source first."""
    if sent is not None:
        return int(sent), "sender"
    if rec["ctl_count"] >= 0:
        return rec["ctl_count"], "control"
    if rec["piggy_count"] >= 0:
        return rec["piggy_count"], "next"
    if rec["base"] >= 0 and rec["next_base"] >= 0:
        return rec["next_base"] - rec["base"], "next"
    if rec["base"] >= 0 and rec["max_seq"] >= 0:
        return rec["max_seq"] - rec["base"] + 1, "inferred"
    return rec["received"], "inferred"


def account_port(rec, sent=None):
    """PortLoss of one port in one interval; never negative."""
    expected, source = expected_of(rec, sent)
    received = rec["received"]
    lost = max(0, expected - received)
    return PortLoss(rec["port"], expected, received, lost, rec["dup"], rec["reordered"], rec["stale"],
                    source, max(0, received - expected))


def port_delay(rec):
    """Delay summary (ns) of one port: mean, sd, min, max, p99 from its coarse histogram."""
    n = rec["n"]
    if not n:
        return None
    mean = rec["sum"] / n
    var = max(0.0, rec["sumsq"] / n - mean * mean)
    p99, = percentiles(rec["hist"], PORT_SUB_BITS, [99])
    return {"mean": mean, "sd": math.sqrt(var), "min": rec["min"], "max": rec["max"], "p99": p99, "n": n}


def blackholes(losses, pct):
    """Ports losing >= pct % while the other ports are clean (their loss < min(10 %, pct/2)).

    A loss spread over every port is a path-wide loss, not a black hole: at most half
    of the eligible ports (>= MIN_EXPECTED probes expected) may be black holes.
    """
    eligible = [p for p in losses if p.expected >= MIN_EXPECTED]
    holes = [p for p in eligible if p.loss_pct >= pct]
    rest = [p for p in eligible if p.loss_pct < pct]
    if not holes or not rest or len(holes) * 2 > len(eligible):
        return []
    rest_expected = sum(p.expected for p in rest)
    rest_loss = 100.0 * sum(p.lost for p in rest) / rest_expected
    if rest_loss >= min(10.0, pct / 2):
        return []
    return sorted(p.port for p in holes)


def summarize(interval, sent=None):
    """One closed interval (a close_through() entry) + per-port sent counts -> summary dict.

    Delays are in ns. loss_pct is None when nothing was expected.
    """
    ports = interval["ports"]
    if sent is not None and len(sent) != len(ports):
        raise ValueError(f"sent counts for {len(sent)} ports, receiver reported {len(ports)}")
    losses = [account_port(r, None if sent is None else sent[i]) for i, r in enumerate(ports)]
    expected = sum(p.expected for p in losses)
    lost = sum(p.lost for p in losses)
    n = sum(r["n"] for r in ports)
    s = sum(r["sum"] for r in ports)
    p50, p90, p99, p999 = percentiles(interval["hist"], SESSION_SUB_BITS, [50, 90, 99, 99.9])
    worst = max(losses, key=lambda p: (p.loss_pct, p.lost), default=None)
    sources = {src: sum(1 for p in losses if p.source == src) for src in SOURCES}
    return {
        "interval": interval["interval"],
        "expected": expected, "received": sum(p.received for p in losses), "lost": lost,
        "loss_pct": 100.0 * lost / expected if expected else None,
        "dup": sum(p.dup for p in losses), "reordered": sum(p.reordered for p in losses),
        "stale": sum(p.stale for p in losses), "inconsistent": sum(p.inconsistent for p in losses),
        "delay_n": n, "delay_n_tx": sum(r.get("n_tx", 0) for r in ports), "delay_mean": s / n if n else None,
        "delay_min": min((r["min"] for r in ports if r["n"]), default=None),
        "delay_max": max((r["max"] for r in ports if r["n"]), default=None),
        "delay_p50": p50, "delay_p90": p90, "delay_p99": p99, "delay_p999": p999,
        "worst": worst, "ports": losses, "sources": sources, "hist": interval["hist"],
        "delay_sum": sum(r["sum"] for r in ports),
    }


@dataclass(frozen=True)
class Verdict:
    metric: str
    key: tuple           # hysteresis key
    bad: bool
    value: float
    unit: str            # "%" or "s"
    op: str
    threshold: float
    extra: dict


def verdicts(summary, *, max_loss_pct, max_delay_p99=None, blackhole_pct=90.0, port_names=None):
    """SLA verdicts of one interval: loss, delay p99, one path_blackhole per port seen.

    port_names: index -> source port number (for naming the port); default the index.
    A metric with no data this interval (nothing expected, no delay) gives no verdict.
    """
    out = []
    names = port_names or {}
    if summary["loss_pct"] is not None:
        out.append(Verdict("loss", ("loss",), summary["loss_pct"] > max_loss_pct, summary["loss_pct"], "%",
                           "<=", max_loss_pct, {}))
    if max_delay_p99 is not None and summary["delay_p99"] is not None:
        p99 = summary["delay_p99"] / 1e9
        out.append(Verdict("delay_p99", ("delay_p99",), p99 > max_delay_p99, p99, "s", "<=", max_delay_p99, {}))
    holes = set(blackholes(summary["ports"], blackhole_pct))
    for p in summary["ports"]:
        if p.expected >= MIN_EXPECTED or p.port in holes:
            out.append(Verdict("path_blackhole", ("path_blackhole", p.port), p.port in holes, p.loss_pct, "%",
                               "<", blackhole_pct, {"port": names.get(p.port, p.port)}))
    return out
