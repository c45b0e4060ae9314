"""The live capture ring (netprobe._pcapread.PacketRing behind retrans' LiveCapture) on loopback (root).

Oracles: the bytes a test connection wrote (the analyser must see exactly
those, once each), a decoy connection the kernel-side filter must keep out,
the kernel's own ring counters (every packet handed over is analysed or
counted as dropped), and /proc/net/packet for the socket's removal.
"""
import os
import socket
import threading

import pytest

from netprobe.errors import ProbeError, load_extension
from netprobe.probes.retrans import capture
from tests.conftest import IS_ROOT, NOT_ROOT_REASON
from tests.integration.test_retrans_live import packet_socket_inodes, socket_inodes

pytestmark = pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT_REASON)


def transfer(nbytes, port=0):
    """One loopback TCP connection to `port` (0: any free one) that writes `nbytes`; returns the port."""
    srv = socket.create_server(("127.0.0.1", port))
    port = srv.getsockname()[1]
    got = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            n = 0
            while b := conn.recv(1 << 16):
                n += len(b)
            got.append(n)

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(bytes(nbytes))
    t.join(10)
    srv.close()
    assert got == [nbytes]
    return port


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_packet_sockets():
    """Inodes of this process's AF_PACKET sockets."""
    return socket_inodes(os.getpid()) & packet_socket_inodes()


def test_each_packet_of_the_filtered_connection_is_analysed_once_and_the_socket_goes_on_close():
    port = free_port()
    before = own_packet_sockets()
    cap = capture.LiveCapture("lo", (port,))
    try:
        ring_socket = own_packet_sockets() - before
        assert len(ring_socket) == 1
        decoy = transfer(50_000)                 # another port: the kernel filter keeps it out
        transfer(200_000, port)
        cap.pump(settle=True)                     # the block being filled is handed over too
        flows = cap.interval_flows()
        counters = cap.counters()
    finally:
        cap.close()
    assert decoy != port and [f.b_port for f in flows] == [port]
    (f,) = flows
    assert f.ab["data_bytes"] == 200_000 and f.ba["data_bytes"] == 0
    assert counters["truncated"] == counters["malformed"] == 0
    assert counters["frames"] == f.ab["pkts"] + f.ba["pkts"]
    st = cap.ring.stats()
    # lo hands every packet to the socket twice (sent, received): one copy analysed, none dropped
    assert st.packets == 2 * st.frames == 2 * counters["frames"] and cap.kernel_drops == 0
    assert not ring_socket & packet_socket_inodes()


def test_a_ring_nobody_drains_counts_what_it_drops():
    ext = load_extension("_pcapread")
    port = free_port()
    ring = ext.PacketRing(capture.compile_filter(f"udp and port {port}", 128), socket.if_nametoindex("lo"),
                          socket.if_nametoindex("lo"), 4096, 2, 60_000)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", port))
            rx.setblocking(False)
            for _ in range(500):                  # far more than two 4 KB blocks hold
                tx.sendto(b"x" * 64, ("127.0.0.1", port))
                try:
                    rx.recv(100)
                except BlockingIOError:
                    pass
        analyser = capture.pcapfile.new_analyser()
        ring.pump(analyser)
        st = ring.stats()
    finally:
        ring.close()
    assert st.drops > 0
    # every copy the filter passed was either stored (one analysed per packet: lo's sent copy is
    # skipped) or dropped for want of room
    stored = st.packets - st.drops
    assert 0 < st.frames <= stored and stored - st.frames <= st.frames + 1
    assert analyser.counters()["non_tcp"] == st.frames


@pytest.mark.parametrize("bpf", [b"", b"\0" * 7, b"\0" * 8 * 4097])
def test_a_malformed_program_is_refused(bpf):
    with pytest.raises(ValueError, match="bpf must be"):
        load_extension("_pcapread").PacketRing(bpf)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ProbeError, match="no interface 'nosuch0'"):
        capture.LiveCapture("nosuch0")
    with pytest.raises(ProbeError, match="capture filter 'tcp and port': "):
        capture.compile_filter("tcp and port", 128)
