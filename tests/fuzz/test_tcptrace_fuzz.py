"""Structured fuzz of the TCP tracer's ICMP parser (tcptrace.parse_icmp): ICMP and ICMPv6
errors built by scapy, quoting TCP (and UDP, IP options, IPv6 extension headers), with every
field drawn and the message cut anywhere. Oracle: what was built (IPv4) and scapy's own
dissection of the same bytes (IPv6); the parser never raises, and answers only when the
quote holds the TCP ports and sequence number."""
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, TCPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrHopByHop,
)

from netprobe.probes.retrans import tcptrace
from tests.fuzz import examples

fuzz = settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])

v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
seqs = st.integers(0, 2**32 - 1)


@st.composite
def icmp4(draw):
    """(bytes, what the parser must return): the answer follows from what was built."""
    nops = [IPOption_NOP()] * draw(st.integers(0, 12))        # both headers may carry options
    inner = IP(src=draw(v4), dst=draw(v4), ttl=draw(st.integers(0, 255)), options=nops)
    tcp = draw(st.booleans())
    sport, dport, seq = draw(ports), draw(ports), draw(seqs)
    l4 = TCP(sport=sport, dport=dport, seq=seq, flags="A") if tcp else UDP(sport=sport, dport=dport)
    inner.proto = 6 if tcp else 17
    itype, code = draw(st.sampled_from([11, 3, 0, 8, 5])), draw(st.integers(0, 15))
    outer = IP(src=draw(v4), dst=draw(v4), options=[IPOption_NOP()] * draw(st.integers(0, 8)), proto=1)
    raw = bytes(outer / ICMP(type=itype, code=code) / bytes(inner / l4))
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(0, len(raw)))]
    need = len(bytes(outer)) + 8 + len(bytes(inner)) + 8
    ok = tcp and itype in (11, 3) and len(raw) >= need
    return raw, (itype, code, outer.src, inner.src, inner.dst, sport, dport, seq) if ok else None


@st.composite
def icmp6(draw):
    inner = IPv6(src=draw(v6), dst=draw(v6), hlim=draw(st.integers(0, 255)))
    if draw(st.integers(0, 3)) == 0:
        inner = inner / IPv6ExtHdrHopByHop()
    if draw(st.booleans()):
        inner = inner / TCP(sport=draw(ports), dport=draw(ports), seq=draw(seqs), flags="A")
    else:
        inner = inner / UDP(sport=draw(ports), dport=draw(ports))
    kind = draw(st.sampled_from([ICMPv6TimeExceeded, ICMPv6DestUnreach, ICMPv6EchoRequest]))
    msg = kind(code=draw(st.integers(0, 5))) if kind is not ICMPv6EchoRequest else kind()
    raw = bytes(msg / bytes(inner))
    return raw[:draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw


@fuzz
@given(icmp4())
def test_icmp4_errors_quoting_tcp_parse_as_built(case):
    raw, want = case
    assert tcptrace.parse_icmp(raw, 4) == want


@fuzz
@given(icmp6(), v6)
def test_icmp6_errors_quoting_tcp_parse_like_scapy(raw, sender):
    got = tcptrace.parse_icmp(raw, 6, sender)
    want = None
    if len(raw) >= 56 and raw[0] in (1, 3):
        q = IPerror6(raw[8:])
        if q.nh == socket.IPPROTO_TCP:
            t = TCPerror(raw[48:56])
            want = (raw[0], raw[1], sender, q.src, q.dst, t.sport, t.dport, t.seq)
    assert got == want, (got, want)


@fuzz
@given(st.binary(max_size=120), st.sampled_from([4, 6]), st.one_of(st.none(), v6, st.just("fe80::1%e0")))
def test_any_bytes_are_none_or_a_full_answer(data, family, sender):
    got = tcptrace.parse_icmp(data, family, sender)
    assert got is None or (len(got) == 8 and all(0 <= v <= 2**32 - 1 for v in (got[5], got[6], got[7])))
