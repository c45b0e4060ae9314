"""A change that moves exclusive tests, read by the hosts of a fleet at different times.

Each host is a MeshRuntime of its own (sans-IO: the test drives the clock and writes each host's
copy of the file when that host "reads" it). The reference is the rule as docs/mesh.md states it,
written here from the slot numbers alone:
- before the first slot boundary after it read the change, a host starts the runs of v1;
- from then until T (the first cycle boundary of v2 at least `rollout` after it read it), the runs
  of v2 that v1 places in the same slot, and a GAP (deferred) for each other run of v2;
- from T on, the runs of v2.
Independently of that reference, the runs all hosts start in a slot must share no host and no
site (checked against the hosts' sites, not the timetable's resources), and every run of v2 is
started once every host's T has passed.

Two hosts restart during the rollout (a new MeshRuntime on the same file and `[mesh] state`) and
a third is down when the change is published and reads it by starting: the rule, and so the
reference, is the same for them as for the others.
"""
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.config import schema
from netprobe.mesh import fetch, model, plan, runtime
from netprobe.results import GAP
from tests.unit.test_mesh_runtime import write

SITES = {"ams": 2, "fra": 2, "lon": 2}
SLOT = 5.0                       # duration 3 s + connect_time 2 s
ROLLOUT = 3 * SLOT


def hosts():
    return [{"name": f"{s}{i}", "address": f"10.{k}.0.{i}", "tags": {"site": s}}
            for k, (s, n) in enumerate(SITES.items()) for i in range(1, n + 1)]


def mesh_doc(excl):
    return {"schedule": {"clock_error": "0s", "connect_time": "2s", "rollout": f"{ROLLOUT:g}s"},
            "host": hosts(),
            "test": [{"kind": "throughput", "rate": "4M", "interval": "1s", "duration": "3s",
                      "exclusive_by": ["host", "site"], **excl}]}


PAIRS = [["ams1", "fra1"], ["ams2", "lon1"], ["fra2", "lon2"]]     # each shares a site with each other
CHANGES = {
    # the same pairs listed the other way round: the first and last swap slots, the middle stays
    "pairs reordered": ({"pairs": PAIRS, "every": "15s"}, {"pairs": PAIRS[::-1], "every": "15s"}),
    # every host pair instead of one per pair of sites: longer cycle, most tests move
    "site to all": ({"between": "site", "every": "15s"}, {"between": "all", "every": "75s"}),
    # a longer period: the tests keep their offsets but run in fewer slots; nothing is deferred
    "every doubled": ({"pairs": PAIRS, "every": "15s"}, {"pairs": PAIRS, "every": "30s"}),
}


def placed(d):
    """slot number -> {(a, b)} of the runs in it, from the plan's placement (period, offset)."""
    tt = plan.timetable(model.load_dict(d))
    return tt, lambda k: {(s.a, s.b) for s in tt.placed if k % s.period == s.offset}


def host_cfg(tmp_path, name):
    (tmp_path / name).mkdir(exist_ok=True)
    return schema.build(fetch.MeshConfig, {"file": str(tmp_path / name / "mesh.toml"), "self": name,
                                           "refresh": "1h", "state": str(tmp_path / name / "state.json")},
                        schema.Where("host.toml", "mesh"))


def runtime_for(tmp_path, name, d, now):
    cfg = host_cfg(tmp_path, name)
    write(Path(cfg.file), d)
    return runtime.MeshRuntime(cfg, now), Path(cfg.file)


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("seed", range(4))
def test_while_versions_differ_no_two_runs_share_a_host_or_site(tmp_path, change, seed):
    rng = random.Random(seed)
    v1, v2 = (mesh_doc(x) for x in CHANGES[change])
    tt1, runs1 = placed(v1)
    tt2, runs2 = placed(v2)
    assert tt1.slot == tt2.slot == SLOT and not tt1.same_runs(tt2)
    site = {h["name"]: h["tags"]["site"] for h in hosts()}
    t0 = 1_000_020.0                                   # a slot boundary
    change_at = t0 + rng.uniform(1, 3) * SLOT
    read = {n: change_at + rng.uniform(0, ROLLOUT) for n in site}     # every host within `rollout`
    fleet = {n: runtime_for(tmp_path, n, v1, t0) for n in site}
    cycle2 = tt2.cycle * SLOT
    down, *restarting = rng.sample(sorted(site), 3)
    down_from = change_at - rng.uniform(0.5, 2) * SLOT               # reads the change by starting
    # the others restart after loading the change (the slot boundary after the read), before or
    # after the new timetable is in force for them
    restart = {n: rng.uniform((read[n] // SLOT + 1) * SLOT, -(-(read[n] + ROLLOUT) // cycle2) * cycle2 + SLOT)
               for n in restarting}

    def reference(n, k):
        """(runs host n starts in slot k, runs it defers there), from the rule."""
        boundary = (read[n] // SLOT + 1) * SLOT
        in_force = -(-(read[n] + ROLLOUT) // cycle2) * cycle2
        start = k * SLOT
        if start < boundary:
            return {p for p in runs1(k) if p[0] == n}, set()
        mine = {p for p in runs2(k) if p[0] == n}
        if start >= in_force:
            return mine, set()
        return mine & runs1(k), mine - runs1(k)

    last_in_force = max(-(-(t + ROLLOUT) // cycle2) * cycle2 for t in read.values())
    k_end = int((last_in_force + cycle2) // SLOT)
    started, deferred_total = {}, 0
    events = sorted([(t, "read", n) for n, t in read.items()] + [(t, "restart", n) for n, t in restart.items()]
                    + [(down_from, "down", down)] + [(k * SLOT, "slot", None) for k in range(int(t0 // SLOT), k_end)],
                    key=lambda e: (e[0], e[1] == "slot"))
    for t, what, n in events:
        if what == "down":
            del fleet[n]
        elif what == "read" and n == down:             # starts on the new file
            write(Path(host_cfg(tmp_path, n).file), v2)
            fleet[n] = (runtime.MeshRuntime(host_cfg(tmp_path, n), t), Path(host_cfg(tmp_path, n).file))
        elif what == "read":                           # reads the change (SIGHUP, refresh)
            rt, path = fleet[n]
            write(path, v2)
            assert rt.refresh(t) == []
        elif what == "restart":
            fleet[n] = (runtime.MeshRuntime(host_cfg(tmp_path, n), t), fleet[n][1])
            assert fleet[n][0].errors() == []
        if what != "slot":
            continue
        k = round(t / SLOT)
        started[k] = set()
        for n, (rt, _) in fleet.items():
            specs = rt.specs(t)
            gaps = rt.deferrals(t)
            assert all(g.type == GAP and g.fields["reason"].startswith("deferred: ") for g in gaps)
            got = {(n, p.peer) for name, p in rt.derived.items() if p.exclusive and name in specs}
            got_deferred = {(n, rt.derived[g.name].peer) for g in gaps}
            assert (got, got_deferred) == reference(n, k), (n, k, read[n])
            deferred_total += len(gaps)
            started[k] |= got
    # the oracle of the acceptance point: no host and no site held twice in any slot
    for k, runs in started.items():
        assert _no_clash(runs, site), (k, runs)
    # once in force everywhere: every run of v2, every slot
    for k in range(int(-(-last_in_force // SLOT)), k_end):
        assert started.get(k, set()) == runs2(k), k
    if change == "every doubled":
        assert deferred_total == 0
    else:
        assert deferred_total > 0


def _no_clash(runs, site):
    seen = set()
    for a, b in runs:
        mine = {f"host:{a}", f"host:{b}", f"site:{site[a]}", f"site:{site[b]}"}
        if mine & seen:
            return False
        seen |= mine
    return True


def test_the_change_that_leaves_tests_in_place_has_no_transition(tmp_path):
    d = mesh_doc({"pairs": PAIRS, "every": "15s"})
    rt, path = runtime_for(tmp_path, "ams1", d, 1_000_020.0)
    d["host"][0]["tags"] = {"site": "ams", "rack": "ams-r1"}          # a new tag: the same timetable
    write(path, d)
    rt.refresh(1_000_021.0)
    rt.specs(rt.pending[1])
    assert rt.transition is None and rt.deferrals(rt.tt.slot * 1e6) == []


def test_in_force_is_the_first_cycle_boundary_rollout_after_the_read(tmp_path):
    """in_force is the first cycle boundary at least `rollout` after the read, as the rule says."""
    tt = plan.timetable(model.load_dict(mesh_doc({"pairs": PAIRS, "every": "15s"})))
    cycle = tt.cycle * tt.slot
    assert cycle == 15.0
    assert tt.in_force(1000.0, ROLLOUT) == 1020.0      # 1015 is not a multiple of 15
    assert tt.in_force(1005.0, ROLLOUT) == 1020.0
    assert tt.in_force(1005.1, ROLLOUT) == 1035.0


def test_a_restart_while_rolling_out_keeps_the_base_served_and_the_deferrals(tmp_path):
    v1, v2 = (mesh_doc(x) for x in CHANGES["pairs reordered"])
    t0 = 1_000_020.0
    rt, path = runtime_for(tmp_path, "ams1", v1, t0)
    write(path, v2)
    rt.refresh(t0 + 1)
    rt.specs(t0 + SLOT)                                # loaded at the boundary: rolling out
    again = runtime.MeshRuntime(host_cfg(tmp_path, "ams1"), t0 + SLOT + 1)
    v1_version = model.load_dict(v1).version          # what a host still on v1 sends in its hello
    assert again.errors() == [] and v1_version in again.also_accepted()
    # in force, as the rule puts it, from the first cycle boundary `rollout` after the read
    cycle = plan.timetable(model.load_dict(v2)).cycle * SLOT
    assert again.transition.until == -(-(t0 + 1 + ROLLOUT) // cycle) * cycle
    # and once it is, a restart has nothing to go on with
    until = again.transition.until
    again.specs(until)
    assert again.transition is None
    assert runtime.MeshRuntime(host_cfg(tmp_path, "ams1"), until + 1).transition is None


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"in_force": json_values, "rolling": json_values}).map(lambda v: json.dumps(v).encode())))
def test_a_damaged_state_file_is_one_error_and_the_mesh_runs(tmp_path, content):
    """Whatever the state file holds, the daemon starts; what is not a state it names as unusable."""
    cfg = host_cfg(tmp_path, "ams1")
    write(Path(cfg.file), mesh_doc({"pairs": PAIRS, "every": "15s"}))
    with open(cfg.state, "wb") as fh:
        fh.write(content)
    rt = runtime.MeshRuntime(cfg, 1_000_020.0)
    errors = rt.errors()
    try:
        top = json.loads(content)
    except ValueError:
        top = None
    if not (isinstance(top, dict) and isinstance(top.get("in_force"), dict)):
        assert [e.type for e in errors] == ["ERROR"] and cfg.state in errors[0].fields["error"], errors
    assert rt.specs(1_000_020.0) is not None
    # what it runs on is kept again, readable
    assert runtime.MeshRuntime(cfg, 1_000_021.0).errors() == []


def test_a_state_that_cannot_be_written_is_one_error_and_the_mesh_runs(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    cfg = replace(host_cfg(tmp_path, "ams1"), state=str(tmp_path / "not-a-dir" / "state.json"))
    write(Path(cfg.file), mesh_doc({"pairs": PAIRS, "every": "15s"}))
    rt = runtime.MeshRuntime(cfg, 1_000_020.0)
    errors = rt.errors()
    assert len(errors) == 1 and "cannot keep the mesh state" in errors[0].fields["error"], errors
    assert rt.specs(1_000_020.0) is not None and rt.errors() == []
