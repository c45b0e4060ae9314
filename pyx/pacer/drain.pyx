# netprobe._pacer, included by pyx/pacer.pyx: TcpDrain, the receiving end of a
# paced flow, which reads and discards and writes the same TCP_INFO sample rows.


cdef class DrainRun:
    """One TcpDrain.run() call (read-only): rows written, bytes_received (this call), app_bytes
    (since construction), elapsed_ns, eof (the peer closed: sticky), interrupted."""
    cdef readonly Py_ssize_t rows
    cdef readonly int64_t bytes_received, app_bytes, elapsed_ns
    cdef readonly bint eof, interrupted

    def __repr__(self):
        return (f"DrainRun(rows={self.rows}, bytes_received={self.bytes_received}, app_bytes={self.app_bytes}, "
                f"elapsed_ns={self.elapsed_ns}, eof={self.eof}, interrupted={self.interrupted})")


cdef class TcpDrain:
    """The receiving end: reads and discards in a poll() loop, GIL released.

    Same run() signature and sample schedule as TcpPacedSender (app_bytes =
    bytes read so far). pause(True) stops reading (rows continue) so a test
    can play a receiver that stalls; pause(False) resumes. The socket is the
    caller's.
    """
    cdef int fd
    cdef char *buf
    cdef readonly Py_ssize_t bufsize
    cdef bint paused, running
    cdef int64_t next_sample_ns
    cdef readonly int64_t bytes_received
    cdef readonly bint eof
    cdef readonly int error

    def __cinit__(self, *args, **kwargs):
        self.buf = NULL

    def __init__(self, int fd, Py_ssize_t bufsize=1 << 20):
        if not 1 <= bufsize <= 1 << 30:
            raise ValueError(f"bufsize must be 1 byte to 1 GiB (got {bufsize})")
        _check_tcp(fd)
        self.buf = <char *>malloc(bufsize)
        if self.buf == NULL:
            raise MemoryError()
        self.fd = fd
        self.bufsize = bufsize

    def __dealloc__(self):
        free(self.buf)

    def pause(self, bint paused=True):
        """Stop (True) or resume (False) reading; safe to call from another thread during run()."""
        self.paused = paused

    def run(self, int64_t[:, ::1] samples not None, int64_t duration_ns, int64_t sample_every_ns,
            int64_t epoch):
        """Read and discard for `duration_ns`, writing rows as TcpPacedSender.run() does.

        Ends early when the peer closes (eof, sticky: a DrainRun field) or
        recv() fails (OSError with the DrainRun so far as .result; sticky:
        later runs raise it again). A signal ends the call early. Returns
        this call's DrainRun.
        """
        cdef sampler_t smp
        cdef int64_t t_start, now, end, wait
        cdef int64_t total = self.bytes_received, got = 0
        cdef int err = 0, perr = 0, one = 1
        cdef bint more = False, eof = self.eof
        cdef DrainRun res
        cdef pollfd pfd = poll_in(self.fd)
        cdef ssize_t r
        cdef size_t size = self.bufsize
        cdef char *buf = self.buf
        _sampler_init(&smp, samples, duration_ns, sample_every_ns, epoch)
        if self.buf == NULL:
            raise ValueError("TcpDrain was not initialised")
        if self.running:
            raise RuntimeError("run() is already running")
        t_start = mono_ns()
        if self.next_sample_ns == 0:
            self.next_sample_ns = t_start
        smp.next_ns = self.next_sample_ns
        end = t_start + duration_ns
        err = self.error
        self.running = True
        try:
            with nogil:
                while err == 0 and not eof:
                    now = mono_ns()
                    err = sample_if_due(&smp, pfd.fd, &now, total)
                    if err != 0 or now >= end:
                        break
                    wait = end - now
                    if smp.n < smp.cap and smp.next_ns - now < wait:    # > 0: a due row was just written
                        wait = smp.next_ns - now
                    if self.paused:
                        more = False
                        if wait > 5_000_000:
                            wait = 5_000_000                # sees pause(False) within 5 ms
                        if poll_ns(NULL, 0, wait, &err, &perr) < 0:   # only a signal can fail it
                            break
                        continue
                    if not more:
                        r = poll_ns(&pfd, 1, wait, &err, &perr)
                        if r < 0:
                            break
                        if r == 0 or self.paused:
                            continue
                    r = recv(pfd.fd, buf, size, MSG_DONTWAIT)
                    if r > 0:
                        total += r
                        got += r
                        # ACK at once, not after the delayed-ACK timer: the sender's RTT
                        # samples then measure the path (quick-ack mode is not sticky)
                        setsockopt(pfd.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one))
                        more = <size_t>r == size            # likely more queued: skip the next poll
                    elif r == 0:
                        eof = True
                    else:
                        more = False
                        if errno != EAGAIN and errno != EINTR:
                            err = errno
                now = mono_ns()
        finally:
            self.running = False
            self.next_sample_ns = smp.next_ns
            self.bytes_received = total
            self.eof = eof
            self.error = err
        res = DrainRun.__new__(DrainRun)
        res.rows, res.bytes_received, res.app_bytes = smp.n, got, total
        res.elapsed_ns, res.eof, res.interrupted = now - t_start, eof, perr == EINTR
        loop_end(err, res.interrupted, "recv", res)
        return res
