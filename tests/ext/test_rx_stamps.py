"""Kernel RX stamps in the receivers of netprobe._train and netprobe._udping, judged by the
clock around the send and the read: a packet is stamped as it arrives or is counted as
having no stamp, never given the time of the read."""
import contextlib
import ctypes
import os
import platform
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

from netprobe.errors import load_extension
from tests.conftest import root_only
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


# An eBPF tc program (sched_cls) that clears each packet's RX stamp and lets it pass:
#   r2 = 0; *(u64 *)(r1 + offsetof(struct __sk_buff, tstamp)) = r2; r0 = TC_ACT_OK; exit
SKB_TSTAMP = 152
CLEAR_STAMP = b"".join(struct.pack("<BBhi", code, regs, off, imm) for code, regs, off, imm in (
    (0xB7, 0x02, 0, 0), (0x7B, 0x21, SKB_TSTAMP, 0), (0xB7, 0x00, 0, 0), (0x95, 0x00, 0, 0)))
SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]   # <asm/unistd.h>
BPF_PROG_LOAD, BPF_LINK_CREATE, BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_INGRESS = 5, 28, 3, 46   # <linux/bpf.h>, 6.6+
CLONE_NEWNET = 0x40000000


def _bpf(cmd, attr):
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, 144)                 # sizeof(union bpf_attr) in 6.x
    fd = libc.syscall(SYS_BPF, cmd, buf, len(buf))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


@contextlib.contextmanager
def unstamped_loopback():
    """A connected UDP pair (tx, rx) on the loopback of a network namespace of the test's own, whose
    tc ingress clears each packet's stamp after the kernel took it: every packet arrives as one
    that came before stamping was on. Yields (tx, rx, detach); detach() removes the program."""
    made, failed = {}, []

    def build():                        # unshare() moves this thread alone into the new namespace
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
            code, lic = ctypes.create_string_buffer(CLEAR_STAMP), ctypes.create_string_buffer(b"GPL")
            made["prog"] = _bpf(BPF_PROG_LOAD, struct.pack("<IIQQ", BPF_PROG_TYPE_SCHED_CLS, len(CLEAR_STAMP) // 8,
                                                           ctypes.addressof(code), ctypes.addressof(lic)))
            made["link"] = _bpf(BPF_LINK_CREATE, struct.pack("<IIII", made["prog"], socket.if_nametoindex("lo"),
                                                             BPF_TCX_INGRESS, 0))
            made["rx"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made["rx"].bind(("127.0.0.1", 0))
            made["tx"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made["tx"].connect(made["rx"].getsockname())
        except Exception as exc:        # re-raised in the test's thread
            failed.append(exc)

    def detach():
        for k in ("link", "prog"):
            if k in made:
                os.close(made.pop(k))

    t = threading.Thread(target=build)
    t.start()
    t.join(30)
    try:
        if failed:
            raise failed[0]
        yield made["tx"], made["rx"], detach
    finally:
        detach()
        for k in ("tx", "rx"):
            if k in made:
                made[k].close()


@root_only
@pytest.mark.parametrize("case", CASES)
def test_a_packet_that_arrived_unstamped_never_carries_the_time_of_the_read(case):
    """The kernel switches RX stamping on host-wide from a deferred work item when the first
    socket asks; until then packets are not stamped. Under SO_TIMESTAMPNS the read stamped
    such a packet with its own time (a CI run saw a train's first packets stamped after the
    trains sent later). Whether stamping is on at a given moment depends on every other
    socket of the host, so the test makes the state: the packet's stamp is cleared on
    arrival (unstamped_loopback), and the receiver must count it as having none and give it
    its own clock's time of the read. Then, with stamps left alone, it is stamped on arrival."""
    packet, reader = CASES[case]

    def send_and_wait():
        before = time.time_ns()
        tx.send(packet)
        after = time.time_ns()
        time.sleep(0.05)
        return before, after, time.time_ns()

    with unstamped_loopback() as (tx, rxs, detach):
        _, _, read_at = send_and_wait()
        read = reader(rxs.fileno())
        rx_ns, unstamped = read()
        assert unstamped and rx_ns >= read_at          # the receiver's own clock, flagged as such
        detach()
        wait_until_stamped(tx, rxs)
        sent_before, sent_after, _ = send_and_wait()
        rx_ns, unstamped = read()
        assert not unstamped and sent_before <= rx_ns <= sent_after
