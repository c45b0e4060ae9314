"""netprobe._udpio: the v2 wire codec (byte vectors, against the struct/hmac reference),
the receiver's accounting (against tests/reference/oneway.py), and the sender on loopback."""
import hashlib
import hmac
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from netprobe.errors import load_extension
from netprobe.probes.oneway import analysis
from tests.ext.rx_stamps import wait_until_stamped
from tests.reference import oneway as ref

udpio = load_extension("_udpio")
udping = load_extension("_udping")

u16, u32, u64 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
header_fields = st.fixed_dictionaries({
    "flags": st.sampled_from([0, ref.F_CONTROL, ref.F_UNSYNC, ref.F_CONTROL | ref.F_UNSYNC, ref.F_TXTIME,
                              ref.F_TXTIME | ref.F_CONTROL]),
    "port": u16, "session": u64, "start_ns": u64, "seq": u64, "send_ns": u64, "interval": u32,
    "clock_err_us": u32, "index": u32, "count": u32, "tx_follow_up": st.integers(-2**31, 2**31 - 1)})
keys = st.one_of(st.just(b""), st.binary(min_size=1, max_size=100))
payloads = st.binary(max_size=300)
fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def push(fields, payload=b"", key=b""):
    return udpio.push_header(payload=payload, key=key, **fields)


# -- codec --------------------------------------------------------------------------

GOLDEN_FIELDS = {"flags": ref.F_UNSYNC, "port": 0x0102, "session": 0x1122334455667788,
                 "start_ns": 0x1879DE1C8A2B4000, "seq": 0x0000000100000002, "send_ns": 0x1879DE1C8A2B5555,
                 "interval": 7, "clock_err_us": 16_000_000, "index": 3, "count": 0xA0B0C0D0}
GOLDEN = bytes.fromhex(
    "4e504f57" "02" "04" "0102"             # magic "NPOW", version 2, flags UNSYNC, port index 0x0102
    "1122334455667788"                      # session id
    "1879de1c8a2b4000"                      # sender start time, ns
    "0000000100000002"                      # sequence number
    "1879de1c8a2b5555"                      # send time, ns
    "00000007"                              # interval id
    "00f42400"                              # clock error bound 16 s in us
    "0043" "0000"                           # datagram length 67, reserved
    "00000003" "a0b0c0d0" "00000000"        # index, count, no TX follow-up
    "abcdef")                               # payload


def test_golden_vector_network_byte_order():
    assert push(GOLDEN_FIELDS, b"\xab\xcd\xef") == GOLDEN
    got = udpio.pull_header(GOLDEN)
    assert got == {**GOLDEN_FIELDS, "length": 67, "tx_follow_up": 0}


def test_golden_vector_with_tx_follow_up():
    fields = {**GOLDEN_FIELDS, "flags": ref.F_UNSYNC | ref.F_TXTIME, "tx_follow_up": -1234}
    want = GOLDEN[:5] + b"\x0c" + GOLDEN[6:60] + bytes.fromhex("fffffb2e") + GOLDEN[64:]
    assert push(fields, b"\xab\xcd\xef") == want
    assert udpio.pull_header(want) == {**fields, "length": 67}
    # the follow-up is written only with TXTIME, and without TXTIME offset 60 must be 0
    assert push({**fields, "flags": ref.F_UNSYNC}, b"\xab\xcd\xef") == GOLDEN
    with pytest.raises(udpio.DecodeError) as e:
        udpio.pull_header(GOLDEN[:60] + bytes.fromhex("fffffb2e") + GOLDEN[64:])
    assert "reserved" in str(e.value) and e.value.offset == 60


def test_golden_vector_with_tag():
    key = b"shared secret"
    data = push(GOLDEN_FIELDS, b"\xab\xcd\xef", key)
    body = GOLDEN[:48] + (67 + 32).to_bytes(2, "big") + GOLDEN[50:]
    body = body[:5] + bytes([ref.F_UNSYNC | ref.F_AUTH]) + body[6:]
    assert data == body + hmac.new(key, body, hashlib.sha256).digest()
    assert udpio.pull_header(data, key)["seq"] == GOLDEN_FIELDS["seq"]
    with pytest.raises(udpio.DecodeError) as e:
        udpio.pull_header(data, b"other key")
    assert e.value.offset == len(data) - 32
    with pytest.raises(udpio.DecodeError) as e:
        udpio.pull_header(GOLDEN, key)            # untagged datagram where a key is required
    assert "tag missing" in str(e.value) and e.value.offset == 5


def _cpu_has_sha():
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and " sha_ni" in line for line in f)


@fast
@given(keys, st.binary(max_size=2000))
def test_sha256_and_hmac_match_hashlib(key, data):
    """Both block functions: the CPU's SHA extensions where it has them, and the portable one."""
    try:
        for cpu in (True, False):
            assert udpio.sha256_use_cpu(cpu) == (cpu and _cpu_has_sha())
            assert udpio.sha256(data) == hashlib.sha256(data).digest()
            assert udpio.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()
    finally:
        udpio.sha256_use_cpu(True)


@fast
@given(header_fields, payloads, keys)
def test_encode_matches_reference_and_round_trips(fields, payload, key):
    data = push(fields, payload, key)
    assert data == ref.encode(fields, payload, key)
    got = udpio.pull_header(data, key)
    assert got == ref.decode(data, key)
    sent = {**fields, "tx_follow_up": fields["tx_follow_up"] if fields["flags"] & ref.F_TXTIME else 0}
    assert {k: got[k] for k in fields if k != "flags"} == {k: v for k, v in sent.items() if k != "flags"}


@fast
@given(header_fields, payloads, keys, st.data())
def test_corrupted_datagrams_are_rejected_like_the_reference(fields, payload, key, data):
    good = bytearray(push(fields, payload, key))
    mode = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if mode == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] ^= data.draw(st.integers(1, 255))
    elif mode == "truncate":
        good = good[:data.draw(st.integers(0, len(good) - 1))]
    else:
        good += data.draw(st.binary(min_size=1, max_size=20))
    bad = bytes(good)
    want = ref.decode(bad, key)
    if isinstance(want, dict):        # a flip in a field the codec does not check (e.g. seq, untagged)
        assert udpio.pull_header(bad, key) == want
        return
    with pytest.raises(udpio.DecodeError) as e:
        udpio.pull_header(bad, key)
    assert (str(e.value).rsplit(" at offset", 1)[0], e.value.offset) == want


def test_every_truncation_is_an_error_with_an_offset():
    data = push(GOLDEN_FIELDS, b"x" * 40, b"k")
    for n in range(len(data)):
        with pytest.raises(udpio.DecodeError) as e:
            udpio.pull_header(data[:n], b"k")
        assert e.value.offset == (n if n < 64 else 48)


# -- histogram bins -------------------------------------------------------------------

@fast
@given(st.one_of(st.integers(-2**36 + 1, 2**36 - 1), st.integers(-10_000, 10_000)),
       st.sampled_from([analysis.PORT_SUB_BITS, analysis.SESSION_SUB_BITS]))
def test_histogram_bin_contains_its_value(v, sub):
    lo, hi = analysis.bin_range(udpio.hist_bin(v, sub), sub)
    if v >= 0:
        assert lo <= v < hi
    else:
        assert lo <= v <= hi
    assert (hi - lo) <= max(1, abs(v) / 2**sub + 1)     # relative width <= 2**-sub


def test_histogram_bins_are_ordered_and_saturate():
    for sub in (analysis.PORT_SUB_BITS, analysis.SESSION_SUB_BITS):
        vals = sorted({random.randrange(-2**35, 2**35) for _ in range(2000)} | {0, 1, -1})
        lows = [analysis.bin_range(udpio.hist_bin(v, sub), sub)[0] for v in vals]
        assert lows == sorted(lows)
        top = udpio.hist_bin(2**40, sub)
        assert top == udpio.hist_bin(2**36, sub) == 2 * analysis.hist_bins(sub) - 1


# -- receiver accounting against the reference --------------------------------------------

SID = 0x5EED
T0 = 1_700_000_000 * 10**9


@st.composite
def scenarios(draw):
    """A sender's stream over a few ports and intervals, then a network that loses
    (runs of any length), duplicates and reorders it."""
    nports = draw(st.integers(1, 4))
    nint = draw(st.integers(1, 4))
    sent = []                 # (port, seq, interval, index, prev_count)
    seq = [0] * nports
    prev = [0] * nports
    for i in range(nint):
        for p in range(nports):
            n = draw(st.integers(0, 40))
            for k in range(n):
                sent.append((p, seq[p] + k, i, k, prev[p]))
            seq[p] += n
            prev[p] = n
    rnd = random.Random(draw(st.integers(0, 2**32)))
    loss = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    burst = draw(st.integers(0, 60))
    start = rnd.randrange(max(1, len(sent)))
    arrivals = [i for i in range(len(sent)) if rnd.random() >= loss and not start <= i < start + burst]
    for _ in range(draw(st.integers(0, 10))):                     # duplicates
        if arrivals:
            arrivals.insert(rnd.randrange(len(arrivals) + 1), rnd.choice(arrivals))
    for _ in range(draw(st.integers(0, 20))):                     # local reordering
        if len(arrivals) > 1:
            a = rnd.randrange(len(arrivals) - 1)
            b = min(len(arrivals) - 1, a + rnd.randint(1, 30))
            arrivals[a], arrivals[b] = arrivals[b], arrivals[a]
    return nports, nint, sent, arrivals


def _feed_all(rx, sent, arrivals, key=b""):
    for i in arrivals:
        p, seq, interval, index, prev = sent[i]
        rx.feed(push({"flags": 0, "port": p, "session": SID, "start_ns": T0, "seq": seq, "send_ns": T0 + i * 1000,
                      "interval": interval, "clock_err_us": 0, "index": index, "count": prev}, key=key),
                T0 + i * 1000 + 5000)


@fast
@given(scenarios())
def test_receiver_and_analysis_match_reference(case):
    nports, nint, sent, arrivals = case
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, nports)
    _feed_all(rx, sent, arrivals)
    want = ref.account([(p, s, i) for p, s, i, _, _ in sent], arrivals)
    closed = rx.close_through(SID, nint - 1)
    assert [c["interval"] for c in closed] == list(range(nint))
    for c in closed:
        counts = [want.get((p, c["interval"]), {"expected": 0})["expected"] for p in range(nports)]
        s = analysis.summarize(c, counts)
        for pl in s["ports"]:
            w = want.get((pl.port, c["interval"]), {"expected": 0, "received": 0, "lost": 0, "dup": 0,
                                                     "reordered": 0})
            got = {"expected": pl.expected, "received": pl.received, "lost": pl.lost, "dup": pl.dup,
                   "reordered": pl.reordered}
            assert got == w, (pl.port, c["interval"])
            assert pl.inconsistent == 0
        # delays: every received packet was 5 us late, exactly
        if s["delay_n"]:
            assert s["delay_min"] == s["delay_max"] == 5000


@fast
@given(scenarios(), st.data())
def test_tx_follow_ups_correct_exactly_the_preceding_packet(case, data):
    """Each probe may carry a follow-up (the kernel TX time of its port's previous sequence
    number); control records close each port. Through loss, duplicates and reordering, the
    receiver's delays match the two-step rule of tests/reference/oneway.py."""
    nports, nint, sent, arrivals = case
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    follow = [rnd.choice([None, rnd.randrange(-2**31, 2**31)]) for _ in sent]
    delay = [rnd.randrange(10**9) for _ in sent]
    ctl = []                      # one control record per port after the last interval
    for p in range(nports):
        last = max((s for q, s, *_ in sent if q == p), default=-1)
        ctl.append((p, last + 1, nint - 1, rnd.choice([None, rnd.randrange(-5000, 5000)])))
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, nports)
    feed, stream = [], []
    for i in arrivals:
        p, seq, interval, index, prev = sent[i]
        feed.append(({"flags": ref.F_TXTIME if follow[i] is not None else 0, "port": p, "seq": seq,
                      "interval": interval, "index": index, "count": prev, "tx_follow_up": follow[i] or 0},
                     delay[i]))
        stream.append((p, seq, interval, False, follow[i], delay[i]))
    for p, seq, interval, fu in ctl:
        feed.append(({"flags": ref.F_CONTROL | (ref.F_TXTIME if fu is not None else 0), "port": p, "seq": seq,
                      "interval": interval, "index": 0, "count": 0, "tx_follow_up": fu or 0}, 0))
        stream.append((p, seq, interval, True, fu, 0))
    for fields, d in feed:
        rx.feed(push({**fields, "session": SID, "start_ns": T0, "send_ns": T0, "clock_err_us": 0}), T0 + d)
    want = ref.follow_up_delays(stream)
    for c in rx.close_through(SID, nint - 1):
        for rec in c["ports"]:
            w = want.get((rec["port"], c["interval"]), [])
            assert (rec["n"], rec["n_tx"]) == (len(w), sum(f for _, f in w))
            assert rec["sum"] == sum(d for d, _ in w)
            if w:
                assert (rec["min"], rec["max"]) == (min(d for d, _ in w), max(d for d, _ in w))


@fast
@given(scenarios())
def test_in_band_accounting_never_invents_loss(case):
    """Without the sender's counts, expected comes from control records, the next interval's
    packets, or inference: exact when either arrived, never above the true loss."""
    nports, nint, sent, arrivals = case
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, nports)
    _feed_all(rx, sent, arrivals)
    want = ref.account([(p, s, i) for p, s, i, _, _ in sent], arrivals)
    for c in rx.close_through(SID, nint - 1):
        for pl in analysis.summarize(c)["ports"]:
            w = want.get((pl.port, c["interval"]), {"lost": 0, "received": 0})
            assert 0 <= pl.lost <= w["lost"]
            assert pl.received == w["received"]
            if pl.source == "next":
                assert pl.lost == w["lost"]


def test_control_record_reveals_tail_loss():
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 1)
    base = {"flags": 0, "port": 0, "session": SID, "start_ns": T0, "send_ns": T0, "interval": 0, "clock_err_us": 0,
            "count": 0}
    for s in range(10):                         # 20 sent, the last 10 lost (a tail loss)
        rx.feed(push({**base, "seq": s, "index": s}), T0 + 1000)
    rx.feed(push({**base, "flags": ref.F_CONTROL, "seq": 20, "index": 1, "count": 20}), T0 + 1000)
    (c,) = rx.close_through(SID, 0)
    pl = analysis.summarize(c)["ports"][0]
    assert (pl.expected, pl.received, pl.lost, pl.source) == (20, 10, 10, "control")


def test_gaps_of_any_size_and_late_packets():
    """UDPing froze after 9 consecutive losses; here a gap of 10,000 is counted exactly, and a
    packet arriving after its interval was closed is counted late, never in the next one."""
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 1)
    base = {"flags": 0, "port": 0, "session": SID, "start_ns": T0, "send_ns": T0, "clock_err_us": 0, "count": 0}
    for s in (0, 1, 10_002):
        rx.feed(push({**base, "seq": s, "index": s, "interval": 0}), T0)
    (c,) = rx.close_through(SID, 0)
    pl = analysis.summarize(c, [10_003])["ports"][0]
    assert (pl.received, pl.lost, pl.reordered) == (3, 10_000, 0)
    assert analysis.summarize(c)["ports"][0].lost == 10_000          # inferred from seq: the same here
    rx.feed(push({**base, "seq": 5, "index": 5, "interval": 0}), T0)
    assert rx.session_counters(SID)["late_closed"] == 1


def test_unknown_malformed_and_unauthenticated_are_counted_and_dropped():
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 2, b"key")
    base = {"flags": 0, "port": 0, "session": SID, "start_ns": T0, "send_ns": T0, "seq": 0, "interval": 0,
            "clock_err_us": 0, "index": 0, "count": 0}
    rx.feed(push(base, key=b"key"), T0)                           # good
    rx.feed(push(base), T0)                                       # no tag
    rx.feed(push({**base, "seq": 1, "index": 1}, key=b"bad"), T0)  # wrong key
    rx.feed(push({**base, "session": 99}, key=b"key"), T0)       # unknown session
    rx.feed(push({**base, "port": 2}, key=b"key"), T0)           # port index out of range
    rx.feed(b"", T0)
    rx.feed(b"\x00" * 80, T0)
    c = rx.counters
    assert (c["datagrams"], c["unauthenticated"], c["unknown_session"], c["malformed"]) == (7, 2, 1, 3)
    (closed,) = rx.close_through(SID, 0)
    assert [p["received"] for p in closed["ports"]] == [1, 0]


def test_receiver_memory_is_flat_over_intervals():
    """1,000 ports, 300 intervals: the resident set does not grow after the first intervals."""
    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 1000)
    base = {"flags": 0, "session": SID, "start_ns": T0, "clock_err_us": 0, "count": 0}
    pkts = {}
    seq = [0] * 1000
    before = None
    for i in range(300):
        for p in range(0, 1000, 7):
            for _ in range(3):
                d = push({**base, "port": p, "seq": seq[p], "index": 0, "interval": i, "send_ns": T0 + i})
                seq[p] += 1
                rx.feed(d, T0 + i + random.randrange(10**7))
        rx.close_through(SID, i)
        if i == 20:
            before = rss_kb()
    pkts.clear()
    assert rss_kb() <= before * 1.05, (before, rss_kb())


# -- sender on loopback ---------------------------------------------------------------

def _loopback(nports, **kw):
    rxs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rxs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rxs.bind(("127.0.0.1", 0))
    socks = []
    for _ in range(nports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.connect(rxs.getsockname())
        socks.append(s)
    return rxs, socks


def _drain(sock):
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("poisson", [True, False])
def test_schedule_without_sockets_has_its_distributions(poisson):
    """The sender core's schedule driven without sockets: gaps exponential with the mean
    (scipy's KS test; capped at 10x the mean) or fixed, ports round robin, lengths uniform
    over [min_len, max_len] (chi-square)."""
    due, port, length = udpio.Schedule(3, 1_000_000, min_len=64, max_len=127, poisson=poisson,
                                       seed=7).take(50_000)
    gaps = np.diff(due)
    if poisson:
        assert stats.kstest(gaps, stats.expon(scale=1e6).cdf).pvalue > 1e-3
        assert gaps.max() <= 10_000_000
    else:
        assert (gaps == 1_000_000).all()
    assert (port == np.arange(50_000) % 3).all()
    assert length.min() == 64 and length.max() == 127
    assert stats.chisquare(np.bincount(length - 64, minlength=64)).pvalue > 1e-3
    with pytest.raises(ValueError):
        udpio.Schedule(0, 1_000_000)


@pytest.mark.parametrize("poisson", [True, False])
def test_sender_schedule_sizes_and_random_payload(poisson):
    rxs, socks = _loopback(5)
    try:
        tx = udpio.UdpProbeSender([s.fileno() for s in socks], SID, T0, 1_000_000, min_len=64, max_len=200,
                                  poisson=poisson, spin_ns=200_000)
        late = np.zeros(10_000, dtype=np.int64)
        got = tx.run(1_000_000_000, late)
        counts = tx.end_interval(3)
        data = _drain(rxs)
    finally:
        for s in socks + [rxs]:
            s.close()
    pkts = [udpio.pull_header(d) for d in data]
    probes = [p for p in pkts if not p["flags"] & ref.F_CONTROL]
    controls = [p for p in pkts if p["flags"] & ref.F_CONTROL]
    assert got.sent == len(probes) == sum(counts) and got.send_errors == 0
    assert 870 <= got.sent <= 1130                  # 1 s at a 1 ms mean gap (Poisson: +-4 sigma)
    assert max(counts) - min(counts) <= 1               # round robin
    assert len(controls) == 15 and {(c["port"], c["count"]) for c in controls} == set(enumerate(counts))
    assert all(c["seq"] == counts[c["port"]] for c in controls)          # the next sequence number
    sizes = [len(d) for d in data if not udpio.pull_header(d)["flags"] & ref.F_CONTROL]
    assert min(sizes) >= 64 and max(sizes) <= 200 and len(set(sizes)) > 50
    payload = b"".join(d[64:] for d in data)
    assert len(zlib.compress(payload, 9)) > 0.98 * len(payload)      # random bytes: incompressible
    for port in range(5):
        seqs = [p["seq"] for p in probes if p["port"] == port]
        assert seqs == list(range(len(seqs))) and [p["index"] for p in probes if p["port"] == port] == seqs
    # the schedule itself: each probe's send stamp minus its send-time error is its slot
    # (loopback delivers in send order, which is the order of `late`)
    assert got.late == got.sent
    slots = np.array([p["send_ns"] for p in probes], dtype=np.float64) - late[:got.late]
    gaps = np.diff(np.sort(slots))
    cv = gaps.std() / gaps.mean()
    assert 0.9e6 <= gaps.mean() <= 1.12e6
    if poisson:
        assert 0.85 <= cv <= 1.15, cv                # exponential: CV 1 (0.99995 with the 10x cap)
        assert gaps.max() <= 10e6 + 1e5               # the cap (+ realtime vs monotonic read skew)
    else:
        assert cv < 0.01, cv
    assert statistics.median(late[:got.late]) < 1e6


def test_run_sets_its_threads_timer_slack_to_1ns():
    """The kernel's default 50 us slack would let every sleep before a slot end that late."""
    import ctypes
    import threading
    pr_set_timerslack, pr_get_timerslack = 29, 30          # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    seen = {}
    rxs, socks = _loopback(1)

    def sender():
        libc.prctl(pr_set_timerslack, 50_000, 0, 0, 0)     # the default (threads inherit their creator's)
        seen["before"] = libc.prctl(pr_get_timerslack, 0, 0, 0, 0)
        tx = udpio.UdpProbeSender([socks[0].fileno()], SID, T0, 1_000_000, poisson=False)
        tx.run(20_000_000)
        seen["after"] = libc.prctl(pr_get_timerslack, 0, 0, 0, 0)
    try:
        t = threading.Thread(target=sender)
        t.start()
        t.join(10)
    finally:
        rxs.close()
        socks[0].close()
    assert seen == {"before": 50_000, "after": 1}


def test_sender_refused_packets_keep_the_sequence_dense():
    """Sends that fail (ECONNREFUSED from a closed port) are counted and their numbers reused."""
    rxs, socks = _loopback(1)
    rxs.close()                                          # nothing listens: ICMP port unreachable
    try:
        tx = udpio.UdpProbeSender([socks[0].fileno()], SID, T0, 200_000, poisson=False)
        got = tx.run(100_000_000)
        assert got.send_errors > 0
        assert tx.next_seq == [got.sent]
        assert tx.end_interval(1) == [got.sent]
    finally:
        socks[0].close()


SO_TIMESTAMPNS = 35                    # <asm-generic/socket.h>; the socket module lacks it


def test_tx_follow_ups_lie_between_the_send_stamp_and_the_kernel_receive_time():
    """With tx_stamp each probe carries its port's previous packet's kernel TX time (as an
    offset from that packet's send stamp). Causality is the oracle: the kernel sends after
    the user-space stamp and before the receiving socket's kernel RX timestamp."""
    rxs, socks = _loopback(4)
    rxs.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        tx = udpio.UdpProbeSender([s.fileno() for s in socks], SID, T0, 1_000_000, poisson=False, tx_stamp=True)
        tx.run(500_000_000)
        counts = tx.end_interval(1)
        rxs.setblocking(False)
        got = []
        while True:
            try:
                data, anc, _, _ = rxs.recvmsg(2048, 64)
            except BlockingIOError:
                break
            (sec, nsec), = [struct.unpack("qq", d[:16]) for lvl, typ, d in anc if typ == SO_TIMESTAMPNS]
            got.append((udpio.pull_header(data), sec * 10**9 + nsec))
    finally:
        for s in socks + [rxs]:
            s.close()
    sent = {(h["port"], h["seq"]): (h["send_ns"], rx) for h, rx in got if not h["flags"] & ref.F_CONTROL}
    assert len(sent) == sum(counts) > 400
    checked = 0
    for h, _ in got:
        if h["flags"] & ref.F_TXTIME:
            send, rx = sent[(h["port"], h["seq"] - 1)]
            assert 0 <= h["tx_follow_up"] and send + h["tx_follow_up"] <= rx, h
            checked += 1
        else:
            # only a port's first probe has none, or one that left in the same sendmmsg as its
            # predecessor (the sender fell behind and batched them: one send stamp for both)
            assert h["tx_follow_up"] == 0 and not h["flags"] & ref.F_CONTROL, h
            assert h["seq"] == 0 or sent[(h["port"], h["seq"] - 1)][0] == h["send_ns"], h
    # a port's next probe is 4 ms later: nearly all carry one, and every control record does
    assert checked >= 0.95 * len(got) and tx.tx_stamps == sum(counts)


def test_sender_and_receiver_end_to_end_with_kernel_timestamps():
    import threading
    rxs, socks = _loopback(3)
    try:
        rx = udpio.UdpProbeReceiver(rxs.fileno())
        wait_until_stamped(socks[0], rxs)
        rx.add_session(SID, 3, b"k")
        tx = udpio.UdpProbeSender([s.fileno() for s in socks], SID, time.time_ns(), 50_000, min_len=96,
                                  max_len=128, key=b"k")
        th = threading.Thread(target=rx.run, args=(800_000_000,))
        th.start()
        tx.run(500_000_000)
        counts = tx.end_interval(3)
        th.join()
        (c,) = rx.close_through(SID, 0)
    finally:
        for s in socks + [rxs]:
            s.close()
    s = analysis.summarize(c, counts)
    assert rx.counters["no_kernel_ts"] == 0 and rx.counters["malformed"] == 0
    assert s["lost"] == 0 and s["received"] == sum(counts) > 5000
    assert 0 < s["delay_min"] <= s["delay_p50"] <= s["delay_p99"] <= s["delay_max"] < 0.1e9
    assert all(p["ctl_count"] == n for p, n in zip(c["ports"], counts, strict=True))


# -- raw Ethernet frames (next-hop MAC mode) -------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
def test_raw_frames_have_correct_checksums_and_rotate_macs_per_port(v6):
    """Frames written to a datagram socket (instead of AF_PACKET, so no root is needed) are
    parsed by scapy; its recomputed IPv4 and UDP checksums must equal ours."""
    import ipaddress

    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    src, dst = ("2001:2:0:1::2", "2001:2:0:2::2") if v6 else ("198.18.1.2", "198.18.2.2")
    macs = ["02:1a:b0:00:01:01", "02:1a:b0:00:09:09"]
    sports = [41000, 41001, 41002]
    try:
        tx = udpio.UdpProbeSender(None, SID, T0, 200_000, min_len=96, max_len=301, poisson=False, key=b"k", raw={
            "fd": a.fileno(), "src_mac": bytes.fromhex("021ab0000102"), "macs": [bytes.fromhex(m.replace(":", ""))
                                                                                 for m in macs],
            "src_ip": ipaddress.ip_address(src).packed, "dst_ip": ipaddress.ip_address(dst).packed,
            "sports": sports, "dport": 9177})
        got = tx.run(30_000_000)
        tx.end_interval(1)
        frames = _drain(b)
    finally:
        a.close()
        b.close()
    assert got.send_errors == 0 and len(frames) == got.sent + len(sports) >= 60
    seen = {p: [] for p in sports}
    for fr in frames:
        pkt = Ether(fr)
        ip = pkt[IPv6] if v6 else pkt[IP]
        assert (pkt.src, ip.src, ip.dst, pkt[UDP].dport) == ("02:1a:b0:00:01:02", src, dst, 9177)
        again = Ether(fr)
        del again[UDP].chksum
        if not v6:
            del again[IP].chksum
        again = Ether(bytes(again))
        assert again[UDP].chksum == pkt[UDP].chksum != 0
        if not v6:
            assert again[IP].chksum == pkt[IP].chksum and ip.len == len(fr) - 14
        probe = udpio.pull_header(bytes(pkt[UDP].payload), b"k")
        assert probe["port"] == sports.index(pkt[UDP].sport)
        if not probe["flags"] & ref.F_CONTROL:
            seen[pkt[UDP].sport].append(pkt.dst)
    for port, dsts in seen.items():                # each port alternates between the two next hops
        assert dsts == [macs[i % 2] for i in range(len(dsts))], port


# -- UDPing v1 (compatibility) ----------------------------------------------------------------

V1_GOLDEN = bytes.fromhex(
    "01" "00000000000000"                    # protoVersion 1, padding
    "00f1536500000000"                       # clientStartTime 1700000000, little-endian
    "3366613963306432653162343761366339643065" "00" "000000"   # guid "3fa9c0d2e1b47a6c9d0e" + NUL, padding
    "07000000" "00000000"                    # seqNum 7, padding
    "01f1536500000000"                       # sent.tv_sec 1700000001
    "0500000000000000"                       # sent.tv_nsec 5
    "64000000" "00000000")                   # size 100, padding


def test_v1_golden_vector():
    data = udping.push_udping(start_s=1_700_000_000, guid="3fa9c0d2e1b47a6c9d0e", seq=7, sent_sec=1_700_000_001,
                             sent_nsec=5, length=100)
    assert data == V1_GOLDEN + bytes(28)
    want = {"start_s": 1_700_000_000, "guid": "3fa9c0d2e1b47a6c9d0e", "seq": 7, "sent_sec": 1_700_000_001,
            "sent_nsec": 5, "size": 100}
    assert udping.pull_udping(data) == want == ref.decode_v1(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        rx = udping.UdpingV1Receiver(s.fileno())
        row = rx.feed(data, 1_700_000_001_000_000_105, "10.1.2.3", 5000)
        assert rx.feed(data[:-1], 0) is None and rx.malformed == 1
    assert row[:2] == [0x0A010203, 5000] and row[4:] == [1_700_000_000, 7, 1_700_000_001_000_000_005,
                                                         1_700_000_001_000_000_105]
    n, value = row[2] >> 16, ((row[2] & 0xFFFF) << 64) | (row[3] & (2**64 - 1))
    assert format(value, f"0{n}x") == "3fa9c0d2e1b47a6c9d0e"


@fast
@given(st.integers(-2**63, 2**63 - 1), st.text("0123456789abcdef", min_size=1, max_size=20), u32,
       st.integers(0, 2**33), st.integers(0, 999_999_999), st.integers(0, 200), st.data())
def test_v1_matches_the_struct_reference_and_rejects_corruption(start, guid, seq, sec, nsec, extra, data):
    d = udping.push_udping(start_s=start, guid=guid, seq=seq, sent_sec=sec, sent_nsec=nsec, length=72 + extra)
    assert udping.pull_udping(d) == ref.decode_v1(d)
    bad = bytearray(d)
    i = data.draw(st.integers(0, len(bad) - 1))
    bad[i] ^= data.draw(st.integers(1, 255))
    bad = bytes(bad[:data.draw(st.integers(0, len(bad)))])
    want = ref.decode_v1(bad)
    if isinstance(want, dict):
        assert udping.pull_udping(bad) == want
    else:
        with pytest.raises(udping.DecodeError) as e:
            udping.pull_udping(bad)
        assert (str(e.value).rsplit(" at offset", 1)[0], e.value.offset) == want


def test_v1_raw_sender_writes_udping_headers_with_random_payload():
    import ipaddress

    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        tx = udpio.UdpProbeSender(None, SID, 1_700_000_000 * 10**9, 200_000, min_len=72, max_len=400, v1=True, raw={
            "fd": a.fileno(), "src_mac": bytes(6), "macs": [bytes.fromhex("021ab0000101")],
            "src_ip": ipaddress.ip_address("198.18.1.2").packed, "dst_ip": ipaddress.ip_address("198.18.2.2").packed,
            "sports": [5000, 5001], "dport": 7000})
        guids = tx.new_guids()
        tx.run(20_000_000)
        frames = _drain(b)
        with pytest.raises(ValueError):
            tx.end_interval(3)                    # v1 has no control records
        tx.end_interval(0)
    finally:
        a.close()
        b.close()
    assert len(frames) > 20
    seqs = {5000: [], 5001: []}
    for fr in frames:
        pkt = Ether(fr)
        h = udping.pull_udping(bytes(pkt[UDP].payload))
        assert h["guid"] == guids[pkt[UDP].sport - 5000] and h["start_s"] == 1_700_000_000
        assert abs(h["sent_sec"] + h["sent_nsec"] / 1e9 - time.time()) < 5
        seqs[pkt[UDP].sport].append(h["seq"])
    assert all(v == list(range(len(v))) for v in seqs.values())
    payload = b"".join(Ether(fr)[UDP].payload.load[72:] for fr in frames)
    assert len(zlib.compress(payload, 9)) > 0.98 * len(payload)


def test_python_side_agrees_with_the_extension_layout():
    from netprobe.probes.oneway import config
    assert (analysis.PORT_SUB_BITS, analysis.SESSION_SUB_BITS, analysis.HIST_TOP) == \
        (udpio.PORT_SUB_BITS, udpio.SESSION_SUB_BITS, udpio.HIST_TOP_EXP)
    assert (config.HDR_LEN, config.TAG_LEN, config.MAX_LEN, config.MAX_PORTS) == \
        (udpio.HDR_LEN, udpio.TAG_LEN, udpio.MAX_LEN, udpio.MAX_SESSION_PORTS)
    assert (ref.F_CONTROL, ref.F_AUTH, ref.F_UNSYNC) == (udpio.F_CONTROL, udpio.F_AUTH, udpio.F_UNSYNC)
    assert ref.HDR_LEN == udpio.HDR_LEN and ref.TAG_LEN == udpio.TAG_LEN and udpio.V1_HDR == 72


# -- guards on input-driven arithmetic -------------------------------------------------

def _one_delay(send_ns, rx_ns, follow_up=None):
    """Feed one data packet (and a follow-up carrier when asked) -> (port record, counters)."""
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 1)
    base = {"flags": 0, "port": 0, "session": SID, "start_ns": T0, "send_ns": send_ns, "interval": 0,
            "clock_err_us": 0, "count": 0, "seq": 0, "index": 0}
    rx.feed(push(base), rx_ns)
    if follow_up is not None:
        rx.feed(push({**base, "flags": ref.F_TXTIME, "seq": 1, "index": 1, "send_ns": T0,
                      "tx_follow_up": follow_up}), T0)
    (c,) = rx.close_through(SID, 0)
    return c["ports"][0], rx.session_counters(SID)


def test_send_time_beyond_int64_is_dropped_not_wrapped_into_a_delay():
    """A send time of 2**64 - 1 ns is 584 years after rx: the true delay (Python ints) is
    hugely negative; the wrapped C subtraction made it +T0 ns. Such a packet is counted bad."""
    assert T0 - (2**64 - 1) < -2**63                          # the oracle: no int64 holds this delay
    rec, counters = _one_delay(2**64 - 1, T0)
    assert (rec["received"], rec["n"], counters["bad_port"]) == (0, 0, 1)
    rec, counters = _one_delay(2**63, T0)
    assert (rec["received"], counters["bad_port"]) == (0, 1)


def test_extreme_delays_saturate_instead_of_overflowing():
    """rx_ns - send_ns and delay - follow-up near the int64 ends: min/max keep the true sign."""
    rec, _ = _one_delay(2**63 - 1, -2**63)                    # true delay -2**64 + 1: below int64
    assert (rec["n"], rec["min"], rec["hist"]) == (1, -2**63, [[ref.hist_index(-2**63, 3), 1]])
    rec, _ = _one_delay(0, 2**63 - 1, follow_up=-2**31)       # delay 2**63 - 1 less -2**31: above int64
    assert (rec["n"], rec["n_tx"], rec["max"]) == (2, 1, 2**63 - 1)


def test_histogram_bin_of_int64_min_is_the_last_negative_bin():
    nb = (36 - 3 + 1) << 3
    assert udpio.hist_bin(-2**63, 3) == ref.hist_index(-2**63, 3) == nb - 1
    with pytest.raises(ValueError):
        udpio.hist_bin(5, 64)                                 # a shift by 64 is undefined in C


def test_close_through_far_future_interval_is_refused_at_once():
    """close_through(2**63 - 1) overflowed `interval - last_closed`, passed the bound and looped
    for ever; run in a child so that a regression fails instead of hanging the suite."""
    code = ("from netprobe.errors import load_extension\n"
            "rx = load_extension('_udpio').UdpProbeReceiver(); rx.add_session(1, 1)\n"
            "try:\n    rx.close_through(1, 2**63 - 1)\nexcept ValueError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused") and "at most 1024 intervals" in out.stdout
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 1)
    assert [c["interval"] for c in rx.close_through(SID, 1023)] == list(range(1024))


@pytest.mark.parametrize("duration", [0, -1, 2**62, 2**63 - 1])
def test_run_durations_outside_a_day_are_refused(duration):
    """2**62 ns made `end` and the poll timeout overflow (a negative timeout waits for ever)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="1 day"):
            udpio.UdpProbeReceiver(s.fileno()).run(duration)
        with pytest.raises(ValueError, match="1 day"):
            udping.UdpingV1Receiver(s.fileno()).run(np.empty((64, 8), dtype=np.int64), duration)
        s.connect(s.getsockname())
        with pytest.raises(ValueError, match="1 day"):
            udpio.UdpProbeSender([s.fileno()], SID, T0, 1_000_000).run(duration)


def test_v1_feed_refuses_a_port_beyond_16_bits():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        rx = udping.UdpingV1Receiver(s.fileno())
        data = udping.push_udping(start_s=1, guid="ab", seq=1, sent_sec=1, sent_nsec=0)
        assert rx.feed(data, T0, port=65535)[1] == 65535
        with pytest.raises(ValueError):
            rx.feed(data, T0, port=65536)                     # was written as port 0 silently


def test_control_copies_of_a_port_that_has_sent_nothing_are_accepted():
    """A control record's index is its copy number: copies 1 and 2 of a port whose next
    sequence number is still 0 were refused as malformed (index > seq)."""
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 1)
    base = {"flags": ref.F_CONTROL, "port": 0, "session": SID, "start_ns": T0, "send_ns": T0, "seq": 0,
            "interval": 0, "clock_err_us": 0, "count": 0}
    for copy in range(3):
        rx.feed(push({**base, "index": copy}), T0)
    assert (rx.counters["malformed"], rx.session_counters(SID)["controls"]) == (0, 3)
    (c,) = rx.close_through(SID, 0)
    assert (c["ports"][0]["ctl_count"], c["ports"][0]["ctl_next"]) == (0, 0)


def test_run_results_are_typed_and_read_only():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.connect(s.getsockname())
        got = udpio.UdpProbeSender([s.fileno()], SID, T0, 1_000_000, poisson=False).run(5_500_000)
        rx = udpio.UdpProbeReceiver(s.fileno())
        rx.add_session(SID, 1)
        back = rx.run(20_000_000)
    assert isinstance(got, udpio.SendResult) and isinstance(back, udpio.RecvResult)
    assert got.sent == back.datagrams == 6 and not got.interrupted and got.elapsed_ns >= 5_500_000
    with pytest.raises(AttributeError):
        got.sent = 0


def test_one_close_returns_a_bounded_number_of_port_records():
    """A peer's close request far ahead made close_through build a record per port and
    interval: 5,000 ports x 1,024 intervals = 5 million dicts. Now at most 65,536 records."""
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 5000)
    with pytest.raises(ValueError, match="at most 13 intervals of 5000 ports"):
        rx.close_through(SID, 13)
    closed = rx.close_through(SID, 12)
    assert len(closed) * 5000 == 65_000 <= 65_536
