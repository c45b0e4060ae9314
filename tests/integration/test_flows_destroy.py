"""Every short flow seen: the flows and retrans probes with the kernel's destroy messages (root lab).

N short TCP flows A -> B (each a few ms, far under the 1 s sample interval), 3 % of A's data
segments dropped on R, the flows and retrans probes running in A. Oracles: the client's own
getsockopt(TCP_INFO) of each socket once the server has read everything and closed (all data
acked: nothing can be resent after it; the client's FIN, which R never drops, then adds 1 to
bytes_acked and nothing to total_retrans), R's drop counter, and A's Tcp RetransSegs (nstat).

make test runs N = 1,000 (NETPROBE_SHORT_FLOWS sets it; `make test-short-flows` runs 5,000).
"""
import json
import os
import select
import socket
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from netprobe.probes.flows import destroy
from tests.integration.test_retrans_live import stop_probe
from tests.lab import netlab

ROOT = Path(__file__).resolve().parents[2]
PORT = 5297
FLOWS = int(os.environ.get("NETPROBE_SHORT_FLOWS", "1000"))
SIZE = 16_000                    # 12 segments of 1,448 bytes
LOSS = 0.03

SERVER = textwrap.dedent("""
    import socket, sys, threading
    srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=1024)
    print("ready", flush=True)
    def serve(c):
        left = int(sys.argv[3])
        while left > 0:
            got = c.recv(65536)
            if not got:
                break
            left -= len(got)
        c.close()                               # B closes first: A's socket ends in LAST_ACK, not TIME_WAIT
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")

# each flow: connect, send SIZE bytes, wait for the server's FIN (everything acked), read
# TCP_INFO (struct tcp_info of linux/tcp.h: tcpi_total_retrans u32 at byte 100, tcpi_bytes_acked
# u64 at 120), close; 32 at a time
CLIENT = textwrap.dedent("""
    import json, socket, struct, sys
    from concurrent.futures import ThreadPoolExecutor
    host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    def one(_):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"x" * size)
        while s.recv(4096):
            pass
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        out = (s.getsockname()[1], struct.unpack_from("=I", info, 100)[0], struct.unpack_from("=Q", info, 120)[0])
        s.close()
        return out
    with ThreadPoolExecutor(32) as ex:
        print(json.dumps(list(ex.map(one, range(n)))))
""")


def start(lab, kind, *args):
    return lab.popen("a", [sys.executable, "-m", "netprobe", "probe", kind, *args, "--interval", "1s",
                           "--duration", "120s", "--json"], cwd=str(ROOT))


def ready(kind, probe):
    """(probe, its first line): it is dumping (and, for retrans, its tracepoints are on)."""
    first = probe.stdout.readline() if select.select([probe.stdout], [], [], 30)[0] else ""
    assert first, probe.stderr.read() if probe.poll() is not None else f"{kind}: no first interval in 30 s"
    return probe, first


def short_flows(lab, tmp_path, n, flows_args=(), retrans_args=()):
    """Run n flows under both probes; (client's [(sport, total_retrans, bytes_acked)], flows probe records,
    retrans probe records, A's RetransSegs over the run, R's drops, flows probe stderr)."""
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "client.py").write_text(CLIENT)
    server = lab.popen("b", [sys.executable, str(tmp_path / "server.py"), lab.b4, PORT, SIZE])
    assert select.select([server.stdout], [], [], 20)[0] and server.stdout.readline() == "ready\n"
    lab.run("r", ["iptables", "-w", "-A", "FORWARD", "-i", lab.if_ra, "-o", lab.if_rb, "-p", "tcp", "--dport",
                  PORT, "-m", "length", "--length", "400:65535", "-m", "statistic", "--mode", "random",
                  "--probability", str(LOSS), "-j", "DROP"])
    probes = {"flows": start(lab, "flows", "--dport", str(PORT), *flows_args),      # both start at once
              "retrans": start(lab, "retrans", "--ports", str(PORT), "--poll", "50ms", *retrans_args)}
    probes = {k: ready(k, p) for k, p in probes.items()}
    before = lab.nstat("a", "TcpRetransSegs")
    try:
        client = lab.run("a", [sys.executable, str(tmp_path / "client.py"), lab.b4, PORT, n, SIZE], timeout=120)
        resent = lab.nstat("a", "TcpRetransSegs") - before
    finally:
        got = {k: stop_probe(*p) for k, p in probes.items()}
        server.kill()
    return (json.loads(client.stdout), got["flows"][0], got["retrans"][0], resent,
            lab.drops("ab"), got["flows"][1])


@pytest.mark.lab
def test_every_short_flow_gives_its_record_with_the_kernels_final_counters(make_lab, tmp_path):
    netlab.require("iptables", "nstat")
    lab = make_lab(offload="off")
    client, recs, retrans, resent, dropped, _ = short_flows(lab, tmp_path, FLOWS)
    assert len(client) == FLOWS
    resends = sum(r for _, r, _ in client)
    assert dropped > 0.5 * LOSS * FLOWS * SIZE / 1448 and resends >= dropped, (dropped, resends)
    flows = [r for r in recs if r.get("scope") == "flow" and r["dport"] == PORT]
    assert len(flows) == FLOWS, (len(flows), [r for r in recs if r.get("scope") == "sampler"][-1])
    assert all(f["end_reason"] == "closed" for f in flows)
    assert len({f["flow"] for f in flows}) == FLOWS                    # one record per socket
    # per flow (by local port; a port reused later is another flow with its own counters): the
    # kernel's final bytes_acked is the one read before close + the FIN; its total_retrans the one
    # read before close, or one more when the FIN itself was resent (a tail loss probe fires when
    # B's ACK is late on a busy host: R drops no FIN), which A's RetransSegs then counts too
    got = sorted((f["sport"], f["bytes_acked"], f["total_retrans"]) for f in flows)
    want = sorted((port, acked + 1, tr) for port, tr, acked in client)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert all(0 <= g[2] - w[2] <= 1 for g, w in zip(got, want, strict=True)), [
        (g, w) for g, w in zip(got, want, strict=True) if g != w][:5]
    assert sum(g[2] for g in got) == resent, (sum(g[2] for g in got), resent)
    # the retrans probe: every resend of A's direction, as A's kernel counted it, none from events
    mine = [r for r in retrans if r["type"] == "RESULT" and r.get("dir") == f"{lab.a4}->{lab.b4}"]
    assert sum(r["retrans"] for r in mine) == resent, (sum(r["retrans"] for r in mine), resent)
    assert sum(r["retrans_at_close"] for r in mine) == 0


# In a network namespace of its own (every destroy message there is one of ours): `pairs`
# loopback connections to port 7001 (the filter's) and 50 to 7002 (not), both ends closed,
# read by a Listener with room for 64 records and a receive buffer of `rcvbuf` bytes.
FLOOD = textwrap.dedent("""
    import json, socket, subprocess, sys, time
    from netprobe.probes.flows import destroy, filters
    pairs, rcvbuf = int(sys.argv[1]), int(sys.argv[2])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    lis = destroy.Listener((socket.AF_INET, socket.AF_INET6), filters.Matcher(either_port=[(7001, 7001)]),
                           capacity=64, rcvbuf=rcvbuf)
    assert lis.open(), lis.reason
    servers = {p: socket.create_server(("127.0.0.1", p), backlog=1024) for p in (7001, 7002)}
    for port, n in ((7001, pairs), (7002, 50)):
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            a = servers[port].accept()[0]
            c.close()
            a.close()
    time.sleep(0.5)                         # the peers' FIN/ACK exchanges end, the kernel frees them
    while True:
        seen = lis.counts["received"]
        lis.drain()
        if lis.counts["received"] == seen:
            break
    print(json.dumps({**lis.counts, "held": len(lis.take())}))
""")


@pytest.mark.lab
@pytest.mark.parametrize("rcvbuf", [4 << 20, 1])
def test_a_flood_of_destroyed_sockets_is_bounded_and_counted(tmp_path, rcvbuf):
    """600 matching and 100 other destroyed sockets: with a 4 MiB receive buffer every message
    is read, 64 kept, the 536 other matching ones counted as dropped; with the smallest buffer
    the kernel drops most and its own count of them (lost) makes up the rest."""
    netlab.require("ip")
    (tmp_path / "flood.py").write_text(FLOOD)
    out = netlab.sh(["unshare", "-n", sys.executable, str(tmp_path / "flood.py"), "300", str(rcvbuf)],
                    cwd=str(ROOT), timeout=60).stdout
    got = json.loads(out)
    if rcvbuf > 1:
        assert got["received"] == 700 and got["lost"] == 0, got
        assert got["held"] == got["matched"] == 64 and got["dropped"] == 600 - 64, got
    else:
        assert got["lost"] > 0 and got["received"] + got["lost"] == 700, got
        assert got["held"] == got["matched"] <= 64 and got["spoofed"] == got["malformed"] == 0, got


def test_a_forged_destroy_message_from_another_socket_is_refused():
    """Another process's netlink socket sends a well-formed destroy message (a socket record whose
    cookie no socket has) straight to the Listener's port: the Listener is connected to the kernel,
    so the kernel refuses it, and none of its records carries that cookie."""
    lis = destroy.Listener((socket.AF_INET,), lambda recs: np.ones(len(recs), bool))
    assert lis.open(), lis.reason
    forger = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, destroy.NETLINK_SOCK_DIAG)
    try:
        body = struct.pack("=BBBBHH16s16sIII", socket.AF_INET, 7, 0, 0, 4242, 80, bytes(16), bytes(16),
                           0, 0xDEAD, 0xBEEF) + bytes(20)          # inet_diag_msg, cookie 0xBEEF0000DEAD
        msg = struct.pack("=IHHII", 16 + len(body), 20, 0, 0, 0) + body   # SOCK_DIAG_BY_FAMILY, seq 0
        with pytest.raises(ConnectionRefusedError):
            forger.sendto(msg, (lis.sock.getsockname()[0], 0))
        lis.drain()
        assert 0xBEEF0000DEAD not in set(lis.take()["idiag_cookie"].tolist())
    finally:
        forger.close()
        lis.close()
