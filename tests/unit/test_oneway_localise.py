"""localise.py against synthetic ECMP trees whose faulty member is known by construction.

A tree: junction J0, then `stages` rows of members with a junction after each; every
port picks one member per row. The degradation is generated from the tree (a port is
degraded iff its path crosses the fault; for loss, binomial draws at the injected rate),
never from what localise computes.
"""
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from netprobe.probes.oneway.localise import delay_marks, localise, loss_marks

fuzz = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def junction(s):
    return f"198.18.{s}.1"


def member(s, k):
    return f"198.18.{100 + 10 * s + k}.2"


@st.composite
def trees(draw):
    stages = draw(st.integers(1, 3))
    widths = [draw(st.integers(2, 4)) for _ in range(stages)]
    nports = draw(st.integers(8, 64))
    paths = {}
    for p in range(5000, 5000 + nports):
        hops = [junction(0)]
        for s, w in enumerate(widths, 1):
            hops += [member(s, draw(st.integers(0, w - 1))), junction(s)]
        paths[p] = hops
    s = draw(st.integers(1, stages))
    fault = member(s, draw(st.integers(0, widths[s - 1] - 1)))
    through = frozenset(p for p, h in paths.items() if fault in h)
    # identifiable: enough ports cross it, some avoid it, no other hop has the same ports
    assume(len(through) >= 3 and len(through) < nports)
    others = {h for hops in paths.values() for h in hops} - {fault}
    assume(all(frozenset(p for p, hops in paths.items() if h in hops) != through for h in others))
    return paths, fault, through


@fuzz
@given(trees())
def test_random_tree_names_exactly_the_faulty_member(tree):
    paths, fault, through = tree
    got = localise(paths, through, set(paths) - through)
    assert [s.hop for s in got] == [fault]
    s = got[0]
    assert (s.ports_bad, s.bad_total, s.ports_clean) == (len(through), len(through), 0)
    assert s.clean_total == len(paths) - len(through) and not s.common and s.score == 1.0


@fuzz
@given(trees(), st.floats(0.05, 0.30), st.integers(0, 2**32 - 1))
def test_binomial_loss_on_the_member_is_pinned_on_it(tree, rate, seed):
    """5-30 % loss on the member, 200 probes per port, ports judged by a 1 % threshold."""
    paths, fault, through = tree
    rng = np.random.default_rng(seed)
    counts = {p: (200, int(rng.binomial(200, rate)) if p in through else 0) for p in paths}
    bad, clean = loss_marks(counts, 1.0)
    assert [s.hop for s in localise(paths, bad, clean)] == [fault]


@fuzz
@given(trees(), st.integers(0, 2**32 - 1))
def test_stars_leave_the_verdict_alone(tree, seed):
    """Routers that miss answers (stars) on some ports: the fault is still the one named."""
    paths, fault, through = tree
    rng = np.random.default_rng(seed)
    holey = {p: [None if rng.random() < 0.15 else h for h in hops] for p, hops in paths.items()}
    seen = {p for p in through if fault in holey[p]}
    assume(len(seen) >= 3)
    # evidence that the fault is avoided: a clean port whose hop at the fault's TTL answered
    # (with only stars there, the clean ports might cross the fault too: nothing to pin)
    ttl = paths[next(iter(through))].index(fault)
    assume(any(holey[p][ttl] is not None for p in set(paths) - through))
    got = localise(holey, through, set(paths) - through)
    assert fault in [s.hop for s in got]
    for s in got:      # anything else named ties with it: the stars left them indistinguishable
        assert {p for p, h in holey.items() if s.hop in h} & set(through)


@fuzz
@given(trees())
def test_no_degraded_port_no_suspect(tree):
    paths, _, _ = tree
    assert localise(paths, set(), set(paths)) == []


@fuzz
@given(trees())
def test_every_port_degraded_names_the_last_shared_hop(tree):
    paths, _, _ = tree
    stages = (len(next(iter(paths.values()))) - 1) // 2
    got = localise(paths, set(paths), set())
    assert [(s.hop, s.ttl, s.common) for s in got] == [(junction(stages), 2 * stages + 1, True)]
    assert got[0].ports_bad == len(paths) and got[0].confidence == "high"


@fuzz
@given(trees(), st.integers(0, 2**32 - 1))
def test_added_delay_on_the_member_is_pinned_on_it(tree, seed):
    """50 ms more on the member, a few ms of jitter everywhere, no threshold configured."""
    paths, fault, through = tree
    rng = np.random.default_rng(seed)
    p99 = {p: 0.002 + rng.uniform(0, 0.003) + (0.050 if p in through else 0.0) for p in paths}
    bad, clean = delay_marks(p99)
    assert bad == set(through)
    assert [s.hop for s in localise(paths, bad, clean)] == [fault]


def test_a_single_degraded_port_is_no_evidence():
    paths = {5000: ["a", "m0", "b"], 5001: ["a", "m1", "b"], 5002: ["a", "m1", "b"]}
    assert localise(paths, {5000}, {5001, 5002}) == []


def test_two_stage_example_with_counts():
    """The issue's figure: 7 degraded ports of 7 through the member, 0 of 9 clean ones."""
    paths = {}
    for i in range(16):
        m1 = member(1, i % 2)
        m2 = member(2, 0) if i < 7 else member(2, 1)
        paths[6000 + i] = [junction(0), m1, junction(1), m2, junction(2)]
    bad = {6000 + i for i in range(7)}
    (s,) = localise(paths, bad, set(paths) - bad)
    assert (s.hop, s.ttl, s.ports_bad, s.bad_total, s.ports_clean, s.clean_total, s.confidence) == \
        (member(2, 0), 4, 7, 7, 0, 9, "high")


def test_ports_without_data_or_trace_take_no_part():
    paths = {1: ["a", "m0", "b"], 2: ["a", "m0", "b"], 3: ["a", "m1", "b"], 4: []}
    bad, clean = loss_marks({1: (100, 10), 2: (100, 9), 3: (100, 0), 4: (100, 50), 5: (3, 3)}, 1.0)
    assert bad == {1, 2, 4} and clean == {3}
    assert [s.hop for s in localise(paths, bad, clean)] == ["m0"]
