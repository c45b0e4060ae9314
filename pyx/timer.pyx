# netprobe._timer: the host probe's periodic timer (timerfd.pxd), which
# measures its own wake-up lateness.
#
# TimerfdPacer reads the timerfd in a blocking loop with the GIL released.
# Python sees one call per chunk (<= ~100 ms): it passes a preallocated int64
# buffer and gets counters back.

from cpython.exc cimport PyErr_SetFromErrno
from libc.stdint cimport int64_t, uint64_t

from linux cimport EINTR, mono_ns
from timerfd cimport (periodic_t, periodic_open, periodic_close, periodic_arm, periodic_due,
                      periodic_wait, periodic_raise)

MAX_INTERVAL_NS = MAX_DURATION_NS = 86_400 * 10**9   # a day: due times stay far inside int64


cdef class TimerRun:
    """One TimerfdPacer.run() call (read-only).

    ticks: wake-ups, one lateness sample each; overruns: expirations that got
    no wake-up of their own; missed: wake-ups that came after the next slot
    was already due; elapsed_ns; interrupted: a signal ended the call.
    """
    cdef readonly Py_ssize_t ticks
    cdef readonly int64_t overruns, missed, elapsed_ns
    cdef readonly bint interrupted

    def __repr__(self):
        return (f"TimerRun(ticks={self.ticks}, overruns={self.overruns}, missed={self.missed}, "
                f"elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class TimerfdPacer:
    """A periodic CLOCK_MONOTONIC timerfd that measures its own wake-up lateness.

    start() arms it: expiration k (k = 1, 2, ...) is due at
    first_ns + (k - 1) * interval_ns. run() then reads it in a blocking loop.
    The schedule keeps running between run() calls, so a caller can loop over
    short chunks (checking its stop flag in between) without losing or
    shifting a slot. Late wake-ups never turn into catch-up work: a read that
    returns several expirations is one tick plus overruns.
    """
    cdef periodic_t t

    def __cinit__(self, int64_t interval_ns):
        self.t.fd = -1
        if not 0 < interval_ns <= MAX_INTERVAL_NS:
            raise ValueError(f"timer interval must be 1 ns to 1 day (got {interval_ns} ns)")
        if periodic_open(&self.t, interval_ns) != 0:
            PyErr_SetFromErrno(OSError)

    def __dealloc__(self):
        periodic_close(&self.t)

    def close(self):
        periodic_close(&self.t)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def interval_ns(self):
        return self.t.interval_ns

    @property
    def first_ns(self):
        """Due time of expiration 1 (0: not armed)."""
        return self.t.first_ns

    @property
    def expirations(self):
        """Consumed since start(): ticks + overruns."""
        return self.t.expirations

    cdef int _check_open(self) except -1:
        if self.t.fd < 0:
            raise ValueError("TimerfdPacer is closed")
        return 0

    def start(self):
        """(Re)arm: first expiration one interval from now; counters restart."""
        self._check_open()
        if periodic_arm(&self.t, mono_ns() + self.t.interval_ns) != 0:
            PyErr_SetFromErrno(OSError)

    def run(self, int64_t[:] lateness_out not None, Py_ssize_t max_ticks, int64_t duration_ns):
        """Wait for up to `max_ticks` wake-ups, returning once `duration_ns` has passed.

        Lateness of each wake-up (now minus the due time of the latest
        expiration it consumed, ns) goes to lateness_out[0:ticks]. The call
        ends at the first wake-up at or after start + duration_ns, when the
        buffer (or max_ticks) is full, or early when a signal interrupts the
        read (its Python handler runs before this returns). Arms the timer
        if start() was not called.

        Returns a TimerRun: overruns = expirations that got no wake-up of
        their own (read count - 1, summed); missed = wake-ups that came after
        the next slot was already due (each such stall skipped >= 1 slot).
        A failed read raises OSError with the TimerRun so far as .result.
        """
        cdef Py_ssize_t limit = lateness_out.shape[0]
        cdef Py_ssize_t ticks = 0
        cdef int64_t overruns = 0, missed = 0
        cdef int64_t t_start, now
        cdef uint64_t count = 0
        cdef int err = 0
        cdef TimerRun res
        self._check_open()
        if not 0 < duration_ns <= MAX_DURATION_NS:
            raise ValueError(f"duration must be 1 ns to 1 day (got {duration_ns} ns)")
        if self.t.first_ns == 0:
            self.start()
        if max_ticks < limit:
            limit = max_ticks
        t_start = mono_ns()
        now = t_start
        with nogil:
            while ticks < limit:
                err = periodic_wait(&self.t, &count)
                if err != 0:
                    break
                now = mono_ns()
                lateness_out[ticks] = now - periodic_due(&self.t, self.t.expirations)
                ticks += 1
                if count > 1:
                    overruns += <int64_t>count - 1
                    missed += 1
                if now - t_start >= duration_ns:
                    break
        res = TimerRun.__new__(TimerRun)
        res.ticks = ticks
        res.overruns = overruns
        res.missed = missed
        res.elapsed_ns = now - t_start
        res.interrupted = err == EINTR
        periodic_raise(err, res)
        return res
