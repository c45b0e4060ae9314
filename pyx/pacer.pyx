# netprobe._pacer: the periodic timer loop and the token bucket test hook.
#
# TimerfdPacer owns one CLOCK_MONOTONIC timerfd and one blocking read() loop
# with the GIL released. Python sees one call per chunk (<= ~100 ms): it
# passes a preallocated int64 buffer and gets counters back.

from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.stdint cimport int64_t, uint64_t

from bucket cimport (bucket_t, bucket_init, bucket_refill, bucket_available,
                     bucket_take, bucket_try, bucket_wait_ns, BUCKET_MAX_DEPTH,
                     BUCKET_MAX_RATE)
from linux cimport (errno, EINTR, CLOCK_MONOTONIC, TFD_CLOEXEC,
                    TFD_TIMER_ABSTIME, itimerspec, timerfd_create,
                    timerfd_settime, read, close, strerror, mono_ns,
                    ns_to_timespec)


cdef class TokenBucket:
    """Test hook over bucket.pxd: a token bucket driven by explicit `now_ns`.

    rate in bit/s, depth in bytes; starts full. take() refills first, then
    takes what it can (possibly less than asked); try_take() all or nothing.
    """
    cdef bucket_t b

    def __init__(self, int64_t rate_bps, int64_t depth_bytes, int64_t now_ns):
        if bucket_init(&self.b, rate_bps, depth_bytes, now_ns) != 0:
            raise ValueError(
                f"token bucket needs 1 <= rate <= {BUCKET_MAX_RATE} bit/s and "
                f"1 <= depth <= {BUCKET_MAX_DEPTH} bytes (got {rate_bps}, {depth_bytes})")

    def refill(self, int64_t now_ns):
        bucket_refill(&self.b, now_ns)

    def take(self, int64_t n, int64_t now_ns):
        """Refill to `now_ns`, then take up to `n` bytes; returns bytes taken."""
        bucket_refill(&self.b, now_ns)
        return bucket_take(&self.b, n)

    def try_take(self, int64_t n, int64_t now_ns):
        """Refill to `now_ns`, then take exactly `n` bytes (True) or nothing (False)."""
        bucket_refill(&self.b, now_ns)
        return bucket_try(&self.b, n)

    def available(self, int64_t now_ns):
        """Refill to `now_ns`; whole bytes available."""
        bucket_refill(&self.b, now_ns)
        return bucket_available(&self.b)

    def wait_ns(self, int64_t n, int64_t now_ns):
        """ns from `now_ns` until `n` bytes are available (-1: more than the depth)."""
        return bucket_wait_ns(&self.b, n, now_ns)

    @property
    def rate_bps(self):
        return self.b.rate_bps

    @property
    def credit_nbit(self):
        """Exact state: available credit in nanobits (1 byte = 8e9)."""
        return self.b.credit

    @property
    def last_ns(self):
        return self.b.last_ns


cdef class TimerfdPacer:
    """A periodic CLOCK_MONOTONIC timerfd that measures its own wake-up lateness.

    start() arms it: expiration k (k = 1, 2, ...) is due at
    first_ns + (k - 1) * interval_ns. run() then reads it in a blocking loop.
    The schedule keeps running between run() calls, so a caller can loop over
    short chunks (checking its stop flag in between) without losing or
    shifting a slot. Late wake-ups never turn into catch-up work: a read that
    returns several expirations is one tick plus overruns.
    """
    cdef int fd
    cdef readonly int64_t interval_ns
    cdef readonly int64_t first_ns      # due time of expiration 1 (0: not armed)
    cdef readonly int64_t expirations   # consumed since start(): ticks + overruns

    def __cinit__(self, int64_t interval_ns):
        self.fd = -1
        if interval_ns <= 0:
            raise ValueError(f"timer interval must be > 0 ns (got {interval_ns})")
        self.interval_ns = interval_ns
        self.fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC)
        if self.fd < 0:
            PyErr_SetFromErrno(OSError)

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    def close(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef int _check_open(self) except -1:
        if self.fd < 0:
            raise ValueError("TimerfdPacer is closed")
        return 0

    def start(self):
        """(Re)arm: first expiration one interval from now; counters restart."""
        cdef itimerspec its
        self._check_open()
        self.first_ns = mono_ns() + self.interval_ns
        ns_to_timespec(self.first_ns, &its.it_value)
        ns_to_timespec(self.interval_ns, &its.it_interval)
        if timerfd_settime(self.fd, TFD_TIMER_ABSTIME, &its, NULL) != 0:
            self.first_ns = 0
            PyErr_SetFromErrno(OSError)
        self.expirations = 0

    def run(self, int64_t[:] lateness_out not None, Py_ssize_t max_ticks, int64_t duration_ns):
        """Wait for up to `max_ticks` wake-ups, returning once `duration_ns` has passed.

        Lateness of each wake-up (now minus the due time of the latest
        expiration it consumed, ns) goes to lateness_out[0:ticks]. The call
        ends at the first wake-up at or after start + duration_ns, when the
        buffer (or max_ticks) is full, or early when a signal interrupts the
        read (its Python handler runs before this returns). Arms the timer
        if start() was not called.

        Returns {"ticks", "overruns", "missed", "elapsed_ns", "interrupted"}:
        overruns = expirations that got no wake-up of their own (read count
        - 1, summed); missed = wake-ups that came after the next slot was
        already due (each such stall skipped >= 1 slot).
        """
        cdef Py_ssize_t limit = lateness_out.shape[0]
        cdef Py_ssize_t ticks = 0
        cdef int64_t overruns = 0, missed = 0
        cdef int64_t t_start, now = 0, exp, interval = self.interval_ns
        cdef int64_t first
        cdef uint64_t count = 0
        cdef ssize_t nread
        cdef int err = 0
        self._check_open()
        if duration_ns <= 0:
            raise ValueError(f"duration must be > 0 ns (got {duration_ns})")
        if self.first_ns == 0:
            self.start()
        if max_ticks < limit:
            limit = max_ticks
        first = self.first_ns
        exp = self.expirations
        t_start = mono_ns()
        now = t_start
        with nogil:
            while ticks < limit:
                nread = read(self.fd, &count, 8)
                if nread != 8:
                    err = errno if nread < 0 else -1
                    break
                now = mono_ns()
                exp += <int64_t>count
                lateness_out[ticks] = now - (first + (exp - 1) * interval)
                ticks += 1
                if count > 1:
                    overruns += <int64_t>count - 1
                    missed += 1
                if now - t_start >= duration_ns:
                    break
        self.expirations = exp
        if err == EINTR:
            PyErr_CheckSignals()
        elif err == -1:
            raise OSError("short read from timerfd")
        elif err != 0:
            raise OSError(err, strerror(err).decode())
        return {"ticks": ticks, "overruns": overruns, "missed": missed,
                "elapsed_ns": now - t_start, "interrupted": err == EINTR}
