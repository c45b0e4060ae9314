"""Kernel-side socket filters: port lists and address prefixes compiled to
inet_diag bytecode (INET_DIAG_REQ_BYTECODE), so sockets that do not match never
cross into user space.

The filter is (any sport range) AND (any dport range) AND (any src prefix)
AND (any dst prefix) AND (either port in any either_port range); an empty
list does not constrain. sport/src are the
local end, dport/dst the remote end, as in ss(8) and cgmon.

Bytecode (linux/inet_diag.h, run by inet_diag_bc_run): a list of 4-byte ops
{u8 code; u8 yes; u16 no}. After a test the program moves `yes` bytes on if
it held, else `no` bytes; JMP always moves `no`. Reaching exactly the end
accepts; jumping to end + 4 rejects. Port tests carry the port in the `no`
of a second op; address tests carry struct inet_diag_hostcond
{u8 family; u8 prefix_len; int port (-1: any); __be32 addr[]}.
An IPv4 prefix also matches v4-mapped IPv6 sockets (the kernel does that).
"""
import ipaddress
import socket
import struct

import numpy as np

NOP, JMP, S_GE, S_LE, D_GE, D_LE, AUTO, S_COND, D_COND, DEV_COND, MARK_COND, S_EQ, D_EQ = range(13)
MAX_BYTECODE = 0xffff - 4            # what one rtattr can carry
_REJECT, _END = "reject", "end"


def parse_ports(text):
    """`80,443,2000-3000` -> ((80, 80), (443, 443), (2000, 3000)); ValueError naming the bad part."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a port list (example: 80,443,2000-3000)")
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f'"{part}" is not a port or a range (example: 80,443,2000-3000)') from None
        if not (0 <= a <= 65535 and 0 <= b <= 65535) or a > b:
            raise ValueError(f'"{part}" is not a port range within 0-65535 (low-high)')
        out.append((a, b))
    return tuple(out)


def _op(code, yes, no):
    return struct.pack("=BBH", code, yes, no)


def _port_tests(ranges, eq, ge, le):
    """One alternative per range: [test, ...] where a test is (code, payload)."""
    alts = []
    for lo, hi in ranges:
        if lo == hi:
            alts.append([(eq, _op(NOP, 0, lo))])
        else:
            alts.append([(ge, _op(NOP, 0, lo)), (le, _op(NOP, 0, hi))])
    return alts


def _prefix_tests(prefixes, code):
    alts = []
    for net in prefixes:
        net = ipaddress.ip_network(net, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        cond = struct.pack("=BBxxi", family, net.prefixlen, -1) + net.network_address.packed
        alts.append([(code, cond)])
    return alts


def compile_filter(sport=(), dport=(), src=(), dst=(), either_port=()):
    """Bytecode for the filter (b"" when nothing constrains); ValueError if too long.
    either_port: ranges the local or the remote port must be in (ANDed with the rest)."""
    either = _port_tests(either_port, S_EQ, S_GE, S_LE) + _port_tests(either_port, D_EQ, D_GE, D_LE)
    groups = [g for g in (_port_tests(sport, S_EQ, S_GE, S_LE), _port_tests(dport, D_EQ, D_GE, D_LE),
                          _prefix_tests(src, S_COND), _prefix_tests(dst, D_COND), either) if g]
    if not groups:
        return b""
    # instructions: (code, payload, fail label); labels are ("alt", g, i), ("grp", g), _END, _REJECT
    prog, labels = [], {}
    for g, alts in enumerate(groups):
        for i, tests in enumerate(alts):
            labels[("alt", g, i)] = len(prog)
            fail = ("alt", g, i + 1) if i + 1 < len(alts) else _REJECT
            for code, payload in tests:
                prog.append((code, payload, fail))
            if i + 1 < len(alts):
                prog.append((JMP, b"", ("grp", g)))
        labels[("grp", g)] = len(prog)
    pos, at = 0, []
    for _, payload, _ in prog:
        at.append(pos)
        pos += 4 + len(payload)
    total = pos
    if total > MAX_BYTECODE:
        raise ValueError(f"the filter compiles to {total} bytes of bytecode (at most {MAX_BYTECODE}): "
                         f"use fewer ports or prefixes, or ranges")

    def where(label):
        if label == _REJECT:
            return total + 4
        index = labels[label]
        return total if index == len(prog) else at[index]

    out = bytearray()
    for (code, payload, fail), p in zip(prog, at, strict=True):
        out += _op(code, 4 if code == JMP else 4 + len(payload), where(fail) - p) + payload
    return bytes(out)


def ss_expression(sport=(), dport=(), src=(), dst=()):
    """The same filter in ss(8) syntax (for logs, and as the tests' oracle input)."""
    def ports(name, ranges):
        alts = [f"{name} = :{lo}" if lo == hi else f"( {name} >= :{lo} and {name} <= :{hi} )" for lo, hi in ranges]
        return "( " + " or ".join(alts) + " )"

    def nets(name, prefixes):
        alts = []
        for n in prefixes:
            n = ipaddress.ip_network(n, strict=False)
            alts.append(f"{name} {n.network_address}/{n.prefixlen}")     # ss takes IPv6 unbracketed here
        return "( " + " or ".join(alts) + " )"
    parts = [ports("sport", sport) if sport else "", ports("dport", dport) if dport else "",
             nets("src", src) if src else "", nets("dst", dst) if dst else ""]
    return " and ".join(p for p in parts if p)


class Matcher:
    """compile_filter's filter evaluated in user space over RECORD_DTYPE records, for sockets the
    kernel did not filter (its destroy messages): the same ports and prefixes, with the kernel's
    rules (inet_diag_bc_run): an IPv4 prefix matches IPv4 sockets and v4-mapped IPv6 ones, an IPv6
    prefix only IPv6 ones. __call__(records) -> bool array."""

    def __init__(self, sport=(), dport=(), src=(), dst=(), either_port=()):
        self.sport, self.dport, self.either = tuple(sport), tuple(dport), tuple(either_port)
        self.src = [ipaddress.ip_network(n, strict=False) for n in src]
        self.dst = [ipaddress.ip_network(n, strict=False) for n in dst]

    @staticmethod
    def _ports(ports, ranges):
        hit = np.zeros(len(ports), bool)
        for lo, hi in ranges:
            hit |= (ports >= lo) & (ports <= hi)
        return hit

    @staticmethod
    def _prefixes(family, addr, nets):
        """addr: (n, 16) uint8 (IPv4 in the first 4 bytes)."""
        mapped = (family == socket.AF_INET6) & ~addr[:, :10].any(axis=1) & (addr[:, 10] == 0xff) & (addr[:, 11] == 0xff)
        v4 = np.where((family == socket.AF_INET)[:, None], addr[:, :4], addr[:, 12:16])
        hit = np.zeros(len(addr), bool)
        for net in nets:
            mask = np.frombuffer(net.netmask.packed, np.uint8)
            want = np.frombuffer(net.network_address.packed, np.uint8)
            if net.version == 4:
                hit |= ((family == socket.AF_INET) | mapped) & ((v4 & mask) == want).all(axis=1)
            else:
                hit |= (family == socket.AF_INET6) & ((addr & mask) == want).all(axis=1)
        return hit

    def __call__(self, records):
        ok = np.ones(len(records), bool)
        sport, dport = records["idiag_sport"], records["idiag_dport"]
        if self.sport:
            ok &= self._ports(sport, self.sport)
        if self.dport:
            ok &= self._ports(dport, self.dport)
        if self.either:
            ok &= self._ports(sport, self.either) | self._ports(dport, self.either)
        if self.src or self.dst:
            family = records["idiag_family"]
            for nets, field in ((self.src, "idiag_src"), (self.dst, "idiag_dst")):
                if nets:
                    addr = np.frombuffer(np.ascontiguousarray(records[field]).tobytes(), np.uint8).reshape(-1, 16)
                    ok &= self._prefixes(family, addr, nets)
        return ok
