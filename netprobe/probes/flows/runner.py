"""The `flows` probe loop: dump, track, write ended flows, aggregate per interval.

The only file of this probe that touches the compiled extension. Every
dump_interval one InetDiagDumper.dump() fills the preallocated records; the
tracker matches them to flows; ended flows are written as one record each
(scope=flow); every interval each group gets a RESULT (scope=group) and SLA
verdicts, and the sampler reports on itself (scope=sampler: dump time,
overflow, malformed messages, CPU share). SIGUSR1 writes every open flow
(end_reason=open) without ending it; so does the shutdown.

With destroy_events, the kernel's destroy messages (destroy.py) are read while the loop waits
between dumps and handed to the tracker with the next dump: a flow's last sample is its socket's
final tcp_info, and a socket that lived between two dumps still gives its record.
"""
import logging
import resource
import select
import signal
import threading
import time

import numpy as np

from netprobe.errors import ProbeError, load_extension
from netprobe.probes.base import ProbeRunner, next_deadline
from netprobe.probes.flows import analysis, destroy, filters, metrics
from netprobe.probes.flows.tracker import Tracker
from netprobe.results import RESULT, Record, percent, seconds

log = logging.getLogger("netprobe.probes.flows")

MAX_CONSECUTIVE_ERRORS = 5
INITIAL_RECORDS = 1024          # the records array doubles on overflow, up to max_sockets
MIN_HOLD = 0.5                  # s a flow gone from the dump waits for its destroy message, at least
DRAIN_GAP = 0.01                # destroy messages are read at most this often (s): a busy host's closes batch
FAMILIES = {"both": (2, 10), "ipv4": (2,), "ipv6": (10,)}
# Full sockets with TCP_INFO: a flow is followed through its close until TIME_WAIT (cgmon stopped at
# ESTABLISHED, so the last ACKed bytes of a closing flow were never seen).
CONNECTED = ("established", "fin-wait-1", "fin-wait-2", "close-wait", "last-ack", "closing")


class Runner(ProbeRunner):
    """Passive: no traffic of its own; reads the congestion state of matching TCP sockets."""

    kind = "flows"

    def __init__(self, cfg, emit):
        super().__init__(cfg, emit)
        nl = load_extension("_nldiag")
        ext = nl.EXT_INFO
        if cfg.congestion_info:
            ext |= nl.EXT_CONG | nl.EXT_BBR
        if cfg.memory_info:
            ext |= nl.EXT_SKMEM
        self.nl = nl
        states = sum(1 << nl.TCP_STATES[k] for k in CONNECTED)
        self.dumper = nl.InetDiagDumper(FAMILIES[cfg.family], states=states, ext=ext, bytecode=cfg.bytecode())
        self.records = np.zeros(min(INITIAL_RECORDS, cfg.max_sockets), dtype=nl.RECORD_DTYPE)
        self.tracker = Tracker(max_flows=cfg.max_flows, min_samples=cfg.min_samples,
                               max_samples=cfg.max_samples, idle_timeout=cfg.idle_timeout,
                               max_total_samples=cfg.max_total_samples,
                               hold=max(2 * cfg.dump_interval, MIN_HOLD) if cfg.destroy_events else 0.0)
        self.destroy = None
        if cfg.destroy_events:
            match = filters.Matcher(**cfg.filter_args())
            # what the dumps list: sockets that were connected (something they sent was acked; a
            # refused connect or a listener has delivered nothing)
            self.destroy = destroy.Listener(FAMILIES[cfg.family],
                                            lambda recs: match(recs) & (recs["tcpi_delivered"] > 0))
        self._carry = None             # destroy records taken before a dump that failed
        self.grouper = analysis.Grouper(cfg.group_prefixes, cfg.port_groups())
        self.opts = analysis.Options(interval=cfg.dump_interval, mode=cfg.flow_format,
                                     cumulant_kind=cfg.cumulant_kind,
                                     weighted_quantiles=not cfg.unweighted_quantiles,
                                     weighted_correlations=not cfg.unweighted_correlations)
        self.totals = dict.fromkeys(metrics.METRICS, 0)
        self.snapshot_requested = threading.Event()
        self._errors_in_row = 0
        self._warned = set()

    def run(self, stop):
        cfg = self.cfg
        try:
            old_usr1 = signal.signal(signal.SIGUSR1, lambda *_: self.snapshot_requested.set())
        except ValueError:           # not the main thread (tests drive run() from a thread)
            old_usr1 = None
        server = None
        agg = self._new_interval()
        step = cfg.dump_interval
        next_dump = time.monotonic()
        next_result = next_dump + cfg.interval
        try:
            if self.destroy is not None and not self.destroy.open():
                log.warning("%s: %s; flows that close between two dumps are not seen, and a closed flow's "
                            "record ends at its last dump", cfg.name, self.destroy.reason)
                self.destroy = None
            if cfg.http_listen:
                server = metrics.MetricsServer(cfg.http_listen, cfg.name, self._metrics)
            while not stop.is_set():
                self._sample(agg)
                if self.snapshot_requested.is_set():
                    self.snapshot_requested.clear()
                    self._write(self.tracker.snapshot())
                now = time.monotonic()
                if now >= next_result:
                    self._interval(agg, now)
                    agg = self._new_interval()
                    next_result = next_deadline(next_result, cfg.interval, now)
                next_dump += step
                if next_dump <= now:                       # a slow dump: skip slots, never bunch
                    skipped = int((now - next_dump) // step) + 1
                    agg["late"] += skipped
                    self.totals["late_total"] += skipped
                    next_dump += step * skipped
                self._wait(stop, next_dump)
        finally:
            if old_usr1 is not None:
                signal.signal(signal.SIGUSR1, old_usr1)
            if self.destroy is not None:          # the held flows, with what came since the last dump
                self._write(self.tracker.final(self._destroyed(), time.monotonic_ns()))
            if agg["dumps"]:
                self._interval(agg, time.monotonic(), judge=False)
            self._write(self.tracker.snapshot())
            self.dumper.close()
            if self.destroy is not None:
                self.destroy.close()
            if server is not None:
                server.close()

    def _wait(self, stop, until):
        """Until `until` (monotonic s) or stop; reading destroy messages as they come."""
        if self.destroy is None:
            stop.wait(max(0.0, until - time.monotonic()))
            return
        while not stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return
            if select.select([self.destroy], [], [], min(left, 0.1))[0]:
                self.destroy.drain()
                stop.wait(min(DRAIN_GAP, max(0.0, until - time.monotonic())))

    def _destroyed(self):
        """Destroy records read so far (with those of a failed dump's turn)."""
        got = self.destroy.take()
        if self._carry is not None:
            got, self._carry = np.concatenate((self._carry, got)), None
        return got

    def _new_interval(self):
        return {"agg": analysis.IntervalAggregate(len(self.grouper.names)), "dumps": 0, "errors": 0, "late": 0,
                "dump_ns": [], "track_ns": [], "sockets": 0, "started": time.monotonic(),
                "cpu0": _cpu_seconds(), "ended": 0,
                **dict.fromkeys(self.nl.COUNTERS, 0)}

    def _sample(self, st):
        destroyed = self._destroyed() if self.destroy is not None else None      # before the dump: see tracker
        t0 = time.monotonic_ns()
        error = 0
        try:
            got = self.dumper.dump(self.records)
            while got.overflow and len(self.records) < self.cfg.max_sockets:
                size = min(self.cfg.max_sockets, 2 * (len(self.records) + got.overflow))
                self.records = np.zeros(size, dtype=self.nl.RECORD_DTYPE)      # grow, then dump again
                t0 = time.monotonic_ns()
                got = self.dumper.dump(self.records)
        except OSError as exc:
            if exc.result is None:                 # socket()/bind() of the netlink socket
                raise ProbeError(f"cannot open a NETLINK_SOCK_DIAG socket: {exc.strerror or exc}") from None
            error = exc.errno
        t1 = time.monotonic_ns()
        tot = self.totals
        tot["dumps_total"] += 1
        tot["dump_seconds_total"] += (t1 - t0) / 1e9
        if error:
            tot["dump_errors_total"] += 1
            st["errors"] += 1
            self._errors_in_row += 1
            why = self.nl.strerror_text(error)
            if self.tracker.dumps == 0 or self._errors_in_row >= MAX_CONSECUTIVE_ERRORS:
                raise ProbeError(f"inet_diag dump failed: {why} ({self._errors_in_row} in a row)")
            log.warning("%s: inet_diag dump failed: %s", self.cfg.name, why)
            self._carry = destroyed
            return
        self._errors_in_row = 0
        n = got.sockets
        for k in self.nl.COUNTERS:
            st[k] += getattr(got, k)
        if got.overflow and "overflow" not in self._warned:
            self._warned.add("overflow")
            log.warning("%s: more than max_sockets=%d sockets match; %d not read (raise max_sockets or filter)",
                        self.cfg.name, self.cfg.max_sockets, got.overflow)
        recs = self.records[:n]
        ended, delta = self.tracker.update(recs, t1, destroyed=destroyed)
        st["agg"].add(self.grouper.assign(recs)[delta.index], delta)
        st["dumps"] += 1
        st["sockets"] = n
        st["dump_ns"].append(t1 - t0)
        st["track_ns"].append(time.monotonic_ns() - t1)
        st["ended"] += len(ended)
        t = self.tracker
        for key, got_key in (("overflow_total", "overflow"), ("malformed_total", "malformed"),
                             ("truncated_total", "truncated"), ("dump_intr_total", "dump_intr"),
                             ("spoofed_total", "spoofed")):
            tot[key] += getattr(got, got_key)
        tot.update(sockets=n, tracked=len(t), stored=t.stored, stored_samples=t.total_samples,
                   flows_new_total=t.counts["new"], flows_closed_total=t.counts["closed"],
                   flows_filtered_total=t.counts["filtered"])
        tot["track_seconds_total"] += st["track_ns"][-1] / 1e9
        self._write(ended)

    def _metrics(self):
        return dict(self.totals)

    def _write(self, ended):
        if not self.cfg.write_flows:
            return
        self.totals["flows_written_total"] += len(ended)
        for e in ended:
            fields = analysis.summarize(e, self.opts)
            self.emit(Record(RESULT, self.kind, self.cfg.name, {"scope": "flow", **fields}, e.end_wall))

    def _interval(self, st, now, judge=True):
        window = now - st["started"]
        names = self.grouper.names
        for g, fig in sorted(st["agg"].result().items()):
            self.result({"scope": "group", **analysis.aggregate_fields(names[g], fig, window)})
            for v in (analysis.verdicts(fig, self.cfg.sla()) if judge else ()):
                self.judge((names[g], v.metric), v.bad, metric=v.metric, value=v.value, op=v.op,
                           threshold=v.threshold, window=seconds(window), group=names[g])
        dump = np.asarray(st["dump_ns"], dtype=np.float64) / 1e9
        track = np.asarray(st["track_ns"], dtype=np.float64) / 1e9
        cpu = (_cpu_seconds() - st["cpu0"]) / window if window > 0 else 0.0
        t = self.tracker
        self.result({
            "scope": "sampler", "dumps": st["dumps"], "sockets": st["sockets"], "tracked": len(t),
            "stored": t.stored, "flows_written": st["ended"],
            "dump_p50": seconds(float(np.median(dump))) if dump.size else None,
            "dump_max": seconds(float(dump.max())) if dump.size else None,
            "track_p50": seconds(float(np.median(track))) if track.size else None,
            "cpu": percent(round(100 * cpu, 2)), "late": st["late"], "errors": st["errors"],
            "overflow": st["overflow"], "malformed": st["malformed"], "truncated": st["truncated"],
            "dump_intr": st["dump_intr"], "filtered": t.counts["filtered"], "window": seconds(window),
            **self._destroy_fields(),
        })

    def _destroy_fields(self):
        """Since the start: flows ended by a destroy message, ones written without (none came within
        the hold: lost, or a socket its program kept open), messages lost or dropped (then said once)."""
        if self.destroy is None:
            return {}
        t, c = self.tracker.counts, self.destroy.counts
        for key, why in (("lost", "the kernel's queue overran"), ("dropped", "more than the buffer holds came "
                                                                  "between two dumps")):
            if c[key] and key not in self._warned:
                self._warned.add(key)
                log.warning("%s: %d destroy messages %s (%s): those flows end at their last dump",
                            self.cfg.name, c[key], key, why)
        return {"destroyed": t["destroyed"], "destroy_missed": t["destroy_missed"],
                "destroy_late": t["destroy_late"], "destroy_lost": c["lost"], "destroy_dropped": c["dropped"]}


def _cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
