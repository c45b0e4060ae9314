"""`netprobe pcap --watch` in a directory others can write: FIFOs, symlinks, files truncated mid-read.

The watcher runs as a user runs it (a real process); the test plants each trap
itself. Oracles: the generated capture's script (how many frames a file holds,
how many were resent), the planted file outside the directory (never read:
no record names it), the reader's own file position in /proc/PID/fdinfo (the
truncation lands while the file is being read), and the watcher's liveness
and exit code after each trap.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ext.test_pcapread_cli import SCRIPT, lost_and_resent
from tests.reference import retrans_gen as gen

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def capture(copies=1):
    """A pcap of one conversation, its records repeated `copies` times; (bytes, frames)."""
    frames = gen.conversation(lost_and_resent(SCRIPT))       # 10 segments resent
    data = gen.ether_pcap(frames)
    return data[:24] + data[24:] * copies, len(frames) * copies


class Watcher:
    def __init__(self, directory):
        self.p = subprocess.Popen([sys.executable, "-m", "netprobe", "pcap", "--watch", str(directory), "--json",
                                   "--poll", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        os.set_blocking(self.p.stdout.fileno(), False)
        os.set_blocking(self.p.stderr.fileno(), False)
        self.out, self.err = b"", b""

    def _drain(self):
        for stream, attr in ((self.p.stdout, "out"), (self.p.stderr, "err")):
            if stream.closed:
                continue
            try:
                chunk = os.read(stream.fileno(), 1 << 20)
            except BlockingIOError:
                continue
            setattr(self, attr, getattr(self, attr) + chunk)

    def records(self):
        self._drain()
        return [json.loads(line) for line in self.out.decode().splitlines()]

    def wait_for(self, pred, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.p.poll() is None, f"the watcher died ({self.p.returncode}): {self.err.decode()}"
            if pred(self):
                return
            select.select([self.p.stdout, self.p.stderr], [], [], 0.05)
            self._drain()
        raise AssertionError(f"timed out; stdout {self.out.decode()[-500:]!r} stderr {self.err.decode()!r}")

    def sources(self):
        return {r.get("source") for r in self.records()}

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rest_out, rest_err = self.p.communicate(timeout=20)
        self.out += rest_out
        self.err += rest_err
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def watcher(tmp_path):
    started = []

    def start(directory):
        w = Watcher(directory)
        started.append(w)
        return w
    yield start
    for w in started:
        w.kill()


def test_fifo_and_symlink_get_one_line_each_and_the_watcher_goes_on(tmp_path, watcher):
    watched, outside = tmp_path / "dumps", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    data, frames = capture()
    (outside / "secret.pcap").write_bytes(data)
    os.mkfifo(watched / "a-fifo.pcap")
    os.symlink(outside / "secret.pcap", watched / "b-link.pcap")
    (watched / "c-real.pcap").write_bytes(data)
    w = watcher(watched)
    w.wait_for(lambda w: "c-real.pcap" in w.sources())
    (watched / "d-later.pcap").write_bytes(data)           # planted traps stop nothing after them
    w.wait_for(lambda w: "d-later.pcap" in w.sources())
    assert w.stop() == 0
    assert w.sources() == {"c-real.pcap", "d-later.pcap"}     # the symlink's target was never read
    err = w.err.decode().splitlines()
    assert sorted(err) == [
        f"netprobe: error: {watched}/a-fifo.pcap: a FIFO, skipped (--watch reads regular files only)",
        f"netprobe: error: {watched}/b-link.pcap: a symbolic link, skipped (--watch reads regular files only)",
    ]
    per_file = {r["source"]: r for r in w.records() if r["dir"] == f"{gen.A4}->{gen.B4}"}
    assert per_file["c-real.pcap"]["retrans"] == 10


def test_file_truncated_while_being_read(tmp_path, watcher):
    """The file shrinks to 1,000 bytes while the watcher is reading it (its read position, from
    /proc/PID/fdinfo, is inside the file): one ERROR record for it, no signal, and the next file
    is analysed. A memory-mapped reader dies of SIGBUS here."""
    watched = tmp_path / "dumps"
    watched.mkdir()
    big, big_frames = capture(copies=1500)                 # ~60 MB: a few hundred reads
    small, _ = capture()
    for attempt in range(3):                                # the read may finish before we see it
        path = watched / f"big-{attempt}.pcap"
        path.write_bytes(big)
        w = watcher(watched)
        pos = _truncate_while_reading(w, path, len(big))
        if pos is not None:
            break
        w.kill()
    else:
        pytest.fail("never saw the watcher inside the file in 3 tries")
    assert 0 < pos < len(big)
    w.wait_for(lambda w: path.name in w.sources())
    (watched / "next.pcap").write_bytes(small)
    w.wait_for(lambda w: "next.pcap" in w.sources())
    assert w.stop() == 0
    recs = [r for r in w.records() if r.get("source") == path.name]
    errors = [r for r in recs if r["type"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["frames"] < big_frames, recs
    assert errors[0]["error"].startswith("the file shrank while it was read ("), errors[0]
    assert errors[0]["error"].endswith(f" of {len(big)} bytes)"), errors[0]


def _truncate_while_reading(w, path, size, timeout=20.0):
    """Truncate `path` to 1,000 bytes once the watcher has it open with its position inside it;
    returns that position (None if the read finished unseen)."""
    deadline = time.monotonic() + timeout
    pid, target = w.p.pid, str(path)
    while time.monotonic() < deadline:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    pos = int(f.readline().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if 0 < pos < size:
                os.truncate(path, 1000)
                return pos
        if path.name in w.sources():
            return None
    return None


def test_explicit_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.pcap"
    os.mkfifo(fifo)
    p = subprocess.run([sys.executable, "-m", "netprobe", "pcap", str(fifo)], capture_output=True, text=True,
                       cwd=ROOT, timeout=30)
    assert p.returncode == 1
    assert p.stderr == f"netprobe: error: {fifo}: a FIFO, not a regular capture file\n"


def test_truncated_file_error_names_the_offset_in_the_file(tmp_path):
    """Read in chunks, a record cut short past the first chunk is still reported at its file offset."""
    from netprobe.probes.retrans import pcapfile
    data, frames = capture(copies=60)                       # > 2 MB: several reads
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-30])
    res = pcapfile.analyse_file(str(path))
    starts, o = [], 24
    while o < len(data):
        starts.append(o)
        o += 16 + int.from_bytes(data[o + 8:o + 12], "little")
    assert res.counters["frames"] == frames - 1
    assert f"offset {starts[-1]}" in res.error, res.error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(read_size=st.integers(1, 5000), cut=st.integers(0, 3000), ng=st.booleans(), corrupt=st.booleans())
def test_chunked_file_reads_equal_one_whole_buffer(tmp_path, read_size, cut, ng, corrupt):
    """Whatever the read size (records and headers split across reads, the buffer grown for a
    record longer than it), a file gives the frames, counters and error text, offsets included,
    of the whole image analysed at once; also cut short and with a corrupt record length mid-file."""
    from netprobe.probes.retrans import pcapfile
    frames = gen.conversation(lost_and_resent(SCRIPT[:48]))
    data = bytearray((gen.pcapng if ng else gen.pcap)([(t, gen.link(ip, 1)) for t, ip in frames]))
    if corrupt:                                 # the length field of the record in the middle
        o, field = (0, 4) if ng else (24, 8)
        while o < len(data) // 2:
            length = int.from_bytes(data[o + field:o + field + 4], "little")
            o += length if ng else 16 + length
        data[o + field:o + field + 4] = b"\xf0\xff\xff\x7f"
    data = bytes(data[:len(data) - cut])
    path = tmp_path / f"f-{read_size}-{cut}-{ng}-{corrupt}.pcap"
    path.write_bytes(data)
    whole = pcapfile.analyse_bytes(data)
    got = pcapfile.analyse_file(str(path), keep_frames=True, read_size=read_size)
    assert got.error == whole.error
    assert got.counters == whole.counters
    assert (got.flags == whole.flags).all() and len(got.flags) == len(whole.flags)
