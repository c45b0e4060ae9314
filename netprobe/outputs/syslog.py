"""syslog sink: RFC 5424 messages to a local socket or a remote UDP/TCP collector.

  <PRI>1 TIMESTAMP HOSTNAME netprobe PROCID MSGID [netprobe@32473 key="value" ...] MSG

MSGID is the record type, the structured data holds the record's fields as
they read on the text line, and MSG is the text line itself. TCP uses RFC 6587
octet-counting framing; a unix stream socket gets NUL-terminated messages (as
glibc's syslog(3) sends them).

A dead collector costs little: connects and sends time out after 1 s, a
failure starts an exponential backoff (0.25 s doubling to 30 s) during which
write() fails at once, and every failure raises SyslogUnavailable with one
stable message, which the SinkRunner logs once and counts.
"""
import errno
import ipaddress
import logging
import os
import re
import socket
import time
from dataclasses import dataclass

from netprobe import redact, units
from netprobe.config.schema import CHOICE, STR, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.results import BREACH, CLEAR, DROPS, ERROR, GAP, RESULT, iso_time
from netprobe.units import show

log = logging.getLogger("netprobe.outputs")

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {ERROR: 3, BREACH: 4, DROPS: 4, GAP: 4, CLEAR: 5, RESULT: 6}
APP_NAME = "netprobe"
SD_ID = "netprobe@32473"      # 32473: the enterprise number RFC 5612 reserves for examples

TIMEOUT = 1.0                 # seconds, for connect and send
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 30.0

ADDRESS_EXAMPLES = "examples: /dev/log, udp://127.0.0.1:514, tcp://logs.example.net:6514, udp://[::1]:514"
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*\.?$")


def parse_address(text):
    """('unix', path, None) or ('udp' | 'tcp', host, port); ValueError(reason) if malformed."""
    if text.startswith("/"):
        if "\0" in text or len(text.encode()) > 107:
            raise ValueError("a unix socket path is at most 107 bytes, without NUL")
        return "unix", text, None
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("udp", "tcp"):
        raise ValueError("neither a socket path (starting with /) nor udp://HOST:PORT or tcp://HOST:PORT")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
        if not sep or not port.startswith(":"):
            raise ValueError("no :PORT after the [IPv6 address]")
        port = port[1:]
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise ValueError("no :PORT")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:514")
        if not _HOST_RE.match(host):
            raise ValueError(f"{show(host)} is not a host name or IP address")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {show(port)} is not a number from 1 to 65535")
    return scheme, host, int(port)


@dataclass(frozen=True)
class SyslogConfig(SinkConfig):
    """[output.syslog]: RFC 5424 messages to a syslog daemon."""
    address: str = setting(STR, "/dev/log", "unix socket path, udp://HOST:PORT or tcp://HOST:PORT "
                                            "(IPv6: udp://[::1]:514)")
    facility: str = setting(CHOICE, "daemon", "syslog facility", choices=tuple(FACILITIES))

    def check(self, where):
        """The address must parse now, so a typo fails check-config rather than every send."""
        super().check(where)
        try:
            parse_address(self.address)
        except ValueError as exc:
            raise where.error("address", f"{show(self.address)} is not a syslog address: {exc} "
                                         f"({ADDRESS_EXAMPLES})") from None


def _sd_value(v):
    """A field as the text line shows it (Quantity with its unit, yes/no, short floats)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return units.short(v)
    return str(v)


def _sd_escape(text):
    """PARAM-VALUE escaping, RFC 5424 §6.3.3: backslash, double quote and ] get a backslash."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _sd_name(key):
    """SD-NAME: 1 to 32 printable US-ASCII characters except '=', space, ']' and '"'."""
    name = "".join(c if 33 <= ord(c) <= 126 and c not in '=]"' else "_" for c in str(key))[:32]
    return name or "_"


def structured_data(record):
    """One SD-ELEMENT with probe, name and the fields as the text line shows them (sla=>=950Mbit/s)."""
    params = [("probe", record.probe), ("name", record.name)]
    for k, v in record.fields.items():
        if k == "sla_op":
            continue
        if k == "threshold" and "sla_op" in record.fields:
            k, v = "sla", f"{record.fields['sla_op']}{v}"
        params.append((k, v))
    body = " ".join(f'{_sd_name(k)}="{_sd_escape(_sd_value(v))}"' for k, v in params)
    return f"[{SD_ID} {body}]"


def format_message(record, facility, hostname, procid):
    """The RFC 5424 message for `record` (str, without transport framing)."""
    pri = FACILITIES[facility] * 8 + SEVERITIES.get(record.type, 6)
    return redact.scrub(f"<{pri}>1 {iso_time(record.ts)} {hostname} {APP_NAME} {procid} {record.type} "
                        f"{structured_data(record)} {record.to_text()}")


def _hostname():
    """HOSTNAME field: printable US-ASCII, at most 255 characters, '-' if unknown."""
    name = "".join(c for c in socket.gethostname() if 33 <= ord(c) <= 126)[:255]
    return name or "-"


class SyslogUnavailable(OSError):
    """The collector cannot be reached; the record was dropped."""


class SyslogSink(Sink):
    """Sends each record as one RFC 5424 message; reconnects with backoff."""

    def __init__(self, cfg, name="syslog"):
        self.cfg = cfg
        self.name = name
        self._kind, self._addr, self._port = parse_address(cfg.address)
        self._hostname = _hostname()
        self._procid = os.getpid()
        self._sock = None
        self._stream = False          # connected to a unix stream socket (not datagram)
        self._retry_at = 0.0          # monotonic time before which no connect is tried
        self._delay = BACKOFF_FIRST
        self._down_message = None     # message of the last failure, repeated during backoff
        self._lost = 0                # records dropped since the collector went away

    def start(self, run_info):
        """Take host name and PID now: the daemon may have forked since the sink was built."""
        self._hostname = _hostname()
        self._procid = os.getpid()

    def write(self, record):
        msg = format_message(record, self.cfg.facility, self._hostname, self._procid)
        msg = msg.encode("utf-8", "replace")
        if self._sock is not None:
            try:
                self._send(msg)
                return
            except OSError:
                # The old connection went stale (collector restarted): one fresh try.
                self._disconnect()
        self._connect()
        try:
            self._send(msg)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:      # this record's fault, not the collector's
                raise OSError(f"syslog {self.cfg.address}: a {len(msg)}-byte message is too large; "
                              f"record dropped") from None
            self._disconnect()
            raise self._down(exc) from None

    def close(self):
        self._disconnect()

    def _send(self, msg):
        if self._kind == "tcp":
            msg = b"%d %s" % (len(msg), msg)          # RFC 6587 octet counting
        elif self._stream:
            msg += b"\0"                              # unix stream: NUL-terminated, as glibc sends
        self._sock.sendall(msg, socket.MSG_NOSIGNAL)

    def _connect(self):
        if time.monotonic() < self._retry_at:
            self._lost += 1
            raise SyslogUnavailable(self._down_message)
        try:
            self._sock = self._open()
        except OSError as exc:
            raise self._down(exc) from None
        if self._lost:
            log.warning("sink %s: syslog %s is reachable again; %d records were dropped meanwhile",
                        self.name, self.cfg.address, self._lost)
        self._lost = 0
        self._delay = BACKOFF_FIRST
        self._down_message = None

    def _open(self):
        if self._kind == "unix":
            return self._open_unix()
        socktype = socket.SOCK_DGRAM if self._kind == "udp" else socket.SOCK_STREAM
        family, _, _, _, addr = socket.getaddrinfo(self._addr, self._port, type=socktype)[0]
        sock = socket.socket(family, socktype)
        try:
            sock.settimeout(TIMEOUT)
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        return sock

    def _open_unix(self):
        """Datagram first (what syslog daemons listen on); stream if the socket is SOCK_STREAM."""
        for socktype in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, socktype)
            try:
                sock.settimeout(TIMEOUT)
                sock.connect(self._addr)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE and socktype == socket.SOCK_DGRAM:
                    continue
                raise
            self._stream = socktype == socket.SOCK_STREAM
            return sock

    def _down(self, exc):
        """Start or extend the backoff and build the error the runner logs (once per message)."""
        reason = exc.strerror or str(exc) or type(exc).__name__
        self._down_message = (f"syslog {self.cfg.address}: {reason}; records are dropped until it is "
                              f"reachable (retrying with backoff up to {BACKOFF_MAX:.0f}s)")
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        self._lost += 1
        return SyslogUnavailable(self._down_message)

    def _disconnect(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
