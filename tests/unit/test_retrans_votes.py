"""Passive votes (votes.py) against references written from the spec, and the trace
segment (tcptrace.segment) against scapy's reading of it.

Synthetic ECMP trees: junction J0, `stages` rows of members with a junction after each;
every flow picks one member per row. Which flows retransmit is drawn from the tree (the
flows through the fault), never from what the code computes."""
import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scipy.stats import hypergeom

from netprobe.config.load import load_text
from netprobe.errors import ConfigError
from netprobe.probes.retrans import tcptrace, votes

fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def junction(s):
    return f"198.18.{s}.1"


def member(s, k):
    return f"198.18.{100 + 10 * s + k}.2"


def flow(i):
    return ("198.18.1.2", 40000 + i, "198.18.2.2", 5201)


@st.composite
def trees(draw, nflows=(8, 48)):
    stages = draw(st.integers(1, 3))
    widths = [draw(st.integers(2, 4)) for _ in range(stages)]
    paths = {}
    for i in range(draw(st.integers(*nflows))):
        hops = [junction(0)]
        for s, w in enumerate(widths, 1):
            hops += [member(s, draw(st.integers(0, w - 1))), junction(s)]
        paths[flow(i)] = hops
    s = draw(st.integers(1, stages))
    fault = member(s, draw(st.integers(0, widths[s - 1] - 1)))
    return paths, fault


def reference_tally(paths, bad):
    """007 as specified, in exact fractions: 1/len(path) to each hop of each retransmitting flow."""
    out = {}
    for f in bad:
        for h in paths.get(f) or ():
            if h is not None:
                out[h] = out.get(h, 0) + Fraction(1, len(paths[f]))
    return out


@fuzz
@given(trees(), st.data())
def test_tally_matches_the_reference(tree, data):
    paths, _ = tree
    # stars where a router did not answer, and some flows without a path at all
    for f in list(paths):
        paths[f] = [None if data.draw(st.integers(0, 9)) == 0 else h for h in paths[f]]
    bad = {f: data.draw(st.integers(1, 500)) for f in data.draw(st.sets(st.sampled_from(sorted(paths))))}
    bad[("198.18.1.2", 1, "198.18.9.9", 2)] = 7       # resent, never traced: no vote
    got = votes.tally(paths, bad)
    want = reference_tally(paths, bad)
    assert {h.hop for h in got} == set(want)
    for h in got:
        assert h.votes == pytest.approx(float(want[h.hop]), abs=1e-6)
        through = [f for f in bad if h.hop in (paths.get(f) or ())]
        assert h.flows == len(through) and h.retrans == sum(bad[f] for f in through)
    assert [h.votes for h in got] == sorted((h.votes for h in got), reverse=True)


def test_tally_by_hand():
    a, b, c = flow(1), flow(2), flow(3)
    paths = {a: ["j0", "m0", "j1"], b: ["j0", None, "j1"], c: ["j0", "m1", "j1", "x", "y", "z"]}
    got = {h.hop: h for h in votes.tally(paths, {a: 5, b: 1}, clean=[c])}
    assert got["j0"].votes == pytest.approx(2 / 3) and got["m0"].votes == pytest.approx(1 / 3)
    assert got["j0"].flows == 2 and got["j0"].clean == 1 and got["j0"].retrans == 6
    assert got["m1"].votes == 0 and got["m1"].clean == 1     # clean flows add no vote


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))
def test_enrichment_p_is_the_hypergeometric_tail(nb, xb, nc, xc):
    kb, kc = nb + xb, nc + xc
    assume(kb > 0)
    want = hypergeom.sf(nb - 1, kb + kc, nb + nc, kb)
    assert votes.enrichment_p(nb, kb, nc, kc) == pytest.approx(want, rel=1e-9, abs=1e-12)


@fuzz
@given(trees(nflows=(16, 48)))
def test_flows_through_the_fault_name_it(tree):
    paths, fault = tree
    bad = {f: 10 for f, h in paths.items() if fault in h}
    clean = [f for f in paths if f not in bad]
    assume(len(bad) >= 4 and len(clean) >= 4)
    others = {h for hops in paths.values() for h in hops} - {fault}
    assume(all({f for f, hops in paths.items() if h in hops} != set(bad) for h in others))
    got = votes.suspects(paths, bad, clean)
    assert [s.hop for s, _ in got] == [fault]
    assert got[0][1].flows == len(bad)
    # the baseline not traced yet: no verdict, rather than a guess
    assert votes.suspects({f: p for f, p in paths.items() if f in bad}, bad, clean, untraced_clean=len(clean)) == []


def test_chance_resends_are_rarely_named():
    """No fault: 2 to 5 of 24 flows resend, whichever member they cross. Over 2000 seeded
    draws a hop is named at most about as often as ALPHA allows for the two members tested."""
    rng = random.Random(21)
    named = 0
    for _ in range(2000):
        paths = {flow(i): [junction(0), member(1, rng.randrange(2)), junction(1)] for i in range(24)}
        bad = {f: 5 for f in rng.sample(sorted(paths), rng.randint(2, 5))}
        named += bool(votes.suspects(paths, bad, [f for f in paths if f not in bad]))
    assert named <= 2 * votes.ALPHA * 2000, named


def test_every_flow_resending_is_the_common_part_from_four_flows():
    paths = {flow(i): [junction(0), member(1, i % 2), junction(1)] for i in range(6)}
    got = votes.suspects(paths, {f: 3 for f in paths}, [])
    assert [(s.hop, s.common) for s, _ in got] == [(junction(1), True)]
    assert votes.fields(*got[0])["scope"] == "common_path"
    three = dict(list(paths.items())[:3])
    assert votes.suspects(three, {f: 3 for f in three}, []) == []


@pytest.mark.parametrize("src,dst", [("198.18.1.2", "198.18.2.2"), ("2001:2:0:1::2", "2001:2:0:2::2")])
def test_trace_segment_is_an_ack_with_a_wrong_checksum(src, dst):
    raw = tcptrace.segment(src, dst, 40123, 5201, 0xDEADBEEF, 0x01020304, 3)
    ip = IP(raw) if ":" not in src else IPv6(raw)
    tcp = ip[TCP]
    assert (ip.src, ip.dst, tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (src, dst, 40123, 5201, 0xDEADBEEF, 0x01020304)
    assert str(tcp.flags) == "A" and not bytes(tcp.payload) and tcp.dataofs == 5
    if ":" in src:
        assert ip.hlim == 3 and ip.fl == 0 and ip.plen == 20
    else:
        assert ip.ttl == 3 and ip.len == 40 and ip.flags == "DF"
    again = ip.copy()
    del again[TCP].chksum
    right = (IP if ":" not in src else IPv6)(bytes(again))[TCP].chksum
    assert tcp.chksum == right ^ 1            # wrong by one bit: no stack takes it for valid


def test_vote_settings_are_checked_with_one_line():
    table = '[[probe]]\nkind = "retrans"\nname = "r"\ntrace_votes = true\n'
    cfg = load_text(table + "trace_rate = 50.0\ntrace_flows = 8\n").probes[0].config
    assert cfg.trace_votes and cfg.trace_rate == 50.0 and cfg.trace_flows == 8 and cfg.max_hops == 16
    for bad, key in (("trace_rate = 0.0", "trace_rate"), ("max_hops = 65", "max_hops"),
                     ("trace_flows = 0", "trace_flows"), ("trace_min_retrans = 0", "trace_min_retrans"),
                     ('trace_votes = "yes"', "trace_votes")):
        with pytest.raises(ConfigError) as e:
            load_text(table.replace("trace_votes = true\n", "") + bad + "\n")
        assert key in str(e.value) and "\n" not in str(e.value)


def test_votes_stay_out_of_prometheus_and_the_suspect_goes_in():
    """Read back with prometheus_client's parser: no per-hop vote series (no hop label to tell
    them apart), the suspect's BREACH labelled with its hop."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from netprobe.outputs.prometheus import RecordCollector, registry_of
    from netprobe.results import BREACH, RESULT, Record, event

    col = RecordCollector()
    reg = registry_of(col)
    for hop in ("198.18.1.1", "198.18.110.2"):
        col.add(Record(RESULT, "retrans", "r", {"scope": "votes", "hop": hop, "votes": 3.5, "flows": 11,
                                                "flows_clean": 0, "retrans": 300, "window": 1.0}))
    col.add(event(BREACH, "retrans", "r", metric="retrans", value=300, op="<=", threshold=None,
                  suspect_hop="198.18.110.2", hop=2))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert not [n for n in fams if "votes" in n or "flows_clean" in n]
    assert [s.labels["suspect_hop"] for s in fams["netprobe_breach"].samples] == ["198.18.110.2"]


def test_classify_by_hand():
    a, b, c, d, e = (flow(i) for i in range(5))
    resent = {a: 3, b: 2, e: 9}
    sent = {a: 500, b: 500, c: 50, d: 49, e: 0}
    bad, clean = votes.classify(resent, sent, 3)
    assert bad == {a: 3, e: 9}          # e resent without a dump of its data: still a vote
    assert clean == [c]                 # b resent a little: neither; d sent too little to judge
