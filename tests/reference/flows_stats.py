"""gonum stat.Quantile (Empirical, LinInterp) transcribed loop by loop: the oracle for
netprobe.stats.summary.weighted_quantiles, which is vectorised."""


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
