"""The peer's control protocol as the hostile tests speak it: the one module to adapt when it changes.

The legitimate client goes through the product's own `connect()`; attackers
use raw sockets (bound to a chosen source address) so they can send what no
real client would: half a line, a wrong proof, a huge or malformed line, a
session id that belongs to someone else.

Wire (one JSON object per line):
  server -> {"netprobe": 1, "challenge": C, ...}        greeting
  client -> {"netprobe": 1, "kind": K, ...fields, "auth": proof of the key over C}
  server -> {"ok": true, ...} | {"ok": false, "error": "..."} and closes
"""
import json
import select
import socket
import time

from netprobe.peer import client, protocol

PROTOCOL = 1
HELLO_MAX = 4096              # the server's bound on a handshake line


def sign(key, challenge, hello):
    """The client's proof of `key` for this greeting's challenge and this hello."""
    return protocol.auth_mac(key, challenge, hello)


def dial(address, source=None, timeout=5.0):
    """A TCP connection to the peer from `source` (an address on this host) or the route's choice."""
    s = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source:
            s.bind((source, 0))
        s.connect(address)
    except OSError:
        s.close()
        raise
    return s


def send(sock, obj):
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class Reader:
    """Lines from a socket with a deadline; keeps what it read past the last line."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def line(self, timeout=5.0, limit=64 << 20):
        """The next line (bytes, no newline); None at EOF; TimeoutError if none within `timeout`."""
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete line")
            if not select.select([self.sock], [], [], left)[0]:
                continue
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                continue
            self.buf += chunk
            if len(self.buf) > limit:
                raise ValueError(f"line longer than {limit} bytes")
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def json(self, timeout=5.0):
        """The next line parsed; None at EOF."""
        line = self.line(timeout)
        return None if line is None else json.loads(line)

    def rest(self, timeout=5.0):
        """Every line until the server closes (a list of parsed lines, or raw bytes where not JSON),
        and whether it closed within `timeout`."""
        out, end = [], time.monotonic() + timeout
        while True:
            try:
                line = self.line(max(0.0, end - time.monotonic()))
            except TimeoutError:
                return out, False
            if line is None:
                return out, True
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append(line)


def accepted(msg):
    return isinstance(msg, dict) and msg.get("ok") is True


def why(msg):
    """A reply's error text, or the reply itself when it has none (None: the peer closed)."""
    return str(msg.get("error") if isinstance(msg, dict) and "error" in msg else msg)[:160]


def is_refusal(msg):
    return isinstance(msg, dict) and msg.get("ok") is False and isinstance(msg.get("error"), str) \
        and bool(msg["error"])


class Session:
    """A raw control connection: dial, read the greeting, send a hello (signed or forged)."""

    def __init__(self, address=None, source=None, timeout=5.0, sock=None):
        self.sock = sock or dial(address, source, timeout)
        self.reader = Reader(self.sock)
        self.greeting = None

    def greet(self, timeout=5.0):
        self.greeting = self.reader.json(timeout)
        return self.greeting

    def hello(self, kind, key=None, auth=None, timeout=5.0, **fields):
        """Send a hello of `kind` (signed with `key`, or carrying `auth` as given); the reply
        (the greeting itself if that was already a refusal, e.g. busy)."""
        if self.greeting is None:
            self.greet(timeout)
        if not isinstance(self.greeting, dict) or is_refusal(self.greeting):
            return self.greeting
        msg = {"netprobe": PROTOCOL, "kind": kind, **fields}
        if auth is not None:
            msg["auth"] = auth
        elif key is not None:
            msg["auth"] = sign(key, str(self.greeting.get("challenge", "")), msg)
        send(self.sock, msg)
        return self.reader.json(timeout)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_session(address, kind, key, source=None, timeout=5.0, **fields):
    """A signed session from `source`: (Session, reply)."""
    s = Session(address, source, timeout)
    try:
        return s, s.hello(kind, key, timeout=timeout, **fields)
    except BaseException:
        s.close()
        raise


def legit_connect(address, kind, key, timeout=5.0, **fields):
    """A session opened by the product's own client, as a Session (after "ok")."""
    ch = client.connect(f"{address[0]}:{address[1]}", kind, key=key, timeout=timeout, **fields)
    s = Session(sock=ch.sock)
    s.reader.buf = ch.framer.pending          # lines the channel read past the "ok"
    return s


# -- per-kind messages after the handshake -----------------------------------------------------

def capacity_setup(sess, udp_port, token):
    send(sess.sock, {"udp_port": udp_port, "token": token})
    return sess.reader.json()


def capacity_plan(sess, rows):
    """Send a plan (rows: train, count, size, primers, primer_size, gap_ns)."""
    send(sess.sock, {"plan": rows})


def oneway_fields(session_hex, nports, udp_port=0):
    return {"session": session_hex, "nports": nports, "udp_port": udp_port, "grace_ns": 10_000_000}


def throughput_up_fields(session_hex, rate_down, sample_ns=100_000_000):
    return {"role": "up", "session": session_hex, "rate_down": rate_down, "sample_ns": sample_ns}


def throughput_down_fields(session_hex, up_reply, congestion=""):
    """The down leg's hello fields, given the up leg's reply (whatever it carries to join by)."""
    extra = {k: v for k, v in up_reply.items() if k not in ("ok", "error")}
    return {"role": "down", "session": session_hex, "pacing": False, "congestion": congestion, **extra}
