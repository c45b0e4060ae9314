/* splitmix64 (Steele, Lea and Flood, 2014; Vigna's constants): the one PRNG of the
   extensions. Fast, 64-bit state, every seed good; not for secrets. */
#ifndef NP_PRNG_H
#define NP_PRNG_H
#include <stddef.h>
#include <stdint.h>

static inline uint64_t np_prng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform on (0, 1]: never 0, so -log() of it is finite. */
static inline double np_prng_unit(uint64_t *s) {
    return ((double)(np_prng_next(s) >> 11) + 1.0) / 9007199254740992.0;
}

/* n bytes of the stream, each word's bytes least significant first. */
static inline void np_prng_fill(uint8_t *p, size_t n, uint64_t *s) {
    size_t i = 0, j;
    while (i < n) {
        uint64_t x = np_prng_next(s);
        for (j = 0; j < 8 && i < n; j++, i++)
            p[i] = (uint8_t)(x >> (8 * j));
    }
}
#endif
