"""NFQUEUE delay helper: netem-like delay and jitter without sch_netem.

The lab kernel has no sch_netem, but it has NFQUEUE.  An iptables rule sends
forwarded packets to queue N; the kernel keeps each packet and hands us only
its metadata (copy mode META, F_GSO so GSO skbs are not segmented).  We hold
the ACCEPT verdict until arrival + delay (+ uniform jitter), so no packet is
ever copied or re-injected.  Jitter keeps the packet order (a packet is never
released before the one in front of it), so every release is "all ids up to
X": one VERDICT_BATCH per wake-up.

Arrival is the kernel RX timestamp (NFQA_TIMESTAMP).  The kernel only stamps
packets while some socket has asked for timestamps, so a socket with
SO_TIMESTAMPNS is kept open; our own wake-up lag then does not add to the
delay.  Packets without a sane stamp are timed at recv().

Stdlib only, raw nfnetlink over AF_NETLINK/NETLINK_NETFILTER.  Prints READY
on stdout once bound.  Exits after --lifetime seconds or on SIGTERM/SIGINT;
either way it accepts every held packet, unbinds and prints a stats line.

    iptables -A FORWARD -i IN -o OUT -j NFQUEUE --queue-num 0
    python3 -m tests.lab.nfqdelay --queue 0 --delay 20 --jitter 2
"""
import argparse
import collections
import random
import select
import signal
import socket
import struct
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_TIMESTAMP = 4
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NF_ACCEPT = 1
PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
MAX_TS_AGE = 0.05  # s; an older kernel stamp is not this packet's arrival


def nla(atype, payload):
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def nfq_msg(mtype, queue, attrs, flags=NLM_F_REQUEST, seq=0):
    """An nfnetlink queue message: nlmsghdr + nfgenmsg + attributes."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | mtype,
                       flags, seq, 0) + body


def parse_packet(buf, n):
    """(packet id, kernel RX stamp in CLOCK_REALTIME s or None) of a queued
    packet message; (None, None) for anything else (e.g. error replies)."""
    if n < 20 or struct.unpack_from("=H", buf, 4)[0] != PACKET_TYPE:
        return None, None
    pkt_id = stamp = None
    off = 20
    while off + 4 <= n:
        alen, atype = struct.unpack_from("=HH", buf, off)
        if alen < 4:
            break
        atype &= 0x3FFF
        if atype == NFQA_PACKET_HDR:
            pkt_id = struct.unpack_from("!I", buf, off + 4)[0]
        elif atype == NFQA_TIMESTAMP:
            sec, usec = struct.unpack_from("!QQ", buf, off + 4)
            stamp = sec + usec * 1e-6
        off += (alen + 3) & ~3
    return pkt_id, stamp


class Queue:
    """A bound NFQUEUE instance (copy mode META, F_GSO)."""

    def __init__(self, num, maxlen):
        self.num = num
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._config(nla(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0))
                     + nla(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                     + nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
                     + nla(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
                     + nla(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO)))
        self.sock.setblocking(False)

    def _config(self, attrs):
        """Send one config request and raise on its error ack."""
        self.sock.send(nfq_msg(NFQNL_MSG_CONFIG, self.num, attrs, NLM_F_REQUEST | NLM_F_ACK, 1))
        while True:  # a queued packet may arrive before the ack
            reply = self.sock.recv(65536)
            if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
                break
        err = struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(-err, "NFQUEUE %d bind failed" % self.num)

    def accept_upto(self, pkt_id):
        """ACCEPT every held packet with id <= pkt_id."""
        self.sock.send(nfq_msg(NFQNL_MSG_VERDICT_BATCH, self.num,
                               nla(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pkt_id))))

    def unbind(self):
        self.sock.setblocking(True)
        self.sock.send(nfq_msg(NFQNL_MSG_CONFIG, self.num,
                               nla(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0))))
        self.sock.close()


class Stats:
    """Counters for the exit line; lateness = release time - due time."""

    def __init__(self):
        self.packets = self.kernel_ts = self.max_held = 0
        self.late = []

    def line(self, args):
        late = sorted(self.late) or [0.0]

        def p(q):
            return late[min(len(late) - 1, int(q * len(late)))] * 1e6
        return ("nfqdelay tag=%s queue=%d delay_ms=%g jitter_ms=%g packets=%d kernel_ts=%d "
                "max_held=%d late_us_p50=%.0f late_us_p99=%.0f" % (
                    args.tag, args.queue, args.delay, args.jitter, self.packets,
                    self.kernel_ts, self.max_held, p(0.5), p(0.99)))


def serve(q, args):
    """Hold verdicts until due; return Stats when the lifetime ends or a
    signal asks us to stop."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    rng = random.Random(args.seed)
    delay, jitter = args.delay / 1e3, args.jitter / 1e3
    held = collections.deque()  # (due monotonic s, id), both non-decreasing
    last_due = 0.0
    stats = Stats()
    buf = bytearray(65536)
    deadline = time.monotonic() + args.lifetime
    while not stop:
        now = time.monotonic()
        if now >= deadline:
            break
        if held and held[0][0] <= now:
            if len(stats.late) < 100000:
                stats.late.append(now - held[0][0])
            while held and held[0][0] <= now:
                _, upto = held.popleft()
            q.accept_upto(upto)
        wake = held[0][0] if held else deadline
        # 0.2 s cap: a signal only sets a flag, the loop must come round to see it
        if not select.select([q.sock], [], [], min(0.2, max(0.0, wake - now)))[0]:
            continue
        real_to_mono = time.monotonic() - time.time()
        for _ in range(256):  # bounded drain, so releases are not starved
            try:
                n = q.sock.recv_into(buf)
            except BlockingIOError:
                break
            pkt_id, stamp = parse_packet(buf, n)
            if pkt_id is None:
                continue
            t = time.monotonic()
            if stamp is not None and 0 <= t - (stamp + real_to_mono) < MAX_TS_AGE:
                t = stamp + real_to_mono
                stats.kernel_ts += 1
            d = delay + (rng.uniform(-jitter, jitter) if jitter else 0.0)
            last_due = max(last_due, t + max(0.0, d))
            held.append((last_due, pkt_id))
            stats.packets += 1
        stats.max_held = max(stats.max_held, len(held))
    # release everything: held packets and those still queued to us
    upto = held[-1][1] if held else 0
    while True:
        try:
            n = q.sock.recv_into(buf)
        except BlockingIOError:
            break
        upto = parse_packet(buf, n)[0] or upto
    if upto:
        q.accept_upto(upto)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description="NFQUEUE delay helper (netem-like delay/jitter)")
    ap.add_argument("--queue", type=int, default=0, help="NFQUEUE number")
    ap.add_argument("--delay", type=float, default=0.0, help="one-way delay, ms")
    ap.add_argument("--jitter", type=float, default=0.0, help="+- uniform jitter, ms (order kept)")
    ap.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many s")
    ap.add_argument("--maxlen", type=int, default=20000, help="kernel queue length (drops beyond)")
    ap.add_argument("--seed", type=int, default=None, help="jitter RNG seed")
    ap.add_argument("--tag", default="", help="free text, names the owner in ps and stats")
    args = ap.parse_args(argv)
    q = Queue(args.queue, args.maxlen)
    stamps = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stamps.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    print("READY queue=%d" % args.queue, flush=True)
    stats = serve(q, args)
    q.unbind()
    stamps.close()
    print(stats.line(args), flush=True)


if __name__ == "__main__":
    main()
