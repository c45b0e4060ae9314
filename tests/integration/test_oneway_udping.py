"""udping_server / udping_client end to end: UDPing's JSON lines on stdout, its statsd lines
(dotted and tagged, plus the host-level aggregate) at UDP listeners in the test, and the
client's raw frames through the lab's router."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from netprobe.errors import load_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
udpio = load_extension("_udping")


def entry(name, *args):
    return [PY, "-c", f"import sys; from netprobe.probes.oneway.udping import {name}; sys.exit({name}())",
            *map(str, args)]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_bound(port, timeout=20.0):
    """Until a UDP socket is bound to `port` (the server started; a loaded host took over 1 s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open("/proc/net/udp") as f:       # local_address is HEXADDR:HEXPORT
            if any(line.split()[1].endswith(f":{port:04X}") for line in f.readlines()[1:]):
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing bound UDP port {port} within {timeout} s")


def sender(src, port):
    """A UDP socket from src to the server on 127.0.0.1:port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def probe(s, guid, seq, start_s=None, length=0):
    now = time.time_ns()
    s.send(udpio.push_udping(start_s=now // 10**9 if start_s is None else start_s, guid=guid, seq=seq,
                             sent_sec=now // 10**9, sent_nsec=now % 10**9, length=length))


def finish(srv, socks):
    """Let the last packets arrive, stop the server (killed if it hangs), close the senders;
    the server's (stdout, stderr)."""
    try:
        time.sleep(0.3)
        srv.send_signal(signal.SIGTERM)
        return srv.communicate(timeout=10)
    finally:
        if srv.poll() is None:
            srv.kill()
        for s in socks:
            s.close()


def test_server_prints_udping_json_and_sends_statsd(tmp_path):
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tagged = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (statsd, tagged):
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
    port = free_udp_port()
    srv = subprocess.Popen(entry("server_main", "-l", "127.0.0.1", "-p", port, "-k", "1", "-r", "rx.example",
                                 "-s", f"127.0.0.1:{statsd.getsockname()[1]}",
                                 "-t", f"127.0.0.1:{tagged.getsockname()[1]}", "-m", "ping"),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_bound(port)
    senders = []
    for guid in ("aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"):
        s = sender("127.0.0.1", port)
        senders.append((s, guid, s.getsockname()[1]))
    for seq in range(40):
        for s, guid, _ in senders:
            if guid.startswith("b") and 10 <= seq < 30:
                continue                                     # 20 in a row lost on one port
            probe(s, guid, seq, length=100)
    senders[0][0].send(b"\x01garbage")
    out, err = finish(srv, [s for s, _, _ in senders])
    assert srv.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    by_guid = {x["guid"]: x for x in lines}
    assert set(by_guid) == {"aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"}
    a, b = by_guid["aaaaaaaaaaaaaaaaaaaa"], by_guid["bbbbbbbbbbbbbbbbbbbb"]
    assert all(isinstance(v, str) for x in lines for v in x.values())          # UDPing: every value a string
    assert list(a) == ["from_host", "from_port", "to_host", "to_port", "guid", "count", "targetCount", "sum",
                       "sumOfSquares", "max"]
    assert (a["count"], a["targetCount"], b["count"], b["targetCount"]) == ("40", "40", "20", "40")
    assert a["to_host"] == "rx_example" and a["to_port"] == str(port) and "." not in a["from_host"]
    assert (a["from_port"], b["from_port"]) == (str(senders[0][2]), str(senders[1][2]))
    assert 0 < float(a["max"]) < 1000 and float(a["sum"]) > 0
    dotted = b"".join(statsd.recv(65536) for _ in range(3)).decode().splitlines()
    host = a["from_host"]
    assert f"{host}.{a['from_port']}.rx_example.{port}.count:40|c" in dotted
    assert f"{host}.{b['from_port']}.rx_example.{port}.targetCount:40|c" in dotted
    assert f"{host}.rx_example.{port}.count:60|c" in dotted                   # the host-level aggregate
    assert f"{host}.rx_example.{port}.targetCount:80|c" in dotted
    tags = b"".join(tagged.recv(65536) for _ in range(3)).decode().splitlines()
    assert f"ping.count,from_host={host},from_port={b['from_port']},to_host=rx_example,to_port={port}:20|c" in tags
    assert f"ping.count,from_host={host},to_host=rx_example,to_port={port}:60|c" in tags
    statsd.close()
    tagged.close()


def test_usage_errors_print_udping_messages():
    p = subprocess.run(entry("server_main", "-l", "127.0.0.1", "-p", "80", "-k", "1"), cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.endswith("Port number is out of range 1024-65532\n")
    assert p.stderr.startswith("Usage: udping_server -l <local hostname>")


@pytest.mark.lab
def test_lab_client_raw_frames_through_r_are_counted_by_the_server(make_lab):
    lab = make_lab(offload="off")
    srv = lab.popen("b", entry("server_main", "-l", lab.b4, "-p", "7000", "-k", "1"), cwd=ROOT)
    time.sleep(1.0)
    cli = lab.popen("a", entry("client_main", "-r", lab.b4, "-p", "7000", "-l", lab.a4, "-s", "41000", "-n", "4",
                               "-d", "1", "-i", "1", "-m", "300", "-a", lab.r_mac_facing_a, "-v"), cwd=ROOT)
    time.sleep(2.5)
    cli.send_signal(signal.SIGTERM)
    cout, cerr = cli.communicate(timeout=10)
    time.sleep(1.5)
    srv.send_signal(signal.SIGTERM)
    out, err = srv.communicate(timeout=10)
    assert cli.returncode == 0, cerr
    assert cout.splitlines()[:4] == [f"Adding port {p}" for p in range(41000, 41004)]
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert {x["from_port"] for x in lines} == {"41000", "41001", "41002", "41003"}
    assert len({x["guid"] for x in lines}) >= 8                    # new GUIDs at every wall-clock second
    assert all(x["count"] == x["targetCount"] for x in lines), [(x["count"], x["targetCount"]) for x in lines]
    assert sum(int(x["count"]) for x in lines) > 1000              # ~1,000 probes/s for 2.5 s


def test_server_allow_list_session_cap_and_no_dns(tmp_path):
    """--allow drops (and counts) packets from elsewhere; --max-sessions 1 ends the older
    session when another begins, reported as if idle; --no-dns names peers by address."""
    port = free_udp_port()
    srv = subprocess.Popen(entry("server_main", "-l", "127.0.0.1", "-p", port, "-k", "30", "--allow", "127.0.0.1/32",
                                 "--max-sessions", "1", "--no-dns"),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_bound(port)
    a, b, outsider = (sender(src, port) for src in ("127.0.0.1", "127.0.0.1", "127.0.0.2"))
    pa, pb = (str(s.getsockname()[1]) for s in (a, b))
    for s, seqs in ((a, range(0, 5)), (outsider, range(0, 7)), (b, range(0, 3)), (a, range(5, 9))):
        for seq in seqs:
            probe(s, "abcdef0123456789abcd", seq, start_s=1)
        time.sleep(0.05)
    out, err = finish(srv, (a, b, outsider))
    assert srv.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["from_host"], x["from_port"], x["count"], x["targetCount"]) for x in lines] == [
        ("127_0_0_1", pa, "5", "5"), ("127_0_0_1", pb, "3", "3"), ("127_0_0_1", pa, "4", "4")]
    summary = dict(x.split("=") for x in err.strip().splitlines()[-1].split()[1:])
    assert (summary["datagrams"], summary["not_allowed"], summary["evicted"]) == ("19", "7", "2")
