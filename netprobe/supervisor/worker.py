"""One probe instance in its own process.

Started by the supervisor as `python -m netprobe.supervisor.worker` with a
JSON job on stdin ({"kind", "table", "file", "index"}). It validates the
table again (cheap, and the worker trusts nothing), runs the probe, and
writes each record as one wire-format JSON line on stdout, and an empty
line every second as a heartbeat. SIGTERM asks it
to stop: the runner emits its final interval and the worker exits 0.
SIGINT is ignored so that a terminal's Ctrl-C reaches only the supervisor,
which decides the shutdown order.
"""
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import traceback

from netprobe import probes
from netprobe.config import schema
from netprobe.config.load import build_probe_config
from netprobe.errors import NetprobeError
from netprobe.results import ERROR, Record
from netprobe.supervisor.liveness import HEARTBEAT

PR_SET_PDEATHSIG = 1
SERVE = "serve"          # the job kind of the peer side ([serve] table), run like a probe


def _die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class LineEmitter:
    """Writes records to the supervisor; a closed pipe means the supervisor is gone: stop."""

    def __init__(self, stream, stop):
        self.stream = stream
        self.stop = stop
        self.lock = threading.Lock()

    def __call__(self, record):
        self.write(record.to_wire() + "\n")

    def write(self, line):
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self.stop.set()

    def heartbeat(self):
        """An empty line every HEARTBEAT s, so the supervisor can tell a frozen process (stopped,
        wedged, holding the interpreter) from a probe that has nothing to say."""
        while not self.stop.wait(HEARTBEAT):
            self.write("\n")


def run_job(job, out):
    """Run one probe job until SIGTERM; returns the exit code."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)      # a probe that acts on it installs its own handler
    emit = LineEmitter(out, stop)
    threading.Thread(target=emit.heartbeat, name="heartbeat", daemon=True).start()
    kind, table = job["kind"], job["table"]
    name = str(table.get("name", "?"))
    try:
        if kind == SERVE:
            from netprobe import serve
            serve.run_server(schema.build(serve.ServeConfig, table, schema.Where(job.get("file"), "serve")), stop)
            return 0
        cfg = build_probe_config(kind, table, schema.Where(job.get("file"), f"probe[{job.get('index', 0)}]"))
        runner = probes.load(kind).Runner(cfg, emit)
        runner.run(stop)
        return 0
    except NetprobeError as exc:
        emit(Record(ERROR, kind, name, {"error": str(exc)}))
        return exc.exit_code
    except Exception as exc:   # a bug: report it in one line, details only at debug level
        emit(Record(ERROR, kind, name, {"error": f"internal error: {type(exc).__name__}: {exc}"}))
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        return 1


def main():
    _die_with_parent()
    level = os.environ.get("NETPROBE_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=f"netprobe worker[{os.getpid()}]: %(levelname)s: %(message)s")
    job = json.loads(sys.stdin.readline())
    sys.stdin.close()
    return run_job(job, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
