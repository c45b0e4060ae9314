"""The timetable: judged by an independent sweep over the runs it yields, not by the planner's books."""
import itertools
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.mesh import model, plan
from tests.unit.mesh_big import big_mesh
from tests.unit.test_mesh_model import doc

T0 = 1_796_000_000.0          # any wall-clock time: the planner is a pure function of it


def held(mesh, run):
    """Resources of a run, recomputed from the mesh file's own words (not the planner's)."""
    test = mesh.tests[run.slotted.test]
    out = set()
    for key in test.exclusive_by:
        for h in (run.slotted.a, run.slotted.b):
            if key == "host":
                out.add(("host", h))
            else:
                tags = dict(mesh.by_name[h].tags)
                if key in tags:
                    out.add((key, tags[key]))
    return out


def sweep_overlaps(mesh, runs):
    """Intervals per resource, sorted, neighbours compared: every pair of runs that overlap in time."""
    per = defaultdict(list)
    for r in runs:
        for res in held(mesh, r):
            per[res].append((r.start, r.slot_end, r))
    bad = []
    for res, spans in per.items():
        spans.sort(key=lambda s: s[0])
        for (_, e0, r0), (s1, _, r1) in itertools.pairwise(spans):
            if s1 < e0 - 1e-6:
                bad.append((res, r0, r1))
    return bad


def check(mesh, cycles=3):
    tt = plan.timetable(mesh)
    span = tt.cycle * tt.slot * cycles
    runs = tt.runs(T0, T0 + span)
    assert not sweep_overlaps(mesh, runs)
    # every scheduled host pair of every exclusive test runs at least once per `every`
    by_pair = defaultdict(list)
    for r in runs:
        by_pair[(r.slotted.test, r.slotted.a, r.slotted.b)].append(r.start)
    for t in mesh.tests:
        if not t.exclusive:
            continue
        for a, b in t.pairs:
            starts = sorted(by_pair.pop((t.index, a, b)))
            edges = [T0, *starts, T0 + span]
            assert max(y - x for x, y in itertools.pairwise(edges)) <= t.every + 1e-6, (t.index, a, b)
    assert not by_pair                       # nothing scheduled that the file did not ask for
    for r in runs:
        assert r.end - r.start == pytest.approx(mesh.tests[r.slotted.test].duration)
        assert r.slot_end - r.end >= mesh.schedule.guard - 1e-6
    return tt, runs


def test_three_sites_every_site_pair_each_cycle_without_overlap():
    d = doc(3, 3)
    d["test"].append({"kind": "capacity", "between": "all", "duration": "30s", "max_time": "30s",
                      "every": "2h", "exclusive_by": ["host", "rack"]})
    mesh = model.load_dict(d)
    tt, runs = check(mesh)
    assert tt.slot == pytest.approx(30 + mesh.schedule.guard)


def test_all_pairs_exclusive_by_host_fit_and_never_overlap():
    d = doc(4, 4)
    d["test"][1].update(between="all", exclusive_by=["host"], every="2h")
    check(model.load_dict(d))


def test_a_schedule_that_cannot_fit_names_the_tests_and_why():
    d = doc(1, 12)                                   # 66 pairs, all in one site held by "site"
    d["test"][1].update(between="all", exclusive_by=["site"], every="10m", duration="20s")
    with pytest.raises(plan.PlanError) as exc:
        plan.timetable(model.load_dict(d, "m.toml"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("m.toml: test: ")
    slots = int(600 // (20 + model.load_dict(d).schedule.guard))   # 10m / 22.2s = 27 slots
    assert f"{66 - slots} exclusive test(s) do not fit" in msg
    assert "test[1] throughput" in msg and "site:fra is already 100% booked" in msg


def test_every_shorter_than_a_slot_is_reported():
    d = doc(2, 1)
    d["test"][1].update(duration="20s", every="21s")
    with pytest.raises(plan.PlanError, match=r"every = 21s is shorter than one slot \(22.2s"):
        plan.timetable(model.load_dict(d))


def test_derived_probes_oneway_both_ways_exclusive_from_a():
    d = doc(3, 2)
    mesh = model.load_dict(d)
    names = [h.name for h in mesh.hosts]
    for host in names:
        got = plan.probes(mesh, host)
        oneway = sorted(p.peer for p in got if p.kind == "oneway")
        assert oneway == sorted(n for n in names if n != host)
        thr = [p for p in got if p.kind == "throughput"]
        assert sorted(p.peer for p in thr) == sorted(b for a, b in mesh.tests[1].pairs if a == host)
        for p in got:
            assert p.table["peer"] == mesh.by_name[p.peer].address
            assert len({q.name for q in got}) == len(got)


def test_next_boundary():
    mesh = model.load_dict(doc(2, 1))
    tt = plan.timetable(mesh)
    b = tt.next_boundary(T0)
    assert T0 < b <= T0 + tt.slot and (b / tt.slot) == pytest.approx(round(b / tt.slot))


def _placement_json(seed):
    code = ("import json,sys; from netprobe.mesh import model, plan; from tests.unit.test_mesh_model import doc;"
            "d = doc(5, 4); d['test'][1].update(between='all', exclusive_by=['host', 'rack'], every='6h');"
            "tt = plan.timetable(model.load_dict(d));"
            f"print(json.dumps([r.to_json() for r in tt.runs({T0}, {T0} + 2 * tt.cycle * tt.slot)]))")
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    return json.loads(out.stdout)


def test_same_timetable_in_every_process_whatever_the_hash_seed():
    a, b = _placement_json(0), _placement_json(4242)
    assert a == b and len(a) > 100


@st.composite
def meshes(draw):
    n_sites = draw(st.integers(1, 4))
    hosts = []
    for i in range(draw(st.integers(2, 14))):
        tags = {"site": f"s{draw(st.integers(0, n_sites - 1))}"}
        if draw(st.booleans()):
            tags["rack"] = f"r{draw(st.integers(0, 3))}"
        hosts.append({"name": f"h{i}", "address": f"10.0.0.{i + 1}", "tags": tags})
    tests = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["throughput", "capacity"]))
        t = {"kind": kind, "duration": f"{draw(st.integers(30, 90))}s",
             "every": f"{draw(st.integers(2, 40)) * 60}s",
             "exclusive_by": draw(st.lists(st.sampled_from(["host", "site", "rack"]), max_size=3, unique=True))}
        if kind == "throughput":
            t["rate"] = "10M"
        else:
            t["max_time"] = "30s"
        if draw(st.booleans()):
            t["between"] = draw(st.sampled_from(["all", "site"]))
        else:
            names = [h["name"] for h in hosts]
            pairs = draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names))
                                  .filter(lambda p: p[0] != p[1]), max_size=10,
                                  unique_by=lambda p: frozenset(p)))
            t["pairs"] = [list(p) for p in pairs]
        tests.append(t)
    return {"host": hosts, "test": tests,
            "schedule": {"clock_error": f"{draw(st.integers(0, 500))}ms", "connect_time": "1s"}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes())
def test_random_meshes_fit_without_overlap_or_say_why(d):
    try:
        mesh = model.load_dict(d, "m.toml")
    except model.ConfigError as exc:              # rack named by exclusive_by but no host has one
        assert "exclusive_by" in str(exc)
        return
    try:
        check(mesh, cycles=2)
    except plan.PlanError as exc:
        assert "\n" not in str(exc) and "do not fit" in str(exc)


def test_thousand_hosts_ten_thousand_tests_plan_fast_and_clean():
    """1,000 hosts, 10,000 exclusive pairs (half every 1h, half 2h): placed quickly, no overlap."""
    mesh = model.load_dict(big_mesh())
    t0 = time.process_time()
    tt = plan.timetable(mesh)
    elapsed = time.process_time() - t0
    assert len(tt.placed) == 10_000
    assert elapsed < 5.0, elapsed            # make bench shows the figure; this bound is generous
    runs = tt.runs(T0, T0 + tt.cycle * tt.slot)
    assert len(runs) == 5000 * 2 + 5000       # 1h tests twice per 2h cycle, 2h tests once
    assert not sweep_overlaps(mesh, runs)


def test_the_sweep_sees_a_collision_when_one_is_made():
    d = doc(3, 3)
    d["test"][1].update(between="all", exclusive_by=["host"], every="2h")
    mesh = model.load_dict(d)
    tt = plan.timetable(mesh)
    first, second = next((p, q) for p in tt.placed for q in tt.placed
                         if p is not q and {p.a, p.b} & {q.a, q.b})
    moved = [s if s is not second else plan.Slotted(s.test, s.kind, s.a, s.b, s.resources, s.period, first.offset)
             for s in tt.placed]
    bad = plan.Timetable(tt.version, tt.slot, tt.guard, tt.cycle, tuple(moved), tt.durations)
    assert sweep_overlaps(mesh, bad.runs(T0, T0 + tt.cycle * tt.slot))
