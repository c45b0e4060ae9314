"""Sans-IO analysis of one host-probe interval: summary, RESULT fields, verdicts.

Inputs are plain values (the lateness array in ns, the pacer's counters, the
facts sysinfo returned), so everything here is testable with synthetic data.
Times in the summary are seconds; an unavailable fact is None and gets no
verdict (no measurement, no judgement).
"""
import math
from dataclasses import dataclass

from netprobe.results import percent, seconds
from netprobe.stats import summarize


@dataclass(frozen=True)
class Verdict:
    """One metric's SLA check for one interval; `metric` is also the hysteresis key."""
    metric: str
    bad: bool
    value: object        # Quantity, or bool for a yes/no SLA
    op: str
    threshold: object


def summarize_interval(lateness_ns, counters, *, timer_interval, clock=None, clocksource=None,
                       steal=None):
    """Summary of one interval in base units.

    lateness_ns: wake-up lateness samples (ns); counters: summed pacer
    counters (ticks, overruns, missed, elapsed_ns); clock: sysinfo.clock_sync()
    value or None; steal: percent or None.
    """
    late = summarize(lateness_ns)
    return {
        "timer_interval": timer_interval,
        "elapsed": counters["elapsed_ns"] / 1e9,
        "ticks": counters["ticks"],
        "late_p50": late["p50"] / 1e9,
        "late_p99": late["p99"] / 1e9,
        "late_p999": late["p999"] / 1e9,
        "late_max": late["max"] / 1e9,
        "late_mean": late["mean"] / 1e9,
        "overruns": counters["overruns"],
        "missed": counters["missed"],
        "clock_synced": None if clock is None else bool(clock["synced"]),
        "clock_maxerror": None if clock is None else clock["maxerror_us"] / 1e6,
        "clock_esterror": None if clock is None else clock["esterror_us"] / 1e6,
        "clocksource": clocksource,
        "steal": steal,
    }


def _seconds(x):
    return seconds(math.nan if x is None else x)


def result_fields(summary):
    """RESULT record fields (Quantity for measured values) in output order."""
    return {
        "timer_interval": seconds(summary["timer_interval"]),
        "ticks": summary["ticks"],
        "late_p50": _seconds(summary["late_p50"]),
        "late_p99": _seconds(summary["late_p99"]),
        "late_p999": _seconds(summary["late_p999"]),
        "late_max": _seconds(summary["late_max"]),
        "overruns": summary["overruns"],
        "missed": summary["missed"],
        "clock_synced": summary["clock_synced"],
        "clock_maxerror": _seconds(summary["clock_maxerror"]),
        "clock_esterror": _seconds(summary["clock_esterror"]),
        "clocksource": summary["clocksource"],
        "steal": percent(math.nan if summary["steal"] is None else summary["steal"]),
    }


def verdicts(summary, cfg):
    """Verdicts (timer_p99, clock_sync, clock_error, steal) for what this interval measured."""
    out = []
    if summary["ticks"] > 0:
        out.append(Verdict("timer_p99", summary["late_p99"] > cfg.max_timer_p99,
                           seconds(summary["late_p99"]), "<=", seconds(cfg.max_timer_p99)))
    if cfg.require_clock_sync and summary["clock_synced"] is not None:
        synced = summary["clock_synced"]
        out.append(Verdict("clock_sync", not synced, bool(synced), "", True))
    if cfg.require_clock_sync and summary["clock_maxerror"] is not None:
        out.append(Verdict("clock_error", summary["clock_maxerror"] > cfg.max_clock_error,
                           seconds(summary["clock_maxerror"]), "<=", seconds(cfg.max_clock_error)))
    if summary["steal"] is not None:
        out.append(Verdict("steal", summary["steal"] > cfg.max_steal, percent(summary["steal"]),
                           "<=", percent(cfg.max_steal)))
    return out
