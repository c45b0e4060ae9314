"""Run the compiled pcap analyser (netprobe._pcapread) over capture files and streams.

Files and streams alike are read in chunks into one buffer (a record cut
between reads is kept for the next), never memory-mapped: a file truncated
while it is read just ends early, where a mapping would die of SIGBUS. Only
regular files are read, opened O_NONBLOCK so that a FIFO cannot block the
open (and with follow=False, O_NOFOLLOW: `--watch` never follows a symlink).
The extension writes per-frame flags into a fixed-size chunk of preallocated
arrays, so memory stays bounded whatever the file size. Callers that want
every frame's flags (the oracle tests) pass `keep_frames=True`.
"""
import errno
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field

import numpy as np

from netprobe.errors import NetprobeError, load_extension

CHUNK = 1 << 16
READ_SIZE = 1 << 20          # bytes per read
PAGE = 4096


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


def open_regular(path, follow=True):
    """A binary reader of the regular file `path`; PcapError (one line) for anything else:
    a FIFO or device (never blocks), a directory, or with follow=False a symlink."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "a symbolic link (not followed)" if exc.errno == errno.ELOOP and not follow else exc.strerror
        raise PcapError(f"{path}: {why}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a special file"
        raise PcapError(f"{path}: {kind}, not a regular capture file")
    return open(fd, "rb", buffering=0)


def feed(analyser, path, keep_frames=False, follow=True, read_size=READ_SIZE):
    """Analyse one file with `analyser`; returns (error or None, flags, flowdir)."""
    with open_regular(path, follow) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise PcapError(f"{path}: empty file, not a capture")
        got, ended = 0, False

        def readinto(b):
            nonlocal got, ended
            n = f.readinto(b)
            got += n or 0
            ended = not n
            return n
        try:
            error, flags, flowdir = _feed_reader(analyser, path, readinto, keep_frames, False, read_size)
        except OSError as exc:
            raise PcapError(f"{path}: {exc.strerror or exc}") from None
    if ended and got < size:        # truncated under us: what was read is analysed, and said so
        error = f"the file shrank while it was read ({got} of {size} bytes)"
    return error, flags, flowdir


def _file_offsets(message, base):
    """The extension's error names offsets in the buffer it was given; say them in the file."""
    return re.sub(r"offset (\d+)", lambda m: f"offset {int(m.group(1)) + base}", message) if base else message


def _aligned(n):
    """n bytes (uint8 array) starting on a page boundary."""
    raw = np.empty(n + PAGE, np.uint8)
    skip = -raw.ctypes.data % PAGE
    return raw[skip:skip + n]


def _run(analyser, view, off, flags, flowdir, stream, kept):
    """analyser.run from off until it stops; the last Chunk. Each call's per-frame
    flags and flowdir are appended to `kept` (a list) unless it is None."""
    while True:
        got = analyser.run(view, off, flags, flowdir, stream)
        off = got.offset
        if kept is not None and got.frames:
            kept.append((flags[:got.frames].copy(), flowdir[:got.frames].copy()))
        if not got.more:
            return got


def _joined(kept):
    """(flags, flowdir) of all frames from _run's `kept`; (None, None) if not kept."""
    if kept is None:
        return None, None
    if not kept:
        return np.zeros(0, np.uint16), np.zeros(0, np.int32)
    return np.concatenate([f for f, _ in kept]), np.concatenate([d for _, d in kept])


def _feed_reader(analyser, name, readinto, keep_frames, stream, read_size=READ_SIZE):
    """Read with `readinto` to the end, analysing as the bytes come: (error, flags, flowdir).
    At the end, a record cut short is the extension's error for a file (stream=False),
    "the stream ended inside a record" for a stream.

    Every read lands page-aligned at buf[head:] (the kernel copies into an aligned
    buffer markedly faster); the bytes not yet analysed, a record cut between reads,
    are moved to just before head, which grows only for a record longer than it."""
    head = CHUNK
    buf = _aligned(head + read_size)
    start = end = head                 # buf[start:end]: bytes held, buf[start] at file offset base
    base = 0
    opened, error = False, None
    flags = np.zeros(CHUNK, np.uint16)
    flowdir = np.zeros(CHUNK, np.int32)
    kept = [] if keep_frames else None
    while error is None:
        n = readinto(buf[head:])
        end += n or 0
        eof = not n
        view = buf[start:end]
        off = 0
        if not opened:
            try:
                off = analyser.open(view)
            except ValueError as exc:
                if eof or end - start >= CHUNK:
                    raise PcapError(f"{name}: {exc}") from None
                view = None                             # the file header may still be arriving
            opened = view is not None
        if view is not None:
            got = _run(analyser, view, off, flags, flowdir, stream or not eof, kept)
            off = got.offset
            if got.error:
                error = _file_offsets(got.error, base)
            elif eof:
                if stream and off < end - start:
                    error = f"the stream ended inside a record ({end - start - off} bytes left)"
                break
        left = end - start - off                        # keep the unfinished record for the next read
        if left > head:
            head = -(-left // PAGE) * PAGE
            grown = _aligned(head + read_size)
            grown[head - left:head] = buf[end - left:end]
            buf = grown
        else:
            buf[head - left:head] = buf[end - left:end]
        base, start, end = base + off, head - left, head
    return (error, *_joined(kept))


def _feed_buffer(analyser, path, buf, keep_frames):
    view = memoryview(buf)
    try:
        try:
            off = analyser.open(view)
        except ValueError as exc:
            raise PcapError(f"{path}: {exc}") from None
        flags = np.zeros(CHUNK, np.uint16)
        flowdir = np.zeros(CHUNK, np.int32)
        kept = [] if keep_frames else None
        error = _run(analyser, view, off, flags, flowdir, False, kept).error
    finally:
        view.release()
    return (error, *_joined(kept))


def flows_of(analyser):
    names = dir_counters()
    out = []
    for _fam, a, ap, b, bp, first, last, rtt, c0, c1 in analyser.flows():
        out.append(Flow(str(ipaddress.ip_address(a)), ap, str(ipaddress.ip_address(b)), bp,
                        first, last, rtt, dict(zip(names, c0, strict=True)), dict(zip(names, c1, strict=True))))
    return out


def analyse_file(path, keep_frames=False, max_flows=262144, reorder_ns=0, follow=True, read_size=READ_SIZE):
    """One file, one analyser: a PcapResult (error set if the file ended in a bad record)."""
    a = new_analyser(max_flows, reorder_ns)
    error, flags, flowdir = feed(a, path, keep_frames, follow, read_size)
    return PcapResult(os.fspath(path), a.counters(), flows_of(a), error, flags, flowdir)


def analyse_stream(f, max_flows=262144, reorder_ns=0, name="-"):
    """A pcap/pcapng byte stream read in chunks from the binary file `f` (a pipe:
    `tcpdump -w - | netprobe pcap -`, or the same over ssh from another host) to its end:
    a PcapResult, with error set if a record was bad or the stream ended inside one."""
    a = new_analyser(max_flows, reorder_ns)
    readinto = getattr(f, "readinto1", f.readinto)       # what the pipe holds, not a full megabyte
    error, _, _ = _feed_reader(a, name, readinto, False, stream=True)
    return PcapResult(name, a.counters(), flows_of(a), error)


def analyse_bytes(data, keep_frames=True, max_flows=262144, reorder_ns=0):
    """The same over an in-memory image (tests, fuzzing)."""
    a = new_analyser(max_flows, reorder_ns)
    error, flags, flowdir = _feed_buffer(a, "<bytes>", data, keep_frames)
    return PcapResult("<bytes>", a.counters(), flows_of(a), error, flags, flowdir)
