"""A mesh change that moves exclusive tests, picked up at different times (lab: 6 hosts in 3 sites
behind 20 Mbit/s uplinks). Three throughput pairs, each sharing a site with each other one, take
the 3 slots of a cycle in file order: A = ams1->fra1, B = ams2->lon1, C = fra2->lon2 at slot
phases 0, 1, 2 (slot number mod 3). The change lists them the other way round, so C moves to
phase 0 and A to phase 2; B stays. The file is changed 4 s before a phase-2 slot (B1): ams1 is
restarted then (it reads the change by starting, and must keep to the rule from its `[mesh]
state`: a restart knows no other host has read the change), the other hosts of A and B get
SIGHUP 1.5 s before B1; those of C fetch it from a URL (`refresh` 1 s) published 0.5 s after B1.
`[schedule] rollout` is 6 s.

Without the rollout rule, in slot B1 the file hosts would run A (its new place) while the URL
hosts, still on the old version, run C (its old place): both through the fra uplink. The rule,
worked out here from the slot numbers: the file hosts defer A at B1 (v2 is in force for them
from the first cycle boundary >= B1 - 1.5 + 6, B1 + 5; for ams1, >= B1 - 4 + 6, the same); the
URL hosts load v2 at B1 + 5 and defer C there (in force from the cycle boundary >= their read
+ 6, B1 + 20); B runs at B1 + 10, A at B1 + 15, C at B1 + 20. Without `[mesh] state`, the
restarted ams1 would put v2 in force at once and run A at B1, beside C.

Oracles: the test's clock and the HTTP server's log (when the URL hosts read), the slot numbers
above, `netprobe mesh plan`, and each host's jsonfile: throughput spans from their RESULT times
(no two on one host or site uplink at once), the GAP records of the deferred runs."""
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import IS_ROOT, NOT_ROOT_REASON
from tests.integration.test_mesh_daemon import _ts
from tests.integration.test_mesh_grow import host_config
from tests.integration.test_mesh_lab import read
from tests.lab.mesh import ROOT, overlapping, running, throughput_spans, write

pytestmark = pytest.mark.lab

SITES = {"ams": 2, "fra": 2, "lon": 2}
A, B, C = ("ams1", "fra1"), ("ams2", "lon1"), ("fra2", "lon2")
BY_FILE = {"ams1", "fra1", "ams2", "lon1"}
BY_URL = {"fra2", "lon2"}
RESTARTED = "ams1"                             # restarted on the new file 4 s before B1
SLOT = 5.0                                     # duration 3 s + connect_time 2 s
CYCLE = 3 * SLOT
ROLLOUT = 6.0


def mesh_text(lab, pairs):
    out = [f'[schedule]\nclock_error = "0s"\nconnect_time = "2s"\nrollout = "{ROLLOUT:g}s"\n']
    for name, (_, addr, site) in lab.hosts.items():
        out.append(f'[[host]]\nname = "{name}"\naddress = "{addr}:7171"\ntags = {{ site = "{site}" }}\n')
    listed = ", ".join(f'["{a}", "{b}"]' for a, b in pairs)
    out.append(f'[[test]]\nkind = "throughput"\npairs = [{listed}]\nrate = "4M"\ninterval = "1s"\nwindow = "2s"\n'
               f'duration = "3s"\nevery = "{CYCLE:g}s"\nexclusive_by = ["host", "site"]\n')
    return "\n".join(out)


@pytest.fixture
def fleet(tmp_path):
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    with running(SITES, "20mbit") as lab:
        write(tmp_path / "mesh.toml", mesh_text(lab, (A, B, C)))
        write(tmp_path / "published.toml", mesh_text(lab, (A, B, C)))
        url = lab.serve_file(tmp_path / "published.toml", tmp_path / "http.log")
        procs = {}
        for name, (_, addr, _) in lab.hosts.items():
            (tmp_path / f"{name}.toml").write_text(host_config(tmp_path, name, addr, url, BY_URL))
            procs[name] = lab.daemon(name, tmp_path)
        yield lab, tmp_path, procs


def test_a_change_that_moves_exclusive_tests_overlaps_nothing_while_versions_differ(fleet):
    lab, tmp_path, procs = fleet
    t_begin = time.monotonic()
    site = {n: s for n, (_, _, s) in lab.hosts.items()}
    # every daemon is up (its jsonfile's HEADER is written after its signal handlers are set)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{n}.jsonl").exists() and (tmp_path / f"{n}.jsonl").stat().st_size for n in site):
        assert time.monotonic() < deadline, "a daemon did not start within 30 s"
        time.sleep(0.2)
    k1 = int((time.time() + 5.0) // SLOT) + 1
    k1 += (2 - k1) % 3                         # B1: a phase-2 slot, where C runs in v1 and A in v2
    b1 = k1 * SLOT
    time.sleep(max(0.0, b1 - 4.0 - time.time()))
    write(tmp_path / "mesh.toml", mesh_text(lab, (C, B, A)))
    procs[RESTARTED].send_signal(signal.SIGTERM)      # it runs nothing from B1 - 5 to B1
    assert procs[RESTARTED].wait(timeout=3) == 0
    procs[RESTARTED] = lab.daemon(RESTARTED, tmp_path)
    time.sleep(max(0.0, b1 - 1.5 - time.time()))
    for n in BY_FILE - {RESTARTED}:
        procs[n].send_signal(signal.SIGHUP)
    time.sleep(max(0.0, b1 + 0.5 - time.time()))
    t_published = time.time()
    write(tmp_path / "published.toml", (tmp_path / "mesh.toml").read_text())
    t_stop = b1 + 4 * SLOT + 6.0
    time.sleep(max(0.0, t_stop - time.time()))
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        assert p.wait(timeout=60) == 0
    records = {n: read(tmp_path, n) for n in site}

    # the URL hosts read the new copy within the slot after B1 (else the expectations below move)
    fetched = [float(line.split()[0]) for line in (tmp_path / "http.log").read_text().splitlines()
               if line.split()[1] == "200" and float(line.split()[0]) >= t_published]
    assert len(fetched) >= len(BY_URL) and max(fetched) < b1 + SLOT, fetched

    # zero overlaps on any host or site uplink, the whole run, from the measured start/end times
    spans = throughput_spans(records)
    overlaps = overlapping(spans, site)
    assert not overlaps, overlaps

    def runs_in(lo, hi):
        """(slot offset from B1, pair) of each measured run whose slot starts in [lo, hi)."""
        return sorted((round((s0 + 0.5) // SLOT * SLOT - b1), (a, b)) for s0, _, a, b in spans
                      if lo - 0.5 <= s0 < hi - 0.5)
    # from B1: C in its old place (URL hosts on v1), nothing at B1+5 (C deferred on the URL hosts,
    # which are not in force yet), then each test of v2 in its new place once in force for its host
    assert runs_in(b1, t_stop) == [(0, C), (10, B), (15, A), (20, C)], runs_in(b1, t_stop)
    # before the change, v1: A, B, C at phases 0, 1, 2 (the first cycle may be cut by the start)
    before = runs_in(0, b1)
    assert before and all((round(rel / SLOT) + 2) % 3 == (A, B, C).index(pair) for rel, pair in before), before

    # the deferred runs are reported, each once, on the host that would have started it
    deferred = {n: [r for r in recs if r["type"] == "GAP" and r.get("reason", "").startswith("deferred:")]
                for n, recs in records.items()}
    assert {n: [(r["name"], r["peer_name"], _ts(r["start"]) - b1) for r in rs] for n, rs in deferred.items() if rs} \
        == {"ams1": [("fra1.t0", "fra1", 0.0)], "fra2": [("lon2.t0", "lon2", SLOT)]}, deferred

    # `netprobe mesh plan` of the new file is what the hosts ran once it was in force for each
    out = subprocess.run([sys.executable, "-m", "netprobe", "mesh", "plan", tmp_path / "mesh.toml", "--json",
                          "--start", str(b1 + 2 * SLOT), "--cycles", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    planned = sorted((round(_ts(j["start"]) - b1), (j["a"], j["b"])) for j in map(json.loads, out.splitlines()))
    assert planned == runs_in(b1 + 2 * SLOT, b1 + 2 * SLOT + CYCLE), planned
    print(f"URL hosts read B1+{min(fetched) - b1:.1f}s..B1+{max(fetched) - b1:.1f}s; {len(spans)} runs; "
          f"run {time.monotonic() - t_begin:.0f}s")
