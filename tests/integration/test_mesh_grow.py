"""A host joins a running fleet by a change of the mesh file (lab: 7 hosts in 3 sites behind
20 Mbit/s uplinks, then an 8th). Some hosts read the file and get SIGHUP, the others fetch it from
an HTTP server in the core namespace (ETag, `refresh` 1 s), which the test lets publish the new
copy only once a test across the two groups has been refused busy: hosts run different mesh
versions for a slot, deterministically.

Oracles: the mesh files the test wrote (the host list, the throughput pairs, the slot length
duration + connect_time), the test's clock, the HTTP server's request log, and each host's
jsonfile (throughput spans from their RESULT times; per oneway path its RESULTs' interval
numbers, and their count against the time the test watched):
- the new host's oneway paths, both ways, report within one cycle of the change;
- no two throughput tests on one host or site uplink at once, the mixed-version slot included;
- the busy path ran: a test across the groups was refused, naming both versions, in that slot;
- nothing lost where probes did not change: every existing directed oneway path reports every
  interval across the reload, and every throughput pair is measured in every one of its slots.
MESH_LAB_CYCLES=N (make test-mesh) watches N cycles after the change (make test: 1)."""
import os
import signal
import time

import pytest

from tests.conftest import IS_ROOT, NOT_ROOT_REASON
from tests.integration.test_mesh_busy import _version
from tests.integration.test_mesh_daemon import _ts
from tests.integration.test_mesh_lab import read
from tests.lab.mesh import overlapping, running, throughput_spans, write

pytestmark = pytest.mark.lab
SITES = {"ams": 3, "fra": 2, "lon": 3}
NEW = "lon3"                                   # in the lab from the start, in the mesh from the change
# a starts; each pair shares a site with each other one, so the 3 take the 3 slots of a cycle, and
# every test crosses from a host on the file (a) to one on the URL (b)
PAIRS = (("ams1", "fra1"), ("ams2", "lon1"), ("fra2", "lon2"))
BY_FILE = {"ams1", "ams2", "ams3", "fra2", NEW}
BY_URL = {"fra1", "lon1", "lon2"}
SLOT = 6.0                                     # duration 3 s + connect_time 3 s
EVERY = 3 * SLOT
ONEWAY_INTERVAL = 2.0
CYCLES = int(os.environ.get("MESH_LAB_CYCLES", "1"))


def mesh_text(lab, names):
    out = [f'[schedule]\nclock_error = "0s"\nconnect_time = "{SLOT - 3:g}s"\n']
    for name in names:
        _, addr, site = lab.hosts[name]
        out.append(f'[[host]]\nname = "{name}"\naddress = "{addr}:7171"\ntags = {{ site = "{site}" }}\n')
    out.append(f'[[test]]\nkind = "oneway"\nbetween = "all"\ninterval = "{ONEWAY_INTERVAL:g}s"\ngap = "50ms"\n'
               'ecmp_width = 1\ngrace = "300ms"\n')
    pairs = ", ".join(f'["{a}", "{b}"]' for a, b in PAIRS)
    out.append(f'[[test]]\nkind = "throughput"\npairs = [{pairs}]\nrate = "4M"\ninterval = "1s"\nwindow = "2s"\n'
               f'duration = "3s"\nevery = "{EVERY:g}s"\nexclusive_by = ["host", "site"]\n')
    return "\n".join(out)


def host_config(tmp_path, name, addr, url, by_url=BY_URL):
    source = (f'url = "{url}"\ncache = "{tmp_path / (name + "-cache.toml")}"\nrefresh = "1s"' if name in by_url
              else f'file = "{tmp_path / "mesh.toml"}"\nrefresh = "1h"')          # SIGHUP only
    return f"""
[daemon]
restart_backoff = "500ms"
stop_timeout = "10s"

[serve]
listen = ["{addr}:7171"]
allow = ["198.18.0.0/15"]

[mesh]
self = "{name}"
state = "{tmp_path / (name + '-state.json')}"
{source}

[output.file]
type = "jsonfile"
path = "{tmp_path / (name + '.jsonl')}"
"""


@pytest.fixture
def fleet(tmp_path):
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    with running(SITES, "20mbit") as lab:
        before = [n for n in lab.hosts if n != NEW]
        write(tmp_path / "mesh.toml", mesh_text(lab, before))
        write(tmp_path / "published.toml", mesh_text(lab, before))
        url = lab.serve_file(tmp_path / "published.toml", tmp_path / "http.log")
        for name, (_, addr, _) in lab.hosts.items():
            (tmp_path / f"{name}.toml").write_text(host_config(tmp_path, name, addr, url))

        def start(name):
            return lab.daemon(name, tmp_path)
        yield lab, tmp_path, {name: start(name) for name in before}, start


def test_a_host_added_by_file_and_url_joins_without_loss_or_overlap(fleet):
    lab, tmp_path, procs, start = fleet
    t_begin = time.monotonic()
    old = [n for n in lab.hosts if n != NEW]
    names = list(lab.hosts)
    site = {n: s for n, (_, _, s) in lab.hosts.items()}
    address = {n: f"{a}:7171" for n, (_, a, _) in lab.hosts.items()}

    def oneway(recs, peer=None):
        return [r for r in recs if r["probe"] == "oneway" and r["type"] == "RESULT"
                and (peer is None or r.get("peer_name") == peer)]

    deadline = time.monotonic() + 60
    while not all({r.get("peer_name") for r in oneway(read(tmp_path, n))} == set(old) - {n} for n in old):
        assert time.monotonic() < deadline, "not every oneway path reported within 60 s of the start"
        time.sleep(0.5)
    t_ready = time.time()

    # the change: 1.5 s before a slot boundary, so the SIGHUP'd hosts take it at that boundary (B1)
    b1 = (t_ready // SLOT + 1) * SLOT
    if b1 - t_ready < 2.0:
        b1 += SLOT
    v_old = _version(tmp_path / "mesh.toml")
    time.sleep(max(0.0, b1 - 1.5 - time.time()))
    t_change = time.time()
    write(tmp_path / "mesh.toml", mesh_text(lab, names))
    for n in BY_FILE - {NEW}:
        procs[n].send_signal(signal.SIGHUP)
    procs[NEW] = start(NEW)
    v_new = _version(tmp_path / "mesh.toml")

    # the URL publishes the new copy once the slot's test (every test starts on a file host and
    # goes to a URL host) has been refused busy, or 4 s into the slot
    def busy_in(recs, lo, hi):
        return [r for r in recs if r["probe"] == "throughput" and r["type"] == "BREACH"
                and r.get("metric") == "connection" and r.get("state") == "busy" and lo <= _ts(r["ts"]) < hi]

    while time.time() < b1 + 4.0 and not any(busy_in(read(tmp_path, a), b1, b1 + SLOT) for a, _ in PAIRS):
        time.sleep(0.1)
    t_published = time.time()
    write(tmp_path / "published.toml", (tmp_path / "mesh.toml").read_text())

    def included():
        if {r.get("peer_name") for r in oneway(read(tmp_path, NEW))} != set(old):
            return False
        return all(oneway(read(tmp_path, n), NEW) for n in old)

    while not included():
        assert time.time() - t_change < EVERY, f"{NEW} not included within one cycle ({EVERY:g}s) of the change"
        time.sleep(0.3)
    t_included = time.time()
    t_stop = max(b1 + SLOT + CYCLES * EVERY, t_change + EVERY) + 1.0
    time.sleep(t_stop - time.time())
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        assert p.wait(timeout=60) == 0
    records = {n: read(tmp_path, n) for n in names}

    # both ways of every new path, named for the host the file gave them
    for n in old:
        got = oneway(records[n], NEW)
        assert got and all(r["peer"] == address[NEW] for r in got), n
    assert {r["peer_name"] for r in oneway(records[NEW])} == set(old)

    # no two throughput tests on one host or one site uplink at once, the mixed slot included
    spans = throughput_spans(records)
    overlaps = overlapping(spans, site)
    assert not overlaps, overlaps
    assert {(a, b) for _, _, a, b in spans} == set(PAIRS), spans

    # the busy path ran: the mixed slot's test was refused, the URL host naming both versions
    refused = [r for a, _ in PAIRS for r in busy_in(records[a], b1, b1 + SLOT)]
    assert refused, f"no test refused busy in the slot from {b1:.0f} (versions differed until the URL changed)"
    assert all(f"busy: mesh version {v_old} here, {v_new} in the hello" in r["detail"] for r in refused), refused

    # every throughput pair measured in every one of its slots, the mixed one included: a pair's
    # slots are a cycle apart, in the phase of its first measured run
    phase = {(a, b): int(min(s0 for s0, _, x, y in spans if (x, y) == (a, b)) // SLOT) % 3 for a, b in PAIRS}
    assert sorted(phase.values()) == [0, 1, 2], phase
    missed = []
    for k in range(int(t_ready // SLOT) + 1, int((t_stop - 1.0) // SLOT)):
        for pair, ph in phase.items():
            if k % 3 == ph and not any((x, y) == pair and k * SLOT - 0.5 <= s0 < (k + 1) * SLOT
                                       for s0, _, x, y in spans):
                missed.append((pair, k * SLOT))
    assert not missed, missed

    # every existing directed oneway path reports every interval across the reload: one unbroken
    # run of interval numbers (no hole, no new session), as many as the time it covered holds (a
    # record a stalled host wrote late is late, not lost)
    for n in old:
        for peer in set(old) - {n}:
            ids = [r["interval_id"] for r in oneway(records[n], peer) if _ts(r["ts"]) >= t_ready]
            assert ids == list(range(ids[0], ids[0] + len(ids))), (n, peer, ids)
            assert len(ids) >= (t_stop - t_ready) / ONEWAY_INTERVAL - 1, (n, peer, len(ids), t_stop - t_ready)

    # the URL hosts fetched with ETag: unchanged copies came back 304
    log = [line.split() for line in (tmp_path / "http.log").read_text().splitlines()]
    assert sum(1 for _, status, _ in log if status == "304") >= len(BY_URL)
    print(f"change at B1-{b1 - t_change:.1f}s; URL published B1+{t_published - b1:.1f}s; {len(refused)} busy; "
          f"{NEW} included {t_included - t_change:.1f}s after the change; run {time.monotonic() - t_begin:.0f}s")
