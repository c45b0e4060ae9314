# UdpProbeSender: the schedule (schedule.pyx) sent with one sendmmsg per port and wake-up,
# from connected UDP sockets or as raw frames (frames.pyx), with TX follow-ups
# (txstamp.pyx); protocol v2 headers, or UDPing v1 headers for udping_client.

cdef enum:
    STALL_NS = 1000000000   # a sender this far behind its schedule resynchronises (slots missed)


cdef class UdpProbeSender:
    """Probes from one connected UDP socket per source port (the caller owns the sockets).

    Packet k is due at the schedule's k-th slot (schedule.pyx). Each wake-up
    sends every due packet, up to 64, with one sendmmsg per port; the send
    time in each packet is CLOCK_REALTIME read just before its batch goes to
    the kernel (after everything else is built, before the tag is computed).
    A packet the kernel refused (EAGAIN, ECONNREFUSED, ...) is counted in
    send_errors and its sequence number reused, so the receiver never sees
    it as lost.

    spin_ns: sleep (clock_nanosleep) until this long before a slot, then
    spin; 0 = sleep only (cheap, late by the host's timer wake-up latency).
    run() sets its thread's timer slack to 1 ns: the kernel's default lets a
    sleep end up to 50 us late, to batch wake-ups.
    """
    cdef int *fds
    cdef readonly int nports
    cdef readonly uint64_t session, start_ns
    cdef readonly int64_t gap_ns, spin_ns
    cdef readonly int min_len, max_len
    cdef readonly bint poisson
    cdef np_hmac_t key
    cdef bint keyed
    cdef readonly uint32_t clock_err_us
    cdef readonly bint unsync
    cdef schedule_t sched
    cdef uint64_t *seq
    cdef uint32_t *count
    cdef uint32_t *prev_count
    cdef readonly uint32_t interval
    cdef uint8_t *bufs
    cdef int slot                  # bytes per batch buffer: frame headers + max_len
    cdef int raw_fd                # raw mode: the AF_PACKET socket (-1: one UDP socket per port)
    cdef frame_t frame
    cdef readonly bint v1          # UDPing v1 headers (compatibility) instead of protocol v2
    cdef uint8_t *guids            # v1: per port, 20 hex characters + NUL
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef int64_t due[BATCH]
    cdef int port_of[BATCH]
    cdef int len_of[BATCH]
    cdef bint running
    cdef readonly bint tx_stamp     # kernel TX times sent as follow-ups (FLAG_TXTIME)
    cdef txfu_t tx
    cdef readonly int64_t sent, send_errors, missed, controls_sent
    cdef readonly int last_errno

    def __cinit__(self, *args, **kwargs):
        self.raw_fd = -1

    def __init__(self, fds, uint64_t session, uint64_t start_ns, int64_t gap_ns, *, int min_len=WIRE_HDR_LEN,
                 int max_len=128, bint poisson=True, int64_t spin_ns=0, key=b"", uint32_t clock_err_us=0,
                 bint unsync=False, uint64_t seed=0, raw=None, bint v1=False, bint tx_stamp=False):
        cdef int i, flags = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
        n = frame_init(&self.frame, raw) if raw is not None else len(fds)
        if not 0 <= spin_ns <= 100_000_000:
            raise ValueError(f"spin must be 0 to 100 ms in ns (got {spin_ns})")
        if v1 and len(key):
            raise ValueError("UDPing v1 probes carry no tag: no key with v1")
        if v1 and tx_stamp:
            raise ValueError("UDPing v1 probes carry no follow-up: no tx_stamp with v1")
        least = V1_HDR_LEN if v1 else WIRE_HDR_LEN + (WIRE_TAG_LEN if len(key) else 0)
        if not least <= min_len <= max_len <= WIRE_MAX_LEN:
            raise ValueError(f"sizes must satisfy {least} <= min_len <= max_len <= {WIRE_MAX_LEN} "
                             f"(got {min_len}, {max_len})")
        sched_init(&self.sched, n, gap_ns, min_len, max_len, poisson,
                   seed if seed else <uint64_t>mono_ns() ^ session)
        txfu_init(&self.tx, n, session)
        self.fds = <int *>calloc(n, sizeof(int))
        self.seq = <uint64_t *>calloc(n, sizeof(uint64_t))
        self.count = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.prev_count = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.slot = self.frame.l2len + max_len
        self.bufs = <uint8_t *>malloc(<size_t>BATCH * self.slot)
        if self.fds == NULL or self.seq == NULL or self.count == NULL or self.prev_count == NULL \
                or self.bufs == NULL:
            raise MemoryError()
        if raw is not None:
            self.raw_fd = raw["fd"]
        for i in range(n):
            self.fds[i] = self.raw_fd if raw is not None else fds[i]
        if tx_stamp:           # driver-level software TX stamps, each queued with a copy of its packet
            for i in range(1 if raw is not None else n):
                if setsockopt(self.fds[i], SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) != 0:
                    PyErr_SetFromErrno(OSError)
        self.tx_stamp = tx_stamp
        self.nports = n
        self.session, self.start_ns, self.gap_ns, self.spin_ns = session, start_ns, gap_ns, spin_ns
        self.min_len, self.max_len, self.poisson = min_len, max_len, poisson
        self.keyed = set_key(&self.key, key)
        self.clock_err_us, self.unsync = clock_err_us, unsync
        memset(self.msgs, 0, sizeof(self.msgs))
        self.v1 = v1
        if v1:
            self.guids = <uint8_t *>calloc(n, 21)
            if self.guids == NULL:
                raise MemoryError()
            self.new_guids()

    def new_guids(self):
        """v1: a fresh random GUID (20 lowercase hex characters) for every port, as UDPing
        does at each wall-clock interval boundary. Returns them."""
        cdef int port, i
        cdef uint64_t x = 0
        if not self.v1:
            raise ValueError("GUIDs belong to v1 mode")
        out = []
        for port in range(self.nports):
            for i in range(V1_GUID_MAX):
                if i % 16 == 0:
                    x = np_prng_next(&self.sched.rng)
                self.guids[21 * port + i] = b"0123456789abcdef"[(x >> (4 * (i % 16))) & 15]
            self.guids[21 * port + V1_GUID_MAX] = 0
            out.append(bytes(self.guids[21 * port:21 * port + V1_GUID_MAX]).decode())
        return out

    def __dealloc__(self):
        free(self.fds)
        free(self.seq)
        free(self.count)
        free(self.prev_count)
        free(self.bufs)
        free(self.guids)
        frame_free(&self.frame)
        txfu_free(&self.tx)

    def set_clock(self, uint32_t clock_err_us, bint unsync):
        """Update the clock error bound and sync flag written into later packets."""
        self.clock_err_us, self.unsync = clock_err_us, unsync

    @property
    def tx_stamps(self):
        """Kernel TX timestamps read back."""
        return self.tx.stamps

    cdef inline int _flags(self) noexcept nogil:
        return (FLAG_AUTH if self.keyed else 0) | (FLAG_UNSYNC if self.unsync else 0)

    cdef void _fill(self, int b, int port, int length, int flags, uint32_t index, uint32_t count,
                    uint64_t seq) noexcept nogil:
        """Build packet b of the batch (send time and tag come at send time)."""
        cdef probe_hdr h
        cdef uint8_t *f = self.bufs + <size_t>b * self.slot
        cdef uint8_t *p = f + self.frame.l2len
        cdef udping_v1 v
        if self.raw_fd >= 0:
            frame_headers(&self.frame, f, port, length)
        self.port_of[b] = port
        self.len_of[b] = length
        if self.v1:
            v.start_s = <int64_t>(self.start_ns // 1000000000)
            memcpy(v.guid, self.guids + 21 * port, 21)
            v.guid_len = V1_GUID_MAX
            v.seq = <uint32_t>seq
            v.sent_sec = 0
            v.sent_nsec = 0
            v.size = length
            push_udping_v1(p, &v)
            np_prng_fill(p + V1_HDR_LEN, length - V1_HDR_LEN, &self.sched.rng)
            return
        h.flags = flags
        h.port = port
        h.session = self.session
        h.start_ns = self.start_ns
        h.seq = seq
        h.send_ns = 0
        h.interval = self.interval
        h.clock_err_us = self.clock_err_us
        h.length = length
        h.index = index
        h.count = count
        push_probe_hdr(p, &h)
        np_prng_fill(p + WIRE_HDR_LEN, length - WIRE_HDR_LEN, &self.sched.rng)

    cdef int _send_batch(self, int nb, int64_t *late, Py_ssize_t cap, Py_ssize_t *nlate,
                         bint control) noexcept nogil:
        """Send packets 0..nb-1, one sendmmsg per port; returns how many the kernel took.
        Data packets the kernel refused give back their sequence numbers and interval slots."""
        cdef int b, j, k, port, r, total = 0, vlen
        cdef int idx[BATCH]
        cdef bint done[BATCH]
        cdef uint8_t *p
        cdef int64_t now_real, now_mono
        for b in range(nb):
            done[b] = False
        for b in range(nb):
            if done[b]:
                continue
            port = self.port_of[b]
            vlen = 0
            for j in range(b, nb):
                if not done[j] and (self.port_of[j] == port or self.raw_fd >= 0):
                    idx[vlen] = j
                    done[j] = True
                    vlen += 1
            if self.tx_stamp:
                txfu_read(&self.tx, self.fds[port])
            now_real = clock_ns(CLOCK_REALTIME)
            now_mono = mono_ns()
            for k in range(vlen):
                j = idx[k]
                p = self.bufs + <size_t>j * self.slot + self.frame.l2len
                if self.v1:
                    store_le64(p + OFF_V1_SENT_SEC, <uint64_t>(now_real // 1000000000))
                    store_le64(p + OFF_V1_SENT_NSEC, <uint64_t>(now_real % 1000000000))
                else:
                    store_be64(p + OFF_SEND, <uint64_t>now_real)
                    txfu_apply(&self.tx, p, self.port_of[j])     # its port (raw mode: a batch mixes them)
                if self.keyed:
                    push_tag(p, self.len_of[j], &self.key)
                if self.raw_fd >= 0:
                    frame_checksum(&self.frame, p - self.frame.l2len, self.len_of[j])
                self.iov[k].iov_base = p - self.frame.l2len
                self.iov[k].iov_len = self.frame.l2len + self.len_of[j]
                self.msgs[k].msg_hdr.msg_iov = &self.iov[k]
                self.msgs[k].msg_hdr.msg_iovlen = 1
            r = sendmmsg(self.fds[port], self.msgs, vlen, MSG_DONTWAIT)
            if r < 0:
                self.last_errno = errno
                r = 0
            if r < vlen:
                self.send_errors += vlen - r
                if not control:
                    for k in range(r, vlen):                # a suffix of each port's packets here
                        self.seq[self.port_of[idx[k]]] -= 1
                        self.count[self.port_of[idx[k]]] -= 1
            if late != NULL:
                for k in range(r):
                    if nlate[0] < cap:
                        late[nlate[0]] = now_mono - self.due[idx[k]]
                        nlate[0] += 1
            total += r
        return total

    def run(self, int64_t duration_ns, int64_t[:] late_out=None):
        """Send on schedule for `duration_ns`, GIL released; the schedule carries over calls.

        late_out (optional) receives each sent probe's send-time error: when
        its batch went to the kernel minus its scheduled time, ns (until full).
        Returns this call's SendResult. A signal ends the call early (interrupted).
        """
        cdef int64_t t0, now, end, wake
        cdef int nb, port, length, flags, err = 0
        cdef Py_ssize_t nlate = 0
        cdef int64_t sent = 0, errors0 = self.send_errors, missed = 0
        cdef int64_t *late = NULL
        cdef Py_ssize_t cap = 0
        cdef timespec ts
        cdef schedule_t *sc = &self.sched
        if late_out is not None and late_out.shape[0] > 0:
            late = &late_out[0]
            cap = late_out.shape[0]
        if self.running:
            raise RuntimeError("run() is already running")
        check_run_ns(duration_ns)
        self.running = True
        t0 = mono_ns()
        end = t0 + duration_ns
        if sc.next_due == 0:
            sc.next_due = t0
        flags = self._flags()
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        try:
            with nogil:
                while True:
                    now = mono_ns()
                    if sc.next_due >= end:
                        if now >= end:
                            break
                        wake = end
                    else:
                        wake = sc.next_due
                    if wake > now:
                        if wake - now > self.spin_ns:
                            ns_to_timespec(wake - self.spin_ns, &ts)
                            if clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR:
                                err = EINTR
                                break
                        now = mono_ns()
                        while now < wake:
                            now = mono_ns()
                    if now - sc.next_due > STALL_NS:        # descheduled for long: skip, do not burst
                        missed += sched_skip(sc, now)
                        continue
                    nb = 0
                    while nb < BATCH and sc.next_due <= now and sc.next_due < end:
                        self.due[nb] = sc.next_due
                        port = sched_take(sc, &length)
                        self._fill(nb, port, length, flags, self.count[port], self.prev_count[port],
                                   self.seq[port])
                        self.seq[port] += 1
                        self.count[port] += 1
                        nb += 1
                    if nb:
                        sent += self._send_batch(nb, late, cap, &nlate, False)
        finally:
            self.running = False
            self.sent += sent
            self.missed += missed
        if err == EINTR:
            PyErr_CheckSignals()
        return SendResult.make(sent, self.send_errors - errors0, missed, nlate, mono_ns() - t0, err == EINTR)

    def end_interval(self, int copies=3):
        """Close the current interval: `copies` control records per port (header and tag only;
        seq = the port's next sequence number, count = packets it sent in the interval), then
        start the next one.
        Returns the closed interval's per-port sent counts."""
        cdef int port, c, nb, flags
        cdef Py_ssize_t nlate = 0
        if self.running:
            raise RuntimeError("end_interval() while run() is running")
        if not (0 if self.v1 else 1) <= copies <= 16 or (self.v1 and copies):
            raise ValueError(f"copies must be 1 to 16, or 0 in v1 mode, which has no control records (got {copies})")
        flags = self._flags() | FLAG_CONTROL
        sent = [self.count[port] for port in range(self.nports)]
        with nogil:
            for port in range(self.nports):
                nb = 0
                for c in range(copies):
                    self._fill(nb, port, WIRE_HDR_LEN + (WIRE_TAG_LEN if self.keyed else 0), flags, c,
                               self.count[port], self.seq[port])
                    nb += 1
                self.controls_sent += self._send_batch(nb, NULL, 0, &nlate, True)
                self.prev_count[port] = self.count[port]
                self.count[port] = 0
            self.interval += 1
        return sent

    @property
    def next_due(self):
        """CLOCK_MONOTONIC ns of the next probe's slot (0 before the first run): when a caller
        driving several senders from one thread must call run() again."""
        return self.sched.next_due

    @property
    def next_seq(self):
        return [self.seq[i] for i in range(self.nports)]
