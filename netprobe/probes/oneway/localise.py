"""Sans-IO fault localisation: which hop do the degraded source ports share
that the clean ones avoid?

Input: each port's hop list (from trace.py; None = a hop that did not
answer) and which ports are degraded and which clean for one metric (loss,
black hole, delay p99).  Ports with neither mark (too little data) or
without a trace take no part.

For each hop h (by address): the share of degraded ports whose path crosses
h minus the share of clean ports whose path crosses it (a port whose hop at
h's position is unknown is left out of both shares).  The faulty hop scores
1: every degraded port crosses it, no clean port does; a hop all paths share
scores 0, a sibling of the faulty member below 0.  The best-scoring hops
(ties: all of them, they cannot be told apart) are the suspects.  When no
clean port is left, nothing tells the members apart: the fault is on the
common part of the path, and the suspect is the last hop every degraded
port crosses.
"""
import itertools
from collections import Counter
from dataclasses import dataclass

MIN_SCORE = 0.5          # below this the evidence does not single a hop out
MIN_BAD = 2              # degraded ports that must cross a suspect


@dataclass(frozen=True)
class Suspect:
    hop: str             # the address that answered
    ttl: int             # its position on the path (the most common one), 1-based
    score: float         # share of degraded ports through it - share of clean ports through it
    ports_bad: int       # degraded ports through it
    bad_total: int       # degraded ports with a known hop there
    ports_clean: int     # clean ports through it
    clean_total: int     # clean ports with a known hop there
    common: bool         # no clean port: the fault is on the common part of the path
    confidence: str      # high, medium or low


def _confidence(score, bad, clean, common):
    if common:
        return "high" if bad >= 4 else "medium" if bad >= MIN_BAD else "low"
    if score >= 0.9 and bad >= 3 and clean >= 3:
        return "high"
    return "medium" if score >= 0.7 and bad >= MIN_BAD else "low"


def localise(paths, bad, clean, *, min_score=MIN_SCORE, min_bad=MIN_BAD):
    """paths {port: [hop or None, ...]}, bad / clean: port sets -> [Suspect], best first."""
    paths = {p: list(h) for p, h in paths.items() if h}
    bad = [p for p in bad if p in paths]
    clean = [p for p in clean if p in paths and p not in bad]
    if len(bad) < min_bad:
        return []
    where = {}                       # hop -> Counter of the TTLs it answered at
    for p in bad + clean:
        for i, h in enumerate(paths[p]):
            if h is not None:
                where.setdefault(h, Counter())[i] += 1
    if not clean:
        return _common(paths, bad, where, min_bad)
    out = []
    for h, ttls in where.items():
        i = ttls.most_common(1)[0][0]

        def known(ports, i=i, h=h):
            k = [p for p in ports if h in paths[p] or (i < len(paths[p]) and paths[p][i] is not None)]
            return k, sum(1 for p in k if h in paths[p])

        kb, nb = known(bad)
        kc, nc = known(clean)
        if not kb or not kc or nb < min_bad:
            continue
        score = nb / len(kb) - nc / len(kc)
        if score >= min_score:
            out.append(Suspect(h, i + 1, round(score, 4), nb, len(kb), nc, len(kc), False,
                               _confidence(score, nb, len(kc), False)))
    if not out:
        return []
    best = max(s.score for s in out)
    return sorted((s for s in out if s.score == best), key=lambda s: (s.ttl, s.hop))


def _common(paths, bad, where, min_bad):
    """Every port degrades: the last hop that every degraded port's path crosses."""
    shared = [h for h in where if all(h in paths[p] for p in bad)]
    if not shared:
        return []
    h = max(shared, key=lambda h: (where[h].most_common(1)[0][0], h))
    i = where[h].most_common(1)[0][0]
    return [Suspect(h, i + 1, 1.0, len(bad), len(bad), 0, 0, True, _confidence(1.0, len(bad), 0, True))]


def loss_marks(counts, max_loss_pct, min_sent=10):
    """{port: (sent, lost)} -> (degraded ports, clean ports): degraded above max_loss_pct,
    clean at or below it; a port with fewer than min_sent probes is neither."""
    bad, clean = set(), set()
    for p, (sent, lost) in counts.items():
        if sent >= min_sent:
            (bad if 100.0 * lost / sent > max_loss_pct else clean).add(p)
    return bad, clean


def delay_marks(p99s, threshold=None, floor=0.005):
    """{port: delay p99 (s)} -> (degraded, clean).  With a threshold: above it.  Without:
    the ports above the widest gap between the sorted p99s, when that gap is at least
    max(floor, half the value below it), so a member adding delay stands out against
    the ports that avoid it and ordinary jitter splits nothing."""
    vals = sorted(v for v in p99s.values() if v is not None)
    if threshold is None:
        gaps = [(b - a, a) for a, b in itertools.pairwise(vals)]
        gap, below = max(gaps, default=(0.0, 0.0))
        threshold = below if gaps and gap >= max(floor, 0.5 * below) else float("inf")
    bad = {p for p, v in p99s.items() if v is not None and v > threshold}
    return bad, {p for p, v in p99s.items() if v is not None and p not in bad}
