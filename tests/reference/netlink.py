"""Pure-Python inet_diag: message encoder (test vectors), decoder and dump (oracles, bench peer).

Independent of netprobe._nldiag: struct module only, written from the uapi
headers. decode() follows the same counting rules the extension documents,
so the two can be compared on arbitrary bytes.
"""
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_MULTI, NLM_F_DUMP_INTR = 1, 0x300, 2, 0x10
INET_DIAG_INFO, INET_DIAG_VEGASINFO, INET_DIAG_CONG, INET_DIAG_SKMEMINFO, INET_DIAG_BBRINFO = 2, 3, 4, 7, 16
TCP_INFO_SIZE = 280
SKMEM = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc", "wmem_queued", "optmem", "backlog", "drops")
# (name, struct format, offset) of struct tcp_info fields the tests compare
TCPI = (("tcpi_state", "B", 0), ("tcpi_options", "B", 5), ("tcpi_snd_mss", "I", 16), ("tcpi_rtt", "I", 68),
        ("tcpi_rttvar", "I", 72), ("tcpi_snd_cwnd", "I", 80), ("tcpi_total_retrans", "I", 100),
        ("tcpi_pacing_rate", "Q", 104), ("tcpi_bytes_acked", "Q", 120), ("tcpi_min_rtt", "I", 148),
        ("tcpi_delivered_ce", "I", 196), ("tcpi_rcv_ooopack", "I", 224), ("tcpi_received_ce", "I", 248))


def _align(n):
    return (n + 3) & ~3


def attr(atype, payload):
    """One rtattr, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def nlmsg(mtype, payload, seq, flags=NLM_F_MULTI):
    return struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, 0) + payload + \
        b"\0" * (_align(len(payload)) - len(payload))


def encode_sock(sock, seq=1, flags=NLM_F_MULTI):
    """One SOCK_DIAG_BY_FAMILY message from a dict (keys as decode() returns them)."""
    fam = sock["family"]
    alen = 4 if fam == socket.AF_INET else 16
    src = sock["src"][:alen].ljust(16, b"\0")
    dst = sock["dst"][:alen].ljust(16, b"\0")
    cookie = sock["cookie"]
    msg = struct.pack("=BBBB", fam, sock.get("state", 1), sock.get("timer", 0), sock.get("retrans", 0))
    msg += struct.pack(">HH", sock["sport"], sock["dport"]) + src + dst
    msg += struct.pack("=III", sock.get("if", 0), cookie & 0xffffffff, cookie >> 32)
    msg += struct.pack("=IIIII", sock.get("expires", 0), sock.get("rqueue", 0), sock.get("wqueue", 0),
                       sock.get("uid", 0), sock.get("inode", 0))
    if sock.get("info") is not None:
        msg += attr(INET_DIAG_INFO, sock["info"])
    if sock.get("cong"):
        msg += attr(INET_DIAG_CONG, sock["cong"].encode() + b"\0")
    if sock.get("bbr") is not None:
        bw, min_rtt, pg, cg = sock["bbr"]
        msg += attr(INET_DIAG_BBRINFO, struct.pack("=IIIII", bw & 0xffffffff, bw >> 32, min_rtt, pg, cg))
    if sock.get("skmem") is not None:
        msg += attr(INET_DIAG_SKMEMINFO, struct.pack(f"={len(sock['skmem'])}I", *sock["skmem"]))
    return nlmsg(SOCK_DIAG_BY_FAMILY, msg, seq, flags)


def encode_done(seq=1, value=0):
    return nlmsg(NLMSG_DONE, struct.pack("=i", value), seq)


def encode_error(seq, err):
    return nlmsg(NLMSG_ERROR, struct.pack("=i", -err) + bytes(16), seq, 0)


def tcp_info_bytes(**fields):
    """A 280-byte struct tcp_info with the named TCPI fields set."""
    raw = bytearray(TCP_INFO_SIZE)
    for name, fmt, off in TCPI:
        if name in fields:
            struct.pack_into("=" + fmt, raw, off, fields[name])
    return bytes(raw)


def _parse_attrs(p, out):
    off = 0
    while len(p) - off >= 4:
        alen, atype = struct.unpack_from("=HH", p, off)
        atype &= 0x3fff
        if alen < 4 or alen > len(p) - off:
            return False
        body = p[off + 4: off + alen]
        if atype == INET_DIAG_INFO:
            out["info_len"] = min(len(body), 0xffff)
            info = body[:TCP_INFO_SIZE].ljust(TCP_INFO_SIZE, b"\0")
            out["tcp_info"] = info                    # the 280 bytes a record holds
            for name, fmt, o in TCPI:
                out[name] = struct.unpack_from("=" + fmt, info, o)[0]
        elif atype == INET_DIAG_CONG:
            out["cong"] = body[:15].split(b"\0", 1)[0].decode("latin-1")
        elif atype == INET_DIAG_BBRINFO:
            if len(body) < 20:
                return False
            lo, hi, min_rtt, pg, cg = struct.unpack_from("=IIIII", body)
            out["bbr"] = (hi << 32 | lo, min_rtt, pg, cg)
        elif atype == INET_DIAG_SKMEMINFO:
            k = min(len(body) // 4, len(SKMEM))
            out["skmem"] = struct.unpack_from(f"={k}I", body) + (0,) * (len(SKMEM) - k)
        off += _align(alen)
    return True


def decode(buf, seq=1):
    """(sockets, counters, done) for one recv() buffer: the extension's rules, in Python."""
    c = dict.fromkeys(("messages", "malformed", "truncated", "no_info", "dump_intr", "foreign", "error"), 0)
    socks = []
    off, n = 0, len(buf)
    while off < n:
        if n - off < 16:
            c["truncated"] += 1
            return socks, c, False
        mlen, mtype, mflags, mseq, _ = struct.unpack_from("=IHHII", buf, off)
        if mlen < 16 or mlen > n - off:
            c["malformed"] += 1
            return socks, c, False
        c["messages"] += 1
        body = buf[off + 16: off + mlen]
        if mseq != seq:
            c["foreign"] += 1
        else:
            if mflags & NLM_F_DUMP_INTR:
                c["dump_intr"] += 1
            if mtype in (NLMSG_DONE, NLMSG_ERROR):
                if len(body) >= 4:
                    v = struct.unpack_from("=i", body)[0]
                    if v < 0:
                        c["error"] = -v
                elif mtype == NLMSG_ERROR:
                    c["malformed"] += 1
                return socks, c, True
            if mtype == SOCK_DIAG_BY_FAMILY:
                s = _decode_sock(body, c)
                if s is not None:
                    socks.append(s)
            else:
                c["foreign"] += 1
        off += _align(mlen)
    return socks, c, False


def _decode_sock(body, c):
    if len(body) < 72:
        c["malformed"] += 1
        return None
    fam, state, timer, retrans = struct.unpack_from("=BBBB", body)
    if fam not in (socket.AF_INET, socket.AF_INET6):
        c["malformed"] += 1
        return None
    sport, dport = struct.unpack_from(">HH", body, 4)
    alen = 4 if fam == socket.AF_INET else 16
    ifindex, ck0, ck1, expires, rqueue, wqueue, uid, inode = struct.unpack_from("=8I", body, 40)
    s = {"family": fam, "state": state, "timer": timer, "retrans": retrans, "sport": sport, "dport": dport,
         "src": body[8:8 + alen].ljust(16, b"\0"), "dst": body[24:24 + alen].ljust(16, b"\0"), "if": ifindex,
         "cookie": ck1 << 32 | ck0, "expires": expires, "rqueue": rqueue, "wqueue": wqueue, "uid": uid,
         "inode": inode, "info_len": 0}
    if not _parse_attrs(body[72:], s):
        c["malformed"] += 1
        return None
    if s["info_len"] == 0:
        c["no_info"] += 1
    return s


def dump(families=(socket.AF_INET, socket.AF_INET6), states=1 << 1, ext=1 << (INET_DIAG_INFO - 1), bytecode=b""):
    """A whole dump in plain Python: every socket as a dict (the bench's pure-Python peer)."""
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as s:
        s.settimeout(2.0)
        buf = bytearray(1 << 16)
        for seq, fam in enumerate(families, 1):
            body = struct.pack("=BBBBI", fam, socket.IPPROTO_TCP, ext, 0, states) + bytes(48)
            if bytecode:
                body += attr(1, bytecode)
            s.send(struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                   + body)
            while True:
                n = s.recv_into(buf)
                socks, c, done = decode(memoryview(buf)[:n].tobytes(), seq)
                out += socks
                if c["error"]:
                    raise OSError(c["error"], "inet_diag dump failed")
                if done:
                    break
    return out


def matches(sock, sport=(), dport=(), src=(), dst=()):
    """The flows filter's meaning, in Python: (any sport range) and (any dport range) and (any src
    prefix) and (any dst prefix); an IPv4 prefix also matches v4-mapped IPv6 addresses."""
    import ipaddress

    def in_any(raw, nets):
        if sock["family"] == socket.AF_INET:
            v4, v6 = ipaddress.IPv4Address(raw[:4]), None
        else:
            v6 = ipaddress.IPv6Address(raw[:16])
            v4 = v6.ipv4_mapped
        for n in (ipaddress.ip_network(x, strict=False) for x in nets):
            a = v4 if n.version == 4 else v6      # a v6 prefix sees a mapped address as IPv6
            if a is not None and a in n:
                return True
        return False
    return ((not sport or any(lo <= sock["sport"] <= hi for lo, hi in sport))
            and (not dport or any(lo <= sock["dport"] <= hi for lo, hi in dport))
            and (not src or in_any(sock["src"], src))
            and (not dst or in_any(sock["dst"], dst)))
