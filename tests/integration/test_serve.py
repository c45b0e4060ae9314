"""`netprobe serve` handshake and access control, on loopback."""
import ipaddress
import json
import socket
import threading
import time

import pytest

from netprobe import serve


def echo_responder(sock, hello, server):
    """A test responder: accepts, then echoes one line back, proving the session was handed over."""
    serve.reply_ok(sock)
    sock.sendall(serve.read_line(sock) + b"\n")


@pytest.fixture
def server(request):
    opts = getattr(request, "param", {})
    serve.RESPONDERS["echo"] = echo_responder
    srv = serve.Server([("127.0.0.1", 0)], **opts)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.stop.set()
    t.join(5)
    del serve.RESPONDERS["echo"]


def connect(srv):
    s = socket.create_connection(srv.addresses[0], timeout=5)
    return s, json.loads(serve.read_line(s))


def hello(s, **fields):
    serve.send_json(s, {"netprobe": 1, **fields})
    return json.loads(serve.read_line(s))


def test_session_handed_to_responder(server):
    s, greeting = connect(server)
    assert greeting == {"netprobe": 1}
    assert hello(s, kind="echo") == {"ok": True}
    s.sendall(b"ping\n")
    assert serve.read_line(s) == b"ping"


def test_unknown_kind_refused_with_reason(server):
    s, _ = connect(server)
    reply = hello(s, kind="teleport")      # not a kind (other tests may register the real ones)
    assert reply["ok"] is False and "does not serve kind 'teleport'" in reply["error"]


@pytest.mark.parametrize("server", [{"allow": (ipaddress.ip_network("10.0.0.0/8"),)}], indirect=True)
def test_client_outside_allow_list_refused(server):
    s = socket.create_connection(server.addresses[0], timeout=5)
    reply = json.loads(serve.read_line(s))
    assert reply == {"ok": False, "error": "client 127.0.0.1 is not in the allow list"}
    assert server.counters["refused_prefix"] == 1


@pytest.mark.parametrize("server", [{"key": b"s3cret"}], indirect=True)
def test_key_challenge(server):
    s, greeting = connect(server)
    assert hello(s, kind="echo", auth=serve.client_auth(b"wrong", greeting["challenge"]))["ok"] is False
    s, greeting = connect(server)
    assert hello(s, kind="echo", auth=serve.client_auth(b"s3cret", greeting["challenge"])) == {"ok": True}
    assert server.counters["bad_auth"] == 1


@pytest.mark.parametrize("server", [{"max_sessions": 2}], indirect=True)
def test_session_cap(server):
    held = [connect(server)[0] for _ in range(2)]
    for s in held:
        assert hello(s, kind="echo") == {"ok": True}
    s = socket.create_connection(server.addresses[0], timeout=5)
    assert "busy" in json.loads(serve.read_line(s))["error"]


@pytest.mark.parametrize("server", [{"max_sessions": 64}], indirect=True)
def test_flood_of_bogus_handshakes_does_not_stop_valid_clients(server):
    junk = [b"GET / HTTP/1.0\r\n\r\n", b"\xff" * 5000, b"{\"netprobe\": 2}\n", b"[]\n", b"\n", b""]
    deadline = time.monotonic() + 5
    for i in range(300):
        if time.monotonic() > deadline:
            break
        with socket.create_connection(server.addresses[0], timeout=5) as s:
            s.sendall(junk[i % len(junk)])
    s, _ = connect(server)
    assert hello(s, kind="echo") == {"ok": True}
    assert server.counters["bad_handshake"] >= 150


def test_parse_listen():
    assert serve.parse_listen("[::1]:9000") == ("::1", 9000)
    assert serve.parse_listen("10.0.0.1:80") == ("10.0.0.1", 80)
    assert serve.parse_listen(":7000") == ("::", 7000)
    with pytest.raises(serve.UsageError, match="port must be 0-65535"):
        serve.parse_listen("host:99999")


def test_partial_handshake_times_out_and_frees_the_session(server, monkeypatch):
    monkeypatch.setattr(serve, "HELLO_TIMEOUT", 0.5)
    s, _ = connect(server)
    s.sendall(b'{"netprobe": 1, "kind": ')          # never finished
    t0 = time.monotonic()
    reply = json.loads(serve.read_line(s))
    assert reply["ok"] is False and "incomplete" in reply["error"]
    assert time.monotonic() - t0 < 3


def test_sigterm_stops_serve_before_its_duration():
    """`netprobe serve --duration 60s` stops at once on SIGTERM (its timer must not hold the exit)."""
    import signal
    import subprocess

    from tests.integration.test_throughput import ROOT, free_port, netprobe, wait_listening
    port = free_port()
    p = subprocess.Popen(netprobe("serve", "--listen", f"127.0.0.1:{port}", "--duration", "60s"), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
