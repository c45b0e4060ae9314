"""Live capture fed to the pcap analyser: incoming retransmits, which no tracepoint shows.

tcpdump (libpcap: an AF_PACKET TPACKET_V3 ring, the BPF filter compiled into
the kernel, a small snaplen: headers only) writes a pcap stream to a pipe;
the stream is fed in chunks to the same compiled analyser as `netprobe pcap`
(netprobe._pcapread in stream mode), so retransmissions arriving from peers,
segments lost before this host and out-of-order arrivals are classified
exactly as in capture files. tcpdump runs as our child and is stopped (and
its socket closed) on exit; the kernel's drop count it reports then is kept.
"""
import fcntl
import os
import re
import select
import shutil
import signal
import subprocess

import numpy as np

from netprobe.errors import ProbeError
from netprobe.probes.retrans import pcapfile

CHUNK = 1 << 14
F_SETPIPE_SZ = 1031                         # linux/fcntl.h; Python's fcntl module has it from 3.10 only


# a TCP segment that carries data (IPv6: without extension headers, as libpcap's tcp[] needs)
HAS_DATA = ("((ip and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) > 0)"
            " or (ip6 and ip6[4:2] - ((tcp[12] & 0xf0) >> 2) > 0))")
SYN_FIN_RST = "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"


def filter_expr(ports=(), direction="both"):
    """tcpdump's filter: TCP on the ports; with direction "in", only data segments arriving here,
    and SYN/FIN/RST both ways (the handshake RTT and connection ends the analyser uses)."""
    expr = "tcp" + (" and (" + " or ".join(f"port {p}" for p in ports) + ")" if ports else "")
    if direction == "in":
        expr += f" and ((inbound and {HAS_DATA}) or ({SYN_FIN_RST}))"
    return expr


class LiveCapture:
    def __init__(self, iface, ports=(), snaplen=128, buffer_kb=8192, max_flows=65536, direction="both"):
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            raise ProbeError("capture needs tcpdump (apt-get install tcpdump)")
        expr = filter_expr(ports, direction)
        # -Z root: dropping to the tcpdump user would clear the parent-death signal (see _die_with_parent)
        self.argv = [tcpdump, "-n", "-i", iface, "-s", str(snaplen), "-B", str(buffer_kb), "--immediate-mode",
                     "-U", "-Z", "root", "-w", "-", expr]
        self.max_flows = max_flows
        self.analyser = pcapfile.new_analyser(max_flows=max_flows)
        self.kernel_drops = None
        self._buf = bytearray()
        self._opened = False
        self._flags = np.zeros(CHUNK, np.uint16)
        self._flowdir = np.zeros(CHUNK, np.int32)
        self._last = {}                     # flow index -> (ab, ba) counters at the last snapshot
        self.errors = []
        self.tables_renewed = 0
        self._header = b""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        fl = fcntl.fcntl(self.proc.stdout, fcntl.F_GETFL)
        fcntl.fcntl(self.proc.stdout, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        try:                                # room for bursts between reads (the ring takes the rest)
            fcntl.fcntl(self.proc.stdout, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        if not self._wait_listening(5.0):
            err = self.close()
            raise ProbeError(f"tcpdump on {iface} did not start: {err.strip()[-200:]}")

    def _wait_listening(self, timeout):
        """True once tcpdump says it is listening (its socket and filter are in place)."""
        err = b""
        fd = self.proc.stderr.fileno()
        deadline = timeout
        while deadline > 0:
            r = select.select([fd], [], [], 0.1)[0]
            deadline -= 0.1
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return False
                err += chunk
                if b"listening on" in err:
                    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
                    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
                    return True
            if self.proc.poll() is not None:
                return False
        return False

    def pump(self, timeout=0.0):
        """Read what tcpdump wrote and analyse every complete record; returns frames analysed."""
        if self.proc.stdout is None:
            return 0
        if timeout:
            select.select([self.proc.stdout], [], [], timeout)
        while True:
            try:
                b = os.read(self.proc.stdout.fileno(), 1 << 20)
            except BlockingIOError:
                break
            if not b:
                break
            self._buf += b
        if not self._opened:
            if len(self._buf) < 24:
                return 0
            self._header = bytes(self._buf[:24])
            try:
                off = self.analyser.open(self._header)
            except ValueError as exc:
                raise ProbeError(f"tcpdump stream: {exc}") from None
            del self._buf[:off]
            self._opened = True
        total = 0
        while self._buf:
            st, off, n = self.analyser.run(self._buf, 0, self._flags, self._flowdir, True)
            del self._buf[:off]
            total += n
            if st == 2:
                self.errors.append(self.analyser.error)
                raise ProbeError(f"tcpdump stream: {self.analyser.error}")
            if st == 1:
                break
        return total

    def interval_flows(self):
        """Flows with their counters since the previous call (pcapfile.Flow, deltas)."""
        out = []
        for i, f in enumerate(pcapfile.flows_of(self.analyser)):
            prev = self._last.get(i)
            self._last[i] = (dict(f.ab), dict(f.ba))
            if prev is not None:
                f.ab = {k: v - prev[0][k] for k, v in f.ab.items()}
                f.ba = {k: v - prev[1][k] for k, v in f.ba.items()}
            out.append(f)
        if len(self._last) >= 0.9 * self.max_flows:    # long runs: a fresh table (same stream format)
            self.analyser = pcapfile.new_analyser(max_flows=self.max_flows)
            self.analyser.open(self._header)
            self._last = {}
            self.tables_renewed += 1
        return out

    def counters(self):
        return self.analyser.counters()

    def close(self):
        """Stop tcpdump; returns its stderr (the kernel drop count is parsed from it)."""
        err = b""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        except ValueError:               # a stream already closed
            pass
        text = (err or b"").decode(errors="replace")
        m = re.search(r"^(\d+) packets dropped by kernel", text, re.M)
        if m:
            self.kernel_drops = int(m.group(1))
        return text


def _die_with_parent():
    """In the child before exec: SIGTERM when the probe's worker dies, even by SIGKILL,
    so no capture socket outlives a killed run. The kernel clears this on a change of
    user, hence tcpdump's -Z root (it runs with the probe's own privileges)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)       # PR_SET_PDEATHSIG
