# The flow table: flows in one array (grown by doubling up to max_flows), found by an
# open-addressing hash of the canonical endpoint pair.

ctypedef struct flowtab_t:
    flow_t *ftab
    int32_t *slots               # flow index per slot, -1 empty; at most half full
    Py_ssize_t nflows, flows_cap, nslots, max_flows


cdef int ft_init(flowtab_t *self, Py_ssize_t max_flows) except -1:
    self.max_flows = max_flows
    self.nflows = 0
    self.nslots = 1024
    self.slots = <int32_t *>malloc(self.nslots * sizeof(int32_t))
    self.flows_cap = 256
    self.ftab = <flow_t *>malloc(self.flows_cap * sizeof(flow_t))
    if self.slots == NULL or self.ftab == NULL:
        raise MemoryError()
    memset(self.slots, 0xff, self.nslots * sizeof(int32_t))
    return 0


cdef void ft_free(flowtab_t *self) noexcept:
    free(self.slots)
    free(self.ftab)
    self.slots = NULL
    self.ftab = NULL


cdef inline uint64_t key_hash(const flow_key_t *k) noexcept nogil:
    cdef uint64_t w[5]
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL
    cdef int i
    memcpy(w, k, sizeof(w))                 # flow_key_t is exactly 40 bytes
    for i in range(5):
        h = (h ^ w[i]) * 0xff51afd7ed558ccdULL
        h ^= h >> 32
    return h


cdef inline bint key_equal(const flow_key_t *a, const flow_key_t *b) noexcept nogil:
    """a == b as five words (a libc memcmp call costs more than the compare)."""
    cdef uint64_t x[5]
    cdef uint64_t y[5]
    memcpy(x, a, sizeof(x))
    memcpy(y, b, sizeof(y))
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0


cdef inline int make_key(flow_key_t *k, const uint8_t *src, const uint8_t *dst, bint v4,
                         uint16_t sport, uint16_t dport) noexcept nogil:
    """Fill k with the endpoints in canonical order (addresses compared as big-endian
    numbers, as memcmp orders them); returns 1 if src is the lo end."""
    cdef uint64_t s0, d0, s1 = 0, d1 = 0
    cdef bint src_lo
    if v4:
        s0 = load_be32(src)
        d0 = load_be32(dst)
    else:
        s0 = load_be64(src)
        d0 = load_be64(dst)
        s1 = load_be64(src + 8)
        d1 = load_be64(dst + 8)
    src_lo = s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport <= dport)))
    if not src_lo:
        src, dst = dst, src
        sport, dport = dport, sport
    if v4:
        memcpy(k.addr_lo, src, 4)
        memcpy(k.addr_hi, dst, 4)
    else:
        memcpy(k.addr_lo, src, 16)
        memcpy(k.addr_hi, dst, 16)
    k.port_lo = sport
    k.port_hi = dport
    return src_lo


cdef inline int32_t ft_lookup(flowtab_t *self, flow_key_t *key, int lo_sends, int64_t ts, uint8_t tflags,
                              uint32_t seq) noexcept nogil:
    """Index of the flow for key (created if new); -1 when the table is full.

    A SYN without ACK whose sequence number differs from the direction's
    earlier SYN starts a new flow (port reuse), as Wireshark does."""
    cdef uint64_t h = key_hash(key)
    cdef Py_ssize_t mask = self.nslots - 1
    cdef Py_ssize_t i = <Py_ssize_t>(h & mask)
    cdef int32_t fi
    cdef flow_t *f
    cdef int d
    while True:
        fi = self.slots[i]
        if fi < 0:
            break
        if key_equal(&self.ftab[fi].key, key):
            f = &self.ftab[fi]
            d = 0 if f.a_is_lo == lo_sends else 1
            if (tflags & (TH_SYN | TH_ACK)) == TH_SYN and f.d[d].syn_seen and f.d[d].isn != seq:
                fi = ft_new(self, key, lo_sends, ts)
                if fi >= 0:
                    self.slots[i] = fi
                return fi
            f.last_ns = ts
            return fi
        i = (i + 1) & mask
    fi = ft_new(self, key, lo_sends, ts)
    if fi < 0:
        return -1
    if (self.nflows + 1) * 2 > self.nslots:
        if ft_grow(self) < 0:
            return fi                 # the slot table stays usable: it is at most half full
        # re-find the empty slot in the new table
        mask = self.nslots - 1
        i = <Py_ssize_t>(h & mask)
        while self.slots[i] >= 0:
            i = (i + 1) & mask
    self.slots[i] = fi
    return fi

cdef int32_t ft_new(flowtab_t *self, flow_key_t *key, int lo_sends, int64_t ts) noexcept nogil:
    cdef flow_t *nf
    cdef Py_ssize_t ncap
    cdef flow_t *f
    if self.nflows >= self.max_flows:
        return -1
    if self.nflows == self.flows_cap:
        ncap = min(self.flows_cap * 2, self.max_flows)
        nf = <flow_t *>realloc(self.ftab, ncap * sizeof(flow_t))
        if nf == NULL:
            return -1
        self.ftab = nf
        self.flows_cap = ncap
    f = &self.ftab[self.nflows]
    memset(f, 0, sizeof(flow_t))
    memcpy(&f.key, key, sizeof(flow_key_t))
    f.a_is_lo = lo_sends
    f.first_ns = ts
    f.last_ns = ts
    f.d[0].window = 0xffffffff
    f.d[1].window = 0xffffffff
    self.nflows += 1
    return <int32_t>(self.nflows - 1)

cdef int ft_grow(flowtab_t *self) noexcept nogil:
    cdef Py_ssize_t nn = self.nslots * 2, i, j
    cdef int32_t *ns = <int32_t *>malloc(nn * sizeof(int32_t))
    if ns == NULL:
        return -1
    memset(ns, 0xff, nn * sizeof(int32_t))
    for i in range(self.nslots):
        if self.slots[i] >= 0:
            j = <Py_ssize_t>(key_hash(&self.ftab[self.slots[i]].key) & (nn - 1))
            while ns[j] >= 0:
                j = (j + 1) & (nn - 1)
            ns[j] = self.slots[i]
    free(self.slots)
    self.slots = ns
    self.nslots = nn
    return 0
