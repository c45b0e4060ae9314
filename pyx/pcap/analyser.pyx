# TcpAnalyser: a capture image's records through the reader, decoder, flow table and
# sequence analysis; results for Python.

cdef class Chunk:
    """What one TcpAnalyser.run() call did: `frames` frames written to the arrays and the
    next record at `offset`. `more`: the arrays filled up, call again from offset. Else the
    data ended there, or stopped at a bad record and `error` (one line) says which; the
    frames before it are analysed (a partial result). Bad arguments raise instead."""
    cdef readonly bint more
    cdef readonly Py_ssize_t offset, frames
    cdef readonly str error

    def __repr__(self):
        return f"Chunk(more={self.more}, offset={self.offset}, frames={self.frames}, error={self.error!r})"


cdef class TcpAnalyser:
    """Read a pcap/pcapng image and classify every TCP segment per flow and direction.

    Usage: off = a.open(buf); then c = a.run(buf, off, flags, flowdir) from c.offset
    while c.more; flags (uint16) and flowdir (int32: flow*2+dir, -1 if not an
    analysed TCP frame) receive c.frames frames each call (a Chunk). counters() and
    flows() give the results; the analyser may be fed several files in turn
    (open() each), flows persisting across them.

    reorder_ns: how soon a segment filling a sequence hole must come to count
    as out-of-order rather than as a retransmission (0: the flow's handshake
    RTT seen at the capture point, or 3 ms without a handshake, as Wireshark).
    max_flows bounds memory (about 2.7 KB per flow); packets of flows
    beyond it are counted in flows_dropped.
    """
    cdef flowtab_t ft
    cdef reader_t rd
    cdef int64_t reorder_ns
    cdef uint64_t g[NGLOBAL]

    def __cinit__(self, Py_ssize_t max_flows=262144, int64_t reorder_ns=0):
        if max_flows < 1 or max_flows > (1 << 26):
            raise ValueError(f"max_flows must be 1 .. {1 << 26} (got {max_flows})")
        if reorder_ns < 0:
            raise ValueError("reorder_ns must be >= 0")
        self.reorder_ns = reorder_ns
        ft_init(&self.ft, max_flows)
        memset(self.g, 0, sizeof(self.g))
        self.rd.fmt = FMT_NONE

    def __dealloc__(self):
        ft_free(&self.ft)

    # ---------------------------------------------------------------- files
    def open(self, const uint8_t[::1] buf):
        """Read the file header; returns the offset of the first record.

        Raises ValueError (one line) if this is not a pcap or pcapng file or its
        link type cannot be decoded."""
        return reader_open(&self.rd, &buf[0], buf.shape[0])

    def run(self, const uint8_t[::1] buf, Py_ssize_t offset, uint16_t[::1] flags, int32_t[::1] flowdir,
            bint stream=False):
        """Analyse records from `offset` until the arrays are full or the data ends.

        Returns a Chunk. With stream=True (a live pcap stream read in chunks) data
        ending inside a record is the end of the data: the Chunk's offset is that
        record's start."""
        cdef Py_ssize_t cap = min(flags.shape[0], flowdir.shape[0])
        cdef Py_ssize_t n = buf.shape[0]
        cdef Py_ssize_t nout = 0
        cdef int st = ST_MORE
        cdef char errbuf[ERRLEN]
        cdef record_t rec
        cdef Chunk out = Chunk.__new__(Chunk)
        if self.rd.fmt == FMT_NONE:
            raise ValueError("open() the file first")
        if offset < 0 or offset > n:
            raise ValueError("offset out of range")
        out.more = True
        out.offset = offset
        if cap == 0:
            return out
        errbuf[0] = 0
        with nogil:
            while nout < cap:
                st = next_record(&self.rd, &buf[0], n, &offset, &rec, self.g, errbuf)
                if st != REC_PACKET:
                    break
                self._frame(rec.data, rec.caplen, rec.wirelen, rec.linktype, rec.ts, &flags[nout], &flowdir[nout])
                nout += 1
                st = ST_MORE
        if st == ST_PARTIAL:
            st = ST_END if stream else ST_ERROR
        if st == ST_ERROR:
            out.error = errbuf.decode("ascii", "replace")
        out.more = st == ST_MORE
        out.offset = offset
        out.frames = nout
        return out

    # ---------------------------------------------------------------- frames
    cdef void _frame(self, const uint8_t *p, uint32_t caplen, uint32_t wirelen, uint32_t linktype,
                     int64_t ts, uint16_t *flout, int32_t *fdout) noexcept nogil:
        """Decode one frame down to TCP and analyse it; never fails, only counts."""
        cdef seg_t s
        cdef flow_key_t key
        cdef int32_t fi
        cdef int d
        self.g[G_FRAMES] += 1
        self.g[G_BYTES] += wirelen
        flout[0] = 0
        fdout[0] = -1
        if not decode_tcp(p, caplen, wirelen, linktype, &s, self.g):
            return
        memset(&key, 0, sizeof(key))
        key.family = s.family
        d = make_key(&key, s.src, s.dst, s.family == 4, s.sport, s.dport)
        fi = ft_lookup(&self.ft, &key, d, ts, s.tflags, s.seq)
        if fi < 0:
            self.g[G_FLOWS_DROPPED] += 1
            return
        d = 1 if self.ft.ftab[fi].a_is_lo != d else 0
        fdout[0] = fi * 2 + d
        flout[0] = <uint16_t>analyse_segment(&self.ft.ftab[fi], d, ts, &s, self.reorder_ns)

    # ---------------------------------------------------------------- results
    def counters(self):
        """File-level counters as a dict (frames, tcp, truncated, malformed, ...)."""
        out = {name: self.g[i] for i, name in enumerate(GLOBAL_COUNTERS)}
        out["flows"] = self.ft.nflows
        return out

    def flows(self):
        """One tuple per flow: (family, a_addr, a_port, b_addr, b_port, first_ns,
        last_ns, handshake_rtt_ns, counters_a_to_b, counters_b_to_a), with a the
        sender of the flow's first captured packet and counters in DIR_COUNTERS order."""
        cdef Py_ssize_t i
        cdef int j, alen
        cdef flow_t *f
        out = []
        for i in range(self.ft.nflows):
            f = &self.ft.ftab[i]
            alen = 4 if f.key.family == 4 else 16
            lo = (<char *>f.key.addr_lo)[:alen]
            hi = (<char *>f.key.addr_hi)[:alen]
            ends = ((lo, f.key.port_lo), (hi, f.key.port_hi)) if f.a_is_lo else \
                ((hi, f.key.port_hi), (lo, f.key.port_lo))
            c0 = []
            c1 = []
            for j in range(NCOUNTERS):
                c0.append(f.d[0].c[j])
                c1.append(f.d[1].c[j])
            out.append((f.key.family, ends[0][0], ends[0][1], ends[1][0], ends[1][1],
                        f.first_ns, f.last_ns, f.first_rtt, tuple(c0), tuple(c1)))
        return out
