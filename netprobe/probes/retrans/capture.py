"""Live capture fed to the pcap analyser: incoming retransmits, which no tracepoint shows.

An AF_PACKET TPACKET_V3 ring in this process (netprobe._pcapread.PacketRing)
with a BPF filter compiled by libpcap (tcpdump's filter language) and a small
snaplen (headers only) hands its frames straight to the same compiled
analyser as `netprobe pcap`, so retransmissions arriving from peers, segments
lost before this host and out-of-order arrivals are classified exactly as in
capture files. No process, pipe or per-packet system call: a thread waits for
the kernel to hand over a block (full, or RETIRE_MS after its first frame)
and analyses it whole. The socket dies with the process however it ends; the
kernel's drop count is kept.
"""
import ctypes
import ctypes.util
import socket
import threading
import time

from netprobe.errors import ProbeError, load_extension
from netprobe.probes.retrans import pcapfile

BLOCK_SIZE = 1 << 18        # bytes per ring block (~1,100 frames at snaplen 128)
RETIRE_MS = 50              # the kernel hands over a block at most this long after its first frame
WAIT_MS = 100               # the drain thread's poll() timeout (how soon it notices close())
DLT_RAW = 12                # libpcap's link type for frames that start at the IP header (Linux)
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _BpfInsn(ctypes.Structure):             # struct bpf_insn = struct sock_filter
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


def _libpcap():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("pcap") or "libpcap.so.0.8")
    except OSError:
        raise ProbeError("capture needs libpcap (apt-get install libpcap0.8)") from None
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def compile_filter(expr, snaplen):
    """`expr` compiled by libpcap for frames that start at the IP header: the struct
    sock_filter array as bytes, whose accepting return value is `snaplen`."""
    lib = _libpcap()
    handle = lib.pcap_open_dead(DLT_RAW, snaplen)
    if not handle:
        raise ProbeError("libpcap: pcap_open_dead failed")
    prog = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
            raise ProbeError(f"capture filter {expr!r}: {lib.pcap_geterr(handle).decode(errors='replace')}")
        try:
            return ctypes.string_at(prog.bf_insns, prog.bf_len * ctypes.sizeof(_BpfInsn))
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)


# a TCP segment that carries data (IPv6: without extension headers, as libpcap's tcp[] needs)
HAS_DATA = ("((ip and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) > 0)"
            " or (ip6 and ip6[4:2] - ((tcp[12] & 0xf0) >> 2) > 0))")
SYN_FIN_RST = "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"


def filter_expr(ports=(), direction="both"):
    """tcpdump's filter: TCP on the ports; with direction "in", only segments arriving here that
    carry data or SYN/FIN/RST (the peer's MSS and the connection ends the analyser uses)."""
    expr = "tcp" + (" and (" + " or ".join(f"port {p}" for p in ports) + ")" if ports else "")
    if direction == "in":
        expr += f" and inbound and ({HAS_DATA} or {SYN_FIN_RST})"
    return expr


class LiveCapture:
    """A capture on `iface` ("any": every interface) of the TCP ports (all when empty);
    direction "in": only segments arriving here with data or SYN/FIN/RST, and the kernel
    does not even offer the socket what the host sends (PACKET_IGNORE_OUTGOING)."""

    def __init__(self, iface, ports=(), snaplen=128, buffer_kb=8192, max_flows=65536, direction="both"):
        try:
            ifindex = 0 if iface == "any" else socket.if_nametoindex(iface)
            lo = socket.if_nametoindex("lo")
        except OSError:
            raise ProbeError(f"capture: no interface {iface!r}") from None
        bpf = compile_filter(filter_expr(ports, direction), snaplen)
        try:
            self.ring = load_extension("_pcapread").PacketRing(bpf, ifindex, lo, BLOCK_SIZE,
                                                               max(4, buffer_kb * 1024 // BLOCK_SIZE), RETIRE_MS,
                                                               direction == "in")
        except PermissionError:
            raise ProbeError("capture needs root (or CAP_NET_RAW)") from None
        except OSError as exc:
            raise ProbeError(f"capture on {iface}: {exc.strerror}") from None
        self.max_flows = max_flows
        self.analyser = pcapfile.new_analyser(max_flows=max_flows)
        self.kernel_drops = None
        self._stats_last = (0, 0)           # (frames analysed, kernel drops) at the last interval_stats()
        self._last = {}                     # flow index -> (ab, ba) counters at the last snapshot
        self.tables_renewed = 0
        self._lock = threading.Lock()       # the analyser: drain thread vs interval reads
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="capture", daemon=True)
        self._thread.start()

    def _drain(self):
        while not self._stop.is_set():
            if self.ring.wait(WAIT_MS):
                self.pump()

    def pump(self, settle=False):
        """Analyse every block the kernel has handed over; returns frames analysed. settle: first
        wait until the block being filled now has been handed over too (the last interval at stop)."""
        if settle:
            time.sleep(2 * RETIRE_MS / 1000)
        with self._lock:
            return self.ring.pump(self.analyser).frames

    def interval_flows(self):
        """Flows with their counters since the previous call (pcapfile.Flow, deltas)."""
        out = []
        with self._lock:
            flows = pcapfile.flows_of(self.analyser)
            renew = len(flows) >= 0.9 * self.max_flows     # long runs: a fresh table after this read
            if renew:
                self.analyser = pcapfile.new_analyser(max_flows=self.max_flows)
                self.tables_renewed += 1
        for i, f in enumerate(flows):
            prev = self._last.get(i)
            self._last[i] = (dict(f.ab), dict(f.ba))
            if prev is not None:
                f.ab = {k: v - prev[0][k] for k, v in f.ab.items()}
                f.ba = {k: v - prev[1][k] for k, v in f.ba.items()}
            out.append(f)
        if renew:
            self._last = {}
        return out

    def interval_stats(self):
        """(frames analysed, packets the kernel dropped for want of ring space) since the
        previous call: with drops, the interval's counts are lower bounds."""
        st = self.ring.stats()
        frames, drops = st.frames - self._stats_last[0], st.drops - self._stats_last[1]
        self._stats_last = (st.frames, st.drops)
        return frames, drops

    def counters(self):
        with self._lock:
            return self.analyser.counters()

    def close(self):
        """Stop the drain thread, analyse what is left, keep the kernel's drop count, close the socket."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        if self.kernel_drops is None:
            self.pump()
            self.kernel_drops = self.ring.stats().drops
            self.ring.close()
