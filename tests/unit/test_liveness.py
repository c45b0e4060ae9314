"""supervisor/liveness.py with explicit time: when a probe is stale, frozen, and what its gaps span.

Expected values are worked out by hand from the rule the README states: an interval is
missing when none arrived within `interval + max(interval, stale_grace)` of the previous
one (of the start plus `stale_grace` for the first); a worker is frozen after that long
(at least 3 heartbeats) without a line.
"""
from hypothesis import given
from hypothesis import strategies as st

from netprobe.supervisor.liveness import Liveness

WALL0 = 1_700_000_000.0          # wall time at monotonic 0 in these scenarios


def started(interval=1.0, grace=1.0, periodic=True, at=0.0):
    lv = Liveness(interval, grace, periodic)
    lv.started(at, WALL0 + at)
    return lv


def test_first_interval_gets_the_start_allowance():
    lv = started(interval=1.0, grace=5.0)          # allowed = 1 + 5 = 6 s after start + 5 s
    assert not lv.check(10.9, WALL0 + 10.9, True).stale
    v = lv.check(11.1, WALL0 + 11.1, True)
    assert v.stale and abs(v.age - 6.1) < 1e-9


def test_stale_is_reported_once_and_cleared_by_the_next_result():
    lv = started(interval=2.0, grace=1.0)           # allowed = 2 + 2 = 4
    lv.result(3.0, WALL0 + 3.0)
    for t in (3.5, 5.0, 6.9):
        lv.beat(t)
        assert not lv.check(t, WALL0 + t, True).stale
    lv.beat(7.1)
    assert lv.check(7.1, WALL0 + 7.1, True).stale
    assert not lv.check(8.0, WALL0 + 8.0, True).stale          # already reported
    assert abs(lv.stale_for(8.0) - 0.9) < 1e-9
    cleared, gap = lv.result(9.0, WALL0 + 9.0)
    assert abs(cleared - 6.0) < 1e-9                             # 9 - 3
    # the record at 9 covers [7, 9]; measured up to 3: the gap is [3, 7]
    assert gap == (WALL0 + 3.0, WALL0 + 7.0, ["stale: no interval for 4.1s"])
    assert lv.stale_for(9.0) == 0.0


def test_a_late_interval_that_covers_its_time_is_not_a_gap():
    lv = started(interval=2.0, grace=1.0)
    lv.result(3.0, WALL0 + 3.0)
    lv.beat(7.2)
    assert lv.check(7.2, WALL0 + 7.2, True).stale
    # the probe was late, not absent: its record at 5.1 (wall) covers [3.1, 5.1]
    cleared, gap = lv.result(7.3, WALL0 + 5.1)
    assert cleared is not None and gap is None


def test_frozen_needs_silence_not_just_a_missing_interval():
    lv = started(interval=1.0, grace=1.0)           # allowed 2, hang max(2, 3) = 3
    lv.beat(0.5)
    lv.result(1.5, WALL0 + 1.5)
    lv.beat(3.0)
    v = lv.check(3.6, WALL0 + 3.6, True)
    assert v.stale and not v.frozen                 # heartbeats came: alive, only stale
    v = lv.check(6.1, WALL0 + 6.1, True)
    assert v.frozen                                  # 3.1 s without a line


def test_a_restart_is_a_gap_even_when_short():
    lv = started(interval=1.0, grace=5.0)
    lv.result(2.0, WALL0 + 2.0)
    lv.lost(WALL0 + 2.3, "worker killed by SIGKILL")
    lv.started(2.5, WALL0 + 2.5)
    _, gap = lv.result(3.6, WALL0 + 3.6)
    # the new worker's first interval began at 2.6 (its record at 3.6 minus 1 s)
    assert gap == (WALL0 + 2.0, WALL0 + 2.6, ["worker killed by SIGKILL"])


def test_gap_end_is_never_before_the_new_worker_started():
    lv = started(interval=10.0, grace=5.0)
    lv.result(11.0, WALL0 + 11.0)
    lv.lost(WALL0 + 12.0, "reload: settings changed")
    lv.started(12.0, WALL0 + 12.0)
    _, gap = lv.result(14.0, WALL0 + 14.0)      # a short first interval (partial)
    assert gap == (WALL0 + 11.0, WALL0 + 12.0, ["reload: settings changed"])


def test_non_periodic_kinds_are_never_stale_but_can_be_frozen():
    lv = started(interval=1.0, grace=1.0, periodic=False)
    v = lv.check(100.0, WALL0 + 100.0, True)
    assert not v.stale and v.frozen


def test_a_slow_start_is_not_frozen_until_the_start_allowance():
    """Before its first line a worker gets START_ALLOWANCE (30 s): interpreter start-up and
    imports on a loaded host; after it, the usual 3 s here."""
    lv = started(interval=1.0, grace=1.0)
    assert not lv.check(29.9, WALL0 + 29.9, True).frozen
    assert lv.check(30.1, WALL0 + 30.1, True).frozen
    lv = started(interval=1.0, grace=1.0)
    lv.beat(0.1)
    assert lv.check(3.2, WALL0 + 3.2, True).frozen


def test_a_stopped_worker_is_not_judged():
    lv = started()
    assert lv.check(100.0, WALL0 + 100.0, False) == lv.check(0.0, WALL0, False)
    assert not lv.check(100.0, WALL0 + 100.0, False).stale


def test_open_gap_at_shutdown_ends_then():
    lv = started(interval=1.0, grace=1.0)
    lv.result(1.0, WALL0 + 1.0)
    lv.lost(WALL0 + 1.5, "did not stop within 1s; killed")
    assert lv.pending(WALL0 + 2.0) == (WALL0 + 1.0, WALL0 + 2.0, ["did not stop within 1s; killed", "daemon stopped"])
    assert lv.pending(WALL0 + 3.0) is None


@given(interval=st.floats(0.1, 100), grace=st.floats(0.1, 100),
       gaps=st.lists(st.floats(0.0, 300.0), min_size=1, max_size=30))
def test_stale_exactly_when_the_rule_says(interval, grace, gaps):
    """Results arrive with the given spacing (heartbeats all along): a check just before
    each arrival is stale exactly when the spacing exceeded interval + max(interval, grace)."""
    allowed = interval + max(interval, grace)
    lv = started(interval, grace)
    t = grace                      # the first interval is counted from start + grace
    for gap in gaps:
        t_arrive = t + gap
        lv.beat(t_arrive)
        v = lv.check(t_arrive, WALL0 + t_arrive, True)
        assert v.stale == (gap > allowed)
        assert not v.frozen
        lv.result(t_arrive, WALL0 + t_arrive)
        t = t_arrive
