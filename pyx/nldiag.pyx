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

cdef extern from "nldiag_rec.h":
    ctypedef struct rec_t "struct nldiag_rec":
        int64_t t_ns
        uint64_t idiag_cookie
        uint8_t idiag_family
        uint8_t idiag_state
        uint8_t idiag_timer
        uint8_t idiag_retrans
        uint16_t idiag_sport
        uint16_t idiag_dport
        uint8_t idiag_src[16]
        uint8_t idiag_dst[16]
        uint32_t idiag_if
        uint32_t idiag_expires
        uint32_t idiag_rqueue
        uint32_t idiag_wqueue
        uint32_t idiag_uid
        uint32_t idiag_inode
        uint16_t info_len
        uint8_t has_bbr
        uint8_t has_skmem
        char ca_name[16]
        uint64_t bbr_bw
        uint32_t bbr_min_rtt
        uint32_t bbr_pacing_gain
        uint32_t bbr_cwnd_gain
        uint32_t skmem_rmem_alloc
        tcp_info tcpi

    ctypedef struct nldiag_field:
        const char *name
        const char *fmt
        size_t offset
    const nldiag_field nldiag_fields[]
    size_t NLDIAG_NFIELDS


def _record_dtype():
    names, formats, offsets = [], [], []
    for i in range(NLDIAG_NFIELDS):
        names.append(nldiag_fields[i].name.decode())
        formats.append(nldiag_fields[i].fmt.decode())
        offsets.append(nldiag_fields[i].offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": sizeof(rec_t)})


RECORD_DTYPE = _record_dtype()
RECORD_SIZE = sizeof(rec_t)
TCP_INFO_SIZE = sizeof(tcp_info)

# TCP states (include/net/tcp_states.h) and the idiag_ext bits (1 << (INET_DIAG_x - 1)).
TCP_STATES = {"established": 1, "syn-sent": 2, "syn-recv": 3, "fin-wait-1": 4, "fin-wait-2": 5,
              "time-wait": 6, "close": 7, "close-wait": 8, "last-ack": 9, "listen": 10, "closing": 11}
EXT_INFO = 1 << (INET_DIAG_INFO - 1)
EXT_CONG = 1 << (INET_DIAG_CONG - 1)
EXT_BBR = 1 << (INET_DIAG_VEGASINFO - 1)     # the congestion module's own info (tcp_bbr: INET_DIAG_BBRINFO)
EXT_SKMEM = 1 << (INET_DIAG_SKMEMINFO - 1)
COUNTERS = ("sockets", "messages", "overflow", "malformed", "truncated", "no_info", "dump_intr", "foreign",
            "spoofed")


cdef struct counters_t:
    int64_t sockets        # records written
    int64_t messages       # netlink messages seen (every type)
    int64_t overflow       # sockets that did not fit in the records array
    int64_t malformed      # messages or attributes whose lengths do not fit: dropped
    int64_t truncated      # datagrams cut by a short buffer, short tails
    int64_t no_info        # sockets without INET_DIAG_INFO (e.g. not a full socket)
    int64_t dump_intr      # messages flagged NLM_F_DUMP_INTR (the table changed during the dump)
    int64_t foreign        # messages of another sequence number or an unexpected type
    int64_t spoofed        # datagrams not sent by the kernel (sender nl_pid != 0): dropped unread
    int error              # errno of NLMSG_ERROR / a negative NLMSG_DONE, or of a syscall


cdef int parse_attrs(const uint8_t *p, uint32_t n, rec_t *r) noexcept nogil:
    """Fill *r from the rtattrs in p[0:n]; -1 if one's length does not fit (r is then garbage)."""
    cdef uint32_t off = 0, alen, plen, i
    cdef uint16_t atype
    cdef const uint8_t *a
    cdef tcp_bbr_info bbr
    cdef uint32_t *skmem = &r.skmem_rmem_alloc
    while n - off >= NLA_HDRLEN:
        alen = load_host16(p + off)
        atype = load_host16(p + off + 2) & 0x3fff        # NLA_TYPE_MASK: drop NESTED / NET_BYTEORDER
        if alen < NLA_HDRLEN or alen > n - off:
            return -1
        plen = alen - NLA_HDRLEN
        a = p + off + NLA_HDRLEN
        if atype == INET_DIAG_INFO:
            memset(&r.tcpi, 0, sizeof(tcp_info))
            memcpy(&r.tcpi, a, plen if plen < sizeof(tcp_info) else sizeof(tcp_info))
            r.info_len = <uint16_t>(plen if plen < 0xffff else 0xffff)
        elif atype == INET_DIAG_CONG:
            memset(r.ca_name, 0, 16)
            i = 0
            while i < plen and i < 15 and a[i] != 0:
                r.ca_name[i] = <char>a[i]
                i += 1
        elif atype == INET_DIAG_BBRINFO:
            if plen < sizeof(tcp_bbr_info):
                return -1
            memcpy(&bbr, a, sizeof(tcp_bbr_info))
            r.bbr_bw = (<uint64_t>bbr.bbr_bw_hi << 32) | bbr.bbr_bw_lo
            r.bbr_min_rtt = bbr.bbr_min_rtt
            r.bbr_pacing_gain = bbr.bbr_pacing_gain
            r.bbr_cwnd_gain = bbr.bbr_cwnd_gain
            r.has_bbr = 1
        elif atype == INET_DIAG_SKMEMINFO:
            memset(skmem, 0, 4 * SK_MEMINFO_VARS)
            i = 0
            while i < SK_MEMINFO_VARS and 4 * (i + 1) <= plen:
                skmem[i] = load_host32(a + 4 * i)
                i += 1
            r.has_skmem = 1
        off += nl_align(alen)
        if off > n:                # the last attribute's padding may be missing: that ends the list
            break
    return 0


cdef void parse_sock(const uint8_t *p, uint32_t n, int64_t t_ns, rec_t *out, Py_ssize_t cap,
                     Py_ssize_t *count, counters_t *c) noexcept nogil:
    """One SOCK_DIAG_BY_FAMILY payload (inet_diag_msg + rtattrs) into out[count]. A socket past
    the array's capacity is still parsed (into a scratch record), so malformed and no_info
    count the same whatever the capacity, and overflow counts only well-formed sockets."""
    cdef inet_diag_msg m
    cdef rec_t scratch
    cdef rec_t *r = &out[count[0]] if count[0] < cap else &scratch
    if n < INET_DIAG_MSG_LEN:
        c.malformed += 1
        return
    memcpy(&m, p, INET_DIAG_MSG_LEN)
    if m.idiag_family != AF_INET and m.idiag_family != AF_INET6:
        c.malformed += 1
        return
    memset(r, 0, sizeof(rec_t))
    if parse_attrs(p + INET_DIAG_MSG_LEN, n - INET_DIAG_MSG_LEN, r) != 0:
        memset(r, 0, sizeof(rec_t))
        c.malformed += 1
        return
    if r.info_len == 0:
        c.no_info += 1
    if r == &scratch:
        c.overflow += 1
        return
    r.t_ns = t_ns
    r.idiag_family = m.idiag_family
    r.idiag_state = m.idiag_state
    r.idiag_timer = m.idiag_timer
    r.idiag_retrans = m.idiag_retrans
    r.idiag_sport = ntohs(m.id.idiag_sport)
    r.idiag_dport = ntohs(m.id.idiag_dport)
    memcpy(r.idiag_src, m.id.idiag_src, 4 if m.idiag_family == AF_INET else 16)
    memcpy(r.idiag_dst, m.id.idiag_dst, 4 if m.idiag_family == AF_INET else 16)
    r.idiag_if = m.id.idiag_if
    r.idiag_cookie = (<uint64_t>m.id.idiag_cookie[1] << 32) | m.id.idiag_cookie[0]
    r.idiag_expires = m.idiag_expires
    r.idiag_rqueue = m.idiag_rqueue
    r.idiag_wqueue = m.idiag_wqueue
    r.idiag_uid = m.idiag_uid
    r.idiag_inode = m.idiag_inode
    count[0] += 1


cdef int parse_buffer(const uint8_t *buf, Py_ssize_t n, uint32_t seq, int64_t t_ns, rec_t *out,
                      Py_ssize_t cap, Py_ssize_t *count, counters_t *c,
                      uint16_t sock_type=SOCK_DIAG_BY_FAMILY) noexcept nogil:
    """Every netlink message in buf[0:n]; 1 once NLMSG_DONE or NLMSG_ERROR ends the dump, else 0.
    Sockets come in messages of the request's type (`sock_type`)."""
    cdef Py_ssize_t off = 0
    cdef uint32_t mlen
    cdef uint16_t mtype, mflags
    cdef int32_t val
    while off < n:
        if n - off < NLMSG_HDRLEN:
            c.truncated += 1
            return 0
        mlen = load_host32(buf + off)
        mtype = load_host16(buf + off + 4)
        mflags = load_host16(buf + off + 6)
        if mlen < NLMSG_HDRLEN or mlen > n - off:
            c.malformed += 1           # no way to find the next header: drop the rest of this datagram
            return 0
        c.messages += 1
        if load_host32(buf + off + 8) != seq:
            c.foreign += 1
        else:
            if mflags & NLM_F_DUMP_INTR:
                c.dump_intr += 1
            if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                if mlen >= NLMSG_HDRLEN + 4:
                    val = <int32_t>load_host32(buf + off + NLMSG_HDRLEN)
                    if val < 0:
                        c.error = -val
                elif mtype == NLMSG_ERROR:
                    c.malformed += 1
                return 1
            if mtype == sock_type:
                parse_sock(buf + off + NLMSG_HDRLEN, mlen - NLMSG_HDRLEN, t_ns, out, cap, count, c)
            else:
                c.foreign += 1
        off += nl_align(mlen)
    return 0


cdef class Counts:
    """What one parse or dump saw (read-only; COUNTERS): sockets written to the records; netlink
    messages; overflow (sockets past the records' capacity); malformed and truncated (dropped);
    no_info (sockets without INET_DIAG_INFO); dump_intr (NLM_F_DUMP_INTR messages); foreign
    (another sequence number or type); spoofed (datagrams not from the kernel, dropped)."""
    cdef readonly int64_t sockets, messages, overflow, malformed, truncated, no_info, dump_intr, foreign
    cdef readonly int64_t spoofed
    _extra = ()

    cdef _fill(self, counters_t *c):
        self.sockets, self.messages, self.overflow = c.sockets, c.messages, c.overflow
        self.malformed, self.truncated, self.no_info = c.malformed, c.truncated, c.no_info
        self.dump_intr, self.foreign, self.spoofed = c.dump_intr, c.foreign, c.spoofed

    def __repr__(self):
        more = ", ".join(f"{k}={getattr(self, k)}" for k in self._extra)
        return (f"{type(self).__name__}(" + ", ".join(f"{k}={getattr(self, k)}" for k in COUNTERS)
                + (", " + more if more else "") + ")")


cdef class ParseResult(Counts):
    """parse(): Counts, plus done (NLMSG_DONE or NLMSG_ERROR ended the dump) and error (the errno
    that message reported, 0 if none)."""
    cdef readonly bint done
    cdef readonly int error
    _extra = ("done", "error")


cdef class DumpResult(Counts):
    """InetDiagDumper.dump(): Counts, plus bytes and recvs (datagrams) read and elapsed_ns."""
    cdef readonly int64_t bytes, recvs, elapsed_ns
    _extra = ("bytes", "recvs", "elapsed_ns")


cdef unsigned char[::1] _records_bytes(records) except *:
    if not isinstance(records, np.ndarray) or records.dtype != RECORD_DTYPE or records.ndim != 1:
        raise TypeError("records must be a 1-d numpy array of netprobe._nldiag.RECORD_DTYPE")
    if not records.flags.c_contiguous or not records.flags.writeable:
        raise ValueError("records must be C-contiguous and writeable")
    if records.shape[0] == 0:
        return np.empty(1, dtype=np.uint8)
    return records.view(np.uint8)


def parse(const unsigned char[::1] data not None, records, uint32_t seq=1, int64_t t_ns=0):
    """Parse netlink bytes (one or more messages, as one recv() returns them) into `records`.

    Returns a ParseResult; the records written are records[:sockets]. Never
    raises on bad bytes.
    """
    cdef unsigned char[::1] raw = _records_bytes(records)
    cdef Py_ssize_t cap = records.shape[0], count = 0
    cdef counters_t c
    cdef int done
    cdef ParseResult res
    memset(&c, 0, sizeof(c))
    if data.shape[0] == 0:
        done = 0
    else:
        with nogil:
            done = parse_buffer(&data[0], data.shape[0], seq, t_ns, <rec_t *>&raw[0], cap, &count, &c)
    c.sockets = count
    res = ParseResult.__new__(ParseResult)
    res._fill(&c)
    res.done = done
    res.error = c.error
    return res


def gather(records, offsets, sizes):
    """Values at byte offsets[j] (sizes[j] = 1, 2, 4 or 8 bytes, native unsigned; 8 bytes are
    taken as int64, so a u64 ~0 'unlimited' reads -1) of each record of a RECORD_DTYPE array, as
    an (n, k) int64 matrix in column order (whole-column operations stay contiguous): one pass
    over the records, where numpy copies one strided field at a time."""
    if not isinstance(records, np.ndarray) or records.dtype != RECORD_DTYPE or records.ndim != 1:
        raise TypeError("records must be a 1-d numpy array of netprobe._nldiag.RECORD_DTYPE")
    if not records.flags.c_contiguous:
        raise ValueError("records must be C-contiguous")
    offs = np.ascontiguousarray(offsets, dtype=np.intp)
    szs = np.ascontiguousarray(sizes, dtype=np.uint8)
    cdef Py_ssize_t n = records.shape[0], k = offs.shape[0], i, j
    cdef Py_ssize_t stride = RECORD_DTYPE.itemsize
    cdef const Py_ssize_t[::1] o = offs
    cdef const uint8_t[::1] sz = szs
    if offs.ndim != 1 or szs.ndim != 1 or szs.shape[0] != k:
        raise ValueError("offsets and sizes: one size per offset")
    for j in range(k):
        if sz[j] not in (1, 2, 4, 8) or o[j] < 0 or o[j] + sz[j] > stride:
            raise ValueError(f"field {j}: offset {o[j]}, size {sz[j]}: sizes are 1/2/4/8 bytes inside a record")
    out = np.empty((n, k), dtype=np.int64, order="F")
    if n == 0 or k == 0:
        return out
    cdef const unsigned char[::1] raw = records.view(np.uint8)
    cdef int64_t[::1, :] m = out
    cdef const unsigned char *p
    cdef uint64_t v8
    cdef uint32_t v4
    cdef uint16_t v2
    with nogil:
        for i in range(n):
            p = &raw[0] + i * stride
            for j in range(k):
                if sz[j] == 8:
                    memcpy(&v8, p + o[j], 8)
                    m[i, j] = <int64_t>v8
                elif sz[j] == 4:
                    memcpy(&v4, p + o[j], 4)
                    m[i, j] = v4
                elif sz[j] == 2:
                    memcpy(&v2, p + o[j], 2)
                    m[i, j] = v2
                else:
                    m[i, j] = p[o[j]]
    return out


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
        self.families = families
        self.states = states
        self.ext = ext
        self.rcvbuf = rcvbuf
        self.timeout = timeout
        self.bytecode = bytecode
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
