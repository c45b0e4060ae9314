"""The tracker and the retrans segment counter fed the kernel's destroy messages (sans-IO): each
socket gives one record with its final sample, whatever order its dumps and its message come in."""
import ipaddress

from netprobe.probes.flows.tracker import COL, Tracker
from netprobe.probes.retrans.analysis import SegmentCounter
from tests.unit.test_flows_tracker import S, dump


def destroyed(t_ns, *socks):
    recs = dump(*socks)
    recs["t_ns"] = t_ns
    return recs


def upd(t, records, t_ns, gone=None, wall=None):
    records["t_ns"] = t_ns
    return t.update(records, t_ns, wall=t_ns / S if wall is None else wall, destroyed=gone)[0]


def test_a_flow_gone_from_the_dump_ends_with_its_destroy_message():
    t = Tracker(hold=2.0)
    upd(t, dump(), S)
    upd(t, dump({"cookie": 1, "tcpi_bytes_acked": 100}), 2 * S)
    assert upd(t, dump(), 3 * S) == []                      # gone: waits for its message
    ended = upd(t, dump(), 4 * S, destroyed(int(3.5 * S), {"cookie": 1, "tcpi_bytes_acked": 150}))
    assert len(ended) == 1 and ended[0].reason == "closed" and ended[0].end_wall == 3.5
    s = ended[0].flow.samples()
    assert list(s[:, COL["tcpi_bytes_acked"]]) == [100, 150] and ended[0].flow.last_ns == int(3.5 * S)
    assert t.counts["destroyed"] == 1 and t.counts["destroy_missed"] == 0


def test_a_socket_no_dump_saw_is_a_flow_of_one_sample():
    t = Tracker(hold=2.0)
    upd(t, dump(), S)
    ended = upd(t, dump(), 2 * S, destroyed(int(1.5 * S), {"cookie": 7, "tcpi_total_retrans": 3}))
    assert len(ended) == 1 and not ended[0].flow.partial
    assert list(ended[0].flow.samples()[:, COL["tcpi_total_retrans"]]) == [3] and t.counts["new"] == 1


def test_a_message_after_the_flow_was_written_is_not_written_again():
    t = Tracker(hold=1.0)
    upd(t, dump(), S)
    upd(t, dump({"cookie": 1, "tcpi_rtt": 10}), 2 * S)
    upd(t, dump(), 3 * S)
    ended = upd(t, dump(), 4 * S)                           # none within the hold: from its last dump
    assert [e.flow.cookie for e in ended] == [1] and ended[0].flow.last_ns == 2 * S
    assert upd(t, dump(), 5 * S, destroyed(int(4.5 * S), {"cookie": 1, "tcpi_rtt": 20})) == []
    assert t.counts["destroy_late"] == 1 and t.counts["destroy_missed"] == 1


def test_a_filtered_socket_is_not_a_new_flow_when_its_message_comes():
    t = Tracker(max_flows=1, hold=1.0)
    upd(t, dump(), S)
    upd(t, dump({"cookie": 1}, {"cookie": 2}), 2 * S)      # 2 is past max_flows: tracked, not stored
    upd(t, dump({"cookie": 1}), 3 * S)
    assert upd(t, dump({"cookie": 1}), 4 * S, destroyed(int(3.5 * S), {"cookie": 2})) == []
    assert t.counts["filtered"] == 1 and t.counts["destroy_late"] == 1


def test_at_the_end_a_listed_flow_closed_since_ends_with_its_message_and_held_ones_are_written():
    t = Tracker(hold=10.0)
    upd(t, dump(), S)
    upd(t, dump({"cookie": 1, "tcpi_rtt": 10}, {"cookie": 2, "tcpi_rtt": 10}, {"cookie": 3}), 2 * S)
    upd(t, dump({"cookie": 2, "tcpi_rtt": 10}, {"cookie": 3}), 3 * S)          # 1 gone, held
    ended = t.final(destroyed(int(3.5 * S), {"cookie": 2, "tcpi_rtt": 30}), 4 * S, wall=4.0)
    assert sorted(e.flow.cookie for e in ended) == [1, 2]
    two = next(e for e in ended if e.flow.cookie == 2).flow
    assert list(two.samples()[:, COL["tcpi_rtt"]]) == [10, 30]
    assert [e.flow.cookie for e in t.snapshot(wall=4.0)] == [3]             # still open


A, B = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")
FLOW = (A, 1000, B, 443)


def test_segments_from_the_final_count_not_from_events():
    c = SegmentCounter(hold=1.0)
    c.dump([(1, FLOW, 5)], 1.0)                             # 5 before us
    c.event(FLOW, 1.5)
    c.event(FLOW, 1.6)                                      # 2 skbs, 7 segments
    c.destroyed([(1, FLOW, 12, 1.7)])
    c.event(FLOW, 1.65)                                     # read late, but before the message: not pending
    c.dump([], 2.0)
    assert c.take() == ({FLOW: 7}, {})


def test_a_gone_socket_waits_for_its_message_then_counts_events_and_a_late_message_adds_the_rest():
    c = SegmentCounter(hold=1.0)
    c.dump([(1, FLOW, 2)], 1.0)
    c.event(FLOW, 1.2)
    c.dump([], 1.5)                                         # gone: its event waits
    assert c.take() == ({}, {})
    c.dump([], 2.6)                                         # no message within the hold: 1 segment per event
    assert c.take() == ({FLOW: 1}, {FLOW: 1})
    c.destroyed([(1, FLOW, 6, 3.0)])                        # it came after all: 6 - 2 - the 1 counted
    assert c.take() == ({FLOW: 3}, {})
