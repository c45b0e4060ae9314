# Link layer, IPv4/IPv6 and TCP header decoding of one captured frame.

cdef inline bint drop(uint64_t *g, int why) noexcept nogil:
    """Count a frame that is not an analysable TCP segment under g[why]; False."""
    g[why] += 1
    return False


cdef inline bint ip_header(const uint8_t *p, uint32_t caplen, uint32_t off, uint32_t hlen, int version,
                           int counter, uint64_t *g) noexcept nogil:
    """The IP header at p+off is captured whole and of `version`: counted under g[counter],
    True; else counted as truncated or malformed, False."""
    if caplen < off + hlen:
        return drop(g, G_TRUNCATED)
    if (p[off] >> 4) != version:
        return drop(g, G_MALFORMED)
    g[counter] += 1
    return True


cdef inline bint decode_tcp(const uint8_t *p, uint32_t caplen, uint32_t wirelen, uint32_t linktype,
                            seg_t *s, uint64_t *g) noexcept nogil:
    """Decode a frame down to its TCP header into s; False (the reason counted in g)
    if it is not an analysable TCP segment. Never reads past caplen."""
    cdef uint32_t off = 0, et = 0, af, ihl, totlen, l4, l4len, hlen, doff
    cdef uint8_t nh
    cdef int vlans = 0
    # link layer -> ethertype (or IP version straight away)
    if linktype == LINKTYPE_ETHERNET:
        if caplen < ETH_HLEN:
            return drop(g, G_TRUNCATED)
        et = load_be16(p + OFF_ETH_TYPE)
        off = ETH_HLEN
        while (et == ETHERTYPE_VLAN or et == ETHERTYPE_QINQ or et == ETHERTYPE_QINQ_OLD) and vlans < 4:
            if caplen < off + VLAN_HLEN:
                return drop(g, G_TRUNCATED)
            et = load_be16(p + off + OFF_VLAN_TYPE)
            off += VLAN_HLEN
            vlans += 1
    elif linktype == LINKTYPE_LINUX_SLL:
        if caplen < SLL_HLEN:
            return drop(g, G_TRUNCATED)
        et = load_be16(p + OFF_SLL_PROTO)
        off = SLL_HLEN
    elif linktype == LINKTYPE_LINUX_SLL2:
        if caplen < SLL2_HLEN:
            return drop(g, G_TRUNCATED)
        et = load_be16(p + OFF_SLL2_PROTO)
        off = SLL2_HLEN
    elif linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
        if caplen < 1:
            return drop(g, G_TRUNCATED)
        et = ETHERTYPE_IPV4 if (p[0] >> 4) == 4 else (ETHERTYPE_IPV6 if (p[0] >> 4) == 6 else 0)
    elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if caplen < NULL_HLEN:
            return drop(g, G_TRUNCATED)
        af = load_be32(p) if linktype == LINKTYPE_LOOP else load_le32(p)
        if af > 0xffff:
            af = load_be32(p)
        et = ETHERTYPE_IPV4 if af == 2 else (ETHERTYPE_IPV6 if af in (10, 24, 28, 30) else 0)
        off = NULL_HLEN
    else:
        return drop(g, G_BAD_LINKTYPE)
    # network layer
    if et == ETHERTYPE_IPV4:
        if not ip_header(p, caplen, off, IP4_HLEN, 4, G_IPV4, g):
            return False
        ihl = (p[off] & 0x0f) * 4
        totlen = load_be16(p + off + OFF_IP4_TOTLEN)
        if totlen == 0:                  # TSO/BIG TCP: the length is the frame's
            totlen = wirelen - off
        if ihl < IP4_HLEN or totlen < ihl:
            return drop(g, G_MALFORMED)
        if load_be16(p + off + OFF_IP4_FRAG) & 0x3fff:       # MF set or offset != 0
            return drop(g, G_FRAGMENTS)
        if p[off + OFF_IP4_PROTO] != 6:
            return drop(g, G_NON_TCP)
        if wirelen - off < totlen:       # the IP dissector clips to the frame
            totlen = wirelen - off
            if totlen < ihl:
                return drop(g, G_MALFORMED)
        s.family = 4
        s.ipid = load_be16(p + off + OFF_IP4_ID)
        s.src = p + off + OFF_IP4_SRC
        s.dst = p + off + OFF_IP4_DST
        l4 = off + ihl
        l4len = totlen - ihl
    elif et == ETHERTYPE_IPV6:
        if not ip_header(p, caplen, off, IP6_HLEN, 6, G_IPV6, g):
            return False
        l4len = load_be16(p + off + OFF_IP6_PLEN)
        if l4len == 0:                   # jumbogram or BIG TCP
            l4len = wirelen - off - IP6_HLEN
        elif wirelen - off - IP6_HLEN < l4len:
            l4len = wirelen - off - IP6_HLEN
        nh = p[off + OFF_IP6_NXT]
        s.family = 6
        s.ipid = -1
        s.src = p + off + OFF_IP6_SRC
        s.dst = p + off + OFF_IP6_DST
        l4 = off + IP6_HLEN
        while nh == 0 or nh == 43 or nh == 60:       # hop-by-hop, routing, destination options
            if caplen < l4 + 2:
                return drop(g, G_TRUNCATED)
            hlen = (<uint32_t>p[l4 + OFF_EXT_LEN] + 1) * 8
            if hlen > l4len:
                return drop(g, G_MALFORMED)
            nh = p[l4 + OFF_EXT_NXT]
            l4 += hlen
            l4len -= hlen
        if nh == 44:
            return drop(g, G_FRAGMENTS)
        if nh != 6:
            return drop(g, G_NON_TCP)
    else:
        return drop(g, G_NON_IP)
    # TCP
    if caplen < l4 + TCP_HLEN:
        return drop(g, G_TRUNCATED)
    doff = (p[l4 + OFF_TCP_DOFF] >> 4) * 4
    if doff < TCP_HLEN or l4len < doff:
        return drop(g, G_MALFORMED)
    g[G_TCP] += 1
    s.seglen = l4len - doff
    s.doff = doff
    s.sport = load_be16(p + l4 + OFF_TCP_SPORT)
    s.dport = load_be16(p + l4 + OFF_TCP_DPORT)
    s.seq = load_be32(p + l4 + OFF_TCP_SEQ)
    s.ack = load_be32(p + l4 + OFF_TCP_ACK)
    s.tflags = p[l4 + OFF_TCP_FLAGS]
    s.window = load_be16(p + l4 + OFF_TCP_WIN)
    s.opt = p + l4 + TCP_HLEN
    s.optlen = caplen - l4 - TCP_HLEN if caplen - l4 - TCP_HLEN < doff - TCP_HLEN else doff - TCP_HLEN
    return True
