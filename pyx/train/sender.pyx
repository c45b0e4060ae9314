# netprobe._train, included by pyx/train.pyx: TrainSender, a plan of trains sent
# with one sendmmsg() each and a clock_nanosleep() gap after each.


cdef class SendResult:
    """One TrainSender.send() call (read-only): trains, packets and bytes handed to the kernel
    (a train's bytes count when all of it was), elapsed_ns, interrupted (a signal ended it)."""
    cdef readonly int64_t trains, packets, bytes, elapsed_ns
    cdef readonly bint interrupted

    def __repr__(self):
        return (f"SendResult(trains={self.trains}, packets={self.packets}, bytes={self.bytes}, "
                f"elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class TrainSender(_TrainEnd):
    """Sends planned trains on a connected UDP socket the caller owns.

    send(plan, sent) sends plan rows (train, count, size, primers,
    primer_size, gap_ns) in order. A row is one train: `count` packets in
    one sendmmsg() call; the first `primers` of them (0..count-2) are
    primers of primer_size bytes (flag bit 0), the rest have `size` bytes. After a train the loop sleeps
    gap_ns from the end of its sendmmsg(). sent[i] gets (t_start_ns, t_end_ns,
    packets, bytes) on CLOCK_MONOTONIC around the call: the time the host took
    to hand the train to the kernel, an upper bound on how spread out it left.
    """
    cdef uint8_t *headers
    cdef uint8_t *filler
    cdef readonly int64_t trains, packets, bytes_sent, short_sends, errors
    cdef readonly int error

    def __cinit__(self, *args, **kwargs):
        self.headers = NULL
        self.filler = NULL

    def __init__(self, int fd, uint32_t token, int sndbuf=4 << 20):
        cdef uint64_t seed = 0x6e657470726f6265ULL
        self._open(fd, token, C_MAX_TRAIN, 2 * C_MAX_TRAIN)
        # a whole train must fit, or sendmmsg blocks half-way and splits it
        self._set_buf(sndbuf, SO_SNDBUFFORCE, SO_SNDBUF)
        self.headers = <uint8_t *>calloc(C_MAX_TRAIN, C_HEADER_LEN)
        self.filler = <uint8_t *>malloc(C_MAX_SIZE)
        if self.headers == NULL or self.filler == NULL:
            raise MemoryError()
        np_prng_fill(self.filler, C_MAX_SIZE, &seed)     # filler nothing on the path can compress away

    def __dealloc__(self):
        free(self.headers)
        free(self.filler)

    def send(self, int64_t[:, ::1] plan not None, int64_t[:, ::1] sent not None):
        """Send every train of `plan`; returns a SendResult.

        A send error ends the call: OSError with the SendResult so far as
        .result (the errno is also kept in .error). A signal ends it early
        (its Python handler runs first). Rows are checked before anything is
        sent: ValueError names the first bad one.
        """
        cdef Py_ssize_t n = plan.shape[0], i, k
        cdef int64_t t0, t1, due, nbytes, count, size, psize, gap, primers
        cdef int64_t done_packets = 0, done_bytes = 0, trains = 0
        cdef int r, off, err = 0, serr = 0
        cdef header_t h
        cdef timespec ts
        cdef SendResult res
        if plan.shape[1] != PLAN_NCOLS or sent.shape[1] != SENT_NCOLS:
            raise ValueError(f"plan needs {PLAN_NCOLS} columns and sent {SENT_NCOLS}")
        if sent.shape[0] < n:
            raise ValueError("sent needs a row per plan row")
        if self.msgs == NULL:
            raise ValueError("TrainSender was not initialised")
        for i in range(n):
            count, size, primers, psize, gap = plan[i, 1], plan[i, 2], plan[i, 3], plan[i, 4], plan[i, 5]
            if not (2 <= count <= MAX_TRAIN and HEADER_LEN <= size <= MAX_SIZE
                    and 0 <= primers <= count - 2
                    and (primers == 0 or HEADER_LEN <= psize <= MAX_SIZE) and 0 <= gap <= 10**10
                    and 0 <= plan[i, 0] <= 0xffffffff):
                raise ValueError(f"plan row {i}: needs 2 <= count <= {MAX_TRAIN}, {HEADER_LEN} <= size <= "
                                 f"{MAX_SIZE}, 0 <= primers <= count - 2 of a valid primer_size, "
                                 "0 <= gap_ns <= 10 s")
        if self.running:
            raise RuntimeError("send() is already running")
        self.running = True
        t0 = mono_ns()
        due = t0
        try:
            with nogil:
                for i in range(n):
                    count, size, primers, psize = plan[i, 1], plan[i, 2], plan[i, 3], plan[i, 4]
                    if due > mono_ns():
                        ns_to_timespec(due, &ts)
                        r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
                        if r == EINTR:
                            serr = EINTR
                            break
                    h.count = <uint16_t>count
                    h.token = self.token
                    h.train = <uint32_t>plan[i, 0]
                    nbytes = 0
                    for k in range(count):
                        h.index = <uint16_t>k
                        h.flags = 1 if k < primers else 0
                        h.size = <uint16_t>(psize if h.flags else size)
                        push_header(self.headers + k * C_HEADER_LEN, &h)
                        self.iov[2 * k].iov_base = self.headers + k * C_HEADER_LEN
                        self.iov[2 * k].iov_len = C_HEADER_LEN
                        self.iov[2 * k + 1].iov_base = self.filler
                        self.iov[2 * k + 1].iov_len = h.size - C_HEADER_LEN
                        memset(&self.msgs[k].msg_hdr, 0, sizeof(msghdr))
                        self.msgs[k].msg_hdr.msg_iov = &self.iov[2 * k]
                        self.msgs[k].msg_hdr.msg_iovlen = 2
                        nbytes += h.size
                    off = 0
                    t1 = mono_ns()
                    sent[i, 0] = t1
                    while off < count:
                        r = sendmmsg(self.fd, &self.msgs[off], <unsigned int>(count - off), 0)
                        if r < 0:
                            if errno == EINTR:
                                continue
                            err = errno
                            break
                        if r < count - off:
                            self.short_sends += 1
                        off += r
                    sent[i, 1] = mono_ns()
                    sent[i, 2] = off
                    sent[i, 3] = nbytes if off == count else 0
                    trains += 1
                    done_packets += off
                    if off == count:
                        done_bytes += nbytes
                    if err != 0:
                        break
                    due = sent[i, 1] + plan[i, 5]
        finally:
            self.running = False
            self.trains += trains
            self.packets += done_packets
            self.bytes_sent += done_bytes
            if err != 0:
                self.errors += 1
                self.error = err
        res = SendResult.__new__(SendResult)
        res.trains, res.packets, res.bytes = trains, done_packets, done_bytes
        res.elapsed_ns, res.interrupted = mono_ns() - t0, serr == EINTR
        loop_end(err, res.interrupted, "sendmmsg", res)
        return res
