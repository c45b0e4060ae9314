# UdpProbeReceiver: recvmmsg with kernel RX stamps on the caller's socket; per (session,
# port, open interval) fixed-size accumulators, so memory is O(1) per port whatever the
# uptime. A delay waits in its port until the next packet says whether a TX follow-up
# corrects it. The loop releases the GIL and never raises per packet: it counts and goes on.

cdef enum:
    NSLOTS = 4              # open intervals per port
    WINDOW_BITS = 16384     # duplicate-detection window per port (sequence numbers)
    HIST_TOP = 36           # histogram range: |delay| < 2**36 ns (68.7 s); beyond -> last bin
    SUB_PORT = 3            # histogram sub-buckets 2**3 per octave per port (<= 12.5 % wide)
    SUB_SESSION = 7         # 2**7 per octave per session (<= 0.8 % wide)
    MAX_CLOSE = 1024        # intervals one close_through() may close (bounds a hostile close) ...
    MAX_CLOSE_RECORDS = 65536   # ... and port records it may return (5,000 ports: 13 intervals)

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

ctypedef struct session_t:
    uint64_t id
    int nports
    bint keyed
    np_hmac_t key
    int64_t last_closed
    port_t *ports
    uint32_t *fhist[NSLOTS]
    int64_t finterval[NSLOTS]
    int64_t packets, controls, late_closed, overrun, bad_port, unsync_seen
    uint32_t clock_err_us


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


cdef slot_t *slot_claim(session_t *ss, port_t *ps, int64_t interval, int bins) noexcept nogil:
    """The open slot of `interval` on a port, claimed if free; NULL if closed or no room."""
    cdef slot_t *s = &ps.slots[interval % NSLOTS]
    if interval <= ss.last_closed:
        return NULL
    if s.interval == interval:
        return s
    if s.interval == -1:
        slot_reset(s, interval, bins)
        return s
    ss.overrun += 1
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


cdef class UdpProbeReceiver:
    """Counts probes of registered sessions arriving on one UDP socket (the caller's).

    Packets of unknown sessions, malformed or unauthenticated ones are
    counted and dropped; only add_session() (called for a session the
    control connection admitted) allocates memory, a fixed amount per port.
    """
    cdef int fd
    cdef session_t **sessions
    cdef int nsessions, max_sessions
    cdef int pbins, fbins
    cdef uint8_t *bufs
    cdef int bufsize
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef char ctrl[BATCH][64]
    cdef bint running
    cdef readonly int64_t datagrams, malformed, unauthenticated, unknown_session, truncated, no_kernel_ts
    cdef int64_t malformed_by[WIRE_TAG_UNEXPECTED + 1]   # by pull_probe_hdr/pull_tag_check result

    def __cinit__(self, *args, **kwargs):
        self.sessions = NULL
        self.bufs = NULL

    def __init__(self, int fd=-1, int max_sessions=64, int bufsize=2048):
        cdef int i
        if not 1 <= max_sessions <= 4096:
            raise ValueError(f"max_sessions must be 1 to 4096 (got {max_sessions})")
        if not WIRE_HDR_LEN <= bufsize <= 65536:
            raise ValueError(f"bufsize must be {WIRE_HDR_LEN} to 65536 (got {bufsize})")
        self.fd = fd
        if fd >= 0 and rx_stamps_on(fd) != 0:
            PyErr_SetFromErrno(OSError)
        self.max_sessions = max_sessions
        self.sessions = <session_t **>calloc(max_sessions, sizeof(session_t *))
        self.bufsize = bufsize
        self.bufs = <uint8_t *>malloc(<size_t>BATCH * bufsize)
        if self.sessions == NULL or self.bufs == NULL:
            raise MemoryError()
        self.pbins = hist_bins(SUB_PORT)
        self.fbins = hist_bins(SUB_SESSION)
        memset(self.msgs, 0, sizeof(self.msgs))
        for i in range(BATCH):
            self.iov[i].iov_base = self.bufs + <size_t>i * bufsize
            self.iov[i].iov_len = bufsize
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        cdef int i
        if self.sessions != NULL:
            for i in range(self.nsessions):
                self._free_session(self.sessions[i])
        free(self.sessions)
        free(self.bufs)

    cdef void _free_session(self, session_t *ss) noexcept:
        cdef int p, k
        if ss == NULL:
            return
        if ss.ports != NULL:
            for p in range(ss.nports):
                free(ss.ports[p].bitmap)
                for k in range(NSLOTS):
                    free(ss.ports[p].slots[k].hist)
        free(ss.ports)
        for k in range(NSLOTS):
            free(ss.fhist[k])
        free(ss)

    cdef session_t *_find(self, uint64_t sid) noexcept nogil:
        cdef int i
        for i in range(self.nsessions):
            if self.sessions[i].id == sid:
                return self.sessions[i]
        return NULL

    def add_session(self, uint64_t session, int nports, key=b""):
        """Register a session of `nports` source ports (memory: fixed per port)."""
        cdef session_t *ss
        cdef int p, k
        if self._find(session) != NULL:
            raise ValueError(f"session {session:016x} is already registered")
        if self.nsessions >= self.max_sessions:
            raise ValueError(f"receiver full: {self.max_sessions} sessions")
        if not 1 <= nports <= MAX_PORTS:
            raise ValueError(f"nports must be 1 to {MAX_PORTS} (got {nports})")
        ss = <session_t *>calloc(1, sizeof(session_t))
        if ss == NULL:
            raise MemoryError()
        ss.id = session
        ss.nports = nports
        ss.last_closed = -1
        ss.keyed = set_key(&ss.key, key)
        ss.ports = <port_t *>calloc(nports, sizeof(port_t))
        ok = ss.ports != NULL
        for k in range(NSLOTS):
            ss.finterval[k] = -1
            ss.fhist[k] = <uint32_t *>calloc(2 * self.fbins, sizeof(uint32_t))
            ok = ok and ss.fhist[k] != NULL
        if ok:
            for p in range(nports):
                ss.ports[p].max_seq = -1
                ss.ports[p].pend_seq = -1
                ss.ports[p].bitmap = <uint64_t *>calloc(WINDOW_BITS // 64, sizeof(uint64_t))
                ok = ok and ss.ports[p].bitmap != NULL
                for k in range(NSLOTS):
                    ss.ports[p].slots[k].interval = -1
                    ss.ports[p].slots[k].hist = <uint32_t *>calloc(2 * self.pbins, sizeof(uint32_t))
                    ok = ok and ss.ports[p].slots[k].hist != NULL
        if not ok:
            self._free_session(ss)
            raise MemoryError()
        self.sessions[self.nsessions] = ss
        self.nsessions += 1

    def remove_session(self, uint64_t session):
        cdef int i
        if self.running:
            raise RuntimeError("remove_session() while run() is running")
        for i in range(self.nsessions):
            if self.sessions[i].id == session:
                self._free_session(self.sessions[i])
                self.sessions[i] = self.sessions[self.nsessions - 1]
                self.nsessions -= 1
                return True
        return False

    cdef void _process(self, const uint8_t *p, size_t n, int64_t rx_ns) noexcept nogil:
        cdef probe_hdr h
        cdef size_t off = 0
        cdef int r, t
        cdef session_t *ss
        cdef port_t *ps
        cdef slot_t *s
        cdef slot_t *prev
        cdef int64_t seq, base
        self.datagrams += 1
        r = pull_probe_hdr(p, n, &h, &off)
        if r != WIRE_OK:
            self.malformed += 1
            self.malformed_by[r] += 1
            return
        ss = self._find(h.session)
        if ss == NULL:
            self.unknown_session += 1
            return
        r = pull_tag_check(p, n, &h, &ss.key if ss.keyed else NULL, &off)
        if r != WIRE_OK:
            self.unauthenticated += 1
            self.malformed_by[r] += 1
            return
        if h.port >= ss.nports or h.seq >= SEQ_MAX or h.send_ns >= SEND_NS_MAX \
                or (h.index > h.seq and not h.flags & FLAG_CONTROL):     # a control's index is its copy number
            ss.bad_port += 1
            self.malformed += 1
            return
        ps = &ss.ports[h.port]
        ss.clock_err_us = h.clock_err_us
        if h.flags & FLAG_UNSYNC:
            ss.unsync_seen += 1
        if h.flags & FLAG_CONTROL:
            ss.controls += 1
            if h.flags & FLAG_TXTIME:         # else the next data packet (same seq) may bring it
                self._settle(ss, ps, &h)
            s = slot_claim(ss, ps, h.interval, self.pbins)
            if s == NULL:
                ss.late_closed += 1
                return
            s.ctl_count = h.count
            s.ctl_next = <int64_t>h.seq
            return
        ss.packets += 1
        seq = <int64_t>h.seq
        t = track(ps, seq)
        s = slot_claim(ss, ps, h.interval, self.pbins)
        if s == NULL:
            if h.interval <= ss.last_closed:
                ss.late_closed += 1
            return
        base = seq - h.index
        if h.interval > 0:
            prev = slot_claim(ss, ps, h.interval - 1, self.pbins)
            if prev != NULL:
                prev.piggy_count = h.count
                prev.next_base = base
        if t == 3:
            s.stale += 1
            return
        if t == 2:
            s.dup += 1
            return
        s.received += 1
        if t == 1:
            s.reordered += 1
        s.base = base
        if seq > s.max_seq:
            s.max_seq = seq
        self._settle(ss, ps, &h)
        ps.pend_seq = seq
        ps.pend_delay = sat_sub(rx_ns, <int64_t>h.send_ns)
        ps.pend_interval = h.interval

    cdef void _settle(self, session_t *ss, port_t *ps, const probe_hdr *h) noexcept nogil:
        """Account the port's waiting delay, corrected by h's follow-up when h is the next
        sequence number and carries one (the sender's kernel TX time of the waiting packet)."""
        if ps.pend_seq < 0 or <int64_t>h.seq == ps.pend_seq:
            return
        if h.flags & FLAG_TXTIME and <int64_t>h.seq == ps.pend_seq + 1:
            self._release(ss, ps, h.tx_follow_up, True)
        else:
            self._release(ss, ps, 0, False)

    cdef void _release(self, session_t *ss, port_t *ps, int64_t follow_up, bint from_tx) noexcept nogil:
        """Account the port's waiting delay less `follow_up`; nothing waits after."""
        self._account(ss, ps, ps.pend_interval, sat_sub(ps.pend_delay, follow_up), from_tx)
        ps.pend_seq = -1

    cdef void _account(self, session_t *ss, port_t *ps, int64_t interval, int64_t d,
                       bint from_tx) noexcept nogil:
        """One one-way delay (ns) into its port's and the session's accumulators of `interval`."""
        cdef slot_t *s = &ps.slots[interval % NSLOTS]
        cdef int r = <int>(interval % NSLOTS)
        if s.interval != interval:
            return
        if s.n == 0 or d < s.dmin:
            s.dmin = d
        if s.n == 0 or d > s.dmax:
            s.dmax = d
        s.n += 1
        s.n_tx += from_tx
        s.dsum += d
        s.dsumsq += <double>d * d
        s.hist[hist_index(d, SUB_PORT)] += 1
        if ss.finterval[r] != interval:
            if ss.finterval[r] != -1:
                return
            ss.finterval[r] = interval
            memset(ss.fhist[r], 0, 2 * self.fbins * sizeof(uint32_t))
        ss.fhist[r][hist_index(d, SUB_SESSION)] += 1

    def feed(self, data, int64_t rx_ns):
        """Test hook: account one datagram received at `rx_ns` (CLOCK_REALTIME ns), as run() does."""
        cdef const uint8_t[:] d = data
        if len(data) == 0:
            self.datagrams += 1
            self.malformed += 1
            self.malformed_by[WIRE_SHORT] += 1
            return
        self._process(&d[0], d.shape[0], rx_ns)

    def run(self, int64_t duration_ns):
        """Receive for `duration_ns` (poll + recvmmsg, GIL released). Returns this call's
        RecvResult; the counters are attributes."""
        cdef int64_t t0, end, before = self.datagrams
        cdef int r, i, err = 0
        cdef pollfd pfd
        cdef int64_t rx
        if self.fd < 0:
            raise ValueError("this receiver has no socket (feed() only)")
        check_run_ns(duration_ns)
        if self.running:
            raise RuntimeError("run() is already running")
        self.running = True
        pfd.fd = self.fd
        pfd.events = POLLIN
        t0 = mono_ns()
        end = t0 + duration_ns
        try:
            with nogil:
                while True:
                    r = wait_readable(&pfd, end, &err)
                    if r < 0:
                        break
                    if r == 0:
                        continue
                    while True:
                        for i in range(BATCH):
                            self.msgs[i].msg_hdr.msg_control = &self.ctrl[i][0]
                            self.msgs[i].msg_hdr.msg_controllen = 64
                            self.msgs[i].msg_hdr.msg_flags = 0
                        r = recvmmsg(self.fd, self.msgs, BATCH, MSG_DONTWAIT, NULL)
                        if r <= 0:
                            break
                        for i in range(r):
                            rx = sw_stamp_ns(&self.msgs[i].msg_hdr)
                            if rx < 0:
                                self.no_kernel_ts += 1
                                rx = clock_ns(CLOCK_REALTIME)
                            if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                                self.datagrams += 1
                                self.truncated += 1
                                self.malformed += 1
                                continue
                            self._process(self.bufs + <size_t>i * self.bufsize, self.msgs[i].msg_len, rx)
                        if r < BATCH:
                            break
        finally:
            self.running = False
        if err == EINTR:
            PyErr_CheckSignals()
        return RecvResult.make(self.datagrams - before, mono_ns() - t0, err == EINTR)

    def close_through(self, uint64_t session, int64_t interval):
        """Close every open interval of `session` up to `interval`, oldest first.

        Returns a list of {"interval", "ports": [per-port dict], "hist": [[bin, count], ...],
        "counters": {...}} (hist: the session's fine histogram, SESSION_SUB_BITS; each port's
        "hist" uses PORT_SUB_BITS). Packets arriving later for a closed interval are counted
        in late_closed, never in it.
        """
        cdef session_t *ss = self._find(session)
        cdef slot_t *s
        cdef slot_t *nxt
        cdef int p, k, b
        cdef int64_t i, most
        if ss == NULL:
            raise KeyError(f"no session {session:016x}")
        most = min(MAX_CLOSE, max(1, MAX_CLOSE_RECORDS // ss.nports))
        if interval > ss.last_closed + most:            # (interval - last_closed would overflow)
            raise ValueError(f"cannot close through interval {interval}: {ss.last_closed} is the last closed "
                             f"and one call closes at most {most} intervals of {ss.nports} ports")
        for p in range(ss.nports):             # waiting delays of these intervals: no follow-up now
            if ss.ports[p].pend_seq >= 0 and ss.ports[p].pend_interval <= interval:
                self._release(ss, &ss.ports[p], 0, False)
        out = []
        i = ss.last_closed + 1
        while i <= interval:
            ports = []
            for p in range(ss.nports):
                s = &ss.ports[p].slots[i % NSLOTS]
                nxt = &ss.ports[p].slots[(i + 1) % NSLOTS]
                rec = {"port": p, "received": 0, "dup": 0, "reordered": 0, "stale": 0, "base": -1,
                       "max_seq": -1, "ctl_count": -1, "ctl_next": -1, "piggy_count": -1, "next_base": -1,
                       "n": 0, "n_tx": 0, "sum": 0.0, "sumsq": 0.0, "min": 0, "max": 0, "hist": []}
                if s.interval == i:
                    rec.update(received=s.received, dup=s.dup, reordered=s.reordered, stale=s.stale,
                               base=s.base, max_seq=s.max_seq, ctl_count=s.ctl_count, ctl_next=s.ctl_next,
                               piggy_count=s.piggy_count, next_base=s.next_base, n=s.n, n_tx=s.n_tx, sum=s.dsum,
                               sumsq=s.dsumsq, min=s.dmin, max=s.dmax,
                               hist=[[b, s.hist[b]] for b in range(2 * self.pbins) if s.hist[b]])
                    s.interval = -1
                if rec["next_base"] < 0 and nxt.interval == i + 1 and nxt.base >= 0:
                    rec["next_base"] = nxt.base
                ports.append(rec)
            k = <int>(i % NSLOTS)
            hist = []
            if ss.finterval[k] == i:
                hist = [[b, ss.fhist[k][b]] for b in range(2 * self.fbins) if ss.fhist[k][b]]
                ss.finterval[k] = -1
            ss.last_closed = i
            out.append({"interval": i, "ports": ports, "hist": hist})
            i += 1
        return out

    def session_counters(self, uint64_t session):
        cdef session_t *ss = self._find(session)
        if ss == NULL:
            raise KeyError(f"no session {session:016x}")
        return {"packets": ss.packets, "controls": ss.controls, "late_closed": ss.late_closed,
                "overrun": ss.overrun, "bad_port": ss.bad_port, "unsync_seen": ss.unsync_seen,
                "clock_err_us": ss.clock_err_us, "last_closed": ss.last_closed}

    @property
    def counters(self):
        return {"datagrams": self.datagrams, "malformed": self.malformed,
                "unauthenticated": self.unauthenticated, "unknown_session": self.unknown_session,
                "truncated": self.truncated, "no_kernel_ts": self.no_kernel_ts,
                "by_reason": {DECODE_ERRORS[i]: self.malformed_by[i]
                              for i in range(WIRE_SHORT, WIRE_TAG_UNEXPECTED + 1) if self.malformed_by[i]}}
