# netprobe._udpio: the oneway probe's UDP sender and receiver (wire protocol v2,
# see includes/wire.pxd for the datagram layout).
#
# UdpProbeSender sends probes from one connected UDP socket per source port:
# Poisson (or fixed) gaps on CLOCK_MONOTONIC, sendmmsg batches per socket,
# random payload sizes and bytes, the send time stamped (CLOCK_REALTIME) just
# before the batch is handed to the kernel; with tx_stamp, the kernel's TX
# time of each packet (SO_TIMESTAMPING, from the error queue) rides in the
# port's next packet as a follow-up. UdpProbeReceiver reads with recvmmsg and
# kernel RX times (SO_TIMESTAMPING) and keeps, per (session, port, open
# interval), fixed-size accumulators: memory is O(1) per port whatever the
# uptime; a delay waits in its port until the next packet says whether a
# follow-up corrects it. Both loops release the GIL and never raise per
# packet: they count and go on. Python sees one call per chunk (run) or
# interval.

from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.math cimport log
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from linux cimport (errno, EINTR, EAGAIN, CLOCK_MONOTONIC, CLOCK_REALTIME, timespec,
                    clock_ns, mono_ns, ns_to_timespec, strerror, setsockopt, socklen_t,
                    SOL_SOCKET, MSG_DONTWAIT, poll, pollfd, POLLIN, MSG_TRUNC, rx_stamps_on, sw_stamp_ns,
                    iovec, msghdr, mmsghdr, sendmmsg, recvmmsg, TIMER_ABSTIME, clock_nanosleep, prctl,
                    PR_SET_TIMERSLACK, recvmsg, MSG_ERRQUEUE, SO_TIMESTAMPING, SOF_TIMESTAMPING_TX_SOFTWARE,
                    SOF_TIMESTAMPING_SOFTWARE)
from wire cimport (udping_v1, push_udping_v1, pull_udping_v1, push_le64, V1_HDR_LEN, V1_GUID_MAX,
                   probe_hdr, push_u16, push_u32, push_u64, pull_u16, pull_u32, pull_u64, WIRE_MAGIC,
                   WIRE_VERSION, np_hmac_t, np_hmac_init, np_hmac, np_sha256_t, np_sha256_init,
                   np_sha256_update, np_sha256_final, push_probe_hdr, push_tag, pull_probe_hdr,
                   pull_tag_check, WIRE_OK, WIRE_HDR_LEN, WIRE_TAG_LEN, WIRE_MAX_LEN,
                   WIRE_TAG_MISSING, WIRE_TAG_BAD, WIRE_TAG_UNEXPECTED, FLAG_CONTROL,
                   FLAG_AUTH, FLAG_UNSYNC, FLAG_TXTIME)

HDR_LEN = WIRE_HDR_LEN
TAG_LEN = WIRE_TAG_LEN
MAX_LEN = WIRE_MAX_LEN
F_CONTROL, F_AUTH, F_UNSYNC, F_TXTIME = FLAG_CONTROL, FLAG_AUTH, FLAG_UNSYNC, FLAG_TXTIME
DECODE_ERRORS = {1: "short", 2: "magic", 3: "version", 4: "flags", 5: "length", 6: "reserved",
                 7: "tag missing", 8: "tag does not verify", 9: "tag present but no key"}

cdef enum:
    BATCH = 64              # packets per sendmmsg / recvmmsg
    NSLOTS = 4              # open intervals per port
    WINDOW_BITS = 16384     # duplicate-detection window per port (sequence numbers)
    HIST_TOP = 36           # histogram range: |delay| < 2**36 ns (68.7 s); beyond -> last bin
    SUB_PORT = 3            # histogram sub-buckets 2**3 per octave per port (<= 12.5 % wide)
    SUB_SESSION = 7         # 2**7 per octave per session (<= 0.8 % wide)
    MAX_PORTS = 5000
    STALL_NS = 1000000000   # a sender this far behind its schedule resynchronises (slots missed)
    MAX_CLOSE = 1024        # intervals one close_through() may close (bounds a hostile close)
    TX_PEEK = 256           # bytes read of each looped-back copy: link, IP and UDP headers + probe header
    TX_SCAN = TX_PEEK - WIRE_HDR_LEN   # where a probe header may start in that copy
    FU_MAX = 0x7fffffff     # largest follow-up, ns (2.1 s)

cdef int64_t MAX_RUN_NS = 86_400_000_000_000   # longest run() call: a day (end and poll timeouts fit)
cdef uint64_t SEND_NS_MAX = <uint64_t>1 << 63  # a send time must be a positive int64 (ns before 2262)

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil
    bint __builtin_sub_overflow(int64_t a, int64_t b, int64_t *r) nogil

# the layout the Python side (analysis.py, config.py) must agree with; tests compare them
PORT_SUB_BITS = SUB_PORT
SESSION_SUB_BITS = SUB_SESSION
HIST_TOP_EXP = HIST_TOP
MAX_SESSION_PORTS = MAX_PORTS


class DecodeError(ValueError):
    """A datagram that is not a valid v2 probe; `offset` is the first byte found wrong."""

    def __init__(self, message, offset):
        super().__init__(f"{message} at offset {offset}")
        self.offset = offset


# -- helpers --------------------------------------------------------------------------

cdef inline int hist_bins(int sub) noexcept nogil:
    return (HIST_TOP - sub + 1) << sub


cdef inline int hist_index(int64_t d, int sub) noexcept nogil:
    """Signed log-linear bin of `d` ns: [0, bins) for d < 0, [bins, 2 bins) for d >= 0."""
    cdef int nb = hist_bins(sub), m, i
    cdef uint64_t v = 0 - <uint64_t>d if d < 0 else <uint64_t>d      # |INT64_MIN| without overflow
    if v < (<uint64_t>1 << sub):
        i = <int>v
    else:
        m = 63 - __builtin_clzll(v)
        if m >= HIST_TOP:
            i = nb - 1
        else:
            i = ((m - sub + 1) << sub) + <int>((v >> (m - sub)) - (<uint64_t>1 << sub))
    return i if d < 0 else nb + i


def hist_bin(int64_t delay_ns, int sub):
    """Test hook: the histogram bin of `delay_ns` with 2**sub sub-buckets per octave."""
    if not 0 <= sub <= 16:
        raise ValueError(f"sub must be 0 to 16 (got {sub})")
    return hist_index(delay_ns, sub)


cdef inline int64_t sat_sub(int64_t a, int64_t b) noexcept nogil:
    """a - b, saturated to the int64 range (peers choose b)."""
    cdef int64_t r
    if __builtin_sub_overflow(a, b, &r):
        return INT64_MAX if b < 0 else INT64_MIN
    return r


cdef int check_run_ns(int64_t duration_ns) except -1:
    if not 0 < duration_ns <= MAX_RUN_NS:
        raise ValueError(f"duration must be 1 ns to 1 day in ns (got {duration_ns})")
    return 0


cdef inline uint64_t rng_next(uint64_t *s) noexcept nogil:
    """splitmix64."""
    cdef uint64_t z
    s[0] += 0x9e3779b97f4a7c15ULL
    z = s[0]
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL
    return z ^ (z >> 31)


cdef inline double rng_unit(uint64_t *s) noexcept nogil:
    """Uniform on (0, 1]."""
    return (<double>(rng_next(s) >> 11) + 1.0) / 9007199254740992.0


cdef inline void fill_random(uint8_t *p, size_t n, uint64_t *s) noexcept nogil:
    cdef uint64_t x
    cdef size_t i = 0, j
    while i < n:
        x = rng_next(s)
        j = 0
        while j < 8 and i < n:
            p[i] = <uint8_t>(x >> (8 * j))
            i += 1
            j += 1


cdef inline uint64_t csum_add(uint64_t s, const uint8_t *p, size_t n) noexcept nogil:
    """RFC 1071 sum of big-endian 16-bit words (an odd last byte is padded with zero)."""
    cdef size_t i = 0
    while i + 1 < n:
        s += (<uint64_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint64_t>p[i] << 8
    return s


cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef int set_key(np_hmac_t *m, key) except -1:
    cdef const uint8_t[:] k = key
    if len(key) == 0:
        return 0
    np_hmac_init(m, &k[0], len(key))
    return 1


def hmac_sha256(key, data):
    """Test hook: the tag function of the wire codec (compare with hmac/hashlib)."""
    cdef np_hmac_t m
    cdef uint8_t out[32]
    cdef const uint8_t[:] d = data
    cdef const uint8_t[:] k = key
    np_hmac_init(&m, &k[0] if len(key) else NULL, len(key))
    np_hmac(&m, &d[0] if d.shape[0] else NULL, d.shape[0], out)
    return bytes(out[:32])


def sha256(data):
    """Test hook: plain SHA-256 of the codec."""
    cdef np_sha256_t s
    cdef uint8_t out[32]
    cdef const uint8_t[:] d = data
    np_sha256_init(&s)
    np_sha256_update(&s, &d[0] if d.shape[0] else NULL, d.shape[0])
    np_sha256_final(&s, out)
    return bytes(out[:32])


def push_header(*, int flags, int port, uint64_t session, uint64_t start_ns, uint64_t seq, uint64_t send_ns,
                uint32_t interval, uint32_t clock_err_us, uint32_t index, uint32_t count, int32_t tx_follow_up=0,
                int length=0, payload=b"", key=b""):
    """One datagram as bytes: header, `payload` (padded with zeros to `length`), tag if `key`.

    length 0: header + payload (+ tag). FLAG_AUTH is set when a key is given;
    tx_follow_up is written only with F_TXTIME in flags.
    """
    cdef probe_hdr h
    cdef np_hmac_t m
    cdef bint keyed = len(key) > 0
    cdef int need = WIRE_HDR_LEN + len(payload) + (WIRE_TAG_LEN if keyed else 0)
    if length == 0:
        length = need
    if not need <= length <= WIRE_MAX_LEN:
        raise ValueError(f"length must be {need} to {WIRE_MAX_LEN} bytes (got {length})")
    if not 0 <= port <= 0xffff or not 0 <= flags <= 0xff:
        raise ValueError("port must fit 16 bits and flags 8 bits")
    buf = bytearray(length)
    buf[WIRE_HDR_LEN:WIRE_HDR_LEN + len(payload)] = payload
    cdef uint8_t[:] b = buf
    h.flags = flags | (FLAG_AUTH if keyed else 0)
    h.port, h.session, h.start_ns, h.seq, h.send_ns = port, session, start_ns, seq, send_ns
    h.interval, h.clock_err_us, h.length, h.index, h.count = interval, clock_err_us, length, index, count
    h.tx_follow_up = tx_follow_up
    push_probe_hdr(&b[0], &h)
    if keyed:
        set_key(&m, key)
        push_tag(&b[0], length, &m)
    return bytes(buf)


def pull_header(data, key=b""):
    """Decode one datagram -> dict of header fields; DecodeError(offset) if it is not a valid
    v2 probe (or, with `key`, not authenticated by it). Consumes nothing on error."""
    cdef probe_hdr h
    cdef np_hmac_t m
    cdef size_t off = 0, n = len(data)
    cdef const uint8_t[:] d = data
    cdef int r
    if n == 0:
        raise DecodeError(DECODE_ERRORS[1], 0)
    r = pull_probe_hdr(&d[0], n, &h, &off)
    if r == WIRE_OK:
        r = pull_tag_check(&d[0], n, &h, &m if set_key(&m, key) else NULL, &off)
    if r != WIRE_OK:
        raise DecodeError(DECODE_ERRORS[r], off)
    return {"flags": h.flags, "port": h.port, "session": h.session, "start_ns": h.start_ns, "seq": h.seq,
            "send_ns": h.send_ns, "interval": h.interval, "clock_err_us": h.clock_err_us, "length": h.length,
            "index": h.index, "count": h.count, "tx_follow_up": h.tx_follow_up}


# -- sender ---------------------------------------------------------------------------

cdef class UdpProbeSender:
    """Probes from one connected UDP socket per source port (the caller owns the sockets).

    Packet k is due at the schedule's k-th slot: gaps are exponential with
    mean `gap_ns` capped at 10x the mean (Poisson, as UDPing) or fixed;
    ports take turns round-robin. Each wake-up sends every due packet, up to
    64, with one sendmmsg per port; the send time in each packet is
    CLOCK_REALTIME read just before its batch goes to the kernel (after
    everything else is built, before the tag is computed). A packet the
    kernel refused (EAGAIN, ECONNREFUSED, ...) is counted in send_errors and
    its sequence number reused, so the receiver never sees it as lost.

    spin_ns: sleep (clock_nanosleep) until this long before a slot, then
    spin; 0 = sleep only (cheap, late by the host's timer wake-up latency).
    run() sets its thread's timer slack to 1 ns: the kernel's default lets a
    sleep end up to 50 us late, to batch wake-ups.
    """
    cdef int *fds
    cdef readonly int nports
    cdef readonly uint64_t session, start_ns
    cdef readonly int64_t gap_ns, spin_ns
    cdef readonly int min_len, max_len
    cdef readonly bint poisson
    cdef np_hmac_t key
    cdef bint keyed
    cdef readonly uint32_t clock_err_us
    cdef readonly bint unsync
    cdef uint64_t *seq
    cdef uint32_t *count
    cdef uint32_t *prev_count
    cdef readonly uint32_t interval
    cdef int next_port
    cdef int64_t next_due
    cdef uint64_t rng
    cdef uint8_t *bufs
    cdef int slot                  # bytes per batch buffer: frame headers + max_len
    cdef readonly int l2len        # raw mode: Ethernet + IP + UDP header bytes before the probe (0: sockets)
    cdef int raw_fd
    cdef bint v6
    cdef uint8_t src_mac[6]
    cdef uint8_t src_ip[16]
    cdef uint8_t dst_ip[16]
    cdef uint8_t *macs
    cdef readonly int nmacs
    cdef uint16_t *sports
    cdef uint16_t dport
    cdef uint32_t *rot
    cdef uint16_t ipid
    cdef readonly bint v1          # UDPing v1 headers (compatibility) instead of protocol v2
    cdef uint8_t *guids            # v1: per port, 20 hex characters + NUL
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef int64_t due[BATCH]
    cdef int port_of[BATCH]
    cdef int len_of[BATCH]
    cdef bint running
    cdef readonly bint tx_stamp     # kernel TX times sent as follow-ups (FLAG_TXTIME)
    cdef readonly int64_t tx_stamps # kernel TX timestamps read back
    cdef int64_t *fu_seq           # per port: the packet whose kernel TX time is known (-1: none) ...
    cdef int32_t *fu_ns            # ... and that time minus the send time it carried
    cdef int tx_off                # where the probe header starts in a looped-back copy (-1: not found yet)
    cdef uint8_t txbuf[TX_PEEK]
    cdef char txctl[256]
    cdef readonly int64_t sent, send_errors, missed, controls_sent
    cdef readonly int last_errno

    def __cinit__(self, *args, **kwargs):
        self.fds = NULL
        self.seq = NULL
        self.count = NULL
        self.prev_count = NULL
        self.bufs = NULL
        self.macs = NULL
        self.sports = NULL
        self.rot = NULL
        self.guids = NULL
        self.fu_seq = NULL
        self.fu_ns = NULL
        self.raw_fd = -1
        self.tx_off = -1

    def __init__(self, fds, uint64_t session, uint64_t start_ns, int64_t gap_ns, *, int min_len=WIRE_HDR_LEN,
                 int max_len=128, bint poisson=True, int64_t spin_ns=0, key=b"", uint32_t clock_err_us=0,
                 bint unsync=False, uint64_t seed=0, raw=None, bint v1=False, bint tx_stamp=False):
        cdef int i, k, flags = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
        if raw is not None:
            n = self._init_raw(raw)
        else:
            n = len(fds)
        if not 1 <= n <= MAX_PORTS:
            raise ValueError(f"need 1 to {MAX_PORTS} ports (got {n})")
        if not 1_000 <= gap_ns <= 60_000_000_000:
            raise ValueError(f"mean gap must be 1 us to 60 s in ns (got {gap_ns})")
        if not 0 <= spin_ns <= 100_000_000:
            raise ValueError(f"spin must be 0 to 100 ms in ns (got {spin_ns})")
        if v1 and len(key):
            raise ValueError("UDPing v1 probes carry no tag: no key with v1")
        if v1 and tx_stamp:
            raise ValueError("UDPing v1 probes carry no follow-up: no tx_stamp with v1")
        least = V1_HDR_LEN if v1 else WIRE_HDR_LEN + (WIRE_TAG_LEN if len(key) else 0)
        if not least <= min_len <= max_len <= WIRE_MAX_LEN:
            raise ValueError(f"sizes must satisfy {least} <= min_len <= max_len <= {WIRE_MAX_LEN} "
                             f"(got {min_len}, {max_len})")
        self.fds = <int *>calloc(n, sizeof(int))
        self.seq = <uint64_t *>calloc(n, sizeof(uint64_t))
        self.count = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.prev_count = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.fu_seq = <int64_t *>malloc(n * sizeof(int64_t))
        self.fu_ns = <int32_t *>calloc(n, sizeof(int32_t))
        self.slot = self.l2len + max_len
        self.bufs = <uint8_t *>malloc(<size_t>BATCH * self.slot)
        if self.fds == NULL or self.seq == NULL or self.count == NULL or self.prev_count == NULL \
                or self.bufs == NULL or self.fu_seq == NULL or self.fu_ns == NULL:
            raise MemoryError()
        for i in range(n):
            self.fds[i] = self.raw_fd if raw is not None else fds[i]
            self.fu_seq[i] = -1
        if tx_stamp:           # driver-level software TX stamps, each queued with a copy of its packet
            for i in range(1 if raw is not None else n):
                if setsockopt(self.fds[i], SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) != 0:
                    PyErr_SetFromErrno(OSError)
        self.tx_stamp = tx_stamp
        self.nports = n
        self.session, self.start_ns, self.gap_ns, self.spin_ns = session, start_ns, gap_ns, spin_ns
        self.min_len, self.max_len, self.poisson = min_len, max_len, poisson
        self.keyed = set_key(&self.key, key)
        self.clock_err_us, self.unsync = clock_err_us, unsync
        self.rng = seed if seed else <uint64_t>mono_ns() ^ session
        memset(self.msgs, 0, sizeof(self.msgs))
        self.v1 = v1
        if v1:
            self.guids = <uint8_t *>calloc(n, 21)
            if self.guids == NULL:
                raise MemoryError()
            self.new_guids()

    def new_guids(self):
        """v1: a fresh random GUID (20 lowercase hex characters) for every port, as UDPing
        does at each wall-clock interval boundary. Returns them."""
        cdef int port, i
        cdef uint64_t x = 0
        if not self.v1:
            raise ValueError("GUIDs belong to v1 mode")
        out = []
        for port in range(self.nports):
            for i in range(V1_GUID_MAX):
                if i % 16 == 0:
                    x = rng_next(&self.rng)
                self.guids[21 * port + i] = b"0123456789abcdef"[(x >> (4 * (i % 16))) & 15]
            self.guids[21 * port + V1_GUID_MAX] = 0
            out.append(bytes(self.guids[21 * port:21 * port + V1_GUID_MAX]).decode())
        return out

    def __dealloc__(self):
        free(self.fds)
        free(self.seq)
        free(self.count)
        free(self.prev_count)
        free(self.bufs)
        free(self.macs)
        free(self.sports)
        free(self.rot)
        free(self.guids)
        free(self.fu_seq)
        free(self.fu_ns)

    cdef int _init_raw(self, raw) except -1:
        """Raw mode: whole Ethernet frames on one AF_PACKET socket (raw["fd"], the caller's,
        bound to the interface), to next-hop MACs that each source port rotates through."""
        cdef int i, k
        macs, sports = list(raw["macs"]), list(raw["sports"])
        src_ip, dst_ip, src_mac = bytes(raw["src_ip"]), bytes(raw["dst_ip"]), bytes(raw["src_mac"])
        if not 1 <= len(macs) <= 64 or any(len(m) != 6 for m in macs) or len(src_mac) != 6:
            raise ValueError("raw mode needs 1 to 64 next-hop MACs and a source MAC, 6 bytes each")
        if len(src_ip) != len(dst_ip) or len(src_ip) not in (4, 16):
            raise ValueError("raw mode needs source and destination addresses of one family (4 or 16 bytes)")
        if not 1 <= len(sports) <= MAX_PORTS or not all(1 <= p <= 65535 for p in sports):
            raise ValueError(f"raw mode needs 1 to {MAX_PORTS} source ports 1-65535")
        if not 1 <= raw["dport"] <= 65535:
            raise ValueError("destination port must be 1-65535")
        self.raw_fd = raw["fd"]
        self.v6 = len(src_ip) == 16
        self.l2len = 14 + (40 if self.v6 else 20) + 8
        self.nmacs = len(macs)
        self.macs = <uint8_t *>malloc(6 * self.nmacs)
        self.sports = <uint16_t *>malloc(sizeof(uint16_t) * len(sports))
        self.rot = <uint32_t *>calloc(len(sports), sizeof(uint32_t))
        if self.macs == NULL or self.sports == NULL or self.rot == NULL:
            raise MemoryError()
        for i in range(self.nmacs):
            for k in range(6):
                self.macs[6 * i + k] = macs[i][k]
        for i in range(len(sports)):
            self.sports[i] = sports[i]
        for k in range(6):
            self.src_mac[k] = src_mac[k]
        for k in range(len(src_ip)):
            self.src_ip[k] = src_ip[k]
            self.dst_ip[k] = dst_ip[k]
        self.dport = raw["dport"]
        return len(sports)

    cdef void _frame_headers(self, uint8_t *f, int port, int length) noexcept nogil:
        """Ethernet (next hop of this port's rotation) + IPv4/IPv6 + UDP headers; the UDP
        checksum is left 0 for _frame_checksum once the probe is final."""
        cdef int k, iplen = 40 if self.v6 else 20
        cdef uint8_t *mac = self.macs + 6 * (self.rot[port] % self.nmacs)
        cdef uint8_t *u = f + 14 + iplen
        self.rot[port] += 1
        memcpy(f, mac, 6)
        memcpy(f + 6, self.src_mac, 6)
        if self.v6:
            push_u16(f + 12, 0x86DD)
            push_u32(f + 14, 0x60000000)
            push_u16(f + 18, 8 + length)
            f[20] = 17                                  # next header: UDP
            f[21] = 64                                  # hop limit
            memcpy(f + 22, self.src_ip, 16)
            memcpy(f + 38, self.dst_ip, 16)
        else:
            push_u16(f + 12, 0x0800)
            f[14] = 0x45
            f[15] = 0
            push_u16(f + 16, 20 + 8 + length)
            push_u16(f + 18, self.ipid)
            self.ipid += 1
            push_u16(f + 20, 0)
            f[22] = 64                                  # TTL
            f[23] = 17                                  # protocol: UDP
            push_u16(f + 24, 0)
            memcpy(f + 26, self.src_ip, 4)
            memcpy(f + 30, self.dst_ip, 4)
            push_u16(f + 24, csum_fold(csum_add(0, f + 14, 20)))
        push_u16(u, self.sports[port])
        push_u16(u + 2, self.dport)
        push_u16(u + 4, 8 + length)
        push_u16(u + 6, 0)

    cdef void _frame_checksum(self, uint8_t *f, int length) noexcept nogil:
        """UDP checksum over the pseudo-header, header and probe (0 is sent as 0xffff)."""
        cdef int alen = 16 if self.v6 else 4
        cdef uint8_t *u = f + self.l2len - 8
        cdef uint64_t s = csum_add(0, self.src_ip, alen)
        cdef uint16_t c
        s = csum_add(s, self.dst_ip, alen)
        s += 17 + 8 + length                        # protocol and UDP length (fits either family's form)
        s = csum_add(s, u, 8 + length)
        c = csum_fold(s)
        push_u16(u + 6, c if c else 0xFFFF)

    def set_clock(self, uint32_t clock_err_us, bint unsync):
        """Update the clock error bound and sync flag written into later packets."""
        self.clock_err_us, self.unsync = clock_err_us, unsync

    cdef inline int64_t _gap(self) noexcept nogil:
        cdef double g
        if not self.poisson:
            return self.gap_ns
        g = -log(rng_unit(&self.rng)) * self.gap_ns
        if g > 10.0 * self.gap_ns:
            g = 10.0 * self.gap_ns
        return <int64_t>g

    cdef inline int _flags(self) noexcept nogil:
        return (FLAG_AUTH if self.keyed else 0) | (FLAG_UNSYNC if self.unsync else 0)

    cdef void _fill(self, int b, int port, int length, int flags, uint32_t index, uint32_t count,
                    uint64_t seq) noexcept nogil:
        """Build packet b of the batch (send time and tag come at send time)."""
        cdef probe_hdr h
        cdef uint8_t *f = self.bufs + <size_t>b * self.slot
        cdef uint8_t *p = f + self.l2len
        cdef udping_v1 v
        if self.raw_fd >= 0:
            self._frame_headers(f, port, length)
        self.port_of[b] = port
        self.len_of[b] = length
        if self.v1:
            v.start_s = <int64_t>(self.start_ns // 1000000000)
            memcpy(v.guid, self.guids + 21 * port, 21)
            v.guid_len = V1_GUID_MAX
            v.seq = <uint32_t>seq
            v.sent_sec = 0
            v.sent_nsec = 0
            v.size = length
            push_udping_v1(p, &v)
            fill_random(p + V1_HDR_LEN, length - V1_HDR_LEN, &self.rng)
            return
        h.flags = flags
        h.port = port
        h.session = self.session
        h.start_ns = self.start_ns
        h.seq = seq
        h.send_ns = 0
        h.interval = self.interval
        h.clock_err_us = self.clock_err_us
        h.length = length
        h.index = index
        h.count = count
        push_probe_hdr(p, &h)
        fill_random(p + WIRE_HDR_LEN, length - WIRE_HDR_LEN, &self.rng)

    cdef inline bint _ours_at(self, int off) noexcept nogil:
        return pull_u32(self.txbuf + off) == WIRE_MAGIC and self.txbuf[off + 4] == WIRE_VERSION \
            and pull_u64(self.txbuf + off + 8) == self.session

    cdef const uint8_t *_probe_in(self, int n) noexcept nogil:
        """This sender's probe header in the first n bytes of a looped-back copy (after the
        link, IP and UDP headers, whatever their length), or NULL."""
        cdef int off, last = min(n - WIRE_HDR_LEN, TX_SCAN)
        if 0 <= self.tx_off <= last and self._ours_at(self.tx_off):     # the headers rarely change
            return self.txbuf + self.tx_off
        for off in range(last + 1):
            if self._ours_at(off):
                self.tx_off = off
                return self.txbuf + off
        return NULL

    cdef void _read_tx(self, int fd) noexcept nogil:
        """Read the kernel TX timestamps queued on fd: each data packet's TX time minus its
        stamped send time becomes its port's follow-up (when it fits 32 bits of ns)."""
        cdef msghdr m
        cdef iovec v
        cdef const uint8_t *p
        cdef int64_t kts, diff
        cdef ssize_t r
        cdef int k, port
        for k in range(4 * BATCH):
            memset(&m, 0, sizeof(m))
            v.iov_base = self.txbuf
            v.iov_len = TX_PEEK
            m.msg_iov = &v
            m.msg_iovlen = 1
            m.msg_control = self.txctl
            m.msg_controllen = sizeof(self.txctl)
            r = recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT)
            if r < 0:
                return
            kts = sw_stamp_ns(&m)
            p = self._probe_in(<int>r)
            if kts < 0 or p == NULL or p[5] & FLAG_CONTROL:
                continue
            port = pull_u16(p + 6)
            diff = kts - <int64_t>pull_u64(p + 32)
            if port < self.nports and -FU_MAX <= diff <= FU_MAX:
                self.fu_seq[port] = <int64_t>pull_u64(p + 24)
                self.fu_ns[port] = <int32_t>diff
                self.tx_stamps += 1

    cdef int _send_batch(self, int nb, int64_t *late, Py_ssize_t cap, Py_ssize_t *nlate,
                         bint control) noexcept nogil:
        """Send packets 0..nb-1, one sendmmsg per port; returns how many the kernel took.
        Data packets the kernel refused give back their sequence numbers and interval slots."""
        cdef int b, j, k, q, port, r, total = 0, vlen
        cdef int idx[BATCH]
        cdef bint done[BATCH]
        cdef uint8_t *p
        cdef int64_t now_real, now_mono
        for b in range(nb):
            done[b] = False
        for b in range(nb):
            if done[b]:
                continue
            port = self.port_of[b]
            vlen = 0
            for j in range(b, nb):
                if not done[j] and (self.port_of[j] == port or self.raw_fd >= 0):
                    idx[vlen] = j
                    done[j] = True
                    vlen += 1
            if self.tx_stamp:
                self._read_tx(self.fds[port])
            now_real = clock_ns(CLOCK_REALTIME)
            now_mono = mono_ns()
            for k in range(vlen):
                j = idx[k]
                p = self.bufs + <size_t>j * self.slot + self.l2len
                if self.v1:
                    push_le64(p + 48, <uint64_t>(now_real // 1000000000))
                    push_le64(p + 56, <uint64_t>(now_real % 1000000000))
                else:
                    push_u64(p + 32, <uint64_t>now_real)
                    q = self.port_of[j]          # its port (raw mode: a batch mixes them)
                    if self.fu_seq[q] >= 0 and self.fu_seq[q] + 1 == <int64_t>pull_u64(p + 24):
                        p[5] |= FLAG_TXTIME
                        push_u32(p + 60, <uint32_t>self.fu_ns[q])
                if self.keyed:
                    push_tag(p, self.len_of[j], &self.key)
                if self.raw_fd >= 0:
                    self._frame_checksum(p - self.l2len, self.len_of[j])
                self.iov[k].iov_base = p - self.l2len
                self.iov[k].iov_len = self.l2len + self.len_of[j]
                self.msgs[k].msg_hdr.msg_iov = &self.iov[k]
                self.msgs[k].msg_hdr.msg_iovlen = 1
            r = sendmmsg(self.fds[port], self.msgs, vlen, MSG_DONTWAIT)
            if r < 0:
                self.last_errno = errno
                r = 0
            if r < vlen:
                self.send_errors += vlen - r
                if not control:
                    for k in range(r, vlen):                # a suffix of each port's packets here
                        self.seq[self.port_of[idx[k]]] -= 1
                        self.count[self.port_of[idx[k]]] -= 1
            if late != NULL:
                for k in range(r):
                    if nlate[0] < cap:
                        late[nlate[0]] = now_mono - self.due[idx[k]]
                        nlate[0] += 1
            total += r
        return total

    def run(self, int64_t duration_ns, int64_t[:] late_out=None):
        """Send on schedule for `duration_ns`, GIL released; the schedule carries over calls.

        late_out (optional) receives each sent probe's send-time error: when
        its batch went to the kernel minus its scheduled time, ns (until full).
        Returns this call's {sent, send_errors, missed, late (entries written),
        elapsed_ns, interrupted}. A signal ends the call early.
        """
        cdef int64_t t0, now, end, wake
        cdef int nb, port, length, flags, err = 0, span
        cdef Py_ssize_t nlate = 0
        cdef int64_t sent = 0, errors0 = self.send_errors, missed = 0
        cdef int64_t *late = NULL
        cdef Py_ssize_t cap = 0
        cdef timespec ts
        if late_out is not None and late_out.shape[0] > 0:
            late = &late_out[0]
            cap = late_out.shape[0]
        if self.running:
            raise RuntimeError("run() is already running")
        check_run_ns(duration_ns)
        self.running = True
        t0 = mono_ns()
        end = t0 + duration_ns
        if self.next_due == 0:
            self.next_due = t0
        span = self.max_len - self.min_len + 1
        flags = self._flags()
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        try:
            with nogil:
                while True:
                    now = mono_ns()
                    if self.next_due >= end:
                        if now >= end:
                            break
                        wake = end
                    else:
                        wake = self.next_due
                    if wake > now:
                        if wake - now > self.spin_ns:
                            ns_to_timespec(wake - self.spin_ns, &ts)
                            if clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR:
                                err = EINTR
                                break
                        now = mono_ns()
                        while now < wake:
                            now = mono_ns()
                    if now - self.next_due > STALL_NS:        # descheduled for long: skip, do not burst
                        while self.next_due < now:
                            self.next_due += self._gap()
                            missed += 1
                        continue
                    nb = 0
                    while nb < BATCH and self.next_due <= now and self.next_due < end:
                        port = self.next_port
                        length = self.min_len + <int>(rng_next(&self.rng) % <uint64_t>span)
                        self._fill(nb, port, length, flags, self.count[port], self.prev_count[port],
                                   self.seq[port])
                        self.due[nb] = self.next_due
                        self.seq[port] += 1
                        self.count[port] += 1
                        nb += 1
                        self.next_port = (port + 1) % self.nports
                        self.next_due += self._gap()
                    if nb:
                        sent += self._send_batch(nb, late, cap, &nlate, False)
        finally:
            self.running = False
            self.sent += sent
            self.missed += missed
        if err == EINTR:
            PyErr_CheckSignals()
        return {"sent": sent, "send_errors": self.send_errors - errors0, "missed": missed, "late": nlate,
                "elapsed_ns": mono_ns() - t0, "interrupted": err == EINTR}

    def end_interval(self, int copies=3):
        """Close the current interval: `copies` control records per port (header and tag only;
        seq = the port's next sequence number, count = packets it sent in the interval), then
        start the next one.
        Returns the closed interval's per-port sent counts."""
        cdef int port, c, nb, flags
        cdef Py_ssize_t nlate = 0
        if self.running:
            raise RuntimeError("end_interval() while run() is running")
        if not (0 if self.v1 else 1) <= copies <= 16 or (self.v1 and copies):
            raise ValueError(f"copies must be 1 to 16, or 0 in v1 mode, which has no control records (got {copies})")
        flags = self._flags() | FLAG_CONTROL
        sent = [self.count[port] for port in range(self.nports)]
        with nogil:
            for port in range(self.nports):
                nb = 0
                for c in range(copies):
                    self._fill(nb, port, WIRE_HDR_LEN + (WIRE_TAG_LEN if self.keyed else 0), flags, c,
                               self.count[port], self.seq[port])
                    nb += 1
                self.controls_sent += self._send_batch(nb, NULL, 0, &nlate, True)
                self.prev_count[port] = self.count[port]
                self.count[port] = 0
            self.interval += 1
        return sent

    @property
    def next_seq(self):
        return [self.seq[i] for i in range(self.nports)]


# -- receiver -------------------------------------------------------------------------

ctypedef struct slot_t:
    int64_t interval           # -1: free
    int64_t received, dup, reordered, stale
    int64_t base               # first sequence number of the interval on this port (-1 unknown)
    int64_t max_seq            # highest data sequence number received in the interval (-1)
    int64_t ctl_count, ctl_next  # from a control record (-1 unknown)
    int64_t piggy_count, next_base   # from data of the next interval (-1 unknown)
    int64_t n, dmin, dmax
    int64_t n_tx               # delays measured from the sender's kernel TX time (a follow-up)
    double dsum, dsumsq
    uint32_t *hist

ctypedef struct port_t:
    int64_t max_seq            # highest sequence number seen (-1: none)
    uint64_t *bitmap           # WINDOW_BITS bits: seen sequence numbers up to max_seq
    int64_t pend_seq           # the last data packet, whose delay waits for the next packet's
    int64_t pend_delay         #   TX follow-up (-1: none); its delay (ns) and interval
    int64_t pend_interval
    slot_t slots[NSLOTS]

ctypedef struct session_t:
    uint64_t id
    int nports
    bint keyed
    np_hmac_t key
    int64_t last_closed
    port_t *ports
    uint32_t *fhist[NSLOTS]
    int64_t finterval[NSLOTS]
    int64_t packets, controls, late_closed, overrun, bad_port, unsync_seen
    uint32_t clock_err_us


cdef void slot_reset(slot_t *s, int64_t interval, int bins) noexcept nogil:
    cdef uint32_t *h = s.hist
    memset(s, 0, sizeof(slot_t))
    s.hist = h
    memset(h, 0, 2 * bins * sizeof(uint32_t))
    s.interval = interval
    s.base = -1
    s.max_seq = -1
    s.ctl_count = -1
    s.ctl_next = -1
    s.piggy_count = -1
    s.next_base = -1


cdef slot_t *slot_claim(session_t *ss, port_t *ps, int64_t interval, int bins) noexcept nogil:
    """The open slot of `interval` on a port, claimed if free; NULL if closed or no room."""
    cdef slot_t *s = &ps.slots[interval % NSLOTS]
    if interval <= ss.last_closed:
        return NULL
    if s.interval == interval:
        return s
    if s.interval == -1:
        slot_reset(s, interval, bins)
        return s
    ss.overrun += 1
    return NULL


cdef int track(port_t *ps, int64_t seq) noexcept nogil:
    """0 new in order, 1 new but late (reordered), 2 duplicate, 3 older than the window."""
    cdef int64_t s
    cdef uint64_t bit
    if seq > ps.max_seq:
        if ps.max_seq < 0 or seq - ps.max_seq >= WINDOW_BITS:
            memset(ps.bitmap, 0, WINDOW_BITS // 8)
        else:
            s = ps.max_seq + 1
            while s < seq:
                ps.bitmap[(s % WINDOW_BITS) >> 6] &= ~(<uint64_t>1 << (s & 63))
                s += 1
        ps.bitmap[(seq % WINDOW_BITS) >> 6] |= <uint64_t>1 << (seq & 63)
        ps.max_seq = seq
        return 0
    if ps.max_seq - seq >= WINDOW_BITS:
        return 3
    bit = <uint64_t>1 << (seq & 63)
    if ps.bitmap[(seq % WINDOW_BITS) >> 6] & bit:
        return 2
    ps.bitmap[(seq % WINDOW_BITS) >> 6] |= bit
    return 1


cdef class UdpProbeReceiver:
    """Counts probes of registered sessions arriving on one UDP socket (the caller's).

    Packets of unknown sessions, malformed or unauthenticated ones are
    counted and dropped; only add_session() (called for a session the
    control connection admitted) allocates memory, a fixed amount per port.
    """
    cdef int fd
    cdef session_t **sessions
    cdef int nsessions, max_sessions
    cdef int pbins, fbins
    cdef uint8_t *bufs
    cdef int bufsize
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef char ctrl[BATCH][64]
    cdef bint running
    cdef readonly int64_t datagrams, malformed, unauthenticated, unknown_session, truncated, no_kernel_ts
    cdef int64_t malformed_by[10]

    def __cinit__(self, *args, **kwargs):
        self.sessions = NULL
        self.bufs = NULL

    def __init__(self, int fd=-1, int max_sessions=64, int bufsize=2048):
        cdef int i
        if not 1 <= max_sessions <= 4096:
            raise ValueError(f"max_sessions must be 1 to 4096 (got {max_sessions})")
        if not WIRE_HDR_LEN <= bufsize <= 65536:
            raise ValueError(f"bufsize must be {WIRE_HDR_LEN} to 65536 (got {bufsize})")
        self.fd = fd
        if fd >= 0 and rx_stamps_on(fd) != 0:
            PyErr_SetFromErrno(OSError)
        self.max_sessions = max_sessions
        self.sessions = <session_t **>calloc(max_sessions, sizeof(session_t *))
        self.bufsize = bufsize
        self.bufs = <uint8_t *>malloc(<size_t>BATCH * bufsize)
        if self.sessions == NULL or self.bufs == NULL:
            raise MemoryError()
        self.pbins = hist_bins(SUB_PORT)
        self.fbins = hist_bins(SUB_SESSION)
        memset(self.msgs, 0, sizeof(self.msgs))
        for i in range(BATCH):
            self.iov[i].iov_base = self.bufs + <size_t>i * bufsize
            self.iov[i].iov_len = bufsize
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        cdef int i
        if self.sessions != NULL:
            for i in range(self.nsessions):
                self._free_session(self.sessions[i])
        free(self.sessions)
        free(self.bufs)

    cdef void _free_session(self, session_t *ss) noexcept:
        cdef int p, k
        if ss == NULL:
            return
        if ss.ports != NULL:
            for p in range(ss.nports):
                free(ss.ports[p].bitmap)
                for k in range(NSLOTS):
                    free(ss.ports[p].slots[k].hist)
        free(ss.ports)
        for k in range(NSLOTS):
            free(ss.fhist[k])
        free(ss)

    cdef session_t *_find(self, uint64_t sid) noexcept nogil:
        cdef int i
        for i in range(self.nsessions):
            if self.sessions[i].id == sid:
                return self.sessions[i]
        return NULL

    def add_session(self, uint64_t session, int nports, key=b""):
        """Register a session of `nports` source ports (memory: fixed per port)."""
        cdef session_t *ss
        cdef int p, k
        if self._find(session) != NULL:
            raise ValueError(f"session {session:016x} is already registered")
        if self.nsessions >= self.max_sessions:
            raise ValueError(f"receiver full: {self.max_sessions} sessions")
        if not 1 <= nports <= MAX_PORTS:
            raise ValueError(f"nports must be 1 to {MAX_PORTS} (got {nports})")
        ss = <session_t *>calloc(1, sizeof(session_t))
        if ss == NULL:
            raise MemoryError()
        ss.id = session
        ss.nports = nports
        ss.last_closed = -1
        ss.keyed = set_key(&ss.key, key)
        ss.ports = <port_t *>calloc(nports, sizeof(port_t))
        ok = ss.ports != NULL
        for k in range(NSLOTS):
            ss.finterval[k] = -1
            ss.fhist[k] = <uint32_t *>calloc(2 * self.fbins, sizeof(uint32_t))
            ok = ok and ss.fhist[k] != NULL
        if ok:
            for p in range(nports):
                ss.ports[p].max_seq = -1
                ss.ports[p].pend_seq = -1
                ss.ports[p].bitmap = <uint64_t *>calloc(WINDOW_BITS // 64, sizeof(uint64_t))
                ok = ok and ss.ports[p].bitmap != NULL
                for k in range(NSLOTS):
                    ss.ports[p].slots[k].interval = -1
                    ss.ports[p].slots[k].hist = <uint32_t *>calloc(2 * self.pbins, sizeof(uint32_t))
                    ok = ok and ss.ports[p].slots[k].hist != NULL
        if not ok:
            self._free_session(ss)
            raise MemoryError()
        self.sessions[self.nsessions] = ss
        self.nsessions += 1

    def remove_session(self, uint64_t session):
        cdef int i
        if self.running:
            raise RuntimeError("remove_session() while run() is running")
        for i in range(self.nsessions):
            if self.sessions[i].id == session:
                self._free_session(self.sessions[i])
                self.sessions[i] = self.sessions[self.nsessions - 1]
                self.nsessions -= 1
                return True
        return False

    cdef void _process(self, const uint8_t *p, size_t n, int64_t rx_ns) noexcept nogil:
        cdef probe_hdr h
        cdef size_t off = 0
        cdef int r, t
        cdef session_t *ss
        cdef port_t *ps
        cdef slot_t *s
        cdef slot_t *prev
        cdef int64_t seq, base
        self.datagrams += 1
        r = pull_probe_hdr(p, n, &h, &off)
        if r != WIRE_OK:
            self.malformed += 1
            self.malformed_by[r] += 1
            return
        ss = self._find(h.session)
        if ss == NULL:
            self.unknown_session += 1
            return
        r = pull_tag_check(p, n, &h, &ss.key if ss.keyed else NULL, &off)
        if r != WIRE_OK:
            self.unauthenticated += 1
            self.malformed_by[r] += 1
            return
        if h.port >= ss.nports or h.seq >= (<uint64_t>1 << 62) or h.send_ns >= SEND_NS_MAX \
                or (h.index > h.seq and not h.flags & FLAG_CONTROL):     # a control's index is its copy number
            ss.bad_port += 1
            self.malformed += 1
            return
        ps = &ss.ports[h.port]
        ss.clock_err_us = h.clock_err_us
        if h.flags & FLAG_UNSYNC:
            ss.unsync_seen += 1
        if h.flags & FLAG_CONTROL:
            ss.controls += 1
            if h.flags & FLAG_TXTIME:         # else the next data packet (same seq) may bring it
                self._settle(ss, ps, &h)
            s = slot_claim(ss, ps, h.interval, self.pbins)
            if s == NULL:
                ss.late_closed += 1
                return
            s.ctl_count = h.count
            s.ctl_next = <int64_t>h.seq
            return
        ss.packets += 1
        seq = <int64_t>h.seq
        t = track(ps, seq)
        s = slot_claim(ss, ps, h.interval, self.pbins)
        if s == NULL:
            if h.interval <= ss.last_closed:
                ss.late_closed += 1
            return
        base = seq - h.index
        if h.interval > 0:
            prev = slot_claim(ss, ps, h.interval - 1, self.pbins)
            if prev != NULL:
                prev.piggy_count = h.count
                prev.next_base = base
        if t == 3:
            s.stale += 1
            return
        if t == 2:
            s.dup += 1
            return
        s.received += 1
        if t == 1:
            s.reordered += 1
        s.base = base
        if seq > s.max_seq:
            s.max_seq = seq
        self._settle(ss, ps, &h)
        ps.pend_seq = seq
        ps.pend_delay = sat_sub(rx_ns, <int64_t>h.send_ns)
        ps.pend_interval = h.interval

    cdef void _settle(self, session_t *ss, port_t *ps, const probe_hdr *h) noexcept nogil:
        """Account the port's waiting delay, corrected by h's follow-up when h is the next
        sequence number and carries one (the sender's kernel TX time of the waiting packet)."""
        if ps.pend_seq < 0 or <int64_t>h.seq == ps.pend_seq:
            return
        if h.flags & FLAG_TXTIME and <int64_t>h.seq == ps.pend_seq + 1:
            self._release(ss, ps, h.tx_follow_up, True)
        else:
            self._release(ss, ps, 0, False)

    cdef void _release(self, session_t *ss, port_t *ps, int64_t follow_up, bint from_tx) noexcept nogil:
        """Account the port's waiting delay less `follow_up`; nothing waits after."""
        self._account(ss, ps, ps.pend_interval, sat_sub(ps.pend_delay, follow_up), from_tx)
        ps.pend_seq = -1

    cdef void _account(self, session_t *ss, port_t *ps, int64_t interval, int64_t d,
                       bint from_tx) noexcept nogil:
        """One one-way delay (ns) into its port's and the session's accumulators of `interval`."""
        cdef slot_t *s = &ps.slots[interval % NSLOTS]
        cdef int r = <int>(interval % NSLOTS)
        if s.interval != interval:
            return
        if s.n == 0 or d < s.dmin:
            s.dmin = d
        if s.n == 0 or d > s.dmax:
            s.dmax = d
        s.n += 1
        s.n_tx += from_tx
        s.dsum += d
        s.dsumsq += <double>d * d
        s.hist[hist_index(d, SUB_PORT)] += 1
        if ss.finterval[r] != interval:
            if ss.finterval[r] != -1:
                return
            ss.finterval[r] = interval
            memset(ss.fhist[r], 0, 2 * self.fbins * sizeof(uint32_t))
        ss.fhist[r][hist_index(d, SUB_SESSION)] += 1

    def feed(self, data, int64_t rx_ns):
        """Test hook: account one datagram received at `rx_ns` (CLOCK_REALTIME ns), as run() does."""
        cdef const uint8_t[:] d = data
        if len(data) == 0:
            self.datagrams += 1
            self.malformed += 1
            self.malformed_by[1] += 1
            return
        self._process(&d[0], d.shape[0], rx_ns)

    def run(self, int64_t duration_ns):
        """Receive for `duration_ns` (poll + recvmmsg, GIL released). Returns this call's
        {datagrams, elapsed_ns, interrupted}; the counters are attributes."""
        cdef int64_t t0, now, end, before = self.datagrams
        cdef int r, i, timeout, err = 0
        cdef pollfd pfd
        cdef int64_t rx
        if self.fd < 0:
            raise ValueError("this receiver has no socket (feed() only)")
        check_run_ns(duration_ns)
        if self.running:
            raise RuntimeError("run() is already running")
        self.running = True
        pfd.fd = self.fd
        pfd.events = POLLIN
        t0 = mono_ns()
        end = t0 + duration_ns
        try:
            with nogil:
                while True:
                    now = mono_ns()
                    if now >= end:
                        break
                    timeout = <int>((end - now + 999_999) // 1_000_000)
                    r = poll(&pfd, 1, timeout)
                    if r < 0:
                        if errno == EINTR:
                            err = EINTR
                            break
                        continue
                    if r == 0:
                        continue
                    while True:
                        for i in range(BATCH):
                            self.msgs[i].msg_hdr.msg_control = &self.ctrl[i][0]
                            self.msgs[i].msg_hdr.msg_controllen = 64
                            self.msgs[i].msg_hdr.msg_flags = 0
                        r = recvmmsg(self.fd, self.msgs, BATCH, MSG_DONTWAIT, NULL)
                        if r <= 0:
                            break
                        for i in range(r):
                            rx = sw_stamp_ns(&self.msgs[i].msg_hdr)
                            if rx < 0:
                                self.no_kernel_ts += 1
                                rx = clock_ns(CLOCK_REALTIME)
                            if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                                self.datagrams += 1
                                self.truncated += 1
                                self.malformed += 1
                                continue
                            self._process(self.bufs + <size_t>i * self.bufsize, self.msgs[i].msg_len, rx)
                        if r < BATCH:
                            break
        finally:
            self.running = False
        if err == EINTR:
            PyErr_CheckSignals()
        return {"datagrams": self.datagrams - before, "elapsed_ns": mono_ns() - t0,
                "interrupted": err == EINTR}

    def close_through(self, uint64_t session, int64_t interval):
        """Close every open interval of `session` up to `interval`, oldest first.

        Returns a list of {"interval", "ports": [per-port dict], "hist": [[bin, count], ...],
        "counters": {...}} (hist: the session's fine histogram, SESSION_SUB_BITS; each port's
        "hist" uses PORT_SUB_BITS). Packets arriving later for a closed interval are counted
        in late_closed, never in it.
        """
        cdef session_t *ss = self._find(session)
        cdef slot_t *s
        cdef slot_t *nxt
        cdef int p, k, b
        cdef int64_t i
        if ss == NULL:
            raise KeyError(f"no session {session:016x}")
        if interval > ss.last_closed + MAX_CLOSE:       # (interval - last_closed would overflow)
            raise ValueError(f"cannot close through interval {interval}: {ss.last_closed} is the last closed "
                             f"and one call closes at most {MAX_CLOSE}")
        for p in range(ss.nports):             # waiting delays of these intervals: no follow-up now
            if ss.ports[p].pend_seq >= 0 and ss.ports[p].pend_interval <= interval:
                self._release(ss, &ss.ports[p], 0, False)
        out = []
        i = ss.last_closed + 1
        while i <= interval:
            ports = []
            for p in range(ss.nports):
                s = &ss.ports[p].slots[i % NSLOTS]
                nxt = &ss.ports[p].slots[(i + 1) % NSLOTS]
                rec = {"port": p, "received": 0, "dup": 0, "reordered": 0, "stale": 0, "base": -1,
                       "max_seq": -1, "ctl_count": -1, "ctl_next": -1, "piggy_count": -1, "next_base": -1,
                       "n": 0, "n_tx": 0, "sum": 0.0, "sumsq": 0.0, "min": 0, "max": 0, "hist": []}
                if s.interval == i:
                    rec.update(received=s.received, dup=s.dup, reordered=s.reordered, stale=s.stale,
                               base=s.base, max_seq=s.max_seq, ctl_count=s.ctl_count, ctl_next=s.ctl_next,
                               piggy_count=s.piggy_count, next_base=s.next_base, n=s.n, n_tx=s.n_tx, sum=s.dsum,
                               sumsq=s.dsumsq, min=s.dmin, max=s.dmax,
                               hist=[[b, s.hist[b]] for b in range(2 * self.pbins) if s.hist[b]])
                    s.interval = -1
                if rec["next_base"] < 0 and nxt.interval == i + 1 and nxt.base >= 0:
                    rec["next_base"] = nxt.base
                ports.append(rec)
            k = <int>(i % NSLOTS)
            hist = []
            if ss.finterval[k] == i:
                hist = [[b, ss.fhist[k][b]] for b in range(2 * self.fbins) if ss.fhist[k][b]]
                ss.finterval[k] = -1
            ss.last_closed = i
            out.append({"interval": i, "ports": ports, "hist": hist})
            i += 1
        return out

    def session_counters(self, uint64_t session):
        cdef session_t *ss = self._find(session)
        if ss == NULL:
            raise KeyError(f"no session {session:016x}")
        return {"packets": ss.packets, "controls": ss.controls, "late_closed": ss.late_closed,
                "overrun": ss.overrun, "bad_port": ss.bad_port, "unsync_seen": ss.unsync_seen,
                "clock_err_us": ss.clock_err_us, "last_closed": ss.last_closed}

    @property
    def counters(self):
        return {"datagrams": self.datagrams, "malformed": self.malformed,
                "unauthenticated": self.unauthenticated, "unknown_session": self.unknown_session,
                "truncated": self.truncated, "no_kernel_ts": self.no_kernel_ts,
                "by_reason": {DECODE_ERRORS[i]: self.malformed_by[i] for i in range(1, 10)
                              if self.malformed_by[i]}}


# -- UDPing v1 (compatibility) ---------------------------------------------------------------

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)
    uint32_t ntohl(uint32_t v)

V1_HDR = V1_HDR_LEN
V1_DECODE_ERRORS = {1: "short", 3: "version", 4: "guid", 5: "size", 6: "tv_nsec"}
V1_COLUMNS = ("ip", "port", "guid_hi", "guid_lo", "start_s", "seq", "sent_ns", "rx_ns")


def push_udping(*, int64_t start_s, guid, uint32_t seq, int64_t sent_sec, int64_t sent_nsec, int length=0,
                payload=b""):
    """One UDPing v1 datagram (header + payload padded with zeros to `length`; 0 = fit)."""
    cdef udping_v1 h
    g = guid.encode() if isinstance(guid, str) else bytes(guid)
    if not 1 <= len(g) <= V1_GUID_MAX:
        raise ValueError("guid must be 1 to 20 characters")
    need = V1_HDR_LEN + len(payload)
    length = length or need
    if not need <= length <= WIRE_MAX_LEN:
        raise ValueError(f"length must be {need} to {WIRE_MAX_LEN} (got {length})")
    buf = bytearray(length)
    buf[V1_HDR_LEN:need] = payload
    cdef uint8_t[:] b = buf
    h.start_s, h.seq, h.sent_sec, h.sent_nsec, h.size = start_s, seq, sent_sec, sent_nsec, length
    h.guid_len = len(g)
    for i in range(len(g)):
        h.guid[i] = g[i]
    push_udping_v1(&b[0], &h)
    return bytes(buf)


def pull_udping(data):
    """Decode a UDPing v1 datagram -> dict; DecodeError(offset) if it is not one."""
    cdef udping_v1 h
    cdef size_t off = 0, n = len(data)
    cdef const uint8_t[:] d = data
    cdef int r
    if n == 0:
        raise DecodeError(V1_DECODE_ERRORS[1], 0)
    r = pull_udping_v1(&d[0], n, &h, &off)
    if r != WIRE_OK:
        raise DecodeError(V1_DECODE_ERRORS[r], off)
    return {"start_s": h.start_s, "guid": bytes(h.guid[:h.guid_len]).decode(), "seq": h.seq,
            "sent_sec": h.sent_sec, "sent_nsec": h.sent_nsec, "size": h.size}


cdef class UdpingV1Receiver:
    """udping_server's receive loop: recvmmsg with kernel RX timestamps on the caller's
    IPv4 UDP socket; each valid v1 probe becomes one int64 row (V1_COLUMNS) in the caller's
    buffer: source address and port, the GUID as (length << 16 | top 16 bits, low 64 bits),
    client start time, sequence number, send and receive times (ns). Anything else is
    counted in `malformed` and dropped."""
    cdef int fd
    cdef uint8_t *bufs
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef char ctrl[BATCH][64]
    cdef sockaddr_in names[BATCH]
    cdef readonly int64_t datagrams, malformed, no_kernel_ts

    def __cinit__(self, *args, **kwargs):
        self.bufs = NULL

    def __init__(self, int fd):
        cdef int i
        if rx_stamps_on(fd) != 0:
            PyErr_SetFromErrno(OSError)
        self.fd = fd
        self.bufs = <uint8_t *>malloc(<size_t>BATCH * 2048)
        if self.bufs == NULL:
            raise MemoryError()
        memset(self.msgs, 0, sizeof(self.msgs))
        for i in range(BATCH):
            self.iov[i].iov_base = self.bufs + <size_t>i * 2048
            self.iov[i].iov_len = 2048
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self.bufs)

    cdef int _row(self, const uint8_t *p, size_t n, sockaddr_in *sa, int64_t rx, int64_t *row) noexcept nogil:
        cdef udping_v1 h
        cdef size_t off = 0
        cdef int i
        cdef uint64_t g = 0
        cdef uint32_t top = 0
        if pull_udping_v1(p, n, &h, &off) != WIRE_OK or sa.sin_family != 2 \
                or h.sent_sec < 0 or h.sent_sec >= (<int64_t>1 << 33):
            return 0
        for i in range(h.guid_len):
            top = <uint32_t>((top << 4) | (g >> 60)) & 0xFFFF
            g = (g << 4) | <uint64_t>(h.guid[i] - 48 if h.guid[i] <= 57 else h.guid[i] - 87)
        row[0] = ntohl(sa.sin_addr.s_addr)
        row[1] = ntohs(sa.sin_port)
        row[2] = (<int64_t>h.guid_len << 16) | top
        row[3] = <int64_t>g
        row[4] = h.start_s
        row[5] = h.seq
        row[6] = h.sent_sec * 1000000000 + h.sent_nsec
        row[7] = rx
        return 1

    def feed(self, data, int64_t rx_ns, ip="127.0.0.1", int port=0):
        """Test hook: the row of one datagram from ip:port, or None (counted malformed)."""
        import ipaddress
        cdef int64_t row[8]
        cdef sockaddr_in sa
        cdef const uint8_t[:] d = data
        if not 0 <= port <= 0xffff:
            raise ValueError(f"port must be 0 to 65535 (got {port})")
        sa.sin_family = 2
        sa.sin_port = ((port & 0xFF) << 8) | (port >> 8)
        sa.sin_addr.s_addr = ntohl(int(ipaddress.IPv4Address(ip)))
        self.datagrams += 1
        if len(data) == 0 or not self._row(&d[0], d.shape[0], &sa, rx_ns, row):
            self.malformed += 1
            return None
        return [row[i] for i in range(8)]

    def run(self, int64_t[:, ::1] rows not None, int64_t duration_ns):
        """Receive for up to `duration_ns` or until `rows` is full (GIL released).
        Returns {rows, interrupted}."""
        cdef Py_ssize_t cap = rows.shape[0], nrows = 0
        cdef int64_t t0, now, end, rx
        cdef int r, i, timeout, err = 0
        cdef pollfd pfd
        if rows.shape[1] != 8:
            raise ValueError("rows must have 8 columns (V1_COLUMNS)")
        check_run_ns(duration_ns)
        pfd.fd = self.fd
        pfd.events = POLLIN
        t0 = mono_ns()
        end = t0 + duration_ns
        with nogil:
            while nrows + BATCH <= cap:
                now = mono_ns()
                if now >= end:
                    break
                timeout = <int>((end - now + 999_999) // 1_000_000)
                r = poll(&pfd, 1, timeout)
                if r < 0:
                    if errno == EINTR:
                        err = EINTR
                        break
                    continue
                if r == 0:
                    continue
                for i in range(BATCH):
                    self.msgs[i].msg_hdr.msg_control = &self.ctrl[i][0]
                    self.msgs[i].msg_hdr.msg_controllen = 64
                    self.msgs[i].msg_hdr.msg_name = &self.names[i]
                    self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                    self.msgs[i].msg_hdr.msg_flags = 0
                r = recvmmsg(self.fd, self.msgs, BATCH, MSG_DONTWAIT, NULL)
                if r <= 0:
                    continue
                for i in range(r):
                    self.datagrams += 1
                    rx = sw_stamp_ns(&self.msgs[i].msg_hdr)
                    if rx < 0:
                        self.no_kernel_ts += 1
                        rx = clock_ns(CLOCK_REALTIME)
                    if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC or not self._row(
                            self.bufs + <size_t>i * 2048, self.msgs[i].msg_len, &self.names[i], rx,
                            &rows[nrows, 0]):
                        self.malformed += 1
                        continue
                    nrows += 1
        if err == EINTR:
            PyErr_CheckSignals()
        return {"rows": nrows, "interrupted": err == EINTR}
