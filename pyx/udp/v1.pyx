# UDPing v1 (compatibility): the codec's Python face and udping_server's receive loop.
# The header layout and its decoder are wire.pxd's; udping_client's probes come from
# UdpProbeSender in v1 mode (netprobe._udpio).

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)
    uint32_t ntohl(uint32_t v)

V1_HDR = V1_HDR_LEN


cdef class V1Result:
    """One UdpingV1Receiver.run() call: rows written (from row 0) and whether a signal ended it."""
    cdef readonly Py_ssize_t rows
    cdef readonly bint interrupted

    @staticmethod
    cdef V1Result make(Py_ssize_t rows, bint interrupted):
        cdef V1Result r = V1Result.__new__(V1Result)
        r.rows, r.interrupted = rows, interrupted
        return r

    def __repr__(self):
        return f"V1Result(rows={self.rows}, interrupted={self.interrupted})"

V1_DECODE_ERRORS = {1: "short", 3: "version", 4: "guid", 5: "size", 6: "tv_nsec"}
V1_COLUMNS = ("ip", "port", "guid_hi", "guid_lo", "start_s", "seq", "sent_ns", "rx_ns")


def push_udping(*, int64_t start_s, guid, uint32_t seq, int64_t sent_sec, int64_t sent_nsec, int length=0,
                payload=b""):
    """One UDPing v1 datagram (header + payload padded with zeros to `length`; 0 = fit)."""
    cdef udping_v1 h
    g = guid.encode() if isinstance(guid, str) else bytes(guid)
    if not 1 <= len(g) <= V1_GUID_MAX:
        raise ValueError("guid must be 1 to 20 characters")
    need = V1_HDR_LEN + len(payload)
    length = length or need
    if not need <= length <= WIRE_MAX_LEN:
        raise ValueError(f"length must be {need} to {WIRE_MAX_LEN} (got {length})")
    buf = bytearray(length)
    buf[V1_HDR_LEN:need] = payload
    cdef uint8_t[:] b = buf
    h.start_s, h.seq, h.sent_sec, h.sent_nsec, h.size = start_s, seq, sent_sec, sent_nsec, length
    h.guid_len = len(g)
    for i in range(len(g)):
        h.guid[i] = g[i]
    push_udping_v1(&b[0], &h)
    return bytes(buf)


def pull_udping(data):
    """Decode a UDPing v1 datagram -> dict; DecodeError(offset) if it is not one."""
    cdef udping_v1 h
    cdef size_t off = 0, n = len(data)
    cdef const uint8_t[:] d = data
    cdef const uint8_t *p = datagram(d, V1_DECODE_ERRORS)
    cdef int r = pull_udping_v1(p, n, &h, &off)     # sets off: a separate statement from decoded(.., off)
    decoded(r, off, V1_DECODE_ERRORS)
    return {"start_s": h.start_s, "guid": bytes(h.guid[:h.guid_len]).decode(), "seq": h.seq,
            "sent_sec": h.sent_sec, "sent_nsec": h.sent_nsec, "size": h.size}


cdef class UdpingV1Receiver:
    """udping_server's receive loop: recvmmsg with kernel RX timestamps on the caller's
    IPv4 UDP socket; each valid v1 probe becomes one int64 row (V1_COLUMNS) in the caller's
    buffer: source address and port, the GUID as (length << 16 | top 16 bits, low 64 bits),
    client start time, sequence number, send and receive times (ns). Anything else is
    counted in `malformed` and dropped."""
    cdef int fd
    cdef uint8_t *bufs
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef char ctrl[BATCH][64]
    cdef sockaddr_in names[BATCH]
    cdef readonly int64_t datagrams, malformed, no_kernel_ts

    def __cinit__(self, *args, **kwargs):
        self.bufs = NULL

    def __init__(self, int fd):
        cdef int i
        if rx_stamps_on(fd) != 0:
            PyErr_SetFromErrno(OSError)
        self.fd = fd
        self.bufs = <uint8_t *>malloc(<size_t>BATCH * 2048)
        if self.bufs == NULL:
            raise MemoryError()
        memset(self.msgs, 0, sizeof(self.msgs))
        for i in range(BATCH):
            self.iov[i].iov_base = self.bufs + <size_t>i * 2048
            self.iov[i].iov_len = 2048
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self.bufs)

    cdef int _row(self, const uint8_t *p, size_t n, sockaddr_in *sa, int64_t rx, int64_t *row) noexcept nogil:
        cdef udping_v1 h
        cdef size_t off = 0
        cdef int i
        cdef uint64_t g = 0
        cdef uint32_t top = 0
        if pull_udping_v1(p, n, &h, &off) != WIRE_OK or sa.sin_family != 2 \
                or h.sent_sec < 0 or h.sent_sec >= (<int64_t>1 << 33):
            return 0
        for i in range(h.guid_len):
            top = <uint32_t>((top << 4) | (g >> 60)) & 0xFFFF
            g = (g << 4) | <uint64_t>(h.guid[i] - 48 if h.guid[i] <= 57 else h.guid[i] - 87)
        row[0] = ntohl(sa.sin_addr.s_addr)
        row[1] = ntohs(sa.sin_port)
        row[2] = (<int64_t>h.guid_len << 16) | top
        row[3] = <int64_t>g
        row[4] = h.start_s
        row[5] = h.seq
        row[6] = h.sent_sec * 1000000000 + h.sent_nsec
        row[7] = rx
        return 1

    def feed(self, data, int64_t rx_ns, ip="127.0.0.1", int port=0):
        """Test hook: the row of one datagram from ip:port, or None (counted malformed)."""
        import ipaddress
        cdef int64_t row[8]
        cdef sockaddr_in sa
        cdef const uint8_t[:] d = data
        if not 0 <= port <= 0xffff:
            raise ValueError(f"port must be 0 to 65535 (got {port})")
        sa.sin_family = 2
        sa.sin_port = ((port & 0xFF) << 8) | (port >> 8)
        sa.sin_addr.s_addr = ntohl(int(ipaddress.IPv4Address(ip)))
        self.datagrams += 1
        if len(data) == 0 or not self._row(&d[0], d.shape[0], &sa, rx_ns, row):
            self.malformed += 1
            return None
        return [row[i] for i in range(8)]

    def run(self, int64_t[:, ::1] rows not None, int64_t duration_ns):
        """Receive for up to `duration_ns` or until `rows` is full (GIL released).
        Returns this call's V1Result."""
        cdef Py_ssize_t cap = rows.shape[0], nrows = 0
        cdef int64_t t0, end, rx
        cdef int r, i, err = 0
        cdef pollfd pfd
        if rows.shape[1] != 8:
            raise ValueError("rows must have 8 columns (V1_COLUMNS)")
        check_run_ns(duration_ns)
        pfd.fd = self.fd
        pfd.events = POLLIN
        t0 = mono_ns()
        end = t0 + duration_ns
        with nogil:
            while nrows + BATCH <= cap:
                r = wait_readable(&pfd, end, &err)
                if r < 0:
                    break
                if r == 0:
                    continue
                for i in range(BATCH):
                    self.msgs[i].msg_hdr.msg_control = &self.ctrl[i][0]
                    self.msgs[i].msg_hdr.msg_controllen = 64
                    self.msgs[i].msg_hdr.msg_name = &self.names[i]
                    self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                    self.msgs[i].msg_hdr.msg_flags = 0
                r = recvmmsg(self.fd, self.msgs, BATCH, MSG_DONTWAIT, NULL)
                if r <= 0:
                    continue
                for i in range(r):
                    self.datagrams += 1
                    rx = sw_stamp_ns(&self.msgs[i].msg_hdr)
                    if rx < 0:
                        self.no_kernel_ts += 1
                        rx = clock_ns(CLOCK_REALTIME)
                    if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC or not self._row(
                            self.bufs + <size_t>i * 2048, self.msgs[i].msg_len, &self.names[i], rx,
                            &rows[nrows, 0]):
                        self.malformed += 1
                        continue
                    nrows += 1
        if err == EINTR:
            PyErr_CheckSignals()
        return V1Result.make(nrows, err == EINTR)
