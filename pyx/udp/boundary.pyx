# What the oneway extensions check and raise at their Python boundary: the per-packet
# loops never raise, they count; a call's arguments and a decoder's verdict are checked
# here, once.

cdef int64_t MAX_RUN_NS = 86_400_000_000_000   # longest run() call: a day (end and poll timeouts fit)


class DecodeError(ValueError):
    """A datagram that is not a valid probe; `offset` is the first byte found wrong."""

    def __init__(self, message, offset):
        super().__init__(f"{message} at offset {offset}")
        self.offset = offset


cdef const uint8_t *datagram(const uint8_t[:] d, dict errors) except NULL:
    """The first byte of a datagram a Python caller asked to decode (`d` must outlive its use);
    DecodeError(errors[WIRE_SHORT], 0) if it is empty."""
    if d.shape[0] == 0:
        raise DecodeError(errors[WIRE_SHORT], 0)
    return &d[0]


cdef int decoded(int r, size_t off, dict errors) except -1:
    """A decoder's verdict at the Python boundary: DecodeError(errors[r], off) unless WIRE_OK."""
    if r != WIRE_OK:
        raise DecodeError(errors[r], off)
    return 0


cdef int check_run_ns(int64_t duration_ns) except -1:
    if not 0 < duration_ns <= MAX_RUN_NS:
        raise ValueError(f"duration must be 1 ns to 1 day in ns (got {duration_ns})")
    return 0


cdef inline int wait_readable(pollfd *pfd, int64_t end, int *err) noexcept nogil:
    """A receive loop's wait: 1 when pfd is readable; 0 to wait again (timeout, or poll
    failed other than by a signal); -1 when `end` (monotonic ns) has passed or a signal
    arrived (err = EINTR)."""
    cdef int64_t now = mono_ns()
    cdef int r
    if now >= end:
        return -1
    r = poll(pfd, 1, <int>((end - now + 999_999) // 1_000_000))     # ms, rounded up
    if r < 0 and errno == EINTR:
        err[0] = EINTR
        return -1
    return 1 if r > 0 else 0


cdef extern from *:
    bint __builtin_sub_overflow(int64_t a, int64_t b, int64_t *r) nogil


cdef inline int64_t sat_sub(int64_t a, int64_t b) noexcept nogil:
    """a - b saturated to the int64 range: every difference with a time a peer chose."""
    cdef int64_t r
    if __builtin_sub_overflow(a, b, &r):
        return INT64_MAX if b < 0 else INT64_MIN
    return r
