/* SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), compact and allocation-free: the
   oneway probe's optional tag (wire.pxd). */
#ifndef NP_SHA256_H
#define NP_SHA256_H
#include <stdint.h>
#include <string.h>
typedef struct { uint32_t h[8]; uint64_t n; uint8_t buf[64]; uint32_t used; } np_sha256_t;
typedef struct { np_sha256_t inner, outer; } np_hmac_t;
static const uint32_t np_sha256_k[64] = {
 0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
 0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
 0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
 0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
 0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
 0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
 0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
 0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
#define NP_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NP_SHANI 1
/* One block with the x86 SHA extensions (4 rounds per pair of sha256rnds2, the message
   schedule by sha256msg1/msg2); the state lives as ABEF/CDGH between the two forms. */
__attribute__((target("sha,sse4.1")))
static inline void np_sha256_block_shani(uint32_t h[8], const uint8_t *p) {
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1);    /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B);   /* EFGH */
    __m128i s0 = _mm_alignr_epi8(t, s1, 8);                                           /* ABEF */
    __m128i abef, cdgh, m, k, w[4];
    int i;
    s1 = _mm_blend_epi16(s1, t, 0xF0);                                                /* CDGH */
    abef = s0;
    cdgh = s1;
#pragma GCC unroll 16
    for (i = 0; i < 16; i++) {
        if (i < 4) {
            m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), mask);
        } else {     /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time */
            m = _mm_sha256msg1_epu32(w[i & 3], w[(i + 1) & 3]);
            m = _mm_add_epi32(m, _mm_alignr_epi8(w[(i + 3) & 3], w[(i + 2) & 3], 4));
            m = _mm_sha256msg2_epu32(m, w[(i + 3) & 3]);
        }
        w[i & 3] = m;
        k = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&np_sha256_k[4 * i]));
        s1 = _mm_sha256rnds2_epu32(s1, s0, k);
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(k, 0x0E));
    }
    s0 = _mm_add_epi32(s0, abef);
    s1 = _mm_add_epi32(s1, cdgh);
    t = _mm_shuffle_epi32(s0, 0x1B);                                                  /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);                                                 /* DCHG */
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(t, s1, 0xF0));                 /* DCBA */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(s1, t, 8));                    /* HGFE */
}
/* -1: not probed yet; np_sha256_set_shani() lets a test force the portable path. */
static int np_shani = -1;
static inline int np_sha256_set_shani(int on) {
    np_shani = on && __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
    return np_shani;
}
#else
static inline int np_sha256_set_shani(int on) { (void)on; return 0; }
#endif
static inline void np_sha256_block(np_sha256_t *s, const uint8_t *p) {
#ifdef NP_SHANI
    if (np_shani < 0)
        np_sha256_set_shani(1);
    if (np_shani) {
        np_sha256_block_shani(s->h, p);
        return;
    }
#endif
    uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2; int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4*i] << 24 | (uint32_t)p[4*i+1] << 16 | (uint32_t)p[4*i+2] << 8 | p[4*i+3];
    for (i = 16; i < 64; i++)
        w[i] = (NP_ROR(w[i-2], 17) ^ NP_ROR(w[i-2], 19) ^ (w[i-2] >> 10)) + w[i-7]
             + (NP_ROR(w[i-15], 7) ^ NP_ROR(w[i-15], 18) ^ (w[i-15] >> 3)) + w[i-16];
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3]; e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (i = 0; i < 64; i++) {
        t1 = h + (NP_ROR(e, 6) ^ NP_ROR(e, 11) ^ NP_ROR(e, 25)) + ((e & f) ^ (~e & g)) + np_sha256_k[i] + w[i];
        t2 = (NP_ROR(a, 2) ^ NP_ROR(a, 13) ^ NP_ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}
static inline void np_sha256_init(np_sha256_t *s) {
    static const uint32_t iv[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,
                                   0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
    memcpy(s->h, iv, sizeof iv); s->n = 0; s->used = 0;
}
static inline void np_sha256_update(np_sha256_t *s, const uint8_t *p, size_t len) {
    s->n += len;
    if (s->used) {
        size_t take = 64 - s->used < len ? 64 - s->used : len;
        memcpy(s->buf + s->used, p, take); s->used += (uint32_t)take; p += take; len -= take;
        if (s->used < 64) return;
        np_sha256_block(s, s->buf); s->used = 0;
    }
    for (; len >= 64; p += 64, len -= 64) np_sha256_block(s, p);
    memcpy(s->buf, p, len); s->used = (uint32_t)len;
}
static inline void np_sha256_final(np_sha256_t *s, uint8_t out[32]) {
    uint64_t bits = s->n * 8; int i;
    s->buf[s->used++] = 0x80;
    if (s->used > 56) { memset(s->buf + s->used, 0, 64 - s->used); np_sha256_block(s, s->buf); s->used = 0; }
    memset(s->buf + s->used, 0, 56 - s->used);
    for (i = 0; i < 8; i++) s->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    np_sha256_block(s, s->buf);
    for (i = 0; i < 8; i++) {
        out[4*i] = (uint8_t)(s->h[i] >> 24); out[4*i+1] = (uint8_t)(s->h[i] >> 16);
        out[4*i+2] = (uint8_t)(s->h[i] >> 8); out[4*i+3] = (uint8_t)s->h[i];
    }
}
/* Key schedule once per key: the inner and outer states after the padded key block. */
static inline void np_hmac_init(np_hmac_t *m, const uint8_t *key, size_t keylen) {
    uint8_t k[64], pad[64]; int i;
    memset(k, 0, 64);
    if (keylen > 64) { np_sha256_t t; np_sha256_init(&t); np_sha256_update(&t, key, keylen); np_sha256_final(&t, k); }
    else if (keylen) memcpy(k, key, keylen);
    for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
    np_sha256_init(&m->inner); np_sha256_update(&m->inner, pad, 64);
    for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
    np_sha256_init(&m->outer); np_sha256_update(&m->outer, pad, 64);
}
static inline void np_hmac(const np_hmac_t *m, const uint8_t *p, size_t len, uint8_t out[32]) {
    np_sha256_t s = m->inner; uint8_t ih[32];
    np_sha256_update(&s, p, len); np_sha256_final(&s, ih);
    s = m->outer; np_sha256_update(&s, ih, 32); np_sha256_final(&s, out);
}
/* Constant-time comparison of two tags. */
static inline int np_tag_equal(const uint8_t *a, const uint8_t *b) {
    uint8_t d = 0; int i; for (i = 0; i < 32; i++) d |= a[i] ^ b[i]; return d == 0;
}
#endif
