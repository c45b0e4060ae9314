# The one periodic timer of the extensions: a CLOCK_MONOTONIC timerfd on an
# absolute grid. Expiration k (k = 1, 2, ...) is due at
# first_ns + (k - 1) * interval_ns. periodic_wait() blocks in read() and
# accounts the expirations it consumed, so a late wake-up is one wake-up that
# consumed several slots, never catch-up work. netprobe._timer's TimerfdPacer
# measures its lateness; netprobe._pacer's TcpPacedSender sends on it.

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint64_t

from linux cimport (errno, EINTR, CLOCK_MONOTONIC, TFD_CLOEXEC, TFD_TIMER_ABSTIME, itimerspec,
                    timerfd_create, timerfd_settime, read, close, ns_to_timespec, raise_errno)

ctypedef struct periodic_t:
    int fd                  # -1: closed
    int64_t interval_ns
    int64_t first_ns        # due time of expiration 1; 0: not armed
    int64_t expirations     # consumed since periodic_arm()


cdef inline int periodic_open(periodic_t *t, int64_t interval_ns) noexcept nogil:
    """A timerfd for `interval_ns` (> 0), not armed; 0, or errno (t.fd stays -1)."""
    t.interval_ns = interval_ns
    t.first_ns = 0
    t.expirations = 0
    t.fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC)
    return errno if t.fd < 0 else 0


cdef inline void periodic_close(periodic_t *t) noexcept nogil:
    if t.fd >= 0:
        close(t.fd)
        t.fd = -1


cdef inline int periodic_arm(periodic_t *t, int64_t first_ns) noexcept nogil:
    """(Re)arm: expiration 1 due at `first_ns` (CLOCK_MONOTONIC, > 0); 0, or errno (not armed)."""
    cdef itimerspec its
    ns_to_timespec(first_ns, &its.it_value)
    ns_to_timespec(t.interval_ns, &its.it_interval)
    t.expirations = 0
    if timerfd_settime(t.fd, TFD_TIMER_ABSTIME, &its, NULL) != 0:
        t.first_ns = 0
        return errno
    t.first_ns = first_ns
    return 0


cdef inline int64_t periodic_due(const periodic_t *t, int64_t k) noexcept nogil:
    """Due time of expiration k (k >= 1)."""
    return t.first_ns + (k - 1) * t.interval_ns


cdef inline int periodic_wait(periodic_t *t, uint64_t *count) noexcept nogil:
    """Block until the next expiration; *count = expirations this wake-up consumed (>= 1).
    0, errno (EINTR: a signal), or -1 (a short read)."""
    cdef ssize_t n = read(t.fd, count, 8)
    if n != 8:
        return errno if n < 0 else -1
    t.expirations += <int64_t>count[0]
    return 0


cdef inline int periodic_raise(int err, object result) except -1:
    """After a loop ended on periodic_wait's `err`: run a signal's Python handler (EINTR) or raise
    OSError with the call's `result` (raise_errno); 0 when err is 0 or EINTR and the handler did
    not raise."""
    if err == EINTR:
        PyErr_CheckSignals()
        return 0
    if err == -1:
        err = 71                        # EPROTO: a read of the timerfd returned other than 8 bytes
    if err != 0:
        raise_errno(err, "timerfd", result)
    return 0
