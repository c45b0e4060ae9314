"""Hypothesis fuzz of the pcap/pcapng reader and packet decoders (netprobe._pcapread).

Whatever the bytes, the analyser must return (a partial result with counted
errors) or raise PcapError with one line; never crash, hang or read out of
bounds (the build has bounds checks off, so an overread would show as a
crash or as garbage counters, which the invariants below catch).
"""
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.probes.retrans import pcapfile
from tests.fuzz import examples
from tests.reference import retrans_gen as gen

SCRIPT = [("send", 0)] * 4 + [("lose", 0), ("send", 0), ("dupack", 0), ("retrans", 4), ("dsack", 0)]
V4 = [gen.link(ip, 1) for _, ip in gen.conversation(SCRIPT)]
V6 = [gen.link(ip, 276) for _, ip in gen.conversation(SCRIPT, v6=True)]
# 300 examples per target in the normal suite; `make fuzz`: 200,000 (tests/fuzz/__init__.py)
FUZZ = settings(max_examples=examples(300), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def check(data):
    try:
        r = pcapfile.analyse_bytes(data)
    except pcapfile.PcapError as exc:
        assert "\n" not in str(exc)
        return None
    c = r.counters
    assert c["frames"] == len(r.flags)
    assert c["tcp"] + c["non_ip"] + c["non_tcp"] + c["fragments"] + c["truncated"] + c["malformed"] \
        + c["bad_linktype"] >= c["frames"] - c["ipv4"] - c["ipv6"]
    assert c["tcp"] <= c["frames"]
    assert r.error is None or "\n" not in r.error
    for f in r.flows:
        assert f.ab["retrans"] <= f.ab["pkts"] and f.ba["retrans"] <= f.ba["pkts"]
    return r


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(data):
    check(data)


@FUZZ
@given(magic=st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a"]),
       rest=st.binary(max_size=600))
def test_valid_magic_random_body(magic, rest):
    check(magic + rest)


@FUZZ
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
       fmt=st.sampled_from(["pcap", "pcapng", "pcap6", "pcapng6"]),
       linktype=st.sampled_from([0, 1, 101, 108, 113, 228, 229, 276, 999]))
def test_mutated_real_captures(cut, flips, fmt, linktype):
    """Truncated headers and records, bad lengths and bad link types, from a real conversation."""
    frames = V6 if fmt.endswith("6") else V4
    writer = gen.pcap if fmt.startswith("pcap") and not fmt.startswith("pcapng") else gen.pcapng
    lt = 276 if fmt.endswith("6") else 1
    data = bytearray(writer(list(enumerate(frames)), linktype=lt))
    if linktype != 999:
        if writer is gen.pcap:
            data[20:24] = struct.pack("<I", linktype)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    check(bytes(data[:max(0, len(data) - cut)]))
    stream(bytes(data[:max(0, len(data) - cut)]))


def stream(data):
    """Stream mode (live tcpdump pipe): a cut record is left for later, other errors stop."""
    a = pcapfile.new_analyser()
    try:
        off = a.open(data)
    except ValueError:
        return
    flags, fd = np.zeros(16, np.uint16), np.zeros(16, np.int32)
    while True:
        chunk = a.run(data, off, flags, fd, True)
        assert off <= chunk.offset <= len(data) and 0 <= chunk.frames <= 16
        assert chunk.error is None or (not chunk.more and "\n" not in chunk.error)
        off = chunk.offset
        if not chunk.more:
            break


@FUZZ
@given(snaplen=st.integers(0, 120))
def test_every_snaplen(snaplen):
    """Frames cut anywhere inside Ethernet, IP, extension or TCP headers are counted, not read."""
    r4 = check(gen.pcap(list(enumerate(V4)), snaplen=snaplen))
    r6 = check(gen.pcap(list(enumerate(V6)), linktype=276, snaplen=snaplen))
    for r, n in ((r4, len(V4)), (r6, len(V6))):
        assert r.counters["frames"] == n
        assert r.counters["tcp"] + r.counters["truncated"] == n
