# netprobe._train, included by pyx/train.pyx: the train packet's wire format, its
# codec and the codec's Python face (test hooks).
#
# Wire format of a train packet (network byte order, HEADER_LEN = 20 bytes):
#   0  magic   4 bytes "NPTR"
#   4  version u8 (1)
#   5  flags   u8 (bit 0: primer, a warm-up packet that leads a train)
#   6  count   u16 packets in this train, primer included (2..MAX_TRAIN)
#   8  token   u32 session token (packets of other sessions are "foreign")
#  12  train   u32 train id
#  16  index   u16 0..count-1
#  18  size    u16 the UDP payload length the sender wrote (must equal what arrived)
#  20  filler  incompressible bytes up to `size`

# pull_header results
cdef enum:
    P_OK = 0
    P_SHORT
    P_MAGIC
    P_VERSION
    P_COUNT
    P_INDEX
    P_SIZE


class DecodeError(ValueError):
    """A train packet that does not parse; the message names the offset."""

_PARSE_ERRORS = {P_SHORT: (0, "shorter than the 20-byte header"), P_MAGIC: (0, 'magic is not "NPTR"'),
                 P_VERSION: (4, "unknown version"), P_COUNT: (6, f"count is not 2..{MAX_TRAIN}"),
                 P_INDEX: (16, "index is not below count"), P_SIZE: (18, "size field differs from the length")}

ctypedef struct header_t:
    uint8_t flags
    uint16_t count
    uint32_t token
    uint32_t train
    uint16_t index
    uint16_t size


cdef inline void push_header(uint8_t *p, const header_t *h) noexcept nogil:
    """Write the 20-byte header at p."""
    p[0] = 78   # N
    p[1] = 80   # P
    p[2] = 84   # T
    p[3] = 82   # R
    p[4] = 1
    p[5] = h.flags
    push_u16(p + 6, h.count)
    push_u32(p + 8, h.token)
    push_u32(p + 12, h.train)
    push_u16(p + 16, h.index)
    push_u16(p + 18, h.size)


cdef inline int pull_header(const uint8_t *p, size_t n, header_t *h) noexcept nogil:
    """Parse and check a packet of n bytes; P_OK or the first P_* problem (token not checked)."""
    if n < C_HEADER_LEN:
        return P_SHORT
    if p[0] != 78 or p[1] != 80 or p[2] != 84 or p[3] != 82:
        return P_MAGIC
    if p[4] != 1:
        return P_VERSION
    h.flags = p[5]
    h.count = pull_u16(p + 6)
    h.token = pull_u32(p + 8)
    h.train = pull_u32(p + 12)
    h.index = pull_u16(p + 16)
    h.size = pull_u16(p + 18)
    if h.count < 2 or h.count > C_MAX_TRAIN:
        return P_COUNT
    if h.index >= h.count:
        return P_INDEX
    if h.size != n:
        return P_SIZE
    return P_OK


def pack_header(int flags, int count, uint32_t token, uint32_t train, int index, int size):
    """The 20-byte header as bytes (test hook over push_header)."""
    cdef header_t h
    cdef uint8_t buf[C_HEADER_LEN]
    if not (0 <= flags <= 255 and 0 <= count <= 65535 and 0 <= index <= 65535 and 0 <= size <= 65535):
        raise ValueError("flags must fit 8 bits; count, index and size 16 bits")
    h.flags = <uint8_t>flags
    h.count = <uint16_t>count
    h.token = token
    h.train = train
    h.index = <uint16_t>index
    h.size = <uint16_t>size
    push_header(buf, &h)
    return (<char *>buf)[:C_HEADER_LEN]


def parse_packet(const unsigned char[:] packet):
    """(flags, count, token, train, index, size) of a whole packet, or DecodeError naming the offset.

    The same checks the receive loop applies (it counts instead of raising).
    """
    cdef header_t h
    cdef size_t n = packet.shape[0]
    cdef int r
    if n == 0:
        r = P_SHORT
    else:
        r = pull_header(&packet[0], n, &h)
    if r != P_OK:
        offset, why = _PARSE_ERRORS[r]
        raise DecodeError(f"train packet at offset {offset}: {why}")
    return (h.flags, h.count, h.token, h.train, h.index, h.size)

