"""The capacity probe's client: asks the peer for pairs and trains, receives them with
kernel timestamps (netprobe._train), and estimates the capacity (analysis.py).

One estimate: a few long trains size the gaps between trains (the bottleneck
is busy at most a third of the time), then preliminary trains (L = 2..10),
then rounds of Phase I pairs over 40 sizes and Phase II long trains. Quick
mode stops after a round once the estimate moved less than 1 % and its 95 %
interval is narrower than 5 %; full mode runs pathrate's Phase I (40 x 25
pairs) and 100 Phase II trains. Both stop at max_bytes / max_time.
With `every` > 0 the probe re-estimates on that period, stretched so that
the average probe load stays below max_load percent of the estimate.
"""
import json
import logging
import math
import secrets
import socket
import struct
import time
import zipfile

import numpy as np

from netprobe.errors import PeerError, ProbeError, load_extension
from netprobe.fileio import open_private
from netprobe.peer.client import PeerLink, connect
from netprobe.peer.protocol import clean_text
from netprobe.probes.base import ProbeRunner
from netprobe.probes.capacity import analysis
from netprobe.probes.capacity.analysis import PHASE1, PHASE2, PRELIM
from netprobe.results import ERROR, Record, rate, seconds

log = logging.getLogger("netprobe.probes.capacity")

P1_SIZES = 40                       # pathrate: 40 packet sizes in Phase I
P1_PER_ROUND = 5                    # pairs per size per round
ROUNDS = {"quick": 6, "full": 5}    # most rounds (full: 5 x 5 = pathrate's 25 pairs per size)
MIN_ROUNDS = 2
P2_PER_ROUND = {"quick": 10, "full": 20}
PRELIM_PER_LENGTH = {"quick": 5, "full": 7}
DISCOVERY_GAP_NS = 100_000_000
MIN_GAP_NS = 1_000_000              # idle time after every train, at least
BUSY_SHARE = 3                      # gap >= (BUSY_SHARE - 1) x the train's time at the bottleneck
PRIMERS = 2                         # max-size packets leading every train (see analysis.py)
REQUEST_NS = 500_000_000            # one plan message spans about this long (stop flag checks)
STABLE_MOVE, STABLE_CI = 0.01, 0.05
STARTUP_GRACE = 3.0                 # s an unreachable peer is retried at start-up before it is an error
REPLY_LINE = 1 << 24                # bytes in one reply line of the peer
REPLY_ROW = 96                      # most bytes one train's row takes in the peer's JSON reply
# struct tcp_info (linux/tcp.h): tcpi_bytes_received (u64) and tcpi_segs_in (u32)
TCPI_BYTES_RECEIVED, TCPI_SEGS_IN, TCPI_LEN = 128, 140, 144
TCP_HEADER = 32                     # TCP header with the timestamps option Linux peers send


class Session:
    """A control connection to the peer plus our UDP receive socket."""

    def __init__(self, cfg, token=None):
        self.train = load_extension("_train")
        self.token = secrets.randbits(32) if token is None else token
        self.ctl = connect(cfg.peer, "capacity", key=cfg.key.encode(), timeout=cfg.connect_timeout,
                           line_max=REPLY_LINE)
        self.timeout = cfg.connect_timeout
        try:
            self.udp = socket.socket(self.ctl.family, socket.SOCK_DGRAM)
            self.udp.bind((self.ctl.sock.getsockname()[0], 0))
            self.receiver = self.train.TrainReceiver(self.udp.fileno(), self.token)
            t0 = time.monotonic()
            reply = self._call({"udp_port": self.udp.getsockname()[1], "token": self.token})
            self.rtt = time.monotonic() - t0     # control round trip (s), loco's %lt
            max_size = reply.get("max_size")
            if reply.get("ok") is not True or isinstance(max_size, bool) or not isinstance(max_size, int) \
                    or not 0 < max_size <= self.train.MAX_SIZE:
                raise PeerError(f"peer {cfg.peer}: capacity setup refused: {clean_text(reply.get('error', reply))}")
        except BaseException:
            self.close()
            raise
        self.peer_max_size = max_size
        self.ip_udp = analysis.IP6_UDP if self.ctl.family == socket.AF_INET6 and \
            not self.ctl.sock.getpeername()[0].startswith("::ffff:") else analysis.IP4_UDP
        self.tcp_frame = self.ip_udp - 8 + TCP_HEADER + cfg.overhead

    def control_bytes(self):
        """Wire bytes the control connection has brought in: the peer's replies and ACKs cross
        the measured path with its trains, so they count against the same budget."""
        raw = self.ctl.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_LEN)
        if len(raw) < TCPI_LEN:
            return 0
        (got,) = struct.unpack_from("=Q", raw, TCPI_BYTES_RECEIVED)
        (segs,) = struct.unpack_from("=I", raw, TCPI_SEGS_IN)
        return got + segs * self.tcp_frame

    def _call(self, msg):
        self.ctl.send(msg)
        return self.ctl.recv(self.timeout)

    def request(self, plan):
        """Have the peer send `plan` (int64 rows: train, count, size, primers, primer_size, gap_ns);
        returns (rx rows, sent rows) as int64 arrays."""
        self.receiver.drain()
        expected = int(plan[:, 1].sum())
        rows = np.empty((expected, len(self.train.RX_COLUMNS)), dtype=np.int64)
        span = int(plan[:, 5].sum())
        self.ctl.send({"plan": plan.tolist()})
        idle, limit = 300_000_000 + int(plan[:, 5].max()), 2 * span + 2_000_000_000
        n = 0
        while True:
            try:
                got = self.receiver.run(rows[n:], expected - n, idle, limit)
            except OSError as exc:
                raise ProbeError(f"receiving trains failed: {exc.strerror}") from None
            n += got.rows
            if not got.interrupted or n >= expected:      # a signal (SIGUSR1 progress) resumes
                break
        reply = self.ctl.recv(self.timeout + limit / 1e9)
        if "error" in reply and "sent" not in reply:
            raise PeerError(f"peer refused the plan: {clean_text(reply['error'])}")
        try:
            sent = np.asarray(reply["sent"], dtype=np.int64).reshape(-1, len(self.train.SENT_COLUMNS))
        except (KeyError, ValueError, TypeError, OverflowError):
            raise PeerError("malformed reply from the peer") from None
        if len(sent) > len(plan) or np.any(sent < 0) or np.any(sent[:, 2] > plan[:len(sent), 1]):
            raise PeerError("the peer's sent rows are out of range")
        err = reply.get("error")
        if isinstance(err, bool) or not isinstance(err, int) or not 0 <= err < 4096:
            raise PeerError("malformed reply from the peer")
        if err:
            raise PeerError(f"the peer could not send: errno {err}")
        return rows[:n], sent

    def counters(self):
        r = self.receiver
        return {"malformed": r.malformed + r.truncated, "foreign": r.foreign, "user_ts": r.user_ts}

    def close(self):
        for name in ("udp", "ctl"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.close()


# -- plans (pure) ------------------------------------------------------------------------------

def phase1_sizes(min_size, max_size, n=P1_SIZES):
    """n payload sizes from min_size to max_size inclusive (pathrate: 40 sizes up to the maximum)."""
    lo = min(min_size, max_size)
    return sorted({int(round(s)) for s in np.linspace(lo, max_size, n)})


def gap_ns(packets_bytes, rate_bps):
    """Idle time after a train so that the bottleneck (at rate_bps) is busy at most 1/BUSY_SHARE."""
    if not rate_bps or not math.isfinite(rate_bps):
        return MIN_GAP_NS
    return max(MIN_GAP_NS, int((BUSY_SHARE - 1) * packets_bytes * 8e9 / rate_bps))


class Planner:
    """Train ids, plan rows and their phases; everything sent so far, for the record."""

    def __init__(self, max_size, ip_udp, overhead):
        self.max_size = max_size
        self.ip_udp = ip_udp
        self.overhead = overhead
        self.next_id = 1
        self.rate_guess = math.nan

    def wire(self, size):
        return analysis.wire_bytes(size, self.ip_udp, self.overhead)

    def train(self, phase, measured, size, gap=None):
        """One plan row (train, count, size, primers, primer_size, gap) and its phase."""
        tid = self.next_id
        self.next_id += 1
        on_wire = PRIMERS * self.wire(self.max_size) + measured * self.wire(size)
        return phase, [tid, measured + PRIMERS, size, PRIMERS, self.max_size,
                       gap or gap_ns(on_wire, self.rate_guess)]

    def discovery(self, length, n=3):
        """Long trains before the rate is known: 100 ms apart, which drains any queue they build
        on paths down to a few Mbit/s."""
        return [self.train(PHASE2, length, self.max_size, gap=DISCOVERY_GAP_NS) for _ in range(n)]

    def prelim(self, per_length):
        return [self.train(PRELIM, L, self.max_size) for _ in range(per_length) for L in range(2, 11)]

    def round(self, sizes, per_size, p2_trains, length):
        """Phase I pairs of every size, plus as many max-size pairs as a quarter of the sizes get
        (the estimate falls back to those when sizes disagree), with Phase II trains among them."""
        rows = [self.train(PHASE1, 2, s) for _ in range(per_size) for s in [*sizes, *[self.max_size] *
                                                                            (len(sizes) // 4)]]
        step = max(1, len(rows) // max(p2_trains, 1))
        out = []
        p2 = [self.train(PHASE2, length, self.max_size) for _ in range(p2_trains)]
        for i, r in enumerate(rows):         # Phase II trains spread among the pairs
            out.append(r)
            if i % step == step - 1 and p2:
                out.append(p2.pop())
        return out + p2


class Run:
    """One estimate: requests, raw data and the stopping rule."""

    def __init__(self, session, cfg, stop):
        self.s = session
        self.cfg = cfg
        self.stop = stop
        self.max_size = min(cfg.max_size or session.peer_max_size, session.peer_max_size)
        if self.max_size < 64:
            raise ProbeError(f"the path's largest UDP payload is {self.max_size} bytes: too small to measure")
        self.planner = Planner(self.max_size, session.ip_udp, cfg.overhead)
        self.rx = []
        self.plan = []
        self.train_bytes = 0            # trains so far, wire bytes (payload + headers + overhead)
        self.control0 = session.control_bytes()
        self.exhausted = False          # a budget (bytes, time) stopped it
        self.state = "PRELIM"           # loco's progress states: PRELIM, P1, P1_CALC, CALC, END
        self.progress = 0.0             # 0..1
        self.last = None                # the latest intermediate estimate
        self.t0 = time.monotonic()

    def send(self, entries):
        """Send (phase, row) entries in requests of about REQUEST_NS each; stops before a request
        that would exceed the byte budget, or once the time budget is spent."""
        chunk, span = [], 0
        for phase, row in entries:
            chunk.append((phase, row))
            span += row[5]
            if span >= REQUEST_NS or len(chunk) >= 512:
                if not self._request(chunk):
                    return
                chunk, span = [], 0
        if chunk:
            self._request(chunk)

    @property
    def bytes(self):
        """This estimate's traffic on the measured path so far: trains and the control replies."""
        return self.train_bytes + self.s.control_bytes() - self.control0

    def _request(self, chunk):
        """Send one plan message unless a budget forbids; returns whether to go on."""
        hdr = self.s.ip_udp + self.cfg.overhead
        need = sum((row[1] - row[3]) * (row[2] + hdr) + row[3] * (row[4] + hdr) for _, row in chunk)
        need += len(chunk) * REPLY_ROW + 2 * self.s.tcp_frame     # the reply, ACKs of the plan
        if self.stop.is_set() or self.bytes + need > self.cfg.max_bytes or \
                time.monotonic() - self.t0 >= self.cfg.max_time:
            self.exhausted = True
            return False
        plan = np.asarray([row for _, row in chunk], dtype=np.int64)
        rx, sent = self.s.request(plan)
        self.rx.append(rx)
        self.train_bytes += int(sent[:, 3].sum() + sent[:, 2].sum() * hdr)      # on the wire, as tbf counts
        tx = np.zeros((len(plan), 2), dtype=np.int64)
        tx[:len(sent)] = sent[:, :2]
        for (phase, row), (t0, t1) in zip(chunk, tx, strict=True):
            self.plan.append([row[0], phase, row[1], row[2], row[3], row[4], t0, t1])
        return True

    def arrays(self):
        rx = np.concatenate(self.rx) if self.rx else np.empty((0, 6), dtype=np.int64)
        return rx, np.asarray(self.plan, dtype=np.int64).reshape(-1, len(analysis.PLAN_COLUMNS))

    def measurements(self):
        rx, plan = self.arrays()
        return analysis.measure(rx, plan, ip_udp=self.s.ip_udp, overhead=self.cfg.overhead)

    def execute(self):
        """Run the phases; returns the final analysis.Estimate."""
        cfg, p = self.cfg, self.planner
        length = cfg.train_length
        while True:                                   # long trains: can they arrive whole?
            self.send(p.discovery(length))
            m = self.measurements()
            rates = m.of(PHASE2)
            if len(rates):
                p.rate_guess = float(np.min(rates))
                break
            if len(m.train) and not len(rates):       # complete but unresolved: a very fast path
                p.rate_guess = math.inf
                break
            if length <= 8 or self.stop.is_set():
                raise ProbeError(f"no complete train of {length + PRIMERS} packets arrived from {cfg.peer}: is UDP "
                                 "from the peer to this host blocked, or the path losing most packets?")
            length //= 2
        self.send(p.prelim(PRELIM_PER_LENGTH[cfg.mode]))
        sizes = phase1_sizes(cfg.min_size, self.max_size)
        rounds = ROUNDS[cfg.mode]
        for r in range(rounds):
            if self.stop.is_set() or self.exhausted:
                break
            self.state, self.progress = "P1", max(r / rounds, self.bytes / cfg.max_bytes)
            self.send(p.round(sizes, P1_PER_ROUND, P2_PER_ROUND[cfg.mode], length))
            if cfg.mode == "quick" and r + 1 >= MIN_ROUNDS:
                self.state = "P1_CALC"
                est = analysis.estimate(self.measurements(), self.max_size)
                done = stable(est, self.last)
                self.last = est
                if done:
                    break
        self.state, self.progress = "CALC", 0.95
        est = analysis.estimate(self.measurements(), self.max_size)
        self.state, self.progress, self.last = "END", 1.0, est
        return est


def stable(est, last):
    """Quick mode's stop rule: the estimate moved < 1 % since the last round and its CI is < 5 % wide."""
    if last is None or not math.isfinite(est.capacity) or not math.isfinite(last.capacity):
        return False
    return abs(est.capacity / last.capacity - 1) < STABLE_MOVE and \
        (est.ci_hi - est.ci_lo) / est.capacity < STABLE_CI


def save_record(path, rx, plan, meta):
    """Raw data of one estimate (.npz): rx rows, plan rows and the settings the analysis needs."""
    with open_private(path, "wb") as fh:
        np.savez_compressed(fh, rx=rx, plan=plan, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def load_record(path):
    """(rx, plan, meta) of a record file; ProbeError (one line) if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            rx, plan = z["rx"].astype(np.int64), z["plan"].astype(np.int64)
            meta = json.loads(z["meta"].tobytes().decode())
        if rx.ndim != 2 or rx.shape[1] != 6 or plan.ndim != 2 or plan.shape[1] != len(analysis.PLAN_COLUMNS):
            raise ValueError("arrays have the wrong shape")
        ip_udp, overhead, max_size = int(meta["ip_udp"]), int(meta["overhead"]), int(meta["max_size"])
    except (OSError, EOFError, KeyError, ValueError, TypeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise ProbeError(f"{path}: not a capacity record: {exc or type(exc).__name__}") from None
    return rx, plan, {"ip_udp": ip_udp, "overhead": overhead, "max_size": max_size}


def reanalyze(path):
    """The estimate of a recorded run, computed exactly as the live one was."""
    rx, plan, meta = load_record(path)
    m = analysis.measure(rx, plan, ip_udp=meta["ip_udp"], overhead=meta["overhead"])
    return analysis.estimate(m, meta["max_size"])


def result_fields(est, *, mode, bytes_sent=None, elapsed=None, counters=None):
    f = {"capacity": rate(est.capacity), "ci_lo": rate(est.ci_lo), "ci_hi": rate(est.ci_hi),
         "range": est.range_text(), "adr": rate(est.adr), "confidence": est.confidence, "method": est.method,
         "capprobe": rate(est.capprobe), "bin_width": rate(est.bin_width), "modes": est.modes,
         "trains": est.trains, "incomplete": est.incomplete, "coalescing": round(est.coalescing, 3),
         "burst_ratio": None if not math.isfinite(est.burst_ratio) else round(est.burst_ratio, 3),
         "mode": mode}
    if bytes_sent is not None:
        f["bytes"] = bytes_sent
    if elapsed is not None:
        f["duration"] = seconds(elapsed)
    if counters:
        f.update(counters)
    if est.reasons:
        f["why"] = "; ".join(est.reasons)
    return f


def next_wait(every, elapsed, bytes_sent, capacity, max_load_pct):
    """Seconds to wait after an estimate so the average load stays below max_load_pct of capacity."""
    period = every
    if capacity and math.isfinite(capacity):
        period = max(period, bytes_sent * 8 / (capacity * max_load_pct / 100))
    return max(0.0, period - elapsed)


class Runner(ProbeRunner):
    """One estimate (every = 0) or one per period; RESULT per estimate; BREACH below min_capacity."""

    kind = "capacity"

    def __init__(self, cfg, emit):
        super().__init__(cfg, emit)
        train = load_extension("_train")
        if tuple(train.RX_COLUMNS) != ("train", "index", "count", "size", "rx_ns", "flags"):
            raise ProbeError("netprobe._train was built for another row layout: rebuild it (make build)")

    def run(self, stop):
        first = True
        while not stop.is_set():
            t0 = time.monotonic()
            est, nbytes = self._estimate(stop, first)
            first = False
            if not self.cfg.every:
                return
            cap = est.capacity if est is not None else math.nan
            stop.wait(next_wait(self.cfg.every, time.monotonic() - t0, nbytes, cap, self.cfg.max_load))

    def _error(self, exc):
        """A failed estimate in continuous mode: an ERROR line, and the next period tries again."""
        log.warning("%s: %s", self.cfg.name, exc)
        self.emit(Record(ERROR, self.kind, self.cfg.name, {"error": str(exc)}))

    def _estimate(self, stop, first):
        t0 = time.monotonic()
        if first:     # a peer started beside us (the same daemon's [serve]) may take a moment to listen
            self.link = PeerLink(self, lambda: Session(self.cfg), grace=STARTUP_GRACE)
        try:
            session = self.link.connect(stop)
        except PeerError as exc:
            if not self.cfg.every:
                raise
            self._error(exc)
            return None, 0
        try:
            run = Run(session, self.cfg, stop)
            est = run.execute()
            rx, plan = run.arrays()
            if self.cfg.record:
                save_record(self.cfg.record, rx, plan, {"ip_udp": session.ip_udp, "overhead": self.cfg.overhead,
                                                        "max_size": run.max_size, "peer": self.cfg.peer})
            self.result(result_fields(est, mode=self.cfg.mode, bytes_sent=run.bytes,
                                      elapsed=time.monotonic() - t0, counters=session.counters()))
            if self.cfg.min_capacity is not None and math.isfinite(est.capacity):
                self.judge("capacity", est.capacity < self.cfg.min_capacity, metric="capacity",
                           value=rate(est.capacity), op=">=", threshold=rate(self.cfg.min_capacity))
            return est, run.bytes
        except PeerError as exc:
            if not self.cfg.every:
                raise
            self._error(exc)
            return None, 0
        finally:
            session.close()
