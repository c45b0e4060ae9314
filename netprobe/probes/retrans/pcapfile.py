"""Run the compiled pcap analyser (netprobe._pcapread) over capture files and streams.

A file is memory-mapped and handed to the extension in one buffer (a stream
on stdin is read in chunks, records cut between them kept for the next); the
extension writes per-frame flags into a fixed-size chunk of preallocated
arrays, so memory stays bounded whatever the file size. Callers that want
every frame's flags (the oracle tests) pass `keep_frames=True`.
"""
import ipaddress
import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from netprobe.errors import NetprobeError, load_extension

CHUNK = 1 << 16


class PcapError(NetprobeError):
    """A capture file that cannot be read at all (not pcap/pcapng, unsupported link type, I/O)."""


def _ext():
    return load_extension("_pcapread")


def flag_bits():
    """{name: bit} of the per-frame flags (Wireshark's tcp.analysis.* names and np_* for ours)."""
    return dict(_ext().FLAG_BITS)


def dir_counters():
    return tuple(_ext().DIR_COUNTERS)


@dataclass
class Flow:
    """One TCP connection; a is the sender of its first captured packet."""
    a: str
    a_port: int
    b: str
    b_port: int
    first_ns: int
    last_ns: int
    handshake_rtt_ns: int
    ab: dict                 # counters of a->b (names: DIR_COUNTERS)
    ba: dict


@dataclass
class PcapResult:
    path: str
    counters: dict
    flows: list
    error: str = None        # set when the file ended in a bad record (partial result)
    flags: np.ndarray = None       # per frame, uint16 (keep_frames=True)
    flowdir: np.ndarray = None     # per frame, flow*2 + dir, -1 if not analysed TCP
    extra: dict = field(default_factory=dict)


def new_analyser(max_flows=262144, reorder_ns=0):
    return _ext().TcpAnalyser(max_flows=max_flows, reorder_ns=reorder_ns)


def feed(analyser, path, keep_frames=False):
    """Analyse one file with `analyser`; returns (error or None, flags, flowdir)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise PcapError(f"{path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise PcapError(f"{path}: empty file, not a capture")
        try:
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            raise PcapError(f"{path}: cannot map: {exc}") from None
    finally:
        os.close(fd)
    try:
        return _feed_buffer(analyser, path, mm, keep_frames)
    finally:
        mm.close()


def _feed_buffer(analyser, path, buf, keep_frames):
    view = memoryview(buf)
    try:
        try:
            off = analyser.open(view)
        except ValueError as exc:
            raise PcapError(f"{path}: {exc}") from None
        flags = np.zeros(CHUNK, np.uint16)
        flowdir = np.zeros(CHUNK, np.int32)
        kept_f, kept_d = [], []
        while True:
            got = analyser.run(view, off, flags, flowdir)
            off, n = got.offset, got.frames
            if keep_frames and n:
                kept_f.append(flags[:n].copy())
                kept_d.append(flowdir[:n].copy())
            if not got.more:
                break
        error = got.error
    finally:
        view.release()
    if keep_frames:
        f = np.concatenate(kept_f) if kept_f else np.zeros(0, np.uint16)
        d = np.concatenate(kept_d) if kept_d else np.zeros(0, np.int32)
        return error, f, d
    return error, None, None


def flows_of(analyser):
    names = dir_counters()
    out = []
    for _fam, a, ap, b, bp, first, last, rtt, c0, c1 in analyser.flows():
        out.append(Flow(str(ipaddress.ip_address(a)), ap, str(ipaddress.ip_address(b)), bp,
                        first, last, rtt, dict(zip(names, c0, strict=True)), dict(zip(names, c1, strict=True))))
    return out


def analyse_file(path, keep_frames=False, max_flows=262144, reorder_ns=0):
    """One file, one analyser: a PcapResult (error set if the file ended in a bad record)."""
    a = new_analyser(max_flows, reorder_ns)
    error, flags, flowdir = feed(a, path, keep_frames)
    return PcapResult(os.fspath(path), a.counters(), flows_of(a), error, flags, flowdir)


def analyse_stream(f, max_flows=262144, reorder_ns=0, name="-"):
    """A pcap/pcapng byte stream read in chunks from the binary file `f` (a pipe:
    `tcpdump -w - | netprobe pcap -`, or the same over ssh from another host) to its end:
    a PcapResult, with error set if a record was bad or the stream ended inside one."""
    a = new_analyser(max_flows, reorder_ns)
    flags = np.zeros(CHUNK, np.uint16)
    flowdir = np.zeros(CHUNK, np.int32)
    buf = bytearray()
    opened, error = False, None
    read = getattr(f, "read1", f.read)       # what the pipe holds, not a full megabyte
    while error is None:
        chunk = read(1 << 20)
        buf += chunk
        if not opened:
            try:
                del buf[:a.open(bytes(buf))]
            except ValueError as exc:
                if chunk and len(buf) < CHUNK:          # the file header may still be arriving
                    continue
                raise PcapError(f"{name}: {exc}") from None
            opened = True
        while buf:
            got = a.run(buf, 0, flags, flowdir, True)
            del buf[:got.offset]
            error = got.error
            if not got.more:
                break
        if not chunk:
            if buf and error is None:
                error = f"the stream ended inside a record ({len(buf)} bytes left)"
            break
    return PcapResult(name, a.counters(), flows_of(a), error)


def analyse_bytes(data, keep_frames=True, max_flows=262144, reorder_ns=0):
    """The same over an in-memory image (tests, fuzzing)."""
    a = new_analyser(max_flows, reorder_ns)
    error, flags, flowdir = _feed_buffer(a, "<bytes>", data, keep_frames)
    return PcapResult("<bytes>", a.counters(), flows_of(a), error, flags, flowdir)
