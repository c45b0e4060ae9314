"""Histogram bucket bounds and counts (netprobe.stats.buckets, oneway counts_le), against numpy on raw samples."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.probes.oneway.analysis import SESSION_SUB_BITS, counts_le
from netprobe.stats.buckets import cumulative, parse_bounds
from tests.reference.oneway import histogram


def test_parse_bounds():
    assert parse_bounds(["100us", "1ms", "2.5ms", "1s"]) == (0.0001, 0.001, 0.0025, 1.0)
    assert parse_bounds([]) == ()
    for texts, message in ((["1ms", "1ms"], "is not above the bound before it"),
                           (["0s"], "is not above 0"), (["fast"], "is not a duration"),
                           (["1ms"] * 33, "at most 32")):
        with pytest.raises(ValueError, match=message):
            parse_bounds(texts)


@given(st.lists(st.floats(0, 1, allow_nan=False), max_size=200), st.lists(st.floats(1e-6, 1), min_size=1,
                                                                            max_size=8, unique=True))
def test_cumulative_counts_values_at_or_below_each_bound(values, bounds):
    bounds = sorted(bounds)
    assert cumulative(values, bounds) == [sum(1 for v in values if v <= b) for b in bounds]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-10**6, 10**10), min_size=1, max_size=300),
       st.lists(st.integers(1, 10**10), min_size=1, max_size=6, unique=True))
def test_counts_le_of_the_receivers_histogram(delays_ns, bounds_ns):
    """A sample is counted under a bound when its whole bin is: never more than the raw count,
    and never fewer than the samples below the bound's own bin (bins are < 1/128 of their value)."""
    bounds_ns = sorted(bounds_ns)
    got = counts_le(histogram(delays_ns, SESSION_SUB_BITS), SESSION_SUB_BITS, bounds_ns)
    raw = np.asarray(delays_ns)
    for b, n in zip(bounds_ns, got, strict=True):
        assert (raw < b - b / 128 - 1).sum() <= n <= (raw <= b).sum()
    assert got == sorted(got)
