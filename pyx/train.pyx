# netprobe._train: back-to-back UDP packet trains for the capacity probe.
#
# TrainSender sends a plan of trains on a connected UDP socket: each train is
# one sendmmsg() of `count` packets, optionally led by primer packets (as
# pathrate's warm-up packet), then the loop sleeps (clock_nanosleep on
# CLOCK_MONOTONIC) for the gap the plan asks for. TrainReceiver takes every
# packet off a UDP socket with recvmmsg() and writes one row per packet, with
# the kernel's RX timestamp (SO_TIMESTAMPING), into a Python-owned int64 array.
# Both release the GIL around their loops and never raise per packet: a bad
# packet is counted (malformed, truncated, foreign) and dropped.
#
# Wire format of a train packet (network byte order, HEADER_LEN = 20 bytes):
#   0  magic   4 bytes "NPTR"
#   4  version u8 (1)
#   5  flags   u8 (bit 0: primer, a warm-up packet that leads a train)
#   6  count   u16 packets in this train, primer included (2..MAX_TRAIN)
#   8  token   u32 session token (packets of other sessions are "foreign")
#  12  train   u32 train id
#  16  index   u16 0..count-1
#  18  size    u16 the UDP payload length the sender wrote (must equal what arrived)
#  20  filler  incompressible bytes up to `size`
#
# SO_TXTIME is not used: it spaces packets (it needs the fq or etf qdisc),
# while a train must leave as fast as the host can send it.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

import numpy as _np

from byteorder cimport load_be16 as pull_u16, load_be32 as pull_u32, store_be16 as push_u16, store_be32 as push_u32

from linux cimport (errno, EINTR, EAGAIN, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME,
                    clock_ns, mono_ns, ns_to_timespec, strerror, loop_end, poll,
                    pollfd, POLLIN, SOL_SOCKET, setsockopt, getsockopt, socklen_t,
                    MSG_DONTWAIT, MSG_TRUNC, MSG_CTRUNC, rx_stamps_on, sw_stamp_ns, SO_RCVBUF,
                    SO_SNDBUF, SO_RCVBUFFORCE, SO_SNDBUFFORCE, SO_TYPE, SOCK_DGRAM, iovec, msghdr,
                    mmsghdr, sendmmsg, recvmmsg, TIMER_ABSTIME, clock_nanosleep)
from prng cimport np_prng_fill


HEADER_LEN = 20
MAGIC = b"NPTR"
VERSION = 1
FLAG_PRIMER = 1
MAX_TRAIN = 1024             # packets per train, primer included (sendmmsg's UIO_MAXIOV)
MAX_SIZE = 9000              # UDP payload bytes (jumbo frames); the receive buffers are this big
RX_BATCH = 64
MAX_WAIT_NS = 86_400 * 10**9  # a receive call waits a day at most: deadlines stay inside int64, poll()'s int ms

# receiver rows: one per accepted packet
RX_COLUMNS = ("train", "index", "count", "size", "rx_ns", "flags")
RX_NCOLS = 6
RX_FLAG_PRIMER = 1           # the packet is its train's primer
RX_FLAG_USER_TS = 2          # no kernel timestamp came with it: rx_ns is CLOCK_REALTIME after recvmmsg

# sender plan rows: one per train
PLAN_COLUMNS = ("train", "count", "size", "primers", "primer_size", "gap_ns")
PLAN_NCOLS = 6
# sender report rows: one per train sent
SENT_COLUMNS = ("t_start_ns", "t_end_ns", "packets", "bytes")
SENT_NCOLS = 4

cdef enum:
    C_HEADER_LEN = 20
    C_MAX_TRAIN = 1024
    C_MAX_SIZE = 9000
    C_RX_BATCH = 64
    C_CTRL_LEN = 64

# pull_header results
cdef enum:
    P_OK = 0
    P_SHORT
    P_MAGIC
    P_VERSION
    P_COUNT
    P_INDEX
    P_SIZE


class DecodeError(ValueError):
    """A train packet that does not parse; the message names the offset."""

_PARSE_ERRORS = {P_SHORT: (0, "shorter than the 20-byte header"), P_MAGIC: (0, 'magic is not "NPTR"'),
                 P_VERSION: (4, "unknown version"), P_COUNT: (6, f"count is not 2..{MAX_TRAIN}"),
                 P_INDEX: (16, "index is not below count"), P_SIZE: (18, "size field differs from the length")}

ctypedef struct header_t:
    uint8_t flags
    uint16_t count
    uint32_t token
    uint32_t train
    uint16_t index
    uint16_t size


cdef inline void push_header(uint8_t *p, const header_t *h) noexcept nogil:
    """Write the 20-byte header at p."""
    p[0] = 78   # N
    p[1] = 80   # P
    p[2] = 84   # T
    p[3] = 82   # R
    p[4] = 1
    p[5] = h.flags
    push_u16(p + 6, h.count)
    push_u32(p + 8, h.token)
    push_u32(p + 12, h.train)
    push_u16(p + 16, h.index)
    push_u16(p + 18, h.size)


cdef inline int pull_header(const uint8_t *p, size_t n, header_t *h) noexcept nogil:
    """Parse and check a packet of n bytes; P_OK or the first P_* problem (token not checked)."""
    if n < C_HEADER_LEN:
        return P_SHORT
    if p[0] != 78 or p[1] != 80 or p[2] != 84 or p[3] != 82:
        return P_MAGIC
    if p[4] != 1:
        return P_VERSION
    h.flags = p[5]
    h.count = pull_u16(p + 6)
    h.token = pull_u32(p + 8)
    h.train = pull_u32(p + 12)
    h.index = pull_u16(p + 16)
    h.size = pull_u16(p + 18)
    if h.count < 2 or h.count > C_MAX_TRAIN:
        return P_COUNT
    if h.index >= h.count:
        return P_INDEX
    if h.size != n:
        return P_SIZE
    return P_OK


def pack_header(int flags, int count, uint32_t token, uint32_t train, int index, int size):
    """The 20-byte header as bytes (test hook over push_header)."""
    cdef header_t h
    cdef uint8_t buf[C_HEADER_LEN]
    if not (0 <= flags <= 255 and 0 <= count <= 65535 and 0 <= index <= 65535 and 0 <= size <= 65535):
        raise ValueError("flags must fit 8 bits; count, index and size 16 bits")
    h.flags = <uint8_t>flags
    h.count = <uint16_t>count
    h.token = token
    h.train = train
    h.index = <uint16_t>index
    h.size = <uint16_t>size
    push_header(buf, &h)
    return (<char *>buf)[:C_HEADER_LEN]


def parse_packet(const unsigned char[:] packet):
    """(flags, count, token, train, index, size) of a whole packet, or DecodeError naming the offset.

    The same checks the receive loop applies (it counts instead of raising).
    """
    cdef header_t h
    cdef size_t n = packet.shape[0]
    cdef int r
    if n == 0:
        r = P_SHORT
    else:
        r = pull_header(&packet[0], n, &h)
    if r != P_OK:
        offset, why = _PARSE_ERRORS[r]
        raise DecodeError(f"train packet at offset {offset}: {why}")
    return (h.flags, h.count, h.token, h.train, h.index, h.size)


cdef int _check_udp(int fd) except -1:
    cdef int kind = 0
    cdef socklen_t n = sizeof(kind)
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind, &n) != 0 or kind != SOCK_DGRAM:
        raise ValueError(f"fd {fd} is not a UDP socket")
    return 0


cdef class SendResult:
    """One TrainSender.send() call (read-only): trains, packets and bytes handed to the kernel
    (a train's bytes count when all of it was), elapsed_ns, interrupted (a signal ended it)."""
    cdef readonly int64_t trains, packets, bytes, elapsed_ns
    cdef readonly bint interrupted

    def __repr__(self):
        return (f"SendResult(trains={self.trains}, packets={self.packets}, bytes={self.bytes}, "
                f"elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class ReceiveResult:
    """One TrainReceiver.run() call (read-only): rows written, datagrams read, and those dropped:
    malformed, truncated, foreign (another session's token); user_ts (rows without a kernel
    stamp); elapsed_ns; interrupted (a signal ended it)."""
    cdef readonly Py_ssize_t rows
    cdef readonly int64_t datagrams, malformed, truncated, foreign, user_ts, elapsed_ns
    cdef readonly bint interrupted

    def __repr__(self):
        return (f"ReceiveResult(rows={self.rows}, datagrams={self.datagrams}, malformed={self.malformed}, "
                f"truncated={self.truncated}, foreign={self.foreign}, user_ts={self.user_ts}, "
                f"elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class TrainSender:
    """Sends planned trains on a connected UDP socket the caller owns.

    send(plan, sent) sends plan rows (train, count, size, primers,
    primer_size, gap_ns) in order. A row is one train: `count` packets in
    one sendmmsg() call; the first `primers` of them (0..count-2) are
    primers of primer_size bytes (flag bit 0), the rest have `size` bytes. After a train the loop sleeps
    gap_ns from the end of its sendmmsg(). sent[i] gets (t_start_ns, t_end_ns,
    packets, bytes) on CLOCK_MONOTONIC around the call: the time the host took
    to hand the train to the kernel, an upper bound on how spread out it left.
    """
    cdef int fd
    cdef readonly uint32_t token
    cdef uint8_t *headers
    cdef uint8_t *filler
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef bint running
    cdef readonly int64_t trains, packets, bytes_sent, short_sends, errors
    cdef readonly int error

    def __cinit__(self, *args, **kwargs):
        self.headers = NULL
        self.filler = NULL
        self.msgs = NULL
        self.iov = NULL

    def __init__(self, int fd, uint32_t token, int sndbuf=4 << 20):
        cdef uint64_t seed = 0x6e657470726f6265ULL
        _check_udp(fd)
        self.fd = fd
        self.token = token
        if sndbuf > 0:
            # a whole train must fit, or sendmmsg blocks half-way and splits it; past
            # net.core.wmem_max only with CAP_NET_ADMIN (the FORCE option), else up to it
            if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) != 0:
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf))
        self.headers = <uint8_t *>calloc(C_MAX_TRAIN, C_HEADER_LEN)
        self.filler = <uint8_t *>malloc(C_MAX_SIZE)
        self.msgs = <mmsghdr *>calloc(C_MAX_TRAIN, sizeof(mmsghdr))
        self.iov = <iovec *>calloc(2 * C_MAX_TRAIN, sizeof(iovec))
        if self.headers == NULL or self.filler == NULL or self.msgs == NULL or self.iov == NULL:
            raise MemoryError()
        np_prng_fill(self.filler, C_MAX_SIZE, &seed)     # filler nothing on the path can compress away

    def __dealloc__(self):
        free(self.headers)
        free(self.filler)
        free(self.msgs)
        free(self.iov)

    def send(self, int64_t[:, ::1] plan not None, int64_t[:, ::1] sent not None):
        """Send every train of `plan`; returns a SendResult.

        A send error ends the call: OSError with the SendResult so far as
        .result (the errno is also kept in .error). A signal ends it early
        (its Python handler runs first). Rows are checked before anything is
        sent: ValueError names the first bad one.
        """
        cdef Py_ssize_t n = plan.shape[0], i, k
        cdef int64_t t0, t1, due, nbytes, count, size, psize, gap, primers
        cdef int64_t done_packets = 0, done_bytes = 0, trains = 0
        cdef int r, off, err = 0, serr = 0
        cdef header_t h
        cdef timespec ts
        cdef SendResult res
        if plan.shape[1] != PLAN_NCOLS or sent.shape[1] != SENT_NCOLS:
            raise ValueError(f"plan needs {PLAN_NCOLS} columns and sent {SENT_NCOLS}")
        if sent.shape[0] < n:
            raise ValueError("sent needs a row per plan row")
        if self.msgs == NULL:
            raise ValueError("TrainSender was not initialised")
        for i in range(n):
            count, size, primers, psize, gap = plan[i, 1], plan[i, 2], plan[i, 3], plan[i, 4], plan[i, 5]
            if not (2 <= count <= MAX_TRAIN and HEADER_LEN <= size <= MAX_SIZE
                    and 0 <= primers <= count - 2
                    and (primers == 0 or HEADER_LEN <= psize <= MAX_SIZE) and 0 <= gap <= 10**10
                    and 0 <= plan[i, 0] <= 0xffffffff):
                raise ValueError(f"plan row {i}: needs 2 <= count <= {MAX_TRAIN}, {HEADER_LEN} <= size <= "
                                 f"{MAX_SIZE}, 0 <= primers <= count - 2 of a valid primer_size, "
                                 "0 <= gap_ns <= 10 s")
        if self.running:
            raise RuntimeError("send() is already running")
        self.running = True
        t0 = mono_ns()
        due = t0
        try:
            with nogil:
                for i in range(n):
                    count, size, primers, psize = plan[i, 1], plan[i, 2], plan[i, 3], plan[i, 4]
                    if due > mono_ns():
                        ns_to_timespec(due, &ts)
                        r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
                        if r == EINTR:
                            serr = EINTR
                            break
                    h.count = <uint16_t>count
                    h.token = self.token
                    h.train = <uint32_t>plan[i, 0]
                    nbytes = 0
                    for k in range(count):
                        h.index = <uint16_t>k
                        h.flags = 1 if k < primers else 0
                        h.size = <uint16_t>(psize if h.flags else size)
                        push_header(self.headers + k * C_HEADER_LEN, &h)
                        self.iov[2 * k].iov_base = self.headers + k * C_HEADER_LEN
                        self.iov[2 * k].iov_len = C_HEADER_LEN
                        self.iov[2 * k + 1].iov_base = self.filler
                        self.iov[2 * k + 1].iov_len = h.size - C_HEADER_LEN
                        memset(&self.msgs[k].msg_hdr, 0, sizeof(msghdr))
                        self.msgs[k].msg_hdr.msg_iov = &self.iov[2 * k]
                        self.msgs[k].msg_hdr.msg_iovlen = 2
                        nbytes += h.size
                    off = 0
                    t1 = mono_ns()
                    sent[i, 0] = t1
                    while off < count:
                        r = sendmmsg(self.fd, &self.msgs[off], <unsigned int>(count - off), 0)
                        if r < 0:
                            if errno == EINTR:
                                continue
                            err = errno
                            break
                        if r < count - off:
                            self.short_sends += 1
                        off += r
                    sent[i, 1] = mono_ns()
                    sent[i, 2] = off
                    sent[i, 3] = nbytes if off == count else 0
                    trains += 1
                    done_packets += off
                    if off == count:
                        done_bytes += nbytes
                    if err != 0:
                        break
                    due = sent[i, 1] + plan[i, 5]
        finally:
            self.running = False
            self.trains += trains
            self.packets += done_packets
            self.bytes_sent += done_bytes
            if err != 0:
                self.errors += 1
                self.error = err
        res = SendResult.__new__(SendResult)
        res.trains = trains
        res.packets = done_packets
        res.bytes = done_bytes
        res.elapsed_ns = mono_ns() - t0
        res.interrupted = serr == EINTR
        loop_end(err, res.interrupted, "sendmmsg", res)
        return res


cdef class TrainReceiver:
    """Receives train packets of one session (token) from a UDP socket the caller owns.

    Turns on kernel RX software stamps (SO_TIMESTAMPING): each accepted
    packet's row carries the kernel's RX time (CLOCK_REALTIME ns; differences
    are what matter). Counters since construction: packets (accepted),
    malformed (bad header, size field not the length), truncated (longer than
    MAX_SIZE), foreign (another session's token), user_ts (no kernel timestamp
    came, as for a packet that arrived before the kernel turned stamping on:
    rx_ns is user space and flagged).
    """
    cdef int fd
    cdef readonly uint32_t token
    cdef uint8_t *bufs
    cdef uint8_t *ctrl
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef bint running
    cdef readonly int64_t packets, malformed, truncated, foreign, user_ts

    def __cinit__(self, *args, **kwargs):
        self.bufs = NULL
        self.ctrl = NULL
        self.msgs = NULL
        self.iov = NULL

    def __init__(self, int fd, uint32_t token, int rcvbuf=8 << 20):
        _check_udp(fd)
        self.fd = fd
        self.token = token
        if rx_stamps_on(fd) != 0:
            raise OSError(errno, f"SO_TIMESTAMPING: {strerror(errno).decode()}")
        if rcvbuf > 0:             # as for the sender: beyond rmem_max with CAP_NET_ADMIN only
            if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) != 0:
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf))
        self.bufs = <uint8_t *>malloc(C_RX_BATCH * (C_MAX_SIZE + 1))
        self.ctrl = <uint8_t *>malloc(C_RX_BATCH * C_CTRL_LEN)
        self.msgs = <mmsghdr *>calloc(C_RX_BATCH, sizeof(mmsghdr))
        self.iov = <iovec *>calloc(C_RX_BATCH, sizeof(iovec))
        if self.bufs == NULL or self.ctrl == NULL or self.msgs == NULL or self.iov == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.bufs)
        free(self.ctrl)
        free(self.msgs)
        free(self.iov)

    def drain(self):
        """Discard whatever is queued now (stale packets of an earlier request); returns how many."""
        scratch = _np.empty((C_RX_BATCH, RX_NCOLS), dtype=_np.int64)
        total = 0
        while True:
            got = self.run(scratch, C_RX_BATCH, 0, 0)
            self.packets -= got.rows
            total += got.datagrams
            if got.datagrams == 0:
                return total

    def run(self, int64_t[:, ::1] rows not None, int64_t expected, int64_t idle_ns, int64_t max_ns):
        """Receive until `expected` packets are accepted, rows is full, nothing came for
        idle_ns (counted from the call or the last datagram), or max_ns passed.

        idle_ns = max_ns = 0 takes only what is queued now. A signal ends the
        call early (its handler runs first). Returns this call's
        ReceiveResult; rows[0:rows] hold the packets in arrival order. A
        failed recvmmsg()/poll() raises OSError with the ReceiveResult so far
        as .result.
        """
        cdef Py_ssize_t cap = rows.shape[0], nrows = 0
        cdef int64_t t0, now, last, end, wait, datagrams = 0
        cdef int64_t malformed = 0, truncated = 0, foreign = 0, user_ts = 0, ts_ns, user_now
        cdef int r, i, err = 0, perr = 0, timeout
        cdef unsigned int flags
        cdef header_t h
        cdef pollfd pfd
        cdef msghdr *mh
        cdef ReceiveResult res
        if rows.shape[1] != RX_NCOLS:
            raise ValueError(f"rows needs {RX_NCOLS} columns")
        if not (0 <= idle_ns <= MAX_WAIT_NS and 0 <= max_ns <= MAX_WAIT_NS):
            raise ValueError(f"idle_ns and max_ns must be 0 to {MAX_WAIT_NS} ns (got {idle_ns}, {max_ns})")
        if self.msgs == NULL:
            raise ValueError("TrainReceiver was not initialised")
        if self.running:
            raise RuntimeError("run() is already running")
        self.running = True
        pfd.fd = self.fd
        pfd.events = POLLIN
        t0 = mono_ns()
        last = t0
        end = t0 + max_ns
        try:
            with nogil:
                while nrows < cap and nrows < expected:
                    for i in range(C_RX_BATCH):
                        self.iov[i].iov_base = self.bufs + i * (C_MAX_SIZE + 1)
                        self.iov[i].iov_len = C_MAX_SIZE + 1
                        memset(&self.msgs[i].msg_hdr, 0, sizeof(msghdr))
                        self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
                        self.msgs[i].msg_hdr.msg_iovlen = 1
                        self.msgs[i].msg_hdr.msg_control = self.ctrl + i * C_CTRL_LEN
                        self.msgs[i].msg_hdr.msg_controllen = C_CTRL_LEN
                    r = recvmmsg(self.fd, self.msgs, C_RX_BATCH, MSG_DONTWAIT, NULL)
                    if r < 0:
                        if errno == EINTR:
                            perr = EINTR
                            break
                        if errno != EAGAIN:
                            err = errno
                            break
                        now = mono_ns()
                        wait = last + idle_ns - now
                        if end - now < wait:
                            wait = end - now
                        if wait <= 0:
                            break
                        timeout = <int>((wait + 999_999) // 1_000_000)
                        r = poll(&pfd, 1, timeout)
                        if r < 0:
                            if errno == EINTR:
                                perr = EINTR
                                break
                            err = errno
                            break
                        continue
                    last = mono_ns()
                    user_now = clock_ns(CLOCK_REALTIME)
                    datagrams += r
                    for i in range(r):
                        mh = &self.msgs[i].msg_hdr
                        if mh.msg_flags & MSG_TRUNC or self.msgs[i].msg_len > C_MAX_SIZE:
                            truncated += 1
                            continue
                        if pull_header(self.bufs + i * (C_MAX_SIZE + 1), self.msgs[i].msg_len, &h) != P_OK:
                            malformed += 1
                            continue
                        if h.token != self.token:
                            foreign += 1
                            continue
                        if nrows >= cap:
                            continue                # counted in datagrams, not stored: rows is full
                        ts_ns = sw_stamp_ns(mh)
                        flags = 1 if h.flags & 1 else 0
                        if ts_ns < 0:
                            ts_ns = user_now
                            flags |= 2
                            user_ts += 1
                        rows[nrows, 0] = h.train
                        rows[nrows, 1] = h.index
                        rows[nrows, 2] = h.count
                        rows[nrows, 3] = h.size
                        rows[nrows, 4] = ts_ns
                        rows[nrows, 5] = flags
                        nrows += 1
        finally:
            self.running = False
            self.packets += nrows
            self.malformed += malformed
            self.truncated += truncated
            self.foreign += foreign
            self.user_ts += user_ts
        res = ReceiveResult.__new__(ReceiveResult)
        res.rows = nrows
        res.datagrams = datagrams
        res.malformed = malformed
        res.truncated = truncated
        res.foreign = foreign
        res.user_ts = user_ts
        res.elapsed_ns = mono_ns() - t0
        res.interrupted = perr == EINTR
        loop_end(err, res.interrupted, "recvmmsg", res)
        return res

