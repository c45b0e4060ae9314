"""The oneway probe serving several peers (`peers = [...]`) from one worker process.

Each peer has its own session, exactly as a single-peer probe's (control
connection, source-port sockets, UdpProbeSender, records named after its
peers entry, its own BREACH/CLEAR state), but no threads of its own:

- one send thread drives every session's schedule: a heap of the sessions
  ordered by their next due time (the sender's next slot, or the interval's
  end); it sleeps until the first is due and sends what is due (run() for
  1 ns sends the due probes and returns) or ends the interval (Roller.roll);
- the calling thread reads every control connection through one selector,
  reports and judges each peer's intervals, and notices failed connections
  and sessions due for renewal;
- a small pool opens sessions, so a peer that does not answer (up to
  connect_timeout) delays no other peer's probes; a failed peer is retried
  after the same backoff as a single-peer probe.

The supervisor's stale check sees the worker, which reports as long as any
peer does; so a peer whose interval records stop coming while its control
connection stays up (a hung peer) ends its session here, as a lost connection
(BREACH metric=connection), once an interval's record is OVERDUE intervals
plus grace and RESULT_WAIT late.

The send thread owns a session's sender from "start" until it hands the
peer back on `done`; only then are its sockets closed.

A new peers list (`update`, from the supervisor while the worker runs) is
taken by the reading thread: peers not in it end their session as at stop
(the final interval sent with bye, read and reported) and are then dropped;
new peers start connecting; the others' sessions go on untouched.
"""
import heapq
import itertools
import logging
import queue
import selectors
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from netprobe.errors import ConfigError, ProbeError
from netprobe.peer.client import PeerLink
from netprobe.probes.oneway.runner import RESULT_WAIT, Roller, Session

log = logging.getLogger("netprobe.probes.oneway")

CONNECTORS = 8          # sessions opened at once at most
TICK = 0.01             # s: the send thread looks at its inbox at least this often
POLL = 0.05             # s: the reading thread's longest wait
SWITCH = 0.0002         # s: the interpreter's switch interval (5 ms by default): how long the send
                        # thread, woken for a due probe, may wait for the reading thread's reports
OVERDUE = 2             # intervals (plus grace and RESULT_WAIT) an interval's record may take
IDLE, CONNECTING, RUNNING, ENDING, DRAINING = range(5)


def _drained(q):
    """What `q` holds now, without waiting."""
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


class Peer:
    """One peers entry: a runner named after it (records, verdicts), its link, its session."""

    def __init__(self, runner, entry):
        self.runner = runner
        self.entry = entry             # (name, address): its identity across peers updates
        self.removed = False           # not in the latest peers list: dropped once its session is closed
        self.link = PeerLink(runner, lambda: Session(runner.cfg, runner.udpio, shared=True))
        self.state, self.next_try = IDLE, 0.0
        self.sess = self.roller = self.rolled = None
        self.sent = {}                 # interval id -> (sent counts, send stats, clock), until reported
        self.closed_at = {}            # interval id -> when this reader learnt it had ended
        self.why = None                # why the session failed ("" or None: it ended in order)
        self.turn = 0                  # sessions the send thread has started (its heap entries carry it)
        self.drain_until = 0.0


class Peers:
    def __init__(self, parent):
        cfg = parent.cfg
        self.cfg = cfg
        self.parent = parent
        self.late = parent.late
        self.fixed = replace(cfg, peers=())       # the settings an update may not change
        self.peers = [self._peer(entry) for entry in cfg.peer_list()]
        self.changes = queue.SimpleQueue()        # new peers lists (update) to the reading thread
        self.inbox = queue.SimpleQueue()      # ("start" | "end", peer, why) to the send thread
        self.done = queue.SimpleQueue()       # peers the send thread has let go
        self.opened = queue.SimpleQueue()     # (peer, session or None) from the pool
        self.crash = None                     # what killed the send thread or a connect
        self.closing = False
        self.sel = selectors.DefaultSelector()

    def _peer(self, entry):
        name, address = entry
        cfg = replace(self.cfg, name=name, peer=address, peers=())
        return Peer(type(self.parent)(cfg, self.parent.emit, late=self.late), entry)

    # ---- peers updates ----------------------------------------------------------------------
    def update(self, cfg):
        """Take `cfg`'s peers list while running; ConfigError (nothing changed) when it changes
        anything else, which needs a new worker."""
        if not cfg.peers:
            raise ConfigError("an update must keep a peers list (a single peer needs a new worker)")
        if replace(cfg, peers=()) != self.fixed:
            diff = sorted(k for k, v in vars(replace(cfg, peers=())).items() if getattr(self.fixed, k) != v)
            raise ConfigError(f"an update may change only peers, not {', '.join(diff)}")
        self.changes.put(cfg)

    def _take_changes(self):
        for cfg in _drained(self.changes):
            want = cfg.peer_list()
            have = {p.entry: p for p in self.peers if not p.removed}
            gone = [p for e, p in have.items() if e not in set(want)]
            for p in gone:
                p.removed = True
                if p.state == RUNNING:
                    self._end(p)              # its final interval, as at stop; dropped once closed
            added = [self._peer(e) for e in want if e not in have]
            self.peers.extend(added)
            self.cfg = cfg
            log.info("%s: peers updated: %d added, %d removed, %d unchanged", cfg.name, len(added), len(gone),
                     len(have) - len(gone))
        # a removed peer goes once nothing of it is open: idle (closed, failed) and not connecting
        self.peers = [p for p in self.peers if not (p.removed and p.state == IDLE)]

    # ---- the send thread ------------------------------------------------------------------
    def _send(self, halt):
        try:
            self._send_loop(halt)
        except BaseException as exc:          # reported by the reading thread, which stops the probe
            self.crash = ("the send thread", exc)

    def _send_loop(self, halt):
        heap, order, active = [], itertools.count(), set()
        spin = round(self.cfg.spin * 1e9)
        while True:
            for what, p, why in _drained(self.inbox):
                if what == "start":
                    active.add(p)
                    p.turn += 1               # entries of its earlier sessions still in the heap are void
                    heapq.heappush(heap, (0, next(order), p, p.turn))
                elif p in active:             # "end": a failed connection (why) or a renewal
                    active.discard(p)
                    p.why = why or p.roller.roll(True)
                    self.done.put(p)
            if halt.is_set():
                for p in active:
                    p.why = p.roller.roll(True)
                    self.done.put(p)
                return
            while heap and (heap[0][2] not in active or heap[0][3] != heap[0][2].turn):
                heapq.heappop(heap)           # a session that ended since
            if not heap:
                time.sleep(TICK)
                continue
            due, _, p, _ = heap[0]
            wait = due - time.monotonic_ns()
            if wait > spin:
                time.sleep(min((wait - spin) / 1e9, TICK))
                continue
            while time.monotonic_ns() < due:  # spin: the last stretch busy-waiting, as the sender does
                pass
            heapq.heappop(heap)
            r = p.roller
            if time.monotonic() >= r.next_roll:
                p.why = r.roll(False)
                if p.why:
                    active.discard(p)
                    self.done.put(p)
                    continue
            else:
                r.send(1)                     # the probes due now, without waiting
            heapq.heappush(heap, (min(p.sess.sender.next_due, round(r.next_roll * 1e9)), next(order), p, p.turn))

    # ---- connecting -----------------------------------------------------------------------
    def _connect(self, p, stop):
        sess = None
        try:
            sess = p.link.open(stop)
        except ProbeError as exc:             # this peer's session cannot be set up here: retried
            p.link.lost(str(exc))
        except BaseException as exc:
            self.crash = (f"opening a session with {p.runner.cfg.peer}", exc)
        self.opened.put((p, sess))

    def _take_opened(self):
        for p, sess in _drained(self.opened):
            if sess is None:
                p.state, p.next_try = IDLE, time.monotonic() + p.link.delay()
                continue
            if self.closing or p.removed:
                sess.close()
                p.state = IDLE
                continue
            log.info("%s: session %s with %s, %d source ports", p.runner.cfg.name, sess.sid, p.runner.cfg.peer,
                     len(sess.port_numbers))
            p.sess, p.rolled, p.sent, p.closed_at, p.why = sess, queue.SimpleQueue(), {}, {}, None
            p.roller = Roller(sess, p.runner.cfg, self.late, p.rolled)
            p.runner.watch(sess)
            self.sel.register(sess.ctl.sock, selectors.EVENT_READ, p)
            p.state = RUNNING
            self.inbox.put(("start", p, None))

    # ---- reading --------------------------------------------------------------------------
    def _read(self, timeout, judge):
        for key, _ in self.sel.select(timeout):
            p = key.data
            p.runner._take(p.rolled, p.sent)
            p.runner._read_results(p.sess, p.sent, judge=judge and p.state == RUNNING)

    def _end(self, p, why=None):
        """Ask the send thread to let go of a running session."""
        p.state = ENDING
        self.inbox.put(("end", p, why))

    def _take_done(self):
        for p in _drained(self.done):
            if p.why:
                self._close(p)
                p.link.lost(p.why)
                p.next_try = time.monotonic() + p.link.delay()
            else:                             # ended in order: wait for the records still open at the peer
                p.state, p.drain_until = DRAINING, time.monotonic() + self.cfg.grace + RESULT_WAIT

    def _close(self, p):
        if p.sess.watch:
            p.sess.watch.stop()
        self.sel.unregister(p.sess.ctl.sock)
        p.sess.close()
        p.sess, p.state, p.next_try = None, IDLE, time.monotonic()

    def _look(self, now):
        overdue = OVERDUE * self.cfg.interval + self.cfg.grace + RESULT_WAIT
        for p in self.peers:
            if p.state == RUNNING:
                p.runner._take(p.rolled, p.sent)
                for iid in p.sent:
                    p.closed_at.setdefault(iid, now)
                for iid in [i for i in p.closed_at if i not in p.sent]:
                    del p.closed_at[iid]
                if p.sess.ctl.closed:
                    self._end(p, p.sess.ctl.error)
                elif p.sess.renew_at is not None and now >= p.sess.renew_at:
                    log.info("%s: renewing session %s before the peer's max_session_length", p.runner.cfg.name,
                             p.sess.sid)
                    self._end(p)
                elif p.closed_at and now - min(p.closed_at.values()) > overdue:
                    self._end(p, f"no interval record from the peer {overdue:g}s after the interval ended")
            elif p.state == DRAINING:
                p.runner._take(p.rolled, p.sent)
                if not p.sent or now >= p.drain_until or p.sess.ctl.closed:
                    self._close(p)

    # ---- the probe ------------------------------------------------------------------------
    def run(self, stop):
        sys.setswitchinterval(SWITCH)
        halt = threading.Event()
        sender = threading.Thread(target=self._send, args=(halt,), name="oneway-send", daemon=True)
        sender.start()
        pool = ThreadPoolExecutor(max_workers=CONNECTORS, thread_name_prefix="oneway-connect")
        try:
            while not stop.is_set():
                if self.crash is not None:
                    where, exc = self.crash
                    raise ProbeError(f"{where} failed: {exc!r}") from exc
                self._take_changes()
                now = time.monotonic()
                for p in self.peers:
                    if p.state == IDLE and not p.removed and now >= p.next_try:
                        p.state = CONNECTING
                        pool.submit(self._connect, p, stop)
                self._take_opened()
                self._take_done()
                self._read(POLL, judge=True)
                self._look(time.monotonic())
        finally:
            self.closing = True
            halt.set()
            sender.join()
            pool.shutdown(wait=False, cancel_futures=True)
            self._stop(pool)

    def _stop(self, pool):
        """Every session's final interval (sent with bye by the send thread) read and reported,
        each waited for at most grace + RESULT_WAIT; sessions still opening are closed."""
        self._take_done()
        while any(p.state == DRAINING for p in self.peers):
            self._read(0.02, judge=False)
            self._look(time.monotonic())
        pool.shutdown(wait=True)
        self._take_opened()
        for p in self.peers:
            if p.sess is not None:
                self._close(p)
        self.sel.close()
