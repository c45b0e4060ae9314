# netprobe._udpio: the oneway probe's UDP sender and receiver (wire protocol v2,
# see includes/wire.pxd for the datagram layout). One mechanism per file under udp/:
#
#   boundary.pyx   argument checks, DecodeError, saturating time differences
#   codec.pyx      the v2 codec's Python face (test hooks and tools)
#   schedule.pyx   Poisson/fixed gaps, round-robin ports, probe lengths (no sockets)
#   frames.pyx     raw Ethernet/IP/UDP frames and their checksums
#   txstamp.pyx    TX follow-ups: kernel TX times read back from the error queue
#   results.pyx    what run() returns
#   sender.pyx     UdpProbeSender: the schedule sent in sendmmsg batches
#   receiver.pyx   UdpProbeReceiver: recvmmsg, per-port windows and interval slots
#
# UDPing v1's receiver is netprobe._udping (udping.pyx).

from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.math cimport log
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from byteorder cimport load_be16, load_be32, load_be64, store_be16, store_be32, store_be64
from linux cimport (errno, EINTR, CLOCK_MONOTONIC, CLOCK_REALTIME, timespec, clock_ns, mono_ns, ns_to_timespec,
                    setsockopt, SOL_SOCKET, MSG_DONTWAIT, poll, pollfd, POLLIN, MSG_TRUNC, rx_stamps_on,
                    sw_stamp_ns, iovec, msghdr, mmsghdr, sendmmsg, recvmmsg, TIMER_ABSTIME, clock_nanosleep, prctl,
                    PR_SET_TIMERSLACK, recvmsg, MSG_ERRQUEUE, SO_TIMESTAMPING, SOF_TIMESTAMPING_TX_SOFTWARE,
                    SOF_TIMESTAMPING_SOFTWARE)
from prng cimport np_prng_fill, np_prng_next, np_prng_unit
from wire cimport (udping_v1, push_udping_v1, store_le64, V1_HDR_LEN, V1_GUID_MAX, OFF_V1_SENT_SEC,
                   OFF_V1_SENT_NSEC, probe_hdr, WIRE_MAGIC, WIRE_VERSION, np_hmac_t, np_hmac_init, np_hmac,
                   np_sha256_t, np_sha256_init, np_sha256_update, np_sha256_final, np_sha256_set_shani,
                   push_probe_hdr, push_tag, pull_probe_hdr, pull_tag_check, WIRE_OK, WIRE_SHORT,
                   WIRE_TAG_UNEXPECTED, WIRE_HDR_LEN, WIRE_TAG_LEN, WIRE_MAX_LEN, FLAG_CONTROL, FLAG_AUTH,
                   FLAG_UNSYNC, FLAG_TXTIME, OFF_FLAGS, OFF_PORT, OFF_SESSION, OFF_SEQ, OFF_SEND, OFF_VERSION,
                   OFF_MAGIC, OFF_FOLLOW_UP)

cdef enum:
    BATCH = 64              # packets per sendmmsg / recvmmsg
    MAX_PORTS = 5000

include "udp/boundary.pyx"
include "udp/codec.pyx"
include "udp/schedule.pyx"
include "udp/frames.pyx"
include "udp/txstamp.pyx"
include "udp/results.pyx"
include "udp/sender.pyx"
include "udp/receiver.pyx"

HDR_LEN = WIRE_HDR_LEN
TAG_LEN = WIRE_TAG_LEN
MAX_LEN = WIRE_MAX_LEN
V1_HDR = V1_HDR_LEN
F_CONTROL, F_AUTH, F_UNSYNC, F_TXTIME = FLAG_CONTROL, FLAG_AUTH, FLAG_UNSYNC, FLAG_TXTIME

# the layout the Python side (analysis.py, config.py) must agree with; tests compare them
PORT_SUB_BITS = SUB_PORT
SESSION_SUB_BITS = SUB_SESSION
HIST_TOP_EXP = HIST_TOP
MAX_SESSION_PORTS = MAX_PORTS
