"""Per-interval rollups of this host's mesh paths by tag value pair (sans-IO).

The NetNORAD view: a fault shows at the level where it lives. For each tag
key (site, rack, region, ...) and each pair (this host's value, the peer's
value), one `scope=rollup` RESULT per interval over the oneway paths from
this host to the peers with that value:

  paths      paths that reported this interval; expected: paths the mesh names
  loss       lost / sent summed over the paths (percent), with lost and sent
  delay_p50  median of the paths' p50 one-way delays
  delay_p99  99th percentile (linear interpolation) of the paths' p99 delays
  breaching  paths with a BREACH of any metric not yet cleared

Records in, records out: `feed(record)` for each record of a derived probe,
`flush(now)` at each interval's end.
"""
from collections import defaultdict

import numpy as np

from netprobe.mesh.plan import probes as derived_probes
from netprobe.results import BREACH, CLEAR, RESULT, Record, percent, seconds

KIND = "oneway"


def _value(v):
    return getattr(v, "value", v)


class Rollup:
    def __init__(self, mesh, host):
        self.host = mesh.by_name[host]
        self.mesh = mesh
        self.peer_of = {p.name: p.peer for p in derived_probes(mesh, host) if p.kind == KIND}
        self.keys = sorted({k for h in mesh.hosts for k, _ in h.tags})
        self.expected = defaultdict(set)          # (key, src, dst) -> peers the mesh names
        for peer in set(self.peer_of.values()):
            for key, src, dst in self._groups(peer):
                self.expected[(key, src, dst)].add(peer)
        self.breaching = defaultdict(set)         # peer -> metrics in BREACH
        self._reset()

    def _reset(self):
        self.sent = defaultdict(int)              # peer -> probes sent this interval
        self.lost = defaultdict(int)
        self.p50 = {}                             # peer -> latest p50 delay (s)
        self.p99 = {}

    def _groups(self, peer):
        mine, theirs = dict(self.host.tags), dict(self.mesh.by_name[peer].tags)
        return [(k, mine[k], theirs[k]) for k in self.keys if k in mine and k in theirs]

    def feed(self, rec):
        peer = self.peer_of.get(rec.name)
        if rec.probe != KIND or peer is None:
            return
        if rec.type == RESULT:
            f = rec.fields
            if f.get("sent") is not None:
                self.sent[peer] += int(_value(f["sent"]))
                self.lost[peer] += int(_value(f.get("lost") or 0))
            for name, store in (("delay_p50", self.p50), ("delay_p99", self.p99)):
                v = _value(f.get(name))
                if v is not None:
                    store[peer] = float(v)
        elif rec.type == BREACH:
            self.breaching[peer].add(rec.fields.get("metric"))
        elif rec.type == CLEAR:
            self.breaching[peer].discard(rec.fields.get("metric"))

    def flush(self, now):
        """One RESULT per (tag key, this host's value, peer's value), then a fresh interval."""
        out = []
        reported = set(self.sent) | set(self.p50)
        for (key, src, dst), peers in sorted(self.expected.items()):
            have = sorted(peers & reported)
            sent = sum(self.sent[p] for p in have)
            lost = sum(self.lost[p] for p in have)
            p50 = [self.p50[p] for p in have if p in self.p50]
            p99 = [self.p99[p] for p in have if p in self.p99]
            fields = {"scope": "rollup", "tag": key, "from": src, "to": dst, "paths": len(have),
                      "expected": len(peers), "sent": sent, "lost": lost,
                      "loss": percent(100.0 * lost / sent) if sent else None,
                      "delay_p50": seconds(float(np.median(p50))) if p50 else None,
                      "delay_p99": seconds(float(np.percentile(p99, 99))) if p99 else None,
                      "breaching": sum(1 for p in peers if self.breaching.get(p))}
            out.append(Record(RESULT, "mesh", f"{key}:{src}->{dst}", fields, now))
        self._reset()
        return out
