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

The directory may be writable by others (a root daemon writing under /var/tmp),
so nothing here follows a symlink or opens a FIFO: the file and every rotated
file are opened O_NOFOLLOW and must be regular files, the gzip temporary is
created O_EXCL, and a symlink at the path is refused, never rotated or
compressed. Files are created 0600, or 0640 owned by `group`; the HEADER's
config has every key redacted.
"""
import contextlib
import dataclasses
import errno
import grp
import gzip
import json
import logging
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass

from netprobe import __version__, redact
from netprobe.config.schema import BOOL, DURATION, INT, SIZE, STR, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.results import iso_time
from netprobe.units import show

log = logging.getLogger("netprobe.outputs")

MIN_ROTATE_SIZE = 4096
MIN_ROTATE_INTERVAL = 0.1
_STAMP = "%Y%m%dT%H%M%SZ"
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC     # O_NONBLOCK: a FIFO never blocks the open


def group_id(group):
    """A group name or number as a gid; KeyError if this host has no such group."""
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


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
    group: str = setting(STR, "", "group that may read the files (created 0640 and owned by it); "
                                  "empty: owner only (0600)")

    def check(self, where):
        """Tiny nonzero rotation limits would churn out a file per record: refuse them."""
        super().check(where)
        if 0 < self.rotate_size < MIN_ROTATE_SIZE:
            raise where.error("rotate_size", f"{self.rotate_size} bytes is too small "
                                             f"(valid: 0 = off, or at least {MIN_ROTATE_SIZE} bytes)")
        if 0 < self.rotate_interval < MIN_ROTATE_INTERVAL:
            raise where.error("rotate_interval", f"{self.rotate_interval}s is too short "
                                                 f"(valid: 0 = off, or at least {MIN_ROTATE_INTERVAL}s)")
        if self.group:
            try:
                group_id(self.group)
            except KeyError:
                raise where.error("group", f"{show(self.group)} is not a group on this host") from None
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
        "config_supplied": redact.redact(run_info.get("config_supplied", {})),
        "config_effective": redact.redact(run_info.get("config_effective", {})),
        "host": run_info.get("host", {}),
    }
    return (redact.scrub(json.dumps(header, separators=(",", ":"), default=_plain)) + "\n").encode()


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
        self._gid = group_id(cfg.group) if cfg.group else None
        self._mode = 0o640 if cfg.group else 0o600

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
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o600)
        except OSError as exc:
            raise OSError(f"{self.name}: cannot open {self._path}: {_why(exc)}") from None
        try:
            self._own(fd)
        except OSError as exc:
            os.close(fd)
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

    def _own(self, fd):
        """Give a file this sink opened its owner-only (or group) mode; refuse one that is not a
        plain file of ours (another user's, or a hard link to a file elsewhere)."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({_kind(st.st_mode)})")
        if st.st_uid != os.geteuid() or st.st_nlink != 1:
            raise OSError(f"owned by uid {st.st_uid} with {st.st_nlink} link(s); "
                          "a result file must be this user's, with one link")
        if self._gid is not None and st.st_gid != self._gid:
            os.fchown(fd, -1, self._gid)
        if stat.S_IMODE(st.st_mode) != self._mode:
            os.fchmod(fd, self._mode)

    def _tighten(self):
        fd = os.open(self._path, os.O_RDONLY | _NOFOLLOW)
        try:
            self._own(fd)
        finally:
            os.close(fd)

    def _retire_existing(self):
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{_kind(st.st_mode)} is in the way (never followed; "
                          "remove it or point path at a plain file)")
        if st.st_size == 0:
            if st.st_uid != os.geteuid() or st.st_nlink != 1:
                os.unlink(self._path)             # holds nothing, and is not ours to append to
            return
        if st.st_uid == os.geteuid() and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) != self._mode:
            self._tighten()                       # an older version's 0644 file
        stamp = time.strftime(_STAMP, time.gmtime(st.st_mtime))
        taken = [n for s, n, _ in self._rotated() if s == stamp]
        dst = f"{self._path}.{stamp}" + (f".{max(taken) + 1}" if taken else "")
        os.rename(self._path, dst)
        _fsync_dir(self._dir)
        if self.cfg.gzip:
            self._compress(dst)
        self._prune()

    def _compress(self, src):
        """src -> src.gz via a temp file and os.replace; on failure src stays as it is.
        Only a regular file is read (a symlink planted under a rotated name is left alone)
        and the temporary is created new (O_EXCL), so no file outside is read or written."""
        tmp = src + ".gz.tmp"
        try:
            fin = open(os.open(src, os.O_RDONLY | _NOFOLLOW), "rb")
        except OSError as exc:
            log.error("sink %s: cannot compress %s (left as it is): %s", self.name, src, _why(exc))
            return
        try:
            with fin:
                st = os.fstat(fin.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(f"not a regular file ({_kind(st.st_mode)})")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)                # a crash's leftover, or something planted
                with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600), "wb") as raw:
                    self._own(raw.fileno())
                    with gzip.GzipFile(os.path.basename(src), "wb", 6, raw, int(st.st_mtime)) as gz:
                        shutil.copyfileobj(fin, gz, 1 << 20)
                    raw.flush()
                    os.fsync(raw.fileno())
            os.replace(tmp, src + ".gz")
            os.unlink(src)
            _fsync_dir(self._dir)
        except OSError as exc:
            log.error("sink %s: cannot compress %s (kept uncompressed): %s", self.name, src, _why(exc))
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


def _kind(mode):
    """What a non-regular file is, for messages."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _why(exc):
    """An OSError's reason; ELOOP from O_NOFOLLOW means the name is a symlink."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link is in the way (never followed)"
    return exc.strerror or str(exc)
