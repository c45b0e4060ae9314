# netprobe._udping: UDPing v1 (compatibility) for udping_server: the v1 codec's Python
# face and the receive loop (udp/v1.pyx); the layout is includes/wire.pxd's.

from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from linux cimport (errno, EINTR, CLOCK_REALTIME, clock_ns, mono_ns, MSG_DONTWAIT, poll, pollfd, POLLIN, MSG_TRUNC,
                    rx_stamps_on, sw_stamp_ns, iovec, mmsghdr, recvmmsg)
from wire cimport (udping_v1, push_udping_v1, pull_udping_v1, V1_HDR_LEN, V1_GUID_MAX, WIRE_OK, WIRE_SHORT,
                   WIRE_MAX_LEN)

cdef enum:
    BATCH = 64              # datagrams per recvmmsg

include "udp/boundary.pyx"
include "udp/v1.pyx"
