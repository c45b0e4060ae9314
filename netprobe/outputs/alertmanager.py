"""alertmanager sink: BREACH/CLEAR as alerts through Alertmanager's API v2 (POST /api/v2/alerts).

A BREACH makes an alert active (alertname NetprobeBreach; labels probe, kind, metric,
dir, group, peer, port, host; annotations value, sla, window); it is re-posted every
`resend` while active, as Alertmanager expects of a client, with endsAt a few resends
ahead so that the alert resolves by itself if netprobe stops; a CLEAR posts it with
endsAt = the CLEAR's time. Every URL (an HA pair: each instance) gets every alert.

Delivery runs on one thread per URL, never on the sink thread: write() only records
the state change. Each URL keeps the latest undelivered state per alert (a CLEAR
replaces the BREACH it ends), bounded by `pending`; a failed POST is retried with
exponential backoff. An alert state that waited longer than `give_up`, or that a
full `pending` pushed out, is lost: counted in `dropped`, which the daemon reports
in its DROPS records.
"""
import json
import logging
import threading
import time
from dataclasses import dataclass

from netprobe.config.schema import DURATION, INT, STR_LIST, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.results import BREACH, CLEAR, iso_time
from netprobe.units import show

log = logging.getLogger("netprobe.outputs")

ALERTNAME = "NetprobeBreach"
LABEL_FIELDS = ("metric", "dir", "group", "peer", "port", "suspect_hop")
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0
ENDS_AHEAD = 4           # an active alert's endsAt: this many resends ahead


@dataclass(frozen=True)
class AlertmanagerConfig(SinkConfig):
    """[output.alertmanager]: BREACH/CLEAR records as Alertmanager alerts."""
    types: tuple = setting(STR_LIST, ("BREACH", "CLEAR"), "record types this sink takes (BREACH and CLEAR)")
    urls: tuple = setting(STR_LIST, ("http://127.0.0.1:9093",), "Alertmanager base URLs; each gets every alert "
                                                                 "(list both instances of an HA pair)")
    resend: float = setting(DURATION, 60.0, "re-post active alerts this often (s)", min=0.1, max=3600)
    timeout: float = setting(DURATION, 5.0, "HTTP timeout of one POST (s)", min=0.1, max=60)
    give_up: float = setting(DURATION, 300.0, "an alert state undelivered for this long is dropped and counted (s)",
                             min=0.1, max=86400)
    pending: int = setting(INT, 1000, "undelivered alert states kept per URL; beyond, the oldest is dropped",
                           min=1, max=100_000)

    def check(self, where):
        super().check(where)
        if not self.urls:
            raise where.error("urls", "[] is empty (example: [\"http://127.0.0.1:9093\"])")
        for i, url in enumerate(self.urls):
            if not url.startswith(("http://", "https://")) or len(url.split("/")[2]) == 0:
                raise where.error(f"urls[{i}]", f"{show(url)} is not an http:// or https:// URL "
                                                f"(example: http://127.0.0.1:9093)")
        for t in self.types:
            if t not in (BREACH, CLEAR):
                raise where.error("types", f"{show(t)}: this sink takes only BREACH and CLEAR records")


def _text(v):
    """A field as the BREACH line prints it (yes/no, 812.4Mbit/s, 15s)."""
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


def alert_of(record, host):
    """(key, alert body without endsAt) of a BREACH/CLEAR record."""
    f = record.fields
    labels = {"alertname": ALERTNAME, "probe": record.name, "kind": record.probe}
    for k in LABEL_FIELDS:
        if f.get(k) not in (None, ""):
            labels[k] = str(f[k])
    if host:
        labels["host"] = host
    annotations = {"value": _text(f.get("value", ""))}
    if "threshold" in f:
        annotations["sla"] = f.get("sla_op", "") + _text(f["threshold"])
    if "window" in f:
        annotations["window"] = _text(f["window"])
    if "detail" in f:
        annotations["detail"] = str(f["detail"])
    return tuple(sorted(labels.items())), {"labels": labels, "annotations": annotations}


class _Target:
    """One Alertmanager URL: its undelivered alert states and the thread that posts them."""

    def __init__(self, sink, url):
        self.sink = sink
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.pending = {}          # key -> (alert dict, monotonic time queued)
        self.wake = threading.Condition(sink.lock)
        self.thread = threading.Thread(target=self._loop, name=f"alertmanager-{url}", daemon=True)

    def queue(self, key, alert, now):
        """Called with the sink's lock held."""
        if key not in self.pending and len(self.pending) >= self.sink.cfg.pending:
            oldest = min(self.pending, key=lambda k: self.pending[k][1])
            del self.pending[oldest]
            self.sink.dropped += 1
        self.pending[key] = (alert, now)
        self.wake.notify()

    def _loop(self):
        cfg = self.sink.cfg
        backoff, next_try = 0.0, 0.0
        with self.wake:
            while True:
                now = time.monotonic()
                self._give_up(now)
                if self.sink.stopping and (not self.pending or self.sink.closing_deadline <= now):
                    self.sink.dropped += len(self.pending)
                    self.pending.clear()
                    return
                if not self.pending or now < next_try:
                    until = min(next_try, self.sink.closing_deadline) if self.sink.stopping else next_try
                    self.wake.wait(max(0.01, until - now) if self.pending else None)
                    continue
                batch = dict(self.pending)
                self.wake.release()
                try:
                    ok = self._post([a for a, _ in batch.values()])
                finally:
                    self.wake.acquire()
                if ok:
                    for key, entry in batch.items():
                        if self.pending.get(key) is entry:        # not replaced while posting
                            del self.pending[key]
                    backoff, next_try = 0.0, 0.0
                else:
                    backoff = min(MAX_BACKOFF, backoff * 2 or FIRST_BACKOFF, cfg.give_up)
                    next_try = time.monotonic() + backoff

    def _give_up(self, now):
        late = [k for k, (_, queued) in self.pending.items() if now - queued > self.sink.cfg.give_up]
        for k in late:
            del self.pending[k]
        self.sink.dropped += len(late)

    def _post(self, alerts):
        import urllib.request  # here: every worker imports this module's config
        body = json.dumps(alerts, separators=(",", ":")).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.sink.cfg.timeout) as resp:
                resp.read()
            return True
        except (OSError, ValueError) as exc:          # URLError, HTTPError, timeouts, resets
            if self.sink.once(self.url, type(exc).__name__):
                log.warning("sink %s: POST %s failed: %s (retrying with backoff; logged once)",
                            self.sink.name, self.url, exc)
            return False


class AlertmanagerSink(Sink):
    def __init__(self, cfg, name="alertmanager"):
        self.cfg = cfg
        self.name = name
        self.lock = threading.Lock()
        self.dropped = 0               # alert states lost (read by the daemon for DROPS)
        self.stopping = False
        self.closing_deadline = 0.0
        self.active = {}               # key -> alert (labels, annotations, startsAt)
        self.host = ""
        self._logged = set()
        self.targets = [_Target(self, url) for url in cfg.urls]
        self._resender = threading.Thread(target=self._resend_loop, name="alertmanager-resend", daemon=True)
        self._stop = threading.Event()

    def once(self, *key):
        """True the first time a (url, error type) is seen: a down Alertmanager is logged once."""
        if key in self._logged:
            return False
        self._logged.add(key)
        return True

    def start(self, run_info):
        self.host = str(((run_info or {}).get("host") or {}).get("hostname") or "")
        for t in self.targets:
            t.thread.start()
        self._resender.start()

    def write(self, record):
        if record.type not in (BREACH, CLEAR):
            return
        key, alert = alert_of(record, self.host)
        now = time.monotonic()
        with self.lock:
            if record.type == BREACH:
                alert["startsAt"] = iso_time(record.ts)
                self.active[key] = alert
                self._queue(key, self._live(alert), now)
            else:
                started = self.active.pop(key, None)
                if started is not None:
                    alert["startsAt"] = started["startsAt"]
                alert["endsAt"] = iso_time(record.ts)
                self._queue(key, alert, now)

    def _live(self, alert):
        return {**alert, "endsAt": iso_time(time.time() + ENDS_AHEAD * self.cfg.resend)}

    def _queue(self, key, alert, now):
        for t in self.targets:
            t.queue(key, alert, now)

    def _resend_loop(self):
        while not self._stop.wait(self.cfg.resend):
            now = time.monotonic()
            with self.lock:
                for key, alert in self.active.items():
                    for t in self.targets:
                        if key not in t.pending:      # an undelivered state keeps its age (give_up)
                            t.queue(key, self._live(alert), now)

    def close(self):
        """Stop re-posting; give what is pending one timeout to go out, then count the rest as dropped."""
        self._stop.set()
        with self.lock:
            self.stopping = True
            self.closing_deadline = time.monotonic() + self.cfg.timeout
            for t in self.targets:
                t.wake.notify()
        for t in self.targets:
            if t.thread.is_alive():
                t.thread.join(2 * self.cfg.timeout + 1)
