"""The client side of a peer session: PeerLink's BREACH/CLEAR and grace rules, the Channel
over a real socketpair, and the range checks on everything a peer sends (Hypothesis)."""
import json
import socket
import threading
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.errors import PeerError
from netprobe.peer.client import Channel, PeerLink, split_address
from netprobe.probes.oneway import analysis
from netprobe.probes.oneway.runner import valid_clock, valid_record
from netprobe.probes.throughput.runner import _parse_report
from netprobe.probes.throughput.samples import NCOLS


class FakeRunner:
    kind = "oneway"

    def __init__(self):
        self.cfg = types.SimpleNamespace(name="t", peer="192.0.2.1:7171")
        self.records = []

    def emit(self, rec):
        self.records.append(rec)


def failing(*errors):
    """A factory that raises the given errors in turn, then returns "session"."""
    it = iter(errors)

    def factory():
        e = next(it, None)
        if e is None:
            return "session"
        raise e
    return factory


def test_link_breach_once_then_clear():
    r = FakeRunner()
    link = PeerLink(r, failing(PeerError("refused: busy"), PeerError("refused: busy")), grace=0)
    stop = threading.Event()
    assert link.open(stop) is None and link.open(stop) is None
    assert link.open(stop) == "session"
    kinds = [(rec.type, rec.fields["state"]) for rec in r.records]
    assert kinds == [("BREACH", "lost"), ("CLEAR", "connected")]
    assert r.records[0].fields["detail"] == "refused: busy" and r.records[0].fields["metric"] == "connection"


def test_link_grace_hides_an_unreachable_peer_at_start_only():
    r = FakeRunner()
    link = PeerLink(r, failing(PeerError("down", unreachable=True), PeerError("down", unreachable=True)), grace=5)
    assert link.connect(threading.Event()) == "session"          # retried quietly within the grace
    assert r.records == []
    link.factory = failing(PeerError("down", unreachable=True))
    assert link.open(threading.Event()) is None                  # once connected, no grace
    assert [rec.type for rec in r.records] == ["BREACH"]


def test_link_detail_is_cleaned():
    r = FakeRunner()
    PeerLink(r, failing(PeerError("x\r\x1b[2J" + "y" * 500)), grace=0).open(threading.Event())
    detail = r.records[0].fields["detail"]
    assert "\r" not in detail and "\x1b" not in detail and len(detail) <= 200


def test_backoff_doubles_to_its_cap():
    link = PeerLink(FakeRunner(), failing(), grace=0)
    link.lost("x")
    stop = threading.Event()
    stop.set()                        # waits return at once; only the schedule is checked
    seen = []
    for _ in range(6):
        seen.append(link.backoff)
        link.wait(stop)
    assert seen == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("text,want", [("h", ("h", 7171)), ("h:80", ("h", 80)), ("[::1]", ("::1", 7171)),
                                       ("[::1]:9", ("::1", 9)), ("::1", ("::1", 7171))])
def test_split_address(text, want):
    assert split_address(text) == want


@pytest.mark.parametrize("text", ["", "h:0", "h:65536", "h:x", "[::1]:"])
def test_split_address_refuses(text):
    with pytest.raises(ValueError):
        split_address(text)


# -- Channel over a socketpair ---------------------------------------------------------------

def channel(limit=64):
    a, b = socket.socketpair()
    return Channel(a, {"ok": True}, "n", b"", limit, "peer"), b


def test_channel_poll_lines_and_refusal():
    ch, other = channel()
    other.sendall(b'{"a": 1}\n{"b"')
    assert ch.poll() == [{"a": 1}] and not ch.closed
    other.sendall(b': 2}\n{"ok": false, "error": "max_session_length=1h reached\\u001b"}\n')
    assert ch.poll() == [{"b": 2}]
    assert ch.closed and ch.error == "peer peer ended the session: max_session_length=1h reached?"


@pytest.mark.parametrize("data,error", [(b"x" * 100, "line longer than 64 bytes"), (b"[1]\n", "not a JSON object"),
                                        (b"\xff\n", "not a JSON line")])
def test_channel_poll_closes_on_bad_input(data, error):
    ch, other = channel()
    other.sendall(data)
    assert ch.poll() == [] and ch.closed and error in ch.error


def test_channel_recv_timeout_and_eof():
    ch, other = channel()
    with pytest.raises(PeerError, match="no answer within 0.05s"):
        ch.recv(0.05)
    other.close()
    with pytest.raises(PeerError, match="closed the control connection"):
        ch.recv(1)


# -- range checks on peer fields (Hypothesis) ------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                           max_leaves=30)


SMALL_OR_ANY = st.one_of(st.integers(-1, 1000), st.integers(-2**64, 2**64))


def port_record():
    ints = {k: SMALL_OR_ANY for k in ("received", "dup", "reordered", "stale", "n", "n_tx", "base", "max_seq",
                                      "ctl_count", "ctl_next", "piggy_count", "next_base", "min", "max")}
    hist = st.lists(st.lists(st.one_of(st.integers(0, 200), SMALL_OR_ANY), min_size=2, max_size=2), max_size=3)
    return st.fixed_dictionaries({"port": st.sampled_from([0, 0, 0, 1]), **ints, "sum": st.floats(),
                                  "sumsq": st.floats(), "hist": hist})


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values,
                 st.fixed_dictionaries({"interval": st.integers(-5, 2**33),
                                        "ports": st.lists(port_record(), min_size=1, max_size=1),
                                        "hist": st.lists(st.lists(st.integers(0, 300), min_size=2, max_size=2),
                                                         max_size=3)})))
def test_valid_record_accepts_only_what_analysis_can_use(rec):
    """Anything a peer sends either fails the range check with ValueError or goes through the
    analysis without an exception."""
    try:
        valid_record(rec, 1)
    except ValueError:
        return
    analysis.summarize(json.loads(json.dumps(rec)), [max(p["received"], 0) for p in rec["ports"]])


def test_a_receivers_own_record_passes_the_check():
    """Oracle: a record from the real receiver (close_through of a session that got 3 probes)."""
    from netprobe.errors import load_extension
    udpio = load_extension("_udpio")
    udp = (socket.AF_INET, socket.SOCK_DGRAM)
    with socket.socket(*udp) as rxs, socket.socket(*udp) as tx:
        rxs.bind(("127.0.0.1", 0))
        tx.connect(rxs.getsockname())
        rx = udpio.UdpProbeReceiver(rxs.fileno(), max_sessions=1)
        rx.add_session(0xAB, 2, b"")
        for seq in range(3):
            tx.send(udpio.push_header(flags=0, port=1, session=0xAB, start_ns=1, seq=seq, send_ns=1,
                                      interval=0, clock_err_us=0, index=seq, count=0))
        rx.run(50_000_000)
        (rec,) = json.loads(json.dumps(rx.close_through(0xAB, 0)))
    assert valid_record(rec, 2) is rec and [p["received"] for p in rec["ports"]] == [0, 3]
    with pytest.raises(ValueError, match="not an interval record of 3 ports"):
        valid_record(rec, 3)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_valid_clock_never_raises_and_bounds(clock):
    got = valid_clock(clock)
    assert got == {} or (isinstance(got["synced"], bool) and
                         (got["maxerror_us"] is None or 0 <= got["maxerror_us"] < 1 << 32))


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(lambda v: {"rows": v, "sender": v}),
                 st.fixed_dictionaries({"rows": st.lists(st.lists(st.integers(-2**64, 2**64), min_size=NCOLS,
                                                                  max_size=NCOLS), max_size=3),
                                        "sender": st.dictionaries(st.sampled_from(["eagain", "late_ticks", "x"]),
                                                                  json_values, max_size=3)})))
def test_parse_report_never_raises_and_range_checks(report):
    rows, totals = _parse_report(report, 7)
    if rows is not None:
        assert rows.shape[1] == NCOLS and (len(rows) == 0 or np.all(rows[:, 1] == 7))
    if totals is not None:
        assert all(k in ("eagain", "late_ticks") and isinstance(v, int) and 0 <= v < 1 << 63
                   for k, v in totals.items())
