"""Passive votes in the equal-cost lab (root): the retrans probe in A traces the TCP flows
that retransmit, on their own 5-tuples, and names the member the test made lossy.

Oracles, all outside the product: the member the test impaired (chosen at random) and the
lab's addresses; A's iptables counter of the segments it sent with a TTL below 17 (the
flows' own segments leave with 64) for the cost; B's counter of such segments arriving
and B's kernel checksum-error counter (nstat Tcp InCsumErrors) for the segments that
reached the peer; A's time-exceeded answers (iptables) against A's nstat
TcpExtOutOfWindowIcmps for the answers the flows' sockets ignored; iperf3's own report that
its transfer completed."""
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PORT = 5298
FLOWS = 24
QUIET = 7.0                     # s of clean traffic before the fault
RUN = 20                        # s of probe and traffic
TRACE_TTL = ["-p", "tcp", "-m", "ttl", "--ttl-lt", "17"]
RUNS = int(os.environ.get("NETPROBE_VOTES_RUNS", "1"))      # `make test-trace`: 10


def _count(lab, node, chain):
    out = lab.run(node, ["iptables", "-w", "-L", chain, "-v", "-n", "-x"]).stdout.splitlines()[2:]
    return sum(int(x.split()[0]) for x in out if "TTL match" in x)


def _nstat(lab, node, counter):
    out = lab.run(node, ["nstat", "-az", counter]).stdout.split()
    return int(out[out.index(counter) + 1])


def _run_votes(lab, fault, loss):
    """24 iperf3 flows A -> B for RUN - 3 s under the retrans probe with votes on in A, `loss`
    percent on `fault` from QUIET s in; returns (records with arrival times, onset, end of
    the transfer)."""
    # segments on the wire, as behind a real NIC: a GSO skb of 40 segments would be dropped whole
    lab.run(lab.a, ["ethtool", "-K", "e0", "tso", "off", "gso", "off"])
    srv = lab.popen(lab.b, ["iperf3", "-s", "-1", "-B", lab.b4, "-p", PORT])
    deadline = time.monotonic() + 10
    while f":{PORT}" not in lab.run(lab.b, ["ss", "-ltnH"]).stdout:
        assert time.monotonic() < deadline, "iperf3 did not listen"
        time.sleep(0.05)
    probe = lab.popen(lab.a, [sys.executable, "-m", "netprobe", "probe", "retrans", "--json", "--ports", PORT,
                              "--interval", "1s", "--breach-after", "2", "--clear-after", "2", "--max-retrans", "10",
                              "--trace-votes", "--trace-rate", "200", "--trace-flows", "32",
                              "--duration", f"{RUN + 30}s"], cwd=str(ROOT))
    recs = []

    def read():
        for line in probe.stdout:
            if line.startswith("{"):
                recs.append((time.monotonic(), json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    end = time.monotonic() + 20
    while not recs:
        assert time.monotonic() < end and probe.poll() is None, probe.stderr.read()[-2000:]
        time.sleep(0.05)
    client = lab.popen(lab.a, ["iperf3", "-c", lab.b4, "-p", PORT, "-P", FLOWS, "-b", "2M", "-t", RUN - 3, "-J"])
    time.sleep(QUIET)
    lab.impair(fault, loss=loss)
    onset = time.monotonic()
    out, _ = client.communicate(timeout=RUN + 30)
    done = time.monotonic()
    report = json.loads(out)
    assert "error" not in report, report.get("error")
    probe.send_signal(signal.SIGINT)
    probe.wait(timeout=30)
    reader.join(timeout=10)
    assert probe.returncode == 0, probe.stderr.read()[-2000:]
    srv.terminate()
    return recs, onset, done


@pytest.mark.parametrize("run", range(RUNS))
def test_votes_name_the_lossy_member_and_nothing_before(make_ecmp_lab, run):
    lab = make_ecmp_lab()
    fault = random.choice(lab.members[0])
    loss = random.uniform(5, 30)
    other = next(m for m in lab.members[0] if m is not fault)
    lab.run(lab.a, ["iptables", "-w", "-A", "OUTPUT", *TRACE_TTL])
    lab.run(lab.b, ["iptables", "-w", "-A", "INPUT", *TRACE_TTL])
    lab.run(lab.a, ["iptables", "-w", "-A", "INPUT", "-p", "icmp", "--icmp-type", "time-exceeded"])
    csum0, oow0 = _nstat(lab, lab.b, "TcpInCsumErrors"), _nstat(lab, lab.a, "TcpExtOutOfWindowIcmps")
    recs, onset, done = _run_votes(lab, fault, loss)

    named = [(t, r) for t, r in recs if r["type"] == "BREACH" and "suspect_hop" in r]
    # nothing named while every member carried its flows cleanly, the baseline traced by then
    assert not [r for t, r in named if t < onset], named
    assert any(r.get("traced_flows") == FLOWS for t, r in recs if t < onset and r.get("dir") == "out")
    assert named, "no suspect named: " + json.dumps([r for _, r in recs if r.get("scope") == "votes"][-6:])
    assert {r["suspect_hop"] for _, r in named} == {fault.addr4}, named
    first = named[0][1]
    assert first["metric"] == "retrans" and first["hop"] == 2, first      # the members are the 2nd hop
    assert named[0][0] - onset <= 6.0, named[0][0] - onset
    # the votes of the intervals after the onset: of the hops where the paths differ (the members),
    # the lossy one has the most; the junctions, which every path crosses, get the sum of the
    # members' votes (so they tie with the lossy member when only its flows resend)
    tallies = {}
    for t, r in recs:
        if r.get("scope") == "votes" and onset < t < done:     # while the flows sent through the fault
            tallies.setdefault(r["ts"], {})[r["hop"]] = r["votes"]
    assert tallies
    for got in tallies.values():
        members = got.get(fault.addr4, 0) + got.get(other.addr4, 0)
        assert got.get(fault.addr4, 0) > got.get(other.addr4, 0), got
        for j in lab.junctions:
            assert got[j.addr4] == pytest.approx(members, abs=1e-5), got
    # cost: A's counter of trace segments equals the probe's count; every one of the few that
    # reached B was dropped by B's stack as a checksum error, never seen by the connection
    sent = _count(lab, lab.a, "OUTPUT")
    host = [r for _, r in recs if r["type"] == "RESULT" and r.get("dir") == "out"]
    assert sent == sum(r["trace_packets"] for r in host) > 0
    at_b = _count(lab, lab.b, "INPUT")
    flow_segs = sum(r["host_out_segs"] or 0 for r in host)
    print(f"trace segments sent {sent} ({100 * sent / flow_segs:.2f} % of {flow_segs}), reached B {at_b}, "
          f"flows traced {host[-1]['traced_flows']}, {loss:.1f} % loss on {fault.name} named "
          f"{named[0][0] - onset:.1f} s after the onset")
    assert sent <= (FLOWS + 2) * 3 * 3
    assert _nstat(lab, lab.b, "TcpInCsumErrors") - csum0 == at_b
    # every time-exceeded answer A received was handed to the flow's socket and ignored by it
    answers = sum(int(x.split()[0]) for x in lab.run(lab.a, ["iptables", "-w", "-L", "INPUT", "-v", "-n", "-x"])
                  .stdout.splitlines()[2:] if "icmptype 11" in x)
    assert 0 < answers == _nstat(lab, lab.a, "TcpExtOutOfWindowIcmps") - oow0


if RUNS > 1:     # `make test-trace` only: `make test` keeps to the member case
    @pytest.mark.parametrize("run", range(RUNS))
    def test_loss_where_every_path_meets_is_the_common_part(make_ecmp_lab, run):
        lab = make_ecmp_lab()
        last = lab.junctions[-1]
        recs, onset, _ = _run_votes(lab, last, random.uniform(5, 30))
        named = [(t, r) for t, r in recs if r["type"] == "BREACH" and "suspect_hop" in r]
        assert named and not [r for t, r in named if t < onset], named
        assert {r["suspect_hop"] for _, r in named} == {last.addr4}, named
        assert named[0][1]["scope"] == "common_path", named[0][1]


TRACE_PORT = 5297
SPORTS = list(range(41000, 41012))
SERVER = ("import socket, threading\ns = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, "
          "socket.SO_REUSEADDR, 1)\ns.bind(('::', %d)); s.listen(64); print('READY', flush=True)\n"
          "def drain(c):\n    while c.recv(65536): pass\n"
          "for _ in range(%d):\n    threading.Thread(target=drain, args=(s.accept()[0],), daemon=True).start()\n"
          "threading.Event().wait(60)" % (TRACE_PORT, len(SPORTS)))
CLIENT = r'''
import json, socket, sys
from netprobe.probes.retrans import tcptrace
dst, retries = sys.argv[1], int(sys.argv[2])
socks = []
for p in map(int, sys.argv[3:]):
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    s.bind(("::" if ":" in dst else "0.0.0.0", p))
    s.connect((dst, 5297))
    s.sendall(b"x" * 20000)                       # the flow's own segments, for the members' counters
    socks.append(s)
flows = [(s.getsockname()[0], s.getsockname()[1], dst, 5297) for s in socks]
t = tcptrace.Tracer(rate=200, retries=retries, timeout=0.3)
paths = t.trace(flows)
print(json.dumps({"paths": {f[1]: [paths[f].hops, paths[f].reached] for f in flows}, "sent": t.sent}))
'''


@pytest.mark.parametrize("family,every", [(6, 0), (4, 2)])
def test_tcp_trace_follows_each_flows_own_member(make_ecmp_lab, family, every):
    """The tracer alone, two stages, IPv6, and IPv4 with routers that answer only every other
    time-exceeded: each live flow's trace names the members that per-member counters saw
    carry that flow's own data (a star allowed where a router kept silent)."""
    lab = make_ecmp_lab(stages=2)
    if every:
        for r in lab.routers():
            lab.impair(r, icmp_every=every)
    ipt = "iptables" if family == 4 else "ip6tables"
    ttl = ["-m", "ttl", "--ttl-gt", "20"] if family == 4 else ["-m", "hl", "--hl-gt", "20"]      # not the traces
    members = [m for row in lab.members for m in row]
    for m in members:
        rules = "*filter\n:NPCOUNT - [0:0]\n-I FORWARD 1 -i l -j NPCOUNT\n" + "".join(
            f"-A NPCOUNT -p tcp --sport {p} --dport {TRACE_PORT} {' '.join(ttl)}\n" for p in SPORTS) + "COMMIT\n"
        lab.run(m, [ipt + "-restore", "-w", "--noflush"], input=rules)
    srv = lab.popen(lab.b, [sys.executable, "-c", SERVER])
    assert srv.stdout.readline().startswith("READY")
    retries = 3 if every else 1
    out = json.loads(lab.run(lab.a, [sys.executable, "-c", CLIENT, lab.b4 if family == 4 else lab.b6, retries,
                                     *SPORTS], cwd=str(ROOT), timeout=60).stdout)
    srv.terminate()
    crossed = {p: [] for p in SPORTS}
    for m in members:
        for line in lab.run(m, [ipt, "-w", "-L", "NPCOUNT", "-v", "-n", "-x"]).stdout.splitlines()[2:]:
            if int(line.split()[0]) >= 3:
                crossed[int(line.split("spt:")[1].split()[0])].append(m)
    stars = 0
    for p in SPORTS:
        assert len(crossed[p]) == 2, (p, crossed[p])           # one member per stage
        hops, reached = out["paths"][str(p)]
        want = lab.expected_hops(crossed[p], family)
        assert reached and len(hops) == len(want), (p, hops, want)
        assert all(h in (None, w) for h, w in zip(hops, want, strict=True)), (p, hops, want)
        stars += hops.count(None)
    combos = {tuple(m.name for m in ms) for ms in crossed.values()}
    assert len(combos) >= 3, combos                  # the flows spread: the traces had members to tell apart
    if every:        # every other answer dropped, 4 tries per TTL: a star needs 4 misses in a row
        assert stars <= 0.1 * 5 * len(SPORTS), stars
    else:            # 5 routers per flow; the first flow alone went on until 2 TTLs stayed silent
        assert stars == 0 and out["sent"] == len(SPORTS) * 5 + 2 * (1 + retries)
