"""The supervisor as a user runs it: a real `netprobe run` process, real signals."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_config(path, *, interval="0.5s", jsonfile=None, name="self", stop_timeout="5s"):
    text = f"""
[daemon]
restart_backoff = "200ms"
restart_backoff_max = "2s"
stop_timeout = "{stop_timeout}"

[[probe]]
kind = "host"
name = "{name}"
interval = "{interval}"
require_clock_sync = false

[output.stdout]
format = "text"
"""
    if jsonfile:
        text += f'\n[output.file]\ntype = "jsonfile"\npath = "{jsonfile}"\n'
    path.write_text(text)
    return path


def start(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "netprobe", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, **kw)


def wait_for(pred, timeout=15.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return None


def worker_pids(parent):
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def run_daemon(cfg, procs):
    """Start `netprobe run -c cfg`, wait for its worker; returns (process, worker pids)."""
    p = start(["run", "-c", str(cfg)])
    procs.append(p)
    workers = wait_for(lambda: worker_pids(p.pid))
    assert workers, "worker started"
    return p, workers


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_sigterm_flushes_final_interval_to_jsonfile(tmp_path, procs):
    out = tmp_path / "results.jsonl"
    cfg = write_config(tmp_path / "n.toml", interval="30s", jsonfile=out)
    p, _ = run_daemon(cfg, procs)
    time.sleep(1.5)                      # well inside the first 30 s interval
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=20)
    assert p.returncode == 0, stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "HEADER"
    results = [r for r in lines if r["type"] == "RESULT"]
    assert len(results) == 1, "the partial interval cut short by SIGTERM was written"
    assert results[0]["ticks"] > 500          # ~1.5 s of a 1 ms timer
    assert "RESULT probe=host name=self" in stdout


def test_sigkill_worker_is_restarted_and_logged_once(tmp_path, procs):
    cfg = write_config(tmp_path / "n.toml")
    p, first = run_daemon(cfg, procs)
    os.kill(first[0], signal.SIGKILL)
    second = wait_for(lambda: [w for w in worker_pids(p.pid) if w != first[0]])
    assert second, "a new worker was started"
    os.kill(second[0], signal.SIGKILL)
    third = wait_for(lambda: [w for w in worker_pids(p.pid) if w not in (first[0], second[0])])
    assert third, "restarted again after the second kill"
    time.sleep(0.8)                      # it produces results again
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=20)
    assert p.returncode == 0
    assert stderr.count("killed by SIGKILL") == 1, stderr
    assert "probe self killed by SIGKILL; restarting in 0.2s" in stderr
    assert len(re.findall(r"started probe self \(host\) pid=\d+", stderr)) == 3
    assert "RESULT probe=host name=self" in stdout


def test_sighup_with_broken_file_keeps_running_and_good_reload_applies(tmp_path, procs):
    cfg = write_config(tmp_path / "n.toml")
    p, worker = run_daemon(cfg, procs)
    cfg.write_text(cfg.read_text().replace('interval = "0.5s"', 'interval = "soon"'))
    p.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert p.poll() is None, "still running after a broken reload"
    assert worker_pids(p.pid) == worker, "the running probe was left alone"
    write_config(cfg, name="renamed")
    p.send_signal(signal.SIGHUP)
    assert wait_for(lambda: [w for w in worker_pids(p.pid) if w not in worker])
    time.sleep(1.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=20)
    assert p.returncode == 0
    assert re.search(r'reload failed, keeping the running config: .*n\.toml: probe\[0\]\.interval: '
                     r'"soon" is not a duration', stderr), stderr
    assert "reloaded" in stderr and "name=renamed" in stdout
    # the sinks hear of it too, not only stderr: an ERROR record naming the bad setting
    assert re.search(r'ERROR probe=daemon name=reload error="reload failed, keeping the running config: .*'
                     r'probe\[0\]\.interval', stdout), stdout


def test_sighup_unchanged_probe_keeps_its_worker(tmp_path, procs):
    cfg = write_config(tmp_path / "n.toml")
    p, worker = run_daemon(cfg, procs)
    cfg.write_text(cfg.read_text().replace('restart_backoff_max = "2s"', 'restart_backoff_max = "3s"'))
    p.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert worker_pids(p.pid) == worker
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=20)
    assert "1 probes kept, 0 started, 0 stopped" in stderr


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_socket_receives_ready_and_stopping(tmp_path, procs, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"netprobe-test-{os.getpid()}"
        sock.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify.sock")
        sock.bind(addr)
    sock.settimeout(20)
    cfg = write_config(tmp_path / "n.toml")
    p = start(["run", "-c", str(cfg)], env={"NOTIFY_SOCKET": addr})
    procs.append(p)
    msgs = []
    while not any("READY=1" in m for m in msgs):
        msgs.append(sock.recv(4096).decode())
    ready = next(m for m in msgs if "READY=1" in m)
    assert f"MAINPID={p.pid}" in ready and "STATUS=running 1 probes" in ready
    p.send_signal(signal.SIGTERM)
    while not any("STOPPING=1" in m for m in msgs):
        msgs.append(sock.recv(4096).decode())
    p.communicate(timeout=20)
    assert p.returncode == 0
    sock.close()


def test_second_signal_exits_3(tmp_path, procs):
    cfg = write_config(tmp_path / "n.toml", stop_timeout="30s")
    p = start(["run", "-c", str(cfg)])
    procs.append(p)
    assert "RESULT" in p.stdout.readline()  # the probe is up and measuring
    worker = worker_pids(p.pid)
    os.kill(worker[0], signal.SIGSTOP)     # a stuck probe holds up the clean shutdown
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert p.poll() is None, "waiting for the stuck probe"
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=10)
    assert p.returncode == 3
    assert wait_for(lambda: not os.path.exists(f"/proc/{worker[0]}") or
                    open(f"/proc/{worker[0]}/stat").read().split()[2] == "Z", timeout=5)


def test_duration_stops_cleanly(tmp_path, procs):
    cfg = write_config(tmp_path / "n.toml", interval="0.5s")
    p = start(["run", "-c", str(cfg), "--duration", "2s", "--json"])
    procs.append(p)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 0, stderr
    recs = [json.loads(line) for line in stdout.splitlines()]
    assert 3 <= sum(r["type"] == "RESULT" for r in recs) <= 5
    assert all(r["units"]["late_p99"] == "s" for r in recs if r["type"] == "RESULT")


def test_daemon_mode_writes_pidfile_and_detaches(tmp_path):
    out = tmp_path / "results.jsonl"
    cfg = write_config(tmp_path / "n.toml", jsonfile=out)
    pidfile = tmp_path / "netprobe.pid"
    proc = subprocess.run([sys.executable, "-m", "netprobe", "run", "-c", str(cfg), "--daemon",
                           "--pidfile", str(pidfile)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr      # the launching process returned: detached
    pid = wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() and int(pidfile.read_text()))
    try:
        assert pid
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        assert int(stat[1]) != os.getpid(), "re-parented away from its launcher"
        assert int(stat[3]) != os.getsid(0), "left our session (no controlling terminal)"
        assert wait_for(lambda: out.exists() and '"RESULT"' in out.read_text(), timeout=20)
        again = subprocess.run([sys.executable, "-m", "netprobe", "run", "-c", str(cfg), "--daemon",
                                "--pidfile", str(pidfile)], cwd=ROOT, capture_output=True, text=True,
                               timeout=30)
        assert again.returncode == 1 and "already locked" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20)
    assert not pidfile.exists(), "pidfile removed at exit"


def test_a_probe_that_ends_on_its_own_is_not_restarted(tmp_path, procs):
    """A capacity probe without `every` makes one estimate and exits 0: the daemon logs it as
    finished and keeps running the rest, instead of restarting it (which would repeat the
    estimate outside the probe's own load limit)."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    cfg = write_config(tmp_path / "n.toml", interval="0.5s")
    cfg.write_text(cfg.read_text().replace("[output.stdout]", f"""[serve]
listen = ["127.0.0.1:{free}"]

[[probe]]
kind = "capacity"
name = "once"
peer = "127.0.0.1:{free}"
max_bytes = 1000000

[output.stdout]"""))
    p = start(["run", "-c", str(cfg)])
    procs.append(p)
    lines = []

    def finished():
        lines.append(p.stderr.readline())
        return "probe once finished" in lines[-1]
    assert wait_for(finished, timeout=40, step=0), "".join(lines)
    time.sleep(2)                        # > restart_backoff_max: a restart would have happened by now
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=20)
    stderr = "".join(lines) + stderr
    assert p.returncode == 0, stderr
    assert len(re.findall(r"started probe once \(capacity\)", stderr)) == 1, stderr
    assert stdout.count("RESULT probe=capacity name=once") == 1, stdout
    assert "RESULT probe=host name=self" in stdout.split("RESULT probe=capacity")[1], "the others go on"


def test_sigusr1_reaches_the_probes_and_kills_nothing(tmp_path, procs):
    """SIGUSR1 to the daemon: the flows probe writes its open flows; the daemon and the
    host probe's worker (which ignores it) keep running."""
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = lst.accept()
    try:
        cfg = write_config(tmp_path / "n.toml", interval="0.5s")
        cfg.write_text(cfg.read_text().replace("[output.stdout]", f"""[[probe]]
kind = "flows"
name = "mine"
sport = "{port}"
interval = "0.5s"
sample_interval = "100ms"

[output.stdout]"""))
        p = start(["run", "-c", str(cfg)])
        procs.append(p)
        out = []

        def seen(text):
            return lambda: (out.append(p.stdout.readline()) or text in out[-1])
        assert wait_for(seen("RESULT probe=flows name=mine"), timeout=20, step=0), "".join(out)
        workers = sorted(worker_pids(p.pid))
        p.send_signal(signal.SIGUSR1)
        assert wait_for(seen("end_reason=open"), timeout=10, step=0), "".join(out)
        assert f"sport={port}" in out[-1]
        time.sleep(1)
        assert p.poll() is None and sorted(worker_pids(p.pid)) == workers
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=20)
        assert p.returncode == 0, stderr
        assert "exited" not in stderr and "killed" not in stderr, stderr
    finally:
        for s in (client, server, lst):
            s.close()
