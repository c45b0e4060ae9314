"""Bounded memory at 100,000 tracked flows: synthetic dumps into the tracker in a fresh process,
RSS read from /proc/self/statm. Every dump changes every socket (the worst case for change-only
storage), so without the limits memory would grow by ~20 MB a dump."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# n sockets' records (argv[1]) and rss(), for every child below
PRELUDE = r"""
import json, os, sys
import numpy as np
from netprobe.errors import load_extension
from netprobe.probes.flows.analysis import IntervalAggregate
from netprobe.probes.flows.tracker import Tracker
nl = load_extension("_nldiag")
n = int(sys.argv[1])
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
recs = np.zeros(n, dtype=nl.RECORD_DTYPE)
recs["idiag_cookie"] = np.arange(1, n + 1)
"""

CHILD = PRELUDE + r"""
max_flows, budget, dumps = (int(a) for a in sys.argv[2:5])
recs["idiag_family"] = 2
recs["idiag_sport"] = np.arange(n) % 60000
recs["tcpi_snd_mss"] = 1448
base = rss()
t = Tracker(max_flows=max_flows, max_total_samples=budget)
out = []
written = 0
for i in range(dumps):
    recs["tcpi_rtt"] = 1000 + i
    recs["tcpi_bytes_acked"] += 1448
    ended, _ = t.update(recs, (i + 1) * 10**9)
    written += len(ended)
    del ended
    out.append(rss() - base)
print(json.dumps({"rss": out, "stored": t.stored, "tracked": len(t), "filtered": t.counts["filtered"],
                  "samples": t.total_samples, "written": written}))
"""


def _run(code, *args):
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _child(n, max_flows, budget, dumps):
    return _run(CHILD, n, max_flows, budget, dumps)


def test_100k_flows_memory_is_bounded_by_the_sample_budget():
    got = _child(100_000, 100_000, 300_000, 8)
    rss = [r / 2**20 for r in got["rss"]]
    assert got["tracked"] == got["stored"] == 100_000
    assert got["samples"] <= 300_000 and got["written"] > 50_000          # the budget wrote flows out
    # state ~24 MB + 100k Flow objects ~50 MB + 300k samples x ~200 B = 60 MB (+ transients)
    assert max(rss) < 300, rss
    print("RSS MB per dump:", [round(r) for r in rss])
    assert rss[-1] - rss[3] < 25, rss                                     # flat once the budget binds


def test_max_flows_is_enforced_at_100k_sockets():
    got = _child(100_000, 10_000, 1_000_000, 3)
    assert (got["tracked"], got["stored"], got["filtered"]) == (100_000, 10_000, 90_000)
    assert got["samples"] == 30_000
    assert max(got["rss"]) / 2**20 < 120, got["rss"]


AGG_CHILD = PRELUDE + r"""
dumps = int(sys.argv[2])
t, agg, out = Tracker(max_flows=1), IntervalAggregate(1), []
for i in range(dumps):
    recs["tcpi_rtt"] = 1000 + np.arange(n) % 5000 + i
    _, delta = t.update(recs, (i + 1) * 10**8)
    agg.add(np.zeros(len(delta.index), np.int32), delta)
    out.append(rss())
print(json.dumps({"rss": out, "flows": agg.result()[0]["flows"]}))
"""


def test_interval_aggregate_memory_does_not_grow_with_dumps():
    # one 10 s interval sampled at 10 Hz over 20,000 sockets: before the fixed-size RTT histogram,
    # each dump kept its RTT column (and the sample matrix behind it) until the interval ended:
    # 510 MB after 100 dumps in the probe
    got = _run(AGG_CHILD, 20000, 100)
    rss = [r / 2**20 for r in got["rss"]]
    assert got["flows"] == 20000
    assert rss[-1] - rss[9] < 10, [round(r) for r in rss]
