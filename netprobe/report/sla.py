"""SLA compliance and the breach table from an Archive (sans-IO: arrays in, tables out).

Each RESULT covers the `interval` seconds before its stamp (less when the previous
interval ended later: a restart's short interval never counts twice). A kind that
writes one RESULT per estimate (capacity) covers the time since its previous RESULT,
or since the daemon (re)started or a GAP ended in between. Per probe and direction or
path, and per SLA metric:

  measured  time covered by intervals that judged the metric (a value, not withheld)
  held      the part of it whose value met the SLA
  held %    held / measured: the share of measured time the SLA held
  not measured %  (period - measured) / period: GAPs, missing intervals, time before the
            probe started or after it stopped. Never counted as compliant.

A breach runs from the start of the first bad interval before its BREACH record to the
end of the last bad interval before its CLEAR (the probe's hysteresis adds breach_after
intervals of delay to the BREACH record itself); metrics no interval judges (stale,
connection, path_blackhole) use the records' own times. Worst value: the worst interval
of the span, else the worst BREACH/CLEAR value.
"""
import dataclasses
import importlib
import math

import numpy as np

from netprobe import units
from netprobe.config.schema import fields as schema_fields
from netprobe.results import BREACH, CLEAR, iso_time

SLA_KINDS = ("throughput", "oneway", "capacity", "host")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One SLA of a series: the RESULT field judged, `op` ('>=', '<=' or '==') and threshold."""
    metric: str
    field: str
    op: str
    threshold: float
    unit: str

    def text(self):
        if self.op == "==":
            return "yes"
        if self.unit == "ratio":
            return f"{self.op}{self.threshold * 100:g}% of the rate"
        return f"{self.op}{_fmt(self.threshold, self.unit)}"


@dataclasses.dataclass
class Compliance:
    metric: str
    sla: str
    measured: float          # s
    held: float              # s
    not_measured: float      # s
    period: float            # s

    @property
    def held_pct(self):
        return 100.0 * self.held / self.measured if self.measured > 0 else math.nan

    @property
    def not_measured_pct(self):
        return 100.0 * self.not_measured / self.period if self.period > 0 else math.nan


@dataclasses.dataclass
class PathReport:
    kind: str
    name: str
    sub: str
    interval: float
    intervals: int
    compliance: list
    unmeasured: list         # (start, end, reason)


@dataclasses.dataclass
class Breach:
    kind: str
    name: str
    sub: str
    metric: str
    start: float
    end: float               # NaN: still open at the end of the period
    worst: str
    sla: str

    @property
    def duration(self):
        return self.end - self.start


@dataclasses.dataclass
class Report:
    start: float
    end: float
    paths: list
    breaches: list
    quality: list


def defaults(kind):
    """The kind's config defaults (its Config dataclass), {} for a kind not known here."""
    try:
        cls = importlib.import_module(f"netprobe.probes.{kind}.config").Config
    except (ImportError, AttributeError):
        return {}
    return {f.name: f.default for f in schema_fields(cls) if f.default is not dataclasses.MISSING}


def metrics(kind, sub, cfg):
    """The SLA metrics a series of `kind` is judged by under config table `cfg`."""
    c = {**defaults(kind), **{k: v for k, v in cfg.items() if v is not None}}
    out = []
    if kind == "throughput":
        down = sub == "b->a"

        def pick(key):
            v = c.get(f"{key}_down") if down else None
            return v if v is not None else c.get(key)
        if pick("min_ratio") is not None:
            out.append(Metric("rate", "ratio", ">=", float(pick("min_ratio")), "ratio"))
        if pick("max_rtt") is not None:
            out.append(Metric("rtt", "rtt", "<=", float(pick("max_rtt")), "s"))
        if pick("max_retrans_pct") is not None:
            out.append(Metric("retrans", "retrans_pct", "<=", float(pick("max_retrans_pct")), "%"))
    elif kind == "oneway" and sub == "":
        if c.get("max_loss_pct") is not None:
            out.append(Metric("loss", "loss", "<=", float(c["max_loss_pct"]), "%"))
        if c.get("max_delay_p99") is not None:
            out.append(Metric("delay_p99", "delay_p99", "<=", float(c["max_delay_p99"]), "s"))
    elif kind == "capacity" and c.get("min_capacity") is not None:
        out.append(Metric("capacity", "capacity", ">=", float(c["min_capacity"]), "bit/s"))
    elif kind == "host":
        if c.get("max_timer_p99") is not None:
            out.append(Metric("timer_p99", "late_p99", "<=", float(c["max_timer_p99"]), "s"))
        if c.get("require_clock_sync"):
            out.append(Metric("clock_sync", "clock_synced", "==", 1.0, ""))
    return out


def verdicts(series, metric):
    """(judged, good) boolean arrays per interval of `series` for `metric`."""
    v = series.cols.get(metric.field)
    if v is None:
        n = len(series.ts)
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    judged = ~np.isnan(v)
    if metric.metric == "rate" and "limited_by" in series.cols:
        judged &= series.cols["limited_by"] != "sender"       # the sender's own stall: withheld
    with np.errstate(invalid="ignore"):
        good = v >= metric.threshold if metric.op == ">=" else v <= metric.threshold if metric.op == "<=" \
            else v == metric.threshold
    return judged, judged & good


def span_starts(series, interval, restarts=()):
    """Where each RESULT's span (lo, ts] begins. A periodic kind's covers the interval before
    its stamp, trimmed at the previous stamp, so spans never overlap; a kind that reports per
    estimate covers the time since its previous RESULT or since the latest of `restarts`
    (HEADER starts, GAP ends) after it; its first, without either, one interval."""
    ts = series.ts
    prev = np.r_[-np.inf, ts[:-1]]
    if _periodic(series.kind):
        return np.maximum(ts - interval, prev)
    r = np.sort(np.asarray(restarts, dtype=np.float64))
    k = np.searchsorted(r, ts, side="left") - 1
    lo = np.maximum(prev, np.where(k >= 0, r[np.maximum(k, 0)] if len(r) else -np.inf, -np.inf))
    return np.where(np.isinf(lo), ts - interval, lo)


def coverage(lo, ts, start, end):
    """Seconds of [start, end] each span (lo, ts] covers."""
    return np.clip(np.minimum(ts, end) - np.maximum(lo, start), 0, None)


def interval_of(series, cfg):
    """The span one RESULT covers: the configured interval, or for a kind that reports
    when it has a result (capacity: one per estimate) the median spacing of its stamps."""
    i = cfg.get("interval")
    if isinstance(i, (int, float)) and i > 0 and _periodic(series.kind):
        return float(i)
    d = np.diff(series.ts)
    return float(np.median(d)) if len(d) else 10.0


def _periodic(kind):
    try:
        return bool(importlib.import_module(f"netprobe.probes.{kind}.config").Config.periodic)
    except (ImportError, AttributeError):
        return True


def hms(s):
    """Seconds as [Nd ]HH:MM:SS."""
    if not math.isfinite(s):
        return "open"
    d, rest = divmod(round(s), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{sec:02d}"


def build(archive, start=None, end=None, probe=None):
    """The Report of `archive` over [start, end] (default: the span it covers)."""
    series = [s for s in archive.series if probe is None or s.name == probe]
    if start is None:
        firsts = [s.ts[0] - interval_of(s, archive.config(s.name)) for s in series if len(s.ts)]
        firsts += [h["started"] for h in archive.headers]
        start = min(firsts) if firsts else 0.0
    if end is None:
        lasts = [s.ts[-1] for s in series if len(s.ts)]
        end = max(lasts) if lasts else start
    period = max(end - start, 0.0)
    gaps = [g for g in archive.gaps if (probe is None or g["name"] == probe)
            and g["end"] > start and g["start"] < end]
    paths, judged_by = [], {}
    for s in series:
        cfg = archive.config(s.name)
        interval = interval_of(s, cfg)
        lo = span_starts(s, interval, _restarts(archive, s.name))
        inside = (s.ts > start) & (lo < end)
        ts = s.ts[inside]
        cov = coverage(lo[inside], ts, start, end)
        comp = []
        for m in metrics(s.kind, s.sub, cfg):
            judged, good = verdicts(s, m)
            judged, good = judged[inside], good[inside]
            measured = float(cov[judged].sum())
            comp.append(Compliance(m.metric, m.text(), measured, float(cov[good].sum()), period - measured, period))
            judged_by[(s.name, s.sub, m.metric)] = (s, m, interval, lo)
        paths.append(PathReport(s.kind, s.name, s.sub, interval, int(inside.sum()), comp,
                                _unmeasured(lo[inside], ts, interval, start, end,
                                            [g for g in gaps if g["name"] == s.name])))
    breaches = _breaches(archive, judged_by, start, end, probe)
    quality = list(archive.quality)
    for g in gaps:
        quality.append(f"GAP {g['name']}: {hms(g['end'] - g['start'])} not measured "
                       f"({iso_time(g['start'])} to {iso_time(g['end'])}): {g.get('reason', 'no reason given')}")
    for p in paths:
        if p.kind == "oneway" and p.sub:
            continue                        # a port's spans are its probe's: said once, for the probe
        for a, b, why in p.unmeasured:
            if why == "missing":
                quality.append(f"{p.name}{' ' + p.sub if p.sub else ''}: no intervals for "
                               f"{hms(b - a)} ({iso_time(a)} to {iso_time(b)}) and no GAP record says why")
    return Report(start, end, paths, breaches, quality)


def _restarts(archive, name):
    """Times a probe's RESULTs start again from: the daemon's starts and the ends of its GAPs."""
    return [h["started"] for h in archive.headers] + [g["end"] for g in archive.gaps if g["name"] == name]


def _unmeasured(lo, ts, interval, start, end, gaps):
    """Spans of [start, end] no RESULT covers, longer than half an interval: (start, end, reason)."""
    edges_lo = np.r_[start, ts]
    edges_hi = np.r_[lo, end]
    out = []
    long = np.flatnonzero(edges_hi - edges_lo > interval / 2)
    for a, b in zip(edges_lo[long], edges_hi[long], strict=True):
        reasons = [g.get("reason", "") for g in gaps if g["start"] < b and g["end"] > a]
        out.append((float(a), float(b), "; ".join(r for r in reasons if r) or "missing"))
    return out


def _sub_of(event):
    if isinstance(event.get("dir"), str):
        return event["dir"]
    return ""


def _breaches(archive, judged_by, start, end, probe):
    open_, out = {}, []
    for e in archive.events:
        if probe is not None and e["name"] != probe:
            continue
        key = (e["name"], _sub_of(e), str(e.get("metric")), str(e.get("port", "")))
        if e["type"] == BREACH and key not in open_:
            open_[key] = e
        elif e["type"] == CLEAR and key in open_:
            b = open_.pop(key)
            out.append(_breach(b, e, judged_by, key))
    out.extend(_breach(b, None, judged_by, key) for key, b in open_.items())
    out = [b for b in out if (math.isnan(b.end) or b.end > start) and b.start < end]
    out.sort(key=lambda b: (b.start, b.name))
    return out


def _breach(b, c, judged_by, key):
    name, sub, metric, port = key
    kind = b.get("probe", "")
    op = b.get("sla_op", "")
    unit = (b.get("units") or {}).get("value", "")
    sla = f"{op}{_fmt(b.get('threshold'), unit)}" if op else str(b.get("threshold"))
    label = sub or (f"port {port}" if port not in ("", "None") else "")
    start, stop = b["ts"], (c["ts"] if c is not None else math.nan)
    values = [x.get("value") for x in (b, c) if x is not None and isinstance(x.get("value"), (int, float))]
    worst = (min(values) if op == ">=" else max(values)) if values else b.get("value")
    worst_text = _fmt(worst, unit) if isinstance(worst, (int, float)) else str(worst)
    found = judged_by.get((name, sub, metric))
    if found is not None:
        s, m, interval, lo = found
        judged, good = verdicts(s, m)
        bad = judged & ~good
        i = np.searchsorted(s.ts, start, side="right") - 1       # the last interval at or before BREACH
        while i >= 0 and not bad[i]:
            i -= 1
        if i >= 0:
            j = i
            # back over bad spans that follow on (at most half an interval apart)
            while j > 0 and bad[j - 1] and lo[j] - s.ts[j - 1] <= 0.5 * interval:
                j -= 1
            start = float(lo[j])
            last = len(s.ts) - 1 if c is None else np.searchsorted(s.ts, c["ts"], side="right") - 1
            k = last
            while k > i and not bad[k]:
                k -= 1
            if c is not None:
                stop = float(s.ts[k])
            vals = s.cols[m.field][j:k + 1][bad[j:k + 1]]
            if len(vals):
                w = vals.min() if m.op == ">=" else vals.max()
                if m.metric == "rate":            # the ratio judged; the rate shown
                    w = s.cols["rate"][j:k + 1][bad[j:k + 1]].min()
                    worst_text = _fmt(w, "bit/s")
                else:
                    worst_text = _fmt(w, m.unit)
    return Breach(kind, name, label, metric, float(start), float(stop), worst_text, sla)


def _fmt(v, unit):
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "yes" if v is True else "no" if v is False else str(v)
    if unit == "bit/s":
        return units.format_rate(v)
    if unit == "s":
        return units.format_duration(v)
    if unit == "%":
        return f"{v:.3g}%"
    return f"{v:.4g}{unit if unit not in ('ratio',) else ''}"


def to_json(report):
    """The Report as plain JSON-able data (times ISO 8601 UTC, durations in s)."""
    return {
        "start": iso_time(report.start), "end": iso_time(report.end),
        "paths": [{"kind": p.kind, "name": p.name, "path": p.sub, "interval_s": p.interval, "intervals": p.intervals,
                   "compliance": [{"metric": c.metric, "sla": c.sla, "measured_s": round(c.measured, 3),
                                   "held_s": round(c.held, 3), "held_pct": _num(c.held_pct),
                                   "not_measured_s": round(c.not_measured, 3),
                                   "not_measured_pct": _num(c.not_measured_pct)} for c in p.compliance],
                   "unmeasured": [{"start": iso_time(a), "end": iso_time(b), "reason": r} for a, b, r in p.unmeasured]}
                  for p in report.paths],
        "breaches": [{"kind": b.kind, "name": b.name, "path": b.sub, "metric": b.metric, "start": iso_time(b.start),
                      "end": None if math.isnan(b.end) else iso_time(b.end),
                      "duration_s": None if math.isnan(b.end) else round(b.duration, 3),
                      "worst": b.worst, "sla": b.sla} for b in report.breaches],
        "data_quality": report.quality,
    }


def _num(x):
    return None if math.isnan(x) else round(x, 4)
