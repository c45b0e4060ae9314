"""The `busy` answer of the peer side to mesh-timetabled (exclusive) tests.

- A peer server (the real listener and throughput responder, on loopback) with a mesh version:
  a hello of another version, or of a second test while one runs, is refused busy; the down
  connection of the running test and a hello without a mesh version are not.
- Versions the daemon says run the same timetable (`mesh_also`) are served like its own.
- Two daemons whose mesh files differ (a tag of h2): h1's throughput test to h2 is refused busy
  in every slot, each miss a BREACH metric=connection state=busy counted in busy_missed, no
  throughput result; once h2's file equals h1's (SIGHUP), the test runs in a later slot. The
  versions in the refusal are the ones `netprobe mesh check` prints for each file.
"""
import itertools
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest

from netprobe import serve
from netprobe.errors import PeerError
from netprobe.peer.client import connect
from tests.integration.test_mesh_daemon import _ts
from tests.integration.test_oneway import ROOT, free_port, netprobe, records

SLOT = 5.0                     # duration 2 s + clock_error 0 + connect_time 3 s (a worker's start on a
                               # loaded host takes seconds)
EVERY = 2 * SLOT               # a slot between runs: each run is a worker of its own


def _up(port, **fields):
    return connect(f"127.0.0.1:{port}", "throughput", timeout=5.0, role="up", rate_down=0,
                   sample_ns=100_000_000, **fields)


def test_the_peer_side_answers_busy_to_a_second_test_or_another_version():
    server = serve.Server([("127.0.0.1", 0)])
    server.mesh_version = "v1"
    stop = threading.Event()
    t = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
    t.start()
    port = server.addresses[0][1]
    try:
        first = _up(port, mesh="v1", session=secrets.token_hex(16))
        with pytest.raises(PeerError, match=r"refused: busy: in an exclusive test already \(throughput from "
                                            r"127\.0\.0\.1\)"):
            _up(port, mesh="v1", session=secrets.token_hex(16))
        with pytest.raises(PeerError, match=r"refused: busy: mesh version v1 here, v2 in the hello"):
            _up(port, mesh="v2", session=secrets.token_hex(16))
        with pytest.raises(PeerError, match=r"refused: bad handshake: mesh must be a version"):
            _up(port, mesh="v1\x1b[2J", session=secrets.token_hex(16))
        _up(port, session=secrets.token_hex(16)).close()          # not timetabled: not judged
        first.close()
        end = time.monotonic() + 5
        while True:                                 # the first test's responder sees the close
            try:
                _up(port, mesh="v1", session=secrets.token_hex(16)).close()
                break
            except PeerError:
                assert time.monotonic() < end, "the first test still holds the peer after its close"
                time.sleep(0.1)
        assert server.counters["refused_busy"] >= 2 and server.counters["bad_handshake"] == 1
    finally:
        stop.set()
        t.join(5)


def test_the_peer_side_serves_the_versions_it_is_told_run_the_same_timetable():
    server = serve.Server([("127.0.0.1", 0)])
    server.set_mesh("v2", ("v1",))
    stop = threading.Event()
    t = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
    t.start()
    port = server.addresses[0][1]
    try:
        with pytest.raises(PeerError, match=r"refused: busy: mesh version v2 here, v3 in the hello"):
            _up(port, mesh="v3", session=secrets.token_hex(16))
        first = _up(port, mesh="v1", session=secrets.token_hex(16))       # a host not yet on v2
        with pytest.raises(PeerError, match=r"refused: busy: in an exclusive test already"):
            _up(port, mesh="v2", session=secrets.token_hex(16))
        first.close()
        server.set_mesh("v2")
        with pytest.raises(PeerError, match=r"refused: busy: mesh version v2 here, v1 in the hello"):
            _up(port, mesh="v1", session=secrets.token_hex(16))
    finally:
        stop.set()
        t.join(5)


def _mesh(port, h2_tags):
    return f"""
[schedule]
clock_error = "0s"
connect_time = "3s"

[[host]]
name = "h1"
address = "127.0.0.31:{port}"
tags = {{ site = "a" }}

[[host]]
name = "h2"
address = "127.0.0.32:{port}"
tags = {{ {h2_tags} }}

[[test]]
kind = "throughput"
between = "all"
rate = "20M"
interval = "1s"
window = "2s"
duration = "2s"
every = "{EVERY:g}s"
exclusive_by = ["host"]
"""


def _host(tmp_path, name, addr, port):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f"""
[daemon]
restart_backoff = "500ms"
stop_timeout = "10s"

[serve]
listen = ["{addr}:{port}"]

[mesh]
file = "{tmp_path / (name + '-mesh.toml')}"
self = "{name}"
refresh = "1h"
state = "{tmp_path / (name + '-state.json')}"

[output.file]
type = "jsonfile"
path = "{tmp_path / (name + '.jsonl')}"
""")
    return subprocess.Popen([sys.executable, "-m", "netprobe", "run", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.err", "w"))


def _version(path):
    out = subprocess.run(netprobe("mesh", "check", path), cwd=ROOT, capture_output=True, text=True, check=True)
    return re.search(r"ok: version (\w+),", out.stdout).group(1)


def _until(path, pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        recs = records(path.read_text()) if path.exists() else []
        if pred(recs):
            return recs
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout}s: {path.read_text() if path.exists() else 'no output'}")


def _busy(recs):
    return [r for r in recs if r["type"] == "BREACH" and r.get("metric") == "connection" and r["name"] == "h2.t0"]


def _ran(recs):
    """Results of runs that measured: with the sender's rows from a session (retrans_total); a run
    that never connected writes a RESULT with samples=0 and nothing else at its stop."""
    return [r for r in recs if r["type"] == "RESULT" and r["probe"] == "throughput" and r["name"] == "h2.t0"
            and "retrans_total" in r]


def test_hosts_on_different_mesh_versions_miss_their_test_until_they_agree(tmp_path):
    port = free_port()
    (tmp_path / "h1-mesh.toml").write_text(_mesh(port, 'site = "b"'))
    (tmp_path / "h2-mesh.toml").write_text(_mesh(port, 'site = "b", rack = "x"'))
    v1, v2 = _version(tmp_path / "h1-mesh.toml"), _version(tmp_path / "h2-mesh.toml")
    assert v1 != v2
    procs = [_host(tmp_path, "h1", "127.0.0.31", port), _host(tmp_path, "h2", "127.0.0.32", port)]
    out = tmp_path / "h1.jsonl"
    try:
        recs = _until(out, lambda recs: len(_busy(recs)) >= 1, 4 * EVERY)
        (tmp_path / "h2-mesh.toml").write_text(_mesh(port, 'site = "b"'))
        t_agree = time.time()
        procs[1].send_signal(signal.SIGHUP)
        recs = _until(out, lambda recs: _ran(recs) and _ts(_ran(recs)[0]["ts"]) > t_agree, 4 * EVERY)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    busy = _busy(recs)
    assert all(r["state"] == "busy" and f"busy: mesh version {v2} here, {v1} in the hello" in r["detail"]
               for r in busy if _ts(r["ts"]) < t_agree), busy
    # one miss per run, counted
    assert [r["busy_missed"] for r in busy] == list(range(1, len(busy) + 1)), busy
    runs = [_ts(r["ts"]) // EVERY for r in busy]
    assert all(b > a for a, b in itertools.pairwise(runs)), runs
    assert not [r for r in _ran(recs) if _ts(r["ts"]) < t_agree]
    # agreed: the test runs in its first slot after h2's next slot boundary
    first = _ts(_ran(recs)[0]["ts"])
    assert first < t_agree + SLOT + EVERY + SLOT, (first, t_agree)
    assert not [r for r in busy if _ts(r["ts"]) > first]
    print(f"{len(busy)} runs missed busy; first run {first - t_agree:.1f}s after the files agreed")
