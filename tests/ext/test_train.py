"""netprobe._train: the packet header against a struct-based reference, and the sender and
receiver over loopback UDP with kernel RX timestamps (no mocks: real sockets)."""
import socket
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from tests.ext.rx_stamps import wait_until_stamped
from tests.reference import capacity_wire as ref

T = load_extension("_train")
COL = {c: i for i, c in enumerate(T.RX_COLUMNS)}


@pytest.fixture
def pair():
    """(sender socket connected to receiver socket, receiver socket) on loopback."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield tx, rx
    tx.close()
    rx.close()


def plan_of(rows):
    return np.ascontiguousarray(np.asarray(rows, dtype=np.int64).reshape(-1, T.PLAN_NCOLS))


u16 = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), u16, u32, u32, u16, u16)
def test_pack_header_matches_reference(flags, count, token, train, index, size):
    assert T.pack_header(flags, count, token, train, index, size) == ref.pack(flags, count, token, train,
                                                                              index, size)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda f, c, t, tr, i, extra: ref.pack(f, c, t, tr, i, 20 + len(extra)) + extra,
              st.integers(0, 255), st.integers(0, 1100), u32, u32, st.integers(0, 1100), st.binary(max_size=40)),
))
def test_parse_packet_agrees_with_reference(packet):
    want = ref.parse(packet)
    if isinstance(want, str):
        with pytest.raises(T.DecodeError, match="offset"):
            T.parse_packet(packet)
    else:
        assert T.parse_packet(packet) == want


def test_every_truncation_is_a_decode_error():
    full = ref.pack(0, 3, 7, 9, 1, 20)
    assert T.parse_packet(full) == (0, 3, 7, 9, 1, 20)
    for n in range(len(full)):
        with pytest.raises(T.DecodeError, match="offset 0: shorter"):
            T.parse_packet(full[:n])


def test_trains_arrive_whole_with_kernel_timestamps(pair):
    tx, rx = pair
    sender, receiver = T.TrainSender(tx.fileno(), 0xfeedbeef), T.TrainReceiver(rx.fileno(), 0xfeedbeef)
    wait_until_stamped(tx, rx)
    # train, count, size, primers, primer_size, gap
    plan = plan_of([[10, 2, 600, 0, 0, 200_000], [11, 9, 1472, 1, 1472, 200_000], [12, 33, 100, 2, 1000, 0]])
    sent = np.zeros((3, T.SENT_NCOLS), dtype=np.int64)
    rows = np.zeros((100, T.RX_NCOLS), dtype=np.int64)
    tries = 0
    while tries < 3:
        tries += 1
        # the kernel stamps with CLOCK_REALTIME, which this VM's host steps now and then (once by
        # -0.71 ms mid-train): a step between `before` and `after` makes the run unjudgeable
        offset = time.time_ns() - time.monotonic_ns()
        before = time.time_ns()
        got = sender.send(plan, sent)
        assert got.trains == 3 and got.packets == 44
        r = receiver.run(rows, 44, 500_000_000, 2_000_000_000)
        after = time.time_ns()
        if abs(time.time_ns() - time.monotonic_ns() - offset) < 50_000:
            break
    assert got.bytes == 2 * 600 + 9 * 1472 + 31 * 100 + 2 * 1000
    assert sent[:, 2].tolist() == [2, 9, 33] and sent[:, 3].sum() == got.bytes
    assert np.all(sent[1:, 0] - sent[:-1, 1] >= 200_000)          # the gap after each train was kept
    assert r.rows == 44 and r.user_ts == 0 and r.malformed == r.foreign == 0
    rows = rows[:44]
    for tid, count, size, primers, psize, _ in plan:
        t = rows[rows[:, COL["train"]] == tid]
        assert t[:, COL["index"]].tolist() == list(range(count))
        assert set(t[:, COL["count"]]) == {count}
        assert t[:, COL["size"]].tolist() == [psize] * primers + [size] * (count - primers)
        assert t[:, COL["flags"]].tolist() == [T.RX_FLAG_PRIMER] * primers + [0] * (count - primers)
    rx_ns = rows[:, COL["rx_ns"]]
    assert np.all(np.diff(rx_ns) >= 0) and before <= rx_ns[0] and rx_ns[-1] <= after   # CLOCK_REALTIME
    assert receiver.packets == 44 * tries


def test_bad_packets_are_counted_and_dropped(pair):
    tx, rx = pair
    receiver = T.TrainReceiver(rx.fileno(), 5)
    good = ref.pack(0, 2, 5, 1, 0, 20)
    for junk in (b"", b"x" * 19, b"NPTX" + good[4:], ref.pack(0, 2, 5, 1, 0, 21), ref.pack(0, 2, 5, 1, 2, 20),
                 ref.pack(0, 1, 5, 1, 0, 20), b"\x00" * 9100):
        tx.send(junk)
    tx.send(ref.pack(0, 2, 6, 1, 0, 20))        # another session's token
    tx.send(good)
    rows = np.zeros((8, T.RX_NCOLS), dtype=np.int64)
    r = receiver.run(rows, 1, 500_000_000, 2_000_000_000)
    assert r.rows == 1 and rows[0, COL["train"]] == 1
    assert (receiver.malformed, receiver.truncated, receiver.foreign) == (6, 1, 1)
    assert r.datagrams == 9


def test_receiver_stops_when_idle_and_drain_discards(pair):
    tx, rx = pair
    receiver = T.TrainReceiver(rx.fileno(), 1)
    rows = np.zeros((8, T.RX_NCOLS), dtype=np.int64)
    t0 = time.monotonic()
    r = receiver.run(rows, 8, 50_000_000, 5_000_000_000)
    assert r.rows == 0 and 0.045 < time.monotonic() - t0 < 1.0
    for _ in range(3):
        tx.send(ref.pack(0, 2, 1, 3, 0, 20))
    time.sleep(0.05)
    assert receiver.drain() == 3 and receiver.packets == 0
    assert receiver.run(rows, 8, 0, 0).rows == 0


def test_plan_rows_are_checked_before_sending(pair):
    tx, _ = pair
    sender = T.TrainSender(tx.fileno(), 1)
    sent = np.zeros((1, T.SENT_NCOLS), dtype=np.int64)
    for bad in ([1, 1, 100, 0, 0, 0], [1, 2, 19, 0, 0, 0], [1, 2, 9001, 0, 0, 0], [1, 3, 100, 2, 100, 0],
                [1, 3, 100, 1, 10, 0], [1, 2, 100, 0, 0, -1], [-1, 2, 100, 0, 0, 0], [1, 1025, 100, 0, 0, 0]):
        with pytest.raises(ValueError, match="plan row 0"):
            sender.send(plan_of(bad), sent)
    assert sender.packets == 0
    with pytest.raises(ValueError, match="not a UDP socket"):
        T.TrainSender(socket.socket().fileno(), 1)


def test_send_error_raises_with_what_was_sent():
    """A connected UDP socket whose peer port is closed: the kernel's ICMP port unreachable turns
    the next sendmmsg() into ECONNREFUSED. send() raises it, with the read-only SendResult of
    what went before the failure."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.connect(("127.0.0.1", port))
        sender = T.TrainSender(tx.fileno(), 5)
        plan = plan_of([(1, 4, 200, 0, 0, 0), (2, 4, 200, 0, 0, 0)])
        sent = np.zeros((2, T.SENT_NCOLS), dtype=np.int64)
        first = sender.send(plan[:1], sent)            # goes out; the ICMP error comes back
        assert (first.trains, first.packets, first.bytes) == (1, 4, 800)
        time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError) as exc:
            sender.send(plan, sent)
        got = exc.value.result
        assert (got.trains, got.packets, got.bytes) == (1, 0, 0) and sent[0, 2] == 0
        assert sender.error == exc.value.errno and sender.errors == 1
        with pytest.raises(AttributeError):
            got.trains = 2                             # results are read-only
