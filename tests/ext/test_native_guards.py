"""Input-driven divisions, lengths, deadlines and buffers in the timer, TCP sender, train and
netlink extensions: each guard is driven past its limit and must give a ValueError or a counted
drop, never a signal, a hang or a wrong wait. Risky calls run in a child interpreter so a crash
is reported as the signal it was."""
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from netprobe.errors import load_extension
from tests.reference import netlink as ref

nl = load_extension("_nldiag")
T = load_extension("_train")


def run_child(code, timeout=60):
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert got.returncode == 0, f"exit {got.returncode} (negative: killed by that signal)\n{got.stderr[-2000:]}"
    return got.stdout


UNINITIALISED = """
import socket
import numpy as np
from netprobe.errors import load_extension
nl, T = load_extension("_nldiag"), load_extension("_train")
timer, tcp = load_extension("_timer"), load_extension("_pacer")

def refused(call):
    try:
        call()
    except (ValueError, TypeError, OSError):
        return True
    return False

b = tcp.TokenBucket.__new__(tcp.TokenBucket)       # __init__ never ran: the bucket must still be valid
print(b.take(10, 5), b.wait_ns(1, 5), b.available(10**9))
rows = np.zeros((4, tcp.NCOLS), dtype=np.int64)
assert refused(lambda: tcp.TcpDrain.__new__(tcp.TcpDrain).run(rows, 10**6, 10**6, 0))
assert refused(lambda: tcp.TcpPacedSender.__new__(tcp.TcpPacedSender).run(rows, 10**6, 10**6, 0))
assert refused(lambda: T.TrainSender.__new__(T.TrainSender).send(np.zeros((1, T.PLAN_NCOLS), dtype=np.int64),
                                                                   np.zeros((1, T.SENT_NCOLS), dtype=np.int64)))
assert refused(lambda: T.TrainReceiver.__new__(T.TrainReceiver).run(np.zeros((4, T.RX_NCOLS), dtype=np.int64),
                                                                      1, 0, 0))
assert refused(lambda: nl.InetDiagDumper.__new__(nl.InetDiagDumper).dump(np.zeros(4, dtype=nl.RECORD_DTYPE)))
print("ok")
"""


def test_objects_whose_init_never_ran_refuse_instead_of_crashing():
    out = run_child(UNINITIALISED)
    take, wait, avail = map(int, out.split()[:3])
    assert 0 <= take <= 1 and wait >= 0 and avail <= 1 and out.split()[-1] == "ok"


def test_times_and_durations_out_of_range_are_refused():
    timer, tcp = load_extension("_timer"), load_extension("_pacer")
    b = tcp.TokenBucket(8000, 1500, 0)
    for now in (-1, 2**62, 2**63 - 1):
        with pytest.raises(ValueError):
            b.take(1, now)
        with pytest.raises(ValueError):
            tcp.TokenBucket(8000, 1500, now)
    assert b.take(1500, 2**62 - 1) == 1500                 # the largest time allowed still works
    for interval in (0, -5, 86_400 * 10**9 + 1, 2**63 - 1):
        with pytest.raises(ValueError):
            timer.TimerfdPacer(interval)
    with timer.TimerfdPacer(10**6) as t:
        for duration in (0, 86_400 * 10**9 + 1, 2**63 - 1):
            with pytest.raises(ValueError):
                t.run(np.zeros(4, dtype=np.int64), 4, duration)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cli = socket.create_connection(srv.getsockname())
        acc, _ = srv.accept()
        with cli, acc:
            rows = np.zeros((4, tcp.NCOLS), dtype=np.int64)
            drain = tcp.TcpDrain(acc.fileno())
            for duration, every in ((2**63 - 1, 10**6), (10**6, 2**63 - 1), (-1, 10**6), (10**6, 0)):
                with pytest.raises(ValueError):
                    drain.run(rows, duration, every, 0)


def test_train_receiver_deadlines_are_bounded_and_kept():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        rx = T.TrainReceiver(s.fileno(), 1)
        rows = np.zeros((4, T.RX_NCOLS), dtype=np.int64)
        for idle, most in ((2**62, 10**6), (10**6, 2**63 - 1), (-1, 0), (0, -1)):
            with pytest.raises(ValueError):
                rx.run(rows, 1, idle, most)
        day = 86_400 * 10**9
        t0 = time.monotonic()
        got = rx.run(rows, 1, 50_000_000, day)             # nothing comes: ends after 50 ms idle
        waited = time.monotonic() - t0
        assert 0.045 <= waited < 2.0, waited
        t0 = time.monotonic()
        rx.run(rows, 1, day, 50_000_000)                   # ends at max_ns, not after a day
        waited = time.monotonic() - t0
        assert 0.045 <= waited < 2.0, waited
        assert got.rows == 0


NL_ALIGN_CHILD = """
import mmap, sys
import numpy as np
from netprobe.errors import load_extension
nl = load_extension("_nldiag")
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    got = nl.parse(np.frombuffer(m, dtype=np.uint8), np.zeros(4, dtype=nl.RECORD_DTYPE), seq=1)
print(got.messages, got.malformed)
"""


def test_message_length_near_4_gib_does_not_wrap_the_step(tmp_path):
    """nlmsg_len = 0xffffffff in a buffer over 4 GiB (a sparse file, mapped): rounded up in 32 bits
    the step to the next message would be 0 and the parser would never end."""
    path = tmp_path / "big.nl"
    head = struct.pack("=IHHII", 0xFFFFFFFF, ref.SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate((1 << 32) + 64)
    assert path.stat().st_blocks * 512 < 1 << 20          # sparse: nothing near 4 GiB is written
    out = run_child(NL_ALIGN_CHILD.replace("sys.argv[1]", repr(str(path))), timeout=120)
    messages, malformed = map(int, out.split())
    assert messages == 1 and malformed == 2     # its body (zeros) is no inet_diag_msg; then a zero header
