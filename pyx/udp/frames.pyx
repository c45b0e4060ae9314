# Raw mode of the oneway sender: whole Ethernet + IPv4/IPv6 + UDP frames for one
# AF_PACKET socket, each source port rotating through next-hop MACs (or, pinned, port i
# always through next hop i mod N, so per-port loss tells the next hops apart), and the RFC 1071
# checksums (IPv4 header; UDP over the pseudo-header once the probe is final).

cdef enum:
    ETH_LEN = 14
    OFF_ETH_DST = 0
    OFF_ETH_SRC = 6
    OFF_ETH_TYPE = 12
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_IPV6 = 0x86DD
    IP4_LEN = 20
    OFF_IP4_VER_IHL = 0
    OFF_IP4_TOS = 1
    OFF_IP4_TOTAL = 2
    OFF_IP4_ID = 4
    OFF_IP4_FRAG = 6
    OFF_IP4_TTL = 8
    OFF_IP4_PROTO = 9
    OFF_IP4_CSUM = 10
    OFF_IP4_SRC = 12
    OFF_IP4_DST = 16
    IP6_LEN = 40
    OFF_IP6_VTC_FLOW = 0
    OFF_IP6_PAYLOAD = 4
    OFF_IP6_NEXT = 6
    OFF_IP6_HOPS = 7
    OFF_IP6_SRC = 8
    OFF_IP6_DST = 24
    UDP_LEN = 8
    OFF_UDP_SPORT = 0
    OFF_UDP_DPORT = 2
    OFF_UDP_LEN = 4
    OFF_UDP_CSUM = 6
    IPPROTO_UDP_ = 17
    HOP_LIMIT = 64
    MAX_MACS = 64


ctypedef struct frame_t:
    int l2len                  # Ethernet + IP + UDP header bytes before the probe
    bint v6
    uint8_t src_mac[6]
    uint8_t src_ip[16]
    uint8_t dst_ip[16]
    uint8_t *macs              # nmacs next hops, 6 bytes each
    int nmacs
    uint16_t *sports           # per port
    uint32_t *rot              # per port: its next hop's turn
    bint pin                   # rot stays: each port keeps one next hop
    uint16_t dport
    uint16_t ipid


cdef inline uint64_t csum_add(uint64_t s, const uint8_t *p, size_t n) noexcept nogil:
    """RFC 1071 sum of big-endian 16-bit words (an odd last byte is padded with zero)."""
    cdef size_t i = 0
    while i + 1 < n:
        s += load_be16(p + i)
        i += 2
    if i < n:
        s += <uint64_t>p[i] << 8
    return s


cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef int frame_init(frame_t *fr, raw) except -1:
    """From the caller's raw dict (macs, sports, src_ip, dst_ip, src_mac, dport, optional pin); returns
    the number of source ports. frame_free releases it, also after an error."""
    cdef int i, k
    macs, sports = list(raw["macs"]), list(raw["sports"])
    src_ip, dst_ip, src_mac = bytes(raw["src_ip"]), bytes(raw["dst_ip"]), bytes(raw["src_mac"])
    if not 1 <= len(macs) <= MAX_MACS or any(len(m) != 6 for m in macs) or len(src_mac) != 6:
        raise ValueError(f"raw mode needs 1 to {MAX_MACS} next-hop MACs and a source MAC, 6 bytes each")
    if len(src_ip) != len(dst_ip) or len(src_ip) not in (4, 16):
        raise ValueError("raw mode needs source and destination addresses of one family (4 or 16 bytes)")
    if not 1 <= len(sports) <= MAX_PORTS or not all(1 <= p <= 65535 for p in sports):
        raise ValueError(f"raw mode needs 1 to {MAX_PORTS} source ports 1-65535")
    if not 1 <= raw["dport"] <= 65535:
        raise ValueError("destination port must be 1-65535")
    fr.v6 = len(src_ip) == 16
    fr.l2len = ETH_LEN + (IP6_LEN if fr.v6 else IP4_LEN) + UDP_LEN
    fr.nmacs = len(macs)
    fr.macs = <uint8_t *>malloc(6 * fr.nmacs)
    fr.sports = <uint16_t *>malloc(sizeof(uint16_t) * len(sports))
    fr.rot = <uint32_t *>calloc(len(sports), sizeof(uint32_t))
    if fr.macs == NULL or fr.sports == NULL or fr.rot == NULL:
        raise MemoryError()
    for i in range(fr.nmacs):
        for k in range(6):
            fr.macs[6 * i + k] = macs[i][k]
    fr.pin = bool(raw.get("pin", False))
    for i in range(len(sports)):
        fr.sports[i] = sports[i]
        if fr.pin:
            fr.rot[i] = i
    for k in range(6):
        fr.src_mac[k] = src_mac[k]
    for k in range(len(src_ip)):
        fr.src_ip[k] = src_ip[k]
        fr.dst_ip[k] = dst_ip[k]
    fr.dport = raw["dport"]
    return len(sports)


cdef void frame_free(frame_t *fr) noexcept:
    free(fr.macs)
    free(fr.sports)
    free(fr.rot)
    fr.macs, fr.sports, fr.rot = NULL, NULL, NULL


cdef void frame_headers(frame_t *fr, uint8_t *f, int port, int length) noexcept nogil:
    """Ethernet (next hop of this port's rotation) + IPv4/IPv6 + UDP headers for a probe of
    `length` bytes; the UDP checksum is left 0 for frame_checksum once the probe is final."""
    cdef uint8_t *ip = f + ETH_LEN
    cdef uint8_t *u = f + fr.l2len - UDP_LEN
    memcpy(f + OFF_ETH_DST, fr.macs + 6 * (fr.rot[port] % fr.nmacs), 6)
    if not fr.pin:
        fr.rot[port] += 1
    memcpy(f + OFF_ETH_SRC, fr.src_mac, 6)
    if fr.v6:
        store_be16(f + OFF_ETH_TYPE, ETHERTYPE_IPV6)
        store_be32(ip + OFF_IP6_VTC_FLOW, 0x60000000)
        store_be16(ip + OFF_IP6_PAYLOAD, UDP_LEN + length)
        ip[OFF_IP6_NEXT] = IPPROTO_UDP_
        ip[OFF_IP6_HOPS] = HOP_LIMIT
        memcpy(ip + OFF_IP6_SRC, fr.src_ip, 16)
        memcpy(ip + OFF_IP6_DST, fr.dst_ip, 16)
    else:
        store_be16(f + OFF_ETH_TYPE, ETHERTYPE_IPV4)
        ip[OFF_IP4_VER_IHL] = 0x45
        ip[OFF_IP4_TOS] = 0
        store_be16(ip + OFF_IP4_TOTAL, IP4_LEN + UDP_LEN + length)
        store_be16(ip + OFF_IP4_ID, fr.ipid)
        fr.ipid += 1
        store_be16(ip + OFF_IP4_FRAG, 0)
        ip[OFF_IP4_TTL] = HOP_LIMIT
        ip[OFF_IP4_PROTO] = IPPROTO_UDP_
        store_be16(ip + OFF_IP4_CSUM, 0)
        memcpy(ip + OFF_IP4_SRC, fr.src_ip, 4)
        memcpy(ip + OFF_IP4_DST, fr.dst_ip, 4)
        store_be16(ip + OFF_IP4_CSUM, csum_fold(csum_add(0, ip, IP4_LEN)))
    store_be16(u + OFF_UDP_SPORT, fr.sports[port])
    store_be16(u + OFF_UDP_DPORT, fr.dport)
    store_be16(u + OFF_UDP_LEN, UDP_LEN + length)
    store_be16(u + OFF_UDP_CSUM, 0)


cdef void frame_checksum(frame_t *fr, uint8_t *f, int length) noexcept nogil:
    """UDP checksum over the pseudo-header, header and probe (0 is sent as 0xffff)."""
    cdef int alen = 16 if fr.v6 else 4
    cdef uint8_t *u = f + fr.l2len - UDP_LEN
    cdef uint64_t s = csum_add(0, fr.src_ip, alen)
    cdef uint16_t c
    s = csum_add(s, fr.dst_ip, alen)
    s += IPPROTO_UDP_ + UDP_LEN + length        # protocol and UDP length (fits either family's form)
    s = csum_add(s, u, UDP_LEN + length)
    c = csum_fold(s)
    store_be16(u + OFF_UDP_CSUM, c if c else 0xFFFF)
