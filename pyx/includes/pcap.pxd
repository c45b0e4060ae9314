# Capture file and packet header layouts (magics, link types, OFF_* byte offsets),
# capture-file byte order, and TCP sequence-space comparisons.
#
# The parsers under pyx/pcap/ check a length before each read; the loads only
# assemble bytes (byteorder.pxd).

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t

from byteorder cimport load_be16, load_be32, load_le16, load_le32

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

# byte offsets of the fields read, per header (www.tcpdump.org/manpages/pcap-savefile.5,
# draft-ietf-opsawg-pcapng, IEEE 802.3/802.1Q, linktypes SLL/SLL2, RFC 791, 8200, 9293)
cdef enum:
    OFF_PCAP_VERSION = 4                # file header: major version (16)
    OFF_PCAP_LINKTYPE = 20              # ... link type (32, upper 6 bits: FCS info)
    OFF_REC_SEC = 0                     # record header: seconds (32)
    OFF_REC_FRAC = 4                    # ... microseconds or nanoseconds (32)
    OFF_REC_INCL = 8                    # ... captured length (32)
    OFF_REC_ORIG = 12                   # ... length on the wire (32)
    OFF_BLK_TYPE = 0                    # pcapng block: type (32)
    OFF_BLK_LEN = 4                     # ... total length (32)
    BLK_MIN_LEN = 12                    # ... type, length, trailing length
    OFF_SHB_BOM = 8                     # section header: byte-order magic
    OFF_IDB_LINKTYPE = 8                # interface description: link type (16)
    OFF_IDB_OPTIONS = 16                # ... first option
    IDB_MIN_LEN = 20
    OFF_EPB_IFACE = 8                   # enhanced packet: interface (32; OPB: 16)
    OFF_EPB_TS_HI = 12                  # ... timestamp, upper 32 bits
    OFF_EPB_TS_LO = 16
    OFF_EPB_CAPLEN = 20
    OFF_EPB_ORIGLEN = 24
    OFF_EPB_DATA = 28
    EPB_MIN_LEN = 32
    OFF_SPB_ORIGLEN = 8                 # simple packet: length on the wire
    OFF_SPB_DATA = 12
    SPB_MIN_LEN = 16
    OFF_OPT_LEN = 2                     # pcapng option: code (16), length (16), value
    OFF_OPT_VALUE = 4
    OFF_ETH_TYPE = 12                   # Ethernet: ethertype after two MACs
    ETH_HLEN = 14
    OFF_VLAN_TYPE = 2                   # 802.1Q tag: TCI (16), then the inner ethertype
    VLAN_HLEN = 4
    OFF_SLL_PROTO = 14                  # Linux cooked v1: protocol last
    SLL_HLEN = 16
    OFF_SLL2_PROTO = 0                  # Linux cooked v2: protocol first
    SLL2_HLEN = 20
    NULL_HLEN = 4                       # BSD loopback: address family (32)
    OFF_IP4_TOTLEN = 2                  # IPv4
    OFF_IP4_ID = 4
    OFF_IP4_FRAG = 6
    OFF_IP4_PROTO = 9
    OFF_IP4_SRC = 12
    OFF_IP4_DST = 16
    IP4_HLEN = 20
    OFF_IP6_PLEN = 4                    # IPv6
    OFF_IP6_NXT = 6
    OFF_IP6_SRC = 8
    OFF_IP6_DST = 24
    IP6_HLEN = 40
    OFF_EXT_NXT = 0                     # IPv6 extension header: next header, length in 8 bytes - 1
    OFF_EXT_LEN = 1
    OFF_TCP_SPORT = 0                   # TCP
    OFF_TCP_DPORT = 2
    OFF_TCP_SEQ = 4
    OFF_TCP_ACK = 8
    OFF_TCP_DOFF = 12
    OFF_TCP_FLAGS = 13
    OFF_TCP_WIN = 14
    TCP_HLEN = 20
    OFF_OPTION_LEN = 1                  # TCP option: kind, length, value
    OFF_OPTION_VALUE = 2
    OFF_SACK_RIGHT = 4                  # SACK block: left edge, right edge (32 each)
    SACK_BLOCK_LEN = 8
    TCPOPT_EOL = 0                      # TCP option kinds and lengths (RFC 9293, 2018, 7323)
    TCPOPT_NOP = 1
    TCPOPT_MSS = 2
    TCPOLEN_MSS = 4
    TCPOPT_SACK = 5
    TCPOPT_TIMESTAMP = 8
    TCPOLEN_TIMESTAMP = 10


cdef inline uint16_t load_file16(const uint8_t *p, bint swapped) noexcept nogil:
    """A 16-bit field of a capture file: little-endian unless `swapped`."""
    return load_be16(p) if swapped else load_le16(p)


cdef inline uint32_t load_file32(const uint8_t *p, bint swapped) noexcept nogil:
    """A 32-bit field of a capture file: little-endian unless `swapped`."""
    return load_be32(p) if swapped else load_le32(p)


# TCP sequence-space comparisons (RFC 1982 serial arithmetic), as Wireshark's
# LT_SEQ/GT_SEQ: a before b when the signed 32-bit difference is negative.
cdef inline bint seq_lt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0


cdef inline bint seq_le(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) <= 0


cdef inline bint seq_gt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0
