"""Per-port Paris traces in the equal-cost lab (root): each port's trace names the
members its own datagrams cross, IPv4 and IPv6, one and two stages, and with routers
that answer only every other ICMP error.

Oracle: per-port iptables packet counters in every member router, fed by ordinary
datagrams from fresh sockets with the same ports (EcmpLab.flow_members)."""
import json
import sys
import time

import pytest

pytestmark = pytest.mark.lab

PORTS = list(range(5000, 5024))
DPORT = 7000
SCRIPT = r'''
import json, sys, time
from netprobe.probes.oneway import trace
dst, fam, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ports = [int(p) for p in sys.argv[4:]]
socks = {p: trace.open_socket(dst, 7000, p) for p in ports}
t0 = time.monotonic()
paths = trace.trace(dst, 7000, ports, rate=200, retries=3 if every else 1, timeout=0.3, socks=socks)
took = time.monotonic() - t0
print(json.dumps({"took": took, "paths": {p: [v.hops, v.reached, v.sent, v.to_peer] for p, v in paths.items()}}))
'''


SINK = ("import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ns.bind(('::', 7000))\n"
        "print('READY', flush=True)\nwhile True:\n    print(s.recv(2048)[:4].decode(errors='replace'), flush=True)")


def _run(lab, family, every):
    """The peer's port is open, as a netprobe peer's is: B answers nothing."""
    sink = lab.popen(lab.b, [sys.executable, "-c", SINK])
    assert sink.stdout.readline().startswith("READY")
    dst = lab.b4 if family == 4 else lab.b6
    out = json.loads(lab.run(lab.a, [sys.executable, "-c", SCRIPT, dst, family, every, *PORTS], timeout=120).stdout)
    time.sleep(0.2)
    sink.terminate()
    out["at_peer"] = sink.communicate(timeout=5)[0].split().count("NPTR")
    return lab.flow_members(PORTS, DPORT, family), out


@pytest.mark.parametrize("stages,every", [(1, 0), (2, 0), (2, 2)])
@pytest.mark.parametrize("family", [4, 6])
def test_trace_names_the_members_each_port_crosses(make_ecmp_lab, stages, every, family):
    lab = make_ecmp_lab(stages=stages)
    if every:
        for r in lab.routers():
            lab.impair(r, icmp_every=every)
    members, out = _run(lab, family, every)
    stars = hops = 0
    for p in PORTS:
        got, reached, sent, _ = out["paths"][str(p)]
        want = lab.expected_hops(members[p], family)
        assert reached, (p, got)
        assert len(got) == len(want), (p, got, want)
        for g, w in zip(got, want, strict=True):
            hops += 1
            stars += g is None
            assert g in (None, w), (p, got, want)
        tries = 1 + (3 if every else 1)
        if p != PORTS[0]:      # capped at the first port's depth: nothing past the last router
            assert sent <= len(want) * tries
    # only the first port looked past the last router (2 silent TTLs, the scout's tries each)
    assert out["at_peer"] == sum(v[3] for v in out["paths"].values()) <= 2 * (tries + 2)
    # every other answer dropped, 4 tries per TTL: a star needs 4 misses in a row
    assert stars <= (0.1 * hops if every else 0), (stars, hops)
    used = {m.name for ms in members.values() for m in ms}
    assert len(used) == 2 * stages, "every member carries some port"
