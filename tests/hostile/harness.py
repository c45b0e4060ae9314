"""A live `netprobe serve` to attack, and what the tests read about it from outside.

The peer runs as `netprobe run -c FILE` with a [serve] table (the daemon
starts it as its serve worker). Its process is found by the socket that
listens on its port (`ss -p`), so RSS and peak RSS come from that
process's /proc/PID/status. Its log is the daemon's stderr.
Every peer runs under an address-space cap, so an attack that makes it
allocate without bound ends in MemoryError there, not in the host's OOM
killer.
"""
import json
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
ADDRESS_SPACE = 4 << 30       # bytes of virtual memory the peer may map
START_TIMEOUT = 30.0          # python start-up on a loaded 2-core host is slow


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def status_kb(pid, field):
    """A kB figure (VmRSS, VmHWM) of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class Peer:
    """`netprobe serve` with `settings` in its [serve] table and a fresh key, on `host`:`port`.

    ns: a network namespace to run it in (None: this one). Use as a context manager."""

    def __init__(self, tmp, settings=None, host="127.0.0.1", port=None, allow=("127.0.0.0/8",), ns=None):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.ns = ns
        self.host = host
        self.port = port or free_port(host)
        self.key = secrets.token_hex(16).encode()
        self.key_file = self.tmp / "peer.key"
        write_private(self.key_file, self.key.decode() + "\n")
        table = {"listen": [f"{host}:{self.port}"], "allow": list(allow), "key_file": str(self.key_file),
                 **(settings or {})}
        self.config = self.tmp / "peer.toml"
        self.config.write_text("[serve]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()))
        self.log_path = self.tmp / "peer.log"
        self.proc = None
        self.pid = None

    @property
    def address(self):
        return (self.host, self.port)

    def _argv(self, argv):
        return (["ip", "netns", "exec", self.ns] if self.ns else []) + [str(a) for a in argv]

    def ss(self, *args):
        """`ss -H ARGS` in the peer's namespace: its output lines."""
        out = subprocess.run(self._argv(["ss", "-H", *args]), capture_output=True, text=True, timeout=10)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def start(self):
        with open(self.log_path, "wb") as log, open(self.tmp / "peer.out", "wb") as out:
            self.proc = subprocess.Popen(self._argv([PY, "-m", "netprobe", "run", "-c", self.config]), cwd=ROOT,
                                         stdout=out, stderr=log, preexec_fn=_cap_memory)
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end and self.proc.poll() is None:
            for line in self.ss("-ltnp", f"sport = :{self.port}"):
                m = re.search(r"pid=(\d+)", line)
                if m:
                    self.pid = int(m.group(1))
                    return self
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"netprobe serve did not start: {self.log().strip()[-600:]}")

    def alive(self):
        return self.proc.poll() is None and self.pid is not None and os.path.exists(f"/proc/{self.pid}")

    def rss_kb(self):
        return status_kb(self.pid, "VmRSS")

    def hwm_kb(self):
        return status_kb(self.pid, "VmHWM")

    def reset_peak(self):
        """Restart VmHWM from the current RSS (proc(5): clear_refs 5), so hwm_kb() is this attack's peak."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
            fh.write("5")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def connections_from(self, source):
        """Established TCP connections from `source` to the peer's port, as ss sees them."""
        return len(self.ss("-tn", "state", "established", f"( sport = :{self.port} and dst {source} )"))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pid and os.path.exists(f"/proc/{self.pid}"):    # the serve worker, if it outlived the daemon
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def tool(name, ns=None, duration=10.0, timeout_extra=30.0, **opts):
    """Start `python -m tests.hostile.attacks NAME --duration D --OPT VALUE...` (in namespace `ns`);
    its JSON result with finish(). Every tool stops by itself after `duration` s."""
    argv = [PY, "-m", "tests.hostile.attacks", name, "--duration", str(duration)]
    for k, v in opts.items():
        if isinstance(v, tuple):                  # an address
            v = f"{v[0]}:{v[1]}"
        argv += [f"--{k.replace('_', '-')}", str(v)]
    if ns:
        argv = ["ip", "netns", "exec", ns] + argv
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.hostile_deadline = duration + timeout_extra
    return p


def finish(p):
    """The JSON result a tool printed (its last stdout line); AssertionError if it failed."""
    try:
        out, err = p.communicate(timeout=p.hostile_deadline)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"attack tool overran its time: {err.strip()[-400:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if p.returncode or not lines:
        raise AssertionError(f"attack tool failed (exit {p.returncode}): {err.strip()[-600:]}")
    return json.loads(lines[-1])
