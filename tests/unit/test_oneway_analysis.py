"""oneway analysis (sans-IO): expected-count sources, loss never negative, histogram
percentiles against numpy, black-hole detection and verdicts."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.probes.oneway import analysis
from tests.reference.oneway import hist_index, histogram


def rec(port=0, **kw):
    r = {"port": port, "received": 0, "dup": 0, "reordered": 0, "stale": 0, "base": -1, "max_seq": -1,
         "ctl_count": -1, "ctl_next": -1, "piggy_count": -1, "next_base": -1, "n": 0, "sum": 0.0, "sumsq": 0.0,
         "min": 0, "max": 0, "hist": []}
    r.update(kw)
    return r


def test_expected_sources_in_order():
    r = rec(received=8, base=100, max_seq=107, ctl_count=12, piggy_count=11, next_base=110)
    assert analysis.expected_of(r, 13) == (13, "sender")
    assert analysis.expected_of(r) == (12, "control")
    assert analysis.expected_of(rec(received=8, base=100, max_seq=107, piggy_count=11, next_base=110)) == (11, "next")
    assert analysis.expected_of(rec(received=8, base=100, max_seq=107, next_base=110)) == (10, "next")
    assert analysis.expected_of(rec(received=8, base=100, max_seq=107)) == (8, "inferred")
    assert analysis.expected_of(rec()) == (0, "inferred")


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_loss_is_never_negative(expected, received):
    pl = analysis.account_port(rec(received=received), expected)
    assert pl.lost == max(0, expected - received) >= 0
    assert pl.inconsistent == max(0, received - expected)
    assert 0.0 <= pl.loss_pct <= 100.0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["tight", "wide", "signed"]), st.integers(0, 2**32))
def test_percentiles_match_numpy_within_a_bin(shape, seed):
    rng = np.random.default_rng(seed)
    if shape == "tight":                   # 20 ms +- 0.1 ms: the lab's one-way delay
        vals = rng.normal(20e6, 1e5, 3000)
    elif shape == "wide":
        vals = rng.lognormal(11, 2, 3000)
    else:                                  # unsynchronised clocks: negative delays too
        vals = rng.normal(0, 5e5, 3000)
    vals = np.round(vals).astype(np.int64)
    for sub in (analysis.SESSION_SUB_BITS, analysis.PORT_SUB_BITS):
        got = analysis.percentiles(histogram(vals, sub), sub, [1, 50, 99])
        for q, g in zip([1, 50, 99], got, strict=True):
            # between the order statistics around the rank, widened to their bins
            lo = analysis.bin_range(hist_index(int(np.percentile(vals, q, method="lower")), sub), sub)[0]
            hi = analysis.bin_range(hist_index(int(np.percentile(vals, q, method="higher")), sub), sub)[1]
            assert lo - 1 <= g <= hi + 1, (shape, sub, q, g, lo, hi)


def test_fine_histogram_resolves_a_20ms_median_to_0_1ms():
    vals = np.full(1000, 20_290_000)
    (p50,) = analysis.percentiles(histogram(vals, analysis.SESSION_SUB_BITS), analysis.SESSION_SUB_BITS, [50])
    assert abs(p50 - 20.29e6) < 0.13e6


def test_percentiles_of_nothing():
    assert analysis.percentiles([], 7, [50, 99]) == [None, None]


def losses(*pairs):
    return [analysis.PortLoss(i, e, e - lost, lost, 0, 0, 0, "sender", 0) for i, (e, lost) in enumerate(pairs)]


def test_one_dead_port_among_clean_ones_is_a_blackhole():
    assert analysis.blackholes(losses((100, 0), (100, 100), (100, 1), (100, 0)), 90) == [1]
    assert analysis.blackholes(losses((100, 0), (100, 95), (100, 1), (100, 92)), 90) == [1, 3]


@pytest.mark.parametrize("pairs", [
    [(100, 100), (100, 100), (100, 100)],            # everything lost: path-wide, not one path
    [(100, 100), (100, 20), (100, 25)],              # the others are not clean
    [(100, 0), (2, 2), (100, 0)],                    # too few probes to tell
    [(100, 89), (100, 0)],                           # below blackhole_pct
    [(100, 100), (100, 100), (100, 0)],              # more than half the ports
])
def test_not_a_blackhole(pairs):
    assert analysis.blackholes(losses(*pairs), 90) == []


def test_summary_and_verdicts():
    h = histogram([10_000_000] * 50 + [30_000_000] * 50, analysis.SESSION_SUB_BITS)
    interval = {"interval": 4, "hist": h, "ports": [
        rec(0, received=50, n=50, sum=5e8, sumsq=5e15, min=10_000_000, max=10_000_000,
            hist=histogram([10_000_000] * 50, analysis.PORT_SUB_BITS)),
        rec(1, received=0),
        rec(2, received=50, n=50, sum=1.5e9, sumsq=4.5e16, min=30_000_000, max=30_000_000, reordered=3, dup=2,
            hist=histogram([30_000_000] * 50, analysis.PORT_SUB_BITS)),
    ]}
    s = analysis.summarize(interval, [50, 50, 50])
    assert (s["expected"], s["received"], s["lost"], s["dup"], s["reordered"]) == (150, 100, 50, 2, 3)
    assert s["loss_pct"] == pytest.approx(100 / 3)
    assert s["delay_mean"] == pytest.approx(20e6)
    assert s["worst"].port == 1
    v = {x.key: x for x in analysis.verdicts(s, max_loss_pct=1.0, max_delay_p99=0.025, blackhole_pct=90,
                                             port_names={0: 5000, 1: 5001, 2: 5002})}
    assert v[("loss",)].bad and v[("delay_p99",)].bad
    assert v[("path_blackhole", 1)].bad and v[("path_blackhole", 1)].extra == {"port": 5001}
    assert not v[("path_blackhole", 0)].bad and not v[("path_blackhole", 2)].bad
    with pytest.raises(ValueError):
        analysis.summarize(interval, [50, 50])


def test_port_delay_summary():
    vals = [1000, 2000, 3000, 4000]
    d = analysis.port_delay(rec(received=4, n=4, sum=float(sum(vals)), sumsq=float(sum(v * v for v in vals)),
                                min=1000, max=4000, hist=histogram(vals, analysis.PORT_SUB_BITS)))
    assert d["mean"] == 2500 and d["sd"] == pytest.approx(np.std(vals))
    assert analysis.port_delay(rec()) is None
