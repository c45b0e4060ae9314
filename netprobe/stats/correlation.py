"""Correlation of time series: weighted Pearson and (weighted) Spearman.

Every function returns (r, reason): r a float in [-1, 1], or None with the
reason it is undefined ("too_few_samples": fewer than 2 points, or all the
weight on fewer than 2; "constant_series": one side does not vary). cgmon
encoded these as -3 and -2; netprobe.probes.flows.analysis maps them back
for its cgmon-compatible output.
"""
import math

import numpy as np

TOO_FEW = "too_few_samples"
CONSTANT = "constant_series"


def _arrays(x, y, w):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-d and the same length")
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    if w.shape != x.shape or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, >= 0, one per point")
    return x, y, w


def weighted_pearson(x, y, w=None):
    """r = sum w(x-mx)(y-my) / sqrt(sum w(x-mx)^2 * sum w(y-my)^2), weighted means mx, my.

    Two-pass (centred) sums, so large offsets (bytes counters, ns times) do
    not cancel catastrophically. Returns (r, None) or (None, reason).
    """
    x, y, w = _arrays(x, y, w)
    if x.size < 2 or np.count_nonzero(w) < 2:
        return None, TOO_FEW
    sw = w.sum()
    dx = x - (w * x).sum() / sw
    dy = y - (w * y).sum() / sw
    sxx, syy = float((w * dx * dx).sum()), float((w * dy * dy).sum())
    if not (sxx > 0 and syy > 0):
        return None, CONSTANT
    prod = sxx * syy                # one root where representable (r = -1.0 stays -1.0), else one each
    r = float((w * dx * dy).sum()) / (math.sqrt(prod) if 0.0 < prod < math.inf else math.sqrt(sxx) * math.sqrt(syy))
    if not np.isfinite(r):
        return None, CONSTANT
    return max(-1.0, min(1.0, r)), None


def weighted_ranks(x, w=None):
    """Mid-ranks by weight: the weight below a value plus half the weight of its ties, plus 1/2.

    With unit weights these are the usual average ranks (scipy.stats.rankdata).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    if not xs.size:
        return np.empty(0)
    new_group = np.empty(xs.size, bool)
    new_group[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    group_w = np.add.reduceat(ws, starts)
    mid = np.cumsum(group_w) - group_w / 2 + 0.5
    ranks = np.empty_like(x)
    ranks[order] = np.repeat(mid, np.diff(np.append(starts, xs.size)))
    return ranks


def spearman(x, y, w=None):
    """Spearman's rank correlation: Pearson over (weighted) mid-ranks, weighted by w.

    Unweighted it equals scipy.stats.spearmanr; with integer weights it
    equals spearmanr over the points repeated that many times.
    """
    x, y, w = _arrays(x, y, w)
    if x.size < 2 or np.count_nonzero(w) < 2:
        return None, TOO_FEW
    return weighted_pearson(weighted_ranks(x, w), weighted_ranks(y, w), w)
