"""A worker in a crash loop must not grow the supervisor: its open gap counts repeated reasons.

Each exit of a worker that never gets to a RESULT adds its reason to the gap still open; a
probe that cannot start (a peer that refuses it, a missing capability) restarts every
restart_backoff_max for as long as the daemon runs. The gap keeps one entry per distinct
reason with its count, so the GAP record finally written says how often, in one short line.
"""
import tracemalloc

from netprobe.supervisor.liveness import MAX_REASONS, Liveness

WALL0 = 1_700_000_000.0
CRASHES = 20_000                   # about 28 h of restarts at the default 5 s backoff cap


def test_a_crash_loop_keeps_one_counted_reason():
    lv = Liveness(2.0, 2.0)
    lv.started(0.0, WALL0)
    lv.result(2.0, WALL0 + 2.0)
    tracemalloc.start()
    try:
        for i in range(CRASHES):
            t = 3.0 + 5 * i
            lv.lost(WALL0 + t, "worker exited with code 2")
            lv.started(t + 0.1, WALL0 + t + 0.1)
            if i == 100:
                base = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 10_000, f"{grown} bytes held for {CRASHES - 100} more crashes"
    t = 3.0 + 5 * CRASHES
    _, gap = lv.result(t + 2.0, WALL0 + t + 2.0)
    assert gap[2] == [f"worker exited with code 2 ({CRASHES} times)"]


def test_distinct_reasons_are_capped_and_the_rest_counted():
    lv = Liveness(2.0, 2.0)
    lv.started(0.0, WALL0)
    for i in range(MAX_REASONS + 50):
        lv.lost(WALL0 + i, f"frozen (no output for {6 + i / 10:.1f}s); killed")
    reasons = lv.pending(WALL0 + 1000)[2]
    assert len(reasons) == MAX_REASONS + 2                 # the kept ones, the others' count, the stop
    assert reasons[-2:] == ["50 more of other kinds", "daemon stopped"]
