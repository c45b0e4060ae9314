"""Pure-Python oracles for the oneway probe: the v2 wire codec (struct + hmac)
and the loss/reorder/duplicate accounting (unbounded sets, no windows).

Slow and obviously correct; tests compare netprobe._udpio and
netprobe.probes.oneway.analysis against these.
"""
import hashlib
import hmac
import struct
from collections import defaultdict

MAGIC, VERSION, HDR_LEN, TAG_LEN = 0x4E504F57, 2, 64, 32
F_CONTROL, F_AUTH, F_UNSYNC, F_TXTIME = 0x01, 0x02, 0x04, 0x08
HEADER = struct.Struct("!IBBHQQQQIIHHIIi")       # 64 bytes, network byte order
assert HEADER.size == HDR_LEN
FIELDS = ("flags", "port", "session", "start_ns", "seq", "send_ns", "interval", "clock_err_us", "length",
          "index", "count", "tx_follow_up")


def encode(fields, payload=b"", key=b""):
    """A datagram: header, payload, HMAC-SHA256 tag over everything before it when `key`."""
    length = HDR_LEN + len(payload) + (TAG_LEN if key else 0)
    flags = fields["flags"] | (F_AUTH if key else 0)
    head = HEADER.pack(MAGIC, VERSION, flags, fields["port"], fields["session"], fields["start_ns"], fields["seq"],
                       fields["send_ns"], fields["interval"], fields["clock_err_us"], length, 0, fields["index"],
                       fields["count"], fields.get("tx_follow_up", 0) if flags & F_TXTIME else 0)
    body = head + payload
    return body + hmac.new(key, body, hashlib.sha256).digest() if key else body


def decode(data, key=b""):
    """dict of fields, or ("error", offset) naming the first offset found wrong (same order as wire.pxd)."""
    if len(data) < HDR_LEN:
        return ("short", len(data))
    (magic, version, flags, port, session, start_ns, seq, send_ns, interval, clock_err_us, length, res16, index,
     count, follow_up) = HEADER.unpack_from(data)
    if magic != MAGIC:
        return ("magic", 0)
    if version != VERSION:
        return ("version", 4)
    if flags & ~0x0F:
        return ("flags", 5)
    if length != len(data) or (flags & F_AUTH and len(data) < HDR_LEN + TAG_LEN):
        return ("length", 48)
    if res16:
        return ("reserved", 50)
    if follow_up and not flags & F_TXTIME:
        return ("reserved", 60)
    if not key and flags & F_AUTH:
        return ("tag present but no key", 5)
    if key:
        if not flags & F_AUTH:
            return ("tag missing", 5)
        want = hmac.new(key, data[:-TAG_LEN], hashlib.sha256).digest()
        if not hmac.compare_digest(want, data[-TAG_LEN:]):
            return ("tag does not verify", len(data) - TAG_LEN)
    return dict(zip(FIELDS, (flags, port, session, start_ns, seq, send_ns, interval, clock_err_us, length, index,
                             count, follow_up), strict=True))


class ReferenceReceiver:
    """Per (port, interval): distinct sequence numbers received, duplicates, and reordered
    packets (arrived after a higher sequence number of the same port), over unbounded sets."""

    def __init__(self):
        self.seen = defaultdict(set)          # port -> sequence numbers seen
        self.max_seq = {}                     # port -> highest seen
        self.acc = defaultdict(lambda: {"received": 0, "dup": 0, "reordered": 0})

    def packet(self, port, seq, interval):
        a = self.acc[(port, interval)]
        if seq in self.seen[port]:
            a["dup"] += 1
            return
        self.seen[port].add(seq)
        if port in self.max_seq and seq < self.max_seq[port]:
            a["reordered"] += 1
        self.max_seq[port] = max(self.max_seq.get(port, seq), seq)
        a["received"] += 1


class ReferenceSession:
    """One session as the receiver accounts it, over unbounded sets: data packets per
    (port, interval) (ReferenceReceiver's counts), the last control record and the next
    interval's first word (count, base) per (port, interval), and intervals closed in order:
    a packet of a closed interval is counted late and changes no closed record (its
    sequence number is still seen, so a later copy is no new packet)."""

    def __init__(self):
        self.rx = ReferenceReceiver()
        self.last_closed = -1
        self.late = 0
        self.ctl = {}                         # (port, interval) -> (count, next seq)
        self.piggy = {}                       # (port, interval) -> (count, next base)

    def data(self, port, seq, interval, index, prev_count):
        if interval <= self.last_closed:
            self.rx.seen[port].add(seq)
            self.rx.max_seq[port] = max(self.rx.max_seq.get(port, seq), seq)
            self.late += 1
            return
        if interval > 0 and interval - 1 > self.last_closed:
            self.piggy[(port, interval - 1)] = (prev_count, seq - index)
        self.rx.packet(port, seq, interval)

    def control(self, port, interval, count, next_seq):
        if interval <= self.last_closed:
            self.late += 1
            return
        self.ctl[(port, interval)] = (count, next_seq)

    def close_through(self, interval, nports):
        """-> [(interval, [per-port {received, dup, reordered, ctl_count, ctl_next, piggy_count}])]."""
        out = []
        for i in range(self.last_closed + 1, interval + 1):
            ports = []
            for p in range(nports):
                a = self.rx.acc.get((p, i), {"received": 0, "dup": 0, "reordered": 0})
                ctl = self.ctl.get((p, i), (-1, -1))
                ports.append({**a, "ctl_count": ctl[0], "ctl_next": ctl[1],
                              "piggy_count": self.piggy.get((p, i), (-1, -1))[0]})
            out.append((i, ports))
        self.last_closed = max(self.last_closed, interval)
        return out


def account(sent, arrivals):
    """sent: list of (port, seq, interval) in send order; arrivals: indices into `sent`
    (repeats = duplicates, any order). Returns {(port, interval): {expected, received,
    lost, dup, reordered}} for every (port, interval) that sent anything."""
    expected = defaultdict(int)
    for port, _, interval in sent:
        expected[(port, interval)] += 1
    rx = ReferenceReceiver()
    for i in arrivals:
        rx.packet(*sent[i])
    out = {}
    for key, n in expected.items():
        a = rx.acc[key]
        out[key] = {"expected": n, "received": a["received"], "lost": n - a["received"], "dup": a["dup"],
                    "reordered": a["reordered"]}
    return out


def follow_up_delays(arrivals):
    """Two-step delays: arrivals are (port, seq, interval, control, follow_up or None, delay)
    in arrival order. A data packet's delay waits until the next packet of its port with
    another sequence number: a follow-up there for exactly seq + 1 corrects it (delay -
    follow_up), anything else leaves it as stamped; a control record without a follow-up
    changes nothing (the next data packet carries the same seq); what still waits at the end
    (the close) is as stamped. Duplicates change nothing. -> {(port, interval): [(delay, corrected)]}."""
    out = defaultdict(list)
    waiting = {}
    seen = defaultdict(set)
    for port, seq, interval, control, follow_up, delay in arrivals:
        if (not control and seq in seen[port]) or (control and follow_up is None):
            continue
        w = waiting.get(port)
        if w is not None and w[0] != seq:
            fixed = follow_up is not None and seq == w[0] + 1
            out[(port, w[1])].append((w[2] - follow_up if fixed else w[2], fixed))
            del waiting[port]
        if not control:
            seen[port].add(seq)
            waiting[port] = (seq, interval, delay)
    for port, (_, interval, delay) in waiting.items():
        out[(port, interval)].append((delay, False))
    return out


def hist_index(d, sub, top=36):
    """The receiver's signed log-linear histogram bin of `d` ns (udpio.pyx hist_index), in Python."""
    nb = (top - sub + 1) << sub
    v = abs(d)
    if v < (1 << sub):
        i = v
    else:
        m = v.bit_length() - 1
        i = nb - 1 if m >= top else ((m - sub + 1) << sub) + (v >> (m - sub)) - (1 << sub)
    return i if d < 0 else nb + i


def histogram(values, sub):
    """Sparse [[bin, count], ...] of integer ns values, as the receiver reports it."""
    acc = defaultdict(int)
    for v in values:
        acc[hist_index(int(v), sub)] += 1
    return sorted([b, c] for b, c in acc.items())


V1 = struct.Struct("<B7xq21s3xI4xqqI4x")          # UDPing v1: x86-64 layout, little-endian, 72 bytes
assert V1.size == 72


def decode_v1(data):
    """UDPing v1 header -> dict, or (error, offset) in the codec's order of checks."""
    if len(data) < 72:
        return ("short", len(data))
    version, start_s, guid, seq, sec, nsec, size = V1.unpack_from(data)
    if version != 1:
        return ("version", 0)
    if size != len(data):
        return ("size", 64)
    text = guid.split(b"\0", 1)[0]
    if b"\0" not in guid or not text or any(c not in b"0123456789abcdef" for c in text):
        return ("guid", 16)
    if not 0 <= nsec <= 999_999_999:
        return ("tv_nsec", 56)
    return {"start_s": start_s, "guid": text.decode(), "seq": seq, "sent_sec": sec, "sent_nsec": nsec, "size": size}
