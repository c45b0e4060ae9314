"""The probe's own tracefs instance: tcp tracepoints without touching the global buffer.

An instance is a private ring buffer with its own event enables and
filters, so other tracing users and other netprobe probes are left alone.
The kernel filters by port before an event reaches the buffer; the buffer is
sized for bursts; events the kernel had to drop because we read too slowly
("overrun", "dropped events" in per_cpu/cpu*/stats) are summed and reported.

tracefs is shared by every container on the host, so an instance's name says
whose it is: instances/netprobe-<pid ns inode>.<pid>.<start time>-<name>,
unique within the boot (the start time, in clock ticks since boot from
/proc/PID/stat, tells a reused pid apart). The instance is removed on close;
one left by a killed run is removed at a later start only when its owner is
provably gone: in our own PID namespace, no process with that pid and start
time; in another one, seen from the initial namespace (which sees every
process), no process left in that namespace at all. An instance of a
namespace we cannot see into is never touched. Removal is rmdir alone: the
kernel refuses it (EBUSY) while a reader holds trace_pipe, and nothing is ever
written into an instance that may be another daemon's.
"""
import errno
import os
import re
import select
import subprocess

from netprobe.errors import ProbeError

ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PREFIX = "netprobe-"
_OWNER_RE = re.compile(r"netprobe-(\d+)\.(\d+)\.(\d+)-")
INIT_PID_NS = 0xEFFFFFFC          # the initial PID namespace's inode (PROC_PID_INIT_INO)
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


def pid_ns():
    """This process's PID namespace inode."""
    return os.stat("/proc/self/ns/pid").st_ino


def start_time(pid):
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(b")") + 2:].split()[19])   # fields after the command name
    except (ValueError, IndexError):
        return None


def owner_token(pid=None):
    """<pid ns inode>.<pid>.<start time> of a process of our namespace (default: this one)."""
    if pid is None:
        return f"{pid_ns()}.{os.getpid()}.{start_time('self')}"
    return f"{pid_ns()}.{pid}.{start_time(pid)}"


def _proc_is_ours():
    """/proc shows our PID namespace (a container may have the host's mounted): pids read there
    mean what they mean to us."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def live_pid_namespaces():
    """Inodes of the PID namespaces some visible process is in."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.add(os.stat(f"/proc/{entry}/ns/pid").st_ino)
            except OSError:
                pass                        # exited while we looked
    return out


def remove_instance(path):
    """rmdir an instance; the kernel refuses (EBUSY) while a reader holds its trace_pipe."""
    os.rmdir(path)


def cleanup_stale(root):
    """Remove netprobe instances whose owner is provably gone; returns their names."""
    gone = []
    inst = os.path.join(root, "instances")
    if not _proc_is_ours():
        return gone
    own_ns = pid_ns()
    live_ns = None
    for name in sorted(os.listdir(inst)):
        m = _OWNER_RE.match(name)
        if not m:
            continue
        ns, pid, start = (int(g) for g in m.groups())
        if ns == own_ns:
            dead = start_time(pid) != start
        elif own_ns == INIT_PID_NS:
            if live_ns is None:
                live_ns = live_pid_namespaces()
            dead = ns not in live_ns
        else:
            dead = False                     # a namespace we cannot see into: not ours to judge
        if dead:
            try:
                remove_instance(os.path.join(inst, name))
                gone.append(name)
            except OSError:
                pass                         # EBUSY: someone still reads it
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
        self.name = f"{PREFIX}{owner_token()}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"[:96]
        self.path = os.path.join(self.root, "instances", self.name)
        self.events, self.missing = [], []
        self._fd = None
        self._partial = b""
        try:
            os.mkdir(self.path)
        except FileExistsError:
            try:
                remove_instance(self.path)          # ours: a previous runner in this process
                os.mkdir(self.path)
            except OSError as exc:
                raise ProbeError(f"cannot create tracefs instance {self.path}: {exc.strerror}") from None
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
