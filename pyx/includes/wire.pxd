# Header-only codec of the oneway probe's wire protocol v2: push_/pull_ pairs
# in network byte order (byteorder.pxd), OFF_* for every field's offset, and
# HMAC-SHA256 (sha256.h) for the optional tag.
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

from byteorder cimport load_be16, load_be32, load_be64, load_le32, load_le64, store_be16, store_be32, store_be64

cdef extern from "sha256.h":
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
    int np_sha256_set_shani(int on) nogil     # 1: x86 SHA extensions when the CPU has them

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

# field offsets (the diagram above)
cdef enum:
    OFF_MAGIC = 0
    OFF_VERSION = 4
    OFF_FLAGS = 5
    OFF_PORT = 6
    OFF_SESSION = 8
    OFF_START = 16
    OFF_SEQ = 24
    OFF_SEND = 32
    OFF_INTERVAL = 40
    OFF_CLOCK_ERR = 44
    OFF_LENGTH = 48
    OFF_RESERVED = 50
    OFF_INDEX = 52
    OFF_COUNT = 56
    OFF_FOLLOW_UP = 60

# pull_probe_hdr results (0 = ok); each names the first offset that is wrong
cdef enum:
    WIRE_OK = 0
    WIRE_SHORT = 1        # fewer bytes than the header (offset: the length)
    WIRE_MAGIC_BAD = 2    # OFF_MAGIC
    WIRE_VERSION_BAD = 3  # OFF_VERSION
    WIRE_FLAGS_BAD = 4    # OFF_FLAGS
    WIRE_LENGTH_BAD = 5   # OFF_LENGTH: the length field disagrees with the datagram
    WIRE_RESERVED_BAD = 6 # OFF_RESERVED, or OFF_FOLLOW_UP without TXTIME
    WIRE_TAG_MISSING = 7  # OFF_FLAGS: a key is configured and AUTH is not set
    WIRE_TAG_BAD = 8      # len - 32: the tag does not verify
    WIRE_TAG_UNEXPECTED = 9   # OFF_FLAGS: AUTH set, no key configured


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


cdef inline void push_probe_hdr(uint8_t *p, const probe_hdr *h) noexcept nogil:
    """Write the 64-byte header (the caller sized the buffer to h.length)."""
    store_be32(p + OFF_MAGIC, WIRE_MAGIC)
    p[OFF_VERSION] = WIRE_VERSION
    p[OFF_FLAGS] = h.flags
    store_be16(p + OFF_PORT, h.port)
    store_be64(p + OFF_SESSION, h.session)
    store_be64(p + OFF_START, h.start_ns)
    store_be64(p + OFF_SEQ, h.seq)
    store_be64(p + OFF_SEND, h.send_ns)
    store_be32(p + OFF_INTERVAL, h.interval)
    store_be32(p + OFF_CLOCK_ERR, h.clock_err_us)
    store_be16(p + OFF_LENGTH, h.length)
    store_be16(p + OFF_RESERVED, 0)
    store_be32(p + OFF_INDEX, h.index)
    store_be32(p + OFF_COUNT, h.count)
    store_be32(p + OFF_FOLLOW_UP, <uint32_t>h.tx_follow_up if h.flags & FLAG_TXTIME else 0)


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
    if load_be32(p + OFF_MAGIC) != WIRE_MAGIC:
        bad_offset[0] = OFF_MAGIC
        return WIRE_MAGIC_BAD
    if p[OFF_VERSION] != WIRE_VERSION:
        bad_offset[0] = OFF_VERSION
        return WIRE_VERSION_BAD
    h.flags = p[OFF_FLAGS]
    if h.flags & ~FLAGS_KNOWN:
        bad_offset[0] = OFF_FLAGS
        return WIRE_FLAGS_BAD
    h.length = load_be16(p + OFF_LENGTH)
    if h.length != n or (h.flags & FLAG_AUTH and n < WIRE_HDR_LEN + WIRE_TAG_LEN):
        bad_offset[0] = OFF_LENGTH
        return WIRE_LENGTH_BAD
    if load_be16(p + OFF_RESERVED) != 0:
        bad_offset[0] = OFF_RESERVED
        return WIRE_RESERVED_BAD
    h.tx_follow_up = <int32_t>load_be32(p + OFF_FOLLOW_UP)
    if h.tx_follow_up != 0 and not h.flags & FLAG_TXTIME:
        bad_offset[0] = OFF_FOLLOW_UP
        return WIRE_RESERVED_BAD
    h.port = load_be16(p + OFF_PORT)
    h.session = load_be64(p + OFF_SESSION)
    h.start_ns = load_be64(p + OFF_START)
    h.seq = load_be64(p + OFF_SEQ)
    h.send_ns = load_be64(p + OFF_SEND)
    h.interval = load_be32(p + OFF_INTERVAL)
    h.clock_err_us = load_be32(p + OFF_CLOCK_ERR)
    h.index = load_be32(p + OFF_INDEX)
    h.count = load_be32(p + OFF_COUNT)
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
            bad_offset[0] = OFF_FLAGS
            return WIRE_TAG_UNEXPECTED
        return WIRE_OK
    if not h.flags & FLAG_AUTH:
        bad_offset[0] = OFF_FLAGS
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
    OFF_V1_VERSION = 0
    OFF_V1_START = 8
    OFF_V1_GUID = 16
    OFF_V1_SEQ = 40
    OFF_V1_SENT_SEC = 48
    OFF_V1_SENT_NSEC = 56
    OFF_V1_SIZE = 64


ctypedef struct udping_v1:
    int64_t start_s
    uint8_t guid[21]       # NUL-terminated
    int guid_len
    uint32_t seq
    int64_t sent_sec
    int64_t sent_nsec
    uint32_t size


cdef inline void store_le32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline void store_le64(uint8_t *p, uint64_t v) noexcept nogil:
    store_le32(p, <uint32_t>v)
    store_le32(p + 4, <uint32_t>(v >> 32))


cdef inline void push_udping_v1(uint8_t *p, const udping_v1 *h) noexcept nogil:
    """Write the 72-byte header (padding zeroed)."""
    cdef int i
    for i in range(V1_HDR_LEN):
        p[i] = 0
    p[OFF_V1_VERSION] = 1
    store_le64(p + OFF_V1_START, <uint64_t>h.start_s)
    for i in range(h.guid_len):
        p[OFF_V1_GUID + i] = h.guid[i]
    store_le32(p + OFF_V1_SEQ, h.seq)
    store_le64(p + OFF_V1_SENT_SEC, <uint64_t>h.sent_sec)
    store_le64(p + OFF_V1_SENT_NSEC, <uint64_t>h.sent_nsec)
    store_le32(p + OFF_V1_SIZE, h.size)


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
    if p[OFF_V1_VERSION] != 1:
        bad_offset[0] = OFF_V1_VERSION
        return WIRE_VERSION_BAD
    h.size = load_le32(p + OFF_V1_SIZE)
    if h.size != n:
        bad_offset[0] = OFF_V1_SIZE
        return WIRE_LENGTH_BAD
    h.guid_len = -1
    for i in range(V1_GUID_MAX + 1):
        c = p[OFF_V1_GUID + i]
        if c == 0:
            h.guid_len = i
            break
        if not ((c >= 48 and c <= 57) or (c >= 97 and c <= 102)):
            break
        h.guid[i] = c
    if h.guid_len <= 0:
        bad_offset[0] = OFF_V1_GUID
        return WIRE_FLAGS_BAD
    h.guid[h.guid_len] = 0
    h.sent_nsec = <int64_t>load_le64(p + OFF_V1_SENT_NSEC)
    if h.sent_nsec < 0 or h.sent_nsec > 999999999:
        bad_offset[0] = OFF_V1_SENT_NSEC
        return WIRE_RESERVED_BAD
    h.start_s = <int64_t>load_le64(p + OFF_V1_START)
    h.seq = load_le32(p + OFF_V1_SEQ)
    h.sent_sec = <int64_t>load_le64(p + OFF_V1_SENT_SEC)
    return WIRE_OK
