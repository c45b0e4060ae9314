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
# One mechanism per file under train/: packet.pyx (the wire format and its
# codec), sender.pyx, receiver.pyx; both ends share _TrainEnd below.
#
# SO_TXTIME is not used: it spaces packets (it needs the fq or etf qdisc),
# while a train must leave as fast as the host can send it.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

import numpy as _np

from byteorder cimport load_be16 as pull_u16, load_be32 as pull_u32, store_be16 as push_u16, store_be32 as push_u32

from linux cimport (errno, EINTR, EAGAIN, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME,
                    clock_ns, mono_ns, ns_to_timespec, strerror, loop_end, pollfd, poll_in,
                    poll_ns, SOL_SOCKET, setsockopt, getsockopt, socklen_t,
                    MSG_DONTWAIT, MSG_TRUNC, rx_stamps_on, sw_stamp_ns, SO_RCVBUF,
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


include "train/packet.pyx"


cdef int _check_udp(int fd) except -1:
    cdef int kind = 0
    cdef socklen_t n = sizeof(kind)
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind, &n) != 0 or kind != SOCK_DGRAM:
        raise ValueError(f"fd {fd} is not a UDP socket")
    return 0


cdef class _TrainEnd:
    """What both ends hold: the caller's UDP socket, the session token and the message
    headers and iovecs of one sendmmsg()/recvmmsg() batch."""
    cdef int fd
    cdef readonly uint32_t token
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef bint running

    def __cinit__(self, *args, **kwargs):
        self.msgs = NULL
        self.iov = NULL

    def __dealloc__(self):
        free(self.msgs)
        free(self.iov)

    cdef int _open(self, int fd, uint32_t token, size_t nmsgs, size_t niov) except -1:
        """Take a UDP socket (ValueError if fd is not one) and the token; allocate the batch."""
        _check_udp(fd)
        self.fd = fd
        self.token = token
        self.msgs = <mmsghdr *>calloc(nmsgs, sizeof(mmsghdr))
        self.iov = <iovec *>calloc(niov, sizeof(iovec))
        if self.msgs == NULL or self.iov == NULL:
            raise MemoryError()
        return 0

    cdef void _set_buf(self, int size, int force_opt, int opt):
        """A socket buffer of `size` bytes (size > 0): past net.core's limit only with
        CAP_NET_ADMIN (the FORCE option), else up to it."""
        if size > 0 and setsockopt(self.fd, SOL_SOCKET, force_opt, &size, sizeof(size)) != 0:
            setsockopt(self.fd, SOL_SOCKET, opt, &size, sizeof(size))


include "train/sender.pyx"
include "train/receiver.pyx"
