"""The daemon's view of the mesh at a given time: which workers, when the answer changes, reloads."""
import pytest

from netprobe.config import schema
from netprobe.errors import ConfigError
from netprobe.mesh import fetch, model, plan, runtime
from netprobe.results import BREACH, RESULT, Record, event
from netprobe.supervisor.daemon import live_change
from tests.unit.test_mesh_cli import toml
from tests.unit.test_mesh_model import doc


def mesh_doc():
    d = doc(3, 1)                                    # fra0, ams0, lon0
    d["schedule"] = {"clock_error": "0s", "connect_time": "1s"}
    d["test"][1].update(between="all", duration="10s", every="1m", exclusive_by=["host"])
    return d


def write(path, d):
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in d.items()))


def make(tmp_path, d=None, **table):
    write(tmp_path / "mesh.toml", d or mesh_doc())
    cfg = schema.build(fetch.MeshConfig, {"file": str(tmp_path / "mesh.toml"),
                                          "state": str(tmp_path / "state.json"), **table},
                       schema.Where("host.toml", "mesh"))
    return runtime.MeshRuntime(cfg, 0.0)


def test_exclusive_probe_runs_only_inside_its_window(tmp_path):
    rt = make(tmp_path, self="ams0")
    rt.next_flush = rt.next_refresh = 1e9          # only the timetable moves due() here
    tt = plan.timetable(model.load_dict(mesh_doc()))
    mine = [r for r in tt.runs(0, 600) if r.slotted.a == "ams0"]
    assert mine
    background = {"oneway.mesh-t0"}               # one worker for every oneway peer
    def running(t):                     # from the timetable: start .. end + connect time
        return {f"{x.slotted.b}.t1" for x in mine if x.start <= t < x.end + 1.0}

    for r in mine:
        before, inside, after = r.start - 0.01, r.start + 5, r.end + 1.0 + 0.01
        assert f"{r.slotted.b}.t1" in running(inside)
        for t in (before, inside, after):
            assert set(rt.specs(t)) == background | running(t)
        assert rt.due(inside) <= r.end + 1.0 + 1e-6
        if not running(before):
            assert rt.due(before) == pytest.approx(min(r.start, rt.next_flush, rt.next_refresh))
    assert {n for n, p in rt.derived.items() if not p.exclusive} == {"fra0.t0", "lon0.t0"}
    peers = rt.specs(0)["oneway.mesh-t0"].config.peer_list()
    assert peers == [("fra0.t0", "10.0.0.1"), ("lon0.t0", "10.2.0.1")]


def test_a_changed_mesh_waits_for_the_slot_boundary_and_keeps_unchanged_probes(tmp_path):
    rt = make(tmp_path, self="fra0")
    now = 1000.3
    old = rt.specs(now)
    d = mesh_doc()
    d["host"].append({"name": "nyc0", "address": "10.9.0.1", "tags": {"site": "nyc", "rack": "nyc-r0"}})
    write(tmp_path / "mesh.toml", d)
    assert rt.refresh(now) == []
    boundary = rt.tt.next_boundary(now)
    assert now < boundary <= now + rt.tt.slot
    assert set(rt.specs(boundary - 0.001)) == set(old)           # the old mesh until the boundary
    new = rt.specs(boundary)
    # the new peer joins the oneway worker's peers, the only change: its running worker takes it
    assert [n for n, _ in old["oneway.mesh-t0"].config.peer_list()] == ["ams0.t0", "lon0.t0"]
    assert [n for n, _ in new["oneway.mesh-t0"].config.peer_list()] == ["ams0.t0", "lon0.t0", "nyc0.t0"]
    assert live_change(old["oneway.mesh-t0"], new["oneway.mesh-t0"])


def test_a_removed_peers_last_records_keep_its_name_and_tags(tmp_path):
    rt = make(tmp_path, self="fra0")
    d = mesh_doc()
    d["host"] = [h for h in d["host"] if h["name"] != "lon0"]
    write(tmp_path / "mesh.toml", d)
    rt.refresh(0.0)
    assert set(rt.specs(rt.pending[1])) == {"oneway.mesh-t0"}
    assert [n for n, _ in rt.specs(rt.tt.slot * 10)["oneway.mesh-t0"].config.peer_list()] == ["ams0.t0"]
    last = rt.annotate(Record(RESULT, "oneway", "lon0.t0", {"sent": 10, "lost": 0}))
    assert last.fields["peer_name"] == "lon0" and last.fields["peer_site"] == "lon"
    out = {r.name for r in rt.flush(rt.next_flush)}
    assert "site:fra->lon" not in out                    # the new rollup no longer expects it


def test_one_oneway_worker_per_distinct_settings(tmp_path):
    d = mesh_doc()
    d["test"] += [{"kind": "oneway", "pairs": [["ams0", "fra0"]], "gap": "10ms"},       # same settings as test 0
                  {"kind": "oneway", "pairs": [["fra0", "lon0"]], "gap": "20ms"},       # other settings
                  {"kind": "oneway", "pairs": [["fra0", "ams0"]], "ports": "5000-5003"}]
    rt = make(tmp_path, d, self="fra0")
    background = {n: s for n, s in rt.specs(0).items() if s.kind == "oneway"}
    assert set(background) == {"oneway.mesh-t0", "oneway.mesh-t3", "oneway.mesh-t4"}
    assert background["oneway.mesh-t0"].config.peer_list() == [
        ("ams0.t0", "10.1.0.1"), ("lon0.t0", "10.2.0.1"), ("ams0.t2", "10.1.0.1")]
    assert background["oneway.mesh-t3"].config.peer_list() == [("lon0.t3", "10.2.0.1")]
    assert background["oneway.mesh-t4"].config.peer_list() == [("ams0.t4", "10.1.0.1")]
    assert background["oneway.mesh-t0"].config.gap == 0.01


def test_a_bad_new_mesh_is_an_error_record_and_changes_nothing(tmp_path):
    rt = make(tmp_path, self="fra0")
    (tmp_path / "mesh.toml").write_text("[[host]]\nname = 'x y'\naddress = '10.0.0.1'\n")
    recs = rt.refresh(10.0)
    assert len(recs) == 1 and recs[0].type == "ERROR" and "host[0].name" in recs[0].fields["error"]
    assert rt.pending is None and rt.mesh.version == model.load_dict(mesh_doc()).version
    d = mesh_doc()
    d["host"] = [h for h in d["host"] if h["name"] != "fra0"]
    d["test"][1]["between"] = "all"
    write(tmp_path / "mesh.toml", d)
    recs = rt.refresh(20.0)
    assert "is no longer a [[host]]" in recs[0].fields["error"] and rt.pending is None


def test_annotation_and_rollup(tmp_path):
    rt = make(tmp_path, self="fra0")
    rec = rt.annotate(Record(RESULT, "oneway", "ams0.t0", {"sent": 10, "lost": 1}))
    assert rec.fields["peer_name"] == "ams0" and rec.fields["peer_site"] == "ams"
    assert rec.fields["peer_rack"] == "ams-r0"
    b = rt.annotate(event(BREACH, "oneway", "lon0.t0", metric="stale", value=1, op="<=", threshold=1))
    assert b.fields["peer_name"] == "lon0"
    other = Record(RESULT, "host", "self", {})
    assert rt.annotate(other) is other
    assert rt.flush(rt.next_flush - 0.01) == []
    out = {r.name: r.fields for r in rt.flush(rt.next_flush)}
    assert out["site:fra->ams"]["loss"].value == 10 and out["site:fra->lon"]["breaching"] == 1


def test_self_from_the_local_address(tmp_path):
    d = mesh_doc()
    d["host"][1]["address"] = "127.0.0.1:7171"                     # ams0 is this machine
    assert make(tmp_path, d).self_name == "ams0"
    d["host"][2]["address"] = "127.0.0.2"
    with pytest.raises(ConfigError, match=r"local addresses match: ams0, lon0\); set \[mesh\] self"):
        make(tmp_path, d)
    with pytest.raises(ConfigError, match='self = "nobody" is not a'):
        make(tmp_path, self="nobody")


def test_the_peer_side_serves_another_version_only_while_its_timetable_is_the_same(tmp_path):
    """A host joins the oneway mesh only (the throughput pairs are named): the exclusive tests are
    untouched, so the version pending and, after the boundary, the version replaced are served too.
    A host added to a `between = "all"` throughput test needs slots of its own: neither is, once
    that timetable is in force."""
    d = mesh_doc()
    d["test"][1] = {**d["test"][1], "pairs": [["fra0", "ams0"], ["ams0", "lon0"]]}
    del d["test"][1]["between"]
    rt = make(tmp_path, d, self="fra0")
    v1 = rt.mesh.version
    assert rt.also_accepted() == ()
    grown = {**d, "host": [*d["host"], {"name": "nyc0", "address": "10.9.0.1", "tags": {"site": "nyc"}}]}
    write(tmp_path / "mesh.toml", grown)
    rt.refresh(100.0)
    v2 = rt.pending[0].version
    assert v2 != v1 and rt.also_accepted() == (v2,)              # read, not yet in effect
    rt.specs(rt.pending[1])
    assert rt.mesh.version == v2 and rt.also_accepted() == (v1,)  # in effect; v1 hosts may lag
    both = {**grown, "test": [d["test"][0], {**mesh_doc()["test"][1]}]}      # between = "all" again
    write(tmp_path / "mesh.toml", both)
    rt.refresh(200.0)
    assert rt.also_accepted() == (v1,)                            # pending, but not the same timetable
    rt.specs(rt.pending[1])
    # v3 moves the throughput tests: until it is in force this host starts only runs v2 places
    # alike, so v2's tests are still served; from then on v2 is not (nor is v1)
    assert rt.also_accepted() == (v2,)
    until = rt.transition.until
    rt.specs(until)
    assert rt.transition is None and rt.also_accepted() == ()
