"""Slot starvation: every way of holding a slot ends at handshake_timeout, idle_timeout or max_session_length.

An idle session must end within idle_timeout (plus 2 s of slack), naming
it; a busy one must outlive idle_timeout (its traffic is not idleness) and
end within max_session_length, naming that; a hello trickled a byte at a
time ends at handshake_timeout. The legitimate client is served after each.
"""
import itertools
import json
import secrets
import socket
import time

import pytest

from tests.hostile import wire
from tests.hostile.attacks import legit_probe
from tests.hostile.harness import Peer

ATTACKER = "127.0.0.2"
HANDSHAKE, IDLE, LENGTH = 2.0, 2.0, 10.0
SLACK = 2.0
SETTINGS = {"handshake_timeout": f"{HANDSHAKE:g}s", "idle_timeout": f"{IDLE:g}s",
            "max_session_length": f"{LENGTH:g}s", "max_sessions": 16, "max_sessions_per_address": 16}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with Peer(tmp_path_factory.mktemp("peer"), SETTINGS) as p:
        yield p


def trickled_hello(peer):
    s = wire.Session(peer.address, ATTACKER)
    s.greet()
    data = iter(b'{"netprobe": 1, "kind": "capacity", "padding": "' + b"a" * 4000)
    return s, lambda: s.sock.send(bytes([next(data)]))


def capacity(peer):
    s, reply = wire.open_session(peer.address, "capacity", peer.key, ATTACKER)
    assert wire.accepted(reply), reply
    return s


def oneway(peer):
    s, reply = wire.open_session(peer.address, "oneway", peer.key, ATTACKER,
                                 **wire.oneway_fields(secrets.token_hex(8), 4))
    assert wire.accepted(reply), reply
    s.reader.json()                       # the UDP port
    return s


def throughput_up(peer):
    s, reply = wire.open_session(peer.address, "throughput", peer.key, ATTACKER,
                                 **wire.throughput_up_fields(secrets.token_hex(8), 0))
    assert wire.accepted(reply), reply
    return s


def trickled_capacity_line(peer):
    s = capacity(peer)
    return s, lambda: s.sock.send(b"{")


def idle(opener):
    return lambda peer: (opener(peer), None)


def busy_capacity(peer):
    """Tiny plans every 0.25 s; their trains go to a port nobody reads (the peer's sending is not the point)."""
    s = capacity(peer)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((ATTACKER, 0))
        port = udp.getsockname()[1]
    assert wire.accepted(wire.capacity_setup(s, port, secrets.randbits(32)))
    return s, lambda: wire.capacity_plan(s, [[1, 2, 100, 0, 0, 0]])


def busy_oneway(peer):
    s = oneway(peer)
    n = itertools.count()
    return s, lambda: wire.send(s.sock, {"close": next(n)})


def busy_throughput_up(peer):
    s = throughput_up(peer)
    return s, lambda: s.sock.send(b"\0" * 4096)


# name -> (open and return (session, activity or None), the setting that must end it, bound in s)
CASES = {
    "trickled-hello": (trickled_hello, ("handshake_timeout",), HANDSHAKE),
    "trickled-capacity-line": (trickled_capacity_line, ("idle_timeout", "max_session_length"), LENGTH),
    "idle-capacity": (idle(capacity), ("idle_timeout",), IDLE),
    "idle-oneway": (idle(oneway), ("idle_timeout",), IDLE),
    "idle-throughput-up-rate-down-0": (idle(throughput_up), ("idle_timeout",), IDLE),
    "busy-capacity": (busy_capacity, ("max_session_length",), LENGTH),
    "busy-oneway": (busy_oneway, ("max_session_length",), LENGTH),
    "busy-throughput-up-rate-down-0": (busy_throughput_up, ("max_session_length",), LENGTH),
}


def drive(sess, act, every, limit):
    """Run act() every `every` s until the peer closes or `limit` s pass: (seconds, lines, closed)."""
    t0 = time.monotonic()
    nxt, lines = t0, []
    while time.monotonic() - t0 < limit:
        if act and time.monotonic() >= nxt:
            try:
                act()
            except OSError:
                pass                      # closed under us: the read below sees it
            nxt += every
        try:
            line = sess.reader.line(timeout=0.05)
        except TimeoutError:
            continue
        if line is None:
            return time.monotonic() - t0, lines, True
        lines.append(line)
    return time.monotonic() - t0, lines, False


@pytest.mark.parametrize("case", sorted(CASES))
def test_slot_holder_is_ended(peer, case):
    opener, settings, bound = CASES[case]
    sess, act = opener(peer)
    with sess:
        took, lines, closed = drive(sess, act, 0.25, bound + SLACK)
    assert closed, f"{case}: still open after {took:.1f} s (limit {bound:g} s)"
    last = lines[-1] if lines else b""
    try:
        last = json.loads(last)
    except ValueError:
        pass
    assert wire.is_refusal(last), f"{case}: closed after {took:.1f} s without a refusal line (last: {last!r:.200})"
    assert any(name in last["error"] for name in settings), f"{case}: the refusal names none of {settings}: {last}"
    if act and "max_session_length" in settings and "idle_timeout" not in settings:
        assert took > IDLE + 0.5, f"{case}: a busy session was ended after {took:.1f} s, before idle_timeout"
    got = legit_probe(peer.address, peer.key)
    assert got["ok"], got
