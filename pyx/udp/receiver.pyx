# UdpProbeReceiver: recvmmsg with kernel RX stamps on the caller's socket or sockets (one
# receive lane each, rxlanes.pyx); per (session, port, open interval) fixed-size
# accumulators (rxstate.pyx), so memory is O(1) per port whatever the uptime. A delay waits
# in its port until the next packet says whether a TX follow-up corrects it. The loops
# release the GIL and never raise per packet: they count and go on.

include "udp/rxstate.pyx"
include "udp/rxlanes.pyx"


cdef inline session_t *rx_find(rx_t *rx, uint64_t sid) noexcept nogil:
    cdef int i
    for i in range(rx.nsessions):
        if rx.sessions[i].id == sid:
            return rx.sessions[i]
    return NULL


cdef void rx_process(rx_t *rx, lane_t *ln, const uint8_t *p, size_t n, int64_t rx_ns) noexcept nogil:
    """Account one datagram that arrived on lane `ln`."""
    cdef probe_hdr h
    cdef size_t off = 0
    cdef int r, t
    cdef session_t *ss
    cdef sess_lane_t *sl
    cdef port_t *ps
    cdef slot_t *s
    cdef slot_t *prev
    cdef int64_t seq, base
    ln.c.datagrams += 1
    if n == TRACE_LEN and load_be32(p) == TRACE_MAGIC:      # a path trace that reached this end
        ln.c.trace += 1
        return
    r = pull_probe_hdr(p, n, &h, &off)
    if r != WIRE_OK:
        ln.c.malformed += 1
        ln.c.by[r] += 1
        return
    ss = rx_find(rx, h.session)
    if ss == NULL:
        ln.c.unknown_session += 1
        return
    sl = &ss.lanes[ln.index]
    r = pull_tag_check(p, n, &h, &ss.key if ss.keyed else NULL, &off)
    if r != WIRE_OK:
        ln.c.unauthenticated += 1
        ln.c.by[r] += 1
        return
    if h.port >= ss.nports or h.seq >= SEQ_MAX or h.send_ns >= SEND_NS_MAX \
            or (h.index > h.seq and not h.flags & FLAG_CONTROL):     # a control's index is its copy number
        sl.bad_port += 1
        ln.c.malformed += 1
        return
    if h.port % rx.nlanes != ln.index:       # another lane owns this port's state
        ln.c.misrouted += 1
        return
    ps = &ss.ports[h.port]
    if rx_ns >= sl.clock_err_at:
        sl.clock_err_us = h.clock_err_us
        sl.clock_err_at = rx_ns
    if h.flags & FLAG_UNSYNC:
        sl.unsync_seen += 1
    if h.flags & FLAG_CONTROL:
        sl.controls += 1
        if h.flags & FLAG_TXTIME:         # else the next data packet (same seq) may bring it
            rx_settle(rx, sl, ps, &h)
        s = slot_claim(ss, sl, ps, h.interval, rx.pbins)
        if s == NULL:
            sl.late_closed += 1
            return
        s.ctl_count = h.count
        s.ctl_next = <int64_t>h.seq
        return
    sl.packets += 1
    seq = <int64_t>h.seq
    t = track(ps, seq)
    s = slot_claim(ss, sl, ps, h.interval, rx.pbins)
    if s == NULL:
        if h.interval <= ss.last_closed:
            sl.late_closed += 1
        return
    base = seq - h.index
    if h.interval > 0:
        prev = slot_claim(ss, sl, ps, h.interval - 1, rx.pbins)
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
    rx_settle(rx, sl, ps, &h)
    ps.pend_seq = seq
    ps.pend_delay = sat_sub(rx_ns, <int64_t>h.send_ns)
    ps.pend_interval = h.interval


cdef void rx_settle(rx_t *rx, sess_lane_t *sl, port_t *ps, const probe_hdr *h) noexcept nogil:
    """Account the port's waiting delay, corrected by h's follow-up when h is the next
    sequence number and carries one (the sender's kernel TX time of the waiting packet)."""
    if ps.pend_seq < 0 or <int64_t>h.seq == ps.pend_seq:
        return
    if h.flags & FLAG_TXTIME and <int64_t>h.seq == ps.pend_seq + 1:
        rx_release(rx, sl, ps, h.tx_follow_up, True)
    else:
        rx_release(rx, sl, ps, 0, False)


cdef void rx_release(rx_t *rx, sess_lane_t *sl, port_t *ps, int64_t follow_up, bint from_tx) noexcept nogil:
    """Account the port's waiting delay less `follow_up`; nothing waits after."""
    rx_account(rx, sl, ps, ps.pend_interval, sat_sub(ps.pend_delay, follow_up), from_tx)
    ps.pend_seq = -1


cdef void rx_account(rx_t *rx, sess_lane_t *sl, port_t *ps, int64_t interval, int64_t d,
                     bint from_tx) noexcept nogil:
    """One one-way delay (ns) into its port's and the lane's session accumulators of `interval`."""
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
    if sl.finterval[r] != interval:
        if sl.finterval[r] != -1:
            return
        sl.finterval[r] = interval
        memset(sl.fhist[r], 0, 2 * rx.fbins * sizeof(uint32_t))
    sl.fhist[r][hist_index(d, SUB_SESSION)] += 1


TRACE_MAGIC_BYTES = b"NPTR"     # what netprobe.probes.oneway.trace sends: magic, token, port, TTL, try
TRACE_DATAGRAM_LEN = TRACE_LEN


cdef class UdpProbeReceiver:
    """Counts probes of registered sessions arriving on the caller's UDP socket, or on the
    sockets of one SO_REUSEPORT group, one lane (thread) each (rxlanes.pyx).

    Packets of unknown sessions, malformed or unauthenticated ones are
    counted and dropped; only add_session() (called for a session the
    control connection admitted) allocates memory, a fixed amount per port
    and per lane.
    """
    cdef rx_t rx
    cdef int max_sessions
    cdef lane_t *lanes
    cdef int stop_fd
    cdef bint running

    def __cinit__(self, *args, **kwargs):
        self.rx.sessions = NULL
        self.lanes = NULL
        self.stop_fd = -1

    def __init__(self, fd=-1, int max_sessions=64, int bufsize=2048, int lanes=0):
        """fd: a socket, -1 (feed() only), or the sockets of one SO_REUSEPORT group in the order
        they were bound (a steering program is attached: port index % len(fd) picks the socket).
        lanes: with fd -1, how many lanes feed() spreads ports over (as the program would)."""
        cdef int i
        fds = list(fd) if isinstance(fd, (list, tuple)) else [fd]
        if not 1 <= max_sessions <= 4096:
            raise ValueError(f"max_sessions must be 1 to 4096 (got {max_sessions})")
        if not WIRE_HDR_LEN <= bufsize <= 65536:
            raise ValueError(f"bufsize must be {WIRE_HDR_LEN} to 65536 (got {bufsize})")
        if not 1 <= len(fds) <= MAX_LANES or (len(fds) > 1 and min(fds) < 0):
            raise ValueError(f"fd must be a socket, -1, or 1 to {MAX_LANES} sockets")
        if lanes and (fds != [-1] or not 1 <= lanes <= MAX_LANES):
            raise ValueError(f"lanes goes with fd=-1 and must be 1 to {MAX_LANES} (got {lanes})")
        if lanes:
            fds = [-1] * lanes
        self.max_sessions = max_sessions
        self.rx.sessions = <session_t **>calloc(max_sessions, sizeof(session_t *))
        self.lanes = <lane_t *>calloc(len(fds), sizeof(lane_t))
        if self.rx.sessions == NULL or self.lanes == NULL:
            raise MemoryError()
        for i in range(len(fds)):
            self.rx.nlanes += 1
            if lane_init(&self.lanes[i], i, fds[i], bufsize) != 0:
                raise MemoryError()
            if fds[i] >= 0 and rx_stamps_on(fds[i]) != 0:
                PyErr_SetFromErrno(OSError)
        if len(fds) > 1 and fds[0] >= 0:
            steer_by_port(fds[0], len(fds))
            self.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
            if self.stop_fd < 0:
                PyErr_SetFromErrno(OSError)
        self.rx.pbins = hist_bins(SUB_PORT)
        self.rx.fbins = hist_bins(SUB_SESSION)

    def __dealloc__(self):
        cdef int i
        if self.rx.sessions != NULL:
            for i in range(self.rx.nsessions):
                self._free_session(self.rx.sessions[i])
        free(self.rx.sessions)
        if self.lanes != NULL:
            for i in range(self.rx.nlanes):
                lane_free(&self.lanes[i])
        free(self.lanes)
        if self.stop_fd >= 0:
            close(self.stop_fd)

    @property
    def nlanes(self):
        return self.rx.nlanes

    cdef void _free_session(self, session_t *ss) noexcept:
        cdef int p, k, j
        if ss == NULL:
            return
        if ss.ports != NULL:
            for p in range(ss.nports):
                free(ss.ports[p].bitmap)
                for k in range(NSLOTS):
                    free(ss.ports[p].slots[k].hist)
        free(ss.ports)
        if ss.lanes != NULL:
            for j in range(self.rx.nlanes):
                for k in range(NSLOTS):
                    free(ss.lanes[j].fhist[k])
        free(ss.lanes)
        free(ss)

    cdef int _idle(self, str what) except -1:
        if self.running:
            raise RuntimeError(f"{what}() while run() is running")
        return 0

    def add_session(self, uint64_t session, int nports, key=b""):
        """Register a session of `nports` source ports (memory: fixed per port and per lane)."""
        cdef session_t *ss
        cdef int p, k, j
        self._idle("add_session")
        if rx_find(&self.rx, session) != NULL:
            raise ValueError(f"session {session:016x} is already registered")
        if self.rx.nsessions >= self.max_sessions:
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
        ss.lanes = <sess_lane_t *>calloc(self.rx.nlanes, sizeof(sess_lane_t))
        ok = ss.ports != NULL and ss.lanes != NULL
        for j in range(self.rx.nlanes if ok else 0):
            for k in range(NSLOTS):
                ss.lanes[j].finterval[k] = -1
                ss.lanes[j].fhist[k] = <uint32_t *>calloc(2 * self.rx.fbins, sizeof(uint32_t))
                ok = ok and ss.lanes[j].fhist[k] != NULL
        if ok:
            for p in range(nports):
                ss.ports[p].max_seq = -1
                ss.ports[p].pend_seq = -1
                ss.ports[p].bitmap = <uint64_t *>calloc(WINDOW_BITS // 64, sizeof(uint64_t))
                ok = ok and ss.ports[p].bitmap != NULL
                for k in range(NSLOTS):
                    ss.ports[p].slots[k].interval = -1
                    ss.ports[p].slots[k].hist = <uint32_t *>calloc(2 * self.rx.pbins, sizeof(uint32_t))
                    ok = ok and ss.ports[p].slots[k].hist != NULL
        if not ok:
            self._free_session(ss)
            raise MemoryError()
        self.rx.sessions[self.rx.nsessions] = ss
        self.rx.nsessions += 1

    def remove_session(self, uint64_t session):
        cdef int i
        self._idle("remove_session")
        for i in range(self.rx.nsessions):
            if self.rx.sessions[i].id == session:
                self._free_session(self.rx.sessions[i])
                self.rx.sessions[i] = self.rx.sessions[self.rx.nsessions - 1]
                self.rx.nsessions -= 1
                return True
        return False

    def feed(self, data, int64_t rx_ns):
        """Test hook: account one datagram received at `rx_ns` (CLOCK_REALTIME ns), as run() does,
        on the lane the steering program would pick."""
        cdef const uint8_t[:] d = data
        cdef lane_t *ln
        self._idle("feed")
        if len(data) == 0:
            self.lanes[0].c.datagrams += 1
            self.lanes[0].c.malformed += 1
            self.lanes[0].c.by[WIRE_SHORT] += 1
            return
        ln = &self.lanes[steer_lane(&d[0], d.shape[0], self.rx.nlanes)]
        rx_process(&self.rx, ln, &d[0], d.shape[0], rx_ns)

    def run(self, int64_t duration_ns):
        """Receive for `duration_ns` (poll + recvmmsg on every lane, each on its own thread, GIL
        released). Returns this call's RecvResult; the counters are attributes."""
        cdef int64_t t0, before = self.datagrams
        cdef int i, err = 0
        cdef lane_run_t *runs
        if self.lanes[0].fd < 0:
            raise ValueError("this receiver has no socket (feed() only)")
        check_run_ns(duration_ns)
        self._idle("run")
        runs = <lane_run_t *>calloc(self.rx.nlanes, sizeof(lane_run_t))
        if runs == NULL:
            raise MemoryError()
        self.running = True
        t0 = mono_ns()
        for i in range(self.rx.nlanes):
            runs[i].rx = &self.rx
            runs[i].lane = &self.lanes[i]
            runs[i].end = t0 + duration_ns
            runs[i].stop_fd = self.stop_fd
        try:
            with nogil:
                err = run_lanes(runs, self.rx.nlanes)
        finally:
            self.running = False
            free(runs)
        result = RecvResult.make(self.datagrams - before, mono_ns() - t0, err == EINTR)
        loop_end(0 if err == EINTR else err, err == EINTR, "receive lanes", result)
        return result

    def close_through(self, uint64_t session, int64_t interval):
        """Close every open interval of `session` up to `interval`, oldest first.

        Returns a list of {"interval", "ports": [per-port dict], "hist": [[bin, count], ...],
        "counters": {...}} (hist: the session's fine histogram, SESSION_SUB_BITS, summed over
        the lanes; each port's "hist" uses PORT_SUB_BITS). Packets arriving later for a
        closed interval are counted in late_closed, never in it.
        """
        cdef session_t *ss = rx_find(&self.rx, session)
        cdef slot_t *s
        cdef slot_t *nxt
        cdef sess_lane_t *sl
        cdef int p, k, b, j
        cdef int64_t i, most
        if ss == NULL:
            raise KeyError(f"no session {session:016x}")
        self._idle("close_through")
        most = min(MAX_CLOSE, max(1, MAX_CLOSE_RECORDS // ss.nports))
        if interval > ss.last_closed + most:            # (interval - last_closed would overflow)
            raise ValueError(f"cannot close through interval {interval}: {ss.last_closed} is the last closed "
                             f"and one call closes at most {most} intervals of {ss.nports} ports")
        for p in range(ss.nports):             # waiting delays of these intervals: no follow-up now
            if ss.ports[p].pend_seq >= 0 and ss.ports[p].pend_interval <= interval:
                rx_release(&self.rx, &ss.lanes[p % self.rx.nlanes], &ss.ports[p], 0, False)
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
                               hist=[[b, s.hist[b]] for b in range(2 * self.rx.pbins) if s.hist[b]])
                    s.interval = -1
                if rec["next_base"] < 0 and nxt.interval == i + 1 and nxt.base >= 0:
                    rec["next_base"] = nxt.base
                ports.append(rec)
            k = <int>(i % NSLOTS)
            fine = {}
            for j in range(self.rx.nlanes):
                sl = &ss.lanes[j]
                if sl.finterval[k] == i:
                    for b in range(2 * self.rx.fbins):
                        if sl.fhist[k][b]:
                            fine[b] = fine.get(b, 0) + sl.fhist[k][b]
                    sl.finterval[k] = -1
            ss.last_closed = i
            out.append({"interval": i, "ports": ports, "hist": [[b, fine[b]] for b in sorted(fine)]})
            i += 1
        return out

    def session_counters(self, uint64_t session):
        cdef session_t *ss = rx_find(&self.rx, session)
        cdef sess_lane_t *sl
        cdef int j
        cdef int64_t at = -1
        if ss == NULL:
            raise KeyError(f"no session {session:016x}")
        out = dict.fromkeys(("packets", "controls", "late_closed", "overrun", "bad_port", "unsync_seen"), 0)
        out["clock_err_us"] = 0
        for j in range(self.rx.nlanes):
            sl = &ss.lanes[j]
            out["packets"] += sl.packets
            out["controls"] += sl.controls
            out["late_closed"] += sl.late_closed
            out["overrun"] += sl.overrun
            out["bad_port"] += sl.bad_port
            out["unsync_seen"] += sl.unsync_seen
            if sl.clock_err_at > at:             # the latest packet's word on the sender's clock
                at = sl.clock_err_at
                out["clock_err_us"] = sl.clock_err_us
        out["last_closed"] = ss.last_closed
        return out

    cdef rx_counts_t _totals(self) noexcept:
        cdef rx_counts_t t
        cdef int j
        memset(&t, 0, sizeof(t))
        for j in range(self.rx.nlanes):
            counts_add(&t, &self.lanes[j].c)
        return t

    @property
    def datagrams(self):
        return self._totals().datagrams

    @property
    def counters(self):
        """Totals since the receiver began, over every lane. trace: path-trace datagrams (counted
        apart, neither probes nor malformed); cpu_ns: the lanes' CPU time in run()."""
        cdef rx_counts_t t = self._totals()
        cdef int i
        return {"datagrams": t.datagrams, "malformed": t.malformed, "unauthenticated": t.unauthenticated,
                "unknown_session": t.unknown_session, "truncated": t.truncated, "no_kernel_ts": t.no_kernel_ts,
                "trace": t.trace, "misrouted": t.misrouted, "cpu_ns": t.cpu_ns, "lanes": self.rx.nlanes,
                "by_reason": {DECODE_ERRORS[i]: t.by[i] for i in range(WIRE_SHORT, WIRE_TAG_UNEXPECTED + 1) if t.by[i]}}
