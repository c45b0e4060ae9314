# netprobe._train, included by pyx/train.pyx: TrainReceiver, every train packet of
# one session taken off the socket with recvmmsg() into one row each, with its
# kernel RX timestamp.


cdef class ReceiveResult:
    """One TrainReceiver.run() call (read-only): rows written, datagrams read, and those dropped:
    malformed, truncated, foreign (another session's token); user_ts (rows without a kernel
    stamp); elapsed_ns; interrupted (a signal ended it)."""
    cdef readonly Py_ssize_t rows
    cdef readonly int64_t datagrams, malformed, truncated, foreign, user_ts, elapsed_ns
    cdef readonly bint interrupted

    def __repr__(self):
        return (f"ReceiveResult(rows={self.rows}, datagrams={self.datagrams}, malformed={self.malformed}, "
                f"truncated={self.truncated}, foreign={self.foreign}, user_ts={self.user_ts}, "
                f"elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class TrainReceiver(_TrainEnd):
    """Receives train packets of one session (token) from a UDP socket the caller owns.

    Turns on kernel RX software stamps (SO_TIMESTAMPING): each accepted
    packet's row carries the kernel's RX time (CLOCK_REALTIME ns; differences
    are what matter). Counters since construction: packets (accepted),
    malformed (bad header, size field not the length), truncated (longer than
    MAX_SIZE), foreign (another session's token), user_ts (no kernel timestamp
    came, as for a packet that arrived before the kernel turned stamping on:
    rx_ns is user space and flagged).
    """
    cdef uint8_t *bufs
    cdef uint8_t *ctrl
    cdef readonly int64_t packets, malformed, truncated, foreign, user_ts

    def __cinit__(self, *args, **kwargs):
        self.bufs = NULL
        self.ctrl = NULL

    def __init__(self, int fd, uint32_t token, int rcvbuf=8 << 20):
        self._open(fd, token, C_RX_BATCH, C_RX_BATCH)
        if rx_stamps_on(fd) != 0:
            raise OSError(errno, f"SO_TIMESTAMPING: {strerror(errno).decode()}")
        self._set_buf(rcvbuf, SO_RCVBUFFORCE, SO_RCVBUF)
        self.bufs = <uint8_t *>malloc(C_RX_BATCH * (C_MAX_SIZE + 1))
        self.ctrl = <uint8_t *>malloc(C_RX_BATCH * C_CTRL_LEN)
        if self.bufs == NULL or self.ctrl == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.bufs)
        free(self.ctrl)

    def drain(self):
        """Discard whatever is queued now (stale packets of an earlier request); returns how many."""
        scratch = _np.empty((C_RX_BATCH, RX_NCOLS), dtype=_np.int64)
        total = 0
        while True:
            got = self.run(scratch, C_RX_BATCH, 0, 0)
            self.packets -= got.rows
            total += got.datagrams
            if got.datagrams == 0:
                return total

    def run(self, int64_t[:, ::1] rows not None, int64_t expected, int64_t idle_ns, int64_t max_ns):
        """Receive until `expected` packets are accepted, rows is full, nothing came for
        idle_ns (counted from the call or the last datagram), or max_ns passed.

        idle_ns = max_ns = 0 takes only what is queued now. A signal ends the
        call early (its handler runs first). Returns this call's
        ReceiveResult; rows[0:rows] hold the packets in arrival order. A
        failed recvmmsg()/poll() raises OSError with the ReceiveResult so far
        as .result.
        """
        cdef Py_ssize_t cap = rows.shape[0], nrows = 0
        cdef int64_t t0, now, last, end, wait, datagrams = 0
        cdef int64_t malformed = 0, truncated = 0, foreign = 0, user_ts = 0, ts_ns, user_now
        cdef int r, i, err = 0, perr = 0
        cdef unsigned int flags
        cdef header_t h
        cdef pollfd pfd = poll_in(self.fd)
        cdef msghdr *mh
        cdef ReceiveResult res
        if rows.shape[1] != RX_NCOLS:
            raise ValueError(f"rows needs {RX_NCOLS} columns")
        if not (0 <= idle_ns <= MAX_WAIT_NS and 0 <= max_ns <= MAX_WAIT_NS):
            raise ValueError(f"idle_ns and max_ns must be 0 to {MAX_WAIT_NS} ns (got {idle_ns}, {max_ns})")
        if self.msgs == NULL:
            raise ValueError("TrainReceiver was not initialised")
        if self.running:
            raise RuntimeError("run() is already running")
        self.running = True
        t0 = mono_ns()
        last = t0
        end = t0 + max_ns
        try:
            with nogil:
                while nrows < cap and nrows < expected:
                    for i in range(C_RX_BATCH):
                        self.iov[i].iov_base = self.bufs + i * (C_MAX_SIZE + 1)
                        self.iov[i].iov_len = C_MAX_SIZE + 1
                        memset(&self.msgs[i].msg_hdr, 0, sizeof(msghdr))
                        self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
                        self.msgs[i].msg_hdr.msg_iovlen = 1
                        self.msgs[i].msg_hdr.msg_control = self.ctrl + i * C_CTRL_LEN
                        self.msgs[i].msg_hdr.msg_controllen = C_CTRL_LEN
                    r = recvmmsg(self.fd, self.msgs, C_RX_BATCH, MSG_DONTWAIT, NULL)
                    if r < 0:
                        if errno == EINTR:
                            perr = EINTR
                            break
                        if errno != EAGAIN:
                            err = errno
                            break
                        now = mono_ns()
                        wait = last + idle_ns - now
                        if end - now < wait:
                            wait = end - now
                        if wait <= 0 or poll_ns(&pfd, 1, wait, &err, &perr) < 0:
                            break
                        continue
                    last = mono_ns()
                    user_now = clock_ns(CLOCK_REALTIME)
                    datagrams += r
                    for i in range(r):
                        mh = &self.msgs[i].msg_hdr
                        if mh.msg_flags & MSG_TRUNC or self.msgs[i].msg_len > C_MAX_SIZE:
                            truncated += 1
                            continue
                        if pull_header(self.bufs + i * (C_MAX_SIZE + 1), self.msgs[i].msg_len, &h) != P_OK:
                            malformed += 1
                            continue
                        if h.token != self.token:
                            foreign += 1
                            continue
                        if nrows >= cap:
                            continue                # counted in datagrams, not stored: rows is full
                        ts_ns = sw_stamp_ns(mh)
                        flags = 1 if h.flags & 1 else 0
                        if ts_ns < 0:
                            ts_ns = user_now
                            flags |= 2
                            user_ts += 1
                        rows[nrows, 0] = h.train
                        rows[nrows, 1] = h.index
                        rows[nrows, 2] = h.count
                        rows[nrows, 3] = h.size
                        rows[nrows, 4] = ts_ns
                        rows[nrows, 5] = flags
                        nrows += 1
        finally:
            self.running = False
            self.packets += nrows
            self.malformed += malformed
            self.truncated += truncated
            self.foreign += foreign
            self.user_ts += user_ts
        res = ReceiveResult.__new__(ReceiveResult)
        res.rows, res.datagrams, res.malformed, res.truncated = nrows, datagrams, malformed, truncated
        res.foreign, res.user_ts = foreign, user_ts
        res.elapsed_ns, res.interrupted = mono_ns() - t0, perr == EINTR
        loop_end(err, res.interrupted, "recvmmsg", res)
        return res
