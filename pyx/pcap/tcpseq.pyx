# TCP sequence analysis of one segment: Wireshark's tcp.analysis.* rules (packet-tcp.c
# tcp_analyze_sequence_number, rule for rule) and netprobe's verdict (classify), with the
# per-direction counters.

cdef inline uint32_t analyse_segment(flow_t *f, int d, int64_t ts, const seg_t *s,
                                     int64_t reorder_ns) noexcept nogil:
    """Wireshark's flags and netprobe's verdict for segment s of flow f, direction d;
    updates the direction's state and counters."""
    cdef dir_t *fwd = &f.d[d]
    cdef dir_t *rev = &f.d[1 - d]
    cdef uint32_t seq = s.seq, ack = s.ack, seglen = s.seglen, window = s.window, doff = s.doff
    cdef uint8_t tflags = s.tflags
    cdef int32_t ipid = s.ipid
    cdef uint32_t fl = 0, nextseq, span, smss, mss = 0, counted
    cdef uint64_t segs = 1
    cdef uint64_t t, ooo_thres
    cdef bint seq_not_advanced
    cdef bint sfr = (tflags & (TH_SYN | TH_FIN | TH_RST)) != 0
    cdef int64_t tsval = -1
    cdef bint dsack = scan_options(s.opt, s.optlen, ack, &tsval, &mss)
    fwd.c[C_PKTS] += 1
    if tflags & TH_SYN:
        fwd.mss = mss
    if (tflags & (TH_SYN | TH_ACK)) == TH_SYN:
        f.mru_syn = ts
        fwd.syn_seen = 1
        fwd.isn = seq
    elif tflags & TH_SYN:
        fwd.syn_seen = 1
        fwd.isn = seq
    if (tflags & (TH_SYN | TH_ACK)) == TH_ACK and f.mru_syn != 0 and f.first_rtt == 0:
        f.first_rtt = ns_diff(ts, f.mru_syn)
    # ---- Wireshark's tcp_analyze_sequence_number, in its order
    if seglen == 1 and seq == fwd.nextseq and rev.window == 0:
        fl |= F_ZWP
    else:
        if window == 0 and not sfr:
            fl |= F_ZERO_WINDOW
        if fwd.nextseq and seq_gt(seq, fwd.nextseq) and not (tflags & TH_RST):
            fl |= F_LOST
        if seglen <= 1 and seq == fwd.nextseq - 1 and not sfr:
            fl |= F_KEEPALIVE
        if seglen == 0 and window and window != fwd.window and seq == fwd.nextseq \
                and ack == fwd.lastack and not sfr:
            fl |= F_WINDOW_UPDATE
        if seglen == 0 and window and window == fwd.window and seq == fwd.nextseq \
                and ack == fwd.lastack and (rev.lastsegflags & F_KEEPALIVE) and not sfr:
            fl |= F_KEEPALIVE_ACK
        elif seglen == 0 and window == 0 and window == fwd.window and seq == fwd.nextseq \
                and ack == fwd.lastack and (rev.lastsegflags & F_ZWP) and not sfr:
            fl |= F_ZWP_ACK
        elif seglen == 0 and window and window == fwd.window and seq == fwd.nextseq \
                and ack == fwd.lastack and not sfr:
            fwd.dupacknum = 1 if fwd.dupacknum == -1 else fwd.dupacknum + 1
            fl |= F_DUPACK
    # finished_fwd:
    if ack != fwd.lastack:
        fwd.dupacknum = 0
    if rev.maxseqtobeacked and seq_gt(ack, rev.maxseqtobeacked) and (tflags & TH_ACK):
        # tshark 4.0: flagged when the other side's highest segment moved since the last
        # flag, else once more and no further until that side's ACK changes
        if seq_lt(rev.maxseqtobeacked, rev.nextseq):
            rev.maxseqtobeacked = rev.nextseq
            fl |= F_ACKED_UNSEEN
        else:
            if rev.dupacknum == 0:
                fl |= F_ACKED_UNSEEN
            rev.dupacknum = -1
    if seglen > 0 or (tflags & (TH_SYN | TH_FIN)):
        seq_not_advanced = fwd.nextseq != 0 and seq_lt(seq, fwd.nextseq)
        if not (fl & F_KEEPALIVE):
            if seglen > 1 and fwd.nextseq - 1 == seq:
                seq_not_advanced = False
            t = <uint64_t>ts - <uint64_t>rev.lastacktime
            if seq_not_advanced and rev.dupacknum >= 2 and rev.lastack == seq and t < FAST_RETRANS_NS:
                fl |= F_FAST_RETRANS
            elif seglen > 0 and rev.lastack and seq_le(seq + seglen, rev.lastack):
                fl |= F_SPURIOUS     # already acked: before the out-of-order test (tshark 4.0)
            else:
                t = <uint64_t>ts - <uint64_t>fwd.nextseqtime
                ooo_thres = <uint64_t>f.first_rtt if f.first_rtt != 0 else DEFAULT_OOO_NS
                if seq_not_advanced and t < ooo_thres and fwd.nextseq != seq + seglen:
                    fl |= F_OOO
                elif seq_not_advanced:
                    fl |= F_RETRANS
    # finished_checking_retransmission_type:
    nextseq = seq + seglen
    if tflags & (TH_SYN | TH_FIN):
        nextseq += 1
    if seq_gt(nextseq, fwd.nextseq) or not fwd.nextseq:
        if not (fl & F_ZWP):
            fwd.nextseq = nextseq
            fwd.nextseqtime = ts
    if seq == fwd.maxseqtobeacked or not fwd.maxseqtobeacked:
        if not (fl & F_ZWP):
            fwd.maxseqtobeacked = fwd.nextseq
    fwd.window = window
    fwd.lastack = ack
    fwd.lastacktime = ts
    fwd.lastsegflags = fl
    # ---- netprobe's own classification of data (and SYN/FIN) segments
    span = seglen + (1 if tflags & TH_SYN else 0) + (1 if tflags & TH_FIN else 0)
    if span and not (fl & (F_KEEPALIVE | F_ZWP)):
        fl |= classify(f, fwd, ts, seq, span, ipid, tsval, tflags & TH_SYN, reorder_ns)
    if tflags & TH_ACK:
        drop_acked_holes(rev, ack)
        if dsack:
            fl |= F_DSACK
            rev.c[C_DSACK] += 1
    # ---- counters
    if seglen:
        # wire segments in a GSO/TSO frame: the peer's MSS less this segment's options; the
        # sender's own when the peer's SYN was not captured (an arriving-only capture does not
        # see this host's SYN; both ends of a path usually advertise the same)
        smss = rev.mss if rev.mss else fwd.mss
        smss = smss - (doff - 20) if smss > doff - 20 + 8 else 0
        if smss:
            segs = (<uint64_t>seglen + smss - 1) // smss      # smss >= 9 here
        fwd.c[C_DATA_PKTS] += 1
        fwd.c[C_DATA_BYTES] += seglen
        fwd.c[C_DATA_SEGS] += segs
    if fl & F_NP_RETRANS:
        fwd.c[C_RETRANS] += 1
        fwd.c[C_RETRANS_BYTES] += seglen
        fwd.c[C_RETRANS_SEGS] += segs
        fwd.c[C_LOST_RETRANS if fl & F_NP_LOST_RETRANS else C_SEEN_RETRANS] += 1
    if fl & (F_RETRANS | F_FAST_RETRANS | F_SPURIOUS):
        fwd.c[C_WS_RETRANS] += 1
    counted = fl & COUNTED_FLAGS
    while counted:                       # one counter per flag set (FLAG_COUNTERS)
        fwd.c[FLAG_COUNTER[__builtin_ctz(counted)]] += 1
        counted &= counted - 1
    return fl & 0xffff

cdef inline uint32_t classify(flow_t *f, dir_t *fwd, int64_t ts, uint32_t seq, uint32_t span, int32_t ipid,
                              int64_t tsval, bint syn, int64_t reorder_ns) noexcept nogil:
    """netprobe's verdict on a segment covering [seq, seq+span) of one direction.

    0 for new data. A segment below the highest captured byte was either
    sent before every captured segment with bytes above it (an original
    that was overtaken: F_NP_OOO) or after one of them (a retransmission:
    F_NP_RETRANS, with F_NP_LOST_RETRANS when none of its bytes were
    captured before, i.e. the original was lost before the capture
    point). Send order comes from
    the IPv4 ID when this sender numbers packets in sequence (Linux does,
    per socket), else from TCP timestamps when they differ. The IPv4 ID is
    compared with the earliest-sent ID of the captured segments holding
    bytes at or above seq (kept in fwd.sent, in runs), not only with the highest
    segment's: a retransmission that was itself held back and overtaken by
    new data still went out after the originals above it. Without IDs or
    timestamps: bytes captured before make it a retransmission, and a hole
    filled within the reorder window of the hole's opening is out-of-order.
    A retransmission at or above seen_hi (its original lost or held before
    the capture point, nothing above it captured yet) is new data here:
    nothing in the capture tells it apart (retrans-notes.md, "tip")."""
    cdef uint32_t end = seq + span, below_end, lo, hi, out = 0
    cdef uint64_t in_holes = 0          # holes may sum past 2**32 when spans are huge
    cdef int64_t window
    cdef int i, oldest = -1, order = 0      # order: -1 an original (sent before every captured
    cdef hole_t h                           # segment with bytes at or above seq), 1 a resend
    cdef uint16_t idd
    if fwd.seen_valid and seq_lt(seq, fwd.seen_hi) and not stale(fwd.seen_hi, seq):
        if ipid >= 0 and fwd.last_has_id and fwd.id_good >= ID_TRUST and fwd.id_bad * 8 < fwd.id_good:
            order = sent_order(fwd, seq, <uint16_t>ipid)
        elif tsval >= 0 and fwd.last_has_ts and <uint32_t>tsval != fwd.last_ts:
            order = -1 if seq_lt(<uint32_t>tsval, fwd.last_ts) else 1
        below_end = end if seq_lt(end, fwd.seen_hi) else fwd.seen_hi
        for i in range(fwd.nholes):
            lo = seq if seq_gt(seq, fwd.holes[i].start) else fwd.holes[i].start
            hi = below_end if seq_lt(below_end, fwd.holes[i].end) else fwd.holes[i].end
            if seq_lt(lo, hi):
                in_holes += hi - lo
                if oldest < 0:
                    oldest = i
        if order < 0:
            out = F_NP_OOO
        elif in_holes < below_end - seq:
            out = F_NP_RETRANS
        elif order > 0:
            out = F_NP_RETRANS | F_NP_LOST_RETRANS
        else:
            window = reorder_ns
            if window == 0:
                window = f.first_rtt if f.first_rtt > 0 else DEFAULT_OOO_NS
            if ns_diff(ts, fwd.holes[oldest].t_ns) < window:
                out = F_NP_OOO
            else:
                out = F_NP_RETRANS | F_NP_LOST_RETRANS
        if in_holes:
            fill_holes(fwd, seq, below_end)
    if fwd.seen_valid and seq_gt(seq, fwd.seen_hi) and seq_gt(end, fwd.seen_hi):   # a gap below the new top
        h.start = fwd.seen_hi
        h.end = seq
        h.t_ns = ts
        add_hole(fwd, h)
    if not fwd.seen_valid or seq_gt(end, fwd.seen_hi):
        if ipid >= 0 and fwd.last_has_id:
            idd = <uint16_t>(<uint16_t>ipid - fwd.last_id)
            if 0 < idd <= MAX_ID_STEP:
                fwd.id_good += 1
            elif not fwd.last_syn:       # Linux: a listener's SYN-ACK has ID 0, and the new
                fwd.id_bad += 1          # socket's counter starts at random: no evidence against
        fwd.seen_valid = 1
        fwd.seen_hi = end
        fwd.last_syn = syn
        fwd.last_has_id = ipid >= 0
        fwd.last_id = <uint16_t>ipid
        fwd.last_has_ts = tsval >= 0
        fwd.last_ts = <uint32_t>tsval
        forget_stale_holes(fwd)
    if ipid >= 0:
        add_sent(fwd, end, <uint16_t>ipid)
    return out


cdef inline bint scan_options(const uint8_t *o, uint32_t n, uint32_t ack, int64_t *tsval,
                              uint32_t *mss) noexcept nogil:
    """TCP options as far as captured: stores the timestamp option's TSval in
    tsval and the MSS option in mss (left alone if absent); True if a D-SACK (RFC 2883) is present: the
    first SACK block lies below the cumulative ACK, or inside the second block."""
    cdef uint32_t i = 0, kind, ln, l1, r1, l2, r2
    cdef const uint8_t *v
    cdef bint dsack = False
    while i < n:
        kind = o[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + OFF_OPTION_LEN >= n:
            break
        ln = o[i + OFF_OPTION_LEN]
        if ln < OFF_OPTION_VALUE or i + ln > n:
            break
        v = o + i + OFF_OPTION_VALUE
        if kind == TCPOPT_TIMESTAMP and ln == TCPOLEN_TIMESTAMP:
            tsval[0] = load_be32(v)
        elif kind == TCPOPT_MSS and ln == TCPOLEN_MSS:
            mss[0] = load_be16(v)
        elif kind == TCPOPT_SACK and ln >= OFF_OPTION_VALUE + SACK_BLOCK_LEN:
            l1 = load_be32(v)
            r1 = load_be32(v + OFF_SACK_RIGHT)
            if seq_le(r1, ack) and seq_lt(l1, r1):
                dsack = True
            elif ln >= OFF_OPTION_VALUE + 2 * SACK_BLOCK_LEN:
                l2 = load_be32(v + SACK_BLOCK_LEN)
                r2 = load_be32(v + SACK_BLOCK_LEN + OFF_SACK_RIGHT)
                if seq_le(l2, l1) and seq_le(r1, r2):
                    dsack = True
        i += ln
    return dsack


cdef inline int64_t ns_diff(int64_t a, int64_t b) noexcept nogil:
    """a - b wrapping instead of overflowing: capture times come from the file."""
    return <int64_t>(<uint64_t>a - <uint64_t>b)
