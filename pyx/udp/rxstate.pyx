# The oneway receiver's state (UdpProbeReceiver, receiver.pyx): per (session, port, open
# interval) fixed-size accumulators with log-linear delay histograms, a duplicate window
# per port, and what each receive lane counts for a session.

cdef enum:
    NSLOTS = 4              # open intervals per port
    WINDOW_BITS = 16384     # duplicate-detection window per port (sequence numbers)
    HIST_TOP = 36           # histogram range: |delay| < 2**36 ns (68.7 s); beyond -> last bin
    SUB_PORT = 3            # histogram sub-buckets 2**3 per octave per port (<= 12.5 % wide)
    SUB_SESSION = 7         # 2**7 per octave per session (<= 0.8 % wide)
    MAX_CLOSE = 1024        # intervals one close_through() may close (bounds a hostile close) ...
    MAX_CLOSE_RECORDS = 65536   # ... and port records it may return (5,000 ports: 13 intervals)

cdef enum:
    TRACE_MAGIC = 0x4e505452     # "NPTR": a path-trace datagram (netprobe.probes.oneway.trace)
    TRACE_LEN = 16               # magic, 8-byte token, port (16), TTL (8), try (8)

cdef uint64_t SEND_NS_MAX = <uint64_t>1 << 63  # a send time must be a positive int64 (ns before 2262)
cdef uint64_t SEQ_MAX = <uint64_t>1 << 62      # sequence numbers stay far from int64's end

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil


cdef inline int hist_bins(int sub) noexcept nogil:
    return (HIST_TOP - sub + 1) << sub


cdef inline int hist_index(int64_t d, int sub) noexcept nogil:
    """Signed log-linear bin of `d` ns: [0, bins) for d < 0, [bins, 2 bins) for d >= 0."""
    cdef int nb = hist_bins(sub), m, i
    cdef uint64_t v = 0 - <uint64_t>d if d < 0 else <uint64_t>d      # |INT64_MIN| without overflow
    if v < (<uint64_t>1 << sub):
        i = <int>v
    else:
        m = 63 - __builtin_clzll(v)
        if m >= HIST_TOP:
            i = nb - 1
        else:
            i = ((m - sub + 1) << sub) + <int>((v >> (m - sub)) - (<uint64_t>1 << sub))
    return i if d < 0 else nb + i


def hist_bin(int64_t delay_ns, int sub):
    """Test hook: the histogram bin of `delay_ns` with 2**sub sub-buckets per octave."""
    if not 0 <= sub <= 16:
        raise ValueError(f"sub must be 0 to 16 (got {sub})")
    return hist_index(delay_ns, sub)


ctypedef struct slot_t:
    int64_t interval           # -1: free
    int64_t received, dup, reordered, stale
    int64_t base               # first sequence number of the interval on this port (-1 unknown)
    int64_t max_seq            # highest data sequence number received in the interval (-1)
    int64_t ctl_count, ctl_next  # from a control record (-1 unknown)
    int64_t piggy_count, next_base   # from data of the next interval (-1 unknown)
    int64_t n, dmin, dmax
    int64_t n_tx               # delays measured from the sender's kernel TX time (a follow-up)
    double dsum, dsumsq
    uint32_t *hist

ctypedef struct port_t:
    int64_t max_seq            # highest sequence number seen (-1: none)
    uint64_t *bitmap           # WINDOW_BITS bits: seen sequence numbers up to max_seq
    int64_t pend_seq           # the last data packet, whose delay waits for the next packet's
    int64_t pend_delay         #   TX follow-up (-1: none); its delay (ns) and interval
    int64_t pend_interval
    slot_t slots[NSLOTS]

ctypedef struct sess_lane_t:    # what one lane counts for a session (merged when read)
    uint32_t *fhist[NSLOTS]
    int64_t finterval[NSLOTS]
    int64_t packets, controls, late_closed, overrun, bad_port, unsync_seen
    uint32_t clock_err_us
    int64_t clock_err_at       # receive time of the packet that brought clock_err_us (0: none)

ctypedef struct session_t:
    uint64_t id
    int nports
    bint keyed
    np_hmac_t key
    int64_t last_closed
    port_t *ports              # port p is only touched by lane p % nlanes
    sess_lane_t *lanes

ctypedef struct rx_t:
    session_t **sessions
    int nsessions, nlanes, pbins, fbins


cdef void slot_reset(slot_t *s, int64_t interval, int bins) noexcept nogil:
    cdef uint32_t *h = s.hist
    memset(s, 0, sizeof(slot_t))
    s.hist = h
    memset(h, 0, 2 * bins * sizeof(uint32_t))
    s.interval = interval
    s.base = -1
    s.max_seq = -1
    s.ctl_count = -1
    s.ctl_next = -1
    s.piggy_count = -1
    s.next_base = -1


cdef slot_t *slot_claim(session_t *ss, sess_lane_t *sl, port_t *ps, int64_t interval, int bins) noexcept nogil:
    """The open slot of `interval` on a port, claimed if free; NULL if closed or no room."""
    cdef slot_t *s = &ps.slots[interval % NSLOTS]
    if interval <= ss.last_closed:
        return NULL
    if s.interval == interval:
        return s
    if s.interval == -1:
        slot_reset(s, interval, bins)
        return s
    sl.overrun += 1
    return NULL


cdef int track(port_t *ps, int64_t seq) noexcept nogil:
    """0 new in order, 1 new but late (reordered), 2 duplicate, 3 older than the window."""
    cdef int64_t s
    cdef uint64_t bit
    if seq > ps.max_seq:
        if ps.max_seq < 0 or seq - ps.max_seq >= WINDOW_BITS:
            memset(ps.bitmap, 0, WINDOW_BITS // 8)
        else:
            s = ps.max_seq + 1
            while s < seq:
                ps.bitmap[(s % WINDOW_BITS) >> 6] &= ~(<uint64_t>1 << (s & 63))
                s += 1
        ps.bitmap[(seq % WINDOW_BITS) >> 6] |= <uint64_t>1 << (seq & 63)
        ps.max_seq = seq
        return 0
    if ps.max_seq - seq >= WINDOW_BITS:
        return 3
    bit = <uint64_t>1 << (seq & 63)
    if ps.bitmap[(seq % WINDOW_BITS) >> 6] & bit:
        return 2
    ps.bitmap[(seq % WINDOW_BITS) >> 6] |= bit
    return 1
