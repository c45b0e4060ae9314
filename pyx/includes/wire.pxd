# Header-only codec of the oneway probe's wire protocol v2: push_/pull_ pairs
# in network byte order, and HMAC-SHA256 for the optional tag.
#
# One probe datagram (all integers big-endian, fixed width, no padding):
#
#   0                   1                   2                   3
#   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
#  +---------------------------------------------------------------+
#  |                 magic 0x4e504f57 ("NPOW")                     |  0
#  +---------------+---------------+-------------------------------+
#  |  version = 2  |     flags     |          port index           |  4
#  +---------------+---------------+-------------------------------+
#  |                     session id (64, random)                   |  8
#  +                                                               +
#  +---------------------------------------------------------------+
#  |          sender start time, ns since the Unix epoch (64)      | 16
#  +                                                               +
#  +---------------------------------------------------------------+
#  |              sequence number (64), per source port            | 24
#  +                                                               +
#  +---------------------------------------------------------------+
#  |            send time, ns since the Unix epoch (64)            | 32
#  +                                                               +
#  +---------------------------------------------------------------+
#  |                       interval id (32)                        | 40
#  +---------------------------------------------------------------+
#  |          sender's clock error bound, microseconds (32)        | 44
#  +-------------------------------+-------------------------------+
#  |   datagram length (16)        |        reserved (16) = 0      | 48
#  +-------------------------------+-------------------------------+
#  | index (32): data: position of this packet in its interval on  | 52
#  |   this port (0-based); control: copy number                   |
#  +---------------------------------------------------------------+
#  | count (32): data: packets this port sent in interval id - 1;  | 56
#  |   control: packets this port sent in interval id              |
#  +---------------------------------------------------------------+
#  | TX follow-up (32, signed), with TXTIME: for sequence number   | 60
#  |   seq - 1 on this port, its kernel TX time minus the send     |
#  |   time it carried, ns; without TXTIME: 0                      |
#  +---------------------------------------------------------------+
#  | payload: random bytes up to `datagram length` ...             | 64
#  +---------------------------------------------------------------+
#  | HMAC-SHA256(key, every byte before the tag), 32 bytes,        |
#  |   only when flags has AUTH                                    |
#  +---------------------------------------------------------------+
#
# flags: 0x01 CONTROL (end-of-interval record: seq = the sequence number the
# port's next data packet will carry), 0x02 AUTH (tag present), 0x04
# UNSYNC (the sender's clock is not synchronised), 0x08 TXTIME (offset 60
# holds the TX follow-up: the send time in a packet is stamped in user space
# just before the send call; the kernel's own TX time is only known after
# it, so it travels in the port's next packet, as PTP's two-step
# follow-up does). Other bits must be 0.
# A decoder checks the length before every read and rejects, never guesses.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    /* SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), compact and allocation-free. */
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
    static void np_sha256_block(np_sha256_t *s, const uint8_t *p) {
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
    static void np_sha256_init(np_sha256_t *s) {
        static const uint32_t iv[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,
                                       0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
        memcpy(s->h, iv, sizeof iv); s->n = 0; s->used = 0;
    }
    static void np_sha256_update(np_sha256_t *s, const uint8_t *p, size_t len) {
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
    static void np_sha256_final(np_sha256_t *s, uint8_t out[32]) {
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
    static void np_hmac_init(np_hmac_t *m, const uint8_t *key, size_t keylen) {
        uint8_t k[64], pad[64]; int i;
        memset(k, 0, 64);
        if (keylen > 64) { np_sha256_t t; np_sha256_init(&t); np_sha256_update(&t, key, keylen); np_sha256_final(&t, k); }
        else if (keylen) memcpy(k, key, keylen);
        for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
        np_sha256_init(&m->inner); np_sha256_update(&m->inner, pad, 64);
        for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
        np_sha256_init(&m->outer); np_sha256_update(&m->outer, pad, 64);
    }
    static void np_hmac(const np_hmac_t *m, const uint8_t *p, size_t len, uint8_t out[32]) {
        np_sha256_t s = m->inner; uint8_t ih[32];
        np_sha256_update(&s, p, len); np_sha256_final(&s, ih);
        s = m->outer; np_sha256_update(&s, ih, 32); np_sha256_final(&s, out);
    }
    /* Constant-time comparison of two tags. */
    static int np_tag_equal(const uint8_t *a, const uint8_t *b) {
        uint8_t d = 0; int i; for (i = 0; i < 32; i++) d |= a[i] ^ b[i]; return d == 0;
    }
    """
    ctypedef struct np_sha256_t:
        pass
    ctypedef struct np_hmac_t:
        pass
    void np_sha256_init(np_sha256_t *s) nogil
    void np_sha256_update(np_sha256_t *s, const uint8_t *p, size_t n) nogil
    void np_sha256_final(np_sha256_t *s, uint8_t *out) nogil
    void np_hmac_init(np_hmac_t *m, const uint8_t *key, size_t keylen) nogil
    void np_hmac(const np_hmac_t *m, const uint8_t *p, size_t n, uint8_t *out) nogil
    int np_tag_equal(const uint8_t *a, const uint8_t *b) nogil

cdef enum:
    WIRE_MAGIC = 0x4e504f57
    WIRE_VERSION = 2
    WIRE_HDR_LEN = 64
    WIRE_TAG_LEN = 32
    WIRE_MAX_LEN = 65507          # largest UDP payload over IPv4
    FLAG_CONTROL = 0x01
    FLAG_AUTH = 0x02
    FLAG_UNSYNC = 0x04
    FLAG_TXTIME = 0x08
    FLAGS_KNOWN = 0x0f

# pull_probe_hdr results (0 = ok); each names the first offset that is wrong
cdef enum:
    WIRE_OK = 0
    WIRE_SHORT = 1        # fewer bytes than the header (offset: the length)
    WIRE_MAGIC_BAD = 2    # offset 0
    WIRE_VERSION_BAD = 3  # offset 4
    WIRE_FLAGS_BAD = 4    # offset 5
    WIRE_LENGTH_BAD = 5   # offset 48: the length field disagrees with the datagram
    WIRE_RESERVED_BAD = 6 # offset 50, or 60 without TXTIME
    WIRE_TAG_MISSING = 7  # offset 5: a key is configured and AUTH is not set
    WIRE_TAG_BAD = 8      # offset len - 32: the tag does not verify
    WIRE_TAG_UNEXPECTED = 9   # offset 5: AUTH set, no key configured


ctypedef struct probe_hdr:
    uint8_t flags
    uint16_t port
    uint64_t session
    uint64_t start_ns
    uint64_t seq
    uint64_t send_ns
    uint32_t interval
    uint32_t clock_err_us
    uint16_t length
    uint32_t index
    uint32_t count
    int32_t tx_follow_up       # with FLAG_TXTIME, else 0


cdef inline void push_u16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void push_u32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void push_u64(uint8_t *p, uint64_t v) noexcept nogil:
    push_u32(p, <uint32_t>(v >> 32))
    push_u32(p + 4, <uint32_t>v)


cdef inline uint16_t pull_u16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t pull_u32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t pull_u64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>pull_u32(p) << 32) | pull_u32(p + 4)


cdef inline void push_probe_hdr(uint8_t *p, const probe_hdr *h) noexcept nogil:
    """Write the 64-byte header (the caller sized the buffer to h.length)."""
    push_u32(p, WIRE_MAGIC)
    p[4] = WIRE_VERSION
    p[5] = h.flags
    push_u16(p + 6, h.port)
    push_u64(p + 8, h.session)
    push_u64(p + 16, h.start_ns)
    push_u64(p + 24, h.seq)
    push_u64(p + 32, h.send_ns)
    push_u32(p + 40, h.interval)
    push_u32(p + 44, h.clock_err_us)
    push_u16(p + 48, h.length)
    push_u16(p + 50, 0)
    push_u32(p + 52, h.index)
    push_u32(p + 56, h.count)
    push_u32(p + 60, <uint32_t>h.tx_follow_up if h.flags & FLAG_TXTIME else 0)


cdef inline void push_tag(uint8_t *p, size_t length, const np_hmac_t *key) noexcept nogil:
    """Write the HMAC tag of p[0:length-32] into its last 32 bytes."""
    np_hmac(key, p, length - WIRE_TAG_LEN, p + length - WIRE_TAG_LEN)


cdef inline int pull_probe_hdr(const uint8_t *p, size_t n, probe_hdr *h,
                               size_t *bad_offset) noexcept nogil:
    """Decode and check the structure of one datagram of n bytes; WIRE_OK or the
    first problem (its offset in bad_offset). Nothing is read past n. The tag,
    if any, is checked by pull_tag_check once the caller knows the session's key.
    """
    if n < WIRE_HDR_LEN:
        bad_offset[0] = n
        return WIRE_SHORT
    if pull_u32(p) != WIRE_MAGIC:
        bad_offset[0] = 0
        return WIRE_MAGIC_BAD
    if p[4] != WIRE_VERSION:
        bad_offset[0] = 4
        return WIRE_VERSION_BAD
    h.flags = p[5]
    if h.flags & ~FLAGS_KNOWN:
        bad_offset[0] = 5
        return WIRE_FLAGS_BAD
    h.length = pull_u16(p + 48)
    if h.length != n or (h.flags & FLAG_AUTH and n < WIRE_HDR_LEN + WIRE_TAG_LEN):
        bad_offset[0] = 48
        return WIRE_LENGTH_BAD
    if pull_u16(p + 50) != 0:
        bad_offset[0] = 50
        return WIRE_RESERVED_BAD
    h.tx_follow_up = <int32_t>pull_u32(p + 60)
    if h.tx_follow_up != 0 and not h.flags & FLAG_TXTIME:
        bad_offset[0] = 60
        return WIRE_RESERVED_BAD
    h.port = pull_u16(p + 6)
    h.session = pull_u64(p + 8)
    h.start_ns = pull_u64(p + 16)
    h.seq = pull_u64(p + 24)
    h.send_ns = pull_u64(p + 32)
    h.interval = pull_u32(p + 40)
    h.clock_err_us = pull_u32(p + 44)
    h.index = pull_u32(p + 52)
    h.count = pull_u32(p + 56)
    return WIRE_OK


cdef inline int pull_tag_check(const uint8_t *p, size_t n, const probe_hdr *h,
                               const np_hmac_t *key, size_t *bad_offset) noexcept nogil:
    """After pull_probe_hdr: WIRE_OK if the datagram is as authenticated as `key` demands.

    `key` NULL: no key configured, and a packet that carries a tag is refused
    (an unchecked tag must not pass for a checked one). With a key, only a
    packet whose tag verifies passes.
    """
    cdef uint8_t tag[32]
    if key == NULL:
        if h.flags & FLAG_AUTH:
            bad_offset[0] = 5
            return WIRE_TAG_UNEXPECTED
        return WIRE_OK
    if not h.flags & FLAG_AUTH:
        bad_offset[0] = 5
        return WIRE_TAG_MISSING
    np_hmac(key, p, n - WIRE_TAG_LEN, tag)
    if not np_tag_equal(tag, p + n - WIRE_TAG_LEN):
        bad_offset[0] = n - WIRE_TAG_LEN
        return WIRE_TAG_BAD
    return WIRE_OK


# -- UDPing v1 (compatibility) ------------------------------------------------------------
#
# UDPing's 72-byte header as yahoo/UDPing HEAD (PROTOVERSION 1) lays it out: the
# x86-64 struct in host byte order, i.e. little-endian; decoded explicitly, so the
# codec works the same on any host. Offsets: 0 version (u8, = 1); 8 clientStartTime
# (i64, epoch s); 16 guid (21 bytes: hex characters then NUL); 40 seqNum (u32, per
# source port); 48 sent.tv_sec (i64); 56 sent.tv_nsec (i64); 64 size (u32: the whole
# UDP payload). The other bytes are padding and are ignored. The rest of the
# datagram is payload (UDPing: zeros; netprobe's client: random bytes).

cdef enum:
    V1_HDR_LEN = 72
    V1_GUID_MAX = 20


ctypedef struct udping_v1:
    int64_t start_s
    uint8_t guid[21]       # NUL-terminated
    int guid_len
    uint32_t seq
    int64_t sent_sec
    int64_t sent_nsec
    uint32_t size


cdef inline void push_le32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline void push_le64(uint8_t *p, uint64_t v) noexcept nogil:
    push_le32(p, <uint32_t>v)
    push_le32(p + 4, <uint32_t>(v >> 32))


cdef inline uint32_t pull_le32(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t pull_le64(const uint8_t *p) noexcept nogil:
    return pull_le32(p) | (<uint64_t>pull_le32(p + 4) << 32)


cdef inline void push_udping_v1(uint8_t *p, const udping_v1 *h) noexcept nogil:
    """Write the 72-byte header (padding zeroed)."""
    cdef int i
    for i in range(V1_HDR_LEN):
        p[i] = 0
    p[0] = 1
    push_le64(p + 8, <uint64_t>h.start_s)
    for i in range(h.guid_len):
        p[16 + i] = h.guid[i]
    push_le32(p + 40, h.seq)
    push_le64(p + 48, <uint64_t>h.sent_sec)
    push_le64(p + 56, <uint64_t>h.sent_nsec)
    push_le32(p + 64, h.size)


cdef inline int pull_udping_v1(const uint8_t *p, size_t n, udping_v1 *h, size_t *bad_offset) noexcept nogil:
    """Decode one v1 datagram; WIRE_OK or the first problem (offset in bad_offset).

    Stricter than UDPing where output depends on it: the GUID must be 1-20 lowercase
    hex characters ended by NUL (it is printed into JSON and statsd names), and
    tv_nsec must be 0..999999999.
    """
    cdef int i
    cdef uint8_t c
    if n < V1_HDR_LEN:
        bad_offset[0] = n
        return WIRE_SHORT
    if p[0] != 1:
        bad_offset[0] = 0
        return WIRE_VERSION_BAD
    h.size = pull_le32(p + 64)
    if h.size != n:
        bad_offset[0] = 64
        return WIRE_LENGTH_BAD
    h.guid_len = -1
    for i in range(V1_GUID_MAX + 1):
        c = p[16 + i]
        if c == 0:
            h.guid_len = i
            break
        if not ((c >= 48 and c <= 57) or (c >= 97 and c <= 102)):
            break
        h.guid[i] = c
    if h.guid_len <= 0:
        bad_offset[0] = 16
        return WIRE_FLAGS_BAD
    h.guid[h.guid_len] = 0
    h.sent_nsec = <int64_t>pull_le64(p + 56)
    if h.sent_nsec < 0 or h.sent_nsec > 999999999:
        bad_offset[0] = 56
        return WIRE_RESERVED_BAD
    h.start_s = <int64_t>pull_le64(p + 8)
    h.seq = pull_le32(p + 40)
    h.sent_sec = <int64_t>pull_le64(p + 48)
    return WIRE_OK
