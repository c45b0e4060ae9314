"""The throughput probe's client: keeps a paced TCP flow running each way and
judges each direction's sliding window against its SLA.

a->b: we send on the "up" connection; its TCP_INFO is sampled here.
b->a: the peer sends on the "down" connection; its TCP_INFO arrives in the
peer's reports on the up connection (see responder.py). A lost connection
is a BREACH metric=connection at once; we reconnect with backoff, and a new
connection starts a new epoch, so no sample from before it enters a window.
"""
import logging
import os
import queue
import re
import secrets
import select
import threading
import time

import numpy as np

from netprobe.errors import PeerError, ProbeError, load_extension
from netprobe.peer.client import PeerLink, connect, renew_at
from netprobe.probes.base import ProbeRunner
from netprobe.probes.throughput import analysis
from netprobe.probes.throughput.protocol import set_congestion
from netprobe.probes.throughput.samples import COL, NCOLS, SAMPLE_COLUMNS
from netprobe.results import percent, rate, seconds
from netprobe.stats.buckets import cumulative, hist_field, parse_bounds

log = logging.getLogger("netprobe.probes.throughput")

CHUNK_NS = 100_000_000
DRAIN_AT_STOP = 1.0           # s to wait at stop for the peer to acknowledge what we sent
REPORT_SILENCE = 3.0          # s without a peer report: the b->a side is considered lost
REPORT_LINE = 1 << 20         # bytes in one peer report line
DIRECTIONS = ("a->b", "b->a")
SENDER_TOTALS = ("timer_overruns", "late_ticks", "eagain")
TICKET_RE = re.compile(r"[0-9a-f]{32}")


class Connection:
    """One session with the peer: the sockets and the threads that run the hot loops."""

    def __init__(self, cfg, epoch, pacer):
        self.cfg = cfg
        self.epoch = epoch
        self.rows = queue.SimpleQueue()         # (direction, rows array)
        self.failed = threading.Event()
        self.reason = ""
        self.sender_totals = dict.fromkeys(SENDER_TOTALS, 0)
        self.peer_totals = {}
        self._stop = threading.Event()
        sid = secrets.token_hex(16)
        key = cfg.key.encode()
        sample_ns = round(cfg.sample_interval * 1e9)
        self.up = connect(cfg.peer, "throughput", key=key, timeout=cfg.connect_timeout, line_max=REPORT_LINE,
                          role="up", session=sid, rate_down=cfg.down_rate, sample_ns=sample_ns)
        self.renew_at = renew_at(self.up, time.monotonic())
        self.down = None
        try:
            if cfg.down_rate:
                ticket = self.up.reply.get("ticket")
                if not isinstance(ticket, str) or not TICKET_RE.fullmatch(ticket):
                    raise PeerError(f"peer {cfg.peer}: no valid session ticket in its answer")
                self.down = connect(cfg.peer, "throughput", key=key, timeout=cfg.connect_timeout, role="down",
                                    session=sid, ticket=ticket, pacing=cfg.pacing, congestion=cfg.congestion)
            if cfg.congestion:
                set_congestion(self.up.sock, cfg.congestion)
        except PeerError:
            self.up.close()
            if self.down is not None:
                self.down.close()
            raise
        self.up.sock.setblocking(False)
        self.threads = [threading.Thread(target=self._send, args=(pacer, sample_ns), daemon=True)]
        if self.down is not None:
            self.down.sock.setblocking(False)
            self.threads += [threading.Thread(target=self._drain, args=(pacer, sample_ns), daemon=True),
                             threading.Thread(target=self._reports, daemon=True)]
        for t in self.threads:
            t.start()

    def _fail(self, reason):
        if not self.failed.is_set():
            self.reason = reason
            self.failed.set()

    def _send(self, pacer, sample_ns):
        sender = pacer.TcpPacedSender(self.up.fileno(), self.cfg.rate, pacing=self.cfg.pacing)
        buf = np.empty((64, NCOLS), dtype=np.int64)
        try:
            while not self._stop.is_set():
                try:
                    got, failed = sender.run(buf, CHUNK_NS, sample_ns, self.epoch), None
                except OSError as exc:               # the send failed; the chunk's counts are exc.result
                    got, failed = exc.result, exc
                for k in self.sender_totals:
                    self.sender_totals[k] += getattr(got, k)
                if got.rows:
                    self.rows.put(("a->b", buf[:got.rows].copy()))
                if failed:
                    self._fail(f"a->b send failed: {_strerror(failed.errno)}")
                    return
            self._final_sample(pacer, sender.bytes_sent)
        finally:
            sender.close()

    def _final_sample(self, pacer, sent):
        """At stop: wait until the peer has acknowledged what we sent, then take the last row,
        so the final interval counts every byte and retransmission of this connection."""
        acked = COL["bytes_acked"]
        end = time.monotonic() + DRAIN_AT_STOP
        while True:
            row = pacer.tcp_info_row(self.up.fileno(), time.monotonic_ns(), self.epoch, sent)
            if row[acked] >= sent or time.monotonic() > end:
                break
            time.sleep(0.01)
        self.rows.put(("a->b", np.asarray([row], dtype=np.int64)))

    def _drain(self, pacer, sample_ns):
        drain = pacer.TcpDrain(self.down.fileno())
        buf = np.empty((64, NCOLS), dtype=np.int64)
        while not self._stop.is_set():
            try:
                got = drain.run(buf, CHUNK_NS, sample_ns, self.epoch)
            except OSError as exc:
                self._fail(f"b->a receive failed: {_strerror(exc.errno)}")
                return
            if got.eof:
                self._fail("b->a connection closed by the peer")
                return

    def _reports(self):
        """Read the peer's JSON report lines (its b->a sender's TCP_INFO) off the up connection."""
        last = time.monotonic()
        offset = None          # our monotonic clock minus the peer's, fixed at the first report
        while not self._stop.is_set():
            ready, _, _ = select.select([self.up.sock], [], [], 0.2)
            if not ready:
                if time.monotonic() - last > REPORT_SILENCE:
                    self._fail(f"peer sent no report for {REPORT_SILENCE:g}s")
                    return
                continue
            msgs = self.up.poll()
            if msgs:
                last = time.monotonic()
            for msg in msgs:
                rows, totals = _parse_report(msg, self.epoch)
                if totals is not None:
                    self.peer_totals = totals
                if rows is None:
                    self._fail("malformed report from the peer")
                    return
                if len(rows):
                    if offset is None:
                        offset = time.monotonic_ns() - int(rows[:, COL["t_ns"]].max())
                    rows[:, COL["t_ns"]] += offset
                    self.rows.put(("b->a", rows))
            if self.up.closed:
                self._fail(self.up.error)
                return

    def close(self):
        self._stop.set()
        for t in self.threads:
            t.join(DRAIN_AT_STOP + 1.0)
        for s in (self.up, self.down):
            if s is not None:
                s.close()


def _parse_report(report, epoch):
    """Rows of a peer report (a decoded line), stamped with our epoch, and the peer sender's
    counters (range-checked, the others dropped); None if malformed.

    Their times are the peer's monotonic clock; the caller shifts them onto ours
    by one offset per connection, which keeps the peer's exact sample spacing.
    """
    try:
        rows = np.asarray(report["rows"], dtype=np.int64)
    except (ValueError, KeyError, TypeError, OverflowError):
        return None, None
    sender = report.get("sender")
    totals = {k: v for k, v in sender.items() if k in SENDER_TOTALS and isinstance(v, int)
              and not isinstance(v, bool) and 0 <= v < 1 << 63} if isinstance(sender, dict) else None
    if rows.size == 0:
        return rows.reshape(0, NCOLS), totals
    if rows.ndim != 2 or rows.shape[1] != NCOLS:
        return None, None
    checked = np.delete(rows, COL["pacing_rate"], axis=1)     # ~0 ("unlimited") reads as -1 in int64
    if np.any(checked < 0) or np.any(checked >= 1 << 62):
        return None, None
    rows[:, COL["epoch"]] = epoch
    return rows, totals


def _strerror(err):
    return os.strerror(err) if isinstance(err, int) else str(err)


class Runner(ProbeRunner):
    """Constant-rate TCP both ways; RESULT per direction per interval; BREACH/CLEAR per SLA."""

    kind = "throughput"

    def __init__(self, cfg, emit):
        super().__init__(cfg, emit)
        self.pacer = load_extension("_pacer")
        if tuple(self.pacer.SAMPLE_COLUMNS) != SAMPLE_COLUMNS:
            raise ProbeError("netprobe._pacer was built for another sample layout: rebuild it (make build)")
        self.windows = {d: analysis.SampleWindow.for_window(cfg.window, cfg.sample_interval) for d in DIRECTIONS}
        self.rtt_bounds = parse_bounds(cfg.rtt_buckets)
        self.new_rtts = {d: [] for d in DIRECTIONS}     # RTT samples (s) since the last interval, for rtt_hist
        self.ack_guard = analysis.AckPathGuard(cfg.window)
        self.active = [d for d in DIRECTIONS if d == "a->b" or cfg.down_rate]
        self.epoch = 0

    def run(self, stop):
        conn = None
        self.link = PeerLink(self, self._connect)
        next_result = time.monotonic() + self.cfg.interval
        try:
            while not stop.is_set():
                if conn is None:
                    conn = self.link.open(stop)
                    if conn is None:
                        if self.link.down_since is not None:
                            self._mark_disconnected()
                        self.link.wait(stop)
                        continue
                self._collect(conn)
                if conn.failed.is_set():
                    self._mark_disconnected()
                    self.link.lost(conn.reason)
                    conn.close()
                    conn = None
                    continue
                if conn.renew_at is not None and time.monotonic() >= conn.renew_at:
                    log.info("%s: renewing the session before the peer's max_session_length", self.cfg.name)
                    conn.close()
                    self._collect(conn)
                    conn = None
                    continue
                if time.monotonic() >= next_result:
                    next_result += self.cfg.interval
                    self._interval(conn)
                stop.wait(0.05)
        finally:
            # the final, partial interval: reported, not judged, and stamped when sending stopped
            # (not after the wait for the last ACKs), so an exclusive run's last record lies in its slot
            t_stop = time.time()
            if conn is not None:
                conn.close()
                self._collect(conn)
            self._interval(conn, judge=False, ts=t_stop)

    def _connect(self):
        """A new connection: a new epoch, so no sample from before it enters a window."""
        conn = Connection(self.cfg, self.epoch + 1, self.pacer)
        self.epoch += 1
        for w in self.windows.values():
            w.clear()
        log.info("%s: connected to %s (epoch %d)", self.cfg.name, self.cfg.peer, self.epoch)
        return conn

    def _mark_disconnected(self):
        for w in self.windows.values():
            w.mark_disconnected(time.monotonic_ns())

    def _collect(self, conn):
        while True:
            try:
                direction, rows = conn.rows.get_nowait()
            except queue.Empty:
                return
            self.windows[direction].add(rows)
            if self.rtt_bounds:
                rtt_us = rows[:, COL["rtt_us"]]
                self.new_rtts[direction].append(rtt_us[rtt_us > 0] / 1e6)

    def _interval(self, conn, judge=True, ts=None):
        """RESULT per direction; SLA verdicts unless `judge` is False (the window cut short at
        stop ends with the wait for the last ACKs, which says nothing about the path)."""
        now_ns = time.monotonic_ns()
        metrics = {}
        for d in self.active:
            sla = self.cfg.sla(d)
            metrics[d] = analysis.analyze(self.windows[d].rows(), now_ns, self.cfg.window, sla.rate_bps,
                                          min_ratio=sla.min_ratio)
            self.ack_guard.update(d, metrics[d], sla, now_ns)
        for d in self.active:
            sla, m, rows = self.cfg.sla(d), metrics[d], self.windows[d].rows()
            saturated_by = self.ack_guard.withheld_by(d, m, now_ns)
            fields = _result_fields(d, m, sla, self.cfg.window)
            if saturated_by:     # see AckPathGuard: delivery verdicts withheld this interval
                fields["ack_path_saturated_by"] = saturated_by
            if self.rtt_bounds:
                rtts = np.concatenate(self.new_rtts[d]) if self.new_rtts[d] else np.empty(0)
                self.new_rtts[d] = []
                fields["rtt_hist"] = hist_field(self.rtt_bounds, cumulative(rtts, self.rtt_bounds), rtts.size,
                                                rtts.sum())
            if len(rows):       # the sender's count since this connection opened (nstat-comparable)
                fields["retrans_total"] = int(rows[-1, COL["total_retrans"]])
            if conn is not None:   # measure the measurer: how well each end's pacer kept its schedule
                totals = conn.sender_totals if d == "a->b" else conn.peer_totals
                for k in ("timer_overruns", "late_ticks", "eagain"):
                    if isinstance(totals.get(k), int):
                        fields[k] = totals[k]
            self.result(fields, ts)
            withhold = analysis.DELIVERY_METRICS if saturated_by else ()
            for v in (analysis.verdicts(m, sla, d, withhold=withhold) if judge else ()):
                self.judge((d, v.metric), v.bad, metric=v.metric, value=v.value, op=v.op,
                           threshold=v.threshold, window=seconds(self.cfg.window), dir=d)


def _result_fields(direction, m, sla, window):
    fields = {"dir": direction, "sla_rate": rate(sla.rate_bps)}
    if m is None:
        fields["samples"] = 0
        return fields
    fields.update({
        "rate": rate(m["rate"]), "ratio": round(m["ratio"], 4),
        "rtt": seconds(m["rtt_mean"]), "rtt_p50": seconds(m["rtt_p50"]), "rtt_p99": seconds(m["rtt_p99"]),
        "min_rtt": seconds(m["min_rtt"]),
        "retrans": m["retrans"], "retrans_pct": percent(m["retrans_pct"]),
        "fitness": None if m["fitness"] is None else round(m["fitness"], 4),
        "angle": round(m["angle"], 4), "limited_by": m["limited_by"],
        "window": seconds(window), "samples": m["samples"],
    })
    return fields
