"""`netprobe serve` handshake and access control, on loopback."""
import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time

import pytest

from netprobe import serve
from netprobe.peer import protocol


def read_line(sock):
    """One line, read a byte at a time so nothing after it is consumed (test helper)."""
    out = b""
    while not out.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            raise ConnectionError(f"closed after {out!r}")
        out += b
    return out[:-1]


def echo_responder(session):
    """A test responder: accepts, then echoes one line back, proving the session was handed over."""
    session.send({"ok": True})
    session.send(session.read())


@pytest.fixture
def server(request):
    opts = getattr(request, "param", {})
    srv = serve.Server([("127.0.0.1", 0)], responders={"echo": echo_responder}, **opts)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.stop.set()
    t.join(5)


def connect(srv):
    s = socket.create_connection(srv.addresses[0], timeout=5)
    return s, json.loads(read_line(s))


def hello(s, **fields):
    s.sendall(protocol.encode({"netprobe": 1, **fields}))
    return json.loads(read_line(s))


def test_session_handed_to_responder(server):
    s, greeting = connect(server)
    assert set(greeting) == {"netprobe", "nonce"} and greeting["netprobe"] == 1
    assert hello(s, kind="echo") == {"ok": True}
    s.sendall(b'{"ping": 1}\n')
    assert json.loads(read_line(s)) == {"ping": 1}


def test_unknown_kind_refused_with_reason(server):
    s, _ = connect(server)
    reply = hello(s, kind="teleport")      # not a kind (other tests may register the real ones)
    assert reply["ok"] is False and "does not serve kind 'teleport'" in reply["error"]


@pytest.mark.parametrize("server", [{"allow": (ipaddress.ip_network("10.0.0.0/8"),)}], indirect=True)
def test_client_outside_allow_list_refused(server):
    s = socket.create_connection(server.addresses[0], timeout=5)
    reply = json.loads(read_line(s))
    assert reply == {"ok": False, "error": "client 127.0.0.1 is not in the allow list"}
    assert server.counters["refused_prefix"] == 1


def proof(key, challenge, **fields):
    """The client's proof computed from the wire rules (protocol.py's docstring)."""
    body = json.dumps({"netprobe": 1, **fields}, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, b"netprobe auth v1:" + challenge.encode() + b"\n" + body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("server", [{"key": b"s3cret-of-16-bytes"}], indirect=True)
def test_key_challenge(server):
    s, greeting = connect(server)
    assert hello(s, kind="echo", auth=proof(b"wrong", greeting["challenge"], kind="echo"))["ok"] is False
    s, greeting = connect(server)
    assert hello(s, kind="echo", auth="é" * 64)["ok"] is False            # not hex: refused, not a TypeError
    s, greeting = connect(server)
    assert hello(s, kind="echo", auth=proof(b"s3cret-of-16-bytes", greeting["challenge"], kind="echo")) == \
        {"ok": True}
    assert server.counters["bad_auth"] == 2


@pytest.mark.parametrize("server", [{"max_sessions": 2, "max_sessions_per_address": 16}], indirect=True)
def test_session_cap(server):
    held = [connect(server)[0] for _ in range(2)]
    for s in held:
        assert hello(s, kind="echo") == {"ok": True}
    s, _ = connect(server)
    assert hello(s, kind="echo") == {"ok": False, "error": "busy: max_sessions=2 reached"}


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


@pytest.mark.parametrize("server", [{"handshake_timeout": 0.5}], indirect=True)
def test_partial_handshake_times_out_and_frees_the_session(server):
    s, _ = connect(server)
    t0 = time.monotonic()
    s.sendall(b'{"netprobe": 1, "kind": ')          # never finished
    reply = json.loads(read_line(s))
    assert reply == {"ok": False, "error": "bad handshake: hello incomplete after handshake_timeout=0.5s"}
    assert 0.4 < time.monotonic() - t0 < 1.5


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


@pytest.mark.parametrize("mode,key,message", [
    (0o644, "k" * 32, "mode 0644 lets others read or change the key: chmod 600 {f} (or 640, group netprobe)"),
    (0o660, "k" * 32, "mode 0660 lets others read or change the key: chmod 600 {f}"),
    (0o600, "short", "the key has 5 bytes; use at least 16"),
])
def test_serve_refuses_unsafe_key_files_in_one_line(tmp_path, mode, key, message):
    import subprocess

    from tests.integration.test_throughput import ROOT, netprobe
    f = tmp_path / "key"
    f.write_text(key + "\n")
    f.chmod(mode)
    p = subprocess.run(netprobe("serve", "--listen", "127.0.0.1:0", "--key-file", f, "--duration", "1s"), cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and message.format(f=f) in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_a_group_readable_key_file_is_accepted(tmp_path):
    from netprobe.config import schema
    f = tmp_path / "key"
    f.write_text("k" * 32 + "\n")
    f.chmod(0o640)
    cfg = schema.build(serve.ServeConfig, {"key_file": str(f)}, schema.Where("t.toml", "serve"))
    assert cfg.shared_key() == b"k" * 32


def test_a_short_key_in_the_table_is_a_config_error():
    from netprobe.config import schema
    from netprobe.errors import ConfigError
    with pytest.raises(ConfigError, match=r"serve.key: the shared key has 5 bytes; use at least 16"):
        schema.build(serve.ServeConfig, {"key": "short"}, schema.Where("t.toml", "serve"))
