"""Structured fuzz of the TCP sequence analysis (netprobe._pcapread) against the reference.

The byte fuzzers (test_pcap_fuzz.py) never build a sequence of well-formed
segments that stresses the analysis: their files fail the magic or header
checks, or are mutations of one script. Here Hypothesis builds the segments:
sequence numbers near the wrap and steps of half the sequence space and more,
IPv4 IDs that repeat, step back, jump and wrap, overlapping and duplicate
segments, SYN/FIN/RST (and any flag byte) at any point, both directions, TCP
options (timestamps, MSS, SACK/D-SACK blocks, garbage), zero and changing
windows, IPv4 and IPv6. Each capture goes to the compiled analyser and to the
pure-Python reference (tests/reference/tcpflow.py, written from Wireshark's
tcp.analysis rules and the verdict's specification): no crash, and the same
flags for every frame, the same flow and direction, the same counters.

Example counts: 3,000 per target in the normal suite; `make fuzz` runs 200,000
(tests/fuzz/__init__.py).
"""
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.probes.retrans import pcapfile
from tests.fuzz import examples
from tests.reference import retrans_gen as gen
from tests.reference import tcpflow

EXAMPLES = examples(3000)
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BITS = pcapfile.flag_bits()
COMPARED = ("pkts", "retrans", "lost_retrans", "seen_retrans", "ooo", "dsack", "duplicate_ack",
            "zero_window", "lost_segment", "fast_retransmission", "spurious_retransmission",
            "out_of_order", "ws_retrans", "holes_dropped", "data_segs", "retrans_segs")
OURS = {"duplicate_ack": "dupack", "fast_retransmission": "fast_retrans",
        "spurious_retransmission": "spurious", "out_of_order": "ws_ooo"}
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
HUGE = (0x60000000, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xA0000000, 0xC0000000, M32)
ADDR = {False: (bytes([198, 18, 1, 2]), bytes([198, 18, 2, 2])),
        True: (bytes.fromhex("20010002000000010000000000000002"), bytes.fromhex("20010002000000020000000000000002"))}
T0 = 1_700_000_000 * 10**9

SEQ_STARTS = (0, 1, 0x7FFFFF00, 0x80000000, M32 - 150, M32 - 5000, None, None)   # None: any
ID_STARTS = (0, 0xFFFF, 0xFFF0, None)
# tables indexed by a byte (mod their length): repeats weight the common cases
HOW = ("next",) * 6 + ("dup", "back", "ahead", "huge", "any", "overlap", "overlap", "dup")
LENS = (0, 0, 0, 1, 100, 100, 100, 100, 1448, 2, 50, 99, 101, 536, 3000, None)      # None: any 0..4095
FLAGS = (ACK, ACK, ACK, ACK | PSH, ACK | PSH, SYN, SYN | ACK, FIN | ACK, RST, RST | ACK, 0, FIN | SYN | ACK, FIN,
         SYN, ACK, None)                                                            # None: any byte
ACKS = ("cum", "cum", "cum", "cum", "old", "zero", "huge", "any")
WINDOWS = (0, 1, 500, 65535)
ID_STEPS = (1, 1, 1, 1, 1, 1, 0, 2, -1, -3, 1000, 0x8000, 7, 1, 1, None)             # None: any ID
TS_STEPS = (0, 0, 1, 1, 5, -1, 0x80000000, 2)
MSS = (0, 8, 9, 28, 60, 536, 1460, 0xFFFF)
TIME_STEPS = (0, 1000, 20_000, 20_000, 20_000, 1_000_000, 2_900_000, 3_100_000, 21_000_000, 10**9)
MARK_STEPS = (0, 100, 100, -100, -50, 200, 1, -1) + HUGE + (None,)                 # None: any -4096..4095
MARK_IDS = (1, 1, 1, 1, 0, -1, -2, 2, 7, 0x7FFF, 0x8000, 1)
SEG = 16           # bytes of fuzz input per segment


def pick(table, byte):
    return table[byte % len(table)]


def segment(v6, d, port, seq, ack, flags, win, n, ipid, opts):
    """IP bytes of one TCP segment from side d (0: A, 1: B); checksums are not read."""
    opts += b"\0" * (-len(opts) % 4)
    sport, dport = (port, 5201) if d == 0 else (5201, port)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq & M32, ack & M32, (20 + len(opts)) // 4 << 4, flags,
                      win, 0, 0) + opts + b"x" * n
    src, dst = ADDR[v6] if d == 0 else ADDR[v6][::-1]
    if v6:
        return struct.pack(">IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst) + tcp
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ipid & 0xFFFF, 0x4000, 64, 6, 0, src, dst) + tcp


def options(b, ack, tsv):
    """TCP option bytes from fuzz bytes b[0:4]: timestamps (TSval moving any way), MSS,
    SACK and D-SACK blocks around the ACK, and now and then garbage; tsv[0] is the side's TSval."""
    out = b""
    if b[0] & 3:
        tsv[0] = (tsv[0] + pick(TS_STEPS, b[0] >> 2)) & M32
        out += b"\1\1" + struct.pack(">BBII", 8, 10, tsv[0], 0)
    if b[0] & 0x20:
        out += struct.pack(">BBH", 2, 4, pick(MSS, b[1]))
    if b[0] & 0x40:
        lo = (ack + (b[2] - 128) * 4) & M32
        blocks = [(lo, (lo + pick((0, 1, 100, 200), b[1] >> 3)) & M32)]
        if b[1] & 0x80:
            blocks.append(((lo - 100) & M32, (lo + 300) & M32))
        out += b"\1\1" + struct.pack(">BB", 5, 2 + 8 * len(blocks)) + b"".join(struct.pack(">II", *x) for x in blocks)
    if b[0] & 0x80 and b[3] & 1:
        out = b[1:1 + b[3] % 12] + out                     # garbage, options cut wherever it ends
    return out[:40]


def captures(raw):
    """A pcap (raw IP) of one or two connections' segments, both directions, decoded from fuzz
    bytes (all zeros: one side's in-order empty ACKs); and its description for failure messages."""
    head, raw = raw[:16].ljust(16, b"\0"), raw[16:]
    word = struct.unpack(">4I", head)
    v6 = bool(head[0] & 1)
    nxt = [pick(SEQ_STARTS, head[1]), pick(SEQ_STARTS, head[2])]       # the next new sequence number per side
    nxt = [word[k + 1] if x is None else x for k, x in enumerate(nxt)]
    ids = [word[1] & 0xFFFF if x is None else x for x in (pick(ID_STARTS, head[3]), pick(ID_STARTS, head[3] >> 2))]
    tsv = [[word[2]], [word[3]]]                       # each side's TSval, moved by options()
    sent, win = [[], []], [500, 500]
    t, frames, desc = T0, [], []
    for k in range(0, len(raw) - SEG + 1, SEG):
        b = raw[k:k + SEG]
        r16, r32 = struct.unpack_from(">HI", b, 2)
        d = 1 if b[0] & 3 == 3 else 0
        how, n = pick(HOW, b[0] >> 2), pick(LENS, b[1])
        n = r16 & 0xFFF if n is None else n
        if how == "dup" and sent[d]:
            seq, n = sent[d][r16 % len(sent[d])]
        elif how == "overlap" and sent[d]:
            seq = sent[d][r16 % len(sent[d])][0] + (b[9] - 128)
        elif how in ("back", "ahead"):
            seq = nxt[d] + (-1 if how == "back" else 1) * pick((1, 100, 200, 1000, 1448), b[9])
        elif how == "huge":
            seq = nxt[d] + pick(HUGE, b[9])
        else:
            seq = r32 if how == "any" else nxt[d]
        seq &= M32
        flags = pick(FLAGS, b[8])
        flags = b[9] if flags is None else flags
        ack = {"cum": nxt[1 - d], "old": nxt[1 - d] - pick((1, 100, 300), b[9]), "zero": 0,
               "huge": nxt[1 - d] + pick(HUGE, b[9]), "any": r32 ^ 0x5A5A5A5A}[pick(ACKS, b[10])] & M32
        if b[10] & 0x38 == 0x38:
            win[d] = pick(WINDOWS, b[10] >> 6)
        step = pick(ID_STEPS, b[11])
        ids[d] = (r16 if step is None else ids[d] + step) & 0xFFFF
        opts = options(b[12:16], ack, tsv[d]) if b[12] else b""
        t += pick(TIME_STEPS, b[14])
        port = 40001 if b[15] & 7 == 7 else 40000
        frames.append((t, segment(v6, d, port, seq, ack, flags, win[d], n, ids[d], opts)))
        desc.append((d, port, hex(seq), n, hex(flags), hex(ack), win[d], ids[d], opts.hex(), t - T0))
        sent[d].append((seq, n))
        end = (seq + n + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & M32
        if tcpflow.gt(end, nxt[d]):
            nxt[d] = end
    return gen.pcap(frames, linktype=101), (v6, desc)


def send_orders(raw):
    """One side's IPv4 data only, shaped for the send-order marks: up to 6 in-order segments
    so the IDs are trusted, then ends that repeat an earlier one, step back or jump by up
    to the whole sequence space, with IDs that repeat, step back or run ahead."""
    head, raw = raw[:8].ljust(8, b"\0"), raw[8:]
    e, ipid = struct.unpack(">IH", head[:6])
    marks = [((e + 100 * k) & M32, (ipid + k) & 0xFFFF) for k in range(head[6] % 7)]
    e, ipid = e + 100 * len(marks), ipid + len(marks)
    for k in range(0, len(raw) - 3, 4):
        b = raw[k:k + 4]
        if marks and b[0] & 1:
            e = marks[(b[0] >> 1) % len(marks)][0]
        step = pick(MARK_STEPS, b[1])
        e += (b[2] << 8 | b[3]) % 8192 - 4096 if step is None else step
        ipid += pick(MARK_IDS, b[0] >> 4)
        marks.append((e & M32, ipid & 0xFFFF))
    n = pick((100, 1, 50), head[7])
    frames = [(T0 + k * 1000, segment(False, 0, 40000, end - n, 5001, ACK | PSH, 500, n, i, b""))
              for k, (end, i) in enumerate(marks)]
    return gen.pcap(frames, linktype=101), [(hex(m), i) for m, i in marks]


def assert_same(data, desc):
    got = pcapfile.analyse_bytes(data)
    want_flags, want_where, want_flows = tcpflow.analyse(data)
    assert got.error is None, got.error
    assert len(got.flags) == len(want_flags)
    for i, (f, w) in enumerate(zip(got.flags, want_flags, strict=True)):
        assert {n for n, b in BITS.items() if int(f) & b} == w, (i, desc)
    assert [None if d < 0 else (d // 2, d % 2) for d in got.flowdir] == want_where, desc
    assert len(got.flows) == len(want_flows)
    for flow, rf in zip(got.flows, want_flows, strict=True):
        for ours, theirs in ((flow.ab, rf.d[0].counts), (flow.ba, rf.d[1].counts)):
            for name in COMPARED:
                assert ours[OURS.get(name, name)] == theirs.get(name, 0), (name, desc)


@FUZZ
@given(raw=st.binary(min_size=SEG, max_size=SEG * 41))
def test_any_segment_sequence_matches_the_reference(raw):
    assert_same(*captures(raw))


@FUZZ
@given(raw=st.binary(min_size=8, max_size=8 + 4 * 40))
def test_send_order_sequences_match_the_reference(raw):
    assert_same(*send_orders(raw))
