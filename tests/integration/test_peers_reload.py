"""A changed peers list reaches the running oneway worker without a restart (SIGHUP): with three
peers running, one is removed and a fourth added. Oracles: the process tree (the same worker
process before and after), per-peer iptables packet counters on the probes' way in (a rule with
no target only counts), against which every peer's `sent` summed over its RESULT records must
add up exactly (no interval lost, the removed peer's final one included), the record times
(the unchanged peers' intervals spaced by the interval across the reload) and the fixed
schedule's probe count per whole interval (a cut interval would carry fewer)."""
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import IS_ROOT, NOT_ROOT_REASON
from tests.integration.test_mesh_daemon import _ts
from tests.integration.test_oneway import ROOT, free_port, netprobe, records, wait_listening
from tests.integration.test_oneway_peers import _iptables, _workers

PEERS = {f"q{i}": f"127.0.0.{90 + i}" for i in range(1, 5)}
BEFORE, AFTER = ("q1", "q2", "q3"), ("q1", "q3", "q4")
INTERVAL, GAP = 1.0, 0.02
TAG = f"netprobe-test-reload-{os.getpid()}"


def _rule(name):
    # probes are 100..128-byte payloads (IP length 128..156); the 64-byte control records are not counted
    return ["INPUT", "-d", PEERS[name], "-p", "udp", "-m", "length", "--length", "120:65535",
            "-m", "comment", "--comment", f"{TAG}-{name}"]


def _counted():
    out = {}
    for line in _iptables("-L", "INPUT", "-v", "-x", "-n").stdout.splitlines():
        for name in PEERS:
            if f"/* {TAG}-{name} */" in line:
                out[name] = int(line.split()[0])
    return out


def _config(path, port, names, out):
    peers = ", ".join(f'"{n}={PEERS[n]}:{port}"' for n in names)
    path.write_text(f"""
[daemon]
stop_timeout = "10s"

[[probe]]
kind = "oneway"
name = "fleet"
peers = [{peers}]
interval = "{INTERVAL}s"
gap = "{GAP * 1000:g}ms"
schedule = "fixed"
ecmp_width = 4
grace = "500ms"
size_min = 100
size_max = 128
connect_timeout = "1s"

[output.file]
type = "jsonfile"
path = "{out}"
""")


def _wait_results(out, want, timeout=20):
    """Until each peer in `want` has that many RESULT records (the daemon's start takes seconds on a
    loaded host)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        recs = records(out.read_text()) if out.exists() else []
        if all(sum(1 for r in recs if r["type"] == "RESULT" and r["name"] == n) >= k for n, k in want.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {want} RESULT records within {timeout}s")


@pytest.fixture
def counted_peers():
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    port = free_port()
    listen = [a for addr in PEERS.values() for a in ("--listen", f"{addr}:{port}")]
    serve = subprocess.Popen(netprobe("serve", *listen, "--duration", "60s"), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for name in PEERS:
            _iptables("-I", *_rule(name))
        for addr in PEERS.values():
            wait_listening(addr, port)
        yield port
    finally:
        for name in PEERS:
            _iptables("-D", *_rule(name), check=False)
        serve.kill()
        serve.wait()


def test_peers_added_and_removed_without_touching_the_others(counted_peers, tmp_path):
    port = counted_peers
    cfg, out = tmp_path / "np.toml", tmp_path / "out.jsonl"
    _config(cfg, port, BEFORE, out)
    proc = subprocess.Popen([sys.executable, "-m", "netprobe", "run", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_results(out, dict.fromkeys(BEFORE, 3))
        before = _workers(proc.pid)
        _config(cfg, port, AFTER, out)
        t_hup = time.time()
        proc.send_signal(signal.SIGHUP)
        _wait_results(out, {"q1": 8, "q3": 8, "q4": 3})
        after = _workers(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert len(before) == 1 and before == after, (before, after)       # the same worker process throughout
    counted = _counted()
    recs = records(out.read_text())
    assert not [r for r in recs if r["type"] in ("GAP", "ERROR", "BREACH")], (recs, err)

    res = {n: [r for r in recs if r["type"] == "RESULT" and r["name"] == n] for n in PEERS}
    for name in PEERS:
        # every probe the peer's address received is in exactly one of its intervals: none lost or cut off
        assert sum(r["sent"] for r in res[name]) == counted[name] > 0, (name, counted, res[name])
    full = round(INTERVAL / GAP)
    for name in set(BEFORE) & set(AFTER):
        stamps = [_ts(r["ts"]) for r in res[name]]
        assert sum(t < t_hup for t in stamps) >= 3 and stamps[-1] > t_hup + 4 * INTERVAL, (name, stamps, t_hup)
        assert [r["interval_id"] for r in res[name]] == list(range(len(res[name])))      # one session
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        assert max(steps) < 2 * INTERVAL, (name, steps)      # no interval missing (ids above), none held long
        # whole intervals (all but the stop's): the fixed schedule's count each, on average (a stalled
        # sender on a loaded host moves a few probes from one interval to the next)
        whole = [r["sent"] for r in res[name][:-1]]
        assert abs(sum(whole) / len(whole) - full) <= 0.05 * full, (name, whole)
    gone, new = res["q2"], res["q4"]
    assert gone[-1]["sent"] < full and t_hup < _ts(gone[-1]["ts"]) < t_hup + 1.5 * INTERVAL, (gone[-1], t_hup)
    assert _ts(new[0]["ts"]) < t_hup + 2 * INTERVAL, (new[0], t_hup)
    print(f"first interval of the added peer {_ts(new[0]['ts']) - t_hup:.2f}s after SIGHUP; "
          f"removed peer's final interval {_ts(gone[-1]['ts']) - t_hup:.2f}s after, {gone[-1]['sent']} probes")
