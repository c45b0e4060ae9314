# netprobe._nldiag, included by pyx/nldiag.pyx: the parser of a dump's netlink
# messages (nlmsghdr, inet_diag_msg, rtattrs) into records, its counters and
# results, and parse() over bytes. It never raises: see pyx/nldiag.pyx.

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

