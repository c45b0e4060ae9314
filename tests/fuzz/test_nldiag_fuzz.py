"""Hypothesis fuzz of the inet_diag parser (netprobe._nldiag.parse): truncated, corrupted and random
netlink bytes never crash it; every bad message is counted, and the counts and sockets agree with
the pure-Python reference decoder (tests/reference/netlink.py)."""
import socket

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from tests.reference import netlink as ref

nl = load_extension("_nldiag")
COUNTS = ("messages", "malformed", "truncated", "no_info", "dump_intr", "foreign", "error")


def _sock(i, fam):
    return {"family": fam, "sport": 1000 + i, "dport": 2000 + i, "cookie": i + 1, "src": bytes(range(16)),
            "dst": bytes(16), "info": ref.tcp_info_bytes(tcpi_rtt=i * 10)[: 100 + 20 * i],
            "cong": "cubic" if i % 2 else None, "bbr": (i, i, i, i) if i % 3 == 0 else None,
            "skmem": [i] * 9 if i % 4 == 0 else None}


def _dump(n, seq=5):
    return b"".join(ref.encode_sock(_sock(i, socket.AF_INET if i % 2 else socket.AF_INET6), seq)
                    for i in range(n)) + ref.encode_done(seq)


def _agree(buf, seq=5, cap=32):
    out = np.zeros(cap, dtype=nl.RECORD_DTYPE)
    got = nl.parse(buf, out, seq=seq)
    want, wc, wdone = ref.decode(buf, seq)
    assert got["done"] == wdone
    assert got["sockets"] + got["overflow"] == len(want)
    for k in COUNTS:
        assert got[k] == wc[k], (k, got, wc)
    for rec, w in zip(out[:got["sockets"]], want, strict=False):
        assert rec["idiag_cookie"] == w["cookie"] and rec["idiag_sport"] == w["sport"]
        assert rec["info_len"] == w["info_len"] and rec["tcpi_rtt"] == w.get("tcpi_rtt", 0)
    return got


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.data())
def test_truncated_dump_is_counted(n, data):
    buf = _dump(n)
    cut = data.draw(st.integers(0, len(buf) - 1))
    got = _agree(buf[:cut])
    assert not got["done"]
    ends = [0]
    for i in range(n):
        ends.append(ends[-1] + len(ref.encode_sock(_sock(i, socket.AF_INET if i % 2 else socket.AF_INET6), 5)))
    whole = sum(e <= cut for e in ends[1:])
    assert got["sockets"] == whole                         # every message before the cut, none after
    assert (got["malformed"] + got["truncated"] == 0) == (cut in ends)   # a cut mid-message is counted


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=12))
def test_corrupted_dump_is_counted(n, flips):
    buf = bytearray(_dump(n))
    for pos, val in flips:
        buf[pos % len(buf)] = val
    _agree(bytes(buf))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2**32 - 1), st.integers(0, 8))
def test_random_bytes_never_crash(data, seq, cap):
    _agree(data, seq, cap)


def test_every_cut_of_a_dump():
    buf = _dump(6)
    for cut in range(len(buf)):
        got = _agree(buf[:cut])
        assert got["sockets"] <= 6
    assert _agree(buf)["sockets"] == 6
