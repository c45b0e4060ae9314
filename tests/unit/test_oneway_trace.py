"""trace.py's parsing of what the error queue hands back, the budget, the star merge,
and `netprobe probe trace` refusing bad input with one line."""
import ipaddress
import socket
import struct
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.probes.oneway import trace


def ee(origin, etype, code, family, addr):
    head = trace.EE.pack(113, origin, etype, code, 0, 0, 0)
    if family == 4:
        off = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_pton(socket.AF_INET, addr))
    else:
        off = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, addr), 0)
    return head + off


def test_time_exceeded_from_a_router_v4_and_v6():
    anc4 = [(socket.IPPROTO_IP, trace.IP_RECVERR, ee(2, 11, 0, 4, "198.18.10.2"))]
    assert trace.parse_error(anc4, 4) == (11, 0, "198.18.10.2")
    anc6 = [(socket.IPPROTO_IPV6, trace.IPV6_RECVERR, ee(3, 3, 0, 6, "2001:2:0:110::2"))]
    assert trace.parse_error(anc6, 6) == (3, 0, "2001:2:0:110::2")
    # a local error (origin 1) or the other family's cmsg is no router's answer
    assert trace.parse_error([(socket.IPPROTO_IP, trace.IP_RECVERR, ee(1, 0, 0, 4, "198.18.10.2"))], 4) is None
    assert trace.parse_error(anc6, 4) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([socket.IPPROTO_IP, socket.IPPROTO_IPV6, 1]),
                          st.sampled_from([trace.IP_RECVERR, trace.IPV6_RECVERR, 0]),
                          st.one_of(st.binary(max_size=64),
                                    st.builds(lambda o, t, c, a, cut: ee(o, t, c, 4, a)[:cut],
                                              st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                                              st.ip_addresses(v=4).map(str), st.integers(0, 40)),
                                    st.builds(lambda o, t, c, a, cut: ee(o, t, c, 6, a)[:cut],
                                              st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                                              st.ip_addresses(v=6).map(str), st.integers(0, 50)))),
                max_size=4),
       st.sampled_from([4, 6]))
def test_parse_error_never_raises_on_truncated_or_foreign_cmsgs(anc, family):
    got = trace.parse_error(anc, family)
    assert got is None or (len(got) == 3 and isinstance(got[2], str))


def test_budget_refills_at_its_share_and_caps_the_bank():
    now = [0.0]
    b = trace.Budget(0.01, 1000.0, 5, clock=lambda: now[0])       # 10 packets/s, 5 banked
    assert sum(b.take() for _ in range(20)) == 5
    now[0] = 1.0
    assert sum(b.take() for _ in range(20)) == 5                  # 10 earned, 5 kept
    now[0] = 1.3
    assert sum(b.take() for _ in range(20)) == 3
    assert b.spent == 13


def test_merge_fills_stars_from_the_last_trace_only():
    old = trace.PortPath(5000, ["a", "m0", "b"])
    new = trace.PortPath(5000, ["a", None, "b", None])
    assert trace.merge(old, new).hops == ["a", "m0", "b", None]
    assert trace.merge(None, new) is new


def cli(*args):
    return subprocess.run([sys.executable, "-m", "netprobe", "probe", "trace", *args],
                          capture_output=True, text=True, timeout=30)


def test_cli_refuses_bad_input_with_one_line():
    for args, want in ((["--peer", "127.0.0.1", "--ports", "5-9", "--dst-port", "9"], "--ports"),
                       (["--peer", "127.0.0.1", "--ports", "5000", "--dst-port", "0"], "--dst-port"),
                       (["--peer", "127.0.0.1", "--ports", "5000", "--dst-port", "9", "--rate", "0"], "--rate"),
                       (["--peer", "no such host", "--ports", "5000", "--dst-port", "9"], "--peer")):
        p = cli(*args)
        assert p.returncode == 2 and p.stdout == ""
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0] and "Traceback" not in p.stderr, p.stderr


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 6]), st.data(), st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 255),
       st.binary(max_size=80))
def test_raw_trace_datagram_is_what_scapy_dissects(family, data, sport, dport, ttl, payload):
    """Raw mode's IP + UDP datagram: scapy reads back every field, and the checksums it
    recomputes from scratch equal ours (RFC 1071 over the header / pseudo-header)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    src, dst = (data.draw(st.ip_addresses(v=family)) for _ in range(2))
    wire = trace.ip_udp(src, dst, sport, dport, ttl, payload)
    pkt = (IP if family == 4 else IPv6)(wire)
    ip = pkt[IP] if family == 4 else pkt[IPv6]
    got = (ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst), ip[UDP].sport, ip[UDP].dport)
    assert got == (src, dst, sport, dport)
    assert (ip.ttl if family == 4 else ip.hlim) == ttl
    assert bytes(ip[UDP].payload) == payload and ip[UDP].len == 8 + len(payload)
    fresh = pkt.copy()
    if family == 4:
        assert (ip.version, ip.ihl, ip.len, ip.proto, ip.flags, ip.frag) == (4, 5, len(wire), 17, 0, 0)
        del fresh[IP].chksum
    else:
        assert (ip.version, ip.tc, ip.fl, ip.plen, ip.nh) == (6, 0, 0, len(wire) - 40, 17)
    del fresh[UDP].chksum
    rebuilt = (IP if family == 4 else IPv6)(bytes(fresh))
    if family == 4:
        assert rebuilt[IP].chksum == ip.chksum
    assert rebuilt[UDP].chksum == ip[UDP].chksum != 0
