"""Raw mode traced (root): the oneway probe sends its probes and its trace datagrams as
frames to next-hop MACs (next_hop_spread = "port": port i through next hop i mod 2),
traces each port through its next hop, and names the member router losing 5-30 %.

Oracles: the lab's topology (which member owns which MAC and address) and per-port
iptables counters in each member's FORWARD chain (which ports' datagrams it carried);
the loss is the lab's own iptables DROP on the member chosen at random."""
import random

import pytest

from tests.conftest import IS_ROOT, NOT_ROOT_REASON
from tests.integration.test_trace_lab import RUNS, _check_named, _fault_named
from tests.lab.nexthop import NextHopLab

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT_REASON)]

PORTS = range(5000, 5024)        # the ports test_trace_lab's Probe sends from


@pytest.fixture
def lab():
    lab = NextHopLab()
    try:
        yield lab.up()
    finally:
        lab.down()


def _carried(lab, member, ipt):
    """{source port: datagrams member forwarded or dropped}, from its counting rules."""
    out = lab.run(member, [ipt, "-w", "-L", "FORWARD", "-v", "-n", "-x"]).stdout.splitlines()[2:]
    return {int(f[-1].split(":")[1]): int(f[0]) for f in map(str.split, out) if f and f[-1].startswith("spt:")}


@pytest.mark.parametrize("run", range(RUNS))
def test_raw_mode_traces_each_port_through_its_next_hop_and_names_the_lossy_one(lab, run):
    """One run in `make test` (about 18 s, IPv4), 10 in `make test-trace` (IPv4 and IPv6)."""
    members = lab.members[0]
    family = 4 if run % 2 == 0 else 6
    ipt = "iptables" if family == 4 else "ip6tables"
    for m in members:
        for p in PORTS:
            lab.run(m, [ipt, "-w", "-A", "FORWARD", "-i", "l", "-p", "udp", "--sport", p])
    rng = random.Random(run)
    fault, pct = rng.choice(members), rng.uniform(5, 30)
    macs = ",".join(lab.mac(m) for m in members)
    onset, recs, _ = _fault_named(lab, fault, family, "--next-hops", macs, "--interface", "e0",
                                  "--next-hop-spread", "port", loss=pct)
    addr = {m.name: m.addr4 if family == 4 else m.addr6 for m in members}
    r = _check_named(onset, recs, addr[fault.name])
    assert r["hop"] == 1 and r["ports_clean"].startswith("0/"), (pct, r)
    assert lab.drops(fault) > 0 and sum(lab.drops(m) for m in members if m is not fault) == 0
    carried = {m.name: _carried(lab, m, ipt) for m in members}
    paths = {r["port"]: r["hops"] for _, r in recs if r.get("scope") == "path"}
    assert sorted(paths) == list(PORTS)
    for i, p in enumerate(PORTS):
        used = [m for m in members if carried[m.name].get(p)]
        assert used == [members[i % 2]], (p, {k: v.get(p) for k, v in carried.items()})
        assert paths[p] == addr[used[0].name], (p, paths[p])
