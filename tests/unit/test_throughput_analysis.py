"""The `throughput` analysis on synthetic sample series, checked against scipy/numpy."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from netprobe.config import schema
from netprobe.probes.throughput.analysis import DELIVERY_METRICS, SLA, AckPathGuard, SampleWindow, analyze, verdicts
from netprobe.probes.throughput.config import Config
from netprobe.probes.throughput.samples import COL, NCOLS
from netprobe.results import BREACH, CLEAR, Hysteresis, Quantity

SLA_BPS = 100e6
WINDOW = 15.0
T0 = 5_000_000_000_000          # a plausible CLOCK_MONOTONIC origin, ns


def series(t_s, acked, *, epoch=1, app=None, rtt_us=None, min_rtt_us=20_000, **cumulative):
    """Rows at times t_s (s after T0) with bytes_acked `acked`; other columns by name.
    Data is in flight all along (busy_time_us grows with time) unless given."""
    t_s = np.asarray(t_s, dtype=np.float64)
    n = t_s.size
    if n:
        cumulative.setdefault("busy_time_us", np.round((t_s - t_s[0]) * 1e6))
    rows = np.zeros((n, NCOLS), dtype=np.int64)
    rows[:, COL["t_ns"]] = T0 + np.round(t_s * 1e9).astype(np.int64)
    rows[:, COL["epoch"]] = epoch
    rows[:, COL["bytes_acked"]] = np.round(acked).astype(np.int64)
    rows[:, COL["app_bytes"]] = rows[:, COL["bytes_acked"]] if app is None else np.round(app).astype(np.int64)
    rows[:, COL["rtt_us"]] = 25_000 if rtt_us is None else rtt_us
    rows[:, COL["min_rtt_us"]] = min_rtt_us
    for name, values in cumulative.items():
        rows[:, COL[name]] = values
    return rows


def steady(fraction=1.0, *, duration=WINDOW, period=0.1, start=0.0, **kw):
    t = start + np.arange(round(duration / period) + 1) * period
    return series(t, SLA_BPS / 8 * fraction * (t - start), **kw)


def now_of(rows):
    return int(rows[-1, COL["t_ns"]])


def run(rows, **kw):
    return analyze(rows, now_of(rows), WINDOW, SLA_BPS, **kw)


def oracle(rows):
    """Slope (bit/s) and Pearson r by scipy, RTT percentiles by numpy, independently of the module."""
    x = (rows[:, COL["t_ns"]] - rows[0, COL["t_ns"]]) / 1e9
    y = rows[:, COL["bytes_acked"]].astype(float)
    rtt = rows[:, COL["rtt_us"]] / 1e6
    return {"rate": stats.linregress(x, y).slope * 8, "fitness": stats.pearsonr(x, y)[0],
            "rtt_p50": np.percentile(rtt, 50), "rtt_p99": np.percentile(rtt, 99), "rtt_mean": rtt.mean()}


def by_metric(vs):
    return {v.metric: v for v in vs}


# --- the core cases -------------------------------------------------------------------------

def test_steady_flow_at_the_sla():
    rng = np.random.default_rng(7)
    rows = steady(rtt_us=rng.integers(20_000, 40_000, 151))
    m = run(rows)
    ref = oracle(rows)
    assert m["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert m["rate"] == pytest.approx(ref["rate"], rel=1e-12)
    assert m["rate_simple"] == pytest.approx(SLA_BPS, rel=1e-6)
    assert m["fitness"] > 0.999 and m["fitness"] == pytest.approx(ref["fitness"], abs=1e-12)
    assert m["angle"] == pytest.approx(0.0, abs=1e-6)
    for key in ("rtt_p50", "rtt_p99", "rtt_mean"):
        assert m[key] == pytest.approx(ref[key], rel=1e-12)
    assert m["min_rtt"] == pytest.approx(0.020)
    assert m["rtt_rise"] == pytest.approx(ref["rtt_mean"] - 0.020)
    assert (m["samples"], m["span"], m["epoch"]) == (151, pytest.approx(15.0), 1)
    assert m["limited_by"] == "none"
    sla = SLA(SLA_BPS, min_fitness=0.95, max_angle=0.05)
    assert [(v.metric, v.bad) for v in verdicts(m, sla, "a->b")] == [("rate", False), ("fitness", False),
                                                                       ("angle", False)]


def test_perfectly_linear_flow_at_a_tenth_of_the_sla_is_a_rate_breach():
    """tcpxfer's blind spot: r ~ 1 looks healthy, but only 10 % of the SLA arrives."""
    rows = steady(0.1)
    m = run(rows)
    assert m["fitness"] == pytest.approx(1.0, abs=1e-9)
    assert m["ratio"] == pytest.approx(0.1, rel=1e-6)
    assert m["rate"] == pytest.approx(oracle(rows)["rate"], rel=1e-12)
    assert m["angle"] == pytest.approx(math.atan(0.1) - math.pi / 4) and m["angle"] < 0
    v = by_metric(verdicts(m, SLA(SLA_BPS, min_fitness=0.95), "a->b"))
    assert v["rate"].bad and not v["fitness"].bad
    assert v["rate"].op == ">=" and v["rate"].threshold == Quantity(0.95 * SLA_BPS, "bit/s")
    assert v["rate"].value == Quantity(m["rate"], "bit/s")


def test_sawtooth_and_stall_bend_the_line():
    t = np.arange(151) * 0.1
    per_s = SLA_BPS / 8
    stall = np.where(t < 5, per_s * t, np.where(t < 10, per_s * 5, per_s * 5 + 2 * per_s * (t - 10)))
    saw = per_s * (t - (t % 1.0) * 0.8)                 # bursts once a second, little in between
    for acked in (stall, saw):
        rows = series(t, acked)
        m = run(rows)
        ref = oracle(rows)
        assert m["fitness"] < 1 and m["fitness"] == pytest.approx(ref["fitness"], abs=1e-12)
        assert m["rate"] == pytest.approx(ref["rate"], rel=1e-12)
        assert m["angle"] == pytest.approx(math.atan(m["ratio"]) - math.pi / 4)
        assert abs(m["angle"]) > 0
    m = run(series(t, stall))
    assert m["fitness"] < 0.99
    v = by_metric(verdicts(m, SLA(SLA_BPS, min_fitness=0.99, max_angle=0.01), "b->a"))
    assert v["fitness"].bad and v["angle"].bad and v["angle"].value.value == pytest.approx(abs(m["angle"]))
    assert v["angle"].op == "<=" and v["angle"].dir == "b->a" and v["angle"].key == ("b->a", "angle")


# --- epochs: no sample from before a reconnect -----------------------------------------------

def reconnect_rows():
    before = steady(0.5, duration=10.0, epoch=1, total_retrans=np.arange(101))
    after = steady(1.0, duration=10.0, start=12.0, epoch=2)
    return before, after


def test_window_keeps_only_the_current_epoch():
    before, after = reconnect_rows()
    w = SampleWindow.for_window(WINDOW, 0.1)
    w.add(before[:60])
    w.add(before[60:])
    assert len(w) == 101 and w.epoch == 1
    w.add(after)
    kept = w.rows()
    assert (kept[:, COL["epoch"]] == 2).all()
    np.testing.assert_array_equal(kept, after)
    now = now_of(after)
    straddling = np.concatenate([before, after])
    assert now - before[-1, COL["t_ns"]] < WINDOW * 1e9         # the window reaches back into epoch 1
    alone = analyze(after, now, WINDOW, SLA_BPS)
    assert analyze(kept, now, WINDOW, SLA_BPS) == alone
    assert analyze(straddling, now, WINDOW, SLA_BPS) == alone   # the pure function filters too
    assert alone["retrans"] == 0 and alone["ratio"] == pytest.approx(1.0, abs=1e-6)


def test_a_batch_that_straddles_a_reconnect_keeps_the_new_epoch():
    before, after = reconnect_rows()
    w = SampleWindow(500)
    w.add(np.concatenate([before, after]))
    np.testing.assert_array_equal(w.rows(), after)
    assert w.dropped == len(before)


def test_disconnect_clears_and_refuses_late_rows_of_the_dead_connection():
    before, after = reconnect_rows()
    w = SampleWindow(500)
    w.add(after[:50])
    w.mark_disconnected(now_of(after[:50]))
    assert len(w) == 0 and w.disconnected_ns == now_of(after[:50])
    w.add(after[50:])                    # still in flight when the connection died
    w.add(before)                        # an older epoch
    assert len(w) == 0 and w.dropped == len(after) - 50 + len(before)
    assert analyze(w.rows(), now_of(after), WINDOW, SLA_BPS) is None
    assert verdicts(None, SLA(SLA_BPS), "a->b") == []
    fresh = steady(duration=3.0, start=30.0, epoch=3)
    w.add(fresh)
    np.testing.assert_array_equal(w.rows(), fresh)
    assert w.disconnected_ns is None and not w.closed


# --- limited_by, retransmits, RTT ------------------------------------------------------------

def test_limited_by():
    busy = np.arange(151) * 100_000                     # busy the whole 15 s
    cases = {
        "receive_window": dict(fraction=0.5, rwnd_limited_us=busy * 6 // 10, busy_time_us=busy),
        "send_buffer": dict(fraction=1.0, sndbuf_limited_us=busy * 7 // 10, busy_time_us=busy),
        # short, and data was in flight only a fifth of the time: our host did not feed the socket
        "sender": dict(fraction=0.5, busy_time_us=busy // 5),
        # short although data was in flight all along, even when the app also wrote less
        # (TCP_NOTSENT_LOWAT pushes back on a sender the network does not drain)
        "network": dict(fraction=0.5, app=SLA_BPS / 8 * 0.5 * np.arange(151) * 0.1, busy_time_us=busy),
        "none": dict(fraction=1.0, rwnd_limited_us=busy * 4 // 10, sndbuf_limited_us=busy * 4 // 10,
                     busy_time_us=busy),
    }
    for expected, kw in cases.items():
        fraction = kw.pop("fraction")
        m = run(steady(fraction, **kw))
        assert m["limited_by"] == expected, expected
        assert m["busy_time"] == pytest.approx(3.0 if expected == "sender" else 15.0)
    m = run(steady(0.5, **{"rwnd_limited_us": busy * 6 // 10, "busy_time_us": busy}))
    assert m["rwnd_share"] == pytest.approx(0.6) and m["sndbuf_share"] == 0
    # the sender wrote 98.5 % of the SLA: not short of its own making
    app = SLA_BPS / 8 * 0.985 * np.arange(151) * 0.1
    assert run(steady(0.5, app=app, busy_time_us=busy))["limited_by"] == "network"
    # "short" follows the SLA's min_ratio
    assert run(steady(0.9, busy_time_us=0))["limited_by"] == "sender"
    # a window our sending host did not feed is no evidence against the path: no delivery verdicts
    starved = run(steady(0.5, busy_time_us=busy // 5))
    sla = SLA(SLA_BPS, max_rtt=1.0, max_retrans_pct=1.0, min_fitness=0.9, max_angle=0.1)
    assert sorted(by_metric(verdicts(starved, sla, "a->b"))) == ["retrans", "rtt"]
    assert sorted(by_metric(verdicts(run(steady(0.5, busy_time_us=busy)), sla, "a->b"))) == [
        "angle", "fitness", "rate", "retrans", "rtt"]
    assert run(steady(0.9, busy_time_us=0), min_ratio=0.8)["limited_by"] == "none"
    no_busy = run(steady(busy_time_us=0))
    assert no_busy["rwnd_share"] is None and no_busy["sndbuf_share"] is None


def test_retransmits():
    n = 151
    rows = steady(total_retrans=5 + np.arange(n) // 10, bytes_retrans=1000 + np.arange(n) * 1448,
                  dsack_dups=np.arange(n) // 50)
    m = run(rows)
    delivered = rows[-1, COL["bytes_acked"]] - rows[0, COL["bytes_acked"]]
    assert m["delivered"] == delivered
    assert (m["retrans"], m["retrans_bytes"], m["dsack"]) == (15, 150 * 1448, 3)
    assert m["retrans_pct"] == pytest.approx(150 * 1448 / delivered * 100)
    v = by_metric(verdicts(m, SLA(SLA_BPS, max_retrans_pct=0.1), "a->b"))
    assert v["retrans"].bad and v["retrans"].value.unit == "%" and v["retrans"].threshold.value == 0.1
    assert not by_metric(verdicts(m, SLA(SLA_BPS, max_retrans_pct=1.0), "a->b"))["retrans"].bad


def test_nothing_delivered():
    """No bytes move: r is undefined (no fitness verdict), retrans_pct 0, and the rate judges it."""
    rows = steady(0.0, total_retrans=np.arange(151), bytes_retrans=np.arange(151) * 1448)
    m = run(rows)
    assert m["fitness"] is None and m["retrans_pct"] == 0.0 and m["retrans"] == 150
    assert m["ratio"] == 0 and m["angle"] == pytest.approx(-math.pi / 4)
    v = by_metric(verdicts(m, SLA(SLA_BPS, min_fitness=0.95, max_retrans_pct=1.0), "a->b"))
    assert v["rate"].bad and "fitness" not in v and not v["retrans"].bad


def test_rtt_ignores_readings_before_the_first_rtt_sample():
    rtt = np.full(151, 30_000)
    rtt[:3] = 0
    min_rtt = np.full(151, 21_000)
    min_rtt[:3] = 0xFFFFFFFF
    min_rtt[100:] = 20_000
    m = run(steady(rtt_us=rtt, min_rtt_us=min_rtt))
    assert (m["rtt_mean"], m["rtt_p50"], m["rtt_p99"]) == pytest.approx((0.030, 0.030, 0.030))
    assert m["min_rtt"] == pytest.approx(0.020) and m["rtt_rise"] == pytest.approx(0.010)
    v = by_metric(verdicts(m, SLA(SLA_BPS, max_rtt=0.025), "a->b"))["rtt"]
    assert v.bad and v.op == "<=" and v.value.unit == "s" and v.threshold.value == 0.025
    blind = run(steady(rtt_us=np.zeros(151, dtype=np.int64), min_rtt_us=0))
    assert math.isnan(blind["rtt_mean"]) and math.isnan(blind["min_rtt"])
    assert "rtt" not in by_metric(verdicts(blind, SLA(SLA_BPS, max_rtt=0.025), "a->b"))


def test_only_set_slas_give_verdicts():
    m = run(steady())
    assert [v.metric for v in verdicts(m, SLA(SLA_BPS), "a->b")] == ["rate"]
    full = SLA(SLA_BPS, max_rtt=1.0, max_retrans_pct=1.0, min_fitness=0.5, max_angle=0.5)
    assert [v.metric for v in verdicts(m, full, "a->b")] == ["rate", "rtt", "retrans", "fitness", "angle"]


def test_config_builds_the_sla_per_direction():
    cfg = schema.build(Config, {"name": "dc", "peer": "b", "rate": "100M", "rate_down": "50M", "max_rtt": "40ms",
                                "max_rtt_down": "80ms"}, schema.Where("t.toml", "probe[0]"))
    assert cfg.sla("a->b") == SLA(100e6, max_rtt=0.04)
    assert cfg.sla("b->a") == SLA(50e6, max_rtt=0.08)


# --- not enough data ------------------------------------------------------------------------

def test_too_little_data_is_no_verdict():
    assert analyze(np.zeros((0, NCOLS), dtype=np.int64), T0, WINDOW, SLA_BPS) is None
    assert run(steady(duration=0.1)) is None                         # 2 samples
    assert run(steady(duration=0.9)) is None                         # 10 samples over 0.9 s
    assert run(steady(duration=1.0, period=0.5)) is not None         # 3 samples over 1 s
    old = steady(duration=10.0)
    assert analyze(old, now_of(old) + round(WINDOW * 1e9), WINDOW, SLA_BPS) is None   # all before the window
    assert analyze(old, int(old[0, COL["t_ns"]]), WINDOW, SLA_BPS) is None           # all after `now`


def test_rows_outside_the_window_are_left_out():
    rows = steady(0.5, duration=30.0)
    m = run(rows)
    assert m["samples"] == 151 and m["span"] == pytest.approx(15.0)
    assert m == run(rows[-151:])


def test_window_rejects_rows_of_the_wrong_shape():
    with pytest.raises(ValueError):
        SampleWindow(100).add(np.zeros(NCOLS, dtype=np.int64))
    with pytest.raises(ValueError):
        SampleWindow(100).add(np.zeros((2, NCOLS - 1), dtype=np.int64))
    with pytest.raises(ValueError):
        analyze(steady(), T0, WINDOW, 0)


def test_capacity_follows_window_and_period():
    w = SampleWindow.for_window(15.0, 0.1)
    assert w.capacity >= 151 and w.nbytes == w.capacity * NCOLS * 8
    w.add(steady(duration=60.0))
    assert len(w) == w.capacity
    np.testing.assert_array_equal(w.rows(), steady(duration=60.0)[-w.capacity:])
    m = run(w.rows())
    assert m["samples"] == 151


# --- hysteresis -----------------------------------------------------------------------------

def test_verdicts_through_hysteresis():
    """breach_after=2, clear_after=3: BREACH on the 2nd bad window in a row, CLEAR on the 3rd good."""
    h = Hysteresis(breach_after=2, clear_after=3)
    sla = SLA(SLA_BPS)
    fractions = [1.0, 0.5, 1.0, 0.5, 0.5, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    expected = [None, None, None, None, BREACH, None, None, None, None, None, None, CLEAR, None]
    got = []
    for i, fraction in enumerate(fractions):
        rows = steady(fraction, start=i * WINDOW)
        (v,) = verdicts(analyze(rows, now_of(rows), WINDOW, SLA_BPS), sla, "a->b")
        got.append(h.update(v.key, v.bad))
    assert got == expected


# --- a saturated ACK path -------------------------------------------------------------------

def saturating(fraction):
    """Metrics of a window that kept data in flight all along and delivered `fraction` of the SLA."""
    m = run(steady(fraction, busy_time_us=np.arange(151) * 100_000))
    assert m["limited_by"] == "network"
    return m


def test_the_other_direction_saturating_the_ack_path_withholds_delivery_verdicts_for_a_window():
    """a->b at 47 % keeps the A->B queue full; b->a, whose ACKs cross it, dips to 80 %:
    b->a's delivery verdicts are withheld until its window no longer overlaps that time."""
    guard, sla = AckPathGuard(WINDOW), SLA(SLA_BPS, max_rtt=0.01)
    ab, ba = saturating(0.47), run(steady(0.8))
    guard.update("a->b", ab, sla, T0)
    guard.update("b->a", ba, sla, T0)
    assert guard.withheld_by("b->a", ba, T0) == "a->b"
    assert guard.withheld_by("a->b", ab, T0) is None           # a->b itself is judged
    kept = by_metric(verdicts(ba, SLA(SLA_BPS, max_rtt=0.01, min_fitness=0.9, max_angle=0.1), "b->a",
                              withhold=DELIVERY_METRICS))
    assert set(kept) == {"rtt"} and kept["rtt"].bad             # RTT is still judged
    window_ns = round(WINDOW * 1e9)
    assert guard.withheld_by("b->a", ba, T0 + window_ns) == "a->b"
    assert guard.withheld_by("b->a", ba, T0 + window_ns + 1) is None


@pytest.mark.parametrize("ab_fraction, ab_busy, ba_fraction, withheld", [
    (0.47, True, 0.8, True),      # the case above
    (0.47, True, 0.40, False),    # b->a delivers even less: its own path is the worse, judge it
    (0.47, False, 0.8, False),    # a->b short because our host did not feed it: no queue on the path
    (0.97, True, 0.8, False),     # a->b meets its SLA: not saturating
])
def test_withholding_needs_the_other_direction_network_limited_and_worse(ab_fraction, ab_busy, ba_fraction,
                                                                        withheld):
    guard, sla = AckPathGuard(WINDOW), SLA(SLA_BPS)
    ab = saturating(ab_fraction) if ab_busy and ab_fraction < 0.95 else run(steady(ab_fraction, busy_time_us=0))
    ba = run(steady(ba_fraction))
    for d, m in (("a->b", ab), ("b->a", ba)):
        guard.update(d, m, sla, T0)
    assert (guard.withheld_by("b->a", ba, T0) == "a->b") is withheld


def test_a_path_limited_both_ways_still_breaches_in_its_worse_direction():
    guard, sla = AckPathGuard(WINDOW), SLA(SLA_BPS)
    ab, ba = saturating(0.5), saturating(0.6)
    for d, m in (("a->b", ab), ("b->a", ba)):
        guard.update(d, m, sla, T0)
    judged = [d for d, m in (("a->b", ab), ("b->a", ba)) if guard.withheld_by(d, m, T0) is None]
    assert judged == ["a->b"]
    assert by_metric(verdicts(ab, sla, "a->b"))["rate"].bad


# --- properties -----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**7), min_size=3, max_size=200), st.floats(1e3, 1e10))
def test_angle_matches_ratio(increments, sla_bps):
    t = np.arange(len(increments)) * 0.1
    rows = series(t, np.cumsum(increments))
    m = analyze(rows, now_of(rows), 3600.0, sla_bps)
    if t[-1] < 1.0:
        assert m is None
        return
    assert m["ratio"] == pytest.approx(m["rate"] / sla_bps)
    assert m["angle"] == pytest.approx(math.atan(m["ratio"]) - math.pi / 4, abs=1e-12)
    if abs(m["ratio"] - 1) > 1e-9:
        assert (m["angle"] < 0) == (m["ratio"] < 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 40),
       st.lists(st.tuples(st.integers(0, 60), st.integers(-1, 2)), max_size=30),
       st.lists(st.integers(0, 29), max_size=3))
def test_ring_memory_is_bounded_and_holds_the_newest_rows_of_the_current_epoch(capacity, batches, disconnects):
    w = SampleWindow(capacity)
    nbytes = w.nbytes
    held, epoch, closed, counter = [], None, False, 0
    for i, (size, bump) in enumerate(batches):
        if i in disconnects:
            w.mark_disconnected(T0 + counter)
            held, closed = [], True
        batch_epoch = max(1, (epoch or 1) + bump)
        rows = series(np.arange(counter, counter + size) * 0.1, np.arange(size), epoch=batch_epoch)
        counter += size
        w.add(rows)
        if size:
            if epoch is None or batch_epoch > epoch:
                held, epoch, closed = [], batch_epoch, False
            if batch_epoch == epoch and not closed:
                held = (held + list(map(tuple, rows)))[-capacity:]
        assert len(w) <= w.capacity == capacity and w.nbytes == nbytes
        assert [tuple(r) for r in w.rows()] == held
        assert (w.rows()[:, COL["epoch"]] == epoch).all()
