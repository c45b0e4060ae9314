"""Hellos and capacity control messages built by Hypothesis, against a live peer.

The hellos are correctly signed, so they reach each kind's own field checks;
their fields are the protocol's names with values of any JSON type. Every
hello must get exactly one line, {"ok": true, ...} or a refusal followed
by the peer closing; every capacity message after the handshake a reply or
a refusal. The peer must stay up, within 50 MB of its starting RSS, and
serve the legitimate client at the end.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import wire
from tests.hostile.attacks import legit_probe
from tests.hostile.harness import Peer

ATTACKER = "127.0.0.2"
SETTINGS = {"handshake_timeout": "2s", "max_sessions": 16, "max_sessions_per_address": 16, "idle_timeout": "5s"}
FIELDS = ("session", "nports", "udp_port", "grace_ns", "udp_key", "role", "rate_down", "sample_ns", "congestion",
          "pacing", "token", "plan")
KINDS = ("capacity", "oneway", "throughput")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80),
                    st.sampled_from(["up", "down", "reno", "0" * 16, "ab" * 32]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8),
                                                                                          inner, max_size=4),
                      max_leaves=20)
hellos = st.fixed_dictionaries({"kind": st.sampled_from(KINDS)},
                               optional={name: values for name in FIELDS})
plan_rows = st.lists(st.lists(st.integers(-2**40, 2**40) | st.sampled_from([0, 2, 20, 1000, 10**9]),
                              min_size=0, max_size=8), max_size=6)
capacity_messages = st.one_of(
    st.fixed_dictionaries({}, optional={"udp_port": values, "token": values, "plan": values | plan_rows}),
    values)


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with Peer(tmp_path_factory.mktemp("peer"), SETTINGS) as p:
        p.start_kb = p.rss_kb()
        yield p


def check_peer(peer):
    assert peer.alive(), peer.log()[-600:]
    assert peer.rss_kb() - peer.start_kb <= 50 << 10, f"RSS grew to {peer.rss_kb() / 1024:.0f} MB"


def one_line_then_close(s, reply):
    """A refusal must be the last line; anything but ok or a refusal is a protocol break."""
    assert wire.accepted(reply) or wire.is_refusal(reply), f"neither ok nor a refusal: {reply!r:.300}"
    if wire.is_refusal(reply):
        rest, closed = s.reader.rest(timeout=5.0)
        assert closed and not rest, f"after the refusal: {rest!r:.300} (closed {closed})"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hello=hellos)
def test_signed_hello_gets_one_answer(peer, hello):
    kind = hello.pop("kind")
    s, reply = wire.open_session(peer.address, kind, peer.key, ATTACKER, **hello)
    with s:
        one_line_then_close(s, reply)
    check_peer(peer)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(capacity_messages, min_size=1, max_size=4))
def test_capacity_messages_get_an_answer(peer, messages):
    s, reply = wire.open_session(peer.address, "capacity", peer.key, ATTACKER)
    with s:
        assert wire.accepted(reply), reply
        for msg in messages:
            try:
                wire.send(s.sock, msg)
                got = s.reader.json(10.0)
            except OSError:               # closed after an earlier refusal
                break
            assert got is not None, f"the peer closed without a word after {msg!r:.300}"
            if wire.is_refusal(got):
                one_line_then_close(s, got)
                break
            assert isinstance(got, dict) and ("sent" in got or wire.accepted(got)), f"{msg!r:.200} -> {got!r:.300}"
    check_peer(peer)


def test_legitimate_client_served_after_the_fuzz(peer):
    got = legit_probe(peer.address, peer.key)
    assert got["ok"], got
    check_peer(peer)
