"""The peer's limits against hostile clients, on loopback with an in-process Server: each
refusal is one line naming its [serve] setting, the pre-authentication pool keeps a
flooding address from locking others out, and what capacity sends stays under max_rate
(measured by the kernel receive timestamps of the trains, not by the peer's own account)."""
import json
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from netprobe import serve
from netprobe.errors import PeerError, load_extension
from netprobe.peer import protocol
from netprobe.peer.client import connect
from netprobe.peer.server import RateBudget, TokenBucket
from tests.integration import test_serve as serve_test
from tests.integration.test_capacity import peer  # noqa: F401, F811  (the `netprobe serve` fixture)
from tests.integration.test_throughput import ROOT, netprobe, records

KEY = b"a-key-of-at-least-16-bytes"


def read_line(sock):
    return json.loads(serve_test.read_line(sock))


def hold(session):
    """A responder that accepts and then reads control lines until a limit ends the session."""
    session.ok()
    while session.read() is not None:
        pass


@pytest.fixture
def run_server():
    servers = []

    def start(**opts):
        srv = serve.Server([("127.0.0.1", 0)], **opts)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        servers.append((srv, t))
        host, port = srv.addresses[0]
        return srv, f"{host}:{port}"
    yield start
    for srv, t in servers:
        srv.stop.set()
        t.join(5)


def open_from(source, address, **fields):
    """A raw client from `source` (a 127/8 address) that sends a hello; (socket, reply)."""
    host, port = address.split(":")
    s = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    greeting = read_line(s)
    hello = {"netprobe": 1, "kind": "hold", **fields}
    if "challenge" in greeting:
        hello["auth"] = protocol.auth_mac(KEY, greeting["challenge"], hello)
    s.sendall(protocol.encode(hello))
    return s, read_line(s)


# -- pure parts ------------------------------------------------------------------------------

def test_token_bucket_holds_any_window_to_rate_plus_one_send():
    """Oracle: the definition. Sends of random sizes at the times the bucket allows; in every
    window [t, t + T] the bytes started are at most rate x T plus the largest send."""
    rng = np.random.default_rng(1)
    bucket = TokenBucket(8e6)                      # 1 MB/s
    now, sends = 0.0, []
    for n in rng.integers(100, 50_000, 500):
        now = bucket.reserve(int(n), now + rng.exponential(0.001))
        sends.append((now, int(n)))
    t = np.array([s[0] for s in sends])
    b = np.array([s[1] for s in sends])
    for i in range(len(t)):
        in_window = (t >= t[i]) & (t < t[i] + 0.1)
        assert b[in_window].sum() <= 1e6 * 0.1 + b.max()


def test_rate_budget_total_and_per_address():
    r = RateBudget(100, 60)
    assert r.reserve("a", 50) == 50
    assert r.reserve("a", 20) == 0.0 and "max_rate_per_address=60bit/s" in r.why_refused("a")
    assert r.reserve("a", 20, partial=0.5) == 10
    assert r.reserve("b", 50) == 0.0 and "max_rate=100bit/s" in r.why_refused("b")
    assert r.reserve("b", 100, partial=0.5) == 0.0          # 40 free is less than half of it
    assert r.reserve("b", 50, partial=0.5) == 40
    r.release("a", 60)
    assert r.reserve("c", 60) == 60


# -- slots and the pool ----------------------------------------------------------------------

def test_sessions_per_address_cap_names_the_setting(run_server):
    _, addr = run_server(responders={"hold": hold}, max_sessions_per_address=2)
    held = [open_from("127.0.0.2", addr) for _ in range(2)]
    assert [r for _, r in held] == [{"ok": True, "max_session_length": 3600.0}] * 2
    _, reply = open_from("127.0.0.2", addr)
    assert reply == {"ok": False, "error": "busy: max_sessions_per_address=2 reached for 127.0.0.2"}
    _, reply = open_from("127.0.0.3", addr)                  # another address still gets in
    assert reply["ok"] is True


def test_half_open_flood_from_one_address_does_not_lock_out_another(run_server):
    """800 connections from 127.0.0.2 that never send a hello, against a pool of 32: a keyed
    client from 127.0.0.1 still completes its handshake fast, every time, and the flooding
    address holds no session slot."""
    srv, addr = run_server(responders={"hold": hold}, key=KEY, max_handshakes=32, handshake_timeout=2.0)
    host, port = addr.split(":")
    flood = []
    try:
        for _ in range(800):
            flood.append(socket.create_connection((host, int(port)), timeout=5, source_address=("127.0.0.2", 0)))
        times = []
        for _ in range(20):
            t0 = time.monotonic()
            ch = connect(addr, "hold", key=KEY, timeout=5)
            times.append(time.monotonic() - t0)
            ch.close()
        assert np.median(times) < 1.0 and max(times) < 2.0, times
        assert srv.sessions.get("127.0.0.2", 0) == 0
        assert srv.counters["evicted"] > 0
    finally:
        for s in flood:
            s.close()


def test_unauthenticated_failures_logged_once_per_address_per_minute(run_server, caplog):
    _, addr = run_server(responders={"hold": hold}, key=KEY)
    for _ in range(20):
        with pytest.raises(PeerError, match="authentication failed"):
            connect(addr, "hold", key=b"not-the-right-key-at-all")
    time.sleep(0.2)
    lines = [r for r in caplog.records if "wrong or missing key" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0].getMessage()


# -- session limits --------------------------------------------------------------------------

def test_trickled_bytes_do_not_extend_the_idle_timeout(run_server):
    _, addr = run_server(responders={"hold": hold}, idle_timeout=1.0)
    s, reply = open_from("127.0.0.1", addr)
    assert reply["ok"] is True
    t0 = time.monotonic()
    with pytest.raises(OSError):
        for _ in range(40):                      # one byte every 0.1 s, never a newline
            s.send(b" ")
            time.sleep(0.1)
    s.settimeout(5)
    try:
        data = s.recv(1000)
    except ConnectionResetError:
        data = b""
    assert 0.9 < time.monotonic() - t0 < 2.5
    assert data in (b"", protocol.refusal("idle_timeout=1s reached"))


def test_session_length_ends_even_a_busy_session(run_server):
    _, addr = run_server(responders={"hold": hold}, max_session_length=1.0)
    s, reply = open_from("127.0.0.1", addr)
    assert reply == {"ok": True, "max_session_length": 1.0}
    t0 = time.monotonic()
    got = None
    while time.monotonic() - t0 < 3:
        s.sendall(b'{"x": 1}\n')                   # progress all along
        s.settimeout(0.05)
        try:
            got = s.recv(1000)
            break
        except TimeoutError:
            continue
    assert got == protocol.refusal("max_session_length=1s reached")
    assert 0.9 < time.monotonic() - t0 < 2.0


def test_oversized_control_line_is_refused_and_memory_bounded(run_server):
    _, addr = run_server(responders={"hold": hold})
    s, _ = open_from("127.0.0.1", addr)
    try:
        for _ in range(200):                     # up to 12.8 MB offered; the peer stops at its limit
            s.sendall(b"x" * 65536)
    except OSError:
        pass
    s.settimeout(5)
    try:
        data = s.recv(1000)
    except ConnectionResetError:
        data = b""
    assert data in (b"", protocol.refusal("bad control line: line longer than 4096 bytes"))


# -- oneway ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,opts,message", [
    ({"udp_port": 53}, {}, "udp_port 53 is outside udp_ports=32768-60999"),
    ({"udp_port": 7000}, {"udp_ports": ((7001, 7002),)}, "udp_port 7000 is outside udp_ports=7001-7002"),
    ({"nports": 5000}, {"max_port_intervals": 400}, "nports 5000 x 4 open intervals exceeds max_port_intervals=400"),
])
def test_oneway_hello_limits(run_server, fields, opts, message):
    _, addr = run_server(**opts)
    hello = {"session": "00000000000000ab", "nports": 2, **fields}
    with pytest.raises(PeerError) as e:
        connect(addr, "oneway", **hello)
    assert message in str(e.value)


def test_oneway_port_from_a_configured_range(run_server):
    _, addr = run_server(udp_ports=((45000, 45003),))
    ch = connect(addr, "oneway", session="00000000000000ac", nports=1, line_max=1 << 20)
    assert 45000 <= ch.recv(5)["udp_port"] <= 45003
    ch.close()


def test_oneway_close_bomb_ends_only_that_session(run_server):
    """nports=5000 then a close 1023 intervals ahead: refused at once naming the limit, no
    gigabyte line built; another session is served meanwhile."""
    _, addr = run_server()
    other = connect(addr, "oneway", session="00000000000000ad", nports=2, grace_ns=10_000_000, line_max=1 << 20)
    other.recv(5)
    bomb = connect(addr, "oneway", session="00000000000000ae", nports=5000, line_max=1 << 24)
    bomb.recv(5)
    t0 = time.monotonic()
    bomb.send({"close": 1023})
    with pytest.raises(PeerError, match=r"close 1023: only 4 intervals .*max_port_intervals=20000"):
        bomb.recv(5)
    assert time.monotonic() - t0 < 1.0
    other.send({"close": 0})
    assert other.recv(5)["results"][0]["interval"] == 0
    other.close()
    bomb.close()


# -- throughput ------------------------------------------------------------------------------

def test_down_leg_needs_the_up_legs_ticket_and_address(run_server):
    _, addr = run_server(max_sessions_per_address=8)
    sid = "ab" * 8
    up = connect(addr, "throughput", role="up", session=sid, rate_down=1_000_000, sample_ns=100_000_000)
    ticket = up.reply["ticket"]
    for fields in ({}, {"ticket": "0" * 32}, {"ticket": ticket.upper()}):
        with pytest.raises(PeerError, match="no such session waiting for its down connection"):
            connect(addr, "throughput", role="down", session=sid, **fields)
    host, port = addr.split(":")
    s = socket.create_connection((host, int(port)), timeout=5, source_address=("127.0.0.9", 0))
    read_line(s)
    s.sendall(protocol.encode({"netprobe": 1, "kind": "throughput", "role": "down", "session": sid,
                               "ticket": ticket}))
    assert read_line(s) == {"ok": False, "error": "no such session waiting for its down connection"}
    down = connect(addr, "throughput", role="down", session=sid, ticket=ticket)     # the right one joins
    assert down.reply["ok"] is True
    down.close()
    up.close()


def test_congestion_only_from_congestion_allow(run_server):
    _, addr = run_server(congestion_allow=("cubic",))
    sid = "cd" * 8
    up = connect(addr, "throughput", role="up", session=sid, rate_down=1_000_000, sample_ns=100_000_000)
    with pytest.raises(PeerError, match=r'congestion "reno" is not in congestion_allow=cubic'):
        connect(addr, "throughput", role="down", session=sid, ticket=up.reply["ticket"], congestion="reno")
    up.close()


def test_throughput_rate_per_address(run_server):
    _, addr = run_server(max_rate=100e6, max_rate_per_address=30e6, max_sessions_per_address=8)
    a = connect(addr, "throughput", role="up", session="11" * 8, rate_down=20e6, sample_ns=100_000_000)
    with pytest.raises(PeerError, match=r"busy: max_rate_per_address=30Mbit/s: the send budget for 127.0.0.1"):
        connect(addr, "throughput", role="up", session="22" * 8, rate_down=20e6, sample_ns=100_000_000)
    a.close()


# -- capacity: the rate on the wire ----------------------------------------------------------

def test_capacity_plans_with_their_gap_on_the_last_row_stay_under_max_rate(run_server):
    """Plans whose whole gap sits on the last row, sent back to back: the trains must arrive
    spread at max_rate (20 Mbit/s), which the receive timestamps of the kernel show."""
    T = load_extension("_train")
    _, addr = run_server(max_rate=20e6)
    ch = connect(addr, "capacity", line_max=1 << 24)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx = T.TrainReceiver(udp.fileno(), 99)
    ch.send({"udp_port": udp.getsockname()[1], "token": 99})
    assert ch.recv(5)["ok"] is True
    size, count, trains, plans = 1000, 20, 10, 8
    rows = np.zeros((plans * trains * count, T.RX_NCOLS), dtype=np.int64)
    n = 0
    t0 = time.monotonic()
    for p in range(plans):
        bits = trains * count * size * 8
        gap = int(bits / 20e6 * 1e9)               # the plan's average is just within max_rate
        plan = [[p * trains + i, count, size, 0, 0, 0] for i in range(trains)]
        plan[-1][5] = gap
        ch.send({"plan": plan})
        got = rx.run(rows[n:], trains * count, 500_000_000, 3_000_000_000)
        n += got.rows
        assert ch.recv(10)["error"] == 0
    elapsed = time.monotonic() - t0
    rx_ns = rows[:n, T.RX_COLUMNS.index("rx_ns")]
    span = (rx_ns.max() - rx_ns.min()) / 1e9
    total_bits = n * size * 8
    assert n == plans * trains * count
    one_train = count * size * 8
    assert (total_bits - one_train) / span <= 20e6 * 1.05, (total_bits / span, span, elapsed)
    udp.close()
    ch.close()


# -- the client side: what a peer sends is range-checked and cleaned -------------------------

def evil_oneway(reply):
    def respond(session):
        session.ok()
        session.send(reply)
        time.sleep(1)
    return respond


@pytest.mark.parametrize("first,detail", [
    ({"udp_port": 70000, "auth": "none", "clock": {}}, "no valid UDP port (1-65535)"),
    ({"udp_port": -1, "auth": "none", "clock": {}}, "no valid UDP port (1-65535)"),
    ({"udp_port": True, "auth": "none", "clock": {}}, "no valid UDP port (1-65535)"),
    ({"ok": False, "error": "busy\r\x1b[2J" + "x" * 1000}, "busy??[2Jxxx"),
])
def test_oneway_client_checks_the_peers_answer(run_server, first, detail):
    _, addr = run_server(responders={"oneway": evil_oneway(first)})
    p = subprocess.run(netprobe("probe", "oneway", "--json", "--peer", addr, "--duration", "3s", "--interval", "1s"),
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    breaches = [r for r in records(p.stdout) if r["type"] == "BREACH"]
    assert len(breaches) == 1, p.stdout + p.stderr
    (breach,) = breaches
    assert breach["metric"] == "connection" and detail in breach["detail"]
    assert not any(c in breach["detail"] for c in "\r\n\x1b") and len(breach["detail"]) < 400
    assert "\x1b" not in p.stdout and "\r" not in p.stdout


# -- renewal before max_session_length -------------------------------------------------------

def test_clients_renew_before_max_session_length_without_a_breach(peer):  # noqa: F811
    """A peer that ends sessions after 10 s: a 14 s oneway run opens a second session before
    the first is cut (the peer logs one accepted session per renewal) and never reports the
    connection lost; every interval after the renewal is measured again."""
    port = peer("--max-session-length", "10s")
    p = subprocess.run(netprobe("probe", "oneway", "--json", "--peer", f"127.0.0.1:{port}", "--duration", "14s",
                                "--interval", "1s", "--grace", "100ms", "--gap", "5ms"),
                       cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    recs = records(p.stdout)
    assert not [r for r in recs if r["type"] == "BREACH"], p.stdout
    assert "renewing session" in p.stderr
    res = [r for r in recs if r["type"] == "RESULT" and "port" not in r]
    assert len(res) >= 12 and all(r["lost"] == 0 for r in res), res
    assert max(r["interval_id"] for r in res) < 12          # a new session numbers its intervals from 0 again


def test_throughput_renews_before_max_session_length_without_a_breach(peer):  # noqa: F811
    """The same for throughput: a new connection (epoch) before the peer cuts the old one, no
    BREACH, and both directions measured at their rate again after it."""
    port = peer("--max-session-length", "10s")
    p = subprocess.run(netprobe("probe", "throughput", "--json", "--peer", f"127.0.0.1:{port}", "--rate", "20M",
                                "--rate-down", "10M", "--interval", "1s", "--duration", "14s"),
                       cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    recs = records(p.stdout)
    assert not [r for r in recs if r["type"] == "BREACH"], p.stdout
    assert "renewing the session" in p.stderr and "(epoch 2)" in p.stderr
    after = [r for r in recs if r["type"] == "RESULT"][-6:-2]         # the last full intervals
    assert {r["dir"] for r in after} == {"a->b", "b->a"}
    for r in after:
        want = 20e6 if r["dir"] == "a->b" else 10e6
        assert r["samples"] > 0 and abs(r["rate"] / want - 1) < 0.1, r
