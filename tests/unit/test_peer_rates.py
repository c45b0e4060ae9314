"""Rate reservations held past a session's end, and what a TCP byte costs on the wire."""
import re
import socket
import subprocess

import pytest

from netprobe.peer.server import RateBudget, tcp_wire_factor


def test_a_held_release_frees_the_budget_only_when_its_time_is_up():
    now = [0.0]
    r = RateBudget(100, 100, clock=lambda: now[0])
    assert r.reserve("a", 80) == 80
    r.release("a", 80, hold=1.5)
    now[0] = 1.4
    assert r.reserve("b", 50) == 0.0 and "max_rate=100bit/s" in r.why_refused("b")
    now[0] = 1.5
    assert r.reserve("b", 50) == 50
    r.release("b", 50)
    assert r.reserve("c", 100) == 100


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_tcp_wire_factor_matches_ss(family, host):
    """Oracle: ss -ti's mss for the same connection, timestamps as net.ipv4.tcp_timestamps makes
    both loopback ends negotiate them, header sizes from the RFCs."""
    with open("/proc/sys/net/ipv4/tcp_timestamps") as fh:
        timestamps = fh.read().strip() != "0"
    with socket.socket(family, socket.SOCK_STREAM) as lst:
        lst.bind((host, 0))             # IPv6 loopback is part of what the peer serves: no skip
        lst.listen(1)
        port = lst.getsockname()[1]
        with socket.create_connection((host, port)) as c, lst.accept()[0] as s:
            c.sendall(b"x" * 100_000)
            s.recv(1 << 16)
            local = c.getsockname()[1]
            out = subprocess.run(["ss", "-tinH", "state", "established", f"sport = :{local}"],
                                 capture_output=True, text=True, check=True).stdout
            mss = int(re.search(r"\bmss:(\d+)", out).group(1))
            tcp = 20 + (12 if timestamps else 0)
            ip = 40 if family == socket.AF_INET6 else 20
            assert tcp_wire_factor(c) == pytest.approx((mss + ip + tcp + 14) / mss)
