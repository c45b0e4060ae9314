"""TimerfdPacer against an independent oracle on the same machine.

The oracle is a plain Python loop that reads a timerfd of its own (through
libc) armed with absolute deadlines; lateness is measured against the latest
slot due, from the kernel's expiration count. It runs in the same thread,
interleaved with the pacer in short turns, so both see the same host. The
bounds are tied to what they protect: a wake-up path 200 us slower at the
99th percentile, at a 1 ms tick, fails.
"""
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from netprobe.errors import load_extension
from netprobe.probes.host.runner import measure
from netprobe.selftest import format_selftest, timer_selftest
from tests.stall import RunDelay

ROOT = Path(__file__).resolve().parents[2]
INTERVAL_NS = 1_000_000
pacer = load_extension("_timer")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


CLOCK_MONOTONIC, TFD_TIMER_ABSTIME = 1, 1


def timerfd_read_lateness(interval_ns, duration_ns):
    """Lateness (ns) of each wake-up of a blocking read() loop on a timerfd of its own, armed at
    absolute deadlines t0 + k * interval: now minus the due time of the latest expiration read."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.timerfd_create(CLOCK_MONOTONIC, 0)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        first = time.monotonic_ns() + interval_ns
        spec = _Itimerspec(_Timespec(0, interval_ns), _Timespec(first // 10**9, first % 10**9))
        assert libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) == 0
        out, fired, now = [], 0, first
        while now - first < duration_ns:
            fired += int.from_bytes(os.read(fd, 8), "little")
            now = time.monotonic_ns()
            out.append(now - (first + (fired - 1) * interval_ns))
        return out
    finally:
        os.close(fd)


def pacer_lateness(interval_ns, duration_ns):
    """The pacer's lateness samples over `duration_ns`, run as the selftest runs it."""
    buf = np.empty(duration_ns // interval_ns + 64, dtype=np.int64)
    with pacer.TimerfdPacer(interval_ns) as t:
        got = measure(t, buf, duration_ns)
    return list(buf[:got["ticks"]])


@contextlib.contextmanager
def realtime_thread():
    """This thread at SCHED_FIFO while inside (where permitted, else unchanged): the host's other
    load, all at normal priority, then stays out of both lateness distributions."""
    old = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except PermissionError:
        old = None
    try:
        yield
    finally:
        if old is not None:
            os.sched_setscheduler(0, old[0], old[1])


TURNS, TURN_NS = 16, 250_000_000
REGRESSION_NS = 200_000         # what must fail: a wake-up path this much slower at p99
P99_MARGIN_NS, P50_MARGIN_NS = REGRESSION_NS // 2, REGRESSION_NS // 4


def test_timerfd_lateness_agrees_with_a_plain_timerfd_read_loop():
    """TURNS turns of each (4 s), in ABBA order in one real-time thread, so both see the same
    host. Ours may be later than the oracle by half the regression to catch at p99 (a quarter
    at p50). A try that misses is taken again only if the host held this thread back
    (runqueue wait + vCPU steal, tests/stall.py) in the pacer's turns for at least what could
    move its p99 by the margin: 1 % of its ticks held back that much each."""
    me = {threading.get_native_id()}
    for attempt in range(3):
        ours, ref, held_ns = [], [], 0
        with RunDelay([os.getpid()], children=False) as held, realtime_thread():
            for k in range(TURNS):
                for who in (("ours", "ref"), ("ref", "ours"))[k % 2]:
                    if who == "ref":
                        ref += timerfd_read_lateness(INTERVAL_NS, TURN_NS)
                        continue
                    t0 = time.monotonic_ns()
                    ours += pacer_lateness(INTERVAL_NS, TURN_NS)
                    held_ns += held.held_back_ns(t0, time.monotonic_ns(), me)
        (o50, o99), (r50, r99) = np.percentile(ours, [50, 99]), np.percentile(ref, [50, 99])
        busy_ns = 0.01 * len(ours) * P99_MARGIN_NS
        figures = (f"ours p50 {o50 / 1e3:.1f} us p99 {o99 / 1e3:.1f} us; a plain timerfd read loop p50 "
                   f"{r50 / 1e3:.1f} us p99 {r99 / 1e3:.1f} us; held back {held_ns / 1e6:.2f} ms "
                   f"(busy from {busy_ns / 1e6:.2f} ms)")
        print(f"try {attempt + 1}: {figures}")
        assert 0 < o50 < INTERVAL_NS and r50 > 0, figures         # against the latest slot due
        if o50 <= r50 + P50_MARGIN_NS and o99 <= r99 + P99_MARGIN_NS:
            break
        assert held_ns >= busy_ns, f"later than a plain timerfd read loop on a quiet host: {figures}"
    else:
        pytest.fail(f"later than a plain timerfd read loop in all tries, each on a busy host: {figures}")
    with realtime_thread():
        t0 = time.monotonic_ns()
        ours = timer_selftest(INTERVAL_NS / 1e9, 1.0)
        took = time.monotonic_ns() - t0
    print(format_selftest(ours))
    # the slots of the 1 s asked for, by the test's own clock: no more expirations than fit in
    # the call's time, none missing from the second asked for, and at most 10 % overrun
    slots = ours["ticks"] + ours["overruns"]
    due = 1e9 / INTERVAL_NS
    assert due - 2 <= slots <= took / INTERVAL_NS + 1, (slots, took, ours)
    assert ours["ticks"] > 0.9 * due, ours


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
