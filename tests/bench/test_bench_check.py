"""`python -m bench --check` (`make bench CHECK=1`): a figure within its target passes, a figure
broken on purpose fails the run by name.

The cheap row is the mesh bench (a few seconds of CPU): its figures are CPU seconds to plan
10,000 exclusive tests (target 1 s; 0.1-0.2 s here) and to load the file (target 2 s). The break
is an injected slowdown: the timetable made to burn 1.1 s of CPU before planning, so each
layout's plan figure must exceed 1 s whatever the host, and only those two may be named.
"""
import json
import time

import pytest

from bench import targets
from bench.__main__ import main
from netprobe.mesh import plan

MESH_FIGURES = [t.figure for t in targets.TARGETS["mesh"]]
PLAN_FIGURES = [f for f in MESH_FIGURES if f.startswith("mesh: plan")]
LOAD_FIGURES = [f for f in MESH_FIGURES if f.startswith("mesh: load")]


def _failed_line(out):
    return next((ln for ln in out.splitlines() if ln.startswith("bench check FAILED")), "")


def test_figures_within_targets_exit_0(tmp_path, capsys):
    assert main(["--check", "--quick", "--results", str(tmp_path), "mesh"]) == 0
    out = capsys.readouterr().out
    assert f"bench check passed: {len(MESH_FIGURES)} figures" in out
    assert not _failed_line(out)
    saved = tmp_path / "mesh.json"
    assert len(json.loads(saved.read_text())["rows"]) == 2
    assert saved.stat().st_mode & 0o777 == 0o600


def test_slowed_figure_fails_by_name(tmp_path, capsys, monkeypatch):
    real = plan.timetable

    def slow_timetable(mesh):
        t0 = time.process_time()
        while time.process_time() - t0 < 1.1:
            pass
        return real(mesh)

    monkeypatch.setattr(plan, "timetable", slow_timetable)
    assert main(["--check", "--quick", "--results", str(tmp_path), "mesh"]) == 1
    failed = _failed_line(capsys.readouterr().out)
    assert f"(2 of {len(MESH_FIGURES)} figures)" in failed
    assert all(f in failed for f in PLAN_FIGURES) and not any(f in failed for f in LOAD_FIGURES)
    rows = json.loads((tmp_path / "mesh.json").read_text())["rows"]
    assert all(r["plan_s"] >= 1.1 for r in rows)        # the break reached the figure itself


def test_one_figure_over_its_target_is_the_one_named(tmp_path, capsys):
    """Saved rows (--saved runs nothing): one layout's plan over 1 s, everything else under."""
    rows = [{"layout": "10,000 [[test]] tables", "load_s": 0.4, "plan_s": 1.2},
            {"layout": "1 [[test]] with 10,000 pairs", "load_s": 0.03, "plan_s": 0.09}]
    (tmp_path / "mesh.json").write_text(json.dumps({"rows": rows}))
    assert main(["--check", "--saved", "--results", str(tmp_path), "mesh"]) == 1
    failed = _failed_line(capsys.readouterr().out)
    assert "(1 of 4 figures)" in failed and PLAN_FIGURES[0] in failed


@pytest.mark.parametrize("saved", [None, {"rows": []}, {"rows": [{"layout": "10,000 [[test]] tables"}]}])
def test_figure_not_measured_fails(tmp_path, capsys, saved):
    """No results file, no rows, or a row without the figure: the check cannot pass."""
    if saved is not None:
        (tmp_path / "mesh.json").write_text(json.dumps(saved))
    assert main(["--check", "--saved", "--results", str(tmp_path), "mesh"]) == 1
    out = capsys.readouterr().out
    assert "not measured" in out or "no saved rows" in out
    assert MESH_FIGURES[0] in _failed_line(out)


def test_ratio_target_follows_the_peer_of_the_same_run():
    """A peer-relative bound moves with the peer's figure: the same figure of ours passes beside a
    slow peer and fails beside a fast one."""
    t = targets.Target("x", lambda rows: rows[0]["ours"], ">=", 100.0, peer=lambda rows: rows[0]["peer"])
    assert targets.evaluate(t, [{"ours": 1e6, "peer": 9e3}]).ok
    assert not targets.evaluate(t, [{"ours": 1e6, "peer": 2e4}]).ok


def test_bench_that_cannot_run_fails_its_figures(tmp_path, capsys, monkeypatch):
    import bench.mesh

    def no_run(quick=False):
        raise SystemExit("bench mesh needs something this host lacks")

    monkeypatch.setattr(bench.mesh, "run", no_run)
    assert main(["--check", "--results", str(tmp_path), "mesh"]) == 1
    out = capsys.readouterr().out
    assert "did not run: bench mesh needs something" in out
    assert all(f in _failed_line(out) for f in MESH_FIGURES)
