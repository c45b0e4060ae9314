"""Kernel bytecode from netprobe.probes.flows.filters on random port lists and prefixes: the kernel
accepts every program, and returns exactly the sockets the filter's meaning selects (Python,
tests/reference/netlink.matches) from an unfiltered dump. Sockets other processes open or close
meanwhile are left out: only sockets present in the unfiltered dumps before and after count."""
import socket

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from netprobe.probes.flows import filters
from tests.reference import netlink as ref

nl = load_extension("_nldiag")


@pytest.fixture(scope="module")
def sockets():
    """30 connections: IPv4, IPv6 and v4-mapped IPv6 (dual-stack listener), three listeners."""
    keep = []
    lst6 = socket.socket(socket.AF_INET6)
    lst6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lst6.bind(("::", 0))
    lst6.listen(64)
    lst4 = socket.create_server(("127.0.0.1", 0))
    keep += [lst6, lst4]
    for i in range(30):
        if i % 3 == 0:
            c = socket.create_connection(("127.0.0.1", lst4.getsockname()[1]))
            a = lst4.accept()[0]
        else:
            c = socket.create_connection(("::1" if i % 3 == 1 else "127.0.0.1", lst6.getsockname()[1]))
            a = lst6.accept()[0]
        keep += [c, a]
    yield sorted({s.getsockname()[1] for s in keep})
    for s in keep:
        s.close()


def _dump(bytecode=b""):
    out = np.zeros(8192, dtype=nl.RECORD_DTYPE)
    got = nl.InetDiagDumper(bytecode=bytecode).dump(out)
    return out[:got.sockets], got


def _key(r):
    return (int(r["idiag_cookie"]), int(r["idiag_sport"]), int(r["idiag_dport"]))


def _as_sock(r):
    return {"family": int(r["idiag_family"]), "sport": int(r["idiag_sport"]), "dport": int(r["idiag_dport"]),
            "src": bytes(r["idiag_src"]), "dst": bytes(r["idiag_dst"])}


ports = st.integers(0, 65535)
ranges = st.lists(st.one_of(ports.map(lambda p: (p, p)), st.tuples(ports, ports).map(lambda t: tuple(sorted(t)))),
                  max_size=6)
prefixes = st.lists(st.one_of(
    st.sampled_from(["127.0.0.0/8", "127.0.0.1/32", "10.0.0.0/8", "0.0.0.0/0", "::1/128", "::/0", "fe80::/10",
                     "::ffff:0:0/96", "127.0.0.2/31"]),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4).map(str), st.integers(0, 32))), max_size=3)


def _either(sock, either):
    return not either or any(lo <= p <= hi for lo, hi in either for p in (sock["sport"], sock["dport"]))


@settings(max_examples=60, deadline=None)
@given(sport=ranges, dport=ranges, src=prefixes, dst=prefixes, either=ranges, data=st.data())
@example(sport=[], dport=[], src=["::ffff:0:0/96"], dst=[], either=[], data=None)
@example(sport=[], dport=[], src=["127.0.0.0/8"], dst=["::1/128"], either=[], data=None)
def test_kernel_filter_selects_what_the_filter_means(sockets, sport, dport, src, dst, either, data):
    if data is not None:            # bias the port lists towards the ports our sockets really use
        sport = sport + [(p, p) for p in data.draw(st.lists(st.sampled_from(sockets), max_size=3))]
        dport = dport + [(p, p) for p in data.draw(st.lists(st.sampled_from(sockets), max_size=3))]
        if data.draw(st.booleans()):            # often only the either-end test, as the retrans probe uses it
            sport, dport = [], []
        either = either + [(p, p) for p in data.draw(st.lists(st.sampled_from(sockets), max_size=3))]
    bc = filters.compile_filter(sport=sport, dport=dport, src=src, dst=dst, either_port=either)
    before, _ = _dump()
    got, _ = _dump(bc)                          # OSError if the kernel's audit rejected the program
    after, _ = _dump()
    stable = {_key(r) for r in before} & {_key(r) for r in after}
    want = {_key(r) for r in before if _key(r) in stable and ref.matches(_as_sock(r), sport, dport, src, dst)
            and _either(_as_sock(r), either)}
    assert {_key(r) for r in got} & stable == want


def test_filter_limits_and_parse_errors():
    assert filters.compile_filter() == b""
    big = [(p, p) for p in range(1, 20000, 2)]
    with pytest.raises(ValueError, match="bytecode"):
        filters.compile_filter(sport=big)
    assert filters.parse_ports("80, 443,2000-3000,") == ((80, 80), (443, 443), (2000, 3000))
    for bad in ("80-", "x", "70000", "3000-2000", "-5"):
        with pytest.raises(ValueError):
            filters.parse_ports(bad)
