# netprobe._pcapread: pcap/pcapng reader and TCP retransmission analyser.
#
# One C loop reads capture records (pcap in both byte orders with us or ns
# timestamps, pcapng with per-interface link types and resolutions), decodes
# the link layer (Ethernet with VLAN/QinQ tags, Linux SLL and SLL2, raw IP,
# BSD loopback), IPv4/IPv6 (with extension headers) and TCP, keeps a TCP flow
# table in C memory, and classifies every segment. No Python object is made
# per packet: each frame's flags and flow go to Python-owned preallocated
# arrays, counters stay in C structs until the caller asks for them.
#
# Two classifications are kept side by side per frame:
# - Wireshark's tcp.analysis.* (packet-tcp.c tcp_analyze_sequence_number,
#   rule for rule) so results can be checked frame by frame against tshark;
# - netprobe's own verdict, which fixes the mistakes listed in
#   reference/anchors.md 6.2: a segment whose bytes were captured before is a
#   retransmission whatever its timing (Wireshark calls SACK-driven resends
#   "out-of-order" when they come soon after the highest segment); a segment
#   that fills a sequence hole (its original was lost before the capture
#   point) is out-of-order only if it comes within the reorder window of the
#   hole's opening, otherwise a retransmission of a segment lost upstream;
#   the send order told by IPv4 IDs or TSvals, when there, decides before
#   either rule (TcpAnalyser._classify).
# Receivers' D-SACK blocks (RFC 2883) count spurious retransmissions.
#
# Bad input never raises per packet: short or inconsistent headers are
# counted (truncated, malformed) and skipped; a record that runs past the end
# of the data or has an impossible length ends the run with an error string
# and everything before it analysed (a partial result).

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset
from cpython.exc cimport PyErr_SetFromErrno

from linux cimport close, poll, pollfd, POLLIN
from packet cimport (AF_PACKET, SOCK_DGRAM, SOCK_CLOEXEC, SOL_SOCKET, SOL_PACKET, SO_ATTACH_FILTER, sockaddr,
                     socket, bind, setsockopt, getsockopt, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED, mmap,
                     munmap, htons, ETH_P_ALL, sock_filter, sock_fprog, PACKET_VERSION, PACKET_RX_RING,
                     PACKET_STATISTICS, PACKET_IGNORE_OUTGOING, TPACKET_V3, TP_STATUS_USER, PACKET_OUTGOING,
                     sockaddr_ll, tpacket_req3, tpacket_stats_v3, tpacket_block_desc, tpacket3_hdr, TPACKET_ALIGN,
                     np_block_status, np_block_release)

from pcap cimport (rd16be, rd32be, rd16le, rd32le, rd16, rd32, seq_lt, seq_le, seq_gt,
                   PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_US_SWAPPED, PCAP_MAGIC_NS_SWAPPED,
                   PCAP_FILE_HEADER_LEN, PCAP_RECORD_HEADER_LEN, PCAPNG_SHB, PCAPNG_IDB,
                   PCAPNG_OPB, PCAPNG_SPB, PCAPNG_EPB, PCAPNG_BYTE_ORDER_MAGIC,
                   PCAPNG_OPT_IF_TSRESOL, LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW,
                   LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6,
                   LINKTYPE_LINUX_SLL2, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN,
                   ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD, MAX_RECORD_LEN)

# ---- per-frame flag bits (uint16). Bits 0-10: Wireshark's tcp.analysis.*;
# bits 11-15: netprobe's own classification.
cdef enum:
    F_RETRANS = 0x0001        # tcp.analysis.retransmission (generic)
    F_FAST_RETRANS = 0x0002   # tcp.analysis.fast_retransmission
    F_SPURIOUS = 0x0004       # tcp.analysis.spurious_retransmission
    F_OOO = 0x0008            # tcp.analysis.out_of_order
    F_DUPACK = 0x0010         # tcp.analysis.duplicate_ack
    F_ZERO_WINDOW = 0x0020    # tcp.analysis.zero_window
    F_LOST = 0x0040           # tcp.analysis.lost_segment (previous segment not captured)
    F_ACKED_UNSEEN = 0x0080   # tcp.analysis.ack_lost_segment
    F_KEEPALIVE = 0x0100      # tcp.analysis.keep_alive
    F_WINDOW_UPDATE = 0x0200  # tcp.analysis.window_update
    F_ZWP = 0x0400            # tcp.analysis.zero_window_probe
    F_DSACK = 0x0800          # this ACK carries a D-SACK block (receiver got data twice)
    F_NP_RETRANS = 0x1000     # netprobe: retransmission (bytes seen before, or a late hole fill)
    F_NP_LOST_RETRANS = 0x2000  # netprobe: retransmission of a segment lost before the capture point
    F_NP_OOO = 0x4000         # netprobe: out-of-order (filled a hole within the reorder window)
    # internal, never stored in the frame flags
    F_KEEPALIVE_ACK = 0x10000
    F_ZWP_ACK = 0x20000

# TCP header flags
cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

# per-direction counters, in this order (DIR_COUNTERS below names them)
cdef enum:
    C_PKTS, C_DATA_PKTS, C_DATA_BYTES, C_RETRANS, C_RETRANS_BYTES, C_LOST_RETRANS,
    C_OOO, C_FAST, C_SPURIOUS, C_DSACK, C_DUPACK, C_ZERO_WINDOW, C_LOST, C_ACKED_UNSEEN,
    C_KEEPALIVE, C_WS_RETRANS, C_WS_OOO, C_SEEN_RETRANS, C_HOLES_DROPPED, C_DATA_SEGS, C_RETRANS_SEGS,
    NCOUNTERS

DIR_COUNTERS = ("pkts", "data_pkts", "data_bytes", "retrans", "retrans_bytes", "lost_retrans",
                "ooo", "fast_retrans", "spurious", "dsack", "dupack", "zero_window",
                "lost_segment", "acked_unseen", "keepalive", "ws_retrans", "ws_ooo",
                "seen_retrans", "holes_dropped", "data_segs", "retrans_segs")

FLAG_BITS = {"retransmission": F_RETRANS, "fast_retransmission": F_FAST_RETRANS,
             "spurious_retransmission": F_SPURIOUS, "out_of_order": F_OOO,
             "duplicate_ack": F_DUPACK, "zero_window": F_ZERO_WINDOW, "lost_segment": F_LOST,
             "ack_lost_segment": F_ACKED_UNSEEN, "keep_alive": F_KEEPALIVE,
             "window_update": F_WINDOW_UPDATE, "zero_window_probe": F_ZWP, "dsack": F_DSACK,
             "np_retrans": F_NP_RETRANS, "np_lost_retrans": F_NP_LOST_RETRANS, "np_ooo": F_NP_OOO}

# file-level counters
cdef enum:
    G_FRAMES, G_TCP, G_IPV4, G_IPV6, G_NON_IP, G_NON_TCP, G_FRAGMENTS, G_TRUNCATED, G_MALFORMED,
    G_BAD_LINKTYPE, G_FLOWS_DROPPED, G_BYTES, NGLOBAL

GLOBAL_COUNTERS = ("frames", "tcp", "ipv4", "ipv6", "non_ip", "non_tcp", "fragments",
                   "truncated", "malformed", "bad_linktype", "flows_dropped", "bytes")

cdef enum:
    NHOLES = 16                  # sequence holes tracked per direction
    NSENT = 64                   # runs of send-order marks (end, IPv4 ID) kept per direction
    RUN_MAX = 4096               # marks per run
    MAX_ID_STEP = 1024           # IPv4 IDs this far apart, in order, count as one sender's counter
    ID_TRUST = 4                 # ... once this many (and 8 times the others) did: random IDs
                                 # pass 4 in a row once in 64**4
    MAX_IFACES = 64              # pcapng interfaces per section
    FAST_RETRANS_NS = 20000000   # Wireshark: fast retransmission within 20 ms of the last dup ACK
    DEFAULT_OOO_NS = 3000000     # Wireshark: out-of-order window when the handshake RTT is unknown
    FMT_NONE = 0
    FMT_PCAP = 1
    FMT_PCAPNG = 2
    ST_MORE = 0                  # run(): output arrays full, call again from the returned offset
    ST_END = 1                   # end of data
    ST_ERROR = 2                 # stopped at a bad record; self.error says why
    ST_PARTIAL = 3               # internal: the data ends inside a record

ctypedef struct hole_t:
    uint32_t start
    uint32_t end
    int64_t t_ns                 # capture time the hole opened

ctypedef struct sent_t:
    # a run of send-order marks: the top one is (end, id), each one below it ends `step`
    # lower and has the previous ID (in-order data from one counter makes runs of thousands)
    uint32_t end                 # a captured segment ended here (exclusive)
    uint32_t step
    uint16_t id                  # ... and carried this IPv4 ID
    uint16_t n                   # marks in the run

ctypedef struct dir_t:
    # Wireshark's tcp_analyze_seq_flow_info_t and tcp_flow_t fields
    uint32_t nextseq
    uint32_t lastack
    uint32_t window              # 0xffffffff until the first segment, as in Wireshark
    uint32_t maxseqtobeacked
    int32_t dupacknum            # -1: an ACKed-unseen ACK already flagged (Wireshark's marker)
    uint32_t lastsegflags
    int64_t nextseqtime
    int64_t lastacktime
    # netprobe's own state
    uint32_t isn                 # sequence number of this direction's SYN
    uint32_t mss                 # MSS option of this direction's SYN (0: not captured)
    uint32_t seen_hi             # end of the highest sequence number captured
    uint8_t syn_seen
    uint8_t seen_valid
    uint8_t last_has_id          # IPv4 ID and TSval of the segment that last advanced seen_hi
    uint8_t last_has_ts
    uint8_t last_syn             # ... was a SYN: its ID need not be from the data's counter
    uint16_t last_id
    uint32_t last_ts
    uint32_t id_good             # in-order segments whose ID followed the previous one's
    uint32_t id_bad              # ... and whose ID did not (random IDs, IPv6: no ID)
    uint8_t nholes
    hole_t holes[NHOLES]         # gaps below seen_hi, oldest first
    uint8_t nsent
    sent_t sent[NSENT]           # marks by end ascending, IDs ascending in send order: for
                                 # any sequence number s, the first mark with end > s holds
                                 # the earliest-sent ID of the captured segments with bytes >= s
    uint64_t c[NCOUNTERS]

ctypedef struct flow_key_t:
    uint8_t addr_lo[16]
    uint8_t addr_hi[16]
    uint16_t port_lo
    uint16_t port_hi
    uint8_t family
    uint8_t pad[3]

ctypedef struct flow_t:
    flow_key_t key
    uint8_t a_is_lo              # the first packet's sender is the key's lo endpoint
    int64_t first_ns
    int64_t last_ns
    int64_t mru_syn              # time of the latest SYN (Wireshark ts_mru_syn), 0 = none
    int64_t first_rtt            # SYN -> first ACK without SYN (Wireshark ts_first_rtt), 0 = unknown
    dir_t d[2]

ctypedef struct iface_t:
    uint32_t linktype
    int32_t tsres                # >= 0: 10**-tsres s per unit; < 0: 2**tsres s per unit


cdef inline uint64_t key_hash(const flow_key_t *k) noexcept nogil:
    cdef uint64_t w[5]
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL
    cdef int i
    memcpy(w, k, sizeof(w))                 # flow_key_t is exactly 40 bytes
    for i in range(5):
        h = (h ^ w[i]) * 0xff51afd7ed558ccdULL
        h ^= h >> 32
    return h


cdef inline int64_t ns_diff(int64_t a, int64_t b) noexcept nogil:
    """a - b wrapping instead of overflowing: capture times come from the file."""
    return <int64_t>(<uint64_t>a - <uint64_t>b)


cdef inline int64_t pow10(int n) noexcept nogil:
    cdef int64_t r = 1
    while n > 0:
        r *= 10
        n -= 1
    return r


cdef class TcpAnalyser:
    """Read a pcap/pcapng image and classify every TCP segment per flow and direction.

    Usage: off = a.open(buf); then st, off, n = a.run(buf, off, flags, flowdir)
    until st != 0 (ST_MORE); flags (uint16) and flowdir (int32: flow*2+dir,
    -1 if not an analysed TCP frame) receive n frames each call. counters(),
    flows() and error give the results; the analyser may be fed several files
    in turn (open() each), flows persisting across them.

    reorder_ns: how soon a segment filling a sequence hole must come to count
    as out-of-order rather than as a retransmission (0: the flow's handshake
    RTT seen at the capture point, or 3 ms without a handshake, as Wireshark).
    max_flows bounds memory (about 2.7 KB per flow); packets of flows
    beyond it are counted in flows_dropped.
    """
    cdef flow_t *ftab
    cdef int32_t *slots
    cdef Py_ssize_t nflows, flows_cap, nslots, max_flows
    cdef int64_t reorder_ns
    cdef uint64_t g[NGLOBAL]
    # file state
    cdef int fmt
    cdef bint swapped
    cdef int64_t ts_mult          # pcap: ns per fraction unit (1000 for us, 1 for ns)
    cdef uint32_t linktype
    cdef iface_t ifaces[MAX_IFACES]
    cdef int nifaces
    cdef int64_t frame_no
    cdef public str error

    def __cinit__(self, Py_ssize_t max_flows=262144, int64_t reorder_ns=0):
        if max_flows < 1 or max_flows > (1 << 26):
            raise ValueError(f"max_flows must be 1 .. {1 << 26} (got {max_flows})")
        if reorder_ns < 0:
            raise ValueError("reorder_ns must be >= 0")
        self.max_flows = max_flows
        self.reorder_ns = reorder_ns
        self.nslots = 1024
        self.slots = <int32_t *>malloc(self.nslots * sizeof(int32_t))
        self.flows_cap = 256
        self.ftab = <flow_t *>malloc(self.flows_cap * sizeof(flow_t))
        if self.slots == NULL or self.ftab == NULL:
            raise MemoryError()
        memset(self.slots, 0xff, self.nslots * sizeof(int32_t))
        memset(self.g, 0, sizeof(self.g))
        self.nflows = 0
        self.fmt = FMT_NONE
        self.frame_no = 0
        self.error = None

    def __dealloc__(self):
        free(self.slots)
        free(self.ftab)

    # ---------------------------------------------------------------- files
    def open(self, const uint8_t[::1] buf):
        """Read the file header; returns the offset of the first record.

        Raises ValueError (one line) if this is not a pcap or pcapng file or its
        link type cannot be decoded."""
        cdef Py_ssize_t n = buf.shape[0]
        cdef uint32_t magic, bom, ver
        self.error = None
        if n < 12:
            raise ValueError(f"not a capture file: {n} bytes is shorter than any file header")
        magic = rd32le(&buf[0])
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_US_SWAPPED, PCAP_MAGIC_NS_SWAPPED):
            if n < PCAP_FILE_HEADER_LEN:
                raise ValueError(f"truncated pcap file header ({n} of 24 bytes)")
            self.fmt = FMT_PCAP
            self.swapped = magic in (PCAP_MAGIC_US_SWAPPED, PCAP_MAGIC_NS_SWAPPED)
            self.ts_mult = 1 if magic in (PCAP_MAGIC_NS, PCAP_MAGIC_NS_SWAPPED) else 1000
            ver = rd16(&buf[4], self.swapped)
            if ver != 2:
                raise ValueError(f"pcap version {ver} is not supported (only 2.x)")
            self.linktype = rd32(&buf[20], self.swapped) & 0x03ffffff
            if not linktype_known(self.linktype):
                raise ValueError(f"pcap link type {self.linktype} is not supported "
                                 "(Ethernet, Linux SLL/SLL2, raw IP, loopback)")
            return PCAP_FILE_HEADER_LEN
        if magic == PCAPNG_SHB:
            bom = rd32le(&buf[8])
            if bom not in (PCAPNG_BYTE_ORDER_MAGIC, 0x4D3C2B1A):
                raise ValueError(f"pcapng section header has a bad byte-order magic 0x{bom:08x}")
            self.fmt = FMT_PCAPNG
            self.nifaces = 0
            return 0
        raise ValueError(f"not a pcap or pcapng file (magic 0x{magic:08x})")

    def run(self, const uint8_t[::1] buf, Py_ssize_t offset, uint16_t[::1] flags, int32_t[::1] flowdir,
            bint stream=False):
        """Analyse records from `offset` until the arrays are full or the data ends.

        Returns (status, next_offset, frames_written): status 0 = arrays full
        (call again from next_offset), 1 = end of data, 2 = stopped at a bad
        record (self.error names it; the frames before it are analysed).
        With stream=True (a live pcap stream read in chunks) data ending inside
        a record is the end of the data: next_offset is that record's start."""
        cdef Py_ssize_t cap = min(flags.shape[0], flowdir.shape[0])
        cdef Py_ssize_t n = buf.shape[0]
        cdef Py_ssize_t nout = 0
        cdef int st
        cdef char errbuf[160]
        if self.fmt == FMT_NONE:
            raise ValueError("open() the file first")
        if offset < 0 or offset > n:
            raise ValueError("offset out of range")
        if cap == 0:
            return ST_MORE, offset, 0
        errbuf[0] = 0
        with nogil:
            if self.fmt == FMT_PCAP:
                st = self._run_pcap(&buf[0], n, &offset, &flags[0], &flowdir[0], cap, &nout, errbuf)
            else:
                st = self._run_pcapng(&buf[0], n, &offset, &flags[0], &flowdir[0], cap, &nout, errbuf)
        if st == ST_PARTIAL:
            st = ST_END if stream else ST_ERROR
        if st == ST_ERROR:
            self.error = errbuf.decode("ascii", "replace")
        return st, offset, nout

    cdef int _run_pcap(self, const uint8_t *buf, Py_ssize_t n, Py_ssize_t *off, uint16_t *fl,
                       int32_t *fd, Py_ssize_t cap, Py_ssize_t *nout, char *err) noexcept nogil:
        cdef Py_ssize_t o = off[0]
        cdef uint32_t incl, orig
        cdef int64_t ts
        while nout[0] < cap:
            if o == n:
                off[0] = o
                return ST_END
            if n - o < PCAP_RECORD_HEADER_LEN:
                snprintf(err, 160, "truncated record header at offset %zd (%zd bytes left)", o, n - o)
                off[0] = o
                return ST_PARTIAL
            incl = rd32(buf + o + 8, self.swapped)
            orig = rd32(buf + o + 12, self.swapped)
            if incl > MAX_RECORD_LEN:
                snprintf(err, 160, "corrupt record at offset %zd: captured length %u", o, incl)
                off[0] = o
                return ST_ERROR
            if <Py_ssize_t>incl > n - o - PCAP_RECORD_HEADER_LEN:
                snprintf(err, 160, "truncated record at offset %zd: %u bytes captured, %zd in the file",
                         o, incl, n - o - PCAP_RECORD_HEADER_LEN)
                off[0] = o
                return ST_PARTIAL
            ts = <int64_t>rd32(buf + o, self.swapped) * 1000000000 + \
                <int64_t>rd32(buf + o + 4, self.swapped) * self.ts_mult
            self._frame(buf + o + PCAP_RECORD_HEADER_LEN, incl, orig if orig > incl else incl,
                        self.linktype, ts, fl + nout[0], fd + nout[0])
            nout[0] += 1
            o += PCAP_RECORD_HEADER_LEN + incl
        off[0] = o
        return ST_MORE

    cdef int _run_pcapng(self, const uint8_t *buf, Py_ssize_t n, Py_ssize_t *off, uint16_t *fl,
                         int32_t *fd, Py_ssize_t cap, Py_ssize_t *nout, char *err) noexcept nogil:
        cdef Py_ssize_t o = off[0]
        cdef uint32_t btype, blen, bom, iface, caplen, origlen, lt
        cdef uint64_t units
        cdef int64_t ts
        cdef const uint8_t *b
        while nout[0] < cap:
            if o == n:
                off[0] = o
                return ST_END
            if n - o < 12:
                snprintf(err, 160, "truncated pcapng block at offset %zd (%zd bytes left)", o, n - o)
                off[0] = o
                return ST_PARTIAL
            b = buf + o
            btype = rd32le(b)
            if btype == PCAPNG_SHB:
                bom = rd32le(b + 8)
                if bom == PCAPNG_BYTE_ORDER_MAGIC:
                    self.swapped = False
                elif bom == 0x4D3C2B1A:
                    self.swapped = True
                else:
                    snprintf(err, 160, "corrupt pcapng section header at offset %zd", o)
                    off[0] = o
                    return ST_ERROR
                self.nifaces = 0
            else:
                btype = rd32(b, self.swapped)
            blen = rd32(b + 4, self.swapped)
            if blen < 12 or blen % 4 != 0 or blen > MAX_RECORD_LEN + 64:
                snprintf(err, 160, "corrupt pcapng block at offset %zd: length %u", o, blen)
                off[0] = o
                return ST_ERROR
            if <Py_ssize_t>blen > n - o:
                snprintf(err, 160, "truncated pcapng block at offset %zd: length %u, %zd bytes left",
                         o, blen, n - o)
                off[0] = o
                return ST_PARTIAL
            if btype == PCAPNG_IDB:
                if blen < 20:
                    self.g[G_MALFORMED] += 1
                elif self.nifaces < MAX_IFACES:
                    self.ifaces[self.nifaces].linktype = rd16(b + 8, self.swapped)
                    self.ifaces[self.nifaces].tsres = idb_tsres(b, blen, self.swapped)
                    self.nifaces += 1
                else:
                    self.g[G_MALFORMED] += 1
            elif btype == PCAPNG_EPB or btype == PCAPNG_OPB:
                if blen < 32:
                    self.g[G_MALFORMED] += 1
                else:
                    if btype == PCAPNG_EPB:
                        iface = rd32(b + 8, self.swapped)
                    else:
                        iface = rd16(b + 8, self.swapped)
                    units = (<uint64_t>rd32(b + 12, self.swapped) << 32) | rd32(b + 16, self.swapped)
                    caplen = rd32(b + 20, self.swapped)
                    origlen = rd32(b + 24, self.swapped)
                    if caplen > blen - 32:
                        self.g[G_MALFORMED] += 1
                    elif iface >= <uint32_t>self.nifaces:
                        self.g[G_BAD_LINKTYPE] += 1
                    else:
                        ts = units_to_ns(units, self.ifaces[iface].tsres)
                        self._frame(b + 28, caplen, origlen if origlen > caplen else caplen,
                                    self.ifaces[iface].linktype, ts, fl + nout[0], fd + nout[0])
                        nout[0] += 1
            elif btype == PCAPNG_SPB:
                if blen < 16 or self.nifaces == 0:
                    self.g[G_MALFORMED] += 1
                else:
                    origlen = rd32(b + 8, self.swapped)
                    caplen = blen - 16
                    if origlen < caplen:
                        caplen = origlen
                    self._frame(b + 12, caplen, origlen, self.ifaces[0].linktype, 0,
                                fl + nout[0], fd + nout[0])
                    nout[0] += 1
            o += blen
        off[0] = o
        return ST_MORE

    # ---------------------------------------------------------------- frames
    cdef void _frame(self, const uint8_t *p, uint32_t caplen, uint32_t wirelen, uint32_t linktype,
                     int64_t ts, uint16_t *flout, int32_t *fdout) noexcept nogil:
        """Decode one frame down to TCP and analyse it; never fails, only counts."""
        cdef uint32_t off = 0, et = 0, af, ihl, totlen, l4, l4len, hlen, doff, seglen
        cdef uint32_t seq, ack, window, frag
        cdef int32_t ipid = -1
        cdef uint8_t proto, nh, tflags, family
        cdef int vlans = 0
        cdef const uint8_t *src
        cdef const uint8_t *dst
        cdef flow_key_t key
        cdef int32_t fi
        cdef int d
        self.g[G_FRAMES] += 1
        self.g[G_BYTES] += wirelen
        self.frame_no += 1
        flout[0] = 0
        fdout[0] = -1
        # link layer -> ethertype (or IP version straight away)
        if linktype == LINKTYPE_ETHERNET:
            if caplen < 14:
                self.g[G_TRUNCATED] += 1
                return
            et = rd16be(p + 12)
            off = 14
            while (et == ETHERTYPE_VLAN or et == ETHERTYPE_QINQ or et == ETHERTYPE_QINQ_OLD) and vlans < 4:
                if caplen < off + 4:
                    self.g[G_TRUNCATED] += 1
                    return
                et = rd16be(p + off + 2)
                off += 4
                vlans += 1
        elif linktype == LINKTYPE_LINUX_SLL:
            if caplen < 16:
                self.g[G_TRUNCATED] += 1
                return
            et = rd16be(p + 14)
            off = 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            if caplen < 20:
                self.g[G_TRUNCATED] += 1
                return
            et = rd16be(p)
            off = 20
        elif linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
            if caplen < 1:
                self.g[G_TRUNCATED] += 1
                return
            et = ETHERTYPE_IPV4 if (p[0] >> 4) == 4 else (ETHERTYPE_IPV6 if (p[0] >> 4) == 6 else 0)
        elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
            if caplen < 4:
                self.g[G_TRUNCATED] += 1
                return
            af = rd32be(p) if linktype == LINKTYPE_LOOP else rd32le(p)
            if af > 0xffff:
                af = rd32be(p)
            et = ETHERTYPE_IPV4 if af == 2 else (ETHERTYPE_IPV6 if af in (10, 24, 28, 30) else 0)
            off = 4
        else:
            self.g[G_BAD_LINKTYPE] += 1
            return
        # network layer
        if et == ETHERTYPE_IPV4:
            if caplen < off + 20:
                self.g[G_TRUNCATED] += 1
                return
            if (p[off] >> 4) != 4:
                self.g[G_MALFORMED] += 1
                return
            self.g[G_IPV4] += 1
            ihl = (p[off] & 0x0f) * 4
            totlen = rd16be(p + off + 2)
            if totlen == 0:                  # TSO/BIG TCP: the length is the frame's
                totlen = wirelen - off
            if ihl < 20 or totlen < ihl:
                self.g[G_MALFORMED] += 1
                return
            frag = rd16be(p + off + 6)
            if frag & 0x3fff:                # MF set or offset != 0
                self.g[G_FRAGMENTS] += 1
                return
            proto = p[off + 9]
            if proto != 6:
                self.g[G_NON_TCP] += 1
                return
            if wirelen - off < totlen:       # the IP dissector clips to the frame
                totlen = wirelen - off
                if totlen < ihl:
                    self.g[G_MALFORMED] += 1
                    return
            family = 4
            ipid = rd16be(p + off + 4)
            src = p + off + 12
            dst = p + off + 16
            l4 = off + ihl
            l4len = totlen - ihl
        elif et == ETHERTYPE_IPV6:
            if caplen < off + 40:
                self.g[G_TRUNCATED] += 1
                return
            if (p[off] >> 4) != 6:
                self.g[G_MALFORMED] += 1
                return
            self.g[G_IPV6] += 1
            l4len = rd16be(p + off + 4)
            if l4len == 0:                   # jumbogram or BIG TCP
                l4len = wirelen - off - 40
            elif wirelen - off - 40 < l4len:
                l4len = wirelen - off - 40
            nh = p[off + 6]
            family = 6
            src = p + off + 8
            dst = p + off + 24
            l4 = off + 40
            while nh == 0 or nh == 43 or nh == 60:
                if caplen < l4 + 2:
                    self.g[G_TRUNCATED] += 1
                    return
                hlen = (<uint32_t>p[l4 + 1] + 1) * 8
                if hlen > l4len:
                    self.g[G_MALFORMED] += 1
                    return
                nh = p[l4]
                l4 += hlen
                l4len -= hlen
            if nh == 44:
                self.g[G_FRAGMENTS] += 1
                return
            if nh != 6:
                self.g[G_NON_TCP] += 1
                return
        else:
            self.g[G_NON_IP] += 1
            return
        # TCP
        if caplen < l4 + 20:
            self.g[G_TRUNCATED] += 1
            return
        doff = (p[l4 + 12] >> 4) * 4
        if doff < 20 or l4len < doff:
            self.g[G_MALFORMED] += 1
            return
        self.g[G_TCP] += 1
        seglen = l4len - doff
        seq = rd32be(p + l4 + 4)
        ack = rd32be(p + l4 + 8)
        tflags = p[l4 + 13]
        window = rd16be(p + l4 + 14)
        # flow
        memset(&key, 0, sizeof(key))
        key.family = family
        d = make_key(&key, src, dst, 4 if family == 4 else 16, rd16be(p + l4), rd16be(p + l4 + 2))
        fi = self._lookup(&key, d, ts, tflags, seq)
        if fi < 0:
            self.g[G_FLOWS_DROPPED] += 1
            return
        if self.ftab[fi].a_is_lo != d:
            d = 1
        else:
            d = 0
        fdout[0] = fi * 2 + d
        flout[0] = <uint16_t>self._analyse(&self.ftab[fi], d, ts, seq, ack, seglen, tflags, window, ipid, doff,
                                           p + l4 + 20, caplen - l4 - 20 if caplen - l4 - 20 < doff - 20
                                           else doff - 20)

    cdef int32_t _lookup(self, flow_key_t *key, int lo_sends, int64_t ts, uint8_t tflags,
                         uint32_t seq) noexcept nogil:
        """Index of the flow for key (created if new); -1 when the table is full.

        A SYN without ACK whose sequence number differs from the direction's
        earlier SYN starts a new flow (port reuse), as Wireshark does."""
        cdef uint64_t h = key_hash(key)
        cdef Py_ssize_t mask = self.nslots - 1
        cdef Py_ssize_t i = <Py_ssize_t>(h & mask)
        cdef int32_t fi
        cdef flow_t *f
        cdef int d
        while True:
            fi = self.slots[i]
            if fi < 0:
                break
            if memcmp(&self.ftab[fi].key, key, sizeof(flow_key_t)) == 0:
                f = &self.ftab[fi]
                d = 0 if f.a_is_lo == lo_sends else 1
                if (tflags & (TH_SYN | TH_ACK)) == TH_SYN and f.d[d].syn_seen and f.d[d].isn != seq:
                    fi = self._new_flow(key, lo_sends, ts)
                    if fi >= 0:
                        self.slots[i] = fi
                    return fi
                f.last_ns = ts
                return fi
            i = (i + 1) & mask
        fi = self._new_flow(key, lo_sends, ts)
        if fi < 0:
            return -1
        if (self.nflows + 1) * 2 > self.nslots:
            if self._grow_slots() < 0:
                return fi                 # the slot table stays usable: it is at most half full
            # re-find the empty slot in the new table
            mask = self.nslots - 1
            i = <Py_ssize_t>(h & mask)
            while self.slots[i] >= 0:
                i = (i + 1) & mask
        self.slots[i] = fi
        return fi

    cdef int32_t _new_flow(self, flow_key_t *key, int lo_sends, int64_t ts) noexcept nogil:
        cdef flow_t *nf
        cdef Py_ssize_t ncap
        cdef flow_t *f
        if self.nflows >= self.max_flows:
            return -1
        if self.nflows == self.flows_cap:
            ncap = min(self.flows_cap * 2, self.max_flows)
            nf = <flow_t *>realloc(self.ftab, ncap * sizeof(flow_t))
            if nf == NULL:
                return -1
            self.ftab = nf
            self.flows_cap = ncap
        f = &self.ftab[self.nflows]
        memset(f, 0, sizeof(flow_t))
        memcpy(&f.key, key, sizeof(flow_key_t))
        f.a_is_lo = lo_sends
        f.first_ns = ts
        f.last_ns = ts
        f.d[0].window = 0xffffffff
        f.d[1].window = 0xffffffff
        self.nflows += 1
        return <int32_t>(self.nflows - 1)

    cdef int _grow_slots(self) noexcept nogil:
        cdef Py_ssize_t nn = self.nslots * 2, i, j
        cdef int32_t *ns = <int32_t *>malloc(nn * sizeof(int32_t))
        if ns == NULL:
            return -1
        memset(ns, 0xff, nn * sizeof(int32_t))
        for i in range(self.nslots):
            if self.slots[i] >= 0:
                j = <Py_ssize_t>(key_hash(&self.ftab[self.slots[i]].key) & (nn - 1))
                while ns[j] >= 0:
                    j = (j + 1) & (nn - 1)
                ns[j] = self.slots[i]
        free(self.slots)
        self.slots = ns
        self.nslots = nn
        return 0

    # ---------------------------------------------------------------- analysis
    cdef uint32_t _analyse(self, flow_t *f, int d, int64_t ts, uint32_t seq, uint32_t ack,
                           uint32_t seglen, uint8_t tflags, uint32_t window, int32_t ipid, uint32_t doff,
                           const uint8_t *opt, uint32_t optlen) noexcept nogil:
        cdef dir_t *fwd = &f.d[d]
        cdef dir_t *rev = &f.d[1 - d]
        cdef uint32_t fl = 0, nextseq, span, smss, mss = 0
        cdef uint64_t segs = 1
        cdef uint64_t t, ooo_thres
        cdef bint seq_not_advanced
        cdef bint sfr = (tflags & (TH_SYN | TH_FIN | TH_RST)) != 0
        cdef int64_t tsval = -1
        cdef bint dsack = scan_options(opt, optlen, ack, &tsval, &mss)
        fwd.c[C_PKTS] += 1
        if tflags & TH_SYN:
            fwd.mss = mss
        if (tflags & (TH_SYN | TH_ACK)) == TH_SYN:
            f.mru_syn = ts
            fwd.syn_seen = 1
            fwd.isn = seq
        elif tflags & TH_SYN:
            fwd.syn_seen = 1
            fwd.isn = seq
        if (tflags & (TH_SYN | TH_ACK)) == TH_ACK and f.mru_syn != 0 and f.first_rtt == 0:
            f.first_rtt = ns_diff(ts, f.mru_syn)
        # ---- Wireshark's tcp_analyze_sequence_number, in its order
        if seglen == 1 and seq == fwd.nextseq and rev.window == 0:
            fl |= F_ZWP
        else:
            if window == 0 and not sfr:
                fl |= F_ZERO_WINDOW
            if fwd.nextseq and seq_gt(seq, fwd.nextseq) and not (tflags & TH_RST):
                fl |= F_LOST
            if seglen <= 1 and seq == fwd.nextseq - 1 and not sfr:
                fl |= F_KEEPALIVE
            if seglen == 0 and window and window != fwd.window and seq == fwd.nextseq \
                    and ack == fwd.lastack and not sfr:
                fl |= F_WINDOW_UPDATE
            if seglen == 0 and window and window == fwd.window and seq == fwd.nextseq \
                    and ack == fwd.lastack and (rev.lastsegflags & F_KEEPALIVE) and not sfr:
                fl |= F_KEEPALIVE_ACK
            elif seglen == 0 and window == 0 and window == fwd.window and seq == fwd.nextseq \
                    and ack == fwd.lastack and (rev.lastsegflags & F_ZWP) and not sfr:
                fl |= F_ZWP_ACK
            elif seglen == 0 and window and window == fwd.window and seq == fwd.nextseq \
                    and ack == fwd.lastack and not sfr:
                fwd.dupacknum = 1 if fwd.dupacknum == -1 else fwd.dupacknum + 1
                fl |= F_DUPACK
        # finished_fwd:
        if ack != fwd.lastack:
            fwd.dupacknum = 0
        if rev.maxseqtobeacked and seq_gt(ack, rev.maxseqtobeacked) and (tflags & TH_ACK):
            # tshark 4.0: flagged when the other side's highest segment moved since the last
            # flag, else once more and no further until that side's ACK changes
            if seq_lt(rev.maxseqtobeacked, rev.nextseq):
                rev.maxseqtobeacked = rev.nextseq
                fl |= F_ACKED_UNSEEN
            else:
                if rev.dupacknum == 0:
                    fl |= F_ACKED_UNSEEN
                rev.dupacknum = -1
        if seglen > 0 or (tflags & (TH_SYN | TH_FIN)):
            seq_not_advanced = fwd.nextseq != 0 and seq_lt(seq, fwd.nextseq)
            if not (fl & F_KEEPALIVE):
                if seglen > 1 and fwd.nextseq - 1 == seq:
                    seq_not_advanced = False
                t = <uint64_t>ts - <uint64_t>rev.lastacktime
                if seq_not_advanced and rev.dupacknum >= 2 and rev.lastack == seq and t < FAST_RETRANS_NS:
                    fl |= F_FAST_RETRANS
                elif seglen > 0 and rev.lastack and seq_le(seq + seglen, rev.lastack):
                    fl |= F_SPURIOUS     # already acked: before the out-of-order test (tshark 4.0)
                else:
                    t = <uint64_t>ts - <uint64_t>fwd.nextseqtime
                    ooo_thres = <uint64_t>f.first_rtt if f.first_rtt != 0 else DEFAULT_OOO_NS
                    if seq_not_advanced and t < ooo_thres and fwd.nextseq != seq + seglen:
                        fl |= F_OOO
                    elif seq_not_advanced:
                        fl |= F_RETRANS
        # finished_checking_retransmission_type:
        nextseq = seq + seglen
        if tflags & (TH_SYN | TH_FIN):
            nextseq += 1
        if seq_gt(nextseq, fwd.nextseq) or not fwd.nextseq:
            if not (fl & F_ZWP):
                fwd.nextseq = nextseq
                fwd.nextseqtime = ts
        if seq == fwd.maxseqtobeacked or not fwd.maxseqtobeacked:
            if not (fl & F_ZWP):
                fwd.maxseqtobeacked = fwd.nextseq
        fwd.window = window
        fwd.lastack = ack
        fwd.lastacktime = ts
        fwd.lastsegflags = fl
        # ---- netprobe's own classification of data (and SYN/FIN) segments
        span = seglen + (1 if tflags & TH_SYN else 0) + (1 if tflags & TH_FIN else 0)
        if span and not (fl & (F_KEEPALIVE | F_ZWP)):
            fl |= self._classify(f, fwd, ts, seq, span, ipid, tsval, tflags & TH_SYN)
        if tflags & TH_ACK:
            drop_acked_holes(rev, ack)
            if dsack:
                fl |= F_DSACK
                rev.c[C_DSACK] += 1
        # ---- counters
        if seglen:
            # wire segments in a GSO/TSO frame: the peer's MSS less this segment's options; the
            # sender's own when the peer's SYN was not captured (an arriving-only capture does not
            # see this host's SYN; both ends of a path usually advertise the same)
            smss = rev.mss if rev.mss else fwd.mss
            smss = smss - (doff - 20) if smss > doff - 20 + 8 else 0
            if smss:
                segs = (<uint64_t>seglen + smss - 1) // smss      # smss >= 9 here
            fwd.c[C_DATA_PKTS] += 1
            fwd.c[C_DATA_BYTES] += seglen
            fwd.c[C_DATA_SEGS] += segs
        if fl & F_NP_RETRANS:
            fwd.c[C_RETRANS] += 1
            fwd.c[C_RETRANS_BYTES] += seglen
            fwd.c[C_RETRANS_SEGS] += segs
            if fl & F_NP_LOST_RETRANS:
                fwd.c[C_LOST_RETRANS] += 1
            else:
                fwd.c[C_SEEN_RETRANS] += 1
        if fl & F_NP_OOO:
            fwd.c[C_OOO] += 1
        if fl & F_FAST_RETRANS:
            fwd.c[C_FAST] += 1
        if fl & F_SPURIOUS:
            fwd.c[C_SPURIOUS] += 1
        if fl & F_DUPACK:
            fwd.c[C_DUPACK] += 1
        if fl & F_ZERO_WINDOW:
            fwd.c[C_ZERO_WINDOW] += 1
        if fl & F_LOST:
            fwd.c[C_LOST] += 1
        if fl & F_ACKED_UNSEEN:
            fwd.c[C_ACKED_UNSEEN] += 1
        if fl & F_KEEPALIVE:
            fwd.c[C_KEEPALIVE] += 1
        if fl & (F_RETRANS | F_FAST_RETRANS | F_SPURIOUS):
            fwd.c[C_WS_RETRANS] += 1
        if fl & F_OOO:
            fwd.c[C_WS_OOO] += 1
        return fl & 0xffff

    cdef uint32_t _classify(self, flow_t *f, dir_t *fwd, int64_t ts, uint32_t seq,
                            uint32_t span, int32_t ipid, int64_t tsval, bint syn) noexcept nogil:
        """netprobe's verdict on a segment covering [seq, seq+span) of one direction.

        0 for new data. A segment below the highest captured byte was either
        sent before every captured segment with bytes above it (an original
        that was overtaken: F_NP_OOO) or after one of them (a retransmission:
        F_NP_RETRANS, with F_NP_LOST_RETRANS when none of its bytes were
        captured before, i.e. the original was lost before the capture
        point). Send order comes from
        the IPv4 ID when this sender numbers packets in sequence (Linux does,
        per socket), else from TCP timestamps when they differ. The IPv4 ID is
        compared with the earliest-sent ID of the captured segments holding
        bytes at or above seq (kept in fwd.sent, in runs), not only with the highest
        segment's: a retransmission that was itself held back and overtaken by
        new data still went out after the originals above it. Without IDs or
        timestamps: bytes captured before make it a retransmission, and a hole
        filled within the reorder window of the hole's opening is out-of-order.
        A retransmission at or above seen_hi (its original lost or held before
        the capture point, nothing above it captured yet) is new data here:
        nothing in the capture tells it apart (retrans-notes.md, "tip")."""
        cdef uint32_t end = seq + span, below_end, lo, hi, out = 0
        cdef uint64_t in_holes = 0          # holes may sum past 2**32 when spans are huge
        cdef int64_t window
        cdef int i, oldest = -1, order = 0      # order: -1 an original (sent before every captured
        cdef hole_t h                           # segment with bytes at or above seq), 1 a resend
        cdef uint16_t idd
        if fwd.seen_valid and seq_lt(seq, fwd.seen_hi) and not stale(fwd.seen_hi, seq):
            if ipid >= 0 and fwd.last_has_id and fwd.id_good >= ID_TRUST and fwd.id_bad * 8 < fwd.id_good:
                order = sent_order(fwd, seq, <uint16_t>ipid)
            elif tsval >= 0 and fwd.last_has_ts and <uint32_t>tsval != fwd.last_ts:
                order = -1 if seq_lt(<uint32_t>tsval, fwd.last_ts) else 1
            below_end = end if seq_lt(end, fwd.seen_hi) else fwd.seen_hi
            for i in range(fwd.nholes):
                lo = seq if seq_gt(seq, fwd.holes[i].start) else fwd.holes[i].start
                hi = below_end if seq_lt(below_end, fwd.holes[i].end) else fwd.holes[i].end
                if seq_lt(lo, hi):
                    in_holes += hi - lo
                    if oldest < 0:
                        oldest = i
            if order < 0:
                out = F_NP_OOO
            elif in_holes < below_end - seq:
                out = F_NP_RETRANS
            elif order > 0:
                out = F_NP_RETRANS | F_NP_LOST_RETRANS
            else:
                window = self.reorder_ns
                if window == 0:
                    window = f.first_rtt if f.first_rtt > 0 else DEFAULT_OOO_NS
                if ns_diff(ts, fwd.holes[oldest].t_ns) < window:
                    out = F_NP_OOO
                else:
                    out = F_NP_RETRANS | F_NP_LOST_RETRANS
            if in_holes:
                fill_holes(fwd, seq, below_end)
        if fwd.seen_valid and seq_gt(seq, fwd.seen_hi) and seq_gt(end, fwd.seen_hi):   # a gap below the new top
            h.start = fwd.seen_hi
            h.end = seq
            h.t_ns = ts
            add_hole(fwd, h)
        if not fwd.seen_valid or seq_gt(end, fwd.seen_hi):
            if ipid >= 0 and fwd.last_has_id:
                idd = <uint16_t>(<uint16_t>ipid - fwd.last_id)
                if 0 < idd <= MAX_ID_STEP:
                    fwd.id_good += 1
                elif not fwd.last_syn:       # Linux: a listener's SYN-ACK has ID 0, and the new
                    fwd.id_bad += 1          # socket's counter starts at random: no evidence against
            fwd.seen_valid = 1
            fwd.seen_hi = end
            fwd.last_syn = syn
            fwd.last_has_id = ipid >= 0
            fwd.last_id = <uint16_t>ipid
            fwd.last_has_ts = tsval >= 0
            fwd.last_ts = <uint32_t>tsval
            forget_stale_holes(fwd)
        if ipid >= 0:
            add_sent(fwd, end, <uint16_t>ipid)
        return out

    # ---------------------------------------------------------------- results
    def counters(self):
        """File-level counters as a dict (frames, tcp, truncated, malformed, ...)."""
        out = {name: self.g[i] for i, name in enumerate(GLOBAL_COUNTERS)}
        out["flows"] = self.nflows
        return out

    def flows(self):
        """One tuple per flow: (family, a_addr, a_port, b_addr, b_port, first_ns,
        last_ns, handshake_rtt_ns, counters_a_to_b, counters_b_to_a), with a the
        sender of the flow's first captured packet and counters in DIR_COUNTERS order."""
        cdef Py_ssize_t i
        cdef int j, alen
        cdef flow_t *f
        out = []
        for i in range(self.nflows):
            f = &self.ftab[i]
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


cdef extern from "<stdio.h>":
    int snprintf(char *buf, size_t n, const char *fmt, ...) nogil


cdef inline bint linktype_known(uint32_t lt) noexcept nogil:
    return lt in (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                  LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2)


cdef inline int make_key(flow_key_t *k, const uint8_t *src, const uint8_t *dst, int alen,
                         uint16_t sport, uint16_t dport) noexcept nogil:
    """Fill k with the endpoints in canonical order; returns 1 if src is the lo end."""
    cdef int c = memcmp(src, dst, alen)
    if c < 0 or (c == 0 and sport <= dport):
        memcpy(k.addr_lo, src, alen)
        memcpy(k.addr_hi, dst, alen)
        k.port_lo = sport
        k.port_hi = dport
        return 1
    memcpy(k.addr_lo, dst, alen)
    memcpy(k.addr_hi, src, alen)
    k.port_lo = dport
    k.port_hi = sport
    return 0


cdef inline int32_t idb_tsres(const uint8_t *b, uint32_t blen, bint swapped) noexcept nogil:
    """if_tsresol of an interface description block (default 6: microseconds)."""
    cdef uint32_t o = 16, end = blen - 4, code, olen
    while o + 4 <= end:
        code = rd16(b + o, swapped)
        olen = rd16(b + o + 2, swapped)
        if code == 0:
            break
        if o + 4 + olen > end:
            break
        if code == PCAPNG_OPT_IF_TSRESOL and olen >= 1:
            if b[o + 4] & 0x80:
                return -<int32_t>(b[o + 4] & 0x7f)
            return b[o + 4]
        o += 4 + ((olen + 3) & ~3u)
    return 6


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


cdef inline void add_hole(dir_t *d, hole_t h) noexcept nogil:
    """Record a gap; with NHOLES open, the oldest is forgotten (counted)."""
    cdef int i
    if d.nholes == NHOLES:
        for i in range(NHOLES - 1):
            d.holes[i] = d.holes[i + 1]
        d.nholes -= 1
        d.c[C_HOLES_DROPPED] += 1
    d.holes[d.nholes] = h
    d.nholes += 1


cdef inline bint id_after(uint16_t a, uint16_t b) noexcept nogil:
    """IPv4 ID a was sent after b (one sender's counter, less than half a wrap apart)."""
    cdef uint16_t dd = <uint16_t>(a - b)
    return 0 < dd < 32768


cdef inline uint32_t run_above(const sent_t *r, uint32_t s) noexcept nogil:
    """Offset from the top of run r of its lowest mark that ends above s (r's top must).
    A run of more than one mark has step >= 1 (continues() admits no other)."""
    cdef uint64_t c
    if r.n == 1:
        return 0
    c = (<uint64_t>(r.end - s) + r.step - 1) // r.step
    return <uint32_t>((c if c < r.n else r.n) - 1)


cdef inline int sent_order(dir_t *d, uint32_t seq, uint16_t ipid) noexcept nogil:
    """1 if a captured segment with bytes at or above seq was sent before (or is) the
    packet with ID ipid, which so cannot be the first transmission of byte seq (originals
    go out in sequence order); -1 if every one was sent after it (an overtaken original).
    Without a mark above seq (forgotten), the segment that last raised seen_hi decides."""
    cdef int i
    cdef uint16_t ref = d.last_id
    for i in range(d.nsent):
        if seq_gt(d.sent[i].end, seq):
            ref = <uint16_t>(d.sent[i].id - run_above(&d.sent[i], seq))
            break
    return -1 if id_after(ref, ipid) else 1


cdef inline void run_piece(sent_t *out, const sent_t *r, uint32_t top, uint32_t bottom) noexcept nogil:
    """The marks of run r from offset `top` down to offset `bottom` (offsets from r's top)."""
    out.end = r.end - top * r.step
    out.id = <uint16_t>(r.id - top)
    out.step = r.step
    out.n = <uint16_t>(bottom - top + 1)


cdef inline bint continues(const sent_t *r, uint32_t end, uint16_t ipid) noexcept nogil:
    """Whether a mark (end, ipid) just above run r's top extends the run: the next ID, an
    end above the top (so a run's step is never 0), and the run's step (any step for a run
    of one)."""
    return (r.n < RUN_MAX and <uint16_t>(r.id + 1) == ipid and seq_gt(end, r.end)
            and (r.n == 1 or <uint32_t>(end - r.end) == r.step))


cdef inline bint stale(uint32_t top, uint32_t s) noexcept nogil:
    """Sequence number s is 2**31 or more below top: the two have no order (RFC 1982)."""
    return <uint32_t>(top - s) >= 0x80000000U


cdef inline void forget_stale_marks(dir_t *d) noexcept nogil:
    """Forget the marks stale below seen_hi. Comparisons within the rest stay transitive
    (all lie within half the sequence space), which the sort by end needs: sequence
    numbers stepping by 0x60000000 otherwise compare in a circle. seen_hi moves up by
    less than 2**31 at a time, so the stale marks are the lowest ones."""
    cdef int k = 0
    cdef uint64_t keep
    cdef sent_t *r
    while k < d.nsent and stale(d.seen_hi, d.sent[k].end):
        k += 1
    if k < d.nsent and d.sent[k].n > 1:
        r = &d.sent[k]
        # marks of r within the window: offsets c with (seen_hi - r.end) + c * step < 2**31
        keep = (0x80000000ULL - <uint32_t>(d.seen_hi - r.end) + r.step - 1) // r.step
        if keep < r.n:
            r.n = <uint16_t>keep
    if k:
        memmove(d.sent, &d.sent[k], (d.nsent - k) * sizeof(sent_t))
        d.nsent -= k


cdef inline void extend(sent_t *r, uint32_t end, uint16_t ipid) noexcept nogil:
    r.step = end - r.end
    r.end = end
    r.id = ipid
    r.n += 1


cdef inline void add_sent(dir_t *d, uint32_t end, uint16_t ipid) noexcept nogil:
    """Record that a segment ending at `end` had ID ipid, keeping only the marks no other
    mark dominates (one with an end as high and an ID as early); with more than NSENT
    runs, the lowest is forgotten. A mark extends the run just below it while its ends and
    IDs keep the run's steps (new data, in order, at the top: the fast path); otherwise it
    is a run of its own, and splits the run it lands in. Positions are (run, offset from
    its top). Marks stale below seen_hi are forgotten first, and a stale mark is not kept."""
    cdef int n = d.nsent, m = 0, i, rk = 0, rp, ru
    cdef uint32_t tk = 0, tp, tu
    cdef sent_t tmp[NSENT + 2]
    forget_stale_marks(d)
    n = d.nsent
    if stale(d.seen_hi, end):
        return
    if n and seq_gt(end, d.sent[n - 1].end) and continues(&d.sent[n - 1], end, ipid):
        extend(&d.sent[n - 1], end, ipid)                           # new data, in order
        return
    # k, the first mark ending at or above `end`: (rk, tk); rk == n: none
    while rk < n and seq_lt(d.sent[rk].end, end):
        rk += 1
    if rk < n:
        tk = run_above(&d.sent[rk], end - 1)
        if not id_after(<uint16_t>(d.sent[rk].id - tk), ipid):
            return                                                  # dominated
    # the kept marks above: from k, or from the one above k when k ends at `end` (replaced)
    ru, tu = rk, tk
    if rk < n and d.sent[rk].end - tk * d.sent[rk].step == end:
        if tk > 0:
            tu = tk - 1
        else:
            ru += 1
            if ru < n:
                tu = d.sent[ru].n - 1
    # the kept marks below: down from the one under k, past those with IDs not before ipid
    if rk < n and tk + 1 < d.sent[rk].n:
        rp, tp = rk, tk + 1
    else:
        rp = rk - 1
        tp = 0
    while rp >= 0 and not id_after(ipid, <uint16_t>(d.sent[rp].id - tp)):
        if tp + 1 < d.sent[rp].n:
            tp += 1
        else:
            rp -= 1
            tp = 0
    for i in range(rp):
        tmp[m] = d.sent[i]
        m += 1
    if rp >= 0:
        run_piece(&tmp[m], &d.sent[rp], tp, d.sent[rp].n - 1)
        m += 1
    if m and continues(&tmp[m - 1], end, ipid):       # a held-back run arriving late stays one
        extend(&tmp[m - 1], end, ipid)
    else:
        tmp[m].end = end
        tmp[m].step = 0
        tmp[m].id = ipid
        tmp[m].n = 1
        m += 1
    if ru < n:
        run_piece(&tmp[m], &d.sent[ru], 0, tu)
        m += 1
    for i in range(ru + 1, n):
        tmp[m] = d.sent[i]
        m += 1
    i = m - NSENT if m > NSENT else 0                               # forget the lowest runs
    memcpy(d.sent, &tmp[i], (m - i) * sizeof(sent_t))
    d.nsent = m - i


cdef inline void forget_stale_holes(dir_t *d) noexcept nogil:
    """Forget (count) the holes that start stale below seen_hi, as the send-order marks."""
    cdef int i = 0
    while i < d.nholes:
        if stale(d.seen_hi, d.holes[i].start):
            remove_hole(d, i)
            d.c[C_HOLES_DROPPED] += 1
        else:
            i += 1


cdef inline void remove_hole(dir_t *d, int i) noexcept nogil:
    cdef int j
    for j in range(i, d.nholes - 1):
        d.holes[j] = d.holes[j + 1]
    d.nholes -= 1


cdef inline void fill_holes(dir_t *d, uint32_t lo, uint32_t hi) noexcept nogil:
    """Remove [lo, hi) from the holes (a hole hit in the middle splits in two)."""
    cdef int i = 0
    cdef hole_t h
    while i < d.nholes:
        h = d.holes[i]
        if not (seq_lt(lo, h.end) and seq_lt(h.start, hi)):
            i += 1
            continue
        if seq_le(lo, h.start) and seq_le(h.end, hi):
            remove_hole(d, i)
            continue
        if seq_gt(lo, h.start) and seq_lt(hi, h.end):
            d.holes[i].end = lo
            h.start = hi
            add_hole(d, h)
            i += 1
            continue
        if seq_gt(lo, h.start):
            d.holes[i].end = lo
        else:
            d.holes[i].start = hi
        i += 1


cdef inline void drop_acked_holes(dir_t *d, uint32_t ack) noexcept nogil:
    """Holes below the peer's cumulative ACK will never be filled in this capture."""
    cdef int i = 0
    while i < d.nholes:
        if seq_le(d.holes[i].end, ack):
            remove_hole(d, i)
        else:
            if seq_lt(d.holes[i].start, ack):
                d.holes[i].start = ack
            i += 1


cdef inline bint scan_options(const uint8_t *o, uint32_t n, uint32_t ack, int64_t *tsval,
                              uint32_t *mss) noexcept nogil:
    """TCP options as far as captured: stores the timestamp option's TSval in
    tsval and the MSS option in mss (left alone if absent); True if a D-SACK (RFC 2883) is present: the
    first SACK block lies below the cumulative ACK, or inside the second block."""
    cdef uint32_t i = 0, kind, ln, l1, r1, l2, r2
    cdef bint dsack = False
    while i < n:
        kind = o[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            break
        ln = o[i + 1]
        if ln < 2 or i + ln > n:
            break
        if kind == 8 and ln == 10:
            tsval[0] = rd32be(o + i + 2)
        elif kind == 2 and ln == 4:
            mss[0] = rd16be(o + i + 2)
        elif kind == 5 and ln >= 10:
            l1 = rd32be(o + i + 2)
            r1 = rd32be(o + i + 6)
            if seq_le(r1, ack) and seq_lt(l1, r1):
                dsack = True
            elif ln >= 18:
                l2 = rd32be(o + i + 10)
                r2 = rd32be(o + i + 14)
                if seq_le(l2, l1) and seq_le(r1, r2):
                    dsack = True
        i += ln
    return dsack


# ---------------------------------------------------------------- live capture ring

cdef class PacketRing:
    """A live header capture: an AF_PACKET TPACKET_V3 receive ring whose frames go
    straight to a TcpAnalyser, with no process, pipe or copy in between.

    SOCK_DGRAM, so every frame starts at its IP header whatever the interface
    (LINKTYPE_RAW for the analyser). The classic BPF program (struct sock_filter
    array as bytes; its return value is the snaplen) is attached before the
    socket is bound to a protocol, so nothing unfiltered is ever queued. The
    kernel fills blocks of `block_size` bytes and hands one over when it is full
    or `retire_ms` after its first frame; pump() analyses every handed-over
    block with the GIL released; wait() is one poll() per hand-over, not per packet.
    Loopback's outgoing copy of each packet is skipped (libpcap does the same),
    so each packet on lo is seen once. ifindex 0: every interface.
    ignore_outgoing (PACKET_IGNORE_OUTGOING): the kernel does not hand this socket
    the packets the host sends at all, which spares it a clone of every one of them.
    """
    cdef int fd
    cdef uint8_t *ring
    cdef size_t ring_len
    cdef uint32_t block_size, block_nr, cur
    cdef int lo_ifindex
    cdef readonly uint64_t frames, blocks, kernel_packets, kernel_drops, kernel_freezes

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.ring = NULL

    def __init__(self, const uint8_t[::1] bpf, int ifindex=0, int lo_ifindex=1, uint32_t block_size=1 << 18,
                 uint32_t block_nr=32, uint32_t retire_ms=50, bint ignore_outgoing=False):
        cdef sock_fprog prog
        cdef tpacket_req3 req
        cdef sockaddr_ll sll
        cdef int version = TPACKET_V3, on = 1
        cdef void *m
        if bpf.shape[0] == 0 or bpf.shape[0] % sizeof(sock_filter) or bpf.shape[0] // sizeof(sock_filter) > 4096:
            raise ValueError(f"bpf must be 1 to 4096 8-byte instructions (got {bpf.shape[0]} bytes)")
        if block_size < 4096 or block_size & (block_size - 1) or not 1 <= block_nr <= 4096:
            raise ValueError(f"block_size must be a power of two >= 4096 and block_nr 1 to 4096 "
                             f"(got {block_size}, {block_nr})")
        if not 1 <= retire_ms <= 60_000:
            raise ValueError(f"retire_ms must be 1 to 60000 (got {retire_ms})")
        self.fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0)     # protocol 0: receives nothing yet
        if self.fd < 0:
            PyErr_SetFromErrno(OSError)
        prog.len = <unsigned short>(bpf.shape[0] // sizeof(sock_filter))
        prog.filter = <sock_filter *>&bpf[0]
        memset(&req, 0, sizeof(req))
        req.tp_block_size = block_size
        req.tp_block_nr = block_nr
        req.tp_frame_size = 2048                # V3 packs frames; the kernel only checks this divides blocks
        req.tp_frame_nr = block_size // 2048 * block_nr
        req.tp_retire_blk_tov = retire_ms
        memset(&sll, 0, sizeof(sll))
        sll.sll_family = AF_PACKET
        sll.sll_protocol = htons(ETH_P_ALL)
        sll.sll_ifindex = ifindex
        if (setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0
                or (ignore_outgoing and setsockopt(self.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &on,
                                                   sizeof(on)) != 0)
                or setsockopt(self.fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) != 0
                or setsockopt(self.fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) != 0):
            self._fail()
        m = mmap(NULL, <size_t>block_size * block_nr, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
        if m == MAP_FAILED:
            self._fail()
        self.ring = <uint8_t *>m
        self.ring_len = <size_t>block_size * block_nr
        self.block_size = block_size
        self.block_nr = block_nr
        self.lo_ifindex = lo_ifindex
        if bind(self.fd, <sockaddr *>&sll, sizeof(sll)) != 0:
            self._fail()

    cdef int _fail(self) except -1:
        PyErr_SetFromErrno(OSError)         # errno first: close() may change it
        self.close()
        return -1

    def __dealloc__(self):
        self.close()

    def close(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def wait(self, int timeout_ms):
        """Wait up to timeout_ms (GIL released) for the kernel to hand a block over; True if one is ready."""
        cdef pollfd pfd
        if self.fd < 0:
            raise ValueError("the ring is closed")
        if self._ready() != NULL:
            return True
        pfd.fd = self.fd
        pfd.events = POLLIN
        with nogil:
            poll(&pfd, 1, timeout_ms)           # EINTR: the caller looks again
        return self._ready() != NULL

    cdef tpacket_block_desc *_ready(self) noexcept nogil:
        """The current block if the kernel has handed it over, else NULL."""
        cdef tpacket_block_desc *bd = <tpacket_block_desc *>(self.ring + <size_t>self.cur * self.block_size)
        return bd if np_block_status(&bd.hdr.bh1.block_status) & TP_STATUS_USER else NULL

    def pump(self, TcpAnalyser analyser not None):
        """Analyse the frames of every block the kernel has handed over (GIL released);
        returns the number of frames analysed."""
        cdef uint64_t n0 = self.frames
        cdef tpacket_block_desc *bd
        if self.fd < 0:
            raise ValueError("the ring is closed")
        with nogil:
            bd = self._ready()
            while bd != NULL:
                self._block(analyser, bd)
                np_block_release(&bd.hdr.bh1.block_status)
                self.cur = (self.cur + 1) % self.block_nr
                self.blocks += 1
                bd = self._ready()
        return self.frames - n0

    cdef void _block(self, TcpAnalyser a, tpacket_block_desc *bd) noexcept nogil:
        cdef uint32_t i, n = bd.hdr.bh1.num_pkts
        cdef uint8_t *p = <uint8_t *>bd + bd.hdr.bh1.offset_to_first_pkt
        cdef tpacket3_hdr *h
        cdef sockaddr_ll *sll
        cdef uint16_t fl
        cdef int32_t fdir
        for i in range(n):
            h = <tpacket3_hdr *>p
            sll = <sockaddr_ll *>(p + TPACKET_ALIGN(sizeof(tpacket3_hdr)))
            if sll.sll_pkttype != PACKET_OUTGOING or sll.sll_ifindex != self.lo_ifindex:
                a._frame(p + h.tp_mac, h.tp_snaplen, h.tp_len, LINKTYPE_RAW,
                         <int64_t>h.tp_sec * 1000000000 + h.tp_nsec, &fl, &fdir)
                self.frames += 1
            p += h.tp_next_offset

    def stats(self):
        """Kernel counters (read-and-reset in the kernel, summed here): packets the
        filter passed, drops for want of ring space, queue freezes; and frames analysed."""
        cdef tpacket_stats_v3 st
        cdef unsigned int ln = sizeof(st)
        if self.fd >= 0 and getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &st, &ln) == 0:
            self.kernel_packets += st.tp_packets
            self.kernel_drops += st.tp_drops
            self.kernel_freezes += st.tp_freeze_q_cnt
        return {"packets": self.kernel_packets, "drops": self.kernel_drops, "freezes": self.kernel_freezes,
                "frames": self.frames, "blocks": self.blocks}
