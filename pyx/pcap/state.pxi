# The C state of pcapread: per-frame flag bits, counters, limits, and the structs
# of the flow table and the sequence analysis (pyx/pcap/*.pyx work on them).

# ---- per-frame flag bits (uint16). Bits 0-10: Wireshark's tcp.analysis.*;
# bits 11-15: netprobe's own classification.
cdef enum:
    F_RETRANS = 0x0001        # tcp.analysis.retransmission (generic)
    F_FAST_RETRANS = 0x0002   # tcp.analysis.fast_retransmission
    F_SPURIOUS = 0x0004       # tcp.analysis.spurious_retransmission
    F_OOO = 0x0008            # tcp.analysis.out_of_order
    F_DUPACK = 0x0010         # tcp.analysis.duplicate_ack
    F_ZERO_WINDOW = 0x0020    # tcp.analysis.zero_window
    F_LOST = 0x0040           # tcp.analysis.lost_segment (previous segment not captured)
    F_ACKED_UNSEEN = 0x0080   # tcp.analysis.ack_lost_segment
    F_KEEPALIVE = 0x0100      # tcp.analysis.keep_alive
    F_WINDOW_UPDATE = 0x0200  # tcp.analysis.window_update
    F_ZWP = 0x0400            # tcp.analysis.zero_window_probe
    F_DSACK = 0x0800          # this ACK carries a D-SACK block (receiver got data twice)
    F_NP_RETRANS = 0x1000     # netprobe: retransmission (bytes seen before, or a late hole fill)
    F_NP_LOST_RETRANS = 0x2000  # netprobe: retransmission of a segment lost before the capture point
    F_NP_OOO = 0x4000         # netprobe: out-of-order (filled a hole within the reorder window)
    # internal, never stored in the frame flags
    F_KEEPALIVE_ACK = 0x10000
    F_ZWP_ACK = 0x20000

# TCP header flags
cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

# per-direction counters, in this order (DIR_COUNTERS below names them)
cdef enum:
    C_PKTS, C_DATA_PKTS, C_DATA_BYTES, C_RETRANS, C_RETRANS_BYTES, C_LOST_RETRANS,
    C_OOO, C_FAST, C_SPURIOUS, C_DSACK, C_DUPACK, C_ZERO_WINDOW, C_LOST, C_ACKED_UNSEEN,
    C_KEEPALIVE, C_WS_RETRANS, C_WS_OOO, C_SEEN_RETRANS, C_HOLES_DROPPED, C_DATA_SEGS, C_RETRANS_SEGS,
    NCOUNTERS

DIR_COUNTERS = ("pkts", "data_pkts", "data_bytes", "retrans", "retrans_bytes", "lost_retrans",
                "ooo", "fast_retrans", "spurious", "dsack", "dupack", "zero_window",
                "lost_segment", "acked_unseen", "keepalive", "ws_retrans", "ws_ooo",
                "seen_retrans", "holes_dropped", "data_segs", "retrans_segs")

# The counter that each of these frame flags adds one to. ws_retrans (any of three flags) and
# the retransmission counters (bytes, segments, seen or lost) are counted in analyse_segment.
FLAG_COUNTERS = {F_NP_OOO: C_OOO, F_FAST_RETRANS: C_FAST, F_SPURIOUS: C_SPURIOUS, F_DUPACK: C_DUPACK,
                 F_ZERO_WINDOW: C_ZERO_WINDOW, F_LOST: C_LOST, F_ACKED_UNSEEN: C_ACKED_UNSEEN,
                 F_KEEPALIVE: C_KEEPALIVE, F_OOO: C_WS_OOO}
cdef uint32_t COUNTED_FLAGS = 0          # FLAG_COUNTERS' flags
cdef uint8_t FLAG_COUNTER[16]            # ... and their counters, by flag bit number
for _flag, _counter in FLAG_COUNTERS.items():
    COUNTED_FLAGS |= _flag
    FLAG_COUNTER[_flag.bit_length() - 1] = _counter
del _flag, _counter

cdef extern from *:
    int __builtin_ctz(unsigned int x) nogil

FLAG_BITS = {"retransmission": F_RETRANS, "fast_retransmission": F_FAST_RETRANS,
             "spurious_retransmission": F_SPURIOUS, "out_of_order": F_OOO,
             "duplicate_ack": F_DUPACK, "zero_window": F_ZERO_WINDOW, "lost_segment": F_LOST,
             "ack_lost_segment": F_ACKED_UNSEEN, "keep_alive": F_KEEPALIVE,
             "window_update": F_WINDOW_UPDATE, "zero_window_probe": F_ZWP, "dsack": F_DSACK,
             "np_retrans": F_NP_RETRANS, "np_lost_retrans": F_NP_LOST_RETRANS, "np_ooo": F_NP_OOO}

# file-level counters
cdef enum:
    G_FRAMES, G_TCP, G_IPV4, G_IPV6, G_NON_IP, G_NON_TCP, G_FRAGMENTS, G_TRUNCATED, G_MALFORMED,
    G_BAD_LINKTYPE, G_FLOWS_DROPPED, G_BYTES, NGLOBAL

GLOBAL_COUNTERS = ("frames", "tcp", "ipv4", "ipv6", "non_ip", "non_tcp", "fragments",
                   "truncated", "malformed", "bad_linktype", "flows_dropped", "bytes")

cdef enum:
    NHOLES = 16                  # sequence holes tracked per direction
    NSENT = 64                   # runs of send-order marks (end, IPv4 ID) kept per direction
    RUN_MAX = 4096               # marks per run
    MAX_ID_STEP = 1024           # IPv4 IDs this far apart, in order, count as one sender's counter
    ID_TRUST = 4                 # ... once this many (and 8 times the others) did: random IDs
                                 # pass 4 in a row once in 64**4
    MAX_IFACES = 64              # pcapng interfaces per section
    FAST_RETRANS_NS = 20000000   # Wireshark: fast retransmission within 20 ms of the last dup ACK
    DEFAULT_OOO_NS = 3000000     # Wireshark: out-of-order window when the handshake RTT is unknown
    FMT_NONE = 0
    FMT_PCAP = 1
    FMT_PCAPNG = 2
    ST_MORE = 0                  # run(): output arrays full, call again from the returned offset
    ST_END = 1                   # end of data
    ST_ERROR = 2                 # stopped at a bad record; self.error says why
    ST_PARTIAL = 3               # internal: the data ends inside a record

ctypedef struct hole_t:
    uint32_t start
    uint32_t end
    int64_t t_ns                 # capture time the hole opened

ctypedef struct sent_t:
    # a run of send-order marks: the top one is (end, id), each one below it ends `step`
    # lower and has the previous ID (in-order data from one counter makes runs of thousands)
    uint32_t end                 # a captured segment ended here (exclusive)
    uint32_t step
    uint16_t id                  # ... and carried this IPv4 ID
    uint16_t n                   # marks in the run

ctypedef struct dir_t:
    # Wireshark's tcp_analyze_seq_flow_info_t and tcp_flow_t fields
    uint32_t nextseq
    uint32_t lastack
    uint32_t window              # 0xffffffff until the first segment, as in Wireshark
    uint32_t maxseqtobeacked
    int32_t dupacknum            # -1: an ACKed-unseen ACK already flagged (Wireshark's marker)
    uint32_t lastsegflags
    int64_t nextseqtime
    int64_t lastacktime
    # netprobe's own state
    uint32_t isn                 # sequence number of this direction's SYN
    uint32_t mss                 # MSS option of this direction's SYN (0: not captured)
    uint32_t seen_hi             # end of the highest sequence number captured
    uint8_t syn_seen
    uint8_t seen_valid
    uint8_t last_has_id          # IPv4 ID and TSval of the segment that last advanced seen_hi
    uint8_t last_has_ts
    uint8_t last_syn             # ... was a SYN: its ID need not be from the data's counter
    uint16_t last_id
    uint32_t last_ts
    uint32_t id_good             # in-order segments whose ID followed the previous one's
    uint32_t id_bad              # ... and whose ID did not (random IDs, IPv6: no ID)
    uint8_t nholes
    hole_t holes[NHOLES]         # gaps below seen_hi, oldest first
    uint8_t nsent
    sent_t sent[NSENT]           # marks by end ascending, IDs ascending in send order: for
                                 # any sequence number s, the first mark with end > s holds
                                 # the earliest-sent ID of the captured segments with bytes >= s
    uint64_t c[NCOUNTERS]

ctypedef struct flow_key_t:
    uint8_t addr_lo[16]
    uint8_t addr_hi[16]
    uint16_t port_lo
    uint16_t port_hi
    uint8_t family
    uint8_t pad[3]

ctypedef struct flow_t:
    flow_key_t key
    uint8_t a_is_lo              # the first packet's sender is the key's lo endpoint
    int64_t first_ns
    int64_t last_ns
    int64_t mru_syn              # time of the latest SYN (Wireshark ts_mru_syn), 0 = none
    int64_t first_rtt            # SYN -> first ACK without SYN (Wireshark ts_first_rtt), 0 = unknown
    dir_t d[2]

ctypedef struct seg_t:
    # one decoded TCP segment (decode_tcp); pointers into the frame
    const uint8_t *src           # network-order addresses, 4 or 16 bytes
    const uint8_t *dst
    const uint8_t *opt           # TCP options as far as captured
    uint32_t optlen
    uint32_t seq
    uint32_t ack
    uint32_t seglen
    uint32_t window
    uint32_t doff                # TCP header length
    int32_t ipid                 # IPv4 ID, -1 for IPv6
    uint16_t sport
    uint16_t dport
    uint8_t tflags
    uint8_t family               # 4 or 6
