"""The oneway responder inside a real `serve.Server` (in-process, loopback): hellos it must
refuse with one line, and control lines from a hostile client that end only that session."""
import socket
import threading
import time

import pytest

from netprobe import serve
from netprobe.errors import PeerError
from netprobe.peer.client import connect


@pytest.fixture
def server():
    srv = serve.Server([("127.0.0.1", 0)], max_sessions=4)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.stop.set()
    t.join(5)


def address(srv):
    host, port = srv.addresses[0]
    return f"{host}:{port}"


@pytest.mark.parametrize("fields,msg", [
    ({"session": "XYZ", "nports": 1}, "session must be 16 lowercase hex digits"),
    ({"session": "0123456789abcdef", "nports": 0}, "nports must be an integer 1 to 5000"),
    ({"session": "0123456789abcdef", "nports": True}, "nports must be an integer 1 to 5000"),
    ({"session": "0123456789abcdef", "nports": 2, "grace_ns": 5}, "grace_ns must be an integer"),
    ({"session": "0123456789abcdef", "nports": 2, "udp_key": "zz"}, "udp_key must be 64 hex digits"),
])
def test_bad_hellos_are_refused_in_one_line(server, fields, msg):
    with pytest.raises(PeerError) as e:
        connect(address(server), "oneway", **fields)
    assert msg in str(e.value) and "\n" not in str(e.value)


def _session(srv, **extra):
    ch = connect(address(srv), "oneway", session="00000000000000aa", nports=2, grace_ns=10_000_000,
                 line_max=1 << 20, **extra)
    first = ch.recv(5)
    assert isinstance(first["udp_port"], int) and set(first["clock"]) == {"synced", "maxerror_us"}
    assert first["auth"] == ("session" if "udp_key" in extra else "none")
    assert 32768 <= first["udp_port"] <= 60999           # [serve] udp_ports' default
    return ch, first["udp_port"]


def refusal_then_close(ch):
    """The one refusal line a limit sends, then the end of the stream."""
    with pytest.raises(PeerError) as e:
        ch.recv(5)
    ch.sock.settimeout(5)
    assert ch.sock.recv(100) == b""
    return str(e.value)


def test_close_far_ahead_ends_the_session_not_the_server(server):
    ch, _ = _session(server)
    ch.send({"close": 4000000000})
    assert "only 4 intervals past the last closed (-1) can hold data (max_port_intervals=20000)" in \
        refusal_then_close(ch)                    # the peer closed this session...
    ch.close()
    ch, _ = _session(server)                      # ...and serves the next one
    ch.send({"close": 0})
    reply = ch.recv(5)
    assert reply["results"][0]["interval"] == 0 and len(reply["results"][0]["ports"]) == 2
    ch.close()


def test_garbage_control_line_ends_the_session(server):
    ch, _ = _session(server)
    ch.sock.sendall(b"this is not json\n")
    assert "bad control line: not a JSON line" in refusal_then_close(ch)
    ch.close()


def test_udp_probes_reach_the_session_and_are_reported(server):
    from netprobe.errors import load_extension
    udpio = load_extension("_udpio")
    ch, udp_port = _session(server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", udp_port))
        for seq in range(5):
            s.send(udpio.push_header(flags=0, port=1, session=0xAA, start_ns=1, seq=seq, send_ns=time.time_ns(),
                                     interval=0, clock_err_us=0, index=seq, count=0))
        s.send(b"junk")
    time.sleep(0.2)
    ch.send({"close": 0})
    reply = ch.recv(5)
    ports = reply["results"][0]["ports"]
    assert [p["received"] for p in ports] == [0, 5]
    assert reply["counters"]["malformed"] == 1 and reply["counters"]["packets"] == 5
    ch.close()
