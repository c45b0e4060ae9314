# The one PRNG of the extensions (splitmix64, prng.h).

from libc.stdint cimport uint8_t, uint64_t

cdef extern from "prng.h" nogil:
    uint64_t np_prng_next(uint64_t *s)
    double np_prng_unit(uint64_t *s)
    void np_prng_fill(uint8_t *p, size_t n, uint64_t *s)
