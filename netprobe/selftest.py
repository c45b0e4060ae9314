"""`netprobe selftest timer`: how late does this host wake a periodic timer?

Runs the host probe's timerfd loop once and reports its wake-up lateness the
way irtt reports timer error, so the figures can be put side by side.
"""
import math

import numpy as np

from netprobe import sysinfo
from netprobe.errors import UsageError, load_extension
from netprobe.probes.host.config import MAX_SAMPLES
from netprobe.probes.host.runner import measure
from netprobe.stats import summarize
from netprobe.units import format_duration


def timer_selftest(interval_s, duration_s):
    """Run a timerfd at `interval_s` for `duration_s`; lateness summary in ns and counters."""
    pacer_mod = load_extension("_timer")
    interval_ns = round(interval_s * 1e9)
    duration_ns = round(duration_s * 1e9)
    if interval_ns <= 0 or duration_ns <= 0:
        raise UsageError("selftest timer: --interval and --duration must be positive")
    samples = math.ceil(duration_ns / interval_ns) + 1
    if samples > MAX_SAMPLES:
        raise UsageError(f"selftest timer: {samples} samples; at most {MAX_SAMPLES} "
                         "(raise --interval or shorten --duration)")
    buf = np.empty(samples, dtype=np.int64)
    with pacer_mod.TimerfdPacer(interval_ns) as pacer:
        counters = measure(pacer, buf, duration_ns)
    late = summarize(buf[:counters["ticks"]])
    source, _ = sysinfo.clocksource()
    return {
        "interval_s": interval_ns / 1e9,
        "duration_s": duration_ns / 1e9,
        "elapsed_s": counters["elapsed_ns"] / 1e9,
        "ticks": counters["ticks"],
        "expected_ticks": counters["elapsed_ns"] // interval_ns,
        "overruns": counters["overruns"],
        "missed": counters["missed"],
        "lateness_ns": late,
        "clocksource": source,
    }


def _us(ns):
    return "n/a" if math.isnan(ns) else f"{ns / 1e3:.1f} us"


def format_selftest(d):
    """irtt-style aligned `name: value` lines for a timer_selftest() result."""
    late = d["lateness_ns"]
    rows = [
        ("interval", format_duration(d["interval_s"])),
        ("duration", format_duration(d["elapsed_s"])),
        ("clocksource", d["clocksource"] or "unknown"),
        ("ticks", str(d["ticks"])),
        ("expected ticks", str(d["expected_ticks"])),
        ("overruns", f"{d['overruns']} (expirations with no wake-up of their own)"),
        ("missed", f"{d['missed']} (wake-ups after the next slot was due)"),
        ("lateness min", _us(late["min"])),
        ("lateness mean", _us(late["mean"])),
        ("lateness p50", _us(late["p50"])),
        ("lateness p90", _us(late["p90"])),
        ("lateness p99", _us(late["p99"])),
        ("lateness p99.9", _us(late["p999"])),
        ("lateness max", _us(late["max"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:>{width}}: {value}" for name, value in rows)
