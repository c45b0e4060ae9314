"""The `host` probe: sans-IO analysis on synthetic data, then the runner with a fake emit."""
import math
import threading
import time

import numpy as np
import pytest

from netprobe import sysinfo
from netprobe.config import schema
from netprobe.errors import ConfigError
from netprobe.probes.host import Config, Runner, analysis
from netprobe.results import BREACH, CLEAR, RESULT, Quantity
from netprobe.stats import quantiles, summarize

RESULT_FIELDS = ["timer_interval", "ticks", "late_p50", "late_p99", "late_p999", "late_max",
                 "overruns", "missed", "clock_synced", "clock_maxerror", "clock_esterror",
                 "clocksource", "steal"]
SYNCED = {"synced": True, "maxerror_us": 20_000, "esterror_us": 500}
COUNTERS = {"ticks": 1000, "overruns": 3, "missed": 2, "elapsed_ns": 1_003_000_000}


def config(**table):
    return schema.build(Config, {"name": "self", **table}, schema.Where("test.toml", "probe[0]"))


@pytest.mark.parametrize("values", [
    np.random.default_rng(1).lognormal(10, 1, 10_000).astype(np.int64),
    np.random.default_rng(2).integers(0, 10**7, 1234),
    np.full(50, 42_000),
    np.array([7]),
])
def test_summarize_matches_numpy_percentile(values):
    s = summarize(values)
    assert s["count"] == len(values)
    for key, q in [("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)]:
        assert s[key] == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert s["max"] == values.max() and s["min"] == values.min()
    assert s["mean"] == pytest.approx(values.mean())


def test_summarize_empty_is_nan_not_an_error():
    s = summarize(np.array([], dtype=np.int64))
    assert s["count"] == 0 and all(math.isnan(s[k]) for k in s if k != "count")
    assert all(math.isnan(x) for x in quantiles([], [50, 99]))


def test_interval_summary_converts_to_seconds():
    late = np.arange(1, 1001, dtype=np.int64) * 1000          # 1 us .. 1 ms
    s = analysis.summarize_interval(late, COUNTERS, timer_interval=0.001, clock=SYNCED,
                                    clocksource="tsc", steal=1.5)
    assert s["late_p50"] == pytest.approx(np.percentile(late, 50) / 1e9)
    assert s["late_p99"] == pytest.approx(np.percentile(late, 99) / 1e9)
    assert s["late_p999"] == pytest.approx(np.percentile(late, 99.9) / 1e9)
    assert s["late_max"] == pytest.approx(1e-3)
    assert s["elapsed"] == pytest.approx(1.003)
    assert (s["ticks"], s["overruns"], s["missed"]) == (1000, 3, 2)
    assert s["clock_synced"] is True and s["clock_maxerror"] == 0.02 and s["clock_esterror"] == 0.0005
    fields = analysis.result_fields(s)
    assert list(fields) == RESULT_FIELDS
    assert fields["late_p99"].unit == "s" and fields["steal"] == Quantity(1.5, "%")


def _summary(**over):
    s = analysis.summarize_interval(np.full(100, 50_000), COUNTERS, timer_interval=0.001,
                                    clock=SYNCED, clocksource="tsc", steal=1.0)
    s.update(over)
    return s


def _bad(summary, cfg):
    return {v.metric: v.bad for v in analysis.verdicts(summary, cfg)}


def test_verdicts_per_metric():
    cfg = config(max_timer_p99="2ms", max_clock_error="100ms", max_steal=10)
    assert _bad(_summary(), cfg) == {"timer_p99": False, "clock_sync": False,
                                     "clock_error": False, "steal": False}
    assert _bad(_summary(late_p99=0.0021, clock_synced=False, clock_maxerror=0.2, steal=10.5),
                cfg) == {"timer_p99": True, "clock_sync": True, "clock_error": True, "steal": True}
    assert _bad(_summary(late_p99=0.002, clock_maxerror=0.1, steal=10.0), cfg)["timer_p99"] is False


def test_unmeasured_metrics_get_no_verdict():
    cfg = config()
    assert _bad(_summary(ticks=0, clock_synced=None, clock_maxerror=None, steal=None), cfg) == {}
    assert set(_bad(_summary(clock_synced=False), config(require_clock_sync=False))) == \
        {"timer_p99", "steal"}


def test_verdict_values_carry_units_and_sla():
    v = {v.metric: v for v in analysis.verdicts(_summary(late_p99=0.003), config())}
    assert v["timer_p99"].value == Quantity(0.003, "s") and v["timer_p99"].op == "<="
    assert v["timer_p99"].threshold == Quantity(0.002, "s")
    assert v["clock_sync"].value is True and v["clock_sync"].op == "" and v["clock_sync"].threshold is True


def test_config_defaults_and_sample_bound():
    cfg = config()
    assert (cfg.timer_interval, cfg.max_timer_p99, cfg.require_clock_sync, cfg.max_clock_error,
            cfg.max_steal) == (0.001, 0.002, True, 0.1, 10.0)
    assert cfg.samples_per_interval == 10_001
    with pytest.raises(ConfigError, match=r"probe\[0\]\.timer_interval: .*at most 1000000"):
        config(interval="1h", timer_interval="1ms")
    with pytest.raises(ConfigError, match="out of range"):
        config(timer_interval="10us")


class Collect:
    """Fake emit: keeps records; sets `stop` after `results` RESULT records."""

    def __init__(self, stop, results):
        self.records, self.stop, self.results = [], stop, results

    def __call__(self, record):
        self.records.append(record)
        if sum(r.type == RESULT for r in self.records) >= self.results:
            self.stop.set()

    def of(self, kind):
        return [r for r in self.records if r.type == kind]


def test_runner_emits_results_and_hysteresis(monkeypatch):
    """Clock unsynced for 3 intervals, then synced: BREACH after 2 bad, CLEAR after 2 good."""
    states = iter([False, False, False, True, True, True])
    monkeypatch.setattr(sysinfo, "clock_sync", lambda: (dict(SYNCED, synced=next(states)), None))
    stop = threading.Event()
    emit = Collect(stop, results=6)
    cfg = config(interval="0.2s", breach_after=2, clear_after=2, max_timer_p99="1s", max_steal=100)
    t0 = time.monotonic()
    Runner(cfg, emit).run(stop)
    assert time.monotonic() - t0 < 3
    results = emit.of(RESULT)
    assert len(results) == 6
    for r in results:
        assert list(r.fields) == RESULT_FIELDS and (r.probe, r.name) == ("host", "self")
        # 200 expirations of the 1 ms timer per 0.2 s: woken for each, or counted as overruns
        # when a loaded host woke the thread late
        assert 150 <= r.fields["ticks"] + r.fields["overruns"] <= 210, r.fields
        assert r.fields["late_p50"].value > 0 and r.fields["timer_interval"].value == 0.001
        assert r.fields["clocksource"] == sysinfo.clocksource()[0]
    events = [(r.type, r.fields["metric"]) for r in emit.records if r.type in (BREACH, CLEAR)]
    assert events == [(BREACH, "clock_sync"), (CLEAR, "clock_sync")]
    breach = emit.of(BREACH)[0]
    assert breach.fields["value"] is False and breach.fields["threshold"] is True
    assert breach.fields["window"].unit == "s" and "value=no sla=yes" in breach.to_text()
    order = [r.type for r in emit.records]
    assert order.index(BREACH) == 2 and order.index(CLEAR) == 6   # after the 2nd and 5th RESULT


def test_runner_stops_promptly_and_emits_the_partial_interval():
    stop = threading.Event()
    emit = Collect(stop, results=99)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    Runner(config(interval="10s"), emit).run(stop)
    took = time.monotonic() - t0
    assert took < 0.6, took
    (result,) = emit.of(RESULT)
    assert 150 <= result.fields["ticks"] <= 420, result.fields
