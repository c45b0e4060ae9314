"""`netprobe serve`: the [serve] table and the entry point of the peer side.

The protocol, the listener and the limits live in netprobe.peer; each probe
kind that needs a peer answers through its own responder (see
netprobe.probes.responders).
"""
import dataclasses
import logging
import os
import stat
from dataclasses import dataclass

from netprobe import probes
from netprobe.config.schema import DURATION, INT, PREFIX_LIST, RATE, STR, STR_LIST, setting
from netprobe.errors import UsageError
from netprobe.peer import server
from netprobe.peer.client import split_address

log = logging.getLogger("netprobe.serve")

LIMITS = tuple(f.name for f in dataclasses.fields(server.Limits))     # the [serve] settings that are limits
MIN_KEY = 16                  # bytes: a shorter shared key is guessable offline from one handshake


class Server(server.Server):
    """The peer server answering every probe kind that has a responder (unless `responders` says)."""

    def __init__(self, listen, allow=server.LOOPBACK, key=None, *, responders=None, **limits):
        super().__init__(listen, allow, key, responders=probes.responders() if responders is None else responders,
                         **limits)


def parse_listen(text):
    """A listen address: 'HOST:PORT', '[V6]:PORT', 'HOST' or ':PORT' (all addresses) -> (host, port)."""
    try:
        return split_address(text, default_host="::", min_port=0)
    except ValueError:
        raise UsageError(f'--listen "{text}": port must be 0-65535 (example: [::]:7171)') from None


def parse_ports(text):
    """'32768-60999' or '7000,7100-7199' -> ((first, last), ...); ValueError if malformed."""
    out = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ValueError(f'"{part.strip()}" is not a port or FIRST-LAST range') from None
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f'"{part.strip()}": ports are 1-65535, first <= last')
        out.append((lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class ServeConfig:
    """The [serve] table (and `netprobe serve` options): this host answers peers' probes."""
    listen: tuple = setting(STR_LIST, ["[::]:7171"], "addresses to listen on, HOST:PORT or [V6]:PORT")
    allow: tuple = setting(PREFIX_LIST, ["127.0.0.0/8", "::1/128"], "client prefixes allowed to connect")
    key: str = setting(STR, "", f"shared key clients must prove (HMAC challenge), at least {MIN_KEY} bytes; "
                                "empty: none")
    key_file: str = setting(STR, "", "file holding the shared key (instead of key); mode 0600 or 0640")
    handshake_timeout: float = setting(DURATION, 2.0, "time a connection has to complete its handshake",
                                       min=0.1, max=60)
    max_handshakes: int = setting(INT, 64, "connections in their handshake at once (the pre-authentication pool)",
                                  min=1, max=65536)
    max_sessions: int = setting(INT, 16, "concurrent sessions", min=1, max=4096)
    max_sessions_per_address: int = setting(INT, 4, "concurrent sessions from one client address",
                                            min=1, max=4096)
    idle_timeout: float = setting(DURATION, 30.0, "a session without a complete control line or probe "
                                                  "progress for this long is closed", min=1, max=86400)
    max_session_length: float = setting(DURATION, 3600.0, "longest a session may last (clients renew)",
                                        min=10, max=30 * 86400)
    max_rate: float = setting(RATE, 10e9, "total rate all sessions together may make this host send (bit/s)",
                              min=1e3, max=400e9)
    max_rate_per_address: float = setting(RATE, 0.0, "rate the sessions of one client address may make this "
                                                     "host send (bit/s); 0: max_rate", min=0, max=400e9)
    congestion_allow: tuple = setting(STR_LIST, [], "congestion controls a client may ask for; empty: the "
                                                    "host's net.ipv4.tcp_allowed_congestion_control")
    udp_ports: str = setting(STR, "32768-60999", "UDP ports a oneway session may receive on, "
                                                 "FIRST-LAST or a comma list")
    max_port_intervals: int = setting(INT, 20000, "oneway: a session's ports x the 4 intervals the receiver "
                                                  "keeps open", min=4, max=20000)
    max_port_intervals_total: int = setting(INT, 40000, "oneway: the same for all open sessions together "
                                                        "(the receivers keep about 11 kB a port)", min=4)
    oneway_rx_threads: int = setting(INT, 0, "oneway: receive sockets (one SO_REUSEPORT group) and threads per "
                                             "session, each taking every N-th source port; 0: min(source ports, "
                                             "CPUs, 4)", min=0, max=64)

    def check(self, where):
        for addr in self.listen:
            try:
                parse_listen(addr)
            except UsageError:
                raise where.error("listen", f'"{addr}" is not HOST:PORT (example: "[::]:7171")') from None
        if self.key and self.key_file:
            raise where.error("key_file", "give key or key_file, not both")
        if self.key and len(self.key.encode()) < MIN_KEY:
            raise where.error("key", f"the shared key has {len(self.key.encode())} bytes; use at least {MIN_KEY} "
                                     "(e.g. the output of: openssl rand -hex 16)")
        try:
            parse_ports(self.udp_ports)
        except ValueError as exc:
            raise where.error("udp_ports", str(exc)) from None
        for name in self.congestion_allow:
            if not name or len(name) > 15 or not name.isascii() or not name.replace("_", "").isalnum():
                raise where.error("congestion_allow", f'"{name}" is not a congestion control name')

    def shared_key(self):
        """The key as bytes (read from key_file if set), or None; UsageError for a key file others
        may read, or a key shorter than MIN_KEY bytes."""
        if not self.key_file:
            return self.key.encode() or None
        try:
            with open(self.key_file, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                key = fh.read(65537).strip()
        except OSError as exc:
            raise UsageError(f"key_file {self.key_file}: {exc.strerror}") from None
        if mode & (stat.S_IRWXO | stat.S_IWGRP):
            raise UsageError(f"key_file {self.key_file}: mode {stat.S_IMODE(mode):04o} lets others read or change "
                             f"the key: chmod 600 {self.key_file} (or 640, group netprobe)")
        if not key:
            raise UsageError(f"key_file {self.key_file}: the file is empty")
        if len(key) < MIN_KEY:
            raise UsageError(f"key_file {self.key_file}: the key has {len(key)} bytes; use at least {MIN_KEY} "
                             "(e.g. openssl rand -hex 16 > FILE)")
        return key

    def limits(self):
        """The settings netprobe.peer.server.Server enforces (LIMITS), as it takes them."""
        out = {name: getattr(self, name) for name in LIMITS}
        out.update(congestion_allow=tuple(self.congestion_allow), udp_ports=parse_ports(self.udp_ports))
        return out


def make_server(cfg):
    """The listening Server of a [serve] table."""
    server = Server([parse_listen(a) for a in cfg.listen], cfg.allow, cfg.shared_key(), **cfg.limits())
    log.info("serving %s on %s; allowed: %s", ", ".join(sorted(server.responders)),
             ", ".join(f"{h}:{p}" for h, p in server.addresses), ", ".join(str(n) for n in cfg.allow))
    return server


def run_server(cfg, stop):
    """Serve until `stop` (a threading.Event) is set."""
    make_server(cfg).serve_forever(stop)


__all__ = ["LIMITS", "ServeConfig", "Server", "make_server", "parse_listen", "run_server", "split_address"]
