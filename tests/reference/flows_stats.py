"""gonum stat.Quantile (Empirical, LinInterp) transcribed loop by loop: the oracle for
netprobe.stats.summary.weighted_quantiles, which is vectorised."""
import numpy as np


def gonum_quantile(p, kind, x, weights=None):
    """x sorted ascending, weights aligned (None: all 1)."""
    sum_w = float(len(x)) if weights is None else sum(weights)
    fidx = p * sum_w
    cumsum = 0.0
    for i in range(len(x)):
        cumsum += 1.0 if weights is None else weights[i]
        if cumsum >= fidx:
            if kind == "empirical" or i == 0:
                return x[i]
            t = cumsum - fidx
            if weights is not None:
                t /= weights[i]
            return t * x[i - 1] + (1 - t) * x[i]
    raise AssertionError("unreachable for 0 <= p <= 1")


def weighted_inverted_cdf(x, weights, ps):
    """numpy's weighted inverted-CDF quantiles (numpy >= 2); on older numpy (Debian 12 has
    1.24, where the .deb's tests run) the same definition through the loop above."""
    try:
        return np.quantile(np.asarray(x, float), ps, weights=np.asarray(weights, float), method="inverted_cdf")
    except TypeError:
        order = np.argsort(x, kind="stable")
        xs, ws = np.asarray(x, float)[order], np.asarray(weights, float)[order]
        return np.array([gonum_quantile(p, "empirical", xs, ws) for p in ps])
