"""`netprobe mesh check` and `netprobe mesh plan`: exit codes, one-line errors, the --json timetable."""
import datetime
import itertools
import json
import subprocess
import sys
from collections import defaultdict

import pytest

from netprobe import cli
from tests.unit.test_mesh_model import EXAMPLE, doc


def toml(v):
    """A value as TOML (arrays and inline tables are enough for a mesh document)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    return json.dumps(v)


def write(tmp_path, d):
    path = tmp_path / "mesh.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in d.items()))
    return str(path)


def test_check_ok_and_bad(tmp_path, capsys):
    assert cli.main(["mesh", "check", str(EXAMPLE)]) == 0
    assert "ok: version" in capsys.readouterr().out
    d = doc()
    d["test"][1]["exclusive_by"] = ["host", "row"]
    assert cli.main(["mesh", "check", write(tmp_path, d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'test[1].exclusive_by: "row" is neither' in err


def test_check_refuses_a_schedule_that_cannot_fit(tmp_path):
    d = doc(1, 12)
    d["test"][1].update(between="all", exclusive_by=["site"], every="10m")
    out = subprocess.run([sys.executable, "-m", "netprobe", "mesh", "check", write(tmp_path, d)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "exclusive test(s) do not fit" in out.stderr


def _iso(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_plan_json_is_a_clean_timetable_for_n_cycles(tmp_path, capsys):
    d = doc(3, 3)
    d["test"][1].update(between="all", exclusive_by=["host", "site"], every="30m", duration="20s")
    path = write(tmp_path, d)
    assert cli.main(["mesh", "plan", path, "--json", "--cycles", "3", "--start", "2026-12-06T00:00:00Z"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # 27 pairs between 3 sites of 3 hosts; every one of them in each of 3 cycles
    names = [h["name"] for h in d["host"]]
    site = {h["name"]: h["tags"]["site"] for h in d["host"]}
    pairs = {frozenset(p) for p in itertools.combinations(names, 2)}
    count = defaultdict(int)
    for r in runs:
        count[frozenset((r["a"], r["b"]))] += 1
        assert set(r) == {"kind", "test", "a", "b", "start", "end", "slot_end", "resources"}
        assert _iso(r["end"]) - _iso(r["start"]) == pytest.approx(20)
        assert set(r["resources"]) == {f"host:{r['a']}", f"host:{r['b']}", f"site:{site[r['a']]}",
                                       f"site:{site[r['b']]}"}
    assert set(count) == pairs and set(count.values()) == {3}
    # no resource held twice at once, judged from the printed times only
    per = defaultdict(list)
    for r in runs:
        for res in r["resources"]:
            per[res].append((_iso(r["start"]), _iso(r["slot_end"])))
    for spans in per.values():
        spans.sort()
        assert all(b[0] >= a[1] - 1e-3 for a, b in itertools.pairwise(spans))
    assert min(_iso(r["start"]) for r in runs) >= _iso("2026-12-06T00:00:00Z") - 60


def test_plan_self_and_text(tmp_path, capsys):
    path = write(tmp_path, doc(3, 2))
    assert cli.main(["mesh", "plan", path, "--self", "fra0", "--json"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert runs and all("fra0" in (r["a"], r["b"]) for r in runs)
    assert cli.main(["mesh", "plan", path, "--self", "fra0"]) == 0
    out = capsys.readouterr().out
    assert "host fra0: 5 probe(s)" in out       # oneway to 5 peers; its site pair (ams, fra) is started by ams0
    assert out.count(" oneway ") == 5 and "throughput ams0 -> fra0" in out
    assert out.count(" in worker oneway.mesh-t0\n") == 5          # one worker serves all five
    assert cli.main(["mesh", "plan", path, "--self", "nobody"]) == 2
    assert "--self 'nobody' is not a [[host]] name" in capsys.readouterr().err
    for bad in (["--cycles", "0"], ["--start", "yesterday"]):
        assert cli.main(["mesh", "plan", path, *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1
