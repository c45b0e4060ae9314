"""One oneway worker serving several peers (`peers = [...]`): four peers on loopback addresses,
one of them behind an iptables statistic DROP of probe-sized datagrams (in INPUT: a DROP in
OUTPUT fails the send call, which the sender counts as a send error, not a loss), and a fifth
that never answers a connect (its SYNs dropped). Oracles: the process tree (one worker process
under the supervisor), the records per peer and per interval, and the DROP rule's own packet
counter for the lossy peer's loss."""
import itertools
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import IS_ROOT, NOT_ROOT_REASON
from tests.integration.test_mesh_daemon import _ts
from tests.integration.test_oneway import ROOT, free_port, netprobe, records, wait_listening

PEERS = {f"p{i}": f"127.0.0.{60 + i}" for i in range(1, 5)}
LOSSY = "p2"
SILENT = ("p5", "127.0.0.65")
DROP = 0.2                     # probability of the statistic match
RUN_S = 6.0
INTERVAL = 1.0
TAG = f"netprobe-test-peers-{os.getpid()}"
PORTS = 40000 + os.getpid() % 1000 * 16     # 16 source ports, the same for every peer


def _iptables(*args, check=True):
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


def _rule():
    # probes are 100..128-byte payloads (IP length 128..156); control records, 64 bytes, pass
    return ["INPUT", "-d", PEERS[LOSSY], "-p", "udp", "-m", "length", "--length", "120:65535",
            "-m", "statistic", "--mode", "random", "--probability", str(DROP), "-m", "comment", "--comment", TAG,
            "-j", "DROP"]


def _silent_rule(port):
    return ["INPUT", "-d", SILENT[1], "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment",
            f"{TAG}-syn", "-j", "DROP"]


def _dropped():
    for line in _iptables("-L", "INPUT", "-v", "-x", "-n").stdout.splitlines():
        if f"/* {TAG} */" in line:
            return int(line.split()[0])
    raise AssertionError("the DROP rule is gone")


@pytest.fixture
def peers():
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    port = free_port()
    listen = [a for addr in PEERS.values() for a in ("--listen", f"{addr}:{port}")]
    serve = subprocess.Popen(netprobe("serve", *listen, "--max-sessions-per-address", "8", "--duration", "60s"),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _iptables("-I", *_rule())
    _iptables("-I", *_silent_rule(port))
    try:
        for addr in PEERS.values():
            wait_listening(addr, port)
        yield port
    finally:
        _iptables("-D", *_rule(), check=False)
        _iptables("-D", *_silent_rule(port), check=False)
        serve.kill()
        serve.wait()


def _workers(pid):
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "netprobe.supervisor.worker" in line]


def test_one_worker_serves_every_peer_with_its_own_loss(peers):
    port = peers
    spec = ",".join(f"{name}={addr}:{port}" for name, addr in [*PEERS.items(), SILENT])
    proc = subprocess.Popen(netprobe("probe", "oneway", "--json", "--name", "fleet", "--peers", spec,
                                     "--connect-timeout", "1s",
                                     "--interval", f"{INTERVAL}s", "--gap", "20ms", "--ports", f"{PORTS}-{PORTS + 15}",
                                     "--grace", "200ms", "--size-min", "100", "--size-max", "128",
                                     "--duration", f"{RUN_S}s"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(RUN_S / 2)
    workers = _workers(proc.pid)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert len(workers) == 1, workers                       # one process for four peers

    recs = records(out)
    assert not [r for r in recs if r["type"] == "ERROR"]
    # the lossy peer's loss BREACH is its own, as is the silent peer's connection BREACH; the
    # others report every interval from the start all the same (the checks below)
    assert {(r["name"], r["metric"]) for r in recs if r["type"] == "BREACH"} == {(LOSSY, "loss"),
                                                                              (SILENT[0], "connection")}
    assert not [r for r in recs if r["type"] == "RESULT" and r["name"] == SILENT[0]]
    for name, addr in PEERS.items():
        res = [r for r in recs if r["type"] == "RESULT" and r["name"] == name]
        # a result every interval, numbered without a hole, each naming its own peer
        assert [r["interval_id"] for r in res] == list(range(len(res))) and len(res) >= RUN_S / INTERVAL - 2
        assert {r["peer"] for r in res} == {f"{addr}:{port}"}
        assert all(r["ports"] == 16 and r["sent"] > 0 for r in res)
        stamps = [_ts(r["ts"]) for r in res]
        assert max(b - a for a, b in itertools.pairwise(stamps)) <= 1.5 * INTERVAL
        full = [r["sent"] for r in res[:-1]]                 # whole intervals at a 20 ms mean gap
        assert 0.8 * INTERVAL / 0.02 < sum(full) / len(full) < 1.2 * INTERVAL / 0.02, full
        sent, lost = sum(r["sent"] for r in res), sum(r["lost"] for r in res)
        if name == LOSSY:
            dropped = _dropped()
            assert lost == dropped and 0.12 < dropped / sent < 0.28, (lost, dropped, sent)
        else:
            assert lost == 0, (name, lost, sent)


def test_sessions_renewed_before_the_peers_limit_keep_reporting(tmp_path):
    """The peer ends a session after --max-session-length; each peer's session is renewed before
    that, on its own, and every peer keeps a result every interval without a connection BREACH."""
    port = free_port()
    addrs = {"r1": "127.0.0.71", "r2": "127.0.0.72"}
    listen = [a for addr in addrs.values() for a in ("--listen", f"{addr}:{port}")]
    serve = subprocess.Popen(netprobe("serve", *listen, "--max-session-length", "10s", "--duration", "60s"),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for addr in addrs.values():
            wait_listening(addr, port)
        spec = ",".join(f"{name}={addr}:{port}" for name, addr in addrs.items())
        proc = subprocess.run(netprobe("probe", "oneway", "--json", "--peers", spec, "--interval", "1s",
                                       "--gap", "20ms", "--ecmp-width", "1", "--grace", "200ms", "--duration", "13s"),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        serve.kill()
        serve.wait()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("renewing session") == len(addrs), proc.stderr      # at 9.5 s
    recs = records(proc.stdout)
    assert not [r for r in recs if r["type"] in ("BREACH", "ERROR")]
    for name in addrs:
        res = [r for r in recs if r["type"] == "RESULT" and r["name"] == name]
        assert sum(1 for r in res if r["interval_id"] == 0) == 2      # a fresh session's intervals count from 0
        stamps = [_ts(r["ts"]) for r in res]
        assert max(b - a for a, b in itertools.pairwise(stamps)) <= 1.5
        assert all(r["lost"] == 0 for r in res)


def test_a_hung_peer_is_a_lost_connection_and_comes_back():
    """A peer whose process is stopped (SIGSTOP: the kernel keeps its TCP connection up, nothing
    answers) is a BREACH metric=connection for that peer alone, once an interval's record is
    2 intervals + grace + 2 s late; after SIGCONT it reconnects (CLEAR) and reports again. The
    other peer reports every interval throughout."""
    port = free_port()
    addrs = {"hung": "127.0.0.81", "fine": "127.0.0.82"}
    serves = {name: subprocess.Popen(netprobe("serve", "--listen", f"{addr}:{port}", "--duration", "60s"),
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for name, addr in addrs.items()}
    try:
        for addr in addrs.values():
            wait_listening(addr, port)
        spec = ",".join(f"{name}={addr}:{port}" for name, addr in addrs.items())
        proc = subprocess.Popen(netprobe("probe", "oneway", "--json", "--peers", spec, "--interval", "1s",
                                         "--gap", "20ms", "--ecmp-width", "1", "--grace", "200ms",
                                         "--connect-timeout", "1s", "--duration", "17s"),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        serves["hung"].send_signal(signal.SIGSTOP)
        t_stop = time.time()
        time.sleep(6)
        serves["hung"].send_signal(signal.SIGCONT)
        t_cont = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        for s in serves.values():
            s.send_signal(signal.SIGCONT)
            s.kill()
            s.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    recs = records(out)
    events = [(r["type"], r["name"], _ts(r["ts"]), r.get("detail", "")) for r in recs
              if r["type"] in ("BREACH", "CLEAR")]
    (breach,) = [e for e in events if e[0] == "BREACH"]
    assert breach[1] == "hung" and "no interval record from the peer 4.2s after" in breach[3], events
    assert t_stop + 3.2 < breach[2] < t_stop + 4.2 + 2.5, (breach, t_stop)
    (clear,) = [e for e in events if e[0] == "CLEAR"]
    assert clear[1] == "hung" and t_cont < clear[2], (clear, t_cont)
    assert any(r["name"] == "hung" and _ts(r["ts"]) > clear[2] for r in recs if r["type"] == "RESULT")
    stamps = [_ts(r["ts"]) for r in recs if r["type"] == "RESULT" and r["name"] == "fine"]
    assert len(stamps) >= 14 and max(b - a for a, b in itertools.pairwise(stamps)) <= 1.5
