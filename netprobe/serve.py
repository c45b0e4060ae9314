"""`netprobe serve`: the peer side that probes on other hosts talk to.

One TCP listener; each connection opens with a handshake of single JSON
lines (at most 4 KiB, 5 s):

  server -> {"netprobe": 1, "challenge": "<hex>"}            (challenge only with a key)
  client -> {"netprobe": 1, "kind": "throughput", "auth": "<hex hmac-sha256(key, challenge)>", ...}
  server -> {"ok": false, "error": "..."} and closes, or hands the socket to
            the kind's responder, which answers reply_ok() or refuse() itself
            once it has checked the fields it needs.

Probe kinds that need a peer register a responder in RESPONDERS. Access is
limited by client prefix (default: loopback only), by an optional shared
key, and by a cap on concurrent sessions, so an open peer cannot be turned
into a traffic source for strangers.
"""
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass

from netprobe.config.schema import INT, PREFIX_LIST, RATE, STR, STR_LIST, setting
from netprobe.errors import NetprobeError, PeerError, UsageError

log = logging.getLogger("netprobe.serve")

PROTOCOL = 1
DEFAULT_PORT = 7171
HELLO_MAX = 4096
HELLO_TIMEOUT = 5.0
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

# kind -> callable(sock, hello: dict, server: Server); runs on the session's thread and must
# answer with reply_ok(sock) or refuse(sock, why) first
RESPONDERS = {}


def register_builtin_responders():
    """Import the probe kinds that answer as a peer (they add themselves to RESPONDERS)."""
    import netprobe.probes.capacity.responder  # noqa: F401
    import netprobe.probes.oneway.responder  # noqa: F401
    import netprobe.probes.throughput.responder  # noqa: F401


def parse_listen(text):
    """A listen address: 'HOST:PORT', '[V6]:PORT', 'HOST' or ':PORT' (all addresses) -> (host, port)."""
    try:
        return split_address(text, default_host="::", min_port=0)
    except ValueError:
        raise UsageError(f'--listen "{text}": port must be 0-65535 (example: [::]:7171)') from None


def read_line(sock, limit=HELLO_MAX):
    """One newline-terminated line of at most `limit` bytes, or ValueError.

    Peeks first and then consumes exactly the line, so bytes a client sends
    right after it stay in the socket for the responder.
    """
    deadline = time.monotonic() + (sock.gettimeout() or HELLO_TIMEOUT)
    while True:
        peek = sock.recv(limit + 1, socket.MSG_PEEK)
        if not peek:
            raise ValueError("connection closed during handshake")
        end = peek.find(b"\n")
        if end >= 0:
            return sock.recv(end + 1)[:-1]
        if len(peek) > limit:
            raise ValueError("handshake line too long")
        if time.monotonic() > deadline:
            raise ValueError("handshake line incomplete")
        time.sleep(0.005)       # partial line: wait for the rest (bounded by the socket timeout)


def send_json(sock, obj):
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def reply_ok(sock):
    send_json(sock, {"ok": True})


def refuse(sock, why):
    """Tell the client why, in one line, and close."""
    try:
        sock.settimeout(0.5)
        send_json(sock, {"ok": False, "error": why})
    except OSError:
        pass
    sock.close()


def split_address(text, default_port=DEFAULT_PORT, default_host=None, min_port=1):
    """'HOST', 'HOST:PORT', '[V6]' or '[V6]:PORT' -> (host, port); ValueError if malformed.

    An empty host is `default_host` where one is given (':7171' to listen on all)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, default_port      # a bare IPv6 address has several colons
    host = host or default_host
    try:
        port = int(port)
    except ValueError:
        port = -1
    if not host or not min_port <= port <= 65535:
        raise ValueError(f'"{text}" is not HOST[:PORT]')
    return host, port


def connect(address, kind, *, key=b"", timeout=5.0, **fields):
    """Open a session of `kind` with the peer at `address`; returns the socket after "ok".

    Raises PeerError with a one-line reason: unreachable, refused, wrong key, not served.
    """
    try:
        host, port = split_address(address)
    except ValueError as exc:
        raise PeerError(str(exc)) from None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise PeerError(f"cannot connect to {address}: {exc.strerror or exc}", unreachable=True) from None
    try:
        greeting = json.loads(read_line(sock))
        if not isinstance(greeting, dict):
            raise ValueError("not a netprobe greeting")
        if greeting.get("ok") is False:       # refused before the handshake (prefix, busy)
            raise PeerError(f"peer {address} refused: {greeting.get('error')}")
        hello = {"netprobe": PROTOCOL, "kind": kind, **fields}
        if "challenge" in greeting:
            if not key:
                raise PeerError(f"peer {address} asks for a shared key and none is configured")
            hello["auth"] = client_auth(key, str(greeting["challenge"]))
        send_json(sock, hello)
        reply = json.loads(read_line(sock))
    except PeerError:
        sock.close()
        raise
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        sock.close()
        raise PeerError(f"peer {address}: handshake failed: {exc}") from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        sock.close()
        why = reply.get("error") if isinstance(reply, dict) else reply
        raise PeerError(f"peer {address} refused: {why}")
    return sock


class Server:
    def __init__(self, listen=(("::", DEFAULT_PORT),), allow=LOOPBACK, key=None, max_sessions=16,
                 max_rate=10e9):
        self.allow = tuple(allow)
        self.key = key
        self.max_sessions = max_sessions
        self.sessions = threading.BoundedSemaphore(max_sessions)
        self.stop = threading.Event()
        self.counters = {"accepted": 0, "refused_prefix": 0, "refused_busy": 0, "bad_handshake": 0,
                         "bad_auth": 0, "unknown_kind": 0}
        self.max_rate = max_rate      # bit/s all sessions together may ask this peer to send
        self._rate_used = 0.0
        self._lock = threading.Lock()
        self.state = {}               # per-kind shared state of the responders
        self._logged = set()
        self.socks = [self._listen(h, p) for h, p in listen]

    @staticmethod
    def _listen(host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            s.close()
            raise NetprobeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        s.listen(128)
        s.settimeout(0.2)
        return s

    def reserve_rate(self, bps):
        """Claim `bps` of the send budget; False if that would exceed max_rate."""
        with self._lock:
            if self._rate_used + bps > self.max_rate:
                return False
            self._rate_used += bps
            return True

    def release_rate(self, bps):
        with self._lock:
            self._rate_used = max(0.0, self._rate_used - bps)

    @property
    def addresses(self):
        return [s.getsockname()[:2] for s in self.socks]

    def allowed(self, addr):
        ip = ipaddress.ip_address(addr)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    def serve_forever(self, stop=None):
        """Serve until self.stop, or `stop` (an Event a signal handler sets), is set."""
        threads = [threading.Thread(target=self._accept_loop, args=(s,), daemon=True) for s in self.socks]
        for t in threads:
            t.start()
        # Wait in slices: a signal the kernel hands to another thread runs its Python handler
        # only when the main thread next wakes, and a wait without timeout never does.
        while not self.stop.wait(0.2):
            if stop is not None and stop.is_set():
                self.stop.set()
        for t in threads:
            t.join()
        for s in self.socks:
            s.close()

    def _accept_loop(self, lsock):
        while not self.stop.is_set():
            try:
                conn, addr = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stop.is_set():
                    return
                time.sleep(0.05)          # e.g. EMFILE: back off instead of spinning
                continue
            if not self.allowed(addr[0]):
                self.counters["refused_prefix"] += 1
                refuse(conn, f"client {addr[0]} is not in the allow list")
                continue
            if not self.sessions.acquire(blocking=False):
                self.counters["refused_busy"] += 1
                refuse(conn, f"busy: {self.max_sessions} sessions already")
                continue
            threading.Thread(target=self._session, args=(conn, addr), daemon=True).start()

    def _session(self, conn, addr):
        try:
            conn.settimeout(HELLO_TIMEOUT)
            hello = self._handshake(conn, addr)
            if hello is None:
                return
            self.counters["accepted"] += 1
            conn.settimeout(None)
            RESPONDERS[hello["kind"]](conn, hello, self)
        except OSError as exc:
            log.debug("session from %s ended: %s", addr[0], exc)
        except Exception as exc:   # a responder's bug ends its session, never the server
            key = (type(exc).__name__, str(exc))
            if key not in self._logged:
                self._logged.add(key)
                log.error("session from %s failed: %s: %s (logged once)", addr[0], *key)
        finally:
            conn.close()
            self.sessions.release()

    def _handshake(self, conn, addr):
        challenge = secrets.token_hex(16) if self.key else None
        send_json(conn, {"netprobe": PROTOCOL, **({"challenge": challenge} if challenge else {})})
        try:
            hello = json.loads(read_line(conn))
            if not isinstance(hello, dict) or hello.get("netprobe") != PROTOCOL:
                raise ValueError(f"not a netprobe protocol {PROTOCOL} hello")
        except (ValueError, UnicodeDecodeError) as exc:
            self.counters["bad_handshake"] += 1
            refuse(conn, f"bad handshake: {exc}")
            return None
        if self.key:
            want = hmac.new(self.key, challenge.encode(), hashlib.sha256).hexdigest()
            got = hello.get("auth")
            if not isinstance(got, str) or not hmac.compare_digest(want, got):
                self.counters["bad_auth"] += 1
                log.warning("refused %s: wrong or missing key", addr[0])
                refuse(conn, "authentication failed")
                return None
        kind = hello.get("kind")
        if kind not in RESPONDERS:
            self.counters["unknown_kind"] += 1
            served = ", ".join(sorted(RESPONDERS)) or "none yet"
            refuse(conn, f"this peer does not serve kind {kind!r} (serves: {served})")
            return None
        return hello


def client_auth(key, challenge):
    """The client's proof of the shared key for a server challenge."""
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ServeConfig:
    """The [serve] table (and `netprobe serve` options): this host answers peers' probes."""
    listen: tuple = setting(STR_LIST, ["[::]:7171"], "addresses to listen on, HOST:PORT or [V6]:PORT")
    allow: tuple = setting(PREFIX_LIST, ["127.0.0.0/8", "::1/128"], "client prefixes allowed to connect")
    key: str = setting(STR, "", "shared key clients must prove (HMAC challenge); empty: none")
    key_file: str = setting(STR, "", "file holding the shared key (instead of key)")
    max_sessions: int = setting(INT, 16, "concurrent sessions", min=1, max=4096)
    max_rate: float = setting(RATE, 10e9, "total rate all sessions together may ask this host to send (bit/s)",
                              min=1e3, max=400e9)

    def check(self, where):
        for addr in self.listen:
            try:
                parse_listen(addr)
            except UsageError:
                raise where.error("listen", f'"{addr}" is not HOST:PORT (example: "[::]:7171")') from None
        if self.key and self.key_file:
            raise where.error("key_file", "give key or key_file, not both")

    def shared_key(self, where=None):
        """The key as bytes (read from key_file if set), or None."""
        if not self.key_file:
            return self.key.encode() or None
        try:
            with open(self.key_file, "rb") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"key_file {self.key_file}: {exc.strerror}") from None
        if not key:
            raise UsageError(f"key_file {self.key_file}: the file is empty")
        return key


def run_server(cfg, stop):
    """Serve until `stop` (a threading.Event) is set."""
    register_builtin_responders()
    server = Server([parse_listen(a) for a in cfg.listen], cfg.allow, cfg.shared_key(), cfg.max_sessions,
                    cfg.max_rate)
    log.info("serving %s on %s; allowed: %s", ", ".join(sorted(RESPONDERS)),
             ", ".join(f"{h}:{p}" for h, p in server.addresses), ", ".join(str(n) for n in cfg.allow))
    server.serve_forever(stop)
