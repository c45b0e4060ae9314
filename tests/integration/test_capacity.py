"""The capacity probe end to end on loopback: a real `netprobe serve` peer, the one-shot CLI,
offline re-analysis of the recorded run, the peer's access control and its handling of bad
control messages. (Accuracy against a real bottleneck: test_capacity_lab.py.)"""
import json
import socket
import subprocess
import threading

import numpy as np
import pytest

from netprobe import serve
from netprobe.errors import load_extension
from netprobe.peer.client import connect
from tests.integration.test_throughput import ROOT, free_port, netprobe, records, wait_listening

T = load_extension("_train")


@pytest.fixture
def peer():
    procs = []

    def start(*extra):
        port = free_port()
        p = subprocess.Popen(netprobe("serve", "--listen", f"127.0.0.1:{port}", *extra), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        wait_listening(port)
        return port
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_one_shot_then_offline_reanalysis_is_identical(peer, tmp_path):
    port = peer()
    rec = tmp_path / "run.npz"
    p = subprocess.run(netprobe("probe", "capacity", "--json", "--peer", f"127.0.0.1:{port}", "--record", rec,
                                "--max-size", "1472", "--max-bytes", "4000000"),
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    live = [r for r in records(p.stdout) if r["type"] == "RESULT"]
    assert len(live) == 1, p.stdout
    live = live[0]
    assert live["trains"] > 100 and live["malformed"] == live["foreign"] == live["user_ts"] == 0
    assert 0 < live["bytes"] <= 4_000_000
    off = subprocess.run([*netprobe()[:2], "netprobe.probes.capacity", rec, "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert off.returncode == 0, off.stderr
    offline = json.loads(off.stdout)
    keys = ("capacity", "ci_lo", "ci_hi", "range", "adr", "confidence", "method", "capprobe", "bin_width",
            "modes", "trains", "incomplete", "coalescing", "burst_ratio", "why")
    assert {k: offline.get(k) for k in keys} == {k: live.get(k) for k in keys}
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a record")
    off = subprocess.run([*netprobe()[:2], "netprobe.probes.capacity", bad], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert off.returncode == 1 and off.stderr.count("\n") == 1 and "not a capacity record" in off.stderr


def test_peer_refuses_clients_outside_its_allow_list(peer):
    port = peer("--allow", "192.0.2.0/24")
    p = subprocess.run(netprobe("probe", "capacity", "--peer", f"127.0.0.1:{port}"), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "not in the allow list" in p.stdout + p.stderr and "Traceback" not in p.stderr


@pytest.fixture
def server():
    srv = serve.Server([("127.0.0.1", 0)])
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.stop.set()
    t.join(5)


def test_a_bad_control_message_ends_its_session_with_one_refusal(server):
    host, port = server.addresses[0]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    setup = json.dumps({"udp_port": udp.getsockname()[1], "token": 77}).encode()

    def session(*lines, wait_close=True):
        """Send `lines` on a new capacity session; the replies and whether the peer then closed."""
        ctl = connect(f"{host}:{port}", "capacity").sock
        with ctl, ctl.makefile("rb") as reader:
            replies = []
            for line in lines:
                ctl.sendall(line + b"\n")
                replies.append(json.loads(reader.readline()))
            return replies, wait_close and reader.readline() == b""

    def refused(*lines, naming):
        replies, closed = session(*lines)
        assert closed and replies[-1]["ok"] is False and naming in replies[-1]["error"], replies
        return replies

    refused(b'{"udp_port": 0, "token": 1}', naming="udp_port must be 1-65535")
    refused(b"[1, 2", naming="bad control line: not a JSON line")
    for bad, naming in (({"plan": [[1, 1, 100, 0, 0, 0]]}, "count must be 2"),
                        ({"plan": [[1, 2, 9001, 0, 0, 0]]}, "size must be"),
                        ({"plan": "x"}, "expected"),
                        ({"plan": [[1, 2, 100, 0, 0, 2 * 10**9]]}, "gap_ns must be"),
                        ({"plan": [[1, 2, 100, 0, 0, True]]}, "integers")):
        replies = refused(setup, json.dumps(bad).encode(), naming=naming)
        assert replies[0] == {"ok": True, "max_size": 9000}           # loopback MTU 65536, capped
    assert server.state["capacity"]["malformed"] == 7
    receiver = T.TrainReceiver(udp.fileno(), 77)
    replies, _ = session(setup, json.dumps({"plan": [[5, 3, 200, 1, 1000, 0]]}).encode(), wait_close=False)
    assert replies[1]["error"] == 0 and replies[1]["sent"][0][2:] == [3, 1400]
    rows = np.zeros((4, T.RX_NCOLS), dtype=np.int64)
    assert receiver.run(rows, 3, 500_000_000, 2_000_000_000).rows == 3
    udp.close()
