# Header-only helpers for reading capture files and packet headers.
#
# Every reader takes a pointer the caller has already bounds-checked: the
# parsers in pcapread.pyx check the length before each read, these only
# assemble bytes (no alignment assumptions, no undefined behaviour).

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t

# pcap (libpcap) file magics as read little-endian from the first 4 bytes
cdef enum:
    PCAP_MAGIC_US = 0xa1b2c3d4          # microsecond timestamps
    PCAP_MAGIC_NS = 0xa1b23c4d          # nanosecond timestamps
    PCAP_MAGIC_US_SWAPPED = 0xd4c3b2a1
    PCAP_MAGIC_NS_SWAPPED = 0x4d3cb2a1
    PCAP_FILE_HEADER_LEN = 24
    PCAP_RECORD_HEADER_LEN = 16
    PCAPNG_SHB = 0x0A0D0D0A             # section header block (palindromic)
    PCAPNG_IDB = 1                      # interface description block
    PCAPNG_OPB = 2                      # obsolete packet block
    PCAPNG_SPB = 3                      # simple packet block
    PCAPNG_EPB = 6                      # enhanced packet block
    PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
    PCAPNG_OPT_IF_TSRESOL = 9
    # link types (www.tcpdump.org/linktypes.html)
    LINKTYPE_NULL = 0                   # BSD loopback: 4-byte AF_ in the writer's byte order
    LINKTYPE_ETHERNET = 1
    LINKTYPE_RAW = 101
    LINKTYPE_LOOP = 108                 # OpenBSD loopback: AF_ in network order
    LINKTYPE_LINUX_SLL = 113
    LINKTYPE_IPV4 = 228
    LINKTYPE_IPV6 = 229
    LINKTYPE_LINUX_SLL2 = 276
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_IPV6 = 0x86DD
    ETHERTYPE_VLAN = 0x8100
    ETHERTYPE_QINQ = 0x88A8
    ETHERTYPE_QINQ_OLD = 0x9100
    # largest record we accept: tcpdump's MAXIMUM_SNAPLEN (262144) plus slack
    MAX_RECORD_LEN = 1 << 20


cdef inline uint16_t rd16be(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t rd32be(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint16_t rd16le(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[1] << 8) | p[0])


cdef inline uint32_t rd32le(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline uint16_t rd16(const uint8_t *p, bint swapped) noexcept nogil:
    """A 16-bit field of a capture file: little-endian unless `swapped`."""
    return rd16be(p) if swapped else rd16le(p)


cdef inline uint32_t rd32(const uint8_t *p, bint swapped) noexcept nogil:
    """A 32-bit field of a capture file: little-endian unless `swapped`."""
    return rd32be(p) if swapped else rd32le(p)


# TCP sequence-space comparisons (RFC 1982 serial arithmetic), as Wireshark's
# LT_SEQ/GT_SEQ: a before b when the signed 32-bit difference is negative.
cdef inline bint seq_lt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0


cdef inline bint seq_le(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) <= 0


cdef inline bint seq_gt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0
