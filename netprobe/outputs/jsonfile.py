"""jsonfile sink: one JSON object per line, with size/time rotation and gzip.

Every file starts with a HEADER line (version, start time, the supplied and
effective config, host facts), then one `Record.to_json()` per line.

Writes are lossless and never leave half a line: each line goes out in one
os.write on an O_APPEND descriptor (a failed write is truncated away) and
flush() fsyncs. Rotation renames the file to `<path>.<UTC stamp>[.N]` (the
stamp is when it was closed, N counts rotations within one second), gzips it
through a temp file + os.replace so `<...>.gz` is never seen half-written,
deletes the oldest rotated files beyond `keep`, then starts a fresh file with
the header. A non-empty file found at start (a previous run's) is rotated the
same way, and rotated files a crash left uncompressed are compressed then.
"""
import contextlib
import dataclasses
import errno
import gzip
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass

from netprobe import __version__
from netprobe.config.schema import BOOL, DURATION, INT, SIZE, STR, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.results import iso_time

log = logging.getLogger("netprobe.outputs")

MIN_ROTATE_SIZE = 4096
MIN_ROTATE_INTERVAL = 0.1
_STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class JsonFileConfig(SinkConfig):
    """[output.jsonfile]: JSON lines in a rotated, optionally gzipped file."""
    path: str = setting(STR, "", "file to append JSON lines to; rotated files are kept beside it",
                        required=True)
    rotate_size: int = setting(SIZE, 64 * 1024 ** 2, "rotate before the file would exceed this size "
                                                     "(bytes, 0 = never)", min=0)
    rotate_interval: float = setting(DURATION, 0.0, "rotate once the file is this old (s, 0 = never)", min=0)
    gzip: bool = setting(BOOL, True, "compress rotated files to <name>.gz")
    keep: int = setting(INT, 10, "rotated files kept; older ones are deleted", min=0, max=100_000)

    def check(self, where):
        """Tiny nonzero rotation limits would churn out a file per record: refuse them."""
        super().check(where)
        if 0 < self.rotate_size < MIN_ROTATE_SIZE:
            raise where.error("rotate_size", f"{self.rotate_size} bytes is too small "
                                             f"(valid: 0 = off, or at least {MIN_ROTATE_SIZE} bytes)")
        if 0 < self.rotate_interval < MIN_ROTATE_INTERVAL:
            raise where.error("rotate_interval", f"{self.rotate_interval}s is too short "
                                                 f"(valid: 0 = off, or at least {MIN_ROTATE_INTERVAL}s)")
        if self.path.endswith("/"):
            raise where.error("path", f'"{self.path}" is a directory (valid: a file path, '
                                      f'e.g. /var/log/netprobe/results.json)')


def _plain(obj):
    """JSON fallback for config and host facts: dataclasses as dicts, sets sorted, the rest as text."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def header_line(run_info, started):
    """The HEADER object every file starts with, as one encoded line."""
    header = {
        "type": "HEADER",
        "version": run_info.get("version", __version__),
        "started": iso_time(started),
        "config_file": run_info.get("config_file"),
        "config_supplied": run_info.get("config_supplied", {}),
        "config_effective": run_info.get("config_effective", {}),
        "host": run_info.get("host", {}),
    }
    return (json.dumps(header, separators=(",", ":"), default=_plain) + "\n").encode()


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonFileSink(Sink):
    """Appends JSON lines to cfg.path and rotates it by size and age."""

    def __init__(self, cfg, name="jsonfile"):
        self.cfg = cfg
        self.name = name
        self._path = os.path.abspath(cfg.path)
        self._dir, self._base = os.path.split(self._path)
        self._rotated_re = re.compile(re.escape(self._base) + r"\.(\d{8}T\d{6}Z)(?:\.(\d+))?(\.gz|\.gz\.tmp)?")
        self._header = header_line({}, time.time())
        self._fd = None
        self._size = 0          # bytes in the current file
        self._records = 0       # record lines in the current file
        self._opened = 0.0      # monotonic time the current file was started

    def start(self, run_info):
        self._header = header_line(run_info or {}, time.time())
        self._recover()
        self._open()

    def write(self, record):
        line = (record.to_json() + "\n").encode()
        if self._fd is not None and self._due(len(line)):
            self._close_file()
        if self._fd is None:
            self._open()
        self._append(line)
        self._records += 1

    def flush(self):
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self):
        self._close_file()

    def _due(self, nbytes):
        if not self._records:
            return False
        if self.cfg.rotate_size and self._size + nbytes > self.cfg.rotate_size:
            return True
        return bool(self.cfg.rotate_interval) and time.monotonic() - self._opened >= self.cfg.rotate_interval

    def _open(self):
        """Rotate out any non-empty file at cfg.path, then start a fresh one with the header."""
        try:
            self._retire_existing()
        except OSError as exc:
            raise OSError(f"{self.name}: cannot rotate {self._path}: {exc.strerror or exc}") from None
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(f"{self.name}: cannot open {self._path}: {exc.strerror or exc}") from None
        self._fd, self._size, self._records, self._opened = fd, 0, 0, time.monotonic()
        try:
            self._append(self._header)
        except OSError:
            self._close_file()
            raise

    def _append(self, data):
        """Write one whole line; on failure cut the file back so no partial line remains."""
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)     # one call for the whole line unless the disk fills
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise OSError(f"{self.name}: cannot write {self._path}: {exc.strerror or exc}; "
                          f"record dropped") from None
        self._size += len(data)

    def _close_file(self):
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotated(self, tmp=False):
        """(stamp, N, name) of rotated files (or with tmp=True, leftover temp files), sorted."""
        out = []
        for name in os.listdir(self._dir):
            m = self._rotated_re.fullmatch(name)
            if m and (m.group(3) == ".gz.tmp") == tmp:
                out.append((m.group(1), int(m.group(2) or 0), name))
        return sorted(out)

    def _retire_existing(self):
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return
        if st.st_size == 0:
            return
        stamp = time.strftime(_STAMP, time.gmtime(st.st_mtime))
        taken = [n for s, n, _ in self._rotated() if s == stamp]
        dst = f"{self._path}.{stamp}" + (f".{max(taken) + 1}" if taken else "")
        os.rename(self._path, dst)
        _fsync_dir(self._dir)
        if self.cfg.gzip:
            self._compress(dst)
        self._prune()

    def _compress(self, src):
        """src -> src.gz via a temp file and os.replace; on failure src stays as it is."""
        tmp = src + ".gz.tmp"
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as raw:
                mtime = int(os.fstat(fin.fileno()).st_mtime)
                with gzip.GzipFile(os.path.basename(src), "wb", 6, raw, mtime) as gz:
                    shutil.copyfileobj(fin, gz, 1 << 20)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, src + ".gz")
            os.unlink(src)
            _fsync_dir(self._dir)
        except OSError as exc:
            log.error("sink %s: cannot compress %s (kept uncompressed): %s", self.name, src, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _prune(self):
        rotated = self._rotated()
        for _, _, name in rotated[:max(0, len(rotated) - self.cfg.keep)]:
            try:
                os.unlink(os.path.join(self._dir, name))
            except OSError as exc:
                log.error("sink %s: cannot delete old %s: %s", self.name, name, exc)

    def _recover(self):
        """Clean up after a crash: drop temp files, compress rotated files left uncompressed."""
        for _, _, name in self._rotated(tmp=True):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir, name))
        if self.cfg.gzip:
            for _, _, name in self._rotated():
                if not name.endswith(".gz"):
                    self._compress(os.path.join(self._dir, name))
