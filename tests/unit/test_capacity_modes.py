"""netprobe.stats.modes (pathrate's mode detection) against a loop-by-loop reference and scipy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from netprobe.stats.modes import bin_width, find_modes, kurtosis
from tests.reference.capacity_modes import find_modes as ref_find_modes


def as_tuples(modes):
    return [(m.lo, m.hi, m.count, m.bell_lo, m.bell_hi, m.bell_count, m.kurtosis) for m in modes]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 40).map(float), st.floats(0, 100, allow_nan=False)), max_size=160),
       st.sampled_from([0.5, 1.0, 3.0, 10.0]))
def test_matches_the_reference(values, w):
    got, want = as_tuples(find_modes(values, w)), ref_find_modes(values, w)
    assert len(got) == len(want)
    for g, r in zip(got, want, strict=True):
        assert g[:6] == r[:6]
        assert g[6] == pytest.approx(r[6], rel=1e-9)


def test_two_bells_are_found_strongest_first_with_scipy_kurtosis():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(100, 1.5, 600), rng.normal(70, 2, 300), rng.uniform(20, 150, 100)])
    modes = find_modes(x, 2.0)
    assert len(modes) == 2
    assert modes[0].lo < 100 < modes[0].hi and modes[1].lo < 70 < modes[1].hi
    assert modes[0].count > modes[1].count > 15
    for m in modes:
        bell = np.sort(x)[(np.sort(x) >= m.bell_lo) & (np.sort(x) <= m.bell_hi)]
        assert m.kurtosis == pytest.approx(stats.kurtosis(bell, fisher=False), rel=1e-9)
        assert len(bell) == m.bell_count
    # every value sits in some bell: bells of reported modes do not overlap
    assert modes[0].bell_lo > modes[1].bell_hi


def test_small_bins_are_noise():
    x = np.concatenate([np.full(15, 50.0) + np.arange(15) * 1e-3, np.linspace(0, 200, 30)])
    assert find_modes(x, 1.0) == []               # 15 values in the densest bin: not > BIN_NOISE
    assert len(find_modes(np.append(x, 50.0), 1.0)) == 1


def test_kurtosis_matches_scipy_and_is_undefined_for_constants():
    rng = np.random.default_rng(3)
    x = rng.exponential(size=500)
    assert kurtosis(x) == pytest.approx(stats.kurtosis(x, fisher=False))
    assert kurtosis([5.0, 5.0, 5.0]) is None and kurtosis([1.0, 2.0]) is None


def test_bin_width_is_pathrates_rule_not_locos():
    rng = np.random.default_rng(5)
    x = rng.normal(100e6, 3e6, 63)
    s = np.sort(x)
    spread = s[63 - 6 - 1] - s[6]                 # interdecile range: lim = n // 10
    assert bin_width(x) == pytest.approx(0.125 * spread)
    assert bin_width(x) != pytest.approx(0.125 * x.mean())          # loco's rule (the mean)
    assert bin_width([10e6, 10.2e6, 10.5e6]) == pytest.approx(0.25 * 0.5e6)   # range < 1 Mbit/s
    assert bin_width([7e6] * 4) == 20e6
    with pytest.raises(ValueError):
        find_modes([1.0], 0)
