"""Never silent: a missing interval is BREACH metric=stale, a frozen worker is restarted, and
every span a probe did not measure is a GAP record (a real `netprobe run`, real signals).

Oracles: the RESULT records around the fault (their times say what was measured), the
signals the test sent and when, the worker processes `pgrep` sees, and the sd_notify
datagrams a socket of the test's receives.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from tests.integration.test_daemon import ROOT, procs, start, wait_for, worker_pids  # noqa: F401

CHECK_SLACK = 0.6        # s: the supervisor checks every 0.25 s, and pipes and scheduling lag


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Records:
    """Collects a daemon's --json records from its stdout as they arrive."""

    def __init__(self, proc):
        self.items = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            rec = json.loads(line)
            with self.lock:
                self.items.append(rec)

    def of(self, type_, **match):
        with self.lock:
            return [r for r in self.items if r["type"] == type_ and all(r.get(k) == v for k, v in match.items())]


def config(path, *, interval="1s", grace="1s", extra="", probe=None):
    probe = probe or f"""
[[probe]]
kind = "host"
name = "h"
interval = "{interval}"
require_clock_sync = false
"""
    path.write_text(f"""
[daemon]
restart_backoff = "200ms"
restart_backoff_max = "2s"
stale_grace = "{grace}"
{extra}
{probe}
[output.stdout]
format = "json"
""")
    return path


def run(cfg, procs, env=None):  # noqa: F811
    p = start(["run", "-c", str(cfg)], env=env or {})
    procs.append(p)
    return p, Records(p)


def the_worker(p):
    pids = wait_for(lambda: worker_pids(p.pid))
    assert pids and len(pids) == 1, pids
    return pids[0]


def closed_peer_probe():
    """A throughput probe against a port nobody listens on: it never writes an interval."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"""
[[probe]]
kind = "throughput"
name = "tp"
peer = "127.0.0.1:{port}"
rate = "10M"
interval = "1s"
window = "2s"
"""


def test_frozen_worker_is_stale_within_two_intervals_then_restarted_with_a_gap(tmp_path, procs):  # noqa: F811
    interval = 2.0
    p, recs = run(config(tmp_path / "n.toml", interval="2s"), procs)
    pid = the_worker(p)
    assert wait_for(lambda: len(recs.of("RESULT")) >= 2, timeout=20)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.time()
    try:
        breach = wait_for(lambda: recs.of("BREACH", metric="stale"), timeout=3 * interval + 5)
        assert breach, "no BREACH metric=stale"
        before = [r for r in recs.of("RESULT") if parse_ts(r["ts"]) <= stopped]
        last = parse_ts(before[-1]["ts"])
        # the last interval before the freeze ended at `last`; the stale verdict is due
        # `interval + max(interval, grace)` = 2 intervals later
        assert parse_ts(breach[0]["ts"]) - last <= 2 * interval + CHECK_SLACK
        assert parse_ts(breach[0]["ts"]) - last >= 2 * interval - 0.05
        new = wait_for(lambda: [w for w in worker_pids(p.pid) if w != pid], timeout=15)
        assert new, "the frozen worker was not replaced"
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5), "the frozen worker still exists"
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGCONT)
    gap = wait_for(lambda: recs.of("GAP"), timeout=15)
    assert gap and len(gap) == 1, recs.items[-10:]
    clear = wait_for(lambda: recs.of("CLEAR", metric="stale"), timeout=5)
    assert clear
    after = [r for r in recs.of("RESULT") if parse_ts(r["ts"]) > stopped]
    first = parse_ts(after[0]["ts"])
    g = gap[0]
    assert "frozen" in g["reason"] and "stale" in g["reason"]
    # the gap runs from the end of the last measured interval to the start of the next
    assert abs(parse_ts(g["start"]) - last) < 0.01
    assert abs(parse_ts(g["end"]) - (first - interval)) < 0.01
    assert abs(g["duration"] - (parse_ts(g["end"]) - parse_ts(g["start"]))) < 0.01
    # nothing measured goes unaccounted: RESULT intervals and the gap tile the time
    assert parse_ts(g["end"]) >= parse_ts(g["start"]) > 0
    assert parse_ts(clear[0]["ts"]) >= first - 0.01


def test_killed_worker_leaves_an_error_and_a_gap_spanning_the_missing_time(tmp_path, procs):  # noqa: F811
    interval = 1.0
    p, recs = run(config(tmp_path / "n.toml", interval="1s", grace="5s"), procs)
    pid = the_worker(p)
    assert wait_for(lambda: len(recs.of("RESULT")) >= 2, timeout=20)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    gap = wait_for(lambda: recs.of("GAP"), timeout=15)
    assert gap, "no GAP record"
    errors = recs.of("ERROR")
    assert errors and "SIGKILL" in errors[0]["error"]
    before = [parse_ts(r["ts"]) for r in recs.of("RESULT") if parse_ts(r["ts"]) <= killed]
    after = [parse_ts(r["ts"]) for r in recs.of("RESULT") if parse_ts(r["ts"]) > killed]
    assert "killed by SIGKILL" in gap[0]["reason"]
    assert abs(parse_ts(gap[0]["start"]) - before[-1]) < 0.01
    assert abs(parse_ts(gap[0]["end"]) - (after[0] - interval)) < 0.01
    assert not recs.of("BREACH", metric="stale"), "restarted within the grace: not stale"


def test_a_late_interval_keeps_the_grid_so_no_stretch_is_left_uncovered(tmp_path, procs):  # noqa: F811
    """A worker held up (SIGSTOP) across its interval's end for less than the stale allowance
    writes that interval late; the next must end where it was due anyway. Had the probe
    counted its next interval from the late one, a stretch as long as the delay would lie
    before the next RESULT's interval, covered by no record and flagged by no check."""
    interval, held = 1.0, 1.2
    p, recs = run(config(tmp_path / "n.toml", interval="1s"), procs)
    pid = the_worker(p)
    assert wait_for(lambda: len(recs.of("RESULT")) >= 3, timeout=20)
    n = len(recs.of("RESULT"))
    assert wait_for(lambda: len(recs.of("RESULT")) > n, timeout=5)
    time.sleep(0.3)                  # the next interval ends 0.7 s from here, while held
    os.kill(pid, signal.SIGSTOP)
    stopped = time.time()
    time.sleep(held)
    os.kill(pid, signal.SIGCONT)
    resumed = time.time()
    assert wait_for(lambda: len([r for r in recs.of("RESULT") if parse_ts(r["ts"]) > resumed]) >= 3, timeout=10)
    ts = [parse_ts(r["ts"]) for r in recs.of("RESULT")]
    before = [t for t in ts if t < stopped]
    late = [t for t in ts if stopped <= t <= resumed + 0.3]
    after = [t for t in ts if t > resumed + 0.3]
    assert len(late) == 1, (ts, stopped, resumed)
    # the phase of the grid before the hold, from the last two steady intervals
    phase = before[-1] % interval

    def off(t):
        d = (t - phase) % interval
        return min(d, interval - d)

    assert off(late[0]) > 0.3, "the held interval was not late: the test did not hold it"
    assert all(off(t) < 0.15 for t in after[:3]), (before[-2:], late, after[:3])
    # nothing missing: the late interval and the one after it end 2 intervals from the one before
    assert after[0] - before[-1] == pytest.approx(2 * interval, abs=0.15)
    assert not recs.of("GAP") and not recs.of("BREACH", metric="stale"), "within the allowance"


def test_reload_with_changed_settings_writes_a_gap(tmp_path, procs):  # noqa: F811
    cfg = config(tmp_path / "n.toml", interval="1s")
    p, recs = run(cfg, procs)
    the_worker(p)
    assert wait_for(lambda: len(recs.of("RESULT")) >= 1, timeout=20)
    config(cfg, interval="1.5s")
    p.send_signal(signal.SIGHUP)
    gap = wait_for(lambda: recs.of("GAP"), timeout=15)
    assert gap and "reload" in gap[0]["reason"]
    assert not recs.of("BREACH", metric="stale")


def test_stale_but_alive_is_not_killed_and_starves_the_watchdog(tmp_path, procs):  # noqa: F811
    """A throughput probe whose peer does not answer writes no interval: stale, but its worker
    lives (heartbeats), so it is not restarted; past watchdog_stale_limit the watchdog is no
    longer fed, while READY and STATUS still are."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = str(tmp_path / "notify.sock")
    sock.bind(addr)
    sock.settimeout(0.2)
    cfg = config(tmp_path / "n.toml", grace="1s", extra='watchdog_stale_limit = "2s"', probe=closed_peer_probe())
    p, recs = run(cfg, procs, env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "400000"})
    pid = the_worker(p)
    feeds = []
    end = time.monotonic() + 9
    while time.monotonic() < end:
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            continue
        if "WATCHDOG=1" in msg:
            feeds.append(time.monotonic())
    sock.close()
    breach = recs.of("BREACH", metric="stale")
    assert breach, "no BREACH metric=stale"
    assert worker_pids(p.pid) == [pid], "a live worker was restarted"
    # stale from ~3 s after start (1 s start allowance + 2 s), limit 2 s: no feed after ~5.5 s
    assert feeds, "the watchdog was never fed"
    assert feeds[-1] - feeds[0] < 6.5, "the watchdog was still fed while a probe stayed stale"
    assert time.monotonic() - feeds[-1] > 2.0


def test_open_gap_is_written_at_shutdown(tmp_path, procs):  # noqa: F811
    """A worker that cannot write its final interval (frozen at the stop) leaves a GAP from its
    last interval to the shutdown."""
    cfg = config(tmp_path / "n.toml", interval="1s", extra='stop_timeout = "1s"')
    p, recs = run(cfg, procs)
    pid = the_worker(p)
    assert wait_for(lambda: len(recs.of("RESULT")) >= 1, timeout=20)
    os.kill(pid, signal.SIGSTOP)
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        t1 = time.time()
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGCONT)
    recs.thread.join(timeout=5)
    gaps = recs.of("GAP")
    assert len(gaps) == 1, recs.items[-5:]
    assert "did not stop" in gaps[0]["reason"] and "daemon stopped" in gaps[0]["reason"]
    assert abs(parse_ts(gaps[0]["start"]) - parse_ts(recs.of("RESULT")[-1]["ts"])) < 0.01
    assert t1 - 1.5 <= parse_ts(gaps[0]["end"]) <= t1


def test_liveness_settings_are_validated(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nstale_grace = "soon"\n')
    out = subprocess.run([sys.executable, "-m", "netprobe", "check-config", str(bad)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and "daemon.stale_grace" in out.stderr and "Traceback" not in out.stderr


def test_a_notify_socket_nobody_reads_never_stalls_the_daemon(tmp_path, procs):  # noqa: F811
    """systemd reads every datagram, but a NOTIFY_SOCKET whose reader stopped (a full queue:
    net.unix.max_dgram_qlen, 10 by default) once blocked the supervisor in sendto: no more
    liveness checks, no reload, no stop. Results and the stop must go on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = str(tmp_path / "notify.sock")
    sock.bind(addr)                     # bound, never read
    try:
        p, recs = run(config(tmp_path / "n.toml", interval="0.5s"), procs,
                      env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "20000"})
        assert wait_for(lambda: len(recs.of("RESULT")) >= 8, timeout=30), "results stopped"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    finally:
        sock.close()
