"""Hypothesis fuzz of the inet_diag parser (netprobe._nldiag.parse): truncated, corrupted and random
netlink bytes never crash it; every bad message is counted, and the counts and sockets agree with
the pure-Python reference decoder (tests/reference/netlink.py)."""
import socket
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from tests.fuzz import examples
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
    assert got.done == wdone
    assert got.sockets + got.overflow == len(want)
    for k in COUNTS:
        assert getattr(got, k) == wc[k], (k, got, wc)
    for rec, w in zip(out[:got.sockets], want, strict=False):
        assert rec["idiag_cookie"] == w["cookie"] and rec["idiag_sport"] == w["sport"]
        assert rec["info_len"] == w["info_len"] and rec["tcpi_rtt"] == w.get("tcpi_rtt", 0)
    return got


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.data())
def test_truncated_dump_is_counted(n, data):
    buf = _dump(n)
    cut = data.draw(st.integers(0, len(buf) - 1))
    got = _agree(buf[:cut])
    assert not got.done
    ends = [0]
    for i in range(n):
        ends.append(ends[-1] + len(ref.encode_sock(_sock(i, socket.AF_INET if i % 2 else socket.AF_INET6), 5)))
    whole = sum(e <= cut for e in ends[1:])
    assert got.sockets == whole                         # every message before the cut, none after
    assert (got.malformed + got.truncated == 0) == (cut in ends)   # a cut mid-message is counted


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
        assert got.sockets <= 6
    assert _agree(buf).sockets == 6


# -- structured: netlink message sequences with nested attributes --------------------------------------
#
# Messages and attributes are built from parts, each with a length field that may be right, short,
# long, zero or unaligned; NLA_F_NESTED attributes hold further attributes; NLMSG_DONE, NLMSG_ERROR,
# NOOP and unknown types fall anywhere, with the dump's sequence number or another. The bytes go to
# the extension and to the reference decoder; they must agree on every counter and every record.
# 300 examples in the normal suite; `make fuzz`: 200,000 (tests/fuzz/__init__.py).

EXAMPLES = examples(300)
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
ATTR_TYPES = (ref.INET_DIAG_INFO, ref.INET_DIAG_CONG, ref.INET_DIAG_BBRINFO, ref.INET_DIAG_SKMEMINFO,
              ref.INET_DIAG_VEGASINFO, 1, 5, 0, 0x3fff)
BAD_LENGTHS = ("short", "long", "zero", "unpadded")


def _length(true_len, draw):
    """Mostly the true length (so whole dumps parse and records get compared), else a bad one."""
    mode = draw(st.sampled_from(BAD_LENGTHS)) if draw(st.integers(0, 11)) == 0 else "exact"
    if mode == "short":
        return draw(st.integers(0, max(true_len - 1, 0)))
    if mode == "long":
        return true_len + draw(st.integers(1, 4096))
    if mode == "zero":
        return 0
    if mode == "unpadded":
        return true_len + draw(st.integers(1, 3))       # a length the padding does not round to
    return true_len


@st.composite
def attributes(draw, depth=0):
    """Bytes of a list of rtattrs; each may nest (NLA_F_NESTED) up to depth 3."""
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        atype = draw(st.sampled_from(ATTR_TYPES))
        if depth < 3 and draw(st.integers(0, 4)) == 0:
            payload = draw(attributes(depth + 1))
            atype |= NLA_F_NESTED
        else:
            payload = draw(st.one_of(
                st.binary(max_size=40),
                st.builds(lambda n, rtt: ref.tcp_info_bytes(tcpi_rtt=rtt)[:n], st.integers(0, 300),
                          st.integers(0, 2**32 - 1)),
                st.sampled_from([b"cubic\0", b"bbr\0", b"a" * 20, b"\xff" * 16]),
                st.binary(min_size=20, max_size=20), st.binary(min_size=36, max_size=44)))
        if draw(st.booleans()):
            atype |= NLA_F_NET_BYTEORDER
        alen = _length(4 + len(payload), draw)
        raw = struct.pack("=HH", min(alen, 0xffff), atype) + payload
        pad = draw(st.sampled_from([(-len(raw)) % 4] * 6 + [0, 1]))
        out += raw + b"\0" * pad
    return out


@st.composite
def messages(draw, seq):
    kind = draw(st.sampled_from(("sock",) * 6 + ("done", "error", "noop", "other")))
    mseq = seq if draw(st.integers(0, 5)) else draw(st.integers(0, 2**32 - 1))
    flags = draw(st.sampled_from([ref.NLM_F_MULTI, ref.NLM_F_MULTI | ref.NLM_F_DUMP_INTR, 0]))
    if kind == "sock":
        mtype = ref.SOCK_DIAG_BY_FAMILY
        head = struct.pack("=BBBB", draw(st.sampled_from([socket.AF_INET, socket.AF_INET6] * 4 + [0, 1, 255])),
                           draw(st.integers(0, 12)), 0, 0) + draw(st.binary(min_size=68, max_size=68))
        if draw(st.integers(0, 9)) == 0:
            head = head[:draw(st.integers(0, 71))]      # a header cut short
        body = head + draw(attributes())
    elif kind in ("done", "error"):
        mtype = ref.NLMSG_DONE if kind == "done" else ref.NLMSG_ERROR
        body = draw(st.sampled_from([b"", struct.pack("=i", 0), struct.pack("=i", -22) + bytes(16),
                                     struct.pack("=i", -4), b"\1\2"]))
    else:
        mtype = 1 if kind == "noop" else draw(st.integers(0, 0xffff))
        body = draw(st.binary(max_size=24))
    mlen = _length(16 + len(body), draw)
    raw = struct.pack("=IHHII", mlen & 0xffffffff, mtype, flags, mseq, 0) + body
    return raw + b"\0" * draw(st.sampled_from([(-len(raw)) % 4] * 6 + [0, 2]))


@st.composite
def datagrams(draw):
    seq = draw(st.integers(1, 2**32 - 1))
    buf = b"".join(draw(st.lists(messages(seq), max_size=8)))
    if buf and draw(st.integers(0, 4)) == 0:
        buf = buf[:draw(st.integers(0, len(buf)))]     # the datagram cut anywhere
    return buf, seq


def _same_record(rec, raw, w):
    assert (rec["idiag_family"], rec["idiag_state"]) == (w["family"], w["state"])
    assert (rec["idiag_sport"], rec["idiag_dport"], rec["idiag_cookie"]) == (w["sport"], w["dport"], w["cookie"])
    assert bytes(rec["idiag_src"]) == w["src"] and bytes(rec["idiag_dst"]) == w["dst"]
    assert (rec["idiag_if"], rec["idiag_inode"], rec["idiag_uid"]) == (w["if"], w["inode"], w["uid"])
    assert rec["info_len"] == w["info_len"]
    base = nl.RECORD_DTYPE.fields["tcpi_state"][1]
    assert raw[base:base + ref.TCP_INFO_SIZE] == w.get("tcp_info", bytes(ref.TCP_INFO_SIZE))
    assert bytes(rec["ca_name"]) == w.get("cong", "").encode("latin-1")
    assert bool(rec["has_bbr"]) == ("bbr" in w)
    if "bbr" in w:
        assert (rec["bbr_bw"], rec["bbr_min_rtt"], rec["bbr_pacing_gain"], rec["bbr_cwnd_gain"]) == w["bbr"]
    assert bool(rec["has_skmem"]) == ("skmem" in w)
    if "skmem" in w:
        assert tuple(int(rec[f"skmem_{k}"]) for k in ref.SKMEM) == w["skmem"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(datagrams(), st.integers(0, 10))
def test_structured_messages_agree_with_reference(dgram, cap):
    buf, seq = dgram
    out = np.zeros(cap, dtype=nl.RECORD_DTYPE)
    got = nl.parse(buf, out, seq=seq, t_ns=7)
    want, wc, wdone = ref.decode(buf, seq)
    assert got.done == wdone
    assert got.sockets == min(cap, len(want)) and got.overflow == len(want) - got.sockets
    for k in COUNTS:
        assert getattr(got, k) == wc[k], (k, got, wc)
    raw = out.view(np.uint8).reshape(cap, -1) if cap else None
    for i, w in enumerate(want[:got.sockets]):
        assert out[i]["t_ns"] == 7
        _same_record(out[i], raw[i].tobytes(), w)
    assert not out[got.sockets:].view(np.uint8).any()     # nothing written past the records it counts
