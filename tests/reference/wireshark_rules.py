"""Wireshark's TCP analysis flags, written from its User's Guide, section "TCP Analysis"
(wsug_html_chunked/ChAdvTCPAnalysis.html), with RFC 793 sequence arithmetic, RFC 5681's
duplicate ACK and RFC 2018/2883 SACK blocks where the guide leans on them.

Independent of netprobe's analyser: frames are read with scapy, and every rule below cites
the guide's words it implements. Where the guide's text can be read two ways, the comment
says which reading is taken. Output per frame: the set of flag names, spelled as tshark's
`tcp.analysis.*` fields (flags the guide makes exclusive stay exclusive here: a fast or
spurious retransmission is not also "retransmission"). The iRTT of the out-of-order rule is
tshark's tcp.analysis.initial_rtt: from the SYN to the ACK that ends the handshake.

Left out: Window Full (the analyser has no bit for it), the fast-retransmission alternative
"or more than 2 MSS have been jumped over" (the guide does not say over what), and the
"Ambiguous Interpretations" preference (the default precedence is kept).
"""
from dataclasses import dataclass, field

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import PcapReader

OOO_DEFAULT = 3_000_000  # ns, "the default value of 3ms" (Out-Of-Order)
FAST_ACK_AGE = 20_000_000  # ns, "We saw the last acknowledgment less than 20ms ago" (Fast Retransmission)
# flags decided by the next expected sequence number: such a frame does not move it on
HELD = {"retransmission", "fast_retransmission", "out_of_order", "keep_alive"}


@dataclass
class Seg:
    """The raw header fields of one captured TCP segment."""
    t: int              # ns: exact, so "within" the iRTT is not decided by rounding
    key: tuple          # (src, sport, dst, dport)
    seq: int
    ack: int
    flags: str          # scapy's letters: S A F R P ...
    win: int
    plen: int           # payload bytes from the IP length fields (not the captured bytes)
    sack: tuple = ()    # ((left, right), ...)


def read_frames(source):
    """[Seg or None per frame] in file order; None: not analysed (no TCP, an IP fragment)."""
    out = []
    with PcapReader(source) as rd:
        for pkt in rd:
            out.append(_seg(pkt))
    return out


def _seg(pkt):
    if IP in pkt:
        ip = pkt[IP]
        if ip.flags.MF or ip.frag:
            return None
        iplen = ip.len - ip.ihl * 4
    elif IPv6 in pkt:
        ip = pkt[IPv6]
        iplen = ip.plen
    else:
        return None
    if TCP not in ip:       # ICMP errors quote a TCP header as TCPerror, not TCP
        return None
    tcp = ip[TCP]
    if IPv6 in pkt:         # less the extension headers before TCP
        iplen -= len(ip.payload) - len(tcp)
    sack = ()
    for name, val in tcp.options:
        if name == "SAck" and val:
            sack = tuple(zip(val[0::2], val[1::2], strict=False))  # a truncated option: whole blocks
    return Seg(int(pkt.time * 1_000_000_000), (ip.src, tcp.sport, ip.dst, tcp.dport), tcp.seq, tcp.ack,
               str(tcp.flags), tcp.window, max(0, iplen - tcp.dataofs * 4), sack)


# RFC 793 3.3: "all arithmetic dealing with sequence numbers must be performed modulo 2**32"
def lt(a, b):
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def le(a, b):
    return a == b or lt(a, b)


@dataclass
class Dir:
    """What the guide calls the analysis state of one direction of a conversation."""
    nextseq: int = None         # "Next expected sequence number" (None: "initially zero")
    nextseq_t: int = 0
    maxseqtobeacked: int = None  # "Next expected acknowledgment number"
    lastack: int = None         # "Last-seen acknowledgment number"
    lastack_t: int = None
    win: int = None             # last-seen window size
    dupacks: int = 0
    last_keepalive: bool = False
    last_zwp: bool = False
    unseen_at: int = None       # the reverse direction's next expected acknowledgment number
    #                             when this direction's last ACK acked bytes not captured (facts)
    base: int = None            # first sequence number captured (facts only)
    captured: list = field(default_factory=list)  # merged [lo, hi) captured, relative to base

    def capture(self, seq, seglen):
        if self.base is None:
            self.base = seq
        lo = (seq - self.base) & 0xFFFFFFFF
        hi = lo + seglen
        keep = []
        for a, b in self.captured:
            if b < lo or a > hi:
                keep.append((a, b))
            else:
                lo, hi = min(a, lo), max(b, hi)
        self.captured = sorted(keep + [(lo, hi)])

    def uncaptured_below(self, ack):
        """Is some byte below `ack` never captured (a hole, not what lies above the highest)?"""
        if self.base is None or not self.captured:
            return False
        rel = (ack - self.base) & 0xFFFFFFFF
        return rel < 0x80000000 and any(b < rel for _, b in self.captured[:-1])  # a gap follows each


@dataclass
class Conv:
    isn: int = None             # the SYN's sequence number (for "Port numbers reused")
    syn_t: int = None
    synack_seen: bool = False
    irtt: int = None            # tcp.analysis.initial_rtt: SYN to the ACK that ends the handshake
    dirs: dict = field(default_factory=dict)


def valid_sack(s):
    """RFC 2018 3: a block is "Left Edge" to "Right Edge"; a block is valid when it is not empty.
    RFC 2883 D-SACK blocks (below the ACK) are SACK data as well."""
    return any(lt(l_, r) for l_, r in s.sack)


def analyse(frames, sack_dup_ack=True, facts=None):
    """[set of flag names] per frame. sack_dup_ack=False drops the Dup ACK rule's "or there is
    valid SACK data" (and Window Update's "and there is no valid SACK data"), which older
    guides do not have (2.x: "The window size is non-zero and hasn't changed") and tshark 4.0
    does not apply. facts: a list to which each frame's set of facts the guide's rules do not
    look at is appended ("acks_uncaptured": an ACK of bytes the capture never saw below the
    reverse direction's highest captured byte; "unseen_again": an "ACKed unseen" ACK after
    this direction's previous ACK, which also acknowledged bytes never captured, with the
    reverse direction's next expected acknowledgment number unchanged since), for naming
    differences."""
    convs = {}
    out = []
    for s in frames:
        if s is None:
            out.append(set())
            continue
        a, ap, b, bp = s.key
        ck = (a, ap, b, bp) if (a, ap) <= (b, bp) else (b, bp, a, ap)
        syn, fin, rst = "S" in s.flags, "F" in s.flags, "R" in s.flags
        is_ack = "A" in s.flags
        flags = set()
        c = convs.get(ck)
        # "Port numbers reused": "the SYN flag is set (not SYN+ACK), we have an existing
        # conversation ... and the sequence number is different than the existing
        # conversation's initial sequence number": a new conversation starts
        if syn and not is_ack and c is not None and c.isn is not None and c.isn != s.seq:
            flags.add("reused_ports")
            c = None
        if c is None:
            c = convs[ck] = Conv()
        if syn and not is_ack:
            c.isn, c.syn_t = s.seq, s.t
        if syn and is_ack:
            c.synack_seen = True
        elif is_ack and c.synack_seen and c.irtt is None and c.syn_t is not None and not syn:
            c.irtt = s.t - c.syn_t
        fwd = c.dirs.setdefault(s.key[:2], Dir())
        rev = c.dirs.setdefault(s.key[2:], Dir())
        seglen = s.plen + syn + fin            # SYN and FIN each take one sequence number
        nxt = (s.seq + seglen) & 0xFFFFFFFF    # "the next sequence number"

        # TCP ZeroWindowProbe: "the sequence number is equal to the next expected sequence
        # number, the segment size is one, and last-seen window size in the reverse direction
        # was zero"
        zwp = fwd.nextseq is not None and s.seq == fwd.nextseq and s.plen == 1 and rev.win == 0
        if zwp:
            flags.add("zero_window_probe")
        # TCP ZeroWindow: "the receive window size is zero and none of SYN, FIN, or RST are set"
        if s.win == 0 and not (syn or fin or rst):
            flags.add("zero_window")
        # TCP Previous segment not captured: "the current sequence number is greater than the
        # next expected sequence number"
        if fwd.nextseq is not None and lt(fwd.nextseq, s.seq):
            flags.add("lost_segment")
        # TCP Keep-Alive: "the segment size is zero or one, the current sequence number is one
        # byte less than the next expected sequence number, and none of SYN, FIN, or RST"
        keepalive = (s.plen <= 1 and fwd.nextseq is not None
                     and s.seq == (fwd.nextseq - 1) & 0xFFFFFFFF and not (syn or fin or rst))
        if keepalive:
            flags.add("keep_alive")
        # ZeroWindowProbe: a dropped probe byte: "a subsequent segment should not be flagged as
        # retransmission" when "The segment size is larger than one" and the probe's byte is
        # its first (read: it starts one below the next expected sequence number, which the
        # probe advanced)
        after_probe = s.plen > 1 and fwd.nextseq is not None and s.seq == (fwd.nextseq - 1) & 0xFFFFFFFF

        # The retransmission family, "Supersedes" order: spurious > fast > out-of-order > plain.
        # Spurious "Checks for a retransmission based on analysis data in the reverse direction"
        # only: "The SYN and FIN flags are not set", "not a keepalive", "segment length is
        # greater than zero", "Data for this flow has been acknowledged" and "The next sequence
        # number is less than or equal to the last-seen acknowledgment number"; its list has no
        # condition on the next expected sequence number
        if (not (syn or fin) and not keepalive and s.plen > 0 and rev.lastack is not None
                and le(nxt, rev.lastack)):
            flags.add("spurious_retransmission")
        # The others: "not a keepalive packet", "segment length is greater than zero or the SYN
        # or FIN", "The next expected sequence number is greater than the current sequence number"
        elif (not keepalive and not after_probe and seglen > 0
                and fwd.nextseq is not None and lt(s.seq, fwd.nextseq)):
            if (rev.dupacks >= 2 and s.seq == rev.lastack and rev.lastack_t is not None
                    and s.t - rev.lastack_t < FAST_ACK_AGE):
                # Fast: "at least two duplicate ACKs in the reverse direction", "The current
                # sequence number equals the next expected acknowledgment number" (read: the
                # number the reverse direction's duplicate ACKs carry), "We saw the last
                # acknowledgment less than 20ms ago"
                flags.add("fast_retransmission")
            elif nxt != fwd.nextseq and s.t - fwd.nextseq_t < (c.irtt if c.irtt is not None else OOO_DEFAULT):
                # Out-Of-Order: "The next expected sequence number and the next sequence number
                # differ" and "The last segment arrived within the Out-Of-Order RTT threshold"
                # ("iRTT ... if it is present, or the default value of 3ms"); the last segment
                # is read as the one that set the next expected sequence number
                flags.add("out_of_order")
            else:
                flags.add("retransmission")

        # ACK side, against the reverse direction's state
        fact = set()
        if is_ack and rev.uncaptured_below(s.ack):
            fact.add("acks_uncaptured")
        if seglen:
            fwd.capture(s.seq, seglen)
        if is_ack:
            # TCP ACKed unseen segment: "the expected next acknowledgment number is set for the
            # reverse direction and it's less than the current acknowledgment number"
            if rev.maxseqtobeacked is not None and lt(rev.maxseqtobeacked, s.ack):
                flags.add("ack_lost_segment")
                if fwd.unseen_at == rev.maxseqtobeacked:
                    fact.add("unseen_again")
            acks_unseen = "ack_lost_segment" in flags or "acks_uncaptured" in fact
            fwd.unseen_at = rev.maxseqtobeacked if acks_unseen else None
            plain = s.plen == 0 and not (syn or fin or rst)
            same_ack = fwd.lastack is not None and s.ack == fwd.lastack
            win_same = s.win != 0 and fwd.win is not None and s.win == fwd.win
            at_next = fwd.nextseq is not None and s.seq == fwd.nextseq
            # TCP Keep-Alive ACK: size zero, "window size is non-zero and hasn't changed",
            # sequence "same as the next expected", acknowledgment "same as the last-seen", "The
            # most recently seen packet in the reverse direction was a keepalive"; not SYN/FIN/RST
            ka_ack = plain and win_same and at_next and same_ack and rev.last_keepalive
            # TCP ZeroWindowProbeAck: size zero, "window size is zero", sequence = next expected,
            # acknowledgment = last-seen, "last-seen packet in the reverse direction was a zero
            # window probe"
            zwp_ack = s.plen == 0 and s.win == 0 and at_next and same_ack and rev.last_zwp
            if ka_ack:
                flags.add("keep_alive_ack")
            if zwp_ack:
                flags.add("zero_window_probe_ack")
            # TCP Dup ACK: "The segment size is zero", "window size is non-zero and hasn't
            # changed, or there is valid SACK data", next expected sequence number and last-seen
            # acknowledgment number set ("the connection has been established"), "SYN, FIN, and
            # RST are not set"; and, what makes an ACK a duplicate (RFC 5681 2: "the
            # acknowledgment number is equal to the greatest acknowledgment received"), the same
            # acknowledgment number. "Supersedes" by Keep-Alive ACK and ZeroWindowProbeAck.
            dup = (plain and same_ack and fwd.nextseq is not None
                   and (win_same or sack_dup_ack and valid_sack(s)) and not ka_ack and not zwp_ack)
            if dup:
                flags.add("duplicate_ack")
                fwd.dupacks += 1
            elif not same_ack:
                fwd.dupacks = 0
            # TCP Window Update: size zero, "window size is non-zero and not equal to the
            # last-seen window size, and there is no valid SACK data", sequence "equal to the next
            # expected", acknowledgment "equal to the last-seen", "None of SYN, FIN, or RST"
            if (plain and s.win != 0 and fwd.win is not None and s.win != fwd.win
                    and not (sack_dup_ack and valid_sack(s)) and at_next and same_ack):
                flags.add("window_update")
            # "Last-seen acknowledgment number: Always updated for each packet"
            fwd.lastack, fwd.lastack_t = s.ack, s.t
        fwd.win = s.win

        # "Next expected sequence number ... Set when there are no analysis flags and for zero
        # window probes"; read: no flag the next expected sequence number itself decided
        # (retransmission, fast, out-of-order, keep-alive): a frame after a gap ("Previous
        # segment not captured") must move it on or every later frame would be after a gap, and
        # so must new data already ACKed (spurious: decided by "analysis data in the reverse
        # direction"). Never backwards.
        if zwp or not flags & HELD and not after_probe:
            if fwd.nextseq is None or lt(fwd.nextseq, nxt):
                fwd.nextseq, fwd.nextseq_t = nxt, s.t
        # "Next expected acknowledgment number ... Set when there are no analysis flags and for
        # zero window probes": no retransmission of any kind either, and to the end of the
        # segment (an ACK of all captured data is not "unseen"). Never backwards.
        if zwp or not flags & (HELD | {"spurious_retransmission"}) and not after_probe:
            if fwd.maxseqtobeacked is None or lt(fwd.maxseqtobeacked, nxt):
                fwd.maxseqtobeacked = nxt
        fwd.last_keepalive, fwd.last_zwp = keepalive, zwp
        out.append(flags)
        if facts is not None:
            facts.append(fact)
    return out


def analyse_file(source, sack_dup_ack=True):
    return analyse(read_frames(source), sack_dup_ack)
