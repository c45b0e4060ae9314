"""netprobe.stats weighted quantiles, seven-number summary, weighted Pearson and Spearman against
numpy/scipy and a transcription of gonum's loops (tests/reference/flows_stats.py), including the
degenerate inputs that cgmon encoded as -2 / -3."""
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.stats import correlation
from netprobe.stats.summary import SEVEN_NUMBER_PS, seven_number, weighted_quantiles
from tests.reference.flows_stats import gonum_quantile

values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60)
probs = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=7)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_empirical_weighted_equals_numpy_inverted_cdf(data):
    x = data.draw(values)
    w = data.draw(st.lists(st.integers(1, 20), min_size=len(x), max_size=len(x)))
    ps = data.draw(probs)
    got = weighted_quantiles(x, w, ps, "empirical")
    # integer weights: the same as repeating each value (numpy's unweighted inverted CDF, any version)
    want = np.quantile(np.repeat(np.asarray(x), w), ps, method="inverted_cdf")
    np.testing.assert_array_equal(got, want)


@settings(max_examples=120, deadline=None)
@given(values, probs)
def test_lininterp_unit_weights_equals_numpy_interpolated_inverted_cdf(x, ps):
    got = weighted_quantiles(x, None, ps, "lininterp")
    want = np.quantile(np.asarray(x), ps, method="interpolated_inverted_cdf")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-6)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_weighted_quantiles_equal_gonum_loops(data):
    x = data.draw(values)
    w = data.draw(st.lists(st.floats(0.01, 100.0), min_size=len(x), max_size=len(x)))
    ps = data.draw(probs)
    order = sorted(range(len(x)), key=lambda i: x[i])
    xs, ws = [x[i] for i in order], [w[i] for i in order]
    for kind in ("empirical", "lininterp"):
        got = weighted_quantiles(x, w, ps, kind)
        want = [gonum_quantile(p, kind, xs, ws) for p in ps]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)


def test_seven_number_summary():
    x = np.arange(1, 101, dtype=float)
    assert seven_number(x, kind="empirical") == [2.0, 9.0, 25.0, 50.0, 75.0, 91.0, 98.0]
    np.testing.assert_allclose(seven_number(x), np.quantile(x, SEVEN_NUMBER_PS, method="interpolated_inverted_cdf"))
    # weights move the summary: all the weight on the top half
    w = np.where(x > 50, 1.0, 0.0)
    assert seven_number(x, w, kind="empirical") == [51.0, 55.0, 63.0, 75.0, 88.0, 96.0, 99.0]
    assert all(math.isnan(v) for v in seven_number([]))
    assert seven_number([7.0]) == [7.0] * 7
    assert seven_number([3.0, 5.0], [0.0, 0.0]) == [3.0] * 7          # cgmon's w0 = 0 for a single sample
    with pytest.raises(ValueError):
        weighted_quantiles([1.0, 2.0], [1.0], [0.5])
    with pytest.raises(ValueError):
        weighted_quantiles([1.0], [1.0], [0.5], kind="median")


pairs = st.integers(2, 50).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.integers(1, 9), min_size=n, max_size=n)))


def _defined(x, y):
    return np.ptp(x) > 1e-6 and np.ptp(y) > 1e-6


@settings(max_examples=150, deadline=None)
@given(pairs)
def test_weighted_pearson_against_numpy(xyw):
    x, y, w = (np.asarray(v, float) for v in xyw)
    r, why = correlation.weighted_pearson(x, y, w)
    if not _defined(x, y):
        return
    cov = np.cov(x, y, aweights=w)
    want = cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])
    assert why is None and r == pytest.approx(want, abs=1e-9)
    rep = np.corrcoef(np.repeat(x, w.astype(int)), np.repeat(y, w.astype(int)))[0, 1]
    assert r == pytest.approx(rep, abs=1e-9)                # integer weights = repeated points
    r1, _ = correlation.weighted_pearson(x, y)
    assert r1 == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-9)


@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_weighted_pearson_is_scale_free_where_the_product_of_the_variances_is_not_representable(scale):
    """Pearson's r does not change with the units; sxx * syy would underflow to 0 (or overflow
    to inf) at these scales, though each of them is an ordinary double."""
    x, y, w = np.array([1.0, 2.0, 4.0, 3.0]), np.array([2.0, 1.0, 5.0, 4.0]), np.array([1.0, 3.0, 2.0, 1.0])
    want = np.corrcoef(np.repeat(x, w.astype(int)), np.repeat(y, w.astype(int)))[0, 1]
    r, why = correlation.weighted_pearson(x * scale, y * scale, w)
    assert why is None and r == pytest.approx(want, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(pairs)
def test_spearman_against_scipy(xyw):
    x, y, w = (np.asarray(v, float) for v in xyw)
    np.testing.assert_allclose(correlation.weighted_ranks(x), scipy.stats.rankdata(x))
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert correlation.spearman(x, y)[1] == correlation.CONSTANT
        return
    r, why = correlation.spearman(x, y)
    assert why is None and r == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-9)
    rw, _ = correlation.spearman(x, y, w)
    wi = w.astype(int)
    assert rw == pytest.approx(scipy.stats.spearmanr(np.repeat(x, wi), np.repeat(y, wi)).statistic, abs=1e-9)


def test_degenerate_correlations_say_why():
    assert correlation.weighted_pearson([], []) == (None, correlation.TOO_FEW)
    assert correlation.weighted_pearson([1.0], [2.0]) == (None, correlation.TOO_FEW)
    assert correlation.weighted_pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == (None, correlation.CONSTANT)
    assert correlation.weighted_pearson([1.0, 2.0], [1.0, 3.0], [1.0, 0.0]) == (None, correlation.TOO_FEW)
    assert correlation.spearman([4.0, 4.0], [1.0, 2.0]) == (None, correlation.CONSTANT)
    with pytest.warns(scipy.stats.ConstantInputWarning):      # scipy agrees these are undefined
        assert math.isnan(scipy.stats.pearsonr([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]).statistic)
    # a large offset does not cancel (bytes counters, ns timestamps)
    t = 1.7e18 + np.arange(100) * 1e6
    r, _ = correlation.weighted_pearson(t, 2 * np.arange(100.0) + 3)
    assert r == pytest.approx(1.0, abs=1e-9)          # t itself is rounded to 256 ns steps
    r, _ = correlation.weighted_pearson([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])
    assert r == -1.0
