"""Run inside a private network namespace (`unshare -n python -m tests.reference.flows_oracle CMD`):
builds loopback sockets there, so nothing else on the host is dumped, and prints one JSON object
comparing netprobe._nldiag with ss(8) at the same moment.

  filter N   N sockets (IPv4, IPv6, v4-mapped IPv6; several local addresses and ports); for each
             filter case: the sockets our kernel filter returns and the sockets `ss -tnH state
             established EXPR` returns for the same expression
  fields     flows that sent data through 3 % random loss, then went idle: our TCP_INFO fields
             read just before and after `ss -tin`, and ss's values
"""
import errno
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np

from netprobe.errors import load_extension
from netprobe.probes.flows import filters

nl = load_extension("_nldiag")
SERVER_PORTS = (80, 443, 2000, 2500, 3000, 3001, 8080)
V4_ADDRS = ("127.0.0.1", "127.0.0.2", "127.1.0.9", "127.200.3.4")
V6_ADDRS = ("::1", "2001:db8::1", "2001:db8:1::7", "fd00::5")
CASES = [
    {"sport": "80,443"},
    {"dport": "2000-3000"},
    {"sport": "80,443", "dport": "2000-3000"},
    {"sport": "2000-3000,8080", "dst": ["127.0.0.0/16"]},
    {"dst": ["2001:db8::/32"]},
    {"src": ["127.1.0.0/16", "fd00::/8"]},
    {"src": ["127.0.0.2/32"], "dport": "30000-65535"},
    {"dst": ["127.0.0.0/8"]},                 # also the v4-mapped IPv6 sockets
    {"sport": "1-79,81-442,444-2400"},
    {"dport": "443", "src": ["::/0"]},
]


def sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def setup_lo():
    sh("ip", "link", "set", "lo", "up")
    for a in V6_ADDRS[1:]:
        sh("ip", "-6", "addr", "add", f"{a}/128", "dev", "lo", "nodad")
    deadline = time.monotonic() + 5          # the new addresses' local routes appear a moment later
    for a in V6_ADDRS + V4_ADDRS:
        fam = socket.AF_INET6 if ":" in a else socket.AF_INET
        while True:
            with socket.socket(fam, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((a, 9))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)


def open_sockets(n):
    """About n sockets (n/2 connections) across families, addresses and ports."""
    rng = random.Random(7)
    listeners = []
    for port in SERVER_PORTS:
        ls4 = socket.socket(socket.AF_INET6)                       # dual stack: v4 clients become v4-mapped
        ls4.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ls4.bind(("::", port))
        ls4.listen(1024)
        listeners.append(ls4)
    conns = []
    for i in range(n // 2):
        port = rng.choice(SERVER_PORTS)
        if i % 3 == 0:
            fam, addr = socket.AF_INET, rng.choice(V4_ADDRS)
        else:
            fam, addr = socket.AF_INET6, rng.choice(V6_ADDRS)
        c = socket.socket(fam)
        if i % 5 == 0:                                             # some fixed client ports, inside the ranges
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind((addr, 2001 + i))
        for attempt in range(100):     # a fresh namespace's IPv6 routes can flap for a moment (ENETUNREACH)
            try:
                c.connect((addr, port))
                break
            except OSError as exc:
                if exc.errno != errno.ENETUNREACH or attempt == 99:
                    raise
                time.sleep(0.01)
        conns.append(c)
    accepted = []
    for ls in listeners:
        ls.setblocking(False)
        while True:
            try:
                accepted.append(ls.accept()[0])
            except BlockingIOError:
                break
    return listeners, conns + accepted


def _norm(addr):
    return str(ipaddress.ip_address(addr.strip("[]").split("%")[0]))


def ss_set(expr):
    out = sh("ss", "-tnH", "state", "established", *([expr] if expr else []))
    got = set()
    for line in out.splitlines():
        cols = line.split()
        local, peer = cols[-2], cols[-1]
        la, lp = local.rsplit(":", 1)
        pa, pp = peer.rsplit(":", 1)
        got.add((_norm(la), int(lp), _norm(pa), int(pp)))
    return got


def our_set(recs):
    got = set()
    for r in recs:
        alen = 4 if r["idiag_family"] == socket.AF_INET else 16
        src = str(ipaddress.ip_address(bytes(r["idiag_src"])[:alen]))
        dst = str(ipaddress.ip_address(bytes(r["idiag_dst"])[:alen]))
        got.add((src, int(r["idiag_sport"]), dst, int(r["idiag_dport"])))
    return got


def dump(bytecode=b"", ext=None):
    d = nl.InetDiagDumper(bytecode=bytecode, ext=nl.EXT_INFO if ext is None else ext)
    out = np.zeros(8192, dtype=nl.RECORD_DTYPE)
    got = d.dump(out)
    assert got.overflow == 0, got
    return out[:got.sockets].copy(), got


def cmd_filter(n):
    setup_lo()
    _, socks = open_sockets(n)
    time.sleep(0.2)
    everything, _ = dump()
    cases = []
    for case in CASES:
        args = {"sport": filters.parse_ports(case.get("sport", "")),
                "dport": filters.parse_ports(case.get("dport", "")),
                "src": case.get("src", ()), "dst": case.get("dst", ())}
        recs, got = dump(filters.compile_filter(**args))
        expr = filters.ss_expression(**args)
        cases.append({"case": case, "expr": expr, "ours": sorted(our_set(recs)), "ss": sorted(ss_set(expr)),
                      "bytes": got.bytes})
    print(json.dumps({"sockets": len(socks), "dumped": len(everything),
                      "families": sorted({int(f) for f in everything["idiag_family"]}), "cases": cases}))


def cmd_fields():
    setup_lo()
    port = 5201
    sh("iptables", "-A", "INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-m", "statistic",
       "--mode", "random", "--probability", "0.03", "-j", "DROP")
    ls = socket.create_server(("127.0.0.1", port))
    senders, receivers = [], []
    for i in range(6):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        c.connect(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic" if i % 2 else b"bbr")
        senders.append(c)
        receivers.append(ls.accept()[0])
    for i, (c, a) in enumerate(zip(senders, receivers, strict=True)):
        total = (i + 1) * 400_000
        payload = os.urandom(65536)
        sent = got = 0
        a.setblocking(False)
        end = time.monotonic() + 10
        while got < total and time.monotonic() < end:
            if sent < total:
                sent += c.send(payload[: min(len(payload), total - sent)])
            try:
                got += len(a.recv(1 << 20))
            except BlockingIOError:
                time.sleep(0.0005)
    time.sleep(1.0)                           # idle: every counter settles (retransmits end, ACKs in)
    bc = filters.compile_filter(dport=((port, port),))
    before, _ = dump(bc)
    theirs = _ss_fields_for_dport(port)
    after, _ = dump(bc)

    def rows(recs):
        return {f"{_norm(str(ipaddress.ip_address(bytes(r['idiag_src'])[:4])))} {r['idiag_sport']} "
                f"{r['idiag_dport']}": {"rtt_us": int(r["tcpi_rtt"]), "cwnd": int(r["tcpi_snd_cwnd"]),
                                         "total_retrans": int(r["tcpi_total_retrans"]),
                                         "bytes_acked": int(r["tcpi_bytes_acked"])} for r in recs}
    print(json.dumps({"before": rows(before), "after": rows(after), "ss": theirs}))


def _ss_fields_for_dport(port):
    out = sh("ss", "-tinH", "state", "established", f"( dport = :{port} )")
    rows = {}
    lines = out.splitlines()
    for head, info in zip(lines[0::2], lines[1::2], strict=False):
        cols = head.split()
        la, lp = cols[-2].rsplit(":", 1)
        key = f"{_norm(la)} {int(lp)} {int(cols[-1].rsplit(':', 1)[1])}"
        f = {"total_retrans": 0, "bytes_acked": 0}
        for tok in info.split():
            k, _, v = tok.partition(":")
            if k == "rtt":
                f["rtt_ms"] = float(v.split("/")[0])
            elif k in ("cwnd", "bytes_acked"):
                f[k] = int(v)
            elif k == "retrans":
                f["total_retrans"] = int(v.split("/")[1])
        rows[key] = f
    return rows


if __name__ == "__main__":
    if sys.argv[1] == "filter":
        cmd_filter(int(sys.argv[2]))
    else:
        cmd_fields()
