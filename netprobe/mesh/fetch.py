"""Where a host gets the mesh file: a local file, or a URL fetched with ETag.

The [mesh] table of a host's config names the source. A URL is fetched with
If-None-Match, so an unchanged file costs a 304; each good copy is written to
`cache` (0600, atomically) and is what the host runs on when the source is
down or serves something invalid, after a restart too. A copy that fails
validation is never cached and never replaces the running mesh.
"""
import dataclasses
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from netprobe.config.schema import DURATION, STR, setting
from netprobe.errors import ConfigError
from netprobe.fileio import replace_private
from netprobe.mesh import model

MAX_BYTES = 16 << 20              # a mesh of 10,000 hosts is a few MB; more is not a mesh
USER_AGENT = "netprobe-mesh"


@dataclass(frozen=True)
class MeshConfig:
    """The [mesh] table of a host's config."""
    file: str = setting(STR, "", "path of the mesh file (or url)")
    url: str = setting(STR, "", "http(s) URL of the mesh file, fetched with ETag every `refresh` (or file)")
    self: str = setting(STR, "", "this host's [[host]] name in the mesh (default: the host whose address "
                        "is local)")
    refresh: float = setting(DURATION, 300.0, "re-read the file or re-fetch the URL this often (s); "
                             "SIGHUP does it at once", min=1.0, max=86400)
    cache: str = setting(STR, "/var/lib/netprobe/mesh.toml", "with url: the last good copy, used when "
                         "the URL is down (written 0600)")
    timeout: float = setting(DURATION, 10.0, "with url: connect and read timeout (s)", min=0.1, max=300)
    state: str = setting(STR, "/var/lib/netprobe/mesh-state.json", "the mesh whose timetable is in force "
                         "here and a rollout under way, so a restart keeps to the rollout rule (written "
                         "0600); \"\" keeps none: a restart then puts the file's timetable in force at once")

    def check(self, where):
        if bool(self.file) == bool(self.url):
            raise where.error(None, "needs exactly one of file and url")
        if self.url and not re.match(r"https?://[^/\s]+", self.url):
            raise where.error("url", "must be an http:// or https:// URL")


@dataclass(frozen=True)
class Fetched:
    mesh: object                  # model.Mesh: what to run (the new copy, or the last good one)
    changed: bool                 # differs from the copy the previous call returned
    error: str = ""               # why the source was not used, when it was not


class Source:
    """One mesh source and its last good copy. `get()` never raises once a good copy exists."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.etag = None
        self.current = None       # model.Mesh last returned
        if cfg.url:
            self.current = self._from_cache()

    def get(self):
        try:
            mesh = self._read_file() if self.cfg.file else self._fetch()
        except ConfigError as exc:
            if self.current is None:
                raise
            return Fetched(self.current, False, str(exc))
        changed = self.current is None or mesh.version != self.current.version
        self.current = mesh
        return Fetched(mesh, changed)

    def _read_file(self):
        return model.load_file(self.cfg.file)

    def _fetch(self):
        req = urllib.request.Request(self.cfg.url, headers={"User-Agent": USER_AGENT})
        if self.etag and self.current is not None:
            req.add_header("If-None-Match", self.etag)
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                body = resp.read(MAX_BYTES + 1)
                etag = resp.headers.get("ETag")
        except urllib.error.HTTPError as exc:
            if exc.code == 304 and self.current is not None:
                return self.current
            raise ConfigError(f"HTTP {exc.code} {exc.reason}", file=self.cfg.url) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"cannot fetch: {reason}", file=self.cfg.url) from None
        if len(body) > MAX_BYTES:
            raise ConfigError(f"larger than {MAX_BYTES} bytes", file=self.cfg.url)
        mesh = model.load_bytes(body, self.cfg.url)
        self.etag = etag
        self._write_cache(body, etag)
        return mesh

    # ---- the last good copy ------------------------------------------------------------
    def _write_cache(self, body, etag):
        path = self.cfg.cache
        try:
            replace_private(path, body)
            self._write_etag(etag)
        except OSError as exc:
            raise ConfigError(f"cannot keep the last good copy: {exc.strerror}", file=path) from None

    def _write_etag(self, etag):
        tag_path = self.cfg.cache + ".etag"
        if etag is None:
            if os.path.exists(tag_path):
                os.unlink(tag_path)
            return
        fd = os.open(tag_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(etag)

    def _from_cache(self):
        try:
            mesh = model.load_file(self.cfg.cache)
        except ConfigError:
            return None            # no usable copy yet: the first fetch must succeed
        try:
            with open(self.cfg.cache + ".etag") as fh:
                self.etag = fh.read(1024).strip() or None
        except OSError:
            self.etag = None
        return dataclasses.replace(mesh, file=self.cfg.url)
