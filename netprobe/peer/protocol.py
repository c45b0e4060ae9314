"""The peer control protocol, sans-IO: bytes and an explicit `now` in, events and bytes out.

Nothing here touches a socket, a thread or a clock; server.py and client.py
do the I/O and feed what they read into these machines.

Wire rules (every message is one JSON object on one line, UTF-8, "\\n"-ended):

  server -> greeting   {"netprobe": 1, "nonce": N}        N: 32 hex digits, fresh per connection;
                       plus "challenge": N when the server has a shared key
  client -> hello      {"netprobe": 1, "kind": K, ...fields, "auth": A}
                       A = hex HMAC-SHA256(key, AUTH_LABEL + challenge + "\\n" + canonical(hello minus
                       "auth")): the proof covers the challenge and every field of the hello, so a
                       man in the middle can neither replay it nor change a field
  server -> reply      {"ok": true, ...} and the session belongs to the kind's responder, or
                       {"ok": false, "error": "..."} and the server closes

A hello line is at most HELLO_MAX bytes and must be complete within the
server's handshake deadline; a line after the handshake is at most the
limit its framer was made with. A refusal names the limit's setting.
"""
import enum
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field

PROTOCOL = 1
HELLO_MAX = 4096               # bytes in a greeting, hello or reply line
ERROR_MAX = 200                # characters of a peer's error text we keep
AUTH_LABEL = b"netprobe auth v1:"
KEY_LABEL = b"netprobe oneway v2 session key:"
HEX_RE = re.compile(r"[0-9a-f]{64}")
NONCE_RE = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ProtocolError(ValueError):
    """Bytes that break the protocol; the text says what, for a refusal or a log line."""


class LineTooLong(ProtocolError):
    pass


# -- framing -----------------------------------------------------------------------------------

class LineFramer:
    """Splits a byte stream into lines of at most `limit` bytes (the newline not counted).

    A line longer than the limit raises LineTooLong as soon as the excess is
    seen, so memory stays within about `limit` plus one read whatever the peer
    sends. Bytes after the last complete line stay in `pending`.
    """

    def __init__(self, limit, initial=b""):
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0             # bytes of _buf known to hold no newline
        self.feed(initial)

    def feed(self, data):
        self._buf += data

    def next_line(self):
        """The next complete line (bytes, without the newline), or None until one is complete."""
        end = self._buf.find(b"\n", self._scanned, self.limit + 1)
        if end < 0:
            self._scanned = min(len(self._buf), self.limit + 1)
            if len(self._buf) > self.limit:
                raise LineTooLong(f"line longer than {self.limit} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        return line

    def lines(self, data=b""):
        """Feed `data`; every complete line now available. An over-long line raises LineTooLong
        once the lines before it have been returned (by this call or the next)."""
        self.feed(data)
        out = []
        try:
            while (line := self.next_line()) is not None:
                out.append(line)
        except LineTooLong:
            if not out:
                raise
        return out

    @property
    def pending(self):
        return bytes(self._buf)


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def decode(line):
    """One line -> a JSON object (dict); ProtocolError for anything else (NaN, nesting bombs too)."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def encode(obj):
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _is_protocol(value):
    return type(value) is int and value == PROTOCOL     # True == 1 in Python, not on the wire


def canonical(obj):
    """The byte form both ends sign: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def refusal(error):
    """The one line that refuses a session: {"ok": false, "error": ...}."""
    return encode({"ok": False, "error": error})


def clean_text(value, limit=ERROR_MAX):
    """A peer's text made safe for records and logs: control characters (CR, ESC, ...) as "?",
    at most `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True, default=str)
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- keys --------------------------------------------------------------------------------------

def auth_mac(key, challenge, hello):
    """The client's proof: HMAC-SHA256 over the challenge and the hello without its "auth" field."""
    body = {k: v for k, v in hello.items() if k != "auth"}
    return hmac.new(key, AUTH_LABEL + challenge.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()


def check_auth(key, challenge, hello):
    """True when the hello's "auth" is the right proof; False for anything else (not a string,
    not 64 lowercase hex digits, wrong value). Compared in constant time."""
    got = hello.get("auth")
    if not isinstance(got, str) or not HEX_RE.fullmatch(got):
        return False
    return hmac.compare_digest(auth_mac(key, challenge, hello).encode(), got.encode())


def session_key(shared, session_hex):
    """The UDP tag key of a oneway session: HMAC-SHA256(shared key, label + session id).

    Both ends derive it, so the shared key itself never travels and each
    session's tags differ."""
    return hmac.new(shared, KEY_LABEL + session_hex.encode(), hashlib.sha256).digest()


# -- handshake ---------------------------------------------------------------------------------

class State(enum.Enum):
    AWAIT_GREETING = "await greeting"   # client: nothing from the server yet
    AWAIT_HELLO = "await hello"         # server: greeting sent
    AWAIT_REPLY = "await reply"         # client: hello sent
    DONE = "done"                       # handshake complete: the session belongs to the responder
    CLOSED = "closed"                   # refused (the refusal is in data_to_send) or failed


@dataclass(frozen=True)
class Hello:
    """Server: a well-formed, authenticated hello of a served kind."""
    kind: str
    fields: dict


@dataclass(frozen=True)
class Refused:
    """Server: the handshake failed; the refusal line is queued. `counter` names the cause
    (bad_handshake, bad_auth, unknown_kind, timeout)."""
    error: str
    counter: str


@dataclass(frozen=True)
class Accepted:
    """Client: the server said ok; `reply` is its whole reply line, `nonce` the greeting's."""
    reply: dict
    nonce: str


@dataclass(frozen=True)
class Rejected:
    """Client: the server refused, or spoke something other than this protocol."""
    error: str


@dataclass
class _Machine:
    state: State
    deadline: float
    _out: bytearray = field(default_factory=bytearray)

    def data_to_send(self):
        """Bytes to write now (the caller sends all of them, then may close on CLOSED)."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def _fail(self, event):
        self.state = State.CLOSED
        return [event]


class ServerHandshake(_Machine):
    """The server's side of one connection's handshake.

    ServerHandshake(nonce, now, timeout, kinds, key) queues the greeting;
    receive_data(data, now) returns [] (need more), [Hello] or [Refused];
    tick(now) returns [Refused] once the deadline passed. After Hello,
    `trailing` holds bytes the client sent beyond its hello line.
    """

    def __init__(self, nonce, now, timeout, kinds, key=None):
        if not NONCE_RE.fullmatch(nonce):
            raise ValueError("nonce must be 32 lowercase hex digits")
        super().__init__(State.AWAIT_HELLO, now + timeout)
        self.nonce = nonce
        self.timeout = timeout
        self.kinds = frozenset(kinds)
        self.key = key
        self.trailing = b""
        self._framer = LineFramer(HELLO_MAX)
        greeting = {"netprobe": PROTOCOL, "nonce": nonce}
        if key:
            greeting["challenge"] = nonce
        self._out += encode(greeting)

    def _refuse(self, error, counter):
        self._out += refusal(error)
        return self._fail(Refused(error, counter))

    def tick(self, now):
        if self.state is State.AWAIT_HELLO and now >= self.deadline:
            return self._refuse(f"bad handshake: hello incomplete after handshake_timeout={self.timeout:g}s",
                                "timeout")
        return []

    def receive_data(self, data, now):
        if self.state is not State.AWAIT_HELLO:
            return []
        if not data:
            self.state = State.CLOSED
            return [Refused("connection closed during the handshake", "bad_handshake")]
        try:
            line = self._framer.lines(data)[:1]
        except LineTooLong:
            return self._refuse(f"bad handshake: hello longer than {HELLO_MAX} bytes", "bad_handshake")
        if not line:
            return self.tick(now)
        self.trailing = self._framer.pending
        try:
            hello = decode(line[0])
        except ProtocolError as exc:
            return self._refuse(f"bad handshake: {exc}", "bad_handshake")
        if not _is_protocol(hello.get("netprobe")):
            return self._refuse(f"bad handshake: not a netprobe protocol {PROTOCOL} hello", "bad_handshake")
        if self.key and not check_auth(self.key, self.nonce, hello):
            return self._refuse("authentication failed", "bad_auth")
        kind = hello.get("kind")
        if not isinstance(kind, str) or kind not in self.kinds:
            served = ", ".join(sorted(self.kinds)) or "none yet"
            name = repr(clean_text(kind, 40)) if isinstance(kind, str) else clean_text(kind, 40)
            return self._refuse(f"this peer does not serve kind {name} (serves: {served})",
                                "unknown_kind")
        self.state = State.DONE
        return [Hello(kind, {k: v for k, v in hello.items() if k != "auth"})]


class ClientHandshake(_Machine):
    """The client's side: ClientHandshake(kind, fields, key, now, timeout); feed what the server
    sends to receive_data(data, now) -> [] (need more), [Accepted] or [Rejected]; send
    data_to_send() after each call. `trailing` holds bytes after the reply line."""

    def __init__(self, kind, fields, key, now, timeout):
        super().__init__(State.AWAIT_GREETING, now + timeout)
        self.hello = {"netprobe": PROTOCOL, "kind": kind, **fields}
        self.key = key
        self.nonce = ""
        self.trailing = b""
        self._framer = LineFramer(HELLO_MAX)

    def tick(self, now):
        if self.state in (State.AWAIT_GREETING, State.AWAIT_REPLY) and now >= self.deadline:
            return self._fail(Rejected("handshake timed out"))
        return []

    def receive_data(self, data, now):
        if self.state not in (State.AWAIT_GREETING, State.AWAIT_REPLY):
            return []
        if not data:
            return self._fail(Rejected("connection closed during the handshake"))
        try:
            lines = self._framer.lines(data)
        except LineTooLong:
            return self._fail(Rejected(f"handshake line longer than {HELLO_MAX} bytes"))
        for n, line in enumerate(lines):
            try:
                msg = decode(line)
            except ProtocolError as exc:
                return self._fail(Rejected(f"not a netprobe peer ({exc})"))
            if msg.get("ok") is False:            # refused: before the hello (access, busy) or after
                return self._fail(Rejected(clean_text(msg.get("error"))))
            if self.state is State.AWAIT_GREETING:
                event = self._greeting(msg)
            elif msg.get("ok") is True:
                self.state = State.DONE
                rest = b"".join(x + b"\n" for x in lines[n + 1:])
                self.trailing = rest + self._framer.pending
                return [Accepted(msg, self.nonce)]
            else:
                event = Rejected("the peer's reply is neither ok nor a refusal")
            if event:
                return self._fail(event)
        return self.tick(now)

    def _greeting(self, msg):
        if not _is_protocol(msg.get("netprobe")):
            return Rejected(f"not a netprobe protocol {PROTOCOL} peer")
        nonce, challenge = msg.get("nonce"), msg.get("challenge")
        if not isinstance(nonce, str) or not NONCE_RE.fullmatch(nonce):
            return Rejected("the peer's greeting has no valid nonce")
        self.nonce = nonce
        if challenge is not None:
            if not isinstance(challenge, str) or not NONCE_RE.fullmatch(challenge):
                return Rejected("the peer's challenge is not 32 hex digits")
            if not self.key:
                return Rejected("the peer asks for a shared key and none is configured")
            self.hello["auth"] = auth_mac(self.key, challenge, self.hello)
        data = encode(self.hello)
        if len(data) > HELLO_MAX + 1:
            return Rejected(f"our hello is longer than {HELLO_MAX} bytes")
        self._out += data
        self.state = State.AWAIT_REPLY
        return None
