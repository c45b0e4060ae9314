"""Retransmit verdicts (netprobe.probes.retrans.analysis) on synthetic flow counters."""
import json

from netprobe.outputs.elasticsearch import bulk_body
from netprobe.probes.retrans import analysis
from netprobe.probes.retrans.pcapfile import Flow

NAMES = ("pkts", "data_pkts", "data_bytes", "retrans", "lost_retrans", "ooo", "spurious", "dsack",
         "lost_segment", "dupack", "zero_window", "data_segs", "retrans_segs")


def counters(**kw):
    """Per-direction counters; without GSO frames segments equal packets."""
    kw.setdefault("data_segs", kw.get("data_pkts", 0))
    kw.setdefault("retrans_segs", kw.get("retrans", 0))
    return {n: kw.get(n, 0) for n in NAMES}


def flow(a, ap, b, bp, ab, ba, last_ns=1_800_000_000 * 10**9):
    return Flow(a, ap, b, bp, 0, last_ns, 0, ab, ba)


FLOWS = [
    flow("10.0.0.1", 40000, "10.9.0.5", 443, counters(pkts=1000, data_pkts=1000, retrans=30),
         counters(pkts=500, dupack=40)),
    flow("10.0.0.2", 40001, "10.9.0.6", 443, counters(pkts=1000, data_pkts=1000, retrans=10),
         counters(pkts=400, data_pkts=400, retrans=0)),
    flow("2001:db8::1", 5000, "2001:db8:1::1", 80, counters(pkts=50, data_pkts=50, retrans=5), counters()),
]


def test_groups_per_direction_and_prefix():
    g = analysis.group_directions(FLOWS, v4len=24, v6len=48)
    by = {(x.src, x.dst): x for x in g}
    assert set(by) == {("10.0.0.0/24", "10.9.0.0/24"), ("10.9.0.0/24", "10.0.0.0/24"),
                       ("2001:db8::/48", "2001:db8:1::/48")}
    up = by[("10.0.0.0/24", "10.9.0.0/24")]
    assert (up.data_pkts, up.retrans, up.retrans_pct) == (2000, 40, 2.0)
    down = by[("10.9.0.0/24", "10.0.0.0/24")]
    assert (down.data_pkts, down.retrans, down.dupack) == (400, 0, 40)    # dupacks of a pure-ACK direction kept


def test_breach_names_direction_and_worst_flows_first():
    recs = analysis.records(analysis.group_directions(FLOWS), name="x", source="f.pcap", max_retrans_pct=1.5)
    breaches = [r for r in recs if r.type == "BREACH"]
    # 10.0.0.1 -> 10.9.0.5 at 3 % breaches; 10.0.0.2 at 1 % does not; the v6 flow has 10 %
    # but only 50 data packets (< min_data_pkts)
    assert [b.fields["dir"] for b in breaches] == ["10.0.0.1->10.9.0.5"]
    assert breaches[0].fields["flows"] == "10.0.0.1:40000->10.9.0.5:443(30)"
    text = breaches[0].to_text()
    assert "metric=retrans value=3% sla=<=1.5%" in text
    assert len([r for r in recs if r.type == "RESULT"]) == 5
    few = analysis.records(analysis.group_directions(FLOWS), name="x", source="f", max_retrans_pct=1.5,
                           min_data_pkts=10)
    assert "[2001:db8::1]:5000->[2001:db8:1::1]:80(5)" in [b.fields["flows"] for b in few if b.type == "BREACH"]


def test_rate_is_over_wire_segments():
    # offloads on: 10 GSO frames of 30 segments, one of them resent -> 10 %, not 1 / 11
    f = flow("10.0.0.1", 1, "10.0.0.2", 2, counters(pkts=11, data_pkts=11, data_segs=330, retrans=1,
                                                       retrans_segs=30), counters(pkts=5))
    g = analysis.group_directions([f])[0]
    assert abs(g.retrans_pct - 100 * 30 / 330) < 1e-9


def test_es_bulk_is_action_then_document():
    recs = analysis.records(analysis.group_directions(FLOWS), name="x", source="f", max_retrans_pct=1.5)
    lines = bulk_body(recs, "netprobe-retrans").splitlines()
    assert len(lines) == 2 * len(recs)
    for action, doc in zip(lines[::2], lines[1::2], strict=True):
        assert json.loads(action) == {"index": {"_index": "netprobe-retrans-2027.01.15"}}
        d = json.loads(doc)
        assert d["@timestamp"] == 1_800_000_000_000 and d["probe"] == "retrans"
