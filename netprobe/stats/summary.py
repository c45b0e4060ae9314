"""Quantile summaries of one interval's samples.

numpy's default (linear interpolation, type 7) quantiles, so any result can
be checked against numpy.percentile. Values keep the unit of the input.
"""
import math

import numpy as np

# summary key -> percentile
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def quantiles(values, qs):
    """Percentiles `qs` (0..100) of `values`; NaN for each when there are none."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return [math.nan] * len(qs)
    return [float(x) for x in np.percentile(a, qs)]


def summarize(values):
    """count, min, mean, p50, p90, p99, p999, max of `values` (floats; NaN if empty)."""
    a = np.asarray(values, dtype=np.float64)
    out = {"count": int(a.size)}
    if a.size == 0:
        out.update({k: math.nan for k in ("min", "mean", *PERCENTILES, "max")})
        return out
    out["min"] = float(a.min())
    out["mean"] = float(a.mean())
    out.update(zip(PERCENTILES, quantiles(a, list(PERCENTILES.values())), strict=True))
    out["max"] = float(a.max())
    return out
