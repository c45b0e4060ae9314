"""The oneway peer's receive lanes: a SO_REUSEPORT group of sockets, one thread each, a
steering program sending port index % lanes to each (netprobe/probes/oneway/responder.py,
pyx/udp/rxlanes.pyx).

Oracles: the datagrams each test sends itself (per port index, path traces, junk) and the
kernel's own UDP counters in the receiving namespace (nstat UdpInDatagrams, the datagrams
it delivered to sockets; UdpRcvbufErrors, those it dropped for a full buffer)."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from netprobe import serve
from netprobe.errors import load_extension
from netprobe.peer.client import connect
from netprobe.probes.oneway import responder, trace

udpio = load_extension("_udpio")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SID = 0x1A2E5
T0 = 1_700_000_000 * 10**9
LANES, NPORTS = 4, 9            # 256 % 4 == 0: a program reading the wrong byte would fail
PER_PORT = [2000 + 150 * p for p in range(NPORTS)]
TRACES, JUNK = 40, 25

RECEIVER = r'''
import json, socket, sys, time
from netprobe.errors import load_extension
from netprobe.probes.oneway import responder
udpio = load_extension("_udpio")
host, family, lanes, nports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks, err = responder.receive_sockets(socket.AF_INET if family == 4 else socket.AF_INET6, host, [0], lanes)
rx = udpio.UdpProbeReceiver([s.fileno() for s in socks])
rx.add_session(%d, nports)
print("READY", socks[0].getsockname()[1], len(socks), flush=True)
idle, last = 0, -1
while idle < 10 or last == 0:              # until 1 s without a datagram, once some came
    got = rx.run(100_000_000).datagrams
    idle = idle + 1 if got == 0 else 0
    last = max(last, 0) + got
(closed,) = rx.close_through(%d, 0)
print(json.dumps({"received": [p["received"] for p in closed["ports"]], "n": sum(p["n"] for p in closed["ports"]),
                  "hist": sum(c for _, c in closed["hist"]), "counters": rx.counters,
                  "session": rx.session_counters(%d)}), flush=True)
''' % (SID, SID, SID)

SENDER = r'''
import socket, sys
from netprobe.errors import load_extension
from netprobe.probes.oneway import trace
udpio = load_extension("_udpio")
dst, port, family, sid, t0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
per_port = [int(x) for x in sys.argv[6].split(",")]
traces, junk = int(sys.argv[7]), int(sys.argv[8])
s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
s.connect((dst, port))
for seq in range(max(per_port)):          # the ports interleaved, as the probe sends them
    for p, n in enumerate(per_port):
        if seq < n:
            s.send(udpio.push_header(flags=0, port=p, session=sid, start_ns=t0, seq=seq, send_ns=t0 + seq,
                                     interval=0, clock_err_us=0, index=seq, count=0, payload=b"x" * 40))
for i in range(traces):
    s.send(trace.PAYLOAD.pack(trace.TRACE_MAGIC, b"tokentok", 5000 + i, 1 + i % 4, 0))
for i in range(junk):
    s.send(b"NPOW junk" + bytes([i]) * i)
'''


@pytest.mark.lab
@pytest.mark.parametrize("family", [4, 6])
def test_lanes_count_exactly_what_the_kernel_delivered(make_lab, family):
    lab = make_lab()
    host = lab.b4 if family == 4 else lab.b6
    before = {c: lab.nstat("b", c) for c in ("UdpInDatagrams", "UdpRcvbufErrors", "Udp6InDatagrams",
                                             "Udp6RcvbufErrors")}
    rcv = lab.popen("b", [sys.executable, "-c", RECEIVER, host, family, LANES, NPORTS], cwd=ROOT)
    ready = rcv.stdout.readline().split()
    assert ready[:1] == ["READY"] and int(ready[2]) == LANES, rcv.stderr.read()
    lab.run("a", [sys.executable, "-c", SENDER, host, ready[1], family, SID, T0, ",".join(map(str, PER_PORT)),
                  TRACES, JUNK], cwd=ROOT, timeout=120)
    out, err = rcv.communicate(timeout=60)
    got = json.loads(out.splitlines()[-1])
    v = "" if family == 4 else "6"
    delivered = lab.nstat("b", f"Udp{v}InDatagrams") - before[f"Udp{v}InDatagrams"]
    assert lab.nstat("b", f"Udp{v}RcvbufErrors") == before[f"Udp{v}RcvbufErrors"]
    total = sum(PER_PORT) + TRACES + JUNK
    assert delivered == total                         # nothing lost on the way: the oracle is exact
    c = got["counters"]
    assert got["received"] == PER_PORT                # per port, over three lanes
    assert got["n"] == got["hist"] == sum(PER_PORT)   # each delay once, the lanes' histograms merged
    assert (c["datagrams"], c["trace"], c["malformed"], c["misrouted"]) == (delivered, TRACES, JUNK, 0)
    assert (c["lanes"], got["session"]["packets"], got["session"]["bad_port"]) == (LANES, sum(PER_PORT), 0)
    assert c["cpu_ns"] > 0


def test_a_port_in_use_is_refused_and_a_late_joiner_gets_nothing():
    """The group's first socket binds without SO_REUSEPORT: a port another socket holds is
    refused as before. A socket that joins our group afterwards (same user, SO_REUSEPORT)
    is past the steering program's lanes and receives nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        socks, err = responder.receive_sockets(socket.AF_INET, "127.0.0.1", [taken.getsockname()[1]], 2)
        assert socks == [] and isinstance(err, OSError) and err.errno == 98          # EADDRINUSE
    socks, _ = responder.receive_sockets(socket.AF_INET, "127.0.0.1", [0], 2)
    port = socks[0].getsockname()[1]
    joiner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert responder.receive_sockets(socket.AF_INET, "127.0.0.1", [port], 2)[0] == []
        rx = udpio.UdpProbeReceiver([s.fileno() for s in socks])
        rx.add_session(SID, 4)
        joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        joiner.bind(("127.0.0.1", port))
        joiner.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for seq in range(50):
                for p in range(4):
                    tx.sendto(udpio.push_header(flags=0, port=p, session=SID, start_ns=T0, seq=seq, send_ns=T0,
                                                interval=0, clock_err_us=0, index=seq, count=0), ("127.0.0.1", port))
        for _ in range(50):
            if rx.run(20_000_000).datagrams == 0 and rx.datagrams:
                break
        assert [p["received"] for p in rx.close_through(SID, 0)[0]["ports"]] == [50] * 4
        with pytest.raises(BlockingIOError):
            joiner.recv(2048)
    finally:
        joiner.close()
        for s in socks:
            s.close()


def test_a_signal_ends_every_lane_at_once():
    """Lane threads block signals; the caller's lane takes it and stops the others, and the
    handler's exception leaves run() (as with one socket)."""
    socks, _ = responder.receive_sockets(socket.AF_INET, "127.0.0.1", [0], 3)

    def alarm(signum, frame):
        raise TimeoutError("alarm")

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        rx = udpio.UdpProbeReceiver([s.fileno() for s in socks])
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(TimeoutError):
            rx.run(10_000_000_000)
        assert time.monotonic() - t0 < 2.0
        assert rx.run(30_000_000).datagrams == 0          # the stop left behind does not end the next run
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        for s in socks:
            s.close()


def test_the_receiver_recognises_exactly_what_trace_sends():
    d = trace.PAYLOAD.pack(trace.TRACE_MAGIC, b"12345678", 5000, 3, 1)
    assert (udpio.TRACE_MAGIC_BYTES, udpio.TRACE_DATAGRAM_LEN) == (trace.TRACE_MAGIC, len(d))
    rx = udpio.UdpProbeReceiver(lanes=2)
    for data in (d, d + b"\0", d[:-1], b"NPTX" + d[4:], struct.pack("!I", 0)):
        rx.feed(data, T0)
    c = rx.counters
    assert (c["datagrams"], c["trace"], c["malformed"]) == (5, 1, 4)


@pytest.mark.parametrize("setting,nports,want", [(0, 1, 1), (0, 100, min(len(os.sched_getaffinity(0)), 4)),
                                                  (8, 3, 3), (8, 100, 8)])
def test_lanes_default_to_ports_cpus_and_four(setting, nports, want):
    assert responder.rx_lanes(setting, nports) == want


def test_the_serve_setting_opens_that_many_sockets_and_counts_stay_exact():
    """[serve] oneway_rx_threads = 3: the session's UDP port has three sockets (ss, the kernel's
    socket table, is the oracle), and the peer's reply counts what this test sent."""
    srv = serve.Server([("127.0.0.1", 0)], max_sessions=2, oneway_rx_threads=3)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        host, port = srv.addresses[0]
        ch = connect(f"{host}:{port}", "oneway", session="00000000000000bb", nports=5, grace_ns=10_000_000,
                     line_max=1 << 20)
        udp_port = ch.recv(5)["udp_port"]
        sockets = subprocess.run(["ss", "-uanH", f"sport = :{udp_port}"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        assert len(sockets) == 3, sockets
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", udp_port))
            for seq in range(40):
                for p in range(5):
                    s.send(udpio.push_header(flags=0, port=p, session=0xBB, start_ns=1, seq=seq, send_ns=time.time_ns(),
                                             interval=0, clock_err_us=0, index=seq, count=0))
            for i in range(6):
                s.send(trace.PAYLOAD.pack(trace.TRACE_MAGIC, b"tokentok", 5000, i + 1, 0))
        time.sleep(0.3)
        ch.send({"close": 0})
        reply = ch.recv(5)
        assert [p["received"] for p in reply["results"][0]["ports"]] == [40] * 5
        c = reply["counters"]
        assert (c["lanes"], c["packets"], c["trace"], c["malformed"], c["misrouted"]) == (3, 200, 6, 0, 0)
        ch.close()
    finally:
        srv.stop.set()
        t.join(5)
