"""Histogram buckets of a probe's delay or RTT samples, as exporters want them.

A probe with bucket bounds configured adds one field per interval,
{"le": bounds (s), "n": samples <= each bound, "count": samples, "sum": their sum (s)},
which [output.prometheus] accumulates into a histogram.
"""
import numpy as np

from netprobe.units import parse_duration, show

MAX_BOUNDS = 32


def parse_bounds(texts):
    """["100us", "1ms", ...] -> increasing tuple of seconds; ValueError saying what is wrong."""
    if len(texts) > MAX_BOUNDS:
        raise ValueError(f"{len(texts)} bounds; at most {MAX_BOUNDS}")
    out = []
    for text in texts:
        v = float(f"{parse_duration(text):.12g}")       # 100us is 0.0001, not 9.999999999999999e-05
        if v <= 0:
            raise ValueError(f"{show(text)} is not above 0")
        if out and v <= out[-1]:
            raise ValueError(f"{show(text)} is not above the bound before it (list the bounds in increasing order)")
        out.append(v)
    return tuple(out)


def cumulative(values, bounds):
    """How many of `values` are <= each bound."""
    return [int(n) for n in np.searchsorted(np.sort(np.asarray(values, dtype=np.float64)), bounds, side="right")]


def hist_field(bounds, le_counts, count, total):
    """The record field of one interval's histogram."""
    return {"le": list(bounds), "n": [int(n) for n in le_counts], "count": int(count), "sum": float(total)}
