# netprobe._nldiag: the inet_diag (NETLINK_SOCK_DIAG) dump of TCP sockets.
#
# InetDiagDumper owns one netlink socket. dump() sends one request (with an
# optional kernel bytecode filter, so unmatched sockets never leave the
# kernel): for IPv4 and IPv6 together the TCPDIAG_GETSOCK request, whose
# dump walks the kernel's socket hash tables once for both families (one
# SOCK_DIAG_BY_FAMILY request per family walks them twice), else
# SOCK_DIAG_BY_FAMILY for the one family. It reads the
# reply with the GIL released, and writes one fixed-layout record per socket
# into a Python-owned numpy array of RECORD_DTYPE: the inet_diag_msg header
# (kernel names, ports in host order), the congestion control name, BBR's
# model, the socket memory counters and the whole struct tcp_info with its
# kernel field names. Python sees one call per dump.
#
# parse() runs the same parser over bytes (tests, fuzzing). The parser never
# raises: a message or attribute whose length does not fit is counted as
# malformed and dropped, a short tail as truncated, sockets beyond the
# array's capacity as overflow; the dump goes on to NLMSG_DONE.
#
# Here the socket I/O; under nldiag/: record.pyx (the record layout and
# gather()), parse.pyx (the message parser, its counters and results).

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from linux cimport errno, EINTR, close, iovec, msghdr, recvmsg, send, setsockopt, strerror, raise_errno, mono_ns
from netlink cimport (AF_INET, AF_INET6, AF_NETLINK, SOCK_DGRAM, SOCK_CLOEXEC, SOL_SOCKET,
                      SO_RCVBUF, SO_RCVTIMEO, MSG_TRUNC, NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK,
                      NLM_F_DUMP_INTR, NLMSG_ERROR, NLMSG_DONE, NLMSG_HDRLEN, NLA_HDRLEN,
                      INET_DIAG_MSG_LEN, INET_DIAG_INFO, INET_DIAG_CONG, INET_DIAG_SKMEMINFO,
                      INET_DIAG_BBRINFO, INET_DIAG_VEGASINFO, SK_MEMINFO_VARS, sockaddr, sockaddr_nl,
                      inet_diag_msg, tcp_bbr_info, timeval, socket, bind, connect, ntohs, nl_align,
                      load_host16, load_host32)
from tcpinfo cimport tcp_info

import struct

import numpy as np

# TCP states (include/net/tcp_states.h) and the idiag_ext bits (1 << (INET_DIAG_x - 1)).
TCP_STATES = {"established": 1, "syn-sent": 2, "syn-recv": 3, "fin-wait-1": 4, "fin-wait-2": 5,
              "time-wait": 6, "close": 7, "close-wait": 8, "last-ack": 9, "listen": 10, "closing": 11}
EXT_INFO = 1 << (INET_DIAG_INFO - 1)
EXT_CONG = 1 << (INET_DIAG_CONG - 1)
EXT_BBR = 1 << (INET_DIAG_VEGASINFO - 1)     # the congestion module's own info (tcp_bbr: INET_DIAG_BBRINFO)
EXT_SKMEM = 1 << (INET_DIAG_SKMEMINFO - 1)


include "nldiag/record.pyx"
include "nldiag/parse.pyx"


cdef class InetDiagDumper:
    """A NETLINK_SOCK_DIAG socket that dumps TCP sockets into RECORD_DTYPE arrays.

    families: AF_INET and/or AF_INET6 (both, with single_walk: one TCPDIAG_GETSOCK
    request; without: one SOCK_DIAG_BY_FAMILY request each);
    states: TCP state bitmask (1 << state, see TCP_STATES); ext: idiag_ext
    bits (EXT_INFO, EXT_CONG, EXT_BBR, EXT_SKMEM); bytecode: an
    INET_DIAG_REQ_BYTECODE program (netprobe.probes.flows.filters builds it),
    which the kernel checks when the request is sent. The socket is opened
    lazily, and reopened after an error so no stale reply is read. It is
    connected to the kernel, and a datagram whose sender is not the kernel
    (nl_pid != 0: another process's netlink socket) is dropped unread and
    counted (`spoofed`).
    """
    cdef int fd
    cdef uint8_t *buf
    cdef Py_ssize_t bufsize
    cdef bytes request
    cdef readonly bint single_walk
    cdef bytes bytecode
    cdef uint32_t seq
    cdef int rcvbuf
    cdef double timeout
    cdef readonly tuple families
    cdef readonly uint32_t states
    cdef readonly int ext
    cdef readonly int64_t dumps, errors
    cdef readonly int64_t spoofed       # datagrams from a socket other than the kernel's, ignored

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.buf = NULL

    def __init__(self, families=(AF_INET, AF_INET6), uint32_t states=1 << 1, int ext=EXT_INFO,
                 bytes bytecode=b"", int rcvbuf=0, Py_ssize_t bufsize=65536, double timeout=1.0,
                 bint single_walk=True):
        families = tuple(families)
        if not families or any(f not in (AF_INET, AF_INET6) for f in families):
            raise ValueError(f"families must be AF_INET and/or AF_INET6 (got {families!r})")
        if not 0 <= ext <= 0xff:
            raise ValueError(f"ext is an 8-bit mask (got {ext})")
        if len(bytecode) % 4 or len(bytecode) > 0xffff - 4:
            raise ValueError(f"bytecode must be whole 4-byte ops, at most 65528 bytes (got {len(bytecode)})")
        if not 16384 <= bufsize <= 1 << 24:
            raise ValueError(f"bufsize must be 16 KiB to 16 MiB (got {bufsize})")
        if not 0 < timeout <= 60:
            raise ValueError(f"timeout must be > 0 and <= 60 s (got {timeout})")
        self.families, self.states, self.ext, self.bytecode = families, states, ext, bytecode
        self.rcvbuf, self.timeout = rcvbuf, timeout
        self._build(single_walk and set(families) == {AF_INET, AF_INET6})
        self.bufsize = bufsize
        self.buf = <uint8_t *>malloc(bufsize)
        if self.buf == NULL:
            raise MemoryError()

    cdef _build(self, bint single_walk):
        """The request: nlmsghdr + inet_diag_req (single walk: the kernel dumps both families)
        or inet_diag_req_v2 (family patched per send), + rtattr INET_DIAG_REQ_BYTECODE."""
        attr = struct.pack("=HH", 4 + len(self.bytecode), 1) + self.bytecode if self.bytecode else b""
        if single_walk:
            body = struct.pack("=BBBB", 0, 0, 0, self.ext) + bytes(48) + struct.pack("=II", self.states, 0) + attr
        else:
            body = struct.pack("=BBBBI", 0, 6, self.ext, 0, self.states) + bytes(48) + attr
        mtype = TCPDIAG_GETSOCK if single_walk else SOCK_DIAG_BY_FAMILY
        self.request = struct.pack("=IHHII", 16 + len(body), mtype, 0x301, 0, 0) + body
        self.single_walk = single_walk

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        free(self.buf)

    def close(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef int _open(self) except -1:
        """Socket, bound (the kernel picks the port id) and connected to the kernel (nl_pid 0):
        the kernel then refuses unicast from any other socket (ECONNREFUSED at the sender)."""
        cdef sockaddr_nl sa
        cdef timeval tv
        cdef int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        cdef int err
        if fd < 0:
            raise_errno(errno, "NETLINK_SOCK_DIAG socket", None)
        memset(&sa, 0, sizeof(sa))
        sa.nl_family = AF_NETLINK
        tv.tv_sec = <long>self.timeout
        tv.tv_usec = <long>((self.timeout - tv.tv_sec) * 1e6)
        if (bind(fd, <sockaddr *>&sa, sizeof(sa)) != 0
                or connect(fd, <sockaddr *>&sa, sizeof(sa)) != 0
                or setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0
                or (self.rcvbuf > 0 and setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &self.rcvbuf, sizeof(int)) != 0)):
            err = errno
            close(fd)
            raise_errno(err, "NETLINK_SOCK_DIAG socket", None)
        self.fd = fd
        return 0

    def dump(self, records):
        """Dump every matching socket into records[0:sockets]; returns a DumpResult.

        One timestamp per recv() buffer (t_ns of each record). A failed dump
        (a syscall, or the kernel's NLMSG_ERROR) closes the socket and raises
        OSError with the DumpResult so far as .result; one that cannot open
        its socket raises OSError with .result None.
        """
        cdef unsigned char[::1] raw = _records_bytes(records)
        cdef Py_ssize_t cap = records.shape[0], count = 0
        cdef counters_t c
        cdef sockaddr_nl src
        cdef iovec iov
        cdef msghdr mh
        cdef bytearray req = bytearray(self.request)
        cdef uint8_t *reqp = <uint8_t *><char *>req
        cdef Py_ssize_t reqlen = len(req), got
        cdef int64_t t0, now, nbytes = 0, nrecv = 0
        cdef uint32_t seq
        cdef int family, err = 0, done
        cdef uint16_t sock_type = TCPDIAG_GETSOCK if self.single_walk else SOCK_DIAG_BY_FAMILY
        cdef rec_t *out = <rec_t *>&raw[0]
        cdef DumpResult res
        if self.buf == NULL:
            raise ValueError("InetDiagDumper was not initialised")
        memset(&c, 0, sizeof(c))
        memset(&mh, 0, sizeof(mh))
        iov.iov_base = self.buf
        iov.iov_len = self.bufsize
        mh.msg_iov = &iov
        mh.msg_iovlen = 1
        if self.fd < 0:
            self._open()
        t0 = mono_ns()
        now = t0
        for family in ((0,) if self.single_walk else self.families):
            self.seq += 1
            seq = self.seq
            if not self.single_walk:
                reqp[16] = <uint8_t>family
            memcpy(reqp + 8, &seq, 4)
            with nogil:
                if send(self.fd, reqp, reqlen, 0) < 0:
                    err = errno
                done = err != 0
                while not done:
                    mh.msg_name = &src
                    mh.msg_namelen = sizeof(src)
                    got = recvmsg(self.fd, &mh, MSG_TRUNC)
                    if got < 0:
                        if errno == EINTR:
                            continue
                        err = errno
                        break
                    if mh.msg_namelen < sizeof(src) or src.nl_family != AF_NETLINK or src.nl_pid != 0:
                        c.spoofed += 1          # not from the kernel (queued before connect()): ignore
                        continue
                    now = mono_ns()
                    nrecv += 1
                    if got > self.bufsize:
                        c.truncated += 1
                        got = self.bufsize
                    nbytes += got
                    if got == 0:
                        err = 71                # EPROTO: an empty datagram mid-dump
                        break
                    done = parse_buffer(self.buf, got, seq, now, out, cap, &count, &c, sock_type)
            if err == 0 and c.error:
                err = c.error
            if err:
                break
        self.dumps += 1
        self.spoofed += c.spoofed
        if err:
            self.errors += 1
            self.close()
        c.sockets = count
        res = DumpResult.__new__(DumpResult)
        res._fill(&c)
        res.bytes = nbytes
        res.recvs = nrecv
        res.elapsed_ns = now - t0
        if err:
            raise_errno(err, "inet_diag dump", res)
        return res


def strerror_text(int err):
    """strerror(err) as str (for the one-line error a failed dump becomes)."""
    return strerror(err).decode()
