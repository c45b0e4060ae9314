"""Kernel RX stamps in the receivers of netprobe._train and netprobe._udping, judged by the
clock around the send and the read: a packet is stamped as it arrives or is counted as
having no stamp, never given the time of the read."""
import socket
import time

import numpy as np
import pytest

from netprobe.errors import load_extension
from tests.ext.rx_stamps import wait_until_stamped
from tests.reference import capacity_wire

T = load_extension("_train")
U = load_extension("_udping")


def _train_reader(fd):
    """A TrainReceiver on fd, as read() -> (rx_ns of the one queued packet, counted as unstamped)."""
    rx = T.TrainReceiver(fd, 9)
    rows = np.zeros((1, T.RX_NCOLS), dtype=np.int64)

    def read():
        got = rx.run(rows, 1, 0, 0)
        assert got.rows == 1
        flagged = bool(rows[0, T.RX_COLUMNS.index("flags")] & T.RX_FLAG_USER_TS)
        assert flagged == (got.user_ts == 1)
        return int(rows[0, T.RX_COLUMNS.index("rx_ns")]), flagged
    return read


def _udping_reader(fd):
    rx = U.UdpingV1Receiver(fd)
    rows = np.zeros((64, len(U.V1_COLUMNS)), dtype=np.int64)     # run() takes batches of 64

    def read():
        before = rx.no_kernel_ts
        assert rx.run(rows, 20_000_000).rows == 1
        return int(rows[0, U.V1_COLUMNS.index("rx_ns")]), rx.no_kernel_ts == before + 1
    return read


CASES = {"train": (capacity_wire.pack(0, 2, 9, 1, 0, 20), _train_reader),
         "udping": (U.push_udping(start_s=1, guid="ab", seq=0, sent_sec=1, sent_nsec=0), _udping_reader)}


@pytest.mark.parametrize("case", CASES)
def test_a_packet_queued_before_stamps_were_asked_for_never_carries_the_time_of_the_read(case):
    """The kernel switches RX stamping on host-wide from a deferred work item when the first
    socket asks; until then packets are not stamped. Under SO_TIMESTAMPNS the read stamped
    such a packet with its own time (a CI run saw a train's first packets stamped after the
    trains sent later). Here the packet is queued before the receiver exists: unless another
    socket on the host has stamping on, it has no stamp, and the receiver must say so."""
    packet, reader = CASES[case]
    rxs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rxs.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rxs.getsockname())

    def send_and_wait():
        before = time.time_ns()
        tx.send(packet)
        after = time.time_ns()
        time.sleep(0.05)
        return before, after, time.time_ns()

    try:
        sent_before, sent_after, read_at = send_and_wait()
        read = reader(rxs.fileno())
        rx_ns, unstamped = read()
        if unstamped:
            assert rx_ns >= read_at                        # the receiver's own clock, flagged as such
        else:
            assert sent_before <= rx_ns <= sent_after      # stamping was on already: stamped on arrival
        wait_until_stamped(tx, rxs)
        sent_before, sent_after, _ = send_and_wait()
        rx_ns, unstamped = read()
        assert not unstamped and sent_before <= rx_ns <= sent_after
    finally:
        tx.close()
        rxs.close()
