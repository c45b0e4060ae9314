"""The flows probe end to end on loopback: per-flow records against getsockopt(TCP_INFO) of the same
sockets, open flows written at stop and on SIGUSR1 (worker process), the one-shot CLI.

Every test filters on the port of its own listener, so other sockets on the host are not seen.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netprobe import cli
from netprobe.config.schema import Where, build
from netprobe.errors import load_extension
from netprobe.probes.flows import Config, Runner

ROOT = Path(__file__).resolve().parents[2]
pacer = load_extension("_pacer")


class Flows:
    """n loopback connections to one listener; send() pushes bytes one way and drains them."""

    def __init__(self, n, family=socket.AF_INET):
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        self.ls = socket.create_server((host, 0), family=family)
        self.port = self.ls.getsockname()[1]
        self.pairs = []
        for _ in range(n):
            c = socket.create_connection((host, self.port))
            self.pairs.append((c, self.ls.accept()[0]))
        self.client_ports = [c.getsockname()[1] for c, _ in self.pairs]
        self.ccs = [c.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()
                    for c, _ in self.pairs]
        self.sent = [0] * n

    def send(self, i, nbytes):
        c, a = self.pairs[i]
        c.sendall(b"y" * nbytes)
        got = 0
        while got < nbytes:
            got += len(a.recv(1 << 20))
        self.sent[i] += nbytes

    def close(self, i=None):
        for c, a in (self.pairs if i is None else [self.pairs[i]]):
            c.close()
            a.close()
        if i is None:
            self.ls.close()


def _config(**table):
    return build(Config, {"name": "t", **table}, Where("test", "probe"))


def _run(cfg, body):
    records = []
    runner = Runner(cfg, records.append)
    stop = threading.Event()
    th = threading.Thread(target=runner.run, args=(stop,))
    th.start()
    try:
        body()
    finally:
        stop.set()
        th.join(10)
    return [r for r in records]


def test_flow_records_match_tcp_info_and_open_flows_are_written_at_stop():
    f = Flows(4)
    try:
        cfg = _config(dport=str(f.port), interval="200ms", sample_interval="20ms")
        final = {}

        def body():
            for _ in range(5):
                for i in range(4):
                    f.send(i, 20_000 * (i + 1))
                time.sleep(0.05)
            time.sleep(0.2)                       # idle: the last dump saw each socket's final state
            for i in (0, 1):
                final[i] = pacer.tcp_info(f.pairs[i][0].fileno())
                f.close(i)
            time.sleep(0.15)
            for i in (2, 3):
                final[i] = pacer.tcp_info(f.pairs[i][0].fileno())
        records = _run(cfg, body)
    finally:
        f.close()
    flows = [r.fields for r in records if r.fields.get("scope") == "flow"]
    by_port = {fl["sport"]: fl for fl in flows}
    assert len(flows) == 4 and set(by_port) == set(f.client_ports)
    for i, port in enumerate(f.client_ports):
        fl = by_port[port]
        assert fl["end_reason"] == ("closed" if i < 2 else "open")
        assert fl["dport"] == f.port and fl["src"] == "127.0.0.1"
        assert fl["partial"]                      # open before the probe's first dump
        assert final[i]["tcpi_bytes_acked"] == f.sent[i] + 1
        # a closed flow ends with the kernel's tcp_info as it destroyed the socket (the destroy
        # groups): its FIN, sent by close() after the read above, is acked too
        assert fl["bytes_acked"].value == final[i]["tcpi_bytes_acked"] + (i < 2)
        assert fl["total_retrans"] == final[i]["tcpi_total_retrans"]
        assert fl["samples"] >= 3                 # sends 50 ms apart, dumps every 20 ms (late on a busy host)
        assert fl["ca"] == f.ccs[i]
        assert fl["min_rtt_observed"].value > 0 and len(fl["rtt_summary"]) == 7
    groups = [r.fields for r in records if r.fields.get("scope") == "group"]
    assert groups and all(g["group"] == "all" for g in groups) and max(g["flows"] for g in groups) == 4
    sampler = [r.fields for r in records if r.fields.get("scope") == "sampler"]
    assert sampler and all(s["errors"] == 0 and s["malformed"] == 0 for s in sampler)


def _record(proc):
    """The worker's next record, past its heartbeats (empty lines, one a second)."""
    while True:
        line = proc.stdout.readline()
        if line != "\n":
            return json.loads(line)


def test_sigusr1_writes_open_flows_from_the_worker():
    f = Flows(2, socket.AF_INET6)
    proc = subprocess.Popen([sys.executable, "-m", "netprobe.supervisor.worker"], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = {"kind": "flows", "table": {"name": "w", "sport": str(f.port), "interval": "300ms",
                                          "sample_interval": "50ms"}}
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.close()
        f.send(0, 50_000)
        _record(proc)                             # a first interval: the probe runs, its handler is in
        os.kill(proc.pid, signal.SIGUSR1)
        flows = []
        deadline = time.monotonic() + 10
        while len(flows) < 2 and time.monotonic() < deadline:
            line = _record(proc)
            if line["fields"].get("scope") == "flow":
                flows.append(line["fields"])
        assert proc.poll() is None                # still running: a snapshot, not a stop
        assert len(flows) == 2 and {fl["end_reason"] for fl in flows} == {"open"}
        assert {fl["dport"] for fl in flows} == set(f.client_ports)
        assert {fl["family"] for fl in flows} == {6}
        proc.send_signal(signal.SIGTERM)
        rest = [json.loads(ln) for ln in proc.stdout.read().splitlines() if ln]
        assert proc.wait(10) == 0
        again = [ln["fields"] for ln in rest if ln["fields"].get("scope") == "flow"]
        assert len(again) == 2                   # open at shutdown: written again, not lost (cgmon lost them)
    finally:
        if proc.poll() is None:
            proc.kill()
        f.close()


def test_one_shot_cli():
    f = Flows(3)
    try:
        p = subprocess.run([sys.executable, "-m", "netprobe", "probe", "flows", "--sport", f"80,443,{f.port}",
                            "--dport", "1-65535", "--interval", "100ms", "--duration", "1.5s", "--json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    finally:
        f.close()
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines()]
    groups = [o for o in out if o.get("scope") == "group"]
    assert groups and {g["flows"] for g in groups} == {3}          # the 3 accepted ends (sport = listener)
    flows = [o for o in out if o.get("scope") == "flow"]
    assert len(flows) == 3 and all(fl["sport"] == f.port and fl["end_reason"] == "open" for fl in flows)
    assert all(fl["units"]["bytes_acked"] == "B" for fl in flows)


@pytest.mark.parametrize("args, msg", [
    (["--sport", "80-70"], "--sport: \"80-70\" is not a port range"),
    (["--dport", "http"], "--dport: \"http\" is not a port or a range"),
    (["--interval", "100ms", "--sample-interval", "1s"], "--interval: must be >= sample_interval"),
    (["--group-ports", "web"], "--group-ports[0]"),
])
def test_bad_options_are_one_line_errors(args, msg, capsys):
    assert cli.main(["probe", "flows", *args, "--duration", "1s"]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_records_grow_on_demand_and_overflow_is_counted(monkeypatch):
    from netprobe.probes.flows import runner as runner_mod
    monkeypatch.setattr(runner_mod, "INITIAL_RECORDS", 4)
    f = Flows(20)
    try:
        grown = _run(_config(dport=str(f.port), interval="200ms", sample_interval="50ms"),
                     lambda: time.sleep(0.5))
        capped = _run(_config(dport=str(f.port), interval="200ms", sample_interval="50ms", max_sockets=16),
                      lambda: time.sleep(0.5))
    finally:
        f.close()
    s = [r.fields for r in grown if r.fields.get("scope") == "sampler"]
    assert all(x["sockets"] == 20 and x["overflow"] == 0 for x in s)       # 4 -> 48 records, nothing lost
    assert len([r for r in grown if r.fields.get("scope") == "flow"]) == 20
    s = [r.fields for r in capped if r.fields.get("scope") == "sampler"]
    assert s and all(x["sockets"] == 16 and x["overflow"] == 4 * x["dumps"] for x in s)


def test_internal_metrics_endpoint():
    import urllib.error
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = Flows(3)
    pages = []

    def body():
        for _ in range(2):
            time.sleep(0.4)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                pages.append(r.read().decode())
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert exc.value.code == 404
    try:
        records = _run(_config(dport=str(f.port), interval="200ms", sample_interval="50ms",
                               http_listen=f"127.0.0.1:{port}"), body)
    finally:
        f.close()

    def values(page):
        out = {}
        for line in page.splitlines():
            if not line.startswith("#"):
                key, val = line.rsplit(" ", 1)
                assert key.endswith('{probe="t"}')
                out[key.split("{")[0]] = float(val)
        return out
    first, second = values(pages[0]), values(pages[1])
    assert first["netprobe_flows_sockets"] == second["netprobe_flows_sockets"] == 3
    assert first["netprobe_flows_stored"] == 3 and first["netprobe_flows_malformed_total"] == 0
    assert 0 < first["netprobe_flows_dumps_total"] < second["netprobe_flows_dumps_total"]
    sampler_dumps = sum(r.fields["dumps"] for r in records if r.fields.get("scope") == "sampler")
    assert second["netprobe_flows_dumps_total"] <= sampler_dumps
    with socket.socket() as s:                      # closed at stop
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_bad_http_listen_is_a_config_error(capsys):
    assert cli.main(["probe", "flows", "--http-listen", "9465", "--duration", "1s"]) == 2
    assert "--http-listen: \"9465\" is not HOST:PORT" in capsys.readouterr().err
