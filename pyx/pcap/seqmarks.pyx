# Per direction, what the sequence analysis remembers of the segments captured so far:
# the holes below the highest byte (seen_hi) and the send-order marks (end, IPv4 ID) in
# runs. Everything is kept within half the sequence space below seen_hi, where
# serial-arithmetic comparisons are a total order (RFC 1982).

cdef inline void add_hole(dir_t *d, hole_t h) noexcept nogil:
    """Record a gap; with NHOLES open, the oldest is forgotten (counted)."""
    cdef int i
    if d.nholes == NHOLES:
        for i in range(NHOLES - 1):
            d.holes[i] = d.holes[i + 1]
        d.nholes -= 1
        d.c[C_HOLES_DROPPED] += 1
    d.holes[d.nholes] = h
    d.nholes += 1


cdef inline bint id_after(uint16_t a, uint16_t b) noexcept nogil:
    """IPv4 ID a was sent after b (one sender's counter, less than half a wrap apart)."""
    cdef uint16_t dd = <uint16_t>(a - b)
    return 0 < dd < 32768


cdef inline uint32_t run_above(const sent_t *r, uint32_t s) noexcept nogil:
    """Offset from the top of run r of its lowest mark that ends above s (r's top must).
    A run of more than one mark has step >= 1 (continues() admits no other)."""
    cdef uint64_t c
    if r.n == 1:
        return 0
    c = (<uint64_t>(r.end - s) + r.step - 1) // r.step
    return <uint32_t>((c if c < r.n else r.n) - 1)


cdef inline int sent_order(dir_t *d, uint32_t seq, uint16_t ipid) noexcept nogil:
    """1 if a captured segment with bytes at or above seq was sent before (or is) the
    packet with ID ipid, which so cannot be the first transmission of byte seq (originals
    go out in sequence order); -1 if every one was sent after it (an overtaken original).
    Without a mark above seq (forgotten), the segment that last raised seen_hi decides."""
    cdef int i
    cdef uint16_t ref = d.last_id
    for i in range(d.nsent):
        if seq_gt(d.sent[i].end, seq):
            ref = <uint16_t>(d.sent[i].id - run_above(&d.sent[i], seq))
            break
    return -1 if id_after(ref, ipid) else 1


cdef inline void run_piece(sent_t *out, const sent_t *r, uint32_t top, uint32_t bottom) noexcept nogil:
    """The marks of run r from offset `top` down to offset `bottom` (offsets from r's top)."""
    out.end = r.end - top * r.step
    out.id = <uint16_t>(r.id - top)
    out.step = r.step
    out.n = <uint16_t>(bottom - top + 1)


cdef inline bint continues(const sent_t *r, uint32_t end, uint16_t ipid) noexcept nogil:
    """Whether a mark (end, ipid) just above run r's top extends the run: the next ID, an
    end above the top (so a run's step is never 0), and the run's step (any step for a run
    of one)."""
    return (r.n < RUN_MAX and <uint16_t>(r.id + 1) == ipid and seq_gt(end, r.end)
            and (r.n == 1 or <uint32_t>(end - r.end) == r.step))


cdef inline bint stale(uint32_t top, uint32_t s) noexcept nogil:
    """Sequence number s is 2**31 or more below top: the two have no order (RFC 1982)."""
    return <uint32_t>(top - s) >= 0x80000000U


cdef inline void forget_stale_marks(dir_t *d) noexcept nogil:
    """Forget the marks stale below seen_hi. Comparisons within the rest stay transitive
    (all lie within half the sequence space), which the sort by end needs: sequence
    numbers stepping by 0x60000000 otherwise compare in a circle. seen_hi moves up by
    less than 2**31 at a time, so the stale marks are the lowest ones."""
    cdef int k = 0
    cdef uint64_t keep
    cdef sent_t *r
    while k < d.nsent and stale(d.seen_hi, d.sent[k].end):
        k += 1
    if k < d.nsent and d.sent[k].n > 1:
        r = &d.sent[k]
        # marks of r within the window: offsets c with (seen_hi - r.end) + c * step < 2**31
        keep = (0x80000000ULL - <uint32_t>(d.seen_hi - r.end) + r.step - 1) // r.step
        if keep < r.n:
            r.n = <uint16_t>keep
    if k:
        memmove(d.sent, &d.sent[k], (d.nsent - k) * sizeof(sent_t))
        d.nsent -= k


cdef inline void extend(sent_t *r, uint32_t end, uint16_t ipid) noexcept nogil:
    r.step = end - r.end
    r.end = end
    r.id = ipid
    r.n += 1


cdef inline void add_sent(dir_t *d, uint32_t end, uint16_t ipid) noexcept nogil:
    """Record that a segment ending at `end` had ID ipid, keeping only the marks no other
    mark dominates (one with an end as high and an ID as early); with more than NSENT
    runs, the lowest is forgotten. A mark extends the run just below it while its ends and
    IDs keep the run's steps (new data, in order, at the top: the fast path); otherwise it
    is a run of its own, and splits the run it lands in. Positions are (run, offset from
    its top). Marks stale below seen_hi are forgotten first, and a stale mark is not kept."""
    cdef int n = d.nsent, m = 0, i, rk = 0, rp, ru
    cdef uint32_t tk = 0, tp, tu
    cdef sent_t tmp[NSENT + 2]
    forget_stale_marks(d)
    n = d.nsent
    if stale(d.seen_hi, end):
        return
    if n and seq_gt(end, d.sent[n - 1].end) and continues(&d.sent[n - 1], end, ipid):
        extend(&d.sent[n - 1], end, ipid)                           # new data, in order
        return
    # k, the first mark ending at or above `end`: (rk, tk); rk == n: none
    while rk < n and seq_lt(d.sent[rk].end, end):
        rk += 1
    if rk < n:
        tk = run_above(&d.sent[rk], end - 1)
        if not id_after(<uint16_t>(d.sent[rk].id - tk), ipid):
            return                                                  # dominated
    # the kept marks above: from k, or from the one above k when k ends at `end` (replaced)
    ru, tu = rk, tk
    if rk < n and d.sent[rk].end - tk * d.sent[rk].step == end:
        if tk > 0:
            tu = tk - 1
        else:
            ru += 1
            if ru < n:
                tu = d.sent[ru].n - 1
    # the kept marks below: down from the one under k, past those with IDs not before ipid
    if rk < n and tk + 1 < d.sent[rk].n:
        rp, tp = rk, tk + 1
    else:
        rp = rk - 1
        tp = 0
    while rp >= 0 and not id_after(ipid, <uint16_t>(d.sent[rp].id - tp)):
        if tp + 1 < d.sent[rp].n:
            tp += 1
        else:
            rp -= 1
            tp = 0
    for i in range(rp):
        tmp[m] = d.sent[i]
        m += 1
    if rp >= 0:
        run_piece(&tmp[m], &d.sent[rp], tp, d.sent[rp].n - 1)
        m += 1
    if m and continues(&tmp[m - 1], end, ipid):       # a held-back run arriving late stays one
        extend(&tmp[m - 1], end, ipid)
    else:
        tmp[m].end = end
        tmp[m].step = 0
        tmp[m].id = ipid
        tmp[m].n = 1
        m += 1
    if ru < n:
        run_piece(&tmp[m], &d.sent[ru], 0, tu)
        m += 1
    for i in range(ru + 1, n):
        tmp[m] = d.sent[i]
        m += 1
    i = m - NSENT if m > NSENT else 0                               # forget the lowest runs
    memcpy(d.sent, &tmp[i], (m - i) * sizeof(sent_t))
    d.nsent = m - i


cdef inline void forget_stale_holes(dir_t *d) noexcept nogil:
    """Forget (count) the holes that start stale below seen_hi, as the send-order marks."""
    cdef int i = 0
    while i < d.nholes:
        if stale(d.seen_hi, d.holes[i].start):
            remove_hole(d, i)
            d.c[C_HOLES_DROPPED] += 1
        else:
            i += 1


cdef inline void remove_hole(dir_t *d, int i) noexcept nogil:
    cdef int j
    for j in range(i, d.nholes - 1):
        d.holes[j] = d.holes[j + 1]
    d.nholes -= 1


cdef inline void fill_holes(dir_t *d, uint32_t lo, uint32_t hi) noexcept nogil:
    """Remove [lo, hi) from the holes (a hole hit in the middle splits in two)."""
    cdef int i = 0
    cdef hole_t h
    while i < d.nholes:
        h = d.holes[i]
        if not (seq_lt(lo, h.end) and seq_lt(h.start, hi)):
            i += 1
            continue
        if seq_le(lo, h.start) and seq_le(h.end, hi):
            remove_hole(d, i)
            continue
        if seq_gt(lo, h.start) and seq_lt(hi, h.end):
            d.holes[i].end = lo
            h.start = hi
            add_hole(d, h)
            i += 1
            continue
        if seq_gt(lo, h.start):
            d.holes[i].end = lo
        else:
            d.holes[i].start = hi
        i += 1


cdef inline void drop_acked_holes(dir_t *d, uint32_t ack) noexcept nogil:
    """Holes below the peer's cumulative ACK will never be filled in this capture."""
    cdef int i = 0
    while i < d.nholes:
        if seq_le(d.holes[i].end, ack):
            remove_hole(d, i)
        else:
            if seq_lt(d.holes[i].start, ack):
                d.holes[i].start = ack
            i += 1
