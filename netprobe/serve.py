"""`netprobe serve`: the peer side that probes on other hosts talk to.

One TCP listener; each connection opens with a handshake of single JSON
lines (at most 4 KiB, 5 s):

  server -> {"netprobe": 1, "challenge": "<hex>"}            (challenge only with a key)
  client -> {"netprobe": 1, "kind": "throughput", "auth": "<hex hmac-sha256(key, challenge)>", ...}
  server -> {"ok": true} and hands the socket to the kind's responder,
            or {"ok": false, "error": "..."} and closes.

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
import os
import secrets
import signal
import socket
import threading
import time

from netprobe.errors import EXIT_OK, NetprobeError, UsageError

log = logging.getLogger("netprobe.serve")

PROTOCOL = 1
DEFAULT_PORT = 7171
HELLO_MAX = 4096
HELLO_TIMEOUT = 5.0
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

# kind -> callable(sock, hello: dict, server: Server); runs on the session's thread
RESPONDERS = {}


def parse_listen(text):
    """'HOST:PORT', '[V6]:PORT', 'HOST' or ':PORT' -> (host, port)."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f'--listen "{text}": port must be 0-65535 (example: [::]:7171)') from None
    return host or "::", port


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


class Server:
    def __init__(self, listen=(("::", DEFAULT_PORT),), allow=LOOPBACK, key=None, max_sessions=16):
        self.allow = tuple(allow)
        self.key = key
        self.max_sessions = max_sessions
        self.sessions = threading.BoundedSemaphore(max_sessions)
        self.stop = threading.Event()
        self.counters = {"accepted": 0, "refused_prefix": 0, "refused_busy": 0, "bad_handshake": 0,
                         "bad_auth": 0, "unknown_kind": 0}
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

    @property
    def addresses(self):
        return [s.getsockname()[:2] for s in self.socks]

    def allowed(self, addr):
        ip = ipaddress.ip_address(addr)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    def serve_forever(self):
        threads = [threading.Thread(target=self._accept_loop, args=(s,), daemon=True) for s in self.socks]
        for t in threads:
            t.start()
        self.stop.wait()
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
                self._refuse(conn, f"client {addr[0]} is not in the allow list")
                continue
            if not self.sessions.acquire(blocking=False):
                self.counters["refused_busy"] += 1
                self._refuse(conn, f"busy: {self.max_sessions} sessions already")
                continue
            threading.Thread(target=self._session, args=(conn, addr), daemon=True).start()

    @staticmethod
    def _refuse(conn, why):
        try:
            conn.settimeout(0.5)
            send_json(conn, {"ok": False, "error": why})
        except OSError:
            pass
        conn.close()

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
            self._refuse(conn, f"bad handshake: {exc}")
            return None
        if self.key:
            want = hmac.new(self.key, challenge.encode(), hashlib.sha256).hexdigest()
            got = hello.get("auth")
            if not isinstance(got, str) or not hmac.compare_digest(want, got):
                self.counters["bad_auth"] += 1
                log.warning("refused %s: wrong or missing key", addr[0])
                self._refuse(conn, "authentication failed")
                return None
        kind = hello.get("kind")
        if kind not in RESPONDERS:
            self.counters["unknown_kind"] += 1
            served = ", ".join(sorted(RESPONDERS)) or "none yet"
            self._refuse(conn, f"this peer does not serve kind {kind!r} (serves: {served})")
            return None
        send_json(conn, {"ok": True})
        return hello


def client_auth(key, challenge):
    """The client's proof of the shared key for a server challenge."""
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()


def main(args):
    listen = [parse_listen(a) for a in (args.listen or ["[::]:%d" % DEFAULT_PORT])]
    try:
        allow = tuple(ipaddress.ip_network(p, strict=False) for p in args.allow) if args.allow else LOOPBACK
    except ValueError as exc:
        raise UsageError(f"--allow: {exc} (example: 10.0.0.0/8)") from None
    key = None
    if args.key_file:
        try:
            with open(args.key_file, "rb") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"--key-file {args.key_file}: {exc.strerror}") from None
        if not key:
            raise UsageError(f"--key-file {args.key_file}: the file is empty")
    if args.max_sessions < 1:
        raise UsageError("--max-sessions must be at least 1")
    server = Server(listen, allow, key, args.max_sessions)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop.set())
    if args.duration:
        threading.Timer(args.duration, server.stop.set).start()
    log.info("serving on %s; allowed: %s; pid %d", ", ".join(f"{h}:{p}" for h, p in server.addresses),
             ", ".join(str(n) for n in allow), os.getpid())
    server.serve_forever()
    return EXIT_OK
