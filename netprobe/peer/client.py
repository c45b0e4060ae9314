"""The client side of a peer session: connect(), the control Channel, and PeerLink.

connect() runs protocol.ClientHandshake over a TCP connection and returns a
Channel (the socket plus its line framer). PeerLink is what every probe
kind with a peer shares: the start-up grace (a peer started beside us may
take a moment to listen), reconnect with backoff, and the connection
BREACH/CLEAR lines.
"""
import logging
import select
import socket
import time

from netprobe.errors import PeerError
from netprobe.peer import protocol
from netprobe.results import BREACH, CLEAR, Record

log = logging.getLogger("netprobe.peer")

DEFAULT_PORT = 7171
SEND_TIMEOUT = 2.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0     # reconnect delays, s
HELLO_EXTRA = {}          # fields every hello of this process carries: a mesh-timetabled test's worker
                          # puts its mesh version here ({"mesh": V}) before it starts
STARTUP_GRACE = 1.5                       # s a peer started beside us may take to listen
RENEW_MARGIN = 0.05                       # renew a session this share of its allowed length early


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


def send_line(sock, obj):
    """One line, waiting at most SEND_TIMEOUT for buffer space (OSError after); the socket's
    blocking mode is as it was afterwards."""
    before = sock.gettimeout()
    sock.settimeout(SEND_TIMEOUT)
    try:
        sock.sendall(protocol.encode(obj))
    finally:
        sock.settimeout(before)


class Channel:
    """A session's control connection: one JSON object per line, each at most `line_max` bytes.

    `reply` is the peer's ok line, `nonce` its greeting nonce. recv() waits for
    one line; poll() returns the lines available now and marks the channel
    closed (with `error`) on end of stream, a bad line or a refusal.
    """

    def __init__(self, sock, reply, nonce, trailing, line_max, peer):
        self.sock = sock
        self.reply = reply
        self.nonce = nonce
        self.peer = peer
        self.framer = protocol.LineFramer(line_max, trailing)
        self.closed = False
        self.error = ""

    @property
    def family(self):
        return self.sock.family

    def fileno(self):
        return self.sock.fileno()

    def send(self, obj):
        send_line(self.sock, obj)

    def _message(self, line):
        msg = protocol.decode(line)
        if msg.get("ok") is False:
            raise PeerError(f"peer {self.peer} ended the session: {protocol.clean_text(msg.get('error'))}")
        return msg

    def recv(self, timeout):
        """The next line; PeerError when it does not come within `timeout`, the peer closed, sent
        a bad line or ended the session."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.framer.next_line()
                if line is not None:
                    return self._message(line)
            except protocol.ProtocolError as exc:
                raise PeerError(f"peer {self.peer}: bad control line: {exc}") from None
            left = deadline - time.monotonic()
            ready = select.poll()               # not select(): a worker serving many peers has fds past 1023
            ready.register(self.sock, select.POLLIN)
            if left <= 0 or not ready.poll(left * 1000):
                raise PeerError(f"peer {self.peer}: no answer within {timeout:g}s")
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise PeerError(f"peer {self.peer}: control connection failed: {exc.strerror or exc}") from None
            if not data:
                raise PeerError(f"peer {self.peer} closed the control connection")
            self.framer.feed(data)

    def poll(self):
        """Every line available now (dicts), without waiting."""
        out = []
        while not self.closed:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close(f"control connection failed: {exc.strerror or exc}")
                break
            if not data:
                self._close("control connection closed by the peer")
                break
            self.framer.feed(data)
        try:
            for line in self.framer.lines():
                out.append(self._message(line))
        except protocol.ProtocolError as exc:
            self._close(f"malformed control line ({exc})")
        except PeerError as exc:
            self._close(str(exc))
        return out

    def _close(self, error):
        if not self.closed:
            self.closed, self.error = True, error

    def close(self):
        self.sock.close()


def connect(address, kind, *, key=b"", timeout=5.0, line_max=protocol.HELLO_MAX, **fields):
    """Open a session of `kind` with the peer at `address`; returns its Channel after "ok".

    Raises PeerError with a one-line reason: unreachable (with `unreachable`),
    refused, wrong key, not served.
    """
    try:
        host, port = split_address(address)
    except ValueError as exc:
        raise PeerError(str(exc)) from None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise PeerError(f"cannot connect to {address}: {exc.strerror or exc}", unreachable=True) from None
    machine = protocol.ClientHandshake(kind, {**HELLO_EXTRA, **fields}, key or None, time.monotonic(), timeout)
    try:
        while True:
            now = time.monotonic()
            events = machine.tick(now)
            if not events:
                sock.settimeout(max(machine.deadline - now, 0.001))
                try:
                    data = sock.recv(protocol.HELLO_MAX + 1)
                except TimeoutError:
                    continue
                events = machine.receive_data(data, time.monotonic())
                out = machine.data_to_send()
                if out:
                    sock.sendall(out)
            if events:
                break
    except OSError as exc:
        sock.close()
        raise PeerError(f"peer {address}: handshake failed: {exc.strerror or exc}") from None
    (ev,) = events
    if isinstance(ev, protocol.Rejected):
        sock.close()
        raise PeerError(f"peer {address} refused: {ev.error}")
    sock.settimeout(timeout)
    return Channel(sock, ev.reply, ev.nonce, machine.trailing, line_max, address)


class PeerLink:
    """The connection state of a probe with a peer, shared by every kind that needs one.

    open(stop) returns a session from `factory()` or None: a peer that is not
    listening yet within `grace` of the start is retried quietly; any other
    failure is a BREACH metric=connection (once, until a CLEAR when a session
    opens again). wait(stop) sleeps the backoff before the next attempt.
    """

    def __init__(self, runner, factory, grace=STARTUP_GRACE):
        self.runner = runner
        self.factory = factory
        self.grace = grace
        self.started = time.monotonic()
        self.connected_once = False
        self.down_since = None          # monotonic time the connection was lost, while in breach
        self.backoff = BACKOFF_FIRST

    def _in_grace(self, exc):
        return not self.connected_once and exc.unreachable and time.monotonic() - self.started < self.grace

    def connect(self, stop):
        """A session, retrying quietly within the start-up grace; PeerError otherwise."""
        while True:
            try:
                session = self.factory()
                break
            except PeerError as exc:
                if not self._in_grace(exc) or stop.is_set():
                    raise
                stop.wait(0.1)
        self.connected_once = True
        self.backoff = BACKOFF_FIRST
        if self.down_since is not None:
            self._emit(CLEAR, "connected", f"after {time.monotonic() - self.down_since:.1f}s")
            self.down_since = None
        return session

    def open(self, stop):
        try:
            return self.connect(stop)
        except PeerError as exc:
            self.lost(str(exc))
            return None

    def wait(self, stop):
        """Sleep before the next attempt."""
        stop.wait(self.delay())

    def delay(self):
        """The time before the next attempt: the backoff, doubling up to BACKOFF_MAX, while in breach."""
        if self.down_since is None:
            return 0.1
        out, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX)
        return out

    def lost(self, reason):
        """The connection failed: BREACH metric=connection unless one is already out."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            # "busy": the peer is in another exclusive test or runs another mesh version
            self._emit(BREACH, "busy" if "refused: busy: " in reason else "lost", reason)
            log.warning("%s: %s", self.runner.cfg.name, reason)

    def _emit(self, kind, state, detail):
        r = self.runner
        r.emit(Record(kind, r.kind, r.cfg.name, {"metric": "connection", "state": state, "peer": r.cfg.peer,
                                                  "detail": protocol.clean_text(detail)}))


def renew_at(channel, opened):
    """Monotonic time to renew a session before the peer's max_session_length ends it (None: never)."""
    length = channel.reply.get("max_session_length")
    if isinstance(length, bool) or not isinstance(length, (int, float)) or not 1 <= length <= 1e9:
        return None
    return opened + length * (1 - RENEW_MARGIN)
