"""Sans-IO analysis of throughput samples: per-direction window, metrics, SLA verdicts.

Rows are TCP_INFO readings in the column order of samples.py, taken on the
SENDER's socket of a direction. The delivered-bytes curve is `bytes_acked`,
cumulative per connection. Only rows of the current connection (`epoch`)
are analysed: counters restart at 0 on reconnect, and a window that mixed
epochs would correlate a dead connection with a live one (tcpxfer did).

Unlike tcpxfer, the achieved rate is compared with the SLA rate: a steady
flow at 10 % of the SLA has Pearson r ~ 1 but a ratio of 0.1. The angle puts
both on one picture: on axes normalised by the SLA (x = t/window,
y = bits/(sla_rate*window)) the SLA line has slope 1, the fitted line slope
`ratio`, and angle = atan(ratio) - pi/4 (negative = under the SLA).

Everything is in base units (bit/s, s, bytes, percent); time comes in as an
explicit `now_ns` on the rows' clock (CLOCK_MONOTONIC).
"""
import math
from dataclasses import dataclass

import numpy as np

from netprobe.probes.throughput.samples import COL, NCOLS
from netprobe.results import Quantity, percent, rate, seconds

# for_window(): the window's rows at the sampling period, plus slack for timer jitter and batched arrival.
HEADROOM = 1.25
EXTRA_ROWS = 16
MIN_SAMPLES = 3
MIN_SPAN_NS = 1_000_000_000
LIMITED_SHARE = 0.5          # share of busy time that names the limiter
BUSY_NETWORK = 0.5          # share of the window with data in flight above which a short flow is the network's doing
NO_MIN_RTT = 0xFFFFFFFF      # tcpi_min_rtt before the first RTT sample (~0U)

_T, _EPOCH = COL["t_ns"], COL["epoch"]


class SampleWindow:
    """Ring of one direction's sample rows, holding only the current epoch.

    Memory is one preallocated int64 array of `capacity` rows; when more
    arrive, the oldest are overwritten. A row with a newer epoch drops every
    row before it; rows of an older epoch, or of the epoch that
    mark_disconnected() closed, are refused and counted in `dropped`.
    Epochs must increase on every new connection (the runner stamps them).
    """

    def __init__(self, capacity):
        if capacity < MIN_SAMPLES:
            raise ValueError(f"capacity must be at least {MIN_SAMPLES} rows")
        self._buf = np.zeros((int(capacity), NCOLS), dtype=np.int64)
        self._start = 0
        self._count = 0
        self.epoch = None             # epoch of the rows held (or last held)
        self.closed = False           # the current epoch's connection is gone
        self.disconnected_ns = None   # now_ns given to mark_disconnected, until a new epoch arrives
        self.dropped = 0              # rows refused for not being of the current epoch

    @classmethod
    def for_window(cls, window_s, sample_interval_s):
        """A ring sized for `window_s` of samples every `sample_interval_s`, with headroom."""
        return cls(math.ceil(window_s / sample_interval_s * HEADROOM) + EXTRA_ROWS)

    @property
    def capacity(self):
        return self._buf.shape[0]

    @property
    def nbytes(self):
        return self._buf.nbytes

    def __len__(self):
        return self._count

    def add(self, rows):
        """Append a 2-D array of rows (shape (n, NCOLS)), oldest first."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != NCOLS:
            raise ValueError(f"rows must have shape (n, {NCOLS}), not {rows.shape}")
        if rows.shape[0] == 0:
            return
        epochs = rows[:, _EPOCH]
        newest = int(epochs.max())
        if self.epoch is not None and (newest < self.epoch or (newest == self.epoch and self.closed)):
            self.dropped += rows.shape[0]
            return
        if self.epoch is None or newest > self.epoch:
            self.clear()
            self.epoch, self.closed, self.disconnected_ns = newest, False, None
        keep = epochs == newest
        self.dropped += rows.shape[0] - int(np.count_nonzero(keep))
        self._append(rows[keep])

    def _append(self, rows):
        cap = self.capacity
        if rows.shape[0] >= cap:
            self._buf[:] = rows[-cap:]
            self._start, self._count = 0, cap
            return
        end = (self._start + self._count) % cap
        first = min(rows.shape[0], cap - end)
        self._buf[end:end + first] = rows[:first]
        self._buf[:rows.shape[0] - first] = rows[first:]
        overflow = max(0, self._count + rows.shape[0] - cap)
        self._start = (self._start + overflow) % cap
        self._count = min(cap, self._count + rows.shape[0])

    def rows(self):
        """The rows held, oldest first (a copy)."""
        idx = (self._start + np.arange(self._count)) % self.capacity
        return self._buf[idx]

    def clear(self):
        """Drop every row; the epoch stays current."""
        self._start = self._count = 0

    def mark_disconnected(self, now_ns):
        """The connection is gone: drop its rows and refuse late ones of its epoch."""
        self.clear()
        self.closed = True
        self.disconnected_ns = now_ns


def _slope(x, y):
    """Least-squares slope of y on x (x must not be constant)."""
    dx = x - x.mean()
    return float(np.dot(dx, y - y.mean()) / np.dot(dx, dx))


def _pearson(x, y):
    """Pearson r of x and y; None when y does not vary (r is undefined)."""
    dx, dy = x - x.mean(), y - y.mean()
    syy = float(np.dot(dy, dy))
    if syy == 0.0:
        return None
    r = float(np.dot(dx, dy)) / math.sqrt(float(np.dot(dx, dx)) * syy)
    return max(-1.0, min(1.0, r))


def _delta(rows, name):
    col = rows[:, COL[name]]
    return int(col[-1] - col[0])


def analyze(window_rows, now_ns, window_s, sla_rate_bps, *, min_ratio=0.95):
    """Metrics of the rows in [now - window, now] of the newest epoch there; None if too few.

    Needs >= 3 samples spanning >= 1 s, so no verdict is ever drawn from
    too little data. `min_ratio` is what counts as "short" for limited_by
    (pass the SLA's, so limited_by explains a bad `rate` verdict).
    """
    if sla_rate_bps <= 0:
        raise ValueError("sla_rate_bps must be positive")
    rows = np.asarray(window_rows, dtype=np.int64).reshape(-1, NCOLS)
    t = rows[:, _T]
    rows = rows[(t >= now_ns - round(window_s * 1e9)) & (t <= now_ns)]
    if rows.shape[0] == 0:
        return None
    rows = rows[rows[:, _EPOCH] == rows[:, _EPOCH].max()]
    rows = rows[np.argsort(rows[:, _T], kind="stable")]
    t = rows[:, _T]
    if rows.shape[0] < MIN_SAMPLES or t[-1] - t[0] < MIN_SPAN_NS:
        return None

    x = (t - t[0]) / 1e9
    acked = rows[:, COL["bytes_acked"]].astype(np.float64)
    achieved = _slope(x, acked) * 8
    ratio = achieved / sla_rate_bps
    delivered = _delta(rows, "bytes_acked")
    span = float(x[-1])

    rtt_us = rows[:, COL["rtt_us"]]
    rtt = rtt_us[rtt_us > 0] / 1e6                  # 0: no RTT sample on the socket yet
    min_rtt_us = rows[:, COL["min_rtt_us"]]
    min_rtt_us = min_rtt_us[(min_rtt_us > 0) & (min_rtt_us != NO_MIN_RTT)]
    rtt_mean = float(rtt.mean()) if rtt.size else math.nan
    rtt_p50, rtt_p99 = (float(v) for v in np.percentile(rtt, [50, 99])) if rtt.size else (math.nan, math.nan)
    min_rtt = float(min_rtt_us.min()) / 1e6 if min_rtt_us.size else math.nan

    retrans_bytes = _delta(rows, "bytes_retrans")
    busy = _delta(rows, "busy_time_us")
    rwnd_share = _delta(rows, "rwnd_limited_us") / busy if busy > 0 else None
    sndbuf_share = _delta(rows, "sndbuf_limited_us") / busy if busy > 0 else None
    app_rate = _slope(x, rows[:, COL["app_bytes"]].astype(np.float64)) * 8
    # With TCP_NOTSENT_LOWAT a network-limited sender also writes less (EAGAIN), so
    # app_rate alone cannot blame our host; the kernel's busy time (data in flight) can.
    busy_share = min(1.0, busy / 1e6 / span) if span > 0 else None
    short = ratio < min_ratio
    if rwnd_share is not None and rwnd_share > LIMITED_SHARE:
        limited_by = "receive_window"
    elif sndbuf_share is not None and sndbuf_share > LIMITED_SHARE:
        limited_by = "send_buffer"
    elif short and busy_share is not None and busy_share < BUSY_NETWORK:
        limited_by = "sender"          # data was rarely in flight: we did not feed the socket
    elif short:
        limited_by = "network"         # data was in flight all along and still arrived short
    else:
        limited_by = "none"

    return {
        "epoch": int(rows[0, _EPOCH]),
        "samples": int(rows.shape[0]),
        "span": span,
        "delivered": delivered,
        "rate": achieved,
        "rate_simple": delivered * 8 / span,
        "ratio": ratio,
        "fitness": _pearson(x, acked),
        "angle": math.atan(ratio) - math.pi / 4,
        "app_rate": app_rate,
        "rtt_mean": rtt_mean,
        "rtt_p50": rtt_p50,
        "rtt_p99": rtt_p99,
        "min_rtt": min_rtt,
        "rtt_rise": rtt_mean - min_rtt,
        "retrans": _delta(rows, "total_retrans"),
        "retrans_bytes": retrans_bytes,
        "retrans_pct": retrans_bytes / delivered * 100 if delivered > 0 else 0.0,
        "dsack": _delta(rows, "dsack_dups"),
        "busy_time": busy / 1e6,
        "rwnd_share": rwnd_share,
        "sndbuf_share": sndbuf_share,
        "limited_by": limited_by,
    }


@dataclass(frozen=True)
class SLA:
    """One direction's SLA: payload rate (bit/s) and optional limits; None = not judged."""
    rate_bps: float
    min_ratio: float = 0.95
    max_rtt: float | None = None           # s, judged on the window's mean RTT
    max_retrans_pct: float | None = None   # percent of delivered bytes
    min_fitness: float | None = None       # Pearson r of time vs delivered bytes
    max_angle: float | None = None         # radians, judged on |angle|


@dataclass(frozen=True)
class Verdict:
    """One metric's SLA check for one window of one direction."""
    metric: str
    bad: bool
    value: Quantity
    op: str
    threshold: Quantity
    dir: str

    @property
    def key(self):
        """Hysteresis key: each (direction, metric) breaches and clears on its own."""
        return (self.dir, self.metric)


# The metrics that measure how the bytes were delivered: they are what a saturated ACK path distorts.
DELIVERY_METRICS = ("rate", "fitness", "angle")


class AckPathGuard:
    """Tells when a direction's delivery verdicts would blame it for the other direction's queue.

    Each direction's ACKs travel the path the other direction's data takes. When the
    other direction is network-limited below its SLA, it keeps that path's bottleneck
    queue full, and this direction's ACKs wait and drop there: its TCP slows although
    its own path is fine (cwnd must grow to cover the inflated RTT; bbr keeps cwnd
    sized by the old min RTT for up to 10 s; lost ACKs cause spurious timeouts).
    Its rate, fitness and angle then measure the other path, so they are withheld
    while its window overlaps a time the other direction saturated the path, unless
    this direction delivers an even smaller share of its SLA: then it is judged, so a
    path limited both ways still breaches in its worse direction. RTT and
    retransmit verdicts are never withheld.
    """

    def __init__(self, window_s):
        self.window_ns = round(window_s * 1e9)
        self.saturated = {}          # direction -> (now_ns, ratio) of its latest saturating window

    def update(self, direction, metrics, sla, now_ns):
        """Record whether `direction`'s window at now_ns saturated its path."""
        if metrics is not None and metrics["limited_by"] == "network" and metrics["ratio"] < sla.min_ratio:
            self.saturated[direction] = (now_ns, metrics["ratio"])

    def withheld_by(self, direction, metrics, now_ns):
        """The other direction whose queue this window's delivery reflects, or None."""
        if metrics is None:
            return None
        for other, (t, ratio) in self.saturated.items():
            if other != direction and t >= now_ns - self.window_ns and metrics["ratio"] > ratio:
                return other
        return None


def verdicts(metrics, sla, direction, *, withhold=()):
    """Verdicts (rate, rtt, retrans, fitness, angle) for the SLAs set, except the metrics in
    `withhold`; none without metrics.

    A window the sending host itself did not feed (limited_by "sender": it rarely had data
    in flight, e.g. its CPU was taken) measures that host, not the path: its delivery
    verdicts are withheld too, and its RESULT line says limited_by=sender.
    """
    if metrics is None:
        return []
    if metrics["limited_by"] == "sender":
        withhold = (*withhold, *DELIVERY_METRICS)
    out = []

    def check(metric, value, op, threshold):
        if metric in withhold:
            return
        bad = value.value < threshold.value if op == ">=" else value.value > threshold.value
        out.append(Verdict(metric, bad, value, op, threshold, direction))

    check("rate", rate(metrics["rate"]), ">=", rate(sla.min_ratio * sla.rate_bps))
    if sla.max_rtt is not None and not math.isnan(metrics["rtt_mean"]):
        check("rtt", seconds(metrics["rtt_mean"]), "<=", seconds(sla.max_rtt))
    if sla.max_retrans_pct is not None:
        check("retrans", percent(metrics["retrans_pct"]), "<=", percent(sla.max_retrans_pct))
    if sla.min_fitness is not None and metrics["fitness"] is not None:
        check("fitness", Quantity(metrics["fitness"], ""), ">=", Quantity(float(sla.min_fitness), ""))
    if sla.max_angle is not None:
        check("angle", Quantity(abs(metrics["angle"]), "rad"), "<=", Quantity(float(sla.max_angle), "rad"))
    return out
