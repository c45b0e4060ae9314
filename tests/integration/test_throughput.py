"""The throughput probe end to end: real peers, real signals, and the netns lab
with injected rate limits, loss and delay as the oracle.

The loopback rate bounds are fixed. A run that misses one is taken again only when
the host held a thread of the probe or of the peer back (runqueue wait and vCPU
steal from the kernel's scheduler statistics, tests/stall.py) long enough in the
window that missed to explain it; on a quiet host a miss fails at once."""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

import pytest

from tests.stall import RunDelay, until_no_miss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def netprobe(*args):
    return [PY, "-m", "netprobe", *map(str, args)]


def records(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def wait_listening(port, host="127.0.0.1", timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port}")


@pytest.fixture
def peer(tmp_path):
    """A `netprobe serve` process on a free loopback port; killed at teardown."""
    procs = []

    def start(*extra, port=None):
        port = port or free_port()
        p = subprocess.Popen(netprobe("serve", "--listen", f"127.0.0.1:{port}", *extra), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        wait_listening(port)
        return p, port
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def one_shot(*args, timeout=60):
    return subprocess.run(netprobe("probe", "throughput", "--json", *args), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def watched_shot(peer_proc, *args, timeout=60):
    """one_shot() while a RunDelay watches its process and the peer's: (CompletedProcess, RunDelay)."""
    cmd = netprobe("probe", "throughput", "--json", *args)
    with RunDelay([peer_proc.pid]) as held:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        held.watch(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), held


BUCKET_S = 0.005                        # each pacer's auto depth: 5 ms of its rate
TCP_RECOVERY_S = 2.5                    # after a tbf's backlog is dropped: TCP's timeout recovery


def rate_misses(rows, want, tol, held, window=2.0):
    """The windows of `rows` off `want` by more than `tol`: (dir, ratio, the share of the window the
    host held back the worst-off thread of the probe or the peer, the share that would explain the
    miss: tol beyond the 5 ms a pacer's bucket bridges)."""
    out = []
    for r in rows:
        ratio = r["rate"] / want[r["dir"]]
        if not 1 - tol < ratio < 1 + tol:
            end = int(_ts(r["ts"]) * 1e9)
            share = held.held_back_ns(end - int(window * 1e9), end, wall=True) / (window * 1e9)
            out.append((r["dir"], round(ratio, 4), round(share, 4), round(tol - BUCKET_S / window, 4)))
    return out


def test_loopback_both_ways_holds_the_rate(peer):
    srv, port = peer()

    def attempt():
        proc, held = watched_shot(srv, "--peer", f"127.0.0.1:{port}", "--rate", "300M", "--rate-down", "150M",
                                  "--interval", "1s", "--window", "2s", "--duration", "7s")
        assert proc.returncode == 0, proc.stderr
        recs = records(proc.stdout)
        assert not [r for r in recs if r["type"] == "BREACH"], recs
        full = [r for r in recs if r["type"] == "RESULT" and r.get("samples", 0) >= 15]
        # steady state: not the first full window (it holds the connect) nor the final partial one
        steady = {d: [r for r in full if r["dir"] == d][1:-1] for d in ("a->b", "b->a")}
        assert all(len(w) >= 2 for w in steady.values()), recs
        # 5 %: this checks what the probe reports (units, directions, both flows at once); the
        # 1 %-per-second accuracy is asserted in tests/ext/test_tcpflow.py
        return rate_misses(steady["a->b"] + steady["b->a"], {"a->b": 300e6, "b->a": 150e6}, 0.05, held)
    until_no_miss(attempt, tries=3)


def test_ipv6_loopback(tmp_path):
    port = free_port()
    srv = subprocess.Popen(netprobe("serve", "--listen", f"[::1]:{port}"), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, host="::1")

        def attempt():
            proc, held = watched_shot(srv, "--peer", f"[::1]:{port}", "--rate", "100M", "--interval", "1s",
                                      "--window", "2s", "--duration", "3.5s")
            assert proc.returncode == 0, proc.stderr
            res = [r for r in records(proc.stdout) if r["type"] == "RESULT" and "samples" in r]
            full = [r for r in res if r["samples"] >= 15]
            assert {r["dir"] for r in full} == {"a->b", "b->a"}
            return rate_misses(full, {"a->b": 100e6, "b->a": 100e6}, 0.02, held)
        until_no_miss(attempt, tries=3)
    finally:
        srv.kill()
        srv.wait()


def test_peer_killed_breach_then_reconnect_and_clear(peer):
    p, port = peer()
    probe = subprocess.Popen(netprobe("probe", "throughput", "--json", "--peer", f"127.0.0.1:{port}",
                                      "--rate", "100M", "--interval", "1s", "--window", "2s",
                                      "--duration", "18s"),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        killed = time.time()            # before the kill: the probe may see the close before we run again
        p.kill()
        p.wait()
        time.sleep(3)
        peer(port=port)
        restarted = time.time()
        out, err = probe.communicate(timeout=40)
    finally:
        if probe.poll() is None:
            probe.kill()
    recs = records(out)
    conn = [r for r in recs if r.get("metric") == "connection"]
    assert [r["type"] for r in conn] == ["BREACH", "CLEAR"], conn
    breach_ts = _ts(conn[0]["ts"])
    assert 0 <= breach_ts - killed < 2.0, f"BREACH {breach_ts - killed:.2f}s after the kill"
    assert _ts(conn[1]["ts"]) - restarted < 5.5, "reconnected within one backoff step (<= 5 s)"
    after = [r for r in recs if r["type"] == "RESULT" and _ts(r["ts"]) > _ts(conn[1]["ts"]) + 2.5
             and r["dir"] == "a->b" and r.get("samples", 0) >= 15]
    # at the rate again: a window within 5 %, none far below (on a throttled VM host stalls lower
    # some windows; the pacer's accuracy is tests/ext/test_tcpflow.py's to assert)
    assert after and any(abs(r["rate"] / 100e6 - 1) < 0.05 for r in after), after
    assert all(0.5 < r["rate"] / 100e6 < 1.05 for r in after), after
    assert "Traceback" not in err


def _ts(iso):
    import calendar
    base, ms = iso.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000


@pytest.mark.parametrize("case,serve_args,probe_args,message", [
    ("unreachable", None, ["--peer", "127.0.0.1:{free}"], "cannot connect to 127.0.0.1:"),
    ("wrong key", ["--key-file", "{keyfile}"], ["--key", "wrong"], "refused: authentication failed"),
    ("no key", ["--key-file", "{keyfile}"], [], "asks for a shared key and none is configured"),
    ("not allowed", ["--allow", "192.0.2.0/24"], [], "refused: client 127.0.0.1 is not in the allow list"),
    ("over budget", ["--max-rate", "100M"], ["--rate-down", "200M"], "send budget"),
])
def test_refusals_are_one_breach_line_not_a_traceback(peer, tmp_path, case, serve_args, probe_args, message):
    keyfile = tmp_path / "key"
    keyfile.write_text("s3cret-s3cret-16\n")
    keyfile.chmod(0o600)
    port = free_port()
    if serve_args is not None:
        _, port = peer(*[a.format(keyfile=keyfile) for a in serve_args])
    args = ["--peer", f"127.0.0.1:{port}", "--rate", "10M", "--interval", "1s", "--duration", "2s"]
    args += [a.format(free=free_port()) for a in probe_args]
    proc = one_shot(*args)
    assert proc.returncode == 0, proc.stderr
    breaches = [r for r in records(proc.stdout) if r["type"] == "BREACH"]
    assert len(breaches) == 1 and breaches[0]["metric"] == "connection", breaches
    assert message in breaches[0]["detail"], breaches[0]
    assert "Traceback" not in proc.stderr


def test_bad_rate_is_one_line_exit_2():
    proc = one_shot("--peer", "127.0.0.1", "--rate", "10 Gbps")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ('netprobe: error: netprobe probe: --rate: "10 Gbps" is not a rate '
                                   '(examples: 100M, 9.5G, 1.2Gbit/s, 500k)')


# ---- the lab: A runs the probe, B runs the peer, R injects the impairment -------------------------

def lab_peer(lab):
    p = lab.popen("b", netprobe("serve", "--listen", f"{lab.b4}:7171", "--allow", "198.18.0.0/15"), cwd=ROOT)
    end = time.monotonic() + 15
    while lab.run("a", [PY, "-c", f"import socket; socket.create_connection(('{lab.b4}', 7171), 1).close()"],
                  check=False).returncode != 0:
        assert time.monotonic() < end, "peer in B did not come up"
        time.sleep(0.1)
    return p


def lab_probe(lab, *args):
    return lab.popen("a", netprobe("probe", "throughput", "--json", "--peer", f"{lab.b4}:7171", *args), cwd=ROOT)


@pytest.mark.lab
def test_lab_rate_limit_one_way_breaches_that_direction_then_clears(lab):
    """tbf 100 Mbit/s A->B only, SLA 200M both ways: a->b breaches and clears in time, b->a never.

    b->a's ACKs queue (and drop) behind a->b in the shaped queue, which slows b->a for a
    few seconds at the onset: a real shared-queue effect that AckPathGuard attributes to
    a->b, so b->a's delivery verdicts are withheld while a->b saturates the path.
    """
    peer = lab_peer(lab)
    window, hyst = 4, 2
    with RunDelay([peer.pid]) as held:
        probe = lab_probe(lab, "--rate", "200M", "--interval", "1s", "--window", f"{window}s",
                          "--breach-after", str(hyst), "--clear-after", str(hyst), "--duration", "24s")
        held.watch(probe.pid)
        time.sleep(4)
        lab.set(rate_ab="100mbit")
        limited = time.time()
        time.sleep(9)
        lab.clear()
        freed = time.time()
        out, err = probe.communicate(timeout=60)
    recs = records(out)
    events = [r for r in recs if r["type"] in ("BREACH", "CLEAR") and r["dir"] == "a->b"]
    assert [(r["type"], r["metric"]) for r in events] == [("BREACH", "rate"), ("CLEAR", "rate")], events
    assert _ts(events[0]["ts"]) - limited <= window + 2, "BREACH within window + 2 s"
    assert events[0]["value"] < 0.95 * 200e6 and events[0]["threshold"] == 0.95 * 200e6, events[0]
    limited_windows = [r for r in recs if r["type"] == "RESULT" and r["dir"] == "a->b"
                       and limited + window + 1 < _ts(r["ts"]) < freed]
    # payload through 100 Mbit/s of frames is ~0.478 of 200M. Lower is the shaper, not the probe: a
    # throttled VM's tbf delivered 72 % of its rate (a 0.34 median here; the capacity bench's UDP
    # flows got 70-89 %), so only the ceiling is asserted
    assert limited_windows and all(r["ratio"] < 0.5 for r in limited_windows), limited_windows
    assert all(r["limited_by"] == "network" for r in limited_windows), limited_windows
    assert not [r for r in recs if r["type"] in ("BREACH", "CLEAR") and r["dir"] == "b->a"], recs
    down = [r for r in recs if r["type"] == "RESULT" and r["dir"] == "b->a" and r.get("samples", 0) >= 30]
    assert down
    # b->a falls short while its ACKs queue behind a->b in the shaped queue (the test's clock: the
    # tbf on, until a->b's window and TCP's recovery have left it); there a short window is marked
    # (and not judged), naming a->b or, on a loaded host, the sending host
    shaped = [r for r in down if limited < _ts(r["ts"]) <= freed + window + TCP_RECOVERY_S]
    assert all(r["ratio"] >= 0.95 or r.get("ack_path_saturated_by") == "a->b" or r["limited_by"] == "sender"
               for r in shaped), shaped
    # outside that time only the host can make b->a short: the kernel's scheduler statistics of
    # the probe's and the peer's threads must show it held them back for the shortfall
    free = [r for r in down if r not in shaped]
    unexplained = [m for m in rate_misses(free, {"b->a": 200e6}, 0.05, held, window) if m[-2] < m[-1]]
    assert not unexplained, (unexplained, free)
    # a->b saturates until its window has left the limited time; b->a is judged a window later
    assert all("ack_path_saturated_by" not in r for r in down if _ts(r["ts"]) > freed + 2 * window + 1), down
    # CLEAR within window + hysteresis (+1 interval of phase) of the flow running free again: deleting
    # the tbf drops its ~0.6 MB backlog, and TCP's retransmission timeout recovery from that
    # takes up to ~2 s more before the flow runs at full rate
    assert _ts(events[1]["ts"]) - freed <= window + hyst + 1 + 2, "CLEAR within window + hysteresis"


@pytest.mark.lab
@pytest.mark.parametrize("lab", [{"offload": "off"}], indirect=True)
def test_lab_loss_retransmits_agree_with_nstat(lab):
    lab_peer(lab)
    lab.set(loss_ab=2.0)
    before = lab.nstat("a", "TcpRetransSegs")
    probe = lab_probe(lab, "--rate", "40M", "--rate-down", "0", "--interval", "1s", "--window", "3s",
                      "--duration", "8s")
    out, err = probe.communicate(timeout=60)
    after = lab.nstat("a", "TcpRetransSegs")
    results = [r for r in records(out) if r["type"] == "RESULT" and "retrans_total" in r]
    ours = results[-1]["retrans_total"]
    kernel = after - before
    assert kernel > 100, "the loss produced retransmissions"
    assert abs(ours - kernel) <= 0.02 * kernel, (ours, kernel)


@pytest.mark.lab
def test_lab_delay_rtt_matches_ping_and_max_rtt_breaches(lab):
    lab_peer(lab)
    lab.set(delay=20)
    # 10 Mbit/s: the Python delay helper in R stays well below the load at which it lags
    probe = lab_probe(lab, "--rate", "10M", "--interval", "1s", "--window", "3s", "--max-rtt", "35ms",
                      "--breach-after", "2", "--duration", "8s")
    # ping while the probe runs, so both see the same lag of the Python delay helper in R (a
    # ping taken before, on an idle helper, once read 1.4 ms less than the loaded path);
    # the median, as ours: the helper lags at times, which lifts ping's mean
    time.sleep(1.0)
    ping = lab.run("a", ["ping", "-c", "100", "-i", "0.05", lab.b4]).stdout
    ping_avg = statistics.median(float(t) for t in re.findall(r"time=([0-9.]+) ms", ping)) / 1e3
    out, err = probe.communicate(timeout=60)
    recs = records(out)
    # the windows' median RTT: a VM stall spikes srtt for a while and lifts a window's mean
    rtts = [r["rtt_p50"] for r in recs if r["type"] == "RESULT" and r["dir"] == "a->b" and r.get("samples", 0) >= 20]
    assert rtts, recs
    assert abs(statistics.median(rtts) - ping_avg) < 1e-3, (rtts, ping_avg)
    assert any(r["type"] == "BREACH" and r["metric"] == "rtt" and r["dir"] == "a->b" for r in recs), recs
