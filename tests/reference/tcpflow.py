"""Pure-Python oracle for netprobe._pcapread: the same classification, written plainly.

Slow (a dict per flow, objects per packet) and only for small captures: it
reads classic pcap files (either byte order, us or ns) with Ethernet (VLAN
tags), Linux SLL/SLL2 or raw IP, IPv4/IPv6 and TCP, and returns per-frame flag
names and per-flow-direction counters. The Wireshark part follows
packet-tcp.c tcp_analyze_sequence_number rule by rule; the netprobe part
follows the docstring of classify in pyx/pcap/tcpseq.pyx.
"""
import struct
from dataclasses import dataclass, field

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
M32 = 0xFFFFFFFF
NHOLES = 16          # sequence holes tracked per direction, as pyx/pcap/state.pxi
ID_TRUST = 4         # in-order IPv4 ID steps before IDs are trusted, as pyx/pcap/state.pxi
NSENT = 64           # runs of send-order marks (end, IPv4 ID) kept per direction, as pyx/pcap/state.pxi
RUN_MAX = 4096       # marks per run


def s32(x):
    x &= M32
    return x - (1 << 32) if x & 0x80000000 else x


def lt(a, b):
    return s32(a - b) < 0


def le(a, b):
    return s32(a - b) <= 0


def gt(a, b):
    return s32(a - b) > 0


def stale(top, s):
    """s is 2**31 or more below top: the two have no order (RFC 1982)."""
    return (top - s) & M32 >= 1 << 31


def id_after(a, b):
    """IPv4 ID a was sent after b (one sender's counter, less than half a wrap apart)."""
    return 0 < (a - b) % 65536 < 32768


@dataclass
class Dir:
    nextseq: int = 0
    lastack: int = 0
    window: int = M32
    maxseqtobeacked: int = 0
    dupacknum: int = 0
    lastsegflags: set = field(default_factory=set)
    nextseqtime: int = 0
    lastacktime: int = 0
    isn: int = None
    mss: int = 0
    seen_hi: int = None
    holes: list = field(default_factory=list)     # [start, end, t_ns], oldest first
    sent: list = field(default_factory=list)      # [end, IPv4 ID, run] of captured segments
    runs: int = 0                                 # run tags handed out
    last_id: int = None
    last_ts: int = None
    last_syn: bool = False
    id_good: int = 0
    id_bad: int = 0
    counts: dict = field(default_factory=dict)

    def count(self, name):
        self.counts[name] = self.counts.get(name, 0) + 1


@dataclass
class Flow:
    a: tuple
    b: tuple
    mru_syn: int = 0
    first_rtt: int = 0
    d: list = field(default_factory=lambda: [Dir(), Dir()])


def read_pcap(data):
    """[(ts_ns, frame bytes, wire length)], link type."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise ValueError("not pcap")
    ns = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(e + "I", data[20:24])[0] & 0x03FFFFFF
    out, o = [], 24
    while o + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack(e + "IIII", data[o:o + 16])
        if o + 16 + incl > len(data):
            break
        out.append((sec * 10**9 + frac * (1 if ns else 1000), data[o + 16:o + 16 + incl], max(orig, incl)))
        o += 16 + incl
    return out, linktype


def decode(frame, wirelen, linktype):
    """The TCP fields of a frame, or None if it is not an analysable TCP segment."""
    if linktype == 1:
        if len(frame) < 14:
            return None
        et, off = struct.unpack(">H", frame[12:14])[0], 14
        n = 0
        while et in (0x8100, 0x88A8, 0x9100) and n < 4:
            if len(frame) < off + 4:
                return None
            et, off, n = struct.unpack(">H", frame[off + 2:off + 4])[0], off + 4, n + 1
    elif linktype == 113:
        if len(frame) < 16:
            return None
        et, off = struct.unpack(">H", frame[14:16])[0], 16
    elif linktype == 276:
        if len(frame) < 20:
            return None
        et, off = struct.unpack(">H", frame[0:2])[0], 20
    elif linktype in (101, 228, 229):
        if not frame:
            return None
        et, off = {4: 0x0800, 6: 0x86DD}.get(frame[0] >> 4), 0
    else:
        return None
    if et == 0x0800:
        if len(frame) < off + 20 or frame[off] >> 4 != 4:
            return None
        ihl = (frame[off] & 15) * 4
        tot = struct.unpack(">H", frame[off + 2:off + 4])[0] or wirelen - off
        if ihl < 20 or tot < ihl or struct.unpack(">H", frame[off + 6:off + 8])[0] & 0x3FFF or frame[off + 9] != 6:
            return None
        tot = min(tot, wirelen - off)
        if tot < ihl:
            return None
        ipid = struct.unpack(">H", frame[off + 4:off + 6])[0]
        src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
        l4, l4len = off + ihl, tot - ihl
    elif et == 0x86DD:
        if len(frame) < off + 40 or frame[off] >> 4 != 6:
            return None
        plen = struct.unpack(">H", frame[off + 4:off + 6])[0]
        l4len = min(plen, wirelen - off - 40) if plen else wirelen - off - 40
        nh, l4, ipid = frame[off + 6], off + 40, None
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        while nh in (0, 43, 60):
            if len(frame) < l4 + 2:
                return None
            hl = (frame[l4 + 1] + 1) * 8
            if hl > l4len:
                return None
            nh, l4, l4len = frame[l4], l4 + hl, l4len - hl
        if nh != 6:
            return None
    else:
        return None
    if len(frame) < l4 + 20:
        return None
    sport, dport, seq, ack, offres, flags, win = struct.unpack(">HHIIBBH", frame[l4:l4 + 16])
    doff = (offres >> 4) * 4
    if doff < 20 or l4len < doff:
        return None
    opts = frame[l4 + 20:min(len(frame), l4 + doff)]
    return dict(src=(src, sport), dst=(dst, dport), seq=seq, ack=ack, flags=flags, win=win,
                seglen=l4len - doff, ipid=ipid, opts=opts, doff=doff)


def options(opts, ack):
    """(tsval or None, dsack?, mss or 0) from the captured option bytes."""
    i, tsval, dsack, mss = 0, None, False, 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts):
            break
        ln = opts[i + 1]
        if ln < 2 or i + ln > len(opts):
            break
        if kind == 8 and ln == 10:
            tsval = struct.unpack(">I", opts[i + 2:i + 6])[0]
        elif kind == 2 and ln == 4:
            mss = struct.unpack(">H", opts[i + 2:i + 4])[0]
        elif kind == 5 and ln >= 10:
            l1, r1 = struct.unpack(">II", opts[i + 2:i + 10])
            if le(r1, ack) and lt(l1, r1):
                dsack = True
            elif ln >= 18:
                l2, r2 = struct.unpack(">II", opts[i + 10:i + 18])
                if le(l2, l1) and le(r1, r2):
                    dsack = True
        i += ln
    return tsval, dsack, mss


class Analyser:
    def __init__(self, reorder_ns=0):
        self.reorder_ns = reorder_ns
        self.flows = {}       # frozenset of endpoints -> Flow (replaced on port reuse)
        self.order = []       # flows in creation order

    def frame(self, ts, t):
        """Flags (a set of names) of one decoded segment, and (flow index, dir)."""
        key = frozenset((t["src"], t["dst"])) if t["src"] != t["dst"] else (t["src"],)
        f = self.flows.get(key)
        if f is not None:
            d = 0 if t["src"] == f.a else 1
            if t["flags"] & (SYN | ACK) == SYN and f.d[d].isn is not None and f.d[d].isn != t["seq"]:
                f = None
        if f is None:
            f = Flow(t["src"], t["dst"])
            self.flows[key] = f
            self.order.append(f)
        d = 0 if t["src"] == f.a else 1
        return self.analyse(f, d, ts, t), (self.order.index(f), d)

    def analyse(self, f, d, ts, t):
        fwd, rev = f.d[d], f.d[1 - d]
        seq, ack, seglen, flags, window = t["seq"], t["ack"], t["seglen"], t["flags"], t["win"]
        sfr = flags & (SYN | FIN | RST)
        tsval, dsack, mss = options(t["opts"], ack)
        fwd.count("pkts")
        if flags & SYN:
            fwd.isn = seq
            fwd.mss = mss
            if not flags & ACK:
                f.mru_syn = ts
        if flags & (SYN | ACK) == ACK and f.mru_syn and not f.first_rtt:
            f.first_rtt = ts - f.mru_syn
        fl = set()
        if seglen == 1 and seq == fwd.nextseq and rev.window == 0:
            fl.add("zero_window_probe")
        else:
            if window == 0 and not sfr:
                fl.add("zero_window")
            if fwd.nextseq and gt(seq, fwd.nextseq) and not flags & RST:
                fl.add("lost_segment")
            if seglen <= 1 and seq == (fwd.nextseq - 1) & M32 and not sfr:
                fl.add("keep_alive")
            same = seglen == 0 and seq == fwd.nextseq and ack == fwd.lastack and not sfr
            if same and window and window != fwd.window:
                fl.add("window_update")
            if same and window and window == fwd.window and "keep_alive" in rev.lastsegflags:
                pass                                   # keep-alive ACK
            elif same and window == 0 and window == fwd.window and "zero_window_probe" in rev.lastsegflags:
                pass                                   # zero-window-probe ACK
            elif same and window and window == fwd.window:
                fwd.dupacknum = 1 if fwd.dupacknum == -1 else fwd.dupacknum + 1
                fl.add("duplicate_ack")
        if ack != fwd.lastack:
            fwd.dupacknum = 0
        if rev.maxseqtobeacked and gt(ack, rev.maxseqtobeacked) and flags & ACK:
            if lt(rev.maxseqtobeacked, rev.nextseq):         # tshark 4.0's repeat suppression
                rev.maxseqtobeacked = rev.nextseq
                fl.add("ack_lost_segment")
            else:
                if rev.dupacknum == 0:
                    fl.add("ack_lost_segment")
                rev.dupacknum = -1
        if (seglen > 0 or flags & (SYN | FIN)) and "keep_alive" not in fl:
            not_adv = bool(fwd.nextseq) and lt(seq, fwd.nextseq)
            if seglen > 1 and (fwd.nextseq - 1) & M32 == seq:
                not_adv = False
            thres = f.first_rtt or 3_000_000
            if not_adv and rev.dupacknum >= 2 and rev.lastack == seq and (ts - rev.lastacktime) % 2**64 < 20_000_000:
                fl.add("fast_retransmission")
            elif seglen > 0 and rev.lastack and le(seq + seglen, rev.lastack):
                fl.add("spurious_retransmission")     # tshark 4.0 tests this before out-of-order
            elif not_adv and (ts - fwd.nextseqtime) % 2**64 < thres and fwd.nextseq != (seq + seglen) & M32:
                fl.add("out_of_order")
            elif not_adv:
                fl.add("retransmission")
        nextseq = (seq + seglen + (1 if flags & (SYN | FIN) else 0)) & M32
        if (gt(nextseq, fwd.nextseq) or not fwd.nextseq) and "zero_window_probe" not in fl:
            fwd.nextseq, fwd.nextseqtime = nextseq, ts
        if (seq == fwd.maxseqtobeacked or not fwd.maxseqtobeacked) and "zero_window_probe" not in fl:
            fwd.maxseqtobeacked = fwd.nextseq
        fwd.window, fwd.lastack, fwd.lastacktime = window, ack, ts
        fwd.lastsegflags = set(fl)
        span = seglen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if span and not fl & {"keep_alive", "zero_window_probe"}:
            fl |= self.classify(f, fwd, ts, seq, span, t["ipid"], tsval, bool(flags & SYN))
        if flags & ACK:
            rev.holes = [[max(h[0], ack, key=lambda x: s32(x - ack)), h[1], h[2]]
                         for h in rev.holes if not le(h[1], ack)]
            if dsack:
                fl.add("dsack")
                rev.count("dsack")
        for name in ("duplicate_ack", "zero_window", "lost_segment", "fast_retransmission",
                     "spurious_retransmission", "out_of_order"):
            if name in fl:
                fwd.count(name)
        if fl & {"retransmission", "fast_retransmission", "spurious_retransmission"}:
            fwd.count("ws_retrans")
        optlen = t["doff"] - 20
        mss = rev.mss or fwd.mss               # the sender's own when the peer's SYN was not seen
        smss = mss - optlen if mss > optlen + 8 else 0
        segs = -(-seglen // smss) if smss and seglen else 1      # a SYN or FIN alone is one
        if seglen:
            fwd.counts["data_segs"] = fwd.counts.get("data_segs", 0) + segs
        if "np_retrans" in fl:
            fwd.counts["retrans_segs"] = fwd.counts.get("retrans_segs", 0) + segs
            fwd.count("retrans")
            fwd.count("lost_retrans" if "np_lost_retrans" in fl else "seen_retrans")
        if "np_ooo" in fl:
            fwd.count("ooo")
        return fl

    def classify(self, f, fwd, ts, seq, span, ipid, tsval, syn=False):
        end = (seq + span) & M32
        out = set()
        if fwd.seen_hi is not None and lt(seq, fwd.seen_hi) and not stale(fwd.seen_hi, seq):
            order = 0
            trusted = fwd.id_good >= ID_TRUST and fwd.id_bad * 8 < fwd.id_good
            if ipid is not None and fwd.last_id is not None and trusted:
                order = self.sent_order(fwd, seq, ipid)
            elif tsval is not None and fwd.last_ts is not None and tsval != fwd.last_ts:
                order = -1 if lt(tsval, fwd.last_ts) else 1
            below = end if lt(end, fwd.seen_hi) else fwd.seen_hi
            # bytes of [seq, below) inside holes, checked one byte range at a time
            in_holes, oldest = 0, None
            for h in fwd.holes:
                lo = seq if gt(seq, h[0]) else h[0]
                hi = below if lt(below, h[1]) else h[1]
                if lt(lo, hi):
                    in_holes += (hi - lo) & M32
                    oldest = h if oldest is None else oldest
            if order < 0:
                out = {"np_ooo"}
            elif in_holes < (below - seq) & M32:
                out = {"np_retrans"}
            elif order > 0:
                out = {"np_retrans", "np_lost_retrans"}
            else:
                window = self.reorder_ns or f.first_rtt or 3_000_000
                out = {"np_ooo"} if ts - oldest[2] < window else {"np_retrans", "np_lost_retrans"}
            if in_holes:
                self.fill(fwd, seq, below)
        if fwd.seen_hi is not None and gt(seq, fwd.seen_hi) and gt(end, fwd.seen_hi):   # below the new top
            if len(fwd.holes) == NHOLES:
                fwd.holes.pop(0)
                fwd.count("holes_dropped")
            fwd.holes.append([fwd.seen_hi, seq, ts])
        if fwd.seen_hi is None or gt(end, fwd.seen_hi):
            if ipid is not None and fwd.last_id is not None:
                if 0 < (ipid - fwd.last_id) % 65536 <= 1024:
                    fwd.id_good += 1
                elif not fwd.last_syn:          # a SYN's ID need not be from the data's counter
                    fwd.id_bad += 1
            fwd.seen_hi, fwd.last_id, fwd.last_ts, fwd.last_syn = end, ipid, tsval, syn
            kept = [h for h in fwd.holes if not stale(end, h[0])]      # no order that far below
            fwd.counts["holes_dropped"] = fwd.counts.get("holes_dropped", 0) + len(fwd.holes) - len(kept)
            fwd.holes = kept
        if ipid is not None:
            self.add_sent(fwd, end, ipid)
        return out

    @staticmethod
    def sent_order(fwd, seq, ipid):
        """1 if a captured segment with bytes at or above seq was sent no later than
        IPv4 ID ipid (so ipid cannot be the first transmission of byte seq: originals go
        out in sequence order), -1 if all were sent after it (an overtaken original).
        The marks' IDs rise with their ends: the first mark above seq has the earliest."""
        ref = next((i for e, i, _ in fwd.sent if gt(e, seq)), fwd.last_id)   # none: what last raised seen_hi
        return -1 if id_after(ref, ipid) else 1

    @staticmethod
    def add_sent(fwd, end, ipid):
        """Keep the marks no other mark dominates (an end as high, an ID as early), sorted
        by end, each tagged with its run: marks whose ends and IDs step evenly (the next ID
        each time), as new data appended at the top makes them. A mark joins the run just
        below it when it continues it that way; otherwise it is a run of its own, and splits
        the run it lands in. With more than NSENT runs the lowest is forgotten. Marks 2**31
        or more below seen_hi are forgotten first, and such a mark is not kept: sequence
        numbers that far apart have no order (RFC 1982), and the sort by end needs one."""
        m = fwd.sent = [x for x in fwd.sent if not stale(fwd.seen_hi, x[0])]
        if stale(fwd.seen_hi, end):
            return
        k = next((n for n, (e, _, _) in enumerate(m) if not lt(e, end)), len(m))
        if k < len(m) and not id_after(m[k][1], ipid):
            return
        j = k
        while j > 0 and not id_after(ipid, m[j - 1][1]):
            j -= 1
        k2 = k + 1 if k < len(m) and m[k][0] == end else k
        if 0 < j and k2 < len(m) and m[j - 1][2] == m[k2][2]:      # inside a run: its lower part is one now
            split, fwd.runs = m[j - 1][2], fwd.runs + 1
            for x in m[:j]:
                if x[2] == split:
                    x[2] = fwd.runs
        fwd.runs += 1
        tag = fwd.runs
        if j:                                                       # the run below, its top at j - 1
            run = [x for x in m[:j] if x[2] == m[j - 1][2]]
            if len(run) < RUN_MAX and ipid == (m[j - 1][1] + 1) % 65536 and \
                    (len(run) == 1 or (end - m[j - 1][0]) & M32 == (m[j - 1][0] - m[j - 2][0]) & M32):
                tag = m[j - 1][2]
        m = m[:j] + [[end, ipid, tag]] + m[k2:]
        while len({x[2] for x in m}) > NSENT:
            m = [x for x in m if x[2] != m[0][2]]
        fwd.sent = m

    @staticmethod
    def fill(fwd, lo, hi):
        new = []
        for h in fwd.holes:
            if not (lt(lo, h[1]) and lt(h[0], hi)):
                new.append(h)
            elif le(lo, h[0]) and le(h[1], hi):
                continue
            elif gt(lo, h[0]) and lt(hi, h[1]):
                new.append([h[0], lo, h[2]])
                tail = [hi, h[1], h[2]]
                fwd.pending = tail
            elif gt(lo, h[0]):
                new.append([h[0], lo, h[2]])
            else:
                new.append([hi, h[1], h[2]])
        tail = getattr(fwd, "pending", None)
        if tail is not None:
            del fwd.pending
            if len(new) == NHOLES:
                new.pop(0)
                fwd.count("holes_dropped")
            new.append(tail)
        fwd.holes = new


def analyse(data, reorder_ns=0):
    """(per-frame flag sets, per-frame (flow, dir) or None, flows) of a pcap image."""
    frames, linktype = read_pcap(data)
    a = Analyser(reorder_ns)
    flags, where = [], []
    for ts, frame, wirelen in frames:
        t = decode(frame, wirelen, linktype)
        if t is None:
            flags.append(set())
            where.append(None)
            continue
        fl, w = a.frame(ts, t)
        flags.append(fl)
        where.append(w)
    return flags, where, a.order


def path_resends(upstream, downstream):
    """Segments resent across a lossy path seen from capture points before and after it (pcap
    images of one sender's data): (resent, lost, unrecognisable, unordered).

    resent: upstream, data below the highest sequence seen there, sent after the segment
    that raised it (later IPv4 ID; without IDs, later in the capture). lost: resends that
    never arrived downstream. unrecognisable: resends that arrived downstream at or above
    everything seen there (their original and all after it lost): no capture after the loss
    can tell them from new data. unordered: resends that filled a hole before ID_TRUST + 1
    segments had raised the highest sequence downstream, so before the analyser trusts the
    sender's IPv4 IDs: without a TSval step or the reorder window it cannot tell them from
    overtaken originals (retrans-notes.md, "No send-order evidence"), so they may be counted
    either way. A FIN takes a sequence number, so one captured after lost data opens a hole
    as data would. Counted in segments: a GSO frame holds as many as its data needs at the
    MSS in the sender's SYN less its options (one per frame without it); a FIN alone is one."""
    def segments(image):
        frames, linktype = read_pcap(image)
        mss, out = {}, []
        for _, frame, wirelen in frames:
            t = decode(frame, wirelen, linktype)
            if t is None:
                continue
            k = (t["src"], t["dst"])
            if t["flags"] & SYN:
                mss[k] = options(t["opts"], t["ack"])[2]
            elif t["seglen"] or t["flags"] & FIN:
                m = mss.get(k, 0) - (t["doff"] - 20)
                segs = -(-t["seglen"] // m) if t["seglen"] and m > 0 else 1
                out.append((k, t["seq"], t["seglen"] + (1 if t["flags"] & FIN else 0), t["ipid"], segs))
        return out

    hi, resends = {}, {}
    for k, seq, n, ipid, segs in segments(upstream):
        top = hi.get(k)
        if top is not None and lt(seq, top[0]) and (ipid is None or top[1] is None or id_after(ipid, top[1])):
            resends[k, seq, ipid] = segs
        if top is None or gt(seq + n, top[0]):
            hi[k] = ((seq + n) & M32, ipid)
    hi, raised, arrived, blind, early = {}, {}, set(), set(), set()
    for k, seq, n, ipid, _ in segments(downstream):
        arrived.add((k, seq, ipid))
        if k in hi and not lt(seq, hi[k]):
            blind.add((k, seq, ipid))
        elif raised.get(k, 0) <= ID_TRUST:
            early.add((k, seq, ipid))
        if k not in hi or gt(seq + n, hi[k]):
            hi[k] = (seq + n) & M32
            raised[k] = raised.get(k, 0) + 1
    return tuple(sum(s for r, s in resends.items() if keep(r))
                 for keep in (lambda r: True, lambda r: r not in arrived, lambda r: r in blind, lambda r: r in early))
