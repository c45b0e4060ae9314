"""Scripted TCP conversations and capture-file writers for the pcap analyser's tests.

`conversation(ops)` plays a script of sender/receiver events for one TCP
connection A -> B (data one way, ACKs back) and returns the frames a capture
point between them would record, as raw IP packets built with scapy: new
segments, segments lost before the capture point (never recorded), sender
retransmissions (new IP ID and TSval), originals or retransmissions held
back and released later (reordering: the IP ID and TSval of when they were
sent), cumulative and duplicate ACKs, zero
windows, D-SACK blocks. The writers wrap the same IP packets in any link type
and file format the analyser reads.
"""
import heapq
import random
import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

A4, B4 = "198.18.1.2", "198.18.2.2"
A6, B6 = "2001:2:0:1::2", "2001:2:0:2::2"
MSS = 100
OPS = ("send", "lose", "retrans", "hold", "hold_retrans", "release", "ack", "dupack", "zerowin", "dsack",
       "wait")


def conversation(ops, v6=False, isn_a=1000, isn_b=5000, t0_ns=1_700_000_000 * 10**9, syn_id=None,
                 retrans_ts_step=1, id_noise=0, seed=0):
    """[(ts_ns, ip_bytes)] for a script of (op, arg) pairs (arg: an int >= 0). syn_id: the IPv4 ID of
    A's SYN when it is not from A's counter (Linux sends a listener's SYN-ACK with ID 0, then starts
    the socket's counter at random); retrans_ts_step: how far a resend's TSval moves (0: within the
    same millisecond tick, as on a sub-millisecond path); id_noise: each of A's IDs is its counter
    plus or minus up to this much (seeded by `seed`): IDs now and then out of send order or repeated."""
    src, dst = (A6, B6) if v6 else (A4, B4)
    out = []
    st = {"t": t0_ns, "ida": 100, "idb": 7000, "ts": 50_000, "sent": [], "next": isn_a + 1,
          "held": [], "acked": isn_a + 1, "win": 500}
    rnd = random.Random(seed)

    def next_id(key):
        st[key] = (st[key] + 1) & 0xFFFF
        return (st[key] + (rnd.randint(-id_noise, id_noise) if key == "ida" else 0)) & 0xFFFF

    def emit(from_a, seq, ack, flags, n=0, ipid=None, tsval=None, sack=None, win=None):
        st["t"] += 20_000                          # 20 us between frames
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (tsval if tsval is not None else st["ts"], 1))]
        if "S" in flags:                           # B's MSS makes A's 100-byte segments 2 wire segments
            opts = [("MSS", 1460 if from_a else 62)] + opts
        if sack:
            opts += [("NOP", None), ("NOP", None), ("SAck", sack)]
        tcp = TCP(sport=40000 if from_a else 5201, dport=5201 if from_a else 40000, seq=seq, ack=ack,
                  flags=flags, window=st["win"] if win is None else win, options=opts)
        if v6:
            ip = IPv6(src=src if from_a else dst, dst=dst if from_a else src)
        else:
            if ipid is None:
                ipid = next_id("ida" if from_a else "idb")
            ip = IP(src=src if from_a else dst, dst=dst if from_a else src, id=ipid, flags="DF")
        pkt = ip / tcp / Raw(b"x" * n) if n else ip / tcp
        out.append((st["t"], bytes(pkt)))

    def new_segment(record):
        seq = st["next"]
        st["next"] += MSS
        ipid = next_id("ida")
        st["sent"].append((seq, ipid, st["ts"]))
        return seq, ipid, st["ts"]

    emit(True, isn_a, 0, "S", ipid=syn_id)
    emit(False, isn_b, isn_a + 1, "SA")
    emit(True, isn_a + 1, isn_b + 1, "A")
    for op, arg in ops:
        if op == "send":
            seq, ipid, ts = new_segment(True)
            emit(True, seq, isn_b + 1, "PA", MSS, ipid, ts)
        elif op == "lose":
            new_segment(False)
        elif op == "hold":
            st["held"].append(new_segment(False))
        elif op == "release" and st["held"]:
            seq, ipid, ts = st["held"].pop(arg % len(st["held"]))
            emit(True, seq, isn_b + 1, "PA", MSS, ipid, ts)
        elif op == "retrans" and st["sent"]:
            seq = st["sent"][arg % len(st["sent"])][0]
            st["ts"] += retrans_ts_step
            emit(True, seq, isn_b + 1, "PA", MSS, None, st["ts"])
        elif op == "hold_retrans" and st["sent"]:
            seq = st["sent"][arg % len(st["sent"])][0]
            st["ts"] += 1
            st["held"].append((seq, next_id("ida"), st["ts"]))
        elif op == "ack":
            st["acked"] = min(st["next"], st["acked"] + MSS * (1 + arg % 4))
            emit(False, isn_b + 1, st["acked"], "A")
        elif op == "dupack":
            emit(False, isn_b + 1, st["acked"], "A")
        elif op == "zerowin":
            emit(False, isn_b + 1, st["acked"], "A", win=0)
        elif op == "dsack" and st["acked"] > isn_a + 1 + MSS:
            lo = st["acked"] - MSS * (1 + arg % 2)
            emit(False, isn_b + 1, st["acked"], "A", sack=(lo, lo + MSS))
        elif op == "wait":
            st["t"] += (1 + arg % 20) * 1_000_000
            st["ts"] += 1 + arg % 20
    return out


# ---- link layers and file formats

def link(ip, linktype, vlan=False):
    """The frame of IP packet `ip` for a link type (1 Ethernet, 113 SLL, 276 SLL2, 101 raw)."""
    et = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    if linktype == 1:
        tag = struct.pack(">HH", 0x8100, 42) if vlan else b""
        return b"\x02\x1a\xb0\x00\x01\x01\x02\x1a\xb0\x00\x01\x02" + tag + struct.pack(">H", et) + ip
    if linktype == 113:
        return struct.pack(">HHH8sH", 4, 1, 6, b"\x02\x1a\xb0\x00\x01\x02\0\0", et) + ip
    if linktype == 276:
        return struct.pack(">HHIHBB8s", et, 0, 2, 1, 4, 6, b"\x02\x1a\xb0\x00\x01\x02\0\0") + ip
    if linktype == 101:
        return ip
    raise ValueError(linktype)


def pcap(frames, linktype=1, big_endian=False, ns=False, snaplen=65535):
    """A classic pcap image of [(ts_ns, frame)], frames cut to snaplen."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, fr in frames:
        sec, rem = divmod(ts, 10**9)
        cap = fr[:snaplen]
        out.append(struct.pack(e + "IIII", sec, rem if ns else rem // 1000, len(cap), len(fr)) + cap)
    return b"".join(out)


def ether_pcap(frames, **kw):
    """A classic pcap image of [(ts_ns, ip_bytes)] on Ethernet (pcap's keywords)."""
    return pcap([(t, link(ip, 1)) for t, ip in frames], **kw)


def pcapng(frames, linktype=1, big_endian=False, tsresol=9, snaplen=65535):
    """A pcapng image: SHB, one IDB (if_tsresol), one EPB per frame."""
    e = ">" if big_endian else "<"

    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    shb = block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack(e + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(e + "HH", 0, 0)
    idb = block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)
    out = [shb, idb]
    for ts, fr in frames:
        units = ts // 10 ** (9 - tsresol)
        cap = fr[:snaplen]
        out.append(block(6, struct.pack(e + "IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(cap), len(fr)) + cap))
    return b"".join(out)


def a_packet(seq, ipid, nbytes=0, flags="PA", options=()):
    """One of A's packets to B (port 40000 -> 5201), IPv4 with ID ipid, nbytes of data."""
    pkt = IP(src=A4, dst=B4, id=ipid, flags="DF") / TCP(sport=40000, dport=5201, seq=seq,
                                                         ack=0 if "S" in flags else 5001, flags=flags,
                                                         options=list(options))
    return bytes(pkt / Raw(b"x" * nbytes) if nbytes else pkt)


def lossy_path(seed, segments=3000, loss=0.01, burst=0.002, spurious=0.0, stall=0.0, rtt=40):
    """A's data across a path that loses and reorders it, as capture points before and after the
    path record it: (upstream, downstream), each [(ts_ns, ip_bytes)] from A's SYN on. One slot
    (10 us) per packet sent; every packet has the next IPv4 ID and the TSval of its millisecond.
    Loss: each packet with probability `loss`, and bursts of 2-8 from one with `burst`; the
    sender resends a lost packet an `rtt` of slots later (a resend can be lost too), and with
    probability `spurious` resends one that arrived (a timer that fired early). Reordering: a
    vCPU stall, from one packet with probability `stall`, holds the next 1-30 back for 100-600
    slots in a host's backlog while the ones after it pass."""
    rnd = random.Random(seed)
    t0 = 1_700_000_000 * 10**9
    syn = (t0, a_packet(999, 99, flags="S", options=[("MSS", 1460)]))
    up, down, due = [syn], [], []            # due: a heap of (slot, segment) resends
    slot, nxt, ipid, lose_run, held, until = 0, 0, 100, 0, 0, 0
    while (nxt < segments or due) and slot < 10 * segments:
        slot += 1
        if due and due[0][0] <= slot:
            seg = heapq.heappop(due)[1]
        elif nxt < segments:
            seg, nxt = nxt, nxt + 1
        else:
            continue
        ipid = (ipid + 1) & 0xFFFF
        pkt = a_packet(1000 + seg * MSS, ipid, MSS,
                       options=[("NOP", None), ("NOP", None), ("Timestamp", (slot // 100, 1))])
        up.append((t0 + slot * 10_000, pkt))
        if lose_run == 0 and rnd.random() < burst:
            lose_run = rnd.randint(2, 8)
        if lose_run or rnd.random() < loss:
            lose_run = max(lose_run - 1, 0)
            heapq.heappush(due, (slot + rtt, seg))
            continue
        if held == 0 and rnd.random() < stall:
            held, until = rnd.randint(1, 30), slot + rnd.randint(100, 600)
        arrive = slot + 5
        if held:
            held, arrive = held - 1, until
        down.append((arrive, slot, pkt))
        if rnd.random() < spurious:
            heapq.heappush(due, (slot + rtt, seg))
    down.sort()
    return up, [syn] + [(t0 + a * 10_000, p) for a, _, p in down]
