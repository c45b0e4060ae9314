# Header-only token bucket, sans-IO: every call takes the time as `now_ns`.
#
# Exact integer arithmetic so that no rounding can ever accumulate credit.
# Credit is kept in nanobits (1 byte = 8e9 nanobits): a rate in bit/s times
# an elapsed time in ns is exactly a number of nanobits, so refilling is a
# multiplication with no division and no remainder to lose or to gain.
# Guarantee: over any window of W ns the bytes taken are at most
# depth + rate_bps * W / 8e9 (exactly, not approximately).
#
# Bounds keep every product inside int64: depth <= BUCKET_MAX_DEPTH bytes
# (1 GiB; 2**30 * 8e9 < 2**63), rate >= 1 bit/s; refill never multiplies an
# elapsed time longer than the time to fill the bucket, so stalls of any
# length (hours, years) are safe. Times are nanoseconds in [0, 2**62), as
# CLOCK_MONOTONIC gives, so differences and sums of two times fit too.

from libc.stdint cimport int64_t

cdef extern from "bucket.h":
    const int64_t BUCKET_NBIT_PER_BYTE "NETPROBE_BUCKET_NBIT_PER_BYTE"
    const int64_t BUCKET_MAX_DEPTH "NETPROBE_BUCKET_MAX_DEPTH"
    const int64_t BUCKET_MAX_RATE "NETPROBE_BUCKET_MAX_RATE"

ctypedef struct bucket_t:
    int64_t rate_bps     # fill rate, bit/s, 1..BUCKET_MAX_RATE
    int64_t cap          # depth in nanobits
    int64_t credit       # available nanobits, 0..cap
    int64_t last_ns      # latest time seen by bucket_refill; never decreases


cdef inline int bucket_init(bucket_t *b, int64_t rate_bps, int64_t depth_bytes,
                            int64_t now_ns) noexcept nogil:
    """Start full at `now_ns`; -1 (bucket untouched) if rate or depth is out of range."""
    if rate_bps < 1 or rate_bps > BUCKET_MAX_RATE:
        return -1
    if depth_bytes < 1 or depth_bytes > BUCKET_MAX_DEPTH:
        return -1
    b.rate_bps = rate_bps
    b.cap = depth_bytes * BUCKET_NBIT_PER_BYTE
    b.credit = b.cap
    b.last_ns = now_ns
    return 0


cdef inline void bucket_refill(bucket_t *b, int64_t now_ns) noexcept nogil:
    """Add the credit earned since the last refill, capped at the depth.

    A time earlier than the last one seen is ignored (no credit, no rewind).
    """
    cdef int64_t elapsed, need
    if now_ns <= b.last_ns:
        return
    elapsed = now_ns - b.last_ns
    need = b.cap - b.credit
    # elapsed > need // rate  <=>  elapsed * rate > need (no overflow either way)
    if elapsed > need // b.rate_bps:
        b.credit = b.cap
    else:
        b.credit += elapsed * b.rate_bps
    b.last_ns = now_ns


cdef inline int64_t bucket_available(const bucket_t *b) noexcept nogil:
    """Whole bytes available now (after the last refill)."""
    return b.credit // BUCKET_NBIT_PER_BYTE


cdef inline int64_t bucket_take(bucket_t *b, int64_t n) noexcept nogil:
    """Take up to `n` bytes; returns how many were taken (0..n)."""
    cdef int64_t taken = bucket_available(b)
    if n < taken:
        taken = n
    if taken <= 0:
        return 0
    b.credit -= taken * BUCKET_NBIT_PER_BYTE
    return taken


cdef inline bint bucket_try(bucket_t *b, int64_t n) noexcept nogil:
    """Take exactly `n` bytes if available (true), else take nothing (false)."""
    if n < 0 or n > bucket_available(b):
        return False
    b.credit -= n * BUCKET_NBIT_PER_BYTE
    return True


cdef inline int64_t bucket_wait_ns(const bucket_t *b, int64_t n,
                                   int64_t now_ns) noexcept nogil:
    """Nanoseconds from `now_ns` until `n` bytes are available.

    0 if they already are; -1 if never (n exceeds the depth). Rounded up, so
    waiting exactly this long always suffices. Does not change the bucket.
    """
    cdef int64_t deficit, wait
    if n > b.cap // BUCKET_NBIT_PER_BYTE:
        return -1
    deficit = n * BUCKET_NBIT_PER_BYTE - b.credit
    if deficit <= 0:
        return 0
    wait = (deficit + b.rate_bps - 1) // b.rate_bps    # from last_ns
    if now_ns < b.last_ns:
        return wait + (b.last_ns - now_ns)
    if now_ns - b.last_ns >= wait:
        return 0
    return wait - (now_ns - b.last_ns)
