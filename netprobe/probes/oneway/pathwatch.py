"""The oneway probe's path tracing during a session, and the verdicts it adds.

PathWatch runs trace.trace() on its own thread: every port at the start,
then each port again once per `trace_every` (the ports spread evenly over
the period), and at once for ports that start to breach (at most once per
URGENT_GAP each).  Trace packets are paced at `trace_rate` and held to
`trace_share` percent of the probe's own packets by a budget.

suspects() turns one interval's per-port loss and delay into localise.py's
verdicts, as the fields a BREACH line carries.
"""
import logging
import threading
import time

from netprobe.probes.oneway import analysis, localise, trace
from netprobe.results import percent, seconds

log = logging.getLogger("netprobe.probes.oneway")

URGENT_GAP = 30.0        # s between two out-of-turn traces of one port
BURST_HOPS = 6           # the budget banks one trace of this many packets per port


class PathWatch:
    def __init__(self, cfg, dst, dport, ports, probe_rate, local=None, via=None):
        """via (raw mode): {port: next-hop MAC} its trace frames go to; local is then required."""
        self.cfg, self.dst, self.dport, self.local, self.via = cfg, dst, dport, local, via
        self.frames = None
        self.ports = list(ports)
        self.budget = trace.Budget(cfg.trace_share / 100.0, probe_rate, BURST_HOPS * len(self.ports))
        self.lock = threading.Lock()
        self.paths = {}                  # port -> PortPath (stars filled from the last trace)
        self.changed = set()             # ports whose hop list changed since take_changed()
        self.urgent = set()
        self.last_urgent = {}
        self.depth = None                # routers on the way, once a trace found the end
        self.to_peer = 0                 # trace datagrams that went past the last router
        self.error = None
        self.probes = 0                  # probe packets the peer expected so far (the share's base)
        self.reported = 0                # trace packets counted in earlier RESULTs
        self.judged = set()              # suspect verdict keys fed to the hysteresis
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="oneway-trace")

    @property
    def sent(self):
        return self.budget.spent

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=10)

    def hops(self):
        with self.lock:
            return {p: list(v.hops) for p, v in self.paths.items()}

    def take_changed(self):
        with self.lock:
            out = {p: list(self.paths[p].hops) for p in sorted(self.changed)}
            self.changed.clear()
        return out

    def breaching(self, ports):
        """Trace these ports now (once per URGENT_GAP each): their path may have moved."""
        now = time.monotonic()
        with self.lock:
            for p in ports:
                if now - self.last_urgent.get(p, -URGENT_GAP) >= URGENT_GAP:
                    self.last_urgent[p] = now
                    self.urgent.add(p)

    def _trace(self, ports, depth):
        cfg = self.cfg
        got = trace.trace(self.dst, self.dport, ports, local=self.local, max_hops=cfg.max_hops,
                          rate=cfg.trace_rate, retries=cfg.trace_retries, budget=self.budget,
                          stop=self.stop_event, depth=depth, frames=self.frames)
        with self.lock:
            for p, path in got.items():
                new = trace.merge(self.paths.get(p), path)
                if p not in self.paths or self.paths[p].hops != new.hops:
                    self.changed.add(p)
                self.paths[p] = new
                self.to_peer += path.to_peer
                if depth is None and path.reached:
                    self.depth = len(path.hops)

    def _loop(self):
        try:
            if self.via is not None:
                self.frames = trace.Frames(self.cfg.interface, self.via, self.local, self.dst, self.dport)
            self._trace(self.ports, None)
            step = self.cfg.trace_every / max(1, len(self.ports))
            nxt, i = time.monotonic() + step, 1      # the start's trace had this period's scout
            while not self.stop_event.wait(0.1):
                with self.lock:
                    due, self.urgent = sorted(self.urgent), set()
                if time.monotonic() >= nxt:
                    if i % len(self.ports) == 0:    # once a period one port looks for the end again
                        self._trace([self.ports[0]], None)
                    else:
                        due.append(self.ports[i % len(self.ports)])
                    i, nxt = i + 1, nxt + step
                if due:
                    self._trace(sorted(set(due)), self.depth)
        except OSError as exc:        # e.g. the port cannot be shared: say so once, probes go on
            self.error = f"path tracing stopped: {exc.strerror or exc}"
            log.warning("%s: %s", self.cfg.name, self.error)
        finally:
            if self.frames is not None:
                self.frames.close()


def report(runner, watch, port_numbers, s, raw_ports, judge):
    """One interval of a session with tracing: trace counts in the RESULT fields' place
    (returned under "result"), a scope=path RESULT per port whose hops changed (with
    per_port), out-of-turn traces of breaching ports, and one judged verdict per suspect
    hop.  Returns {"result": fields, metric: suspect fields} for the interval's lines."""
    cfg = runner.cfg
    losses, delays = {}, {}
    for p, rec in zip(s["ports"], raw_ports, strict=True):
        port = port_numbers[p.port]
        losses[port] = (p.expected, p.lost)
        d = analysis.port_delay(rec)
        delays[port] = None if d is None else d["p99"] / 1e9
    watch.probes += s["expected"]
    sent = watch.sent
    out = {"result": {"trace_packets": sent - watch.reported, "trace_share": percent(
        100.0 * sent / watch.probes if watch.probes else 0.0), "traced_ports": len(watch.hops()),
        "trace_to_peer": watch.to_peer}}
    watch.reported = sent
    if watch.error:
        out["result"]["trace_error"] = watch.error
    if cfg.per_port:
        for port, hops in watch.take_changed().items():
            runner.result({"scope": "path", "peer": cfg.peer, "port": port, "hops": hop_list(hops),
                           "hop_count": len(hops)})
    if not judge:
        return out
    bad, _ = localise.loss_marks(losses, cfg.max_loss_pct)
    watch.breaching(bad)
    found = suspects(watch.hops(), losses, delays, max_loss_pct=cfg.max_loss_pct,
                     max_delay_p99=cfg.max_delay_p99)
    now = set()
    for metric, sus in found:
        key = ("suspect", metric, sus.hop)
        now.add(key)
        out.setdefault(metric, fields(sus))
        value, op, threshold = _evidence(metric, sus, watch.hops(), losses, delays, cfg)
        runner.judge(key, True, metric=metric, value=value, op=op, threshold=threshold,
                     window=seconds(cfg.interval), peer=cfg.peer, **fields(sus))
    for key in watch.judged - now:       # a hop no longer named: towards its CLEAR
        runner.judge(key, False, metric=key[1], value=None, op=None, threshold=None,
                     window=seconds(cfg.interval), peer=cfg.peer, suspect_hop=key[2])
    watch.judged |= now
    return out


def _evidence(metric, sus, paths, losses, delays, cfg):
    """The measured value behind a suspect: loss (or delay p99) of the ports through it."""
    through = [p for p, h in paths.items() if sus.hop in h and p in losses]
    if metric == "loss":
        exp = sum(losses[p][0] for p in through)
        return percent(100.0 * sum(losses[p][1] for p in through) / exp if exp else 0.0), "<=", \
            percent(cfg.max_loss_pct)
    vals = sorted(delays[p] for p in through if delays.get(p) is not None)
    thr = cfg.max_delay_p99
    return seconds(vals[len(vals) // 2]) if vals else None, "<=", None if thr is None else seconds(thr)


def suspects(paths, losses, delays, *, max_loss_pct, max_delay_p99=None):
    """One interval's verdicts: [(metric, Suspect)], loss then (with a delay SLA) delay.

    losses {port: (expected, lost)}; delays {port: p99 seconds or None}."""
    out = []
    bad, clean = localise.loss_marks(losses, max_loss_pct)
    out += [("loss", s) for s in localise.localise(paths, bad, clean)]
    if max_delay_p99 is not None:       # without a delay SLA, paths of unequal length are no fault
        bad, clean = localise.delay_marks(delays, max_delay_p99)
        out += [("delay_p99", s) for s in localise.localise(paths, bad, clean)]
    return out


def fields(s):
    """A Suspect as BREACH fields: suspect_hop=198.18.11.2 hop=2 ports_bad=7/7 ports_clean=0/9 ..."""
    out = {"suspect_hop": s.hop, "hop": s.ttl, "ports_bad": f"{s.ports_bad}/{s.bad_total}",
           "ports_clean": f"{s.ports_clean}/{s.clean_total}", "score": s.score, "confidence": s.confidence}
    if s.common:
        out["scope"] = "common_path"
    return out


def hop_list(hops):
    """"198.18.1.1,*,198.18.10.2": the hop list of a scope=path RESULT (* = no answer;
    "direct" = no router on the way)."""
    return ",".join("*" if h is None else h for h in hops) or "direct"
