"""Passive votes (sans-IO): which hop do the host's retransmitting TCP flows share?

007's tally: every traced retransmitting flow gives 1/len(path) of a vote to
each hop of its path (a star keeps its share: an unknown hop gets nothing).
A hop with the most votes is where the retransmitting flows meet, but every
flow to one peer also crosses the routers all its paths share, which then
tie with the faulty member.  So the verdict is localise.py's over flows
instead of source ports: retransmitting flows are degraded, flows that sent
data without resending any are clean, and a hop stands out when the share of
degraded flows crossing it minus the share of clean flows crossing it is at
least localise.MIN_SCORE with at least localise.MIN_BAD degraded flows
through it, and the retransmitting flows cross it more often than chance
would put them there: a one-sided hypergeometric test (Fisher's exact test)
of "degraded flows through h" among all flows with a known hop there gives
p <= ALPHA.  Flows resend now and then on any path (a burst at start, a
spurious timeout); two of them landing on one of two members is a coin toss,
not a fault.  Suspects are ordered by votes.  With no clean flow at all
(every flow retransmits) the verdict is the common part of the path, as for
ports, from at least MIN_COMMON flows; while clean flows exist but none is
traced yet there is no verdict.
"""
import math
from dataclasses import dataclass

from netprobe.probes.oneway import localise

ALPHA = 0.01             # how unlikely by chance the retransmitting flows' share through a hop must be
MIN_COMMON = 4           # flows, all retransmitting, before the common part of the path is named
CLEAN_MIN_SEGS = 50      # data segments a flow sends in an interval, none resent, to count as clean


@dataclass(frozen=True)
class Hop:
    """One hop's share of an interval's votes."""
    hop: str
    votes: float         # sum over retransmitting flows through it of 1/len(their path)
    flows: int           # retransmitting flows through it
    clean: int           # clean flows through it
    retrans: int         # segments the retransmitting flows through it resent


def classify(resent, sent, min_retrans):
    """One interval's flows -> (bad {flow: segments resent}, clean [flow], most data first).
    resent {flow: segments resent}; sent {flow: data segments sent}.  Bad: resent at least
    min_retrans.  Clean: sent at least CLEAN_MIN_SEGS and resent none (an idle flow says
    nothing about its path).  A flow that resent a little is neither."""
    bad = {f: n for f, n in resent.items() if n >= min_retrans}
    clean = [f for f, n in sorted(sent.items(), key=lambda kv: (-kv[1], str(kv[0])))
             if n >= CLEAN_MIN_SEGS and not resent.get(f)]
    return bad, clean


def tally(paths, bad, clean=()):
    """paths {flow: [hop or None, ...]}, bad {flow: segments resent}, clean: flows ->
    [Hop], most votes first (ties by address).  Flows without a path take no part."""
    out = {}
    for f, n in bad.items():
        hops = paths.get(f)
        if not hops:
            continue
        share = 1.0 / len(hops)
        for h in dict.fromkeys(h for h in hops if h is not None):
            v = out.setdefault(h, [0.0, 0, 0, 0])
            v[0] += share
            v[1] += 1
            v[3] += n
    for f in clean:
        for h in dict.fromkeys(h for h in paths.get(f) or () if h is not None):
            out.setdefault(h, [0.0, 0, 0, 0])[2] += 1
    return sorted((Hop(h, round(v[0], 6), v[1], v[2], v[3]) for h, v in out.items()),
                  key=lambda x: (-x.votes, x.hop))


def suspects(paths, bad, clean, untraced_clean=0):
    """[(localise.Suspect, Hop)], the hops that stand out, most votes first.

    paths as for tally; bad {flow: segments resent}; clean: flows that sent data and resent
    nothing; untraced_clean: how many more such flows have no path yet."""
    traced_clean = [f for f in clean if paths.get(f)]
    if not traced_clean and untraced_clean:
        return []                    # the baseline is not known yet
    found = [s for s in localise.localise(paths, set(bad), set(traced_clean))
             if (s.ports_bad >= MIN_COMMON if s.common else
                 enrichment_p(s.ports_bad, s.bad_total, s.ports_clean, s.clean_total) <= ALPHA)]
    votes = {h.hop: h for h in tally(paths, bad, traced_clean)}
    return sorted(((s, votes[s.hop]) for s in found), key=lambda sv: (-sv[1].votes, sv[0].ttl, sv[0].hop))


def enrichment_p(nb, kb, nc, kc):
    """P(at least nb of the kb degraded flows cross a hop by chance) when nb + nc of the kb + kc
    flows cross it: the upper tail of the hypergeometric distribution."""
    n, k = kb + kc, nb + nc
    return sum(math.comb(k, x) * math.comb(n - k, kb - x) for x in range(nb, min(k, kb) + 1)) / math.comb(n, kb)


def fields(s, hop):
    """A suspect as BREACH fields: suspect_hop=198.18.110.2 hop=2 flows_bad=7/7 flows_clean=0/9 ..."""
    out = {"suspect_hop": s.hop, "hop": s.ttl, "votes": hop.votes, "flows_bad": f"{s.ports_bad}/{s.bad_total}",
           "flows_clean": f"{s.ports_clean}/{s.clean_total}", "score": s.score, "confidence": s.confidence}
    if s.common:
        out["scope"] = "common_path"
    return out
