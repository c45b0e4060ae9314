"""Rollups by tag value pair against a reference computed here from the raw per-path figures."""
import numpy as np
import pytest

from netprobe.mesh import model, plan, rollup
from netprobe.results import BREACH, CLEAR, RESULT, Record, event, percent, seconds
from tests.unit.test_mesh_model import doc

SELF = "fra0"


def result(name, sent, lost, p50, p99):
    return Record(RESULT, "oneway", name, {"sent": sent, "received": sent - lost, "lost": lost,
                                           "loss": percent(100 * lost / sent), "delay_p50": seconds(p50),
                                           "delay_p99": seconds(p99)})


@pytest.mark.parametrize("seed", range(5))
def test_rollup_matches_a_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    d = doc(4, 5)
    mesh = model.load_dict(d)
    tags = {h["name"]: h["tags"] for h in d["host"]}
    names = {p.peer: p.name for p in plan.probes(mesh, SELF) if p.kind == "oneway"}
    r = rollup.Rollup(mesh, SELF)
    raw = {}
    for peer, name in names.items():
        if rng.random() < 0.2:
            continue                                   # this path did not report this interval
        sent = int(rng.integers(100, 1000))
        lost = int(rng.binomial(sent, 0.02))
        p50 = float(rng.uniform(1e-3, 50e-3))
        p99 = p50 + float(rng.exponential(5e-3))
        raw[peer] = (sent, lost, p50, p99)
        r.feed(result(name, sent, lost, p50, p99))
    breaching = {p for p in names if rng.random() < 0.3}
    for p in breaching:
        r.feed(event(BREACH, "oneway", names[p], metric="loss", value=1, op="<=", threshold=1))
    cleared = set(list(breaching)[:1])
    for p in cleared:
        r.feed(event(CLEAR, "oneway", names[p], metric="loss", value=0, op="<=", threshold=1))
    r.feed(result("not-a-mesh-probe", 10, 10, 1.0, 1.0))          # other probes do not count
    out = {rec.name: rec.fields for rec in r.flush(1000.0)}
    for key in ("site", "rack"):
        mine = tags[SELF][key]
        for value in sorted({t[key] for t in tags.values()}):
            peers = [p for p in names if tags[p][key] == value]
            f = out.pop(f"{key}:{mine}->{value}")
            have = [p for p in peers if p in raw]
            assert (f["scope"], f["tag"], f["from"], f["to"]) == ("rollup", key, mine, value)
            assert f["paths"] == len(have) and f["expected"] == len(peers)
            sent = np.array([raw[p][0] for p in have])
            lost = np.array([raw[p][1] for p in have])
            if have:
                assert f["loss"].value == pytest.approx(100 * lost.sum() / sent.sum())
                assert f["delay_p50"].value == pytest.approx(np.median([raw[p][2] for p in have]))
                assert f["delay_p99"].value == pytest.approx(np.percentile([raw[p][3] for p in have], 99))
            else:
                assert f["loss"] is None and f["delay_p50"] is None
            assert f["breaching"] == len(set(peers) & (breaching - cleared))
    assert not out                                      # no group the mesh does not have


def test_each_interval_starts_afresh_but_breaches_persist():
    mesh = model.load_dict(doc(2, 2))
    name = next(p.name for p in plan.probes(mesh, SELF) if p.peer == "ams0" and p.kind == "oneway")
    r = rollup.Rollup(mesh, SELF)
    r.feed(result(name, 100, 50, 0.01, 0.02))
    r.feed(event(BREACH, "oneway", name, metric="connection", value="lost", op="=", threshold="up"))
    first = {x.name: x.fields for x in r.flush(1.0)}["site:fra->ams"]
    assert first["paths"] == 1 and first["loss"].value == 50 and first["breaching"] == 1
    second = {x.name: x.fields for x in r.flush(2.0)}["site:fra->ams"]
    assert second["paths"] == 0 and second["sent"] == 0 and second["breaching"] == 1
