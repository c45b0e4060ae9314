"""What a client may choose on the peer: whose session it joins, the congestion control, the UDP port,
and what a broken proof of the key gets it.

Each refusal must be one line {"ok": false, "error": ...} naming the
setting that refused; what the settings allow must still be accepted, so
a peer that refuses everything fails too.
"""
import secrets

import pytest

from tests.hostile import wire
from tests.hostile.attacks import legit_probe
from tests.hostile.harness import Peer

OWNER, ATTACKER, ATTACKER2 = "127.0.0.1", "127.0.0.2", "127.0.0.3"
UDP_PORTS = (40000, 40099)
SETTINGS = {"congestion_allow": ["reno"], "udp_ports": f"{UDP_PORTS[0]}-{UDP_PORTS[1]}",
            "max_sessions": 16, "max_sessions_per_address": 8, "idle_timeout": "30s"}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with Peer(tmp_path_factory.mktemp("peer"), SETTINGS) as p:
        yield p


def up_leg(peer, source=OWNER, rate=1e6):
    sid = secrets.token_hex(8)
    s, reply = wire.open_session(peer.address, "throughput", peer.key, source,
                                 **wire.throughput_up_fields(sid, rate))
    assert wire.accepted(reply), reply
    return s, sid, reply


def refused_naming(reply, setting):
    return wire.is_refusal(reply) and setting in reply["error"]


def test_down_leg_from_another_address_is_refused(peer):
    up, sid, reply = up_leg(peer)
    with up:
        thief, got = wire.open_session(peer.address, "throughput", peer.key, ATTACKER,
                                       **wire.throughput_down_fields(sid, reply))
        thief.close()
        assert wire.is_refusal(got), f"a down leg from {ATTACKER} joined {OWNER}'s session: {got}"
        own, got = wire.open_session(peer.address, "throughput", peer.key, OWNER,
                                     **wire.throughput_down_fields(sid, reply))
        own.close()
        assert wire.accepted(got), f"the owner's own down leg was refused after the attempt: {got}"


@pytest.mark.parametrize("name,allowed", [("reno", True), ("bbr", False), ("cubic", False), ("tcp_evil", False)])
def test_congestion_only_from_congestion_allow(peer, name, allowed):
    up, sid, reply = up_leg(peer)
    with up:
        down, got = wire.open_session(peer.address, "throughput", peer.key, OWNER,
                                      **wire.throughput_down_fields(sid, reply, congestion=name))
        down.close()
    if allowed:
        assert wire.accepted(got), got
    else:
        assert refused_naming(got, "congestion_allow"), got


@pytest.mark.parametrize("port,allowed", [(53, False), (123, False), (UDP_PORTS[0] - 1, False),
                                          (UDP_PORTS[1] + 1, False), (UDP_PORTS[0] + 50, True)])
def test_oneway_udp_port_only_from_udp_ports(peer, port, allowed):
    s, got = wire.open_session(peer.address, "oneway", peer.key, OWNER,
                               **wire.oneway_fields(secrets.token_hex(8), 4, udp_port=port))
    with s:
        if allowed:
            assert wire.accepted(got), got
            assert s.reader.json()["udp_port"] == port
        else:
            assert refused_naming(got, "udp_ports"), got


def test_oneway_port_the_peer_picks_is_in_udp_ports(peer):
    s, got = wire.open_session(peer.address, "oneway", peer.key, OWNER,
                               **wire.oneway_fields(secrets.token_hex(8), 4, udp_port=0))
    with s:
        assert wire.accepted(got), got
        port = s.reader.json()["udp_port"]
    assert UDP_PORTS[0] <= port <= UDP_PORTS[1], f"the peer received on UDP {port}"


BAD_AUTH = {"non-ascii": "\u00e9" * 64, "non-hex": "zz" * 32, "wrong": "0" * 64, "short": "abc",
            "not-a-string": 12345, "list": ["0" * 64], "empty": ""}


@pytest.mark.parametrize("name", sorted(BAD_AUTH))
def test_bad_auth_is_refused_in_one_line(peer, name):
    with wire.Session(peer.address, ATTACKER) as s:
        reply = s.hello("capacity", auth=BAD_AUTH[name])
        rest, closed = s.reader.rest(timeout=5.0)
    assert wire.is_refusal(reply) and closed and not rest, f"auth {name}: got {reply}, then {rest} (closed {closed})"
    assert peer.alive(), peer.log()[-600:]
    got = legit_probe(peer.address, peer.key)
    assert got["ok"], got


def test_failed_auth_logs_once_per_address(peer):
    before = len(peer.log().splitlines())
    replies = []
    for i in range(40):
        for source in (ATTACKER, ATTACKER2):
            with wire.Session(peer.address, source) as s:
                replies.append(s.hello("capacity", auth=list(BAD_AUTH.values())[i % len(BAD_AUTH)]))
    got = legit_probe(peer.address, peer.key)
    new = peer.log().splitlines()[before:]
    for source in (ATTACKER, ATTACKER2):
        assert sum(source in line for line in new) <= 1, f"{source}: {[x for x in new if source in x][:5]}"
    assert len(new) <= 2, f"{len(new)} log lines for 80 failed handshakes from 2 addresses: {new[:5]}"
    assert all(wire.is_refusal(r) for r in replies), [r for r in replies if not wire.is_refusal(r)][:3]
    assert got["ok"], got
