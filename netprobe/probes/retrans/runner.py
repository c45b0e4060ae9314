"""The `retrans` probe loop: outgoing retransmits from the probe's own tracefs instance.

The only file of this probe that touches tracefs. Every `poll` it reads the
instance's trace_pipe (events already filtered by port in the kernel); every
`interval` it emits one RESULT per direction (local -> remote prefix), one
host line with the events the kernel lost and the namespace's own segment
counters (Tcp OutSegs / RetransSegs of /proc/net/snmp: segments, so with
offloads on they show what one GSO retransmit event stood for), and
BREACH/CLEAR per direction. The instance is removed on exit; one left by a
killed run is removed when the next one starts.

Retransmits are counted in segments: the watched sockets are dumped over inet_diag
(netprobe._nldiag, filtered by port in the kernel) when events arrive and at the end
of each interval, and their tcp_info total_retrans increases are what the events
stood for (analysis.SegmentCounter). With destroy_events, each watched socket's final
total_retrans comes from the kernel's destroy message (flows/destroy.py), read before each dump:
a socket that closes between two dumps is counted exactly, not from its events.

With `capture_iface`, a header-only capture (capture.py) runs beside it and
each interval adds one RESULT source=capture per direction seen on the wire,
incoming included, classified by the pcap analyser.
"""
import ipaddress
import logging
import socket
import time

import numpy as np

from netprobe.errors import ProbeError, load_extension
from netprobe.probes.base import ProbeRunner, next_deadline
from netprobe.probes.flows import destroy, filters
from netprobe.probes.retrans import analysis, capture, tracefs, votewatch

log = logging.getLogger("netprobe.probes.retrans")


def tcp_snmp(path="/proc/net/snmp"):
    """{field: value} of the Tcp lines of /proc/net/snmp (this network namespace)."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        return dict(zip(rows[0][1:], (int(v) for v in rows[1][1:]), strict=True))
    except (OSError, IndexError, ValueError):
        return {}


MAX_SOCKETS = 1 << 20
HOLD_S = 1.0            # how long a gone socket's events wait for its destroy message


class SocketDumps:
    """The watched sockets' tcp_info total_retrans over inet_diag, for LiveCounter.add_dump."""

    def __init__(self, ports, destroy_events=False, name="retrans"):
        self.nl = nl = load_extension("_nldiag")
        states = sum(1 << v for k, v in nl.TCP_STATES.items() if k not in ("listen", "time-wait"))
        either = [(p, p) for p in ports]
        self.dumper = nl.InetDiagDumper(states=states, ext=nl.EXT_INFO,
                                        bytecode=filters.compile_filter(either_port=either))
        self.destroy = None
        self.name, self.warned = name, False
        if destroy_events:
            match = filters.Matcher(either_port=either)
            self.destroy = destroy.Listener((socket.AF_INET, socket.AF_INET6),
                                            lambda recs: match(recs) & (recs["tcpi_total_retrans"] > 0))
            if not self.destroy.open():
                log.warning("%s: %s; the resends of a socket that closes between two dumps count one "
                            "segment per event (retrans_at_close)", name, self.destroy.reason)
                self.destroy = None
        self.records = np.zeros(1024, dtype=nl.RECORD_DTYPE)
        self.last = 0.0                     # time.monotonic() of the last dump
        self.count = 0                      # sockets in the last dump
        self.error = 0                      # errno of the last failed dump, logged once until it changes

    def sockets(self):
        """[(cookie, (local ip, port, remote ip, port), total_retrans)] of sockets with total_retrans > 0,
        or None when the dump failed (logged)."""
        self.last = time.monotonic()
        try:
            got = self.dumper.dump(self.records)
            while got.overflow and len(self.records) < MAX_SOCKETS:
                self.records = np.zeros(min(MAX_SOCKETS, 2 * (len(self.records) + got.overflow)),
                                        dtype=self.nl.RECORD_DTYPE)
                got = self.dumper.dump(self.records)
        except OSError as exc:
            if exc.result is None:                 # no netlink socket at all
                raise
            if exc.errno != self.error:
                log.warning("inet_diag dump failed: %s (retransmits count in skbs until it works)",
                            self.nl.strerror_text(exc.errno))
            self.error = exc.errno
            return None
        self.error = 0
        recs = self.records[:got.sockets]
        self.count = got.sockets
        return [(cookie, flow, total) for cookie, flow, total, _ in _sockets(recs[recs["tcpi_total_retrans"] > 0])]

    def segs_out(self):
        """{flow: tcpi_data_segs_out} of the established sockets of the last dump."""
        recs = self.records[:self.count]
        recs = recs[recs["idiag_state"] == self.nl.TCP_STATES["established"]]
        return {flow: int(n) for (_, flow, _, _), n in zip(_sockets(recs), recs["tcpi_data_segs_out"], strict=True)}

    def drain(self):
        if self.destroy is not None:
            self.destroy.drain()

    def feed(self, counter, final=False):
        """Destroy messages read so far, then a dump, into the counter (final: the last one)."""
        if self.destroy is not None:
            counter.add_destroyed(_sockets(self.destroy.take()))
            c = self.destroy.counts
            if (c["lost"] or c["dropped"]) and not self.warned:
                self.warned = True
                log.warning("%s: destroy messages lost (%d) or dropped (%d): those sockets' last resends "
                            "count one segment per event (retrans_at_close)", self.name, c["lost"], c["dropped"])
        got = self.sockets()
        if got is not None:
            counter.add_dump(got, time.monotonic(), final)

    def close(self):
        self.dumper.close()
        if self.destroy is not None:
            self.destroy.close()


def _sockets(recs):
    """(cookie, (local ip, port, remote ip, port), total_retrans, t_ns as monotonic s) of each record."""
    out = []
    for r in recs:
        n = 4 if r["idiag_family"] == socket.AF_INET else 16
        la, ra = ipaddress.ip_address(bytes(r["idiag_src"])[:n]), ipaddress.ip_address(bytes(r["idiag_dst"])[:n])
        out.append((int(r["idiag_cookie"]), (la, int(r["idiag_sport"]), ra, int(r["idiag_dport"])),
                    int(r["tcpi_total_retrans"]), int(r["t_ns"]) / 1e9))
    return out


class Runner(ProbeRunner):
    kind = "retrans"

    def run(self, stop):
        cfg = self.cfg
        try:
            inst = tracefs.Instance(cfg.name, ports=cfg.port_numbers, buffer_kb=cfg.buffer_size // 1024)
        except PermissionError:
            raise ProbeError("tracefs needs root (or CAP_SYS_ADMIN)") from None
        cap = watch = None
        try:
            if cfg.capture_iface:
                cap = capture.LiveCapture(cfg.capture_iface, cfg.port_numbers, snaplen=cfg.snaplen,
                                          direction=cfg.capture_direction)
            if cfg.trace_votes:
                try:
                    watch = votewatch.VoteWatch(cfg).start()
                except PermissionError:
                    raise ProbeError("trace_votes needs raw sockets: root (or CAP_NET_RAW)") from None
        except BaseException:
            inst.close()
            if cap is not None:
                cap.close()
            raise
        try:
            self._run(stop, inst, cap, watch)
        finally:
            if watch is not None:
                watch.stop()
            if cap is not None:
                cap.close()
                if cap.kernel_drops:
                    log.warning("%s: the capture lost %d packets in the kernel", cfg.name, cap.kernel_drops)

    def _capture_interval(self, cap, interval_s):
        cfg = self.cfg
        groups = analysis.group_directions(cap.interval_flows(), cfg.prefix_v4, cfg.prefix_v6)
        if cfg.capture_direction == "in":           # outgoing data is not captured: no verdict on it
            groups = [g for g in groups if g.data_pkts]
        for r in analysis.records(groups, name=cfg.name, source="capture"):
            r.fields["window"] = analysis.seconds(interval_s)
            self.emit(r)
        if cfg.max_retrans_pct is not None:
            for g in groups:
                self.judge(("capture", g.src, g.dst), g.retrans_pct > cfg.max_retrans_pct, metric="retrans_pct",
                           value=analysis.percent(g.retrans_pct), op="<=",
                           threshold=analysis.percent(cfg.max_retrans_pct), window=analysis.seconds(interval_s),
                           dir=f"{g.src}->{g.dst}", source="capture",
                           flows=",".join(f"{fl}({n})" for n, fl in g.flows[:analysis.MAX_FLOWS_NAMED]))

    def _votes(self, watch, counter, dumps, window, ts):
        """The interval's passive votes: scope=votes RESULTs and suspect verdicts; returns
        {direction: suspect fields} for the direction BREACHes."""
        segs_out = {f: n for f, n in dumps.segs_out().items() if counter.watches(f)}
        return votewatch.judge(self, watch, counter.resent, segs_out, window, ts, counter.direction)

    def _run(self, stop, inst, cap, watch):
        cfg = self.cfg
        with inst:
            if inst.stale_removed:
                log.warning("%s: removed stale tracefs instances of killed runs: %s", cfg.name,
                            ", ".join(inst.stale_removed))
            if inst.missing:
                log.info("%s: kernel lacks %s", cfg.name, ", ".join(inst.missing))
            counter = analysis.LiveCounter(cfg.peers, cfg.prefix_v4, cfg.prefix_v6, cfg.port_numbers)
            dumps = SocketDumps(cfg.port_numbers, cfg.destroy_events, cfg.name)
            if dumps.destroy is not None:
                counter.segs.hold = HOLD_S
            try:
                seen = set()
                warned_drops = False
                lost0 = inst.lost()
                snmp0 = tcp_snmp()
                dumps.feed(counter)                # each socket's count before us
                t0 = time.monotonic()
                end = t0 + cfg.interval
                while True:
                    while not stop.is_set() and time.monotonic() < end:
                        counter.add_lines(inst.read(timeout=min(cfg.poll, max(0.0, end - time.monotonic()))))
                        dumps.drain()
                        if counter.segs.pending and time.monotonic() - dumps.last >= cfg.poll:
                            dumps.feed(counter)    # while the sockets that resent are still there
                    counter.add_lines(inst.read())
                    dumps.feed(counter, final=stop.is_set())
                    capstats = None
                    if cap is not None:
                        cap.pump(settle=stop.is_set())      # at stop, nothing captured is left out
                        capstats = cap.interval_stats()
                        if capstats[1] and not warned_drops:
                            warned_drops = True
                            log.warning("%s: the capture's ring overflowed (%d packets dropped in one interval):"
                                        " its counts are lower bounds; see capture_drops", cfg.name, capstats[1])
                    now = time.monotonic()
                    lost, snmp = inst.lost(), tcp_snmp()
                    delta = {k: snmp[k] - snmp0[k] for k in ("OutSegs", "RetransSegs") if k in snmp and k in snmp0}
                    recs, verdicts = counter.records(name=cfg.name, interval_s=now - t0, lost=lost - lost0,
                                                     out_segs=delta.get("OutSegs"),
                                                     retrans_segs=delta.get("RetransSegs"),
                                                     max_retrans=cfg.max_retrans, now=time.time(),
                                                     capture=capstats)
                    if watch is not None:   # the host line: trace segments sent in the interval, paths known
                        if stop.is_set():   # the last line counts every segment: no trace runs past it
                            watch.stop()
                        recs[0].fields.update(trace_packets=watch.take_sent(), traced_flows=len(watch.paths),
                                              **({"trace_error": watch.error} if watch.error else {}))
                    for r in recs:
                        self.emit(r)
                    by_dir = {}
                    if watch is not None:
                        by_dir = self._votes(watch, counter, dumps, analysis.seconds(now - t0), recs[0].ts)
                    if cfg.max_retrans is not None:
                        for direction in sorted(seen | set(verdicts)):
                            bad, value, flows = verdicts.get(direction, (False, 0, ""))
                            self.judge(direction, bad, metric="retrans", value=value, op="<=",
                                       threshold=cfg.max_retrans, dir=direction, flows=flows,
                                       **(by_dir.get(direction, {}) if bad else {}))
                        seen |= set(verdicts)
                    if cap is not None:
                        self._capture_interval(cap, now - t0)
                    counter.reset()
                    lost0, snmp0, t0 = lost, snmp, now
                    end = next_deadline(end, cfg.interval, time.monotonic())
                    if stop.is_set():
                        return
            finally:
                dumps.close()
