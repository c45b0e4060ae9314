"""The oneway close bomb and every oversized or malformed control line: bounded memory, one refusal.

Each attack runs against one live peer from 127.0.0.2; the peer's peak RSS
(VmHWM, restarted before each attack; for the bomb, once its sessions are
open) may grow by at most 50 MB, the
attacked session must end with exactly one line, {"ok": false, "error":
...}, and a legitimate client from 127.0.0.1 must still be served
(handshake, setup, a train that arrives) during and after.
"""
import secrets
import threading

import pytest

from tests.hostile import wire
from tests.hostile.attacks import bomb_session, detonate, legit_probe
from tests.hostile.harness import Peer

ATTACKER = "127.0.0.2"
RSS_GROWTH_MAX_KB = 50 << 10
BOMBS = 4
SETTINGS = {"handshake_timeout": "2s", "max_sessions": 16, "max_sessions_per_address": BOMBS,
            "idle_timeout": "30s"}

OVERSIZED = {
    "8MiB-without-newline": b"a" * (8 << 20),
    "2MiB-line": b'{"x": "' + b"a" * (2 << 20) + b'"}\n',
}
MALFORMED = {
    "http": b"GET / HTTP/1.0\r\n\r\n",
    "bad-utf8": b'{"a": "\xff\xfe"}\n',
    "nesting": b"[" * 3000 + b"\n",
    "not-an-object": b"[1, 2, 3]\n",
    "nan": b'{"close": NaN, "udp_port": NaN, "plan": NaN}\n',
    "huge-integer": b'{"close": ' + b"9" * 5000 + b', "udp_port": ' + b"9" * 5000 + b"}\n",
    "nul-bytes": b"\x00" * 100 + b"\n",
}
# what to open before the line is sent: nothing (the line replaces the hello), or a session of a kind
STAGES = {"hello": None, "capacity": {}, "oneway": wire.oneway_fields("00" * 8, 4)}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with Peer(tmp_path_factory.mktemp("peer"), SETTINGS) as p:
        yield p


def served(peer):
    got = legit_probe(peer.address, peer.key)
    assert got["ok"], f"the legitimate client lost its service: {got['error']}"


def open_stage(peer, stage):
    fields = STAGES[stage]
    if fields is None:
        s = wire.Session(peer.address, ATTACKER)
        s.greet()
        return s
    if stage == "oneway":
        fields = {**fields, "session": secrets.token_hex(8)}
    s, reply = wire.open_session(peer.address, stage, peer.key, ATTACKER, **fields)
    assert wire.accepted(reply), f"{stage} session refused before the attack: {reply}"
    if stage == "oneway":
        s.reader.json()                   # its first line: the UDP port and clock
    return s


def send_quietly(sock, data):
    """The peer may close before it has read everything: that is an answer, not an error."""
    try:
        sock.sendall(data)
    except OSError:
        pass


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("name", sorted(OVERSIZED) + sorted(MALFORMED))
def test_bad_control_line_is_refused_in_one_line(peer, stage, name):
    payload = {**OVERSIZED, **MALFORMED}[name]
    rss = peer.rss_kb()
    peer.reset_peak()
    s = open_stage(peer, stage)
    with s:
        sender = threading.Thread(target=send_quietly, args=(s.sock, payload), daemon=True)
        sender.start()
        lines, closed = s.reader.rest(timeout=5.0)
        sender.join(5)
    growth = peer.hwm_kb() - rss
    assert peer.alive(), peer.log()[-600:]
    assert closed, f"the peer kept the {stage} session open after the {name} line (it answered {lines})"
    assert len(lines) == 1 and wire.is_refusal(lines[0]), f"expected one refusal line, got {lines}"
    assert growth <= RSS_GROWTH_MAX_KB, f"peak RSS grew by {growth / 1024:.0f} MB"
    served(peer)


def test_oneway_close_bomb(peer):
    """BOMBS sessions of 5,000 ports each ask to close 1,024 intervals at once, twice over; what the
    closes cost is measured from the RSS with the sessions open (their receivers are fixed memory)."""
    for round_ in range(2):
        opened = [bomb_session(peer.address, peer.key, ATTACKER) for _ in range(BOMBS)]
        sessions = [s for s, _ in opened if s]
        for s, why in opened:
            assert s or (wire.is_refusal(why) and "max_port_intervals" in why["error"]), \
                f"a 5000-port session was neither opened nor refused naming max_port_intervals: {why}"
        rss = peer.rss_kb()
        peer.reset_peak()
        ends = []
        bombs = [threading.Thread(target=lambda s=s, out=ends: out.append(detonate(s)), daemon=True)
                 for s in sessions]
        for t in bombs:
            t.start()
        during = [legit_probe(peer.address, peer.key) for _ in range(3)]
        for t in bombs:
            t.join(40)
        growth = peer.hwm_kb() - rss
        assert peer.alive(), peer.log()[-600:]
        assert len(ends) == len(sessions), "a bomb session never ended"
        for lines, closed, took in ends:
            assert closed and len(lines) == 1 and wire.is_refusal(lines[0]), \
                f"round {round_}: the bomb session ended after {took:.1f} s with " \
                f"{[str(x)[:200] for x in lines]} (closed: {closed})"
            assert "interval" in lines[0]["error"], f"the refusal does not name the limit: {lines[0]}"
        assert growth <= RSS_GROWTH_MAX_KB, f"round {round_}: peak RSS grew by {growth / 1024:.0f} MB"
        assert all(p["ok"] for p in during), f"the legitimate client lost its service: {during}"
    served(peer)
