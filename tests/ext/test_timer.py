"""TimerfdPacer against an independent oracle on the same machine.

The oracle is a plain Python select() loop with absolute deadlines, run just
before and just after the timerfd selftest; lateness in both is measured
against the latest slot due, the pacer's own definition. Tolerances are wide
enough for a noisy 2-vCPU VM, narrow enough to catch a wrong schedule (a
loop measuring against the wrong slot is off by up to a whole interval).
"""
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netprobe.errors import load_extension
from netprobe.selftest import format_selftest, timer_selftest

ROOT = Path(__file__).resolve().parents[2]
INTERVAL_NS = 1_000_000
pacer = load_extension("_timer")


def python_select_lateness(interval_ns, duration_ns):
    """Lateness (ns) of a select()-timed loop at absolute deadlines; late slots are skipped."""
    out = []
    t0 = time.monotonic_ns()
    k = 1
    while k * interval_ns <= duration_ns:
        due = t0 + k * interval_ns
        now = time.monotonic_ns()
        if due > now:
            select.select([], [], [], (due - now) / 1e9)
            now = time.monotonic_ns()
        last_due = t0 + (now - t0) // interval_ns * interval_ns
        out.append(now - last_due)
        k = (now - t0) // interval_ns + 1
    return np.array(out, dtype=np.int64)


def test_timerfd_lateness_agrees_with_python_select_loop():
    before = python_select_lateness(INTERVAL_NS, 1_500_000_000)
    ours = timer_selftest(INTERVAL_NS / 1e9, 3.0)
    after = python_select_lateness(INTERVAL_NS, 1_500_000_000)
    py = np.concatenate([before, after])
    py50, py99 = np.percentile(py, [50, 99])
    late = ours["lateness_ns"]
    figures = (f"ours p50 {late['p50'] / 1e3:.1f} us p99 {late['p99'] / 1e3:.1f} us; "
               f"python select p50 {py50 / 1e3:.1f} us p99 {py99 / 1e3:.1f} us")
    print(figures)
    print(format_selftest(ours))
    assert late["p50"] > 0 and py50 > 0, figures
    assert late["p50"] <= py50 + 200_000, figures
    assert late["p99"] <= max(3 * py99, py99 + 2_000_000), figures
    assert late["p50"] < INTERVAL_NS, "lateness is against the latest slot due"
    slots = ours["ticks"] + ours["overruns"]
    assert abs(slots - ours["expected_ticks"]) <= 2, ours
    assert ours["ticks"] > 0.9 * ours["expected_ticks"], ours


PACER_CHILD = """
import json, sys
import numpy as np
from netprobe.errors import load_extension
from netprobe.probes.host.runner import measure
pacer = load_extension("_timer")
buf = np.empty(3000, dtype=np.int64)
with pacer.TimerfdPacer(1_000_000) as t:
    print("ready", flush=True)
    counters = measure(t, buf, 1_500_000_000)
print(json.dumps(counters), flush=True)
"""


def run_child(code, poke):
    """Run `code` in a fresh interpreter; once it prints "ready", call poke(child).
    Returns (returncode, the JSON object it printed last, seconds from poke's end to its exit)."""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "ready"
        poke(child)
        t0 = time.monotonic()
        out, _ = child.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, json.loads(out), took


def _stop_for_100ms(child):
    time.sleep(0.5)
    child.send_signal(signal.SIGSTOP)
    time.sleep(0.1)
    child.send_signal(signal.SIGCONT)


def test_sigstop_for_100ms_is_counted_as_overruns_not_catch_up():
    returncode, c, _ = run_child(PACER_CHILD, _stop_for_100ms)
    assert returncode == 0
    assert c["overruns"] >= 80, c
    assert c["missed"] >= 1, c
    expected = c["elapsed_ns"] / INTERVAL_NS
    assert abs(c["ticks"] + c["overruns"] - expected) <= 0.03 * expected, c
    assert c["ticks"] < expected - 80, "the stalled slots got no wake-up (no catch-up burst)"


def test_run_fills_array_array_and_stops_at_max_ticks():
    import array
    buf = array.array("q", [-1] * 50)
    with pacer.TimerfdPacer(INTERVAL_NS) as t:
        got = t.run(buf, 20, 10**9)
        assert got.ticks == 20 and t.expirations == 20 + got.overruns
    assert min(buf[:20]) >= 0 and sorted(buf[:20])[10] < INTERVAL_NS
    assert set(buf[20:]) == {-1}


def test_run_continues_the_schedule_across_chunks():
    buf = np.zeros(200, dtype=np.int64)
    with pacer.TimerfdPacer(INTERVAL_NS) as t:
        t.start()
        first = t.first_ns
        n = 0
        for _ in range(4):
            n += t.run(buf[n:], 200 - n, 20_000_000).ticks
        assert t.first_ns == first
        assert (t.expirations - 1) * INTERVAL_NS + first <= time.monotonic_ns()
    assert n >= 60 and (buf[:n] >= 0).all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        pacer.TimerfdPacer(0)
    with pacer.TimerfdPacer(INTERVAL_NS) as t:
        with pytest.raises(ValueError):
            t.run(np.zeros(4, dtype=np.int64), 4, 0)
        with pytest.raises(ValueError):                 # wrong element type
            t.run(np.zeros(4, dtype=np.int32), 4, 10**6)
    with pytest.raises(ValueError, match="closed"):
        t.start()


SIGTERM_CHILD = """
import json, signal, threading, time
import numpy as np
from netprobe.errors import load_extension
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
pacer = load_extension("_timer")
with pacer.TimerfdPacer(10**9) as t:                  # 1 s period: a tick would come late
    print("ready", flush=True)
    run = t.run(np.empty(10, dtype=np.int64), 10, 10 * 10**9)
got = {"interrupted": run.interrupted, "ticks": run.ticks, "stop": stop.is_set()}
print(json.dumps(got), flush=True)
"""


def _term_after_200ms(child):
    time.sleep(0.2)
    child.send_signal(signal.SIGTERM)


def test_sigterm_interrupts_the_blocking_read_and_runs_the_handler():
    _, got, took = run_child(SIGTERM_CHILD, _term_after_200ms)
    assert got["interrupted"] and got["stop"] and got["ticks"] == 0, got
    assert took < 0.5, f"returned {took:.3f}s after SIGTERM, before the 1 s tick"
