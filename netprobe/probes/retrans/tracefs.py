"""The probe's own tracefs instance: tcp tracepoints without touching the global buffer.

An instance is a private ring buffer (instances/netprobe-<pid>-<name>) with
its own event enables and filters, so other tracing users and other
netprobe probes are left alone. The kernel filters by port before an event
reaches the buffer; the buffer is sized for bursts; events the kernel had to
drop because we read too slowly ("overrun", "dropped events" in
per_cpu/cpu*/stats) are summed and reported. The instance is removed on
close; one left by a killed run (its pid gone) is removed at the next start.
"""
import errno
import os
import re
import select
import subprocess

from netprobe.errors import ProbeError

ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PREFIX = "netprobe-"
_STALE_RE = re.compile(r"netprobe-(\d+)-")
# events we enable when the kernel has them: retransmits, SYN-ACK retransmits, resets sent
EVENTS = ("tcp/tcp_retransmit_skb", "tcp/tcp_retransmit_synack", "tcp/tcp_send_reset")


def find_root(mount=True):
    """The tracefs mount point; mounts tracefs at /sys/kernel/tracing if none is (root only)."""
    for root in ROOTS:
        if os.path.isdir(os.path.join(root, "instances")):
            return root
    if mount and os.path.isdir(ROOTS[0]):
        p = subprocess.run(["mount", "-t", "tracefs", "nodev", ROOTS[0]], capture_output=True, text=True)
        if p.returncode == 0 and os.path.isdir(os.path.join(ROOTS[0], "instances")):
            return ROOTS[0]
    raise ProbeError("tracefs is not available: mount it (mount -t tracefs nodev /sys/kernel/tracing) "
                     "and run as root")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_instance(path):
    """Disable every event of an instance and remove it (EBUSY while a reader holds trace_pipe)."""
    try:
        with open(os.path.join(path, "events", "enable"), "w") as f:
            f.write("0")
    except OSError:
        pass
    os.rmdir(path)


def cleanup_stale(root):
    """Remove instances named netprobe-<pid>-... whose pid is gone; returns their names."""
    gone = []
    inst = os.path.join(root, "instances")
    for name in sorted(os.listdir(inst)):
        m = _STALE_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                remove_instance(os.path.join(inst, name))
                gone.append(name)
            except OSError:
                pass
    return gone


def port_filter(fields, ports):
    """Kernel filter for an event with `fields`: any of the ports on either end
    (and err == 0 where the event has it: a failed resend put nothing on the wire).
    Events without sport/dport fields (tcp_send_reset) are filtered by the reader."""
    parts = []
    if ports and {"sport", "dport"} <= fields:
        parts.append("(" + " || ".join(f"sport == {p} || dport == {p}" for p in ports) + ")")
    if "err" in fields:
        parts.append("err == 0")
    return " && ".join(parts)


def event_fields(root, event):
    """Field names of an event from its format file, or None if the kernel lacks it."""
    try:
        with open(os.path.join(root, "events", event, "format")) as f:
            return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d+\])?;", f.read()))
    except OSError:
        return None


class Instance:
    """A tracefs instance with some tcp events enabled; read() returns new trace lines."""

    def __init__(self, name, ports=(), buffer_kb=4096, root=None):
        self.root = root or find_root()
        self.stale_removed = cleanup_stale(self.root)
        self.name = f"{PREFIX}{os.getpid()}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"[:64]
        self.path = os.path.join(self.root, "instances", self.name)
        self.events, self.missing = [], []
        self._fd = None
        self._partial = b""
        try:
            os.mkdir(self.path)
        except FileExistsError:
            remove_instance(self.path)              # our own pid: a previous runner in this process
            os.mkdir(self.path)
        except OSError as exc:
            raise ProbeError(f"cannot create tracefs instance {self.path}: {exc.strerror}") from None
        try:
            self._write("buffer_size_kb", str(buffer_kb))
            self._write("trace_clock", "mono")      # event times comparable with time.monotonic()
            for ev in EVENTS:
                fields = event_fields(self.root, ev)
                if fields is None:
                    self.missing.append(ev)
                    continue
                flt = port_filter(fields, ports)
                if flt:
                    self._write(f"events/{ev}/filter", flt)
                self._write(f"events/{ev}/enable", "1")
                self.events.append(ev)
            if "tcp/tcp_retransmit_skb" not in self.events:
                raise ProbeError("this kernel has no tcp:tcp_retransmit_skb tracepoint (needs Linux >= 4.15)")
            self._fd = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        except BaseException:
            self.close()
            raise

    def _write(self, rel, value):
        try:
            with open(os.path.join(self.path, rel), "w") as f:
                f.write(value)
        except OSError as exc:
            raise ProbeError(f"tracefs {rel} <- {value!r}: {exc.strerror}") from None

    def read(self, timeout=0.0):
        """Complete trace lines available now (waiting up to timeout s for the first)."""
        if self._fd is None:
            return []
        if timeout and not select.select([self._fd], [], [], timeout)[0]:
            return []
        chunks = []
        while True:
            try:
                b = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not b:
                break
            chunks.append(b)
        data = self._partial + b"".join(chunks)
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("ascii", "replace") for line in lines if line]

    def lost(self):
        """Events the kernel dropped from this instance's buffer so far (all CPUs)."""
        total = 0
        base = os.path.join(self.path, "per_cpu")
        for cpu in os.listdir(base):
            try:
                with open(os.path.join(base, cpu, "stats")) as f:
                    for line in f:
                        key, _, val = line.partition(":")
                        if key.strip() in ("overrun", "dropped events"):
                            total += int(val.split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return total

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.isdir(self.path):
            remove_instance(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
