"""max_port_intervals_total: sixteen 5000-port oneway sessions cannot make the peer's receivers
take more than the budget's memory; the sessions past it are refused naming the setting."""
import threading

import pytest

from netprobe.errors import PeerError
from netprobe.peer.client import connect
from netprobe.peer.server import Server
from netprobe.probes import responders

PORTS = 5000
SESSIONS = 16


def rss_kb():
    """Oracle: the kernel's count of this process's resident memory."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.fixture
def addr():
    srv = Server([("127.0.0.1", 0)], responders=responders(), max_sessions=SESSIONS,
                 max_sessions_per_address=SESSIONS, max_port_intervals_total=2 * PORTS * 4)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    host, port = srv.addresses[0]
    yield f"{host}:{port}"
    srv.stop.set()
    t.join(5)


def test_sixteen_big_oneway_sessions_stay_within_the_budget(addr):
    before = rss_kb()
    opened, refusals = [], []
    try:
        for i in range(SESSIONS):
            try:
                ch = connect(addr, "oneway", session=f"{i + 1:016x}", nports=PORTS, line_max=1 << 24)
                ch.recv(5)
                opened.append(ch)
            except PeerError as exc:
                refusals.append(str(exc))
        grown_mb = (rss_kb() - before) / 1024
        assert len(opened) == 2 and len(refusals) == SESSIONS - 2, refusals
        assert all("max_port_intervals_total=40000" in r for r in refusals), refusals
        # two sessions' receivers (~55 MB each here); sixteen would take ~880 MB
        assert grown_mb <= 125, f"the peer's RSS grew by {grown_mb:.0f} MB"
        opened.pop().close()                  # a closed session gives its ports back
        for _ in range(50):
            try:
                ch = connect(addr, "oneway", session=f"{99:016x}", nports=PORTS, line_max=1 << 24)
                break
            except PeerError:
                threading.Event().wait(0.1)
        else:
            pytest.fail("the ports of a closed session never came back")
        ch.recv(5)
        opened.append(ch)
    finally:
        for ch in opened:
            ch.close()
