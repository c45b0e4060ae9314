"""The retrans probe's passive votes during a run (trace_votes = true).

At each interval's end the runner hands over the flows' resent segments and
data segments sent; VoteWatch picks the flows to trace (retransmitting ones
first, most resends first, then clean ones for the baseline, at most
`trace_flows` new ones per interval), traces them on its own thread
(tcptrace.Tracer, paced at `trace_rate`), keeps each flow's path for
PATH_TTL, and turns the paths known into votes.py's tally and suspects.
"""
import logging
import threading
import time

from netprobe.probes.retrans import tcptrace, votes

log = logging.getLogger("netprobe.probes.retrans")

PATH_TTL = 600.0         # s a flow's path is reused before it is traced again
MAX_BASELINE = 1024      # paths known before no more clean flows are traced (bounds each interval's tally)


class VoteWatch:
    def __init__(self, cfg):
        self.cfg = cfg
        self.tracer = tcptrace.Tracer(max_hops=cfg.max_hops, rate=cfg.trace_rate, retries=cfg.trace_retries,
                                      depth_ttl=PATH_TTL)
        self.lock = threading.Lock()
        self.paths = {}                  # flow -> (hops, time traced)
        self.queue = []                  # flows waiting for a trace
        self.busy = []                   # flows being traced
        self.segs_out = {}               # flow -> tcpi_data_segs_out at the last interval's end
        self.reported = 0                # trace segments counted in earlier intervals
        self.judged = set()              # suspect hops fed to the hysteresis
        self.error = None
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="retrans-votes")

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        self.wake.set()
        self.thread.join(timeout=10)
        self.tracer.close()

    def _loop(self):
        try:
            while not self.stop_event.is_set():
                self.wake.wait(0.5)
                self.wake.clear()
                with self.lock:
                    batch = self.busy = self.queue
                    self.queue = []
                if not batch:
                    continue
                got = self.tracer.trace(batch, stop=self.stop_event)
                now = time.monotonic()
                with self.lock:
                    self.busy = []
                    for flow, path in got.items():      # a flow with no hop (a direct peer) is kept too
                        self.paths[flow] = (list(path.hops), now)
        except OSError as exc:
            self.error = f"tracing stopped: {exc.strerror or exc}"
            log.warning("%s: %s", self.cfg.name, self.error)

    def interval(self, resent, segs_out):
        """One interval: resent {flow: segments resent}, segs_out {flow: tcpi_data_segs_out now}
        of every watched socket.  Queues new traces; returns (bad, clean, untraced clean, paths)."""
        cfg = self.cfg
        sent = {f: n - self.segs_out.get(f, n) for f, n in segs_out.items()}
        self.segs_out = segs_out
        # only this namespace's open flows: the tracepoints also see other namespaces' resends,
        # whose paths a trace from here would not follow
        bad, clean = votes.classify({f: n for f, n in resent.items() if f in segs_out}, sent, cfg.trace_min_retrans)
        now = time.monotonic()
        with self.lock:
            self.paths = {f: p for f, p in self.paths.items() if now - p[1] < PATH_TTL and f in segs_out}
            paths = {f: p[0] for f, p in self.paths.items()}
            waiting = set(self.queue) | set(self.busy)
            want = [f for f in sorted(bad, key=lambda f: (-bad[f], str(f))) if f not in paths and f not in waiting]
            if len(paths) < MAX_BASELINE:
                want += [f for f in clean if f not in paths and f not in waiting][:MAX_BASELINE - len(paths)]
            room = max(0, cfg.trace_flows - len(self.queue))     # a slow trace never lets the queue grow
            if want[:room]:
                self.queue += want[:room]
                self.wake.set()
        untraced = sum(1 for f in clean if f not in paths)
        return bad, clean, untraced, paths

    def take_sent(self):
        """Trace segments sent since the last call."""
        sent = self.tracer.sent
        out, self.reported = sent - self.reported, sent
        return out


def judge(runner, watch, resent, segs_out, window, ts, direction):
    """One interval's votes: a scope=votes RESULT per hop, one judged verdict per suspect hop
    (BREACH metric=retrans with suspect_hop ..., value: the segments the retransmitting flows
    through it resent, against max_retrans), and {direction: suspect fields} for the direction
    BREACHes whose retransmitting flows cross the suspect (direction(flow) names a flow's)."""
    bad, clean, untraced, paths = watch.interval(resent, segs_out)
    traced_clean = [f for f in clean if f in paths]
    for h in votes.tally(paths, bad, traced_clean):
        if h.flows:
            runner.result({"scope": "votes", "hop": h.hop, "votes": h.votes, "flows": h.flows,
                           "flows_clean": h.clean, "retrans": h.retrans, "window": window}, ts)
    found = votes.suspects(paths, bad, clean, untraced)
    now, by_dir = set(), {}
    for s, hop in found:
        key = ("suspect", s.hop)
        now.add(key)
        runner.judge(key, True, metric="retrans", value=hop.retrans, op="<=", threshold=watch.cfg.max_retrans,
                     window=window, **votes.fields(s, hop))
        for f in bad:
            if s.hop in (paths.get(f) or ()):
                by_dir.setdefault(direction(f), votes.fields(s, hop))
    for key in watch.judged - now:
        runner.judge(key, False, metric="retrans", value=None, op=None, threshold=None, window=window,
                     suspect_hop=key[1])
    watch.judged |= now
    return by_dir
