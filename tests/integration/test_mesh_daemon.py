"""Three daemons on loopback addresses from one mesh file: derived probes, the timetable they
followed (judged from each host's jsonfile), peer names and tags on every line, rollups."""
import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTS = [("h1", "127.0.0.11", "a"), ("h2", "127.0.0.12", "b"), ("h3", "127.0.0.13", "c")]
PORT = 7391
RUN_S = 36.0


def mesh_text():
    out = ['[schedule]\nclock_error = "0s"\nconnect_time = "2s"\n']
    for name, addr, site in HOSTS:
        out.append(f'[[host]]\nname = "{name}"\naddress = "{addr}:{PORT}"\ntags = {{ site = "{site}" }}\n')
    out.append('[[test]]\nkind = "oneway"\nbetween = "all"\ninterval = "1s"\ngap = "20ms"\n'
               'ecmp_width = 1\ngrace = "200ms"\n')
    out.append('[[test]]\nkind = "throughput"\nbetween = "all"\nrate = "20M"\ninterval = "1s"\n'
               'window = "2s"\nduration = "2s"\nevery = "12s"\nexclusive_by = ["host"]\n')
    return "\n".join(out)


def host_config(tmp_path, name, listen, allow="127.0.0.0/8"):
    """A host's own config: the peer side on `listen`, the shared mesh file, a jsonfile per host."""
    return f"""
[daemon]
restart_backoff = "500ms"
stop_timeout = "10s"

[serve]
listen = ["{listen}"]
allow = ["{allow}"]

[mesh]
file = "{tmp_path / 'mesh.toml'}"
self = "{name}"
refresh = "2s"
state = "{tmp_path / (name + '-state.json')}"

[output.file]
type = "jsonfile"
path = "{tmp_path / (name + '.jsonl')}"
"""


def _ts(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def fleet(tmp_path):
    (tmp_path / "mesh.toml").write_text(mesh_text())
    procs = []
    for name, addr, _ in HOSTS:
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(host_config(tmp_path, name, f"{addr}:{PORT}"))
        procs.append(subprocess.Popen([sys.executable, "-m", "netprobe", "run", "-c", str(cfg)], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.err", "w")))
    yield tmp_path, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_three_hosts_follow_the_plan(fleet):
    tmp_path, procs = fleet
    t_start = time.time()
    time.sleep(RUN_S)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=30) == 0
    t_end = time.time()
    records = {}
    for name, _, _ in HOSTS:
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        records[name] = [r for r in map(json.loads, lines) if r.get("probe")]
    # the timetable as `netprobe mesh plan --json` prints it, over the same span
    plan = subprocess.run([sys.executable, "-m", "netprobe", "mesh", "plan", str(tmp_path / "mesh.toml"),
                           "--json", "--start", str(t_start - 10), "--cycles", "10"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    runs = [r for r in map(json.loads, plan.stdout.splitlines()) if _ts(r["start"]) < t_end]
    site = {n: s for n, _, s in HOSTS}
    spans = []                      # (start, end, a, b) of each throughput test, from its own records
    for name, recs in records.items():
        thr = [r for r in recs if r["probe"] == "throughput" and r["type"] == "RESULT" and "rate" in r]
        by_peer = defaultdict(list)
        for r in thr:
            by_peer[r["peer_name"]].append(_ts(r["ts"]))
        for peer, stamps in by_peer.items():
            stamps.sort()
            group = [stamps[0]]
            for t in stamps[1:]:
                if t - group[-1] > 2.5:              # a later slot
                    spans.append((group[0] - 1.0, group[-1], name, peer))
                    group = []
                group.append(t)
            spans.append((group[0] - 1.0, group[-1], name, peer))
        # every RESULT/BREACH of a derived probe names its peer and the peer's tags; the one worker
        # serving every oneway peer reports under each peer's name (under its own: the supervisor's
        # liveness lines, a stale BREACH say)
        for r in recs:
            if r["name"] == "oneway.mesh-t0":
                assert r["type"] != "RESULT", r
            elif r["probe"] in ("oneway", "throughput") and r["type"] in ("RESULT", "BREACH"):
                assert r["peer_name"] in site and r["peer_site"] == site[r["peer_name"]], r
    assert spans, "no throughput test ran"
    # each measured span lies inside a planned run of that pair (start .. end + connect time)
    for s0, s1, a, b in spans:
        assert any(r["a"] == a and r["b"] == b and _ts(r["start"]) - 0.5 <= s0
                   and s1 <= _ts(r["end"]) + 2.0 + 0.5 for r in runs), (s0, s1, a, b)
    # no host in two throughput tests at once (exclusive_by host), from the hosts' own times
    for (s0, e0, a0, b0), (s1, e1, a1, b1) in itertools.combinations(spans, 2):
        if {a0, b0} & {a1, b1}:
            assert e0 <= s1 or e1 <= s0, ((s0, e0, a0, b0), (s1, e1, a1, b1))
    # every planned run that fitted in the measured span was measured
    measured = {(a, b) for _, _, a, b in spans}
    full = [r for r in runs if _ts(r["start"]) > t_start + 3 and _ts(r["end"]) + 2 < t_end - 2]
    assert full and all((r["a"], r["b"]) in measured for r in full)
    # every directed oneway path reports; each host rolls up by site
    for name, recs in records.items():
        peers = {r["peer_name"] for r in recs if r["probe"] == "oneway" and r["type"] == "RESULT"}
        assert peers == set(site) - {name}
        rollups = [r for r in recs if r["probe"] == "mesh" and r.get("scope") == "rollup"]
        assert {(r["from"], r["to"]) for r in rollups} == {(site[name], site[p]) for p in site if p != name}
        assert any(r["paths"] == 1 and r["loss"] is not None for r in rollups)
