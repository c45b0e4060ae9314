"""Hypothesis fuzz of the oneway probe's decoders: any bytes are a DecodeError or a
datagram, and the receiver counts every datagram exactly once, never raising."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from tests.reference import oneway as ref

udpio = load_extension("_udpio")
udping = load_extension("_udping")
SID = 0xF00D
fuzz = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# arbitrary bytes, and bytes that start like a probe (so the fuzzer gets past the magic)
datagrams = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda tail: bytes.fromhex("4e504f5702") + tail, st.binary(max_size=150)),
    st.builds(lambda head, tail: ref.encode(head, tail)[:64] + tail, st.fixed_dictionaries({
        "flags": st.integers(0, 15), "port": st.integers(0, 3), "session": st.sampled_from([SID, 1]),
        "start_ns": st.integers(0, 2**64 - 1), "seq": st.integers(0, 2**64 - 1),
        "send_ns": st.integers(0, 2**64 - 1), "interval": st.integers(0, 2**32 - 1),
        "clock_err_us": st.integers(0, 2**32 - 1), "index": st.integers(0, 2**32 - 1),
        "count": st.integers(0, 2**32 - 1), "tx_follow_up": st.integers(-2**31, 2**31 - 1)}),
        st.binary(max_size=64)),
)


@fuzz
@given(datagrams, st.sampled_from([b"", b"k"]))
def test_pull_header_only_raises_decode_error(data, key):
    try:
        got = udpio.pull_header(data, key)
    except udpio.DecodeError as exc:
        assert 0 <= exc.offset <= len(data)
        assert isinstance(ref.decode(data, key), tuple)
        return
    assert got == ref.decode(data, key)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datagrams, max_size=30), st.integers(-2**62, 2**62), st.sampled_from([b"", b"k"]))
def test_receiver_counts_every_datagram_and_never_raises(batch, rx_ns, key):
    rx = udpio.UdpProbeReceiver()
    rx.add_session(SID, 4, key)
    for d in batch:
        rx.feed(d, rx_ns)
    c = rx.counters
    s = rx.session_counters(SID)
    assert c["datagrams"] == len(batch)
    accepted = s["packets"] + s["controls"]
    assert c["malformed"] + c["unauthenticated"] + c["unknown_session"] + accepted == len(batch)
    for closed in rx.close_through(SID, 3):
        for p in closed["ports"]:
            assert p["received"] >= 0 and p["dup"] >= 0 and p["n"] == p["received"]


v1_datagrams = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda head, tail: b"\x01" + head + tail, st.binary(min_size=71, max_size=71), st.binary(max_size=40)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v1_datagrams)
def test_udping_v1_decoder_only_raises_decode_error(data):
    want = ref.decode_v1(data)
    try:
        got = udping.pull_udping(data)
    except udping.DecodeError as exc:
        assert (str(exc).rsplit(" at offset", 1)[0], exc.offset) == want
        return
    assert got == want
