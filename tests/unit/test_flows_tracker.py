"""The flows tracker (sans-IO) on synthetic dumps: keys, change-only storage, limits, segments, deltas."""
import socket

import numpy as np
import pytest

from netprobe.errors import load_extension
from netprobe.probes.flows.tracker import COL, SAMPLE_FIELDS, Tracker

nl = load_extension("_nldiag")
S = 1_000_000_000


def dump(*socks):
    """Records from dicts: cookie, sport, dport (defaults), and any tcpi_* / idiag_* field."""
    out = np.zeros(len(socks), dtype=nl.RECORD_DTYPE)
    for r, s in zip(out, socks, strict=True):
        r["idiag_family"] = s.get("family", socket.AF_INET)
        r["idiag_src"] = socket.inet_aton("10.0.0.1") + bytes(12)
        r["idiag_dst"] = socket.inet_aton(s.get("dst", "10.0.0.2")) + bytes(12)
        r["idiag_sport"] = s.get("sport", 1000 + s["cookie"])
        r["idiag_dport"] = s.get("dport", 443)
        r["tcpi_snd_mss"] = 1448
        for k, v in s.items():
            if k.startswith(("tcpi_", "idiag_cookie", "ca_name")):
                r[k] = v
        r["idiag_cookie"] = s["cookie"]
    return out


def upd(tracker, records, t_ns, wall=None):
    """A dump taken at t_ns (the parser stamps each record with its recv() time)."""
    records["t_ns"] = t_ns
    return tracker.update(records, t_ns, wall)


def test_change_only_storage_and_close():
    t = Tracker()
    ended, _ = upd(t, dump({"cookie": 1, "tcpi_rtt": 100}, {"cookie": 2, "tcpi_rtt": 200}), 1 * S, wall=1.0)
    assert ended == [] and len(t) == 2 and t.stored == 2
    upd(t, dump({"cookie": 1, "tcpi_rtt": 100}, {"cookie": 2, "tcpi_rtt": 250}), 2 * S, wall=2.0)
    upd(t, dump({"cookie": 1, "tcpi_rtt": 100}, {"cookie": 2, "tcpi_rtt": 250}), 3 * S, wall=3.0)
    ended, _ = upd(t, dump({"cookie": 2, "tcpi_rtt": 260}), 4 * S, wall=4.0)
    assert [e.flow.cookie for e in ended] == [1] and ended[0].reason == "closed"
    f1 = ended[0].flow
    assert f1.partial and len(f1.rows) == 1 and f1.deduped == 2 and f1.last_ns == 3 * S
    assert ended[0].end_wall == 4.0
    ended, _ = upd(t, dump(), 5 * S, wall=5.0)
    f2 = ended[0].flow
    s = f2.samples()
    assert s.shape == (3, len(SAMPLE_FIELDS)) and list(s[:, COL["tcpi_rtt"]]) == [200, 250, 260]
    assert list(s[:, COL["t_ns"]]) == [S, 2 * S, 4 * S] and f2.deduped == 1
    assert t.counts["closed"] == 2 and len(t) == 0 and t.stored == 0


def test_flows_after_the_first_dump_are_not_partial_and_the_tuple_is_part_of_the_key():
    t = Tracker()
    upd(t, dump(), S)
    upd(t, dump({"cookie": 5, "sport": 80}), 2 * S)
    ended, _ = upd(t, dump({"cookie": 5, "sport": 81}), 3 * S)      # same cookie, another 5-tuple
    assert len(ended) == 1 and ended[0].flow.sport == 80 and not ended[0].flow.partial
    assert t.counts["retuple"] == 1 and t.flows[0].sport == 81


def test_a_flow_reports_the_congestion_control_it_last_ran_under():
    # iperf3 -C sets TCP_CONGESTION after connect(): the first dump can show the host default
    t = Tracker()
    upd(t, dump({"cookie": 1, "ca_name": b"bbr"}, {"cookie": 2, "ca_name": b"bbr"}), S)
    upd(t, dump({"cookie": 1, "ca_name": b"cubic"}, {"cookie": 2, "ca_name": b"bbr"}), 2 * S)  # same order
    assert [f.ca_name for f in t.flows] == ["cubic", "bbr"]
    upd(t, dump({"cookie": 2, "ca_name": b"reno"}, {"cookie": 1, "ca_name": b"cubic"}), 3 * S)  # reordered
    ended, _ = upd(t, dump(), 4 * S)
    assert sorted((e.flow.cookie, e.flow.ca_name) for e in ended) == [(1, "cubic"), (2, "reno")]


def test_duplicate_sockets_in_one_dump_count_once():
    t = Tracker()
    upd(t, dump({"cookie": 3}, {"cookie": 3}, {"cookie": 4}), S)
    assert len(t) == 2 and t.counts["duplicates"] == 1


def test_max_flows_filters_and_min_samples_drops():
    t = Tracker(max_flows=2, min_samples=2)
    upd(t, dump(*({"cookie": c} for c in range(1, 6))), S)
    assert len(t) == 5 and t.stored == 2 and t.counts["filtered"] == 3
    upd(t, dump(*({"cookie": c, "tcpi_rtt": 9} for c in range(1, 6))), 2 * S)
    ended, _ = upd(t, dump({"cookie": 1, "tcpi_rtt": 9}), 3 * S)
    assert [e.flow.cookie for e in ended] == [2]        # filtered 3..5 write nothing; 2 had 2 samples
    ended, _ = upd(t, dump(), 4 * S)
    assert [e.flow.cookie for e in ended] == [1]
    t2 = Tracker(min_samples=2)
    upd(t2, dump({"cookie": 1}), S)
    ended, _ = upd(t2, dump(), 2 * S)
    assert ended == [] and t2.counts["dropped_short"] == 1


def test_max_samples_and_idle_write_segments():
    t = Tracker(max_samples=3, idle_timeout=2.0)
    for i in range(7):
        ended, _ = upd(t, dump({"cookie": 1, "tcpi_rtt": i}), (i + 1) * S)
        if i == 2:
            assert [(e.reason, len(e.flow.rows), e.flow.segment) for e in ended] == [("max_samples", 3, 0)]
        if i == 5:
            assert [(e.reason, e.flow.segment) for e in ended] == [("max_samples", 1)]
    flow = t.flows[0]
    assert flow.segment == 2 and len(flow.rows) == 1 and flow.partial
    ended = []
    for i in range(8, 12):                              # unchanged from t=7 s on
        got, _ = upd(t, dump({"cookie": 1, "tcpi_rtt": 6}), i * S)
        ended += got
    assert [(e.reason, e.end_ns) for e in ended] == [("idle", 9 * S)]
    assert t.flows[0].segment == 3 and t.flows[0].rows == []


def test_snapshot_writes_open_flows_without_ending_them():
    t = Tracker()
    upd(t, dump({"cookie": 1}, {"cookie": 2}), S)
    snap = t.snapshot(wall=9.0)
    assert sorted(e.flow.cookie for e in snap) == [1, 2] and all(e.reason == "open" for e in snap)
    assert len(t) == 2
    ended, _ = upd(t, dump({"cookie": 1}, {"cookie": 2}), 2 * S)
    assert ended == []


def test_deltas_for_the_interval_aggregates():
    t = Tracker()
    _, d = upd(t, dump({"cookie": 2, "tcpi_total_retrans": 5, "tcpi_segs_out": 100},
                         {"cookie": 1, "tcpi_rcv_ooopack": 3, "tcpi_segs_in": 50}), S)
    assert list(d.d_retrans) == [0, 0] and list(d.d_ooo) == [0, 0]        # new sockets: no history
    _, d = upd(t, dump({"cookie": 2, "tcpi_total_retrans": 8, "tcpi_segs_out": 160, "tcpi_rtt": 70},
                         {"cookie": 1, "tcpi_rcv_ooopack": 10, "tcpi_segs_in": 90, "tcpi_rtt": 40},
                         {"cookie": 7, "tcpi_total_retrans": 4}), 2 * S)
    assert list(d.index) == [0, 1, 2]                     # rows of the dump, in its order
    assert list(d.d_retrans) == [3, 0, 0] and list(d.d_segs_out) == [60, 0, 0]
    assert list(d.d_ooo) == [0, 7, 0] and list(d.d_segs_in) == [0, 40, 0] and list(d.rtt_us) == [70, 40, 0]
    _, d = upd(t, dump({"cookie": 7, "tcpi_total_retrans": 6}, {"cookie": 7}, {"cookie": 2, "tcpi_total_retrans": 9,
                                                                   "tcpi_segs_out": 160}), 3 * S)
    assert list(d.index) == [0, 2] and list(d.d_retrans) == [2, 1] and t.counts["duplicates"] == 1


def test_bad_limits():
    with pytest.raises(ValueError):
        Tracker(max_samples=1)


def test_total_sample_budget_writes_the_biggest_flows():
    t = Tracker(max_total_samples=20)
    for i in range(6):
        ended, _ = upd(t, dump({"cookie": 1, "tcpi_rtt": i}, {"cookie": 2, "tcpi_rtt": i // 3},
                               *({"cookie": c, "tcpi_rtt": i} for c in range(3, 5))), (i + 1) * S)
        assert t.total_samples <= 20
    # 4 flows: three change every dump (6 samples each at the end), one every 3rd
    ended, _ = upd(t, dump({"cookie": 1, "tcpi_rtt": 9}, {"cookie": 2, "tcpi_rtt": 9},
                           {"cookie": 3, "tcpi_rtt": 9}, {"cookie": 4, "tcpi_rtt": 9}), 7 * S)
    assert ended and all(e.reason == "memory" for e in ended)
    assert max(len(e.flow.rows) for e in ended) == 7 and t.total_samples <= 18
