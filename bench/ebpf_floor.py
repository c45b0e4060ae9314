"""The floor of a stateful in-kernel capture filter, for bench.retrans's live-cost rows.

The remedy proposed for the capture's cost when the host receives at line rate
is an eBPF socket filter that keeps per-flow state (each flow's highest
sequence) and drops in-order new data in the kernel. This is its cheapest
form: for every arriving IPv4 TCP packet, one lookup in a hash map keyed by
the 4-tuple, then the sequence number stored (or a new entry made), and the
packet kept by nobody. What it costs is what any such filter costs before it
keeps anything.

`python -m bench.ebpf_floor IFACE` (root, in the namespace that owns IFACE):
a packet socket on IFACE that is not offered outgoing packets, as
`--capture-direction in`; prints "up" when attached, runs until SIGTERM.
The program is eBPF bytecode assembled here and loaded with the bpf() system
call, so the bench needs no compiler.
"""
import ctypes
import signal
import socket
import struct
import sys
import threading

NR_BPF = 321                                    # x86_64
BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
BPF_MAP_TYPE_HASH, BPF_PROG_TYPE_SOCKET_FILTER = 1, 1
FN_MAP_LOOKUP_ELEM, FN_MAP_UPDATE_ELEM = 1, 2
SO_ATTACH_BPF, SOL_PACKET, PACKET_IGNORE_OUTGOING, ETH_P_ALL = 50, 263, 23, 0x0003
R0, R1, R2, R3, R4, R6, R7, FP = 0, 1, 2, 3, 4, 6, 7, 10
W, B, DW = 0x00, 0x10, 0x18                     # size codes: 32, 8, 64 bits

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = _libc.syscall(NR_BPF, cmd, buf, 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return fd


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def ld_abs(size_code, offset):                  # R0 = the packet's bytes at offset, in host order
    return _insn(0x00 | size_code | 0x20, imm=offset)


def mov_reg(dst, src):
    return _insn(0xbf, dst, src)


def mov_imm(dst, imm):
    return _insn(0xb7, dst, imm=imm)


def add_imm(dst, imm):
    return _insn(0x07, dst, imm=imm)


def stx(size_code, dst, src, off):               # *(size *)(dst + off) = src
    return _insn(0x63 | size_code, dst, src, off)


def jne_imm(dst, imm, skip):
    return _insn(0x55, dst, off=skip, imm=imm)


def ja(skip):
    return _insn(0x05, off=skip)


def call(fn):
    return _insn(0x85, imm=fn)


def ld_map_fd(dst, fd):                         # two slots: 64-bit immediate, the map by fd
    return _insn(0x18, dst, 1, imm=fd) + _insn(0)


def _slots(insns):
    return sum(len(i) for i in insns) // 8


def program(map_fd):
    """Key (saddr, daddr, ports, 0) on the stack at fp-16; seq at fp-24 for a new entry."""
    drop = [mov_imm(R0, 0), _insn(0x95)]
    insert = [stx(DW, FP, R7, -24), ld_map_fd(R1, map_fd), mov_reg(R2, FP), add_imm(R2, -16),
              mov_reg(R3, FP), add_imm(R3, -24), mov_imm(R4, 0), call(FN_MAP_UPDATE_ELEM)]
    found = [stx(DW, R0, R7, 0)]
    body = [ld_abs(W, 12), stx(W, FP, R0, -16), ld_abs(W, 16), stx(W, FP, R0, -12),
            ld_abs(W, 20), stx(W, FP, R0, -8), mov_imm(R0, 0), stx(W, FP, R0, -4),   # ports: IHL 5
            ld_abs(W, 24), mov_reg(R7, R0),
            ld_map_fd(R1, map_fd), mov_reg(R2, FP), add_imm(R2, -16), call(FN_MAP_LOOKUP_ELEM),
            jne_imm(R0, 0, _slots(insert) + 1)] + insert + [ja(_slots(found))] + found
    head = [mov_reg(R6, R1), ld_abs(B, 9), jne_imm(R0, 6, _slots(body))]            # TCP only
    return b"".join(head + body + drop)


def attach(iface):
    """The packet socket with the filter attached and bound to iface; returns it."""
    map_fd = _bpf(BPF_MAP_CREATE, struct.pack("<IIIII", BPF_MAP_TYPE_HASH, 16, 8, 65536, 0))
    code = ctypes.create_string_buffer(program(map_fd))
    licence, log = ctypes.create_string_buffer(b"GPL"), ctypes.create_string_buffer(1 << 16)
    try:
        prog_fd = _bpf(BPF_PROG_LOAD, struct.pack("<IIQQIIQ", BPF_PROG_TYPE_SOCKET_FILTER, (len(code) - 1) // 8,
                                                  ctypes.addressof(code), ctypes.addressof(licence), 1, len(log),
                                                  ctypes.addressof(log)))
    except OSError as exc:
        raise OSError(exc.errno, f"eBPF program refused: {log.value.decode(errors='replace').strip()}") from None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)       # protocol 0: nothing queued yet
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((iface, ETH_P_ALL))
    return sock


if __name__ == "__main__":
    sock = attach(sys.argv[1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("up", flush=True)
    stop.wait(120)
