"""Sink interface and the runner that keeps a slow sink from blocking probes.

Each sink runs on its own thread behind a bounded queue. `submit` never
blocks: when the queue is full the record is dropped and counted; the
supervisor reports the counts as DROPS records on the other sinks. `close`
drains what is queued, flushes and closes, so nothing accepted is lost.
"""
import abc
import logging
import queue
import threading

log = logging.getLogger("netprobe.outputs")

_STOP = object()
_FLUSH = object()


class Sink(abc.ABC):
    """One output. Subclasses implement write(); all methods run on the sink thread."""

    name = "sink"

    def start(self, run_info):
        """Called once before the first record, with the run header (config, host facts)."""

    @abc.abstractmethod
    def write(self, record):
        """Emit one record."""

    def flush(self):
        """Make everything written so far durable/visible."""

    def close(self):
        """Flush and release resources; called once."""
        self.flush()


class SinkRunner:
    """Owns a sink's thread and bounded queue."""

    def __init__(self, sink, maxsize=10000):
        self.sink = sink
        self.name = sink.name
        self.dropped = 0          # records refused because the queue was full
        self.failed = 0           # records the sink raised on
        self.last_error = ""      # the latest failure, "what: error" (reported with the failed count)
        self._reported_errors = set()
        self._q = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._loop, name=f"sink-{self.name}", daemon=True)
        self._run_info = None

    def start(self, run_info):
        self._run_info = run_info
        self._thread.start()

    def submit(self, record):
        """Queue a record; never blocks. Returns False if it was dropped."""
        try:
            self._q.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self):
        try:
            self._q.put_nowait(_FLUSH)
        except queue.Full:
            pass

    def close(self, timeout=10.0):
        """Drain, flush and close the sink. Blocks up to `timeout` seconds."""
        if not self._thread.is_alive():
            return
        while True:
            try:
                self._q.put(_STOP, timeout=timeout)
                break
            except queue.Full:
                log.error("sink %s: queue still full at shutdown", self.name)
                return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("sink %s did not finish within %.0fs; %d records unwritten",
                      self.name, timeout, self._q.qsize())

    def _guard(self, what, fn, *args):
        try:
            fn(*args)
            return True
        except Exception as exc:  # a broken sink must not stop the others
            self.last_error = f"{what}: {exc}"
            key = (what, type(exc).__name__, str(exc))
            if key not in self._reported_errors and len(self._reported_errors) < 100:
                self._reported_errors.add(key)
                log.error("sink %s: %s failed: %s", self.name, what, exc)
            return False

    def _loop(self):
        self._guard("start", self.sink.start, self._run_info)
        while True:
            item = self._q.get()
            if item is _STOP:
                self._guard("close", self.sink.close)
                return
            if item is _FLUSH:
                self._guard("flush", self.sink.flush)
                continue
            if not self._guard("write", self.sink.write, item):
                self.failed += 1
            if self._q.empty():
                self._guard("flush", self.sink.flush)
