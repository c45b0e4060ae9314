"""Histogram mode detection over sorted measurements: pathrate 2.4.1's `get_mode`.

A mode is found by taking the densest bin of width `w` among the values not
yet classified (its "modal bin"), then growing a "bell" around it: a window
is slid outwards one position at a time, and the bell extends over it while
the best neighbouring window holds fewer than (1 + tolerance) times the
current window's count, i.e. while the histogram keeps falling away from the
mode. A neighbour that rises again belongs to another mode. The whole bell
is then marked classified and the search repeats until every value belongs
to some bell. Bells whose modal bin holds more than `noise` values are
reported, strongest first in the order found, with their kurtosis
(m4 / m2**2, population moments: 3 for a normal bell, larger when peaked).

This is pathrate's rule (tolerance 10 %, noise 15, ties to the first
window), not loco's variant, whose tolerance is truncated to an integer
(0 for any bin under 67 values) and whose window scans skip edge values.
"""
from dataclasses import dataclass

import numpy as np

TOLERANCE = 0.10      # pathrate BIN_CNT_TOLER_kernel_percent
NOISE = 15            # pathrate BIN_NOISE: a modal bin needs more values than this


@dataclass(frozen=True)
class Mode:
    lo: float             # modal bin: lowest and highest value in it
    hi: float
    count: int            # values in the modal bin
    bell_lo: float        # the bell around it: lowest and highest value
    bell_hi: float
    bell_count: int
    kurtosis: float       # of the bell's values (population m4 / m2**2)

    def merit(self, total):
        """pathrate 2.3.2+ figure of merit: kurtosis times the modal bin's share of all values."""
        return self.kurtosis * self.count / total if total else 0.0


def _left_counts(x, idx, w):
    """Values x[j], j <= i, with x[j] >= x[i] - w (x sorted), for each i in idx: windows ending at i."""
    return idx - np.searchsorted(x, x[idx] - w, side="left") + 1


def _right_counts(x, idx, w):
    """Values x[j], j >= i, with x[j] <= x[i] + w, for each i in idx: windows starting at i."""
    return np.searchsorted(x, x[idx] + w, side="right") - idx


def _modal_bin(x, free, w):
    """(lo, count) of the densest run of consecutive unclassified values within w; first max wins."""
    n = len(x)
    end = np.searchsorted(x, x + w, side="right")            # first index beyond x[i] + w
    # first classified index at or after i (n if none): a run of free values stops there
    blocked = np.where(~free, np.arange(n), n)
    stop = np.minimum.accumulate(blocked[::-1])[::-1]
    counts = np.where(free, np.minimum(end, stop) - np.arange(n), 0)
    lo = int(np.argmax(counts))
    return lo, int(counts[lo])


def kurtosis(values):
    """Population kurtosis m4 / m2**2 (scipy.stats.kurtosis(fisher=False)); None if undefined."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 3:
        return None
    d = a - a.mean()
    m2 = float(np.mean(d * d))
    if m2 <= 0.0:
        return None
    return float(np.mean(d ** 4)) / (m2 * m2)


def _one_mode(x, free, w, tolerance, noise):
    """Classify one bell; returns a Mode, or None for a bell too small to matter."""
    n = len(x)
    lo, cnt = _modal_bin(x, free, w)
    hi = lo + cnt - 1
    mode_lo, mode_hi, mode_cnt = x[lo], x[hi], cnt
    bell_lo, bell_hi = lo, hi
    # grow left: candidate windows end at hi-1 .. lo-1 (each ends left of the current one)
    c_lo, c_hi, c = lo, hi, cnt
    while c_lo > 0:
        idx = np.arange(max(c_lo - 1, 0), c_hi)
        if not len(idx):
            break
        counts = _left_counts(x, idx, w)
        best = int(counts.max())
        best_i = int(idx[np.argmax(counts == best)])      # ties go to the leftmost window
        if best >= c + tolerance * c:
            break
        c_hi, c_lo, c = best_i, best_i - best + 1, best
        bell_lo = min(bell_lo, c_lo)
    # grow right, symmetrically
    c_lo, c_hi, c = lo, hi, cnt
    while c_hi < n - 1:
        idx = np.arange(c_lo + 1, min(c_hi + 2, n))
        if not len(idx):
            break
        counts = _right_counts(x, idx, w)
        best = int(counts.max())
        best_i = int(idx[len(idx) - 1 - np.argmax(counts[::-1] == best)])   # ties: the rightmost
        if best >= c + tolerance * c:
            break
        c_lo, c_hi, c = best_i, best_i + best - 1, best
        bell_hi = max(bell_hi, c_hi)
    free[bell_lo:bell_hi + 1] = False
    if mode_cnt <= noise:
        return None
    k = kurtosis(x[bell_lo:bell_hi + 1])
    if k is None:
        return None
    return Mode(float(mode_lo), float(mode_hi), int(mode_cnt), float(x[bell_lo]), float(x[bell_hi]),
                int(bell_hi - bell_lo + 1), k)


def find_modes(values, w, *, tolerance=TOLERANCE, noise=NOISE):
    """Every mode of `values` (any order) for bin width `w` > 0, in the order pathrate finds them."""
    if not w > 0:
        raise ValueError(f"bin width must be > 0 (got {w})")
    x = np.sort(np.asarray(values, dtype=np.float64))
    free = np.ones(len(x), dtype=bool)
    modes = []
    while free.any():
        m = _one_mode(x, free, w, tolerance, noise)
        if m is not None:
            modes.append(m)
    return modes


def bin_width(prelim):
    """pathrate's bin width from preliminary values: 1/8 of their interdecile range (1/4 if that
    range is under 1 Mbit/s; 20 Mbit/s if it is 0). Values in bit/s."""
    x = np.sort(np.asarray(prelim, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("no preliminary values")
    if n > 30:
        lim = n // 10
        spread = x[n - lim - 1] - x[lim]
    else:
        spread = x[-1] - x[0]
    if spread <= 0:
        return 20e6
    return spread * (0.25 if spread < 1e6 else 0.125)


__all__ = ["Mode", "bin_width", "find_modes", "kurtosis"]
