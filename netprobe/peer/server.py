"""The peer's listener: access list, pre-authentication pool, session slots, rate reservations.

One thread owns every listening socket and every connection that has not
finished its handshake (the pre-authentication pool, at most
`max_handshakes`, each with `handshake_timeout` from its accept). A full pool
makes room by dropping the oldest handshake of the address holding most of
the pool, so one address flooding half-open connections cannot keep another
out. Only an authenticated hello of a served kind takes a session slot
(`max_sessions` in all, `max_sessions_per_address` per client address); the
slot's Session then runs on its own thread in the kind's responder.

Every refusal is one line {"ok": false, "error": "..."} naming the setting
that refused, then the connection closes.

A hello with a "mesh" field comes from a test the mesh timetable runs
exclusively (throughput, capacity). Such a test is refused with "busy: ..."
when this host runs another mesh version (`mesh_version`, the hash of its
mesh file in effect; None: not in a mesh, versions not compared), unless that
version is one of `mesh_also` (the daemon's: versions whose timetable holds
the same tests in the same slots as the one in effect), or when it
already serves another exclusive test; the connections of one test (a
throughput test's up and down, which share its "session") are one test.
"""
import collections
import dataclasses
import errno
import ipaddress
import logging
import re
import secrets
import selectors
import socket
import threading
import time

from netprobe.errors import NetprobeError
from netprobe.peer import protocol
from netprobe.peer.client import send_line
from netprobe.units import format_duration, format_rate

log = logging.getLogger("netprobe.serve")

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
BACKLOG = 1024
AUTH_LOG_EVERY = 60.0          # s between log lines about one address's failed authentications
TICK = 0.1                     # s between deadline checks of the pool
MESH_VERSION_MAX = 64          # characters of a mesh version in a hello
MESH_VERSION_RE = re.compile(f"[0-9A-Za-z._-]{{1,{MESH_VERSION_MAX}}}")
EPHEMERAL = ((32768, 60999),)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one peer grants its clients; each field is the [serve] setting of the same name."""
    handshake_timeout: float = 2.0
    max_handshakes: int = 64
    max_sessions: int = 16
    max_sessions_per_address: int = 4
    idle_timeout: float = 30.0
    max_session_length: float = 3600.0
    max_rate: float = 10e9
    max_rate_per_address: float = 0.0          # 0: max_rate
    congestion_allow: tuple = ()               # empty: the host's allowed congestion controls
    udp_ports: tuple = EPHEMERAL               # (first, last) ranges oneway sessions may receive on
    max_port_intervals: int = 20000
    max_port_intervals_total: int = 40000
    oneway_rx_threads: int = 0                 # 0: min(source ports, CPUs, 4)

    @property
    def rate_per_address(self):
        return min(self.max_rate_per_address or self.max_rate, self.max_rate)


def allowed_congestion():
    """The host's net.ipv4.tcp_allowed_congestion_control (what an unprivileged socket may choose)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as fh:
            return tuple(fh.read().split())
    except OSError:
        return ()


def host_of(address):
    """The client address as text, IPv4-mapped IPv6 shown as IPv4."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


ETHERNET = 14                     # link header the interface counter includes
TCPI_OPT_TIMESTAMPS = 1           # <linux/tcp.h> tcpi_options


def tcp_wire_factor(sock):
    """Bytes on the wire per payload byte of a connected TCP socket: each segment of snd_mss
    payload bytes carries IP (20 or 40), TCP (20, + 12 with timestamps) and Ethernet (14)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 24)
    options, mss = info[5], int.from_bytes(info[16:20], "little") if len(info) >= 20 else 0
    if mss <= 0:
        mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    ip = 40 if sock.family == socket.AF_INET6 and not sock.getpeername()[0].startswith("::ffff:") else 20
    tcp = 20 + (12 if options & TCPI_OPT_TIMESTAMPS else 0)
    return (mss + ip + tcp + ETHERNET) / max(mss, 1)


class SessionEnd(Exception):
    """A session limit was reached; the text names the setting (sent to the client as is)."""


class TokenBucket:
    """Paces what one session sends at `rate` bit/s: reserve(nbytes, now) returns the time the
    bytes may go; each send pushes the next one back by its own duration at `rate`, so in any
    window T the session sends at most rate x T plus one send. Pure: the caller passes `now`."""

    def __init__(self, rate):
        self.rate = rate
        self._next = None

    def reserve(self, nbytes, now):
        start = now if self._next is None else max(now, self._next)
        self._next = start + nbytes * 8 / self.rate
        return start

    def debt(self, now):
        """Seconds until what was sent is paid for at `rate` (0 when it is)."""
        return 0.0 if self._next is None else max(0.0, self._next - now)


class RateBudget:
    """Reservations of send rate from `total`, at most `per_address` for one client address.

    A session's bytes stay in a sliding window after it stops sending, so release() may hold a
    reservation `hold` s longer: the next session cannot add its bytes to the same window."""

    def __init__(self, total, per_address, clock=time.monotonic):
        self.total = total
        self.per_address = per_address
        self.used = 0.0
        self.by_address = collections.Counter()
        self._held = []                   # (monotonic s, address, bit/s) released then
        self._clock = clock
        self._lock = threading.Lock()

    def reserve(self, address, bps, partial=1.0):
        """Claim `bps` for `address`; returns what was granted: all of it, or what is free if that
        is at least the `partial` share of it, else 0.0 (the refusal text from why_refused())."""
        with self._lock:
            self._expire()
            free = min(self.total - self.used, self.per_address - self.by_address[address])
            grant = min(bps, free)
            if grant <= 0 or grant < bps * partial:
                return 0.0
            self.used += grant
            self.by_address[address] += grant
            return grant

    def release(self, address, bps, hold=0.0):
        with self._lock:
            if hold > 0:
                self._held.append((self._clock() + hold, address, bps))
            else:
                self._free(address, bps)

    def _expire(self):
        now = self._clock()
        due = [h for h in self._held if h[0] <= now]
        if due:
            self._held = [h for h in self._held if h[0] > now]
            for _, address, bps in due:
                self._free(address, bps)

    def _free(self, address, bps):
        self.used = max(0.0, self.used - bps)
        self.by_address[address] -= bps
        if self.by_address[address] <= 1e-6:
            del self.by_address[address]

    def why_refused(self, address):
        if self.total - self.used < self.per_address - self.by_address[address]:
            return f"busy: max_rate={format_rate(self.total)}: this peer's send budget is taken by other sessions"
        return (f"busy: max_rate_per_address={format_rate(self.per_address)}: the send budget for {address} "
                "is taken")


class Session:
    """One authenticated session, handed to the kind's responder on its own thread.

    The responder answers ok() or refuse() first; it reads control lines with
    read() (blocking) or poll() (non-blocking), calls progress() when the
    session did useful work and check() to learn whether a limit ended it.
    """

    def __init__(self, server, sock, address, hello, trailing, now):
        self.server = server
        self.sock = sock
        self.address = address            # the client's address (text, IPv4 for a mapped address)
        self.hello = hello
        self.limits = server.limits
        self.state = server.state         # per-kind state shared by the sessions of a kind
        self.framer = protocol.LineFramer(protocol.HELLO_MAX, trailing)
        self.started = now
        self.last_progress = now

    # -- replies ------------------------------------------------------------------------------

    def ok(self, **extra):
        """Accept: {"ok": true, "max_session_length": s, ...extra}."""
        self.send({"ok": True, "max_session_length": self.limits.max_session_length, **extra})

    def refuse(self, why):
        """Tell the client why in one line; the server closes the connection when respond() returns."""
        try:
            self.sock.settimeout(0.5)
            self.sock.sendall(protocol.refusal(why))
        except OSError:
            pass

    def send(self, obj):
        send_line(self.sock, obj)

    # -- limits -------------------------------------------------------------------------------

    def progress(self, now=None):
        self.last_progress = time.monotonic() if now is None else now

    def check(self, now=None):
        """Raise SessionEnd naming the limit when the session is idle too long, too old or the
        server is stopping."""
        now = time.monotonic() if now is None else now
        lim = self.limits
        if now - self.started >= lim.max_session_length:
            raise SessionEnd(f"max_session_length={format_duration(lim.max_session_length)} reached")
        if now - self.last_progress >= lim.idle_timeout:
            raise SessionEnd(f"idle_timeout={format_duration(lim.idle_timeout)} reached")
        if self.server.stop.is_set():
            raise SessionEnd("the peer is shutting down")

    # -- control lines ------------------------------------------------------------------------

    def set_line_limit(self, limit):
        self.framer.limit = limit

    def read(self, timeout=None):
        """The next control line (a dict); None when the client closed. Waits at most until a
        limit ends the session (SessionEnd) or `timeout` (TimeoutError). A complete line is
        progress; bytes trickled without a newline are not. ProtocolError for a bad line."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            line = self.framer.next_line()
            if line is not None:
                self.progress()
                return protocol.decode(line)
            self.check()
            now = time.monotonic()
            wait = min(1.0, self.limits.idle_timeout - (now - self.last_progress),
                       self.limits.max_session_length - (now - self.started))
            if deadline is not None:
                if now >= deadline:
                    raise TimeoutError("no control line in time")
                wait = min(wait, deadline - now)
            self.sock.settimeout(max(wait, 0.001))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                return None
            self.framer.feed(data)

    def poll(self):
        """Complete control lines available now, without waiting; (lines, closed)."""
        closed = False
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            self.framer.feed(data)
            if len(data) < 1 << 16:
                break
        out = [protocol.decode(line) for line in self.framer.lines()]
        if out:
            self.progress()
        return out, closed


@dataclasses.dataclass
class _Pending:
    sock: socket.socket
    fd: int
    address: str
    machine: protocol.ServerHandshake


class Server:
    """Serve `responders` (kind -> respond(session)) on `listen` [(host, port), ...]."""

    def __init__(self, listen, allow=LOOPBACK, key=None, *, responders, **limits):
        self.responders = dict(responders)
        self.allow = tuple(allow)
        self.key = key
        self.limits = Limits(**limits)
        if not self.limits.congestion_allow:
            self.limits = dataclasses.replace(self.limits, congestion_allow=allowed_congestion())
        self.stop = threading.Event()
        self.counters = {"accepted": 0, "refused_prefix": 0, "refused_busy": 0, "bad_handshake": 0,
                         "bad_auth": 0, "unknown_kind": 0, "timeout": 0, "evicted": 0, "ended_by_limit": 0}
        self.rates = RateBudget(self.limits.max_rate, self.limits.rate_per_address)
        self.state = {}
        self.mesh_version = None                     # the mesh in effect here (set by the daemon's worker)
        self.mesh_also = ()                          # other versions served too: they run the same timetable
        self._lock = threading.Lock()
        self._sessions = collections.Counter()       # address -> open sessions
        self._exclusive = collections.Counter()      # (kind, address, session) -> open connections of a mesh test
        self._pending = {}                           # fd -> _Pending
        self._auth_logged = {}                       # address -> (monotonic of the last log line, failures since)
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
        s.listen(BACKLOG)
        s.setblocking(False)
        return s

    @property
    def addresses(self):
        return [s.getsockname()[:2] for s in self.socks]

    @property
    def sessions(self):
        """Open sessions per client address."""
        with self._lock:
            return dict(self._sessions)

    def allowed(self, address):
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in self.allow)

    # -- the pool thread ----------------------------------------------------------------------

    def serve_forever(self, stop=None):
        """Serve until self.stop, or `stop` (an Event a signal handler sets), is set."""
        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ, None)
        try:
            while not self.stop.is_set():
                if stop is not None and stop.is_set():
                    self.stop.set()
                    break
                for key, _ in sel.select(TICK):
                    if key.data is None:
                        self._accept(sel, key.fileobj)
                    else:
                        self._read(sel, key.data)
                self._expire(sel, time.monotonic())
        finally:
            for p in list(self._pending.values()):
                self._drop(sel, p)
            sel.close()
            for s in self.socks:
                s.close()

    def _accept(self, sel, lsock):
        for _ in range(64):                   # a burst at a time, so deadlines are still checked
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._once("accept", f"cannot accept: {exc.strerror}")
                    self._evict(sel, None)        # free a descriptor for the next client
                return
            address = host_of(addr[0])
            conn.setblocking(False)
            if not self.allowed(address):
                self.counters["refused_prefix"] += 1
                _refuse_now(conn, f"client {address} is not in the allow list")
                continue
            if len(self._pending) >= self.limits.max_handshakes:
                self._reap(sel)
            if len(self._pending) >= self.limits.max_handshakes and not self._evict(sel, address):
                self.counters["refused_busy"] += 1
                _refuse_now(conn, f"busy: max_handshakes={self.limits.max_handshakes} reached for {address}")
                continue
            machine = protocol.ServerHandshake(secrets.token_hex(16), time.monotonic(),
                                               self.limits.handshake_timeout, self.responders, self.key)
            p = _Pending(conn, conn.fileno(), address, machine)
            self._pending[p.fd] = p
            sel.register(conn, selectors.EVENT_READ, p)
            self._send(sel, p)

    def _reap(self, sel):
        """Finish the handshakes whose bytes are already here, before judging the pool full."""
        for key, _ in sel.select(0):
            if key.data is not None:
                self._read(sel, key.data)

    def _evict(self, sel, newcomer):
        """Make room in a full pool: drop the oldest handshake of the address holding most of it,
        unless that is the newcomer's own address (then the newcomer waits its turn: False)."""
        if not self._pending:
            return False
        counts = collections.Counter(p.address for p in self._pending.values())
        top, _ = counts.most_common(1)[0]
        if top == newcomer:
            return False
        victim = min((p for p in self._pending.values() if p.address == top), key=lambda p: p.machine.deadline)
        self.counters["evicted"] += 1
        self._drop(sel, victim, close=False)
        _refuse_now(victim.sock, f"busy: max_handshakes={self.limits.max_handshakes} reached")
        return True

    def _read(self, sel, p):
        if self._pending.get(p.fd) is not p:      # finished earlier in this round (its socket is not ours)
            return
        try:
            data = p.sock.recv(protocol.HELLO_MAX + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._handle(sel, p, p.machine.receive_data(data, time.monotonic()))

    def _expire(self, sel, now):
        for p in [p for p in self._pending.values() if p.machine.deadline <= now]:
            self._handle(sel, p, p.machine.tick(now))

    def _handle(self, sel, p, events):
        self._send(sel, p)
        for ev in events:
            if isinstance(ev, protocol.Refused):
                self.counters["bad_handshake" if ev.counter == "timeout" else ev.counter] += 1
                if ev.counter == "timeout":
                    self.counters["timeout"] += 1
                if ev.counter == "bad_auth":
                    self._auth_failed(p.address)
                self._drop(sel, p)
            elif isinstance(ev, protocol.Hello):
                self._drop(sel, p, close=False)
                self._admit(p, ev)

    def _send(self, sel, p):
        out = p.machine.data_to_send()
        if out:
            try:
                p.sock.send(out)              # a fresh connection's buffer holds a line; a short send
            except OSError:                   # means a client not reading: it times out
                pass

    def _drop(self, sel, p, close=True):
        self._pending.pop(p.fd, None)
        sel.unregister(p.fd)
        if close:
            p.sock.close()

    def _auth_failed(self, address):
        """Count; log at most once per address per AUTH_LOG_EVERY, with the failures since."""
        now = time.monotonic()
        last, since = self._auth_logged.get(address, (None, 0))
        if last is None or now - last >= AUTH_LOG_EVERY:
            log.warning("refused %s: wrong or missing key (%d failures in the last %gs)", address, since + 1,
                        AUTH_LOG_EVERY)
            self._auth_logged[address] = (now, 0)
        else:
            self._auth_logged[address] = (last, since + 1)
        if len(self._auth_logged) > 4096:      # bounded: forget addresses not seen for a while
            self._auth_logged = {a: v for a, v in self._auth_logged.items() if now - v[0] < AUTH_LOG_EVERY}

    def set_mesh(self, version, also=()):
        """The mesh version in effect here, and the other versions whose tests are served too."""
        with self._lock:
            self.mesh_version, self.mesh_also = version, tuple(also)

    def _exclusive_busy(self, test, mesh):
        """Why a mesh test (`test`: kind, address, session) cannot run now, or None; under the lock."""
        if self.mesh_version is not None and mesh != self.mesh_version and mesh not in self.mesh_also:
            return f"busy: mesh version {self.mesh_version} here, {mesh} in the hello"
        other = next((t for t in self._exclusive if t != test), None)
        if other is not None:
            return f"busy: in an exclusive test already ({other[0]} from {other[1]})"
        return None

    def _admit(self, p, hello):
        lim = self.limits
        mesh = hello.fields.get("mesh")
        if mesh is not None and not (isinstance(mesh, str) and MESH_VERSION_RE.fullmatch(mesh)):
            self.counters["bad_handshake"] += 1
            _refuse_now(p.sock, f"bad handshake: mesh must be a version of 1-{MESH_VERSION_MAX} characters")
            return
        test = (hello.kind, p.address, str(hello.fields.get("session")))
        with self._lock:
            total = sum(self._sessions.values())
            if total >= lim.max_sessions:
                why = f"busy: max_sessions={lim.max_sessions} reached"
            elif self._sessions[p.address] >= lim.max_sessions_per_address:
                why = f"busy: max_sessions_per_address={lim.max_sessions_per_address} reached for {p.address}"
            else:
                why = self._exclusive_busy(test, mesh) if mesh is not None else None
            if why is None:
                self._sessions[p.address] += 1
                if mesh is not None:
                    self._exclusive[test] += 1
        if why:
            self.counters["refused_busy"] += 1
            _refuse_now(p.sock, why)
            return
        self.counters["accepted"] += 1
        session = Session(self, p.sock, p.address, hello.fields, p.machine.trailing, time.monotonic())
        threading.Thread(target=self._run, args=(session, hello.kind, test if mesh is not None else None),
                         daemon=True, name=f"peer-{hello.kind}").start()

    def _run(self, session, kind, test=None):
        sock = session.sock
        try:
            sock.setblocking(True)
            self.responders[kind](session)
        except SessionEnd as exc:
            self.counters["ended_by_limit"] += 1
            log.info("%s session from %s ended: %s", kind, session.address, exc)
            session.refuse(str(exc))
        except protocol.ProtocolError as exc:
            session.refuse(f"bad control line: {exc}")
        except OSError as exc:
            log.debug("%s session from %s ended: %s", kind, session.address, exc)
        except Exception as exc:   # a responder's bug ends its session, never the server
            self._once((type(exc).__name__, str(exc)), f"{kind} session from {session.address} failed: "
                       f"{type(exc).__name__}: {exc} (logged once)", level=logging.ERROR)
        finally:
            sock.close()
            with self._lock:
                self._sessions[session.address] -= 1
                if self._sessions[session.address] <= 0:
                    del self._sessions[session.address]
                if test is not None:
                    self._exclusive[test] -= 1
                    if self._exclusive[test] <= 0:
                        del self._exclusive[test]

    def _once(self, key, message, level=logging.WARNING):
        if key not in self._logged and len(self._logged) < 1000:
            self._logged.add(key)
            log.log(level, "%s", message)


def _refuse_now(sock, why):
    """Refuse without waiting (the pool thread must not block on one client), then close."""
    try:
        sock.send(protocol.refusal(why))
    except OSError:
        pass
    sock.close()
