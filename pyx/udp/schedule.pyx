# The oneway sender's schedule: which port sends next, when, and how long its probe is.
# Gaps are exponential with mean gap_ns capped at 10x the mean (Poisson, as UDPing) or
# fixed, on CLOCK_MONOTONIC; ports take turns round-robin; lengths are uniform in
# [min_len, max_len]. No sockets: Schedule drives it from a test.

ctypedef struct schedule_t:
    int64_t gap_ns
    bint poisson
    int nports
    int min_len
    int span                   # max_len - min_len + 1 (>= 1)
    int next_port
    int64_t next_due           # monotonic ns of the next slot (0: not started)
    uint64_t rng


cdef int sched_init(schedule_t *s, int nports, int64_t gap_ns, int min_len, int max_len, bint poisson,
                    uint64_t seed) except -1:
    if not 1 <= nports <= MAX_PORTS:
        raise ValueError(f"need 1 to {MAX_PORTS} ports (got {nports})")
    if not 1_000 <= gap_ns <= 60_000_000_000:
        raise ValueError(f"mean gap must be 1 us to 60 s in ns (got {gap_ns})")
    if not 1 <= min_len <= max_len <= WIRE_MAX_LEN:
        raise ValueError(f"sizes must satisfy 1 <= min_len <= max_len <= {WIRE_MAX_LEN} (got {min_len}, {max_len})")
    s.gap_ns, s.poisson, s.nports = gap_ns, poisson, nports
    s.min_len, s.span = min_len, max_len - min_len + 1
    s.next_port, s.next_due = 0, 0
    s.rng = seed
    return 0


cdef inline int64_t sched_gap(schedule_t *s) noexcept nogil:
    cdef double g
    if not s.poisson:
        return s.gap_ns
    g = -log(np_prng_unit(&s.rng)) * s.gap_ns
    if g > 10.0 * s.gap_ns:
        g = 10.0 * s.gap_ns
    return <int64_t>g


cdef inline int sched_take(schedule_t *s, int *length) noexcept nogil:
    """The port of the slot at next_due and its probe's length; moves to the next slot."""
    cdef int port = s.next_port
    length[0] = s.min_len + <int>(np_prng_next(&s.rng) % <uint64_t>s.span)
    s.next_port = (port + 1) % s.nports
    s.next_due += sched_gap(s)
    return port


cdef inline int64_t sched_skip(schedule_t *s, int64_t now) noexcept nogil:
    """Drop the slots before `now` (the sender was descheduled: skip, do not burst);
    returns how many."""
    cdef int64_t n = 0
    while s.next_due < now:
        s.next_due += sched_gap(s)
        n += 1
    return n


cdef class Schedule:
    """Test hook: the sender's schedule without sockets. take(n) -> (slot ns from the
    start, port, length) arrays of the next n probes."""
    cdef schedule_t s

    def __init__(self, int nports, int64_t gap_ns, *, int min_len=WIRE_HDR_LEN, int max_len=128,
                 bint poisson=True, uint64_t seed=1):
        sched_init(&self.s, nports, gap_ns, min_len, max_len, poisson, seed)

    def take(self, Py_ssize_t n):
        import numpy as np
        if not 0 <= n <= 10_000_000:
            raise ValueError(f"n must be 0 to 10,000,000 (got {n})")
        due = np.empty(n, dtype=np.int64)
        port = np.empty(n, dtype=np.int32)
        length = np.empty(n, dtype=np.int32)
        cdef int64_t[:] d = due
        cdef int32_t[:] p = port
        cdef int32_t[:] q = length
        cdef Py_ssize_t i
        cdef int ln
        for i in range(n):
            d[i] = self.s.next_due
            p[i] = sched_take(&self.s, &ln)
            q[i] = ln
        return due, port, length
