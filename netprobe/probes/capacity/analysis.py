"""Capacity from packet-pair and packet-train dispersion (sans-IO).

Input is what the receiver recorded (one row per packet: train, index,
count, size, kernel RX ns, flags; see netprobe._train.RX_COLUMNS) and the
plan the trains were sent from (one row per train: train, phase, count,
size, primers, primer size, and the sender's clock around its sendmmsg()). Nothing here reads a clock or a
socket, so a recorded run re-analyses to exactly the same result.

Method: pathrate 2.4.1 (Dovrolis, Ramanathan, Moore), with its and loco's
bugs fixed:

* A train of L measured packets of s bytes gives (L - 1) * s_wire * 8 / D
  bit/s, D = last minus first arrival: L - 1 packets' worth of bytes arrive
  after the first (loco used L, which doubles a pair's estimate), with the
  packet's own size (loco always used the largest size) and its headers
  (wire bytes = UDP payload + 8 + 20 or 40 + `overhead`, which is 14 for
  Ethernet: the bytes tbf and an Ethernet link count; preamble, FCS and the
  inter-frame gap are not counted).
* Each train is led by max-size primer packets whose arrivals are not used
  (pathrate's warm-up packet; the runner sends two): they put the measured
  packets behind full packets at the bottleneck, and empty a one-packet
  token bucket, whose timer is then already running.
* Preliminary trains (L = 2..10) set the histogram bin width: 1/8 of their
  interdecile range (pathrate; loco used the mean), but at least 1/8 of the
  Phase I pairs' range (see estimate()).
* Phase I: pairs of many sizes; their histogram's modes are the capacity
  candidates. Phase II: long trains; their trimmed mean is the asymptotic
  dispersion rate (ADR), which is below the capacity when other traffic
  shares the path. The capacity is the Phase I mode above the ADR with the
  highest figure of merit (kurtosis x share of values).
* Pairs of every size must agree (a link disperses each size by size / C);
  when the quarter of smallest and of largest sizes differ by more than
  10 %, a shaper's token credit or a timer is at work and the estimate comes
  from max-size pairs, which is what full-size traffic sees.
* Cross-checks that lower the confidence: CapProbe's minimum delay sum (the
  pair that queued least measures the capacity), interrupt coalescing or
  GRO (packets of a train arriving in clumps, gaps near zero), and a burst
  allowance (long trains whose first gaps are much shorter than their
  later ones: a token bucket lets pairs pass at line rate).
"""
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from netprobe.stats.modes import bin_width, find_modes

# receiver row columns (netprobe._train.RX_COLUMNS)
R_TRAIN, R_INDEX, R_COUNT, R_SIZE, R_RX, R_FLAGS = range(6)
RX_FLAG_PRIMER, RX_FLAG_USER_TS = 1, 2
# plan columns
PLAN_COLUMNS = ("train", "phase", "count", "size", "primers", "primer_size", "tx_ns", "tx_end_ns")
P_TRAIN, P_PHASE, P_COUNT, P_SIZE, P_PRIMERS, P_PRIMER_SIZE, P_TX, P_TX_END = range(8)
PRELIM, PHASE1, PHASE2 = 0, 1, 2
PHASES = {PRELIM: "prelim", PHASE1: "phase1", PHASE2: "phase2"}

IP4_UDP = 28
IP6_UDP = 48
ETHERNET = 14
MIN_GAP_NS = 1_000            # a dispersion below this per gap is not resolved: value ignored
IC_GAP_FRACTION = 0.25        # a gap below this share of its train's mean gap is a "clump" gap
IC_LOW, IC_REFUSE = 0.2, 0.5  # share of clump gaps in long trains: lower the confidence, refuse
BURST_RATIO = 0.6             # head gaps below this share of tail gaps: a burst allowance
AGREE_HIGH, AGREE_MEDIUM = 0.05, 0.10
SENDER_MARGIN = 1.1           # the peer must hand trains over at least this much faster than the estimate
SIZE_SPREAD = 0.10            # Phase I size quarters whose medians differ more: not a plain link


@dataclass
class Measurements:
    """One value per complete train: train id, phase, measured packets L, size, dispersion, rate."""
    train: np.ndarray
    phase: np.ndarray
    n: np.ndarray
    size: np.ndarray
    disp_ns: np.ndarray
    rate: np.ndarray              # bit/s, NaN where the dispersion is below resolution
    delay_sum: np.ndarray         # ns: sum of (arrival - train send start) over the measured packets
    send_rate: np.ndarray         # bit/s the peer handed the whole train to its kernel at (inf: unknown)
    gaps: dict = field(default_factory=dict)   # train -> int64 gaps (phase 2 only)
    incomplete: int = 0           # trains planned but not received whole, in order
    unresolved: int = 0           # complete trains whose dispersion was too small to measure
    user_ts: int = 0              # trains with a packet lacking a kernel timestamp

    def of(self, phase):
        ok = (self.phase == phase) & np.isfinite(self.rate)
        return self.rate[ok]


def wire_bytes(size, ip_udp=IP4_UDP, overhead=ETHERNET):
    """Bytes a packet of `size` UDP payload bytes occupies on the bottleneck."""
    return size + ip_udp + overhead


def train_rate(n, size, disp_ns, ip_udp=IP4_UDP, overhead=ETHERNET):
    """bit/s of a train of `n` measured packets of `size` UDP bytes dispersed over disp_ns:
    n - 1 packets' worth of bytes arrive after the first one (pathrate; loco's L doubles a pair)."""
    return (n - 1) * wire_bytes(size, ip_udp, overhead) * 8e9 / disp_ns


def measure(rows, plan, *, ip_udp=IP4_UDP, overhead=ETHERNET, min_gap_ns=MIN_GAP_NS):
    """Per-train measurements from receiver rows and the plan (see the module docstring)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
    plan = np.asarray(plan, dtype=np.int64).reshape(-1, len(PLAN_COLUMNS))
    order = np.argsort(rows[:, R_TRAIN], kind="stable")     # arrival order kept within a train
    rows = rows[order]
    ids, starts = np.unique(rows[:, R_TRAIN], return_index=True)
    bounds = dict(zip(ids.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True),
                      strict=True))
    out = {k: [] for k in ("train", "phase", "n", "size", "disp_ns", "rate", "delay_sum", "send_rate")}
    gaps = {}
    incomplete = unresolved = user_ts = 0
    for p in plan:
        tid, phase, count, size, primers = (int(p[P_TRAIN]), int(p[P_PHASE]), int(p[P_COUNT]), int(p[P_SIZE]),
                                            int(p[P_PRIMERS]))
        span = bounds.get(tid)
        if span is None:
            incomplete += 1
            continue
        t = rows[span[0]:span[1]]
        if len(t) != count or not np.array_equal(t[:, R_INDEX], np.arange(count)) \
                or np.any(t[:, R_COUNT] != count):
            incomplete += 1                   # lost, duplicated or reordered: pathrate discards it too
            continue
        if np.any(t[:, R_FLAGS] & RX_FLAG_USER_TS):
            user_ts += 1
            continue
        m = t[primers:]
        if np.any(m[:, R_SIZE] != size):
            incomplete += 1
            continue
        n = len(m)
        rx = m[:, R_RX]
        disp = int(rx[-1] - rx[0])
        if disp < (n - 1) * min_gap_ns:
            unresolved += 1
            rate = math.nan
        else:
            rate = train_rate(n, size, disp, ip_udp, overhead)
        out["train"].append(tid)
        out["phase"].append(phase)
        out["n"].append(n)
        out["size"].append(size)
        out["disp_ns"].append(disp)
        out["rate"].append(rate)
        out["delay_sum"].append(float(np.sum(rx - p[P_TX])))
        took = int(p[P_TX_END] - p[P_TX])
        out["send_rate"].append(float(np.sum(t[:, R_SIZE] + ip_udp + overhead)) * 8e9 / took if took > 0
                                else math.inf)
        if phase == PHASE2 and n >= 3:
            gaps[tid] = np.diff(rx)
    floats = ("rate", "delay_sum", "send_rate")
    arr = {k: np.asarray(v, dtype=np.float64 if k in floats else np.int64) for k, v in out.items()}
    return Measurements(**arr, gaps=gaps, incomplete=incomplete, unresolved=unresolved, user_ts=user_ts)


# -- statistics --------------------------------------------------------------------------------

def iqm(values):
    """Interquartile mean: the mean of the middle 50 %, boundary observations weighted by the
    fraction of them inside it (loco's summed the unsorted input and read past its end)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        return math.nan
    lo, hi = n / 4, 3 * n / 4                 # the middle half of the n unit-width positions
    total = 0.0
    for i in range(int(math.floor(lo)), int(math.ceil(hi))):
        weight = min(i + 1, hi) - max(i, lo)
        total += weight * x[i]
    return total / (hi - lo)


def median(values):
    """The middle of the sorted values (loco returned the middle of the unsorted array)."""
    x = np.asarray(values, dtype=np.float64)
    return float(np.median(x)) if x.size else math.nan


def trimmed_mean(values, k=10):
    """pathrate's ADR average: the mean without the k lowest and k highest (all if too few)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if len(x) > 4 * k:
        x = x[k:-k]
    return float(x.mean()) if x.size else math.nan


def median_ci(values, level=0.95):
    """Distribution-free CI of the median from order statistics (binomial); (lo, hi)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    j = max(_binom_half_ppf((1 - level) / 2, n), 1)     # lo = x[j-1] (1-based j), hi symmetrical
    return float(x[j - 1]), float(x[n - j])


def _binom_half_ppf(q, n):
    """The smallest k with P(Binomial(n, 1/2) <= k) >= q (scipy.stats.binom.ppf), in exact
    integers: scipy costs a worker a second of import time for this one function."""
    qf = Fraction(q).limit_denominator(10**9)
    term, cdf, total = 1, 0, 1 << n
    for k in range(n + 1):
        cdf += term
        if cdf * qf.denominator >= qf.numerator * total:
            return k
        term = term * (n - k) // (k + 1)
    return n


def preliminary(values):
    """pathrate's preliminary statistics: avg and std without the 5 lowest and highest when
    there are more than 30 values, CoV, and the bin width."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    core = x[5:-5] if len(x) > 30 else x
    avg = float(core.mean())
    std = float(core.std(ddof=1)) if len(core) > 1 else 0.0
    return {"avg": avg, "std": std, "cov": std / avg if avg > 0 else math.inf, "w": bin_width(x)}


def coalescing(gaps, fraction=IC_GAP_FRACTION):
    """Share of gaps in long trains far below their train's mean gap: interrupt coalescing or
    GRO deliver a train in clumps, so kernel timestamps bunch (0 on a clean path). Only the
    second half of each train counts: a token bucket clumps the head, and is told apart by
    burst_profile()."""
    shares = []
    for g in gaps.values():
        g = np.asarray(g, dtype=np.float64)
        g = g[len(g) // 2:]
        mean = g.mean()
        if mean > 0:
            shares.append(float(np.mean(g < fraction * mean)))
    return float(np.median(shares)) if shares else 0.0


def burst_profile(gaps):
    """(head, tail) median gap of long trains: the first quarter of positions vs the second half.
    A token bucket lets the head through at line rate (head much below tail)."""
    lengths = {len(g) for g in gaps.values()}
    if not gaps or len(lengths) != 1 or min(lengths) < 4:
        return math.nan, math.nan
    m = np.median(np.vstack(list(gaps.values())).astype(np.float64), axis=0)
    k = max(1, len(m) // 4)
    return float(np.median(m[:k])), float(np.median(m[len(m) // 2:]))


def size_spread(meas):
    """How much the median Phase I rate differs between the smallest and the largest quarter of
    the pair sizes (max / min - 1; 0 when it cannot tell). A link disperses every size alike."""
    ok = (meas.phase == PHASE1) & np.isfinite(meas.rate)
    sizes = np.unique(meas.size[ok])
    if len(sizes) < 4:
        return 0.0
    medians = []
    for group in np.array_split(sizes, 4):
        v = meas.rate[ok & np.isin(meas.size, group)]
        if len(v) < 5:
            return 0.0
        medians.append(float(np.median(v)))
    return max(medians) / min(medians) - 1


def peer_send_rate(meas):
    """Median rate at which the peer handed its Phase II trains to its kernel (inf: unknown):
    trains that leave the sender slower than the path cannot measure the path."""
    v = meas.send_rate[meas.phase == PHASE2]
    return float(np.median(v)) if v.size else math.inf


def capprobe(meas, size):
    """CapProbe: of the pairs of `size` bytes, the one with the minimum delay sum (arrivals minus
    the sender's start, so the two hosts' clock offset cancels) queued least; its rate is the
    capacity. A run lasts seconds, so clock drift (ppm) moves delay sums by microseconds only."""
    ok = (meas.phase == PHASE1) & (meas.size == size) & np.isfinite(meas.rate) & np.isfinite(meas.delay_sum)
    if ok.sum() < 5:
        return math.nan
    i = np.argmin(np.where(ok, meas.delay_sum, np.inf))
    return float(meas.rate[i])


@dataclass(frozen=True)
class Estimate:
    capacity: float               # bit/s (NaN when refused)
    ci_lo: float
    ci_hi: float
    range_lo: float               # pathrate's "X to Y" (the modal bin, or ADR +- w/2)
    range_hi: float
    adr: float
    method: str                   # "mode", "adr" (no Phase I mode above the ADR), "max-size", "refused"
    confidence: str               # high, medium, low, none
    reasons: tuple                # why the confidence is not high
    capprobe: float
    bin_width: float
    coalescing: float
    burst_ratio: float            # head / tail gap of long trains (1 on a link, << 1 with a bucket)
    modes: int                    # Phase I modes found
    trains: int                   # trains used
    incomplete: int

    def range_text(self):
        return f"{mbps(self.range_lo)} to {mbps(self.range_hi)} Mbps"


def mbps(bps):
    """pathrate's print_bw: kbps below 1 Mbps, one decimal below 15, none above."""
    if not math.isfinite(bps):
        return "-"
    m = bps / 1e6
    if m < 1:
        return f"{bps / 1e3:.0f} kbps"
    return f"{m:.1f}" if m < 15 else f"{m:.0f}"


def estimate(meas, max_size, bin_width_bps=None):
    """The capacity estimate from all measurements so far (see the module docstring).
    bin_width_bps overrides the bin width rule (loco's -b, which loco itself ignored)."""
    prelim_v = meas.of(PRELIM)
    p1 = meas.of(PHASE1)
    p2 = meas.of(PHASE2)
    reasons = []
    base = {"capprobe": capprobe(meas, max_size), "incomplete": meas.incomplete,
            "trains": int(np.isfinite(meas.rate).sum())}
    ic = coalescing(meas.gaps)
    head, tail = burst_profile(meas.gaps)
    ratio = head / tail if tail and tail > 0 else math.nan
    if len(prelim_v) < 5 or len(p2) < 5:
        return Estimate(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, "refused", "none",
                        ("too few complete trains",), bin_width=math.nan, coalescing=ic, burst_ratio=ratio,
                        modes=0, **base)
    pre = preliminary(prelim_v)
    w = pre["w"]
    if bin_width_bps:
        w = bin_width_bps
    elif len(p1) > 30:
        # never narrower than the same rule applied to the pairs: with kernel timestamps, trains
        # of 2..10 max-size packets scatter far less than pairs of small packets, and a bin much
        # narrower than the pairs' scatter splits the capacity mode into noise
        w = max(w, bin_width(p1))
    adr = trimmed_mean(p2)
    if ic >= IC_REFUSE:
        return Estimate(math.nan, math.nan, math.nan, math.nan, math.nan, adr, "refused", "none",
                        (f"interrupt coalescing or GRO: {ic:.0%} of gaps in long trains are clumped",),
                        bin_width=w, coalescing=ic, burst_ratio=ratio, modes=0, **base)
    # narrow ADR (pathrate): one Phase II mode, a tight spread, close to the preliminary average
    p2_modes = find_modes(p2, w)
    if len(p2_modes) == 1 and np.std(p2) / adr < 0.05 and adr / pre["avg"] > 0.9:
        adr = (p2_modes[0].lo + p2_modes[0].hi) / 2
    elif len(p2_modes) > 1:
        best = max(p2_modes, key=lambda m: m.merit(len(p2)))
        adr = (best.lo + best.hi) / 2             # pathrate wrote (lo + lo) / 2
    modes = find_modes(p1, w) if len(p1) else []
    candidates = [m for m in modes if m.hi >= adr]
    chosen = max(candidates, key=lambda m: m.merit(len(p1)), default=None)
    spread = size_spread(meas)
    full = meas.rate[np.isfinite(meas.rate) & (meas.size == max_size) & (meas.n == 2)
                     & ((meas.phase == PHASE1) | (meas.phase == PRELIM))]
    if spread > SIZE_SPREAD and len(full) >= 10:
        # the capacity mode is the one all sizes share (pathrate's reason to vary them); when
        # the sizes disagree, something besides a link sets the dispersion (a shaper's token
        # credit, a timer), and max-size pairs are what full-size traffic sees
        cap = median(full)
        ci = median_ci(full)
        rng = (cap - w / 2, cap + w / 2)
        method = "max-size"
        reasons.append(f"pairs of different sizes disagree by {spread:.0%} (a shaper or a timer sets "
                       "the dispersion, not only the link): max-size pairs give the estimate")
    elif chosen is not None and chosen.merit(len(p1)) > 0:
        inside = p1[(p1 >= chosen.bell_lo) & (p1 <= chosen.bell_hi)]     # the mode's whole bell
        cap = median(inside)
        ci = median_ci(inside)
        rng = (min(chosen.lo, cap), max(chosen.hi, cap))   # the modal bin, holding the estimate
        method = "mode"
    else:
        cap = adr
        ci = median_ci(p2)
        rng = (adr - w / 2, adr + w / 2)
        method = "adr"
        reasons.append("no Phase I mode above the ADR: the ADR is a lower bound")
    cp = base["capprobe"]
    if math.isfinite(cp):
        off = abs(cp / cap - 1)
        if off > AGREE_MEDIUM:
            reasons.append(f"CapProbe's minimum-delay pair says {cp / 1e6:.4g} Mbit/s ({off:.0%} off)")
        elif off > AGREE_HIGH:
            reasons.append(f"CapProbe agrees only within {off:.0%}")
    if ic >= IC_LOW:
        reasons.append(f"{ic:.0%} of gaps in long trains are clumped (interrupt coalescing or GRO?)")
    if math.isfinite(ratio) and ratio < BURST_RATIO:
        sustained = 8 * wire_bytes(max_size) * 1e9 / tail
        reasons.append(f"long trains' first gaps are {ratio:.0%} of their later ones: a token bucket "
                       f"lets bursts through faster than its sustained rate ({sustained / 1e6:.4g} Mbit/s)")
    if meas.user_ts:
        reasons.append(f"{meas.user_ts} trains had no kernel timestamps")
    sender = peer_send_rate(meas)
    if sender < SENDER_MARGIN * cap:
        reasons.append(f"the peer handed its long trains to its kernel at only {sender / 1e6:.4g} Mbit/s: "
                       "the estimate may be the peer's sending rate, not the path's")
    if len(p1) < 100:
        reasons.append(f"only {len(p1)} Phase I pairs")
    severe = any(r.startswith(("long trains'", "no Phase I", "the peer handed")) for r in reasons) or \
        (math.isfinite(cp) and abs(cp / cap - 1) > AGREE_MEDIUM) or ic >= IC_LOW
    confidence = "low" if severe else ("medium" if reasons else "high")
    return Estimate(float(cap), ci[0], ci[1], float(rng[0]), float(rng[1]), float(adr), method, confidence,
                    tuple(reasons), bin_width=w, coalescing=ic, burst_ratio=ratio, modes=len(modes), **base)


__all__ = ["Estimate", "Measurements", "PLAN_COLUMNS", "estimate", "iqm", "measure", "median",
           "median_ci", "train_rate", "wire_bytes"]
