"""pathrate's get_mode written out loop by loop from its description:
the oracle for the vectorised netprobe.stats.modes."""


def _kurtosis(v):
    n = len(v)
    if n < 3:
        return None
    mean = sum(v) / n
    m2 = sum((a - mean) ** 2 for a in v) / n
    if m2 <= 0:
        return None
    return (sum((a - mean) ** 4 for a in v) / n) / (m2 * m2)


def find_modes(values, w, tolerance=0.10, noise=15):
    """[(lo, hi, count, bell_lo, bell_hi, bell_count, kurtosis)] in the order found."""
    x = sorted(float(v) for v in values)
    n = len(x)
    free = [True] * n
    out = []
    while any(free):
        lo, cnt = -1, 0
        for i in range(n):
            if not free[i]:
                continue
            j = i
            while j < n and free[j] and x[j] <= x[i] + w:
                j += 1
            if j - i > cnt:
                lo, cnt = i, j - i
        hi = lo + cnt - 1
        bell_lo, bell_hi = lo, hi
        c_lo, c_hi, c = lo, hi, cnt
        while c_lo > 0:
            best_i, best = -1, -1
            for i in range(c_hi - 1, c_lo - 2, -1):
                if i < 0:
                    break
                k = 0
                j = i
                while j >= 0 and x[j] >= x[i] - w:
                    k += 1
                    j -= 1
                if k >= best:
                    best_i, best = i, k
            if best_i < 0 or best >= c + tolerance * c:
                break
            c_hi, c_lo, c = best_i, best_i - best + 1, best
            bell_lo = min(bell_lo, c_lo)
        c_lo, c_hi, c = lo, hi, cnt
        while c_hi < n - 1:
            best_i, best = -1, -1
            for i in range(c_lo + 1, c_hi + 2):
                if i > n - 1:
                    break
                k = 0
                j = i
                while j < n and x[j] <= x[i] + w:
                    k += 1
                    j += 1
                if k >= best:
                    best_i, best = i, k
            if best_i < 0 or best >= c + tolerance * c:
                break
            c_lo, c_hi, c = best_i, best_i + best - 1, best
            bell_hi = max(bell_hi, c_hi)
        for i in range(bell_lo, bell_hi + 1):
            free[i] = False
        if cnt > noise:
            k = _kurtosis(x[bell_lo:bell_hi + 1])
            if k is not None:
                out.append((x[lo], x[hi], cnt, x[bell_lo], x[bell_hi], bell_hi - bell_lo + 1, k))
    return out
