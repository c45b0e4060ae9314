# TX follow-ups (the sender's half; FLAG_TXTIME in wire.pxd): the kernel's software TX
# time of each probe comes back on its socket's error queue with a copy of the packet;
# that time minus the send time the probe carried rides in the port's next probe.

cdef enum:
    TX_PEEK = 256           # bytes read of each looped-back copy: link, IP and UDP headers + probe header
    TX_SCAN = TX_PEEK - WIRE_HDR_LEN   # where a probe header may start in that copy
    FU_MAX = 0x7fffffff     # largest follow-up, ns (2.1 s)


ctypedef struct txfu_t:
    uint64_t session
    int nports
    int64_t *fu_seq            # per port: the probe whose kernel TX time is known (-1: none) ...
    int32_t *fu_ns             # ... and that time minus the send time it carried
    int tx_off                 # where the probe header starts in a looped-back copy (-1: not found yet)
    int64_t stamps             # kernel TX timestamps read back
    uint8_t buf[TX_PEEK]
    char ctl[256]


cdef int txfu_init(txfu_t *t, int nports, uint64_t session) except -1:
    cdef int i
    t.session, t.nports, t.tx_off, t.stamps = session, nports, -1, 0
    t.fu_seq = <int64_t *>malloc(nports * sizeof(int64_t))
    t.fu_ns = <int32_t *>calloc(nports, sizeof(int32_t))
    if t.fu_seq == NULL or t.fu_ns == NULL:
        raise MemoryError()
    for i in range(nports):
        t.fu_seq[i] = -1
    return 0


cdef void txfu_free(txfu_t *t) noexcept:
    free(t.fu_seq)
    free(t.fu_ns)
    t.fu_seq, t.fu_ns = NULL, NULL


cdef inline bint txfu_ours_at(txfu_t *t, int off) noexcept nogil:
    return load_be32(t.buf + off + OFF_MAGIC) == WIRE_MAGIC and t.buf[off + OFF_VERSION] == WIRE_VERSION \
        and load_be64(t.buf + off + OFF_SESSION) == t.session


cdef const uint8_t *txfu_probe_in(txfu_t *t, int n) noexcept nogil:
    """This sender's probe header in the first n bytes of a looped-back copy (after the
    link, IP and UDP headers, whatever their length), or NULL."""
    cdef int off, last = min(n - WIRE_HDR_LEN, TX_SCAN)
    if 0 <= t.tx_off <= last and txfu_ours_at(t, t.tx_off):     # the headers rarely change
        return t.buf + t.tx_off
    for off in range(last + 1):
        if txfu_ours_at(t, off):
            t.tx_off = off
            return t.buf + off
    return NULL


cdef void txfu_read(txfu_t *t, int fd) noexcept nogil:
    """Read the kernel TX timestamps queued on fd (at most 4 batches' worth): each data
    probe's TX time minus its stamped send time becomes its port's follow-up (when it fits
    32 bits of ns)."""
    cdef msghdr m
    cdef iovec v
    cdef const uint8_t *p
    cdef int64_t kts, diff
    cdef ssize_t r
    cdef int k, port
    for k in range(4 * BATCH):
        memset(&m, 0, sizeof(m))
        v.iov_base = t.buf
        v.iov_len = TX_PEEK
        m.msg_iov = &v
        m.msg_iovlen = 1
        m.msg_control = t.ctl
        m.msg_controllen = sizeof(t.ctl)
        r = recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT)
        if r < 0:
            return
        kts = sw_stamp_ns(&m)
        p = txfu_probe_in(t, <int>r)
        if kts < 0 or p == NULL or p[OFF_FLAGS] & FLAG_CONTROL:
            continue
        port = load_be16(p + OFF_PORT)
        diff = sat_sub(kts, <int64_t>load_be64(p + OFF_SEND))
        if port < t.nports and -FU_MAX <= diff <= FU_MAX:
            t.fu_seq[port] = <int64_t>load_be64(p + OFF_SEQ)
            t.fu_ns[port] = <int32_t>diff
            t.stamps += 1


cdef inline void txfu_apply(txfu_t *t, uint8_t *p, int port) noexcept nogil:
    """Put the port's follow-up into probe p when p is the next sequence number after it."""
    if t.fu_seq[port] >= 0 and t.fu_seq[port] + 1 == <int64_t>load_be64(p + OFF_SEQ):
        p[OFF_FLAGS] |= FLAG_TXTIME
        store_be32(p + OFF_FOLLOW_UP, <uint32_t>t.fu_ns[port])
