"""netprobe._pcapread on scapy-built captures.

Oracles: the pure-Python analyser in tests/reference/tcpflow.py (differential,
Hypothesis-driven scripts of loss, reordering, retransmission, duplicate and
zero-window ACKs, D-SACK), the script itself (what was lost, held back or
sent again is known), and format invariance (the same packets in every file
format and link type give the same per-frame flags).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.probes.retrans import pcapfile
from tests.reference import retrans_gen as gen
from tests.reference import tcpflow

BITS = pcapfile.flag_bits()
COMPARED = ("pkts", "retrans", "lost_retrans", "seen_retrans", "ooo", "dsack", "duplicate_ack",
            "zero_window", "lost_segment", "fast_retransmission", "spurious_retransmission",
            "out_of_order", "ws_retrans", "holes_dropped", "data_segs", "retrans_segs")
# our counter names for the reference's
OURS = {"duplicate_ack": "dupack", "lost_segment": "lost_segment", "fast_retransmission": "fast_retrans",
        "spurious_retransmission": "spurious", "out_of_order": "ws_ooo"}

ops = st.lists(st.tuples(st.sampled_from(gen.OPS), st.integers(0, 50)), min_size=1, max_size=60)


def names(flag):
    return {n for n, b in BITS.items() if flag & b}


def run(frames, **kw):
    return pcapfile.analyse_bytes(gen.ether_pcap(frames), **kw)


def ref(frames, reorder_ns=0):
    return tcpflow.analyse(gen.ether_pcap(frames), reorder_ns)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, v6=st.booleans())
def test_matches_reference_frame_by_frame(script, v6):
    frames = gen.conversation(script, v6=v6)
    got = run(frames)
    want_flags, want_where, want_flows = ref(frames)
    assert got.error is None
    assert len(got.flags) == len(frames)
    for i, (f, w) in enumerate(zip(got.flags, want_flags, strict=True)):
        assert names(int(f)) == w, (i, script)
    assert [None if d < 0 else (d // 2, d % 2) for d in got.flowdir] == want_where
    for flow, rf in zip(got.flows, want_flows, strict=True):
        for ours, theirs in ((flow.ab, rf.d[0].counts), (flow.ba, rf.d[1].counts)):
            for name in COMPARED:
                assert ours[OURS.get(name, name)] == theirs.get(name, 0), (name, script)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(st.tuples(st.sampled_from(gen.OPS + ("send",) * 12), st.integers(0, 50)),
                       min_size=100, max_size=300),
       id_noise=st.integers(0, 3), seed=st.integers(0, 2**32))
def test_matches_reference_on_long_send_heavy_scripts(script, id_noise, seed):
    """More than NSENT runs of send-order marks and NHOLES holes, with IPv4 IDs in order or
    jittered (runs split, joined and forgotten): what each side forgets agrees."""
    frames = gen.conversation(script, id_noise=id_noise, seed=seed)
    got = run(frames)
    want_flags, _, want_flows = ref(frames)
    assert [names(int(f)) for f in got.flags] == want_flags
    for name in COMPARED:
        assert got.flows[0].ab[OURS.get(name, name)] == want_flows[0].d[0].counts.get(name, 0), name


def test_loss_before_capture_point_is_counted_once_as_a_retransmission():
    # segment 2 is lost upstream; three dup ACKs; the sender resends it
    script = [("send", 0), ("lose", 0), ("send", 0), ("send", 0), ("send", 0), ("ack", 0),
              ("dupack", 0), ("dupack", 0), ("retrans", 1), ("ack", 3)]
    r = run(gen.conversation(script))
    ab = r.flows[0].ab
    assert (ab["retrans"], ab["lost_retrans"], ab["seen_retrans"], ab["ooo"]) == (1, 1, 0, 0)
    # B's MSS (62) less A's 12 option bytes: each 100-byte segment is 2 wire segments
    assert (ab["data_segs"], ab["retrans_segs"]) == (2 * ab["data_pkts"], 2)
    assert ab["lost_segment"] == 1                     # Wireshark: previous segment not captured
    assert r.flows[0].ba["dupack"] == 2
    resent = [names(int(f)) for f in r.flags if int(f) & BITS["np_retrans"]]
    assert resent == [{"np_retrans", "np_lost_retrans", "fast_retransmission"}]


def test_reordered_original_is_out_of_order_not_a_retransmission():
    # segment 2 is overtaken by 3 and 4 but arrives 30 ms later, long after the RTT:
    # Wireshark's timing rule calls it a retransmission; its IP ID says it was sent first
    # (IDs are trusted after 4 in-order segments numbered in sequence)
    script = [("send", 0)] * 10 + [("hold", 0), ("send", 0), ("send", 0), ("wait", 29), ("release", 0)]
    r = run(gen.conversation(script))
    ab = r.flows[0].ab
    assert (ab["retrans"], ab["ooo"]) == (0, 1)
    assert ab["ws_retrans"] == 1                       # what tshark would say


def test_reordered_retransmission_overtaken_by_new_data_is_a_retransmission():
    # The lab capture's pattern (IP IDs 0x5cbe/0x5d04/0x5d07 there): the original of
    # segment 11 and a first retransmission R1 of it are both held on R; a second
    # retransmission R2 fills the hole, new data (sent after R1) raises the highest
    # sequence number, then the original and R1 arrive. R1's ID is below that of the
    # highest segment, but above those of segments 12-14 (originals of higher bytes,
    # captured before): R1 was sent after them, so it cannot be an original.
    script = [("send", 0)] * 10 + [("hold", 0), ("send", 0), ("send", 0), ("send", 0),
                                   ("hold_retrans", 10), ("retrans", 10), ("send", 0),
                                   ("release", 0), ("release", 0)]
    r = run(gen.conversation(script))
    seen = [names(int(f)) & {"np_retrans", "np_lost_retrans", "np_ooo"} for f in r.flags[-4:]]
    # R2 (the hole's fill), new data, the late original, R1
    assert seen == [{"np_retrans", "np_lost_retrans"}, set(), {"np_ooo"}, {"np_retrans"}]
    ab = r.flows[0].ab
    assert (ab["retrans"], ab["lost_retrans"], ab["seen_retrans"], ab["ooo"]) == (2, 1, 1, 1)
    want, _, _ = ref(gen.conversation(script))
    assert [names(int(f)) for f in r.flags] == want


def test_retransmission_overtaken_by_many_new_segments_is_a_retransmission():
    # a lab capture's IDs 0xa81d (original, lost), 0xa821 (1st resend, held on R while
    # ~40 new segments overtook it), 0xa826 (2nd resend, filled the hole first)
    script = [("send", 0)] * 10 + [("lose", 0), ("send", 0), ("send", 0), ("send", 0),
                                   ("hold_retrans", 10), ("retrans", 10)] + [("send", 0)] * 40 + [("release", 0)]
    r = run(gen.conversation(script))
    assert names(int(r.flags[-1])) & {"np_retrans", "np_lost_retrans", "np_ooo"} == {"np_retrans"}
    ab = r.flows[0].ab
    assert (ab["retrans"], ab["lost_retrans"], ab["seen_retrans"], ab["ooo"]) == (2, 1, 1, 0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("path", ["stalls", "bursts"])
def test_resends_overtaken_by_hundreds_of_segments_are_counted(path, seed):
    """A lab run's undercount (B's 311 resends reached A, the capture counted 265): a vCPU
    stall held a host's backlog while hundreds of later segments, and resends among them,
    overtook the packets in it. The send order of each resend must still be known. Oracles:
    captures at both ends of the modelled path (tcpflow.path_resends), and the reference
    analyser frame by frame."""
    kw = {"stalls": {"stall": 0.01, "spurious": 0.03}, "bursts": {"burst": 0.01, "stall": 0.005}}[path]
    up, down = gen.lossy_path(seed, **kw)
    resent, lost, unseen, unordered = tcpflow.path_resends(
        gen.ether_pcap(up), gen.ether_pcap(down))
    seen = resent - lost - unseen
    r = run(down)
    assert seen - unordered <= r.flows[0].ab["retrans_segs"] <= seen, (resent, lost, unseen, unordered)
    assert r.flows[0].ab["ooo"] > 100                   # the stalls did reorder
    want_flags, _, _ = ref(down)
    assert [names(int(f)) for f in r.flags] == want_flags


@pytest.mark.parametrize("probe_id, want", [(106, "np_ooo"), (113, "np_retrans")])
def test_send_order_inside_a_split_run_of_marks(probe_id, want):
    # Segments 1-12 go out with IDs 101-112, segment 6 (ID 106) held back: marks 1-5 and
    # 7-12 are two runs. A packet holding 8-10 with ID 109 (IDs jittered, or reused) takes
    # the place of marks 9 and 10 and splits the second run into 7-8 and 11-12. Segment 6
    # then fills its hole: with ID 106 it was sent before mark 7 (ID 107, the lowest of
    # 7-8): an overtaken original; with ID 113 after it: a retransmission.
    def data(first, n, ipid):
        return gen.a_packet(1000 + first * gen.MSS, ipid, n * gen.MSS)

    pkts = [gen.a_packet(999, 100, flags="S")] + [data(k, 1, 100 + k) for k in range(1, 13) if k != 6]
    pkts += [data(8, 3, 109), data(6, 1, probe_id)]
    frames = [(1_700_000_000 * 10**9 + i * 20_000, p) for i, p in enumerate(pkts)]
    r = run(frames)
    assert names(int(r.flags[-1])) & {"np_retrans", "np_ooo"} == {want}
    want_flags, _, _ = ref(frames)
    assert [names(int(f)) for f in r.flags] == want_flags


def test_a_syns_unrelated_ip_id_does_not_delay_trust_in_the_data_ids():
    # A lab run (offload on, 16 KB skbs, B sending): B's SYN-ACK had ID 0 (Linux, DF) and its data
    # IDs started at random; a skb lost among the first few was resent 61 us after the next one
    # arrived, in the same TSval tick. Counting the SYN's ID step as a bad one left the IDs
    # untrusted (6 good, 1 bad: fewer than 8 good per bad), so the fill fell to the reorder
    # window and read out-of-order. A SYN's ID out of sequence is no evidence against the
    # counter (one in sequence, as a client's SYN has, still counts for it).
    script = [("send", 0)] * 5 + [("lose", 0), ("send", 0), ("retrans", 5)]
    frames = gen.conversation(script, syn_id=20100, retrans_ts_step=0)
    r = run(frames)
    assert names(int(r.flags[-1])) & {"np_retrans", "np_lost_retrans", "np_ooo"} == {"np_retrans", "np_lost_retrans"}
    assert (r.flows[0].ab["lost_retrans"], r.flows[0].ab["ooo"]) == (1, 0)
    want, _, _ = ref(frames)
    assert [names(int(f)) for f in r.flags] == want
    # the same with the SYN's ID in the data's sequence: trusted either way
    r = run(gen.conversation(script, syn_id=100, retrans_ts_step=0))
    assert r.flows[0].ab["lost_retrans"] == 1


def test_short_connection_original_overtaken_by_its_own_retransmission():
    # iperf3's control connection in a lab run: 6 data segments, then the last one
    # (ID 0x8c82) held on R while its resend (0x8c84) came through; same TSvals. Its
    # sequential IDs order the two although fewer than 8 segments preceded them.
    script = [("send", 0)] * 5 + [("hold", 0), ("send", 0), ("retrans", 5), ("release", 0)]
    r = run(gen.conversation(script))
    seen = [names(int(f)) & {"np_retrans", "np_lost_retrans", "np_ooo"} for f in r.flags[-2:]]
    assert seen == [{"np_retrans", "np_lost_retrans"}, {"np_ooo"}]


def test_retransmission_at_the_tip_looks_like_new_data_until_its_original_comes():
    # retrans-notes.md "tip": the last segment is held on R and its retransmission
    # arrives first. Nothing at this capture point shows that it is not new data
    # (no byte above it, no hole below it); the late original is out-of-order.
    script = [("send", 0)] * 10 + [("hold", 0), ("retrans", 10), ("release", 0)]
    r = run(gen.conversation(script))
    assert [names(int(f)) & {"np_retrans", "np_ooo"} for f in r.flags[-2:]] == [set(), {"np_ooo"}]


def test_retransmission_of_captured_data_is_a_retransmission_even_when_quick():
    # a resend captured twice, 20 us after the highest segment: Wireshark says out-of-order
    script = [("send", 0), ("send", 0), ("send", 0), ("retrans", 1)]
    r = run(gen.conversation(script))
    ab = r.flows[0].ab
    assert (ab["retrans"], ab["seen_retrans"], ab["ooo"], ab["ws_ooo"]) == (1, 1, 0, 1)


def test_dsack_and_zero_window():
    script = [("send", 0)] * 4 + [("ack", 3), ("retrans", 0), ("dsack", 0), ("zerowin", 0)]
    r = run(gen.conversation(script))
    assert r.flows[0].ab["dsack"] == 1                 # counted for the data's direction
    assert r.flows[0].ba["zero_window"] == 1
    assert r.flows[0].ab["spurious"] == 1              # the resend was already ACKed


def test_timing_fallback_without_ids_or_timestamps():
    # IPv6 (no IP ID); equal TSvals: the reorder window decides
    script = [("send", 0), ("hold", 0), ("send", 0), ("release", 0)]
    frames = gen.conversation(script, v6=True)
    assert run(frames).flows[0].ab["ooo"] == 1         # 20 us < 3 ms default window
    assert run(frames, reorder_ns=1000).flows[0].ab["lost_retrans"] == 1


SCRIPT = [("send", 0)] * 5 + [("lose", 0), ("send", 0), ("ack", 2), ("dupack", 0), ("dupack", 0),
                              ("retrans", 5), ("hold", 0), ("send", 0), ("release", 0), ("zerowin", 0),
                              ("retrans", 0), ("dsack", 1)]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("fmt", [
    dict(kind="pcap", linktype=1), dict(kind="pcap", linktype=1, vlan=True),
    dict(kind="pcap", linktype=113), dict(kind="pcap", linktype=276), dict(kind="pcap", linktype=101),
    dict(kind="pcap", linktype=1, big_endian=True), dict(kind="pcap", linktype=1, ns=True),
    dict(kind="pcap", linktype=1, big_endian=True, ns=True),
    dict(kind="pcapng", linktype=1), dict(kind="pcapng", linktype=113, big_endian=True, tsresol=6),
    dict(kind="pcapng", linktype=276, tsresol=9), dict(kind="pcap", linktype=1, snaplen=128),
], ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_every_format_and_link_type_gives_the_same_flags(fmt, v6):
    frames = gen.conversation(SCRIPT, v6=v6)
    base = run(frames)
    fmt = dict(fmt)
    kind, lt, vlan = fmt.pop("kind"), fmt.pop("linktype"), fmt.pop("vlan", False)
    writer = gen.pcap if kind == "pcap" else gen.pcapng
    got = pcapfile.analyse_bytes(writer([(t, gen.link(ip, lt, vlan)) for t, ip in frames], linktype=lt, **fmt))
    assert got.error is None and got.counters["tcp"] == len(frames)
    assert got.counters["ipv6" if v6 else "ipv4"] == len(frames)
    np.testing.assert_array_equal(got.flags, base.flags)
    assert got.flows[0].ab == base.flows[0].ab and got.flows[0].ba == base.flows[0].ba
    assert base.flows[0].ab["retrans"] >= 2          # the script does exercise the classifier


def test_snaplen_64_keeps_the_sequence_analysis():
    # tcpdump -s 64 (pcapgazer's setting) cuts the TCP options; Wireshark then stops
    # analysing, we do not: only the option-based evidence (TSval, D-SACK) is lost
    frames = gen.conversation(SCRIPT)
    full = run(frames)
    cut = pcapfile.analyse_bytes(gen.ether_pcap(frames, snaplen=64))
    ws = sum(BITS[n] for n in ("retransmission", "fast_retransmission", "spurious_retransmission",
                               "out_of_order", "duplicate_ack", "zero_window", "lost_segment"))
    np.testing.assert_array_equal(cut.flags & ws, full.flags & ws)
    assert cut.flows[0].ab["retrans"] == full.flows[0].ab["retrans"]      # IPv4 ID still orders sends
    assert cut.flows[0].ab["dsack"] == 0 < full.flows[0].ab["dsack"]


def test_truncated_file_gives_partial_result_and_one_line_error():
    frames = gen.conversation(SCRIPT)
    data = gen.ether_pcap(frames)
    whole = pcapfile.analyse_bytes(data)
    cut = pcapfile.analyse_bytes(data[:-30])
    assert cut.counters["frames"] == whole.counters["frames"] - 1
    assert "truncated record at offset" in cut.error and "\n" not in cut.error
    np.testing.assert_array_equal(cut.flags, whole.flags[:-1])


@pytest.mark.parametrize("data, msg", [
    (b"", "shorter than any file header"),
    (b"GIF89a" + b"\0" * 40, "not a pcap or pcapng file"),
    (gen.pcap([], linktype=147), "link type 147 is not supported"),
])
def test_unreadable_files_raise_one_line(data, msg):
    with pytest.raises(pcapfile.PcapError, match=msg):
        pcapfile.analyse_bytes(data)


def test_chunked_runs_equal_one_run():
    frames = gen.conversation(SCRIPT * 3)
    data = gen.ether_pcap(frames)
    whole = pcapfile.analyse_bytes(data)
    a = pcapfile.new_analyser()
    off = a.open(data)
    flags = np.zeros(7, np.uint16)
    fd = np.zeros(7, np.int32)
    got = []
    while True:
        chunk = a.run(data, off, flags, fd)
        got.append(flags[:chunk.frames].copy())
        off = chunk.offset
        if not chunk.more:
            break
    assert chunk.error is None and off == len(data)
    np.testing.assert_array_equal(np.concatenate(got), whole.flags)


def test_flow_table_limit_counts_dropped_packets():
    frames = gen.conversation([("send", 0)] * 3) + gen.conversation([("send", 0)] * 3, isn_a=9, t0_ns=2 * 10**18)
    # a second connection on other ports
    second = [(t, ip[:20] + b"\x9c\x41" + ip[22:]) if ip[9] == 6 and ip[12:16] == bytes([198, 18, 1, 2])
              else (t, ip[:22] + b"\x9c\x41" + ip[24:]) for t, ip in frames[6:]]
    got = pcapfile.analyse_bytes(gen.ether_pcap(frames[:6] + second), max_flows=1)
    assert got.counters["flows"] == 1 and got.counters["flows_dropped"] == 6


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 400), min_size=1, max_size=40), ng=st.booleans())
def test_stream_mode_in_random_chunks_equals_whole_file(cuts, ng):
    """A live pcap stream (tcpdump -w -) arrives in arbitrary pieces: records split
    across reads are kept for the next call, never reported as errors."""
    frames = gen.conversation(SCRIPT)
    writer = gen.pcapng if ng else gen.pcap
    data = writer([(t, gen.link(ip, 1)) for t, ip in frames])
    whole = pcapfile.analyse_bytes(data)
    a = pcapfile.new_analyser()
    flags = np.zeros(64, np.uint16)
    fd = np.zeros(64, np.int32)
    buf, got, pos, opened = bytearray(), [], 0, False
    for size in cuts + [len(data)]:
        buf += data[pos:pos + size]
        pos += size
        if not opened:
            if len(buf) < 32:
                continue
            del buf[:a.open(bytes(buf))]
            opened = True
        while buf:
            chunk = a.run(buf, 0, flags, fd, True)
            assert chunk.error is None, chunk.error
            got.append(flags[:chunk.frames].copy())
            del buf[:chunk.offset]
            if not chunk.more:
                break
    assert not buf
    np.testing.assert_array_equal(np.concatenate(got), whole.flags)
