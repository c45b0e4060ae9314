"""Per-port Paris traces in the equal-cost lab (root): each port's trace names the
members its own datagrams cross, IPv4 and IPv6, one and two stages, and with routers
that answer only every other ICMP error.

Oracle: per-port iptables packet counters in every member router, fed by ordinary
datagrams from fresh sockets with the same ports (EcmpLab.flow_members)."""
import json
import os
import random
import signal
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.lab

PORTS = list(range(5000, 5024))
DPORT = 40700                   # inside the peer's default udp_ports (32768-60999); the scripts below too
SCRIPT = r'''
import json, sys, time
from netprobe.probes.oneway import trace
dst, fam, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ports = [int(p) for p in sys.argv[4:]]
socks = {p: trace.open_socket(dst, 40700, p) for p in ports}
t0 = time.monotonic()
paths = trace.trace(dst, 40700, ports, rate=200, retries=3 if every else 1, timeout=0.3, socks=socks)
took = time.monotonic() - t0
print(json.dumps({"took": took, "paths": {p: [v.hops, v.reached, v.sent, v.to_peer] for p, v in paths.items()}}))
'''


SINK = ("import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ns.bind(('::', 40700))\n"
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


@pytest.mark.parametrize("family,stages,every", [(4, 1, 0), (6, 2, 0), (4, 2, 2), (6, 1, 2)])
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
    combos = {tuple(m.name for m in ms) for ms in members.values()}
    assert len(combos) == 2 ** stages, "every member pair carries some port (the stages hash apart)"


# -- the oneway probe end to end: BREACH names the faulty hop --------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERVAL = 2.0
RUNS = int(os.environ.get("NETPROBE_TRACE_RUNS", "1"))      # `make test-trace`: 10
QUIET = int(os.environ.get("NETPROBE_TRACE_QUIET", "24"))   # s without a fault; `make test-trace`: 600
U32_TRACE = {4: "0>>22&0x3C@8=0x4e505452", 6: "48=0x4e505452"}   # UDP payload starts "NPTR"


class Probe:
    """`netprobe serve` in B, `netprobe probe oneway --trace --json` in A; records with arrival times."""

    def __init__(self, lab, family=4, *extra, duration=14):
        self.lab, self.family, self.duration = lab, family, duration
        b = lab.b4 if family == 4 else lab.b6
        listen = f"{b}:7171" if family == 4 else f"[{b}]:7171"
        lab.popen(lab.b, [sys.executable, "-m", "netprobe", "serve", "--listen", listen,
                          "--allow", "198.18.0.0/15", "--allow", "2001:2::/48"], cwd=ROOT)
        deadline = time.monotonic() + 15
        while ":7171" not in lab.run(lab.b, ["ss", "-ltnH"]).stdout:
            assert time.monotonic() < deadline, "netprobe serve did not listen"
            time.sleep(0.05)
        ipt = "iptables" if family == 4 else "ip6tables"
        self.count = [ipt, "-w", "-A", "OUTPUT", "-p", "udp", "-m", "u32", "--u32", U32_TRACE[family]]
        lab.run(lab.a, self.count)
        lab.run(lab.b, [ipt, "-w", "-A", "INPUT", *self.count[4:]])     # the trace datagrams B took in
        lab.run(lab.a, [ipt, "-w", "-A", "OUTPUT", "-p", "udp", "--dport", str(DPORT)])
        self.proc = lab.popen(lab.a, [sys.executable, "-m", "netprobe", "probe", "oneway", "--json", "--peer", listen,
                                      "--ports", "5000-5023", "--dst-port", DPORT, "--gap", "1ms",
                                      "--interval", f"{INTERVAL}s", "--grace", "300ms", "--duration", f"{duration}s",
                                      "--trace", "--trace-rate", "200", "--per-port", *extra], cwd=ROOT)
        self.recs = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.recs.append((time.monotonic(), json.loads(line)))

    def wait(self, pred, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(pred(r) for _, r in self.recs):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError("no such record: " + json.dumps([r for _, r in self.recs][-5:])[:2000])

    def finish(self):
        self.proc.wait(timeout=self.duration + 90)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, self.proc.stderr.read()[-2000:]
        return self.recs

    def packets(self):
        """(trace datagrams, probe datagrams) A sent, from A's iptables OUTPUT counters."""
        ipt = "iptables" if self.family == 4 else "ip6tables"
        out = self.lab.run(self.lab.a, [ipt, "-w", "-L", "OUTPUT", "-v", "-n", "-x"]).stdout.splitlines()[2:]
        trace_n = sum(int(x.split()[0]) for x in out if "u32" in x)
        probe_n = sum(int(x.split()[0]) for x in out if f"dpt:{DPORT}" in x)
        return trace_n, probe_n - trace_n

    def at_peer(self):
        """Trace datagrams that reached B, from B's iptables INPUT counter."""
        ipt = "iptables" if self.family == 4 else "ip6tables"
        out = self.lab.run(self.lab.b, [ipt, "-w", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2:]
        return sum(int(x.split()[0]) for x in out if "u32" in x)


def suspects(recs, since=0.0):
    return [(t, r) for t, r in recs if r["type"] == "BREACH" and "suspect_hop" in r and t >= since]


def _fault_named(lab, fault, family=4, *extra, **impair):
    """Start the probe, wait until it has every port's path, put the fault on at the
    next interval's start, let it run until a suspect is named (at most 5 intervals)
    and one interval more, then stop it; returns (onset, records, probe)."""
    p = Probe(lab, family, *extra, duration=60)
    p.wait(lambda r: r.get("traced_ports") == 24)
    seen = len(p.recs)
    p.wait(lambda r: r in [x for _, x in p.recs[seen:]] and "trace_share" in r)
    lab.impair(fault, **impair)
    onset = time.monotonic()
    try:
        p.wait(lambda r: r["type"] == "BREACH" and "suspect_hop" in r, timeout=5 * INTERVAL + 1)
        time.sleep(INTERVAL)
    except AssertionError:
        pass                 # the checks say what is missing
    p.proc.send_signal(signal.SIGINT)
    return onset, p.finish(), p


def _check_named(onset, recs, want, metric="loss", scope=None):
    named = suspects(recs)
    assert named, "no suspect named"
    assert {r["suspect_hop"] for _, r in named} == {want}, named      # no other hop, ever
    t, r = named[0]
    assert r["metric"] == metric and r.get("scope") == scope, r
    assert t - onset <= 3 * INTERVAL + 1.0, (t - onset, r)
    return r


@pytest.mark.parametrize("run", range(RUNS))
def test_loss_on_a_random_member_is_named_within_3_intervals(make_ecmp_lab, run):
    rng = random.Random(run)
    family = 4 if run % 2 == 0 else 6
    lab = make_ecmp_lab()
    fault, pct = rng.choice(lab.members[0]), rng.uniform(5, 30)
    onset, recs, _ = _fault_named(lab, fault, family, loss=pct)
    r = _check_named(onset, recs, fault.addr4 if family == 4 else fault.addr6)
    assert r["hop"] == 2 and r["ports_clean"].startswith("0/"), r
    assert lab.drops(fault) > 0


def test_delay_on_one_member_is_named_as_a_delay_suspect(make_ecmp_lab):
    lab = make_ecmp_lab()
    fault = lab.members[0][1]
    onset, recs, _ = _fault_named(lab, fault, 4, "--max-delay-p99", "20ms", delay_ms=50)
    _check_named(onset, recs, fault.addr4, metric="delay_p99")


def test_loss_on_the_hop_every_path_shares_is_the_common_part(make_ecmp_lab):
    lab = make_ecmp_lab()
    last = lab.junctions[-1]
    onset, recs, _ = _fault_named(lab, last, loss=10)
    r = _check_named(onset, recs, last.addr4, scope="common_path")
    assert r["ports_bad"] == "24/24"


def test_two_stages_name_the_member_of_the_right_stage(make_ecmp_lab):
    lab = make_ecmp_lab(stages=2)
    fault = random.Random(7).choice(lab.members[1])
    onset, recs, _ = _fault_named(lab, fault, loss=15)
    r = _check_named(onset, recs, fault.addr4)
    assert r["hop"] == 4


def test_routers_answering_every_other_icmp_still_give_the_answer(make_ecmp_lab):
    lab = make_ecmp_lab()
    for n in lab.routers():
        lab.impair(n, icmp_every=2)
    fault = lab.members[0][0]
    onset, recs, _ = _fault_named(lab, fault, loss=10)
    _check_named(onset, recs, fault.addr4)


def test_no_fault_no_suspect_and_tracing_within_its_share(make_ecmp_lab):
    lab = make_ecmp_lab()
    p = Probe(lab, 4, "--trace-every", "20s", duration=QUIET)
    recs = p.finish()
    assert suspects(recs) == []
    assert not [r for _, r in recs if r["type"] == "BREACH"]
    res = [r for _, r in recs if r["type"] == "RESULT" and "trace_share" in r]
    assert res[-1]["traced_ports"] == 24
    trace_n, probe_n = p.packets()
    # the oracle (A's iptables counters) agrees with what the probe counted ...
    assert trace_n == sum(r["trace_packets"] for r in res)
    # ... and over the run (a full retrace period included) tracing cost at most 1 % of the probes
    assert 0 < trace_n <= 0.01 * probe_n, (trace_n, probe_n)
    # the peer counted the scouts' datagrams past the last router apart, as B's INPUT counter saw them,
    # and none as malformed
    assert sum(r["malformed"] for r in res) == 0
    at_peer = sum(r["trace_at_peer"] for r in res)
    assert 0 < at_peer == p.at_peer() == res[-1]["trace_to_peer"] <= 2 * 2 * (2 + 3) * max(1, QUIET // 20)


def test_one_shot_trace_command_lists_each_ports_hops(make_ecmp_lab):
    lab = make_ecmp_lab(stages=2)
    sink = lab.popen(lab.b, [sys.executable, "-c", SINK])
    assert sink.stdout.readline().startswith("READY")
    p = lab.run(lab.a, [sys.executable, "-m", "netprobe", "probe", "trace", "--peer", lab.b6, "--ports",
                        "5000-5015", "--dst-port", DPORT, "--rate", "200", "--json"], cwd=ROOT, timeout=120)
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    members = lab.flow_members(list(range(5000, 5016)), DPORT, 6)
    assert [r["port"] for r in recs] == list(range(5000, 5016))
    for r in recs:
        assert r["type"] == "RESULT" and r["scope"] == "path" and r["reached"] is True
        assert r["hops"] == ",".join(lab.expected_hops(members[r["port"]], 6)), r
