"""report.sla on archives written by the real jsonfile sink; the oracle is computed here,
from the records written, by the definitions in the docs (each RESULT covers the interval
before its stamp; unmeasured time never counts as compliant)."""
import json

import numpy as np
import pytest

from netprobe.outputs.jsonfile import JsonFileConfig, JsonFileSink
from netprobe.report import read, sla
from netprobe.results import GAP, RESULT, Record, event, iso_time, percent, rate, seconds

T0 = 1_795_000_000.0
IV = 2.0                              # the probe's interval (s)
N = 300
BAD = range(50, 70)                  # rate at half the SLA
HOLE_GAP = range(100, 150)           # no intervals; a GAP record says why
HOLE_MISSING = range(200, 210)       # no intervals, no record
SLOW = range(250, 255)               # RTT above max_rtt
CFG = {"kind": "throughput", "name": "wan", "interval": IV, "rate": 200e6, "min_ratio": 0.95, "max_rtt": 0.005}


def ratio_of(k):
    return 0.5 if k in BAD else 0.97 + (k % 3) * 0.01


def record(k):
    r = ratio_of(k) * 200e6
    return Record(RESULT, "throughput", "wan", {
        "dir": "a->b", "sla_rate": rate(200e6), "rate": rate(r), "ratio": ratio_of(k),
        "rtt": seconds(0.009 if k in SLOW else 0.001), "retrans_pct": percent(0.0),
        "limited_by": "network" if k in BAD else "pacer"}, T0 + k * IV)


def archive(tmp_path):
    s = JsonFileSink(JsonFileConfig(path=str(tmp_path / "r.json"), rotate_size=8192, keep=1000))
    s.start({"version": "0.1.0", "config_effective": {"probe": [CFG]}})
    for k in range(1, N + 1):
        if k in HOLE_GAP or k in HOLE_MISSING:
            continue
        s.write(record(k))
        if k == BAD[0] + 2:           # breach_after 3
            s.write(event("BREACH", "throughput", "wan", metric="rate", value=rate(1e8), op=">=",
                          threshold=rate(190e6), dir="a->b", ts=T0 + k * IV + 0.01))
        if k == BAD[-1] + 3:          # clear_after 3
            s.write(event("CLEAR", "throughput", "wan", metric="rate", value=rate(1.94e8), op=">=",
                          threshold=rate(190e6), dir="a->b", ts=T0 + k * IV + 0.01))
        if k == HOLE_GAP[-1] + 1:
            s.write(Record(GAP, "throughput", "wan", {
                "reason": "worker crashed", "start": iso_time(T0 + (HOLE_GAP[0] - 1) * IV),
                "end": iso_time(T0 + HOLE_GAP[-1] * IV), "duration": seconds(len(HOLE_GAP) * IV)}, T0 + k * IV))
    s.close()
    return read.read([str(tmp_path)])


def oracle(start, end, metric_ok):
    """(measured, held, not measured) seconds of [start, end] from the records written."""
    measured = held = 0.0
    for k in range(1, N + 1):
        if k in HOLE_GAP or k in HOLE_MISSING:
            continue
        lo, hi = max(T0 + (k - 1) * IV, start), min(T0 + k * IV, end)
        if hi > lo:
            measured += hi - lo
            held += (hi - lo) if metric_ok(k) else 0.0
    return measured, held, (end - start) - measured


@pytest.mark.parametrize("window", [None, (T0 + 90, T0 + 410)])
def test_compliance_is_the_share_of_measured_time_unmeasured_apart(tmp_path, window):
    a = archive(tmp_path)
    start, end = window or (T0, T0 + N * IV)
    rep = sla.build(a, *(window or (None, None)))
    assert (rep.start, rep.end) == (start, end)
    (path,) = rep.paths
    comp = {c.metric: c for c in path.compliance}
    assert set(comp) == {"rate", "rtt"}          # max_retrans_pct not set: no such SLA
    for metric, ok in (("rate", lambda k: ratio_of(k) >= 0.95), ("rtt", lambda k: k not in SLOW)):
        measured, held, unmeasured = oracle(start, end, ok)
        c = comp[metric]
        assert c.measured == pytest.approx(measured) and c.held == pytest.approx(held)
        assert c.not_measured == pytest.approx(unmeasured)
        assert c.held_pct == pytest.approx(100 * held / measured)
        assert c.not_measured_pct == pytest.approx(100 * unmeasured / (end - start))


def test_breach_table_spans_the_bad_intervals_with_the_worst_value(tmp_path):
    rep = sla.build(archive(tmp_path))
    (b,) = rep.breaches
    assert (b.name, b.sub, b.metric) == ("wan", "a->b", "rate")
    assert b.start == pytest.approx(T0 + (BAD[0] - 1) * IV)        # the first bad interval's start
    assert b.end == pytest.approx(T0 + BAD[-1] * IV)               # the last bad interval's end
    assert b.duration == pytest.approx(len(BAD) * IV)
    assert b.worst == "100Mbit/s" and b.sla == ">=190Mbit/s"


def test_unmeasured_spans_are_data_quality_lines_with_their_reason(tmp_path):
    rep = sla.build(archive(tmp_path))
    (path,) = rep.paths
    spans = [(a - T0, b - T0, why) for a, b, why in path.unmeasured]
    assert spans == [((HOLE_GAP[0] - 1) * IV, HOLE_GAP[-1] * IV, "worker crashed"),
                     ((HOLE_MISSING[0] - 1) * IV, HOLE_MISSING[-1] * IV, "missing")]
    gap_lines = [q for q in rep.quality if q.startswith("GAP wan") and "worker crashed" in q]
    missing = [q for q in rep.quality if "no GAP record says why" in q and iso_time(T0 + 398) in q]
    assert len(gap_lines) == 1 and len(missing) == 1, rep.quality


def test_an_open_breach_runs_to_the_end_and_the_json_form_says_so(tmp_path):
    s = JsonFileSink(JsonFileConfig(path=str(tmp_path / "r.json"), rotate_size=0))
    s.start({"config_effective": {"probe": [CFG]}})
    for k in range(1, 11):
        rec = record(k)
        if k >= 6:
            rec = Record(RESULT, "throughput", "wan", {**rec.fields, "ratio": 0.4, "rate": rate(8e7)}, rec.ts)
        s.write(rec)
    s.write(event("BREACH", "throughput", "wan", metric="rate", value=rate(8e7), op=">=",
                  threshold=rate(190e6), dir="a->b", ts=T0 + 8 * IV))
    s.close()
    j = sla.to_json(sla.build(read.read([str(tmp_path)])))
    (b,) = j["breaches"]
    assert b["start"] == iso_time(T0 + 5 * IV) and b["end"] is None and b["worst"] == "80Mbit/s"
    (c,) = [c for c in j["paths"][0]["compliance"] if c["metric"] == "rate"]
    assert c["held_pct"] == pytest.approx(50.0)


def test_no_interval_at_all_is_all_unmeasured_never_compliant():
    empty = read.Archive([], [], [], [], [], [])
    s = read.Series("throughput", "wan", "a->b", np.array([T0 + 10.0]), {"ratio": np.array([np.nan]),
                                                                          "limited_by": np.array(["pacer"])})
    a = read.Archive([s], [], [], [], [{"started": T0, "config_effective": {"probe": [CFG]}}], [])
    (c, _) = sla.build(a, T0, T0 + 100).paths[0].compliance
    assert c.measured == 0 and c.not_measured == 100 and np.isnan(c.held_pct)
    assert sla.build(empty).paths == []


def test_capacity_estimates_cover_the_time_since_the_previous_one(tmp_path):
    """One RESULT per estimate: the breach runs from the end of the last good estimate to the
    last bad one's stamp, even where the bad ones (a lower capacity) took longer; a restart
    starts the next estimate's span afresh."""
    cfg = {"kind": "capacity", "name": "cap", "interval": 10.0, "min_capacity": 5e8}
    # (seconds after T0, capacity): back to back, 1 s apart while good, 2.5 s while bad
    est = [(1, 9e8), (2, 9e8), (3, 9e8), (5.5, 2e8), (8, 2e8), (10.5, 2e8), (11.5, 9e8), (12.5, 9e8)]
    restarted = T0 + 100.0
    later = [(101.2, 9e8), (102.2, 9e8)]
    lines = []
    for started, rows in ((T0, est), (restarted, later)):
        lines.append('{"type":"HEADER","version":"0.1.0","started":"%s","config_effective":{"probe":[%s]}}'
                     % (iso_time(started), json.dumps(cfg, separators=(",", ":"))))
        for t, c in rows:
            lines.append(Record(RESULT, "capacity", "cap", {"capacity": rate(c), "ci_lo": rate(c * 0.99),
                                                            "ci_hi": rate(c * 1.01)}, T0 + t).to_json())
            if (t, c) == (5.5, 2e8):
                lines.append(event("BREACH", "capacity", "cap", metric="capacity", value=rate(c), op=">=",
                                   threshold=rate(5e8), ts=T0 + t).to_json())
            if (t, c) == (11.5, 9e8):
                lines.append(event("CLEAR", "capacity", "cap", metric="capacity", value=rate(c), op=">=",
                                   threshold=rate(5e8), ts=T0 + t).to_json())
    (tmp_path / "archive.json").write_text("\n".join(lines) + "\n")
    rep = sla.build(read.read([str(tmp_path)]))
    (b,) = rep.breaches
    assert (b.start, b.end) == (T0 + 3, T0 + 10.5)                  # after the last good, to the last bad
    (path,) = rep.paths
    (c,) = path.compliance
    # spans: since the previous estimate, the first of each run since its daemon started
    spans = [1, 1, 1, 2.5, 2.5, 2.5, 1, 1, 1.2, 1.0]
    good = [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]
    assert c.measured == pytest.approx(sum(spans))
    assert c.held == pytest.approx(sum(s * g for s, g in zip(spans, good, strict=True)))
