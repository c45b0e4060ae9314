"""Token bucket (pyx/includes/bucket.pxd via netprobe._pacer.TokenBucket) with fake time.

The bound under test: bytes released in any window of W ns are at most
depth + rate * W / 8e9, exactly (take() hands out part of a request, so no
allowance for request rounding is needed). Checking every pair of take
events (i <= j) covers every window: the takes inside any window are the
takes between its first and last take, whose span is no longer.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from tests.reference.bucket import ReferenceBucket

TokenBucket = load_extension("_pacer").TokenBucket

NBIT = 8 * 10**9                      # nanobits per byte: the bucket's exact credit unit
HOUR_NS = 3600 * 10**9
MAX_DEPTH = 2**30

rates = st.integers(1_000, 100 * 10**9)                  # 1 kbit/s .. 100 Gbit/s
depths = st.one_of(st.integers(1, 10_000), st.integers(1, MAX_DEPTH))
starts = st.integers(0, 2**52)
# gaps between events: back to back, packet-scale, second-scale, stalls up to 4 h
gaps = st.one_of(st.just(0), st.integers(1, 100_000), st.integers(1, 2 * 10**9),
                 st.integers(1, 4 * HOUR_NS))
settings_ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def demand(draw):
    rate, depth, t0 = draw(rates), draw(depths), draw(starts)
    sizes = st.one_of(st.integers(0, 2000), st.integers(0, 2 * depth), st.just(depth),
                      st.integers(0, 2**40))
    ops = draw(st.lists(st.tuples(gaps, sizes), min_size=1, max_size=80))
    return rate, depth, t0, ops


@settings_
@given(demand())
def test_every_window_releases_at_most_rate_times_window_plus_depth(case):
    rate, depth, t0, ops = case
    b = TokenBucket(rate, depth, t0)
    t, times, taken = t0, [], []
    for gap, n in ops:
        t += gap
        got = b.take(n, t)
        assert 0 <= got <= n
        assert 0 <= b.credit_nbit <= depth * NBIT          # never above the depth
        times.append(t)
        taken.append(got)
    for i in range(len(times)):
        released = 0
        for j in range(i, len(times)):
            released += taken[j]
            assert released * NBIT <= depth * NBIT + rate * (times[j] - times[i]), (i, j)


@settings_
@given(rates, st.data())
def test_saturating_demand_gets_exactly_rate_times_time(rate, data):
    """Asking for more than is ever there, the bucket releases depth + rate*T (within 1 byte).

    Steps are short enough that credit never reaches the cap between takes,
    so none is lost and the identity is exact.
    """
    max_gap = min(10**9, (MAX_DEPTH - 1) * NBIT // rate)
    depth = data.draw(st.integers(-(-rate * max_gap // NBIT) + 1, MAX_DEPTH))
    gaps_ = data.draw(st.lists(st.integers(1, max_gap), min_size=1, max_size=200))
    b = TokenBucket(rate, depth, 0)
    t, released = 0, b.take(2**62, 0)            # starts full: drain it before time runs
    for gap in gaps_:
        t += gap
        released += b.take(2**62, t)
    assert released * NBIT + b.credit_nbit == depth * NBIT + rate * t
    earned = depth * NBIT + rate * t                # exact, in nanobits
    assert earned - NBIT < released * NBIT <= earned


@settings_
@given(rates, depths, st.integers(0, 1000 * HOUR_NS))
def test_stall_of_any_length_refills_to_depth_not_beyond(rate, depth, stall):
    b = TokenBucket(rate, depth, 0)
    assert b.take(depth, 0) == depth
    got = b.take(2**62, stall)
    assert got == min(depth, rate * stall // NBIT)
    assert b.take(2**62, stall) == 0


@settings_
@given(rates, depths, starts, st.integers(1, HOUR_NS))
def test_time_going_backwards_earns_nothing(rate, depth, t0, back):
    b = TokenBucket(rate, depth, t0 + back)
    b.take(depth, t0 + back)
    credit = b.credit_nbit
    assert b.take(depth, t0) == 0
    assert b.credit_nbit == credit and b.last_ns == t0 + back
    b.refill(t0 + back + 1)                       # earns from the latest time seen, not from t0
    assert b.credit_nbit == min(depth * NBIT, credit + rate)


@settings_
@given(rates, depths, starts, st.integers(0, 2**40), st.integers(0, 10**12))
def test_wait_ns_is_exact_and_sufficient(rate, depth, t0, n, spent):
    b = TokenBucket(rate, depth, t0)
    b.take(spent, t0)
    w = b.wait_ns(n, t0)
    if n > depth:
        assert w == -1
        return
    assert w >= 0
    if w > 0:
        assert b.available(t0 + w - 1) < n       # one ns earlier is not enough
    assert b.available(t0 + w) >= n
    assert b.try_take(n, t0 + w)


ops_ = st.lists(st.tuples(st.sampled_from(["take", "try_take", "available", "wait_ns", "refill"]),
                          st.integers(-HOUR_NS, 4 * HOUR_NS), st.integers(-5, 2**31)),
                max_size=60)


@settings_
@given(rates, depths, starts, ops_)
def test_matches_reference_bucket(rate, depth, t0, ops):
    """Same answers and the same exact state as the Fraction-based oracle, op by op."""
    b, ref = TokenBucket(rate, depth, t0), ReferenceBucket(rate, depth, t0)
    t = t0
    for op, dt, n in ops:
        t = max(0, t + dt)                         # steps back in time too
        if op == "refill":
            assert b.refill(t) is ref.refill(t) is None
        elif op in ("take", "try_take", "wait_ns"):
            assert getattr(b, op)(n, t) == getattr(ref, op)(n, t), (op, n, t)
        else:
            assert b.available(t) == ref.available(t)
        assert b.credit_nbit == ref.tokens * NBIT
        assert b.last_ns == ref.last_ns


@pytest.mark.parametrize("rate,depth", [(0, 1), (-8, 1), (8, 0), (8, MAX_DEPTH + 1), (2**50 + 1, 1)])
def test_out_of_range_settings_are_refused(rate, depth):
    with pytest.raises(ValueError, match="token bucket needs"):
        TokenBucket(rate, depth, 0)
