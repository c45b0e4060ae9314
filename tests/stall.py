"""How long the host kept given threads from running, measured outside the code under test.

The kernel's scheduler statistics, /proc/<pid>/task/<tid>/schedstat, give in
their second field the time (ns) a thread spent runnable but waiting on a
runqueue; /proc/stat's 8th cpu field is the time the hypervisor ran someone
else on a vCPU (steal). A sampler thread reads both every `period` for the
watched processes (every thread, children included) and answers: in a span
of time, how long was the worst-off watched thread kept off a CPU?

Timing tests use it to decide a retry: a try that misses its fixed bound is
taken again only if the host held a watched thread back for long enough in
the span that missed; a miss on a quiet host fails the test at once.
"""
import os
import threading
import time

import pytest

USER_HZ_NS = 10**9 // os.sysconf("SC_CLK_TCK")


def _read_int(path, field):
    try:
        with open(path) as f:
            return int(f.read().split()[field])
    except (OSError, IndexError, ValueError):      # the thread or process ended
        return None


def _tasks(pid, children):
    """(tid, schedstat path) of every thread of pid and, with children, of its descendants."""
    out, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            out.append((int(tid), f"/proc/{p}/task/{tid}/schedstat"))
            if children:
                try:
                    with open(f"/proc/{p}/task/{tid}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
                except OSError:
                    pass
    return out


def _steal_ns():
    """Steal time per vCPU (ns), from /proc/stat."""
    with open("/proc/stat") as f:
        return [int(line.split()[8]) * USER_HZ_NS for line in f
                if line.startswith("cpu") and line[3].isdigit()]


class RunDelay(threading.Thread):
    """Samples the runqueue wait of every thread of `pids` (and their children) and the vCPUs' steal
    every `period` s until stop(). Use as a context manager around the timed work."""

    def __init__(self, pids=(), period=0.02, children=True):
        super().__init__(daemon=True)
        self.pids, self.period, self.children = list(pids), period, children
        self.samples = []               # (monotonic ns, wall ns, {tid: run delay ns}, [steal ns per vCPU])
        self._done = threading.Event()
        self._lock = threading.Lock()

    def watch(self, pid):
        with self._lock:
            self.pids.append(pid)

    def sample(self):
        with self._lock:
            pids = list(self.pids)
        delays = {}
        for pid in pids:
            for tid, path in _tasks(pid, self.children):
                v = _read_int(path, 1)
                if v is not None:
                    delays[tid] = v
        self.samples.append((time.monotonic_ns(), time.time_ns(), delays, _steal_ns()))

    def run(self):
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.period)

    def __enter__(self):
        self.sample()
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._done.set()
        if self.is_alive():
            self.join(5)
        self.sample()

    def held_back_ns(self, t0_ns, t1_ns, tids=None, wall=False):
        """Over [t0, t1] (monotonic ns, or wall-clock ns with wall=True), widened to the samples
        around it: the longest runqueue wait of one watched thread (of `tids`, if given) plus the
        most steal of one vCPU. A thread first seen inside the span counts from its first sample."""
        k = 1 if wall else 0
        s = self.samples
        i = max([n for n, x in enumerate(s) if x[k] <= t0_ns], default=0)
        j = min([n for n, x in enumerate(s) if x[k] >= t1_ns], default=len(s) - 1)
        first, last = s[i], s[j]
        waits = [0]
        for tid, v in last[2].items():
            if tids is not None and tid not in tids:
                continue
            base = first[2].get(tid)
            if base is None:
                base = next(x[2][tid] for x in s[i:j + 1] if tid in x[2])
            waits.append(v - base)
        steal = max((b - a for a, b in zip(first[3], last[3], strict=True)), default=0)
        return max(waits) + steal

    def held_back_share(self, t0_ns, t1_ns, tids=None, wall=False):
        return self.held_back_ns(t0_ns, t1_ns, tids, wall) / (t1_ns - t0_ns)


def until_no_miss(attempt, tries):
    """Run `attempt` until it returns no misses: tuples ending (share held back, share that would
    explain the miss). A try that missed is taken again only if every miss was explained by the
    host holding a watched thread back; a miss on a quiet host fails at once, as do misses in
    all `tries`."""
    for n in range(tries):
        off = attempt()
        if not off:
            return
        quiet = [m for m in off if m[-2] < m[-1]]
        assert not quiet, f"off the bound with the host quiet (..., held back, needed): {quiet}; all {off}"
        print(f"try {n + 1}: off the bound while the host held the threads back: {off}")
    pytest.fail(f"off the bound in all {tries} tries, each time on a busy host; the last: {off}")
