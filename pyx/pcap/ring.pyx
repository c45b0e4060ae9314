# A live capture: an AF_PACKET TPACKET_V3 receive ring feeding a TcpAnalyser.

cdef class RingStats:
    """PacketRing counters: packets the filter passed, drops for want of ring space and
    queue freezes (the kernel's, summed), frames analysed and blocks read."""
    cdef readonly uint64_t packets, drops, freezes, frames, blocks

    def __repr__(self):
        return (f"RingStats(packets={self.packets}, drops={self.drops}, freezes={self.freezes}, "
                f"frames={self.frames}, blocks={self.blocks})")


cdef class PacketRing:
    """A live header capture: an AF_PACKET TPACKET_V3 receive ring whose frames go
    straight to a TcpAnalyser, with no process, pipe or copy in between.

    SOCK_DGRAM, so every frame starts at its IP header whatever the interface
    (LINKTYPE_RAW for the analyser). The classic BPF program (struct sock_filter
    array as bytes; its return value is the snaplen) is attached before the
    socket is bound to a protocol, so nothing unfiltered is ever queued. The
    kernel fills blocks of `block_size` bytes and hands one over when it is full
    or `retire_ms` after its first frame; pump() analyses every handed-over
    block with the GIL released; wait() is one poll() per hand-over, not per packet.
    Loopback's outgoing copy of each packet is skipped (libpcap does the same),
    so each packet on lo is seen once. ifindex 0: every interface.
    ignore_outgoing (PACKET_IGNORE_OUTGOING): the kernel does not hand this socket
    the packets the host sends at all, which spares it a clone of every one of them.
    """
    cdef int fd
    cdef uint8_t *ring
    cdef size_t ring_len
    cdef uint32_t block_size, block_nr, cur
    cdef int lo_ifindex
    cdef readonly uint64_t frames, blocks, kernel_packets, kernel_drops, kernel_freezes

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.ring = NULL

    def __init__(self, const uint8_t[::1] bpf, int ifindex=0, int lo_ifindex=1, uint32_t block_size=1 << 18,
                 uint32_t block_nr=32, uint32_t retire_ms=50, bint ignore_outgoing=False):
        cdef sock_fprog prog
        cdef tpacket_req3 req
        cdef sockaddr_ll sll
        cdef int version = TPACKET_V3, on = 1
        cdef void *m
        if bpf.shape[0] == 0 or bpf.shape[0] % sizeof(sock_filter) or bpf.shape[0] // sizeof(sock_filter) > 4096:
            raise ValueError(f"bpf must be 1 to 4096 8-byte instructions (got {bpf.shape[0]} bytes)")
        if block_size < 4096 or block_size & (block_size - 1) or not 1 <= block_nr <= 4096:
            raise ValueError(f"block_size must be a power of two >= 4096 and block_nr 1 to 4096 "
                             f"(got {block_size}, {block_nr})")
        if not 1 <= retire_ms <= 60_000:
            raise ValueError(f"retire_ms must be 1 to 60000 (got {retire_ms})")
        self.fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0)     # protocol 0: receives nothing yet
        if self.fd < 0:
            PyErr_SetFromErrno(OSError)
        prog.len = <unsigned short>(bpf.shape[0] // sizeof(sock_filter))
        prog.filter = <sock_filter *>&bpf[0]
        memset(&req, 0, sizeof(req))
        req.tp_block_size = block_size
        req.tp_block_nr = block_nr
        req.tp_frame_size = 2048                # V3 packs frames; the kernel only checks this divides blocks
        req.tp_frame_nr = block_size // 2048 * block_nr
        req.tp_retire_blk_tov = retire_ms
        memset(&sll, 0, sizeof(sll))
        sll.sll_family = AF_PACKET
        sll.sll_protocol = htons(ETH_P_ALL)
        sll.sll_ifindex = ifindex
        if (setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0
                or (ignore_outgoing and setsockopt(self.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &on,
                                                   sizeof(on)) != 0)
                or setsockopt(self.fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) != 0
                or setsockopt(self.fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) != 0):
            self._fail()
        m = mmap(NULL, <size_t>block_size * block_nr, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
        if m == MAP_FAILED:
            self._fail()
        self.ring = <uint8_t *>m
        self.ring_len = <size_t>block_size * block_nr
        self.block_size = block_size
        self.block_nr = block_nr
        self.lo_ifindex = lo_ifindex
        if bind(self.fd, <sockaddr *>&sll, sizeof(sll)) != 0:
            self._fail()

    cdef int _fail(self) except -1:
        PyErr_SetFromErrno(OSError)         # errno first: close() may change it
        self.close()
        return -1

    def __dealloc__(self):
        self.close()

    def close(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def wait(self, int timeout_ms):
        """Wait up to timeout_ms (GIL released) for the kernel to hand a block over; True if one is ready."""
        cdef pollfd pfd
        if self.fd < 0:
            raise ValueError("the ring is closed")
        if self._ready() != NULL:
            return True
        pfd.fd = self.fd
        pfd.events = POLLIN
        with nogil:
            poll(&pfd, 1, timeout_ms)           # EINTR: the caller looks again
        return self._ready() != NULL

    cdef tpacket_block_desc *_ready(self) noexcept nogil:
        """The current block if the kernel has handed it over, else NULL."""
        cdef tpacket_block_desc *bd = <tpacket_block_desc *>(self.ring + <size_t>self.cur * self.block_size)
        return bd if np_block_status(&bd.hdr.bh1.block_status) & TP_STATUS_USER else NULL

    def pump(self, TcpAnalyser analyser not None):
        """Analyse the frames of every block the kernel has handed over (GIL released);
        returns what this call did: a RingStats of frames and blocks (the kernel's counters
        are stats()'s)."""
        cdef uint64_t n0 = self.frames, b0 = self.blocks
        cdef RingStats out = RingStats.__new__(RingStats)
        cdef tpacket_block_desc *bd
        if self.fd < 0:
            raise ValueError("the ring is closed")
        with nogil:
            bd = self._ready()
            while bd != NULL:
                self._block(analyser, bd)
                np_block_release(&bd.hdr.bh1.block_status)
                self.cur = (self.cur + 1) % self.block_nr
                self.blocks += 1
                bd = self._ready()
        out.frames = self.frames - n0
        out.blocks = self.blocks - b0
        return out

    cdef void _block(self, TcpAnalyser a, tpacket_block_desc *bd) noexcept nogil:
        cdef uint32_t i, n = bd.hdr.bh1.num_pkts
        cdef uint8_t *p = <uint8_t *>bd + bd.hdr.bh1.offset_to_first_pkt
        cdef tpacket3_hdr *h
        cdef sockaddr_ll *sll
        cdef uint16_t fl
        cdef int32_t fdir
        for i in range(n):
            h = <tpacket3_hdr *>p
            sll = <sockaddr_ll *>(p + TPACKET_ALIGN(sizeof(tpacket3_hdr)))
            if sll.sll_pkttype != PACKET_OUTGOING or sll.sll_ifindex != self.lo_ifindex:
                a._frame(p + h.tp_mac, h.tp_snaplen, h.tp_len, LINKTYPE_RAW,
                         <int64_t>h.tp_sec * 1000000000 + h.tp_nsec, &fl, &fdir)
                self.frames += 1
            p += h.tp_next_offset

    def stats(self):
        """The ring's counters since it opened (RingStats); the kernel's are read-and-reset
        there and summed here."""
        cdef tpacket_stats_v3 st
        cdef unsigned int ln = sizeof(st)
        cdef RingStats out = RingStats.__new__(RingStats)
        if self.fd >= 0 and getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &st, &ln) == 0:
            self.kernel_packets += st.tp_packets
            self.kernel_drops += st.tp_drops
            self.kernel_freezes += st.tp_freeze_q_cnt
        out.packets, out.drops, out.freezes = self.kernel_packets, self.kernel_drops, self.kernel_freezes
        out.frames, out.blocks = self.frames, self.blocks
        return out
