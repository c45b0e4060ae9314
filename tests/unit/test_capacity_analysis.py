"""Capacity analysis (sans-IO) on synthetic dispersions: the formulas, loco's bugs as regression
cases, and whole estimates over a packet-level model of a path (tests/reference/capacity_sim.py)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from netprobe.probes.capacity import analysis as A
from netprobe.probes.capacity.runner import next_wait, phase1_sizes, stable
from tests.reference import capacity_sim as sim

MAX = 1472


def spec(p1=400, p2=60, length=32, prelim=5):
    sizes = phase1_sizes(572, MAX)
    s = [(A.PRELIM, n, MAX) for _ in range(prelim) for n in range(2, 11)]
    s += [(A.PHASE1, 2, sizes[i % len(sizes)]) for i in range(p1)]
    return s + [(A.PHASE2, length, MAX) for _ in range(p2)]


def run(capacity, **kw):
    plan = sim.plan_rows(spec())
    return A.estimate(A.measure(sim.simulate(plan, capacity, **kw), plan), MAX)


# -- formulas and loco's bugs ----------------------------------------------------------------

def loco_rate(n, max_size, disp_ns):
    """loco 0.4's per-train bandwidth: 8 * packet_length_max * L / dispersion (bits/us = Mbit/s)."""
    return 8 * max_size * n / (disp_ns / 1000) * 1e6


def test_a_pair_gives_the_capacity_not_twice_it():
    c = 100e6
    wire = A.wire_bytes(MAX)                      # 1472 + 28 + 14 = 1514: what tbf counts
    assert wire == 1514
    disp = wire * 8e9 / c                         # the second packet arrives one packet-time later
    assert A.train_rate(2, MAX, disp) == pytest.approx(c)
    assert loco_rate(2, MAX, disp) == pytest.approx(2 * c * MAX / wire)     # loco: L, not L - 1
    # a long train: L - 1 packet-times
    assert A.train_rate(32, MAX, 31 * disp) == pytest.approx(c)
    # each pair's own size counts (loco used the largest), with IPv6 headers where used
    assert A.train_rate(2, 600, (600 + 48 + 14) * 8e9 / c, ip_udp=A.IP6_UDP) == pytest.approx(c)


def test_median_sorts_first():
    x = [5.0, 1.0, 9.0, 3.0, 7.0]
    assert x[len(x) // 2] == 9.0                  # loco: the middle of the unsorted array
    assert A.median(x) == 5.0 == np.median(x)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=60))
def test_iqm_is_the_fractional_interquartile_mean(values):
    # four copies of each value put the quartiles on whole positions: scipy's trim_mean is then exact
    want = stats.trim_mean(np.repeat(values, 4), 0.25)
    assert A.iqm(values) == pytest.approx(want, rel=1e-9, abs=1e-3)


def test_iqm_regressions_of_loco():
    x = [10.0, 1.0, 2.0, 100.0, 3.0, 4.0, 5.0, 6.0]
    assert A.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25)) == 4.5
    # loco summed the middle positions of the *unsorted* input: (2 + 100 + 3 + 4) / 4
    assert sum(x[2:6]) / 4 != A.iqm(x)
    assert A.iqm([3.0, 1.0, 2.0]) == pytest.approx(2.0)        # n < 4: loco read past the end


@pytest.mark.parametrize("n", [1, 2, 5, 17, 40, 41, 200, 1001, 3000])
def test_binomial_quantile_matches_scipy(n):
    for q in (0.005, 0.025, 0.05):
        assert A._binom_half_ppf(q, n) == int(stats.binom.ppf(q, n, 0.5))


def scipy_median_ci(x):
    """scipy's quantile_test interval (scipy >= 1.11); on Debian 12's scipy 1.10, where the
    .deb's tests run, the same order statistics from scipy's binomial distribution."""
    if hasattr(stats, "quantile_test"):
        ci = stats.quantile_test(x, q=np.median(x), p=0.5).confidence_interval(0.95)
        return ci.low, ci.high
    xs, n = np.sort(x), len(x)
    k = int(stats.binom.ppf(0.025, n, 0.5))
    return (xs[k - 1], xs[n - k]) if k > 0 else (math.nan, math.nan)


def test_median_ci_matches_scipy_quantile_test():
    x = np.random.default_rng(1).normal(size=41)
    assert A.median_ci(x) == pytest.approx(scipy_median_ci(x))


def test_pathrate_print_bw():
    assert A.mbps(0.5e6) == "500 kbps" and A.mbps(9.87e6) == "9.9" and A.mbps(94.6e6) == "95"


# -- measure(): which trains count ------------------------------------------------------------

def test_measure_drops_broken_trains_and_keeps_phases_apart():
    plan = sim.plan_rows([(A.PRELIM, 4, MAX), (A.PHASE1, 2, 800), (A.PHASE2, 6, MAX), (A.PHASE1, 2, 900),
                          (A.PHASE1, 2, 1000)])
    rows = sim.simulate(plan, 50e6, jitter_ns=0)
    lost = rows[~((rows[:, 0] == 2) & (rows[:, 1] == 2))]            # train 2 lost its last packet
    t4 = np.flatnonzero(lost[:, 0] == 4)
    lost[t4[[1, 2]]] = lost[t4[[2, 1]]]                               # train 4 arrived reordered
    lost[lost[:, 0] == 5, 5] |= A.RX_FLAG_USER_TS                    # train 5 had no kernel timestamps
    m = A.measure(lost, plan)
    assert m.train.tolist() == [1, 3] and m.phase.tolist() == [A.PRELIM, A.PHASE2]
    assert (m.incomplete, m.user_ts) == (2, 1)
    assert m.rate == pytest.approx([50e6, 50e6], rel=1e-6)
    assert list(m.gaps) == [3] and len(m.gaps[3]) == 5
    assert m.of(A.PHASE1).size == 0                 # loco mixed every phase into one array


def test_unresolved_dispersions_are_not_values():
    plan = sim.plan_rows([(A.PHASE1, 2, MAX)])
    rows = sim.simulate(plan, 1e13, access_bps=1e13, jitter_ns=0)    # 1.2 ns apart: below 1 us
    m = A.measure(rows, plan)
    assert m.unresolved == 1 and math.isnan(m.rate[0]) and m.of(A.PHASE1).size == 0


# -- whole estimates --------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [10e6, 97.3e6, 200e6])
def test_clean_path(capacity):
    e = run(capacity)
    assert e.capacity == pytest.approx(capacity, rel=0.01)
    assert e.ci_lo <= e.capacity <= e.ci_hi and (e.ci_hi - e.ci_lo) < 0.02 * capacity
    assert e.confidence == "high" and e.method == "mode" and not e.reasons
    assert e.capprobe == pytest.approx(capacity, rel=0.02)
    assert e.range_lo < e.range_hi and abs((e.range_lo + e.range_hi) / 2 / capacity - 1) < 0.02


def test_cross_traffic_lowers_the_adr_not_the_capacity():
    e = run(100e6, cross_bps=30e6, access_bps=150e6)
    assert e.capacity == pytest.approx(100e6, rel=0.03)
    assert e.adr < 0.95 * e.capacity
    assert e.confidence in ("high", "medium")


def test_token_bucket_is_low_confidence():
    e = run(100e6, bucket=15_000)
    assert e.confidence == "low"
    assert e.burst_ratio < 0.1 and any("token bucket" in r for r in e.reasons)


def test_a_slow_sender_is_low_confidence():
    plan = sim.plan_rows(spec(), send_bps=105e6)                 # the peer barely outpaces the path
    e = A.estimate(A.measure(sim.simulate(plan, 100e6), plan), MAX)
    assert e.confidence == "low" and any("peer handed" in r for r in e.reasons)
    assert "peer handed" not in " ".join(run(100e6).reasons)


def test_interrupt_coalescing_is_refused():
    e = run(100e6, coalesce_ns=500_000)
    assert math.isnan(e.capacity) and e.method == "refused" and e.confidence == "none"
    assert e.coalescing > A.IC_REFUSE and "coalescing" in e.reasons[0]


@pytest.mark.parametrize("late_ns, method", [(30_000, "adr"), (60_000, "max-size")])
def test_a_late_shaper_timer_is_what_full_size_packets_get_and_not_high_confidence(late_ns, method):
    """tbf with a one-frame bucket on a busy host: each packet that waits for tokens leaves late,
    and the bucket cannot bank the time. Small pairs lose relatively more, so sizes disagree."""
    wire = MAX + 28 + 14
    full_size_rate = wire * 8e9 / (wire * 8e9 / 40e6 + late_ns)
    e = run(40e6, bucket=wire, timer_late_ns=late_ns)
    assert e.capacity == pytest.approx(full_size_rate, rel=0.015) and e.method == method, e
    assert e.confidence != "high"


def test_too_few_trains_is_refused():
    plan = sim.plan_rows(spec(p1=10, p2=2))
    e = A.estimate(A.measure(sim.simulate(plan, 100e6), plan), MAX)
    assert e.method == "refused" and math.isnan(e.capacity)


def test_estimate_is_deterministic():
    plan = sim.plan_rows(spec())
    rows = sim.simulate(plan, 50e6, cross_bps=10e6, access_bps=200e6)
    assert A.estimate(A.measure(rows, plan), MAX) == A.estimate(A.measure(rows.copy(), plan.copy()), MAX)


# -- runner's pure helpers ---------------------------------------------------------------------

def test_phase1_sizes_span_pathrates_range():
    sizes = phase1_sizes(572, 1472)
    assert len(sizes) == 40 and sizes[0] == 572 and sizes[-1] == 1472
    assert phase1_sizes(572, 300) == [300]


def test_load_limit_stretches_the_period():
    # 8 MB per estimate of a 100 Mbit/s path at <= 1 %: one estimate per 64 s at least
    assert next_wait(10.0, 4.0, 8_000_000, 100e6, 1.0) == pytest.approx(60.0)
    assert next_wait(600.0, 4.0, 8_000_000, 100e6, 1.0) == pytest.approx(596.0)
    assert next_wait(600.0, 4.0, 8_000_000, math.nan, 1.0) == pytest.approx(596.0)


def test_stable_rule():
    e = run(50e6)
    assert stable(e, e) and not stable(e, None)
    moved = A.Estimate(**{**e.__dict__, "capacity": e.capacity * 1.02})
    assert not stable(moved, e)
