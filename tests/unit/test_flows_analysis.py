"""Per-flow summaries and interval aggregates of the flows probe (sans-IO), checked against
numpy/scipy on synthetic series, in both output forms (native nulls, cgmon sentinels)."""
import math
import socket

import numpy as np
import pytest
import scipy.stats

from netprobe.errors import load_extension
from netprobe.probes.flows import analysis
from netprobe.probes.flows.tracker import Tracker
from netprobe.results import Quantity
from tests.reference.flows_stats import gonum_quantile, weighted_inverted_cdf

nl = load_extension("_nldiag")
S = 1_000_000_000
NATIVE = analysis.Options(interval=1.0)
CGMON = analysis.Options(interval=1.0, mode="cgmon")


def flow_of(samples, times=None, family=socket.AF_INET, options=0x3):
    """Run one socket through a tracker: samples are dicts of tcpi_* values at times (s)."""
    t = Tracker()
    times = times or list(range(1, len(samples) + 1))
    for ts, s in zip(times, samples, strict=True):
        r = np.zeros(1, dtype=nl.RECORD_DTYPE)
        r["idiag_family"] = family
        r["idiag_cookie"] = 42
        r["idiag_sport"], r["idiag_dport"] = 50000, 443
        if family == socket.AF_INET:
            r["idiag_src"] = socket.inet_aton("192.0.2.1") + bytes(12)
            r["idiag_dst"] = socket.inet_aton("198.51.100.2") + bytes(12)
        else:
            r["idiag_src"] = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
            r["idiag_dst"] = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
        r["ca_name"] = b"cubic"
        r["tcpi_snd_mss"], r["tcpi_options"] = 1000, options
        r["tcpi_pacing_rate"] = s.get("tcpi_pacing_rate", 1_000_000)
        for k, v in s.items():
            r[k] = v
        r["t_ns"] = round(ts * S)
        t.update(r, round(ts * S), wall=1000.0 + ts)
    ended, _ = t.update(np.zeros(0, dtype=nl.RECORD_DTYPE), round((times[-1] + 1) * S), wall=1000.0 + times[-1] + 1)
    return ended[0]


def test_correlation_runs_on_the_time_series_not_sorted_rtts():
    rtt = [5000, 1000, 4000, 2000, 3000]
    cwnd = [10, 50, 20, 40, 30]                       # exactly opposite to RTT in time order
    e = flow_of([{"tcpi_rtt": r, "tcpi_snd_cwnd": c} for r, c in zip(rtt, cwnd, strict=True)])
    f = analysis.summarize(e, NATIVE)
    assert f["corr_rtt_cwnd"] == pytest.approx(-1.0) and f["spearman_rtt_cwnd"] == pytest.approx(-1.0)
    # cgmon's bug correlated sorted RTTs with time-ordered cwnd: +0.3 here, not -1
    assert scipy.stats.pearsonr(sorted(rtt), cwnd).statistic == pytest.approx(0.3)


def test_native_fields_against_numpy():
    rng = np.random.default_rng(3)
    n = 40
    times = np.cumsum(rng.uniform(0.5, 3.0, n))           # irregular gaps: change-only storage
    rtt = rng.integers(1000, 50000, n)
    cwnd = rng.integers(2, 100, n)
    pacing = rng.integers(10**5, 10**8, n)
    retrans = np.cumsum(rng.integers(0, 3, n))
    acked = np.cumsum(rng.integers(1, 10**6, n))
    samples = [{"tcpi_rtt": int(rtt[i]), "tcpi_rttvar": int(rtt[i] // 4), "tcpi_snd_cwnd": int(cwnd[i]),
                "tcpi_pacing_rate": int(pacing[i]), "tcpi_total_retrans": int(retrans[i]),
                "tcpi_bytes_acked": int(acked[i]), "tcpi_min_rtt": 900} for i in range(n)]
    e = flow_of(samples, list(times))
    f = analysis.summarize(e, NATIVE)
    w = np.r_[np.diff(times), 1.0]                        # each value held until the next; the last one interval
    cw = cwnd * 1000.0
    cov = np.cov(rtt / 1000.0, cw, aweights=w)
    assert f["corr_rtt_cwnd"] == pytest.approx(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]), abs=1e-6)
    rate = np.r_[0.0, np.diff(retrans) / np.diff(times)]
    cov = np.cov(rate, cw, aweights=w)
    assert f["corr_retrans_cwnd"] == pytest.approx(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]), abs=1e-6)
    cov = np.cov(pacing.astype(float), cw, aweights=w)
    assert f["corr_pacing_cwnd"] == pytest.approx(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]), abs=1e-6)
    unweighted = analysis.summarize(e, analysis.Options(interval=1.0, weighted_correlations=False))
    assert unweighted["spearman_rtt_cwnd"] == pytest.approx(scipy.stats.spearmanr(rtt, cwnd).statistic, abs=1e-6)
    # the seven-number summary, empirical kind: numpy's weighted inverted CDF (in seconds)
    emp = analysis.summarize(e, analysis.Options(interval=1.0, cumulant_kind="empirical"))
    want = weighted_inverted_cdf(rtt / 1e6, w, [0.02, 0.09, 0.25, 0.5, 0.75, 0.91, 0.98])
    np.testing.assert_allclose(emp["rtt_summary"], want, rtol=1e-9)
    assert f["samples"] == n and f["min_rtt_observed"] == Quantity(rtt.min() / 1e6, "s")
    assert f["min_rtt_kernel"] == Quantity(900e-6, "s")
    assert f["max_pacing_rate"] == Quantity(float(pacing.max() * 8), "bit/s")
    assert f["total_retrans"] == retrans[-1] and f["bytes_acked"].value == acked[-1]
    assert f["duration"].value == pytest.approx(times[-1] - times[0])
    assert f["send_throughput"].value == pytest.approx((acked[-1] - acked[0]) * 8 / (times[-1] - times[0]))
    assert (f["src"], f["dst"], f["sport"], f["dport"], f["ca"]) == ("192.0.2.1", "198.51.100.2", 50000, 443, "cubic")
    assert f["timestamps"] and f["sack"] and not f["ecn"] and "nulls" not in f
    assert not any(k.startswith("bbr_") for k in f)        # cubic: no BBR model, no BBR fields


def test_bbr_model_fields_against_numpy():
    rng = np.random.default_rng(5)
    n = 30
    bw = rng.integers(10**5, 10**7, n)                    # bytes/s, as the kernel's tcp_bbr_info
    mrtt = rng.integers(100, 20000, n)                    # us
    samples = [{"tcpi_rtt": 1000 + i, "tcpi_snd_cwnd": 10, "bbr_bw": int(bw[i]), "bbr_min_rtt": int(mrtt[i]),
                "has_bbr": 1} for i in range(n)]
    times = list(np.cumsum(rng.uniform(0.5, 3.0, n)))
    f = analysis.summarize(flow_of(samples, times), NATIVE)
    w = np.r_[np.diff(times), 1.0]                        # each estimate held until the next
    want = weighted_inverted_cdf(bw * 8.0, w, [0.5])[0]   # the weighted median, empirical kind
    emp = analysis.summarize(flow_of(samples, times), analysis.Options(interval=1.0, cumulant_kind="empirical"))
    assert emp["bbr_bw_p50"].value == pytest.approx(want, rel=1e-12)
    order = np.argsort(bw, kind="stable")                # the default kind: gonum's lininterp
    assert f["bbr_bw_p50"].value == pytest.approx(gonum_quantile(0.5, "lininterp", bw[order] * 8.0, w[order]),
                                                  rel=1e-9)      # the tracker keeps times in whole ns
    assert f["bbr_bw"] == Quantity(float(bw[-1] * 8), "bit/s")
    assert f["bbr_min_rtt"] == Quantity(mrtt[-1] / 1e6, "s")
    # a flow that switched to bbr after connect() (iperf3 -C does): only its bbr samples count
    first = [{"tcpi_rtt": 900 + i, "tcpi_snd_cwnd": 10} for i in range(3)]
    f = analysis.summarize(flow_of(first + samples[:1]), NATIVE)
    assert f["bbr_bw_p50"] == Quantity(float(bw[0] * 8), "bit/s")


def test_degenerate_flows_give_nulls_with_reasons_and_cgmon_sentinels():
    one = flow_of([{"tcpi_rtt": 1000, "tcpi_snd_cwnd": 10}])
    f = analysis.summarize(one, NATIVE)
    assert f["corr_rtt_cwnd"] is None and f["nulls"]["corr_rtt_cwnd"] == "too_few_samples"
    assert f["send_throughput"] is None and f["nulls"]["send_throughput"] == "one_sample"
    assert f["rtt_summary"] == [0.001] * 7
    c = analysis.summarize(one, CGMON)
    assert (c["CorrRTTCwnd"], c["CorrRetransCwnd"], c["CorrPacingCwnd"]) == (-3, -3, -3)

    flat = flow_of([{"tcpi_rtt": r, "tcpi_snd_cwnd": 10} for r in (1000, 2000, 3000)])
    f = analysis.summarize(flat, NATIVE)
    assert f["nulls"]["corr_rtt_cwnd"] == "constant_series" and f["corr_rtt_cwnd"] is None
    c = analysis.summarize(flat, CGMON)
    assert c["CorrRTTCwnd"] == -2 and c["CorrRetransCwnd"] == -2

    unpaced = flow_of([{"tcpi_rtt": r, "tcpi_snd_cwnd": r, "tcpi_pacing_rate": 2**64 - 1} for r in (1, 2, 3)])
    f = analysis.summarize(unpaced, NATIVE)
    assert f["nulls"]["corr_pacing_cwnd"] == "pacing_unset" and f["max_pacing_rate"] is None
    assert f["corr_rtt_cwnd"] == pytest.approx(1.0)


def test_cgmon_form_weights_and_fields():
    times = [1.0, 2.0, 4.0, 5.0]                      # gaps before samples 1..3: 1, 2, 1 -> w0 = lininterp median 1
    e = flow_of([{"tcpi_rtt": r, "tcpi_snd_cwnd": 10 + r, "tcpi_bytes_acked": 25 * 10**9, "tcpi_min_rtt": 800}
                 for r in (1000, 2000, 3000, 4000)], times, family=socket.AF_INET6, options=0x1b)
    np.testing.assert_allclose(analysis.weights_cgmon(np.array(times) * 1e9, 1.0), [1.0, 1.0, 2.0, 1.0])
    c = analysis.summarize(e, CGMON)
    assert list(c) == ["ID", "StartTime", "EndTime", "Duration", "Samples", "SamplesDeduped", "Partial",
                       "Timestamps", "SACK", "ECN", "ECNSeen", "MinRTTKernelms", "MinRTTObservedms",
                       "MaxPacingRateKernelMbps", "MaxPacingRateObservedMbps", "RTTSummary", "RTTVarSummary",
                       "CorrRTTCwnd", "CorrRetransCwnd", "CorrPacingCwnd", "TotalRetransmits", "BytesAcked",
                       "SendThroughputMbps"]
    assert c["ID"] == {"SrcIP": "2001:db8::1", "SrcPort": 50000, "DstIP": "2001:db8::2", "DstPort": 443,
                       "TstampStartNs": 1 * S}
    assert c["Duration"] == 4 * S and c["Samples"] == 4 and c["Partial"]
    assert (c["Timestamps"], c["SACK"], c["ECN"], c["ECNSeen"]) == (True, True, True, True)
    assert c["MinRTTKernelms"] == 0.8 and c["MinRTTObservedms"] == 1.0 and c["CorrRTTCwnd"] == pytest.approx(1.0)
    # 25 GB acked: cgmon's uint64 1e9*BytesAcked overflowed; wall span 1001 -> 1006 s = 5 s
    assert c["BytesAcked"] == 25 * 10**9 and c["SendThroughputMbps"] == pytest.approx(25e9 * 8 / 5 / 1e6)
    assert (25 * 10**9 * 10**9) > 2**64


def test_grouper_prefixes_ports_and_v4_mapped():
    recs = np.zeros(5, dtype=nl.RECORD_DTYPE)
    dsts = [(socket.AF_INET, socket.inet_aton("10.1.2.3") + bytes(12), 5000),
            (socket.AF_INET6, bytes(10) + b"\xff\xff" + socket.inet_aton("10.9.9.9"), 6000),
            (socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "2001:db8:5::1"), 443),
            (socket.AF_INET, socket.inet_aton("192.0.2.1") + bytes(12), 2500),
            (socket.AF_INET, socket.inet_aton("192.0.2.1") + bytes(12), 9)]
    for r, (fam, dst, port) in zip(recs, dsts, strict=True):
        r["idiag_family"], r["idiag_dst"], r["idiag_dport"], r["idiag_sport"] = fam, dst, port, 40000
    g = analysis.Grouper(["10.0.0.0/12", "2001:db8::/33"], [("web", ((443, 443),)), ("app", ((2000, 3000),))])
    assert g.names == ["10.0.0.0/12", "2001:db8::/33", "web", "app", "other"]
    assert list(g.assign(recs)) == [0, 0, 1, 3, 4]
    assert analysis.Grouper().names == ["all"] and list(analysis.Grouper().assign(recs)) == [0] * 5


@pytest.mark.parametrize("ngroups", [1, 2])
def test_interval_aggregate_against_numpy(ngroups):
    from netprobe.probes.flows.tracker import Delta
    rng = np.random.default_rng(1)
    agg = analysis.IntervalAggregate(ngroups)
    group_of = {}                                   # cookie -> group; sockets come and go for good
    live, next_cookie, seen = [], 1, []
    for _ in range(5):
        live = [c for c in live if rng.random() > 0.2]
        prev = set(live)
        for _ in range(int(rng.integers(5, 20))):
            group_of[next_cookie] = int(rng.integers(0, ngroups))
            live.append(next_cookie)
            next_cookie += 1
        n = len(live)
        groups = np.array([group_of[c] for c in live], dtype=np.int32)
        # RTTs both in the exact range (< 1024 us) and above it
        d = Delta(index=np.arange(n), rtt_us=rng.integers(10, 100_000, n), d_retrans=rng.integers(0, 3, n),
                  d_segs_out=rng.integers(10, 100, n), d_ooo=rng.integers(0, 2, n), d_segs_in=rng.integers(5, 50, n),
                  new=np.array([c not in prev for c in live]))
        agg.add(groups, d)
        seen.append((groups, np.array(live), d))
    res = agg.result()
    for gi in range(ngroups):
        sel = [(g == gi, cookies, d) for g, cookies, d in seen]
        rtt = np.concatenate([d.rtt_us[m] for m, _, d in sel]) / 1e6
        fig = res[gi]
        # the histogram: exact below 1.024 ms, within half a bin (0.1 %) above
        assert fig["rtt_p50"] == pytest.approx(np.percentile(rtt, 50), rel=1e-3)
        assert fig["rtt_p99"] == pytest.approx(np.percentile(rtt, 99), rel=1e-3)
        assert fig["flows"] == len({int(c) for m, cookies, _ in sel for c in cookies[m]})
        retr = sum(int(d.d_retrans[m].sum()) for m, _, d in sel)
        out = sum(int(d.d_segs_out[m].sum()) for m, _, d in sel)
        assert fig["retrans_pct"] == pytest.approx(100 * retr / out)
        assert fig["rcv_ooopack"] == sum(int(d.d_ooo[m].sum()) for m, _, d in sel)
    v = analysis.verdicts(res[0], {"max_rtt_p99": 0.001, "max_retrans_pct": 100.0, "max_rcv_ooo_pct": None})
    assert [(x.metric, x.bad) for x in v] == [("rtt_p99", True), ("retrans", False)]


@pytest.mark.parametrize("values", [[5, 7, 7, 900], list(range(1000)), [3000, 5000, 2**32 - 1],
                                    [1023, 1024, 1025, 70_000]])
def test_rtt_histogram_quantiles_match_numpy_within_a_bin(values):
    h = np.bincount(analysis.rtt_bins(values), minlength=analysis.RTT_BINS)
    for q in (0, 1, 50, 99, 100):
        want = np.percentile(values, q)
        assert analysis.hist_quantiles(h, [q])[0] == pytest.approx(want, rel=1 / 1024, abs=1e-9)
    assert math.isnan(analysis.hist_quantiles(np.zeros(analysis.RTT_BINS, np.int64), [50])[0])


def test_aligned_cwnd_is_the_window_one_rtt_earlier():
    t = np.array([0, 10, 20, 30, 40]) * 1_000_000          # ns
    rtt_ms = np.array([5.0, 10.0, 15.0, 10.0, 25.0])
    cwnd = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    got = analysis.aligned_cwnd(t, rtt_ms, cwnd)
    # t - rtt: -5 (before the first sample), 0 -> 1, 5 -> 1, 20 -> 3, 15 -> 2
    assert np.isnan(got[0]) and list(got[1:]) == [1.0, 1.0, 3.0, 2.0]
    # a queue that follows the window with a lag of one RTT: aligned r = 1, zero-lag r lower
    n = 200
    times = np.arange(n) * 0.01
    w = 10 + 5 * np.sin(np.arange(n) / 6.0)
    rtt_us = np.empty(n)
    rtt_us[:3] = 20000
    rtt_us[3:] = 20000 + 1000 * (w[:-3] - 10)               # 30 ms later the queue reflects cwnd
    e = flow_of([{"tcpi_rtt": int(r), "tcpi_snd_cwnd": int(c)} for r, c in zip(rtt_us, np.round(w), strict=True)],
                list(times + 1))
    f = analysis.summarize(e, analysis.Options(interval=0.01))
    assert f["corr_rtt_cwnd_aligned"] > 0.9 > f["corr_rtt_cwnd"]
