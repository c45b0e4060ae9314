"""Per-flow summaries and per-interval aggregates of the `flows` probe (sans-IO).

Per flow (cgmon's analyzer, with its bugs fixed): sample weights, the RTT
and RTT-variance seven-number summaries, weighted Pearson and Spearman
correlations of cwnd against RTT, retransmit rate and pacing rate over the
time-ordered series (cgmon correlated the sorted RTTs), and of RTT against
the cwnd one RTT earlier (corr_rtt_cwnd_aligned: what the RTT sample's packet
was sent under, so queueing delay lines up with the window that built the
queue), flags, minima,
maxima, throughput (Python ints: no overflow). Two output forms:

- native: base units (s, bit/s, bytes); an undefined statistic is null,
  with its reason under "nulls";
- cgmon: cgmon 0.2's field names and units (ms, Mbit/s), -3 for a
  correlation over <= 1 sample and -2 for any other undefined one, cgmon's
  weights (the gap *before* each sample, in intervals; w0 = their median).

Native weights are the time each stored value held: t[i+1] - t[i], and for
the last one until the flow was last seen plus one interval.

Per interval and group (remote prefix or port group): flows seen, RTT
p50/p99 over every (socket, dump) observation, retransmitted share of
segments sent, receive-side out-of-order packets; SLA verdicts.
"""
import datetime
import ipaddress
import math
from dataclasses import dataclass

import numpy as np

from netprobe.probes.flows.tracker import COL
from netprobe.results import iso_time, nbytes, percent, rate, seconds
from netprobe.stats import correlation
from netprobe.stats.summary import seven_number, weighted_quantiles

TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_ECN, TCPI_OPT_ECN_SEEN = 1, 2, 4, 8, 16
CGMON_TOO_FEW, CGMON_UNDEFINED = -3, -2
CORRELATIONS = (("rtt", "cwnd"), ("retrans", "cwnd"), ("pacing", "cwnd"))


@dataclass(frozen=True)
class Options:
    interval: float = 1.0                 # sampling interval (s): the weights' unit, the last sample's tail
    mode: str = "native"                  # native | cgmon
    cumulant_kind: str = "lininterp"      # lininterp | empirical
    weighted_quantiles: bool = True
    weighted_correlations: bool = True


def address(family, raw):
    """Text form of an inet_diag address (16 bytes, IPv4 in the first 4)."""
    return str(ipaddress.IPv4Address(raw[:4]) if family == 2 else ipaddress.IPv6Address(raw[:16]))


def weights_native(t_ns, last_ns, interval):
    """Seconds each stored value held (the last: until last seen + one interval)."""
    t = np.asarray(t_ns, dtype=np.int64)
    if t.size == 0:
        return np.empty(0)
    w = np.empty(t.size)
    w[:-1] = np.diff(t) / 1e9
    w[-1] = (last_ns - t[-1]) / 1e9 + interval
    return w


def weights_cgmon(t_ns, interval):
    """cgmon: w[i] = (t[i] - t[i-1]) / interval; w[0] = lininterp median of w[1:]; 0 for one sample."""
    t = np.asarray(t_ns, dtype=np.int64)
    if t.size <= 1:
        return np.zeros(t.size)
    w = np.empty(t.size)
    w[1:] = np.diff(t) / (interval * 1e9)
    w[0] = float(weighted_quantiles(w[1:], None, [0.5], "lininterp")[0])
    return w


def series(samples):
    """The time-ordered series the correlations use: rtt (ms), cwnd (bytes), retrans/s, pacing (B/s)."""
    s = np.asarray(samples, dtype=np.int64)
    t = s[:, COL["t_ns"]]
    rtt = s[:, COL["tcpi_rtt"]] / 1000.0
    cwnd = (s[:, COL["tcpi_snd_cwnd"]] * s[:, COL["tcpi_snd_mss"]]).astype(np.float64)
    retrans = np.zeros(len(s))
    if len(s) > 1:
        dt = np.diff(t) / 1e9
        retrans[1:] = np.diff(s[:, COL["tcpi_total_retrans"]]) / np.where(dt > 0, dt, np.inf)
    pacing = s[:, COL["tcpi_pacing_rate"]].astype(np.float64)
    pacing[s[:, COL["tcpi_pacing_rate"]] < 0] = np.nan        # ~0: no pacing rate
    return {"t": t, "rtt": rtt, "cwnd": cwnd, "retrans": retrans, "pacing": pacing}


def aligned_cwnd(t_ns, rtt_ms, cwnd):
    """cwnd in force one RTT before each sample (the stored series is a step function): an RTT
    sample times a packet sent one RTT earlier, under the cwnd of then. NaN before the first sample."""
    t = np.asarray(t_ns, dtype=np.int64)
    j = np.searchsorted(t, t - np.round(np.asarray(rtt_ms) * 1e6).astype(np.int64), side="right") - 1
    out = np.asarray(cwnd, dtype=np.float64)[np.maximum(j, 0)]
    out[j < 0] = np.nan
    return out


def _corr(fn, x, y, w):
    if np.isnan(x).any() or np.isnan(y).any():
        return None, "pacing_unset"
    return fn(x, y, w)


def _mbps(bytes_, ns):
    """Throughput in Mbit/s from Python ints (cgmon's 1e9 * BytesAcked overflowed a uint64)."""
    return None if ns <= 0 else (int(bytes_) * 8 * 1_000_000_000 // int(ns)) / 1e6


def summarize(ended, opts):
    """The record fields of one ended (or still open) flow, in opts.mode's form."""
    flow = ended.flow
    s = flow.samples()
    n = len(s)
    ser = series(s)
    cg = opts.mode == "cgmon"
    w = weights_cgmon(ser["t"], opts.interval) if cg else weights_native(ser["t"], flow.last_ns, opts.interval)
    wq = w if opts.weighted_quantiles else None
    wc = w if opts.weighted_correlations else None
    opt_bits = int(np.bitwise_or.reduce(s[:, COL["tcpi_options"]])) if n else 0
    last = s[-1]
    rttvar_ms = s[:, COL["tcpi_rttvar"]] / 1000.0
    rtt_sum = seven_number(ser["rtt"], wq, opts.cumulant_kind)
    rttvar_sum = seven_number(rttvar_ms, wq, opts.cumulant_kind)
    corrs = {}
    if n < 2:                      # one stored sample (most short or idle flows): nothing to correlate
        fns = ()
        corrs = {key: (None, correlation.TOO_FEW) for key in
                 [f"{kind}_{x}_{y}" for kind in ("corr", "spearman") for x, y in CORRELATIONS]
                 + ["corr_rtt_cwnd_aligned"]}
    else:
        fns = (("corr", correlation.weighted_pearson), ("spearman", correlation.spearman))
    for kind, fn in fns:
        for x, y in CORRELATIONS:
            corrs[f"{kind}_{x}_{y}"] = _corr(fn, ser[x], ser[y], wc)
    if n >= 2:
        before = aligned_cwnd(ser["t"], ser["rtt"], ser["cwnd"])
        ok = ~np.isnan(before)
        corrs["corr_rtt_cwnd_aligned"] = correlation.weighted_pearson(
            ser["rtt"][ok], before[ok], None if wc is None else wc[ok])
    pacing_ok = s[:, COL["tcpi_pacing_rate"]] >= 0
    max_pacing = int(s[pacing_ok, COL["tcpi_pacing_rate"]].max()) if pacing_ok.any() else None
    if cg:
        return _cgmon_fields(flow, ended, s, n, opt_bits, rtt_sum, rttvar_sum, corrs, max_pacing)

    nulls = {}

    def value(key, got):
        v, why = got
        if v is None:
            nulls[key] = why
        return v

    duration = (flow.last_ns - flow.first_ns) / 1e9
    acked = int(last[COL["tcpi_bytes_acked"]]) - int(s[0, COL["tcpi_bytes_acked"]])
    kernel_max_pacing = int(last[COL["tcpi_max_pacing_rate"]])
    fields = {
        "flow": flow.cookie, "family": 4 if flow.family == 2 else 6,
        "src": address(flow.family, flow.src), "sport": flow.sport,
        "dst": address(flow.family, flow.dst), "dport": flow.dport,
        "ca": flow.ca_name or None, "segment": flow.segment, "end_reason": ended.reason,
        "partial": flow.partial, "start": iso_time(flow.start_wall), "end": iso_time(ended.end_wall),
        "duration": seconds(duration), "samples": n, "samples_deduped": flow.deduped,
        "timestamps": bool(opt_bits & TCPI_OPT_TIMESTAMPS), "sack": bool(opt_bits & TCPI_OPT_SACK),
        "ecn": bool(opt_bits & TCPI_OPT_ECN), "ecn_seen": bool(opt_bits & TCPI_OPT_ECN_SEEN),
        "min_rtt_kernel": seconds(last[COL["tcpi_min_rtt"]] / 1e6),
        "min_rtt_observed": seconds(s[:, COL["tcpi_rtt"]].min() / 1e6),
        "max_pacing_rate": None if max_pacing is None else rate(max_pacing * 8),
        "max_pacing_rate_kernel": None if kernel_max_pacing < 0 else rate(kernel_max_pacing * 8),
        "rtt_summary": [round(v / 1000.0, 9) for v in rtt_sum],
        "rttvar_summary": [round(v / 1000.0, 9) for v in rttvar_sum],
    }
    bbr = s[:, COL["bbr_bw"]] > 0
    if bbr.any():                  # as ss shows bbr:(bw,mrtt): only for flows that ran bbr
        bw = s[bbr, COL["bbr_bw"]]
        # the estimate most of the flow ran on (its maximum is startup's, often a burst the
        # bottleneck's buffer let through at line rate)
        p50 = weighted_quantiles(bw.astype(np.float64), None if wq is None else wq[bbr], [0.5], opts.cumulant_kind)[0]
        fields.update(bbr_bw=rate(int(bw[-1]) * 8), bbr_bw_p50=rate(p50 * 8),
                      bbr_min_rtt=seconds(int(s[bbr, COL["bbr_min_rtt"]][-1]) / 1e6))
    if max_pacing is None:
        nulls["max_pacing_rate"] = "pacing_unset"
    if kernel_max_pacing < 0:
        nulls["max_pacing_rate_kernel"] = "unlimited"
    for key, got in corrs.items():
        fields[key] = None if got[0] is None else round(got[0], 6)
        value(key, got)
    fields.update({
        "total_retrans": int(last[COL["tcpi_total_retrans"]]),
        "bytes_acked": nbytes(int(last[COL["tcpi_bytes_acked"]])),
        "bytes_acked_observed": nbytes(acked),
        "bytes_retrans": nbytes(int(last[COL["tcpi_bytes_retrans"]])),
        "rcv_ooopack": int(last[COL["tcpi_rcv_ooopack"]]),
        "delivered_ce": int(last[COL["tcpi_delivered_ce"]]),
        "send_throughput": None if duration <= 0 else rate(acked * 8 / duration),
    })
    if duration <= 0:
        nulls["send_throughput"] = "one_sample"
    if nulls:
        fields["nulls"] = nulls
    return fields


def _rfc3339(ts):
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat()


def _cgmon_fields(flow, ended, s, n, opt_bits, rtt_sum, rttvar_sum, corrs, max_pacing):
    def corr(key):
        v = corrs[key][0]
        if n <= 1:
            return CGMON_TOO_FEW
        return CGMON_UNDEFINED if v is None else v
    last = s[-1]
    acked = int(last[COL["tcpi_bytes_acked"]])
    wall_ns = round((ended.end_wall - flow.start_wall) * 1e9)
    return {
        "ID": {"SrcIP": address(flow.family, flow.src), "SrcPort": flow.sport,
               "DstIP": address(flow.family, flow.dst), "DstPort": flow.dport, "TstampStartNs": flow.first_ns},
        "StartTime": _rfc3339(flow.start_wall), "EndTime": _rfc3339(ended.end_wall),
        "Duration": int(flow.last_ns - flow.first_ns), "Samples": n, "SamplesDeduped": flow.deduped,
        "Partial": flow.partial,
        "Timestamps": bool(opt_bits & TCPI_OPT_TIMESTAMPS), "SACK": bool(opt_bits & TCPI_OPT_SACK),
        "ECN": bool(opt_bits & TCPI_OPT_ECN), "ECNSeen": bool(opt_bits & TCPI_OPT_ECN_SEEN),
        "MinRTTKernelms": last[COL["tcpi_min_rtt"]] / 1000.0,
        "MinRTTObservedms": s[:, COL["tcpi_rtt"]].min() / 1000.0,
        "MaxPacingRateKernelMbps": 0,
        "MaxPacingRateObservedMbps": 0.0 if max_pacing is None else max_pacing * 8 / 1e6,
        "RTTSummary": rtt_sum, "RTTVarSummary": rttvar_sum,
        "CorrRTTCwnd": corr("corr_rtt_cwnd"), "CorrRetransCwnd": corr("corr_retrans_cwnd"),
        "CorrPacingCwnd": corr("corr_pacing_cwnd"),
        "TotalRetransmits": int(last[COL["tcpi_total_retrans"]]), "BytesAcked": acked,
        "SendThroughputMbps": _mbps(acked, wall_ns) or 0.0,
    }


# -- interval aggregates per group ------------------------------------------------------------------

class Grouper:
    """Assigns each socket a group: the first matching remote prefix, else the first port group
    (local or remote port in it), else "other"; with no groups configured, "all"."""

    def __init__(self, prefixes=(), port_groups=()):
        self.prefixes = [ipaddress.ip_network(p, strict=False) for p in prefixes]
        self.port_groups = list(port_groups)          # (name, ((lo, hi), ...))
        self.names = [str(p) for p in self.prefixes] + [name for name, _ in self.port_groups]
        self.names.append("other" if self.names else "all")

    def assign(self, records):
        """Group index (into self.names) of each record."""
        n = len(records)
        out = np.full(n, len(self.names) - 1, dtype=np.int32)
        if not n or len(self.names) == 1:           # no groups configured: all in "all"
            return out
        fam = records["idiag_family"]
        dst = np.frombuffer(records["idiag_dst"].tobytes(), dtype=np.uint8).reshape(n, 16)
        unset = np.ones(n, bool)
        for gi, net in enumerate(self.prefixes):
            if net.version == 4:
                addr = dst[:, :4]
                mapped = (fam == 10) & (dst[:, :10] == 0).all(axis=1) & (dst[:, 10:12] == 0xff).all(axis=1)
                addr = np.where(mapped[:, None], dst[:, 12:16], addr)
                fam_ok = (fam == 2) | mapped
            else:
                addr = dst
                fam_ok = fam == 10
            hit = fam_ok & _prefix_match(addr, net) & unset
            out[hit] = gi
            unset &= ~hit
        base = len(self.prefixes)
        sport, dport = records["idiag_sport"], records["idiag_dport"]
        for k, (_, ranges) in enumerate(self.port_groups):
            inside = np.zeros(n, bool)
            for lo, hi in ranges:
                inside |= ((sport >= lo) & (sport <= hi)) | ((dport >= lo) & (dport <= hi))
            hit = inside & unset
            out[hit] = base + k
            unset &= ~hit
        return out


def _prefix_match(addr, net):
    want = np.frombuffer(net.network_address.packed, dtype=np.uint8)
    full, rest = divmod(net.prefixlen, 8)
    ok = (addr[:, :full] == want[:full]).all(axis=1)
    if rest:
        mask = (0xff << (8 - rest)) & 0xff
        ok &= (addr[:, full] & mask) == (want[full] & mask)
    return ok


RTT_BINS = 12288     # tcpi_rtt (us) histogram bins: exact below 1024 us, 1/512 relative width above


def rtt_bins(rtt_us):
    """HDR-style bin of each RTT in us (10 significant bits: 0-1023 exact, then 512 bins per octave)."""
    v = np.asarray(rtt_us, dtype=np.int64)
    e = np.maximum(np.frexp(v.astype(np.float64))[1] - 10, 0)
    return np.where(e == 0, v, 1024 + (e - 1) * 512 + ((v >> e) - 512))


def bin_value(b):
    """The middle of bin b in us (its exact value below 1024)."""
    b = np.asarray(b, dtype=np.int64)
    e = np.where(b < 1024, 0, (b - 1024) // 512 + 1)
    m = np.where(b < 1024, b, (b - 1024) % 512 + 512)
    return (m << e) + ((1 << e) - 1) / 2


def hist_quantiles(counts, qs):
    """Percentiles `qs` of the values a bin histogram counts, interpolated between order statistics
    as numpy.percentile does; NaN when empty."""
    n = int(counts.sum())
    if n == 0:
        return [math.nan] * len(qs)
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        h = (n - 1) * q / 100
        lo = int(h)
        v0, v1 = bin_value(np.searchsorted(cum, [lo, min(lo + 1, n - 1)], side="right"))
        out.append(float(v0 + (h - lo) * (v1 - v0)))
    return out


class IntervalAggregate:
    """Accumulates one interval's dumps in fixed memory per group; result() gives per-group figures:
    distinct sockets (those of the first dump plus each new one), RTT p50/p99 over every socket of every
    dump (histogram: exact below 1.024 ms, within 0.1 % above), and the counters' increments."""

    def __init__(self, ngroups):
        self.ngroups = ngroups
        self.hist = np.zeros((ngroups, RTT_BINS), dtype=np.int64)
        self.flows = np.zeros(ngroups, dtype=np.int64)
        self.sums = np.zeros((ngroups, 4), dtype=np.int64)   # d_retrans, d_segs_out, d_ooo, d_segs_in
        self.dumps = 0

    def add(self, groups, delta):
        """One dump: each socket's group (index into the grouper's names) and the tracker's Delta."""
        g = self.ngroups
        self.flows += np.bincount(groups if self.dumps == 0 else groups[delta.new], minlength=g)
        self.dumps += 1
        self.hist += np.bincount(rtt_bins(delta.rtt_us) + groups * RTT_BINS, minlength=g * RTT_BINS).reshape(g, -1)
        vals = np.maximum(np.stack((delta.d_retrans, delta.d_segs_out, delta.d_ooo, delta.d_segs_in)), 0)
        if g == 1:                                  # no groups configured: plain integer sums
            self.sums[0] += vals.sum(axis=1)
        else:
            for k in range(4):
                self.sums[:, k] += np.bincount(groups, weights=vals[k], minlength=g).astype(np.int64)

    def result(self):
        """{group index: figures} for every group that had a socket in the interval."""
        out = {}
        for g in np.flatnonzero(self.flows):
            p50, p99 = (v / 1e6 for v in hist_quantiles(self.hist[g], [50, 99]))
            d_retrans, d_out, d_ooo, d_in = (int(v) for v in self.sums[g])
            out[int(g)] = {"flows": int(self.flows[g]), "rtt_p50": p50, "rtt_p99": p99,
                           "retrans": d_retrans, "segs_out": d_out,
                           "retrans_pct": 100.0 * d_retrans / d_out if d_out else None,
                           "rcv_ooopack": d_ooo, "segs_in": d_in,
                           "rcv_ooo_pct": 100.0 * d_ooo / d_in if d_in else None}
        return out


@dataclass(frozen=True)
class Verdict:
    metric: str
    bad: bool
    value: object
    op: str
    threshold: object


def verdicts(fig, sla):
    """SLA verdicts of one group's interval figures. sla: max_rtt_p99 (s), max_retrans_pct, max_rcv_ooo_pct."""
    out = []
    if sla.get("max_rtt_p99") is not None and not math.isnan(fig["rtt_p99"]):
        out.append(Verdict("rtt_p99", fig["rtt_p99"] > sla["max_rtt_p99"], seconds(fig["rtt_p99"]), "<=",
                           seconds(sla["max_rtt_p99"])))
    if sla.get("max_retrans_pct") is not None and fig["retrans_pct"] is not None:
        out.append(Verdict("retrans", fig["retrans_pct"] > sla["max_retrans_pct"], percent(fig["retrans_pct"]),
                           "<=", percent(sla["max_retrans_pct"])))
    if sla.get("max_rcv_ooo_pct") is not None and fig["rcv_ooo_pct"] is not None:
        out.append(Verdict("rcv_ooo", fig["rcv_ooo_pct"] > sla["max_rcv_ooo_pct"], percent(fig["rcv_ooo_pct"]),
                           "<=", percent(sla["max_rcv_ooo_pct"])))
    return out


def aggregate_fields(name, fig, window):
    return {"group": name, "flows": fig["flows"], "rtt_p50": seconds(fig["rtt_p50"]),
            "rtt_p99": seconds(fig["rtt_p99"]), "retrans": fig["retrans"],
            "retrans_pct": None if fig["retrans_pct"] is None else percent(round(fig["retrans_pct"], 4)),
            "rcv_ooopack": fig["rcv_ooopack"],
            "rcv_ooo_pct": None if fig["rcv_ooo_pct"] is None else percent(round(fig["rcv_ooo_pct"], 4)),
            "window": seconds(window)}
