"""Host facts for run headers and the host probe.

Every function is safe: it returns `(value, None)` on success and
`(None, reason)` when the fact is unavailable, and never raises, because a
missing fact must not stop a probe.
"""
import ctypes
import os
import platform
import socket

from netprobe import __version__

CLOCKSOURCE_PATH = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
PROC_STAT = "/proc/stat"

# adjtimex(2) return values (clock states) and status bits, from <sys/timex.h>
TIME_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT",
               5: "TIME_ERROR"}
TIME_ERROR = 5
STA_BITS = {0x0001: "STA_PLL", 0x0002: "STA_PPSFREQ", 0x0004: "STA_PPSTIME",
            0x0008: "STA_FLL", 0x0010: "STA_INS", 0x0020: "STA_DEL", 0x0040: "STA_UNSYNC",
            0x0080: "STA_FREQHOLD", 0x0100: "STA_PPSSIGNAL", 0x0200: "STA_PPSJITTER",
            0x0400: "STA_PPSWANDER", 0x0800: "STA_PPSERROR", 0x1000: "STA_CLOCKERR",
            0x2000: "STA_NANO", 0x4000: "STA_MODE", 0x8000: "STA_CLK"}
STA_UNSYNC = 0x0040
STA_NANO = 0x2000


class Timex(ctypes.Structure):
    """glibc `struct timex` as the `adjtimex` symbol takes it (fields are C long).

    ctypes inserts the same padding as the C compiler (after `modes`,
    `status` and `shift` on LP64): 208 bytes on x86_64 and aarch64.
    """
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),      # us, or ns with STA_NANO
        ("freq", ctypes.c_long),        # scaled ppm (ppm * 2**16)
        ("maxerror", ctypes.c_long),    # us
        ("esterror", ctypes.c_long),    # us
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),   # us
        ("tolerance", ctypes.c_long),   # scaled ppm
        ("time_sec", ctypes.c_long),    # struct timeval
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),        # us between clock ticks
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def _read_text(path):
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip(), None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}"


def kernel_release():
    """Running kernel release, e.g. '6.1.0-18-amd64'."""
    release = platform.release()
    return (release, None) if release else (None, "uname gave no release")


def clocksource():
    """Current kernel clocksource (tsc, kvm-clock, hpet, ...); timer precision depends on it."""
    text, why = _read_text(CLOCKSOURCE_PATH)
    if why:
        return None, why
    return (text, None) if text else (None, f"{CLOCKSOURCE_PATH} is empty")


def read_adjtimex():
    """(clock state, Timex) from a read-only adjtimex(2) call (modes = 0)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.adjtimex
    except (OSError, AttributeError) as exc:
        return None, f"adjtimex unavailable: {exc}"
    call.argtypes = [ctypes.POINTER(Timex)]
    call.restype = ctypes.c_int
    tx = Timex()
    state = call(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        return None, f"adjtimex failed: {os.strerror(err)}"
    return (state, tx), None


def clock_sync():
    """Kernel clock discipline state from adjtimex(2).

    synced: the clock state is not TIME_ERROR and STA_UNSYNC is clear (what
    NTP daemons set once they discipline the clock). maxerror_us/esterror_us
    are the kernel's maximum and estimated error bounds; offset_ns the last
    offset the daemon applied.
    """
    got, why = read_adjtimex()
    if why:
        return None, why
    state, tx = got
    return {
        "synced": state != TIME_ERROR and not tx.status & STA_UNSYNC,
        "state": TIME_STATES.get(state, str(state)),
        "maxerror_us": tx.maxerror,
        "esterror_us": tx.esterror,
        "offset_ns": tx.offset if tx.status & STA_NANO else tx.offset * 1000,
        "status": tx.status,
        "status_bits": [name for bit, name in STA_BITS.items() if tx.status & bit],
    }, None


def read_cpu_times():
    """Aggregate CPU times from /proc/stat: (total, steal) in clock ticks."""
    text, why = _read_text(PROC_STAT)
    if why:
        return None, why
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                ticks = [int(x) for x in parts[1:9]]   # user .. steal (guest is inside user)
            except ValueError:
                break
            if len(ticks) < 8:
                return None, f"{PROC_STAT}: no steal column (kernel too old)"
            return (sum(ticks), ticks[7]), None
    return None, f"{PROC_STAT}: no parsable 'cpu' line"


class CpuStealMeter:
    """Share of CPU time stolen by the hypervisor between two samples.

    The first baseline is taken at construction; each sample() returns
    (percent since the previous sample, None) or (None, reason).
    """

    def __init__(self, reader=read_cpu_times):
        self._reader = reader
        self._last, _ = reader()

    def sample(self):
        now, why = self._reader()
        if why:
            return None, why
        last, self._last = self._last, now
        if last is None:
            return None, "no previous sample"
        total, steal = now[0] - last[0], now[1] - last[1]
        if total <= 0:
            return None, "no CPU time elapsed since the previous sample"
        return 100.0 * steal / total, None


def facts():
    """Run header facts: each key holds a value or None; `unavailable` says why."""
    out, missing = {}, {}
    getters = {"kernel": kernel_release, "clocksource": clocksource}
    for key, getter in getters.items():
        out[key], why = getter()
        if why:
            missing[key] = why
    try:
        out["hostname"] = socket.gethostname()
    except OSError as exc:
        out["hostname"] = None
        missing["hostname"] = str(exc)
    out["python"] = platform.python_version()
    out["netprobe"] = __version__
    out["cpu_count"] = os.cpu_count()
    if missing:
        out["unavailable"] = missing
    return out
