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


# -- weighted quantiles (cgmon's seven-number summary) ----------------------------------------------

SEVEN_NUMBER_PS = (0.02, 0.09, 0.25, 0.50, 0.75, 0.91, 0.98)
CUMULANT_KINDS = ("lininterp", "empirical")


def weighted_quantiles(values, weights, ps, kind="lininterp"):
    """Quantiles at probabilities `ps` (0..1) of `values` with `weights` (None: all 1).

    gonum stat.Quantile, as cgmon uses it: sort the values with their
    weights, W = sum of weights, target = p * W, i = the first index whose
    cumulative weight reaches the target. `empirical` returns x[i] (numpy's
    "inverted_cdf" with weights); `lininterp` returns x[0] for i = 0, else
    t * x[i-1] + (1 - t) * x[i] with t = (cum[i] - target) / w[i] (with unit
    weights that is numpy's "interpolated_inverted_cdf"). NaN for each p when
    there are no values.
    """
    if kind not in CUMULANT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CUMULANT_KINDS)} (got {kind!r})")
    x = np.asarray(values, dtype=np.float64)
    p = np.asarray(ps, dtype=np.float64)
    if x.size <= 1:                  # no values: NaN; one value: that value at every p
        return np.full(p.shape, x[0] if x.size else math.nan)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != x.shape or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, >= 0, one per value")
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    cum = np.cumsum(w)
    target = p * cum[-1]
    i = np.minimum(np.searchsorted(cum, target, side="left"), x.size - 1)
    if kind == "empirical":
        return x[i]
    prev = x[np.maximum(i - 1, 0)]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(w[i] > 0, (cum[i] - target) / np.where(w[i] > 0, w[i], 1.0), 0.0)
    return np.where(i == 0, x[0], t * prev + (1 - t) * x[i])


def seven_number(values, weights=None, kind="lininterp"):
    """The seven-number summary: quantiles at 2, 9, 25, 50, 75, 91 and 98 % (list of floats)."""
    return [float(v) for v in weighted_quantiles(values, weights, SEVEN_NUMBER_PS, kind)]
