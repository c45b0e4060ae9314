# Capture file readers: classic pcap (either byte order, us or ns timestamps) and pcapng
# (sections in either byte order, per-interface link types and timestamp resolutions).
# next_record() hands out one packet record at a time; nothing is copied.

cdef extern from "<stdio.h>":
    int snprintf(char *buf, size_t n, const char *fmt, ...) nogil

cdef enum:
    REC_PACKET = 4               # next_record(): rec holds a packet (else an ST_* status)
    ERRLEN = 160                 # bytes of the error message buffer

ctypedef struct iface_t:
    uint32_t linktype
    int32_t tsres                # >= 0: 10**-tsres s per unit; < 0: 2**tsres s per unit

ctypedef struct reader_t:
    int fmt                      # FMT_*
    bint swapped                 # the file's byte order is big-endian
    int64_t ts_mult              # pcap: ns per fraction unit (1000 for us, 1 for ns)
    uint32_t linktype            # pcap: the file's link type
    int nifaces                  # pcapng: interfaces of the current section
    iface_t ifaces[MAX_IFACES]

ctypedef struct record_t:
    const uint8_t *data
    uint32_t caplen
    uint32_t wirelen
    uint32_t linktype
    int64_t ts                   # ns since the epoch


cdef inline bint linktype_known(uint32_t lt) noexcept nogil:
    return lt in (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                  LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2)


cdef Py_ssize_t reader_open(reader_t *r, const uint8_t *buf, Py_ssize_t n) except -1:
    """Read the file header; returns the offset of the first record. Raises ValueError
    (one line) if this is not a pcap or pcapng file or its link type cannot be decoded."""
    cdef uint32_t magic, bom, ver
    if n < BLK_MIN_LEN:
        raise ValueError(f"not a capture file: {n} bytes is shorter than any file header")
    magic = load_le32(buf)
    if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_US_SWAPPED, PCAP_MAGIC_NS_SWAPPED):
        if n < PCAP_FILE_HEADER_LEN:
            raise ValueError(f"truncated pcap file header ({n} of 24 bytes)")
        r.fmt = FMT_PCAP
        r.swapped = magic in (PCAP_MAGIC_US_SWAPPED, PCAP_MAGIC_NS_SWAPPED)
        r.ts_mult = 1 if magic in (PCAP_MAGIC_NS, PCAP_MAGIC_NS_SWAPPED) else 1000
        ver = load_file16(buf + OFF_PCAP_VERSION, r.swapped)
        if ver != 2:
            raise ValueError(f"pcap version {ver} is not supported (only 2.x)")
        r.linktype = load_file32(buf + OFF_PCAP_LINKTYPE, r.swapped) & 0x03ffffff
        if not linktype_known(r.linktype):
            raise ValueError(f"pcap link type {r.linktype} is not supported "
                             "(Ethernet, Linux SLL/SLL2, raw IP, loopback)")
        return PCAP_FILE_HEADER_LEN
    if magic == PCAPNG_SHB:
        bom = load_le32(buf + OFF_SHB_BOM)
        if bom not in (PCAPNG_BYTE_ORDER_MAGIC, 0x4D3C2B1A):
            raise ValueError(f"pcapng section header has a bad byte-order magic 0x{bom:08x}")
        r.fmt = FMT_PCAPNG
        r.nifaces = 0
        return 0
    raise ValueError(f"not a pcap or pcapng file (magic 0x{magic:08x})")


cdef inline int next_record(reader_t *r, const uint8_t *buf, Py_ssize_t n, Py_ssize_t *off, record_t *rec,
                            uint64_t *g, char *err) noexcept nogil:
    """The packet record at *off (REC_PACKET, *off moved past it) or why there is none:
    ST_END at the end of the data, ST_PARTIAL when it ends inside a record, ST_ERROR (err
    says why) for a record that cannot be. Malformed pcapng blocks are counted and skipped."""
    if r.fmt == FMT_PCAP:
        return next_pcap(r, buf, n, off, rec, err)
    return next_pcapng(r, buf, n, off, rec, g, err)


cdef inline int next_pcap(reader_t *r, const uint8_t *buf, Py_ssize_t n, Py_ssize_t *off, record_t *rec,
                          char *err) noexcept nogil:
    cdef Py_ssize_t o = off[0]
    cdef const uint8_t *h = buf + o
    cdef uint32_t incl, orig
    if o == n:
        return ST_END
    if n - o < PCAP_RECORD_HEADER_LEN:
        snprintf(err, ERRLEN, "truncated record header at offset %zd (%zd bytes left)", o, n - o)
        return ST_PARTIAL
    incl = load_file32(h + OFF_REC_INCL, r.swapped)
    orig = load_file32(h + OFF_REC_ORIG, r.swapped)
    if incl > MAX_RECORD_LEN:
        snprintf(err, ERRLEN, "corrupt record at offset %zd: captured length %u", o, incl)
        return ST_ERROR
    if <Py_ssize_t>incl > n - o - PCAP_RECORD_HEADER_LEN:
        snprintf(err, ERRLEN, "truncated record at offset %zd: %u bytes captured, %zd in the file",
                 o, incl, n - o - PCAP_RECORD_HEADER_LEN)
        return ST_PARTIAL
    rec.ts = <int64_t>load_file32(h + OFF_REC_SEC, r.swapped) * 1000000000 + \
        <int64_t>load_file32(h + OFF_REC_FRAC, r.swapped) * r.ts_mult
    rec.data = h + PCAP_RECORD_HEADER_LEN
    rec.caplen = incl
    rec.wirelen = orig if orig > incl else incl
    rec.linktype = r.linktype
    off[0] = o + PCAP_RECORD_HEADER_LEN + incl
    return REC_PACKET


cdef int next_pcapng(reader_t *r, const uint8_t *buf, Py_ssize_t n, Py_ssize_t *off, record_t *rec,
                     uint64_t *g, char *err) noexcept nogil:
    cdef Py_ssize_t o = off[0]
    cdef uint32_t btype, blen, bom, iface, caplen, origlen
    cdef const uint8_t *b
    while True:
        if o == n:
            off[0] = o
            return ST_END
        if n - o < BLK_MIN_LEN:
            snprintf(err, ERRLEN, "truncated pcapng block at offset %zd (%zd bytes left)", o, n - o)
            off[0] = o
            return ST_PARTIAL
        b = buf + o
        btype = load_le32(b + OFF_BLK_TYPE)
        if btype == PCAPNG_SHB:
            bom = load_le32(b + OFF_SHB_BOM)
            if bom == PCAPNG_BYTE_ORDER_MAGIC:
                r.swapped = False
            elif bom == 0x4D3C2B1A:
                r.swapped = True
            else:
                snprintf(err, ERRLEN, "corrupt pcapng section header at offset %zd", o)
                off[0] = o
                return ST_ERROR
            r.nifaces = 0
        else:
            btype = load_file32(b + OFF_BLK_TYPE, r.swapped)
        blen = load_file32(b + OFF_BLK_LEN, r.swapped)
        if blen < BLK_MIN_LEN or blen % 4 != 0 or blen > MAX_RECORD_LEN + 64:
            snprintf(err, ERRLEN, "corrupt pcapng block at offset %zd: length %u", o, blen)
            off[0] = o
            return ST_ERROR
        if <Py_ssize_t>blen > n - o:
            snprintf(err, ERRLEN, "truncated pcapng block at offset %zd: length %u, %zd bytes left",
                     o, blen, n - o)
            off[0] = o
            return ST_PARTIAL
        o += blen
        if btype == PCAPNG_IDB:
            if blen < IDB_MIN_LEN or r.nifaces >= MAX_IFACES:
                g[G_MALFORMED] += 1
            else:
                r.ifaces[r.nifaces].linktype = load_file16(b + OFF_IDB_LINKTYPE, r.swapped)
                r.ifaces[r.nifaces].tsres = idb_tsres(b, blen, r.swapped)
                r.nifaces += 1
        elif btype == PCAPNG_EPB or btype == PCAPNG_OPB:
            if blen < EPB_MIN_LEN:
                g[G_MALFORMED] += 1
                continue
            if btype == PCAPNG_EPB:
                iface = load_file32(b + OFF_EPB_IFACE, r.swapped)
            else:
                iface = load_file16(b + OFF_EPB_IFACE, r.swapped)
            caplen = load_file32(b + OFF_EPB_CAPLEN, r.swapped)
            origlen = load_file32(b + OFF_EPB_ORIGLEN, r.swapped)
            if caplen > blen - EPB_MIN_LEN:
                g[G_MALFORMED] += 1
            elif iface >= <uint32_t>r.nifaces:
                g[G_BAD_LINKTYPE] += 1
            else:
                rec.ts = units_to_ns((<uint64_t>load_file32(b + OFF_EPB_TS_HI, r.swapped) << 32)
                                     | load_file32(b + OFF_EPB_TS_LO, r.swapped), r.ifaces[iface].tsres)
                rec.data = b + OFF_EPB_DATA
                rec.caplen = caplen
                rec.wirelen = origlen if origlen > caplen else caplen
                rec.linktype = r.ifaces[iface].linktype
                off[0] = o
                return REC_PACKET
        elif btype == PCAPNG_SPB:
            if blen < SPB_MIN_LEN or r.nifaces == 0:
                g[G_MALFORMED] += 1
                continue
            origlen = load_file32(b + OFF_SPB_ORIGLEN, r.swapped)
            caplen = blen - SPB_MIN_LEN
            rec.ts = 0
            rec.data = b + OFF_SPB_DATA
            rec.caplen = origlen if origlen < caplen else caplen
            rec.wirelen = origlen
            rec.linktype = r.ifaces[0].linktype
            off[0] = o
            return REC_PACKET


cdef inline int32_t idb_tsres(const uint8_t *b, uint32_t blen, bint swapped) noexcept nogil:
    """if_tsresol of an interface description block (default 6: microseconds)."""
    cdef uint32_t o = OFF_IDB_OPTIONS, end = blen - 4, code, olen
    while o + OFF_OPT_VALUE <= end:
        code = load_file16(b + o, swapped)
        olen = load_file16(b + o + OFF_OPT_LEN, swapped)
        if code == 0:
            break
        if o + OFF_OPT_VALUE + olen > end:
            break
        if code == PCAPNG_OPT_IF_TSRESOL and olen >= 1:
            if b[o + OFF_OPT_VALUE] & 0x80:
                return -<int32_t>(b[o + OFF_OPT_VALUE] & 0x7f)
            return b[o + OFF_OPT_VALUE]
        o += OFF_OPT_VALUE + ((olen + 3) & ~3u)
    return 6


cdef inline int64_t pow10(int n) noexcept nogil:
    cdef int64_t r = 1
    while n > 0:
        r *= 10
        n -= 1
    return r


cdef inline int64_t units_to_ns(uint64_t units, int32_t tsres) noexcept nogil:
    cdef double ns
    if tsres >= 0:
        if tsres <= 9:
            return <int64_t>(units * <uint64_t>pow10(9 - tsres))
        if tsres <= 18:
            return <int64_t>(units // <uint64_t>pow10(tsres - 9))
        return 0
    ns = <double>units * 1e9 / <double>(1ULL << (-tsres if -tsres < 63 else 63))
    return <int64_t>ns if ns < 9.2e18 else INT64_MAX      # a double past int64 has no conversion


