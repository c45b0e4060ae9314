"""The `host` probe loop: timer lateness, clock sync and CPU steal per interval.

The only file of this probe that touches the compiled extension. The timer
runs in chunks of at most CHUNK so that `stop` is seen within ~100 ms (a
SIGTERM also interrupts the blocking read at once); the schedule keeps
running across chunks, so chunking adds no lateness of its own.
"""
import logging
import time

import numpy as np

from netprobe import sysinfo
from netprobe.errors import ProbeError, load_extension
from netprobe.probes.base import ProbeRunner, next_deadline
from netprobe.probes.host import analysis
from netprobe.results import seconds

CHUNK_NS = 100_000_000

log = logging.getLogger("netprobe.probes.host")


def measure(pacer, buf, duration_ns, stop=None):
    """Arm `pacer` and run it for `duration_ns` (or until `stop` is set or `buf` is full).

    Lateness samples go to buf[:ticks]. Returns summed counters:
    ticks, overruns, missed, elapsed_ns (from arming to the end of the last chunk).
    """
    total = {"ticks": 0, "overruns": 0, "missed": 0}
    t0 = time.monotonic_ns()
    end = t0 + duration_ns
    pacer.start()
    now = t0
    while (stop is None or not stop.is_set()) and total["ticks"] < len(buf):
        left = end - now
        if left <= 0:
            break
        got = pacer.run(buf[total["ticks"]:], len(buf) - total["ticks"], min(CHUNK_NS, left))
        for key in total:
            total[key] += getattr(got, key)
        now = time.monotonic_ns()
    total["elapsed_ns"] = now - t0
    return total


class Runner(ProbeRunner):
    """Measure the measurer: one RESULT per interval, BREACH/CLEAR per metric."""

    kind = "host"

    def __init__(self, cfg, emit):
        super().__init__(cfg, emit)
        self._pacer = load_extension("_timer")
        self._reported = set()

    def run(self, stop):
        cfg = self.cfg
        buf = np.empty(cfg.samples_per_interval, dtype=np.int64)
        steal = sysinfo.CpuStealMeter()
        interval_ns = round(cfg.interval * 1e9)
        try:
            pacer = self._pacer.TimerfdPacer(round(cfg.timer_interval * 1e9))
        except OSError as exc:
            raise ProbeError(f"cannot create a timerfd: {exc.strerror}") from None
        end = time.monotonic_ns() + interval_ns
        with pacer:
            while not stop.is_set():
                counters = measure(pacer, buf, max(1, end - time.monotonic_ns()), stop)
                if counters["ticks"]:
                    self._report(buf[:counters["ticks"]], counters, steal)
                end = next_deadline(end, interval_ns, time.monotonic_ns())

    def _fact(self, name, got):
        value, why = got
        if why and name not in self._reported:
            self._reported.add(name)
            log.warning("%s: %s unavailable: %s", self.cfg.name, name, why)
        return value

    def _report(self, lateness_ns, counters, steal):
        summary = analysis.summarize_interval(
            lateness_ns, counters, timer_interval=self.cfg.timer_interval,
            clock=self._fact("clock sync", sysinfo.clock_sync()),
            clocksource=self._fact("clocksource", sysinfo.clocksource()),
            steal=self._fact("CPU steal", steal.sample()))
        self.result(analysis.result_fields(summary))
        window = seconds(summary["elapsed"])
        for v in analysis.verdicts(summary, self.cfg):
            self.judge(v.metric, v.bad, metric=v.metric, value=v.value, op=v.op,
                       threshold=v.threshold, window=window)
