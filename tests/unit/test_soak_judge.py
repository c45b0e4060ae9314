"""The soak's interval accounting (tests/soak/soak.py `account`) on hand-made record streams:
it must pass lateness the daemon allows and catch every interval that is missing."""
from tests.soak.soak import INTERVAL, account

T0 = 1000.0


def stream(n, phase=0.7, late=None, drop=()):
    """RESULT times of intervals k = -1 .. n-1 at T0 + phase + (k+1)*INTERVAL; `late` {k: seconds};
    `drop` the ks that never came."""
    late = late or {}
    return [T0 + phase + (k + 1) * INTERVAL + late.get(k, 0.0) for k in range(-1, n) if k not in drop]


def judge(stamps, gaps=(), n=50):
    return account(sorted(stamps), list(gaps), T0, T0 + n * INTERVAL, T0)


def test_on_time_intervals_are_all_received_at_any_phase():
    for phase in (0.0, 0.3, 1.0, 1.7, 1.99):
        v = judge(stream(51, phase))
        assert (v["received"], v["unexplained"]) == (v["expected"], 0), (phase, v)


def test_a_late_interval_within_the_stale_allowance_is_received():
    # the soak's case: intervals 22, 23 arrive 1.4 s and 0.3 s late (3.4 s then 0.7 s apart)
    v = judge(stream(51, late={22: 1.4, 23: 0.3}))
    assert v["unexplained"] == 0, v
    v = judge(stream(51, late={10: 1.9}))
    assert v["unexplained"] == 0, v
    for phase in (0.0, 1.0, 1.9):
        v = judge(stream(51, phase, late={k: 1.6 for k in range(5, 45, 6)}))
        assert v["unexplained"] == 0, (phase, v)


def test_a_missing_interval_is_unexplained_even_when_the_next_is_on_time():
    # the next RESULT comes 4 s after the one before: within the stale allowance, but one is missing
    for k in (0, 7, 30, 49):
        v = judge(stream(51, drop={k}))
        assert v["unexplained"] == 1, (k, v)
    v = judge(stream(51, drop={12, 13}))
    assert v["unexplained"] == 2, v


def test_a_late_interval_does_not_hide_a_missing_one_beside_it():
    v = judge(stream(51, late={21: 1.5}, drop={22}))
    assert v["unexplained"] == 1, v


def test_a_gap_record_explains_its_span_and_only_that():
    gap = (T0 + 20.7, T0 + 30.7)                 # the worker down from interval 9's end to 14's start
    stamps = stream(51, drop=set(range(10, 15)))
    v = judge(stamps, [gap])
    assert (v["explained_by_gap"], v["unexplained"]) == (5, 0), v
    v = judge(stream(51, drop=set(range(10, 16))), [gap])     # one more missing after the gap
    assert v["unexplained"] == 1, v
