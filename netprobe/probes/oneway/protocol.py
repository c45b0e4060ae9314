"""The oneway probe's control connection (see PROTOCOL.md beside this file).

One TCP connection per session, opened with serve.py's handshake (access
list, optional shared-key challenge). After "ok" both ends exchange JSON
lines of at most MAX_LINE bytes; the probes themselves travel as UDP
datagrams in wire format v2 (pyx/includes/wire.pxd).
"""
import hashlib
import hmac
import json

MAX_LINE = 4 << 20           # a results line for 5000 ports with histograms stays far below
KEY_LABEL = b"netprobe oneway v2 session key:"


def session_key(shared, session_hex):
    """The UDP tag key of a session: HMAC-SHA256(shared key, label + session id).

    Both ends derive it, so the shared key itself never travels and each
    session's tags differ."""
    return hmac.new(shared, KEY_LABEL + session_hex.encode(), hashlib.sha256).digest()


def send_line(sock, obj):
    """One JSON line; waits at most 2 s for buffer space, then the socket is non-blocking again."""
    data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    sock.settimeout(2.0)
    try:
        sock.sendall(data)
    finally:
        sock.setblocking(False)


class LineReader:
    """Non-blocking reader of JSON lines; `closed` once the peer closed or sent garbage."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""
        self.closed = False
        self.error = ""

    def read(self):
        """Every complete line available now, parsed (dicts only)."""
        out = []
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.closed, self.error = True, f"control connection failed: {exc.strerror or exc}"
                break
            if not chunk:
                self.closed, self.error = True, "control connection closed by the peer"
                break
            self.pending += chunk
            if len(self.pending) > MAX_LINE:
                self.closed, self.error = True, "control line too long"
                break
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                obj = None
            if not isinstance(obj, dict):
                self.closed, self.error = True, "malformed control line"
                break
            out.append(obj)
        return out
